"""A range backfill that changes sessions of the days it replaces writes their restatement log.

The lake is the embedded runner's over a feed missing a few events of one day, chosen so that
putting them back merges two sessions, gives one an earlier first event and extends another; the
range backfill over the whole feed must log exactly those, and leave a lake verify passes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.synthetic import FeedShape, generate

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]

pytest.importorskip("pyspark", reason="the Spark tests need pip install 'sessionflow[spark]'")
ds = pytest.importorskip("pyarrow.dataset")

NOW = "2026-11-01T00:00:00+00:00"
NOW_MS = 1_793_491_200_000
DAY = "2026-10-07"
TIMEOUT = 30 * 60_000


def _events(lake: Path) -> list[dict[str, Any]]:
    table = ds.dataset(lake / "events", format="parquet", partitioning="hive").to_table()
    return table.to_pylist()


def _sessions(lake: Path) -> list[dict[str, Any]]:
    rows = ds.dataset(lake / "sessions", format="parquet", partitioning="hive").to_table().to_pylist()
    for row in rows:
        row["event_type_counts"] = dict(row["event_type_counts"])
    return rows


def _pick(full: Path) -> dict[str, Any]:
    """Three sessions of one day on three machines (not the bot): one to cut, one to behead, one to trim."""
    by_session: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in _events(full):
        by_session[event["session_id"]].append(event)
    sessions = sorted(_sessions(full), key=lambda s: (s["machine_id"], s["start_ts"]))
    previous_end = {}
    last_of_machine: dict[str, int] = {}
    for s in sessions:
        previous_end[s["session_id"]] = last_of_machine.get(s["machine_id"])
        last_of_machine[s["machine_id"]] = s["end_ts"]
    candidates = [
        s
        for s in sessions
        if str(s["session_date"]) == DAY
        and s["end_ts"] - s["start_ts"] < 2 * 3_600_000
        and s["session_start"].date() == s["session_end"].date()
        and s["event_count"] >= 4
    ]
    chosen: dict[str, Any] = {}
    used: set[str] = set()
    for s in candidates:
        events = sorted(by_session[s["session_id"]], key=lambda e: (e["timestamp"], e["event_id"]))
        times = [e["timestamp"] for e in events]
        if s["machine_id"] in used:
            continue
        if "merge" not in chosen:
            # Drop events 1..j so that the gap from the first to event j+1 is over the timeout.
            cut = next((j for j in range(1, len(times) - 1) if times[j + 1] - times[0] > TIMEOUT + 60_000), None)
            if cut is not None:
                chosen["merge"] = (s, events, cut)
                used.add(s["machine_id"])
                continue
        if "first" not in chosen:
            before = previous_end[s["session_id"]]
            if before is None or times[1] - before > TIMEOUT + 60_000:
                chosen["first"] = (s, events)
                used.add(s["machine_id"])
                continue
        if "extend" not in chosen:
            chosen["extend"] = (s, events)
            used.add(s["machine_id"])
    assert set(chosen) == {"merge", "first", "extend"}, "the feed has no such sessions on that day"
    return chosen


def test_range_backfill_logs_the_sessions_it_restates(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sessionflow.cli import main
    from sessionflow.lake.verify import verify_lake
    from sessionflow.runtimes.local.runner import run

    config_path = tmp_path / "sessionflow.toml"
    config_path.write_text(EXAMPLE_CONFIG)
    config = Config.load(config_path)
    lines = list(generate(FeedShape(events=6_000, machines=30, seed=11, days=4)))
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    full = tmp_path / "full"
    run([str(feed)], full, config, now_ms=NOW_MS)
    chosen = _pick(full)
    merge, merge_events, cut = chosen["merge"]
    first, first_events = chosen["first"]
    extend, extend_events = chosen["extend"]
    dropped = {(e["machine_id"], e["event_id"]) for e in merge_events[1 : cut + 1]}
    dropped |= {(first_events[0]["machine_id"], first_events[0]["event_id"])}
    dropped |= {(extend_events[-1]["machine_id"], extend_events[-1]["event_id"])}

    def kept(line: bytes) -> bool:
        try:
            record = orjson.loads(line)
            return (record.get("machine_id"), record.get("event_id")) not in dropped
        except (orjson.JSONDecodeError, AttributeError):
            return True

    partial_feed = tmp_path / "partial.jsonl"
    partial_feed.write_bytes(b"\n".join(line for line in lines if kept(line)) + b"\n")
    lake = tmp_path / "lake"
    run([str(partial_feed)], lake, config, now_ms=NOW_MS)
    before = {(e["machine_id"], e["event_id"]): e["session_id"] for e in _events(lake)}
    cut_id = before[merge_events[0]["machine_id"], merge_events[cut + 1]["event_id"]]
    beheaded_id = before[first_events[0]["machine_id"], first_events[1]["event_id"]]
    assert cut_id != merge["session_id"] and beheaded_id != first["session_id"]

    args = ["backfill", str(feed), "--out", str(lake), "-c", str(config_path), "--now", NOW, "--json"]
    assert main([*args, "--from", DAY, "--to", DAY]) == 0
    report = orjson.loads(capsys.readouterr().out)
    run_number = report["run"]
    assert run_number == 2

    log_path = lake / "restatements" / "part-00002-00000.parquet"
    log = ds.dataset(log_path, format="parquet").to_table().to_pylist()
    assert sorted((r["machine_id"], r["old_session_id"], r["new_session_id"], r["reason"]) for r in log) == sorted(
        [
            (merge["machine_id"], merge["session_id"], merge["session_id"], "merged"),
            (merge["machine_id"], cut_id, merge["session_id"], "merged"),
            (first["machine_id"], beheaded_id, first["session_id"], "new_first_event"),
            (extend["machine_id"], extend["session_id"], extend["session_id"], "updated"),
        ]
    )
    assert {r["run"] for r in log} == {2}

    ledger = orjson.loads((lake / "_sessionflow" / "ledger" / "run-00002.json").read_bytes())
    assert "restatements/part-00002-00000.parquet" in ledger["files"]
    assert ledger["restatements"] == 4
    # Old events placed elsewhere: the cut session's second part, and the beheaded session.
    assert ledger["restated"] == {"sessions": 4, "events": (len(merge_events) - cut - 1) + (len(first_events) - 1)}
    # The day is recomputed from the input: its tally is every event of the day, nothing is carried,
    # and the removed files held the day less the events the partial feed lacked.
    full_day = [e for e in _events(full) if str(e["event_date"]) == DAY]
    assert ledger["tally"]["events"] == len(full_day)
    assert ledger["carried"] == {"events": 0, "sessions": 0}
    assert sum(r["events"] for r in ledger["removed"]) == len(full_day) - len(dropped)

    # The day is the full feed's, and the lake adds up.
    def day(rows: list[dict[str, Any]], column: str, key: str) -> list[dict[str, Any]]:
        return sorted((r for r in rows if str(r[column]) == DAY), key=lambda r: (r["machine_id"], r[key]))

    assert day(_events(lake), "event_date", "event_id") == day(_events(full), "event_date", "event_id")
    assert day(_sessions(lake), "session_date", "session_id") == day(_sessions(full), "session_date", "session_id")
    verdict = verify_lake(lake)
    assert verdict.ok, verdict.render()

    # The same days again: nothing changes, so nothing is logged, and the run is all duplicates.
    assert main([*args, "--from", DAY, "--to", DAY]) == 0
    capsys.readouterr()
    again = orjson.loads((lake / "_sessionflow" / "ledger" / "run-00003.json").read_bytes())
    assert again["restatements"] == 0 and not (lake / "restatements" / "part-00003-00000.parquet").exists()
    # Its tally is the first range run's: the same input gives the same day.
    assert again["tally"]["events"] == len(full_day) and again["carried"] == {"events": 0, "sessions": 0}
    assert {k: again["tally"][k] for k in ("records", "duplicates")} == {
        k: ledger["tally"][k] for k in ("records", "duplicates")
    }
    assert [r["events"] for r in again["removed"]] == [len(full_day)]
    verdict = verify_lake(lake)
    assert verdict.ok, verdict.render()
