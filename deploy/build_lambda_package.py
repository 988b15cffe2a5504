"""Build the Lambda deployment artifact: sessionflow's source + its runtime dependencies as a zip.

The dependencies come from PyPI as binary wheels for the Lambda platform (manylinux, CPython of the
Lambda runtime), so the build needs no Docker and works on any OS that has pip:

    python deploy/build_lambda_package.py                  # -> build/lambda/sessionflow-lambda.zip
    python deploy/build_lambda_package.py --arch arm64     # for `architecture: arm64` functions

The zip is reproducible: entries are sorted and carry a fixed timestamp and mode, so the same
sources and pins give the same bytes (and the same CodeSha256, so no needless Lambda update).
serverless.yml points `package.artifact` at the zip. Beside it the build writes `catalog.json`: the
Glue tables and Athena views of the lake, generated from the same config and sessionflow.schema
(`sessionflow.runtimes.aws.catalog`); serverless.yml reads their columns from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "lambda" / "sessionflow-lambda.zip"
DEFAULT_REQUIREMENTS = ROOT / "deploy" / "lambda-requirements.txt"
DEFAULT_CONFIG = ROOT / "deploy" / "sessionflow.toml"
SOURCE_PACKAGE = ROOT / "src" / "sessionflow"
CONFIG_NAME_IN_ZIP = "sessionflow.toml"  # -> /var/task/sessionflow.toml, see serverless.yml
CATALOG_NAME = "catalog.json"  # beside the zip; serverless.yml: ${file(...catalog.json):...}

PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
# Provided by the Lambda Python runtime (the SDK and what it needs); a transitive dependency must
# not drag a second copy in, to shadow the runtime's.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "python_dateutil", "six")
FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold: reproducible builds


def install_dependencies(target: Path, requirements: Path, python_version: str, arch: str) -> None:
    """pip-install binary wheels for the Lambda platform into ``target`` (never builds from source)."""
    command = [
        sys.executable, "-m", "pip", "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",  # .pyc made by this interpreter would be ignored by the runtime's
        "--only-binary=:all:",
        "--platform", PLATFORMS[arch],
        "--implementation", "cp",
        "--python-version", python_version,
        "--target", str(target),
        "--requirement", str(requirements),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def copy_source(target: Path) -> None:
    shutil.copytree(
        SOURCE_PACKAGE,
        target / "sessionflow",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.c", "*.pyx", "*.pxd"),
    )


def check_config(config: Path) -> None:
    """Fail the build, not the first invocation, on a config the pipeline would reject."""
    sys.path.insert(0, str(ROOT / "src"))
    from sessionflow.config import Config

    Config.load(config)


def write_catalog(config: Path, out: Path) -> Path:
    """The lake's Glue tables for this config (its declared columns, its validation range), as JSON."""
    sys.path.insert(0, str(ROOT / "src"))
    from sessionflow.config import Config
    from sessionflow.runtimes.aws.catalog import catalog_document

    document = catalog_document(Config.load(config))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return out


def prune(target: Path) -> None:
    """Drop what the runtime provides or never runs: console scripts, caches, tests of the deps."""
    shutil.rmtree(target / "bin", ignore_errors=True)
    for path in sorted(target.iterdir()):
        name = path.name.split("-")[0].removesuffix(".py").lower()
        if name in RUNTIME_PROVIDED:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)


def write_zip(source: Path, out: Path) -> None:
    files = sorted(
        (path for path in source.rglob("*") if path.is_file()), key=lambda p: p.relative_to(source).as_posix()
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=FIXED_DATE)
            info.external_attr = 0o100644 << 16  # regular file, world-readable: Lambda runs as another user
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    partial.replace(out)


def build(out: Path, requirements: Path, config: Path, python_version: str, arch: str) -> Path:
    check_config(config)
    with tempfile.TemporaryDirectory(prefix="sessionflow-lambda-") as tmp:
        staging = Path(tmp)
        install_dependencies(staging, requirements, python_version, arch)
        prune(staging)
        copy_source(staging)
        shutil.copyfile(config, staging / CONFIG_NAME_IN_ZIP)
        write_zip(staging, out)
    write_catalog(config, out.with_name(CATALOG_NAME))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="zip to write (default: %(default)s)")
    parser.add_argument("--requirements", type=Path, default=DEFAULT_REQUIREMENTS)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="sessionflow.toml to ship")
    parser.add_argument("--python-version", default="3.12", help="the Lambda runtime's (default: %(default)s)")
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="x86_64", help="the functions' architecture")
    args = parser.parse_args(argv)
    out = build(args.out, args.requirements, args.config, args.python_version, args.arch)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
