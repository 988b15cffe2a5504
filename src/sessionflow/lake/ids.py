"""The lake's event-id index: which ``(machine_id, event_id)`` the lake holds, 8 bytes an event.

An incremental run must know whether an event is already in the lake, whatever its age, or a copy
sent again would become a second row. The index answers that without reading the lake's events:

* ``_sessionflow/ids/event_date=YYYY-MM-DD.ids``, one file per day of the events table: the first
  8 bytes of ``blake2b(machine_id + "\\x1f" + event_id)`` of each of the day's events, in
  :data:`PARTS` parts by ``crc32(machine_id)`` (the hash the runs' spill buckets are cut by), each
  part sorted. A header gives each part's count and CRC-32. A run's worker reads only the parts of
  its machines.
* ``_sessionflow/ids/index.json``: for each day, the event files (name and size) the day's ids
  were taken from. A day whose files differ from the lake's now (a run or a backfill that did not
  keep the index, a file removed) is *stale*: the next incremental run, or ``sessionflow verify
  --repair``, builds it again from the lake. A hash the index holds is only a hint: the run reads
  the lake's row before it calls an event a duplicate, so a collision or a stale hash costs a read,
  never an event.

Incremental runs write the days they add events to (and any stale day they rebuilt) in their
atomic commit (``lake/commit.py``); a run that replaces the lake removes the index.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sessionflow.lake.durable import write_atomically
from sessionflow.lake.layout import INDEX_DIR, INDEX_MANIFEST
from sessionflow.schema import EVENT_PARTITION

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the event-id index needs pyarrow: pip install 'sessionflow[local]'") from exc

PARTS = 16  # parts of a day's ids, by crc32(machine_id) & (PARTS - 1)
_MAGIC = b"SFIDS\x00\x00\x01"
_PART_HEADER = struct.Struct("<QI4x")  # count, CRC-32 of the part's bytes
HEADER_BYTES = len(_MAGIC) + PARTS * _PART_HEADER.size
FORMAT = 1
# Hashes held at once when looking a run's events up: days are taken together up to this many.
_LOOKUP_HASHES = 4 << 20


class DamagedIndex(Exception):
    """An index file that cannot be read (damaged, another format)."""


# -- the hash -------------------------------------------------------------------------------------


def key_hashes(machines: Any, events: Any) -> pa.Array:
    """uint64: the first 8 bytes of blake2b(machine_id 0x1f event_id), one per row."""
    keys = pc.binary_join_element_wise(pc.cast(machines, pa.string()), pc.cast(events, pa.string()), "\x1f").cast(
        pa.binary()
    )
    blake = hashlib.blake2b
    data = b"".join(blake(key, digest_size=8).digest() for key in keys.to_pylist())
    return pa.Array.from_buffers(pa.uint64(), len(keys), [None, pa.py_buffer(data)])


def machine_parts(machines: Any) -> pa.Array:
    """uint8: each row's part, ``crc32(machine_id) & (PARTS - 1)``."""
    machines = pc.cast(machines, pa.string())
    if isinstance(machines, pa.ChunkedArray):
        machines = machines.combine_chunks()
    distinct = pc.unique(machines)
    parts = pa.array([zlib.crc32(m.encode()) & (PARTS - 1) for m in distinct.to_pylist()], pa.uint8())
    return pc.take(parts, pc.index_in(machines, value_set=distinct))


# -- one day's file -------------------------------------------------------------------------------


