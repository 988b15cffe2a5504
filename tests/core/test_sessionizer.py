"""Sessionizer rules at their boundaries: gaps, ties, opening events, duration, lateness, dedupe, idleness.

Every test runs on both sessionizers: the pure one (the specification) and the compiled one, which
is what ``sessionflow run`` executes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from sessionflow.config import HOUR, MINUTE, Config, SessionConfig
from sessionflow.core import Outputs, Pipeline, Sessionizer, session_id
from sessionflow.core.ids import SESSION_NAMESPACE
from sessionflow.core.native import compiled
from sessionflow.synthetic import FeedShape, generate
from tests.helpers import NOW, T0, event, through_json

TIMEOUT = 30 * MINUTE
LATENESS = 5 * MINUTE
CONFIG = SessionConfig(timeout_ms=TIMEOUT, allowed_lateness_ms=LATENESS, opening_events=frozenset({"app_open"}))


@pytest.fixture(autouse=True, params=["pure", "compiled"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which sessionizer ``Sessionizer`` builds (and restores) in this test."""
    if request.param == "compiled":
        module = compiled()
        if module is None:
            pytest.skip("the compiled sessionizer is not built (or SESSIONFLOW_PURE is set)")
        monkeypatch.setitem(globals(), "Sessionizer", module.NativeSessionizer)
    return str(request.param)


def batch(events: Iterable[dict[str, Any]], config: SessionConfig = CONFIG) -> Outputs:
    """Everything in one batch, then the end of input."""
    sessionizer = Sessionizer(config)
    out = Outputs()
    sessionizer.process(events, out)
    sessionizer.end_batch(out)
    sessionizer.flush(out)
    return out


def sessions_of(out: Outputs) -> list[list[str]]:
    """Event ids grouped by session, in release order."""
    groups: dict[str, list[str]] = {}
    for e in out.events:
        assert not e["late"], e
        groups.setdefault(e["session_id"], []).append(e["event_id"])
    return list(groups.values())


def by_id(out: Outputs) -> dict[str, dict[str, Any]]:
    return {e["event_id"]: e for e in out.events}


# -- session ids ----------------------------------------------------------------------------------


def test_session_id_is_a_fixed_uuid5_of_machine_and_first_event() -> None:
    sid = session_id("m-1", T0, "e-1")
    assert sid == session_id("m-1", T0, "e-1")
    assert sid == str(uuid.uuid5(SESSION_NAMESPACE, f"m-1\x1f{T0}\x1fe-1"))
    assert uuid.UUID(sid).version == 5
    assert len({sid, session_id("m-2", T0, "e-1"), session_id("m-1", T0 + 1, "e-1"), session_id("m-1", T0, "e-2")}) == 4
    # Pinned: changing the namespace or the key would change every id ever written.
    assert session_id("mach-000001", 1_791_158_400_000, "e-1") == str(
        uuid.uuid5(uuid.UUID("5e55f10e-2c1b-4b7a-9a56-0f7d1c2b3a40"), "mach-000001\x1f1791158400000\x1fe-1")
    )


def test_a_session_is_named_after_its_first_event() -> None:
    out = batch([event("m", T0 + 5, "b"), event("m", T0, "a")])
    assert {e["session_id"] for e in out.events} == {session_id("m", T0, "a")}
    assert out.sessions[0]["session_id"] == session_id("m", T0, "a")


# -- gap ------------------------------------------------------------------------------------------


def test_gap_of_exactly_the_timeout_stays_in_the_session() -> None:
    out = batch([event("m", T0, "a"), event("m", T0 + TIMEOUT, "b")])
    assert sessions_of(out) == [["a", "b"]]
    assert by_id(out)["b"]["ms_since_prev"] == TIMEOUT
    assert by_id(out)["b"]["session_seq"] == 2


def test_gap_of_one_ms_more_than_the_timeout_splits() -> None:
    out = batch([event("m", T0, "a"), event("m", T0 + TIMEOUT + 1, "b")])
    assert sessions_of(out) == [["a"], ["b"]]
    b = by_id(out)["b"]
    assert (b["session_seq"], b["ms_since_prev"], b["session_id"]) == (1, None, session_id("m", T0 + TIMEOUT + 1, "b"))


