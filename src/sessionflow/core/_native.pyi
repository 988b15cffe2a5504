# Types of the compiled sessionizer (_native.pyx); see sessionflow.core.native.
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sessionflow.config import SessionConfig
from sessionflow.core.sessionizer import Emitter, Record

class Placements:
    batch: Any
    session_ids: list[str | None]
    seqs: list[int | None]
    sinces: list[int | None]
    remaining: int
    def __init__(self, batch: Any) -> None: ...

class NativeSession:
    session_id: str
    start_ts: int
    last_ts: int
    first_type: str
    last_type: str
    count: int
    type_counts: dict[str, int]
    user_id: str | None
    app_version: str | None
    closed: bool
    def to_dict(self) -> dict[str, Any]: ...

class NativeMachine:
    machine_id: str
    newest_ts: int
    arrival_clock: int
    session: NativeSession | None
    seen: dict[str, int]
    @property
    def pending(self) -> int: ...
    @property
    def anchor(self) -> int: ...
    def to_dict(self, resolve: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]: ...

class NativeSessionizer:
    config: SessionConfig
    clock: int
    machines: dict[str, NativeMachine]
    def __init__(self, config: SessionConfig, clock: int = -1) -> None: ...
    def process(self, events: Iterable[dict[str, Any]], out: Emitter) -> None: ...
    def process_records(self, records: Iterable[Record], out: Emitter) -> None: ...
    def process_block(
        self,
        timestamps: Sequence[int],
        event_ids: Sequence[str],
        machine_ids: Sequence[str],
        event_types: Sequence[str],
        user_ids: Sequence[str | None],
        app_versions: Sequence[str | None],
        placements: Placements,
        out: Emitter,
    ) -> None: ...
    def end_batch(self, out: Emitter) -> None: ...
    def flush(self, out: Emitter) -> None: ...
    def pending_count(self) -> int: ...
    def snapshot(self, resolve: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]: ...
    @classmethod
    def restore(cls, config: SessionConfig, snapshot: dict[str, Any]) -> NativeSessionizer: ...
