"""The mapping actions (cast, parse_time, event_id) and dotted paths, through the core's refine step.

Each action at its boundaries: a cast overflow, an unparsable time, the hours a DST change skips
and repeats, a missing nested field; each rejection names the field and gives the reason a
validation failure of the same kind gets.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionflow.config import Config, FieldNames
from sessionflow.core import Outputs, Reason, Rejection, Sessionizer
from sessionflow.core.mapping import EVENT_NAMESPACE, event_id_from
from sessionflow.schema import event_columns
from tests.helpers import T0, refine
from tests.mapping.shapes import made_event_id

PARIS = ZoneInfo("Europe/Paris")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATER = 2_208_988_800_000  # processing time 2040-01-01: every time these tests parse is before it


def ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def base(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"event_id": "e-1", "machine_id": "m-1", "event_type": "view", "timestamp": T0}
    record.update(fields)
    return {k: v for k, v in record.items() if v is not None}


def run(data: dict[str, Any], record: dict[str, Any]) -> dict[str, Any] | Rejection:
    return refine(orjson.dumps(record), Config.from_dict(data), now_ms=LATER)


def valid(data: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    result = run(data, record)
    assert isinstance(result, dict), result
    return result


def rejected(data: dict[str, Any], record: dict[str, Any], reason: Reason, *words: str) -> Rejection:
    result = run(data, record)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result
    for word in words:
        assert word in result.message, result.message
    assert result.raw == orjson.dumps(record)  # the bytes as they came, whatever the rule did first
    return result


def extra(event: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(event["extra"]) if event["extra"] else {}


def rules(*actions: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"clean": list(actions), **top}


# -- cast ------------------------------------------------------------------------------------------------


def test_cast_to_string_writes_numbers_and_booleans_as_their_json_text() -> None:
    cast = rules({"cast": {"user_id": "string", "flag": "string", "ratio": "string"}})
    event = valid(cast, base(user_id=777198, flag=True, ratio=1.5))
    assert event["user_id"] == "777198"
    assert extra(event) == {"flag": "true", "ratio": "1.5"}
    assert valid(cast, base(user_id="already"))["user_id"] == "already"
    rejected(cast, base(user_id={"id": 1}), Reason.WRONG_TYPE, "'user_id'", "an object")


def test_cast_to_int_at_the_64_bit_bounds() -> None:
    cast = rules({"cast": {"pages": "int"}}, columns={"pages": "int"})
    assert valid(cast, base(pages=str(2**63 - 1)))["pages"] == 2**63 - 1
    assert valid(cast, base(pages=str(-(2**63))))["pages"] == -(2**63)
    assert valid(cast, base(pages=" 42 "))["pages"] == 42
    assert valid(cast, base(pages=12.0))["pages"] == 12
    for overflow in (str(2**63), str(-(2**63) - 1), 2**63, 1e19):
        rejected(cast, base(pages=overflow), Reason.WRONG_TYPE, "'pages'", "64-bit")
    for value in (12.5, "12.5", "1e3", "twelve", "", True, [1]):
        rejected(cast, base(pages=value), Reason.WRONG_TYPE, "'pages'", "cannot be cast to int")


def test_cast_to_float_and_bool() -> None:
    cast = rules({"cast": {"ratio": "float", "ok": "bool"}}, columns={"ratio": "float", "ok": "bool"})
    event = valid(cast, base(ratio="2.5e-3", ok="TRUE"))
    assert (event["ratio"], event["ok"]) == (0.0025, True)
    event = valid(cast, base(ratio=3, ok=0))
    assert (event["ratio"], type(event["ratio"]), event["ok"]) == (3.0, float, False)
    rejected(cast, base(ratio="1e999"), Reason.WRONG_TYPE, "'ratio'", "beyond a 64-bit float")
    for value in ("nan", "inf", "1,5", True):
        rejected(cast, base(ratio=value), Reason.WRONG_TYPE, "'ratio'")
    for word in ("yes", 2, "maybe"):
        rejected(cast, base(ok=word), Reason.WRONG_TYPE, "'ok'", "not a boolean")


def test_cast_leaves_a_missing_or_null_field_missing() -> None:
    cast = rules({"cast": {"user_id": "string", "properties.count": "int"}})
    event = valid(cast, base(user_id=None, properties={"other": 1}))
    assert event["user_id"] is None
    assert extra(event) == {"properties": {"other": 1}}
    event = valid(cast, base(properties={"count": "7"}))
    assert extra(event) == {"properties": {"count": 7}}


# -- parse_time -------------------------------------------------------------------------------------------


FAKER = rules(
    {"parse_time": {"event_time": {"format": "%d/%m/%Y %H:%M:%S.%f", "timezone": "UTC"}}},
)


def test_parse_time_reads_a_format_into_the_timestamp_field_and_consumes_the_field() -> None:
    event = valid(FAKER, base(timestamp=None, event_time="05/10/2026 00:00:01.250999"))
    assert event["timestamp"] == T0 + 1250  # microseconds rounded down to the millisecond
    assert extra(event) == {}
    # Into the configured timestamp field, wherever it is.
    nested = {**FAKER, "fields": {"timestamp": "meta.ts"}}
    assert valid(nested, base(timestamp=None, event_time="05/10/2026 00:00:00.000000"))["timestamp"] == T0


def test_an_unparsable_time_is_invalid_timestamp_naming_the_field() -> None:
    for text in ("31/02/2026 05:02:38.850308", "2026-10-05T00:00:00Z", "05/10/2026", ""):
        rejected(FAKER, base(timestamp=None, event_time=text), Reason.INVALID_TIMESTAMP, "'event_time'", "format")
    rejected(FAKER, base(timestamp=None, event_time=1_791_158_400), Reason.WRONG_TYPE, "'event_time'", "string")
    # A missing field is left alone: validation then finds the timestamp missing.
    rejected(FAKER, base(timestamp=None), Reason.MISSING_FIELD, "'timestamp'")


def test_a_parsed_time_is_validated_like_any_timestamp() -> None:
    rejected(FAKER, base(timestamp=None, event_time="31/12/1999 23:59:59.999999"), Reason.TIMESTAMP_OUT_OF_RANGE)
    assert valid(FAKER, base(timestamp=None, event_time="01/01/2000 00:00:00.000000"))["timestamp"] == 946_684_800_000


PARIS_LOCAL = rules({"parse_time": {"t": {"format": "%Y-%m-%d %H:%M:%S.%f", "timezone": "Europe/Paris"}}})


def local(text: str) -> dict[str, Any] | Rejection:
    return run(PARIS_LOCAL, base(timestamp=None, t=text))


def test_the_hour_summer_time_skips_never_happened() -> None:
    # 2026-03-29: Paris goes from 02:00 CET straight to 03:00 CEST.
    before, after = local("2026-03-29 01:59:59.999000"), local("2026-03-29 03:00:00.000000")
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before["timestamp"] == ms(datetime(2026, 3, 29, 0, 59, 59, 999000, tzinfo=UTC))
    assert after["timestamp"] - before["timestamp"] == 1  # one millisecond apart, not an hour
    for skipped in ("2026-03-29 02:00:00.000000", "2026-03-29 02:30:00.000000", "2026-03-29 02:59:59.999000"):
        rejection = local(skipped)
        assert isinstance(rejection, Rejection) and rejection.reason is Reason.INVALID_TIMESTAMP
        assert "never happened in Europe/Paris" in rejection.message


def test_the_hour_winter_time_repeats_is_read_as_its_first_pass() -> None:
    # 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice, the first at 00:30 UTC.
    first = local("2026-10-25 02:30:00.000000")
    after = local("2026-10-25 03:00:00.000000")
    assert isinstance(first, dict) and isinstance(after, dict)
    assert first["timestamp"] == ms(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))
    assert after["timestamp"] == ms(datetime(2026, 10, 25, 2, 0, tzinfo=UTC))


def test_a_session_across_the_dst_change_is_measured_in_real_time() -> None:
    # 01:50 and 03:10 local on the night the clocks go forward are 20 minutes apart: one session.
    config = Config.from_dict(PARIS_LOCAL)
    events = []
    for number, text in enumerate(("2026-03-29 01:50:00.000000", "2026-03-29 03:10:00.000000")):
        event = refine(orjson.dumps(base(event_id=f"e{number}", timestamp=None, t=text)), config, now_ms=LATER)
        assert isinstance(event, dict)
        events.append(event)
    out = Outputs()
    sessionizer = Sessionizer(config.session)
    sessionizer.process(events, out)
    sessionizer.flush(out)
    assert len(out.sessions) == 1 and out.sessions[0]["duration_ms"] == 20 * 60_000


# hypothesis takes naive bounds and gives aware datetimes in the zones asked for.
@given(
    st.datetimes(
        min_value=datetime(2001, 1, 1),  # noqa: DTZ001
        max_value=datetime(2037, 12, 31),  # noqa: DTZ001
        timezones=st.just(UTC),
    )
)
def test_a_local_time_written_without_its_zone_reads_back_as_its_instant(instant: datetime) -> None:
    """Property: format an instant as Paris wall time, parse it with the zone: the same instant,
    except in the hour winter time repeats, where the first pass is taken."""
    instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    wall = instant.astimezone(PARIS)
    event = local(wall.strftime("%Y-%m-%d %H:%M:%S.%f"))
    assert isinstance(event, dict)
    expected = ms(instant) if wall.fold == 0 else ms(instant) - 3_600_000
    assert event["timestamp"] == expected


def test_a_format_with_an_offset_takes_the_offset_given() -> None:
    access_log = rules({"parse_time": {"time_local": {"format": "%d/%b/%Y:%H:%M:%S %z"}}})
    event = valid(access_log, base(timestamp=None, time_local="05/Oct/2026:02:00:00 +0200"))
    assert event["timestamp"] == T0


def test_iso_times_with_a_zone_for_those_without() -> None:
    iso = rules({"parse_time": {"ts": {"format": "iso", "timezone": "America/New_York"}}})
    assert valid(iso, base(timestamp=None, ts="2026-10-04 20:00:00"))["timestamp"] == T0  # EDT, -04:00
    assert valid(iso, base(timestamp=None, ts="2026-10-05T01:00:00+01:00"))["timestamp"] == T0
    rejected(iso, base(timestamp=None, ts="04/10/2026"), Reason.INVALID_TIMESTAMP, "'ts'", "ISO-8601")
    bare = rules({"parse_time": {"ts": "iso"}})
    rejected(bare, base(timestamp=None, ts="2026-10-04 20:00:00"), Reason.INVALID_TIMESTAMP, "no timezone")


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("epoch_s", T0 // 1000, T0),
        ("epoch_s", T0 / 1000 + 0.123, T0 + 123),  # exactly, as written
        ("epoch_s", f"{T0 // 1000}.999", T0 + 999),
        ("epoch_ms", T0 + 0.9, T0),
        ("epoch_ms", str(T0), T0),
        ("epoch_us", T0 * 1000 + 999, T0),
        ("epoch_ns", T0 * 1_000_000 + 999_999, T0),  # past 2**53: integer arithmetic
        ("epoch_ns", str(T0 * 1_000_000), T0),
    ],
)
def test_epoch_units(unit: str, value: Any, expected: int) -> None:
    event = valid(rules({"parse_time": {"timestamp": unit}}), base(timestamp=value))
    assert event["timestamp"] == expected and type(event["timestamp"]) is int


def test_epoch_values_that_are_not_numbers() -> None:
    epoch = rules({"parse_time": {"timestamp": "epoch_s"}})
    rejected(epoch, base(timestamp="yesterday"), Reason.INVALID_TIMESTAMP, "'timestamp'", "not a number")
    rejected(epoch, base(timestamp=True), Reason.WRONG_TYPE, "'timestamp'", "must be a number")
    rejected(epoch, base(timestamp="1e400"), Reason.INVALID_TIMESTAMP, "not a time")


def test_parse_time_into_another_field() -> None:
    into = rules({"parse_time": {"sentAt": {"format": "iso", "into": "sent_ms"}}}, columns={"sent_ms": "int"})
    event = valid(into, base(sentAt="2026-10-05T00:00:01Z"))
    assert (event["sent_ms"], event["timestamp"]) == (T0 + 1000, T0)


# -- event_id -------------------------------------------------------------------------------------------


MADE = rules({"event_id": {"from": ["ip", "event_time", "event_name"]}})


def test_event_id_is_the_documented_uuid5_of_the_values() -> None:
    record = base(event_id=None, ip="85.59.39.221", event_time="28/03/2026 23:09:48.360212", event_name="Search")
    event = valid(MADE, record)
    assert event["event_id"] == made_event_id(["85.59.39.221", "28/03/2026 23:09:48.360212", "Search"])
    assert uuid.UUID(event["event_id"]).version == 5
    assert valid(MADE, record)["event_id"] == event["event_id"]  # a re-send gets the same id
    assert valid(MADE, {**record, "event_name": "Login"})["event_id"] != event["event_id"]
    # The feed's own event_id, if any, is replaced.
    assert valid(MADE, {**record, "event_id": "theirs"})["event_id"] == event["event_id"]


@given(
    st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
            max_leaves=6,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_event_id_formula_on_any_values(values: list[Any]) -> None:
    """Property: the core's id is uuid5(namespace, compact JSON with sorted keys) of the values."""
    text = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert event_id_from(values) == str(uuid.uuid5(EVENT_NAMESPACE, text))


