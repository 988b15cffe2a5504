"""The fault matrix of the commit protocol: a fault between every two of its steps, times what
happens next, and each cell held to: no event lost, none applied twice, never two different rows
for one id.

The real :class:`ShardSessionizer` on the memory store (the same contract as DynamoDB's, see
``test_state_contract.py``); only the timing is forced, through the fault hook the commit calls
between its steps (``commit.py``: intent, timers, machine:<i>, index, send, timers-dropped, done,
and recovery's recover:fenced, recover:sent). A schedule is a list of invocations of one shard
(batches, a sweep, a flush, as Lambda and the scheduler make them); a cell picks one invocation
and one of the steps it passes, and:

* ``crash``: the invocation dies there; then ``again`` (Lambda retries it), or a sweep, a flush or
  the next batch comes first, then the retry;
* ``pause``: the invocation stops there while another runs whole (its own retry: a zombie that
  outlived its timeout; a sweep; a flush; the next batch), then goes on; ``pause-die``: then dies
  after its machine writes, before its rows are sent (the sequence that lost rows before fencing);
* ``partial``: Firehose takes half the rows and refuses the rest, past every retry.

A cell whose schedule is the fault-free one (a crash then the retry; a zombie and its retry) must
give exactly the rows the fault-free run gives; that run is itself the core's result
(``test_the_fault_free_schedule_is_the_cores``). Every cell must account for every input record.
The throttles and partial failures of the AWS calls themselves are in ``test_chaos.py``.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from sessionflow.config import Config
from sessionflow.core import Outputs, Sessionizer
from sessionflow.runtimes.aws.outputs import DeliveryError, MemorySink, Row
from sessionflow.runtimes.aws.positions import RawPosition
from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardConflict, ShardSessionizer
from sessionflow.state.memory import MemoryStore
from tests.helpers import FakeClock

pytestmark = pytest.mark.aws
SHARD = "clean/shardId-000000000000"
T = 1_791_270_000_000
MIN = 60_000
HOUR = 60 * MIN


def _ev(machine: str, minute: float, event_id: str, event_type: str = "view") -> dict[str, Any]:
    return {"event_id": event_id, "machine_id": machine, "event_type": event_type, "timestamp": T + int(minute * MIN)}


# Four machines (the clock's quorum is 3). Batch 2 holds an exact copy and a copy of other
# content; batch 3 moves the clock past d's idle deadline (d is closed through its timer set) and
# brings an event of c that sorts before c's placed events (late).
BATCHES: list[list[dict[str, Any]]] = [
    [
        _ev("a", 0, "a1", "app_open"),
        _ev("b", 0.5, "b1", "app_open"),
        _ev("a", 1, "a2"),
        _ev("c", 1, "c1"),
        _ev("a", 2, "a3"),
        _ev("d", 2, "d1"),
        _ev("b", 3, "b2", "edit"),
        _ev("c", 4, "c2"),
    ],
    [
        _ev("a", 8, "a4"),
        _ev("a", 1, "a2"),  # an exact copy
        _ev("b", 15, "b3"),
        _ev("b", 3, "b2", "save"),  # the id again with another type: conflicting_duplicate
        _ev("a", 20, "a5"),
        _ev("c", 25, "c3"),
    ],
    [
        _ev("a", 50, "a6"),
        _ev("b", 52, "b4"),
        _ev("c", 3, "c0"),  # late: c has placed events after it
        _ev("c", 55, "c4"),
    ],
]
EVENT_IDS = {(e["machine_id"], e["event_id"]) for batch in BATCHES for e in batch}
CONFLICT_SOURCE = "raw/shardId-000000000000/1012"


def _records(index: int) -> list[CleanRecord]:
    """Batch ``index`` as ``clean`` records: clean and raw sequence numbers, one raw batch per event."""
    first = sum(len(b) for b in BATCHES[:index])
    records = []
    for offset, event in enumerate(BATCHES[index]):
        seq = 1000 + first + offset + 1
        data = orjson.dumps(event)
        position = RawPosition("raw/shardId-000000000000", seq, seq, data=data)
        records.append(CleanRecord(5000 + first + offset + 1, dict(event), position))
    return records


class Crash(BaseException):
    """An invocation dying (a BaseException: nothing on the handler's path catches it)."""


class HalfSink:
    """Firehose taking the first half of each table's rows of its next send, refusing the rest."""

    def __init__(self, sink: MemorySink) -> None:
        self.sink = sink
        self.armed = False

    def send(self, rows: Mapping[str, Sequence[Row]]) -> None:
        if not self.armed or not any(rows.values()):
            self.sink.send(rows)
            return
        self.armed = False
        kept = {table: list(table_rows[: len(table_rows) // 2]) for table, table_rows in rows.items()}
        self.sink.send(kept)
        raise DeliveryError("refused", {table: list(range(len(kept[table]))) for table in rows})


@dataclass
class World:
    config: Config
    store: MemoryStore = field(default_factory=MemoryStore)
    sink: MemorySink = field(default_factory=MemorySink)
    wall: FakeClock = field(default_factory=FakeClock)
    sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.half = HalfSink(self.sink)

    def shard(self, faults: Callable[[str], None] | None = None) -> ShardSessionizer:
        hook = faults or (lambda _step: None)
        return ShardSessionizer(self.config.session, self.store, self.half, write_threads=1, now=self.wall, faults=hook)

    def run(self, op: str, faults: Callable[[str], None] | None = None) -> None:
        shard = self.shard(faults)
        if op.startswith("batch"):
            shard.apply(SHARD, _records(int(op[5:])))
        elif op == "sweep":
            shard.sweep(SHARD)
        else:
            shard.flush(SHARD)

    def tick(self, op: str) -> None:
        """Wall time before an invocation: a scheduled sweep comes after the shard has been quiet an
        hour, anything else a second later, a retry at once (a sweep's clock follows the wall
        clock: retried later, it would rightly close more than the fault-free one did)."""
        self.wall.now += {"sweep": 3600, "retry": 0}.get(op, 1)


SCHEDULES = {
    "batches": ["batch0", "batch1", "batch2", "flush"],
    "sweep": ["batch0", "sweep", "batch1", "batch2", "flush"],
    "flush": ["batch0", "flush", "batch1", "batch2", "flush"],
}
# (schedule, the invocation the fault hits)
TARGETS = [("batches", 1), ("batches", 2), ("sweep", 1), ("flush", 1)]


def _steps(config: Config, schedule: str, target: int) -> list[str]:
    """The steps the target invocation passes when nothing goes wrong."""
    world, seen = World(config), list[str]()
    ops = SCHEDULES[schedule]
    for index, op in enumerate(ops[: target + 1]):
        world.tick(op)
        world.run(op, seen.append if index == target else None)
    return seen


def _settle(world: World, op: str) -> None:
    """Lambda's retries of an invocation that failed (a batch, an async sweep or flush)."""
    for _ in range(4):
        try:
            world.run(op)
            return
        except (ShardConflict, DeliveryError):
            world.tick("retry")
    raise AssertionError(f"{op} kept failing")


def _play(config: Config, schedule: str, target: int, step: str | None, mode: str, then: str) -> World:
    """Run ``schedule`` with the fault of a cell (``step`` None: no fault).

    ``then``: what runs while the target is down or paused: ``again`` (itself: Lambda's retry, or a
    zombie's), ``sweep`` or ``flush`` (a racer), ``next`` (the schedule's next invocation: for a
    paused batch, its retry first, since Lambda runs a shard's batches one after another).
    """
    world = World(config)
    ops = list(SCHEDULES[schedule])
    index = 0
    while index < len(ops):
        op = ops[index]
        world.tick(op)
        if index != target or step is None:
            world.run(op)
            index += 1
            continue
        is_batch = op.startswith("batch")
        others = {"again": [op], "sweep": ["sweep"], "flush": ["flush"]}.get(then)
        if others is None:  # "next"
            others = [op, ops[index + 1]] if is_batch else [ops[index + 1]]
            del ops[index + 1]
        if mode == "partial":
            world.half.armed = True
            with pytest.raises(DeliveryError):
                world.run(op)
            for other in others if then != "again" else []:
                world.tick(other)
                _settle(world, other)
            world.tick("retry")
            _settle(world, op)
            index += 1
            continue

        resumed = {"yes": False}

        def fault(name: str, op: str = op, others: list[str] = others, resumed: dict[str, bool] = resumed) -> None:
            if resumed["yes"] and mode == "pause-die" and name not in ("timers",) and not name.startswith("machine:"):
                raise Crash(name)  # a zombie dies after its writes, before (or as) it sends
            if name != step:
                return
            if mode == "crash":
                raise Crash(name)
            for other in others:  # each runs whole while this invocation waits at ``step``
                world.tick("retry" if other == op else other)
                _settle(world, other)
            resumed["yes"] = True

        failed = False
        try:
            world.run(op, fault)
        except (Crash, ShardConflict):
            failed = True
        if mode == "crash" and then != "again":
            for other in others:
                world.tick(other)
                _settle(world, other)
        # A failed invocation is retried, unless a paused one's retry already ran (a zombie's).
        if failed and not (mode != "crash" and op in others):
            world.tick("retry")
            _settle(world, op)
        index += 1
    return world


def _distinct(rows: list[Row], key: Callable[[Row], Any]) -> dict[Any, Row]:
    """Rows by id; exact copies are one row, two different rows for one id fail."""
    found: dict[Any, Row] = {}
    for row in rows:
        ident = key(row)
        assert found.setdefault(ident, row) == row, f"two different rows for {ident}"
    return found


@dataclass
class Lake:
    events: dict[Any, Row]
    sessions: dict[Any, Row]
    rejected: dict[Any, Row]
    copies: int


def _lake(world: World) -> Lake:
    rows = world.sink.rows
    events = _distinct(rows.get("events", []), lambda r: (r["machine_id"], r["event_id"]))
    sessions = _distinct(rows.get("sessions", []), lambda r: r["session_id"])
    rejected = _distinct(rows.get("rejected", []), lambda r: r["source"])
    copies = sum(len(v) for v in rows.values()) - len(events) - len(sessions) - len(rejected)
    return Lake(events, sessions, rejected, copies)


def _check_invariants(lake: Lake) -> None:
    # Nothing lost, nothing twice: every event once (the copy and the conflicting copy are not events).
    assert set(lake.events) == EVENT_IDS
    # The conflicting copy is rejected once, with its raw bytes.
    assert set(lake.rejected) == {CONFLICT_SOURCE}
    assert lake.rejected[CONFLICT_SOURCE]["reason"] == "conflicting_duplicate"
    # Each session is made of the events that say they are in it: none applied twice, none missing.
    members: dict[str, list[Row]] = defaultdict(list)
    for event in lake.events.values():
        if not event["late"]:
            members[event["session_id"]].append(event)
    assert set(members) == set(lake.sessions)
    for session_id, summary in lake.sessions.items():
        stamps = sorted(e["timestamp"] for e in members[session_id])
        assert summary["event_count"] == len(stamps) == len({e["event_id"] for e in members[session_id]})
        assert (summary["start_ts"], summary["end_ts"]) == (stamps[0], stamps[-1])
        assert sorted(e["session_seq"] for e in members[session_id]) == list(range(1, len(stamps) + 1))


def _config() -> Config:
    from tests.aws.conftest import SAMPLE_CONFIG

    return Config.from_dict(tomllib.loads(SAMPLE_CONFIG))


def _cells() -> list[tuple[str, int, str, str, str]]:
    config = _config()
    cells: list[tuple[str, int, str, str, str]] = []
    for schedule, target in TARGETS:
        batch = SCHEDULES[schedule][target].startswith("batch")
        # A shard's batches run one after another: nothing but a sweep or a flush comes between a
        # failed batch and its retry; while a zombie batch runs on, its retry and the next batch can.
        crash_then = ("again", "sweep", "flush") if batch else ("again", "next")
        pause_then = ("again", "sweep", "flush", "next") if batch else ("again", "next")
        for step in _steps(config, schedule, target):
            cells.extend((schedule, target, step, "crash", then) for then in crash_then)
            cells.extend((schedule, target, step, "pause", then) for then in pause_then)
            cells.extend((schedule, target, step, "pause-die", then) for then in pause_then)
        cells.extend((schedule, target, "send", "partial", then) for then in crash_then)
    return cells


@pytest.fixture(scope="module")
def matrix_config() -> Config:
    return _config()


@pytest.fixture(scope="module")
def baselines(matrix_config: Config) -> dict[str, Lake]:
    return {name: _lake(_play(matrix_config, name, 0, None, "crash", "again")) for name in SCHEDULES}


def test_the_fault_free_schedule_is_the_cores(matrix_config: Config, baselines: dict[str, Lake]) -> None:
    """Three batches and a flush, no fault: the core's sessions, the copy dropped, the other rejected."""
    core = Sessionizer(matrix_config.session)
    out = Outputs()
    for batch in BATCHES:
        core.process([dict(e) for e in batch], out)
        core.end_batch(out)
    core.flush(out)
    lake = baselines["batches"]
    want = {(e["machine_id"], e["event_id"]): orjson.loads(orjson.dumps(e)) for e in out.events}
    assert lake.events == want
    assert lake.sessions == {s["session_id"]: orjson.loads(orjson.dumps(s)) for s in out.sessions}
    assert lake.copies == 0
    assert any(e["late"] for e in lake.events.values())  # c0
    for name, other in baselines.items():
        _check_invariants(other)
        assert other.copies == 0, name


def test_the_matrix_reaches_every_step(matrix_config: Config) -> None:
    steps = set(_steps(matrix_config, "batches", 2))
    assert {"intent", "timers", "machine:0", "machine:3", "index", "send", "timers-dropped", "done"} <= steps
    assert {"intent", "send", "done"} <= set(_steps(matrix_config, "sweep", 1))
    assert {"intent", "send", "done"} <= set(_steps(matrix_config, "flush", 1))


CELLS = _cells()


@pytest.mark.parametrize("cell", CELLS, ids=["-".join(map(str, c)) for c in CELLS])
def test_cell(matrix_config: Config, baselines: dict[str, Lake], cell: tuple[str, int, str, str, str]) -> None:
    schedule, target, step, mode, then = cell
    lake = _lake(_play(matrix_config, schedule, target, step, mode, then))
    _check_invariants(lake)
    if then == "again":
        # The schedule Lambda sees is the fault-free one: exactly its rows (copies aside).
        baseline = baselines[schedule]
        assert lake.events == baseline.events
        assert lake.sessions == baseline.sessions
        assert lake.rejected == baseline.rejected
    if mode == "partial":
        assert lake.copies == 0, "rows Firehose took were sent again"


# -- the process step: a crash between its puts, then Lambda's retry of the raw batch -----------------


@pytest.mark.parametrize("step", ["process:clean", "process:rejected"])
def test_a_process_crash_between_its_steps_changes_nothing(matrix_config: Config, step: str) -> None:
    """A raw batch that dies after putting its events on ``clean`` (or after its rejected rows) and
    is retried: every record still gives exactly the core's rows, the rejected ones included."""
    from sessionflow.core import Pipeline
    from sessionflow.runtimes.aws import handlers
    from sessionflow.runtimes.aws.outputs import MemoryStreamWriter
    from sessionflow.runtimes.aws.settings import Settings
    from sessionflow.synthetic import FeedShape, generate
    from tests.helpers import kinesis_event

    lines = [line for line in generate(FeedShape(events=300, machines=6, seed=23, days=0.1, invalid_rate=0.05)) if line]
    armed = {"batch": 2}

    def faults(name: str) -> None:
        if name == step and armed["batch"] == 0:
            armed["batch"] = -1
            raise Crash(name)

    store, clean, sink = MemoryStore(), MemoryStreamWriter(), MemorySink()
    runtime = handlers.Runtime.build(Settings(), store, clean, sink, config=matrix_config, faults=faults)
    runtime.sessionize.write_threads = 1
    handlers.use_runtime(runtime)
    try:
        for start in range(0, len(lines), 50):
            event = kinesis_event("raw", lines[start : start + 50], start, arrived=T / 1000 + 86_400)
            armed["batch"] -= 1
            try:
                handlers.process_handler(event, None)
            except Crash:
                assert handlers.process_handler(event, None) == {"batchItemFailures": []}  # Lambda's retry
        assert armed["batch"] < 0, "the fault never fired"
        for start in range(0, len(clean.entries), 40):
            batch = kinesis_event("clean", [e.data for e in clean.entries[start : start + 40]], start)
            assert handlers.sessionize_handler(batch, None) == {"batchItemFailures": []}
        handlers.flush_handler({"shards": [SHARD]}, None)
    finally:
        handlers.use_runtime(None)
    pipeline = Pipeline(matrix_config, now_ms=T + 86_400_000)
    out = Outputs()
    pipeline.feed([(line, "feed", i + 1) for i, line in enumerate(lines)], out)
    pipeline.flush(out)
    events = _distinct(sink.rows["events"], lambda r: (r["machine_id"], r["event_id"]))
    assert events == {(e["machine_id"], e["event_id"]): orjson.loads(orjson.dumps(e)) for e in out.events}
    sessions = _distinct(sink.rows["sessions"], lambda r: r["session_id"])
    assert sessions == {s["session_id"]: orjson.loads(orjson.dumps(s)) for s in out.sessions}
    rejected = _distinct(sink.rows["rejected"], lambda r: r["source"])
    assert sorted(r["raw_base64"] for r in rejected.values()) == sorted(r["raw_base64"] for r in out.rejections)


def test_two_sweeps_never_work_on_one_shard_at_once(matrix_config: Config) -> None:
    """A sweep holds the shard's lease while on it: a second one (a scheduled run overlapping a slow
    one) leaves the shard; once the first's lease has run out (it died), the next sweep takes it."""
    world = World(matrix_config)
    world.tick("batch0")
    world.run("batch0")
    world.tick("sweep")
    seen: list[Any] = []

    def second_sweep(step: str) -> None:
        if step == "intent" and not seen:
            seen.append(world.shard().sweep(SHARD, lease_ms=60_000))

    report = world.shard(second_sweep).sweep(SHARD, lease_ms=60_000)
    (second,) = seen
    assert not second.leased and second.sessions == 0  # it left the shard to the first
    assert report.leased and report.sessions == 4  # the first closed every idle session, once
    assert world.shard().sweep(SHARD).sessions == 0  # its lease is free again: nothing left to close

    # A sweep that fails gives its lease back (and the next recovers what it began); one killed
    # outright (a timeout) leaves it: the shard is held until the lease runs out, then taken.
    def die(step: str) -> None:
        if step == "intent":
            raise Crash(step)

    world = World(matrix_config)
    world.tick("batch0")
    world.run("batch0")
    world.tick("sweep")
    with pytest.raises(Crash):
        world.shard(die).sweep(SHARD, lease_ms=60_000)
    taken = world.shard().sweep(SHARD)
    assert taken.leased and taken.sessions == 4
    now_ms = int(world.wall.now * 1000)
    world.store.put(f"l#sweep/{SHARD}", {"until": now_ms + 60_000}, None)  # what a killed sweep leaves
    assert not world.shard().sweep(SHARD).leased
    world.wall.now += 61
    assert world.shard().sweep(SHARD).leased
