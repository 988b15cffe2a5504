"""``sessionflow backfill``: the CLI side of the Spark backfill. Imports nothing heavy at import time."""

from __future__ import annotations

import argparse
import os
from typing import Any

from sessionflow.exitcodes import EXIT_OK
from sessionflow.runtimes.backfill.options import add_arguments

ENV_MASTER = "SESSIONFLOW_SPARK_MASTER"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="re-sessionize history on Spark into the same lake (all of it, or --from/--to days)",
        description=(
            "Read raw JSON lines with Spark and write the lake `sessionflow run` writes, with the same "
            "session ids. Runs on a local Spark here; on a cluster, submit "
            "sessionflow/runtimes/backfill/job.py (see docs/backfill.md)."
        ),
    )
    add_arguments(parser)
    parser.add_argument(
        "--master",
        default=os.environ.get(ENV_MASTER, "local[*]"),
        help=f"Spark master (env {ENV_MASTER}; default local[*])",
    )
    parser.add_argument("--shuffle-partitions", type=int, metavar="N", help="spark.sql.shuffle.partitions")
    parser.set_defaults(handler=_cmd_backfill)


def _cmd_backfill(args: argparse.Namespace) -> int:
    import sys

    import orjson

    from sessionflow.config import resolve_config
    from sessionflow.errors import UsageError

    try:
        from sessionflow.runtimes.backfill.job import build_spark, run_job
    except ImportError as exc:
        raise UsageError(str(exc)) from None

    config = resolve_config(args.config)
    conf = {"spark.sql.shuffle.partitions": str(args.shuffle_partitions)} if args.shuffle_partitions else {}
    from pyspark.sql import SparkSession

    # Stop only a session this command started (a notebook's or a test's stays up).
    owned = SparkSession.getActiveSession() is None
    spark = build_spark(args.master, **conf)
    try:
        report = run_job(args, config, spark)
    finally:
        if owned:
            spark.stop()
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
    else:
        data = report.to_dict()
        rejected = sum(data["rejected"].values())
        sys.stderr.write(
            f"backfill ({data['mode']}): {data['records']:,} records from {data['files']} files -> "
            f"{data['events']:,} events, {data['sessions']:,} sessions, {rejected:,} rejected "
            f"in {data['seconds']:.1f}s ({data['records_per_second']:,}/s)\n"
        )
    return EXIT_OK
