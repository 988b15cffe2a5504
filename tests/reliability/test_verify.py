"""`sessionflow verify`: passes on the lakes runs write, fails (exit 5) on a corrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from sessionflow.cli import main
from sessionflow.exitcodes import EXIT_VERIFY
from tests.reliability.lakes import write_config, write_feed_parts


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A lake of three runs with state (the last one flushing), and one written in a single run."""
    folder = tmp_path_factory.mktemp("verify")
    feed = write_feed_parts(folder, events=3_000, machines=30, seed=9, parts=3)
    config = str(write_config(folder))
    state = str(folder / "state.json")
    for index, part in enumerate(feed):
        flush = ["--flush"] if index == 2 else []
        assert (
            main(["run", str(part), "--out", str(folder / "hourly"), "-c", config, "--state", state, "-q", *flush]) == 0
        )
    assert main(["run", *map(str, feed), "--out", str(folder / "single"), "-c", config, "-q"]) == 0
    # After the second run, sessions are still open in the state: verify must accept that too.
    partial = folder / "partial"
    state2 = str(folder / "state2.json")
    for part in feed[:2]:
        assert main(["run", str(part), "--out", str(partial), "-c", config, "--state", state2, "-q"]) == 0
    return {"hourly": folder / "hourly", "single": folder / "single", "partial": partial}


@pytest.mark.parametrize("name", ["hourly", "single", "partial"])
def test_verify_passes_on_the_lakes_runs_write(
    lakes: dict[str, Path], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(lakes[name]), "--json"]) == 0
    verdict = orjson.loads(capsys.readouterr().out)
    assert verdict["ok"] and verdict["runs"] == {"hourly": 3, "single": 1, "partial": 2}[name]
    assert verdict["files"] > 10


def corrupted(lakes: dict[str, Path], tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(lakes["hourly"], lake)
    return lake


def verify_fails(lake: Path, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    assert main(["verify", str(lake)]) == EXIT_VERIFY
    report = capsys.readouterr().out
    for text in expected:
        assert text in report, report
    assert "verify: FAILED" in report
    return report


def test_a_deleted_file_is_found(lakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = corrupted(lakes, tmp_path)
    victim = sorted((lake / "events").rglob("*.parquet"))[0]
    victim.unlink()
    verify_fails(
        lake, capsys, f"{victim.relative_to(lake).as_posix()} is listed by run 1 but missing", "its events files hold"
    )


def test_a_duplicated_file_is_found(lakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = corrupted(lakes, tmp_path)
    original = sorted((lake / "sessions").rglob("*.parquet"))[0]
    copy = original.with_name("part-copy.parquet")
    shutil.copy(original, copy)
    verify_fails(lake, capsys, "part-copy.parquet is in the lake but no ledger lists it", "summary rows")


def test_a_file_from_nowhere_is_found(
    lakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = corrupted(lakes, tmp_path)
    stray = lake / "rejected" / "reason=malformed_json" / "part-99999-00000.jsonl"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text('{"reason": "malformed_json"}\n')
    verify_fails(lake, capsys, "part-99999-00000.jsonl is in the lake but no ledger lists it")


def test_a_ledger_that_does_not_add_up_is_found(
    lakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = corrupted(lakes, tmp_path)
    path = lake / "_sessionflow" / "ledger" / "run-00002.json"
    ledger = orjson.loads(path.read_bytes())
    ledger["tally"]["records"] += 1
    path.write_bytes(orjson.dumps(ledger))
    verify_fails(lake, capsys, "run 2: ")


def test_a_missing_ledger_is_found(lakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = corrupted(lakes, tmp_path)
    (lake / "_sessionflow" / "ledger" / "run-00002.json").unlink()
    verify_fails(lake, capsys, "ledgers of run(s) [2] are missing", "no ledger lists it")


def test_a_folder_that_is_no_lake_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    verify_fails(tmp_path, capsys, "not a lake written by sessionflow")


def test_a_removal_a_ledger_claims_must_add_up(
    lakes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that removed files of earlier runs (a range backfill) names them with their rows: a
    removal counted wrong, or of a file the earlier run never listed, is a finding."""
    lake = corrupted(lakes, tmp_path)
    path = lake / "_sessionflow" / "ledger" / "run-00003.json"
    ledger = orjson.loads(path.read_bytes())
    run_1 = orjson.loads((lake / "_sessionflow" / "ledger" / "run-00001.json").read_bytes())
    # A rejected file: the lake's runs never rewrite those (restating runs may have rewritten the others).
    gone = next(name for name in run_1["files"] if name.startswith("rejected/") and (lake / name).exists())
    (lake / gone).unlink()
    claim = {"run": 1, "files": [gone, "events/event_date=2000-01-01/never.parquet"], "sessions": 0}
    ledger["removed"] = [*ledger.get("removed", []), claim]
    path.write_bytes(orjson.dumps(ledger))
    report = verify_fails(
        lake,
        capsys,
        "run 3 removed events/event_date=2000-01-01/never.parquet of run 1, which that run did not list",
        "run 1: its rejected files hold",
    )
    assert f"{gone} is listed by run 1 but missing" not in report  # removed by design, not lost


def test_sessions_of_one_instant_are_numbered_by_their_first_events_whatever_the_row_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An event and an opening event of one machine at the same millisecond make two sessions of
    that instant (start and end equal): the first is the one whose event sorts first (by event_id),
    and verify holds the lake to that in whatever order the sessions' rows are stored."""
    import pyarrow.parquet as pq

    from tests.helpers import T0
    from tests.local.arrival_feeds import clean_line, write_lines

    lines = []
    for machine in range(20):
        ts = T0 + machine * 3_600_000
        lines += [clean_line(f"m-{machine}", "a", ts, "view"), clean_line(f"m-{machine}", "b", ts, "app_open")]
    lake = tmp_path / "lake"
    source = write_lines(tmp_path / "ties.jsonl", lines)
    assert main(["run", str(source), "--out", str(lake), "-q"]) == 0
    sessions = pq.read_table(lake / "sessions", columns=["machine_id", "start_ts", "end_ts", "session_number"])
    assert sessions.num_rows == 40
    assert sorted(sessions.column("session_number").to_pylist()) == [1] * 20 + [2] * 20
    events = pq.read_table(lake / "events", columns=["event_id", "session_id"]).to_pylist()
    numbers = dict(
        zip(
            pq.read_table(lake / "sessions", columns=["session_id"]).column("session_id").to_pylist(),
            sessions.column("session_number").to_pylist(),
            strict=True,
        )
    )
    assert {(event["event_id"], numbers[event["session_id"]]) for event in events} == {("a", 1), ("b", 2)}
    assert main(["verify", str(lake)]) == 0
    # The same rows stored in the other order: readers must not care, nor must verify.
    for path in (lake / "sessions").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.take(list(range(table.num_rows - 1, -1, -1))), path)
    capsys.readouterr()
    assert main(["verify", str(lake)]) == 0, capsys.readouterr().out
