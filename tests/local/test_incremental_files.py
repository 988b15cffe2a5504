"""An incremental run's files each hold one ``output.file_span`` of time, so a restatement rewrites
only the files of the time it touches (issue 11's write amplification). The first run on an empty
lake writes a batch run's files (nothing to restate yet); the runs after it write files of one span.
Driven through the command line; the lake is compared with the plain reference of ``arrival_feeds``
after every run."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from tests.helpers import T0
from tests.local.arrival_feeds import (
    HOUR,
    MINUTE,
    assert_lake_is,
    assert_verifies,
    clean_line,
    events_of_lines,
    reference,
    run_json,
    write_lines,
)

# Six machines, an event every 10 minutes for 8 hours (every hour holds events of every machine),
# in two runs of 4 hours; every gap is 10 minutes: one session per machine, all 8 hours long.
EVENTS = [clean_line(f"m-{m}", f"m{m}-{i:03d}", T0 + i * 10 * MINUTE + m) for i in range(48) for m in range(6)]
RUNS = [EVENTS[: len(EVENTS) // 2], EVENTS[len(EVENTS) // 2 :]]
# Then a late event of machine 0 in the second run's hours: its positions change from 5 h 5 min on.
LATE = [clean_line("m-0", "m0-late", T0 + 5 * HOUR + 5 * MINUTE, "view")]


def state_run(source: Path, lake: Path, state: Path, config: Path) -> dict:
    summary, _ = run_json(source, "--out", lake, "--config", config, "--state", state, "--workers", "0")
    return summary


def ledger(lake: Path, run: int) -> dict:
    return orjson.loads((lake / "_sessionflow" / "ledger" / f"run-{run:05d}.json").read_bytes())


def spans(lake: Path, table: str, column: str, span: int) -> list[tuple[str, set[int]]]:
    """Each file of a table, with the spans of time its rows fall in."""
    return [
        (
            path.relative_to(lake).as_posix(),
            {value // span for value in pq.read_table(path, columns=[column])[column].to_pylist()},
        )
        for path in sorted((lake / table).glob("*/*.parquet"))
    ]


@pytest.mark.parametrize("span", ["1h", "2h"])
def test_each_file_of_an_incremental_run_holds_one_span_of_time(tmp_path: Path, span: str) -> None:
    config = tmp_path / "sessionflow.toml"
    config.write_text(f'[session]\ntimeout = "30m"\nopening_events = []\n[output]\nfile_span = "{span}"\n')
    span_ms = int(span[0]) * HOUR
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    for number, lines in enumerate(RUNS, 1):
        state_run(write_lines(tmp_path / f"run-{number}.jsonl", lines), lake, state, config)
        assert_lake_is(lake, reference([events_of_lines(lines) for lines in RUNS[:number]]))
    first = set(ledger(lake, 1)["files"])
    # Run 2 extends every session, which changes their summaries, not their events: run 1's event
    # file stays; run 2's files each hold one span, as do the session files it wrote.
    events = spans(lake, "events", "timestamp", span_ms)
    assert [found for name, found in events if name in first] == [set(range(T0 // span_ms, (T0 + 4 * HOUR) // span_ms))]
    second = [(name, found) for name, found in events if name not in first]
    assert sorted(min(found) for _, found in second) == list(
        range((T0 + 4 * HOUR) // span_ms, (T0 + 8 * HOUR) // span_ms)
    )
    assert all(len(found) == 1 for _, found in second)
    assert all(len(found) == 1 for _, found in spans(lake, "sessions", "start_ts", span_ms))
    rows = {name: pq.read_metadata(lake / name).num_rows for name, _ in events}
    summary = state_run(write_lines(tmp_path / "run-3.jsonl", LATE), lake, state, config)
    assert summary["tally"]["events"] == 1
    assert_lake_is(lake, reference([*(events_of_lines(lines) for lines in RUNS), events_of_lines(LATE)]))
    assert_verifies(lake)
    # Run 3 rewrites the files of the spans from the one holding 5 h 5 min on (each holds a changed
    # row of m-0), and carries what they held; the files before stay as they are.
    start = (T0 + 5 * HOUR + 5 * MINUTE) // span_ms
    touched = {name for name, found in events if min(found) >= start}
    removed = {name for entry in ledger(lake, 3)["removed"] for name in entry["files"]}
    assert {name for name in removed if name.startswith("events/")} == touched
    assert ledger(lake, 3)["carried"]["events"] == sum(rows[name] for name in touched)
    assert sum(rows[name] for name in touched) == (T0 + 8 * HOUR - start * span_ms) // (10 * MINUTE) * 6
    assert all(len(found) == 1 for name, found in spans(lake, "events", "timestamp", span_ms) if name not in first)


def test_file_span_must_be_a_duration_of_at_most_a_day(tmp_path: Path) -> None:
    from sessionflow.config import Config, ConfigError

    for text in ('"0s"', '"2d"', "12"):
        path = tmp_path / "bad.toml"
        path.write_text(f"[output]\nfile_span = {text}\n")
        with pytest.raises(ConfigError, match=r"output\.file_span"):
            Config.load(path)
    path = tmp_path / "good.toml"
    path.write_text('[output]\nfile_span = "15m"\n')
    assert Config.load(path).output.file_span_ms == 15 * MINUTE


def test_a_restatement_carries_rows_of_files_written_before_events_had_arrived_late(tmp_path: Path) -> None:
    """A lake an older sessionflow wrote has event files without ``arrived_late``: a run that
    restates its sessions reads them as no event arrived late and rewrites them with the column."""
    import duckdb
    import pyarrow as pa

    config = tmp_path / "sessionflow.toml"
    config.write_text('[session]\ntimeout = "30m"\nopening_events = []\n')
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    state_run(write_lines(tmp_path / "run-1.jsonl", RUNS[0] + RUNS[1]), lake, state, config)
    for path in (lake / "events").glob("*/*.parquet"):
        table = pq.read_table(path)
        assert table.column("arrived_late").to_pylist() == [False] * table.num_rows
        pq.write_table(table.drop_columns(["arrived_late"]), path)
    old = {path.relative_to(lake).as_posix() for path in (lake / "events").glob("*/*.parquet")}
    summary = state_run(write_lines(tmp_path / "run-2.jsonl", LATE), lake, state, config)
    assert summary["tally"]["events"] == 1
    removed = {name for entry in ledger(lake, 2)["removed"] for name in entry["files"]}
    assert removed & old, "the late event restated no file of the older run"
    assert_lake_is(lake, reference([*(events_of_lines(lines) for lines in RUNS), events_of_lines(LATE)]))
    assert_verifies(lake)
    for path in (lake / "events").glob("*/*.parquet"):
        if path.relative_to(lake).as_posix() not in old:
            assert pq.read_schema(path).field("arrived_late").type == pa.bool_()
    flags = (
        duckdb.connect()
        .execute(
            f"SELECT event_id, arrived_late FROM read_parquet('{lake}/events/*/*.parquet', union_by_name = true) "
            "WHERE arrived_late IS NOT NULL"
        )
        .fetchall()
    )
    # The carried rows arrived in time; the late one was sent after events hours newer than it.
    assert dict(flags)["m0-late"] is True
    assert {event for event, late in flags if late} == {"m0-late"}
    assert len(flags) > 1
