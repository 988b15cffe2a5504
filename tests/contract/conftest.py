"""The contract suite shares the expensive fixtures of the other suites: one JVM, one moto server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backfill.conftest import spark  # noqa: F401 - the same local Spark the backfill tests use


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    pytest.importorskip("moto.server", reason="the AWS tests need moto: pip install 'sessionflow[dev]'")
    from sessionflow.runtimes.aws.local.resources import moto_server

    with moto_server(port=0) as url:
        yield url
