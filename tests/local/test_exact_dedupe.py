"""Exact dedupe over incremental runs: a copy of any age never becomes a second row (issue 11).

The lake keeps an index of its event ids (``_sessionflow/ids/``): 8-byte hashes of every
``(machine_id, event_id)`` by event day. An incremental run looks its events up there, whatever
their age or the age of the first copy; a missing or stale index is rebuilt from the lake, and
``sessionflow verify`` holds the index to the lake. Driven through the command line; every lake is
compared with the plain reference of ``arrival_feeds`` (first arrival kept, any age).
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import orjson
import pytest

from tests.helpers import T0
from tests.local.arrival_feeds import (
    HOUR,
    MINUTE,
    Rules,
    assert_lake_is,
    assert_verifies,
    clean_line,
    events_of_lines,
    lake_content,
    reference,
    run_json,
    sessionflow,
    write_lines,
)

DAY = 24 * HOUR
# A horizon of an hour: after the first run the clock is T0 + 2 days 5 h, so nothing before
# T0 + 2 days 4 h is placed, and the partitions the run used to look copies up in began on day 3.
CONFIG = '[session]\ntimeout = "30m"\nrestate_horizon = "1h"\n'
RULES = Rules(restate_horizon_ms=HOUR)
# Two events on day 1; four machines reach T0 + 2 d 5 h on day 3 (the clock's quorum is three).
FIRST_RUN = [
    clean_line("m-1", "old-1", T0 + HOUR, "view"),
    clean_line("m-1", "old-2", T0 + 2 * HOUR, "edit"),
    *(clean_line(f"m-{m}", f"m{m}-{i:02d}", T0 + 2 * DAY + i * 10 * MINUTE) for m in range(1, 5) for i in range(31)),
]
# Later copies of day 1's events whose content differs, on days no new event of the run is on:
# one inside the horizon (it would be placed in a session), one before it (it would be written late).
CONFLICTS = [
    clean_line("m-1", "old-1", T0 + 2 * DAY + 4 * HOUR + 30 * MINUTE, "view"),
    clean_line("m-1", "old-2", T0 + DAY + 3 * HOUR, "edit"),
]
# An exact copy of a day-1 event: the same bytes again.
SAME = clean_line("m-1", "old-1", T0 + HOUR, "view")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sessionflow.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def state_run(source: Path, lake: Path, state: Path, config: Path) -> dict:
    summary, _ = run_json(source, "--out", lake, "--config", config, "--state", state, "--workers", "0")
    return summary


def conflicting_rows(lake: Path) -> list[dict]:
    folder = lake / "rejected" / "reason=conflicting_duplicate"
    return [orjson.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_bytes().splitlines()]


def first_run(tmp_path: Path, config: Path) -> tuple[Path, Path]:
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    state_run(write_lines(tmp_path / "run-1.jsonl", FIRST_RUN), lake, state, config)
    assert_lake_is(lake, reference([events_of_lines(FIRST_RUN)], RULES))
    return lake, state


# A second run that places one new event: the first run on a lake with events, so it writes the index.
SECOND_RUN = [clean_line("m-5", "new-1", T0 + 2 * DAY + 5 * HOUR)]


def two_runs(tmp_path: Path, config: Path) -> tuple[Path, Path]:
    lake, state = first_run(tmp_path, config)
    summary = state_run(write_lines(tmp_path / "run-2.jsonl", SECOND_RUN), lake, state, config)
    assert summary["tally"]["events"] == 1
    assert (lake / "_sessionflow" / "ids" / "index.json").is_file()
    return lake, state


def check_copies_rejected(tmp_path: Path, lake: Path, state: Path, config: Path, runs: list[list[bytes]]) -> None:
    """The conflicting copies (and one exact copy) as a later run, after ``runs``: nothing new in the lake."""
    before = lake_content(lake)
    source = write_lines(tmp_path / "copies.jsonl", [*CONFLICTS, SAME])
    summary = state_run(source, lake, state, config)
    tally = summary["tally"]
    assert (tally["events"], tally["late"], tally["duplicates"]) == (0, 0, 1)
    assert tally["rejected"] == {"conflicting_duplicate": 2}
    rows = sorted(conflicting_rows(lake), key=lambda row: row["line"])
    assert [base64.b64decode(row["raw_base64"]) for row in rows] == CONFLICTS
    assert [row["line"] for row in rows] == [1, 2]
    assert lake_content(lake) == before
    fed = [*runs, [*CONFLICTS, SAME]]
    assert_lake_is(lake, reference([events_of_lines(lines) for lines in fed], RULES))
    assert_verifies(lake)


def test_a_conflicting_copy_of_an_event_older_than_the_horizon_is_rejected(tmp_path: Path, config: Path) -> None:
    """The first copies are on day 1, before the horizon and on no day of the new events."""
    lake, state = first_run(tmp_path, config)
    check_copies_rejected(tmp_path, lake, state, config, [FIRST_RUN])


def test_the_id_index_is_rebuilt_from_the_lake_when_missing(tmp_path: Path, config: Path) -> None:
    lake, state = two_runs(tmp_path, config)
    index = lake / "_sessionflow" / "ids"
    shutil.rmtree(index)
    check_copies_rejected(tmp_path, lake, state, config, [FIRST_RUN, SECOND_RUN])
    assert sorted(p.name for p in index.iterdir()) == [
        "event_date=2026-10-05.ids",
        "event_date=2026-10-07.ids",
        "index.json",
    ]


def test_verify_finds_an_index_that_lacks_an_event_and_repair_rebuilds_it(tmp_path: Path, config: Path) -> None:
    lake, state = two_runs(tmp_path, config)
    index = lake / "_sessionflow" / "ids"
    day_1, day_3 = index / "event_date=2026-10-05.ids", index / "event_date=2026-10-07.ids"
    good = day_1.read_bytes()
    # Day 3's hashes under day 1's name: day 1's two events are not in it.
    day_1.write_bytes(day_3.read_bytes())
    done = sessionflow("verify", lake)
    assert done.returncode == 5, done.stdout
    assert b"the event-id index of 2026-10-05 lacks 2 of the day's 2 events" in done.stdout
    done = sessionflow("verify", "--repair", lake)
    assert done.returncode == 0, done.stdout
    assert day_1.read_bytes() == good
    check_copies_rejected(tmp_path, lake, state, config, [FIRST_RUN, SECOND_RUN])


def test_dedupe_memory_bytes_is_the_index_on_disk(tmp_path: Path, config: Path) -> None:
    lake, state = first_run(tmp_path, config)
    summary = state_run(write_lines(tmp_path / "run-2.jsonl", SECOND_RUN), lake, state, config)
    files = (lake / "_sessionflow" / "ids").glob("*.ids")
    assert summary["dedupe_memory_bytes"] == sum(path.stat().st_size for path in files)
    # 8 bytes an event of the lake, and a header of 264 bytes for each of its two days.
    assert summary["dedupe_memory_bytes"] == 8 * (len(FIRST_RUN) + len(SECOND_RUN)) + 2 * 264
