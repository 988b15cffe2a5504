"""One contract for every runtime: each feed through each runtime equals the one reference.

``runtime`` is parametrised over the implementations (the way Quix Streams parametrises its store
tests over its stores), ``feed`` over the feeds: a rule changed in one runtime and not in the
reference fails that runtime's tests, feed by feed, with a diff of what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from sessionflow.config import Config
from sessionflow.core import Sessionizer
from sessionflow.core.native import compiled
from tests.contract import runtimes
from tests.contract.feeds import FEEDS, Feed, combined_lines, config
from tests.contract.reference import Result, end_clock, expected

CONFIG = config()


@dataclass
class Runtime:
    name: str
    run: Callable[[Feed], Result]
    sorts: bool = False  # a batch (embedded run, backfill): sorts everything, dedupe without horizon
    batches_of_one: bool = False  # each line its own batch: the stream clock closes silent machines early
    conflicts: bool = False  # a later copy of other content is a conflicting_duplicate rejection
    combined: bool = False  # every feed in one input: the stream clock at its end is the whole input's
    horizon: bool = True  # dedupe reaches dedupe_horizon back only (False: AWS's event-id index, any age)


def _native(config: Config) -> Sessionizer:
    module = compiled()
    if module is None:
        pytest.skip("the compiled sessionizer is not built")
    return module.NativeSessionizer(config.session)


def _pure(config: Config) -> Sessionizer:
    return Sessionizer(config.session)


SESSIONIZERS = {"pure": _pure, "compiled": _native}


# -- the expensive runtimes: every feed in one run per test session ------------------------------------


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict[str, Any], Any]:
    return runtimes.embedded_run(tmp_path_factory.mktemp("embedded"), combined_lines())


@pytest.fixture(scope="session")
def local_aws_result(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, str | None]:
    return runtimes.local_aws_run(endpoint, tmp_path_factory.mktemp("aws-local"), combined_lines(), CONFIG)


@pytest.fixture(scope="session")
def spark_result(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Result:
    return runtimes.spark_run(spark, tmp_path_factory.mktemp("spark"), combined_lines(), CONFIG)


# Under `--dist loadgroup` (make test), each expensive runtime's tests share one worker, so its one
# run is made once; Spark's share the worker (and JVM) of the backfill tests.
SPARK = [pytest.mark.spark, pytest.mark.xdist_group("spark")]


@pytest.fixture(
    params=[
        "pure",
        "compiled",
        "aws-memory",
        pytest.param("embedded-cli", marks=pytest.mark.xdist_group("contract-embedded")),
        pytest.param("aws-local", marks=[pytest.mark.aws, pytest.mark.xdist_group("contract-aws-local")]),
        pytest.param("spark", marks=SPARK),
    ]
)
def runtime(request: pytest.FixtureRequest) -> Runtime:
    name = request.param
    if name in SESSIONIZERS:
        make = SESSIONIZERS[name]
        return Runtime(name, lambda feed: runtimes.through_pipeline(feed, CONFIG, make, batch=1), batches_of_one=True)
    if name == "aws-memory":
        pytest.importorskip("aws_lambda_powertools", reason="the AWS handlers need sessionflow[aws]")
        return Runtime(
            name,
            lambda feed: runtimes.through_aws_handlers(feed, CONFIG),
            batches_of_one=True,
            conflicts=True,
            horizon=False,
        )
    fixture = {"embedded-cli": "embedded", "aws-local": "local_aws_result", "spark": "spark_result"}[name]
    if name == "spark":
        pytest.importorskip("pyspark", reason="the Spark tests need pip install 'sessionflow[spark]'")
    if name == "aws-local":
        pytest.importorskip("moto.server", reason="the AWS tests need moto: pip install 'sessionflow[dev]'")
    whole = request.getfixturevalue(fixture)
    whole = whole[0] if isinstance(whole, tuple) else whole
    embedded = name == "embedded-cli"
    return Runtime(
        name,
        lambda feed: runtimes.only(whole, feed),
        sorts=embedded or name == "spark",
        conflicts=True,
        combined=True,
        horizon=name != "aws-local",  # a batch sorts: its dedupe has no horizon either
    )


# -- the contract --------------------------------------------------------------------------------------


def differences(want: Result, got: Result) -> list[str]:
    """What differs, one line per event, session, rejection or count: the failure message."""
    lines = []
    for event_id in sorted(want.events.keys() | got.events.keys()):  # (machine, event_id)
        if want.events.get(event_id) != got.events.get(event_id):
            lines.append(f"event {event_id}: want {want.events.get(event_id)}, got {got.events.get(event_id)}")
    for sid in sorted(want.sessions.keys() | got.sessions.keys()):
        if want.sessions.get(sid) != got.sessions.get(sid):
            lines.append(f"session {sid}: want {want.sessions.get(sid)}, got {got.sessions.get(sid)}")
    for key in sorted(want.rejections.keys() | got.rejections.keys()):
        if want.rejections[key] != got.rejections[key]:
            lines.append(f"rejection {key}: want {want.rejections[key]}, got {got.rejections[key]}")
    if want.duplicates != got.duplicates:
        lines.append(f"duplicates: want {want.duplicates}, got {got.duplicates}")
    if want.closed_early is not None and want.closed_early != got.closed_early:
        lines.append(f"closed by the stream clock: want {sorted(want.closed_early)}, got {got.closed_early}")
    return lines


def assert_same(want: Result, got: Result) -> None:
    problems = differences(want, got)
    assert not problems, "\n".join(["the runtime differs from the reference:", *problems])


# (runtime, feed) -> the bug that makes the runtime differ from the documented rule (strict xfail).
# Empty now: the AWS process step stripped rejected raw bytes until the raw-line step was shared.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
def test_feed(runtime: Runtime, feed: Feed, request: pytest.FixtureRequest) -> None:
    bug = KNOWN_BUGS.get((runtime.name, feed.name))
    if bug:
        request.applymarker(pytest.mark.xfail(strict=True, reason=bug))
    clock = end_clock(FEEDS.values(), CONFIG.session, sorted_input=runtime.sorts) if runtime.combined else None
    want = expected(
        feed,
        CONFIG.session,
        sorted_input=runtime.sorts,
        batches_of_one=runtime.batches_of_one,
        conflicts=runtime.conflicts,
        end_clock=clock,
        horizon=runtime.horizon,
    )
    assert_same(want, runtime.run(feed))


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
@pytest.mark.parametrize("sessionizer", SESSIONIZERS)
def test_one_batch_gives_what_batches_of_one_give(sessionizer: str, feed: Feed) -> None:
    make = SESSIONIZERS[sessionizer]
    whole = runtimes.through_pipeline(feed, CONFIG, make, batch=None)
    assert_same(expected(feed, CONFIG.session), whole)
    one_by_one = runtimes.through_pipeline(feed, CONFIG, make, batch=1)
    one_by_one.closed_early = None
    assert differences(whole, one_by_one) == []


def test_the_feeds_reach_what_they_are_about() -> None:
    """The reference itself: each feed has the cases it is named after (a feed that tests nothing fails)."""
    results = {name: expected(feed, CONFIG.session, batches_of_one=True) for name, feed in FEEDS.items()}
    late = {name: {k[1] for k, rows in r.events.items() for row in rows if row[6]} for name, r in results.items()}
    assert late["late_beyond_lateness"] == {"x"} and late["duplicates_far"] == {"x"}
    assert not late["late_within_lateness"]
    assert results["duplicates_near"].duplicates == 3 and results["duplicates_far"].duplicates == 1
    assert expected(FEEDS["duplicates_far"], CONFIG.session, sorted_input=True).duplicates == 2
    assert results["silent_machine"].closed_early == {"silent-s"}
    assert len(results["bot_max_duration"].sessions) == 3
    assert len(results["dirty_records"].rejections) == 12
    mapped = results["mapped_shapes"]
    assert {reason for reason, _ in mapped.rejections} == {"missing_field", "wrong_type", "invalid_timestamp"}
    assert mapped.duplicates == 1 and {m for m, _ in mapped.events} == {"mapped-dev", "mapped-ip"}
    gap = results["gap_boundaries"]
    assert sorted(s[3] for s in gap.sessions.values()) == [1, 1, 2, 3, 4], "3 + 1 + 2 on gap-m1, 4 + 1 on gap-m2"
    # What sessions say of themselves: every close reason, numbers, documents, os, late arrivals.
    sessions = [s for r in results.values() for s in r.sessions.values()]
    assert {s[11] for s in sessions} == {"timeout", "opening_event", "max_duration", "end_of_input"}
    assert max(s[8] for s in sessions) >= 3
    docs = sorted(s[7:11] for s in results["documents_and_os"].sessions.values())
    assert docs == [("macos", 1, 2, 2), ("windows", 2, 1, 0)]
    assert sum(s[10] for s in results["late_within_lateness"].sessions.values()) == 3  # c, b, d2


@pytest.mark.xdist_group("contract-embedded")
def test_embedded_ledger_counts_what_the_reference_counts(embedded: tuple[Result, dict[str, Any], Any]) -> None:
    _, report, _ = embedded
    if compiled() is not None:
        assert report["sessionizer"] == "compiled"
    report = report["tally"]
    want = [expected(feed, CONFIG.session, sorted_input=True, conflicts=True) for feed in FEEDS.values()]
    assert report["duplicates"] == sum(w.duplicates for w in want)
    assert report["late"] == sum(1 for w in want for rows in w.events.values() for row in rows if row[6])
    assert report["sessions"] == sum(len(w.sessions) for w in want)
    assert report["blank"] == sum(1 for feed in FEEDS.values() for line in feed.lines() if not line.strip())


@pytest.mark.xdist_group("contract-embedded")
def test_embedded_lake_passes_verify(embedded: tuple[Result, dict[str, Any], Any]) -> None:
    _, _, verify = embedded
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
    checks = {c["check"]: c for c in orjson.loads(verify.stdout)["checks"]}
    assert len(checks) >= 8
    assert [name for name, c in checks.items() if not c["ok"]] == []


@pytest.mark.aws
@pytest.mark.xdist_group("contract-aws-local")
def test_aws_local_fetch_writes_the_lake(local_aws_result: tuple[Result, str | None]) -> None:
    """``aws-local fetch`` refuses two different rows for one (machine_id, event_id): there are none,
    not even for a copy far beyond dedupe_horizon (feed duplicates_far)."""
    _, fetch_error = local_aws_result
    assert fetch_error is None
