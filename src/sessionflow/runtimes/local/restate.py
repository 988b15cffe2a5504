"""Restating sessions: where each machine's lake history starts to matter, what changed, and the
lake files rewritten without the rows that changed.

After every ``--state`` run the lake holds what one batch run over all input so far gives. For
each machine of the run, the lake is read from its *cut*: the start of the first session that a
new event can reach (one ending no more than ``timeout`` before the machine's earliest new event),
or that event itself. Every session before the cut ends more than ``timeout`` before any new event,
so it cannot change. The old events from the cut on and the new ones are sessionized together; an
old row whose session columns come out the same stays where it is, a changed one is written again,
and the lake files that held changed rows are rewritten without them (copy-on-write), in the
run's commit. How the work is spread over processes: :mod:`.incremental`.

What one batch run over all input gives, the sessions' own columns included: a new event's
``arrived_late`` is judged against its machine's newest event in the lake (the region holds it, or
it is older than every new event); a machine's sessions are numbered on from its sessions before
the cut (a split renumbers the later ones, which are all in the region); the sessions still open at
the end are closed against the stream clock at the end of the run, and a session the lake holds as
``end_of_input`` that the run does not sessionize again is settled by :mod:`.open_ends`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sessionflow.core.enrich import hour_fields
from sessionflow.lake.restatements import restatement_log
from sessionflow.lake.writer import LakeWriter
from sessionflow.runtimes.local.columnar import ARRIVED_LATE, SESSION_FIELDS, session_schema_fields
from sessionflow.schema import EVENT_PARTITION

FILE = "_file"  # the lake file an old row was read from (relative to the lake)
_ROW = "_row"
_REWRITE_ROWS = 64 * 1024  # rows of a rewritten file held at once
_SCAN_ROWS = 64 * 1024  # rows of a scan of lake files, a block


def day_of(ms: int) -> str:
    return hour_fields(ms // 3_600_000)[0]


@dataclass
class LakeFiles:
    """The lake's event files by day and its session files, as they stand before the run."""

    events: dict[str, list[str]] = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, lake: Path) -> LakeFiles:
        found = cls()
        for folder in sorted((lake / "events").glob(f"{EVENT_PARTITION}=*")):
            day = folder.name.split("=", 1)[1]
            found.events[day] = sorted(p.relative_to(lake).as_posix() for p in folder.glob("*.parquet"))
        found.sessions = sorted(p.relative_to(lake).as_posix() for p in (lake / "sessions").glob("*/*.parquet"))
        return found

    def is_empty(self) -> bool:
        return not self.events and not self.sessions

    def event_files(self, from_day: str | None, days: Iterable[str] = ()) -> list[str]:
        wanted = set(days)
        return [
            name
            for day, names in self.events.items()
            if (from_day is None or day >= from_day) or day in wanted
            for name in names
        ]


def partition_value(name: str) -> str:
    """``events/event_date=2026-10-05/part-1.parquet`` -> ``2026-10-05``."""
    return name.split("/")[1].split("=", 1)[1]


def with_origin(table: pa.Table, name: str, partition: str) -> pa.Table:
    """Rows read from lake file ``name``, with its partition value and its name."""
    rows = table.num_rows
    table = table.append_column(partition, pa.repeat(pa.scalar(partition_value(name), pa.string()), rows))
    return table.append_column(FILE, pa.repeat(pa.scalar(name, pa.string()), rows))


