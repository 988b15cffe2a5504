"""Helpers shared by the reliability tests: feeds, configs, lake snapshots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import EXAMPLE_CONFIG
from sessionflow.synthetic import FeedShape, generate

# Small files: a run publishes many of them, so kills land between many moves.
CONFIG = EXAMPLE_CONFIG + "\n[output]\nrows_per_file = 400\n"
_TIMING = ("seconds", "records_per_second")


def write_config(folder: Path) -> Path:
    path = folder / "sessionflow.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def write_feed_parts(folder: Path, *, events: int, machines: int, seed: int, parts: int) -> list[Path]:
    """One synthetic feed cut into ``parts`` consecutive files (hourly drops of one stream)."""
    lines = list(generate(FeedShape(events=events, machines=machines, seed=seed)))
    size = -(-len(lines) // parts)
    paths = []
    for index in range(parts):
        path = folder / f"part-{index}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines[index * size : (index + 1) * size]))
        paths.append(path)
    return paths


def snapshot(lake: Path, state: Path | None = None) -> dict[str, Any]:
    """Everything a reader or the next run sees, timing left out. Fails on leftovers."""
    seen: dict[str, Any] = {}
    for path in sorted(lake.rglob("*")):
        relative = path.relative_to(lake).as_posix()
        # The lock, and the lake's identity (an id of its own, by design not the same in two lakes).
        if path.is_dir() or relative in ("_sessionflow/lock", "_sessionflow/lake.json"):
            continue
        assert "/staging/" not in f"/{relative}", f"leftover staging file {relative}"
        assert not path.name.endswith(".tmp"), f"leftover temporary file {relative}"
        if relative.startswith("_sessionflow/ledger/"):
            ledger = orjson.loads(path.read_bytes())
            seen[relative] = {key: value for key, value in ledger.items() if key not in _TIMING}
        else:
            seen[relative] = path.read_bytes()
    if state is not None:
        # Which lake a state belongs to is that lake's id: the rest must be the same bytes.
        seen["<state>"] = orjson.loads(state.read_bytes()) | {"lake": None} if state.exists() else None
    return seen


def sessionflow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionflow", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
