"""Fuzzing the parse, clean and validate path, and the reader: nothing raises, nothing is lost.

Short by default (a few seconds, part of `make test`); SESSIONFLOW_FUZZ_EXAMPLES=20000 makes it long.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline, Reason, Refiner
from sessionflow.lake.writer import _table
from sessionflow.runtimes.arrow import arrow_schema
from sessionflow.runtimes.local import engine
from sessionflow.runtimes.local import reader as reader_module
from sessionflow.runtimes.local.feeds import sessionizing
from sessionflow.runtimes.local.reader import OVERSIZED_KEEP, Source
from sessionflow.schema import SESSION_COLUMNS, event_columns
from tests.fuzz.line_reader import SourceReader
from tests.fuzz.strategies import NOW_MS, any_line, record_bytes

EXAMPLES = int(os.environ.get("SESSIONFLOW_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
REASONS = {reason.value for reason in Reason}

CONFIGS = {
    "default": Config(),
    # The sample config (cleaning rules that scale and lowercase) plus a column of every type.
    "typed": Config.from_dict(
        {
            "session": {"timeout": "30m", "opening_events": ["app_open"], "allowed_lateness": "5m"},
            "columns": {"user_id": "string", "app_version": "string", "os": "int", "document_id": "float", "x": "bool"},
            "clean": [{"when": {"app_version": "11.2.*"}, "scale": {"timestamp": 1000}}, {"lowercase": ["event_type"]}],
            "validation": {"max_record_bytes": 4096},
        }
    ),
}


def check_batch(config: Config, lines: list[bytes]) -> None:
    """Every line is blank, an event or a rejection with a known reason, and all of it can be written."""
    pipeline = Pipeline(config, NOW_MS)
    batch = pipeline.refine([(line, "fuzz", number) for number, line in enumerate(lines, 1)])
    assert batch.records + batch.blank == len(lines)
    assert batch.records == len(batch.events) + len(batch.rejections)
    for row in batch.rejections:
        assert row["reason"] in REASONS
        assert row["message"]
        orjson.dumps(row)  # the rejected file's line
    # The events and sessions they make can be written as the lake's Arrow tables.
    out = Outputs()
    pipeline.sessionize(batch, out)
    pipeline.flush(out)
    assert len(out.events) + len(out.duplicates) == len(batch.events)
    if out.events:
        _table(out.events, arrow_schema(event_columns(config)))
    if out.sessions:
        _table(out.sessions, arrow_schema(SESSION_COLUMNS))
    # The runner's own path: a worker refines a block straight into an Arrow record batch.
    single = [line for line in lines if b"\n" not in line]  # a block is cut at newlines
    expected = Pipeline(config, NOW_MS).refine([(line, "fuzz", number) for number, line in enumerate(single, 1)])
    engine._init_worker(config, NOW_MS, sessionizing())
    block = engine._block(engine.refine_block(b"".join(line + b"\n" for line in single), "fuzz", 1), "fuzz", 1)
    assert (block.records, block.batch.num_rows) == (expected.records, len(expected.events))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@FUZZ
@given(lines=st.lists(any_line, max_size=12))
def test_hostile_lines_are_events_or_rejections(name: str, lines: list[bytes]) -> None:
    check_batch(CONFIGS[name], lines)


@FUZZ
@given(record=record_bytes())
def test_a_record_is_valid_or_rejected_with_a_reason(record: bytes) -> None:
    result = Refiner(CONFIGS["typed"]).refine(record.strip(), NOW_MS)
    assert isinstance(result, dict) or result.reason.value in REASONS


def test_the_cases_fuzzing_found_are_rejected_not_raised() -> None:
    base = b'"event_id":"e","machine_id":"m","event_type":"view","timestamp":%d' % NOW_MS
    refiner = Refiner(Config())
    deep = refiner.refine(b"{" + base + b',"x":' + b"[" * 300 + b"]" * 300 + b"}", NOW_MS)
    assert not isinstance(deep, dict) and deep.reason is Reason.MALFORMED_JSON
    for version in ("\u00b2.1", "9" * 5000 + ".1", "99999999999.1"):
        event = refiner.refine(b"{" + base + b',"app_version":' + orjson.dumps(version) + b"}", NOW_MS)
        assert isinstance(event, dict) and event["app_version_major"] is None
    # A float column given an integer past 64 bits (orjson reads up to 2**64 - 1 as an int).
    for value in (b"18446744073709551615", b"9223372036854775808"):
        check_batch(CONFIGS["typed"], [b"{" + base + b',"document_id":' + value + b"}"])


def test_a_record_over_the_limit_is_rejected_without_being_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real_loads = orjson.loads

    def spy(raw: bytes) -> object:
        parsed.append(raw)
        return real_loads(raw)

    monkeypatch.setattr(orjson, "loads", spy)
    refiner = Refiner(Config.from_dict({"validation": {"max_record_bytes": 100}}))
    record = orjson.dumps(
        {"event_id": "e", "machine_id": "m", "event_type": "view", "timestamp": NOW_MS, "p": "x" * 60}
    )
    result = refiner.refine(record, NOW_MS)
    assert not isinstance(result, dict) and result.reason is Reason.OVERSIZED
    assert parsed == []


# -- the reader ------------------------------------------------------------------------------------


def read_all(data: bytes, limit: int | None, tmp_path: Path) -> tuple[list[tuple[bytes, int]], list[tuple[int, int]]]:
    path = tmp_path / "input.jsonl"
    path.write_bytes(data)
    lines: list[tuple[bytes, int]] = []
    oversized: list[tuple[int, int]] = []
    reader = SourceReader(Source(str(path), path), max_line_bytes=limit, batch_bytes=64)
    for batch in reader.batches():
        lines.extend((raw, number) for raw, _, number in batch)
        oversized.extend((line.line, line.size) for line in batch.oversized)
    assert reader.position.bytes == len(data)
    return lines, oversized


@FUZZ
@given(data=st.lists(st.sampled_from([b"a", b"bb", b"\n", b"\r\n", b"x" * 40, b"\xef\xbb\xbf", b"\x00"]), max_size=60))
def test_the_reader_splits_lines_exactly_and_cuts_only_long_ones(data: list[bytes], tmp_path_factory) -> None:
    content = b"".join(data)
    expected = content.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader_module, "_CHUNK", 7)  # chunk borders everywhere
        lines, oversized = read_all(content, 20, tmp_path_factory.mktemp("reader"))
    kept = {number: raw for raw, number in lines}
    cut = dict(oversized)
    assert sorted([*kept, *cut]) == list(range(1, len(expected) + 1))
    for number, line in enumerate(expected, 1):
        if len(line) > 20:
            assert cut[number] == len(line)
        else:
            assert kept[number] == line


def test_a_huge_line_without_newline_is_cut_with_bounded_memory(tmp_path: Path) -> None:
    huge = 64 << 20  # 64 MiB, no newline at all, then a good line
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"event_id":"')
        block = b"z" * (1 << 20)
        for _ in range(huge >> 20):
            handle.write(block)
        handle.write(b'"}\n{"next":1}\n')
    size = path.stat().st_size - len(b'{"next":1}\n') - 1
    tracemalloc.start()
    try:
        reader = SourceReader(Source(str(path), path), max_line_bytes=1 << 20)
        batches = list(reader.batches())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    oversized = [line for batch in batches for line in batch.oversized]
    assert [(line.line, line.size, len(line.prefix)) for line in oversized] == [(1, size, OVERSIZED_KEEP)]
    assert [raw for batch in batches for raw, _, _ in batch] == [b'{"next":1}']
    assert peak < 16 << 20, f"the reader held {peak / 2**20:.1f} MiB for a {huge >> 20} MiB line"


def test_an_oversized_line_reaches_the_lake_as_a_rejection(tmp_path: Path) -> None:
    from sessionflow.runtimes.local.runner import run

    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b'{"a":"' + b"y" * 300_000 + b'"}\r\n' + b"\xef\xbb\xbf{}\r\n")
    config = Config.from_dict({"validation": {"max_record_bytes": 100_000}})
    report = run([str(feed)], tmp_path / "lake", config)
    assert report.tally.rejected == {"oversized": 1, "missing_field": 1}
    rows = [
        orjson.loads(line)
        for line in (tmp_path / "lake/rejected/reason=oversized").glob("*.jsonl").__next__().open("rb")
    ]
    assert rows[0]["line"] == 1 and "300009 bytes" in rows[0]["message"]
    assert len(rows[0]["raw"]) == OVERSIZED_KEEP


def test_gzip_and_stdin_streams_are_read_like_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import sys

    data = b'{"a":1}\n\n' + b"q" * 5000 + b"\nlast"
    gz = tmp_path / "f.gz"
    gz.write_bytes(gzip.compress(data))
    from_gzip = [
        raw for batch in SourceReader(Source(str(gz), gz), max_line_bytes=1000).batches() for raw, _, _ in batch
    ]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    stdin_reader = SourceReader(Source("-", None), max_line_bytes=1000)
    from_stdin = [raw for batch in stdin_reader.batches() for raw, _, _ in batch]
    assert from_gzip == from_stdin == [b'{"a":1}', b"", b"last"]
