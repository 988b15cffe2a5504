# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, auto_pickle=False
"""The sessionizer compiled, with native data structures: the embedded runner's hot loop.

The same logic as :class:`sessionflow.core.sessionizer.Sessionizer`, rule for rule and in the same
order (read that module for the *why*); the differences are only in how state is held:

* a machine's reorder buffer is a C array heap of :c:type:`Rec` structs (timestamp as a C integer,
  references to the strings), not a list of tuples; so is the heap of idle deadlines;
* a block comes in as Arrow key columns (:meth:`NativeSessionizer.process_block`), and its rows are
  placed by writing their session columns into the C arrays of a :class:`Placements`, which become
  Arrow arrays at once: no Python ``release`` call and no Python object per event;
* closed sessions can be collected as columns (:meth:`NativeSessionizer.collect_sessions`) for one
  Arrow table per block, instead of a summary dict each.

Snapshots use the pure sessionizer's format, so a state file written by one restores in the other.
``tests/core/test_native.py`` holds the two equal on random streams (duplicates, late events,
bots, silent machines, snapshots in the middle).
"""

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.list cimport PyList_GET_ITEM
from cpython.long cimport PyLong_FromLongLong
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.unicode cimport PyUnicode_Compare, PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL

from sessionflow.core.ids import session_id as _session_id
from sessionflow.core.sessionizer import OpenSession as _OpenSession
from sessionflow.core.sessionizer import Sessionizer as _PureSessionizer

cdef Py_ssize_t PRUNE_FLOOR = 256
_summary = _PureSessionizer._summary
_open_session_to_dict = _OpenSession.to_dict
# take_sessions(): the summary's fields as columns (event_type_counts flattened in three lists).
SESSION_COLUMN_NAMES = (
    "session_id", "machine_id", "user_id", "start_ts", "end_ts", "duration_ms", "event_count",
    "first_event_type", "last_event_type", "type_lengths", "type_keys", "type_counts", "app_version",
)


cdef struct Rec:
    int64_t ts
    int64_t arrival  # tie-break after (ts, event_id), which never tie in a valid stream
    PyObject* ts_obj
    PyObject* event_id
    PyObject* event_type
    PyObject* user_id
    PyObject* app_version
    PyObject* payload  # a Placements block, or the record's opaque payload when row < 0
    Py_ssize_t row


cdef inline bint rec_less(Rec* a, Rec* b) except -1:
    if a.ts != b.ts:
        return a.ts < b.ts
    cdef int c = PyUnicode_Compare(<object>a.event_id, <object>b.event_id)
    if c != 0:
        return c < 0
    return a.arrival < b.arrival


cdef inline void rec_hold(Rec* r):
    """Takes a reference to each object of a record about to be kept in a heap."""
    Py_INCREF(<object>r.ts_obj)
    Py_INCREF(<object>r.event_id)
    Py_INCREF(<object>r.event_type)
    Py_INCREF(<object>r.user_id)
    Py_INCREF(<object>r.app_version)
    Py_INCREF(<object>r.payload)


cdef inline void rec_clear(Rec* r):
    Py_XDECREF(r.ts_obj)
    Py_XDECREF(r.event_id)
    Py_XDECREF(r.event_type)
    Py_XDECREF(r.user_id)
    Py_XDECREF(r.app_version)
    Py_XDECREF(r.payload)


