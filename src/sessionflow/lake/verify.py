"""Check a lake against its ledgers (``sessionflow verify DIR``; exit 5 when something is off).

What is checked (docs/reliability.md says why):

* no committed run is waiting to be put in place (a run killed during its publication);
* the ledgers run 1..N without a gap;
* the files: every file a ledger lists exists, none is listed twice, no file is there unlisted
  (a run that replaced days of earlier runs, a range backfill, names the files it removed);
* conservation per run: records = events + rejected + duplicates + (buffered in state after the
  run - buffered before it); each run's files hold exactly the rows its ledger counts, tally plus
  ``carried`` (the rows of removed files it wrote again), plus the rows of its files a later run
  removed, as that run counted them;
* restatement logs: each readable, its rows those its ledger counts (``restatements``), all of the
  run that lists it, with a known reason; every new id the latest restatement of an old id names is
  in the lake (unless a later run restated it again);
* the lake's event rows total the runs' ``tally.events + carried.events`` less the rows of the files
  each removed (a restating run carries what it removed, so its share is its ``tally.events``; a
  range backfill recomputes its days from input and carries nothing);
* the content: no event_id twice for a machine; a session id once in the sessions table; every
  non-late event in exactly one session whose summary (count, first and last timestamp, machine,
  event type counts, positions 1..n) matches its events, except the sessions still open in the
  state, which the last ledger counts; late events in no session; a machine's sessions never overlap;
* what a session says of itself: a known ``close_reason``; ``documents``, ``late_placed`` and
  ``os`` what its events say; each machine's sessions numbered 1, 2, ... in time order;
* the event-id index (``sessionflow.lake.ids``), when the lake has one: each day it says is current
  holds exactly the hashes of that day's events (a stale day is a note: the next incremental run,
  or ``--repair``, rebuilds it).

This module imports nothing heavy: DuckDB and pyarrow are imported when a lake is checked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessionflow.core.rules import CLOSE_REASONS
from sessionflow.lake.layout import INDEX_DIR, LEDGER_DIR, STAGING_DIR, TABLES
from sessionflow.lake.lock import LakeLock, shared_lock
from sessionflow.lake.restatements import REASONS
from sessionflow.lake.restatements import TABLE as RESTATEMENTS

_EXAMPLES = 5


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "problems": self.problems, "notes": self.notes}


@dataclass
class Verdict:
    lake: Path
    checks: list[Check] = field(default_factory=list)
    runs: int = 0
    files: int = 0
    records: int = 0

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, name: str) -> Check:
        self.checks.append(Check(name))
        return self.checks[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "lake": str(self.lake),
            "ok": self.ok,
            "runs": self.runs,
            "files": self.files,
            "records": self.records,
            "checks": [check.to_dict() for check in self.checks],
        }

    def render(self) -> str:
        lines = [f"sessionflow verify {self.lake}: {self.runs} run(s), {self.files} file(s), {self.records:,} records"]
        for check in self.checks:
            lines.append(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name}")
            lines.extend(f"          - {problem}" for problem in check.problems)
            lines.extend(f"          ({note})" for note in check.notes)
        problems = sum(len(check.problems) for check in self.checks)
        lines.append("verify: ok" if self.ok else f"verify: FAILED ({problems} problem(s))")
        return "\n".join(lines)


def repair(lake: Path) -> list[int]:
    """Roll forward the runs a killed process committed, then rebuild what is stale or wrong in the
    event-id index (with the lake lock, like a run)."""
    from sessionflow.lake.commit import recover

    with LakeLock(lake):
        finished = recover(lake)
        if (lake / INDEX_DIR).is_dir():
            from sessionflow.lake.ids import repair_index

            repair_index(lake)
        return finished


def verify_lake(lake: Path) -> Verdict:
    verdict = Verdict(lake)
    with shared_lock(lake) as free:
        if not free:
            verdict.check("no run is writing to the lake").problems.append(
                "a sessionflow run holds the lake lock; verify again when it has finished"
            )
            return verdict
        _verify(lake, verdict)
    return verdict


def _verify(lake: Path, verdict: Verdict) -> None:
    import orjson

    check = verdict.check("no committed run waits to be put in place")
    staging = lake / STAGING_DIR
    if staging.is_dir():
        for folder in sorted(staging.iterdir()):
            if (folder / "COMMIT.json").is_file():
                check.problems.append(
                    f"{folder.name} was committed by a run that was stopped before it was put in place; "
                    "the next run finishes it, or: sessionflow verify --repair"
                )
            else:
                check.notes.append(f"{folder.name}: an uncommitted run's leftovers; the next run removes them")

    check = verdict.check("ledgers run 1..N without a gap")
    ledgers: list[dict[str, Any]] = []
    for path in sorted((lake / LEDGER_DIR).glob("run-*.json")):
        try:
            ledger = orjson.loads(path.read_bytes())
            ledger["run"] = int(ledger["run"])
            ledgers.append(ledger)
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            check.problems.append(f"{path.name}: unreadable ledger: {exc}")
    ledgers.sort(key=lambda ledger: ledger["run"])
    numbers = [ledger["run"] for ledger in ledgers]
    if not ledgers and not check.problems:
        check.problems.append(f"no ledger in {LEDGER_DIR}: not a lake written by sessionflow, or it lost them")
    if numbers and numbers != list(range(1, numbers[-1] + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        check.problems.append(f"ledgers of run(s) {missing} are missing")
    verdict.runs = len(ledgers)
    verdict.records = sum(ledger["tally"]["records"] for ledger in ledgers)

    listed, present = _check_files(lake, ledgers, verdict)
    _check_conservation(ledgers, verdict)
    _check_rows(lake, ledgers, listed, verdict)
    # The content as a reader globbing the lake sees it: a stray copy of a file shows as doubled rows.
    _check_content(lake, ledgers, present, verdict)
    if (lake / INDEX_DIR).is_dir():
        from sessionflow.lake.ids import check_index

        found = check_index(lake)
        check = verdict.check("the event-id index holds the lake's events")
        check.problems.extend(found.problems)
        check.notes.extend(found.notes)


def _check_files(lake: Path, ledgers: list[dict[str, Any]], verdict: Verdict) -> tuple[dict[str, int], set[str]]:
    """(files listed by the ledgers that exist: relative path -> run, every file in the tables)."""
    check = verdict.check("every file a ledger lists exists, once; no other file is in the tables")
    listed: dict[str, int] = {}
    for ledger in ledgers:
        # A run that replaced files of earlier runs (a range backfill) names them: they are gone by design.
        for removal in ledger.get("removed", []):
            for name in removal["files"]:
                if listed.get(name) != removal["run"]:
                    check.problems.append(
                        f"run {ledger['run']} removed {name} of run {removal['run']}, which that run did not list"
                    )
                listed.pop(name, None)
        for name in ledger.get("files", []):
            if name in listed:
                check.problems.append(f"{name} is listed by run {listed[name]} and again by run {ledger['run']}")
            listed[name] = ledger["run"]
    present = {
        path.relative_to(lake).as_posix()
        for table in TABLES
        if (lake / table).is_dir()
        for path in (lake / table).rglob("*")
        if path.is_file()
    }
    missing = sorted(set(listed) - present)
    unlisted = sorted(present - set(listed))
    check.problems.extend(f"{name} is listed by run {listed[name]} but missing" for name in missing[:_EXAMPLES])
    if len(missing) > _EXAMPLES:
        check.problems.append(f"... and {len(missing) - _EXAMPLES} more missing files")
    check.problems.extend(f"{name} is in the lake but no ledger lists it" for name in unlisted[:_EXAMPLES])
    if len(unlisted) > _EXAMPLES:
        check.problems.append(f"... and {len(unlisted) - _EXAMPLES} more unlisted files")
    verdict.files = len(present)
    return {name: run for name, run in listed.items() if name in present}, present


def _check_conservation(ledgers: list[dict[str, Any]], verdict: Verdict) -> None:
    check = verdict.check("records in = events + rejected + duplicates + change of events buffered in state")
    previous: dict[str, Any] | None = None
    for ledger in ledgers:
        tally = ledger["tally"]
        rejected = sum(tally["rejected"].values())
        before = ledger.get("pending_before", 0)
        after = ledger.get("pending_in_state", 0)
        out = tally["events"] + rejected + tally["duplicates"] + after - before
        if tally["records"] != out:
            check.problems.append(
                f"run {ledger['run']}: {tally['records']} records in, but {tally['events']} events + {rejected} "
                f"rejected + {tally['duplicates']} duplicates + {after - before} newly buffered = {out}"
            )
        if previous is not None and before != previous.get("pending_in_state", 0):
            check.problems.append(
                f"run {ledger['run']} started with {before} events buffered in its state, but run "
                f"{previous['run']} left {previous.get('pending_in_state', 0)}: was another state file used?"
            )
        previous = ledger


def _check_rows(lake: Path, ledgers: list[dict[str, Any]], listed: dict[str, int], verdict: Verdict) -> None:
    import orjson
    import pyarrow.parquet as pq

    check = verdict.check("each run's files hold the rows its ledger counts")
    # Rows of a run's files that a later run removed, as that run counted them before removing them.
    removed: dict[int, Counter[str]] = {}
    for ledger in ledgers:
        for removal in ledger.get("removed", []):
            removed.setdefault(removal["run"], Counter()).update(
                {"events": removal.get("events", 0), "sessions": removal.get("sessions", 0)}
            )
    for ledger in ledgers:
        run = ledger["run"]
        gone = removed.get(run, Counter())
        events, sessions = gone["events"], gone["sessions"]
        rejected: Counter[str] = Counter()
        restatements = 0
        for name in ledger.get("files", []):
            if name not in listed:
                continue
            path = lake / name
            try:
                if name.startswith("events/"):
                    events += pq.read_metadata(path).num_rows
                elif name.startswith("sessions/"):
                    sessions += pq.read_metadata(path).num_rows
                elif name.startswith(f"{RESTATEMENTS}/"):
                    restatements += _check_restatement_file(path, name, run, check)
                else:
                    with open(path, "rb") as handle:
                        for number, line in enumerate(handle, 1):
                            row = orjson.loads(line)
                            rejected[row["reason"]] += 1
                            if f"reason={row['reason']}/" not in name:
                                check.problems.append(
                                    f"{name} line {number}: reason {row['reason']!r} in another partition"
                                )
            except Exception as exc:  # a damaged file is a finding, not a crash
                check.problems.append(f"{name}: unreadable: {type(exc).__name__}: {exc}")
        tally = ledger["tally"]
        # A run that rewrote files of earlier runs also wrote their rows again: tally + carried.
        carried = ledger.get("carried", {})
        for table, found, expected, what in (
            ("events", events, tally["events"] + carried.get("events", 0), "tally + carried"),
            ("sessions", sessions, tally["sessions"] + carried.get("sessions", 0), "tally + carried"),
            (RESTATEMENTS, restatements, ledger.get("restatements") or 0, "restatements"),
        ):
            if found != expected:
                check.problems.append(
                    f"run {run}: its {table} files hold {found} rows, its ledger counts {expected} ({what})"
                )
        if dict(rejected) != {reason: count for reason, count in tally["rejected"].items() if count}:
            check.problems.append(
                f"run {run}: its rejected files hold {dict(sorted(rejected.items()))}, "
                f"its ledger counts {dict(sorted(tally['rejected'].items()))}"
            )


def _check_restatement_file(path: Path, name: str, run: int, check: Check) -> int:
    """Its rows (raises when unreadable); a row of another run, or with an unknown reason, is a finding."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["run", "reason"])
    runs = set(table["run"].to_pylist())
    if runs - {run}:
        check.problems.append(f"{name}: rows of run(s) {sorted(runs - {run}, key=str)}, in run {run}'s log")
    reasons = set(table["reason"].to_pylist()) - set(REASONS)
    if reasons:
        check.problems.append(f"{name}: reason(s) {sorted(reasons, key=str)}, not one of {', '.join(REASONS)}")
    return int(table.num_rows)


