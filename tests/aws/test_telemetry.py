"""What a batch tells an operator: the CloudWatch EMF metrics and JSON log lines the handlers print.

Real Powertools (Logger, Metrics, Tracer) writing to the captured standard output, as they write to
CloudWatch Logs in Lambda; the counts are checked against the core's own answer for the same records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sessionflow.config import Config
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.commit import ShardState
from sessionflow.runtimes.aws.sessionize import ShardConflict
from sessionflow.runtimes.aws.telemetry import METRICS
from sessionflow.state.memory import MemoryStore
from sessionflow.synthetic import DEFAULT_START, FeedShape, generate
from tests.aws.lambda_context import CLEAN_SHARD, Harness, LambdaContext, reasons, reference
from tests.helpers import kinesis_event

pytestmark = pytest.mark.aws
ARRIVED = DEFAULT_START.timestamp() + 86_400  # every generated record is in the past, none too old
SERVICE = "sessionflow-test"


@pytest.fixture
def config(config_path: Path) -> Config:
    return Config.load(config_path)


@pytest.fixture(autouse=True)
def _powertools_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", SERVICE)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "sessionflow")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "INFO")
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    yield
    handlers.use_runtime(None)


def emitted(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(EMF metric sets, log lines) printed since the last call: every line must be JSON."""
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return [line for line in lines if "_aws" in line], [line for line in lines if "_aws" not in line]


def metric_values(blobs: list[dict[str, Any]], function: str, reason: str | None = None) -> dict[str, float]:
    """Metric name -> summed value over the EMF blobs of one function (and reason)."""
    totals: dict[str, float] = {}
    for blob in blobs:
        if blob.get("function") != function or blob.get("reason") != reason:
            continue
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "sessionflow"
            dimensions = {"service", "function"} | ({"reason"} if reason else set())
            assert [set(d) for d in directive["Dimensions"]] == [dimensions]
            for metric in directive["Metrics"]:
                assert metric["Unit"] == METRICS[metric["Name"]]
                name, value = metric["Name"], blob[metric["Name"]]
                totals[name] = totals.get(name, 0) + sum(value if isinstance(value, list) else [value])
    assert all(blob["service"] == SERVICE for blob in blobs)
    return totals