@dataclass
class DayIds:
    """One day's hashes: ``parts[p]`` sorted uint64 arrays."""

    parts: list[pa.Array]

    @classmethod
    def of(cls, hashes: pa.Array, parts: pa.Array) -> DayIds:
        """From hashes and their parts (any order, repeats dropped)."""
        found = []
        for part in range(PARTS):
            mine = hashes.filter(pc.equal(parts, part)) if len(hashes) else hashes
            found.append(_sorted_unique(mine))
        return cls(found)

    def add(self, other: DayIds) -> DayIds:
        return DayIds([_sorted_unique(pa.concat_arrays([a, b])) for a, b in zip(self.parts, other.parts, strict=True)])

    @property
    def count(self) -> int:
        return sum(len(part) for part in self.parts)

    def to_bytes(self) -> bytes:
        bodies = [_bytes_of(part) for part in self.parts]
        header = b"".join(
            _PART_HEADER.pack(len(part), zlib.crc32(body)) for part, body in zip(self.parts, bodies, strict=True)
        )
        return _MAGIC + header + b"".join(bodies)


def _sorted_unique(values: pa.Array) -> pa.Array:
    if len(values) == 0:
        return pa.array([], pa.uint64())
    unique = pc.unique(values)
    return unique.take(pc.sort_indices(unique))


def _bytes_of(values: pa.Array) -> bytes:
    values = values if isinstance(values, pa.Array) else pa.concat_arrays(values.chunks)
    if len(values) == 0:
        return b""
    buffer = values.buffers()[1]
    return bytes(buffer.slice(values.offset * 8, len(values) * 8))


def read_day(path: Path, parts: Iterable[int] | None = None) -> DayIds:
    """A day's file, the ``parts`` asked for (the others empty; None: all), checked against their CRCs."""
    wanted = set(range(PARTS) if parts is None else parts)
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
        if len(head) != HEADER_BYTES or head[: len(_MAGIC)] != _MAGIC:
            raise DamagedIndex(f"{path.name}: not an event-id index file of format {FORMAT}")
        entries = [_PART_HEADER.unpack_from(head, len(_MAGIC) + part * _PART_HEADER.size) for part in range(PARTS)]
        found = []
        offset = HEADER_BYTES
        for part, (count, crc) in enumerate(entries):
            if part not in wanted or count == 0:
                found.append(pa.array([], pa.uint64()))
                offset += count * 8
                continue
            handle.seek(offset)
            body = handle.read(count * 8)
            offset += count * 8
            if len(body) != count * 8 or zlib.crc32(body) != crc:
                raise DamagedIndex(f"{path.name}: part {part} is damaged (its size or CRC-32 does not match)")
            found.append(pa.Array.from_buffers(pa.uint64(), count, [None, pa.py_buffer(body)]))
    return DayIds(found)


def lake_day_ids(lake: Path, files: Iterable[str]) -> DayIds:
    """A day's ids taken from its event files (lake-relative names), read a row group at a time."""
    hashes: list[pa.Array] = []
    parts: list[pa.Array] = []
    for name in files:
        reader = pq.ParquetFile(lake / name)
        for batch in reader.iter_batches(batch_size=128 * 1024, columns=["machine_id", "event_id"]):
            hashes.append(key_hashes(batch.column(0), batch.column(1)))
            parts.append(machine_parts(batch.column(0)))
    if not hashes:
        return DayIds([pa.array([], pa.uint64()) for _ in range(PARTS)])
    return DayIds.of(pa.concat_arrays(hashes), pa.concat_arrays(parts))


# -- the index as a whole ---------------------------------------------------------------------------


def index_dir(lake: Path) -> Path:
    return lake / INDEX_DIR


def day_file_name(day: str) -> str:
    return f"{EVENT_PARTITION}={day}.ids"


Sources = dict[str, dict[str, int]]  # day -> {event file (lake-relative): size in bytes}


def lake_sources(lake: Path) -> Sources:
    """The event files of each day of the lake, with their sizes."""
    found: Sources = {}
    for folder in sorted((lake / "events").glob(f"{EVENT_PARTITION}=*")):
        day = folder.name.split("=", 1)[1]
        files = {p.relative_to(lake).as_posix(): p.stat().st_size for p in sorted(folder.glob("*.parquet"))}
        if files:
            found[day] = files
    return found


