"""The restatement log's pairing, on hand-written before/after event tables, one case per reason."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sessionflow.lake.restatements import COLUMNS, log_file, log_schema, restatement_log


def events(*rows: tuple[str, str, str | None]) -> pa.Table:
    """(machine_id, event_id, session_id) rows."""
    machines, ids, sessions = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table(
        {
            "machine_id": pa.array(machines, pa.string()),
            "event_id": pa.array(ids, pa.string()),
            "session_id": pa.array(sessions, pa.string()),
        }
    )


def log_rows(run: int, old: pa.Table, new: pa.Table, changed: set[str]) -> list[tuple[object, ...]]:
    table = restatement_log(run, old, new, changed)
    assert table.schema == log_schema()
    return [tuple(row.values()) for row in table.to_pylist()]


def test_an_unchanged_session_is_not_logged() -> None:
    old = events(("m1", "e1", "A"), ("m1", "e2", "A"))
    assert log_rows(3, old, old, set()) == []


def test_a_session_whose_summary_changed_is_updated() -> None:
    old = events(("m1", "e1", "A"), ("m1", "e3", "A"), ("m1", "e9", "Z"))
    # e2 placed inside A: its id stays, its summary changes; Z untouched.
    new = events(("m1", "e1", "A"), ("m1", "e2", "A"), ("m1", "e3", "A"), ("m1", "e9", "Z"))
    assert log_rows(4, old, new, {"A"}) == [(4, "m1", "A", "A", "updated")]


def test_an_event_between_two_sessions_merges_them() -> None:
    old = events(("m1", "e1", "A"), ("m1", "e2", "A"), ("m1", "e5", "B"), ("m1", "e6", "B"))
    new = events(("m1", "e1", "A"), ("m1", "e2", "A"), ("m1", "e3", "A"), ("m1", "e5", "A"), ("m1", "e6", "A"))
    assert log_rows(2, old, new, {"A", "B"}) == [(2, "m1", "A", "A", "merged"), (2, "m1", "B", "A", "merged")]


def test_a_session_cut_in_two_is_split() -> None:
    # Events removed from the middle (a range backfill from input without them) leave a gap over timeout.
    old = events(("m1", "e1", "A"), ("m1", "e2", "A"), ("m1", "e3", "A"), ("m1", "e4", "A"))
    new = events(("m1", "e1", "A"), ("m1", "e2", "A"), ("m1", "e4", "C"))
    assert log_rows(5, old, new, {"A"}) == [(5, "m1", "A", "A", "split"), (5, "m1", "A", "C", "split")]


def test_an_earlier_first_event_gives_a_new_id() -> None:
    old = events(("m1", "e2", "A"), ("m1", "e3", "A"))
    new = events(("m1", "e1", "N"), ("m1", "e2", "N"), ("m1", "e3", "N"))
    assert log_rows(7, old, new, {"A"}) == [(7, "m1", "A", "N", "new_first_event")]


def test_machines_are_kept_apart_and_late_events_pair_nothing() -> None:
    # Two machines share event ids; m2's late event now has a session (and is its first).
    old = events(("m1", "e1", "A"), ("m2", "e1", "X"), ("m2", "e2", None))
    new = events(("m1", "e1", "A"), ("m2", "e1", "Y"), ("m2", "e2", "Y"))
    assert log_rows(1, old, new, {"X"}) == [(1, "m2", "X", "Y", "new_first_event")]


def test_brand_new_sessions_and_no_events_log_nothing() -> None:
    assert log_rows(1, events(), events(("m1", "e1", "A")), set()) == []
    assert log_rows(1, events(), events(), set()) == []


@pytest.mark.parametrize("run", [1, 12345])
def test_the_log_file_is_named_after_its_run(run: int) -> None:
    assert log_file(run) == f"restatements/part-{run:05d}-00000.parquet"
    assert [name for name, _ in COLUMNS] == log_schema().names


def test_the_log_round_trips_through_parquet(tmp_path: Path) -> None:
    old = events(("m1", "e2", "A"))
    new = events(("m1", "e1", "N"), ("m1", "e2", "N"))
    path = tmp_path / "log.parquet"
    pq.write_table(restatement_log(9, old, new, {"A"}), path)
    assert pq.read_table(path).to_pylist() == [
        {"run": 9, "machine_id": "m1", "old_session_id": "A", "new_session_id": "N", "reason": "new_first_event"}
    ]
