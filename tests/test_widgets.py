"""The strategy panel: controls from the search space, one backtest per change, honest metrics,
errors in the status line, a bounded chart."""

from __future__ import annotations

import datetime as dt
import math
import re

import ipywidgets as widgets
import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.strategy.search import ParamRange, builtin_template
from aiopt_lib.strategy.spec import StrategySpec, backtest
from aiopt_lib.viz.widgets import (
    PANEL_METRICS,
    backtest_chart,
    chart_data_rows,
    chart_rows,
    strategy_panel,
)


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def template():
    return builtin_template("ema_cross")


@pytest.fixture
def panel(bars, template):
    return strategy_panel(bars, template)


def html_metrics(html: str) -> dict[str, float]:
    """The exact numbers the metrics table carries, by metric key."""
    return {
        key: float(value)
        for key, value in re.findall(r'data-metric="(\w+)" data-value="([^"]+)"', html)
    }


def chart_values(chart) -> list[dict]:
    """Every data row of a chart's spec (the panel's chart has one dataset)."""
    spec = chart.to_dict(validate=False)
    (values,) = spec["datasets"].values()
    return values


def iso(ts: pl.Series) -> set[str]:
    return set(ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_list())


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
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_()


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
    before_result, before_chart, before_html = panel.result, panel.chart, panel.metrics_html
    panel.controls["fast"].value = 4
    assert panel.runs == 2
    assert panel.spec.params["fast"] == 4
    assert panel.metrics_html != before_html
    assert not panel.result.trades.equals(before_result.trades)
    assert panel.result.trades.height != before_result.trades.height
    assert panel.chart is not before_chart
    assert chart_values(panel.chart) != chart_values(before_chart)
    # The same result as a fresh backtest of the spec the panel shows.
    assert panel.result.trades.equals(backtest(bars, panel.spec).trades)


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
    result, chart, spec, html = panel.result, panel.chart, panel.spec, panel.metrics_html
    panel.set(fast=30, slow=20)
    assert "constraint violated" in panel.status and "fast < slow" in panel.status
    assert panel.runs == 1
    assert panel.result is result and panel.chart is chart and panel.spec == spec
    assert panel.metrics_html == html
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


def test_metrics_html_equals_a_fresh_backtest(panel, bars) -> None:
    for change in ({}, {"fast": 8, "slow": 50, "adx_min": 10}):
        if change:
            panel.set(**change)
        expected = backtest(bars, panel.spec).metrics
        shown = html_metrics(panel.metrics_html)
        assert set(shown) == {key for key, _, _ in PANEL_METRICS}
        for key, value in shown.items():
            assert value == expected[key] or (math.isnan(value) and math.isnan(expected[key]))
        # The readable cell agrees with the exact value too.
        assert f"{expected['total_return']:.2%}" in panel.metrics_html
        assert f">{expected['trades']:,.0f}<" in panel.metrics_html


def test_ranked_spec_gives_the_starting_values(bars, template) -> None:
    ranked = template.spec.with_params(fast=7, slow=230, stop_atr=1.25)
    panel = strategy_panel(bars, template, spec=ranked)
    assert panel.spec == ranked
    assert panel.controls["fast"].value == 7
    assert panel.controls["slow"].value == 230 and panel.controls["slow"].max == 230  # widened
    assert panel.controls["stop_atr"].value == 1.25


def test_chart_of_100k_bars_stays_within_the_point_budget_and_keeps_trade_bars(template) -> None:
    bars = random_walk_bars(100_000)
    panel = strategy_panel(bars, template)
    trades = panel.result.trades
    assert 0 < trades.height * 2 <= 4_000  # all trades fit the markers' share of the budget
    assert chart_data_rows(panel.chart) <= 5_000
    values = chart_values(panel.chart)
    assert len(values) <= 5_000
    drawn = {row["ts"] for row in values}
    assert iso(trades.get_column("entry_ts")) <= drawn
    assert iso(trades.get_column("exit_ts")) <= drawn
    markers = [row for row in values if row["event"] is not None]
    assert len(markers) == 2 * trades.height
    # Fill markers sit at the fill prices, on the bar's close and equity.
    first = trades.row(0, named=True)
    entry_iso = first["entry_ts"].strftime("%Y-%m-%dT%H:%M:%SZ")
    (entry,) = [m for m in markers if m["ts"] == entry_iso and m["event"].endswith("entry")]
    assert entry["marker_price"] == first["entry_price"]
    position = bars.get_column("ts").search_sorted(first["entry_ts"])
    assert entry["close"] == bars.get_column("close")[position]
    assert entry["equity"] == panel.result.equity.get_column("equity")[position]
    # The thinned line still spans the whole history.
    assert min(drawn) == bars.get_column("ts")[0].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert max(drawn) == bars.get_column("ts")[-1].strftime("%Y-%m-%dT%H:%M:%SZ")


def test_small_budget_thins_trades_evenly_and_says_so(bars, template) -> None:
    result = backtest(bars, template.spec)
    rows, shown = chart_rows(bars, result, max_points=100)
    assert rows.height <= 100
    assert 0 < shown < result.trades.height
    assert rows.filter(pl.col("event").is_not_null()).height == 2 * shown
    assert rows.get_column("ts").is_sorted()
    chart = backtest_chart(bars, result, max_points=100)
    assert (
        f"markers for {shown} of {result.trades.height} trades"
        in chart.to_dict(validate=False)["vconcat"][0]["title"]
    )
    # Short data is drawn whole.
    short = bars.head(300)
    short_result = backtest(short, template.spec)
    all_rows, _ = chart_rows(short, short_result)
    plain = all_rows.filter(pl.col("event").is_null()).height
    assert (
        plain
        + all_rows.select(pl.col("ts").filter(pl.col("event").is_not_null()).n_unique()).item()
        == 300
    )
