"""Hypothesis strategies for hostile input: what a real feed sends on a bad day."""

from __future__ import annotations

import time

import orjson
from hypothesis import strategies as st

NOW_MS = int(time.time() * 1000)

# JSON-ish scalars, the nasty ones included: huge integers, NaN and Infinity written as bare words,
# very long strings, NUL and lone surrogate escapes, numbers the parser overflows.
scalar_text = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(orjson.dumps),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0", b"0.0", b"1E2", b"true", b"false", b"null"]),
    # The edges of the integer types: orjson reads up to 2**64 - 1 as an int, past it as a float.
    st.sampled_from([b"18446744073709551615", b"9223372036854775808", b"-9223372036854775809", b"2147483648"]),
    st.text(max_size=40).map(orjson.dumps),
    st.sampled_from([b'"\\u0000"', b'"\\ud800"', b'"\\udc00\\ud800"', b'"a\x00b"', b'"\xff\xfe"', b'"\\x41"']),
    st.integers(min_value=1, max_value=50_000).map(lambda n: b'"' + b"x" * n + b'"'),
)
FIELDS = ("event_id", "machine_id", "event_type", "timestamp", "user_id", "app_version", "os", "document_id")
timestamp_text = st.one_of(
    st.integers(min_value=NOW_MS - 10**10, max_value=NOW_MS).map(lambda n: str(n).encode()),
    st.integers(min_value=(NOW_MS - 10**10) // 1000, max_value=NOW_MS // 1000).map(lambda n: str(n).encode()),
    st.sampled_from([b'"2026-11-01T10:00:00Z"', b'"2026-11-01T10:00:00"', b'"0001-01-01T00:00:00+23:59"', b"1.5e12"]),
    scalar_text,
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def value_text(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return nested(draw(st.integers(1, 1500)))
    if kind == 1:
        items = draw(st.lists(scalar_text, max_size=4))
        return b"[" + b",".join(items) + b"]"
    if kind == 2:
        return b'{"k":' + draw(scalar_text) + b"}"
    return draw(scalar_text)


@st.composite
def record_bytes(draw: st.DrawFn) -> bytes:
    """A JSON object written by hand: duplicate keys, keys of the wrong type, fields of any type."""
    members = []
    for name in FIELDS:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        if name == "timestamp":
            value = draw(timestamp_text)
        elif draw(st.integers(0, 4)) == 0:
            value = draw(value_text())
        else:
            value = orjson.dumps(draw(st.sampled_from(["", " ", "e-1", "m-1", "APP_OPEN", "view", "11.2.3", "².1"])))
        members.append(orjson.dumps(name) + b":" + value)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.one_of(st.text(max_size=8).map(orjson.dumps), st.sampled_from([b"1", b"null", b"event_id"])))
        members.append(key + b":" + draw(value_text()))
    members = draw(st.permutations(members))
    body = b"{" + b",".join(members) + b"}"
    # The wrapping a line can carry: a BOM, CRLF, blanks, NUL bytes, a cut, invalid UTF-8.
    if draw(st.booleans()):
        body = b"\xef\xbb\xbf" + body
    if draw(st.booleans()):
        body += b"\r"
    mangle = draw(st.integers(0, 7))
    if mangle == 0:
        body = body[: draw(st.integers(0, len(body)))]
    elif mangle == 1:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b" \t "])) + body[at:]
    return body


any_line = st.one_of(st.binary(max_size=300), record_bytes())
