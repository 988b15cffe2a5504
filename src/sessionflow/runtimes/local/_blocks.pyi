# Types of the compiled block reader (_blocks.pyx); see sessionflow.runtimes.local.feeds.
from typing import Any

import pyarrow as pa

from sessionflow.core._native import NativeSessionizer, Placer
from sessionflow.core.sessionizer import Emitter

class Placements(Placer):
    batch: pa.RecordBatch
    remaining: int
    def __init__(self, batch: pa.RecordBatch) -> None: ...
    def placed(self, row: int) -> tuple[str | None, int | None, int | None]: ...
    def columns(self) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array, pa.Array | None]: ...

def process_block(
    sessionizer: NativeSessionizer,
    timestamps: pa.Array,
    event_ids: pa.Array,
    machine_ids: pa.DictionaryArray,
    event_types: pa.DictionaryArray,
    user_ids: pa.Array | None,
    app_versions: pa.Array | None,
    placements: Placements,
    out: Emitter,
) -> None: ...
def arrow_columns(events: list[dict[str, Any]], kinds: tuple[str, ...]) -> list[pa.Array | list[Any]]: ...
def newlines(data: bytes) -> int: ...
