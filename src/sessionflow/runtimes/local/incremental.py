"""An incremental (``--state``) run on a lake that has events: its buckets placed among them.

The run's events are spilled in buckets of whole machines (:mod:`.spill`), as in any run. Then,
the work on a bucket in the worker processes, a bucket each, and every read of the lake once for
the run, in the run's process, its rows handed to the buckets in files:

1. **Look up** (workers): the bucket's events hashed and looked up in the lake's event-id index
   (:mod:`sessionflow.lake.ids`; the index parts of the bucket's machines only): which may be in
   the lake already, and on which day.
2. **Their copies** (the run): the lake's rows of those events, whatever their age.
3. **Screen** (workers): a copy with the content of the lake's is a duplicate, one with other
   content a ``conflicting_duplicate``; then the copies within the run. What is older than the
   clock less ``restate_horizon`` is set apart, to be written late. Each machine's earliest event
   to place.
4. **The region** (the run): the lake's sessions and events from each machine's cut on
   (:func:`.restate.cuts`), read a block at a time; each machine's newest event in the lake (for
   ``arrived_late``) and how many sessions it has before its cut (for their numbers).
5. **Place** (workers): the bucket's events flagged ``arrived_late`` in arrival order, then the
   new events and the bucket's region sessionized together (open sessions closed against the
   stream clock at the end of the run's input): the rows that changed, and the new ones, into
   Arrow files, which the run's process writes to the lake's files (each file one
   ``output.file_span`` of time of every bucket: a later restatement rewrites few files).
6. The lake's sessions left ``end_of_input`` that the run did not sessionize again are settled
   (:mod:`.open_ends`); the lake files holding changed rows are rewritten without them, a block at
   a time (:func:`.restate.rewrite`), and the index gets the run's events: both in the run's commit.

Memory follows one bucket per worker, and a block of rows in the run's process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sessionflow.config import Config
from sessionflow.core import Tally
from sessionflow.lake.commit import crash_point
from sessionflow.lake.ids import RunIndex, key_hashes, known_days, machine_parts
from sessionflow.lake.writer import LakeWriter
from sessionflow.runtimes.local.batch import (
    BatchRun,
    Captured,
    Conflict,
    sessionize,
    sort_events,
    split_copies,
    with_arrival,
    without_conflicts,
)
from sessionflow.runtimes.local.columnar import ARRIVED_LATE, refined_schema
from sessionflow.runtimes.local.engine import Engine
from sessionflow.runtimes.local.feeds import sessionizing
from sessionflow.runtimes.local.open_ends import settle_open_ends
from sessionflow.runtimes.local.parts import PartFiles, by_bucket, dump, read_all
from sessionflow.runtimes.local.restate import (
    FILE,
    Changes,
    LakeFiles,
    as_late,
    compare,
    cuts,
    day_of,
    first_copies,
    per_machine,
    read_rows,
    rewrite,
    scan,
)
from sessionflow.runtimes.local.spill import read_bucket, read_in_arrival_order
from sessionflow.schema import EVENT_PARTITION, SESSION_PARTITION

LATE = "_late"  # a screened event to write late, in no session
_HASH = "_hash"  # an event's key hash, while it is screened
# Raw input per bucket: a quarter of a batch run's (spill.BUCKET_RAW_BYTES), as a bucket is placed
# with its share of the lake and compared with it, which takes about four times the memory.
PLACING_BUCKET_BYTES = 8 << 20
# Arrow data the run's writer holds before it writes (a batch run's holds 32 MiB): what it writes
# is the workers' output and the rows it carries over, into the files of many spans at once; on
# bench_late's 1M events, the restating runs then peak at 427 and 413 MB, not 442-508 and 432-450.
_WRITER_BUFFER_BYTES = 8 << 20


@dataclass(frozen=True)
class Plan:
    """What every worker of the run needs (picklable)."""

    lake: str
    folder: str  # the run's spill folder: screened buckets and region parts go there too
    config: Config
    run: int
    placed_from: int | None  # events before this are written late (None: no clock yet)
    end_clock: int | None  # the stream clock at the end of the run's input: open sessions close against it
    files: LakeFiles  # the lake's files before the run
    index: dict[str, str]  # event day -> its event-id index file


@dataclass
class Looked:
    """A bucket after step 1."""

    number: int
    paths: list[str]  # the bucket piece's spill files
    machines: list[str]  # every machine of the bucket
    hits: pa.Table | None  # machine_id, event_id, day of the events the index may hold
    hashes: pa.Array  # of each event's key (lake/ids.py)


@dataclass
class Screened:
    """A bucket after step 3."""

    number: int
    path: str | None  # the events to place and to write late; None: nothing left
    machines: list[str] = field(default_factory=list)  # with events to place, and the earliest of each
    firsts: list[int] = field(default_factory=list)
    # With events too old to place, and the earliest of each: their lake's newest event is read.
    old_machines: list[str] = field(default_factory=list)
    old_firsts: list[int] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    ids: pa.Table | None = None  # hash, part, day of every event the bucket writes


@dataclass
class Placed:
    """A bucket after step 5: Arrow files of the rows to write (events, sessions), counts, changes."""

    events_files: list[str]
    sessions_files: list[str]
    events: int
    late: int
    duplicates: int
    sessions: int
    changes: Changes


# -- 1. look up (a worker) ------------------------------------------------------------------------------------


def look_up(paths: list[str], number: int, plan: Plan) -> Looked:
    table = read_in_arrival_order(paths)
    machines = table.column("machine_id")
    hashes = key_hashes(machines, table.column("event_id"))
    parts = machine_parts(machines)
    days = known_days(plan.index, hashes, pc.unique(parts).to_pylist())
    found = pc.is_valid(days)
    hits = None
    if pc.any(found).as_py():
        hits = table.select(["machine_id", "event_id"]).filter(found).append_column("day", days.filter(found))
    return Looked(number, paths, pc.unique(machines).to_pylist(), hits, hashes)


# -- 2. their copies (the run) -----------------------------------------------------------------------------------


def read_copies(plan: Plan, looked: list[Looked]) -> dict[int, list[str]]:
    """The lake's rows of the events the index may hold, read once for the run (the id columns of
    their days, then the whole rows of the files that hold them), into files per bucket."""
    hits = [item.hits for item in looked if item.hits is not None]
    if not hits:
        return {}
    found = pa.concat_tables(hits)
    machines = pa.array([m for item in looked for m in item.machines], pa.string())
    numbers = pa.array([item.number for item in looked for _ in item.machines], pa.int64())
    lake = Path(plan.lake)
    names = [name for day in pc.unique(found.column("day")).to_pylist() for name in plan.files.events.get(day, [])]
    expression = pc.field("machine_id").isin(pc.unique(found.column("machine_id"))) & pc.field("event_id").isin(
        pc.unique(found.column("event_id"))
    )
    holding = {
        name
        for ids in scan(lake, names, EVENT_PARTITION, expression, ["machine_id", "event_id"])
        for name in pc.unique(ids.column(FILE)).to_pylist()
    }
    out = PartFiles(plan.folder, "copies")
    try:
        for rows in scan(lake, sorted(holding), EVENT_PARTITION, expression):
            for number, part in by_bucket(rows, machines, numbers):
                out.write(number, part)
    finally:
        files = out.close()
    return files


# -- 3. screen (a worker) -------------------------------------------------------------------------------------


def screen(paths: list[str], hashes: pa.Array, copies: list[str], number: int, plan: Plan) -> Screened:
    # The order look_up hashed them in: read in arrival order again.
    table = read_in_arrival_order(paths).append_column(_HASH, hashes)
    result = Screened(number, None)
    # The lake's copy is the first arrival: new events are held to it first, then to each other.
    table, result.duplicates = split_copies(table, read_all(copies), result.conflicts)
    table = without_conflicts(table, result.conflicts)
    # In arrival order still (arrived_late is judged in it, once the lake's newest are known).
    late = pa.array([False] * table.num_rows, pa.bool_())
    if plan.placed_from is not None:
        too_old = pc.less(table.column("timestamp"), plan.placed_from)
        if pc.any(too_old).as_py():
            keep, result.duplicates = first_copies(table, too_old)
            table, late = table.filter(keep), too_old.filter(keep)
            old = table.filter(late).group_by("machine_id").aggregate([("timestamp", "min")])
            result.old_machines = old.column("machine_id").to_pylist()
            result.old_firsts = old.column("timestamp_min").to_pylist()
    result.ids = pa.table(
        {
            "hash": table.column(_HASH),
            "part": machine_parts(table.column("machine_id")),
            "day": table.column(EVENT_PARTITION),
        }
    )
    table = table.drop_columns([_HASH]).append_column(LATE, late)
    if table.num_rows:
        to_place = table.filter(pc.invert(late))
        firsts = to_place.group_by("machine_id").aggregate([("timestamp", "min")])
        result.machines = firsts.column("machine_id").to_pylist()
        result.firsts = firsts.column("timestamp_min").to_pylist()
        result.path = dump(f"{plan.folder}/screened-{number:06d}.arrow", table)
    for name in [*paths, *copies]:
        Path(name).unlink()
    return result


# -- 4. the region (the run) -------------------------------------------------------------------------------


@dataclass
class Region:
    """A bucket's share of the lake, read by the run for its worker."""

    events: list[str] = field(default_factory=list)  # Arrow files of its events from the cuts on
    sessions: list[str] = field(default_factory=list)  # and of its sessions
    newest: dict[str, int] = field(default_factory=dict)  # each machine's newest event in the lake
    before: dict[str, int] = field(default_factory=dict)  # how many sessions each has before its cut


