"""The benchmark's own correctness: baselines do sessionflow's work, and peak RSS is per process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import duckdb
import pytest

from sessionflow.cli import main as sessionflow_main
from sessionflow.synthetic import FeedShape, write_feed

BENCH = Path(__file__).resolve().parents[2] / "bench"
SESSION_KEY = "session_id, machine_id, start_ts, end_ts, event_count, first_event_type, last_event_type"


def _bench_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "bench_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dirty feed through sessionflow and both baselines."""
    root = tmp_path_factory.mktemp("bench")
    feed = root / "events.jsonl"
    write_feed(FeedShape(events=8_000, machines=80, seed=5), str(feed))
    config = root / "sessionflow.toml"
    assert sessionflow_main(["init", str(config)]) == 0
    assert sessionflow_main(["run", str(feed), "--out", str(root / "sessionflow"), "--config", str(config), "-q"]) == 0
    for engine in ("duckdb", "polars"):
        script = BENCH / "baselines" / f"{engine}_sessionize.py"
        done = subprocess.run(
            [sys.executable, str(script), str(feed), str(root / engine), "--config", str(config)],
            capture_output=True,
            check=True,
        )
        summary = json.loads(done.stdout.decode().strip().splitlines()[-1])
        assert summary["engine"] == engine
    return root


def _rows(lake: Path, table: str, columns: str = "*") -> set[tuple[object, ...]]:
    rows = duckdb.connect().execute(f"SELECT {columns} FROM read_parquet('{lake}/{table}/*/*.parquet')").fetchall()
    return set(rows)


def test_duckdb_baseline_writes_the_same_sessions_and_events(lakes: Path) -> None:
    # On this feed nothing is late, so the SQL version must agree with sessionflow session for session.
    assert _rows(lakes / "duckdb", "sessions", SESSION_KEY) == _rows(lakes / "sessionflow", "sessions", SESSION_KEY)
    event_key = "event_id, machine_id, event_type, timestamp, session_id, session_seq, ms_since_prev, event_hour, "
    event_key += "day_of_week, app_version_major, app_version_minor"
    assert _rows(lakes / "duckdb", "events", event_key) == _rows(lakes / "sessionflow", "events", event_key)


def test_polars_baseline_is_within_the_benchmark_tolerance(lakes: Path) -> None:
    ours = _rows(lakes / "sessionflow", "sessions", SESSION_KEY)
    theirs = _rows(lakes / "polars", "sessions", SESSION_KEY)
    # Polars casts a numeric event_id to text instead of rejecting it: a few events more, a few sessions split.
    assert abs(len(theirs) - len(ours)) <= 0.005 * len(ours)
    assert len(theirs & ours) >= 0.98 * len(theirs)
    events_ours = _rows(lakes / "sessionflow", "events", "event_id")
    events_theirs = _rows(lakes / "polars", "events", "event_id")
    assert events_ours <= events_theirs
    assert len(events_theirs) - len(events_ours) <= 0.005 * len(events_ours)


def test_measure_reports_the_peak_rss_of_the_child_alone(tmp_path: Path) -> None:
    bench_run = _bench_run()
    ballast = bytearray(300 << 20)  # the parent's memory must not show in a child's figure
    allocate = "import sys; block = bytearray(int(sys.argv[1]) << 20); block[::4096] = b'x' * len(block[::4096])"
    small = bench_run.measure([sys.executable, "-c", allocate, "10"], tmp_path / "small.log")
    large = bench_run.measure([sys.executable, "-c", allocate, "200"], tmp_path / "large.log")
    assert small.peak_rss_mb < 100
    assert 200 <= large.peak_rss_mb < 300
    assert large.seconds > 0 and large.cpu_seconds > 0
    del ballast


def test_measure_with_a_producer_measures_the_consumer(tmp_path: Path) -> None:
    bench_run = _bench_run()
    producer = [sys.executable, "-c", "import sys; sys.stdout.write('x\\n' * 100000)"]
    consumer = [sys.executable, "-c", "import sys; print(sum(1 for _ in sys.stdin))"]
    sample = bench_run.measure(consumer, tmp_path / "pipe.log", producer=producer)
    assert sample.stdout.strip() == "100000"


def test_a_failing_contender_is_an_error_not_a_result(tmp_path: Path) -> None:
    bench_run = _bench_run()
    with pytest.raises(bench_run.BenchError, match="exited 3"):
        bench_run.measure([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], tmp_path / "x")


@pytest.mark.slow
def test_bench_run_end_to_end(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_run.py"),
            "--events", "3000", "--machines", "40", "--repeat", "1",
            "--big-events", "6000", "--workdir", str(tmp_path / "work"), "--json", str(results),
        ],
        capture_output=True,
        check=False,
    )  # fmt: skip
    output = done.stdout.decode()
    assert done.returncode == 0, output + done.stderr.decode()
    assert "speed ratio vs DuckDB" in output
    payload = json.loads(results.read_text())
    assert set(payload["contenders"]) == {"sessionflow", "duckdb", "polars"}
    assert payload["contenders"]["duckdb"]["identical_sessions"] == 1.0
    assert {"3000", "6000"} == set(payload["stdin"])
    assert len(payload["checks"]) == 3


def test_measure_adds_up_the_memory_of_forked_workers(tmp_path: Path) -> None:
    bench_run = _bench_run()
    # Two workers that each touch 150 MB of their own and live long enough to be sampled.
    workers = (
        "import os, time\n"
        "pids = []\n"
        "for _ in range(2):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = bytearray(150 << 20); block[::4096] = b'x' * len(block[::4096])\n"
        "        time.sleep(1.0); os._exit(0)\n"
        "    pids.append(pid)\n"
        "for pid in pids: os.waitpid(pid, 0)\n"
    )
    sample = bench_run.measure([sys.executable, "-c", workers], tmp_path / "fork.log")
    assert sample.maxrss_mb < 250  # one process at a time never held both blocks
    assert sample.peak_rss_mb >= 300 and sample.processes >= 3


def test_bench_report_times_the_report_against_a_scan(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    options = ["--events", "3000", "--machines", "30", "--repeat", "1", "--workdir", str(tmp_path), "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_report.py"), *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    (events,) = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/report-lake-*/events/*/*.parquet')"
    ).fetchone() or (0,)
    assert results["events"] == events > 0
    assert results["charts"] >= 6 and results["report"]["seconds"] > 0 and results["ratio_report_to_scan"] > 0


def test_bench_refine_counts_what_the_core_refines(tmp_path: Path) -> None:
    """bench_refine.py refines the generated feed under a config; its counts are the core's own tally."""
    from sessionflow.config import EXAMPLE_CONFIG, Config
    from sessionflow.core import LineRefiner
    from sessionflow.synthetic import generate

    config = tmp_path / "sessionflow.toml"
    config.write_text(EXAMPLE_CONFIG)
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_refine.py"), "--events", "3000", "--repeat", "2", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [(line, "x", n) for n, line in enumerate(generate(FeedShape(3000)), 1)]
    import time

    refined = LineRefiner(Config.load(config)).refine_lines(lines, int(time.time() * 1000))
    want = f"3,000 lines ({len(refined.events):,} events, {sum(refined.rejected.values()):,} rejected): best CPU"
    assert done.stdout.startswith(want), done.stdout
