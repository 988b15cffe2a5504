# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, auto_pickle=False
"""The embedded runner's block format for the compiled sessionizer: Arrow in, Arrow out.

* :func:`process_block` reads a block's key columns straight from their Arrow buffers
  (:class:`_Strings`, :class:`_Repeating`) and hands each row to the core's compiled sessionizer
  (``sessionflow.core._native``, cimported), which decides everything;
* :class:`Placements` is the core's ``Placer`` for such a block: the sessionizer writes each row's
  session columns into its C arrays, which become Arrow arrays at once (:meth:`Placements.columns`):
  no Python ``release`` call and no Python object per event;
* :func:`transpose` turns a worker's refined event dicts into columns.

``tests/local/test_blocks.py`` holds a block's placements equal to the pure sessionizer's releases.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.dict cimport PyDict_Next
from cpython.list cimport PyList_GET_ITEM, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy

from sessionflow.core._native cimport NativeSessionizer, Placer


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL


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


cdef class Placements(Placer):
    """A block's session columns, filled row by row as the sessionizer places its rows.

    ``remaining`` counts the rows not yet placed (nor handed to the emitter as duplicates). The
    columns are C arrays, turned into Arrow arrays without a Python object per row by
    :meth:`columns`.
    """

    cdef public object batch
    cdef public Py_ssize_t remaining
    cdef Py_ssize_t rows
    # The block's user_id, app_version and os (None: a column the events do not have): read only
    # for a session's first values, so decoded only then, not for every row; document ids, read for
    # every row placed, dictionary-encoded (one str per distinct value).
    cdef _Strings users
    cdef _Strings versions
    cdef _Strings systems
    cdef _Repeating documents
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

    cdef int place(self, Py_ssize_t row, object session_id, Py_ssize_t seq, int64_t since) except -1:
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

    cdef int late(self, Py_ssize_t row) except -1:
        self.seqs[row] = -1
        self.remaining -= 1
        return 0

    cdef object user_id(self, Py_ssize_t row):
        return self.users.get(row) if self.users is not None else None

    cdef object app_version(self, Py_ssize_t row):
        return self.versions.get(row) if self.versions is not None else None

    cdef object os(self, Py_ssize_t row):
        return self.systems.get(row) if self.systems is not None else None

    cdef object document_id(self, Py_ssize_t row):
        return self.documents.get(row) if self.documents is not None else None

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


def process_block(NativeSessionizer sessionizer, timestamps, event_ids, machine_ids, event_types, user_ids,
              app_versions, systems, documents, arrived_late, Placements placements, out):
    """One block's key columns as Arrow arrays, in arrival order: timestamps int64; event ids,
    user ids, app versions and os strings; machine ids, event types and document ids
    dictionary-encoded strings; ``arrived_late`` booleans, what the runtime found in arrival order
    (user ids, app versions, os, document ids and ``arrived_late`` may be None: a column the events
    do not have).

    Row ``i`` is placed (or marked late) in ``placements`` by ``sessionizer``; a duplicate goes to
    ``out.duplicate`` as ``(placements, i)``.
    """
    cdef Py_ssize_t i, j, n = len(timestamps)
    cdef Py_buffer ts_view
    cdef Py_buffer late_view
    cdef bint has_late = False
    cdef const unsigned char* late_bits = NULL
    cdef Py_ssize_t late_offset = 0
    cdef bint late
    cdef const int64_t* ts
    cdef Py_ssize_t ts_offset = timestamps.offset
    cdef _Strings ids = _Strings(event_ids)
    cdef _Repeating mids = _Repeating(machine_ids)
    cdef _Repeating types = _Repeating(event_types)
    placements.users = _Strings(user_ids) if user_ids is not None else None
    placements.versions = _Strings(app_versions) if app_versions is not None else None
    placements.systems = _Strings(systems) if systems is not None else None
    placements.documents = _Repeating(documents) if documents is not None else None
    for column in (event_ids, machine_ids, event_types, user_ids, app_versions, systems, documents, arrived_late):
        if column is not None and len(column) != n:
            raise ValueError("the key columns of a block differ in length")
    if arrived_late is not None and (str(arrived_late.type) != "bool" or arrived_late.null_count):
        raise TypeError("arrived_late must be a boolean column without nulls")
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
        if arrived_late is not None:
            PyObject_GetBuffer(arrived_late.buffers()[1], &late_view, PyBUF_SIMPLE)
            has_late = True
            late_offset = arrived_late.offset
            if late_view.len < (late_offset + n + 7) // 8:
                raise ValueError("the arrived_late buffer is shorter than the array")
            late_bits = <const unsigned char*>late_view.buf
        if ts_view.len < 8 * (ts_offset + n):
            raise ValueError("the timestamp buffer is shorter than the array")
        ts = (<const int64_t*>ts_view.buf) + ts_offset
        for i in range(n):
            late = False
            if has_late:
                j = i + late_offset
                late = (late_bits[j >> 3] >> (j & 7)) & 1
            sessionizer._process(
                PyLong_FromLongLong(ts[i]), ids.get(i), mids.get(i), types.get(i), None, None, None, None, late,
                placements, i, out,
            )
    finally:
        PyBuffer_Release(&ts_view)
        if has_late:
            PyBuffer_Release(&late_view)


# -- refined events to columns ----------------------------------------------------------------------


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
