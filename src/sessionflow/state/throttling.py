"""Retrying what an AWS service turned away for throughput, with backoff.

The SDK retries these itself a few times; a batch that still meets one would fail as a whole and
be retried by Lambda from its start. So the calls that write state and deliver rows retry them a
few more times here. Only errors that say the request was not (or may not have been) carried out
are retried; each caller makes a repeat harmless: conditional writes check whether their own write
landed (:meth:`StateStore.put`), Kinesis copies are dropped by their raw position, Firehose copies
are exact.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Error codes that mean "try again later" (throttling) or "the service failed" (maybe not applied).
RETRIED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "LimitExceededException",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalServerError",
        "InternalFailure",
        "KMSThrottlingException",
    }
)
ATTEMPTS = 6
BASE_DELAY_S = 0.05
MAX_DELAY_S = 1.0


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError`` (None for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0-based): exponential, capped, with jitter."""
    delay: float = min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt)
    return delay * (0.5 + random.random() / 2)


def retrying(call: Callable[..., T], *args: Any, sleep: Callable[[float], Any] = time.sleep, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, again after a pause while it fails with a retried error code."""
    for attempt in range(ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if error_code(exc) not in RETRIED or attempt + 1 == ATTEMPTS:
                raise
            sleep(backoff(attempt))
    raise AssertionError("unreachable")  # pragma: no cover
