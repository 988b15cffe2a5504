"""The values a config is made of: durations, bounded integers, names, tables; and the error naming the key.

Every value of ``sessionflow.toml`` is read through these functions, by ``check-config`` and ``run``
alike, so a config that passes one never fails the other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MS = 1
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# The longest duration any key takes. Stream times are 64-bit milliseconds: a bound far below their
# range keeps every sum of a time and a duration exact, and nothing real lasts a century.
MAX_DURATION_YEARS = 100
MAX_DURATION_MS = MAX_DURATION_YEARS * 365 * DAY

_UNITS = {"ms": MS, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


class ConfigError(ValueError):
    """A configuration value is wrong; the message starts with the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    def under(self, old: str, new: str) -> ConfigError:
        """The same error, its key moved from under ``old`` to under ``new`` (a value checked on its own)."""
        return ConfigError(new + self.key.removeprefix(old), self.problem)


def parse_duration(value: object, key: str) -> int:
    """``"1h30m"`` -> milliseconds. Bare numbers are refused: their unit would be a guess."""
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            total += int(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            if total > MAX_DURATION_MS:
                raise ConfigError(
                    key, f"must be at most {MAX_DURATION_YEARS} years ({MAX_DURATION_MS // DAY}d), got {value!r}"
                )
            return total
    raise ConfigError(key, f'expected a duration such as "30m", "90s", "1h30m" or "250ms", got {value!r}')


def check_duration(ms: int, key: str) -> None:
    """The bound of :func:`parse_duration`, for a config built in code rather than read from a file."""
    if ms > MAX_DURATION_MS:
        raise ConfigError(key, f"must be at most {MAX_DURATION_YEARS} years ({MAX_DURATION_MS // DAY}d), got {ms} ms")


def format_duration(ms: int) -> str:
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    if ms or not parts:
        parts.append(f"{ms}ms")
    return "".join(parts)


def only_keys(table: Any, prefix: str, allowed: set[str]) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", "must be a table")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def as_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list, got {type(value).__name__}")
    return value


def as_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def as_int(value: Any, key: str, low: int, high: int) -> int:
    """An integer in ``[low, high]``; the bounds keep every count within what the writers take."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low:,} and {high:,}, got {value:,}")
    return value