def read_manifest(lake: Path) -> Sources | None:
    """The days the index holds and the files each was taken from; None: no (readable) index."""
    path = lake / INDEX_MANIFEST
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("days"), dict):
        return None
    return {day: dict(entry["files"]) for day, entry in data["days"].items()}


def manifest_bytes(sources: Sources) -> bytes:
    days = {day: {"files": dict(sorted(files.items()))} for day, files in sorted(sources.items())}
    return orjson.dumps({"format": FORMAT, "days": days}, option=orjson.OPT_INDENT_2)


def stale_days(lake: Path, sources: Sources, manifest: Sources | None) -> list[str]:
    """Days of the lake whose index is missing or was taken from other files."""
    folder = index_dir(lake)
    held = manifest or {}
    return [
        day for day, files in sources.items() if held.get(day) != files or not (folder / day_file_name(day)).is_file()
    ]


def index_bytes(lake: Path) -> int:
    folder = index_dir(lake)
    return sum(p.stat().st_size for p in folder.glob("*.ids")) if folder.is_dir() else 0


@dataclass
class RunIndex:
    """The index as one incremental run uses and changes it. Nothing in the lake changes before the
    run commits: days rebuilt or added are written to ``staging`` (a folder the commit moves in)."""

    lake: Path
    staging: Path
    sources: Sources = field(init=False)
    # day -> the file to read it from: the lake's, or one this run rebuilt into staging
    days: dict[str, str] = field(init=False)
    rebuilt: list[str] = field(default_factory=list)
    _added: dict[str, DayIds] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sources = lake_sources(self.lake)
        stale = stale_days(self.lake, self.sources, read_manifest(self.lake))
        folder = self.staging / INDEX_DIR
        self.days = {day: str(index_dir(self.lake) / day_file_name(day)) for day in self.sources}
        for day in stale:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / day_file_name(day)
            _write_durably(path, lake_day_ids(self.lake, self.sources[day]).to_bytes())
            self.days[day] = str(path)
            self.rebuilt.append(day)

    def add(self, ids: pa.Table) -> None:
        """The hashes of the events the run writes: ``hash`` (uint64), ``part`` (uint8), ``day``."""
        if ids.num_rows == 0:
            return
        days = ids.column("day")
        for day in pc.unique(days).to_pylist():
            mine = ids.filter(pc.equal(days, day))
            new = DayIds.of(mine.column("hash").combine_chunks(), mine.column("part").combine_chunks())
            self._added[day] = self._added[day].add(new) if day in self._added else new

    def stage(self, final_sources: Sources) -> tuple[list[str], int]:
        """The files of the index after the run, into staging: each day the run added to, each it
        rebuilt, and the manifest (last). ``final_sources``: the lake's event files once the run is
        in place. Returns them, relative to the staging folder, in the order to put them in place,
        and the index's size in bytes once they are."""
        folder = self.staging / INDEX_DIR
        folder.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        sizes = {day: Path(path).stat().st_size for day, path in self.days.items() if Path(path).is_file()}
        for day in sorted(set(self._added) | set(self.rebuilt)):
            path = folder / day_file_name(day)
            known = self.days.get(day)
            old = read_day(Path(known)) if known is not None and Path(known).is_file() else None
            new = self._added.get(day)
            merged = old.add(new) if old is not None and new is not None else (old or new)
            assert merged is not None
            data = merged.to_bytes()
            _write_durably(path, data)
            sizes[day] = len(data)
            written.append(f"{INDEX_DIR}/{day_file_name(day)}")
        _write_durably(self.staging / INDEX_MANIFEST, manifest_bytes(final_sources))
        written.append(INDEX_MANIFEST)
        return written, sum(size for day, size in sizes.items() if day in final_sources)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


# -- looking events up ---------------------------------------------------------------------------------


