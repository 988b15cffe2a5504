"""What a person sees around a run: a progress bar on a terminal, a summary at the end."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from sessionflow.config import Config
from sessionflow.exitcodes import EXIT_OK, EXIT_QUALITY
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
) -> int:
    console = Console(stderr=True)
    show_progress = console.is_terminal and not quiet
    if show_progress:
        own = [lake] if state_path is None else [lake, state_path]
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
            )
    else:
        report = run(inputs, lake, config, state_path=state_path, flush=flush, overwrite=overwrite, workers=workers)
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
    elif not quiet:
        console.print(summary_table(report, lake))
    tally = report.tally
    if max_reject_rate is not None and tally.records and tally.rejected_total / tally.records > max_reject_rate:
        console.print(
            f"[red]rejected {tally.rejected_total} of {tally.records} records "
            f"({tally.rejected_total / tally.records:.2%}), over --max-reject-rate {max_reject_rate:.2%}[/red]"
        )
        return EXIT_QUALITY
    return EXIT_OK


def summary_table(report: RunReport, lake: Path) -> Table:
    tally = report.tally
    table = Table(title=f"sessionflow run {report.run} -> {lake}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
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
    table.add_row("records/s", f"{report.events_per_second:,.0f}")
    return table


def demo(folder: Path, *, events: int, machines: int) -> int:
    """The first command a newcomer runs: a config, a feed, a lake, and what is in it."""
    from sessionflow.config import EXAMPLE_CONFIG
    from sessionflow.synthetic import FeedShape, write_feed

    console = Console(stderr=True)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "sessionflow.toml"
    config_path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    feed = folder / "events.jsonl.gz"
    written = write_feed(FeedShape(events=events, machines=machines, seed=7), str(feed))
    console.print(f"generated {written:,} raw records from {machines:,} machines -> {feed}")
    lake = folder / "lake"
    report = run([str(feed)], lake, Config.load(config_path), overwrite=True)
    console.print(summary_table(report, lake))
    console.print(_lake_tour(lake))
    console.print(
        "\nExplore it with DuckDB, for example:\n"
        f"  duckdb -c \"SELECT event_type, count(*) FROM read_parquet('{lake}/events/*/*.parquet', "
        'hive_partitioning=true) GROUP BY ALL ORDER BY 2 DESC"\n'
        f"Run it yourself:  sessionflow run {feed} --out {lake} --config {config_path} --overwrite"
    )
    return EXIT_OK


def _lake_tour(lake: Path) -> Table:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    sessions = ds.dataset(lake / "sessions", format="parquet", partitioning="hive").to_table(
        columns=["duration_ms", "event_count", "first_event_type"]
    )
    events = ds.dataset(lake / "events", format="parquet", partitioning="hive").to_table(
        columns=["event_type", "event_date"]
    )
    table = Table(title="what is in the lake", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("days", f"{len(pc.unique(events['event_date'])):,}")
    table.add_row("sessions", f"{sessions.num_rows:,}")
    if sessions.num_rows:
        table.add_row("median session minutes", f"{pc.approximate_median(sessions['duration_ms']).as_py() / 60000:.1f}")
        table.add_row("mean events per session", f"{pc.mean(sessions['event_count']).as_py():.1f}")
    counts = (
        events.group_by("event_type").aggregate([("event_type", "count")]).sort_by([("event_type_count", "descending")])
    )
    for row in counts.slice(0, 6).to_pylist():
        table.add_row(f"  {row['event_type']}", f"{row['event_type_count']:,}")
    return table
