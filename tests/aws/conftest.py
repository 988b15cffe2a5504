"""One moto server per test session on 127.0.0.1 (a real HTTP endpoint); reset before each test."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("moto.server", reason="the AWS tests need moto: pip install 'sessionflow[dev]'")
pytest.importorskip("boto3", reason="the AWS tests need boto3: pip install 'sessionflow[aws]'")

from sessionflow.config import EXAMPLE_CONFIG
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.local.resources import LocalAws, create_resources, local_environment, moto_server
from sessionflow.runtimes.aws.settings import Settings

SAMPLE_CONFIG = EXAMPLE_CONFIG


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    with moto_server(port=0) as url:
        yield url


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "sessionflow.toml"
    path.write_text(SAMPLE_CONFIG)
    return path


@pytest.fixture
def local_aws(endpoint: str, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalAws]:
    """A fresh local AWS with every resource, and the handlers pointed at it through the environment."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    for key, value in local_environment(endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SESSIONFLOW_CONFIG", str(config_path))
    aws = LocalAws(endpoint, Settings.from_env())
    create_resources(aws)
    handlers.use_runtime(None)
    yield aws
    handlers.use_runtime(None)
