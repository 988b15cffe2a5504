"""What a person sees of the config on the command line: check-config and run judge it alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionflow.cli import main
from sessionflow.synthetic import FeedShape, write_feed


@pytest.fixture(scope="module")
def tiny_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("feed") / "events.jsonl"
    write_feed(FeedShape(events=300, machines=5, seed=3), str(path))
    return path


def run_and_check(config: Path, feed: Path, out: Path) -> tuple[int, int]:
    """The exit codes of check-config and of run with this config."""
    checked = main(["check-config", "--config", str(config)])
    ran = main(["run", str(feed), "--out", str(out), "--config", str(config), "--workers", "0", "--quiet"])
    return checked, ran


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[session]\ntimeout = "99999999999999999999d"\n', "session.timeout"),
        ('[session]\nmax_session_duration = "99999999999999999999d"\n', "session.max_session_duration"),
        ('[validation]\nmax_future_skew = "99999999999999999999d"\n', "validation.max_future_skew"),
        ("[session]\nclock_quorum = 99999999999999999999\n", "session.clock_quorum"),
    ],
)
def test_a_config_refused_by_run_is_refused_by_check_config(
    tmp_path: Path, tiny_feed: Path, text: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sessionflow.toml"
    config.write_text(text, encoding="utf-8")
    assert run_and_check(config, tiny_feed, tmp_path / "lake") == (2, 2)
    err = capsys.readouterr().err
    assert err.count(f"{key}: ") == 2
    assert "Traceback" not in err
    assert not (tmp_path / "lake").exists()


def test_a_config_that_is_not_utf8_exits_2_naming_the_file(
    tmp_path: Path, tiny_feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'[session]\nopening_events = ["ouvert\xe9"]\n')
    assert run_and_check(config, tiny_feed, tmp_path / "lake") == (2, 2)
    err = capsys.readouterr().err
    assert err.count(f"{config}: not UTF-8 text") == 2
    assert "Traceback" not in err
