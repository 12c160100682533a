"""Causal features of bars: returns, candle shape, volatility, indicators, time, sessions, patterns.

:func:`add_features` adds the columns below to a canonical bars frame; :func:`feature_columns`
lists them (in that order) for a :class:`FeatureParams`. Every feature at bar ``t`` uses bars
``<= t`` only and is known at the bar's close (``ts + timeframe``); the tests run all of them
through :func:`aiopt_lib.features.lookahead.check_no_lookahead` on the real EUR/USD sample.

``ATR_t`` below is TradingView's ``ta.atr(atr_length)`` at bar ``t``
(:func:`aiopt_lib.features.indicators.atr`, ``atr_length`` from ``params.indicators``).

========================================  ===================================================
column                                    definition
========================================  ===================================================
``ret_{k}``                               ``close_t / close_{t-k} - 1`` for k in ``return_lags``
``logret_{k}``                            ``ln(close_t / close_{t-k})``
``body_ratio``                            ``|close - open| / (high - low)``, in [0, 1]
``upper_wick_ratio``                      ``(high - max(open, close)) / (high - low)``
``lower_wick_ratio``                      ``(min(open, close) - low) / (high - low)``
``close_location``                        ``(close - low) / (high - low)``: 0 at the low, 1 at the high
``range_atr``                             ``(high - low) / ATR_t``
``gap_atr``                               ``(open_t - close_{t-1}) / ATR_t``
``atr_pct``                               ``ATR_t / close_t`` (volatility as a return)
indicator columns                         :func:`aiopt_lib.features.indicators.add_indicators` (``rsi_14``,
                                          ``macd_12_26_9``, ..., ``bb_pctb_20_2`` = Bollinger %b)
``dist_{ma}_atr``                         ``(close - ma) / ATR_t`` for the EMA, SMA and Bollinger
                                          basis columns (``dist_ema_20_atr``, ``dist_sma_50_atr``,
                                          ``dist_bb_basis_20_2_atr``)
``{macd column}_atr``                     the MACD line, signal and histogram / ATR_t
``hour``                                  UTC hour of the bar's open time, 0..23
``day_of_week``                           ISO weekday of the open time in UTC, 1 = Monday .. 7 = Sunday
``hour_of_week``                          ``(day_of_week - 1) * 24 + hour``, 0..167, Monday 00:00 UTC = 0
``hour_of_week_sin`` / ``_cos``           ``sin`` / ``cos`` of ``2π · hour_of_week / 168``
``session_{name}``                        True when the bar opens inside the session (below)
``pat_{name}``                            :func:`aiopt_lib.features.patterns.add_patterns` flags
========================================  ===================================================

Missing values (documented rule)
    Nothing is ever infinite or NaN: a bar with no range (``high == low``) has null candle-shape
    ratios (``body_ratio``, wick ratios, ``close_location``); a zero or missing ATR gives null
    ``*_atr`` features; returns are null for the first ``k`` bars (and where a price is not
    positive); indicator warm-ups are null (see :mod:`aiopt_lib.features.indicators`). Dtypes: Float64,
    Int8 for ``hour`` / ``day_of_week``, Int16 for ``hour_of_week``, Boolean for sessions and patterns.

Sessions (DST-aware)
    A session is a business day in a city's own time zone: the bar is in it when its open time,
    converted to that zone (IANA tz database, so daylight saving time moves the UTC hours), is on
    a Monday to Friday at or after ``open`` and before ``close`` local time. Defaults
    (:data:`DEFAULT_SESSIONS`): Sydney 08:00–17:00 Australia/Sydney, Tokyo 09:00–18:00 Asia/Tokyo,
    London 08:00–17:00 Europe/London, New York 08:00–17:00 America/New_York. So London opens at
    08:00 UTC in winter and 07:00 UTC in summer; New York at 13:00 / 12:00 UTC; Sydney at 21:00 UTC
    of the previous day under AEDT (UTC+11, October to April) and 22:00 UTC under AEST (UTC+10), so
    Sunday evening UTC is Sydney's Monday morning. Sessions overlap (London and New York share four
    or five hours, 12:00–17:00 UTC depending on DST). Bars longer than an hour are classified by
    their open time.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from aiopt_lib.core.bars import ensure_bars
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features.indicators import atr
from aiopt_lib.features.patterns import PatternParams, add_patterns, pattern_columns
from aiopt_lib.features.registry import IndicatorParams, add_indicators, indicator_columns

__all__ = ["FeatureParams", "add_features", "feature_columns"]


@dataclass(frozen=True)
class Session:
    """A trading session: local business hours ``[open, close)`` in time zone ``tz``, Mon–Fri."""

    name: str
    tz: str
    open: dt.time
    close: dt.time

    @property
    def column(self) -> str:
        """The feature column of this session, ``session_{name}``."""
        return f"session_{self.name}"


DEFAULT_SESSIONS: tuple[Session, ...] = (
    Session("sydney", "Australia/Sydney", dt.time(8), dt.time(17)),
    Session("tokyo", "Asia/Tokyo", dt.time(9), dt.time(18)),
    Session("london", "Europe/London", dt.time(8), dt.time(17)),
    Session("new_york", "America/New_York", dt.time(8), dt.time(17)),
)

CANDLE_FEATURES: tuple[str, ...] = (
    "body_ratio",
    "upper_wick_ratio",
    "lower_wick_ratio",
    "close_location",
    "range_atr",
    "gap_atr",
    "atr_pct",
)
TIME_FEATURES: tuple[str, ...] = (
    "hour",
    "day_of_week",
    "hour_of_week",
    "hour_of_week_sin",
    "hour_of_week_cos",
)
_ATR = "_feature_atr"  # the normalising ATR, dropped at the end


@dataclass(frozen=True)
class FeatureParams:
    """What :func:`add_features` adds.

    ``return_lags``: lags (bars) of ``ret_k`` / ``logret_k``. ``indicators``: the indicator
    parameters (also the ``atr_length`` of every ``*_atr`` feature). ``include_indicators``: add
    the indicator columns and their ATR-normalised distances. ``patterns``: pattern names (None:
    all of :data:`aiopt_lib.features.patterns.PATTERNS`), ``pattern_params`` their thresholds,
    ``include_patterns`` whether to add them. ``sessions``: the trading sessions.
    """

    return_lags: tuple[int, ...] = (1, 3, 12, 24)
    indicators: IndicatorParams = field(default_factory=IndicatorParams)
    include_indicators: bool = True
    patterns: tuple[str, ...] | None = None
    pattern_params: PatternParams | None = None
    include_patterns: bool = True
    sessions: tuple[Session, ...] = DEFAULT_SESSIONS

    def __post_init__(self) -> None:
        lags = tuple(self.return_lags)
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in lags):
            raise ConfigError(f"return_lags must be ints >= 1, got {lags}")
        if len(set(lags)) != len(lags):
            raise ConfigError(f"return_lags must not repeat, got {lags}")
        object.__setattr__(self, "return_lags", lags)
        if self.patterns is not None:
            object.__setattr__(self, "patterns", tuple(self.patterns))
        names = [s.name for s in self.sessions]
        if len(set(names)) != len(names):
            raise ConfigError(f"session names must be unique, got {names}")


def _distance_sources(params: IndicatorParams) -> tuple[str, ...]:
    """Indicator columns whose distance from the close is a feature (price-level lines)."""
    return tuple(params.column(kind) for kind in ("ema", "sma", "bb_basis"))


def _macd_columns(params: IndicatorParams) -> tuple[str, ...]:
    return tuple(params.column(kind) for kind in ("macd", "macd_signal", "macd_hist"))


def feature_columns(params: FeatureParams = FeatureParams()) -> list[str]:
    """The columns :func:`add_features` adds with ``params``, in order."""
    names: list[str] = []
    names += [f"ret_{k}" for k in params.return_lags]
    names += [f"logret_{k}" for k in params.return_lags]
    names += list(CANDLE_FEATURES)
    if params.include_indicators:
        names += list(indicator_columns(params.indicators))
        names += [f"dist_{c}_atr" for c in _distance_sources(params.indicators)]
        names += [f"{c}_atr" for c in _macd_columns(params.indicators)]
    names += list(TIME_FEATURES)
    names += [s.column for s in params.sessions]
    if params.include_patterns:
        names += pattern_columns(params.patterns)
    return names


def _safe_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is not > 0 (never inf or NaN)."""
    return pl.when(denominator > 0).then(numerator / denominator).otherwise(None)


