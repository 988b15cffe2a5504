"""What the S3 lake's format costs a reader: gzip JSON lines (what the Firehoses wrote before) against
Parquet (Firehose record format conversion, SNAPPY), and what the deduplicating views add.

Athena bills by the bytes it scans. A query over JSON lines reads every byte of every object; over
Parquet it reads only the column chunks of the columns it names. This writes one generated feed both
ways, as the handlers' rows (the Firehoses' input) and as Firehose's Parquet output would hold them,
and reports the bytes each format stores and each first question scans. Then it times, with DuckDB
on the Parquet files, each question against the view (one row per key) and against the delivered
table directly: the ratio is what the dedupe costs (same run, same files, so machine speed cancels).

    python bench/bench_lake_formats.py [--events N] [--machines M] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline
from sessionflow.runtimes.aws.catalog import lake_tables, view_sql
from sessionflow.runtimes.aws.outputs import encode_row
from sessionflow.synthetic import FeedShape, generate

ROOT = Path(__file__).resolve().parents[1]
# The first questions (docs/deploy.md), with the columns each scans.
QUESTIONS = {
    "sessions per day": (
        "sessions",
        ["machine_id"],
        "SELECT session_date, count(*), count(DISTINCT machine_id) FROM {table} GROUP BY 1 ORDER BY 1",
    ),
    "median duration": (
        "sessions",
        ["duration_ms"],
        "SELECT session_date, quantile_cont(duration_ms, 0.5) FROM {table} GROUP BY 1 ORDER BY 1",
    ),
    "events per type": (
        "events",
        ["event_type"],
        "SELECT event_type, count(*) FROM {table} GROUP BY 1 ORDER BY 2 DESC",
    ),
}


def rows_of(config: Config, lines: list[bytes]) -> Outputs:
    pipeline = Pipeline(config, now_ms=int(time.time() * 1000))
    out = Outputs()
    pipeline.feed([(line, "feed", i + 1) for i, line in enumerate(lines)], out)
    pipeline.flush(out)
    return out


def write_formats(config: Config, out: Outputs, folder: Path) -> dict[str, dict[str, Any]]:
    """Each table as gzip JSON lines and as Parquet, one object per partition (one buffer): SNAPPY
    (kept, for the timings) and GZIP, the two codecs Firehose's Parquet serializer offers."""
    import pyarrow.parquet as pq

    from sessionflow.lake.writer import _table as table_of  # rows -> Arrow, as the embedded lake does
    from sessionflow.runtimes.arrow import arrow_schema

    sizes: dict[str, dict[str, Any]] = {}
    rows = {"events": out.events, "sessions": out.sessions}
    for table in lake_tables(config):
        if table.name not in rows:
            continue
        by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows[table.name]:
            by_partition[row[table.partition]].append(row)
        json_bytes = parquet_bytes = gzip_parquet_bytes = 0
        column_bytes: dict[str, int] = defaultdict(int)
        gzip_column_bytes: dict[str, int] = defaultdict(int)
        for value, partition_rows in sorted(by_partition.items()):
            blob = gzip.compress(b"".join(encode_row(row) for row in partition_rows))
            json_bytes += len(blob)
            arrow = table_of(partition_rows, arrow_schema(table.columns))
            path = folder / table.name / f"{table.partition}={value}" / "part.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(arrow, path, compression="snappy")
            parquet_bytes += path.stat().st_size
            _add_chunks(path, column_bytes)
            gzipped = folder / "gzip" / path.relative_to(folder)
            gzipped.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(arrow, gzipped, compression="gzip")
            gzip_parquet_bytes += gzipped.stat().st_size
            _add_chunks(gzipped, gzip_column_bytes)
        sizes[table.name] = {
            "rows": len(rows[table.name]),
            "gzip_json_bytes": json_bytes,
            "parquet_bytes": parquet_bytes,
            "gzip_parquet_bytes": gzip_parquet_bytes,
            "column_bytes": dict(column_bytes),
            "gzip_column_bytes": dict(gzip_column_bytes),
        }
    return sizes


def _add_chunks(path: Path, column_bytes: dict[str, int]) -> None:
    """The compressed bytes of each column's chunks: what a reader of that column scans."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(column)
            column_bytes[chunk.path_in_schema.split(".")[0]] += chunk.total_compressed_size


def time_views(config: Config, folder: Path, repeats: int) -> dict[str, dict[str, float]]:
    import duckdb

    connection = duckdb.connect()
    for table in lake_tables(config):
        if (folder / table.name).is_dir():
            source = f"read_parquet('{folder}/{table.name}/*/*.parquet', hive_partitioning = true)"
            connection.execute(f'CREATE VIEW "{table.delivered}" AS SELECT * FROM {source}')
            connection.execute(f'CREATE VIEW "{table.name}" AS {view_sql(table)}')
    timings: dict[str, dict[str, float]] = {}
    for question, (table, _, query) in QUESTIONS.items():
        results = {}
        for target in (f"{table}_delivered", table):
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                answer = connection.execute(query.format(table=f'"{target}"')).fetchall()
                samples.append(time.perf_counter() - started)
            results[target] = (statistics.median(samples), answer)
        delivered, view = results[f"{table}_delivered"], results[table]
        assert delivered[1] == view[1], f"{question}: the view's answer differs (the feed has no copies)"
        timings[question] = {"table_s": delivered[0], "view_s": view[0], "ratio": view[0] / delivered[0]}
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--machines", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    config = Config.load(ROOT / "deploy" / "sessionflow.toml")
    lines = list(generate(FeedShape(events=args.events, machines=args.machines, seed=1)))
    out = rows_of(config, lines)
    with tempfile.TemporaryDirectory(prefix="sessionflow-formats-") as tmp:
        sizes = write_formats(config, out, Path(tmp))
        timings = time_views(config, Path(tmp), args.repeats)
    report: dict[str, Any] = {"events": args.events, "sizes": sizes, "questions": {}}
    keys = {table.name: [table.partition, *table.key] for table in lake_tables(config)}
    for name, (table, columns, _) in QUESTIONS.items():
        size = sizes[table]
        # Through the view, the window's key columns are read as well (the partition is in the path).
        through_view = sorted({*columns, *keys[table]} - {keys[table][0]})
        report["questions"][name] = {
            "json_scan_bytes": size["gzip_json_bytes"],
            "parquet_scan_bytes": sum(size["gzip_column_bytes"][c] for c in columns),
            "parquet_view_scan_bytes": sum(size["gzip_column_bytes"][c] for c in through_view),
            **timings[name],
        }
    for table, size in sizes.items():
        print(
            f"{table}: {size['rows']} rows; gzip JSON {size['gzip_json_bytes'] / 1e6:.2f} MB, Parquet "
            f"{size['parquet_bytes'] / 1e6:.2f} MB (SNAPPY) / {size['gzip_parquet_bytes'] / 1e6:.2f} MB (GZIP)"
        )
    for name, figures in report["questions"].items():
        print(
            f"{name}: scans {figures['json_scan_bytes'] / 1e6:.2f} MB of JSON, "
            f"{figures['parquet_scan_bytes'] / 1e6:.3f} MB of GZIP Parquet from the table, "
            f"{figures['parquet_view_scan_bytes'] / 1e6:.3f} MB through the view; the view takes "
            f"{figures['ratio']:.2f}x the table's time ({figures['view_s'] * 1000:.1f} ms, DuckDB)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
