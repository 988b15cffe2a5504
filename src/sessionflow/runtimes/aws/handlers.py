"""Lambda entry points: thin adapters from Kinesis events to the process and sessionize steps.

Powertools' batch utility turns per-record failures into a partial batch response, so Lambda
checkpoints before the lowest failed sequence number and redelivers from there. AWS clients and
settings are created at the first call (:func:`runtime`), or injected with :func:`use_runtime`.
Every invocation logs a JSON line per batch and emits its metrics (:mod:`.telemetry`), and stops
taking records when its time runs short (:mod:`.budget`): those are reported as failures and come again.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from sessionflow.config import Config
from sessionflow.runtimes.aws.archive import transform
from sessionflow.runtimes.aws.budget import TimeBudget
from sessionflow.runtimes.aws.clients import RetryCount, make_clients
from sessionflow.runtimes.aws.outputs import FirehoseSink, KinesisWriter, Sink, StreamWriter
from sessionflow.runtimes.aws.process import ProcessStep, Refined, raw_record
from sessionflow.runtimes.aws.sessionize import BatchReport, CleanRecord, ShardConflict, ShardSessionizer
from sessionflow.runtimes.aws.settings import Settings
from sessionflow.runtimes.aws.telemetry import Telemetry
from sessionflow.state.base import StateStore, StoreStats

try:
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
    from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the AWS runtime needs its extra: pip install 'sessionflow[aws]'") from exc


@dataclass
class Runtime:
    settings: Settings
    config: Config
    store: StateStore
    process: ProcessStep
    sessionize: ShardSessionizer
    clients: dict[str, Any]
    telemetry: Telemetry
    retries: RetryCount = field(default_factory=RetryCount)

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: StateStore,
        clean: StreamWriter,
        sink: Sink,
        config: Config | None = None,
        clients: dict[str, Any] | None = None,
        retries: RetryCount | None = None,
        faults: Callable[[str], None] | None = None,
    ) -> Runtime:
        """``faults(step)`` runs between the steps of each handler (tests, ``aws-local run --chaos``)."""
        config = config or settings.load_config()
        hook = faults or _no_fault
        return cls(
            settings=settings,
            config=config,
            store=store,
            process=ProcessStep(config, clean, sink, faults=hook),
            sessionize=ShardSessionizer(config.session, store, sink, faults=hook),
            clients=clients or {},
            telemetry=Telemetry(settings),
            retries=retries or RetryCount(),
        )

    @classmethod
    def from_env(
        cls,
        settings: Settings | None = None,
        prepare: Callable[[str, Any], None] | None = None,
        faults: Callable[[str], None] | None = None,
    ) -> Runtime:
        """The runtime a Lambda builds from its environment. ``prepare(service, client)`` may add
        to each client (``aws-local run --chaos`` registers its fault hooks there)."""
        from sessionflow.state.dynamodb import DynamoDBStore

        settings = settings or Settings.from_env()
        clients, retries = make_clients(settings, ("kinesis", "firehose", "dynamodb"))
        if prepare is not None:
            for name, client in clients.items():
                prepare(name, client)
        return cls.build(
            settings,
            store=DynamoDBStore(clients["dynamodb"], settings.state_table, ttl_s=settings.state_ttl_ms // 1000),
            clean=KinesisWriter(clients["kinesis"], settings.clean_stream),
            sink=FirehoseSink(clients["firehose"], settings.firehoses),
            clients=clients,
            retries=retries,
            faults=faults,
        )

    def retried(self) -> int:
        """AWS calls the SDK retried and records Firehose refused and were sent again, so far."""
        sinks = {id(step.sink): step.sink for step in (self.process, self.sessionize)}  # often one sink
        return self.retries.retries + sum(getattr(sink, "retried", 0) for sink in sinks.values())


def _no_fault(_step: str) -> None:
    return None


class _Current:
    runtime: Runtime | None = None


def runtime() -> Runtime:
    """The runtime of this process (a warm Lambda keeps it between invocations)."""
    if _Current.runtime is None:
        _Current.runtime = Runtime.from_env()
    return _Current.runtime


def use_runtime(value: Runtime | None) -> None:
    """Inject a runtime (tests, the local poller, the benchmark); None goes back to the environment."""
    _Current.runtime = value


class OutOfTime(RuntimeError):
    """Left for Lambda to deliver again: the invocation had too little time left to take it."""


def _fail(processor: BatchProcessor, record: dict[str, Any], error: Exception) -> None:
    processor.failure_handler(KinesisStreamRecord(record), (type(error), error, error.__traceback__))


def _all_failed(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every record left for the retry, as a partial batch response: no error, no bisecting."""
    return {"batchItemFailures": [{"itemIdentifier": r["kinesis"]["sequenceNumber"]} for r in records]}


