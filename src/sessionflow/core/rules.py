"""The session rules, each decided here and nowhere else.

Every runtime asks these functions: the pure sessionizer, the compiled one (which cimports them
through ``rules.pxd``, so the compiled loop runs this very code), the AWS deadline bookkeeping and
the Spark backfill's window logic. Change a rule here and every runtime follows; the contract suite
(``tests/contract``) holds them all to one independent reference.

Times are integer milliseconds. ``NO_LIMIT`` stands for "no max_session_duration" so the compiled
code can keep the limit a C integer.
"""

from __future__ import annotations

from typing import Any

from sessionflow.core.enrich import iso_time

NO_LIMIT = -1


def gap_splits(gap_ms: int, timeout_ms: int) -> bool:
    """A gap *strictly* longer than the timeout ends a session; a gap equal to it does not."""
    return gap_ms > timeout_ms


def duration_splits(span_ms: int, max_duration_ms: int) -> bool:
    """A session may last ``max_duration_ms`` (``NO_LIMIT``: forever); one more millisecond splits it."""
    return max_duration_ms != NO_LIMIT and span_ms > max_duration_ms


def certain_start(gap_ms: int, event_type: object, opening: Any, timeout_ms: int) -> bool:
    """Starts a session whatever session it follows: an opening event, or a gap over the timeout.

    ``max_session_duration`` is not part of it: where it cuts depends on where the session began.
    """
    return event_type in opening or gap_splits(gap_ms, timeout_ms)


def starts_session(
    gap_ms: int, span_ms: int, event_type: object, opening: Any, timeout_ms: int, max_duration_ms: int
) -> bool:
    """Does an event ``gap_ms`` after a session's last event (``span_ms`` after its first) start a new one?"""
    return certain_start(gap_ms, event_type, opening, timeout_ms) or duration_splits(span_ms, max_duration_ms)


def is_duplicate(seen_ts: int, newest_ts: int, horizon_ms: int) -> bool:
    """An event id seen at ``seen_ts`` is still remembered while within the horizon of the machine's newest event."""
    return seen_ts >= newest_ts - horizon_ms


def is_late(sorts_before_placed: bool, closed_session_would_take_it: bool) -> bool:
    """Late: its place was already decided, so sessions already written never change.

    It sorts before an event already placed, or it would extend a session already closed.
    """
    return sorts_before_placed or closed_session_would_take_it


def releasable(ts: int, newest_ts: int, lateness_ms: int) -> bool:
    """An event leaves the reorder buffer once its machine's newest event is over the lateness past it."""
    return ts < newest_ts - lateness_ms


def anchor(newest_ts: int, arrival_clock: int) -> int:
    """Where a machine's idleness is measured from: its newest event, or the stream clock when it last spoke."""
    return newest_ts if newest_ts > arrival_clock else arrival_clock


def idle_deadline(anchor_ms: int, idle_close_ms: int) -> int:
    """Past this stream time a silent machine's open session is closed and its buffer drained."""
    return anchor_ms + idle_close_ms


def retention_deadline(anchor_ms: int, retention_ms: int) -> int:
    """Past this stream time a silent machine's state (dedupe window, last key) is forgotten."""
    return anchor_ms + retention_ms


def is_past(clock: int, deadline: int) -> bool:
    """A deadline is reached when the stream clock is strictly past it."""
    return clock > deadline


def session_values(
    machine_id: str,
    session_id: str,
    start_ts: int,
    last_ts: int,
    count: int,
    first_type: str,
    last_type: str,
    type_counts: dict[str, int],
    user_id: str | None,
    app_version: str | None,
) -> tuple[Any, ...]:
    """A closed session's values, in ``SESSION_VALUES`` order: the summary's fields but the ISO
    times and date, which are functions of ``start_ts``/``end_ts`` (a columnar runtime computes them
    on whole columns). ``event_type_counts`` is the sorted list of ``(type, count)`` pairs."""
    return (
        session_id,
        machine_id,
        user_id,
        start_ts,
        last_ts,
        last_ts - start_ts,
        count,
        first_type,
        last_type,
        sorted(type_counts.items()),
        app_version,
    )


SESSION_VALUES = (
    "session_id",
    "machine_id",
    "user_id",
    "start_ts",
    "end_ts",
    "duration_ms",
    "event_count",
    "first_event_type",
    "last_event_type",
    "event_type_counts",
    "app_version",
)


def summary(values: tuple[Any, ...]) -> dict[str, Any]:
    """The sessions table's row for a closed session: its :func:`session_values` and the ISO times."""
    session_id, machine_id, user_id, start_ts, end_ts, duration_ms, count, first_type, last_type, pairs, version = (
        values
    )
    start = iso_time(start_ts)
    return {
        "session_id": session_id,
        "machine_id": machine_id,
        "user_id": user_id,
        "start_ts": start_ts,
        "end_ts": end_ts,
        "session_start": start,
        "session_end": iso_time(end_ts),
        "duration_ms": duration_ms,
        "event_count": count,
        "first_event_type": first_type,
        "last_event_type": last_type,
        "event_type_counts": dict(pairs),
        "app_version": version,
        "session_date": start[:10],
    }
