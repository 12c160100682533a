"""An ipywidgets panel for sweeping a strategy's parameters by hand in JupyterLab.

::

    panel = strategy_panel(bars, builtin_template("ema_cross"), oos_start=lockbox_start)
    panel                      # sliders, statistics, trades, one chart; a picture in HTML reports
    panel.set(fast=5, slow=60) # several controls, one backtest

Each change rebuilds the :class:`~aiopt_lib.strategy.spec.StrategySpec`, checks the template's
constraints, runs the vectorised backtest on one :class:`~aiopt_lib.strategy.spec.SignalContext` (so
an ``ema(20)`` is computed once however often the sliders move) and redraws: the statistics of
:func:`~aiopt_lib.strategy.performance.performance_table` (strategy next to buy-and-hold, and on the
out-of-sample bars when ``oos_start`` is given), the last trades, and one chart (price with the
fills, equity next to buy-and-hold, a drawdown strip, the out-of-sample bars shaded, a title
made from the parameters). A violated constraint or an invalid spec shows its message in the
status line and leaves the last good result on screen.

Why it is built this way: the backtest takes a few milliseconds, so the panel's speed is the
chart's. Re-creating an Altair chart per change validated thousands of inline rows against the
Vega-Lite schema (a quarter of a second) and sent ~400 KiB for the browser to compile into a new
view. Here the chart's spec is built and validated once per panel, with named datasets; the
browser draws it once (canvas renderer) and each change sends only the data that changed (the
strategy's equity and drawdown thinned to the extremes of each pixel column, the fills, the
title: tens of KiB, rounded) as a small script that swaps the data of the live Vega view. The
price line and the shading never travel again, the zoom survives a change, and nothing is
validated per change. Static HTML reports (nbconvert keeps no widget state) show
:meth:`StrategyPanel.static_html` instead: the chart as a PNG (vl-convert) with the tables.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from html import escape
from typing import Any

import altair as alt
import ipywidgets as widgets
import numpy as np
import polars as pl

from aiopt_lib.core.bars import infer_timeframe
from aiopt_lib.core.errors import AioptError, ConfigError
from aiopt_lib.strategy.backtest import BacktestResult
from aiopt_lib.strategy.performance import performance_table
from aiopt_lib.strategy.rules import SignalContext
from aiopt_lib.strategy.search import ParamRange, SearchTemplate
from aiopt_lib.strategy.spec import StrategySpec, backtest
from aiopt_lib.viz.charts import chart_png, vega_bundle_script

DEFAULT_MAX_POINTS = 1_800
"""Rows per drawn series (price line, equity, fills): about two per pixel column of the chart."""
TRADES_SHOWN = 50
"""How many of the latest trades the panel lists."""
DIRECTIONS: tuple[str, ...] = ("long", "short", "both")
CHART_DATASETS: tuple[str, ...] = ("price", "equity", "fills", "oos")
"""The chart's named datasets; only ``equity`` and ``fills`` change when a control moves."""

_EVENT_COLOURS = {
    "long entry": "#1a9850",
    "short entry": "#d73027",
    "long exit": "#1a9850",
    "short exit": "#d73027",
}
_EVENT_SHAPES = {
    "long entry": "triangle-up",
    "short entry": "triangle-down",
    "long exit": "cross",
    "short exit": "cross",
}
_CURVE_COLOURS = {"strategy": "#6a3d9a", "buy & hold": "#9e9e9e"}
_OOS_COLOUR = "#fdebd0"
_TIME_TOOLTIP = alt.Tooltip("t:T", timeUnit="utcyearmonthdatehoursminutes", title="time (UTC)")

_STYLE = """<style>
.aiopt-panel table {border-collapse: collapse; font-size: 12px; line-height: 1.35;
  font-variant-numeric: tabular-nums}
.aiopt-panel th, .aiopt-panel td {padding: 1px 8px; text-align: right; white-space: nowrap}
.aiopt-panel thead th {border-bottom: 1px solid #999; font-weight: 600}
.aiopt-panel .aiopt-stats tbody th {text-align: left; font-weight: normal}
.aiopt-panel caption {caption-side: top; text-align: left; color: #555; padding: 0 0 2px 8px}
.aiopt-panel .aiopt-trades :is(td, th):is(:nth-child(-n+3), :nth-child(8)) {text-align: left}
.aiopt-panel .aiopt-status {display: block; font-size: 12px; line-height: 1.4; max-width: 380px}
.aiopt-panel .aiopt-oos {background: #fdebd0}
.aiopt-panel .aiopt-gain {color: #1b5e20}
.aiopt-panel .aiopt-loss {color: #b71c1c}
</style>"""


# ---------------------------------------------------------------------------------------------
# Chart data


def _extremes(series: list[np.ndarray], buckets: int) -> np.ndarray:
    """Sorted row positions keeping, per bucket of consecutive rows, the argmin and argmax of each
    series, plus the first and last row: a line through them looks the same as through every
    row when a bucket is no wider than a pixel column (at most ``2 × buckets × len(series) + 2``
    rows)."""
    n = len(series[0])
    size = math.ceil(n / buckets)
    count = math.ceil(n / size)
    starts = np.arange(count) * size
    keep = [np.array([0, n - 1])]
    for values in series:
        padded = np.pad(values, (0, count * size - n), mode="edge").reshape(count, size)
        keep.append(starts + padded.argmin(axis=1))
        keep.append(starts + padded.argmax(axis=1))
    return np.unique(np.minimum(np.concatenate(keep), n - 1))


def _epoch_ms(ts: pl.Series) -> np.ndarray:
    return ts.dt.epoch("ms").to_numpy()


