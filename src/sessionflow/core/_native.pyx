# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, auto_pickle=False
"""The sessionizer compiled, with native data structures: the embedded runner's hot loop.

The same loops as :class:`sessionflow.core.sessionizer.Sessionizer`, in the same order, and not one
rule of its own: every decision (duplicate, late, released from the buffer, new session, idle and
retention deadlines, the summary) is a call to :mod:`sessionflow.core.rules`, cimported through
``rules.pxd`` and called as a C function. What differs is how state is held (``_state.pyx``):

* a machine's reorder buffer is a C array heap of :c:type:`Rec` structs, not a list of tuples; so
  is the heap of idle deadlines;
* a runtime's block comes in through :meth:`NativeSessionizer._process` with a :class:`Placer`:
  its rows are placed by the Placer's C methods, with no Python ``release`` call and no Python
  object per event (the local runtime's Arrow blocks: ``runtimes/local/_blocks.pyx``);
* closed sessions can be collected as columns (:meth:`NativeSessionizer.collect_sessions`) for one
  table per block, instead of a summary dict each.

Snapshots are the pure sessionizer's values (:class:`~sessionflow.core.snapshot.Snapshot`), so a
state written by one restores in the other.
``tests/core/test_native.py`` holds the two equal on random streams (duplicates, late events,
bots, silent machines, snapshots in the middle).
"""

from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_Compare
from libc.stdint cimport int64_t

from sessionflow.core cimport rules
from sessionflow.core._state cimport (
    PRUNE_FLOOR, Deadlines, NativeMachine, NativeSession, Rec, rec_clear, rec_hold,
)

from sessionflow.core.ids import session_id as _session_id
from sessionflow.core.rules import NO_LIMIT, SESSION_VALUES
from sessionflow.core.snapshot import MachineState, OpenSession, Snapshot, StreamClock

# take_sessions(): rules.session_values as columns, event_type_counts (the last) flattened in three lists.
_SCALARS = len(SESSION_VALUES) - 1
SESSION_COLUMN_NAMES = (*SESSION_VALUES[:_SCALARS], "type_lengths", "type_keys", "type_counts")


cdef class Placer:
    """Where a block's rows go (declared in ``_native.pxd``): a runtime's block format subclasses it."""

    cdef int place(self, Py_ssize_t row, object session_id, Py_ssize_t seq, int64_t since) except -1:
        """Row ``row`` is event ``seq`` of ``session_id``, ``since`` ms after the one before (-1: first)."""
        raise NotImplementedError

    cdef int late(self, Py_ssize_t row) except -1:
        raise NotImplementedError

    cdef object user_id(self, Py_ssize_t row):
        raise NotImplementedError

    cdef object app_version(self, Py_ssize_t row):
        raise NotImplementedError

    cdef object os(self, Py_ssize_t row):
        raise NotImplementedError

    cdef object document_id(self, Py_ssize_t row):
        raise NotImplementedError


