"""Causal features: definitions, missing-value rules, sessions across DST, and no look-ahead."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import BarsSchemaError, ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.causal import (
    DEFAULT_SESSIONS,
    FeatureParams,
    Session,
    add_features,
    feature_columns,
)
from aiopt_lib.features.indicators import atr
from aiopt_lib.features.lookahead import check_no_lookahead
from aiopt_lib.features.patterns import add_patterns, pattern_columns
from aiopt_lib.features.registry import IndicatorParams, add_indicators, indicator_columns


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def featured(sample: pl.DataFrame) -> pl.DataFrame:
    return add_features(sample)


def _hourly_walk(start: dt.datetime, hours: int, seed: int = 0) -> pl.DataFrame:
    """Continuous hourly bars (every hour, weekends too) of a random walk, for calendar tests."""
    rng = np.random.default_rng(seed)
    close = 1.1 + np.cumsum(rng.normal(0, 0.001, hours))
    open_ = np.concatenate([[1.1], close[:-1]])
    wick = np.abs(rng.normal(0, 0.0005, (2, hours)))
    return pl.DataFrame(
        {
            "ts": pl.datetime_range(
                start, start + dt.timedelta(hours=hours - 1), "1h", eager=True, time_zone="UTC"
            ).dt.cast_time_unit("us"),
            "open": open_,
            "high": np.maximum(open_, close) + wick[0],
            "low": np.minimum(open_, close) - wick[1],
            "close": close,
            "volume": np.ones(hours),
        }
    )


# --- no look-ahead ------------------------------------------------------------------------------


def test_every_feature_indicator_and_pattern_passes_the_lookahead_check(
    sample: pl.DataFrame,
) -> None:
    report = check_no_lookahead(add_features, sample, n_cuts=12, seed=0)
    assert report.passed
    checked = set(report.columns)
    assert set(feature_columns()) <= checked
    assert set(indicator_columns()) <= checked
    assert set(pattern_columns()) <= checked


def test_indicators_and_patterns_alone_pass_the_lookahead_check(sample: pl.DataFrame) -> None:
    assert check_no_lookahead(add_indicators, sample, n_cuts=6, seed=1).passed
    assert check_no_lookahead(lambda b: add_patterns(b), sample, n_cuts=6, seed=1).passed


def test_non_default_parameters_pass_the_lookahead_check(sample: pl.DataFrame) -> None:
    params = FeatureParams(
        return_lags=(2, 48),
        indicators=IndicatorParams(rsi_length=7, sma_length=100, ema_length=9, atr_length=20),
        patterns=("doji", "hammer", "morning_star"),
    )
    report = check_no_lookahead(lambda b: add_features(b, params), sample, n_cuts=6, seed=2)
    assert report.passed
    assert set(feature_columns(params)) <= set(report.columns)


# --- columns ------------------------------------------------------------------------------------


def test_feature_columns_are_what_add_features_adds(
    sample: pl.DataFrame, featured: pl.DataFrame
) -> None:
    names = feature_columns()
    assert featured.columns == sample.columns + names
    assert featured.height == sample.height
    assert featured.select(sample.columns).equals(sample)
    for lag in (1, 3, 12, 24):
        assert f"ret_{lag}" in names and f"logret_{lag}" in names
    for name in (
        "body_ratio",
        "upper_wick_ratio",
        "lower_wick_ratio",
        "range_atr",
        "gap_atr",
        "dist_ema_20_atr",
        "dist_sma_50_atr",
        "bb_pctb_20_2",
        "hour_of_week",
        "day_of_week",
        "session_london",
        "session_new_york",
        "session_tokyo",
        "session_sydney",
        "pat_hammer",
    ):
        assert name in names
    # computing again on the result replaces the columns, it does not duplicate them
    assert add_features(featured).equals(featured)


def test_parameters_choose_the_columns(sample: pl.DataFrame) -> None:
    params = FeatureParams(
        return_lags=(5,),
        include_indicators=False,
        patterns=("doji",),
        sessions=(Session("frankfurt", "Europe/Berlin", dt.time(8), dt.time(17)),),
    )
    names = feature_columns(params)
    out = add_features(sample.head(200), params)
    assert out.columns == sample.columns + names
    assert "ret_5" in names and "ret_1" not in names
    assert not set(indicator_columns()) & set(names)
    assert [c for c in names if c.startswith("pat_")] == ["pat_doji"]
    assert [c for c in names if c.startswith("session_")] == ["session_frankfurt"]
    assert "pat_doji" not in feature_columns(FeatureParams(include_patterns=False))


# --- definitions --------------------------------------------------------------------------------


def test_returns(sample: pl.DataFrame, featured: pl.DataFrame) -> None:
    close = sample["close"].to_numpy()
    for k in (1, 3, 12, 24):
        ret = featured[f"ret_{k}"]
        assert ret.head(k).is_null().all()
        np.testing.assert_allclose(ret.slice(k).to_numpy(), close[k:] / close[:-k] - 1, rtol=1e-12)
        np.testing.assert_allclose(
            featured[f"logret_{k}"].slice(k).to_numpy(), np.log(close[k:] / close[:-k]), rtol=1e-12
        )


def test_candle_shape_and_atr_units(sample: pl.DataFrame, featured: pl.DataFrame) -> None:
    o, h, lo, c = (sample[x].to_numpy() for x in ("open", "high", "low", "close"))
    span = h - lo
    assert (span > 0).all()  # the sample has no flat bar; flat bars are tested below
    np.testing.assert_allclose(featured["body_ratio"].to_numpy(), np.abs(c - o) / span)
    np.testing.assert_allclose(
        featured["upper_wick_ratio"].to_numpy(), (h - np.maximum(o, c)) / span
    )
    np.testing.assert_allclose(featured["close_location"].to_numpy(), (c - lo) / span)
    parts = featured.select(
        pl.col("body_ratio") + pl.col("upper_wick_ratio") + pl.col("lower_wick_ratio")
    ).to_series()
    np.testing.assert_allclose(parts.to_numpy(), 1.0, atol=1e-9)

    atr_t = atr(h, lo, c, 14)
    valid = ~np.isnan(atr_t)
    assert featured["range_atr"].is_null().to_numpy().tolist() == (~valid).tolist()
    np.testing.assert_allclose(featured["range_atr"].to_numpy()[valid], (span / atr_t)[valid])
    gap = (o[1:] - c[:-1]) / atr_t[1:]
    np.testing.assert_allclose(featured["gap_atr"].to_numpy()[1:][valid[1:]], gap[valid[1:]])
    np.testing.assert_allclose(featured["atr_pct"].to_numpy()[valid], (atr_t / c)[valid])
    # distances from the moving averages in ATR units
    for line in ("ema_20", "sma_50", "bb_basis_20_2"):
        want = (featured["close"] - featured[line]) / featured["atr_14"]
        got = featured[f"dist_{line}_atr"]
        assert got.is_null().equals(want.is_null())
        np.testing.assert_allclose(got.drop_nulls().to_numpy(), want.drop_nulls().to_numpy())
    want = featured["macd_hist_12_26_9"] / featured["atr_14"]
    np.testing.assert_allclose(
        featured["macd_hist_12_26_9_atr"].drop_nulls().to_numpy(), want.drop_nulls().to_numpy()
    )


def test_no_range_and_no_atr_give_nulls_never_inf_or_nan(sample: pl.DataFrame) -> None:
    bars = sample.head(400)
    # make some bars flat: a doji with no range at the previous close
    flat = pl.Series([i % 37 == 5 for i in range(bars.height)])
    prev = bars["close"].shift(1).fill_null(bars["open"])
    bars = bars.with_columns(
        *(
            pl.when(flat).then(prev).otherwise(pl.col(c)).alias(c)
            for c in ("open", "high", "low", "close")
        )
    )
    out = add_features(bars)
    for name in ("body_ratio", "upper_wick_ratio", "lower_wick_ratio", "close_location"):
        assert out[name].is_null().to_list() == flat.to_list()
    # a market that does not move at all: ATR is 0, every ATR-scaled feature is null
    still = bars.with_columns(*(pl.lit(1.1).alias(c) for c in ("open", "high", "low", "close")))
    out_still = add_features(still)
    for name in ("range_atr", "gap_atr", "dist_ema_20_atr", "macd_12_26_9_atr", "body_ratio"):
        assert out_still[name].is_null().all()
    for frame in (out, out_still):
        floats = frame.select(pl.col(pl.Float64))
        assert not floats.select(pl.any_horizontal(pl.all().is_nan().fill_null(False)).any()).item()
        assert not floats.select(
            pl.any_horizontal(pl.all().is_infinite().fill_null(False)).any()
        ).item()


def test_time_features() -> None:
    bars = _hourly_walk(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 24 * 7 + 5)  # Monday 00:00 on
    out = add_features(bars)
    assert out["hour_of_week"].to_list() == [*range(168), *range(5)]
    assert out["hour"].to_list()[:26] == [*range(24), 0, 1]
    assert out["day_of_week"].to_list()[::24] == [1, 2, 3, 4, 5, 6, 7, 1]
    angle = 2 * math.pi * np.array(out["hour_of_week"].to_list()) / 168
    np.testing.assert_allclose(out["hour_of_week_sin"].to_numpy(), np.sin(angle), atol=1e-12)
    np.testing.assert_allclose(out["hour_of_week_cos"].to_numpy(), np.cos(angle), atol=1e-12)


def _session_hours(bars: pl.DataFrame, column: str, day: dt.date) -> list[int]:
    """UTC hours (bar open) of ``day`` at which ``column`` is True."""
    out = add_features(bars, FeatureParams(include_indicators=False, include_patterns=False))
    rows = out.filter(pl.col("ts").dt.date() == day, pl.col(column))
    return rows["ts"].dt.hour().to_list()


def test_sessions_follow_daylight_saving_time() -> None:
    winter = _hourly_walk(dt.datetime(2017, 1, 8, tzinfo=dt.UTC), 24 * 7)  # Sunday 8 Jan on
    summer = _hourly_walk(dt.datetime(2017, 7, 9, tzinfo=dt.UTC), 24 * 7)  # Sunday 9 Jul on
    wed_jan, wed_jul = dt.date(2017, 1, 11), dt.date(2017, 7, 12)
    # London 08:00-17:00 local: GMT in winter, BST (UTC+1) in summer
    assert _session_hours(winter, "session_london", wed_jan) == list(range(8, 17))
    assert _session_hours(summer, "session_london", wed_jul) == list(range(7, 16))
    # New York 08:00-17:00 local: EST (UTC-5) / EDT (UTC-4)
    assert _session_hours(winter, "session_new_york", wed_jan) == list(range(13, 22))
    assert _session_hours(summer, "session_new_york", wed_jul) == list(range(12, 21))
    # Tokyo 09:00-18:00 JST (UTC+9, no DST)
    assert _session_hours(winter, "session_tokyo", wed_jan) == list(range(0, 9))
    assert _session_hours(summer, "session_tokyo", wed_jul) == list(range(0, 9))
    # Sydney 08:00-17:00 local: AEDT (UTC+11) in January, AEST (UTC+10) in July; its Monday
    # morning is Sunday evening UTC
    assert _session_hours(winter, "session_sydney", dt.date(2017, 1, 8)) == [21, 22, 23]
    assert _session_hours(summer, "session_sydney", dt.date(2017, 7, 9)) == [22, 23]
    assert _session_hours(winter, "session_sydney", wed_jan) == [0, 1, 2, 3, 4, 5, 21, 22, 23]
    # no session on a local Saturday or Sunday
    saturday = dt.date(2017, 1, 14)
    for session in DEFAULT_SESSIONS:
        assert _session_hours(winter, session.column, saturday) == []


def test_sessions_on_the_sample(featured: pl.DataFrame) -> None:
    # in January the week opens Sunday 22:00 UTC, Monday 09:00 in Sydney: Sydney is open
    sunday = featured.filter(pl.col("day_of_week") == 7)
    january = sunday.filter(pl.col("ts").dt.month() == 1)
    assert january.height > 0 and january["session_sydney"].all()
    assert not sunday["session_london"].any()
    assert not sunday["session_new_york"].any()
    # London and New York overlap every trading day, 12:00-16:00 UTC depending on DST
    overlap = featured.filter(pl.col("session_london") & pl.col("session_new_york"))
    assert set(overlap["hour"].unique().to_list()) == {12, 13, 14, 15, 16}
    assert overlap.height > 200 * 3


def test_bad_input_is_refused(sample: pl.DataFrame) -> None:
    with pytest.raises(ConfigError, match="return_lags"):
        FeatureParams(return_lags=(0, 1))
    with pytest.raises(ConfigError, match="repeat"):
        FeatureParams(return_lags=(1, 1))
    with pytest.raises(BarsSchemaError):
        add_features(sample.drop("volume"))
    with pytest.raises(BarsSchemaError):
        add_features(sample.reverse())
