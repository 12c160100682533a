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

from aiopt_lib.bars import ensure_bars, infer_timeframe

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

    ``gaps`` is :func:`aiopt_lib.cleaning.classify_gaps`'s frame (``gap_start``, ``gap_end``,
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
    """Bar panels of a :func:`aiopt_lib.explore.hour_of_week_profile`: volume, range and (when the
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


def candle_chart(
    bars: pl.DataFrame,
    *,
    end: dt.datetime | str | None = None,
    n_bars: int = 120,
    title: str | None = None,
    volume: bool = True,
    mav: tuple[int, ...] = (),
    patterns: bool | list[str] = False,
) -> Any:
    """An mplfinance candle chart of the ``n_bars`` bars ending at ``end`` (default: the last bar).

    ``patterns``: mark candlestick patterns (``True``: every ``pat_*`` column of ``bars``, or a
    list of pattern names): bullish ones with a green triangle under the low, bearish ones with a
    red triangle over the high, neutral ones (doji) with a grey dot over the high. Returns the
    matplotlib Figure (shown inline in notebooks, embedded as PNG in reports).
    """
    import logging

    import mplfinance as mpf

    # mplfinance's styles ask for font weights DejaVu lacks; matplotlib logs each fallback
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    ensure_bars(bars)
    window = bars
    if end is not None:
        end_ts = _as_utc(end)
        window = bars.filter(pl.col("ts") <= end_ts)
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
    addplots = _pattern_markers(window, patterns) if patterns else []
    fig, _axes = mpf.plot(
        frame,
        type="candle",
        style="yahoo",
        volume=has_volume,
        mav=mav if mav else (),
        title=title or f"{frame.index[0]:%Y-%m-%d %H:%M} to {frame.index[-1]:%Y-%m-%d %H:%M} UTC",
        ylabel="price",
        returnfig=True,
        figsize=(11, 5.5),
        tight_layout=True,
        warn_too_much_data=10_000,
        addplot=addplots,
    )
    if addplots:
        _axes[0].legend(
            handles=[
                _marker_handle("^", "#1a9850", "bullish pattern"),
                _marker_handle("v", "#d73027", "bearish pattern"),
                _marker_handle("o", "#7f7f7f", "doji / neutral"),
            ],
            loc="upper left",
            fontsize=8,
        )
    return fig


def _marker_handle(marker: str, colour: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker=marker, color=colour, linestyle="", label=label)


def _pattern_markers(window: pl.DataFrame, patterns: bool | list[str]) -> list[Any]:
    """mplfinance scatter addplots marking the bars where patterns fired."""
    import mplfinance as mpf
    import numpy as np

    from aiopt_lib.patterns import PATTERNS

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
    ``IndicatorParams()``), e.g. from :func:`aiopt_lib.indicators.add_indicators`; the last
    ``n_bars`` are drawn (None: all)."""
    from aiopt_lib.indicators import IndicatorParams, column_name

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
    """Bars of :func:`aiopt_lib.labels.class_balance` (counts per class, one column per split
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
