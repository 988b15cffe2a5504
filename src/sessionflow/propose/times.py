"""Which time a field holds, and how ``parse_time`` reads it: epoch units, ISO-8601, common formats.

Pure: a field's sample values in, a guess out (or None: not a time). The guess is checked the way
the pipeline will read it, by the core's own parser, on every value of the sample.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from sessionflow.config import DEFAULT_MIN_TIMESTAMP_MS, TimeFormat
from sessionflow.config_mapping import EPOCH_UNITS, ISO
from sessionflow.core.mapping import Unmappable, time_parser
from sessionflow.core.refine import parse_timestamp
from sessionflow.propose.sample import Leaf

DAY_MS = 86_400_000
# How large an epoch number is in each unit, for times between 1973 and 5138.
_BANDS = (("epoch_s", 1e8, 1e11), ("epoch_ms", 1e11, 1e14), ("epoch_us", 1e14, 1e17), ("epoch_ns", 1e17, 1e20))
# Formats seen in exports and logs; a format must read every value of the sample to be chosen.
FORMATS = (
    "%d/%m/%Y %H:%M:%S.%f",
    "%m/%d/%Y %H:%M:%S.%f",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M",
    "%d-%m-%Y %H:%M:%S",
    "%m-%d-%Y %H:%M:%S",
    "%d.%m.%Y %H:%M:%S",
    "%Y/%m/%d %H:%M:%S.%f",
    "%Y/%m/%d %H:%M:%S",
    "%d/%b/%Y:%H:%M:%S %z",  # the common log format of web servers
    "%a, %d %b %Y %H:%M:%S %z",  # RFC 2822
    "%a, %d %b %Y %H:%M:%S %Z",  # HTTP dates (GMT)
    "%a %b %d %H:%M:%S %Y",
    "%d %b %Y %H:%M:%S",
    "%b %d %Y %H:%M:%S",
    "%Y%m%d%H%M%S",
)
ASSUMED_ZONE = "UTC"


@dataclass(frozen=True)
class TimeGuess:
    field: str
    # None: sessionflow reads the field as it is (integer epoch milliseconds, ISO-8601 with a zone).
    rule: TimeFormat | None
    what: str  # what the sample shows, for the proposal's comment
    zone_assumed: bool = False  # times without a zone: UTC is a guess the user must check
    other_formats: tuple[str, ...] = ()  # formats that read the sample as well (dd/mm or mm/dd)
    unread: tuple[int, Any] | None = None  # values of the sample it does not read: how many, and one


def guess_time(leaf: Leaf, now_ms: int) -> TimeGuess | None:
    """How ``leaf`` holds a time, or None when its values are not times of one kind."""
    values = leaf.values
    if not values or not leaf.only("int", "float", "str"):
        return None
    native = [value for value in values if _native(value, now_ms)]
    if _enough(native, values):
        return TimeGuess(leaf.path, None, _native_kind(native))
    numbers = [number for number in map(_number, values) if number is not None]
    if _enough(numbers, values):
        guess = _epoch_guess(leaf, numbers, now_ms, numeric_text=leaf.only("str"))
        if guess is not None:
            return guess
    if leaf.only("str"):
        guess = _text_guess(leaf, values, now_ms)
        if guess is not None:
            return guess
    if len(native) * 2 > len(values):
        # Mostly times it reads as they are: the others (seconds from one build, say) the user sees.
        unread = next(value for value in values if not _native(value, now_ms))
        return TimeGuess(leaf.path, None, _native_kind(native), unread=(len(values) - len(native), unread))
    return None


def _native(value: Any, now_ms: int) -> bool:
    """Read as it is (integer epoch milliseconds, ISO-8601 with a zone), and plausible."""
    ms = parse_timestamp(value) if not isinstance(value, bool) else "a boolean"
    return isinstance(ms, int) and _plausible([ms], now_ms)


def _native_kind(values: list[Any]) -> str:
    kinds = {
        "epoch milliseconds" if isinstance(value, int | float) else "ISO-8601 times with their zone" for value in values
    }
    return " and ".join(sorted(kinds))


def _text_guess(leaf: Leaf, texts: list[str], now_ms: int) -> TimeGuess | None:
    iso = _reads(TimeFormat(ISO, ASSUMED_ZONE), texts, now_ms)
    if iso is not None:
        return TimeGuess(leaf.path, TimeFormat(ISO, ASSUMED_ZONE), "ISO-8601 times without a zone", zone_assumed=True)
    fitting = []
    for fmt in FORMATS:
        zone = None if "%z" in fmt else ASSUMED_ZONE
        moments = _reads(TimeFormat(fmt, zone), texts, now_ms)
        if moments is not None:
            fitting.append((-len(moments), abs(now_ms - statistics.median(moments)), fmt, zone))
    if not fitting:
        return None
    # The format that reads the most values; dd/mm or mm/dd when no day passes 12: the reading
    # nearest before now (a feed is not from the future).
    fitting.sort()
    _, _, fmt, zone = fitting[0]
    return TimeGuess(
        leaf.path,
        TimeFormat(fmt, zone),
        f"times such as {texts[0]!r}",
        zone_assumed=zone is not None,
        other_formats=tuple(other for _, _, other, _ in fitting[1:]),
    )


def _epoch_guess(leaf: Leaf, numbers: list[float], now_ms: int, *, numeric_text: bool) -> TimeGuess | None:
    middle = statistics.median(abs(n) for n in numbers)
    unit = next((name for name, low, high in _BANDS if low <= middle < high), None)
    if unit is None:
        return None
    multiply, divide = EPOCH_UNITS[unit]
    moments = [n * multiply / divide for n in numbers]
    plausible = [moment for moment in moments if _plausible([moment], now_ms)]
    if not _enough(plausible, numbers):
        return None
    what = f"numbers of {unit.removeprefix('epoch_')} since 1970" + (" (as text)" if numeric_text else "")
    return TimeGuess(leaf.path, TimeFormat(unit), what)


def _reads(spec: TimeFormat, texts: list[str], now_ms: int) -> list[int] | None:
    """The values as the pipeline's parser reads them, or None when too many do not read or one is implausible."""
    parse = time_parser(spec)
    moments = []
    failed = 0
    for text in texts:
        try:
            moments.append(parse(text))
        except (Unmappable, ValueError, OverflowError):
            failed += 1
            if failed > len(texts) // 100:
                return None
    return moments if _plausible(moments, now_ms) else None


def _enough(read: list[Any], values: list[Any]) -> bool:
    """All but a value in a hundred read: a broken record is rejected, it does not change the format."""
    return bool(read) and len(values) - len(read) <= len(values) // 100


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _plausible(moments: list[int] | list[float], now_ms: int) -> bool:
    """Within what the default validation accepts: after 2000, at most a day after now."""
    return bool(moments) and min(moments) >= DEFAULT_MIN_TIMESTAMP_MS and max(moments) <= now_ms + DAY_MS


def describe(guess: TimeGuess) -> str:
    rule = guess.rule
    if rule is None:
        return guess.what
    zone = f", zone {rule.timezone}" if rule.timezone else ""
    return f"{guess.what}: format {rule.format!r}{zone}"
