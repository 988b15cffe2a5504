"""The sessionizer's state as values, and the one definition of its serialised format.

:class:`MachineState` (with its :class:`OpenSession`) is one machine's state, the structure the
session logic works on; :class:`StreamClock` is the state shared across machines, kept apart from
the session logic; a :class:`Snapshot` is both at one moment, as copies. Every store goes through
their ``to_dict``/``from_dict``: the state file (a whole :class:`Snapshot`) and the AWS store (the
clock in the shard item, one :class:`MachineState` per machine item).

Format, version :data:`SNAPSHOT_VERSION`::

    {"version": 2, "clock": int, "leaders": {machine_id: int},
     "machines": [{"machine_id", "newest_ts", "arrival_clock", "pending": [event dict],
                   "last_key": [ts, event_id] | null, "session": OpenSession dict | null,
                   "seen": {event_id: ts}, "sessions": int}],
     "forgotten": {machine_id: int}}

A pending event that arrived late (``rules.arrived_late``) carries ``"arrived_late": true``.
``sessions`` is how many sessions the machine has started (its open or last session's
``session_number``); ``forgotten`` keeps that number for machines whose state was dropped, so a
machine silent for longer than the retention goes on numbering its sessions where it stopped.

Version 1 (and a value without ``"version"``, written before the format had one) had neither: it
is read as a machine that has started one session if it has one, none otherwise. Reading checks
the shape and types and raises :class:`SnapshotError` saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, Final

from sessionflow.core import rules

SNAPSHOT_VERSION: Final = 2
READABLE_VERSIONS: Final = (1, 2)
# A machine's dedupe memory is pruned when it has doubled since the last pruning (and not below this).
PRUNE_FLOOR: Final = 256

Event = dict[str, Any]


class SnapshotError(ValueError):
    """A snapshot value that is malformed, or of a format version this code does not read."""


# What the sessionizer needs of an event, plus the event itself (opaque to the logic): a dict here,
# a row handle in a columnar runtime. Timestamp and id come first so the reorder heap compares them.
# ARRIVED_LATE: what a runtime that sorts before it sessionizes found in arrival order (False
# otherwise); the sessionizer adds its own judgement of the arrival (rules.arrived_late).
Record = tuple[int, str, str, str, str | None, str | None, str | None, str | None, bool, Any]
TS: Final = 0
EVENT_ID: Final = 1
MACHINE_ID: Final = 2
EVENT_TYPE: Final = 3
USER_ID: Final = 4
APP_VERSION: Final = 5
OS: Final = 6
DOCUMENT_ID: Final = 7
ARRIVED_LATE: Final = 8
PAYLOAD: Final = 9
# The event field that says an event arrived late (the events table's column of that name).
ARRIVED_LATE_FIELD: Final = "arrived_late"


def record_of(event: Event) -> Record:
    return (
        event["timestamp"],
        event["event_id"],
        event["machine_id"],
        event["event_type"],
        event.get("user_id"),
        event.get("app_version"),
        event.get("os"),
        event.get("document_id"),
        event.get(ARRIVED_LATE_FIELD) is True,
        event,
    )


def _stored_event(record: Record, event: Event) -> Event:
    """A pending record's event as a snapshot's dict keeps it: with ``arrived_late`` when it did."""
    if record[ARRIVED_LATE]:
        return {**event, ARRIVED_LATE_FIELD: True}
    return _bare(event) if ARRIVED_LATE_FIELD in event else event


def _bare(event: Event) -> Event:
    """A copy of a pending event without ``arrived_late``: in a snapshot the mark is the record's
    (a columnar runtime's row has it as a column)."""
    event = dict(event)
    event.pop(ARRIVED_LATE_FIELD, None)
    return event


def _stored_record(event: Event) -> Record:
    """The record of a pending event a snapshot kept (:func:`_stored_event`), the mark taken out."""
    record = record_of(event)
    if ARRIVED_LATE_FIELD in event:
        del event[ARRIVED_LATE_FIELD]
    return record


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
    os: str | None = None
    # Its place among the machine's sessions, from 1 (MachineState.sessions when it started).
    number: int = 1
    documents: set[str] = field(default_factory=set)  # distinct document_id values
    late_placed: int = 0  # events placed in it that arrived late (rules.arrived_late)
    close_reason: str | None = None  # set when it is closed (rules.CLOSE_REASONS)

    def copy(self) -> OpenSession:
        return replace(self, type_counts=dict(self.type_counts), documents=set(self.documents))

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
            "os": self.os,
            "number": self.number,
            "documents": sorted(self.documents),
            "late_placed": self.late_placed,
            "close_reason": self.close_reason,
        }

    @classmethod
    def from_dict(cls, data: Any, version: int | None = None) -> OpenSession:
        """``version``: the snapshot's; None (a value kept on its own, as an AWS machine item keeps
        it): version 1 when it has none of version 2's keys."""
        where = "session"
        _check(isinstance(data, dict), where, "must be an object")
        if version is None:
            version = SNAPSHOT_VERSION if "number" in data else 1
        counts = _get(data, "type_counts", dict, where)
        _check(_all_ints(counts.values()), where, "'type_counts' must map to integers")
        closed = _present(data, "closed", where)
        _check(type(closed) is bool, where, "'closed' must be true or false")
        added: dict[str, Any] = {}
        if version >= 2:
            documents = _get(data, "documents", list, where)
            _check(set(map(type, documents)) <= {str}, where, "'documents' must be a list of strings")
            reason = _optional(data, "close_reason", where)
            _check(reason is None or reason in rules.CLOSE_REASONS, where, f"'close_reason' {reason!r} is unknown")
            added = {
                "os": _optional(data, "os", where),
                "number": _get(data, "number", int, where),
                "documents": set(documents),
                "late_placed": _get(data, "late_placed", int, where),
                "close_reason": reason,
            }
        return cls(
            session_id=_get(data, "session_id", str, where),
            start_ts=_get(data, "start_ts", int, where),
            last_ts=_get(data, "last_ts", int, where),
            first_type=_get(data, "first_type", str, where),
            last_type=_get(data, "last_type", str, where),
            count=_get(data, "count", int, where),
            type_counts=dict(counts),
            user_id=_optional(data, "user_id", where),
            app_version=_optional(data, "app_version", where),
            closed=closed,
            **added,
        )


