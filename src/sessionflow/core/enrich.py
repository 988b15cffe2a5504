"""Columns derived from a valid event: time parts in UTC and version parts.

The rule is written here once: :data:`ENRICHED_FIELDS` are derived from ``timestamp`` by
:func:`hour_fields` (all but the minutes, seconds and milliseconds of ``event_time``) and from
``app_version`` by :func:`version_parts`. :class:`Enricher` applies them row by row, with small
caches (this runs once per event); the embedded runner's columnar path calls the same two
functions once per distinct hour and version of a batch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

HOUR_MS = 3_600_000
ENRICHED_FIELDS = ("event_time", "event_date", "event_hour", "day_of_week", "app_version_major", "app_version_minor")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CACHE_LIMIT = 100_000
_INT32_MAX = 2**31 - 1  # the version columns are int32


def version_parts(version: str) -> tuple[int | None, int | None]:
    """``"11.2.3"`` -> (11, 2); a part that is not a plain ASCII number within int32 is None."""
    parts = version.split(".", 2)
    major = _version_number(parts[0])
    minor = _version_number(parts[1]) if len(parts) > 1 else None
    return major, minor


def _version_number(part: str) -> int | None:
    # ASCII only: "²".isdigit() is True yet int("²") raises. At most int32: the columns' type.
    if not (part.isascii() and part.isdigit() and len(part) <= 10):
        return None
    number = int(part)
    return number if number <= _INT32_MAX else None


def hour_fields(hour: int) -> tuple[str, int, int]:
    """Hours since the epoch (rounded down) -> ``(event_date, event_hour, day_of_week)`` in UTC.

    ``day_of_week`` is ISO's, 1 = Monday (1970-01-01 was a Thursday).
    """
    day, event_hour = divmod(hour, 24)
    return iso_date(day), event_hour, (day + 3) % 7 + 1


@lru_cache(maxsize=4096)
def iso_date(day: int) -> str:
    """Days since the epoch -> ``YYYY-MM-DD``."""
    return (_EPOCH + timedelta(days=day)).date().isoformat()  # strftime drops the zeros of year 1-999


def iso_time(ms: int) -> str:
    """Epoch ms -> ``2026-11-26T13:02:11.123Z``."""
    hour, rest = divmod(ms, HOUR_MS)
    date, hours, _ = hour_fields(hour)
    return _time_text(date, hours, rest)


def _time_text(date: str, hours: int, ms_in_hour: int) -> str:
    minutes, millis = divmod(ms_in_hour, 60_000)
    seconds, millis = divmod(millis, 1000)
    return f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


class Enricher:
    def __init__(self) -> None:
        self._hours: dict[int, tuple[str, int, int]] = {}
        self._versions: dict[str, tuple[int | None, int | None]] = {}

    def enrich(self, event: dict[str, Any]) -> dict[str, Any]:
        hour, rest = divmod(event["timestamp"], HOUR_MS)
        parts = self._hours.get(hour)
        if parts is None:
            parts = hour_fields(hour)
            if len(self._hours) < _CACHE_LIMIT:
                self._hours[hour] = parts
        date, hours, day_of_week = parts
        event["event_time"] = _time_text(date, hours, rest)
        event["event_date"] = date
        event["event_hour"] = hours
        event["day_of_week"] = day_of_week
        version = event.get("app_version")
        if version is None:
            event["app_version_major"] = event["app_version_minor"] = None
        else:
            numbers = self._versions.get(version)
            if numbers is None:
                numbers = version_parts(version)
                if len(self._versions) < _CACHE_LIMIT:
                    self._versions[version] = numbers
            event["app_version_major"], event["app_version_minor"] = numbers
        return event
