"""What a person sees of the config on the command line: check-config and run judge it alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from sessionflow.cli import main
from sessionflow.synthetic import FeedShape, write_feed
from tests.helpers import T0


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
        # Rules that cannot work: a glob that never closes, a required field set or dropped for good.
        ('[[clean]]\nwhen = { app_version = "11.[2" }\nscale = { timestamp = 1000 }\n', "clean[0].when.app_version"),
        ("[[clean]]\nset = { event_id = 5 }\n", "clean[0].set.event_id"),
        ('[[clean]]\nname = "no time"\ndrop = ["timestamp"]\n', "clean[0].drop"),
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


def sql(query: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = duckdb.connect().execute(query).fetchall()
    return rows


def test_declared_columns_reach_the_lake_beside_the_default_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "feed.jsonl"
    records = [
        {
            "event_id": f"e-{i}",
            "machine_id": "m-1",
            "event_type": "app_open" if i == 0 else "view",
            "timestamp": T0 + i * 1000,
            "user_id": "u-1",
            "app_version": "11.2.3",
            "os": "win",
            "page_count": i,
        }
        for i in range(3)
    ]
    feed.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    config = tmp_path / "sessionflow.toml"
    config.write_text('[columns]\npage_count = "int"\n', encoding="utf-8")
    lake = tmp_path / "lake"
    assert run_and_check(config, feed, lake) == (0, 0)
    assert "columns user_id, app_version, os, document_id, page_count (int)" in capsys.readouterr().out
    events = f"read_parquet('{lake}/events/*/*.parquet', hive_partitioning=true)"
    rows = sql(f"SELECT user_id, app_version_major, app_version_minor, os, page_count, extra FROM {events} ORDER BY 5")
    assert rows == [("u-1", 11, 2, "win", i, None) for i in range(3)]
    sessions = f"read_parquet('{lake}/sessions/*/*.parquet', hive_partitioning=true)"
    assert sql(f"SELECT user_id, app_version FROM {sessions}") == [("u-1", "11.2.3")]
    assert main(["verify", str(lake)]) == 0


def test_run_and_check_config_say_which_config_they_loaded(
    tmp_path: Path, tiny_feed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SESSIONFLOW_CONFIG", raising=False)
    run = ["run", str(tiny_feed), "--workers", "0", "--overwrite", "--out", "lake"]
    capsys.readouterr()
    assert main(["check-config"]) == 0
    assert main(run) == 0
    out, err = capsys.readouterr()
    assert "config: built-in defaults" in out
    assert "built-in defaults" in err  # the run's summary
    assert main([*run, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] is None
    Path("sessionflow.toml").write_text('[session]\ntimeout = "10m"\n', encoding="utf-8")
    assert main(["check-config"]) == 0
    assert main(run) == 0
    out, err = capsys.readouterr()
    assert "config: sessionflow.toml" in out
    assert "sessionflow.toml" in err
    assert main([*run, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "sessionflow.toml"
    assert main([*run, "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_an_integer_beyond_64_bits_is_rejected_not_rounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = tmp_path / "feed.jsonl"
    base = {"machine_id": "m-1", "event_type": "app_open", "timestamp": T0}
    kept = orjson.dumps({**base, "event_id": "e-1", "big": 2**64 - 1})
    wide = orjson.dumps({**base, "event_id": "e-2"})[:-1] + b',"big":123456789012345678901234567890}'
    feed.write_bytes(kept + b"\n" + wide + b"\n")
    lake = tmp_path / "lake"
    assert main(["run", str(feed), "--out", str(lake), "--workers", "0", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["tally"]["rejected"] == {"malformed_json": 1}
    events = f"read_parquet('{lake}/events/*/*.parquet', hive_partitioning=true)"
    assert sql(f"SELECT event_id, extra FROM {events}") == [("e-1", '{"big":18446744073709551615}')]
    rejected = (lake / "rejected" / "reason=malformed_json").glob("*.jsonl")
    assert [json.loads(line)["raw"] for path in rejected for line in path.read_text().splitlines()] == [wide.decode()]
    assert main(["verify", str(lake)]) == 0
