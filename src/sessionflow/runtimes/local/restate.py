"""Incremental runs: new events placed among the lake's, the sessions they touch restated.

After every ``--state`` run the lake holds what one batch run over all input so far gives. For
each machine of the run, the lake is read from its *cut*: the start of the first session that a
new event can reach (one ending no more than ``timeout`` before the machine's earliest new event),
or that event itself. Every session before the cut ends more than ``timeout`` before any new event,
so it cannot change. The old events from the cut on and the new ones are sessionized together; an
old row whose session columns come out the same stays where it is, a changed one is written again,
and the lake files that held changed rows are rewritten without them (copy-on-write), in the
run's commit.

Dedupe against the lake: a new event whose ``(machine_id, event_id)`` is already in the lake (in the
partitions of the last ``restate_horizon`` of stream time, or its own day) is a duplicate, or a
conflicting one. An event older than the stream clock (before the run) less ``restate_horizon`` is
not placed: it is written late, in no session.

What one batch run over all input gives, the sessions' own columns included: a new event's
``arrived_late`` is judged against its machine's newest event in the lake (the region holds it, or
it is older than every new event); a machine's sessions are numbered on from its sessions before
the cut (a split renumbers the later ones, which are all in the region); the sessions still open at
the end are closed against the stream clock at the end of the run, and a session the lake holds as
``end_of_input`` that the run does not sessionize again is settled by :mod:`.open_ends`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sessionflow.config import Config
from sessionflow.core import Tally
from sessionflow.core.enrich import hour_fields
from sessionflow.lake.restatements import restatement_log
from sessionflow.lake.writer import LakeWriter
from sessionflow.runtimes.local.batch import (
    BatchRun,
    Captured,
    sessionize,
    sort_events,
    split_copies,
    with_arrival,
)
from sessionflow.runtimes.local.columnar import ARRIVED_LATE, SESSION_FIELDS, refined_schema, session_schema_fields
from sessionflow.runtimes.local.feeds import Feed
from sessionflow.schema import EVENT_PARTITION, SESSION_PARTITION

DAY_MS = 24 * 3600 * 1000
FILE = "_file"  # the lake file an old row was read from (relative to the lake)


def _day(ms: int) -> str:
    return hour_fields(ms // 3_600_000)[0]


@dataclass
class LakeFiles:
    """The lake's event files by day and its session files, as they stand before the run."""

    lake: Path
    events: dict[str, list[str]] = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, lake: Path) -> LakeFiles:
        found = cls(lake)
        for folder in sorted((lake / "events").glob(f"{EVENT_PARTITION}=*")):
            day = folder.name.split("=", 1)[1]
            found.events[day] = sorted(p.relative_to(lake).as_posix() for p in folder.glob("*.parquet"))
        found.sessions = sorted(p.relative_to(lake).as_posix() for p in (lake / "sessions").glob("*/*.parquet"))
        return found

    def event_files(self, from_day: str | None, days: Iterable[str] = ()) -> list[str]:
        wanted = set(days)
        return [
            name
            for day, names in self.events.items()
            if (from_day is None or day >= from_day) or day in wanted
            for name in names
        ]


def read_rows(
    lake: Path,
    names: list[str],
    partition: str,
    expression: pc.Expression | None,
    columns: list[str] | None = None,
) -> pa.Table | None:
    """Rows of the named files that match, each with its file and its partition value. An event
    file written before events had ``arrived_late`` reads as none arrived late; a sessions file of
    then, with its newer columns null."""
    tables = []
    for name in names:
        table = pq.read_table(lake / name, filters=expression, columns=columns)
        if table.num_rows == 0:
            continue
        if partition == EVENT_PARTITION and columns is None and ARRIVED_LATE not in table.schema.names:
            table = table.append_column(pa.field(ARRIVED_LATE, pa.bool_()), pa.array([False] * table.num_rows))
        value = name.split("/")[1].split("=", 1)[1]
        table = table.append_column(partition, pa.array([value] * table.num_rows, pa.string()))
        tables.append(table.append_column(FILE, pa.array([name] * table.num_rows, pa.string())))
    return pa.concat_tables(tables, promote_options="default") if tables else None