cdef class Placements:
    """A block's session columns, filled row by row as the sessionizer places rows.

    ``remaining`` counts the rows not yet placed (nor handed to the emitter as duplicates). The
    columns are C arrays, turned into Arrow arrays without a Python object per row by
    :meth:`columns`.
    """

    cdef public object batch
    cdef public Py_ssize_t remaining
    cdef Py_ssize_t rows
    # The block's user_id and app_version (_Strings or None): read only for a session's first
    # values, so decoded only then, not for every row.
    cdef object users
    cdef object versions
    cdef int32_t* seqs  # 0: not placed (a duplicate, or still buffered); -1: late
    cdef int64_t* sinces  # -1: none (first event of its session)
    # Session ids are copied as UTF-8 when a row is placed, while the string is in the CPU's cache:
    # read back from a million scattered str objects, they cost more than the rest of the column.
    cdef char* text
    cdef Py_ssize_t text_size
    cdef Py_ssize_t text_capacity
    cdef int64_t* text_at  # where each row's id starts in ``text``
    cdef int32_t* text_len

    def __cinit__(self, batch):
        cdef Py_ssize_t rows = batch.num_rows
        self.batch = batch
        self.rows = rows
        self.remaining = rows
        self.seqs = <int32_t*>calloc(rows + 1, sizeof(int32_t))
        self.sinces = <int64_t*>calloc(rows + 1, sizeof(int64_t))
        self.text_at = <int64_t*>calloc(rows + 1, sizeof(int64_t))
        self.text_len = <int32_t*>calloc(rows + 1, sizeof(int32_t))
        self.text_capacity = 40 * rows + 64
        self.text = <char*>malloc(self.text_capacity)
        if not (self.seqs and self.sinces and self.text_at and self.text_len and self.text):
            raise MemoryError()

    def __dealloc__(self):
        free(self.seqs)
        free(self.sinces)
        free(self.text_at)
        free(self.text_len)
        free(self.text)

    cdef inline int place(self, Py_ssize_t row, object session_id, Py_ssize_t seq, int64_t since) except -1:
        cdef Py_ssize_t size
        if seq > 0x7FFFFFFF:  # session_seq is an int32 column, as pa.array(..., pa.int32()) would say
            raise OverflowError(f"session_seq {seq} does not fit the int32 column")
        cdef const char* utf8 = PyUnicode_AsUTF8AndSize(session_id, &size)
        cdef char* grown
        if self.text_size + size > self.text_capacity:
            self.text_capacity = 2 * (self.text_size + size)
            grown = <char*>realloc(self.text, self.text_capacity)
            if grown == NULL:
                raise MemoryError()
            self.text = grown
        memcpy(self.text + self.text_size, utf8, size)
        self.text_at[row] = self.text_size
        self.text_len[row] = <int32_t>size
        self.text_size += size
        self.seqs[row] = <int32_t>seq
        self.sinces[row] = since
        self.remaining -= 1
        return 0

    cdef inline void late(self, Py_ssize_t row):
        self.seqs[row] = -1
        self.remaining -= 1

    def placed(self, Py_ssize_t row):
        """``(session_id, seq, since)`` of a row; seq 0: not placed, None: late (for tests)."""
        if not 0 <= row < self.rows:
            raise IndexError(row)
        if self.seqs[row] == -1:
            return (None, None, None)
        if self.seqs[row] == 0:
            return (None, 0, None)
        since = None if self.sinces[row] < 0 else self.sinces[row]
        return (PyUnicode_DecodeUTF8(self.text + self.text_at[row], self.text_len[row], NULL), self.seqs[row], since)

    def columns(self):
        """Arrow arrays ``(session_id, session_seq, ms_since_prev, late)`` and the placed-row mask.

        The mask is None when every row is placed (or late), as it is for most blocks.
        """
        import pyarrow as pa

        cdef Py_ssize_t n = self.rows, i, total = 0, unplaced = 0, lates = 0
        cdef bytearray id_valid = bytearray((n + 7) // 8)
        cdef bytearray seq_valid = bytearray((n + 7) // 8)
        cdef bytearray since_valid = bytearray((n + 7) // 8)
        cdef bytearray late_bits = bytearray((n + 7) // 8)
        cdef bytearray placed_bits = bytearray((n + 7) // 8)
        cdef bytearray offsets = bytearray(4 * (n + 1))
        cdef bytearray seqs = bytearray(4 * n)
        cdef bytearray sinces = bytearray(8 * n)
        cdef unsigned char* idv = id_valid
        cdef unsigned char* sqv = seq_valid
        cdef unsigned char* snv = since_valid
        cdef unsigned char* lb = late_bits
        cdef unsigned char* pb = placed_bits
        cdef int32_t* offs = <int32_t*><char*>offsets
        cdef int32_t* seq_out = <int32_t*><char*>seqs
        cdef int64_t* since_out = <int64_t*><char*>sinces
        cdef int32_t seq
        cdef unsigned char bit
        for i in range(n):
            seq = self.seqs[i]
            bit = 1 << (i & 7)
            offs[i] = <int32_t>total
            if seq > 0:
                total += self.text_len[i]
                idv[i >> 3] |= bit
                sqv[i >> 3] |= bit
                pb[i >> 3] |= bit
                seq_out[i] = seq
                if self.sinces[i] >= 0:
                    snv[i >> 3] |= bit
                    since_out[i] = self.sinces[i]
            elif seq == -1:
                lb[i >> 3] |= bit
                pb[i >> 3] |= bit
                lates += 1
            else:
                unplaced += 1
        offs[n] = <int32_t>total
        if total > 0x7FFFFFFF:
            raise OverflowError("a block's session ids exceed 2 GiB")
        cdef bytearray data = bytearray(total)
        cdef char* out = data
        total = 0
        for i in range(n):
            if self.seqs[i] > 0:
                memcpy(out + total, self.text + self.text_at[i], self.text_len[i])
                total += self.text_len[i]
        placed_count = n - unplaced
        session_ids = pa.Array.from_buffers(
            pa.string(), n, [pa.py_buffer(id_valid), pa.py_buffer(offsets), pa.py_buffer(data)],
            null_count=unplaced + lates,
        )
        seq_array = pa.Array.from_buffers(
            pa.int32(), n, [pa.py_buffer(seq_valid), pa.py_buffer(seqs)], null_count=unplaced + lates
        )
        since_array = pa.Array.from_buffers(pa.int64(), n, [pa.py_buffer(since_valid), pa.py_buffer(sinces)])
        late_array = pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(late_bits)], null_count=0)
        mask = None
        if unplaced:
            mask = pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(placed_bits)], null_count=0)
        return session_ids, seq_array, since_array, late_array, mask


cdef class _Repeating:
    """Reads a dictionary-encoded string array: one str per distinct value, shared by its rows.

    Shared objects keep their hash, so the dict lookups of the hot loop do not hash each row anew.
    """

    cdef list values
    cdef Py_buffer view
    cdef bint has_view
    cdef const int32_t* indices
    cdef const unsigned char* valid
    cdef Py_buffer valid_view
    cdef bint has_valid
    cdef Py_ssize_t offset  # of the validity bitmap; ``indices`` already points at row 0

    def __cinit__(self, array):
        if not str(array.type).startswith("dictionary<values=string,"):
            raise TypeError(f"expected a dictionary-encoded string array, got {array.type}")
        cdef Py_ssize_t i, j, n = len(array), size = len(array.dictionary)
        indices = array.indices
        self.offset = indices.offset
        if str(indices.type) != "int32":
            raise ValueError("dictionary indices must be int32")
        self.values = array.dictionary.to_pylist()
        if n == 0:
            return
        valid, data = indices.buffers()
        PyObject_GetBuffer(data, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        if self.view.len < 4 * (self.offset + n):
            raise ValueError("the dictionary indices are shorter than the array")
        self.indices = (<const int32_t*>self.view.buf) + self.offset
        if valid is not None and indices.null_count:
            PyObject_GetBuffer(valid, &self.valid_view, PyBUF_SIMPLE)
            self.has_valid = True
            self.valid = <const unsigned char*>self.valid_view.buf
        for i in range(n):  # what the hot loop reads unchecked is checked once here
            j = i + self.offset
            if self.has_valid and not (self.valid[j >> 3] >> (j & 7)) & 1:
                continue
            if not 0 <= self.indices[i] < size:
                raise ValueError("a dictionary index is out of range")

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)
        if self.has_valid:
            PyBuffer_Release(&self.valid_view)

    cdef inline object get(self, Py_ssize_t i):
        cdef Py_ssize_t j = i + self.offset
        if self.has_valid and not (self.valid[j >> 3] >> (j & 7)) & 1:
            return None
        return <object>PyList_GET_ITEM(self.values, self.indices[i])


cdef class _Strings:
    """Reads a ``pa.string()`` array's buffers: values as str, without a list in between."""

    cdef object array
    cdef Py_buffer offsets_view
    cdef Py_buffer data_view
    cdef Py_buffer valid_view
    cdef bint has_offsets, has_data, has_valid
    cdef const int32_t* offsets
    cdef const char* data
    cdef const unsigned char* valid
    cdef Py_ssize_t offset
    cdef Py_ssize_t length

    def __cinit__(self, array):
        if str(array.type) != "string":
            raise TypeError(f"expected a string array, got {array.type}")
        self.array = array
        self.offset = array.offset
        self.length = len(array)
        valid, offsets, data = array.buffers()
        if offsets is None and self.length:
            raise ValueError("a string array without offsets")
        if offsets is not None:
            PyObject_GetBuffer(offsets, &self.offsets_view, PyBUF_SIMPLE)
            self.has_offsets = True
            if self.offsets_view.len < 4 * (self.offset + self.length + 1):
                raise ValueError("the string array's offsets are shorter than the array")
            self.offsets = <const int32_t*>self.offsets_view.buf
        if data is not None:
            PyObject_GetBuffer(data, &self.data_view, PyBUF_SIMPLE)
            self.has_data = True
            self.data = <const char*>self.data_view.buf
        if self.length and self.offsets[self.offset + self.length] > (self.data_view.len if self.has_data else 0):
            raise ValueError("the string array's offsets point past its data")
        if valid is not None and array.null_count:
            PyObject_GetBuffer(valid, &self.valid_view, PyBUF_SIMPLE)
            self.has_valid = True
            self.valid = <const unsigned char*>self.valid_view.buf

    def __dealloc__(self):
        if self.has_offsets:
            PyBuffer_Release(&self.offsets_view)
        if self.has_data:
            PyBuffer_Release(&self.data_view)
        if self.has_valid:
            PyBuffer_Release(&self.valid_view)

    cdef inline object get(self, Py_ssize_t i):
        cdef Py_ssize_t j = i + self.offset
        if self.has_valid and not (self.valid[j >> 3] >> (j & 7)) & 1:
            return None
        cdef int32_t start = self.offsets[j]
        return PyUnicode_DecodeUTF8(self.data + start, self.offsets[j + 1] - start, NULL)


cdef class NativeSession:
    """:class:`~sessionflow.core.sessionizer.OpenSession`, with C integers."""

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

    def to_dict(self):
        return _open_session_to_dict(self)  # the pure class's own: it reads the same attributes


cdef NativeSession session_from_dict(dict data):
    cdef NativeSession session = NativeSession.__new__(NativeSession)
    session.session_id = data["session_id"]
    session.start_ts = data["start_ts"]
    session.last_ts = data["last_ts"]
    session.first_type = data["first_type"]
    session.last_type = data["last_type"]
    session.count = data["count"]
    session.type_counts = dict(data["type_counts"])
    session.user_id = data["user_id"]
    session.app_version = data["app_version"]
    session.closed = data["closed"]
    return session


cdef class NativeMachine:
    """:class:`~sessionflow.core.sessionizer.MachineState`, its reorder heap a C array."""

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

    def __cinit__(self, machine_id):
        self.machine_id = machine_id
        self.newest_ts = -1
        self.arrival_clock = -1
        self.heap = NULL
        self.size = 0
        self.capacity = 0
        self.has_last = False
        self.session = None
        self.seen = {}
        self.prune_at = PRUNE_FLOOR

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.size):
            rec_clear(&self.heap[i])
        free(self.heap)

    @property
    def pending(self):
        """How many records wait in the reorder buffer (the pure state's ``len(pending)``)."""
        return self.size

    @property
    def anchor(self):
        return max(self.newest_ts, self.arrival_clock)

    cdef int push(self, Rec* rec) except -1:
        cdef Py_ssize_t i, parent
        cdef Rec* grown
        if self.size == self.capacity:
            self.capacity = 8 if self.capacity == 0 else 2 * self.capacity
            grown = <Rec*>realloc(self.heap, self.capacity * sizeof(Rec))
            if grown == NULL:
                raise MemoryError()
            self.heap = grown
        i = self.size
        self.size += 1
        while i > 0:
            parent = (i - 1) >> 1
            if not rec_less(rec, &self.heap[parent]):
                break
            self.heap[i] = self.heap[parent]
            i = parent
        self.heap[i] = rec[0]
        return 0

    cdef int pop(self, Rec* out) except -1:
        """Moves the smallest record (its references too) into ``out``."""
        cdef Py_ssize_t i = 0, child, n
        cdef Rec last
        out[0] = self.heap[0]
        self.size -= 1
        n = self.size
        if n == 0:
            return 0
        last = self.heap[n]
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and rec_less(&self.heap[child + 1], &self.heap[child]):
                child += 1
            if not rec_less(&self.heap[child], &last):
                break
            self.heap[i] = self.heap[child]
            i = child
        self.heap[i] = last
        return 0

    def to_dict(self, resolve=None):
        cdef Py_ssize_t i
        cdef list records = []
        cdef Rec* r
        for i in range(self.size):
            r = &self.heap[i]
            records.append((r.ts, <object>r.event_id, r.arrival, i))
        records.sort()
        pending = []
        for _, _, _, i in records:
            payload = payload_of(&self.heap[i])
            pending.append(resolve(payload) if resolve is not None else payload)
        return {
            "machine_id": self.machine_id,
            "newest_ts": self.newest_ts,
            "arrival_clock": self.arrival_clock,
            "pending": pending,
            "last_key": [self.last_ts, self.last_id] if self.has_last else None,
            "session": self.session.to_dict() if self.session is not None else None,
            "seen": dict(self.seen),
        }


