"""Chaos on the local AWS: faults injected into the handlers' real boto3 calls to the moto server
(throttled, partly refused, or answered with an error after the write landed) and crashes between
their steps (``sessionflow aws-local run --chaos``), and the output is still exactly the core's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.local.chaos import AMBIGUOUS, CALLS, PARTIAL, THROTTLE, Chaos, ChaosCrash
from sessionflow.runtimes.aws.local.poller import pipeline_poller
from sessionflow.runtimes.aws.local.resources import IDS, ON_FAILURE_QUEUE, LocalAws, dedupe, put_lines, read_output
from sessionflow.state.dynamodb import DynamoDBStore
from sessionflow.synthetic import FeedShape, generate

pytestmark = pytest.mark.aws


def _reference(config_path: Path, lines: list[bytes]) -> Outputs:
    pipeline = Pipeline(Config.load(config_path), now_ms=int(time.time() * 1000))
    out = Outputs()
    pipeline.feed([(line, "feed", i + 1) for i, line in enumerate(lines)], out)
    pipeline.flush(out)
    return out


def _failures(aws: LocalAws) -> int:
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=ON_FAILURE_QUEUE)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_chaos_on_every_call_changes_no_row(
    local_aws: LocalAws, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30% of every call the handlers make goes wrong, every way it can; handlers crash between steps.

    Still every event once in its core session, every summary the core's, only exact copies, and
    nothing for the on-failure queue."""
    from sessionflow.state import throttling

    monkeypatch.setattr(throttling, "BASE_DELAY_S", 0.002)  # the same retries, shorter pauses
    lines = list(generate(FeedShape(events=300, machines=8, seed=5, days=0.12)))
    put_lines(local_aws, lines)
    chaos = Chaos(0.3, seed=12, cover=True)
    runtime = handlers.Runtime.from_env(local_aws.settings, prepare=chaos.register, faults=chaos.crash)
    handlers.use_runtime(runtime)
    checkpoints = DynamoDBStore(local_aws.client("dynamodb"), local_aws.settings.state_table)
    pipeline_poller(local_aws, checkpoints, batch_size=40, max_retries=8).run()
    for _ in range(20):  # the flush is retried as an asynchronous invocation is (a crash, or a call
        try:  # still throttled after the store's own retries: 0.3**6 of calls, a few in a flush's many)
            handlers.flush_handler({}, None)
            break
        except (ChaosCrash, ClientError):
            continue
    else:
        pytest.fail("the flush failed 20 times in a row")
    # Every fault on every call happened, and handlers died at every kind of step.
    wanted = {
        f"{service} {call} {fault}"
        for service, calls in CALLS.items()
        for call, faults in calls.items()
        for fault in faults
    }
    assert wanted <= set(chaos.injected), sorted(wanted - set(chaos.injected))
    steps = {"process:clean", "process:rejected", "intent", "timers", "machine", "index", "send", "done"}
    steps |= {"timers-dropped", "recover:fenced", "recover:sent"}
    assert {f"crash at {step}" for step in steps} <= set(chaos.injected)
    assert {THROTTLE, PARTIAL, AMBIGUOUS} == {
        f for calls in CALLS.values() for faults in calls.values() for f in faults
    }

    rows = read_output(local_aws)
    reference = _reference(config_path, lines)
    events = dedupe(rows["events"], IDS["events"])  # raises on two different rows for one id
    assert {(e["machine_id"], e["event_id"]): e for e in events} == {
        (e["machine_id"], e["event_id"]): orjson.loads(orjson.dumps(e)) for e in reference.events
    }
    sessions = dedupe(rows["sessions"], IDS["sessions"])
    assert {s["session_id"]: s for s in sessions} == {
        s["session_id"]: orjson.loads(orjson.dumps(s)) for s in reference.sessions
    }
    assert len(rows["events"]) > len(events), "no copy at all: were the faults really injected?"
    assert _failures(local_aws) == 0


