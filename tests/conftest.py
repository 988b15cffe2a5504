"""Shared fixtures: a generated dirty feed and the config it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.synthetic import FeedShape, write_feed


@pytest.fixture(scope="session")
def example_config() -> Config:
    import tomllib

    return Config.from_dict(tomllib.loads(EXAMPLE_CONFIG))


@pytest.fixture(scope="session")
def small_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 6,000 dirty records from 60 machines over a few days."""
    path = tmp_path_factory.mktemp("feed") / "events.jsonl"
    write_feed(FeedShape(events=6_000, machines=60, seed=11), str(path))
    return path
