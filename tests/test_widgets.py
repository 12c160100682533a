"""The strategy panel: controls from the search space, one backtest per change, honest statistics,
errors in the status line, a bounded chart that is drawn once and then only fed the changed data,
and a static picture for HTML reports. (The panel in a real browser: test_panel_browser.py.)"""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import ipywidgets as widgets
import nbformat
import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.bars import infer_timeframe
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.runs.runner import notebook_to_html
from aiopt_lib.strategy.performance import PERFORMANCE_FIGURES, performance_table
from aiopt_lib.strategy.search import ParamRange, builtin_template
from aiopt_lib.strategy.spec import StrategySpec, backtest
from aiopt_lib.viz.widgets import (
    CHART_DATASETS,
    DEFAULT_MAX_POINTS,
    backtest_chart,
    chart_data_rows,
    equity_rows,
    fill_rows,
    panel_chart_datasets,
    panel_statistics,
    price_rows,
    strategy_panel,
    trades_table_html,
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def template():
    return builtin_template("ema_cross")


@pytest.fixture
def panel(bars, template):
    return strategy_panel(bars, template)


@pytest.fixture(scope="module")
def oos_start(bars) -> dt.datetime:
    return bars.get_column("ts")[int(bars.height * 0.8)]


def html_stats(html: str, column: int = 0) -> dict[str, float | None]:
    """The exact numbers of one column of the statistics table (0: strategy, 1: buy-and-hold,
    2 and 3: the same out of sample), by statistic."""
    found = {}
    for stat, cells in re.findall(r'<tr data-stat="([^"]+)">(.*?)</tr>', html):
        values = re.findall(r'data-value="([^"]*)"', cells)
        found[stat] = float(values[column]) if values[column] else None
    return found


def update_payload(panel) -> dict:
    """The data the last change sent to the browser (the update script's JSON)."""
    (output,) = panel.script_output.outputs
    script = output["data"]["text/html"]
    return json.loads(re.search(r"var update = (\{.*?\});\n", script).group(1))


def random_walk_bars(n: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    close = 1.10 * np.exp(np.cumsum(rng.normal(0.0, 0.0012, n)))
    open_ = np.concatenate(([1.10], close[:-1]))
    wiggle = np.abs(rng.normal(0.0, 0.0006, (2, n)))
    return pl.DataFrame(
        {
            "ts": pl.datetime_range(
                dt.datetime(2000, 1, 3),
                dt.datetime(2000, 1, 3) + dt.timedelta(hours=n - 1),
                "1h",
                time_unit="us",
                time_zone="UTC",
                eager=True,
            ),
            "open": open_,
            "high": np.maximum(open_, close) * (1 + wiggle[0]),
            "low": np.minimum(open_, close) * (1 - wiggle[1]),
            "close": close,
            "volume": rng.integers(50, 500, n).astype(np.float64),
        }
    )


def test_building_runs_one_backtest_with_a_control_per_param(panel, template) -> None:
    assert panel.runs == 1
    assert panel.result is not None and panel.result.trades.height > 0
    assert panel.spec == template.spec
    assert set(panel.controls) == {*template.space, "direction"}
    for name, param_range in template.space.items():
        control = panel.controls[name]
        expected = widgets.IntSlider if param_range.is_int else widgets.FloatSlider
        assert type(control) is expected, name
        assert (control.min, control.max) == (param_range.low, param_range.high)
        assert control.value == template.spec.params[name]
        assert control.continuous_update is False
    assert panel.controls["slow"].step == 2
    assert panel.controls["stop_atr"].step == 0.25
    direction = panel.controls["direction"]
    assert isinstance(direction, widgets.Dropdown)
    assert tuple(direction.options) == ("long", "short", "both")
    assert direction.value == "both"
    assert panel.chart is not None
    assert len(panel.chart_output.outputs) == 1
    assert "run 1" in panel.status
    assert WIDGET_VIEW in panel._repr_mimebundle_()


def test_float_step_defaults_to_a_hundredth_and_choices_give_a_dropdown(bars, template) -> None:
    space = {
        "fast": ParamRange(choices=[5, 8, 12, 20]),
        "take_atr": ParamRange(low=0.5, high=6.0),
    }
    panel = strategy_panel(bars, template, space=space)
    assert isinstance(panel.controls["fast"], widgets.Dropdown)
    assert [v for _, v in panel.controls["fast"].options] == [5, 8, 12, 20]
    assert panel.controls["take_atr"].step == pytest.approx(0.055)
    assert set(panel.controls) == {"fast", "take_atr", "direction"}
    panel.set(fast=20, take_atr=4.5)
    assert panel.spec.params["fast"] == 20 and panel.spec.params["take_atr"] == 4.5


def test_moving_a_slider_reruns_and_redraws(panel, bars) -> None:
    before_result, before_chart, before_html = panel.result, panel.chart, panel.stats_html
    before_equity = panel.chart_spec["datasets"]["equity"]
    panel.controls["fast"].value = 4
    assert panel.runs == 2
    assert panel.spec.params["fast"] == 4
    assert panel.stats_html != before_html
    assert not panel.result.trades.equals(before_result.trades)
    assert panel.result.trades.height != before_result.trades.height
    assert panel.chart is not before_chart
    assert panel.chart_spec["datasets"]["equity"] != before_equity
    assert "fast=4" in panel.chart_spec["params"][-1]["value"]  # the title follows the params
    # The same result as a fresh backtest of the spec the panel shows.
    assert panel.result.trades.equals(backtest(bars, panel.spec).trades)


def test_a_change_sends_only_the_changed_data_to_the_live_chart(panel) -> None:
    (first,) = panel.chart_output.outputs
    drawn = first["data"]["text/html"]
    assert "vegaEmbed" in drawn and '"renderer": ' not in drawn  # options in the chart script
    assert "'canvas'" in drawn and "aiopt-panel-chart" in drawn
    assert panel.script_output.outputs == ()
    panel.set(fast=8, slow=50)
    assert panel.chart_output.outputs[0] is first  # the chart is not sent again
    update = update_payload(panel)
    assert update["seq"] == panel.runs == 2
    assert set(update) == {"seq", "title", "equity", "fills"}
    assert update["title"] == panel.chart_spec["params"][-1]["value"]
    equity = panel.chart_spec["datasets"]["equity"]
    assert update["equity"]["e"] == [row["e"] for row in equity]
    assert len(update["fills"]["t"]) == 2 * panel.result.trades.height
    assert panel.payload_bytes < 100 * 1024  # the previous panel sent ~400 KiB per change
    assert panel.refresh_ms > 0
    # Rounded for the wire: cents, 1e-5 of drawdown, the instrument's price decimals.
    assert all(round(e, 2) == e for e in update["equity"]["e"])
    assert all(round(p, 5) == p for p in update["fills"]["p"])


def test_set_changes_several_controls_with_one_run(panel) -> None:
    panel.set(fast=5, slow=60)
    assert panel.runs == 2
    assert (panel.spec.params["fast"], panel.spec.params["slow"]) == (5, 60)
    assert "fast=5" in panel.status and "slow=60" in panel.status
    panel.set(direction="short", stop_atr=1.5, take_atr=2.5)
    assert panel.runs == 3
    assert panel.spec.direction == "short" and panel.spec.params["stop_atr"] == 1.5


def test_set_rejects_unknown_names_and_out_of_range_values(panel) -> None:
    with pytest.raises(ConfigError, match="unknown control"):
        panel.set(fastest=3)
    with pytest.raises(ConfigError, match="outside"):
        panel.set(fast=400)  # a slider would clamp this to 40 without a word
    with pytest.raises(ConfigError, match="whole number"):
        panel.set(fast=7.5)
    assert panel.runs == 1
    assert panel.controls["fast"].value == 12


def test_infeasible_setting_shows_the_constraint_and_keeps_the_result(panel) -> None:
    result, chart, spec, html = panel.result, panel.chart, panel.spec, panel.stats_html
    panel.set(fast=30, slow=20)
    assert "constraint violated" in panel.status and "fast < slow" in panel.status
    assert panel.runs == 1
    assert panel.result is result and panel.chart is chart and panel.spec == spec
    assert panel.stats_html == html
    assert panel.script_output.outputs == ()  # nothing sent to the chart
    panel.set(slow=40)  # feasible again: runs
    assert panel.runs == 2 and panel.spec.params["fast"] == 30


def test_spec_error_shows_in_status_without_raising(bars) -> None:
    spec = StrategySpec(
        params={"fast": 10, "slow": 30},
        long_entry="crossover(ema(fast), ema(slow))",
        long_exit="crossunder(ema(fast), ema(slow))",
        direction="long",
    )
    panel = strategy_panel(bars, spec)  # a bare spec: ranges from its values
    assert panel.runs == 1
    assert (panel.controls["fast"].min, panel.controls["fast"].max) == (1, 40)
    result = panel.result
    panel.controls["direction"].value = "short"  # no short_entry: an invalid spec
    assert "invalid spec" in panel.status and "short_entry" in panel.status
    assert panel.result is result and panel.runs == 1


@pytest.mark.parametrize("direction", ["long", "short"])
def test_direction_dropdown_limits_the_sides(panel, direction) -> None:
    assert set(panel.result.trades.get_column("side")) == {"long", "short"}
    panel.controls["direction"].value = direction
    sides = set(panel.result.trades.get_column("side"))
    assert sides == {direction}
    assert panel.spec.direction == direction
    assert f"({direction})" in panel.chart_spec["params"][-1]["value"]


def test_statistics_equal_performance_table_of_a_fresh_backtest(panel, bars) -> None:
    for change in ({}, {"fast": 8, "slow": 50, "adx_min": 10}):
        if change:
            panel.set(**change)
        fresh = backtest(bars, panel.spec)
        expected = performance_table(
            fresh,
            bars.get_column("close"),
            initial_capital=panel.spec.initial_capital,
            timeframe=infer_timeframe(bars),
        )
        for column, name in ((0, "strategy"), (1, "buy_and_hold")):
            shown = html_stats(panel.stats_html, column)
            assert list(shown) == [stat for stat, _ in PERFORMANCE_FIGURES]
            for stat, value in zip(
                expected.get_column("statistic"), expected.get_column(f"{name}_value"), strict=True
            ):
                assert shown[stat] == value, (name, stat)
        # The readable cells are the table's formatted figures.
        row = expected.row(by_predicate=pl.col("statistic") == "total return", named=True)
        assert f">{row['strategy']}<" in panel.stats_html
        assert f">{row['buy_and_hold']}<" in panel.stats_html
        assert "out of sample" not in panel.stats_html  # no oos_start, no such columns


def test_oos_start_shades_the_chart_and_adds_out_of_sample_statistics(
    bars, template, oos_start
) -> None:
    panel = strategy_panel(bars, template, oos_start=oos_start)
    (band,) = panel.chart_spec["datasets"]["oos"]
    last = bars.get_column("ts")[-1] + dt.timedelta(hours=1)
    assert band == {
        "a": int(oos_start.timestamp() * 1000),
        "b": int(last.timestamp() * 1000),
    }
    assert "out of sample from " + f"{oos_start:%Y-%m-%d}" in panel.stats_html
    start = bars.get_column("ts").search_sorted(oos_start)
    late = panel.result.trades.filter(pl.col("exit_ts") >= oos_start)
    table = panel.statistics
    assert table.filter(pl.col("statistic") == "trades")["oos_strategy_value"][0] == late.height
    assert table.filter(pl.col("statistic") == "start")["oos_strategy"][0] == (
        f"{bars.get_column('ts')[start]:%Y-%m-%d %H:%M}"
    )
    # Out-of-sample returns start from the equity at the close before oos_start.
    equity = panel.result.equity.get_column("equity")
    total = table.filter(pl.col("statistic") == "total return")["oos_strategy_value"][0]
    assert total == pytest.approx(equity[-1] / equity[start - 1] - 1, abs=1e-12)
    shown = html_stats(panel.stats_html, 2)
    assert shown["trades"] == late.height
    # Trades entered out of sample are tinted like the band.
    assert "<tr class=aiopt-oos>" in panel.trades_html
    # A naive datetime is UTC; a start after the last bar shades nothing.
    naive = strategy_panel(bars, template, oos_start=oos_start.replace(tzinfo=None))
    assert naive.chart_spec["datasets"]["oos"] == panel.chart_spec["datasets"]["oos"]
    after = strategy_panel(bars, template, oos_start=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert after.chart_spec["datasets"]["oos"] == []
    assert "oos_strategy" not in after.statistics.columns
    assert panel_statistics(
        bars,
        panel.result,
        initial_capital=100_000.0,
        timeframe=dt.timedelta(hours=1),
    ).columns == [
        "statistic",
        "unit",
        "strategy",
        "buy_and_hold",
        "strategy_value",
        "buy_and_hold_value",
    ]


def test_trades_table_lists_the_latest_trades_newest_first(panel) -> None:
    trades = panel.result.trades
    assert trades.height > 50
    html = panel.trades_html
    assert f"the last 50 of {trades.height} trades, newest first" in html
    rows = re.findall(r"<tr>(.*?)</tr>", html.split("<tbody>")[1])
    assert len(rows) == 50
    newest = trades.row(-1, named=True)
    first = re.findall(r"<td[^>]*>(.*?)</td>", rows[0])
    assert first == [
        f"{newest['entry_ts']:%Y-%m-%d %H:%M}",
        f"{newest['exit_ts']:%Y-%m-%d %H:%M}",
        newest["side"],
        f"{newest['entry_price']:.5f}",
        f"{newest['exit_price']:.5f}",
        f"{newest['pnl']:,.2f}",
        f"{newest['return']:.2%}",
        newest["exit_reason"],
        str(newest["bars_held"]),
    ]
    assert "all 3 trades" in trades_table_html(trades.head(3))
    assert "no trades" in trades_table_html(trades.head(0))


def test_ranked_spec_gives_the_starting_values(bars, template) -> None:
    ranked = template.spec.with_params(fast=7, slow=230, stop_atr=1.25)
    panel = strategy_panel(bars, template, spec=ranked)
    assert panel.spec == ranked
    assert panel.controls["fast"].value == 7
    assert panel.controls["slow"].value == 230 and panel.controls["slow"].max == 230  # widened
    assert panel.controls["stop_atr"].value == 1.25


def test_chart_of_100k_bars_stays_within_the_point_budget_and_keeps_the_extremes(
    template,
) -> None:
    bars = random_walk_bars(100_000)
    panel = strategy_panel(bars, template)
    trades = panel.result.trades
    assert trades.height * 2 > DEFAULT_MAX_POINTS  # more fills than the budget: thinned
    datasets = panel.chart_spec["datasets"]
    assert set(datasets) == set(CHART_DATASETS)
    for name in ("price", "equity", "fills"):
        assert 0 < len(datasets[name]) <= DEFAULT_MAX_POINTS, name
    assert chart_data_rows(panel.chart) <= 3 * DEFAULT_MAX_POINTS
    ms = bars.get_column("ts").dt.epoch("ms")
    close = bars.get_column("close")
    price = pl.DataFrame(datasets["price"])
    # The thinned line spans the history and keeps the highest and lowest close.
    assert price["t"][0] == ms[0] and price["t"][-1] == ms[-1]
    assert price["c"].max() == round(close.max(), 5) and price["c"].min() == round(close.min(), 5)
    # The equity keeps its extremes and the deepest drawdown, computed on every bar.
    equity = panel.result.equity.get_column("equity").to_numpy()
    peaks = np.maximum.accumulate(np.concatenate(([100_000.0], equity)))[1:]
    drawn = pl.DataFrame(datasets["equity"])
    assert drawn["e"].max() == round(equity.max(), 2)
    assert drawn["e"].min() == round(equity.min(), 2)
    assert drawn["d"].min() == round(float((equity / peaks - 1).min()), 5)
    assert drawn["t"].is_sorted() and drawn["t"][-1] == ms[-1]
    # Trades thinned evenly, the first and last kept; a marker at each kept fill, and the title
    # says how many.
    fills = pl.DataFrame(datasets["fills"])
    assert fills.height == DEFAULT_MAX_POINTS
    assert fills["t"][-1] == int(trades["exit_ts"][-1].timestamp() * 1000)
    title = panel.chart_spec["params"][-1]["value"]
    assert f"markers for {DEFAULT_MAX_POINTS // 2} of {trades.height:,} trades" in title
    first = trades.row(0, named=True)
    entry = fills.filter(pl.col("t") == int(first["entry_ts"].timestamp() * 1000)).row(
        0, named=True
    )
    assert entry["event"] == f"{first['side']} entry"
    assert entry["p"] == round(first["entry_price"], 5)


def test_thinning_helpers_keep_short_data_whole_and_thin_trades_evenly(bars, template) -> None:
    result = backtest(bars, template.spec)
    rows, shown = fill_rows(result.trades, max_points=100)
    assert rows.height == 2 * shown == 100
    assert rows.get_column("t").is_sorted()
    assert 0 < shown < result.trades.height
    chart = backtest_chart(bars, result, template.spec, max_points=100)
    title = chart.to_dict(validate=False)["params"][-1]["value"]
    assert f"markers for {shown} of {result.trades.height} trades" in title
    assert chart_data_rows(chart) <= 3 * 100 + 1
    # Short data is drawn whole.
    short = bars.head(300)
    assert price_rows(short).height == 300
    assert equity_rows(backtest(short, template.spec), initial_capital=1e5).height == 300
    with pytest.raises(ConfigError, match="max_points"):
        panel_chart_datasets(bars, result, initial_capital=1e5, max_points=5)


def test_static_report_shows_a_picture_of_the_panel_not_the_widget_text(
    panel, tmp_path, oos_start
) -> None:
    panel.set(fast=9)
    bundle = panel._repr_mimebundle_()
    assert WIDGET_VIEW in bundle
    html = bundle["text/html"]
    assert '<img class="aiopt-panel-picture"' in html and "data:image/png;base64," in html
    assert "fast=9" in html and 'data-stat="total return"' in html and "<script" not in html
    assert "VBox" not in bundle["text/plain"]
    # nbconvert, as the pipeline converts reports (no widget state): the picture is shown.
    cell = nbformat.v4.new_code_cell("panel", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("execute_result", data=bundle, execution_count=1)]
    notebook = tmp_path / "panel.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(notebook))
    report = notebook_to_html(notebook, tmp_path / "panel.html").read_text()
    assert report.count('class="aiopt-panel-picture"') == 1
    assert "VBox(" not in report and "IntSlider(" not in report
    assert "jupyter-widgets" not in report.split("<body")[1].split("aiopt-panel")[0]


def test_chart_spec_names_its_datasets_and_draws_offline(bars, template, oos_start) -> None:
    result = backtest(bars, template.spec)
    datasets, shown = panel_chart_datasets(bars, result, initial_capital=1e5, oos_start=oos_start)
    assert shown == result.trades.height
    assert list(datasets) == list(CHART_DATASETS)
    chart = backtest_chart(bars, result, template.spec, oos_start=oos_start)
    spec = chart.to_dict(validate=False)
    assert set(spec["datasets"]) == set(CHART_DATASETS)
    names = json.dumps(spec["vconcat"])
    for name in CHART_DATASETS:
        assert f'"name": "{name}"' in names
    assert spec["title"]["text"] == {"expr": "panel_title"}
    assert not math.isnan(spec["datasets"]["equity"][0]["e"])
