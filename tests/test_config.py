"""The config: durations, defaults, the example, and an error naming the key for every bad value."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from sessionflow.cli import main
from sessionflow.config import (
    DAY,
    EXAMPLE_CONFIG,
    HOUR,
    MINUTE,
    SECOND,
    Config,
    ConfigError,
    SessionConfig,
    ValidationConfig,
    format_duration,
    parse_duration,
    resolve_config,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("90s", 90 * SECOND),
        ("30m", 30 * MINUTE),
        ("1h30m", HOUR + 30 * MINUTE),
        (" 1h 30m ", HOUR + 30 * MINUTE),
        ("7d", 7 * DAY),
        ("1d2h3m4s5ms", DAY + 2 * HOUR + 3 * MINUTE + 4 * SECOND + 5),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text, "k") == ms
    assert parse_duration(format_duration(ms), "k") == ms


@pytest.mark.parametrize("value", ["30", 30, 1.5, "", "m", "30x", "30m5", "-5m", "1.5h", "thirty", None, True])
def test_bad_durations_name_the_key(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "session.timeout")
    assert caught.value.key == "session.timeout"
    assert str(caught.value).startswith("session.timeout: ")


def test_defaults() -> None:
    config = Config()
    assert config.session.timeout_ms == 30 * MINUTE
    assert config.session.allowed_lateness_ms == 5 * MINUTE
    assert config.session.opening_events == frozenset({"app_open"})
    assert config.session.max_session_duration_ms is None
    assert config.session.dedupe_horizon_ms == HOUR
    assert config.session.clock_quorum == 3
    assert config.validation.max_future_skew_ms == DAY
    assert config.validation.min_timestamp_ms == 946_684_800_000
    assert config.validation.max_record_bytes == 1024 * 1024
    assert dict(config.columns) == {
        "user_id": "string",
        "app_version": "string",
        "os": "string",
        "document_id": "string",
    }
    assert config.clean == ()
    assert Config.from_dict({}) == config


def test_the_example_config_works_as_written(tmp_path: Path) -> None:
    path = tmp_path / "sessionflow.toml"
    assert main(["init", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == EXAMPLE_CONFIG
    config = Config.load(path)
    assert config == Config.from_dict(tomllib.loads(EXAMPLE_CONFIG))
    assert config.session.timeout_ms == 30 * MINUTE
    assert config.session.allowed_lateness_ms == 5 * MINUTE
    assert config.session.opening_events == frozenset({"app_open"})
    assert [(rule.when, rule.scale, rule.lowercase) for rule in config.clean] == [
        ((("app_version", ("11.2.*",)),), (("timestamp", 1000),), ()),
        ((), (), ("event_type",)),
    ]
    # init refuses to overwrite without --force.
    assert main(["init", str(path)]) == 2
    assert main(["init", str(path), "--force"]) == 0


def test_every_key_of_the_reference_table() -> None:
    config = Config.from_dict(
        {
            "session": {
                "timeout": "45m",
                "opening_events": ["app_open", "login"],
                "allowed_lateness": "2m",
                "max_session_duration": "12h",
                "dedupe_horizon": "2h",
                "clock_quorum": 5,
            },
            "validation": {"max_future_skew": "1h", "min_timestamp": "2020-01-01T00:00:00Z", "max_record_bytes": 4096},
            "fields": {"event_id": "id", "timestamp": "ts"},
            "columns": {"pages": "int", "ratio": "float", "dark": "bool", "os": False, "document_id": "int"},
            "output": {"rows_per_file": 10, "compression": "snappy"},
            "clean": [{"name": "seconds", "when": {"v": ["1.*", "2"]}, "scale": {"ts": 1000}}],
        }
    )
    session = config.session
    assert (session.timeout_ms, session.allowed_lateness_ms, session.max_session_duration_ms) == (
        45 * MINUTE,
        2 * MINUTE,
        12 * HOUR,
    )
    assert (session.dedupe_horizon_ms, session.clock_quorum) == (2 * HOUR, 5)
    assert session.opening_events == frozenset({"app_open", "login"})
    assert session.idle_close_ms == 47 * MINUTE
    assert session.retention_ms == 2 * HOUR
    assert config.validation.min_timestamp_ms == 1_577_836_800_000
    assert (config.validation.max_future_skew_ms, config.validation.max_record_bytes) == (HOUR, 4096)
    assert (config.fields.event_id, config.fields.timestamp, config.fields.machine_id) == ("id", "ts", "machine_id")
    assert config.columns == (
        ("user_id", "string"),
        ("app_version", "string"),
        ("document_id", "int"),
        ("pages", "int"),
        ("ratio", "float"),
        ("dark", "bool"),
    )
    assert (config.output.rows_per_file, config.output.compression) == (10, "snappy")
    assert config.clean[0].name == "seconds"
    assert config.clean[0].when == (("v", ("1.*", "2")),)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sesion": {}}, "sesion"),
        ({"session": {"timout": "5m"}}, "session.timout"),
        ({"session": {"timeout": "thirty"}}, "session.timeout"),
        ({"session": {"timeout": "0s"}}, "session.timeout"),
        ({"session": {"allowed_lateness": 300}}, "session.allowed_lateness"),
        ({"session": {"max_session_duration": "0m"}}, "session.max_session_duration"),
        ({"session": {"allowed_lateness": "2h"}}, "session.dedupe_horizon"),
        ({"session": {"clock_quorum": 0}}, "session.clock_quorum"),
        ({"session": {"clock_quorum": "3"}}, "session.clock_quorum"),
        ({"session": {"clock_quorum": True}}, "session.clock_quorum"),
        ({"session": {"opening_events": "app_open"}}, "session.opening_events"),
        ({"session": {"opening_events": [""]}}, "session.opening_events"),
        ({"session": []}, "session"),
        ({"validation": {"max_record_bytes": 0}}, "validation.max_record_bytes"),
        ({"validation": {"max_record_bytes": "1MB"}}, "validation.max_record_bytes"),
        ({"validation": {"min_timestamp": "2000-01-01T00:00:00"}}, "validation.min_timestamp"),
        ({"validation": {"min_timestamp": "the year 2000"}}, "validation.min_timestamp"),
        ({"validation": {"min_timestamp": 946684800000}}, "validation.min_timestamp"),
        ({"validation": {"max_future_skew": "1 day"}}, "validation.max_future_skew"),
        ({"validation": {"max_skew": "1d"}}, "validation.max_skew"),
        ({"fields": {"event_id": ""}}, "fields.event_id"),
        ({"fields": {"session": "s"}}, "fields.session"),
        ({"fields": {"machine_id": "event_id"}}, "fields.machine_id"),
        ({"fields": {"event_id": "id", "timestamp": "id"}}, "fields.timestamp"),
        ({"fields": {"event_id": "user_id"}}, "fields.user_id"),
        ({"columns": {"pages": "integer"}}, "columns.pages"),
        ({"columns": {"session_id": "string"}}, "columns.session_id"),
        ({"columns": {"event_id": "string"}}, "columns.event_id"),
        ({"columns": {"extra": "string"}}, "columns.extra"),
        ({"columns": {"pages": False}}, "columns.pages"),
        ({"columns": {"": "int"}}, "columns."),
        ({"columns": {"os": True}}, "columns.os"),
        ({"columns": {"os": "none"}}, "columns.os"),
        ({"columns": ["os"]}, "columns"),
        ({"output": {"rows_per_file": 0}}, "output.rows_per_file"),
        ({"output": {"compression": "lz4"}}, "output.compression"),
        ({"output": {"format": "csv"}}, "output.format"),
        ({"clean": {"lowercase": ["event_type"]}}, "clean"),
        ({"clean": [{"when": {"app_version": "11.*"}}]}, "clean[0]"),
        ({"clean": [{"lowercase": ["a"]}, {"scael": {"timestamp": 1000}}]}, "clean[1].scael"),
        ({"clean": [{"scale": {"timestamp": 0}}]}, "clean[0].scale.timestamp"),
        ({"clean": [{"scale": {"timestamp": True}}]}, "clean[0].scale.timestamp"),
        ({"clean": [{"scale": {"timestamp": "1000"}}]}, "clean[0].scale.timestamp"),
        ({"clean": [{"scale": ["timestamp"]}]}, "clean[0].scale"),
        ({"clean": [{"divide": {"timestamp": 0}}]}, "clean[0].divide.timestamp"),
        ({"clean": [{"divide": {"timestamp": -1000}}]}, "clean[0].divide.timestamp"),
        ({"clean": [{"divide": {"timestamp": 0.001}}]}, "clean[0].divide.timestamp"),
        ({"clean": [{"divide": {"timestamp": True}}]}, "clean[0].divide.timestamp"),
        ({"clean": [{"map": {"event_type": "app_open"}}]}, "clean[0].map.event_type"),
        ({"clean": [{"rename": {"a": ""}}]}, "clean[0].rename.a"),
        ({"clean": [{"lowercase": [1]}]}, "clean[0].lowercase"),
        ({"clean": [{"when": {"v": [""]}, "drop": ["x"]}]}, "clean[0].when.v"),
        ({"clean": [{"when": {"app_version": "11.[2"}, "drop": ["x"]}]}, "clean[0].when.app_version"),
        ({"clean": [{"when": {"v": ["1", "[!"]}, "drop": ["x"]}]}, "clean[0].when.v"),
        ({"clean": [{"set": {"event_id": 5}}]}, "clean[0].set.event_id"),
        ({"clean": [{"set": {"event_type": " "}}]}, "clean[0].set.event_type"),
        ({"clean": [{"set": {"timestamp": "noon"}}]}, "clean[0].set.timestamp"),
        ({"clean": [{"set": {"timestamp": True}}]}, "clean[0].set.timestamp"),
        ({"columns": {"pages": "int"}, "clean": [{"set": {"pages": "many"}}]}, "clean[0].set.pages"),
        ({"clean": [{"set": {"os": 3}}]}, "clean[0].set.os"),
        ({"clean": [{"lowercase": "a"}, {"drop": ["timestamp"]}]}, "clean[1].drop"),
        ({"fields": {"timestamp": "ts"}, "clean": [{"drop": ["ts"]}]}, "clean[0].drop"),
        ({"clean": [{"function": "nocolon"}]}, "clean[0].function"),
        ({"clean": [{"function": "no_such_module_here:fix"}]}, "clean[0].function"),
        ({"clean": [{"function": "sessionflow.config:no_such_function"}]}, "clean[0].function"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(data)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Config.load(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text('[session\ntimeout = "30m"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        Config.load(broken)
    assert caught.value.key == str(broken)


def test_config_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SESSIONFLOW_CONFIG", raising=False)
    assert resolve_config(None) == Config()  # nothing anywhere: defaults
    Path("sessionflow.toml").write_text('[session]\ntimeout = "10m"\n', encoding="utf-8")
    assert resolve_config(None).session.timeout_ms == 10 * MINUTE  # ./sessionflow.toml
    env_file = tmp_path / "env.toml"
    env_file.write_text('[session]\ntimeout = "20m"\n', encoding="utf-8")
    monkeypatch.setenv("SESSIONFLOW_CONFIG", str(env_file))
    assert resolve_config(None).session.timeout_ms == 20 * MINUTE  # the environment wins over ./
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('[session]\ntimeout = "40m"\n', encoding="utf-8")
    assert resolve_config(str(explicit)).session.timeout_ms == 40 * MINUTE  # --config wins over all


HUGE = "99999999999999999999d"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"session": {"timeout": HUGE}}, "session.timeout"),
        ({"session": {"allowed_lateness": HUGE, "dedupe_horizon": HUGE}}, "session.allowed_lateness"),
        ({"session": {"max_session_duration": HUGE}}, "session.max_session_duration"),
        ({"session": {"dedupe_horizon": HUGE}}, "session.dedupe_horizon"),
        ({"validation": {"max_future_skew": HUGE}}, "validation.max_future_skew"),
        ({"validation": {"max_future_skew": "36501d"}}, "validation.max_future_skew"),
        ({"session": {"clock_quorum": 10**20}}, "session.clock_quorum"),
        ({"validation": {"max_record_bytes": 10**20}}, "validation.max_record_bytes"),
        ({"output": {"rows_per_file": 10**20}}, "output.rows_per_file"),
    ],
)
def test_every_duration_and_count_is_bounded(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(data)
    assert caught.value.key == key
    assert "between" in str(caught.value) or "at most 100 years (36500d)" in str(caught.value)


def test_a_config_built_in_code_is_bounded_too() -> None:
    with pytest.raises(ConfigError, match=r"^session\.max_session_duration: must be at most 100 years"):
        SessionConfig(max_session_duration_ms=36501 * DAY)
    with pytest.raises(ConfigError, match=r"^validation\.max_future_skew: must be at most 100 years"):
        ValidationConfig(max_future_skew_ms=36501 * DAY)


def test_the_longest_duration_is_accepted() -> None:
    config = Config.from_dict({"session": {"timeout": "36500d"}, "validation": {"max_future_skew": "36500d"}})
    assert config.session.timeout_ms == 36500 * DAY


def test_a_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[session]\nopening_events = ["ouvert\u00e9"]\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 35 is 0xe9\)") as caught:
        Config.load(latin1)
    assert caught.value.key == str(latin1)


def test_a_bom_at_the_start_of_the_config_is_accepted(tmp_path: Path) -> None:
    with_bom = tmp_path / "bom.toml"
    with_bom.write_bytes(b'\xef\xbb\xbf[session]\ntimeout = "10m"\n')
    assert Config.load(with_bom).session.timeout_ms == 10 * MINUTE


def test_declared_columns_add_to_the_defaults() -> None:
    defaults = Config().columns
    assert Config.from_dict({"columns": {"page_count": "int"}}).columns == (*defaults, ("page_count", "int"))
    # false removes a default column; retyping one keeps its place.
    assert Config.from_dict({"columns": {"os": False, "user_id": "int"}}).columns == (
        ("user_id", "int"),
        ("app_version", "string"),
        ("document_id", "string"),
    )
    assert Config.from_dict({"columns": {}}).columns == defaults


def test_rules_that_reject_every_record_name_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"^clean\[0\]\.set\.event_id: 5 is not a non-empty string, so rule 'ids'"):
        Config.from_dict({"clean": [{"name": "ids", "set": {"event_id": 5}}]})
    with pytest.raises(ConfigError, match=r"^clean\[0\]\.drop: dropping 'timestamp' \(the timestamp field\)"):
        Config.from_dict({"clean": [{"drop": ["timestamp"]}]})
    with pytest.raises(ConfigError, match=r"is not an int, the type of that column"):
        Config.from_dict({"columns": {"pages": "int"}, "clean": [{"set": {"pages": 2**63}}]})
    # What a required field or a column takes is fine, and so is a field that is not required here.
    Config.from_dict(
        {
            "fields": {"timestamp": "ts"},
            "columns": {"pages": "int", "ratio": "float"},
            "clean": [
                {"set": {"event_id": "x", "timestamp": 1, "ts": "2026-10-05T00:00:00Z", "pages": 3, "ratio": 1}},
                {"drop": ["timestamp"]},
            ],
        }
    )


@pytest.mark.parametrize("pattern", ["11.[23]*", "[[]beta]", "[!]]x", "[]]", "a]b", "*"])
def test_when_takes_every_complete_glob(pattern: str) -> None:
    rule = Config.from_dict({"clean": [{"when": {"v": pattern}, "drop": ["x"]}]}).clean[0]
    assert rule.when == (("v", (pattern,)),)
