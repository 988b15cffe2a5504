"""AWS clients that fail fast, and a count of the calls they retried.

A hung connection or a slow answer is abandoned after the settings' connect and read timeouts
(seconds, far below the function's timeout), and retried in botocore's *standard* mode: a bounded
number of attempts with jittered backoff, on throttles and transient errors alike (the legacy mode
retries fewer errors and with no quota). Import-light: boto3 is imported when clients are made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sessionflow.runtimes.aws.settings import Settings


@dataclass
class RetryCount:
    """Retries the SDK made, over every call of the clients it watches."""

    retries: int = 0

    def after_call(self, parsed: dict[str, Any] | None = None, **_: Any) -> None:
        self.retries += int(((parsed or {}).get("ResponseMetadata") or {}).get("RetryAttempts", 0))

    def after_call_error(self, exception: BaseException | None = None, **_: Any) -> None:
        response = getattr(exception, "response", None) or {}
        self.retries += int((response.get("ResponseMetadata") or {}).get("RetryAttempts", 0))


def client_config(settings: Settings) -> Any:
    from botocore.config import Config

    return Config(
        connect_timeout=settings.connect_timeout_ms / 1000,
        read_timeout=settings.read_timeout_ms / 1000,
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},  # the first one included
    )


def make_clients(settings: Settings, services: Iterable[str]) -> tuple[dict[str, Any], RetryCount]:
    """One client per service, with :func:`client_config`, their retries counted in one :class:`RetryCount`."""
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the AWS runtime needs its extra: pip install 'sessionflow[aws]'") from exc
    session = boto3.session.Session()
    config = client_config(settings)
    count = RetryCount()
    clients: dict[str, Any] = {}
    for name in services:
        client = session.client(name, endpoint_url=settings.endpoint_url, config=config)
        client.meta.events.register("after-call", count.after_call)
        client.meta.events.register("after-call-error", count.after_call_error)
        clients[name] = client
    return clients, count
