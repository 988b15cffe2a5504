"""The README's worked example and config, checked so the README cannot drift from the code."""

from __future__ import annotations

import re
import tomllib
from datetime import datetime
from pathlib import Path

from sessionflow.config import EXAMPLE_CONFIG, Config
from sessionflow.core import Outputs, Sessionizer

README = Path(__file__).parent.parent / "README.md"


def at(clock: str) -> int:
    moment = datetime.fromisoformat(f"2026-11-02T{clock}+00:00")
    return int(moment.timestamp() * 1000)


def test_worked_example() -> None:
    rows = [
        ("e1", "09:00:00", "app_open"),
        ("e2", "09:10:00", "doc_open"),
        ("e3", "09:40:00", "view"),
        ("e4", "10:10:00.001", "edit"),
        ("e6", "10:11:00", "view"),  # arrives first, sorts after e5
        ("e5", "10:11:00", "app_open"),
    ]
    events = [{"event_id": i, "machine_id": "m", "event_type": t, "timestamp": at(c)} for i, c, t in rows]
    sessionizer = Sessionizer(Config().session)
    out = Outputs()
    sessionizer.process(events, out)
    sessionizer.flush(out)
    placed = {e["event_id"]: (e["session_id"], e["session_seq"]) for e in out.events}
    s1, s2, s3 = placed["e1"][0], placed["e4"][0], placed["e5"][0]
    assert len({s1, s2, s3}) == 3
    assert placed == {
        "e1": (s1, 1),
        "e2": (s1, 2),
        "e3": (s1, 3),
        "e4": (s2, 1),
        "e5": (s3, 1),
        "e6": (s3, 2),
    }
    first = next(s for s in out.sessions if s["session_id"] == s1)
    assert (first["start_ts"], first["end_ts"], first["event_count"]) == (at("09:00:00"), at("09:40:00"), 3)
    assert (first["first_event_type"], first["last_event_type"]) == ("app_open", "view")


def test_readme_config_is_the_example_and_loads() -> None:
    block = re.search(r"```toml\n(\[session\].*?)```", README.read_text(), re.DOTALL)
    assert block is not None
    assert block.group(1) == EXAMPLE_CONFIG.split("\n", 1)[1]
    config = Config.from_dict(tomllib.loads(block.group(1)))
    assert config.session.timeout_ms == 30 * 60 * 1000
    assert [rule.scale for rule in config.clean] == [(("timestamp", 1000),), ()]


def test_the_start_here_commands_work_as_printed(tmp_path: Path) -> None:
    """The README's first commands, typed as printed (a smaller feed), with only what the local extra
    installs on the PATH: `sessionflow query` is the DuckDB example, no DuckDB command line needed."""
    import os
    import shutil
    import subprocess
    import sys

    block = re.search(r"Then, with `\.venv/bin` on your `PATH`:\n\n```sh\n(.*?)```", README.read_text(), re.DOTALL)
    assert block is not None
    commands = [line.split("   #")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert [command.split()[1] for command in commands] == ["generate", "init", "run", "query", "report"]
    commands[0] = commands[0].replace("--events 1000000 --machines 10000", "--events 3000 --machines 40")
    assert shutil.which("duckdb", path=str(Path(sys.executable).parent)) is None
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    outputs = []
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"
        outputs.append(done.stdout)
    assert "event_type" in outputs[3] and "view" in outputs[3]
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count('<svg class="chart"') >= 6


def test_the_demo_ends_with_its_report_and_prints_commands_whole(tmp_path: Path) -> None:
    import os
    import shlex
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "40", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "sessionflow", "demo", "--dir", "demo", "--events", "3000", "--machines", "30"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1].strip() == str(tmp_path / "demo" / "report.html")
    assert (tmp_path / "demo" / "report.html").is_file()
    # A 40-column terminal wraps nothing the demo prints for the user to type again.
    for name in ("query", "run"):
        (line,) = [line for line in lines if line.startswith(f"  sessionflow {name} ")]
        again = subprocess.run(
            shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert again.returncode == 0, again.stderr


# -- Bring your own feed: every shape's config reads its example lines as the text says ---------------------


def byof_sections() -> dict[str, tuple[str, list[bytes]]]:
    """Each shape of the README's "Bring your own feed": its config and its example lines."""
    text = README.read_text()
    part = text[text.index("## Bring your own feed\n") : text.index("## What is valid\n")]
    sections = {}
    for chunk in part.split("\n### ")[1:]:
        title = chunk.split("\n", 1)[0]
        lines = re.search(r"```json\n(.*?)```", chunk, re.DOTALL)
        config = re.search(r"```toml\n(.*?)```", chunk, re.DOTALL)
        assert lines is not None and config is not None, title
        sections[title] = (config.group(1), [line.encode() for line in lines.group(1).splitlines()])
    return sections


def test_every_shape_of_the_readme_is_read_as_its_text_says() -> None:
    import time

    from sessionflow.core import Refiner
    from tests.local.arrival_feeds import parse_line
    from tests.mapping import shapes

    sections = byof_sections()
    mappings = {
        "Ours: the app's own events": (EXAMPLE_CONFIG.split("\n", 1)[1], parse_line),
        "Segment / RudderStack track calls": (shapes.SEGMENT_CONFIG, shapes.segment_event),
        "A plain web log export": (shapes.WEBLOG_CONFIG, shapes.weblog_event),
        "A clickstream export without event ids": (shapes.FAKER_CONFIG, shapes.faker_event),
    }
    assert sections.keys() == mappings.keys()
    now = int(time.time() * 1000)
    for title, (text, lines) in sections.items():
        config_text, by_hand = mappings[title]
        # The README's config is the one the end-to-end tests run (tests/mapping).
        assert text == config_text, title
        config = Config.from_dict(tomllib.loads(text))
        assert all(rule.function is None for rule in config.clean), title
        refiner = Refiner(config)
        for line in lines:
            event = refiner.refine(line, now)
            want = by_hand(line)
            assert isinstance(event, dict) and want is not None, (title, line, event)
            got = (event["machine_id"], event["event_id"], event["timestamp"], event["event_type"])
            assert got == (want.machine_id, want.event_id, want.timestamp, want.event_type), title
            if title.startswith("Segment"):
                assert {name: event[name] for name in shapes.segment_columns(line)} == shapes.segment_columns(line)


def test_the_readme_examples_say_what_they_give() -> None:
    """The few values the text names, against the lines' own hand mapping."""
    from tests.local.arrival_feeds import parse_line
    from tests.mapping import shapes

    sections = byof_sections()
    ours = parse_line(sections["Ours: the app's own events"][1][1])
    assert ours is not None and (ours.event_type, ours.timestamp) == ("doc_open", 1796203872000)
    web = [shapes.weblog_event(line) for line in sections["A plain web log export"][1]]
    assert [(e.event_type, e.timestamp) for e in web if e] == [
        ("page_view", int(datetime.fromisoformat("2026-12-02T09:30:00+00:00").timestamp() * 1000)),
        ("error", int(datetime.fromisoformat("2026-12-02T09:30:41+00:00").timestamp() * 1000)),
    ]
    clicks = [shapes.faker_event(line) for line in sections["A clickstream export without event ids"][1]]
    assert [e.event_type for e in clicks if e] == ["Search", "AddToCart"]
    assert clicks[1] is not None and clicks[0] is not None and clicks[1].timestamp - clicks[0].timestamp == 12_571
