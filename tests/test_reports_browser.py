"""Reports opened in headless Chromium: no console errors, charts counted as rendered (not just
present in the HTML), screenshots kept as artifacts (in tmp_path, and copied to
``$AIOPT_TEST_ARTIFACTS/reports_browser/`` when that variable is set).

The reports are built the way the pipeline builds them (notebook outputs from the library's chart
functions, converted by ``runner.notebook_to_html``) without running the pipeline."""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path

import altair as alt
import nbformat
import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest
from browser_check import PageCheck, check_page, ensure_chromium, expected_charts
from PIL import Image

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.labels import class_balance, triple_barrier_labels
from aiopt_lib.features.render import RenderSpec, render_windows
from aiopt_lib.runs.runner import notebook_to_html
from aiopt_lib.viz import charts


@pytest.fixture(scope="module")
def chromium() -> Path:
    found = ensure_chromium()
    if found is None:
        pytest.skip(
            "no Chromium: install Debian's 'chromium' package (ensure_chromium installs it only "
            "as root with apt-get) or set AIOPT_CHROMIUM"
        )
    return found


@pytest.fixture
def offline_altair(monkeypatch):
    """The offline renderer as a fresh kernel has it: the first chart carries the vega bundle."""
    previous = alt.renderers.active
    charts.enable_offline_altair()
    monkeypatch.setattr(charts, "_bundle_emitted", False)
    monkeypatch.setattr(charts, "_plotly_emitted", False)
    yield
    alt.renderers.enable(previous)


def keep_artifact(path: Path) -> None:
    folder = os.environ.get("AIOPT_TEST_ARTIFACTS")
    if folder:
        target = Path(folder) / "reports_browser"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.name)


def executed_notebook(path: Path, title: str, bundles: list[dict[str, str]]) -> Path:
    """A notebook as papermill leaves it: a markdown title, then one code cell per output."""
    cells = [nbformat.v4.new_markdown_cell(f"# {title}")]
    for i, bundle in enumerate(bundles, start=1):
        cell = nbformat.v4.new_code_cell(f"output_{i}", execution_count=i)
        cell.outputs = [nbformat.v4.new_output("display_data", data=bundle)]
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells)
    nbformat.write(nb, str(path))
    return path


