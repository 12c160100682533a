import datetime as dt

import polars as pl
import pytest

from aiopt_lib.core.bars import (
    TS_DTYPE,
    Flag,
    check_bars,
    check_ticks,
    empty_bars,
    ensure_bars,
    infer_timeframe,
    parse_timeframe,
    timeframe_label,
)
from aiopt_lib.core.errors import BarsSchemaError


def make_bars(n: int = 5, step: dt.timedelta = dt.timedelta(hours=1)) -> pl.DataFrame:
    start = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    return pl.DataFrame(
        {
            "ts": [start + i * step for i in range(n)],
            "open": [1.1 + i * 1e-4 for i in range(n)],
            "high": [1.1005 + i * 1e-4 for i in range(n)],
            "low": [1.0995 + i * 1e-4 for i in range(n)],
            "close": [1.1002 + i * 1e-4 for i in range(n)],
            "volume": [100.0] * n,
        },
        schema_overrides={"ts": TS_DTYPE},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m", dt.timedelta(minutes=1)),
        ("m1", dt.timedelta(minutes=1)),
        ("M15", dt.timedelta(minutes=15)),
        ("15min", dt.timedelta(minutes=15)),
        ("1h", dt.timedelta(hours=1)),
        ("H4", dt.timedelta(hours=4)),
        ("d1", dt.timedelta(days=1)),
        ("1w", dt.timedelta(weeks=1)),
        ("30s", dt.timedelta(seconds=30)),
    ],
)
def test_parse_timeframe(text, expected):
    assert parse_timeframe(text) == expected


@pytest.mark.parametrize("bad", ["", "1x", "0h", "hourly-ish", "1mo"])
def test_parse_timeframe_rejects(bad):
    with pytest.raises(ValueError, match="timeframe"):
        parse_timeframe(bad)


def test_timeframe_label_round_trips():
    for label in ["1m", "5m", "15m", "1h", "4h", "1d", "1w"]:
        assert timeframe_label(parse_timeframe(label)) == label


def test_canonical_frame_passes():
    assert check_bars(make_bars()) == []
    assert check_bars(empty_bars()) == []
    assert check_bars(empty_bars(with_bid_ask=True)) == []


def test_check_bars_names_each_problem():
    bars = make_bars()
    assert any("missing column" in p for p in check_bars(bars.drop("volume")))
    naive = bars.with_columns(pl.col("ts").dt.replace_time_zone(None))
    assert any("UTC" in p for p in check_bars(naive))
    ints = bars.with_columns(pl.col("volume").cast(pl.Int64))
    assert any("'volume'" in p and "Float64" in p for p in check_bars(ints))
    unsorted = pl.concat([bars[2:], bars[:2]])
    problems = check_bars(unsorted)
    assert any("not sorted" in p and "row 3" in p for p in problems)
    dup = pl.concat([bars[:3], bars[2:]])
    assert any("not unique" in p and "row 3" in p for p in check_bars(dup))
    half = bars.with_columns(pl.col("close").alias("bid_close"))
    assert any("bid columns" in p for p in check_bars(half))
    bad_flags = bars.with_columns(pl.lit(1, dtype=pl.Int64).alias("flags"))
    assert any("flags" in p for p in check_bars(bad_flags))


def test_ensure_bars_raises_with_source():
    with pytest.raises(BarsSchemaError, match=r"x\.csv: not canonical bars"):
        ensure_bars(make_bars().drop("open"), source="x.csv")


def test_check_ticks():
    ticks = pl.DataFrame(
        {
            "ts": [dt.datetime(2024, 1, 2, tzinfo=dt.UTC)] * 2,
            "bid": [1.1, 1.1],
            "ask": [1.1001, 1.1001],
            "bid_volume": [1.0, 2.0],
            "ask_volume": [1.0, 2.0],
        },
        schema_overrides={"ts": TS_DTYPE},
    )
    assert check_ticks(ticks) == []  # equal times are allowed for ticks
    assert check_ticks(ticks.drop("ask"))


def test_infer_timeframe_uses_the_mode():
    bars = make_bars(10)
    # a weekend-like gap does not change the answer
    gapped = pl.concat([bars[:5], bars[5:].with_columns(pl.col("ts") + dt.timedelta(hours=48))])
    assert infer_timeframe(gapped) == dt.timedelta(hours=1)
    assert infer_timeframe(bars[:1]) is None


def test_flags_are_distinct_bits():
    values = [int(f) for f in Flag]
    assert len(set(values)) == len(values)
    assert all(v & (v - 1) == 0 for v in values)
