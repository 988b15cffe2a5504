"""Cleaning rules as the config declares them: parsed, and refused when they would reject every record.

The logic that applies them is ``sessionflow.core.cleaning``; here is only what a rule *is*.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sessionflow.config_mapping import (
    EventIdRule,
    TimeFormat,
    as_path,
    check_path,
    parse_cast,
    parse_event_id,
    parse_time_formats,
)
from sessionflow.config_values import ConfigError, as_list, as_name, only_keys

CleanFunction = Callable[[dict[str, Any]], dict[str, Any] | None]

_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class CleanRule:
    """One declarative cleaning rule. Actions run in the order of the fields below.

    Every field name may be a dotted path into nested objects (``context.device.id``).
    """

    when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    lowercase: tuple[str, ...] = ()
    map: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    scale: tuple[tuple[str, float | int], ...] = ()
    divide: tuple[tuple[str, int], ...] = ()
    cast: tuple[tuple[str, str], ...] = ()
    event_id: EventIdRule | None = None
    parse_time: tuple[tuple[str, TimeFormat], ...] = ()
    set: tuple[tuple[str, Any], ...] = ()
    drop: tuple[str, ...] = ()
    function: CleanFunction | None = None
    name: str = ""


_ACTIONS = (
    "rename",
    "lowercase",
    "map",
    "scale",
    "divide",
    "cast",
    "event_id",
    "parse_time",
    "set",
    "drop",
    "function",
)
_RULE_KEYS = {"name", "when", *_ACTIONS}


def parse_rule(raw: Any, index: int) -> CleanRule:
    key = f"clean[{index}]"
    only_keys(raw, f"{key}.", _RULE_KEYS)
    if not set(_ACTIONS) & set(raw):
        raise ConfigError(key, f"has no action ({', '.join(_ACTIONS[:-1])} or {_ACTIONS[-1]})")

    def table(name: str) -> Mapping[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}.{name}", "must be a table, e.g. { field = ... }")
        for fld in value:
            check_path(fld, f"{key}.{name}")
        return value

    def names(name: str) -> tuple[str, ...]:
        value = raw.get(name, [])
        if isinstance(value, str):
            value = [value]
        return tuple(as_path(v, f"{key}.{name}") for v in as_list(value, f"{key}.{name}"))

    when = []
    for fld, pattern in table("when").items():
        patterns = pattern if isinstance(pattern, list) else [pattern]
        when.append((fld, tuple(_glob(as_name(p, f"{key}.when.{fld}"), f"{key}.when.{fld}") for p in patterns)))
    scale = []
    for fld, factor in table("scale").items():
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor == 0:
            raise ConfigError(f"{key}.scale.{fld}", f"must be a non-zero number, got {factor!r}")
        scale.append((fld, factor))
    divide = []
    for fld, divisor in table("divide").items():
        if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
            raise ConfigError(f"{key}.divide.{fld}", f"must be a whole number of at least 1, got {divisor!r}")
        divide.append((fld, divisor))
    mapping = []
    for fld, values in table("map").items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{key}.map.{fld}", 'must be a table of old = new values, e.g. { open = "app_open" }')
        mapping.append((fld, tuple(values.items())))
    rename = tuple((old, as_path(new, f"{key}.rename.{old}")) for old, new in table("rename").items())
    function = None
    if "function" in raw:
        function = _load_function(as_name(raw["function"], f"{key}.function"), f"{key}.function")
    event_id = parse_event_id(raw["event_id"], f"{key}.event_id") if "event_id" in raw else None
    return CleanRule(
        when=tuple(when),
        rename=rename,
        lowercase=names("lowercase"),
        map=tuple(mapping),
        scale=tuple(scale),
        divide=tuple(divide),
        cast=parse_cast(table("cast"), f"{key}.cast"),
        event_id=event_id,
        parse_time=parse_time_formats(table("parse_time"), f"{key}.parse_time"),
        set=tuple(table("set").items()),
        drop=names("drop"),
        function=function,
        name=str(raw.get("name", key)),
    )


def _load_function(spec: str, key: str) -> CleanFunction:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(key, f'must look like "package.module:function", got {spec!r}')
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import {module_name!r}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(key, f"{module_name!r} has no function {attr!r}")
    return function  # type: ignore[no-any-return]


def _glob(pattern: str, key: str) -> str:
    """A ``when`` pattern, refused when a ``[`` has no ``]``: fnmatch would match it literally."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            # As fnmatch reads a class: "!" negates, and a "]" right after the opening is a member.
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            end = pattern.find("]", j)
            if end < 0:
                raise ConfigError(
                    key, f'{pattern!r}: the "[" at position {i} has no closing "]" (to match "[" itself write "[[]")'
                )
            i = end
        i += 1
    return pattern


