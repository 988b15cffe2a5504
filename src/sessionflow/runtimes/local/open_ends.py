"""An incremental run's last step: the lake's sessions closed as ``end_of_input`` that the run did
not sessionize again, settled as one batch run over all input so far would close them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sessionflow.core import rules
from sessionflow.lake.restatements import log_from_pairs
from sessionflow.lake.writer import LakeWriter
from sessionflow.runtimes.local.restate import FILE, Changes, read_rows
from sessionflow.schema import SESSION_PARTITION

if TYPE_CHECKING:
    from sessionflow.runtimes.local.incremental import Plan


def settle_open_ends(
    plan: Plan, placed_machines: set[str], region_sessions: set[str], changes: Changes, writer: LakeWriter
) -> None:
    """The lake's sessions closed as ``end_of_input`` that the run did not sessionize again, settled
    as one batch run over all input so far would close them: ``timeout`` when their machine had
    events placed after them (out of the region's reach: more than ``timeout`` later), or when the
    stream clock at the end of the run is more than ``timeout`` past them (``rules.end_reason``).
    Each one settled is restated (``updated``). ``placed_machines``: every machine that had events
    placed; ``region_sessions``: every lake session sessionized again."""
    lake = Path(plan.lake)
    timeout = plan.config.session.timeout_ms
    clock = -1 if plan.end_clock is None else plan.end_clock
    names = [name for name in plan.files.sessions if "close_reason" in pq.read_schema(lake / name).names]
    rows = read_rows(lake, names, SESSION_PARTITION, pc.field("close_reason") == rules.END_OF_INPUT)
    if rows is None:
        return
    rows = rows.filter(pc.invert(pc.is_in(rows.column("session_id"), pa.array(sorted(region_sessions), pa.string()))))
    settled = []
    for index, (machine, end) in enumerate(
        zip(rows.column("machine_id").to_pylist(), rows.column("end_ts").to_pylist(), strict=True)
    ):
        if machine in placed_machines or rules.end_reason(clock, end, timeout) == rules.TIMEOUT:
            settled.append(index)
    if not settled:
        return
    rows = rows.take(pa.array(settled, pa.int64()))
    position = rows.schema.get_field_index("close_reason")
    rows = rows.set_column(position, "close_reason", pa.array([rules.TIMEOUT] * rows.num_rows, pa.string()))
    for name, session in zip(rows.column(FILE).to_pylist(), rows.column("session_id").to_pylist(), strict=True):
        changes.removed_sessions[name].add(session)
    changes.sessions += rows.num_rows
    changes.settled += rows.num_rows
    ids = rows.column("session_id").to_pylist()
    pairs = zip(rows.column("machine_id").to_pylist(), ids, ids, strict=True)
    changes.log.append(log_from_pairs(plan.run, pairs, set(ids)))
    writer.sessions.add_table(rows)
