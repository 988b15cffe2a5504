"""The way back from a failure-queue message: replay the records Lambda gave up on.

When a batch keeps failing, Lambda sends its stream mapping's failure destination a description of
it (``KinesisBatchInfo``: the shard, the first and last sequence numbers, the arrival times of the
first and last record, how many) and moves the shard on. Those records were skipped, and perhaps
partly applied before (a batch can fail after some of its records went through).

* A ``raw`` range (the ``process`` mapping) is read back from the raw archive (:mod:`.archive`) and
  run through the ``process`` step again, its events put on ``clean`` marked *redriven*.
* A ``clean`` range (the ``sessionize`` mapping) is read back from the ``clean`` stream itself, which
  keeps it for its retention (the failure queue keeps messages as long), and put on ``clean`` again,
  marked *redriven*.

Either way the pipeline takes it from there, and nothing is applied twice: a redriven record goes
past the raw-position marks (the checkpoint skipped it, so they cannot tell) and is admitted by the
exact event-id dedupe, which drops whatever was applied before (:mod:`.admission`). Rejected rows
come out again with the same ``source``: exact copies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from sessionflow.runtimes.aws import archive
from sessionflow.runtimes.aws.outputs import StreamEntry, StreamWriter
from sessionflow.runtimes.aws.positions import RAW_FIELD, RawPosition
from sessionflow.runtimes.aws.process import ProcessStep, RawRecord

# How far around the range's arrival times the archive's hour folders are read: Firehose writes a
# record under the hour of the oldest record of its object, up to its buffer interval (and any
# delay reading the stream) earlier or later.
ARCHIVE_SLACK_MS = 2 * archive.HOUR_MS
_DELIVER_ATTEMPTS = 8


class RedriveError(RuntimeError):
    """A range cannot be replayed (yet): records missing from the archive, or past the stream's retention."""


@dataclass(frozen=True, slots=True)
class FailedRange:
    """A failure-queue message: which records Lambda gave up on."""

    stream: str
    shard: str
    first: int
    last: int
    first_arrival_ms: int
    last_arrival_ms: int
    size: int

    @classmethod
    def from_message(cls, body: str | bytes | dict[str, Any]) -> FailedRange:
        message = orjson.loads(body) if isinstance(body, str | bytes) else body
        info = message.get("KinesisBatchInfo")
        if not isinstance(info, dict):
            raise RedriveError("not a Kinesis failure-destination message (no KinesisBatchInfo)")
        return cls(
            stream=info["streamArn"].rsplit("/", 1)[-1],
            shard=info["shardId"],
            first=int(info["startSequenceNumber"]),
            last=int(info["endSequenceNumber"]),
            first_arrival_ms=_ms(info["approximateArrivalOfFirstRecord"]),
            last_arrival_ms=_ms(info["approximateArrivalOfLastRecord"]),
            size=int(info["batchSize"]),
        )

    def describe(self) -> str:
        return f"{self.size} records of {self.stream}/{self.shard} ({self.first} to {self.last})"


@dataclass
class RedriveReport:
    records: int = 0  # records replayed
    events: int = 0  # events put on clean
    rejected: int = 0  # rejected rows sent (exact copies of those sent before, if any were)
    ranges: list[str] = field(default_factory=list)


def redrive_raw(
    failed: FailedRange, s3: Any, bucket: str, step: ProcessStep, report: RedriveReport, prefix: str = archive.PREFIX
) -> None:
    """Replay a ``raw`` range from the archive through ``process``."""
    window = (failed.first_arrival_ms - ARCHIVE_SLACK_MS, failed.last_arrival_ms + ARCHIVE_SLACK_MS)
    records = archive.find(s3, bucket, failed.shard, failed.first, failed.last, window, prefix)
    if len(records) < failed.size:
        raise RedriveError(
            f"{failed.describe()}: {len(records)} found in the archive; Firehose may not have written "
            "the rest yet (it buffers), try again later"
        )
    raw = [
        RawRecord(
            data=r.data,
            sequence_number=str(r.seq),
            arrival_ms=r.arrival_ms,
            source=f"{failed.stream}/{r.shard}",
            partition_key=r.key,
            batch_first=str(r.seq),
            redrive=True,
        )
        for r in records
    ]
    refined = [step.refine(record) for record in raw]
    report.records += len(raw)
    report.events += sum(1 for r in refined if r.event is not None)
    report.rejected += sum(1 for r in refined if r.rejected is not None)
    # As Lambda would: from the first record clean refused, again (earlier ones are not sent twice).
    for attempt in range(_DELIVER_ATTEMPTS):
        refused = step.deliver(refined).first_refused
        if refused is None:
            report.ranges.append(failed.describe())
            return
        refined = refined[refused:]
        time.sleep(min(2.0, 0.1 * 2**attempt))
    raise RedriveError(f"{failed.describe()}: the clean stream kept refusing records")


