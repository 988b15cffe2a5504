"""Streaming sessionization per machine, with dedupe and a bounded reorder buffer.

Events arrive in any order, batch after batch. Each machine keeps a small reorder buffer: an event
is released to the session logic once the machine's newest timestamp is more than
``allowed_lateness`` past it, so events are sessionized in event-time order (timestamp, then
event_id). The session logic itself is one comparison per event:

* a new session starts at a machine's first event, when the gap to the previous event is
  *strictly* greater than ``timeout``, at an opening event, or when the session would last longer
  than ``max_session_duration``;
* an event whose place was already decided (it sorts before an event already released, or it would
  extend a session already closed) is *late*: written with ``late = True`` and no session, so
  sessions already written never change.

Each session also says why it ended (``close_reason``: ``rules.close_reason`` when the machine's
next event starts a new one, ``rules.end_reason`` against the stream clock when the clock closes it
or the input ends), its place among its machine's sessions (``session_number``, counted on when a
forgotten machine comes back: :attr:`Sessionizer.forgotten`), its first ``os``, its distinct
``document_id`` values, and how many of its events *arrived late* (``rules.arrived_late``: after an
event of their machine with a later timestamp) and were placed in it all the same.

Silent machines: the *stream clock* is the newest timestamp reached by at least ``clock_quorum``
machines (one machine with a clock in the future cannot close everyone's sessions). A machine
silent for ``timeout + allowed_lateness`` of stream time has its session closed; its state is
dropped after ``max(that, dedupe_horizon)``. Memory is bounded by the active machines.

State is plain values (``core/snapshot.py``): :meth:`Sessionizer.snapshot` gives a
:class:`Snapshot`, whose ``to_dict``/``from_dict`` any store keeps between batches, runs or Lambda
invocations, and :meth:`Sessionizer.restore` goes on from one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sessionflow.config import SessionConfig
from sessionflow.core import rules
from sessionflow.core.ids import session_id

# The state's values live with their format; imported here by name for the modules that use them.
from sessionflow.core.snapshot import (
    APP_VERSION,
    ARRIVED_LATE,
    ARRIVED_LATE_FIELD,
    DOCUMENT_ID,
    EVENT_ID,
    EVENT_TYPE,
    OS,
    PAYLOAD,
    PRUNE_FLOOR,
    TS,
    USER_ID,
    Event,
    MachineState,
    OpenSession,
    Record,
    Snapshot,
    StreamClock,
    record_of,
)

__all__ = [
    "Emitter",
    "Event",
    "MachineState",
    "OpenSession",
    "Outputs",
    "Record",
    "Sessionizer",
    "Snapshot",
    "StreamClock",
    "Summary",
    "record_of",
]

Summary = dict[str, Any]


class Emitter(Protocol):
    """Where the sessionizer's results go. ``payload`` is the record's opaque last element."""

    def release(
        self, payload: Any, session_id: str | None, seq: int | None, since: int | None, arrived_late: bool
    ) -> None:
        """An event placed in its session; a late event has session_id, seq and since None.
        ``arrived_late``: the event arrived after one of its machine with a later timestamp."""

    def duplicate(self, payload: Any) -> None: ...

    def session(self, summary: Summary) -> None: ...


@dataclass(slots=True)
class Outputs:
    """The dict emitter: session fields are written into each event dict, lists keep release order."""

    events: list[Event] = field(default_factory=list)
    sessions: list[Summary] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0

    def release(
        self, payload: Any, session_id: str | None, seq: int | None, since: int | None, arrived_late: bool
    ) -> None:
        payload["session_id"] = session_id
        payload["session_seq"] = seq
        payload["ms_since_prev"] = since
        payload["late"] = session_id is None
        payload[ARRIVED_LATE_FIELD] = arrived_late
        if session_id is None:
            self.late += 1
        self.events.append(payload)

    def duplicate(self, payload: Any) -> None:
        self.duplicates.append(payload)

    def session(self, summary: Summary) -> None:
        self.sessions.append(summary)

    def clear(self) -> None:
        self.events.clear()
        self.sessions.clear()
        self.duplicates.clear()
        self.rejections.clear()
        self.late = 0


class Sessionizer:
    """The logic, built from a :class:`SessionConfig`; state lives in :attr:`machines`."""

    def __init__(self, config: SessionConfig, clock: int = -1) -> None:
        self.config = config
        self.machines: dict[str, MachineState] = {}
        # Machines whose state was dropped -> the sessions each had started: one that comes back
        # numbers its next session on from there. A runtime that sessionizes part of a machine's
        # history puts in the sessions before that part (:meth:`restore`).
        self.forgotten: dict[str, int] = {}
        self.stream_clock = StreamClock(clock)
        # (deadline, machine_id): when to look at a machine for idleness again.
        self._deadlines: list[tuple[int, str]] = []
        self._touched: set[str] = set()
        self._timeout = config.timeout_ms
        self._lateness = config.allowed_lateness_ms
        self._opening = config.opening_events
        limit = config.max_session_duration_ms
        self._max_duration = rules.NO_LIMIT if limit is None else limit

    @property
    def clock(self) -> int:
        """The stream clock's time (see :class:`StreamClock`)."""
        return self.stream_clock.time

    # -- the hot path -------------------------------------------------------------------------

    def process(self, events: Iterable[Event], out: Emitter) -> None:
        """Consume valid event dicts in arrival order; what they release goes to ``out``.

        Call :meth:`end_batch` after each batch to advance the stream clock and close what is
        idle; a batch can be as small as one event.
        """
        self.process_records(map(record_of, events), out)

    def process_records(self, records: Iterable[Record], out: Emitter) -> None:
        machines = self.machines
        touched = self._touched
        lateness = self._lateness
        horizon = self.config.dedupe_horizon_ms
        clock = self.clock
        release = self._release
        joins = self._joins
        push = heapq.heappush
        pop = heapq.heappop
        for record in records:
            ts, event_id, machine_id = record[0], record[1], record[2]
            state = machines.get(machine_id)
            if state is None:
                state = machines[machine_id] = MachineState(machine_id, sessions=self.forgotten.pop(machine_id, 0))
            seen = state.seen
            # The horizon is checked here, not only when pruning, so when pruning runs changes nothing.
            twin_ts = seen.get(event_id)
            if twin_ts is not None and rules.is_duplicate(twin_ts, state.newest_ts, horizon):
                out.duplicate(record[PAYLOAD])
                continue
            seen[event_id] = ts
            touched.add(machine_id)
            state.arrival_clock = clock
            last_key = state.last_key
            if last_key is not None and (ts, event_id) == last_key:
                out.duplicate(record[PAYLOAD])  # the very event placed last, whatever the horizon says
                continue
            if not record[ARRIVED_LATE] and rules.arrived_late(ts, state.newest_ts):
                record = (*record[:ARRIVED_LATE], True, record[PAYLOAD])
            if last_key is not None:
                session = state.session
                if rules.is_late(
                    (ts, event_id) < last_key, session is not None and session.closed and joins(session, record)
                ):
                    out.release(record[PAYLOAD], None, None, None, record[ARRIVED_LATE])
                    continue
            pending = state.pending
            state.newest_ts = newest = max(state.newest_ts, ts)
            if not pending and rules.releasable(ts, newest, lateness):
                release(state, record, out)  # already old enough: no need to buffer it
                continue
            push(pending, record)
            while pending and rules.releasable(pending[0][TS], newest, lateness):
                release(state, pop(pending), out)

    def _joins(self, session: OpenSession, record: Record) -> bool:
        """Would ``record``, coming right after the session's last event, stay in it?"""
        ts = record[TS]
        return not rules.starts_session(
            ts - session.last_ts,
            ts - session.start_ts,
            record[EVENT_TYPE],
            self._opening,
            self._timeout,
            self._max_duration,
        )

    def _release(self, state: MachineState, record: Record, out: Emitter) -> None:
        ts = record[TS]
        event_type = record[EVENT_TYPE]
        session = state.session
        if session is None or session.closed or not self._joins(session, record):
            if session is not None and not session.closed:
                session.close_reason = rules.close_reason(
                    ts - session.last_ts,
                    ts - session.start_ts,
                    event_type,
                    self._opening,
                    self._timeout,
                    self._max_duration,
                )
                out.session(self._summary(state.machine_id, session))
            state.sessions += 1
            session = state.session = OpenSession(
                session_id=session_id(state.machine_id, ts, record[EVENT_ID]),
                start_ts=ts,
                last_ts=ts,
                first_type=event_type,
                last_type=event_type,
                number=state.sessions,
            )
            since = None
        else:
            since = ts - session.last_ts
        session.count += 1
        session.last_ts = ts
        session.last_type = event_type
        counts = session.type_counts
        counts[event_type] = counts.get(event_type, 0) + 1
        if session.user_id is None:
            session.user_id = record[USER_ID]
        if session.app_version is None:
            session.app_version = record[APP_VERSION]
        if session.os is None:
            session.os = record[OS]
        document = record[DOCUMENT_ID]
        if document is not None:
            session.documents.add(document)
        arrived_late = record[ARRIVED_LATE]
        if arrived_late:
            session.late_placed += 1
        state.last_key = (ts, record[EVENT_ID])
        out.release(record[PAYLOAD], session.session_id, session.count, since, arrived_late)

    # -- per batch: the stream clock, idle machines, dedupe horizon ---------------------------------

    def end_batch(self, out: Emitter) -> None:
        machines, touched = self.machines, self._touched
        for machine_id in touched:
            state = machines[machine_id]
            if len(state.seen) >= state.prune_at:
                self._prune_seen(state)
        newest = ((machine_id, machines[machine_id].newest_ts) for machine_id in touched)
        self.stream_clock = self.stream_clock.advanced(newest, self.config.clock_quorum)
        idle = self.config.idle_close_ms
        for machine_id in touched:
            heapq.heappush(self._deadlines, (rules.idle_deadline(machines[machine_id].anchor, idle), machine_id))
        touched.clear()
        self._close_idle(out)

    def _close_idle(self, out: Emitter) -> None:
        deadlines = self._deadlines
        idle = self.config.idle_close_ms
        retention = self.config.retention_ms
        clock = self.stream_clock.time
        while deadlines and rules.is_past(clock, deadlines[0][0]):
            _, machine_id = heapq.heappop(deadlines)
            state = self.machines.get(machine_id)
            if state is None:
                continue
            anchor = state.anchor
            if not rules.is_past(clock, rules.idle_deadline(anchor, idle)):
                continue  # it spoke again since; a newer deadline is queued
            self._drain(state, out, clock)
            forget_at = rules.retention_deadline(anchor, retention)
            if rules.is_past(clock, forget_at):
                del self.machines[machine_id]
                self.forgotten[machine_id] = state.sessions
                self.stream_clock = self.stream_clock.without(machine_id)
            else:
                heapq.heappush(deadlines, (forget_at, machine_id))

    def _drain(self, state: MachineState, out: Emitter, clock: int) -> None:
        """Releases every buffered event and closes the open session, at stream time ``clock``."""
        pending = state.pending
        while pending:
            self._release(state, heapq.heappop(pending), out)
        session = state.session
        if session is not None and not session.closed:
            session.close_reason = rules.end_reason(clock, session.last_ts, self._timeout)
            out.session(self._summary(state.machine_id, session))
            session.closed = True

    def _prune_seen(self, state: MachineState) -> None:
        newest, horizon = state.newest_ts, self.config.dedupe_horizon_ms
        state.seen = {event_id: ts for event_id, ts in state.seen.items() if rules.is_duplicate(ts, newest, horizon)}
        state.prune_at = max(PRUNE_FLOOR, 2 * len(state.seen))

    def flush(self, out: Emitter, clock: int | None = None) -> None:
        """End of input: release every buffered event, close every session, forget every machine.

        ``clock``: the stream time the input ended at, when the runtime knows it better than this
        sessionizer's stream clock (a runtime that sessionizes part of the stream at a time: see
        ``rules.end_reason``).
        """
        end = self.stream_clock.time if clock is None else clock
        for state in self.machines.values():
            self._drain(state, out, end)
            self.forgotten[state.machine_id] = state.sessions
        self.machines.clear()
        self._deadlines.clear()
        self.stream_clock = StreamClock(self.stream_clock.time)
        self._touched.clear()

    # -- summaries and state ----------------------------------------------------------------------

    def pending_count(self) -> int:
        """Records waiting in reorder buffers."""
        return sum(len(state.pending) for state in self.machines.values())

    @staticmethod
    def _summary(machine_id: str, session: OpenSession) -> Summary:
        assert session.close_reason is not None
        return rules.summary(
            rules.session_values(
                machine_id,
                session.session_id,
                session.start_ts,
                session.last_ts,
                session.count,
                session.first_type,
                session.last_type,
                session.type_counts,
                session.user_id,
                session.app_version,
                session.os,
                session.number,
                len(session.documents),
                session.late_placed,
                session.close_reason,
            )
        )

    def snapshot(self, resolve: Callable[[Any], Event] | None = None) -> Snapshot:
        """All state, as copies (``resolve``: see :meth:`MachineState.copy`)."""
        return Snapshot(
            self.stream_clock, tuple(state.copy(resolve) for state in self.machines.values()), dict(self.forgotten)
        )

    @classmethod
    def restore(cls, config: SessionConfig, snapshot: Snapshot | Mapping[str, Any]) -> Sessionizer:
        """A sessionizer going on from ``snapshot`` (or its dict: see :meth:`Snapshot.of`)."""
        snapshot = Snapshot.of(snapshot)
        sessionizer = cls(config)
        sessionizer.stream_clock = snapshot.clock
        sessionizer.forgotten = dict(snapshot.forgotten)
        idle = config.idle_close_ms
        for saved in snapshot.machines:
            state = saved.copy()  # the snapshot stays as it was, whatever comes next
            sessionizer.machines[state.machine_id] = state
            sessionizer._deadlines.append((rules.idle_deadline(state.anchor, idle), state.machine_id))
        heapq.heapify(sessionizer._deadlines)
        return sessionizer
