"""Fault injection: a run killed (SIGKILL) at any moment and started again with the same command
line ends with exactly the lake, ledgers and state of runs that were never interrupted.

Two kinds of kill: at each named step of the commit protocol ($SESSIONFLOW_CRASH_AT, also inside
the recovery of the restarted run), and at random times of a real subprocess.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sessionflow.cli import main
from sessionflow.lake.commit import CRASH_ENV
from sessionflow.lake.verify import verify_lake
from tests.reliability.lakes import sessionflow, snapshot, write_config, write_feed_parts

pytestmark = pytest.mark.slow

# Two command sequences. "hourly": three drops of a feed, state kept between runs, the last one
# flushes. "replace": a lake replaced by a run over all the drops (--overwrite).
SEQUENCES = ("hourly", "replace")


def commands(sequence: str, work: Path, feed: list[Path], config: Path) -> list[list[str]]:
    lake, state = str(work / "lake"), str(work / "state.json")
    common = ["--out", lake, "--config", str(config), "--quiet"]
    if sequence == "hourly":
        return [
            ["run", str(feed[0]), "--state", state, *common],
            ["run", str(feed[1]), "--state", state, *common],
            ["run", str(feed[2]), "--state", state, "--flush", *common],
        ]
    return [
        ["run", str(feed[0]), *common],
        ["run", *map(str, feed), "--overwrite", *common],
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The feed, the config, and the lake of each sequence when nothing is interrupted."""
    folder = tmp_path_factory.mktemp("feed")
    feed = write_feed_parts(folder, events=3_000, machines=30, seed=11, parts=3)
    config = write_config(folder)
    expected = {}
    for sequence in SEQUENCES:
        work = tmp_path_factory.mktemp(f"clean-{sequence}")
        for command in commands(sequence, work, feed, config):
            assert main(command) == 0
        expected[sequence] = snapshot(work / "lake", work / "state.json")
        verdict = verify_lake(work / "lake")
        assert verdict.ok, verdict.render()
    return {"feed": feed, "config": config, "expected": expected}


def run_killed_sequence(world: dict[str, Any], work: Path, sequence: str, target: int, attempt: Any) -> list[int]:
    """The sequence with command ``target`` run by ``attempt`` (which may kill it), then that same
    command again until it succeeds, then the rest. Returns the first attempts' return codes."""
    codes = []
    for index, command in enumerate(commands(sequence, work, world["feed"], world["config"])):
        if index == target:
            codes = attempt(command)
        assert main(command) == 0, f"restarted command {index} failed"
    return codes


def crash_env(step: str) -> dict[str, str]:
    return {**os.environ, CRASH_ENV: step}


# Every step of every run of both sequences.
HOURLY_STEPS = ("batch:1", "bucket", "staged", "committed", "moved:1", "moved:4", "state", "ledger", "cleaned")
REPLACE_STEPS = ("batch:1", "bucket", "staged", "committed", "replaced", "moved:1", "moved:6", "ledger", "cleaned")
CASES: list[tuple[str, int, tuple[str, ...]]] = [
    ("hourly", target, (step,)) for target in range(3) for step in HOURLY_STEPS
]
CASES += [("replace", 1, (step,)) for step in REPLACE_STEPS]
# Killed again while the restarted run finishes the committed one (recovery is itself interrupted).
CASES += [
    ("hourly", 1, ("committed", "moved:2")),
    ("hourly", 2, ("moved:1", "state")),
    ("replace", 1, ("committed", "replaced")),
    ("replace", 1, ("moved:3", "moved:1")),
]
# Runs 2 and 3 restate sessions of the runs before: killed while the files they rewrote are removed,
# and while the event-id index they wrote is put in place.
CASES += [("hourly", 1, ("removed",)), ("hourly", 2, ("removed",)), ("hourly", 2, ("removed", "removed"))]
CASES += [("hourly", 1, ("index",)), ("hourly", 2, ("index:2",)), ("hourly", 2, ("index", "index"))]


@pytest.mark.parametrize(("sequence", "target", "steps"), CASES, ids=str)
def test_killed_at_a_step_then_restarted_gives_the_same_lake(
    world: dict[str, Any], tmp_path: Path, sequence: str, target: int, steps: tuple[str, ...]
) -> None:
    def attempt(command: list[str]) -> list[int]:
        return [sessionflow(*command, env=crash_env(step)).returncode for step in steps]

    codes = run_killed_sequence(world, tmp_path, sequence, target, attempt)
    assert codes == [-signal.SIGKILL] * len(steps), f"a crash point was never reached: {codes}"
    # Equal to the uninterrupted lake, which `verify` passes (see the fixture), byte for byte.
    assert snapshot(tmp_path / "lake", tmp_path / "state.json") == world["expected"][sequence]


def _timed_kill(command: list[str], delay: float) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def test_killed_at_random_times_then_restarted_gives_the_same_lake(world: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(20261126)
    # How long a run takes here, start-up included: kills are spread over that, and a little past it.
    started = time.perf_counter()
    assert sessionflow(*commands("hourly", tmp_path / "timing", world["feed"], world["config"])[0]).returncode == 0
    duration = time.perf_counter() - started
    killed = 0
    for trial in range(12):
        sequence = rng.choice(SEQUENCES)
        target = rng.randrange(3) if sequence == "hourly" else 1
        delay = rng.uniform(0.2, 1.0) * duration
        work = tmp_path / f"trial-{trial}"
        codes = run_killed_sequence(
            world, work, sequence, target, lambda command, delay=delay: [_timed_kill(command, delay)]
        )
        killed += codes == [-signal.SIGKILL]
        context = f"trial {trial}: {sequence}, command {target} killed after {delay:.3f}s"
        assert snapshot(work / "lake", work / "state.json") == world["expected"][sequence], context
    assert killed >= 4, f"only {killed} of 12 runs were still running when killed"
