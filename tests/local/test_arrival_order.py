"""However the input arrives, the lake is the batch result (issue 11).

Driven through the command line like a user (out-of-order file names, shuffled lines, late
arrivals over incremental runs, feeds given twice, conflicting copies, late events that merge
sessions or come first, events older than the restate horizon) and through the runner for the
property test. Every lake is compared with the plain reference of ``arrival_feeds``, never with a
count the run reports about itself.
"""

from __future__ import annotations

import base64
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.core.ids import session_id
from sessionflow.runtimes.local import runner
from tests.helpers import NOW, T0
from tests.local.arrival_feeds import (
    HOUR,
    MINUTE,
    Event,
    Rules,
    assert_lake_is,
    assert_verifies,
    clean_line,
    delay_some,
    events_of_lines,
    lake_content,
    parse_line,
    read_lines,
    reference,
    run_json,
    sessionflow,
    shuffled,
    sql,
    table,
    write_lines,
)

# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("arrival")


@pytest.fixture(scope="module")
def config_file(workdir: Path) -> Path:
    return write_config(workdir / "sessionflow.toml", EXAMPLE_CONFIG)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def feed_lines(workdir: Path) -> list[bytes]:
    """A generated feed (dirty: invalid records, retries, seconds, upper case), in arrival order."""
    path = workdir / "generated.jsonl"
    done = sessionflow("generate", "--events", "30000", "--machines", "150", "--seed", "11", "-o", path)
    assert done.returncode == 0, done.stderr
    return read_lines(path)


@pytest.fixture(scope="module")
def in_order_lake(workdir: Path, feed_lines: list[bytes], config_file: Path) -> Path:
    lake = workdir / "in-order-lake"
    run_json(write_lines(workdir / "in-order.jsonl", feed_lines), "--out", lake, "--config", config_file)
    return lake


def no_event_late(lake: Path) -> None:
    assert sql(f"SELECT count(*) FILTER (WHERE late) FROM {table(lake, 'events')}") == [(0,)]


def state_run(*inputs: str | Path, lake: Path, state: Path, config: Path, flags: tuple[str, ...] = ()) -> Any:
    return run_json(*inputs, "--out", lake, "--config", config, "--state", state, "--workers", "0", *flags)


# -- 1. one-shot runs are order-free -----------------------------------------------------------------


def test_one_shot_in_order_is_the_reference(in_order_lake: Path, feed_lines: list[bytes]) -> None:
    """The baseline the out-of-order runs are held to: the in-order run equals the reference."""
    assert_lake_is(in_order_lake, reference([events_of_lines(feed_lines)]))
    no_event_late(in_order_lake)
    assert_verifies(in_order_lake)


def test_one_shot_over_files_whose_names_sort_out_of_time_order(
    workdir: Path, feed_lines: list[bytes], config_file: Path, in_order_lake: Path
) -> None:
    folder = workdir / "days"
    folder.mkdir()
    third = len(feed_lines) // 3
    # Read as day-10, day-8, day-9: the newest third first.
    for name, part in (("day-8", feed_lines[:third]), ("day-9", feed_lines[third : 2 * third])):
        write_lines(folder / f"{name}.jsonl", part)
    write_lines(folder / "day-10.jsonl", feed_lines[2 * third :])
    lake = workdir / "days-lake"
    summary, _ = run_json(folder, "--out", lake, "--config", config_file)
    # The folder's files in name order: the newest third arrives first.
    arrival = feed_lines[2 * third :] + feed_lines[:third] + feed_lines[third : 2 * third]
    assert_lake_is(lake, reference([events_of_lines(arrival)]))
    assert summary["tally"]["late"] == 0
    no_event_late(lake)
    # The same lake but for what records the arrival order (the reference checked that too).
    assert lake_content(lake, arrival=False) == lake_content(in_order_lake, arrival=False)
    assert lake_content(lake) != lake_content(in_order_lake)
    assert_verifies(lake)


def test_one_shot_over_shuffled_lines(
    workdir: Path, feed_lines: list[bytes], config_file: Path, in_order_lake: Path
) -> None:
    lines = shuffled(feed_lines, seed=3)
    lake = workdir / "shuffled-lake"
    summary, _ = run_json(write_lines(workdir / "shuffled.jsonl", lines), "--out", lake, "--config", config_file)
    assert_lake_is(lake, reference([events_of_lines(lines)]))
    assert summary["tally"]["late"] == 0
    no_event_late(lake)
    assert lake_content(lake, arrival=False) == lake_content(in_order_lake, arrival=False)
    assert_verifies(lake)


