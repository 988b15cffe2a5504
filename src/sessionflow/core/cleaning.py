"""Declarative cleaning rules, compiled once into plain functions over a record dict.

Rules run before validation, so a build that sends seconds gets its timestamps fixed instead of
rejected. Within a rule the actions run in a fixed order: rename, lowercase, map, scale, set, drop,
function. Rules run in the order they are written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from sessionflow.config import CleanRule

Record = dict[str, Any]
Cleaner = Callable[[Record], Record]

_GLOB_CHARS = frozenset("*?[")


def compile_rules(rules: tuple[CleanRule, ...]) -> Cleaner | None:
    """One function applying every rule in order, or None when there are no rules."""
    steps = [_compile(rule) for rule in rules]
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def clean(record: Record) -> Record:
        for step in steps:
            record = step(record)
        return record

    return clean


def _matcher(field: str, patterns: tuple[str, ...]) -> Callable[[Record], bool]:
    exact = frozenset(p for p in patterns if not _GLOB_CHARS & set(p))
    globs = tuple(p for p in patterns if p not in exact)
    # Versions and build names repeat endlessly: remember each value's verdict.
    verdicts: dict[Any, bool] = {}

    def matches(record: Record) -> bool:
        value = record.get(field)
        if value is None or isinstance(value, dict | list):
            return False
        try:
            return verdicts[value]
        except KeyError:
            text = value if isinstance(value, str) else _scalar_text(value)
            verdict = text in exact or any(fnmatchcase(text, g) for g in globs)
            if len(verdicts) < 100_000:
                verdicts[value] = verdict
            return verdict

    return matches


def _scalar_text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _compile(rule: CleanRule) -> Cleaner:
    conditions = [_matcher(field, patterns) for field, patterns in rule.when]
    actions: list[Cleaner] = []
    if rule.rename:
        actions.append(_rename(rule.rename))
    if rule.lowercase:
        actions.append(_lowercase(rule.lowercase))
    for field, table in rule.map:
        actions.append(_map(field, dict(table)))
    for field, factor in rule.scale:
        actions.append(_scale(field, factor))
    for field, divisor in rule.divide:
        actions.append(_divide(field, divisor))
    if rule.set:
        actions.append(_set(rule.set))
    if rule.drop:
        actions.append(_drop(rule.drop))
    if rule.function is not None:
        actions.append(_function(rule.function))

    # The common shapes get a function of their own: this runs for every record.
    if not conditions and len(actions) == 1:
        return actions[0]
    if len(conditions) == 1 and len(actions) == 1:
        condition, action = conditions[0], actions[0]
        return lambda record: action(record) if condition(record) else record

    def apply(record: Record) -> Record:
        for condition in conditions:
            if not condition(record):
                return record
        for action in actions:
            record = action(record)
        return record

    return apply


def _rename(pairs: tuple[tuple[str, str], ...]) -> Cleaner:
    def rename(record: Record) -> Record:
        for old, new in pairs:
            if old in record:
                record[new] = record.pop(old)
        return record

    return rename


def _lowercase(fields: tuple[str, ...]) -> Cleaner:
    def lowercase(record: Record) -> Record:
        for field in fields:
            value = record.get(field)
            if isinstance(value, str):
                record[field] = value.lower()
        return record

    return lowercase


def _map(field: str, table: dict[str, Any]) -> Cleaner:
    def map_values(record: Record) -> Record:
        value = record.get(field)
        if isinstance(value, str) and value in table:
            record[field] = table[value]
        return record

    return map_values


def _scale(field: str, factor: int | float) -> Cleaner:
    def scale(record: Record) -> Record:
        value = record.get(field)
        # bool is an int to Python, never a number to us.
        if isinstance(value, int | float) and not isinstance(value, bool):
            scaled = value * factor
            if isinstance(scaled, float) and scaled.is_integer():
                scaled = int(scaled)
            record[field] = scaled
        return record

    return scale


def _divide(field: str, divisor: int) -> Cleaner:
    def divide(record: Record) -> Record:
        value = record.get(field)
        # Rounded down to a whole number, in integer arithmetic for integers: a nanosecond timestamp
        # (past 2**53) divided into milliseconds loses nothing, as it would through a float factor.
        if isinstance(value, int) and not isinstance(value, bool):
            record[field] = value // divisor
        elif isinstance(value, float) and math.isfinite(value):
            record[field] = int(value // divisor)
        return record

    return divide


def _set(pairs: tuple[tuple[str, Any], ...]) -> Cleaner:
    def set_values(record: Record) -> Record:
        for field, value in pairs:
            record[field] = value
        return record

    return set_values


def _drop(fields: tuple[str, ...]) -> Cleaner:
    def drop(record: Record) -> Record:
        for field in fields:
            record.pop(field, None)
        return record

    return drop


def _function(function: Callable[[Record], Record | None]) -> Cleaner:
    def call(record: Record) -> Record:
        result = function(record)
        # A function may edit the record in place and return None.
        return record if result is None else result

    return call
