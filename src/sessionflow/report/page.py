"""The report as one HTML file: its style inline, its charts inline SVG, no script, nothing fetched.

It opens from a disk or an object store's link alike. Beside every chart, the numbers it draws.
"""

from __future__ import annotations

from html import escape
from typing import Any

from sessionflow.report.charts import draw
from sessionflow.report.figures import Figure, Report

STYLE = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --card: #ffffff; --page: #f5f7fa; --accent: #3b6ea8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--page); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { padding: 28px 40px 12px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 2px 0; color: var(--muted); }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
main { padding: 8px 40px 40px; }
.headline { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px;
  margin: 8px 0 24px; }
.kpi { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.kpi .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.kpi .value { font-size: 21px; font-weight: 600; margin-top: 2px; }
.kpi .detail { color: var(--muted); font-size: 12px; min-height: 1.2em; }
.figure { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 18px 20px;
  margin-bottom: 18px; display: grid; grid-template-columns: minmax(0, 3fr) minmax(240px, 2fr);
  gap: 24px; }
.figure h2 { grid-column: 1 / -1; margin: 0; font-size: 17px; }
.figure .note { grid-column: 1 / -1; margin: -18px 0 0; color: var(--muted); }
.figure svg.chart { width: 100%; height: auto; display: block; }
.numbers { max-height: 340px; overflow: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { color: var(--muted); font-weight: 600; position: sticky; top: 0; background: var(--card); }
th:first-child, td:first-child { text-align: left; }
td.long { white-space: normal; }
.notes { color: var(--muted); }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .axis { stroke: #9aa5b1; stroke-width: 1; }
svg .tick, svg .legend, svg .value { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg .inbar { font: 600 12px system-ui, sans-serif; fill: #ffffff; }
svg .mark:hover { opacity: .8; }
@media (max-width: 900px) {
  .figure { grid-template-columns: 1fr; }
  header, main { padding-left: 16px; padding-right: 16px; }
}
"""


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return escape(str(value if value is not None else ""))
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return escape(str(value))


def _table(figure: Figure) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in figure.headers)
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="long">{_cell(value)}</td>'
            if isinstance(value, str) and len(value) > 28  # a path may wrap; short values stay on one line
            else f"<td>{_cell(value)}</td>"
            for value in row
        )
        + "</tr>"
        for row in figure.rows
    )
    return f'<div class="numbers"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _figure(figure: Figure) -> str:
    return (
        f'<section class="figure" id="{escape(figure.key)}"><h2>{escape(figure.title)}</h2>'
        f'<p class="note">{escape(figure.note)}</p><div class="plot">{draw(figure)}</div>{_table(figure)}</section>'
    )


def render(report: Report, *, version: str, command: str) -> str:
    """The whole page."""
    days = f"{report.days[0]} to {report.days[1]}" if report.days else "no events"
    kpis = "".join(
        f'<div class="kpi"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
        f'<div class="detail">{escape(detail)}</div></div>'
        for label, value, detail in report.headline
    )
    notes = "".join(f"<p>{escape(note)}</p>" for note in report.notes)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sessionflow report: {escape(report.lake)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>What is in the lake</h1><p><code>{escape(report.lake)}</code> &middot; {escape(days)}</p>"
        f"<p>Made by sessionflow {escape(version)} with <code>{escape(command)}</code>. All times UTC.</p></header>"
        f'<main><div class="headline">{kpis}</div><div class="notes">{notes}</div>'
        + "".join(_figure(figure) for figure in report.figures)
        + "</main></body></html>\n"
    )
