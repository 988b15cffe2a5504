"""A handler short of time takes no more work and leaves the rest to the retry, losing nothing.

The Lambda context's clock is played by :class:`LambdaContext`; Lambda's part (redelivering from
the lowest failed sequence number) is done here by hand, as the event source mapping does it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sessionflow.config import Config
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.budget import TimeBudget
from sessionflow.runtimes.aws.local.resources import IDS, dedupe
from sessionflow.runtimes.aws.settings import Settings
from sessionflow.synthetic import DEFAULT_START, FeedShape, generate
from tests.aws.lambda_context import CLEAN_SHARD, Harness, LambdaContext, reference
from tests.helpers import kinesis_event

pytestmark = pytest.mark.aws
ARRIVED = DEFAULT_START.timestamp() + 86_400
RESERVE_MS = 10_000
PLENTY, SHORT = 50_000, RESERVE_MS - 1


@pytest.fixture
def config(config_path: Path) -> Config:
    return Config.load(config_path)


@pytest.fixture(autouse=True)
def _reset() -> Any:
    yield
    handlers.use_runtime(None)


def redeliver_from(event: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """What Lambda sends next after a partial batch response: the batch from its lowest failure."""
    failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    records = event["Records"]
    first = next(i for i, r in enumerate(records) if r["kinesis"]["sequenceNumber"] in failed)
    return {"Records": records[first:]}


def test_the_budget_runs_out_once_and_for_good() -> None:
    context = LambdaContext([PLENTY, PLENTY, SHORT, PLENTY])
    budget = TimeBudget(context, RESERVE_MS)
    assert [budget.exhausted() for _ in range(5)] == [False, False, True, True, True]
    assert context.calls == 3  # not asked again once spent
    assert not TimeBudget(None, RESERVE_MS).exhausted()  # no Lambda context: the local poller, a test
    assert not TimeBudget(LambdaContext([RESERVE_MS]), RESERVE_MS).exhausted()  # exactly the reserve is enough


def test_process_leaves_the_records_it_has_no_time_for_and_loses_none(config: Config) -> None:
    lines = list(generate(FeedShape(events=300, machines=6, days=0.2, seed=8)))
    event = kinesis_event("raw", lines, 0, arrived=ARRIVED)
    harness = Harness(config, Settings(time_reserve_ms=RESERVE_MS))
    taken = 120
    # One look at the clock before the batch, then one per record.
    response = handlers.process_handler(event, LambdaContext([PLENTY] * (1 + taken) + [SHORT]))
    untaken = [r["kinesis"]["sequenceNumber"] for r in event["Records"][taken:]]
    assert [item["itemIdentifier"] for item in response["batchItemFailures"]] == untaken
    put = len(harness.clean.entries)

    retry = redeliver_from(event, response)
    assert handlers.process_handler(retry, LambdaContext()) == {"batchItemFailures": []}
    assert len(harness.clean.entries) > put
    # Each record reached clean or the rejected Firehose exactly once.
    expected = reference(config, lines, int(ARRIVED * 1000))
    assert len(harness.clean.entries) == len(expected.events) + len(expected.duplicates)
    assert len(harness.sink.rows["rejected"]) == len(expected.rejections)

    assert handlers.sessionize_handler(harness.clean_event(), LambdaContext()) == {"batchItemFailures": []}
    handlers.flush_handler({"shards": [f"clean/{CLEAN_SHARD}"]}, None)
    events = harness.sink.rows["events"]
    assert len(dedupe(events, IDS["events"])) == len(events)
    assert {e["event_id"]: e["session_id"] for e in events} == {e["event_id"]: e["session_id"] for e in expected.events}
    assert sorted(harness.sink.rows["sessions"], key=lambda s: s["session_id"]) == sorted(
        expected.sessions, key=lambda s: s["session_id"]
    )


def test_a_batch_with_no_time_left_is_left_whole_without_an_error(config: Config) -> None:
    lines = list(generate(FeedShape(events=80, machines=3, days=0.1, seed=9, invalid_rate=0)))
    harness = Harness(config, Settings(time_reserve_ms=RESERVE_MS))
    event = kinesis_event("raw", lines, 0, arrived=ARRIVED)
    everything = [{"itemIdentifier": r["kinesis"]["sequenceNumber"]} for r in event["Records"]]
    assert handlers.process_handler(event, LambdaContext([SHORT])) == {"batchItemFailures": everything}
    assert harness.clean.entries == [] and harness.sink.rows == {}
    handlers.process_handler(event, LambdaContext())

    clean = harness.clean_event()
    everything = [{"itemIdentifier": r["kinesis"]["sequenceNumber"]} for r in clean["Records"]]
    assert handlers.sessionize_handler(clean, LambdaContext([SHORT])) == {"batchItemFailures": everything}
    assert harness.store.stats.writes == 0 and harness.store.stats.reads == 0
    assert handlers.sessionize_handler(clean, LambdaContext()) == {"batchItemFailures": []}
    assert harness.store.stats.writes > 0


def test_flush_and_sweep_stop_between_shards_and_say_which_are_left(config: Config) -> None:
    harness = Harness(config, Settings(time_reserve_ms=RESERVE_MS))
    shards = [f"clean/shardId-{i:012d}" for i in range(3)]
    lines = list(generate(FeedShape(events=90, machines=6, days=0.05, seed=10, invalid_rate=0, duplicate_rate=0)))
    handlers.process_handler(kinesis_event("raw", lines, 0, arrived=ARRIVED), None)
    entries = list(harness.clean.entries)
    machines = sorted({e.partition_key for e in entries})
    for i, shard in enumerate(shards):  # each machine on one shard, as Kinesis keys them
        harness.clean.entries = [e for e in entries if machines.index(e.partition_key) % 3 == i]
        clean = harness.clean_event()
        for record in clean["Records"]:
            record["eventID"] = record["eventID"].replace(CLEAN_SHARD, shard.split("/")[1])
        handlers.sessionize_handler(clean, None)
    before = len(harness.sink.rows.get("sessions", []))

    swept = handlers.sweep_handler({"shards": shards}, LambdaContext([PLENTY, SHORT]))
    assert len(swept["left"]) == 2 and set(swept["left"]) < set(shards)  # a sweep takes shards in any order
    flushed = handlers.flush_handler({"shards": shards}, LambdaContext([PLENTY, PLENTY, SHORT]))
    assert flushed["left"] == shards[2:]
    again = handlers.flush_handler({"shards": flushed["left"]}, LambdaContext())
    assert "left" not in again
    expected = reference(config, lines, int(ARRIVED * 1000))
    assert before + flushed["sessions"] + again["sessions"] == len(expected.sessions)
    assert len(harness.sink.rows["events"]) == len(expected.events)
