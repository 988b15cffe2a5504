"""The one reference: what the README says each feed must give, computed the plainest way.

It shares nothing with ``sessionflow.core`` but the session id format (:func:`session_id`), and
never parses a line: valid events are known from the feed's :class:`Ev` items, rejections from the
reason written next to each dirty line. The rules, as the README states them:

* dedupe: the first arrival of an ``(machine_id, event_id)`` wins; a later copy is a duplicate while
  its first arrival is within ``dedupe_horizon`` of its machine's newest event;
* placing: an event is placed once its machine's newest timestamp is more than ``allowed_lateness``
  past it; an event that sorts before an event of its machine already placed is *late*: written,
  with no session;
* sessions, per machine in (timestamp, event_id) order: a new one at the first event, after a gap
  *strictly* greater than ``timeout``, at an opening event, or when it would last longer than
  ``max_session_duration``;
* a batch (an embedded run, a backfill) sorts everything: nothing is late, and dedupe has no
  horizon (``sorted_input=True``); the embedded run rejects a later copy whose content differs
  from the first arrival's as ``conflicting_duplicate`` (``conflicts=True``); AWS streams (late
  events stay late) but dedupes with no horizon and rejects such copies too
  (``horizon=False, conflicts=True``);
* silent machines: the stream clock is the newest timestamp reached by ``clock_quorum`` machines; a
  machine whose last arrival is more than ``timeout + allowed_lateness`` of stream time ago (and
  whose newest event is too) has its session closed before the end of input;
* what a session says of itself: its number among its machine's sessions (from 1), its first
  ``os``, its distinct ``document_id`` values, how many of its events *arrived late* (after an
  event of their machine with a later timestamp, among the events kept and placed before them),
  and why it ended: the machine's next event (a gap over the timeout, else an opening event, else
  the maximum duration), or, for a machine's last session, the stream clock at the end of input (more
  than the timeout past its end: ``timeout``; else ``end_of_input``). That clock counts the events
  a streaming runtime placed; a batch counts every valid event it read, copies too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sessionflow.config import SessionConfig
from sessionflow.core.ids import session_id
from tests.contract.feeds import Dirty, Ev, Feed

# What an event row must say: (machine, timestamp, type, session_id, session_seq, ms_since_prev, late,
# arrived_late, the properties_pages column: a nested field, cast by a rule of feed mapped_shapes).
EventRow = tuple[str, int, str, str | None, int | None, int | None, bool, bool, int | None]
# A session row: (machine, start, end, count, sorted type counts, first type, last type, os,
# session_number, documents, late_placed, close_reason).
SessionRow = tuple[str, int, int, int, tuple[tuple[str, int], ...], str, str, str | None, int, int, int, str]


@dataclass
class Result:
    """What a runtime wrote for some machines, normalised so that any two runtimes compare."""

    # (machine_id, event_id) -> its rows, sorted: a copy beyond the dedupe horizon is written again.
    events: dict[tuple[str, str], list[EventRow]] = field(default_factory=dict)
    sessions: dict[str, SessionRow] = field(default_factory=dict)
    rejections: Counter[tuple[str, bytes]] = field(default_factory=Counter)  # (reason, raw line)
    duplicates: int = 0
    # Machines whose last session was closed before the end of input (None: the runtime cannot tell).
    closed_early: set[str] | None = None

    def add_event(self, event_id: str, row: EventRow) -> None:
        rows = self.events.setdefault((row[0], event_id), [])
        rows.append(row)
        rows.sort(key=repr)


def expected(
    feed: Feed,
    config: SessionConfig,
    *,
    sorted_input: bool = False,
    batches_of_one: bool = False,
    conflicts: bool = False,
    end_clock: int | None = None,
    horizon: bool = True,
) -> Result:
    """The feed's result. ``batches_of_one``: also say which sessions the stream clock closes early.
    ``conflicts``: a later copy whose content differs from the first arrival's is rejected as
    ``conflicting_duplicate`` (the embedded runner, AWS), not counted as a duplicate. ``end_clock``:
    the stream clock at the end of input when the feed was part of a larger input (see
    :func:`end_clock`); None: the feed's own. ``horizon``: a copy is one only within
    ``dedupe_horizon`` of its machine's newest event (the streaming sessionizers); False: whenever it
    comes (a batch, which sorts, and AWS, whose event-id index remembers every event for the state's
    time to live)."""
    result = Result()
    for item in feed.items:
        if isinstance(item, Dirty):
            result.rejections[(item.reason, item.raw)] += 1
    arrivals = [item for item in feed.items if isinstance(item, Ev)]
    kept = _kept(arrivals, config, sorted_input, conflicts, result, exact=not horizon)
    arrived_late: set[int] = set()  # id() of the events that arrived late
    for events in kept.values():
        newest = -1
        for ev, late in events:
            if ev.ts < newest:
                arrived_late.add(id(ev))
            if not late:
                newest = max(newest, ev.ts)
    clock = end_clock if end_clock is not None else _end_clock([feed], config, sorted_input)
    for machine, events in kept.items():
        for ev, late in events:
            if late:
                flag = id(ev) in arrived_late
                result.add_event(ev.event_id, (machine, ev.ts, ev.event_type, None, None, None, True, flag, ev.pages))
        on_time = sorted((ev for ev, late in events if not late), key=lambda e: (e.ts, e.event_id))
        _sessionize(machine, on_time, config, result, arrived_late, clock)
    if batches_of_one:
        result.closed_early = _closed_by_the_stream_clock(arrivals, kept, config)
    return result


def _kept(
    arrivals: list[Ev],
    config: SessionConfig,
    sorted_input: bool,
    conflicts: bool,
    result: Result | None = None,
    exact: bool = False,
) -> dict[str, list[tuple[Ev, bool]]]:
    """machine -> (event, late) of the events kept (not duplicates), in arrival order. ``exact``:
    dedupe with no horizon (as a batch does) though the input is not sorted."""
    kept: dict[str, list[tuple[Ev, bool]]] = {}
    for ev in arrivals:
        mine = kept.setdefault(ev.machine, [])
        if _is_duplicate(ev, mine, config, sorted_input or exact):
            if result is not None:
                first = next(e for e, _ in mine if e.event_id == ev.event_id)
                if conflicts and (first.ts, first.event_type, first.extra) != (ev.ts, ev.event_type, ev.extra):
                    result.rejections[("conflicting_duplicate", ev.line())] += 1
                else:
                    result.duplicates += 1
            continue
        mine.append((ev, False if sorted_input else _is_late(ev, mine, config)))
    return kept


def _end_clock(feeds: Iterable[Feed], config: SessionConfig, sorted_input: bool) -> int:
    """The stream clock when the input (these feeds, one after the other) ends: the ``clock_quorum``-th
    newest of the machines' newest timestamps, over every valid event a batch read, or over the
    events a stream placed (not its duplicates, not its late events)."""
    newest: dict[str, int] = {}
    for feed in feeds:
        arrivals = [item for item in feed.items if isinstance(item, Ev)]
        if sorted_input:
            counted = arrivals
        else:
            kept = _kept(arrivals, config, sorted_input=False, conflicts=False)
            counted = [ev for events in kept.values() for ev, late in events if not late]
        for ev in counted:
            newest[ev.machine] = max(newest.get(ev.machine, ev.ts), ev.ts)
    leaders = sorted(newest.values(), reverse=True)
    return leaders[config.clock_quorum - 1] if len(leaders) >= config.clock_quorum else -1


def end_clock(feeds: Iterable[Feed], config: SessionConfig, *, sorted_input: bool) -> int:
    """The stream clock at the end of one input made of ``feeds``: for a runtime given all at once."""
    return _end_clock(feeds, config, sorted_input)


def _is_duplicate(ev: Ev, before: list[tuple[Ev, bool]], config: SessionConfig, exact: bool) -> bool:
    twins = [e for e, _ in before if e.event_id == ev.event_id]
    if exact:
        return bool(twins)
    newest = max((e.ts for e, late in before if not late), default=ev.ts)
    return any(twin.ts >= newest - config.dedupe_horizon_ms for twin in twins)


def _is_late(ev: Ev, before: list[tuple[Ev, bool]], config: SessionConfig) -> bool:
    on_time = [e for e, late in before if not late]
    if not on_time:
        return False
    newest = max(e.ts for e in on_time)
    placed = [(e.ts, e.event_id) for e in on_time if e.ts < newest - config.allowed_lateness_ms]
    return bool(placed) and (ev.ts, ev.event_id) < max(placed)


def _sessionize(
    machine: str, events: list[Ev], config: SessionConfig, result: Result, arrived_late: set[int], clock: int
) -> None:
    sessions: list[list[Ev]] = []
    for ev in events:
        current = sessions[-1] if sessions else None
        if (
            current is None
            or ev.ts - current[-1].ts > config.timeout_ms
            or ev.event_type in config.opening_events
            or (config.max_session_duration_ms is not None and ev.ts - current[0].ts > config.max_session_duration_ms)
        ):
            sessions.append([ev])
        else:
            current.append(ev)
    for number, members in enumerate(sessions, start=1):
        first, last = members[0], members[-1]
        sid = session_id(machine, first.ts, first.event_id)
        for seq, ev in enumerate(members, start=1):
            since = None if seq == 1 else ev.ts - members[seq - 2].ts
            flag = id(ev) in arrived_late
            result.add_event(ev.event_id, (machine, ev.ts, ev.event_type, sid, seq, since, False, flag, ev.pages))
        counts = tuple(sorted(Counter(e.event_type for e in members).items()))
        extras = [dict(e.extra) for e in members]
        os = next((x["os"] for x in extras if x.get("os") is not None), None)
        documents = len({x["document_id"] for x in extras if x.get("document_id") is not None})
        late_placed = sum(1 for e in members if id(e) in arrived_late)
        after = sessions[number][0] if number < len(sessions) else None
        if after is None:
            reason = "timeout" if clock >= 0 and clock - last.ts > config.timeout_ms else "end_of_input"
        elif after.ts - last.ts > config.timeout_ms:
            reason = "timeout"
        else:
            reason = "opening_event" if after.event_type in config.opening_events else "max_duration"
        result.sessions[sid] = (
            machine,
            first.ts,
            last.ts,
            len(members),
            counts,
            first.event_type,
            last.event_type,
            os,
            number,
            documents,
            late_placed,
            reason,
        )


def _closed_by_the_stream_clock(
    arrivals: list[Ev], kept: dict[str, list[tuple[Ev, bool]]], config: SessionConfig
) -> set[str]:
    """Each event its own batch: the machines the stream clock closes before the end of input."""
    counted = {id(ev) for events in kept.values() for ev, late in events if not late}
    newest: dict[str, int] = {}
    arrived_at: dict[str, int] = {}  # the stream clock when the machine's last event arrived
    clock = -1
    closed: set[str] = set()
    for ev in arrivals:
        arrived_at[ev.machine] = clock
        if id(ev) in counted:
            newest[ev.machine] = max(newest.get(ev.machine, ev.ts), ev.ts)
        closed.discard(ev.machine)
        leaders = sorted(newest.values(), reverse=True)
        if len(leaders) >= config.clock_quorum:
            clock = max(clock, leaders[config.clock_quorum - 1])
        for machine, ts in newest.items():
            if clock > max(ts, arrived_at[machine]) + config.idle_close_ms:
                closed.add(machine)
    return closed