cdef class NativeSessionizer:
    """:class:`~sessionflow.core.sessionizer.Sessionizer`, compiled. Same methods, same results."""

    def __init__(self, config, clock=-1):
        self.config = config
        self.clock = clock
        self.machines = {}
        self.forgotten = {}
        self._deadlines = Deadlines()
        self._leaders = {}
        self._touched = set()
        self._timeout = config.timeout_ms
        self._lateness = config.allowed_lateness_ms
        self._horizon = config.dedupe_horizon_ms
        limit = config.max_session_duration_ms
        self._max_duration = NO_LIMIT if limit is None else limit
        self._opening = frozenset(config.opening_events)
        self._arrivals = 0
        self._session_columns = None

    # -- the hot path -------------------------------------------------------------------------

    def process(self, events, out):
        for event in events:
            self._process(
                event["timestamp"], event["event_id"], event["machine_id"], event["event_type"],
                event.get("user_id"), event.get("app_version"), event.get("os"), event.get("document_id"),
                event.get("arrived_late") is True, event, -1, out,
            )

    def process_records(self, records, out):
        """Records as the pure sessionizer takes them; their payloads go to ``out.release``."""
        for record in records:
            self._process(
                record[0], record[1], record[2], record[3], record[4], record[5], record[6], record[7], record[8],
                record[9], -1, out,
            )

    cdef int _process(self, object ts_obj, object event_id, object machine_id, object event_type,
                      object user_id, object app_version, object os, object document_id, bint arrived_late,
                      object payload, Py_ssize_t row, object out) except -1:
        cdef int64_t ts = ts_obj
        cdef NativeMachine state
        cdef NativeSession session
        cdef object found = self.machines.get(machine_id)
        cdef object twin
        cdef int c = 1
        cdef Rec rec
        if found is None:
            state = NativeMachine(machine_id)
            state.sessions = self.forgotten.pop(machine_id, 0)
            self.machines[machine_id] = state
        else:
            state = <NativeMachine>found
        seen = state.seen
        # The horizon is checked here, not only when pruning, so when pruning runs changes nothing.
        twin = seen.get(event_id)
        if twin is not None and rules.is_duplicate(<int64_t>twin, state.newest_ts, self._horizon):
            out.duplicate(payload if row < 0 else (payload, row))
            return 0
        seen[event_id] = ts_obj
        self._touched.add(machine_id)
        state.arrival_clock = self.clock
        if state.has_last:
            if ts == state.last_ts:
                c = PyUnicode_Compare(event_id, state.last_id)
                if c == 0:  # the very event placed last, whatever the horizon says
                    out.duplicate(payload if row < 0 else (payload, row))
                    return 0
            else:
                c = -1 if ts < state.last_ts else 1
        if not arrived_late and rules.arrived_late(ts, state.newest_ts):
            arrived_late = True
        if state.has_last:
            session = state.session
            if rules.is_late(c < 0, session is not None and session.closed and self._joins(session, ts, event_type)):
                if row >= 0:
                    (<Placer>payload).late(row)
                else:
                    out.release(payload, None, None, None, arrived_late)
                return 0
        if ts > state.newest_ts:
            state.newest_ts = ts
        rec.ts = ts
        rec.arrival = self._arrivals
        self._arrivals += 1
        rec.ts_obj = <PyObject*>ts_obj
        rec.event_id = <PyObject*>event_id
        rec.event_type = <PyObject*>event_type
        rec.user_id = <PyObject*>user_id
        rec.app_version = <PyObject*>app_version
        rec.os = <PyObject*>os
        rec.document_id = <PyObject*>document_id
        rec.payload = <PyObject*>payload
        rec.row = row
        rec.arrived_late = arrived_late
        if state.size == 0 and rules.releasable(ts, state.newest_ts, self._lateness):
            # Already old enough: no need to buffer it (the references stay borrowed).
            self._release(state, &rec, out)
            return 0
        rec_hold(&rec)
        state.push(&rec)
        while state.size and rules.releasable(state.heap[0].ts, state.newest_ts, self._lateness):
            self._release_first(state, out)
        return 0

    cdef int _release_first(self, NativeMachine state, object out) except -1:
        """Releases the earliest buffered record and drops the references the heap held."""
        cdef Rec rec
        state.pop(&rec)
        try:
            self._release(state, &rec, out)
        finally:
            rec_clear(&rec)
        return 0

    cdef inline bint _joins(self, NativeSession session, int64_t ts, object event_type) except -1:
        """Would an event at ``ts``, coming right after the session's last event, stay in it?"""
        return not rules.starts_session(
            ts - session.last_ts, ts - session.start_ts, event_type, self._opening, self._timeout, self._max_duration
        )

    cdef int _release(self, NativeMachine state, Rec* rec, object out) except -1:
        cdef int64_t ts = rec.ts
        cdef object event_type = <object>rec.event_type
        cdef NativeSession session = state.session
        cdef object since
        cdef int64_t previous
        if session is None or session.closed or not self._joins(session, ts, event_type):
            if session is not None and not session.closed:
                session.close_reason = rules.close_reason(
                    ts - session.last_ts, ts - session.start_ts, event_type, self._opening, self._timeout,
                    self._max_duration,
                )
                self._emit_session(state.machine_id, session, out)
            state.sessions += 1
            session = NativeSession.__new__(NativeSession)
            session.session_id = _session_id(state.machine_id, <object>rec.ts_obj, <object>rec.event_id)
            session.start_ts = ts
            session.last_ts = ts
            session.first_type = event_type
            session.last_type = event_type
            session.count = 0
            session.type_counts = {}
            session.user_id = None
            session.app_version = None
            session.closed = False
            session.os = None
            session.number = state.sessions
            session.documents = set()
            session.late_placed = 0
            session.close_reason = None
            state.session = session
            since = None
            previous = ts + 1  # no previous event: -1 for a Placer
        else:
            previous = session.last_ts
            since = ts - previous
        session.count += 1
        session.last_ts = ts
        session.last_type = event_type
        counts = session.type_counts
        counts[event_type] = counts.get(event_type, 0) + 1
        if session.user_id is None:
            session.user_id = (<Placer>rec.payload).user_id(rec.row) if rec.row >= 0 else <object>rec.user_id
        if session.app_version is None:
            session.app_version = (
                (<Placer>rec.payload).app_version(rec.row) if rec.row >= 0 else <object>rec.app_version
            )
        if session.os is None:
            session.os = (<Placer>rec.payload).os(rec.row) if rec.row >= 0 else <object>rec.os
        document = (<Placer>rec.payload).document_id(rec.row) if rec.row >= 0 else <object>rec.document_id
        if document is not None:
            session.documents.add(document)
        if rec.arrived_late:
            session.late_placed += 1
        state.has_last = True
        state.last_ts = ts
        state.last_id = <object>rec.event_id
        if rec.row >= 0:
            (<Placer>rec.payload).place(rec.row, session.session_id, session.count, ts - previous)
        else:
            out.release(<object>rec.payload, session.session_id, session.count, since, rec.arrived_late)
        return 0

    # -- closed sessions ------------------------------------------------------------------------------

    def collect_sessions(self):
        """From now on, keep closed sessions as columns for :meth:`take_sessions` instead of handing
        each to ``out.session`` as a dict: the embedded runner turns them into Arrow at once."""
        if self._session_columns is None:
            self._session_columns = [[] for _ in SESSION_COLUMN_NAMES]

    def take_sessions(self):
        """The sessions closed since the last call, as ``{column: list}`` (see ``SESSION_COLUMN_NAMES``).

        ``event_type_counts`` is two lists: each session's number of types, then the sorted
        ``(type, count)`` pairs of every session one after the other, as ``type_keys``/``type_counts``.
        """
        if self._session_columns is None:  # not collecting: every session went to out.session
            return dict(zip(SESSION_COLUMN_NAMES, [[] for _ in SESSION_COLUMN_NAMES]))
        columns = self._session_columns
        self._session_columns = [[] for _ in SESSION_COLUMN_NAMES]
        return dict(zip(SESSION_COLUMN_NAMES, columns))

    cdef int _emit_session(self, object machine_id, NativeSession session, object out) except -1:
        cdef list columns = self._session_columns
        cdef Py_ssize_t i
        cdef tuple values = rules.session_values(
            machine_id, session.session_id, session.start_ts, session.last_ts, session.count,
            session.first_type, session.last_type, session.type_counts, session.user_id, session.app_version,
            session.os, session.number, len(session.documents), session.late_placed, session.close_reason,
        )
        if columns is None:
            out.session(rules.summary(values))
            return 0
        for i in range(_SCALARS):
            (<list>columns[i]).append(values[i])
        pairs = values[_SCALARS]
        (<list>columns[_SCALARS]).append(len(pairs))
        for key, value in pairs:
            (<list>columns[_SCALARS + 1]).append(key)
            (<list>columns[_SCALARS + 2]).append(value)
        return 0

    # -- per batch: the stream clock, idle machines, dedupe horizon ---------------------------------

    def end_batch(self, out):
        cdef NativeMachine state
        cdef dict leaders = self._leaders
        cdef Py_ssize_t quorum = self.config.clock_quorum
        cdef int64_t idle = self.config.idle_close_ms
        cdef bint full = len(leaders) >= quorum
        if full:
            self._leader_floor = min(leaders.values())
        for machine_id in self._touched:
            state = self.machines[machine_id]
            if len(state.seen) >= state.prune_at:
                self._prune_seen(state)
            # As the pure sessionizer: min(leaders.values()) is only read when the dict is full.
            if not full or state.newest_ts > self._leader_floor or machine_id in leaders:
                leaders[machine_id] = state.newest_ts
                if len(leaders) > quorum:
                    del leaders[min(leaders, key=leaders.__getitem__)]
                full = len(leaders) >= quorum
                if full:
                    self._leader_floor = min(leaders.values())
            self._deadlines.push(rules.idle_deadline(rules.anchor(state.newest_ts, state.arrival_clock), idle), machine_id)
        if len(leaders) >= quorum:
            self.clock = max(self.clock, min(leaders.values()))
        self._touched.clear()
        self._close_idle(out)

    cdef int _close_idle(self, object out) except -1:
        cdef NativeMachine state
        cdef int64_t anchor, forget_at
        cdef int64_t idle = self.config.idle_close_ms
        cdef int64_t retention = self.config.retention_ms
        cdef Deadlines deadlines = self._deadlines
        while deadlines.size and rules.is_past(self.clock, deadlines.heap[0].at):
            machine_id = deadlines.pop()
            found = self.machines.get(machine_id)
            if found is None:
                continue
            state = <NativeMachine>found
            anchor = rules.anchor(state.newest_ts, state.arrival_clock)
            if not rules.is_past(self.clock, rules.idle_deadline(anchor, idle)):
                continue  # it spoke again since; a newer deadline is queued
            self._drain(state, out, self.clock)
            forget_at = rules.retention_deadline(anchor, retention)
            if rules.is_past(self.clock, forget_at):
                del self.machines[machine_id]
                self.forgotten[machine_id] = state.sessions
                self._leaders.pop(machine_id, None)
            else:
                deadlines.push(forget_at, machine_id)
        return 0

    cdef int _drain(self, NativeMachine state, object out, int64_t clock) except -1:
        while state.size:
            self._release_first(state, out)
        session = state.session
        if session is not None and not session.closed:
            session.close_reason = rules.end_reason(clock, session.last_ts, self._timeout)
            self._emit_session(state.machine_id, session, out)
            session.closed = True
        return 0

    cdef int _prune_seen(self, NativeMachine state) except -1:
        cdef int64_t newest = state.newest_ts, horizon = self._horizon
        state.seen = {
            event_id: ts for event_id, ts in state.seen.items() if rules.is_duplicate(ts, newest, horizon)
        }
        state.prune_at = max(PRUNE_FLOOR, 2 * len(state.seen))
        return 0

    def flush(self, out, clock=None):
        """End of input: release every buffered event, close every session, forget every machine
        (``clock``: see :meth:`sessionflow.core.sessionizer.Sessionizer.flush`)."""
        cdef NativeMachine state
        cdef int64_t end = self.clock if clock is None else clock
        for state in self.machines.values():
            self._drain(state, out, end)
            self.forgotten[state.machine_id] = state.sessions
        self.machines.clear()
        self._deadlines.clear()
        self._leaders.clear()
        self._touched.clear()

    # -- state --------------------------------------------------------------------------------------

    def pending_count(self):
        """Records waiting in reorder buffers."""
        cdef NativeMachine state
        cdef Py_ssize_t total = 0
        for state in self.machines.values():
            total += state.size
        return total

    def snapshot(self, resolve=None):
        """All state, as copies: the :class:`~sessionflow.core.snapshot.Snapshot` the pure
        sessionizer's :meth:`~sessionflow.core.sessionizer.Sessionizer.snapshot` gives."""
        cdef NativeMachine state
        cdef list machines = []
        for state in self.machines.values():
            machines.append(_machine_state(state, resolve))
        return Snapshot(StreamClock(self.clock, dict(self._leaders)), tuple(machines), dict(self.forgotten))

    @classmethod
    def restore(cls, config, snapshot):
        """A sessionizer going on from ``snapshot`` (or its dict: see :meth:`Snapshot.of`), with
        copies of its events and maps: the snapshot stays as it was, whatever comes next."""
        cdef NativeSessionizer sessionizer
        cdef NativeMachine state
        cdef Rec rec
        snapshot = Snapshot.of(snapshot)
        sessionizer = cls(config, clock=snapshot.clock.time)
        sessionizer._leaders = dict(snapshot.clock.leaders)
        sessionizer.forgotten = dict(snapshot.forgotten)
        idle = config.idle_close_ms
        for machine in snapshot.machines:
            state = NativeMachine(machine.machine_id)
            state.newest_ts = machine.newest_ts
            state.arrival_clock = machine.arrival_clock
            state.sessions = machine.sessions
            # The records come sorted (MachineState keeps a sorted heap), so each push is O(1).
            for record in machine.pending:
                ts_obj, event_id, _, event_type, user_id, app_version, os, document_id, arrived_late, event = record
                event = dict(event)
                rec.ts = ts_obj
                rec.arrival = sessionizer._arrivals
                sessionizer._arrivals += 1
                rec.ts_obj = <PyObject*>ts_obj
                rec.event_id = <PyObject*>event_id
                rec.event_type = <PyObject*>event_type
                rec.user_id = <PyObject*>user_id
                rec.app_version = <PyObject*>app_version
                rec.os = <PyObject*>os
                rec.document_id = <PyObject*>document_id
                rec.arrived_late = arrived_late
                rec.payload = <PyObject*>event
                rec.row = -1
                rec_hold(&rec)
                state.push(&rec)
            if machine.last_key is not None:
                state.has_last = True
                state.last_ts, state.last_id = machine.last_key
            state.session = _native_session(machine.session) if machine.session is not None else None
            state.seen = dict(machine.seen)
            state.prune_at = max(PRUNE_FLOOR, 2 * len(state.seen))
            sessionizer.machines[state.machine_id] = state
            anchor = rules.anchor(state.newest_ts, state.arrival_clock)
            sessionizer._deadlines.push(rules.idle_deadline(anchor, idle), state.machine_id)
        return sessionizer


