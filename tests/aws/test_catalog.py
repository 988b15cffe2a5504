"""The lake's Glue catalog follows the schema and the config by itself: nothing in it is written by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sessionflow import schema
from sessionflow.config import Config
from sessionflow.core import Reason
from sessionflow.runtimes.aws.catalog import GLUE_TYPES, TRINO_TYPES, catalog_document, lake_tables, view_definition

CONFIG = """
[validation]
min_timestamp = "2021-03-04T00:00:00Z"
max_future_skew = "36h"

[columns]
plan = "string"
"seats count" = "int"
'price "net"' = "float"
trial = "bool"
"""


@pytest.fixture
def config(tmp_path: Any) -> Config:
    path = tmp_path / "sessionflow.toml"
    path.write_text(CONFIG)
    return Config.load(path)


def test_every_logical_type_has_a_glue_and_an_athena_type() -> None:
    pytest.importorskip("pyarrow")
    from sessionflow.runtimes import arrow

    assert set(arrow._TYPES) <= set(GLUE_TYPES) == set(TRINO_TYPES)


def test_the_tables_follow_the_schema_and_the_declared_columns(config: Config) -> None:
    document = catalog_document(config)
    events = [(c["Name"], c["Type"]) for c in document["events"]["columns"]]
    assert [name for name, _ in events] == [name for name, _ in schema.event_columns(config)]
    assert (
        ("seats count", "bigint") in events and ('price "net"', "double") in events and ("trial", "boolean") in events
    )
    sessions = [c["Name"] for c in document["sessions"]["columns"]]
    assert sessions == [name for name, _ in schema.SESSION_COLUMNS]
    assert [c["Name"] for c in document["rejected"]["columns"]] == [f for f in schema.REJECTED_FIELDS if f != "reason"]
    for table in ("events", "sessions", "rejected"):
        view = [c["Name"] for c in document[table]["view"]["columns"]]
        partition = document[table]["partition_keys"][0]["Name"]
        assert view == [*[c["Name"] for c in document[table]["columns"]], partition]


def test_a_new_column_of_the_schema_reaches_the_tables(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a schema change does (another issue adds sessions columns): the next build has it."""
    monkeypatch.setattr(schema, "SESSION_COLUMNS", (*schema.SESSION_COLUMNS, ("pages_viewed", "int32")))
    from sessionflow.runtimes.aws import catalog

    monkeypatch.setattr(catalog, "SESSION_COLUMNS", schema.SESSION_COLUMNS)
    document = catalog_document(config)
    assert document["sessions"]["columns"][-1] == {"Name": "pages_viewed", "Type": "int"}
    definition = json.loads(document["sessions"]["view"]["definition"])
    assert {"name": "pages_viewed", "type": "integer"} in definition["columns"]
    assert '"pages_viewed"' in definition["originalSql"]


def test_projection_covers_what_the_validation_accepts(config: Config) -> None:
    document = catalog_document(config)
    for table, column in (("events", "event_date"), ("sessions", "session_date")):
        parameters = document[table]["parameters"]
        assert parameters["projection.enabled"] == "true"
        assert parameters[f"projection.{column}.range"] == "2021-03-04,NOW+3DAYS"  # 36 h ahead: 2 days, + today
        first = datetime.fromtimestamp(config.validation.min_timestamp_ms / 1000, UTC).date().isoformat()
        assert parameters[f"projection.{column}.range"].startswith(first)
    reasons = document["rejected"]["parameters"]["projection.reason.values"].split(",")
    assert sorted(reasons) == sorted(r.value for r in Reason)


def test_view_sql_quotes_every_name_and_keeps_one_row_per_key(config: Config) -> None:
    duckdb = pytest.importorskip("duckdb")
    events = next(t for t in lake_tables(config) if t.name == "events")
    connection = duckdb.connect()
    columns = ", ".join(
        '"' + name.replace('"', '""') + '" ' + ("BIGINT" if kind in ("int64", "int32", "int8") else "VARCHAR")
        for name, kind in events.columns
        if kind != "map<string,int64>"
    )
    connection.execute(f'CREATE TABLE "events_delivered" ({columns}, "event_date" DATE)')
    row = {name: None for name, _ in events.columns}
    names = [name for name, _ in events.columns]
    for machine, event, copies in (("m1", "e1", 3), ("m2", "e1", 1), ("m1", "e2", 2)):
        values = {**row, "machine_id": machine, "event_id": event, "timestamp": 1}
        for _ in range(copies):
            placeholders = ", ".join("?" for _ in names)
            connection.execute(
                f"INSERT INTO \"events_delivered\" VALUES ({placeholders}, DATE '2026-01-01')",
                [values[n] for n in names],
            )
    definition = json.loads(view_definition(events, "lake"))
    assert definition["schema"] == "lake"
    rows = connection.execute(definition["originalSql"]).fetchall()
    assert sorted((r[names.index("machine_id")], r[names.index("event_id")]) for r in rows) == [
        ("m1", "e1"),
        ("m1", "e2"),
        ("m2", "e1"),
    ]
