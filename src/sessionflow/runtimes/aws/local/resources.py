"""The local AWS: a moto server on 127.0.0.1 and the resources the pipeline needs.

Moto cannot run Lambda code without Docker, so :mod:`.poller` plays the event source mappings.
Known gaps of moto, and what we do about them: its Firehose writes each PutRecordBatch straight to
S3 under ``<prefix>YYYY/MM/DD/HH/`` (no buffering, compression or dynamic partitioning), so
:func:`fetch` partitions the rows by their date itself (into the lake ``sessionflow run`` writes);
its sequence numbers are small integers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core.paths import get_path, parts_of
from sessionflow.runtimes.aws.archive import PREFIX as ARCHIVE_PREFIX
from sessionflow.runtimes.aws.catalog import ROW_KEYS
from sessionflow.runtimes.aws.settings import Settings

REGION = "us-east-1"
BUCKET = "sessionflow-lake"
ON_FAILURE_QUEUE = "sessionflow-on-failure"
RAW_STREAM = "raw"
# The raw archive (docs/aws.md): in AWS a Firehose reads ``raw`` itself; here the poller plays its
# Kinesis source and puts the transformed records on this DirectPut Firehose.
ARCHIVE_FIREHOSE = "raw-archive"
# The Firehoses deliver each table under its name in the lake: events/, sessions/, rejected/.
# (Not the lake's restatements: the streaming path restates nothing.)
PREFIXES = {table: f"{table}/" for table in ("events", "sessions", "rejected")}
# What identifies a row, to drop the exact copies at-least-once delivery can leave (docs/aws.md):
# the keys the deployed Athena views keep one row of.
IDS = ROW_KEYS


def local_environment(endpoint: str) -> dict[str, str]:
    """What a process needs to talk to the local AWS. The keys are moto's dummies, not secrets."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@dataclass
class LocalAws:
    endpoint: str
    settings: Settings

    def client(self, service: str) -> Any:
        import boto3

        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@contextmanager
