"""The embedded runner's engine: refine in worker processes, sessionize in order, write Arrow.

The stateless half of the core (parse, clean, validate) runs in a pool of processes on blocks of
input; each block comes back as an Arrow record batch plus the few columns the sessionizer needs.
The stateful half runs here, in arrival order, on lightweight records whose payload is a handle
``(block, row)``; when every row of a block is placed, the block gets its session columns and goes
to the lake. Results do not depend on the number of workers: blocks are cut the same way and
consumed in input order.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count, repeat
from pathlib import Path
from typing import Any, BinaryIO
from zlib import crc32

import pyarrow as pa
import pyarrow.compute as pc

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

from sessionflow.config import Config
from sessionflow.core import Pipeline, Sessionizer, Tally
from sessionflow.core.sessionizer import Summary
from sessionflow.errors import InputError
from sessionflow.runtimes.local.columnar import refined_schema, session_schema_fields, session_table, to_record_batch
from sessionflow.runtimes.local.feeds import Feed, sessionizing
from sessionflow.runtimes.local.reader import Source, open_source

# About 9,000 events. Bigger blocks mean fewer stream-clock steps and less per-block work, but more
# memory in flight. On 1M events (bench/bench_run.py): 1 MiB 3.99 s, 337 MB peak; 2 MiB 3.67 s,
# 404 MB; 4 MiB (measured before the compiled sessionizer) ~500 MB, over the 500 MB budget.
BLOCK_BYTES = 2 << 20
PIPE_BYTES = 4 << 20  # wished for; Linux grants up to /proc/sys/fs/pipe-max-size (1 MiB by default)


@dataclass(slots=True)
class Block:
    """One block of input after refining."""

    source: str
    first_line: int
    lines: int
    records: int
    blank: int
    rejected: Counter[str]
    rejections: list[dict[str, Any]]
    batch: pa.RecordBatch
    keys: list[list[Any]] | None  # KEY_COLUMNS as Python lists, for the record feed only (feeds.py)
    # Rows per spill bucket, the rows ordered by bucket (refine_block); None: one bucket.
    bucket_rows: list[int] | None = None
    # The block's most advanced machines, (machine_id, newest timestamp), at most clock_quorum of
    # them: all a run needs of a block for the stream clock at its end (see block_leaders).
    leaders: list[tuple[str, int]] | None = None


# -- worker side ---------------------------------------------------------------------------------

_worker: tuple[Pipeline, pa.Schema, Feed, int] | None = None


def _init_worker(config: Config, now_ms: int, feed: Feed) -> None:
    global _worker  # noqa: PLW0603 - one pipeline per worker process, built once
    gc.disable()  # refining allocates millions of short-lived containers and no cycles
    _worker = (Pipeline(config, now_ms, enrich=False), refined_schema(config), feed, config.session.clock_quorum)


def block_leaders(batch: pa.RecordBatch, quorum: int) -> list[tuple[str, int]]:
    """The ``quorum`` machines of ``batch`` with the newest timestamps, with them.

    The stream clock is the ``quorum``-th newest of the machines' newest timestamps: a machine
    among the ``quorum`` newest over a whole input is among the ``quorum`` newest of the block that
    holds its newest event, so the blocks' leaders are all the clock needs.
    """
    if batch.num_rows == 0:
        return []
    newest = pa.table([batch.column("machine_id"), batch.column("timestamp")], names=["machine_id", "timestamp"])
    newest = newest.group_by("machine_id").aggregate([("timestamp", "max")])
    top = newest.take(pc.select_k_unstable(newest, quorum, [("timestamp_max", "descending")]))
    return list(zip(top.column("machine_id").to_pylist(), top.column("timestamp_max").to_pylist(), strict=True))


def _init_pool_worker(config: Config, now_ms: int, feed: Feed, run_pid: int) -> None:
    # Ctrl-C reaches the whole process group: the main process answers it (and terminates the
    # pool); a worker that raised KeyboardInterrupt too would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_the_run(run_pid)
    _init_worker(config, now_ms, feed)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_the_run(run_pid: int) -> None:
    """A run killed outright (SIGKILL, the OOM killer) takes its workers with it, silently.

    Else each would finish its block and die on the broken pipe to the dead run, printing a
    BrokenPipeError traceback. A worker writes nothing of the lake, so nothing is lost. Linux's
    parent-death signal; elsewhere the workers go on their own once they find the pipe closed.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != run_pid:  # the run died before the signal was asked for
        os._exit(0)


