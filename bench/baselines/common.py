"""What the DuckDB and Polars baselines share: the command line and the config, read into plain values.

A baseline is what a data engineer would write by hand for the same job: read the JSON lines,
clean, validate, dedupe, sessionize with window functions, enrich, write a partitioned Parquet
lake. The rules come from the same sessionflow.toml, so a changed config changes every contender.
Only the rule kinds the benchmark config uses are translated (``when`` + ``lowercase`` + ``scale``
of the timestamp); anything else is refused rather than silently ignored.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sessionflow.config import Config

DAY_MS = 86_400_000


@dataclass(frozen=True)
class CleanStep:
    """One cleaning rule: when every (field, patterns) matches, lowercase fields and scale the timestamp."""

    when: tuple[tuple[str, tuple[str, ...]], ...]
    lowercase: tuple[str, ...]
    timestamp_factor: float | int | None


@dataclass(frozen=True)
class Plan:
    event_id: str
    machine_id: str
    event_type: str
    timestamp: str
    user_id: str
    app_version: str
    # (output name, raw name, logical type) of the optional typed columns, in schema order.
    columns: tuple[tuple[str, str, str], ...]
    timeout_ms: int
    opening_events: tuple[str, ...]
    min_ts: int
    max_ts: int
    steps: tuple[CleanStep, ...]


def load_plan(config_path: str | None, now_ms: int) -> Plan:
    config = Config.load(config_path) if config_path else Config()
    names = config.fields
    # The canonical columns user_id and app_version may be read from other raw names.
    raw_name = {"user_id": names.user_id, "app_version": names.app_version}
    columns = tuple((name, raw_name.get(name, name), kind) for name, kind in config.columns)
    steps = []
    for rule in config.clean:
        unsupported = [
            kind for kind in ("rename", "map", "set", "drop", "function") if getattr(rule, kind) not in ((), None)
        ]
        scales = dict(rule.scale)
        if unsupported or set(scales) - {names.timestamp}:
            raise SystemExit(
                f"baseline: cleaning rule {rule.name or rule} uses {unsupported or scales}: not translated"
            )
        steps.append(CleanStep(rule.when, rule.lowercase, scales.get(names.timestamp)))
    session = config.session
    if session.max_session_duration_ms is not None:
        raise SystemExit("baseline: session.max_session_duration is not translated")
    return Plan(
        event_id=names.event_id,
        machine_id=names.machine_id,
        event_type=names.event_type,
        timestamp=names.timestamp,
        user_id=names.user_id,
        app_version=names.app_version,
        columns=columns,
        timeout_ms=session.timeout_ms,
        opening_events=tuple(sorted(session.opening_events)),
        min_ts=config.validation.min_timestamp_ms,
        max_ts=now_ms + config.validation.max_future_skew_ms,
        steps=tuple(steps),
    )


def glob_regex(pattern: str) -> str:
    """An fnmatch glob as an anchored regex both engines accept (fnmatch.translate emits \\Z)."""
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "^" + "".join(out) + "$"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", help="JSON-lines file")
    parser.add_argument("outdir", help="lake folder (replaced)")
    parser.add_argument("--config", "-c", help="sessionflow.toml (default: built-in defaults)")
    return parser.parse_args()


def fresh_dir(path: str) -> Path:
    outdir = Path(path)
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    return outdir


def now_ms() -> int:
    return int(time.time() * 1000)


def report(engine: str, started: float, events: int, sessions: int) -> None:
    """One JSON line on stdout: what the harness checks against sessionflow's counts."""
    seconds = time.perf_counter() - started
    print(json.dumps({"engine": engine, "events": events, "sessions": sessions, "seconds": round(seconds, 3)}))
    sys.stdout.flush()
