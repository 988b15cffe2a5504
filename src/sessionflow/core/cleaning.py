"""Declarative cleaning rules, compiled once into plain functions over a record dict.

Rules run before validation, so a build that sends seconds gets its timestamps fixed instead of
rejected. Within a rule the actions run in a fixed order: rename, lowercase, map, scale, divide,
cast, event_id, parse_time, set, drop, function. Rules run in the order they are written. A field
may be named by a dotted path into nested objects (``context.device.id``); a name without a dot
takes the plain dict lookups it always did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy
from fnmatch import fnmatchcase
from typing import Any

from sessionflow.config import CleanRule, EventIdRule, FieldNames, TimeFormat
from sessionflow.core.paths import Parts, get_path, is_path, parts_of, pop_path, set_path
from sessionflow.core.rejections import Reason, RejectRecord

Record = dict[str, Any]
Cleaner = Callable[[Record], Record]

_GLOB_CHARS = frozenset("*?[")
_MISSING = object()


def _parts(field: str) -> Parts | None:
    """The path of a dotted name; None for a plain name, read with a dict lookup."""
    return parts_of(field) if is_path(field) else None


def _put(record: Record, field: str, parts: Parts | None, value: Any) -> None:
    if parts is None:
        record[field] = value
        return
    problem = set_path(record, parts, value)
    if problem is not None:
        raise RejectRecord(problem, Reason.WRONG_TYPE)


def compile_rules(rules: tuple[CleanRule, ...], fields: FieldNames | None = None) -> Cleaner | None:
    """One function applying every rule in order, or None when there are no rules.

    ``fields``: where ``parse_time`` and ``event_id`` put what they make when the rule names no
    ``into`` (the configured timestamp and event id fields).
    """
    fields = fields or FieldNames()
    steps = [_compile(rule, fields) for rule in rules]
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
    parts = _parts(field)
    # Versions and build names repeat endlessly: remember each value's verdict.
    verdicts: dict[Any, bool] = {}

    def matches(record: Record) -> bool:
        value = record.get(field) if parts is None else get_path(record, parts)
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


def _compile(rule: CleanRule, fields: FieldNames) -> Cleaner:
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
    for field, kind in rule.cast:
        actions.append(_cast(field, kind))
    if rule.event_id is not None:
        actions.append(_event_id(rule.event_id, fields.event_id))
    for field, time_format in rule.parse_time:
        actions.append(_parse_time(field, time_format, fields.timestamp))
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
    if any(is_path(old) or is_path(new) for old, new in pairs):
        return _rename_paths(pairs)

    def rename(record: Record) -> Record:
        for old, new in pairs:
            if old in record:
                record[new] = record.pop(old)
        return record

    return rename


def _rename_paths(pairs: tuple[tuple[str, str], ...]) -> Cleaner:
    moves = tuple((old, parts_of(old), new, _parts(new)) for old, new in pairs)

    def rename(record: Record) -> Record:
        for _, old_parts, new, new_parts in moves:
            value = pop_path(record, old_parts, _MISSING)
            if value is not _MISSING:
                _put(record, new, new_parts, value)
        return record

    return rename


def _lowercase(fields: tuple[str, ...]) -> Cleaner:
    paths = tuple((field, _parts(field)) for field in fields)

    def lowercase(record: Record) -> Record:
        for field, parts in paths:
            value = record.get(field) if parts is None else get_path(record, parts)
            if isinstance(value, str):
                if parts is None:
                    record[field] = value.lower()
                else:
                    _put(record, field, parts, value.lower())
        return record

    return lowercase


def _map(field: str, table: dict[str, Any]) -> Cleaner:
    parts = _parts(field)

    def map_values(record: Record) -> Record:
        value = record.get(field) if parts is None else get_path(record, parts)
        if isinstance(value, str) and value in table:
            _put(record, field, parts, table[value])
        return record

    return map_values


def _scale(field: str, factor: int | float) -> Cleaner:
    parts = _parts(field)

    def scale(record: Record) -> Record:
        value = record.get(field) if parts is None else get_path(record, parts)
        # bool is an int to Python, never a number to us.
        if isinstance(value, int | float) and not isinstance(value, bool):
            scaled = value * factor
            if isinstance(scaled, float) and scaled.is_integer():
                scaled = int(scaled)
            if parts is None:
                record[field] = scaled
            else:
                _put(record, field, parts, scaled)
        return record

    return scale


def _divide(field: str, divisor: int) -> Cleaner:
    parts = _parts(field)

    def divide(record: Record) -> Record:
        value = record.get(field) if parts is None else get_path(record, parts)
        # Rounded down to a whole number, in integer arithmetic for integers: a nanosecond timestamp
        # (past 2**53) divided into milliseconds loses nothing, as it would through a float factor.
        if isinstance(value, int) and not isinstance(value, bool):
            _put(record, field, parts, value // divisor)
        elif isinstance(value, float) and math.isfinite(value):
            _put(record, field, parts, int(value // divisor))
        return record

    return divide


# The mapping actions' module (decimal, zoneinfo) is imported by the rules that use one: a config
# without them starts as fast as it did.


def _cast(field: str, kind: str) -> Cleaner:
    from sessionflow.core.mapping import CASTS, Unmappable

    parts = _parts(field)
    convert = CASTS[kind]

    def cast(record: Record) -> Record:
        value = record.get(field) if parts is None else get_path(record, parts)
        if value is not None:  # a missing (or null) field stays missing
            try:
                converted = convert(value)
            except Unmappable as exc:
                raise RejectRecord(f"field {field!r} cannot be cast to {kind}: {exc.message}", exc.reason) from None
            _put(record, field, parts, converted)
        return record

    return cast


def _event_id(rule: EventIdRule, default_into: str) -> Cleaner:
    from sessionflow.core.mapping import event_id_from

    sources = tuple(parts_of(field) for field in rule.sources)
    into = rule.into or default_into
    into_parts = _parts(into)
    listed = ", ".join(rule.sources)

    def make_id(record: Record) -> Record:
        values = [get_path(record, parts) for parts in sources]
        if all(value is None for value in values):
            raise RejectRecord(
                f"none of the fields the event id is made of ({listed}) is in the record", Reason.MISSING_FIELD
            )
        _put(record, into, into_parts, event_id_from(values))
        return record

    return make_id


def _parse_time(field: str, spec: TimeFormat, default_into: str) -> Cleaner:
    from sessionflow.core.mapping import Unmappable, time_parser

    parts = parts_of(field)
    into = spec.into or default_into
    into_parts = _parts(into)
    parse = time_parser(spec)

    def parse_time(record: Record) -> Record:
        # The field is read and replaced: its time goes to `into` as epoch milliseconds.
        value = pop_path(record, parts, None)
        if value is not None:
            try:
                moment = parse(value)
            except Unmappable as exc:
                raise RejectRecord(f"field {field!r}: {exc.message}", exc.reason) from None
            _put(record, into, into_parts, moment)
        return record

    return parse_time


def _set(pairs: tuple[tuple[str, Any], ...]) -> Cleaner:
    paths = tuple((field, _parts(field), value, isinstance(value, dict | list)) for field, value in pairs)

    def set_values(record: Record) -> Record:
        for field, parts, value, container in paths:
            # Each record its own copy of an object or a list: a later action may change it.
            _put(record, field, parts, deepcopy(value) if container else value)
        return record

    return set_values


def _drop(fields: tuple[str, ...]) -> Cleaner:
    paths = tuple((field, _parts(field)) for field in fields)

    def drop(record: Record) -> Record:
        for field, parts in paths:
            if parts is None:
                record.pop(field, None)
            else:
                pop_path(record, parts)
        return record

    return drop


def _function(function: Callable[[Record], Record | None]) -> Cleaner:
    def call(record: Record) -> Record:
        result = function(record)
        # A function may edit the record in place and return None.
        return record if result is None else result

    return call
