"""Which files an input names, for every runtime that reads files (``run``, ``backfill``). Import-light.

A file (or a named pipe) is named as given; a directory yields every file below it, sorted by
path, skipping names that start with ``.`` or ``_`` (hidden files, ``_SUCCESS`` markers, a lake's
``_sessionflow``), every folder that is a sessionflow lake, every sessionflow state file, and the run's own output
(its lake and state file), so a lake kept inside its input folder is never read back as input;
each such file is named by the given path plus its path below it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Sequence
from pathlib import Path

from sessionflow.errors import InputError
from sessionflow.lake.layout import is_lake, is_state_file


def skipped(parts: Sequence[str]) -> bool:
    """A file below a given directory, by its path parts relative to it: left out when any is hidden."""
    return any(part.startswith((".", "_")) for part in parts)


def is_pipe(path: Path) -> bool:
    """A named pipe, such as the shell's ``<(zcat x.gz)``: read like standard input, once, never resumed."""
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        return False


def local_files(given: str, own: Collection[Path] = ()) -> list[tuple[str, Path]]:
    """(name, path) of each file a local input names, in reading order; raises InputError when none.

    ``own``: what the run writes (its lake folder, its state file), never read as input.
    """
    path = Path(given)
    mine = {p.resolve() for p in own}
    if path.exists() and _is_own(path.resolve(), mine):
        raise InputError(f"{given}: is this run's own output (its lake or state file), not an input")
    if path.is_dir():
        if is_lake(path):
            raise InputError(f"{given}: is a sessionflow lake, not an input")
        return [(str(p), p) for p in _files_below(path, mine)]
    if path.is_file() or is_pipe(path):
        return [(given, path)]
    if path.exists():
        raise InputError(f"{given}: not a regular file or directory")
    if path.is_symlink():
        raise InputError(f"{given}: a broken link (to {os.readlink(path)}, which does not exist)")
    raise InputError(f"{given}: no such file or directory")


def why_no_files(given: str) -> str:
    """Why a given directory names no file to read, for the message that refuses an empty run."""
    path = Path(given)
    entries = [p for p in path.rglob("*") if not p.is_dir()]
    if not entries:
        return f"{given} is an empty folder"
    hidden = [p for p in entries if skipped(p.relative_to(path).parts)]
    broken = [p for p in entries if p.is_symlink() and not p.exists()]
    reasons = []
    if hidden:
        reasons.append(f"{len(hidden)} skipped for a name starting with . or _ (e.g. {hidden[0].relative_to(path)})")
    if broken:
        reasons.append(f"{len(broken)} broken link(s) (e.g. {broken[0].relative_to(path)})")
    return f"{given} holds no file to read: " + ", ".join(reasons or ["nothing but special files"])


def _is_own(resolved: Path, mine: set[Path]) -> bool:
    return resolved in mine or any(parent in mine for parent in resolved.parents)


def _files_below(root: Path, mine: set[Path]) -> list[Path]:
    found: list[Path] = []
    seen: set[Path] = {root.resolve()}
    # Symbolic links to folders are followed, as a recursive glob does; each real folder once (no loops).
    for folder, folders, files in os.walk(root, followlinks=True):
        here = Path(folder)
        kept = []
        for name in sorted(folders):  # sorted: which of two links to one folder is kept is fixed
            real = (here / name).resolve()
            if skipped((name,)) or real in mine or real in seen or is_lake(here / name):
                continue
            seen.add(real)
            kept.append(name)
        folders[:] = kept
        found.extend(
            here / name
            for name in files
            if not skipped((name,))
            and (here / name).is_file()
            and (here / name).resolve() not in mine
            and not is_state_file(here / name)
        )
    return sorted(found)