def png_bundle(png: bytes) -> dict[str, str]:
    return {"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}


def assert_screenshot(path: Path, *, min_height: int) -> None:
    assert path.is_file()
    image = Image.open(path)
    assert image.size[0] == 1200 and image.size[1] >= min_height
    # a rendered page, not a blank one: many distinct colours (charts, anti-aliased text)
    colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50


def test_report_with_charts_and_images_renders_without_errors(tmp_path, chromium, offline_altair):
    bars = load_sample()
    labels = triple_barrier_labels(bars)
    price = charts.price_chart(bars)._repr_mimebundle_()
    balance = charts.class_balance_chart(class_balance(labels))._repr_mimebundle_()
    figure = go.Figure(go.Scatter(x=list(range(50)), y=np.cumsum(np.ones(50)).tolist()))
    plotly = {"text/html": charts.plotly_html(figure).data, "text/plain": "<Figure>"}
    images = render_windows(bars, np.array([100, 5000]), 64, RenderSpec(), output="png")
    notebook = executed_notebook(
        tmp_path / "report.ipynb",
        "Browser check",
        [price, png_bundle(images[0]), balance, plotly, png_bundle(images[1])],
    )
    page = notebook_to_html(notebook, tmp_path / "report.html")
    assert "<title>Browser check</title>" in page.read_text(encoding="utf-8")  # not "Notebook"

    shot = tmp_path / "report_with_charts.png"
    check = check_page(page, screenshot=shot, timeout=90)
    keep_artifact(shot)

    assert check.console_errors == () and check.exceptions == ()
    assert check.counts["vega_charts"] == check.counts["vega_charts_rendered"] == 2
    assert check.counts["plotly_charts"] == check.counts["plotly_charts_rendered"] == 1
    assert check.counts["images"] == 2 and check.counts["images_broken"] == 0
    expected = {"vega_charts_rendered": 2, "plotly_charts_rendered": 1, "images_min": 2}
    assert check.problems(expected) == [] and check.ok
    # the same page against the wrong expectation says what differs
    assert check.problems({"vega_charts_rendered": 3, "images_min": 5}) == [
        "vega_charts_rendered: 2, expected 3",
        "images: 2, expected at least 5",
    ]
    assert check.screenshot == shot
    assert_screenshot(shot, min_height=900)


def test_broken_report_reports_each_error(tmp_path, chromium, offline_altair):
    renderer = alt.renderers.get()
    good = renderer(
        alt.Chart(pl.DataFrame({"x": [1, 2, 3], "y": [2, 1, 3]}))
        .mark_line()
        .encode(x="x:Q", y="y:Q")
        .to_dict()
    )
    # a spec Vega-Lite rejects: vega-embed's promise fails, the renderer logs it to the console
    rejected = renderer({"$schema": alt.SCHEMA_URL, "mark": "no_such_mark", "data": {"values": []}})
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>broken on purpose</title></head>"
        "<body><h1>Broken</h1>"
        + good["text/html"]
        + rejected["text/html"]
        + '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAA">'
        + '<script src="missing_helper.js"></script>'
        + "<script>console.error('deliberate console error');</script>"
        + "<script>undefinedFunction();</script>"
        + "</body></html>",
        encoding="utf-8",
    )

    shot = tmp_path / "broken_page.png"
    check = check_page(page, screenshot=shot)
    keep_artifact(shot)

    assert check.title == "broken on purpose"
    assert len(check.exceptions) == 1 and "undefinedFunction is not defined" in check.exceptions[0]
    assert any(e == "deliberate console error" for e in check.console_errors)
    # the rejected spec: vega-lite's compile error, caught by the renderer and logged
    assert len(check.console_errors) == 3
    assert any("vega-lite" in e and "Error" in e for e in check.console_errors)
    assert any("ERR_FILE_NOT_FOUND" in e and "missing_helper.js" in e for e in check.console_errors)
    assert check.counts["vega_charts"] == 2 and check.counts["vega_charts_rendered"] == 1
    assert check.counts["images_broken"] == 1 and check.counts["images"] == 0
    assert not check.ok
    problems = check.problems()
    assert "1 of 2 vega_charts did not render" in problems
    assert "1 image(s) failed to decode" in problems
    assert_screenshot(shot, min_height=100)


def test_chart_without_its_bundle_is_caught(tmp_path, chromium, offline_altair, monkeypatch):
    # The trap the HTML alone does not show: a chart rendered after the kernel already emitted the
    # bundle, pasted into a page of its own, is a div and a call to a function the page lacks.
    monkeypatch.setattr(charts, "_bundle_emitted", True)
    bars = load_sample().head(300)
    notebook = executed_notebook(
        tmp_path / "no_bundle.ipynb", "No bundle", [charts.price_chart(bars)._repr_mimebundle_()]
    )
    page = notebook_to_html(notebook, tmp_path / "no_bundle.html")
    assert page.read_text(encoding="utf-8").count('class="aiopt-vega"') == 1

    check = check_page(page)

    assert check.screenshot is None
    assert any("vegaEmbed is not defined" in e for e in check.exceptions)
    assert check.counts["vega_charts"] == 1 and check.counts["vega_charts_rendered"] == 0
    assert check.problems(expected_charts("05_backtest")) == [
        *(f"uncaught exception: {e}" for e in check.exceptions),
        "1 of 1 vega_charts did not render",
        "vega_charts_rendered: 0, expected 1",
        "answers: 0, expected at least 1",
        "lockbox_mentions: 0, expected at least 1",
    ]


