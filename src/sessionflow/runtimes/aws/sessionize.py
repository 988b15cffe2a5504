"""The ``sessionize`` step: the core :class:`Sessionizer` over per-machine state in a store.

One call handles one batch of one shard of ``clean`` (Lambda never runs two batches of a shard at
once, but a timed-out invocation can still be running while its retry starts). Keys in the store:

* ``m#<machine_id>``: ``{"state": MachineState dict | None, "shard", "seq", "outbox"}``. ``seq`` is
  the highest sequence number of ``shard`` applied to the machine, so a redelivered record is
  skipped, never applied twice. ``state`` None is a tombstone (the core forgot the machine); it keeps
  ``seq`` and the outbox. ``outbox`` holds the rows the last write produced, tagged with its token.
* ``s#<stream/shard>``: the shard's :class:`StreamClock` (the core's cross-machine state, kept per
  shard, under its own ``clock`` and ``leaders`` keys), the timer buckets in use, and ``inflight``
  (see below). A batch restores a :class:`Snapshot` of that clock and the machines it reads.
* ``t#<stream/shard>#<bucket>``: a set of machine ids whose idle deadline (stream time) falls in that
  minute. Idle machines are found here at the end of each batch of their shard, as the core's
  deadline heap finds them at each ``end_batch``. A busy shard writes tens of thousands of machines
  a minute, more than one 400 KB item holds: the shard item counts the bytes added to each bucket's
  set and rolls over to ``t#<stream/shard>#<bucket>#<n>`` before the limit.

A batch: (1) read the shard item and the batch's machines in one BatchGetItem; (2) run the core,
then read the due timer buckets and let the core close those idle machines; (3) write the shard
item with ``inflight = {token, machines}`` (conditional on its version: only one invocation of a
shard commits), (4) add the timers, (5) write each changed machine conditionally on its version,
its outbox tagged with the token, (6) send the rows to Firehose, (7) write the shard item again
with ``inflight`` cleared. A crash anywhere leaves ``inflight`` set; the next invocation of the
shard first re-sends the outboxes carrying that token. So no row is lost; a row is sent twice only
if a crash falls between (6) and (7), and then as an exact copy (same event_id / session_id).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from sessionflow.config import MINUTE, SessionConfig
from sessionflow.core import MachineState, Outputs, Sessionizer, Snapshot, StreamClock, rules
from sessionflow.runtimes.aws.outputs import Row, Sink
from sessionflow.runtimes.aws.positions import RAW_FIELD, RawMarks, RawPosition
from sessionflow.state.base import Item, StateStore

TIMER_BUCKET_MS = MINUTE
# Bytes of machine ids in one timer set item before the next one is started (DynamoDB: 400 KB).
TIMER_SET_BYTES = 300_000
# What one member may cost beyond its UTF-8 bytes: an over-estimate keeps the sets under the limit.
_MEMBER_OVERHEAD = 8


# Rounds of reading and fencing an earlier attempt's machines before giving the shard up for now.
_FENCE_ROUNDS = 8


def _fence_value(shard: str) -> dict[str, Any]:
    """A machine an earlier attempt meant to create: a tombstone, so that attempt's create fails."""
    return {"state": None, "shard": shard, "seq": "0", "outbox": None}


class ShardConflict(RuntimeError):
    """Another invocation committed this shard since we read it: the whole batch is retried."""


@dataclass(frozen=True, slots=True)
class CleanRecord:
    sequence_number: int
    event: dict[str, Any]
    raw: RawPosition | None = None  # where ``process`` read it on ``raw`` (None: put by an older version)

    @classmethod
    def decode(cls, sequence_number: int, value: dict[str, Any]) -> CleanRecord:
        """From a ``clean`` record's JSON: the event, and its raw position taken out of it."""
        raw = value.pop(RAW_FIELD, None)
        return cls(sequence_number, value, RawPosition.from_list(raw) if raw else None)


@dataclass
class BatchReport:
    records: int = 0
    applied: int = 0
    skipped: int = 0  # redelivered records already applied
    repeated: int = 0  # records ``process`` put on ``clean`` again (a raw retry): copies, dropped
    fenced: int = 0  # machines a crashed attempt had claimed but not written, fenced off by recovery
    events: int = 0
    sessions: int = 0
    duplicates: int = 0
    late: int = 0
    resent: int = 0  # rows re-sent from a previous attempt's outbox
    swept: int = 0  # idle machines looked at through the timers
    commit_ms: float = 0.0  # the commit, from the intent to the shard item written done
    failed_machines: set[str] = field(default_factory=set)

    def failed_sequence_numbers(self, records: Sequence[CleanRecord]) -> list[int]:
        return [r.sequence_number for r in records if r.event["machine_id"] in self.failed_machines]


