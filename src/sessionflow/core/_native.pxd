# The compiled sessionizer (_native.pyx), for the Cython modules of a runtime that feed it blocks.

from libc.stdint cimport int64_t

from sessionflow.core._state cimport Deadlines, NativeMachine, NativeSession, Rec


cdef class Placer:
    # Where a block's rows go: a runtime's block format subclasses it (the local runtime's Arrow
    # blocks: runtimes/local/_blocks.pyx). The core knows rows only by number.
    cdef int place(self, Py_ssize_t row, object session_id, Py_ssize_t seq, int64_t since) except -1
    cdef int late(self, Py_ssize_t row) except -1
    # A row's user_id and app_version: asked only for a session's first values, not for every row.
    cdef object user_id(self, Py_ssize_t row)
    cdef object app_version(self, Py_ssize_t row)
    cdef object os(self, Py_ssize_t row)
    # A row's document_id: asked for every row placed.
    cdef object document_id(self, Py_ssize_t row)


cdef class NativeSessionizer:
    cdef readonly object config
    cdef public int64_t clock
    cdef public dict machines
    cdef public dict forgotten  # machines whose state was dropped -> sessions they had started
    cdef Deadlines _deadlines
    cdef dict _leaders
    cdef int64_t _leader_floor  # min(_leaders.values()) when _leaders is full
    cdef set _touched
    cdef int64_t _timeout
    cdef int64_t _lateness
    cdef int64_t _horizon
    cdef int64_t _max_duration  # rules.NO_LIMIT: none
    cdef object _opening
    cdef int64_t _arrivals
    cdef list _session_columns  # see collect_sessions(); None: summaries go to out.session

    # One record in arrival order. ``row >= 0``: row ``row`` of the block ``payload`` (a Placer),
    # whose user_id, app_version, os and document_id are read from it (pass None); ``row < 0``:
    # ``payload`` is the record's own, handed to ``out.release``. ``arrived_late``: what the runtime
    # found in arrival order (a runtime that sorts), else False.
    cdef int _process(self, object ts_obj, object event_id, object machine_id, object event_type,
                      object user_id, object app_version, object os, object document_id, bint arrived_late,
                      object payload, Py_ssize_t row, object out) except -1
    cdef int _release_first(self, NativeMachine state, object out) except -1
    cdef bint _joins(self, NativeSession session, int64_t ts, object event_type) except -1
    cdef int _release(self, NativeMachine state, Rec* rec, object out) except -1
    cdef int _emit_session(self, object machine_id, NativeSession session, object out) except -1
    cdef int _close_idle(self, object out) except -1
    cdef int _drain(self, NativeMachine state, object out, int64_t clock) except -1
    cdef int _prune_seen(self, NativeMachine state) except -1