def test_event_id_from_missing_fields() -> None:
    some = base(event_id=None, ip="1.2.3.4")
    assert valid(MADE, some)["event_id"] == made_event_id(["1.2.3.4", None, None])
    rejected(MADE, base(event_id=None), Reason.MISSING_FIELD, "ip, event_time, event_name")


def test_event_id_is_made_before_parse_time_reads_the_time() -> None:
    both = rules(
        {
            "event_id": {"from": ["ip", "event_time"]},
            "parse_time": {"event_time": {"format": "%d/%m/%Y %H:%M:%S.%f", "timezone": "UTC"}},
        }
    )
    event = valid(both, base(event_id=None, timestamp=None, ip="a", event_time="05/10/2026 00:00:00.000000"))
    assert event["event_id"] == made_event_id(["a", "05/10/2026 00:00:00.000000"])
    assert event["timestamp"] == T0


def test_event_id_from_nested_fields_into_a_nested_field() -> None:
    nested = rules(
        {"event_id": {"from": ["context.ip", "properties.n"], "into": "meta.id"}}, fields={"event_id": "meta.id"}
    )
    event = valid(nested, base(event_id=None, context={"ip": "x"}, properties={"n": 3}))
    assert event["event_id"] == made_event_id(["x", 3])


# -- dotted paths --------------------------------------------------------------------------------------------


