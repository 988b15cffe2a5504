"""With --state, the state remembers how far into each input file the runs got: a file that grew
is read from where the last run stopped; a file replaced under the same name is read whole; the
same command again reads nothing twice."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from sessionflow.cli import main
from sessionflow.lake.verify import verify_lake
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