@dataclass
class Regions:
    """Every bucket's region, and what :func:`.open_ends.settle_open_ends` must know."""

    buckets: dict[int, Region] = field(default_factory=dict)
    placed_machines: set[str] = field(default_factory=set)  # machines with events placed
    region_sessions: set[str] = field(default_factory=set)  # lake sessions sessionized again


def read_region(plan: Plan, screened: list[Screened]) -> Regions:
    """For each bucket, files of the lake's events and sessions from its machines' cuts on (each
    row with its file), each machine's newest event in the lake and its sessions before the cut,
    read once for the run."""
    found = Regions({s.number: Region() for s in screened if s.path is not None})
    _newest_of_old(plan, screened, found)
    machines = pa.array([m for s in screened for m in s.machines], pa.string())
    if len(machines) == 0:
        return found
    found.placed_machines.update(machines.to_pylist())
    numbers = pa.array([s.number for s in screened for _ in s.machines], pa.int64())
    firsts = pa.table({"machine_id": machines, "first": pa.array([f for s in screened for f in s.firsts], pa.int64())})
    lake = Path(plan.lake)
    timeout = plan.config.session.timeout_ms
    bound = pc.min(firsts.column("first")).as_py() - timeout
    while True:
        sessions = read_rows(
            lake,
            plan.files.sessions,
            SESSION_PARTITION,
            pc.field("machine_id").isin(machines) & (pc.field("end_ts") >= bound),
        )
        cut = cuts(sessions, firsts, timeout)
        lowest = pc.min(cut).as_py()
        if lowest >= bound:
            break
        bound = lowest  # a session ends at the cut of one that ends within reach: read from there
    events_out = PartFiles(plan.folder, "region-events")
    sessions_out = PartFiles(plan.folder, "region-sessions")
    try:
        if sessions is not None:
            sessions = sessions.filter(
                pc.greater_equal(sessions.column("start_ts"), per_machine(sessions, machines, cut))
            )
            found.region_sessions.update(sessions.column("session_id").to_pylist())
            for number, part in by_bucket(sessions, machines, numbers):
                sessions_out.write(number, part)
        expression = pc.field("machine_id").isin(machines) & (pc.field("timestamp") >= lowest) & ~pc.field("late")
        for rows in scan(lake, plan.files.event_files(day_of(lowest)), EVENT_PARTITION, expression):
            rows = rows.filter(pc.greater_equal(rows.column("timestamp"), per_machine(rows, machines, cut)))
            for number, part in by_bucket(rows, machines, numbers):
                events_out.write(number, part)
                _take_newest(found.buckets[number].newest, part)
    finally:
        event_files, session_files = events_out.close(), sessions_out.close()
    for number, region in found.buckets.items():
        region.events, region.sessions = event_files.get(number, []), session_files.get(number, [])
    for number, counts in _sessions_before(plan, machines, numbers, cut).items():
        found.buckets[number].before = counts
    return found


