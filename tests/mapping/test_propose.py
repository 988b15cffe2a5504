"""``sessionflow init --from``: what it reads in a sample, what it proposes, and its command line.

The choices, each on a small sample made for it; then the invariant that matters most: whatever
the sample, the proposal is a config that loads, and run on the sample it gives what it printed.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionflow.config import Config
from sessionflow.core.pipeline import LineRefiner
from sessionflow.propose.command import records_of
from sessionflow.propose.preview import preview
from sessionflow.propose.proposal import Proposal, propose
from sessionflow.propose.render import render
from sessionflow.propose.sample import analyse
from sessionflow.propose.times import guess_time

NOW = int(datetime(2026, 12, 8, tzinfo=UTC).timestamp() * 1000)
START = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)


def leaf_of(values: list[Any]) -> Any:
    return analyse([{"t": value} for value in values]).leaves["t"]


def times(step: timedelta = timedelta(minutes=7), count: int = 50) -> list[datetime]:
    return [START + step * i for i in range(count)]


def proposed(records: list[dict[str, Any]]) -> tuple[Proposal, Config, str]:
    proposal = propose(records, "sample.jsonl", NOW)
    text = render(proposal)
    return proposal, Config.from_dict(tomllib.loads(text)), text


# -- times ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "scale"), [("epoch_s", 1), ("epoch_ms", 1000), ("epoch_us", 10**6), ("epoch_ns", 10**9)]
)
def test_epoch_numbers_by_their_size(unit: str, scale: int) -> None:
    values = [int(moment.timestamp() * scale) for moment in times()]
    guess = guess_time(leaf_of(values), NOW)
    assert guess is not None
    # Integer milliseconds are read as they are; any other unit takes a rule.
    assert (guess.rule.format if guess.rule else "as is") == ("as is" if unit == "epoch_ms" else unit)
    as_text = guess_time(leaf_of([str(v) for v in values]), NOW)
    assert as_text is not None and as_text.rule is not None and as_text.rule.format == unit


def test_numbers_that_are_not_times() -> None:
    assert guess_time(leaf_of(list(range(1, 60))), NOW) is None  # quantities
    assert guess_time(leaf_of([10**12 * 3] * 5), NOW) is None  # milliseconds of 2065: after now
    assert guess_time(leaf_of([True, False]), NOW) is None


def test_iso_times_with_and_without_zone() -> None:
    aware = guess_time(leaf_of([m.isoformat() for m in times()]), NOW)
    assert aware is not None and aware.rule is None
    naive = guess_time(leaf_of([m.replace(tzinfo=None).isoformat(sep=" ") for m in times()]), NOW)
    assert naive is not None and naive.rule is not None
    assert (naive.rule.format, naive.rule.timezone, naive.zone_assumed) == ("iso", "UTC", True)


def test_a_web_server_time_with_its_offset() -> None:
    guess = guess_time(leaf_of([m.strftime("%d/%b/%Y:%H:%M:%S +0000") for m in times()]), NOW)
    assert guess is not None and guess.rule is not None
    assert (guess.rule.format, guess.rule.timezone, guess.zone_assumed) == ("%d/%b/%Y:%H:%M:%S %z", None, False)


def test_day_and_month_told_apart_by_a_day_past_12() -> None:
    days = [START + timedelta(days=i) for i in range(-20, 3)]  # 12 Nov to 4 Dec
    guess = guess_time(leaf_of([m.strftime("%d/%m/%Y %H:%M:%S") for m in days]), NOW)
    assert guess is not None and guess.rule is not None
    assert (guess.rule.format, guess.other_formats) == ("%d/%m/%Y %H:%M:%S", ())
    american = guess_time(leaf_of([m.strftime("%m/%d/%Y %H:%M:%S") for m in days]), NOW)
    assert american is not None and american.rule is not None and american.rule.format == "%m/%d/%Y %H:%M:%S"


def test_when_no_day_passes_12_the_most_recent_reading_is_taken_and_the_other_named() -> None:
    # 02/12/2026 is 2 December (six days before now) or 12 February (ten months before).
    guess = guess_time(leaf_of([m.strftime("%d/%m/%Y %H:%M:%S.%f") for m in times()]), NOW)
    assert guess is not None and guess.rule is not None
    assert guess.rule.format == "%d/%m/%Y %H:%M:%S.%f"
    assert guess.other_formats == ("%m/%d/%Y %H:%M:%S.%f",)


def test_a_broken_value_in_a_hundred_does_not_change_the_format() -> None:
    texts = [m.strftime("%d/%m/%Y %H:%M:%S") for m in times(count=200)]
    texts[7] = "31/02/2026 00:00:00"
    guess = guess_time(leaf_of(texts), NOW)
    assert guess is not None and guess.rule is not None and guess.rule.format == "%d/%m/%Y %H:%M:%S"
    texts[8] = texts[9] = "garbage"
    assert guess_time(leaf_of(texts), NOW) is None


def test_mostly_milliseconds_with_some_seconds_is_read_as_is_and_flagged() -> None:
    values = [int(m.timestamp() * 1000) for m in times(count=80)] + [int(m.timestamp()) for m in times(count=20)]
    guess = guess_time(leaf_of(values), NOW)
    assert guess is not None and guess.rule is None
    assert guess.unread is not None and guess.unread[0] == 20


# -- roles ------------------------------------------------------------------------------------------------


def clicks(count: int = 60) -> list[dict[str, Any]]:
    return [
        {
            "session_id": f"s-{i}",
            "ip": f"10.0.0.{i % 5}",
            "user_id": 1000 + i % 7,
            "event_name": ["Search", "AddToCart", "Checkout"][i % 3],
            "event_time": (START + timedelta(seconds=37 * i)).strftime("%d/%m/%Y %H:%M:%S.%f"),
            "metadata": {"product_id": i} if i % 2 else {},
        }
        for i in range(count)
    ]


def test_a_feed_without_an_event_id_gets_an_event_id_rule() -> None:
    proposal, config, text = proposed(clicks())
    assert proposal.fields["machine_id"] == "ip"  # never the session id
    assert proposal.fields["event_type"] == "event_name"
    assert proposal.event_id_from == ["ip", "event_time", "event_name"]
    assert proposal.casts == {"user_id": "string"}
    assert config.clean[0].parse_time[0][0] == "event_time"
    assert "CHECK: the sample reads as '%m/%d/%Y %H:%M:%S.%f' too" in text


def test_an_event_id_rule_takes_more_fields_until_records_are_told_apart() -> None:
    records = clicks()
    for record in records:
        record["event_time"] = "02/12/2026 05:00:00.000000"  # one second for all: the time tells nothing
        record["seq"] = records.index(record)
    proposal, _, _ = proposed(records)
    assert proposal.time is not None
    assert proposal.event_id_from[:3] == ["ip", "event_time", "event_name"]
    assert "seq" in proposal.event_id_from and proposal.id_collisions == 0


def test_an_id_repeated_with_other_content_is_not_an_event_id() -> None:
    records = [{**record, "id": f"x-{i % 30}"} for i, record in enumerate(clicks())]
    proposal, _, _ = proposed(records)
    assert proposal.fields["event_id"] == "event_id" and proposal.event_id_from  # a rule, not "id"
    resent = [{**record, "id": f"x-{i}"} for i, record in enumerate(clicks())]
    proposal, _, _ = proposed(resent + resent[:10])  # exact copies: re-sends, still an id
    assert proposal.fields["event_id"] == "id" and not proposal.event_id_from


def test_the_device_is_the_machine_before_the_anonymous_id() -> None:
    records = [
        {
            "messageId": f"m-{i}",
            "anonymousId": f"a-{i % 4}",
            "event": "Page Viewed",
            "timestamp": (START + timedelta(minutes=i)).isoformat(),
            "context": {"device": {"id": f"d-{i % 3}"}, "os": {"name": "macOS"}},
            "os": {"name": "macOS"},
        }
        for i in range(40)
    ]
    proposal, config, _ = proposed(records)
    assert proposal.fields["machine_id"] == "context.device.id"
    assert proposal.fields["event_id"] == "messageId"
    assert "os" in proposal.removed_columns  # an object where the default column wants a string
    assert all(name != "os" for name, _ in config.columns)
    assert ("context.os.name", "string") in config.columns and ("anonymousId", "string") in config.columns
    assert "os" not in proposal.renames.values()  # a rename would write over the records' own `os`


def test_the_os_and_the_document_are_moved_into_their_default_columns() -> None:
    """Where a feed keeps them nested (Segment's context.os.name, an editor's properties.doc_id), a
    rename moves them into `os` and `document_id`, so the sessions get their os and documents; a
    numeric document id is cast after the move, by the column's name."""
    records = [
        {
            "messageId": f"m-{i}",
            "anonymousId": f"a-{i % 4}",
            "event": ["Document Opened", "Document Saved", "Document Signed"][i % 3],
            "timestamp": (START + timedelta(minutes=i)).isoformat(),
            "context": {"os": {"name": ["macOS", "Windows"][i % 2], "version": "14.1"}},
            "properties": {"doc_id": 1000 + i % 5},
        }
        for i in range(40)
    ]
    proposal, config, text = proposed(records)
    assert proposal.renames == {"context.os.name": "os", "properties.doc_id": "document_id"}
    assert proposal.casts == {"document_id": "string"}
    assert "app_version" not in proposal.fields  # context.os.version is the os's version, not the app's
    assert "os" not in proposal.removed_columns and "document_id" not in proposal.removed_columns
    event = LineRefiner(config).refine_line(orjson.dumps(records[3]), NOW)  # the config as written
    assert isinstance(event, dict), event
    assert (event["os"], event["document_id"]) == ("Windows", "1003"), text


