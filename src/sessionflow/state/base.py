"""The state store contract: versioned JSON values with a TTL, plus idempotent sets.

The template (:class:`StateStore`) owns everything that must be identical across backends:
serialisation (JSON, zlib-compressed), the expiry time, treating an expired item as absent (DynamoDB
deletes expired items lazily, up to days later), and optimistic concurrency by version numbers. A
backend implements five primitives over raw records; ``MemoryStore`` and ``DynamoDBStore`` do.

Versions: a value is written with ``expected_version`` = the version read (``None`` when it was
absent); the write succeeds only if nobody wrote in between, and the new version is one more. A
lost race is a ``False``, never an exception: the caller decides (the sessionizer fails the records
of that machine so Lambda redelivers them).

Large values: DynamoDB refuses an item over 400 KB, and a bot's machine state (its dedupe memory,
its reorder buffer, the outbox of a big batch) outgrows that at a few events per second. A value
whose compressed bytes exceed :data:`MAX_INLINE_BYTES` is written as *parts*, items of their own
under a fresh token, and the key's item holds only a pointer to them. The parts are written before
the pointer, so a reader never finds a pointer without its parts unless a newer write replaced both
in between (the replaced parts are deleted at once, not left to the TTL); the reader then reads the
key again.
"""

from __future__ import annotations

import hashlib
import time
import uuid
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
    parts_written: int = 0  # items of large values, besides their pointer (counted in writes)
    bytes_read: int = 0  # compressed value bytes of the items read, parts included
    bytes_written: int = 0  # compressed value bytes written, parts included (what DynamoDB bills by)


# DynamoDB's item limit is 400 KB, attribute names and the other attributes included.
ITEM_LIMIT_BYTES = 400 * 1024
MAX_INLINE_BYTES = 350_000
PART_BYTES = 350_000
_POINTER = b"sessionflow-parts:"  # never the start of a zlib stream (those start with 0x78)
_READ_ATTEMPTS = 4


class CorruptStateError(RuntimeError):
    """A large value's parts are missing or do not match their pointer, read after read."""


