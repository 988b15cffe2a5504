"""The Spark backfill writes the embedded runner's lake: event for event, session for session, rejection
for rejection; and a one-day backfill rebuilds that day exactly as a full run has it."""

from __future__ import annotations

import base64
import gzip
import hashlib
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.synthetic import FeedShape, generate

# One worker runs them all under `pytest -n N --dist loadgroup`: one JVM, fixtures built once.
pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]

pytest.importorskip("pyspark", reason="the Spark tests need pip install 'sessionflow[spark]'")
pa = pytest.importorskip("pyarrow")
ds = pytest.importorskip("pyarrow.dataset")
pq = pytest.importorskip("pyarrow.parquet")

NOW = "2026-11-01T00:00:00+00:00"
NOW_MS = 1_793_491_200_000
# The example config, with bots' sessions split at 3 hours.
CONFIG = EXAMPLE_CONFIG.replace('allowed_lateness = "5m"\n', 'allowed_lateness = "5m"\nmax_session_duration = "3h"\n')
assert "max_session_duration" in CONFIG
MIDDLE_DAY = "2026-10-07"  # the feed covers 2026-10-05 .. 2026-10-09

# Dirt the generator does not make: a BOM, CRLF, a lone CR inside a line, blanks, bytes that are not UTF-8.
HAND_MADE = [
    b'\xef\xbb\xbf{"event_id":"bom-1","machine_id":"mach-hand","event_type":"app_open","timestamp":1791280800000}',
    b'{"event_id":"crlf-1","machine_id":"mach-hand","event_type":"VIEW","timestamp":1791280860000}\r',
    b'{"event_id":"cr-1","machine_id":"mach-hand"}\r{"event_type":"view"}',
    b"   ",
    b"",
    b'{"event_id":"\xc3\x28","machine_id":"mach-hand","event_type":"view","timestamp":1791280900000}',
    b'{"event_id":"late-dup","machine_id":"mach-hand","event_type":"edit","timestamp":1791280920000}',
    b'{"event_id":"late-dup","machine_id":"mach-hand","event_type":"edit","timestamp":1791280920000}',
    # Rejected: its row keeps the line as read (BOM and blanks included), less the line end.
    b'\xef\xbb\xbf  {"event_id": 1, "machine_id": "mach-hand"}  \r',
]


def _is_event(line: bytes) -> bool:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and isinstance(record.get("timestamp"), int) and "event_id" in record


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Config]:
    """Dirty synthetic input in several files, a folder and a gzip file, in arrival order."""
    root = tmp_path_factory.mktemp("backfill")
    lines = list(generate(FeedShape(events=10_000, machines=30, seed=11, days=4)))
    for offset, line in enumerate(HAND_MADE):
        lines.insert(500 + 37 * offset, line)
    # Later copies of other content, in a file's second split and in the gzip file: rejected with their bytes.
    for position in (3_900, 9_000):
        line = next(line for line in lines[position - 60 :] if _is_event(line))
        record = orjson.loads(line)
        record["timestamp"] += 1
        lines.insert(position, orjson.dumps(record))
    folder = root / "raw" / "part"
    (folder / "2026" / "10").mkdir(parents=True)
    chunks = [lines[:4000], lines[4000:7000], lines[7000:8500], lines[8500:]]
    (folder / "2026" / "10" / "a.jsonl").write_bytes(b"\n".join(chunks[0]) + b"\n")
    (folder / "2026" / "10" / "b.jsonl").write_bytes(b"\n".join(chunks[1]))  # no final newline
    # A name Spark would take for a glob and a URL escape: it must still be read as itself.
    (folder / "2026" / "11 %20[x].jsonl").write_bytes(b"\n".join(chunks[2]) + b"\r\n")
    (folder / "_ignored").mkdir()
    (folder / "_ignored" / "x.jsonl").write_bytes(b"not read by either runtime\n")
    (folder / ".hidden.jsonl").write_bytes(b"nor this\n")
    tail = root / "raw" / "tail.jsonl.gz"
    tail.write_bytes(gzip.compress(b"\n".join(chunks[3]) + b"\n"))
    config_path = root / "sessionflow.toml"
    config_path.write_text(CONFIG)
    # Relative spellings are kept as given in rejections: use the paths exactly as a user would type them.
    return root, [str(folder) + "/", str(tail)], Config.load(config_path)