def test_the_gap_is_measured_from_the_previous_event_not_the_start() -> None:
    events = [event("m", T0 + i * TIMEOUT, f"e{i}") for i in range(5)]
    out = batch(events)
    assert sessions_of(out) == [[f"e{i}" for i in range(5)]]
    assert out.sessions[0]["duration_ms"] == 4 * TIMEOUT


def test_machines_are_independent() -> None:
    out = batch([event("m1", T0, "a"), event("m2", T0 + TIMEOUT + 1, "b"), event("m1", T0 + TIMEOUT, "c")])
    assert sorted(sessions_of(out)) == [["a", "c"], ["b"]]


# -- ties -----------------------------------------------------------------------------------------


def test_ties_on_timestamp_are_broken_by_event_id_whatever_the_arrival_order() -> None:
    for arrival in (["c", "a", "b"], ["b", "c", "a"], ["a", "b", "c"]):
        out = batch([event("m", T0, i) for i in arrival] + [event("m", T0 + 1, "z")])
        assert sessions_of(out) == [["a", "b", "c", "z"]]
        events = by_id(out)
        assert [events[i]["session_seq"] for i in "abcz"] == [1, 2, 3, 4]
        assert [events[i]["ms_since_prev"] for i in "abcz"] == [None, 0, 0, 1]
        assert out.sessions[0]["session_id"] == session_id("m", T0, "a")


def test_tied_opening_events_sort_by_event_id() -> None:
    out = batch([event("m", T0, "b", "view"), event("m", T0, "a", "app_open")])
    assert sessions_of(out) == [["a", "b"]]
    # The other way round, the opening event comes second and opens a session of its own.
    out = batch([event("m", T0, "a", "view"), event("m", T0, "b", "app_open")])
    assert sessions_of(out) == [["a"], ["b"]]


# -- opening events -------------------------------------------------------------------------------


def test_opening_event_starts_a_session_even_right_after_another() -> None:
    out = batch([event("m", T0, "a", "app_open"), event("m", T0 + 1, "b", "app_open"), event("m", T0 + 2, "c")])
    assert sessions_of(out) == [["a"], ["b", "c"]]
    assert [s["event_count"] for s in out.sessions] == [1, 2]


def test_opening_event_splits_a_running_session() -> None:
    out = batch([event("m", T0, "a"), event("m", T0 + 1000, "b", "app_open"), event("m", T0 + 2000, "c")])
    assert sessions_of(out) == [["a"], ["b", "c"]]


def test_several_opening_event_types() -> None:
    config = SessionConfig(opening_events=frozenset({"app_open", "login"}))
    out = batch([event("m", T0, "a"), event("m", T0 + 1, "b", "login"), event("m", T0 + 2, "c", "app_open")], config)
    assert sessions_of(out) == [["a"], ["b"], ["c"]]


def test_opening_event_types_are_compared_exactly() -> None:
    out = batch([event("m", T0, "a"), event("m", T0 + 1, "b", "APP_OPEN")])
    assert sessions_of(out) == [["a", "b"]]


# -- maximum duration -----------------------------------------------------------------------------


def test_max_session_duration_splits_exactly_past_the_bound() -> None:
    config = SessionConfig(timeout_ms=2 * HOUR, max_session_duration_ms=HOUR)
    at_bound = [event("m", T0 + i * 20 * MINUTE, f"e{i}") for i in range(4)]  # 0, 20, 40, 60 min
    out = batch(at_bound, config)
    assert sessions_of(out) == [["e0", "e1", "e2", "e3"]]
    assert out.sessions[0]["duration_ms"] == HOUR
    past = [*at_bound[:3], event("m", T0 + HOUR + 1, "e3")]
    out = batch(past, config)
    assert sessions_of(out) == [["e0", "e1", "e2"], ["e3"]]
    # The new session is measured from its own start.
    out = batch([*past, event("m", T0 + 2 * HOUR + 1, "e4"), event("m", T0 + 2 * HOUR + 2, "e5")], config)
    assert sessions_of(out) == [["e0", "e1", "e2"], ["e3", "e4"], ["e5"]]


