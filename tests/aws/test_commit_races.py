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


def _kinesis(stream: str, datas: list[bytes], seqs: list[int], keys: list[str], arrived: float) -> dict[str, Any]:
    """A Lambda event of one shard of ``stream``: these records, with these sequence numbers."""
    return {
        "Records": [
            {
                "kinesis": {
                    "partitionKey": key,
                    "sequenceNumber": str(seq),
                    "data": base64.b64encode(data).decode(),
                    "approximateArrivalTimestamp": arrived,
                },
                "eventID": f"shardId-000000000000:{seq}",
                "eventSourceARN": f"arn:aws:kinesis:us-east-1:123456789012:stream/{stream}",
                "eventSource": "aws:kinesis",
            }
            for data, seq, key in zip(datas, seqs, keys, strict=True)
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
    """One raw batch: 500 events of one machine over 83 minutes (a backlog); ``clean`` refuses the
    sixth. Lambda redelivers the raw batch from it: every event must give one row, in its session."""
    config = Config.load(config_path)
    lines = [
        orjson.dumps({"event_id": f"e{i:04d}", "machine_id": "m-1", "event_type": "view", "timestamp": T + i * 10_000})
        for i in range(500)
    ]
    store, clean, sink = MemoryStore(), RefusesOnce(), MemorySink()
    handlers.use_runtime(handlers.Runtime.build(Settings(), store, clean, sink, config=config))
    try:
        arrived = (T + 5_100_000) / 1000
        seqs = [1000 + i for i in range(500)]
        response = handlers.process_handler(_kinesis("raw", lines, seqs, ["m-1"] * 500, arrived), None)
        assert response == {"batchItemFailures": [{"itemIdentifier": "1005"}]}
        retry = _kinesis("raw", lines[5:], seqs[5:], ["m-1"] * 495, arrived)
        assert handlers.process_handler(retry, None) == {"batchItemFailures": []}
        assert len(clean.entries) == 499 + 495  # the retry put the 494 after the refused one again
        # sessionize, BatchSize 1000, the clean shard's records in the order they were put
        datas = [entry.data for entry in clean.entries]
        keys = [entry.partition_key for entry in clean.entries]
        for start in range(0, len(datas), 1000):
            chunk = slice(start, start + 1000)
            batch = _kinesis("clean", datas[chunk], list(range(5000, 5000 + len(datas)))[chunk], keys[chunk], arrived)
            assert handlers.sessionize_handler(batch, None) == {"batchItemFailures": []}
        handlers.flush_handler({"shards": [SHARD]}, None)
    finally:
        handlers.use_runtime(None)
    ref = _reference(config, [[orjson.loads(line) for line in lines]])
    events = _by_id(sink.rows["events"], "event_id")
    assert set(events) == {f"e{i:04d}" for i in range(500)}
    assert all(len(rows) == 1 for rows in events.values()), "a copy put again became a second row"
    # Applied in their raw order: none is late, each in the session the core gives it.
    assert {e: rows[0]["session_id"] for e, rows in events.items()} == {
        e["event_id"]: e["session_id"] for e in ref.events
    }
    assert not any(row["late"] for row in sink.rows["events"])
    assert all("_raw" not in row for row in sink.rows["events"])
