"""The backfill's options, shared by ``sessionflow backfill`` and the spark-submit entry point. Light."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sessionflow.config import DAY, parse_duration
from sessionflow.errors import UsageError


@dataclass(frozen=True, slots=True)
class DateRange:
    first: date
    last: date  # inclusive

    @property
    def lo(self) -> int:
        return _day_ms(self.first)

    @property
    def hi(self) -> int:
        return _day_ms(self.last) + DAY

    def days(self) -> list[str]:
        count = (self.last - self.first).days + 1
        return [(self.first + timedelta(days=i)).isoformat() for i in range(count)]


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def parse_instant(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 date-time, got {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a timezone, e.g. 2026-11-26T00:00:00Z")
    return int(moment.timestamp() * 1000)


def parse_flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", ""):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_margin(text: str) -> int:
    try:
        return parse_duration(text, "--margin")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backfill's options, shared by ``sessionflow backfill`` and spark-submit."""
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="JSON-lines files or folders (local, s3a://, s3://)")
    parser.add_argument(
        "--input",
        dest="input_options",
        action="append",
        default=[],
        metavar="INPUT[,INPUT...]",
        help="more inputs, comma-separated (AWS Glue passes job parameters as --key value only)",
    )
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="the lake folder (local, s3a://, s3://)")
    parser.add_argument("--config", "-c", metavar="FILE", help="sessionflow.toml (env SESSIONFLOW_CONFIG)")
    parser.add_argument("--from", dest="date_from", type=parse_date, metavar="YYYY-MM-DD", help="first day to rebuild")
    parser.add_argument("--to", dest="date_to", type=parse_date, metavar="YYYY-MM-DD", help="last day to rebuild")
    parser.add_argument(
        "--overwrite",
        nargs="?",
        const=True,
        default=False,
        type=parse_flag,
        metavar="true|false",
        help="a full backfill replaces a lake already in DIR (a bare flag, or a value for Glue)",
    )
    parser.add_argument(
        "--margin", type=parse_margin, default=DAY, metavar="DURATION", help="read this much around --from/--to (1d)"
    )
    parser.add_argument(
        "--now",
        type=parse_instant,
        metavar="ISO-8601",
        help="processing time for the future-timestamp check (default: when the job starts)",
    )
    parser.add_argument(
        "--last-days",
        type=_days,
        metavar="N",
        help="rebuild the N days before today (UTC, by --now): what a daily scheduled job runs (0: not a range)",
    )
    parser.add_argument(
        "--archive",
        nargs="?",
        const=True,
        default=False,
        type=parse_flag,
        metavar="true|false",
        help="the inputs are the AWS runtime's raw archive (s3://BUCKET/raw/): one JSON line per record; "
        "with a date range only the arrival hours that can hold those days are read",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, got {text!r}")
    return value


def date_range_of(args: argparse.Namespace) -> DateRange | None:
    last_days = getattr(args, "last_days", None)
    if last_days:
        if args.date_from is not None or args.date_to is not None:
            raise UsageError("--last-days goes without --from and --to")
        now = args.now if args.now is not None else int(datetime.now(UTC).timestamp() * 1000)
        today = datetime.fromtimestamp(now / 1000, UTC).date()
        return DateRange(today - timedelta(days=last_days), today - timedelta(days=1))
    if args.date_from is None and args.date_to is None:
        return None
    if args.date_from is None or args.date_to is None:
        raise UsageError("--from and --to go together")
    if args.date_to < args.date_from:
        raise UsageError("--to is before --from")
    return DateRange(args.date_from, args.date_to)


def inputs_of(args: argparse.Namespace) -> list[str]:
    """Positional inputs, then those of --input, in the order given: that order is arrival order."""
    inputs = [given for given in args.inputs if given]
    for option in args.input_options:
        inputs.extend(part for part in option.split(",") if part)
    if not inputs:
        raise UsageError("no INPUT given (positional, or --input)")
    return inputs
