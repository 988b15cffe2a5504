"""The report's numbers against the lake's files read plainly (pyarrow and Python, not DuckDB), and
the command around it: a day range, a lake without events, mistakes with their exit codes."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

from sessionflow.report import figures
from sessionflow.report.commands import write_report
from sessionflow.report.lake_db import open_lake


def _rows(lake: Path, table: str, columns: list[str]) -> list[dict[str, Any]]:
    data = ds.dataset(lake / table, format="parquet", partitioning="hive").to_table(columns=columns)
    return data.to_pylist()


def _report(lake: Path, first: date | None = None, last: date | None = None) -> figures.Report:
    db, _ = open_lake(lake)
    figures.select_days(db, first, last)
    return figures.build(db, str(lake))


def _figure(report: figures.Report, key: str) -> figures.Figure:
    return next(figure for figure in report.figures if figure.key == key)


def _path(types: list[str]) -> list[str]:
    """A session's event types, a repeat of the one before left out."""
    return [kind for kind, _ in itertools.groupby(types)]


def _reaches(path: list[str], stages: tuple[tuple[str, ...], ...]) -> int:
    """How many stages a path reaches, each after the one before."""
    position = 0
    for reached, stage in enumerate(stages):
        found = next((i for i in range(position, len(path)) if path[i] in stage), None)
        if found is None:
            return reached
        position = found + 1
    return len(stages)


def test_the_figures_are_the_lake_read_plainly(lake: Path) -> None:
    events = _rows(lake, "events", ["event_date", "machine_id", "session_id", "session_seq", "event_type", "late"])
    sessions = _rows(
        lake, "sessions", ["session_date", "duration_ms", "event_count", "close_reason", "session_start", "session_id"]
    )
    report = _report(lake)

    per_day = Counter(str(e["event_date"]) for e in events)
    starts = Counter(str(s["session_date"]) for s in sessions)
    machines = {day: len({e["machine_id"] for e in events if str(e["event_date"]) == day}) for day in per_day}
    assert _figure(report, "events-per-day").rows == [[day, per_day[day]] for day in sorted(per_day)]
    assert _figure(report, "sessions-per-day").rows == [[day, starts[day], machines[day]] for day in sorted(per_day)]
    assert len(per_day) >= 2

    durations = [s["duration_ms"] for s in sessions]
    bucketed = [
        sum(1 for d in durations if (low is None or d >= low) and (high is None or d < high))
        for low, (_, high) in zip(
            [None, *(h for _, h in figures.DURATION_BUCKETS[:-1])], figures.DURATION_BUCKETS, strict=True
        )
    ]
    assert [row[1] for row in _figure(report, "session-duration").rows] == bucketed
    assert sum(bucketed) == len(sessions)

    reasons = Counter(s["close_reason"] for s in sessions)
    assert {row[0]: row[1] for row in _figure(report, "close-reasons").rows} == dict(reasons)
    assert set(reasons) >= {"timeout", "opening_event", "end_of_input"}

    types = Counter(e["event_type"] for e in events)
    shown = {row[0]: row[1] for row in _figure(report, "event-types").rows}
    assert all(shown[name] == count for name, count in types.most_common(figures.TOP_TYPES))

    ordered: dict[str, list[tuple[int, str]]] = {}
    for e in events:
        if not e["late"]:
            ordered.setdefault(e["session_id"], []).append((e["session_seq"], e["event_type"]))
    paths = {sid: _path([kind for _, kind in sorted(steps)]) for sid, steps in ordered.items()}
    reached = Counter(_reaches(path, figures.DEFAULT_FUNNEL) for path in paths.values())
    funnel = [sum(n for stages, n in reached.items() if stages > k) for k in range(len(figures.DEFAULT_FUNNEL))]
    assert [row[1] for row in _figure(report, "funnel").rows] == funnel
    assert funnel[0] > funnel[-1] > 0

    routes = Counter(" → ".join(path[: figures.PATH_STEPS]) for path in paths.values())
    shown_routes = [(row[0], row[1]) for row in _figure(report, "paths").rows]
    assert [count for _, count in shown_routes] == sorted((n for _, n in routes.most_common()), reverse=True)[
        : figures.TOP_PATHS
    ]
    assert all(routes[route] == count for route, count in shown_routes)

    rejected = Counter(
        orjson.loads(line)["reason"]
        for path in lake.glob("rejected/*/*.jsonl")
        for line in path.read_bytes().splitlines()
    )
    assert {row[0]: row[1] for row in _figure(report, "rejections").rows} == dict(rejected)

    hours = Counter(s["session_start"].hour for s in sessions)
    assert [row[1] for row in _figure(report, "session-hours").rows] == [hours[h] for h in range(24)]

    headline = {label: value for label, value, _ in report.headline}
    assert headline["events"] == f"{len(events):,}" and headline["sessions"] == f"{len(sessions):,}"


