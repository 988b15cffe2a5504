"""The raw archive: every record of the ``raw`` stream, kept in S3 under ``raw/`` for good.

A Firehose reads ``raw`` (its Kinesis source) and writes gzip objects under
``raw/YYYY/MM/DD/HH/``; its record transformation (:func:`transform`, the ``archive`` Lambda) turns
each record into one JSON line that keeps where it was on the stream::

    {"shard": "shardId-...", "seq": "4960...", "arrival": 1791270000123, "key": "<partition key>",
     "data": "<the record's bytes, base64>"}

So the archive is the input as it arrived, exactly (bytes that are not UTF-8 or not JSON
included), and each record is found again by its shard and sequence number: ``sessionflow
backfill --archive`` reads it (the ``data`` of each line is the line it sessionizes), and
``sessionflow aws redrive`` replays the range a failure-queue message names (:mod:`.redrive`). The
stream keeps records 24 hours; the archive keeps them as long as the bucket does.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

PREFIX = "raw/"
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    shard: str
    seq: int
    arrival_ms: int
    key: str
    data: bytes

    def line(self) -> bytes:
        value = {
            "shard": self.shard,
            "seq": str(self.seq),
            "arrival": self.arrival_ms,
            "key": self.key,
            "data": base64.b64encode(self.data).decode("ascii"),
        }
        return orjson.dumps(value) + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> ArchivedRecord:
        value = orjson.loads(line)
        return cls(
            value["shard"], int(value["seq"]), int(value["arrival"]), value["key"], base64.b64decode(value["data"])
        )


def transform(event: dict[str, Any]) -> dict[str, Any]:
    """Firehose's record transformation for a Kinesis source: each record as an archive line."""
    records = []
    for record in event["records"]:
        metadata = record["kinesisRecordMetadata"]
        archived = ArchivedRecord(
            shard=metadata["shardId"],
            seq=int(metadata["sequenceNumber"]),
            arrival_ms=int(metadata["approximateArrivalTimestamp"]),
            key=metadata["partitionKey"],
            data=base64.b64decode(record["data"]),
        )
        records.append(
            {
                "recordId": record["recordId"],
                "result": "Ok",
                "data": base64.b64encode(archived.line()).decode("ascii"),
            }
        )
    return {"records": records}


def hour_prefixes(first_ms: int, last_ms: int, prefix: str = PREFIX) -> list[str]:
    """The archive's hour folders from ``first_ms`` to ``last_ms`` (UTC), both included."""
    start = datetime.fromtimestamp(first_ms / 1000, UTC).replace(minute=0, second=0, microsecond=0)
    end = datetime.fromtimestamp(last_ms / 1000, UTC)
    hours = []
    while start <= end:
        hours.append(f"{prefix}{start:%Y/%m/%d/%H}/")
        start += timedelta(hours=1)
    return hours


def read_object(body: bytes) -> Iterator[ArchivedRecord]:
    """The records of one archive object (gzip, as Firehose writes them, or plain)."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    for line in body.splitlines():
        if line.strip():
            yield ArchivedRecord.from_line(line)


def find(
    s3: Any, bucket: str, shard: str, first: int, last: int, around_ms: tuple[int, int], prefix: str = PREFIX
) -> list[ArchivedRecord]:
    """The archived records of ``shard`` with sequence numbers ``first`` to ``last``, in order, read
    from the hour folders of ``around_ms`` (an arrival time window); each once, copies left out."""
    found: dict[int, ArchivedRecord] = {}
    for folder in hour_prefixes(*around_ms, prefix=prefix):
        for key in _keys(s3, bucket, folder):
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            for record in read_object(body):
                if record.shard == shard and first <= record.seq <= last:
                    found.setdefault(record.seq, record)
    return [found[seq] for seq in sorted(found)]


def _keys(s3: Any, bucket: str, prefix: str) -> Iterable[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"]
