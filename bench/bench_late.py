"""Late and out-of-order input: incremental runs that restate sessions, and order-free one-shot runs.

    python bench/bench_late.py [--events 1000000] [--machines 10000] [--seed 1] [--late-share 0.01]
                               [--parts 3] [--json results.json]

From the generated feed (cached as bench_run.py caches it) this builds a copy where a share of the
valid lines is moved 10 min to 12 h of event time later in the file, and splits it in ``--parts``
parts. It times an incremental ``sessionflow run PART --state S`` run per part and a ``--flush`` run
on an empty folder, then one-shot runs over the in-order feed, the late feed, its lines shuffled,
and its parts given in reverse order. It checks that the incremental, shuffled and reversed lakes equal the
one-shot lake of the late feed (DuckDB over the Parquet files) and that ``sessionflow verify`` passes.

Exit status: 1 when a run failed or a check failed, else 0.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import (  # the harness next to this file
    ROOT,
    BenchError,
    Sample,
    feed_arguments,
    measure,
    prepare_config,
    prepare_input,
    sessionflow_command,
    warm_page_cache,
)

TABLES = ("events", "sessions", "rejected", "restatements")
MIN_DELAY_MS = 10 * 60 * 1000
MAX_DELAY_MS = 12 * 3600 * 1000
PARTS = 3  # by default
# The validation range of the example config: [2000-01-01, now + 1 day].
VALID_FROM_MS = 946_684_800_000
VALID_UNTIL_MS = int(time.time() * 1000) + 86_400_000
EVENT_COLUMNS = "event_id, machine_id, session_id, session_seq, ms_since_prev, late"
# What depends on the order lines arrived in: the incremental lake (its parts in the feed's order) is
# held to it too; the shuffled and reversed ones are not.
ARRIVAL_COLUMNS = {"events": "arrived_late", "sessions": "late_placed"}
# The per-type counts as one sorted text: two equal maps may list their keys in another order.
SESSION_COLUMNS = (
    "session_id, machine_id, user_id, start_ts, end_ts, session_start, session_end, duration_ms, event_count, "
    "first_event_type, last_event_type, app_version, os, session_number, documents, close_reason, session_date, "
    "array_to_string(list_sort(list_transform(map_entries(event_type_counts), "
    "lambda e: e.key || '=' || CAST(e.value AS VARCHAR))), ',')"
)


def _log(message: str) -> None:
    print(message, flush=True)


# -- the late feed ----------------------------------------------------------------------------------


def _event_ms(line: bytes) -> int | None:
    """The event time (epoch ms) of a line the runner would keep, else None: only those lines move."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if not all(isinstance(record.get(key), str) and record[key] for key in ("event_id", "machine_id", "event_type")):
        return None
    stamp = record.get("timestamp")
    if isinstance(stamp, str):  # ISO-8601 with a timezone: the cleaning turns it into epoch ms
        try:
            moment = datetime.fromisoformat(stamp)
        except ValueError:
            return None
        stamp = round(moment.timestamp() * 1000) if moment.tzinfo is not None else None
    elif isinstance(stamp, int) and str(record.get("app_version", "")).startswith("11.2."):
        stamp *= 1000  # the example config's rule: build 11.2.* sent seconds
    if not isinstance(stamp, int) or isinstance(stamp, bool) or not VALID_FROM_MS <= stamp <= VALID_UNTIL_MS:
        return None
    return stamp


