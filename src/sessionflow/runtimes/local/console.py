"""What a person sees around a run: a progress bar on a terminal, a summary at the end."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from sessionflow.config import Config
from sessionflow.exitcodes import EXIT_OK, EXIT_QUALITY
from sessionflow.inputs import why_no_files
from sessionflow.runtimes.local.quality import QualityThresholds, is_all_rejected, quality_warnings
from sessionflow.runtimes.local.reader import expand_inputs
from sessionflow.runtimes.local.runner import RunReport, run


def run_with_console(
    *,
    inputs: list[str],
    lake: Path,
    config: Config,
    state_path: Path | None,
    flush: bool,
    overwrite: bool,
    max_reject_rate: float | None,
    workers: int | None,
    as_json: bool,
    quiet: bool,
    allow_empty: bool = False,
    thresholds: QualityThresholds | None = None,
) -> int:
    console = Console(stderr=True)
    show_progress = console.is_terminal and not quiet
    if show_progress:
        own = [lake] if state_path is None else [lake, state_path]  # never read as input
        total = sum(source.size or 0 for source in expand_inputs(inputs, own)) or None
        columns = (
            TextColumn("[bold]sessionflow run"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("run", total=total)
            report = run(
                inputs,
                lake,
                config,
                state_path=state_path,
                flush=flush,
                overwrite=overwrite,
                workers=workers,
                progress=lambda consumed: bar.advance(task, consumed),
                allow_empty=allow_empty,
            )
    else:
        report = run(
            inputs,
            lake,
            config,
            state_path=state_path,
            flush=flush,
            overwrite=overwrite,
            workers=workers,
            allow_empty=allow_empty,
        )
    if allow_empty and not report.inputs:
        why = "; ".join(why_no_files(given) for given in inputs)
        notice = f"no input to read: {why}; running on nothing (--allow-empty)"
        console.print(notice, style="yellow", markup=False, soft_wrap=True)
    tally = report.tally
    warnings = quality_warnings(tally, lake=lake, run=report.run, thresholds=thresholds or QualityThresholds())
    if as_json:
        # "config": the file loaded, null for the built-in defaults.
        sys.stdout.write(
            orjson.dumps({**report.to_dict(), "config": config.source, "warnings": warnings}).decode() + "\n"
        )
    elif not quiet:
        console.print(summary_table(report, lake, config))
    for warning in warnings:  # even with --quiet: a result that is probably wrong is never silent
        console.print(f"warning: {warning}", style="bold yellow", markup=False, soft_wrap=True)
    if max_reject_rate is not None and tally.records and tally.rejected_total / tally.records > max_reject_rate:
        console.print(
            f"rejected {tally.rejected_total} of {tally.records} records "
            f"({tally.rejected_total / tally.records:.2%}), over --max-reject-rate {max_reject_rate:.2%}",
            style="red",
            markup=False,
            soft_wrap=True,
        )
        return EXIT_QUALITY
    if is_all_rejected(tally):  # said in the warnings above
        return EXIT_QUALITY
    return EXIT_OK


def summary_table(report: RunReport, lake: Path, config: Config | None = None) -> Table:
    tally = report.tally
    table = Table(title=f"sessionflow run {report.run} -> {lake}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    if config is not None:
        table.add_row("config", config.origin)
    table.add_row("records read", f"{tally.records:,}")
    table.add_row("valid events", f"{tally.events:,}")
    table.add_row("rejected", f"{tally.rejected_total:,}")
    for reason, count in sorted(tally.rejected.items(), key=lambda item: -item[1]):
        table.add_row(f"  {reason}", f"{count:,}")
    table.add_row("duplicates", f"{tally.duplicates:,}")
    table.add_row("late (kept, flagged)", f"{tally.late:,}")
    table.add_row("sessions closed", f"{tally.sessions:,}")
    if tally.blank:
        table.add_row("blank lines skipped", f"{tally.blank:,}")
    pending = tally.records - tally.events - tally.rejected_total - tally.duplicates
    if pending:
        table.add_row("buffered in state", f"{pending:,}")
    table.add_row("seconds", f"{report.seconds:.2f}")
    table.add_row("records/s", f"{report.records_per_second:,.0f}")
    return table


# What the demo writes in its folder; an existing one is replaced only with --force.
DEMO_FILES = ("sessionflow.toml", "events.jsonl.gz", "lake", "report.html")


def demo(folder: Path, *, events: int, machines: int, force: bool = False) -> int:
    """The first command a newcomer runs: a config, a feed, a lake, what is in it, and its report."""
    from sessionflow.config import EXAMPLE_CONFIG
    from sessionflow.errors import OutputError, UsageError
    from sessionflow.report.commands import write_report
    from sessionflow.synthetic import FeedShape, write_feed

    console = Console(stderr=True)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    present = [name for name in DEMO_FILES if (folder / name).exists() or (folder / name).is_symlink()]
    if present and not force:
        raise UsageError(
            f"{folder} already holds {', '.join(present)}; the demo would replace them: "
            "pass --force, or choose another --dir"
        )
    config_path = folder / "sessionflow.toml"
    feed = folder / "events.jsonl.gz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        config_path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
        written = write_feed(FeedShape(events=events, machines=machines, seed=7), str(feed))
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the demo: {exc.strerror or exc}") from None
    console.print(f"generated {written:,} raw records from {machines:,} machines -> {feed}")
    lake = folder / "lake"
    report = run([str(feed)], lake, Config.load(config_path), overwrite=True)
    console.print(summary_table(report, lake))
    page = write_report(lake, folder / "report.html", command=shlex.join(["sessionflow", "report", str(lake)])).path
    console.print(lake_tour(lake))
    # Commands as they are typed: whole lines, never wrapped to the terminal's width (a log keeps them so).
    lines = [
        "",
        "Explore it with SQL (DuckDB, installed with sessionflow), for example:",
        "  " + shlex.join(["sessionflow", "query", str(lake), QUERY_EXAMPLE]),
        "Run it yourself:",
        "  "
        + shlex.join(
            ["sessionflow", "run", str(feed), "--out", str(lake), "--config", str(config_path), "--overwrite"]
        ),
        "The report (charts of what is in the lake; open it in a browser):",
        f"  {page}",
    ]
    sys.stderr.write("\n".join(lines) + "\n")
    return EXIT_OK


QUERY_EXAMPLE = "SELECT event_type, count(*) AS events FROM events GROUP BY ALL ORDER BY 2 DESC"


def lake_tour(lake: Path) -> Table:
    """What is in a lake, as the report's headline says it (any lake: ``sessionflow report`` prints it too)."""
    from sessionflow.report import figures
    from sessionflow.report.lake_db import open_lake

    db, _ = open_lake(lake)
    figures.select_days(db, None, None)
    table = Table(title="what is in the lake", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    for label, value, detail in figures.headline(db):
        table.add_row(label, value, detail)
    return table
