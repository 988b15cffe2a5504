"""Helpers of the arrival-order tests: feeds built out of order, a plain reference sessionizer, and
the lake read back with DuckDB.

The reference is written the plainest way on purpose and shares nothing with ``sessionflow.core``
but the session id formula: every valid event deduplicated on (machine_id, event_id), first
arrival kept; per machine sorted by (timestamp, event_id); a new session at a machine's first
event, after a gap strictly longer than the timeout, at an opening event, or when the session
would last longer than the maximum duration.

And the sessions' own columns, as the README defines them: an event *arrived late* when an event of
its machine with a later timestamp arrived before it (over all runs, in arrival order); a session
counts those placed in it (``late_placed``), its distinct documents, its first ``os``, its number
among its machine's sessions, and why it ended: the machine's next event (a gap over the timeout,
then an opening event, else the maximum duration), or for a machine's last session the stream
clock after the last run (more than the timeout past its end: ``timeout``, else ``end_of_input``).
"""

from __future__ import annotations

import bisect
import random
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import duckdb
import orjson

from sessionflow.core.ids import session_id

MINUTE = 60_000
HOUR = 60 * MINUTE
# 2000-01-01 and a day past now: the validation's bounds (generated invalid records are outside).
MIN_TS = 946_684_800_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Key = tuple[str, str]  # (machine_id, event_id)


@dataclass(frozen=True, slots=True)
class Event:
    machine_id: str
    event_id: str
    timestamp: int
    event_type: str
    os: str | None = None
    document_id: str | None = None

    @property
    def key(self) -> Key:
        return (self.machine_id, self.event_id)


@dataclass(frozen=True, slots=True)
class Rules:
    timeout_ms: int = 30 * MINUTE
    opening_events: frozenset[str] = frozenset({"app_open"})
    max_duration_ms: int | None = None
    restate_horizon_ms: int = 7 * 24 * HOUR
    clock_quorum: int = 3


# -- parsing input lines the way the example config cleans them -----------------------------------


def parse_line(line: bytes) -> Event | None:
    """The valid event a line of a generated feed gives under the example config, or None.

    Enough of validation for what the generator writes: bad JSON, non-objects, missing or mistyped
    fields, unparseable or out-of-range timestamps. The example config scales build 11.2.* from
    seconds and lower-cases event types.
    """
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    event_id, machine_id, event_type = record.get("event_id"), record.get("machine_id"), record.get("event_type")
    if not (_text(event_id) and _text(machine_id) and _text(event_type)):
        return None
    ts = record.get("timestamp")
    version = record.get("app_version")
    if isinstance(ts, int) and not isinstance(ts, bool):
        if isinstance(version, str) and fnmatchcase(version, "11.2.*"):
            ts *= 1000
    elif isinstance(ts, str):
        try:
            moment = datetime.fromisoformat(ts)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None
        ts = (moment - EPOCH) // timedelta(milliseconds=1)
    else:
        return None
    if not MIN_TS <= ts <= time.time() * 1000 + 24 * HOUR:
        return None
    os, document = record.get("os"), record.get("document_id")
    return Event(
        str(machine_id),
        str(event_id),
        ts,
        str(event_type).lower(),
        os if isinstance(os, str) else None,
        document if isinstance(document, str) else None,
    )


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def events_of_lines(lines: Iterable[bytes]) -> list[Event]:
    return [event for event in map(parse_line, lines) if event is not None]


def clean_line(
    machine_id: str,
    event_id: str,
    ts: int,
    event_type: str = "view",
    os: str | None = None,
    document: str | None = None,
) -> bytes:
    """A hand-built valid line (already clean: milliseconds, lower case)."""
    record: dict[str, Any] = {"event_id": event_id, "machine_id": machine_id, "event_type": event_type, "timestamp": ts}
    if os is not None:
        record["os"] = os
    if document is not None:
        record["document_id"] = document
    return orjson.dumps(record)


# -- the reference ------------------------------------------------------------------------------


@dataclass
class Reference:
    """key -> (session_id, session_seq, ms_since_prev, late, arrived_late), and one summary per session."""

    placements: dict[Key, tuple[Any, ...]]
    sessions: list[tuple[Any, ...]]
    late: set[Key]


