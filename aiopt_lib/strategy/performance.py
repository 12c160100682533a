"""The statistics table a quant expects of a backtest (the figures of backtesting.py's and
QuantStats' summaries), the strategy next to buy-and-hold on the same bars, computed from our own
equity curve and trades.

:func:`performance_table` gives one row per figure with its ``unit`` (``date``, ``days``,
``share`` — a fraction, shown as a percentage —, ``ratio``, ``count``, ``money``, ``hours``),
so a report formats each row once; :func:`trade_summary` groups the trades by exit reason and
side. Conventions are :func:`~aiopt_lib.strategy.backtest.backtest_metrics`'s
(per-bar returns, the FX year of 252 days × 24 h); a trade's return is its PnL over its entry
notional; SQN is Van Tharp's ``sqrt(n) × mean(R) / std(R)`` of the trades' returns; the drawdown
duration is the longest stretch (in calendar days) below a running equity peak.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl

from aiopt_lib.strategy.backtest import YEAR, BacktestResult, metrics_from_arrays

__all__ = ["PERFORMANCE_FIGURES", "format_value", "performance_table", "trade_summary"]

PERFORMANCE_FIGURES: tuple[tuple[str, str], ...] = (
    ("start", "date"),
    ("end", "date"),
    ("duration", "days"),
    ("exposure", "share"),
    ("total return", "share"),
    ("annual return", "share"),
    ("annual volatility", "share"),
    ("Sharpe ratio", "ratio"),
    ("Sortino ratio", "ratio"),
    ("Calmar ratio", "ratio"),
    ("max drawdown", "share"),
    ("max drawdown duration", "days"),
    ("trades", "count"),
    ("win rate", "share"),
    ("best trade", "share"),
    ("worst trade", "share"),
    ("average trade", "share"),
    ("profit factor", "ratio"),
    ("expectancy", "money"),
    ("SQN", "ratio"),
    ("average holding time", "hours"),
)
"""The rows of :func:`performance_table` in order, with their units."""


def _curve_figures(
    ts: pl.Series,
    equity: np.ndarray,
    position: np.ndarray,
    pnl: np.ndarray,
    initial: float,
    timeframe: dt.timedelta | None,
) -> dict[str, float | dt.datetime | None]:
    metrics = metrics_from_arrays(equity, position, pnl, initial, timeframe)
    bars_per_year = YEAR / timeframe if timeframe else math.nan
    previous = np.concatenate(([initial], equity[:-1]))
    returns = equity / previous - 1.0
    volatility = (
        float(returns.std(ddof=1)) * math.sqrt(bars_per_year) if len(returns) > 1 else math.nan
    )
    peaks = np.maximum.accumulate(np.concatenate(([initial], equity)))[1:]
    under = equity < peaks
    longest = dt.timedelta(0)
    start = None
    times = ts.to_list()
    for i, below in enumerate(under):
        if below and start is None:
            start = times[i - 1] if i > 0 else times[0]
        elif not below and start is not None:
            longest = max(longest, times[i] - start)
            start = None
    if start is not None:
        longest = max(longest, times[-1] - start)
    return {
        "start": times[0] if times else None,
        "end": times[-1] if times else None,
        "duration": (times[-1] - times[0]) / dt.timedelta(days=1) if times else math.nan,
        "exposure": metrics["exposure"],
        "total return": metrics["total_return"],
        "annual return": metrics["annual_return"],
        "annual volatility": volatility,
        "Sharpe ratio": metrics["sharpe"],
        "Sortino ratio": metrics["sortino"],
        "Calmar ratio": metrics["calmar"],
        "max drawdown": metrics["max_drawdown"],
        "max drawdown duration": longest / dt.timedelta(days=1),
    }


def performance_table(
    result: BacktestResult,
    close: pl.Series | np.ndarray,
    *,
    initial_capital: float,
    timeframe: dt.timedelta | None,
) -> pl.DataFrame:
    """``statistic``, ``unit``, ``strategy`` and ``buy_and_hold`` (holding the instrument from the
    first bar's close with the same capital: no trades), one row per :data:`PERFORMANCE_FIGURES` entry,
    formatted (:func:`format_value`), with the numbers in ``strategy_value`` /
    ``buy_and_hold_value`` (dates as POSIX seconds; null where a figure does not apply, like
    buy-and-hold's trades, or is undefined). ``close`` is the bars' close, aligned with
    ``result.equity``."""
    equity_frame = result.equity
    ts = equity_frame.get_column("ts")
    equity = equity_frame.get_column("equity").to_numpy().astype(np.float64)
    position = equity_frame.get_column("position").to_numpy()
    trades = result.trades
    pnl = trades.get_column("pnl").to_numpy().astype(np.float64)
    close = np.asarray(close, dtype=np.float64)
    if len(close) != len(equity):
        raise ValueError(f"close has {len(close)} values, the equity curve {len(equity)}")
    ours = _curve_figures(ts, equity, position, pnl, initial_capital, timeframe)
    hold_curve = initial_capital * close / close[0] if len(close) else close
    hold = _curve_figures(
        ts, hold_curve, np.ones(len(close)), np.array([]), initial_capital, timeframe
    )
    trade_returns = trades.get_column("return").to_numpy().astype(np.float64)
    n = len(pnl)
    std = float(trade_returns.std(ddof=1)) if n > 1 else math.nan
    held = trades.get_column("bars_held").to_numpy()
    ours.update(
        {
            "trades": float(n),
            "win rate": float(np.mean(pnl > 0)) if n else math.nan,
            "best trade": float(trade_returns.max()) if n else math.nan,
            "worst trade": float(trade_returns.min()) if n else math.nan,
            "average trade": float(trade_returns.mean()) if n else math.nan,
            "profit factor": metrics_from_arrays(equity, position, pnl, initial_capital, timeframe)[
                "profit_factor"
            ],
            "expectancy": float(pnl.mean()) if n else math.nan,
            "SQN": math.sqrt(n) * float(trade_returns.mean()) / std
            if n > 1 and std > 0
            else math.nan,
            "average holding time": float(held.mean()) * (timeframe / dt.timedelta(hours=1))
            if n and timeframe
            else math.nan,
        }
    )

    rows = []
    for name, unit in PERFORMANCE_FIGURES:
        a, b = ours.get(name), hold.get(name)
        rows.append(
            {
                "statistic": name,
                "strategy": format_value(a, unit),
                "buy_and_hold": format_value(b, unit) if name in hold else "–",
                "unit": unit,
                "strategy_value": _number(a),
                "buy_and_hold_value": _number(b),
            }
        )
    schema = {
        "statistic": pl.String,
        "strategy": pl.String,
        "buy_and_hold": pl.String,
        "unit": pl.String,
        "strategy_value": pl.Float64,
        "buy_and_hold_value": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def _number(value: object) -> float | None:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def format_value(value: object, unit: str) -> str:
    """One figure as a report shows it: dates to the minute, shares as percentages (signed for
    returns), ratios with 2 decimals, counts whole; ``–`` for a missing or undefined figure."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if unit == "date":
        return f"{value:%Y-%m-%d %H:%M}"
    number = float(value)  # type: ignore[arg-type]
    if unit == "share":
        return f"{number:.2%}"
    if unit == "days":
        return f"{number:.1f} days"
    if unit == "hours":
        return f"{number:.1f} h"
    if unit == "count":
        return f"{number:.0f}"
    return f"{number:,.2f}"


def trade_summary(trades: pl.DataFrame, by: str | list[str] = "exit_reason") -> pl.DataFrame:
    """The trades grouped ``by`` one or more columns (``exit_reason``, ``side``): ``trades``,
    ``win_rate``, ``total_pnl``, ``average_pnl``, ``average_return``, ``average_bars_held``, best
    group first (by total PnL), and a last ``all`` row over every trade."""
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys if k not in trades.columns]
    if missing:
        raise ValueError(f"trades lack column(s) {missing}")
    figures = [
        pl.len().alias("trades"),
        (pl.col("pnl") > 0).mean().alias("win_rate"),
        pl.col("pnl").sum().alias("total_pnl"),
        pl.col("pnl").mean().alias("average_pnl"),
        pl.col("return").mean().alias("average_return"),
        pl.col("bars_held").mean().alias("average_bars_held"),
    ]
    groups = (
        trades.with_columns(pl.col(k).cast(pl.String) for k in keys)
        .group_by(keys)
        .agg(figures)
        .sort(["total_pnl", *keys], descending=[True, *[False] * len(keys)])
    )
    total = trades.select(*(pl.lit("all").alias(k) for k in keys), *figures)
    return pl.concat([groups, total.cast(groups.schema)])
