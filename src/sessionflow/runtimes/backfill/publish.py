"""Publishing a backfill: its staged tables or days swapped into the lake, then its ledger.

The lake protocol of :mod:`sessionflow.lake` as far as Spark allows: Spark writes every file into a
staging folder first (nothing in the lake changes until all are written), the swap is a few
directory renames, and the ledger ``sessionflow verify`` checks is written last. A full backfill
replaces the lake: it is run 1, and the ledgers before it go. A range backfill adds a run that
lists the days' new files and names the files it removed, with their rows, under the runs that
had written them, so the ledgers describe the lake as it is after; when sessions of those days
changed, it writes the restatement log (:mod:`sessionflow.runtimes.backfill.restate`) too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from sessionflow.errors import OutputError
from sessionflow.lake.layout import LEDGER_DIR, TABLES, ledger_name, run_number
from sessionflow.lake.ledger import ledger_record
from sessionflow.runtimes.backfill.lakefs import HadoopFs
from sessionflow.runtimes.backfill.options import DateRange
from sessionflow.runtimes.backfill.restate import Restated, stage_restatement_log
from sessionflow.runtimes.backfill.stages import path_key
from sessionflow.schema import EVENT_PARTITION, SESSION_PARTITION

if TYPE_CHECKING:
    from sessionflow.runtimes.backfill.job import BackfillReport

DAY_TABLES = (("events", EVENT_PARTITION), ("sessions", SESSION_PARTITION))


def publish(
    spark: Any,
    fs: HadoopFs,
    staging: str,
    out: str,
    date_range: DateRange | None,
    report: BackfillReport,
    in_range: int | None,
) -> None:
    """Swap the staged files in, then write the run's ledger (see the module docstring)."""
    ledgers = read_ledgers(fs, out) if date_range is not None else []
    removed = removed_by_range(spark, fs, out, date_range, ledgers) if date_range is not None else []
    restated = Restated()
    if date_range is not None:
        restated = stage_restatement_log(spark, fs, out, staging, removed, next_run(ledgers))
    files = staged_files(fs, staging)
    # What is replaced is kept apart from staging until the end: a publish that fails halfway must not
    # lose the days it had already moved aside.
    replaced = f"{staging}-replaced"
    try:
        if date_range is None:
            report.partitions = {table: ["*"] for table in TABLES}
            swap_tables(fs, staging, out, replaced)
        else:
            report.partitions = swap_days(fs, staging, out, replaced, date_range)
            for name in restated.files:
                fs.rename(f"{staging}/{name}", f"{out}/{name}")
        ledger = backfill_ledger(report.to_dict(), files, ledgers, removed, in_range, restated)
        report.run = ledger["run"]
        write_ledger(fs, out, ledger, replace=date_range is None)
    except Exception as exc:
        raise OutputError(
            f"{out}: publishing failed ({exc}); new files are in {staging}, the ones they replace in {replaced}"
        ) from exc
    fs.delete(staging)
    fs.delete(replaced)


@contextmanager
def lake_lock(out: str) -> Iterator[None]:
    """A lake on a local disk: the embedded runner's lock, and its recovery first (a run it left
    committed is put in place before days are replaced). Elsewhere (S3, HDFS) there is no lock."""
    if not out.startswith("file:"):
        yield
        return
    from pathlib import Path

    from sessionflow.lake.commit import recover
    from sessionflow.lake.lock import LakeLock

    lake = Path(path_key(out)[len("file:") :])
    with LakeLock(lake):
        recover(lake)
        yield


def swap_tables(fs: HadoopFs, staging: str, out: str, replaced: str) -> None:
    """Full backfill: each table folder is replaced by the staged one (two renames per table)."""
    for table in TABLES:
        new = f"{staging}/{table}"
        if not fs.exists(new):
            fs.mkdirs(new)  # an empty table is still a table: the old one must go
        if fs.exists(f"{out}/{table}"):
            fs.rename(f"{out}/{table}", f"{replaced}/{table}")
        fs.rename(new, f"{out}/{table}")


def swap_days(fs: HadoopFs, staging: str, out: str, replaced: str, date_range: DateRange) -> dict[str, list[str]]:
    """Range backfill: every day of the range is replaced, or removed when it has no rows any more."""
    swapped: dict[str, list[str]] = {}
    for table, partition in DAY_TABLES:
        swapped[table] = []
        for day in date_range.days():
            folder = f"{partition}={day}"
            new, old = f"{staging}/{table}/{folder}", f"{out}/{table}/{folder}"
            if fs.exists(old):
                fs.rename(old, f"{replaced}/{table}/{folder}")
            if fs.exists(new):
                fs.rename(new, old)
            swapped[table].append(day)
    return swapped


# -- the ledger -------------------------------------------------------------------------------------------


def staged_files(fs: HadoopFs, staging: str) -> list[str]:
    """Every file in the staging folder, relative to it (= relative to the lake once swapped in)."""
    if not fs.exists(staging):
        return []
    root = path_key(fs.qualify(staging)).rstrip("/") + "/"
    names = []
    for uri in fs.list_files(staging):
        key = path_key(uri)
        if not key.startswith(root):
            raise ValueError(f"{uri} is not below {root}")
        names.append(key[len(root) :])
    return sorted(names)