def test_a_web_log_without_an_event_type_gets_one_set() -> None:
    records = [
        {
            "remote_addr": f"203.0.113.{i % 6}",
            "time_local": (START + timedelta(seconds=41 * i)).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "request_uri": f"/docs/{i % 9}",
            "request_method": "GET",
            "status": 200 if i % 10 else 404,
        }
        for i in range(80)
    ]
    proposal, config, text = proposed(records)
    assert proposal.fields["machine_id"] == "remote_addr"
    assert proposal.set_type == ("event_type", "event")
    assert "CHECK: one event type for every event" in text
    result = preview(config, [orjson.dumps(r) for r in records], NOW)
    assert (result.valid, sum(result.rejected.values()), result.events) == (80, 0, 80)


# -- the invariant: a proposal always loads, and the preview counts every record once -------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["02/12/2026 05:00:00", "2026-12-02T05:00:00Z", "1764651600", "GET", "m-1", "m-2"]),
    st.integers(1_764_651_600, 1_764_700_000),
    st.integers(1_764_651_600_000, 1_764_700_000_000),
)
NAMES = st.sampled_from(["id", "ip", "event", "ts", "timestamp", "user_id", "os", "type", "x.y", "extra", "a", "b"])
RECORDS = st.recursive(SCALARS, lambda inner: st.dictionaries(NAMES, inner, max_size=4), max_leaves=10).filter(
    lambda value: isinstance(value, dict)
)