def _take_newest(newest: dict[str, int], rows: pa.Table) -> None:
    """Each machine's newest timestamp in ``rows`` taken into ``newest``."""
    found = rows.group_by("machine_id").aggregate([("timestamp", "max")])
    for machine, ts in zip(
        found.column("machine_id").to_pylist(), found.column("timestamp_max").to_pylist(), strict=True
    ):
        if ts > newest.get(machine, ts - 1):
            newest[machine] = ts


def _newest_of_old(plan: Plan, screened: list[Screened], found: Regions) -> None:
    """The lake's newest event of each machine with events too old to place (the region, if any,
    may not hold it): read from the earliest of them on (a newest before a machine's earliest new
    event changes none of its flags)."""
    machines = pa.array([m for s in screened for m in s.old_machines], pa.string())
    if len(machines) == 0:
        return
    numbers = pa.array([s.number for s in screened for _ in s.old_machines], pa.int64())
    earliest = min(f for s in screened for f in s.old_firsts)
    expression = pc.field("machine_id").isin(machines) & (pc.field("timestamp") >= earliest)
    names = plan.files.event_files(day_of(earliest))
    for rows in scan(Path(plan.lake), names, EVENT_PARTITION, expression, ["machine_id", "timestamp"]):
        for number, part in by_bucket(rows, machines, numbers):
            _take_newest(found.buckets[number].newest, part)


