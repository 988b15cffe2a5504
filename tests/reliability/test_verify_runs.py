"""`sessionflow verify` passes on the lakes the other runtimes' reference runs write too: the demo,
a run with worker processes and one without, a lake replaced by --overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionflow.cli import main
from tests.reliability.lakes import write_config, write_feed_parts


def test_verify_passes_on_the_demo_lake(tmp_path: Path) -> None:
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--events", "4000", "--machines", "40"]) == 0
    assert main(["verify", str(tmp_path / "demo" / "lake")]) == 0


@pytest.mark.parametrize("workers", ["0", "2"])
def test_verify_passes_with_and_without_workers_and_after_overwrite(tmp_path: Path, workers: str) -> None:
    feed = write_feed_parts(tmp_path, events=4_000, machines=40, seed=8, parts=2)
    lake = str(tmp_path / "lake")
    common = ["--out", lake, "-c", str(write_config(tmp_path)), "-q", "--workers", workers]
    assert main(["run", str(feed[0]), *common]) == 0
    assert main(["verify", lake]) == 0
    assert main(["run", *map(str, feed), "--overwrite", *common]) == 0
    assert main(["verify", lake]) == 0