@dataclass
class Restatement:
    """What a run changes in the lake, over all its buckets."""

    removed_events: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # file -> event keys
    removed_sessions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # file -> ids
    log: list[pa.Table] = field(default_factory=list)
    events: int = 0  # old events whose session columns changed
    sessions: int = 0  # old sessions replaced
    settled: int = 0  # of them, those only settle_open_ends changed (written again by it)


class History:
    """The lake before the run, read for the machines of one bucket at a time."""

    def __init__(self, lake: Path, config: Config, clock: int | None, run: int, end_clock: int | None) -> None:
        self.lake = lake
        self.config = config
        self.files = LakeFiles.of(lake)
        self.run = run
        horizon = config.session.restate_horizon_ms
        # Before this, an event is not placed any more: it is written late (see the module's doc).
        self.placed_from = None if clock is None else clock - horizon
        # The stream clock at the end of the run's input: sessions still open then close against it.
        self.end_clock = end_clock
        self.restatement = Restatement()
        # Every machine that had events placed, and every lake session sessionized again: what
        # settle_open_ends must leave alone or settle by the machine's next event.
        self.placed_machines: set[str] = set()
        self.region_sessions: set[str] = set()
        # The event-id memory this run consulted: the lake's (machine_id, event_id) columns, as
        # stored (compressed), in the event files of the horizon (README, Dedupe).
        self.id_bytes = 0
        self._measured: set[str] = set()

    def is_empty(self) -> bool:
        return not self.files.events and not self.files.sessions

    # -- dedupe -------------------------------------------------------------------------------

    def earlier_copies(self, new: pa.Table) -> pa.Table | None:
        """Lake rows with the (machine_id, event_id) of a new event."""
        days = set(pc.unique(new.column(EVENT_PARTITION)).to_pylist())
        from_day = None if self.placed_from is None else _day(self.placed_from)
        names = self.files.event_files(from_day, days)
        if not names:
            return None
        for name in names:
            if name not in self._measured:
                self._measured.add(name)
                self.id_bytes += _id_column_bytes(self.lake / name)
        machines = pc.unique(new.column("machine_id"))
        ids = pc.unique(new.column("event_id"))
        expression = pc.field("machine_id").isin(machines) & pc.field("event_id").isin(ids)
        return read_rows(self.lake, names, EVENT_PARTITION, expression)

    # -- placing ------------------------------------------------------------------------------

    def newest(self, machines: pa.Array) -> dict[str, int]:
        """Each machine's newest timestamp in the lake (every event file read: only for machines
        with events too old to place, rare, whose newest the region may not hold)."""
        table = read_rows(
            self.lake,
            self.files.event_files(None),
            EVENT_PARTITION,
            pc.field("machine_id").isin(machines),
            columns=["machine_id", "timestamp"],
        )
        return {} if table is None else _newest(table)

    def region(self, new: pa.Table) -> tuple[pa.Table | None, pa.Table | None, dict[str, int]]:
        """(old events from each machine's cut on, not late; old sessions from the cut on), each row
        with its file; and how many sessions each machine has before its cut. ``new``: the events
        to place (the bucket's, less duplicates and late ones)."""
        firsts = new.group_by("machine_id").aggregate([("timestamp", "min")]).rename_columns(["machine_id", "first"])
        machines = firsts.column("machine_id")
        earliest = pc.min(firsts.column("first")).as_py()
        timeout = self.config.session.timeout_ms
        bound = earliest - timeout
        while True:
            sessions = read_rows(
                self.lake,
                self.files.sessions,
                SESSION_PARTITION,
                pc.field("machine_id").isin(machines) & (pc.field("end_ts") >= bound),
            )
            cut = _cuts(sessions, firsts, timeout)
            lowest = pc.min(cut).as_py()
            if lowest >= bound:
                break
            bound = lowest  # a session ends at the cut of one that ends within reach: read from there
        if sessions is not None:
            mine = _per_machine(sessions, machines, cut)
            sessions = sessions.filter(pc.greater_equal(sessions.column("start_ts"), mine))
            sessions = sessions if sessions.num_rows else None
        self.placed_machines.update(machines.to_pylist())
        if sessions is not None:
            self.region_sessions.update(sessions.column("session_id").to_pylist())
        before = self._sessions_before(machines, cut)
        lowest = pc.min(cut).as_py()
        names = self.files.event_files(_day(lowest))
        events = read_rows(
            self.lake,
            names,
            EVENT_PARTITION,
            pc.field("machine_id").isin(machines) & (pc.field("timestamp") >= lowest) & ~pc.field("late"),
        )
        if events is not None:
            events = events.filter(pc.greater_equal(events.column("timestamp"), _per_machine(events, machines, cut)))
            events = events if events.num_rows else None
        return events, sessions, before

    def _sessions_before(self, machines: pa.Array, cut: pa.Array) -> dict[str, int]:
        """How many of its sessions in the lake start before each machine's cut (none changes)."""
        starts = read_rows(
            self.lake,
            self.files.sessions,
            SESSION_PARTITION,
            pc.field("machine_id").isin(machines) & (pc.field("start_ts") < pc.max(cut).as_py()),
            columns=["machine_id", "start_ts"],
        )
        if starts is None:
            return {}
        starts = starts.filter(pc.less(starts.column("start_ts"), _per_machine(starts, machines, cut)))
        counts = starts.group_by("machine_id").aggregate([("start_ts", "count")])
        return dict(
            zip(counts.column("machine_id").to_pylist(), counts.column("start_ts_count").to_pylist(), strict=True)
        )

    def restate(
        self, old_events: pa.Table | None, old_sessions: pa.Table | None, out_events: pa.Table, out_sessions: pa.Table
    ) -> tuple[pa.Table, pa.Table]:
        """The rows to write, of the bucket's sessionized output: new events, old ones whose session
        columns changed, sessions that are new or changed. Notes what to take out of the lake."""
        restatement = self.restatement
        if old_events is not None:
            old = old_events.select(["machine_id", "event_id", *SESSION_FIELDS, FILE])
            old = old.rename_columns(["machine_id", "event_id", *(f"old_{n}" for n in SESSION_FIELDS), FILE])
            paired = out_events.join(old, ["machine_id", "event_id"], join_type="left outer")
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
                restatement.removed_events[name].add(key)
            restatement.events += changed.num_rows
            out_events = paired.filter(pc.invert(unchanged)).select(out_events.schema.names)
            mapping = old_events.select(["machine_id", "event_id", "session_id"])
            new_ids = paired.filter(was_old).select(["machine_id", "event_id", "session_id"])
        else:
            mapping = new_ids = None
        if old_sessions is not None and old_sessions.num_rows:
            columns = [name for name in out_sessions.schema.names if name in old_sessions.schema.names]
            old_rows = {_session_key(row): row for row in old_sessions.select([*columns, FILE]).to_pylist()}
            keep_new = []
            for row in out_sessions.select(columns).to_pylist():
                match = old_rows.get(_session_key(row))
                keep_new.append(match is None or any(match[name] != row[name] for name in columns))
                if match is not None and not keep_new[-1]:
                    del old_rows[_session_key(row)]
            out_sessions = out_sessions.filter(pa.array(keep_new, pa.bool_()))
            changed_ids = set()
            for row in old_rows.values():
                restatement.removed_sessions[row[FILE]].add(row["session_id"])
                changed_ids.add(row["session_id"])
            restatement.sessions += len(changed_ids)
            if mapping is not None and new_ids is not None and changed_ids:
                log = restatement_log(self.run, mapping, new_ids, changed_ids)
                if log.num_rows:
                    restatement.log.append(log)
        return out_events, out_sessions


