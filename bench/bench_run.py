"""`make bench`: sessionflow end to end against DuckDB and Polars baselines, on the same file, in one run.

    python bench/bench_run.py [--events 1000000] [--machines 10000] [--seed 1] [--repeat 2]
                              [--skip-10m] [--json results.json] [--all]

Every contender is its own process, so its peak RSS (``ru_maxrss`` from ``os.wait4`` on that
process alone, spawned by a tiny launcher) is its own; wall time is measured around the process,
interpreter start, imports and writing included.
Each contender runs ``--repeat`` times, interleaved; the table shows the best time and the highest
peak RSS of those runs. Then the two stdin runs (``sessionflow generate -n N | sessionflow run -``)
at N = --events and N = --big-events measure how memory grows with the input (only the ``run``
process is measured). See bench/README.md.

Exit status: 0 when everything ran, whatever the PASS/FAIL lines say (a FAIL is a finding);
1 when a contender or a hook failed to run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BASELINES = BENCH_DIR / "baselines"
HOOKS = ("bench_aws.py", "bench_backfill.py")  # written on other branches; run with --all when present

RSS_LIMIT_MB = 500.0
GROWTH_LIMIT = 1.5  # the big stdin run's peak RSS over the small one's
COUNT_TOLERANCE = 0.005  # baselines keep no rejections and have no late semantics: counts differ a little
SPEED_TARGET = 1.0


class BenchError(Exception):
    """A contender could not run: the benchmark has no result."""


@dataclass
class Sample:
    seconds: float
    peak_rss_mb: float  # the figure checked: max(maxrss_mb, tree_pss_mb)
    cpu_seconds: float  # user + system, the process and the children it waited for
    stdout: str
    maxrss_mb: float = 0.0  # exact peak RSS of the largest single process (wait4)
    tree_pss_mb: float = 0.0  # sampled peak of the summed PSS of the whole process tree
    tree_rss_mb: float = 0.0  # the same with RSS (counts shared pages once per process)
    processes: int = 1  # most processes seen at once


@dataclass
class Contender:
    name: str
    samples: list[Sample] = field(default_factory=list)
    events: int | None = None  # rows in its events table
    sessions: int | None = None  # rows in its sessions table
    identical_sessions: float | None = None  # share of its sessions found in sessionflow's, field for field

    @property
    def best_seconds(self) -> float:
        return min(sample.seconds for sample in self.samples)

    @property
    def peak_rss_mb(self) -> float:
        return max(sample.peak_rss_mb for sample in self.samples)

    @property
    def cpu_seconds(self) -> float:
        return min(sample.cpu_seconds for sample in self.samples)


def _log(message: str) -> None:
    print(message, flush=True)


# -- measuring one process -------------------------------------------------------------------------


# Linux keeps a process's peak RSS across exec, and a child spawned with vfork (what subprocess
# uses) or fork starts from its parent's address space: a child of this (large) process would
# report at least this process's peak. So each measured command is started by a tiny launcher,
# a fresh interpreter that only spawns it, waits for it with wait4 and writes its resource usage.
_LAUNCHER = """
import json, os, sys, time
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(command[0], command, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(report, "w") as handle:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime}, handle)
sys.exit(os.waitstatus_to_exitcode(status))
"""


class TreeSampler(threading.Thread):
    """Samples the memory of a process's descendants every ``interval`` s: peak of the sums.

    ``ru_maxrss`` is per process: for a contender that forks workers (wait4 folds its children in
    as a max, not a sum) it would show the largest process, not the footprint. PSS shares each
    page among the processes mapping it, so forked workers' copy-on-write pages count once.
    """

    def __init__(self, root_pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval = interval
        self.peak_pss_kib = 0
        self.peak_rss_kib = 0
        self.peak_processes = 0
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.wait(self.interval):
            pss = rss = 0
            pids = _descendants(self.root_pid)
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
                        for line in handle:
                            if line.startswith(b"Pss:"):
                                pss += int(line.split()[1])
                            elif line.startswith(b"Rss:"):
                                rss += int(line.split()[1])
                except OSError:
                    continue  # it ended between the listing and the read
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_processes = max(self.peak_processes, len(pids))

    def stop(self) -> None:
        self._finished.set()
        self.join()


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    children = [int(child) for child in handle.read().split()]
            except OSError:
                continue
            found.extend(children)
            stack.extend(children)
    return found


def measure(command: list[str], log_path: Path, producer: list[str] | None = None) -> Sample:
    """Run ``command`` (fed by ``producer``'s stdout when given) and measure it alone."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_suffix(".usage.json")
    usage_path.unlink(missing_ok=True)
    launched = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(usage_path), *command]
    with open(log_path, "wb") as log:
        feeder = None
        if producer is not None:
            feeder = subprocess.Popen(producer, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
        process = subprocess.Popen(
            launched,
            stdin=feeder.stdout if feeder else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
        )
        if feeder is not None and feeder.stdout is not None:
            feeder.stdout.close()  # the consumer holds the only read end: the producer sees EPIPE if it dies
        sampler = TreeSampler(process.pid) if Path("/proc/self/smaps_rollup").exists() else None
        if sampler is not None:
            sampler.start()
        try:
            stdout, _ = process.communicate()
        finally:
            if sampler is not None:
                sampler.stop()
        feeder_code = feeder.wait() if feeder is not None else 0
    if process.returncode != 0 or feeder_code != 0 or not usage_path.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        failed = " ".join(command if process.returncode != 0 else producer or command)
        raise BenchError(f"{failed} exited {process.returncode or feeder_code}; stderr ({log_path}):\n{tail}")
    usage = json.loads(usage_path.read_text())
    maxrss_mb = usage["maxrss_kib"] / 1024  # Linux reports KiB
    tree_pss_mb = sampler.peak_pss_kib / 1024 if sampler is not None else 0.0
    return Sample(
        seconds=usage["seconds"],
        peak_rss_mb=max(maxrss_mb, tree_pss_mb),
        cpu_seconds=usage["cpu"],
        stdout=stdout.decode(errors="replace"),
        maxrss_mb=maxrss_mb,
        tree_pss_mb=tree_pss_mb,
        tree_rss_mb=sampler.peak_rss_kib / 1024 if sampler is not None else 0.0,
        processes=sampler.peak_processes if sampler is not None else 1,
    )


# -- inputs --------------------------------------------------------------------------------------------


def sessionflow_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sessionflow", *args]


def generate_command(events: int, machines: int, seed: int, output: str = "-") -> list[str]:
    return sessionflow_command("generate", "-n", str(events), "-m", str(machines), "-s", str(seed), "-o", output)


def _generator_fingerprint() -> str:
    """The input cache is keyed by the generator's code too: a changed generator regenerates."""
    import sessionflow.synthetic

    return hashlib.sha256(Path(sessionflow.synthetic.__file__).read_bytes()).hexdigest()[:8]


def prepare_input(workdir: Path, events: int, machines: int, seed: int) -> Path:
    path = workdir / f"input-e{events}-m{machines}-s{seed}-g{_generator_fingerprint()}.jsonl"
    if path.exists():
        _log(f"input: {path} (cached)")
        return path
    partial = path.with_suffix(".partial")
    _log(f"input: generating {events:,} events over {machines:,} machines (seed {seed}) -> {path}")
    started = time.perf_counter()
    completed = subprocess.run(generate_command(events, machines, seed, str(partial)), cwd=ROOT, check=False)
    if completed.returncode != 0:
        raise BenchError(f"sessionflow generate exited {completed.returncode}")
    partial.rename(path)
    _log(f"input: generated in {time.perf_counter() - started:.1f} s")
    return path


def prepare_config(workdir: Path) -> Path:
    path = workdir / "sessionflow.toml"
    completed = subprocess.run(
        sessionflow_command("init", str(path), "--force"), cwd=ROOT, check=False, capture_output=True
    )
    if completed.returncode != 0:
        raise BenchError(f"sessionflow init exited {completed.returncode}: {completed.stderr.decode()}")
    return path


def warm_page_cache(path: Path) -> None:
    """Read the input once so the first contender does not pay for the disk alone."""
    with open(path, "rb") as handle:
        while handle.read(16 << 20):
            pass


# -- the contenders ----------------------------------------------------------------------------------


def contender_commands(config: Path) -> dict[str, Callable[[Path, Path], list[str]]]:
    return {
        "sessionflow": lambda source, out: sessionflow_command(
            "run", str(source), "--out", str(out), "--config", str(config), "--overwrite", "--json"
        ),
        "duckdb": lambda source, out: [
            sys.executable,
            str(BASELINES / "duckdb_sessionize.py"),
            str(source),
            str(out),
            "--config",
            str(config),
        ],
        "polars": lambda source, out: [
            sys.executable,
            str(BASELINES / "polars_sessionize.py"),
            str(source),
            str(out),
            "--config",
            str(config),
        ],
    }


def _describe(sample: Sample) -> str:
    text = f"{sample.seconds:7.2f} s  {sample.peak_rss_mb:7.0f} MB peak memory  {sample.cpu_seconds:7.2f} s CPU"
    if sample.processes > 1:
        text += (
            f"  ({sample.processes} processes: largest one {sample.maxrss_mb:.0f} MB, "
            f"all together {sample.tree_pss_mb:.0f} MB PSS / {sample.tree_rss_mb:.0f} MB RSS)"
        )
    return text


def run_contenders(source: Path, config: Path, workdir: Path, repeat: int) -> dict[str, Contender]:
    commands = contender_commands(config)
    results = {name: Contender(name) for name in commands}
    for round_number in range(1, repeat + 1):
        for name, command in commands.items():
            out = workdir / f"lake-{name}"
            shutil.rmtree(out, ignore_errors=True)
            sample = measure(command(source, out), workdir / "logs" / f"{name}-{round_number}.log")
            results[name].samples.append(sample)
            _log(f"  round {round_number}/{repeat} {name:<12} {_describe(sample)}")
    return results


# -- apples to apples: the lakes, compared ----------------------------------------------------------


def compare_lakes(results: dict[str, Contender], workdir: Path) -> None:
    """Count each lake's rows, and how many of a baseline's sessions sessionflow wrote identically."""
    import duckdb

    con = duckdb.connect()

    def glob(name: str, table: str) -> str:
        return str(workdir / f"lake-{name}" / table / "*" / "*.parquet").replace("'", "''")

    for name, contender in results.items():
        events = con.execute(f"SELECT count(*) FROM read_parquet('{glob(name, 'events')}')").fetchone()
        sessions = con.execute(f"SELECT count(*) FROM read_parquet('{glob(name, 'sessions')}')").fetchone()
        contender.events = int(events[0]) if events else 0
        contender.sessions = int(sessions[0]) if sessions else 0
    key = "session_id, machine_id, start_ts, end_ts, event_count, first_event_type, last_event_type"
    for name, contender in results.items():
        if name == "sessionflow" or not contender.sessions:
            continue
        row = con.execute(
            f"SELECT count(*) FROM (SELECT {key} FROM read_parquet('{glob(name, 'sessions')}') "
            f"INTERSECT SELECT {key} FROM read_parquet('{glob('sessionflow', 'sessions')}'))"
        ).fetchone()
        contender.identical_sessions = (int(row[0]) if row else 0) / contender.sessions


# -- the stdin runs ------------------------------------------------------------------------------------


def feed_command(events: int, machines: int, seed: int, days: float | None) -> list[str]:
    """The producer of a stdin run: ``sessionflow generate``, or the generator itself for a longer span."""
    if days is None:
        return generate_command(events, machines, seed)
    # `generate` has no --days: call the same generator with a longer span, written the same way.
    code = (
        "from sessionflow.synthetic import FeedShape, write_feed; "
        f"write_feed(FeedShape(events={events}, machines={machines}, seed={seed}, days={days!r}), '-')"
    )
    return [sys.executable, "-c", code]


def default_days() -> float:
    from sessionflow.synthetic import FeedShape

    return float(FeedShape().days)


def stdin_run(events: int, machines: int, seed: int, config: Path, workdir: Path, days: float | None = None) -> Sample:
    out = workdir / f"lake-stdin-{events}"
    shutil.rmtree(out, ignore_errors=True)
    span = f"{days:g} days" if days is not None else f"{default_days():g} days (generate's default)"
    _log(f"stdin run: {events:,} events over {span} | sessionflow run - (only `run` is measured)")
    sample = measure(
        sessionflow_command("run", "-", "--out", str(out), "--config", str(config), "--overwrite", "--json"),
        workdir / "logs" / f"stdin-{events}.log",
        producer=feed_command(events, machines, seed, days),
    )
    shutil.rmtree(out, ignore_errors=True)  # a 10M lake is large, and only the measurement matters
    _log(f"  {_describe(sample)}")
    return sample


# -- hooks --------------------------------------------------------------------------------------------------


def run_hooks(workdir: Path) -> dict[str, int]:
    """Other benchmarks (AWS, backfill) run as they are, from the repository root, when present."""
    codes: dict[str, int] = {}
    for hook in HOOKS:
        path = BENCH_DIR / hook
        if not path.exists():
            _log(f"hook {hook}: not present, skipped")
            continue
        _log(f"\n== {hook} ==")
        environment = {**os.environ, "SESSIONFLOW_BENCH_WORKDIR": str(workdir / path.stem)}
        codes[hook] = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=environment, check=False).returncode
        _log(f"hook {hook}: exit {codes[hook]}")
    return codes


