"""The ``sessionize`` step: the core :class:`Sessionizer` over per-machine state in a store.

One call handles one batch of one shard of ``clean`` (Lambda never runs two batches of a shard at
once, but a timed-out invocation can still be running while its retry starts). Keys in the store:

* ``m#<machine_id>``: ``{"state": MachineState dict | None, "shard", "seq", "raw", "outbox"}``.
  ``seq`` is the highest sequence number of ``shard`` applied to the machine and ``raw`` its raw
  positions (:mod:`.positions`), so a redelivered or re-put record is skipped, never applied twice.
  ``state`` None is a tombstone (the core forgot the machine); it keeps ``seq``, the outbox and
  ``sessions``, how many sessions the machine had started (the core's ``Snapshot.forgotten``), so its
  next session is numbered on. ``outbox`` holds the rows the last write produced, tagged with its token.
* ``s#<stream/shard>``: the shard's :class:`StreamClock` (the core's cross-machine state, kept per
  shard, under its own ``clock`` and ``leaders`` keys), the timer buckets in use, and ``inflight``
  (:mod:`.commit`). A batch restores a :class:`Snapshot` of that clock and the machines it reads.
* ``t#<stream/shard>#<bucket>``: a set of machine ids whose idle deadline (stream time) falls in that
  minute. Idle machines are found here at the end of each batch of their shard, as the core's
  deadline heap finds them at each ``end_batch``. A busy shard writes tens of thousands of machines
  a minute, more than one 400 KB item holds: the shard item counts the bytes added to each bucket's
  set and rolls over to ``t#<stream/shard>#<bucket>#<n>`` before the limit.
* ``i#<digest>``: the event-id index (:mod:`.admission`); ``l#sweep/<stream/shard>``: a sweep's lease.

A batch: (1) read the shard item and the batch's machines in one BatchGetItem, recovering what an
earlier attempt left in flight (:mod:`.commit`); (2) admit its records (:mod:`.admission`): skip what
was applied, drop copies, reject conflicting copies; (3) run the core, then read the due timer
buckets and let the core close those idle machines; (4) commit (:mod:`.commit`). No row is lost; a
row is sent twice only if a crash falls between its delivery and the end of the commit, and then as
an exact copy (same event_id / session_id / source).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sessionflow.config import SessionConfig
from sessionflow.core import MachineState, Outputs, Sessionizer, Snapshot, StreamClock
from sessionflow.runtimes.aws.admission import Admitted, CleanRecord, admit, machine_states
from sessionflow.runtimes.aws.commit import (
    TABLES,
    TIMER_BUCKET_MS,
    Change,
    CommitReport,
    Committer,
    Faults,
    ShardConflict,
    machine_key,
    shard_key,
    timer_keys,
)
from sessionflow.runtimes.aws.outputs import Row, Sink
from sessionflow.runtimes.aws.positions import RawMarks
from sessionflow.state.base import Item, StateStore

__all__ = ["BatchReport", "CleanRecord", "ShardConflict", "ShardSessionizer", "machine_key", "shard_key"]

# How long a sweep holds a shard when the caller does not say (a Lambda's timeout, with room).
SWEEP_LEASE_MS = 6 * 60 * 1000


@dataclass
class BatchReport(CommitReport):
    records: int = 0
    applied: int = 0
    skipped: int = 0  # redelivered records already applied
    repeated: int = 0  # records ``process`` put on ``clean`` again (a raw retry): copies, dropped
    early: int = 0  # records ahead of their machine's previous raw record: they come again, after it
    conflicts: int = 0  # copies of other content: rejected as conflicting_duplicate
    events: int = 0
    sessions: int = 0
    duplicates: int = 0
    late: int = 0
    swept: int = 0  # idle machines looked at through the timers
    leased: bool = True  # False: another sweep held the shard

    def failed_sequence_numbers(self, records: Sequence[CleanRecord]) -> list[int]:
        return [r.sequence_number for r in records if r.event["machine_id"] in self.failed_machines]


def _no_fault(_step: str) -> None:
    return None


def _snapshot(clock: StreamClock, items: dict[str, Item], states: dict[str, MachineState] | None = None) -> Snapshot:
    """The core's state for a batch: the shard's clock and the machines read (a tombstone: the
    sessions its machine had started, as forgotten). ``states``: the machines' states, if parsed."""
    if states is None:
        states = machine_states(items)
    forgotten = {m: int(item.value.get("sessions", 0)) for m, item in items.items() if item.value["state"] is None}
    return Snapshot(clock, tuple(states.values()), forgotten)


