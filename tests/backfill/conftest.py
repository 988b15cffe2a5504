"""One local Spark for every backfill test: starting a JVM costs more than the tests themselves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist declares it; without xdist installed --strict-markers would refuse the name.
    config.addinivalue_line("markers", "xdist_group(name): run these tests in one xdist worker")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    pytest.importorskip("pyspark", reason="the Spark tests need pip install 'sessionflow[spark]'")
    from sessionflow.runtimes.backfill.job import build_spark

    session = build_spark(
        "local[2]",
        app_name="sessionflow-tests",
        **{
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            # Small splits, so one input file is read by several tasks: line numbers must still be exact.
            "spark.sql.files.maxPartitionBytes": str(512 * 1024),
            "spark.driver.memory": "1g",
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
