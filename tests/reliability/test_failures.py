"""Clear failures: a missing or unreadable input, a bad config path, a full disk, a locked lake.
Each gives a clear message and its exit code, and leaves no partial lake behind."""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sessionflow.cli import main
from sessionflow.exitcodes import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE, EXIT_VERIFY
from sessionflow.lake import durable
from sessionflow.lake.commit import CRASH_ENV
from sessionflow.lake.lock import LakeLock
from sessionflow.lake.verify import verify_lake
from tests.reliability.lakes import snapshot, write_config, write_feed_parts


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_feed_parts(tmp_path_factory.mktemp("feed"), events=3_000, machines=30, seed=5, parts=2)


def run_args(inputs: list[Path], lake: Path, *extra: str) -> list[str]:
    return ["run", *map(str, inputs), "--out", str(lake), "--quiet", *extra]


def test_a_missing_input_fails_before_the_lake_is_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_args([tmp_path / "nope.jsonl"], tmp_path / "lake")) == EXIT_INPUT
    assert "nope.jsonl: no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


def test_a_bad_config_path_fails_before_the_lake_is_touched(
    feed: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_args(feed, tmp_path / "lake", "--config", str(tmp_path / "missing.toml"))) == EXIT_USAGE
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


def test_a_corrupt_gzip_fails_the_run_and_leaves_no_lake(
    feed: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.jsonl.gz"
    whole = gzip.compress(feed[0].read_bytes())
    broken.write_bytes(whole[: len(whole) // 2])  # cut in the middle: the read fails after many lines
    assert main(run_args([feed[1], broken], tmp_path / "lake")) == EXIT_INPUT
    assert "broken.jsonl.gz: read failed after line" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


def test_an_unreadable_input_fails_with_permission_denied(
    feed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret.jsonl"
    shutil.copy(feed[0], secret)
    secret.chmod(0o000)
    if os.geteuid() == 0:  # root reads anything: let the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: path != secret and real_access(path, mode))
    assert main(run_args([feed[1], secret], tmp_path / "lake")) == EXIT_INPUT
    assert "secret.jsonl: permission denied" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system (tmpfs; needs root), unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (the simulated full-disk tests below run anyway)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_fails_the_run_and_leaves_no_lake(
    feed: list[Path], tiny_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Twice the feed, the second time with other event ids: Parquet of 3,000 events outgrows the disk.
    big = tiny_disk.parent / "big.jsonl"
    data = b"".join(path.read_bytes() for path in feed)
    big.write_bytes(data + data.replace(b'"event_id":"', b'"event_id":"again-'))
    assert main(run_args([big], tiny_disk / "lake", "--config", str(write_config(tiny_disk.parent)))) == EXIT_OUTPUT
    assert "No space left on device" in capsys.readouterr().err
    assert list(tiny_disk.iterdir()) == []
    # And no file of the run is still open: a deleted file held open keeps the disk full.
    assert _open_files_under(tiny_disk) == []


def _open_files_under(folder: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("no /proc/self/fd here")
    targets = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(fd))
    return [target for target in targets if target.startswith(str(folder))]


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_leaves_the_lake_and_state_of_the_runs_before(
    feed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lake, state = tmp_path / "lake", tmp_path / "state.json"
    assert main(run_args([feed[0]], lake, "--state", str(state))) == 0
    before = snapshot(lake, state)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", _enospc)
    assert main(run_args([feed[1]], lake, "--state", str(state))) == EXIT_OUTPUT
    assert "No space left on device" in capsys.readouterr().err
    assert snapshot(lake, state) == before
    assert verify_lake(lake).ok


def test_a_full_disk_after_the_commit_point_is_finished_by_the_next_run(
    feed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = tmp_path / "clean"
    assert main(run_args([feed[0]], clean / "lake", "--state", str(clean / "state.json"))) == 0
    assert main(run_args([feed[1]], clean / "lake", "--state", str(clean / "state.json"))) == 0

    lake, state = tmp_path / "lake", tmp_path / "state.json"
    assert main(run_args([feed[0]], lake, "--state", str(state))) == 0
    real = durable.write_atomically

    def full_for_ledgers(path: Path, payload: bytes) -> None:
        if "ledger" in path.parts:
            _enospc()
        real(path, payload)

    monkeypatch.setattr(durable, "write_atomically", full_for_ledgers)
    assert main(run_args([feed[1]], lake, "--state", str(state))) == EXIT_OUTPUT
    assert "run 2 is committed but could not be put in place" in capsys.readouterr().err
    verdict = verify_lake(lake)
    assert not verdict.ok and "--repair" in verdict.render()
    monkeypatch.setattr(durable, "write_atomically", real)
    # The same command again: it finishes run 2, then finds nothing new to read.
    assert main(run_args([feed[1]], lake, "--state", str(state))) == 0
    assert snapshot(lake, state) == snapshot(clean / "lake", clean / "state.json")
    assert verify_lake(lake).ok


def test_verify_repair_finishes_a_committed_run(feed: list[Path], tmp_path: Path) -> None:
    from tests.reliability.lakes import sessionflow

    lake = tmp_path / "lake"
    env = {**os.environ, CRASH_ENV: "moved:2"}
    assert sessionflow(*run_args(feed, lake), env=env).returncode < 0  # killed while publishing
    assert main(["verify", str(lake)]) == EXIT_VERIFY
    assert main(["verify", str(lake), "--repair"]) == 0


def test_a_second_run_on_a_locked_lake_is_refused(
    feed: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    with LakeLock(lake):
        assert main(run_args([feed[0]], lake)) == EXIT_OUTPUT
    assert "another sessionflow run is writing to this lake" in capsys.readouterr().err
    assert main(run_args([feed[0]], lake)) == 0


def test_a_stateless_run_again_keeps_the_lake_and_says_why(
    feed: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    assert main(run_args(feed, lake)) == 0
    before = snapshot(lake)
    assert main(run_args(feed, lake)) == EXIT_OUTPUT
    assert "already holds a lake; pass --overwrite" in capsys.readouterr().err
    assert snapshot(lake) == before
