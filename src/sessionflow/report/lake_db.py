"""A lake as DuckDB views: ``events``, ``sessions``, ``rejected``, ``restatements`` (when the lake
has a restatement log) and ``runs`` (one row per ledger), with the partition columns as columns.

The views read the lake's files where they are (Parquet and JSON lines), nothing is copied. A
table with no file yet is an empty view of its documented columns, so a query written for a lake
works on every lake. Files of different sessionflow versions are read together by column name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.errors import InputError
from sessionflow.lake.layout import ledger_dir
from sessionflow.lake.restatements import TABLE as RESTATEMENTS
from sessionflow.schema import (
    EVENT_PARTITION,
    REJECTED_FIELDS,
    SESSION_COLUMNS,
    SESSION_PARTITION,
    Column,
    event_columns,
)

try:
    import duckdb
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("reading a lake with SQL needs DuckDB: pip install 'sessionflow[local]'") from exc

# The logical types of sessionflow.schema as DuckDB's.
_DUCKDB_TYPES = {
    "string": "VARCHAR",
    "int64": "BIGINT",
    "int32": "INTEGER",
    "int8": "TINYINT",
    "bool": "BOOLEAN",
    "float64": "DOUBLE",
    "timestamp_ms": "TIMESTAMP_MS",
    "map<string,int64>": "MAP(VARCHAR, BIGINT)",
}
REJECTED_TYPES = {"reason": "VARCHAR", "message": "VARCHAR", "raw_base64": "VARCHAR", "raw": "VARCHAR"}
REJECTED_TYPES |= {"source": "VARCHAR", "line": "BIGINT"}
# What the runs view holds of each ledger (tally counts; writer-specific fields stay in the files).
RUN_COLUMNS = ("run", "records", "events", "rejected", "duplicates", "late", "sessions", "seconds")


@dataclass(frozen=True)
class LakeTables:
    """Which tables of a lake have files: an empty one is a view of no rows."""

    events: bool
    sessions: bool
    rejected: bool
    restatements: bool


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _has(folder: Path, pattern: str) -> bool:
    return folder.is_dir() and any(folder.glob(pattern))


def check_lake(lake: Path) -> None:
    """A folder a runtime wrote a lake into; else an InputError saying what it is."""
    if not lake.exists():
        raise InputError(f"{lake}: no such folder")
    if not lake.is_dir():
        raise InputError(f"{lake}: not a folder")
    if not ledger_dir(lake).is_dir() and not (lake / "events").is_dir() and not (lake / "sessions").is_dir():
        raise InputError(f"{lake}: not a sessionflow lake (no _sessionflow/ledger, events/ or sessions/)")


def open_lake(lake: Path, config: Config | None = None) -> tuple[duckdb.DuckDBPyConnection, LakeTables]:
    """An in-memory DuckDB connection with the lake's views (see the module's doc). ``config``: the
    declared columns an empty events view has (the defaults when None)."""
    check_lake(lake)
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    tables = LakeTables(
        events=_has(lake / "events", "*/*.parquet"),
        sessions=_has(lake / "sessions", "*/*.parquet"),
        rejected=_has(lake / "rejected", "*/*.jsonl"),
        restatements=_has(lake / RESTATEMENTS, "*.parquet"),
    )
    events = (*event_columns(config or Config()), (EVENT_PARTITION, "date"))
    _parquet_view(db, "events", lake / "events" / "*" / "*.parquet", tables.events, events)
    sessions = (*SESSION_COLUMNS, (SESSION_PARTITION, "date"))
    _parquet_view(db, "sessions", lake / "sessions" / "*" / "*.parquet", tables.sessions, sessions)
    if tables.rejected:
        columns = "{" + ", ".join(f"{_quoted(name)}: {_quoted(kind)}" for name, kind in REJECTED_TYPES.items()) + "}"
        source = _quoted(str(lake / "rejected" / "*" / "*.jsonl"))
        db.execute(
            f"CREATE VIEW rejected AS SELECT {', '.join(REJECTED_FIELDS)} FROM read_json({source}, "
            f"format = 'newline_delimited', columns = {columns}, hive_partitioning = false)"
        )
    else:
        db.execute(f"CREATE VIEW rejected AS SELECT * FROM ({_empty(tuple(REJECTED_TYPES.items()), raw=True)})")
    if tables.restatements:
        source = _quoted(str(lake / RESTATEMENTS / "*.parquet"))
        db.execute(f"CREATE VIEW restatements AS SELECT * FROM read_parquet({source}, union_by_name = true)")
    _runs_view(db, lake)
    return db, tables


def _parquet_view(db: Any, name: str, glob: Path, present: bool, columns: tuple[Column, ...]) -> None:
    if present:
        db.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_quoted(str(glob))}, "
            "hive_partitioning = true, union_by_name = true)"
        )
    else:
        db.execute(f"CREATE VIEW {name} AS SELECT * FROM ({_empty(columns)})")


def _empty(columns: tuple[tuple[str, str], ...], raw: bool = False) -> str:
    """A query of no rows with these columns (logical types, or DuckDB's with ``raw``)."""
    kinds = [(name, kind if raw else _DUCKDB_TYPES.get(kind, kind.upper())) for name, kind in columns]
    return "SELECT " + ", ".join(f"NULL::{kind} AS {name}" for name, kind in kinds) + " LIMIT 0"


def ledgers(lake: Path) -> list[dict[str, Any]]:
    """The lake's run ledgers, in run order (unreadable ones are verify's business: left out)."""
    found = []
    folder = ledger_dir(lake)
    for path in sorted(folder.glob("run-*.json")) if folder.is_dir() else []:
        try:
            found.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue
    return found


def _runs_view(db: Any, lake: Path) -> None:
    rows = []
    for ledger in ledgers(lake):
        tally = ledger.get("tally", {})
        rows.append(
            (
                int(ledger.get("run", 0)),
                int(tally.get("records", 0)),
                int(tally.get("events", 0)),
                int(sum(tally.get("rejected", {}).values())),
                int(tally.get("duplicates") or 0),
                int(tally.get("late", 0)),
                int(tally.get("sessions", 0)),
                float(ledger.get("seconds") or 0.0),
            )
        )
    kinds = ["INTEGER", *["BIGINT"] * 6, "DOUBLE"]
    if not rows:
        db.execute(f"CREATE VIEW runs AS SELECT * FROM ({_empty(tuple(zip(RUN_COLUMNS, kinds, strict=True)), True)})")
        return
    values = ", ".join("(" + ", ".join(repr(value) for value in row) + ")" for row in rows)
    casts = ", ".join(
        f"col{i}::{kind} AS {name}" for i, (name, kind) in enumerate(zip(RUN_COLUMNS, kinds, strict=True))
    )
    db.execute(
        f"CREATE VIEW runs AS SELECT {casts} FROM (VALUES {values}) AS t({', '.join(f'col{i}' for i in range(8))})"
    )
