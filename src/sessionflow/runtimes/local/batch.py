"""A run as a batch: whatever order its input arrives in, the lake sorting everything gives.

Refined events are spilled into buckets of whole machines (:mod:`.spill`); each bucket is then
deduplicated exactly, sorted by ``(timestamp, machine_id, event_id)`` and sessionized. The
sessionizer sees its input in time order, so nothing is late and every event is placed where a
sort puts it; it runs the same rules (``core/rules.py``) as every other runtime.

Dedupe: the first arrival of an ``(machine_id, event_id)`` wins. Later copies with the same content
sort next to it (same timestamp, same key) and the sessionizer drops them as duplicates; a later
copy whose content differs is rejected as ``conflicting_duplicate``, with its raw bytes.

Sorting loses the arrival order, so before it each event gets ``arrived_late`` in arrival order
(:func:`with_arrival`, the core's ``rules.arrival_flags``), which the sessionizer counts in each
session's ``late_placed``. The sessions still open at the end are closed against the stream clock
at the end of the run's input (``clock``, from every block's leaders: ``engine.block_leaders``),
not against a bucket's own clock, so a session's ``close_reason`` does not depend on its bucket.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from sessionflow.config import Config
from sessionflow.core import Reason, Rejection, Snapshot, rejection_row, rules
from sessionflow.core.native import sessionizer_class
from sessionflow.core.rejections import conflict_message
from sessionflow.lake.writer import LakeWriter, sessions_table
from sessionflow.runtimes.local.columnar import ARRIVED_LATE
from sessionflow.runtimes.local.engine import Assembler, Block, Engine
from sessionflow.runtimes.local.feeds import KEY_COLUMNS, Feed, sessionizing
from sessionflow.runtimes.local.reader import Source
from sessionflow.runtimes.local.spill import (
    ARRIVAL,
    BUCKET_RAW_BYTES,
    INTERNAL_COLUMNS,
    LINE,
    SOURCE,
    Bucket,
    Spill,
    bucket_count,
    raw_lines,
    read_bucket,
)

# Rows per block handed to the sessionizer: a block's session columns are built when its last row
# is placed, which in time order is at most ``allowed_lateness`` after it.
SESSION_BLOCK_ROWS = 16 * 1024
SORT_KEYS = [("timestamp", "ascending"), ("machine_id", "ascending"), ("event_id", "ascending")]
_DROPPED = INTERNAL_COLUMNS


@dataclass
class Conflict:
    """A later copy of an event whose content differs from the first arrival's."""

    source: int
    line: int
    machine_id: str
    event_id: str
    fields: list[str]


