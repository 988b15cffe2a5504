"""The embedded runner: input files -> the core -> a Parquet lake, on one machine.

A run is all-or-nothing: its files are staged and published together with its ledger and the
sessionizer state through one commit point (see ``sessionflow.lake.commit``), so the lake always holds whole
runs only, and a run killed at any moment and started again ends with the lake an uninterrupted run
would have written. With ``--state``, the state remembers how far into each input file the runs got,
so the same command started again never reads a line twice.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core import Reason, Rejection, Tally, rejection_row
from sessionflow.core.native import implementation
from sessionflow.errors import InputError, OutputError, UsageError
from sessionflow.inputs import why_no_files
from sessionflow.lake.commit import commit_run, crash_point, pending_commits, publish, recover, stage_state
from sessionflow.lake.ids import RunIndex, Sources
from sessionflow.lake.layout import META_DIR, is_lake, lake_exists
from sessionflow.lake.ledger import ledger_files, ledger_record, next_run_number
from sessionflow.lake.lock import LakeLock
from sessionflow.lake.writer import LakeWriter
from sessionflow.runtimes.local.batch import BatchRun
from sessionflow.runtimes.local.engine import Assembler, Block, Engine
from sessionflow.runtimes.local.incremental import PLACING_BUCKET_BYTES, Plan, restate_run
from sessionflow.runtimes.local.reader import LINE_SLACK, STDIN, Position, Source, bounded, expand_inputs
from sessionflow.runtimes.local.restate import LakeFiles, partition_value
from sessionflow.runtimes.local.spill import BUCKET_RAW_BYTES
from sessionflow.runtimes.local.state_file import (
    LakeIdentity,
    RunState,
    lake_identity,
    load_state,
    session_fingerprint,
    state_payload,
)

log = logging.getLogger(__name__)

SPILL_DIR = "spill"  # in the run's staging folder: never published, removed with it


@dataclass
class RunReport:
    run: int
    tally: Tally
    seconds: float
    flushed: bool
    files: int
    inputs: list[dict[str, Any]] = field(default_factory=list)
    # True when every input had been read by earlier runs and there was nothing to publish.
    nothing_new: bool = False
    # The lake's event-id index after the run, in bytes (--state runs on a lake with events; else None).
    dedupe_memory_bytes: int | None = None
    # Events buffered in the state before and after the run, and sessions left open (with their
    # events) for a later run to summarise: what the ledger says too, so that records = events +
    # rejected + duplicates + pending_in_state - pending_before holds from --json alone. A run
    # sessionizes all it reads and closes every session (README: every run writes every session),
    # so it leaves none, and starts from none (a state an older sessionflow left holding buffered
    # events or open sessions is refused: runtimes/local/state_file.py).
    pending_before: int = 0
    pending_in_state: int = 0
    open_sessions: int = 0
    events_in_open_sessions: int = 0

    @property
    def records_per_second(self) -> float:
        """Input records read per second of the run (blank lines not counted): valid or not."""
        return self.tally.records / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "tally": self.tally.to_dict(),
            "seconds": round(self.seconds, 3),
            # Named events_per_second before: it always counted records read (README, --json).
            "records_per_second": round(self.records_per_second),
            "pending_before": self.pending_before,
            "pending_in_state": self.pending_in_state,
            "open_sessions": self.open_sessions,
            "events_in_open_sessions": self.events_in_open_sessions,
            "flushed": self.flushed,
            "files": self.files,
            "inputs": self.inputs,
            "nothing_new": self.nothing_new,
            "dedupe_memory_bytes": self.dedupe_memory_bytes,
            "sessionizer": implementation(),  # "compiled" or "pure": which one ran (README, Compiled parts)
        }


Progress = Callable[[int], None]  # called with the bytes just consumed


def write_problem(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder``, or None. The probe has no name (a killed run
    leaves nothing behind) where the system allows, else it is removed at once."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def check_state_writable(path: Path) -> None:
    """The state file can be put in place: its folder (or the nearest one that exists) takes a file."""
    if path.is_dir():
        raise OutputError(f"{path}: the --state path is a directory; name a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the missing folders are created when the state is written
    problem = write_problem(folder)
    if problem is not None:
        raise OutputError(f"{path}: the state file cannot be written here: {problem}")


def prepare_lake(lake: Path, *, stateful: bool, overwrite: bool) -> list[int]:
    """Lock held: finish what killed runs left, then check the lake can take this run.

    Returns the runs an earlier, killed process had committed and this call published.
    """
    finished = recover(lake)
    if finished:
        log.warning("%s: finished publishing run(s) %s, committed by a run that was stopped", lake, finished)
    if not overwrite and not stateful and lake_exists(lake):
        raise OutputError(f"{lake}: already holds a lake; pass --overwrite to replace it, or --state to add runs to it")
    problem = write_problem(lake)
    if problem is not None:
        raise OutputError(f"{lake}: cannot write: {problem}")
    return finished


def _claim_lake_folder(lake: Path) -> Path | None:
    """Create or check the lake folder; returns what this run created (a failure takes it back).

    sessionflow writes into a new or empty folder, or into a lake it wrote (its meta folder is
    the marker): never among someone else's files, which ``--overwrite`` could then not tell apart.
    """
    if lake.exists() and not lake.is_dir():
        raise OutputError(f"{lake}: exists and is not a directory")
    if lake.is_dir():
        if is_lake(lake):
            return None
        foreign = sorted(p.name for p in lake.iterdir() if not p.name.startswith("."))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputError(
                f"{lake}: holds files that are not a sessionflow lake ({shown}); "
                "sessionflow writes only into a new or empty folder, or a lake it wrote: choose another --out"
            )
        return lake / META_DIR
    try:
        lake.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{lake}: cannot create: {exc.strerror}") from None
    return lake


def _take_back(lake: Path, created: Path | None) -> None:
    """A failed first run leaves nothing behind: what it created goes, when it holds no run."""
    if created is None or not created.is_dir() or ledger_files(lake) or pending_commits(lake):
        return
    if created == lake and any(p.name != META_DIR for p in lake.iterdir()):
        return
    shutil.rmtree(created, ignore_errors=True)


def default_workers() -> int:
    """Worker processes for refining: one per core; none on a single core (pickling would only cost)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores > 1 else 0


