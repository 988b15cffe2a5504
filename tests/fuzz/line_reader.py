"""A line reader over :class:`BoundedLines`, for tests that check what the reader hands on.

The runner reads blocks (``engine.read_blocks``) through the same ``BoundedLines`` stream; this
splits the stream into numbered lines so the tests can compare them with the input.
"""

from __future__ import annotations

from collections.abc import Iterator

from sessionflow.core.pipeline import RawLine
from sessionflow.runtimes.local.reader import BoundedLines, Oversized, Position, Source, bounded


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
    """Batches of raw lines from one source, through :class:`BoundedLines` (bounded memory).

    After the last batch: :attr:`resumed`, :attr:`start` (where it began) and :attr:`position`.
    """

    def __init__(
        self,
        source: Source,
        *,
        max_line_bytes: int | None = None,
        batch_bytes: int = 4 << 20,
        resume: Position | None = None,
    ) -> None:
        self.source = bounded(source, max_line_bytes=max_line_bytes, resume=resume)
        self.batch_bytes = batch_bytes
        self.resumed = False
        self.start = Position()
        self.position = Position()

    def batches(self) -> Iterator[ReadBatch]:
        source = self.source
        report = source.report
        name = source.name
        stream = BoundedLines(source)
        try:
            line_no: int | None = None
            carry = b""
            lines: list[RawLine] = []
            held = 0
            while True:
                data = stream.read(self.batch_bytes)
                if line_no is None:
                    line_no = report.start.lines
                if not data:
                    break
                held += len(data)
                data = carry + data if carry else data
                parts = data.split(b"\n")
                carry = parts.pop()
                first = line_no + 1
                lines.extend((part, name, first + i) for i, part in enumerate(parts))
                line_no += len(parts)
                if held >= self.batch_bytes:
                    yield _batch(lines, report.take_oversized(line_no), line_no, held)
                    lines, held = [], 0
            assert line_no is not None
            if carry:
                line_no += 1
                lines.append((carry, name, line_no))
            oversized = report.take_oversized(line_no)
            if lines or oversized:
                yield _batch(lines, oversized, line_no, held)
        finally:
            stream.close()
        self.resumed = report.resumed
        self.start = report.start
        self.position = report.position or Position()


def _batch(lines: list[RawLine], oversized: list[Oversized], last_line: int, nbytes: int) -> ReadBatch:
    if oversized:
        cut = {line.line for line in oversized}
        lines = [line for line in lines if line[2] not in cut]
    return ReadBatch(lines, oversized, last_line, nbytes)