def _sessions_before(plan: Plan, machines: pa.Array, numbers: pa.Array, cut: pa.Array) -> dict[int, dict[str, int]]:
    """For each bucket, how many of its sessions in the lake start before each machine's cut (none
    of them changes: the machine's next session is numbered from there)."""
    expression = pc.field("machine_id").isin(machines) & (pc.field("start_ts") < pc.max(cut).as_py())
    counts: dict[str, int] = {}
    for rows in scan(Path(plan.lake), plan.files.sessions, SESSION_PARTITION, expression, ["machine_id", "start_ts"]):
        rows = rows.filter(pc.less(rows.column("start_ts"), per_machine(rows, machines, cut)))
        found = rows.group_by("machine_id").aggregate([("start_ts", "count")])
        for machine, count in zip(
            found.column("machine_id").to_pylist(), found.column("start_ts_count").to_pylist(), strict=True
        ):
            counts[machine] = counts.get(machine, 0) + count
    bucket_of = dict(zip(machines.to_pylist(), numbers.to_pylist(), strict=True))
    out: dict[int, dict[str, int]] = {}
    for machine, count in counts.items():
        out.setdefault(bucket_of[machine], {})[machine] = count
    return out


# -- 5. place (a worker) ----------------------------------------------------------------------------------------


def place(path: str, region: Region, number: int, plan: Plan) -> Placed:
    """The bucket's events sessionized with its region: what to write, into Arrow files."""
    config = plan.config
    # In arrival order: arrived_late judged against each machine's newest event in the lake.
    table = with_arrival(read_bucket([path]), region.newest)
    is_late = table.column(LATE)
    if pc.any(is_late).as_py():
        late, new = table.filter(is_late), table.filter(pc.invert(is_late))
    else:
        late, new = table.slice(0, 0), table
    late, new = late.drop_columns([LATE]), new.drop_columns([LATE])
    del table
    old_events, old_sessions = read_all(region.events), read_all(region.sessions)
    changes = Changes()
    events: list[str] = []
    sessions: list[str] = []
    if late.num_rows:
        events.append(dump(f"{plan.folder}/late-{number:06d}.arrow", as_late(sort_events(late))))
    duplicates = written = 0
    if new.num_rows:
        names = [*refined_schema(config).names, ARRIVED_LATE]
        merged = new.select(names)
        if old_events is not None:
            merged = pa.concat_tables([merged, old_events.select(names).cast(merged.schema)])
        captured = Captured()
        feed = sessionizing()
        assembler = captured.assembler(feed)
        sessionize(merged, config, assembler, feed, clock=plan.end_clock, before=region.before)
        out_events, out_sessions = captured.tables(assembler, merged.schema)
        del captured, merged
        duplicates = assembler.tally.duplicates
        out_events, out_sessions = compare(plan.run, old_events, old_sessions, out_events, out_sessions, changes)
        events.append(dump(f"{plan.folder}/placed-events-{number:06d}.arrow", out_events))
        sessions.append(dump(f"{plan.folder}/placed-sessions-{number:06d}.arrow", out_sessions))
        written = out_sessions.num_rows
    for name in [path, *region.events, *region.sessions]:
        Path(name).unlink()
    return Placed(
        events, sessions, late.num_rows + new.num_rows - duplicates, late.num_rows, duplicates, written, changes
    )


