"""An incremental run's files each hold one ``output.file_span`` of time, so a restatement rewrites
only the files of the time it touches (issue 11's write amplification). Driven through the command
line; the lake is compared with the plain reference of ``arrival_feeds`` after every run."""

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

# Six machines, an event every 10 minutes for 8 hours: every hour holds events of every machine.
FIRST_RUN = [clean_line(f"m-{m}", f"m{m}-{i:03d}", T0 + i * 10 * MINUTE + m) for i in range(48) for m in range(6)]
# Machine 0 again, 10 minutes after its last event: the session it extends started 7 h 50 min
# after T0 (every gap is 10 minutes: one session per machine, from T0 to T0 + 7 h 50 min).
LATE = [clean_line("m-0", "m0-late", T0 + 3 * HOUR + 5 * MINUTE, "view")]


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
    state_run(write_lines(tmp_path / "run-1.jsonl", FIRST_RUN), lake, state, config)
    events = spans(lake, "events", "timestamp", span_ms)
    rows = {name: pq.read_metadata(lake / name).num_rows for name, _ in events}
    assert len(events) == 8 * HOUR // span_ms
    assert all(len(found) == 1 for _, found in events)
    assert all(len(found) == 1 for _, found in spans(lake, "sessions", "start_ts", span_ms))
    # A late event inside machine 0's session: it changes that session's positions from 3 h 5 min
    # on, so the files of the spans from there to the session's end are rewritten, not the others.
    summary = state_run(write_lines(tmp_path / "run-2.jsonl", LATE), lake, state, config)
    assert summary["tally"]["events"] == 1
    assert_lake_is(lake, reference([events_of_lines(FIRST_RUN), events_of_lines(LATE)]))
    assert_verifies(lake)
    removed = {name for entry in ledger(lake, 2)["removed"] for name in entry["files"]}
    # The spans from the one holding 3 h 5 min on: each file of them holds a changed row of m-0.
    first = (T0 + 3 * HOUR + 5 * MINUTE) // span_ms
    touched = {name for name, found in events if min(found) >= first}
    assert {name for name in removed if name.startswith("events/")} == touched
    assert len(touched) < len(events)
    # What the run wrote again is what those files held (six events a machine an hour, from the
    # first touched span's start); the hours before it stay as they are.
    carried = ledger(lake, 2)["carried"]["events"]
    assert carried == sum(rows[name] for name in touched) == (T0 + 8 * HOUR - first * span_ms) // (10 * MINUTE) * 6
    # The files the run wrote hold one span each too.
    assert all(len(found) == 1 for _, found in spans(lake, "events", "timestamp", span_ms))


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
