"""The input's raw lines as Spark reads them, and the few read again: conflicting copies' bytes.

A refined event does not carry its raw line across the shuffle (that would about double what is
shuffled); it carries its arrival key (file, split, index in the split). The rare later copy whose
content differs from the first arrival's must be rejected with its bytes, so when there are any,
the input is read again exactly as the refine stage read it and only those lines are kept. The
same key must name the same line both times: the splits depend on the cluster's parallelism when
a read is planned, so the backfill pins it (:func:`pinned_splits`) for as long as it runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812 - the Spark convention

from sessionflow.core.rejections import Reason
from sessionflow.runtimes.backfill import stages
from sessionflow.runtimes.backfill.archive import unwrap
from sessionflow.runtimes.backfill.lakefs import InputFile

_MIN_PARTITIONS = "spark.sql.files.minPartitionNum"


def read_raw(spark: SparkSession, files: list[InputFile]) -> DataFrame:
    """Every line's bytes with the file and split it came from (``raw``, ``file_path``, ``block_start``)."""
    # Split on "\n" only (Spark's default also splits on a lone "\r"), as the embedded runner does; the
    # value stays the line's bytes once cast to binary, before anything decodes it. An archive line
    # holds a record's bytes in base64 (``--archive``).
    value = unwrap(F.col("value")) if any(f.archive for f in files) else F.col("value").cast("binary")
    return (
        spark.read.option("lineSep", "\n")
        .text([_glob_escape(f.uri) for f in files])
        .select(
            value.alias("raw"),
            F.col("_metadata.file_path").alias("file_path"),
            F.col("_metadata.file_block_start").alias("block_start"),
        )
    )


def file_indexes(files: list[InputFile]) -> dict[str, int]:
    """A file's normalised path -> its position in the input list (the arrival order of files)."""
    return {stages.path_key(f.uri): i for i, f in enumerate(files)}


def _glob_escape(uri: str) -> str:
    """Spark globs the paths it reads; a file named ``a[1].jsonl`` must be read as just that file."""
    return "".join("\\" + char if char in "[]{}*?\\" else char for char in uri)


@contextmanager
def pinned_splits(spark: SparkSession) -> Iterator[None]:
    """Every read of the input is split alike: the parallelism a split size is derived from is
    fixed at what it is now (executors coming and going would change it), unless the user set it."""
    if spark.conf.get(_MIN_PARTITIONS, None) is not None:
        yield
        return
    leaf = spark.conf.get("spark.sql.leafNodeDefaultParallelism", None)
    spark.conf.set(_MIN_PARTITIONS, str(leaf or spark.sparkContext.defaultParallelism))
    try:
        yield
    finally:
        spark.conf.unset(_MIN_PARTITIONS)


def conflict_rejections(spark: SparkSession, sessionized: DataFrame, files: list[InputFile]) -> DataFrame | None:
    """The CONFLICT rows as rejections (reason, message, raw, file_index, block_start, idx), their
    bytes read again; None when there are none."""
    conflicts = sessionized.filter(F.col("kind") == stages.CONFLICT).select(
        F.lit(Reason.CONFLICTING_DUPLICATE.value).alias("reason"),
        F.col("c_message").alias("message"),
        *(F.col("c_" + name).alias(name) for name, _ in stages.ARRIVAL),
    )
    keys = conflicts.select(*(name for name, _ in stages.ARRIVAL)).collect()
    if not keys:
        return None
    wanted: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for row in keys:
        wanted[row["file_index"]].add((row["block_start"], row["idx"]))
    find = partial(stages.wanted_lines, file_index=file_indexes(files), wanted=dict(wanted))
    schema = ", ".join(f"{name} {'int' if kind == 'int32' else 'long'}" for name, kind in stages.ARRIVAL)
    lines = read_raw(spark, files).mapInArrow(find, f"{schema}, raw binary")
    arrival: list[Any] = [name for name, _ in stages.ARRIVAL]
    # Left: a line not found again (the input changed under the job) is still rejected, without bytes.
    raw = F.coalesce(F.col("raw"), F.lit("").cast("binary")).alias("raw")
    return conflicts.join(lines, arrival, "left").select("reason", "message", raw, *arrival)
