# Types of the compiled sessionizer's state (_state.pyx); see sessionflow.core.native.
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
