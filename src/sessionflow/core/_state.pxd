# The compiled sessionizer's state layout (_state.pyx): a machine's reorder heap of C structs, its
# open session, the heap of idle deadlines. The loops that use them are in _native.pyx.

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_Compare
from libc.stdint cimport int64_t

# The smallest dedupe window worth pruning (prune_at never goes below it): when to prune changes
# nothing but speed, since a duplicate is judged by its horizon (rules.is_duplicate) either way.
cdef enum:
    PRUNE_FLOOR = 256


cdef struct Rec:
    int64_t ts
    int64_t arrival  # tie-break after (ts, event_id), which never tie in a valid stream
    PyObject* ts_obj
    PyObject* event_id
    PyObject* event_type
    PyObject* user_id  # None for a block's row: its Placer reads it, and only for a session's first
    PyObject* app_version
    PyObject* os  # None for a block's row, as user_id
    PyObject* document_id  # None for a block's row: its Placer reads it when the row is placed
    PyObject* payload  # a Placer (a block), or the record's opaque payload when row < 0
    Py_ssize_t row
    bint arrived_late


cdef inline bint rec_less(Rec* a, Rec* b) except -1:
    """The reorder order: (timestamp, event_id), then arrival."""
    if a.ts != b.ts:
        return a.ts < b.ts
    cdef int c = PyUnicode_Compare(<object>a.event_id, <object>b.event_id)
    if c != 0:
        return c < 0
    return a.arrival < b.arrival


cdef inline void rec_hold(Rec* r) noexcept:
    """Takes a reference to each object of a record about to be kept in a heap."""
    Py_INCREF(<object>r.ts_obj)
    Py_INCREF(<object>r.event_id)
    Py_INCREF(<object>r.event_type)
    Py_INCREF(<object>r.user_id)
    Py_INCREF(<object>r.app_version)
    Py_INCREF(<object>r.os)
    Py_INCREF(<object>r.document_id)
    Py_INCREF(<object>r.payload)


cdef inline void rec_clear(Rec* r) noexcept:
    Py_XDECREF(r.ts_obj)
    Py_XDECREF(r.event_id)
    Py_XDECREF(r.event_type)
    Py_XDECREF(r.user_id)
    Py_XDECREF(r.app_version)
    Py_XDECREF(r.os)
    Py_XDECREF(r.document_id)
    Py_XDECREF(r.payload)


cdef class NativeSession:
    cdef public str session_id
    cdef public int64_t start_ts
    cdef public int64_t last_ts
    cdef public object first_type
    cdef public object last_type
    cdef public Py_ssize_t count
    cdef public dict type_counts
    cdef public object user_id
    cdef public object app_version
    cdef public bint closed
    cdef public object os
    cdef public int64_t number
    cdef public set documents
    cdef public int64_t late_placed
    cdef public object close_reason


cdef class NativeMachine:
    cdef readonly object machine_id
    cdef public int64_t newest_ts
    cdef public int64_t arrival_clock
    cdef Rec* heap
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity
    cdef bint has_last
    cdef int64_t last_ts
    cdef object last_id
    cdef public NativeSession session
    cdef public dict seen
    cdef Py_ssize_t prune_at
    cdef public int64_t sessions  # sessions started: the last one's number

    cdef int push(self, Rec* rec) except -1
    cdef int pop(self, Rec* out) except -1


cdef struct Due:
    int64_t at
    PyObject* machine_id


cdef class Deadlines:
    cdef Due* heap
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    cdef void clear(self) noexcept
    cdef int push(self, int64_t at, object machine_id) except -1
    cdef object pop(self)
