"""Where a ``clean`` record came from on ``raw``, so a record put on ``clean`` twice is applied once.

``process`` puts a raw batch's events on ``clean``; when it fails part of the batch (``clean`` refused
a record, a crash), Lambda redelivers the raw batch from the lowest failed record and the records
after it that had gone through are put again, with new ``clean`` sequence numbers. The core's
event-id dedupe only reaches ``dedupe_horizon`` back in stream time, so in a backlog those copies
would come out as new, late rows. Each ``clean`` record therefore carries its raw position:
the raw shard, its raw sequence number, and the first sequence number of the raw batch it was put
from (a :class:`RawPosition`).

Lambda runs one batch at a time per raw shard and partition key, and moves a shard's checkpoint
past a record only once every record before it succeeded. So, for one machine and one raw shard:

* a batch starting at ``F`` means every raw record before ``F`` has been applied or rejected;
* the records applied since the newest batch start (``RawMark.seqs``) are the only ones a later
  batch can put again.

A record is a copy when its sequence number is below the newest batch start or among the records
applied since. The mark is per machine, beside its state, and written in the same conditional
write, so it moves exactly when the state does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RAW_FIELD = "_raw"  # the key of the position in a clean record's JSON (never part of an event)
# A machine fed through more raw shards or partition keys than this keeps the newest marks; the
# oldest lose exactness (the core's event-id dedupe still drops copies within dedupe_horizon).
MAX_MARKS = 16


@dataclass(frozen=True, slots=True)
class RawPosition:
    lane: str  # the raw shard, and the partition key when it is not the machine id
    seq: int
    batch_first: int

    def to_list(self) -> list[str]:
        return [self.lane, str(self.seq), str(self.batch_first)]

    @classmethod
    def from_list(cls, value: list[str]) -> RawPosition:
        lane, seq, batch_first = value
        return cls(lane, int(seq), int(batch_first))


def lane(raw_shard: str, partition_key: str, machine_id: str) -> str:
    """The ordering unit of a raw record: Lambda keeps order per shard and partition key."""
    return raw_shard if partition_key == machine_id else f"{raw_shard}#{partition_key}"


@dataclass
class RawMark:
    batch_first: int = -1
    seqs: set[int] = field(default_factory=set)


@dataclass
class RawMarks:
    """A machine's marks, one per lane; ``to_value`` / ``from_value`` are the stored form."""

    lanes: dict[str, RawMark] = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: dict[str, Any] | None) -> RawMarks:
        if not value:
            return cls()
        return cls({name: RawMark(int(first), {int(s) for s in seqs}) for name, (first, seqs) in value.items()})

    def to_value(self) -> dict[str, Any]:
        newest = sorted(self.lanes.items(), key=lambda kv: kv[1].batch_first)[-MAX_MARKS:]
        return {name: [str(mark.batch_first), sorted(str(s) for s in mark.seqs)] for name, mark in newest}

    def admit(self, position: RawPosition) -> bool:
        """True if the record is new (and now marked as applied), False if it is a copy."""
        mark = self.lanes.setdefault(position.lane, RawMark())
        if position.batch_first > mark.batch_first:
            # Everything before the new batch's first record is past Lambda's checkpoint.
            mark.batch_first = position.batch_first
            mark.seqs = {s for s in mark.seqs if s >= position.batch_first}
        if position.seq < mark.batch_first or position.seq in mark.seqs:
            return False
        mark.seqs.add(position.seq)
        return True
