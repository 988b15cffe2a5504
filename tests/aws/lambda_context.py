"""What the Lambda runtime hands a handler besides its event, and a small in-memory AWS runtime.

``LambdaContext`` carries the attributes Powertools logs and a clock of the invocation's time left;
``Harness`` wires the real handlers to in-memory streams, Firehoses and state, and turns what
``process`` put on ``clean`` into the next Lambda event, as the event source mapping would.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from sessionflow.config import Config
from sessionflow.core import Outputs, Pipeline
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.outputs import MemorySink, MemoryStreamWriter
from sessionflow.runtimes.aws.settings import Settings
from sessionflow.state.memory import MemoryStore

CLEAN_SHARD = "shardId-000000000003"


class LambdaContext:
    """``remaining_ms``: the values ``get_remaining_time_in_millis`` returns, call after call (the
    last one repeats)."""

    function_name = "sessionflow-test-fn"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sessionflow-test-fn"

    def __init__(self, remaining_ms: Iterable[int] = (60_000,), request_id: str = "req-1") -> None:
        self._remaining: Iterator[int] = iter(remaining_ms)
        self._last = 60_000
        self.aws_request_id = request_id
        self.calls = 0

    def get_remaining_time_in_millis(self) -> int:
        self.calls += 1
        self._last = next(self._remaining, self._last)
        return self._last


class Harness:
    def __init__(self, config: Config, settings: Settings | None = None, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()
        self.clean = MemoryStreamWriter()
        self.sink = MemorySink()
        settings = settings or Settings.from_env()  # POWERTOOLS_SERVICE_NAME and the rest, as in Lambda
        self.runtime = handlers.Runtime.build(settings, self.store, self.clean, self.sink, config=config)
        handlers.use_runtime(self.runtime)

    def clean_event(self, first: int = 0, last: int | None = None) -> dict[str, Any]:
        """The entries on ``clean`` as one Lambda event of one shard, sequence numbers increasing."""
        records = []
        for i, entry in enumerate(self.clean.entries[first:last], start=first):
            seq = str(49_656_547_118_329_548_349_155_380_637_212_390_853_431_398_468_374_233_090 + i)
            records.append(
                {
                    "kinesis": {
                        "partitionKey": entry.partition_key,
                        "sequenceNumber": seq,
                        "data": base64.b64encode(entry.data).decode(),
                        "approximateArrivalTimestamp": 1791277301.5,
                    },
                    "eventSource": "aws:kinesis",
                    "eventID": f"{CLEAN_SHARD}:{seq}",
                    "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/clean",
                }
            )
        return {"Records": records}


def reference(config: Config, lines: list[bytes], now_ms: int) -> Outputs:
    """The core's answer for the same records (the embedded runner's path), arrival time ``now_ms``."""
    pipeline = Pipeline(config, now_ms=now_ms)
    out = Outputs()
    pipeline.feed([(line, "feed", i + 1) for i, line in enumerate(lines)], out)
    pipeline.flush(out)
    return out


def reasons(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(row["reason"] for row in rows)