def _run(local_aws: LocalAws, config_path: Path, cwd: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "sessionflow",
        "aws-local",
        "run",
        "--endpoint",
        local_aws.endpoint,
        "--config",
        str(config_path),
        "--batch-size",
        "60",
        "--max-retries",
        "8",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_when(process: subprocess.Popen[bytes], ready: Any, seconds: float = 120) -> None:
    try:
        deadline = time.monotonic() + seconds
        while not ready():
            assert process.poll() is None, process.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the poller made no progress"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_a_chaos_run_killed_twice_then_drained_gives_the_embedded_lake(
    local_aws: LocalAws, config_path: Path, tmp_path: Path
) -> None:
    """``aws-local run --chaos 0.05``, SIGKILLed twice mid-stream, then run again to the end with
    ``--flush``: fetched with every copy kept, the event -> session mapping and the summaries of
    ``sessionflow run`` on the same feed, and no event id with two different rows."""
    lines = list(generate(FeedShape(events=1200, machines=24, seed=29, days=0.25)))
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    put_lines(local_aws, lines)
    s3 = local_aws.client("s3")

    def events_in_s3() -> int:
        return int(s3.list_objects_v2(Bucket="sessionflow-lake", Prefix="events/").get("KeyCount", 0))

    _kill_when(
        _run(local_aws, config_path, tmp_path, "--chaos", "0.05", "--chaos-seed", "1"), lambda: events_in_s3() > 3
    )
    reached = events_in_s3()
    _kill_when(
        _run(local_aws, config_path, tmp_path, "--chaos", "0.05", "--chaos-seed", "2"),
        lambda: events_in_s3() > reached + 3,
    )
    last = _run(local_aws, config_path, tmp_path, "--chaos", "0.05", "--chaos-seed", "3", "--flush")
    output, _ = last.communicate(timeout=600)
    assert last.returncode == 0, output.decode()[-3000:]
    assert "chaos 0.05: " in output.decode() and "nothing injected" not in output.decode()
    assert _failures(local_aws) == 0

    fetch = [sys.executable, "-m", "sessionflow", "aws-local", "fetch", "--endpoint", local_aws.endpoint]
    kept = tmp_path / "kept"
    done = subprocess.run(
        [*fetch, "--config", str(config_path), "--keep-duplicates", str(kept)], check=False, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    deduped = tmp_path / "deduped"
    done = subprocess.run([*fetch, "--config", str(config_path), str(deduped)], check=False, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()  # fetch refuses two different rows for one id
    embedded = tmp_path / "embedded"
    run = [sys.executable, "-m", "sessionflow", "run", str(feed), "--out", str(embedded), "--config", str(config_path)]
    assert subprocess.run([*run, "--quiet"], check=False, capture_output=True).returncode == 0

    from tests.contract.runtimes import read_lake

    ours_events, ours_sessions, _ = read_lake(kept)
    theirs_events, theirs_sessions, _ = read_lake(embedded)
    by_id: dict[tuple[str, str], set[str]] = {}
    for event in ours_events:
        by_id.setdefault((event["machine_id"], event["event_id"]), set()).add(orjson.dumps(event, default=str).decode())
    assert all(len(rows) == 1 for rows in by_id.values()), "an event id with two different rows"
    assert len(ours_events) > len(by_id), "no copy kept: were the faults and kills really there?"
    assert {(e["machine_id"], e["event_id"]): e["session_id"] for e in ours_events} == {
        (e["machine_id"], e["event_id"]): e["session_id"] for e in theirs_events
    }
    summaries: dict[str, set[str]] = {}
    for summary in ours_sessions:
        summaries.setdefault(summary["session_id"], set()).add(orjson.dumps(summary, default=str).decode())
    assert all(len(rows) == 1 for rows in summaries.values()), "a session id with two different rows"
    assert {s["session_id"]: s for s in ours_sessions} == {s["session_id"]: s for s in theirs_sessions}
    verify = subprocess.run(
        [sys.executable, "-m", "sessionflow", "verify", str(deduped)], check=False, capture_output=True
    )
    assert verify.returncode == 0, verify.stdout.decode()