@dataclass
class BatchRun:
    """One run's events: :meth:`add` them as they are refined, then :meth:`sessionize` them all."""

    config: Config
    sources: list[Source]
    folder: Path
    bucket_bytes: int = BUCKET_RAW_BYTES  # of raw input per bucket (see spill.bucket_count)
    spill: Spill = field(init=False)
    conflicts: list[Conflict] = field(default_factory=list)
    _copies: dict[int, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spill = Spill(self.folder / "buckets", bucket_count(self.sources, self.bucket_bytes))

    def copy_of(self, index: int) -> BinaryIO | None:
        """Where to keep the bytes of input ``index`` when it is a stream (read once): a conflicting
        duplicate's raw bytes are read back from it."""
        if not self.sources[index].is_stream:
            return None
        path = self.folder / f"input-{index:05d}.copy"
        self._copies[index] = path
        return open(path, "wb")

    def add(self, block: Block) -> None:
        """A refined block: its events are in the spill (see ``Engine.blocks``)."""
        if block.spilled is None:
            raise AssertionError("a batch run's blocks are spilled by the processes that refine them")
        self.spill.add(block.spilled)

    def buckets(self) -> Iterator[pa.Table]:
        """Each bucket, exact duplicates of other content taken out (into :attr:`conflicts`).

        The next bucket is read and prepared on a thread while the caller sessionizes this one:
        Arrow reads, hashes, sorts and takes without the GIL, so the two overlap on two cores.
        """

        def prepare(table: pa.Table) -> pa.Table:
            return without_conflicts(table, self.conflicts)

        tables = self.spill.buckets()
        with ThreadPoolExecutor(1, thread_name_prefix="sessionflow-bucket") as ahead:
            coming = None
            for table in tables:
                if coming is not None:
                    yield coming.result()
                coming = ahead.submit(prepare, table)
            if coming is not None:
                yield coming.result()

    def rejections(self) -> dict[int, list[dict[str, Any]]]:
        """The conflicting copies as rejection rows with their raw bytes, by input."""
        wanted: dict[int, set[int]] = defaultdict(set)
        for conflict in self.conflicts:
            wanted[conflict.source].add(conflict.line)
        raw = {index: raw_lines(self.sources[index], self._copies.get(index), lines) for index, lines in wanted.items()}
        rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for conflict in self.conflicts:
            source = self.sources[conflict.source]
            message = conflict_message(conflict.machine_id, conflict.event_id, conflict.fields)
            data = raw[conflict.source].get(conflict.line, b"")
            rows[conflict.source].append(
                rejection_row(Rejection(Reason.CONFLICTING_DUPLICATE, message, data), source.name, conflict.line)
            )
        return rows

    def sessionize_all(self, engine: Engine, run: int, lake: Path, clock: int | None) -> BucketResult:
        """Every bucket sorted, sessionized and written, in the engine's worker processes (a batch
        run with nothing to place among: no ``--state`` lake to read). ``clock``: the stream clock
        at the end of the input (None: none yet)."""
        total = BucketResult()
        buckets = sorted(
            self.spill.plan(), key=lambda bucket: -bucket.size
        )  # the largest first: the workers end together
        jobs = [(bucket, self.config, str(lake), run, clock) for bucket in buckets]
        for result in engine.map(sessionize_bucket, jobs):
            total.add(result)
        self.conflicts.extend(total.conflicts)
        return total

    def close(self) -> None:
        self.spill.close()
        for path in self._copies.values():
            path.unlink(missing_ok=True)


def without_conflicts(table: pa.Table, conflicts: list[Conflict]) -> pa.Table:
    """``table`` less the later copies of an event whose content differs from its first arrival's:
    those go to ``conflicts``. Copies of the same content stay: the sessionizer drops them."""
    # Copies share an event_id: only rows whose event_id is there more than once are looked at.
    ids = table.column("event_id")
    counts = pc.value_counts(ids)
    shared = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(shared) == 0:
        return table
    rows = pc.indices_nonzero(pc.is_in(ids, value_set=shared))
    candidates = table.take(rows)
    if SOURCE in table.schema.names:  # a bucket read from the spill: its files in turn, not in arrival order
        arrival = pc.sort_indices(candidates, sort_keys=ARRIVAL)
        rows, candidates = rows.take(arrival), candidates.take(arrival)
    # Most copies are the same bytes sent again: their content, as one text per row, is compared
    # first; only a copy whose text differs from its first arrival's is read field by field.
    texts = _content_texts(candidates).to_pylist()
    keys = list(
        zip(candidates.column("machine_id").to_pylist(), candidates.column("event_id").to_pylist(), strict=True)
    )
    first: dict[tuple[str, str], int] = {}
    differ: list[tuple[int, int]] = []  # (candidate, its first arrival)
    for index, key in enumerate(keys):  # in arrival order
        kept = first.setdefault(key, index)
        if kept != index and texts[index] != texts[kept]:
            differ.append((index, kept))
    if not differ:
        return table
    numbers = rows.to_pylist()
    drop: list[int] = []
    for index, kept in differ:
        row, original = candidates.slice(index, 1).to_pylist()[0], candidates.slice(kept, 1).to_pylist()[0]
        differing = _differing(row, original)
        if differing:
            drop.append(numbers[index])
            conflicts.append(Conflict(row[SOURCE], row[LINE], keys[index][0], keys[index][1], differing))
    if not drop:
        return table
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=pa.array(drop, pa.int64())))
    return table.filter(keep)