def _check_content(lake: Path, ledgers: list[dict[str, Any]], present: set[str], verdict: Verdict) -> None:
    import duckdb

    event_files = sorted(
        str(lake / name) for name in present if name.startswith("events/") and name.endswith(".parquet")
    )
    session_files = sorted(
        str(lake / name) for name in present if name.startswith("sessions/") and name.endswith(".parquet")
    )
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    try:
        _views(db, event_files, session_files)
    except duckdb.Error as exc:
        verdict.check("the tables can be read").problems.append(f"DuckDB cannot read them: {exc}")
        return

    def examples(sql: str) -> list[tuple[Any, ...]]:
        return db.execute(sql + f" LIMIT {_EXAMPLES}").fetchall()

    check = verdict.check("the lake's event rows are what the runs wrote less what they removed")
    (rows,) = db.execute("SELECT count(*) FROM events").fetchone() or (0,)
    expected_rows = sum(_net_events(ledger) for ledger in ledgers)
    if rows != expected_rows:
        check.problems.append(
            f"the events files hold {rows} rows; the ledgers count {expected_rows} "
            "(tally.events + carried.events - removed events, over their runs)"
        )

    check = verdict.check("no event_id appears twice for a machine")
    for machine, event_id, count in examples(
        "SELECT machine_id, event_id, count(*) FROM events GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL"
    ):
        check.problems.append(f"machine {machine}: event {event_id} is in the lake {count} times")

    check = verdict.check("a session is summarised once")
    for session, count in examples("SELECT session_id, count(*) FROM sessions GROUP BY ALL HAVING count(*) > 1"):
        check.problems.append(f"session {session} has {count} summary rows")

    check = verdict.check("late events are in no session; every other event is in one")
    for event_id, late, session in examples(
        "SELECT event_id, late, session_id FROM events "
        "WHERE late IS NULL OR (late AND session_id IS NOT NULL) OR (NOT late AND session_id IS NULL)"
    ):
        check.problems.append(f"event {event_id}: late = {late}, session_id = {session}")

    check = verdict.check("every summary matches its events; only the sessions still open have none")
    open_sessions, open_events = db.execute(
        "SELECT count(DISTINCT session_id), count(*) FROM events e WHERE NOT late "
        "AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = e.session_id)"
    ).fetchone() or (0, 0)
    last = ledgers[-1] if ledgers else {}
    expected = (last.get("open_sessions", 0), last.get("events_in_open_sessions", 0))
    if (open_sessions, open_events) != expected:
        check.problems.append(
            f"{open_events} events in {open_sessions} sessions have no summary; the last ledger says "
            f"{expected[1]} events in {expected[0]} sessions are still open in the state"
        )
    for row in examples(
        "WITH agg AS (SELECT session_id, any_value(machine_id) AS machine_id, count(DISTINCT machine_id) AS machines, "
        "count(*) AS n, min(timestamp) AS first, max(timestamp) AS last, "
        "count(DISTINCT session_seq) AS seqs, min(session_seq) AS min_seq, max(session_seq) AS max_seq "
        "FROM events WHERE NOT late GROUP BY session_id) "
        "SELECT s.session_id, s.event_count, a.n, s.start_ts, a.first, s.end_ts, a.last, s.machine_id, a.machine_id "
        "FROM sessions s LEFT JOIN agg a USING (session_id) "
        "WHERE a.n IS NULL OR s.event_count != a.n OR s.start_ts != a.first OR s.end_ts != a.last "
        "OR s.machine_id != a.machine_id OR a.machines != 1 OR a.seqs != a.n OR a.min_seq != 1 OR a.max_seq != a.n "
        "ORDER BY 1"
    ):
        session, count, found, start, first, end, last_ts, machine, found_machine = row
        check.problems.append(
            f"session {session}: summary says {count} events from {start} to {end} on {machine}; its events "
            f"are {found or 0} from {first} to {last_ts} on {found_machine} (or their positions are not 1..n)"
        )
    for session, event_type, summary_count, event_count in examples(
        "WITH summary AS (SELECT session_id, unnest(map_keys(event_type_counts)) AS event_type, "
        "unnest(map_values(event_type_counts)) AS n FROM sessions), "
        "seen AS (SELECT session_id, event_type, count(*) AS n FROM events WHERE NOT late "
        "AND session_id IN (SELECT session_id FROM sessions) GROUP BY ALL) "
        "SELECT session_id, event_type, summary.n, seen.n FROM summary FULL JOIN seen USING (session_id, event_type) "
        "WHERE summary.n IS DISTINCT FROM seen.n ORDER BY ALL"
    ):
        check.problems.append(
            f"session {session}: summary counts {summary_count} {event_type!r} events, its events {event_count}"
        )

    _check_session_columns(db, examples, verdict)

    restatement_files = sorted(str(lake / name) for name in present if name.startswith(f"{RESTATEMENTS}/"))
    if restatement_files:
        _check_restated_ids(db, restatement_files, verdict)

    check = verdict.check("a machine's sessions never overlap")
    for machine, session, start, previous, previous_end in examples(
        "SELECT machine_id, session_id, start_ts, previous, previous_end FROM ("
        "SELECT machine_id, session_id, start_ts, lag(session_id) OVER w AS previous, "
        "lag(end_ts) OVER w AS previous_end FROM sessions "
        "WINDOW w AS (PARTITION BY machine_id ORDER BY start_ts, end_ts)) WHERE start_ts < previous_end ORDER BY ALL"
    ):
        check.problems.append(
            f"machine {machine}: session {session} starts at {start}, before session {previous} ends at {previous_end}"
        )


