"""Lambda entry points: thin adapters from Kinesis events to the process and sessionize steps.

Powertools' batch utility turns per-record failures into a partial batch response, so Lambda
checkpoints before the lowest failed sequence number and redelivers from there. AWS clients and
settings are created at the first call (:func:`runtime`), or injected with :func:`use_runtime`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sessionflow.config import Config
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
    ) -> Runtime:
        config = config or settings.load_config()
        return cls(
            settings=settings,
            config=config,
            store=store,
            process=ProcessStep(config, clean, sink),
            sessionize=ShardSessionizer(config.session, store, sink),
            clients=clients or {},
        )

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> Runtime:
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
        return cls.build(
            settings,
            store=DynamoDBStore(clients["dynamodb"], settings.state_table, ttl_s=settings.state_ttl_ms // 1000),
            clean=KinesisWriter(clients["kinesis"], settings.clean_stream),
            sink=FirehoseSink(clients["firehose"], settings.firehoses),
            clients=clients,
        )


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
        done = [(result, record) for status, result, record in results if status == "success"]
        delivered = step.deliver([result for result, _ in done])
        for (_, record), ok in zip(done, delivered, strict=True):
            if not ok:
                _fail(processor, record, RuntimeError("the clean stream refused the record"))
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
    # The stream's clock over all of them, taken before any is flushed: each shard closes its open
    # sessions against it (their close_reason), as one run over the whole stream would.
    clock = rt.sessionize.stream_clock(shards)
    sessions = 0
    for shard in shards:
        sessions += rt.sessionize.flush(shard, clock).sessions
    return {"shards": len(shards), "sessions": sessions}


def sweep_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """On a schedule: close the idle sessions of the shards that have gone quiet.

    See :meth:`ShardSessionizer.sweep`. A shard whose item another invocation is writing is left
    for the next sweep: a busy shard closes its idle sessions itself.
    """
    rt = runtime()
    shards = event.get("shards")
    if shards is None:  # a scheduled or hand invocation without a list: every shard
        shards = clean_shards(rt)
    swept = sessions = busy = 0
    for shard in shards:
        try:
            report = rt.sessionize.sweep(shard)
        except ShardConflict:
            busy += 1
            continue
        swept += report.swept
        sessions += report.sessions
    result = {"shards": len(shards), "swept": swept, "sessions": sessions, "busy": busy}
    logger.info("swept", extra=result)
    return result


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
