"""The notebooks: stored clean, parameters papermill can read, and notebook 01 executed through
`aiopt run` (papermill + nbconvert) into a self-contained HTML report."""

from __future__ import annotations

import ast
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import polars as pl
import pytest
from browser_check import check_page, ensure_chromium, expected_charts

from aiopt_lib.core.bars import check_bars
from aiopt_lib.live.node import LiveResult
from aiopt_lib.strategy.ranking import load_ranking, verdict

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_NAMES = tuple(p.stem for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_readable_by_papermill(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assigned = {
        t.id
        for node in ast.parse(tagged[0].source).body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    # papermill silently skips lines it cannot parse; then overrides would not be documented
    assert set(papermill.inspect_notebook(str(path))) == assigned
    assert "run_dir" in assigned


def run_aiopt(
    tmp_path: Path, *params: str, config: Path | None = None
) -> tuple[subprocess.CompletedProcess, Path, Path]:
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    args = [
        sys.executable,
        "-m",
        "aiopt_lib.runs.cli",
        "run",
        "--config",
        str(config or ROOT / "papermill_runs" / "default.yaml"),
        "--runs-dir",
        str(runs),
        "--reports-dir",
        str(reports),
        "--run-id",
        "t",
    ]
    for p in params:
        args += ["-p", p]
    # ~210 s on a quiet 2-core machine; once, on a starved one (8 min of CPU in 19 min), over 600 s
    done = subprocess.run(args, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    return done, runs / "t", reports / "t"


@pytest.mark.slow
def test_default_run_writes_offline_report(tmp_path):
    done, run_dir, report_dir = run_aiopt(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {report_dir / 'index.html'}" in done.stdout
    page = (report_dir / "01_data_exploration.html").read_text(encoding="utf-8")
    # self-contained: no script or stylesheet from the network
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', page)
    # price with gaps, trading week, indicator panels, label classes
    assert page.count('class="aiopt-vega"') == 4
    assert "window.vegaEmbed" in page  # the inlined bundle
    assert page.count("data:image/png;base64") >= 2  # candle charts, plain and with patterns
    assert "pat_bullish_engulfing" in page and "stoch_k_14_3_3" in page
    assert "expected_weekend" in page
    # the answer, computed from the run: the sample is clean, every gap an expected closure
    assert "Yes: 6,225 bars (1h) from 2017-01-01 to 2017-12-29" in page
    assert "Traceback" not in page
    bars = pl.read_parquet(run_dir / "bars.parquet")
    assert check_bars(bars) == []
    assert bars.height == 6225
    # notebook 02: the dataset, every sample's image, the grid, the comparison, the class means
    page02 = (report_dir / "02_chart_rendering.html").read_text(encoding="utf-8")
    assert "Training images" in page02 and "Mean image per class" in page02
    assert page02.count("data:image/png;base64") >= 3
    assert "Traceback" not in page02
    manifest = json.loads((run_dir / "dataset" / "dataset.json").read_text())
    images = list((run_dir / "dataset" / "images" / "EURUSD").glob("*.png"))
    assert len(images) == manifest["counts"]["samples"] > 6000
    index = (report_dir / "index.html").read_text(encoding="utf-8")
    assert 'href="02_chart_rendering.html"' in index
    # notebook 03: every model on one test period, and the test-period predictions stream
    page03 = (report_dir / "03_multimodal_finetune.html").read_text(encoding="utf-8")
    assert "Evaluation on the test period" in page03 and "Traceback" not in page03
    for name in (
        "majority",
        "logistic (features)",
        "gradient boosting (features)",
        "compact: chart only",
    ):
        assert name in page03
    assert page03.count('class="aiopt-vega"') == 2  # learning curves, reliability
    # the answer, computed from the run, about the model sent on to 04/05
    assert re.search(
        r"(Yes|No): on the test period compact \(chart \+ indicators\) \(sent on", page03
    )
    predictions = pl.read_parquet(
        sorted((run_dir / "streams" / "predictions").glob("part-*.parquet"))
    )
    assert predictions.height > 800 and predictions["model_id"].unique().to_list() == ["compact"]
    assert (run_dir / "models" / "compact" / "model.json").is_file()
    # notebook 04: walk-forward search, top 5 with DSR/PBO, optuna plots, the panel, the ranking
    page04 = (report_dir / "04_optuna_search.html").read_text(encoding="utf-8")
    assert "<title>04 · Strategy search</title>" in page04
    assert "Traceback" not in page04
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', page04)
    assert "PBO (CSCV" in page04 and "DSR" in page04
    assert "param fast" in page04 and "schema_version: 1" not in page04  # a table, not YAML
    # history, importances, coordinates for each of the 3 folds
    assert page04.count('class="plotly-graph-div"') == 9
    # walk-forward, lockbox, top 5, the sensitivity heatmaps (test window, post-training)
    assert page04.count('class="aiopt-vega"') == 5
    assert page04.count('class="aiopt-panel-picture"') == 1  # the panel, as a picture
    assert "VBox(children=" not in page04
    # the answer first, computed from the run, and the lockbox
    document = json.loads((run_dir / "ranking.json").read_text())
    answers = verdict(document)
    assert document["lockbox"]["n_bars"] > 1000
    assert {"walk_forward", "lockbox", "pbo", "dsr"} <= set(answers)
    for sentence in answers.values():
        assert html.escape(sentence[:30]) in page04, sentence
    assert page04.index("The answer") < page04.index("The lockbox")
    index = (report_dir / "index.html").read_text(encoding="utf-8")
    assert index.index('data-answer="walk_forward"') < index.index('id="lockbox"')
    assert "ranked on post-training data" in index and "out of sample)" not in index
    ranking = load_ranking(run_dir / "ranking.json")
    assert 1 <= len(ranking) <= 5
    assert [extra["rank"] for _, extra in ranking] == list(range(1, len(ranking) + 1))
    pine_files = sorted((run_dir / "strategies").glob("*.pine"))
    # the ranked strategies, plus the ai_gate template with the signal model distilled (05)
    assert len(pine_files) == len(ranking) + 1
    assert all(f.read_text().startswith("//@version=5") for f in pine_files)
    assert "fidelity" in (run_dir / "strategies" / "ai_gate_distilled.pine").read_text()
    # notebook 05: Nautilus parity for the ranking, statistics, the tearsheet, Pine run offline
    page05 = (report_dir / "05_backtest.html").read_text(encoding="utf-8")
    assert "Traceback" not in page05
    assert "strategies trade identically in both engines" in page05
    # the AI gate evaluated bar by bar in Nautilus, predictions published by the PredictionActor
    assert re.search(
        r"AI gate through the PredictionActor: [1-9]\d* trades, identical to our engine", page05
    )
    assert page05.count('class="aiopt-vega"') == 1  # the tearsheet
    assert "max drawdown duration" in page05 and "SQN" in page05  # the statistics table
    assert "average_bars_held" in page05  # the trades by exit reason and side
    # the sortable out-of-sample trade list (itables, its bundle inlined: no network)
    assert re.search(r"The \d+ out-of-sample trades", page05) and "itables" in page05
    assert "['2.50 USD']" not in page05 and not re.search(r"\d\d:\d\d:\d\d\.000001", page05)
    assert page05.count("trades equal") == len(ranking) + 1  # every Pine file trades the same
    assert "first difference at trade" not in page05
    # the index lists the Pine files, copied into the report folder, with their parity status
    published = sorted(p.name for p in (report_dir / "strategies").glob("*.pine"))
    assert published == [p.name for p in pine_files]
    for name in published:
        assert f'href="strategies/{name}"' in index
    parity = json.loads((run_dir / "strategies" / "parity.json").read_text())
    assert {row["file"] for row in parity} == set(published)
    assert all(row["parity"] in index for row in parity)
    # notebook 06: the best strategy paper-traded over the lockbox in a live TradingNode (replay,
    # sandbox venue), untouched = backtest trade for trade; operated through the control channel
    page06 = (report_dir / "06_paper_trading.html").read_text(encoding="utf-8")
    assert "<title>06 · Paper trading in a Nautilus TradingNode</title>" in page06
    assert "Traceback" not in page06
    assert re.search(
        r"Yes: replayed through the live TradingNode, all [1-9] ranked strategies trade as", page06
    )
    assert "2 of 2 commands were applied and acknowledged" in page06
    assert re.search(r"the model answered each bar in [\d.]+ ms \(median\)", page06)
    operated = LiveResult.load(run_dir / "live" / "operated" / "result")
    assert set(operated.predictions["model_id"].unique()) == {"compact", "logistic"}
    commands = operated.events.filter(pl.col("event") == "command")
    assert commands["status"].to_list() == ["ok", "ok"]
    assert (
        "acknowledgements on the Redis stream" in page06
        or "the commands went through the in-process channel" in page06
    )
    # every report in a real browser: no console errors, every chart rendered, the answer block
    # under the question, a real title, no raw polars frame ('shape: (' is a problem), and the
    # lockbox where the search's answer is given (04, 05, index)
    assert ensure_chromium(timeout=300) is not None, "Debian's chromium could not be installed"
    for name in (*(step for step in NOTEBOOK_NAMES), "index"):
        page = report_dir / f"{name}.html"
        shot = tmp_path / "screenshots" / f"{name}.png"
        check = check_page(page, screenshot=shot)
        assert check.problems(expected_charts(name)) == [], name
        assert check.title not in ("", "Notebook") and check.counts["shape_rows"] == 0
        assert shot.stat().st_size > 0
        assert "shape: (" not in page.read_text(encoding="utf-8"), name
    executed = nbformat.read(run_dir / "01_data_exploration.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "run_dir" in injected[0].source


@pytest.mark.slow
def test_notebook_01_on_dukascopy_ticks_shows_spread(tmp_path, dukascopy_dir):
    cache = tmp_path / "feed"
    shutil.copytree(dukascopy_dir / "EURUSD", cache / "EURUSD")
    only_01 = tmp_path / "only01.yaml"
    only_01.write_text(
        f"notebooks_dir: {ROOT / 'notebooks'}\nparameters: {{source: sample}}\n"
        "notebooks: [01_data_exploration]\n"
    )
    done, run_dir, report_dir = run_aiopt(
        tmp_path,
        f"source={cache}",
        "timeframe=1m",
        "side=mid",
        "start=2019-02-04",
        "end=2019-02-06",
        "01_data_exploration.window_bars=90",
        config=only_01,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bars = pl.read_parquet(run_dir / "bars.parquet")
    assert bars.height == 2880 and "spread" in bars.columns
    page = (report_dir / "01_data_exploration.html").read_text(encoding="utf-8")
    assert "median spread (pips)" in page
