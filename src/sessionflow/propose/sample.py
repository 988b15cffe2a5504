"""What a sample of a feed holds: every field (dotted paths into nested objects), its types and values.

Pure: records in, statistics out. ``sessionflow init --from`` reads them to propose a config.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 4  # objects nested deeper are kept whole, as one value of their parent's path


@dataclass
class Leaf:
    """One field of the sample: a top-level field or a dotted path to a value inside objects."""

    path: str
    # The non-null values, in record order (at most one per record).
    values: list[Any] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.values)

    def only(self, *kinds: str) -> bool:
        """Every value is one of these kinds (str, int, float, bool, object, array)."""
        return bool(self.types) and set(self.types) <= set(kinds)

    @property
    def distinct(self) -> int:
        return len({_hashable(value) for value in self.values})

    @property
    def depth(self) -> int:
        return self.path.count(".")

    @property
    def name(self) -> str:
        """The last part of the path, normalised for matching: ``context.device.anonymousId`` -> ``anonymousid``."""
        return normalise(self.path.rsplit(".", 1)[-1])


@dataclass
class Sample:
    """The records of a sample that are JSON objects, and their fields."""

    records: list[dict[str, Any]]
    leaves: dict[str, Leaf]
    # Lines that were not a JSON object: counted, not analysed.
    unreadable: int = 0

    @property
    def size(self) -> int:
        return len(self.records)

    @property
    def lines(self) -> int:
        """The records read, JSON objects or not."""
        return len(self.records) + self.unreadable

    def everywhere(self, leaf: Leaf) -> bool:
        """In (nearly) every record of the sample, never null: a required field. A record in a hundred
        may lack it (a broken record is rejected, as it should be)."""
        return leaf.count >= self.size - self.size // 100


def normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9@]", "", name.lower())


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "array" if isinstance(value, list) else "object"


def _hashable(value: Any) -> Any:
    return value if not isinstance(value, dict | list) else repr(value)


def analyse(records: list[dict[str, Any]], unreadable: int = 0) -> Sample:
    leaves: dict[str, Leaf] = {}

    def walk(obj: dict[str, Any], prefix: str, depth: int) -> None:
        for key, value in obj.items():
            if not isinstance(key, str) or not key or "." in key:
                continue  # a field a dotted path cannot name
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and depth < MAX_DEPTH:
                walk(value, f"{path}.", depth + 1)
                continue
            if value is None:
                continue
            leaf = leaves.get(path)
            if leaf is None:
                leaf = leaves[path] = Leaf(path)
            leaf.values.append(value)
            leaf.types[kind_of(value)] += 1

    for record in records:
        walk(record, "", 0)
    return Sample(records, leaves, unreadable)
