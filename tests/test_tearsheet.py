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
from aiopt_lib.viz.tearsheet import (
    buy_and_hold,
    drawdown_frame,
    monthly_returns,
    tearsheet,
    trade_pnl_histogram,
    worst_drawdowns,
)


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


def panel_values(panel: alt.Chart | alt.LayerChart, curve: str | None = "strategy") -> list[dict]:
    """The inline rows a panel draws (a layered panel: its line layer's, else its first layer's;
    the equity panel: the rows of ``curve``, all of them with None)."""
    data = panel.data
    if data is alt.Undefined:
        lines = [layer for layer in panel.layer if layer.to_dict()["mark"]["type"] == "line"]
        data = (lines or panel.layer)[0].data
    rows = data.values
    if curve is not None and rows and "curve" in rows[0]:
        rows = [row for row in rows if row["curve"] == curve]
    return rows


def test_four_panels_from_the_backtest(result: BacktestResult) -> None:
    chart = tearsheet(result, title="ema_cross (full history)")
    assert isinstance(chart, alt.VConcatChart)
    assert len(chart.vconcat) == 4
    titles = [panel.to_dict()["title"] for panel in chart.vconcat]
    assert titles[0].startswith("Equity") and titles[2] == "Monthly returns %"
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


def _equity(values: list[float]) -> pl.DataFrame:
    """A daily equity frame from 2020-01-01 (UTC, microseconds, as a backtest's)."""
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ts = [start + dt.timedelta(days=k) for k in range(len(values))]
    return pl.DataFrame({"ts": ts, "equity": values}).with_columns(
        pl.col("ts").dt.cast_time_unit("us")
    )


def day(k: int) -> dt.datetime:
    return dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=k)


def test_worst_drawdowns_by_hand() -> None:
    # peaks 110 (day 1) and 120 (day 5); 110 → 99 recovers on day 4 (back *at* the peak counts);
    # 120 → 90 is still open at the last bar; 100 → 95 on day 10 is the smallest
    equity = _equity([100, 110, 99, 105, 110, 120, 90, 100, 115, 119, 118])
    table = worst_drawdowns(equity)
    assert table.columns == [
        "rank",
        "start",
        "valley",
        "recovery",
        "depth_pct",
        "bars",
        "days",
        "recovery_bars",
        "recovery_days",
    ]
    assert table["rank"].to_list() == [1, 2]
    deep, shallow = table.rows(named=True)
    assert (deep["start"], deep["valley"], deep["recovery"]) == (day(5), day(6), None)
    assert deep["depth_pct"] == pytest.approx(25.0)
    assert (deep["bars"], deep["days"]) == (5, 5.0)  # open: counted to the last bar
    assert deep["recovery_bars"] is None and deep["recovery_days"] is None
    assert (shallow["start"], shallow["valley"], shallow["recovery"]) == (day(1), day(2), day(4))
    assert shallow["depth_pct"] == pytest.approx(10.0)
    assert (shallow["bars"], shallow["days"]) == (3, 3.0)
    assert (shallow["recovery_bars"], shallow["recovery_days"]) == (2, 2.0)
    assert worst_drawdowns(equity, n=1).height == 1
    with pytest.raises(ValueError, match="at least 1"):
        worst_drawdowns(equity, n=0)


def test_worst_drawdowns_sorts_by_depth_and_handles_no_drawdown() -> None:
    equity = _equity([100, 97, 100, 90, 100, 99, 100])  # depths 3 %, 10 %, 1 %, all recovered
    table = worst_drawdowns(equity)
    assert table["depth_pct"].to_list() == pytest.approx([10.0, 3.0, 1.0])
    assert table["start"].to_list() == [day(2), day(0), day(4)]
    assert table["recovery"].null_count() == 0
    rising = worst_drawdowns(_equity([100, 100, 101, 105]))  # a flat bar is no drawdown
    assert rising.height == 0 and rising.schema["start"] == pl.Datetime("us", "UTC")


