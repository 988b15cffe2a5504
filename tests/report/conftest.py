"""A small lake with everything a report shows: two days, rejections, duplicates, late arrivals."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.runtimes.local import runner
from sessionflow.synthetic import FeedShape, write_feed
from tests.helpers import NOW


@pytest.fixture(scope="session")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report-lake")
    config_path = folder / "sessionflow.toml"
    config_path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    feed = folder / "events.jsonl"
    write_feed(FeedShape(events=20_000, machines=150, seed=5, late_rate=0.01), str(feed))
    lake = folder / "lake"
    runner.run([str(feed)], lake, Config.load(config_path), now_ms=NOW, workers=0)
    return lake
