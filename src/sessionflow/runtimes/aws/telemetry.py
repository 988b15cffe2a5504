"""What the functions tell an operator: Powertools Logger, Metrics and Tracer.

* **Logs**: one JSON line per batch (Powertools ``Logger``), with the Lambda context, the shard, the
  batch's sequence range and size, and its counts; the level is ``POWERTOOLS_LOG_LEVEL``.
* **Metrics**: CloudWatch embedded metric format, printed at the end of every invocation (also a
  failed one), namespace ``POWERTOOLS_METRICS_NAMESPACE``, dimensions ``service`` and ``function``
  (and ``reason`` for rejections). :data:`METRICS` lists every metric a handler emits; the
  dashboard in ``serverless.yml`` draws from these (tests/deploy checks it).
* **Traces**: X-Ray (Powertools ``Tracer``), a segment per invocation and a subsegment per AWS call
  and per step; off outside Lambda.

Made once per process, at the first invocation (:class:`Telemetry` is built with the runtime), never
at import. Powertools keeps its metric set per process, so each invocation flushes what it added.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from sessionflow.runtimes.aws.settings import Settings

try:
    from aws_lambda_powertools import Logger, Metrics, Tracer
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the AWS runtime needs its extra: pip install 'sessionflow[aws]'") from exc

COUNT, MILLISECONDS, BYTES = "Count", "Milliseconds", "Bytes"
# Every metric the handlers emit, with its unit. A name not here is refused (a typo would be a
# metric no dashboard or alarm ever shows).
METRICS: dict[str, str] = {
    "ColdStart": COUNT,
    # process
    "RecordsIn": COUNT,  # records in the batch (every function that takes stream records)
    "RecordsValid": COUNT,  # events put on clean
    "RecordsRejected": COUNT,  # all reasons; also per reason, with a `reason` dimension
    "RecordsRefused": COUNT,  # events clean refused: reported as failures, delivered again
    "RecordsUntaken": COUNT,  # left for Lambda to deliver again: too little time was left
    # sessionize, sweep, flush
    "RecordsApplied": COUNT,
    "RecordsSkipped": COUNT,  # redelivered records already applied
    "RecordsRepeated": COUNT,  # records process put on clean again (a raw retry): dropped by position
    "RecordsParked": COUNT,  # records ahead of their machine's previous raw record: they wait for it
    "ConflictingCopies": COUNT,  # copies of other content: rejected as conflicting_duplicate
    "RecordsFailed": COUNT,  # records of machines whose write lost a race: delivered again
    "Duplicates": COUNT,
    "Late": COUNT,
    "EventsOut": COUNT,
    "SessionsClosed": COUNT,
    "RowsResent": COUNT,  # rows of an earlier attempt's outbox, sent again by recovery
    "MachinesFenced": COUNT,
    "MachinesSwept": COUNT,  # idle machines looked at through the timers
    "StateBytesRead": BYTES,
    "StateBytesWritten": BYTES,
    "StateWrites": COUNT,
    "CommitLatency": MILLISECONDS,  # a batch's commit: intent, machine writes, sends, done
    "Conflicts": COUNT,  # conditional writes lost to another writer, and whole-batch conflicts
    "Retries": COUNT,  # AWS calls retried by the SDK, and records Firehose refused and were re-sent
    "ShardsDone": COUNT,  # sweep, flush: shards looked at
    "ShardsBusy": COUNT,  # sweep: shards another invocation held (left for the next run)
    "ShardsLeft": COUNT,  # sweep, flush: shards left because the invocation ran out of time
}


class _Stdout(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is when a line is logged (Lambda's, or a test's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


@functools.cache
def _stdout() -> _Stdout:
    """One handler per process: Powertools configures a service's logger once, with the first
    handler given, and a later Logger of that service must be given the same one."""
    return _Stdout()


class Telemetry:
    """The Powertools Logger, Metrics and Tracer of one process, and what a batch reports to them."""

    def __init__(self, settings: Settings) -> None:
        self.service = settings.service
        self.namespace = settings.metrics_namespace
        self.logger = Logger(service=self.service, logger_handler=_stdout())
        self.logger.setLevel(None)  # POWERTOOLS_LOG_LEVEL (or Lambda's log level), also for a reused logger
        self.metrics = Metrics(namespace=self.namespace, service=self.service)
        self.tracer = Tracer(service=self.service)
        self.function = ""
        self._cold = True

    def invoke(self, function: str, handler: Callable[[dict[str, Any], Any], Any], event: Any, context: Any) -> Any:
        """One invocation of ``handler``: log keys and metric dimensions for it, an X-Ray segment,
        and the metrics flushed at the end, whether it returns or raises."""
        self.function = function
        self.logger.clear_state()
        self.logger.append_keys(function=function, cold_start=self._cold, **_context_keys(context))
        self.metrics.clear_metrics()
        self.metrics.add_dimension("function", function)
        if self._cold:
            self.count("ColdStart", 1)
            self._cold = False

        def run(event: Any, context: Any) -> Any:
            return handler(event, context)

        run.__name__ = run.__qualname__ = f"{function}_handler"  # the X-Ray subsegment's name
        try:
            return self.tracer.capture_lambda_handler(run)(event, context)
        finally:
            self.flush()

    @contextmanager
    def step(self, name: str, **annotations: str | int) -> Iterator[None]:
        """An X-Ray subsegment around one step (a no-op when tracing is off)."""
        with self.tracer.provider.in_subsegment(f"## {name}") as subsegment:
            for key, value in annotations.items():
                subsegment.put_annotation(key, str(value))
            yield

    def count(self, name: str, value: float) -> None:
        self._add(name, value)

    def add(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._add(name, value)

    def _add(self, name: str, value: float) -> None:
        unit = METRICS.get(name)
        if unit is None:
            raise KeyError(f"{name} is not one of the metrics sessionflow emits (telemetry.METRICS)")
        self.metrics.add_metric(name=name, unit=MetricUnit(unit), value=value)

    def rejected(self, reasons: Mapping[str, int]) -> None:
        """``RecordsRejected`` per reason: a metric set of its own for each, with a ``reason`` dimension."""
        for reason, value in sorted(reasons.items()):
            per_reason = EphemeralMetrics(namespace=self.namespace, service=self.service)
            per_reason.add_dimension("function", self.function)
            per_reason.add_dimension("reason", reason)
            per_reason.add_metric(name="RecordsRejected", unit=MetricUnit.Count, value=value)
            per_reason.flush_metrics()

    def metadata(self, **values: object) -> None:
        """Searchable in the metric log line, not dimensions (e.g. the shard)."""
        for key, value in values.items():
            self.metrics.add_metadata(key, value)

    def flush(self) -> None:
        if self.metrics.metric_set:
            self.metrics.flush_metrics()
        self.metrics.clear_metrics()  # when metrics are disabled, flush keeps them: never let them pile up


def _context_keys(context: Any) -> dict[str, Any]:
    """The Lambda context's keys, as Powertools' ``inject_lambda_context`` logs them (none locally)."""
    if context is None or not hasattr(context, "aws_request_id"):
        return {}
    return {
        "function_name": context.function_name,
        "function_memory_size": context.memory_limit_in_mb,
        "function_arn": context.invoked_function_arn,
        "function_request_id": context.aws_request_id,
    }