@pytest.fixture(scope="module")
def runner_lake(feed: tuple[Path, list[str], Config]) -> Path:
    from sessionflow.runtimes.local.runner import run

    root, inputs, config = feed
    lake = root / "runner-lake"
    run(inputs, lake, config, now_ms=NOW_MS)
    return lake


@pytest.fixture(scope="module")
def spark_lake(spark: Any, feed: tuple[Path, list[str], Config]) -> tuple[Path, Any]:
    from sessionflow.runtimes.backfill.job import backfill

    root, inputs, config = feed
    lake = root / "spark-lake"
    report = backfill(spark, inputs, str(lake), config, now_ms=NOW_MS)
    return lake, report


def _rows(lake: Path, table: str, key: tuple[str, ...]) -> list[dict[str, Any]]:
    data = ds.dataset(lake / table, format="parquet", partitioning="hive").to_table()
    rows = data.to_pylist()
    for row in rows:
        if "event_type_counts" in row:
            row["event_type_counts"] = dict(row["event_type_counts"])
    return sorted(rows, key=lambda r: tuple(r[k] for k in key))


def _rejections(lake: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((lake / "rejected").glob("reason=*/*.jsonl")):
        for line in path.read_bytes().splitlines():
            row = orjson.loads(line)
            assert path.parent.name == f"reason={row['reason']}"
            rows.append(row)
    return sorted(rows, key=lambda r: (r["source"], r["line"]))


def _file_schema(lake: Path, table: str) -> list[tuple[str, str]]:
    first = next((lake / table).glob("*/*.parquet"))
    return [(f.name, str(f.type)) for f in pq.read_schema(first)]


def test_spark_lake_equals_the_embedded_runners(
    runner_lake: Path, spark_lake: tuple[Path, Any], feed: tuple[Path, list[str], Config]
) -> None:
    lake, report = spark_lake
    events = _rows(lake, "events", ("machine_id", "event_id"))
    expected_events = _rows(runner_lake, "events", ("machine_id", "event_id"))
    sessions = _rows(lake, "sessions", ("session_id",))
    expected_sessions = _rows(runner_lake, "sessions", ("session_id",))
    rejections = _rejections(lake)
    expected_rejections = _rejections(runner_lake)

    # The input is what it should be: dirty, multi-day, with sessions crossing midnight.
    assert len(expected_events) > 9_000
    assert not any(e["late"] for e in expected_events)
    assert len({e["event_date"] for e in expected_events}) >= 4
    start_day = {s["session_id"]: s["session_date"] for s in expected_sessions}
    assert any(start_day[e["session_id"]] != e["event_date"] for e in expected_events), "no session crosses midnight"
    # The bot never pauses: max_session_duration cuts its sessions.
    durations = [s["duration_ms"] for s in expected_sessions]
    assert max(durations) <= 3 * 3_600_000 and sum(d > 2.5 * 3_600_000 for d in durations) >= 5
    reasons = Counter(r["reason"] for r in expected_rejections)
    assert {"invalid_utf8", "malformed_json", "missing_field", "timestamp_out_of_range"} <= set(reasons)
    assert reasons["conflicting_duplicate"] == 2
    assert report.duplicates > 50
    # Counted where the copies are dropped, and by the embedded runner on its own: the same number.
    (runner_ledger,) = [orjson.loads(p.read_bytes()) for p in (runner_lake / "_sessionflow" / "ledger").glob("*.json")]
    assert report.duplicates == runner_ledger["tally"]["duplicates"]
    assert report.blank >= 2
    assert report.splits > report.files, "each folder file should be read in several splits"

    # Same files' shape, and the same rows.
    assert not [p for p in lake.rglob(".*") if p.is_file()], "hidden files (Hadoop .crc) in the lake"
    assert _file_schema(lake, "events") == _file_schema(runner_lake, "events")
    assert _file_schema(lake, "sessions") == _file_schema(runner_lake, "sessions")
    assert len(events) == len(expected_events)
    assert events == expected_events
    assert sessions == expected_sessions
    assert rejections == expected_rejections
    assert report.events == len(events)
    assert report.sessions == len(sessions)
    assert report.rejected == dict(reasons)

    # Provenance: sources are the names the runner uses, raw bytes survive, even when not UTF-8.
    sources = {r["source"] for r in rejections}
    assert any(s.endswith("tail.jsonl.gz") for s in sources)
    assert any("/2026/10/a.jsonl" in s for s in sources)
    assert any(s.endswith("/2026/11 %20[x].jsonl") for s in sources)
    hand = [r for r in rejections if b'"\xc3\x28"' in base64.b64decode(r["raw_base64"])]
    assert len(hand) == 1 and hand[0]["reason"] == "invalid_utf8" and hand[0]["raw"] is None
    # A conflicting copy's bytes are its line's, found again by its arrival key (whatever split it was in).
    conflicts = [r for r in rejections if r["reason"] == "conflicting_duplicate"]
    assert {r["source"].endswith("tail.jsonl.gz") for r in conflicts} == {True, False}
    for row in conflicts:
        path = Path(row["source"])
        text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert base64.b64decode(row["raw_base64"]) == text.split(b"\n")[row["line"] - 1]
    bom = [r for r in rejections if base64.b64decode(r["raw_base64"]).startswith(b"\xef\xbb\xbf  {")]
    assert len(bom) == 1 and base64.b64decode(bom[0]["raw_base64"]).endswith(b"}  ")


def test_sessionflow_verify_passes_on_a_backfill_lake_and_catches_a_deleted_or_doubled_file(
    spark_lake: tuple[Path, Any], tmp_path: Path
) -> None:
    from sessionflow.lake.verify import verify_lake

    lake, report = spark_lake
    verdict = verify_lake(lake)
    assert verdict.ok, verdict.render()
    tables = [p for p in lake.rglob("*") if p.is_file() and "_sessionflow" not in p.parts]
    assert (verdict.runs, verdict.files, verdict.records) == (1, len(tables), report.records)
    (ledger,) = (lake / "_sessionflow" / "ledger").glob("run-*.json")
    assert orjson.loads(ledger.read_bytes())["written_by"] == "backfill"

    deleted = tmp_path / "deleted"
    shutil.copytree(lake, deleted)
    next((deleted / "events").rglob("*.parquet")).unlink()
    render = verify_lake(deleted).render()
    assert "but missing" in render and "its events files hold" in render

    doubled = tmp_path / "doubled"
    shutil.copytree(lake, doubled)
    one = next((doubled / "rejected").rglob("*.jsonl"))
    shutil.copy(one, one.with_name("copy-" + one.name))
    verdict = verify_lake(doubled)
    assert not verdict.ok and "no ledger lists it" in verdict.render()


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_one_day_backfill_rebuilds_that_day_as_a_full_run_has_it(
    runner_lake: Path, feed: tuple[Path, list[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    from sessionflow.cli import main
    from sessionflow.lake.verify import verify_lake

    root, inputs, _ = feed
    lake = root / "range-lake"
    shutil.copytree(runner_lake, lake)
    assert verify_lake(lake).ok
    day_dir = lake / "events" / f"event_date={MIDDLE_DAY}"
    # A stale file from an older run of that day: the day must be replaced, not added to.
    other_day = next(p for p in (lake / "events").glob("event_date=*/*.parquet") if MIDDLE_DAY not in str(p))
    shutil.copy(other_day, day_dir / "part-stale.parquet")
    assert not verify_lake(lake).ok
    before = _digest(lake)
    replaced_files = sorted(
        p.relative_to(lake).as_posix()
        for table in ("events", "sessions")
        for p in (lake / table).glob(f"*={MIDDLE_DAY}/*.parquet")
        if p.name != "part-stale.parquet"
    )

    code = main(
        [
            "backfill",
            *inputs,
            "--out",
            str(lake),
            "--config",
            str(root / "sessionflow.toml"),
            "--from",
            MIDDLE_DAY,
            "--to",
            MIDDLE_DAY,
            "--now",
            NOW,
            "--json",
        ]
    )
    assert code == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["mode"] == "range"
    assert report["partitions"] == {"events": [MIDDLE_DAY], "sessions": [MIDDLE_DAY]}
    # The bot's session chain reaches back past the margin: it was settled over its whole history.
    assert report["rerun_machines"] >= 1
    after = _digest(lake)

    def day(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
        return [r for r in rows if str(r[column]) == MIDDLE_DAY]

    full_events = day(_rows(runner_lake, "events", ("machine_id", "event_id")), "event_date")
    full_sessions = day(_rows(runner_lake, "sessions", ("session_id",)), "session_date")
    assert full_events and full_sessions
    assert day(_rows(lake, "events", ("machine_id", "event_id")), "event_date") == full_events
    assert day(_rows(lake, "sessions", ("session_id",)), "session_date") == full_sessions
    # Every other day, and the rejections, are the files they were; the ledgers gained the range's run.
    untouched = {k: v for k, v in before.items() if MIDDLE_DAY not in k}
    new_ledger = "_sessionflow/ledger/run-00002.json"
    assert {k: v for k, v in after.items() if MIDDLE_DAY not in k and k != new_ledger} == untouched
    # The ledgers describe the lake as it is now: sessionflow verify passes, run 2 names what it replaced.
    verdict = verify_lake(lake)
    assert verdict.ok, verdict.render()
    assert verdict.runs == 2 and report["run"] == 2
    ledger = orjson.loads((lake / "_sessionflow" / "ledger" / "run-00002.json").read_bytes())
    assert [r["files"] for r in ledger["removed"]] == [replaced_files]
    # The same input again: the day is recomputed from it (its tally), nothing is carried from the
    # removed files, which held the same rows; nothing was restated.
    assert ledger["carried"] == {"events": 0, "sessions": 0}
    assert ledger["tally"]["events"] == len(full_events) and ledger["tally"]["sessions"] == len(full_sessions)
    assert [(r["events"], r["sessions"]) for r in ledger["removed"]] == [(len(full_events), len(full_sessions))]
    assert ledger["restatements"] == 0 and not (lake / "restatements").exists()
    assert not (day_dir / "part-stale.parquet").exists()
    assert not (lake / "_sessionflow" / "staging").exists() or not any((lake / "_sessionflow" / "staging").iterdir())


def test_the_report_of_a_backfill_lake_is_the_runners(
    spark_lake: tuple[Path, Any], runner_lake: Path, tmp_path: Path
) -> None:
    """``sessionflow report`` reads a Spark lake as it reads the runner's: the same figures, number
    for number (but the per-run figure: each runtime's ledger counts its own way)."""
    from sessionflow.report import figures
    from sessionflow.report.commands import write_report
    from sessionflow.report.lake_db import open_lake

    def built(lake: Path) -> figures.Report:
        db, _ = open_lake(lake)
        figures.select_days(db, None, None)
        return figures.build(db, str(lake))

    spark, runner = built(spark_lake[0]), built(runner_lake)
    assert [f.key for f in spark.figures] == [f.key for f in runner.figures]
    for ours, theirs in zip(spark.figures, runner.figures, strict=True):
        if ours.key != "runs":
            assert ours.rows == theirs.rows, ours.key
    assert [row for row in spark.headline if row[0] != "duplicates"] == [
        row for row in runner.headline if row[0] != "duplicates"
    ]
    page = write_report(spark_lake[0], tmp_path / "report.html").path.read_text(encoding="utf-8")
    assert page.count('<svg class="chart"') >= 6
