"""Baseline: the sessionflow job written as Polars expressions (lazy scan, window expressions, Parquet out).

    python bench/baselines/polars_sessionize.py INPUT OUTDIR [--config sessionflow.toml]

``pl.read_ndjson(ignore_errors=True)`` still stops at the first malformed line, so the file is read
as lines of text (invalid UTF-8 replaced), lines that are not a JSON object are dropped (a JSONPath
probe returns null for them) and the rest go through ``pl.read_ndjson`` with a fixed schema.
Then: the config's cleaning rules, validation, dedupe by (machine_id, event_id) keeping the first
arrival, sessionization per machine in (timestamp, event_id) order, enrichment, and
``OUTDIR/events/event_date=*/`` + ``OUTDIR/sessions/session_date=*/``.

Session ids are sessionflow's UUIDv5; Polars has no SHA-1, so they are computed in Python for the
session starts only (about 6% of the rows). Not done, by design (see bench/README.md): rejected
records are dropped, unknown fields are dropped instead of kept in ``extra``, no late events. A
number where a string belongs (e.g. a numeric event_id) is read as its text, not rejected: the
decoder casts it, which sessionflow and the DuckDB baseline do not (about 0.05% of the feed).
"""

from __future__ import annotations

import time
import uuid

import polars as pl
from common import Plan, fresh_dir, glob_regex, load_plan, now_ms, parse_args, report

from sessionflow.core.ids import SESSION_NAMESPACE

_POLARS_TYPES = {"string": "String", "int": "Int64", "float": "Float64", "bool": "Boolean"}


def sessionize(plan: Plan, source: str) -> pl.DataFrame:
    """The sessionized, enriched events as an eager DataFrame (one row per event kept)."""
    required = {plan.event_id: "event_id", plan.machine_id: "machine_id", plan.event_type: "event_type"}
    renames = {**required, plan.timestamp: "ts_raw", **{raw: name for name, raw, _ in plan.columns}}
    lines = pl.scan_csv(
        source,
        has_header=False,
        separator="\x1f",  # never unescaped inside JSON: each line is one field
        quote_char=None,
        schema={"line": pl.String},
        encoding="utf8-lossy",
    )
    line = pl.col("line").str.strip_chars()
    # str.json_decode is several times slower than the NDJSON reader, so the lines that are JSON
    # objects with an event id go back through the reader; it keeps their (arrival) order.
    valid_lines = (
        lines.filter(line.str.json_path_match(f"$.{plan.event_id}").is_not_null())
        .select(line.str.join("\n"))
        .collect()
        .item()
    )
    schema = {
        **{raw: pl.String for raw in (*required, plan.timestamp)},
        **{raw: getattr(pl, _POLARS_TYPES[kind]) for _, raw, kind in plan.columns},
    }
    payload = valid_lines.encode()
    del valid_lines  # the text exists three times over otherwise: lines, joined str, bytes
    records = pl.read_ndjson(payload, schema=schema, ignore_errors=True) if payload else pl.DataFrame(schema=schema)
    del payload
    frame = records.lazy().rename(renames)
    # A numeric timestamp arrives as its digits; cleaning scales numbers only, like sessionflow.
    is_number = pl.col("ts_raw").str.contains(r"^-?\d+(\.0*)?$")
    frame = frame.with_columns(
        ts_num=pl.when(is_number).then(pl.col("ts_raw").cast(pl.Float64, strict=False)),
        ts_text=pl.when(~is_number).then(pl.col("ts_raw")),
    )
    internal = {**required, **{raw: name for name, raw, _ in plan.columns}}
    for step in plan.steps:
        condition = pl.lit(True)
        for field, patterns in step.when:
            if field not in internal:
                raise SystemExit(f"baseline: a cleaning condition on {field!r} is not translated")
            matches = pl.lit(False)
            for pattern in patterns:
                matches = matches | pl.col(internal[field]).str.contains(glob_regex(pattern)).fill_null(False)
            condition = condition & matches
        updates = [
            pl.when(condition).then(pl.col(internal[f]).str.to_lowercase()).otherwise(pl.col(internal[f]))
            for f in step.lowercase
            if f in internal
        ]
        if step.timestamp_factor is not None:
            scaled = pl.col("ts_num") * step.timestamp_factor
            updates.append(pl.when(condition).then(scaled).otherwise(pl.col("ts_num")).alias("ts_num"))
        if updates:
            frame = frame.with_columns(updates)
    iso = (
        pl.col("ts_text")
        .str.replace(r"Z$", "+00:00")
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_unit="ms")
        .dt.epoch("ms")
    )
    whole = pl.when(pl.col("ts_num") == pl.col("ts_num").floor()).then(pl.col("ts_num").cast(pl.Int64, strict=False))
    frame = frame.with_columns(ts=pl.coalesce(whole, iso)).drop("ts_raw", "ts_num", "ts_text")

    def present(name: str) -> pl.Expr:
        return pl.col(name).str.strip_chars().str.len_bytes() > 0

    timeout = plan.timeout_ms
    frame = (
        frame.filter(
            present("event_id")
            & present("machine_id")
            & present("event_type")
            & pl.col("ts").is_between(plan.min_ts, plan.max_ts)
        )
        .unique(subset=["machine_id", "event_id"], keep="first", maintain_order=True)
        .sort("machine_id", "ts", "event_id")
        .with_columns(gap=pl.col("ts") - pl.col("ts").shift(1).over("machine_id"))
        .with_columns(
            is_start=pl.col("gap").is_null()
            | (pl.col("gap") > timeout)
            | pl.col("event_type").is_in(list(plan.opening_events))
        )
        # Sorted by machine, and every machine starts with a session: a running count numbers them all.
        .with_columns(session_no=pl.col("is_start").cum_sum())
        .with_columns(session_seq=(pl.int_range(pl.len()).over("session_no") + 1).cast(pl.Int32))
    )
    events = frame.collect()
    starts = events.filter(pl.col("is_start")).select("session_no", "machine_id", "ts", "event_id")
    ids = pl.Series(
        "session_id",
        [
            str(uuid.uuid5(SESSION_NAMESPACE, f"{machine}\x1f{ts}\x1f{event_id}"))
            for machine, ts, event_id in zip(starts["machine_id"], starts["ts"], starts["event_id"], strict=True)
        ],
        pl.String,
    )
    session_ids = starts.select("session_no").with_columns(ids)
    event_time = pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC")
    names = [name for name, _, _ in plan.columns]

    def version_part(index: int) -> pl.Expr:
        if "app_version" not in names:
            return pl.lit(None, pl.Int32)
        return pl.col("app_version").str.split(".").list.get(index, null_on_oob=True).cast(pl.Int32, strict=False)

    return (
        events.join(session_ids, on="session_no", how="left")
        .with_columns(event_time=event_time)
        .select(
            "event_id",
            "machine_id",
            "event_type",
            pl.col("ts").alias("timestamp"),
            "event_time",
            pl.col("event_time").dt.hour().cast(pl.Int8).alias("event_hour"),
            pl.col("event_time").dt.weekday().cast(pl.Int8).alias("day_of_week"),  # ISO: 1 = Monday
            *names,
            version_part(0).alias("app_version_major"),
            version_part(1).alias("app_version_minor"),
            "session_id",
            "session_seq",
            pl.when(~pl.col("is_start")).then(pl.col("gap")).alias("ms_since_prev"),
            pl.lit(False).alias("late"),
            pl.col("event_time").dt.strftime("%Y-%m-%d").alias("event_date"),
        )
    )


