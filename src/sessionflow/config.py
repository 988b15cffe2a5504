"""The one configuration object, loaded from ``sessionflow.toml``.

Config objects are frozen values validated on construction; the logic that uses them lives in
``sessionflow.core``. Every error names the key it is about, so a typo never runs silently.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sessionflow.config_mapping import EventIdRule, TimeFormat, as_path, check_path
from sessionflow.config_rules import CleanFunction, CleanRule, check_rules, parse_rule
from sessionflow.config_values import (
    DAY,
    HOUR,
    MAX_DURATION_MS,
    MINUTE,
    MS,
    SECOND,
    ConfigError,
    as_int,
    as_list,
    as_name,
    check_duration,
    format_duration,
    only_keys,
    parse_duration,
)

# The names the config's users import from here, though they are defined beside it.
__all__ = [
    "DAY",
    "HOUR",
    "MAX_DURATION_MS",
    "MINUTE",
    "MS",
    "SECOND",
    "CleanFunction",
    "CleanRule",
    "ConfigError",
    "EventIdRule",
    "TimeFormat",
    "format_duration",
    "parse_duration",
]

# Where a command finds its config when --config is not given (every command: run, backfill, aws-local).
ENV_CONFIG = "SESSIONFLOW_CONFIG"
DEFAULT_CONFIG_FILE = "sessionflow.toml"

# 2000-01-01T00:00:00Z: nothing the app ever sent is older.
DEFAULT_MIN_TIMESTAMP_MS = 946_684_800_000
# Upper bounds of the integer keys: far beyond any real use, within what the writers index with.
MAX_RECORD_BYTES = 1 << 30
MAX_CLOCK_QUORUM = 1_000_000
MAX_ROWS_PER_FILE = 1_000_000_000
COLUMN_TYPES = ("string", "int", "float", "bool")

# What `sessionflow init` writes, and the README shows: it must work as written.
EXAMPLE_CONFIG = """\
# sessionflow.toml: see the README for every key.
[session]
timeout = "30m"
opening_events = ["app_open"]
allowed_lateness = "5m"

[[clean]]          # build 11.2.* sent timestamps in seconds
when = { app_version = "11.2.*" }
scale = { timestamp = 1000 }

