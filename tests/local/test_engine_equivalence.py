"""The embedded runner's columnar engine gives exactly what the core's dict pipeline gives.

The core (`Pipeline`) is the reference every runtime must agree with, to the event: same
rejections, same event columns, same session ids and summaries, whatever the number of workers.
"""

from __future__ import annotations

import base64
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline
from sessionflow.core.native import PURE_ENV, compiled
from sessionflow.runtimes.local import engine
from sessionflow.runtimes.local.reader import Source, bounded
from sessionflow.runtimes.local.runner import run
from sessionflow.schema import SESSION_COLUMNS, event_columns

NOW = int(datetime(2026, 11, 26, tzinfo=UTC).timestamp() * 1000)


def reference(feed: Path, config: Config) -> Outputs:
    pipeline = Pipeline(config, NOW)
    out = Outputs()
    lines = [(raw, str(feed), number) for number, raw in enumerate(feed.read_bytes().split(b"\n")[:-1], 1)]
    for start in range(0, len(lines), 997):
        pipeline.feed(lines[start : start + 997], out)
    pipeline.flush(out)
    return out


def read_table(lake: Path, table: str, partition: str) -> list[dict[str, Any]]:
    return ds.dataset(lake / table, format="parquet", partitioning="hive").to_table().to_pylist()


def normalise_event(event: dict[str, Any], config: Config) -> dict[str, Any]:
    row = {name: event[name] for name, _ in event_columns(config)}
    row["event_date"] = event["event_date"]
    if isinstance(row["event_time"], str):
        row["event_time"] = datetime.fromisoformat(row["event_time"])
    return row


@pytest.mark.parametrize("implementation", ["compiled", "pure"])
@pytest.mark.parametrize(
    ("workers", "block_bytes"),
    [(0, None), (2, None), (0, 16 << 10), (2, 16 << 10)],
    ids=["in-process", "2-workers", "in-process-many-blocks", "2-workers-many-blocks"],
)
def test_lake_equals_the_core_reference(
    small_feed: Path,
    example_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    block_bytes: int | None,
    implementation: str,
) -> None:
    """With 16 KiB blocks (about 80 of them), rows wait in the reorder buffer across blocks and
    each block's line numbers are known only when the blocks before it come back. The compiled
    sessionizer reads Arrow key columns and writes Arrow session columns; the pure one gets lists."""
    if implementation == "pure":
        monkeypatch.setenv(PURE_ENV, "1")
    elif compiled() is None:
        pytest.skip("the compiled sessionizer is not built")
    if block_bytes is not None:
        monkeypatch.setattr(engine, "BLOCK_BYTES", block_bytes)
        assert small_feed.stat().st_size > 50 * block_bytes
    expected = reference(small_feed, example_config)
    lake = tmp_path / "lake"
    report = run([str(small_feed)], lake, example_config, now_ms=NOW, workers=workers)

    got_events = {e["event_id"]: e for e in read_table(lake, "events", "event_date")}
    want_events = {e["event_id"]: normalise_event(e, example_config) for e in expected.events}
    assert len(got_events) == len(expected.events) == report.tally.events
    for event_id, want in want_events.items():
        got = got_events[event_id]
        assert {k: got[k] for k in want} == want, event_id

    got_sessions = sorted(read_table(lake, "sessions", "session_date"), key=lambda s: s["session_id"])
    want_sessions = sorted(expected.sessions, key=lambda s: s["session_id"])
    assert [s["session_id"] for s in got_sessions] == [s["session_id"] for s in want_sessions]
    for got, want in zip(got_sessions, want_sessions, strict=True):
        got["event_type_counts"] = dict(got["event_type_counts"])
        for name, _ in SESSION_COLUMNS:
            if name in ("session_start", "session_end"):
                assert got[name] == datetime.fromisoformat(want[name])
            else:
                assert got[name] == want[name], name

    rejected = [
        row
        for path in sorted((lake / "rejected").rglob("*.jsonl"))
        for row in map(_json, path.read_bytes().splitlines())
    ]
    assert sorted((r["line"], r["reason"]) for r in rejected) == sorted(
        (r["line"], r["reason"]) for r in expected.rejections
    )
    raw_lines = small_feed.read_bytes().split(b"\n")
    for row in rejected:
        # The line exactly as read, without its line end.
        assert base64.b64decode(row["raw_base64"]) == raw_lines[row["line"] - 1].rstrip(b"\r")
    assert report.tally.records == report.tally.events + report.tally.rejected_total + report.tally.duplicates


def _json(line: bytes) -> dict[str, Any]:
    import orjson

    return orjson.loads(line)


def test_the_pool_pipes_are_widened(example_config: Config) -> None:
    fcntl = pytest.importorskip("fcntl")
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if get_size is None:
        pytest.skip("no F_GETPIPE_SZ here")
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    started = engine.Engine(example_config, NOW, workers=1)
    try:
        pool: Any = started._pool
        for connection in (pool._inqueue._reader, pool._outqueue._writer):
            assert fcntl.fcntl(connection.fileno(), get_size) == min(limit, engine.PIPE_BYTES)
    finally:
        started.close()


def test_columns_of_unique_values_are_written_without_a_dictionary(
    small_feed: Path, example_config: Config, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    lake = tmp_path / "lake"
    run([str(small_feed)], lake, example_config, now_ms=NOW, workers=0)
    for table, plain, dictionary in (
        ("events", {"event_id", "extra", "timestamp"}, {"machine_id", "event_type", "session_id"}),
        ("sessions", {"session_id", "start_ts"}, {"machine_id", "first_event_type"}),
    ):
        path = next((lake / table).rglob("*.parquet"))
        group = pq.ParquetFile(path).metadata.row_group(0)
        chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
        for name in plain:
            assert chunks[name].dictionary_page_offset is None, (table, name)
        for name in dictionary:
            assert chunks[name].dictionary_page_offset is not None, (table, name)


@pytest.mark.parametrize("limit", [None, 1 << 20], ids=["plain", "bounded-lines"])
def test_blocks_read_from_a_pipe_are_as_big_as_from_a_file(tmp_path: Path, limit: int | None) -> None:
    # A pipe gives at most its buffer (64 KiB) a read, less when its writer is slow: a block is
    # gathered from as many reads as it takes, whole lines, every byte once.
    data = b"".join(b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * (n % 200)) for n in range(40_000))
    path = tmp_path / "feed.pipe"
    os.mkfifo(path)

    def write() -> None:
        with open(path, "wb") as pipe:
            for start in range(0, len(data), 4096):
                pipe.write(data[start : start + 4096])

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    block_bytes = 256 << 10
    blocks = list(engine.read_blocks(bounded(Source(str(path), path), max_line_bytes=limit), block_bytes))
    writer.join(timeout=60)
    assert b"".join(blocks) == data
    assert all(block.endswith(b"\n") for block in blocks)
    longest_line = max(map(len, data.splitlines(keepends=True)))
    assert all(len(block) > block_bytes - longest_line for block in blocks[:-1])
    assert len(blocks) == -(-len(data) // block_bytes)
