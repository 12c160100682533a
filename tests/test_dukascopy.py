"""The Dukascopy decoder, checked on real datafeed files (tests/data/dukascopy, months 0-based).

The oracle tests show that the four kinds of files agree exactly with each other: bid ticks
aggregated per minute are the minute candles, those per hour the hourly candles, and the hourly
candles per day the daily ones.
"""

from __future__ import annotations

import datetime as dt
import lzma
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.bars import check_bars, check_ticks
from aiopt_lib.core.errors import DataError
from aiopt_lib.data import dukascopy as duka
from aiopt_lib.data.resample import resample_bars, ticks_to_bars

UTC = dt.UTC
OHLC = ["open", "high", "low", "close"]


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _tick_paths(root: Path) -> list[Path]:
    return [
        root / f"EURUSD/2019/01/{day:02d}/{hour:02d}h_ticks.bi5"
        for day in (4, 5)
        for hour in range(24)
    ]


@pytest.fixture(scope="module")
def ticks(dukascopy_dir: Path) -> pl.DataFrame:
    return pl.concat([duka.read_file(p) for p in _tick_paths(dukascopy_dir)])


@pytest.fixture(scope="module")
def minutes(dukascopy_dir: Path) -> pl.DataFrame:
    return pl.concat(
        [
            duka.read_file(dukascopy_dir / f"EURUSD/2019/01/{day:02d}/BID_candles_min_1.bi5")
            for day in (4, 5)
        ]
    )


@pytest.fixture(scope="module")
def hours(dukascopy_dir: Path) -> pl.DataFrame:
    return pl.concat(
        [
            duka.read_file(dukascopy_dir / f"EURUSD/2019/{m:02d}/BID_candles_hour_1.bi5")
            for m in (0, 1)
        ]
    )


@pytest.fixture(scope="module")
def days(dukascopy_dir: Path) -> pl.DataFrame:
    return pl.concat(
        [duka.read_file(dukascopy_dir / f"EURUSD/{y}/BID_candles_day_1.bi5") for y in (2018, 2019)]
    )


def _compress(raw: bytes) -> bytes:
    return lzma.compress(raw, format=lzma.FORMAT_ALONE)


def _tick_record(ms: int, ask: int, bid: int, ask_volume: float, bid_volume: float) -> bytes:
    return struct.pack(">IIIff", ms, ask, bid, ask_volume, bid_volume)


# ---------------------------------------------------------------------------------------------
# point values


def test_point_values_of_the_table() -> None:
    assert duka.point_value("EURUSD") == 100_000
    assert duka.point_value("eur/usd") == 100_000
    assert duka.point_value("USDJPY") == 1000
    assert duka.point_value("GBPJPY") == 1000
    assert duka.point_value("XAUUSD") == 1000
    assert duka.point_value("XAGUSD") == 1000
    jpy = [name for name in duka.POINT_VALUES if name.endswith("JPY")]
    assert len(jpy) >= 7
    assert all(duka.POINT_VALUES[name] == 1000 for name in jpy)


def test_unknown_instrument_asks_for_the_point_value() -> None:
    with pytest.raises(DataError, match=r"unknown instrument 'BTCUSD'.*point_value="):
        duka.point_value("BTCUSD")


def test_point_value_override_wins() -> None:
    assert duka.point_value("BTCUSD", 10) == 10
    assert duka.point_value("EURUSD", 1000) == 1000
    with pytest.raises(ValueError, match="positive integer"):
        duka.point_value("EURUSD", 0)


# ---------------------------------------------------------------------------------------------
# paths


