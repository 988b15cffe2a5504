"""Input files -> batches of raw lines with their provenance (source, 1-based line number).

Accepts JSON-lines files, gzip files (recognised by their magic bytes, whatever their name),
directories (every file below, sorted, hidden ones skipped) and ``-`` for standard input.

Memory is bounded whatever the input: :class:`SourceReader` reads fixed-size chunks and never holds
a line longer than its limit (such a line is reported with a bounded prefix and its size).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sessionflow.core.pipeline import RawLine
from sessionflow.errors import InputError

log = logging.getLogger(__name__)

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


# -- bounded line reading -------------------------------------------------------------------------

# A line may carry this much whitespace (a CR, padding) around a record of the limit's size and
# still reach the core intact, which then decides exactly (it measures the stripped record).
LINE_SLACK = 64 * 1024
# Bytes of an oversized line kept in its rejection: enough to see what it was, never the whole line.
OVERSIZED_KEEP = 64 * 1024
# Both ends of a source are fingerprinted over this many bytes to recognise it in a later run.
FINGERPRINT_BYTES = 64 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Position:
    """How far into a source a run got: every line up to ``bytes`` was consumed.

    ``head`` and ``tail`` are SHA-256 digests of the first and of the last
    :data:`FINGERPRINT_BYTES` of that prefix; a later run resumes after ``bytes`` only when
    the same path still starts and continues with exactly those bytes.
    """

    lines: int = 0
    bytes: int = 0
    head: str = ""
    tail: str = ""

    def to_dict(self) -> dict[str, int | str]:
        return {"lines": self.lines, "bytes": self.bytes, "head": self.head, "tail": self.tail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Position:
        return cls(int(data["lines"]), int(data["bytes"]), str(data["head"]), str(data["tail"]))


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line longer than the reader's limit: only its first bytes were kept."""

    prefix: bytes
    source: str
    line: int
    size: int  # the whole line, in bytes, without its newline


class ReadBatch(list[RawLine]):
    """Raw lines (a ``list[RawLine]``), plus the oversized lines cut out of them.

    ``last_line`` is the line number of the last line read, oversized or not; ``nbytes`` the
    bytes of the stream this batch covers (for progress).
    """

    def __init__(self, lines: list[RawLine], oversized: list[Oversized], last_line: int, nbytes: int) -> None:
        super().__init__(lines)
        self.oversized = oversized
        self.last_line = last_line
        self.nbytes = nbytes