def _check_session_columns(db: Any, examples: Any, verdict: Verdict) -> None:
    """What a session says of itself (core/rules.py): why it ended, its documents, its first os, its
    events that arrived late; and each machine's sessions numbered 1, 2, ... in time order."""
    columns = {
        table: {row[0] for row in db.execute(f"DESCRIBE {table}").fetchall()} for table in ("events", "sessions")
    }
    if "close_reason" not in columns["sessions"] or "arrived_late" not in columns["events"]:
        return  # a lake written before sessions had these columns
    check = verdict.check("every session says why it ended, and what its events say of its documents, os, late ones")
    reasons = ", ".join(f"'{reason}'" for reason in CLOSE_REASONS)
    for session, reason in examples(
        f"SELECT session_id, close_reason FROM sessions WHERE close_reason IS NULL OR close_reason NOT IN ({reasons}) "
        "ORDER BY 1"
    ):
        check.problems.append(f"session {session}: close_reason {reason!r} is not one of {reasons}")
    documents = "count(DISTINCT document_id)" if "document_id" in columns["events"] else "0"
    first_os = (
        "arg_min(os, (timestamp, event_id)) FILTER (WHERE os IS NOT NULL)" if "os" in columns["events"] else "NULL"
    )
    for session, summary, found in examples(
        f"WITH agg AS (SELECT session_id, {documents} AS documents, "
        f"count(*) FILTER (WHERE arrived_late) AS late_placed, {first_os} AS os "
        "FROM events WHERE NOT late GROUP BY session_id) "
        "SELECT s.session_id, (s.documents, s.late_placed, s.os), (a.documents, a.late_placed, a.os) "
        "FROM sessions s JOIN agg a USING (session_id) "
        "WHERE s.documents != a.documents OR s.late_placed != a.late_placed OR s.os IS DISTINCT FROM a.os ORDER BY 1"
    ):
        check.problems.append(f"session {session}: (documents, late_placed, os) say {summary}, its events {found}")
    check = verdict.check("each machine's sessions are numbered 1, 2, ... in time order")
    # Sessions of one instant (an opening event and another event at the same millisecond) are in
    # the order their first events are sessionized: by timestamp, then event_id.
    for machine, session, number, position in examples(
        "WITH firsts AS (SELECT session_id, arg_min(event_id, (timestamp, event_id)) AS first_id FROM events "
        "WHERE NOT late GROUP BY session_id) "
        "SELECT machine_id, session_id, session_number, position FROM (SELECT machine_id, session_id, session_number, "
        "row_number() OVER (PARTITION BY machine_id ORDER BY start_ts, end_ts, first_id) AS position "
        "FROM sessions LEFT JOIN firsts USING (session_id)) "
        "WHERE session_number IS DISTINCT FROM position ORDER BY ALL"
    ):
        check.problems.append(f"machine {machine}: session {session} is its session {position}, numbered {number}")