def test_without_max_duration_a_session_can_last_for_days() -> None:
    events = [event("m", T0 + i * 20 * MINUTE, f"e{i:03d}") for i in range(300)]
    out = batch(events)
    assert len(out.sessions) == 1
    assert out.sessions[0]["duration_ms"] == 299 * 20 * MINUTE


# -- lateness -------------------------------------------------------------------------------------


def test_events_out_of_order_within_the_lateness_are_sorted() -> None:
    sessionizer = Sessionizer(CONFIG)
    out = Outputs()
    arrival = [event("m", T0 + 3000, "d"), event("m", T0, "a"), event("m", T0 + 2000, "c"), event("m", T0 + 1000, "b")]
    for e in arrival:  # one event per batch: the buffer, not the batch, puts them in order
        sessionizer.process([e], out)
        sessionizer.end_batch(out)
    sessionizer.flush(out)
    assert sessions_of(out) == [["a", "b", "c", "d"]]
    assert [e["ms_since_prev"] for e in out.events] == [None, 1000, 1000, 1000]


def _released_up_to(newest: int) -> tuple[Sessionizer, Outputs]:
    """A machine whose events at T0 and T0 + 100 (id "b") are released by a newest event."""
    sessionizer = Sessionizer(CONFIG)
    out = Outputs()
    sessionizer.process([event("m", T0, "a"), event("m", T0 + 100, "b"), event("m", newest, "n")], out)
    assert [e["event_id"] for e in out.events] == ["a", "b"]
    return sessionizer, out


def test_event_exactly_the_lateness_behind_the_newest_is_on_time() -> None:
    newest = T0 + 100 + LATENESS + 1
    sessionizer, out = _released_up_to(newest)
    sessionizer.process([event("m", newest - LATENESS, "x")], out)
    sessionizer.flush(out)
    assert out.late == 0
    assert sessions_of(out) == [["a", "b", "x", "n"]]


def test_an_event_exactly_the_lateness_behind_stays_buffered() -> None:
    sessionizer = Sessionizer(CONFIG)
    out = Outputs()
    sessionizer.process([event("m", T0, "w"), event("m", T0 + LATENESS, "n")], out)
    assert out.events == []  # w is not released yet: a tie arriving now can still sort before it
    sessionizer.process([event("m", T0, "v")], out)
    sessionizer.process([event("m", T0 + LATENESS + 1, "p")], out)  # now w and v are past the bound
    assert [e["event_id"] for e in out.events] == ["v", "w"]
    sessionizer.flush(out)
    assert out.late == 0
    assert sessions_of(out) == [["v", "w", "n", "p"]]


def test_event_sorting_before_a_released_event_is_late_flagged_and_kept() -> None:
    sessionizer, out = _released_up_to(T0 + 100 + LATENESS + 1)
    before = [event("m", T0 + 99, "y"), event("m", T0 + 100, "a2")]  # a2 ties b's timestamp, sorts first
    sessionizer.process(before, out)
    sessionizer.process([event("m", T0 + 100, "c")], out)  # ties b and sorts after it: on time
    sessionizer.flush(out)
    assert out.late == 2
    events = by_id(out)
    for late_id in ("y", "a2"):
        late = events[late_id]
        assert late["late"] is True
        assert (late["session_id"], late["session_seq"], late["ms_since_prev"]) == (None, None, None)
    assert events["c"]["late"] is False
    assert len(out.events) == 6  # nothing lost
    # Sessions already released do not change: the late events are in none of them.
    assert out.sessions[0]["event_count"] == 4
    assert out.sessions[0]["event_type_counts"] == {"view": 4}


