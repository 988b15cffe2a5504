"""The logical column types of ``sessionflow.schema`` as Arrow types, for every Arrow-based runtime."""

from __future__ import annotations

from collections.abc import Sequence

from sessionflow.schema import Column

try:
    import pyarrow as pa
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("this runtime needs pyarrow: pip install 'sessionflow[local]' (or [spark])") from exc

_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "int8": pa.int8(),
    "bool": pa.bool_(),
    "float64": pa.float64(),
    "binary": pa.binary(),
    "timestamp_ms": pa.timestamp("ms", tz="UTC"),
    "map<string,int64>": pa.map_(pa.string(), pa.int64()),
}

# Timestamp columns are the same instant as an epoch-ms column the core already holds.
TIMESTAMP_SOURCES = {"event_time": "timestamp", "session_start": "start_ts", "session_end": "end_ts"}


def arrow_type(logical: str) -> pa.DataType:
    return _TYPES[logical]


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(name, arrow_type(kind)) for name, kind in columns])
