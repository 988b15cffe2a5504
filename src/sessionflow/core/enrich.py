"""Columns derived from a valid event: time parts in UTC and version parts.

Computed with integer arithmetic and small caches: this runs once per event.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CACHE_LIMIT = 100_000


_INT32_MAX = 2**31 - 1


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


@lru_cache(maxsize=4096)
def iso_date(day: int) -> str:
    """Days since the epoch -> ``YYYY-MM-DD``."""
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")


def iso_time(ms: int) -> str:
    """Epoch ms -> ``2026-11-26T13:02:11.123Z``."""
    day, rest = divmod(ms, DAY_MS)
    seconds, millis = divmod(rest, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{iso_date(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


class Enricher:
    def __init__(self) -> None:
        self._dates: dict[int, str] = {}
        self._versions: dict[str, tuple[int | None, int | None]] = {}

    def enrich(self, event: dict[str, Any]) -> dict[str, Any]:
        ms = event["timestamp"]
        day, rest = divmod(ms, DAY_MS)
        date = self._dates.get(day)
        if date is None:
            date = self._dates[day] = iso_date(day)
        seconds, millis = divmod(rest, 1000)
        hours, seconds = divmod(seconds, 3600)
        minutes, seconds = divmod(seconds, 60)
        event["event_time"] = f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"
        event["event_date"] = date
        event["event_hour"] = hours
        # ISO weekday, 1 = Monday: 1970-01-01 was a Thursday.
        event["day_of_week"] = (day + 3) % 7 + 1
        version = event.get("app_version")
        if version is None:
            event["app_version_major"] = event["app_version_minor"] = None
        else:
            parts = self._versions.get(version)
            if parts is None:
                parts = version_parts(version)
                if len(self._versions) < _CACHE_LIMIT:
                    self._versions[version] = parts
            event["app_version_major"], event["app_version_minor"] = parts
        return event
