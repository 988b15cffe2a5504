"""Baseline: the sessionflow job written as DuckDB SQL (window functions, partitioned Parquet out).

    python bench/baselines/duckdb_sessionize.py INPUT OUTDIR [--config sessionflow.toml]

Reads the JSON lines with ``read_json(ignore_errors=true)`` (malformed lines come back as all-null
rows and fail validation), applies the config's cleaning rules, validates, dedupes by
(machine_id, event_id) keeping the first arrival, sessionizes per machine in (timestamp, event_id)
order, enriches, and writes ``OUTDIR/events/event_date=*/`` and ``OUTDIR/sessions/session_date=*/``.
Session ids are the same UUIDv5 sessionflow computes (SHA-1 of namespace + machine, first ts,
first event id), so the two lakes can be compared session by session.

Not done, by design (the benchmark README says so): rejected records are dropped instead of kept
with their reason, unknown fields are dropped instead of kept in ``extra``, and there are no
late-event semantics (the whole file is one batch).
"""

from __future__ import annotations

import time

from common import Plan, fresh_dir, load_plan, now_ms, parse_args, report

from sessionflow.core.ids import SESSION_NAMESPACE

_SQL_TYPES = {"string": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN"}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_sql(plan: Plan, source: str) -> str:
    """The SELECT producing the sessionized, enriched events (one row per event kept)."""
    required = {plan.event_id: "event_id", plan.machine_id: "machine_id", plan.event_type: "event_type"}
    # Required fields are read as JSON so a number where a string belongs is rejected, not cast.
    read_columns = {raw: "JSON" for raw in (*required, plan.timestamp)}
    read_columns.update({raw: _SQL_TYPES[kind] for _, raw, kind in plan.columns})
    columns_arg = "{" + ", ".join(f"{literal(raw)}: {literal(kind)}" for raw, kind in read_columns.items()) + "}"
    ts = quote(plan.timestamp)
    typed = [
        *(
            f"json_type({quote(raw)}) = 'VARCHAR' AS {name}_is_text, {quote(raw)} ->> '$' AS {name}"
            for raw, name in required.items()
        ),
        # Numbers and strings are told apart here: cleaning scales numbers, strings are ISO-8601.
        f"CASE WHEN json_type({ts}) IN ('UBIGINT', 'BIGINT', 'DOUBLE') THEN TRY_CAST({ts} AS DOUBLE) END AS ts_num",
        f"CASE WHEN json_type({ts}) = 'VARCHAR' THEN {ts} ->> '$' END AS ts_text",
        *(f"{quote(raw)} AS {quote(name)}" for name, raw, _ in plan.columns),
    ]
    ctes = [
        # row_number() OVER () on a scan keeps file order (preserve_insertion_order is on by default).
        f"raw AS (SELECT row_number() OVER () AS arrival, * FROM read_json({literal(source)}, "
        f"format = 'newline_delimited', records = true, ignore_errors = true, columns = {columns_arg}))",
        f"typed AS (SELECT arrival, {', '.join(typed)} FROM raw)",
    ]
    # Cleaning rules see the raw field names; map them to the columns of `typed`.
    internal = {**required, **{raw: name for name, raw, _ in plan.columns}, plan.timestamp: "ts_num"}
    previous = "typed"
    for index, step in enumerate(plan.steps):
        conditions = []
        for field, patterns in step.when:
            if field not in internal or field == plan.timestamp:
                raise SystemExit(f"baseline: a cleaning condition on {field!r} is not translated")
            column = quote(internal[field])
            conditions.append("(" + " OR ".join(f"{column} GLOB {literal(p)}" for p in patterns) + ")")
        condition = " AND ".join(conditions) or "TRUE"
        lowered = [quote(internal[f]) for f in step.lowercase if f in internal and f != plan.timestamp]
        replaced = [f"CASE WHEN {condition} THEN lower({c}) ELSE {c} END AS {c}" for c in lowered]
        if step.timestamp_factor is not None:
            replaced.append(f"CASE WHEN {condition} THEN ts_num * {step.timestamp_factor} ELSE ts_num END AS ts_num")
        if replaced:
            ctes.append(f"clean{index} AS (SELECT * REPLACE ({', '.join(replaced)}) FROM {previous})")
            previous = f"clean{index}"

    def present(column: str) -> str:
        return f"{column}_is_text AND trim({column}, ' \t\n\r\x0b\x0c') <> ''"

    # ISO strings need a timezone, like sessionflow; numbers must be whole milliseconds.
    ts_expr = (
        "CASE WHEN ts_num IS NOT NULL THEN CASE WHEN ts_num = trunc(ts_num) THEN TRY_CAST(ts_num AS BIGINT) END "
        r"WHEN regexp_matches(ts_text, '(Z|[+-]\d\d(:?\d\d)?)$') "
        "THEN epoch_ms(TRY_CAST(ts_text AS TIMESTAMPTZ)) END"
    )
    ctes += [
        f"parsed AS (SELECT * EXCLUDE (ts_num, ts_text, event_id_is_text, machine_id_is_text, event_type_is_text), "
        f"{ts_expr} AS ts FROM {previous} "
        f"WHERE {present('event_id')} AND {present('machine_id')} AND {present('event_type')})",
        f"valid AS (SELECT * FROM parsed WHERE ts BETWEEN {plan.min_ts} AND {plan.max_ts})",
        "dedup AS (SELECT * FROM valid "
        "QUALIFY row_number() OVER (PARTITION BY machine_id, event_id ORDER BY arrival) = 1)",
        # One window spec for everything per machine: DuckDB sorts once per spec.
        "gaps AS (SELECT *, ts - lag(ts) OVER machine_order AS gap, row_number() OVER machine_order AS position "
        "FROM dedup WINDOW machine_order AS (PARTITION BY machine_id ORDER BY ts, event_id))",
    ]
    opening = ", ".join(literal(e) for e in plan.opening_events) or "NULL"
    namespace = "".join(f"\\x{byte:02X}" for byte in SESSION_NAMESPACE.bytes)
    # uuid5: SHA-1 of namespace bytes + name, first 16 bytes, version nibble 5, variant bits 10.
    digest = f"sha1('{namespace}'::BLOB || encode(machine_id || chr(31) || ts::VARCHAR || chr(31) || event_id))"
    uuid5 = (
        "printf('%s-%s-5%s-%s%s-%s', h[1:8], h[9:12], h[14:16], "
        "substr('89ab', (('0x' || h[17])::INTEGER & 3) + 1, 1), h[18:20], h[21:32])"
    )
    ctes += [
        f"starts AS (SELECT *, gap IS NULL OR gap > {plan.timeout_ms} OR event_type IN ({opening}) AS is_start "
        "FROM gaps)",
        f"hashed AS (SELECT *, CASE WHEN is_start THEN {digest} END AS h FROM starts)",
        f"ids AS (SELECT * EXCLUDE (h), CASE WHEN h IS NOT NULL THEN {uuid5} END AS start_id FROM hashed)",
        # Gaps and islands: each event takes the id and position of the latest session start before it.
        "sessionized AS (SELECT *, last_value(start_id IGNORE NULLS) OVER so_far AS session_id, "
        "position - last_value(CASE WHEN is_start THEN position END IGNORE NULLS) OVER so_far + 1 AS session_seq "
        "FROM ids WINDOW so_far AS (PARTITION BY machine_id ORDER BY ts, event_id "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))",
    ]
    version = "app_version"

    def version_part(index: int) -> str:
        part = f"split_part({version}, '.', {index})"
        return f"CASE WHEN regexp_full_match({part}, '[0-9]+') THEN TRY_CAST({part} AS INTEGER) END"

    optional = ", ".join(quote(name) for name, _, _ in plan.columns)
    has_version = any(name == "app_version" for name, _, _ in plan.columns)
    select = f"""
        SELECT event_id, machine_id, event_type, ts AS "timestamp",
               to_timestamp(ts / 1000) AS event_time,
               hour(to_timestamp(ts / 1000))::TINYINT AS event_hour,
               isodow(to_timestamp(ts / 1000))::TINYINT AS day_of_week,
               {optional + "," if optional else ""}
               {version_part(1) if has_version else "NULL::INTEGER"} AS app_version_major,
               {version_part(2) if has_version else "NULL::INTEGER"} AS app_version_minor,
               session_id,
               session_seq::INTEGER AS session_seq,
               CASE WHEN is_start THEN NULL ELSE gap END AS ms_since_prev,
               FALSE AS late,
               strftime(to_timestamp(ts / 1000), '%Y-%m-%d') AS event_date
        FROM sessionized"""
    return "WITH " + ",\n".join(ctes) + select