def test_event_extending_an_idle_closed_session_is_late() -> None:
    config = SessionConfig(timeout_ms=TIMEOUT, allowed_lateness_ms=LATENESS, clock_quorum=1)
    sessionizer = Sessionizer(config)
    out = Outputs()
    sessionizer.process([event("m", T0, "a")], out)
    sessionizer.end_batch(out)
    sessionizer.process([event("other", T0 + config.idle_close_ms + 1, "o")], out)
    sessionizer.end_batch(out)
    assert [s["machine_id"] for s in out.sessions] == ["m"]  # closed for idleness
    # Would join the closed session (gap within the timeout): late. A far one or an opening one starts anew.
    sessionizer.process([event("m", T0 + 10, "joins")], out)
    sessionizer.process([event("m", T0 + 20, "opens", "app_open")], out)
    sessionizer.process([event("m", T0 + 20 + TIMEOUT + 1, "far")], out)
    sessionizer.flush(out)
    events = by_id(out)
    assert events["joins"]["late"] is True
    assert events["opens"]["late"] is False
    assert events["far"]["late"] is False
    assert events["opens"]["session_id"] != events["a"]["session_id"]
    assert out.late == 1


# -- dedupe ---------------------------------------------------------------------------------------


def test_duplicate_first_arrival_wins() -> None:
    first = event("m", T0, "x", "view", user_id="u-1")
    second = event("m", T0 + 5, "x", "edit", user_id="u-2")
    out = batch([first, event("m", T0 + 1, "y"), second])
    assert out.duplicates == [second]
    assert by_id(out)["x"]["event_type"] == "view"
    assert len(out.events) == 2


def test_duplicate_across_batches_and_after_release() -> None:
    sessionizer = Sessionizer(CONFIG)
    out = Outputs()
    sessionizer.process([event("m", T0, "x")], out)
    sessionizer.end_batch(out)
    sessionizer.process([event("m", T0 + LATENESS + 1, "y")], out)  # releases x
    sessionizer.end_batch(out)
    sessionizer.process([event("m", T0, "x")], out)
    sessionizer.flush(out)
    assert len(out.duplicates) == 1
    assert out.late == 0


def test_dedupe_horizon_boundary() -> None:
    config = SessionConfig(dedupe_horizon_ms=HOUR, allowed_lateness_ms=LATENESS)
    for newest, duplicate in ((T0 + HOUR, True), (T0 + HOUR + 1, False)):
        sessionizer = Sessionizer(config)
        out = Outputs()
        sessionizer.process([event("m", T0, "x"), event("m", T0 + 1, "y"), event("m", newest, "n")], out)
        sessionizer.end_batch(out)
        sessionizer.process([event("m", T0, "x")], out)
        sessionizer.flush(out)
        assert len(out.duplicates) == int(duplicate), newest
        # Past the horizon it is an event again, and a late one: still counted, never lost.
        assert len(out.events) == 4 - int(duplicate)
        assert out.late == 1 - int(duplicate)


def test_the_last_placed_event_again_is_a_duplicate_even_past_the_horizon() -> None:
    config = SessionConfig(dedupe_horizon_ms=HOUR, allowed_lateness_ms=LATENESS)
    sessionizer = Sessionizer(config)
    out = Outputs()
    sessionizer.process([event("m", T0, "x"), event("m", T0 + 2 * HOUR, "z")], out)  # places x
    sessionizer.end_batch(out)
    sessionizer.machines["m"].seen.clear()  # its id pruned: only the last placed key recognises it
    sessionizer.process([event("m", T0, "x")], out)
    sessionizer.flush(out)
    assert [e["event_id"] for e in out.duplicates] == ["x"]
    assert out.late == 0


def test_dedupe_survives_pruning_of_the_seen_ids() -> None:
    config = SessionConfig(dedupe_horizon_ms=HOUR, allowed_lateness_ms=LATENESS)
    # 600 events a minute apart: the seen ids are pruned many times over 10 hours.
    events = [event("m", T0 + i * MINUTE, f"e{i:04d}") for i in range(600)]
    sessionizer = Sessionizer(config)
    out = Outputs()
    for i in range(0, 600, 50):
        sessionizer.process(events[i : i + 50], out)
        sessionizer.end_batch(out)
    assert len(sessionizer.machines["m"].seen) < 300
    sessionizer.process([event("m", T0 + 540 * MINUTE, "e0540")], out)  # within the horizon: a duplicate
    sessionizer.end_batch(out)
    sessionizer.flush(out)
    assert len(out.duplicates) == 1
    assert len(out.events) == 600


