# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, auto_pickle=False
"""The compiled sessionizer's state, laid out in C (declared in ``_state.pxd``).

:class:`NativeSession` and :class:`NativeMachine` are the pure sessionizer's
:class:`~sessionflow.core.snapshot.OpenSession` and
:class:`~sessionflow.core.snapshot.MachineState` with C integers; a machine's reorder buffer is
a C array heap of :c:type:`Rec` structs (timestamp as a C integer, references to the strings), not
a list of tuples; so is the heap of idle deadlines (:class:`Deadlines`). ``_native.pyx`` turns them
into the pure values for a snapshot, and back. No rule is decided here: ``_native.pyx`` runs the
loops and asks ``rules``.
"""

from libc.stdlib cimport free, realloc

from sessionflow.core cimport rules


cdef class NativeSession:
    """:class:`~sessionflow.core.snapshot.OpenSession`, with C integers."""


cdef class NativeMachine:
    """:class:`~sessionflow.core.snapshot.MachineState`, its reorder heap a C array."""

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
        self.sessions = 0

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
        return rules.anchor(self.newest_ts, self.arrival_clock)

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


cdef inline bint due_less(Due* a, Due* b) except -1:
    if a.at != b.at:
        return a.at < b.at
    return PyUnicode_Compare(<object>a.machine_id, <object>b.machine_id) < 0


cdef class Deadlines:
    """The pure sessionizer's heap of ``(deadline, machine_id)``, with C integers: the same order."""

    def __dealloc__(self):
        self.clear()
        free(self.heap)

    cdef void clear(self) noexcept:
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
