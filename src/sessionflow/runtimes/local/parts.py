"""Rows handed from one process of a run to another: Arrow files per bucket, in the spill folder.

An incremental run reads the lake once in its own process and gives each bucket's worker the rows
of its machines (:mod:`.incremental`); a worker gives back what to write. The files are mapped
when read: their pages are the page cache's, not a process's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sessionflow.runtimes.local.restate import per_machine
from sessionflow.runtimes.local.spill import read_bucket

_OPEN_FILES = 64


class PartFiles:
    """Tables written into Arrow files per bucket; a bucket may get several files."""

    def __init__(self, folder: str, prefix: str) -> None:
        self.folder = folder
        self.prefix = prefix
        self.files: dict[int, list[str]] = {}
        self._open: dict[int, tuple[pa.OSFile, Any]] = {}  # least recently written first
        self._schema: pa.Schema | None = None

    def write(self, number: int, table: pa.Table) -> None:
        if self._schema is None:
            self._schema = table.schema
        current = self._open.pop(number, None)
        if current is None:
            if len(self._open) >= _OPEN_FILES:
                self._close(self._open.pop(next(iter(self._open))))
            paths = self.files.setdefault(number, [])
            path = f"{self.folder}/{self.prefix}-{number:06d}-{len(paths):03d}.arrow"
            paths.append(path)
            sink = pa.OSFile(path, "wb")
            current = (sink, pa.ipc.new_stream(sink, self._schema))
        current[1].write_table(table.cast(self._schema))
        self._open[number] = current

    @staticmethod
    def _close(current: tuple[pa.OSFile, Any]) -> None:
        current[1].close()
        current[0].close()

    def close(self) -> dict[int, list[str]]:
        """Every file finished; returns them by bucket. Never raises (it runs in ``finally``)."""
        for current in self._open.values():
            with contextlib.suppress(Exception):
                self._close(current)
        self._open.clear()
        return self.files


def by_bucket(table: pa.Table, machines: pa.Array, numbers: pa.Array) -> Iterator[tuple[int, pa.Table]]:
    """``table``'s rows by the bucket of their machine (``numbers[i]`` is ``machines[i]``'s): one
    sort, then a slice per bucket."""
    mine = per_machine(table, machines, numbers)
    order = pc.sort_indices(mine)
    table, mine = table.take(order), mine.take(order)
    counts = pc.value_counts(mine)
    start = 0
    for number, count in sorted(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    ):
        yield number, table.slice(start, count)
        start += count


def read_all(paths: list[str]) -> pa.Table | None:
    return read_bucket(paths) if paths else None


def dump(path: str, table: pa.Table) -> str:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return path
