"""Operator mistakes on the command line: each ends with a clear message and the documented exit code
(2 usage, 3 input, 4 cannot write, 6 quality), never a traceback, and nothing of the user's lost."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessionflow.cli import main
from sessionflow.config import EXAMPLE_CONFIG
from sessionflow.synthetic import FeedShape, write_feed
from tests.helpers import group_gone


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of a command, whether argparse or the command itself refuses it."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# -- generate, init ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["generate", "-n", "-5"], 2, "--events/-n: expected 0 or more, got -5"),
        (["generate", "-m", "0"], 2, "--machines/-m: expected 1 or more, got 0"),
        (["generate", "-n", "ten"], 2, "expected a whole number, got 'ten'"),
        (["generate", "--late-rate", "2"], 2, "--late-rate: expected a rate between 0 and 1"),
        (["run", "x", "--out", "y", "--max-reject-rate", "2"], 2, "expected a rate between 0 and 1"),
        (["run", "x", "--out", "y", "--max-reject-rate", "abc"], 2, "or a percentage such as 5%, got 'abc'"),
        (["demo", "--machines", "0"], 2, "expected 1 or more"),
        (["run", "x", "--out", "y", "--warn-reject-rate", "150%"], 2, "expected a rate between 0 and 1"),
        (["run", "x", "--out", "y", "--warn-late-rate", "-0.1"], 2, "expected a rate between 0 and 1"),
    ],
)
def test_bad_numbers_are_usage_errors(
    argv: list[str], code: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, err = refused(argv, capsys)
    assert got == code
    assert says in err
    assert "invalid" not in err  # not argparse's "invalid _rate value"


def test_rates_take_a_share_or_a_percentage(tmp_path: Path) -> None:
    feed = tmp_path / "late.jsonl"
    assert main(["generate", "-n", "2000", "-m", "10", "--late-rate", "5%", "-o", str(feed)]) == 0
    same = tmp_path / "late-again.jsonl"
    assert main(["generate", "-n", "2000", "-m", "10", "--late-rate", "0.05", "-o", str(same)]) == 0
    assert feed.read_bytes() == same.read_bytes()


def test_generate_into_a_missing_folder_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "missing" / "dir" / "x.jsonl"
    code, err = refused(["generate", "-n", "10", "-o", str(target)], capsys)
    assert code == 4
    assert f"{target}: cannot write" in err
    assert not (tmp_path / "missing").exists()


def test_init_into_a_missing_folder_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "newdir" / "x.toml"
    code, err = refused(["init", str(target)], capsys)
    assert code == 4
    assert "newdir" in err and "create it first" in err
    assert not target.parent.exists()


def test_init_force_on_a_folder_exits_2_and_keeps_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    code, err = refused(["init", "--force", str(folder)], capsys)
    assert code == 2
    assert "is a folder" in err and str(folder / "sessionflow.toml") in err
    assert sorted(p.name for p in folder.iterdir()) == ["mine.txt"]


def test_generate_options_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for option, words in (("--events N", "records"), ("--machines M", "machines"), ("--seed S", "seed")):
        (line,) = [line for line in out.splitlines() if line.strip().startswith(option)]
        assert words in line, line


# -- aws-local -----------------------------------------------------------------------------------


def test_aws_local_help_is_plain_text_and_lists_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["aws-local", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out
    assert "`raw`" not in out
    assert "sessionflow aws-local sweep" in out
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    (listed,) = [line for line in readme.splitlines() if line.startswith("sessionflow aws-local ")]
    assert "|sweep|" in listed


def test_aws_local_without_the_aws_extra_exits_2_with_the_install_command(tmp_path: Path) -> None:
    """As if boto3 and moto were not installed: a None in sys.modules makes their import fail."""
    script = (
        "import sys\n"
        "sys.modules['boto3'] = sys.modules['botocore'] = sys.modules['moto'] = None\n"
        "from sessionflow.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for argv in (["aws-local", "flush", "--endpoint", "http://127.0.0.1:9"], ["aws-local", "up"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *argv],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "pip install 'sessionflow[" in done.stderr
        assert "bug" not in done.stderr


# -- demo ----------------------------------------------------------------------------------------


def test_demo_keeps_the_users_files_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "sessionflow.toml").write_text("# my own config\n")
    (folder / "events.jsonl.gz").write_bytes(b"my own feed")
    code, err = refused(["demo", "--dir", str(folder), "--events", "300", "--machines", "5"], capsys)
    assert code == 2
    assert "sessionflow.toml, events.jsonl.gz" in err and "--force" in err
    assert (folder / "sessionflow.toml").read_text() == "# my own config\n"
    assert (folder / "events.jsonl.gz").read_bytes() == b"my own feed"
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl.gz", "sessionflow.toml"]

    assert main(["demo", "--dir", str(folder), "--events", "300", "--machines", "5", "--force"]) == 0
    assert (folder / "sessionflow.toml").read_text() != "# my own config\n"
    assert main(["verify", str(folder / "lake")]) == 0


# -- run: inputs that name nothing ---------------------------------------------------------------


def empty_inputs(root: Path) -> dict[str, Path]:
    (root / "empty").mkdir()
    (root / "hidden" / "_temporary").mkdir(parents=True)
    (root / "hidden" / "_SUCCESS").write_text("")
    (root / "hidden" / ".events.jsonl").write_text('{"event_id": "e"}\n')
    (root / "hidden" / "_temporary" / "x.jsonl").write_text("")
    (root / "links").mkdir()
    (root / "links" / "events.jsonl").symlink_to(root / "gone.jsonl")
    (root / "broken.jsonl").symlink_to(root / "gone.jsonl")
    return {
        "empty": root / "empty",
        "hidden": root / "hidden",
        "links": root / "links",
        "broken": root / "broken.jsonl",
    }


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("empty", "is an empty folder"),
        ("hidden", "3 skipped for a name starting with . or _"),
        ("links", "1 broken link(s)"),
        ("broken", "a broken link"),
    ],
)
def test_inputs_naming_no_file_exit_3_unless_allowed(
    tmp_path: Path, kind: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = empty_inputs(tmp_path)[kind]
    lake = tmp_path / "lake"
    code, err = refused(["run", str(given), "--out", str(lake), "-q"], capsys)
    assert code == 3
    assert says in err
    assert not lake.exists()
    if kind != "broken":  # a broken link given by name is a missing input, allowed or not
        assert "--allow-empty" in err
        code, err = refused(["run", str(given), "--out", str(lake), "-q", "--allow-empty"], capsys)
        assert code == 0
        assert "running on nothing" in err
        assert main(["verify", str(lake)]) == 0


# -- run: results that are probably wrong ---------------------------------------------------------


def run_json_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    capsys.readouterr()
    code = main([*argv, "--json", "-q", "--workers", "0"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out), err


@pytest.fixture(scope="module")
def seconds_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated feed; its 11.2.* builds send seconds, which only the example's cleaning rule fixes."""
    path = tmp_path_factory.mktemp("quality") / "events.jsonl"
    write_feed(FeedShape(events=2_000, machines=20, seed=3), str(path))
    return path