[[clean]]          # some builds sent upper-case event types
lowercase = ["event_type"]
"""


@dataclass(frozen=True, slots=True)
class FieldNames:
    """Where the pipeline finds its fields in a raw record."""

    event_id: str = "event_id"
    machine_id: str = "machine_id"
    event_type: str = "event_type"
    timestamp: str = "timestamp"
    user_id: str = "user_id"
    app_version: str = "app_version"

    def __post_init__(self) -> None:
        # Two roles read from one field would leave one of them missing in every record; so would a
        # role read from inside another's object (machine_id = "context", event_id = "context.id").
        roles: dict[str, str] = {}
        for role in ("event_id", "machine_id", "event_type", "timestamp", "user_id", "app_version"):
            name = as_path(getattr(self, role), f"fields.{role}")
            for other, other_role in roles.items():
                if name == other or name.startswith(other + ".") or other.startswith(name + "."):
                    problem = "is already" if name == other else "overlaps"
                    raise ConfigError(f"fields.{role}", f"{name!r} {problem} the field of fields.{other_role}")
            roles[name] = role

    def names(self) -> tuple[str, ...]:
        """Every field (or dotted path) named here, the required four first."""
        return (self.event_id, self.machine_id, self.event_type, self.timestamp, self.user_id, self.app_version)


@dataclass(frozen=True, slots=True)
class ValidationConfig:
    max_future_skew_ms: int = DAY
    min_timestamp_ms: int = DEFAULT_MIN_TIMESTAMP_MS
    max_record_bytes: int = 1024 * 1024  # Kinesis' own record limit

    def __post_init__(self) -> None:
        if self.max_future_skew_ms < 0:
            raise ConfigError("validation.max_future_skew", "must not be negative")
        check_duration(self.max_future_skew_ms, "validation.max_future_skew")
        if self.max_record_bytes <= 0:
            raise ConfigError("validation.max_record_bytes", "must be a positive number of bytes")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    timeout_ms: int = 30 * MINUTE
    opening_events: frozenset[str] = frozenset({"app_open"})
    allowed_lateness_ms: int = 5 * MINUTE
    max_session_duration_ms: int | None = None
    dedupe_horizon_ms: int = HOUR
    # How far behind the stream clock an incremental run still places an event, restating the
    # sessions it touches (README, "Arrival order"); older ones are written late, in no session.
    restate_horizon_ms: int = 7 * DAY
    # How many machines must have reached a time before the stream clock does (see README).
    clock_quorum: int = 3

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0:
            raise ConfigError("session.timeout", "must be longer than 0")
        if self.allowed_lateness_ms < 0:
            raise ConfigError("session.allowed_lateness", "must not be negative")
        if self.max_session_duration_ms is not None and self.max_session_duration_ms <= 0:
            raise ConfigError("session.max_session_duration", "must be longer than 0")
        if self.dedupe_horizon_ms < self.allowed_lateness_ms:
            raise ConfigError(
                "session.dedupe_horizon",
                "must be at least session.allowed_lateness, or a duplicate could outlive its twin",
            )
        if self.restate_horizon_ms < self.allowed_lateness_ms:
            raise ConfigError("session.restate_horizon", "must be at least session.allowed_lateness")
        if self.clock_quorum < 1:
            raise ConfigError("session.clock_quorum", "must be at least 1")
        for key, ms in (
            ("timeout", self.timeout_ms),
            ("allowed_lateness", self.allowed_lateness_ms),
            ("max_session_duration", self.max_session_duration_ms or 0),
            ("dedupe_horizon", self.dedupe_horizon_ms),
            ("restate_horizon", self.restate_horizon_ms),
        ):
            check_duration(ms, f"session.{key}")

    @property
    def idle_close_ms(self) -> int:
        """Stream time a machine must be silent before its open session is closed."""
        return self.timeout_ms + self.allowed_lateness_ms

    @property
    def retention_ms(self) -> int:
        """Stream time a silent machine's state is kept (for dedupe and late detection)."""
        return max(self.idle_close_ms, self.dedupe_horizon_ms)


@dataclass(frozen=True, slots=True)
class OutputConfig:
    rows_per_file: int = 1_000_000
    compression: str = "zstd"
    # Incremental (--state) runs: an event file holds events of one such span of event time, a
    # session file sessions starting in one, so that restating a session rewrites only the files of
    # the time it touches (README, "Incremental runs").
    file_span_ms: int = HOUR

    def __post_init__(self) -> None:
        if self.rows_per_file <= 0:
            raise ConfigError("output.rows_per_file", "must be positive")
        if not 0 < self.file_span_ms <= DAY:
            raise ConfigError("output.file_span", "must be longer than 0 and at most a day")
        check_duration(self.file_span_ms, "output.file_span")
        if self.compression not in ("zstd", "snappy", "gzip", "none"):
            raise ConfigError("output.compression", "must be one of zstd, snappy, gzip, none")


_REQUIRED_ROLES = ("event_id", "machine_id", "event_type", "timestamp")


def column_name(field: str) -> str:
    """The output column of a ``[columns]`` field: a dotted path joined with ``_`` (``properties.doc_id``
    -> ``properties_doc_id``, as warehouses flatten nested fields)."""
    return field.replace(".", "_")


DEFAULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("user_id", "string"),
    ("app_version", "string"),
    ("os", "string"),
    ("document_id", "string"),
)


