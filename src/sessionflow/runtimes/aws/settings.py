"""Settings from the environment, read when a handler first runs (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sessionflow.config import ENV_CONFIG, Config, ConfigError, parse_duration

DEFAULT_STATE_TTL = "7d"
# Clients that fail fast: a call that hangs is abandoned long before the function's timeout (60 s
# for the stream functions), and retried by botocore's standard mode (3 attempts, with backoff).
DEFAULT_CONNECT_TIMEOUT = "2s"
DEFAULT_READ_TIMEOUT = "5s"
DEFAULT_MAX_ATTEMPTS = 3
# A handler takes no more records once less than this is left of the invocation: what it has taken
# still needs its writes (a few round trips, each bounded by the timeouts above). The records it
# leaves are reported as batch item failures, so Lambda delivers them again.
DEFAULT_TIME_RESERVE = "10s"


@dataclass(frozen=True, slots=True)
class Settings:
    clean_stream: str = "clean"
    rejected_firehose: str = "rejected"
    events_firehose: str = "events"
    sessions_firehose: str = "sessions"
    state_table: str = "sessionflow-state"
    config_path: str | None = None
    state_ttl_ms: int = 7 * 24 * 3600 * 1000
    endpoint_url: str | None = None
    connect_timeout_ms: int = 2_000
    read_timeout_ms: int = 5_000
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    time_reserve_ms: int = 10_000
    # Powertools: the logs' service key and the metrics' service dimension and namespace.
    service: str = "sessionflow-aws"
    metrics_namespace: str = "sessionflow"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            clean_stream=env.get("SESSIONFLOW_CLEAN_STREAM", defaults.clean_stream),
            rejected_firehose=env.get("SESSIONFLOW_REJECTED_FIREHOSE", defaults.rejected_firehose),
            events_firehose=env.get("SESSIONFLOW_EVENTS_FIREHOSE", defaults.events_firehose),
            sessions_firehose=env.get("SESSIONFLOW_SESSIONS_FIREHOSE", defaults.sessions_firehose),
            state_table=env.get("SESSIONFLOW_STATE_TABLE", defaults.state_table),
            config_path=env.get(ENV_CONFIG) or None,
            state_ttl_ms=parse_duration(env.get("SESSIONFLOW_STATE_TTL", DEFAULT_STATE_TTL), "SESSIONFLOW_STATE_TTL"),
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            connect_timeout_ms=_positive_duration(env, "SESSIONFLOW_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
            read_timeout_ms=_positive_duration(env, "SESSIONFLOW_READ_TIMEOUT", DEFAULT_READ_TIMEOUT),
            max_attempts=_attempts(env.get("SESSIONFLOW_MAX_ATTEMPTS", str(DEFAULT_MAX_ATTEMPTS))),
            time_reserve_ms=parse_duration(
                env.get("SESSIONFLOW_TIME_RESERVE", DEFAULT_TIME_RESERVE), "SESSIONFLOW_TIME_RESERVE"
            ),
            service=env.get("POWERTOOLS_SERVICE_NAME") or defaults.service,
            metrics_namespace=env.get("POWERTOOLS_METRICS_NAMESPACE") or defaults.metrics_namespace,
        )

    def load_config(self) -> Config:
        return Config.load(self.config_path) if self.config_path else Config()

    @property
    def firehoses(self) -> dict[str, str]:
        """Output table -> delivery stream."""
        return {"events": self.events_firehose, "sessions": self.sessions_firehose, "rejected": self.rejected_firehose}


def _positive_duration(env: Mapping[str, str], name: str, default: str) -> int:
    value = parse_duration(env.get(name, default), name)
    if value <= 0:
        raise ConfigError(name, "must be longer than 0")
    return value


def _attempts(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 10):
        raise ConfigError("SESSIONFLOW_MAX_ATTEMPTS", f"expected a whole number from 1 to 10, got {text!r}")
    return int(text)
