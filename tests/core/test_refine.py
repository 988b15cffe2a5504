"""Refiner: every rejection reason and its boundaries, timestamps, extra fields, enrichment."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sessionflow.config import DEFAULT_MIN_TIMESTAMP_MS, Config
from sessionflow.core import Reason, Rejection, strip_record
from sessionflow.core.enrich import version_parts
from sessionflow.core.pipeline import LineRefiner
from tests.helpers import NOW, T0, raw_record, refine


def rejected(raw: bytes, config: Config | None = None, now_ms: int = NOW) -> Rejection:
    result = refine(raw, config, now_ms)
    assert isinstance(result, Rejection), f"expected a rejection, got {result}"
    # A rejection keeps the bytes it was given, untouched.
    assert result.raw == raw
    assert result.message
    return result


def valid(raw: bytes, config: Config | None = None, now_ms: int = NOW) -> dict[str, Any]:
    result = refine(raw, config, now_ms)
    assert isinstance(result, dict), f"expected an event, got {result}"
    return result


# -- oversized ------------------------------------------------------------------------------------


def _padded_to(size: int) -> bytes:
    base = raw_record(pad="")
    return raw_record(pad="x" * (size - len(base)))


def test_record_at_the_size_limit_is_valid_one_byte_more_is_oversized() -> None:
    config = Config.from_dict({"validation": {"max_record_bytes": 200}})
    exactly = _padded_to(200)
    assert len(exactly) == 200
    assert valid(exactly, config)["event_id"] == "e-1"
    over = _padded_to(201)
    assert rejected(over, config).reason is Reason.OVERSIZED


def test_oversized_is_decided_before_parsing() -> None:
    config = Config.from_dict({"validation": {"max_record_bytes": 10}})
    # Invalid UTF-8 and not JSON: only the size can have been looked at.
    garbage = b"\xff" * 11
    rejection = rejected(garbage, config)
    assert rejection.reason is Reason.OVERSIZED
    assert "11 bytes" in rejection.message


# -- encoding and syntax --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id": "e-\xff", "machine_id": "m", "event_type": "view", "timestamp": 1}',
        b"\xc3\x28",  # a truncated two-byte sequence
        b'{"event_id": "\xed\xa0\x80"}',  # an encoded surrogate
        b"\xfe\xff{}",
    ],
)
def test_invalid_utf8(raw: bytes) -> None:
    assert rejected(raw).reason is Reason.INVALID_UTF8


def test_invalid_utf8_message_gives_the_byte_offset() -> None:
    raw = b'{"a": "\xff"}'
    assert "byte 7" in rejected(raw).message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id": "e-1", "machine_id": "m-1"',  # truncated
        b'{"event_id": "e-1", "timestamp": NaN}',
        b'{"event_id": "e-1", "timestamp": Infinity}',
        b'{"event_id": "e-1", "timestamp": -Infinity}',
        b"NaN",
        raw_record() + b" trailing",
        raw_record() + raw_record(),  # two objects on one line
        b"{'event_id': 'e-1'}",  # Python, not JSON
        b'{"timestamp": 1e400}',  # a number no double holds
        b'{"event_id": "\\ud800"}',  # a lone surrogate escape
        b"{,}",
    ],
)
def test_malformed_json(raw: bytes) -> None:
    assert rejected(raw).reason is Reason.MALFORMED_JSON


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[1, 2, 3]", "an array"),
        (b"[]", "an array"),
        (b"42", "a number"),
        (b"-1.5", "a number"),
        (b'"app_open"', "a string"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_not_an_object(raw: bytes, kind: str) -> None:
    rejection = rejected(raw)
    assert rejection.reason is Reason.NOT_AN_OBJECT
    assert kind in rejection.message


# -- required fields ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["event_id", "machine_id", "event_type", "timestamp"])
def test_missing_required_field(name: str) -> None:
    record = orjson.loads(raw_record())
    del record[name]
    rejection = rejected(orjson.dumps(record))
    assert rejection.reason is Reason.MISSING_FIELD
    assert repr(name) in rejection.message


@pytest.mark.parametrize("name", ["event_id", "machine_id", "event_type", "timestamp"])
def test_null_required_field_is_missing(name: str) -> None:
    record = orjson.loads(raw_record())
    record[name] = None
    rejection = rejected(orjson.dumps(record))
    assert rejection.reason is Reason.MISSING_FIELD
    assert repr(name) in rejection.message


def test_empty_object_is_missing_fields() -> None:
    assert rejected(b"{}").reason is Reason.MISSING_FIELD


@pytest.mark.parametrize("name", ["event_id", "machine_id", "event_type"])
@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_empty_field(name: str, value: str) -> None:
    rejection = rejected(raw_record(**{name: value}))
    assert rejection.reason is Reason.EMPTY_FIELD
    assert repr(name) in rejection.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("event_id", 12345),
        ("event_id", True),
        ("machine_id", ["m-1"]),
        ("event_type", {"name": "view"}),
        ("event_type", 1.5),
    ],
)
def test_wrong_type_of_a_required_string(name: str, value: Any) -> None:
    rejection = rejected(raw_record(**{name: value}))
    assert rejection.reason is Reason.WRONG_TYPE
    assert repr(name) in rejection.message


@pytest.mark.parametrize("value", [True, False, [T0], {"ms": T0}, 1.5, T0 + 0.25])
def test_timestamp_of_a_wrong_type(value: Any) -> None:
    assert rejected(raw_record(timestamp=value)).reason is Reason.WRONG_TYPE


def test_boolean_timestamp_message_says_boolean() -> None:
    assert "boolean" in rejected(raw_record(timestamp=True)).message


@pytest.mark.parametrize(
    ("name", "value"),
    [("user_id", 5), ("os", True), ("document_id", ["d"]), ("app_version", 12.1), ("user_id", {"id": 1})],
)
def test_wrong_type_of_a_declared_column(name: str, value: Any) -> None:
    rejection = rejected(raw_record(**{name: value}))
    assert rejection.reason is Reason.WRONG_TYPE
    assert repr(name) in rejection.message


def test_declared_columns_of_every_type() -> None:
    config = Config.from_dict({"columns": {"pages": "int", "ratio": "float", "dark": "bool", "locale": "string"}})
    event = valid(raw_record(pages=3, ratio=2, dark=False, locale="de-DE"), config)
    assert (event["pages"], event["ratio"], event["dark"], event["locale"]) == (3, 2, False, "de-DE")
    # An absent or null column is None, not a rejection.
    event = valid(raw_record(pages=None, dark=None), config)
    assert event["pages"] is None
    assert event["dark"] is None
    for fields in ({"pages": "3"}, {"pages": True}, {"pages": 3.0}, {"ratio": "2.5"}, {"ratio": True}, {"dark": 1}):
        assert rejected(raw_record(**fields), config).reason is Reason.WRONG_TYPE, fields


def test_a_declared_column_keeps_the_default_columns() -> None:
    config = Config.from_dict({"columns": {"page_count": "int"}})
    event = valid(raw_record(page_count=7, user_id="u-1", app_version="11.2.3", os="win", document_id="d"), config)
    assert (event["page_count"], event["user_id"], event["os"], event["document_id"]) == (7, "u-1", "win", "d")
    assert (event["app_version_major"], event["app_version_minor"]) == (11, 2)
    assert event["extra"] is None
    # A default column set to false goes back to extra.
    event = valid(raw_record(os="win"), Config.from_dict({"columns": {"os": False}}))
    assert "os" not in event
    assert orjson.loads(event["extra"]) == {"os": "win"}


def test_int_column_must_fit_64_bits() -> None:
    config = Config.from_dict({"columns": {"pages": "int"}})
    assert valid(raw_record(pages=2**63 - 1), config)["pages"] == 2**63 - 1
    assert valid(raw_record(pages=-(2**63)), config)["pages"] == -(2**63)
    rejection = rejected(raw_record(pages=2**63), config)
    assert rejection.reason is Reason.WRONG_TYPE
    assert "64-bit" in rejection.message


# -- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["yesterday at noon", "1791158400000", "", "2026-13-01T00:00:00Z", "2026-10-05T12:00:00", "2026-10-05"],
)
def test_invalid_timestamp_string(value: str) -> None:
    assert rejected(raw_record(timestamp=value)).reason is Reason.INVALID_TIMESTAMP


def test_naive_iso_string_is_refused_for_its_missing_timezone() -> None:
    assert "no timezone" in rejected(raw_record(timestamp="2026-10-05T12:00:00.000")).message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-10-05T00:00:00Z", T0),
        ("2026-10-05T00:00:00.000+00:00", T0),
        ("2026-10-05T14:30:00.250+02:00", T0 + (12 * 60 + 30) * 60_000 + 250),
        ("2026-10-04T19:00:00-05:00", T0),
        ("2026-10-05T05:45:00+05:45", T0),
        # Sub-millisecond digits are cut, never rounded up into the next millisecond.
        ("2026-10-05T00:00:00.000999Z", T0),
        ("2026-10-05T00:00:00.001999Z", T0 + 1),
    ],
)
def test_iso_timestamps_with_offsets(value: str, expected: int) -> None:
    event = valid(raw_record(timestamp=value))
    assert event["timestamp"] == expected
    assert event["event_time"].endswith("Z")


def test_integral_float_timestamp_is_milliseconds() -> None:
    assert valid(raw_record(timestamp=float(T0)))["timestamp"] == T0
    assert type(valid(raw_record(timestamp=float(T0)))["timestamp"]) is int


def test_lower_bound_of_the_timestamp_range() -> None:
    assert DEFAULT_MIN_TIMESTAMP_MS == 946_684_800_000
    assert valid(raw_record(timestamp=DEFAULT_MIN_TIMESTAMP_MS))["timestamp"] == DEFAULT_MIN_TIMESTAMP_MS
    assert valid(raw_record(timestamp="2000-01-01T00:00:00Z"))["timestamp"] == DEFAULT_MIN_TIMESTAMP_MS
    for too_old in (DEFAULT_MIN_TIMESTAMP_MS - 1, "1999-12-31T23:59:59.999Z", 0, -1):
        assert rejected(raw_record(timestamp=too_old)).reason is Reason.TIMESTAMP_OUT_OF_RANGE


def test_upper_bound_is_processing_time_plus_skew() -> None:
    skew = Config().validation.max_future_skew_ms
    assert valid(raw_record(timestamp=NOW + skew))["timestamp"] == NOW + skew
    assert rejected(raw_record(timestamp=NOW + skew + 1)).reason is Reason.TIMESTAMP_OUT_OF_RANGE
    # The bound moves with the processing time passed in: the refiner has no clock of its own.
    assert valid(raw_record(timestamp=NOW + skew + 1), now_ms=NOW + 1)


def test_configured_range() -> None:
    config = Config.from_dict({"validation": {"min_timestamp": "2026-10-05T00:00:00Z", "max_future_skew": "1s"}})
    assert valid(raw_record(timestamp=T0), config)
    assert rejected(raw_record(timestamp=T0 - 1), config).reason is Reason.TIMESTAMP_OUT_OF_RANGE
    assert valid(raw_record(timestamp=NOW + 1000), config)
    assert rejected(raw_record(timestamp=NOW + 1001), config).reason is Reason.TIMESTAMP_OUT_OF_RANGE


@pytest.mark.parametrize("value", [1e300, -1e300, "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"])
def test_extreme_timestamps_are_out_of_range_not_a_crash(value: Any) -> None:
    assert rejected(raw_record(timestamp=value)).reason is Reason.TIMESTAMP_OUT_OF_RANGE


# -- what a valid event carries -------------------------------------------------------------------


def test_extra_fields_go_to_the_extra_json_column() -> None:
    event = valid(raw_record(locale="de-DE", page_count=12, flags=["dark_mode"], nested={"b": 1, "a": None}))
    assert orjson.loads(event["extra"]) == {
        "locale": "de-DE",
        "page_count": 12,
        "flags": ["dark_mode"],
        "nested": {"b": 1, "a": None},
    }
    # Keys are sorted, so the same fields always give the same text.
    assert event["extra"] == orjson.dumps(orjson.loads(event["extra"]), option=orjson.OPT_SORT_KEYS).decode()
    for column in ("event_id", "machine_id", "event_type", "timestamp", "user_id", "os"):
        assert column not in orjson.loads(event["extra"])


def test_no_extra_fields_gives_null_extra() -> None:
    assert valid(raw_record(user_id="u-1", os="linux"))["extra"] is None


def test_enrichment() -> None:
    event = valid(raw_record(timestamp=T0 + 13 * 3_600_000 + 2 * 60_000 + 11_123, app_version="11.2.3", user_id="u"))
    assert event["event_time"] == "2026-10-05T13:02:11.123Z"
    assert event["event_date"] == "2026-10-05"
    assert event["event_hour"] == 13
    assert event["day_of_week"] == 1  # a Monday
    assert (event["app_version_major"], event["app_version_minor"]) == (11, 2)
    assert event["user_id"] == "u"
    sunday = valid(raw_record(timestamp=T0 - 1))
    assert (sunday["event_date"], sunday["event_hour"], sunday["day_of_week"]) == ("2026-10-04", 23, 7)


@pytest.mark.parametrize(
    ("version", "parts"),
    [
        ("12.1.0", (12, 1)),
        ("9.4", (9, 4)),
        ("12", (12, None)),
        ("beta", (None, None)),
        ("12.x.1", (12, None)),
        ("", (None, None)),
        ("².1", (None, 1)),  # isdigit() but not a number int() reads
        ("٣.1", (None, 1)),  # an Arabic-Indic digit
        ("99999999999.1", (None, 1)),  # over the int32 column
        ("2147483647.2147483648", (2147483647, None)),
        ("1" * 5000, (None, None)),  # longer than int() accepts
    ],
)
def test_version_parts(version: str, parts: tuple[int | None, int | None]) -> None:
    assert version_parts(version) == parts
    assert valid(raw_record(app_version=version))["app_version_major"] == parts[0]


# -- line handling and field names ----------------------------------------------------------------


def test_strip_record_removes_bom_crlf_and_blanks() -> None:
    body = raw_record()
    assert strip_record(b"\xef\xbb\xbf" + body + b"\r\n") == body
    assert strip_record(body + b"\r") == body
    assert strip_record(b"  \t" + body + b" \n") == body
    assert strip_record(b"\xef\xbb\xbf") == b""
    assert strip_record(b" \r\n") == b""
    assert valid(strip_record(b"\xef\xbb\xbf" + body + b"\r\n"))["event_id"] == "e-1"


def test_the_raw_line_step_counts_each_line_once_and_rejects_it_as_it_arrived() -> None:
    """What every runtime runs per raw line: blank, event, or a rejection row keeping the line's bytes."""
    config = Config.from_dict({"validation": {"max_record_bytes": 200}})
    body = raw_record()
    oversized = b"\xef\xbb\xbf" + _padded_to(201) + b"\r\n"
    lines = [(b" \r", "a.jsonl", 1), (b"\xef\xbb\xbf" + body + b"\r\n", "a.jsonl", 2), (b"  {oops\xff \r\n", "b", 7)]
    batch = LineRefiner(config).refine_lines([*lines, (oversized, "b", 8)], NOW)
    assert (batch.blank, batch.records, [e["event_id"] for e in batch.events]) == (1, 3, ["e-1"])
    assert batch.rejected == {"invalid_utf8": 1, "oversized": 1}
    first, second = batch.rejections
    assert first == {
        "reason": "invalid_utf8",
        "message": first["message"],
        "raw_base64": "ICB7b29wc/8g",  # b"  {oops\xff ": the line end goes, its blanks stay
        "raw": None,
        "source": "b",
        "line": 7,
    }
    assert (second["reason"], second["raw"], second["line"]) == ("oversized", oversized[:-2].decode(), 8)


