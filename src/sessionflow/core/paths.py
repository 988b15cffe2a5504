"""Nested fields named by a dotted path: ``context.device.id`` is ``record["context"]["device"]["id"]``.

A name without a dot is a top-level field, as always; each dot goes one object deeper (a list on
the way, or a scalar, means the field is not there). A field whose own name holds a dot cannot be
named this way: a ``function`` rule can move it. Pure helpers, no I/O.
"""

from __future__ import annotations

from typing import Any

Parts = tuple[str, ...]


def parts_of(name: str) -> Parts:
    """``"context.device.id"`` -> ``("context", "device", "id")``."""
    return tuple(name.split("."))


def is_path(name: str) -> bool:
    return "." in name


def get_path(record: dict[str, Any], parts: Parts) -> Any:
    """The value at ``parts``, or None when it (or an object on the way) is missing."""
    value: Any = record
    for part in parts:
        if type(value) is not dict:
            return None
        value = value.get(part)
    return value


def pop_path(record: dict[str, Any], parts: Parts, default: Any = None) -> Any:
    """Remove and return the value at ``parts`` (``default`` when missing).

    An object the removal leaves empty is removed too, up to the top: moving ``properties.doc_id``
    to a column leaves no ``"properties": {}`` behind in ``extra``.
    """
    parents: list[dict[str, Any]] = []
    value: Any = record
    for part in parts[:-1]:
        value = value.get(part)
        if type(value) is not dict:
            return default
        parents.append(value)
    if parts[-1] not in value:
        return default
    found = value.pop(parts[-1])
    # Prune the objects emptied on the way, deepest first.
    for depth in range(len(parents) - 1, -1, -1):
        if parents[depth]:
            break
        holder = parents[depth - 1] if depth else record
        del holder[parts[depth]]
    return found


def set_path(record: dict[str, Any], parts: Parts, value: Any) -> str | None:
    """Put ``value`` at ``parts``, making the objects on the way; an error message when one is not an object."""
    holder = record
    for depth, part in enumerate(parts[:-1]):
        inner = holder.get(part)
        if inner is None:
            inner = holder[part] = {}
        elif type(inner) is not dict:
            where = ".".join(parts[: depth + 1])
            return f"cannot put a value at {'.'.join(parts)!r}: {where!r} is not an object"
        holder = inner
    holder[parts[-1]] = value
    return None