def machine_key(machine_id: str) -> str:
    return f"m#{machine_id}"


def shard_key(shard: str) -> str:
    return f"s#{shard}"


def timer_key(shard: str, bucket: int, part: int = 0) -> str:
    return f"t#{shard}#{bucket}" if part == 0 else f"t#{shard}#{bucket}#{part}"


def _timer_keys(shard: str, buckets: Iterable[int], fill: dict[str, list[int]]) -> list[str]:
    """Every set item of these buckets; ``fill``: bucket -> [set items, bytes in the last one]."""
    return [timer_key(shard, b, part) for b in buckets for part in range(fill.get(str(b), [1, 0])[0])]


@dataclass
class _Change:
    machine_id: str
    version: int | None
    value: dict[str, Any]
    state: MachineState | None  # the machine's state after the batch: ``value["state"]`` is its dict


@dataclass
class _ShardState:
    """The value of a shard item."""

    clock: StreamClock = field(default_factory=StreamClock)
    buckets: list[int] = field(default_factory=list)
    timer_fill: dict[str, list[int]] = field(default_factory=dict)
    wall: int | None = None  # wall-clock ms of the last commit of a batch
    inflight: dict[str, Any] | None = None

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> _ShardState:
        # timer_fill and wall came later than the others: an item written before has neither.
        return cls(
            clock=StreamClock.from_dict(value),
            buckets=list(value.get("buckets", [])),
            timer_fill=dict(value.get("timer_fill", {})),
            wall=value.get("wall"),
            inflight=value.get("inflight"),
        )

    def to_value(self) -> dict[str, Any]:
        return {
            **self.clock.to_dict(),
            "buckets": self.buckets,
            "timer_fill": self.timer_fill,
            "wall": self.wall,
            "inflight": self.inflight,
        }


def _snapshot(clock: StreamClock, items: Iterable[Item]) -> Snapshot:
    """The core's state for a batch: the shard's clock and the machines read (tombstones left out)."""
    states = [item.value["state"] for item in items]
    return Snapshot(clock, tuple(MachineState.from_dict(state) for state in states if state is not None))


