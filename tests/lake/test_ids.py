"""The event-id index's parts, held to independent computations: the hash, the file format, the
lookup, and the ids taken from a lake's Parquet files."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionflow.lake.ids import (
    HEADER_BYTES,
    PARTS,
    DamagedIndex,
    DayIds,
    key_hashes,
    known_days,
    lake_day_ids,
    machine_parts,
    read_day,
)


def blake(machine: str, event: str) -> int:
    """The documented hash, computed on its own: the first 8 bytes of blake2b, little-endian."""
    return int.from_bytes(hashlib.blake2b(f"{machine}\x1f{event}".encode(), digest_size=8).digest(), "little")


def test_the_hash_is_blake2b_of_machine_and_event_and_never_changes() -> None:
    machines, events = ["m-1", "m-1", "machine-ü"], ["e-1", "e-2", "ëvent"]
    assert key_hashes(pa.array(machines), pa.array(events)).to_pylist() == [
        blake(m, e) for m, e in zip(machines, events, strict=True)
    ]
    # Fixed forever: an index written by one version is read by the next (the digest's bytes).
    (value,) = key_hashes(pa.array(["m-1"]), pa.array(["e-1"])).to_pylist()
    assert value.to_bytes(8, "little").hex() == "c8fde7c5e4193cfb"


def test_a_machine_part_is_its_crc32() -> None:
    machines = ["m-1", "m-2", "m-1", "x"]
    assert machine_parts(pa.array(machines)).to_pylist() == [zlib.crc32(m.encode()) % PARTS for m in machines]


keys = st.lists(st.tuples(st.sampled_from([f"m-{i}" for i in range(40)]), st.text(min_size=1, max_size=8)), max_size=60)


def day_of(pairs: list[tuple[str, str]]) -> DayIds:
    machines = pa.array([m for m, _ in pairs], pa.string())
    return DayIds.of(key_hashes(machines, pa.array([e for _, e in pairs], pa.string())), machine_parts(machines))


@settings(max_examples=40, deadline=None)
@given(keys)
def test_a_day_file_holds_each_key_once_in_its_part_sorted(pairs: list[tuple[str, str]]) -> None:
    day = day_of(pairs)
    expected: dict[int, set[int]] = {}
    for machine, event in pairs:
        expected.setdefault(zlib.crc32(machine.encode()) % PARTS, set()).add(blake(machine, event))
    for part, values in enumerate(day.parts):
        assert values.to_pylist() == sorted(expected.get(part, set()))
    data = day.to_bytes()
    assert len(data) == HEADER_BYTES + 8 * sum(len(v) for v in expected.values())


@settings(max_examples=40, deadline=None)
@given(keys, st.sets(st.integers(0, PARTS - 1)))
def test_a_day_file_reads_back_the_parts_asked_for(
    tmp_path_factory, pairs: list[tuple[str, str]], wanted: set[int]
) -> None:
    path = tmp_path_factory.mktemp("ids") / "day.ids"
    day = day_of(pairs)
    path.write_bytes(day.to_bytes())
    back = read_day(path, wanted)
    for part in range(PARTS):
        assert back.parts[part].to_pylist() == (day.parts[part].to_pylist() if part in wanted else [])
    assert read_day(path).to_bytes() == day.to_bytes()


def test_a_damaged_day_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "day.ids"
    data = bytearray(day_of([("m-1", "e-1"), ("m-2", "e-2")]).to_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedIndex, match="damaged"):
        read_day(path)
    path.write_bytes(b"not an index")
    with pytest.raises(DamagedIndex, match="not an event-id index"):
        read_day(path)


def test_a_lookup_finds_the_day_of_each_key_the_index_holds(tmp_path: Path) -> None:
    days = {
        "2026-10-05": [("m-1", "a"), ("m-2", "b")],
        "2026-10-06": [("m-1", "c"), ("m-3", "d")],
    }
    files = {}
    for day, pairs in days.items():
        files[day] = str(tmp_path / f"{day}.ids")
        Path(files[day]).write_bytes(day_of(pairs).to_bytes())
    asked = [("m-1", "c"), ("m-1", "a"), ("m-2", "z"), ("m-3", "d"), ("m-9", "a")]
    machines = pa.array([m for m, _ in asked])
    hashes = key_hashes(machines, pa.array([e for _, e in asked]))
    parts = set(machine_parts(machines).to_pylist())
    assert known_days(files, hashes, parts).to_pylist() == ["2026-10-06", "2026-10-05", None, "2026-10-06", None]
    # Parts not read are not found: a worker reads the parts of its own machines only.
    only = {zlib.crc32(b"m-3") % PARTS}
    found = known_days(files, hashes, only).to_pylist()
    assert found[3] == "2026-10-06"
    assert all(
        day is None
        for machine, day in zip(["m-1", "m-1", "m-2", "m-3", "m-9"], found, strict=True)
        if zlib.crc32(machine.encode()) % PARTS not in only
    )


def test_a_days_ids_from_its_event_files(tmp_path: Path) -> None:
    rows = [("m-1", "a"), ("m-2", "b"), ("m-1", "c")]
    for number, chunk in enumerate((rows[:2], rows[2:])):
        pq.write_table(
            pa.table(
                {"event_id": [e for _, e in chunk], "machine_id": [m for m, _ in chunk], "late": [False] * len(chunk)}
            ),
            tmp_path / f"part-{number}.parquet",
        )
    day = lake_day_ids(tmp_path, ["part-0.parquet", "part-1.parquet"])
    assert day.to_bytes() == day_of(rows).to_bytes()