def scan(
    lake: Path, names: list[str], partition: str, expression: Any, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """Rows of the named lake files that match, as tables a block at a time, each row with its file
    and its partition value: one scan over all the files (threads read them side by side). An event
    file written before events had ``arrived_late`` reads as none arrived late; a sessions file of
    then, with its newer columns null."""
    if not names:
        return
    paths = {str(lake / name): name for name in names}
    schema = pa.unify_schemas([pq.read_schema(path) for path in paths])
    fill = partition == EVENT_PARTITION and (columns is None or ARRIVED_LATE in columns)
    if fill and ARRIVED_LATE not in schema.names:
        schema = schema.append(pa.field(ARRIVED_LATE, pa.bool_()))
    # Imported here, not with the module: its import makes pyarrow look for pandas (engine._warm_pyarrow).
    import pyarrow.dataset as ds

    dataset = ds.dataset(list(paths), schema=schema, format="parquet")
    # A little read ahead (the defaults hold 16 blocks of 4 files at once: ~150 MB of a lake's
    # events), the files side by side on Arrow's threads.
    scanner = dataset.scanner(
        filter=expression, columns=columns, batch_size=_SCAN_ROWS, batch_readahead=2, fragment_readahead=2
    )
    # Small files give small batches: they are handed on together, a block of about _SCAN_ROWS.
    held: list[pa.Table] = []
    rows = 0
    for tagged in scanner.scan_batches():
        batch = tagged.record_batch
        if batch.num_rows:
            table = pa.Table.from_batches([batch])
            if fill and table.column(ARRIVED_LATE).null_count:
                position = table.schema.get_field_index(ARRIVED_LATE)
                table = table.set_column(
                    position, ARRIVED_LATE, pc.fill_null(table.column(ARRIVED_LATE), pa.scalar(False))
                )
            held.append(with_origin(table, paths[tagged.fragment.path], partition))
            rows += batch.num_rows
        if rows >= _SCAN_ROWS:
            yield pa.concat_tables(held)
            held, rows = [], 0
    if held:
        yield pa.concat_tables(held)


def read_rows(
    lake: Path, names: list[str], partition: str, expression: Any, columns: list[str] | None = None
) -> pa.Table | None:
    """:func:`scan`, as one table (None: no row matches)."""
    tables = list(scan(lake, names, partition, expression, columns))
    return pa.concat_tables(tables) if tables else None


# -- where to start: each machine's cut ---------------------------------------------------------------


def cuts(sessions: pa.Table | None, firsts: pa.Table, timeout: int) -> pa.Array:
    """Each machine's cut (``firsts``: machine_id, first): its earliest new event, or the start of
    the first session one can reach (ending no more than ``timeout`` before it), or earlier still
    while a session ends at or after the cut (sessions of equal timestamps share an instant: the
    cut is a time, and every event at it must be sessionized again)."""
    machines = firsts.column("machine_id")
    cut = firsts.column("first")
    if sessions is None:
        return cut
    first = per_machine(sessions, machines, cut)
    reach = pc.greater_equal(sessions.column("end_ts"), pc.subtract(first, timeout))
    while True:
        touching = sessions.filter(
            pc.and_(reach, pc.less(sessions.column("start_ts"), per_machine(sessions, machines, cut)))
        )
        if touching.num_rows == 0:
            return cut
        starts = touching.group_by("machine_id").aggregate([("start_ts", "min")])
        cut = pc.min_element_wise(
            cut, per_machine(firsts, starts.column("machine_id"), starts.column("start_ts_min")), skip_nulls=True
        )
        reach = pc.greater_equal(sessions.column("end_ts"), per_machine(sessions, machines, cut))


def per_machine(table: pa.Table, machines: pa.Array, values: pa.Array) -> pa.Array:
    """``values[i]`` belongs to ``machines[i]``: the value of each row's machine (null for others)."""
    return pc.take(values, pc.index_in(table.column("machine_id"), value_set=machines))


# -- what changed ------------------------------------------------------------------------------------------


@dataclass
class Changes:
    """What placing new events changes among the lake's rows (of one bucket, or of a whole run)."""

    removed_events: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # file -> event keys
    removed_sessions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # file -> ids
    log: list[pa.Table] = field(default_factory=list)
    events: int = 0  # old events whose session columns changed
    sessions: int = 0  # old sessions replaced
    settled: int = 0  # of them, those only settle_open_ends changed (written again by it)

    def add(self, other: Changes) -> None:
        for mine, theirs in (
            (self.removed_events, other.removed_events),
            (self.removed_sessions, other.removed_sessions),
        ):
            for name, keys in theirs.items():
                mine[name] |= keys
        self.log.extend(other.log)
        self.events += other.events
        self.sessions += other.sessions
        self.settled += other.settled


def compare(
    run: int,
    old_events: pa.Table | None,
    old_sessions: pa.Table | None,
    out_events: pa.Table,
    out_sessions: pa.Table,
    changes: Changes,
) -> tuple[pa.Table, pa.Table]:
    """The rows to write, of a bucket's sessionized output: new events, old ones whose session
    columns changed, sessions that are new or changed. Notes in ``changes`` what to take out of the lake."""
    if old_events is not None:
        # Joined on the keys and the session columns only, each output row by its position: the
        # events' other columns are not copied (a bucket's output, with its region, is the bulk of
        # a worker's memory).
        narrow = out_events.select(["machine_id", "event_id", *SESSION_FIELDS])
        narrow = narrow.append_column(_ROW, pa.array(range(out_events.num_rows), pa.int64()))
        old = old_events.select(["machine_id", "event_id", *SESSION_FIELDS, FILE])
        old = old.rename_columns(["machine_id", "event_id", *(f"old_{n}" for n in SESSION_FIELDS), FILE])
        paired = narrow.join(old, ["machine_id", "event_id"], join_type="left outer")
        was_old = pc.is_valid(paired.column(FILE))
        same = pc.fill_null(
            pc.and_(
                pc.and_(
                    pc.equal(paired.column("session_id"), paired.column("old_session_id")),
                    pc.equal(paired.column("session_seq"), paired.column("old_session_seq")),
                ),
                _equal_or_both_null(paired.column("ms_since_prev"), paired.column("old_ms_since_prev")),
            ),
            False,
        )
        unchanged = pc.and_(was_old, same)
        changed = paired.filter(pc.and_(was_old, pc.invert(same)))
        for name, key in zip(
            changed.column(FILE).to_pylist(),
            _keys(changed.column("machine_id"), changed.column("event_id")),
            strict=True,
        ):
            changes.removed_events[name].add(key)
        changes.events += changed.num_rows
        keep = pc.filter(paired.column(_ROW), pc.invert(unchanged))
        out_events = out_events.take(pc.take(keep, pc.sort_indices(keep)))  # in the output's order
        mapping = old_events.select(["machine_id", "event_id", "session_id"])
        new_ids = paired.filter(was_old).select(["machine_id", "event_id", "session_id"])
    else:
        mapping = new_ids = None
    if old_sessions is not None and old_sessions.num_rows:
        kept_new, kept_old = _same_sessions(out_sessions, old_sessions)
        out_sessions = out_sessions.filter(pc.invert(kept_new))
        gone = old_sessions.filter(pc.invert(kept_old)).select(["session_id", FILE])
        changed_ids = set()
        for session, name in zip(gone.column("session_id").to_pylist(), gone.column(FILE).to_pylist(), strict=True):
            changes.removed_sessions[name].add(session)
            changed_ids.add(session)
        changes.sessions += len(changed_ids)
        if mapping is not None and new_ids is not None and changed_ids:
            log = restatement_log(run, mapping, new_ids, changed_ids)
            if log.num_rows:
                changes.log.append(log)
    return out_events, out_sessions


def _same_sessions(new: pa.Table, old: pa.Table) -> tuple[pa.Array, pa.Array]:
    """(for each new row, for each old row): whether the other table has the same session, every
    column equal (a session that comes out the same stays where it is)."""
    pairs = pa.table({"session_id": new.column("session_id"), _ROW: pa.array(range(new.num_rows), pa.int64())}).join(
        pa.table({"session_id": old.column("session_id"), "_old": pa.array(range(old.num_rows), pa.int64())}),
        "session_id",
        join_type="inner",
    )
    new_rows, old_rows = pairs.column(_ROW), pairs.column("_old")
    same = pa.array([True] * pairs.num_rows, pa.bool_())
    maps = []
    for name in new.schema.names:
        if name not in old.schema.names:
            continue
        left, right = new.column(name).take(new_rows), old.column(name).take(old_rows)
        if pa.types.is_map(left.type):
            maps.append((left, right))
            continue
        same = pc.and_(same, _equal_or_both_null(left, right))
    for left, right in maps:
        # Maps as text, in their order; the few that differ only so are compared as dicts.
        equal = _equal_or_both_null(_map_texts(left), _map_texts(right))
        recheck = pc.indices_nonzero(pc.and_(same, pc.invert(equal))).to_pylist()
        if recheck:
            equal = equal.to_pylist()
            for row in recheck:
                equal[row] = dict(left[row].as_py() or []) == dict(right[row].as_py() or [])
            equal = pa.array(equal, pa.bool_())
        same = pc.and_(same, equal)
    kept_new = pc.is_in(pa.array(range(new.num_rows), pa.int64()), value_set=new_rows.filter(same))
    kept_old = pc.is_in(pa.array(range(old.num_rows), pa.int64()), value_set=old_rows.filter(same))
    return kept_new, kept_old


def _map_texts(column: Any) -> pa.Array:
    """Each map as one text, ``key=value`` joined in its order (null: a null map)."""
    maps = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    pairs = pc.binary_join_element_wise(maps.keys, pc.cast(maps.items, pa.string()), "=")
    lists = pa.ListArray.from_arrays(maps.offsets, pairs, mask=maps.is_null())
    return pc.binary_join(lists, ",")


def _keys(machines: pa.Array, ids: pa.Array) -> list[str]:
    return [f"{m}\x1f{e}" for m, e in zip(machines.to_pylist(), ids.to_pylist(), strict=True)]


def _equal_or_both_null(left: Any, right: Any) -> Any:
    both_null = pc.and_(pc.is_null(left), pc.is_null(right))
    return pc.or_(both_null, pc.fill_null(pc.equal(left, right), False))


def event_keys(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table.column("machine_id"), table.column("event_id"), "\x1f")


def session_keys(table: pa.Table) -> pa.Array:
    return table.column("session_id")


def first_copies(table: pa.Table, among: pa.Array) -> tuple[pa.Array, int]:
    """Which rows to keep: every row but the later copies of an (machine_id, event_id) among the
    rows ``among`` marks (the events written late: the sessionizer, which drops later copies
    elsewhere, never sees them); and how many copies are dropped."""
    rows = pc.indices_nonzero(among).to_pylist()
    picked = table.select(["machine_id", "event_id"]).take(pa.array(rows, pa.int64()))
    seen: set[tuple[str, str]] = set()
    dropped = []
    for row, key in zip(
        rows,
        zip(picked.column("machine_id").to_pylist(), picked.column("event_id").to_pylist(), strict=True),
        strict=True,
    ):
        if key in seen:
            dropped.append(row)
        seen.add(key)
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=pa.array(dropped, pa.int64())))
    return keep, len(dropped)


