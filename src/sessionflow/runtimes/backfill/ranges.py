"""What a date-range backfill needs besides the range's events: per machine, its newest timestamp
in the whole input and its sessions in the lake before the range (``stages.RANGE_COLUMNS``); and,
after, how many machines' numbering after the range the range changed."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812 - the Spark convention

from sessionflow.runtimes.backfill.lakefs import HadoopFs
from sessionflow.runtimes.backfill.options import DateRange
from sessionflow.runtimes.backfill.stages import SESSION, SESSION_PREFIX, SESSIONS_BEFORE


@dataclass(frozen=True)
class RangeContext:
    """What a range run's machines need besides their events: each machine's newest timestamp in
    the whole input, the lake's sessions (None: it has none), the stream clock at the input's end."""

    newest: DataFrame
    lake_sessions: DataFrame | None
    clock: int


def lake_sessions(spark: SparkSession, fs: HadoopFs, out_uri: str) -> DataFrame | None:
    """The lake's sessions as they are before the run (machine_id, start_ts), or None."""
    if not fs.exists(f"{out_uri}/sessions") or not any(
        name.endswith(".parquet") for name in fs.list_files(f"{out_uri}/sessions")
    ):
        return None
    return spark.read.parquet(f"{out_uri}/sessions").select("machine_id", "start_ts")


def with_machine_context(rows: DataFrame, context: RangeContext, lo: int) -> DataFrame:
    """Each row with its machine's ``RANGE_COLUMNS`` (see ``stages.sessionize_machine``)."""
    rows = rows.join(context.newest, "machine_id")
    if context.lake_sessions is None:
        return rows.withColumn(SESSIONS_BEFORE, F.lit(0).cast("long"))
    before = (
        context.lake_sessions.filter(F.col("start_ts") < lo)
        .groupBy("machine_id")
        .agg(F.count("*").alias(SESSIONS_BEFORE))
    )
    return rows.join(before, "machine_id", "left").fillna(0, [SESSIONS_BEFORE])


def renumbered(sessionized: DataFrame, lake_sessions: DataFrame | None, date_range: DateRange) -> int:
    """Machines whose count of sessions in the range changed and that have sessions after it."""
    if lake_sessions is None:
        return 0
    start = F.col("start_ts")
    old = lake_sessions.filter((start >= date_range.lo) & (start < date_range.hi)).groupBy("machine_id").count()
    new = (
        sessionized.filter(F.col("kind") == SESSION)
        .select(F.col(SESSION_PREFIX + "machine_id").alias("machine_id"))
        .groupBy("machine_id")
        .count()
        .withColumnRenamed("count", "new")
    )
    changed = old.join(new, "machine_id", "full_outer").filter(
        ~F.coalesce(F.col("count"), F.lit(0)).eqNullSafe(F.coalesce(F.col("new"), F.lit(0)))
    )
    after = lake_sessions.filter(start >= date_range.hi).select("machine_id").distinct()
    return int(changed.join(after, "machine_id").count())
