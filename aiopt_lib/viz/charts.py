"""Charts for people: Altair interactive charts and mplfinance candle charts that work offline.

Reports are shared as single HTML files and opened without internet, so Altair charts are rendered
by :func:`enable_offline_altair`'s renderer: the Vega/Vega-Lite/vega-embed JavaScript (bundled by
``vl-convert``) is inlined once per kernel process, and each chart is a small ``<div>`` plus its spec.
No CDN is referenced.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import polars as pl

from aiopt_lib.core.bars import ensure_bars, infer_timeframe
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features.patterns import PATTERNS
from aiopt_lib.features.registry import (
    REGISTRY,
    IndicatorDef,
    IndicatorParams,
    IndicatorRequest,
    compute_frame,
)

GAP_COLOURS = {
    "expected_weekend": "#d9d9d9",
    "expected_holiday": "#9ecae1",
    "unexpected": "#fb6a4a",
}

_bundle_emitted = False


@functools.cache
def vega_bundle_script() -> str:
    """Vega, Vega-Lite and vega-embed as one offline script (vl-convert's bundle, matching
    Altair's Vega-Lite). Wrapped in a function so the bundle's top-level consts cannot clash if a
    page holds it twice (two notebooks' outputs pasted together); the guard skips a second copy."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    bundle = vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())
    return "if (!window.vegaEmbed) { (function(){\n" + bundle + "\n})(); }"


def chart_png(spec: Mapping[str, Any], *, scale: float = 1.0) -> bytes:
    """A complete Vega-Lite spec drawn as a PNG by vl-convert (no browser): pictures of
    interactive charts in static reports."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    return vlc.vegalite_to_png(dict(spec), vl_version=vl_version_for_vl_convert(), scale=scale)


def _offline_renderer(spec: dict[str, Any], **_: Any) -> dict[str, str]:
    """Altair renderer: an HTML fragment that needs no network (the JS bundle once per process)."""
    global _bundle_emitted
    div_id = f"aiopt-vega-{uuid.uuid4().hex[:12]}"
    parts = []
    if not _bundle_emitted:
        parts.append(f'<script type="text/javascript">{vega_bundle_script()}</script>')
        _bundle_emitted = True
    spec_json = json.dumps(spec).replace("</", "<\\/")
    parts.append(
        f'<div class="aiopt-vega" id="{div_id}"></div>'
        '<script type="text/javascript">'
        f'vegaEmbed("#{div_id}", {spec_json}, {{"actions": false, "renderer": "svg"}})'
        ".catch(function(err){ console.error(err); });"
        "</script>"
    )
    return {"text/html": "".join(parts), "text/plain": "<Altair chart>"}


def enable_offline_altair() -> None:
    """Render Altair charts as self-contained HTML (no CDN) and lift Altair's 5,000-row limit.

    Call once at the top of a notebook; the first chart carries the JavaScript bundle (~0.9 MB).
    """
    if "aiopt_offline" not in alt.renderers.names():
        alt.renderers.register("aiopt_offline", _offline_renderer)
    alt.renderers.enable("aiopt_offline")
    alt.data_transformers.disable_max_rows()


def inline_data(frame: pl.DataFrame) -> alt.InlineData:
    """``frame`` as Altair data inlined in the chart spec, datetime columns as ISO-8601 UTC strings
    (``2017-01-02T03:00:00Z``): the data of every chart of ``aiopt_lib.viz``, e.g.
    ``alt.Chart(inline_data(frame))``.

    Inline data is not subject to Altair's row limit, so a chart does not depend on the global
    data-transformer setting (which notebooks and tests may not have changed), and a chart saved
    as HTML carries its data.
    """
    converted = frame.with_columns(
        pl.col(pl.Datetime).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return alt.InlineData(values=converted.to_dicts())


# Vega's default time labels mix formats ("Sep 17" for weeks, "October" for months) and drop
# overlapping labels only when they intersect, so neighbours touch ("Sep 17October"). One short
# format per tick granularity, chosen per tick so it still fits after zooming in to hours, a gap
# between labels, and about one tick per 100 pixels.
_TIME_LABEL = (
    "hours(datum.value) || minutes(datum.value) ? timeFormat(datum.value, '%H:%M')"
    " : date(datum.value) == 1 && month(datum.value) == 0 ? timeFormat(datum.value, '%Y')"
    " : timeFormat(datum.value, '%b %d')"
)


def time_axis(width: int = 900) -> alt.Axis:
    """The x axis of every time chart in :mod:`aiopt_lib.viz`: labels ``%H:%M`` at intra-day
    ticks, ``%b %d`` at day ticks (``Oct 01``, not ``October``), ``%Y`` at new years; at least
    10 px between labels (overlapping ones dropped greedily) and about one tick per 100 px of
    ``width``, so labels never run together (``Sep 17October``) at any zoom."""
    return alt.Axis(
        labelExpr=_TIME_LABEL,
        labelOverlap="greedy",
        labelSeparation=10,
        labelAngle=0,
        tickCount=max(2, width // 100),
    )


def _downsample_close(bars: pl.DataFrame, max_points: int) -> pl.DataFrame:
    """At most ``max_points`` rows: per bucket the low and the high (an envelope that keeps spikes)."""
    if bars.height <= max_points:
        return bars.select("ts", "close")
    bucket = max(1, bars.height * 2 // max_points)
    framed = bars.with_row_index("_i").with_columns((pl.col("_i") // bucket).alias("_b"))
    lows = framed.group_by("_b").agg(
        pl.col("ts").get(pl.col("low").arg_min()).alias("ts"), pl.col("low").min().alias("close")
    )
    highs = framed.group_by("_b").agg(
        pl.col("ts").get(pl.col("high").arg_max()).alias("ts"), pl.col("high").max().alias("close")
    )
    return (
        pl.concat([lows, highs])
        .sort("ts")
        .select("ts", "close")
        .unique("ts", keep="first", maintain_order=True)
    )


def price_chart(
    bars: pl.DataFrame,
    gaps: pl.DataFrame | None = None,
    *,
    title: str = "Close",
    max_points: int = 20_000,
    width: int = 900,
    height: int = 320,
) -> alt.LayerChart | alt.Chart:
    """Interactive close-price line (drag to zoom, double-click to reset) with gaps shaded by kind.

    ``gaps`` is :func:`aiopt_lib.data.cleaning.classify_gaps`'s frame (``gap_start``, ``gap_end``,
    ``kind``); each gap is drawn from the end of the bar before it to the open of the bar after it.
    """
    ensure_bars(bars)
    line_data = inline_data(_downsample_close(bars, max_points))
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    line = (
        alt.Chart(line_data)
        .mark_line(strokeWidth=1, color="#1f4e79")
        .encode(
            x=alt.X("ts:T", title=None, axis=time_axis(width)),
            y=alt.Y("close:Q", scale=alt.Scale(zero=False), title=title),
            tooltip=[
                alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("close:Q", format=".5f"),
            ],
        )
        .add_params(zoom)
        .properties(height=height, width=width)  # not "container": 0 px in report output areas
    )
    if gaps is None or gaps.height == 0:
        return line
    step = infer_timeframe(bars) or dt.timedelta(0)
    shade = gaps.select(
        (pl.col("gap_start") + step).alias("from"),
        pl.col("gap_end").alias("to"),
        pl.col("kind"),
        pl.col("missing_bars"),
    )
    shade = inline_data(shade)
    rects = (
        alt.Chart(shade)
        .mark_rect(opacity=0.45)
        .encode(
            x="from:T",
            x2="to:T",
            color=alt.Color(
                "kind:N",
                scale=alt.Scale(domain=list(GAP_COLOURS), range=list(GAP_COLOURS.values())),
                title="gap",
            ),
            tooltip=[
                "kind:N",
                "missing_bars:Q",
                alt.Tooltip("from:T", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("to:T", format="%Y-%m-%d %H:%M"),
            ],
        )
    )
    return alt.layer(rects, line).properties(title=f"{title} with gaps shaded by kind")


def hour_of_week_chart(profile: pl.DataFrame, *, width: int = 700) -> alt.VConcatChart:
    """Bar panels of a :func:`aiopt_lib.data.explore.hour_of_week_profile`: volume, range and (when the
    data has it) spread by hour of the week (UTC), Monday 00:00 first."""
    data = inline_data(profile)
    metrics = [("median_volume", "median volume"), ("median_range_pips", "median range (pips)")]
    if (
        "median_spread_pips" in profile.columns
        and profile["median_spread_pips"].null_count() < profile.height
    ):
        metrics.append(("median_spread_pips", "median spread (pips)"))
    panels = [
        alt.Chart(data)
        .mark_bar(color=colour, width=max(1.0, width / 168 - 1))
        .encode(
            x=alt.X(
                "hour_of_week:Q",
                title="hour of week (UTC, Mon 00:00 = 0; ticks at midnight)",
                scale=alt.Scale(domain=[0, 168], nice=False),
                axis=alt.Axis(values=list(range(0, 169, 24)), labelAngle=0),
            ),
            y=alt.Y(f"{name}:Q", title=label),
            tooltip=["day:N", "hour:Q", alt.Tooltip(f"{name}:Q", format=".3g"), "bars:Q"],
        )
        .properties(height=130, width=width)
        for (name, label), colour in zip(metrics, ["#6baed6", "#74c476", "#fd8d3c"], strict=False)
    ]
    return alt.vconcat(*panels).properties(title="The trading week")


# ---------------------------------------------------------------------------------------------
# Indicators on charts: everything comes from the registry (aiopt_lib.features.registry)

INDICATOR_ALIASES: dict[str, str] = {"adx": "dmi"}
"""Older chart names of registered indicators (``"adx"`` draws the ``dmi`` indicator)."""

DEFAULT_PANEL_INDICATORS: tuple[str, ...] = ("bb", "ema", "sma", "rsi", "macd", "stoch", "dmi")
"""What :func:`indicator_panels` draws by default."""

# one colour per indicator on the price axis (a band's lines share it), one per line in a panel
_OVERLAY_COLOURS = ("#6baed6", "#fd8d3c", "#756bb1", "#e7298a", "#66a61e", "#a6761d", "#1b9e77")
_PANEL_COLOURS = ("#2171b5", "#cb181d", "#238b45", "#fd8d3c", "#6a51a3", "#252525")
_HISTOGRAM_COLOUR = "#969696"
_LEVEL_COLOUR = "#999999"
_CLOSE_COLOUR = "#1f4e79"


@dataclass(frozen=True)
class _ChartIndicator:
    """One indicator as a chart draws it: its definition, the request its columns come from and
    ``columns`` (output -> column name, in the definition's output order)."""

    definition: IndicatorDef
    request: IndicatorRequest
    columns: dict[str, str]

    @property
    def on_price(self) -> bool:
        """Drawn on the price axis: the indicator has ``overlay`` outputs (then only those are
        drawn; the others, like Bollinger %B, are not prices)."""
        return bool(self.definition.overlay)

    @property
    def drawn(self) -> tuple[str, ...]:
        """The columns drawn: the overlay outputs' on the price axis, else every output's."""
        d = self.definition
        return tuple(c for o, c in self.columns.items() if not d.overlay or o in d.overlay)

    @property
    def histogram(self) -> frozenset[str]:
        return frozenset(self.columns[o] for o in self.definition.histogram if o in self.columns)


def _chart_indicators(indicators: Any, params: Any) -> list[_ChartIndicator]:
    """The indicators to draw, from registry names (or :data:`INDICATOR_ALIASES`), requests
    (:class:`IndicatorRequest`) or a mapping ``{name: args}``.

    A name of one of the eight classic indicators takes its arguments from ``params`` (an
    :class:`IndicatorParams`, default ``IndicatorParams()``), any other its registry defaults.
    Raises ``ValueError`` naming the unknown names and listing the known ones."""
    p = IndicatorParams() if params is None else params
    if not isinstance(p, IndicatorParams):
        raise TypeError(f"indicator params must be an IndicatorParams, got {type(p).__name__}")
    classic = {r.name: r for r in p.requests()}
    if isinstance(indicators, str | IndicatorRequest):
        indicators = (indicators,)
    items = (
        list(indicators.items())
        if isinstance(indicators, Mapping)
        else [(item, None) for item in indicators]
    )
    requests: list[IndicatorRequest] = []
    unknown: list[str] = []
    for item, args in items:
        if isinstance(item, IndicatorRequest):
            name = INDICATOR_ALIASES.get(item.name, item.name)
            request = IndicatorRequest(name, item.args, item.source)
        else:
            name = INDICATOR_ALIASES.get(item, item)
            if args is not None:
                values = tuple(args) if isinstance(args, list | tuple) else (args,)
                request = IndicatorRequest(name, values)
            else:
                request = classic.get(name, IndicatorRequest(name))
        if name not in REGISTRY:
            unknown.append(str(item.name if isinstance(item, IndicatorRequest) else item))
            continue
        requests.append(request)
    if unknown:
        aliases = ", ".join(f"{a!r} for {n!r}" for a, n in INDICATOR_ALIASES.items())
        raise ValueError(
            f"unknown indicator(s) {unknown}; known: {', '.join(sorted(REGISTRY))}"
            + (f" (and {aliases})" if aliases else "")
        )
    drawn: dict[tuple[Any, ...], _ChartIndicator] = {}
    for request in requests:
        try:
            definition, args, source = request.resolve()
        except ConfigError as error:
            raise ValueError(str(error)) from error
        columns = dict(zip(definition.outputs, request.columns(), strict=True))
        drawn.setdefault(
            (definition.name, args, source), _ChartIndicator(definition, request, columns)
        )
    return list(drawn.values())


def _with_indicator_columns(bars: pl.DataFrame, drawn: list[_ChartIndicator]) -> pl.DataFrame:
    """``bars`` with the columns of ``drawn``: the missing ones computed on the whole of
    ``bars`` (causal values; a chart window cut afterwards shows what every other consumer sees),
    the ones already there kept."""
    missing = [d.request for d in drawn if any(c not in bars.columns for c in d.columns.values())]
    if not missing:
        return bars
    return compute_frame(bars, missing)


def _panel_lines(d: _ChartIndicator) -> tuple[list[str], list[str]]:
    """A panel's (histogram columns, line columns), in output order."""
    bars = [c for c in d.drawn if c in d.histogram]
    return bars, [c for c in d.drawn if c not in d.histogram]


def _indicator_addplots(
    window: pl.DataFrame, drawn: list[_ChartIndicator], first_panel: int
) -> tuple[list[str], list[Any]]:
    """mplfinance addplots for indicator overlays and panels; returns (panel titles, addplots).

    Overlay outputs go on the price panel (one colour per indicator); every other indicator gets
    a panel of its own (``first_panel`` on), with its title as the y label, its ``bounds`` as
    the y range, its ``levels`` as dashed lines and its ``histogram`` outputs as grey bars. Each
    line is labelled with its column name (the panel legends)."""
    import mplfinance as mpf
    import numpy as np

    def values(column: str) -> Any:
        return window.get_column(column).cast(pl.Float64).fill_null(float("nan")).to_numpy()

    plots: list[Any] = []
    overlays = [d for d in drawn if d.on_price]
    for i, d in enumerate(overlays):
        colour = _OVERLAY_COLOURS[i % len(_OVERLAY_COLOURS)]
        width = 0.8 if len(d.drawn) > 1 else 1.0
        for column in d.drawn:
            plots.append(
                mpf.make_addplot(
                    values(column), color=colour, width=width, secondary_y=False, label=column
                )
            )
    panels = [d for d in drawn if not d.on_price]
    for offset, d in enumerate(panels):
        panel: dict[str, Any] = {"panel": first_panel + offset, "secondary_y": False}
        if d.definition.bounds is not None:
            panel["ylim"] = tuple(d.definition.bounds)
        bars, lines = _panel_lines(d)
        styles = [{"type": "bar", "color": _HISTOGRAM_COLOUR} for _ in bars] + [
            {"color": _PANEL_COLOURS[k % len(_PANEL_COLOURS)], "width": 1.0}
            for k in range(len(lines))
        ]
        for k, (column, style) in enumerate(zip(bars + lines, styles, strict=True)):
            title = {"ylabel": d.definition.title} if k == 0 else {}
            plots.append(mpf.make_addplot(values(column), label=column, **style, **title, **panel))
        for level in d.definition.levels:
            plots.append(
                mpf.make_addplot(
                    np.full(window.height, float(level)),
                    color=_LEVEL_COLOUR,
                    linestyle="--",
                    width=0.7,
                    **panel,
                )
            )
    return [d.definition.title for d in panels], plots


def candle_chart(
    bars: pl.DataFrame,
    *,
    end: dt.datetime | str | None = None,
    n_bars: int = 120,
    title: str | None = None,
    volume: bool = True,
    mav: tuple[int, ...] = (),
    patterns: bool | list[str] = False,
    indicators: Sequence[str | IndicatorRequest] | Mapping[str, Any] = (),
    indicator_params: Any = None,
    signals: pl.DataFrame | None = None,
    trades: pl.DataFrame | None = None,
    figsize: tuple[float, float] | None = None,
) -> Any:
    """An mplfinance candle chart of the ``n_bars`` bars ending at ``end`` (default: the last bar).

    - ``patterns``: mark candlestick patterns (``True``: every ``pat_*`` column of ``bars``, or a
      list of pattern names): bullish ones with a green triangle under the low, bearish ones with
      a red triangle over the high, neutral ones (doji) with a grey dot.
    - ``indicators``: registered indicator names
      (:data:`aiopt_lib.features.registry.REGISTRY`: ``"bb"``, ``"ema"``, ``"rsi"``, ...;
      ``"adx"`` is an alias of ``"dmi"``), requests
      (:class:`~aiopt_lib.features.registry.IndicatorRequest`: explicit arguments or source),
      or a mapping ``{name: args}``. The eight classic indicators take their arguments from
      ``indicator_params`` (default ``IndicatorParams()``), the others their registry defaults.
      An indicator's ``overlay`` outputs (moving averages, bands) are drawn on the price panel,
      one colour per indicator; every other indicator gets a panel of its own, in the order
      given, with its ``title`` as the y label, its ``levels`` as dashed lines, its ``bounds`` as
      the y range and its ``histogram`` outputs as bars. Each line is labelled with its column
      name. Missing columns are computed on the whole of ``bars`` before the window is cut, so
      the window shows the same (causal) values as everywhere else.
    - ``signals``: a frame with ``ts`` and ``signal`` (``"BUY"``/``"SELL"``; other values are
      ignored), marked with large blue/orange arrows at the signal bar.
    - ``trades``: a frame with ``entry_ts``, ``exit_ts``, ``side`` (``"long"``/``"short"``),
      ``entry_price``, ``exit_price``: a segment from entry to exit, green for a winning trade and
      red for a losing one.
    - ``figsize``: inches, default ``(11, 5.5 + 1.4 × indicator panels)``; a square one
      (``(6.4, 6.4)``) matches a model image's aspect when the two are shown side by side, so
      neither is shrunk to fit the other's cell.

    Returns the matplotlib Figure (shown inline in notebooks, embedded as PNG in reports).
    """
    import logging

    import mplfinance as mpf

    # mplfinance's styles ask for font weights DejaVu lacks; matplotlib logs each fallback
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    ensure_bars(bars)
    drawn = _chart_indicators(indicators, indicator_params)
    source = _with_indicator_columns(bars, drawn)
    window = source
    if end is not None:
        window = source.filter(pl.col("ts") <= _as_utc(end))
    window = window.tail(n_bars)
    if window.height == 0:
        raise ValueError("no bars in the requested window")
    frame = (
        window.select("ts", "open", "high", "low", "close", "volume")
        .to_pandas()
        .set_index("ts")
        .rename(columns=str.capitalize)
    )
    frame.index = frame.index.tz_convert("UTC").tz_localize(None)
    has_volume = volume and float(frame["Volume"].sum()) > 0
    first_panel = 2 if has_volume else 1
    addplots = _pattern_markers(window, patterns) if patterns else []
    panel_names, indicator_plots = _indicator_addplots(window, drawn, first_panel)
    addplots += indicator_plots
    if signals is not None:
        addplots += _signal_markers(window, signals)
    kwargs: dict[str, Any] = {}
    if trades is not None:
        segments, colours = _trade_segments(window, trades)
        if segments:
            kwargs["alines"] = {"alines": segments, "colors": colours, "linewidths": 1.6}
    ratios = [4] + ([1] if has_volume else []) + [1.3] * len(panel_names)
    fig, axes = mpf.plot(
        frame,
        type="candle",
        style="yahoo",
        volume=has_volume,
        mav=mav if mav else (),
        title=title or f"{frame.index[0]:%Y-%m-%d %H:%M} to {frame.index[-1]:%Y-%m-%d %H:%M} UTC",
        ylabel="price",
        returnfig=True,
        figsize=figsize or (11, 5.5 + 1.4 * len(panel_names)),
        panel_ratios=tuple(ratios),
        tight_layout=True,
        warn_too_much_data=10_000,
        addplot=addplots,
        **kwargs,
    )
    handles = []
    if patterns:
        handles += [
            _marker_handle("^", "#1a9850", "bullish pattern"),
            _marker_handle("v", "#d73027", "bearish pattern"),
            _marker_handle("o", "#7f7f7f", "doji / neutral"),
        ]
    if signals is not None:
        handles += [
            _marker_handle("^", "#2171b5", "BUY signal"),
            _marker_handle("v", "#ff7f00", "SELL signal"),
        ]
    for ax in axes:  # the indicator lines' legends (mplfinance made them), small
        lines, labels = ax.get_legend_handles_labels()
        if ax is axes[0] and handles:
            ax.legend(handles=[*lines, *handles], loc="upper left", fontsize=8)
        elif ax.get_legend() is not None:
            ax.legend(lines, labels, loc="upper left", fontsize=7)
    return fig


def _signal_markers(window: pl.DataFrame, signals: pl.DataFrame) -> list[Any]:
    """Large arrows at BUY (below the low) and SELL (above the high) signal bars."""
    import mplfinance as mpf
    import numpy as np

    missing = {"ts", "signal"} - set(signals.columns)
    if missing:
        raise ValueError(f"signals need columns ts and signal; missing {sorted(missing)}")
    joined = window.select("ts", "high", "low").join(
        signals.select("ts", pl.col("signal").cast(pl.String)), on="ts", how="left"
    )
    offset = float((window["high"] - window["low"]).median() or 0.0) * 0.9
    plots = []
    for name, marker, colour, level in (
        ("BUY", "^", "#2171b5", joined["low"].to_numpy() - offset),
        ("SELL", "v", "#ff7f00", joined["high"].to_numpy() + offset),
    ):
        hit = (joined["signal"] == name).fill_null(False).to_numpy()
        if hit.any():
            plots.append(
                mpf.make_addplot(
                    np.where(hit, level, np.nan),
                    type="scatter",
                    marker=marker,
                    markersize=90,
                    color=colour,
                )
            )
    return plots


def _trade_segments(window: pl.DataFrame, trades: pl.DataFrame) -> tuple[list[Any], list[str]]:
    """Entry→exit segments of the trades that lie inside the window (mplfinance ``alines``)."""
    need = {"entry_ts", "exit_ts", "side", "entry_price", "exit_price"}
    missing = need - set(trades.columns)
    if missing:
        raise ValueError(f"trades need columns {sorted(need)}; missing {sorted(missing)}")
    first, last = window["ts"].min(), window["ts"].max()
    inside = trades.filter((pl.col("entry_ts") >= first) & (pl.col("exit_ts") <= last))
    segments, colours = [], []
    for row in inside.iter_rows(named=True):
        sign = 1.0 if row["side"] == "long" else -1.0
        won = sign * (row["exit_price"] - row["entry_price"]) > 0
        naive = [row["entry_ts"].replace(tzinfo=None), row["exit_ts"].replace(tzinfo=None)]
        segments.append([(naive[0], row["entry_price"]), (naive[1], row["exit_price"])])
        colours.append("#1a9850" if won else "#d73027")
    return segments, colours


def _marker_handle(marker: str, colour: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker=marker, color=colour, linestyle="", label=label)


def _pattern_markers(window: pl.DataFrame, patterns: bool | list[str]) -> list[Any]:
    """mplfinance scatter addplots marking the bars where patterns fired."""
    import mplfinance as mpf
    import numpy as np

    names = (
        [c.removeprefix("pat_") for c in window.columns if c.startswith("pat_")]
        if patterns is True
        else list(patterns)
    )
    missing = [n for n in names if f"pat_{n}" not in window.columns]
    if missing:
        raise ValueError(f"bars have no pattern column(s) for {missing}; run add_patterns first")
    offset = float((window["high"] - window["low"]).median() or 0.0) * 0.6
    styles = {
        "bullish": ("^", "#1a9850", window["low"].to_numpy() - offset),
        "bearish": ("v", "#d73027", window["high"].to_numpy() + offset),
        "neutral": ("o", "#7f7f7f", window["high"].to_numpy() + 2 * offset),
    }
    plots = []
    for direction, (marker, colour, level) in styles.items():
        chosen = [n for n in names if n in PATTERNS and PATTERNS[n].direction == direction]
        if not chosen:
            continue
        fired = window.select(pl.any_horizontal([pl.col(f"pat_{n}") for n in chosen])).to_series()
        if not fired.any():
            continue
        values = np.where(fired.to_numpy(), level, np.nan)
        plots.append(
            mpf.make_addplot(values, type="scatter", marker=marker, markersize=40, color=colour)
        )
    return plots


def _field(column: str) -> str:
    """A column name as a Vega-Lite field: dots escaped (``kc_upper_20_1.5`` is not nested)."""
    return column.replace(".", "\\.")


def _fold_lines(data: Any, columns: list[str], colours: list[str], x: Any, y: Any) -> alt.Chart:
    """One line per column, coloured by series (``colours`` in column order)."""
    return (
        alt.Chart(data)
        .transform_fold([_field(c) for c in columns], as_=["series", "value"])
        .mark_line(strokeWidth=1)
        .encode(
            x=x,
            y=y,
            color=alt.Color("series:N", scale=alt.Scale(domain=columns, range=colours), title=None),
            tooltip=[alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"), "series:N", "value:Q"],
        )
    )


def _overlay_colours(overlays: list[_ChartIndicator]) -> tuple[list[str], list[str]]:
    """The (columns, colours) of the price-axis lines: one colour per indicator."""
    columns, colours = [], []
    for i, d in enumerate(overlays):
        columns += d.drawn
        colours += [_OVERLAY_COLOURS[i % len(_OVERLAY_COLOURS)]] * len(d.drawn)
    return columns, colours


def _altair_panel(data: Any, d: _ChartIndicator, x: Any, width: int, height: int) -> alt.LayerChart:
    """An Altair panel of one indicator: its histogram outputs as grey bars, its other outputs as
    lines, its levels as dashed rules, its bounds as the y range, its title as the y title."""
    definition = d.definition
    scale = (
        alt.Scale(domain=list(definition.bounds))
        if definition.bounds is not None
        else alt.Scale(zero=False)
    )
    y = alt.Y("value:Q", scale=scale, title=definition.title)
    bars, lines = _panel_lines(d)
    layers: list[Any] = [
        alt.Chart(data)
        .mark_bar(opacity=0.5, color=_HISTOGRAM_COLOUR)
        .encode(
            x=x,
            y=alt.Y(f"{_field(column)}:Q", scale=scale, title=definition.title),
            tooltip=[alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"), f"{_field(column)}:Q"],
        )
        for column in bars
    ]
    if lines:
        colours = [_PANEL_COLOURS[k % len(_PANEL_COLOURS)] for k in range(len(lines))]
        layers.append(_fold_lines(data, lines, colours, x, y))
    if definition.levels:
        layers.append(
            alt.Chart(alt.InlineData(values=[{"level": float(v)} for v in definition.levels]))
            .mark_rule(strokeDash=[4, 3], color=_LEVEL_COLOUR)
            .encode(y=alt.Y("level:Q", scale=scale))
        )
    return alt.layer(*layers).properties(width=width, height=height)


def indicator_panels(
    frame: pl.DataFrame,
    *,
    params: Any = None,
    indicators: Sequence[str | IndicatorRequest] | Mapping[str, Any] = DEFAULT_PANEL_INDICATORS,
    n_bars: int | None = 1500,
    width: int = 900,
) -> alt.VConcatChart:
    """Interactive indicator panels over a shared, zoomable time axis (drag on the price panel to
    zoom, double-click to reset).

    ``indicators``: registered indicator names (:data:`aiopt_lib.features.registry.REGISTRY`;
    ``"adx"`` is an alias of ``"dmi"``), requests
    (:class:`~aiopt_lib.features.registry.IndicatorRequest`), or a mapping ``{name: args}``. The
    eight classic indicators take their arguments from ``params`` (default ``IndicatorParams()``),
    the others their registry defaults. An indicator with ``overlay`` outputs (moving averages,
    bands) is drawn on the price panel with the close (only those outputs: Bollinger %B is not
    drawn); every other one in a panel of its own, titled with its ``title``, with its
    ``levels`` as dashed lines, its ``bounds`` as the y range and its ``histogram`` outputs as
    bars. The default draws price with Bollinger Bands, EMA and SMA; RSI (30/70); MACD with its
    histogram; Stochastic %K/%D (20/80); +DI/−DI/ADX.

    ``frame`` holds the indicator columns (:func:`aiopt_lib.features.registry.add_indicators`,
    ``add_indicator`` or ``compute_frame``); the last ``n_bars`` are drawn (None: all)."""
    drawn = _chart_indicators(indicators, params)
    columns = list(dict.fromkeys(c for d in drawn for c in d.drawn))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"frame lacks indicator column(s) {missing}; run add_indicators (add_indicator or "
            "compute_frame for other indicators) first"
        )
    data = frame if n_bars is None else frame.tail(n_bars)
    source = inline_data(data.select("ts", "close", *columns))
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    x = alt.X("ts:T", title=None, axis=time_axis(width))
    overlay_columns, overlay_colours = _overlay_colours([d for d in drawn if d.on_price])
    price = (
        _fold_lines(
            source,
            ["close", *overlay_columns],
            [_CLOSE_COLOUR, *overlay_colours],
            x,
            alt.Y("value:Q", scale=alt.Scale(zero=False), title="price"),
        )
        .add_params(zoom)
        .properties(width=width, height=220)
    )
    panels = [_altair_panel(source, d, x, width, 90) for d in drawn if not d.on_price]
    return (
        alt.vconcat(price, *panels)
        .resolve_scale(x="shared", color="independent")
        .properties(title="Indicators (drag on the price panel to zoom)")
    )


def class_balance_chart(balance: pl.DataFrame, *, title: str = "Label classes") -> alt.Chart:
    """Bars of :func:`aiopt_lib.features.labels.class_balance` (counts per class, one column per split
    part when the table has a ``part`` column)."""
    data = balance.with_columns(pl.col("class").cast(pl.String))
    colour = alt.Color(
        "class:N",
        scale=alt.Scale(domain=["BUY", "SELL", "HOLD"], range=["#1a9850", "#d73027", "#969696"]),
    )
    chart = (
        alt.Chart(inline_data(data))
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=["BUY", "SELL", "HOLD"], title=None),
            y=alt.Y("count:Q"),
            color=colour,
            tooltip=["class:N", "count:Q", alt.Tooltip("share:Q", format=".1%")],
        )
    )
    if "part" in data.columns:
        chart = chart.properties(width=160, height=160).facet(
            column=alt.Column("part:N", sort=["train", "validation", "test"], title=None)
        )
    else:
        chart = chart.properties(width=220, height=160)
    return chart.properties(title=title)


def _as_utc(value: dt.datetime | str) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def trading_chart(
    frame: pl.DataFrame,
    *,
    signals: pl.DataFrame | None = None,
    trades: pl.DataFrame | None = None,
    overlays: Sequence[str | IndicatorRequest] | Mapping[str, Any] = ("bb", "ema"),
    indicator_params: Any = None,
    n_bars: int | None = 500,
    width: int = 900,
    height: int = 320,
    title: str = "Price, signals and trades",
) -> alt.LayerChart | alt.VConcatChart:
    """An interactive Altair candle chart: candles, indicators, BUY/SELL signal markers
    (``signals``: ``ts``, ``signal``) and trades (``trades``: ``entry_ts``, ``exit_ts``, ``side``,
    ``entry_price``, ``exit_price``; a segment per trade, green when it won), over the last
    ``n_bars`` bars. Drag to zoom, double-click to reset.

    ``overlays``: registered indicator names (``"adx"`` is an alias of ``"dmi"``),
    requests (:class:`~aiopt_lib.features.registry.IndicatorRequest`) or a mapping
    ``{name: args}``;
    the eight classic indicators take their arguments from ``indicator_params`` (default
    ``IndicatorParams()``), the others their registry defaults. Columns ``frame`` lacks are
    computed on the whole of it before the last bars are cut. An indicator's ``overlay``
    outputs (moving averages, bands) are drawn over the candles, one colour per indicator; an
    indicator without them (RSI, MACD, ...) gets a panel of its own below the candles (as in
    :func:`indicator_panels`), and the chart is then an ``alt.VConcatChart`` (else an
    ``alt.LayerChart``)."""
    ensure_bars(frame.select("ts", "open", "high", "low", "close", "volume"))
    drawn = _chart_indicators(overlays, indicator_params)
    data = _with_indicator_columns(frame, drawn)
    data = data if n_bars is None else data.tail(n_bars)
    first, last = data["ts"].min(), data["ts"].max()
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    candles = data.select(
        "ts", "open", "high", "low", "close", (pl.col("close") >= pl.col("open")).alias("up")
    )
    base = alt.Chart(inline_data(candles)).encode(
        x=alt.X("ts:T", title=None, axis=time_axis(width)),
        color=alt.condition("datum.up", alt.value("#26a69a"), alt.value("#ef5350")),
    )
    wicks = base.mark_rule().encode(
        y=alt.Y("low:Q", scale=alt.Scale(zero=False), title="price"), y2="high:Q"
    )
    bodies = base.mark_bar(width={"band": 0.7}).encode(
        y="open:Q",
        y2="close:Q",
        tooltip=[
            alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"),
            *(alt.Tooltip(f"{c}:Q", format=".5f") for c in ("open", "high", "low", "close")),
        ],
    )
    layers: list[Any] = [wicks.add_params(zoom), bodies]
    names, colours = _overlay_colours([d for d in drawn if d.on_price])
    if names:
        lines = data.select("ts", *names)
        layers.append(
            _fold_lines(inline_data(lines), names, colours, "ts:T", "value:Q").encode(
                strokeDash=alt.value([1, 0])
            )
        )
    if signals is not None:
        marks = (
            data.select("ts", "high", "low")
            .join(signals.select("ts", pl.col("signal").cast(pl.String)), on="ts", how="inner")
            .filter(pl.col("signal").is_in(["BUY", "SELL"]))
            .with_columns(
                pl.when(pl.col("signal") == "BUY")
                .then(pl.col("low"))
                .otherwise(pl.col("high"))
                .alias("at")
            )
        )
        if marks.height:
            layers.append(
                alt.Chart(inline_data(marks))
                .mark_point(filled=True, size=90)
                .encode(
                    x="ts:T",
                    y="at:Q",
                    shape=alt.Shape(
                        "signal:N",
                        scale=alt.Scale(
                            domain=["BUY", "SELL"], range=["triangle-up", "triangle-down"]
                        ),
                    ),
                    fill=alt.Fill(
                        "signal:N",
                        scale=alt.Scale(domain=["BUY", "SELL"], range=["#2171b5", "#ff7f00"]),
                    ),
                    tooltip=["signal:N", alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M")],
                )
            )
    if trades is not None and trades.height:
        inside = trades.filter(
            (pl.col("entry_ts") >= first) & (pl.col("exit_ts") <= last)
        ).with_columns(
            (
                pl.when(pl.col("side") == "long").then(1.0).otherwise(-1.0)
                * (pl.col("exit_price") - pl.col("entry_price"))
                > 0
            ).alias("won")
        )
        if inside.height:
            layers.append(
                alt.Chart(
                    inline_data(
                        inside.select(
                            "entry_ts", "exit_ts", "side", "entry_price", "exit_price", "won"
                        )
                    )
                )
                .mark_rule(strokeWidth=2.5)
                .encode(
                    x="entry_ts:T",
                    x2="exit_ts:T",
                    y="entry_price:Q",
                    y2="exit_price:Q",
                    color=alt.condition("datum.won", alt.value("#1a9850"), alt.value("#d73027")),
                    tooltip=["side:N", "entry_ts:T", "exit_ts:T", "entry_price:Q", "exit_price:Q"],
                )
            )
    price = alt.layer(*layers).resolve_scale(color="independent")
    panels = [d for d in drawn if not d.on_price]
    if not panels:
        return price.properties(width=width, height=height, title=title)
    values = inline_data(data.select("ts", *dict.fromkeys(c for d in panels for c in d.drawn)))
    x = alt.X("ts:T", title=None, axis=time_axis(width))
    below = [_altair_panel(values, d, x, width, 90) for d in panels]
    return (
        alt.vconcat(price.properties(width=width, height=height), *below)
        .resolve_scale(x="shared", color="independent")
        .properties(title=title)
    )


def image_grid(
    images: Any,
    titles: list[str] | None = None,
    *,
    ncols: int = 6,
    size: float = 2.0,
    suptitle: str | None = None,
    cmap: str | None = None,
    limit: float | None = None,
    colorbar: str | None = None,
) -> Any:
    """A matplotlib Figure showing images (an ``(n, H, W, 3)`` uint8 array, a list of PNG bytes,
    or a list of arrays) in a grid of ``size``-inch cells, each with an optional title (e.g. its
    label).

    Single-channel ``(H, W)`` float images (a class mean minus the overall mean, say) are drawn
    with ``cmap`` (default ``"RdBu_r"``: red above zero, blue below) on one colour range for
    all of them, ``±limit`` (default: the largest absolute value), so the panels compare; a
    colour bar labelled ``colorbar`` is added when given. Without the shared range a faint
    difference would be stretched to full colour in one panel and not in another."""
    import io

    import matplotlib.pyplot as plt
    import numpy as np

    if isinstance(images, list | tuple) and images and isinstance(images[0], bytes | bytearray):
        images = [plt.imread(io.BytesIO(png), format="png") for png in images]
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    planes = [np.ndim(image) == 2 for image in images]
    if any(planes) and limit is None:
        limit = max(
            float(np.nanmax(np.abs(image))) for image, p in zip(images, planes, strict=True) if p
        )
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size * ncols, size * nrows * 1.1),
        squeeze=False,
        layout="constrained" if colorbar else None,
    )
    shown = None
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k < n:
            if planes[k]:
                shown = ax.imshow(
                    images[k],
                    cmap=cmap or "RdBu_r",
                    vmin=-(limit or 1.0),
                    vmax=limit or 1.0,
                    interpolation="nearest",
                )
            else:
                ax.imshow(images[k], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    if colorbar and shown is not None:
        fig.colorbar(shown, ax=axes, label=colorbar, shrink=0.8)
    elif not colorbar:
        fig.tight_layout()
    return fig


def figure_to_array(fig: Any, *, dpi: int = 80) -> Any:
    """Rasterise a matplotlib Figure to an ``(H, W, 3)`` uint8 array and close it (so notebooks
    do not show it a second time).

    Saved with ``bbox_inches="tight"``, as Jupyter shows figures: mplfinance's tight layout puts
    its axes at the figure's edges and relies on that to keep the price labels and the time
    labels, which a plain save crops. The array is therefore about ``figsize × dpi``, not
    exactly."""
    import io

    import matplotlib.pyplot as plt
    import numpy as np

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    buffer.seek(0)
    image = plt.imread(buffer, format="png")
    return (image[..., :3] * 255).round().astype(np.uint8)


def learning_curves_chart(histories: dict[str, pl.DataFrame], *, width: int = 420) -> alt.Chart:
    """Training and validation loss per epoch, one line colour per model, solid for training and
    dashed for validation. Each history has ``epoch``, ``train_loss`` and ``valid_loss``."""
    frames = []
    for name, history in histories.items():
        frames.append(
            history.select(
                pl.lit(name).alias("model"),
                pl.col("epoch").cast(pl.Int64),
                pl.col("train_loss").cast(pl.Float64).alias("train"),
                pl.col("valid_loss").cast(pl.Float64).alias("validation"),
            ).unpivot(index=["model", "epoch"], variable_name="split", value_name="loss")
        )
    data = pl.concat(frames)
    return (
        alt.Chart(inline_data(data))
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", title="epoch"),
            y=alt.Y("loss:Q", scale=alt.Scale(zero=False), title="cross-entropy"),
            color=alt.Color("model:N"),
            strokeDash=alt.StrokeDash("split:N", sort=["train", "validation"]),
            tooltip=["model:N", "split:N", "epoch:Q", alt.Tooltip("loss:Q", format=".4f")],
        )
        .properties(width=width, height=260, title="Learning curves")
    )