# -- the report --------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("sessionflow", "duckdb", "polars", "pyarrow", "orjson"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            versions[module] = "-"
    from sessionflow.core.native import implementation

    versions["sessionizer"] = implementation()  # "compiled", or "pure" (no C compiler, SESSIONFLOW_PURE)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False)
    versions["commit"] = commit.stdout.decode().strip() or "-"
    return versions


def _check(passed: bool, text: str) -> dict[str, Any]:
    _log(f"{'PASS' if passed else 'FAIL'}  {text}")
    return {"passed": passed, "check": text}


def report(
    results: dict[str, Contender],
    events: int,
    repeat: int,
    stdin_small: Sample | None,
    stdin_big: Sample | None,
    big_events: int,
) -> list[dict[str, Any]]:
    ours = results["sessionflow"]
    ours_rate = events / ours.best_seconds
    _log(f"\n{events:,} input lines; time: best of {repeat} runs; peak RSS: highest of {repeat} runs")
    _log("speed ratio = sessionflow events/s / contender events/s (>= 1.0: sessionflow is faster)\n")
    _log(f"{'contender':<12} {'seconds':>9} {'events/s':>10} {'peak RSS MB':>12} {'CPU s':>8} {'speed ratio':>12}")
    for contender in results.values():
        rate = events / contender.best_seconds
        _log(
            f"{contender.name:<12} {contender.best_seconds:9.2f} {rate:10,.0f} {contender.peak_rss_mb:12.0f} "
            f"{contender.cpu_seconds:8.2f} {ours_rate / rate:12.2f}"
        )
    _log("")
    for contender in results.values():
        if contender.name == "sessionflow" or ours.events is None or ours.sessions is None:
            continue
        assert contender.events is not None and contender.sessions is not None
        event_gap = (contender.events - ours.events) / max(1, ours.events)
        session_gap = (contender.sessions - ours.sessions) / max(1, ours.sessions)
        same = abs(event_gap) <= COUNT_TOLERANCE and abs(session_gap) <= COUNT_TOLERANCE
        _log(
            f"{'same work' if same else 'DIFFERENT'}  {contender.name}: {contender.events:,} events "
            f"({event_gap:+.3%} vs sessionflow's {ours.events:,}), {contender.sessions:,} sessions "
            f"({session_gap:+.3%} vs {ours.sessions:,}); {contender.identical_sessions or 0:.2%} of its sessions "
            "are in sessionflow's lake with the same id, machine, start, end, count, first and last type"
        )
    _log("")
    checks = []
    duckdb_ratio = results["duckdb"].best_seconds / ours.best_seconds
    polars_ratio = results["polars"].best_seconds / ours.best_seconds
    checks.append(_check(duckdb_ratio >= SPEED_TARGET, f"speed ratio vs DuckDB {duckdb_ratio:.2f} >= {SPEED_TARGET}"))
    checks.append(
        _check(
            ours.peak_rss_mb <= RSS_LIMIT_MB, f"sessionflow peak RSS {ours.peak_rss_mb:.0f} MB <= {RSS_LIMIT_MB:.0f} MB"
        )
    )
    if stdin_small is not None and stdin_big is not None:
        growth = stdin_big.peak_rss_mb / stdin_small.peak_rss_mb
        checks.append(
            _check(
                growth <= GROWTH_LIMIT,
                f"stdin peak memory {big_events:,} events {stdin_big.peak_rss_mb:.0f} MB <= {GROWTH_LIMIT} x "
                f"{events:,} events {stdin_small.peak_rss_mb:.0f} MB (ratio {growth:.2f})",
            )
        )
    _log(f"info  speed ratio vs Polars {polars_ratio:.2f} (the next goal: >= 1.0)")
    return checks


