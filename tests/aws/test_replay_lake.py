"""`sessionflow aws-local replay` writes the lake `sessionflow run` writes, and `sessionflow verify` passes both.

Both commands run as a person runs them (separate processes, the CLI's own options); the lakes are
then read with DuckDB and compared table by table, row by row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessionflow.synthetic import FeedShape, generate

pytestmark = [pytest.mark.aws, pytest.mark.slow]
duckdb = pytest.importorskip("duckdb")


def sessionflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SESSIONFLOW_", "POWERTOOLS_"))}
    command = [sys.executable, "-m", "sessionflow", *args]
    return subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _rows(connection: Any, query: str) -> list[tuple[Any, ...]]:
    return sorted(connection.execute(query).fetchall(), key=repr)


def test_replay_writes_the_lake_run_writes(tmp_path: Path, config_path: Path) -> None:
    lines = list(generate(FeedShape(events=1500, machines=30, seed=17, late_rate=0.0)))
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    config = ["--config", str(config_path)]

    done = sessionflow("run", str(feed), "--out", "embedded", *config, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = sessionflow("aws-local", "replay", str(feed), "--out", "aws", *config, "--batch-size", "200", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for lake in ("embedded", "aws"):
        verified = sessionflow("verify", lake, cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr

    embedded, aws = tmp_path / "embedded", tmp_path / "aws"
    # The same layout: tables, partition folders, file formats.
    for table in ("events", "sessions", "rejected"):
        folders = {p.name for p in (embedded / table).iterdir()}
        assert folders == {p.name for p in (aws / table).iterdir()}, table
        suffixes = {p.suffix for p in (embedded / table).rglob("*") if p.is_file()}
        assert (
            suffixes
            == {p.suffix for p in (aws / table).rglob("*") if p.is_file()}
            == {".jsonl" if table == "rejected" else ".parquet"}
        )

    connection = duckdb.connect()
    for table in ("events", "sessions"):
        scans = [f"read_parquet('{lake}/{table}/*/*.parquet', hive_partitioning = true)" for lake in (embedded, aws)]
        ours, theirs = (connection.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall() for scan in scans)
        assert ours == theirs, table
        assert _rows(connection, f"SELECT * FROM {scans[1]}") == _rows(connection, f"SELECT * FROM {scans[0]}"), table
    # A rejection says where its record was read: a file and line, or a stream position. The rest is equal.
    what = "reason, message, raw_base64, raw"
    scans = [f"read_json('{lake}/rejected/*/*.jsonl', format = 'newline_delimited')" for lake in (embedded, aws)]
    assert _rows(connection, f"SELECT {what} FROM {scans[1]}") == _rows(connection, f"SELECT {what} FROM {scans[0]}")
    assert {row[0] for row in connection.execute(f"SELECT source FROM {scans[1]}").fetchall()} != {"feed.jsonl"}

    # And the ledgers tell the same story (blank lines are no Kinesis records: never put).
    tallies = [
        json.loads(next((lake / "_sessionflow" / "ledger").glob("run-*.json")).read_text())["tally"]
        for lake in (embedded, aws)
    ]
    mine, theirs = tallies[1], tallies[0]
    assert mine["records"] == theirs["records"] - theirs["blank"]
    for key in ("events", "rejected", "duplicates", "late", "sessions"):
        assert mine[key] == theirs[key], key
