"""The strategy panel in a real JupyterLab, driven by headless Chromium (tests/jupyter_browser.py):
a notebook builds the panel on the embedded sample, a key press moves a slider, and the chart and
the statistics must redraw in the page, not only in Python. The saved notebook, converted as the
pipeline converts reports, must show a picture of the panel instead of the widget's text."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser_check import check_page, ensure_chromium
from jupyter_browser import (
    cell_errors,
    chromium_page,
    jupyter_lab,
    open_notebook,
    run_all_cells,
    write_notebook,
)

from aiopt_lib.runs.runner import notebook_to_html

pytestmark = pytest.mark.slow

PANEL_CELLS = [
    "import aiopt_lib as ai\n"
    "bars = ai.load_sample()\n"
    'template = ai.builtin_template("ema_cross")\n'
    "oos_start = bars['ts'][int(bars.height * 0.8)]",
    "panel = ai.strategy_panel(bars, template, oos_start=oos_start)\npanel",
]

# The panel's state as the page shows it: which update the chart drew, the chart's pixels, the
# total return the statistics table shows, the status line, the slider's readout.
_STATE = """() => {
  const chart = document.querySelector('.aiopt-panel-chart');
  const canvas = chart && chart.querySelector('canvas');
  const stat = document.querySelector('.aiopt-stats tr[data-stat="total return"] td');
  const fast = [...document.querySelectorAll('.widget-slider')]
    .find(s => s.querySelector('label') && s.querySelector('label').textContent === 'fast');
  return {
    seq: chart ? chart.getAttribute('data-seq') : null,
    pixels: canvas ? canvas.toDataURL() : null,
    total_return: stat ? stat.getAttribute('data-value') : null,
    status: (document.querySelector(".aiopt-status") || {}).textContent || null,
    fast: fast ? fast.querySelector('.widget-readout').textContent.trim() : null,
    charts: document.querySelectorAll('.aiopt-panel-chart').length,
    embeds: document.querySelectorAll('.vega-embed').length,
    pictures: document.querySelectorAll('.aiopt-panel-picture').length,
    trades: document.querySelectorAll('.aiopt-trades tbody tr').length,
  };
}"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    found = ensure_chromium()
    assert found is not None, "ensure_chromium could not install Debian's chromium package"
    return found


def test_slider_key_press_redraws_chart_and_statistics_in_jupyterlab(tmp_path, chromium) -> None:
    notebook = write_notebook(tmp_path / "panel.ipynb", PANEL_CELLS)
    errors: list[str] = []
    with jupyter_lab(tmp_path, timeout=60) as lab, chromium_page(chromium=chromium) as page:
        page.set_default_timeout(45_000)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        foreign: list[str] = []  # offline: the page asks nothing of anyone but our server
        page.on(
            "request",
            lambda r: (
                None
                if r.url.startswith((lab.url, "data:", "blob:", "about:"))
                else foreign.append(r.url)
            ),
        )
        open_notebook(page, lab, notebook.name, timeout=45)
        run_all_cells(page, timeout=60)
        assert cell_errors(page) == []
        page.wait_for_selector('.aiopt-panel-chart[data-seq="1"] canvas')
        before = page.evaluate(_STATE)
        # One live chart: no second, stale one, and the report's picture stays out of the page.
        assert (before["charts"], before["embeds"], before["pictures"]) == (1, 1, 0)
        assert before["fast"] == "12" and before["trades"] == 50
        assert before["total_return"] and "run 1" in before["status"]

        handle = page.locator(".widget-slider", has=page.get_by_text("fast", exact=True))
        handle.locator(".noUi-handle").focus()
        started = time.monotonic()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            """() => {
              const c = document.querySelector('.aiopt-panel-chart');
              return c && c.getAttribute('data-seq') === '2';
            }""",
            timeout=20_000,
        )
        page.wait_for_function(
            """(old) => {
              const s = document.querySelector('.aiopt-stats tr[data-stat="total return"] td');
              return s && s.getAttribute('data-value') !== old;
            }""",
            arg=before["total_return"],
            timeout=20_000,
        )
        elapsed = time.monotonic() - started
        after = page.evaluate(_STATE)
        assert after["fast"] == "13"
        assert after["pixels"] != before["pixels"]  # the canvas was drawn again
        assert after["total_return"] != before["total_return"]
        assert "run 2" in after["status"] and "fast=13" in after["status"]
        assert after["charts"] == 1 and after["embeds"] == 1
        # The live view holds the new title and data, the out-of-sample band is still there.
        view = page.evaluate(
            """() => {
              const panel = Object.values(window.aioptPanels)[0];
              const view = panel.views[0];
              return {title: view.signal('panel_title'), oos: view.data('oos').length,
                      equity: view.data('equity').length, views: panel.views.length};
            }"""
        )
        assert "fast=13" in view["title"] and view["oos"] == 1 and view["views"] == 1
        assert 0 < view["equity"] <= 1_800
        assert elapsed < 10, f"the panel took {elapsed:.1f} s to redraw"
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=20_000
        )
    ours = [e for e in errors if re.search(r"vega|aiopt|panel", e, re.IGNORECASE)]
    assert ours == [], errors
    assert foreign == []
    assert "news" not in lab.log_tail(100_000).lower()  # no announcement fetch was attempted

    # The saved notebook as a report: the picture of the panel, not `VBox(children=...`.
    report = notebook_to_html(notebook, tmp_path / "panel.html")
    html = report.read_text()
    assert "VBox(" not in html and "IntSlider(" not in html
    assert html.count('class="aiopt-panel-picture"') == 1
    assert 'data-stat="total return"' in html
    check = check_page(report, chromium=chromium)
    assert check.problems({"images": 1, "vega_charts": 0}) == []
