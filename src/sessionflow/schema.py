"""The output tables, described without any engine: every runtime writes exactly these columns.

Types are logical names; each runtime maps them to its engine (Arrow, Spark, JSON). The events
schema is fixed whatever fields arrive: declared optional columns come from the config, anything
else lands in the ``extra`` JSON column, so readers never meet a schema conflict.
"""

from __future__ import annotations

from sessionflow.config import Config, column_name

# name -> logical type: string, int64, int32, int8, bool, float64, timestamp_ms (UTC), map<string,int64>
Column = tuple[str, str]

EVENT_HEAD: tuple[Column, ...] = (
    ("event_id", "string"),
    ("machine_id", "string"),
    ("event_type", "string"),
    ("timestamp", "int64"),  # epoch milliseconds, after cleaning
    ("event_time", "timestamp_ms"),  # the same instant, UTC; ISO-8601 in JSON outputs
    ("event_hour", "int8"),
    ("day_of_week", "int8"),  # ISO: 1 = Monday
)
EVENT_TAIL: tuple[Column, ...] = (
    ("app_version_major", "int32"),
    ("app_version_minor", "int32"),
    ("extra", "string"),  # JSON object of the fields no column declares, or null
    ("session_id", "string"),  # null for a late event
    ("session_seq", "int32"),  # 1-based position in the session
    ("ms_since_prev", "int64"),  # null for a session's first event
    ("late", "bool"),
    # It arrived after an event of its machine with a later timestamp (core.rules.arrived_late);
    # placed in its session all the same unless it is late.
    ("arrived_late", "bool"),
)
EVENT_PARTITION = "event_date"  # YYYY-MM-DD (UTC)

_COLUMN_TYPES = {"string": "string", "int": "int64", "float": "float64", "bool": "bool"}


def event_columns(config: Config) -> tuple[Column, ...]:
    """The events table without its partition column, in file order."""
    declared = tuple((column_name(name), _COLUMN_TYPES[kind]) for name, kind in config.columns)
    return EVENT_HEAD + declared + EVENT_TAIL


SESSION_COLUMNS: tuple[Column, ...] = (
    ("session_id", "string"),
    ("machine_id", "string"),
    ("user_id", "string"),  # the session's first non-null user_id
    ("start_ts", "int64"),
    ("end_ts", "int64"),
    ("session_start", "timestamp_ms"),
    ("session_end", "timestamp_ms"),
    ("duration_ms", "int64"),
    ("event_count", "int64"),
    ("first_event_type", "string"),
    ("last_event_type", "string"),
    ("event_type_counts", "map<string,int64>"),
    ("app_version", "string"),  # the session's first non-null app_version
    ("os", "string"),  # the session's first non-null os
    ("session_number", "int64"),  # 1 for the machine's first session, then 2, ... (core/rules.py)
    ("documents", "int64"),  # distinct non-null document_id values
    ("late_placed", "int64"),  # its events that arrived late (arrived_late) and were placed in it
    ("close_reason", "string"),  # timeout, opening_event, max_duration or end_of_input (core/rules.py)
)
RESTATEMENTS = "restatements"  # the restatement log table (sessionflow.lake.restatements)
SESSION_PARTITION = "session_date"  # date of session_start (UTC)

# Rejected records are JSON lines, one object per record.
REJECTED_COLUMNS: tuple[Column, ...] = (
    ("reason", "string"),  # a sessionflow.core.Reason; also the partition
    ("message", "string"),
    ("raw_base64", "string"),  # the record's bytes as they arrived
    ("raw", "string"),  # the same as text, or null when they are not UTF-8
    ("source", "string"),  # where the record was read: file, or stream/shard/sequence number
    ("line", "int64"),  # its line in that file (0 on a stream)
)
REJECTED_FIELDS: tuple[str, ...] = tuple(name for name, _ in REJECTED_COLUMNS)
REJECTED_PARTITION = "reason"
