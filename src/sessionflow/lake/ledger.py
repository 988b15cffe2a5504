"""The ledger: one ``_sessionflow/ledger/run-NNNNN.json`` per run, what ``sessionflow verify`` checks.

Every runtime that writes a lake writes these fields (more are allowed, and kept):

* ``run`` (1, 2, ...: no gap), ``replace`` (the run replaced the whole lake; it is then run 1);
* ``tally``: ``records`` (input records, blank lines not counted), ``events``, ``sessions``,
  ``rejected`` (per reason), ``duplicates`` and ``late``: conservation is
  ``records = events + sum(rejected) + duplicates + pending_in_state - pending_before``;
* ``files``: every file the run put in the lake, relative to it, ``/``-separated; their rows must
  be exactly the tally's events, sessions and rejections;
* ``pending_before``/``pending_in_state``: events buffered in a state before and after the run;
* ``open_sessions``/``events_in_open_sessions``: sessions whose summary a later run writes;
* ``removed`` (optional): files of earlier runs this run took out of the lake (a range backfill
  replacing days, a run restating sessions copy-on-write), as ``{"run", "files", "events",
  "sessions"}`` per earlier run, rows counted before removal: the earlier run's ledger still adds up;
* ``carried`` (optional): ``{"events", "sessions"}``, rows of those removed files the run wrote
  again: its files hold ``tally`` plus ``carried`` rows, and the lake's event rows total the runs'
  ``tally.events + carried.events`` less their ``removed`` events (a restating run carries every
  row it removed; a range backfill carries none: it recomputes the days from its input);
* ``restated`` (optional): ``{"sessions", "events"}``, old sessions replaced, and old events whose
  session columns changed;
* ``restatements`` (optional, 0 when absent): rows of the run's restatement log, a file it lists
  (``restatements/part-RRRRR-00000.parquet``, see :mod:`sessionflow.lake.restatements`).

``written_by`` says which runtime wrote it (``run`` writes none: its ledgers came first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from sessionflow.lake.layout import ledger_dir, run_number


def ledger_record(
    summary: Mapping[str, Any],
    files: Sequence[PurePath | str],
    *,
    replace: bool,
    config_fingerprint: str | None,
    pending_before: int = 0,
    pending_in_state: int = 0,
    open_sessions: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """``summary`` holds at least ``run`` and ``tally`` (a :meth:`Tally.to_dict`); the writer's own
    fields (seconds, inputs, mode ...) come along as they are. ``config_fingerprint``: the state's
    (``sessionflow run --state``), None for a writer that keeps no state of its own."""
    return {
        **summary,
        "files": [path.as_posix() if isinstance(path, PurePath) else path for path in files],
        "replace": replace,
        "config_fingerprint": config_fingerprint,
        # Conservation: records = events + rejected + duplicates + pending_in_state - pending_before.
        "pending_before": pending_before,
        "pending_in_state": pending_in_state,
        # Events already written whose session summary comes in a later run.
        "open_sessions": open_sessions[0],
        "events_in_open_sessions": open_sessions[1],
    }


def ledger_files(lake: Path) -> list[Path]:
    ledgers = ledger_dir(lake)
    return sorted(ledgers.glob("run-*.json")) if ledgers.is_dir() else []


def next_run_number(lake: Path) -> int:
    return max((run_number(path.name) for path in ledger_files(lake)), default=0) + 1
