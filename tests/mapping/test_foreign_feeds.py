"""Other people's feeds, read with declarative rules only (no Python function), as a user runs them.

A Segment/RudderStack-style feed and a faker-clickstream feed go through ``sessionflow run`` with
the README's configs, and through ``sessionflow init --from`` and then ``run`` with the config it
proposes. Each lake is held to a reference that maps the raw records by hand (tests/mapping/shapes)
and sessionizes a batch sort of them the plainest way (tests/local/arrival_feeds): the same events,
sessions and session ids; the only rejected lines are the planted broken ones; ``verify`` passes.
"""

from __future__ import annotations

import base64
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionflow.config import Config
from tests.local.arrival_feeds import (
    Event,
    Rules,
    assert_lake_is,
    assert_verifies,
    reference,
    run_json,
    sessionflow,
    sql,
    table,
    write_lines,
)
from tests.mapping.shapes import (
    FAKER_CONFIG,
    FAKER_PLANTED_TIME,
    PLANTED,
    SEGMENT_CONFIG,
    WEBLOG_CONFIG,
    faker_clickstream_feed,
    faker_event,
    segment_columns,
    segment_event,
    segment_feed,
    weblog_event,
    weblog_feed,
)

pytest.importorskip("faker_clickstream", reason="the dev dependencies: pip install 'sessionflow[dev]'")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("foreign")


@pytest.fixture(scope="module")
def segment_lines() -> list[bytes]:
    return segment_feed()


@pytest.fixture(scope="module")
def faker_lines() -> list[bytes]:
    return faker_clickstream_feed()


def rejected_lines(lake: Path) -> dict[bytes, str]:
    """Every rejected line of the lake (its raw bytes) and its reason."""
    rows = [orjson.loads(line) for path in lake.glob("rejected/*/*.jsonl") for line in path.read_bytes().splitlines()]
    return {base64.b64decode(row["raw_base64"]): row["reason"] for row in rows}


def run_feed(workdir: Path, name: str, lines: list[bytes], config_text: str | None, config: Path | None = None) -> Path:
    if config is None:
        config = workdir / f"{name}.toml"
        config.write_text(config_text or "", encoding="utf-8")
    assert all(rule.function is None for rule in Config.load(config).clean), "declarative rules only"
    lake = workdir / f"{name}-lake"
    summary, _ = run_json(write_lines(workdir / f"{name}.jsonl", lines), "--out", lake, "--config", config)
    assert summary["tally"]["late"] == 0
    return lake


def expected(lines: list[bytes], mapping: Callable[[bytes], Event | None], rules: Rules) -> Any:
    events = [event for event in map(mapping, lines) if event is not None]
    return reference([events], rules)


# -- Segment / RudderStack ------------------------------------------------------------------------------

SEGMENT_RULES = Rules(opening_events=frozenset({"Application Opened"}))


def test_a_segment_feed_with_the_readme_config(workdir: Path, segment_lines: list[bytes]) -> None:
    lake = run_feed(workdir, "segment", segment_lines, SEGMENT_CONFIG)
    want = expected(segment_lines, segment_event, SEGMENT_RULES)
    assert len(want.sessions) > 100 and len(want.placements) > 1500
    assert_lake_is(lake, want)
    assert rejected_lines(lake) == {PLANTED[0]: "malformed_json", PLANTED[1]: "not_an_object"}
    # Event types as the config maps them: the legacy library's snake_case names are gone.
    types = {row[0] for row in sql(f"SELECT DISTINCT event_type FROM {table(lake, 'events')}")}
    assert types == {
        "Application Opened",
        "Document Opened",
        "Page Viewed",
        "Document Edited",
        "Document Saved",
        "Document Signed",
    }
    # The typed columns, from nested fields, by hand.
    columns = ["user_id", "app_version", "os", "document_id", "properties_page_count", "context_locale"]
    rows = sql(f"SELECT machine_id, event_id, {', '.join(columns)} FROM {table(lake, 'events')}")
    got = {(row[0], row[1]): dict(zip(columns, row[2:], strict=True)) for row in rows}
    for line in segment_lines:
        event = segment_event(line)
        if event is not None:
            assert got[event.key] == segment_columns(line), event.key
    assert_verifies(lake)


def test_init_from_a_segment_feed_proposes_a_config_that_rejects_nothing_valid(
    workdir: Path, segment_lines: list[bytes]
) -> None:
    feed = write_lines(workdir / "segment-sample.jsonl", segment_lines)
    proposed = workdir / "segment-proposed.toml"
    done = sessionflow("init", proposed, "--from", feed, "--sample", "1500")
    assert done.returncode == 0, done.stderr.decode()
    text = proposed.read_text()
    fields = tomllib.loads(text)["fields"]
    assert (fields["event_id"], fields["machine_id"], fields["event_type"]) == (
        "messageId",
        "context.device.id",
        "event",
    )
    assert fields["user_id"] == "userId" and fields["app_version"] == "context.app.version"
    assert "function" not in text
    lake = run_feed(workdir, "segment-proposed", segment_lines, None, proposed)
    assert rejected_lines(lake) == {PLANTED[0]: "malformed_json", PLANTED[1]: "not_an_object"}
    # It maps no event names, and opens sessions at both spellings: the same sessions, raw names.
    assert sorted(tomllib.loads(text)["session"]["opening_events"]) == ["Application Opened", "application_opened"]
    raw_rules = Rules(opening_events=frozenset({"Application Opened", "application_opened"}))

    # It moves context.os.name and properties.doc_id into os and document_id, as the README's config
    # does by hand: the sessions get their os and documents.
    assert tomllib.loads(text)["clean"][0]["rename"] == {"context.os.name": "os", "properties.doc_id": "document_id"}

    def as_proposed(line: bytes) -> Event | None:
        return segment_event(line, map_names=False)

    assert_lake_is(lake, expected(segment_lines, as_proposed, raw_rules))
    # What it printed is what the run gives on the sample.
    printed = done.stdout.decode()
    assert "1,500 records: 1,498 valid, 2 rejected" in printed, printed
    assert_verifies(lake)