SEGMENTISH = {
    "fields": {"event_id": "messageId", "machine_id": "context.device.id", "event_type": "event"},
    "columns": {"properties.doc_id": "string", "properties.pages": "int"},
}


def track(**context: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "messageId": "m-1",
        "event": "Document Opened",
        "timestamp": T0,
        "context": {"device": {"id": "dev-1"}, "library": {"name": "analytics.js"}, **context},
        "properties": {"doc_id": "doc-9", "pages": 12, "title": "x"},
    }
    return record


def test_fields_and_columns_by_dotted_path() -> None:
    event = valid(SEGMENTISH, track())
    assert (event["event_id"], event["machine_id"], event["event_type"]) == ("m-1", "dev-1", "Document Opened")
    assert (event["properties_doc_id"], event["properties_pages"]) == ("doc-9", 12)
    # Every runtime's table has the column under that name (the Parquet writers, Spark, the Glue catalog).
    columns = event_columns(Config.from_dict(SEGMENTISH))
    assert {("properties_doc_id", "string"), ("properties_pages", "int64")} <= set(columns)
    # What a column or a field took leaves the object; an object left empty goes too.
    assert extra(event) == {"context": {"library": {"name": "analytics.js"}}, "properties": {"title": "x"}}


def test_a_missing_nested_field() -> None:
    record = track()
    del record["context"]["device"]
    rejected(SEGMENTISH, record, Reason.MISSING_FIELD, "'context.device.id'")
    record = track()
    record["context"] = "not an object"
    rejected(SEGMENTISH, record, Reason.MISSING_FIELD, "'context.device.id'")
    record = track()
    del record["properties"]
    event = valid(SEGMENTISH, record)
    assert (event["properties_doc_id"], event["properties_pages"]) == (None, None)
    wrong = track()
    wrong["properties"]["pages"] = "twelve"
    rejected(SEGMENTISH, wrong, Reason.WRONG_TYPE, "'properties.pages'", "an int")


