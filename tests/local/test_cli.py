"""End to end through the command line: generated feed -> `sessionflow run` -> the lake, read back
with DuckDB and pyarrow. Conservation, partitions, schema, raw bytes of rejections, the input kinds,
determinism, incremental runs with --state, and the exit codes."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sessionflow.cli import main
from sessionflow.config import EXAMPLE_CONFIG
from sessionflow.core.native import implementation
from sessionflow.synthetic import FeedShape, write_feed
from tests.helpers import group_gone

FEED_SHAPE = FeedShape(events=8_000, machines=60, seed=5)


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def config_file(workdir: Path) -> Path:
    path = workdir / "sessionflow.toml"
    path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def feed(workdir: Path) -> Path:
    path = workdir / "events.jsonl"
    # Through the CLI's own generator.
    assert main(["generate", "-n", str(FEED_SHAPE.events), "-m", "60", "-s", "5", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def reference_lake(workdir: Path, feed: Path, config_file: Path) -> tuple[Path, dict[str, Any]]:
    """One plain run over the feed, shared by the tests that only read."""
    lake = workdir / "reference-lake"
    summary = run_json(feed, out=lake, config=config_file)
    return lake, summary


def run_json(*inputs: Path | str, out: Path, config: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``sessionflow run ... --json`` in this process; returns the printed summary."""
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["run", *map(str, inputs), "--out", str(out), "--config", str(config), "--json", "-q", *extra])
    assert code == 0, stdout.getvalue()
    summary: dict[str, Any] = json.loads(stdout.getvalue())
    return summary


