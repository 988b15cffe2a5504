"""The Parquet writer of a run: Hive-partitioned events and sessions, JSON-lines rejections, in staging.

A run writes every file into its staging folder (see :mod:`sessionflow.lake.commit`): nothing is in
the lake until the run commits, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from itertools import accumulate, chain
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from sessionflow.config import Config
from sessionflow.lake.durable import fsync_file
from sessionflow.lake.layout import staging_name, staging_root
from sessionflow.runtimes.arrow import TIMESTAMP_SOURCES, arrow_schema
from sessionflow.schema import (
    EVENT_PARTITION,
    REJECTED_PARTITION,
    RESTATEMENTS,
    SESSION_COLUMNS,
    SESSION_PARTITION,
    event_columns,
)

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("writing a lake needs pyarrow: pip install 'sessionflow[local]'") from exc

_ROW_GROUP = 128 * 1024
_BUFFER_ROWS = 512 * 1024  # rows held in memory over all partitions before writing
# ... or this many bytes of Arrow data, whichever comes first: a table of few but wide rows (the
# sessions, with their map column) would otherwise stay in memory for millions of input events.
_BUFFER_BYTES = 32 << 20
_PART_BUFFER_BYTES = 8 << 20
_JSONL_BUFFER = 256 << 10
# Columns whose values (nearly) never repeat get no dictionary encoding: Parquet writers build the
# dictionary and then drop it. 1M events: 15% less CPU to write, files 10% smaller (bench/README.md).
_UNIQUE_EVENT_VALUES = frozenset({"event_id", "extra", "timestamp", "event_time", "ms_since_prev"})
_UNIQUE_SESSION_VALUES = frozenset({"session_id", "start_ts", "end_ts", "session_start", "session_end", "duration_ms"})
# Files open at once per table: an input spanning months must not keep one writer per day open.
_MAX_OPEN_FILES = 16
# ... but a writer of spans keeps each span's file open while rows may come (an incremental run's
# buckets and the rows it carries over all write to the spans it touches).
_MAX_OPEN_SPANS = 256


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


def sessions_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Session summaries as dicts (the pure sessionizer's) -> the sessions table plus its partition column."""
    table = _table(rows, arrow_schema(SESSION_COLUMNS))
    return table.append_column(SESSION_PARTITION, pa.array([row[SESSION_PARTITION] for row in rows], pa.string()))


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
        span: tuple[str, int] | None = None,
    ) -> None:
        """``unique``: columns written without dictionary encoding. ``span``: (a time column in epoch
        ms, a length in ms): a file holds rows of one such span of time only (an incremental run's
        files, so that restating a session rewrites only the files of the time it touches)."""
        self.root = root
        self.span = span
        self.max_open = _MAX_OPEN_FILES if span is None else _MAX_OPEN_SPANS
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
        self.buffer_bytes = _BUFFER_BYTES
        # By (partition value, span number or None), least recently written first: the one closed
        # when too many are open.
        self.writers: dict[tuple[str, int | None], tuple[pq.ParquetWriter, int]] = {}
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
        if self.pending_rows >= _BUFFER_ROWS or self.pending_bytes >= self.buffer_bytes:
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
        groups: dict[tuple[str, int | None], list[pa.Table]] = defaultdict(list)
        for value, table, keep in pending:
            if value is not None:  # from add(): one partition already, nothing to drop
                self._group(groups, value, table)
                continue
            if keep is not None:
                table = table.filter(keep)
            values = table.column(self.partition)
            data = table.drop_columns([self.partition]).select(self.schema.names)
            unique = pc.unique(values).to_pylist()
            if len(unique) == 1:
                self._group(groups, unique[0], data)
                continue
            for one in unique:
                self._group(groups, one, data.filter(pc.equal(values, one)))
        for key, tables in groups.items():
            self._write(key, pa.concat_tables(tables).cast(self.schema))

    def _group(self, groups: dict[tuple[str, int | None], list[pa.Table]], value: str, table: pa.Table) -> None:
        """``table``'s rows (of one partition value) by the span of time each falls in."""
        if self.span is None or table.num_rows == 0:
            groups[value, None].append(table)
            return
        column, length = self.span
        spans = pc.divide(table.column(column), length)  # integers: floor division for times >= 0
        unique = pc.unique(spans).to_pylist()
        if len(unique) == 1:
            groups[value, unique[0]].append(table)
            return
        for one in unique:
            groups[value, one].append(table.filter(pc.equal(spans, one)))

    def _write(self, key: tuple[str, int | None], table: pa.Table) -> None:
        while table.num_rows:
            current = self.writers.pop(key, None)
            if current is None and len(self.writers) >= self.max_open:
                oldest = next(iter(self.writers))
                _close(self.writers.pop(oldest)[0])
            writer, written = current or (self._open(key[0]), 0)
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
                self.writers[key] = (writer, written)

    def _open(self, value: str) -> pq.ParquetWriter:
        folder = self.root / f"{self.partition}={value}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{self.prefix}-{self.sequence:05d}.parquet"
        self.sequence += 1
        self.files.append(path)
        # Opened here, not by pyarrow: a writer that fails to start (a full disk, writing the magic
        # bytes) leaves its file open in a half-made object until a garbage collection, the disk full.
        sink = pa.OSFile(str(path), "wb")
        try:
            writer = pq.ParquetWriter(sink, self.schema, compression=self.compression, use_dictionary=self.dictionary)
        except BaseException:
            sink.close()
            raise
        writer.file_handle = sink  # closed with the writer, as when pyarrow opens the path itself
        return writer

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
    """Writes one run's files into staging; :func:`sessionflow.lake.commit.commit_run` publishes them at once."""

    def __init__(self, lake: Path, config: Config, run: int, *, part: int = 0, span_ms: int | None = None) -> None:
        """``part``: a writer of its own for one part of a run (the run's buckets, written in worker
        processes into the same staging folder): its files are numbered from ``part << 16`` (file
        names need only be unique within a run), and it leaves the staging folder as it is.
        ``span_ms``: an event file holds events of one such span of ``timestamp`` only, a session
        file sessions of one span of ``start_ts`` (incremental runs: ``output.file_span``)."""
        self.lake = lake
        self.run = run
        self.staging = staging_root(lake) / staging_name(run)
        if self.staging.exists() and not part:
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
            None if span_ms is None else ("timestamp", span_ms),
        )
        self.sessions = _PartitionedParquet(
            self.staging / "sessions",
            SESSION_PARTITION,
            arrow_schema(SESSION_COLUMNS),
            prefix,
            config,
            self._executor,
            _UNIQUE_SESSION_VALUES,
            None if span_ms is None else ("start_ts", span_ms),
        )
        self.rejected = _PartitionedJsonLines(self.staging / "rejected", REJECTED_PARTITION, prefix)
        self.extra_files: list[Path] = []
        self.events.sequence = self.sessions.sequence = part << 16
        if part:
            # A part writer runs beside others, one per worker: it holds less before it writes.
            self.events.buffer_bytes = self.sessions.buffer_bytes = _PART_BUFFER_BYTES
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

    def add_restatements(self, log: pa.Table) -> None:
        """The run's restatement log (``sessionflow.lake.restatements``): one file, written now."""
        folder = self.staging / RESTATEMENTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{self.run:05d}-00000.parquet"
        pq.write_table(log, path, compression="zstd")
        self.extra_files.append(path)

    def close(self) -> list[Path]:
        """Finish every file; returns them, relative to the staging folder."""
        for table in (self.events, self.sessions, self.rejected):
            table.close()
        self._executor.shutdown()
        files = [*self.events.files, *self.sessions.files, *self.rejected.files, *self.extra_files]
        for path in files:
            fsync_file(path)
        return [path.relative_to(self.staging) for path in files]

    def abort_part(self) -> None:
        """A part writer's :meth:`abort`: its own files go, the run's staging folder stays."""
        staging = self.staging
        self.staging = staging / ".aborted-part"  # abort() removes only this, which never exists
        self.abort()
        for path in [*self.events.files, *self.sessions.files]:
            path.unlink(missing_ok=True)
        self.staging = staging

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
