"""The Lambda handlers on sample Kinesis events, with an injected in-memory runtime (no network)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.local.resources import IDS, dedupe
from sessionflow.runtimes.aws.outputs import MemorySink, MemoryStreamWriter, Row, StreamEntry
from sessionflow.runtimes.aws.settings import Settings
from sessionflow.state.memory import MemoryStore
from tests.helpers import T0, FakeClock, event, kinesis_event, raw_record

pytestmark = pytest.mark.aws
EVENTS = Path(__file__).parent.parent / "events"
CLEAN_SHARD = "shardId-000000000001"


@pytest.fixture
def config(config_path: Path) -> Config:
    return Config.load(config_path)


@pytest.fixture
def raw_event() -> dict[str, Any]:
    return json.loads((EVENTS / "kinesis_raw.json").read_text())


class Setup:
    def __init__(self, config: Config, clean: Any = None, sink: Any = None) -> None:
        self.store = MemoryStore()
        self.clean = clean or MemoryStreamWriter()
        self.sink = sink or MemorySink()
        self.runtime = handlers.Runtime.build(Settings(), self.store, self.clean, self.sink, config=config)
        handlers.use_runtime(self.runtime)

    def clean_event(self, first: int = 0, last: int | None = None) -> dict[str, Any]:
        """The entries written to ``clean`` as a Lambda event of one shard, sequence numbers increasing."""
        entries = self.clean.entries[first:last]
        records = []
        for i, entry in enumerate(entries, start=first):
            seq = str(49656547118329548349155380637212390853431398468374233090 + i)
            records.append(
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": entry.partition_key,
                        "sequenceNumber": seq,
                        "data": base64.b64encode(entry.data).decode(),
                        "approximateArrivalTimestamp": 1791277301.5,
                    },
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": f"{CLEAN_SHARD}:{seq}",
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": "arn:aws:iam::123456789012:role/sessionflow-sessionize",
                    "awsRegion": "us-east-1",
                    "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/clean",
                }
            )
        return {"Records": records}


@pytest.fixture(autouse=True)
def _reset_runtime() -> Iterator[None]:
    yield
    handlers.use_runtime(None)


def _reference(config: Config, event: dict[str, Any]) -> Outputs:
    lines = [base64.b64decode(r["kinesis"]["data"]) for r in event["Records"]]
    pipeline = Pipeline(config, now_ms=1791277300123)
    out = Outputs()
    pipeline.feed([(line, "sample", i + 1) for i, line in enumerate(lines)], out)
    pipeline.flush(out)
    return out


def test_process_then_sessionize_matches_the_core(config: Config, raw_event: dict[str, Any]) -> None:
    setup = Setup(config)
    assert handlers.process_handler(raw_event, None) == {"batchItemFailures": []}
    assert [e.partition_key for e in setup.clean.entries] == [
        json.loads(e.data)["machine_id"] for e in setup.clean.entries
    ]
    rejected = setup.sink.rows["rejected"]
    assert sorted(r["reason"] for r in rejected) == ["invalid_utf8", "malformed_json"]
    sequence_numbers = {r["kinesis"]["sequenceNumber"] for r in raw_event["Records"]}
    assert {r["source"].split("/")[2] for r in rejected} <= sequence_numbers

    assert handlers.sessionize_handler(setup.clean_event(), None) == {"batchItemFailures": []}
    assert handlers.flush_handler({"shards": [f"clean/{CLEAN_SHARD}"]}, None)["sessions"] == 2
    reference = _reference(config, raw_event)
    events = setup.sink.rows["events"]
    assert {e["event_id"]: e["session_id"] for e in events} == {
        e["event_id"]: e["session_id"] for e in reference.events
    }
    assert sorted(setup.sink.rows["sessions"], key=lambda s: s["session_id"]) == sorted(
        reference.sessions, key=lambda s: s["session_id"]
    )

    # The same raw-line step as the embedded runner: the same rows but for where the bytes came from.
    def what(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["reason"], r["message"], r["raw_base64"], r["raw"]) for r in rows]

    assert what(rejected) == what(reference.rejections)


class RefusingWriter(MemoryStreamWriter):
    """Kinesis refusing one entry (throttled), the way PutRecords reports it."""

    def __init__(self, refuse_event_id: str) -> None:
        super().__init__()
        self.refuse = refuse_event_id

    def put(self, entries: Sequence[StreamEntry]) -> list[bool]:
        accepted = [json.loads(e.data)["event_id"] != self.refuse for e in entries]
        self.entries.extend(e for e, ok in zip(entries, accepted, strict=True) if ok)
        return accepted


def test_a_refused_record_is_a_partial_batch_failure(config: Config, raw_event: dict[str, Any]) -> None:
    Setup(config, clean=RefusingWriter("e-0003"))
    response = handlers.process_handler(raw_event, None)
    assert response == {"batchItemFailures": [{"itemIdentifier": raw_event["Records"][2]["kinesis"]["sequenceNumber"]}]}


def test_a_retried_batch_changes_nothing(config: Config, raw_event: dict[str, Any]) -> None:
    setup = Setup(config)
    handlers.process_handler(raw_event, None)
    event = setup.clean_event()
    handlers.sessionize_handler(copy.deepcopy(event), None)
    before = dict(setup.store._records)
    rows_before = copy.deepcopy(setup.sink.rows)
    assert handlers.sessionize_handler(copy.deepcopy(event), None) == {"batchItemFailures": []}
    assert setup.sink.rows == rows_before
    # Not one item rewritten: no machine, no timer, not even the shard item; no output.
    assert setup.store._records == before
    # Half of it again (a bisected retry): still nothing.
    half = {"Records": event["Records"][: len(event["Records"]) // 2]}
    handlers.sessionize_handler(half, None)
    assert setup.sink.rows == rows_before


class CrashingSink(MemorySink):
    """Raises (a Lambda timeout, a killed container) on chosen calls, optionally after delivering."""

    def __init__(self, crash_on: set[int], after_delivery: bool) -> None:
        super().__init__()
        self.crash_on = crash_on
        self.after_delivery = after_delivery
        self.count = 0

    def send(self, rows: Mapping[str, Sequence[Row]]) -> None:
        self.count += 1
        if self.count in self.crash_on and not self.after_delivery:
            raise TimeoutError("Task timed out")
        super().send(rows)
        if self.count in self.crash_on:
            raise TimeoutError("Task timed out")


def _synthetic_event(count: int) -> dict[str, Any]:
    from sessionflow.synthetic import FeedShape, generate

    lines = list(generate(FeedShape(events=count, machines=12, seed=7)))
    return {
        "Records": [
            {
                "kinesis": {
                    "partitionKey": "p",
                    "sequenceNumber": str(1000 + i),
                    "data": base64.b64encode(line).decode(),
                    "approximateArrivalTimestamp": 1791277300.0,
                },
                "eventID": f"shardId-000000000000:{1000 + i}",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/raw",
                "eventSource": "aws:kinesis",
            }
            for i, line in enumerate(lines)
            if line.strip()
        ]
    }


@pytest.mark.parametrize("after_delivery", [False, True])
def test_a_crash_between_state_and_outputs_loses_nothing(config: Config, after_delivery: bool) -> None:
    raw = _synthetic_event(600)
    setup = Setup(config)
    handlers.process_handler(raw, None)
    sink = CrashingSink({3}, after_delivery)  # in the 3rd batch, after its state is committed
    setup.runtime.sessionize.sink = sink
    batches = [setup.clean_event(first, first + 100) for first in range(0, len(setup.clean.entries), 100)]
    for batch in batches[:2]:
        handlers.sessionize_handler(copy.deepcopy(batch), None)
    delivered = sum(len(rows) for rows in sink.rows.values())
    with pytest.raises(TimeoutError):
        handlers.sessionize_handler(copy.deepcopy(batches[2]), None)
    copies = sum(len(rows) for rows in sink.rows.values()) - delivered
    assert (copies > 0) == after_delivery
    shard = setup.store.get(f"s#clean/{CLEAN_SHARD}")
    assert shard is not None and shard.value["inflight"] is not None
    for batch in batches[2:]:  # Lambda retries the batch, then goes on
        handlers.sessionize_handler(copy.deepcopy(batch), None)
    handlers.flush_handler({"shards": [f"clean/{CLEAN_SHARD}"]}, None)
    reference = _reference(config, raw)
    events, sessions = sink.rows["events"], sink.rows["sessions"]
    assert len(events) + len(sessions) == len(reference.events) + len(reference.sessions) + copies
    assert {e["event_id"]: e["session_id"] for e in dedupe(events, IDS["events"])} == {
        e["event_id"]: e["session_id"] for e in reference.events
    }
    assert sorted(dedupe(sessions, IDS["sessions"]), key=lambda s: s["session_id"]) == sorted(
        reference.sessions, key=lambda s: s["session_id"]
    )


def test_sessionize_on_a_sample_clean_event(config: Config, raw_event: dict[str, Any]) -> None:
    """``tests/events/kinesis_clean.json`` is what process put on ``clean`` for the raw sample."""
    setup = Setup(config)
    clean_event = json.loads((EVENTS / "kinesis_clean.json").read_text())
    assert handlers.sessionize_handler(clean_event, None) == {"batchItemFailures": []}
    assert handlers.flush_handler({"shards": ["clean/shardId-000000000001"]}, None) == {"shards": 1, "sessions": 2}
    reference = _reference(config, raw_event)
    assert sorted(setup.sink.rows["sessions"], key=lambda s: s["session_id"]) == sorted(
        reference.sessions, key=lambda s: s["session_id"]
    )
    # The state the batch left: one item per machine, keyed and versioned as documented.
    machines = {key for key in setup.store._records if key.startswith("m#")}
    assert machines == {f"m#{e['machine_id']}" for e in reference.events}


@pytest.mark.parametrize(("batch_size", "shards"), [(25, 1), (100, 4), (400, 2)])
def test_batching_and_sharding_do_not_change_sessions(config: Config, batch_size: int, shards: int) -> None:
    """Any batch size, any number of clean shards: the core's sessions, event for event.

    (For records that arrive later than ``allowed_lateness`` the core itself depends on when its
    stream clock advances, i.e. on batch boundaries; docs/aws.md says so. This feed has none.)
    """
    import hashlib

    from sessionflow.synthetic import FeedShape, generate

    lines = [line for line in generate(FeedShape(events=2500, machines=60, seed=batch_size)) if line.strip()]
    setup = Setup(config)
    for start in range(0, len(lines), batch_size):
        chunk = lines[start : start + batch_size]
        handlers.process_handler(kinesis_event("raw", chunk, start), None)
    by_shard: dict[int, list[bytes]] = {}
    for entry in setup.clean.entries:  # Kinesis routes by an MD5 of the partition key
        shard = int(hashlib.md5(entry.partition_key.encode()).hexdigest(), 16) % shards
        by_shard.setdefault(shard, []).append(entry.data)
    for shard, datas in by_shard.items():
        for start in range(0, len(datas), batch_size):
            event = kinesis_event("clean", datas[start : start + batch_size], start, shard=f"shardId-{shard:012d}")
            assert handlers.sessionize_handler(event, None) == {"batchItemFailures": []}
    handlers.flush_handler({"shards": [f"clean/shardId-{s:012d}" for s in by_shard]}, None)

    reference = _reference(
        config, {"Records": [{"kinesis": {"data": base64.b64encode(line).decode()}} for line in lines]}
    )
    assert len(setup.sink.rows["events"]) == len(reference.events)
    assert {e["event_id"]: e["session_id"] for e in setup.sink.rows["events"]} == {
        e["event_id"]: e["session_id"] for e in reference.events
    }
    assert {s["session_id"]: s for s in setup.sink.rows["sessions"]} == {s["session_id"]: s for s in reference.sessions}


def test_a_gap_of_exactly_the_timeout_stays_in_the_session(config: Config) -> None:
    """The timeout's boundary through both handlers, against sessions written out by hand."""
    timeout = config.session.timeout_ms
    times = [T0, T0 + timeout, T0 + 2 * timeout + 1]  # a gap of the timeout, then one millisecond more
    setup = Setup(config)
    lines = [raw_record(event_id=f"e{i}", timestamp=ts) for i, ts in enumerate(times)]
    assert handlers.process_handler(kinesis_event("raw", lines, 0), None) == {"batchItemFailures": []}
    clean = kinesis_event("clean", [e.data for e in setup.clean.entries], 0, shard=CLEAN_SHARD)
    assert handlers.sessionize_handler(clean, None) == {"batchItemFailures": []}
    handlers.flush_handler({"shards": [f"clean/{CLEAN_SHARD}"]}, None)
    sessions = sorted((s["start_ts"], s["end_ts"], s["event_count"]) for s in setup.sink.rows["sessions"])
    assert sessions == [(times[0], times[1], 2), (times[2], times[2], 1)]


