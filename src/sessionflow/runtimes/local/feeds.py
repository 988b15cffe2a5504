"""How the embedded runner's blocks reach the sessionizer: chosen once, by :func:`sessionizing`.

Two feeds, one emitter (:class:`~sessionflow.runtimes.local.engine.Assembler`):

* **records** (any sessionizer; the only one for the pure sessionizer): the workers send each
  block's key columns as lists, and each row goes in as one record whose payload is a
  ``(holder, row)`` handle; closed sessions come out as summary dicts;
* **blocks** (the compiled sessionizer, with the compiled block reader ``_blocks.pyx``): the
  sessionizer reads a block's Arrow key columns, places its rows in C arrays and collects closed
  sessions as columns for one Arrow table per block.

The choice follows the core's (``sessionflow.core.native``: ``SESSIONFLOW_PURE=1`` rules the
compiled code out); results are the same either way (``tests/local/test_engine_equivalence.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from sessionflow.core import Sessionizer
from sessionflow.core.native import compiled

if TYPE_CHECKING:
    from sessionflow.runtimes.local.engine import Assembler, Block

# What the sessionizer reads of a block (the core's Record fields); ``arrived_late`` is the batch
# run's own column (runtimes/local/batch.py: what arrival order said, the block being sorted).
KEY_COLUMNS = (
    "timestamp",
    "event_id",
    "machine_id",
    "event_type",
    "user_id",
    "app_version",
    "os",
    "document_id",
    "arrived_late",
)


class Feed(Protocol):
    """How the engine hands blocks to the sessionizer: chosen once, by :func:`sessionizing`."""

    name: str
    sends_keys: bool  # the workers send the key columns as lists (KEY_COLUMNS)

    def transpose(self, events: list[dict[str, Any]], width: int) -> list[Sequence[Any]]:
        """Event dicts with the same ``width`` keys in the same order -> ``width`` value columns."""

    def process(self, block: Block, sessionizer: Sessionizer, out: Assembler) -> Any:
        """Runs the sessionizer on the block's rows; returns the holder its rows are placed in."""

    def collect_sessions(self, sessionizer: Sessionizer) -> None:
        """From now on, closed sessions as columns for :meth:`take_sessions`, where the feed can."""

    def take_sessions(self, sessionizer: Sessionizer) -> Mapping[str, Sequence[Any]] | None:
        """The sessions closed since the last call as columns, or None: they went to ``out.session``."""


class _RecordFeed:
    """Any sessionizer, one record per row: the key columns as lists, each row's payload a
    ``(holder, row)`` handle released to the emitter, closed sessions as summary dicts."""

    name = "records"
    sends_keys = True

    def __reduce__(self) -> str:
        return "RECORDS"  # the module's one instance, also in a spawned worker

    def transpose(self, events: list[dict[str, Any]], width: int) -> list[Sequence[Any]]:
        return list(zip(*map(tuple, map(dict.values, events)), strict=True)) if events else [()] * width

    def process(self, block: Block, sessionizer: Sessionizer, out: Assembler) -> _Pending:
        if block.keys is None:
            raise AssertionError("the workers sent no key columns, and the record feed needs them")
        holder = _Pending(block.batch)
        rows = block.batch.num_rows
        records = zip(*block.keys, zip([holder] * rows, range(rows), strict=True), strict=True)
        sessionizer.process_records(records, out)
        return holder

    def collect_sessions(self, sessionizer: Sessionizer) -> None:
        pass  # the summaries go to out.session

    def take_sessions(self, sessionizer: Sessionizer) -> None:
        return None


class _BlockFeed:
    """The compiled sessionizer, through the compiled block reader (``_blocks.pyx``): it reads a
    block's Arrow key columns, places its rows in C arrays and collects closed sessions as columns."""

    name = "blocks"
    sends_keys = False

    def __reduce__(self) -> str:
        return "BLOCKS"

    @staticmethod
    def _reader() -> Any:
        from sessionflow.runtimes.local import _blocks  # imported by sessionizing() already

        return _blocks

    def transpose(self, events: list[dict[str, Any]], width: int) -> list[Sequence[Any]]:
        columns: list[Sequence[Any]] = self._reader().transpose(events, width)
        return columns

    def process(self, block: Block, sessionizer: Sessionizer, out: Assembler) -> Any:
        blocks = self._reader()
        batch = block.batch
        names = batch.schema.names
        columns: list[Any] = [batch.column(name) if name in names else None for name in KEY_COLUMNS]
        # Machine ids, event types and document ids, read for every row: one object per value (in
        # C++), each hashed once per block. User ids, app versions and os are read only for a
        # session's first.
        columns[2:4] = [pc.dictionary_encode(column) for column in columns[2:4]]
        if columns[7] is not None:
            columns[7] = pc.dictionary_encode(columns[7])
        holder = blocks.Placements(batch)
        blocks.process_block(sessionizer, *columns, holder, out)
        return holder

    def collect_sessions(self, sessionizer: Sessionizer) -> None:
        sessionizer.collect_sessions()  # type: ignore[attr-defined]  # a NativeSessionizer's

    def take_sessions(self, sessionizer: Sessionizer) -> Mapping[str, Sequence[Any]]:
        columns: Mapping[str, Sequence[Any]] = sessionizer.take_sessions()  # type: ignore[attr-defined]
        return columns


RECORDS = _RecordFeed()
BLOCKS = _BlockFeed()


def sessionizing() -> Feed:
    """The feed for the sessionizer the core chose (``sessionflow.core.native``): blocks when it is
    the compiled one and the block reader is built, else records (``SESSIONFLOW_PURE=1``: records)."""
    if compiled() is None:
        return RECORDS
    try:
        from sessionflow.runtimes.local import _blocks  # noqa: F401 - built or not
    except ImportError:
        return RECORDS
    return BLOCKS


class _Pending:
    """A block waiting for all of its rows to be placed in sessions (``_blocks.Placements`` is its twin).

    The session columns are kept as three lists, filled row by row as the sessionizer places them:
    ``seqs`` holds 0 (no session is ever numbered 0) for a row not placed (a duplicate, or still in
    the reorder buffer) and None for a late row, so the table is built with no loop over rows.
    """

    __slots__ = ("batch", "remaining", "seqs", "session_ids", "sinces")

    def __init__(self, batch: pa.RecordBatch) -> None:
        rows = batch.num_rows
        self.batch = batch
        self.remaining = rows
        self.session_ids: list[str | None] = [None] * rows
        self.seqs: list[int | None] = [0] * rows
        self.sinces: list[int | None] = [None] * rows

    def columns(self) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array, pa.Array | None]:
        """``(session_id, session_seq, ms_since_prev, late)`` and the placed-row mask (None: all)."""
        seqs = pa.array(self.seqs, pa.int32())
        placed = pc.fill_null(pc.not_equal(seqs, 0), True)
        late = pc.is_null(seqs)
        session_ids = pa.array(self.session_ids, pa.string())
        return session_ids, seqs, pa.array(self.sinces, pa.int64()), late, placed if placed.false_count else None
