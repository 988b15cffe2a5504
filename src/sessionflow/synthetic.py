"""Realistic synthetic PDF-editor usage events, dirty the way a real feed is.

Each machine lives through sessions (app_open, documents opened, viewed, edited, saved, shared,
signed, closed, app_close) with human pauses, some long enough to time a session out. A few
machines are bots that never stop. The feed is then dirtied: invalid records of every kind, a
build (11.2.*) that sends timestamps in seconds, upper-case event types, ISO-8601 timestamps,
duplicates, and arrival out of order within the lateness.

Streams: memory is bounded by the number of machines, not by the number of events.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from sessionflow.config import MINUTE, SECOND

DEFAULT_START = datetime(2026, 10, 5, tzinfo=UTC)

VERSIONS = (("12.1.0", 30), ("12.0.3", 25), ("11.3.2", 15), ("11.2.1", 8), ("11.2.4", 7), ("10.8.0", 10), ("9.4", 5))
OS_NAMES = (("windows", 70), ("macos", 25), ("linux", 5))
DOC_ACTIONS = (
    ("view", 50),
    ("edit", 18),
    ("annotate", 8),
    ("save", 10),
    ("share", 4),
    ("sign", 3),
    ("print", 3),
    ("search", 4),
)
EXTRA_FIELDS = ("locale", "page_count", "file_size_kb", "feature_flags")


@dataclass(frozen=True, slots=True)
class FeedShape:
    events: int = 10_000
    machines: int = 200
    seed: int = 1
    start: datetime = DEFAULT_START
    days: float = 3.0
    bots: int = 1  # machines that never stop, about 5% of the events between them
    invalid_rate: float = 0.004
    duplicate_rate: float = 0.01
    uppercase_rate: float = 0.03
    iso_timestamp_rate: float = 0.02
    blank_rate: float = 0.0005
    max_delay_ms: int = 4 * MINUTE  # under the default 5 min lateness
    # Records that arrive 6 to 60 minutes late: the sessionizer keeps them, flagged late.
    late_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.events < 0 or self.machines <= 0:
            raise ValueError("events must be >= 0 and machines > 0")


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([name for name, _ in table], [weight for _, weight in table])[0]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Machine:
    def __init__(
        self,
        rng: random.Random,
        index: int,
        start_ms: int,
        span_ms: int,
        bot_interval_ms: int | None,
        session_gap_ms: int,
    ) -> None:
        self.rng = random.Random(rng.getrandbits(64))
        self.machine_id = f"mach-{index:06d}-{self.rng.getrandbits(32):08x}"
        self.user_id = None if self.rng.random() < 0.1 else f"user-{self.rng.getrandbits(40):010x}"
        self.os = _weighted(self.rng, OS_NAMES)
        self.version = _weighted(self.rng, VERSIONS)
        self.bot_interval_ms = bot_interval_ms
        self.session_gap_ms = session_gap_ms
        self.now = start_ms + int(self.rng.random() * span_ms * (0.01 if bot_interval_ms else 0.5))

    def timeline(self) -> Iterator[tuple[int, str, dict[str, object]]]:
        """(timestamp ms, event type, extra fields) in event-time order, forever (bots) or not."""
        rng = self.rng
        while True:
            if self.bot_interval_ms:
                self.now += rng.randint(self.bot_interval_ms // 2, self.bot_interval_ms * 3 // 2)
                yield self.now, rng.choice(("view", "sync", "search")), {}
                continue
            # A session: sometimes the app was already open (resume after sleep): no app_open.
            if rng.random() < 0.85:
                yield self.now, "app_open", {}
            for _ in range(rng.randint(1, 4)):
                self._pause()
                document = f"doc-{rng.getrandbits(32):08x}"
                yield self.now, "doc_open", {"document_id": document, "page_count": rng.randint(1, 400)}
                for _ in range(rng.randint(1, 12)):
                    self._pause()
                    yield self.now, _weighted(rng, DOC_ACTIONS), {"document_id": document}
                self._pause()
                yield self.now, "doc_close", {"document_id": document}
            if rng.random() < 0.8:
                self._pause()
                yield self.now, "app_close", {}
            # Hours between sessions; sometimes only minutes (a quick re-open).
            self.now += (
                int(rng.expovariate(1 / self.session_gap_ms))
                if rng.random() < 0.8
                else rng.randint(MINUTE, 20 * MINUTE)
            )

    def _pause(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.02:
            self.now += rng.randint(31 * MINUTE, 90 * MINUTE)  # lunch: the session times out
        elif roll < 0.025:
            self.now += 30 * MINUTE  # exactly the timeout: stays in the session
        else:
            self.now += int(rng.expovariate(1 / (15 * SECOND))) + 1


def _record(
    machine: _Machine, rng: random.Random, shape: FeedShape, ts: int, event_type: str, extra: dict[str, object]
) -> dict[str, object]:
    record: dict[str, object] = {
        "event_id": _uuid(rng),
        "machine_id": machine.machine_id,
        "event_type": event_type.upper() if rng.random() < shape.uppercase_rate else event_type,
        "timestamp": ts,
        "app_version": machine.version,
        "os": machine.os,
    }
    if machine.user_id is not None:
        record["user_id"] = machine.user_id
    record.update(extra)
    if rng.random() < 0.05:
        record[rng.choice(EXTRA_FIELDS)] = rng.choice(("en-US", "de-DE", 12, 3.5, ["dark_mode"]))
    if machine.version.startswith("11.2."):
        record["timestamp"] = ts // 1000  # the build that sends seconds
    elif rng.random() < shape.iso_timestamp_rate:
        record["timestamp"] = datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds")
    return record


def _invalid(rng: random.Random, machine: _Machine, ts: int) -> bytes:
    good = {"event_id": _uuid(rng), "machine_id": machine.machine_id, "event_type": "view", "timestamp": ts}
    kind = rng.randrange(9)
    if kind == 0:
        return orjson.dumps(good)[: rng.randint(5, 40)]  # truncated JSON
    if kind == 1:
        return rng.choice((b"[1, 2, 3]", b"42", b'"app_open"', b"null"))
    if kind == 2:
        del good["machine_id"]
    elif kind == 3:
        good["event_id"] = rng.randint(1, 10**9)  # wrong type
    elif kind == 4:
        good["timestamp"] = "yesterday at noon"
    elif kind == 5:
        good["timestamp"] = 631152000000  # 1990: out of range
    elif kind == 6:
        good["event_type"] = ""
    elif kind == 7:
        return orjson.dumps(good)[:-2] + b'\xff\xfe"}'  # invalid UTF-8
    else:
        good["timestamp"] = ts + 400 * 24 * 3600 * SECOND  # far in the future
    return orjson.dumps(good)


def generate(shape: FeedShape) -> Iterator[bytes]:
    """Yield the feed, one JSON line (without its newline) at a time, in arrival order."""
    rng = random.Random(shape.seed)
    start_ms = int(shape.start.timestamp() * 1000)
    span_ms = int(shape.days * 24 * 3600 * SECOND)
    # Spread each machine's sessions (about 25 events each) over the span of days.
    sessions_per_machine = max(1.0, shape.events / shape.machines / 25)
    session_gap_ms = max(MINUTE, int(span_ms / 2 / sessions_per_machine))
    bots = min(shape.bots, shape.machines)
    bot_interval_ms = min(10 * MINUTE, max(SECOND, int(span_ms * bots / max(1.0, 0.05 * shape.events))))
    machines = [
        _Machine(rng, i, start_ms, span_ms, bot_interval_ms if i < bots else None, session_gap_ms)
        for i in range(shape.machines)
    ]
    timelines = [machine.timeline() for machine in machines]
    # Each machine's next event, by event time: machines interleave as they would live.
    upcoming: list[tuple[int, int, str, dict[str, object]]] = []
    for i, timeline in enumerate(timelines):
        ts, event_type, extra = next(timeline)
        upcoming.append((ts, i, event_type, extra))
    heapq.heapify(upcoming)
    # Arrivals: event time plus a network delay; a heap releases them in arrival order.
    arrivals: list[tuple[int, int, bytes]] = []
    sequence = 0
    produced = 0
    while produced < shape.events:
        ts, i, event_type, extra = upcoming[0]
        machine = machines[i]
        nxt = next(timelines[i])
        heapq.heapreplace(upcoming, (nxt[0], i, nxt[1], nxt[2]))
        while arrivals and arrivals[0][0] <= ts:
            yield heapq.heappop(arrivals)[2]
        roll = rng.random()
        if roll < shape.blank_rate:
            line = b""
        elif roll < shape.blank_rate + shape.invalid_rate:
            line = _invalid(rng, machine, ts)
        else:
            line = orjson.dumps(_record(machine, rng, shape, ts, event_type, extra))
        delay = rng.randint(0, 2 * SECOND) if rng.random() < 0.9 else rng.randint(0, shape.max_delay_ms)
        if shape.late_rate and rng.random() < shape.late_rate:
            delay = rng.randint(6 * MINUTE, 60 * MINUTE)
        sequence += 1
        heapq.heappush(arrivals, (ts + delay, sequence, line))
        produced += 1
        if line and rng.random() < shape.duplicate_rate and produced < shape.events:
            # A client retry: the same bytes again, a little later.
            sequence += 1
            heapq.heappush(arrivals, (ts + delay + rng.randint(0, 60 * SECOND), sequence, line))
            produced += 1
    while arrivals:
        yield heapq.heappop(arrivals)[2]


def write_feed(shape: FeedShape, output: str) -> int:
    """Write the feed as JSON lines to a file (gzip when the name ends in .gz) or ``-`` (stdout)."""
    import gzip
    import sys

    if output == "-":
        handle = sys.stdout.buffer
    elif output.endswith(".gz"):
        handle = gzip.open(output, "wb", compresslevel=5)  # noqa: SIM115
    else:
        handle = open(output, "wb")  # noqa: SIM115
    written = 0
    try:
        chunk: list[bytes] = []
        for line in generate(shape):
            chunk.append(line)
            if len(chunk) >= 10_000:
                handle.write(b"\n".join(chunk) + b"\n")
                written += len(chunk)
                chunk.clear()
        if chunk:
            handle.write(b"\n".join(chunk) + b"\n")
            written += len(chunk)
    finally:
        if output != "-":
            handle.close()
        else:
            handle.flush()
    return written