class ShardSessionizer:
    """Applies batches of one shard of ``clean`` to the store; rows go to ``sink``."""

    def __init__(
        self,
        config: SessionConfig,
        store: StateStore,
        sink: Sink,
        write_threads: int = 8,
        now: Callable[[], float] = time.time,
        faults: Faults = _no_fault,
    ) -> None:
        self.config = config
        self.store = store
        self.sink = sink
        self.write_threads = write_threads
        self.faults = faults  # called between the commit's steps: tests and ``--chaos`` make it raise
        self._now = now  # wall-clock seconds: when a shard last committed a batch, for the sweep

    @property
    def committer(self) -> Committer:
        return Committer(self.config, self.store, self.sink, self.write_threads, self.faults)

    # -- one batch ----------------------------------------------------------------------------------

    def apply(self, shard: str, records: Sequence[CleanRecord]) -> BatchReport:
        report = BatchReport(records=len(records))
        committer = self.committer
        machine_ids = list(dict.fromkeys(r.event["machine_id"] for r in records))
        items = self.store.get_many([shard_key(shard), *(machine_key(m) for m in machine_ids)])
        shard_item = items.pop(shard_key(shard), None)
        shard_state = committer.recover(shard, shard_item, report)
        if shard_state.inflight:
            # Recovery may have fenced or re-read some of these machines: read them as they are now.
            items = self.store.get_many(machine_key(m) for m in machine_ids)
        loaded = {key[2:]: item for key, item in items.items()}

        states = machine_states(loaded)
        admitted = admit(self.store, shard, records, loaded, states=states)
        report.applied = len(admitted.fresh)
        report.skipped, report.repeated, report.early = admitted.skipped, admitted.repeated, admitted.early
        report.conflicts = sum(len(rows) for rows in admitted.conflicts.values())

        sessionizer = Sessionizer.restore(self.config, _snapshot(shard_state.clock, loaded, states))
        out = Outputs()
        sessionizer.process(admitted.fresh, out)
        sessionizer.end_batch(out)
        after = sessionizer.snapshot()
        states = {state.machine_id: state for state in after.machines}
        forgotten = dict(after.forgotten)

        # Idle machines of this shard that the batch did not touch: the due timer buckets.
        fill = shard_state.timer_fill
        due = [b for b in shard_state.buckets if b * TIMER_BUCKET_MS < after.clock.time]
        swept, clock = self._close_timed_out(
            shard, due, fill, after.clock, set(machine_ids), states, forgotten, out, report
        )
        report.events, report.sessions = len(out.events), len(out.sessions)
        report.duplicates = admitted.duplicates + len(out.duplicates) + admitted.repeated
        report.late = out.late

        rows = _rows_by_machine(out, admitted.conflicts)
        changes = _changes(shard, [*machine_ids, *swept], {**swept, **loaded}, states, forgotten, rows, admitted)
        fully_due = [b for b in due if (b + 1) * TIMER_BUCKET_MS <= clock.time]
        if not changes and not fully_due and clock == shard_state.clock and not shard_state.inflight:
            return report  # a redelivered batch already applied: not even the shard item is rewritten
        new_state = replace(shard_state, clock=clock, timer_fill=fill, wall=self._wall_ms())
        committer.commit(shard, shard_item, new_state, changes, fully_due, report)
        return report

    def _close_timed_out(
        self,
        shard: str,
        due: list[int],
        fill: dict[str, list[int]],
        clock: StreamClock,
        exclude: set[str],
        states: dict[str, MachineState],
        forgotten: dict[str, int],
        out: Outputs,
        report: BatchReport,
    ) -> tuple[dict[str, Item], StreamClock]:
        """Load the machines of the due timer sets (but ``exclude``) and let the core close the idle ones.

        Their states after that go into ``states`` (those the core forgot into ``forgotten``);
        returns the machines loaded and the clock (machines the core forgot have left its leaders).
        """
        swept: dict[str, Item] = {}
        if not due:
            return swept, clock
        members = self.store.members_many(timer_keys(shard, due, fill))
        candidates = set().union(*members.values()) - exclude if members else set()
        for key, item in self.store.get_many(machine_key(m) for m in sorted(candidates)).items():
            if item.value["shard"] == shard and item.value["state"] is not None:
                swept[key[2:]] = item
        report.swept = len(swept)
        if not swept:
            return swept, clock
        idle = Sessionizer.restore(self.config, _snapshot(clock, swept))
        idle.end_batch(out)
        after = idle.snapshot()
        states.update((state.machine_id, state) for state in after.machines)
        forgotten.update(after.forgotten)
        return swept, after.clock

    def _wall_ms(self) -> int:
        return int(self._now() * 1000)

    # -- a quiet shard ------------------------------------------------------------------------------

    def sweep(self, shard: str, quiet_ms: int | None = None, lease_ms: int = SWEEP_LEASE_MS) -> BatchReport:
        """Close the idle sessions of a shard that has received nothing for ``quiet_ms`` of wall time.

        A shard's stream clock moves only with its records: when traffic stops, its open sessions
        would stay open until traffic resumes. A live stream's time goes at the wall clock's pace,
        so a shard quiet since wall time W, its clock then C, is taken to stand at C + (now - W):
        machines idle by that clock are closed exactly as a batch would close them. The stored clock
        is not moved (the next batch goes on from the real one). Default ``quiet_ms``: the idle
        close time (``timeout + allowed_lateness``), so a shard still receiving records is never
        swept. Run on a schedule (``sweep_handler``). Two sweeps never work on one shard at once:
        each holds the shard's lease for ``lease_ms`` (its remaining run time), or leaves the shard.
        """
        report = BatchReport()
        shard_item = self.store.get(shard_key(shard))
        if shard_item is None:
            return report
        lease = self._lease(shard, lease_ms)
        if lease is None:
            report.leased = False
            return report
        try:
            self._sweep(shard, shard_item, quiet_ms, report)
        finally:
            self.store.delete(_lease_key(shard), lease)
        return report

    def _sweep(self, shard: str, shard_item: Item, quiet_ms: int | None, report: BatchReport) -> None:
        committer = self.committer
        shard_state = committer.recover(shard, shard_item, report)
        wall = shard_state.wall
        now_ms = self._wall_ms()
        quiet = self.config.idle_close_ms if quiet_ms is None else quiet_ms
        stored = shard_state.clock
        base = stored.time if stored.time >= 0 else max(stored.leaders.values(), default=-1)
        if wall is None or now_ms - wall < quiet or base < 0:
            return
        clock = StreamClock(base + (now_ms - wall), stored.leaders)
        fill = shard_state.timer_fill
        due = [b for b in shard_state.buckets if b * TIMER_BUCKET_MS < clock.time]
        out = Outputs()
        states: dict[str, MachineState] = {}
        forgotten: dict[str, int] = {}
        swept, clock = self._close_timed_out(shard, due, fill, clock, set(), states, forgotten, out, report)
        report.events, report.sessions = len(out.events), len(out.sessions)
        changes = _changes(shard, list(swept), swept, states, forgotten, _rows_by_machine(out, {}), Admitted())
        fully_due = [b for b in due if (b + 1) * TIMER_BUCKET_MS <= clock.time]
        if not changes and not fully_due:
            return
        # The stored clock and wall time stay; machines the core forgot leave the leaders.
        new_state = replace(shard_state, clock=StreamClock(stored.time, clock.leaders), timer_fill=fill)
        committer.commit(shard, shard_item, new_state, changes, fully_due, report)

    def _lease(self, shard: str, lease_ms: int) -> int | None:
        """Take the shard's sweep lease (free, or past its time); its version, or None if held."""
        key = _lease_key(shard)
        now_ms = self._wall_ms()
        held = self.store.get(key)
        if held is not None and held.value["until"] > now_ms:
            return None
        return self.store.put(key, {"until": now_ms + lease_ms}, held.version if held else None)

    # -- end of stream --------------------------------------------------------------------------------

    def stream_clock(self, shards: Iterable[str]) -> int:
        """The stream clock of these shards together (``StreamClock.merged``): what a flush of all
        of them closes the open sessions against, as a batch run over the whole stream would."""
        items = self.store.get_many(shard_key(shard) for shard in shards)
        clocks = [StreamClock.from_dict(item.value) for item in items.values()]
        return StreamClock.merged(clocks, self.config.clock_quorum).time

    def flush(self, shard: str, end_clock: int | None = None) -> BatchReport:
        """Close every session of the shard and forget its machines (the embedded runner's ``--flush``).

        ``end_clock``: the stream's clock (``stream_clock`` of every shard) the sessions still open are
        closed against; None: the shard's own."""
        report = BatchReport()
        shard_item = self.store.get(shard_key(shard))
        if shard_item is None:
            return report
        committer = self.committer
        shard_state = committer.recover(shard, shard_item, report)
        fill = shard_state.timer_fill
        members = self.store.members_many(timer_keys(shard, shard_state.buckets, fill))
        machine_ids = sorted(set().union(*members.values())) if members else []
        loaded = {
            key[2:]: item
            for key, item in self.store.get_many(machine_key(m) for m in machine_ids).items()
            if item.value["shard"] == shard and item.value["state"] is not None
        }
        # Records still waiting for their previous raw record go in now, in their order: the stream ends.
        states = machine_states(loaded)
        admitted = admit(self.store, shard, [], loaded, release_parked=True, states=states)
        sessionizer = Sessionizer.restore(self.config, _snapshot(shard_state.clock, loaded, states))
        out = Outputs()
        sessionizer.process(admitted.fresh, out)
        sessionizer.flush(out, end_clock)
        forgotten = sessionizer.snapshot().forgotten
        report.swept, report.events, report.sessions = len(loaded), len(out.events), len(out.sessions)
        rows = _rows_by_machine(out, admitted.conflicts)
        changes = [
            Change(
                m,
                item.version,
                {
                    "state": None,
                    "shard": shard,
                    "seq": item.value["seq"],
                    "outbox": rows.get(m),
                    "raw": admitted.marks[m].to_value() if m in admitted.marks else _raw(item),
                    "sessions": forgotten[m],
                },
                None,
            )
            for m, item in loaded.items()
        ]
        # Every machine forgotten: the clock keeps its time, and has no leaders left.
        clock = StreamClock(shard_state.clock.time)
        new_state = replace(shard_state, clock=clock, timer_fill=fill, wall=self._wall_ms())
        committer.commit(shard, shard_item, new_state, changes, list(shard_state.buckets), report)
        return report