def reference(runs: Sequence[Sequence[Event]], rules: Rules = Rules()) -> Reference:
    """What the lake must hold after ``runs`` (each run's valid events in arrival order).

    An event older than (the clock before its run - restate horizon) is late: no session. The clock
    is the newest timestamp reached by ``clock_quorum`` machines over the earlier runs' events.
    """
    kept: dict[Key, Event] = {}
    late: set[Key] = set()
    arrived_late: set[Key] = set()
    sent: dict[str, int] = {}  # machine -> its newest timestamp kept so far, in arrival order
    newest: dict[str, int] = {}
    clock = -1
    for events in runs:
        for event in events:
            if event.key in kept:
                continue
            kept[event.key] = event
            if event.timestamp < sent.get(event.machine_id, event.timestamp):
                arrived_late.add(event.key)
            sent[event.machine_id] = max(sent.get(event.machine_id, event.timestamp), event.timestamp)
            if clock >= 0 and event.timestamp < clock - rules.restate_horizon_ms:
                late.add(event.key)
        for event in events:
            newest[event.machine_id] = max(newest.get(event.machine_id, event.timestamp), event.timestamp)
        leaders = sorted(newest.values(), reverse=True)
        if len(leaders) >= rules.clock_quorum:
            clock = max(clock, leaders[rules.clock_quorum - 1])
    placements: dict[Key, tuple[Any, ...]] = {key: (None, None, None, True, key in arrived_late) for key in late}
    by_machine: dict[str, list[Event]] = {}
    for event in kept.values():
        if event.key not in late:
            by_machine.setdefault(event.machine_id, []).append(event)
    summaries: list[tuple[Any, ...]] = []
    for machine_id, events in by_machine.items():
        events.sort(key=lambda e: (e.timestamp, e.event_id))
        sessions: list[list[Event]] = []
        for event in events:
            session = sessions[-1] if sessions else None
            if session and not _starts_session(session, event, rules):
                placements[event.key] = (
                    placements[session[0].key][0],
                    len(session) + 1,
                    event.timestamp - session[-1].timestamp,
                    False,
                    event.key in arrived_late,
                )
                session.append(event)
                continue
            sessions.append([event])
            placements[event.key] = (
                session_id(machine_id, event.timestamp, event.event_id),
                1,
                None,
                False,
                event.key in arrived_late,
            )
        for number, session in enumerate(sessions, 1):
            after = sessions[number][0] if number < len(sessions) else None
            reason = _why_it_ended(session, after, clock, rules)
            summaries.append(_summary(session, number, sum(e.key in arrived_late for e in session), reason))
    return Reference(placements, sorted(summaries), late)


def _starts_session(session: list[Event], event: Event, rules: Rules) -> bool:
    if event.timestamp - session[-1].timestamp > rules.timeout_ms:
        return True
    if event.event_type in rules.opening_events:
        return True
    limit = rules.max_duration_ms
    return limit is not None and event.timestamp - session[0].timestamp > limit


def _why_it_ended(session: list[Event], after: Event | None, clock: int, rules: Rules) -> str:
    end = session[-1].timestamp
    if after is None:
        return "timeout" if clock >= 0 and clock - end > rules.timeout_ms else "end_of_input"
    if after.timestamp - end > rules.timeout_ms:
        return "timeout"
    return "opening_event" if after.event_type in rules.opening_events else "max_duration"


def _summary(session: list[Event], number: int, late_placed: int, reason: str) -> tuple[Any, ...]:
    first, last = session[0], session[-1]
    counts: dict[str, int] = {}
    for event in session:
        counts[event.event_type] = counts.get(event.event_type, 0) + 1
    return (
        session_id(first.machine_id, first.timestamp, first.event_id),
        first.machine_id,
        first.timestamp,
        last.timestamp,
        len(session),
        first.event_type,
        last.event_type,
        tuple(sorted(counts.items())),
        next((e.os for e in session if e.os is not None), None),
        number,
        len({e.document_id for e in session if e.document_id is not None}),
        late_placed,
        reason,
    )


# -- the lake, read plainly -----------------------------------------------------------------------


