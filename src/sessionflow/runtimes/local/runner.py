"""The embedded runner: input files -> the core -> a Parquet lake, on one machine.

A run is all-or-nothing: its files are staged and published together with its ledger and the
sessionizer state, so the lake always holds whole runs only.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core import Sessionizer, Tally
from sessionflow.errors import OutputError, StateError
from sessionflow.runtimes.local.engine import Assembler, Engine
from sessionflow.runtimes.local.lake import META_DIR, TABLES, LakeWriter, lake_exists
from sessionflow.runtimes.local.reader import expand_inputs

log = logging.getLogger(__name__)

STATE_FORMAT = 1


@dataclass
class RunReport:
    run: int
    tally: Tally
    seconds: float
    flushed: bool
    files: int
    inputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.tally.records / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "tally": self.tally.to_dict(),
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second),
            "flushed": self.flushed,
            "files": self.files,
            "inputs": self.inputs,
        }


Progress = Callable[[int], None]  # called with the bytes just consumed


def session_fingerprint(config: Config) -> str:
    """Changes whenever a setting that shapes state changes: such a state cannot be reused."""
    session = config.session
    # A frozenset's repr follows the string hash, which changes from one process to the next.
    opening = sorted(session.opening_events)
    text = repr((replace(session, opening_events=frozenset()), opening, config.fields, config.columns))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_state(path: Path, config: Config) -> tuple[Sessionizer, int]:
    """(sessionizer, runs so far) from a state file; a fresh one when the file does not exist."""
    if not path.exists():
        return Sessionizer(config.session), 0
    try:
        data = orjson.loads(path.read_bytes())
        if data.get("format") != STATE_FORMAT:
            raise StateError(f"{path}: unknown state format {data.get('format')!r}")
        if data["fingerprint"] != session_fingerprint(config):
            raise StateError(
                f"{path}: this state was built with other session, field or column settings; "
                "use the same config, or start with a new state file"
            )
        return Sessionizer.restore(config.session, data["sessionizer"]), int(data["runs"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: cannot read state: {exc}") from None


def save_state(path: Path, config: Config, snapshot: dict[str, Any] | None, runs: int) -> None:
    """``snapshot`` is :meth:`Sessionizer.snapshot`; None after a flush (nothing left to keep)."""
    data = {
        "format": STATE_FORMAT,
        "fingerprint": session_fingerprint(config),
        "runs": runs,
        "sessionizer": snapshot or {"clock": -1, "leaders": {}, "machines": []},
    }
    write_atomically(path, orjson.dumps(data))


def write_atomically(path: Path, payload: bytes) -> None:
    """Write to a temporary name, fsync, then rename: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _ledger_dir(lake: Path) -> Path:
    return lake / META_DIR / "ledger"


def next_run_number(lake: Path) -> int:
    ledgers = _ledger_dir(lake)
    numbers = [int(p.stem.split("-")[1]) for p in ledgers.glob("run-*.json")] if ledgers.exists() else []
    return max(numbers, default=0) + 1


def prepare_lake(lake: Path, *, stateful: bool, overwrite: bool) -> None:
    if lake.exists() and not lake.is_dir():
        raise OutputError(f"{lake}: exists and is not a directory")
    if overwrite:
        for name in (*TABLES, META_DIR):
            shutil.rmtree(lake / name, ignore_errors=True)
    elif not stateful and lake_exists(lake):
        raise OutputError(f"{lake}: already holds a lake; pass --overwrite to replace it, or --state to add runs to it")
    try:
        lake.mkdir(parents=True, exist_ok=True)
        probe = lake / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{lake}: cannot write: {exc.strerror}") from None


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
) -> RunReport:
    """One run of the embedded pipeline. Raises InputError, OutputError or StateError."""
    started = time.perf_counter()
    sources = expand_inputs(inputs)
    prepare_lake(lake, stateful=state_path is not None, overwrite=overwrite)
    if state_path is not None:
        sessionizer, runs = load_state(state_path, config)
    else:
        sessionizer, runs = Sessionizer(config.session), 0
    flushed = flush or state_path is None
    number = next_run_number(lake)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    writer = LakeWriter(lake, config, number)
    assembler = Assembler(writer.events.add_table, writer.events.add)
    inputs_read: list[dict[str, Any]] = []
    engine = None
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived containers, no cycles: the collector only costs here
    try:
        engine = Engine(config, now, default_workers() if workers is None else workers)
        for source in sources:
            lines = 0
            for block in engine.blocks(source, progress):
                assembler.feed(block, sessionizer)
                writer.write([], assembler.sessions, block.rejections)
                assembler.sessions.clear()
                lines = block.first_line + block.lines - 1
            inputs_read.append({"source": source.name, "lines": lines})
        if flushed:
            sessionizer.flush(assembler)
            assembler.finish()
            snapshot = None
        else:
            snapshot = assembler.finish_partial(sessionizer)
        writer.write([], assembler.sessions, [])
        files = writer.close()
    except OSError as exc:
        writer.abort()
        raise OutputError(f"{lake}: cannot write: {exc}") from exc
    except BaseException:
        writer.abort()
        raise
    finally:
        if engine is not None:
            engine.close()
        if gc_was_enabled:
            gc.enable()
    tally = assembler.tally
    report = RunReport(number, tally, time.perf_counter() - started, flushed, len(files), inputs_read)
    try:
        writer.commit(files)
        if state_path is not None:
            save_state(state_path, config, snapshot, runs + 1)
        pending = _pending(snapshot)
        ledger = {**report.to_dict(), "files": [str(f) for f in files], "pending_in_state": pending}
        write_atomically(_ledger_dir(lake) / f"run-{number:05d}.json", orjson.dumps(ledger, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise OutputError(f"{lake}: cannot publish run {number}: {exc}") from exc
    return report


def _pending(snapshot: dict[str, Any] | None) -> int:
    if snapshot is None:
        return 0
    return sum(len(machine["pending"]) for machine in snapshot["machines"])
