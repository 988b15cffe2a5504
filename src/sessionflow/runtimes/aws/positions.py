"""Where a ``clean`` record came from on ``raw``, so a record put on ``clean`` twice is applied once,
and a machine's records are applied in the order they had on ``raw``.

``process`` puts a raw batch's events on ``clean``; when it fails part of the batch (``clean`` refused
a record, a crash), Lambda redelivers the raw batch from the lowest failed record and the records
after it that had gone through are put again, with new ``clean`` sequence numbers. The core's
event-id dedupe only reaches ``dedupe_horizon`` back in stream time, so in a backlog those copies
would come out as new, late rows. Each ``clean`` record therefore carries its raw position
(a :class:`RawPosition`): the raw shard, its raw sequence number, the first sequence number of the
raw batch it was put from, and the raw sequence number of the machine's previous record in that
batch (``prev``).

Lambda runs one batch at a time per raw shard and partition key, and moves a shard's checkpoint
past a record only once every record before it succeeded. So, for one machine and one raw shard:

* a batch starting at ``F`` means every raw record before ``F`` has been applied or rejected;
* the records applied since the newest batch start (``RawMark.seqs``) are the only ones a later
  batch can put again.

A record is a *copy* when its sequence number is below the newest batch start or among the records
applied since. It is *early* when the machine's previous record of its batch (``prev``) has not
been applied: ``clean`` refused that one and took this one (PutRecords is not atomic), and Lambda
redelivers the raw batch from the refused record, so this one comes again, after it. An early
record is dropped without being marked, so a machine's records are applied in their raw order
whatever ``clean`` refused. The mark is per machine, beside its state, and written in the same
conditional write, so it moves exactly when the state does.

A *redriven* record (``sessionflow aws redrive``: a range Lambda gave up on, replayed from the raw
archive) was skipped by the checkpoint, so the marks cannot tell whether it was applied: it goes
past them, and the exact event-id dedupe (:mod:`.admission`) applies it once.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

RAW_FIELD = "_raw"  # the key of the position in a clean record's JSON (never part of an event)
# A machine fed through more raw shards or partition keys than this keeps the newest marks; the
# oldest lose exactness (the exact event-id dedupe still drops their copies).
MAX_MARKS = 16


@dataclass(frozen=True, slots=True)
class RawPosition:
    lane: str  # "raw/<shard>", and "#<partition key>" when the key is not the machine id
    seq: int
    batch_first: int
    prev: int | None = None  # the machine's previous record in the same raw batch and lane
    redrive: bool = False
    data: bytes | None = None  # the raw record's bytes: a conflicting copy is rejected with them

    def to_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {"lane": self.lane, "seq": str(self.seq), "first": str(self.batch_first)}
        if self.prev is not None:
            value["prev"] = str(self.prev)
        if self.redrive:
            value["redrive"] = True
        if self.data is not None:
            value["data"] = base64.b64encode(self.data).decode("ascii")
        return value

    @classmethod
    def from_value(cls, value: dict[str, Any] | list[str]) -> RawPosition:
        if isinstance(value, list):  # [lane, seq, batch_first]: put by the first version of positions
            lane, seq, batch_first = value[:3]
            return cls(lane, int(seq), int(batch_first))
        prev = value.get("prev")
        data = value.get("data")
        return cls(
            value["lane"],
            int(value["seq"]),
            int(value["first"]),
            int(prev) if prev is not None else None,
            bool(value.get("redrive")),
            base64.b64decode(data) if data is not None else None,
        )

    @property
    def source(self) -> str:
        """Where a rejection says the record came from: ``raw/<shard>/<sequence number>``."""
        return f"{self.lane.split('#', 1)[0]}/{self.seq}"


def lane(raw_source: str, partition_key: str, machine_id: str) -> str:
    """The ordering unit of a raw record: Lambda keeps order per shard and partition key."""
    return raw_source if partition_key == machine_id else f"{raw_source}#{partition_key}"


class Verdict(Enum):
    NEW = "new"
    COPY = "copy"  # put on clean again by a retry of its raw batch: applied already
    EARLY = "early"  # its machine's previous record is not applied yet: it will come again, after it


@dataclass
class RawMark:
    batch_first: int = -1
    seqs: set[int] = field(default_factory=set)

    def applied(self, seq: int) -> bool:
        return seq < self.batch_first or seq in self.seqs


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

    def note(self, position: RawPosition) -> None:
        """Mark a record applied whatever came before it (a redriven one, or one applied out of order)."""
        self.lanes.setdefault(position.lane, RawMark()).seqs.add(position.seq)

    def admit(self, position: RawPosition) -> Verdict:
        """NEW (and now marked as applied), COPY, or EARLY (not marked: it comes again)."""
        mark = self.lanes.setdefault(position.lane, RawMark())
        if position.batch_first > mark.batch_first:
            # Everything before the new batch's first record is past Lambda's checkpoint.
            mark.batch_first = position.batch_first
            mark.seqs = {s for s in mark.seqs if s >= position.batch_first}
        if mark.applied(position.seq):
            return Verdict.COPY
        if position.prev is not None and not mark.applied(position.prev):
            return Verdict.EARLY
        mark.seqs.add(position.seq)
        return Verdict.NEW
