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

from sessionflow.state.throttling import RETRIED, backoff, error_code, retrying

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
        """Deliver rows per output table (events, sessions, rejected); raise if any cannot be.

        A sink that delivered some rows before failing raises :class:`DeliveryError` naming them,
        so a retry need not send them again."""


class DeliveryError(RuntimeError):
    """Some rows could not be delivered; ``delivered`` holds, per table, the indexes of those that were."""

    def __init__(self, message: str, delivered: dict[str, list[int]]) -> None:
        super().__init__(message)
        self.delivered = delivered


def encode_row(row: Row) -> bytes:
    # Newline-delimited: Firehose concatenates records into one S3 object.
    return orjson.dumps(row) + b"\n"


def _chunks(sizes: Sequence[int], max_records: int, max_bytes: int) -> list[list[int]]:
    """Indexes grouped into calls of at most ``max_records`` items and ``max_bytes``, in order."""
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, length in enumerate(sizes):
        if current and (len(current) == max_records or size + length > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(index)
        size += length
    if current:
        chunks.append(current)
    return chunks


class FirehoseSink:
    """PutRecordBatch; what Firehose refuses (per record, or the whole call throttled) is sent
    again with backoff, every table and chunk first: one refused chunk does not hold back the rest."""

    def __init__(self, client: Any, streams: Mapping[str, str], sleep: Any = time.sleep) -> None:
        self.client = client
        self.streams = dict(streams)
        self.calls = 0
        self.retried = 0  # records refused and sent again
        self._sleep = sleep

    def send(self, rows: Mapping[str, Sequence[Row]]) -> None:
        pending = {table: [encode_row(r) for r in table_rows] for table, table_rows in rows.items() if table_rows}
        left = {table: list(range(len(blobs))) for table, blobs in pending.items()}
        for attempt in range(_SEND_ATTEMPTS):
            for table, indexes in left.items():
                blobs = pending[table]
                self.retried += len(indexes) if attempt else 0
                refused: list[int] = []
                for chunk in _chunks([len(blobs[i]) for i in indexes], _FIREHOSE_MAX_RECORDS, _FIREHOSE_MAX_BYTES):
                    refused.extend(self._put(self.streams[table], [indexes[i] for i in chunk], blobs))
                left[table] = refused
            left = {table: indexes for table, indexes in left.items() if indexes}
            if not left:
                return
            if attempt + 1 < _SEND_ATTEMPTS:
                self._sleep(backoff(attempt))
        delivered = {
            table: sorted(set(range(len(blobs))) - set(left.get(table, ()))) for table, blobs in pending.items()
        }
        refused_count = sum(len(indexes) for indexes in left.values())
        raise DeliveryError(
            f"Firehose: {refused_count} records still refused after {_SEND_ATTEMPTS} attempts", delivered
        )

    def _put(self, stream: str, indexes: list[int], blobs: list[bytes]) -> list[int]:
        """One PutRecordBatch; the indexes it refused (all of them when the call is throttled)."""
        self.calls += 1
        try:
            response = self.client.put_record_batch(
                DeliveryStreamName=stream, Records=[{"Data": blobs[i]} for i in indexes]
            )
        except Exception as exc:
            if error_code(exc) in RETRIED:
                return indexes
            raise
        if not response.get("FailedPutCount"):
            return []
        return [i for i, result in zip(indexes, response["RequestResponses"], strict=True) if "ErrorCode" in result]


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
    the handler fails that record and Lambda redelivers from it. Once a call refused an entry,
    the later calls are not made (their entries are reported refused): Lambda redelivers them
    anyway. A call throttled as a whole wrote nothing, so it is made again (:func:`retrying`).
    """

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.calls = 0

    def put(self, entries: Sequence[StreamEntry]) -> list[bool]:
        accepted: list[bool] = []
        sizes = [len(e.data) + len(e.partition_key) for e in entries]
        for chunk in _chunks(sizes, _KINESIS_MAX_RECORDS, _KINESIS_MAX_BYTES):
            if not all(accepted):
                accepted.extend(False for _ in chunk)
                continue
            self.calls += 1
            response = retrying(
                self.client.put_records,
                StreamName=self.stream,
                Records=[{"Data": entries[i].data, "PartitionKey": entries[i].partition_key} for i in chunk],
            )
            accepted.extend("ErrorCode" not in result for result in response["Records"])
        return accepted


@dataclass
class MemoryStreamWriter:
    entries: list[StreamEntry] = field(default_factory=list)

    def put(self, entries: Sequence[StreamEntry]) -> list[bool]:
        self.entries.extend(entries)
        return [True] * len(entries)
