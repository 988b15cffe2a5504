# C types for rules.py, compiled from its own source (Cython's "augmenting .pxd"): the compiled
# sessionizer cimports these and calls them as C functions. Times are ms as C integers.

cimport cython

cpdef bint gap_splits(long long gap_ms, long long timeout_ms) noexcept
cpdef bint duration_splits(long long span_ms, long long max_duration_ms) noexcept
cpdef bint certain_start(long long gap_ms, object event_type, object opening, long long timeout_ms) except -1
cpdef bint starts_session(
    long long gap_ms, long long span_ms, object event_type, object opening, long long timeout_ms,
    long long max_duration_ms,
) except -1
cpdef bint is_duplicate(long long seen_ts, long long newest_ts, long long horizon_ms) noexcept
cpdef bint is_late(bint sorts_before_placed, bint closed_session_would_take_it) noexcept
cpdef bint releasable(long long ts, long long newest_ts, long long lateness_ms) noexcept
cpdef long long anchor(long long newest_ts, long long arrival_clock) noexcept
cpdef long long idle_deadline(long long anchor_ms, long long idle_close_ms) noexcept
cpdef long long retention_deadline(long long anchor_ms, long long retention_ms) noexcept
cpdef bint is_past(long long clock, long long deadline) noexcept
cpdef str close_reason(
    long long gap_ms, long long span_ms, object event_type, object opening, long long timeout_ms,
    long long max_duration_ms,
)
cpdef str end_reason(long long clock, long long last_ts, long long timeout_ms)
cpdef bint arrived_late(long long ts, long long newest_ts) noexcept
@cython.locals(i=Py_ssize_t, ts=cython.longlong, before=cython.longlong)
cpdef list arrival_flags(list machines, list timestamps, dict newest)
cpdef tuple session_values(
    object machine_id, object session_id, long long start_ts, long long last_ts, Py_ssize_t count,
    object first_type, object last_type, dict type_counts, object user_id, object app_version,
    object os, long long number, Py_ssize_t documents, long long late_placed, str reason,
)
cpdef dict summary(tuple values)