def feed_arguments(parser: argparse.ArgumentParser) -> None:
    """The feed and the work folder: the options every benchmark here takes alike."""
    parser.add_argument("--events", type=int, default=1_000_000, help="input lines (default 1,000,000)")
    parser.add_argument("--machines", type=int, default=10_000, help="machines in the feed (default 10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=str(BENCH_DIR / "out"), help="inputs, lakes, logs (default bench/out)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feed_arguments(parser)
    parser.add_argument("--repeat", type=int, default=2, help="runs per contender; the best time is kept (default 2)")
    big = parser.add_mutually_exclusive_group()
    big.add_argument(
        "--rss-10m", dest="rss_big", action="store_true", default=True, help="the stdin RSS runs (default)"
    )
    big.add_argument("--skip-10m", dest="rss_big", action="store_false", help="skip the stdin RSS runs (minutes)")
    parser.add_argument("--big-events", type=int, default=10_000_000, help="events of the big stdin run (10,000,000)")
    parser.add_argument(
        "--dense-10m",
        action="store_true",
        help="the big stdin run is plain `sessionflow generate -n BIG`: the same days as the small one, so 10x "
        "the events per machine per hour (default: the days grow with the events, the rate stays)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE as JSON")
    parser.add_argument("--all", action="store_true", help=f"also run {' and '.join(HOOKS)} when present")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    versions = _versions()
    _log(
        f"sessionflow bench: {os.cpu_count()} CPUs, load {load_before:.2f}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    if load_before > 1.0:
        _log("note: the machine is busy (load > 1): wall times are noisy; compare the CPU seconds too")
    try:
        source = prepare_input(workdir, args.events, args.machines, args.seed)
        config = prepare_config(workdir)
        warm_page_cache(source)
        results = run_contenders(source, config, workdir, args.repeat)
        compare_lakes(results, workdir)
        stdin_small = stdin_big = None
        if args.rss_big:
            stdin_small = stdin_run(args.events, args.machines, args.seed, config, workdir)
            # Same events per machine per hour as the small feed, for longer: only the input size grows.
            # --dense-10m packs them into the same span instead (10x the rate: more in flight at once).
            big_days = None if args.dense_10m else default_days() * args.big_events / args.events
            stdin_big = stdin_run(args.big_events, args.machines, args.seed, config, workdir, big_days)
    except BenchError as exc:
        _log(f"error: {exc}")
        return 1
    checks = report(results, args.events, args.repeat, stdin_small, stdin_big, args.big_events)
    load_after = os.getloadavg()[0]
    _log(f"load average: {load_before:.2f} before, {load_after:.2f} after")
    hooks = run_hooks(workdir) if args.all else {}
    if args.json:
        payload = {
            "events": args.events,
            "machines": args.machines,
            "seed": args.seed,
            "repeat": args.repeat,
            "versions": versions,
            "load_average": [load_before, load_after],
            "contenders": {
                name: {
                    "best_seconds": c.best_seconds,
                    "events_per_second": args.events / c.best_seconds,
                    "peak_rss_mb": c.peak_rss_mb,
                    "cpu_seconds": c.cpu_seconds,
                    "speed_ratio": c.best_seconds / results["sessionflow"].best_seconds,
                    "events": c.events,
                    "sessions": c.sessions,
                    "identical_sessions": c.identical_sessions,
                    "samples": [{k: v for k, v in asdict(s).items() if k != "stdout"} for s in c.samples],
                }
                for name, c in results.items()
            },
            "stdin": {
                str(n): {k: v for k, v in asdict(s).items() if k != "stdout"}
                for n, s in ((args.events, stdin_small), (args.big_events, stdin_big))
                if s is not None
            },
            "stdin_big_feed": "same days as the small feed (dense)" if args.dense_10m else "days scaled with events",
            "checks": checks,
            "hooks": hooks,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        _log(f"wrote {args.json}")
    return 1 if any(code != 0 for code in hooks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
