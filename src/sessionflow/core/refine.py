"""One raw record (the bytes of one JSON object) -> a valid, cleaned, enriched event or a rejection.

Pure: no I/O and no clock of its own; processing time is passed in. Every failure mode of a record
becomes a :class:`Rejection` with a reason code; nothing here raises on bad input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from sessionflow.config import Config, column_name
from sessionflow.core.cleaning import compile_rules
from sessionflow.core.enrich import Enricher
from sessionflow.core.paths import Parts, is_path, parts_of, pop_path
from sessionflow.core.rejections import Reason, Rejection, RejectRecord

Event = dict[str, Any]

_BOM = b"\xef\xbb\xbf"
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
# orjson keeps the integers in [-2**63, 2**64 - 1] and turns any other into a float; such a float is
# at least 2**64 or at most -2**63, and the integer's text has at least 19 digits.
_UINT64_MAX = 2**64 - 1
_WIDE_FLOAT_LOW = -(2.0**63)
_WIDE_FLOAT_HIGH = 2.0**64
_LONG_INTEGER = re.compile(rb"-?[0-9]{19,}")
_WIDE = "an integer beyond 64 bits cannot be kept exactly"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
}
# How a message names what a column takes: "an int", never "a int".
_COLUMN_KIND_NAMES = {"string": "a string", "int": "an int", "float": "a float", "bool": "a bool"}


def strip_record(raw: bytes) -> bytes:
    """Remove what a line carries around its JSON: a BOM, CR of CRLF, surrounding blanks."""
    if raw.startswith(_BOM):
        raw = raw[3:]
    return raw.strip()


def parse_timestamp(value: Any) -> int | str:
    """Epoch ms from an integer (or an integral float) or an ISO-8601 string with a timezone.

    Returns an error message (str) instead of raising; the caller turns it into a rejection.
    """
    if isinstance(value, bool):
        return "timestamp must be integer epoch milliseconds or an ISO-8601 string, got a boolean"
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        return f"timestamp must be whole milliseconds, got {value!r}"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return f"timestamp {value[:64]!r} is not an ISO-8601 date-time"
        if moment.tzinfo is None:
            return f"timestamp {value[:64]!r} has no timezone"
        return (moment - _EPOCH) // _MILLISECOND
    return f"timestamp must be integer epoch milliseconds or an ISO-8601 string, got {type(value).__name__}"


_MILLISECOND = datetime.resolution * 1000


class Refiner:
    """Parses, cleans, validates and enriches records for one configuration.

    :meth:`refine` is built once per configuration as a closure over plain locals: it runs for
    every record, and attribute lookups are a measurable part of its cost.
    """

    def __init__(self, config: Config, *, enrich: bool = True) -> None:
        """``enrich=False`` leaves out the derived columns, for runtimes that compute them in bulk."""
        self.config = config
        columns = config.columns
        # (column name, where refine() finds its value after lifting nested fields: see _lifted).
        self._string_columns = tuple((column_name(name), _key(name)) for name, kind in columns if kind == "string")
        self._typed_columns = tuple(
            (column_name(name), _key(name), _COLUMN_TYPES[kind], kind) for name, kind in columns if kind != "string"
        )
        # The keys of every event refine() returns, in order (before enrichment).
        self.event_fields: tuple[str, ...] = (
            "event_id",
            "machine_id",
            "event_type",
            "timestamp",
            *(name for name, _ in self._string_columns),
            *(name for name, _, _, _ in self._typed_columns),
            "extra",
        )
        self.refine = self._compile(Enricher().enrich if enrich else None)

    def _compile(self, enrich: Callable[[Event], Event] | None) -> Callable[[bytes, int], Event | Rejection]:
        config = self.config
        names = config.fields
        id_name, machine_name, type_name, ts_name = names.event_id, names.machine_id, names.event_type, names.timestamp
        required = (id_name, machine_name, type_name)
        id_key, machine_key, type_key, ts_key = _key(id_name), _key(machine_name), _key(type_name), _key(ts_name)
        # Raw names of the optional fields that have canonical output names.
        renames = tuple(
            (_key(raw), canonical)
            for raw, canonical in ((names.user_id, "user_id"), (names.app_version, "app_version"))
            if raw != canonical
        )
        string_columns = self._string_columns
        typed_columns = self._typed_columns
        lift = _lifted((*names.names(), *(name for name, _ in config.columns)))
        clean = compile_rules(config.clean, names)
        max_bytes = config.validation.max_record_bytes
        min_ts = config.validation.min_timestamp_ms
        skew = config.validation.max_future_skew_ms
        loads = orjson.loads
        dumps = orjson.dumps
        sort_keys = orjson.OPT_SORT_KEYS
        decode_error = orjson.JSONDecodeError
        suspect_types = frozenset({float, dict, list})
        encode_error = orjson.JSONEncodeError

        def refine(raw: bytes, now_ms: int) -> Event | Rejection:
            """``raw`` is one record without its line end (see :func:`strip_record`)."""
            if len(raw) > max_bytes:
                return Rejection(Reason.OVERSIZED, f"record is {len(raw)} bytes, over the limit of {max_bytes}", raw)
            try:
                record = loads(raw)
            except decode_error as exc:
                return _undecodable(raw, exc)
            if type(record) is not dict:
                return Rejection(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_kind(record)}", raw)
            if clean is not None:
                try:
                    record = clean(record)
                except RejectRecord as exc:
                    return Rejection(exc.reason, exc.message, raw)
                except Exception as exc:  # a user's function must not stop the stream
                    return Rejection(Reason.CLEANING_FAILED, f"cleaning failed: {type(exc).__name__}: {exc}", raw)
                if type(record) is not dict:
                    return Rejection(Reason.CLEANING_FAILED, "a cleaning function returned a non-dict", raw)
            if lift is not None:
                lift(record)
            for raw_name, canonical in renames:
                if raw_name in record:
                    record[canonical] = record.pop(raw_name)
            event_id = record.pop(id_key, None)
            machine_id = record.pop(machine_key, None)
            event_type = record.pop(type_key, None)
            # One test for the common case (three non-blank strings); the loop says what is wrong.
            if not (
                str is type(event_id) is type(machine_id) is type(event_type)
                and event_id
                and machine_id
                and event_type
                and not (event_id.isspace() or machine_id.isspace() or event_type.isspace())
            ):
                for name, value in zip(required, (event_id, machine_id, event_type), strict=True):
                    if type(value) is not str:
                        return _field_problem(raw, name, value)
                    if not value or value.isspace():
                        return Rejection(Reason.EMPTY_FIELD, f"field {name!r} is empty", raw)
                raise AssertionError("unreachable: the fields passed the loop but not the test")
            ts = record.pop(ts_key, None)
            if type(ts) is not int:
                if ts is None:  # null is missing, as for the other required fields
                    return Rejection(Reason.MISSING_FIELD, f"field {ts_name!r} is missing or null", raw)
                if _holds_wide_float(ts) and _wide_integer_in(raw):
                    return Rejection(Reason.MALFORMED_JSON, _WIDE, raw)
                parsed = parse_timestamp(ts)
                if isinstance(parsed, str):
                    return Rejection(Reason.INVALID_TIMESTAMP if type(ts) is str else Reason.WRONG_TYPE, parsed, raw)
                ts = parsed
            if ts < min_ts or ts > now_ms + skew:
                return Rejection(
                    Reason.TIMESTAMP_OUT_OF_RANGE,
                    f"timestamp {ts} is outside [{min_ts}, processing time + {skew} ms]",
                    raw,
                )
            event: Event = {"event_id": event_id, "machine_id": machine_id, "event_type": event_type, "timestamp": ts}
            for name, key in string_columns:
                value = record.pop(key, None)
                if value is not None and type(value) is not str:
                    if _holds_wide_float(value) and _wide_integer_in(raw):
                        return Rejection(Reason.MALFORMED_JSON, _WIDE, raw)
                    return Rejection(
                        Reason.WRONG_TYPE, f"field {_label(key)!r} must be a string, got {_json_kind(value)}", raw
                    )
                event[name] = value
            for name, key, types, kind in typed_columns:
                value = record.pop(key, None)
                if value is not None:
                    if type(value) not in types:
                        if _holds_wide_float(value) and _wide_integer_in(raw):
                            return Rejection(Reason.MALFORMED_JSON, _WIDE, raw)
                        return Rejection(
                            Reason.WRONG_TYPE,
                            f"field {_label(key)!r} must be {_COLUMN_KIND_NAMES[kind]}, got {_json_kind(value)}",
                            raw,
                        )
                    if kind == "int" and not _INT64_MIN <= value <= _INT64_MAX:
                        return Rejection(Reason.WRONG_TYPE, f"field {_label(key)!r} does not fit a 64-bit integer", raw)
                    if kind == "float" and type(value) is int:
                        value = float(value)  # a float column takes whole numbers too, even past 64 bits
                event[name] = value
            for value in record.values():
                # Only a float or a container can hold what orjson made of an integer beyond 64 bits.
                if type(value) in suspect_types and _holds_wide_float(value) and _wide_integer_in(raw):
                    return Rejection(Reason.MALFORMED_JSON, _WIDE, raw)
            try:
                event["extra"] = dumps(record, option=sort_keys).decode() if record else None
            except encode_error as exc:  # nested deeper than orjson writes (it reads deeper)
                return Rejection(
                    Reason.MALFORMED_JSON, f"the fields without a column cannot be kept as JSON: {exc}", raw
                )
            return event if enrich is None else enrich(event)

        return refine


_MISSING = object()


def _key(name: str) -> str | Parts:
    """Where refine() finds a configured field once nested ones are lifted: its name, or its path's parts."""
    return parts_of(name) if is_path(name) else name


