"""The mistakes people make with `sessionflow run`, end to end through the command line.

Each ends with a clear message and the documented exit code (2 usage, 3 input, 4 lake or state),
no traceback, nothing that is not sessionflow's deleted, and no lake that fails `verify`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessionflow.cli import main
from sessionflow.lake.verify import verify_lake
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


def test_an_empty_out_is_a_usage_error(
    tmp_path: Path, feed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(feed, "--out", "", capsys=capsys)
    assert code == 2 and "--out is empty" in err
    assert list(tmp_path.iterdir()) == []