def test_a_bot_that_never_stops_outgrows_an_item_and_nothing_fails(config: Config) -> None:
    """About 6 events a second for an hour: the bot's state (an hour of event ids to dedupe against,
    five minutes of reorder buffer, the batch's outbox) is far over DynamoDB's 400 KB per item.
    The store (held to that limit) writes it in parts; the sessions are still the core's."""
    import random
    import uuid

    rng = random.Random(7)  # random ids, as real ones are: they hardly compress
    start = 1791277000000 - 60 * 60 * 1000
    lines = [
        json.dumps(
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "machine_id": "bot-7" if i % 20 else "human-1",
                "event_type": "view",
                "timestamp": start + i * 150,
                "app_version": "12.0.1",
                "user_id": "u-bot",
                "document_id": f"doc-{i % 13}",
            }
        ).encode()
        for i in range(24_000)
    ]
    setup = Setup(config)
    for first in range(0, len(lines), 500):
        handlers.process_handler(kinesis_event("raw", lines[first : first + 500], first), None)
    datas = [entry.data for entry in setup.clean.entries]
    for first in range(0, len(datas), 1000):
        event = kinesis_event("clean", datas[first : first + 1000], first, shard=CLEAN_SHARD)
        assert handlers.sessionize_handler(event, None) == {"batchItemFailures": []}
    assert setup.store.stats.parts_written > 0
    assert any("#part#" in key for key in setup.store._records)
    handlers.flush_handler({"shards": [f"clean/{CLEAN_SHARD}"]}, None)

    reference = _reference(
        config, {"Records": [{"kinesis": {"data": base64.b64encode(line).decode()}} for line in lines]}
    )
    assert {e["event_id"]: e["session_id"] for e in setup.sink.rows["events"]} == {
        e["event_id"]: e["session_id"] for e in reference.events
    }
    assert {s["session_id"]: s for s in setup.sink.rows["sessions"]} == {s["session_id"]: s for s in reference.sessions}
    # The flush forgot the machines: no part is left behind.
    assert not [key for key in setup.store._records if "#part#" in key]


