"""The core, the config and the CLI module import nothing heavy: a Lambda or a small install can use them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pyarrow", "boto3", "botocore", "pyspark", "duckdb", "polars", "rich")


@pytest.mark.parametrize(
    "module",
    ["sessionflow.core", "sessionflow.config", "sessionflow.cli", "sessionflow.schema", "sessionflow.synthetic"],
)
def test_module_imports_nothing_heavy(module: str) -> None:
    probe = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(','.join(sorted(name for name in {HEAVY!r} if name in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} imported {done.stdout.strip()}"


def test_building_the_cli_parser_imports_nothing_heavy() -> None:
    # Every subcommand registered, as `sessionflow --help` does, and still nothing heavy.
    probe = (
        "import sys\n"
        "from sessionflow.cli import build_parser\n"
        "build_parser()\n"
        f"print(','.join(sorted(name for name in {HEAVY!r} if name in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["--version"]])
def test_help_works(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sessionflow", *args], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "sessionflow" in done.stdout


def test_the_installed_script_works() -> None:
    script = Path(sys.executable).parent / "sessionflow"
    if not script.exists():
        pytest.skip("no console script next to this interpreter (not an installed environment)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: sessionflow" in done.stdout


def test_help_lists_the_commands_and_exit_codes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sessionflow", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    for word in ("run", "generate", "demo", "init", "check-config", "exit codes", "SESSIONFLOW_CONFIG"):
        assert word in done.stdout