class StateStore(ABC):
    """Versioned values and sets by string key. ``ttl_s`` = seconds an item lives after its write."""

    def __init__(self, ttl_s: int | None = None, now: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._now = now
        self.stats = StoreStats()
        # key -> (version, part keys) of the large values read: replaced parts are deleted on write.
        self._parts: dict[str, tuple[int, list[str]]] = {}

    # -- the template ---------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, Item]:
        """The live values among ``keys``; absent and expired keys are left out."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        items: dict[str, Item] = {}
        for attempt in range(_READ_ATTEMPTS):
            now = int(self._now())
            records = self._read(wanted)
            self.stats.items_read += len(records)
            self.stats.bytes_read += sum(len(r.blob) for r in records.values() if r.blob is not None)
            live = {key: r for key, r in records.items() if r.blob is not None and not _expired(r, now)}
            blobs = self._join_parts(live)
            for key, record in live.items():
                blob = blobs.get(key)
                if blob is not None:
                    items[key] = Item(decode(blob), record.version)
            # A pointer whose parts a newer write already replaced: read those keys again.
            wanted = [key for key in live if key not in blobs]
            if not wanted:
                return items
            if attempt + 1 < _READ_ATTEMPTS:
                time.sleep(0.01 * 2**attempt)
        raise CorruptStateError(f"the parts of {wanted[:5]} are missing or damaged")

    def get(self, key: str) -> Item | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: dict[str, Any], expected_version: int | None) -> int | None:
        """Write ``value`` if the key is still at ``expected_version``; the new version, or None."""
        now = int(self._now())
        version = 1 if expected_version is None else expected_version + 1
        expires_at = self._expires_at(now)
        blob = encode(value)
        parts: list[str] = []
        if len(blob) > MAX_INLINE_BYTES:
            parts, blob = self._write_parts(key, blob, expires_at, now)
        ok = self._write(key, blob, version, expires_at, expected_version, now)
        self.stats.writes += 1
        self.stats.bytes_written += len(blob)
        if not ok and self._landed(key, blob, version):
            ok = True  # our own write, retried after an answer that was lost: it did land
        if not ok:
            self.stats.conflicts += 1
            self._remove_parts(parts)  # nobody points at them
            return None
        replaced = self._parts.pop(key, None)
        if replaced is not None and replaced[0] == expected_version:
            self._remove_parts(replaced[1])
        if parts:
            self._parts[key] = (version, parts)
        return version

    def _landed(self, key: str, blob: bytes, version: int) -> bool:
        """Is the item exactly what we meant to write? A write whose answer was lost (a timeout, a
        5xx) is retried, by the SDK or by us, and then fails its own condition: it is ours, not a
        lost race, and treating it as lost would forget that it landed."""
        record = self._read([key]).get(key)
        return record is not None and record.version == version and record.blob == blob

    def put_many(self, values: dict[str, dict[str, Any]]) -> None:
        """Write each value whatever is there (idempotent: for values that never change once written)."""
        now = int(self._now())
        expires_at = self._expires_at(now)
        small: list[tuple[str, bytes]] = []
        for key, value in values.items():
            blob = encode(value)
            if len(blob) > MAX_INLINE_BYTES:
                self.put(key, value, None)  # in parts; an item already there is the same value
            else:
                small.append((key, blob))
        if small:
            self._write_many(small, expires_at)
            self.stats.writes += len(small)
            self.stats.bytes_written += sum(len(blob) for _, blob in small)

    def delete(self, key: str, expected_version: int | None) -> bool:
        """Delete the key if still at ``expected_version``; ``None`` deletes whatever is there."""
        ok = self._remove(key, expected_version)
        self.stats.writes += 1
        if not ok:
            self.stats.conflicts += 1
            return ok
        replaced = self._parts.pop(key, None)
        if replaced is not None and (expected_version is None or replaced[0] == expected_version):
            self._remove_parts(replaced[1])
        return ok

    # -- large values ------------------------------------------------------------------------------

    def _write_parts(self, key: str, blob: bytes, expires_at: int | None, now: int) -> tuple[list[str], bytes]:
        """Write ``blob`` as parts under a fresh token; returns their keys and the pointer to them."""
        token = uuid.uuid4().hex
        keys = [f"{key}#part#{token}#{i}" for i in range(-(-len(blob) // PART_BYTES))]
        for index, part_key in enumerate(keys):
            part = blob[index * PART_BYTES : (index + 1) * PART_BYTES]
            if not self._write(part_key, part, 1, expires_at, None, now):  # pragma: no cover - a fresh token
                raise RuntimeError(f"{part_key}: a part key with a fresh token already exists")
            self.stats.parts_written += 1
            self.stats.bytes_written += len(part)
        pointer = {"parts": keys, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        return keys, _POINTER + orjson.dumps(pointer)

    def _join_parts(self, records: dict[str, Record]) -> dict[str, bytes]:
        """The value bytes of each record; a large value whose parts are not all there is left out."""
        blobs: dict[str, bytes] = {}
        pointers: dict[str, dict[str, Any]] = {}
        for key, record in records.items():
            assert record.blob is not None
            if record.blob.startswith(_POINTER):
                pointers[key] = orjson.loads(record.blob[len(_POINTER) :])
            else:
                blobs[key] = record.blob
        if not pointers:
            return blobs
        parts = self._read([part for pointer in pointers.values() for part in pointer["parts"]])
        self.stats.items_read += len(parts)
        self.stats.bytes_read += sum(len(r.blob) for r in parts.values() if r.blob is not None)
        for key, pointer in pointers.items():
            found = [parts.get(part) for part in pointer["parts"]]
            if any(part is None or part.blob is None for part in found):
                continue
            blob = b"".join(part.blob for part in found if part is not None and part.blob is not None)
            if len(blob) != pointer["bytes"] or hashlib.sha256(blob).hexdigest() != pointer["sha256"]:
                continue
            blobs[key] = blob
            self._parts[key] = (records[key].version, list(pointer["parts"]))
        return blobs

    def _remove_parts(self, keys: list[str]) -> None:
        """Best effort: a part left behind is unreachable, and its TTL removes it."""
        for part in keys:
            try:
                self._remove(part, None)
            except Exception:  # the value is written; only the clean-up failed
                continue

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
    def _write_many(self, blobs: list[tuple[str, bytes]], expires_at: int | None) -> None:
        """Write each (key, blob) at version 1, unconditionally."""

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