@dataclass(slots=True)
class MachineState:
    machine_id: str
    newest_ts: int = -1
    # Stream clock when the machine's last event arrived: idleness is measured from here.
    arrival_clock: int = -1
    # Heap of records not yet released.
    pending: list[Record] = field(default_factory=list)
    last_key: tuple[int, str] | None = None
    session: OpenSession | None = None
    # event_id -> timestamp, for dedupe within the horizon.
    seen: dict[str, int] = field(default_factory=dict)
    # When to prune ``seen`` next: bookkeeping, not state (not serialised, not compared).
    prune_at: int = field(default=PRUNE_FLOOR, compare=False)
    sessions: int = 0  # sessions the machine has started: its last session's number

    @property
    def anchor(self) -> int:
        return rules.anchor(self.newest_ts, self.arrival_clock)

    def copy(self, resolve: Callable[[Any], Event] | None = None) -> MachineState:
        """A copy sharing nothing that changes with this one; its pending payloads are event dicts.

        ``resolve`` turns a pending record's payload into its event dict (without it, the payload
        is one). The pending records come sorted (a sorted list is a heap), so equal states compare
        equal whatever order their heaps were in.
        """
        pending = sorted(self.pending, key=_order)
        return MachineState(
            machine_id=self.machine_id,
            newest_ts=self.newest_ts,
            arrival_clock=self.arrival_clock,
            # The record's fields are the event's: only the event is copied.
            pending=[(*r[:PAYLOAD], _bare(resolve(r[PAYLOAD]) if resolve else r[PAYLOAD])) for r in pending],
            last_key=self.last_key,
            session=self.session.copy() if self.session else None,
            seen=dict(self.seen),
            prune_at=_prune_at(self.seen),
            sessions=self.sessions,
        )

    def to_dict(self, resolve: Callable[[Any], Event] | None = None) -> dict[str, Any]:
        """Plain values; ``resolve`` turns a pending record's payload into its event dict."""
        pending = sorted(self.pending, key=_order)
        return {
            "machine_id": self.machine_id,
            "newest_ts": self.newest_ts,
            "arrival_clock": self.arrival_clock,
            "pending": [_stored_event(r, resolve(r[PAYLOAD]) if resolve else r[PAYLOAD]) for r in pending],
            "last_key": list(self.last_key) if self.last_key else None,
            "session": self.session.to_dict() if self.session else None,
            "seen": dict(self.seen),
            "sessions": self.sessions,
        }

    @classmethod
    def from_dict(cls, data: Any, version: int | None = None) -> MachineState:
        """The state ``data`` holds. It keeps ``data``'s event dicts and ``seen`` (no copy: reading
        a large state twice over would cost), so ``data`` must not change afterwards."""
        _check(isinstance(data, dict), "machine", "must be an object")
        if version is None:  # a machine kept on its own (an AWS item): version 1 has no "sessions"
            version = SNAPSHOT_VERSION if "sessions" in data else 1
        machine_id = _get(data, "machine_id", str, "machine")
        where = f"machine {machine_id!r}"
        pending = _records(_get(data, "pending", list, where))
        if pending is None:
            raise SnapshotError(f"{where}: every 'pending' entry must be an event object")
        last_key = _present(data, "last_key", where)
        is_key = isinstance(last_key, list) and len(last_key) == 2 and _is_int(last_key[0]) and type(last_key[1]) is str
        _check(last_key is None or is_key, where, "'last_key' must be [timestamp, event_id] or null")
        seen = _get(data, "seen", dict, where)
        _check(_all_ints(seen.values()), where, "'seen' must map event ids to timestamps")
        session = _present(data, "session", where)
        try:
            open_session = None if session is None else OpenSession.from_dict(session, version)
        except SnapshotError as exc:
            raise SnapshotError(f"{where}: {exc}") from None
        if version >= 2:
            sessions = _get(data, "sessions", int, where)
            _check(open_session is None or open_session.number <= sessions, where, "a session numbered past 'sessions'")
        else:
            sessions = 0 if open_session is None else 1
        return cls(
            machine_id=machine_id,
            newest_ts=_get(data, "newest_ts", int, where),
            arrival_clock=_get(data, "arrival_clock", int, where),
            pending=sorted(pending, key=_order),  # sorted: a heap
            last_key=(last_key[0], last_key[1]) if last_key else None,
            session=open_session,
            seen=seen,
            prune_at=_prune_at(seen),
            sessions=sessions,
        )


