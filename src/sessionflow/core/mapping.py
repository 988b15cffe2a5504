"""The values of the mapping actions: ``cast`` a value to a type, ``parse_time`` a time into epoch
milliseconds, an ``event_id`` made from a record's fields.

Each function takes one value and returns the new one, or raises :class:`Unmappable` with the
reason a validation failure of the same kind gets (``wrong_type``, ``invalid_timestamp``), so a
record it cannot map is rejected as it would be without the rule. Pure; :mod:`cleaning` applies
them to fields.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from sessionflow.config_mapping import ISO, TimeFormat
from sessionflow.core.rejections import Reason

_INT64 = (-(2**63), 2**63 - 1)
_INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*")
_DECIMAL_TEXT = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})

# Fixed forever: changing it would change every event id a rule ever made.
EVENT_NAMESPACE = uuid.UUID("0b2f6c1e-7d3a-5e88-9f14-3c6a2d9e8b71")
_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


class Unmappable(Exception):
    """A value a mapping action cannot convert; ``reason`` is the record's rejection reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return repr(text[:64]) if isinstance(value, str) else text[:64]


# -- cast ----------------------------------------------------------------------------------------------


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        raise Unmappable(Reason.WRONG_TYPE, f"{_kind(value)} cannot be cast to a string")
    # Numbers and booleans as their JSON text, as `when` matches them: 7 -> "7", true -> "true".
    return orjson.dumps(value).decode()


def _in_int64(number: int, value: Any) -> int:
    if not _INT64[0] <= number <= _INT64[1]:
        raise Unmappable(Reason.WRONG_TYPE, f"{_shown(value)} does not fit a 64-bit integer")
    return number


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise Unmappable(Reason.WRONG_TYPE, "a boolean is not a number")
    if isinstance(value, int):
        return _in_int64(value, value)
    if isinstance(value, float):
        if not value.is_integer():
            raise Unmappable(Reason.WRONG_TYPE, f"{_shown(value)} is not a whole number")
        return _in_int64(int(value), value)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        return _in_int64(int(value), value)
    raise Unmappable(Reason.WRONG_TYPE, f"{_shown(value)} is not a whole number")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise Unmappable(Reason.WRONG_TYPE, "a boolean is not a number")
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return value
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
        number = float(value)
        if number in (float("inf"), float("-inf")):
            raise Unmappable(Reason.WRONG_TYPE, f"{_shown(value)} is beyond a 64-bit float")
        return number
    raise Unmappable(Reason.WRONG_TYPE, f"{_shown(value)} is not a number")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise Unmappable(Reason.WRONG_TYPE, f"{_shown(value)} is not a boolean (true, false, 1 or 0)")


CASTS: dict[str, Callable[[Any], Any]] = {"string": _to_string, "int": _to_int, "float": _to_float, "bool": _to_bool}


# -- parse_time ----------------------------------------------------------------------------------------


def time_parser(spec: TimeFormat) -> Callable[[Any], int]:
    """A function from the field's value to epoch milliseconds, as ``spec`` reads it."""
    if spec.epoch is not None:
        return _epoch_parser(spec.format, *spec.epoch)
    zone = ZoneInfo(spec.timezone) if spec.timezone is not None else None
    if spec.format == ISO:

        def read_iso(value: Any) -> int:
            if not isinstance(value, str):
                raise Unmappable(Reason.WRONG_TYPE, f"an ISO-8601 time must be a string, got {_kind(value)}")
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                raise Unmappable(Reason.INVALID_TIMESTAMP, f"{_shown(value)} is not an ISO-8601 date-time") from None
            return _milliseconds(moment, zone, value)

        return read_iso
    fmt = spec.format

    def read_format(value: Any) -> int:
        if not isinstance(value, str):
            raise Unmappable(Reason.WRONG_TYPE, f"a time in the format {fmt!r} must be a string, got {_kind(value)}")
        try:
            moment = datetime.strptime(value, fmt)  # noqa: DTZ007 - a naive time gets the rule's zone below
        except ValueError:
            raise Unmappable(Reason.INVALID_TIMESTAMP, f"{_shown(value)} does not match the format {fmt!r}") from None
        return _milliseconds(moment, zone, value)

    return read_format


def _milliseconds(moment: datetime, zone: ZoneInfo | None, value: str) -> int:
    if moment.tzinfo is None:
        if zone is None:
            raise Unmappable(Reason.INVALID_TIMESTAMP, f"{_shown(value)} has no timezone, and the rule gives none")
        local = moment
        # fold=0: a time the clocks went through twice (back from summer time) is the first of the two.
        moment = local.replace(tzinfo=zone)
        if moment.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != local:
            raise Unmappable(
                Reason.INVALID_TIMESTAMP,
                f"{_shown(value)} never happened in {zone.key} (the clocks went forward over it)",
            )
    return (moment - _EPOCH) // _MILLISECOND


def _epoch_parser(unit: str, multiply: int, divide: int) -> Callable[[Any], int]:
    def read_epoch(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Unmappable(Reason.WRONG_TYPE, f"{unit} must be a number, got {_kind(value)}")
        if isinstance(value, int):
            return value * multiply // divide
        if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
            raise Unmappable(Reason.INVALID_TIMESTAMP, f"{_shown(value)} is not a number ({unit})")
        # Exactly, as written: 1733622211.123 s is 1733622211123 ms, whatever binary float holds it.
        exact = Decimal(value.strip() if isinstance(value, str) else repr(value))
        if not exact.is_finite() or abs(exact) > 10**30:
            raise Unmappable(Reason.INVALID_TIMESTAMP, f"{_shown(value)} is not a time ({unit})")
        return int((exact * multiply / divide).to_integral_value(rounding=ROUND_FLOOR))

    return read_epoch


# -- event_id ------------------------------------------------------------------------------------------


def event_id_from(values: Sequence[Any]) -> str:
    """UUIDv5 (RFC 4122) of the values, as one compact JSON array with object keys sorted.

    Equal to ``str(uuid.uuid5(EVENT_NAMESPACE, json))``: the same values always give the same id,
    so a record sent twice is a duplicate; a missing field is ``null``.
    """
    name = orjson.dumps(list(values), option=orjson.OPT_SORT_KEYS)
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
