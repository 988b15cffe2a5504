"""Coverage-guided fuzzing of the parse, clean and validate path with atheris (libFuzzer).

Not collected by pytest. Run it long, e.g. for ten minutes:

    pip install 'atheris>=2.3'
    python tests/fuzz/atheris_refine.py -max_total_time=600 -rss_limit_mb=4096 -dict=tests/fuzz/json.dict \
        .fuzz-corpus

Each input is cut into lines; the same properties as tests/fuzz/test_fuzz_refine.py must hold.
A crash is written to ./crash-<hash>: replay it with `python tests/fuzz/atheris_refine.py crash-<hash>`.
"""

from __future__ import annotations

import sys
import time

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    import orjson

    from sessionflow.config import Config
    from sessionflow.core import Outputs, Pipeline, Reason
    from sessionflow.lake.writer import _table
    from sessionflow.runtimes.arrow import arrow_schema
    from sessionflow.runtimes.local import engine
    from sessionflow.runtimes.local.feeds import sessionizing
    from sessionflow.schema import SESSION_COLUMNS, event_columns

NOW_MS = int(time.time() * 1000)
REASONS = {reason.value for reason in Reason}
CONFIG = Config.from_dict(
    {
        "columns": {"user_id": "string", "app_version": "string", "os": "int", "document_id": "float", "x": "bool"},
        "clean": [{"when": {"app_version": "11.2.*"}, "scale": {"timestamp": 1000}}, {"lowercase": ["event_type"]}],
        "validation": {"max_record_bytes": 65536},
    }
)
EVENTS = arrow_schema(event_columns(CONFIG))
SESSIONS = arrow_schema(SESSION_COLUMNS)


def one_input(data: bytes) -> None:
    lines = data.split(b"\n")
    pipeline = Pipeline(CONFIG, NOW_MS)
    batch = pipeline.refine([(line, "fuzz", number) for number, line in enumerate(lines, 1)])
    assert batch.records + batch.blank == len(lines)
    assert batch.records == len(batch.events) + len(batch.rejections)
    for row in batch.rejections:
        assert row["reason"] in REASONS, row
        orjson.dumps(row)
    out = Outputs()
    pipeline.sessionize(batch, out)
    pipeline.flush(out)
    if out.events:
        _table(out.events, EVENTS)
    if out.sessions:
        _table(out.sessions, SESSIONS)
    # The runner's own path: a worker refines the block straight into an Arrow record batch.
    block = engine._block(engine.refine_block(data + b"\n", "fuzz", 1), "fuzz", 1)
    assert (block.records, block.batch.num_rows) == (batch.records, len(batch.events))


HEAD = b'"machine_id":"m1","event_type":'
SEEDS = (
    b'{"event_id":"e1",' + HEAD + b'"APP_OPEN","timestamp":%d,"app_version":"11.2.1"}' % (NOW_MS // 1000),
    b'\xef\xbb\xbf{"event_id":"e2",' + HEAD + b'"view","timestamp":"2026-11-01T10:00:00Z","os":3}\r',
    b'{"event_id":"e3",' + HEAD + b'"view","timestamp":%d,"document_id":1.5,"x":true,"y":[[{}]]}' % NOW_MS,
)


def main() -> None:
    if len(sys.argv) > 1 and not sys.argv[-1].startswith("-"):
        corpus = sys.argv[-1]
        from pathlib import Path

        Path(corpus).mkdir(parents=True, exist_ok=True)
        for number, seed in enumerate(SEEDS):
            (Path(corpus) / f"seed-{number}").write_bytes(seed)
    engine._init_worker(CONFIG, NOW_MS, sessionizing())
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
