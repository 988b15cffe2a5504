"""Peak memory of `sessionflow run -` as the input grows: it must stay flat (bounded by machines).

    python bench/rss_stdin.py --events 1000000 3000000 --machines 20000

Generates one feed of the largest size (cached in bench/out/), streams the first N lines of it
through standard input of a fresh `sessionflow run - --out ...` for each N, and reports the peak
resident set size of that process (os.wait4, the kernel's ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sessionflow.config import EXAMPLE_CONFIG
from sessionflow.synthetic import FeedShape, write_feed

OUT = Path(__file__).parent / "out"


def feed_file(events: int, machines: int) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"feed-{events}-{machines}.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        write_feed(FeedShape(events=events, machines=machines, seed=5), str(partial))
        partial.rename(path)
    return path


def measure(feed: Path, lines: int, config: Path, extra: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one run over the first ``lines`` lines, fed through a pipe."""
    lake = Path(tempfile.mkdtemp(prefix="rss-lake-"))
    command = [sys.executable, "-m", "sessionflow", "run", "-", "--out", str(lake), "--config", str(config), "-q"]
    started = time.perf_counter()
    process = subprocess.Popen([*command, *extra], stdin=subprocess.PIPE)
    assert process.stdin is not None
    with open(feed, "rb") as source:
        chunk: list[bytes] = []
        for sent, line in enumerate(source, 1):
            chunk.append(line)
            if len(chunk) == 10_000 or sent == lines:
                process.stdin.write(b"".join(chunk))
                chunk.clear()
            if sent == lines:
                break
    process.stdin.close()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    shutil.rmtree(lake, ignore_errors=True)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sessionflow run failed with {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--machines", type=int, default=20_000)
    parser.add_argument("extra", nargs="*", help="more `sessionflow run` options, after --")
    args = parser.parse_args()
    feed = feed_file(max(args.events), args.machines)
    config = OUT / "sessionflow.toml"
    config.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    print(f"{'events':>12} {'peak RSS MiB':>13} {'seconds':>8}  ({args.machines:,} machines, stdin)")
    for events in sorted(args.events):
        rss, seconds = measure(feed, events, config, args.extra)
        print(f"{events:>12,} {rss:>13,.0f} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