# -- 2. incremental runs place late events --------------------------------------------------------------


def test_incremental_runs_with_one_percent_very_late_equal_the_batch_after_every_run(
    workdir: Path, feed_lines: list[bytes], config_file: Path
) -> None:
    lines = delay_some(feed_lines, share=0.01, low_ms=10 * MINUTE, high_ms=12 * HOUR, seed=7)
    assert lines != feed_lines and sorted(lines) == sorted(feed_lines)
    lake, state = workdir / "late-lake", workdir / "late.state"
    third = len(lines) // 3
    parts = [lines[:third], lines[third : 2 * third], lines[2 * third :]]
    so_far: list[bytes] = []
    for number, part in enumerate(parts, 1):
        so_far += part
        state_run(write_lines(workdir / f"late-part-{number}.jsonl", part), lake=lake, state=state, config=config_file)
        assert_lake_is(lake, reference([events_of_lines(so_far)]))
        no_event_late(lake)
        assert_verifies(lake)
    empty = workdir / "nothing-new"
    empty.mkdir()
    summary, _ = state_run(empty, lake=lake, state=state, config=config_file, flags=("--flush", "--allow-empty"))
    assert summary["tally"]["events"] == 0
    assert_lake_is(lake, reference([events_of_lines(so_far)]))
    assert_verifies(lake)


# -- 3. the same input twice adds nothing --------------------------------------------------------------


def valid_only(lines: list[bytes]) -> list[bytes]:
    """The lines that are valid events (with the feed's own retries), so a second feed is all duplicates."""
    return [line for line in lines if parse_line(line) is not None]


def test_the_same_file_again_under_another_name_is_all_duplicates(
    workdir: Path, feed_lines: list[bytes], config_file: Path
) -> None:
    lines = valid_only(feed_lines[:20_000])
    first = write_lines(workdir / "again-a.jsonl", lines)
    second = workdir / "again-b.jsonl"
    shutil.copyfile(first, second)
    lake, state = workdir / "again-lake", workdir / "again.state"
    state_run(first, lake=lake, state=state, config=config_file)
    expected = reference([events_of_lines(lines)])
    assert_lake_is(lake, expected)
    before = lake_content(lake)
    summary, _ = state_run(second, lake=lake, state=state, config=config_file)
    tally = summary["tally"]
    assert tally["records"] == len(lines)
    assert (tally["duplicates"], tally["events"], sum(tally["rejected"].values())) == (len(lines), 0, 0)
    assert lake_content(lake) == before
    assert_lake_is(lake, expected)
    assert_verifies(lake)


def test_the_same_bytes_twice_on_stdin_are_all_duplicates(
    workdir: Path, feed_lines: list[bytes], config_file: Path
) -> None:
    lines = valid_only(feed_lines[:20_000])
    data = b"".join(line + b"\n" for line in lines)
    lake, state = workdir / "stdin-lake", workdir / "stdin.state"
    args = ("-", "--out", lake, "--config", config_file, "--state", state, "--workers", "0")
    run_json(*args, stdin=data)
    expected = reference([events_of_lines(lines)])
    assert_lake_is(lake, expected)
    before = lake_content(lake)
    summary, _ = run_json(*args, stdin=data)
    tally = summary["tally"]
    assert (tally["records"], tally["duplicates"], tally["events"]) == (len(lines), len(lines), 0)
    assert lake_content(lake) == before
    assert_verifies(lake)


# -- 4. a copy whose content differs is rejected, raw bytes kept --------------------------------------


def conflicting_rows(lake: Path) -> list[dict[str, Any]]:
    folder = lake / "rejected" / "reason=conflicting_duplicate"
    return [orjson.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_bytes().splitlines()]


FIRST_COPIES = [
    clean_line("m-1", "e-1", T0, "app_open"),
    clean_line("m-1", "e-2", T0 + MINUTE, "view"),
    clean_line("m-1", "e-3", T0 + 2 * MINUTE, "edit"),
    clean_line("m-1", "e-4", T0 + 3 * MINUTE, "save"),
]
SAME_COPY = clean_line("m-1", "e-2", T0 + MINUTE, "view")
# Another type at the same time; and another time that would sort first.
CONFLICTS = [clean_line("m-1", "e-3", T0 + 2 * MINUTE, "print"), clean_line("m-1", "e-4", T0 - HOUR, "view")]


