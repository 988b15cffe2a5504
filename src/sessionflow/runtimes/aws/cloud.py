"""``sessionflow aws ...``: operating the deployed AWS runtime (today: ``redrive``).

Import-light: boto3 is imported when a subcommand runs.

    sessionflow aws redrive --stack sessionflow-prod --config deploy/sessionflow.toml

replays every message of the stack's failure queues (docs/deploy.md, "Failed records"): a ``raw``
range from the raw archive through the ``process`` step, a ``clean`` range from the stream, both
marked redriven, so the pipeline applies each record once (:mod:`.redrive`). The stack's outputs
name the queues, streams, bucket and Firehose; each can be given instead (``--raw-stream`` ...).
Credentials and region are boto3's own (``AWS_PROFILE``, ``AWS_REGION``, ...).
"""

from __future__ import annotations

import argparse
from typing import Any

from sessionflow.exitcodes import EXIT_OK

# Stack output -> the option that can stand in for it.
OUTPUTS = {
    "RawStreamName": "raw_stream",
    "CleanStreamName": "clean_stream",
    "RejectedDeliveryStreamName": "rejected_firehose",
    "DataBucketName": "bucket",
}
QUEUES = ("ProcessFailureQueueUrl", "SessionizeFailureQueueUrl")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "aws",
        help="operate the deployed AWS runtime (redrive what Lambda gave up on)",
        description=(__doc__ or "").split("\n\n", 1)[0],
    )
    commands = parser.add_subparsers(dest="aws_cloud_command", metavar="ACTION", required=True)
    redrive = commands.add_parser(
        "redrive",
        help="replay the failure queues' messages: raw ranges from the raw archive, clean ones from the stream",
    )
    redrive.add_argument("--stack", help="the CloudFormation stack, e.g. sessionflow-prod: its outputs name the rest")
    redrive.add_argument("--region", help="default: boto3's (AWS_REGION, the profile)")
    redrive.add_argument(
        "--config", "-c", metavar="FILE", help="the deployed pipeline config (deploy/sessionflow.toml)"
    )
    redrive.add_argument("--queue-url", action="append", default=[], metavar="URL", help="a failure queue (repeatable)")
    redrive.add_argument("--raw-stream")
    redrive.add_argument("--clean-stream")
    redrive.add_argument("--rejected-firehose")
    redrive.add_argument("--bucket", help="the data bucket (the archive is under raw/)")
    redrive.add_argument("--keep", action="store_true", help="leave the messages in their queues")
    redrive.set_defaults(handler=_redrive)


def _redrive(args: argparse.Namespace) -> int:
    from sessionflow.config import resolve_config
    from sessionflow.errors import InputError, UsageError
    from sessionflow.runtimes.aws.outputs import FirehoseSink, KinesisWriter
    from sessionflow.runtimes.aws.process import ProcessStep
    from sessionflow.runtimes.aws.redrive import FailedRange, RedriveReport, drain_queue, redrive

    try:
        import boto3
    except ImportError as exc:
        raise UsageError("sessionflow aws needs its extra: pip install 'sessionflow[aws]'") from exc
    session = boto3.session.Session(region_name=args.region)
    names, queues = _names(session, args)
    config = resolve_config(args.config)
    kinesis, firehose, s3, sqs = (session.client(s) for s in ("kinesis", "firehose", "s3", "sqs"))
    clean = KinesisWriter(kinesis, names["clean_stream"])
    step = ProcessStep(config, clean, FirehoseSink(firehose, {"rejected": names["rejected_firehose"]}))
    report = RedriveReport()

    def replay(failed: FailedRange) -> None:
        redrive(
            failed,
            raw_stream=names["raw_stream"],
            clean_stream=names["clean_stream"],
            s3=s3,
            bucket=names["bucket"],
            kinesis=kinesis,
            step=lambda: step,
            clean=clean,
            report=report,
        )

    redriven, failed = 0, []
    for queue in queues:
        outcome = drain_queue(sqs, queue, replay, keep=args.keep)
        redriven += outcome.redriven
        failed.extend(outcome.failed)
    for described in report.ranges:
        print(f"redriven: {described}")
    print(
        f"{redriven} messages: {report.records} records replayed, {report.events} events put on "
        f"{names['clean_stream']}, {report.rejected} rejected rows sent"
    )
    if failed:
        raise InputError("some messages could not be redriven (left in their queue):\n" + "\n".join(failed))
    return EXIT_OK


def _names(session: Any, args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """The resources: the stack's outputs, overridden by the options given."""
    from sessionflow.errors import UsageError

    outputs: dict[str, str] = {}
    if args.stack:
        stacks = session.client("cloudformation").describe_stacks(StackName=args.stack)["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    names = {option: getattr(args, option) or outputs.get(output) for output, option in OUTPUTS.items()}
    missing = [f"--{option.replace('_', '-')}" for option, value in names.items() if not value]
    queues = args.queue_url or [outputs[q] for q in QUEUES if q in outputs]
    if not queues:
        missing.append("--queue-url")
    if missing:
        raise UsageError(f"name the stack (--stack) or give {', '.join(missing)}")
    return {k: v for k, v in names.items() if v}, queues
