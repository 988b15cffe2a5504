"""The report in a real browser: headless Chromium (Debian's, ``make chromium-check``) through
Playwright, with no network: the page must load nothing but itself, log no error to its console,
and draw every chart. The page as rendered is kept as ``build/test-artifacts/report.png``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionflow.report.commands import write_report

CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> object:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (make install)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: make chromium-check installs Debian's chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_the_report_renders_every_chart_with_no_network_and_no_console_error(
    lake: Path, tmp_path: Path, browser: object
) -> None:
    page_file = write_report(lake, tmp_path / "report.html").path
    url = page_file.as_uri()
    context = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)  # type: ignore[attr-defined]
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")

    charts = page.query_selector_all("svg.chart")
    sections = page.query_selector_all("section.figure")
    assert len(charts) >= 6
    assert len(charts) == len(sections), "every figure has its chart"
    for chart in charts:
        label = chart.get_attribute("aria-label")
        box = chart.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 40, label
        marks = chart.query_selector_all(".mark")
        drawn = [
            mark for mark in marks if (b := mark.bounding_box()) is not None and b["width"] > 0 and b["height"] > 0
        ]
        assert drawn, f"chart {label!r} draws nothing"
        assert int(chart.get_attribute("data-marks") or 0) <= len(drawn)
    for section in sections:
        assert section.query_selector_all("table tbody tr"), "every chart has its numbers beside it"

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "report.png"), full_page=True)
    context.close()
    assert requests == [url], f"the page asked for more than itself: {requests}"
    assert errors == []


def test_the_page_holds_no_script_and_names_no_other_resource(lake: Path, tmp_path: Path) -> None:
    import re

    text = write_report(lake, tmp_path / "report.html").path.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert references == []
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) == {"http://www.w3.org/2000/svg"}  # the SVG namespace