def moto_server(port: int = 0) -> Iterator[str]:
    """A moto server thread on 127.0.0.1; yields its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise ImportError("the local AWS needs moto: pip install 'sessionflow[dev]' (or 'moto[server]')") from exc
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = _moto_server_with_atomic_dynamodb(ThreadedMotoServer, port)
    server.start()
    host, bound = server.get_host_and_port()
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.stop()


def _moto_server_with_atomic_dynamodb(base: Any, port: int) -> Any:
    """Moto's threaded server, with DynamoDB requests taken one at a time.

    DynamoDB applies a conditional write atomically; moto checks the condition and then writes,
    so two threads can both pass one condition (seen: two writers of one version both won). The
    commit protocol rests on that atomicity, so the local AWS serialises DynamoDB as AWS does.
    """
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    lock = threading.Lock()

    class Server(base):  # type: ignore[misc]
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)

            def serialised(environ: dict[str, Any], start_response: Any) -> Any:
                if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
                    return app(environ, start_response)
                with lock:
                    return list(app(environ, start_response))

            self._server = make_server(self._ip_address, self._port, serialised, True)
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server(ip_address="127.0.0.1", port=port, verbose=False)


def create_resources(aws: LocalAws, raw_shards: int = 2, clean_shards: int = 2) -> None:
    """Streams, delivery streams, bucket, state table and the on-failure queue (idempotent)."""
    from sessionflow.state.dynamodb import create_table

    settings = aws.settings
    s3 = aws.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=BUCKET)
    kinesis = aws.client("kinesis")
    existing = set(kinesis.list_streams().get("StreamNames", []))
    for stream, shards in ((RAW_STREAM, raw_shards), (settings.clean_stream, clean_shards)):
        if stream not in existing:
            kinesis.create_stream(StreamName=stream, ShardCount=shards)
            kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    firehose = aws.client("firehose")
    existing = set(firehose.list_delivery_streams().get("DeliveryStreamNames", []))
    for table, name in settings.firehoses.items():
        if name not in existing:
            firehose.create_delivery_stream(
                DeliveryStreamName=name,
                DeliveryStreamType="DirectPut",
                ExtendedS3DestinationConfiguration={
                    "RoleARN": "arn:aws:iam::123456789012:role/sessionflow-firehose",
                    "BucketARN": f"arn:aws:s3:::{BUCKET}",
                    "Prefix": PREFIXES[table],
                },
            )
    if ARCHIVE_FIREHOSE not in existing:
        firehose.create_delivery_stream(
            DeliveryStreamName=ARCHIVE_FIREHOSE,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/sessionflow-firehose",
                "BucketARN": f"arn:aws:s3:::{BUCKET}",
                "Prefix": ARCHIVE_PREFIX,  # moto adds YYYY/MM/DD/HH/, as the deployed prefix does
            },
        )
    dynamodb = aws.client("dynamodb")
    if settings.state_table not in dynamodb.list_tables().get("TableNames", []):
        create_table(dynamodb, settings.state_table)
    aws.client("sqs").create_queue(QueueName=ON_FAILURE_QUEUE)


def partition_key(line: bytes, machine_field: str = "machine_id") -> str:
    """The machine id when the line has one (so a machine's events share a shard), else a digest.

    ``machine_field`` is the configured field, a dotted path into nested objects as everywhere
    (``context.device.id``); a whole-number id (a numeric ``user_id``) keys by its text, as a
    ``cast`` rule would make it.
    """
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    value = get_path(record, parts_of(machine_field)) if isinstance(record, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and 0 < len(value.encode()) <= 256:
        return value
    import hashlib

    return hashlib.sha1(line).hexdigest()


def put_lines(
    aws: LocalAws, lines: Iterable[bytes], stream: str = RAW_STREAM, machine_field: str = "machine_id"
) -> int:
    """Put records on ``raw`` in order, 500 per PutRecords, retrying what Kinesis refuses."""
    kinesis = aws.client("kinesis")
    count = 0
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        pending = chunk
        while pending:
            response = kinesis.put_records(StreamName=stream, Records=pending)
            pending = [e for e, r in zip(pending, response["Records"], strict=True) if "ErrorCode" in r]

    for line in lines:
        line = line.rstrip(b"\r\n")
        if not line:
            continue  # Kinesis records cannot be empty; the embedded runner skips blank lines too
        chunk.append({"Data": line, "PartitionKey": partition_key(line, machine_field)})
        count += 1
        if len(chunk) == 500:
            flush()
            chunk = []
    flush()
    return count


def read_output(aws: LocalAws) -> dict[str, list[dict[str, Any]]]:
    """Every row the Firehoses delivered to S3, as written (duplicates included)."""
    s3 = aws.client("s3")
    rows: dict[str, list[dict[str, Any]]] = {table: [] for table in PREFIXES}
    for table, prefix in PREFIXES.items():
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        for key in sorted(keys):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            rows[table].extend(orjson.loads(line) for line in body.splitlines() if line.strip())
    return rows


def dedupe(rows: list[dict[str, Any]], id_fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Drop the rare exact re-deliveries (see docs/aws.md); a differing copy is a bug and raises."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[field] for field in id_fields)
        if key in seen:
            if seen[key] != row:
                raise ValueError(f"two different rows share {', '.join(id_fields)} {key}")
            continue
        seen[key] = row
    return list(seen.values())


def fetch(aws: LocalAws, out: Path, config: Config, keep_duplicates: bool = False) -> dict[str, int]:
    """Download the output into the lake ``out`` (deduped by id): the layout, Parquet schema, ledger
    and commit protocol ``sessionflow run`` uses, so ``sessionflow verify out`` checks it.

    A fetch is a snapshot of what S3 holds now: it replaces whatever lake ``out`` held (run 1).
    """
    rows = read_output(aws)
    if not keep_duplicates:
        rows = {table: dedupe(table_rows, IDS[table]) for table, table_rows in rows.items()}
    write_lake(rows, out, config, raw_records(aws))
    return {table: len(table_rows) for table, table_rows in rows.items()}


def raw_records(aws: LocalAws, stream: str = RAW_STREAM) -> int:
    """Records on the input stream, all shards from the start (moto keeps them all)."""
    kinesis = aws.client("kinesis")
    total = 0
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if not response["Records"]:
                break
            total += len(response["Records"])
            iterator = response.get("NextShardIterator")
    return total


def write_lake(rows: dict[str, list[dict[str, Any]]], out: Path, config: Config, records: int) -> None:
    """The delivered rows as a one-run lake, committed atomically (a reader sees the old or the new)."""
    from sessionflow.lake.commit import commit_run, publish, recover
    from sessionflow.lake.ledger import ledger_record
    from sessionflow.lake.lock import LakeLock
    from sessionflow.lake.writer import LakeWriter

    out.mkdir(parents=True, exist_ok=True)
    with LakeLock(out):
        recover(out)
        writer = LakeWriter(out, config, 1)
        try:
            writer.write(rows["events"], rows["sessions"], rows["rejected"])
            files = writer.close()
            ledger = ledger_record(
                {"run": 1, "written_by": "aws-local fetch", "tally": _tally(rows, records)},
                files,
                replace=True,
                config_fingerprint=None,
                open_sessions=_open_sessions(rows),
            )
            commit_run(writer.staging, run=1, files=files, ledger=ledger, state_path=None, replace=True)
        except BaseException:
            writer.abort()
            raise
        publish(out, writer.staging, 1)


def _tally(rows: dict[str, list[dict[str, Any]]], records: int) -> dict[str, Any]:
    """The embedded runner's tally of what reached S3. ``records``: those put on the raw stream. The
    sessionize handler drops a duplicate without delivering anything, so ``duplicates`` is what is
    left: the records that became neither an event nor a rejection. After a flush that is exactly
    the duplicates; before it, the events still buffered in the state count too."""
    events = rows["events"]
    rejected = Counter(row["reason"] for row in rows["rejected"])
    return {
        "records": records,
        "blank": 0,  # put_lines skips blank lines: Kinesis records cannot be empty
        "events": len(events),
        "rejected": dict(sorted(rejected.items())),
        "duplicates": records - len(events) - len(rows["rejected"]),
        "late": sum(1 for event in events if event.get("late")),
        "sessions": len(rows["sessions"]),
    }


def _open_sessions(rows: dict[str, list[dict[str, Any]]]) -> tuple[int, int]:
    """(sessions with events but no summary yet, their events): open in the state until a flush."""
    summarised = {session["session_id"] for session in rows["sessions"]}
    open_events = [e["session_id"] for e in rows["events"] if not e.get("late") and e["session_id"] not in summarised]
    return len(set(open_events)), len(open_events)
