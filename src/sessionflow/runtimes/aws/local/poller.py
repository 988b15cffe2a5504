"""A local event source mapping: reads Kinesis shards and invokes handlers the way Lambda does.

Per mapping (stream -> handler): batches of up to ``batch_size`` records, gathered for at most
``window_s``; shards in order, one batch in flight per shard; a partial batch response moves the
checkpoint to just before the lowest failed sequence number and retries from there; a handler
error bisects the batch (``bisect_on_error``; a split is not counted as a retry) down to single
records; a batch that fails ``max_retries`` more times unsplit (a single record, or a partial
failure) has its description sent to the on-failure destination (SQS, the AWS message shape) and
the shard moves on. Checkpoints are kept in the state store (key ``c#<stream>/<shard>``) after every
successful batch, so a killed poller resumes where it stopped (re-invoking at most one batch).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sessionflow.state.base import StateStore

logger = logging.getLogger("sessionflow.aws.poller")
Handler = Callable[[dict[str, Any], Any], Any]
REGION = "us-east-1"
ACCOUNT = "123456789012"


@dataclass
class Mapping:
    stream: str
    handler: Handler
    batch_size: int = 100
    window_s: float = 0.0
    max_retries: int = 3
    bisect_on_error: bool = True
    on_failure_queue_url: str | None = None
    name: str = ""  # a second reader of a stream (the raw archive's Firehose) keeps checkpoints of its own

    @property
    def key(self) -> str:
        return self.name or self.stream


@dataclass
class MappingStats:
    invocations: int = 0
    records: int = 0
    errors: int = 0
    partial_failures: int = 0
    sent_to_on_failure: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # Lambda's IteratorAge: how old the batch's last record was when the handler got it.
    iterator_ages_ms: list[float] = field(default_factory=list)


@dataclass
class _Shard:
    shard_id: str
    iterator: str | None
    buffer: list[dict[str, Any]] = field(default_factory=list)
    first_buffered_at: float | None = None
    closed: bool = False


class _Context:
    """What Lambda passes as ``context``: enough for Powertools and logging."""

    def __init__(self, name: str) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        self.memory_limit_in_mb = 1024
        self.aws_request_id = "local"
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "local"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


class Poller:
    def __init__(self, kinesis: Any, store: StateStore, mappings: list[Mapping], sqs: Any = None) -> None:
        self.kinesis = kinesis
        self.store = store
        self.mappings = mappings
        self.sqs = sqs
        self.stats = {m.key: MappingStats() for m in mappings}
        self._shards: dict[str, dict[str, _Shard]] = {m.key: {} for m in mappings}

    # -- the loop -------------------------------------------------------------------------------------

    def run(
        self,
        idle_rounds: int = 2,
        follow: bool = False,
        sleep_s: float = 0.05,
        scheduled: Callable[[], Any] | None = None,
        every_s: float = 300.0,
    ) -> None:
        """Poll until every stream has been empty for ``idle_rounds`` rounds (or forever if ``follow``).

        ``scheduled`` runs every ``every_s`` seconds between rounds, as an EventBridge schedule
        invokes a function (the sweep, in ``aws-local run --follow``).
        """
        quiet = 0
        next_run = time.monotonic() + every_s
        while True:
            if scheduled is not None and time.monotonic() >= next_run:
                scheduled()
                next_run = time.monotonic() + every_s
            moved = sum(self.poll_once(mapping) for mapping in self.mappings)
            waiting = any(shard.buffer for shards in self._shards.values() for shard in shards.values())
            # Records held back by the batching window are not quiet: their window will end.
            quiet = 0 if moved or waiting else quiet + 1
            if not follow and quiet >= idle_rounds:
                return
            if not moved:
                time.sleep(sleep_s)

    def poll_once(self, mapping: Mapping) -> int:
        """One round over the stream's shards; the number of records delivered."""
        delivered = 0
        for shard in self._discover(mapping).values():
            if shard.closed and not shard.buffer:
                continue
            self._fill(mapping, shard)
            if not shard.buffer:
                continue
            waited = time.monotonic() - (shard.first_buffered_at or 0.0)
            if len(shard.buffer) < mapping.batch_size and waited < mapping.window_s and not shard.closed:
                continue
            batch, shard.buffer = shard.buffer[: mapping.batch_size], shard.buffer[mapping.batch_size :]
            shard.first_buffered_at = time.monotonic() if shard.buffer else None
            self._deliver(mapping, shard.shard_id, batch, attempts=0)
            delivered += len(batch)
        return delivered

    def _discover(self, mapping: Mapping) -> dict[str, _Shard]:
        stream = mapping.stream
        shards = self._shards[mapping.key]
        for description in self.kinesis.list_shards(StreamName=stream)["Shards"]:
            shard_id = description["ShardId"]
            if shard_id in shards:
                continue
            checkpoint = self.store.get(_checkpoint_key(mapping.key, shard_id))
            if checkpoint is None:
                kwargs: dict[str, Any] = {"ShardIteratorType": "TRIM_HORIZON"}
            else:
                kwargs = {
                    "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                    "StartingSequenceNumber": checkpoint.value["seq"],
                }
            iterator = self.kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id, **kwargs)["ShardIterator"]
            shards[shard_id] = _Shard(shard_id, iterator)
        return shards

    def _fill(self, mapping: Mapping, shard: _Shard) -> None:
        while shard.iterator and len(shard.buffer) < mapping.batch_size:
            response = self.kinesis.get_records(ShardIterator=shard.iterator, Limit=mapping.batch_size)
            shard.iterator = response.get("NextShardIterator")
            records = response["Records"]
            if records and not shard.buffer:
                shard.first_buffered_at = time.monotonic()
            shard.buffer.extend(records)
            if shard.iterator is None:
                shard.closed = True
            if not records:
                return

    # -- one batch, the way Lambda retries it -----------------------------------------------------------

    def _deliver(self, mapping: Mapping, shard_id: str, batch: list[dict[str, Any]], attempts: int) -> None:
        stats = self.stats[mapping.key]
        while batch:
            stats.invocations += 1
            stats.iterator_ages_ms.append(
                max(0.0, (time.time() - _epoch(batch[-1]["ApproximateArrivalTimestamp"])) * 1000)
            )
            started = time.perf_counter()
            try:
                response = mapping.handler(self._event(mapping.stream, shard_id, batch), _Context(mapping.stream))
                failed_at = _lowest_failure(response, batch)
                error = False
            except Exception as exc:
                # One line each (a chaos run fails hundreds of invocations); the trace at debug level.
                logger.error("handler of %s failed on %d records: %r", mapping.stream, len(batch), exc)
                logger.debug("the handler's trace", exc_info=True)
                failed_at, error = 0, True
                stats.errors += 1
            stats.latencies_ms.append((time.perf_counter() - started) * 1000)
            if failed_at is None:
                stats.records += len(batch)
                self._checkpoint(mapping.key, shard_id, batch[-1])
                return
            if failed_at > 0:
                stats.records += failed_at
                self._checkpoint(mapping.key, shard_id, batch[failed_at - 1])
                batch = batch[failed_at:]
            if not error:
                stats.partial_failures += 1
            if error and mapping.bisect_on_error and len(batch) > 1:
                # Splitting is not a retry: halves start afresh, so a poison ends up alone and only
                # it exhausts the retries (the good records around it go through).
                half = len(batch) // 2
                self._deliver(mapping, shard_id, batch[:half], 0)
                self._deliver(mapping, shard_id, batch[half:], 0)
                return
            attempts += 1
            if attempts > mapping.max_retries:
                self._on_failure(mapping, shard_id, batch, attempts)
                self._checkpoint(mapping.key, shard_id, batch[-1])
                return

    def _checkpoint(self, stream: str, shard_id: str, record: dict[str, Any]) -> None:
        key = _checkpoint_key(stream, shard_id)
        current = self.store.get(key)
        self.store.put(key, {"seq": record["SequenceNumber"]}, current.version if current else None)

    def _on_failure(self, mapping: Mapping, shard_id: str, batch: list[dict[str, Any]], attempts: int) -> None:
        stats = self.stats[mapping.key]
        stats.sent_to_on_failure += len(batch)
        message = {
            "requestContext": {
                "requestId": "local",
                "functionArn": _Context(mapping.stream).invoked_function_arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": attempts,
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(),
            "KinesisBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": batch[0]["SequenceNumber"],
                "endSequenceNumber": batch[-1]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso(batch[0]["ApproximateArrivalTimestamp"]),
                "approximateArrivalOfLastRecord": _iso(batch[-1]["ApproximateArrivalTimestamp"]),
                "batchSize": len(batch),
                "streamArn": _stream_arn(mapping.stream),
            },
        }
        logger.error("%d records of %s/%s sent to the on-failure destination", len(batch), mapping.stream, shard_id)
        if self.sqs is not None and mapping.on_failure_queue_url:
            self.sqs.send_message(QueueUrl=mapping.on_failure_queue_url, MessageBody=orjson.dumps(message).decode())

    @staticmethod
    def _event(stream: str, shard_id: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """The event Lambda builds from GetRecords output."""
        return {
            "Records": [
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": r["PartitionKey"],
                        "sequenceNumber": r["SequenceNumber"],
                        "data": base64.b64encode(r["Data"]).decode("ascii"),
                        "approximateArrivalTimestamp": _epoch(r["ApproximateArrivalTimestamp"]),
                    },
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": f"{shard_id}:{r['SequenceNumber']}",
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/sessionflow-{stream}",
                    "awsRegion": REGION,
                    "eventSourceARN": _stream_arn(stream),
                }
                for r in batch
            ]
        }


