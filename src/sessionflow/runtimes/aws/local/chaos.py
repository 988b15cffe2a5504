"""Faults for the local AWS (``sessionflow aws-local run --chaos RATE``): what production can do to
the handlers, injected into their real boto3 calls and between the steps of their commits.

On the handlers' own clients (botocore event hooks, so the calls really go to the local AWS, or
do not), each call of Kinesis ``PutRecords``, Firehose ``PutRecordBatch`` and DynamoDB
``BatchGetItem``, ``BatchWriteItem``, ``PutItem``, ``UpdateItem`` and ``DeleteItem`` is, with
probability ``RATE``:

* **throttled**: refused whole before it is sent, with the service's throttling error;
* **partly refused**: some of its records or keys are taken out of the request and reported back
  the way the service reports them (``FailedRecordCount``/``FailedPutCount`` with an error code per
  record, ``UnprocessedKeys``/``UnprocessedItems``);
* **answered with an error after it was carried out**: the write landed, the caller sees
  ``InternalServerError`` (a timeout or a 5xx after the fact), so it may well write again.

And between the steps of ``process`` and of the commit protocol (``commit.py``), a handler
**crashes** in about ``RATE`` of its invocations (:class:`ChaosCrash`), as a Lambda that runs out
of time or memory does. Lambda's side, played by the poller (reading the streams, checkpoints, the
on-failure queue), is left alone: it is the service, not the code under test.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

# The calls the handlers make, by service; which faults each can meet.
THROTTLE, PARTIAL, AMBIGUOUS = "throttled", "partly refused", "error after the write"
CALLS: dict[str, dict[str, tuple[str, ...]]] = {
    "kinesis": {"PutRecords": (THROTTLE, PARTIAL, AMBIGUOUS)},
    "firehose": {"PutRecordBatch": (THROTTLE, PARTIAL, AMBIGUOUS)},
    "dynamodb": {
        "BatchGetItem": (THROTTLE, PARTIAL),
        "BatchWriteItem": (THROTTLE, PARTIAL, AMBIGUOUS),
        "PutItem": (THROTTLE, AMBIGUOUS),
        "UpdateItem": (THROTTLE, AMBIGUOUS),
        "DeleteItem": (THROTTLE, AMBIGUOUS),
    },
}
THROTTLING_CODE = {
    "kinesis": "ProvisionedThroughputExceededException",
    "firehose": "ServiceUnavailableException",
    "dynamodb": "ProvisionedThroughputExceededException",
}
# A commit passes about this many steps: a crash at RATE / STEPS per step is about RATE per invocation.
STEPS_PER_INVOCATION = 8


class ChaosCrash(RuntimeError):
    """A handler dying between two steps (``--chaos``)."""


class Chaos:
    """Decides, call by call and step by step, what goes wrong; ``injected`` counts what did."""

    def __init__(
        self,
        rate: float,
        seed: int | None = None,
        calls: set[str] | None = None,
        crashes: bool = True,
        cover: bool = False,
    ) -> None:
        """``calls``: only these operations (e.g. ``{"PutItem"}``; default: every one of :data:`CALLS`);
        ``crashes``: whether handlers crash between steps too; ``cover``: each fault of each call, and
        a crash at each kind of step, happens the first time it can, then at random (a test's
        coverage does not hang on the seed)."""
        if not 0 <= rate < 1:
            raise ValueError(f"the chaos rate is a share of calls, from 0 to below 1: got {rate}")
        self.rate = rate
        self.calls = calls
        self.crashes = crashes
        self.cover = cover
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # the commit writes machines from 8 threads
        self.injected: Counter[str] = Counter()

    def _draw(self) -> float:
        with self._lock:
            return self._random.random()

    def _pick(self, options: tuple[Any, ...]) -> Any:
        with self._lock:
            return self._random.choice(options)

    def _count(self, what: str) -> None:
        with self._lock:
            self.injected[what] += 1

    # -- between steps ------------------------------------------------------------------------------

    def crash(self, step: str) -> None:
        """The handlers' fault hook: raise, now and then, between two steps."""
        if not self.crashes:
            return
        kind = f"crash at {step.split(':', 1)[0] if step.startswith('machine:') else step}"
        if (self.cover and not self.injected[kind]) or self._draw() < self.rate / STEPS_PER_INVOCATION:
            self._count(kind)
            raise ChaosCrash(f"chaos: the handler died at {step}")

    # -- on the calls ---------------------------------------------------------------------------------

    def register(self, service: str, client: Any) -> None:
        """Add the fault hooks to a handler's client (``Runtime.from_env(prepare=...)``)."""
        for operation, faults in CALLS.get(service, {}).items():
            if self.calls is not None and operation not in self.calls:
                continue
            events = client.meta.events
            events.register(f"before-parameter-build.{service}.{operation}", self._before(service, operation, faults))
            events.register(f"before-call.{service}.{operation}", self._throttle(service, operation))
            events.register(f"after-call.{service}.{operation}", self._after(service, operation))

    def _before(self, service: str, operation: str, faults: tuple[str, ...]) -> Any:
        def decide(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            untried = [f for f in faults if not self.injected[f"{service} {operation} {f}"]] if self.cover else []
            if not untried and self._draw() >= self.rate:
                return
            fault = untried[0] if untried else self._pick(faults)
            if fault == PARTIAL:
                taken = _take_out(operation, params, self._random, self._lock)
                if taken is None and untried:
                    return  # a request of one entry cannot be partly refused: wait for a bigger one
                if taken is None:  # a request of one entry: refuse it whole instead
                    fault = THROTTLE
                else:
                    context["chaos_taken"] = taken
            context["chaos"] = fault
            self._count(f"{service} {operation} {fault}")

        return decide

    def _throttle(self, service: str, operation: str) -> Any:
        def refuse(context: dict[str, Any], **_: Any) -> None:
            if context.get("chaos") == THROTTLE:
                raise _client_error(THROTTLING_CODE[service], operation, "chaos: throttled")

        return refuse

    def _after(self, service: str, operation: str) -> Any:
        def answer(parsed: dict[str, Any], context: dict[str, Any], http_response: Any = None, **_: Any) -> None:
            fault = context.get("chaos")
            if fault == AMBIGUOUS and getattr(http_response, "status_code", 200) < 300:
                raise _client_error("InternalServerError", operation, "chaos: the answer was lost")
            if fault == PARTIAL:
                _put_back(operation, parsed, context["chaos_taken"], THROTTLING_CODE[service])

        return answer


def _client_error(code: str, operation: str, message: str) -> Exception:
    from botocore.exceptions import ClientError

    error: Exception = ClientError({"Error": {"Code": code, "Message": message}}, operation)
    return error


def _take_out(operation: str, params: dict[str, Any], rng: random.Random, lock: threading.Lock) -> Any:
    """Remove a few entries from the request; what ``_put_back`` needs to report them refused."""
    if operation in ("PutRecords", "PutRecordBatch"):
        records = params["Records"]
        if len(records) < 2:
            return None
        with lock:
            refused = set(rng.sample(range(len(records)), rng.randint(1, max(1, len(records) // 10))))
        kept = [r for i, r in enumerate(records) if i not in refused]
        params["Records"][:] = kept
        return (len(kept) + len(refused), sorted(refused))
    (table, request), *_ = params["RequestItems"].items()
    entries = request["Keys"] if operation == "BatchGetItem" else request
    if len(entries) < 2:
        return None
    with lock:
        count = rng.randint(1, max(1, len(entries) // 4))
    taken = entries[-count:]
    del entries[-count:]
    return (table, taken)


def _put_back(operation: str, parsed: dict[str, Any], taken: Any, code: str) -> None:
    """Report the entries taken out as the service reports what it did not do."""
    if operation in ("PutRecords", "PutRecordBatch"):
        total, refused = taken
        key = "Records" if operation == "PutRecords" else "RequestResponses"
        answered = iter(parsed.get(key, []))
        failure = {"ErrorCode": code, "ErrorMessage": "chaos: refused"}
        parsed[key] = [dict(failure) if i in refused else next(answered) for i in range(total)]
        count = "FailedRecordCount" if operation == "PutRecords" else "FailedPutCount"
        parsed[count] = parsed.get(count, 0) + len(refused)
        return
    table, entries = taken
    if operation == "BatchGetItem":
        unprocessed = parsed.setdefault("UnprocessedKeys", {}).setdefault(table, {"Keys": []})
        unprocessed.setdefault("Keys", []).extend(entries)
        unprocessed["ConsistentRead"] = True
    else:
        parsed.setdefault("UnprocessedItems", {}).setdefault(table, []).extend(entries)