def read_ledgers(fs: HadoopFs, out: str) -> list[dict[str, Any]]:
    folder = f"{out}/{LEDGER_DIR}"
    if not fs.exists(folder):
        return []
    names = [name for name in fs.list_names(folder) if name.startswith("run-") and name.endswith(".json")]
    return [orjson.loads(fs.read_bytes(f"{folder}/{name}")) for name in sorted(names, key=run_number)]


def removed_by_range(
    spark: Any, fs: HadoopFs, out: str, date_range: DateRange, ledgers: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The files of earlier runs a range backfill is about to remove, with their rows, per run.

    Read before the swap (Parquet footers): the ledger of run N must still add up once they are gone.
    A file no ledger lists (a stray copy) is removed with the day and needs no record.
    """
    owner = {name: int(ledger["run"]) for ledger in ledgers for name in ledger.get("files", [])}
    removed: dict[int, dict[str, Any]] = {}
    for table, partition in DAY_TABLES:
        names: list[str] = []
        for day in date_range.days():
            folder = f"{table}/{partition}={day}"
            if fs.exists(f"{out}/{folder}"):
                names.extend(f"{folder}/{name}" for name in fs.list_names(f"{out}/{folder}"))
        names = [name for name in names if name in owner]
        rows = _parquet_rows(spark, out, names)
        for name in names:
            run = owner[name]
            record = removed.setdefault(run, {"run": run, "files": [], "events": 0, "sessions": 0})
            record["files"].append(name)
            record[table] += rows.get(name, 0)
    return [removed[run] for run in sorted(removed)]


def _parquet_rows(spark: Any, out: str, names: list[str]) -> dict[str, int]:
    """Rows per Parquet file, from the footers (Spark answers a count from them)."""
    if not names:
        return {}
    from pyspark.sql import functions as F  # noqa: N812 - the Spark convention

    name_of = {path_key(f"{out}/{name}"): name for name in names}
    counted = (
        spark.read.parquet(*(f"{out}/{name}" for name in names))
        .select(F.col("_metadata.file_path").alias("file"))
        .groupBy("file")
        .count()
        .collect()
    )
    return {name_of[path_key(row["file"], encoded=True)]: int(row["count"]) for row in counted}


def next_run(ledgers: Sequence[dict[str, Any]]) -> int:
    return int(ledgers[-1].get("run", 0)) + 1 if ledgers else 1


def backfill_ledger(
    report: dict[str, Any],
    files: list[str],
    ledgers: Sequence[dict[str, Any]],
    removed: list[dict[str, Any]],
    in_range: int | None,
    restated: Restated | None = None,
) -> dict[str, Any]:
    """The ledger of a backfill (``report`` is :meth:`BackfillReport.to_dict`).

    A full backfill is the whole lake: run 1, every record it read. A range backfill is the next run:
    its records are the valid ones dated in the range (rejections are not dated, and not rebuilt),
    what the state of an earlier ``sessionflow run --state`` holds is carried over unchanged, and
    ``removed`` names the earlier runs' files it replaced, with their rows. Its tally is what its
    input produced and it wrote (``records = events + duplicates``); it writes nothing again from
    the removed files (it recomputes the days from its input), so ``carried`` is zero, and the
    lake's event rows are the runs' ``tally.events + carried.events`` less the rows they removed.
    ``restatements`` counts its log's rows.
    """
    summary = {"written_by": "backfill", "mode": report["mode"], "partitions": report["partitions"]}
    if in_range is None:
        tally = {
            "records": report["records"],
            "blank": report["blank"],
            "events": report["events"],
            "rejected": report["rejected"],
            "duplicates": report["duplicates"],
            "late": 0,  # everything is sorted before it is sessionized
            "sessions": report["sessions"],
        }
        return ledger_record({"run": 1, **summary, "tally": tally}, files, replace=True, config_fingerprint=None)
    last = ledgers[-1] if ledgers else {}
    tally = {
        "records": in_range,
        "blank": 0,
        "events": report["events"],
        "rejected": {},
        "duplicates": in_range - report["events"],
        "late": 0,
        "sessions": report["sessions"],
    }
    pending = int(last.get("pending_in_state", 0))
    ledger = ledger_record(
        {"run": next_run(ledgers), **summary, "rerun_machines": report["rerun_machines"], "tally": tally},
        files,
        replace=False,
        config_fingerprint=None,
        pending_before=pending,
        pending_in_state=pending,
        open_sessions=(int(last.get("open_sessions", 0)), int(last.get("events_in_open_sessions", 0))),
    )
    restated = restated or Restated()
    ledger["removed"] = removed
    ledger["carried"] = {"events": 0, "sessions": 0}
    ledger["restated"] = {"sessions": restated.sessions, "events": restated.events}
    ledger["restatements"] = restated.log_rows
    return ledger


def write_ledger(fs: HadoopFs, out: str, ledger: dict[str, Any], *, replace: bool) -> None:
    """Write ``ledger`` as its run's file; with ``replace``, the ledgers of the lake it replaced go first."""
    folder = f"{out}/{LEDGER_DIR}"
    name = ledger_name(int(ledger["run"]))
    if replace and fs.exists(folder):
        for old in fs.list_names(folder):
            fs.delete(f"{folder}/{old}")
    fs.mkdirs(folder)
    temporary = f"{folder}/.{name}.tmp"
    fs.write_bytes(temporary, orjson.dumps(ledger, option=orjson.OPT_INDENT_2))
    if fs.exists(f"{folder}/{name}"):
        fs.delete(f"{folder}/{name}")
    fs.rename(temporary, f"{folder}/{name}")
