"""The report's time on a generated lake, against DuckDB reading the same columns once.

    python bench/bench_report.py [--events 1000000] [--machines 10000] [--seed 1] [--repeat 3]
                                 [--json results.json]

From the generated feed (cached as bench_run.py caches it) this writes the lake with
``sessionflow run`` (once, cached too), then times ``sessionflow report LAKE -o FILE`` and, as the
baseline measured in the same invocation, one DuckDB query in its own process that reads every
column of the events and sessions files the report reads (``SCAN`` below): the floor any report
over these files pays. Each is run ``--repeat`` times, the best kept; the ratio report / scan says
how many passes over the data the report's figures cost. It checks the page has its charts.

Exit status: 1 when a command failed or the page lacks charts, else 0.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import (  # the harness next to this file
    BenchError,
    Sample,
    feed_arguments,
    measure,
    prepare_config,
    prepare_input,
    sessionflow_command,
    warm_page_cache,
)

MIN_CHARTS = 6
# Every column the report's queries read, each read once, in one DuckDB process.
SCAN = """
import sys, duckdb
lake = sys.argv[1]
db = duckdb.connect()
print(db.execute(
    f"SELECT count(*), count(DISTINCT machine_id), count(DISTINCT user_id), count(DISTINCT session_id), "
    f"sum(session_seq), count(DISTINCT event_type), count(*) FILTER (WHERE late), "
    f"count(*) FILTER (WHERE arrived_late), count(DISTINCT event_date) "
    f"FROM read_parquet('{lake}/events/*/*.parquet', hive_partitioning = true)"
).fetchall())
print(db.execute(
    f"SELECT count(*), sum(duration_ms), sum(event_count), count(DISTINCT close_reason), "
    f"count(DISTINCT hour(session_start)), count(DISTINCT session_date) "
    f"FROM read_parquet('{lake}/sessions/*/*.parquet', hive_partitioning = true)"
).fetchall())
"""


def _log(message: str) -> None:
    print(message, flush=True)


def prepare_lake(source: Path, config: Path, workdir: Path) -> Path:
    """The feed's lake, written once (a lake whose run finished has its ledger)."""
    lake = workdir / f"report-lake-{source.stem}"
    if (lake / "_sessionflow" / "ledger" / "run-00001.json").exists():
        _log(f"lake: {lake} (cached)")
        return lake
    started = time.perf_counter()
    command = sessionflow_command("run", str(source), "--out", str(lake), "--config", str(config), "--overwrite", "-q")
    measure(command, workdir / "logs" / "report-lake-run.log")
    _log(f"lake: written in {time.perf_counter() - started:.1f} s -> {lake}")
    return lake


def best(command: list[str], log: Path, repeat: int) -> Sample:
    samples = [measure(command, log) for _ in range(repeat)]
    return min(samples, key=lambda sample: sample.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feed_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is kept (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE as JSON")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        source = prepare_input(workdir, args.events, args.machines, args.seed)
        warm_page_cache(source)
        config = prepare_config(workdir)
        lake = prepare_lake(source, config, workdir)
        page = workdir / "report.html"
        logs = workdir / "logs"
        report = best(sessionflow_command("report", str(lake), "-o", str(page)), logs / "report.log", args.repeat)
        scan = best([sys.executable, "-c", SCAN, str(lake)], logs / "report-scan.log", args.repeat)
    except BenchError as exc:
        _log(f"FAILED: {exc}")
        return 1
    charts = len(re.findall(r'<svg class="chart"', page.read_text(encoding="utf-8")))
    events = int(scan.stdout.split(",")[0].strip("[( "))
    results: dict[str, Any] = {
        "events": events,
        "report": {"seconds": round(report.seconds, 3), "cpu_seconds": round(report.cpu_seconds, 2)},
        "report_peak_rss_mb": round(report.peak_rss_mb, 1),
        "scan": {"seconds": round(scan.seconds, 3), "cpu_seconds": round(scan.cpu_seconds, 2)},
        "ratio_report_to_scan": round(report.seconds / scan.seconds, 2) if scan.seconds else None,
        "cpu_ratio_report_to_scan": round(report.cpu_seconds / scan.cpu_seconds, 2) if scan.cpu_seconds else None,
        "charts": charts,
        "page_bytes": page.stat().st_size,
    }
    _log(f"{'':12}{'seconds':>9}{'CPU s':>8}{'peak MB':>9}")
    _log(f"{'report':12}{report.seconds:>9.2f}{report.cpu_seconds:>8.2f}{report.peak_rss_mb:>9.0f}")
    _log(f"{'DuckDB scan':12}{scan.seconds:>9.2f}{scan.cpu_seconds:>8.2f}{scan.peak_rss_mb:>9.0f}")
    _log(
        f"{events:,} events: the report takes {results['ratio_report_to_scan']}x the scan's time "
        f"({results['cpu_ratio_report_to_scan']}x its CPU); {charts} charts, {page.stat().st_size:,} bytes"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if charts < MIN_CHARTS:
        _log(f"FAILED: the page has {charts} charts, fewer than {MIN_CHARTS}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
