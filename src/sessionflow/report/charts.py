"""Charts as inline SVG text: no script, no font or style sheet from anywhere but the page itself.

Each function takes a :class:`~sessionflow.report.figures.Figure` and returns one ``<svg>``
element with ``class="chart"`` and ``data-marks`` (how many bars, points or steps it drew); every
mark has a ``<title>``, the browser's own tooltip. Pure functions of their input.
"""

from __future__ import annotations

import math
from html import escape

from sessionflow.report.figures import Figure

WIDTH = 640
HEIGHT = 300
PALETTE = ("#3b6ea8", "#e07b39", "#4c9a6a", "#b5495b", "#8a6bb8", "#7f8c8d", "#c9a227")
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 56


def _number(value: float, unit: str = "") -> str:
    if unit == "%":
        return f"{value:.1f}%"
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if abs(value) >= 10_000:
        return f"{value / 1_000:.0f}k"
    if abs(value) >= 1_000:
        return f"{value / 1_000:.1f}k"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _full(value: float, unit: str = "") -> str:
    return f"{value:.2f}%" if unit == "%" else f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least ``top``: 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(ticks[-1] + step)
    return ticks


def _svg(figure: Figure, body: list[str], marks: int, height: int = HEIGHT) -> str:
    label = escape(figure.title)
    return (
        f'<svg class="chart" data-marks="{marks}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{label}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def _y_axis(ticks: list[float], y_of: object, unit: str) -> list[str]:
    parts = []
    for tick in ticks:
        y = y_of(tick)  # type: ignore[operator]
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick, unit)}</text>'
        )
    return parts


def _x_labels(labels: list[str], x_of: object, band: float) -> list[str]:
    """Category labels under the plot: every one when they fit, else every n-th, turned when long."""
    widest = max((len(label) for label in labels), default=0)
    turn = widest * 6.5 > band
    every = max(1, math.ceil(len(labels) / 24)) if turn else max(1, math.ceil(widest * 6.5 / max(band, 1)))
    parts = []
    base = HEIGHT - _BOTTOM + 14
    for index, label in enumerate(labels):
        if index % every:
            continue
        x = x_of(index)  # type: ignore[operator]
        text = escape(label)
        if turn:
            parts.append(
                f'<text class="tick" x="{x:.1f}" y="{base:.1f}" text-anchor="end" '
                f'transform="rotate(-35 {x:.1f} {base:.1f})">{text}</text>'
            )
        else:
            parts.append(f'<text class="tick" x="{x:.1f}" y="{base:.1f}" text-anchor="middle">{text}</text>')
    return parts


def legend_rows(names: list[str]) -> list[list[tuple[str, float]]]:
    """The legend's entries (name, x), in rows that fit the chart's width."""
    rows: list[list[tuple[str, float]]] = [[]]
    x = float(_LEFT)
    for name in names:
        width = 24 + 6.6 * len(name)
        if rows[-1] and x + width > WIDTH - _RIGHT:
            rows.append([])
            x = float(_LEFT)
        rows[-1].append((name, x))
        x += width
    return rows


def _legend(names: list[str], top: float) -> list[str]:
    parts = []
    index = 0
    for number, row in enumerate(legend_rows(names)):
        y = top + 18 * number
        for name, x in row:
            color = PALETTE[index % len(PALETTE)]
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="10" height="10" rx="2" fill="{color}"/>'
                f'<text class="legend" x="{x + 14:.1f}" y="{y + 9:.1f}">{escape(name)}</text>'
            )
            index += 1
    return parts


def _with_legend(names: list[str]) -> tuple[list[str], int]:
    """The legend under the plot, and the chart's height with it."""
    rows = len(legend_rows(names))
    return _legend(names, HEIGHT - 14), HEIGHT + 18 * (rows - 1)


def _plot(figure: Figure, top: float) -> tuple[list[float], object, float]:
    ticks = nice_ticks(top)
    scale = (HEIGHT - _TOP - _BOTTOM) / ticks[-1]
    floor = HEIGHT - _BOTTOM

    def y_of(value: float) -> float:
        return floor - value * scale

    return ticks, y_of, scale