def sql(query: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = duckdb.connect().execute(query).fetchall()
    return rows


def table(lake: Path, name: str) -> str:
    return f"read_parquet('{lake}/{name}/*/*.parquet', hive_partitioning=true)"


def has_files(lake: Path, name: str) -> bool:
    """DuckDB refuses a glob that matches nothing: a table without files is read as no rows."""
    return any((lake / name).glob("*/*.parquet"))


def lake_placements(lake: Path) -> dict[Key, tuple[Any, ...]]:
    if not has_files(lake, "events"):
        return {}
    rows = sql(
        "SELECT machine_id, event_id, session_id, session_seq, ms_since_prev, late, arrived_late "
        f"FROM {table(lake, 'events')}"
    )
    placed = {(row[0], row[1]): row[2:] for row in rows}
    assert len(placed) == len(rows), f"{len(rows) - len(placed)} extra rows of events already in the lake"
    return placed


def lake_sessions(lake: Path) -> list[tuple[Any, ...]]:
    if not has_files(lake, "sessions"):
        return []
    rows = sql(
        "SELECT session_id, machine_id, start_ts, end_ts, event_count, first_event_type, last_event_type, "
        "event_type_counts, os, session_number, documents, late_placed, close_reason "
        f"FROM {table(lake, 'sessions')}"
    )
    sessions = sorted((*row[:7], tuple(sorted(row[7].items())), *row[8:]) for row in rows)
    assert len({row[0] for row in sessions}) == len(sessions), "a session id has two summary rows"
    return sessions


# What records the order the events arrived in: two lakes of the same events read in another order
# differ there, and only there.
ARRIVAL_COLUMNS = {"events": "arrived_late", "sessions": "late_placed"}


def lake_content(lake: Path, arrival: bool = True) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every column of every event and session row, in a fixed order: two lakes compare as values.
    ``arrival=False``: but the columns that record the arrival order."""

    def columns(name: str) -> str:
        return "*" if arrival else f"* EXCLUDE ({ARRIVAL_COLUMNS[name]})"

    events = sql(f"SELECT {columns('events')} FROM {table(lake, 'events')} ORDER BY machine_id, event_id")
    sessions = sql(f"SELECT {columns('sessions')} FROM {table(lake, 'sessions')} ORDER BY session_id")
    return events, sessions


def assert_lake_is(lake: Path, expected: Reference) -> None:
    placed = lake_placements(lake)
    assert placed.keys() == expected.placements.keys(), (
        f"{len(placed.keys() - expected.placements.keys())} events in the lake the input has not, "
        f"{len(expected.placements.keys() - placed.keys())} events of the input missing"
    )
    wrong = [key for key, where in expected.placements.items() if placed[key] != where]
    assert not wrong, f"{len(wrong)} of {len(placed)} events placed unlike the reference, e.g. {wrong[:3]}"
    sessions = lake_sessions(lake)
    assert sessions == expected.sessions, (
        f"sessions differ: {len(set(sessions) - set(expected.sessions))} in the lake only, "
        f"{len(set(expected.sessions) - set(sessions))} in the reference only"
    )


# -- feeds ---------------------------------------------------------------------------------------


def shuffled(lines: list[bytes], seed: int) -> list[bytes]:
    copy = list(lines)
    random.Random(seed).shuffle(copy)
    return copy


def delay_some(lines: list[bytes], share: float, low_ms: int, high_ms: int, seed: int) -> list[bytes]:
    """Move a random ``share`` of the valid lines later in the file by ``low_ms``..``high_ms`` of event
    time: each goes right before the first line whose event time is past its own plus the delay."""
    rng = random.Random(seed)
    # The file's time at each line: its event time, never going back (invalid lines keep the last).
    times: list[int] = []
    now = -1
    for line in lines:
        event = parse_line(line)
        now = max(now, event.timestamp if event else now)
        times.append(now)
    places: list[tuple[float, bytes]] = []
    for i, line in enumerate(lines):
        event = parse_line(line)
        if event is not None and rng.random() < share:
            due = event.timestamp + rng.randint(low_ms, high_ms)
            place = bisect.bisect_right(times, due, lo=i + 1)
            places.append((place - 0.5, line))
        else:
            places.append((float(i), line))
    places.sort(key=lambda p: p[0])
    return [line for _, line in places]


def write_lines(path: Path, lines: Iterable[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def read_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


# -- the command line ------------------------------------------------------------------------------


def sessionflow(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``sessionflow ARGS`` in a process of its own, as a user runs it."""
    command = [sys.executable, "-m", "sessionflow", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=120, check=False)


def run_json(*args: str | Path, stdin: bytes = b"") -> tuple[dict[str, Any], str]:
    """``sessionflow run ARGS --json -q``: the summary it prints, and its stderr."""
    done = sessionflow("run", *args, "--json", "-q", stdin=stdin)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"run exited {done.returncode}: {stderr}"
    summary: dict[str, Any] = orjson.loads(done.stdout)
    return summary, stderr


def assert_verifies(lake: Path) -> None:
    done = sessionflow("verify", lake)
    assert done.returncode == 0, f"verify exited {done.returncode}: {done.stdout.decode()} {done.stderr.decode()}"
