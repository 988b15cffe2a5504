"""The ``process`` step: raw Kinesis records -> refined events on ``clean`` + rejected rows.

Pure core underneath (the core's raw-line step, :class:`~sessionflow.core.pipeline.LineRefiner`, the
same as the embedded runner's and the backfill's); this only decides what a record's processing time
and its source are, and where each result goes.

Lambda redelivers a raw batch from its lowest failed record, whatever the handler did with the
records after it. So nothing after the first record that cannot be delivered is sent anywhere
(it would only be sent again), and each event put on ``clean`` names its machine's previous record
of the batch (:class:`~sessionflow.runtimes.aws.positions.RawPosition`): when ``clean`` refuses one
record and takes a later one of the same machine, ``sessionize`` waits for the retry to put them
again in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
    redrive: bool = False  # replayed from the raw archive (``sessionflow aws redrive``)


@dataclass(slots=True)
class Refined:
    """One record's fate: an event for ``clean``, a rejected row, or nothing (a blank record)."""

    event: dict[str, Any] | None = None
    position: RawPosition | None = None
    rejected: Row | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of a batch's results: the index of the first event ``clean`` refused (None: every
    one went in; Lambda redelivers from it), and how many it refused."""

    first_refused: int | None
    refused: int


def _no_fault(_step: str) -> None:
    return None


class ProcessStep:
    def __init__(
        self, config: Config, clean: StreamWriter, sink: Sink, faults: Callable[[str], None] = _no_fault
    ) -> None:
        self.lines = LineRefiner(config)
        self.clean = clean
        self.sink = sink
        self.faults = faults  # called between the steps: a test or ``--chaos`` makes it raise

    def refine(self, record: RawRecord) -> Refined:
        # A Kinesis record has no line number; its shard and sequence number say where it was.
        where = f"{record.source}/{record.sequence_number}"
        refined = self.lines.refine_lines(((record.data, where, 0),), record.arrival_ms)
        if refined.rejections:
            return Refined(rejected=refined.rejections[0])
        if refined.events:
            event = refined.events[0]
            position = RawPosition(
                lane(record.source, record.partition_key, event["machine_id"]),
                int(record.sequence_number),
                int(record.batch_first or record.sequence_number),
                redrive=record.redrive,
                data=record.data,
            )
            return Refined(event=event, position=position)
        return Refined()

    def deliver(self, refined: Sequence[Refined]) -> Delivery:
        """Send a batch's results in order: events to ``clean``, then the rejected rows before the
        first event ``clean`` refused (what comes after it comes again)."""
        entries = _entries(refined)
        accepted = self.clean.put([entry for _, entry in entries]) if entries else []
        self.faults("process:clean")
        refused = [i for (i, _), ok in zip(entries, accepted, strict=True) if not ok]
        first = refused[0] if refused else None
        end = len(refined) if first is None else first
        rejected = [r.rejected for r in refined[:end] if r.rejected is not None]
        if rejected:
            # Firehose retries inside the sink; what it still refuses raises and fails the batch.
            self.sink.send({"rejected": rejected})
        self.faults("process:rejected")
        return Delivery(first, len(refused))


def _entries(refined: Sequence[Refined]) -> list[tuple[int, StreamEntry]]:
    """The events for ``clean`` (partitioned by machine, so each machine's stay in order), each
    naming its machine's previous event of the batch in the same lane."""
    previous: dict[tuple[str, str], int] = {}
    entries: list[tuple[int, StreamEntry]] = []
    for index, result in enumerate(refined):
        if result.event is None or result.position is None:
            continue
        machine_id = result.event["machine_id"]
        position = result.position
        key = (machine_id, position.lane)
        position = replace(position, prev=previous.get(key))
        previous[key] = position.seq
        data = orjson.dumps({**result.event, RAW_FIELD: position.to_value()})
        entries.append((index, StreamEntry(machine_id, data)))
    return entries


def raw_record(record: dict[str, Any], data: bytes, batch_first: str = "", redrive: bool = False) -> RawRecord:
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
        redrive=redrive,
    )
