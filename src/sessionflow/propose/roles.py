"""Which field of a sample plays which role: the machine, the event type, the time, the event id.

Names are the first clue (``anonymousId``, ``context.device.id``, ``event_name``, ``messageId``...
as Segment, RudderStack, Snowplow, GA4 exports and web logs write them); the values decide: a
required field must be in every record, an event type takes few values, an event id is unique (or
repeats only with the whole record: a re-send). Pure: a :class:`Sample` in, choices out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson

from sessionflow.core.paths import get_path, parts_of
from sessionflow.propose.sample import Leaf, Sample, normalise

MACHINE_HINTS = (
    "machine_id",
    "device_id",
    "context.device.id",
    "anonymous_id",
    "client_id",
    "user_pseudo_id",
    "domain_userid",
    "network_userid",
    "visitor_id",
    "cookie_id",
    "installation_id",
    "install_id",
    "ip",
    "remote_addr",
    "client_ip",
    "context.ip",
    "user_ip_address",
)
TYPE_HINTS = (
    "event_type",
    "event",
    "event_name",
    "action",
    "event_action",
    "type",
    "name",
    "category",
    "se_action",
)
ID_HINTS = ("event_id", "message_id", "event_uuid", "insert_id", "uuid", "id", "_id", "request_id")
TIME_HINTS = (
    "timestamp",
    "event_timestamp",
    "event_time",
    "time",
    "ts",
    "original_timestamp",
    "client_timestamp",
    "dvce_created_tstamp",
    "derived_tstamp",
    "occurred_at",
    "created_at",
    "sent_at",
    "collector_tstamp",
    "received_at",
    "@timestamp",
    "time_local",
    "time_iso8601",
    "datetime",
    "date",
)
USER_HINTS = ("user_id", "uid", "user", "customer_id", "login", "username")
VERSION_HINTS = (
    "app_version",
    "context.app.version",
    "app.version",
    "version",
    "client_version",
    "application_version",
)
# Where a feed keeps what the default columns `os` and `document_id` hold (Segment's context, GA4's
# device, an editor's properties): a rename moves it there, so sessions get their os and documents.
OS_HINTS = ("os", "os_name", "context.os.name", "device.operating_system", "operating_system", "os_family")
DOCUMENT_HINTS = (
    "document_id",
    "doc_id",
    "properties.document_id",
    "properties.doc_id",
    "file_id",
    "properties.file_id",
)
# Objects whose `version` is not the app's.
NOT_APP = frozenset({"os", "browser", "device", "library", "sdk", "tracker"})
# Never the machine: an id per session or per event changes under it.
NOT_MACHINE = frozenset({"sessionid", "session", "eventid", "messageid", "id", "uuid"})


def rank(leaf: Leaf, hints: tuple[str, ...]) -> tuple[int, int] | None:
    """How well the leaf's name matches the hints: (hint index, depth), lower is better; None: no match."""
    full = normalise(leaf.path)
    for index, hint in enumerate(hints):
        wanted = normalise(hint)
        if full == wanted or ("." not in hint and leaf.name == wanted):
            return index, leaf.depth
    return None


def by_name(sample: Sample, hints: tuple[str, ...], exclude: Iterable[str] = ()) -> list[Leaf]:
    """The sample's leaves that match a hint, best first."""
    skip = set(exclude)
    ranked = [
        (found, leaf.path, leaf)
        for leaf in sample.leaves.values()
        if leaf.path not in skip and (found := rank(leaf, hints)) is not None
    ]
    return [leaf for _, _, leaf in sorted(ranked, key=lambda item: (item[0], item[1]))]


def pick_machine(sample: Sample, exclude: Iterable[str] = ()) -> Leaf | None:
    """A field in every record, a string or a whole number, shared by several records."""

    def fits(leaf: Leaf) -> bool:
        if not (sample.everywhere(leaf) and leaf.only("str", "int")) or normalise(leaf.path) in NOT_MACHINE:
            return False
        return sample.size < 20 or leaf.distinct < sample.size  # one value per record is an event id

    named = [leaf for leaf in by_name(sample, MACHINE_HINTS, exclude) if fits(leaf)]
    if named:
        return named[0]
    return None


def pick_type(sample: Sample, exclude: Iterable[str] = ()) -> Leaf | None:
    """A string in every record with few values (more than one, when the sample has more than one record)."""
    limit = max(100, sample.size // 10)

    def fits(leaf: Leaf) -> bool:
        if not (sample.everywhere(leaf) and leaf.only("str")):
            return False
        return (leaf.distinct > 1 or sample.size < 2) and leaf.distinct <= limit

    named = [leaf for leaf in by_name(sample, TYPE_HINTS, exclude) if fits(leaf)]
    return named[0] if named else None


def pick_event_id(sample: Sample, exclude: Iterable[str] = ()) -> Leaf | None:
    """A string or whole number in every record, repeated only by a copy of the whole record."""
    for leaf in by_name(sample, ID_HINTS, exclude):
        if sample.everywhere(leaf) and leaf.only("str", "int") and not conflicts(sample, [leaf.path]):
            return leaf
    return None


def pick_optional(sample: Sample, hints: tuple[str, ...], exclude: Iterable[str] = ()) -> Leaf | None:
    """The user or the app version: not required, but a string or a number when there."""
    for leaf in by_name(sample, hints, exclude):
        if leaf.only("str", "int"):
            return leaf
    return None


def pick_app_version(sample: Sample, exclude: Iterable[str] = ()) -> Leaf | None:
    """The app's version: a ``version`` inside the os, the browser, the device or the tracking
    library (``context.os.version``, ``context.library.version``) is theirs, not the app's."""
    theirs = [leaf.path for leaf in sample.leaves.values() if _owner(leaf.path) in NOT_APP]
    return pick_optional(sample, VERSION_HINTS, [*exclude, *theirs])


def _owner(path: str) -> str:
    """The object a field is in (``context.os.version`` -> ``os``), or "" at the top."""
    parts = path.split(".")
    return normalise(parts[-2]) if len(parts) > 1 else ""


def _identity(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def conflicts(sample: Sample, fields: list[str]) -> int:
    """Records whose values of ``fields`` another record of other content shares: ids that would collide."""
    paths = [parts_of(name) for name in fields]
    groups: dict[bytes, set[bytes]] = defaultdict(set)
    keys = []
    for record in sample.records:
        key = orjson.dumps([get_path(record, parts) for parts in paths], option=orjson.OPT_SORT_KEYS)
        groups[key].add(_identity(record))
        keys.append(key)
    return sum(1 for key in keys if len(groups[key]) > 1)


def id_fields(sample: Sample, base: list[str], limit: int = 8) -> tuple[list[str], int]:
    """Fields whose values tell the sample's records apart: ``base`` (machine, time, type), then the
    fewest others that remove every collision (greedy). Also the collisions left."""
    chosen = [name for name in base if name]
    left = conflicts(sample, chosen)
    candidates = [
        leaf.path
        for leaf in sorted(sample.leaves.values(), key=lambda leaf: (-leaf.distinct, leaf.path))
        if leaf.path not in chosen and leaf.only("str", "int", "float", "bool")
    ]
    while left and candidates and len(chosen) < limit:
        scored = [(conflicts(sample, [*chosen, path]), path) for path in candidates]
        best_left, best = min(scored)
        if best_left >= left:
            break
        chosen.append(best)
        candidates.remove(best)
        left = best_left
    return chosen, left
