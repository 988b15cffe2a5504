"""The whole core for one stream: raw lines in, events, sessions and rejections out.

Runtimes move bytes in and out; this decides everything in between. Each raw line is counted
exactly once: as an event (possibly late), a rejection or a duplicate; blank lines are skipped and
counted apart.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sessionflow.config import Config
from sessionflow.core.refine import Event, Refiner, strip_record
from sessionflow.core.rejections import Rejection
from sessionflow.core.sessionizer import Outputs, Sessionizer

# (raw line, source name, 1-based line number)
RawLine = tuple[bytes, str, int]


@dataclass
class Tally:
    records: int = 0
    blank: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    late: int = 0
    sessions: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def add(self, other: Tally) -> None:
        self.records += other.records
        self.blank += other.blank
        self.events += other.events
        self.rejected.update(other.rejected)
        self.duplicates += other.duplicates
        self.late += other.late
        self.sessions += other.sessions

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "blank": self.blank,
            "events": self.events,
            "rejected": dict(sorted(self.rejected.items())),
            "duplicates": self.duplicates,
            "late": self.late,
            "sessions": self.sessions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(**{**data, "rejected": Counter(data["rejected"])})


def rejection_row(rejection: Rejection, source: str, line: int) -> dict[str, Any]:
    """The rejected table's row: why, the bytes as they arrived, and where they came from.

    ``source`` and ``line`` say where: a file and its 1-based line number, or for a stream record
    without lines (Kinesis) its shard and sequence number, and line 0.
    """
    raw = rejection.raw
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "reason": rejection.reason.value,
        "message": rejection.message,
        # The bytes, untouched; `raw` is the same as text when it is valid UTF-8.
        "raw_base64": base64.b64encode(raw).decode("ascii"),
        "raw": text,
        "source": source,
        "line": line,
    }


@dataclass
class Refined:
    """One batch after the stateless half: valid events in arrival order, rejections, counts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    # The line each event came from (the 1-based line number given with it): a batch run finds a
    # conflicting duplicate's raw bytes again by it.
    lines: list[int] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    records: int = 0
    blank: int = 0


class LineRefiner:
    """A raw line as it arrived -> a refined event, a rejection, or nothing (a blank line).

    The one raw-line step of every runtime: the embedded runner (:meth:`refine_lines`), the Spark
    backfill's refine stage and the AWS process step. A line is stripped (BOM, CR, blanks); a blank
    one is skipped; anything else is refined (size limit, parse, clean, validate, enrich). A
    rejection keeps the bytes as they arrived, less the line end, not the stripped record.
    """

    def __init__(self, config: Config, *, enrich: bool = True) -> None:
        self.refiner = Refiner(config, enrich=enrich)
        # ``refine_line(raw, now_ms)``: a closure, as ``Refiner.refine`` is; it runs for every line.
        self.refine_line = _compile_line(self.refiner.refine)

    def refine_lines(self, lines: Iterable[RawLine], now_ms: int) -> Refined:
        """Every line of a batch, each counted once: blank, event, or rejection row with its source and line."""
        refine_line = self.refine_line
        batch = Refined()
        valid = batch.events
        event_lines = batch.lines
        rejections = batch.rejections
        rejected = batch.rejected
        records = blank = 0
        for raw, source, line in lines:
            result = refine_line(raw, now_ms)
            if type(result) is dict:
                valid.append(result)
                event_lines.append(line)
            elif result is None:
                blank += 1
                continue
            else:
                assert isinstance(result, Rejection)
                rejections.append(rejection_row(result, source, line))
                rejected[result.reason.value] += 1
            records += 1
        batch.records = records
        batch.blank = blank
        return batch


def _compile_line(
    refine: Callable[[bytes, int], Event | Rejection],
) -> Callable[[bytes, int], Event | Rejection | None]:
    def refine_line(raw: bytes, now_ms: int) -> Event | Rejection | None:
        record = strip_record(raw)
        if not record:
            return None
        result = refine(record, now_ms)
        if type(result) is dict:
            return result
        assert isinstance(result, Rejection)
        return Rejection(result.reason, result.message, raw.rstrip(b"\r\n"))

    return refine_line


class Pipeline:
    """Refiner + Sessionizer, fed batch after batch. ``now_ms`` is the processing time."""

    def __init__(
        self, config: Config, now_ms: int, sessionizer: Sessionizer | None = None, *, enrich: bool = True
    ) -> None:
        self.config = config
        self.now_ms = now_ms
        self.lines = LineRefiner(config, enrich=enrich)
        self.refiner = self.lines.refiner
        self.sessionizer = sessionizer or Sessionizer(config.session)
        self.tally = Tally()

    def feed(self, lines: Iterable[RawLine], out: Outputs) -> None:
        """Process one batch; what it releases is appended to ``out``."""
        self.sessionize(self.refine(lines), out)

    def refine(self, lines: Iterable[RawLine]) -> Refined:
        """The stateless half: parse, clean, validate, enrich. Safe to run in parallel."""
        return self.lines.refine_lines(lines, self.now_ms)

    def sessionize(self, batch: Refined, out: Outputs) -> None:
        """The stateful half: must see batches in arrival order."""
        tally = self.tally
        tally.records += batch.records
        tally.blank += batch.blank
        tally.rejected.update(batch.rejected)
        out.rejections.extend(batch.rejections)
        counts = (len(out.events), len(out.sessions), len(out.duplicates), out.late)
        self.sessionizer.process(batch.events, out)
        self.sessionizer.end_batch(out)
        self._count(out, counts)

    def flush(self, out: Outputs) -> None:
        counts = (len(out.events), len(out.sessions), len(out.duplicates), out.late)
        self.sessionizer.flush(out)
        self._count(out, counts)

    def _count(self, out: Outputs, before: tuple[int, int, int, int]) -> None:
        self.tally.events += len(out.events) - before[0]
        self.tally.sessions += len(out.sessions) - before[1]
        self.tally.duplicates += len(out.duplicates) - before[2]
        self.tally.late += out.late - before[3]