def _warm_pyarrow() -> None:
    """Lets pyarrow do its lazy imports once, before the workers fork, not once in every worker.

    Building a batch makes it look for pandas (to tell DataFrames apart): 0.25 s where pandas is
    installed, which forked workers inherit instead of repeating.
    """
    pa.RecordBatch.from_arrays([pa.array([0])], names=["warm"])


def _choose_memory_pool() -> None:
    """jemalloc (else the system's allocator) for Arrow, in this process and the workers it forks.

    A batch run allocates and frees a bucket's tables (tens of MB) over and over; pyarrow's default,
    mimalloc, hands those pages back and takes them again: on 1M events (bench/README.md) 2.3 s of
    system time against 1.5 s with jemalloc, and 320 MB against 240 MB at the peak.
    """
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pa.set_memory_pool(pa.system_memory_pool())


def _widen_pipes(pool: Any) -> None:
    """Pipes of up to 1 MiB (Linux's limit for any user) between the pool and this process.

    A block goes out as ~2 MiB and comes back as ~4 MiB; through the default 64 KiB pipes that is
    dozens of writes and wake-ups each way, and the GIL handed back and forth between the pool's
    threads and the sessionizer: ~10% of a run's time on 2 cores (bench/README.md). Only a
    speed-up: where a pipe cannot be widened (another OS, a lower limit) it stays as it is.
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = 1 << 20
    try:  # multiprocessing.Pool's own queues: stable attributes, but not public ones
        connections = [pool._inqueue._reader, pool._inqueue._writer, pool._outqueue._reader, pool._outqueue._writer]
    except AttributeError:
        return
    for connection in connections:
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(connection.fileno(), set_size, min(limit, PIPE_BYTES))


# Columns a worker adds to each refined batch for the batch run (runtimes/local/batch.py): where
# the event came from (its line: a conflicting duplicate's bytes are found again by it) and a hash
# of its machine (its spill bucket). The run drops them before the sessionizer.
LINE, MACHINE_HASH = "_line", "_machine_hash"
INTERNAL_COLUMNS = (LINE, MACHINE_HASH)


def refine_block(chunk: bytes, source: str, first_line: int, buckets: int = 1) -> tuple[Any, ...]:
    """Runs in a worker: a block of raw lines -> picklable parts of a :class:`Block`.

    ``buckets`` (a power of two): the events come ordered by spill bucket (a hash of the machine,
    arrival order kept within each), and the parts say how many fall in each: the run's process
    only slices them (runtimes/local/spill.py)."""
    assert _worker is not None
    pipeline, schema, feed, quorum = _worker
    lines = chunk.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    refined = pipeline.refine(zip(lines, repeat(source), count(first_line)))
    events = refined.events
    # Every event has the refiner's keys in the same order: rows to columns (in C for the block feed).
    fields = pipeline.refiner.event_fields
    columns = dict(zip(fields, feed.transpose(events, len(fields)), strict=True))
    batch = to_record_batch(columns, len(events), schema)
    machines = columns.get("machine_id", ())
    # crc32, not hash(): the same in every process, whatever its start method or hash seed.
    machine_hashes = {machine: crc32(machine.encode()) for machine in set(machines)}
    batch = pa.RecordBatch.from_arrays(
        [
            *batch.columns,
            pa.array(refined.lines, pa.int64()),
            pa.array([machine_hashes[machine] for machine in machines], pa.uint32()),
        ],
        names=[*batch.schema.names, *INTERNAL_COLUMNS],
    )
    counts = None
    if buckets > 1 and batch.num_rows:
        bucket = pc.bit_wise_and(batch.column(MACHINE_HASH), pa.scalar(buckets - 1, pa.uint32()))
        batch = batch.take(pc.sort_indices(bucket))  # a stable sort: arrival order within a bucket
        found = pc.value_counts(bucket)
        sizes = dict(zip(found.field("values").to_pylist(), found.field("counts").to_pylist(), strict=True))
        counts = [sizes.get(number, 0) for number in range(buckets)]
    leaders = block_leaders(batch, quorum)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as stream:
        stream.write_batch(batch)
    return len(lines), refined.blank, refined.rejected, refined.rejections, sink.getvalue(), counts, leaders


def _call(work: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    function, job = work
    return function(*job)


def _block(parts: tuple[Any, ...], source: str, first_line: int) -> Block:
    """``parts`` of a block a worker numbered from line 1, renumbered from ``first_line``."""
    lines, blank, rejected, rejections, ipc, counts, leaders = parts
    if first_line != 1:
        for row in rejections:
            row["line"] += first_line - 1
    batch = pa.ipc.open_stream(ipc).read_next_batch()
    return Block(source, first_line, lines, lines - blank, blank, rejected, rejections, batch, None, counts, leaders)


# -- main side -----------------------------------------------------------------------------------


def read_blocks(source: Source, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Blocks of whole lines: each ends at a newline. Workers count the lines, not this process."""
    stream = open_source(source)
    offset = 0
    carry = b""
    try:
        while True:
            try:
                data = stream.read(block_bytes)
            except (OSError, EOFError) as exc:
                raise InputError(f"{source.name}: read failed after byte {offset}: {exc}") from None
            if not data:
                break
            offset += len(data)
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            block, carry = data[:cut], data[cut:]
            yield block
        if carry:
            yield carry + b"\n"
    finally:
        if source.path is not None:
            stream.close()