def _lowest_failure(response: Any, batch: list[dict[str, Any]]) -> int | None:
    """Index of the lowest failed record, None if all succeeded (Lambda's reading of the response)."""
    failures = (response or {}).get("batchItemFailures") or [] if isinstance(response, dict) else []
    if not failures:
        return None
    positions = {r["SequenceNumber"]: i for i, r in enumerate(batch)}
    indexes = [positions.get(f.get("itemIdentifier")) for f in failures]
    if any(i is None for i in indexes):
        return 0  # an identifier Lambda cannot match: the whole batch is retried
    return min(i for i in indexes if i is not None)


def _checkpoint_key(stream: str, shard_id: str) -> str:
    return f"c#{stream}/{shard_id}"


def _stream_arn(stream: str) -> str:
    return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{stream}"


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _iso(value: Any) -> str:
    return datetime.fromtimestamp(_epoch(value), UTC).isoformat()


def pipeline_poller(
    aws: Any,
    store: StateStore | None = None,
    batch_size: int = 100,
    window_s: float = 0.0,
    max_retries: int = 3,
    handler_wrapper: Callable[[str, Handler], Handler] | None = None,
) -> Poller:
    """The two event source mappings of the pipeline (raw -> process, clean -> sessionize).

    ``aws`` is a :class:`~sessionflow.runtimes.aws.local.resources.LocalAws`; checkpoints go to
    ``store`` (default: the handlers' state table). ``handler_wrapper`` lets a test inject faults.
    """
    from sessionflow.runtimes.aws import handlers
    from sessionflow.runtimes.aws.local.resources import ARCHIVE_FIREHOSE, ON_FAILURE_QUEUE, RAW_STREAM

    sqs = aws.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=ON_FAILURE_QUEUE)["QueueUrl"]
    wrap = handler_wrapper or (lambda _name, handler: handler)
    mappings = [
        Mapping(
            RAW_STREAM,
            wrap("process", handlers.process_handler),
            batch_size,
            window_s,
            max_retries,
            on_failure_queue_url=queue_url,
        ),
        Mapping(
            aws.settings.clean_stream,
            wrap("sessionize", handlers.sessionize_handler),
            batch_size,
            window_s,
            max_retries,
            on_failure_queue_url=queue_url,
        ),
        # The raw archive's Firehose reading ``raw`` (in AWS the service does it): never failing a batch.
        Mapping(RAW_STREAM, archiver(aws.client("firehose"), ARCHIVE_FIREHOSE), 500, 0.0, 1000, name="raw-archive"),
    ]
    return Poller(aws.client("kinesis"), store or handlers.runtime().store, mappings, sqs=sqs)


