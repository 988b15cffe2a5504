"""The runner's bulk enrichment equals the core's row-by-row enrichment, for any input."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from sessionflow.config import Config
from sessionflow.core.enrich import Enricher
from sessionflow.runtimes.local.columnar import refined_schema, to_record_batch

CONFIG = Config()
SCHEMA = refined_schema(CONFIG)
versions = st.one_of(
    st.none(),
    st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){0,3}\Z"),
    st.text(alphabet="0123456789.abx-²١", max_size=14),
)
timestamps = st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000)  # 2000 .. 2100


@settings(max_examples=60, deadline=None)
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
        assert got["event_date"] == want["event_date"]
        assert got["event_hour"] == want["event_hour"]
        assert got["day_of_week"] == want["day_of_week"]
        assert got["app_version_major"] == want["app_version_major"]
        assert got["app_version_minor"] == want["app_version_minor"]
        assert got["event_time"] == datetime.fromisoformat(want["event_time"])
        assert got["event_time"].tzinfo is not None
        assert got["event_time"].astimezone(UTC).isoweekday() == want["day_of_week"]