# -- faker-clickstream -------------------------------------------------------------------------------------

FAKER_RULES = Rules(opening_events=frozenset())


def planted_in_faker(lines: list[bytes]) -> dict[bytes, str]:
    bad_time = next(line for line in lines if FAKER_PLANTED_TIME in line)
    return {PLANTED[0]: "malformed_json", PLANTED[1]: "not_an_object", bad_time: "invalid_timestamp"}


def test_a_faker_clickstream_feed_with_the_readme_config(workdir: Path, faker_lines: list[bytes]) -> None:
    lake = run_feed(workdir, "faker", faker_lines, FAKER_CONFIG)
    want = expected(faker_lines, faker_event, FAKER_RULES)
    assert len(want.placements) > 4000
    # The generator writes session after session, and an address has several: sorting merges them.
    assert len(want.sessions) < 400
    assert_lake_is(lake, want)
    assert rejected_lines(lake) == planted_in_faker(faker_lines)
    rows = sql(f"SELECT count(*), count(DISTINCT user_id), min(length(user_id)) FROM {table(lake, 'events')}")
    assert rows[0][0] == len(want.placements) and rows[0][1] > 100 and rows[0][2] >= 1  # numbers cast to text
    assert_verifies(lake)


def test_the_faker_feed_sent_twice_is_all_duplicates(workdir: Path, faker_lines: list[bytes]) -> None:
    """A made event id is the same for the same record: a re-send dedupes."""
    lake = run_feed(workdir, "faker-twice", faker_lines + faker_lines, FAKER_CONFIG)
    assert_lake_is(lake, expected(faker_lines, faker_event, FAKER_RULES))
    assert_verifies(lake)


def test_init_from_a_faker_feed_proposes_a_config_that_rejects_nothing_valid(
    workdir: Path, faker_lines: list[bytes]
) -> None:
    feed = write_lines(workdir / "faker-sample.jsonl", faker_lines)
    proposed = workdir / "faker-proposed.toml"
    done = sessionflow("init", proposed, "--from", feed)
    assert done.returncode == 0, done.stderr.decode()
    data = tomllib.loads(proposed.read_text())
    assert (data["fields"]["machine_id"], data["fields"]["event_type"]) == ("ip", "event_name")
    mapping = data["clean"][0]
    assert mapping["event_id"] == {"from": ["ip", "event_time", "event_name"]}
    assert mapping["parse_time"] == {"event_time": {"format": "%d/%m/%Y %H:%M:%S.%f", "timezone": "UTC"}}
    assert mapping["cast"]["user_id"] == "string"
    lake = run_feed(workdir, "faker-proposed", faker_lines, None, proposed)
    assert rejected_lines(lake) == planted_in_faker(faker_lines)
    assert_lake_is(lake, expected(faker_lines, faker_event, FAKER_RULES))
    assert "CHECK: the sample's times carry no zone" in proposed.read_text()
    assert_verifies(lake)


# -- a web server's access log ----------------------------------------------------------------------------


def test_a_web_log_with_the_readme_config_and_with_the_proposed_one(workdir: Path) -> None:
    lines = weblog_feed()
    want = expected(lines, weblog_event, Rules(opening_events=frozenset()))
    assert len(want.placements) > 300 and len(want.sessions) > 30
    lake = run_feed(workdir, "weblog", lines, WEBLOG_CONFIG)
    assert_lake_is(lake, want)
    assert rejected_lines(lake) == {}
    assert {row[0] for row in sql(f"SELECT DISTINCT event_type FROM {table(lake, 'events')}")} == {"page_view", "error"}
    assert_verifies(lake)
    # The proposal has no event type to find: it sets one for every event, and rejects nothing.
    feed = write_lines(workdir / "weblog-sample.jsonl", lines)
    proposed = workdir / "weblog-proposed.toml"
    done = sessionflow("init", proposed, "--from", feed)
    assert done.returncode == 0, done.stderr.decode()
    data = tomllib.loads(proposed.read_text())
    assert data["fields"]["machine_id"] == "remote_addr"
    assert data["clean"][0]["parse_time"] == {"time_local": "%d/%b/%Y:%H:%M:%S %z"}
    proposed_lake = run_feed(workdir, "weblog-proposed", lines, None, proposed)
    assert rejected_lines(proposed_lake) == {}
    assert sql(f"SELECT count(*) FROM {table(proposed_lake, 'events')}") == [(len(want.placements),)]
    assert_verifies(proposed_lake)
