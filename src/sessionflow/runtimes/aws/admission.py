"""Which records of a ``clean`` batch the core gets: each input record is applied once, in its raw
order, and an event id gives one row however late its copy comes.

A record goes through, in this order:

1. the machine's ``seq``: a ``clean`` record at or below the highest ``clean`` sequence number
   applied to its machine was applied already (Lambda redelivered the ``clean`` batch): *skipped*;
2. its raw position (:mod:`.positions`): a record ``process`` put on ``clean`` again is a *copy*
   (``repeated``), one that came before its machine's previous raw record is *early* (it comes again);
3. its event id, exactly, with no horizon: a later arrival of an ``(machine_id, event_id)`` seen in
   this batch, in the machine's dedupe window, or in the **event-id index** is a *duplicate* when
   its content is the first arrival's, and a ``conflicting_duplicate`` rejection (with its raw
   bytes) when it differs, as in the embedded runner.

The index holds every event the sessionizer released (``i#<digest of machine and event id>`` ->
its content), written by the commit that released it (:mod:`.commit`), read here in one batched
read for the batch's new event ids. It lives as long as the state TTL: a copy arriving later than
that is an event again. The core's own dedupe window (``dedupe_horizon``) still bounds the state a
machine keeps; the index is what reaches further back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sessionflow.core import MachineState
from sessionflow.core.pipeline import rejection_row
from sessionflow.core.rejections import Reason, Rejection, conflict_message, differing_fields
from sessionflow.core.snapshot import PAYLOAD
from sessionflow.runtimes.aws.positions import RawMarks, RawPosition, Verdict
from sessionflow.state.base import Item, StateStore

Row = dict[str, Any]
# What the sessionizer adds to an event: not part of its content.
SESSION_FIELDS = frozenset({"session_id", "session_seq", "ms_since_prev", "late"})


@dataclass(frozen=True, slots=True)
class CleanRecord:
    sequence_number: int
    event: dict[str, Any]
    raw: RawPosition | None = None  # where ``process`` read it on ``raw`` (None: put by an older version)

    @classmethod
    def decode(cls, sequence_number: int, value: dict[str, Any]) -> CleanRecord:
        """From a ``clean`` record's JSON: the event, and its raw position taken out of it."""
        from sessionflow.runtimes.aws.positions import RAW_FIELD

        raw = value.pop(RAW_FIELD, None)
        return cls(sequence_number, value, RawPosition.from_value(raw) if raw else None)


@dataclass
class Admitted:
    """What a batch hands the core, and what it kept from it."""

    fresh: list[dict[str, Any]] = field(default_factory=list)
    newest_seq: dict[str, int] = field(default_factory=dict)  # machine -> highest clean seq seen
    marks: dict[str, RawMarks] = field(default_factory=dict)
    skipped: int = 0
    repeated: int = 0
    early: int = 0
    duplicates: int = 0
    conflicts: dict[str, list[Row]] = field(default_factory=dict)  # machine -> rejection rows
    parked: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # machine -> records waiting


# Records a machine keeps waiting for their previous raw record; past that, one is applied out of
# order (as late as the core says) rather than the machine's item growing without end.
MAX_PARKED = 1000


def _park(record: CleanRecord) -> dict[str, Any]:
    assert record.raw is not None
    return {"seq": str(record.sequence_number), "event": record.event, "raw": record.raw.to_value()}


def _unpark(value: dict[str, Any]) -> CleanRecord:
    return CleanRecord(int(value["seq"]), dict(value["event"]), RawPosition.from_value(value["raw"]))


def machine_states(loaded: dict[str, Item]) -> dict[str, MachineState]:
    """The core's state of each machine item read (tombstones left out)."""
    return {m: MachineState.from_dict(i.value["state"]) for m, i in loaded.items() if i.value.get("state") is not None}


def index_key(machine_id: str, event_id: str) -> str:
    """The index item of an event: a digest, so any id fits DynamoDB's key size."""
    digest = hashlib.sha256(machine_id.encode() + b"\0" + event_id.encode()).hexdigest()[:40]
    return f"i#{digest}"


def content(event: Row) -> Row:
    """An event row without what the sessionizer added: what two copies must share to be one."""
    return {name: value for name, value in event.items() if name not in SESSION_FIELDS}


def index_values(events: Iterable[Row]) -> dict[str, dict[str, Any]]:
    """The index items for released event rows."""
    return {index_key(e["machine_id"], e["event_id"]): {"e": content(e)} for e in events}


