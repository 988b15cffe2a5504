"""Input files -> batches of raw lines with their provenance (source, 1-based line number).

Accepts JSON-lines files, gzip files (recognised by their magic bytes, whatever their name),
directories (every file below, sorted, hidden ones skipped) and ``-`` for standard input.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sessionflow.core.pipeline import RawLine
from sessionflow.errors import InputError

STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Source:
    name: str  # as given, or the path of a file found under a given directory
    path: Path | None  # None for standard input

    @property
    def size(self) -> int | None:
        return self.path.stat().st_size if self.path is not None else None


def expand_inputs(inputs: list[str]) -> list[Source]:
    """Every input, checked before anything runs: a missing file fails the run up front."""
    sources: list[Source] = []
    for given in inputs:
        if given == STDIN:
            sources.append(Source(STDIN, None))
            continue
        path = Path(given)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
            )
            sources.extend(Source(str(p), p) for p in found)
        elif path.is_file():
            sources.append(Source(given, path))
        elif path.exists():
            raise InputError(f"{given}: not a regular file or directory")
        else:
            raise InputError(f"{given}: no such file or directory")
    for source in sources:
        if source.path is not None and not os.access(source.path, os.R_OK):
            raise InputError(f"{source.name}: permission denied")
    return sources


def open_source(source: Source) -> BinaryIO:
    raw: BinaryIO
    try:
        raw = sys.stdin.buffer if source.path is None else open(source.path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{source.name}: {exc.strerror}") from None
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
    if buffered.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    return buffered


def read_batches(source: Source, batch_bytes: int = 4 << 20, start_line: int = 0) -> Iterator[list[RawLine]]:
    """Batches of about ``batch_bytes``; skips the first ``start_line`` lines (a resumed run)."""
    stream = open_source(source)
    name = source.name
    line_no = 0
    try:
        while True:
            try:
                lines = stream.readlines(batch_bytes)
            except (OSError, EOFError) as exc:
                raise InputError(f"{name}: read failed after line {line_no}: {exc}") from None
            if not lines:
                return
            first = line_no + 1
            line_no += len(lines)
            if line_no <= start_line:
                continue
            batch = [(raw, name, first + i) for i, raw in enumerate(lines)]
            if first <= start_line:
                batch = batch[start_line - first + 1 :]
            yield batch
    finally:
        if source.path is not None:
            stream.close()
