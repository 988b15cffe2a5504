"""The contract feeds: small hand-written inputs, each on machines of its own, in arrival order.

Each feed is a list of items: :class:`Ev` (a valid event, with what the reference needs to know
about it), :class:`Dirty` (a line and the rejection reason the README documents for it) or
:data:`BLANK`. Feeds can be concatenated into one input: each has its own day (``DAY_OF``), so a
feed's machines are idle and forgotten before the next feed's machines move the stream clock, and
inside a feed the lines come in event-time order except where a feed is about disorder.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from sessionflow.config import Config

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# 2026-10-05T08:00:00Z: in the past, so every valid timestamp is before processing time.
T0 = 1_791_158_400_000 + 8 * HOUR

TIMEOUT = 30 * MINUTE
LATENESS = 5 * MINUTE
HORIZON = HOUR
MAX_DURATION = 2 * HOUR
MAX_RECORD_BYTES = 2048

CONFIG_TOML = f"""
[session]
timeout = "30m"
opening_events = ["app_open"]
allowed_lateness = "5m"
dedupe_horizon = "1h"
max_session_duration = "2h"
clock_quorum = 3

[validation]
max_record_bytes = {MAX_RECORD_BYTES}

[columns]          # a nested field's column, written by every runtime
"properties.pages" = "int"

[[clean]]          # feed mapped_shapes: track calls of a tracker with field names of its own, nested
when = {{ "context.library.name" = "contract-tracker" }}
rename = {{ messageId = "event_id", "context.device.id" = "machine_id", event = "event_type", userId = "user_id" }}
cast = {{ user_id = "string", "properties.pages" = "int" }}
drop = ["context.library"]