def _differing(row: dict[str, Any], first: dict[str, Any]) -> list[str]:
    """The content fields of a later copy that differ from its first arrival's (a lake row has
    session columns besides, which a new event has not: only the fields both have count)."""
    return [name for name in row if name not in _DROPPED and name in first and row[name] != first[name]]


def _content_texts(table: pa.Table) -> pa.Array:
    """Each row's content (every column but the run's own) as one text: equal rows, equal texts."""
    columns = [
        pc.cast(table.column(name), pa.string())
        for name in table.schema.names
        if name not in _DROPPED and not pa.types.is_nested(table.schema.field(name).type)
    ]
    return pc.binary_join_element_wise(*columns, "\x1f", null_handling="replace", null_replacement="\x00")


def sort_events(table: pa.Table) -> pa.Table:
    """Events of whole machines in the order they are sessionized, without the run's own columns."""
    ordered = table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))
    return ordered.drop_columns([name for name in _DROPPED if name in ordered.schema.names])


def in_order(table: pa.Table) -> Iterator[pa.RecordBatch]:
    """The events in the order they are sessionized, in blocks, without the run's own columns.
    A block is taken when it is asked for: the bucket is never held twice in memory.

    Equal keys keep their arrival order: the arrival columns where the table has them (a bucket
    read from the spill), else the table's order."""
    names = table.schema.names
    order = pc.sort_indices(table, sort_keys=SORT_KEYS + [key for key in ARRIVAL if key[0] in names])
    table = table.drop_columns([name for name in _DROPPED if name in names])
    for start in range(0, len(order), SESSION_BLOCK_ROWS):
        block = table.take(order.slice(start, SESSION_BLOCK_ROWS)).combine_chunks()
        yield from block.to_batches()


def with_arrival(table: pa.Table, newest: dict[str, int] | None = None) -> pa.Table:
    """Events with ``arrived_late`` (``rules.arrival_flags``), found in arrival order: the table's
    own, or the arrival columns' where it has them (a bucket read from the spill: its files in
    turn); ``newest``: each machine's newest timestamp before them (the lake's, for an incremental
    run)."""
    # Machines by their dictionary index: small integers are cheaper to hand over than strings.
    machines = pc.dictionary_encode(table.column("machine_id")).combine_chunks()
    names = machines.dictionary.to_pylist()
    position = {name: index for index, name in enumerate(names)}
    seed = {position[name]: ts for name, ts in (newest or {}).items() if name in position}
    indices, timestamps = machines.indices, table.column("timestamp")
    order = None
    if SOURCE in table.schema.names:
        order = pc.sort_indices(table, sort_keys=ARRIVAL)
        indices, timestamps = indices.take(order), timestamps.take(order)
    flags = pa.array(rules.arrival_flags(indices.to_pylist(), timestamps.to_pylist(), seed), pa.bool_())
    if order is not None:
        flags = flags.take(pc.sort_indices(order))  # from arrival order back to the table's
    return table.append_column(pa.field(ARRIVED_LATE, pa.bool_()), flags)


def sessionize(
    table: pa.Table,
    config: Config,
    assembler: Assembler,
    feed: Feed,
    *,
    clock: int | None = None,
    before: dict[str, int] | None = None,
) -> None:
    """Events of whole machines (with ``arrived_late``), in time order, through a fresh sessionizer,
    flushed at the end: the sessions still open are closed against ``clock``, the stream clock at
    the end of the input (None: none yet). ``before``: how many sessions each machine has before
    these events (its next one is numbered from there)."""
    sessionizer = sessionizer_class().restore(config.session, Snapshot(forgotten=before or {}))
    names = [name for name in table.schema.names if name not in _DROPPED]
    for batch in in_order(table):
        keys = None
        if feed.sends_keys:
            rows = batch.num_rows
            keys = [batch.column(name).to_pylist() if name in names else [None] * rows for name in KEY_COLUMNS]
        assembler.feed(Block("", 0, 0, 0, 0, Counter(), [], batch, keys), sessionizer)
    sessionizer.flush(assembler, -1 if clock is None else clock)
    assembler.finish(sessionizer)


