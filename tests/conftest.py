"""Shared fixtures: a generated dirty feed and the config it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``--dist loadgroup`` working: the Spark tests share one worker, so one JVM.

    pytest-xdist names an item's group by appending ``@group`` to ``item._nodeid``; pytest 9 reads
    the node id from ``item._id`` instead, so the groups were silently ignored and each worker
    started a JVM of its own. Done here the way xdist means it, when xdist has not done it.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # pytest before 9: xdist's own renaming works
        return
    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
        suffix = "@" + "_".join(names)
        if names and not item.nodeid.endswith(suffix):
            node: Any = item
            node._id = coerce_node_id(item.nodeid + suffix)
