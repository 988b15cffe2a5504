"""The local runtime's compiled block reader (``_blocks.pyx``) places a block's rows as the pure
sessionizer releases them, and its Arrow columns say what its placements say.

The streams are the ones ``tests/core/test_native.py`` holds the two sessionizers equal on.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionflow.config import SessionConfig
from sessionflow.core import Sessionizer
from sessionflow.core.native import PURE_ENV
from sessionflow.runtimes.local import feeds
from tests.core.test_native import PROFILE, Recorder, streams
from tests.helpers import T0

try:  # built or not, whatever SESSIONFLOW_PURE says (it rules out using it, not importing it)
    from sessionflow.runtimes.local import _blocks as built_reader
except ImportError:
    built_reader = None  # type: ignore[assignment]
reader: Any = built_reader if feeds.sessionizing() is feeds.BLOCKS else None
needs_blocks = pytest.mark.skipif(reader is None, reason="the compiled sessionizer or block reader is not built")


def _sessionizer(config: SessionConfig) -> Any:
    from sessionflow.core import _native

    return _native.NativeSessionizer(config)


KEYS = feeds.KEY_COLUMNS  # the columns a block hands the sessionizer


def _block(rows: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
    """A block as the runner hands it over: an Arrow batch and its key columns."""
    types = {"timestamp": pa.int64(), "arrived_late": pa.bool_()}
    defaults = {"arrived_late": False}
    batch = pa.RecordBatch.from_pydict(
        {
            name: pa.array([row.get(name, defaults.get(name)) for row in rows], types.get(name, pa.string()))
            for name in KEYS
        }
    )
    columns = [batch.column(name) for name in KEYS]
    encoded = {2, 3, 7}  # machine ids, event types, document ids
    return batch, [column.dictionary_encode() if i in encoded else column for i, column in enumerate(columns)]


@needs_blocks
@PROFILE
@given(streams())
def test_blocks_place_their_rows_as_the_pure_sessionizer_releases_them(stream: Any) -> None:
    config, events, sizes, _ = stream
    pure = Recorder()
    sessionizer = Sessionizer(config)
    compiled_one = _sessionizer(config)
    out = Recorder()
    blocks = []
    start = 0
    for size in sizes:
        rows = events[start : start + size]
        start += size
        sessionizer.process(copy.deepcopy(rows), pure)
        sessionizer.end_batch(pure)
        batch, columns = _block(rows)
        placements = reader.Placements(batch)
        reader.process_block(compiled_one, *columns, placements, out)
        compiled_one.end_batch(out)
        blocks.append(placements)
    sessionizer.flush(pure)
    compiled_one.flush(out)
    # Rows placed or late: the pure release calls, as (id, session, seq, since). A block's
    # arrived_late is its own column (the runner's, which sorts first): only sessions count it here.
    released = [call[1:5] for call in pure.calls if call[0] == "release"]
    written = [
        (block.batch.column("event_id")[row].as_py(), *block.placed(row))
        for block in blocks
        for row in range(block.batch.num_rows)
        if block.placed(row)[1] != 0
    ]
    assert sorted(written, key=repr) == sorted(released, key=repr)
    # Duplicates and sessions went through the emitter, in the same order.
    assert out.calls == [call for call in pure.calls if call[0] != "release"]
    # A duplicate handed to the emitter is still counted as remaining: the engine's emitter counts it down.
    duplicates = sum(1 for call in out.calls if call[0] == "duplicate")
    assert sum(block.remaining for block in blocks) == duplicates == len(events) - len(written)
    # The Arrow columns say what placed() says, row for row.
    for block in blocks:
        session_ids, seqs, sinces, late, mask = block.columns()
        rows = [block.placed(row) for row in range(block.batch.num_rows)]
        assert session_ids.to_pylist() == [row[0] for row in rows]
        assert seqs.to_pylist() == [row[1] or None for row in rows]
        assert sinces.to_pylist() == [row[2] for row in rows]
        assert late.to_pylist() == [row[1] is None for row in rows]
        assert (mask.to_pylist() if mask is not None else None) == (
            [row[1] != 0 for row in rows] if any(row[1] == 0 for row in rows) else None
        )
        for array in (session_ids, seqs, sinces, late):
            array.validate(full=True)


@needs_blocks
def test_a_block_with_columns_of_different_lengths_is_refused() -> None:
    sessionizer = _sessionizer(SessionConfig())
    batch, columns = _block([{"event_id": "e1", "machine_id": "m1", "event_type": "view", "timestamp": T0}])
    placements = reader.Placements(batch)
    columns[5] = pa.array([], pa.string())
    with pytest.raises(ValueError, match="differ in length"):
        reader.process_block(sessionizer, *columns, placements, Recorder())


@needs_blocks
def test_a_block_reads_sliced_arrays_and_missing_columns() -> None:
    # Arrow arrays can start at an offset into their buffers; user_id and app_version may be absent.
    rows = [
        {"event_id": f"e{i}", "machine_id": f"m{i % 2}", "event_type": "view", "timestamp": T0 + i, "user_id": None}
        for i in range(10)
    ]
    batch, _ = _block(rows)
    sliced = batch.slice(3, 5)
    placements = reader.Placements(sliced)
    sessionizer = _sessionizer(SessionConfig())
    keys = [sliced.column(name) for name in KEYS[:2]]
    keys += [sliced.column(name).dictionary_encode().slice(0) for name in KEYS[2:4]]
    reader.process_block(sessionizer, *keys, None, None, None, None, None, placements, Recorder())
    sessionizer.flush(Recorder())
    assert [placements.placed(row)[1] for row in range(5)] == [1, 1, 2, 2, 3]
    assert [placements.placed(row)[2] for row in range(5)] == [None, None, 2, 2, 2]


# Values a refined event's columns hold, and some they never do (the Arrow column is then left to
# pyarrow, which converts them or says why not): the compiled columns must be what pyarrow makes.
_CELLS = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False),
    st.just("\ud800"),  # a lone surrogate: no UTF-8
)
_KINDS = ("string", "int64", "double", "bool")
Case = tuple[tuple[str, ...], list[tuple[Any, ...]]]  # column kinds, rows


def _pyarrow_column(values: list[Any], kind: str) -> pa.Array | type[Exception]:
    try:
        return pa.array(values, pa.type_for_alias(kind))
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        return type(exc)


@needs_blocks
@given(
    st.lists(st.sampled_from(_KINDS), min_size=1, max_size=4).flatmap(
        lambda kinds: st.tuples(
            st.just(tuple(kinds)),
            st.lists(st.tuples(*[_CELLS for _ in kinds]), max_size=40),
        )
    )
)
def test_arrow_columns_are_what_pyarrow_makes_of_the_values(case: Case) -> None:
    kinds, rows = case
    events = [{f"k{index}": value for index, value in enumerate(row)} for row in rows]
    columns = reader.arrow_columns(events, kinds)
    assert len(columns) == len(kinds)
    for index, (kind, column) in enumerate(zip(kinds, columns, strict=True)):
        values = [row[index] for row in rows]
        expected = _pyarrow_column(values, kind)
        if isinstance(column, pa.Array):  # built in C: only what pyarrow converts too
            assert kind in ("string", "int64")
            assert isinstance(expected, pa.Array)
            column.validate(full=True)
            assert column.type == expected.type
            assert column.to_pylist() == expected.to_pylist()
        else:  # the values, for pyarrow to convert (or refuse) as before
            assert column == values
            if kind in ("string", "int64") and values:
                assert not isinstance(expected, pa.Array) or any(
                    value is not None and type(value) is not (str if kind == "string" else int) for value in values
                )


@needs_blocks
def test_arrow_columns_of_refined_events() -> None:
    events = [
        {"event_id": "e1", "timestamp": 1_700_000_000_000, "user_id": "ü-1", "extra": None},
        {"event_id": "é2", "timestamp": -5, "user_id": None, "extra": '{"a":1}'},
    ]
    ids, times, users, extra = reader.arrow_columns(events, ("string", "int64", "string", "string"))
    assert ids.to_pylist() == ["e1", "é2"] and ids.null_count == 0
    assert times.type == pa.int64() and times.to_pylist() == [1_700_000_000_000, -5]
    assert users.to_pylist() == ["ü-1", None] and users.null_count == 1
    assert extra.to_pylist() == [None, '{"a":1}']


@needs_blocks
def test_arrow_columns_refuse_an_event_of_another_width() -> None:
    with pytest.raises(ValueError, match="event 1 does not have the 2 keys"):
        reader.arrow_columns([{"a": 1, "b": 2}, {"a": 1}, {"a": 1, "b": 2}], ("int64", "int64"))


@needs_blocks
def test_a_block_with_columns_of_the_wrong_types_is_refused() -> None:
    batch, columns = _block([{"event_id": "e1", "machine_id": "m1", "event_type": "view", "timestamp": T0}])
    sessionizer = _sessionizer(SessionConfig())
    wrong = {
        0: (pa.array([T0], pa.uint64()), "int64 timestamps"),
        1: (pa.array(["e1"]).dictionary_encode(), "a string array"),
        2: (pa.array(["m1"]), "a dictionary-encoded string array"),
    }
    for index, (column, message) in wrong.items():
        given = list(columns)
        given[index] = column
        with pytest.raises(TypeError, match=message):
            reader.process_block(sessionizer, *given, reader.Placements(batch), Recorder())


def test_the_feed_follows_the_core_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PURE_ENV, "1")
    assert feeds.sessionizing() is feeds.RECORDS  # SESSIONFLOW_PURE rules the block reader out too
    monkeypatch.setenv(PURE_ENV, "0")
    assert feeds.sessionizing() is (feeds.BLOCKS if built_reader is not None else feeds.RECORDS)
    # A worker started by "spawn" gets the same feed: the module's one instance, not a copy.
    assert pickle.loads(pickle.dumps(feeds.BLOCKS)) is feeds.BLOCKS
    assert pickle.loads(pickle.dumps(feeds.RECORDS)) is feeds.RECORDS


@needs_blocks
def test_a_block_for_the_pure_sessionizer_is_refused() -> None:
    # The feed is chosen once; a pure sessionizer handed to the block reader fails, it is not guessed around.
    batch, columns = _block([{"event_id": "e1", "machine_id": "m1", "event_type": "view", "timestamp": T0}])
    with pytest.raises(TypeError, match="NativeSessionizer"):
        reader.process_block(Sessionizer(SessionConfig()), *columns, reader.Placements(batch), Recorder())


@needs_blocks
@given(st.binary(max_size=300) | st.lists(st.sampled_from([b"\n", b"a", b"\r\n", b"{}"]), max_size=80).map(b"".join))
def test_newlines_is_what_bytes_count_says(data: bytes) -> None:
    assert reader.newlines(data) == data.count(b"\n")
