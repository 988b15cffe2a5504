"""A run's refined events on disk, in buckets of machines, so a run of any size sorts in bounded memory.

Every event of a machine goes to the same bucket (by a hash of its ``machine_id``): a bucket holds
whole machines, so sorting and sessionizing one bucket at a time gives what sorting everything
would. The processes that refine the input write the buckets themselves (:func:`append`), each
into files of its own, block by block: the events never travel back to the run's process. A
bucket is read back whole, its files together; each row carries where it came from (input and
line), so the arrival order is known again (:data:`ARRIVAL`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sessionflow.runtimes.local.reader import Source, open_source

# Columns the refining processes add to each event for the batch run: which input of the run (its
# index) and which line of it the event came from (a conflicting duplicate's bytes are found again
# by them, and they give the arrival order), and a hash of its machine (its bucket). The run drops
# them before the sessionizer.
SOURCE, LINE, MACHINE_HASH = "_source", "_line", "_machine_hash"
INTERNAL_COLUMNS = (SOURCE, LINE, MACHINE_HASH)
ARRIVAL = [(SOURCE, "ascending"), (LINE, "ascending")]
# Raw input bytes per bucket: a bucket's refined events take about 0.6 times their raw bytes in
# Arrow, and sorting one holds it twice; a worker sorts one at a time. 1M events (226 MB raw) make
# 8 buckets of ~24 MB.
BUCKET_RAW_BYTES = 32 << 20
# Buckets while reading: each block is cut into this many pieces, so few. A bucket that grows
# past SPLIT_BYTES (a big input, standard input) is cut into parts by the worker that sessionizes
# it (Bucket.pieces): the workers cut theirs side by side, a few MiB at a time.
MAX_BUCKETS = 16
STREAM_BUCKETS = 8  # when the input's size is unknown (standard input, a pipe): work for 2+ workers
SPLIT_BYTES = 32 << 20  # of Arrow data: what one worker sorts and sessionizes at a time
MAX_SPLIT = 1024  # parts a bucket may be cut into (its part numbers are bucket * MAX_SPLIT + part)
_GZIP_RATIO = 8  # a gzip feed of JSON lines inflates about this much
# What a refining process holds per bucket before writing: a block's piece of a bucket is written
# at the end of the block in a few calls, not one call per Arrow buffer.
_FILE_BUFFER = 256 << 10


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


@dataclass(frozen=True)
class SpillTo:
    """Where a refining process appends the events of a block (sent with the block: picklable)."""

    folder: str
    buckets: int
    source: int  # the input's index in the run


class _BucketFiles:
    """One process's files of a spill, one per bucket, each an Arrow IPC stream it appends to.

    A stream is never closed by its writer (a pool's worker is ended, not asked to finish): each
    block is flushed whole before the block is reported done, and a stream's reader stops at the
    end of the file.
    """

    def __init__(self, folder: str, buckets: int) -> None:
        self.folder = folder
        self.buckets = buckets
        self.pid = os.getpid()
        self._files: list[tuple[pa.BufferedOutputStream, pa.ipc.RecordBatchStreamWriter] | None] = [None] * buckets

    def write(self, batch: pa.RecordBatch) -> list[int]:
        """The batch's rows into their buckets' files; returns the Arrow bytes written to each."""
        written = [0] * self.buckets
        if batch.num_rows == 0:
            return written
        if self.buckets == 1:
            pieces = [(0, batch)]
        else:
            bucket = pc.bit_wise_and(batch.column(MACHINE_HASH), pa.scalar(self.buckets - 1, pa.uint32()))
            batch = batch.take(pc.sort_indices(bucket))  # a stable sort: arrival order within a bucket
            found = pc.value_counts(bucket)
            sizes = dict(zip(found.field("values").to_pylist(), found.field("counts").to_pylist(), strict=True))
            pieces = []
            offset = 0
            for number in range(self.buckets):
                size = sizes.get(number, 0)
                if size:
                    pieces.append((number, batch.slice(offset, size)))
                    offset += size
        for number, piece in pieces:
            sink, stream = self._open(number, piece.schema)
            stream.write_batch(piece)
            sink.flush()
            written[number] = piece.nbytes
        return written

    def _open(self, bucket: int, schema: pa.Schema) -> tuple[pa.BufferedOutputStream, pa.ipc.RecordBatchStreamWriter]:
        opened = self._files[bucket]
        if opened is None:
            path = Path(self.folder) / f"bucket-{bucket:04d}.{self.pid}.arrow"
            sink = pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), buffer_size=_FILE_BUFFER)
            opened = self._files[bucket] = (sink, pa.ipc.new_stream(sink, schema))
        return opened

    def close(self) -> None:
        for opened in self._files:
            if opened is not None:
                with contextlib.suppress(Exception):  # a full disk: the run fails on its own error
                    opened[1].close()
                    opened[0].close()
        self._files = [None] * self.buckets


# This process's files of each spill folder it writes to (a pool worker's, or the run's own when it
# refines without workers): see :func:`close_files`.
_WRITING: dict[str, _BucketFiles] = {}


def append(spill: SpillTo, batch: pa.RecordBatch) -> list[int]:
    """Runs where the block was refined: its events into this process's files of the spill."""
    files = _WRITING.get(spill.folder)
    if files is None or files.pid != os.getpid():  # a forked child does not write its parent's files
        files = _WRITING[spill.folder] = _BucketFiles(spill.folder, spill.buckets)
    batch = pa.RecordBatch.from_arrays(
        [*batch.columns, pa.repeat(pa.scalar(spill.source, pa.int32()), batch.num_rows)],
        names=[*batch.schema.names, SOURCE],
    )
    return files.write(batch)


def close_files() -> None:
    """This process's spill files closed (the run refined without workers and is done reading)."""
    for files in _WRITING.values():
        files.close()
    _WRITING.clear()


@dataclass(frozen=True)
class Bucket:
    """A bucket of the spill as it is read back: its files, and how many parts it is cut into first
    (whole machines each, by the next bits of the machine hash) when it outgrew :data:`SPLIT_BYTES`."""

    number: int
    paths: tuple[str, ...]
    size: int  # Arrow bytes written to it
    parts: int  # 1: read whole
    shift: int  # the hash bits that chose the bucket

    def pieces(self) -> list[tuple[int, list[str]]]:
        """(a number unique to the piece, its files): the bucket's own files, or the parts it is
        cut into here, read and written a few MiB at a time (run it where the piece is read next:
        the workers cut their buckets side by side)."""
        first = self.number * MAX_SPLIT
        if self.parts == 1:
            return [(first, list(self.paths))]
        folder = Path(self.paths[0]).parent
        names = [str(folder / f"part-{self.number:04d}-{part:04d}.arrow") for part in range(self.parts)]
        writers: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * self.parts
        for table in _read_in_pieces(self.paths):
            chosen = pc.bit_wise_and(
                pc.shift_right(table.column(MACHINE_HASH), pa.scalar(self.shift, pa.uint32())),
                pa.scalar(self.parts - 1, pa.uint32()),
            )
            table = table.take(pc.sort_indices(chosen))  # a stable sort: arrival order within a part
            found = pc.value_counts(chosen)
            sizes = dict(zip(found.field("values").to_pylist(), found.field("counts").to_pylist(), strict=True))
            offset = 0
            for part in range(self.parts):
                size = sizes.get(part, 0)
                if not size:
                    continue
                writer = writers[part]
                if writer is None:
                    writer = writers[part] = pa.ipc.new_stream(names[part], table.schema)
                writer.write_table(table.slice(offset, size))
                offset += size
        for writer in writers:
            if writer is not None:
                writer.close()
        for path in self.paths:
            Path(path).unlink()
        return [(first + part, [names[part]]) for part in range(self.parts) if writers[part] is not None]


_PIECE_BYTES = 8 << 20  # of Arrow data read at a time to cut a bucket into parts


def _read_in_pieces(paths: Sequence[str]) -> Iterator[pa.Table]:
    """The files' batches gathered into tables of about :data:`_PIECE_BYTES`, one chunk each.
    Read, not mapped: a mapped file's pages would stay in this process until the whole file is read."""
    held: list[pa.RecordBatch] = []
    size = 0
    for path in paths:
        with pa.OSFile(path) as source:
            for batch in pa.ipc.open_stream(source):
                held.append(batch)
                size += batch.nbytes
                if size >= _PIECE_BYTES:
                    yield pa.Table.from_batches(held).combine_chunks()
                    held, size = [], 0
    if held:
        yield pa.Table.from_batches(held).combine_chunks()


class Spill:
    """The run's side of the spill: where the refining processes write, how much, and the buckets
    read back (:meth:`plan`, :meth:`buckets`)."""

    def __init__(self, folder: Path, buckets: int) -> None:
        self.folder = folder
        self.count = buckets
        folder.mkdir(parents=True, exist_ok=True)
        self._bytes = [0] * buckets

    def to(self, source: int) -> SpillTo:
        """Where the blocks of input ``source`` go."""
        return SpillTo(str(self.folder), self.count, source)

    def add(self, written: Sequence[int]) -> None:
        """What a refined block wrote: Arrow bytes per bucket."""
        for bucket, size in enumerate(written):
            self._bytes[bucket] += size

    def plan(self) -> list[Bucket]:
        """Every non-empty bucket, in order, once the writing processes are done."""
        found = []
        for bucket in range(self.count):
            paths = tuple(sorted(str(path) for path in self.folder.glob(f"bucket-{bucket:04d}.*.arrow")))
            if not paths:
                continue
            parts = 1
            while parts * SPLIT_BYTES < self._bytes[bucket] and parts < MAX_SPLIT:
                parts *= 2
            found.append(Bucket(bucket, paths, self._bytes[bucket], parts, self.count.bit_length() - 1))
        return found

    def buckets(self) -> Iterator[pa.Table]:
        """Each piece's events (see :meth:`Bucket.pieces`) in arrival order, read one at a time, in
        bucket order."""
        for bucket in self.plan():
            for _, paths in bucket.pieces():
                table = read_in_arrival_order(paths)
                for path in paths:
                    Path(path).unlink()
                yield table

    def pieces(self) -> list[tuple[int, list[str]]]:
        """Every bucket's pieces (:meth:`Bucket.pieces`, cut here): (a number unique to each, its files)."""
        return [piece for bucket in self.plan() for piece in bucket.pieces()]

    def close(self) -> None:
        """Never raises: it runs while another error (a full disk) may be on its way out."""
        shutil.rmtree(self.folder, ignore_errors=True)


def read_bucket(paths: Sequence[str]) -> pa.Table:
    """A bucket's files, whole, as one table of one chunk per column."""
    tables = []
    for path in paths:
        with pa.memory_map(path) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    # One copy out of the mapped pages: the files can go, and a sort takes from one chunk.
    return pa.concat_tables(tables).combine_chunks()


def read_in_arrival_order(paths: Sequence[str]) -> pa.Table:
    """A bucket's files as one table in arrival order: the refining workers wrote their blocks to it
    side by side, so the files' order is not the input's."""
    table = read_bucket(paths)
    return table.take(pc.sort_indices(table, sort_keys=ARRIVAL))


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