def _net_events(ledger: dict[str, Any]) -> int:
    """Event rows a run added to the lake: what it wrote (new and carried) less what it took out."""
    written = ledger["tally"]["events"] + ledger.get("carried", {}).get("events", 0)
    return int(written - sum(removal.get("events", 0) for removal in ledger.get("removed", [])))


def _check_restated_ids(db: Any, files: list[str], verdict: Verdict) -> None:
    """The latest run that restated an old id names new ids a reader finds (unless a later run restated them)."""
    import duckdb

    check = verdict.check("every session id the restatement log leads to is in the lake")
    quoted = ", ".join("'" + name.replace("'", "''") + "'" for name in files)
    try:
        db.execute(f"CREATE VIEW restatements AS SELECT * FROM read_parquet([{quoted}])")
        dangling = db.execute(
            "WITH latest AS (SELECT machine_id, old_session_id, max(run) AS run FROM restatements GROUP BY ALL) "
            "SELECT r.run, r.machine_id, r.old_session_id, r.new_session_id "
            "FROM restatements r JOIN latest USING (machine_id, old_session_id, run) "
            "WHERE NOT EXISTS (SELECT 1 FROM restatements later WHERE later.machine_id = r.machine_id "
            "AND later.old_session_id = r.new_session_id AND later.run > r.run) "
            "AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = r.new_session_id) "
            # A session still open in the state has events but no summary yet.
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.session_id = r.new_session_id) "
            f"ORDER BY ALL LIMIT {_EXAMPLES}"
        ).fetchall()
    except duckdb.Error as exc:
        check.problems.append(f"DuckDB cannot read the restatement log: {exc}")
        return
    for run, machine, old_id, new_id in dangling:
        check.problems.append(
            f"run {run} restated session {old_id} of machine {machine} as {new_id}, which is in no table"
        )


