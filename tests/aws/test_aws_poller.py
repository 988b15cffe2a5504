"""The local event source mapping on its own: bisect on error, retries, on-failure queue, checkpoints."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from sessionflow.runtimes.aws.local.poller import Mapping, Poller
from sessionflow.runtimes.aws.local.resources import ON_FAILURE_QUEUE, LocalAws
from sessionflow.state.memory import MemoryStore

pytestmark = pytest.mark.aws


class Recorder:
    """A handler that raises (a function error, not a partial failure) on any batch holding a poison."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.batch_sizes: list[int] = []

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        records = [base64.b64decode(r["kinesis"]["data"]).decode() for r in event["Records"]]
        self.batch_sizes.append(len(records))
        assert context.function_name == "raw"
        if any(r.startswith("poison") for r in records):
            raise ValueError("cannot take this batch")
        self.delivered.extend(records)
        return {"batchItemFailures": []}


def _put(aws: LocalAws, values: list[str]) -> list[str]:
    kinesis = aws.client("kinesis")
    return [
        kinesis.put_record(StreamName="raw", Data=value.encode(), PartitionKey="one-machine")["SequenceNumber"]
        for value in values
    ]


def test_bisect_isolates_a_poison_and_the_rest_goes_through_once_in_order(local_aws: LocalAws) -> None:
    values = [f"r{i:02d}" for i in range(16)]
    values[11] = "poison"
    sequence_numbers = _put(local_aws, values)
    handler = Recorder()
    sqs = local_aws.client("sqs")
    queue = sqs.get_queue_url(QueueName=ON_FAILURE_QUEUE)["QueueUrl"]
    store = MemoryStore()
    mapping = Mapping("raw", handler, batch_size=16, max_retries=2, on_failure_queue_url=queue)
    poller = Poller(local_aws.client("kinesis"), store, [mapping], sqs=sqs)
    poller.run()

    assert handler.delivered == [v for v in values if v != "poison"]  # each once, in stream order
    assert 1 in handler.batch_sizes  # bisected down to the poison alone
    stats = poller.stats["raw"]
    assert stats.sent_to_on_failure == 1 and stats.errors > 2
    message = orjson.loads(sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"])
    info = message["KinesisBatchInfo"]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == sequence_numbers[11]
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"

    # The checkpoint is past everything: a new poller (a restart) delivers nothing again.
    restarted = Recorder()
    Poller(local_aws.client("kinesis"), store, [Mapping("raw", restarted)], sqs=sqs).run()
    assert restarted.delivered == []
    more = _put(local_aws, ["r16", "r17"])
    Poller(local_aws.client("kinesis"), store, [Mapping("raw", restarted)], sqs=sqs).run()
    assert restarted.delivered == ["r16", "r17"] and len(more) == 2


def test_a_partial_failure_retries_from_the_lowest_failed_record(local_aws: LocalAws) -> None:
    values = [f"r{i}" for i in range(6)]
    sequence_numbers = _put(local_aws, values)
    calls: list[list[str]] = []

    def flaky(event: dict[str, Any], context: Any) -> dict[str, Any]:
        records = [base64.b64decode(r["kinesis"]["data"]).decode() for r in event["Records"]]
        calls.append(records)
        if len(calls) == 1:  # r2 and r4 fail the first time
            failed = [r["kinesis"]["sequenceNumber"] for r in event["Records"][2:5:2]]
            return {"batchItemFailures": [{"itemIdentifier": seq} for seq in reversed(failed)]}
        return {"batchItemFailures": []}

    Poller(local_aws.client("kinesis"), MemoryStore(), [Mapping("raw", flaky, batch_size=10)]).run()
    assert calls == [values, values[2:]]  # redelivered from r2, the lowest failure, in order
    assert sequence_numbers == sorted(sequence_numbers, key=int)


def test_a_scheduled_function_runs_between_rounds(local_aws: LocalAws) -> None:
    """What EventBridge does for the sweep in AWS; here every round, as ``every_s`` is 0."""
    _put(local_aws, ["r0", "r1"])
    handler = Recorder()
    ticks: list[int] = []
    poller = Poller(local_aws.client("kinesis"), MemoryStore(), [Mapping("raw", handler)])
    poller.run(scheduled=lambda: ticks.append(len(handler.delivered)), every_s=0.0)
    assert handler.delivered == ["r0", "r1"]
    assert len(ticks) >= 2 and ticks[-1] == 2  # before the records and after them

    idle: list[int] = []
    Poller(local_aws.client("kinesis"), MemoryStore(), [Mapping("raw", Recorder())]).run(
        scheduled=lambda: idle.append(1), every_s=3600.0
    )
    assert idle == []  # not due within the run
