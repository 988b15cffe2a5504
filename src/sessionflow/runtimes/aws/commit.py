"""The commit protocol of a shard: a batch's state and rows land together or are re-sent, never lost.

One invocation (a batch, a sweep, a flush) of a shard of ``clean`` commits in these steps, each
named for the fault hook (``faults(step)``: tests and ``--chaos`` make it raise between them):

1. ``intent``: the shard item with ``inflight = {token, machines}``, conditional on the version
   read (only one invocation of a shard commits; the other gets :class:`ShardConflict`);
2. ``timers``: the machines' idle deadlines added to the timer sets (idempotent);
3. ``machine:<i>``: each changed machine, conditional on its version, its outbox (the rows the
   write produced) tagged with the token;
4. ``index``: the event-id index entries of the released events (:mod:`.admission`);
5. ``send``: the rows of the machines written, to Firehose;
6. ``timers-dropped``: the timer sets the clock has passed;
7. ``done``: the shard item with ``inflight`` cleared.

A crash anywhere leaves ``inflight`` set. Whoever reads the shard next (a batch, a sweep, a flush)
first *recovers* it: each machine of the intent that carries the token has its outbox re-sent (and
its index entries written again); each one that does not is *fenced*, rewritten as it is so that
its version moves and the earlier attempt, if it is still running (a sweep racing a batch, a
timed-out invocation), can no longer write it. Only then may ``inflight`` be replaced. So no outbox
is ever left without a sender, and no machine is written twice from one read. A send that delivered
part of its rows before failing records which, in ``inflight``, so recovery does not send them again.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from sessionflow.config import MINUTE, SessionConfig
from sessionflow.core import MachineState, StreamClock, rules
from sessionflow.runtimes.aws.admission import index_values
from sessionflow.runtimes.aws.outputs import DeliveryError, Row, Sink
from sessionflow.state.base import Item, StateStore

TIMER_BUCKET_MS = MINUTE
# Bytes of machine ids in one timer set item before the next one is started (DynamoDB: 400 KB).
TIMER_SET_BYTES = 300_000
# What one member may cost beyond its UTF-8 bytes: an over-estimate keeps the sets under the limit.
_MEMBER_OVERHEAD = 8
# Rounds of reading and fencing an earlier attempt's machines before giving the shard up for now.
_FENCE_ROUNDS = 8
TABLES = ("events", "sessions", "rejected")
Faults = Callable[[str], None]


class ShardConflict(RuntimeError):
    """Another invocation committed this shard since we read it: the whole batch is retried."""


def machine_key(machine_id: str) -> str:
    return f"m#{machine_id}"


def shard_key(shard: str) -> str:
    return f"s#{shard}"


def timer_key(shard: str, bucket: int, part: int = 0) -> str:
    return f"t#{shard}#{bucket}" if part == 0 else f"t#{shard}#{bucket}#{part}"


def timer_keys(shard: str, buckets: Iterable[int], fill: dict[str, list[int]]) -> list[str]:
    """Every set item of these buckets; ``fill``: bucket -> [set items, bytes in the last one]."""
    return [timer_key(shard, b, part) for b in buckets for part in range(fill.get(str(b), [1, 0])[0])]


def row_key(table: str, row: Row) -> str:
    """What identifies a delivered row (as a reader dedupes: docs/aws.md)."""
    if table == "events":
        return f"e/{row['machine_id']}/{row['event_id']}"
    if table == "sessions":
        return f"s/{row['session_id']}"
    return f"r/{row['source']}"


@dataclass
class Change:
    machine_id: str
    version: int | None
    value: dict[str, Any]
    state: MachineState | None  # the machine's state after the batch: ``value["state"]`` is its dict


@dataclass
class ShardState:
    """The value of a shard item."""

    clock: StreamClock = field(default_factory=StreamClock)
    buckets: list[int] = field(default_factory=list)
    timer_fill: dict[str, list[int]] = field(default_factory=dict)
    wall: int | None = None  # wall-clock ms of the last commit of a batch
    inflight: dict[str, Any] | None = None

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> ShardState:
        # timer_fill and wall came later than the others: an item written before has neither.
        return cls(
            clock=StreamClock.from_dict(value),
            buckets=list(value.get("buckets", [])),
            timer_fill=dict(value.get("timer_fill", {})),
            wall=value.get("wall"),
            inflight=value.get("inflight"),
        )

    def to_value(self) -> dict[str, Any]:
        return {
            **self.clock.to_dict(),
            "buckets": self.buckets,
            "timer_fill": self.timer_fill,
            "wall": self.wall,
            "inflight": self.inflight,
        }


def _no_fault(_step: str) -> None:
    return None


@dataclass
class CommitReport:
    resent: int = 0  # rows re-sent from an earlier attempt's outbox
    fenced: int = 0  # machines an earlier attempt had claimed but not written, fenced off
    commit_ms: float = 0.0  # the commit, from the intent to the shard item written done
    failed_machines: set[str] = field(default_factory=set)


class Committer:
    """Recovers and commits one shard's items (see the module)."""

    def __init__(
        self,
        config: SessionConfig,
        store: StateStore,
        sink: Sink,
        write_threads: int = 8,
        faults: Faults = _no_fault,
    ) -> None:
        self.config = config
        self.store = store
        self.sink = sink
        self.write_threads = write_threads
        self.faults = faults

    # -- recovery -----------------------------------------------------------------------------------

    def recover(self, shard: str, shard_item: Item | None, report: CommitReport) -> ShardState:
        """The shard's state; first re-send what an earlier attempt committed but may not have sent."""
        if shard_item is None:
            return ShardState()
        state = ShardState.from_value(shard_item.value)
        inflight = state.inflight
        if not inflight:
            return state
        token = inflight["token"]
        outboxes: list[dict[str, Any]] = []
        pending = list(inflight["machines"])
        for _ in range(_FENCE_ROUNDS):
            current = self.store.get_many(machine_key(m) for m in pending)
            raced: list[str] = []
            for machine_id in pending:
                item = current.get(machine_key(machine_id))
                outbox = item.value.get("outbox") if item is not None else None
                if outbox and outbox.get("token") == token:
                    outboxes.append(outbox)
                    continue
                value = item.value if item is not None else _fence_value(shard)
                if self.store.put(machine_key(machine_id), value, item.version if item else None) is None:
                    raced.append(machine_id)  # written in between: read it again
                else:
                    report.fenced += 1
            pending = raced
            if not pending:
                break
        else:
            raise ShardConflict(f"shard {shard}: machines of an earlier attempt kept changing during recovery")
        self.faults("recover:fenced")
        self.store.put_many(index_values(e for outbox in outboxes for e in outbox.get("events", ())))
        sent = set(inflight.get("delivered", ()))
        rows: dict[str, list[Row]] = {table: [] for table in TABLES}
        for outbox in outboxes:
            for table in TABLES:
                rows[table].extend(row for row in outbox.get(table, ()) if row_key(table, row) not in sent)
        report.resent = sum(len(v) for v in rows.values())
        self._send(shard, shard_item.version, state, rows)
        self.faults("recover:sent")
        return state

    def _send(self, shard: str, version: int, state: ShardState, rows: dict[str, list[Row]]) -> None:
        """Send the rows; when some were delivered before a failure, say which in ``inflight``."""
        try:
            self.sink.send(rows)
        except DeliveryError as exc:
            delivered = {row_key(t, rows[t][i]) for t, indexes in exc.delivered.items() for i in indexes}
            if delivered and state.inflight:
                known = set(state.inflight.get("delivered", ()))
                inflight = {**state.inflight, "delivered": sorted(known | delivered)}
                # Best effort: if the shard moved on meanwhile, its new owner re-sends them (copies).
                self.store.put(shard_key(shard), replace(state, inflight=inflight).to_value(), version)
            raise

    # -- commit -------------------------------------------------------------------------------------

    def commit(
        self,
        shard: str,
        shard_item: Item | None,
        new_state: ShardState,
        changes: list[Change],
        drop_buckets: Iterable[int],
        report: CommitReport,
    ) -> None:
        started = time.perf_counter()
        faults = self.faults
        token = uuid.uuid4().hex
        timers: dict[int, set[str]] = defaultdict(set)
        for change in changes:
            if change.state is not None:
                timers[_next_deadline(change.state, self.config) // TIMER_BUCKET_MS].add(change.machine_id)
            if change.value["outbox"]:
                change.value["outbox"]["token"] = token
        buckets = sorted(set(new_state.buckets) | set(timers))
        fill = {key: list(value) for key, value in new_state.timer_fill.items()}
        additions = fill_timer_sets(shard, timers, fill)

        inflight = {"token": token, "machines": [c.machine_id for c in changes]}
        intent = replace(new_state, buckets=buckets, timer_fill=fill, inflight=inflight)
        version = self.store.put(shard_key(shard), intent.to_value(), shard_item.version if shard_item else None)
        if version is None:
            raise ShardConflict(f"shard {shard} was committed by another invocation; retrying the batch")
        faults("intent")
        for key, machine_ids in additions:
            self.store.add_members(key, machine_ids)
        faults("timers")
        written = self._write_machines(changes)

        rows: dict[str, list[Row]] = {table: [] for table in TABLES}
        for change, ok in zip(changes, written, strict=True):
            if not ok:
                # A racing writer (a fence, a reshard): its records are redelivered and re-read.
                report.failed_machines.add(change.machine_id)
                continue
            outbox = change.value["outbox"]
            if outbox:
                for table in TABLES:
                    rows[table].extend(outbox.get(table, ()))
        self.store.put_many(index_values(rows["events"]))
        faults("index")
        self._send(shard, version, intent, rows)
        faults("send")

        dropped = [] if report.failed_machines else list(drop_buckets)
        for key in timer_keys(shard, dropped, fill):
            self.store.delete(key, None)
        for bucket in dropped:
            fill.pop(str(bucket), None)
        faults("timers-dropped")
        done = replace(intent, buckets=sorted(set(buckets) - set(dropped)), timer_fill=fill, inflight=None)
        if self.store.put(shard_key(shard), done.to_value(), version) is None:
            raise ShardConflict(f"shard {shard} changed while this invocation held it")
        report.commit_ms = (time.perf_counter() - started) * 1000
        faults("done")

    def _write_machines(self, changes: list[Change]) -> list[bool]:
        def write(indexed: tuple[int, Change]) -> bool:
            index, change = indexed
            ok = self.store.put(machine_key(change.machine_id), change.value, change.version) is not None
            self.faults(f"machine:{index}")
            return ok

        if self.write_threads > 1 and len(changes) > 1:
            with ThreadPoolExecutor(min(self.write_threads, len(changes))) as pool:
                return list(pool.map(write, enumerate(changes)))
        return [write(indexed) for indexed in enumerate(changes)]


def _fence_value(shard: str) -> dict[str, Any]:
    """A machine an earlier attempt meant to create: a tombstone, so that attempt's create fails."""
    return {"state": None, "shard": shard, "seq": "0", "outbox": None}


def fill_timer_sets(shard: str, timers: dict[int, set[str]], fill: dict[str, list[int]]) -> list[tuple[str, list[str]]]:
    """(set item, machine ids to add) per bucket, starting a new item of a bucket before one is full.

    ``fill`` is updated in place. It counts every addition, repeats included: it can only
    over-estimate a set's size, so an item may be rolled over early, never too late.
    """
    additions: list[tuple[str, list[str]]] = []
    for bucket, machine_ids in sorted(timers.items()):
        parts, size = fill.get(str(bucket), [1, 0])
        chunk: list[str] = []
        for machine_id in sorted(machine_ids):
            cost = len(machine_id.encode()) + _MEMBER_OVERHEAD
            if size + cost > TIMER_SET_BYTES and size > 0:
                if chunk:
                    additions.append((timer_key(shard, bucket, parts - 1), chunk))
                    chunk = []
                parts, size = parts + 1, 0
            chunk.append(machine_id)
            size += cost
        if chunk:
            additions.append((timer_key(shard, bucket, parts - 1), chunk))
        fill[str(bucket)] = [parts, size]
    return additions


def _next_deadline(machine: MachineState, config: SessionConfig) -> int:
    """When the core will next look at this machine: idle close, or dropping its state."""
    session = machine.session
    anchor = machine.anchor  # rules.anchor
    if machine.pending or (session is not None and not session.closed):
        return rules.idle_deadline(anchor, config.idle_close_ms)
    return rules.retention_deadline(anchor, config.retention_ms)
