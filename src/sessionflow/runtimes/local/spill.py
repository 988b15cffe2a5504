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
# past SPLIT_BYTES (an input bigger than its size said, standard input) is split once read whole.
MAX_BUCKETS = 16
STREAM_BUCKETS = 4  # when the input's size is unknown (standard input, a pipe)
SPLIT_BYTES = 32 << 20  # of Arrow data: what one worker sorts and sessionizes at a time
MAX_SPLIT = 1024  # parts a bucket may be split into (its part numbers are bucket * MAX_SPLIT + part)
_GZIP_RATIO = 8  # a gzip feed of JSON lines inflates about this much
# What a refining process holds per bucket before writing: a block's piece of a bucket is written
# at the end of the block in a few calls, not one call per Arrow buffer.
_FILE_BUFFER = 256 << 10


def bucket_count(sources: Sequence[Source]) -> int:
    """A power of two (buckets are chosen with a bit mask), from the inputs' sizes."""
    total = 0
    for source in sources:
        size = source.size
        if size is None:
            total = max(total, STREAM_BUCKETS * BUCKET_RAW_BYTES)
            continue
        total += size * (_GZIP_RATIO if _is_gzip(source) else 1)
    wanted = max(1, -(-total // BUCKET_RAW_BYTES))
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


class Spill:
    """The run's side of the spill: where the refining processes write, how much, and the buckets
    read back (:meth:`buckets`, :meth:`files`)."""

    def __init__(self, folder: Path, buckets: int) -> None:
        self.folder = folder
        self.count = buckets
        folder.mkdir(parents=True, exist_ok=True)
        self._bytes = [0] * buckets
        self.sizes: dict[int, int] = {}  # Arrow bytes of each part (see files)

    def to(self, source: int) -> SpillTo:
        """Where the blocks of input ``source`` go."""
        return SpillTo(str(self.folder), self.count, source)

    def add(self, written: Sequence[int]) -> None:
        """What a refined block wrote: Arrow bytes per bucket."""
        for bucket, size in enumerate(written):
            self._bytes[bucket] += size

    def _paths(self, bucket: int) -> list[str]:
        return sorted(str(path) for path in self.folder.glob(f"bucket-{bucket:04d}.*.arrow"))

    def buckets(self) -> Iterator[pa.Table]:
        """Each part's events in arrival order (see :meth:`files`), read one at a time, in bucket order."""
        for _, paths in self.files():
            table = read_bucket(paths)
            for path in paths:
                Path(path).unlink()
            yield table.take(pc.sort_indices(table, sort_keys=ARRIVAL))

    def files(self) -> list[tuple[int, list[str]]]:
        """Every non-empty bucket, split where it outgrew :data:`SPLIT_BYTES`: (a number unique to
        the part, its files), to be read elsewhere; :attr:`sizes` has each part's Arrow bytes.
        Call it once the writing processes are done."""
        found = []
        for bucket in range(self.count):
            paths = self._paths(bucket)
            if not paths:
                continue
            parts = 1
            while parts * SPLIT_BYTES < self._bytes[bucket] and parts < MAX_SPLIT:
                parts *= 2
            if parts == 1:
                found.append((bucket * MAX_SPLIT, paths))
                self.sizes[bucket * MAX_SPLIT] = self._bytes[bucket]
            else:
                found.extend(self._split(bucket, paths, parts))
        return found

    def _split(self, bucket: int, paths: list[str], parts: int) -> list[tuple[int, list[str]]]:
        """A bucket's files -> ``parts`` files, by the next bits of the machine hash (whole machines
        each, arrival order kept within each input file), read and written batch by batch."""
        shift = self.count.bit_length() - 1  # the bits that chose the bucket
        names = [str(self.folder / f"part-{bucket:04d}-{part:04d}.arrow") for part in range(parts)]
        writers: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * parts
        sizes = [0] * parts
        for path in paths:
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
                            sizes[part] += piece.nbytes
            Path(path).unlink()
        found = []
        for part, writer in enumerate(writers):
            if writer is not None:
                writer.close()
                found.append((bucket * MAX_SPLIT + part, [names[part]]))
                self.sizes[bucket * MAX_SPLIT + part] = sizes[part]
        return found

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
