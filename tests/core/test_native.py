"""The compiled sessionizer is the pure one: same calls in the same order, same snapshots.

Each stream is run through both, and every call each makes to its emitter is recorded: the two
records must be equal, item for item. The streams are harsher than the streaming property's: any
arrival order (events far later than the lateness), duplicates near and far, silent machines, and
state saved as JSON mid-stream and restored into the *other* implementation.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionflow.config import HOUR, MINUTE, SessionConfig
from sessionflow.core import Sessionizer, Snapshot
from sessionflow.core.native import PURE_ENV, compiled, implementation
from tests.helpers import T0, through_json

native = compiled()
needs_native = pytest.mark.skipif(native is None, reason="the compiled sessionizer is not built")

TIMEOUT = 30 * MINUTE
LATENESS = 5 * MINUTE
TYPES = ("app_open", "view", "edit", "save")
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_compiled_sessionizer_is_built_in_a_dev_install() -> None:
    # make install compiles it; a silent fallback to pure Python would only show as a slow run.
    if os.environ.get(PURE_ENV):
        pytest.skip(f"{PURE_ENV} is set")
    assert native is not None, "sessionflow.core._native is missing: pip install -e . (needs a C compiler)"
    assert implementation() == "compiled"


def test_the_pure_sessionizer_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PURE_ENV, "1")
    assert compiled() is None
    assert implementation() == "pure"


class Recorder:
    """An emitter that keeps every call, with the event's id in place of its payload."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def release(
        self, payload: Any, session_id: str | None, seq: int | None, since: int | None, arrived_late: bool
    ) -> None:
        self.calls.append(("release", _id(payload), session_id, seq, since, arrived_late))

    def duplicate(self, payload: Any) -> None:
        self.calls.append(("duplicate", _id(payload)))

    def session(self, summary: dict[str, Any]) -> None:
        self.calls.append(("session", summary))


def _id(payload: Any) -> Any:
    if type(payload) is tuple:  # a block row: (placements, row)
        placements, row = payload
        return placements.batch.column("event_id")[row].as_py()
    return payload["event_id"]


@st.composite
def streams(draw: st.DrawFn) -> tuple[SessionConfig, list[dict[str, Any]], list[int], list[int]]:
    config = SessionConfig(
        timeout_ms=TIMEOUT,
        allowed_lateness_ms=draw(st.sampled_from([0, LATENESS])),
        opening_events=frozenset({"app_open"}),
        max_session_duration_ms=draw(st.sampled_from([None, HOUR])),
        dedupe_horizon_ms=draw(st.sampled_from([LATENESS, HOUR])),
        clock_quorum=draw(st.integers(1, 3)),
    )
    events: list[dict[str, Any]] = []
    for machine in range(draw(st.integers(1, 4))):
        ts = T0 + draw(st.integers(0, 2 * HOUR))
        for index in range(draw(st.integers(1, 20))):
            ts += draw(st.sampled_from([0, 1, LATENESS, TIMEOUT, TIMEOUT + 1, HOUR + 1, 3 * HOUR]))
            events.append(
                {
                    "event_id": f"{draw(st.sampled_from('abc'))}-{machine}-{index:02d}",
                    "machine_id": f"m{machine}",
                    "event_type": draw(st.sampled_from(TYPES)),
                    "timestamp": ts,
                    "user_id": draw(st.sampled_from([None, "u-1", "u-2"])),
                    "app_version": draw(st.sampled_from([None, "12.1.0"])),
                    "os": draw(st.sampled_from([None, "linux", "macos"])),
                    "document_id": draw(st.sampled_from([None, "d-1", "d-2", "d-3"])),
                }
            )
    # Duplicates: the same record again, anywhere in the stream.
    for original in draw(st.lists(st.sampled_from(range(len(events))), max_size=5)):
        events.append(dict(events[original]))
    events = draw(st.permutations(events))
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=8)))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    restarts = draw(st.lists(st.integers(0, len(sizes) - 1), max_size=3))
    return config, events, sizes, restarts


def _run(
    config: SessionConfig,
    events: list[dict[str, Any]],
    sizes: list[int],
    restarts: list[int],
    first: type,
    switch: bool = True,
) -> tuple[list[tuple[Any, ...]], Snapshot]:
    """Batches of ``sizes``; after each batch in ``restarts``, the state is saved as JSON and restored,
    into the other class when ``switch``."""
    other = Sessionizer if first is not Sessionizer else native.NativeSessionizer  # type: ignore[union-attr]
    classes: list[Any] = [first, other if switch else first]
    out = Recorder()
    sessionizer = classes[0](config)
    start = 0
    for index, size in enumerate(sizes):
        sessionizer.process(copy.deepcopy(events[start : start + size]), out)
        sessionizer.end_batch(out)
        start += size
        if index in restarts:
            classes.reverse()
            sessionizer = classes[0].restore(config, through_json(sessionizer.snapshot()))
    final = sessionizer.snapshot()  # compared as it is: the two classes' snapshots are equal values
    assert through_json(final) == final
    sessionizer.flush(out)
    return out.calls, final


@needs_native
@PROFILE
@given(streams())
def test_compiled_and_pure_make_the_same_calls_and_snapshots(stream: Any) -> None:
    config, events, sizes, restarts = stream
    pure = _run(config, events, sizes, [], Sessionizer)
    assert _run(config, events, sizes, [], native.NativeSessionizer) == pure  # type: ignore[union-attr]
    # State handed between the two mid-stream: the same as the pure one restarting at the same points.
    # (A restart may change the order of calls, never their content: a restored sessionizer has one
    # idle deadline per machine, where a running one also holds the stale ones; tests/core/test_properties.py.)
    restarted = _run(config, events, sizes, restarts, Sessionizer, switch=False)
    assert _run(config, events, sizes, restarts, native.NativeSessionizer) == restarted  # type: ignore[union-attr]
    assert _run(config, events, sizes, restarts, Sessionizer) == restarted


