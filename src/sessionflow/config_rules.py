"""Cleaning rules as the config declares them: parsed, and refused when they would reject every record.

The logic that applies them is ``sessionflow.core.cleaning``; here is only what a rule *is*.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sessionflow.config_values import ConfigError, as_list, as_name, only_keys

CleanFunction = Callable[[dict[str, Any]], dict[str, Any] | None]

_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class CleanRule:
    """One declarative cleaning rule. Actions run in the order of the fields below."""

    when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    lowercase: tuple[str, ...] = ()
    map: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    scale: tuple[tuple[str, float | int], ...] = ()
    divide: tuple[tuple[str, int], ...] = ()
    set: tuple[tuple[str, Any], ...] = ()
    drop: tuple[str, ...] = ()
    function: CleanFunction | None = None
    name: str = ""


_RULE_KEYS = {"name", "when", "rename", "lowercase", "map", "scale", "divide", "set", "drop", "function"}


def parse_rule(raw: Any, index: int) -> CleanRule:
    key = f"clean[{index}]"
    only_keys(raw, f"{key}.", _RULE_KEYS)
    if not _RULE_KEYS - {"name", "when"} & set(raw):
        raise ConfigError(key, "has no action (rename, lowercase, map, scale, divide, set, drop or function)")

    def table(name: str) -> Mapping[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}.{name}", "must be a table, e.g. { field = ... }")
        return value

    def names(name: str) -> tuple[str, ...]:
        value = raw.get(name, [])
        if isinstance(value, str):
            value = [value]
        return tuple(as_name(v, f"{key}.{name}") for v in as_list(value, f"{key}.{name}"))

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
    rename = tuple((old, as_name(new, f"{key}.rename.{old}")) for old, new in table("rename").items())
    function = None
    if "function" in raw:
        function = _load_function(as_name(raw["function"], f"{key}.function"), f"{key}.function")
    return CleanRule(
        when=tuple(when),
        rename=rename,
        lowercase=names("lowercase"),
        map=tuple(mapping),
        scale=tuple(scale),
        divide=tuple(divide),
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
    """Refuse a rule that sets a required field or a column to a value it rejects, or drops a required field.

    ``required``: raw field name -> its role (event_id, machine_id, event_type, timestamp);
    ``columns``: field name -> column type. Such a rule would reject every record it applies to.
    """
    for index, rule in enumerate(rules):
        key = f"clean[{index}]"
        named = f"rule {rule.name!r}" if rule.name and rule.name != key else "this rule"
        for fld, value in rule.set:
            if fld in required:
                problem = _required_value_problem(required[fld], value)
            elif fld in columns:
                problem = _column_value_problem(columns[fld], value)
            else:
                continue
            if problem:
                raise ConfigError(
                    f"{key}.set.{fld}",
                    f"{value!r} is not {problem}, so {named} would reject every record it applies to (wrong_type)",
                )
        later = rules[index + 1 :]
        for fld in rule.drop:
            # A function of this rule, or a later rule, may put the field back.
            if fld in required and rule.function is None and not any(_may_provide(r, fld) for r in later):
                raise ConfigError(
                    f"{key}.drop",
                    f"dropping {fld!r} (the {required[fld]} field) makes {named} reject every record it "
                    "applies to (missing_field)",
                )


def _may_provide(rule: CleanRule, fld: str) -> bool:
    return (
        rule.function is not None
        or any(new == fld for _, new in rule.rename)
        or any(name == fld for name, _ in rule.set)
    )


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
    return "" if ok else f"{'an' if kind == 'int' else 'a'} {kind}, the type of that column"