def known_days(days: dict[str, str], hashes: pa.Array, parts: Iterable[int]) -> pa.Array:
    """For each hash, the day whose index holds it (null: none): ``days`` maps a day to its file;
    only the ``parts`` of the machines asked about are read, a few million hashes at a time."""
    wanted = sorted(set(parts))
    found: list[str | None] = [None] * len(hashes)
    batch: list[tuple[str, pa.Array]] = []
    held = 0

    def look_up() -> None:
        nonlocal held
        if not batch:
            return
        known = pa.concat_arrays([values for _, values in batch])
        hits = pc.indices_nonzero(pc.is_in(hashes, value_set=known)).to_pylist()
        if hits:
            subset = hashes.take(pa.array(hits, pa.int64()))
            for day, values in batch:
                inside = pc.is_in(subset, value_set=values).to_pylist()
                for row, yes in zip(hits, inside, strict=True):
                    if yes and found[row] is None:
                        found[row] = day
        batch.clear()
        held = 0

    if len(hashes):
        for day, path in sorted(days.items()):
            values = pa.concat_arrays(read_day(Path(path), wanted).parts)
            if len(values):
                batch.append((day, values))
                held += len(values)
            if held >= _LOOKUP_HASHES:
                look_up()
        look_up()
    return pa.array(found, pa.string())


# -- verify and repair -------------------------------------------------------------------------------


@dataclass
class IndexCheck:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_index(lake: Path) -> IndexCheck:
    """Each day the index (which the lake has) says is current holds exactly the hashes of the
    lake's events of that day."""
    result = IndexCheck()
    manifest = read_manifest(lake)
    if manifest is None:
        result.problems.append(
            f"{INDEX_MANIFEST} is missing or unreadable: sessionflow verify --repair rebuilds the event-id index"
        )
        return result
    sources = lake_sources(lake)
    stale = set(stale_days(lake, sources, manifest))
    if stale:
        result.notes.append(
            f"the event-id index of {len(stale)} day(s) was taken from other files than the lake's now "
            f"(e.g. {min(stale)}): the next incremental run or sessionflow verify --repair rebuilds them"
        )
    for day in sorted(set(sources) - stale):
        try:
            held = read_day(index_dir(lake) / day_file_name(day))
        except (OSError, DamagedIndex) as exc:
            result.problems.append(f"the event-id index of {day} cannot be read: {exc}")
            continue
        actual = lake_day_ids(lake, sources[day])
        missing = extra = 0
        for have, want in zip(held.parts, actual.parts, strict=True):
            missing += len(want) - pc.sum(pc.is_in(want, value_set=have).cast(pa.int64())).as_py() if len(want) else 0
            extra += len(have) - pc.sum(pc.is_in(have, value_set=want).cast(pa.int64())).as_py() if len(have) else 0
        if missing or extra:
            result.problems.append(
                f"the event-id index of {day} lacks {missing} of the day's {actual.count} events and holds "
                f"{extra} others: sessionflow verify --repair rebuilds it"
            )
    return result


def repair_index(lake: Path) -> list[str]:
    """Rebuild every stale, damaged or wrong day of an index the lake has (with the lake lock held);
    drop the days the lake no longer has. Returns the days rebuilt."""
    folder = index_dir(lake)
    if not folder.is_dir():
        return []
    sources = lake_sources(lake)
    manifest = read_manifest(lake)
    rebuilt = []
    for day, files in sources.items():
        actual = lake_day_ids(lake, files)
        path = folder / day_file_name(day)
        if manifest is not None and manifest.get(day) == files and path.is_file():
            try:
                if read_day(path).to_bytes() == actual.to_bytes():
                    continue
            except (OSError, DamagedIndex):
                pass
        write_atomically(path, actual.to_bytes())
        rebuilt.append(day)
    write_atomically(lake / INDEX_MANIFEST, manifest_bytes(sources))
    for path in folder.glob("*.ids"):
        if path.name not in {day_file_name(day) for day in sources}:
            path.unlink()
    return rebuilt