def _cuts(sessions: pa.Table | None, firsts: pa.Table, timeout: int) -> pa.Array:
    """Each machine's cut (``firsts``: machine_id, first): its earliest new event, or the start of
    the first session one can reach (ending no more than ``timeout`` before it), or earlier still
    while a session ends at or after the cut (sessions of equal timestamps share an instant: the
    cut is a time, and every event at it must be sessionized again)."""
    machines = firsts.column("machine_id")
    cut = firsts.column("first")
    if sessions is None:
        return cut
    first = _per_machine(sessions, machines, cut)
    reach = pc.greater_equal(sessions.column("end_ts"), pc.subtract(first, timeout))
    while True:
        touching = sessions.filter(
            pc.and_(reach, pc.less(sessions.column("start_ts"), _per_machine(sessions, machines, cut)))
        )
        if touching.num_rows == 0:
            return cut
        starts = touching.group_by("machine_id").aggregate([("start_ts", "min")])
        cut = pc.min_element_wise(
            cut, _per_machine(firsts, starts.column("machine_id"), starts.column("start_ts_min")), skip_nulls=True
        )
        reach = pc.greater_equal(sessions.column("end_ts"), _per_machine(sessions, machines, cut))


def _id_column_bytes(path: Path) -> int:
    metadata = pq.read_metadata(path)
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            if chunk.path_in_schema in ("machine_id", "event_id"):
                total += chunk.total_compressed_size
    return total


