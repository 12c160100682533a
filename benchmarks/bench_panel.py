"""The strategy panel's update in a real browser: slider moved -> chart redrawn, ours against the
previous panel, in one run.

Both panels sweep the built-in ``ema_cross`` template on the embedded sample (``load_sample()``,
6,225 hourly EUR/USD bars of 2017) in JupyterLab (tests/jupyter_browser.py: a local server, its
own kernel, headless Chromium through Playwright):

* ours: ``aiopt_lib.viz.widgets.strategy_panel(bars, template, oos_start=...)`` displayed as
  ``panel``: the chart is drawn once; a change sends the changed datasets to the live view.
* previous: the panel as it was before (``aiopt_lib/viz/widgets.py`` at commit ``PREVIOUS``, read
  with ``git show``), displayed as notebook 04 did (``display(panel.widget)``) with the offline
  Altair renderer: every change built an Altair chart of ~3,200 inline rows, validated it and
  sent the whole spec, which the browser compiled into a new view.

One update is timed in the page from the key press on the ``fast`` slider's handle (right and
left arrows alternately, so each press changes the backtest) to the chart redrawn: ours when the
view reports the update drawn on its canvas, the previous one when the new chart's SVG exists.
Median over ``--updates`` presses after two warm-up presses. The Python side (``refresh`` of the
panel: backtest, statistics, tables, chart data) and the bytes one update sends are measured in
this process on the same data. When the previous panel cannot be read from git, the issue's
figures (650-1,400 ms per update) stand in and the JSON says so.

Prints a table, then one JSON object as the last line (ours and the peer in ms per update;
speedup = peer / ours).

    .venv/bin/python benchmarks/bench_panel.py [--updates 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from jupyter_browser import (  # noqa: E402
    cell_errors,
    chromium_page,
    jupyter_lab,
    open_notebook,
    run_all_cells,
    write_notebook,
)

from aiopt_lib.data.sources import load_sample  # noqa: E402
from aiopt_lib.strategy.search import builtin_template  # noqa: E402
from aiopt_lib.viz import charts, widgets  # noqa: E402

PREVIOUS = "0b3664342fb5b1384a7477d3c1e10cc7b936d108"  # the last commit with the previous panel
ISSUE_FIGURES_MS = (650.0, 1400.0)  # issue 16: one update in the browser before this change

SETUP = (
    "import aiopt_lib as ai\n"
    "bars = ai.load_sample()\n"
    'template = ai.builtin_template("ema_cross")\n'
    "oos_start = bars['ts'][int(bars.height * 0.8)]"
)
OURS_CELLS = [SETUP, "panel = ai.strategy_panel(bars, template, oos_start=oos_start)\npanel"]
PREVIOUS_CELLS = [
    SETUP,
    "import importlib.util\n"
    "from IPython.display import display\n"
    "from aiopt_lib.viz import charts\n"
    "charts.enable_offline_altair()\n"
    "spec = importlib.util.spec_from_file_location('previous_widgets', 'previous_widgets.py')\n"
    "previous = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(previous)\n"
    "panel = previous.strategy_panel(bars, template)\n"
    "display(panel.widget)",
]

# Page side: arm a timer on the next key press on the slider handle, and stop it when the chart
# has been redrawn. ``kind`` says what "redrawn" means for each panel.
_ARM = """([kind]) => {
  const box = document.querySelector('.jp-OutputArea-output .widget-vbox');
  const handle = [...document.querySelectorAll('.widget-slider')]
    .find(s => s.querySelector('label').textContent === 'fast').querySelector('.noUi-handle');
  const ours = () => document.querySelector('.aiopt-panel-chart');
  const old = () => document.querySelector('.aiopt-vega');
  const seq = ours() ? Number(ours().getAttribute('data-seq')) : null;
  const oldId = old() ? old().id : null;
  const redrawn = kind === 'ours'
    ? () => ours() && Number(ours().getAttribute('data-seq')) > seq
    : () => old() && old().id !== oldId && old().querySelector('.mark-line path') !== null;
  const bench = window.__bench = {t0: null, t1: null};
  handle.addEventListener('keydown', () => { bench.t0 = performance.now(); },
    {capture: true, once: true});
  const observer = new MutationObserver(() => {
    if (bench.t0 !== null && bench.t1 === null && redrawn()) {
      bench.t1 = performance.now();
      observer.disconnect();
    }
  });
  observer.observe(document.body, {subtree: true, childList: true, attributes: true});
  handle.focus();
  return box !== null;
}"""


def previous_module(folder: Path) -> Path | None:
    """The previous ``widgets.py`` written to ``folder`` (None without git or the commit)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{PREVIOUS}:aiopt_lib/viz/widgets.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path = folder / "previous_widgets.py"
    path.write_bytes(source)
    return path


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("previous_widgets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def browser_updates(page: Any, lab: Any, name: str, kind: str, updates: int) -> list[float]:
    """Milliseconds from key press to redrawn chart for ``updates`` presses (after 2 warm-ups)."""
    open_notebook(page, lab, name, timeout=60)
    run_all_cells(page, timeout=120)
    errors = cell_errors(page)
    if errors:
        raise RuntimeError(f"{name}: {errors}")
    ready = ".aiopt-panel-chart canvas" if kind == "ours" else ".aiopt-vega .mark-line path"
    page.wait_for_selector(ready, timeout=60_000)
    page.locator(".widget-slider").first.scroll_into_view_if_needed()
    times = []
    for i in range(updates + 2):
        page.evaluate(_ARM, [kind])
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function("() => window.__bench.t1 !== null", timeout=30_000, polling=50)
        elapsed = page.evaluate("() => window.__bench.t1 - window.__bench.t0")
        if i >= 2:
            times.append(float(elapsed))
        time.sleep(0.3)  # let the kernel go idle and the page settle
    for kernel in lab.api("/api/kernels") or []:  # the next notebook runs alone
        lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")
    return times


def python_side(module: ModuleType, updates: int, **kwargs: Any) -> tuple[float, float]:
    """Median refresh time (ms) of ``module``'s panel and the bytes one update sends (KiB)."""
    bars = load_sample()
    panel = module.strategy_panel(bars, builtin_template("ema_cross"), **kwargs)
    times, sizes = [], []
    for i in range(updates + 2):
        started = time.perf_counter()
        panel.set(fast=13 if i % 2 == 0 else 12)
        elapsed = (time.perf_counter() - started) * 1000
        if i >= 2:
            times.append(elapsed)
            sizes.append(sent_bytes(panel))
    return statistics.median(times), statistics.median(sizes) / 1024


def sent_bytes(panel: Any) -> int:
    """What an update of ``panel`` put into its widgets for the browser."""
    if hasattr(panel, "payload_bytes"):
        return int(panel.payload_bytes)
    chart = panel.chart_output.outputs[0]["data"]
    return (
        len(chart.get("text/html", "")) + len(panel.metrics_html) + len(panel.status_widget.value)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()

    charts.enable_offline_altair()  # the previous panel's chart renderer, as notebook 04 had it
    with tempfile.TemporaryDirectory(prefix="aiopt-bench-panel-") as folder:
        root = Path(folder)
        previous_path = previous_module(root)
        bars = load_sample()
        oos_start = bars["ts"][int(bars.height * 0.8)]
        ours_py_ms, ours_kib = python_side(widgets, args.updates, oos_start=oos_start)
        old_py_ms = old_kib = None
        if previous_path is not None:
            old_py_ms, old_kib = python_side(load_module(previous_path), args.updates)

        write_notebook(root / "ours.ipynb", OURS_CELLS)
        write_notebook(root / "previous.ipynb", PREVIOUS_CELLS)
        with jupyter_lab(root, timeout=90) as lab, chromium_page() as page:
            ours = browser_updates(page, lab, "ours.ipynb", "ours", args.updates)
            old = (
                browser_updates(page, lab, "previous.ipynb", "previous", args.updates)
                if previous_path is not None
                else None
            )

    ours_ms = statistics.median(ours)
    print(f"strategy panel update on the sample ({bars.height:,} bars), median of {len(ours)}:")
    print(f"{'':34}{'browser ms':>12}{'min-max':>16}{'python ms':>11}{'KiB sent':>10}")
    print(
        f"{'ours (live view, changed data)':34}{ours_ms:>12.0f}"
        f"{f'{min(ours):.0f}-{max(ours):.0f}':>16}{ours_py_ms:>11.1f}{ours_kib:>10.1f}"
    )
    if old is not None:
        peer_ms = statistics.median(old)
        print(
            f"{'previous (validated inline data)':34}{peer_ms:>12.0f}"
            f"{f'{min(old):.0f}-{max(old):.0f}':>16}{old_py_ms:>11.1f}{old_kib:>10.1f}"
        )
        source = f"measured in this run (aiopt_lib/viz/widgets.py at {PREVIOUS[:10]})"
    else:
        peer_ms = sum(ISSUE_FIGURES_MS) / 2
        print(f"{'previous (issue 16 figures)':34}{'650-1400':>12}")
        source = "issue 16's figures (650-1400 ms; midpoint), the previous panel was not in git"
    print(f"speedup {peer_ms / ours_ms:.1f}x (today: 650-1,400 ms per update per issue 16)")
    result = {
        "benchmark": "widget_panel_update",
        "ours": round(ours_ms, 1),
        "peer": "previous panel (Altair validated inline data)",
        "peer_value": round(peer_ms, 1),
        "peer_source": source,
        "unit": "ms",
        "speedup": round(peer_ms / ours_ms, 2),
        "ours_python_ms": round(ours_py_ms, 1),
        "ours_payload_kib": round(ours_kib, 1),
        "peer_python_ms": None if old_py_ms is None else round(old_py_ms, 1),
        "peer_payload_kib": None if old_kib is None else round(old_kib, 1),
        "updates": len(ours),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