def _invoke(function: str, body: Callable[[Runtime, dict[str, Any], Any], dict[str, Any]]) -> Callable[..., Any]:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        rt = runtime()
        result: dict[str, Any] = rt.telemetry.invoke(function, partial(body, rt), event, context)
        return result

    handler.__name__ = handler.__qualname__ = f"{function}_handler"
    handler.__doc__ = body.__doc__
    return handler


def _position(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a batch is: its shard (stream/shardId), sequence range and size, for its log line."""
    if not records:
        return {"batch_size": 0}
    first, last = records[0], records[-1]
    return {
        "shard": f"{first['eventSourceARN'].rsplit('/', 1)[-1]}/{first['eventID'].split(':', 1)[0]}",
        "first_sequence": first["kinesis"]["sequenceNumber"],
        "last_sequence": last["kinesis"]["sequenceNumber"],
        "batch_size": len(records),
    }


def _process(rt: Runtime, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """raw -> validate, clean, enrich -> ``clean`` (events) and the rejected Firehose."""
    step = rt.process
    records = event["Records"]
    batch_first = records[0]["kinesis"]["sequenceNumber"] if records else ""
    budget = TimeBudget(context, rt.settings.time_reserve_ms)
    retried = rt.retried()
    untaken = refused = valid = 0
    rejected: Counter[str] = Counter()

    def refine(record: KinesisStreamRecord) -> Refined:
        nonlocal untaken
        if budget.exhausted():
            untaken += 1
            raise OutOfTime(f"less than {rt.settings.time_reserve_ms} ms left: record left for the retry")
        return step.refine(raw_record(record.raw_event, record.kinesis.data_as_bytes(), batch_first))

    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
    try:
        if records and budget.exhausted():  # not one record: Powertools would call that an error
            untaken = len(records)
            return _all_failed(records)
        with processor(records=records, handler=refine), rt.telemetry.step("process", records=len(records)):
            results = processor.process()
            # Lambda redelivers from the lowest failed record: nothing after it is sent (it comes again).
            cut = next((i for i, (status, _, _) in enumerate(results) if status != "success"), len(results))
            done: list[Refined] = [result for _, result, _ in results[:cut]]
            delivery = step.deliver(done)
            first = delivery.first_refused
            delivered = done if first is None else done[:first]
            valid = sum(1 for result in delivered if result.event is not None)
            for result in delivered:
                if result.rejected is not None:
                    rejected[result.rejected["reason"]] += 1
            refused = delivery.refused
            if first is not None:
                _fail(processor, results[first][2], RuntimeError("the clean stream refused the record"))
    finally:
        counts = {
            "RecordsIn": len(records),
            "RecordsValid": valid,
            "RecordsRejected": sum(rejected.values()),
            "RecordsRefused": refused,
            "RecordsUntaken": untaken,
            "Retries": rt.retried() - retried,
        }
        rt.telemetry.add(counts)
        rt.telemetry.rejected(rejected)
        rt.telemetry.logger.info(
            "process batch",
            extra={**_position(records), **_snake(counts), "rejected_by_reason": dict(sorted(rejected.items()))},
        )
    return dict(processor.response())


process_handler = _invoke("process", _process)


def _sessionize(rt: Runtime, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """clean -> per-machine sessions with state in DynamoDB -> events and sessions Firehoses."""
    step = rt.sessionize
    records = event["Records"]
    budget = TimeBudget(context, rt.settings.time_reserve_ms)
    before, retried = replace(rt.store.stats), rt.retried()
    report, failed, untaken, conflict = BatchReport(records=len(records)), 0, 0, 0

    def decode(record: KinesisStreamRecord) -> CleanRecord:
        return CleanRecord.decode(int(record.kinesis.sequence_number), record.kinesis.data_as_json())

    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
    try:
        if records and budget.exhausted():  # a batch is applied whole, or left whole for the retry
            untaken = len(records)
            return _all_failed(records)
        with processor(records=records, handler=decode):
            results = processor.process()
            decoded = [(result, record) for status, result, record in results if status == "success"]
            if decoded:
                shard = _position([record for _, record in decoded])["shard"]
                with rt.telemetry.step("sessionize", shard=shard, records=len(decoded)):
                    try:
                        report = step.apply(shard, [result for result, _ in decoded])
                    except ShardConflict:
                        conflict = 1  # another invocation committed the shard: Lambda retries the batch
                        raise
                failed_seqs = set(report.failed_sequence_numbers([result for result, _ in decoded]))
                for result, record in decoded:
                    if result.sequence_number in failed_seqs:
                        failed += 1
                        _fail(processor, record, RuntimeError("machine state changed concurrently"))
    finally:
        counts = {
            "RecordsIn": len(records),
            "RecordsApplied": report.applied,
            "RecordsSkipped": report.skipped,
            "RecordsRepeated": report.repeated,
            "RecordsParked": report.early,
            "ConflictingCopies": report.conflicts,
            "RecordsFailed": failed,
            "RecordsUntaken": untaken,
            **_closing(report),
            **_state(before, rt.store.stats, conflict),
            "Retries": rt.retried() - retried,
        }
        rt.telemetry.add(counts)
        if report.commit_ms:
            rt.telemetry.add({"CommitLatency": report.commit_ms})
        rt.telemetry.logger.info(
            "sessionize batch",
            extra={**_position(records), **_snake(counts), "commit_ms": round(report.commit_ms, 1)},
        )
    return dict(processor.response())


sessionize_handler = _invoke("sessionize", _sessionize)


def _closing(report: BatchReport) -> dict[str, float]:
    """What a batch, sweep or flush of a shard produced."""
    return {
        "Duplicates": report.duplicates,
        "Late": report.late,
        "EventsOut": report.events,
        "SessionsClosed": report.sessions,
        "RowsResent": report.resent,
        "MachinesFenced": report.fenced,
        "MachinesSwept": report.swept,
    }


def _state(before: StoreStats, after: StoreStats, shard_conflicts: int) -> dict[str, float]:
    """The state store's work since ``before``, and conflicts: lost conditional writes and shards."""
    return {
        "StateBytesRead": after.bytes_read - before.bytes_read,
        "StateBytesWritten": after.bytes_written - before.bytes_written,
        "StateWrites": after.writes - before.writes,
        "Conflicts": after.conflicts - before.conflicts + shard_conflicts,
    }


def _snake(counts: Mapping[str, float]) -> dict[str, float]:
    """``RecordsIn`` -> ``records_in``: log keys in the style of Powertools' own."""
    return {"".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_"): v for name, v in counts.items()}


def _shards(rt: Runtime, event: dict[str, Any]) -> list[str]:
    shards = event.get("shards")
    # A scheduled or hand invocation without a list: every shard.
    return list(shards) if shards is not None else clean_shards(rt)


def _flush(rt: Runtime, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """End of a stream (a replay, a test): close every open session of every shard of ``clean``.

    Stops before the timeout: the shards it had no time for are returned as ``left``; invoke it again
    with ``{"shards": left}``.
    """
    shards = _shards(rt, event)
    # The stream's clock over all of them, taken before any is flushed: each shard closes its open
    # sessions against it (their close_reason), as one run over the whole stream would.
    clock = rt.sessionize.stream_clock(shards)
    return _each_shard(rt, "flush", shards, context, lambda shard: rt.sessionize.flush(shard, clock))


flush_handler = _invoke("flush", _flush)


def _sweep(rt: Runtime, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """On a schedule: close the idle sessions of the shards that have gone quiet.

    See :meth:`ShardSessionizer.sweep`. A shard whose item another invocation is writing is left
    for the next sweep: a busy shard closes its idle sessions itself. So are the shards it had no
    time for (``left``), and those another sweep holds: each shard is leased for this invocation's
    remaining time, so two sweeps never work on one shard at once. The shards go in any order (none
    is always last), and one that fails does not stop the others: the invocation fails after them,
    so its retries and its failure destination see it.
    """

    def sweep(shard: str) -> BatchReport:
        return rt.sessionize.sweep(shard, lease_ms=_remaining_ms(context))

    shards = _shards(rt, event)
    return _each_shard(rt, "sweep", random.sample(shards, len(shards)), context, sweep)


sweep_handler = _invoke("sweep", _sweep)


def _each_shard(
    rt: Runtime, function: str, shards: list[str], context: Any, close: Callable[[str], BatchReport]
) -> dict[str, Any]:
    budget = TimeBudget(context, rt.settings.time_reserve_ms)
    before, retried = replace(rt.store.stats), rt.retried()
    total, busy, left, failed = BatchReport(), 0, [], []
    sweeping = function == "sweep"
    try:
        for shard in shards:
            if budget.exhausted():
                left.append(shard)
                continue
            try:
                with rt.telemetry.step(function, shard=shard):
                    report = close(shard)
            except ShardConflict:
                if not sweeping:
                    raise
                busy += 1
                continue
            except Exception:
                if not sweeping:
                    raise
                rt.telemetry.logger.exception("the sweep of %s failed", shard)
                failed.append(shard)
                continue
            if not report.leased:  # another sweep is on it
                busy += 1
                continue
            for name in ("events", "sessions", "swept", "resent", "fenced"):
                setattr(total, name, getattr(total, name) + getattr(report, name))
            if report.commit_ms:
                rt.telemetry.add({"CommitLatency": report.commit_ms})
    finally:
        counts = {
            "ShardsDone": len(shards) - len(left) - busy,
            "ShardsBusy": busy,
            "ShardsLeft": len(left),
            **_closing(total),
            **_state(before, rt.store.stats, busy),
            "Retries": rt.retried() - retried,
        }
        rt.telemetry.add(counts)
        rt.telemetry.logger.info(function, extra={"shards": len(shards), **_snake(counts)})
    if failed:
        raise SweepFailed(f"the sweep of {len(failed)} shards failed: {', '.join(sorted(failed))}")
    if sweeping:
        result: dict[str, Any] = {"shards": len(shards), "swept": total.swept, "sessions": total.sessions, "busy": busy}
    else:
        result = {"shards": len(shards), "sessions": total.sessions}
    if left:
        result["left"] = left
    return result


class SweepFailed(RuntimeError):
    """Some shards could not be swept (their recovery or commit failed); the others were."""


# How long a sweep holds a shard when it has no Lambda context (the local poller, a hand call).
_DEFAULT_REMAINING_MS = 6 * 60 * 1000


def _remaining_ms(context: Any) -> int:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return int(remaining()) if callable(remaining) else _DEFAULT_REMAINING_MS


def archive_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The raw archive's Firehose record transformation: each ``raw`` record as an archive line
    that keeps its shard, sequence number, arrival time and partition key (:mod:`.archive`)."""
    return transform(event)


def clean_shards(rt: Runtime) -> list[str]:
    """Every shard of ``clean``, closed parents of a reshard included (their sessions need closing too)."""
    kinesis = rt.clients["kinesis"]
    stream = rt.settings.clean_stream
    shards: list[str] = []
    request: dict[str, Any] = {"StreamName": stream}
    while True:
        page = kinesis.list_shards(**request)
        shards.extend(f"{stream}/{shard['ShardId']}" for shard in page["Shards"])
        if not page.get("NextToken"):
            return shards
        request = {"NextToken": page["NextToken"]}  # ListShards takes the token without the stream name