cdef struct Due:
    int64_t at
    PyObject* machine_id


cdef inline bint due_less(Due* a, Due* b) except -1:
    if a.at != b.at:
        return a.at < b.at
    return PyUnicode_Compare(<object>a.machine_id, <object>b.machine_id) < 0


cdef class Deadlines:
    """The pure sessionizer's heap of ``(deadline, machine_id)``, with C integers: the same order."""

    cdef Due* heap
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    def __dealloc__(self):
        self.clear()
        free(self.heap)

    cdef void clear(self):
        cdef Py_ssize_t i
        for i in range(self.size):
            Py_XDECREF(self.heap[i].machine_id)
        self.size = 0

    cdef int push(self, int64_t at, object machine_id) except -1:
        cdef Py_ssize_t i, parent
        cdef Due* grown
        cdef Due due
        if self.size == self.capacity:
            self.capacity = 64 if self.capacity == 0 else 2 * self.capacity
            grown = <Due*>realloc(self.heap, self.capacity * sizeof(Due))
            if grown == NULL:
                raise MemoryError()
            self.heap = grown
        Py_INCREF(machine_id)
        due.at = at
        due.machine_id = <PyObject*>machine_id
        i = self.size
        self.size += 1
        while i > 0:
            parent = (i - 1) >> 1
            if not due_less(&due, &self.heap[parent]):
                break
            self.heap[i] = self.heap[parent]
            i = parent
        self.heap[i] = due
        return 0

    cdef object pop(self):
        """The machine of the earliest deadline (the caller reads ``heap[0].at`` first)."""
        cdef Py_ssize_t i = 0, child, n
        cdef Due last
        cdef object machine_id = <object>self.heap[0].machine_id  # a new reference...
        Py_XDECREF(self.heap[0].machine_id)  # ...so the heap's own is given up
        self.size -= 1
        n = self.size
        if n == 0:
            return machine_id
        last = self.heap[n]
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and due_less(&self.heap[child + 1], &self.heap[child]):
                child += 1
            if not due_less(&self.heap[child], &last):
                break
            self.heap[i] = self.heap[child]
            i = child
        self.heap[i] = last
        return machine_id


