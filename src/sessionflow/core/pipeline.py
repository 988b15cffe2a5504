"""The whole core for one stream: raw lines in, events, sessions and rejections out.

Runtimes move bytes in and out; this decides everything in between. Each raw line is counted
exactly once: as an event (possibly late), a rejection or a duplicate; blank lines are skipped and
counted apart.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sessionflow.config import Config
from sessionflow.core.refine import Refiner, strip_record
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


def rejection_row(rejection: Rejection, source: str, line: int, raw: bytes | None = None) -> dict[str, Any]:
    """The rejected-output row. ``raw``: the line as read, when the rejection holds a stripped copy."""
    raw = rejection.raw if raw is None else raw.rstrip(b"\r\n")
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
    rejections: list[dict[str, Any]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    records: int = 0
    blank: int = 0


class Pipeline:
    """Refiner + Sessionizer, fed batch after batch. ``now_ms`` is the processing time."""

    def __init__(
        self, config: Config, now_ms: int, sessionizer: Sessionizer | None = None, *, enrich: bool = True
    ) -> None:
        self.config = config
        self.now_ms = now_ms
        self.refiner = Refiner(config, enrich=enrich)
        self.sessionizer = sessionizer or Sessionizer(config.session)
        self.tally = Tally()

    def feed(self, lines: Iterable[RawLine], out: Outputs) -> None:
        """Process one batch; what it releases is appended to ``out``."""
        self.sessionize(self.refine(lines), out)

    def refine(self, lines: Iterable[RawLine]) -> Refined:
        """The stateless half: parse, clean, validate, enrich. Safe to run in parallel."""
        refine = self.refiner.refine
        now = self.now_ms
        batch = Refined()
        valid = batch.events
        rejections = batch.rejections
        rejected = batch.rejected
        records = blank = 0
        for raw, source, line in lines:
            record = strip_record(raw)
            if not record:
                blank += 1
                continue
            records += 1
            result = refine(record, now)
            if type(result) is dict:
                valid.append(result)
            else:
                assert isinstance(result, Rejection)
                rejections.append(rejection_row(result, source, line, raw))
                rejected[result.reason.value] += 1
        batch.records = records
        batch.blank = blank
        return batch

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
