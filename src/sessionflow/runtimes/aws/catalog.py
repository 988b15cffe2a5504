"""The lake's tables as the AWS Glue Data Catalog and Athena see them, generated from ``sessionflow.schema``.

Firehose converts the events and sessions rows to Parquet with the schema of a Glue table, and
Athena reads the bucket through the same tables, so their columns must be the embedded lake's
columns exactly. They are written here once, from the schema and the pipeline's config (declared
columns, the validation range), never by hand: a column added to the schema reaches the deployed
catalog at the next build (``deploy/build_lambda_package.py`` writes :func:`catalog_document`
beside the Lambda artifact; ``serverless.yml`` reads it).

Per table of the lake (events, sessions, rejected) the stack holds:

* ``<table>_delivered``: what Firehose delivered, partitioned by the row's own date (the reason for
  rejections), with partition projection so Athena needs no crawler or ``MSCK REPAIR``. At-least-once
  delivery can leave exact copies of a row here (docs/aws.md);
* ``<table>``: a view over it that keeps one row per key (:data:`ROW_KEYS`), so a reader never
  dedupes: the tables anyone queries are the views.

Pure: no boto3, no pyarrow. Types are the schema's logical names mapped to Glue (Hive) types and to
the Trino types an Athena view records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from sessionflow.config import DAY, Config
from sessionflow.core.rejections import Reason
from sessionflow.schema import (
    EVENT_PARTITION,
    REJECTED_COLUMNS,
    REJECTED_PARTITION,
    SESSION_COLUMNS,
    SESSION_PARTITION,
    Column,
    event_columns,
)

# The logical types of sessionflow.schema as Glue (Hive DDL) types.
GLUE_TYPES = {
    "string": "string",
    "int64": "bigint",
    "int32": "int",
    "int8": "tinyint",
    "bool": "boolean",
    "float64": "double",
    "binary": "binary",
    "timestamp_ms": "timestamp",
    "map<string,int64>": "map<string,bigint>",
    "date": "date",
}
# ... and as the Trino types Athena (engine 3) gives those Glue columns, which a view must declare.
TRINO_TYPES = {
    "string": "varchar",
    "int64": "bigint",
    "int32": "integer",
    "int8": "tinyint",
    "bool": "boolean",
    "float64": "double",
    "binary": "varbinary",
    "timestamp_ms": "timestamp(3)",
    "map<string,int64>": "map(varchar,bigint)",
    "date": "date",
}
# The partition columns: a date, YYYY-MM-DD (UTC), or the rejection's reason.
PARTITION_TYPES = {EVENT_PARTITION: "date", SESSION_PARTITION: "date", REJECTED_PARTITION: "string"}
# What identifies a row: copies of a row share it. Event ids are unique per machine only; a
# rejection is where its record was read: stream/shard/sequence number (line 0), or file and line.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "events": ("machine_id", "event_id"),
    "sessions": ("session_id",),
    "rejected": ("source", "line"),
}
DELIVERED = "{table}_delivered"
# Athena's catalog; a view's unqualified table names are looked up in its database (``schema``).
ATHENA_CATALOG = "awsdatacatalog"
DATABASE_PLACEHOLDER = "${Database}"  # filled in by the template (Fn::Sub): the stage's database
_COPY_COLUMN = "sessionflow_copy"


@dataclass(frozen=True, slots=True)
class LakeTable:
    """One table of the lake: its file columns (logical types, partition left out) and partition."""

    name: str
    columns: tuple[Column, ...]
    partition: str

    @property
    def delivered(self) -> str:
        return DELIVERED.format(table=self.name)

    @property
    def key(self) -> tuple[str, ...]:
        return ROW_KEYS[self.name]

    @property
    def all_columns(self) -> tuple[Column, ...]:
        """The columns a reader sees: the file's, then the partition."""
        return (*self.columns, (self.partition, PARTITION_TYPES[self.partition]))


def lake_tables(config: Config) -> tuple[LakeTable, ...]:
    rejected = tuple(column for column in REJECTED_COLUMNS if column[0] != REJECTED_PARTITION)
    return (
        LakeTable("events", event_columns(config), EVENT_PARTITION),
        LakeTable("sessions", SESSION_COLUMNS, SESSION_PARTITION),
        LakeTable("rejected", rejected, REJECTED_PARTITION),
    )


def glue_columns(columns: Sequence[Column]) -> list[dict[str, str]]:
    return [{"Name": name, "Type": GLUE_TYPES[kind]} for name, kind in columns]


def projection(table: LakeTable, config: Config) -> dict[str, str]:
    """Athena partition projection: every partition a row can have, known without listing S3.

    Dates run from the first day the validation accepts to a day past the future skew it allows
    (a row outside that range is rejected, never written); reasons are the core's.
    """
    column = table.partition
    prefix = f"projection.{column}"
    if PARTITION_TYPES[column] == "date":
        first = datetime.fromtimestamp(config.validation.min_timestamp_ms / 1000, tz=UTC).date().isoformat()
        ahead = -(-config.validation.max_future_skew_ms // DAY) + 1  # whole days, rounded up, plus today's
        return {
            "projection.enabled": "true",
            f"{prefix}.type": "date",
            f"{prefix}.format": "yyyy-MM-dd",
            f"{prefix}.range": f"{first},NOW+{ahead}DAYS",
            f"{prefix}.interval": "1",
            f"{prefix}.interval.unit": "DAYS",
        }
    return {
        "projection.enabled": "true",
        f"{prefix}.type": "enum",
        f"{prefix}.values": ",".join(reason.value for reason in Reason),
    }


def quoted(name: str) -> str:
    """A SQL identifier (``timestamp`` is a keyword in Trino)."""
    return '"' + name.replace('"', '""') + '"'


def view_sql(table: LakeTable) -> str:
    """One row per key of the delivered table. Copies are exact and share a partition (the row's
    own date, or its reason), so the partition leads the window: a filter on it prunes the scan."""
    names = ", ".join(quoted(name) for name, _ in table.all_columns)
    window = ", ".join(quoted(name) for name in (table.partition, *table.key))
    copy = quoted(_COPY_COLUMN)
    return (
        f"SELECT {names} FROM (SELECT *, row_number() OVER (PARTITION BY {window}) AS {copy} "
        f"FROM {quoted(table.delivered)}) WHERE {copy} = 1"
    )


def view_definition(table: LakeTable, database: str = DATABASE_PLACEHOLDER) -> str:
    """The JSON Athena keeps for a view (base64-encoded in the Glue table's ``ViewOriginalText``)."""
    definition = {
        "originalSql": view_sql(table),
        "catalog": ATHENA_CATALOG,
        "schema": database,
        "columns": [{"name": name, "type": TRINO_TYPES[kind]} for name, kind in table.all_columns],
    }
    return orjson.dumps(definition).decode()


def catalog_document(config: Config) -> dict[str, Any]:
    """What ``serverless.yml`` takes from the build, per table: the delivered table's columns,
    partition key and parameters, and its view's definition and columns."""
    document: dict[str, Any] = {}
    for table in lake_tables(config):
        document[table.name] = {
            "delivered": table.delivered,
            "columns": glue_columns(table.columns),
            "partition_keys": glue_columns([(table.partition, PARTITION_TYPES[table.partition])]),
            "parameters": {"EXTERNAL": "TRUE", **projection(table, config)},
            "view": {
                "definition": view_definition(table),
                "columns": glue_columns(table.all_columns),
            },
        }
    return document
