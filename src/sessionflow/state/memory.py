"""The in-process store: a dict behind a lock. Same contract as DynamoDB (see the contract tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sessionflow.state.base import ITEM_LIMIT_BYTES, Record, StateStore


class ItemTooLargeError(ValueError):
    """What DynamoDB answers (a ValidationException) for an item over its size limit."""


class MemoryStore(StateStore):
    def __init__(self, ttl_s: int | None = None, now: Callable[[], float] = time.time) -> None:
        super().__init__(ttl_s, now)
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def _read(self, keys: list[str]) -> dict[str, Record]:
        self.stats.reads += 1
        with self._lock:
            return {key: self._records[key] for key in keys if key in self._records}

    def _write(
        self, key: str, blob: bytes, version: int, expires_at: int | None, expected_version: int | None, now: int
    ) -> bool:
        # Held to DynamoDB's limit, so that what works here works there.
        if len(key) + len(blob) + 64 > ITEM_LIMIT_BYTES:
            raise ItemTooLargeError(f"{key}: item size has exceeded the maximum allowed size")
        with self._lock:
            current = self._records.get(key)
            if expected_version is None:
                alive = current is not None and not (current.expires_at is not None and current.expires_at <= now)
                if alive:
                    return False
            elif current is None or current.version != expected_version:
                return False
            self._records[key] = Record(blob, version, expires_at)
            return True

    def _write_many(self, blobs: list[tuple[str, bytes]], expires_at: int | None) -> None:
        for key, blob in blobs:
            if len(key) + len(blob) + 64 > ITEM_LIMIT_BYTES:
                raise ItemTooLargeError(f"{key}: item size has exceeded the maximum allowed size")
        with self._lock:
            for key, blob in blobs:
                self._records[key] = Record(blob, 1, expires_at)

    def _remove(self, key: str, expected_version: int | None) -> bool:
        with self._lock:
            current = self._records.get(key)
            if expected_version is not None and (current is None or current.version != expected_version):
                return False
            self._records.pop(key, None)
            return True

    def _add(self, key: str, members: frozenset[str], expires_at: int | None) -> None:
        with self._lock:
            current = self._records.get(key)
            merged = members if current is None else current.members | members
            if len(key) + sum(map(len, merged)) + 64 > ITEM_LIMIT_BYTES:
                raise ItemTooLargeError(f"{key}: item size has exceeded the maximum allowed size")
            if current is None:
                self._records[key] = Record(None, 0, expires_at, members)
            else:
                self._records[key] = Record(current.blob, current.version, expires_at, merged)