def check_conflicts_rejected(lake: Path, source: Path, first_line: int, summary: dict[str, Any]) -> None:
    rows = sorted(conflicting_rows(lake), key=lambda row: row["line"])
    assert [base64.b64decode(row["raw_base64"]) for row in rows] == CONFLICTS
    assert [row["line"] for row in rows] == [first_line, first_line + 1]
    assert all(Path(row["source"]).name == source.name for row in rows)
    tally = summary["tally"]
    assert tally["rejected"] == {"conflicting_duplicate": 2}
    assert tally["duplicates"] == 1
    assert_lake_is(lake, reference([events_of_lines(FIRST_COPIES)]))
    # The first copies are the ones in the lake, whole.
    assert sql(f"SELECT event_id, event_type, timestamp FROM {table(lake, 'events')} ORDER BY event_id") == [
        ("e-1", "app_open", T0),
        ("e-2", "view", T0 + MINUTE),
        ("e-3", "edit", T0 + 2 * MINUTE),
        ("e-4", "save", T0 + 3 * MINUTE),
    ]
    assert_verifies(lake)


def test_a_conflicting_copy_in_one_run_is_rejected(workdir: Path, config_file: Path) -> None:
    source = write_lines(workdir / "conflict.jsonl", [*FIRST_COPIES, SAME_COPY, *CONFLICTS])
    lake = workdir / "conflict-lake"
    summary, _ = run_json(source, "--out", lake, "--config", config_file)
    assert summary["tally"]["events"] == 4
    check_conflicts_rejected(lake, source, len(FIRST_COPIES) + 2, summary)


def test_a_conflicting_copy_in_a_later_run_is_rejected(workdir: Path, config_file: Path) -> None:
    lake, state = workdir / "conflict-runs-lake", workdir / "conflict-runs.state"
    state_run(write_lines(workdir / "conflict-1.jsonl", FIRST_COPIES), lake=lake, state=state, config=config_file)
    source = write_lines(workdir / "conflict-2.jsonl", [SAME_COPY, *CONFLICTS])
    summary, _ = state_run(source, lake=lake, state=state, config=config_file)
    assert summary["tally"]["events"] == 0
    check_conflicts_rejected(lake, source, 2, summary)


# -- 5. late events restate sessions: merged, new first event -----------------------------------------


def test_late_events_merge_sessions_and_come_first_with_a_restatement_log(workdir: Path, config_file: Path) -> None:
    # m-a: two sessions 40 min apart; m-b: one session. Then a bridge for m-a, an earlier first for m-b.
    first_run = [
        ("m-a", "a1", T0),
        ("m-a", "a2", T0 + 10 * MINUTE),
        ("m-a", "a3", T0 + 50 * MINUTE),
        ("m-a", "a4", T0 + 60 * MINUTE),
        ("m-b", "b1", T0 + 100 * MINUTE),
        ("m-b", "b2", T0 + 110 * MINUTE),
    ]
    second_run = [("m-a", "a5", T0 + 30 * MINUTE), ("m-b", "b0", T0 + 80 * MINUTE)]
    runs = [[clean_line(*event) for event in first_run], [clean_line(*event) for event in second_run]]
    lake, state = workdir / "restate-lake", workdir / "restate.state"
    state_run(write_lines(workdir / "restate-1.jsonl", runs[0]), lake=lake, state=state, config=config_file)
    assert_lake_is(lake, reference([events_of_lines(runs[0])]))
    state_run(write_lines(workdir / "restate-2.jsonl", runs[1]), lake=lake, state=state, config=config_file)
    assert_lake_is(lake, reference([events_of_lines(runs[0] + runs[1])]))
    assert_verifies(lake)

    a, b = session_id("m-a", T0, "a1"), session_id("m-a", T0 + 50 * MINUTE, "a3")
    old_c, new_c = session_id("m-b", T0 + 100 * MINUTE, "b1"), session_id("m-b", T0 + 80 * MINUTE, "b0")
    assert {row[0] for row in sql(f"SELECT session_id FROM {table(lake, 'sessions')}")} == {a, new_c}
    log = sql(
        "SELECT run, machine_id, old_session_id, new_session_id, reason "
        f"FROM read_parquet('{lake}/restatements/*.parquet') ORDER BY ALL"
    )
    assert (2, "m-a", b, a, "merged") in log
    assert (2, "m-b", old_c, new_c, "new_first_event") in log
    # Every old id of m-a now reads as the one merged session; nothing else is restated.
    assert {(row[2], row[3]) for row in log if row[1] == "m-a"} == {(a, a), (b, a)}
    assert [row for row in log if row[1] == "m-b"] == [(2, "m-b", old_c, new_c, "new_first_event")]
    ledger = orjson.loads((lake / "_sessionflow" / "ledger" / "run-00002.json").read_bytes())
    assert any(name.startswith("restatements/") for name in ledger["files"])
    assert ledger["restatements"] == len(log)