def _lease_key(shard: str) -> str:
    return f"l#sweep/{shard}"


def _changes(
    shard: str,
    machine_ids: Iterable[str],
    items: dict[str, Item],
    states: dict[str, MachineState],
    forgotten: dict[str, int],
    rows: dict[str, dict[str, list[Row]]],
    admitted: Admitted,
) -> list[Change]:
    """The machine items to write: each machine read, swept or new, whose state, seq or rows changed
    (a machine the core forgot: a tombstone that keeps its ``forgotten`` session count)."""
    changes: list[Change] = []
    for machine_id in dict.fromkeys(machine_ids):
        item = items.get(machine_id)
        state = states.get(machine_id)
        stored = state.to_dict() if state is not None else None
        seq = admitted.newest_seq.get(machine_id)
        machine_rows = rows.get(machine_id)
        parked = admitted.parked.get(machine_id, _parked(item))
        if item is not None and seq is None and not machine_rows and item.value["state"] == stored:
            continue
        if item is None and state is None and seq is None:
            continue
        marks: RawMarks | None = admitted.marks.get(machine_id)
        value = {
            "state": stored,
            "shard": shard,
            "seq": str(seq) if seq is not None else (item.value["seq"] if item else "0"),
            "outbox": machine_rows,
            "raw": marks.to_value() if marks is not None else _raw(item),
            "parked": parked or None,
        }
        if state is None:
            value["sessions"] = forgotten.get(machine_id, item.value.get("sessions", 0) if item else 0)
        changes.append(Change(machine_id, item.version if item else None, value, state))
    return changes


def _raw(item: Item | None) -> dict[str, Any] | None:
    return item.value.get("raw") if item is not None else None


def _parked(item: Item | None) -> list[dict[str, Any]]:
    return list(item.value.get("parked") or ()) if item is not None else []


def _rows_by_machine(out: Outputs, rejected: dict[str, list[Row]]) -> dict[str, dict[str, list[Row]]]:
    rows: dict[str, dict[str, list[Row]]] = {}

    def of(machine_id: str) -> dict[str, list[Row]]:
        return rows.setdefault(machine_id, {table: [] for table in TABLES})

    for event in out.events:
        of(event["machine_id"])["events"].append(event)
    for summary in out.sessions:
        of(summary["machine_id"])["sessions"].append(summary)
    for machine_id, machine_rejected in rejected.items():
        of(machine_id)["rejected"].extend(machine_rejected)
    return rows