@dataclass(frozen=True, slots=True)
class Config:
    fields: FieldNames = field(default_factory=FieldNames)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    # Typed columns of the output, (field or dotted path, type); any other field goes to the `extra`
    # JSON column. A config file's [columns] adds to the defaults (see _columns). The column's name
    # is column_name(field).
    columns: tuple[tuple[str, str], ...] = DEFAULT_COLUMNS
    clean: tuple[CleanRule, ...] = ()
    output: OutputConfig = field(default_factory=OutputConfig)
    # The file this config was loaded from, None for the built-in defaults; not part of its value.
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        names = self.fields
        # Rules see raw names: the required fields, and the columns fed from renamed fields, by those.
        required = {getattr(names, role): role for role in _REQUIRED_ROLES}
        named: dict[str, str] = {}  # column name -> its field
        fields = [*required]
        for name, kind in self.columns:
            if not name.strip():
                raise ConfigError(f"columns.{name}", "a column needs a name")
            check_path(name, "columns")
            if kind not in COLUMN_TYPES:
                raise ConfigError(f"columns.{name}", f"type must be one of {', '.join(COLUMN_TYPES)}, got {kind!r}")
            column = column_name(name)
            if name in required or column in RESERVED_COLUMNS or column in _REQUIRED_ROLES:
                raise ConfigError(f"columns.{name}", "is a column sessionflow writes itself")
            if column in named:
                raise ConfigError(f"columns.{name}", f"is the column {column!r} already, from {named[column]!r}")
            for other in fields:
                if other.startswith(name + ".") or name.startswith(other + "."):
                    raise ConfigError(f"columns.{name}", f"overlaps the field {other!r} (one is inside the other)")
            named[column] = name
            fields.append(name)
        raw_names = {"user_id": names.user_id, "app_version": names.app_version}
        check_rules(self.clean, required, {raw_names.get(name, name): kind for name, kind in self.columns})

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(str(path), "config file not found") from None
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read config file: {exc.strerror}") from None
        try:
            # utf-8-sig: editors on Windows start a UTF-8 file with a BOM, which TOML itself refuses.
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                str(path), f"not UTF-8 text (byte {exc.start} is {content[exc.start]:#04x}); save the file as UTF-8"
            ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from None
        return replace(cls.from_dict(data), source=str(path))

    @property
    def origin(self) -> str:
        """Where this config comes from, as a run and check-config report it."""
        if self.source is None:
            return f"built-in defaults (no --config, ${ENV_CONFIG} or ./{DEFAULT_CONFIG_FILE})"
        return self.source

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        only_keys(data, "", {"fields", "validation", "session", "columns", "clean", "output"})
        return cls(
            fields=_fields(data.get("fields", {})),
            validation=_validation(data.get("validation", {})),
            session=_session(data.get("session", {})),
            columns=_columns(data.get("columns")),
            clean=tuple(parse_rule(raw, i) for i, raw in enumerate(as_list(data.get("clean", []), "clean"))),
            output=_output(data.get("output", {})),
        )


# Columns of the events table that sessionflow computes; a passthrough column may not shadow them.
RESERVED_COLUMNS = frozenset(
    {
        "event_time",
        "event_date",
        "event_hour",
        "day_of_week",
        "app_version_major",
        "app_version_minor",
        "extra",
        "session_id",
        "session_seq",
        "ms_since_prev",
        "late",
        "arrived_late",
    }
)


def _fields(table: Mapping[str, Any]) -> FieldNames:
    allowed = set(FieldNames.__dataclass_fields__)
    only_keys(table, "fields.", allowed)
    return FieldNames(**{k: as_path(v, f"fields.{k}") for k, v in table.items()})


def _validation(table: Mapping[str, Any]) -> ValidationConfig:
    only_keys(table, "validation.", {"max_future_skew", "min_timestamp", "max_record_bytes"})
    kwargs: dict[str, Any] = {}
    if "max_future_skew" in table:
        kwargs["max_future_skew_ms"] = parse_duration(table["max_future_skew"], "validation.max_future_skew")
    if "min_timestamp" in table:
        kwargs["min_timestamp_ms"] = _timestamp(table["min_timestamp"], "validation.min_timestamp")
    if "max_record_bytes" in table:
        kwargs["max_record_bytes"] = as_int(
            table["max_record_bytes"], "validation.max_record_bytes", 1, MAX_RECORD_BYTES
        )
    return ValidationConfig(**kwargs)


