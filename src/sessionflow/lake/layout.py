"""Names and paths of a lake: what every runtime that writes one, and ``verify``, agree on. Import-light."""

from __future__ import annotations

from pathlib import Path

from sessionflow.schema import EVENT_PARTITION, REJECTED_PARTITION, SESSION_PARTITION

META_DIR = "_sessionflow"  # readers skip names starting with "_"
# restatements/: the log of session ids runs replaced (sessionflow.lake.restatements); often absent.
TABLES = ("events", "sessions", "rejected", "restatements")
PARTITIONS = {"events": EVENT_PARTITION, "sessions": SESSION_PARTITION, "rejected": REJECTED_PARTITION}
# Relative to the lake, as "/"-separated names: the Spark backfill writes through Hadoop URIs, not Paths.
LEDGER_DIR = f"{META_DIR}/ledger"
STAGING_DIR = f"{META_DIR}/staging"
LOCK_FILE = f"{META_DIR}/lock"
# {"id": ...}: written when the lake is made; a --state file records it and refuses another lake.
IDENTITY_FILE = f"{META_DIR}/lake.json"
# The event-id index (sessionflow.lake.ids): a file of hashes per event day, and what they were taken from.
INDEX_DIR = f"{META_DIR}/ids"
INDEX_MANIFEST = f"{INDEX_DIR}/index.json"


def ledger_name(run: int) -> str:
    return f"run-{run:05d}.json"


def run_number(ledger_file_name: str) -> int:
    """``run-00012.json`` -> 12."""
    return int(ledger_file_name.split(".", maxsplit=1)[0].split("-")[1])


def staging_name(run: int) -> str:
    return f"run-{run:05d}"


def staging_root(lake: Path) -> Path:
    return lake / STAGING_DIR


def ledger_dir(lake: Path) -> Path:
    return lake / LEDGER_DIR


def ledger_path(lake: Path, run: int) -> Path:
    return ledger_dir(lake) / ledger_name(run)


def lock_path(lake: Path) -> Path:
    return lake / LOCK_FILE


# A state file's first bytes: what tells it apart from an input file in a folder given as input.
STATE_FILE_MARKER = b'{"sessionflow":"state"'


def is_state_file(path: Path) -> bool:
    """A sessionflow state file (of any run), by its first bytes: never read as input."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(STATE_FILE_MARKER)) == STATE_FILE_MARKER
    except OSError:
        return False  # unreadable: the reader says so, with the input's name


def is_lake(folder: Path) -> bool:
    """sessionflow's marker, its meta folder: a folder merely holding ``events/`` is not a lake."""
    return (folder / META_DIR).is_dir()


def lake_exists(lake: Path) -> bool:
    """The folder holds runs: at least one of sessionflow's ledgers."""
    ledgers = ledger_dir(lake)
    return ledgers.is_dir() and any(ledgers.glob("run-*.json"))
