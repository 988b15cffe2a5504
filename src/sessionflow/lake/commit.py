"""Staging, the atomic commit point, roll forward and recovery (see docs/reliability.md).

1. A run writes its files, and the state it will leave, into staging/run-N (fsynced).
2. Commit point: staging/run-N/COMMIT.json (files, files it rewrote, ledger, where the state goes) appears by an
   atomic rename. Before it, the run never happened; after it, the run has happened.
3. Roll forward (idempotent, so it may be interrupted and redone any number of times): with
   ``replace``, remove the files the old ledgers list, and the event-id index; move each staged
   file into place; remove the files it rewrote (an incremental run restating sessions); move the
   event-id index files it wrote into place (``lake/ids.py``), its manifest last; write the
   state; write the ledger; drop COMMIT.json; remove the staging folder.
4. Every start recovers first: a staging folder with COMMIT.json is rolled forward, one without
   is deleted.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from sessionflow.errors import OutputError
from sessionflow.lake import durable
from sessionflow.lake.durable import fsync_dir
from sessionflow.lake.layout import INDEX_DIR, TABLES, ledger_dir, ledger_path, staging_root

MANIFEST = "COMMIT.json"
STAGED_STATE = "state.json"
MANIFEST_FORMAT = 1
CRASH_ENV = "SESSIONFLOW_CRASH_AT"  # tests only: "<step>" or "<step>:<nth>", see crash_point
_crash_counts: Counter[str] = Counter()


def crash_point(step: str) -> None:
    """Kill this process (SIGKILL, no cleanup) at a named step when $SESSIONFLOW_CRASH_AT asks.

    Only the fault-injection tests set the variable; it costs one environment lookup otherwise.
    """
    target = os.environ.get(CRASH_ENV)
    if not target:
        return
    name, _, nth = target.partition(":")
    if name != step:
        return
    _crash_counts[step] += 1
    if _crash_counts[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def stage_state(staging: Path, payload: bytes) -> None:
    with open(staging / STAGED_STATE, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def commit_run(
    staging: Path,
    *,
    run: int,
    files: list[Path],
    ledger: dict[str, Any],
    state_path: Path | None,
    replace: bool,
    remove: list[str] | None = None,
    index: list[str] | None = None,
) -> None:
    """The commit point: COMMIT.json appears atomically in the staging folder.

    ``remove``: files of earlier runs this run rewrote (an incremental run restating sessions):
    they go when the run is put in place, after its own files are in. ``index``: the event-id
    index files it staged (under ``_sessionflow/ids/``), put in place in this order after that."""
    crash_point("staged")
    manifest = {
        "format": MANIFEST_FORMAT,
        "run": run,
        "replace": replace,
        "files": [path.as_posix() for path in files],
        "remove": list(remove or []),
        "index": list(index or []),
        "state": str(state_path.resolve()) if state_path is not None else None,
        "ledger": ledger,
    }
    durable.write_atomically(staging / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    crash_point("committed")


def roll_forward(lake: Path, staging: Path) -> int:
    """Publish a committed run from its staging folder; safe to repeat after any interruption."""
    manifest = orjson.loads((staging / MANIFEST).read_bytes())
    run = int(manifest["run"])
    files = [Path(name) for name in manifest["files"]]
    if manifest["replace"]:
        _remove_all_but(lake, {path.as_posix() for path in files}, keep_ledger=run)
        shutil.rmtree(lake / INDEX_DIR, ignore_errors=True)  # the replaced lake's: a later run builds one
        crash_point("replaced")
    folders: set[Path] = set()
    for relative in files:
        staged = staging / relative
        final = lake / relative
        if staged.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            folders.add(final.parent)
            crash_point("moved")
    for relative_name in manifest.get("remove", []):
        if relative_name.split("/", 1)[0] in TABLES:  # never anything outside the tables
            (lake / relative_name).unlink(missing_ok=True)
            folders.add((lake / relative_name).parent)
            crash_point("removed")
    for relative_name in manifest.get("index", []):
        if not relative_name.startswith(f"{INDEX_DIR}/"):
            continue  # never anything else
        staged = staging / relative_name
        if staged.exists():
            final = lake / relative_name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            folders.add(final.parent)
            crash_point("index")
    for folder in folders:
        if folder.is_dir():
            fsync_dir(folder)
    state = staging / STAGED_STATE
    if manifest["state"] is not None and state.exists():
        durable.write_atomically(Path(manifest["state"]), state.read_bytes())
        crash_point("state")
    durable.write_atomically(ledger_path(lake, run), orjson.dumps(manifest["ledger"], option=orjson.OPT_INDENT_2))
    crash_point("ledger")
    # Without its manifest the folder is an uncommitted leftover: whatever happens next, it goes.
    (staging / MANIFEST).unlink()
    fsync_dir(staging)
    shutil.rmtree(staging, ignore_errors=True)
    crash_point("cleaned")
    return run


def recover(lake: Path) -> list[int]:
    """Finish what killed runs left: roll committed runs forward, delete uncommitted ones.

    Returns the runs rolled forward. Call with the lake lock held.
    """
    root = staging_root(lake)
    finished: list[int] = []
    if root.is_dir():
        for staging in sorted(root.iterdir()):
            if (staging / MANIFEST).is_file():
                try:
                    finished.append(roll_forward(lake, staging))
                except OSError as exc:  # e.g. the state's folder became unwritable since the commit
                    raise OutputError(
                        f"{lake}: {staging.name} was committed by a run that was stopped, and cannot be put "
                        f"in place: {exc}; once that can be written, the next run finishes it "
                        "(or: sessionflow verify --repair)"
                    ) from exc
            elif staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
    ledgers = ledger_dir(lake)
    if ledgers.is_dir():
        for leftover in ledgers.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
    return finished


def pending_commits(lake: Path) -> list[Path]:
    """Staging folders of committed runs not yet rolled forward (read-only)."""
    root = staging_root(lake)
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []


def _remove_all_but(lake: Path, keep: set[str], keep_ledger: int) -> None:
    """Before a replacing run is published: remove the files earlier runs' ledgers list, and those
    ledgers. Nothing else: a file sessionflow did not write is not its to delete."""
    ledgers = ledger_dir(lake)
    old_ledgers = sorted(ledgers.glob("run-*.json")) if ledgers.is_dir() else []
    listed: set[str] = set()
    for ledger in old_ledgers:
        listed.update(orjson.loads(ledger.read_bytes()).get("files", []))
    folders: set[Path] = set()
    for relative in sorted(listed - keep):
        if relative.split("/", 1)[0] not in TABLES:
            continue  # a ledger names only files in the tables; anything else is not ours
        path = lake / relative
        path.unlink(missing_ok=True)
        folders.add(path.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        # Emptied partition folders go, and a table folder left empty; never a folder with a file.
        while folder != lake and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    for ledger in old_ledgers:
        if ledger.name != ledger_path(lake, keep_ledger).name:
            ledger.unlink()


def publish(lake: Path, staging: Path, run: int) -> None:
    """After the commit point: the run has happened; put it in place (or leave it to recovery)."""
    try:
        roll_forward(lake, staging)
    except OSError as exc:
        raise OutputError(
            f"{lake}: run {run} is committed but could not be put in place: {exc}; "
            "the next run on this lake finishes it (or: sessionflow verify --repair)"
        ) from exc
