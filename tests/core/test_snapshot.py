"""The snapshot format: any snapshot survives JSON unchanged, a malformed one is refused saying why,
and a snapshot is a value (the sessionizer going on, or restored from it, never changes it).

That a restored sessionizer goes on as an uninterrupted one would is shown by the streaming
property (tests/core/test_properties.py) and, across the two sessionizers, by tests/core/test_native.py:
both restart through :func:`tests.helpers.through_json`, which checks the round trip each time.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionflow.config import MINUTE, SessionConfig
from sessionflow.core import MachineState, OpenSession, Outputs, Sessionizer, Snapshot, SnapshotError, StreamClock
from sessionflow.core.snapshot import record_of
from tests.helpers import T0, event, through_json

IDS = st.text(min_size=1, max_size=6)  # any Unicode: ids are opaque strings
TIMES = st.integers(-1, 2**53)
# What a refined event's other fields can hold (JSON has no NaN or infinity).
FINITE = st.floats(allow_nan=False, allow_infinity=False)
VALUES = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | FINITE | st.text(max_size=5)


@st.composite
def machine_states(draw: Any, machine_id: str) -> MachineState:
    keys = draw(st.lists(st.tuples(TIMES, IDS), unique=True, max_size=4))
    pending = [
        record_of(
            {
                "event_id": event_id,
                "machine_id": machine_id,
                "event_type": draw(IDS),
                "timestamp": ts,
                "user_id": draw(st.none() | IDS),
                **draw(st.dictionaries(st.sampled_from(["os", "document_id", "extra", "pages"]), VALUES)),
                **draw(st.sampled_from([{}, {"arrived_late": True}])),
            }
        )
        for ts, event_id in sorted(keys)
    ]
    # A pending event's mark lives in its record, as the sessionizer keeps it.
    for record in pending:
        record[-1].pop("arrived_late", None)
    session = draw(
        st.none()
        | st.builds(
            OpenSession,
            session_id=IDS,
            start_ts=TIMES,
            last_ts=TIMES,
            first_type=IDS,
            last_type=IDS,
            count=st.integers(0, 10**6),
            type_counts=st.dictionaries(IDS, st.integers(1, 10**6), max_size=3),
            user_id=st.none() | IDS,
            app_version=st.none() | IDS,
            closed=st.booleans(),
            os=st.none() | IDS,
            number=st.integers(1, 10**6),
            documents=st.sets(IDS, max_size=3),
            late_placed=st.integers(0, 10**6),
            close_reason=st.none() | st.sampled_from(["timeout", "opening_event", "max_duration", "end_of_input"]),
        )
    )
    return MachineState(
        machine_id=machine_id,
        newest_ts=draw(TIMES),
        arrival_clock=draw(TIMES),
        pending=pending,
        last_key=draw(st.none() | st.tuples(TIMES, IDS)),
        session=session,
        seen=draw(st.dictionaries(IDS, TIMES, max_size=5)),
        sessions=(session.number if session else 0) + draw(st.integers(0, 3)),
    )


@st.composite
def snapshots(draw: Any) -> Snapshot:
    machine_ids = draw(st.lists(IDS, unique=True, max_size=4))
    clock = StreamClock(draw(TIMES), draw(st.dictionaries(IDS, TIMES, max_size=3)))
    forgotten = draw(st.dictionaries(IDS, st.integers(0, 10**6), max_size=3))
    return Snapshot(clock, tuple(draw(machine_states(machine_id)) for machine_id in machine_ids), forgotten)


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_any_snapshot_survives_json_unchanged(snapshot: Snapshot) -> None:
    assert through_json(snapshot) == snapshot
    # And what is written is the documented format, key for key.
    data = orjson.loads(orjson.dumps(snapshot.to_dict()))
    assert sorted(data) == ["clock", "forgotten", "leaders", "machines", "version"]
    assert all(
        sorted(machine)
        == ["arrival_clock", "last_key", "machine_id", "newest_ts", "pending", "seen", "session", "sessions"]
        for machine in data["machines"]
    )


# Events a minute apart: the first is released into a session, the second waits in the buffer.
CONFIG = SessionConfig(allowed_lateness_ms=MINUTE // 2, clock_quorum=1)


def _valid() -> dict[str, Any]:
    sessionizer = Sessionizer(CONFIG)
    out = Outputs()
    sessionizer.process([event("m", T0, "a", "app_open"), event("m", T0 + MINUTE, "b")], out)
    sessionizer.end_batch(out)
    data: dict[str, Any] = orjson.loads(orjson.dumps(sessionizer.snapshot().to_dict()))
    assert data["machines"][0]["pending"] and data["machines"][0]["session"]  # every part is there to break
    return data


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path
        for key in parents:
            data = data[key]
        if value is KeyError:
            del data[last]
        else:
            data[last] = value

    return change


MACHINE = ("machines", 0)
MALFORMED = {
    "a newer version": (_set(("version",), 3), "format version 3, and this sessionflow reads versions 1, 2 only"),
    "no machines": (_set(("machines",), KeyError), "snapshot: 'machines' is missing"),
    "machines not a list": (_set(("machines",), {}), "'machines' must be a list, not dict"),
    "a clock that is text": (_set(("clock",), "5"), "stream clock: 'clock' must be an integer, not str"),
    "a clock that is a bool": (_set(("clock",), True), "'clock' must be an integer, not bool"),
    "a leader without a time": (_set(("leaders", "m"), None), "'leaders' must map machine ids to timestamps"),
    "a machine without id": (_set((*MACHINE, "machine_id"), KeyError), "machine: 'machine_id' is missing"),
    "no newest_ts": (_set((*MACHINE, "newest_ts"), KeyError), "machine 'm': 'newest_ts' is missing"),
    "a pending event without timestamp": (
        _set((*MACHINE, "pending", 0, "timestamp"), KeyError),
        "every 'pending' entry must be an event object",
    ),
    "a short last_key": (_set((*MACHINE, "last_key"), [1]), "'last_key' must be [timestamp, event_id] or null"),
    "a seen id without time": (_set((*MACHINE, "seen", "b"), "x"), "'seen' must map event ids to timestamps"),
    "a session without closed": (_set((*MACHINE, "session", "closed"), KeyError), "session: 'closed' is missing"),
    "a session count that is text": (_set((*MACHINE, "session", "count"), "1"), "'count' must be an integer"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_snapshot_is_refused_saying_what_is_wrong(name: str) -> None:
    change, message = MALFORMED[name]
    data = _valid()
    Snapshot.from_dict(copy.deepcopy(data))  # the untouched value reads
    change(data)
    with pytest.raises(SnapshotError) as error:
        Snapshot.from_dict(data)
    assert message in str(error.value)


def test_a_value_without_version_is_version_one() -> None:
    data = _valid()
    del data["version"]  # as written before the format had a version
    assert Snapshot.from_dict(data).to_dict() == _valid()


def test_a_snapshot_is_a_value() -> None:
    config = CONFIG
    sessionizer = Sessionizer(config)
    out = Outputs()
    sessionizer.process([event("m", T0, "a", "app_open"), event("m", T0 + MINUTE, "b")], out)
    sessionizer.end_batch(out)
    snapshot = sessionizer.snapshot()
    written = snapshot.to_dict()
    later = [event("m", T0 + 2 * MINUTE, "c"), event("n", T0 + 3 * config.idle_close_ms, "d")]
    # The sessionizer going on (releasing the buffered event, closing the session) leaves it as it was.
    sessionizer.process(copy.deepcopy(later), out)
    sessionizer.end_batch(out)
    assert snapshot.to_dict() == written
    # So does going on from it, twice: both continuations are the same.
    runs = []
    for _ in range(2):
        restored, run_out = Sessionizer.restore(config, snapshot), Outputs()
        restored.process(copy.deepcopy(later), run_out)
        restored.end_batch(run_out)
        restored.flush(run_out)
        runs.append((run_out.events, run_out.sessions))
    assert runs[0] == runs[1]
    assert [e["event_id"] for e in runs[0][0]] == ["b", "c", "d"]
    assert snapshot.to_dict() == written


def test_a_version_1_snapshot_reads_with_one_session_started_per_open_session() -> None:
    data = _valid()
    data["version"] = 1
    del data["forgotten"]
    for machine in data["machines"]:
        del machine["sessions"]
        for key in ("os", "number", "documents", "late_placed", "close_reason"):
            del machine["session"][key]
    snapshot = Snapshot.from_dict(data)
    (machine,) = snapshot.machines
    assert machine.sessions == 1 and machine.session is not None and machine.session.number == 1
    assert snapshot.forgotten == {} and snapshot.to_dict()["version"] == 2