def bars(figure: Figure, stacked: bool = False) -> str:
    """Vertical bars, one per category; several series side by side, or ``stacked``."""
    labels = figure.labels
    series = figure.series
    n = max(len(labels), 1)
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))] if stacked else []
    top = max(totals or [max(s.values, default=0) for s in series] or [0])
    ticks, y_of, scale = _plot(figure, top)
    band = (WIDTH - _LEFT - _RIGHT) / n
    groups = 1 if stacked else len(series)
    width = max(1.0, min(band * 0.78 / groups, 64.0))
    inset = (band - width * groups) / 2  # the group centred in its band
    body = _y_axis(ticks, y_of, figure.unit)
    marks = 0
    for i, label in enumerate(labels):
        base = float(HEIGHT - _BOTTOM)
        for k, one in enumerate(series):
            value = one.values[i]
            height = value * scale
            x = _LEFT + i * band + inset + (0 if stacked else k * width)
            y = base - height
            color = PALETTE[k % len(PALETTE)]
            tip = f"{label}: {one.name} {_full(value, figure.unit)}"
            body.append(
                f'<rect class="mark" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{max(height, 0):.1f}" '
                f'fill="{color}"><title>{escape(tip)}</title></rect>'
            )
            marks += 1 if value > 0 else 0
            if stacked:
                base = y
    body.append(
        f'<line class="axis" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{HEIGHT - _BOTTOM}" y2="{HEIGHT - _BOTTOM}"/>'
    )
    body += _x_labels(labels, lambda i: _LEFT + (i + 0.5) * band, band)
    height = HEIGHT
    if len(series) > 1:
        legend, height = _with_legend([one.name for one in series])
        body += legend
    return _svg(figure, body, marks, height)


def lines(figure: Figure) -> str:
    """One line per series over the categories (days), a dot on each value."""
    labels = figure.labels
    top = max((max(s.values, default=0) for s in figure.series), default=0)
    ticks, y_of, _ = _plot(figure, top)
    n = len(labels)
    span = WIDTH - _LEFT - _RIGHT
    band = span / max(n, 1)

    def x_of(i: float) -> float:
        return _LEFT + (i + 0.5) * band

    body = _y_axis(ticks, y_of, figure.unit)
    marks = 0
    for k, one in enumerate(figure.series):
        color = PALETTE[k % len(PALETTE)]
        points = [(x_of(i), y_of(v)) for i, v in enumerate(one.values)]  # type: ignore[operator]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline class="line" points="{path}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for (x, y), label, value in zip(points, labels, one.values, strict=True):
            tip = f"{label}: {one.name} {_full(value, figure.unit)}"
            body.append(
                f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                f"<title>{escape(tip)}</title></circle>"
            )
            marks += 1
    body.append(
        f'<line class="axis" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{HEIGHT - _BOTTOM}" y2="{HEIGHT - _BOTTOM}"/>'
    )
    body += _x_labels(labels, x_of, band)
    legend, height = _with_legend([one.name for one in figure.series])
    return _svg(figure, body + legend, marks, height)


def hbars(figure: Figure) -> str:
    """Horizontal bars, one per category, its label on the left and its value at its end."""
    labels = figure.labels
    values = figure.series[0].values if figure.series else []
    row = 26
    label_width = min(300, max((len(label) for label in labels), default=4) * 6.6 + 12)
    height = max(60, _TOP + row * len(labels) + 8)
    left = label_width
    span = WIDTH - left - 70
    top = max(values, default=0) or 1
    body = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = _TOP + i * row
        width = max(value / top * span, 0)
        body.append(
            f'<text class="tick" x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(_short(label, 46))}</text>'
            f'<rect class="mark" x="{left}" y="{y + 3}" width="{width:.1f}" height="{row - 8}" rx="2" '
            f'fill="{PALETTE[0]}"><title>{escape(label)}: {_full(value, figure.unit)}</title></rect>'
            f'<text class="value" x="{left + width + 6:.1f}" y="{y + 15}">{_number(value, figure.unit)}</text>'
        )
    return _svg(figure, body, sum(1 for value in values if value > 0), height)


def funnel(figure: Figure) -> str:
    """Centred bars narrowing from step to step, each with its count and its share of the step before."""
    labels = figure.labels
    values = figure.series[0].values if figure.series else []
    row = 44
    height = _TOP + row * len(labels) + 8
    top = max(values, default=0) or 1
    centre = WIDTH / 2 + 60
    span = WIDTH - 260
    body = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = _TOP + i * row
        width = max(value / top * span, 2)
        before = values[i - 1] if i else value
        share = f"{100 * value / before:.0f}% of the step before" if i and before else "every session with it"
        body.append(
            f'<text class="tick" x="{centre - span / 2 - 10:.1f}" y="{y + 23}" text-anchor="end">{escape(label)}</text>'
            f'<rect class="mark" x="{centre - width / 2:.1f}" y="{y + 4}" width="{width:.1f}" height="{row - 10}" '
            f'rx="3" fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(label)}: {_full(value)} sessions, '
            f"{escape(share)}</title></rect>"
            f'<text class="inbar" x="{centre:.1f}" y="{y + 24}" text-anchor="middle">{_number(value)}</text>'
        )
    return _svg(figure, body, sum(1 for value in values if value > 0), height)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def draw(figure: Figure) -> str:
    """The figure's chart, by its kind."""
    if figure.kind == "bars":
        return bars(figure)
    if figure.kind == "stacked":
        return bars(figure, stacked=True)
    if figure.kind == "lines":
        return lines(figure)
    if figure.kind == "hbars":
        return hbars(figure)
    if figure.kind == "funnel":
        return funnel(figure)
    raise ValueError(f"no chart of kind {figure.kind!r}")
