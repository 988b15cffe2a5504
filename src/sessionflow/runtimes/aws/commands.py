"""``sessionflow aws-local ...``: a local AWS (moto server) to run the AWS runtime on a laptop.

Import-light: boto3 and moto are imported by the subcommands when they run.

    sessionflow aws-local up                 # moto server on 127.0.0.1 + streams, Firehoses, table, bucket
    sessionflow aws-local put events.jsonl   # JSON lines onto the raw stream
    sessionflow aws-local run --flush        # the Lambda-like poller: raw -> process -> clean -> sessionize
    sessionflow aws-local sweep              # what the scheduled sweep does: close idle sessions of quiet shards
    sessionflow aws-local fetch out/         # the S3 output as the lake `run` writes, exact copies dropped
    sessionflow aws-local redrive            # replay the on-failure queue's ranges from the raw archive
    sessionflow aws-local replay events.jsonl --out out/   # all of the above in one process
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionflow.exitcodes import EXIT_OK

ENDPOINT_FILE = ".sessionflow-aws-local.json"
log = logging.getLogger("sessionflow")

# `aws-local --help`: the module's overview as plain text (the docstring's RST markup left out).
DESCRIPTION = "A local AWS (moto server) to run the AWS runtime on a laptop.\n\n" + "\n".join(
    line for line in (__doc__ or "").splitlines() if line.startswith("    sessionflow aws-local")
)
INSTALL_HINT = "pip install 'sessionflow[aws]'"


def _needs_extra(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A missing boto3 or moto is the user's setup, not a bug: a usage error naming what to install."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ImportError as exc:
            from sessionflow.errors import UsageError

            message = str(exc) if "pip install" in str(exc) else f"aws-local needs its extra: {INSTALL_HINT} ({exc})"
            raise UsageError(message) from None

    return run


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "aws-local",
        help="run the AWS runtime against a local AWS (moto server on 127.0.0.1)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="aws_command", metavar="ACTION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--endpoint", help=f"the local AWS (default: $AWS_ENDPOINT_URL, else ./{ENDPOINT_FILE})")
        sub.add_argument("--config", "-c", metavar="FILE", help="sessionflow.toml (env SESSIONFLOW_CONFIG)")

    up = commands.add_parser("up", help="start moto server and create the resources; runs until Ctrl-C")
    up.add_argument("--port", type=int, default=0, help="default: a free port")
    up.add_argument("--raw-shards", type=int, default=2)
    up.add_argument("--clean-shards", type=int, default=2)
    up.set_defaults(handler=_needs_extra(_up))

    put = commands.add_parser("put", help="put JSON lines on the raw stream (partition key: machine id)")
    common(put)
    put.add_argument("files", nargs="+", metavar="FILE")
    put.set_defaults(handler=_needs_extra(_put))

    run = commands.add_parser("run", help="poll the streams and invoke the handlers the way Lambda does")
    common(run)
    _poller_options(run)
    run.add_argument("--follow", action="store_true", help="keep polling (Ctrl-C to stop)")
    run.add_argument(
        "--chaos",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="inject faults: throttles, partial failures and errors after the write on this share of the "
        "handlers' Kinesis, Firehose and DynamoDB calls, and crashes between their steps in about this "
        "share of invocations (docs/aws.md)",
    )
    run.add_argument("--chaos-seed", type=int, metavar="N", help="the seed of --chaos (default: a random one)")
    run.add_argument(
        "--sweep-every",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="run the sweep this often while polling, as the deployed schedule does (default 300)",
    )
    run.set_defaults(handler=_needs_extra(_run))

    flush = commands.add_parser("flush", help="close every open session (end of stream)")
    common(flush)
    flush.set_defaults(handler=_needs_extra(_flush))

    sweep = commands.add_parser("sweep", help="close the idle sessions of shards quiet for the idle close time")
    common(sweep)
    sweep.set_defaults(handler=_needs_extra(_sweep))

    fetch = commands.add_parser(
        "fetch", help="download the S3 output into the lake DIR (Parquet, ledger: `sessionflow verify DIR` checks it)"
    )
    common(fetch)
    fetch.add_argument("out", metavar="DIR")
    fetch.add_argument("--keep-duplicates", action="store_true", help="keep exact re-deliveries (see docs/aws.md)")
    fetch.set_defaults(handler=_needs_extra(_fetch))

    redrive = commands.add_parser(
        "redrive",
        help="replay what the on-failure queue names (raw ranges from the raw archive, clean ones from the "
        "stream); `run` then takes them through",
    )
    common(redrive)
    redrive.add_argument("--keep", action="store_true", help="leave the messages in the queue")
    redrive.set_defaults(handler=_needs_extra(_redrive))

    replay = commands.add_parser("replay", help="up + put + run + flush + fetch, in one process")
    replay.add_argument("files", nargs="+", metavar="FILE")
    replay.add_argument("--out", "-o", required=True, metavar="DIR")
    replay.add_argument("--config", "-c", metavar="FILE")
    _poller_options(replay)
    replay.set_defaults(handler=_needs_extra(_replay))


def _poller_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=100, help="records per invocation (Lambda BatchSize)")
    parser.add_argument("--window", type=float, default=0.0, help="seconds to gather a batch (MaximumBatchingWindow)")
    parser.add_argument("--max-retries", type=int, default=3, help="MaximumRetryAttempts")
    parser.add_argument("--flush", action="store_true", help="close every session when the streams are drained")


# -- the subcommands -------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    import signal

    from sessionflow.errors import UsageError
    from sessionflow.runtimes.aws.local.resources import LocalAws, create_resources, moto_server
    from sessionflow.runtimes.aws.settings import Settings

    marker = Path(ENDPOINT_FILE)
    if marker.is_file() and _alive(json.loads(marker.read_text()).get("pid")):
        raise UsageError(f"a local AWS is already up (see ./{ENDPOINT_FILE}); stop it first")

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill` stops it as cleanly as Ctrl-C
    with moto_server(args.port) as endpoint:
        try:
            _use(endpoint)
            create_resources(LocalAws(endpoint, Settings.from_env()), args.raw_shards, args.clean_shards)
            marker.write_text(json.dumps({"endpoint": endpoint, "pid": os.getpid()}))
            print(f"local AWS on {endpoint}; other aws-local commands find it in ./{ENDPOINT_FILE}", flush=True)
            print(f"export AWS_ENDPOINT_URL={endpoint}", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            marker.unlink(missing_ok=True)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _put(args: argparse.Namespace) -> int:
    from sessionflow.runtimes.aws.local.resources import put_lines

    aws = _connect(args)
    machine_field = _config(args).fields.machine_id
    total = 0
    for name in args.files:
        with _open(name) as handle:
            total += put_lines(aws, handle, machine_field=machine_field)
    print(f"put {total} records on raw")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from sessionflow.runtimes.aws import handlers
    from sessionflow.runtimes.aws.local.poller import pipeline_poller
    from sessionflow.state.dynamodb import DynamoDBStore

    aws = _connect(args)
    chaos = None
    if args.chaos:
        from sessionflow.runtimes.aws.local.chaos import Chaos

        chaos = Chaos(args.chaos, args.chaos_seed)
        handlers.use_runtime(handlers.Runtime.from_env(aws.settings, prepare=chaos.register, faults=chaos.crash))
    # Lambda's side (checkpoints) on a client of its own: it is the service, never the chaos.
    checkpoints = DynamoDBStore(aws.client("dynamodb"), aws.settings.state_table, aws.settings.state_ttl_ms // 1000)
    poller = pipeline_poller(
        aws, checkpoints, batch_size=args.batch_size, window_s=args.window, max_retries=args.max_retries
    )
    with contextlib.suppress(KeyboardInterrupt):
        poller.run(follow=args.follow, scheduled=_scheduled(handlers.sweep_handler), every_s=args.sweep_every)
    if args.flush:
        _until_done(handlers.flush_handler)
    _print_stats(poller)
    if chaos is not None:
        injected = ", ".join(f"{count} {what}" for what, count in sorted(chaos.injected.items()))
        print(f"chaos {args.chaos}: {injected or 'nothing injected'}")
    return EXIT_OK


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate from 0 to below 1, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a rate from 0 to below 1, got {text!r}")
    return value


def _scheduled(function: Callable[[dict[str, Any], Any], Any]) -> Callable[[], None]:
    """An EventBridge-scheduled function: a failed run is logged, and the schedule goes on."""

    def invoke() -> None:
        try:
            function({}, None)
        except Exception:
            log.exception("the scheduled %s failed; the next run retries it", function.__name__)

    return invoke


def _until_done(function: Callable[[dict[str, Any], Any], Any], attempts: int = 20) -> Any:
    """An asynchronous invocation, retried as Lambda retries one that failed (faults: ``--chaos``)."""
    for attempt in range(attempts):
        try:
            return function({}, None)
        except Exception:
            if attempt + 1 == attempts:
                raise
            log.warning("%s failed; retrying", function.__name__, exc_info=True)
            time.sleep(min(2.0, 0.1 * 2**attempt))
    return None


def _print_stats(poller: Any) -> None:
    for stream, stats in poller.stats.items():
        latencies = sorted(stats.latencies_ms) or [0.0]
        ages = sorted(stats.iterator_ages_ms) or [0.0]
        print(
            f"{stream}: {stats.records} records in {stats.invocations} invocations, {stats.errors} errors, "
            f"{stats.partial_failures} partial failures, {stats.sent_to_on_failure} to the on-failure queue; "
            f"invocation p50 {latencies[len(latencies) // 2]:.0f} ms, max {latencies[-1]:.0f} ms; "
            f"iterator age p50 {ages[len(ages) // 2]:.0f} ms, max {ages[-1]:.0f} ms"
        )


def _flush(args: argparse.Namespace) -> int:
    from sessionflow.runtimes.aws import handlers

    _connect(args)
    print(handlers.flush_handler({}, None))
    return EXIT_OK


def _sweep(args: argparse.Namespace) -> int:
    from sessionflow.runtimes.aws import handlers

    _connect(args)
    print(handlers.sweep_handler({}, None))
    return EXIT_OK


def _fetch(args: argparse.Namespace) -> int:
    from sessionflow.runtimes.aws.local.resources import fetch

    aws = _connect(args)
    counts = fetch(aws, Path(args.out), _config(args), keep_duplicates=args.keep_duplicates)
    print(", ".join(f"{count} {table}" for table, count in counts.items()) + f" in {args.out}")
    return EXIT_OK


def _redrive(args: argparse.Namespace) -> int:
    from sessionflow.errors import InputError
    from sessionflow.runtimes.aws import handlers
    from sessionflow.runtimes.aws.local.resources import BUCKET, ON_FAILURE_QUEUE, RAW_STREAM
    from sessionflow.runtimes.aws.redrive import FailedRange, RedriveReport, drain_queue, redrive

    aws = _connect(args)
    step = handlers.runtime().process
    report = RedriveReport()
    sqs = aws.client("sqs")

    def replay(failed: FailedRange) -> None:
        redrive(
            failed,
            raw_stream=RAW_STREAM,
            clean_stream=aws.settings.clean_stream,
            s3=aws.client("s3"),
            bucket=BUCKET,
            kinesis=aws.client("kinesis"),
            step=lambda: step,
            clean=step.clean,
            report=report,
        )

    outcome = drain_queue(sqs, sqs.get_queue_url(QueueName=ON_FAILURE_QUEUE)["QueueUrl"], replay, keep=args.keep)
    for described in report.ranges:
        print(f"redriven: {described}")
    print(
        f"{outcome.redriven} messages: {report.records} records replayed, {report.events} events put on "
        f"{aws.settings.clean_stream}, {report.rejected} rejected rows sent; `sessionflow aws-local run` "
        "sessionizes them"
    )
    if outcome.failed:
        raise InputError("some messages could not be redriven (left in the queue):\n" + "\n".join(outcome.failed))
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from sessionflow.runtimes.aws import handlers
    from sessionflow.runtimes.aws.local.poller import pipeline_poller
    from sessionflow.runtimes.aws.local.resources import LocalAws, create_resources, fetch, moto_server, put_lines
    from sessionflow.runtimes.aws.settings import Settings

    with moto_server() as endpoint:
        _use(endpoint)
        config = _config(args)
        aws = LocalAws(endpoint, Settings.from_env())
        create_resources(aws)
        started = time.perf_counter()
        for name in args.files:
            with _open(name) as handle:
                put_lines(aws, handle, machine_field=handlers.runtime().config.fields.machine_id)
        poller = pipeline_poller(aws, batch_size=args.batch_size, window_s=args.window, max_retries=args.max_retries)
        poller.run()
        handlers.flush_handler({}, None)
        _print_stats(poller)
        counts = fetch(aws, Path(args.out), config)
        print(
            ", ".join(f"{count} {table}" for table, count in counts.items()) + f" in {args.out} "
            f"({time.perf_counter() - started:.1f} s)"
        )
    return EXIT_OK


# -- helpers ---------------------------------------------------------------------------------------


def _use(endpoint: str) -> None:
    from sessionflow.runtimes.aws.local.resources import local_environment

    os.environ.update(local_environment(endpoint))
    # The handlers' per-batch JSON lines and metrics are for CloudWatch; on a terminal, warnings
    # only (set POWERTOOLS_LOG_LEVEL=INFO, POWERTOOLS_METRICS_DISABLED=false to see them).
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")


def _config(args: argparse.Namespace) -> Any:
    """The handlers read SESSIONFLOW_CONFIG; --config and ./sessionflow.toml feed it, as for `run`."""
    from sessionflow.config import ENV_CONFIG, config_path, resolve_config

    path = config_path(getattr(args, "config", None))
    if path:
        os.environ[ENV_CONFIG] = str(Path(path).resolve())
    return resolve_config(path)


def _connect(args: argparse.Namespace) -> Any:
    from sessionflow.errors import UsageError
    from sessionflow.runtimes.aws.local.resources import LocalAws
    from sessionflow.runtimes.aws.settings import Settings

    endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is None and Path(ENDPOINT_FILE).is_file():
        endpoint = json.loads(Path(ENDPOINT_FILE).read_text())["endpoint"]
    if endpoint is None:
        raise UsageError("no local AWS: start one with `sessionflow aws-local up`, or pass --endpoint")
    if not endpoint.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise UsageError(f"aws-local talks to a local endpoint only, got {endpoint}")
    _use(endpoint)
    _config(args)
    return LocalAws(endpoint, Settings.from_env())


def _open(name: str) -> Any:
    import gzip

    if name == "-":
        return sys.stdin.buffer
    return gzip.open(name, "rb") if name.endswith(".gz") else open(name, "rb")


def main(argv: list[str] | None = None) -> int:
    """``python -m sessionflow.runtimes.aws.commands ...`` works without the main CLI."""
    parser = argparse.ArgumentParser(prog="sessionflow")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sessionflow: %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
