"""Feeds shaped like other people's, and the plain mapping of each: what its records must become.

* :func:`segment_feed`: Segment/RudderStack ``track`` calls (``messageId``, ``anonymousId``,
  ``userId``, ``event``, ISO ``timestamp``, nested ``properties`` and ``context``), sent from two
  libraries: a legacy one sends snake_case event names and numeric user ids. Retries (exact copies)
  and arrival out of order, as a collector delivers them.
* :func:`faker_clickstream_feed`: the ``faker-clickstream`` package's sessions (``ip``, numeric
  ``user_id``, ``event_name``, ``event_time`` as ``"02/12/2026 05:02:38.850308"`` with no zone,
  nested ``metadata``, no event id), session after session as it writes them, on a clock of its own
  so the feed is the same at every run.

Each has a few invalid lines planted (:data:`PLANTED`). The ``*_event`` functions map one raw
record by hand, the plainest way, sharing nothing with ``sessionflow.core``: the tests hold the
lake to what they give.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from tests.local.arrival_feeds import Event

MINUTE = 60_000
START = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)  # before the day this was written: never in the future
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A line no config can read: every feed has these, and they are all any config may reject.
PLANTED = [b'{"event": "Document Opened", "messageId": "cut-off', b"[1, 2, 3]"]

SEGMENT_EVENTS = ("Document Opened", "Page Viewed", "Document Edited", "Document Saved", "Document Signed")
SEGMENT_CONFIG = """\
[session]
timeout = "30m"
opening_events = ["Application Opened"]

[fields]
event_id = "messageId"
machine_id = "context.device.id"
event_type = "event"
user_id = "userId"
app_version = "context.app.version"

[columns]
"properties.page_count" = "int"
"context.locale" = "string"

[[clean]]          # the legacy library: snake_case names, numeric user ids
when = { "context.library.name" = "rudder-legacy" }
cast = { userId = "string" }
[clean.map.event]
application_opened = "Application Opened"
document_opened = "Document Opened"
page_viewed = "Page Viewed"
document_edited = "Document Edited"
document_saved = "Document Saved"
document_signed = "Document Signed"

[[clean]]          # nested fields to the default columns; what nobody reads, gone
rename = { "context.os.name" = "os", "properties.doc_id" = "document_id" }
drop = ["context.library", "context.ip"]
"""

FAKER_CONFIG = """\
[session]
timeout = "30m"
opening_events = []

[fields]
machine_id = "ip"
event_type = "event_name"

[columns]
channel = "string"
"metadata.product_id" = "int"

