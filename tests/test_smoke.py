"""The smallest end-to-end check: the CLI runs on generated data and DuckDB reads the lake."""

from pathlib import Path

import duckdb

from sessionflow.cli import main
from sessionflow.synthetic import FeedShape, write_feed


def test_run_writes_a_lake_duckdb_reads(tmp_path: Path) -> None:
    feed = tmp_path / "events.jsonl"
    written = write_feed(FeedShape(events=3_000, machines=30, seed=3), str(feed))
    config = tmp_path / "sessionflow.toml"
    assert main(["init", str(config)]) == 0
    db = duckdb.connect()
    assert main(["run", str(feed), "--out", str(tmp_path / "lake"), "--config", str(config), "--quiet"]) == 0
    events, sessions = db.execute(
        f"SELECT count(*), count(DISTINCT session_id) FROM read_parquet('{tmp_path}/lake/events/*/*.parquet')"
    ).fetchall()[0]
    rejected = db.execute(f"SELECT count(*) FROM read_json('{tmp_path}/lake/rejected/*/*.jsonl')").fetchall()[0][0]
    assert 0 < events < written
    assert (
        sessions
        == db.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/sessions/*/*.parquet')").fetchall()[0][0]
    )
    assert rejected > 0
