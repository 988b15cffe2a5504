"""The report's figures, each computed by DuckDB over the lake's views (:mod:`.lake_db`).

Every figure is plain data: the categories, one or more series of numbers, and the table of the
same numbers that the page prints beside its chart. Nothing here draws; :mod:`.charts` does. The
queries aggregate in DuckDB and bring back at most a few hundred rows, so a lake of ten million
events reports in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

# Session length and size, in buckets: (label, upper bound, exclusive; None: no bound).
DURATION_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("< 1 min", 60_000),
    ("1-5 min", 300_000),
    ("5-15 min", 900_000),
    ("15-30 min", 1_800_000),
    ("30-60 min", 3_600_000),
    ("1-2 h", 7_200_000),
    ("2-4 h", 14_400_000),
    ("4 h +", None),
)
SIZE_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("1", 2),
    ("2-5", 6),
    ("6-10", 11),
    ("11-20", 21),
    ("21-50", 51),
    ("51-100", 101),
    ("101 +", None),
)
# The path of a session through the app: app_open -> doc_open -> edit -> save -> share or sign.
DEFAULT_FUNNEL: tuple[tuple[str, ...], ...] = (("app_open",), ("doc_open",), ("edit",), ("save",), ("share", "sign"))
PATH_STEPS = 5  # a session's path: its first event types, a repeat of the one before left out
TOP_PATHS = 10
TOP_TYPES = 12
TOP_REJECTIONS = 5
NO_DAY = "no day"  # a rejected record without a readable timestamp in the report's days


@dataclass
class Series:
    name: str
    values: list[float]


@dataclass
class Figure:
    """One chart and its numbers. ``kind``: bars, hbars, stacked, lines, funnel."""

    key: str
    title: str
    note: str
    kind: str
    labels: list[str]
    series: list[Series]
    headers: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    unit: str = ""  # "%": values are percentages


@dataclass
class Report:
    """What the page shows: the headline numbers, then the figures."""

    lake: str
    days: tuple[str, str] | None  # first and last day of events shown
    headline: list[tuple[str, str, str]]
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)


def _one(db: Any, sql: str, parameters: list[Any] | None = None) -> tuple[Any, ...]:
    row = db.execute(sql, parameters or []).fetchone()
    assert row is not None
    return tuple(row)


def _all(db: Any, sql: str, parameters: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in db.execute(sql, parameters or []).fetchall()]


def select_days(db: Any, first: date | None, last: date | None) -> None:
    """``ev``, ``se`` and ``rj`` views: the lake's events, sessions and rejections of those days
    (a session by the day it started, a rejection by its record's own timestamp when readable)."""
    bounds = []
    if first is not None:
        bounds.append(("{column} >= DATE '{day}'", first.isoformat()))
    if last is not None:
        bounds.append(("{column} <= DATE '{day}'", last.isoformat()))

    def where(column: str) -> str:
        return " AND ".join(text.format(column=column, day=day) for text, day in bounds) or "TRUE"

    db.execute(f"CREATE TEMP VIEW ev AS SELECT * FROM events WHERE {where('event_date')}")
    db.execute(f"CREATE TEMP VIEW se AS SELECT * FROM sessions WHERE {where('session_date')}")
    # A rejected record's day: its own timestamp, when it is valid JSON with an epoch-ms or ISO one.
    db.execute(
        "CREATE TEMP VIEW rj_all AS SELECT reason, CASE "
        "WHEN json_type(ts) IN ('BIGINT', 'UBIGINT') THEN TRY_CAST(epoch_ms(TRY_CAST(ts AS BIGINT)) AS DATE) "
        "WHEN json_type(ts) = 'VARCHAR' THEN TRY_CAST(TRY_CAST(ts ->> '$' AS TIMESTAMPTZ) AS DATE) END AS day "
        "FROM (SELECT reason, CASE WHEN json_valid(raw) THEN json_extract(raw, '$.timestamp') END AS ts FROM rejected)"
    )
    days_of_events = "(SELECT min(event_date) AS lo, max(event_date) AS hi FROM ev)"
    db.execute(
        "CREATE TEMP VIEW rj AS SELECT reason, CASE WHEN day BETWEEN d.lo AND d.hi THEN day END AS day "
        f"FROM rj_all, {days_of_events} d" + ("" if not bounds else f" WHERE day IS NULL OR ({where('day')})")
    )


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _columns(db: Any, view: str) -> set[str]:
    return {row[0] for row in db.execute(f"DESCRIBE {view}").fetchall()}


def headline(db: Any) -> list[tuple[str, str, str]]:
    """The numbers at the top of the page: (what, how many, of what)."""
    arrival = _columns(db, "ev")
    placed = "count(*) FILTER (WHERE arrived_late AND NOT late)" if "arrived_late" in arrival else "0"
    events, machines, users, late, arrived = _one(
        db,
        "SELECT count(*), count(DISTINCT machine_id), count(DISTINCT user_id), count(*) FILTER (WHERE late), "
        f"{placed} FROM ev",
    )
    sessions, median_ms, mean_events = _one(db, "SELECT count(*), median(duration_ms), avg(event_count) FROM se")
    rejected = _one(db, "SELECT count(*) FROM rj")[0]
    records, duplicates = _one(db, "SELECT coalesce(sum(records), 0), coalesce(sum(duplicates), 0) FROM runs")
    return [
        ("events", f"{events:,}", "valid, written"),
        ("sessions", f"{sessions:,}", ""),
        ("machines", f"{machines:,}", f"{users:,} users"),
        ("median session", _minutes(median_ms), f"{mean_events or 0:.1f} events per session"),
        ("rejected", f"{rejected:,}", f"{_pct(rejected, rejected + events):.2f}% of records"),
        ("duplicates", f"{duplicates:,}", f"{_pct(duplicates, records):.2f}% of records (all runs)"),
        ("arrived late, placed", f"{arrived:,}", f"{_pct(arrived, events):.2f}% of events"),
        ("late, in no session", f"{late:,}", f"{_pct(late, events):.2f}% of events"),
    ]


def _minutes(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 60_000:.1f} min"


def daily(db: Any) -> list[Figure]:
    """Events per day; sessions started and machines active per day."""
    events = {
        str(day): (count, machines)
        for day, count, machines in _all(
            db, "SELECT event_date, count(*), count(DISTINCT machine_id) FROM ev GROUP BY 1 ORDER BY 1"
        )
    }
    sessions = {str(day): count for day, count in _all(db, "SELECT session_date, count(*) FROM se GROUP BY 1")}
    days = sorted(events.keys() | sessions.keys())
    rows = [[day, events.get(day, (0, 0))[0], sessions.get(day, 0), events.get(day, (0, 0))[1]] for day in days]
    return [
        Figure(
            "events-per-day",
            "Events per day",
            "Valid events by their own day (event_date, UTC); late ones included.",
            "bars",
            days,
            [Series("events", [row[1] for row in rows])],
            ["day", "events"],
            [row[:2] for row in rows],
        ),
        Figure(
            "sessions-per-day",
            "Sessions and active machines per day",
            "Sessions by the day they started (session_date); machines with at least one event that day.",
            "lines",
            days,
            [Series("sessions", [row[2] for row in rows]), Series("machines", [row[3] for row in rows])],
            ["day", "sessions", "machines"],
            [[row[0], row[2], row[3]] for row in rows],
        ),
    ]


def _buckets(db: Any, column: str, buckets: tuple[tuple[str, int | None], ...]) -> list[int]:
    parts = []
    low: int | None = None
    for _, high in buckets:
        conditions = ([f"{column} >= {low}"] if low is not None else []) + (
            [f"{column} < {high}"] if high is not None else []
        )
        parts.append(f"count(*) FILTER (WHERE {' AND '.join(conditions) or 'TRUE'})")
        low = high
    return [int(value) for value in _one(db, f"SELECT {', '.join(parts)} FROM se")]


def shapes(db: Any) -> list[Figure]:
    """How long sessions last, and how many events they hold."""
    figures = []
    for key, title, note, column, buckets in (
        (
            "session-duration",
            "Session duration",
            "From a session's first event to its last (duration_ms).",
            "duration_ms",
            DURATION_BUCKETS,
        ),
        (
            "session-size",
            "Events per session",
            "Events placed in each session (event_count).",
            "event_count",
            SIZE_BUCKETS,
        ),
    ):
        counts = _buckets(db, column, buckets)
        total = sum(counts)
        labels = [label for label, _ in buckets]
        figures.append(
            Figure(
                key,
                title,
                note,
                "bars",
                labels,
                [Series("sessions", [float(c) for c in counts])],
                ["bucket", "sessions", "share"],
                [[label, count, f"{_pct(count, total):.1f}%"] for label, count in zip(labels, counts, strict=True)],
            )
        )
    return figures


def event_types(db: Any) -> Figure:
    rows = _all(db, "SELECT event_type, count(*) FROM ev GROUP BY 1 ORDER BY 2 DESC, 1")
    total = sum(count for _, count in rows)
    shown = rows[:TOP_TYPES]
    if len(rows) > TOP_TYPES:
        shown.append(("(other)", sum(count for _, count in rows[TOP_TYPES:])))
    return Figure(
        "event-types",
        "Event types",
        "Share of valid events by event_type.",
        "hbars",
        [str(name) for name, _ in shown],
        [Series("events", [_pct(count, total) for _, count in shown])],
        ["event type", "events", "share"],
        [[name, count, f"{_pct(count, total):.1f}%"] for name, count in shown],
        unit="%",
    )


def _session_steps(db: Any) -> list[str]:
    """``steps``: each session's event types in order, a repeat of the one before left out; each
    type as its number (1, 2, ...) in the list returned: small integers, where the types' strings
    took twice the memory (a 9.9M-event lake: the report's peak 727 MB with strings, 363 MB now)."""
    db.execute(
        "CREATE TEMP TABLE kinds AS SELECT event_type, (row_number() OVER (ORDER BY event_type))::INTEGER AS code "
        "FROM (SELECT DISTINCT event_type FROM ev WHERE NOT late)"
    )
    db.execute(
        "CREATE TEMP TABLE steps AS SELECT session_id, list_filter(types, lambda x, i: i = 1 OR x != types[i - 1]) "
        "AS path FROM (SELECT session_id, list(code ORDER BY session_seq) AS types FROM ev "
        "JOIN kinds USING (event_type) WHERE NOT late GROUP BY session_id)"
    )
    return [name for (name,) in _all(db, "SELECT event_type FROM kinds ORDER BY code")]


def funnel(db: Any, kinds: list[str], stages: tuple[tuple[str, ...], ...] = DEFAULT_FUNNEL) -> Figure:
    """Sessions that reach each stage in order (the first event of a stage after the stage before).
    ``kinds``: the event types by their number in ``steps`` (a type the lake lacks is 0: never found)."""
    code = {kind: number for number, kind in enumerate(kinds, start=1)}
    inner = "steps"
    previous = None
    for number, types in enumerate(stages):
        rest = "path" if previous is None else f"path[{previous} + 1:]"
        options = [f"list_position({rest}, {code.get(kind, 0)})" for kind in types]
        found = options[0] if len(options) == 1 else f"least({', '.join(options)})"
        # Each stage's position depends on the one before: a subquery per stage.
        inner = f"(SELECT *, {found if previous is None else f'{previous} + {found}'} AS p{number} FROM {inner})"
        previous = f"p{number}"
    counts = [
        int(value) for value in _one(db, f"SELECT {', '.join(f'count(p{i})' for i in range(len(stages)))} FROM {inner}")
    ]
    labels = [" or ".join(types) for types in stages]
    total = _one(db, "SELECT count(*) FROM steps")[0]
    rows = [
        [label, count, f"{_pct(count, total):.1f}%", f"{_pct(count, counts[i - 1]) if i else 100.0:.1f}%"]
        for i, (label, count) in enumerate(zip(labels, counts, strict=True))
    ]
    return Figure(
        "funnel",
        "Funnel: " + " → ".join(labels),
        "Sessions reaching each step after the step before, in event order (of every session with events).",
        "funnel",
        labels,
        [Series("sessions", [float(c) for c in counts])],
        ["step", "sessions", "of all", "of step before"],
        rows,
    )


def paths(db: Any, kinds: list[str]) -> Figure:
    """The most common first steps; ``kinds``: the event types by their number in ``steps``."""
    counted = _all(db, f"SELECT path[1:{PATH_STEPS}], count(*) FROM steps GROUP BY 1")
    routes = [(" → ".join(kinds[step - 1] for step in path), count) for path, count in counted]
    rows = sorted(routes, key=lambda row: (-row[1], row[0]))[:TOP_PATHS]
    total = _one(db, "SELECT count(*) FROM steps")[0]
    return Figure(
        "paths",
        "Most common paths through a session",
        f"A session's first {PATH_STEPS} event types in order (a type repeated in a row counted once).",
        "hbars",
        [str(route) for route, _ in rows],
        [Series("sessions", [_pct(count, total) for _, count in rows])],
        ["path", "sessions", "share"],
        [[route, count, f"{_pct(count, total):.1f}%"] for route, count in rows],
        unit="%",
    )


def close_reasons(db: Any) -> Figure:
    if "close_reason" in _columns(db, "se"):
        rows = _all(db, "SELECT coalesce(close_reason, '(none)'), count(*) FROM se GROUP BY 1 ORDER BY 2 DESC, 1")
    else:
        rows = []
    total = sum(count for _, count in rows)
    return Figure(
        "close-reasons",
        "Why sessions ended",
        "close_reason: a gap over the timeout, an opening event, the maximum duration, or the end of the input.",
        "hbars",
        [str(reason) for reason, _ in rows],
        [Series("sessions", [_pct(count, total) for _, count in rows])],
        ["reason", "sessions", "share"],
        [[reason, count, f"{_pct(count, total):.1f}%"] for reason, count in rows],
        unit="%",
    )


def hours(db: Any) -> Figure:
    rows = dict(_all(db, "SELECT hour(session_start), count(*) FROM se GROUP BY 1"))
    labels = [f"{hour:02d}" for hour in range(24)]
    counts = [int(rows.get(hour, 0)) for hour in range(24)]
    return Figure(
        "session-hours",
        "Sessions by hour of day (UTC)",
        "The hour each session started.",
        "bars",
        labels,
        [Series("sessions", [float(c) for c in counts])],
        ["hour", "sessions"],
        [[label, count] for label, count in zip(labels, counts, strict=True)],
    )


def rejections(db: Any) -> Figure:
    totals = _all(db, "SELECT reason, count(*) FROM rj GROUP BY 1 ORDER BY 2 DESC, 1")
    top = [reason for reason, _ in totals[:TOP_REJECTIONS]]
    by_day: dict[str, dict[str, int]] = {}
    for reason, day, count in _all(db, "SELECT reason, day, count(*) FROM rj GROUP BY 1, 2"):
        name = reason if reason in top else "(other)"
        label = NO_DAY if day is None else str(day)
        cell = by_day.setdefault(label, {})
        cell[name] = cell.get(name, 0) + int(count)
    names = top + (["(other)"] if len(totals) > TOP_REJECTIONS else [])
    labels = sorted(day for day in by_day if day != NO_DAY) + ([NO_DAY] if NO_DAY in by_day else [])
    series = [Series(name, [float(by_day[day].get(name, 0)) for day in labels]) for name in names]
    total = sum(count for _, count in totals)
    return Figure(
        "rejections",
        "Rejected records by reason and day",
        "By the day of the record's own timestamp, where it has a readable one within the report's days.",
        "stacked",
        labels,
        series,
        ["reason", "records", "share"],
        [[reason, count, f"{_pct(count, total):.1f}%"] for reason, count in totals],
    )


def lateness(db: Any) -> Figure:
    """Per day: events that arrived after a later one of their machine, placed, or too late to place."""
    has_arrival = "arrived_late" in _columns(db, "ev")
    arrived = "count(*) FILTER (WHERE arrived_late AND NOT late)" if has_arrival else "0"
    rows = _all(
        db, f"SELECT event_date, count(*), {arrived}, count(*) FILTER (WHERE late) FROM ev GROUP BY 1 ORDER BY 1"
    )
    return Figure(
        "late",
        "Late arrivals per day",
        "Share of each day's events that arrived after a later event of their machine and were placed "
        "(arrived_late), or came too late to place (late: in no session).",
        "lines",
        [str(day) for day, *_ in rows],
        [
            Series("arrived late, placed", [_pct(placed, total) for _, total, placed, _ in rows]),
            Series("late, in no session", [_pct(late, total) for _, total, _, late in rows]),
        ],
        ["day", "events", "arrived late", "share", "late", "share"],
        [
            [str(day), total, placed, f"{_pct(placed, total):.2f}%", late, f"{_pct(late, total):.2f}%"]
            for day, total, placed, late in rows
        ],
        unit="%",
    )


def runs(db: Any) -> Figure:
    """Per run (its ledger): duplicates and late events as shares of its records; the whole lake's,
    whatever the days shown (the lake does not keep duplicates, its ledgers count them)."""
    rows = _all(db, "SELECT run, records, events, duplicates, late, rejected FROM runs ORDER BY run")
    labels = [f"run {run}" for run, *_ in rows]
    return Figure(
        "runs",
        "Duplicates, late and rejected records per run",
        "Each run's duplicates (copies of an event already kept), late events and rejections, as shares of "
        "the records it read: from the runs' ledgers, over the whole lake.",
        "bars",
        labels,
        [
            Series("duplicates", [_pct(duplicates, records) for _, records, _, duplicates, _, _ in rows]),
            Series("late", [_pct(late, records) for _, records, _, _, late, _ in rows]),
            Series("rejected", [_pct(rejected, records) for _, records, _, _, _, rejected in rows]),
        ],
        ["run", "records", "duplicates", "late", "rejected"],
        [
            [
                label,
                records,
                f"{duplicates:,} ({_pct(duplicates, records):.2f}%)",
                f"{late:,} ({_pct(late, records):.2f}%)",
                f"{rejected:,} ({_pct(rejected, records):.2f}%)",
            ]
            for label, (_, records, _, duplicates, late, rejected) in zip(labels, rows, strict=True)
        ],
        unit="%",
    )


def build(db: Any, lake: str, funnel_stages: tuple[tuple[str, ...], ...] = DEFAULT_FUNNEL) -> Report:
    """Every figure, in the page's order (``select_days`` first)."""
    days = _one(db, "SELECT min(event_date), max(event_date) FROM ev")
    kinds = _session_steps(db)
    figures = [
        *daily(db),
        *shapes(db),
        event_types(db),
        funnel(db, kinds, funnel_stages),
        paths(db, kinds),
        close_reasons(db),
        hours(db),
        rejections(db),
        lateness(db),
        runs(db),
    ]
    notes = []
    if days[0] is None:
        notes.append("No event in these days.")
    return Report(lake, None if days[0] is None else (str(days[0]), str(days[1])), headline(db), figures, notes)