def _per_machine(table: pa.Table, machines: pa.Array, values: pa.Array) -> pa.Array:
    """``values[i]`` belongs to ``machines[i]``: the value of each row's machine (null for others)."""
    return pc.take(values, pc.index_in(table.column("machine_id"), value_set=machines))


def _session_key(row: dict[str, Any]) -> str:
    return str(row["session_id"])


def _keys(machines: pa.Array, ids: pa.Array) -> list[str]:
    return [f"{m}\x1f{e}" for m, e in zip(machines.to_pylist(), ids.to_pylist(), strict=True)]


def _equal_or_both_null(left: Any, right: Any) -> Any:
    both_null = pc.and_(pc.is_null(left), pc.is_null(right))
    return pc.or_(both_null, pc.fill_null(pc.equal(left, right), False))


def without(lake: Path, name: str, keys: set[str], key_of: Any) -> pa.Table:
    """The rows of lake file ``name`` but those whose key is in ``keys``, with its partition column."""
    table = pq.read_table(lake / name)
    partition, value = name.split("/")[1].split("=", 1)
    keep = pc.invert(pc.is_in(key_of(table), value_set=pa.array(sorted(keys), pa.string())))
    table = table.filter(keep)
    return table.append_column(partition, pa.array([value] * table.num_rows, pa.string()))


def event_keys(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table.column("machine_id"), table.column("event_id"), "\x1f")


def session_keys(table: pa.Table) -> pa.Array:
    return table.column("session_id")