@pytest.mark.parametrize(
    ("relative", "kind", "side", "start", "end"),
    [
        ("EURUSD/2019/01/04/00h_ticks.bi5", "tick", None, _utc(2019, 2, 4), _utc(2019, 2, 4, 1)),
        ("EURUSD/2019/00/31/23h_ticks.bi5", "tick", None, _utc(2019, 1, 31, 23), _utc(2019, 2, 1)),
        (
            "EURUSD/2019/01/05/BID_candles_min_1.bi5",
            "m1",
            "bid",
            _utc(2019, 2, 5),
            _utc(2019, 2, 6),
        ),
        ("EURUSD/2019/11/ASK_candles_hour_1.bi5", "h1", "ask", _utc(2019, 12, 1), _utc(2020, 1, 1)),
        ("EURUSD/2018/BID_candles_day_1.bi5", "d1", "bid", _utc(2018, 1, 1), _utc(2019, 1, 1)),
    ],
)
def test_parse_datafeed_path_and_its_inverse(
    relative: str, kind: str, side: str | None, start: dt.datetime, end: dt.datetime
) -> None:
    info = duka.parse_datafeed_path(Path("/some/cache") / relative)
    assert (info.symbol, info.kind, info.side, info.start, info.end) == (
        "EURUSD",
        kind,
        side,
        start,
        end,
    )
    assert info.relative_path == relative
    # the inverse: any instant inside the period names the same file
    inside = start + (end - start) / 2
    assert duka.datafeed_file("eurusd", kind, inside, side=side) == info  # type: ignore[arg-type]
    assert info.url("http://host/datafeed/") == f"http://host/datafeed/{relative}"
    assert info.url().startswith(duka.DEFAULT_BASE_URL + "/EURUSD/")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("EURUSD/2019/12/04/00h_ticks.bi5", "0-based"),
        ("EURUSD/2019/01/30/00h_ticks.bi5", "real date"),  # February 30th
        ("EURUSD/2019/01/04/24h_ticks.bi5", "outside 00..23"),
        ("EURUSD/2019/01/04/ticks.csv", "not a Dukascopy datafeed file name"),
        ("2019/BID_candles_day_1.bi5", "too short"),
        ("EURUSD/19/BID_candles_day_1.bi5", "4 digits"),
    ],
)
def test_parse_datafeed_path_rejects_bad_paths(path: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        duka.parse_datafeed_path(path)
    assert path in str(info.value)


def test_datafeed_file_needs_a_side_for_candles_only() -> None:
    with pytest.raises(ValueError, match="side"):
        duka.datafeed_file("EURUSD", "h1", _utc(2019, 2, 1))
    with pytest.raises(ValueError, match="both bid and ask"):
        duka.datafeed_file("EURUSD", "tick", _utc(2019, 2, 1), side="bid")


# ---------------------------------------------------------------------------------------------
# decoding real files


def test_first_tick_of_the_fixture(dukascopy_dir: Path) -> None:
    frame = duka.read_file(dukascopy_dir / "EURUSD/2019/01/04/00h_ticks.bi5")
    assert check_ticks(frame) == []
    first = frame.row(0, named=True)
    assert first == {
        "ts": _utc(2019, 2, 4, 0, 0, 0, 994_000),
        "bid": 1.14543,
        "ask": 1.14545,
        "bid_volume": 2.06,
        "ask_volume": 1.0,
    }
    assert frame["ts"].min() >= _utc(2019, 2, 4)
    assert frame["ts"].max() < _utc(2019, 2, 4, 1)


def test_two_days_of_ticks(ticks: pl.DataFrame) -> None:
    assert ticks.height == 266_219
    assert check_ticks(ticks) == []
    assert ticks["ts"].min().date() == dt.date(2019, 2, 4)
    assert ticks["ts"].max().date() == dt.date(2019, 2, 5)
    assert (ticks["ask"] >= ticks["bid"]).all()


def test_minute_candles_map_open_close_low_high(dukascopy_dir: Path) -> None:
    frame = duka.read_file(dukascopy_dir / "EURUSD/2019/01/04/BID_candles_min_1.bi5")
    assert check_bars(frame) == []
    assert frame.height == 1440
    # The file's first record is (0, 114543, 114569, 114542, 114570, 293.76): open, close, low, high.
    assert frame.row(0, named=True) == {
        "ts": _utc(2019, 2, 4),
        "open": 1.14543,
        "high": 1.1457,
        "low": 1.14542,
        "close": 1.14569,
        "volume": 293.76,
    }
    assert frame["ts"][-1] == _utc(2019, 2, 4, 23, 59)


def test_hourly_and_daily_candles_keep_flat_candles(
    hours: pl.DataFrame, days: pl.DataFrame
) -> None:
    assert hours.height == 744 + 672  # January and February 2019
    assert hours["ts"][0] == _utc(2019, 1, 1)
    assert hours["ts"][-1] == _utc(2019, 2, 28, 23)
    assert check_bars(hours) == []
    assert check_bars(days) == []
    first = hours.row(0, named=True)  # New Year's Day midnight: market closed
    assert first["volume"] == 0.0
    assert first["open"] == first["high"] == first["low"] == first["close"]
    flat = hours.filter(pl.col("volume") == 0)
    assert flat.height == 406
    assert days.height == 365 * 2
    assert days["ts"][0] == _utc(2018, 1, 1)
    assert days["ts"][-1] == _utc(2019, 12, 31)
    assert days.filter(pl.col("volume") == 0).height > 0


def test_read_file_symbol_and_point_value_overrides(dukascopy_dir: Path) -> None:
    path = dukascopy_dir / "EURUSD/2019/01/04/00h_ticks.bi5"
    as_jpy = duka.read_file(path, symbol="USDJPY")
    assert as_jpy["bid"][0] == pytest.approx(114.543)
    explicit = duka.read_file(path, point_value=10)
    assert explicit["bid"][0] == pytest.approx(11454.3)
    with pytest.raises(DataError, match="unknown instrument"):
        duka.read_file(path, symbol="BTCUSD")


# ---------------------------------------------------------------------------------------------
# the exact oracle


def test_oracle_bid_ticks_per_minute_are_the_minute_candles(
    ticks: pl.DataFrame, minutes: pl.DataFrame
) -> None:
    from_ticks = ticks_to_bars(ticks, "1m", price="bid")
    # Every one of the 2,880 minutes of Monday and Tuesday has ticks (no flat minute candles).
    assert minutes.height == from_ticks.height == 2880
    assert minutes.filter(pl.col("volume") == 0).height == 0
    assert from_ticks["ts"].equals(minutes["ts"])
    for column in OHLC:
        assert from_ticks[column].equals(minutes[column]), column
    # Volumes: the candle holds the float32 of the summed bid volumes; the float64 sum of the
    # ticks' decimals rounded to 6 places is the same decimal on every minute.
    assert from_ticks["volume"].round(6).equals(minutes["volume"])


def test_oracle_minute_candles_per_hour_are_the_hourly_candles(
    minutes: pl.DataFrame, hours: pl.DataFrame
) -> None:
    from_minutes = resample_bars(minutes, "1h")
    same_hours = hours.filter(pl.col("ts").is_in(from_minutes["ts"].implode()))
    assert from_minutes.height == same_hours.height == 48
    for column in OHLC:
        assert from_minutes[column].equals(same_hours[column]), column
    assert from_minutes["volume"].round(6).equals(same_hours["volume"])


def test_oracle_hourly_candles_per_day_are_the_daily_candles(
    hours: pl.DataFrame, days: pl.DataFrame
) -> None:
    """What the data does: Dukascopy builds a daily candle from the traded (non-flat) hourly
    candles only. Sundays hold 22 flat hours before the 22:00 open and New Year's Day 22; with
    the flat hours kept, those days' opens differ. A day whose 24 hours are all flat (the
    Saturdays) is itself a flat candle. So flat candles are dropped on both sides."""
    traded_hours = hours.filter(pl.col("volume") > 0)
    from_hours = resample_bars(traded_hours, "1d")
    daily = days.filter((pl.col("ts") >= _utc(2019, 1, 1)) & (pl.col("ts") < _utc(2019, 3, 1)))
    traded_days = daily.filter(pl.col("volume") > 0)
    assert from_hours.height == traded_days.height == 59 - 8
    assert from_hours["ts"].equals(traded_days["ts"])
    for column in OHLC:
        assert from_hours[column].equals(traded_days[column]), column
    # Daily volumes near 400,000 are float32 with a step of 1/32: the day's volume is the
    # float32 of the sum of its hours (off by up to 0.02 from the exact decimal sum).
    assert (from_hours["volume"].cast(pl.Float32) == traded_days["volume"].cast(pl.Float32)).all()
    assert (from_hours["volume"] - traded_days["volume"]).abs().max() < 0.03
    # The flat days are exactly the days whose 24 hours are all flat.
    flat_days = daily.filter(pl.col("volume") == 0)["ts"]
    all_flat = (
        hours.group_by(pl.col("ts").dt.truncate("1d"))
        .agg((pl.col("volume") == 0).all().alias("flat"))
        .filter("flat")
        .sort("ts")["ts"]
    )
    assert flat_days.equals(all_flat)
    assert flat_days.len() == 8
    # and the flat-kept aggregation would differ on the Sundays: the rule matters
    with_flat = resample_bars(hours, "1d").filter(pl.col("ts") == _utc(2019, 1, 6))
    assert with_flat["open"][0] != daily.filter(pl.col("ts") == _utc(2019, 1, 6))["open"][0]


# ---------------------------------------------------------------------------------------------
# LZMA streams, empty and broken files


def test_empty_file_gives_an_empty_frame_of_the_right_schema(dukascopy_dir: Path) -> None:
    data = (dukascopy_dir / "empty.bi5").read_bytes()
    assert data == b""
    ticks = duka.decode_ticks(data, _utc(2019, 2, 2, 10), point_value=100_000)
    assert ticks.height == 0
    assert check_ticks(ticks) == []
    bars = duka.decode_candles(data, _utc(2019, 2, 2), point_value=100_000)
    assert bars.height == 0
    assert check_bars(bars) == []


def test_concatenated_lzma_streams_decode_as_one_file(dukascopy_dir: Path) -> None:
    path = dukascopy_dir / "EURUSD/2019/01/04/13h_ticks.bi5"
    raw = lzma.decompress(path.read_bytes(), format=lzma.FORMAT_ALONE)
    cut = (len(raw) // 20 // 2) * 20
    two_streams = _compress(raw[:cut]) + _compress(raw[cut:])
    decoded = duka.decode_ticks(two_streams, _utc(2019, 2, 4, 13), point_value=100_000)
    assert decoded.equals(duka.read_file(path))
    assert decoded.height == len(raw) // 20


def test_truncated_records_name_the_file_and_record() -> None:
    records = b"".join(_tick_record(i * 100, 114545, 114543, 1.0, 1.0) for i in range(3))
    data = _compress(records + b"\x00" * 7)  # the 4th record breaks off after 7 bytes
    with pytest.raises(DataError) as info:
        duka.decode_ticks(data, _utc(2019, 2, 4), point_value=100_000, file="x/00h_ticks.bi5")
    assert str(info.value).startswith("x/00h_ticks.bi5, record 3: ")
    assert info.value.row == 3
    assert info.value.row_kind == "record"


def test_truncated_and_corrupt_lzma_name_the_file(dukascopy_dir: Path) -> None:
    path = dukascopy_dir / "EURUSD/2019/01/04/BID_candles_min_1.bi5"
    data = path.read_bytes()
    with pytest.raises(DataError, match="truncated") as info:
        duka.decode_candles(
            data[: len(data) // 2], _utc(2019, 2, 4), point_value=100_000, file=path
        )
    assert str(path) in str(info.value)
    corrupt = data[:13] + bytes(b ^ 0xFF for b in data[13:200]) + data[200:]
    with pytest.raises(DataError, match="corrupt LZMA") as info:
        duka.decode_candles(corrupt, _utc(2019, 2, 4), point_value=100_000, file=path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="corrupt LZMA"):
        duka.decode_candles(b"<html>Not here</html>", _utc(2019, 2, 4), point_value=100_000)


def test_trailing_garbage_after_a_stream_is_an_error(dukascopy_dir: Path) -> None:
    data = (dukascopy_dir / "EURUSD/2019/BID_candles_day_1.bi5").read_bytes()
    with pytest.raises(DataError, match=r"stream 2 at byte \d+"):
        duka.decode_candles(data + b"garbage!" * 4, _utc(2019, 1, 1), point_value=100_000)


def test_times_outside_the_period_or_out_of_order_are_errors() -> None:
    beyond = _compress(_tick_record(5, 1, 1, 1.0, 1.0) + _tick_record(3_600_000, 1, 1, 1.0, 1.0))
    with pytest.raises(DataError, match="beyond") as info:
        duka.decode_ticks(beyond, _utc(2019, 2, 4), point_value=100_000, file="f.bi5")
    assert (info.value.row, info.value.field) == (1, "ms")
    backwards = _compress(b"".join(_tick_record(ms, 1, 1, 1.0, 1.0) for ms in (5, 9, 7)))
    with pytest.raises(DataError, match="back in time") as info:
        duka.decode_ticks(backwards, _utc(2019, 2, 4), point_value=100_000)
    assert info.value.row == 2
    candle = struct.pack(">IIIIIf", 60, 1, 1, 1, 1, 1.0)
    with pytest.raises(DataError, match="repeats") as info:
        duka.decode_candles(_compress(candle * 2), _utc(2019, 2, 4), point_value=100_000)
    assert (info.value.row, info.value.field) == (1, "seconds")
    late = struct.pack(">IIIIIf", 86_400, 1, 1, 1, 1, 1.0)
    with pytest.raises(DataError, match="beyond"):
        duka.decode_candles(
            _compress(late), _utc(2019, 2, 4), point_value=100_000, period_end=_utc(2019, 2, 5)
        )


def test_decode_takes_naive_times_as_utc() -> None:
    data = _compress(_tick_record(1500, 15000, 14990, 0.5, 0.25))
    frame = duka.decode_ticks(data, dt.datetime(2020, 3, 1, 7), point_value=1000)
    assert frame.row(0) == (_utc(2020, 3, 1, 7, 0, 1, 500_000), 14.99, 15.0, 0.25, 0.5)


# ---------------------------------------------------------------------------------------------
# volume rounding


def test_volume_float32_noise_is_removed() -> None:
    noisy = np.float32(2.06)
    assert float(noisy) == 2.059999942779541
    out = duka.shortest_decimal_float32(
        np.array([noisy, 0.0, 1.0, 455444.66, 1e-7], dtype=np.float32)
    )
    assert out.dtype == np.float64
    assert out.tolist() == [2.06, 0.0, 1.0, 455444.66, 1e-7]
    special = duka.shortest_decimal_float32(np.array([np.nan, np.inf, -0.0], dtype=np.float32))
    assert np.isnan(special[0])
    assert special[1] == np.inf
    assert special[2] == 0.0


def test_volume_rounding_matches_the_shortest_repr_and_round_trips() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            (rng.integers(1, 10**6, 4000) / 100).astype(np.float32),  # 2-decimal volumes
            rng.lognormal(0, 6, 4000).astype(np.float32),  # any magnitude
            -rng.random(500).astype(np.float32),
            rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        ]
    )
    values = values[np.isfinite(values)]
    out = duka.shortest_decimal_float32(values)
    assert (out.astype(np.float32) == values).all()  # nothing changes as a float32
    expected = np.array([float(str(v)) for v in values])  # numpy's shortest repr, one by one
    assert np.array_equal(out, expected)