[[clean]]
cast = { user_id = "string" }
event_id = { from = ["ip", "event_time", "event_name"] }
parse_time = { event_time = { format = "%d/%m/%Y %H:%M:%S.%f", timezone = "UTC" } }
"""


def iso_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms_of(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


# -- Segment / RudderStack track calls -------------------------------------------------------------


def segment_feed(machines: int = 40, seed: int = 5, legacy: bool = True) -> list[bytes]:
    """Track calls of ``machines`` desktop installs over two days, delivered a little out of order."""
    rng = random.Random(seed)
    timed: list[tuple[float, bytes]] = []
    for number in range(machines):
        device = str(uuid.UUID(int=rng.getrandbits(128)))
        library = "rudder-legacy" if legacy and number % 4 == 0 else "analytics-python"
        user: str | int | None = rng.choice([None, f"user-{number}", f"user-{number}"])
        if library == "rudder-legacy" and user is not None:
            user = 1000 + number
        machine = {
            "device": device,
            "anonymous": f"anon-{rng.getrandbits(48):012x}",
            "user": user,
            "library": library,
            "version": rng.choice(["11.2.3", "12.0.1", "12.1.0"]),
            "os": rng.choice(["macOS", "Windows", "Linux"]),
            "locale": rng.choice(["en-US", "fr-FR", "de-DE"]),
        }
        moment = START + timedelta(minutes=rng.randint(0, 600))
        for _ in range(rng.randint(1, 5)):
            events = ["Application Opened", *(rng.choice(SEGMENT_EVENTS) for _ in range(rng.randint(2, 25)))]
            if rng.random() < 0.2:
                events[0] = rng.choice(SEGMENT_EVENTS)  # a session the timeout starts, not an opening event
            for name in events:
                moment += timedelta(milliseconds=rng.randint(2_000, 12 * MINUTE))
                if rng.random() < 0.04:
                    moment += timedelta(minutes=31)  # a pause longer than the timeout
                line = _track(rng, machine, name, moment)
                arrival = ms_of(moment) + rng.randint(0, 15 * MINUTE)  # a collector's delay
                timed.append((arrival, line))
                if rng.random() < 0.03:  # a retry: the same bytes again, later
                    timed.append((arrival + rng.randint(1, 60 * MINUTE), line))
            moment += timedelta(minutes=rng.randint(40, 600))
    timed.sort(key=lambda item: item[0])
    lines = [line for _, line in timed]
    for position, planted in zip((len(lines) // 3, 2 * len(lines) // 3), PLANTED, strict=True):
        lines.insert(position, planted)
    return lines


def _track(rng: random.Random, machine: dict[str, Any], name: str, moment: datetime) -> bytes:
    legacy = machine["library"] == "rudder-legacy"
    properties: dict[str, Any] = {}
    if name.startswith("Document"):
        properties = {"doc_id": f"doc-{rng.randint(1, 40)}", "page_count": rng.randint(1, 300)}
    elif name == "Page Viewed":
        properties = {"page": rng.randint(1, 300)}
    record = {
        "type": "track",
        "event": name.lower().replace(" ", "_") if legacy else name,
        "messageId": f"{'rudder' if legacy else 'ajs'}-{rng.getrandbits(64):016x}",
        "anonymousId": machine["anonymous"],
        "userId": machine["user"],
        "timestamp": iso_ms(moment),
        "sentAt": iso_ms(moment + timedelta(milliseconds=rng.randint(5, 900))),
        "properties": properties,
        "context": {
            "device": {"id": machine["device"], "type": "desktop"},
            "app": {"name": "PDF Editor", "version": machine["version"]},
            "os": {"name": machine["os"], "version": "14.1"},
            "library": {"name": machine["library"], "version": "2.3.1"},
            "ip": f"203.0.113.{rng.randint(1, 254)}",
            "locale": machine["locale"],
        },
    }
    return orjson.dumps(record)


def segment_event(line: bytes, map_names: bool = True) -> Event | None:
    """A track call as the README's Segment config maps it, written out by hand (``map_names``:
    with the legacy library's names mapped to the others')."""
    try:
        record = json.loads(line)
        context = record["context"]
        name = record["event"]
        if map_names and context["library"]["name"] == "rudder-legacy":
            name = name.replace("_", " ").title()
        moment = datetime.fromisoformat(record["timestamp"])
        # The session's os and documents come from the renamed context.os.name and properties.doc_id.
        os, document = context.get("os", {}).get("name"), record.get("properties", {}).get("doc_id")
        return Event(context["device"]["id"], record["messageId"], ms_of(moment), name, os, document)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def segment_columns(line: bytes) -> dict[str, Any]:
    """The typed columns the Segment config gives a track call, by hand."""
    record = json.loads(line)
    context = record["context"]
    user = record["userId"]
    return {
        "user_id": None if user is None else str(user),
        "app_version": context["app"]["version"],
        "os": context["os"]["name"],
        "document_id": record["properties"].get("doc_id"),
        "properties_page_count": record["properties"].get("page_count"),
        "context_locale": context["locale"],
    }


# -- a web server's access log, exported as JSON lines --------------------------------------------------

WEBLOG_CONFIG = """\
[session]
timeout = "30m"
opening_events = []

[fields]
machine_id = "remote_addr"

[columns]
request_uri = "string"
status = "int"

[[clean]]          # a request is a page view; its id is made of what tells two requests apart
event_id = { from = ["remote_addr", "time_local", "request_method", "request_uri"] }
parse_time = { time_local = { format = "%d/%b/%Y:%H:%M:%S %z" } }
set = { event_type = "page_view" }

[[clean]]          # errors are events of their own
when = { status = "[45]*" }
set = { event_type = "error" }
"""
PAGES = ("/", "/pricing", "/docs/intro", "/docs/api", "/signup", "/login", "/blog/sessions")


def weblog_feed(addresses: int = 30, seed: int = 9) -> list[bytes]:
    """Requests of ``addresses`` clients over a day, in the server's order (by time), in its local time."""
    rng = random.Random(seed)
    zone = timezone(timedelta(hours=1))
    timed = []
    for number in range(addresses):
        address = f"198.51.100.{number + 1}"
        moment = START + timedelta(minutes=rng.randint(0, 600))
        for _ in range(rng.randint(1, 4)):
            for _ in range(rng.randint(1, 15)):
                moment += timedelta(seconds=rng.randint(1, 900))
                record = {
                    "time_local": moment.astimezone(zone).strftime("%d/%b/%Y:%H:%M:%S %z"),
                    "remote_addr": address,
                    "request_method": rng.choice(["GET", "GET", "GET", "POST"]),
                    "request_uri": rng.choice(PAGES),
                    "status": rng.choice([200] * 12 + [304, 404, 500]),
                    "body_bytes_sent": rng.randint(0, 90_000),
                    "http_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
                }
                timed.append((moment, orjson.dumps(record)))
            moment += timedelta(minutes=rng.randint(31, 300))
    timed.sort(key=lambda item: item[0])
    return [line for _, line in timed]


