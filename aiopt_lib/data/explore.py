"""Data exploration: summaries of a bars frame that notebook 01 shows and later stages reuse."""

from __future__ import annotations

import polars as pl

from aiopt_lib.core.bars import ensure_bars, infer_timeframe, timeframe_label
from aiopt_lib.data.cleaning import ACTIONS, ValidationReport, classify_gaps

__all__ = ["data_verdict", "describe_bars", "hour_of_week_profile"]

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def pip_size(symbol: str | None) -> float:
    """The pip of a symbol: 0.01 for JPY pairs, 0.1 for gold, else 0.0001 (5-digit FX quotes)."""
    sym = (symbol or "").upper()
    if sym.endswith("JPY"):
        return 0.01
    if sym.startswith("XAU"):
        return 0.1
    return 0.0001


def describe_bars(bars: pl.DataFrame, *, symbol: str | None = "EURUSD") -> pl.DataFrame:
    """One-row summary: rows, first/last bar, timeframe, price range, mean absolute return, and
    mean spread and range in pips. Empty bars (a legal empty Dukascopy hour) give ``bars`` 0 and
    nulls."""
    ensure_bars(bars)
    pip = pip_size(symbol)
    timeframe = infer_timeframe(bars)
    stats = bars.select(
        pl.len().alias("bars"),
        pl.col("ts").min().alias("first_bar"),
        pl.col("ts").max().alias("last_bar"),
        pl.col("low").min().alias("lowest"),
        pl.col("high").max().alias("highest"),
        (pl.col("close").log().diff().abs().mean() * 1e4).alias("mean_abs_return_bp"),
        ((pl.col("high") - pl.col("low")).mean() / pip).alias("mean_range_pips"),
        pl.col("volume").sum().alias("total_volume"),
    )
    if "spread" in bars.columns:
        stats = stats.with_columns(
            (bars.select(pl.col("spread").mean()).to_series().cast(pl.Float64) / pip).alias(
                "mean_spread_pips"
            )
        )
    return stats.with_columns(
        pl.lit(timeframe_label(timeframe) if timeframe else None, dtype=pl.String).alias(
            "timeframe"
        )
    )


def hour_of_week_profile(bars: pl.DataFrame, *, symbol: str | None = "EURUSD") -> pl.DataFrame:
    """Median volume, high-low range and spread (pips) per hour of the week, UTC, Monday 00:00 = 0.

    Bars of any intraday timeframe are grouped by the hour their open time falls in.
    ``median_spread_pips`` is null when the data has no ``spread`` column.
    """
    ensure_bars(bars)
    pip = pip_size(symbol)
    spread = (
        (pl.col("spread") / pip).median()
        if "spread" in bars.columns
        else pl.lit(None, dtype=pl.Float64)
    )
    return (
        bars.with_columns(
            # weekday() and hour() are Int8: widen before multiplying (6 * 24 overflows Int8)
            (
                (pl.col("ts").dt.weekday().cast(pl.Int32) - 1) * 24
                + pl.col("ts").dt.hour().cast(pl.Int32)
            ).alias("hour_of_week")
        )
        .group_by("hour_of_week")
        .agg(
            pl.len().alias("bars"),
            pl.col("volume").median().alias("median_volume"),
            ((pl.col("high") - pl.col("low")) / pip).median().alias("median_range_pips"),
            spread.alias("median_spread_pips"),
        )
        .sort("hour_of_week")
        .with_columns(
            (pl.col("hour_of_week") // 24)
            .replace_strict(list(range(7)), list(DAY_NAMES), return_dtype=pl.String)
            .alias("day"),
            (pl.col("hour_of_week") % 24).alias("hour"),
        )
    )


def data_verdict(report: ValidationReport, bars: pl.DataFrame) -> str:
    """Notebook 01's answer in one sentence, from the validation ``report`` and the cleaned
    ``bars``: whether the data is fit for research (no warnings or errors left, no unexpected
    gap), with the bar count and period, the repairs the cleaning made and the gaps by kind."""
    ensure_bars(bars)
    if bars.is_empty():
        return "No: no bars were kept."
    timeframe = infer_timeframe(bars)
    gaps = classify_gaps(bars, timeframe) if timeframe else None
    unexpected = 0 if gaps is None else int((gaps.get_column("kind") == "unexpected").sum())
    expected = 0 if gaps is None else (gaps.height - unexpected)
    counts = report.summary()
    changes = [f"{counts[a]} {a}" for a in ACTIONS if a not in ("kept", "flagged") and counts[a]]
    flagged = counts.get("flagged", 0)
    problems = report.problems.height
    fit = problems == 0 and unexpected == 0
    label = f" ({timeframe_label(timeframe)})" if timeframe else ""
    period = (
        f"{bars.height:,} bars{label} from {bars['ts'][0]:%Y-%m-%d} to {bars['ts'][-1]:%Y-%m-%d}"
    )
    repaired = (
        f"the cleaning changed rows ({', '.join(changes)})"
        if changes
        else "the cleaning changed no row"
    )
    if flagged:
        repaired += f" and flagged {flagged}"
    gap_text = f"{expected} gap(s) are expected weekend or holiday closures" + (
        f" and {unexpected} are not" if unexpected else ""
    )
    head = "Yes" if fit else "With care"
    why = "" if fit else f" ({problems} warning(s) or error(s) remain, see the report below)"
    return f"{head}: {period}; {repaired}; {gap_text}{why}."