# Short in `make test`; SESSIONFLOW_FUZZ_EXAMPLES (as for tests/fuzz) makes it long.
EXAMPLES = int(os.environ.get("SESSIONFLOW_FUZZ_EXAMPLES", "60"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(RECORDS, min_size=1, max_size=25))
def test_any_sample_gives_a_config_that_loads_and_a_preview_that_counts_every_record(
    records: list[dict[str, Any]],
) -> None:
    # The lines as a feed has them (integers past 64 bits too), the records as init --from reads them.
    lines = [json.dumps(record).encode() for record in records]
    records, unreadable = records_of(lines)
    assert unreadable == 0
    proposal = propose(records, "sample.jsonl", NOW)
    config = Config.from_dict(tomllib.loads(render(proposal)))
    result = preview(config, lines, NOW)
    assert result.records == len(records)
    assert result.valid == result.events + result.duplicates + result.rejected["conflicting_duplicate"]


# -- the command line ------------------------------------------------------------------------------------------


def init(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sessionflow", "init", *map(str, args)]
    return subprocess.run(command, input=stdin.decode(), capture_output=True, text=True, timeout=60, check=False)


def test_init_from_a_gzip_sample_and_from_standard_input(tmp_path: Path) -> None:
    data = b"".join(orjson.dumps(record) + b"\n" for record in clicks())
    (tmp_path / "clicks.jsonl.gz").write_bytes(gzip.compress(data))
    done = init(tmp_path / "a.toml", "--from", tmp_path / "clicks.jsonl.gz")
    assert done.returncode == 0, done.stderr
    assert "60 records: 60 valid, 0 rejected" in done.stdout
    piped = init(tmp_path / "b.toml", "--from", "-", stdin=data)
    assert piped.returncode == 0, piped.stderr
    assert (tmp_path / "a.toml").read_text().split("\n", 2)[2] == (tmp_path / "b.toml").read_text().split("\n", 2)[2]


def test_init_from_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    sample = tmp_path / "clicks.jsonl"
    sample.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in clicks()))
    existing = tmp_path / "sessionflow.toml"
    existing.write_text("# mine\n")
    done = init(existing, "--from", sample)
    assert done.returncode == 2 and "exists; pass --force" in done.stderr
    assert existing.read_text() == "# mine\n"
    assert init(existing, "--from", sample, "--force").returncode == 0
    missing = init(tmp_path / "c.toml", "--from", tmp_path / "nope.jsonl")
    assert missing.returncode == 3 and "nope.jsonl" in missing.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"[1]\nnot json\n\n")
    nothing = init(tmp_path / "d.toml", "--from", junk)
    assert nothing.returncode == 3 and "no JSON object" in nothing.stderr
    assert not (tmp_path / "d.toml").exists()
    assert init(tmp_path / "e.toml", "--from", sample, "--sample", "0").returncode == 2
    alone = init(tmp_path / "f.toml", "--sample", "10")
    assert alone.returncode == 2 and "--from" in alone.stderr and not (tmp_path / "f.toml").exists()
