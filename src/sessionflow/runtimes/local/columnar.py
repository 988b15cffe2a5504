"""Refined events as Arrow record batches: the embedded runner's fast path.

The core refines each record exactly as everywhere else, minus the enrichment columns, which are
pure functions of ``timestamp`` and ``app_version``: the core's own functions
(:func:`~sessionflow.core.enrich.hour_fields`, :func:`~sessionflow.core.enrich.version_parts`)
are called once per distinct hour and version of a batch, and their results spread over the rows
with Arrow. ``tests/local/test_columnar.py`` holds the result equal to the core's row-by-row
:class:`sessionflow.core.enrich.Enricher` for any timestamp and version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from itertools import accumulate
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sessionflow.config import Config
from sessionflow.core.enrich import HOUR_MS, hour_fields, version_parts
from sessionflow.runtimes.arrow import arrow_schema
from sessionflow.schema import EVENT_PARTITION, SESSION_COLUMNS, SESSION_PARTITION, event_columns

SESSION_FIELDS = ("session_id", "session_seq", "ms_since_prev", "late")
ARRIVED_LATE = "arrived_late"  # the batch run's column: what arrival order said (runtimes/local/batch.py)


def refined_schema(config: Config) -> pa.Schema:
    """The events schema without the sessionizer's columns and ``arrived_late``, plus the partition column."""
    schema = arrow_schema(event_columns(config))
    for name in (*SESSION_FIELDS, ARRIVED_LATE):
        schema = schema.remove(schema.get_field_index(name))
    return schema.append(pa.field(EVENT_PARTITION, pa.string()))


def session_schema_fields() -> list[pa.Field]:
    return [
        pa.field("session_id", pa.string()),
        pa.field("session_seq", pa.int32()),
        pa.field("ms_since_prev", pa.int64()),
        pa.field("late", pa.bool_()),
    ]


def _floor_divide(values: pa.Array, divisor: int) -> pa.Array:
    """Integer division rounded down, before 1970 too (Arrow's integer division truncates)."""
    quotient = pc.divide(values, divisor)
    return pc.if_else(
        pc.less(pc.subtract(values, pc.multiply(quotient, divisor)), 0), pc.subtract(quotient, 1), quotient
    )


def _hour_fields(timestamps: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Epoch ms -> the core's ``hour_fields`` (event_date, event_hour, day_of_week) of each row."""
    hours = _floor_divide(timestamps, HOUR_MS)
    unique = pc.unique(hours)
    parts = [hour_fields(hour) for hour in unique.to_pylist()]
    index = pc.index_in(hours, value_set=unique)
    dates = pa.array([p[0] for p in parts], pa.string())
    hours_of_day = pa.array([p[1] for p in parts], pa.int8())
    days_of_week = pa.array([p[2] for p in parts], pa.int8())
    return pc.take(dates, index), pc.take(hours_of_day, index), pc.take(days_of_week, index)


def _versions(versions: pa.Array) -> tuple[pa.Array, pa.Array]:
    encoded = pc.dictionary_encode(versions)
    parts = [version_parts(v) for v in encoded.dictionary.to_pylist()]
    majors = pa.array([p[0] for p in parts], pa.int32())
    minors = pa.array([p[1] for p in parts], pa.int32())
    return pc.take(majors, encoded.indices), pc.take(minors, encoded.indices)


def to_record_batch(columns: Mapping[str, Sequence[Any]], rows: int, schema: pa.Schema) -> pa.RecordBatch:
    """Refined (not enriched) events, column by column -> one record batch of ``refined_schema``."""
    timestamps = pa.array(columns["timestamp"], pa.int64()) if rows else pa.array([], pa.int64())
    dates, hours, days_of_week = _hour_fields(timestamps)
    computed: dict[str, pa.Array] = {
        "timestamp": timestamps,
        # The same instant as the core's ISO text (the test holds them equal), stored as a timestamp.
        "event_time": timestamps.cast(pa.timestamp("ms", tz="UTC")),
        "event_hour": hours,
        "day_of_week": days_of_week,
        EVENT_PARTITION: dates,
    }
    if "app_version" in columns:
        versions = pa.array(columns["app_version"], pa.string())
        computed["app_version"] = versions
        computed["app_version_major"], computed["app_version_minor"] = _versions(versions)
    else:
        computed["app_version_major"] = computed["app_version_minor"] = pa.nulls(rows, pa.int32())
    arrays = []
    for fld in schema:
        array = computed.get(fld.name)
        if array is None:
            array = pa.array(columns[fld.name], fld.type) if rows else pa.array([], fld.type)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@cache
def _session_schema() -> pa.Schema:
    return arrow_schema(SESSION_COLUMNS)


def session_table(columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    """Closed sessions as the compiled sessionizer collects them (``take_sessions``) -> the
    sessions table plus its partition column. ``tests/core/test_native.py`` holds it equal to the
    lake's conversion of the pure sessionizer's summary dicts."""
    schema = _session_schema()
    start = pa.array(columns["start_ts"], pa.int64())
    end = pa.array(columns["end_ts"], pa.int64())
    map_type = schema.field("event_type_counts").type
    counts = pa.MapArray.from_arrays(
        pa.array([0, *accumulate(columns["type_lengths"])], pa.int32()),
        pa.array(columns["type_keys"], map_type.key_type),
        pa.array(columns["type_counts"], map_type.item_type),
        type=map_type,
    )
    computed = {
        "start_ts": start,
        "end_ts": end,
        "session_start": start.cast(schema.field("session_start").type),
        "session_end": end.cast(schema.field("session_end").type),
        "event_type_counts": counts,
    }
    arrays = [computed[fld.name] if fld.name in computed else pa.array(columns[fld.name], fld.type) for fld in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    return table.append_column(pa.field(SESSION_PARTITION, pa.string()), _hour_fields(start)[0])