def admit(
    store: StateStore,
    shard: str,
    records: Sequence[CleanRecord],
    loaded: dict[str, Item],
    *,
    release_parked: bool = False,
    states: dict[str, MachineState] | None = None,
) -> Admitted:
    """Sort a batch's records into what the core gets and what it does not (see the module).

    ``release_parked``: the machines' parked records go to the core too, in their order, whatever
    came before them (the end of the stream: a flush). ``states``: the loaded machines' states,
    when the caller has them already (only read here)."""
    admitted = Admitted()
    candidates: list[CleanRecord] = []
    parked = {m: [_unpark(p) for p in item.value.get("parked") or ()] for m, item in loaded.items()}

    def marks_of(machine_id: str) -> RawMarks:
        if machine_id not in admitted.marks:
            item = loaded.get(machine_id)
            admitted.marks[machine_id] = RawMarks.from_value(item.value.get("raw") if item else None)
        return admitted.marks[machine_id]

    def release(machine_id: str) -> None:
        """The parked records of a machine whose turn has come (their previous record is applied)."""
        waiting = parked.get(machine_id)
        moved = True
        while waiting and moved:
            moved = False
            for record in list(waiting):
                assert record.raw is not None
                verdict = marks_of(machine_id).admit(record.raw)
                if verdict is Verdict.EARLY and not release_parked:
                    continue
                waiting.remove(record)
                moved = True
                if verdict is Verdict.COPY:
                    admitted.repeated += 1
                else:
                    candidates.append(record)

    for record in records:
        machine_id = record.event["machine_id"]
        item = loaded.get(machine_id)
        redrive = record.raw is not None and record.raw.redrive
        if (
            not redrive
            and item is not None
            and item.value["shard"] == shard
            and record.sequence_number <= int(item.value["seq"])
        ):
            admitted.skipped += 1
            continue
        admitted.newest_seq[machine_id] = record.sequence_number
        if record.raw is not None and redrive:
            marks_of(machine_id).note(record.raw)  # applied now, whatever the marks said
        elif record.raw is not None:
            verdict = marks_of(machine_id).admit(record.raw)
            if verdict is Verdict.COPY:
                admitted.repeated += 1
                continue
            if verdict is Verdict.EARLY:
                waiting = parked.setdefault(machine_id, [])
                if len(waiting) < MAX_PARKED and not any(p.raw == record.raw for p in waiting):
                    waiting.append(record)
                    admitted.early += 1
                    continue
                if len(waiting) < MAX_PARKED:
                    admitted.repeated += 1  # parked already
                    continue
                marks_of(machine_id).note(record.raw)  # too many waiting: applied out of order
        candidates.append(record)
        release(machine_id)
    for machine_id in list(parked):
        release(machine_id)
    admitted.parked = {m: [_park(r) for r in waiting] for m, waiting in parked.items()}

    if states is None:
        states = machine_states(loaded)
    keyed = [(record, index_key(record.event["machine_id"], record.event["event_id"])) for record in candidates]
    indexed = store.get_many(sorted({key for _, key in keyed})) if keyed else {}
    first: dict[tuple[str, str], Row] = {}  # the batch's first arrivals
    for record, key in keyed:
        event = record.event
        machine_id, event_id = event["machine_id"], event["event_id"]
        state = states.get(machine_id)
        hit = indexed.get(key)
        if (machine_id, event_id) in first:
            original: Row | None = content(first[(machine_id, event_id)])
        elif state is not None and event_id in state.seen:
            original = _pending(state, event_id) or (hit.value["e"] if hit else None)
        elif hit is not None:
            original = hit.value["e"]
        else:
            first[(machine_id, event_id)] = event
            admitted.fresh.append(event)
            continue
        fields = differing_fields(content(event), original) if original is not None else []
        if fields and record.raw is not None and record.raw.data is not None:
            message = conflict_message(machine_id, event_id, fields)
            rejection = Rejection(Reason.CONFLICTING_DUPLICATE, message, record.raw.data)
            admitted.conflicts.setdefault(machine_id, []).append(rejection_row(rejection, record.raw.source, 0))
        else:
            admitted.duplicates += 1
    return admitted


def _pending(state: MachineState, event_id: str) -> Row | None:
    """The content of an event still in the machine's reorder buffer."""
    for pending in state.pending:
        if pending[1] == event_id:
            payload: Row = pending[PAYLOAD]
            return content(payload)
    return None
