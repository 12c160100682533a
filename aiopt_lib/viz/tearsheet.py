"""A backtest's tearsheet: one offline Altair figure (rendered by
:func:`aiopt_lib.viz.charts.enable_offline_altair`) with four panels built from polars frames:

1. **Equity** per bar (thinned to at most ``max_points`` points: per bucket of bars the lowest
   and the highest, so no peak or trough is lost; the last bar kept).
2. **Drawdown** (underwater): ``1 - equity / cummax(equity)``, in percent below the running peak.
3. **Monthly returns** as a year × month heatmap in percent: each month's last equity over the
   previous month's last equity (the first month over the starting capital), so compounding the
   months gives the total return.
4. **Trade PnL distribution**: a histogram of the trades' PnL (money, after costs), binned in
   polars, so the panel has one point per bin whatever the number of trades.

The figures are computed by :func:`drawdown_frame`, :func:`monthly_returns` and
:func:`trade_pnl_histogram`, which a notebook can also show as tables.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import polars as pl

from aiopt_lib.strategy.backtest import BacktestResult
from aiopt_lib.viz.charts import inline_data

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _envelope(frame: pl.DataFrame, column: str, max_points: int) -> pl.DataFrame:
    """At most ``max_points`` rows, sorted by ``ts``: per bucket of consecutive rows the one with
    the lowest and the one with the highest ``column`` (so peaks and the deepest drawdown stay),
    plus the last row."""
    if frame.height <= max_points:
        return frame
    bucket = -(-frame.height * 2 // (max_points - 1))
    framed = frame.with_row_index("_i").with_columns((pl.col("_i") // bucket).alias("_b"))
    picks = framed.group_by("_b").agg(
        pl.col("_i").get(pl.col(column).arg_min()).alias("low"),
        pl.col("_i").get(pl.col(column).arg_max()).alias("high"),
    )
    keep = pl.concat([picks["low"], picks["high"], pl.Series([frame.height - 1], dtype=pl.UInt32)])
    return frame.with_row_index("_i").filter(pl.col("_i").is_in(keep.implode())).drop("_i")


def drawdown_frame(equity: pl.DataFrame) -> pl.DataFrame:
    """``ts``, ``equity`` and ``drawdown = 1 - equity / cummax(equity)`` (a fraction, 0 at a new
    high) of an equity frame with ``ts`` and ``equity``."""
    return equity.select(
        "ts",
        "equity",
        (1.0 - pl.col("equity") / pl.col("equity").cum_max()).alias("drawdown"),
    )


def monthly_returns(equity: pl.DataFrame, initial_capital: float) -> pl.DataFrame:
    """One row per calendar month (UTC) of an equity frame (``ts``, ``equity``): ``year``,
    ``month`` (1-12), ``month_name``, ``end_equity`` (the month's last equity) and
    ``return_pct``: ``100 × (end_equity / previous month's end_equity - 1)``, the first month
    against ``initial_capital``."""
    months = (
        equity.sort("ts")
        .group_by(
            pl.col("ts").dt.year().alias("year"),
            pl.col("ts").dt.month().alias("month"),
            maintain_order=True,
        )
        .agg(pl.col("equity").last().alias("end_equity"))
    )
    previous = pl.col("end_equity").shift(1).fill_null(float(initial_capital))
    return months.select(
        pl.col("year").cast(pl.Int32),
        pl.col("month").cast(pl.Int8),
        pl.col("month")
        .cast(pl.Int64)
        .replace_strict(list(range(1, 13)), list(MONTHS), return_dtype=pl.String)
        .alias("month_name"),
        "end_equity",
        ((pl.col("end_equity") / previous - 1.0) * 100.0).alias("return_pct"),
    )


def trade_pnl_histogram(trades: pl.DataFrame, bins: int = 40) -> pl.DataFrame:
    """The histogram of the trades' ``pnl``: ``bin_start``, ``bin_end``, ``count`` over
    ``bins`` equal-width bins spanning the PnL range (empty when there are no trades)."""
    schema = {"bin_start": pl.Float64, "bin_end": pl.Float64, "count": pl.Int64}
    pnl = trades.get_column("pnl").drop_nulls()
    if pnl.len() == 0:
        return pl.DataFrame(schema=schema)
    low, high = float(pnl.min()), float(pnl.max())
    if high == low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    width = (high - low) / bins
    # the last bin includes its right edge, as numpy.histogram does
    index = ((pl.col("pnl") - low) / width).floor().cast(pl.Int64).clip(0, bins - 1)
    counts = pnl.to_frame().group_by(index.alias("bin")).agg(pl.len().cast(pl.Int64).alias("count"))
    frame = pl.DataFrame({"bin": np.arange(bins), "bin_start": edges[:-1], "bin_end": edges[1:]})
    return (
        frame.join(counts, on="bin", how="left")
        .with_columns(pl.col("count").fill_null(0))
        .select(list(schema))
    )


def tearsheet(
    result: BacktestResult,
    *,
    title: str,
    width: int = 760,
    max_points: int = 5_000,
    bins: int = 40,
) -> alt.VConcatChart:
    """The four-panel tearsheet (module docstring) of ``result`` (:func:`aiopt_lib.backtest_metrics`
    figures in the subtitle: total return, Sharpe, max drawdown, trades). The equity and drawdown
    panels share a zoomable time axis; no panel holds more than ``max_points`` points."""
    metrics = result.metrics
    equity = result.equity.select("ts", "equity")
    if equity.height == 0:
        raise ValueError("tearsheet needs a result with at least one bar of equity")
    initial = _initial_capital(result)
    curve = drawdown_frame(equity)
    underwater = curve.select("ts", (pl.col("drawdown") * -100.0).alias("drawdown_pct"))
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    equity_panel = (
        alt.Chart(inline_data(_envelope(curve.select("ts", "equity"), "equity", max_points)))
        .mark_line(strokeWidth=1.2)
        .encode(
            x=alt.X("ts:T", title=None),
            y=alt.Y("equity:Q", scale=alt.Scale(zero=False), title="equity"),
            tooltip=["ts:T", alt.Tooltip("equity:Q", format=",.2f")],
        )
        .add_params(zoom)
        .properties(width=width, height=220, title="Equity")
    )
    drawdown_panel = (
        alt.Chart(inline_data(_envelope(underwater, "drawdown_pct", max_points)))
        .mark_area(color="#d62728", opacity=0.6, line={"color": "#a50f15", "strokeWidth": 0.8})
        .encode(
            x=alt.X("ts:T", title=None, scale=alt.Scale(domain=zoom)),
            y=alt.Y("drawdown_pct:Q", title="drawdown %"),
            tooltip=["ts:T", alt.Tooltip("drawdown_pct:Q", format=".2f")],
        )
        .properties(width=width, height=140, title="Drawdown (underwater), % below the peak")
    )
    months = monthly_returns(equity, initial)
    limit = float(months["return_pct"].abs().max() or 1.0)
    heatmap = alt.Chart(inline_data(months)).encode(
        x=alt.X("month_name:O", sort=list(MONTHS), title=None),
        y=alt.Y("year:O", title=None),
    )
    monthly_panel = (
        heatmap.mark_rect().encode(
            color=alt.Color(
                "return_pct:Q",
                scale=alt.Scale(scheme="redyellowgreen", domain=[-limit, limit]),
                title="%",
            ),
            tooltip=["year:O", "month_name:O", alt.Tooltip("return_pct:Q", format=".2f")],
        )
        + heatmap.mark_text(fontSize=10).encode(text=alt.Text("return_pct:Q", format=".1f"))
    ).properties(
        width=width, height=max(40, 28 * months["year"].n_unique()), title="Monthly returns %"
    )
    histogram = trade_pnl_histogram(result.trades, bins)
    pnl_panel = (
        alt.Chart(inline_data(histogram))
        .mark_bar(color="#4c78a8")
        .encode(
            x=alt.X("bin_start:Q", bin="binned", title="trade PnL (after costs)"),
            x2="bin_end:Q",
            y=alt.Y("count:Q", title="trades"),
            tooltip=["bin_start:Q", "bin_end:Q", "count:Q"],
        )
        .properties(width=width, height=160, title="Trade PnL distribution")
    )
    subtitle = (
        f"total return {metrics.get('total_return', float('nan')):.2%} · "
        f"Sharpe {metrics.get('sharpe', float('nan')):.2f} · "
        f"max drawdown {metrics.get('max_drawdown', float('nan')):.2%} · "
        f"{int(metrics.get('trades', result.trades.height))} trades"
    )
    return alt.vconcat(
        equity_panel, drawdown_panel, monthly_panel, pnl_panel, spacing=18
    ).properties(title=alt.TitleParams(title, subtitle=subtitle, anchor="start"))


def _initial_capital(result: BacktestResult) -> float:
    """The starting capital: ``final_equity / (1 + total_return)`` from the metrics, else the
    first bar's equity."""
    final, total = result.metrics.get("final_equity"), result.metrics.get("total_return")
    if final is not None and total is not None and total > -1 and np.isfinite(final):
        return float(final) / (1.0 + float(total))
    return float(result.equity["equity"][0])


__all__ = ["MONTHS", "drawdown_frame", "monthly_returns", "tearsheet", "trade_pnl_histogram"]