class SourceReader:
    """Reads one source in batches with a bounded memory, whatever its lines look like.

    Memory is bounded by ``batch_bytes`` plus ``max_line_bytes``: a line longer than
    ``max_line_bytes`` is never held whole; it is reported as :class:`Oversized` with its
    first :data:`OVERSIZED_KEEP` bytes and its true size, and the rest is skipped as it streams by.

    With ``resume``, the lines a previous run consumed are skipped, provided the source still
    starts with the same bytes (see :class:`Position`); otherwise it is read from its start and
    :attr:`resumed` stays False. After the last batch, :attr:`position` says how far it got.
    """

    def __init__(
        self,
        source: Source,
        *,
        max_line_bytes: int | None = None,
        batch_bytes: int = 4 << 20,
        resume: Position | None = None,
    ) -> None:
        self.source = source
        self.max_line_bytes = max_line_bytes
        self.batch_bytes = batch_bytes
        self.resume = resume
        self.resumed = False
        self.start = Position()
        self.position = Position()
        self._head = bytearray()
        self._tail = b""
        self._read = 0
        self._lines = 0

    # The fingerprints are kept over everything read, which is everything consumed once the source is exhausted.
    def _account(self, data: bytes) -> None:
        if len(self._head) < FINGERPRINT_BYTES:
            self._head += data[: FINGERPRINT_BYTES - len(self._head)]
        if len(data) >= FINGERPRINT_BYTES:
            self._tail = data[-FINGERPRINT_BYTES:]
        else:
            self._tail = (self._tail + data)[-FINGERPRINT_BYTES:]
        self._read += len(data)

    def _read_chunk(self, stream: BinaryIO, size: int, line_no: int) -> bytes:
        try:
            data = stream.read(size)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"{self.source.name}: read failed after line {line_no}: {exc}") from None
        self._account(data)
        return data

    def _try_resume(self, stream: BinaryIO, resume: Position) -> bool:
        """Consume the prefix a previous run read if it is still there, byte for byte."""
        head = self._read_exact(stream, min(resume.bytes, FINGERPRINT_BYTES))
        if head is None or _digest(head) != resume.head:
            return False
        tail_start = max(0, resume.bytes - FINGERPRINT_BYTES)
        if tail_start < len(head):
            rest = self._read_exact(stream, resume.bytes - len(head))
            if rest is None:
                return False
            tail = (head + rest)[tail_start:]
        else:
            if stream.seekable() and not isinstance(stream, gzip.GzipFile):
                stream.seek(tail_start)
            else:
                while self._read < tail_start:
                    if not self._read_chunk(stream, min(_CHUNK, tail_start - self._read), resume.lines):
                        return False
            self._read = tail_start
            rest = self._read_exact(stream, resume.bytes - tail_start)
            if rest is None:
                return False
            tail = rest
        if _digest(tail) != resume.tail:
            return False
        self._read = resume.bytes
        self._tail = tail
        return True

    def _read_exact(self, stream: BinaryIO, size: int) -> bytes | None:
        parts = []
        wanted = size
        while wanted:
            data = self._read_chunk(stream, wanted, 0)
            if not data:
                return None
            parts.append(data)
            wanted -= len(data)
        return b"".join(parts)

    def batches(self) -> Iterator[ReadBatch]:
        stream = open_source(self.source)
        try:
            line_no = 0
            if self.resume is not None and self.source.path is not None:
                if self._try_resume(stream, self.resume):
                    self.resumed = True
                    line_no = self.resume.lines
                    self.start = self.resume
                else:
                    log.warning(
                        "%s: not the input an earlier run read (its bytes differ): reading it all", self.source.name
                    )
                    stream.close()
                    self._head, self._tail, self._read = bytearray(), b"", 0
                    stream = open_source(self.source)
            yield from self._split(stream, line_no)
            self.position = Position(self._lines, self._read, _digest(bytes(self._head)), _digest(self._tail))
        finally:
            if self.source.path is not None:
                stream.close()

    def _split(self, stream: BinaryIO, line_no: int) -> Iterator[ReadBatch]:
        name = self.source.name
        limit = self.max_line_bytes
        lines: list[RawLine] = []
        oversized: list[Oversized] = []
        held = 0  # bytes of lines in the batch
        covered = 0  # bytes of the stream the batch covers
        carry = b""  # the start of a line whose end has not been read yet
        skipping: tuple[bytes, int] | None = None  # (kept prefix, size so far) of an oversized line
        while True:
            chunk = self._read_chunk(stream, _CHUNK, line_no)
            covered += len(chunk)
            at_end = not chunk
            if skipping is not None:
                end = chunk.find(b"\n")
                if end < 0 and chunk:
                    skipping = (skipping[0], skipping[1] + len(chunk))
                    continue
                line_no += 1
                size = skipping[1] + (end if end >= 0 else 0)
                oversized.append(Oversized(skipping[0], name, line_no, size))
                skipping = None
                if end < 0:  # the oversized line ended the stream
                    break
                chunk = chunk[end + 1 :]
                if not chunk:
                    continue  # the oversized line ended with this chunk: the stream goes on
            if at_end:
                if carry:
                    line_no += 1
                    lines.append((carry, name, line_no))
                break
            data = carry + chunk if carry else chunk
            parts = data.split(b"\n")
            carry = parts.pop()
            if limit is not None and parts and max(map(len, parts)) > limit:
                for part in parts:
                    line_no += 1
                    if len(part) > limit:
                        oversized.append(Oversized(part[:OVERSIZED_KEEP], name, line_no, len(part)))
                    else:
                        lines.append((part, name, line_no))
            else:
                first = line_no + 1
                lines.extend((part, name, first + i) for i, part in enumerate(parts))
                line_no += len(parts)
            held += len(data) - len(carry)
            if limit is not None and len(carry) > limit:
                skipping = (carry[:OVERSIZED_KEEP], len(carry))
                carry = b""
            if held >= self.batch_bytes:
                yield ReadBatch(lines, oversized, line_no, covered)
                lines, oversized, held, covered = [], [], 0, 0
        if lines or oversized:
            yield ReadBatch(lines, oversized, line_no, covered)
        self._lines = line_no


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_batches(source: Source, batch_bytes: int = 4 << 20, start_line: int = 0) -> Iterator[list[RawLine]]:
    """Batches of about ``batch_bytes``; skips the first ``start_line`` lines. No line limit."""
    for batch in SourceReader(source, batch_bytes=batch_bytes).batches():
        if batch.last_line <= start_line:
            continue
        yield [line for line in batch if line[2] > start_line]
