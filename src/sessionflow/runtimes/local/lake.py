"""The Parquet lake: Hive-partitioned events and sessions, JSON-lines rejections.

Layout (DuckDB, Spark and Athena read it as it is)::

    DIR/events/event_date=YYYY-MM-DD/part-RRRRR-NNNNN.parquet
    DIR/sessions/session_date=YYYY-MM-DD/part-RRRRR-NNNNN.parquet
    DIR/rejected/reason=CODE/part-RRRRR-NNNNN.jsonl
    DIR/_sessionflow/                    ledgers, staging (readers skip names starting with _)

A run writes every file into its staging folder; the commit protocol below moves them into place
only when the run has finished, so a reader never sees a half-written file, and a run killed at any
moment leaves either nothing or a run that the next start finishes (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from itertools import accumulate, chain
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from sessionflow.config import Config
from sessionflow.runtimes.arrow import TIMESTAMP_SOURCES, arrow_schema
from sessionflow.schema import (
    EVENT_PARTITION,
    REJECTED_PARTITION,
    SESSION_COLUMNS,
    SESSION_PARTITION,
    event_columns,
)

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the embedded runner needs pyarrow: pip install 'sessionflow[local]'") from exc

META_DIR = "_sessionflow"
TABLES = ("events", "sessions", "rejected")
_ROW_GROUP = 128 * 1024
_BUFFER_ROWS = 512 * 1024  # rows held in memory over all partitions before writing
# ... or this many bytes of Arrow data, whichever comes first: a table of few but wide rows (the
# sessions, with their map column) would otherwise stay in memory for millions of input events.
_BUFFER_BYTES = 32 << 20
_JSONL_BUFFER = 256 << 10
# Columns whose values (nearly) never repeat get no dictionary encoding: Parquet writers build the
# dictionary and then drop it. 1M events: 15% less CPU to write, files 10% smaller (bench/README.md).
_UNIQUE_EVENT_VALUES = frozenset({"event_id", "extra", "timestamp", "event_time", "ms_since_prev"})
_UNIQUE_SESSION_VALUES = frozenset({"session_id", "start_ts", "end_ts", "session_start", "session_end", "duration_ms"})
# Files open at once per table: an input spanning months must not keep one writer per day open.
_MAX_OPEN_FILES = 16


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    sources = [TIMESTAMP_SOURCES.get(fld.name, fld.name) for fld in schema]
    # One pass over the rows, in C: each row dict is visited once, not once per column.
    if len(sources) > 1:
        columns: Iterable[Sequence[Any]] = zip(*map(itemgetter(*sources), rows), strict=True)
    else:  # itemgetter of one name gives the value itself, not a 1-tuple
        columns = [[row[sources[0]] for row in rows]]
    arrays = []
    for fld, column in zip(schema, columns, strict=True):
        if fld.name in TIMESTAMP_SOURCES:
            arrays.append(pa.array(column, pa.int64()).cast(fld.type))
        elif pa.types.is_map(fld.type):
            arrays.append(_map_array(column, fld.type))
        else:
            arrays.append(pa.array(column, fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _map_array(mappings: Sequence[dict[str, int]], map_type: pa.MapType) -> pa.MapArray:
    """Dicts -> a map array from flat keys and values: far cheaper than converting pairs."""
    offsets = [0, *accumulate(map(len, mappings))]
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(list(chain.from_iterable(mappings)), map_type.key_type),
        pa.array(list(chain.from_iterable(map(dict.values, mappings))), map_type.item_type),
        type=map_type,
    )


class _PartitionedParquet:
    """One table's open files, a file per partition value, rolled at ``rows_per_file``."""

    def __init__(
        self,
        root: Path,
        partition: str,
        schema: pa.Schema,
        prefix: str,
        config: Config,
        executor: Executor,
        unique: frozenset[str] = frozenset(),
    ) -> None:
        """``unique``: columns written without dictionary encoding."""
        self.root = root
        self.partition = partition
        self.schema = schema
        self.dictionary = [name for name in schema.names if name not in unique]
        self.prefix = prefix
        self.rows_per_file = config.output.rows_per_file
        self.compression = config.output.compression
        # (partition value or None: see add_table, table, rows to keep or None: all)
        self.pending: list[tuple[str | None, pa.Table, pa.Array | None]] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        # Least recently written first: the one closed when too many are open.
        self.writers: dict[str, tuple[pq.ParquetWriter, int]] = {}
        self.files: list[Path] = []
        self.sequence = 0
        self.rows = 0
        # Parquet encoding and compression run in C++ without the GIL: on a thread of their own they
        # overlap with the sessionizer, the embedded runner's critical path. One thread, shared by
        # the tables, keeps each table's writes in order.
        self._executor = executor
        self._in_flight: Future[None] | None = None

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Rows as dicts, each with its partition value."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[row[self.partition]].append(row)
        for value, group in groups.items():
            table = _table(group, self.schema)
            self._hold((value, table, None), table.num_rows)

    def add_table(self, table: pa.Table, keep: pa.Array | None = None) -> None:
        """An Arrow table with the schema's columns plus the partition column; ``keep`` masks the
        rows to write (None: all). Filtering and splitting by partition run on the writing thread:
        Arrow does them without the GIL, beside the sessionizer."""
        self._hold((None, table, keep), table.num_rows - (keep.false_count if keep is not None else 0))

    def _hold(self, item: tuple[str | None, pa.Table, pa.Array | None], rows: int) -> None:
        self.pending.append(item)
        self.pending_rows += item[1].num_rows
        self.pending_bytes += item[1].nbytes
        self.rows += rows
        if self.pending_rows >= _BUFFER_ROWS or self.pending_bytes >= _BUFFER_BYTES:
            self.write_pending()

    def write_pending(self) -> None:
        """Hand what is held to the writing thread; at most one batch of writes is in flight."""
        self.wait()
        pending, self.pending = self.pending, []
        self.pending_rows = 0
        self.pending_bytes = 0
        if pending:
            self._in_flight = self._executor.submit(self._write_all, pending)

    def wait(self) -> None:
        """Until the writes in flight are done; raises what they raised (a full disk, say)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _write_all(self, pending: list[tuple[str | None, pa.Table, pa.Array | None]]) -> None:
        groups: dict[str, list[pa.Table]] = defaultdict(list)
        for value, table, keep in pending:
            if value is not None:  # from add(): one partition already, nothing to drop
                groups[value].append(table)
                continue
            if keep is not None:
                table = table.filter(keep)
            values = table.column(self.partition)
            data = table.drop_columns([self.partition]).select(self.schema.names)
            unique = pc.unique(values).to_pylist()
            if len(unique) == 1:
                groups[unique[0]].append(data)
                continue
            for one in unique:
                groups[one].append(data.filter(pc.equal(values, one)))
        for value, tables in groups.items():
            self._write(value, pa.concat_tables(tables).cast(self.schema))

    def _write(self, value: str, table: pa.Table) -> None:
        while table.num_rows:
            current = self.writers.pop(value, None)
            if current is None and len(self.writers) >= _MAX_OPEN_FILES:
                oldest = next(iter(self.writers))
                _close(self.writers.pop(oldest)[0])
            writer, written = current or (self._open(value), 0)
            room = self.rows_per_file - written
            part = table.slice(0, room)
            try:
                writer.write_table(part, row_group_size=_ROW_GROUP)
            except BaseException:
                # Out of self.writers, abort() would not see it: closed here, or its file (deleted
                # by abort) stays open until a garbage collection, and a full disk stays full.
                with contextlib.suppress(Exception):
                    _close(writer)
                raise
            written += part.num_rows
            table = table.slice(part.num_rows)
            if written >= self.rows_per_file:
                _close(writer)
            else:
                self.writers[value] = (writer, written)

    def _open(self, value: str) -> pq.ParquetWriter:
        folder = self.root / f"{self.partition}={value}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{self.prefix}-{self.sequence:05d}.parquet"
        self.sequence += 1
        self.files.append(path)
        return pq.ParquetWriter(path, self.schema, compression=self.compression, use_dictionary=self.dictionary)

    def close(self) -> None:
        self.write_pending()
        self.wait()
        for writer, _ in self.writers.values():
            _close(writer)
        self.writers.clear()


def _close(writer: pq.ParquetWriter) -> None:
    """Finish a Parquet file, and close it even when finishing fails (a full disk): pyarrow's own
    close then leaves the file open."""
    try:
        writer.close()
    finally:
        if writer.file_handle is not None and not writer.file_handle.closed:
            with contextlib.suppress(Exception):
                writer.file_handle.close()


class _PartitionedJsonLines:
    def __init__(self, root: Path, partition: str, prefix: str) -> None:
        self.root = root
        self.partition = partition
        self.prefix = prefix
        self.handles: dict[str, IO[bytes]] = {}
        self.files: list[Path] = []
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            value = row[self.partition]
            handle = self.handles.get(value)
            if handle is None:
                folder = self.root / f"{self.partition}={value}"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"part-{self.prefix}-00000.jsonl"
                self.files.append(path)
                # A big buffer: each flush is a write that lets go of the GIL, and the runner's
                # other threads then hold it for up to a switch interval (5 ms) each time.
                handle = self.handles[value] = open(path, "wb", buffering=_JSONL_BUFFER)  # noqa: SIM115
            handle.write(orjson.dumps(row) + b"\n")
        self.rows += len(rows)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


class LakeWriter:
    """Writes one run's files into staging; :meth:`commit` publishes them all at once."""

    def __init__(self, lake: Path, config: Config, run: int) -> None:
        self.lake = lake
        self.run = run
        self.staging = lake / META_DIR / "staging" / f"run-{run:05d}"
        if self.staging.exists():
            shutil.rmtree(self.staging)  # an earlier attempt of this run that never committed
        prefix = f"{run:05d}"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sessionflow-parquet")
        self.events = _PartitionedParquet(
            self.staging / "events",
            EVENT_PARTITION,
            arrow_schema(event_columns(config)),
            prefix,
            config,
            self._executor,
            _UNIQUE_EVENT_VALUES,
        )
        self.sessions = _PartitionedParquet(
            self.staging / "sessions",
            SESSION_PARTITION,
            arrow_schema(SESSION_COLUMNS),
            prefix,
            config,
            self._executor,
            _UNIQUE_SESSION_VALUES,
        )
        self.rejected = _PartitionedJsonLines(self.staging / "rejected", REJECTED_PARTITION, prefix)
        self.staging.mkdir(parents=True, exist_ok=True)

    def write(
        self, events: list[dict[str, Any]], sessions: list[dict[str, Any]], rejections: list[dict[str, Any]]
    ) -> None:
        if events:
            self.events.add(events)
        if sessions:
            self.sessions.add(sessions)
        if rejections:
            self.rejected.add(rejections)

    def close(self) -> list[Path]:
        """Finish every file; returns them, relative to the staging folder."""
        for table in (self.events, self.sessions, self.rejected):
            table.close()
        self._executor.shutdown()
        files = [*self.events.files, *self.sessions.files, *self.rejected.files]
        for path in files:
            _fsync(path)
        return [path.relative_to(self.staging) for path in files]

    def abort(self) -> None:
        """Drop the staged files. Never raises: it runs while another error is on its way out."""
        for table in (self.events, self.sessions):
            with contextlib.suppress(Exception):  # the error on its way out may be this one
                table.wait()
        self._executor.shutdown(wait=False, cancel_futures=True)
        for table in (self.events, self.sessions):
            for writer, _ in table.writers.values():
                with contextlib.suppress(Exception):  # a full disk fails the close too; the files go anyway
                    _close(writer)
        for handle in self.rejected.handles.values():
            with contextlib.suppress(Exception):
                handle.close()
        self.events.writers.clear()
        self.sessions.writers.clear()
        self.rejected.handles.clear()
        shutil.rmtree(self.staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lake_exists(lake: Path) -> bool:
    return any((lake / table).exists() for table in TABLES)


# -- the commit protocol --------------------------------------------------------------------------
#
# 1. A run writes its files, and the state it will leave, into staging/run-N (fsynced).
# 2. Commit point: staging/run-N/COMMIT.json (files, ledger, where the state goes) appears by an
#    atomic rename. Before it, the run never happened; after it, the run has happened.
# 3. Roll forward (idempotent, so it may be interrupted and redone any number of times): with
#    ``replace``, remove what the lake held before; move each staged file into place; write the
#    state; write the ledger; drop COMMIT.json; remove the staging folder.
# 4. Every start recovers first: a staging folder with COMMIT.json is rolled forward, one without
#    is deleted.

MANIFEST = "COMMIT.json"
STAGED_STATE = "state.json"
MANIFEST_FORMAT = 1
CRASH_ENV = "SESSIONFLOW_CRASH_AT"  # tests only: "<step>" or "<step>:<nth>", see crash_point
_crash_counts: Counter[str] = Counter()


def crash_point(step: str) -> None:
    """Kill this process (SIGKILL, no cleanup) at a named step when $SESSIONFLOW_CRASH_AT asks.

    Only the fault-injection tests set the variable; it costs one environment lookup otherwise.
    """
    target = os.environ.get(CRASH_ENV)
    if not target:
        return
    name, _, nth = target.partition(":")
    if name != step:
        return
    _crash_counts[step] += 1
    if _crash_counts[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def staging_root(lake: Path) -> Path:
    return lake / META_DIR / "staging"


def ledger_dir(lake: Path) -> Path:
    return lake / META_DIR / "ledger"


def ledger_path(lake: Path, run: int) -> Path:
    return ledger_dir(lake) / f"run-{run:05d}.json"


def write_atomically(path: Path, payload: bytes) -> None:
    """Write to a temporary name, fsync, then rename: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def stage_state(staging: Path, payload: bytes) -> None:
    with open(staging / STAGED_STATE, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def commit_run(
    staging: Path,
    *,
    run: int,
    files: list[Path],
    ledger: dict[str, Any],
    state_path: Path | None,
    replace: bool,
) -> None:
    """The commit point: COMMIT.json appears atomically in the staging folder."""
    crash_point("staged")
    manifest = {
        "format": MANIFEST_FORMAT,
        "run": run,
        "replace": replace,
        "files": [path.as_posix() for path in files],
        "state": str(state_path.resolve()) if state_path is not None else None,
        "ledger": ledger,
    }
    write_atomically(staging / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    crash_point("committed")


def roll_forward(lake: Path, staging: Path) -> int:
    """Publish a committed run from its staging folder; safe to repeat after any interruption."""
    manifest = orjson.loads((staging / MANIFEST).read_bytes())
    run = int(manifest["run"])
    files = [Path(name) for name in manifest["files"]]
    if manifest["replace"]:
        _remove_all_but(lake, {path.as_posix() for path in files}, keep_ledger=run)
        crash_point("replaced")
    folders: set[Path] = set()
    for relative in files:
        staged = staging / relative
        final = lake / relative
        if staged.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            folders.add(final.parent)
            crash_point("moved")
    for folder in folders:
        _fsync_dir(folder)
    state = staging / STAGED_STATE
    if manifest["state"] is not None and state.exists():
        write_atomically(Path(manifest["state"]), state.read_bytes())
        crash_point("state")
    write_atomically(ledger_path(lake, run), orjson.dumps(manifest["ledger"], option=orjson.OPT_INDENT_2))
    crash_point("ledger")
    # Without its manifest the folder is an uncommitted leftover: whatever happens next, it goes.
    (staging / MANIFEST).unlink()
    _fsync_dir(staging)
    shutil.rmtree(staging, ignore_errors=True)
    crash_point("cleaned")
    return run


def recover(lake: Path) -> list[int]:
    """Finish what killed runs left: roll committed runs forward, delete uncommitted ones.

    Returns the runs rolled forward. Call with the lake lock held.
    """
    root = staging_root(lake)
    finished: list[int] = []
    if root.is_dir():
        for staging in sorted(root.iterdir()):
            if (staging / MANIFEST).is_file():
                finished.append(roll_forward(lake, staging))
            elif staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
    ledgers = ledger_dir(lake)
    if ledgers.is_dir():
        for leftover in ledgers.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
    return finished


def pending_commits(lake: Path) -> list[Path]:
    """Staging folders of committed runs not yet rolled forward (read-only)."""
    root = staging_root(lake)
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []


def _remove_all_but(lake: Path, keep: set[str], keep_ledger: int) -> None:
    """Before a replacing run is published: remove every file of the lake it does not bring."""
    for table in TABLES:
        root = lake / table
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), reverse=True):
            relative = path.relative_to(lake).as_posix()
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            elif relative not in keep:
                path.unlink()
    ledgers = ledger_dir(lake)
    if ledgers.is_dir():
        for ledger in ledgers.glob("run-*.json"):
            if ledger.name != ledger_path(lake, keep_ledger).name:
                ledger.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a power cut, not only a kill)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
