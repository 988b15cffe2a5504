"""The core, the config and the CLI module import nothing heavy: a Lambda or a small install can use them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pyarrow", "boto3", "botocore", "pyspark", "duckdb", "polars", "rich")


@pytest.mark.parametrize(
    "module",
    [
        "sessionflow.core",
        "sessionflow.config",
        "sessionflow.cli",
        "sessionflow.schema",
        "sessionflow.synthetic",
        "sessionflow.exitcodes",
        "sessionflow.inputs",
        # The lake's protocol: pyarrow and DuckDB only in the writer, and in verify when it checks.
        "sessionflow.lake",
        "sessionflow.lake.layout",
        "sessionflow.lake.ledger",
        "sessionflow.lake.lock",
        "sessionflow.lake.commit",
        "sessionflow.lake.verify",
        # The lake's Glue catalog: the Lambda build generates it with no extra installed.
        "sessionflow.runtimes.aws.catalog",
    ],
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


def test_a_config_without_mapping_actions_loads_neither_them_nor_the_zones() -> None:
    """The example config's refiner runs without the mapping actions' module or the zone database."""
    probe = (
        "import sys, tomllib\n"
        "from sessionflow.config import EXAMPLE_CONFIG, Config\n"
        "from sessionflow.core import LineRefiner\n"
        "LineRefiner(Config.from_dict(tomllib.loads(EXAMPLE_CONFIG)))\n"
        "print(','.join(sorted(m for m in ('sessionflow.core.mapping', 'zoneinfo') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


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


SOURCE = Path(__file__).resolve().parent.parent / "src" / "sessionflow"
# Under runtimes/ but no runtime: the Arrow types every Arrow-based runtime shares.
SHARED_RUNTIME_MODULES = frozenset({"arrow"})


def _imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file of the package ``root``, inside functions too."""
    package = ".".join(path.relative_to(root.parent).parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from sessionflow.runtimes import aws` imports a runtime too.
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def crossing_imports(root: Path = SOURCE) -> list[str]:
    """Imports from a runtime of another runtime or of the CLI, at any level."""
    problems = []
    for path in sorted((root / "runtimes").rglob("*.py")):
        parts = path.relative_to(root / "runtimes").parts
        if len(parts) < 2:
            continue  # runtimes/__init__.py, runtimes/arrow.py: shared, not a runtime
        runtime = parts[0]
        for line, module in _imported_modules(path, root):
            names = module.split(".")
            other = names[2] if names[:2] == ["sessionflow", "runtimes"] and len(names) > 2 else None
            cli = module == "sessionflow.cli" or module.startswith("sessionflow.cli.")
            if cli or (other is not None and other != runtime and other not in SHARED_RUNTIME_MODULES):
                problems.append(f"{path.relative_to(root)}:{line} imports {module}")
    return problems


def test_no_runtime_imports_another_runtime_or_the_cli() -> None:
    assert crossing_imports() == []


def test_the_import_scan_finds_a_crossing_import_inside_a_function(tmp_path: Path) -> None:
    """The scan itself: a copy of the sources with one function-level import of another runtime."""
    import shutil

    copy = tmp_path / "sessionflow"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    target = copy / "runtimes" / "backfill" / "commands.py"
    target.write_text(
        target.read_text(encoding="utf-8")
        + "\n\ndef _late() -> None:\n    from sessionflow.runtimes.local import reader  # noqa\n"
        + "\n\ndef _cli() -> None:\n    from ... import cli  # noqa\n",
        encoding="utf-8",
    )
    found = crossing_imports(copy)
    assert len(found) == 3, found  # the module `sessionflow.runtimes.local`, its `reader`, and `sessionflow.cli`
    assert all(line.startswith("runtimes/backfill/commands.py:") for line in found)
