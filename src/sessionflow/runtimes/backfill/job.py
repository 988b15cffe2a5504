"""The Spark backfill job: raw JSON lines -> the same lake ``sessionflow run`` writes.

Run it with ``sessionflow backfill`` (a local Spark) or submit this file to a cluster where the
sessionflow wheel is installed (docs/backfill.md: Glue, EMR Serverless)::

    spark-submit job.py s3://raw/events/ --out s3://lake/ --config s3://conf/sessionflow.toml

How it is built (see docs/backfill.md for the why):

1. ``spark.read.text`` with ``lineSep="\\n"``, the value cast to binary: Spark keeps a line's bytes as
   they are (invalid UTF-8 included) and splits lines exactly where the embedded runner does.
   ``_metadata.file_path``/``file_block_start`` give each line its arrival key.
2. ``mapInArrow``: the core's ``strip_record`` + ``Refiner.refine`` on every line.
3. Rows hash-partitioned and sorted by machine_id, then ``mapInArrow``: per machine, first arrival
   wins per event_id (a later copy of other content is rejected as ``conflicting_duplicate``, its
   bytes read again: :mod:`.rawlines`), then the core's ``Sessionizer`` over its events sorted by
   (timestamp, event_id), flushed. (``groupBy().applyInArrow`` would do, but only from Spark 4.0.)
4. Everything is written into a staging folder, then swapped into the lake table by table (a full
   backfill) or day by day (``--from/--to``), and a ledger written that ``sessionflow verify`` checks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sessionflow.config import DAY, Config
from sessionflow.core.rejections import Reason
from sessionflow.core.snapshot import StreamClock
from sessionflow.errors import InputError, OutputError, UsageError
from sessionflow.exitcodes import EXIT_OK
from sessionflow.lake.layout import META_DIR, TABLES
from sessionflow.schema import EVENT_PARTITION, REJECTED_PARTITION, SESSION_COLUMNS, SESSION_PARTITION, event_columns

try:
    from pyspark import StorageLevel
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F  # noqa: N812 - the Spark convention
    from pyspark.sql import types as T  # noqa: N812
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the backfill needs Spark: pip install 'sessionflow[spark]'") from exc

from sessionflow.runtimes.arrow import TIMESTAMP_SOURCES
from sessionflow.runtimes.backfill import publish, rawlines, stages
from sessionflow.runtimes.backfill.archive import archive_files, packed_files
from sessionflow.runtimes.backfill.lakefs import HadoopFs, InputFile, expand_inputs
from sessionflow.runtimes.backfill.options import DateRange, add_arguments, date_range_of, inputs_of
from sessionflow.runtimes.backfill.ranges import RangeContext, lake_sessions, renumbered, with_machine_context
from sessionflow.runtimes.backfill.stages import (
    CONFLICT,
    DUPLICATES,
    EVENT,
    MACHINE_NEWEST,
    REJECTION,
    SESSION,
    SESSION_PREFIX,
    SPLIT,
    UNRESOLVED,
    Window,
)
from sessionflow.runtimes.backfill.submit import drop_foreign_options, load_config

log = logging.getLogger(__name__)

_SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "int64": T.LongType(),
    "int32": T.IntegerType(),
    "int8": T.ByteType(),
    "bool": T.BooleanType(),
    "float64": T.DoubleType(),
    "binary": T.BinaryType(),
    "timestamp_ms": T.TimestampType(),
    "map<string,int64>": T.MapType(T.StringType(), T.LongType()),
}


def spark_schema(columns: Sequence[tuple[str, str]]) -> T.StructType:
    return T.StructType([T.StructField(name, _SPARK_TYPES[kind]) for name, kind in columns])


@dataclass
class BackfillReport:
    mode: str  # "full" or "range"
    files: int
    splits: int = 0  # pieces the input was read in, in parallel
    records: int = 0
    blank: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    events: int = 0  # written
    sessions: int = 0  # written
    duplicates: int | None = None  # full backfills only
    rerun_machines: int = 0  # range backfills: machines read again over all their history
    # Range backfills: machines whose number of sessions in the range changed and that have sessions
    # after it, whose session_number is then off by the difference (a full backfill renumbers).
    renumber_after_range: int = 0
    partitions: dict[str, list[str]] = field(default_factory=dict)  # replaced, per table
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, where the time went
    run: int = 0  # its ledger's run number: 1 for a full backfill, the next one for a range

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "run": self.run,
            "files": self.files,
            "splits": self.splits,
            "records": self.records,
            "blank": self.blank,
            "rejected": dict(sorted(self.rejected.items())),
            "events": self.events,
            "sessions": self.sessions,
            "duplicates": self.duplicates,
            "rerun_machines": self.rerun_machines,
            "renumber_after_range": self.renumber_after_range,
            "partitions": self.partitions,
            "seconds": round(self.seconds, 3),
            "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
            "records_per_second": round(self.records / self.seconds) if self.seconds > 0 else 0,
        }


def build_spark(master: str | None = None, *, app_name: str = "sessionflow-backfill", **conf: str) -> SparkSession:
    """A SparkSession; a ``local`` master is bound to 127.0.0.1 with no UI and this Python for workers."""
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    if master is None or master.startswith("local"):
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
        )
        # Local workers must run the interpreter that has sessionflow installed (PySpark reads the
        # variable when the context starts; a value the user set wins).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def configure(spark: SparkSession) -> None:
    """Settings the lake depends on, whoever created the session (Glue and EMR make their own)."""
    # Parquet INT64 TIMESTAMP(MILLIS, UTC), as the embedded runner writes; Spark's default is INT96.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MILLIS")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    # No _SUCCESS files in the lake: readers glob *.parquet, but the embedded runner writes none either.
    spark.sparkContext._jsc.hadoopConfiguration().set("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")


def backfill(
    spark: SparkSession,
    inputs: list[str],
    out: str,
    config: Config,
    *,
    date_range: DateRange | None = None,
    now_ms: int | None = None,
    margin_ms: int = DAY,
    overwrite: bool = False,
    archive: bool = False,
) -> BackfillReport:
    """Re-sessionize ``inputs`` into the lake ``out``: all of it, or only the days of ``date_range``.
    ``archive``: the inputs are the AWS runtime's raw archive (:mod:`.archive`)."""
    started = time.perf_counter()
    configure(spark)
    fs = HadoopFs(spark)
    files = everything = expand_inputs(fs, inputs)
    if archive:
        lo = date_range.lo - margin_ms if date_range is not None else None
        everything = archive_files(files, None, 0, 0)
        files = archive_files(files, lo, now_ms or int(time.time() * 1000), config.validation.max_future_skew_ms)
    if not files:
        raise InputError("no input files found")
    out_uri = fs.qualify(out).rstrip("/")
    fs.no_checksum_files(out_uri)
    if date_range is None and not overwrite and any(fs.exists(f"{out_uri}/{t}") for t in TABLES):
        raise OutputError(f"{out}: already holds a lake; pass --overwrite to replace it, or --from/--to for some days")
    if margin_ms < config.session.timeout_ms:
        raise UsageError("the margin read around a date range must be at least session.timeout")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    run_id = f"backfill-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    staging = f"{out_uri}/{META_DIR}/{run_id}"
    report = BackfillReport(mode="full" if date_range is None else "range", files=len(files))
    log.info("backfill %s: %d input files -> %s", run_id, len(files), out_uri)

    persisted: list[DataFrame] = []
    phase = partial(_phase, report)
    in_range: int | None = None
    # The splits stay as they are while the job runs: a line's arrival key names it on every read.
    with rawlines.pinned_splits(spark), packed_files(spark, archive):
        try:
            refined = _refine(spark, files, config, now).persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(refined)
            with phase("read+refine"):
                offsets = _split_offsets(spark, refined, report)
            valid = _events(refined, config)
            # A narrowed archive: the machines the margin does not settle are read over all of it.
            history = _events(_refine(spark, everything, config, now), config) if everything != files else None
            with phase("sessionize"):
                newest = valid.groupBy("machine_id").agg(F.max("timestamp").alias(MACHINE_NEWEST))
                clock = _end_clock(newest, config)
                if date_range is None:
                    sessionized = _sessionize(valid, config, None, clock).persist(StorageLevel.MEMORY_AND_DISK)
                    persisted.append(sessionized)
                else:
                    sessions_before = lake_sessions(spark, fs, out_uri)
                    context = RangeContext(newest, sessions_before, clock)
                    sessionized = _sessionize_range(
                        spark, valid, config, date_range, margin_ms, report, persisted, context, history
                    )
                    report.renumber_after_range = renumbered(sessionized, sessions_before, date_range)
                    if report.renumber_after_range:
                        log.warning(
                            "%d machine(s) have another number of sessions in the range than before, and sessions "
                            "after it: their session_number after the range is off by the difference until a "
                            "full backfill (or a range over those days) numbers them again",
                            report.renumber_after_range,
                        )
                    # The range run's records: the valid ones dated in the range (its events and their copies).
                    timestamp = F.col("timestamp")
                    in_range = valid.filter((timestamp >= date_range.lo) & (timestamp < date_range.hi)).count()
                by_kind = sessionized.groupBy("kind").agg(
                    F.count("*").alias("rows"), F.sum("duplicates").alias("copies")
                )
                counted = {row["kind"]: row for row in by_kind.collect()}
                counts = {kind: row["rows"] for kind, row in counted.items()}
            report.events = counts.get(EVENT, 0)
            report.sessions = counts.get(SESSION, 0)
            with phase("write events"):
                _write_events(sessionized, config, f"{staging}/events")
            with phase("write sessions"):
                _write_sessions(sessionized, config, f"{staging}/sessions")
            if date_range is None:
                # Counted where the copies were dropped, so verify's conservation check can fail.
                report.duplicates = int(counted[DUPLICATES]["copies"]) if DUPLICATES in counted else 0
                if CONFLICT in counts:
                    report.rejected[Reason.CONFLICTING_DUPLICATE.value] = counts[CONFLICT]
                with phase("write rejected"):
                    conflicts = rawlines.conflict_rejections(spark, sessionized, files)
                    _write_rejections(refined, conflicts, offsets, files, f"{staging}/rejected", fs)
        except BaseException:
            # Nothing was published: the lake is as it was.
            if fs.exists(staging):
                fs.delete(staging)
            raise
        finally:
            for frame in persisted:
                frame.unpersist()
        with phase("publish"), publish.lake_lock(out_uri):
            publish.publish(spark, fs, staging, out_uri, date_range, report, in_range)
    report.seconds = time.perf_counter() - started
    return report


