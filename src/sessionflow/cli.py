"""The command line: the composition root for people.

Exit codes (``sessionflow.exitcodes``): 0 done; 1 an unexpected error (a bug: please report it);
2 bad usage or a bad config; 3 an input cannot be read; 4 the lake or the state cannot be written;
5 ``verify`` found a problem; 6 the run finished but rejected more than ``--max-reject-rate``, or
every record; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sessionflow import __version__
from sessionflow.config import (
    DEFAULT_CONFIG_FILE,
    ENV_CONFIG,
    EXAMPLE_CONFIG,
    ConfigError,
    column_name,
    format_duration,
    resolve_config,
)
from sessionflow.errors import InputError, OutputError, StateError, UsageError
from sessionflow.exitcodes import (
    EXIT_BUG,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    EXIT_VERIFY,
)

# The environment variables the CLI reads (shown in --help); the config's own is in sessionflow.config.
ENV_LOG_LEVEL = "SESSIONFLOW_LOG_LEVEL"
DEFAULT_SAMPLE = 5000  # records `init --from` reads

log = logging.getLogger("sessionflow")


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sessionflow: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


# -- run ------------------------------------------------------------------------------------------


def _arrow_internals_on_jemalloc() -> None:
    """Arrow's C++ internals (joins, group-bys, dataset scans) allocate from the pool named by
    $ARROW_DEFAULT_MEMORY_POOL, read once when pyarrow loads; the run's own choice of pool
    (runtimes/local/engine.py) reaches only what pyarrow asks for. Left to mimalloc, an
    incremental run's joins and scans kept ~300 MB more at its peak (bench/README.md). Linux's
    wheels of pyarrow carry jemalloc; a value the user set is kept."""
    if sys.platform.startswith("linux") and "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")


def _cmd_run(args: argparse.Namespace) -> int:
    _arrow_internals_on_jemalloc()
    from sessionflow.runtimes.local.console import run_with_console
    from sessionflow.runtimes.local.quality import QualityThresholds

    config = resolve_config(args.config)
    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be 0 or more")
    if args.flush and args.state is None:
        raise UsageError("--flush only makes sense with --state (a run without state always flushes)")
    if args.state and args.overwrite:
        # Replacing the lake but keeping the state would leave a summary without its events.
        raise UsageError(
            "--overwrite with --state: the state belongs to the lake being replaced; "
            "to start again, delete the state file and run with --overwrite alone, or use a new --out and --state"
        )
    if not args.out.strip():
        raise UsageError("--out is empty (an unset shell variable?); name the lake folder")
    return run_with_console(
        inputs=args.inputs,
        lake=Path(args.out),
        config=config,
        state_path=Path(args.state) if args.state else None,
        flush=args.flush,
        overwrite=args.overwrite,
        max_reject_rate=args.max_reject_rate,
        workers=args.workers,
        as_json=args.json,
        quiet=args.quiet,
        allow_empty=args.allow_empty,
        thresholds=QualityThresholds(reject_rate=args.warn_reject_rate, late_rate=args.warn_late_rate),
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from sessionflow.synthetic import FeedShape, write_feed

    shape = FeedShape(events=args.events, machines=args.machines, seed=args.seed, late_rate=args.late_rate)
    try:
        written = write_feed(shape, args.output)
    except OSError as exc:
        raise OutputError(f"{args.output}: cannot write: {exc.strerror or exc}") from None
    if args.output != "-":
        log.warning("wrote %d records to %s", written, args.output)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from sessionflow.runtimes.local.console import demo

    return demo(Path(args.dir), events=args.events, machines=args.machines, force=args.force)


def _cmd_init(args: argparse.Namespace) -> int:
    if args.sample is not None and args.sample_from is None:
        raise UsageError("--sample is how many records --from reads; give --from SAMPLE too")
    path = Path(args.path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the config file's name, e.g. {path / DEFAULT_CONFIG_FILE}")
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: cannot write: no folder {path.parent} (create it first)")
    if args.sample_from is not None:
        from sessionflow.propose.command import init_from

        init_from(args.sample_from, path, args.sample or DEFAULT_SAMPLE)
        return EXIT_OK
    try:
        path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    log.warning("wrote %s", path)
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    session = config.session
    columns = ", ".join(
        (column_name(name) if name == column_name(name) else f"{column_name(name)} (from {name})")
        + ("" if kind == "string" else f" ({kind})")
        for name, kind in config.columns
    )
    print(f"config: {config.origin}")
    print(
        f"config ok: timeout {format_duration(session.timeout_ms)}, "
        f"lateness {format_duration(session.allowed_lateness_ms)}, "
        f"opening events {sorted(session.opening_events)}, columns {columns or 'none'}, "
        f"{len(config.clean)} cleaning rule(s)"
    )
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from sessionflow.lake.verify import repair, verify_lake

    lake = Path(args.lake)
    if not lake.is_dir():
        raise UsageError(f"{lake}: no such lake folder")
    if args.repair:
        repair(lake)
    verdict = verify_lake(lake)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(verdict.to_dict()).decode() + "\n")
    else:
        print(verdict.render())
    return EXIT_OK if verdict.ok else EXIT_VERIFY


def _rate(text: str) -> float:
    """A share of the records: 0 to 1, or a percentage such as ``5%``."""
    problem = f"expected a rate between 0 and 1 or a percentage such as 5%, got {text!r}"
    try:
        value = float(text.strip().rstrip("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if not 0 <= value <= 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(problem)
    return value


def _count(minimum: int) -> Callable[[str], int]:
    """A whole number of at least ``minimum``, as an argparse type."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionflow",
        description="Raw app usage events in; clean, enriched, sessionized events out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "environment:\n"
            f"  {ENV_CONFIG}      config file when --config is not given\n"
            f"                          (else ./{DEFAULT_CONFIG_FILE} when present, else built-in defaults)\n"
            f"  {ENV_LOG_LEVEL}   DEBUG, INFO, WARNING (default) or ERROR\n\n"
            "exit codes: 0 ok, 1 bug, 2 usage or config, 3 input, 4 output or state, 5 verify failed,\n"
            "            6 too many rejections, 130 interrupted"
        ),
    )
    parser.add_argument("--version", action="version", version=f"sessionflow {__version__}")
    parser.add_argument("--log-level", default=os.environ.get(ENV_LOG_LEVEL, "WARNING"), help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="process JSON-lines input into a Parquet lake")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="JSON-lines file, .gz file, directory, or - for stdin")
    run.add_argument("--out", "-o", required=True, metavar="DIR", help="the lake folder")
    run.add_argument("--config", "-c", metavar="FILE", help=f"sessionflow.toml (env {ENV_CONFIG})")
    run.add_argument(
        "--state", metavar="PATH", help="incremental runs: the stream clock and the inputs read, in this file"
    )
    run.add_argument(
        "--flush", action="store_true", help="accepted for older scripts: every run writes every session now"
    )
    run.add_argument("--overwrite", action="store_true", help="replace a lake already in DIR")
    run.add_argument(
        "--max-reject-rate",
        type=_rate,
        metavar="RATE",
        help="exit 6 when more than RATE of the records are rejected (e.g. 0.05 or 5%%); the lake is written. "
        "A run that rejects every record exits 6 in any case",
    )
    run.add_argument(
        "--warn-reject-rate",
        type=_rate,
        default=0.05,
        metavar="RATE",
        help="warn when more than RATE of the records are rejected (default 5%%)",
    )
    run.add_argument(
        "--warn-late-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="warn when more than RATE of the valid events arrive later than restate_horizon (default: any)",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that parse and validate (default: one per core; 0: all in this process)",
    )
    run.add_argument(
        "--allow-empty",
        action="store_true",
        help="run (and publish an empty run) when the inputs name no file; else that exits 3",
    )
    run.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary table")
    run.set_defaults(handler=_cmd_run)

    generate = commands.add_parser("generate", help="write realistic synthetic events, dirty like a real feed")
    generate.add_argument(
        "--events", "-n", type=_count(0), default=100_000, metavar="N", help="records to write (default 100000)"
    )
    generate.add_argument(
        "--machines", "-m", type=_count(1), default=1_000, metavar="M", help="machines they come from (default 1000)"
    )
    generate.add_argument(
        "--seed", "-s", type=int, default=1, metavar="S", help="the same seed writes the same feed (default 1)"
    )
    generate.add_argument(
        "--late-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of records that arrive 6-60 minutes late (e.g. 0.03 or 3%%; default 0)",
    )
    generate.add_argument("-o", "--output", default="-", metavar="FILE", help="a .gz name compresses; - is stdout")
    generate.set_defaults(handler=_cmd_generate)

    demo = commands.add_parser("demo", help="generate, run and summarise in a local folder")
    demo.add_argument(
        "--dir", default="sessionflow-demo", metavar="DIR", help="where to put it (default: ./sessionflow-demo)"
    )
    demo.add_argument(
        "--force", action="store_true", help="replace the sessionflow.toml, events.jsonl.gz and lake of a former demo"
    )
    demo.add_argument("--events", type=_count(0), default=50_000, metavar="N", help="records to generate")
    demo.add_argument("--machines", type=_count(1), default=500, metavar="M", help="machines they come from")
    demo.set_defaults(handler=_cmd_demo)

    init = commands.add_parser(
        "init", help="write an example sessionflow.toml, or one proposed for your feed (--from SAMPLE)"
    )
    init.add_argument(
        "path", nargs="?", default=DEFAULT_CONFIG_FILE, metavar="PATH", help="default: ./" + DEFAULT_CONFIG_FILE
    )
    init.add_argument("--force", action="store_true", help="replace the file when it exists")
    init.add_argument(
        "--from",
        dest="sample_from",
        metavar="SAMPLE",
        help="propose a config for this feed (JSON lines, .gz or - for stdin) from its first records, "
        "and print what it does to them",
    )
    init.add_argument(
        "--sample",
        type=_count(1),
        metavar="N",
        help=f"with --from: how many records to read (default {DEFAULT_SAMPLE})",
    )
    init.set_defaults(handler=_cmd_init)

    check = commands.add_parser("check-config", help="load and validate a config, run nothing")
    check.add_argument("--config", "-c", metavar="FILE")
    check.set_defaults(handler=_cmd_check_config)

    verify = commands.add_parser(
        "verify",
        help="check a lake against its ledgers: files, counts, sessions (exit 5 when something is off)",
    )
    verify.add_argument("lake", metavar="DIR", help="the lake folder (written by run, backfill or aws-local fetch)")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON on stdout")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="first finish publishing runs a stopped process had committed (what the next run would do)",
    )
    verify.set_defaults(handler=_cmd_verify)

    for register in _runtime_commands():
        register(commands)
    return parser


def _runtime_commands() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """Subcommands of the readers (report, query) and of the optional runtimes; their modules import
    nothing heavy."""
    registers = []
    for module_name in (
        "sessionflow.report.commands",
        "sessionflow.runtimes.aws.commands",
        "sessionflow.runtimes.aws.cloud",
        "sessionflow.runtimes.backfill.commands",
    ):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError:
            continue
        registers.append(module.register)
    return registers


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return int(args.handler(args))
    except (ConfigError, UsageError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except InputError as exc:
        log.error("input: %s", exc)
        return EXIT_INPUT
    except (OutputError, StateError) as exc:
        log.error("output: %s", exc)
        return EXIT_OUTPUT
    except KeyboardInterrupt:
        log.error("interrupted; nothing of this run was published")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception:
        log.exception("unexpected error (a bug: please report it with this trace)")
        return EXIT_BUG
