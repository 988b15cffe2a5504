"""The runtime's AWS clients fail fast: against a real HTTP endpoint on 127.0.0.1 that hangs or fails,
a call gives up after the configured timeouts and standard-mode attempts, and its retries are counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sessionflow.config import ConfigError
from sessionflow.runtimes.aws.clients import make_clients
from sessionflow.runtimes.aws.settings import Settings

pytestmark = pytest.mark.aws
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class Endpoint(BaseHTTPRequestHandler):
    """``slow``: answer after this many seconds; else a 500 that botocore must retry."""

    slow = 0.0
    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.slow:
            time.sleep(self.slow)
        body = b'{"__type": "InternalFailure", "message": "try again"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Endpoint]]:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    handler = type("Handler", (Endpoint,), {"slow": 0.0, "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


def test_a_failing_call_is_retried_in_standard_mode_and_counted(endpoint: type[Endpoint]) -> None:
    settings = Settings(endpoint_url=endpoint.url, max_attempts=3)  # type: ignore[attr-defined]
    clients, count = make_clients(settings, ["kinesis"])
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as raised:
        clients["kinesis"].put_records(StreamName="clean", Records=[{"Data": b"x", "PartitionKey": "m"}])
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert endpoint.requests == 3
    assert count.retries == 2


def test_a_hanging_endpoint_is_given_up_on_after_the_read_timeout(endpoint: type[Endpoint]) -> None:
    endpoint.slow = 5.0
    settings = Settings(endpoint_url=endpoint.url, read_timeout_ms=300, max_attempts=2)  # type: ignore[attr-defined]
    clients, _ = make_clients(settings, ["firehose"])
    from botocore.exceptions import ReadTimeoutError

    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        clients["firehose"].put_record_batch(DeliveryStreamName="events", Records=[{"Data": b"{}\n"}])
    elapsed = time.monotonic() - started
    assert endpoint.requests == 2
    assert elapsed < 2 * 0.3 + 2.0, elapsed  # two attempts of 0.3 s and the backoff between: not 5 s, not 60


def test_the_defaults_are_well_under_the_function_timeout() -> None:
    settings = Settings.from_env({})
    function_timeout_ms = 60_000  # serverless.yml: provider.timeout
    worst_call = settings.max_attempts * (settings.connect_timeout_ms + settings.read_timeout_ms)
    assert settings.read_timeout_ms <= function_timeout_ms / 10
    assert worst_call + settings.time_reserve_ms < function_timeout_ms


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSIONFLOW_READ_TIMEOUT", "5"),
        ("SESSIONFLOW_READ_TIMEOUT", "0s"),
        ("SESSIONFLOW_CONNECT_TIMEOUT", "soon"),
        ("SESSIONFLOW_MAX_ATTEMPTS", "0"),
        ("SESSIONFLOW_MAX_ATTEMPTS", "three"),
        ("SESSIONFLOW_TIME_RESERVE", "10"),
    ],
)
def test_a_bad_setting_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SESSIONFLOW_CONNECT_TIMEOUT": "1s",
            "SESSIONFLOW_READ_TIMEOUT": "2500ms",
            "SESSIONFLOW_MAX_ATTEMPTS": "4",
            "SESSIONFLOW_TIME_RESERVE": "15s",
            "POWERTOOLS_SERVICE_NAME": "sessionflow-prod",
        }
    )
    assert (settings.connect_timeout_ms, settings.read_timeout_ms, settings.max_attempts) == (1000, 2500, 4)
    assert settings.time_reserve_ms == 15_000 and settings.service == "sessionflow-prod"
