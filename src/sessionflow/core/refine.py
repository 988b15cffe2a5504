"""One raw record (the bytes of one JSON object) -> a valid, cleaned, enriched event or a rejection.

Pure: no I/O and no clock of its own; processing time is passed in. Every failure mode of a record
becomes a :class:`Rejection` with a reason code; nothing here raises on bad input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core.cleaning import compile_rules
from sessionflow.core.enrich import Enricher
from sessionflow.core.rejections import Reason, Rejection, RejectRecord

Event = dict[str, Any]

_BOM = b"\xef\xbb\xbf"
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
}


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
    """Parses, cleans, validates and enriches records for one configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        names = config.fields
        self._event_id = names.event_id
        self._machine_id = names.machine_id
        self._event_type = names.event_type
        self._timestamp = names.timestamp
        # Raw names of the optional columns that have canonical output names.
        self._renames = tuple(
            (raw, canonical)
            for raw, canonical in ((names.user_id, "user_id"), (names.app_version, "app_version"))
            if raw != canonical
        )
        self._required = (names.event_id, names.machine_id, names.event_type)
        self._columns = tuple((name, _COLUMN_TYPES[kind], kind) for name, kind in config.columns)
        self._known = frozenset({*self._required, names.timestamp, *(name for name, _ in config.columns)})
        self._clean = compile_rules(config.clean)
        self._max_bytes = config.validation.max_record_bytes
        self._min_ts = config.validation.min_timestamp_ms
        self._skew = config.validation.max_future_skew_ms
        self._enrich = Enricher().enrich

    def refine(self, raw: bytes, now_ms: int) -> Event | Rejection:
        """``raw`` is one record without its line end (see :func:`strip_record`)."""
        if len(raw) > self._max_bytes:
            return Rejection(Reason.OVERSIZED, f"record is {len(raw)} bytes, over the limit of {self._max_bytes}", raw)
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _undecodable(raw, exc)
        if type(record) is not dict:
            return Rejection(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_kind(record)}", raw)
        if self._clean is not None:
            try:
                record = self._clean(record)
            except RejectRecord as exc:
                return Rejection(Reason.REJECTED_BY_RULE, exc.message, raw)
            except Exception as exc:  # a user's function must not stop the stream
                return Rejection(Reason.CLEANING_FAILED, f"cleaning failed: {type(exc).__name__}: {exc}", raw)
            if type(record) is not dict:
                return Rejection(Reason.CLEANING_FAILED, "a cleaning function returned a non-dict", raw)
        for raw_name, canonical in self._renames:
            if raw_name in record:
                record[canonical] = record.pop(raw_name)
        for name in self._required:
            value = record.get(name)
            if type(value) is not str:
                return _field_problem(raw, name, value)
            if not value or value.isspace():
                return Rejection(Reason.EMPTY_FIELD, f"field {name!r} is empty", raw)
        if self._timestamp not in record:
            return Rejection(Reason.MISSING_FIELD, f"field {self._timestamp!r} is missing", raw)
        ts = record[self._timestamp]
        if type(ts) is not int:
            ts = parse_timestamp(ts)
            if isinstance(ts, str):
                reason = Reason.INVALID_TIMESTAMP if type(record[self._timestamp]) is str else Reason.WRONG_TYPE
                return Rejection(reason, ts, raw)
        if ts < self._min_ts or ts > now_ms + self._skew:
            return Rejection(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"timestamp {ts} is outside [{self._min_ts}, processing time + {self._skew} ms]",
                raw,
            )
        event: Event = {
            "event_id": record.pop(self._event_id),
            "machine_id": record.pop(self._machine_id),
            "event_type": record.pop(self._event_type),
            "timestamp": ts,
        }
        del record[self._timestamp]
        for name, types, kind in self._columns:
            value = record.pop(name, None)
            if value is not None and (type(value) not in types):
                return Rejection(Reason.WRONG_TYPE, f"field {name!r} must be a {kind}, got {_json_kind(value)}", raw)
            if kind == "int" and value is not None and not _INT64_MIN <= value <= _INT64_MAX:
                return Rejection(Reason.WRONG_TYPE, f"field {name!r} does not fit a 64-bit integer", raw)
            if kind == "float" and type(value) is int:
                value = float(value)  # a float column takes whole numbers too, even past 64 bits
            event[name] = value
        try:
            event["extra"] = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode() if record else None
        except orjson.JSONEncodeError as exc:  # nesting deeper than orjson writes (it reads deeper), or a bad value
            return Rejection(Reason.MALFORMED_JSON, f"the fields without a column cannot be kept as JSON: {exc}", raw)
        return self._enrich(event)


def _undecodable(raw: bytes, exc: Exception) -> Rejection:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as decode_error:
        return Rejection(Reason.INVALID_UTF8, f"not valid UTF-8 at byte {decode_error.start}", raw)
    return Rejection(Reason.MALFORMED_JSON, f"not valid JSON: {exc}", raw)


def _field_problem(raw: bytes, name: str, value: Any) -> Rejection:
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
