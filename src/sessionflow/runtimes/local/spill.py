"""A run's refined events on disk, in buckets of machines, so a run of any size sorts in bounded memory.

Every event of a machine goes to the same bucket (by a hash of its ``machine_id``), in arrival
order: a bucket holds whole machines, so sorting and sessionizing one bucket at a time gives what
sorting everything would. Buckets are Arrow IPC streams, written as the input is read and read
back one at a time.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sessionflow.runtimes.local.engine import LINE, MACHINE_HASH
from sessionflow.runtimes.local.reader import Source, open_source

SOURCE = "_source"  # which input of the run: its index
# Raw input bytes per bucket: a bucket's refined events take about 0.6 times their raw bytes in
# Arrow, and sorting one holds it twice; a worker sorts one at a time. 1M events (226 MB raw) make
# 4 buckets of ~35 MB.
BUCKET_RAW_BYTES = 32 << 20
# Buckets while reading: each block is cut into this many pieces, so few. A bucket that grows
# past SPLIT_BYTES (an input bigger than its size said, standard input) is split once read whole.
MAX_BUCKETS = 16
STREAM_BUCKETS = 4  # when the input's size is unknown (standard input, a pipe)
SPLIT_BYTES = 32 << 20  # of Arrow data: what one worker sorts and sessionizes at a time
MAX_SPLIT = 1024  # parts a bucket may be split into (its part numbers are bucket * MAX_SPLIT + part)
_GZIP_RATIO = 8  # a gzip feed of JSON lines inflates about this much
# Rows held in memory over all buckets before a bucket is written: more buckets, smaller pieces.
_HELD_ROWS = 64 * 1024
_MIN_PIECE_ROWS = 2048


def bucket_count(sources: Sequence[Source], bucket_bytes: int = BUCKET_RAW_BYTES) -> int:
    """A power of two (buckets are chosen with a bit mask), from the inputs' sizes: a bucket per
    ``bucket_bytes`` of raw input."""
    total = 0
    for source in sources:
        size = source.size
        if size is None:
            total = max(total, STREAM_BUCKETS * bucket_bytes)
            continue
        total += size * (_GZIP_RATIO if _is_gzip(source) else 1)
    wanted = max(1, -(-total // bucket_bytes))
    count = 1
    while count < wanted and count < MAX_BUCKETS:
        count *= 2
    return count


def _is_gzip(source: Source) -> bool:
    if source.path is None:
        return False
    try:
        with open(source.path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False


class Spill:
    """Refined batches -> one IPC file per bucket; :meth:`buckets` gives them back one by one."""

    def __init__(self, folder: Path, buckets: int) -> None:
        self.folder = folder
        self.count = buckets
        folder.mkdir(parents=True, exist_ok=True)
        self._held: list[list[pa.RecordBatch]] = [[] for _ in range(buckets)]
        self._held_rows = [0] * buckets
        self._writers: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * buckets
        self._bytes = [0] * buckets
        self._schema: pa.Schema | None = None
        self._piece_rows = max(_MIN_PIECE_ROWS, _HELD_ROWS // buckets)

    def add(self, batch: pa.RecordBatch, source: int, first_line: int, bucket_rows: list[int] | None) -> None:
        """A refined batch of input ``source`` whose worker numbered its lines from 1, its rows
        ordered by bucket, ``bucket_rows`` in each (None: one bucket)."""
        rows = batch.num_rows
        if rows == 0:
            return
        lines = batch.column(LINE)
        if first_line != 1:
            lines = pc.add(lines, first_line - 1)
        columns = [*batch.columns]
        columns[batch.schema.get_field_index(LINE)] = lines
        batch = pa.RecordBatch.from_arrays(
            [*columns, _repeat(source, rows)],
            names=[*batch.schema.names, SOURCE],
        )
        if self._schema is None:
            self._schema = batch.schema
        if bucket_rows is None:
            assert self.count == 1
            self._hold(0, batch)
            return
        offset = 0
        for bucket, size in enumerate(bucket_rows):
            if size:
                self._hold(bucket, batch.slice(offset, size))
                offset += size

    def _hold(self, bucket: int, batch: pa.RecordBatch) -> None:
        self._held[bucket].append(batch)
        self._held_rows[bucket] += batch.num_rows
        if self._held_rows[bucket] >= self._piece_rows:
            self._write(bucket)

    def _write(self, bucket: int) -> None:
        held = self._held[bucket]
        if not held:
            return
        writer = self._writers[bucket]
        if writer is None:
            assert self._schema is not None
            writer = self._writers[bucket] = pa.ipc.new_stream(self._path(bucket), self._schema)
        table = pa.Table.from_batches(held).combine_chunks()
        self._bytes[bucket] += table.nbytes
        writer.write_table(table)
        self._held[bucket] = []
        self._held_rows[bucket] = 0

    def _path(self, bucket: int) -> str:
        return str(self.folder / f"bucket-{bucket:04d}.arrow")

    def buckets(self) -> Iterator[pa.Table]:
        """Each part's events in arrival order (see :meth:`files`), read one at a time."""
        for _, path in self.files():
            table = read_bucket(path)
            Path(path).unlink()
            yield table

    def files(self) -> list[tuple[int, str]]:
        """Every non-empty bucket written out whole, split where it outgrew :data:`SPLIT_BYTES`:
        (a number unique to the part, its file), to be read elsewhere."""
        found = []
        for bucket in range(self.count):
            if self._writers[bucket] is None and not self._held[bucket]:
                continue
            self._write(bucket)
            writer = self._writers[bucket]
            assert writer is not None
            writer.close()
            self._writers[bucket] = None
            parts = 1
            while parts * SPLIT_BYTES < self._bytes[bucket] and parts < MAX_SPLIT:
                parts *= 2
            if parts == 1:
                found.append((bucket * MAX_SPLIT, self._path(bucket)))
            else:
                found.extend(self._split(bucket, parts))
        return found

    def _split(self, bucket: int, parts: int) -> list[tuple[int, str]]:
        """A bucket's file -> ``parts`` files, by the next bits of the machine hash (whole machines
        each, arrival order kept), read and written batch by batch."""
        shift = self.count.bit_length() - 1  # the bits that chose the bucket
        path = self._path(bucket)
        names = [f"{path}.{part:04d}" for part in range(parts)]
        writers: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * parts
        # Read, not mapped: a mapped file's pages would stay in this process until the whole file is read.
        with pa.OSFile(path) as source:
            for batch in pa.ipc.open_stream(source):
                hashes = pc.shift_right(batch.column(MACHINE_HASH), pa.scalar(shift, pa.uint32()))
                chosen = pc.bit_wise_and(hashes, pa.scalar(parts - 1, pa.uint32()))
                for part in range(parts):
                    piece = batch.filter(pc.equal(chosen, pa.scalar(part, pa.uint32())))
                    if piece.num_rows:
                        if writers[part] is None:
                            writers[part] = pa.ipc.new_stream(names[part], batch.schema)
                        writers[part].write_batch(piece)  # type: ignore[union-attr]
        for writer in writers:
            if writer is not None:
                writer.close()
        Path(path).unlink()
        return [(bucket * MAX_SPLIT + part, names[part]) for part in range(parts) if writers[part] is not None]

    def close(self) -> None:
        """Never raises: it runs while another error (a full disk) may be on its way out."""
        for writer in self._writers:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def read_bucket(path: str) -> pa.Table:
    """A bucket's file, whole (mapped: the table's buffers are its pages)."""
    with pa.memory_map(path) as source:
        return pa.ipc.open_stream(source).read_all()


def _repeat(value: int, rows: int) -> pa.Array:
    return pa.array([value] * rows, pa.int32())


def raw_lines(source: Source, copy: Path | None, wanted: set[int]) -> dict[int, bytes]:
    """The raw bytes (less the line end) of the ``wanted`` 1-based lines of an input.

    A file is read again from its start (a resumed one too: its lines are numbered from its first);
    standard input and pipes, which cannot be read twice, from the ``copy`` the run kept of them.
    """
    found: dict[int, bytes] = {}
    if not wanted:
        return found
    last = max(wanted)
    stream = open(copy, "rb") if copy is not None else open_source(Source(source.name, source.path))  # noqa: SIM115
    try:
        for number, line in enumerate(stream, 1):
            if number in wanted:
                found[number] = line.rstrip(b"\r\n")
            if number >= last:
                break
    finally:
        stream.close()
    return found
