"""Cleaning rules: each action, `when` globs, the order of actions and of rules, plugin functions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sessionflow.config import EXAMPLE_CONFIG, CleanRule, Config, ConfigError
from sessionflow.core import Reason, Rejection, RejectRecord
from sessionflow.core.cleaning import compile_rules
from tests.helpers import T0, raw_record, refine

# -- plugin functions, loaded by the config as "tests.core.test_cleaning:<name>" -------------------


def add_source(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "source": "plugin"}


def tag_in_place(record: dict[str, Any]) -> None:
    record["tagged"] = True


def refuse_bots(record: dict[str, Any]) -> None:
    if str(record.get("machine_id", "")).startswith("bot-"):
        raise RejectRecord("bots are not users")


def explode(record: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("no such thing")


def return_a_list(record: dict[str, Any]) -> list[Any]:
    return [record]


def clean(rules: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Refine one record under ``rules``; it must come out valid."""
    result = refine(raw_record(**fields), Config.from_dict({"clean": rules}))
    assert isinstance(result, dict), result
    return result


def clean_rejected(rules: list[dict[str, Any]], **fields: Any) -> Rejection:
    result = refine(raw_record(**fields), Config.from_dict({"clean": rules}))
    assert isinstance(result, Rejection), result
    return result


def extra(event: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(event["extra"]) if event["extra"] else {}


# -- each action ----------------------------------------------------------------------------------


def test_scale_seconds_to_milliseconds_stays_an_int() -> None:
    event = clean([{"scale": {"timestamp": 1000}}], timestamp=T0 // 1000)
    assert event["timestamp"] == T0
    assert type(event["timestamp"]) is int


def test_scale_float_result_that_is_whole_becomes_int() -> None:
    # 1791158400.5 s * 1000 is a whole number of ms: an int, so it is a valid timestamp.
    event = clean([{"scale": {"timestamp": 1000}}], timestamp=T0 / 1000 + 0.5)
    assert event["timestamp"] == T0 + 500
    assert type(event["timestamp"]) is int
    assert clean([{"scale": {"page_count": 0.5}}], page_count=10)["extra"] == '{"page_count":5}'
    assert extra(clean([{"scale": {"ratio": 0.5}}], ratio=3)) == {"ratio": 1.5}


def test_divide_microseconds_and_nanoseconds_to_milliseconds_exactly() -> None:
    # A build sending microseconds: not every value is a whole number of milliseconds.
    event = clean([{"divide": {"timestamp": 1000}}], timestamp=T0 * 1000 + 999)
    assert event["timestamp"] == T0 and type(event["timestamp"]) is int
    # Nanoseconds are past 2**53: a float factor would lose the last digits, integer division does not.
    nanoseconds = (T0 + 7) * 1_000_000 + 123_456
    assert nanoseconds > 2**53
    assert clean([{"divide": {"timestamp": 1_000_000}}], timestamp=nanoseconds)["timestamp"] == T0 + 7


def test_divide_rounds_floats_down_and_leaves_non_numbers_alone() -> None:
    event = clean([{"divide": {"timestamp": 1000}}], timestamp=float(T0 * 1000))
    assert event["timestamp"] == T0 and type(event["timestamp"]) is int
    assert extra(clean([{"divide": {"pages": 2}}], pages=7.9)) == {"pages": 3}
    assert extra(clean([{"divide": {"pages": 2}}], pages=-3)) == {"pages": -2}  # down, not toward zero
    rules = [{"divide": {"timestamp": 1000, "flag": 2, "name": 3}}]
    event = clean(rules, timestamp="2026-10-05T00:00:00Z", flag=True, name="x")
    assert event["timestamp"] == T0
    assert extra(event) == {"flag": True, "name": "x"}


def test_scale_leaves_non_numbers_alone() -> None:
    rules = [{"scale": {"timestamp": 1000, "flag": 2}}]
    event = clean(rules, timestamp="2026-10-05T00:00:00Z", flag=True)
    assert event["timestamp"] == T0
    assert extra(event) == {"flag": True}


def test_lowercase() -> None:
    event = clean([{"lowercase": ["event_type", "os", "absent"]}], event_type="DOC_Open", os="Windows")
    assert (event["event_type"], event["os"]) == ("doc_open", "windows")
    # A single name is accepted as well as a list; non-strings are left alone.
    assert extra(clean([{"lowercase": "level"}], level=3)) == {"level": 3}


def test_map() -> None:
    rules = [{"map": {"event_type": {"open": "app_open", "close": "app_close"}}}]
    assert clean(rules, event_type="open")["event_type"] == "app_open"
    assert clean(rules, event_type="view")["event_type"] == "view"


def test_set_adds_and_overwrites() -> None:
    event = clean([{"set": {"os": "linux", "channel": "beta"}}], os="windows")
    assert event["os"] == "linux"
    assert extra(event) == {"channel": "beta"}


def test_rename() -> None:
    event = clean([{"rename": {"type": "event_type", "ver": "app_version"}}], event_type=None, type="save", ver="9.4")
    assert (event["event_type"], event["app_version"], event["extra"]) == ("save", "9.4", None)


def test_rename_can_make_a_record_valid_and_missing_source_is_ignored() -> None:
    assert clean([{"rename": {"nothing": "here"}}])["event_id"] == "e-1"


def test_drop() -> None:
    event = clean([{"drop": ["secret", "token", "absent"]}], secret="s", token="t", keep=1)
    assert extra(event) == {"keep": 1}


def test_dropping_a_required_field_is_refused_unless_something_puts_it_back() -> None:
    with pytest.raises(ConfigError, match=r"clean\[0\]\.drop: dropping 'machine_id'"):
        Config.from_dict({"clean": [{"drop": ["machine_id"]}]})
    # A function of the rule may set it again, or a later rule rename another field to it.
    rules: list[dict[str, Any]] = [{"drop": ["timestamp"]}, {"rename": {"ts": "timestamp"}}]
    assert clean(rules, timestamp="garbage", ts=T0)["timestamp"] == T0
    assert clean_rejected([{"drop": ["machine_id"], "function": f"{__name__}:tag_in_place"}]).reason is (
        Reason.MISSING_FIELD
    )


# -- function plugins -----------------------------------------------------------------------------


def test_function_returning_a_new_record() -> None:
    assert extra(clean([{"function": "tests.core.test_cleaning:add_source"}])) == {"source": "plugin"}


def test_function_editing_in_place() -> None:
    assert extra(clean([{"function": "tests.core.test_cleaning:tag_in_place"}])) == {"tagged": True}


def test_function_rejecting_a_record() -> None:
    rules = [{"function": "tests.core.test_cleaning:refuse_bots"}]
    assert clean(rules, machine_id="m-1")["machine_id"] == "m-1"
    rejection = clean_rejected(rules, machine_id="bot-7")
    assert rejection.reason is Reason.REJECTED_BY_RULE
    assert rejection.message == "bots are not users"


def test_raising_function_is_cleaning_failed_not_a_crash() -> None:
    rejection = clean_rejected([{"function": "tests.core.test_cleaning:explode"}])
    assert rejection.reason is Reason.CLEANING_FAILED
    assert "KeyError" in rejection.message
    assert "no such thing" in rejection.message


def test_function_returning_a_non_dict_is_cleaning_failed() -> None:
    assert clean_rejected([{"function": "tests.core.test_cleaning:return_a_list"}]).reason is Reason.CLEANING_FAILED


def test_function_given_directly_to_a_rule() -> None:
    config = Config(clean=(CleanRule(function=add_source),))
    result = refine(raw_record(), config)
    assert isinstance(result, dict)
    assert extra(result) == {"source": "plugin"}


# -- when -----------------------------------------------------------------------------------------

SECONDS_BUILD = [{"when": {"app_version": "11.2.*"}, "scale": {"timestamp": 1000}}]


def test_when_glob_matches() -> None:
    assert clean(SECONDS_BUILD, app_version="11.2.4", timestamp=T0 // 1000)["timestamp"] == T0


def test_when_glob_does_not_match() -> None:
    # 11.20 is not 11.2.*: its millisecond timestamp is left alone.
    assert clean(SECONDS_BUILD, app_version="11.20.1")["timestamp"] == T0
    assert clean(SECONDS_BUILD, app_version="12.1.0")["timestamp"] == T0


def test_when_field_missing_does_not_match() -> None:
    assert clean(SECONDS_BUILD)["timestamp"] == T0


def test_when_list_of_patterns_and_exact_values() -> None:
    rules = [{"when": {"app_version": ["11.2.*", "9.4"]}, "set": {"os": "old"}}]
    assert clean(rules, app_version="9.4")["os"] == "old"
    assert clean(rules, app_version="11.2.1")["os"] == "old"
    assert clean(rules, app_version="9.40")["os"] is None


def test_when_every_condition_must_hold() -> None:
    rules = [{"when": {"app_version": "11.*", "os": "win*"}, "set": {"document_id": "d"}}]
    assert clean(rules, app_version="11.0", os="windows")["document_id"] == "d"
    assert clean(rules, app_version="11.0", os="macos")["document_id"] is None
    assert clean(rules, app_version="12.0", os="windows")["document_id"] is None


def test_when_matches_non_string_values_by_their_text() -> None:
    rules = [{"when": {"beta": "true", "build": "4*"}, "set": {"os": "x"}}]
    assert clean(rules, beta=True, build=42)["os"] == "x"
    assert clean(rules, beta=False, build=42)["os"] is None
    # Containers never match, even a pattern that matches anything.
    assert clean([{"when": {"tags": "*"}, "set": {"os": "x"}}], tags=["a"])["os"] is None


def test_when_is_case_sensitive() -> None:
    rules = [{"when": {"event_type": "open"}, "set": {"event_type": "app_open"}}]
    assert clean(rules, event_type="OPEN")["event_type"] == "OPEN"


# -- order ----------------------------------------------------------------------------------------


def test_actions_within_a_rule_run_in_a_fixed_order() -> None:
    # rename, lowercase, map, scale, divide, set, drop, function: whatever order the keys are written in.
    rules = [
        {
            "function": "tests.core.test_cleaning:add_source",
            "drop": ["Type"],
            "set": {"seen": 1},
            "scale": {"seen": 10, "timestamp": 1000},
            "map": {"event_type": {"open": "app_open"}},
            "lowercase": ["event_type"],
            "rename": {"Type": "event_type", "ts_s": "timestamp"},
        }
    ]
    event = clean(rules, event_type=None, timestamp=None, Type="OPEN", ts_s=T0 // 1000)
    assert event["event_type"] == "app_open"  # renamed, then lower-cased, then mapped
    assert event["timestamp"] == T0  # renamed, then scaled
    assert extra(event) == {"seen": 1, "source": "plugin"}  # set after scale; function last


def test_divide_runs_after_scale_and_before_set() -> None:
    rules = [{"set": {"m": 7}, "divide": {"n": 3, "m": 2}, "scale": {"n": 10}}]
    assert extra(clean(rules, n=1, m=100)) == {"n": 3, "m": 7}  # (1 * 10) // 3; m divided, then set


def test_rules_run_in_the_order_written() -> None:
    first_map: list[dict[str, Any]] = [{"map": {"event_type": {"open": "app_open"}}}, {"lowercase": ["event_type"]}]
    first_lower: list[dict[str, Any]] = [{"lowercase": ["event_type"]}, {"map": {"event_type": {"open": "app_open"}}}]
    assert clean(first_map, event_type="OPEN")["event_type"] == "open"
    assert clean(first_lower, event_type="OPEN")["event_type"] == "app_open"


def test_a_rule_sees_what_the_rules_before_it_did() -> None:
    rules: list[dict[str, Any]] = [{"set": {"app_version": "11.2.9"}}, *SECONDS_BUILD]
    assert clean(rules, timestamp=T0 // 1000)["timestamp"] == T0


def test_no_rules_compiles_to_nothing() -> None:
    assert compile_rules(()) is None


# -- the README example ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["11.2.1", "11.2.4"])
def test_example_config_fixes_the_seconds_build_and_upper_case_types(version: str) -> None:
    config = Config.from_dict(__import__("tomllib").loads(EXAMPLE_CONFIG))
    raw = raw_record(app_version=version, timestamp=T0 // 1000 + 42, event_type="DOC_OPEN")
    event = refine(raw, config)
    assert isinstance(event, dict), event
    assert event["timestamp"] == T0 + 42_000
    assert event["event_date"] == "2026-10-05"
    assert event["event_type"] == "doc_open"
    # Without the rule, the same record is from 1970: out of range.
    plain = refine(raw, Config())
    assert isinstance(plain, Rejection)
    assert plain.reason is Reason.TIMESTAMP_OUT_OF_RANGE
    # Other builds keep their milliseconds.
    other = refine(raw_record(app_version="11.3.2", timestamp=T0), config)
    assert isinstance(other, dict)
    assert other["timestamp"] == T0