@dataclass
class Captured:
    """A sessionizer's output kept as tables (an incremental run compares it with the lake first)."""

    events: list[pa.Table] = field(default_factory=list)
    sessions: list[pa.Table] = field(default_factory=list)

    def add_events(self, table: pa.Table, keep: pa.Array | None) -> None:
        self.events.append(table if keep is None else table.filter(keep))

    def assembler(self, feed: Feed) -> Assembler:
        return Assembler(self.add_events, self.sessions.append, feed)

    def tables(self, assembler: Assembler, events_schema: pa.Schema) -> tuple[pa.Table, pa.Table]:
        """(events, sessions) the sessionizer gave, sessions from dicts too (the record feed's)."""
        if assembler.sessions:
            self.sessions.append(sessions_table(assembler.sessions))
            assembler.sessions.clear()
        events = pa.concat_tables(self.events) if self.events else events_schema.empty_table()
        sessions = pa.concat_tables(self.sessions) if self.sessions else sessions_table([])
        return events, sessions


def split_copies(new: pa.Table, earlier: pa.Table | None, conflicts: list[Conflict]) -> tuple[pa.Table, int]:
    """``new`` less the events the lake already holds: (the rest, how many were plain duplicates).
    A copy whose content differs from the lake's goes to ``conflicts``."""
    if earlier is None or earlier.num_rows == 0:
        return new, 0
    kept = {(row["machine_id"], row["event_id"]): row for row in earlier.to_pylist()}
    keys = zip(new.column("machine_id").to_pylist(), new.column("event_id").to_pylist(), strict=True)
    hits = [index for index, key in enumerate(keys) if key in kept]
    if not hits:
        return new, 0
    duplicates = 0
    for row in new.take(pa.array(hits, pa.int64())).to_pylist():
        old = kept[(row["machine_id"], row["event_id"])]
        differing = _differing(row, old)
        if differing:
            conflicts.append(Conflict(row[SOURCE], row[LINE], row["machine_id"], row["event_id"], differing))
        else:
            duplicates += 1
    mask = pc.invert(pc.is_in(pa.array(range(new.num_rows), pa.int64()), value_set=pa.array(hits, pa.int64())))
    return new.filter(mask), duplicates


@dataclass
class BucketResult:
    """What sessionizing buckets gave: files written (relative to staging), counts, conflicts."""

    files: list[Path] = field(default_factory=list)
    events: int = 0
    late: int = 0
    duplicates: int = 0
    sessions: int = 0
    conflicts: list[Conflict] = field(default_factory=list)

    def add(self, other: BucketResult) -> None:
        self.files.extend(other.files)
        self.events += other.events
        self.late += other.late
        self.duplicates += other.duplicates
        self.sessions += other.sessions
        self.conflicts.extend(other.conflicts)


def sessionize_bucket(bucket: Bucket, config: Config, lake: str, run: int, clock: int | None) -> BucketResult:
    """Runs in a worker: one spilled bucket, cut into parts here if it must be -> Parquet files
    of its own (a writer per part) in the run's staging folder. ``clock``: the stream clock at the
    end of the input (None: none yet)."""
    result = BucketResult()
    for part, paths in bucket.pieces():
        result.add(_sessionize_part(paths, part, config, lake, run, clock))
    return result


def _sessionize_part(
    paths: list[str], part: int, config: Config, lake: str, run: int, clock: int | None
) -> BucketResult:
    table = read_bucket(paths)
    for path in paths:
        Path(path).unlink()
    result = BucketResult()
    table = with_arrival(without_conflicts(table, result.conflicts))
    writer = LakeWriter(Path(lake), config, run, part=part + 1)
    assembler = Assembler(writer.events.add_table, writer.sessions.add_table)
    try:
        sessionize(table, config, assembler, sessionizing(), clock=clock)
        writer.write([], assembler.sessions, [])
        result.files = writer.close()
    except BaseException:
        writer.abort_part()
        raise
    tally = assembler.tally
    result.events, result.late, result.duplicates, result.sessions = (
        tally.events,
        tally.late,
        tally.duplicates,
        tally.sessions,
    )
    return result
