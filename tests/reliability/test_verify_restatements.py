"""`sessionflow verify` on the lake format of restating runs: restatement logs, carried rows, and the
lake's event rows against the runs' events. A lake three `sessionflow run --state` runs wrote is
given what a restating run writes (a log, a rewritten file), checked sound, then damaged."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sessionflow.cli import main
from sessionflow.exitcodes import EXIT_VERIFY
from sessionflow.lake.restatements import log_file, log_schema
from tests.reliability.lakes import write_config, write_feed_parts


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], Path]:
    folder = tmp_path_factory.mktemp("restating")
    feed = write_feed_parts(folder, events=2_000, machines=20, seed=5, parts=3)
    config = write_config(folder)
    lake = folder / "lake"
    for index, part in enumerate(feed):
        flush = ["--flush"] if index == 2 else []
        args = ["run", str(part), "--out", str(lake), "-c", str(config), "--state", str(folder / "s.json"), "-q"]
        assert main([*args, *flush]) == 0
    return lake, feed, config


def ledger_of(lake: Path, run: int) -> dict[str, Any]:
    return orjson.loads((lake / "_sessionflow" / "ledger" / f"run-{run:05d}.json").read_bytes())


def save_ledger(lake: Path, run: int, ledger: dict[str, Any]) -> None:
    (lake / "_sessionflow" / "ledger" / f"run-{run:05d}.json").write_bytes(orjson.dumps(ledger))


def sessions_of(lake: Path) -> list[tuple[str, str]]:
    """(machine_id, session_id) of the lake's sessions, read on their own (not through verify)."""
    rows: list[tuple[str, str]] = []
    for path in sorted((lake / "sessions").rglob("*.parquet")):
        table = pq.read_table(path, columns=["machine_id", "session_id"])
        rows.extend(zip(table["machine_id"].to_pylist(), table["session_id"].to_pylist(), strict=True))
    return sorted(rows)


def add_log(lake: Path, run: int, rows: list[tuple[str, str, str, str]], *, count: int | None = None) -> Path:
    """Give run ``run`` a restatement log of (machine, old, new, reason) rows, listed and counted
    (in place of the one the run wrote, where it restated sessions itself)."""
    path = lake / log_file(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(zip(*rows, strict=True))
    table = pa.table([pa.array([run] * len(rows), pa.int32()), *map(pa.array, columns)], schema=log_schema())
    pq.write_table(table, path)
    ledger = ledger_of(lake, run)
    if log_file(run) not in ledger["files"]:
        ledger["files"].append(log_file(run))
    ledger["restatements"] = len(rows) if count is None else count
    save_ledger(lake, run, ledger)
    return path


@pytest.fixture
def restated(runs: tuple[Path, list[Path], Path], tmp_path: Path) -> Path:
    """The lake with sound logs in runs 2 and 3: run 2 names an id run 3 restated again."""
    lake = tmp_path / "lake"
    shutil.copytree(runs[0], lake)
    (m1, s1), (m2, s2) = sessions_of(lake)[:2]
    add_log(lake, 2, [(m1, "gone-a", "gone-b", "new_first_event")])
    add_log(lake, 3, [(m1, "gone-b", s1, "new_first_event"), (m2, s2, s2, "updated")])
    return lake


def verify(lake: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["verify", str(lake)])
    return code, capsys.readouterr().out


def test_a_lake_with_sound_restatement_logs_passes(restated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify(restated, capsys)
    assert code == 0, report
    assert "every session id the restatement log leads to is in the lake" in report


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def set_column(table: pa.Table, name: str, row: int, value: Any) -> pa.Table:
    values = table[name].to_pylist()
    values[row] = value
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, pa.array(values, table.schema.field(name).type))


def damage_deleted_row(lake: Path) -> None:
    rewrite(lake / log_file(3), lambda table: table.slice(1))


def damage_count(lake: Path) -> None:
    ledger = ledger_of(lake, 3)
    ledger["restatements"] += 1
    save_ledger(lake, 3, ledger)


def damage_run(lake: Path) -> None:
    rewrite(lake / log_file(3), lambda table: set_column(table, "run", 1, 2))


def damage_reason(lake: Path) -> None:
    rewrite(lake / log_file(3), lambda table: set_column(table, "reason", 0, "moved"))


def damage_dangling(lake: Path) -> None:
    # The latest restatement of gone-b leads nowhere.
    rewrite(lake / log_file(3), lambda table: set_column(table, "new_session_id", 0, "nowhere"))


def damage_unreadable(lake: Path) -> None:
    (lake / log_file(3)).write_bytes(b"not parquet")


def damage_unlisted(lake: Path) -> None:
    shutil.copy(lake / log_file(3), lake / "restatements" / "part-00009-00000.parquet")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (damage_deleted_row, "run 3: its restatements files hold 1 rows, its ledger counts 2"),
        (damage_count, "run 3: its restatements files hold 2 rows, its ledger counts 3"),
        (damage_run, "rows of run(s) [2], in run 3's log"),
        (damage_reason, "reason(s) ['moved'], not one of"),
        (damage_dangling, "run 3 restated session gone-b of machine"),
        (damage_unreadable, f"{log_file(3)}: unreadable"),
        (damage_unlisted, "restatements/part-00009-00000.parquet is in the lake but no ledger lists it"),
    ],
)
def test_a_damaged_restatement_log_fails(
    restated: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], None], expected: str
) -> None:
    damage(restated)
    code, report = verify(restated, capsys)
    assert code == EXIT_VERIFY and expected in report, report
    assert "verify: FAILED" in report