# -- idle machines and the stream clock -----------------------------------------------------------


def _idle_setup(others_at: list[int]) -> tuple[Sessionizer, Outputs]:
    sessionizer = Sessionizer(CONFIG)  # clock_quorum = 3
    out = Outputs()
    sessionizer.process([event("m", T0, "a"), event("m", T0 + 1000, "b")], out)
    sessionizer.end_batch(out)
    for i, ts in enumerate(others_at):
        sessionizer.process([event(f"o{i}", ts, f"o{i}")], out)
        sessionizer.end_batch(out)
    return sessionizer, out


def test_machines_ahead_of_the_quorum_do_not_move_the_stream_clock() -> None:
    far = T0 + 10 * HOUR
    sessionizer, out = _idle_setup([far])
    assert sessionizer.clock == -1  # two machines: no quorum of three yet
    sessionizer, out = _idle_setup([far, far])
    # The clock is the third most advanced machine's time: m's own, so m is not idle.
    assert sessionizer.clock == T0 + 1000
    assert out.sessions == []
    assert out.events == []  # m's events are still buffered too


def test_quorum_of_machines_closes_an_idle_session() -> None:
    idle = CONFIG.idle_close_ms
    last = T0 + 1000
    # The clock exactly at last + idle: not idle yet.
    sessionizer, out = _idle_setup([last + idle] * 3)
    assert sessionizer.clock == last + idle
    assert out.sessions == []
    # One ms more on every quorum machine: closed, its buffer drained, before any flush.
    sessionizer.process([event(f"o{i}", last + idle + 1, f"p{i}") for i in range(3)], out)
    sessionizer.end_batch(out)
    assert [s["machine_id"] for s in out.sessions] == ["m"]
    assert out.sessions[0]["event_count"] == 2
    assert [e["event_id"] for e in out.events if e["machine_id"] == "m"] == ["a", "b"]


def test_a_silent_machine_is_forgotten_after_the_retention() -> None:
    retention = CONFIG.retention_ms
    sessionizer, _ = _idle_setup([T0 + 1000 + retention] * 3)
    assert "m" in sessionizer.machines
    sessionizer, out = _idle_setup([T0 + 1000 + retention + 1] * 3)
    assert "m" not in sessionizer.machines
    assert [s["machine_id"] for s in out.sessions] == ["m"]


def test_quorum_of_one() -> None:
    config = SessionConfig(timeout_ms=TIMEOUT, allowed_lateness_ms=LATENESS, clock_quorum=1)
    sessionizer = Sessionizer(config)
    out = Outputs()
    sessionizer.process([event("m", T0, "a")], out)
    sessionizer.end_batch(out)
    sessionizer.process([event("n", T0 + config.idle_close_ms + 1, "b")], out)
    sessionizer.end_batch(out)
    assert [s["machine_id"] for s in out.sessions] == ["m"]


# -- summaries ------------------------------------------------------------------------------------


