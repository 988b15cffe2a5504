"""Refined events as Arrow record batches: the embedded runner's fast path.

The core refines each record exactly as everywhere else, minus the enrichment columns, which are
pure functions of ``timestamp`` and ``app_version`` and computed here on whole columns at once.
``tests/local/test_columnar.py`` proves they equal the core's row-by-row
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
from sessionflow.core.enrich import DAY_MS, iso_date, version_parts
from sessionflow.runtimes.arrow import arrow_schema
from sessionflow.schema import EVENT_PARTITION, SESSION_COLUMNS, SESSION_PARTITION, event_columns

SESSION_FIELDS = ("session_id", "session_seq", "ms_since_prev", "late")
ENRICHED = ("event_time", "event_hour", "day_of_week", "app_version_major", "app_version_minor")


def refined_schema(config: Config) -> pa.Schema:
    """The events schema without the sessionizer's columns, plus the partition column."""
    schema = arrow_schema(event_columns(config))
    for name in SESSION_FIELDS:
        schema = schema.remove(schema.get_field_index(name))
    return schema.append(pa.field(EVENT_PARTITION, pa.string()))


def session_schema_fields() -> list[pa.Field]:
    return [
        pa.field("session_id", pa.string()),
        pa.field("session_seq", pa.int32()),
        pa.field("ms_since_prev", pa.int64()),
        pa.field("late", pa.bool_()),
    ]


def _days(timestamps: pa.Array) -> pa.Array:
    """Epoch ms -> days since 1970-01-01, rounded down (before 1970 too)."""
    return pc.cast(pc.floor(pc.divide(pc.cast(timestamps, pa.float64()), float(DAY_MS))), pa.int64())


def _dates(days: pa.Array) -> pa.Array:
    unique = pc.unique(days)
    names = pa.array([iso_date(day) for day in unique.to_pylist()], pa.string())
    return pc.take(names, pc.index_in(days, value_set=unique))


def _versions(versions: pa.Array) -> tuple[pa.Array, pa.Array]:
    encoded = pc.dictionary_encode(versions)
    parts = [version_parts(v) for v in encoded.dictionary.to_pylist()]
    majors = pa.array([p[0] for p in parts], pa.int32())
    minors = pa.array([p[1] for p in parts], pa.int32())
    return pc.take(majors, encoded.indices), pc.take(minors, encoded.indices)


def to_record_batch(columns: Mapping[str, Sequence[Any]], rows: int, schema: pa.Schema) -> pa.RecordBatch:
    """Refined (not enriched) events, column by column -> one record batch of ``refined_schema``."""
    timestamps = pa.array(columns["timestamp"], pa.int64()) if rows else pa.array([], pa.int64())
    days = _days(timestamps)
    time_of_day = pc.subtract(timestamps, pc.multiply(days, DAY_MS))
    computed: dict[str, pa.Array] = {
        "timestamp": timestamps,
        "event_time": timestamps.cast(pa.timestamp("ms", tz="UTC")),
        "event_hour": pc.cast(pc.divide(time_of_day, 3_600_000), pa.int8()),
        "day_of_week": pc.cast(pc.add(pc.remainder(pc.add(days, 3), 7), 1), pa.int8()),
        EVENT_PARTITION: _dates(days),
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
    return table.append_column(pa.field(SESSION_PARTITION, pa.string()), _dates(_days(start)))