def price_rows(bars: pl.DataFrame, *, max_points: int = DEFAULT_MAX_POINTS) -> pl.DataFrame:
    """The price line's rows: ``t`` (the bar's open, epoch milliseconds) and ``c`` (close); at
    most ``max_points``, thinned to each bucket's lowest and highest close."""
    close = bars.get_column("close").to_numpy()
    index = (
        np.arange(len(close))
        if len(close) <= max_points
        else _extremes([close], (max_points - 2) // 2)
    )
    return pl.DataFrame({"t": _epoch_ms(bars.get_column("ts"))[index], "c": close[index]})


def equity_rows(
    result: BacktestResult, *, max_points: int = DEFAULT_MAX_POINTS, initial_capital: float
) -> pl.DataFrame:
    """The equity panel's rows: ``t``, ``e`` (equity, to the cent) and ``d`` (drawdown from the
    running peak, a negative fraction); at most ``max_points``, thinned to each bucket's lowest
    and highest equity and deepest drawdown (the drawdown is computed on every bar first)."""
    equity = result.equity.get_column("equity").to_numpy()
    peaks = np.maximum.accumulate(np.concatenate(([initial_capital], equity)))[1:]
    drawdown = equity / peaks - 1.0
    if len(equity) <= max_points:
        index = np.arange(len(equity))
    else:
        index = _extremes([equity, drawdown], (max_points - 2) // 4)
    return pl.DataFrame(
        {
            "t": _epoch_ms(result.equity.get_column("ts"))[index],
            "e": equity[index].round(2),
            "d": drawdown[index].round(5),
        }
    )


def fill_rows(
    trades: pl.DataFrame, *, max_points: int = DEFAULT_MAX_POINTS, decimals: int = 5
) -> tuple[pl.DataFrame, int]:
    """One row per fill: ``t``, ``p`` (the fill price), ``event`` (``"long entry"``, ``"short
    exit"``...) and ``pnl`` (exits); and the number of trades drawn. When the fills would take
    more than ``max_points`` rows the trades are thinned evenly over time."""
    shown = trades
    budget = max(1, max_points // 2)
    if trades.height > budget:
        keep = np.unique(np.linspace(0, trades.height - 1, budget).round().astype(np.int64))
        shown = trades[keep]
    rows = pl.concat(
        [
            shown.select(
                pl.col("entry_ts").dt.epoch("ms").alias("t"),
                pl.col("entry_price").round(decimals).alias("p"),
                (pl.col("side") + " entry").alias("event"),
                pl.lit(None, pl.Float64).alias("pnl"),
            ),
            shown.select(
                pl.col("exit_ts").dt.epoch("ms").alias("t"),
                pl.col("exit_price").round(decimals).alias("p"),
                (pl.col("side") + " exit").alias("event"),
                pl.col("pnl").round(2),
            ),
        ]
    ).sort("t", maintain_order=True)
    return rows, shown.height


def panel_chart_datasets(
    bars: pl.DataFrame,
    result: BacktestResult,
    *,
    initial_capital: float,
    oos_start: dt.datetime | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    decimals: int = 5,
) -> tuple[dict[str, pl.DataFrame], int]:
    """Every dataset of the panel's chart (:data:`CHART_DATASETS`) for ``result`` on ``bars``, and
    the number of trades given markers. ``oos`` is one row ``a``..``b`` (from ``oos_start`` to
    the end of the last bar) or empty."""
    if max_points < 10:
        raise ConfigError(f"max_points must be >= 10, got {max_points}")
    fills, shown = fill_rows(result.trades, max_points=max_points, decimals=decimals)
    price = price_rows(bars, max_points=max_points).with_columns(pl.col("c").round(decimals))
    datasets = {
        "price": price,
        "equity": equity_rows(result, max_points=max_points, initial_capital=initial_capital),
        "fills": fills,
        "oos": _oos_rows(bars, oos_start),
    }
    return datasets, shown


def _oos_rows(bars: pl.DataFrame, oos_start: dt.datetime | None) -> pl.DataFrame:
    ts = bars.get_column("ts")
    schema = {"a": pl.Int64, "b": pl.Int64}
    if oos_start is None or ts.is_empty() or _as_utc(oos_start) > ts[-1]:
        return pl.DataFrame(schema=schema)
    step = infer_timeframe(bars) or dt.timedelta(0)
    start = max(_as_utc(oos_start), ts[0])
    end = ts[-1] + step
    return pl.DataFrame({"a": [_ms(start)], "b": [_ms(end)]}, schema=schema)


def _ms(value: dt.datetime) -> int:
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _columns(frame: pl.DataFrame) -> dict[str, list[Any]]:
    """``frame`` column-wise, the compact form the browser turns back into rows."""
    return {name: frame.get_column(name).to_list() for name in frame.columns}


# ---------------------------------------------------------------------------------------------
# Chart spec


def panel_chart_template(
    *,
    hold_factor: float,
    shaded: bool,
    width: int = 900,
    price_height: int = 220,
    equity_height: int = 150,
    drawdown_height: int = 70,
) -> dict[str, Any]:
    """The panel chart's Vega-Lite spec without data, built with Altair and validated once per
    set of arguments (later calls copy the validated spec: validation is the slow part).

    Three panels on one time axis (drag on the price panel to zoom, double-click to reset):
    close with the fills (triangles up/down for long/short entries, crosses for exits), the
    strategy's equity next to buy-and-hold (``hold_factor`` × close: the initial capital over
    the first close), and the drawdown strip; with ``shaded``, the ``oos`` rows as a band in
    each. Data comes from the named datasets of :data:`CHART_DATASETS`; the title is the
    ``panel_title`` parameter, so a change of parameters swaps data and one signal only.
    """
    return copy.deepcopy(
        _validated_template(
            hold_factor, shaded, width, price_height, equity_height, drawdown_height
        )
    )


@functools.lru_cache(maxsize=16)
def _validated_template(
    hold_factor: float,
    shaded: bool,
    width: int,
    price_height: int,
    equity_height: int,
    drawdown_height: int,
) -> dict[str, Any]:
    scale = alt.Scale(type="utc")
    x = alt.X("t:T", title=None, scale=scale)
    zoom = alt.selection_interval(bind="scales", encodings=["x"], name="zoom")
    band = alt.Chart(alt.NamedData("oos")).mark_rect(color=_OOS_COLOUR, opacity=0.8)
    band = band.encode(x=alt.X("a:T", title=None, scale=scale), x2="b:T")
    label = (
        alt.Chart(alt.NamedData("oos"))
        .mark_text(align="left", baseline="top", dx=4, dy=4, color="#a0522d", fontSize=11)
        .encode(x=alt.X("a:T", scale=scale), y=alt.value(0), text=alt.value("out of sample"))
    )
    line = (
        alt.Chart(alt.NamedData("price"))
        .mark_line(strokeWidth=1, color="#1f4e79")
        .encode(
            x=x,
            y=alt.Y("c:Q", scale=alt.Scale(zero=False), title="close"),
            tooltip=[_TIME_TOOLTIP, alt.Tooltip("c:Q", format=".5f", title="close")],
        )
    )
    fills = (
        alt.Chart(alt.NamedData("fills"))
        .mark_point(size=50, filled=True, opacity=0.9)
        .encode(
            x=x,
            y=alt.Y("p:Q"),
            color=alt.Color(
                "event:N",
                scale=alt.Scale(domain=list(_EVENT_COLOURS), range=list(_EVENT_COLOURS.values())),
                title="fill",
            ),
            shape=alt.Shape(
                "event:N",
                scale=alt.Scale(domain=list(_EVENT_SHAPES), range=list(_EVENT_SHAPES.values())),
                title="fill",
            ),
            tooltip=[
                _TIME_TOOLTIP,
                alt.Tooltip("event:N", title="fill"),
                alt.Tooltip("p:Q", format=".5f", title="price"),
                alt.Tooltip("pnl:Q", format=",.2f", title="PnL"),
            ],
        )
    )
    curve_colour = alt.Scale(domain=list(_CURVE_COLOURS), range=list(_CURVE_COLOURS.values()))
    hold = (
        alt.Chart(alt.NamedData("price"))
        .transform_calculate(e=f"datum.c * {hold_factor!r}", curve="'buy & hold'")
        .mark_line(strokeWidth=1)
        .encode(
            x=x,
            y=alt.Y("e:Q", scale=alt.Scale(zero=False), title="equity"),
            color=alt.Color("curve:N", scale=curve_colour, title=None),
        )
    )
    equity = (
        alt.Chart(alt.NamedData("equity"))
        .transform_calculate(curve="'strategy'")
        .mark_line(strokeWidth=1.2)
        .encode(
            x=x,
            y=alt.Y("e:Q"),
            color=alt.Color("curve:N", scale=curve_colour, title=None),
            tooltip=[
                _TIME_TOOLTIP,
                alt.Tooltip("e:Q", format=",.2f", title="equity"),
                alt.Tooltip("d:Q", format=".2%", title="drawdown"),
            ],
        )
    )
    drawdown = (
        alt.Chart(alt.NamedData("equity"))
        .mark_area(color="#c0392b", opacity=0.55, line={"color": "#c0392b", "strokeWidth": 0.8})
        .encode(x=x, y=alt.Y("d:Q", axis=alt.Axis(format="%", tickCount=3), title="drawdown"))
    )
    under = [band] if shaded else []
    price_panel = alt.layer(*under, line, fills, *([label] if shaded else []))
    chart = (
        alt.vconcat(
            price_panel.add_params(zoom).properties(width=width, height=price_height),
            alt.layer(*under, hold, equity).properties(width=width, height=equity_height),
            alt.layer(*under, drawdown).properties(width=width, height=drawdown_height),
            spacing=6,
        )
        .resolve_scale(x="shared", color="independent", shape="independent")
        .add_params(alt.param(name="panel_title", value=""))
        .properties(title=alt.Title(text=alt.ExprRef("panel_title"), anchor="start"))
    )
    return chart.to_dict()  # validated here, once


def panel_chart_spec(
    template: Mapping[str, Any], datasets: Mapping[str, pl.DataFrame], title: str
) -> dict[str, Any]:
    """``template`` (:func:`panel_chart_template`) with ``datasets`` and ``title`` filled in: a complete
    Vega-Lite spec, not validated again (its structure was, and the data is ours)."""
    spec = dict(template)
    spec["params"] = [
        {"name": "panel_title", "value": title} if p.get("name") == "panel_title" else p
        for p in template["params"]
    ]
    spec["datasets"] = {name: frame.to_dicts() for name, frame in datasets.items()}
    return spec


def _chart_title(spec: StrategySpec, shown: int, n_trades: int) -> str:
    params = ", ".join(f"{k}={v:g}" for k, v in spec.params.items())
    title = f"{spec.name} ({spec.direction}): {params}" if params else f"{spec.name}"
    if shown < n_trades:
        title += f" (markers for {shown:,} of {n_trades:,} trades)"
    return title


def backtest_chart(
    bars: pl.DataFrame,
    result: BacktestResult,
    spec: StrategySpec,
    *,
    oos_start: dt.datetime | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    title: str | None = None,
) -> alt.VConcatChart:
    """The panel's chart for ``result`` (a backtest of ``spec`` on ``bars``) as an Altair chart:
    price with the fills, equity next to buy-and-hold, drawdown, ``oos_start`` onwards shaded,
    titled with the params unless ``title`` is given. At most ``max_points`` rows per series
    (:func:`panel_chart_datasets`)."""
    close = bars.get_column("close")
    datasets, shown = panel_chart_datasets(
        bars,
        result,
        initial_capital=spec.initial_capital,
        oos_start=oos_start,
        max_points=max_points,
        decimals=_price_decimals(spec),
    )
    template = panel_chart_template(
        hold_factor=spec.initial_capital / close[0] if len(close) else 1.0,
        shaded=datasets["oos"].height > 0,
    )
    heading = title or _chart_title(spec, shown, result.trades.height)
    return alt.VConcatChart.from_dict(panel_chart_spec(template, datasets, heading), validate=False)


def chart_data_rows(chart: alt.TopLevelMixin | Mapping[str, Any]) -> int:
    """How many data rows a chart (or its spec) carries (inline values and named datasets)."""
    spec = chart.to_dict(validate=False) if isinstance(chart, alt.TopLevelMixin) else chart
    count = sum(len(values) for values in spec.get("datasets", {}).values())

    def walk(node: Any) -> int:
        if isinstance(node, dict):
            own = len(node["values"]) if isinstance(node.get("values"), list) else 0
            return own + sum(walk(v) for k, v in node.items() if k not in ("values", "datasets"))
        if isinstance(node, list):
            return sum(walk(v) for v in node)
        return 0

    return count + walk(spec)


def _price_decimals(spec: StrategySpec) -> int:
    try:
        tick = spec.instrument_tick_size
    except ConfigError:
        return 6
    return max(0, min(10, math.ceil(-math.log10(tick) - 1e-9)))


# ---------------------------------------------------------------------------------------------
# Tables


def _oos_result(
    result: BacktestResult, start: int, initial_capital: float
) -> tuple[BacktestResult, float]:
    """Bars ``start:`` of a full-history result, as :func:`~aiopt_lib.strategy.search.window_metrics`
    scores a window: the equity from the close before it, the trades that closed inside it."""
    equity = result.equity[start:]
    first = equity.get_column("ts")[0]
    trades = result.trades.filter(pl.col("exit_ts") >= first)
    base = float(result.equity.get_column("equity")[start - 1]) if start > 0 else initial_capital
    return BacktestResult(trades=trades, equity=equity, metrics={}), base


def panel_statistics(
    bars: pl.DataFrame,
    result: BacktestResult,
    *,
    initial_capital: float,
    timeframe: dt.timedelta | None,
    oos_start: dt.datetime | None = None,
) -> pl.DataFrame:
    """:func:`~aiopt_lib.strategy.performance.performance_table` of ``result`` on ``bars``
    (columns ``statistic``, ``unit``, ``strategy``, ``buy_and_hold`` and their ``*_value``
    numbers) and, with ``oos_start`` inside the bars, the same figures from there on as
    ``oos_strategy``, ``oos_buy_and_hold`` (and ``*_value``): the strategy's returns from the
    equity at the close before, the trades closed from then on (as the search scores a window),
    buy-and-hold from the first out-of-sample close."""
    close = bars.get_column("close")
    table = performance_table(
        result, close, initial_capital=initial_capital, timeframe=timeframe
    ).select(
        "statistic", "unit", "strategy", "buy_and_hold", "strategy_value", "buy_and_hold_value"
    )
    if oos_start is None:
        return table
    start = int(bars.get_column("ts").search_sorted(_as_utc(oos_start), side="left"))
    if start >= bars.height:
        return table
    oos, base = _oos_result(result, start, initial_capital)
    late = performance_table(oos, close[start:], initial_capital=base, timeframe=timeframe)
    return table.with_columns(
        late.get_column("strategy").alias("oos_strategy"),
        late.get_column("buy_and_hold").alias("oos_buy_and_hold"),
        late.get_column("strategy_value").alias("oos_strategy_value"),
        late.get_column("buy_and_hold_value").alias("oos_buy_and_hold_value"),
    )


_STAT_COLUMNS = (
    ("strategy", "strategy"),
    ("buy_and_hold", "buy &amp; hold"),
    ("oos_strategy", "strategy"),
    ("oos_buy_and_hold", "buy &amp; hold"),
)


def statistics_table_html(table: pl.DataFrame, *, oos_start: dt.datetime | None = None) -> str:
    """:func:`panel_statistics` as an HTML table for people (the formatted figures); each row carries
    its statistic in ``data-stat`` and each cell the exact number in ``data-value`` (``repr``
    of the float, empty when undefined), so tests can compare."""
    columns = [(key, label) for key, label in _STAT_COLUMNS if key in table.columns]
    oos = any(key.startswith("oos_") for key, _ in columns)
    head = '<tr><th></th><th colspan="2">whole history</th>'
    if oos:
        since = f" from {_as_utc(oos_start):%Y-%m-%d}" if oos_start is not None else ""
        head += f'<th colspan="2" class="aiopt-oos">out of sample{since}</th>'
    head += "</tr><tr><th></th>" + "".join(
        f"<th{' class=aiopt-oos' if key.startswith('oos_') else ''}>{label}</th>"
        for key, label in columns
    )
    body = []
    for row in table.iter_rows(named=True):
        cells = []
        for key, _ in columns:
            value = row[f"{key}_value"]
            exact = "" if value is None else repr(float(value))
            css = ' class="aiopt-oos"' if key.startswith("oos_") else ""
            cells.append(f'<td{css} data-value="{exact}">{escape(str(row[key]))}</td>')
        stat = escape(row["statistic"])
        body.append(f'<tr data-stat="{stat}"><th>{stat}</th>{"".join(cells)}</tr>')
    return (
        '<table class="aiopt-stats"><thead>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def trades_table_html(
    trades: pl.DataFrame,
    *,
    last: int = TRADES_SHOWN,
    decimals: int = 5,
    oos_start: dt.datetime | None = None,
) -> str:
    """The ``last`` trades, newest first, as a compact HTML table: entry and exit time (UTC),
    side, prices, PnL, return, exit reason, bars held; trades entered from ``oos_start`` on are
    tinted as the chart's out-of-sample band."""
    n = trades.height
    if n == 0:
        return '<table class="aiopt-trades"><caption>no trades</caption></table>'
    shown = trades.tail(last).reverse()
    oos = (
        shown.get_column("entry_ts") >= _as_utc(oos_start)
        if oos_start is not None
        else pl.repeat(False, shown.height, eager=True)
    )
    rows = shown.select(
        pl.col("entry_ts").dt.strftime("%Y-%m-%d %H:%M"),
        pl.col("exit_ts").dt.strftime("%Y-%m-%d %H:%M"),
        "side",
        "entry_price",
        "exit_price",
        "pnl",
        "return",
        "exit_reason",
        "bars_held",
    ).with_columns(oos.alias("oos"))
    body = []
    for entry, exit_, side, entry_px, exit_px, pnl, ret, reason, held, late in rows.iter_rows():
        tone = " class=aiopt-gain" if pnl > 0 else " class=aiopt-loss" if pnl < 0 else ""
        body.append(
            f"<tr{' class=aiopt-oos' if late else ''}>"
            f"<td>{entry}</td><td>{exit_}</td><td>{escape(side)}</td>"
            f"<td>{entry_px:.{decimals}f}</td><td>{exit_px:.{decimals}f}</td>"
            f"<td{tone}>{pnl:,.2f}</td><td{tone}>{ret:.2%}</td>"
            f"<td>{escape(str(reason))}</td><td>{held}</td></tr>"
        )
    which = f"the last {len(body)} of {n:,} trades" if n > len(body) else f"all {n:,} trades"
    return (
        f'<table class="aiopt-trades"><caption>Trades: {which}, newest first (UTC)</caption>'
        "<thead><tr><th>entry</th><th>exit</th><th>side</th><th>entry price</th>"
        "<th>exit price</th><th>PnL</th><th>return</th><th>exit</th><th>bars</th></tr></thead>"
        "<tbody>" + "".join(body) + "</tbody></table>"
    )


# ---------------------------------------------------------------------------------------------
# Controls


def default_space(spec: StrategySpec) -> dict[str, ParamRange]:
    """Slider ranges for every param of ``spec`` when no search space is given: whole numbers
    ``v >= 1`` go from 1 to ``max(4 v, 10)``, other numbers from ``v / 4`` to ``4 v`` (mirrored
    for negatives; 0 gives 0..10 or 0..1)."""
    space = {}
    for name, value in spec.params.items():
        is_int = isinstance(value, int)
        if value == 0:
            low, high = 0, (10 if is_int else 1.0)
        elif is_int:
            low, high = (1, max(4 * value, 10)) if value > 0 else (min(4 * value, -10), -1)
        else:
            low, high = sorted((value / 4.0, value * 4.0))
        space[name] = ParamRange(low=low, high=high)
    return space


def _decimals(step: float) -> int:
    return max(2, math.ceil(-math.log10(step))) if step > 0 else 2


def _control(name: str, param_range: ParamRange, value: float) -> widgets.Widget:
    """The widget for one param, starting at ``value`` (a range is widened to hold it)."""
    style = {"description_width": "90px"}
    layout = widgets.Layout(width="380px")
    if param_range.choices is not None:
        choices = list(param_range.choices)
        if value not in choices:
            choices.append(value)
        return widgets.Dropdown(
            options=[(str(c), c) for c in choices],
            value=value,
            description=name,
            style=style,
            layout=layout,
        )
    low = min(float(param_range.low), float(value))  # type: ignore[arg-type]
    high = max(float(param_range.high), float(value))  # type: ignore[arg-type]
    common = {"description": name, "continuous_update": False, "style": style, "layout": layout}
    if param_range.is_int:
        return widgets.IntSlider(
            value=int(value), min=int(low), max=int(high), step=int(param_range.step or 1), **common
        )
    if param_range.log:
        step = 0.01
        return widgets.FloatLogSlider(
            value=float(value),
            base=10,
            min=math.log10(low),
            max=math.log10(high),
            step=step,
            readout_format=".3g",
            **common,
        )
    step = float(param_range.step) if param_range.step else (high - low) / 100.0
    step = step if step > 0 else 1.0
    return widgets.FloatSlider(
        value=float(value),
        min=low,
        max=high,
        step=step,
        readout_format=f".{_decimals(step)}f",
        **common,
    )


def _coerce(control: widgets.Widget, name: str, value: Any) -> Any:
    """``value`` as ``control`` holds it; out-of-range values are an error, not clamped."""
    if isinstance(control, widgets.Dropdown):
        allowed = [o[1] if isinstance(o, tuple) else o for o in control.options]
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {allowed}")
        return value
    if isinstance(control, widgets.IntSlider):
        if isinstance(value, bool) or not float(value).is_integer():
            raise ConfigError(f"{name}: needs a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if isinstance(control, widgets.FloatLogSlider):
        low, high = control.base**control.min, control.base**control.max
    else:
        low, high = control.min, control.max
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value!r} is outside the slider's range {low}..{high}")
    return value


# ---------------------------------------------------------------------------------------------
# Browser side: one live Vega view per display, its data swapped by small scripts

# Draws the chart once under the script's own output (so two displays of a panel are two views)
# and registers how to apply an update: the named datasets are replaced and the title signal
# set on every view of the panel, and the container's data-seq says which update it shows.
_CHART_JS = """(function () {
  var div = document.currentScript && document.currentScript.previousElementSibling;
  var registry = window.aioptPanels = window.aioptPanels || {};
  var panel = registry[__ID__] = registry[__ID__] || {views: [], latest: null, draws: 0};
  var spec = __SPEC__;
  function rows(columns) {
    var keys = Object.keys(columns), n = keys.length ? columns[keys[0]].length : 0;
    var out = new Array(n);
    for (var i = 0; i < n; i++) {
      var row = {};
      for (var k = 0; k < keys.length; k++) { row[keys[k]] = columns[keys[k]][i]; }
      out[i] = row;
    }
    return out;
  }
  function drawn(view, seq) {
    view.aioptDiv.setAttribute('data-seq', String(seq));
    panel.seq = Math.max(panel.seq || 0, seq);
    panel.draws += 1;
    panel.drawnAt = performance.now();
  }
  function draw(view, update) {
    if (view.aioptSeq >= update.seq) { return Promise.resolve(); }
    view.aioptSeq = update.seq;
    view.data('equity', rows(update.equity));
    view.data('fills', rows(update.fills));
    view.signal('panel_title', update.title);
    return view.runAsync().then(function () { drawn(view, update.seq); });
  }
  panel.apply = function (update) {
    if (!panel.latest || update.seq > panel.latest.seq) { panel.latest = update; }
    panel.views.forEach(function (view) {
      draw(view, panel.latest).catch(function (err) { console.error(err); });
    });
  };
  if (!div) { return; }
  vegaEmbed(div, spec, {actions: false, renderer: 'canvas'}).then(function (result) {
    var view = result.view;
    view.aioptDiv = div;
    view.aioptSeq = __SEQ__;
    panel.views.push(view);
    drawn(view, __SEQ__);
    if (panel.latest) { return draw(view, panel.latest); }
  }).catch(function (err) { console.error(err); });
})();"""

# One change: hand the update to the panel's views, or keep it for the chart still loading.
_UPDATE_JS = """(function () {
  var registry = window.aioptPanels = window.aioptPanels || {};
  var panel = registry[__ID__] = registry[__ID__] || {views: [], latest: null, draws: 0};
  var update = __UPDATE__;
  if (panel.apply) { panel.apply(update); }
  else if (!panel.latest || update.seq > panel.latest.seq) { panel.latest = update; }
})();"""


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</`` to end it early)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _html_output(html: str) -> dict[str, Any]:
    return {
        "output_type": "display_data",
        "data": {"text/html": html, "text/plain": ""},
        "metadata": {},
    }


# ---------------------------------------------------------------------------------------------
# The panel


class StrategyPanel:
    """Sliders for a spec's params, the backtest they give, redrawn on every change.

    Attributes: ``widget`` (the box; displaying the panel itself shows it, with a static picture
    for HTML reports: :meth:`static_html`), ``controls`` (param name or ``"direction"`` ->
    widget), ``spec`` and ``result`` (the last spec that ran and its
    :class:`~aiopt_lib.strategy.backtest.BacktestResult`; ``result`` is None until one ran),
    ``statistics`` (:func:`panel_statistics` of the last run), ``chart_spec`` and ``chart`` (the
    chart's complete Vega-Lite spec and as an Altair chart, built on demand), ``stats_html``,
    ``trades_html`` and ``status`` (what the tables and the status line show), ``runs``
    (backtests run so far), ``refresh_ms`` and ``payload_bytes`` (the last redraw's Python time
    and what it sent to the browser), ``oos_start`` and ``context`` (the shared
    :class:`~aiopt_lib.strategy.spec.SignalContext`). Build it with :func:`strategy_panel`.
    """

    def __init__(
        self,
        context: SignalContext,
        template: SearchTemplate,
        spec: StrategySpec,
        *,
        max_points: int = DEFAULT_MAX_POINTS,
        oos_start: dt.datetime | None = None,
        trades_shown: int = TRADES_SHOWN,
    ) -> None:
        self.context = context
        self.template = template
        self.base_spec = spec
        self.max_points = max_points
        self.oos_start = _as_utc(oos_start) if oos_start is not None else None
        self.trades_shown = trades_shown
        self.spec: StrategySpec = spec
        self.result: BacktestResult | None = None
        self.statistics: pl.DataFrame | None = None
        self.runs = 0
        self.refresh_ms = math.nan
        self.payload_bytes = 0
        self._holding = 0
        self._status_text = ""
        self._id = uuid.uuid4().hex[:12]
        self._datasets: dict[str, pl.DataFrame] = {}
        self._title = ""
        self._chart: alt.VConcatChart | None = None
        self._chart_drawn = False  # the live chart has been sent; later runs send updates
        bars = context.bars
        close = bars.get_column("close")
        self._timeframe = infer_timeframe(bars)
        self._decimals = _price_decimals(spec)
        self._price = price_rows(bars, max_points=max_points).with_columns(
            pl.col("c").round(self._decimals)
        )
        self._oos = _oos_rows(bars, self.oos_start)
        self._template = panel_chart_template(
            hold_factor=spec.initial_capital / close[0] if len(close) else 1.0,
            shaded=self._oos.height > 0,
        )
        self.controls: dict[str, widgets.Widget] = {
            name: _control(name, param_range, spec.params[name])
            for name, param_range in template.space.items()
        }
        self.controls["direction"] = widgets.Dropdown(
            options=list(DIRECTIONS),
            value=spec.direction,
            description="direction",
            style={"description_width": "90px"},
            layout=widgets.Layout(width="380px"),
        )
        self.stats_widget = widgets.HTML(layout=widgets.Layout(margin="0 0 0 24px"))
        self.status_widget = widgets.HTML()
        # flex "none": a flex item with its own scrollbar would otherwise shrink to one line.
        self.trades_widget = widgets.HTML(
            layout=widgets.Layout(max_height="260px", overflow="auto", flex="none")
        )
        self.chart_output = widgets.Output(layout=widgets.Layout(min_height="480px"))
        # Carries each change's script to the browser; nothing to see.
        self.script_output = widgets.Output(layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox(
            [
                widgets.HTML(_STYLE),
                widgets.HBox(
                    [
                        widgets.VBox([*self.controls.values(), self.status_widget]),
                        self.stats_widget,
                    ]
                ),
                self.chart_output,
                self.trades_widget,
                self.script_output,
            ]
        )
        self.widget.add_class("aiopt-panel")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.refresh()

    # -- reading the state --------------------------------------------------------------------

    @property
    def stats_html(self) -> str:
        """The statistics table as HTML (:func:`statistics_table_html`); empty before a run."""
        return self.stats_widget.value

    @property
    def trades_html(self) -> str:
        """The trades table as HTML (:func:`trades_table_html`); empty before the first run."""
        return self.trades_widget.value

    @property
    def status(self) -> str:
        """The status line as plain text: what ran, or why nothing ran."""
        return self._status_text

    @property
    def chart_spec(self) -> dict[str, Any]:
        """The chart of the last run as a complete Vega-Lite spec (data and title included)."""
        return panel_chart_spec(self._template, self._datasets, self._title)

    @property
    def chart(self) -> alt.VConcatChart | None:
        """The chart of the last run as an Altair chart (built on first access after a run, not
        validated); None before the first run. The panel itself displays it, live."""
        if self.result is None:
            return None
        if self._chart is None:
            self._chart = alt.VConcatChart.from_dict(self.chart_spec, validate=False)
        return self._chart

    def values(self) -> dict[str, Any]:
        """The controls' current values (params and ``direction``)."""
        return {name: control.value for name, control in self.controls.items()}

    # -- changing it ----------------------------------------------------------------------------

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Within the block, control changes do not re-run; one run follows at the end."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if not self._holding:
            self.refresh()

    def set(self, **values: Any) -> None:
        """Set several controls (param names and/or ``direction``) and re-run once.

        Unknown names and values outside a slider's range raise :class:`ConfigError` before
        anything changes (a slider would otherwise clamp silently).
        """
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ConfigError(
                f"unknown control(s) {unknown}; the panel has {sorted(self.controls)}"
            )
        coerced = {
            name: _coerce(self.controls[name], name, value) for name, value in values.items()
        }
        with self.hold():
            for name, value in coerced.items():
                self.controls[name].value = value

    def _on_change(self, _change: Mapping[str, Any]) -> None:
        if not self._holding:
            self.refresh()

    def refresh(self) -> None:
        """Rebuild the spec from the controls; if it is valid and feasible, backtest and redraw,
        else show why in the status line and keep the previous result and chart."""
        started = time.perf_counter()
        values = self.values()
        direction = values.pop("direction")
        try:
            spec = (
                self.base_spec.with_params(**values)
                .model_copy(update={"direction": direction})
                .revalidated()
            )
        except (AioptError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            self._show_status(f"invalid spec: {exc}", ok=False)
            return
        violated = self.violated_constraints(spec.params)
        if violated:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            self._show_status(
                f"constraint violated: {'; '.join(violated)} ({shown}); showing the last valid run",
                ok=False,
            )
            return
        ran = time.perf_counter()
        try:
            result = backtest(self.context, spec)
        except (AioptError, ValueError) as exc:
            self._show_status(f"backtest failed: {exc}", ok=False)
            return
        backtest_ms = (time.perf_counter() - ran) * 1000
        self.runs += 1
        self.spec, self.result, self._chart = spec, result, None
        bars = self.context.bars
        self.statistics = panel_statistics(
            bars,
            result,
            initial_capital=spec.initial_capital,
            timeframe=self._timeframe,
            oos_start=self.oos_start,
        )
        fills, shown = fill_rows(result.trades, max_points=self.max_points, decimals=self._decimals)
        equity = equity_rows(
            result, max_points=self.max_points, initial_capital=spec.initial_capital
        )
        self._datasets = {"price": self._price, "equity": equity, "fills": fills, "oos": self._oos}
        self._title = _chart_title(spec, shown, result.trades.height)
        stats = statistics_table_html(self.statistics, oos_start=self.oos_start)
        trades = trades_table_html(
            result.trades, last=self.trades_shown, decimals=self._decimals, oos_start=self.oos_start
        )
        script = self._draw()
        self.stats_widget.value = stats
        self.trades_widget.value = trades
        self.refresh_ms = (time.perf_counter() - started) * 1000
        params = ", ".join(f"{k}={v}" for k, v in spec.params.items())
        status = self._show_status(
            f"run {self.runs}: {result.trades.height:,} trades, {params}, direction {direction} "
            f"(backtest {backtest_ms:.0f} ms, redraw {self.refresh_ms:.0f} ms)",
            ok=True,
        )
        self.payload_bytes = len(stats) + len(trades) + len(script) + len(status)

    def violated_constraints(self, params: Mapping[str, float]) -> list[str]:
        """The template's constraints that ``params`` break (empty: feasible)."""
        if self.template.feasible(params):
            return []
        return [
            text
            for text in self.template.constraints
            if not self.template.model_copy(update={"constraints": [text]}).feasible(params)
        ]

    # -- output ---------------------------------------------------------------------------------

    def _show_status(self, text: str, *, ok: bool) -> str:
        self._status_text = text
        colour = "#1b5e20" if ok else "#b71c1c"
        html = f'<span class="aiopt-status" style="color:{colour}">{escape(text)}</span>'
        self.status_widget.value = html
        return html

    def _draw(self) -> str:
        """Send the last run to the browser: the whole chart the first time, then only the
        changed datasets and the title (see the module docstring). Returns the HTML sent."""
        if not self._chart_drawn:
            script = (
                _CHART_JS.replace("__ID__", json.dumps(self._id))
                .replace("__SEQ__", str(self.runs))
                .replace("__SPEC__", _script_json(self.chart_spec))
            )
            html = (
                f'<div class="aiopt-panel-chart" data-aiopt-panel="{self._id}"></div>'
                f"<script>{script}</script>"
            )
            # The bundle goes in a script of its own before the chart's: currentScript must be
            # the chart's script, right after its div.
            self.chart_output.outputs = (
                _html_output(f"<script>{vega_bundle_script()}</script>" + html),
            )
            self._chart_drawn = True
            return html
        update = {
            "seq": self.runs,
            "title": self._title,
            "equity": _columns(self._datasets["equity"]),
            "fills": _columns(self._datasets["fills"]),
        }
        script = _UPDATE_JS.replace("__ID__", json.dumps(self._id)).replace(
            "__UPDATE__", _script_json(update)
        )
        html = f"<script>{script}</script>"
        self.script_output.outputs = (_html_output(html),)
        return html

    def static_html(self, *, scale: float = 1.0) -> str:
        """The panel's current state as plain HTML (no script, no widget): the status line, the
        chart as a PNG (vl-convert), the statistics and the trades. What a static report shows
        (nbconvert keeps no widget state, so it skips the live view for this)."""
        parts = [_STYLE, '<div class="aiopt-panel">', self.status_widget.value]
        if self.result is not None:
            png = base64.b64encode(chart_png(self.chart_spec, scale=scale)).decode()
            parts.append(
                f'<div><img class="aiopt-panel-picture" alt="{escape(self._title)}" '
                f'src="data:image/png;base64,{png}"></div>'
            )
        parts += [
            '<div style="display:flex;flex-wrap:wrap;gap:12px 24px;align-items:flex-start">'
            f'<div>{self.stats_html}</div><div style="max-height:320px;overflow:auto">'
            f"{self.trades_html}</div></div>",
            "</div>",
        ]
        return "".join(parts)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget for JupyterLab, and :meth:`static_html` for everything that cannot
        run it (nbconvert's HTML exporter skips a widget view whose state was not saved and
        takes ``text/html`` next)."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle or {})
        data["text/html"] = self.static_html()
        data["text/plain"] = f"<StrategyPanel {self._title or self.spec.name}: {self.status}>"
        return data


def strategy_panel(
    bars: pl.DataFrame,
    template: SearchTemplate | StrategySpec,
    *,
    space: Mapping[str, ParamRange] | None = None,
    predictions: pl.DataFrame | None = None,
    spec: StrategySpec | None = None,
    oos_start: dt.datetime | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> StrategyPanel:
    """An interactive panel (ipywidgets) sweeping the params of a strategy on ``bars``.

    One control per param of the search space (``IntSlider`` for whole-number ranges,
    ``FloatSlider`` with the range's step or (high − low) / 100, ``FloatLogSlider`` for log
    ranges, ``Dropdown`` for choices; sliders update on release) and a ``direction`` dropdown.
    ``template`` is a :class:`~aiopt_lib.strategy.search.SearchTemplate` (its space and constraints) or a
    bare :class:`~aiopt_lib.strategy.spec.StrategySpec` (ranges from :func:`default_space`, no
    constraints); ``space`` replaces the ranges. ``spec`` (e.g. a ranked strategy's) gives the
    rules and the starting values instead of the template's spec. ``predictions`` feed the
    ``ai_*`` gates. ``oos_start`` (e.g. the lockbox's start): the bars from then on are shaded
    in the chart and get their own statistics columns. The backtest runs once now and again on
    every change; display the returned :class:`StrategyPanel` (the panel itself, not its
    ``widget``: then HTML reports show a picture of it). ``max_points`` bounds the rows of each
    drawn series.
    """
    if isinstance(template, StrategySpec):
        base = spec or template
        template = SearchTemplate(spec=template, space=dict(space or default_space(base)))
    elif space is not None:
        template = SearchTemplate(
            spec=template.spec, space=dict(space), constraints=template.constraints
        )
    base = spec or template.spec
    missing = sorted(set(template.space) - set(base.params))
    if missing:
        raise ConfigError(f"the spec has no params {missing} of the search space")
    return StrategyPanel(
        SignalContext(bars, predictions),
        template,
        base,
        max_points=max_points,
        oos_start=oos_start,
    )


__all__ = [
    "DEFAULT_MAX_POINTS",
    "StrategyPanel",
    "backtest_chart",
    "chart_data_rows",
    "default_space",
    "panel_statistics",
    "strategy_panel",
]