def test_session_summary() -> None:
    events = [
        event("m", T0 + 1_000, "e1", "app_open", app_version=None),
        event("m", T0 + 2_000, "e2", "doc_open", user_id="u-1", app_version="12.1.0"),
        event("m", T0 + 3_500, "e3", "view", user_id="u-2", app_version="11.0"),
        event("m", T0 + 4_000, "e4", "view"),
        event("m", T0 + 64_000, "e5", "app_close"),
    ]
    out = batch(events)
    assert out.sessions == [
        {
            "session_id": session_id("m", T0 + 1_000, "e1"),
            "machine_id": "m",
            "user_id": "u-1",
            "start_ts": T0 + 1_000,
            "end_ts": T0 + 64_000,
            "session_start": "2026-10-05T00:00:01.000Z",
            "session_end": "2026-10-05T00:01:04.000Z",
            "duration_ms": 63_000,
            "event_count": 5,
            "first_event_type": "app_open",
            "last_event_type": "app_close",
            "event_type_counts": {"app_close": 1, "app_open": 1, "doc_open": 1, "view": 2},
            "app_version": "12.1.0",
            "os": None,
            "session_number": 1,
            "documents": 0,
            "late_placed": 0,
            "close_reason": "end_of_input",
            "session_date": "2026-10-05",
        }
    ]
    assert [e["session_seq"] for e in out.events] == [1, 2, 3, 4, 5]
    assert [e["ms_since_prev"] for e in out.events] == [None, 1000, 1500, 500, 60_000]


def test_single_event_session_and_session_date_is_the_start_date() -> None:
    out = batch([event("m", T0 - 1, "a"), event("m", T0 + 10, "b")])
    (summary,) = out.sessions
    assert (summary["duration_ms"], summary["session_date"], summary["user_id"]) == (11, "2026-10-04", None)
    out = batch([event("m", T0, "solo", "app_open")])
    assert out.sessions[0]["duration_ms"] == 0
    assert out.sessions[0]["first_event_type"] == out.sessions[0]["last_event_type"] == "app_open"


# -- why a session ended, its number, documents, os, late arrivals ---------------------------------


def _reasons(out: Outputs) -> list[tuple[int, str]]:
    return [(s["event_count"], s["close_reason"]) for s in sorted(out.sessions, key=lambda s: s["start_ts"])]


def test_the_next_event_says_why_a_session_ended() -> None:
    config = SessionConfig(timeout_ms=TIMEOUT, allowed_lateness_ms=0, max_session_duration_ms=HOUR)
    events = [
        event("m", T0, "a", "app_open"),
        event("m", T0 + TIMEOUT, "b"),  # a gap of exactly the timeout: the same session
        event("m", T0 + 2 * TIMEOUT + 1, "c"),  # one ms more: timeout
        event("m", T0 + 2 * TIMEOUT + 2, "d", "app_open"),  # an opening event
        event("m", T0 + 3 * TIMEOUT + 2, "e"),  # a gap of exactly the timeout again
        event("m", T0 + 4 * TIMEOUT + 2, "f"),  # the session started 1 h before: still in it
        event("m", T0 + 4 * TIMEOUT + 3, "g"),  # 1 h + 1 ms after its start: max_duration
        event("m", T0 + 6 * TIMEOUT + 4, "h", "app_open"),  # over the timeout *and* opening: timeout first
    ]
    out = batch(events, config)
    assert _reasons(out) == [
        (2, "timeout"),
        (1, "opening_event"),
        (3, "max_duration"),
        (1, "timeout"),
        (1, "end_of_input"),  # nothing came after it, and no stream clock says more
    ]


@pytest.mark.parametrize(("after", "reason"), [(TIMEOUT, "end_of_input"), (TIMEOUT + 1, "timeout")])
def test_at_the_end_of_input_the_clock_says_whether_a_session_timed_out(after: int, reason: str) -> None:
    sessionizer = Sessionizer(CONFIG)
    out = Outputs()
    sessionizer.process([event("m", T0, "a"), event("m", T0 + 5, "b")], out)
    sessionizer.flush(out, clock=T0 + 5 + after)
    assert _reasons(out) == [(2, reason)]


def test_a_session_the_stream_clock_closes_timed_out() -> None:
    sessionizer, out = _idle_setup([T0 + 1000 + CONFIG.idle_close_ms + 1] * 3)
    assert _reasons(out) == [(2, "timeout")]
    sessionizer.flush(out)
    assert sorted(s["close_reason"] for s in out.sessions if s["machine_id"] != "m") == ["end_of_input"] * 3