def reliability_chart(tables: dict[str, pl.DataFrame], *, width: int = 320) -> alt.LayerChart:
    """Reliability diagram: accuracy against mean confidence per bin (top label), one colour per
    model, with the diagonal of perfect calibration. Each table has ``mean_confidence``,
    ``accuracy`` and ``count`` columns (:func:`aiopt_lib.models.evaluation.reliability_table`)."""
    frames = [
        t.filter(pl.col("count") > 0).select(
            pl.lit(name).alias("model"),
            pl.col("mean_confidence").cast(pl.Float64).alias("confidence"),
            pl.col("accuracy").cast(pl.Float64),
            pl.col("count").cast(pl.Int64),
        )
        for name, t in tables.items()
    ]
    data = pl.concat(frames)
    diagonal = (
        alt.Chart(alt.InlineData(values=[{"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 1.0}]))
        .mark_line(strokeDash=[4, 3], color="#999999")
        .encode(x="x:Q", y="y:Q")
    )
    points = (
        alt.Chart(inline_data(data))
        .mark_line(point=True)
        .encode(
            x=alt.X("confidence:Q", scale=alt.Scale(domain=[0, 1]), title="mean confidence"),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            color="model:N",
            size=alt.Size("count:Q", legend=None),
            tooltip=[
                "model:N",
                "count:Q",
                alt.Tooltip("confidence:Q", format=".3f"),
                alt.Tooltip("accuracy:Q", format=".3f"),
            ],
        )
    )
    return alt.layer(diagonal, points).properties(
        width=width, height=width, title="Reliability (test period, top label)"
    )


def equity_curves_chart(
    curves: dict[str, pl.DataFrame],
    *,
    title: str = "Out-of-sample equity",
    width: int = 760,
    height: int = 300,
    max_points: int = 2000,
) -> alt.Chart:
    """Growth of 1 for several strategies on one time axis: ``curves`` maps a name to a frame
    with ``ts`` and ``equity`` (each curve rebased to start at 1). Long curves are thinned to
    ``max_points`` rows each (every k-th bar, the last kept)."""
    frames = []
    for name, frame in curves.items():
        if frame.height == 0:
            continue
        step = max(1, frame.height // max_points)
        thinned = frame.select("ts", "equity").gather_every(step)
        if thinned.get_column("ts")[-1] != frame.get_column("ts")[-1]:
            thinned = pl.concat([thinned, frame.select("ts", "equity").tail(1)])
        first = float(frame.get_column("equity")[0])
        frames.append(
            thinned.with_columns(
                (pl.col("equity") / first).alias("growth"), pl.lit(name).alias("curve")
            ).select("ts", "growth", "curve")
        )
    data = pl.concat(frames) if frames else pl.DataFrame({"ts": [], "growth": [], "curve": []})
    return (
        alt.Chart(inline_data(data))
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("ts:T", title=None, axis=time_axis(width)),
            y=alt.Y("growth:Q", scale=alt.Scale(zero=False), title="growth of 1"),
            color=alt.Color("curve:N", title=None, sort=list(curves)),
            tooltip=["curve:N", "ts:T", alt.Tooltip("growth:Q", format=".4f")],
        )
        .properties(width=width, height=height, title=title)
        .interactive(bind_y=False)
    )


_plotly_emitted = False


def plotly_html(figure: Any) -> Any:
    """A plotly figure (e.g. from ``optuna.visualization``) as offline HTML for a notebook output:
    plotly.js is inlined with the first figure of the kernel and reused by the later ones, so
    the exported report needs no CDN."""
    from IPython.display import HTML

    global _plotly_emitted
    include = not _plotly_emitted
    _plotly_emitted = True
    return HTML(figure.to_html(full_html=False, include_plotlyjs=include))
