"""Throughput of the Spark backfill on N synthetic events, Spark's start-up time shown apart.

    python bench/bench_backfill.py --events 1000000 [--master local[*]] [--json]

Prints one line (or one JSON object). The feed is generated once per shape into bench/out/ and
reused; the lake is written to bench/out/ and replaced on each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import orjson

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.synthetic import FeedShape, write_feed

OUT = Path(__file__).resolve().parent / "out"
CONFIG = EXAMPLE_CONFIG


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", "-n", type=int, default=1_000_000)
    parser.add_argument("--machines", type=int, default=None, help="default: events / 500")
    parser.add_argument("--files", type=int, default=8, help="split the feed into this many input files")
    parser.add_argument("--master", default=os.environ.get("SESSIONFLOW_SPARK_MASTER", "local[*]"))
    parser.add_argument("--shuffle-partitions", type=int, default=None, help="default: 2 x cores")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    machines = args.machines or max(10, args.events // 500)
    shape = FeedShape(events=args.events, machines=machines, seed=42, days=7)
    feed = OUT / f"feed-{args.events}-{machines}-{args.files}"
    if not (feed / "_done").exists():
        shutil.rmtree(feed, ignore_errors=True)
        feed.mkdir(parents=True)
        whole = feed / "_whole.jsonl"
        write_feed(shape, str(whole))
        _split(whole, feed, args.files)
        whole.unlink()
        (feed / "_done").touch()
    config_path = OUT / "bench-backfill.toml"
    config_path.write_text(CONFIG)
    config = Config.load(config_path)
    lake = OUT / "backfill-lake"
    shutil.rmtree(lake, ignore_errors=True)
    input_bytes = sum(p.stat().st_size for p in feed.glob("*.jsonl"))

    started = time.perf_counter()
    from sessionflow.runtimes.backfill.job import backfill, build_spark

    cores = os.cpu_count() or 2
    partitions = args.shuffle_partitions or 2 * cores
    spark = build_spark(args.master, **{"spark.sql.shuffle.partitions": str(partitions)})
    spark.sparkContext.setLogLevel("ERROR")
    spark.range(1).collect()  # the JVM and the first job are start-up, not backfill
    startup = time.perf_counter() - started
    try:
        report = backfill(spark, [str(feed)], str(lake), config)
    finally:
        spark.stop()
    result = {
        "benchmark": "backfill",
        "master": args.master,
        "cores": cores,
        "events": args.events,
        "records": report.records,
        "input_mb": round(input_bytes / 1e6, 1),
        "spark_startup_s": round(startup, 1),
        "backfill_s": round(report.seconds, 1),
        "records_per_s": round(report.records / report.seconds),
        "mb_per_s": round(input_bytes / 1e6 / report.seconds, 2),
        "events_written": report.events,
        "sessions_written": report.sessions,
        "phases_s": {name: round(seconds, 1) for name, seconds in report.phases.items()},
    }
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(
            f"backfill (spark {args.master}, {cores} cores): {report.records:,} records "
            f"({result['input_mb']} MB) in {result['backfill_s']}s = {result['records_per_s']:,} records/s, "
            f"{result['mb_per_s']} MB/s; Spark start-up {result['spark_startup_s']}s not included; "
            + ", ".join(f"{name} {seconds}s" for name, seconds in result["phases_s"].items())
        )
    return 0


def _split(whole: Path, folder: Path, files: int) -> None:
    """Consecutive chunks, named so sorted order is arrival order, as a raw S3 prefix would hold them."""
    lines = whole.read_bytes().splitlines(keepends=True)
    size = -(-len(lines) // files)
    for i in range(files):
        (folder / f"part-{i:04d}.jsonl").write_bytes(b"".join(lines[i * size : (i + 1) * size]))


if __name__ == "__main__":
    raise SystemExit(main())