def test_sessions_are_numbered_per_machine_also_after_the_machine_is_forgotten() -> None:
    config = SessionConfig(timeout_ms=TIMEOUT, allowed_lateness_ms=LATENESS, clock_quorum=1)
    later = T0 + config.retention_ms + HOUR
    sessionizer = Sessionizer(config)
    out = Outputs()
    first = [event("m", T0, "a", "app_open"), event("m", T0 + 1, "b", "app_open"), event("n", T0, "c")]
    sessionizer.process(first, out)
    sessionizer.end_batch(out)
    sessionizer.process([event("n", later, "d")], out)  # the clock passes m's retention
    sessionizer.end_batch(out)
    assert "m" not in sessionizer.machines and sessionizer.forgotten["m"] == 2
    restored = Sessionizer.restore(config, through_json(sessionizer.snapshot()))
    restored.process([event("m", later + 1, "e")], out)
    restored.flush(out)
    numbers = sorted((s["machine_id"], s["start_ts"], s["session_number"]) for s in out.sessions)
    assert numbers == [("m", T0, 1), ("m", T0 + 1, 2), ("m", later + 1, 3), ("n", T0, 1), ("n", later, 2)]


def test_a_restored_sessionizer_numbers_on_from_what_it_is_told() -> None:
    from sessionflow.core import Snapshot

    sessionizer = Sessionizer.restore(CONFIG, Snapshot(forgotten={"m": 41}))
    out = batch_into(sessionizer, [event("m", T0, "a"), event("m", T0 + HOUR, "b"), event("n", T0, "c")])
    assert sorted((s["machine_id"], s["session_number"]) for s in out.sessions) == [("m", 42), ("m", 43), ("n", 1)]


def batch_into(sessionizer: Sessionizer, events: list[dict[str, Any]]) -> Outputs:
    out = Outputs()
    sessionizer.process(events, out)
    sessionizer.end_batch(out)
    sessionizer.flush(out)
    return out


def test_documents_and_os() -> None:
    events = [
        event("m", T0, "a", "app_open"),
        event("m", T0 + 1, "b", "doc_open", document_id="d-1", os=None),
        event("m", T0 + 2, "c", "view", document_id="d-1", os="linux"),
        event("m", T0 + 3, "d", "doc_open", document_id="d-2", os="macos"),
        event("m", T0 + 4, "e", "view", document_id=None),
    ]
    (summary,) = batch(events).sessions
    assert (summary["documents"], summary["os"]) == (2, "linux")
    (summary,) = batch([event("m", T0, "a")]).sessions
    assert (summary["documents"], summary["os"]) == (0, None)


def test_events_that_arrive_after_a_later_one_are_counted_where_they_are_placed() -> None:
    # b and c arrive after d, which is later: both are placed (within the lateness) and counted.
    arrivals = [event("m", T0, "a"), event("m", T0 + 3000, "d"), event("m", T0 + 1000, "b"), event("m", T0 + 2000, "c")]
    arrivals.append(event("m", T0 + 3000, "e"))  # as late as the newest: not after a *later* one
    out = batch(arrivals)
    assert {e["event_id"]: e["arrived_late"] for e in out.events} == {
        "a": False,
        "b": True,
        "c": True,
        "d": False,
        "e": False,
    }
    assert [(s["event_count"], s["late_placed"]) for s in out.sessions] == [(5, 2)]
    # A runtime that sorts first says so in the event, and the sessionizer counts it all the same.
    (summary,) = batch([event("m", T0, "a"), event("m", T0 + 1, "b", arrived_late=True)]).sessions
    assert summary["late_placed"] == 1


def test_an_event_too_late_to_place_is_in_no_session_count() -> None:
    sessionizer = Sessionizer(SessionConfig(timeout_ms=TIMEOUT, allowed_lateness_ms=0, clock_quorum=1))
    # c releases b (no lateness); a sorts before b, already placed: late, in no session.
    out = batch_into(sessionizer, [event("m", T0 + 2000, "b"), event("m", T0 + 3000, "c"), event("m", T0 + 1000, "a")])
    assert sorted((e["event_id"], e["late"], e["arrived_late"]) for e in out.events) == [
        ("a", True, True),
        ("b", False, False),
        ("c", False, False),
    ]
    assert [s["late_placed"] for s in out.sessions] == [0]


