"""Deterministic session ids: the same machine and first event always give the same id."""

from __future__ import annotations

import uuid

# Fixed forever: changing it would change every session id ever written.
SESSION_NAMESPACE = uuid.UUID("5e55f10e-2c1b-4b7a-9a56-0f7d1c2b3a40")


def session_id(machine_id: str, first_ts: int, first_event_id: str) -> str:
    """UUIDv5 of the machine and the session's first event (timestamp and id)."""
    return str(uuid.uuid5(SESSION_NAMESPACE, f"{machine_id}\x1f{first_ts}\x1f{first_event_id}"))