def _views(db: Any, event_files: list[str], session_files: list[str]) -> None:
    def source(files: list[str], empty: str) -> str:
        if not files:
            return f"(SELECT * FROM (VALUES {empty}) LIMIT 0)"
        quoted = ", ".join("'" + name.replace("'", "''") + "'" for name in files)
        return f"read_parquet([{quoted}], hive_partitioning = true)"

    db.execute(
        "CREATE VIEW events AS SELECT * FROM "
        + source(
            event_files,
            "(''::VARCHAR, ''::VARCHAR, ''::VARCHAR, 0::BIGINT, ''::VARCHAR, 0::INT, 0::BIGINT, FALSE, FALSE)) "
            "t(event_id, machine_id, event_type, timestamp, session_id, session_seq, ms_since_prev, late, arrived_late",
        )
    )
    db.execute(
        "CREATE VIEW sessions AS SELECT * FROM "
        + source(
            session_files,
            "(''::VARCHAR, ''::VARCHAR, 0::BIGINT, 0::BIGINT, 0::BIGINT, MAP {'': 0::BIGINT}, ''::VARCHAR, 0::BIGINT, "
            "0::BIGINT, 0::BIGINT, ''::VARCHAR)) t(session_id, machine_id, start_ts, end_ts, event_count, "
            "event_type_counts, os, session_number, documents, late_placed, close_reason",
        )
    )
