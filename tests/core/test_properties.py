"""Property-based tests of the core: streaming equals the sorted batch, and every record is counted once.

The streaming invariant: events arriving in any order that keeps each event within the allowed
lateness of every newer event, cut into batches anywhere, are sessionized exactly as one sorted
batch would be. The arrival order sorts by ``timestamp + delay`` with ``delay`` in
``[0, allowed_lateness]``: an event arriving after another is then at most the lateness older.
"""

from __future__ import annotations

import base64
import copy
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionflow.config import HOUR, MINUTE, Config, SessionConfig
from sessionflow.core import Outputs, Pipeline, Sessionizer
from tests.helpers import NOW, T0, through_json

TIMEOUT = 30 * MINUTE
LATENESS = 5 * MINUTE
TYPES = ("app_open", "view", "edit", "save")
# Gaps that sit on every boundary the rules have, and some ordinary ones.
GAPS = st.one_of(
    st.sampled_from([0, 0, 1, LATENESS, LATENESS + 1, TIMEOUT - 1, TIMEOUT, TIMEOUT + 1, 2 * TIMEOUT, HOUR + 1]),
    st.integers(0, 3 * TIMEOUT),
)

PROFILE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Scenario:
    config: SessionConfig
    events: list[dict[str, Any]]  # in arrival order
    batches: list[int]  # batch sizes, summing to len(events)
    restarts: list[bool]  # after each batch: save the state as JSON and start from it (a new run)


# On a grid of the lateness, timestamps and delays coincide often: the ties at the limits that a
# wide random spread almost never produces.
GRID_GAPS = st.sampled_from([0, LATENESS, TIMEOUT, TIMEOUT + LATENESS])
GRID_DELAYS = st.sampled_from([0, LATENESS])


@st.composite
def machine_events(draw: st.DrawFn, machine: str, grid: bool) -> list[dict[str, Any]]:
    # Machines often start on the same boundaries, so one machine's time lands on another's limits.
    ts = T0 + draw(st.one_of(st.sampled_from([0, TIMEOUT, TIMEOUT + LATENESS]), st.integers(0, 3 * HOUR)))
    if grid:
        ts = T0 + LATENESS * draw(st.integers(0, 12))
    gaps = GRID_GAPS if grid else GAPS
    events = []
    for index in range(draw(st.integers(1, 25))):
        ts += draw(gaps)
        # The prefix decides how ties on timestamp sort; the index keeps ids unique.
        event_id = f"{draw(st.sampled_from('abcdef'))}-{machine}-{index:03d}"
        events.append(
            {
                "event_id": event_id,
                "machine_id": machine,
                "event_type": draw(st.sampled_from(TYPES)),
                "timestamp": ts,
                "user_id": draw(st.sampled_from([None, None, "u-1", "u-2"])),
                "app_version": draw(st.sampled_from([None, "12.1.0", "11.2.4"])),
            }
        )
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    config = SessionConfig(
        timeout_ms=TIMEOUT,
        allowed_lateness_ms=LATENESS,
        opening_events=frozenset({"app_open"}),
        max_session_duration_ms=draw(st.sampled_from([None, None, HOUR, 2 * HOUR])),
        dedupe_horizon_ms=draw(st.sampled_from([LATENESS, HOUR])),
        clock_quorum=draw(st.integers(1, 3)),
    )
    grid = draw(st.booleans())
    events = []
    for m in range(draw(st.integers(1, 5))):
        events.extend(draw(machine_events(f"m{m}", grid)))
    # The extremes of the delay matter most: an event as late as allowed right after one on time.
    delay = GRID_DELAYS if grid else st.one_of(st.sampled_from([0, LATENESS]), st.integers(0, LATENESS))
    delays = draw(st.lists(delay, min_size=len(events), max_size=len(events)))
    # Ties of arrival time are broken at random too.
    tiebreak = draw(st.permutations(range(len(events))))
    order = sorted(range(len(events)), key=lambda i: (events[i]["timestamp"] + delays[i], tiebreak[i]))
    arrival = [events[i] for i in order]
    batches = []
    left = len(arrival)
    while left:
        size = draw(st.integers(1, max(1, min(left, 12))))
        batches.append(size)
        left -= size
    restarts = draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)))
    return Scenario(config, arrival, batches, restarts)


