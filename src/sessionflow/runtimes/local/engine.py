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
import importlib.abc
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.machinery import ModuleSpec
from itertools import count, repeat
from pathlib import Path
from types import ModuleType
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
from sessionflow.runtimes.local.reader import Source, count_lines, open_source
from sessionflow.runtimes.local.spill import LINE, MACHINE_HASH, SpillTo, append, close_files

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
    # Arrow bytes the refining process wrote to each spill bucket (its events are there, and
    # ``batch`` has no rows); None: the events are in ``batch``.
    spilled: list[int] | None = None
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
    keep_freed_memory()
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


class _PandasAbsent(importlib.abc.MetaPathFinder):
    """``import pandas`` fails while it is on ``sys.meta_path`` (see :func:`_warm_pyarrow`)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "pandas":
            raise ModuleNotFoundError("the embedded runner hands pyarrow no pandas objects", name=fullname)
        return None


def _warm_pyarrow() -> None:
    """Lets pyarrow do its lazy look-ups once, before the workers fork, not once in every worker.

    The first Python value pyarrow converts makes it look for pandas, to tell pandas objects
    apart: it imports all of pandas where pandas is installed (the dev extras, many a data
    engineer's environment), ~0.3 s of a run's start on one core, and forked workers carry its
    modules. The runner never hands pyarrow a pandas object, so pyarrow's one look is answered
    "not installed" unless pandas is imported already. pandas stays importable: pyarrow's explicit
    pandas calls (``to_pandas``) look again, and ``import pandas`` works as ever.
    """
    absent = None if "pandas" in sys.modules else _PandasAbsent()
    if absent is not None:
        sys.meta_path.insert(0, absent)
    try:
        pa.RecordBatch.from_arrays([pa.array([0])], names=["warm"])
    finally:
        if absent is not None:
            sys.meta_path.remove(absent)


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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_KEPT_BYTES = 64 << 20


@cache
def keep_freed_memory() -> None:
    """glibc's malloc keeps what is freed for the next block: in every worker (see
    :func:`_init_pool_worker`), and in a process that only runs (the CLI's ``run``).

    A block's input (~2 MiB) and its refined rows are allocated and freed again block after block;
    by default glibc maps the big ones fresh each time, or hands the top of its heap back once
    4 MiB are free there, and every page of them is faulted in and zeroed again: on 1M events
    (bench/README.md) this takes the minor page faults from 287k to 174k and the CPU time down
    ~3-9%. Freed memory up to :data:`_KEPT_BYTES` stays with the process (the largest process
    peaked 10 MB higher): a setting of the whole process, so not one a library call makes for
    its caller's process.
    Elsewhere (another C library, another system) nothing is done.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # blocks from the heap, reused (32 MiB: glibc's own ceiling)
    mallopt(_M_TRIM_THRESHOLD, _KEPT_BYTES)


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


def refine_block(chunk: bytes, source: str, first_line: int, spill: SpillTo | None = None) -> tuple[Any, ...]:
    """Runs in a worker: a block of raw lines, the first of them line ``first_line`` of its input,
    -> picklable parts of a :class:`Block`.

    ``spill``: the events go to the run's spill buckets (runtimes/local/spill.py), written here,
    with their line and a hash of their machine; the parts then say how many bytes went to each
    bucket, and carry no events."""
    assert _worker is not None
    pipeline, schema, feed, quorum = _worker
    lines = chunk.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    refined = pipeline.refine(zip(lines, repeat(source), count(first_line)))
    events = refined.events
    # Every event has the refiner's keys in the same order: rows to columns (in C for the block feed).
    fields = pipeline.refiner.event_fields
    kinds = tuple(str(schema.field(name).type) for name in fields)
    columns = dict(zip(fields, feed.columns(events, kinds), strict=True))
    batch = to_record_batch(columns, len(events), schema)
    counts = None
    leaders = block_leaders(batch, quorum)
    if spill is not None:
        machines = pc.dictionary_encode(batch.column("machine_id"))
        # crc32, not hash(): the same in every process, whatever its start method or hash seed.
        hashes = [crc32(machine.encode()) for machine in machines.dictionary.to_pylist()]
        batch = pa.RecordBatch.from_arrays(
            [
                *batch.columns,
                pa.array(refined.lines, pa.int64()),
                pc.take(pa.array(hashes, pa.uint32()), machines.indices),
            ],
            names=[*batch.schema.names, LINE, MACHINE_HASH],
        )
        counts = append(spill, batch)
        return len(lines), refined.blank, refined.rejected, refined.rejections, None, counts, leaders
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as stream:
        stream.write_batch(batch)
    return len(lines), refined.blank, refined.rejected, refined.rejections, sink.getvalue(), counts, leaders


def _call(work: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    function, job = work
    return function(*job)


@cache
def _no_rows() -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([], names=[])


def _block(parts: tuple[Any, ...], source: str, first_line: int) -> Block:
    """``parts`` of a block a worker refined (its lines numbered from ``first_line``)."""
    lines, blank, rejected, rejections, ipc, spilled, leaders = parts
    batch = _no_rows() if ipc is None else pa.ipc.open_stream(ipc).read_next_batch()
    return Block(source, first_line, lines, lines - blank, blank, rejected, rejections, batch, None, spilled, leaders)


# -- main side -----------------------------------------------------------------------------------


def read_blocks(source: Source, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Blocks of whole lines: each ends at a newline. Workers count the lines, not this process.

    A block is gathered from as many reads as it takes: a pipe (standard input) gives at most its
    buffer, 64 KiB, a read, and blocks of one read each would be ~30 times as many as a file's,
    each with its fixed costs (a task for the pool, a piece of every spill bucket). A read that
    fails ends the blocks after those of the bytes read before it."""
    stream = open_source(source)
    offset = 0
    carry = b""
    try:
        while True:
            pieces: list[bytes] = []
            size = 0
            failed = None
            while size < block_bytes:
                try:
                    piece = stream.read(block_bytes - size)
                except (OSError, EOFError) as exc:
                    failed = InputError(f"{source.name}: read failed after byte {offset + size}: {exc}")
                    break
                if not piece:
                    break
                pieces.append(piece)
                size += len(piece)
            offset += size
            if pieces:
                data = carry + b"".join(pieces)
                cut = data.rfind(b"\n") + 1
                if cut:
                    block, carry = data[:cut], data[cut:]
                    yield block
                else:
                    carry = data
            if failed is not None:
                raise failed
            if size < block_bytes:  # the end of the input
                break
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
        _warm_pyarrow()
        if workers > 0:
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
        spill: SpillTo | None = None,
    ) -> Iterator[Block]:
        """``keep``: where the bytes read go too (a copy of a stream, which cannot be read twice);
        ``spill``: where the events go (see :func:`refine_block`).

        Lines are numbered from the source's first, resumed ones included: a resumed source's
        report says where reading started once its first block is read."""
        line = 0  # of the next block, once the first block is read
        window: deque[tuple[Any, int]] = deque()  # blocks in flight, each with its first line
        limit = 2 * self.workers + 1
        for chunk in read_blocks(source, self.block_bytes):
            if keep is not None:
                keep.write(chunk)
            if on_read is not None:
                on_read(len(chunk))
            if not line:
                line = source.report.start.lines + 1
            first, line = line, line + count_lines(chunk)  # the workers split at each newline
            if self._pool is None:
                yield _block(refine_block(chunk, source.name, first, spill), source.name, first)
                continue
            # A bounded window of blocks in flight: reading never runs ahead of the pool.
            window.append((self._pool.apply_async(refine_block, (chunk, source.name, first, spill)), first))
            if len(window) >= limit:
                result, first = window.popleft()
                yield _block(result.get(), source.name, first)
        while window:
            result, first = window.popleft()
            yield _block(result.get(), source.name, first)

    def map(self, function: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> Iterator[Any]:
        """``function(*job)`` for each job, in the worker processes (as they finish), else here."""
        if self._pool is None:
            for job in jobs:
                yield function(*job)
            return
        yield from self._pool.imap_unordered(_call, [(function, job) for job in jobs])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()  # the workers' spill files go with them, flushed block by block
            self._pool.join()
            self._pool = None
        else:
            close_files()


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
