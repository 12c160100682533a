import datetime as dt

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.bars import TS_DTYPE, check_bars
from aiopt_lib.data.resample import resample_bars, ticks_to_bars


def random_bars(n: int, step: dt.timedelta, seed: int = 0, start=None) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    start = start or dt.datetime(2024, 3, 4, tzinfo=dt.UTC)
    close = 1.1 + np.cumsum(rng.normal(0, 1e-4, n))
    open_ = np.concatenate([[1.1], close[:-1]])
    high = np.maximum(open_, close) + rng.uniform(0, 2e-4, n)
    low = np.minimum(open_, close) - rng.uniform(0, 2e-4, n)
    return pl.DataFrame(
        {
            "ts": [start + i * step for i in range(n)],
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.uniform(1, 10, n),
        },
        schema_overrides={"ts": TS_DTYPE},
    )


def test_resample_matches_a_plain_loop():
    bars = random_bars(600, dt.timedelta(minutes=1))
    out = resample_bars(bars, "15m")
    assert check_bars(out) == []
    assert out.height == 40
    rows = bars.to_dicts()
    for k, got in enumerate(out.iter_rows(named=True)):
        chunk = rows[k * 15 : (k + 1) * 15]
        assert got["ts"] == chunk[0]["ts"]
        assert got["open"] == chunk[0]["open"]
        assert got["close"] == chunk[-1]["close"]
        assert got["high"] == max(r["high"] for r in chunk)
        assert got["low"] == min(r["low"] for r in chunk)
        assert got["volume"] == pytest.approx(sum(r["volume"] for r in chunk), rel=1e-12)


def test_resampled_bar_uses_only_its_own_interval():
    # no look-ahead: changing a bar after an interval never changes that interval's bar
    bars = random_bars(120, dt.timedelta(minutes=1))
    base = resample_bars(bars, "1h")
    bumped = bars.with_columns(
        pl.when(pl.col("ts") == bars["ts"][60])
        .then(pl.col("high") + 0.01)
        .otherwise(pl.col("high"))
        .alias("high")
    )
    after = resample_bars(bumped, "1h")
    assert base.row(0) == after.row(0)
    assert after["high"][1] == pytest.approx(bars["high"][60] + 0.01)


def test_resample_keeps_flags_and_bid_ask():
    bars = random_bars(8, dt.timedelta(hours=1)).with_columns(
        (pl.col("open") + 1e-4).alias("ask_open"),
        (pl.col("high") + 1e-4).alias("ask_high"),
        (pl.col("low") + 1e-4).alias("ask_low"),
        (pl.col("close") + 1e-4).alias("ask_close"),
        pl.col("open").alias("bid_open"),
        pl.col("high").alias("bid_high"),
        pl.col("low").alias("bid_low"),
        pl.col("close").alias("bid_close"),
        pl.Series("spread", [1e-4] * 8),
        pl.Series("flags", [0, 0, 4, 0, 0, 0, 0, 32], dtype=pl.UInt32),
    )
    out = resample_bars(bars, "4h")
    assert out["flags"].to_list() == [4, 32]
    assert out["ask_high"].to_list() == pytest.approx([v + 1e-4 for v in out["high"].to_list()])
    assert out["spread"].to_list() == pytest.approx([1e-4, 1e-4])


def test_resample_rejects_downsampling_and_odd_multiples():
    bars = random_bars(10, dt.timedelta(hours=1))
    with pytest.raises(ValueError, match="down"):
        resample_bars(bars, "15m")
    with pytest.raises(ValueError, match="multiple"):
        resample_bars(random_bars(10, dt.timedelta(minutes=15)), "40m")


def test_daily_bars_at_new_york_close_follow_dst():
    # 17:00 New York is 22:00 UTC in winter and 21:00 UTC in summer
    winter = random_bars(48, dt.timedelta(hours=1), start=dt.datetime(2024, 1, 9, tzinfo=dt.UTC))
    summer = random_bars(48, dt.timedelta(hours=1), start=dt.datetime(2024, 7, 9, tzinfo=dt.UTC))
    w = resample_bars(winter, "1d", day_start="new_york")
    s = resample_bars(summer, "1d", day_start="new_york")
    assert {t.hour for t in w["ts"].to_list()} == {22}
    assert {t.hour for t in s["ts"].to_list()} == {21}
    utc = resample_bars(winter, "1d")
    assert {t.hour for t in utc["ts"].to_list()} == {0}


def test_ticks_to_bars_sides_and_spread():
    t0 = dt.datetime(2024, 1, 2, 10, tzinfo=dt.UTC)
    ticks = pl.DataFrame(
        {
            "ts": [t0, t0 + dt.timedelta(seconds=10), t0 + dt.timedelta(seconds=70)],
            "bid": [1.10000, 1.10010, 1.10020],
            "ask": [1.10002, 1.10014, 1.10021],
            "bid_volume": [1.0, 2.0, 3.0],
            "ask_volume": [0.5, 0.5, 0.5],
        },
        schema_overrides={"ts": TS_DTYPE},
    )
    bid = ticks_to_bars(ticks, "1m", price="bid")
    assert bid["ts"].to_list() == [t0, t0 + dt.timedelta(minutes=1)]
    assert bid.row(0, named=True)["open"] == 1.1 and bid.row(0, named=True)["close"] == 1.1001
    assert bid["volume"].to_list() == [3.0, 3.0]
    assert bid["spread"].to_list() == pytest.approx([3e-5, 1e-5])
    ask = ticks_to_bars(ticks, "1m", price="ask")
    assert ask["high"][0] == 1.10014 and ask["volume"][0] == 1.0
    mid = ticks_to_bars(ticks, "1m", price="mid")
    assert mid["open"][0] == pytest.approx(1.10001)
    both = ticks_to_bars(ticks, "1m", price="both")
    assert check_bars(both) == []
    assert both["ask_close"][0] == 1.10014 and both["bid_close"][0] == 1.1001