@needs_native
@PROFILE
@given(streams())
def test_collected_session_columns_make_the_table_the_summaries_make(stream: Any) -> None:
    pytest.importorskip("pyarrow")
    from sessionflow.lake.writer import _table
    from sessionflow.runtimes.arrow import arrow_schema
    from sessionflow.runtimes.local.columnar import session_table
    from sessionflow.schema import SESSION_COLUMNS

    config, events, sizes, _ = stream
    calls, _ = _run(config, events, sizes, [], Sessionizer)
    summaries = [call[1] for call in calls if call[0] == "session"]
    collecting = native.NativeSessionizer(config)  # type: ignore[union-attr]
    collecting.collect_sessions()
    out = Recorder()
    start = 0
    for size in sizes:
        collecting.process(copy.deepcopy(events[start : start + size]), out)
        collecting.end_batch(out)
        start += size
    collecting.flush(out)
    assert not [call for call in out.calls if call[0] == "session"]  # all collected, none emitted
    table = session_table(collecting.take_sessions())
    expected = _table(summaries, arrow_schema(SESSION_COLUMNS))
    assert table.drop_columns(["session_date"]).equals(expected)
    assert table.column("session_date").to_pylist() == [summary["session_date"] for summary in summaries]
    assert session_table(collecting.take_sessions()).num_rows == 0  # taken once


@needs_native
def test_a_block_fed_snapshot_is_the_record_fed_one() -> None:
    # The block feed keeps a row's user_id, app_version, os and document in the block, not in the
    # buffered record: the snapshot must still hold them in the record, as the record feed's does.
    pa = pytest.importorskip("pyarrow")
    from types import SimpleNamespace

    from sessionflow.runtimes.local.feeds import BLOCKS, KEY_COLUMNS, RECORDS

    config = SessionConfig(allowed_lateness_ms=LATENESS)
    events = [
        {
            "timestamp": T0 + i * MINUTE,
            "event_id": f"e{i:02d}",
            "machine_id": f"m{i % 2}",
            "event_type": TYPES[i % 4],
            "user_id": ["u-1", None, "u-2"][i % 3],
            "app_version": [None, "12.1.0"][i % 2],
            "os": [None, "linux", "macos"][i % 3],
            "document_id": [None, "d-1", "d-2", "d-3"][i % 4],
            "arrived_late": i % 5 == 0,
        }
        for i in range(20)
    ]
    batch = pa.RecordBatch.from_pylist(events)
    block = SimpleNamespace(batch=batch, keys=[[event[name] for event in events] for name in KEY_COLUMNS])
    taken = []
    for feed, cls in ((RECORDS, Sessionizer), (BLOCKS, native.NativeSessionizer)):  # type: ignore[union-attr]
        sessionizer = cls(config)
        feed.process(block, sessionizer, Recorder())  # type: ignore[arg-type]
        sessionizer.end_batch(Recorder())
        taken.append(sessionizer.snapshot(resolve=lambda payload: payload[0].batch.slice(payload[1], 1).to_pylist()[0]))
    pending = [record for machine in taken[1].machines for record in machine.pending]
    assert {record[4] for record in pending} == {"u-1", "u-2", None}  # the block's values, not None
    assert {record[6] for record in pending} == {"linux", "macos", None}
    assert {record[7] for record in pending} == {"d-1", "d-2", "d-3", None}
    assert {record[8] for record in pending} == {True, False}
    assert taken[1] == taken[0]
    assert through_json(taken[1]) == taken[1]


@needs_native
def test_pending_count_and_open_sessions_read_the_same_in_both() -> None:
    config = SessionConfig()
    events = [
        {"event_id": f"e{i}", "machine_id": f"m{i % 3}", "event_type": "view", "timestamp": T0 + i * MINUTE}
        for i in range(30)
    ]
    both = [Sessionizer(config), native.NativeSessionizer(config)]  # type: ignore[union-attr]
    for sessionizer in both:
        sessionizer.process(copy.deepcopy(events), Recorder())
        sessionizer.end_batch(Recorder())
    assert both[0].pending_count() == both[1].pending_count() > 0
    opened = [
        sorted((m, s.session.count) for m, s in sessionizer.machines.items() if s.session is not None)
        for sessionizer in both
    ]
    assert opened[0] == opened[1]


def test_compiled_core_modules_are_built_from_the_current_sources() -> None:
    # A compiled module shadows its .py: after an edit, the old build would run until make rebuilds it.
    import hashlib
    import importlib
    import json
    from pathlib import Path

    import sessionflow.core

    manifest_path = Path(sessionflow.core.__file__).parent / "_compiled.json"
    if not manifest_path.exists():
        pytest.skip("no compiled core modules in this install")
    for name, digest in json.loads(manifest_path.read_text()).items():
        module = importlib.import_module(name)
        if module.__file__ is None or module.__file__.endswith(".py"):
            continue  # this one was not compiled: the source runs
        source = Path(module.__file__).parent / f"{name.rsplit('.', 1)[1]}.py"
        assert hashlib.sha256(source.read_bytes()).hexdigest() == digest, (
            f"{name} was compiled from an older {source.name}: run `make install` (pip install -e .)"
        )
