"""``sessionflow report`` and ``sessionflow query``: their arguments, and the calls they make.

Nothing heavy is imported here (the command line lists these commands in every install); DuckDB
is imported when one of them runs, and its absence says which extra to install.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sessionflow.errors import OutputError, UsageError
from sessionflow.exitcodes import EXIT_OK

log = logging.getLogger(__name__)

DEFAULT_REPORT = "report.html"


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None


def _stages(text: str) -> tuple[tuple[str, ...], ...]:
    """``app_open,doc_open,share|sign``: steps in order, ``|`` between the types that each can be."""
    stages = tuple(tuple(kind.strip() for kind in step.split("|") if kind.strip()) for step in text.split(","))
    if not stages or any(not step for step in stages):
        raise argparse.ArgumentTypeError(f"expected event types separated by commas (and | for either), got {text!r}")
    return stages


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="one self-contained HTML page of what is in a lake: charts and their numbers",
        description="Figures of a lake (any runtime's) computed with DuckDB, in one HTML file that "
        "needs no network: events, sessions and machines per day, session length and size, event "
        "types, a funnel and the common paths, why sessions ended, rejections and late arrivals.",
    )
    report.add_argument("lake", metavar="LAKE", help="the lake folder (written by run, backfill or aws-local fetch)")
    report.add_argument(
        "-o", "--output", default=DEFAULT_REPORT, metavar="FILE", help=f"the page (default ./{DEFAULT_REPORT})"
    )
    report.add_argument("--from", dest="first", type=_day, metavar="DAY", help="first day shown (YYYY-MM-DD, UTC)")
    report.add_argument("--to", dest="last", type=_day, metavar="DAY", help="last day shown, included")
    report.add_argument(
        "--funnel",
        type=_stages,
        metavar="STEPS",
        help="the funnel's event types in order, e.g. app_open,doc_open,edit,save,share|sign (the default)",
    )
    report.set_defaults(handler=_cmd_report)

    query = commands.add_parser(
        "query",
        help="SQL over a lake with DuckDB: views events, sessions, rejected, runs, restatements",
        description="Runs SQL with DuckDB over the lake's files, as the views events, sessions, rejected, runs "
        "(one row per run's ledger) and restatements (when there is a restatement log); the partition "
        "columns (event_date, session_date) are columns. Without SQL: a prompt on a terminal, else the "
        "SQL on standard input.",
    )
    query.add_argument("lake", metavar="LAKE", help="the lake folder")
    query.add_argument("sql", nargs="?", metavar="SQL", help="one or more statements")
    query.add_argument("--format", "-f", default="table", choices=("table", "csv", "json"), help="default: table")
    query.set_defaults(handler=_cmd_query)


def _import_error(exc: ImportError) -> UsageError:
    return UsageError(f"{exc}: this command needs sessionflow's local extra (pip install 'sessionflow[local]')")


def _cmd_query(args: argparse.Namespace) -> int:
    try:
        from sessionflow.report.query import query
    except ImportError as exc:
        raise _import_error(exc) from None
    query(Path(args.lake), args.sql, args.format)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    if args.first and args.last and args.first > args.last:
        raise UsageError(f"--from {args.first} is after --to {args.last}")
    command = shlex.join(["sessionflow", "report", *sys.argv[2:]]) if sys.argv[1:2] == ["report"] else "sessionflow"
    written = write_report(
        Path(args.lake), Path(args.output), first=args.first, last=args.last, funnel=args.funnel, command=command
    )
    # What is in the lake, as the page's headline says it (stderr), then where the page is (stdout).
    width = max(len(label) for label, _, _ in written.headline)
    for label, value, detail in written.headline:
        sys.stderr.write(f"{label.ljust(width)}  {value:>12}  {detail}".rstrip() + "\n")
    sys.stdout.write(f"{written.path}\n")
    return EXIT_OK


@dataclass(frozen=True)
class WrittenReport:
    path: Path  # absolute
    headline: list[tuple[str, str, str]]  # the page's headline numbers: (what, how many, of what)


def write_report(
    lake: Path,
    output: Path,
    *,
    first: date | None = None,
    last: date | None = None,
    funnel: tuple[tuple[str, ...], ...] | None = None,
    command: str = "sessionflow report",
) -> WrittenReport:
    """The lake's report, written to ``output`` whole or not at all."""
    try:
        from sessionflow import __version__
        from sessionflow.lake.lock import shared_lock
        from sessionflow.report import figures, page
        from sessionflow.report.lake_db import open_lake
    except ImportError as exc:
        raise _import_error(exc) from None
    if output.is_dir():
        raise UsageError(f"{output} is a folder; name the report's file, e.g. {output / DEFAULT_REPORT}")
    db, _ = open_lake(lake)
    with shared_lock(lake) as alone:
        if not alone:
            log.warning(
                "%s: a run is writing to this lake; the report shows it as it stood when each figure was read", lake
            )
        figures.select_days(db, first, last)
        report = figures.build(db, str(lake), funnel or figures.DEFAULT_FUNNEL)
    text = page.render(report, version=__version__, command=command)
    folder = output.parent if str(output.parent) else Path(".")
    written: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=".report-", delete=False) as tmp:
            written = tmp.name
            tmp.write(text)
        os.chmod(written, 0o644)  # a page to open and share, not a private temporary file
        os.replace(written, output)
    except OSError as exc:
        if written is not None:
            Path(written).unlink(missing_ok=True)
        raise OutputError(f"{output}: cannot write the report: {exc.strerror or exc}") from None
    return WrittenReport(output.resolve(), report.headline)
