"""What a config does to a sample, before any run: valid, rejected by reason, duplicates, sessions.

The sample goes through the core as a batch run takes it: the raw-line step every runtime calls,
then exact dedupe (the first arrival wins; a copy of other content is a ``conflicting_duplicate``),
then the sessionizer over the events sorted by time. Pure: lines in, counts out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sessionflow.config import Config
from sessionflow.core import LineRefiner, Outputs, Sessionizer


@dataclass
class Preview:
    records: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first message
    duplicates: int = 0
    sessions: int = 0
    machines: int = 0

    @property
    def valid(self) -> int:
        return self.records - sum(self.rejected.values())

    def render(self) -> list[str]:
        rejected = sum(self.rejected.values())
        lines = [
            f"  {self.records:,} records: {self.valid:,} valid, {rejected:,} rejected, "
            f"{self.duplicates:,} duplicates; {self.events:,} events of {self.machines:,} machines "
            f"in {self.sessions:,} sessions"
        ]
        for reason, count in self.rejected.most_common():
            lines.append(f"  rejected {reason}: {count:,}, e.g. {self.examples[reason]}")
        return lines


def preview(config: Config, lines: list[bytes], now_ms: int) -> Preview:
    refined = LineRefiner(config, enrich=False).refine_lines(
        ((line, "sample", number) for number, line in enumerate(lines, 1)), now_ms
    )
    result = Preview(records=refined.records, rejected=Counter(refined.rejected))
    for row in refined.rejections:
        result.examples.setdefault(row["reason"], row["message"])
    first: dict[tuple[str, str], dict[str, Any]] = {}
    events = []
    for event in refined.events:
        seen = first.get((event["machine_id"], event["event_id"]))
        if seen is None:
            first[(event["machine_id"], event["event_id"])] = event
            events.append(event)
        elif seen == event:
            result.duplicates += 1
        else:
            result.rejected["conflicting_duplicate"] += 1
            result.examples.setdefault(
                "conflicting_duplicate", f"event {event['event_id']!r} again, with other content"
            )
    # In time order, as a batch run sessionizes: nothing is late, no session is closed early.
    events.sort(key=lambda e: (e["timestamp"], e["machine_id"], e["event_id"]))
    sessionizer = Sessionizer(config.session)
    out = Outputs()
    sessionizer.process(events, out)
    sessionizer.flush(out)
    result.events = len(events)
    result.sessions = len(out.sessions)
    result.machines = len({event["machine_id"] for event in events})
    return result
