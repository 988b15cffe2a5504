"""Regression tests for the commit protocol's races and for records ``process`` puts twice.

(A) a sweep or flush racing a batch of its shard must not orphan its outbox; (B) a raw batch retried
after ``clean`` refused one record puts the records after it again: each must be applied once.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionflow.config import Config
from sessionflow.core import Outputs, Sessionizer
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.outputs import MemorySink, MemoryStreamWriter, Row, StreamEntry
from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardSessionizer, shard_key
from sessionflow.runtimes.aws.settings import Settings
from sessionflow.state.memory import MemoryStore
from tests.helpers import FakeClock, event

pytestmark = pytest.mark.aws
SHARD = "clean/shardId-000000000000"
T = 1_791_270_000_000


class FailingSink:
    """A Firehose that refuses everything (throttled past every retry)."""

    def send(self, rows: Mapping[str, Sequence[Row]]) -> None:
        if any(rows.values()):
            raise RuntimeError("Firehose: records still refused")


class HookStore(MemoryStore):
    """Runs ``hook`` once, right after the next shard intent is written."""

    hook: Any = None

    def put(self, key: str, value: dict[str, Any], expected_version: int | None) -> int | None:
        version = super().put(key, value, expected_version)
        if self.hook is not None and key == shard_key(SHARD) and value.get("inflight"):
            hook, self.hook = self.hook, None
            hook()
        return version


def _reference(config: Config, batches: list[list[dict[str, Any]]]) -> Outputs:
    out = Outputs()
    core = Sessionizer(config.session)
    for batch in batches:
        core.process([dict(e) for e in batch], out)
        core.end_batch(out)
    core.flush(out)
    return out


def _by_id(rows: list[Row], key: str) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


@pytest.mark.parametrize("racer", ["sweep", "flush"])
def test_a_sweep_or_flush_racing_a_batch_loses_nothing(config_path: Path, racer: str) -> None:
    config = Config.load(config_path)
    first = [event(f"m{m}", T + m * 30_000 + k * 20_000, f"e{m}-{k}") for m in range(5) for k in range(4)]
    later = [event("n9", T + 2 * 3_600_000, "e-n9")]
    wall = FakeClock()
    store, delivered = HookStore(), MemorySink()
    batcher = ShardSessionizer(config.session, store, delivered, write_threads=1, now=wall)
    racing = ShardSessionizer(config.session, store, FailingSink(), write_threads=1, now=wall)
    batcher.apply(SHARD, [CleanRecord(i + 1, dict(e)) for i, e in enumerate(first)])
    wall.now += 40 * 60
    # Traffic resumes right after the racer wrote its intent, before it wrote its machines.
    store.hook = lambda: batcher.apply(SHARD, [CleanRecord(100, dict(later[0]))])
    with pytest.raises(Exception):  # noqa: B017 - the racer dies one way or another
        getattr(racing, racer)(SHARD)
    wall.now += 40 * 60
    batcher.flush(SHARD)

    ref = _reference(config, [first, later])
    events, sessions = _by_id(delivered.rows["events"], "event_id"), _by_id(delivered.rows["sessions"], "session_id")
    assert set(events) == {e["event_id"] for e in ref.events}
    assert set(sessions) == {s["session_id"] for s in ref.sessions}
    assert all(all(row == rows[0] for row in rows) for rows in [*events.values(), *sessions.values()])


def _raw_event(lines: list[bytes], indexes: range) -> dict[str, Any]:
    return {
        "Records": [
            {
                "kinesis": {
                    "partitionKey": "m-1",
                    "sequenceNumber": str(1000 + i),
                    "data": base64.b64encode(lines[i]).decode(),
                    "approximateArrivalTimestamp": (T + 5_100_000) / 1000,
                },
                "eventID": f"shardId-000000000000:{1000 + i}",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/raw",
                "eventSource": "aws:kinesis",
            }
            for i in indexes
        ]
    }


class RefusesOnce(MemoryStreamWriter):
    """``clean`` refuses entry 5 of the first PutRecords (an on-demand stream throttling); the rest go in."""

    refused = False

    def put(self, entries: Sequence[StreamEntry]) -> list[bool]:
        if self.refused:
            return super().put(entries)
        self.refused = True
        accepted = [k != 5 for k in range(len(entries))]
        self.entries.extend(e for e, ok in zip(entries, accepted, strict=True) if ok)
        return accepted


def test_b_records_put_again_by_a_raw_retry_are_applied_once(config_path: Path) -> None:
    config = Config.load(config_path)
    lines = [
        orjson.dumps({"event_id": f"e{i:04d}", "machine_id": "m-1", "event_type": "view", "timestamp": T + i * 10_000})
        for i in range(500)
    ]
    store, clean, sink = MemoryStore(), RefusesOnce(), MemorySink()
    handlers.use_runtime(handlers.Runtime.build(Settings(), store, clean, sink, config=config))
    try:
        response = handlers.process_handler(_raw_event(lines, range(500)), None)
        lowest = int(response["batchItemFailures"][0]["itemIdentifier"]) - 1000
        assert handlers.process_handler(_raw_event(lines, range(lowest, 500)), None) == {"batchItemFailures": []}
        assert len(clean.entries) == 499 + 495  # the retry put the 494 after the refused one again
        shard = ShardSessionizer(config.session, store, sink, write_threads=1)
        records = [CleanRecord.decode(5000 + i, orjson.loads(e.data)) for i, e in enumerate(clean.entries)]
        reports = [shard.apply(SHARD, records[start : start + 1000]) for start in range(0, len(records), 1000)]
        shard.flush(SHARD)
    finally:
        handlers.use_runtime(None)
    assert sum(r.repeated for r in reports) == 494
    events = _by_id(sink.rows["events"], "event_id")
    assert set(events) == {f"e{i:04d}" for i in range(500)}
    assert all(len(rows) == 1 for rows in events.values()), "a copy put again became a second row"
    assert all("_raw" not in row for row in sink.rows["events"])