def place(history: History, table: pa.Table, run: BatchRun, feed: Feed, writer: LakeWriter, tally: Tally) -> None:
    """One bucket of an incremental run: dedupe against the lake, write what is too old late,
    sessionize the rest with the lake's events from each machine's cut, write what changed."""
    config = history.config
    new, duplicates = split_copies(table, history.earlier_copies(table), run.conflicts)
    tally.duplicates += duplicates
    too_old = None
    if history.placed_from is not None:
        too_old = pc.less(new.column("timestamp"), history.placed_from)
        if not pc.any(too_old).as_py():
            too_old = None
    placing = new if too_old is None else new.filter(pc.invert(too_old))
    old_events = old_sessions = None
    before: dict[str, int] = {}
    if placing.num_rows:
        old_events, old_sessions, before = history.region(placing)
    # Each machine's newest event in the lake: in the region when it is not older than every new
    # event (and then it changes nothing), read for the machines with events too old to place.
    newest = {} if old_events is None else _newest(old_events)
    if too_old is not None:
        newest.update(history.newest(pc.unique(new.filter(too_old).column("machine_id"))))
    new = with_arrival(new, newest)
    if too_old is not None:
        late, duplicates = _first_copies(new.filter(too_old))
        tally.duplicates += duplicates
        writer.events.add_table(_as_late(sort_events(late)))
        tally.events += late.num_rows
        tally.late += late.num_rows
        new = new.filter(pc.invert(too_old))
    if new.num_rows == 0:
        return
    names = [*refined_schema(config).names, ARRIVED_LATE]
    merged = new.select(names)
    if old_events is not None:
        merged = pa.concat_tables([merged, old_events.select(names).cast(merged.schema)])
    captured = Captured()
    assembler = captured.assembler(feed)
    sessionize(merged, config, assembler, feed, clock=history.end_clock, before=before)
    events, sessions = captured.tables(assembler, merged.schema)
    tally.duplicates += assembler.tally.duplicates
    tally.events += new.num_rows - assembler.tally.duplicates
    events, sessions = history.restate(old_events, old_sessions, events, sessions)
    writer.events.add_table(events)
    writer.sessions.add_table(sessions)
    tally.sessions += sessions.num_rows


def _newest(events: pa.Table) -> dict[str, int]:
    newest = events.group_by("machine_id").aggregate([("timestamp", "max")])
    return dict(zip(newest.column("machine_id").to_pylist(), newest.column("timestamp_max").to_pylist(), strict=True))


def _first_copies(table: pa.Table) -> tuple[pa.Table, int]:
    """The first arrival of each (machine_id, event_id): the sessionizer, which drops later copies
    elsewhere, never sees events written late."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for key in zip(table.column("machine_id").to_pylist(), table.column("event_id").to_pylist(), strict=True):
        keep.append(key not in seen)
        seen.add(key)
    mask = pa.array(keep, pa.bool_())
    return table.filter(mask), len(keep) - sum(keep)


def _as_late(table: pa.Table) -> pa.Table:
    rows = table.num_rows
    for fld, value in zip(session_schema_fields(), (None, None, None, True), strict=True):
        table = table.append_column(fld, pa.array([value] * rows, fld.type))
    return table


def rewrite(history: History, writer: LakeWriter, ledgers: list[dict[str, Any]]) -> dict[str, Any]:
    """The lake files holding rows that changed, rewritten without them into the run's files; the
    restatement log. Returns the ledger's ``removed``, ``carried``, ``restated`` and ``restatements``."""
    restatement = history.restatement
    owner = {name: ledger["run"] for ledger in ledgers for name in ledger.get("files", [])}
    removed: dict[int, dict[str, Any]] = {}
    carried = {"events": 0, "sessions": 0}
    for table_name, changed, key_of, target in (
        ("events", restatement.removed_events, event_keys, writer.events),
        ("sessions", restatement.removed_sessions, session_keys, writer.sessions),
    ):
        for name in sorted(changed):
            before = pq.read_metadata(history.lake / name).num_rows
            rest = without(history.lake, name, changed[name], key_of)
            if rest.num_rows:
                target.add_table(rest)
            carried[table_name] += rest.num_rows
            run = owner[name]
            entry = removed.setdefault(run, {"run": run, "files": [], "events": 0, "sessions": 0})
            entry["files"].append(name)
            entry[table_name] += before
    # The old events whose session columns changed were written again with the bucket's output;
    # the sessions settle_open_ends changed, by it.
    carried["events"] += restatement.events
    carried["sessions"] += restatement.settled
    log_rows = 0
    if restatement.log:
        log = pa.concat_tables(restatement.log)
        log_rows = log.num_rows
        writer.add_restatements(log)
    return {
        "removed": [removed[run] for run in sorted(removed)],
        "carried": carried,
        "restated": {"sessions": restatement.sessions, "events": restatement.events},
        "restatements": log_rows,
    }