def test_a_process_and_a_sessionize_batch_emit_their_counts(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    lines = list(generate(FeedShape(events=600, machines=12, days=0.3, seed=3, invalid_rate=0.03)))
    raw_event = kinesis_event("raw", lines, 0, arrived=ARRIVED)
    expected = reference(config, lines, int(ARRIVED * 1000))
    assert expected.rejections and expected.duplicates
    harness = Harness(config)
    capsys.readouterr()

    assert handlers.process_handler(raw_event, LambdaContext(request_id="req-process")) == {"batchItemFailures": []}
    blobs, logs = emitted(capsys)
    values = metric_values(blobs, "process")
    assert values["ColdStart"] == 1
    assert values["RecordsIn"] == len(lines)
    assert values["RecordsValid"] == len(expected.events) + len(expected.duplicates) == len(harness.clean.entries)
    assert values["RecordsRejected"] == len(expected.rejections)
    assert values["RecordsRefused"] == values["RecordsUntaken"] == 0
    for reason, count in reasons(expected.rejections).items():
        assert metric_values(blobs, "process", reason) == {"RecordsRejected": count}, reason
    (log,) = logs
    records = raw_event["Records"]
    assert log["level"] == "INFO" and log["message"] == "process batch" and log["service"] == SERVICE
    assert log["function"] == "process" and log["function_request_id"] == "req-process"
    assert log["function_name"] == LambdaContext.function_name and log["cold_start"] is True
    assert log["shard"] == "raw/shardId-000000000000"
    assert (log["first_sequence"], log["last_sequence"]) == (
        records[0]["kinesis"]["sequenceNumber"],
        records[-1]["kinesis"]["sequenceNumber"],
    )
    assert log["batch_size"] == len(lines) and log["records_valid"] == values["RecordsValid"]
    assert log["rejected_by_reason"] == dict(sorted(reasons(expected.rejections).items()))

    clean_event = harness.clean_event()
    assert handlers.sessionize_handler(clean_event, LambdaContext(request_id="req-sessionize")) == {
        "batchItemFailures": []
    }
    blobs, logs = emitted(capsys)
    batch = metric_values(blobs, "sessionize")
    assert "ColdStart" not in batch  # one process, one cold start
    # Copies are dropped before the core (exact dedupe, docs/aws.md): the rest is applied.
    assert batch["RecordsIn"] == batch["RecordsApplied"] + batch["Duplicates"] == len(harness.clean.entries)
    assert batch["Duplicates"] == len(expected.duplicates)
    assert batch["CommitLatency"] > 0
    # A first batch writes each of its machines once, the shard item twice (intent, then done), and
    # an index entry per event it released.
    stored = harness.store._records
    machines = [key for key in stored if key.startswith("m#")]
    assert len(machines) == len({e["machine_id"] for e in expected.events})
    assert batch["StateWrites"] == len(machines) + 2 + batch["EventsOut"]
    assert batch["StateBytesWritten"] >= sum(len(r.blob) for r in stored.values() if r.blob is not None) > 0
    assert batch["Conflicts"] == batch["RecordsFailed"] == batch["RecordsUntaken"] == 0
    (log,) = logs
    assert log["message"] == "sessionize batch" and log["function_request_id"] == "req-sessionize"
    assert log["shard"] == f"clean/{CLEAN_SHARD}" and log["batch_size"] == len(harness.clean.entries)
    assert log["first_sequence"] == clean_event["Records"][0]["kinesis"]["sequenceNumber"]
    assert log["records_applied"] == batch["RecordsApplied"] and log["commit_ms"] > 0

    # What the batch left open, the flush closes: between them, the core's events and sessions.
    flushed = handlers.flush_handler({"shards": [f"clean/{CLEAN_SHARD}"]}, LambdaContext())
    blobs, logs = emitted(capsys)
    flush = metric_values(blobs, "flush")
    assert flush["ShardsDone"] == 1 and flush["SessionsClosed"] == flushed["sessions"]
    assert batch["EventsOut"] + flush["EventsOut"] == len(expected.events) == len(harness.sink.rows["events"])
    assert batch["SessionsClosed"] + flush["SessionsClosed"] == len(expected.sessions)
    assert batch["Late"] + flush["Late"] == sum(1 for e in expected.events if e["late"])
    assert [log["message"] for log in logs] == ["flush"]


class ConflictOnce(MemoryStore):
    """Another invocation commits the shard between this one's read and its intent write."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def put(self, key: str, value: dict[str, Any], expected_version: int | None) -> int | None:
        if self.armed and key.startswith("s#"):
            self.armed = False
            super().put(key, ShardState().to_value(), expected_version)  # the other writer wins
        return super().put(key, value, expected_version)


def test_a_conflict_is_counted_and_the_batch_retried(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    lines = list(generate(FeedShape(events=50, machines=3, days=0.1, seed=4, invalid_rate=0)))
    harness = Harness(config, store=ConflictOnce())
    handlers.process_handler(kinesis_event("raw", lines, 0, arrived=ARRIVED), None)
    capsys.readouterr()
    with pytest.raises(ShardConflict):
        handlers.sessionize_handler(harness.clean_event(), None)
    blobs, logs = emitted(capsys)
    values = metric_values(blobs, "sessionize")
    assert values["Conflicts"] == 2  # the lost conditional write, and the batch given up
    assert values["RecordsIn"] == len(harness.clean.entries) and "CommitLatency" not in values
    assert [log["message"] for log in logs] == ["sessionize batch"]
    # Lambda retries the batch: now it commits.
    assert handlers.sessionize_handler(harness.clean_event(), None) == {"batchItemFailures": []}


def test_metrics_can_be_turned_off(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `sessionflow aws-local` does on a terminal: no metric lines, warnings only, and nothing
    piles up in Powertools' metric set over many batches."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    lines = list(generate(FeedShape(events=40, machines=2, days=0.1, seed=5, invalid_rate=0)))
    harness = Harness(config)
    for _ in range(120):  # Powertools prints a metric set once one metric holds 100 values
        handlers.process_handler(kinesis_event("raw", lines[:1], 0, arrived=ARRIVED), None)
    assert capsys.readouterr().out == ""
    assert harness.runtime.telemetry.metrics.metric_set == {}