def redrive_clean(failed: FailedRange, kinesis: Any, clean: StreamWriter, report: RedriveReport) -> None:
    """Read a ``clean`` range back from the stream and put it on ``clean`` again, marked redriven."""
    try:
        iterator = kinesis.get_shard_iterator(
            StreamName=failed.stream,
            ShardId=failed.shard,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            StartingSequenceNumber=str(failed.first),
        )["ShardIterator"]
    except Exception as exc:
        raise RedriveError(f"{failed.describe()}: cannot read it back from the stream ({exc})") from exc
    entries: list[StreamEntry] = []
    while iterator:
        response = kinesis.get_records(ShardIterator=iterator, Limit=1000)
        chunk = [r for r in response["Records"] if int(r["SequenceNumber"]) <= failed.last]
        entries.extend(_redriven(r["Data"], r["PartitionKey"]) for r in chunk)
        if len(chunk) < len(response["Records"]) or not response["Records"]:
            break
        iterator = response.get("NextShardIterator")
    if len(entries) < failed.size:
        raise RedriveError(f"{failed.describe()}: only {len(entries)} still in the stream (past its retention?)")
    for attempt in range(_DELIVER_ATTEMPTS):
        accepted = clean.put(entries)
        refused = next((i for i, ok in enumerate(accepted) if not ok), None)
        if refused is None:
            report.records += failed.size
            report.events += failed.size
            report.ranges.append(failed.describe())
            return
        entries = entries[refused:]
        time.sleep(min(2.0, 0.1 * 2**attempt))
    raise RedriveError(f"{failed.describe()}: the clean stream kept refusing records")


def _redriven(data: bytes, partition_key: str) -> StreamEntry:
    """A ``clean`` record, its raw position marked redriven (one without a position gets one)."""
    value = orjson.loads(data)
    raw = value.get(RAW_FIELD)
    position = RawPosition.from_value(raw) if raw else RawPosition("redrive", 0, 0)
    value[RAW_FIELD] = replace(position, prev=None, redrive=True).to_value()
    return StreamEntry(partition_key, orjson.dumps(value))


def redrive(
    failed: FailedRange,
    *,
    raw_stream: str,
    clean_stream: str,
    s3: Any,
    bucket: str,
    kinesis: Any,
    step: Callable[[], ProcessStep],
    clean: StreamWriter,
    report: RedriveReport,
) -> None:
    """Replay one failed range, whichever stream it was on."""
    if failed.stream == raw_stream:
        redrive_raw(failed, s3, bucket, step(), report)
    elif failed.stream == clean_stream:
        redrive_clean(failed, kinesis, clean, report)
    else:
        raise RedriveError(f"{failed.describe()}: not a stream of this pipeline ({raw_stream}, {clean_stream})")


def _ms(value: Any) -> int:
    """An ISO-8601 time (Lambda's message) or epoch seconds, as epoch milliseconds."""
    if isinstance(value, int | float):
        return int(value * 1000)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class QueueOutcome:
    redriven: int = 0
    failed: list[str] = field(default_factory=list)  # why each message that could not be redriven


def drain_queue(
    sqs: Any, queue_url: str, replay: Callable[[FailedRange], None], *, keep: bool = False, limit: int = 1000
) -> QueueOutcome:
    """Replay each message of a failure queue; a message replayed is deleted (unless ``keep``), one
    that cannot be is left in the queue for a later try, and said why."""
    outcome = QueueOutcome()
    seen: set[str] = set()
    while outcome.redriven + len(outcome.failed) < limit:
        response = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300
        )
        messages = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not messages:
            return outcome
        for message in messages:
            seen.add(message["MessageId"])
            try:
                replay(FailedRange.from_message(message["Body"]))
            except RedriveError as exc:
                outcome.failed.append(str(exc))
                _release(sqs, queue_url, message)
                continue
            outcome.redriven += 1
            if keep:
                _release(sqs, queue_url, message)
            else:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return outcome


def _release(sqs: Any, queue_url: str, message: dict[str, Any]) -> None:
    """Make a message visible again at once (it stays in the queue)."""
    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
