"""The ``process`` step: raw Kinesis records -> refined events on ``clean`` + rejected rows.

Pure core underneath (the core's raw-line step, :class:`~sessionflow.core.pipeline.LineRefiner`, the
same as the embedded runner's and the backfill's); this only decides what a record's processing time
and its source are, and where each result goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core.pipeline import LineRefiner
from sessionflow.runtimes.aws.outputs import Row, Sink, StreamEntry, StreamWriter
from sessionflow.runtimes.aws.positions import RAW_FIELD, RawPosition, lane


@dataclass(frozen=True, slots=True)
class RawRecord:
    data: bytes
    sequence_number: str
    arrival_ms: int  # Kinesis' approximate arrival time: the processing time, identical on every retry
    source: str  # "stream/shardId-..."
    partition_key: str = ""
    batch_first: str = ""  # the sequence number of the first record of the batch it came in


@dataclass(slots=True)
class Refined:
    """One record's fate: an event for ``clean``, a rejected row, or nothing (a blank record)."""

    entry: StreamEntry | None = None
    rejected: Row | None = None


class ProcessStep:
    def __init__(self, config: Config, clean: StreamWriter, sink: Sink) -> None:
        self.lines = LineRefiner(config)
        self.clean = clean
        self.sink = sink

    def refine(self, record: RawRecord) -> Refined:
        # A Kinesis record has no line number; its shard and sequence number say where it was.
        where = f"{record.source}/{record.sequence_number}"
        refined = self.lines.refine_lines(((record.data, where, 0),), record.arrival_ms)
        if refined.rejections:
            return Refined(rejected=refined.rejections[0])
        if refined.events:
            event = refined.events[0]
            machine_id = event["machine_id"]
            # The raw position goes with the event, so a copy put again by a retry is applied once.
            position = RawPosition(
                lane(record.source, record.partition_key, machine_id),
                int(record.sequence_number),
                int(record.batch_first or record.sequence_number),
            )
            # Partition by machine so each machine's events stay in order on `clean`.
            return Refined(entry=StreamEntry(machine_id, orjson.dumps({**event, RAW_FIELD: position.to_list()})))
        return Refined()

    def deliver(self, refined: Sequence[Refined]) -> list[bool]:
        """Send a batch's results; True per record delivered (events to ``clean``, rejections to S3)."""
        entries = [(i, r.entry) for i, r in enumerate(refined) if r.entry is not None]
        delivered = [True] * len(refined)
        if entries:
            for (i, _), accepted in zip(entries, self.clean.put([e for _, e in entries]), strict=True):
                delivered[i] = accepted
        rejected = [r.rejected for r in refined if r.rejected is not None]
        if rejected:
            # Firehose retries inside the sink; what it still refuses raises and fails the batch.
            self.sink.send({"rejected": rejected})
        return delivered


def raw_record(record: dict[str, Any], data: bytes, batch_first: str = "") -> RawRecord:
    """From a Lambda Kinesis event record (the dict), its decoded data and its batch's first sequence number."""
    kinesis = record["kinesis"]
    stream = record["eventSourceARN"].rsplit("/", 1)[-1]
    shard = record["eventID"].split(":", 1)[0]
    return RawRecord(
        data=data,
        sequence_number=kinesis["sequenceNumber"],
        arrival_ms=int(float(kinesis["approximateArrivalTimestamp"]) * 1000),
        source=f"{stream}/{shard}",
        partition_key=kinesis.get("partitionKey", ""),
        batch_first=batch_first,
    )