def test_worst_drawdowns_of_the_backtest(result: BacktestResult) -> None:
    table = worst_drawdowns(result.equity, n=5)
    assert table.height == 5 and table["depth_pct"].is_sorted(descending=True)
    curve = drawdown_frame(result.equity)
    # the deepest one is the maximum drawdown of the curve and of the metrics
    assert table["depth_pct"][0] == pytest.approx(100 * curve["drawdown"].max())
    assert table["depth_pct"][0] == pytest.approx(100 * result.metrics["max_drawdown"], rel=1e-6)
    ts, equity = curve["ts"], curve["equity"]
    for row in table.iter_rows(named=True):
        peak_i = ts.search_sorted(row["start"])
        peak = equity[peak_i]
        stop = ts.search_sorted(row["recovery"]) if row["recovery"] else len(ts)
        inside = equity[peak_i + 1 : stop]
        assert (inside < peak).all()  # below the peak all along, back at it at the recovery
        assert inside.min() == equity[ts.search_sorted(row["valley"])]
        if row["recovery"] is not None:
            assert equity[stop] >= peak
            assert row["bars"] == stop - peak_i
        else:
            assert row["bars"] == len(ts) - 1 - peak_i


def test_buy_and_hold_ends_at_the_close_ratio(result: BacktestResult) -> None:
    bars = load_sample()
    start = 4000  # an out-of-sample slice: the bars span more than the equity
    equity = result.equity[start:]
    hold = buy_and_hold(equity, bars, 50_000.0)
    assert hold["ts"].to_list() == equity["ts"].to_list()
    assert hold["equity"][0] == 50_000.0
    close = bars["close"]
    assert hold["equity"][-1] / 50_000.0 == pytest.approx(close[-1] / close[start], rel=1e-12)
    with pytest.raises(ValueError, match="lack the close"):
        buy_and_hold(equity, bars.head(5000), 50_000.0)


def test_tearsheet_draws_buy_and_hold_with_the_legend_inside(result: BacktestResult) -> None:
    bars = load_sample()
    chart = tearsheet(result, title="with bars", bars=bars, max_points=1000)
    equity_panel = chart.vconcat[0]
    rows = panel_values(equity_panel, curve=None)
    assert {row["curve"] for row in rows} == {"strategy", "buy-and-hold"}
    assert len(rows) <= 1000  # both curves together within the panel limit
    hold = panel_values(equity_panel, "buy-and-hold")
    initial = result.metrics["final_equity"] / (1 + result.metrics["total_return"])
    assert hold[-1]["ts"] == bars["ts"][-1].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert hold[-1]["equity"] / initial == pytest.approx(bars["close"][-1] / bars["close"][0])
    spec = chart.to_dict()
    assert "buy-and-hold" in spec["title"]["subtitle"]
    # one legend per panel, inside or under it: not merged into one beside the figure
    assert spec["resolve"]["scale"]["color"] == "independent"
    assert spec["resolve"]["legend"]["color"] == "independent"
    layers = spec["vconcat"][0]["layer"]
    line = next(layer for layer in layers if layer["mark"]["type"] == "line")
    assert line["encoding"]["color"]["legend"]["orient"] == "top-left"
    monthly = spec["vconcat"][2]["layer"][0]["encoding"]["color"]["legend"]
    assert monthly["orient"] == "bottom"
    # the five worst drawdowns shaded behind the lines, from peak to recovery
    shade = layers[0]
    assert shade["mark"]["type"] == "rect" and shade["encoding"]["x2"]["field"] == "end"
    assert len(equity_panel.layer[0].data.values) == 5
    # without bars: the strategy alone, no legend
    alone = tearsheet(result, title="alone").to_dict()["vconcat"][0]["layer"]
    line = next(layer for layer in alone if layer["mark"]["type"] == "line")
    assert line["encoding"]["color"]["legend"] is None
