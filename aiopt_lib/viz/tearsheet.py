"""A backtest's tearsheet: one offline Altair figure (rendered by
:func:`aiopt_lib.viz.charts.enable_offline_altair`) with four panels built from polars frames:

1. **Equity** per bar (thinned to at most ``max_points`` points: per bucket of bars the lowest
   and the highest, so no peak or trough is lost; the last bar kept), beside **buy-and-hold**
   (the same capital in the instrument from the first bar's close, when the bars are given) and
   with the five worst drawdowns shaded from their peak to their recovery, as pyfolio does.
2. **Drawdown** (underwater): ``1 - equity / cummax(equity)``, in percent below the running peak.
3. **Monthly returns** as a year × month heatmap in percent: each month's last equity over the
   previous month's last equity (the first month over the starting capital), so compounding the
   months gives the total return.
4. **Trade PnL distribution**: a histogram of the trades' PnL (money, after costs), binned in
   polars, so the panel has one point per bin whatever the number of trades.

The figures are computed by :func:`drawdown_frame`, :func:`monthly_returns`,
:func:`trade_pnl_histogram`, :func:`buy_and_hold` and :func:`worst_drawdowns` (the table of
QuantStats' and pyfolio's "worst drawdowns": start, valley, recovery, depth, length, time to
recover), which a notebook can also show as tables.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import polars as pl

from aiopt_lib.strategy.backtest import BacktestResult
from aiopt_lib.viz.charts import inline_data, time_axis

_CURVE_COLOURS = ("#4c78a8", "#7f7f7f")  # the strategy, buy-and-hold

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


def buy_and_hold(equity: pl.DataFrame, bars: pl.DataFrame, initial_capital: float) -> pl.DataFrame:
    """``ts`` and ``equity`` of holding the instrument over the equity frame's bars with the same
    capital: ``initial_capital × close / first close`` (the convention of
    :func:`aiopt_lib.strategy.performance.performance_table`), so the last value over the
    capital is the period's close ratio. ``bars`` (``ts``, ``close``) may span more than the
    equity (the full history beside an out-of-sample slice): they are matched on ``ts``, and a
    bar of the equity missing from them is an error, not a silent gap in the benchmark."""
    closes = equity.select("ts").join(bars.select("ts", "close"), on="ts", how="left")
    missing = closes.filter(pl.col("close").is_null())
    if missing.height:
        raise ValueError(
            f"bars lack the close of {missing.height} equity bar(s), the first at "
            f"{missing['ts'][0]}; give the bars the backtest ran on"
        )
    return closes.select(
        "ts",
        (float(initial_capital) * pl.col("close") / pl.col("close").first()).alias("equity"),
    )


_DRAWDOWN_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int64(),
    "start": pl.Datetime("us", "UTC"),
    "valley": pl.Datetime("us", "UTC"),
    "recovery": pl.Datetime("us", "UTC"),
    "depth_pct": pl.Float64(),
    "bars": pl.Int64(),
    "days": pl.Float64(),
    "recovery_bars": pl.Int64(),
    "recovery_days": pl.Float64(),
}


def worst_drawdowns(equity: pl.DataFrame, n: int = 5) -> pl.DataFrame:
    """The ``n`` deepest drawdown periods of an equity frame (``ts``, ``equity``), deepest first,
    as QuantStats' ``drawdown_details`` and pyfolio's "worst drawdown periods" list them: one
    row per stretch below the running peak (the peak of :func:`drawdown_frame`), with

    - ``rank`` (1 = deepest), ``start`` (the peak: the last bar at the high the period falls
      from), ``valley`` (the lowest bar), ``recovery`` (the first bar back at or above the peak;
      null while the period has not recovered by the last bar),
    - ``depth_pct``: ``100 × (1 - valley equity / peak equity)``,
    - ``bars`` and ``days`` from the peak to the recovery (to the last bar when not recovered,
      so an open drawdown shows how long it has lasted so far),
    - ``recovery_bars`` and ``recovery_days`` from the valley to the recovery (null when not
      recovered): how long the climb back took.

    Timestamps keep the frame's time zone (UTC for a backtest's equity)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    frame = equity.select("ts", "equity").sort("ts").with_row_index("i")
    last = frame.height - 1
    under = pl.col("equity") < pl.col("equity").cum_max()
    periods = (
        frame.with_columns(under.alias("under"))
        .with_columns(
            (pl.col("under") & ~pl.col("under").shift(1, fill_value=False))
            .cum_sum()
            .alias("period")
        )
        .filter(pl.col("under"))
        .group_by("period")
        .agg(
            (pl.col("i").first() - 1).alias("peak_i"),
            pl.col("i").get(pl.col("equity").arg_min()).alias("valley_i"),
            (pl.col("i").last() + 1).alias("end_i"),
            pl.col("equity").min().alias("valley_equity"),
        )
    )
    if periods.height == 0:
        time = {c: frame.schema["ts"] for c in ("start", "valley", "recovery")}
        return pl.DataFrame(schema={**_DRAWDOWN_SCHEMA, **time})
    ts = frame.select(pl.col("i").alias("at"), pl.col("ts"))
    peaks = frame.select(pl.col("i").alias("peak_i"), pl.col("equity").alias("peak_equity"))
    recovered = pl.col("end_i") <= last
    end = pl.when(recovered).then(pl.col("end_i")).otherwise(last)
    days = pl.duration(days=1)
    return (
        periods.join(peaks, on="peak_i")
        .with_columns(
            (100.0 * (1.0 - pl.col("valley_equity") / pl.col("peak_equity"))).alias("depth_pct")
        )
        .sort(["depth_pct", "peak_i"], descending=[True, False])
        .head(n)
        .with_columns(end.alias("until_i"), recovered.alias("recovered"))
        .join(ts.rename({"at": "peak_i", "ts": "start"}), on="peak_i", how="left")
        .join(ts.rename({"at": "valley_i", "ts": "valley"}), on="valley_i", how="left")
        .join(ts.rename({"at": "until_i", "ts": "until"}), on="until_i", how="left")
        .select(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("rank"),
            "start",
            "valley",
            pl.when("recovered").then(pl.col("until")).alias("recovery"),
            "depth_pct",
            (pl.col("until_i") - pl.col("peak_i")).cast(pl.Int64).alias("bars"),
            ((pl.col("until") - pl.col("start")) / days).alias("days"),
            pl.when("recovered")
            .then(pl.col("until_i") - pl.col("valley_i"))
            .cast(pl.Int64)
            .alias("recovery_bars"),
            pl.when("recovered")
            .then((pl.col("until") - pl.col("valley")) / days)
            .alias("recovery_days"),
        )
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
    bars: pl.DataFrame | None = None,
    width: int = 760,
    max_points: int = 5_000,
    bins: int = 40,
    shaded_drawdowns: int = 5,
) -> alt.VConcatChart:
    """The four-panel tearsheet (module docstring) of ``result`` (:func:`aiopt_lib.backtest_metrics`
    figures in the subtitle: total return, Sharpe, max drawdown, trades). The equity and drawdown
    panels share a zoomable time axis; no panel holds more than ``max_points`` points.

    ``bars`` (``ts``, ``close``; the bars the backtest ran on, any longer span is cut to the
    equity's bars) add the buy-and-hold line (:func:`buy_and_hold`, same starting capital) to the
    equity panel and its return to the subtitle: a strategy is only worth its risk if it beats
    holding the instrument. The ``shaded_drawdowns`` deepest drawdowns (:func:`worst_drawdowns`)
    are shaded on the equity panel from peak to recovery (0: none). Legends sit inside or under
    their own panel, not beside the figure."""
    metrics = result.metrics
    equity = result.equity.select("ts", "equity")
    if equity.height == 0:
        raise ValueError("tearsheet needs a result with at least one bar of equity")
    initial = _initial_capital(result)
    curve = drawdown_frame(equity)
    underwater = curve.select("ts", (pl.col("drawdown") * -100.0).alias("drawdown_pct"))
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    x = alt.X("ts:T", title=None, axis=time_axis(width))
    curves = {"strategy": equity}
    if bars is not None:
        curves["buy-and-hold"] = buy_and_hold(equity, bars, initial)
    each = max(2, max_points // len(curves))
    lines = pl.concat(
        [
            _envelope(frame, "equity", each).with_columns(pl.lit(name).alias("curve"))
            for name, frame in curves.items()
        ]
    )
    legend = (
        alt.Legend(orient="top-left", title=None, fillColor="white", padding=4, labelFontSize=11)
        if len(curves) > 1
        else None
    )
    equity_line = (
        alt.Chart(inline_data(lines))
        .mark_line(strokeWidth=1.2)
        .encode(
            x=x,
            y=alt.Y("equity:Q", scale=alt.Scale(zero=False), title="equity"),
            color=alt.Color(
                "curve:N",
                scale=alt.Scale(domain=list(curves), range=list(_CURVE_COLOURS[: len(curves)])),
                legend=legend,
            ),
            tooltip=["curve:N", "ts:T", alt.Tooltip("equity:Q", format=",.2f")],
        )
        .add_params(zoom)
    )
    layers: list[alt.Chart] = [equity_line]
    worst = worst_drawdowns(equity, shaded_drawdowns) if shaded_drawdowns > 0 else None
    if worst is not None and worst.height:
        periods = worst.select(
            "rank",
            "start",
            pl.col("recovery").fill_null(equity["ts"][-1]).alias("end"),
            "depth_pct",
        )
        shade = (
            alt.Chart(inline_data(periods))
            .mark_rect(color="#d62728", opacity=0.1)
            .encode(
                x="start:T",
                x2="end:T",
                tooltip=[
                    alt.Tooltip("rank:Q", title="drawdown #"),
                    alt.Tooltip("depth_pct:Q", format=".2f", title="depth %"),
                    alt.Tooltip("start:T", format="%Y-%m-%d %H:%M"),
                    alt.Tooltip("end:T", format="%Y-%m-%d %H:%M", title="recovery (or last bar)"),
                ],
            )
        )
        layers.insert(0, shade)  # behind the lines
    shaded = (
        f", the {worst.height} worst drawdowns shaded" if worst is not None and worst.height else ""
    )
    equity_panel = alt.layer(*layers).properties(width=width, height=220, title=f"Equity{shaded}")
    drawdown_panel = (
        alt.Chart(inline_data(_envelope(underwater, "drawdown_pct", max_points)))
        .mark_area(color="#d62728", opacity=0.6, line={"color": "#a50f15", "strokeWidth": 0.8})
        .encode(
            x=alt.X("ts:T", title=None, scale=alt.Scale(domain=zoom), axis=time_axis(width)),
            y=alt.Y("drawdown_pct:Q", title="drawdown %"),
            tooltip=["ts:T", alt.Tooltip("drawdown_pct:Q", format=".2f")],
        )
        .properties(width=width, height=140, title="Drawdown (underwater), % below the peak")
    )
    months = monthly_returns(equity, initial)
    limit = float(months["return_pct"].abs().max() or 1.0)
    heatmap = alt.Chart(inline_data(months)).encode(
        x=alt.X("month_name:O", sort=list(MONTHS), title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("year:O", title=None),
    )
    monthly_panel = (
        heatmap.mark_rect().encode(
            color=alt.Color(
                "return_pct:Q",
                scale=alt.Scale(scheme="redyellowgreen", domain=[-limit, limit]),
                title="month %",
                legend=alt.Legend(orient="bottom", direction="horizontal", gradientLength=200),
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
    hold = (
        f" (buy-and-hold {float(curves['buy-and-hold']['equity'][-1]) / initial - 1:.2%})"
        if "buy-and-hold" in curves
        else ""
    )
    subtitle = (
        f"total return {metrics.get('total_return', float('nan')):.2%}{hold} · "
        f"Sharpe {metrics.get('sharpe', float('nan')):.2f} · "
        f"max drawdown {metrics.get('max_drawdown', float('nan')):.2%} · "
        f"{int(metrics.get('trades', result.trades.height))} trades"
    )
    # independent colours: otherwise Vega-Lite merges the panels' colour scales into one legend
    # floating beside the whole figure (next to the equity panel)
    return (
        alt.vconcat(equity_panel, drawdown_panel, monthly_panel, pnl_panel, spacing=18)
        .resolve_scale(color="independent")
        .resolve_legend(color="independent")
        .properties(title=alt.TitleParams(title, subtitle=subtitle, anchor="start"))
    )


def _initial_capital(result: BacktestResult) -> float:
    """The starting capital: ``final_equity / (1 + total_return)`` from the metrics, else the
    first bar's equity."""
    final, total = result.metrics.get("final_equity"), result.metrics.get("total_return")
    if final is not None and total is not None and total > -1 and np.isfinite(final):
        return float(final) / (1.0 + float(total))
    return float(result.equity["equity"][0])


__all__ = [
    "MONTHS",
    "buy_and_hold",
    "drawdown_frame",
    "monthly_returns",
    "tearsheet",
    "trade_pnl_histogram",
    "worst_drawdowns",
]