def archiver(firehose: Any, delivery_stream: str) -> Handler:
    """What a Firehose with ``raw`` as its Kinesis source does: the records through the archive's
    record transformation (the ``archive`` Lambda's code), then into S3."""
    from sessionflow.runtimes.aws.archive import transform

    def archive(event: dict[str, Any], context: Any) -> None:
        records = [
            {
                "recordId": r["eventID"],
                "approximateArrivalTimestamp": int(r["kinesis"]["approximateArrivalTimestamp"] * 1000),
                "data": r["kinesis"]["data"],
                "kinesisRecordMetadata": {
                    "shardId": r["eventID"].split(":", 1)[0],
                    "partitionKey": r["kinesis"]["partitionKey"],
                    "sequenceNumber": r["kinesis"]["sequenceNumber"],
                    "approximateArrivalTimestamp": int(r["kinesis"]["approximateArrivalTimestamp"] * 1000),
                },
            }
            for r in event["Records"]
        ]
        lines = [{"Data": base64.b64decode(out["data"])} for out in transform({"records": records})["records"]]
        while lines:
            chunk: list[dict[str, bytes]] = []
            size = 0  # PutRecordBatch: up to 500 records and 4 MiB
            while lines and len(chunk) < 500 and (not chunk or size + len(lines[0]["Data"]) < 3_500_000):
                size += len(lines[0]["Data"])
                chunk.append(lines.pop(0))
            while chunk:
                response = firehose.put_record_batch(DeliveryStreamName=delivery_stream, Records=chunk)
                chunk = [
                    c for c, result in zip(chunk, response["RequestResponses"], strict=True) if "ErrorCode" in result
                ]

    return archive
