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

Silent machines: the *stream clock* is the newest timestamp reached by at least ``clock_quorum``
machines (one machine with a clock in the future cannot close everyone's sessions). A machine
silent for ``timeout + allowed_lateness`` of stream time has its session closed; its state is
dropped after ``max(that, dedupe_horizon)``. Memory is bounded by the active machines.

State is plain values (:class:`MachineState`, :class:`OpenSession`) with ``to_dict``/``from_dict``,
so any store can keep it between batches, runs or Lambda invocations.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sessionflow.config import SessionConfig
from sessionflow.core.enrich import iso_time
from sessionflow.core.ids import session_id

Event = dict[str, Any]
Summary = dict[str, Any]
_PRUNE_FLOOR = 256


@dataclass(slots=True)
class OpenSession:
    session_id: str
    start_ts: int
    last_ts: int
    first_type: str
    last_type: str
    count: int = 0
    type_counts: dict[str, int] = field(default_factory=dict)
    user_id: str | None = None
    app_version: str | None = None
    closed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "start_ts": self.start_ts,
            "last_ts": self.last_ts,
            "first_type": self.first_type,
            "last_type": self.last_type,
            "count": self.count,
            "type_counts": dict(self.type_counts),
            "user_id": self.user_id,
            "app_version": self.app_version,
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenSession:
        return cls(**{**data, "type_counts": dict(data["type_counts"])})


@dataclass(slots=True)
class MachineState:
    machine_id: str
    newest_ts: int = -1
    # Stream clock when the machine's last event arrived: idleness is measured from here.
    arrival_clock: int = -1
    # Heap of (timestamp, event_id, event) not yet released.
    pending: list[tuple[int, str, Event]] = field(default_factory=list)
    last_key: tuple[int, str] | None = None
    session: OpenSession | None = None
    # event_id -> timestamp, for dedupe within the horizon.
    seen: dict[str, int] = field(default_factory=dict)
    prune_at: int = _PRUNE_FLOOR

    @property
    def anchor(self) -> int:
        return max(self.newest_ts, self.arrival_clock)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine_id": self.machine_id,
            "newest_ts": self.newest_ts,
            "arrival_clock": self.arrival_clock,
            "pending": [event for _, _, event in sorted(self.pending, key=lambda item: item[:2])],
            "last_key": list(self.last_key) if self.last_key else None,
            "session": self.session.to_dict() if self.session else None,
            "seen": dict(self.seen),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineState:
        pending = [(e["timestamp"], e["event_id"], e) for e in data["pending"]]
        heapq.heapify(pending)
        last_key = data["last_key"]
        session = data["session"]
        return cls(
            machine_id=data["machine_id"],
            newest_ts=data["newest_ts"],
            arrival_clock=data["arrival_clock"],
            pending=pending,
            last_key=(last_key[0], last_key[1]) if last_key else None,
            session=OpenSession.from_dict(session) if session else None,
            seen=dict(data["seen"]),
            prune_at=max(_PRUNE_FLOOR, 2 * len(data["seen"])),
        )


@dataclass(slots=True)
class Outputs:
    """What a batch produced. Lists are appended to in release order."""

    events: list[Event] = field(default_factory=list)
    sessions: list[Summary] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0

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
        self.clock = clock
        # (deadline, machine_id): when to look at a machine for idleness again.
        self._deadlines: list[tuple[int, str]] = []
        # The newest timestamps of the clock_quorum most advanced machines.
        self._leaders: dict[str, int] = {}
        self._touched: set[str] = set()
        self._timeout = config.timeout_ms
        self._lateness = config.allowed_lateness_ms
        self._opening = config.opening_events
        self._max_duration = config.max_session_duration_ms

    # -- the hot path -------------------------------------------------------------------------

    def process(self, events: Iterable[Event], out: Outputs) -> None:
        """Consume valid events in arrival order; append what they release to ``out``.

        Call :meth:`end_batch` after each batch to advance the stream clock and close what is
        idle; a batch can be as small as one event.
        """
        machines = self.machines
        touched = self._touched
        lateness = self._lateness
        horizon = self.config.dedupe_horizon_ms
        clock = self.clock
        release = self._release
        push = heapq.heappush
        pop = heapq.heappop
        for event in events:
            machine_id = event["machine_id"]
            state = machines.get(machine_id)
            if state is None:
                state = machines[machine_id] = MachineState(machine_id)
            event_id = event["event_id"]
            ts = event["timestamp"]
            # The horizon is checked here, not only when pruning, so when pruning runs changes nothing.
            twin_ts = state.seen.get(event_id)
            if twin_ts is not None and twin_ts >= state.newest_ts - horizon:
                out.duplicates.append(event)
                continue
            state.seen[event_id] = ts
            touched.add(machine_id)
            state.arrival_clock = clock
            last_key = state.last_key
            if last_key is not None and ((ts, event_id) < last_key or self._extends_closed(state, event)):
                self._mark_late(event)
                out.events.append(event)
                out.late += 1
                continue
            pending = state.pending
            push(pending, (ts, event_id, event))
            state.newest_ts = max(state.newest_ts, ts)
            release_before = state.newest_ts - lateness
            while pending and pending[0][0] < release_before:
                release(state, pop(pending)[2], out)

    def _extends_closed(self, state: MachineState, event: Event) -> bool:
        session = state.session
        return session is not None and session.closed and self._joins(session, event)

    def _joins(self, session: OpenSession, event: Event) -> bool:
        """Would ``event``, coming right after the session's last event, stay in it?"""
        ts = event["timestamp"]
        if ts - session.last_ts > self._timeout or event["event_type"] in self._opening:
            return False
        return self._max_duration is None or ts - session.start_ts <= self._max_duration

    def _release(self, state: MachineState, event: Event, out: Outputs) -> None:
        ts = event["timestamp"]
        session = state.session
        if session is None or session.closed or not self._joins(session, event):
            if session is not None and not session.closed:
                out.sessions.append(self._summary(state.machine_id, session))
            session = state.session = OpenSession(
                session_id=session_id(state.machine_id, ts, event["event_id"]),
                start_ts=ts,
                last_ts=ts,
                first_type=event["event_type"],
                last_type=event["event_type"],
            )
            event["ms_since_prev"] = None
        else:
            event["ms_since_prev"] = ts - session.last_ts
        session.count += 1
        session.last_ts = ts
        event_type = session.last_type = event["event_type"]
        counts = session.type_counts
        counts[event_type] = counts.get(event_type, 0) + 1
        if session.user_id is None:
            session.user_id = event.get("user_id")
        if session.app_version is None:
            session.app_version = event.get("app_version")
        event["session_id"] = session.session_id
        event["session_seq"] = session.count
        event["late"] = False
        state.last_key = (ts, event["event_id"])
        out.events.append(event)

    @staticmethod
    def _mark_late(event: Event) -> None:
        event["session_id"] = None
        event["session_seq"] = None
        event["ms_since_prev"] = None
        event["late"] = True

    # -- per batch: the stream clock, idle machines, dedupe horizon ---------------------------------

    def end_batch(self, out: Outputs) -> None:
        leaders = self._leaders
        quorum = self.config.clock_quorum
        for machine_id in self._touched:
            state = self.machines[machine_id]
            if len(state.seen) >= state.prune_at:
                self._prune_seen(state)
            if machine_id in leaders or len(leaders) < quorum or state.newest_ts > min(leaders.values()):
                leaders[machine_id] = state.newest_ts
                if len(leaders) > quorum:
                    del leaders[min(leaders, key=leaders.__getitem__)]
        if len(leaders) >= quorum:
            self.clock = max(self.clock, min(leaders.values()))
        idle = self.config.idle_close_ms
        for machine_id in self._touched:
            heapq.heappush(self._deadlines, (self.machines[machine_id].anchor + idle, machine_id))
        self._touched.clear()
        self._close_idle(out)

    def _close_idle(self, out: Outputs) -> None:
        deadlines = self._deadlines
        idle = self.config.idle_close_ms
        retention = self.config.retention_ms
        while deadlines and deadlines[0][0] < self.clock:
            _, machine_id = heapq.heappop(deadlines)
            state = self.machines.get(machine_id)
            if state is None:
                continue
            anchor = state.anchor
            if self.clock <= anchor + idle:
                continue  # it spoke again since; a newer deadline is queued
            self._drain(state, out)
            if self.clock > anchor + retention:
                del self.machines[machine_id]
                self._leaders.pop(machine_id, None)
            else:
                heapq.heappush(deadlines, (anchor + retention, machine_id))

    def _drain(self, state: MachineState, out: Outputs) -> None:
        pending = state.pending
        while pending:
            self._release(state, heapq.heappop(pending)[2], out)
        session = state.session
        if session is not None and not session.closed:
            out.sessions.append(self._summary(state.machine_id, session))
            session.closed = True

    def _prune_seen(self, state: MachineState) -> None:
        floor = state.newest_ts - self.config.dedupe_horizon_ms
        state.seen = {event_id: ts for event_id, ts in state.seen.items() if ts >= floor}
        state.prune_at = max(_PRUNE_FLOOR, 2 * len(state.seen))

    def flush(self, out: Outputs) -> None:
        """End of input: release every buffered event, close every session, forget every machine."""
        for state in self.machines.values():
            self._drain(state, out)
        self.machines.clear()
        self._deadlines.clear()
        self._leaders.clear()
        self._touched.clear()

    # -- summaries and state ----------------------------------------------------------------------

    @staticmethod
    def _summary(machine_id: str, session: OpenSession) -> Summary:
        return {
            "session_id": session.session_id,
            "machine_id": machine_id,
            "user_id": session.user_id,
            "start_ts": session.start_ts,
            "end_ts": session.last_ts,
            "session_start": iso_time(session.start_ts),
            "session_end": iso_time(session.last_ts),
            "duration_ms": session.last_ts - session.start_ts,
            "event_count": session.count,
            "first_event_type": session.first_type,
            "last_event_type": session.last_type,
            "event_type_counts": dict(sorted(session.type_counts.items())),
            "app_version": session.app_version,
            "session_date": iso_time(session.start_ts)[:10],
        }

    def snapshot(self) -> dict[str, Any]:
        """All state as plain JSON-able values."""
        return {
            "clock": self.clock,
            "leaders": dict(self._leaders),
            "machines": [state.to_dict() for state in self.machines.values()],
        }

    @classmethod
    def restore(cls, config: SessionConfig, snapshot: dict[str, Any]) -> Sessionizer:
        sessionizer = cls(config, clock=snapshot["clock"])
        sessionizer._leaders = dict(snapshot["leaders"])
        idle = config.idle_close_ms
        for data in snapshot["machines"]:
            state = MachineState.from_dict(data)
            sessionizer.machines[state.machine_id] = state
            sessionizer._deadlines.append((state.anchor + idle, state.machine_id))
        heapq.heapify(sessionizer._deadlines)
        return sessionizer