def run(
    inputs: list[str],
    lake: Path,
    config: Config,
    *,
    state_path: Path | None = None,
    flush: bool = False,
    overwrite: bool = False,
    now_ms: int | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    allow_empty: bool = False,
) -> RunReport:
    """One run of the embedded pipeline. Raises InputError, OutputError, StateError or UsageError.

    Inputs that name no file at all are an InputError unless ``allow_empty`` (the run then reads
    nothing, and its report lists no input).

    On any error nothing of the run is published, and a lake folder this run created is removed.
    """
    started = time.perf_counter()
    if overwrite and state_path is not None:
        raise UsageError("--overwrite with --state: the state belongs to the lake being replaced")
    own = [lake] if state_path is None else [lake, state_path]
    sources = expand_inputs(inputs, own)  # a missing input fails before the lake is touched
    if not sources and not allow_empty:
        why = "; ".join(why_no_files(given) for given in inputs)
        raise InputError(f"no input to read: {why} (pass --allow-empty to run on nothing)")
    if state_path is not None:
        check_state_writable(state_path)  # before any input is read, not when the run commits
    created = _claim_lake_folder(lake)
    try:
        with LakeLock(lake):
            prepare_lake(lake, stateful=state_path is not None, overwrite=overwrite)
            identity = lake_identity(lake)
            state = load_state(state_path, config, identity)
            options = _Options(state_path, flush, overwrite, now_ms, workers, progress, started, identity)
            return _run_locked(sources, lake, config, state, options)
    except BaseException:
        _take_back(lake, created)
        raise


@dataclass(frozen=True)
class _Options:
    state_path: Path | None
    flush: bool
    overwrite: bool
    now_ms: int | None
    workers: int | None
    progress: Progress | None
    started: float
    lake: LakeIdentity


