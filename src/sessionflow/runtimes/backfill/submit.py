"""The spark-submit entry point's helpers: Glue's own arguments set apart, a config from S3."""

from __future__ import annotations

import argparse

from pyspark.sql import SparkSession

from sessionflow.config import Config


def drop_foreign_options(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Split ``argv`` into what ``parser`` knows and ``--unknown [value]`` pairs."""
    known = set(parser._option_string_actions)
    ours: list[str] = []
    foreign: list[str] = []
    tokens = iter(range(len(argv)))
    for i in tokens:
        token = argv[i]
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            foreign.append(token)
            if "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                foreign.append(argv[i + 1])
                next(tokens, None)
            continue
        ours.append(token)
    return ours, foreign


def load_config(path: str | None) -> Config:
    """A local file, or an s3:// URI (Glue and EMR Serverless hand the job an S3 location)."""
    if path is None:
        return Config()
    if "://" not in path:
        return Config.load(path)
    import tempfile
    from pathlib import Path

    spark = SparkSession.builder.getOrCreate()
    text = spark.read.text(path, wholetext=True).collect()[0].value
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "sessionflow.toml"
        local.write_text(text, encoding="utf-8")
        return Config.load(local)