def seconds_share(feed: Path) -> float:
    """Independently of the core: the share of records whose integer timestamp is in seconds."""
    records = []
    for line in feed.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the feed's garbage
            continue
    records = [record for record in records if isinstance(record, dict)]
    seconds = [r for r in records if isinstance(r.get("timestamp"), int) and r["timestamp"] < 10**11]
    return len(seconds) / len(records)


def test_timestamps_in_seconds_warn_with_the_scale_hint(
    tmp_path: Path, seconds_feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert seconds_share(seconds_feed) > 0.05  # the case the warning is for
    empty_config = tmp_path / "defaults.toml"
    empty_config.write_text("")
    argv = ["run", str(seconds_feed), "--out", str(tmp_path / "lake"), "--config", str(empty_config)]
    code, summary, err = run_json_code(argv, capsys)
    assert code == 0  # a warning, not a failure
    (warning,) = summary["warnings"]
    assert "most are timestamp_out_of_range" in warning
    assert "these look like seconds: see `scale`" in warning
    assert "--max-reject-rate" in warning
    assert warning in " ".join(err.split())
    # --max-reject-rate turns it into a failure; a higher warning rate silences it.
    code, _, _ = run_json_code([*argv, "--overwrite", "--max-reject-rate", "5%"], capsys)
    assert code == 6
    code, summary, err = run_json_code([*argv, "--overwrite", "--warn-reject-rate", "0.9"], capsys)
    assert (code, summary["warnings"], err) == (0, [], "")


def test_the_example_config_on_the_same_feed_gives_no_warning(
    tmp_path: Path, seconds_feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sessionflow.toml"
    config.write_text(EXAMPLE_CONFIG)
    code, summary, err = run_json_code(
        ["run", str(seconds_feed), "--out", str(tmp_path / "lake"), "--config", str(config)], capsys
    )
    assert (code, summary["warnings"], err) == (0, [], "")


def test_a_binary_input_rejected_whole_exits_6_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "program"
    binary.write_bytes(random.Random(4).randbytes(50_000))
    lake = tmp_path / "lake"
    code, summary, err = run_json_code(["run", str(binary), "--out", str(lake)], capsys)
    assert code == 6
    assert summary["tally"]["records"] > 0 and summary["tally"]["events"] == 0
    (warning,) = summary["warnings"]
    assert f"every one of the {summary['tally']['records']:,} records was rejected" in warning
    assert "exits 6" in " ".join(err.split())
    assert main(["verify", str(lake)]) == 0  # published, and a sound lake


def test_late_events_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An event older than the stream clock less restate_horizon is written late: the run says so."""
    day = 1_791_158_400_000
    config = tmp_path / "sessionflow.toml"
    config.write_text('[session]\nrestate_horizon = "1h"\n')
    state, lake = tmp_path / "state.json", tmp_path / "lake"

    def line(machine: str, event: str, ts: int) -> bytes:
        record = {"event_id": event, "machine_id": machine, "event_type": "view", "timestamp": ts}
        return json.dumps(record).encode() + b"\n"

    newer, older = tmp_path / "newer.jsonl", tmp_path / "older.jsonl"
    newer.write_bytes(b"".join(line(f"m-{i}", f"n-{i}", day + 3 * 3_600_000) for i in range(3)))
    older.write_bytes(line("m-0", "o-1", day) + line("m-0", "o-2", day + 2 * 3_600_000 + 1))
    argv = ["run", "--out", str(lake), "--config", str(config), "--state", str(state)]
    assert run_json_code([*argv, str(newer)], capsys)[0] == 0
    code, summary, _ = run_json_code([*argv, str(older)], capsys)
    assert code == 0
    assert (summary["tally"]["late"], summary["tally"]["events"]) == (1, 2)
    (warning,) = summary["warnings"]
    assert "1 of 2 valid events" in warning and "restate_horizon" in warning
    older.write_bytes(line("m-0", "o-3", day) + line("m-1", "o-4", day + 3 * 3_600_000))
    code, summary, _ = run_json_code([*argv, "--warn-late-rate", "0.5", str(older)], capsys)
    assert (code, summary["tally"]["late"], summary["tally"]["events"]) == (0, 1, 2)
    assert summary["warnings"] == []  # 50% is not above 0.5


# -- run: a named pipe ---------------------------------------------------------------------------


def through_a_pipe(tmp_path: Path, data: bytes, name: str) -> Path:
    """A named pipe, fed by a thread, as the shell makes for ``<(zcat x.gz)``."""
    import threading

    pipe = tmp_path / name
    os.mkfifo(pipe)

    def feed() -> None:
        with pipe.open("wb") as writer:
            writer.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return pipe


def test_a_named_pipe_is_read_like_standard_input(
    tmp_path: Path, seconds_feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    config = tmp_path / "sessionflow.toml"
    config.write_text(EXAMPLE_CONFIG)
    plain = ["run", str(seconds_feed), "--out", str(tmp_path / "plain"), "--config", str(config)]
    _, expected, _ = run_json_code(plain, capsys)
    state = tmp_path / "state"
    for attempt in range(2):  # with --state, a pipe is read whole each time, never "nothing new"
        pipe = through_a_pipe(tmp_path, gzip.compress(seconds_feed.read_bytes()), f"pipe-{attempt}")
        argv = ["run", str(pipe), "--out", str(tmp_path / "piped"), "--config", str(config)]
        code, summary, err = run_json_code([*argv, "--state", str(state), "--flush"], capsys)
        assert code == 0, err
        assert summary["tally"]["records"] == expected["tally"]["records"]
        assert summary["inputs"] == [{"source": str(pipe), "lines": expected["inputs"][0]["lines"]}]
    assert state.exists()
    assert str(pipe) not in state.read_text(errors="replace")  # a pipe is never remembered as an input


def test_a_truncated_gzip_names_its_last_whole_line_and_publishes_nothing(
    tmp_path: Path, seconds_feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip
    import zlib

    whole = gzip.compress(seconds_feed.read_bytes())
    cut = whole[: len(whole) * 2 // 3]
    truncated = tmp_path / "events.jsonl.gz"
    truncated.write_bytes(cut)
    # Independently of the reader: the whole lines zlib recovers before the cut.
    good_lines = zlib.decompressobj(31).decompress(cut).count(b"\n")
    assert good_lines > 100
    lake = tmp_path / "lake"
    for workers in ("0", "2"):
        code, err = refused(["run", str(truncated), "--out", str(lake), "-q", "--workers", workers], capsys)
        assert code == 3
        assert f"{truncated}: read failed after line {good_lines}: " in err
        assert not lake.exists()  # all or nothing


# -- run: killed outright ------------------------------------------------------------------------


def test_workers_of_a_killed_run_go_quietly(tmp_path: Path) -> None:
    """SIGKILL of the run while its workers refine: they must not print BrokenPipe tracebacks."""
    import signal
    import time

    feed = tmp_path / "events.jsonl"
    write_feed(FeedShape(events=60_000, machines=200, seed=1), str(feed))  # several blocks per worker
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt, delay in enumerate((0.3,)):
        lake, errors = tmp_path / f"lake-{attempt}", tmp_path / f"stderr-{attempt}"
        with errors.open("wb") as stderr:
            run = subprocess.Popen(
                [sys.executable, "-m", "sessionflow", "run", str(feed), "--out", str(lake), "-q", "--workers", "2"],
                stderr=stderr,
                env=env,
                start_new_session=True,
            )
            deadline = time.monotonic() + 30
            while not (lake / "_sessionflow" / "lock").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)  # the workers are busy with blocks
            os.kill(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
            assert group_gone(run.pid, 10), "worker processes outlived the killed run"
        assert "Traceback" not in errors.read_text(), errors.read_text()
