"""Settings from the environment, read when a handler first runs (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sessionflow.config import ENV_CONFIG, Config, parse_duration

DEFAULT_STATE_TTL = "7d"


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
        )

    def load_config(self) -> Config:
        return Config.load(self.config_path) if self.config_path else Config()

    @property
    def firehoses(self) -> dict[str, str]:
        """Output table -> delivery stream."""
        return {"events": self.events_firehose, "sessions": self.sessions_firehose, "rejected": self.rejected_firehose}
