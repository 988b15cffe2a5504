"""Where the handlers' outputs go: Firehose delivery streams and the ``clean`` Kinesis stream.

Each sink is a small class with the client injected, so the same handler code runs against AWS,
the local AWS (moto server) or, in the benchmark, an in-memory sink.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

Row = dict[str, Any]

# Firehose PutRecordBatch limits: 500 records and 4 MiB per call.
_FIREHOSE_MAX_RECORDS = 500
_FIREHOSE_MAX_BYTES = 4 * 1024 * 1024 - 64 * 1024
# Kinesis PutRecords limits: 500 records and 5 MiB per call.
_KINESIS_MAX_RECORDS = 500
_KINESIS_MAX_BYTES = 5 * 1024 * 1024 - 64 * 1024
_SEND_ATTEMPTS = 5


class Sink(Protocol):
    def send(self, rows: Mapping[str, Sequence[Row]]) -> None:
        """Deliver rows per output table (events, sessions, rejected); raise if any cannot be."""


def encode_row(row: Row) -> bytes:
    # Newline-delimited: Firehose concatenates records into one S3 object.
    return orjson.dumps(row) + b"\n"


def _chunks(blobs: Sequence[bytes], max_records: int, max_bytes: int) -> list[list[bytes]]:
    chunks: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for blob in blobs:
        if current and (len(current) == max_records or size + len(blob) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(blob)
        size += len(blob)
    if current:
        chunks.append(current)
    return chunks


class FirehoseSink:
    """PutRecordBatch with retries of the records Firehose refused (throttling, service errors)."""

    def __init__(self, client: Any, streams: Mapping[str, str], sleep: Any = time.sleep) -> None:
        self.client = client
        self.streams = dict(streams)
        self.calls = 0
        self.retried = 0  # records refused and sent again
        self._sleep = sleep

    def send(self, rows: Mapping[str, Sequence[Row]]) -> None:
        for table, table_rows in rows.items():
            if not table_rows:
                continue
            stream = self.streams[table]
            for chunk in _chunks([encode_row(r) for r in table_rows], _FIREHOSE_MAX_RECORDS, _FIREHOSE_MAX_BYTES):
                self._put(stream, chunk)

    def _put(self, stream: str, blobs: list[bytes]) -> None:
        pending = blobs
        for attempt in range(_SEND_ATTEMPTS):
            self.calls += 1
            self.retried += len(pending) if attempt else 0
            response = self.client.put_record_batch(
                DeliveryStreamName=stream, Records=[{"Data": blob} for blob in pending]
            )
            if not response.get("FailedPutCount"):
                return
            pending = [
                blob
                for blob, result in zip(pending, response["RequestResponses"], strict=True)
                if "ErrorCode" in result
            ]
            self._sleep(min(2.0, 0.1 * 2**attempt))
        raise RuntimeError(f"Firehose {stream}: {len(pending)} records still refused after {_SEND_ATTEMPTS} attempts")


@dataclass
class MemorySink:
    """Keeps what it is sent; the benchmark and unit tests read it back."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    calls: int = 0

    def send(self, rows: Mapping[str, Sequence[Row]]) -> None:
        for table, table_rows in rows.items():
            if table_rows:
                self.calls += 1
                # A deep copy through JSON: exactly what a reader of S3 would get back.
                self.rows.setdefault(table, []).extend(orjson.loads(orjson.dumps(list(table_rows))))


@dataclass(frozen=True, slots=True)
class StreamEntry:
    partition_key: str
    data: bytes


class StreamWriter(Protocol):
    def put(self, entries: Sequence[StreamEntry]) -> list[bool]:
        """Put entries in order; True for each entry the stream accepted."""


class KinesisWriter:
    """PutRecords to one stream; refused entries are reported, not retried here.

    Retrying a refused entry inline would put it after later entries of the same machine; instead
    the handler fails that record and Lambda redelivers from it, keeping each machine's order.
    """

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.calls = 0

    def put(self, entries: Sequence[StreamEntry]) -> list[bool]:
        accepted: list[bool] = []
        sizes = [len(e.data) + len(e.partition_key) for e in entries]
        start = 0
        while start < len(entries):
            end, size = start, 0
            while end < len(entries) and end - start < _KINESIS_MAX_RECORDS and size + sizes[end] <= _KINESIS_MAX_BYTES:
                size += sizes[end]
                end += 1
            end = max(end, start + 1)
            self.calls += 1
            response = self.client.put_records(
                StreamName=self.stream,
                Records=[{"Data": e.data, "PartitionKey": e.partition_key} for e in entries[start:end]],
            )
            accepted.extend("ErrorCode" not in result for result in response["Records"])
            start = end
        return accepted


@dataclass
class MemoryStreamWriter:
    entries: list[StreamEntry] = field(default_factory=list)

    def put(self, entries: Sequence[StreamEntry]) -> list[bool]:
        self.entries.extend(entries)
        return [True] * len(entries)