# -- snapshots: the pure state's values from the C layout, and back ---------------------------------


cdef object _machine_state(NativeMachine state, object resolve):
    """The machine's pure :class:`MachineState`, as :meth:`MachineState.copy` makes it: pending
    records sorted (a sorted list is a heap), each payload a copied event dict (``resolve`` turns
    a block's row into one)."""
    cdef Py_ssize_t i
    cdef Rec* r
    cdef list order = []
    cdef list pending = []
    cdef NativeSession session = state.session
    for i in range(state.size):
        r = &state.heap[i]
        order.append((r.ts, <object>r.event_id, r.arrival, i))
    order.sort()
    machine_id = state.machine_id
    for _, _, _, i in order:
        r = &state.heap[i]
        if r.row >= 0:  # a block's row: its user_id, app_version, os and document are the block's (see _process)
            payload = (<object>r.payload, r.row)
            user_id = (<Placer>r.payload).user_id(r.row)
            app_version = (<Placer>r.payload).app_version(r.row)
            os = (<Placer>r.payload).os(r.row)
            document_id = (<Placer>r.payload).document_id(r.row)
        else:
            payload = <object>r.payload
            user_id = <object>r.user_id
            app_version = <object>r.app_version
            os = <object>r.os
            document_id = <object>r.document_id
        event = dict(resolve(payload) if resolve is not None else payload)
        event.pop("arrived_late", None)  # the record's (see snapshot._bare)
        record = (
            <object>r.ts_obj, <object>r.event_id, machine_id, <object>r.event_type, user_id, app_version, os,
            document_id, r.arrived_late, event,
        )
        pending.append(record)
    seen = dict(state.seen)
    return MachineState(
        machine_id=machine_id,
        newest_ts=state.newest_ts,
        arrival_clock=state.arrival_clock,
        pending=pending,
        last_key=(state.last_ts, state.last_id) if state.has_last else None,
        session=None if session is None else OpenSession(
            session_id=session.session_id,
            start_ts=session.start_ts,
            last_ts=session.last_ts,
            first_type=session.first_type,
            last_type=session.last_type,
            count=session.count,
            type_counts=dict(session.type_counts),
            user_id=session.user_id,
            app_version=session.app_version,
            closed=session.closed,
            os=session.os,
            number=session.number,
            documents=set(session.documents),
            late_placed=session.late_placed,
            close_reason=session.close_reason,
        ),
        seen=seen,
        prune_at=max(PRUNE_FLOOR, 2 * len(seen)),
        sessions=state.sessions,
    )


cdef NativeSession _native_session(object saved):
    """A pure :class:`OpenSession`'s values, with a copy of its type counts."""
    cdef NativeSession session = NativeSession.__new__(NativeSession)
    session.session_id = saved.session_id
    session.start_ts = saved.start_ts
    session.last_ts = saved.last_ts
    session.first_type = saved.first_type
    session.last_type = saved.last_type
    session.count = saved.count
    session.type_counts = dict(saved.type_counts)
    session.user_id = saved.user_id
    session.app_version = saved.app_version
    session.closed = saved.closed
    session.os = saved.os
    session.number = saved.number
    session.documents = set(saved.documents)
    session.late_placed = saved.late_placed
    session.close_reason = saved.close_reason
    return session