def test_a_busy_shard_rolls_its_timer_sets_over_before_an_item_is_full(config: Config) -> None:
    """20,000 machines in one minute: their ids (~0.6 MB) overflow one 400 KB timer set item.

    The sets roll over to more items, and every machine is still found when it goes idle."""
    from sessionflow.runtimes.aws.outputs import MemorySink
    from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardSessionizer

    minute = 1791270000000
    quiet = [event(f"machine-{i:06d}-{'x' * 12}", minute + i % 50_000, f"e-{i}") for i in range(20_000)]
    # Later, a few machines move the stream clock an hour on: the 20,000 are idle by then.
    later = [event(f"late-{i}", minute + 3_600_000 + i, f"e-late-{i}") for i in range(5)]
    store, sink = MemoryStore(), MemorySink()
    sessionizer = ShardSessionizer(config.session, store, sink, write_threads=1)
    records = [CleanRecord(i + 1, e) for i, e in enumerate(quiet + later)]
    sessionizer.apply("clean/s1", records[:20_000])
    timer_items = [key for key in store._records if key.startswith("t#clean/s1#")]
    assert len(timer_items) >= 2
    report = sessionizer.apply("clean/s1", records[20_000:])

    assert report.swept == 20_000
    closed = {s["machine_id"] for s in sink.rows["sessions"]}
    assert closed == {e["machine_id"] for e in quiet}
    assert not [key for key in store._records if key in timer_items]  # the due sets are deleted


