"""The mistakes people make with `sessionflow run`, end to end through the command line.

Each ends with a clear message and the documented exit code (2 usage, 3 input, 4 lake or state),
no traceback, nothing that is not sessionflow's deleted, and no lake that fails `verify`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionflow.cli import main
from sessionflow.config import Config
from sessionflow.errors import InputError, UsageError
from sessionflow.lake.verify import verify_lake
from sessionflow.runtimes.local import runner
from sessionflow.synthetic import FeedShape, write_feed


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mistakes") / "events.jsonl"
    write_feed(FeedShape(events=1_500, machines=20, seed=3), str(path))
    return path


def sessionflow(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``sessionflow ARGS`` in this process: the exit code and what it printed on stderr."""
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected error" not in err, err
    return code, err


def run(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    return sessionflow("run", *args, "-q", "--workers", "0", capsys=capsys)


def assert_verifies(lake: Path) -> None:
    verdict = verify_lake(lake)
    assert verdict.ok, verdict.render()


def ledger_inputs(lake: Path) -> list[str]:
    return [
        entry["source"]
        for path in sorted((lake / "_sessionflow" / "ledger").glob("run-*.json"))
        for entry in json.loads(path.read_bytes())["inputs"]
    ]


# -- --state and --overwrite, an empty --out ----------------------------------------------------------


def test_state_with_overwrite_is_refused_and_touches_nothing(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    assert run(feed, "--out", lake, "--state", state, capsys=capsys)[0] == 0
    before = state.read_bytes()
    code, err = run(feed, "--out", lake, "--state", state, "--overwrite", capsys=capsys)
    assert code == 2
    assert "--overwrite with --state" in err and "delete the state file" in err
    assert state.read_bytes() == before
    assert_verifies(lake)


def test_the_runner_refuses_inputs_naming_no_file_too(tmp_path: Path, example_config: Config) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty folder"):
        runner.run([str(tmp_path / "empty")], tmp_path / "lake", example_config)
    assert not (tmp_path / "lake").exists()
    report = runner.run([str(tmp_path / "empty")], tmp_path / "lake", example_config, allow_empty=True)
    assert report.inputs == [] and report.tally.records == 0


def test_the_runner_refuses_state_with_overwrite_too(tmp_path: Path, feed: Path, example_config: Config) -> None:
    with pytest.raises(UsageError, match="--overwrite with --state"):
        runner.run([str(feed)], tmp_path / "lake", example_config, state_path=tmp_path / "s", overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_out_is_a_usage_error(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(feed, "--out", "", capsys=capsys)
    assert code == 2 and "--out is empty" in err
    assert list(tmp_path.iterdir()) == []


# -- only sessionflow's own files are a lake, and only they are ever deleted ------------------------


def test_a_folder_of_user_files_is_not_a_lake_and_is_left_alone(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine"
    (folder / "events").mkdir(parents=True)
    (folder / "events" / "mydata.csv").write_text("a,b\n1,2\n")
    for extra in ((), ("--overwrite",)):
        code, err = run(feed, "--out", folder, *extra, capsys=capsys)
        assert code == 4, err
        assert "not a sessionflow lake (events)" in err and "choose another --out" in err
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["events", "events/mydata.csv"]


def test_overwrite_deletes_only_what_sessionflow_wrote(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    assert run(feed, "--out", lake, capsys=capsys)[0] == 0
    beside, inside = tmp_path / "beside.txt", lake / "notes" / "mine.txt"
    inside.parent.mkdir()
    for path in (beside, inside):
        path.write_text("the user's")
    assert run(feed, "--out", lake, "--overwrite", capsys=capsys)[0] == 0
    assert beside.read_text() == inside.read_text() == "the user's"
    assert_verifies(lake)
    # A file of the user's among the lake's own is kept too, and verify names it as not the lake's.
    among = lake / "events" / "mydata.csv"
    among.write_text("a,b\n")
    assert run(feed, "--out", lake, "--overwrite", capsys=capsys)[0] == 0
    assert among.read_text() == "a,b\n"
    problems = [p for check in verify_lake(lake).checks for p in check.problems]
    assert problems == ["events/mydata.csv is in the lake but no ledger lists it"]


def test_a_refused_run_leaves_an_empty_folder_empty(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, state = tmp_path / "empty", tmp_path / "state.json"
    folder.mkdir()
    state.write_text("not a state")
    code, err = run(feed, "--out", folder, "--state", state, capsys=capsys)
    assert code == 4 and "cannot read state" in err
    assert list(folder.iterdir()) == []  # no stray _sessionflow/lock


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """A folder nobody can write into, root included: the tests run as root, who ignores permission
    bits, so the folder is made immutable (``chattr +i``, ext4 and most local file systems)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], check=False).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_bytes(b"")  # the failure is real
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "read-only"
    folder.mkdir()
    with read_only(folder):
        yield folder


def test_a_read_only_out_folder_exits_4(read_only_folder: Path, feed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(feed, "--out", read_only_folder, capsys=capsys)
    assert code == 4
    assert f"{read_only_folder}: cannot write: Operation not permitted" in err


def test_a_read_only_lake_exits_4_and_stays_whole(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    assert run(feed, "--out", lake, capsys=capsys)[0] == 0
    with read_only(lake):
        for extra in (("--overwrite",), ("--state", str(tmp_path / "state.json"))):
            code, err = run(feed, "--out", lake, *extra, capsys=capsys)
            assert code == 4 and f"{lake}: cannot write: Operation not permitted" in err
    assert not (tmp_path / "state.json").exists()
    assert_verifies(lake)


# -- the run's own lake and state are never its inputs ----------------------------------------------


def ledgers(lake: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_bytes()) for path in sorted((lake / "_sessionflow" / "ledger").glob("run-*.json"))]


def test_a_lake_and_a_state_inside_the_input_folder_are_not_read_back(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    indir = tmp_path / "indir"
    indir.mkdir()
    shutil.copy(feed, indir / "events.jsonl")
    expected = [str(indir / "events.jsonl")]
    lake = indir / "lake"
    for extra in ((), ("--overwrite",)):
        assert run(indir, "--out", lake, *extra, capsys=capsys)[0] == 0
        (ledger,) = ledgers(lake)
        assert [entry["source"] for entry in ledger["inputs"]] == expected
    # What a run on the feed file alone counts: not one Parquet byte read as a rejected record.
    assert run(feed, "--out", tmp_path / "reference", capsys=capsys)[0] == 0
    (reference,) = ledgers(tmp_path / "reference")
    assert ledger["tally"] == reference["tally"]
    records = ledger["tally"]["records"]
    # Another lake beside it, with its state file in the input folder too: the second run reads
    # only what was added to the feed, not the first lake, its own lake or its state.
    other, state = indir / "other", indir / "state.json"
    assert run(indir, "--out", other, "--state", state, capsys=capsys)[0] == 0
    more = tmp_path / "more.jsonl"
    write_feed(FeedShape(events=40, machines=4, seed=9), str(more))
    with open(indir / "events.jsonl", "ab") as handle:
        handle.write(more.read_bytes())
    assert run(indir, "--out", other, "--state", state, capsys=capsys)[0] == 0
    first, second = ledgers(other)
    assert [entry["source"] for entry in first["inputs"]] == [entry["source"] for entry in second["inputs"]] == expected
    assert first["tally"]["records"] == records
    assert 0 < second["tally"]["records"] < 100
    for folder in (lake, other):
        assert_verifies(folder)


def test_another_runs_state_file_in_the_input_folder_is_not_read(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    indir = tmp_path / "indir"
    indir.mkdir()
    shutil.copy(feed, indir / "events.jsonl")
    # Another pipeline's state, kept in the folder this run reads (not this run's own --state).
    assert run(feed, "--out", tmp_path / "elsewhere", "--state", indir / "their-state.json", capsys=capsys)[0] == 0
    assert (indir / "their-state.json").read_bytes().startswith(b'{"sessionflow":"state"')
    assert run(indir, "--out", tmp_path / "lake", capsys=capsys)[0] == 0
    (ledger,) = ledgers(tmp_path / "lake")
    assert [entry["source"] for entry in ledger["inputs"]] == [str(indir / "events.jsonl")]
    assert_verifies(tmp_path / "lake")


def test_the_out_folder_itself_is_refused_as_an_input(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    assert run(feed, "--out", lake, capsys=capsys)[0] == 0
    code, err = run(lake, "--out", lake, "--overwrite", capsys=capsys)
    assert code == 3 and "is this run's own output" in err
    code, err = run(lake, "--out", tmp_path / "elsewhere", capsys=capsys)
    assert code == 3 and "is a sessionflow lake, not an input" in err
    assert_verifies(lake)


# -- a state that cannot be written ------------------------------------------------------------------


def sessionflow_process(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sessionflow ARGS`` in a process of its own, its standard input open and never written to:
    a run that reads its input before checking its output waits there, and the timeout fails it."""
    command = [sys.executable, "-m", "sessionflow", *map(str, args)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as process:
        try:
            code = process.wait(timeout=60)  # small outputs only: the pipes do not fill
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout.read().decode(), process.stderr.read().decode()
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(command, code, out, err)


def test_an_unwritable_state_is_found_before_any_input_is_read(tmp_path: Path, read_only_folder: Path) -> None:
    lake = tmp_path / "lake"
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    for state, why in (
        (read_only_folder / "state.json", "Operation not permitted"),
        (not_a_folder / "s", "Not a directory"),
    ):
        done = sessionflow_process("run", "-", "--out", lake, "--state", state, "-q")
        assert done.returncode == 4, done.stderr
        assert f"{state}: the state file cannot be written here: {why}" in done.stderr
        assert not lake.exists()


def test_a_commit_stopped_before_its_state_was_written_is_finished_later(tmp_path: Path, feed: Path) -> None:
    lake, folder = tmp_path / "lake", tmp_path / "state"
    state = folder / "state.json"
    # Killed right after the commit point, before the state was put in place.
    killed = sessionflow_process(
        "run", feed, "--out", lake, "--state", state, "-q", env={**os.environ, "SESSIONFLOW_CRASH_AT": "committed"}
    )
    assert killed.returncode == -9 and not state.exists()
    assert not folder.exists()
    folder.write_text("")  # now the state cannot be written where the commit says
    done = sessionflow_process("run", feed, "--out", lake, "--state", state, "-q")
    assert done.returncode == 4 and "the state file cannot be written here: Not a directory" in done.stderr
    for command in (("run", feed, "--out", lake, "-q"), ("verify", lake, "--repair")):
        done = sessionflow_process(*command)
        assert done.returncode == 4, done.stderr
        assert "was committed by a run that was stopped, and cannot be put in place" in done.stderr
        assert f"{folder}'" in done.stderr  # the path in the way
    folder.unlink()
    done = sessionflow_process("verify", lake, "--repair")
    assert done.returncode == 0, done.stdout + done.stderr
    assert state.is_file()
    assert_verifies(lake)
    # The next run sees the first one's state: the same input again adds nothing.
    done = sessionflow_process("run", feed, "--out", lake, "--state", state, "-q")
    assert done.returncode == 0 and "nothing new" in done.stderr, done.stderr


# -- a state file belongs to one lake ----------------------------------------------------------------


def test_a_state_refuses_a_lake_that_is_not_its_own(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, state = tmp_path / "first", tmp_path / "second", tmp_path / "state.json"
    assert run(feed, "--out", first, "--state", state, capsys=capsys)[0] == 0
    before = state.read_bytes()
    # Another lake with the same state, and a new lake where the first one was: both refused.
    code, err = run(feed, "--out", second, "--state", state, capsys=capsys)
    assert code == 4, err
    assert f"{state}: this state belongs to the lake {first}, not to {second}" in err
    assert not second.exists()
    shutil.rmtree(first)
    code, err = run(feed, "--out", first, "--state", state, capsys=capsys)
    assert code == 4 and f"belongs to the lake {first}, not to {first}" in err
    assert state.read_bytes() == before


def test_a_moved_lake_keeps_its_state_and_an_old_state_goes_on(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    assert run(feed, "--out", lake, "--state", state, capsys=capsys)[0] == 0
    moved = tmp_path / "moved"
    lake.rename(moved)
    code, err = run(feed, "--out", moved, "--state", state, capsys=capsys)
    assert code == 0 and "nothing new" in err
    # A state written before states named their lake is taken by the lake it is used with.
    old = json.loads(state.read_bytes())
    del old["lake"]
    state.write_text(json.dumps(old))
    (moved / "_sessionflow" / "lake.json").unlink()
    code, err = run(feed, "--out", moved, "--state", state, capsys=capsys)
    assert code == 0 and "nothing new" in err
    more = tmp_path / "more.jsonl"
    write_feed(FeedShape(events=40, machines=4, seed=9), str(more))
    assert run(more, "--out", moved, "--state", state, capsys=capsys)[0] == 0
    assert json.loads(state.read_bytes())["lake"]["path"] == str(moved)
    assert_verifies(moved)


def test_a_folder_input_follows_links_to_folders_once_and_never_loops(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    indir, elsewhere = tmp_path / "indir", tmp_path / "elsewhere"
    (indir / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(feed, elsewhere / "events.jsonl")
    for name in ("a-link", "b-link"):
        (indir / name).symlink_to(elsewhere)
    (indir / "sub" / "loop").symlink_to(indir)
    lake = tmp_path / "lake"
    assert run(indir, "--out", lake, capsys=capsys)[0] == 0
    (ledger,) = ledgers(lake)
    assert [entry["source"] for entry in ledger["inputs"]] == [str(indir / "a-link" / "events.jsonl")]
    assert_verifies(lake)