def test_a_top_level_field_with_a_dot_in_its_name_is_not_the_path() -> None:
    record = {**track(), "context.device.id": "literal"}
    event = valid(SEGMENTISH, record)
    assert event["machine_id"] == "dev-1"
    assert extra(event)["context.device.id"] == "literal"


def test_when_rename_lowercase_map_scale_drop_on_nested_fields() -> None:
    data = {
        **SEGMENTISH,
        "clean": [
            {
                "when": {"context.library.name": "analytics*"},
                "rename": {"context.os.name": "os", "properties.doc_id": "document_id", "tag": "properties.tag"},
                "lowercase": ["context.locale"],
                "map": {"event": {"Document Opened": "doc_open"}},
                "scale": {"properties.pages": 2},
                "drop": ["context.library"],
            }
        ],
    }
    event = valid(data, {**track(os={"name": "macOS"}, locale="FR-fr"), "tag": "t"})
    assert (event["os"], event["document_id"], event["event_type"]) == ("macOS", "doc-9", "doc_open")
    assert (event["properties_doc_id"], event["properties_pages"]) == (None, 24)
    assert extra(event) == {"context": {"locale": "fr-fr"}, "properties": {"tag": "t", "title": "x"}}
    # A nested `when` that does not match, or a missing nested field, leaves the record as it is.
    other = track(os={"name": "macOS"})
    other["context"]["library"]["name"] = "rudder"
    assert valid(data, other)["event_type"] == "Document Opened"
    del other["context"]["library"]
    assert valid(data, other)["event_type"] == "Document Opened"


def test_rename_into_a_path_through_a_scalar_is_wrong_type() -> None:
    data = {"clean": [{"rename": {"ver": "app.version"}}]}
    rejected(data, base(ver="1.0", app="PDF Editor"), Reason.WRONG_TYPE, "'app' is not an object")
    assert extra(valid(data, base(ver="1.0", app={"name": "x"}))) == {"app": {"name": "x", "version": "1.0"}}


def test_set_gives_each_record_its_own_object() -> None:
    data = {"clean": [{"set": {"meta": {"source": "x"}}}, {"rename": {"tag": "meta.tag"}}]}
    first = valid(data, base(tag="a"))
    second = valid(data, base())
    assert extra(first) == {"meta": {"source": "x", "tag": "a"}}
    assert extra(second) == {"meta": {"source": "x"}}


def test_a_plain_config_reads_what_it_always_read() -> None:
    # No dot anywhere: the same event as before dotted paths existed.
    event = refine(orjson.dumps(base(os="linux", extra_field={"a": 1})), Config())
    assert isinstance(event, dict)
    assert event["os"] == "linux" and extra(event) == {"extra_field": {"a": 1}}
    assert FieldNames().names() == ("event_id", "machine_id", "event_type", "timestamp", "user_id", "app_version")
