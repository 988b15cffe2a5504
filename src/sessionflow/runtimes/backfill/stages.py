"""What the Spark executors run: the core, applied to Arrow batches. No Spark import here.

Three stages, each a plain function over Arrow data so it can be tested without a cluster:

* :func:`refine_batches` (``mapInArrow`` over raw lines): the core's raw-line step
  (``LineRefiner.refine_line``), the one the embedded runner and the AWS process step run; every
  line keeps its arrival key (file, split, index in split) and every split reports how many lines
  it holds, so exact line numbers can be rebuilt (a rejection's row is written once they are).
* :func:`sessionize_partition` (``mapInArrow`` over rows hash-partitioned and sorted by machine_id,
  which also runs on Spark 3.5, unlike ``applyInArrow``): per machine, the core's dedupe (first
  arrival wins for each event_id, no horizon; a later copy of other content is a conflicting
  duplicate, reported by its arrival key), each first arrival marked ``arrived_late`` in arrival
  order (the core's ``rules.arrival_flags``), then the core ``Sessionizer`` over its events sorted
  by (timestamp, event_id), flushed against the stream clock at the end of the input.
  For a date range it works out whether the window it was given decides the range; when it does
  not, it says so and the driver runs that machine again over all of its history. A range's
  sessions are numbered on from the machine's sessions in the lake before the range.
* :func:`wanted_lines` (``mapInArrow`` over the raw lines read again, only when there are
  conflicting duplicates): the bytes of the lines with the arrival keys asked for.
* :func:`rejection_lines` (``mapInArrow``): the core's ``rejection_row`` as one JSON line.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from sessionflow.config import Config, SessionConfig
from sessionflow.core import rules
from sessionflow.core.pipeline import LineRefiner, rejection_row
from sessionflow.core.rejections import Reason, Rejection, conflict_message
from sessionflow.core.sessionizer import Outputs, Sessionizer
from sessionflow.runtimes.arrow import arrow_schema
from sessionflow.schema import SESSION_COLUMNS, Column, event_columns

try:
    import pyarrow as pa
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the Spark backfill needs pyarrow: pip install 'sessionflow[spark]'") from exc

# Row kinds of the refine stage's output.
EVENT = 0
REJECTION = 1
SPLIT = 2  # one per input split: how many lines (and blank lines) it holds
# Row kinds of the sessionize stage's output.
SESSION = 1
UNRESOLVED = 2  # a machine whose window did not decide the date range
DUPLICATES = 3  # a machine's copies dropped, counted where they are dropped (whole-history runs)
CONFLICT = 4  # a later copy of an event whose content differs from the first arrival's

# Where a line came from, in arrival order: input file, byte offset of its split, index in the split.
ARRIVAL: tuple[Column, ...] = (("file_index", "int32"), ("block_start", "int64"), ("idx", "int64"))
# Session columns travel next to event columns in one output; the prefix keeps names apart.
SESSION_PREFIX = "s_"
# A CONFLICT row's arrival key and message, apart from the events' columns (null on other rows).
CONFLICT_COLUMNS: tuple[Column, ...] = tuple(("c_" + name, kind) for name, kind in (*ARRIVAL, ("message", "string")))
# What the driver adds to each row of a date-range run, per machine: its newest timestamp in the
# whole input, and how many sessions it has in the lake before the range.
MACHINE_NEWEST = "m_newest"
SESSIONS_BEFORE = "m_sessions_before"
RANGE_COLUMNS: tuple[Column, ...] = ((MACHINE_NEWEST, "int64"), (SESSIONS_BEFORE, "int64"))
# Columns that say where an event came from or are derived from another: not its content.
_NOT_CONTENT = frozenset({*(name for name, _ in ARRIVAL), "event_date", MACHINE_NEWEST, SESSIONS_BEFORE})


def refined_event_columns(config: Config) -> tuple[Column, ...]:
    """What a refined event carries across the shuffle: the events table before sessionization."""
    derived = {"event_time", "session_id", "session_seq", "ms_since_prev", "late", "arrived_late"}
    return (*(c for c in event_columns(config) if c[0] not in derived), ("event_date", "string"))


def refine_columns(config: Config) -> tuple[Column, ...]:
    return (
        ("kind", "int8"),
        *ARRIVAL,
        *refined_event_columns(config),
        ("reason", "string"),
        ("message", "string"),
        ("raw", "binary"),
        ("blank", "int64"),
    )


def sessionized_event_columns(config: Config) -> tuple[Column, ...]:
    """The events table minus ``event_time`` (built by Spark from ``timestamp``) plus its partition."""
    return (*(c for c in event_columns(config) if c[0] != "event_time"), ("event_date", "string"))


def sessionized_session_columns() -> tuple[Column, ...]:
    timestamps = {"session_start", "session_end"}
    columns = (*(c for c in SESSION_COLUMNS if c[0] not in timestamps), ("session_date", "string"))
    return tuple((SESSION_PREFIX + name, kind) for name, kind in columns)


def sessionize_columns(config: Config) -> tuple[Column, ...]:
    return (
        ("kind", "int8"),
        *sessionized_event_columns(config),
        *sessionized_session_columns(),
        ("duplicates", "int64"),  # DUPLICATES rows only: the ledger's duplicates, counted, not derived
        *CONFLICT_COLUMNS,
    )


# -- stage 1: raw lines -> refined events, rejections, split sizes ------------------------------------


def refine_batches(
    batches: Iterator[pa.RecordBatch], *, config: Config, now_ms: int, file_index: dict[str, int]
) -> Iterator[pa.RecordBatch]:
    """Input batches hold ``raw`` (binary), ``file_path`` and ``block_start``, in file order per split.

    ``file_index`` maps a normalised file path (see :func:`path_key`) to the file's position in the
    input list, which is the arrival order of files.
    """
    refine_line = LineRefiner(config).refine_line
    schema = arrow_schema(refine_columns(config))
    names = schema.names
    # Per split: (lines seen, blank lines seen). A split is read front to back by one task.
    splits: dict[tuple[int, int], list[int]] = {}
    indexes: dict[str, int] = {}
    for batch in batches:
        rows: list[dict[str, Any]] = []
        raws = batch.column("raw").to_pylist()
        paths = batch.column("file_path").to_pylist()
        starts = batch.column("block_start").to_pylist()
        for raw, path, block_start in zip(raws, paths, starts, strict=True):
            index = indexes.get(path)
            if index is None:
                index = indexes[path] = file_index[path_key(path, encoded=True)]
            counter = splits.get((index, block_start))
            if counter is None:
                counter = splits[(index, block_start)] = [0, 0]
            idx = counter[0]
            counter[0] += 1
            result = refine_line(raw, now_ms)
            if result is None:
                counter[1] += 1
            elif type(result) is dict:
                result["kind"] = EVENT
                result["file_index"] = index
                result["block_start"] = block_start
                result["idx"] = idx
                rows.append(result)
            else:
                assert isinstance(result, Rejection)
                rows.append(
                    {
                        "kind": REJECTION,
                        "file_index": index,
                        "block_start": block_start,
                        "idx": idx,
                        "reason": result.reason.value,
                        "message": result.message,
                        "raw": result.raw,  # as it arrived, less the line end
                    }
                )
        if rows:
            yield _batch(rows, schema, names)
    if splits:
        rows = [
            {"kind": SPLIT, "file_index": index, "block_start": start, "idx": lines, "blank": blank}
            for (index, start), (lines, blank) in splits.items()
        ]
        yield _batch(rows, schema, names)


def path_key(path: str, *, encoded: bool = False) -> str:
    """One spelling for a file's URI, from Hadoop's listing (``encoded=False``: ``Path.toString()``
    is decoded) or from Spark's ``_metadata.file_path`` (``encoded=True``: %-encoded)."""
    from urllib.parse import unquote

    if encoded:
        path = unquote(path)
    if path.startswith("file:"):
        return "file:/" + path[5:].lstrip("/")
    return path