class Engine:
    """Refines blocks in ``workers`` processes (0: in this process), yields them in input order."""

    def __init__(self, config: Config, now_ms: int, workers: int, block_bytes: int | None = None) -> None:
        self.config = config
        self.now_ms = now_ms
        self.workers = workers
        self.block_bytes = block_bytes or BLOCK_BYTES
        self._pool: Any = None
        self.feed = sessionizing()
        _choose_memory_pool()
        if workers > 0:
            _warm_pyarrow()
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            self._pool = context.Pool(
                workers, initializer=_init_pool_worker, initargs=(config, now_ms, self.feed, os.getpid())
            )
            _widen_pipes(self._pool)
        else:
            _init_worker(config, now_ms, self.feed)

    def blocks(
        self,
        source: Source,
        on_read: Callable[[int], None] | None = None,
        keep: BinaryIO | None = None,
        buckets: int = 1,
    ) -> Iterator[Block]:
        """``keep``: where the bytes read go too (a copy of a stream, which cannot be read twice);
        ``buckets``: the spill buckets the events are ordered by (see :func:`refine_block`)."""
        line = 1  # of the next block: known once the blocks before it come back
        if self._pool is None:
            for chunk in read_blocks(source, self.block_bytes):
                if keep is not None:
                    keep.write(chunk)
                if on_read is not None:
                    on_read(len(chunk))
                block = _block(refine_block(chunk, source.name, 1, buckets), source.name, line)
                line += block.lines
                yield block
            return
        # A bounded window of blocks in flight: reading never runs ahead of the pool.
        window: deque[Any] = deque()
        limit = 2 * self.workers + 1
        for chunk in read_blocks(source, self.block_bytes):
            if keep is not None:
                keep.write(chunk)
            if on_read is not None:
                on_read(len(chunk))
            window.append(self._pool.apply_async(refine_block, (chunk, source.name, 1, buckets)))
            if len(window) >= limit:
                block = _block(window.popleft().get(), source.name, line)
                line += block.lines
                yield block
        while window:
            block = _block(window.popleft().get(), source.name, line)
            line += block.lines
            yield block

    def map(self, function: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> Iterator[Any]:
        """``function(*job)`` for each job, in the worker processes (as they finish), else here."""
        if self._pool is None:
            for job in jobs:
                yield function(*job)
            return
        yield from self._pool.imap_unordered(_call, [(function, job) for job in jobs])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


class Assembler:
    """The sessionizer's emitter for blocks: fills each block's session columns, hands full ones on."""

    def __init__(
        self,
        write_events: Callable[[pa.Table, pa.Array | None], None],
        write_sessions: Callable[[pa.Table], None] | None = None,
        feed: Feed | None = None,
    ):
        self.write_events = write_events
        # Where sessions collected as columns go as a table (else: ``sessions``, dicts).
        self.write_sessions = write_sessions
        self._feed = feed or sessionizing()  # the engine's (Engine.feed): the same choice
        self.sessions: list[Summary] = []
        self.tally = Tally()
        self._open: dict[int, Any] = {}  # _Pending or _blocks.Placements
        self._fields = session_schema_fields()

    def feed(self, block: Block, sessionizer: Sessionizer) -> None:
        if self.write_sessions is not None:
            self._feed.collect_sessions(sessionizer)
        tally = self.tally
        tally.records += block.records
        tally.blank += block.blank
        tally.rejected.update(block.rejected)
        if block.batch.num_rows == 0:
            sessionizer.end_batch(self)
            self._finish_ready(sessionizer)
            return
        holder = self._feed.process(block, sessionizer, self)
        self._open[id(holder)] = holder
        sessionizer.end_batch(self)
        self._finish_ready(sessionizer)

    def release(
        self, payload: Any, session_id: str | None, seq: int | None, since: int | None, arrived_late: bool
    ) -> None:
        # ``arrived_late`` is the block's own column already (the batch run's, runtimes/local/batch.py).
        holder, row = payload  # a row of a block (the record feed's handle)
        holder.session_ids[row] = session_id
        holder.seqs[row] = seq
        holder.sinces[row] = since
        holder.remaining -= 1

    def duplicate(self, payload: Any) -> None:
        self.tally.duplicates += 1
        payload[0].remaining -= 1

    def session(self, summary: Summary) -> None:
        self.tally.sessions += 1
        self.sessions.append(summary)

    def _finish_ready(self, sessionizer: Sessionizer) -> None:
        if self.write_sessions is not None:
            columns = self._feed.take_sessions(sessionizer)
            if columns is not None and columns["session_id"]:
                self.tally.sessions += len(columns["session_id"])
                self.write_sessions(session_table(columns))
        done = [key for key, holder in self._open.items() if holder.remaining == 0]
        for key in done:
            self._write_block(self._open.pop(key))

    def finish(self, sessionizer: Sessionizer) -> None:
        """End of input, after ``sessionizer.flush``: every block is complete now."""
        self._finish_ready(sessionizer)
        if self._open:  # pragma: no cover - a flush places every row
            raise AssertionError(f"{len(self._open)} blocks still have rows without a session")

    def _write_block(self, holder: Any) -> None:
        """The block with its session columns, and the mask of its rows that were placed."""
        *columns, placed = holder.columns()
        late = columns[3]
        table = pa.Table.from_batches([holder.batch])
        for fld, column in zip(self._fields, columns, strict=True):
            table = table.append_column(fld, column)
        self.tally.events += table.num_rows - (placed.false_count if placed is not None else 0)
        self.tally.late += late.true_count
        self.write_events(table, placed)