def _run_locked(sources: list[Source], lake: Path, config: Config, state: RunState, options: _Options) -> RunReport:
    state_path = options.state_path
    # A replacing run is run 1 of the new lake; the old lake stays whole until it commits.
    number = 1 if options.overwrite else next_run_number(lake)
    now = options.now_ms if options.now_ms is not None else int(time.time() * 1000)
    # The files an incremental run writes through this writer (what it places and carries over, once
    # the lake has events) each hold one span of time: a later restatement rewrites few of them.
    span = config.output.file_span_ms if state_path is not None else None
    writer = LakeWriter(lake, config, number, span_ms=span)
    assembler = Assembler(writer.events.add_table, writer.sessions.add_table)
    tally = assembler.tally
    engine = None
    batch = None
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived containers, no cycles: the collector only costs here
    try:
        workers = default_workers() if options.workers is None else options.workers
        engine = Engine(config, now, workers)
        before = LakeFiles.of(lake) if state_path is not None else None
        placing = before is not None and not before.is_empty()
        bucket_bytes = PLACING_BUCKET_BYTES if placing else BUCKET_RAW_BYTES
        batch = BatchRun(config, sources, writer.staging / SPILL_DIR, bucket_bytes)
        read = _read_inputs(sources, config, state, engine, batch, writer, tally, options)
        if state_path is not None and read.all_seen and not tally.records:
            # The same command again after its run was published: publishing an empty run would
            # make the lake differ from one where the first attempt simply finished.
            writer.abort()
            seconds = time.perf_counter() - options.started
            log.warning("every input was read by earlier runs: nothing new to publish")
            return RunReport(number - 1, tally, seconds, True, 0, read.inputs, nothing_new=True)
        quorum = config.session.clock_quorum
        # The stream clock at the end of this run's input: the sessions still open then are closed
        # against it (their close_reason), in every bucket alike.
        end_clock = RunState(newest=dict(state.newest))
        end_clock.advance(read.leaders, quorum)
        index: RunIndex | None = None
        bucket_files: list[Path] = []
        restated: dict[str, Any] = {}
        removed: list[str] = []
        if not placing:
            # Nothing to place among: a plain batch. Fresh workers for the buckets: forked from this
            # process, they share its pages, and not the refining workers' heaps (~140 MB each on 1M
            # events, bench/README.md).
            engine.close()
            engine = Engine(config, now, workers)
            done = batch.sessionize_all(engine, number, lake, end_clock.clock(quorum))
            crash_point("bucket")
            bucket_files = done.files
            tally.events += done.events
            tally.late += done.late
            tally.duplicates += done.duplicates
            tally.sessions += done.sessions
            engine.close()
        else:
            assert before is not None
            engine.close()  # the refining workers' memory goes before the buckets are read
            index = RunIndex(lake, writer.staging)
            clock = state.clock(quorum)
            plan = Plan(
                str(lake),
                str(batch.spill.folder),
                config,
                number,
                None if clock is None else clock - config.session.restate_horizon_ms,
                end_clock.clock(quorum),
                before,
                index.days,
            )
            outcome = restate_run(
                batch, plan, lambda: Engine(config, now, workers), writer, tally, index, _ledgers(lake)
            )
            restated, removed = outcome.ledger, outcome.removed
        for rows in batch.rejections().values():
            tally.rejected[Reason.CONFLICTING_DUPLICATE.value] += len(rows)
            writer.write([], [], rows)
        files = [*writer.close(), *bucket_files]
        report_ = RunReport(number, tally, time.perf_counter() - options.started, True, len(files), read.inputs)
        staged_index: list[str] = []
        if index is not None:
            staged_index, report_.dedupe_memory_bytes = index.stage(
                _sources_after(index, writer.staging, files, removed)
            )
        ledger = ledger_record(
            report_.to_dict(),
            files,
            replace=options.overwrite,
            config_fingerprint=session_fingerprint(config),
            pending_before=report_.pending_before,
            pending_in_state=report_.pending_in_state,
            open_sessions=(report_.open_sessions, report_.events_in_open_sessions),
        )
        ledger["inputs"] = read.positions
        ledger.update(restated)
        if state_path is not None:
            for key, position in read.new_positions.items():
                state.inputs.pop(key, None)  # re-inserted last: the newest inputs are kept longest
                state.inputs[key] = {**position.to_dict(), "run": number}
            state.runs += 1
            state.advance(read.leaders, quorum)
            stage_state(writer.staging, state_payload(config, state, options.lake))
        commit_run(
            writer.staging,
            run=number,
            files=files,
            ledger=ledger,
            state_path=state_path,
            replace=options.overwrite,
            remove=removed,
            index=staged_index,
        )
    except OSError as exc:
        writer.abort()
        raise OutputError(f"{lake}: cannot write: {exc}") from exc
    except BaseException:
        writer.abort()
        raise
    finally:
        if batch is not None:
            batch.close()
        if engine is not None:
            engine.close()
        if gc_was_enabled:
            gc.enable()
    publish(lake, writer.staging, number)
    return report_


