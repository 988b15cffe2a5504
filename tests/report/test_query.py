"""``sessionflow query``: the lake's views against DuckDB reading the files itself, the three formats,
SQL from standard input, the prompt, and mistakes with their exit codes."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pytest

from sessionflow.report.lake_db import open_lake
from sessionflow.report.query import prompt


def sessionflow(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sessionflow", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120, check=False)


def direct(sql: str) -> list[tuple[object, ...]]:
    return duckdb.connect().execute(sql).fetchall()


def test_the_session_count_is_what_duckdb_reads_from_the_files(lake: Path) -> None:
    done = sessionflow("query", lake, "select count(*) from sessions", "--format", "csv")
    assert done.returncode == 0, done.stderr
    header, value = done.stdout.splitlines()
    (expected,) = direct(f"SELECT count(*) FROM read_parquet('{lake}/sessions/*/*.parquet')")[0]
    assert header == "count_star()"
    assert isinstance(expected, int) and int(value) == expected > 0


def test_every_session_has_a_close_reason_and_partitions_are_columns(lake: Path) -> None:
    done = sessionflow(
        "query",
        lake,
        "SELECT count(*) FILTER (WHERE close_reason IS NULL) AS missing, count(DISTINCT session_date) AS days, "
        "count(DISTINCT event_date) AS event_days FROM sessions, (SELECT event_date FROM events LIMIT 1)",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    (row,) = orjson.loads(done.stdout)
    assert row["missing"] == 0 and row["days"] >= 2 and row["event_days"] == 1


def test_rejected_runs_and_formats(lake: Path) -> None:
    sql = "SELECT reason, count(*) AS n FROM rejected GROUP BY 1 ORDER BY 1"
    as_csv = sessionflow("query", lake, sql, "-f", "csv").stdout
    as_json = orjson.loads(sessionflow("query", lake, sql, "-f", "json").stdout)
    as_table = sessionflow("query", lake, sql).stdout.splitlines()
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    counted: dict[str, int] = {}
    for path in lake.glob("rejected/*/*.jsonl"):
        for line in path.read_bytes().splitlines():
            reason = orjson.loads(line)["reason"]
            counted[reason] = counted.get(reason, 0) + 1
    assert {row["reason"]: int(row["n"]) for row in rows} == counted
    assert {row["reason"]: row["n"] for row in as_json} == counted
    assert as_table[0].split() == ["reason", "n"] and as_table[-1] == f"({len(counted)} rows)"
    runs = orjson.loads(sessionflow("query", lake, "SELECT run, records, duplicates FROM runs", "-f", "json").stdout)
    ledger = orjson.loads((lake / "_sessionflow/ledger/run-00001.json").read_bytes())
    assert runs == [{"run": 1, "records": ledger["tally"]["records"], "duplicates": ledger["tally"]["duplicates"]}]


def test_sql_on_standard_input_and_several_statements(lake: Path) -> None:
    done = sessionflow("query", lake, "-f", "csv", stdin="SELECT 1 AS one; SELECT 'a;b' AS text;\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["one", "1", "text", "a;b"]


def test_the_prompt_runs_statements_until_quit(lake: Path) -> None:
    db, _ = open_lake(lake)
    lines = iter(["SELECT count(*) AS n", "FROM sessions;", "SELECT nonsense FROM nowhere;", ".tables", ".quit"])
    out = io.StringIO()
    prompt(db, "csv", out, read=lambda _: next(lines))
    text = out.getvalue()
    (expected,) = direct(f"SELECT count(*) FROM read_parquet('{lake}/sessions/*/*.parquet')")[0]
    assert f"n\n{expected}\n" in text
    assert "query: Catalog Error" in text  # an error is shown, and the prompt goes on
    assert "events" in text and "restatements" not in text.split(".tables")[-1]


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["query", "{lake}", "SELEC 1"], 2, "query: Parser Error"),
        (["query", "{lake}", "SELECT * FROM nowhere"], 2, "query: Catalog Error"),
        (["query", "{missing}", "SELECT 1"], 3, "no such folder"),
        (["query", "{lake}", "SELECT 1", "--format", "xml"], 2, "invalid choice"),
    ],
)
def test_mistakes_exit_with_their_code(
    lake: Path, tmp_path: Path, arguments: list[str], code: int, message: str
) -> None:
    values = {"lake": lake, "missing": tmp_path / "nothing"}
    done = sessionflow(*(argument.format(**values) for argument in arguments))
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_table_without_files_is_an_empty_view_of_its_columns(tmp_path: Path) -> None:
    feed = tmp_path / "bad.jsonl"
    feed.write_bytes(b"[1]\n")
    lake = tmp_path / "lake"
    assert sessionflow("run", feed, "--out", lake, "-q").returncode == 6
    done = sessionflow(
        "query", lake, "SELECT count(*) AS n, count(close_reason) AS reasons FROM sessions, events", "-f", "csv"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["n,reasons", "0,0"]
