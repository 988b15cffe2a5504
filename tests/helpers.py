"""Small builders shared by the tests: raw records, events and a fixed processing time."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import orjson

from sessionflow.config import Config
from sessionflow.core import Refiner, Rejection, Snapshot

# 2026-10-05T00:00:00Z, a Monday; the processing time is a day later.
T0 = 1_791_158_400_000
NOW = T0 + 86_400_000


def raw_record(**fields: Any) -> bytes:
    """A valid raw record; keyword arguments override or add fields (``None`` removes one)."""
    record: dict[str, Any] = {"event_id": "e-1", "machine_id": "m-1", "event_type": "view", "timestamp": T0}
    record.update(fields)
    return orjson.dumps({k: v for k, v in record.items() if v is not None})


def refine(raw: bytes, config: Config | None = None, now_ms: int = NOW) -> dict[str, Any] | Rejection:
    return Refiner(config or Config()).refine(raw, now_ms)


def event(machine_id: str, ts: int, event_id: str, event_type: str = "view", **extra: Any) -> dict[str, Any]:
    """A valid event as the sessionizer receives it."""
    return {"event_id": event_id, "machine_id": machine_id, "event_type": event_type, "timestamp": ts, **extra}


def through_json(snapshot: Snapshot) -> Snapshot:
    """A snapshot as a state file or a table keeps it: to its dict, to JSON, and back.

    The round trip must give the very snapshot it was given.
    """
    again = Snapshot.from_dict(orjson.loads(orjson.dumps(snapshot.to_dict())))
    assert again == snapshot, "a snapshot changed on its way through JSON"
    return again


class FakeClock:
    """A clock in epoch seconds that a test moves by hand (``clock.now += 60``)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def group_gone(pgid: int, seconds: float) -> bool:
    """True once no process is left in the process group (the workers of a run that ended)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def kinesis_event(
    stream: str, datas: list[bytes], first: int, *, shard: str = "shardId-000000000000", arrived: float = 1791277300.123
) -> dict[str, Any]:
    """A Lambda event from a Kinesis stream, its records numbered from ``first`` (as the service sends it)."""
    return {
        "Records": [
            {
                "kinesis": {
                    "partitionKey": "k",
                    "sequenceNumber": str(10**20 + first + i),
                    "data": base64.b64encode(data).decode(),
                    "approximateArrivalTimestamp": arrived,
                },
                "eventID": f"{shard}:{10**20 + first + i}",
                "eventSourceARN": f"arn:aws:kinesis:us-east-1:123456789012:stream/{stream}",
                "eventSource": "aws:kinesis",
            }
            for i, data in enumerate(datas)
        ]
    }