def test_configurable_field_names() -> None:
    config = Config.from_dict(
        {
            "fields": {
                "event_id": "id",
                "machine_id": "device",
                "event_type": "name",
                "timestamp": "ts",
                "user_id": "uid",
                "app_version": "ver",
            }
        }
    )
    raw = orjson.dumps({"id": "e-9", "device": "d-1", "name": "save", "ts": T0, "uid": "u-1", "ver": "12.0.3", "x": 1})
    event = valid(raw, config)
    assert (event["event_id"], event["machine_id"], event["event_type"], event["timestamp"]) == (
        "e-9",
        "d-1",
        "save",
        T0,
    )
    assert (event["user_id"], event["app_version"], event["app_version_major"]) == ("u-1", "12.0.3", 12)
    assert orjson.loads(event["extra"]) == {"x": 1}
    # The default names mean nothing now; errors name the configured field.
    rejection = rejected(raw_record(), config)
    assert rejection.reason is Reason.MISSING_FIELD
    assert "'id'" in rejection.message
    no_ts = orjson.dumps({"id": "e-9", "device": "d-1", "name": "save", "timestamp": T0})
    assert "'ts'" in rejected(no_ts, config).message


@pytest.mark.parametrize(
    ("kind", "value", "wanted"), [("int", "3", "an int"), ("float", "x", "a float"), ("bool", 1, "a bool")]
)
def test_a_wrong_type_says_what_the_column_takes(kind: str, value: Any, wanted: str) -> None:
    config = Config.from_dict({"columns": {"pages": kind}})
    assert f"field 'pages' must be {wanted}, got " in rejected(raw_record(pages=value), config).message