def weblog_event(line: bytes) -> Event | None:
    """An access-log line as the README's web log config maps it, written out by hand."""
    try:
        record = json.loads(line)
        moment = datetime.strptime(record["time_local"], "%d/%b/%Y:%H:%M:%S %z")
        values = [record["remote_addr"], record["time_local"], record["request_method"], record["request_uri"]]
    except (ValueError, KeyError, TypeError):
        return None
    kind = "error" if str(record.get("status", "")).startswith(("4", "5")) else "page_view"
    return Event(record["remote_addr"], made_event_id(values), ms_of(moment), kind)


# -- faker-clickstream ---------------------------------------------------------------------------------


class _Clock:
    """``datetime.now`` for the generator: a clock that moves on by up to a second per call."""

    def __init__(self, start: datetime, rng: random.Random) -> None:
        self.now = start.replace(tzinfo=None)  # the generator writes naive local times
        self.rng = rng

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=self.rng.randint(1, 1_000_000))
        return self.now


@contextmanager
def _generator_clock(clock: _Clock) -> Iterator[None]:
    from faker_clickstream import clickstream

    class FixedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return clock()

    original = clickstream.datetime
    clickstream.datetime = FixedDatetime
    try:
        yield
    finally:
        clickstream.datetime = original


def _pristine_events() -> Callable[[], list[dict[str, Any]]]:
    # The generator renames the events of its own constant table as it goes: a copy for each feed.
    from faker_clickstream import event_constants

    table = copy.deepcopy(event_constants.weighted_events)
    return lambda: copy.deepcopy(table)


_EVENTS = _pristine_events()


def faker_clickstream_feed(sessions: int = 400, seed: int = 3) -> list[bytes]:
    """``sessions`` sessions of the faker-clickstream provider, one after the other as it writes them."""
    from faker import Faker
    from faker_clickstream import ClickstreamProvider, clickstream

    state = random.getstate()
    random.seed(seed)  # the provider draws from the random module
    Faker.seed(seed)
    fake = Faker()
    fake.add_provider(ClickstreamProvider)
    events = clickstream.weighted_events
    clickstream.weighted_events = _EVENTS()
    lines: list[bytes] = []
    try:
        with _generator_clock(_Clock(START, random.Random(seed))):
            for _ in range(sessions):
                for record in fake.session_clickstream():
                    # Its session id hashes an object's address: the same feed at every run needs it fixed.
                    record["session_id"] = hashlib.sha256(f"{seed}-{len(lines)}".encode()).hexdigest()
                    lines.append(orjson.dumps(record))
    finally:
        clickstream.weighted_events = events
        random.setstate(state)
    bad_time = orjson.loads(lines[len(lines) // 2])
    bad_time["event_time"] = "31/02/2026 05:02:38.850308"  # no 31 February
    lines.insert(len(lines) // 2, orjson.dumps(bad_time))
    for position, planted in zip((len(lines) // 3, 2 * len(lines) // 3), PLANTED, strict=True):
        lines.insert(position, planted)
    return lines


FAKER_PLANTED_TIME = b"31/02/2026"


def faker_event(line: bytes) -> Event | None:
    """A faker-clickstream record as the README's config maps it, written out by hand."""
    try:
        record = json.loads(line)
        local = datetime.strptime(record["event_time"], "%d/%m/%Y %H:%M:%S.%f").replace(tzinfo=UTC)
        name = (record["ip"], record["event_time"], record["event_name"])
    except (ValueError, KeyError, TypeError):
        return None
    return Event(record["ip"], made_event_id(list(name)), ms_of(local), record["event_name"])


def made_event_id(values: list[Any]) -> str:
    """The README's formula for ``event_id = { from = [...] }``: UUIDv5 of the values as a compact JSON array."""
    text = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return str(uuid.uuid5(uuid.UUID("0b2f6c1e-7d3a-5e88-9f14-3c6a2d9e8b71"), text))