def sql(query: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = duckdb.connect().execute(query).fetchall()
    return rows


def events_of(lake: Path) -> str:
    return f"read_parquet('{lake}/events/*/*.parquet', hive_partitioning=true)"


def sessions_of(lake: Path) -> str:
    return f"read_parquet('{lake}/sessions/*/*.parquet', hive_partitioning=true)"


def placements(lake: Path) -> dict[str, tuple[Any, ...]]:
    """event_id -> (session_id, session_seq, ms_since_prev, late)."""
    rows = sql(f"SELECT event_id, session_id, session_seq, ms_since_prev, late FROM {events_of(lake)}")
    placed = {row[0]: row[1:] for row in rows}
    assert len(placed) == len(rows), "an event id appears twice in the lake"
    return placed


def session_rows(lake: Path) -> list[tuple[Any, ...]]:
    return sorted(
        sql(
            "SELECT session_id, machine_id, user_id, start_ts, end_ts, duration_ms, event_count, first_event_type, "
            f"last_event_type, map_entries(event_type_counts)::VARCHAR, app_version, session_date::VARCHAR "
            f"FROM {sessions_of(lake)}"
        )
    )


def rejected_rows(lake: Path) -> list[tuple[str, dict[str, Any]]]:
    """(reason partition, row) for every rejected record."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for path in sorted((lake / "rejected").glob("reason=*/*.jsonl")):
        reason = path.parent.name.removeprefix("reason=")
        rows.extend((reason, orjson.loads(line)) for line in path.read_bytes().splitlines())
    return rows


def total_rejected(summary: dict[str, Any]) -> int:
    return sum(summary["tally"]["rejected"].values())


def day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


# -- one run, read back ---------------------------------------------------------------------------


def test_conservation_from_the_summary_and_from_the_lake(
    reference_lake: tuple[Path, dict[str, Any]], feed: Path
) -> None:
    lake, summary = reference_lake
    assert summary["sessionizer"] == implementation()  # the JSON says which sessionizer ran
    tally = summary["tally"]
    lines = feed.read_bytes().splitlines()
    assert len(lines) == FEED_SHAPE.events
    assert tally["records"] + tally["blank"] == len(lines)
    assert tally["blank"] == sum(1 for line in lines if not line.strip())
    assert tally["records"] == tally["events"] + total_rejected(summary) + tally["duplicates"]
    assert tally["duplicates"] > 0
    assert total_rejected(summary) > 0
    # The lake holds exactly what the summary counts.
    ((events, late, sessions_in_events),) = sql(
        f"SELECT count(*), count(*) FILTER (WHERE late), count(DISTINCT session_id) FROM {events_of(lake)}"
    )
    rejected = rejected_rows(lake)
    assert events == tally["events"]
    assert late == tally["late"]
    assert len(rejected) == total_rejected(summary)
    assert events + len(rejected) + tally["duplicates"] == tally["records"]
    # Every non-blank line is an event, a rejection or a duplicate: the duplicates are the repeated lines.
    valid_lines = [line for line in lines if line.strip()]
    rejected_line_numbers = {row["line"] for _, row in rejected}
    kept = [line for i, line in enumerate(lines, 1) if line.strip() and i not in rejected_line_numbers]
    assert len(kept) - len({orjson.loads(line)["event_id"] for line in kept}) == tally["duplicates"]
    assert len(valid_lines) == tally["records"]
    # Sessions: one row per session, and they hold every placed event.
    ((session_count, placed_in_sessions),) = sql(f"SELECT count(*), sum(event_count) FROM {sessions_of(lake)}")
    assert session_count == tally["sessions"] == sessions_in_events
    assert placed_in_sessions == events - late
    # The ledger agrees.
    (ledger,) = (lake / "_sessionflow" / "ledger").glob("run-*.json")
    assert orjson.loads(ledger.read_bytes())["tally"] == tally


def test_hive_partitions_match_the_rows(reference_lake: tuple[Path, dict[str, Any]]) -> None:
    lake, summary = reference_lake
    events = ds.dataset(lake / "events", format="parquet", partitioning="hive")
    table = events.to_table(columns=["timestamp", "event_time", "event_date", "event_hour", "day_of_week"])
    assert table.num_rows == summary["tally"]["events"]
    assert len(set(table.column("event_date").to_pylist())) >= 3
    for row in table.to_pylist():
        moment = datetime.fromtimestamp(row["timestamp"] / 1000, UTC)
        assert str(row["event_date"]) == moment.strftime("%Y-%m-%d")
        assert row["event_time"] == moment
        assert (row["event_hour"], row["day_of_week"]) == (moment.hour, moment.isoweekday())
    # Each file sits in the partition of every row it holds.
    for path in (lake / "events").glob("event_date=*/*.parquet"):
        dates = {day(ms) for ms in pq.read_table(path, columns=["timestamp"]).column("timestamp").to_pylist()}
        assert dates == {path.parent.name.removeprefix("event_date=")}
    for path in (lake / "sessions").glob("session_date=*/*.parquet"):
        dates = {day(ms) for ms in pq.read_table(path, columns=["start_ts"]).column("start_ts").to_pylist()}
        assert dates == {path.parent.name.removeprefix("session_date=")}
    # And DuckDB sees the same partitions.
    assert sql(
        f"SELECT count(*) FROM {events_of(lake)} WHERE event_date::VARCHAR != strftime(epoch_ms(timestamp), '%Y-%m-%d')"
    ) == [(0,)]


def test_cleaning_of_the_example_config_reaches_the_lake(reference_lake: tuple[Path, dict[str, Any]]) -> None:
    lake, _ = reference_lake
    # Build 11.2.* sent seconds and some builds upper-case types: both are fixed, none rejected for it.
    ((old_build, upper, earliest),) = sql(
        "SELECT count(*) FILTER (WHERE app_version LIKE '11.2.%'), "
        "count(*) FILTER (WHERE event_type != lower(event_type)), "
        f"min(timestamp) FROM {events_of(lake)}"
    )
    assert old_build > 0
    assert upper == 0
    assert earliest >= int(FEED_SHAPE.start.timestamp() * 1000)


def test_schema_is_the_same_whatever_extra_fields_arrive(workdir: Path, config_file: Path) -> None:
    schemas: list[pa.Schema] = []
    session_schemas: list[pa.Schema] = []
    extras = []
    for name, fields in (("a", {"locale": "de-DE"}), ("b", {"flags": ["dark"], "nested": {"x": 1}, "size": 3.5})):
        feed = workdir / f"extra-{name}.jsonl"
        lines = [
            orjson.dumps(
                {
                    "event_id": f"{name}{i}",
                    "machine_id": f"m{i % 3}",
                    "event_type": "view",
                    "timestamp": 1_791_158_400_000 + i * 1000,
                    **fields,
                }
            )
            for i in range(50)
        ]
        feed.write_bytes(b"\n".join(lines) + b"\n")
        lake = workdir / f"extra-lake-{name}"
        run_json(feed, out=lake, config=config_file, extra=("--workers", "0"))
        files = sorted((lake / "events").glob("*/*.parquet"))
        assert files
        schemas.extend(pq.read_schema(path) for path in files)
        extras.append({row[0] for row in sql(f"SELECT extra FROM {events_of(lake)}")})
        session_schemas.extend(pq.read_schema(path) for path in sorted((lake / "sessions").glob("*/*.parquet")))
    assert len(schemas) >= 2
    assert all(schema.equals(schemas[0]) for schema in schemas)
    assert all(schema.equals(session_schemas[0]) for schema in session_schemas)
    assert extras == [{'{"locale":"de-DE"}'}, {'{"flags":["dark"],"nested":{"x":1},"size":3.5}'}]


def test_rejected_rows_keep_the_raw_bytes_source_and_line(workdir: Path) -> None:
    config = workdir / "small-records.toml"
    config.write_text(EXAMPLE_CONFIG + "\n[validation]\nmax_record_bytes = 300\n", encoding="utf-8")
    good = orjson.dumps({"event_id": "ok", "machine_id": "m", "event_type": "view", "timestamp": 1_791_158_400_000})
    bad = {
        2: (b'{"event_id": "\xff\xfe", "machine_id": "m"}', "invalid_utf8"),
        3: (b'{"event_id": "x", "timestamp": NaN', "malformed_json"),
        4: (b"[1, 2, 3]", "not_an_object"),
        5: (b'{"event_id": "x", "machine_id": "m", "event_type": "view"}', "missing_field"),
        6: (b'{"event_id": "", "machine_id": "m", "event_type": "view", "timestamp": 1791158400000}', "empty_field"),
        7: (b'{"event_id": 7, "machine_id": "m", "event_type": "view", "timestamp": 1791158400000}', "wrong_type"),
        8: (b'{"event_id": "x", "machine_id": "m", "event_type": "v", "timestamp": "noon"}', "invalid_timestamp"),
        9: (b'{"event_id": "x", "machine_id": "m", "event_type": "v", "timestamp": 5}', "timestamp_out_of_range"),
        10: (b'{"pad": "' + b"\xff" * 400 + b'"}', "oversized"),
        12: (b"  \xef\xbb\xbf{nope} ", "malformed_json"),  # kept as read, blanks and BOM included
    }
    lines = [good, *(bad[i][0] if i in bad else b"" for i in range(2, 13))]
    assert lines[10] == b""  # line 11 is blank: skipped and counted, not rejected
    feed = workdir / "bad.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    lake = workdir / "bad-lake"
    summary = run_json(feed, out=lake, config=config, extra=("--workers", "0"))
    assert summary["tally"]["blank"] == 1
    assert summary["tally"]["events"] == 1
    rows = rejected_rows(lake)
    assert len(rows) == len(bad) == total_rejected(summary)
    for reason, row in rows:
        raw, expected_reason = bad[row["line"]]
        assert reason == row["reason"] == expected_reason, row
        assert base64.b64decode(row["raw_base64"]) == raw
        assert row["source"] == str(feed)
        assert row["message"]
        try:
            assert row["raw"] == raw.decode("utf-8")
        except UnicodeDecodeError:
            assert row["raw"] is None
    # DuckDB reads the rejected table as JSON lines.
    assert sql(f"SELECT count(*) FROM read_json('{lake}/rejected/*/*.jsonl')") == [(len(bad),)]


# -- inputs ---------------------------------------------------------------------------------------


def test_gzip_and_directory_inputs_give_what_the_plain_file_gives(
    workdir: Path, feed: Path, config_file: Path, reference_lake: tuple[Path, dict[str, Any]]
) -> None:
    expected = placements(reference_lake[0])
    compressed = workdir / "events.jsonl.gz"
    compressed.write_bytes(gzip.compress(feed.read_bytes()))
    gz_lake = workdir / "gz-lake"
    run_json(compressed, out=gz_lake, config=config_file)
    assert placements(gz_lake) == expected

    folder = workdir / "folder"
    (folder / "sub").mkdir(parents=True)
    lines = feed.read_bytes().splitlines(keepends=True)
    (folder / "a.jsonl").write_bytes(b"".join(lines[:3000]))
    (folder / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[3000:])))  # gzip by content
    (folder / ".hidden.jsonl").write_bytes(b"not json\n")
    (folder / "_temporary").write_bytes(b"not json\n")
    dir_lake = workdir / "dir-lake"
    summary = run_json(folder, out=dir_lake, config=config_file)
    assert [item["source"] for item in summary["inputs"]] == [
        str(folder / "a.jsonl"),
        str(folder / "sub" / "b.jsonl.gz"),
    ]
    assert placements(dir_lake) == expected
    assert summary["tally"]["records"] == reference_lake[1]["tally"]["records"]


def test_stdin_through_a_subprocess(
    workdir: Path, feed: Path, config_file: Path, reference_lake: tuple[Path, dict[str, Any]]
) -> None:
    lake = workdir / "stdin-lake"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sessionflow",
            "run",
            "-",
            "--out",
            str(lake),
            "--config",
            str(config_file),
            "--json",
            "-q",
        ],
        input=feed.read_bytes(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["tally"] == reference_lake[1]["tally"]
    assert summary["inputs"] == [{"source": "-", "lines": FEED_SHAPE.events}]
    # Byte-identical session ids from another process, and rejections name standard input.
    assert placements(lake) == placements(reference_lake[0])
    assert {row["source"] for _, row in rejected_rows(lake)} == {"-"}


# -- determinism and incremental runs -------------------------------------------------------------


def test_two_runs_give_identical_session_ids_whatever_the_workers(
    workdir: Path, feed: Path, config_file: Path, reference_lake: tuple[Path, dict[str, Any]]
) -> None:
    lake = workdir / "again"
    run_json(feed, out=lake, config=config_file, extra=("--workers", "0"))
    assert placements(lake) == placements(reference_lake[0])
    assert session_rows(lake) == session_rows(reference_lake[0])
    lake2 = workdir / "again-2"
    run_json(feed, out=lake2, config=config_file, extra=("--workers", "2"))
    assert placements(lake2) == placements(reference_lake[0])


def test_yesterday_then_today_with_state_equals_one_run_on_both(workdir: Path, feed: Path, config_file: Path) -> None:
    lines = feed.read_bytes().splitlines(keepends=True)
    yesterday, today = workdir / "yesterday.jsonl", workdir / "today.jsonl"
    yesterday.write_bytes(b"".join(lines[: len(lines) // 2 + 17]))
    today.write_bytes(b"".join(lines[len(lines) // 2 + 17 :]))

    both = workdir / "both-lake"
    run_json(yesterday, today, out=both, config=config_file)

    lake, state = workdir / "daily-lake", workdir / "daily.state"
    first = run_json(yesterday, out=lake, config=config_file, extra=("--state", str(state)))
    assert state.exists()
    # Nothing waits in the state: after each run the lake is what one run over the input so far gives.
    tally = first["tally"]
    assert tally["records"] == tally["events"] + total_rejected(first) + tally["duplicates"]
    only_yesterday = workdir / "yesterday-lake"
    run_json(yesterday, out=only_yesterday, config=config_file)
    assert placements(lake) == placements(only_yesterday)
    assert session_rows(lake) == session_rows(only_yesterday)
    second = run_json(today, out=lake, config=config_file, extra=("--state", str(state), "--flush"))
    assert second["run"] == 2

    assert placements(lake) == placements(both)
    assert session_rows(lake) == session_rows(both)
    records = first["tally"]["records"] + second["tally"]["records"]
    events = first["tally"]["events"] + second["tally"]["events"]
    duplicates = first["tally"]["duplicates"] + second["tally"]["duplicates"]
    assert records == events + total_rejected(first) + total_rejected(second) + duplicates
    assert len(rejected_rows(lake)) == len(rejected_rows(both))


def test_state_survives_another_process_with_several_opening_events(workdir: Path, feed: Path) -> None:
    """The state's config fingerprint must not depend on the process's string hashing."""
    config = workdir / "two-openings.toml"
    config.write_text(EXAMPLE_CONFIG.replace('["app_open"]', '["app_open", "doc_open", "login"]'), encoding="utf-8")
    lines = feed.read_bytes().splitlines(keepends=True)
    first, second = workdir / "part1.jsonl", workdir / "part2.jsonl"
    first.write_bytes(b"".join(lines[:2000]))
    second.write_bytes(b"".join(lines[2000:3000]))
    state, lake = workdir / "two-openings.state", workdir / "two-openings-lake"
    command = [sys.executable, "-m", "sessionflow", "run", "--out", str(lake), "--config", str(config)]
    for seed, part, flags in (("1", first, []), ("2", second, ["--flush"])):
        done = subprocess.run(
            [*command, str(part), "--state", str(state), "--quiet", "--workers", "0", *flags],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()


def test_state_refuses_another_config(
    workdir: Path, feed: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, lake = workdir / "refuse.state", workdir / "refuse-lake"
    run_json(feed, out=lake, config=config_file, extra=("--state", str(state), "--workers", "0"))
    other = workdir / "other-timeout.toml"
    other.write_text(EXAMPLE_CONFIG.replace('timeout = "30m"', 'timeout = "45m"'), encoding="utf-8")
    capsys.readouterr()
    code = main(["run", str(feed), "--out", str(lake), "--config", str(other), "--state", str(state), "-q"])
    assert code == 4
    assert "state" in capsys.readouterr().err


# -- exit codes -----------------------------------------------------------------------------------


def test_missing_input_exits_3_before_anything_is_written(
    workdir: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = workdir / "never"
    code = main(["run", str(workdir / "nope.jsonl"), "--out", str(lake), "--config", str(config_file), "-q"])
    assert code == 3
    assert "nope.jsonl" in capsys.readouterr().err
    assert not lake.exists()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[session]\ntimeout = "30m"\ntimout = "5m"\n', "session.timout"),
        ('[session]\ntimeout = "thirty"\n', "session.timeout"),
        ("[session]\nallowed_lateness = 300\n", "session.allowed_lateness"),
        ('[sesion]\ntimeout = "30m"\n', "sesion"),
        ('[[clean]]\nwhen = { app_version = "11.2.*" }\nscael = { timestamp = 1000 }\n', "clean[0].scael"),
        ("[[clean]]\nscale = { timestamp = 0 }\n", "clean[0].scale.timestamp"),
        ('[[clean]]\nfunction = "no.such.module:fix"\n', "clean[0].function"),
        ('[columns]\npages = "integer"\n', "columns.pages"),
        ('[validation]\nmin_timestamp = "2000-01-01T00:00:00"\n', "validation.min_timestamp"),
        ('[output]\ncompression = "lz4"\n', "output.compression"),
    ],
)
def test_bad_config_exits_2_naming_the_key_and_runs_nothing(
    workdir: Path, feed: Path, toml: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = workdir / f"bad-{abs(hash(toml))}.toml"
    config.write_text(toml, encoding="utf-8")
    lake = workdir / f"bad-config-lake-{abs(hash(toml))}"
    capsys.readouterr()
    assert main(["run", str(feed), "--out", str(lake), "--config", str(config), "-q"]) == 2
    assert key in capsys.readouterr().err
    assert not lake.exists()
    assert main(["check-config", "--config", str(config)]) == 2
    assert key in capsys.readouterr().err


def test_check_config_accepts_the_example(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(config_file)]) == 0
    assert "config ok" in capsys.readouterr().out


def test_existing_lake_needs_overwrite(workdir: Path, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = workdir / "tiny.jsonl"
    write_feed(FeedShape(events=300, machines=5, seed=2), str(feed))
    lake = workdir / "exists-lake"
    run_json(feed, out=lake, config=config_file, extra=("--workers", "0"))
    before = placements(lake)
    capsys.readouterr()
    assert main(["run", str(feed), "--out", str(lake), "--config", str(config_file), "-q", "--workers", "0"]) == 4
    assert "--overwrite" in capsys.readouterr().err
    assert placements(lake) == before  # untouched
    assert main(["run", str(feed), "--out", str(lake), "--config", str(config_file), "-q", "--overwrite"]) == 0
    assert placements(lake) == before
    assert len(list((lake / "_sessionflow" / "ledger").glob("run-*.json"))) == 1


def test_max_reject_rate(workdir: Path, config_file: Path) -> None:
    feed = workdir / "half-bad.jsonl"
    good = [
        orjson.dumps({"event_id": f"e{i}", "machine_id": "m", "event_type": "view", "timestamp": 1_791_158_400_000 + i})
        for i in range(6)
    ]
    feed.write_bytes(b"\n".join([*good, b"{", b"[]", b"42", b"null"]) + b"\n")  # 4 of 10 rejected
    for rate, code in (("0.5", 0), ("40%", 0), ("0.39", 6), ("0", 6)):
        lake = workdir / f"rate-lake-{rate}"
        args = ["run", str(feed), "--out", str(lake), "--config", str(config_file), "-q", "--workers", "0"]
        assert main([*args, "--max-reject-rate", rate]) == code, rate
        # Published either way.
        assert sql(f"SELECT count(*) FROM {events_of(lake)}") == [(6,)]


def test_records_arriving_late_are_placed_by_a_run(workdir: Path, config_file: Path) -> None:
    """A run sorts what it reads: records arriving up to an hour after newer ones (--late-rate) are
    placed where they belong, none is late, and the lake is the one of the same lines in time order."""
    feed = workdir / "late.jsonl"
    args = ["generate", "-n", "4000", "-m", "20", "-s", "9", "--late-rate", "0.03", "-o", str(feed)]
    assert main(args) == 0
    lake = workdir / "late-lake"
    summary = run_json(feed, out=lake, config=config_file, extra=("--workers", "0"))
    tally = summary["tally"]
    assert tally["late"] == 0
    assert tally["records"] == tally["events"] + total_rejected(summary) + tally["duplicates"]
    ((late, placed),) = sql(
        f"SELECT count(*) FILTER (WHERE late), count(*) FILTER (WHERE NOT late) FROM {events_of(lake)}"
    )
    assert (late, placed) == (0, tally["events"])
    assert sql(f"SELECT sum(event_count) FROM {sessions_of(lake)}") == [(placed,)]

    # The same lines in time order (each line's own timestamp; the dirty ones last) give the same lake.
    def when(line: bytes) -> int:
        try:
            value = orjson.loads(line)
            return (
                int(value["timestamp"])
                if isinstance(value, dict) and isinstance(value.get("timestamp"), int)
                else 1 << 62
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return 1 << 62

    in_order = workdir / "late-in-order.jsonl"
    lines: list[bytes] = sorted(feed.read_bytes().splitlines(keepends=True), key=when)
    in_order.write_bytes(b"".join(lines))
    again = workdir / "late-lake-in-order"
    run_json(in_order, out=again, config=config_file, extra=("--workers", "0"))
    assert placements(again) == placements(lake)


def test_crlf_and_a_bom_give_what_plain_lines_give(
    workdir: Path, feed: Path, config_file: Path, reference_lake: tuple[Path, dict[str, Any]]
) -> None:
    windows = workdir / "windows.jsonl"
    windows.write_bytes(b"\xef\xbb\xbf" + feed.read_bytes().replace(b"\n", b"\r\n"))
    lake = workdir / "windows-lake"
    summary = run_json(windows, out=lake, config=config_file, extra=("--workers", "0"))
    assert summary["tally"] == reference_lake[1]["tally"]
    assert placements(lake) == placements(reference_lake[0])


def test_a_record_larger_than_a_read_block_and_no_final_newline(workdir: Path, config_file: Path) -> None:
    def record(event_id: str, **extra: Any) -> bytes:
        fields = {"event_id": event_id, "machine_id": "m", "event_type": "view", "timestamp": 1_791_158_400_000}
        return orjson.dumps({**fields, **extra})

    big = record("big", pad="x" * (3 << 20))  # over the 1 MiB default limit and over a 2 MiB read block
    feed = workdir / "big.jsonl"
    feed.write_bytes(record("a") + b"\n" + big + b"\n" + record("b"))
    lake = workdir / "big-lake"
    summary = run_json(feed, out=lake, config=config_file, extra=("--workers", "0"))
    assert summary["tally"]["records"] == 3
    assert summary["tally"]["rejected"] == {"oversized": 1}
    assert sorted(placements(lake)) == ["a", "b"]
    ((reason, row),) = rejected_rows(lake)
    assert (reason, row["line"]) == ("oversized", 2)
    # The reader never holds a line that long: the rejection keeps its first 64 KiB and its size.
    assert base64.b64decode(row["raw_base64"]) == big[: 64 * 1024]
    assert f"record is {len(big)} bytes" in row["message"]


def test_ctrl_c_exits_130_publishes_nothing_and_leaves_no_process(workdir: Path, feed: Path, config_file: Path) -> None:
    """Ctrl-C reaches the whole process group (the run and its workers), as in a terminal."""
    import signal
    import time

    lake = workdir / "interrupted-lake"
    run = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", "run", "-", "--out", str(lake), "--config", str(config_file), "-q"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert run.stdin is not None
    data = feed.read_bytes()
    run.stdin.write(data[: len(data) // 2])  # the run is busy, waiting for the rest
    run.stdin.flush()
    deadline = time.monotonic() + 30
    while not (lake / "_sessionflow" / "lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the workers are up and refining
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=60)

    assert run.returncode == 130
    assert stderr.decode().strip().splitlines() == ["sessionflow: interrupted; nothing of this run was published"]
    assert not lake.exists()  # the run created the folder: it takes it back
    assert group_gone(run.pid, 10), "worker processes outlived the interrupted run"
