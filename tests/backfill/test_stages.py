"""The executor-side functions without Spark: the date-range logic against a whole-history run, and
the spark-submit argument handling. Fast; no SparkSession."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import pytest

from sessionflow.config import DAY, HOUR, MINUTE, Config, SessionConfig
from sessionflow.core.pipeline import LineRefiner
from sessionflow.synthetic import FeedShape, generate

pytest.importorskip("pyarrow")

from sessionflow.runtimes.backfill.stages import (
    CONFLICT,
    DUPLICATES,
    EVENT,
    SESSION,
    UNRESOLVED,
    Window,
    sessionize_machine,
    wanted_lines,
)

START = 1_791_244_800_000  # 2026-10-06T00:00:00Z: the feed below starts on 2026-10-05


def _machines(config: Config) -> dict[str, list[dict[str, Any]]]:
    refine_line = LineRefiner(config).refine_line
    machines: dict[str, list[dict[str, Any]]] = {}
    for index, raw in enumerate(generate(FeedShape(events=6_000, machines=12, seed=5, days=4))):
        event = refine_line(raw, START + 400 * DAY)
        if isinstance(event, dict):
            event.update(file_index=0, block_start=0, idx=index)
            machines.setdefault(event["machine_id"], []).append(event)
    return machines


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    if row["kind"] == EVENT:
        return (EVENT, row["event_id"], row["session_id"], row["session_seq"], row["ms_since_prev"])
    return (SESSION, row["s_session_id"], row["s_event_count"], row["s_end_ts"], tuple(row["s_event_type_counts"]))


@pytest.mark.parametrize(
    ("session", "bot_needs_history"),
    [
        (SessionConfig(), True),
        (SessionConfig(max_session_duration_ms=2 * HOUR), True),
        # The bot pauses 5 to 15 minutes: with a 10-minute timeout the margin settles it too.
        (SessionConfig(timeout_ms=10 * MINUTE, opening_events=frozenset()), False),
    ],
    ids=["default", "max-duration", "short-timeout-no-opening-events"],
)
def test_a_window_gives_the_range_of_a_whole_history_run_or_says_it_cannot(
    session: SessionConfig, bot_needs_history: bool
) -> None:
    # The feed's 11.2.* builds send seconds: without this rule their machines would have no events.
    rules = Config.from_dict({"clean": [{"when": {"app_version": "11.2.*"}, "scale": {"timestamp": 1000}}]}).clean
    config = Config(session=session, clean=rules)
    settled = unresolved = 0
    for events in _machines(config).values():
        whole = sessionize_machine(copy.deepcopy(events), config=config)
        for first_day in range(4):
            lo = START - DAY + first_day * DAY
            for days, margin in ((1, session.timeout_ms), (1, DAY), (2, 3 * HOUR)):
                hi = lo + days * DAY
                expected = sorted(
                    _key(r)
                    for r in whole
                    if (r["kind"] == EVENT and lo <= r["timestamp"] < hi)
                    or (r["kind"] == SESSION and lo <= r["s_start_ts"] < hi)
                )
                near = [copy.deepcopy(e) for e in events if lo - margin <= e["timestamp"] < hi + margin]
                rows = sessionize_machine(near, config=config, window=Window(lo, hi, lo - margin, hi + margin))
                if rows and rows[0]["kind"] == UNRESOLVED:
                    unresolved += 1
                    rows = sessionize_machine(copy.deepcopy(events), config=config, window=Window(lo, hi, None, None))
                else:
                    settled += 1
                assert sorted(_key(r) for r in rows) == expected
    # Most machines settle within the margin; the bot, which never pauses for `timeout`, does not.
    assert settled > 5 * unresolved
    assert (unresolved > 0) is bot_needs_history


def test_first_arrival_wins_whatever_the_timestamps() -> None:
    """And however far apart: a backfill has read the whole history, so its dedupe has no horizon."""
    config = Config()
    base = {"machine_id": "m", "event_type": "view", "block_start": 0, "file_index": 0}
    events = [
        {**base, "event_id": "a", "timestamp": START + 5_000, "idx": 7},
        {**base, "event_id": "a", "timestamp": START, "idx": 3, "block_start": 0, "file_index": 1},
        {**base, "event_id": "b", "timestamp": START + 1_000, "idx": 9},
        {**base, "event_id": "c", "timestamp": START + 3 * DAY, "idx": 11},
        {**base, "event_id": "c", "timestamp": START - 2 * DAY, "idx": 0, "file_index": 2},
    ]
    rows = sessionize_machine(events, config=config)
    kept = {r["event_id"]: r["timestamp"] for r in rows if r["kind"] == EVENT}
    assert kept == {"a": START + 5_000, "b": START + 1_000, "c": START + 3 * DAY}


def test_a_later_copy_of_other_content_is_a_conflict_an_identical_one_a_duplicate() -> None:
    config = Config()
    base = {"machine_id": "m", "event_type": "view", "block_start": 0, "file_index": 0, "extra": None}
    events = [
        {**base, "event_id": "a", "timestamp": START, "idx": 1},
        {**base, "event_id": "a", "timestamp": START, "idx": 2},  # identical: a duplicate
        {**base, "event_id": "a", "timestamp": START, "idx": 4, "event_type": "edit"},
        {**base, "event_id": "a", "timestamp": START + 9, "idx": 0, "block_start": 512, "extra": '{"x":1}'},
        {**base, "event_id": "b", "timestamp": START + 1, "idx": 3},
    ]
    rows = sessionize_machine(copy.deepcopy(events), config=config)
    kept = sorted((r["event_id"], r["event_type"]) for r in rows if r["kind"] == EVENT)
    assert kept == [("a", "view"), ("b", "view")]
    assert [r["duplicates"] for r in rows if r["kind"] == DUPLICATES] == [1]
    conflicts = sorted(
        ((r["c_file_index"], r["c_block_start"], r["c_idx"]), r["c_message"]) for r in rows if r["kind"] == CONFLICT
    )
    assert conflicts == [
        ((0, 0, 4), "event 'a' of machine 'm' arrived before with other event_type; the first arrival is kept"),
        (
            (0, 512, 0),
            "event 'a' of machine 'm' arrived before with other extra, timestamp, event_time; "
            "the first arrival is kept",
        ),
    ]
    # A range run writes no rejections: its conflicting copies are only dropped.
    window = Window(START - DAY, START + DAY, None, None)
    in_range = sessionize_machine(events, config=config, window=window)
    assert {r["kind"] for r in in_range} == {EVENT, SESSION} and len(in_range) == 3


def test_wanted_lines_numbers_lines_as_the_refine_stage_does() -> None:
    """Per (file, split), in the order read, over batches: blank lines count too."""
    import pyarrow as pa

    def batch(rows: list[tuple[bytes, str, int]]) -> pa.RecordBatch:
        raw, path, start = zip(*rows, strict=True)
        return pa.RecordBatch.from_arrays(
            [pa.array(raw, pa.binary()), pa.array(path), pa.array(start, pa.int64())],
            names=["raw", "file_path", "block_start"],
        )

    a, b = "file:///in/a%20x.jsonl", "file:///in/b.jsonl"
    batches = [
        batch([(b"a0", a, 0), (b"", a, 0), (b"a2", a, 0), (b"b0", b, 0)]),
        batch([(b"a3", a, 0), (b"s0", a, 100), (b"s1", a, 100), (b"b1", b, 0)]),
    ]
    index = {"file:/in/a x.jsonl": 0, "file:/in/b.jsonl": 1}
    wanted = {0: {(0, 3), (100, 1), (0, 1)}, 1: {(0, 1)}}
    found = [row for out in wanted_lines(iter(batches), file_index=index, wanted=wanted) for row in out.to_pylist()]
    assert sorted((r["file_index"], r["block_start"], r["idx"], r["raw"]) for r in found) == [
        (0, 0, 1, b""),
        (0, 0, 3, b"a3"),
        (0, 100, 1, b"s1"),
        (1, 0, 1, b"b1"),
    ]


def test_the_timeout_boundary_in_a_window_against_sessions_written_out_by_hand() -> None:
    """A gap of exactly the timeout keeps the session, one millisecond more splits it; a window
    decides a range only when what it did not read cannot be within the timeout."""
    config = Config(session=SessionConfig(opening_events=frozenset()))
    timeout = config.session.timeout_ms
    times = [START, START + timeout, START + 2 * timeout + 1]
    base = {"machine_id": "m", "event_type": "view", "block_start": 0, "file_index": 0}
    events = [{**base, "event_id": f"e{i}", "timestamp": ts, "idx": i} for i, ts in enumerate(times)]

    def sessions(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
        return [(r["s_start_ts"], r["s_event_count"]) for r in rows if r["kind"] == SESSION]

    assert sessions(sessionize_machine(copy.deepcopy(events), config=config)) == [(times[0], 2), (times[2], 1)]
    # The range holds the second event; the first is not read but exactly the timeout before it.
    first_unread = Window(times[1], times[1] + 1, read_lo=times[0] + 1, read_hi=times[2] + 1)
    assert sessionize_machine(copy.deepcopy(events[1:]), config=config, window=first_unread)[0]["kind"] == UNRESOLVED
    # The range holds the first event; the second is not read and may join it.
    second_unread = Window(times[0], times[0] + 1, read_lo=times[0] - DAY, read_hi=times[1])
    assert sessionize_machine(copy.deepcopy(events[:1]), config=config, window=second_unread)[0]["kind"] == UNRESOLVED
    # One millisecond further and the third event's start is certain: the window decides.
    third = Window(times[2], times[2] + 1, read_lo=times[1] + 1, read_hi=times[2] + timeout + 1)
    assert sessions(sessionize_machine(copy.deepcopy(events[2:]), config=config, window=third)) == [(times[2], 1)]


def test_glue_arguments_are_dropped_with_their_values() -> None:
    pytest.importorskip("pyspark")
    from sessionflow.runtimes.backfill.options import add_arguments, date_range_of, inputs_of
    from sessionflow.runtimes.backfill.submit import drop_foreign_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--JOB_ID", "j_1", "--input", "s3://raw/a/,s3://raw/b/", "--TempDir=s3://t", "--out", "s3://lake"]
    argv += ["--enable-metrics", "true", "--overwrite", "true", "--from", "2026-10-07", "--to", "2026-10-08"]
    ours, foreign = drop_foreign_options(argv, parser)
    assert foreign == ["--JOB_ID", "j_1", "--TempDir=s3://t", "--enable-metrics", "true"]
    args = parser.parse_args(ours)
    assert inputs_of(args) == ["s3://raw/a/", "s3://raw/b/"]
    assert args.overwrite is True
    window = date_range_of(args)
    assert window is not None and window.days() == ["2026-10-07", "2026-10-08"]
