"""Adapters: each runtime turns raw lines into a :class:`Result`, read back from what it really writes.

The cheap runtimes (the two sessionizers through the core's pipeline, the Lambda handlers on the
memory store) run each feed alone, one line per batch. The expensive ones (``sessionflow run`` in a
subprocess, the local AWS, Spark) run every feed at once, once per test session; a feed's test then
looks at its own machines and its own dirty lines.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline, Sessionizer
from tests.contract.feeds import CONFIG_TOML, Feed
from tests.contract.reference import Result
from tests.helpers import kinesis_event

Row = dict[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


# -- rows to a Result --------------------------------------------------------------------------------


def result_of(events: Iterable[Row], sessions: Iterable[Row], rejections: Iterable[Row], duplicates: int = 0) -> Result:
    """Rows as the runtimes write them (dicts: the events and sessions tables, rejected rows)."""
    result = Result(duplicates=duplicates)
    for e in events:
        late, arrived_late, pages = bool(e["late"]), bool(e["arrived_late"]), e.get("properties_pages")
        placed = (e["session_id"], e["session_seq"], e["ms_since_prev"], late, arrived_late, pages)
        result.add_event(e["event_id"], (e["machine_id"], e["timestamp"], e["event_type"], *placed))
    for s in sessions:
        counts = tuple(sorted((str(k), int(v)) for k, v in dict(s["event_type_counts"]).items()))
        span = (s["machine_id"], s["start_ts"], s["end_ts"], s["event_count"])
        own = (s["os"], s["session_number"], s["documents"], s["late_placed"], s["close_reason"])
        result.sessions[s["session_id"]] = (*span, counts, s["first_event_type"], s["last_event_type"], *own)
    for r in rejections:
        result.rejections[(r["reason"], base64.b64decode(r["raw_base64"]))] += 1
    return result


def only(result: Result, feed: Feed) -> Result:
    """The part of a run on every feed that belongs to ``feed``; duplicates from conservation."""
    raw = {line for line in feed.lines() if line.strip()}
    mine = Result(
        events={k: v for k, v in result.events.items() if v[0][0] in feed.machines},
        sessions={k: v for k, v in result.sessions.items() if v[0] in feed.machines},
    )
    for key, count in result.rejections.items():
        if key[1] in raw:
            mine.rejections[key] = count
    rows = sum(len(v) for v in mine.events.values())
    mine.duplicates = feed.records - rows - sum(mine.rejections.values())
    return mine


def _last_sessions(sessions: Iterable[Row]) -> dict[str, str]:
    """machine -> the id of its session that starts last."""
    last: dict[str, Row] = {}
    for s in sessions:
        if s["machine_id"] not in last or s["start_ts"] > last[s["machine_id"]]["start_ts"]:
            last[s["machine_id"]] = s
    return {m: s["session_id"] for m, s in last.items()}


def closed_early(before_flush: Iterable[Row], everything: Iterable[Row]) -> set[str]:
    """Machines whose last session was written before the end of input."""
    written = {s["session_id"] for s in before_flush}
    return {m for m, sid in _last_sessions(everything).items() if sid in written}


# -- the two sessionizers, through the core's pipeline --------------------------------------------------


def through_pipeline(feed: Feed, config: Config, make: Callable[[Config], Sessionizer], batch: int | None) -> Result:
    """``batch`` lines per batch (None: all in one); event dicts as the dict emitter fills them."""
    pipeline = Pipeline(config, now_ms(), make(config))
    out = Outputs()
    lines = [(line, "feed", i + 1) for i, line in enumerate(feed.lines())]
    size = batch or len(lines)
    for start in range(0, len(lines), size):
        pipeline.feed(lines[start : start + size], out)
    before_flush = list(out.sessions)
    pipeline.flush(out)
    result = result_of(out.events, out.sessions, out.rejections, len(out.duplicates))
    assert pipeline.tally.duplicates == len(out.duplicates)
    if batch == 1:
        result.closed_early = closed_early(before_flush, out.sessions)
    return result


# -- the Lambda handlers on the memory store ------------------------------------------------------------


def through_aws_handlers(feed: Feed, config: Config) -> Result:
    """process and then sessionize, one record per invocation, as Lambda with BatchSize 1 calls them."""
    from sessionflow.runtimes.aws import handlers
    from sessionflow.runtimes.aws.outputs import MemorySink, MemoryStreamWriter
    from sessionflow.runtimes.aws.settings import Settings
    from sessionflow.state.memory import MemoryStore

    clean, sink = MemoryStreamWriter(), MemorySink()
    runtime = handlers.Runtime.build(Settings(), MemoryStore(), clean, sink, config=config)
    handlers.use_runtime(runtime)
    try:
        sessionized = 0
        for i, line in enumerate(line for line in feed.lines() if line):  # Kinesis records are never empty
            assert handlers.process_handler(kinesis_event("raw", [line], i, arrived=time.time()), None) == {
                "batchItemFailures": []
            }
            for entry in clean.entries[sessionized:]:
                response = handlers.sessionize_handler(
                    kinesis_event("clean", [entry.data], sessionized, arrived=time.time()), None
                )
                assert response == {"batchItemFailures": []}
                sessionized += 1
        before_flush = list(sink.rows.get("sessions", []))
        handlers.flush_handler({"shards": ["clean/shardId-000000000000"]}, None)
    finally:
        handlers.use_runtime(None)
    rows = {table: sink.rows.get(table, []) for table in ("events", "sessions", "rejected")}
    result = result_of(rows["events"], rows["sessions"], rows["rejected"])
    result.duplicates = only(result, feed).duplicates
    result.closed_early = closed_early(before_flush, rows["sessions"])
    return result


# -- every feed at once: sessionflow run, the local AWS, Spark ------------------------------------------


def write_input(folder: Path, lines: list[bytes]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    feed = folder / "feeds.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    config_path = folder / "sessionflow.toml"
    config_path.write_text(CONFIG_TOML)
    return feed, config_path


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``sessionflow ...`` in its own process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sessionflow", *args], capture_output=True, timeout=120, check=False)


def read_lake(lake: Path) -> tuple[list[Row], list[Row], list[Row]]:
    """A Parquet lake's events and sessions, read with DuckDB; its rejected rows."""
    import duckdb

    tables = []
    with duckdb.connect() as db:
        for table in ("events", "sessions"):
            cursor = db.execute(f"SELECT * FROM read_parquet('{lake}/{table}/*/*.parquet', hive_partitioning = true)")
            names = [c[0] for c in cursor.description]
            tables.append([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])
    files = sorted(lake.glob("rejected/*/*.jsonl"))
    rejected = [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]
    return tables[0], tables[1], rejected


