"""Deterministic session ids: the same machine and first event always give the same id."""

from __future__ import annotations

import hashlib
import uuid

# Fixed forever: changing it would change every session id ever written.
SESSION_NAMESPACE = uuid.UUID("5e55f10e-2c1b-4b7a-9a56-0f7d1c2b3a40")
_NAMESPACE_BYTES = SESSION_NAMESPACE.bytes


def session_id(machine_id: str, first_ts: int, first_event_id: str) -> str:
    """UUIDv5 (RFC 4122) of the machine and the session's first event (timestamp and id).

    Equal to ``str(uuid.uuid5(SESSION_NAMESPACE, name))``, computed without building UUID
    objects: this runs once per session.
    """
    name = f"{machine_id}\x1f{first_ts}\x1f{first_event_id}"
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