def as_late(table: pa.Table) -> pa.Table:
    """Events with their session columns for a late event: no session, ``late`` true."""
    rows = table.num_rows
    for fld, value in zip(session_schema_fields(), (None, None, None, True), strict=True):
        table = table.append_column(fld, pa.array([value] * rows, fld.type))
    return table


# -- copy-on-write -----------------------------------------------------------------------------------------


def rewrite(lake: Path, changes: Changes, writer: LakeWriter, ledgers: list[dict[str, Any]]) -> dict[str, Any]:
    """The lake files holding rows that changed, rewritten without them into the run's files, a
    block of rows at a time, oldest first (a file's rows go to the files of their own span of
    time); the restatement log. Returns the ledger's ``removed``, ``carried``, ``restated`` and
    ``restatements``."""
    owner = {name: ledger["run"] for ledger in ledgers for name in ledger.get("files", [])}
    removed: dict[int, dict[str, Any]] = {}
    carried = {"events": 0, "sessions": 0}
    for table_name, changed, key_of, target, time_column in (
        ("events", changes.removed_events, event_keys, writer.events, "timestamp"),
        ("sessions", changes.removed_sessions, session_keys, writer.sessions, "start_ts"),
    ):
        order = sorted(changed, key=lambda name: (_earliest(pq.read_metadata(lake / name), time_column), name))
        for name in order:
            reader = pq.ParquetFile(lake / name)
            partition = name.split("/")[1].split("=", 1)[0]
            drop = pa.array(sorted(changed[name]), pa.string())
            for batch in reader.iter_batches(batch_size=_REWRITE_ROWS):
                rows = _written_since(pa.Table.from_batches([batch]), target.schema)
                rows = rows.filter(pc.invert(pc.is_in(key_of(rows), value_set=drop)))
                if rows.num_rows:
                    value = pa.repeat(pa.scalar(partition_value(name), pa.string()), rows.num_rows)
                    target.add_table(rows.append_column(partition, value))
                carried[table_name] += rows.num_rows
            run = owner[name]
            entry = removed.setdefault(run, {"run": run, "files": [], "events": 0, "sessions": 0})
            entry["files"].append(name)
            entry[table_name] += reader.metadata.num_rows
            reader.close()
    # The old events whose session columns changed were written again with the buckets' output;
    # the sessions settle_open_ends changed, by it.
    carried["events"] += changes.events
    carried["sessions"] += changes.settled
    log_rows = 0
    if changes.log:
        log = pa.concat_tables(changes.log)
        log_rows = log.num_rows
        writer.add_restatements(log)
    return {
        "removed": [removed[run] for run in sorted(removed)],
        "carried": carried,
        "restated": {"sessions": changes.sessions, "events": changes.events},
        "restatements": log_rows,
    }


def _written_since(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows of a file an older sessionflow wrote, with the columns added since: no event of it
    arrived late (``arrived_late`` false), the others null."""
    for fld in schema:
        if fld.name not in rows.schema.names:
            value = False if fld.name == ARRIVED_LATE else None
            rows = rows.append_column(fld, pa.array([value] * rows.num_rows, fld.type))
    return rows


def _earliest(metadata: pq.FileMetaData, column: str) -> int:
    """The smallest value of ``column`` in a file, by its row groups' statistics (0 when unknown)."""
    values = []
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        chunks = [row_group.column(i) for i in range(row_group.num_columns)]
        statistics = next((chunk.statistics for chunk in chunks if chunk.path_in_schema == column), None)
        if statistics is None or not statistics.has_min_max:
            return 0
        values.append(statistics.min)
    return min(values, default=0)