def _events(rows: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """(machine, timestamp) -> events as the sessionizer takes them, ids in order."""
    return [event(machine, ts, f"e-{i:05d}") for i, (machine, ts) in enumerate(rows)]


def test_a_quiet_shard_closes_its_idle_sessions_on_the_sweep(config: Config) -> None:
    from sessionflow.runtimes.aws.outputs import MemorySink
    from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardSessionizer

    t0 = 1791270000000
    first = [(f"m{m}", t0 + m * 30_000 + k * 20_000) for m in range(5) for k in range(4)]  # 4 minutes
    again = [(f"m{m}", t0 + 2 * 3_600_000 + m * 1_000) for m in range(5)]  # two hours later
    events = _events(first + again)
    wall = FakeClock()
    store, sink = MemoryStore(), MemorySink()
    shard = ShardSessionizer(config.session, store, sink, write_threads=1, now=wall)
    shard.apply("clean/s1", [CleanRecord(i + 1, e) for i, e in enumerate(events[: len(first)])])
    assert "sessions" not in sink.rows  # open: nothing has told the shard that time went on

    wall.now += 10 * 60  # quiet, but not for the idle close time (35 min): a slow shard, not a dead one
    assert shard.sweep("clean/s1").sessions == 0
    wall.now += 30 * 60
    report = shard.sweep("clean/s1")
    assert report.swept == 5 and report.sessions == 5
    assert shard.sweep("clean/s1").sessions == 0  # closed once
    closed = {s["session_id"]: s for s in sink.rows["sessions"]}

    # Traffic resumes: the shard goes on from its real clock; the sessions closed stay closed.
    shard.apply("clean/s1", [CleanRecord(100 + i, e) for i, e in enumerate(events[len(first) :])])
    shard.flush("clean/s1")
    reference = Outputs()
    pipeline = Pipeline(config, now_ms=1791277300123)
    pipeline.sessionizer.process(events, reference)
    pipeline.sessionizer.flush(reference)
    assert {s["session_id"]: s for s in sink.rows["sessions"]} == {s["session_id"]: s for s in reference.sessions}
    assert set(closed) <= {s["session_id"] for s in reference.sessions}
    assert {e["event_id"]: e["session_id"] for e in sink.rows["events"]} == {
        e["event_id"]: e["session_id"] for e in reference.events
    }


def test_the_sweep_leaves_a_shard_that_receives_records(config: Config) -> None:
    from sessionflow.runtimes.aws.outputs import MemorySink
    from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardSessionizer

    t0 = 1791270000000
    events = _events([(f"m{m}", t0 + m * 1_000) for m in range(5)])
    wall = FakeClock()
    store, sink = MemoryStore(), MemorySink()
    shard = ShardSessionizer(config.session, store, sink, write_threads=1, now=wall)
    shard.apply("clean/s1", [CleanRecord(1, events[0])])
    for sequence, record in enumerate(events[1:], start=2):
        wall.now += 20 * 60  # a record every 20 minutes: never quiet for 35
        assert shard.sweep("clean/s1").swept == 0
        shard.apply("clean/s1", [CleanRecord(sequence, record)])
    assert shard.sweep("clean/s1").swept == 0
    assert shard.sweep("clean/missing").swept == 0  # a shard that never had a batch


def test_the_sweep_handler_sweeps_every_shard_and_skips_a_busy_one(config: Config) -> None:
    from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardConflict

    setup = Setup(config)
    wall = FakeClock()
    setup.runtime.sessionize._now = wall
    t0 = 1791270000000
    events = _events([(f"m{m}", t0 + m * 1_000) for m in range(6)])
    setup.runtime.sessionize.apply("clean/a", [CleanRecord(i + 1, e) for i, e in enumerate(events[:3])])
    setup.runtime.sessionize.apply("clean/b", [CleanRecord(i + 1, e) for i, e in enumerate(events[3:])])
    wall.now += 3600
    result = handlers.sweep_handler({"shards": ["clean/a", "clean/b"]}, None)
    assert result == {"shards": 2, "swept": 6, "sessions": 6, "busy": 0}

    def conflict(shard: str, **_: Any) -> Any:
        raise ShardConflict(shard)

    setup.runtime.sessionize.sweep = conflict  # type: ignore[method-assign,assignment]
    assert handlers.sweep_handler({"shards": ["clean/a"]}, None)["busy"] == 1


# A shard item, a machine item and its timer set as the code before the snapshot format had a
# version wrote them (a batch of e-1 app_open at T0 and e-2 view ten minutes later; e-2 is buffered).
SESSION_BEFORE = "9db20f66-813f-55ef-8df7-6c4ef591c3ee"
ITEMS_BEFORE = {
    "s#clean/s1": b'{"clock":-1,"leaders":{"m-1":1791159000000},"buckets":[29852685],'
    b'"timer_fill":{"29852685":[1,11]},"wall":1800000000000,"inflight":null}',
    "m#m-1": b'{"state":{"machine_id":"m-1","newest_ts":1791159000000,"arrival_clock":-1,'
    b'"pending":[{"event_id":"e-2","machine_id":"m-1","event_type":"view","timestamp":1791159000000}],'
    b'"last_key":[1791158400000,"e-1"],"session":{"session_id":"' + SESSION_BEFORE.encode() + b'",'
    b'"start_ts":1791158400000,"last_ts":1791158400000,"first_type":"app_open","last_type":"app_open","count":1,'
    b'"type_counts":{"app_open":1},"user_id":"u-1","app_version":null,"closed":false},'
    b'"seen":{"e-1":1791158400000,"e-2":1791159000000}},"shard":"clean/s1","seq":"2",'
    b'"outbox":{"events":[],"sessions":[],"token":"23695523d4374ce08ef5dba7c28dd987"}}',
}


def test_items_written_before_snapshot_versions_still_go_on(config: Config) -> None:
    from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardSessionizer

    store, sink = MemoryStore(), MemorySink()
    for key, value in ITEMS_BEFORE.items():
        store.put(key, json.loads(value), None)
    store.add_members("t#clean/s1#29852685", ["m-1"])
    shard = ShardSessionizer(config.session, store, sink, write_threads=1, now=FakeClock())
    t0 = 1791158400000
    again, later = event("m-1", t0 + 600_000, "e-2", "view"), event("m-1", t0 + 1_200_000, "e-3", "edit")
    report = shard.apply("clean/s1", [CleanRecord(3, again), CleanRecord(4, later)])
    assert report.duplicates == 1  # e-2 is in the item's dedupe memory
    shard.flush("clean/s1")
    placed = [(e["event_id"], e["session_id"], e["session_seq"]) for e in sink.rows["events"]]
    assert placed == [("e-2", SESSION_BEFORE, 2), ("e-3", SESSION_BEFORE, 3)]
    [session] = sink.rows["sessions"]
    assert (session["session_id"], session["event_count"], session["user_id"]) == (SESSION_BEFORE, 3, "u-1")


def test_a_forgotten_machine_numbers_its_sessions_on_from_its_tombstone() -> None:
    """The core forgets a silent machine's state after the retention; the item it leaves (a
    tombstone) keeps how many sessions the machine had started, so its next one is numbered on."""
    from sessionflow.config import HOUR, SessionConfig
    from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardSessionizer, machine_key

    config = SessionConfig(clock_quorum=1)
    store, sink = MemoryStore(), MemorySink()
    shard = ShardSessionizer(config, store, sink, write_threads=1, now=FakeClock())
    later = T0 + config.retention_ms + 2 * HOUR
    batches = [
        [event("m-1", T0, "a", "app_open"), event("m-1", T0 + 1, "b", "app_open")],
        [event("m-2", later, "c")],  # the clock passes m-1's retention: forgotten
        [event("m-1", later + 1, "d")],
    ]
    sequence = 0
    for number, batch in enumerate(batches):
        records = []
        for item in batch:
            sequence += 1
            records.append(CleanRecord(sequence, item))
        shard.apply("clean/s1", records)
        if number == 1:
            tombstone = store.get(machine_key("m-1"))
            assert tombstone is not None
            assert tombstone.value["state"] is None and tombstone.value["sessions"] == 2
    shard.flush("clean/s1")
    numbers = sorted((s["machine_id"], s["start_ts"], s["session_number"]) for s in sink.rows["sessions"])
    assert numbers == [("m-1", T0, 1), ("m-1", T0 + 1, 2), ("m-1", later + 1, 3), ("m-2", later, 1)]