# -- state ----------------------------------------------------------------------------------------


def _synthetic_batches(events: int, batch_size: int) -> list[list[tuple[bytes, str, int]]]:
    lines = [(raw, "feed", i + 1) for i, raw in enumerate(generate(FeedShape(events=events, machines=40, seed=11)))]
    return [lines[i : i + batch_size] for i in range(0, len(lines), batch_size)]


def _stream(batches: list[list[tuple[bytes, str, int]]], *, restore_each_batch: bool) -> tuple[Outputs, dict[str, Any]]:
    import tomllib

    from sessionflow.config import EXAMPLE_CONFIG

    config = Config.from_dict(tomllib.loads(EXAMPLE_CONFIG))
    out = Outputs()
    sessionizer = Sessionizer(config.session)
    tally: dict[str, Any] = {}
    for lines in batches:
        if restore_each_batch:
            # Through JSON, as a state file or a table keeps it.
            sessionizer = Sessionizer.restore(config.session, through_json(sessionizer.snapshot()))
        pipeline = Pipeline(config, NOW + 60 * 86_400_000, sessionizer)
        pipeline.feed(lines, out)
        tally = pipeline.tally.to_dict()
    pipeline.flush(out)
    return out, tally


def _per_machine(out: Outputs) -> dict[str, list[bytes]]:
    """Each machine's events in release order. Machines closed in the same batch may come out
    in another order after a restore (their idle deadlines are rebuilt), which no output depends on."""
    machines: dict[str, list[bytes]] = {}
    for e in out.events:
        machines.setdefault(e["machine_id"], []).append(orjson.dumps(e, option=orjson.OPT_SORT_KEYS))
    return machines


@pytest.mark.parametrize("batch_size", [97, 1000])
def test_snapshot_restore_round_trip_changes_nothing(batch_size: int) -> None:
    batches = _synthetic_batches(6000, batch_size)
    plain, plain_tally = _stream(batches, restore_each_batch=False)
    restored, restored_tally = _stream(batches, restore_each_batch=True)
    assert len(plain.events) > 5000
    assert _per_machine(restored) == _per_machine(plain)
    key = orjson.dumps
    assert sorted(map(key, restored.sessions)) == sorted(map(key, plain.sessions))
    assert restored.duplicates == plain.duplicates
    assert restored.late == plain.late
    assert restored_tally["duplicates"] == plain_tally["duplicates"]


def test_machine_state_round_trip(implementation: str) -> None:
    if implementation == "compiled":
        pytest.skip("MachineState is the pure sessionizer's value type (test_native.py compares the snapshots)")
    sessionizer = Sessionizer(CONFIG)
    out = Outputs()
    sessionizer.process([event("m", T0, "a", user_id="u"), event("m", T0 + LATENESS + 5, "b")], out)
    sessionizer.end_batch(out)
    state = sessionizer.machines["m"]
    data = orjson.loads(orjson.dumps(state.to_dict()))
    again = type(state).from_dict(data)
    assert again.to_dict() == state.to_dict()
    assert again.session is not None
    assert again.session.user_id == "u"
    assert [p[:2] for p in again.pending] == [(T0 + LATENESS + 5, "b")]


def test_idle_machines_still_close_after_a_restore() -> None:
    config = SessionConfig(timeout_ms=TIMEOUT, allowed_lateness_ms=LATENESS, clock_quorum=1)
    sessionizer = Sessionizer(config)
    out = Outputs()
    sessionizer.process([event("m", T0, "a")], out)
    sessionizer.end_batch(out)
    restored = Sessionizer.restore(config, through_json(sessionizer.snapshot()))
    restored.process([event("n", T0 + config.idle_close_ms + 1, "b")], out)
    restored.end_batch(out)
    # m never speaks again: its session closes on the stream clock, not only at a flush.
    assert [s["machine_id"] for s in out.sessions] == ["m"]
    assert [e["event_id"] for e in out.events] == ["a"]