def make_late(lines: list[bytes], share: float, seed: int) -> tuple[list[bytes], int]:
    """Move ``share`` of the valid lines to where the file's event time is 10 min to 12 h past theirs."""
    stamps = [_event_ms(line) for line in lines]
    valid = [index for index, stamp in enumerate(stamps) if stamp is not None]
    # Where the file has got to in event time at each line: the newest timestamp so far.
    reached = list(itertools.accumulate((stamp or 0 for stamp in stamps), max))
    rng = random.Random(seed)
    moved = sorted(rng.sample(valid, round(len(valid) * share)))
    inserted: dict[int, list[bytes]] = {}
    for index in moved:
        stamp = stamps[index]
        assert stamp is not None
        target = bisect.bisect_left(reached, stamp + rng.randint(MIN_DELAY_MS, MAX_DELAY_MS))
        inserted.setdefault(max(target, index + 1), []).append(lines[index])
    skipped = set(moved)
    late: list[bytes] = []
    for index, line in enumerate(lines):
        late.extend(inserted.pop(index, ()))
        if index not in skipped:
            late.append(line)
    for rest in inserted.values():  # past the end of the feed
        late.extend(rest)
    return late, len(moved)


def _write(path: Path, lines: list[bytes]) -> None:
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as handle:
        handle.writelines(lines)
    partial.rename(path)