def test_a_log_naming_an_id_no_later_run_restated_again_must_lead_into_the_lake(
    restated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run 2's gone-b is fine only because run 3 restated it: without that, it leads nowhere."""
    rewrite(restated / log_file(3), lambda table: set_column(table, "old_session_id", 0, "other"))
    code, report = verify(restated, capsys)
    assert code == EXIT_VERIFY and "run 2 restated session gone-a of machine" in report, report


def copy_on_write(lake: Path) -> tuple[str, int]:
    """Run 3 rewrites one more file of an earlier run as a restating run does: removes it, writes
    its rows again (carried) under its own name. Returns the new file's name and its rows."""
    run_3 = ledger_of(lake, 3)
    owner, old = next(
        (run, name)
        for run in (1, 2)
        for name in ledger_of(lake, run)["files"]
        if name.startswith("events/") and (lake / name).exists()
    )
    new = old.rsplit("/", 1)[0] + "/part-00003-rewritten.parquet"
    rows = pq.read_metadata(lake / old).num_rows
    (lake / old).rename(lake / new)
    run_3.setdefault("removed", []).append({"run": owner, "files": [old], "events": rows, "sessions": 0})
    run_3["files"].append(new)
    carried = run_3.setdefault("carried", {"events": 0, "sessions": 0})
    carried["events"] += rows
    save_ledger(lake, 3, run_3)
    return new, rows


def test_a_run_that_rewrote_a_file_carries_its_rows(
    runs: tuple[Path, list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(runs[0], lake)
    copy_on_write(lake)
    code, report = verify(lake, capsys)
    assert code == 0, report


def test_carried_rows_must_be_the_rows_written_again(
    runs: tuple[Path, list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(runs[0], lake)
    copy_on_write(lake)
    run_3 = ledger_of(lake, 3)
    run_3["carried"]["events"] -= 1
    save_ledger(lake, 3, run_3)
    code, report = verify(lake, capsys)
    assert code == EXIT_VERIFY and "(tally + carried)" in report, report


def test_a_run_may_recompute_what_it_removed_instead_of_carrying_it(
    runs: tuple[Path, list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run 3 counts the rewritten file's rows as new events it wrote (as a range backfill does,
    recomputing its days from input), not as carried: the lake still adds up."""
    lake = tmp_path / "lake"
    shutil.copytree(runs[0], lake)
    _, rows = copy_on_write(lake)
    run_3 = ledger_of(lake, 3)
    run_3["carried"]["events"] -= rows
    run_3["tally"]["events"] += rows
    run_3["tally"]["records"] += rows
    save_ledger(lake, 3, run_3)
    code, report = verify(lake, capsys)
    assert code == 0, report


def test_the_lake_holds_what_its_runs_wrote_less_what_they_removed(
    runs: tuple[Path, list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run 3 says the file it removed held 7 rows more than it did: the owner's rows no longer add
    up, and neither do the lake's, counted from the files themselves."""
    lake = tmp_path / "lake"
    shutil.copytree(runs[0], lake)
    copy_on_write(lake)
    run_3 = ledger_of(lake, 3)
    run_3["removed"][-1]["events"] += 7
    save_ledger(lake, 3, run_3)
    code, report = verify(lake, capsys)
    assert code == EXIT_VERIFY, report
    assert "  FAIL  the lake's event rows are what the runs wrote less what they removed" in report
    ledgers = [ledger_of(lake, run) for run in (1, 2, 3)]
    written = sum(ledger["tally"]["events"] + ledger.get("carried", {}).get("events", 0) for ledger in ledgers)
    removed = sum(r["events"] for ledger in ledgers for r in ledger.get("removed", []))
    found = sum(pq.read_metadata(path).num_rows for path in (lake / "events").rglob("*.parquet"))
    assert found == written - removed + 7
    assert f"the events files hold {found} rows; the ledgers count {written - removed}" in report


def test_overwrite_takes_the_restatement_logs_away(
    restated: Path, runs: tuple[Path, list[Path], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, feed, config = runs
    assert (restated / log_file(3)).exists()
    assert main(["run", *map(str, feed), "--out", str(restated), "-c", str(config), "--overwrite", "-q"]) == 0
    assert not (restated / "restatements").exists()
    code, report = verify(restated, capsys)
    assert code == 0, report
