"""Every misuse of the mapping actions and of dotted paths stops the config with an error naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessionflow.config import Config, ConfigError, EventIdRule, TimeFormat

FAKER_TIME = {"format": "%d/%m/%Y %H:%M:%S.%f", "timezone": "UTC"}


def rule(**actions: Any) -> dict[str, Any]:
    return {"clean": [actions]}


MISUSES: list[tuple[dict[str, Any], str, str]] = [
    # cast
    (rule(cast={"user_id": "str"}), "clean[0].cast.user_id", "must be one of string, int, float, bool"),
    (rule(cast=["user_id"]), "clean[0].cast", "must be a table"),
    (rule(cast={"a..b": "int"}), "clean[0].cast.a..b", "not a field name or a dotted path"),
    (rule(cast={"event_id": "int"}), "clean[0].cast.event_id", "must be a string, not an int"),
    (rule(cast={"timestamp": "bool"}), "clean[0].cast.timestamp", "is not a timestamp"),
    (rule(cast={"user_id": "int"}), "clean[0].cast.user_id", "'user_id' is a string column"),
    # parse_time
    (rule(parse_time={"t": {"timezone": "UTC"}}), "clean[0].parse_time.t.format", "is required"),
    (rule(parse_time={"t": 5}), "clean[0].parse_time.t", "must be a format"),
    (rule(parse_time={"t": "dd/mm/yyyy"}), "clean[0].parse_time.t.format", "a strftime format"),
    (rule(parse_time={"t": "%d/%m/%Y %Q"}), "clean[0].parse_time.t.format", "reads its own output"),
    (rule(parse_time={"t": {"format": "%H:%M:%S", "timezone": "UTC"}}), "clean[0].parse_time.t.format", "date"),
    (rule(parse_time={"t": {"format": "%m/%Y", "timezone": "UTC"}}), "clean[0].parse_time.t.format", "date"),
    (rule(parse_time={"t": "%d/%m/%Y %H:%M:%S"}), "clean[0].parse_time.t.timezone", "has no %z"),
    (rule(parse_time={"t": {**FAKER_TIME, "timezone": "Mars/Olympus"}}), "clean[0].parse_time.t.timezone", "IANA"),
    (rule(parse_time={"t": {**FAKER_TIME, "timezone": "../etc"}}), "clean[0].parse_time.t.timezone", "IANA"),
    (rule(parse_time={"t": {**FAKER_TIME, "timezone": 1}}), "clean[0].parse_time.t.timezone", "IANA"),
    (rule(parse_time={"t": {"format": "epoch_s", "timezone": "UTC"}}), "clean[0].parse_time.t.timezone", "instants"),
    (rule(parse_time={"t": {**FAKER_TIME, "zone": "UTC"}}), "clean[0].parse_time.t.zone", "unknown key"),
    (rule(parse_time={"t": {**FAKER_TIME, "into": "event_type"}}), "clean[0].parse_time.t.into", "event_type field"),
    (
        {"columns": {"sent": "string"}, **rule(parse_time={"t": {**FAKER_TIME, "into": "sent"}})},
        "clean[0].parse_time.t.into",
        "a string column",
    ),
    (rule(parse_time={"t": {**FAKER_TIME, "into": ".x"}}), "clean[0].parse_time.t.into", "dotted path"),
    # event_id
    (rule(event_id=["ip"]), "clean[0].event_id", "must be a table"),
    (rule(event_id={"fields": ["ip"]}), "clean[0].event_id.fields", "unknown key"),
    (rule(event_id={}), "clean[0].event_id.from", "is required"),
    (rule(event_id={"from": []}), "clean[0].event_id.from", "at least one field"),
    (rule(event_id={"from": ["ip", "ip"]}), "clean[0].event_id.from", "'ip' more than once"),
    (rule(event_id={"from": ["ip", "a..b"]}), "clean[0].event_id.from", "dotted path"),
    (rule(event_id={"from": [5]}), "clean[0].event_id.from", "non-empty string"),
    (
        rule(rename={"ip": "machine_id"}, event_id={"from": ["ip"]}),
        "clean[0].event_id.from",
        "'ip' is renamed to 'machine_id' by the rule's rename, which runs first",
    ),
    (rule(event_id={"from": ["ip"], "into": "machine_id"}), "clean[0].event_id.into", "the machine_id field"),
    ({"columns": {"n": "int"}, **rule(event_id={"from": ["ip"], "into": "n"})}, "clean[0].event_id.into", "int"),
    # dotted paths wherever a field is named
    (rule(when={"context..name": "x"}, drop=["y"]), "clean[0].when.context..name", "dotted path"),
    (rule(rename={"a": "b."}), "clean[0].rename.a", "dotted path"),
    (rule(rename={".a": "b"}), "clean[0].rename..a", "dotted path"),
    (rule(drop=["x."]), "clean[0].drop", "dotted path"),
    (rule(lowercase=["a..b"]), "clean[0].lowercase", "dotted path"),
    (rule(set={"a..b": 1}), "clean[0].set.a..b", "dotted path"),
    (
        {"fields": {"machine_id": "context.device.id"}, **rule(drop=["context.device"])},
        "clean[0].drop",
        "dropping 'context.device' drops 'context.device.id' (the machine_id field)",
    ),
    ({"fields": {"machine_id": "context..id"}}, "fields.machine_id", "dotted path"),
    (
        {"fields": {"machine_id": "context", "event_id": "context.id"}},
        "fields.machine_id",
        "'context' overlaps the field of fields.event_id",
    ),
    ({"columns": {"a..b": "string"}}, "columns.a..b", "dotted path"),
    ({"columns": {"properties.doc_id": "string", "properties_doc_id": "int"}}, "columns.properties_doc_id", "already"),
    ({"columns": {"session.id": "string"}}, "columns.session.id", "writes itself"),
    (
        {"fields": {"machine_id": "context.device.id"}, "columns": {"context.device": "string"}},
        "columns.context.device",
        "overlaps the field 'context.device.id'",
    ),
]


@pytest.mark.parametrize(("data", "key", "words"), MISUSES, ids=[f"{m[1]}-{i}" for i, m in enumerate(MISUSES)])
def test_a_misuse_names_its_key(data: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(data)
    assert caught.value.key == key, str(caught.value)
    assert str(caught.value).startswith(f"{key}: ")
    assert words in str(caught.value)


def test_what_a_rule_may_do() -> None:
    """The uses next to the misuses: none of these is refused."""
    Config.from_dict(
        {
            "fields": {"machine_id": "context.device.id", "timestamp": "meta.ts"},
            "columns": {"properties.pages": "float", "n": "int"},
            "clean": [
                {
                    "cast": {"properties.pages": "int", "timestamp": "int", "user_id": "string", "other": "bool"},
                    "event_id": {"from": "ip"},
                    "parse_time": {"meta.ts": "epoch_s", "sent": {"format": "iso", "into": "n"}},
                },
                {"drop": ["context.device"], "rename": {"x": "y"}},
                {"rename": {"device": "context.device.id"}},
                {"parse_time": {"t": {"format": "%d/%b/%Y:%H:%M:%S %z"}}},
                {"parse_time": {"t": {"format": "%j %Y", "timezone": "Asia/Kolkata"}}},
            ],
        }
    )


def test_values_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^parse_time\.timezone: the format '%d/%m/%Y' has no %z"):
        TimeFormat("%d/%m/%Y")
    with pytest.raises(ConfigError, match=r"^event_id\.from: name at least one field"):
        EventIdRule(())
    assert TimeFormat("epoch_ns").epoch == (1, 1_000_000)


def test_check_config_names_the_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "sessionflow.toml"
    path.write_text('[[clean]]\nparse_time = { t = { format = "%d/%m/%Y %H:%M", timezone = "Europe/Pariss" } }\n')
    done = subprocess.run(
        [sys.executable, "-m", "sessionflow", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert re.search(r"clean\[0\]\.parse_time\.t\.timezone: 'Europe/Pariss' is not an IANA zone name", done.stderr)