@dataclass(frozen=True, slots=True)
class StreamClock:
    """The stream clock: the newest timestamp reached by at least ``clock_quorum`` machines.

    ``leaders`` holds the newest timestamps of the ``clock_quorum`` most advanced machines, so one
    machine with a clock in the future cannot close everyone's sessions. A value: each change
    gives a new clock (a few entries, once per batch), so a :class:`Snapshot` can hold it as it is.
    Serialised as the two keys ``clock`` and ``leaders``, which the containers (a snapshot, an AWS
    shard item) keep beside their own keys.
    """

    time: int = -1
    leaders: Mapping[str, int] = field(default_factory=dict)

    def advanced(self, newest: Iterable[tuple[str, int]], quorum: int) -> StreamClock:
        """After a batch: ``newest`` gives (machine_id, newest timestamp) of each machine it touched."""
        leaders = dict(self.leaders)
        for machine_id, newest_ts in newest:
            # min(leaders.values()) is only read when the leaders are full.
            if machine_id in leaders or len(leaders) < quorum or newest_ts > min(leaders.values()):
                leaders[machine_id] = newest_ts
                if len(leaders) > quorum:
                    del leaders[min(leaders, key=leaders.__getitem__)]
        time = max(self.time, min(leaders.values())) if len(leaders) >= quorum else self.time
        return StreamClock(time, leaders)

    @classmethod
    def merged(cls, clocks: Iterable[StreamClock], quorum: int) -> StreamClock:
        """The clock of several streams read as one (a stream's shards): the newest time any of them
        reached, or the time the most advanced machines of all of them reached together, whichever
        is later. A machine's newest timestamp is among its own stream's leaders when it is among
        the ``quorum`` most advanced of all, so the leaders are all that is needed."""
        time = -1
        leaders: dict[str, int] = {}
        for clock in clocks:
            time = max(time, clock.time)
            for machine_id, newest_ts in clock.leaders.items():
                leaders[machine_id] = max(newest_ts, leaders.get(machine_id, newest_ts))
        return cls(time).advanced(leaders.items(), quorum)

    def without(self, machine_id: str) -> StreamClock:
        """A machine the sessionizer forgot leaves the leaders (the clock itself never goes back)."""
        if machine_id not in self.leaders:
            return self
        return StreamClock(self.time, {m: ts for m, ts in self.leaders.items() if m != machine_id})

    def to_dict(self) -> dict[str, Any]:
        return {"clock": self.time, "leaders": dict(self.leaders)}

    @classmethod
    def from_dict(cls, data: Any) -> StreamClock:
        """Reads the ``clock`` and ``leaders`` keys of ``data`` (other keys are the container's)."""
        where = "stream clock"
        _check(isinstance(data, dict), where, "must be an object")
        leaders = _get(data, "leaders", dict, where)
        _check(_all_ints(leaders.values()), where, "'leaders' must map machine ids to timestamps")
        return cls(_get(data, "clock", int, where), dict(leaders))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A sessionizer's whole state at one moment: copies, sharing nothing with the running one."""

    clock: StreamClock = field(default_factory=StreamClock)
    machines: tuple[MachineState, ...] = ()
    # Machines whose state was dropped -> the sessions each had started (see the module's doc).
    forgotten: Mapping[str, int] = field(default_factory=dict)

    def pending_events(self) -> int:
        """Events waiting in reorder buffers."""
        return sum(len(machine.pending) for machine in self.machines)

    def open_sessions(self) -> tuple[int, int]:
        """(sessions still open, events placed in them so far)."""
        sessions = [m.session for m in self.machines if m.session is not None and not m.session.closed]
        return len(sessions), sum(session.count for session in sessions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            **self.clock.to_dict(),
            "machines": [machine.to_dict() for machine in self.machines],
            "forgotten": dict(self.forgotten),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Snapshot:
        _check(isinstance(data, dict), "snapshot", "must be an object")
        version = data.get("version", 1)  # absent: written before the format had a version
        if version not in READABLE_VERSIONS:
            raise SnapshotError(
                f"snapshot: format version {version!r}, and this sessionflow reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))} only"
            )
        machines = _get(data, "machines", list, "snapshot")
        forgotten = _get(data, "forgotten", dict, "snapshot") if version >= 2 else {}
        _check(_all_ints(forgotten.values()), "snapshot", "'forgotten' must map machine ids to session counts")
        return cls(
            StreamClock.from_dict(data),
            tuple(MachineState.from_dict(m, version) for m in machines),
            dict(forgotten),
        )

    @classmethod
    def of(cls, value: Snapshot | Mapping[str, Any]) -> Snapshot:
        """``value`` as it is, or read from its dict (as a caller holding a snapshot's dict has it)."""
        return value if isinstance(value, Snapshot) else cls.from_dict(dict(value))


_order = itemgetter(TS, EVENT_ID)  # a record's place in the reorder heap
_KEY_TYPES = {(int, str, str, str)}  # timestamp, event_id, machine_id, event_type


def _prune_at(seen: dict[str, int]) -> int:
    return max(PRUNE_FLOOR, 2 * len(seen))


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is not a timestamp


def _all_ints(values: Iterable[Any]) -> bool:
    return set(map(type, values)) <= _INT  # bool is not a timestamp: its type is not int


_INT = {int}


def _records(events: list[Any]) -> list[Record] | None:
    """The events' records; None unless each is an event dict (checked in bulk: this is per batch in AWS)."""
    if not set(map(type, events)) <= _DICT:
        return None
    try:
        records = list(map(_stored_record, events))
    except KeyError:
        return None
    return records if {(type(r[0]), type(r[1]), type(r[2]), type(r[3])) for r in records} <= _KEY_TYPES else None


_DICT = {dict}


def _check(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise SnapshotError(f"{where}: {problem}")


def _get(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = _present(data, key, where)
    if type(value) is not kind:
        raise SnapshotError(f"{where}: {key!r} must be {_KINDS[kind]}, not {type(value).__name__}")
    return value


def _present(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise SnapshotError(f"{where}: {key!r} is missing")
    return data[key]


def _optional(data: dict[str, Any], key: str, where: str) -> str | None:
    value = _present(data, key, where)
    if value is not None and type(value) is not str:
        raise SnapshotError(f"{where}: {key!r} must be a string or null, not {type(value).__name__}")
    return value


_KINDS = {int: "an integer", str: "a string", list: "a list", dict: "an object"}
