"""``sessionflow backfill --archive``: the AWS runtime's raw archive is an input the backfill reads,
and what it rebuilds from it is the embedded runner's lake of the same records; a scheduled range
(``--last-days``) reads only the arrival hours that can hold its days."""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.synthetic import FeedShape, generate

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]

pytest.importorskip("pyspark", reason="the Spark tests need pip install 'sessionflow[spark]'")
ds = pytest.importorskip("pyarrow.dataset")

NOW = "2026-10-07T12:00:00+00:00"  # the feed covers 2026-10-05 and 2026-10-06
NOW_MS = int(datetime.fromisoformat(NOW).timestamp() * 1000)
DIRTY = [b"\xff\xfe not utf-8", b'{"event_id": "d1", "machine_id": ', b"[1, 2]"]


def _archive(root: Path, lines: list[bytes]) -> Path:
    """What the archive Firehose writes for these records put on ``raw``: the record transformation
    of each, in gzip objects by arrival hour, two shards (by partition key) interleaved."""
    from sessionflow.runtimes.aws.archive import transform

    folder = root / "archive" / "raw"
    arrival = 0
    by_hour: dict[str, list[dict[str, Any]]] = {}
    for seq, line in enumerate(lines, start=1):
        try:
            stamp = orjson.loads(line).get("timestamp")
        except (orjson.JSONDecodeError, AttributeError):
            stamp = None
        if isinstance(stamp, int) and stamp < NOW_MS:  # (not a timestamp the feed made wrong)
            arrival = max(arrival, stamp + 1000)  # a record arrives after it happened
        key = hashlib.sha1(line).hexdigest()
        record = {
            "recordId": str(seq),
            "data": base64.b64encode(line).decode(),
            "kinesisRecordMetadata": {
                "shardId": f"shardId-00000000000{int(key, 16) % 2}",
                "partitionKey": key,
                "sequenceNumber": str(10**20 + seq),
                "approximateArrivalTimestamp": arrival,
            },
        }
        hour = datetime.fromtimestamp(arrival / 1000, UTC).strftime("%Y/%m/%d/%H")
        by_hour.setdefault(hour, []).append(record)
    for hour, records in by_hour.items():
        out = transform({"records": records})["records"]
        target = folder / hour / f"sessionflow-raw-archive-1-{hour.replace('/', '-')}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(b"".join(base64.b64decode(r["data"]) for r in out)))
    return folder


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[bytes], Config]:
    root = tmp_path_factory.mktemp("archive")
    lines = list(generate(FeedShape(events=3000, machines=20, seed=41, days=3.5)))
    for offset, line in enumerate(DIRTY):
        lines.insert(200 + 500 * offset, line)
    config_path = root / "sessionflow.toml"
    # A future skew of an hour (not a day): a one-day range then reads less than the whole archive.
    config_path.write_text(EXAMPLE_CONFIG + '\n[validation]\nmax_future_skew = "1h"\n')
    return root, _archive(root, lines), lines, Config.load(config_path)


def _rows(lake: Path, table: str) -> list[dict[str, Any]]:
    rows = ds.dataset(lake / table, format="parquet", partitioning="hive").to_table().to_pylist()
    for row in rows:
        if "event_type_counts" in row:
            row["event_type_counts"] = dict(row["event_type_counts"])
    return rows


def _runner_lake(root: Path, lines: list[bytes], config: Config) -> Path:
    from sessionflow.runtimes.local.runner import run

    feed = root / "feed.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    lake = root / "runner-lake"
    if not lake.exists():
        run([str(feed)], lake, config, now_ms=NOW_MS)
    return lake


def test_a_backfill_of_the_archive_is_the_runners_lake_of_its_records(
    spark: Any, archived: tuple[Path, Path, list[bytes], Config]
) -> None:
    from sessionflow.lake.verify import verify_lake
    from sessionflow.runtimes.backfill.job import backfill

    root, archive, lines, config = archived
    lake = root / "archive-lake"
    backfill(spark, [str(archive)], str(lake), config, now_ms=NOW_MS, archive=True)
    runner = _runner_lake(root, lines, config)
    key = ("machine_id", "event_id")
    assert sorted(_rows(lake, "events"), key=lambda r: tuple(r[k] for k in key)) == sorted(
        _rows(runner, "events"), key=lambda r: tuple(r[k] for k in key)
    )
    assert sorted(_rows(lake, "sessions"), key=lambda r: r["session_id"]) == sorted(
        _rows(runner, "sessions"), key=lambda r: r["session_id"]
    )

    def rejected(folder: Path) -> Counter[tuple[str, str]]:
        rows = [orjson.loads(x) for p in folder.glob("rejected/*/*.jsonl") for x in p.read_bytes().splitlines()]
        return Counter((r["reason"], r["raw_base64"]) for r in rows)

    assert rejected(lake) == rejected(runner)
    assert sum(rejected(lake).values()) >= len(DIRTY)
    assert all(
        ".gz" in r["source"]
        for r in (orjson.loads(x) for p in lake.glob("rejected/*/*.jsonl") for x in p.read_bytes().splitlines())
    )
    assert verify_lake(lake).ok


def test_the_scheduled_range_over_the_archive_rebuilds_the_last_days(
    spark: Any, archived: tuple[Path, Path, list[bytes], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    """What the Glue job runs every day: ``--archive --last-days N`` into the lake. It reads only
    the arrival hours from the range's first day less the margin, the future skew and an hour."""
    import shutil

    from sessionflow.cli import main
    from sessionflow.lake.verify import verify_lake

    root, archive, lines, config = archived
    runner = _runner_lake(root, lines, config)
    lake = root / "scheduled-lake"
    shutil.copytree(runner, lake)
    arguments = ["backfill", "--input", str(archive), "--archive", "true", "--last-days", "1"]
    arguments += ["--out", str(lake), "--config", str(root / "sessionflow.toml"), "--now", NOW, "--margin", "1h"]
    arguments += ["--json"]
    assert main(arguments) == 0
    report = orjson.loads(capsys.readouterr().out)
    days = ["2026-10-06"]
    assert report["mode"] == "range" and report["partitions"]["events"] == days
    hours = sorted({p.parent.relative_to(archive).as_posix() for p in archive.rglob("*.gz")})
    read = [h for h in hours if h >= "2026/10/05/21"]  # 10-06 less the margin, the skew and an hour
    assert report["files"] == len(read) < len(hours)
    for table, column in (("events", "event_date"), ("sessions", "session_date")):
        ours = [r for r in _rows(lake, table) if str(r[column]) in days]
        theirs = [r for r in _rows(runner, table) if str(r[column]) in days]
        assert ours and sorted(map(repr, ours)) == sorted(map(repr, theirs))
    assert verify_lake(lake).ok
