"""The statistics table: each figure by hand on a small curve, and on a real backtest equal to the
engine's own metrics."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from aiopt_lib.data.sources import load_sample
from aiopt_lib.strategy.backtest import BacktestResult
from aiopt_lib.strategy.performance import PERFORMANCE_FIGURES, format_value, performance_table
from aiopt_lib.strategy.search import builtin_template
from aiopt_lib.strategy.spec import backtest

HOUR = dt.timedelta(hours=1)
T0 = dt.datetime(2024, 1, 8, tzinfo=dt.UTC)


def small_result() -> BacktestResult:
    ts = [T0 + i * HOUR for i in range(5)]
    equity = pl.DataFrame(
        {"ts": ts, "equity": [100.0, 110.0, 99.0, 104.5, 120.0], "position": [0, 1, 1, 0, 0]}
    )
    trades = pl.DataFrame(
        {
            "pnl": [10.0, -5.0, 15.0],
            "return": [0.10, -0.05, 0.15],
            "bars_held": [2, 1, 3],
        }
    )
    return BacktestResult(trades=trades, equity=equity, metrics={})


def test_each_figure_by_hand():
    result = small_result()
    close = np.array([1.0, 1.1, 0.99, 1.045, 1.2])  # buy-and-hold follows the same curve
    table = performance_table(result, close, initial_capital=100.0, timeframe=HOUR)
    assert table["statistic"].to_list() == [name for name, _ in PERFORMANCE_FIGURES]
    value = dict(zip(table["statistic"], table["strategy_value"], strict=True))
    hold = dict(zip(table["statistic"], table["buy_and_hold_value"], strict=True))
    assert value["total return"] == pytest.approx(0.2)
    assert value["max drawdown"] == pytest.approx(0.1)  # 110 -> 99
    # below the 110 peak from bar 1's close to bar 4 (3 hours), in days
    assert value["max drawdown duration"] == pytest.approx(3 / 24)
    assert value["exposure"] == pytest.approx(0.4)
    assert value["duration"] == pytest.approx(4 / 24)
    assert value["trades"] == 3 and value["win rate"] == pytest.approx(2 / 3)
    assert value["best trade"] == 0.15 and value["worst trade"] == -0.05
    assert value["average trade"] == pytest.approx(0.2 / 3)
    assert value["profit factor"] == pytest.approx(25 / 5)
    assert value["expectancy"] == pytest.approx(20 / 3)
    r = np.array([0.10, -0.05, 0.15])
    assert value["SQN"] == pytest.approx(math.sqrt(3) * r.mean() / r.std(ddof=1))
    assert value["average holding time"] == pytest.approx(2.0)  # hours
    returns = np.array([100, 110, 99, 104.5, 120]) / np.array([100, 100, 110, 99, 104.5]) - 1
    bars_per_year = 252 * 24
    assert value["annual volatility"] == pytest.approx(
        returns.std(ddof=1) * math.sqrt(bars_per_year)
    )
    # buy-and-hold: the same curve, always in the market, no trades
    for name in ("total return", "max drawdown", "max drawdown duration", "Sharpe ratio"):
        assert hold[name] == pytest.approx(value[name]), name
    assert hold["exposure"] == 1.0 and hold["trades"] is None
    text = dict(zip(table["statistic"], table["strategy"], strict=True))
    assert text["start"] == "2024-01-08 00:00" and text["total return"] == "20.00%"
    assert text["average holding time"] == "2.0 h" and text["trades"] == "3"
    assert dict(zip(table["statistic"], table["buy_and_hold"], strict=True))["trades"] == "–"


def test_on_a_real_backtest_it_agrees_with_the_engine():
    bars = load_sample()
    spec = builtin_template("ema_cross").spec
    result = backtest(bars, spec)
    table = performance_table(
        result, bars["close"], initial_capital=spec.initial_capital, timeframe=HOUR
    )
    value = dict(zip(table["statistic"], table["strategy_value"], strict=True))
    for name, key in (
        ("total return", "total_return"),
        ("Sharpe ratio", "sharpe"),
        ("max drawdown", "max_drawdown"),
        ("trades", "trades"),
        ("win rate", "win_rate"),
        ("profit factor", "profit_factor"),
        ("expectancy", "avg_trade"),
        ("exposure", "exposure"),
    ):
        assert value[name] == pytest.approx(result.metrics[key], rel=1e-12), name
    hold = dict(zip(table["statistic"], table["buy_and_hold_value"], strict=True))
    close = bars["close"].to_numpy()
    assert hold["total return"] == pytest.approx(close[-1] / close[0] - 1)
    with pytest.raises(ValueError, match="close has 3 values"):
        performance_table(result, close[:3], initial_capital=1.0, timeframe=HOUR)


def test_formatting():
    assert format_value(None, "share") == "–" and format_value(math.nan, "ratio") == "–"
    assert format_value(0.1234, "share") == "12.34%"
    assert format_value(1234.5, "money") == "1,234.50"
    assert format_value(T0, "date") == "2024-01-08 00:00"


def test_trade_summary_by_exit_reason_and_side():
    from aiopt_lib.strategy.performance import trade_summary

    trades = pl.DataFrame(
        {
            "side": ["long", "short", "long", "long"],
            "exit_reason": ["stop", "take", "take", "stop"],
            "pnl": [-5.0, 12.0, 8.0, -3.0],
            "return": [-0.005, 0.012, 0.008, -0.003],
            "bars_held": [2, 6, 4, 1],
        }
    )
    by_reason = trade_summary(trades)
    assert by_reason["exit_reason"].to_list() == ["take", "stop", "all"]
    take, stop, total = by_reason.rows(named=True)
    assert take["trades"] == 2 and take["win_rate"] == 1.0 and take["total_pnl"] == 20.0
    assert stop["average_pnl"] == -4.0 and stop["average_bars_held"] == 1.5
    assert total["trades"] == 4 and total["total_pnl"] == 12.0 and total["win_rate"] == 0.5
    both = trade_summary(trades, ["side", "exit_reason"])
    assert both.height == 4 and both.row(-1, named=True)["side"] == "all"
    with pytest.raises(ValueError, match="lack"):
        trade_summary(trades, "entry_bar")
