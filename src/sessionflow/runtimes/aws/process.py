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


@dataclass(frozen=True, slots=True)
class RawRecord:
    data: bytes
    sequence_number: str
    arrival_ms: int  # Kinesis' approximate arrival time: the processing time, identical on every retry
    source: str  # "stream/shardId-..."


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
            # Partition by machine so each machine's events stay in order on `clean`.
            return Refined(entry=StreamEntry(event["machine_id"], orjson.dumps(event)))
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


def raw_record(record: dict[str, Any], data: bytes) -> RawRecord:
    """From a Lambda Kinesis event record (the dict) and its decoded data."""
    kinesis = record["kinesis"]
    stream = record["eventSourceARN"].rsplit("/", 1)[-1]
    shard = record["eventID"].split(":", 1)[0]
    return RawRecord(
        data=data,
        sequence_number=kinesis["sequenceNumber"],
        arrival_ms=int(float(kinesis["approximateArrivalTimestamp"]) * 1000),
        source=f"{stream}/{shard}",
    )