class ShardSessionizer:
    """Applies batches of one shard of ``clean`` to the store; rows go to ``sink``."""

    def __init__(
        self,
        config: SessionConfig,
        store: StateStore,
        sink: Sink,
        write_threads: int = 8,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.sink = sink
        self.write_threads = write_threads
        self._now = now  # wall-clock seconds: when a shard last committed a batch, for the sweep

    # -- one batch ----------------------------------------------------------------------------------

    def apply(self, shard: str, records: Sequence[CleanRecord]) -> BatchReport:
        report = BatchReport(records=len(records))
        machine_ids = list(dict.fromkeys(r.event["machine_id"] for r in records))
        items = self.store.get_many([shard_key(shard), *(machine_key(m) for m in machine_ids)])
        shard_item = items.pop(shard_key(shard), None)
        shard_state = self._recover(shard, shard_item, report)
        if shard_state.inflight:
            # Recovery may have fenced or re-read some of these machines: read them as they are now.
            items = self.store.get_many(machine_key(m) for m in machine_ids)
        loaded = {key[2:]: item for key, item in items.items()}

        fresh: list[dict[str, Any]] = []
        newest_seq: dict[str, int] = {}
        marks: dict[str, RawMarks] = {}
        for record in records:
            machine_id = record.event["machine_id"]
            item = loaded.get(machine_id)
            if item is not None and item.value["shard"] == shard and record.sequence_number <= int(item.value["seq"]):
                report.skipped += 1
                continue
            newest_seq[machine_id] = record.sequence_number
            if record.raw is not None:
                if machine_id not in marks:
                    marks[machine_id] = RawMarks.from_value(item.value.get("raw") if item else None)
                if not marks[machine_id].admit(record.raw):
                    report.repeated += 1
                    continue
            fresh.append(record.event)
        report.applied = len(fresh)

        sessionizer = Sessionizer.restore(self.config, _snapshot(shard_state.clock, loaded.values()))
        out = Outputs()
        sessionizer.process(fresh, out)
        sessionizer.end_batch(out)
        after = sessionizer.snapshot()
        states = {state.machine_id: state for state in after.machines}

        # Idle machines of this shard that the batch did not touch: the due timer buckets.
        fill = shard_state.timer_fill
        due = [b for b in shard_state.buckets if b * TIMER_BUCKET_MS < after.clock.time]
        swept, clock = self._close_timed_out(shard, due, fill, after.clock, set(machine_ids), states, out, report)
        report.events, report.sessions = len(out.events), len(out.sessions)
        report.duplicates, report.late = len(out.duplicates) + report.repeated, out.late

        changes = _changes(shard, [*machine_ids, *swept], {**swept, **loaded}, states, newest_seq, out, marks)
        fully_due = [b for b in due if (b + 1) * TIMER_BUCKET_MS <= clock.time]
        if not changes and not fully_due and clock == shard_state.clock and not shard_state.inflight:
            return report  # a redelivered batch already applied: not even the shard item is rewritten
        new_state = replace(shard_state, clock=clock, timer_fill=fill, wall=self._wall_ms())
        self._commit(shard, shard_item, new_state, changes, fully_due, report)
        return report

    def _close_timed_out(
        self,
        shard: str,
        due: list[int],
        fill: dict[str, list[int]],
        clock: StreamClock,
        exclude: set[str],
        states: dict[str, MachineState],
        out: Outputs,
        report: BatchReport,
    ) -> tuple[dict[str, Item], StreamClock]:
        """Load the machines of the due timer sets (but ``exclude``) and let the core close the idle ones.

        Their states after that go into ``states``; returns the machines loaded and the clock
        (machines the core forgot have left its leaders).
        """
        swept: dict[str, Item] = {}
        if not due:
            return swept, clock
        members = self.store.members_many(_timer_keys(shard, due, fill))
        candidates = set().union(*members.values()) - exclude if members else set()
        for key, item in self.store.get_many(machine_key(m) for m in sorted(candidates)).items():
            if item.value["shard"] == shard and item.value["state"] is not None:
                swept[key[2:]] = item
        report.swept = len(swept)
        if not swept:
            return swept, clock
        idle = Sessionizer.restore(self.config, _snapshot(clock, swept.values()))
        idle.end_batch(out)
        after = idle.snapshot()
        states.update((state.machine_id, state) for state in after.machines)
        return swept, after.clock

    def _wall_ms(self) -> int:
        return int(self._now() * 1000)

    # -- a quiet shard ------------------------------------------------------------------------------

    def sweep(self, shard: str, quiet_ms: int | None = None) -> BatchReport:
        """Close the idle sessions of a shard that has received nothing for ``quiet_ms`` of wall time.

        A shard's stream clock moves only with its records: when traffic stops, its open sessions
        would stay open until traffic resumes. A live stream's time goes at the wall clock's pace,
        so a shard quiet since wall time W, its clock then C, is taken to stand at C + (now - W):
        machines idle by that clock are closed exactly as a batch would close them. The stored clock
        is not moved (the next batch goes on from the real one). Default ``quiet_ms``: the idle
        close time (``timeout + allowed_lateness``), so a shard still receiving records is never
        swept. Run on a schedule (``sweep_handler``).
        """
        report = BatchReport()
        shard_item = self.store.get(shard_key(shard))
        if shard_item is None:
            return report
        shard_state = self._recover(shard, shard_item, report)
        wall = shard_state.wall
        now_ms = self._wall_ms()
        quiet = self.config.idle_close_ms if quiet_ms is None else quiet_ms
        stored = shard_state.clock
        base = stored.time if stored.time >= 0 else max(stored.leaders.values(), default=-1)
        if wall is None or now_ms - wall < quiet or base < 0:
            return report
        clock = StreamClock(base + (now_ms - wall), stored.leaders)
        fill = shard_state.timer_fill
        due = [b for b in shard_state.buckets if b * TIMER_BUCKET_MS < clock.time]
        out = Outputs()
        states: dict[str, MachineState] = {}
        swept, clock = self._close_timed_out(shard, due, fill, clock, set(), states, out, report)
        report.events, report.sessions = len(out.events), len(out.sessions)
        changes = _changes(shard, list(swept), swept, states, {}, out)
        fully_due = [b for b in due if (b + 1) * TIMER_BUCKET_MS <= clock.time]
        if not changes and not fully_due:
            return report
        # The stored clock and wall time stay; machines the core forgot leave the leaders.
        new_state = replace(shard_state, clock=StreamClock(stored.time, clock.leaders), timer_fill=fill)
        self._commit(shard, shard_item, new_state, changes, fully_due, report)
        return report

    # -- end of stream --------------------------------------------------------------------------------

    def flush(self, shard: str) -> BatchReport:
        """Close every session of the shard and forget its machines (the embedded runner's ``--flush``)."""
        report = BatchReport()
        shard_item = self.store.get(shard_key(shard))
        if shard_item is None:
            return report
        shard_state = self._recover(shard, shard_item, report)
        fill = shard_state.timer_fill
        members = self.store.members_many(_timer_keys(shard, shard_state.buckets, fill))
        machine_ids = sorted(set().union(*members.values())) if members else []
        loaded = {
            key[2:]: item
            for key, item in self.store.get_many(machine_key(m) for m in machine_ids).items()
            if item.value["shard"] == shard and item.value["state"] is not None
        }
        sessionizer = Sessionizer.restore(self.config, _snapshot(shard_state.clock, loaded.values()))
        out = Outputs()
        sessionizer.flush(out)
        report.swept, report.events, report.sessions = len(loaded), len(out.events), len(out.sessions)
        rows = _rows_by_machine(out)
        changes = [
            _Change(
                m,
                item.version,
                {
                    "state": None,
                    "shard": shard,
                    "seq": item.value["seq"],
                    "outbox": rows.get(m),
                    "raw": _raw_marks(item),
                },
                None,
            )
            for m, item in loaded.items()
        ]
        # Every machine forgotten: the clock keeps its time, and has no leaders left.
        clock = StreamClock(shard_state.clock.time)
        new_state = replace(shard_state, clock=clock, timer_fill=fill, wall=self._wall_ms())
        self._commit(shard, shard_item, new_state, changes, list(shard_state.buckets), report)
        return report

    # -- the commit protocol ------------------------------------------------------------------------------

    def _recover(self, shard: str, shard_item: Item | None, report: BatchReport) -> _ShardState:
        """The shard's state; first re-send what an earlier attempt committed but may not have sent.

        That attempt (crashed, timed out, or still running: a sweep racing a batch) may not have
        written all its machines yet. Each machine of its intent that does not carry its token is
        fenced: rewritten as it is, so its version moves and that attempt's conditional write of it
        can no longer land; the machine keeps its previous state and a later batch, sweep or flush
        closes it. The machines that do carry the token have their outboxes re-sent. Only then may
        this invocation replace ``inflight`` with its own intent, so no outbox is ever orphaned.
        """
        if shard_item is None:
            return _ShardState()
        state = _ShardState.from_value(shard_item.value)
        inflight = state.inflight
        if not inflight:
            return state
        token = inflight["token"]
        rows: dict[str, list[Row]] = {"events": [], "sessions": []}
        pending = list(inflight["machines"])
        for _ in range(_FENCE_ROUNDS):
            current = self.store.get_many(machine_key(m) for m in pending)
            raced: list[str] = []
            for machine_id in pending:
                item = current.get(machine_key(machine_id))
                outbox = item.value.get("outbox") if item is not None else None
                if outbox and outbox.get("token") == token:
                    for table in ("events", "sessions"):
                        rows[table].extend(outbox.get(table, ()))
                    continue
                value = item.value if item is not None else _fence_value(shard)
                if self.store.put(machine_key(machine_id), value, item.version if item else None) is None:
                    raced.append(machine_id)  # written in between: read it again
                else:
                    report.fenced += 1
            pending = raced
            if not pending:
                break
        else:
            raise ShardConflict(f"shard {shard}: machines of an earlier attempt kept changing during recovery")
        report.resent = sum(len(v) for v in rows.values())
        self.sink.send(rows)
        return state

    def _commit(
        self,
        shard: str,
        shard_item: Item | None,
        new_state: _ShardState,
        changes: list[_Change],
        drop_buckets: Iterable[int],
        report: BatchReport,
    ) -> None:
        started = time.perf_counter()
        config = self.config
        token = uuid.uuid4().hex
        timers: dict[int, set[str]] = defaultdict(set)
        for change in changes:
            if change.state is not None:
                timers[_next_deadline(change.state, config) // TIMER_BUCKET_MS].add(change.machine_id)
            if change.value["outbox"]:
                change.value["outbox"]["token"] = token
        buckets = sorted(set(new_state.buckets) | set(timers))
        fill = {key: list(value) for key, value in new_state.timer_fill.items()}
        additions = _fill_timer_sets(shard, timers, fill)

        inflight = {"token": token, "machines": [c.machine_id for c in changes]}
        intent = replace(new_state, buckets=buckets, timer_fill=fill, inflight=inflight)
        version = self.store.put(shard_key(shard), intent.to_value(), shard_item.version if shard_item else None)
        if version is None:
            raise ShardConflict(f"shard {shard} was committed by another invocation; retrying the batch")
        for key, machine_ids in additions:
            self.store.add_members(key, machine_ids)

        def write(change: _Change) -> bool:
            return self.store.put(machine_key(change.machine_id), change.value, change.version) is not None

        if self.write_threads > 1 and len(changes) > 1:
            with ThreadPoolExecutor(min(self.write_threads, len(changes))) as pool:
                written = list(pool.map(write, changes))
        else:
            written = [write(change) for change in changes]

        rows: dict[str, list[Row]] = {"events": [], "sessions": []}
        for change, ok in zip(changes, written, strict=True):
            if not ok:
                # A racing writer (e.g. across a reshard): its records are redelivered and re-read.
                report.failed_machines.add(change.machine_id)
                continue
            outbox = change.value["outbox"]
            if outbox:
                rows["events"].extend(outbox["events"])
                rows["sessions"].extend(outbox["sessions"])
        self.sink.send(rows)

        dropped = [] if report.failed_machines else list(drop_buckets)
        for key in _timer_keys(shard, dropped, fill):
            self.store.delete(key, None)
        for bucket in dropped:
            fill.pop(str(bucket), None)
        done = replace(intent, buckets=sorted(set(buckets) - set(dropped)), timer_fill=fill, inflight=None)
        if self.store.put(shard_key(shard), done.to_value(), version) is None:
            raise ShardConflict(f"shard {shard} changed while this invocation held it")
        report.commit_ms = (time.perf_counter() - started) * 1000


def _fill_timer_sets(
    shard: str, timers: dict[int, set[str]], fill: dict[str, list[int]]
) -> list[tuple[str, list[str]]]:
    """(set item, machine ids to add) per bucket, starting a new item of a bucket before one is full.

    ``fill`` is updated in place. It counts every addition, repeats included: it can only
    over-estimate a set's size, so an item may be rolled over early, never too late.
    """
    additions: list[tuple[str, list[str]]] = []
    for bucket, machine_ids in sorted(timers.items()):
        parts, size = fill.get(str(bucket), [1, 0])
        chunk: list[str] = []
        for machine_id in sorted(machine_ids):
            cost = len(machine_id.encode()) + _MEMBER_OVERHEAD
            if size + cost > TIMER_SET_BYTES and size > 0:
                if chunk:
                    additions.append((timer_key(shard, bucket, parts - 1), chunk))
                    chunk = []
                parts, size = parts + 1, 0
            chunk.append(machine_id)
            size += cost
        if chunk:
            additions.append((timer_key(shard, bucket, parts - 1), chunk))
        fill[str(bucket)] = [parts, size]
    return additions


def _changes(
    shard: str,
    machine_ids: Iterable[str],
    items: dict[str, Item],
    states: dict[str, MachineState],
    newest_seq: dict[str, int],
    out: Outputs,
    marks: dict[str, RawMarks] | None = None,
) -> list[_Change]:
    """The machine items to write: each machine read, swept or new, whose state, seq or rows changed."""
    rows = _rows_by_machine(out)
    changes: list[_Change] = []
    for machine_id in dict.fromkeys(machine_ids):
        item = items.get(machine_id)
        state = states.get(machine_id)
        stored = state.to_dict() if state is not None else None
        seq = newest_seq.get(machine_id)
        machine_rows = rows.get(machine_id)
        if item is not None and seq is None and not machine_rows and item.value["state"] == stored:
            continue
        if item is None and state is None and seq is None:
            continue
        value = {
            "state": stored,
            "shard": shard,
            "seq": str(seq) if seq is not None else (item.value["seq"] if item else "0"),
            "outbox": machine_rows,
            "raw": marks[machine_id].to_value() if marks and machine_id in marks else _raw_marks(item),
        }
        changes.append(_Change(machine_id, item.version if item else None, value, state))
    return changes


def _raw_marks(item: Item | None) -> dict[str, Any] | None:
    return item.value.get("raw") if item is not None else None


def _rows_by_machine(out: Outputs) -> dict[str, dict[str, list[Row]]]:
    rows: dict[str, dict[str, list[Row]]] = {}
    for event in out.events:
        rows.setdefault(event["machine_id"], {"events": [], "sessions": []})["events"].append(event)
    for summary in out.sessions:
        rows.setdefault(summary["machine_id"], {"events": [], "sessions": []})["sessions"].append(summary)
    return rows


def _next_deadline(machine: MachineState, config: SessionConfig) -> int:
    """When the core will next look at this machine: idle close, or dropping its state."""
    session = machine.session
    anchor = machine.anchor  # rules.anchor
    if machine.pending or (session is not None and not session.closed):
        return rules.idle_deadline(anchor, config.idle_close_ms)
    return rules.retention_deadline(anchor, config.retention_ms)
