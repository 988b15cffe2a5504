"""The raw archive and the way back: every ``raw`` record kept in S3 as it arrived, and a
failure-queue message's range replayed from it with nothing applied twice."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.archive import read_object
from sessionflow.runtimes.aws.local.poller import Handler, pipeline_poller
from sessionflow.runtimes.aws.local.resources import (
    BUCKET,
    IDS,
    ON_FAILURE_QUEUE,
    LocalAws,
    dedupe,
    put_lines,
    read_output,
)
from sessionflow.runtimes.aws.redrive import FailedRange
from sessionflow.synthetic import FeedShape, generate

pytestmark = pytest.mark.aws


def archived(aws: LocalAws) -> dict[tuple[str, int], Any]:
    """Every line of the raw archive, by (shard, sequence number)."""
    s3 = aws.client("s3")
    found: dict[tuple[str, int], Any] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="raw/"):
        for item in page.get("Contents", []):
            for record in read_object(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()):
                assert found.setdefault((record.shard, record.seq), record) == record
    return found


def on_stream(aws: LocalAws, stream: str = "raw") -> dict[tuple[str, int], Any]:
    kinesis = aws.client("kinesis")
    records = {}
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if not response["Records"]:
                break
            for r in response["Records"]:
                records[(shard["ShardId"], int(r["SequenceNumber"]))] = r
            iterator = response.get("NextShardIterator")
    return records


def test_the_raw_archive_holds_every_record_as_it_arrived(local_aws: LocalAws) -> None:
    lines = list(generate(FeedShape(events=400, machines=8, seed=3, days=0.1)))
    lines[50:50] = [b"\xff\xfe not utf-8", b'{"event_id": "x", "machine_id": ']
    put_lines(local_aws, lines)
    pipeline_poller(local_aws, batch_size=70).run()
    archive = archived(local_aws)
    stream = on_stream(local_aws)
    assert archive.keys() == stream.keys()
    for key, record in stream.items():
        kept = archive[key]
        assert kept.data == record["Data"]  # the bytes as they arrived, the broken ones too
        assert kept.key == record["PartitionKey"]
        assert abs(kept.arrival_ms - record["ApproximateArrivalTimestamp"].timestamp() * 1000) < 1


class Withheld:
    """A handler that never gets some records: reported failed every time, the rest go through.

    Lambda retries from the lowest failed record and gives up after its retries: the on-failure
    queue gets the range from it to the batch's end, most of which was applied."""

    def __init__(self, stream: str, held: set[tuple[str, str]]) -> None:
        self.stream, self.held = stream, held

    def holds(self, data: bytes) -> bool:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        return isinstance(value, dict) and (value.get("machine_id"), value.get("event_id")) in self.held

    def wrap(self, name: str, handler: Handler) -> Handler:
        if name != self.stream:
            return handler

        def deliver(event: dict[str, Any], context: Any) -> Any:
            records = event["Records"]
            held = [r for r in records if self.holds(base64.b64decode(r["kinesis"]["data"]))]
            if not held:
                return handler(event, context)
            others = [r for r in records if r not in held]
            response = handler({**event, "Records": others}, context) if others else {}
            failures = list((response or {}).get("batchItemFailures", []))
            return {"batchItemFailures": [*failures, {"itemIdentifier": held[0]["kinesis"]["sequenceNumber"]}]}

        return deliver


def _rows(aws: LocalAws) -> dict[str, dict[Any, dict[str, Any]]]:
    rows = read_output(aws)
    return {table: {tuple(r[f] for f in IDS[table]): r for r in dedupe(rows[table], IDS[table])} for table in rows}


def _reference(config_path: Path, lines: list[bytes]) -> Outputs:
    pipeline = Pipeline(Config.load(config_path), now_ms=int(time.time() * 1000))
    out = Outputs()
    pipeline.feed([(line, "feed", i + 1) for i, line in enumerate(lines)], out)
    pipeline.flush(out)
    return out