def test_report_conventions_in_a_real_kernel_and_browser(tmp_path, chromium):
    """The answer block, a formatted table, a sortable table (itables, its bundle inlined) and a
    raw polars frame, executed in a kernel and converted as the pipeline does: the browser finds
    the answer, a working DataTable, no console error, and flags the raw frame."""
    trades = tmp_path / "trades.parquet"
    load_sample().head(40).with_columns(pl.col("close").pct_change().alias("return")).select(
        "ts", "close", "return", "volume"
    ).write_parquet(trades)
    cells = [
        nbformat.v4.new_markdown_cell("# Conventions\n\n**Question:** does it render?"),
        nbformat.v4.new_code_cell(
            "import polars as pl\nfrom IPython.display import display\nimport aiopt_lib as ai\n"
            f"ai.configure_report_display()\nframe = pl.read_parquet({str(trades)!r})"
        ),
        nbformat.v4.new_code_cell("ai.answer('Yes: computed from the frame.')"),
        nbformat.v4.new_code_cell("ai.table(frame.head(5), title='Formatted')"),
        nbformat.v4.new_code_cell("ai.sortable_table(frame, caption='Sortable')"),
        nbformat.v4.new_code_cell(
            "with pl.Config(tbl_hide_dataframe_shape=False):\n    display(frame.head(2))"
        ),
    ]
    notebook = tmp_path / "conventions.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(notebook))
    from nbclient import NotebookClient

    executed = nbformat.read(str(notebook), as_version=4)
    NotebookClient(executed, timeout=120, kernel_name="python3").execute()
    nbformat.write(executed, str(notebook))
    page = notebook_to_html(notebook, tmp_path / "conventions.html")
    html_text = page.read_text(encoding="utf-8")
    assert "<title>Conventions</title>" in html_text
    assert not re.search(r'<script[^>]+src="https?://', html_text)

    shot = tmp_path / "conventions.png"
    check = check_page(page, screenshot=shot)
    keep_artifact(shot)

    assert check.console_errors == () and check.exceptions == ()
    assert check.counts["answers"] == 1
    assert check.counts["sortable_tables"] == 1  # DataTables took the table over, offline
    assert check.counts["shape_rows"] == 1  # the raw frame, and only it
    assert check.problems() == ["1 raw polars frame(s) ('shape: (' in the text)"]


def test_missing_page_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="page not found"):
        check_page(tmp_path / "nowhere.html")


def test_expected_charts_of_the_pipeline_reports():
    assert expected_charts("01_data_exploration") == {
        "vega_charts_rendered": 4,
        "plotly_charts_rendered": 0,
        "images_min": 2,
        "answers_min": 1,
    }
    assert expected_charts("04") == expected_charts(Path("reports/x/04_optuna_search.html"))
    assert expected_charts("04")["plotly_charts_rendered"] == 9  # three Optuna plots per fold
    assert expected_charts("05_backtest")["vega_charts_rendered"] == 1
    assert expected_charts("index") == {"answers_min": 1, "lockbox_mentions_min": 2}
    with pytest.raises(ConfigError, match="no expected charts"):
        expected_charts("06_live")


def test_problems_compares_counts_exactly_and_minimums_at_least():
    counts = {
        "vega_charts": 4,
        "vega_charts_rendered": 4,
        "plotly_charts": 0,
        "plotly_charts_rendered": 0,
        "images": 3,
        "images_broken": 0,
        "answers": 1,
        "shape_rows": 0,
        "lockbox_mentions": 0,
    }
    check = PageCheck(
        path=Path("r.html"), title="r", console_errors=(), exceptions=(), counts=counts
    )
    assert check.ok and check.problems(expected_charts("01")) == []
    assert check.problems(expected_charts("05")) == [
        "vega_charts_rendered: 4, expected 1",
        "lockbox_mentions: 0, expected at least 1",
    ]
    # a page without its answer, or with a raw polars frame, is wrong whatever its charts
    bare = PageCheck(
        path=Path("r.html"),
        title="r",
        console_errors=(),
        exceptions=(),
        counts={**counts, "answers": 0, "shape_rows": 2},
    )
    assert bare.problems(expected_charts("01")) == [
        "2 raw polars frame(s) ('shape: (' in the text)",
        "answers: 0, expected at least 1",
    ]