def _label(key: str | Parts) -> str:
    return key if isinstance(key, str) else ".".join(key)


def _lifted(names: tuple[str, ...]) -> Callable[[dict[Any, Any]], None] | None:
    """A step moving every configured nested field to the top of the record, under its path's parts.

    The key is a tuple, which no JSON object has: a field the record has at its top level under
    the dotted name itself stays what it is. None when no configured field is nested.
    """
    paths = tuple(dict.fromkeys(parts_of(name) for name in names if is_path(name)))
    if not paths:
        return None

    def lift(record: dict[Any, Any]) -> None:
        for parts in paths:
            value = pop_path(record, parts, _MISSING)
            if value is not _MISSING:
                record[parts] = value

    return lift


def _undecodable(raw: bytes, exc: Exception) -> Rejection:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as decode_error:
        return Rejection(Reason.INVALID_UTF8, f"not valid UTF-8 at byte {decode_error.start}", raw)
    return Rejection(Reason.MALFORMED_JSON, f"not valid JSON: {exc}", raw)


def _field_problem(raw: bytes, name: str, value: Any) -> Rejection:
    if _holds_wide_float(value) and _wide_integer_in(raw):
        return Rejection(Reason.MALFORMED_JSON, _WIDE, raw)
    if value is None:
        return Rejection(Reason.MISSING_FIELD, f"field {name!r} is missing or null", raw)
    return Rejection(Reason.WRONG_TYPE, f"field {name!r} must be a string, got {_json_kind(value)}", raw)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class _WideInteger(Exception):
    pass


def _exact_int(text: str) -> int:
    value = int(text)
    if not _INT64_MIN <= value <= _UINT64_MAX:
        raise _WideInteger
    return value


def _holds_wide_float(value: Any) -> bool:
    """Whether ``value`` is or holds a float as large as orjson makes of an integer beyond 64 bits."""
    kind = type(value)
    if kind is float:
        return bool(value >= _WIDE_FLOAT_HIGH or value <= _WIDE_FLOAT_LOW)
    if kind is dict:
        return any(_holds_wide_float(item) for item in value.values())
    if kind is list:
        return any(_holds_wide_float(item) for item in value)
    return False


def _wide_integer_in(raw: bytes) -> bool:
    """Whether the JSON text holds an integer beyond 64 bits (and not only a large float, such as 1e30).

    Rare, so thorough: the digits may be in a string or a fraction, which only a parser that keeps
    integers exact (the standard library's) can tell apart.
    """
    if not any(not _INT64_MIN <= int(digits) <= _UINT64_MAX for digits in _LONG_INTEGER.findall(raw)):
        return False
    try:
        json.loads(raw, parse_int=_exact_int)
    except _WideInteger:
        return True
    except RecursionError:  # nested deeper than it parses: refuse rather than keep a rounded number
        return True
    return False