@contextmanager
def _phase(report: BackfillReport, name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.phases[name] = time.perf_counter() - started
        log.info("%s: %.1fs", name, report.phases[name])


# -- reading and refining ---------------------------------------------------------------------------------


def _refine(spark: SparkSession, files: list[InputFile], config: Config, now_ms: int) -> DataFrame:
    file_index = rawlines.file_indexes(files)
    refine = partial(stages.refine_batches, config=config, now_ms=now_ms, file_index=file_index)
    return rawlines.read_raw(spark, files).mapInArrow(refine, spark_schema(stages.refine_columns(config)))


def _events(refined: DataFrame, config: Config) -> DataFrame:
    return refined.filter(F.col("kind") == EVENT).select(
        *(name for name, _ in stages.ARRIVAL), *(name for name, _ in stages.refined_event_columns(config))
    )


def _split_offsets(spark: SparkSession, refined: DataFrame, report: BackfillReport) -> DataFrame:
    """(file_index, block_start) -> lines before that split in its file: line = offset + idx + 1."""
    # One small action for both: a row per split, and a count per rejection reason.
    kind = F.col("kind")
    summary = (
        refined.filter(kind != EVENT)
        .groupBy(
            kind,
            F.when(kind == SPLIT, F.col("file_index")).alias("file_index"),
            F.when(kind == SPLIT, F.col("block_start")).alias("block_start"),
            "reason",
        )
        .agg(F.max("idx").alias("idx"), F.max("blank").alias("blank"), F.count(F.lit(1)).alias("rows"))
        .collect()
    )
    report.rejected = {row["reason"]: row["rows"] for row in summary if row["kind"] == REJECTION}
    splits = [row for row in summary if row["kind"] == SPLIT]
    report.splits = len(splits)
    offsets = []
    lines_so_far: dict[int, int] = {}
    for row in sorted(splits, key=lambda r: (r["file_index"], r["block_start"])):
        before = lines_so_far.get(row["file_index"], 0)
        offsets.append((row["file_index"], row["block_start"], before))
        lines_so_far[row["file_index"]] = before + row["idx"]
        report.records += row["idx"] - row["blank"]
        report.blank += row["blank"]
    schema = "file_index int, block_start long, offset long"
    return spark.createDataFrame(offsets, schema)


# -- sessionizing -----------------------------------------------------------------------------------------


def _end_clock(newest: DataFrame, config: Config) -> int:
    """The stream clock at the end of the input (the core's ``StreamClock``): the newest time the
    ``clock_quorum`` most advanced machines reached, over every valid event read."""
    quorum = config.session.clock_quorum
    top = newest.orderBy(F.col(MACHINE_NEWEST).desc()).limit(quorum).collect()
    return StreamClock().advanced(((row["machine_id"], row[MACHINE_NEWEST]) for row in top), quorum).time


def _sessionize(valid: DataFrame, config: Config, window: Window | None, clock: int) -> DataFrame:
    # Not groupBy().applyInArrow (Spark 4 only; Glue 5.x and EMR 7.x run Spark 3.5): clustering each
    # machine's rows in a partition does the same, streams one machine at a time, and spills if it must.
    clustered = valid.repartition("machine_id").sortWithinPartitions("machine_id", *(n for n, _ in stages.ARRIVAL))
    function = partial(stages.sessionize_partition, config=config, window=window, clock=clock)
    return clustered.mapInArrow(function, spark_schema(stages.sessionize_columns(config)))


def _sessionize_range(
    spark: SparkSession,
    valid: DataFrame,
    config: Config,
    date_range: DateRange,
    margin_ms: int,
    report: BackfillReport,
    persisted: list[DataFrame],
    context: RangeContext,
    history: DataFrame | None = None,
) -> DataFrame:
    """Each machine over the range plus a margin; the few the margin does not decide, over all history
    (``history``: every event, when ``valid`` holds only those read for the range).

    A session crossing into the range may have started long before it (a machine that never pauses
    for ``timeout``), and one starting on the range's last day may run past it: the margin settles
    almost every machine, and the rest are settled exactly instead of approximately.
    """
    read_lo, read_hi = date_range.lo - margin_ms, date_range.hi + margin_ms
    window = Window(date_range.lo, date_range.hi, read_lo, read_hi)
    near = valid.filter((F.col("timestamp") >= read_lo) & (F.col("timestamp") < read_hi))
    near = with_machine_context(near, context, date_range.lo)
    first = _sessionize(near, config, window, context.clock).persist(StorageLevel.MEMORY_AND_DISK)
    persisted.append(first)
    unresolved = [row["machine_id"] for row in first.filter(F.col("kind") == UNRESOLVED).select("machine_id").collect()]
    report.rerun_machines = len(unresolved)
    settled = first.filter(F.col("kind") != UNRESOLVED)
    if not unresolved:
        return settled
    log.info("%d machines need their whole history to settle the range", len(unresolved))
    machines = spark.createDataFrame([(m,) for m in unresolved], "machine_id string")
    source = history if history is not None else valid
    history = with_machine_context(source.join(F.broadcast(machines), "machine_id"), context, date_range.lo)
    whole = Window(date_range.lo, date_range.hi, None, None)
    second = _sessionize(history, config, whole, context.clock).persist(StorageLevel.MEMORY_AND_DISK)
    persisted.append(second)
    return settled.unionByName(second)


# -- writing ----------------------------------------------------------------------------------------------


def _compression(config: Config) -> str:
    return "none" if config.output.compression == "none" else config.output.compression


def _write_events(sessionized: DataFrame, config: Config, path: str) -> None:
    columns = []
    for name, _ in event_columns(config):
        if name in TIMESTAMP_SOURCES:
            columns.append(F.timestamp_millis(F.col(TIMESTAMP_SOURCES[name])).alias(name))
        else:
            columns.append(F.col(name))
    events = sessionized.filter(F.col("kind") == EVENT).select(*columns, F.col(EVENT_PARTITION))
    _write_parquet(events, EVENT_PARTITION, config, path)


def _write_sessions(sessionized: DataFrame, config: Config, path: str) -> None:
    columns = []
    for name, _ in SESSION_COLUMNS:
        if name in TIMESTAMP_SOURCES:
            source = F.col(SESSION_PREFIX + TIMESTAMP_SOURCES[name])
            columns.append(F.timestamp_millis(source).alias(name))
        else:
            columns.append(F.col(SESSION_PREFIX + name).alias(name))
    partition = F.col(SESSION_PREFIX + SESSION_PARTITION).alias(SESSION_PARTITION)
    sessions = sessionized.filter(F.col("kind") == SESSION).select(*columns, partition)
    _write_parquet(sessions, SESSION_PARTITION, config, path)


def _write_parquet(frame: DataFrame, partition: str, config: Config, path: str) -> None:
    # One task per day keeps a day's files few; rows_per_file rolls them as the embedded runner does.
    (
        frame.repartition(partition)
        .sortWithinPartitions(partition)
        .write.partitionBy(partition)
        .option("compression", _compression(config))
        .option("maxRecordsPerFile", config.output.rows_per_file)
        .mode("errorifexists")
        .parquet(path)
    )


def _write_rejections(
    refined: DataFrame,
    conflicts: DataFrame | None,
    offsets: DataFrame,
    files: list[InputFile],
    path: str,
    fs: HadoopFs,
) -> None:
    """The refine stage's rejections and the conflicting copies, numbered by line in their file."""
    columns = ["reason", "message", "raw", *(name for name, _ in stages.ARRIVAL)]
    rejected = refined.filter(F.col("kind") == REJECTION).select(*columns)
    if conflicts is not None:
        rejected = rejected.unionByName(conflicts)
    rejections = (
        rejected.join(F.broadcast(offsets), ["file_index", "block_start"])
        .select("reason", "message", "raw", "file_index", (F.col("offset") + F.col("idx") + 1).alias("line"))
        # One task per reason, in input order (the order the embedded runner appends them in).
        .repartition(REJECTED_PARTITION)
        .sortWithinPartitions(REJECTED_PARTITION, "file_index", "line")
    )
    sources = [f.source for f in files]
    lines = rejections.mapInArrow(partial(stages.rejection_lines, sources=sources), "reason string, value string")
    lines.write.partitionBy(REJECTED_PARTITION).mode("errorifexists").text(path)
    # Spark's text writer names files *.txt; the lake's rejected files are *.jsonl.
    for reason in fs.list_dirs(path):
        folder = f"{path}/{reason}"
        for name in fs.list_names(folder):
            if name.endswith(".txt"):
                fs.rename(f"{folder}/{name}", f"{folder}/{name[: -len('.txt')]}.jsonl")


# -- the spark-submit entry point -------------------------------------------------------------------------


def run_job(args: argparse.Namespace, config: Config, spark: SparkSession) -> BackfillReport:
    return backfill(
        spark,
        inputs_of(args),
        args.out,
        config,
        date_range=date_range_of(args),
        now_ms=args.now,
        margin_ms=args.margin,
        overwrite=args.overwrite,
        archive=args.archive,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """spark-submit entry point: the cluster provides the SparkSession (Glue, EMR, Databricks)."""
    import orjson

    parser = argparse.ArgumentParser(prog="sessionflow-backfill", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Glue passes its own job arguments (--JOB_ID j_1, ...) along with ours: drop them with their values,
    # or their values would be taken for inputs.
    ours, foreign = drop_foreign_options(list(sys.argv[1:] if argv is None else argv), parser)
    if foreign:
        log.info("ignoring arguments: %s", " ".join(foreign))
    args = parser.parse_args(ours)
    config = load_config(args.config)
    spark = SparkSession.builder.appName("sessionflow-backfill").getOrCreate()
    report = run_job(args, config, spark)
    sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