def _return_exprs(lags: tuple[int, ...]) -> list[pl.Expr]:
    close = pl.col("close")
    exprs = []
    for k in lags:
        ratio = _safe_ratio(close, close.shift(k))
        exprs.append((ratio - 1.0).alias(f"ret_{k}"))
        exprs.append(pl.when(ratio > 0).then(ratio.log()).alias(f"logret_{k}"))
    return exprs


def _candle_exprs() -> list[pl.Expr]:
    o, h, lo, c = pl.col("open"), pl.col("high"), pl.col("low"), pl.col("close")
    span = h - lo
    top = pl.max_horizontal(o, c)
    bottom = pl.min_horizontal(o, c)
    a = pl.col(_ATR)
    return [
        _safe_ratio((c - o).abs(), span).alias("body_ratio"),
        _safe_ratio(h - top, span).alias("upper_wick_ratio"),
        _safe_ratio(bottom - lo, span).alias("lower_wick_ratio"),
        _safe_ratio(c - lo, span).alias("close_location"),
        _safe_ratio(span, a).alias("range_atr"),
        _safe_ratio(o - c.shift(1), a).alias("gap_atr"),
        _safe_ratio(a, c).alias("atr_pct"),
    ]


def _time_exprs() -> list[pl.Expr]:
    ts = pl.col("ts")
    hour = ts.dt.hour().cast(pl.Int8)
    day = ts.dt.weekday().cast(pl.Int8)
    # weekday() and hour() are Int8: widen before multiplying (6 * 24 overflows Int8)
    how = ((day.cast(pl.Int16) - 1) * 24 + hour.cast(pl.Int16)).cast(pl.Int16)
    angle = how.cast(pl.Float64) * (2.0 * math.pi / 168.0)
    return [
        hour.alias("hour"),
        day.alias("day_of_week"),
        how.alias("hour_of_week"),
        angle.sin().alias("hour_of_week_sin"),
        angle.cos().alias("hour_of_week_cos"),
    ]


