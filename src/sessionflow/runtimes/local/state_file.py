"""The ``--state`` file of incremental runs: runs, inputs read, the stream clock, and its lake.

It belongs to one lake (an id the lake keeps in ``_sessionflow/lake.json``), remembers the settings
it was built with (a fingerprint) and how far into each input file the runs got. Format 2 keeps
no sessionizer state: every run writes every session, and the lake is the history (README,
Incremental runs). A format-1 state, of the streaming runs before, goes on when it holds nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core import Snapshot
from sessionflow.errors import OutputError, StateError
from sessionflow.lake.durable import write_atomically
from sessionflow.lake.layout import IDENTITY_FILE

# The state file's format. 2: runs, inputs, the stream clock; 1 (earlier) held a sessionizer snapshot.
STATE_FORMAT = 2
LEGACY_STATE_FORMAT = 1


def session_fingerprint(config: Config) -> str:
    """Changes whenever a setting that shapes state changes: such a state cannot be reused."""
    session = config.session
    # A frozenset's repr follows the string hash, which changes from one process to the next.
    opening = sorted(session.opening_events)
    text = repr((replace(session, opening_events=frozenset()), opening, config.fields, config.columns))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunState:
    """What a --state file holds: the run count, how far into each input, the stream clock."""

    runs: int = 0
    # Input key (absolute path) -> where the last run that read it stopped, and which run that was.
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The newest timestamp of the ``clock_quorum`` machines that reached furthest: the stream clock
    # is the oldest of them (README, "Arrival order"). Only these machines are kept: the others'
    # newest is older, and a machine can only move up with a run's events, which it reads.
    newest: dict[str, int] = field(default_factory=dict)

    def clock(self, quorum: int) -> int | None:
        """The newest time at least ``quorum`` machines reached; None before that many were seen."""
        if len(self.newest) < quorum:
            return None
        return sorted(self.newest.values(), reverse=True)[quorum - 1]

    def advance(self, newest: dict[str, int], quorum: int) -> None:
        merged = dict(self.newest)
        for machine, timestamp in newest.items():
            merged[machine] = max(timestamp, merged.get(machine, timestamp))
        self.newest = dict(sorted(merged.items(), key=lambda item: (-item[1], item[0]))[:quorum])


# A state remembers this many inputs (the most recent ones): ~200 bytes each.
MAX_REMEMBERED_INPUTS = 10_000


def load_state(path: Path | None, config: Config, lake: LakeIdentity | None = None) -> RunState:
    """The state in a file; a fresh one when there is no file (or no path: a run without state).

    ``lake``: the lake this run writes; a state that names another lake is refused (one written
    before states named their lake goes on with any).
    """
    if path is None or not path.exists():
        return RunState()
    try:
        data = orjson.loads(path.read_bytes())
        version = data.get("format")
        if version not in (LEGACY_STATE_FORMAT, STATE_FORMAT):
            raise StateError(f"{path}: unknown state format {version!r}")
        owner = data.get("lake")
        if lake is not None and owner is not None and owner["id"] != lake.id:
            raise StateError(
                f"{path}: this state belongs to the lake {owner['path']}, not to {lake.path}; "
                "run it with that lake, or start this lake with a new state file"
            )
        if version == LEGACY_STATE_FORMAT:
            return _legacy_state(path, data)
        if data["fingerprint"] != session_fingerprint(config):
            raise StateError(
                f"{path}: this state was built with other session, field or column settings; "
                "use the same config, or start with a new state file"
            )
        newest = {str(machine): int(ts) for machine, ts in data.get("newest", {}).items()}
        return RunState(int(data["runs"]), dict(data.get("inputs", {})), newest)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:  # SnapshotError too
        raise StateError(f"{path}: cannot read state: {exc}") from None


def _legacy_state(path: Path, data: dict[str, Any]) -> RunState:
    """A state of sessionflow before order-free runs, which kept open sessions and a reorder buffer.

    One left by a ``--flush`` run holds neither and goes on (its settings fingerprint is of the
    older settings, so it is not compared). One holding open sessions or buffered events is refused:
    this sessionflow writes every session at every run and has nowhere to take them from.
    """
    snapshot = Snapshot.from_dict(data["sessionizer"])
    if snapshot.machines:
        open_sessions, _ = snapshot.open_sessions()
        raise StateError(
            f"{path}: written by an earlier sessionflow, it still holds {open_sessions} open session(s) "
            f"and {snapshot.pending_events()} buffered event(s); finish it with that version "
            "(a run with --flush), then go on with this one"
        )
    return RunState(int(data["runs"]), dict(data.get("inputs", {})))


def state_payload(config: Config, state: RunState, lake: LakeIdentity | None = None) -> bytes:
    inputs = state.inputs
    if len(inputs) > MAX_REMEMBERED_INPUTS:
        newest = sorted(inputs, key=lambda key: inputs[key]["run"])[-MAX_REMEMBERED_INPUTS:]
        inputs = {key: inputs[key] for key in newest}
    data = {
        "sessionflow": "state",  # first, so a folder given as input skips the file (STATE_FILE_MARKER)
        "format": STATE_FORMAT,
        "fingerprint": session_fingerprint(config),
        "runs": state.runs,
        "inputs": inputs,
        "newest": state.newest,
    }
    if lake is not None:
        data["lake"] = {"id": lake.id, "path": str(lake.path)}
    return orjson.dumps(data)


@dataclass(frozen=True)
class LakeIdentity:
    """Which lake a state belongs to: an id made with the lake (it survives a move), and where it was."""

    id: str
    path: Path


def lake_identity(lake: Path) -> LakeIdentity:
    """The lake's id, written now when it has none (a new lake, or one from before lakes had ids)."""
    path = lake / IDENTITY_FILE
    try:
        return LakeIdentity(str(orjson.loads(path.read_bytes())["id"]), lake.resolve())
    except FileNotFoundError:
        pass
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise OutputError(f"{path}: unreadable lake identity: {exc}") from None
    identity = LakeIdentity(uuid.uuid4().hex, lake.resolve())
    try:
        write_atomically(path, orjson.dumps({"id": identity.id}))
    except OSError as exc:
        raise OutputError(f"{lake}: cannot write: {exc.strerror}") from None
    return identity
