"""Charts for people: Altair interactive charts and mplfinance candle charts that work offline.

Reports are shared as single HTML files and opened without internet, so Altair charts are rendered
by :func:`enable_offline_altair`'s renderer: the Vega/Vega-Lite/vega-embed JavaScript (bundled by
``vl-convert``) is inlined once per kernel process, and each chart is a small ``<div>`` plus its spec.
No CDN is referenced.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import altair as alt
import polars as pl

from aiopt_lib.core.bars import ensure_bars, infer_timeframe

GAP_COLOURS = {
    "expected_weekend": "#d9d9d9",
    "expected_holiday": "#9ecae1",
    "unexpected": "#fb6a4a",
}

_bundle_emitted = False


def _vega_bundle() -> str:
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    return vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())


def _offline_renderer(spec: dict[str, Any], **_: Any) -> dict[str, str]:
    """Altair renderer: an HTML fragment that needs no network (the JS bundle once per process)."""
    global _bundle_emitted
    div_id = f"aiopt-vega-{uuid.uuid4().hex[:12]}"
    parts = []
    if not _bundle_emitted:
        # Wrapped in a function so the bundle's top-level consts cannot clash if a page holds it
        # twice (e.g. two notebooks' outputs pasted together); the guard skips the second copy.
        parts.append(
            '<script type="text/javascript">if (!window.vegaEmbed) { (function(){\n'
            + _vega_bundle()
            + "\n})(); }</script>"
        )
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


def _inline(frame: pl.DataFrame) -> alt.InlineData:
    """Chart data inlined in the spec, datetimes as ISO-8601 UTC strings.

    Inline data is not subject to Altair's row limit, so a chart does not depend on the global
    data-transformer setting (which notebooks and tests may not have changed).
    """
    converted = frame.with_columns(
        pl.col(pl.Datetime).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return alt.InlineData(values=converted.to_dicts())


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
    line_data = _inline(_downsample_close(bars, max_points))
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    line = (
        alt.Chart(line_data)
        .mark_line(strokeWidth=1, color="#1f4e79")
        .encode(
            x=alt.X("ts:T", title=None),
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
    shade = _inline(shade)
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
    data = _inline(profile)
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


OVERLAY_INDICATORS = ("bb", "ema", "sma")
PANEL_INDICATORS = ("rsi", "macd", "stoch", "adx")


def candle_chart(
    bars: pl.DataFrame,
    *,
    end: dt.datetime | str | None = None,
    n_bars: int = 120,
    title: str | None = None,
    volume: bool = True,
    mav: tuple[int, ...] = (),
    patterns: bool | list[str] = False,
    indicators: tuple[str, ...] | list[str] = (),
    indicator_params: Any = None,
    signals: pl.DataFrame | None = None,
    trades: pl.DataFrame | None = None,
) -> Any:
    """An mplfinance candle chart of the ``n_bars`` bars ending at ``end`` (default: the last bar).

    - ``patterns``: mark candlestick patterns (``True``: every ``pat_*`` column of ``bars``, or a
      list of pattern names): bullish ones with a green triangle under the low, bearish ones with
      a red triangle over the high, neutral ones (doji) with a grey dot.
    - ``indicators``: any of ``"bb"``, ``"ema"``, ``"sma"`` (drawn on the price panel) and
      ``"rsi"``, ``"macd"``, ``"stoch"``, ``"adx"`` (one panel each), with ``indicator_params``
      (default ``IndicatorParams()``). Missing columns are computed on the whole of ``bars``
      before the window is cut, so the window shows the same (causal) values as everywhere else.
    - ``signals``: a frame with ``ts`` and ``signal`` (``"BUY"``/``"SELL"``; other values are
      ignored), marked with large blue/orange arrows at the signal bar.
    - ``trades``: a frame with ``entry_ts``, ``exit_ts``, ``side`` (``"long"``/``"short"``),
      ``entry_price``, ``exit_price``: a segment from entry to exit, green for a winning trade and
      red for a losing one.

    Returns the matplotlib Figure (shown inline in notebooks, embedded as PNG in reports).
    """
    import logging

    import mplfinance as mpf

    # mplfinance's styles ask for font weights DejaVu lacks; matplotlib logs each fallback
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    ensure_bars(bars)
    unknown = sorted(set(indicators) - set(OVERLAY_INDICATORS) - set(PANEL_INDICATORS))
    if unknown:
        raise ValueError(
            f"unknown indicator(s) {unknown}; use {OVERLAY_INDICATORS + PANEL_INDICATORS}"
        )
    source = _with_indicator_columns(bars, indicators, indicator_params)
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
    panel_names, indicator_plots = _indicator_addplots(
        window, indicators, indicator_params, first_panel
    )
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
        figsize=(11, 5.5 + 1.4 * len(panel_names)),
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
    if handles:
        axes[0].legend(handles=handles, loc="upper left", fontsize=8)
    return fig


def _with_indicator_columns(
    bars: pl.DataFrame, indicators: tuple[str, ...] | list[str], params: Any
) -> pl.DataFrame:
    if not indicators:
        return bars
    from aiopt_lib.features.indicators import IndicatorParams, add_indicators

    p = params or IndicatorParams()
    if all(c in bars.columns for c in p.columns()):
        return bars
    return add_indicators(bars.drop([c for c in p.columns() if c in bars.columns]), p)


def _indicator_addplots(
    window: pl.DataFrame, indicators: tuple[str, ...] | list[str], params: Any, first_panel: int
) -> tuple[list[str], list[Any]]:
    """mplfinance addplots for indicator overlays and panels; returns (panel names, addplots)."""
    import mplfinance as mpf

    from aiopt_lib.features.indicators import IndicatorParams, column_name

    p = params or IndicatorParams()

    def values(kind: str) -> Any:
        return (
            window.get_column(column_name(kind, p))
            .cast(pl.Float64)
            .fill_null(float("nan"))
            .to_numpy()
        )

    plots: list[Any] = []
    if "bb" in indicators:
        for kind in ("bb_upper", "bb_basis", "bb_lower"):
            plots.append(mpf.make_addplot(values(kind), color="#6baed6", width=0.8))
    if "ema" in indicators:
        plots.append(mpf.make_addplot(values("ema"), color="#fd8d3c", width=1.0))
    if "sma" in indicators:
        plots.append(mpf.make_addplot(values("sma"), color="#756bb1", width=1.0))
    panels = [kind for kind in PANEL_INDICATORS if kind in indicators]
    for offset, kind in enumerate(panels):
        panel = first_panel + offset
        if kind == "rsi":
            plots.append(
                mpf.make_addplot(
                    values("rsi"), panel=panel, color="#6a51a3", ylabel="RSI", ylim=(0, 100)
                )
            )
        elif kind == "macd":
            plots += [
                mpf.make_addplot(
                    values("macd_hist"), panel=panel, type="bar", color="#969696", ylabel="MACD"
                ),
                mpf.make_addplot(values("macd"), panel=panel, color="#2171b5"),
                mpf.make_addplot(values("macd_signal"), panel=panel, color="#cb181d"),
            ]
        elif kind == "stoch":
            plots += [
                mpf.make_addplot(
                    values("stoch_k"), panel=panel, color="#238b45", ylabel="Stoch", ylim=(0, 100)
                ),
                mpf.make_addplot(values("stoch_d"), panel=panel, color="#fd8d3c"),
            ]
        elif kind == "adx":
            plots += [
                mpf.make_addplot(values("adx"), panel=panel, color="#252525", ylabel="ADX/DI"),
                mpf.make_addplot(values("plus_di"), panel=panel, color="#1a9850"),
                mpf.make_addplot(values("minus_di"), panel=panel, color="#d73027"),
            ]
    return panels, plots


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

    from aiopt_lib.features.patterns import PATTERNS

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


def indicator_panels(
    frame: pl.DataFrame,
    *,
    params: Any = None,
    n_bars: int | None = 1500,
    width: int = 900,
) -> alt.VConcatChart:
    """Interactive indicator panels over a shared, zoomable time axis: price with Bollinger Bands,
    EMA and SMA; RSI with 30/70; MACD line, signal and histogram; Stochastic %K/%D with 20/80;
    ADX with +DI/−DI. ``frame`` holds the indicator columns of ``params`` (default
    ``IndicatorParams()``), e.g. from :func:`aiopt_lib.features.indicators.add_indicators`; the last
    ``n_bars`` are drawn (None: all)."""
    from aiopt_lib.features.indicators import IndicatorParams, column_name

    p = params or IndicatorParams()
    c = {kind: column_name(kind, p) for kind in (
        "bb_upper", "bb_lower", "bb_basis", "ema", "sma", "rsi", "macd", "macd_signal",
        "macd_hist", "stoch_k", "stoch_d", "adx", "plus_di", "minus_di",
    )}  # fmt: skip
    missing = [name for name in c.values() if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks indicator column(s) {missing}; run add_indicators first")
    data = frame if n_bars is None else frame.tail(n_bars)
    source = _inline(data.select("ts", "close", *c.values()))
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    x = alt.X("ts:T", title=None)

    def lines(columns: list[str], title: str, colours: list[str], height: int) -> alt.Chart:
        return (
            alt.Chart(source)
            .transform_fold(columns, as_=["series", "value"])
            .mark_line(strokeWidth=1)
            .encode(
                x=x,
                y=alt.Y("value:Q", scale=alt.Scale(zero=False), title=title),
                color=alt.Color(
                    "series:N", scale=alt.Scale(domain=columns, range=colours), title=None
                ),
            )
            .properties(width=width, height=height)
        )

    def rules(levels: list[float]) -> alt.Chart:
        return (
            alt.Chart(alt.InlineData(values=[{"y": v} for v in levels]))
            .mark_rule(strokeDash=[4, 3], color="#999999")
            .encode(y="y:Q")
        )

    price = lines(
        ["close", c["bb_upper"], c["bb_basis"], c["bb_lower"], c["ema"], c["sma"]],
        "price",
        ["#1f4e79", "#9ecae1", "#6baed6", "#9ecae1", "#fd8d3c", "#756bb1"],
        220,
    ).add_params(zoom)
    rsi = alt.layer(lines([c["rsi"]], "RSI", ["#6a51a3"], 90), rules([30, 70]))
    hist = (
        alt.Chart(source)
        .mark_bar(opacity=0.5, color="#969696")
        .encode(x=x, y=alt.Y(f"{c['macd_hist']}:Q", title="MACD"))
    )
    macd = alt.layer(hist, lines([c["macd"], c["macd_signal"]], "MACD", ["#2171b5", "#cb181d"], 90))
    stoch = alt.layer(
        lines([c["stoch_k"], c["stoch_d"]], "Stochastic", ["#238b45", "#fd8d3c"], 90),
        rules([20, 80]),
    )
    adx = lines(
        [c["adx"], c["plus_di"], c["minus_di"]], "ADX / DI", ["#252525", "#1a9850", "#d73027"], 90
    )
    return (
        alt.vconcat(price, rsi, macd, stoch, adx)
        .resolve_scale(color="independent")
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
        alt.Chart(_inline(data))
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
    overlays: tuple[str, ...] = ("bb", "ema"),
    indicator_params: Any = None,
    n_bars: int | None = 500,
    width: int = 900,
    height: int = 320,
    title: str = "Price, signals and trades",
) -> alt.LayerChart:
    """An interactive Altair candle chart: candles, indicator overlays (``"bb"``, ``"ema"``,
    ``"sma"``), BUY/SELL signal markers (``signals``: ``ts``, ``signal``) and trades (``trades``:
    ``entry_ts``, ``exit_ts``, ``side``, ``entry_price``, ``exit_price``; a segment per trade,
    green when it won), over the last ``n_bars`` bars. Drag to zoom, double-click to reset."""
    from aiopt_lib.features.indicators import IndicatorParams, column_name

    ensure_bars(frame.select("ts", "open", "high", "low", "close", "volume"))
    p = indicator_params or IndicatorParams()
    data = _with_indicator_columns(frame, overlays, p)
    data = data if n_bars is None else data.tail(n_bars)
    first, last = data["ts"].min(), data["ts"].max()
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    candles = data.select(
        "ts", "open", "high", "low", "close", (pl.col("close") >= pl.col("open")).alias("up")
    )
    base = alt.Chart(_inline(candles)).encode(
        x=alt.X("ts:T", title=None),
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
    kinds = {"bb": ("bb_upper", "bb_basis", "bb_lower"), "ema": ("ema",), "sma": ("sma",)}
    unknown = sorted(set(overlays) - set(kinds))
    if unknown:
        raise ValueError(f"unknown overlay(s) {unknown}; use {sorted(kinds)}")
    names = [column_name(k, p) for o in overlays for k in kinds[o]]
    if names:
        lines = data.select("ts", *names)
        layers.append(
            alt.Chart(_inline(lines))
            .transform_fold(names, as_=["series", "value"])
            .mark_line(strokeWidth=1)
            .encode(
                x="ts:T",
                y="value:Q",
                color=alt.Color("series:N", title=None),
                strokeDash=alt.value([1, 0]),
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
                alt.Chart(_inline(marks))
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
                    _inline(
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
    return (
        alt.layer(*layers)
        .resolve_scale(color="independent")
        .properties(width=width, height=height, title=title)
    )


def image_grid(
    images: Any,
    titles: list[str] | None = None,
    *,
    ncols: int = 6,
    size: float = 2.0,
    suptitle: str | None = None,
) -> Any:
    """A matplotlib Figure showing images (an ``(n, H, W, 3)`` uint8 array or a list of PNG
    bytes) in a grid, each with an optional title (e.g. its label)."""
    import io

    import matplotlib.pyplot as plt
    import numpy as np

    if isinstance(images, list | tuple) and images and isinstance(images[0], bytes | bytearray):
        images = [plt.imread(io.BytesIO(png), format="png") for png in images]
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows * 1.1), squeeze=False
    )
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Any, *, dpi: int = 80) -> Any:
    """Rasterise a matplotlib Figure to an ``(H, W, 3)`` uint8 array and close it (so notebooks
    do not show it a second time)."""
    import io

    import matplotlib.pyplot as plt
    import numpy as np

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
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
        alt.Chart(_inline(data))
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
        alt.Chart(_inline(data))
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
        alt.Chart(_inline(data))
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("ts:T", title=None),
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
