"""The batch run's spill: the refining processes write the buckets, a bucket too big is cut into
parts of whole machines, and whatever the cut the lake is the batch result.

The lakes are held to the plain reference of ``arrival_feeds``, never to a count the run reports.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any
from zlib import crc32

import pyarrow as pa
import pytest

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.runtimes.local import runner, spill
from sessionflow.runtimes.local.spill import LINE, MACHINE_HASH, SOURCE, Spill, SpillTo, append, close_files
from tests.local.arrival_feeds import (
    assert_lake_is,
    assert_verifies,
    events_of_lines,
    read_lines,
    reference,
    sessionflow,
    shuffled,
    write_lines,
)


def _batch(rows: list[tuple[str, int]]) -> pa.RecordBatch:
    """Refined rows as a worker hands them to the spill: (machine, line) and a payload."""
    machines = [machine for machine, _ in rows]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(machines, pa.string()),
            pa.array([f"{machine}/{line}" for machine, line in rows], pa.string()),
            pa.array([line for _, line in rows], pa.int64()),
            pa.array([crc32(machine.encode()) for machine in machines], pa.uint32()),
        ],
        names=["machine_id", "payload", LINE, MACHINE_HASH],
    )


def test_a_bucket_cut_into_parts_keeps_whole_machines_and_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill, "SPLIT_BYTES", 4096)  # a few KiB: the buckets are cut into many parts
    folder = tmp_path / "spill"
    buckets = 2
    store = Spill(folder, buckets)
    machines = [f"m-{number}" for number in range(40)]
    written: list[tuple[int, str, int]] = []  # (input, machine, line) in the order refined
    line = 0
    for source in (0, 1):
        for _ in range(12):  # blocks
            rows = []
            for step in range(50):
                line += 1
                rows.append((machines[(line * 7 + step) % len(machines)], line))
            written += [(source, machine, number) for machine, number in rows]
            store.add(append(SpillTo(str(folder), buckets, source), _batch(rows)))
    close_files()

    plan = store.plan()
    assert [bucket.number for bucket in plan] == [0, 1]
    assert all(bucket.parts > 1 for bucket in plan)
    seen: list[tuple[int, str, int]] = []
    owner: dict[str, int] = {}
    for bucket in plan:
        numbers = []
        for number, paths in bucket.pieces():
            numbers.append(number)
            table = spill.read_bucket(paths)
            found: list[tuple[int, str, int]] = list(
                zip(
                    table.column(SOURCE).to_pylist(),
                    table.column("machine_id").to_pylist(),
                    table.column(LINE).to_pylist(),
                    strict=True,
                )
            )
            for _, machine, _ in found:
                assert owner.setdefault(machine, number) == number, f"machine {machine} is in two parts"
                assert crc32(machine.encode()) & (buckets - 1) == bucket.number
            # Within a part, each input's rows keep the order they were refined in.
            by_source: dict[int, list[int]] = defaultdict(list)
            for source, _, refined_line in found:
                by_source[source].append(refined_line)
            assert all(lines == sorted(lines) for lines in by_source.values())
            seen += found
        assert len(set(numbers)) == len(numbers)
    assert sorted(seen) == sorted(written)
    assert not list(folder.glob("bucket-*")), "the cut bucket's own files are gone"


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """A generated feed (dirty: invalid records, retries, seconds, upper case), its lines shuffled."""
    folder = tmp_path_factory.mktemp("spill-feed")
    path = folder / "generated.jsonl"
    done = sessionflow("generate", "--events", "20000", "--machines", "120", "--seed", "5", "-o", path)
    assert done.returncode == 0, done.stderr
    lines = shuffled(read_lines(path), seed=9)
    return write_lines(folder / "shuffled.jsonl", lines), lines


def _feed_through_a_pipe(path: Path, data: bytes) -> threading.Thread:
    os.mkfifo(path)

    def write() -> None:
        with open(path, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("through", ["file", "pipe"])
def test_buckets_cut_into_parts_give_the_batch_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feed: tuple[Path, list[bytes]], workers: int, through: str
) -> None:
    # Small buckets, cut again into parts of ~64 KiB: many buckets and parts, and workers forked
    # from this process (which see the same settings) cut them side by side.
    monkeypatch.setattr(spill, "BUCKET_RAW_BYTES", 1 << 20)
    monkeypatch.setattr(spill, "SPLIT_BYTES", 64 << 10)
    path, lines = feed
    config_file = tmp_path / "sessionflow.toml"
    config_file.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    source: Any = path
    writer = None
    if through == "pipe":  # read once, its bucket count not known from its size
        source = tmp_path / "feed.pipe"
        writer = _feed_through_a_pipe(source, path.read_bytes())
    lake = tmp_path / "lake"
    report = runner.run([str(source)], lake, Config.load(config_file), workers=workers)
    if writer is not None:
        writer.join(timeout=60)
    assert_lake_is(lake, reference([events_of_lines(lines)]))
    assert report.tally.late == 0
    assert_verifies(lake)