def _timestamp(value: Any, key: str) -> int:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(key, f"not an ISO-8601 date-time: {value!r}") from None
    else:
        raise ConfigError(key, f"must be an ISO-8601 date-time with a timezone, got {value!r}")
    if moment.tzinfo is None:
        raise ConfigError(key, "needs a timezone, e.g. 2000-01-01T00:00:00Z")
    return int(moment.timestamp() * 1000)


def _session(table: Mapping[str, Any]) -> SessionConfig:
    names = {
        "timeout": "timeout_ms",
        "allowed_lateness": "allowed_lateness_ms",
        "max_session_duration": "max_session_duration_ms",
        "dedupe_horizon": "dedupe_horizon_ms",
        "restate_horizon": "restate_horizon_ms",
    }
    only_keys(table, "session.", {*names, "opening_events", "clock_quorum"})
    kwargs: dict[str, Any] = {}
    for key, attr in names.items():
        if key in table:
            kwargs[attr] = parse_duration(table[key], f"session.{key}")
    if "opening_events" in table:
        events = as_list(table["opening_events"], "session.opening_events")
        kwargs["opening_events"] = frozenset(as_name(e, "session.opening_events") for e in events)
    if "clock_quorum" in table:
        kwargs["clock_quorum"] = as_int(table["clock_quorum"], "session.clock_quorum", 1, MAX_CLOCK_QUORUM)
    return SessionConfig(**kwargs)


def _columns(table: Any) -> tuple[tuple[str, str], ...]:
    """The default columns, with the declared ones added (or retyped), and those set to false removed."""
    if table is None:
        return DEFAULT_COLUMNS
    if not isinstance(table, Mapping):
        raise ConfigError("columns", 'must be a table, e.g. { page_count = "int" }')
    columns = dict(DEFAULT_COLUMNS)
    for name, kind in table.items():
        key = f"columns.{name}"
        if kind is False:
            if name not in columns:
                defaults = ", ".join(name for name, _ in DEFAULT_COLUMNS)
                raise ConfigError(key, f"false removes a default column ({defaults}); {name!r} is not one")
            del columns[name]
        elif isinstance(kind, str):
            columns[name] = kind  # its type is checked with the others, in Config
        else:
            raise ConfigError(
                key, f"must be a type ({', '.join(COLUMN_TYPES)}) or false to remove a default column, got {kind!r}"
            )
    return tuple(columns.items())


def _output(table: Mapping[str, Any]) -> OutputConfig:
    only_keys(table, "output.", {"rows_per_file", "compression", "file_span"})
    kwargs: dict[str, Any] = {}
    if "file_span" in table:
        kwargs["file_span_ms"] = parse_duration(table["file_span"], "output.file_span")
    if "rows_per_file" in table:
        kwargs["rows_per_file"] = as_int(table["rows_per_file"], "output.rows_per_file", 1, MAX_ROWS_PER_FILE)
    if "compression" in table:
        kwargs["compression"] = as_name(table["compression"], "output.compression")
    return OutputConfig(**kwargs)


def config_path(explicit: str | None) -> str | None:
    """--config, then $SESSIONFLOW_CONFIG, then ./sessionflow.toml if present; None: the defaults."""
    path = explicit or os.environ.get(ENV_CONFIG)
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    return path


def resolve_config(explicit: str | None) -> Config:
    """The config a command runs with (see :func:`config_path`)."""
    path = config_path(explicit)
    if path is None:
        return Config()
    config = Config.load(path)
    logging.getLogger("sessionflow").info("config: %s", path)
    return config