def embedded_run(folder: Path, lines: list[bytes]) -> tuple[Result, dict[str, Any], subprocess.CompletedProcess[bytes]]:
    """``sessionflow run`` on a file, then ``sessionflow verify`` on its lake."""
    feed, config_path = write_input(folder, lines)
    lake = folder / "lake"
    done = cli("run", str(feed), "--out", str(lake), "--config", str(config_path), "--json", "--quiet")
    assert done.returncode == 0, done.stderr.decode()
    report = orjson.loads(done.stdout)
    events, sessions, rejected = read_lake(lake)
    verify = cli("verify", str(lake), "--json")
    return result_of(events, sessions, rejected), report, verify


def local_aws_run(
    endpoint: str, folder: Path, lines: list[bytes], config: Config, batch_size: int = 7
) -> tuple[Result, str | None]:
    """put on ``raw``, the poller playing Lambda's event source mappings, flush, the S3 output.

    Also ``aws-local fetch``'s lake: the error it raises, or None.
    """
    import urllib.request

    import pytest

    from sessionflow.runtimes.aws import handlers
    from sessionflow.runtimes.aws.local.poller import pipeline_poller
    from sessionflow.runtimes.aws.local.resources import (
        LocalAws,
        create_resources,
        fetch,
        local_environment,
        put_lines,
        read_output,
    )
    from sessionflow.runtimes.aws.settings import Settings

    _, config_path = write_input(folder, lines)
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    with pytest.MonkeyPatch.context() as env:
        for key, value in local_environment(endpoint).items():
            env.setenv(key, value)
        env.setenv("SESSIONFLOW_CONFIG", str(config_path))
        aws = LocalAws(endpoint, Settings.from_env())
        # One shard each: arrival order is the file's order, which is what the feeds are written in.
        create_resources(aws, raw_shards=1, clean_shards=1)
        handlers.use_runtime(None)
        try:
            put_lines(aws, lines)
            pipeline_poller(aws, batch_size=batch_size).run()
            handlers.flush_handler({}, None)
            # Every row as delivered: no retry happened, so no exact copy is there to drop.
            rows = read_output(aws)
            try:
                fetch(aws, folder / "lake", config)
                fetch_error = None
            except ValueError as exc:
                fetch_error = str(exc)
        finally:
            handlers.use_runtime(None)
    return result_of(rows["events"], rows["sessions"], rows["rejected"]), fetch_error


def spark_run(spark: Any, folder: Path, lines: list[bytes], config: Config) -> Result:
    from sessionflow.runtimes.backfill.job import backfill

    feed, _ = write_input(folder, lines)
    lake = folder / "lake"
    backfill(spark, [str(feed)], str(lake), config, now_ms=now_ms())
    return result_of(*read_lake(lake))