[[clean]]          # feed mapped_shapes: a clickstream without event ids, its times local to Paris
when = {{ source = "clickstream" }}
rename = {{ ip = "machine_id", event_name = "event_type" }}
event_id = {{ from = ["machine_id", "event_time", "event_type"] }}
parse_time = {{ event_time = {{ format = "%d/%m/%Y %H:%M:%S.%f", timezone = "Europe/Paris" }} }}
"""


def config() -> Config:
    return Config.from_dict(tomllib.loads(CONFIG_TOML))


@dataclass(frozen=True)
class Ev:
    machine: str
    ts: int
    event_id: str
    event_type: str = "view"
    # How the timestamp is written on the wire when not as epoch milliseconds (an ISO-8601 string).
    wire_ts: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()
    # The whole record on the wire, when the config's rules map it from another shape.
    wire: bytes | None = None
    pages: int | None = None  # its properties_pages column

    def line(self) -> bytes:
        if self.wire is not None:
            return self.wire
        record: dict[str, Any] = {
            "event_id": self.event_id,
            "machine_id": self.machine,
            "event_type": self.event_type,
            "timestamp": self.wire_ts if self.wire_ts is not None else self.ts,
        }
        record.update(self.extra)
        return orjson.dumps(record)


@dataclass(frozen=True)
class Dirty:
    raw: bytes
    reason: str


BLANK = b""
Item = Ev | Dirty | bytes


@dataclass(frozen=True)
class Feed:
    name: str
    items: tuple[Item, ...]
    machines: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "machines", frozenset(i.machine for i in self.items if isinstance(i, Ev)))

    def lines(self) -> list[bytes]:
        return [i.line() if isinstance(i, Ev) else i.raw if isinstance(i, Dirty) else i for i in self.items]

    @property
    def records(self) -> int:
        """Lines that are not blank: what the runtimes count as records."""
        return sum(1 for line in self.lines() if line.strip())


def _day(index: int) -> int:
    return T0 + index * DAY


def _gap_boundaries(t: int) -> Feed:
    # The README's worked example, then the gap measured from the previous event, not the start.
    m = "gap-m1"
    n = "gap-m2"
    items: list[Item] = [
        Ev(m, t, "e1", "app_open"),
        Ev(m, t + 10 * MINUTE, "e2", "doc_open"),
        Ev(m, t + 40 * MINUTE, "e3"),  # 30m exactly: stays
        Ev(m, t + 70 * MINUTE + 1, "e4", "edit"),  # 30m + 1 ms: new
        Ev(m, t + 71 * MINUTE, "e5", "app_open"),  # opening event: new
        Ev(m, t + 71 * MINUTE, "e6"),  # tie on time, e6 > e5 by id
    ]
    items += [Ev(n, t + 3 * HOUR + i * TIMEOUT, f"n{i}") for i in range(4)]  # three gaps of exactly the timeout
    items.append(Ev(n, t + 3 * HOUR + 3 * TIMEOUT + TIMEOUT + 1, "n4"))
    return Feed("gap_boundaries", tuple(items))


def _ties(t: int) -> Feed:
    # Same timestamp, arriving out of id order: sorted by event_id. Opening events in ties too.
    return Feed(
        "ties",
        (
            Ev("tie-m1", t, "c"),
            Ev("tie-m1", t, "a"),
            Ev("tie-m1", t, "b"),
            Ev("tie-m1", t + 1, "z"),
            # the opening event sorts second: it opens a session of its own
            Ev("tie-m2", t, "b", "app_open"),
            Ev("tie-m2", t, "a"),
            # the opening event sorts first: one session
            Ev("tie-m3", t, "b"),
            Ev("tie-m3", t, "a", "app_open"),
        ),
    )


def _opening_back_to_back(t: int) -> Feed:
    m = "open-m1"
    return Feed(
        "opening_back_to_back",
        (
            Ev(m, t, "o1", "app_open"),
            Ev(m, t + 1, "o2", "app_open"),
            Ev(m, t + 2, "o3", "app_open"),
            Ev(m, t + 3, "v1"),
            Ev(m, t + 1000, "o4", "APP_OPEN"),  # compared exactly: not an opening event
        ),
    )


def _bot(t: int) -> Feed:
    # Every 10 minutes for 5 hours, never a pause: only max_session_duration (2h) cuts it.
    # 0..120 min lasts exactly the maximum (stays); 130 starts anew, measured from its own start.
    return Feed("bot_max_duration", tuple(Ev("bot-m1", t + i * 10 * MINUTE, f"b{i:02d}") for i in range(31)))


def _duplicates_near(t: int) -> Feed:
    m = "dup-m1"
    return Feed(
        "duplicates_near",
        (
            Ev(m, t, "d1"),
            Ev(m, t + MINUTE, "d2"),
            Ev(m, t + 2 * MINUTE, "d1", "edit"),  # the id again, other content: first arrival wins
            Ev(m, t + MINUTE, "d2"),  # an exact copy
            Ev(m, t + 20 * MINUTE, "d3"),
            Ev(m, t, "d1"),  # after release, within the horizon: still a duplicate
            Ev(m, t + 21 * MINUTE, "d4"),
        ),
    )


def _duplicates_far(t: int) -> Feed:
    # The machine's newest event moves more than dedupe_horizon past x: x's id is forgotten, and a
    # copy of x is an event again, a late one (it sorts before events already placed). y is still
    # within the horizon of the newest event: its copy is a duplicate. (A backfill has no horizon.)
    m = "far-m1"
    return Feed(
        "duplicates_far",
        (
            Ev(m, t, "x"),
            Ev(m, t + 2 * MINUTE, "y"),
            Ev(m, t + HORIZON + 1, "z"),
            Ev(m, t, "x"),
            Ev(m, t + 2 * MINUTE, "y"),
            Ev(m, t + HORIZON + 2, "z2"),
        ),
    )


def _late_within(t: int) -> Feed:
    # Out of order, but never more than allowed_lateness behind the machine's newest event: placed exactly.
    m = "late-m1"
    return Feed(
        "late_within_lateness",
        (
            Ev(m, t, "a"),
            Ev(m, t + 10 * MINUTE, "d"),
            Ev(m, t + 6 * MINUTE, "c"),  # 4 minutes behind
            Ev(m, t + 5 * MINUTE, "b"),  # exactly the lateness behind: on time
            Ev(m, t + 30 * MINUTE, "e"),
            Ev(m, t + 29 * MINUTE, "d2", "app_open"),  # an opening event arriving late splits exactly
        ),
    )


def _late_beyond(t: int) -> Feed:
    # Once b moved the machine 10 minutes past a, a is placed. x sorts before a: late (no session).
    # y is 9 minutes behind b, but sorts after every placed event: placed exactly.
    m = "lateb-m1"
    return Feed(
        "late_beyond_lateness",
        (
            Ev(m, t, "a"),
            Ev(m, t + 10 * MINUTE, "b"),
            Ev(m, t - MINUTE, "x", "edit"),
            Ev(m, t + MINUTE, "y"),
            Ev(m, t + 11 * MINUTE, "c"),
        ),
    )


def _silent_machine(t: int) -> Feed:
    # s goes quiet; three machines go on 2 hours further: the stream clock (quorum 3) closes s's
    # session in a runtime that processes in batches, before the end of input.
    items: list[Item] = [Ev("silent-s", t, "s1", "app_open"), Ev("silent-s", t + MINUTE, "s2")]
    items += [Ev(f"silent-q{i}", t + MINUTE, f"q{i}a") for i in range(3)]
    items += [Ev(f"silent-q{i}", t + 2 * HOUR, f"q{i}b") for i in range(3)]
    return Feed("silent_machine", tuple(items))


def _iso_plus_one_hour(ts: int) -> str:
    """The instant as ISO-8601 with a +01:00 offset, milliseconds included."""
    moment = datetime.fromtimestamp(ts / 1000, tz=timezone(timedelta(hours=1)))
    return moment.isoformat(timespec="milliseconds")


def _dirty(t: int) -> Feed:
    m = "dirty-m1"

    def raw(**fields: Any) -> bytes:
        record = {"event_id": "dx", "machine_id": m, "event_type": "view", "timestamp": t}
        record.update(fields)
        return orjson.dumps({k: v for k, v in record.items() if v is not None})

    return Feed(
        "dirty_records",
        (
            Ev(m, t, "ok1", "app_open", wire_ts=_iso_plus_one_hour(t)),
            Dirty(b'{"event_id": "d-1", "machine_id":', "malformed_json"),
            Dirty(b'{"event_id": "d-2", "machine_id": "dirty-m1", "timestamp": NaN}', "malformed_json"),
            Dirty(b"[1, 2, 3]", "not_an_object"),
            BLANK,
            Dirty(raw(timestamp=None, event_id="d-3"), "missing_field"),
            Dirty(raw(machine_id="", event_id="d-4"), "empty_field"),
            Dirty(raw(event_id=5), "wrong_type"),
            Dirty(raw(event_id="d-5", user_id=7), "wrong_type"),
            Dirty(raw(event_id="d-6", timestamp="2026-10-05T08:00:00"), "invalid_timestamp"),  # no timezone
            Dirty(raw(event_id="d-7", timestamp=946_684_799_999), "timestamp_out_of_range"),  # 1 ms before 2000
            Dirty(raw(event_id="d-8", timestamp=7_258_118_400_000), "timestamp_out_of_range"),  # year 2200
            Dirty(b'{"event_id": "\xff\xfe", "machine_id": "dirty-m1"}', "invalid_utf8"),
            Dirty(raw(event_id="d-9", blob="x" * MAX_RECORD_BYTES), "oversized"),
            BLANK,
            Ev(m, t + MINUTE, "ok2", "edit", extra=(("os", "linux"), ("app_version", "12.1.0"))),
        ),
    )


def _dirty_raw_bytes(t: int) -> Feed:
    # A rejected row keeps the bytes exactly as read, less the line end: the BOM and blanks too.
    m = "raw-m1"
    return Feed(
        "dirty_raw_bytes_kept",
        (
            Ev(m, t, "ok"),
            Dirty(b'\xef\xbb\xbf  {"event_id": 1, "machine_id": "raw-m1"}  ', "wrong_type"),
            Dirty(b'  {"event_id": "r-2", "machine_id": ', "malformed_json"),
        ),
    )


def _documents_and_os(t: int) -> Feed:
    # What a session says of itself: its distinct documents (nulls not counted), its first os (a
    # first event without one does not count), and its events that arrived after a later one.
    m = "docs-m1"

    def ev(ts: int, event_id: str, event_type: str = "view", **extra: Any) -> Ev:
        return Ev(m, ts, event_id, event_type, extra=tuple(extra.items()))

    return Feed(
        "documents_and_os",
        (
            ev(t, "a", "app_open"),
            ev(t + MINUTE, "b", "doc_open", document_id="doc-1", os="macos"),
            ev(t + 4 * MINUTE, "d", "view", document_id="doc-2", os="linux"),
            ev(t + 2 * MINUTE, "c", "edit", document_id="doc-1"),  # arrived after d, placed before it
            ev(t + 3 * MINUTE, "c2", "save", document_id=None),  # after d too
            ev(t + HOUR, "e", "app_open", document_id="doc-3"),  # a second session
            ev(t + HOUR + MINUTE, "f", "view", document_id="doc-3", os="windows"),
        ),
    )


def _mapped_shapes(t: int) -> Feed:
    # Two shapes the config's when-scoped rules map with rename, cast, event_id and parse_time, on
    # nested fields: every runtime calls the core's cleaning, so every runtime maps them alike.
    device, address = "mapped-dev", "mapped-ip"

    def track(message: str, event: str, ts: int, **more: Any) -> bytes:
        record = {
            "messageId": message,
            "event": event,
            "timestamp": ts,
            "userId": 1234,
            "context": {"device": {"id": device}, "library": {"name": "contract-tracker"}},
            "properties": {"pages": "12"},
        }
        record.update(more)
        return orjson.dumps(record)

    def paris(ts: int) -> str:
        return datetime.fromtimestamp(ts / 1000, tz=ZoneInfo("Europe/Paris")).strftime("%d/%m/%Y %H:%M:%S.%f")

    def click(name: str, ts: int) -> Ev:
        record = {"source": "clickstream", "ip": address, "event_name": name, "event_time": paris(ts)}
        made = _made_event_id([address, paris(ts), name])
        return Ev(address, ts, made, name, wire=orjson.dumps(record))

    no_device = orjson.loads(track("t-x", "view", t))
    del no_device["context"]["device"]
    bad_pages = orjson.loads(track("t-y", "view", t))
    bad_pages["properties"]["pages"] = "1e30"
    again = click("Search", t + 4 * MINUTE)
    return Feed(
        "mapped_shapes",
        (
            Ev(device, t, "t-1", "app_open", wire=track("t-1", "app_open", t), pages=12),
            click("Search", t + MINUTE),
            Ev(device, t + 2 * MINUTE, "t-2", "view", wire=track("t-2", "view", t + 2 * MINUTE), pages=12),
            again,
            again,  # sent twice: the same record makes the same id, a duplicate
            click("AddToCart", t + 5 * MINUTE + 1),
            Dirty(orjson.dumps(no_device), "missing_field"),  # no context.device.id: no machine
            Dirty(orjson.dumps(bad_pages), "wrong_type"),  # cast overflow
            Dirty(
                orjson.dumps(
                    {"source": "clickstream", "ip": address, "event_name": "Search", "event_time": "31/02/2026"}
                ),
                "invalid_timestamp",
            ),
            Ev(
                device,
                t + 40 * MINUTE,
                "t-3",
                "edit",
                wire=track("t-3", "edit", t + 40 * MINUTE, properties={}),
                pages=None,
            ),
        ),
    )


def _made_event_id(values: list[Any]) -> str:
    """The README's formula for an event_id rule: UUIDv5 of the values as compact JSON."""
    text = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return str(uuid.uuid5(uuid.UUID("0b2f6c1e-7d3a-5e88-9f14-3c6a2d9e8b71"), text))


_BUILDERS = (
    _gap_boundaries,
    _ties,
    _opening_back_to_back,
    _bot,
    _duplicates_near,
    _duplicates_far,
    _late_within,
    _late_beyond,
    _silent_machine,
    _dirty,
    _dirty_raw_bytes,
    _documents_and_os,
    _mapped_shapes,
)
FEEDS: dict[str, Feed] = {}
for _index, _build in enumerate(_BUILDERS):
    _feed = _build(_day(_index))
    FEEDS[_feed.name] = _feed
assert len({m for f in FEEDS.values() for m in f.machines}) == sum(len(f.machines) for f in FEEDS.values())


def combined_lines() -> list[bytes]:
    """Every feed, one after the other: the one input the expensive runtimes get."""
    return [line for feed in FEEDS.values() for line in feed.lines()]
