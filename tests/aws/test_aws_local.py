"""The AWS runtime end to end against the local AWS: moto server over HTTP plus the local poller.

The reference is the core ``Pipeline`` fed the same lines in one stream and flushed, which is what
the embedded runner does.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.local.poller import Handler, pipeline_poller
from sessionflow.runtimes.aws.local.resources import (
    IDS,
    ON_FAILURE_QUEUE,
    LocalAws,
    dedupe,
    fetch,
    partition_key,
    put_lines,
    read_output,
)
from sessionflow.synthetic import FeedShape, generate

pytestmark = pytest.mark.aws


def _reference(config_path: Path, lines: list[bytes]) -> Outputs:
    pipeline = Pipeline(Config.load(config_path), now_ms=int(time.time() * 1000))
    out = Outputs()
    for start in range(0, len(lines), 500):
        chunk = lines[start : start + 500]
        pipeline.feed([(line, "feed", start + i + 1) for i, line in enumerate(chunk)], out)
    pipeline.flush(out)
    return out


def _run(aws: LocalAws, **kwargs: Any) -> None:
    pipeline_poller(aws, **kwargs).run()
    handlers.flush_handler({}, None)


def _assert_same_as_reference(rows: dict[str, list[dict[str, Any]]], reference: Outputs) -> None:
    events = dedupe(rows["events"], IDS["events"])
    sessions = dedupe(rows["sessions"], IDS["sessions"])
    assert {e["event_id"]: e["session_id"] for e in events} == {
        e["event_id"]: e["session_id"] for e in reference.events
    }
    assert {s["session_id"]: s for s in sessions} == {s["session_id"]: s for s in reference.sessions}
    # Every event row, column for column (JSON gives back what went in).
    assert {e["event_id"]: e for e in events} == {
        e["event_id"]: orjson.loads(orjson.dumps(e)) for e in reference.events
    }
    # A rejected row's source is stream/shard/sequence number: a redelivered record gives an exact copy.
    rejected = dedupe(rows["rejected"], IDS["rejected"])
    assert Counter((r["reason"], r["raw_base64"]) for r in rejected) == Counter(
        (r["reason"], r["raw_base64"]) for r in reference.rejections
    )


def test_same_sessions_and_ids_as_the_embedded_runner(local_aws: LocalAws, config_path: Path, tmp_path: Path) -> None:
    lines = list(generate(FeedShape(events=2000, machines=40, seed=11)))
    put_lines(local_aws, lines)
    _run(local_aws, batch_size=150)
    rows = read_output(local_aws)
    reference = _reference(config_path, lines)
    assert len(reference.sessions) > 80 and reference.rejections
    assert len(rows["events"]) == len(reference.events)  # no crash, no retry: not even an exact copy
    _assert_same_as_reference(rows, reference)

    counts = fetch(local_aws, tmp_path / "lake", Config.load(config_path))
    assert counts == {
        "events": len(reference.events),
        "sessions": len(reference.sessions),
        "rejected": len(reference.rejections),
    }
    dates = {e["event_date"] for e in reference.events}
    assert {p.name for p in (tmp_path / "lake" / "events").iterdir()} == {f"event_date={d}" for d in dates}

    # And against the embedded runner itself (`sessionflow run`, Parquet lake): same mapping, same summaries.
    embedded = _embedded_lake(config_path, lines, tmp_path)
    events = dedupe(rows["events"], IDS["events"])
    assert {e["event_id"]: e["session_id"] for e in events} == {
        e["event_id"]: e["session_id"] for e in embedded["events"]
    }
    columns = set(embedded["sessions"][0])
    ours = {
        s["session_id"]: {k: v for k, v in s.items() if k in columns} for s in dedupe(rows["sessions"], IDS["sessions"])
    }
    assert ours == {s["session_id"]: s for s in embedded["sessions"]}
    _assert_fetched_lake_verifies(tmp_path / "lake", tmp_path / "embedded")
    (ledger,) = (tmp_path / "lake" / "_sessionflow" / "ledger").glob("run-*.json")
    tally = orjson.loads(ledger.read_bytes())["tally"]
    assert tally["records"] == sum(1 for line in lines if line.strip())
    assert tally["duplicates"] == len(reference.duplicates) > 0
    _assert_the_report_reads_it_as_the_embedded_lake(tmp_path / "lake", tmp_path / "embedded", tmp_path)


def _assert_the_report_reads_it_as_the_embedded_lake(fetched: Path, embedded: Path, tmp_path: Path) -> None:
    """``sessionflow report`` on ``aws-local fetch``'s lake: the embedded lake's figures (but the
    per-run figure: each runtime's ledger counts its own way)."""
    from sessionflow.report import figures
    from sessionflow.report.commands import write_report
    from sessionflow.report.lake_db import open_lake

    def built(lake: Path) -> figures.Report:
        db, _ = open_lake(lake)
        figures.select_days(db, None, None)
        return figures.build(db, str(lake))

    ours, theirs = built(fetched), built(embedded)
    for mine, other in zip(ours.figures, theirs.figures, strict=True):
        if mine.key != "runs":
            assert mine.rows == other.rows, mine.key
    page = write_report(fetched, tmp_path / "report.html").path.read_text(encoding="utf-8")
    assert page.count('<svg class="chart"') >= 6


def _assert_fetched_lake_verifies(lake: Path, embedded: Path) -> None:
    """The fetched lake is the embedded runner's lake: same layout and Parquet schema, a ledger that
    ``sessionflow verify`` accepts, and the corruptions it must catch."""
    import shutil

    import pyarrow.dataset as ds

    from sessionflow.lake.verify import verify_lake

    for table in ("events", "sessions"):
        ours = ds.dataset(lake / table, format="parquet", partitioning="hive")
        theirs = ds.dataset(embedded / table, format="parquet", partitioning="hive")
        assert ours.schema == theirs.schema
        assert ours.count_rows() == theirs.count_rows()
    rejected = sorted(p.relative_to(lake).parent.as_posix() for p in (lake / "rejected").rglob("*.jsonl"))
    assert rejected == sorted(
        p.relative_to(embedded).parent.as_posix() for p in (embedded / "rejected").rglob("*.jsonl")
    )
    verdict = verify_lake(lake)
    assert verdict.ok, verdict.render()
    assert verdict.runs == 1 and verdict.files == len(
        [p for p in lake.rglob("*") if p.is_file() and "_sessionflow" not in p.parts]
    )

    deleted = lake.parent / "deleted"
    shutil.copytree(lake, deleted)
    next((deleted / "sessions").rglob("*.parquet")).unlink()
    assert "missing" in verify_lake(deleted).render()

    doubled = lake.parent / "doubled"
    shutil.copytree(lake, doubled)
    one = next((doubled / "events").rglob("*.parquet"))
    shutil.copy(one, one.with_name("copy-" + one.name))
    verdict = verify_lake(doubled)
    assert not verdict.ok and "no ledger lists it" in verdict.render()


def _embedded_lake(config_path: Path, lines: list[bytes], tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """``sessionflow run`` on the same lines; its Parquet lake as rows (JSON-comparable values)."""
    pytest.importorskip("pyarrow", reason="the embedded runner needs sessionflow[local]")
    import pyarrow.dataset as ds

    from sessionflow.cli import main

    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    lake = tmp_path / "embedded"
    assert main(["run", str(feed), "--out", str(lake), "--config", str(config_path), "--quiet", "--workers", "0"]) == 0
    tables = {}
    for table in ("events", "sessions"):
        rows = ds.dataset(lake / table, format="parquet", partitioning="hive").to_table().to_pylist()
        for row in rows:
            for key, value in row.items():
                if hasattr(value, "isoformat"):  # timestamp_ms columns: the JSON outputs carry ISO-8601 text
                    row[key] = value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if table == "sessions":
                row["event_type_counts"] = dict(row["event_type_counts"])
        tables[table] = rows
    return tables


def test_a_poison_record_does_not_block_its_shard(local_aws: LocalAws, config_path: Path) -> None:
    lines = list(generate(FeedShape(events=500, machines=10, seed=5)))
    poison = [b"\xff\xfe\x00 not even utf-8", b'{"event_id": "x", "machine_id": ' + b"[" * 5000, b"A" * 2_000_000]
    lines[100:100] = poison[:2]
    lines[300:300] = [poison[2][:1_000_000]]  # Kinesis' 1 MiB limit; the config's limit rejects it too
    put_lines(local_aws, lines)
    _run(local_aws, batch_size=50, window_s=0.5)  # the window holds partial batches back, never drops them
    rows = read_output(local_aws)
    _assert_same_as_reference(rows, _reference(config_path, lines))
    reasons = {r["raw_base64"]: r["reason"] for r in rows["rejected"]}
    assert reasons[base64.b64encode(poison[0]).decode()] == "invalid_utf8"
    assert reasons[base64.b64encode(poison[1]).decode()] == "malformed_json"


def test_a_record_the_handler_cannot_take_goes_to_the_on_failure_queue(local_aws: LocalAws, config_path: Path) -> None:
    """A record on ``clean`` that is not an event: sessionize fails it every time; the shard moves on."""
    lines = list(generate(FeedShape(events=300, machines=6, seed=9)))
    put_lines(local_aws, lines)
    kinesis = local_aws.client("kinesis")
    poison_seq = kinesis.put_record(StreamName="clean", Data=b"not json", PartitionKey="x")["SequenceNumber"]
    _run(local_aws, batch_size=50, max_retries=2)
    _assert_same_as_reference(read_output(local_aws), _reference(config_path, lines))
    sqs = local_aws.client("sqs")
    queue = sqs.get_queue_url(QueueName=ON_FAILURE_QUEUE)["QueueUrl"]
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    info = orjson.loads(messages[0]["Body"])["KinesisBatchInfo"]
    assert info["startSequenceNumber"] == poison_seq
    assert info["streamArn"].endswith("stream/clean")


def test_retried_batches_change_nothing(local_aws: LocalAws, config_path: Path) -> None:
    """Every batch is delivered twice (Lambda's at-least-once, at its worst): the output is the same."""
    # Dense enough that a batch spans minutes of event time, not hours: a copy is recognised by its
    # event_id while its machine's state is kept (max(idle close, dedupe_horizon) of stream time).
    lines = list(generate(FeedShape(events=800, machines=16, seed=13, days=0.2)))
    put_lines(local_aws, lines)

    def twice(_name: str, handler: Handler) -> Handler:
        def deliver(event: dict[str, Any], context: Any) -> Any:
            handler(orjson.loads(orjson.dumps(event)), context)
            return handler(event, context)

        return deliver

    _run(local_aws, batch_size=80, handler_wrapper=twice)
    rows = read_output(local_aws)
    reference = _reference(config_path, lines)
    # The process step re-puts each batch on `clean`; sessionize drops those copies by event_id and
    # skips the sessionize retries by sequence number: not one extra row reaches S3.
    assert len(rows["events"]) == len(reference.events)
    assert len(rows["sessions"]) == len(reference.sessions)
    _assert_same_as_reference(rows, reference)


class Killed(BaseException):
    """The poller process dying (not an Exception: nothing in the handler path may catch it)."""


def _kill_after(calls: int, where: str) -> Callable[[str, Handler], Handler]:
    counter = {"n": 0}

    def wrapper(name: str, handler: Handler) -> Handler:
        if name != where:
            return handler

        def deliver(event: dict[str, Any], context: Any) -> Any:
            counter["n"] += 1
            if counter["n"] == calls:
                # Die inside the handler once its first effect is done: for sessionize, state written
                # and rows sent, the shard's commit not closed; for process, events put on `clean`.
                runtime = handlers.runtime()
                target: Any = runtime.sessionize.sink if name == "sessionize" else runtime.process.clean
                method = "send" if name == "sessionize" else "put"
                real = getattr(target, method)

                def then_die(*args: Any) -> Any:
                    real(*args)
                    raise Killed

                setattr(target, method, then_die)
            return handler(event, context)

        return deliver

    return wrapper


@pytest.mark.parametrize("where", ["sessionize", "process"])
def test_a_killed_poller_resumes_without_loss(local_aws: LocalAws, config_path: Path, where: str) -> None:
    lines = list(generate(FeedShape(events=800, machines=16, seed=17, days=0.2)))
    put_lines(local_aws, lines)
    with pytest.raises(Killed):
        pipeline_poller(local_aws, batch_size=60, handler_wrapper=_kill_after(5, where)).run()
    handlers.use_runtime(None)  # a new process: new clients, nothing remembered but the stores
    _run(local_aws, batch_size=60)
    rows = read_output(local_aws)
    reference = _reference(config_path, lines)
    _assert_same_as_reference(rows, reference)  # dedupe() raises if two copies of an id differ
    extra = len(rows["events"]) + len(rows["sessions"]) - len(reference.events) - len(reference.sessions)
    assert extra >= 0


def test_a_poller_process_killed_with_sigkill_resumes(local_aws: LocalAws, config_path: Path, tmp_path: Path) -> None:
    """A real ``sessionflow aws-local run`` process, SIGKILLed once output starts reaching S3."""
    import os
    import signal
    import subprocess
    import sys

    lines = list(generate(FeedShape(events=1000, machines=20, seed=19, days=0.2)))
    put_lines(local_aws, lines)
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
        "40",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    s3 = local_aws.client("s3")
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not s3.list_objects_v2(Bucket="sessionflow-lake", Prefix="events/").get("KeyCount"):
            assert first.poll() is None, first.communicate()[0].decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    partial = read_output(local_aws)
    reference = _reference(config_path, lines)
    assert 0 < len(partial["events"]) < len(reference.events)  # it really died mid-stream

    second = subprocess.run([*command, "--flush"], check=False, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert second.returncode == 0, second.stderr.decode()
    _assert_same_as_reference(read_output(local_aws), reference)


@pytest.mark.parametrize(
    ("field", "record", "key"),
    [
        ("machine_id", {"machine_id": "m-1"}, "m-1"),
        ("context.device.id", {"context": {"device": {"id": "dev-7"}}, "machine_id": "not-this"}, "dev-7"),
        ("user_id", {"user_id": 4021}, "4021"),  # a numeric id keys by its text, as `cast` makes it
    ],
)
def test_a_machines_records_share_a_partition_key_whatever_its_field(
    field: str, record: dict[str, Any], key: str
) -> None:
    """Records of one machine must land on one shard: the key reads the configured field, nested or not."""
    assert partition_key(orjson.dumps(record), field) == key
    assert partition_key(orjson.dumps({**record, "event_type": "save"}), field) == key


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"machine_id": true}', b'{"context": "flat"}'])
def test_a_record_without_a_machine_keys_by_its_digest(line: bytes) -> None:
    """No machine to read: a digest of the bytes, so such records spread over the shards."""
    assert partition_key(line, "context.device.id") == partition_key(line, "context.device.id")
    assert len(partition_key(line, "context.device.id")) == 40
