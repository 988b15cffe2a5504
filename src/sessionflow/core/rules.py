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

# Why a session ended (the sessions table's ``close_reason``): see close_reason() and end_reason().
TIMEOUT = "timeout"
OPENING_EVENT = "opening_event"
MAX_DURATION = "max_duration"
END_OF_INPUT = "end_of_input"
CLOSE_REASONS = (TIMEOUT, OPENING_EVENT, MAX_DURATION, END_OF_INPUT)


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


def close_reason(
    gap_ms: int, span_ms: int, event_type: object, opening: Any, timeout_ms: int, max_duration_ms: int
) -> str:
    """Why a session ended, told by the event that starts the next one (:func:`starts_session` said
    it does): a gap over the timeout first, whatever the event is; then an opening event; else the
    session would have lasted longer than ``max_duration_ms``."""
    if gap_splits(gap_ms, timeout_ms):
        return TIMEOUT
    if event_type in opening:
        return OPENING_EVENT
    return MAX_DURATION


def end_reason(clock: int, last_ts: int, timeout_ms: int) -> str:
    """Why a session with no next event ended, at stream time ``clock`` (the input's end, or when
    the stream clock closed it): the clock is more than the timeout past its last event, so any
    event still to come would start a new session; else the input ended while it could go on."""
    return TIMEOUT if clock >= 0 and gap_splits(clock - last_ts, timeout_ms) else END_OF_INPUT


def arrived_late(ts: int, newest_ts: int) -> bool:
    """An event arrived late when its machine had already sent an event with a later timestamp
    (``newest_ts``: the newest of the machine's events that arrived before it, -1 for none)."""
    return ts < newest_ts


def arrival_flags(machines: list[Any], timestamps: list[int], newest: dict[Any, int]) -> list[bool]:
    """:func:`arrived_late` for events in arrival order (``machines[i]`` sent ``timestamps[i]``), for
    a runtime that sorts before it sessionizes; ``newest`` holds each machine's newest timestamp
    before the first of them (what earlier runs placed) and is brought up to date."""
    flags = []
    for i in range(len(timestamps)):
        machine = machines[i]
        ts = timestamps[i]
        before = newest.get(machine, -1)
        flags.append(arrived_late(ts, before))
        if ts > before:
            newest[machine] = ts
    return flags


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
    os: str | None,
    number: int,
    documents: int,
    late_placed: int,
    reason: str,
) -> tuple[Any, ...]:
    """A closed session's values, in ``SESSION_VALUES`` order: the summary's fields but the ISO
    times and date, which are functions of ``start_ts``/``end_ts`` (a columnar runtime computes them
    on whole columns). ``event_type_counts`` (last) is the sorted list of ``(type, count)`` pairs."""
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
        app_version,
        os,
        number,
        documents,
        late_placed,
        reason,
        sorted(type_counts.items()),
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
    "app_version",
    "os",
    "session_number",
    "documents",
    "late_placed",
    "close_reason",
    "event_type_counts",
)


def summary(values: tuple[Any, ...]) -> dict[str, Any]:
    """The sessions table's row for a closed session: its :func:`session_values` and the ISO times."""
    row = dict(zip(SESSION_VALUES, values, strict=True))
    row["event_type_counts"] = dict(row["event_type_counts"])
    start = iso_time(row["start_ts"])
    row["session_start"] = start
    row["session_end"] = iso_time(row["end_ts"])
    row["session_date"] = start[:10]
    return row
