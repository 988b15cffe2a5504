"""Input files -> batches of raw lines with their provenance (source, 1-based line number).

Accepts JSON-lines files, gzip files (recognised by their magic bytes, whatever their name),
directories (every file below, sorted, hidden ones skipped: ``sessionflow.inputs``), named pipes and ``-`` for
standard input.

Memory is bounded whatever the input: :class:`BoundedLines` reads fixed-size chunks and never holds
a line longer than its limit (such a line is reported with a bounded prefix and its size).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from sessionflow.errors import InputError
from sessionflow.inputs import is_pipe, local_files

_newlines: Callable[[bytes], int] | None
try:  # compiled with the block reader (_blocks.pyx)
    from sessionflow.runtimes.local._blocks import newlines as _newlines
except ImportError:  # pragma: no cover - depends on the install
    _newlines = None


def count_lines(data: bytes) -> int:
    """The newlines in ``data``: compiled, by memchr, many bytes at a time (``bytes.count`` looks
    at one at a time: ~0.5 s of the run's process on 1M events, which it counts twice)."""
    return data.count(b"\n") if _newlines is None else _newlines(data)


log = logging.getLogger(__name__)

STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Source:
    name: str  # as given, or the path of a file found under a given directory
    path: Path | None  # None for standard input
    # Read with bounded lines and/or resumed (see `bounded`); then `report` is filled while reading.
    max_line_bytes: int | None = None
    resume: Position | None = None
    report: ReadReport = field(default_factory=lambda: ReadReport(), compare=False)  # noqa: PLW0108 - defined below

    @property
    def size(self) -> int | None:
        return self.path.stat().st_size if self.path is not None and not self.is_stream else None

    @property
    def is_stream(self) -> bool:
        """Standard input or a named pipe: read once, from its start (a later run cannot resume it)."""
        return self.path is None or is_pipe(self.path)


def expand_inputs(inputs: list[str], own: Collection[Path] = ()) -> list[Source]:
    """Every input, checked before anything runs: a missing file fails the run up front.

    ``own``: the run's lake folder and state file, never inputs (see ``sessionflow.inputs``).
    """
    sources: list[Source] = []
    for given in inputs:
        if given == STDIN:
            sources.append(Source(STDIN, None))
            continue
        sources.extend(Source(name, path) for name, path in local_files(given, own))
    for source in sources:
        if source.path is not None and not os.access(source.path, os.R_OK):
            raise InputError(f"{source.name}: permission denied")
    return sources


def open_source(source: Source) -> BinaryIO:
    """The source's bytes, decompressed; with bounded lines and resumed when the source asks."""
    if source.max_line_bytes is None and source.resume is None:
        return _open(source)
    return cast(BinaryIO, BoundedLines(source))


def _open(source: Source) -> BinaryIO:
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


@dataclass
class ReadReport:
    """What reading a bounded source found: oversized lines (in order), where it started and ended."""

    oversized: deque[Oversized] = field(default_factory=deque)
    resumed: bool = False
    start: Position = field(default_factory=Position)
    position: Position | None = None  # set when the end of the source is reached

    def take_oversized(self, last_line: int) -> list[Oversized]:
        """The oversized lines up to ``last_line`` not taken yet."""
        taken = []
        while self.oversized and self.oversized[0].line <= last_line:
            taken.append(self.oversized.popleft())
        return taken


def bounded(source: Source, *, max_line_bytes: int | None, resume: Position | None = None) -> Source:
    """The same source, to be read with lines of at most ``max_line_bytes`` and/or resumed."""
    return Source(source.name, source.path, max_line_bytes, None if source.is_stream else resume)


class BoundedLines:
    """A stream of a source's bytes in which no line is longer than the source's limit.

    Memory is bounded by the chunk size (what ``read`` is asked for, 1 MiB by default) plus the
    limit: an oversized line is never held whole. It is replaced by an empty line (so line numbers
    stay true) and reported in ``source.report`` with its first :data:`OVERSIZED_KEEP` bytes and its
    size. ``read`` returns whole lines only (the last line of the source excepted), so it may return
    more or less than asked.

    With ``source.resume``, the lines an earlier run consumed are skipped when the source still
    starts with the same bytes (see :class:`Position`); otherwise it is read from its start.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.report = source.report
        self._limit = source.max_line_bytes
        self._stream = _open(source)
        self._head = bytearray()
        self._tail = b""
        self._read = 0
        self._lines = 0  # lines passed on, resumed ones included
        self._carry = b""  # the start of a line whose end has not been read yet
        self._skip: list[Any] | None = None  # [kept prefix, size so far, line number] of an oversized line
        self._started = False
        self._done = False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.source.path is not None:
            self._stream.close()

    def read(self, size: int = -1) -> bytes:
        if not self._started:
            self._started = True
            self._start()
        while not self._done:
            chunk = self._pull(size if size > 0 else _CHUNK)
            out = self._feed(chunk) if chunk else self._finish()
            if out:
                return out
        return b""

    # -- reading, fingerprints ---------------------------------------------------------------------

    def _pull(self, size: int) -> bytes:
        try:
            # read1, not read: a truncated gzip fails the call that reaches the cut, and a read of
            # many pieces would lose the good lines of the pieces before it, and their count.
            data = cast(io.BufferedIOBase, self._stream).read1(size)  # a BufferedReader or a GzipFile
        except (OSError, EOFError) as exc:
            raise InputError(f"{self.source.name}: read failed after line {self._lines}: {exc}") from None
        if len(self._head) < FINGERPRINT_BYTES:
            self._head += data[: FINGERPRINT_BYTES - len(self._head)]
        if len(data) >= FINGERPRINT_BYTES:
            self._tail = data[-FINGERPRINT_BYTES:]
        elif data:
            self._tail = (self._tail + data)[-FINGERPRINT_BYTES:]
        self._read += len(data)
        return data

    def _pull_exact(self, size: int) -> bytes | None:
        parts = []
        while size:
            data = self._pull(min(size, _CHUNK))
            if not data:
                return None
            parts.append(data)
            size -= len(data)
        return b"".join(parts)

    def _start(self) -> None:
        resume = self.source.resume
        if resume is None or self.source.path is None:
            return
        if self._skip_consumed(resume):
            self.report.resumed = True
            self.report.start = resume
            self._lines = resume.lines
            return
        log.warning("%s: not the input an earlier run read (its bytes differ): reading all of it", self.source.name)
        self._stream.close()
        self._stream = _open(self.source)
        self._head, self._tail, self._read = bytearray(), b"", 0

    def _skip_consumed(self, resume: Position) -> bool:
        """Consume the prefix an earlier run read, if it is still there (head and tail fingerprints)."""
        head = self._pull_exact(min(resume.bytes, FINGERPRINT_BYTES))
        if head is None or _digest(head) != resume.head:
            return False
        tail_start = max(0, resume.bytes - FINGERPRINT_BYTES)
        if tail_start < len(head):
            rest = self._pull_exact(resume.bytes - len(head))
            if rest is None:
                return False
            tail = (head + rest)[tail_start:]
        else:
            stream = self._stream
            if stream.seekable() and not isinstance(stream, gzip.GzipFile):
                stream.seek(tail_start)
                self._read = tail_start
            else:
                while self._read < tail_start:
                    if not self._pull(min(_CHUNK, tail_start - self._read)):
                        return False
            rest = self._pull_exact(resume.bytes - tail_start)
            if rest is None:
                return False
            tail = rest
        if _digest(tail) != resume.tail:
            return False
        self._tail = tail
        return True

    # -- cutting lines ---------------------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> bytes:
        limit = self._limit
        parts = []
        if self._skip is not None:
            end = chunk.find(b"\n")
            if end < 0:
                self._skip[1] += len(chunk)
                return b""
            self._skip[1] += end
            parts.append(self._end_oversized())
            chunk = chunk[end + 1 :]
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n") + 1
        complete, self._carry = data[:cut], data[cut:]
        if complete:
            if limit is not None and _may_hold_a_long_line(complete, limit):
                complete = self._cut_long_lines(complete, limit)
            else:
                self._lines += count_lines(complete)
            parts.append(complete)
        if limit is not None and len(self._carry) > limit:
            self._skip = [self._carry[:OVERSIZED_KEEP], len(self._carry), self._lines + 1]
            self._carry = b""
        return b"".join(parts)

    def _cut_long_lines(self, complete: bytes, limit: int) -> bytes:
        lines = complete.split(b"\n")
        lines.pop()  # `complete` ends with a newline
        for index, line in enumerate(lines):
            self._lines += 1
            if len(line) > limit:
                self.report.oversized.append(Oversized(line[:OVERSIZED_KEEP], self.source.name, self._lines, len(line)))
                lines[index] = b""
        lines.append(b"")
        return b"\n".join(lines)

    def _end_oversized(self) -> bytes:
        assert self._skip is not None
        prefix, size, line = self._skip
        self._skip = None
        self._lines += 1
        self.report.oversized.append(Oversized(prefix, self.source.name, line, size))
        return b"\n"  # stands for the line: an empty line, so the lines after it keep their numbers

    def _finish(self) -> bytes:
        out = b""
        if self._skip is not None:
            out = self._end_oversized()
        elif self._carry:
            out, self._carry = self._carry, b""
            self._lines += 1
        self._done = True
        self.report.position = Position(self._lines, self._read, _digest(bytes(self._head)), _digest(self._tail))
        return out


def _may_hold_a_long_line(data: bytes, limit: int) -> bool:
    """False when every line of ``data`` (whole lines) is at most ``limit`` bytes; a few finds, not a split.

    If each window of ``limit // 2`` bytes holds a newline, no two newlines are more than
    ``limit`` apart.
    """
    step = max(1, limit // 2)
    find = data.find
    return any(find(b"\n", start, start + step) < 0 for start in range(0, len(data), step))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
