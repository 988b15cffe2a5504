"""The Parquet lake: Hive-partitioned events and sessions, JSON-lines rejections.

Layout (DuckDB, Spark and Athena read it as it is)::

    DIR/events/event_date=YYYY-MM-DD/part-RRRRR-NNNNN.parquet
    DIR/sessions/session_date=YYYY-MM-DD/part-RRRRR-NNNNN.parquet
    DIR/rejected/reason=CODE/part-RRRRR-NNNNN.jsonl
    DIR/_sessionflow/                    ledgers, staging (readers skip names starting with _)

A run writes every file into its staging folder; :meth:`LakeWriter.commit` moves them into place
only when the run has finished, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from sessionflow.config import Config
from sessionflow.schema import (
    EVENT_PARTITION,
    REJECTED_PARTITION,
    SESSION_COLUMNS,
    SESSION_PARTITION,
    Column,
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


def arrow_type(logical: str) -> pa.DataType:
    if logical == "timestamp_ms":
        return pa.timestamp("ms", tz="UTC")
    if logical.startswith("map<"):
        return pa.map_(pa.string(), pa.int64())
    return {
        "string": pa.string(),
        "int64": pa.int64(),
        "int32": pa.int32(),
        "int8": pa.int8(),
        "bool": pa.bool_(),
        "float64": pa.float64(),
    }[logical]


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(name, arrow_type(kind)) for name, kind in columns])


# Timestamp columns are the same instant as an epoch-ms column the core already holds.
_TIMESTAMP_SOURCES = {"event_time": "timestamp", "session_start": "start_ts", "session_end": "end_ts"}


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    arrays = []
    for fld in schema:
        source = _TIMESTAMP_SOURCES.get(fld.name)
        if source is not None:
            epoch = pa.array([row[source] for row in rows], pa.int64())
            arrays.append(epoch.cast(fld.type))
        elif pa.types.is_map(fld.type):
            arrays.append(pa.array([list(row[fld.name].items()) for row in rows], fld.type))
        else:
            arrays.append(pa.array([row[fld.name] for row in rows], fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class _PartitionedParquet:
    """One table's open files, a file per partition value, rolled at ``rows_per_file``."""

    def __init__(self, root: Path, partition: str, schema: pa.Schema, prefix: str, config: Config) -> None:
        self.root = root
        self.partition = partition
        self.schema = schema
        self.prefix = prefix
        self.rows_per_file = config.output.rows_per_file
        self.compression = config.output.compression
        self.pending: dict[str, list[pa.Table]] = defaultdict(list)
        self.pending_rows = 0
        self.writers: dict[str, tuple[pq.ParquetWriter, int]] = {}
        self.files: list[Path] = []
        self.sequence = 0
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Rows as dicts, each with its partition value."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[row[self.partition]].append(row)
        for value, group in groups.items():
            self._hold(value, _table(group, self.schema))

    def add_table(self, table: pa.Table) -> None:
        """An Arrow table with the schema's columns plus the partition column."""
        values = table.column(self.partition)
        unique = pc.unique(values).to_pylist()
        data = table.drop_columns([self.partition]).select(self.schema.names)
        if len(unique) == 1:
            self._hold(unique[0], data)
            return
        for value in unique:
            self._hold(value, data.filter(pc.equal(values, value)))

    def _hold(self, value: str, table: pa.Table) -> None:
        self.pending[value].append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= _BUFFER_ROWS:
            self.write_pending()

    def write_pending(self) -> None:
        for value, tables in self.pending.items():
            self._write(value, pa.concat_tables(tables).cast(self.schema))
        self.pending.clear()
        self.pending_rows = 0

    def _write(self, value: str, table: pa.Table) -> None:
        while table.num_rows:
            writer, written = self.writers.get(value) or (self._open(value), 0)
            room = self.rows_per_file - written
            part = table.slice(0, room)
            writer.write_table(part, row_group_size=_ROW_GROUP)
            written += part.num_rows
            table = table.slice(part.num_rows)
            if written >= self.rows_per_file:
                writer.close()
                del self.writers[value]
            else:
                self.writers[value] = (writer, written)

    def _open(self, value: str) -> pq.ParquetWriter:
        folder = self.root / f"{self.partition}={value}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{self.prefix}-{self.sequence:05d}.parquet"
        self.sequence += 1
        self.files.append(path)
        return pq.ParquetWriter(path, self.schema, compression=self.compression)

    def close(self) -> None:
        self.write_pending()
        for writer, _ in self.writers.values():
            writer.close()
        self.writers.clear()


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
                handle = self.handles[value] = open(path, "wb")  # noqa: SIM115
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
        self.events = _PartitionedParquet(
            self.staging / "events", EVENT_PARTITION, arrow_schema(event_columns(config)), prefix, config
        )
        self.sessions = _PartitionedParquet(
            self.staging / "sessions", SESSION_PARTITION, arrow_schema(SESSION_COLUMNS), prefix, config
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
        files = [*self.events.files, *self.sessions.files, *self.rejected.files]
        for path in files:
            _fsync(path)
        return [path.relative_to(self.staging) for path in files]

    def commit(self, files: list[Path]) -> None:
        """Move the staged files into the lake. Idempotent: a file already moved is skipped."""
        for relative in files:
            staged = self.staging / relative
            final = self.lake / relative
            if staged.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        for table in (self.events, self.sessions):
            for writer, _ in table.writers.values():
                writer.close()
        self.rejected.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lake_exists(lake: Path) -> bool:
    return any((lake / table).exists() for table in TABLES)