def _session_expr(session: Session) -> pl.Expr:
    local = pl.col("ts").dt.convert_time_zone(session.tz)
    minute = local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)
    start = session.open.hour * 60 + session.open.minute
    stop = session.close.hour * 60 + session.close.minute
    within = (
        (minute >= start) & (minute < stop) if start < stop else (minute >= start) | (minute < stop)
    )
    return (within & (local.dt.weekday() <= 5)).alias(session.column)


def add_features(bars: pl.DataFrame, params: FeatureParams = FeatureParams()) -> pl.DataFrame:
    """``bars`` with the causal features of ``params`` added (see the module docstring).

    Returns the input columns followed by :func:`feature_columns` ``(params)`` in that order
    (existing columns of the same names are replaced). Raises ``BarsSchemaError`` for frames that
    are not canonical bars.
    """
    ensure_bars(bars)
    names = feature_columns(params)
    atr_values = atr(
        bars.get_column("high").to_numpy(),
        bars.get_column("low").to_numpy(),
        bars.get_column("close").to_numpy(),
        params.indicators.atr_length,
    )
    frame = bars.drop([c for c in names if c in bars.columns]).with_columns(
        pl.Series(_ATR, np.asarray(atr_values, dtype=np.float64), nan_to_null=True)
    )
    frame = frame.with_columns(*_return_exprs(params.return_lags), *_candle_exprs())
    if params.include_indicators:
        frame = add_indicators(frame, params.indicators)
        close = pl.col("close")
        frame = frame.with_columns(
            *(
                _safe_ratio(close - pl.col(c), pl.col(_ATR)).alias(f"dist_{c}_atr")
                for c in _distance_sources(params.indicators)
            ),
            *(
                _safe_ratio(pl.col(c), pl.col(_ATR)).alias(f"{c}_atr")
                for c in _macd_columns(params.indicators)
            ),
        )
    frame = frame.with_columns(*_time_exprs(), *(_session_expr(s) for s in params.sessions))
    if params.include_patterns:
        frame = add_patterns(frame, params.patterns, params.pattern_params)
    return frame.select([c for c in bars.columns if c not in names] + names)
