"""The state store contract: versioned JSON values with a TTL, plus idempotent sets.

The template (:class:`StateStore`) owns everything that must be identical across backends:
serialisation (JSON, zlib-compressed), the expiry time, treating an expired item as absent (DynamoDB
deletes expired items lazily, up to days later), and optimistic concurrency by version numbers. A
backend implements five primitives over raw records; ``MemoryStore`` and ``DynamoDBStore`` do.

Versions: a value is written with ``expected_version`` = the version read (``None`` when it was
absent); the write succeeds only if nobody wrote in between, and the new version is one more. A
lost race is a ``False``, never an exception: the caller decides (the sessionizer fails the records
of that machine so Lambda redelivers them).
"""

from __future__ import annotations

import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Record:
    """What a backend stores for one key. ``blob`` is None for a set-only item."""

    blob: bytes | None
    version: int
    expires_at: int | None  # epoch seconds, the DynamoDB TTL convention
    members: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Item:
    value: dict[str, Any]
    version: int


@dataclass
class StoreStats:
    """Round trips and items, so a benchmark can count what state costs."""

    reads: int = 0  # round trips (a BatchGetItem of up to 100 keys is one)
    items_read: int = 0
    writes: int = 0  # conditional puts and deletes, one item each
    conflicts: int = 0
    set_adds: int = 0


class StateStore(ABC):
    """Versioned values and sets by string key. ``ttl_s`` = seconds an item lives after its write."""

    def __init__(self, ttl_s: int | None = None, now: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._now = now
        self.stats = StoreStats()

    # -- the template ---------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, Item]:
        """The live values among ``keys``; absent and expired keys are left out."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        now = int(self._now())
        records = self._read(wanted)
        items = {}
        for key, record in records.items():
            if record.blob is None or _expired(record, now):
                continue
            items[key] = Item(decode(record.blob), record.version)
        self.stats.items_read += len(records)
        return items

    def get(self, key: str) -> Item | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: dict[str, Any], expected_version: int | None) -> int | None:
        """Write ``value`` if the key is still at ``expected_version``; the new version, or None."""
        now = int(self._now())
        version = 1 if expected_version is None else expected_version + 1
        ok = self._write(key, encode(value), version, self._expires_at(now), expected_version, now)
        self.stats.writes += 1
        if not ok:
            self.stats.conflicts += 1
            return None
        return version

    def delete(self, key: str, expected_version: int | None) -> bool:
        """Delete the key if still at ``expected_version``; ``None`` deletes whatever is there."""
        ok = self._remove(key, expected_version)
        self.stats.writes += 1
        if not ok:
            self.stats.conflicts += 1
        return ok

    def add_members(self, key: str, members: Iterable[str]) -> None:
        """Set union, idempotent and commutative: safe to repeat and to race."""
        values = frozenset(members)
        if values:
            self._add(key, values, self._expires_at(int(self._now())))
            self.stats.set_adds += 1

    def members_many(self, keys: Iterable[str]) -> dict[str, frozenset[str]]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        now = int(self._now())
        records = self._read(wanted)
        self.stats.items_read += len(records)
        return {key: record.members for key, record in records.items() if not _expired(record, now)}

    def _expires_at(self, now: int) -> int | None:
        return None if self.ttl_s is None else now + self.ttl_s

    # -- the primitives a backend implements ---------------------------------------------------------

    @abstractmethod
    def _read(self, keys: list[str]) -> dict[str, Record]:
        """Strongly consistent read of the keys that exist (expired ones included)."""

    @abstractmethod
    def _write(
        self, key: str, blob: bytes, version: int, expires_at: int | None, expected_version: int | None, now: int
    ) -> bool:
        """Replace the blob if the current version is ``expected_version`` (None: absent or expired)."""

    @abstractmethod
    def _remove(self, key: str, expected_version: int | None) -> bool:
        """Delete if the current version is ``expected_version`` (None: unconditionally)."""

    @abstractmethod
    def _add(self, key: str, members: frozenset[str], expires_at: int | None) -> None:
        """Add members to the key's set, creating the item if needed, and refresh its expiry."""


def _expired(record: Record, now: int) -> bool:
    return record.expires_at is not None and record.expires_at <= now


def encode(value: dict[str, Any]) -> bytes:
    # Machine state is mostly uuids and small ints: zlib roughly halves it, and DynamoDB bills by size.
    return zlib.compress(orjson.dumps(value), 1)


def decode(blob: bytes) -> dict[str, Any]:
    value = orjson.loads(zlib.decompress(blob))
    if not isinstance(value, dict):
        raise ValueError("a state value must be a JSON object")
    return value