def check_rules(rules: tuple[CleanRule, ...], required: Mapping[str, str], columns: Mapping[str, str]) -> None:
    """Refuse a rule that would reject every record it applies to.

    ``required``: raw field name (or path) -> its role (event_id, machine_id, event_type, timestamp);
    ``columns``: raw field name (or path) -> column type. Such a rule sets, casts, parses or derives
    a required field or a column into a value of a type it rejects, or drops a required field that
    nothing puts back.
    """
    field_of = {role: name for name, role in required.items()}
    for index, rule in enumerate(rules):
        key = f"clean[{index}]"
        named = f"rule {rule.name!r}" if rule.name and rule.name != key else "this rule"

        def refuse(where: str, problem: str, reason: str = "wrong_type", named: str = named) -> None:
            raise ConfigError(where, f"{problem}, so {named} would reject every record it applies to ({reason})")

        for fld, value in rule.set:
            if fld in required:
                problem = _required_value_problem(required[fld], value)
            elif fld in columns:
                problem = _column_value_problem(columns[fld], value)
            else:
                continue
            if problem:
                refuse(f"{key}.set.{fld}", f"{value!r} is not {problem}")
        for fld, kind in rule.cast:
            problem = _cast_problem(fld, kind, required, columns)
            if problem:
                refuse(f"{key}.cast.{fld}", problem)
        for fld, time_format in rule.parse_time:
            into = time_format.into or field_of["timestamp"]
            role = required.get(into)
            if (role is not None and role != "timestamp") or columns.get(into, "int") not in ("int", "float"):
                what = f"the {role} field" if role else f"a {columns[into]} column"
                refuse(f"{key}.parse_time.{fld}.into", f"epoch milliseconds (an int) go into {into!r}, {what}")
        if rule.event_id is not None:
            into = rule.event_id.into or field_of["event_id"]
            role = required.get(into)
            if (role is not None and role != "event_id") or columns.get(into, "string") != "string":
                what = f"the {role} field" if role else f"a {columns[into]} column"
                refuse(f"{key}.event_id.into", f"the id (a string) goes into {into!r}, {what}")
            renamed = dict(rule.rename)
            for source in rule.event_id.sources:
                if source in renamed:
                    raise ConfigError(
                        f"{key}.event_id.from",
                        f"{source!r} is renamed to {renamed[source]!r} by the rule's rename, which runs first: "
                        f"name {renamed[source]!r}",
                    )
        later = rules[index + 1 :]
        for fld in rule.drop:
            for name, role in required.items():
                # Dropping an object drops the fields inside it. A function of this rule, or a later
                # rule, may put the field back.
                if not (name == fld or name.startswith(fld + ".")):
                    continue
                if rule.function is None and not any(_may_provide(r, name, field_of) for r in later):
                    what = f"{fld!r}" if name == fld else f"{fld!r} drops {name!r}"
                    refuse(f"{key}.drop", f"dropping {what} (the {role} field)", "missing_field")


def _may_provide(rule: CleanRule, fld: str, field_of: Mapping[str, str]) -> bool:
    return (
        rule.function is not None
        or any(new == fld for _, new in rule.rename)
        or any(name == fld for name, _ in rule.set)
        or any((spec.into or field_of["timestamp"]) == fld for _, spec in rule.parse_time)
        or (rule.event_id is not None and (rule.event_id.into or field_of["event_id"]) == fld)
    )


def _cast_problem(fld: str, kind: str, required: Mapping[str, str], columns: Mapping[str, str]) -> str:
    role = required.get(fld)
    if role == "timestamp":
        return "" if kind in ("int", "float") else f"a {kind} is not a timestamp (epoch milliseconds: int)"
    if role is not None:
        return "" if kind == "string" else f"the {role} field must be a string, not {_a(kind)}"
    column = columns.get(fld)
    if column is None or column == kind or (column == "float" and kind == "int"):
        return ""
    return f"{fld!r} is {_a(column)} column, and this casts it to {_a(kind)}"


def _a(kind: str) -> str:
    return f"{'an' if kind == 'int' else 'a'} {kind}"


def _required_value_problem(role: str, value: Any) -> str:
    if role != "timestamp":
        ok = isinstance(value, str) and value.strip() != ""
        return "" if ok else "a non-empty string"
    if isinstance(value, bool):
        return "a timestamp"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return ""
    if isinstance(value, str):
        try:
            if datetime.fromisoformat(value).tzinfo is not None:
                return ""
        except ValueError:
            pass
    return "a timestamp (integer epoch milliseconds or an ISO-8601 string with a timezone)"


def _column_value_problem(kind: str, value: Any) -> str:
    ok = {
        "string": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1],
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }.get(kind, True)
    return "" if ok else f"{_a(kind)}, the type of that column"