# -- the run --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    ledger: dict[str, Any]  # removed, carried, restated, restatements
    removed: list[str]  # lake files the run takes out


def restate_run(
    batch: BatchRun,
    plan: Plan,
    workers: Callable[[], Engine],
    writer: LakeWriter,
    tally: Tally,
    index: RunIndex,
    ledgers: list[dict[str, Any]],
) -> Outcome:
    """Steps 1-6 of the module's doc for every bucket of ``batch``; ``workers`` makes a pool of
    worker processes, forked before the step's reading in this process (they do not inherit it)."""
    writer.events.buffer_bytes = writer.sessions.buffer_bytes = _WRITER_BUFFER_BYTES
    jobs = [(paths, number, plan) for number, paths in batch.spill.pieces()]
    with _pool(workers) as engine:
        looked: list[Looked] = list(engine.map(look_up, jobs))
    with _pool(workers) as engine:
        copies = read_copies(plan, looked)
        screening = [(item.paths, item.hashes, copies.get(item.number, []), item.number, plan) for item in looked]
        del looked
        screened: list[Screened] = list(engine.map(screen, screening))
    del screening
    for result in screened:
        if result.ids is not None:
            index.add(result.ids)
            result.ids = None
        batch.conflicts.extend(result.conflicts)
        tally.duplicates += result.duplicates
    changes = Changes()
    with _pool(workers) as engine:
        regions = read_region(plan, screened)
        placing = [(s.path, regions.buckets[s.number], s.number, plan) for s in screened if s.path is not None]
        for placed in engine.map(place, placing):
            # Written here, not by the workers: a file then holds one span of time of every bucket.
            for name in placed.events_files:
                writer.events.add_table(read_bucket([name]))
            for name in placed.sessions_files:
                writer.sessions.add_table(read_bucket([name]))
            tally.events += placed.events
            tally.late += placed.late
            tally.duplicates += placed.duplicates
            tally.sessions += placed.sessions
            changes.add(placed.changes)
            crash_point("bucket")
    settle_open_ends(plan, regions.placed_machines, regions.region_sessions, changes, writer)
    ledger = rewrite(Path(plan.lake), changes, writer, ledgers)
    removed = [name for entry in ledger["removed"] for name in entry["files"]]
    return Outcome(ledger, removed)


@contextlib.contextmanager
def _pool(workers: Callable[[], Engine]) -> Iterator[Engine]:
    engine = workers()
    try:
        yield engine
    finally:
        engine.close()
