"""Lambda entry points: thin adapters from Kinesis events to the process and sessionize steps.

Powertools' batch utility turns per-record failures into a partial batch response, so Lambda
checkpoints before the lowest failed sequence number and redelivers from there. AWS clients and
settings are created at the first call (:func:`runtime`), or injected with :func:`use_runtime`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sessionflow.config import Config
from sessionflow.runtimes.aws.archive import transform
from sessionflow.runtimes.aws.outputs import FirehoseSink, KinesisWriter, Sink, StreamWriter
from sessionflow.runtimes.aws.process import ProcessStep, Refined, raw_record
from sessionflow.runtimes.aws.sessionize import CleanRecord, ShardConflict, ShardSessionizer
from sessionflow.runtimes.aws.settings import Settings
from sessionflow.state.base import StateStore

try:
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
    from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the AWS runtime needs its extra: pip install 'sessionflow[aws]'") from exc

logger = logging.getLogger("sessionflow.aws")


@dataclass
class Runtime:
    settings: Settings
    config: Config
    store: StateStore
    process: ProcessStep
    sessionize: ShardSessionizer
    clients: dict[str, Any]

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: StateStore,
        clean: StreamWriter,
        sink: Sink,
        config: Config | None = None,
        clients: dict[str, Any] | None = None,
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
        try:
            import boto3
        except ImportError as exc:  # pragma: no cover
            raise ImportError("the AWS runtime needs its extra: pip install 'sessionflow[aws]'") from exc
        from sessionflow.state.dynamodb import DynamoDBStore

        settings = settings or Settings.from_env()
        session = boto3.session.Session()
        clients = {
            name: session.client(name, endpoint_url=settings.endpoint_url)
            for name in ("kinesis", "firehose", "dynamodb")
        }
        if prepare is not None:
            for name, client in clients.items():
                prepare(name, client)
        return cls.build(
            settings,
            store=DynamoDBStore(clients["dynamodb"], settings.state_table, ttl_s=settings.state_ttl_ms // 1000),
            clean=KinesisWriter(clients["kinesis"], settings.clean_stream),
            sink=FirehoseSink(clients["firehose"], settings.firehoses),
            clients=clients,
            faults=faults,
        )


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


def _fail(processor: BatchProcessor, record: dict[str, Any], error: Exception) -> None:
    processor.failure_handler(KinesisStreamRecord(record), (type(error), error, error.__traceback__))


def process_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """raw -> validate, clean, enrich -> ``clean`` (events) and the rejected Firehose."""
    step = runtime().process
    records = event["Records"]
    batch_first = records[0]["kinesis"]["sequenceNumber"] if records else ""

    def refine(record: KinesisStreamRecord) -> Refined:
        return step.refine(raw_record(record.raw_event, record.kinesis.data_as_bytes(), batch_first))

    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
    with processor(records=records, handler=refine):
        results = processor.process()
        # Lambda redelivers from the lowest failed record: nothing after it is sent (it comes again).
        cut = next((i for i, (status, _, _) in enumerate(results) if status != "success"), len(results))
        refused = step.deliver([result for _, result, _ in results[:cut]])
        if refused is not None:
            _fail(processor, results[refused][2], RuntimeError("the clean stream refused the record"))
    return dict(processor.response())


def sessionize_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """clean -> per-machine sessions with state in DynamoDB -> events and sessions Firehoses."""
    step = runtime().sessionize

    def decode(record: KinesisStreamRecord) -> CleanRecord:
        return CleanRecord.decode(int(record.kinesis.sequence_number), record.kinesis.data_as_json())

    records = event["Records"]
    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
    with processor(records=records, handler=decode):
        results = processor.process()
        decoded = [(result, record) for status, result, record in results if status == "success"]
        if decoded:
            first = decoded[0][1]
            shard = f"{first['eventSourceARN'].rsplit('/', 1)[-1]}/{first['eventID'].split(':', 1)[0]}"
            report = step.apply(shard, [result for result, _ in decoded])
            failed = set(report.failed_sequence_numbers([result for result, _ in decoded]))
            for result, record in decoded:
                if result.sequence_number in failed:
                    _fail(processor, record, RuntimeError("machine state changed concurrently"))
            logger.info(
                "sessionized",
                extra={
                    "shard": shard,
                    "records": report.records,
                    "applied": report.applied,
                    "skipped": report.skipped,
                    "repeated": report.repeated,
                    "early": report.early,
                    "conflicts": report.conflicts,
                    "events": report.events,
                    "sessions": report.sessions,
                    "resent": report.resent,
                    "swept": report.swept,
                },
            )
    return dict(processor.response())


def flush_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """End of a stream (a replay, a test): close every open session of every shard of ``clean``."""
    rt = runtime()
    shards = event.get("shards")
    if shards is None:  # a scheduled or hand invocation without a list: every shard
        shards = clean_shards(rt)
    sessions = 0
    for shard in shards:
        sessions += rt.sessionize.flush(shard).sessions
    return {"shards": len(shards), "sessions": sessions}


def sweep_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """On a schedule: close the idle sessions of the shards that have gone quiet.

    See :meth:`ShardSessionizer.sweep`. A shard another sweep holds, or whose item another
    invocation is writing, is left for the next sweep (a busy shard closes its idle sessions
    itself). Each shard is held for this invocation's remaining time; shards are not started when
    little of it is left. A shard that fails does not stop the others; the invocation then fails,
    so the function's retries and on-failure destination see it.
    """
    rt = runtime()
    shards = event.get("shards")
    if shards is None:  # a scheduled or hand invocation without a list: every shard
        shards = clean_shards(rt)
    swept = sessions = busy = left = 0
    failed: list[str] = []
    for shard in random.sample(shards, len(shards)):  # any order: no shard always comes last
        remaining = _remaining_ms(context)
        if remaining < _SWEEP_MARGIN_MS:
            left += 1
            continue
        try:
            report = rt.sessionize.sweep(shard, lease_ms=remaining)
        except ShardConflict:
            busy += 1
            continue
        except Exception:
            logger.exception("sweep of %s failed", shard)
            failed.append(shard)
            continue
        busy += not report.leased
        swept += report.swept
        sessions += report.sessions
    result = {"shards": len(shards), "swept": swept, "sessions": sessions, "busy": busy, "left": left}
    logger.info("swept", extra=result)
    if failed:
        raise SweepFailed(f"the sweep of {len(failed)} shards failed: {', '.join(sorted(failed))}")
    return result


class SweepFailed(RuntimeError):
    """Some shards could not be swept (their recovery or commit failed); the others were."""


# A sweep does not start a shard with less than this left of its invocation (a Lambda's timeout).
_SWEEP_MARGIN_MS = 30_000
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