@dataclass
class _Read:
    """What reading the inputs gave the ledger and the state."""

    inputs: list[dict[str, Any]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)  # where each input started and ended
    new_positions: dict[str, Position] = field(default_factory=dict)
    all_seen: bool = True  # every input had been read whole by earlier runs
    # The newest timestamp of the blocks' most advanced machines (engine.block_leaders): the stream
    # clock's part of this run's input, over every valid event read (copies included).
    leaders: dict[str, int] = field(default_factory=dict)


def _read_inputs(
    sources: list[Source],
    config: Config,
    state: RunState,
    engine: Engine,
    batch: BatchRun,
    writer: LakeWriter,
    tally: Tally,
    options: _Options,
) -> _Read:
    """Every input refined: rejections written, events into the run's buckets."""
    read = _Read(all_seen=bool(sources))
    for index, given in enumerate(sources):
        key = _input_key(given) if options.state_path is not None else None
        remembered = state.inputs.get(key) if key is not None else None
        source = bounded(
            given,
            max_line_bytes=config.validation.max_record_bytes + LINE_SLACK,
            resume=Position.from_dict(remembered) if remembered is not None else None,
        )
        copy = batch.copy_of(index)
        try:
            for block in engine.blocks(source, options.progress, copy, batch.spill.to(index)):
                add_oversized(block, source, config)
                tally.records += block.records
                tally.blank += block.blank
                tally.rejected.update(block.rejected)
                for machine, newest in block.leaders or ():
                    if newest > read.leaders.get(machine, newest - 1):
                        read.leaders[machine] = newest
                batch.add(block)
                writer.write([], [], block.rejections)
                crash_point("batch")
        finally:
            if copy is not None:
                copy.close()
        report = source.report
        position = report.position or report.start
        if not report.resumed or position.bytes != report.start.bytes:
            read.all_seen = False
        if key is not None:
            read.new_positions[key] = position
        read.inputs.append({"source": given.name, "lines": position.lines})
        read.positions.append(
            {
                "source": given.name,
                "start_line": report.start.lines,
                "lines": position.lines,
                "start_byte": report.start.bytes,
                "bytes": position.bytes,
            }
        )
    return read


def _sources_after(index: RunIndex, staging: Path, files: list[Path], removed: list[str]) -> Sources:
    """The lake's event files by day once the run is in place (what the index is taken from)."""
    sources = {day: dict(names) for day, names in index.sources.items()}
    for name in removed:
        if name.startswith("events/"):
            sources.get(partition_value(name), {}).pop(name, None)
    for path in files:
        name = path.as_posix()
        if name.startswith("events/"):
            sources.setdefault(partition_value(name), {})[name] = (staging / path).stat().st_size
    return {day: names for day, names in sources.items() if names}


def _ledgers(lake: Path) -> list[dict[str, Any]]:
    return [orjson.loads(path.read_bytes()) for path in ledger_files(lake)]


def add_oversized(block: Block, source: Source, config: Config) -> None:
    """The oversized lines the reader cut out, as rejections.

    The reader stands an empty line in for an oversized one (the core counted it as blank) and
    reports it aside with its first bytes and its size.
    """
    limit = config.validation.max_record_bytes
    for line in source.report.take_oversized(block.first_line + block.lines - 1):
        rejection = Rejection(
            Reason.OVERSIZED,
            f"record is {line.size} bytes, over the limit of {limit}; only its first {len(line.prefix)} bytes are kept",
            line.prefix,
        )
        block.rejections.append(rejection_row(rejection, line.source, line.line))
        block.rejected[Reason.OVERSIZED.value] += 1
        block.records += 1
        block.blank -= 1


def _input_key(source: Source) -> str | None:
    """How a later run recognises an input: its absolute path (standard input or a pipe is never recognised)."""
    if source.path is None or source.name == STDIN or source.is_stream:
        return None
    return str(source.path.resolve())