def _redrive_cli(aws: LocalAws, config_path: Path, command: str) -> str:
    """``sessionflow aws-local redrive``, or ``sessionflow aws redrive`` naming the resources (what
    the deployed stack's outputs give it) on the local AWS ($AWS_ENDPOINT_URL)."""
    import contextlib
    import io

    from sessionflow.cli import main

    handlers.use_runtime(None)
    if command == "aws-local":
        arguments = ["aws-local", "redrive", "--endpoint", aws.endpoint]
    else:
        queue = aws.client("sqs").get_queue_url(QueueName=ON_FAILURE_QUEUE)["QueueUrl"]
        arguments = ["aws", "redrive", "--queue-url", queue, "--raw-stream", "raw", "--clean-stream", "clean"]
        arguments += ["--rejected-firehose", "rejected", "--bucket", BUCKET, "--region", "us-east-1"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*arguments, "--config", str(config_path)]) == 0
    return printed.getvalue()


def _messages(aws: LocalAws) -> list[FailedRange]:
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=ON_FAILURE_QUEUE)["QueueUrl"]
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    return [FailedRange.from_message(m["Body"]) for m in messages]


@pytest.mark.parametrize(("stream", "command"), [("process", "aws-local"), ("sessionize", "aws")])
def test_redrive_delivers_exactly_the_missing_rows(
    local_aws: LocalAws, config_path: Path, stream: str, command: str
) -> None:
    """Lambda gives up on three records (and the rest of their batches, which went through); the
    sessions are flushed. ``aws-local redrive`` (or ``aws redrive``) then replays each message's
    range (``raw`` ones from the archive, ``clean`` ones from the stream): the three events reach S3,
    once, and not one other row is sent again."""
    lines = list(generate(FeedShape(events=300, machines=8, seed=31, days=0.15)))
    put_lines(local_aws, lines)
    reference = _reference(config_path, lines)
    held_events = [reference.events[40], reference.events[150], reference.events[250]]
    held_ids = {(e["machine_id"], e["event_id"]) for e in held_events}
    wrap: Callable[[str, Handler], Handler] = Withheld(stream, held_ids).wrap
    pipeline_poller(local_aws, batch_size=40, max_retries=1, handler_wrapper=wrap).run()
    handlers.flush_handler({}, None)

    before = _rows(local_aws)
    sent_before = {table: len(rows) for table, rows in read_output(local_aws).items()}
    want = {(e["machine_id"], e["event_id"]) for e in reference.events}
    missing = want - set(before["events"])
    if stream == "process":
        assert missing == held_ids  # exactly those
    else:
        # Those, and the later events of their machines put from the same raw batches: these wait
        # in their machine's item for the one Lambda gave up on (applied in their raw order).
        assert held_ids <= missing and {m for m, _ in missing} == {m for m, _ in held_ids}
    failed = _messages(local_aws)
    assert len(failed) == 3 and all(f.size >= 1 for f in failed)
    assert sum(f.size for f in failed) > 3, "the ranges hold records that did go through"

    printed = _redrive_cli(local_aws, config_path, command)
    assert "3 messages" in printed, printed
    assert _messages(local_aws) == []  # each redriven message is deleted
    pipeline_poller(local_aws, batch_size=40).run()
    handlers.flush_handler({}, None)

    after = _rows(local_aws)  # dedupe() raises if an id now has two different rows
    assert set(after["events"]) == want
    assert set(after["events"]) - set(before["events"]) == missing
    assert all(after["events"][key] == row for key, row in before["events"].items())
    sent_after = {table: len(rows) for table, rows in read_output(local_aws).items()}
    assert sent_after["events"] - sent_before["events"] == len(missing), "rows already in S3 were sent again"
    for event in held_events:
        row = after["events"][(event["machine_id"], event["event_id"])]
        assert {k: row[k] for k in ("timestamp", "event_type")} == {k: event[k] for k in ("timestamp", "event_type")}
