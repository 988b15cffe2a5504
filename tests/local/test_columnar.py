"""The runner's bulk enrichment equals the core's row-by-row enrichment, for any input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sessionflow.config import Config
from sessionflow.core.enrich import ENRICHED_FIELDS, Enricher
from sessionflow.runtimes.local.columnar import refined_schema, to_record_batch

CONFIG = Config()
SCHEMA = refined_schema(CONFIG)
versions = st.one_of(
    st.none(),
    st.sampled_from(["11", "11.2.3-beta", "", ".", "11.", ".2", "2147483647.2147483648", "007.08"]),
    st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){0,3}\Z"),
    st.text(alphabet="0123456789.abx-²١", max_size=14),
)
_FIRST, _LAST = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31, what a date can say
timestamps = st.one_of(
    st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000),  # 2000 .. 2100
    st.integers(min_value=_FIRST, max_value=_LAST),
    # A millisecond either side of an hour, a day, a week, the epoch, the first and the last date.
    st.builds(lambda hour, step: hour * 3_600_000 + step, st.integers(-1000, 1000), st.sampled_from([-1, 0, 1])),
    st.builds(lambda day, step: day * 86_400_000 + step, st.integers(-800, 800), st.sampled_from([-1, 0, 1])),
    st.sampled_from([_FIRST, _FIRST + 1, _LAST - 1, _LAST]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(timestamps, versions), min_size=1, max_size=40))
def test_bulk_enrichment_equals_the_core(rows: list[tuple[int, str | None]]) -> None:
    events = [
        {
            "event_id": f"e{i}",
            "machine_id": "m",
            "event_type": "view",
            "timestamp": ts,
            "user_id": None,
            "app_version": version,
            "os": None,
            "document_id": None,
            "extra": None,
        }
        for i, (ts, version) in enumerate(rows)
    ]
    columns = {name: [e[name] for e in events] for name in events[0]}
    batch = to_record_batch(columns, len(events), SCHEMA).to_pylist()
    enricher = Enricher()
    for event, got in zip(events, batch, strict=True):
        want = enricher.enrich(dict(event))
        for name in ENRICHED_FIELDS:
            if name != "event_time":
                assert got[name] == want[name], name
        assert got["event_time"] == datetime.fromisoformat(want["event_time"])
        assert got["event_time"].tzinfo is not None


def test_bulk_enrichment_against_the_standard_library() -> None:
    """An independent reference for the rule itself, at the boundaries a division gets wrong."""
    moments = [_FIRST, -86_400_001, -3_600_001, -3_600_000, -1, 0, 1, 3_599_999, 1_791_277_300_123, _LAST]
    columns: dict[str, list[Any]] = {
        name: [None] * len(moments) for name in ("event_id", "user_id", "os", "document_id", "extra")
    }
    columns |= {"machine_id": ["m"] * len(moments), "event_type": ["view"] * len(moments), "timestamp": moments}
    columns["app_version"] = ["11", "11.2.3-beta", "", None, "x.1", "0.0", "\u0661.2", "4294967296.1", "1.2.3", "7."]
    got = to_record_batch(columns, len(moments), SCHEMA).to_pylist()
    majors = [11, 11, None, None, None, 0, None, None, 1, 7]
    minors = [None, 2, None, None, 1, 0, 2, 1, 2, None]
    for ms, row, major, minor in zip(moments, got, majors, minors, strict=True):
        moment = datetime(1, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms - _FIRST)
        assert row["event_date"] == moment.date().isoformat()
        assert (row["event_hour"], row["day_of_week"]) == (moment.hour, moment.isoweekday())
        assert row["event_time"] == moment
        assert (row["app_version_major"], row["app_version_minor"]) == (major, minor)


_SUMMARY = st.fixed_dictionaries(
    {
        "session_id": st.text(max_size=8),
        "user_id": st.none() | st.text(max_size=8),
        "start_ts": st.integers(0, 2**40),
        "event_type_counts": st.dictionaries(st.text(max_size=6), st.integers(0, 2**40), max_size=4),
    }
)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(_SUMMARY, max_size=20), columns=st.integers(1, 4))
def test_rows_to_a_table_equal_arrows_own_conversion(rows: list[dict[str, object]], columns: int) -> None:
    """The lake's one-pass conversion of row dicts equals pyarrow's own, for one column or many."""
    import pyarrow as pa

    from sessionflow.lake.writer import _table

    fields = [
        pa.field("session_id", pa.string()),
        pa.field("session_start", pa.timestamp("ms", tz="UTC")),  # from start_ts
        pa.field("event_type_counts", pa.map_(pa.string(), pa.int64())),
        pa.field("user_id", pa.string()),
    ][:columns]
    schema = pa.schema(fields)
    got = _table(rows, schema)
    reference = [
        {
            "session_id": row["session_id"],
            "session_start": row["start_ts"],
            "event_type_counts": list(row["event_type_counts"].items()),  # type: ignore[attr-defined]
            "user_id": row["user_id"],
        }
        for row in rows
    ]
    expected = pa.Table.from_pylist(
        reference, schema=pa.schema([f.with_type(pa.int64()) if f.name == "session_start" else f for f in fields])
    )
    if "session_start" in schema.names:
        index = schema.get_field_index("session_start")
        expected = expected.set_column(index, fields[1], expected.column(index).cast(fields[1].type))
    assert got.equals(expected)
