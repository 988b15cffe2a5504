"""With --state, the state remembers how far into each input file the runs got: a file that grew
is read from where the last run stopped; a file replaced under the same name is read whole; the
same command again reads nothing twice."""

from __future__ import annotations

import gzip
import tomllib
from pathlib import Path

import duckdb
import orjson
import pytest

from sessionflow.cli import main
from sessionflow.config import Config
from sessionflow.lake.verify import verify_lake
from sessionflow.runtimes.local.state_file import session_fingerprint
from tests.reliability.lakes import write_config, write_feed_parts


def ledger(lake: Path, run: int) -> dict[str, object]:
    result: dict[str, object] = orjson.loads((lake / "_sessionflow" / "ledger" / f"run-{run:05d}.json").read_bytes())
    return result


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_growing_file_is_read_from_where_the_last_run_stopped(tmp_path: Path, compressed: bool) -> None:
    parts = write_feed_parts(tmp_path, events=3_000, machines=30, seed=4, parts=2)
    first, second = (part.read_bytes() for part in parts)
    log = tmp_path / ("feed.jsonl.gz" if compressed else "feed.jsonl")
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    command = ["run", str(log), "--out", str(lake), "--state", str(state), "-c", str(write_config(tmp_path)), "-q"]

    log.write_bytes(gzip.compress(first) if compressed else first)
    assert main(command) == 0
    log.write_bytes(gzip.compress(first + second) if compressed else first + second)
    assert main(command) == 0
    assert main(command) == 0  # nothing new: no third run

    lines = [first.count(b"\n"), (first + second).count(b"\n")]
    inputs = [ledger(lake, run)["inputs"][0] for run in (1, 2)]  # type: ignore[index]
    assert [(i["start_line"], i["lines"]) for i in inputs] == [(0, lines[0]), (lines[0], lines[1])]
    assert not (lake / "_sessionflow" / "ledger" / "run-00003.json").exists()
    records = sum(ledger(lake, run)["tally"]["records"] + ledger(lake, run)["tally"]["blank"] for run in (1, 2))  # type: ignore[index]
    assert records == lines[1]
    assert verify_lake(lake).ok


def test_a_file_replaced_under_the_same_name_is_read_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parts = write_feed_parts(tmp_path, events=2_000, machines=20, seed=6, parts=2)
    drop = tmp_path / "hourly.jsonl"
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    command = ["run", str(drop), "--out", str(lake), "--state", str(state), "-c", str(write_config(tmp_path)), "-q"]
    drop.write_bytes(parts[0].read_bytes())
    assert main(command) == 0
    drop.write_bytes(parts[1].read_bytes())  # the next hour's drop, same name, longer or not
    assert main(command) == 0
    second = ledger(lake, 2)["inputs"][0]  # type: ignore[index]
    assert second["start_line"] == 0 and second["lines"] == parts[1].read_bytes().count(b"\n")
    assert verify_lake(lake).ok


# A state file as the code before the snapshot format had a version wrote it (`run --state` on a feed
# of e-1 app_open at T0 and e-2 view ten minutes later; e-2 still waits in the reorder buffer). Only
# the fingerprint is filled in: it depends on the config, and the format is what this test is about.
STATE_BEFORE_VERSIONS = b"""{
  "format": 1, "fingerprint": "%s", "runs": 1,
  "sessionizer": {
    "clock": -1, "leaders": {"m-1": 1791159000000},
    "machines": [{
      "machine_id": "m-1", "newest_ts": 1791159000000, "arrival_clock": -1,
      "pending": [{"event_id": "e-2", "machine_id": "m-1", "event_type": "view", "timestamp": 1791159000000,
                   "event_time": null, "event_hour": 0, "day_of_week": 1, "user_id": null, "app_version": null,
                   "os": null, "document_id": null, "app_version_major": null, "app_version_minor": null,
                   "extra": null, "event_date": "2026-10-05"}],
      "last_key": [1791158400000, "e-1"],
      "session": {"session_id": "9db20f66-813f-55ef-8df7-6c4ef591c3ee", "start_ts": 1791158400000,
                  "last_ts": 1791158400000, "first_type": "app_open", "last_type": "app_open", "count": 1,
                  "type_counts": {"app_open": 1}, "user_id": "u-1", "app_version": "12.1.0", "closed": false},
      "seen": {"e-1": 1791158400000, "e-2": 1791159000000}
    }]
  },
  "inputs": {}
}"""


def _legacy_state(folder: Path, config: Path) -> Path:
    fingerprint = session_fingerprint(Config.from_dict(tomllib.loads(config.read_text())))
    path = folder / "state.json"
    path.write_bytes(STATE_BEFORE_VERSIONS % fingerprint.encode())
    return path


def test_a_state_file_of_the_streaming_runs_with_open_sessions_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A format-1 state kept open sessions and buffered events, which runs now always write: it
    is refused (exit 4), saying how to finish it, and nothing is written."""
    config = write_config(tmp_path)
    state, lake = _legacy_state(tmp_path, config), tmp_path / "lake"
    feed = tmp_path / "next.jsonl"
    feed.write_bytes(b'{"event_id":"e-3","machine_id":"m-1","event_type":"edit","timestamp":"2026-10-05T00:20:00Z"}\n')
    code = main(["run", str(feed), "--out", str(lake), "--state", str(state), "-c", str(config), "-q"])
    assert code == 4
    error = capsys.readouterr().err
    assert "1 open session(s) and 1 buffered event(s)" in error and "--flush" in error
    assert not (lake / "events").exists()


def test_a_flushed_state_file_of_the_streaming_runs_goes_on(tmp_path: Path) -> None:
    """A format-1 state left by a --flush run holds no sessionizer state: the runs go on from it."""
    config = write_config(tmp_path)
    state, lake = _legacy_state(tmp_path, config), tmp_path / "lake"
    feed = tmp_path / "next.jsonl"
    feed.write_bytes(b'{"event_id":"e-3","machine_id":"m-1","event_type":"edit","timestamp":"2026-10-05T00:20:00Z"}\n')
    data = orjson.loads(state.read_bytes())
    data["sessionizer"] = {"clock": -1, "leaders": {}, "machines": []}
    state.write_bytes(orjson.dumps(data))
    assert main(["run", str(feed), "--out", str(lake), "--state", str(state), "-c", str(config), "-q"]) == 0
    events = duckdb.connect().execute(f"select event_id from read_parquet('{lake}/events/*/*.parquet')").fetchall()
    assert events == [("e-3",)]
    assert orjson.loads(state.read_bytes())["format"] == 2
    assert orjson.loads(state.read_bytes())["runs"] == 2


def test_a_snapshot_of_another_version_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    state = _legacy_state(tmp_path, config)
    data = orjson.loads(state.read_bytes())
    data["sessionizer"]["version"] = 3
    state.write_bytes(orjson.dumps(data))
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"")
    code = main(["run", str(feed), "--out", str(tmp_path / "lake"), "--state", str(state), "-c", str(config), "-q"])
    assert code == 4  # the exit code of an unusable state
    assert "format version 3, and this sessionflow reads versions 1, 2 only" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()
