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