def summarize(events: pl.DataFrame) -> pl.DataFrame:
    return (
        events.sort("session_id", "session_seq")
        .group_by("session_id")
        .agg(
            pl.col("machine_id").first(),
            pl.col("user_id").drop_nulls().first(),
            pl.col("timestamp").min().alias("start_ts"),
            pl.col("timestamp").max().alias("end_ts"),
            pl.col("event_time").min().alias("session_start"),
            pl.col("event_time").max().alias("session_end"),
            (pl.col("timestamp").max() - pl.col("timestamp").min()).alias("duration_ms"),
            pl.len().cast(pl.Int64).alias("event_count"),
            pl.col("event_type").first().alias("first_event_type"),
            pl.col("event_type").last().alias("last_event_type"),
            # Polars has no map type: a sorted list of {key, value}, which is how Parquet stores a map.
            pl.col("event_type")
            .value_counts(sort=False, name="value")
            .struct.rename_fields(["key", "value"])
            .sort()
            .alias("event_type_counts"),
            pl.col("app_version").drop_nulls().first(),
            pl.col("event_date").first().alias("session_date"),
        )
    )


def main() -> None:
    args = parse_args("sessionflow's job as Polars expressions")
    started = time.perf_counter()
    plan = load_plan(args.config, now_ms())
    outdir = fresh_dir(args.outdir)
    events = sessionize(plan, args.input)
    sessions = summarize(events)
    events.write_parquet(outdir / "events", compression="zstd", partition_by="event_date")
    sessions.write_parquet(outdir / "sessions", compression="zstd", partition_by="session_date")
    report("polars", started, events.height, sessions.height)


if __name__ == "__main__":
    main()
