"""Results that are probably wrong: warnings for a run's summary, with a hint where one fits.

A run that rejects a large share of its records, or finds a large share of them late, has usually
been given the wrong input or the wrong config (a build sending timestamps in seconds, a feed that
is not JSON lines). It is still published; these warnings say so loudly, and a run that rejected
every one of its records exits :data:`~sessionflow.exitcodes.EXIT_QUALITY` (see ``is_all_rejected``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import orjson

from sessionflow.core.pipeline import Tally

OUT_OF_RANGE = "timestamp_out_of_range"
# The core's message for an out-of-range timestamp (sessionflow.core.refine).
_OUT_OF_RANGE_MESSAGE = re.compile(r"^timestamp (-?\d+) is outside \[(-?\d+), processing time \+ (\d+) ms\]")
# Rejected rows read back to guess a unit: enough to judge, few enough to stay instant.
_SAMPLE = 200


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """Above these shares a run's summary warns (``--warn-reject-rate``, ``--warn-late-rate``)."""

    reject_rate: float = 0.05  # of the records read
    # Of the valid events. Late is rare now (later than restate_horizon behind the stream clock):
    # any late event is worth saying.
    late_rate: float = 0.0


def is_all_rejected(tally: Tally) -> bool:
    """Every record read was rejected: almost surely not the input meant (``/bin/ls``, the wrong file)."""
    return tally.records > 0 and tally.rejected_total == tally.records


def quality_warnings(tally: Tally, *, lake: Path, run: int, thresholds: QualityThresholds) -> list[str]:
    warnings = []
    if tally.records and tally.rejected_total / tally.records > thresholds.reject_rate:
        warnings.append(_reject_warning(tally, lake=lake, run=run, threshold=thresholds.reject_rate))
    if tally.events and tally.late / tally.events > thresholds.late_rate:
        warnings.append(
            f"{tally.late:,} of {tally.events:,} valid events ({tally.late / tally.events:.1%}) arrived late, "
            "older than the stream clock less `restate_horizon`: they are kept, flagged late and in no "
            "session. A larger `restate_horizon` in [session] places them (README, Arrival order); "
            "--warn-late-rate sets this warning's threshold"
        )
    return warnings


def _reject_warning(tally: Tally, *, lake: Path, run: int, threshold: float) -> str:
    share = tally.rejected_total / tally.records
    reason, count = tally.rejected.most_common(1)[0]
    head = (
        f"every one of the {tally.records:,} records was rejected"
        if is_all_rejected(tally)
        else f"rejected {tally.rejected_total:,} of {tally.records:,} records ({share:.1%}), "
        f"above the {threshold:.0%} warning rate"
    )
    text = f"{head}; most are {reason} ({count:,}, see {lake / 'rejected' / f'reason={reason}'})"
    if reason == OUT_OF_RANGE and count * 2 > tally.rejected_total:
        hint = _unit_hint(lake / "rejected" / f"reason={reason}", run)
        if hint:
            text += f"; {hint}"
    elif reason in ("invalid_utf8", "malformed_json") and is_all_rejected(tally):
        text += "; is this input JSON lines at all"
    if is_all_rejected(tally):
        return f"{text}. The run is published and exits 6"
    return (
        f"{text}. Make such a run fail with --max-reject-rate RATE (exit 6); "
        "--warn-reject-rate sets this warning's threshold"
    )


def _unit_hint(folder: Path, run: int) -> str | None:
    """'these look like seconds' when most sampled out-of-range timestamps fit once scaled by 1000."""
    found: list[tuple[int, int, int]] = []
    for path in sorted(folder.glob(f"part-{run:05d}-*.jsonl")):
        with path.open("rb") as rows:
            for line in islice(rows, _SAMPLE - len(found)):
                match = _OUT_OF_RANGE_MESSAGE.match(str(orjson.loads(line).get("message", "")))
                if match:
                    found.append((int(match[1]), int(match[2]), int(match[3])))
        if len(found) >= _SAMPLE:
            break
    if not found:
        return None
    now = int(time.time() * 1000)

    def fit(factor: float) -> int:
        return sum(1 for ts, low, skew in found if low <= ts * factor <= now + skew)

    if fit(1000) * 2 > len(found):
        return "these look like seconds: see `scale` in the README's cleaning rules"
    if fit(1 / 1000) * 2 > len(found) or fit(1 / 1_000_000) * 2 > len(found):
        return "these look like micro- or nanoseconds: see `divide` in the README's cleaning rules"
    return None
