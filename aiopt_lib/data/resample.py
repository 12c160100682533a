"""Resampling: ticks to bars, and bars to higher timeframes, with correct OHLCV aggregation.

Bars are labelled by their **open** time (left edge, interval closed on the left), as everywhere in
aiopt: the 10:00 hourly bar aggregates everything from 10:00:00 up to, not including, 11:00:00.
Intervals with no data produce no bar; gaps stay visible to :mod:`aiopt_lib.data.cleaning`.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import polars as pl

from aiopt_lib.core.bars import (
    ASK_COLUMNS,
    BID_COLUMNS,
    canonical_column_order,
    ensure_bars,
    ensure_ticks,
    infer_timeframe,
    parse_timeframe,
    timeframe_label,
)

__all__ = ["resample_bars", "ticks_to_bars"]

TickPrice = Literal["bid", "ask", "mid", "both"]
DayStart = Literal["utc", "new_york"]

NEW_YORK = "America/New_York"
# The FX trading day ends at 17:00 New York time; 7 hours later is midnight of the next day.
_NY_CLOSE_SHIFT = dt.timedelta(hours=7)


def _bucket(timeframe: dt.timedelta, day_start: DayStart) -> pl.Expr:
    """The open time of the bar that each ``ts`` belongs to."""
    every = timeframe_label(timeframe)
    if day_start == "utc" or timeframe < dt.timedelta(days=1):
        return pl.col("ts").dt.truncate(every)
    if day_start != "new_york":
        raise ValueError(f"day_start must be 'utc' or 'new_york', got {day_start!r}")
    # Wall-clock arithmetic in New York time: 17:00 is never a DST transition time, so the
    # shifted local midnight maps back to exactly one UTC instant.
    local = pl.col("ts").dt.convert_time_zone(NEW_YORK).dt.replace_time_zone(None)
    start_local = (local + _NY_CLOSE_SHIFT).dt.truncate(every) - _NY_CLOSE_SHIFT
    return start_local.dt.replace_time_zone(NEW_YORK).dt.convert_time_zone("UTC")


def _ohlc_aggs(prefix_in: str, prefix_out: str) -> list[pl.Expr]:
    return [
        pl.col(f"{prefix_in}open").first().alias(f"{prefix_out}open"),
        pl.col(f"{prefix_in}high").max().alias(f"{prefix_out}high"),
        pl.col(f"{prefix_in}low").min().alias(f"{prefix_out}low"),
        pl.col(f"{prefix_in}close").last().alias(f"{prefix_out}close"),
    ]


def _sum_in_time_order(column: str) -> pl.Expr:
    """The sum of a bar's values added one tick at a time, in time order.

    polars' ``sum`` adds floats in blocks whose grouping depends on where the bar's ticks sit in
    memory, so the same ticks aggregated alone or inside a larger frame could differ in the
    last bit. The running sum has one order, so a bar's volume is the same whether its ticks were
    aggregated all at once, a file at a time (:func:`aiopt_lib.data.store.aggregate_ticks`), or
    one by one as a live feed adds them."""
    return pl.col(column).cum_sum().last()


def ticks_to_bars(
    ticks: pl.DataFrame,
    timeframe: str | dt.timedelta = "1m",
    *,
    price: TickPrice = "bid",
) -> pl.DataFrame:
    """Aggregate ticks into canonical bars.

    ``price`` picks the quote the bars are built from: ``"bid"`` (volume = summed bid volume, as
    Dukascopy's bid candles), ``"ask"`` (summed ask volume), ``"mid"`` ((bid + ask) / 2, volume =
    bid + ask volume) or ``"both"`` (main columns from the bid, plus ``bid_*`` and ``ask_*``). Every
    result has ``spread``: the mean quoted spread (ask − bid) over the bar's ticks. Volumes and
    spreads are summed tick by tick in time order, so the bars do not depend on how the ticks
    were split into frames: bars of every file of a day equal the bars of the whole day, bit for
    bit.
    """
    ensure_ticks(ticks)
    td = parse_timeframe(timeframe)
    frame = ticks.with_columns(
        ((pl.col("bid") + pl.col("ask")) / 2).alias("mid"),
        (pl.col("bid_volume") + pl.col("ask_volume")).alias("mid_volume"),
        (pl.col("ask") - pl.col("bid")).alias("_spread"),
        _bucket(td, "utc").alias("_bar"),
    )
    main = {"bid": "bid", "ask": "ask", "mid": "mid", "both": "bid"}[price]
    volume = {"bid": "bid_volume", "ask": "ask_volume", "mid": "mid_volume", "both": "bid_volume"}[
        price
    ]
    aggs = [
        pl.col(main).first().alias("open"),
        pl.col(main).max().alias("high"),
        pl.col(main).min().alias("low"),
        pl.col(main).last().alias("close"),
        _sum_in_time_order(volume).alias("volume"),
    ]
    if price == "both":
        for side in ("bid", "ask"):
            aggs += [
                pl.col(side).first().alias(f"{side}_open"),
                pl.col(side).max().alias(f"{side}_high"),
                pl.col(side).min().alias(f"{side}_low"),
                pl.col(side).last().alias(f"{side}_close"),
            ]
    aggs.append((_sum_in_time_order("_spread") / pl.len()).alias("spread"))
    bars = frame.group_by("_bar", maintain_order=True).agg(aggs).rename({"_bar": "ts"}).sort("ts")
    return ensure_bars(canonical_column_order(bars))


def resample_bars(
    bars: pl.DataFrame,
    timeframe: str | dt.timedelta,
    *,
    day_start: DayStart = "utc",
) -> pl.DataFrame:
    """Aggregate bars to a higher timeframe: open first, high max, low min, close last, volume sum.

    ``bid_*``/``ask_*`` aggregate the same way, ``spread`` is averaged and ``flags`` OR-ed, so a
    repair in any source bar stays visible. ``day_start="new_york"`` starts daily and weekly bars at
    17:00 New York time (the FX day), instead of 00:00 UTC (Dukascopy's daily candles).
    The target timeframe must be a whole multiple of the source's.
    """
    ensure_bars(bars)
    target = parse_timeframe(timeframe)
    source = infer_timeframe(bars)
    if source is not None:
        if target < source:
            raise ValueError(
                f"cannot resample {timeframe_label(source)} bars down to {timeframe_label(target)}"
            )
        if target % source:
            raise ValueError(
                f"{timeframe_label(target)} is not a whole multiple of the bars' {timeframe_label(source)}"
            )
    aggs = [*_ohlc_aggs("", ""), pl.col("volume").sum()]
    if all(c in bars.columns for c in BID_COLUMNS):
        aggs += _ohlc_aggs("bid_", "bid_")
    if all(c in bars.columns for c in ASK_COLUMNS):
        aggs += _ohlc_aggs("ask_", "ask_")
    if "spread" in bars.columns:
        aggs.append(pl.col("spread").mean())
    if "flags" in bars.columns:
        aggs.append(pl.col("flags").bitwise_or())
    known = {
        "ts",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "spread",
        "flags",
        *BID_COLUMNS,
        *ASK_COLUMNS,
    }
    dropped = [c for c in bars.columns if c not in known]
    if dropped:
        raise ValueError(
            f"resample_bars does not know how to aggregate column(s) {dropped}; drop them first"
        )
    out = (
        bars.with_columns(_bucket(target, day_start).alias("_bar"))
        .group_by("_bar", maintain_order=True)
        .agg(aggs)
        .rename({"_bar": "ts"})
        .sort("ts")
    )
    if "flags" in out.columns:
        out = out.with_columns(pl.col("flags").cast(pl.UInt32))
    return ensure_bars(canonical_column_order(out))
