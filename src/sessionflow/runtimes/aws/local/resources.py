"""The local AWS: a moto server on 127.0.0.1 and the resources the pipeline needs.

Moto cannot run Lambda code without Docker, so :mod:`.poller` plays the event source mappings.
Known gaps of moto, and what we do about them: its Firehose writes each PutRecordBatch straight to
S3 under ``<prefix>YYYY/MM/DD/HH/`` (no buffering, compression or dynamic partitioning), so
:func:`fetch` partitions the rows by their date itself; its sequence numbers are small integers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sessionflow.runtimes.aws.settings import Settings

REGION = "us-east-1"
BUCKET = "sessionflow-lake"
ON_FAILURE_QUEUE = "sessionflow-on-failure"
RAW_STREAM = "raw"
PREFIXES = {"events": "events/", "sessions": "sessions/", "rejected": "rejected/"}
PARTITIONS = {"events": "event_date", "sessions": "session_date", "rejected": "reason"}
# What identifies a row, to drop the exact copies at-least-once delivery can leave (docs/aws.md).
IDS = {"events": "event_id", "sessions": "session_id", "rejected": "source"}


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
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.stop()


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
    dynamodb = aws.client("dynamodb")
    if settings.state_table not in dynamodb.list_tables().get("TableNames", []):
        create_table(dynamodb, settings.state_table)
    aws.client("sqs").create_queue(QueueName=ON_FAILURE_QUEUE)


def partition_key(line: bytes, machine_field: str = "machine_id") -> str:
    """The machine id when the line has one (so a machine's events share a shard), else a digest."""
    try:
        value = orjson.loads(line).get(machine_field)
    except (orjson.JSONDecodeError, AttributeError):
        value = None
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


def dedupe(rows: list[dict[str, Any]], id_field: str) -> list[dict[str, Any]]:
    """Drop the rare exact re-deliveries (see docs/aws.md); a differing copy is a bug and raises."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row[id_field]
        if key in seen:
            if seen[key] != row:
                raise ValueError(f"two different rows share {id_field} {key}")
            continue
        seen[key] = row
    return list(seen.values())


def fetch(aws: LocalAws, out: Path, keep_duplicates: bool = False) -> dict[str, int]:
    """Download the output into ``out/<table>/<partition>=<value>/part-0.jsonl`` (deduped by id)."""
    counts = {}
    for table, rows in read_output(aws).items():
        if not keep_duplicates and table in IDS:
            rows = dedupe(rows, IDS[table])
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[str(row.get(PARTITIONS[table]))].append(row)
        for value, group in groups.items():
            directory = out / table / f"{PARTITIONS[table]}={value}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "part-0.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in group))
        counts[table] = len(rows)
    return counts
