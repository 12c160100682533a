"""The tearsheet: four panels from a real backtest, and the figures behind them recomputed by
hand (monthly returns compound to the equity, drawdown is 1 - equity / running peak)."""

from __future__ import annotations

import datetime as dt

import altair as alt
import numpy as np
import polars as pl
import pytest

from aiopt_lib.data.sources import load_sample
from aiopt_lib.strategy.backtest import BacktestResult
from aiopt_lib.strategy.spec import StrategySpec, backtest
from aiopt_lib.viz.charts import inline_data
from aiopt_lib.viz.tearsheet import drawdown_frame, monthly_returns, tearsheet, trade_pnl_histogram


@pytest.fixture(scope="module")
def result() -> BacktestResult:
    spec = StrategySpec(
        name="ema_cross",
        params={"fast": 12, "slow": 26},
        long_entry="crossover(ema(fast), ema(slow))",
        short_entry="crossunder(ema(fast), ema(slow))",
        costs={"spread": 0.2},
    )
    return backtest(load_sample(), spec)


def panel_values(panel: alt.Chart | alt.LayerChart) -> list[dict]:
    """The inline rows a panel draws (a layered panel: its first layer's)."""
    data = panel.data
    if data is alt.Undefined:
        data = panel.layer[0].data
    return data.values


def test_four_panels_from_the_backtest(result: BacktestResult) -> None:
    chart = tearsheet(result, title="ema_cross (full history)")
    assert isinstance(chart, alt.VConcatChart)
    assert len(chart.vconcat) == 4
    titles = [panel.to_dict()["title"] for panel in chart.vconcat]
    assert titles[0] == "Equity" and titles[2] == "Monthly returns %"
    assert "Drawdown" in titles[1] and "PnL" in titles[3]
    equity_values = panel_values(chart.vconcat[0])
    assert 3000 < len(equity_values) <= 5000  # 6,225 bars thinned to the panel limit
    months = panel_values(chart.vconcat[2])
    assert len(months) == 12  # the 2017 sample: one cell per month
    hist = panel_values(chart.vconcat[3])
    assert sum(row["count"] for row in hist) == result.trades.height
    spec = chart.to_dict()
    assert spec["title"]["text"] == "ema_cross (full history)"
    assert "trades" in spec["title"]["subtitle"]


def test_panels_are_thinned(result: BacktestResult) -> None:
    chart = tearsheet(result, title="thin", max_points=500)
    for panel in chart.vconcat[:2]:
        values = panel_values(panel)
        assert len(values) <= 500
        assert values[-1]["ts"] == result.equity["ts"][-1].strftime("%Y-%m-%dT%H:%M:%SZ")
    # the envelope keeps the extremes: the deepest drawdown and the equity's peak survive
    deepest = min(row["drawdown_pct"] for row in panel_values(chart.vconcat[1]))
    assert deepest == pytest.approx(-100 * drawdown_frame(result.equity)["drawdown"].max())
    top = max(row["equity"] for row in panel_values(chart.vconcat[0]))
    assert top == result.equity["equity"].max()


def test_monthly_returns_compound_the_equity(result: BacktestResult) -> None:
    initial = result.metrics["final_equity"] / (1 + result.metrics["total_return"])
    months = monthly_returns(result.equity, initial)
    # by hand: each month's last equity over the previous one's (the first over the capital)
    ts = result.equity["ts"].to_list()
    equity = result.equity["equity"].to_list()
    last_of_month: dict[tuple[int, int], float] = {}
    for t, e in zip(ts, equity, strict=True):
        last_of_month[(t.year, t.month)] = e
    previous, expected = initial, []
    for _, end in sorted(last_of_month.items()):
        expected.append(100 * (end / previous - 1))
        previous = end
    assert months["return_pct"].to_list() == pytest.approx(expected, rel=1e-12)
    assert list(zip(months["year"], months["month"], strict=True)) == sorted(last_of_month)
    compounded = np.prod(1 + months["return_pct"].to_numpy() / 100) - 1
    assert compounded == pytest.approx(result.metrics["total_return"], rel=1e-9)
    assert months["month_name"][0] == "Jan"


def test_monthly_returns_across_years() -> None:
    ts = [dt.datetime(2020, 12, 31, tzinfo=dt.UTC), dt.datetime(2021, 1, 5, tzinfo=dt.UTC)]
    equity = pl.DataFrame({"ts": ts, "equity": [110.0, 121.0]}).with_columns(
        pl.col("ts").dt.cast_time_unit("us")
    )
    months = monthly_returns(equity, 100.0)
    assert months.select("year", "month").rows() == [(2020, 12), (2021, 1)]
    assert months["return_pct"].to_list() == pytest.approx([10.0, 10.0])


def test_drawdown_is_one_minus_equity_over_its_peak(result: BacktestResult) -> None:
    frame = drawdown_frame(result.equity)
    equity = result.equity["equity"].to_numpy()
    peak = np.maximum.accumulate(equity)
    np.testing.assert_allclose(frame["drawdown"].to_numpy(), 1 - equity / peak, rtol=0, atol=0)
    assert frame["drawdown"].min() == 0.0
    # the panel shows it in percent below zero
    panel = panel_values(tearsheet(result, title="t").vconcat[1])
    worst = min(row["drawdown_pct"] for row in panel)
    assert worst == pytest.approx(-100 * frame["drawdown"].max())


def test_trade_pnl_histogram_counts_every_trade(result: BacktestResult) -> None:
    hist = trade_pnl_histogram(result.trades, bins=25)
    assert hist.height == 25
    assert hist["count"].sum() == result.trades.height
    pnl = result.trades["pnl"].to_numpy()
    counts, edges = np.histogram(pnl, bins=25)
    np.testing.assert_allclose(hist["bin_start"].to_numpy(), edges[:-1])
    assert hist["count"].to_list() == counts.tolist()
    empty = trade_pnl_histogram(result.trades.head(0))
    assert empty.height == 0 and empty.columns == ["bin_start", "bin_end", "count"]


def test_inline_data_carries_the_rows_with_utc_iso_times() -> None:
    frame = pl.DataFrame({"ts": [dt.datetime(2017, 1, 2, 5, 0)], "equity": [1.5]}).with_columns(
        pl.col("ts").dt.replace_time_zone("Europe/Berlin")  # 05:00 in Berlin is 04:00 UTC
    )
    data = inline_data(frame)
    assert isinstance(data, alt.InlineData)
    assert data.values == [{"ts": "2017-01-02T04:00:00Z", "equity": 1.5}]