def prepare_feeds(source: Path, share: float, seed: int, parts: int = PARTS) -> dict[str, Any]:
    """The late feed, its shuffle and its parts, cached next to the input."""
    folder = source.parent / (f"late-{source.stem}-p{share:g}-s{seed}" + ("" if parts == PARTS else f"-n{parts}"))
    reverse = folder / "reversed"
    feeds: dict[str, Any] = {
        "late": folder / "late.jsonl",
        "shuffled": folder / "shuffled.jsonl",
        "parts": [folder / f"part-{number}.jsonl" for number in range(1, parts + 1)],
        "reversed": reverse,
        "empty": folder / "empty",
        "info": folder / "info.json",
    }
    if feeds["info"].exists():
        _log(f"late feed: {folder} (cached)")
        feeds["moved"] = json.loads(feeds["info"].read_text())["moved"]
        return feeds
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with open(source, "rb") as handle:
        lines = [line if line.endswith(b"\n") else line + b"\n" for line in handle]
    late, moved = make_late(lines, share, seed)
    del lines
    _write(feeds["late"], late)
    size = -(-len(late) // parts)
    for number, path in enumerate(feeds["parts"]):
        _write(path, late[number * size : (number + 1) * size])
    # Names that sort in reverse time order: a folder of them is read from the last part on.
    reverse.mkdir()
    for letter, path in enumerate(reversed(feeds["parts"])):
        os.link(path, reverse / f"{chr(ord('a') + letter)}.jsonl")
    random.Random(seed + 1).shuffle(late)
    _write(feeds["shuffled"], late)
    feeds["empty"].mkdir()
    feeds["info"].write_text(json.dumps({"moved": moved, "lines": len(late)}))
    feeds["moved"] = moved
    _log(f"late feed: {moved:,} of {len(late):,} lines moved 10 min to 12 h later -> {folder}")
    return feeds


# -- the runs -----------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def run_once(name: str, inputs: list[Path], lake: Path, config: Path, workdir: Path, *extra: str) -> dict[str, Any]:
    command = sessionflow_command("run", *map(str, inputs), "--out", str(lake), "--config", str(config), "--json")
    sample: Sample = measure([*command, *extra], workdir / "logs" / f"late-{name}.log")
    summary = json.loads(sample.stdout)
    ledger = json.loads((lake / "_sessionflow" / "ledger" / f"run-{summary['run']:05d}.json").read_text())
    restated = ledger.get("restated") or {}
    carried = ledger.get("carried") or {}
    return {
        "name": name,
        "seconds": sample.seconds,
        "cpu_seconds": sample.cpu_seconds,
        "peak_rss_mb": sample.peak_rss_mb,
        "events": summary["tally"]["events"],
        "duplicates": summary["tally"]["duplicates"],
        "late": summary["tally"]["late"],
        "sessions": summary["tally"]["sessions"],
        "restated_sessions": restated.get("sessions", 0),
        "restated_events": restated.get("events", 0),
        "carried_events": carried.get("events", 0),
        "carried_sessions": carried.get("sessions", 0),
        "removed_files": sum(len(entry["files"]) for entry in ledger.get("removed") or []),
        "restatements": ledger.get("restatements") or 0,
        "dedupe_memory_bytes": summary.get("dedupe_memory_bytes"),
        "lake_bytes": _size(lake),
        # The tables alone (the lake less its _sessionflow folder: ledgers, the event-id index).
        "tables_bytes": sum(_size(lake / table) for table in TABLES if (lake / table).exists()),
        "files": sum(1 for table in ("events", "sessions") for _ in (lake / table).glob("*/*.parquet")),
    }


def incremental(feeds: dict[str, Any], config: Path, workdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    lake, state = workdir / "lake-late-incremental", workdir / "late-incremental.state"
    shutil.rmtree(lake, ignore_errors=True)
    state.unlink(missing_ok=True)
    runs = []
    steps = [([part], ()) for part in feeds["parts"]] + [([feeds["empty"]], ("--flush", "--allow-empty"))]
    for number, (inputs, extra) in enumerate(steps, start=1):
        name = f"part {number}" if number <= len(feeds["parts"]) else "--flush"
        result = run_once(f"incremental-{number}", inputs, lake, config, workdir, "--state", str(state), *extra)
        result["name"] = name
        result["state_bytes"] = _size(state) if state.exists() else 0
        runs.append(result)
        _log(
            f"  {name:<8} {result['seconds']:6.2f} s {result['cpu_seconds']:6.2f} CPU s {result['peak_rss_mb']:5.0f} MB"
            f"  {result['events']:>8,} events  restated {result['restated_sessions']:,} sessions /"
            f" {result['restated_events']:,} events  carried {result['carried_events']:,} events /"
            f" {result['carried_sessions']:,} sessions  dedupe {result['dedupe_memory_bytes'] or 0:,} B"
            f"  state {result['state_bytes']:,} B  lake {result['lake_bytes'] / 1e6:.1f} MB"
            f" (tables {result['tables_bytes'] / 1e6:.1f} MB, {result['files']:,} Parquet files)"
        )
    return lake, runs


def one_shots(feeds: dict[str, Any], source: Path, config: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    shots = {
        "in-order": [source],
        "late": [feeds["late"]],
        "shuffled": [feeds["shuffled"]],
        "reversed files": [feeds["reversed"]],
    }
    results = {}
    for name, inputs in shots.items():
        lake = workdir / f"lake-late-{name.replace(' ', '-')}"
        result = run_once(name.replace(" ", "-"), inputs, lake, config, workdir, "--overwrite")
        result["lake"] = lake
        results[name] = result
        _log(
            f"  one-shot {name:<15} {result['seconds']:6.2f} s {result['cpu_seconds']:6.2f} CPU s"
            f" {result['peak_rss_mb']:5.0f} MB  {result['events']:,} events, {result['sessions']:,} sessions"
        )
    return results


# -- the checks ---------------------------------------------------------------------------------------------


def lake_difference(con: Any, left: Path, right: Path, arrival: bool = False) -> tuple[int, int]:
    """Rows in one lake and not in the other (both ways, as multisets): events, sessions
    (``arrival``: the columns of ``ARRIVAL_COLUMNS`` too)."""

    def glob(lake: Path, table: str) -> str:
        return str(lake / table / "*" / "*.parquet").replace("'", "''")

    counts = []
    for table, columns in (("events", EVENT_COLUMNS), ("sessions", SESSION_COLUMNS)):
        if arrival:
            columns = f"{columns}, {ARRIVAL_COLUMNS[table]}"
        a = f"SELECT {columns} FROM read_parquet('{glob(left, table)}')"
        b = f"SELECT {columns} FROM read_parquet('{glob(right, table)}')"
        row = con.execute(
            f"SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b})) + (SELECT count(*) FROM ({b} EXCEPT ALL {a}))"
        ).fetchone()
        counts.append(int(row[0]))
    return counts[0], counts[1]


def _check(passed: bool, text: str) -> dict[str, Any]:
    _log(f"{'PASS' if passed else 'FAIL'}  {text}")
    return {"passed": passed, "check": text}


def verify(lake: Path) -> bool:
    completed = subprocess.run(
        sessionflow_command("verify", str(lake)), cwd=ROOT, capture_output=True, check=False, text=True
    )
    if completed.returncode != 0:
        _log((completed.stdout + completed.stderr)[-2000:])
    return completed.returncode == 0


def check_lakes(reference: Path, others: dict[str, Path]) -> list[dict[str, Any]]:
    import duckdb

    con = duckdb.connect()
    checks = []
    for name, lake in others.items():
        events, sessions = lake_difference(con, reference, lake, arrival=name == "incremental")
        checks.append(
            _check(
                events == 0 and sessions == 0,
                f"{name} lake equals the one-shot lake of the late feed "
                f"({events:,} event rows and {sessions:,} session rows differ)",
            )
        )
    for name, lake in {"one-shot late": reference, **others}.items():
        checks.append(_check(verify(lake), f"sessionflow verify passes on the {name} lake"))
    return checks


# -- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feed_arguments(parser)
    parser.add_argument("--late-share", type=float, default=0.01, help="share of valid lines moved (default 0.01)")
    parser.add_argument(
        "--parts", type=int, default=PARTS, help=f"incremental runs over the late feed (default {PARTS})"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    _log(f"sessionflow late bench: {os.cpu_count()} CPUs, load {load_before:.2f}")
    try:
        source = prepare_input(workdir, args.events, args.machines, args.seed)
        config = prepare_config(workdir)
        feeds = prepare_feeds(source, args.late_share, args.seed, args.parts)
        for path in (source, feeds["late"], feeds["shuffled"], *feeds["parts"]):
            warm_page_cache(path)
        _log(f"incremental: {args.parts} parts of the late feed with --state, then --flush on an empty folder")
        lake, runs = incremental(feeds, config, workdir)
        shots = one_shots(feeds, source, config, workdir)
    except (BenchError, json.JSONDecodeError, OSError) as exc:
        _log(f"error: {exc}")
        return 1
    total = sum(run["seconds"] for run in runs)
    total_cpu = sum(run["cpu_seconds"] for run in runs)
    in_order = shots["in-order"]["seconds"]
    _log(
        f"\nincremental total {total:.2f} s ({total_cpu:.2f} CPU s), peak {max(r['peak_rss_mb'] for r in runs):.0f} MB;"
        f" state {runs[-1]['state_bytes']:,} B; lake {runs[-1]['lake_bytes'] / 1e6:.1f} MB"
        f" ({shots['late']['lake_bytes'] / 1e6:.1f} MB one-shot)"
    )
    for name in ("late", "shuffled", "reversed files"):
        _log(f"one-shot {name} / in-order one-shot time: {shots[name]['seconds'] / in_order:.2f}")
    _log(f"incremental total / in-order one-shot time: {total / in_order:.2f}")
    checks = check_lakes(
        shots["late"]["lake"],
        {
            "incremental": lake,
            "shuffled": shots["shuffled"]["lake"],
            "reversed-files": shots["reversed files"]["lake"],
            "in-order": shots["in-order"]["lake"],
        },
    )
    load_after = os.getloadavg()[0]
    _log(f"load average: {load_before:.2f} before, {load_after:.2f} after")
    if args.json:
        payload = {
            "events": args.events,
            "machines": args.machines,
            "seed": args.seed,
            "late_share": args.late_share,
            "moved": feeds["moved"],
            "load_average": [load_before, load_after],
            "incremental": runs,
            "one_shot": {name: {k: v for k, v in shot.items() if k != "lake"} for name, shot in shots.items()},
            "checks": checks,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        _log(f"wrote {args.json}")
    return 0 if all(check["passed"] for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
