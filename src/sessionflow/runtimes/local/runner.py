"""The embedded runner: input files -> the core -> a Parquet lake, on one machine.

A run is all-or-nothing: its files are staged and published together with its ledger and the
sessionizer state, so the lake always holds whole runs only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline, Refined, Sessionizer, Tally
from sessionflow.errors import OutputError, StateError
from sessionflow.runtimes.local.lake import META_DIR, TABLES, LakeWriter, lake_exists
from sessionflow.runtimes.local.reader import Source, expand_inputs, read_batches

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


def save_state(path: Path, config: Config, sessionizer: Sessionizer, runs: int) -> None:
    data = {
        "format": STATE_FORMAT,
        "fingerprint": session_fingerprint(config),
        "runs": runs,
        "sessionizer": sessionizer.snapshot(),
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


def run(
    inputs: list[str],
    lake: Path,
    config: Config,
    *,
    state_path: Path | None = None,
    flush: bool = False,
    overwrite: bool = False,
    now_ms: int | None = None,
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
    pipeline = Pipeline(config, now_ms if now_ms is not None else int(time.time() * 1000), sessionizer)
    writer = LakeWriter(lake, config, number)
    inputs_read: list[dict[str, Any]] = []
    try:
        out = Outputs()
        for source in sources:
            lines = 0
            for refined, last_line in refine_stream(source, pipeline, progress):
                pipeline.sessionize(refined, out)
                writer.write(out.events, out.sessions, out.rejections)
                out.clear()
                lines = last_line
            inputs_read.append({"source": source.name, "lines": lines})
        if flushed:
            pipeline.flush(out)
            writer.write(out.events, out.sessions, out.rejections)
            out.clear()
        files = writer.close()
    except OSError as exc:
        writer.abort()
        raise OutputError(f"{lake}: cannot write: {exc}") from exc
    except BaseException:
        writer.abort()
        raise
    report = RunReport(number, pipeline.tally, time.perf_counter() - started, flushed, len(files), inputs_read)
    try:
        writer.commit(files)
        if state_path is not None:
            save_state(state_path, config, pipeline.sessionizer, runs + 1)
        ledger = {**report.to_dict(), "files": [str(f) for f in files], "pending_in_state": _pending(pipeline)}
        write_atomically(_ledger_dir(lake) / f"run-{number:05d}.json", orjson.dumps(ledger, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise OutputError(f"{lake}: cannot publish run {number}: {exc}") from exc
    return report


def _pending(pipeline: Pipeline) -> int:
    return sum(len(state.pending) for state in pipeline.sessionizer.machines.values())


def refine_stream(source: Source, pipeline: Pipeline, progress: Progress | None) -> Iterator[tuple[Refined, int]]:
    """(refined batch, its last line number) in input order."""
    for batch in read_batches(source):
        if progress is not None:
            progress(sum(len(raw) for raw, _, _ in batch))
        yield pipeline.refine(batch), batch[-1][2]