def _batch(rows: list[dict[str, Any]], schema: pa.Schema, names: list[str]) -> pa.RecordBatch:
    arrays = [pa.array([row.get(name) for row in rows], fld.type) for name, fld in zip(names, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# -- stage 2: one machine's events -> sessionized events and session summaries ---------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """A date-range backfill: write ``[lo, hi)``, having read the machine's events in ``[read_lo, read_hi)``.

    ``read_lo``/``read_hi`` of None mean the machine's whole history was read.
    """

    lo: int
    hi: int
    read_lo: int | None
    read_hi: int | None


def sessionize_partition(
    batches: Iterator[pa.RecordBatch], *, config: Config, window: Window | None = None, clock: int = -1
) -> Iterator[pa.RecordBatch]:
    """Rows clustered by machine_id (each machine's rows together, in any order) -> sessionized rows.

    The driver hash-partitions by machine_id and sorts within partitions, so one machine's events
    arrive together, possibly across several batches; one machine is held in memory at a time.
    """
    schema = arrow_schema(sessionize_columns(config))
    names = schema.names
    current: str | None = None
    events: list[dict[str, Any]] = []
    ready: list[dict[str, Any]] = []
    for batch in batches:
        for event in batch.to_pylist():
            machine_id = event["machine_id"]
            if machine_id != current:
                if events:
                    ready.extend(sessionize_machine(events, config=config, window=window, clock=clock))
                current, events = machine_id, []
            events.append(event)
        if len(ready) >= _OUTPUT_BATCH_ROWS:
            yield _batch(ready, schema, names)
            ready = []
    if events:
        ready.extend(sessionize_machine(events, config=config, window=window, clock=clock))
    if ready:
        yield _batch(ready, schema, names)


_OUTPUT_BATCH_ROWS = 10_000


def sessionize_machine(
    events: list[dict[str, Any]], *, config: Config, window: Window | None = None, clock: int = -1
) -> list[dict[str, Any]]:
    """All of one machine's refined events (any order) -> its events and sessions, as the core decides.

    Output rows carry ``kind``: EVENT rows have the events table's columns, SESSION rows the sessions
    table's (prefixed), and a single UNRESOLVED row means ``window`` did not settle this machine. A
    whole-history run adds one DUPLICATES row for a machine whose identical copies it dropped, with
    their number, and a CONFLICT row per copy of other content (a range run writes no rejections:
    its conflicting copies are among the copies it drops).

    ``clock``: the stream clock at the end of the whole input, what the sessions still open at the
    end are closed against. A range run's rows carry ``RANGE_COLUMNS``: a machine with events after
    what was read has a next event for its last session (its newest timestamp stands in for the
    clock when later), and its sessions are numbered on from its sessions before the range.
    """
    if not events:
        return []
    unique, conflicts = _first_arrivals(events)
    flags = rules.arrival_flags([e["machine_id"] for e in unique], [e["timestamp"] for e in unique], {})
    for event, flag in zip(unique, flags, strict=True):
        event["arrived_late"] = flag
    unique.sort(key=lambda e: (e["timestamp"], e["event_id"]))
    newest = unique[0].get(MACHINE_NEWEST)
    end = clock if newest is None else max(clock, newest)
    start = 0
    machine_id = unique[0]["machine_id"]
    if window is not None:
        timestamps = [e["timestamp"] for e in unique]
        first_in = bisect.bisect_left(timestamps, window.lo)
        if first_in == bisect.bisect_left(timestamps, window.hi):
            return []  # nothing of this machine in the range
        found = _last_certain_start(unique, first_in, config.session, window.read_lo)
        if found is None:
            return [{"kind": UNRESOLVED, "machine_id": machine_id}]
        start = found
    out = Outputs()
    sessionizer = Sessionizer(config.session)
    sessionizer.process(unique[start:], out)
    sessionizer.flush(out, end)
    sessions = out.sessions
    released = out.events
    if window is not None:
        later = newest is not None and window.read_hi is not None and newest >= window.read_hi
        if not _range_sessions_complete(sessions, window, config.session, later):
            return [{"kind": UNRESOLVED, "machine_id": machine_id}]
        released = [e for e in released if window.lo <= e["timestamp"] < window.hi]
        before = sum(1 for s in sessions if s["start_ts"] < window.lo)
        sessions = [s for s in sessions if window.lo <= s["start_ts"] < window.hi]
        # Numbered on from the lake's sessions before the range, which the run leaves as they are.
        shift = int(unique[0].get(SESSIONS_BEFORE) or 0) - before
        for summary in sessions:
            summary["session_number"] += shift
    rows: list[dict[str, Any]] = []
    for event in released:
        event["kind"] = EVENT
        rows.append(event)
    for summary in sessions:
        row = {SESSION_PREFIX + key: value for key, value in summary.items()}
        row["kind"] = SESSION
        row[SESSION_PREFIX + "event_type_counts"] = list(summary["event_type_counts"].items())
        rows.append(row)
    dropped = len(events) - len(unique) - len(conflicts) + len(out.duplicates)
    if window is None and dropped:
        rows.append({"kind": DUPLICATES, "machine_id": machine_id, "duplicates": dropped})
    if window is None:
        rows.extend(_conflict_row(copy, fields) for copy, fields in conflicts)
    return rows


def _conflict_row(copy: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    # The embedded runner's message, so both lakes say the same.
    message = conflict_message(copy["machine_id"], copy["event_id"], fields)
    row = {"kind": CONFLICT, "machine_id": copy["machine_id"], "event_id": copy["event_id"], "c_message": message}
    row.update({"c_" + name: copy[name] for name, _ in ARRIVAL})
    return row


def _first_arrivals(
    events: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], list[str]]]]:
    """The core's dedupe (``rules.is_duplicate``, first arrival wins), in arrival order: (the first
    arrivals, the later copies whose content differs from the first arrival's, with those fields).

    Arrival order is input file order, then position in the file. The horizon is the machine's
    whole history: a backfill has read all of it, so it never needs to forget an id (the runner
    does, to bound its memory; docs/backfill.md, "Dedupe has no horizon").
    """
    events.sort(key=lambda e: (e["file_index"], e["block_start"], e["idx"]))
    timestamps = [e["timestamp"] for e in events]
    whole_history = max(timestamps) - min(timestamps)
    seen: dict[str, dict[str, Any]] = {}
    newest = min(timestamps)
    unique = []
    conflicts = []
    for event in events:
        event_id, ts = event["event_id"], event["timestamp"]
        twin = seen.get(event_id)
        if twin is not None and rules.is_duplicate(twin["timestamp"], newest, whole_history):
            differing = [name for name in event if name not in _NOT_CONTENT and event[name] != twin[name]]
            if "timestamp" in differing:
                # The runner's events carry event_time (Spark derives it when writing): name it alike.
                differing.insert(differing.index("timestamp") + 1, "event_time")
            if differing:
                conflicts.append((event, differing))
            continue
        seen[event_id] = event
        newest = max(newest, ts)
        unique.append(event)
    return unique, conflicts


def _last_certain_start(
    events: list[dict[str, Any]], first_in: int, config: SessionConfig, read_lo: int | None
) -> int | None:
    """The last event at or before ``events[first_in]`` that starts a session whatever came before it.

    The core's ``rules.certain_start`` (an opening event, or a gap over ``timeout``) with the gap to
    the event before; for the first event read, the gap to the latest event that was not read. When
    the whole history was read, the first event starts a session. ``max_session_duration`` never
    makes a start certain: where it cuts depends on where the session began, so it is followed from
    a certain start like everything else.
    """
    opening = config.opening_events
    timeout = config.timeout_ms
    for i in range(first_in, -1, -1):
        event = events[i]
        if i > 0:
            gap = event["timestamp"] - events[i - 1]["timestamp"]
        elif read_lo is None:
            return 0  # the whole history was read: nothing precedes the first event
        else:
            # An event not read is at ``read_lo - 1`` at the latest: the smallest gap it could leave.
            gap = event["timestamp"] - (read_lo - 1)
        if rules.certain_start(gap, event["event_type"], opening, timeout):
            return i
    return None


def _range_sessions_complete(
    sessions: list[dict[str, Any]], window: Window, config: SessionConfig, later: bool = False
) -> bool:
    """Are the summaries of the sessions starting before ``window.hi`` final?

    The last one is final if a later session started inside what was read, or if no event after
    what was read could still join it (``rules.gap_splits`` or ``rules.duration_splits`` already
    at the earliest such event). ``later``: the machine has events after what was read; then its
    next one says why the last session ended, which only a gap over the timeout settles unread.
    """
    last_in = None
    for position, summary in enumerate(sessions):
        if summary["start_ts"] < window.hi:
            last_in = position
    if last_in is None or last_in < len(sessions) - 1 or window.read_hi is None:
        return True
    last = sessions[last_in]
    # An event not read is at ``read_hi`` at the earliest: the smallest gap and span it could make.
    if rules.gap_splits(window.read_hi - last["end_ts"], config.timeout_ms):
        return True
    if later:
        return False
    limit = config.max_session_duration_ms
    return rules.duration_splits(window.read_hi - last["start_ts"], rules.NO_LIMIT if limit is None else limit)


# -- the bytes of conflicting copies, from the raw lines read again ---------------------------------------


def wanted_lines(
    batches: Iterator[pa.RecordBatch], *, file_index: dict[str, int], wanted: dict[int, set[tuple[int, int]]]
) -> Iterator[pa.RecordBatch]:
    """The raw lines :func:`refine_batches` read, numbered as it numbers them: those whose
    (file_index, block_start, idx) ``wanted`` lists (file_index -> {(block_start, idx)})."""
    schema = pa.schema(
        [pa.field(name, pa.int32() if kind == "int32" else pa.int64()) for name, kind in ARRIVAL]
        + [pa.field("raw", pa.binary())]
    )
    counters: dict[tuple[int, int], int] = {}
    indexes: dict[str, int] = {}
    for batch in batches:
        found: list[tuple[int, int, int, bytes]] = []
        paths = batch.column("file_path").to_pylist()
        starts = batch.column("block_start").to_pylist()
        raws = batch.column("raw")
        for row, (path, block_start) in enumerate(zip(paths, starts, strict=True)):
            index = indexes.get(path)
            if index is None:
                index = indexes[path] = file_index[path_key(path, encoded=True)]
            idx = counters.get((index, block_start), 0)
            counters[(index, block_start)] = idx + 1
            keys = wanted.get(index)
            if keys is not None and (block_start, idx) in keys:
                found.append((index, block_start, idx, raws[row].as_py()))
        if found:
            columns = list(zip(*found, strict=True))
            yield pa.RecordBatch.from_arrays(
                [pa.array(values, fld.type) for values, fld in zip(columns, schema, strict=True)], schema=schema
            )


# -- stage 3: rejections -> the JSON lines of the rejected table ------------------------------------------


def rejection_lines(batches: Iterator[pa.RecordBatch], *, sources: list[str]) -> Iterator[pa.RecordBatch]:
    """Rows of reason, message, raw, file_index, line -> (reason, JSON line) via the core's ``rejection_row``."""
    schema = pa.schema([pa.field("reason", pa.string()), pa.field("value", pa.string())])
    for batch in batches:
        reasons = batch.column("reason").to_pylist()
        messages = batch.column("message").to_pylist()
        raws = batch.column("raw").to_pylist()
        files = batch.column("file_index").to_pylist()
        lines = batch.column("line").to_pylist()
        values = []
        for reason, message, raw, file, line in zip(reasons, messages, raws, files, lines, strict=True):
            row = rejection_row(Rejection(Reason(reason), message, raw), sources[file], line)
            values.append(orjson.dumps(row).decode())
        yield pa.RecordBatch.from_arrays([pa.array(reasons, pa.string()), pa.array(values, pa.string())], schema=schema)
