"""One writer per lake (an exclusive lock), and readers that wait for no writer (a shared one)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sessionflow.errors import OutputError
from sessionflow.lake.layout import lock_path


class LakeLock:
    """One writer per lake: an exclusive lock the kernel releases when the process dies, even by SIGKILL.

    Worker processes forked while it is held close their copy of it, so that a killed run's
    orphaned workers never keep its lake locked.
    """

    def __init__(self, lake: Path) -> None:
        self.path = lock_path(lake)
        self.lake = lake
        self.handle: Any = None

    def __enter__(self) -> LakeLock:
        global _fork_hook_registered  # noqa: PLW0603 - once per process
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_close_held_locks)
            _fork_hook_registered = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+b")
        except OSError as exc:  # a read-only folder, a file where the meta folder goes
            raise OutputError(f"{self.lake}: cannot write: {exc.strerror}") from None
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise OutputError(f"{self.lake}: another sessionflow run is writing to this lake") from None
        _held_locks.add(self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        _held_locks.discard(self.handle)
        self.handle.close()


_held_locks: set[Any] = set()
_fork_hook_registered = False


def _close_held_locks() -> None:
    for handle in _held_locks:
        handle.close()
    _held_locks.clear()


@contextlib.contextmanager
def shared_lock(lake: Path) -> Iterator[bool]:
    """A shared lock: no run publishes while we look. False when a run holds the lake."""
    try:
        handle = open(lock_path(lake), "rb")  # noqa: SIM115
    except OSError:  # no lock file (never written) or a read-only lake: nothing to wait for
        yield True
        return
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()