SESSIONS_SQL = """
    SELECT session_id, any_value(machine_id) AS machine_id,
           arg_min(user_id, session_seq) FILTER (WHERE user_id IS NOT NULL) AS user_id,
           min("timestamp") AS start_ts, max("timestamp") AS end_ts,
           min(event_time) AS session_start, max(event_time) AS session_end,
           max("timestamp") - min("timestamp") AS duration_ms,
           count(*) AS event_count,
           arg_min(event_type, session_seq) AS first_event_type,
           arg_max(event_type, session_seq) AS last_event_type,
           histogram(event_type)::MAP(VARCHAR, BIGINT) AS event_type_counts,
           arg_min(app_version, session_seq) FILTER (WHERE app_version IS NOT NULL) AS app_version,
           strftime(min(event_time), '%Y-%m-%d') AS session_date
    FROM events GROUP BY session_id
"""


def main() -> None:
    args = parse_args("sessionflow's job as DuckDB SQL")
    started = time.perf_counter()
    import duckdb

    plan = load_plan(args.config, now_ms())
    outdir = fresh_dir(args.outdir)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE TEMP TABLE events AS {build_sql(plan, args.input)}")
    con.execute(f"CREATE TEMP TABLE sessions AS {SESSIONS_SQL}")
    events_dir, sessions_dir = outdir / "events", outdir / "sessions"
    con.execute(
        f"COPY events TO {literal(str(events_dir))} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (event_date))"
    )
    con.execute(
        f"COPY sessions TO {literal(str(sessions_dir))} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (session_date))"
    )
    (events,) = con.execute("SELECT count(*) FROM events").fetchone() or (0,)
    (sessions,) = con.execute("SELECT count(*) FROM sessions").fetchone() or (0,)
    report("duckdb", started, events, sessions)


if __name__ == "__main__":
    main()