cdef object _LAZY = object()  # a block row's user_id/app_version: read from its Placements if needed


cdef inline object _read(Rec* rec, object column):
    return (<_Strings>column).get(rec.row) if column is not None else None


cdef inline object payload_of(Rec* r):
    if r.row >= 0:
        return (<object>r.payload, r.row)
    return <object>r.payload


cdef class NativeSessionizer:
    """:class:`~sessionflow.core.sessionizer.Sessionizer`, compiled. Same methods, same results."""

    cdef readonly object config
    cdef public int64_t clock
    cdef public dict machines
    cdef Deadlines _deadlines
    cdef dict _leaders
    cdef int64_t _leader_floor  # min(_leaders.values()) when _leaders is full
    cdef set _touched
    cdef int64_t _timeout
    cdef int64_t _lateness
    cdef int64_t _horizon
    cdef int64_t _max_duration
    cdef bint _has_max
    cdef object _opening
    cdef int64_t _arrivals
    cdef list _session_columns  # see collect_sessions(); None: summaries go to out.session

    def __init__(self, config, clock=-1):
        self.config = config
        self.clock = clock
        self.machines = {}
        self._deadlines = Deadlines()
        self._leaders = {}
        self._touched = set()
        self._timeout = config.timeout_ms
        self._lateness = config.allowed_lateness_ms
        self._horizon = config.dedupe_horizon_ms
        self._has_max = config.max_session_duration_ms is not None
        self._max_duration = config.max_session_duration_ms if self._has_max else 0
        self._opening = frozenset(config.opening_events)
        self._arrivals = 0
        self._session_columns = None

    # -- the hot path -------------------------------------------------------------------------

    def process(self, events, out):
        for event in events:
            self._process(
                event["timestamp"], event["event_id"], event["machine_id"], event["event_type"],
                event.get("user_id"), event.get("app_version"), event, -1, out,
            )

    def process_records(self, records, out):
        """Records as the pure sessionizer takes them; their payloads go to ``out.release``."""
        for record in records:
            self._process(record[0], record[1], record[2], record[3], record[4], record[5], record[6], -1, out)

    def process_block(self, timestamps, event_ids, machine_ids, event_types, user_ids, app_versions,
                      Placements placements, out):
        """One block's key columns as Arrow arrays, in arrival order: timestamps int64; event ids,
        user ids and app versions strings; machine ids and event types dictionary-encoded strings
        (user ids and app versions may be None: a column the events do not have).

        Row ``i`` is placed (or marked late) in ``placements``; a duplicate goes to
        ``out.duplicate`` as ``(placements, i)``.
        """
        cdef Py_ssize_t i, n = len(timestamps)
        cdef Py_buffer ts_view
        cdef const int64_t* ts
        cdef Py_ssize_t ts_offset = timestamps.offset
        cdef _Strings ids = _Strings(event_ids)
        cdef _Repeating mids = _Repeating(machine_ids)
        cdef _Repeating types = _Repeating(event_types)
        placements.users = _Strings(user_ids) if user_ids is not None else None
        placements.versions = _Strings(app_versions) if app_versions is not None else None
        for column in (event_ids, machine_ids, event_types, user_ids, app_versions):
            if column is not None and len(column) != n:
                raise ValueError("the key columns of a block differ in length")
        if placements.rows != n:
            raise ValueError("the placements are not the block's")
        if str(timestamps.type) != "int64":
            raise TypeError(f"expected int64 timestamps, got {timestamps.type}")
        if timestamps.null_count or event_ids.null_count or machine_ids.null_count or event_types.null_count:
            raise ValueError("a block's timestamps and ids cannot be null")
        if n == 0:
            return
        PyObject_GetBuffer(timestamps.buffers()[1], &ts_view, PyBUF_SIMPLE)
        try:
            if ts_view.len < 8 * (ts_offset + n):
                raise ValueError("the timestamp buffer is shorter than the array")
            ts = (<const int64_t*>ts_view.buf) + ts_offset
            for i in range(n):
                self._process(
                    PyLong_FromLongLong(ts[i]), ids.get(i), mids.get(i), types.get(i),
                    _LAZY, _LAZY,
                    placements, i, out,
                )
        finally:
            PyBuffer_Release(&ts_view)

    cdef int _process(self, object ts_obj, object event_id, object machine_id, object event_type,
                      object user_id, object app_version, object payload, Py_ssize_t row,
                      object out) except -1:
        cdef int64_t ts = ts_obj
        cdef NativeMachine state
        cdef NativeSession session
        cdef object found = self.machines.get(machine_id)
        cdef object twin
        cdef int64_t release_before
        cdef int c
        cdef Rec rec
        if found is None:
            state = NativeMachine(machine_id)
            self.machines[machine_id] = state
        else:
            state = <NativeMachine>found
        seen = state.seen
        # The horizon is checked here, not only when pruning, so when pruning runs changes nothing.
        twin = seen.get(event_id)
        if twin is not None and <int64_t>twin >= state.newest_ts - self._horizon:
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
            session = state.session
            # Late: it sorts before an event already placed, or it would extend a closed session.
            if c < 0 or (session is not None and session.closed and self._joins(session, ts, event_type)):
                if row >= 0:
                    (<Placements>payload).late(row)
                else:
                    out.release(payload, None, None, None)
                return 0
        if ts > state.newest_ts:
            state.newest_ts = ts
        release_before = state.newest_ts - self._lateness
        rec.ts = ts
        rec.arrival = self._arrivals
        self._arrivals += 1
        rec.ts_obj = <PyObject*>ts_obj
        rec.event_id = <PyObject*>event_id
        rec.event_type = <PyObject*>event_type
        rec.user_id = <PyObject*>user_id
        rec.app_version = <PyObject*>app_version
        rec.payload = <PyObject*>payload
        rec.row = row
        if ts < release_before and state.size == 0:
            # Already old enough: no need to buffer it (the references stay borrowed).
            self._release(state, &rec, out)
            return 0
        rec_hold(&rec)
        state.push(&rec)
        while state.size and state.heap[0].ts < release_before:
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
        if ts - session.last_ts > self._timeout or event_type in self._opening:
            return False
        return not self._has_max or ts - session.start_ts <= self._max_duration

    cdef int _release(self, NativeMachine state, Rec* rec, object out) except -1:
        cdef int64_t ts = rec.ts
        cdef object event_type = <object>rec.event_type
        cdef NativeSession session = state.session
        cdef object since
        cdef int64_t previous
        if session is None or session.closed or not self._joins(session, ts, event_type):
            if session is not None and not session.closed:
                self._emit_session(state.machine_id, session, out)
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
            state.session = session
            since = None
            previous = ts + 1  # no previous event: -1 in the block's column
        else:
            previous = session.last_ts
            since = ts - previous
        session.count += 1
        session.last_ts = ts
        session.last_type = event_type
        counts = session.type_counts
        counts[event_type] = counts.get(event_type, 0) + 1
        if session.user_id is None:
            session.user_id = <object>rec.user_id
            if session.user_id is _LAZY:
                session.user_id = _read(rec, (<Placements>rec.payload).users)
        if session.app_version is None:
            session.app_version = <object>rec.app_version
            if session.app_version is _LAZY:
                session.app_version = _read(rec, (<Placements>rec.payload).versions)
        state.has_last = True
        state.last_ts = ts
        state.last_id = <object>rec.event_id
        if rec.row >= 0:
            (<Placements>rec.payload).place(rec.row, session.session_id, session.count, ts - previous)
        else:
            out.release(<object>rec.payload, session.session_id, session.count, since)
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
        if columns is None:
            out.session(_summary(machine_id, session))
            return 0
        # Sorted by type, as the pure summary's dict(sorted(...)).
        pairs = sorted(session.type_counts.items())
        (<list>columns[0]).append(session.session_id)
        (<list>columns[1]).append(machine_id)
        (<list>columns[2]).append(session.user_id)
        (<list>columns[3]).append(session.start_ts)
        (<list>columns[4]).append(session.last_ts)
        (<list>columns[5]).append(session.last_ts - session.start_ts)
        (<list>columns[6]).append(session.count)
        (<list>columns[7]).append(session.first_type)
        (<list>columns[8]).append(session.last_type)
        (<list>columns[9]).append(len(pairs))
        for key, value in pairs:
            (<list>columns[10]).append(key)
            (<list>columns[11]).append(value)
        (<list>columns[12]).append(session.app_version)
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
            self._deadlines.push(max(state.newest_ts, state.arrival_clock) + idle, machine_id)
        if len(leaders) >= quorum:
            self.clock = max(self.clock, min(leaders.values()))
        self._touched.clear()
        self._close_idle(out)

    cdef _close_idle(self, out):
        cdef NativeMachine state
        cdef int64_t anchor
        cdef int64_t idle = self.config.idle_close_ms
        cdef int64_t retention = self.config.retention_ms
        cdef Deadlines deadlines = self._deadlines
        while deadlines.size and deadlines.heap[0].at < self.clock:
            machine_id = deadlines.pop()
            found = self.machines.get(machine_id)
            if found is None:
                continue
            state = <NativeMachine>found
            anchor = max(state.newest_ts, state.arrival_clock)
            if self.clock <= anchor + idle:
                continue  # it spoke again since; a newer deadline is queued
            self._drain(state, out)
            if self.clock > anchor + retention:
                del self.machines[machine_id]
                self._leaders.pop(machine_id, None)
            else:
                deadlines.push(anchor + retention, machine_id)

    cdef _drain(self, NativeMachine state, out):
        while state.size:
            self._release_first(state, out)
        session = state.session
        if session is not None and not session.closed:
            self._emit_session(state.machine_id, session, out)
            session.closed = True

    cdef _prune_seen(self, NativeMachine state):
        cdef int64_t floor = state.newest_ts - self._horizon
        state.seen = {event_id: ts for event_id, ts in state.seen.items() if ts >= floor}
        state.prune_at = max(PRUNE_FLOOR, 2 * len(state.seen))

    def flush(self, out):
        """End of input: release every buffered event, close every session, forget every machine."""
        for state in self.machines.values():
            self._drain(state, out)
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
        """The pure sessionizer's snapshot format (see :meth:`Sessionizer.snapshot`)."""
        return {
            "clock": self.clock,
            "leaders": dict(self._leaders),
            "machines": [state.to_dict(resolve) for state in self.machines.values()],
        }

    @classmethod
    def restore(cls, config, snapshot):
        cdef NativeSessionizer sessionizer = cls(config, clock=snapshot["clock"])
        cdef NativeMachine state
        cdef Rec rec
        sessionizer._leaders = dict(snapshot["leaders"])
        idle = config.idle_close_ms
        for data in snapshot["machines"]:
            state = NativeMachine(data["machine_id"])
            state.newest_ts = data["newest_ts"]
            state.arrival_clock = data["arrival_clock"]
            for event in data["pending"]:
                ts_obj = event["timestamp"]
                event_id = event["event_id"]
                event_type = event["event_type"]
                user_id = event.get("user_id")
                app_version = event.get("app_version")
                rec.ts = ts_obj
                rec.arrival = sessionizer._arrivals
                sessionizer._arrivals += 1
                rec.ts_obj = <PyObject*>ts_obj
                rec.event_id = <PyObject*>event_id
                rec.event_type = <PyObject*>event_type
                rec.user_id = <PyObject*>user_id
                rec.app_version = <PyObject*>app_version
                rec.payload = <PyObject*>event
                rec.row = -1
                rec_hold(&rec)
                state.push(&rec)
            last_key = data["last_key"]
            if last_key:
                state.has_last = True
                state.last_ts = last_key[0]
                state.last_id = last_key[1]
            session = data["session"]
            state.session = session_from_dict(session) if session else None
            state.seen = dict(data["seen"])
            state.prune_at = max(PRUNE_FLOOR, 2 * len(state.seen))
            sessionizer.machines[state.machine_id] = state
            sessionizer._deadlines.push(max(state.newest_ts, state.arrival_clock) + idle, state.machine_id)
        return sessionizer


# -- refined events to columns ----------------------------------------------------------------------

from cpython.dict cimport PyDict_Next
from cpython.list cimport PyList_New, PyList_SET_ITEM


def transpose(list events, Py_ssize_t width):
    """Event dicts with the same ``width`` keys in the same order -> ``width`` value lists.

    What ``zip(*map(tuple, map(dict.values, events)))`` gives, as lists, without a tuple per event.
    """
    cdef Py_ssize_t n = len(events), row, column, position
    cdef PyObject* key
    cdef PyObject* value
    cdef list columns = [PyList_New(n) for _ in range(width)]
    cdef list target
    for row in range(n):
        event = events[row]
        if type(event) is not dict or len(<dict>event) != width:
            # The lists are filled up to here: put None in the rest so they can be freed.
            for column in range(width):
                for position in range(row, n):
                    Py_INCREF(None)
                    PyList_SET_ITEM(columns[column], position, None)
            raise ValueError(f"event {row} does not have the {width} keys of the others")
        position = 0
        column = 0
        while PyDict_Next(event, &position, &key, &value):
            target = <list>columns[column]
            Py_INCREF(<object>value)
            PyList_SET_ITEM(target, row, <object>value)
            column += 1
    return columns