# -- integers beyond 64 bits ----------------------------------------------------------------------

WIDE = 123456789012345678901234567890


def _with(text: str) -> bytes:
    """A valid record with ``text`` spliced in as raw JSON (orjson cannot write integers this wide)."""
    return raw_record()[:-1] + b"," + text.encode() + b"}"


@pytest.mark.parametrize(
    "text",
    [
        f'"big":{WIDE}',
        f'"big":{-WIDE}',
        f'"big":{2**64}',
        f'"big":{-(2**63) - 1}',
        f'"nested":{{"deep":[1,{{"n":{WIDE}}}]}}',
        f'"os":{WIDE}',  # a string column
        f'"pages":{WIDE}',  # an int column
    ],
)
def test_an_integer_beyond_64_bits_is_malformed_json(text: str) -> None:
    config = Config.from_dict({"columns": {"pages": "int"}})
    rejection = rejected(_with(text), config)
    assert rejection.reason is Reason.MALFORMED_JSON
    assert "beyond 64 bits" in rejection.message


def test_a_timestamp_beyond_64_bits_is_malformed_json() -> None:
    raw = raw_record(timestamp=None)[:-1] + f',"timestamp":{WIDE}}}'.encode()
    assert rejected(raw).reason is Reason.MALFORMED_JSON


def test_what_fits_64_bits_or_only_looks_wide_is_kept() -> None:
    raw = _with(f'"u":{2**64 - 1},"s":{-(2**63)},"f":1e30,"text":"{WIDE}","frac":0.{WIDE}')
    extra = orjson.loads(valid(raw)["extra"])
    assert (extra["u"], extra["s"], extra["f"], extra["text"]) == (2**64 - 1, -(2**63), 1e30, str(WIDE))
    # A float column takes a whole number as a float, however wide.
    event = valid(_with(f'"ratio":{WIDE}'), Config.from_dict({"columns": {"ratio": "float"}}))
    assert event["ratio"] == float(WIDE)
