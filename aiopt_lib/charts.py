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
) -> Any:
    """An mplfinance candle chart of the ``n_bars`` bars ending at ``end`` (default: the last bar).

    Returns the matplotlib Figure (shown inline in notebooks, embedded as PNG in reports).
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
    )
    return fig


def _as_utc(value: dt.datetime | str) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
