"""A range backfill's restatement log: the sessions of the replaced days whose rows changed.

The days' old files (those the run removes) are compared with its staged new ones on the cluster:
events joined on (machine_id, event_id) give the distinct (old id, new id) pairs, and old session
rows with no identical new row are the changed ones. The driver collects only those (about one
row per session of the range) and hands them to the same pairing rule the embedded runner uses,
:func:`sessionflow.lake.restatements.log_from_pairs`. The log is staged with the days' files, so
it is swapped in with them and listed in the run's ledger.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from sessionflow.lake.restatements import log_file, log_from_pairs
from sessionflow.runtimes.backfill.lakefs import HadoopFs
from sessionflow.schema import SESSION_COLUMNS

# What places an event in its session: a restated event is one where any of these changed.
_SESSION_PLACE = ("session_id", "session_seq", "ms_since_prev")


@dataclass
class Restated:
    """What a range backfill's ledger says of its restatements."""

    log_rows: int = 0
    sessions: int = 0  # old session ids replaced
    events: int = 0  # old events whose session columns changed
    files: list[str] = field(default_factory=list)  # the staged log, lake-relative (or nothing)


def stage_restatement_log(
    spark: Any, fs: HadoopFs, out: str, staging: str, removed: list[dict[str, Any]], run: int
) -> Restated:
    """Compare the removed files with the staged ones; stage the log when a session changed."""
    from pyspark.sql import functions as F  # noqa: N812 - the Spark convention

    old_files = {
        table: [f"{out}/{name}" for r in removed for name in r["files"] if name.startswith(f"{table}/")]
        for table in ("events", "sessions")
    }
    if not old_files["events"] and not old_files["sessions"]:
        return Restated()  # nothing was in those days: no session of the lake changes
    place = [*_SESSION_PLACE]
    old_events = _read(spark, old_files["events"], ["machine_id", "event_id", *place])
    new_events = _read(spark, _staged(fs, staging, "events"), ["machine_id", "event_id", *place])
    restated_events = 0
    pairs: list[tuple[str, str, str]] = []
    if old_events is not None and new_events is not None:
        old = old_events.select("machine_id", "event_id", *(F.col(c).alias(f"old_{c}") for c in place))
        new = new_events.select("machine_id", "event_id", *(F.col(c).alias(f"new_{c}") for c in place))
        joined = old.join(new, ["machine_id", "event_id"]).persist()
        try:
            moved = [~F.col(f"old_{c}").eqNullSafe(F.col(f"new_{c}")) for c in place]
            changed_place = moved[0] | moved[1] | moved[2]
            restated_events = joined.filter(changed_place).count()
            distinct = (
                joined.filter(F.col("old_session_id").isNotNull() & F.col("new_session_id").isNotNull())
                .select("machine_id", "old_session_id", "new_session_id")
                .distinct()
                .collect()
            )
        finally:
            joined.unpersist()
        pairs = [(row["machine_id"], row["old_session_id"], row["new_session_id"]) for row in distinct]
    changed = _changed_sessions(spark, fs, old_files["sessions"], staging)
    log = log_from_pairs(run, pairs, changed)
    if log.num_rows == 0:
        return Restated(events=restated_events)
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(log, buffer)
    fs.write_bytes(f"{staging}/{log_file(run)}", buffer.getvalue())
    return Restated(
        log_rows=log.num_rows,
        sessions=len(set(log["old_session_id"].to_pylist())),
        events=restated_events,
        files=[log_file(run)],
    )


def _staged(fs: HadoopFs, staging: str, table: str) -> list[str]:
    folder = f"{staging}/{table}"
    return [uri for uri in fs.list_files(folder) if uri.endswith(".parquet")] if fs.exists(folder) else []


def _read(spark: Any, files: list[str], columns: list[str]) -> Any:
    return spark.read.parquet(*files).select(*columns) if files else None


def _changed_sessions(spark: Any, fs: HadoopFs, old_files: list[str], staging: str) -> set[str]:
    """Old session ids with no identical row among the staged sessions (changed, or gone)."""
    from pyspark.sql import functions as F  # noqa: N812

    old = _read(spark, old_files, [name for name, _ in SESSION_COLUMNS])
    if old is None:
        return set()
    new = _read(spark, _staged(fs, staging, "sessions"), [name for name, _ in SESSION_COLUMNS])

    def comparable(frame: Any) -> Any:
        # A map has no equality in Spark: its entries, sorted, do.
        counts = F.array_sort(F.map_entries("event_type_counts")).alias("event_type_counts")
        return frame.select(*(counts if name == "event_type_counts" else F.col(name) for name, _ in SESSION_COLUMNS))

    gone = comparable(old) if new is None else comparable(old).subtract(comparable(new))
    return {row["session_id"] for row in gone.select("session_id").distinct().collect()}
