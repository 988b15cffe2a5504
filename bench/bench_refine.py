"""The per-record step alone: parse, clean, validate, enrich, in this process, CPU seconds.

    python bench/bench_refine.py [--events 200000] [--repeat 5] [--config FILE]

Refines a generated feed (``sessionflow generate``'s dirty feed) with the core's ``LineRefiner``
under the example config (``sessionflow init``), or ``--config``, and prints the best CPU time of
``--repeat`` passes and the records per CPU second. The end-to-end benchmark (bench_run.py) wraps
this step in processes, spills and Parquet, whose noise on a busy machine can hide a change of a
few percent here; run this script from two checkouts in turns to compare them.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.core import LineRefiner
from sessionflow.synthetic import FeedShape, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--config", help="a sessionflow.toml (default: the example config)")
    args = parser.parse_args()
    config = Config.load(args.config) if args.config else Config.from_dict(tomllib.loads(EXAMPLE_CONFIG))
    lines = [(line.rstrip(b"\n"), "bench", number) for number, line in enumerate(generate(FeedShape(args.events)), 1)]
    now_ms = int(time.time() * 1000)
    refiner = LineRefiner(config)
    best = float("inf")
    for _ in range(args.repeat):
        started = time.process_time()
        refined = refiner.refine_lines(lines, now_ms)
        best = min(best, time.process_time() - started)
    source = Path(__import__("sessionflow").__file__).parent
    print(
        f"{len(lines):,} lines ({len(refined.events):,} events, {sum(refined.rejected.values()):,} rejected): "
        f"best CPU {best:.3f} s of {args.repeat}, {len(lines) / best:,.0f} lines per CPU second  [{source}]"
    )


if __name__ == "__main__":
    main()