def reference(config: SessionConfig, events: list[dict[str, Any]]) -> Outputs:
    """Everything sorted by (machine, timestamp, event_id), one batch, then the end of input; each
    event marked ``arrived_late`` first, as a runtime that sorts marks it: in arrival order, when an
    event of its machine with a later timestamp arrived before it."""
    marked = copy.deepcopy(events)
    for index, e in enumerate(marked):
        before = [o["timestamp"] for o in marked[:index] if o["machine_id"] == e["machine_id"]]
        e["arrived_late"] = bool(before) and e["timestamp"] < max(before)
    ordered = sorted(marked, key=lambda e: (e["machine_id"], e["timestamp"], e["event_id"]))
    out = Outputs()
    sessionizer = Sessionizer(config)
    sessionizer.process(ordered, out)
    sessionizer.end_batch(out)
    sessionizer.flush(out)
    return out


def streamed(
    config: SessionConfig, events: list[dict[str, Any]], batches: list[int], restarts: list[bool] | None = None
) -> Outputs:
    out = Outputs()
    sessionizer = Sessionizer(config)
    start = 0
    for index, size in enumerate(batches):
        sessionizer.process(copy.deepcopy(events[start : start + size]), out)
        sessionizer.end_batch(out)
        start += size
        if restarts and restarts[index]:
            sessionizer = Sessionizer.restore(config, through_json(sessionizer.snapshot()))
    sessionizer.flush(out)
    return out


def assignment(out: Outputs) -> dict[str, tuple[Any, ...]]:
    """event_id -> what the sessionizer decided about it."""
    decided = {
        e["event_id"]: (e["session_id"], e["session_seq"], e["ms_since_prev"], e["late"], e["arrived_late"])
        for e in out.events
    }
    assert len(decided) == len(out.events), "an event came out twice"
    return decided


def summaries(out: Outputs) -> dict[str, dict[str, Any]]:
    by_id = {s["session_id"]: s for s in out.sessions}
    assert len(by_id) == len(out.sessions), "a session was closed twice"
    return by_id


@PROFILE
@given(scenarios())
def test_streaming_in_any_chunking_equals_the_sorted_batch(scenario: Scenario) -> None:
    expected = reference(scenario.config, scenario.events)
    # Runs that end anywhere and keep their state give what one run gives (`run --state`, then `--flush`).
    actual = streamed(scenario.config, scenario.events, scenario.batches, scenario.restarts)
    assert actual.late == 0
    assert not any(e["late"] for e in actual.events)
    assert actual.duplicates == []
    assert assignment(actual) == assignment(expected)
    assert summaries(actual) == summaries(expected)


@PROFILE
@given(scenarios())
def test_sessions_partition_the_events_and_never_overlap(scenario: Scenario) -> None:
    out = streamed(scenario.config, scenario.events, scenario.batches)
    sessions = summaries(out)
    assert len(out.events) == len(scenario.events)
    members: dict[str, list[dict[str, Any]]] = {}
    for e in out.events:
        members.setdefault(e["session_id"], []).append(e)
    assert set(members) == set(sessions)
    for sid, events in members.items():
        summary = sessions[sid]
        events.sort(key=lambda e: e["session_seq"])
        assert [e["session_seq"] for e in events] == list(range(1, len(events) + 1))
        assert summary["event_count"] == len(events)
        assert summary["start_ts"] == events[0]["timestamp"]
        assert summary["end_ts"] == events[-1]["timestamp"]
        assert summary["duration_ms"] == summary["end_ts"] - summary["start_ts"]
        assert summary["event_type_counts"] == dict(Counter(e["event_type"] for e in events))
        assert summary["first_event_type"] == events[0]["event_type"]
        assert summary["last_event_type"] == events[-1]["event_type"]
        assert summary["user_id"] == next((e["user_id"] for e in events if e["user_id"] is not None), None)
        gaps = [b["timestamp"] - a["timestamp"] for a, b in itertools.pairwise(events)]
        assert [e["ms_since_prev"] for e in events[1:]] == gaps
        assert all(0 <= gap <= TIMEOUT for gap in gaps)
        assert all(e["event_type"] not in scenario.config.opening_events for e in events[1:])
        if scenario.config.max_session_duration_ms is not None:
            assert summary["duration_ms"] <= scenario.config.max_session_duration_ms
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for summary in sessions.values():
        by_machine.setdefault(summary["machine_id"], []).append(summary)
    for machine_sessions in by_machine.values():
        machine_sessions.sort(key=lambda s: (s["start_ts"], s["end_ts"]))
        for before, after in itertools.pairwise(machine_sessions):
            assert before["end_ts"] <= after["start_ts"]