# -- 6. older than the restate horizon: written late, counted, warned ---------------------------------


def test_an_event_older_than_the_restate_horizon_is_late(workdir: Path) -> None:
    config = write_config(workdir / "horizon.toml", '[session]\ntimeout = "30m"\nrestate_horizon = "1h"\n')
    # Four machines reach T0 + 5h, so the quorum clock (3 machines) is T0 + 5h after the first run.
    first_run = [clean_line(f"m-{m}", f"m{m}-{i:02d}", T0 + i * 10 * MINUTE) for m in range(1, 5) for i in range(31)]
    very_late = clean_line("m-1", "m1-late", T0 + 2 * HOUR + 5 * MINUTE)  # older than T0 + 4h
    in_horizon = clean_line("m-5", "m5-new", T0 + 4 * HOUR + 30 * MINUTE)
    lake, state = workdir / "horizon-lake", workdir / "horizon.state"
    state_run(write_lines(workdir / "horizon-1.jsonl", first_run), lake=lake, state=state, config=config)
    second_run = [very_late, in_horizon]
    summary, stderr = state_run(
        write_lines(workdir / "horizon-2.jsonl", second_run), lake=lake, state=state, config=config
    )
    assert summary["tally"]["late"] == 1
    assert "late" in stderr.lower()
    rules = Rules(restate_horizon_ms=HOUR)
    expected = reference([events_of_lines(first_run), events_of_lines(second_run)], rules)
    assert expected.late == {("m-1", "m1-late")}
    assert_lake_is(lake, expected)
    assert sql(
        "SELECT session_id, session_seq, ms_since_prev, late, arrived_late "
        f"FROM {table(lake, 'events')} WHERE event_id = 'm1-late'"
    ) == [(None, None, None, True, True)]
    assert_verifies(lake)


# -- 7. the property: any permutation, any split into runs --------------------------------------------


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Event], list[int]]:
    """Valid events of 2-3 machines within 4 hours, some sent twice, in any order, and where runs end."""
    machines = draw(st.integers(2, 3))
    count = draw(st.integers(1, 30))
    events = [
        Event(
            f"m-{draw(st.integers(0, machines - 1))}",
            f"e-{i:02d}",
            # A 5-minute grid: equal timestamps and gaps of exactly the timeout happen.
            T0 + draw(st.integers(0, 48)) * 5 * MINUTE,
            draw(st.sampled_from(("view", "edit", "app_open"))),
            draw(st.sampled_from((None, "linux", "windows"))),
            draw(st.sampled_from((None, "d-1", "d-2"))),
        )
        for i in range(count)
    ]
    copies = draw(st.lists(st.sampled_from(events), max_size=40 - count))
    order = draw(st.permutations(events + copies))
    cuts = sorted(draw(st.lists(st.integers(0, len(order)), max_size=3)))
    return list(order), cuts


@settings(max_examples=25, deadline=None)
@given(arrivals())
def test_any_arrival_order_and_any_split_into_runs_give_the_batch(case: tuple[list[Event], list[int]]) -> None:
    order, cuts = case
    bounds = [0, *cuts, len(order)]
    parts = [order[start:end] for start, end in itertools.pairwise(bounds) if end > start]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        lake, state = root / "lake", root / "state.json"
        for number, part in enumerate(parts, 1):
            lines = [clean_line(e.machine_id, e.event_id, e.timestamp, e.event_type, e.os, e.document_id) for e in part]
            source = write_lines(root / f"run-{number}.jsonl", lines)
            runner.run([str(source)], lake, Config(), state_path=state, now_ms=NOW, workers=0)
        assert_lake_is(lake, reference([order]))