def test_late_arrivals_and_duplicates_are_counted_from_the_events_and_the_ledgers(lake: Path) -> None:
    events = _rows(lake, "events", ["event_date", "late", "arrived_late"])
    ledgers = [orjson.loads(p.read_bytes()) for p in lake.glob("_sessionflow/ledger/run-*.json")]
    report = _report(lake)
    placed = Counter(str(e["event_date"]) for e in events if e["arrived_late"] and not e["late"])
    assert {row[0]: row[2] for row in _figure(report, "late").rows} == {day: placed[day] for day in placed}
    assert sum(placed.values()) > 0
    (run,) = _figure(report, "runs").rows
    tally = ledgers[0]["tally"]
    duplicates = tally["duplicates"]
    assert run[:3] == ["run 1", tally["records"], f"{duplicates:,} ({100 * duplicates / tally['records']:.2f}%)"]
    assert duplicates > 0


def test_a_day_range_shows_those_days_only(lake: Path) -> None:
    days = sorted({str(e["event_date"]) for e in _rows(lake, "events", ["event_date"])})
    first = date.fromisoformat(days[1])
    report = _report(lake, first, first)
    assert report.days == (days[1], days[1])
    assert [row[0] for row in _figure(report, "events-per-day").rows] == [days[1]]
    sessions = [s for s in _rows(lake, "sessions", ["session_date"]) if str(s["session_date"]) == days[1]]
    assert sum(row[1] for row in _figure(report, "close-reasons").rows) == len(sessions)
    assert all(
        row[0] in (days[1], figures.NO_DAY) for row in [[label] for label in _figure(report, "rejections").labels]
    )


def sessionflow(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sessionflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_the_command_writes_the_page_and_prints_where(lake: Path, tmp_path: Path) -> None:
    target = tmp_path / "pages" / "lake.html"
    done = sessionflow("report", lake, "-o", target, "--from", "2026-10-05", "--funnel", "app_open,doc_open,save|share")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target.resolve())
    text = target.read_text(encoding="utf-8")
    assert "Funnel: app_open → doc_open → save or share" in text
    assert text.count('<svg class="chart"') >= 6


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["report", "{missing}"], 3, "no such folder"),
        (["report", "{lake}", "-o", "{tmp}"], 2, "is a folder"),
        (["report", "{lake}", "--from", "2026-10-07", "--to", "2026-10-05"], 2, "is after --to"),
        (["report", "{lake}", "--from", "7 Oct"], 2, "YYYY-MM-DD"),
        (["report", "{tmp}"], 3, "not a sessionflow lake"),
    ],
)
def test_mistakes_exit_with_their_code(
    lake: Path, tmp_path: Path, arguments: list[str], code: int, message: str
) -> None:
    values = {"lake": lake, "tmp": tmp_path, "missing": tmp_path / "nothing"}
    done = sessionflow(*(argument.format(**values) for argument in arguments))
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_lake_without_events_still_reports(tmp_path: Path) -> None:
    feed = tmp_path / "bad.jsonl"
    feed.write_bytes(b'{"not": "an event"}\n[1, 2]\n')
    lake = tmp_path / "lake"
    done = sessionflow("run", feed, "--out", lake, "-q")
    assert done.returncode == 6  # every record rejected
    page = write_report(lake, tmp_path / "report.html").path
    text = page.read_text(encoding="utf-8")
    assert "no events" in text and "No event in these days." in text
    rejected = _figure(_report(lake), "rejections")
    assert {row[0]: row[1] for row in rejected.rows} == {"missing_field": 1, "not_an_object": 1}
