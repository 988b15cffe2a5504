"""The mapping actions of a cleaning rule as the config declares them: ``cast``, ``parse_time``, ``event_id``.

Only what they *are*, validated with an error naming the key; ``sessionflow.core.mapping`` applies
them. Field names everywhere in a rule may be dotted paths into nested objects
(``context.device.id``): :func:`as_path` reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sessionflow.config_values import ConfigError, as_list, as_name, only_keys

CAST_TYPES = ("string", "int", "float", "bool")
# Epoch units and how many of them make a millisecond's worth: value * ms_per / per_ms.
EPOCH_UNITS: dict[str, tuple[int, int]] = {
    "epoch_s": (1000, 1),
    "epoch_ms": (1, 1),
    "epoch_us": (1, 1000),
    "epoch_ns": (1, 1_000_000),
}
ISO = "iso"
_DIRECTIVE = re.compile(r"%(.)")
# A moment every directive of a format writes differently from its neighbours: a format that reads it
# back with another year, month or day does not name a whole date.
_PROBE = datetime(2031, 7, 19, 13, 47, 52, 123456, tzinfo=UTC)


def as_path(value: Any, key: str) -> str:
    """A field name, possibly a dotted path: no empty part (``a..b``, ``.a``, ``a.``)."""
    name = as_name(value, key)
    if "" in name.split("."):
        raise ConfigError(key, f"{name!r} is not a field name or a dotted path such as 'context.device.id'")
    return name


def check_path(name: str, key: str) -> str:
    """A table key that names a field: the same rule as :func:`as_path`, the key is the name itself."""
    return as_path(name, f"{key}.{name}" if name else key)


@dataclass(frozen=True, slots=True)
class TimeFormat:
    """How ``parse_time`` reads a field.

    ``format``: ``"iso"`` (ISO-8601), ``"epoch_s"``/``"epoch_ms"``/``"epoch_us"``/``"epoch_ns"``
    (numbers, or numeric strings), or a strftime format such as ``"%d/%m/%Y %H:%M:%S.%f"``.
    ``timezone``: an IANA zone (``"Europe/Paris"``, ``"UTC"``) for times written without an offset;
    required by a strftime format without ``%z``. ``into``: the field the epoch milliseconds go to
    (None: the configured timestamp field).
    """

    format: str
    timezone: str | None = None
    into: str | None = None

    def __post_init__(self) -> None:
        check_time_format(self, "parse_time")

    @property
    def epoch(self) -> tuple[int, int] | None:
        return EPOCH_UNITS.get(self.format)

    @property
    def has_offset(self) -> bool:
        """A strftime format that reads the offset itself (``%z``)."""
        return "z" in _directives(self.format)


@dataclass(frozen=True, slots=True)
class EventIdRule:
    """``event_id = { from = [...] }``: a deterministic id from the named fields (``into``: its field)."""

    sources: tuple[str, ...]
    into: str | None = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("event_id.from", "name at least one field")
        for name in (*self.sources, *([self.into] if self.into is not None else [])):
            as_path(name, "event_id")


def _directives(fmt: str) -> set[str]:
    return {match.group(1) for match in _DIRECTIVE.finditer(fmt)} - {"%"}


def check_time_format(spec: TimeFormat, key: str) -> None:
    fmt = spec.format
    if spec.epoch is not None:
        if spec.timezone is not None:
            raise ConfigError(f"{key}.timezone", f"{fmt} times are instants: they take no timezone")
    elif fmt != ISO:
        directives = _directives(fmt)
        if not directives:
            raise ConfigError(
                f"{key}.format",
                f'expected "iso", {", ".join(repr(u) for u in EPOCH_UNITS)} or a strftime format '
                f'such as "%d/%m/%Y %H:%M:%S", got {fmt!r}',
            )
        try:
            back = datetime.strptime(_PROBE.strftime(fmt), fmt)  # noqa: DTZ007 - only its date is looked at
        except ValueError as exc:
            problem = f"{fmt!r} is not a strftime format that reads its own output: {exc}"
            raise ConfigError(f"{key}.format", problem) from None
        if (back.year, back.month, back.day) != (_PROBE.year, _PROBE.month, _PROBE.day):
            raise ConfigError(f"{key}.format", f"{fmt!r} does not name a whole date (a year, a month and a day)")
        if spec.timezone is None and "z" not in directives:
            raise ConfigError(
                f"{key}.timezone",
                f'the format {fmt!r} has no %z: give the zone its times are written in, e.g. timezone = "UTC"',
            )
    if spec.timezone is not None:
        check_timezone(spec.timezone, f"{key}.timezone")
    if spec.into is not None:
        as_path(spec.into, f"{key}.into")


def check_timezone(name: Any, key: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only a config with a zone needs the zones

    if not isinstance(name, str) or not name:
        raise ConfigError(key, f'must be an IANA zone name such as "Europe/Paris" or "UTC", got {name!r}')
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(key, f'{name!r} is not an IANA zone name (such as "Europe/Paris" or "UTC")') from None
    return name


def parse_cast(table: Mapping[str, Any], key: str) -> tuple[tuple[str, str], ...]:
    casts = []
    for fld, kind in table.items():
        check_path(fld, key)
        if kind not in CAST_TYPES:
            raise ConfigError(f"{key}.{fld}", f"must be one of {', '.join(CAST_TYPES)}, got {kind!r}")
        casts.append((fld, kind))
    return tuple(casts)


def parse_time_formats(table: Mapping[str, Any], key: str) -> tuple[tuple[str, TimeFormat], ...]:
    formats = []
    for fld, spec in table.items():
        where = f"{key}.{fld}"
        check_path(fld, key)
        if isinstance(spec, str):
            spec = {"format": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(where, 'must be a format ("epoch_s", "iso", "%d/%m/%Y %H:%M:%S") or a table')
        only_keys(spec, f"{where}.", {"format", "timezone", "into"})
        if "format" not in spec:
            raise ConfigError(f"{where}.format", "is required")
        fmt = as_name(spec["format"], f"{where}.format")
        into = as_path(spec["into"], f"{where}.into") if "into" in spec else None
        try:
            time_format = TimeFormat(fmt, spec.get("timezone"), into)
        except ConfigError as exc:
            raise exc.under("parse_time", where) from None
        formats.append((fld, time_format))
    return tuple(formats)


def parse_event_id(value: Any, key: str) -> EventIdRule:
    if not isinstance(value, Mapping):
        raise ConfigError(key, 'must be a table, e.g. { from = ["ip", "event_time", "event_name"] }')
    only_keys(value, f"{key}.", {"from", "into"})
    if "from" not in value:
        raise ConfigError(f"{key}.from", 'is required: the fields the id is made of, e.g. ["ip", "event_time"]')
    raw = value["from"]
    sources = tuple(
        as_path(name, f"{key}.from") for name in as_list([raw] if isinstance(raw, str) else raw, f"{key}.from")
    )
    if not sources:
        raise ConfigError(f"{key}.from", "name at least one field")
    twice = sorted({name for name in sources if sources.count(name) > 1})
    if twice:
        raise ConfigError(f"{key}.from", f"names {', '.join(map(repr, twice))} more than once")
    into = as_path(value["into"], f"{key}.into") if "into" in value else None
    return EventIdRule(sources, into)