@PROFILE
@given(scenarios(), st.randoms(use_true_random=False))
def test_a_rerun_with_other_batches_gives_the_same_ids(scenario: Scenario, rng: Any) -> None:
    first = streamed(scenario.config, scenario.events, scenario.batches)
    sizes = []
    left = len(scenario.events)
    while left:
        sizes.append(rng.randint(1, left))
        left -= sizes[-1]
    second = streamed(scenario.config, scenario.events, sizes)
    assert assignment(first) == assignment(second)
    assert sorted(summaries(first)) == sorted(summaries(second))


# -- conservation on raw lines --------------------------------------------------------------------

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
)
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["", " ", "m-1", "e-1", "VIEW", "app_open", "2026-10-05T00:00:00Z", "2026-10-05T00:00:00"]),
    st.integers(T0 - HOUR, T0 + HOUR),
    st.sampled_from([T0 // 1000, 946_684_800_000 - 1, NOW + 86_400_000, NOW + 86_400_001, float(T0), True]),
)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1:
        return _dumps(draw(JSON_VALUES))
    record: dict[str, Any] = {
        "event_id": f"e-{draw(st.integers(0, 40))}",  # a small pool: the same id comes back
        "machine_id": f"m-{draw(st.integers(0, 3))}",
        "event_type": draw(st.sampled_from(TYPES)),
        "timestamp": T0 + draw(st.integers(0, 4 * HOUR)),
    }
    if kind == 2:  # one field broken or missing
        name = draw(st.sampled_from([*record, "user_id", "app_version", "os", "document_id"]))
        if draw(st.booleans()):
            record.pop(name, None)
        else:
            record[name] = draw(FIELD_VALUES)
    if kind == 3:
        record.update(draw(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3)))
    line = _dumps(record)
    if kind == 4:  # damaged bytes
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + draw(st.binary(max_size=3)) + line[cut:]
    if kind == 5:
        line = draw(st.sampled_from([b"\xef\xbb\xbf", b"", b"  "])) + line + draw(st.sampled_from([b"\r", b"", b" "]))
    return line


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # NaN is fine for orjson (null); huge ints are not
        return repr(value).encode()


@st.composite
def feeds(draw: st.DrawFn) -> list[bytes]:
    lines = draw(st.lists(records(), max_size=80))
    # Exact duplicates (client retries) and blank lines, anywhere.
    for _ in range(draw(st.integers(0, 10))):
        if lines:
            lines.insert(draw(st.integers(0, len(lines))), lines[draw(st.integers(0, len(lines) - 1))])
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from([b"", b"   ", b"\r", b"\xef\xbb\xbf"])))
    return lines


CONFIG = Config.from_dict(
    {
        "validation": {"max_record_bytes": 150},
        "session": {"clock_quorum": 1},
        "clean": [
            {"when": {"app_version": "11.2.*"}, "scale": {"timestamp": 1000}},
            {"lowercase": ["event_type"]},
        ],
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feeds(), st.lists(st.integers(1, 20), min_size=1, max_size=10))
def test_every_record_is_exactly_one_event_rejection_or_duplicate(lines: list[bytes], cuts: list[int]) -> None:
    pipeline = Pipeline(CONFIG, NOW)
    out = Outputs()
    numbered = [(raw, "feed", i + 1) for i, raw in enumerate(lines)]
    start = 0
    for size in cuts * (len(numbered) // len(cuts) + 1):
        if start >= len(numbered):
            break
        pipeline.feed(numbered[start : start + size], out)
        start += size
    pipeline.flush(out)
    tally = pipeline.tally
    assert tally.records + tally.blank == len(lines)
    assert tally.records == tally.events + tally.rejected_total + tally.duplicates
    assert (len(out.events), len(out.rejections), len(out.duplicates), out.late) == (
        tally.events,
        tally.rejected_total,
        tally.duplicates,
        tally.late,
    )
    # Each rejected line once, with its bytes as read (less a line end).
    rejected_lines = [row["line"] for row in out.rejections]
    assert len(set(rejected_lines)) == len(rejected_lines)
    for row in out.rejections:
        assert base64.b64decode(row["raw_base64"]) == lines[row["line"] - 1].rstrip(b"\r\n")
        assert row["source"] == "feed"
    # The other non-blank lines are the events and the duplicates.
    assert len(out.events) + len(out.duplicates) == len(lines) - tally.blank - len(rejected_lines)
    assert {e["event_id"] for e in out.duplicates} <= {e["event_id"] for e in out.events}
    assert sum(s["event_count"] for s in out.sessions) == tally.events - tally.late
    assert tally.sessions == len(out.sessions)
