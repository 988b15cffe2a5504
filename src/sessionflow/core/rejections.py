"""Why a record was turned away. A rejection keeps the record's bytes untouched."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    OVERSIZED = "oversized"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    WRONG_TYPE = "wrong_type"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    CLEANING_FAILED = "cleaning_failed"
    REJECTED_BY_RULE = "rejected_by_rule"
    # A later copy of an (machine_id, event_id) whose content differs from the first arrival's.
    CONFLICTING_DUPLICATE = "conflicting_duplicate"


class RejectRecord(Exception):
    """Raised by a cleaning function to turn a record away with a message of its own.

    A user's function raises it with a message only (``rejected_by_rule``); the declarative actions
    give the reason a validation failure would (``wrong_type`` for a value ``cast`` cannot convert,
    ``invalid_timestamp`` for a time ``parse_time`` cannot read).
    """

    def __init__(self, message: str, reason: Reason = Reason.REJECTED_BY_RULE) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    message: str
    raw: bytes


def differing_fields(copy: dict[str, Any], first: dict[str, Any]) -> list[str]:
    """The fields of a later copy whose values differ from its first arrival's (among those both have)."""
    return [name for name in copy if name in first and copy[name] != first[name]]


def conflict_message(machine_id: str, event_id: str, fields: list[str]) -> str:
    """The message of a ``conflicting_duplicate`` rejection: every runtime writes this one."""
    return (
        f"event {event_id!r} of machine {machine_id!r} arrived before with other "
        f"{', '.join(fields)}; the first arrival is kept"
    )
