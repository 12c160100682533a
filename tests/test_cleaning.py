"""Tests of aiopt_lib.data.cleaning: validation report, cleaning policies, gap classification."""

from __future__ import annotations

import datetime as dt
import json
import lzma
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.bars import TS_DTYPE, Flag, check_bars
from aiopt_lib.core.errors import BarsSchemaError, ConfigError, DataError
from aiopt_lib.data.cleaning import (
    ACTIONS,
    KINDS,
    CleaningPolicy,
    ValidationReport,
    classify_gaps,
    clean_bars,
    validate_bars,
)

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
# Monday 2019-03-04 00:00 UTC: a week without holidays, far from the DST change of 2019-03-10.
MONDAY = dt.datetime(2019, 3, 4, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Frames


def _walk(
    n: int, start: dt.datetime = MONDAY, *, seed: int = 7, sigma: float = 0.0008
) -> pl.DataFrame:
    """``n`` hourly bars of a random walk around 1.1 with a ``row`` column of CSV line numbers."""
    rng = np.random.default_rng(seed)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0.0, sigma, n)))
    open_ = np.concatenate([[1.1], close[:-1]])
    wicks = np.abs(rng.normal(0.0, sigma / 2, (2, n)))
    return pl.DataFrame(
        {
            "ts": [start + i * HOUR for i in range(n)],
            "open": open_,
            "high": np.maximum(open_, close) * (1 + wicks[0]),
            "low": np.minimum(open_, close) * (1 - wicks[1]),
            "close": close,
            "volume": rng.uniform(100.0, 1000.0, n),
            "row": np.arange(2, n + 2),
        },
        schema_overrides={"ts": TS_DTYPE, "row": pl.Int64},
    )


def _set(frame: pl.DataFrame, index: int, **values: float | None) -> pl.DataFrame:
    """Set fields of the row at ``index`` (position in the frame)."""
    at = pl.int_range(pl.len()) == index
    return frame.with_columns(
        [
            pl.when(at).then(pl.lit(v, dtype=pl.Float64)).otherwise(pl.col(k)).alias(k)
            for k, v in values.items()
        ]
    )


def _fx_hours(start: dt.datetime, end: dt.datetime, *, seed: int = 3) -> pl.DataFrame:
    """Hourly bars in [start, end) during FX trading hours only: no bar from Friday 17:00 to
    Sunday 17:00 New York time (the closure the cleaning expects), DST-aware."""
    n = int((end - start) / HOUR)
    frame = _walk(n, start, seed=seed)
    local = pl.col("ts").dt.convert_time_zone("America/New_York")
    weekday, hour = local.dt.weekday(), local.dt.hour()
    closed = ((weekday == 5) & (hour >= 17)) | (weekday == 6) | ((weekday == 7) & (hour < 17))
    return frame.filter(~closed)


def _drop_ts(frame: pl.DataFrame, *stamps: dt.datetime) -> pl.DataFrame:
    return frame.filter(~pl.col("ts").is_in(list(stamps)))


def _identity(report: ValidationReport) -> None:
    assert report.n_input == report.n_output + report.n_dropped - report.n_inserted


def _items(report: ValidationReport, kind: str) -> pl.DataFrame:
    return report.issues.filter(pl.col("kind") == kind)


@pytest.fixture(scope="module")
def eurusd_2017(eurusd_h1_csv: Path) -> pl.DataFrame:
    """The real 2017 hourly sample; ``row`` is the CSV line number (header = line 1)."""
    return pl.read_csv(eurusd_h1_csv).select(
        pl.col("Time")
        .str.strptime(pl.Datetime("us"), "%d.%m.%Y %H:%M:%S%.3f")
        .dt.replace_time_zone("UTC")
        .alias("ts"),
        *[
            pl.col(c).cast(pl.Float64).alias(c.lower())
            for c in ("Open", "High", "Low", "Close", "Volume")
        ],
        (pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias("row"),
    )


def _dukascopy_candles(path: Path, period_start: dt.datetime) -> pl.DataFrame:
    """Decode a Dukascopy candle file: 24-byte records >IIIIIf (seconds, open, close, low, high,
    volume), prices in points of 1e-5; ``row`` = record index."""
    raw = lzma.decompress(path.read_bytes(), format=lzma.FORMAT_ALONE)
    rec = np.frombuffer(
        raw,
        dtype=np.dtype(
            [("t", ">u4"), ("o", ">u4"), ("c", ">u4"), ("l", ">u4"), ("h", ">u4"), ("v", ">f4")]
        ),
    )
    return pl.DataFrame(
        {
            "ts": pl.Series(rec["t"].astype(np.int64)),
            "open": rec["o"] / 1e5,
            "high": rec["h"] / 1e5,
            "low": rec["l"] / 1e5,
            "close": rec["c"] / 1e5,
            "volume": rec["v"].astype(np.float64),
            "row": np.arange(len(rec), dtype=np.int64),
        }
    ).with_columns(
        (pl.lit(period_start) + pl.duration(seconds=pl.col("ts"))).cast(TS_DTYPE).alias("ts")
    )


# ---------------------------------------------------------------------------------------------
# The real 2017 sample


def test_real_2017_sample_is_clean_with_only_expected_gaps(eurusd_2017: pl.DataFrame) -> None:
    report = validate_bars(eurusd_2017, source="EURUSD_1H_ASK_2017.csv", row_kind="line")
    assert report.is_clean
    assert report.timeframe == HOUR
    assert report.n_input == report.n_output == 6225
    # Every item is a gap: 51 weekends (Friday ~21:00/20:00 UTC to Sunday ~22:00/21:00 UTC) and the
    # Christmas closure of 2017-12-25 08:00-21:00 UTC; the sample starts after New Year's Day.
    assert set(report.issues.get_column("kind")) == {"gap"}
    assert set(report.issues.get_column("severity")) == {"info"}
    assert _items(report, "spike").height == 0
    gaps = classify_gaps(eurusd_2017)
    assert gaps.height == 52
    counts = dict(gaps.group_by("kind").len().iter_rows())
    assert counts == {"expected_weekend": 51, "expected_holiday": 1}
    holiday = gaps.filter(pl.col("kind") == "expected_holiday").row(0, named=True)
    assert holiday["gap_start"] == dt.datetime(2017, 12, 25, 7, tzinfo=UTC)
    assert holiday["gap_end"] == dt.datetime(2017, 12, 25, 22, tzinfo=UTC)
    assert holiday["missing_bars"] == 14
    # Weekends are 48 missing hours, except across the DST changes: 47 in March, 49 in November.
    by_start = {r["gap_start"].date(): r["missing_bars"] for r in gaps.iter_rows(named=True)}
    assert by_start[dt.date(2017, 3, 10)] == 47
    assert by_start[dt.date(2017, 11, 3)] == 49
    assert by_start[dt.date(2017, 6, 16)] == 48
    # The weekend before Christmas ends Sunday 18:00 New York (1 h late): still a weekend.
    assert by_start[dt.date(2017, 12, 22)] == 49
    # Gap items sit on the first bar after the gap, with its CSV line.
    item = report.issues.filter(pl.col("ts") == dt.datetime(2017, 12, 25, 22, tzinfo=UTC)).row(
        0, named=True
    )
    line = eurusd_2017.filter(pl.col("ts") == item["ts"]).get_column("row")[0]
    assert item["row"] == line
    assert item["detail"].startswith("expected_holiday: 14 missing 1h bar(s) (14h)")


def test_real_2017_sample_passes_cleaning_unchanged(eurusd_2017: pl.DataFrame) -> None:
    bars, report = clean_bars(eurusd_2017, source="sample")
    assert check_bars(bars) == []
    assert "row" not in bars.columns
    assert bars.get_column("flags").sum() == 0
    assert bars.drop("flags").equals(eurusd_2017.drop("row"))
    assert not report.has_repairs
    assert set(report.issues.get_column("action")) == {"kept"}
    _identity(report)


def test_injected_bad_ticks_in_real_sample_fire_and_are_flagged(eurusd_2017: pl.DataFrame) -> None:
    frame = eurusd_2017
    at_close = frame.with_row_index().filter(
        pl.col("ts") == dt.datetime(2017, 6, 14, 9, tzinfo=UTC)
    )
    at_low = frame.with_row_index().filter(pl.col("ts") == dt.datetime(2017, 8, 2, 3, tzinfo=UTC))
    i, j = int(at_close["index"][0]), int(at_low["index"][0])
    bad_close = float(at_close["close"][0]) * 1.01  # a 1 % bad tick at the close
    bad_low = float(at_low["low"][0]) * 0.99  # a 1 % bad tick in the low
    frame = _set(frame, i, close=bad_close, high=max(bad_close, float(at_close["high"][0])))
    frame = _set(frame, j, low=bad_low)
    report = validate_bars(frame, row_kind="line")
    spikes = _items(report, "spike")
    assert spikes.get_column("row").to_list() == [i + 2, j + 2]
    assert spikes.get_column("field").to_list() == ["close", "low"]
    assert "reverted at the next bar" in spikes["detail"][0]
    assert "below its open/close and the neighbouring lows" in spikes["detail"][1]
    assert not report.is_clean

    bars, cleaned = clean_bars(frame)
    flagged = bars.filter((pl.col("flags") & int(Flag.SPIKE)) > 0)
    assert flagged.get_column("ts").to_list() == [frame["ts"][i], frame["ts"][j]]
    assert flagged.get_column("close")[0] == bad_close  # "flag" keeps the prices
    assert set(_items(cleaned, "spike").get_column("action")) == {"flagged"}


def test_spike_interpolate_and_drop(eurusd_2017: pl.DataFrame) -> None:
    stamp = dt.datetime(2017, 6, 14, 10, tzinfo=UTC)  # a Wednesday
    i = int(eurusd_2017.with_row_index().filter(pl.col("ts") == stamp)["index"][0])
    original = eurusd_2017.row(i, named=True)
    assert original["ts"].weekday() == 2
    bad = original["close"] * 1.02
    frame = _set(eurusd_2017, i, close=bad, high=bad)
    # A vendor that opens each bar at the previous close copies the bad tick into the next open.
    frame = _set(frame, i + 1, open=bad, high=bad)
    bars, report = clean_bars(frame, CleaningPolicy(spikes="interpolate"))
    repaired = bars.row(i, named=True)
    prev_close, next_close = bars["close"][i - 1], bars["close"][i + 1]
    assert repaired["close"] == pytest.approx((prev_close + next_close) / 2)
    assert repaired["high"] == pytest.approx(max(repaired["open"], repaired["close"]))
    assert repaired["flags"] & Flag.SPIKE_REPAIRED
    following = bars.row(i + 1, named=True)
    assert following["open"] == pytest.approx(repaired["close"])
    assert following["high"] == pytest.approx(max(following["open"], following["close"]))
    assert following["flags"] & Flag.SPIKE_REPAIRED
    assert _items(report, "spike").get_column("action").to_list() == ["interpolated"]
    assert validate_bars(bars.drop("flags")).is_clean

    dropped, report = clean_bars(frame, CleaningPolicy(spikes="drop"))
    assert dropped.height == frame.height - 1
    assert report.n_dropped == 1
    assert original["ts"] not in dropped.get_column("ts").to_list()
    # The dropped bar leaves a one-bar mid-week gap, reported on the output.
    gap = _items(report, "gap").filter(pl.col("severity") == "warning")
    assert gap.height == 1
    assert gap["detail"][0].startswith("unexpected: 1 missing 1h bar(s)")
    _identity(report)


def test_persistent_jump_fires_and_says_it_did_not_revert() -> None:
    frame = _walk(80)
    shifted = pl.int_range(pl.len()) >= 40
    frame = frame.with_columns(
        [
            pl.when(shifted).then(pl.col(c) * 1.5).otherwise(pl.col(c))
            for c in ("high", "low", "close")
        ]
    )
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) > 40).then(pl.col("open") * 1.5).otherwise(pl.col("open"))
    )
    frame = frame.with_columns(
        pl.max_horizontal("high", "open", "close").alias("high"),
        pl.min_horizontal("low", "open", "close").alias("low"),
    )
    spikes = _items(validate_bars(frame), "spike")
    assert spikes.get_column("row").to_list() == [42]
    assert "did not revert at the next bar" in spikes["detail"][0]
    assert spikes["field"][0] == "close"


def test_spike_test_on_short_data_but_not_on_too_short_or_flat_data() -> None:
    frame = _walk(15)
    bad = float(frame["close"][7]) * 1.05  # a 5 % bad tick, reverted at the next bar
    spiky = _set(frame, 7, close=bad, high=bad)
    spikes = _items(validate_bars(spiky, row_kind="line"), "spike")
    assert spikes.get_column("row").to_list() == [9]  # 15 bars (14 returns) are enough
    assert "reverted at the next bar" in spikes["detail"][0]
    assert _items(validate_bars(spiky), "ohlc_inconsistent").height == 0
    bars, _ = clean_bars(spiky)
    assert bars.filter((pl.col("flags") & int(Flag.SPIKE)) > 0).height == 1
    assert validate_bars(frame).is_clean  # the good file: nothing
    # 10 bars (9 returns) give no robust scale; flat prices give a zero MAD
    short = _walk(10)
    short = _set(short, 5, close=float(short["close"][5]) * 1.05, high=2.0)
    assert _items(validate_bars(short), "spike").height == 0
    flat = _walk(30).with_columns(pl.lit(1.1).alias(c) for c in ("open", "high", "low", "close"))
    flat = _set(flat, 12, close=1.2, high=1.2)
    assert _items(validate_bars(flat), "spike").height == 0


# ---------------------------------------------------------------------------------------------
# Implausible prices


@pytest.mark.parametrize(
    ("field", "factor", "words"),
    [
        ("close", 10.0, "times above"),  # a 10x spike in a short file
        ("close", 8.99e-78 / 1.1, "times below"),  # one flipped bit (a Parquet close of 8.99e-78)
        ("low", 0.1, "times below"),  # a decimal point one place off
        ("open", 100.0, "times above"),  # a price in pips
    ],
)
def test_implausible_prices_are_errors_naming_row_and_field(
    field: str, factor: float, words: str
) -> None:
    frame = _walk(15)
    value = float(frame[field][7]) * factor
    bad = _set(frame, 7, **{field: value})
    with pytest.raises(DataError) as info:
        clean_bars(bad, source="short.csv", row_kind="line")
    message = str(info.value)
    assert message.startswith(f"short.csv, line 9, field '{field}': implausible price: "), message
    assert words in message and "factor of 8" in message
    assert "\n" not in message
    assert (info.value.row, info.value.field) == (9, field)
    # validation lists it as an error (and does not also call it an OHLC problem or a spike)
    report = validate_bars(bad, source="short.csv", row_kind="line")
    assert report.issues.get_column("kind").to_list() == ["implausible_price"]
    assert report.issues.row(0, named=True)["severity"] == "error"
    assert not report.is_clean
    # "drop" drops the row, counted, and repairs nothing else
    bars, dropped = clean_bars(bad, CleaningPolicy(implausible_prices="drop"))
    assert bars.height == 14 and dropped.n_dropped == 1
    assert (bars.get_column("flags") & int(Flag.OHLC_FIXED)).sum() == 0
    _identity(dropped)
    # the good file is untouched
    good, report = clean_bars(frame)
    assert good.drop("flags").equals(frame.drop("row")) and not report.has_repairs


def test_price_ratio_limit_and_policy() -> None:
    frame = _walk(40)
    seven = _set(frame, 20, close=float(frame["close"][20]) * 7, high=float(frame["close"][20]) * 7)
    assert _items(validate_bars(seven), "implausible_price").height == 0  # below the limit of 8
    assert _items(validate_bars(seven), "spike").height == 1  # but a spike
    assert _items(validate_bars(seven, max_price_ratio=5), "implausible_price").height == 1
    with pytest.raises(DataError, match="limit is a factor of 5 either way"):
        clean_bars(seven, CleaningPolicy(max_price_ratio=5))
    _, report = clean_bars(seven)
    assert _items(report, "spike").get_column("action").to_list() == ["flagged"]
    for bad in (1, 0.5, float("inf"), "8"):
        with pytest.raises(ConfigError, match="max_price_ratio"):
            CleaningPolicy(max_price_ratio=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="implausible_prices"):
        CleaningPolicy(implausible_prices="keep")  # type: ignore[arg-type]


def test_a_history_that_really_moves_100x_is_plausible_but_a_10x_bar_in_it_is_not() -> None:
    # a currency losing 99 % over 6,000 hours (drift), not one bar off its neighbours
    frame = _walk(6000)
    drift = np.exp(np.linspace(0.0, np.log(100.0), frame.height))
    frame = frame.with_columns(
        pl.col(c) * pl.Series(drift) for c in ("open", "high", "low", "close")
    )
    assert float(frame["close"][-1]) / float(frame["close"].median()) > 8  # the old global rule
    assert _items(validate_bars(frame), "implausible_price").height == 0
    bars, _ = clean_bars(frame)
    assert bars.height == frame.height
    late = 5000
    bad = _set(frame, late, close=float(frame["close"][late]) * 10)
    with pytest.raises(DataError, match=f"row {late + 2}, field .close.: implausible price"):
        clean_bars(bad, row_kind="row", source="long.parquet")


def test_long_gaps_are_listed_in_the_report() -> None:
    frame = _fx_hours(MONDAY, MONDAY + dt.timedelta(days=35))
    holed = frame.filter(
        (pl.col("ts") < MONDAY + dt.timedelta(days=8))
        | (pl.col("ts") >= MONDAY + dt.timedelta(days=23))
    )
    _, report = clean_bars(holed)
    long = report.long_gaps()
    assert long.height == 1
    assert long["duration"][0] >= dt.timedelta(days=14)
    assert validate_bars(holed).long_gaps().height == 1
    assert clean_bars(frame)[1].long_gaps().height == 0  # weekends are not holes


# ---------------------------------------------------------------------------------------------
# Order and duplicates


def test_out_of_order_rows_are_found_and_sorted() -> None:
    frame = _walk(12)
    moved = pl.concat([frame.slice(0, 3), frame.slice(5, 4), frame.slice(3, 2), frame.slice(9, 3)])
    report = validate_bars(moved, row_kind="line")
    items = _items(report, "out_of_order")
    assert items.get_column("row").to_list() == [5, 6]
    assert items.get_column("ts").to_list() == frame.get_column("ts").slice(3, 2).to_list()
    assert "is earlier than" in items["detail"][0]
    assert items["severity"][0] == "warning"

    bars, cleaned = clean_bars(moved)
    assert bars.get_column("ts").to_list() == frame.get_column("ts").to_list()
    reordered = bars.filter((pl.col("flags") & int(Flag.REORDERED)) > 0)
    assert reordered.get_column("ts").to_list() == frame.get_column("ts").slice(3, 2).to_list()
    assert set(_items(cleaned, "out_of_order").get_column("action")) == {"reordered"}
    assert cleaned.has_repairs
    assert cleaned.n_output == cleaned.n_input == 12


def test_duplicates_identical_and_conflicting_are_reported() -> None:
    frame = _walk(10)
    identical = frame.slice(2, 1).with_columns(pl.lit(20, dtype=pl.Int64).alias("row"))
    conflicting = _set(frame.slice(5, 1), 0, close=1.2345).with_columns(
        pl.lit(21, dtype=pl.Int64).alias("row")
    )
    raw = pl.concat([frame, identical, conflicting])
    report = validate_bars(raw, row_kind="line")
    items = _items(report, "duplicate")
    assert items.get_column("row").to_list() == [20, 21]
    assert items.get_column("severity").to_list() == ["warning", "error"]
    assert items["detail"][0] == "identical copy of line 4 (first)"
    assert items["field"][1] == "close"
    assert "close 1.2345 vs" in items["detail"][1]
    assert "line 7" in items["detail"][1]
    # The extra copies also come after later rows: out of order.
    assert _items(report, "out_of_order").get_column("row").to_list() == [20, 21]


def test_duplicate_policies() -> None:
    frame = _walk(10)
    identical = frame.slice(2, 1).with_columns(pl.lit(20, dtype=pl.Int64).alias("row"))
    conflicting = _set(frame.slice(5, 1), 0, close=1.2345).with_columns(
        pl.lit(21, dtype=pl.Int64).alias("row")
    )
    raw = pl.concat([frame, identical, conflicting])
    at_dup = pl.col("ts") == frame["ts"][5]

    bars, report = clean_bars(raw, row_kind="line")  # "last"
    assert bars.height == 10
    assert bars.filter(at_dup)["close"][0] == 1.2345
    assert bars.filter(at_dup)["flags"][0] & Flag.DUPLICATE_RESOLVED
    assert bars.filter(pl.col("ts") == frame["ts"][2])["flags"][0] & Flag.DUPLICATE_RESOLVED
    dropped = _items(report, "duplicate")
    assert dropped.get_column("row").to_list() == [20, 7]  # identical: the later copy goes
    assert set(dropped.get_column("action")) == {"dropped"}
    assert report.n_dropped == 2
    _identity(report)

    bars, report = clean_bars(raw, CleaningPolicy(duplicates="first"), row_kind="line")
    assert bars.filter(at_dup)["close"][0] == frame["close"][5]
    assert _items(report, "duplicate").get_column("row").to_list() == [20, 21]

    with pytest.raises(DataError, match=r"line 21 and line 7.*close") as caught:
        clean_bars(raw, CleaningPolicy(duplicates="error"), source="x.csv", row_kind="line")
    assert caught.value.file == "x.csv"
    assert caught.value.field == "close"
    # Identical copies alone are not an error under the "error" policy.
    bars, report = clean_bars(pl.concat([frame, identical]), CleaningPolicy(duplicates="error"))
    assert bars.height == 10


def test_a_valid_copy_wins_over_a_bad_one() -> None:
    frame = _walk(10)
    bad_copy = _set(frame.slice(4, 1), 0, close=float("nan")).with_columns(
        pl.lit(30, dtype=pl.Int64).alias("row")
    )
    bars, report = clean_bars(pl.concat([frame, bad_copy]), CleaningPolicy(duplicates="error"))
    assert bars.filter(pl.col("ts") == frame["ts"][4])["close"][0] == frame["close"][4]
    item = _items(report, "duplicate").row(0, named=True)
    assert item["row"] == 30
    assert item["detail"].startswith("copy with bad values of row 6 (kept)")
    assert _items(report, "bad_price").height == 0


# ---------------------------------------------------------------------------------------------
# Bad prices and OHLC


def _bad_frame() -> pl.DataFrame:
    frame = _walk(12)
    frame = _set(frame, 3, close=float("nan"))
    frame = _set(frame, 5, open=None)
    frame = _set(frame, 7, low=-1.0)
    return _set(frame, 9, high=0.0, volume=-5.0)


def test_bad_prices_are_found_with_their_field() -> None:
    report = validate_bars(_bad_frame(), row_kind="line")
    items = _items(report, "bad_price")
    assert items.get_column("row").to_list() == [5, 7, 9, 11]
    assert items.get_column("field").to_list() == ["close", "open", "low", None]
    assert items.get_column("detail").to_list() == [
        "close is NaN",
        "open is missing",
        "low is not positive (-1.0)",
        "high is not positive (0.0); volume is negative (-5.0)",
    ]
    assert set(items.get_column("severity")) == {"error"}
    # Rows with bad prices are not also reported as OHLC inconsistent.
    assert _items(report, "ohlc_inconsistent").height == 0


def test_bad_price_policies() -> None:
    frame = _bad_frame()
    bars, report = clean_bars(frame)
    assert bars.height == 8
    assert report.n_dropped == 4
    assert set(_items(report, "bad_price").get_column("action")) == {"dropped"}
    # The dropped rows leave mid-week gaps, re-checked on the output.
    assert _items(report, "gap").get_column("severity").to_list() == ["warning"] * 4
    _identity(report)
    assert check_bars(bars) == []

    bars, report = clean_bars(frame, CleaningPolicy(bad_prices="interpolate"))
    assert bars.height == 12
    assert bars["close"][3] == pytest.approx((frame["close"][2] + frame["close"][4]) / 2)
    assert bars["open"][5] == pytest.approx((frame["open"][4] + frame["open"][6]) / 2)
    assert bars["volume"][9] == pytest.approx((frame["volume"][8] + frame["volume"][10]) / 2)
    repaired = bars.filter((pl.col("flags") & int(Flag.PRICE_REPAIRED)) > 0)
    assert repaired.height == 4
    assert set(_items(report, "bad_price").get_column("action")) == {"interpolated"}
    assert report.n_dropped == 0

    edge = _set(_walk(12), 0, close=float("nan"))
    bars, report = clean_bars(edge, CleaningPolicy(bad_prices="interpolate"))
    assert bars.height == 11
    item = _items(report, "bad_price").row(0, named=True)
    assert item["action"] == "dropped"
    assert item["detail"].endswith("no valid neighbour to interpolate from")

    with pytest.raises(DataError) as caught:
        clean_bars(frame, CleaningPolicy(bad_prices="error"), source="f.csv", row_kind="line")
    assert str(caught.value).startswith("f.csv, line 5, field 'close': bad price: close is NaN")


def _ohlc_frame() -> pl.DataFrame:
    frame = _walk(12)
    frame = _set(frame, 4, high=float(frame["close"][4]) - 0.001)  # high below the body
    frame = _set(frame, 6, low=float(frame["open"][6]) + 0.0005)  # low above the body
    return _set(frame, 8, high=1.0, low=1.3)  # high below low, and both outside the body


def test_ohlc_inconsistencies_are_found() -> None:
    report = validate_bars(_ohlc_frame(), row_kind="line")
    items = _items(report, "ohlc_inconsistent")
    assert items.get_column("row").to_list() == [6, 8, 10]
    assert items.get_column("field").to_list() == ["high", "low", None]
    assert "below low 1.3" in items["detail"][2]
    assert "low 1.3 is above min(open, close)" in items["detail"][2]


def test_ohlc_policies() -> None:
    frame = _ohlc_frame()
    bars, report = clean_bars(frame)
    fixed = bars.filter((pl.col("flags") & int(Flag.OHLC_FIXED)) > 0)
    assert fixed.height == 3
    assert (fixed["high"] >= np.maximum(fixed["open"], fixed["close"])).all()
    assert (fixed["low"] <= np.minimum(fixed["open"], fixed["close"])).all()
    assert bars["high"][8] == 1.3
    assert bars["low"][8] == 1.0
    assert set(_items(report, "ohlc_inconsistent").get_column("action")) == {"repaired"}
    # the repaired bar (open 1.2 on a walk around 1.1) stands out from 12 bars: a spike, nothing else
    assert set(validate_bars(bars.drop("flags")).problems.get_column("kind")) == {"spike"}

    bars, report = clean_bars(frame, CleaningPolicy(ohlc="drop"))
    assert bars.height == 9
    _identity(report)

    with pytest.raises(DataError, match="row 6, field 'high'"):
        clean_bars(frame, CleaningPolicy(ohlc="error"))


def test_bid_ask_columns_are_checked_too() -> None:
    frame = _walk(10)
    frame = frame.with_columns(
        *[pl.col(c).alias(f"bid_{c}") for c in ("open", "high", "low", "close")]
    )
    frame = _set(frame, 3, bid_high=float(frame["bid_close"][3]) - 0.01)
    item = _items(validate_bars(frame), "ohlc_inconsistent").row(0, named=True)
    assert item["field"] == "bid_high"
    bars, _ = clean_bars(frame)
    assert bars["bid_high"][3] == pytest.approx(
        max(bars.row(3, named=True)[f"bid_{c}"] for c in ("open", "high", "low", "close"))
    )


# ---------------------------------------------------------------------------------------------
# Flat candles


def test_flat_candles_inside_and_outside_closures() -> None:
    week = _fx_hours(dt.datetime(2019, 3, 4, tzinfo=UTC), dt.datetime(2019, 3, 12, tzinfo=UTC))
    saturday = dt.datetime(2019, 3, 9, 12, tzinfo=UTC)
    flat_weekend = pl.DataFrame(
        {
            "ts": [saturday],
            "open": [1.1],
            "high": [1.1],
            "low": [1.1],
            "close": [1.1],
            "volume": [0.0],
            "row": [999],
        },
        schema_overrides={"ts": TS_DTYPE},
    )
    wednesday = 2 * 24 + 10  # Wed 10:00 UTC
    frame = _set(week, wednesday, open=1.1, high=1.1, low=1.1, close=1.1, volume=0.0)
    frame = pl.concat([frame, flat_weekend]).sort("ts")
    report = validate_bars(frame)
    flats = _items(report, "flat_candle")
    assert flats.get_column("ts").to_list() == [week["ts"][wednesday], saturday]
    assert flats.get_column("severity").to_list() == ["warning", "info"]
    assert "outside the weekend and holiday closures" in flats["detail"][0]

    bars, cleaned = clean_bars(frame, CleaningPolicy(spikes="flag"))
    assert bars.height == frame.height - 2
    assert set(_items(cleaned, "flat_candle").get_column("action")) == {"dropped"}
    _identity(cleaned)
    kept, cleaned = clean_bars(frame, CleaningPolicy(flat_candles="keep"))
    assert kept.height == frame.height
    assert set(_items(cleaned, "flat_candle").get_column("action")) == {"kept"}


def test_dukascopy_flat_candles_are_expected_closures(dukascopy_dir: Path) -> None:
    root = dukascopy_dir / "EURUSD" / "2019"
    hourly = pl.concat(
        [
            _dukascopy_candles(
                root / "00" / "BID_candles_hour_1.bi5", dt.datetime(2019, 1, 1, tzinfo=UTC)
            ),
            _dukascopy_candles(
                root / "01" / "BID_candles_hour_1.bi5", dt.datetime(2019, 2, 1, tzinfo=UTC)
            ),
        ]
    )
    report = validate_bars(hourly)
    assert report.is_clean
    flats = _items(report, "flat_candle")
    # New Year's Day (22 hours) and eight weekends of 48 hours, all inside expected closures.
    assert flats.height == 22 + 8 * 48
    bars, cleaned = clean_bars(hourly)
    assert bars.height == hourly.height - flats.height
    assert cleaned.n_dropped == flats.height
    gaps = _items(cleaned, "gap")
    assert gaps.height == 8
    assert gaps.get_column("detail").str.starts_with("expected_weekend: 48 missing").all()

    daily = pl.concat(
        [
            _dukascopy_candles(
                dukascopy_dir / "EURUSD" / "2018" / "BID_candles_day_1.bi5",
                dt.datetime(2018, 1, 1, tzinfo=UTC),
            ),
            _dukascopy_candles(root / "BID_candles_day_1.bi5", dt.datetime(2019, 1, 1, tzinfo=UTC)),
        ]
    )
    bars, cleaned = clean_bars(daily)
    assert cleaned.is_clean
    assert _items(cleaned, "flat_candle").height == 104  # the Saturdays
    assert set(classify_gaps(bars).get_column("kind")) == {"expected_weekend"}


# ---------------------------------------------------------------------------------------------
# Gaps


def test_mid_week_gap_is_unexpected() -> None:
    frame = _walk(80)
    wednesday = [MONDAY + dt.timedelta(days=2, hours=h) for h in (10, 11, 12)]
    holed = _drop_ts(frame, *wednesday)
    report = validate_bars(holed, row_kind="line")
    assert not report.is_clean
    gap = _items(report, "gap").row(0, named=True)
    assert gap["severity"] == "warning"
    assert gap["ts"] == MONDAY + dt.timedelta(days=2, hours=13)
    assert gap["row"] == 2 * 24 + 13 + 2
    assert (
        gap["detail"]
        == "unexpected: 3 missing 1h bar(s) (3h) between 2019-03-06 09:00 and 2019-03-06 13:00"
    )
    gaps = classify_gaps(holed.drop("row"))
    assert gaps.rows() == [
        (
            MONDAY + dt.timedelta(days=2, hours=9),
            MONDAY + dt.timedelta(days=2, hours=13),
            3,
            dt.timedelta(hours=3),
            "unexpected",
        )
    ]


@pytest.mark.parametrize(
    ("start", "end", "gap_start", "gap_end", "missing"),
    [
        # 2019-03-10: DST starts on the Sunday; the market stops 21:00 UTC and reopens 21:00 UTC.
        (
            dt.datetime(2019, 3, 4),
            dt.datetime(2019, 3, 13),
            dt.datetime(2019, 3, 8, 21),
            dt.datetime(2019, 3, 10, 21),
            47,
        ),
        # 2019-11-03: DST ends on the Sunday; stops 21:00 UTC (17:00 EDT), reopens 22:00 UTC (17:00 EST).
        (
            dt.datetime(2019, 10, 28),
            dt.datetime(2019, 11, 6),
            dt.datetime(2019, 11, 1, 20),
            dt.datetime(2019, 11, 3, 22),
            49,
        ),
    ],
)
def test_weekends_across_dst_changes_are_expected(
    start: dt.datetime, end: dt.datetime, gap_start: dt.datetime, gap_end: dt.datetime, missing: int
) -> None:
    frame = _fx_hours(start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))
    gaps = classify_gaps(frame)
    assert gaps.rows() == [
        (
            gap_start.replace(tzinfo=UTC),
            gap_end.replace(tzinfo=UTC),
            missing,
            (missing * HOUR),
            "expected_weekend",
        )
    ]
    assert validate_bars(frame).is_clean


def test_weekend_window_follows_new_york_time() -> None:
    # The same UTC stop (last bar Friday 18:00 UTC) is 14:00-15:00 New York time in summer (within
    # the 2 h tolerance of the 17:00 close) but 13:00-14:00 in winter (too early: unexpected).
    def friday_stop(friday: dt.datetime) -> str:
        frame = _fx_hours(friday - dt.timedelta(days=4), friday + dt.timedelta(days=4))
        early = [friday + dt.timedelta(hours=h) for h in range(19, 24)]
        return classify_gaps(_drop_ts(frame, *early))["kind"][0]

    assert friday_stop(dt.datetime(2019, 7, 12, tzinfo=UTC)) == "expected_weekend"
    assert friday_stop(dt.datetime(2019, 1, 11, tzinfo=UTC)) == "unexpected"

    # A late Sunday reopening: one hour late is within tolerance, three hours is not.
    frame = _fx_hours(dt.datetime(2019, 1, 7, tzinfo=UTC), dt.datetime(2019, 1, 16, tzinfo=UTC))
    one_late = _drop_ts(frame, dt.datetime(2019, 1, 13, 22, tzinfo=UTC))
    three_late = _drop_ts(
        frame,
        *[dt.datetime(2019, 1, 13, h, tzinfo=UTC) for h in (22, 23)],
        dt.datetime(2019, 1, 14, 0, tzinfo=UTC),
    )
    assert classify_gaps(one_late)["kind"].to_list() == ["expected_weekend"]
    assert classify_gaps(three_late)["kind"].to_list() == ["unexpected"]
    # A tighter tolerance turns the one-hour-late reopening into an unexpected gap.
    assert classify_gaps(one_late, tolerance=dt.timedelta(0))["kind"].to_list() == ["unexpected"]


def test_christmas_and_new_year_closures() -> None:
    frame = _fx_hours(dt.datetime(2019, 12, 23, tzinfo=UTC), dt.datetime(2020, 1, 3, tzinfo=UTC))
    christmas = [
        dt.datetime(2019, 12, 24, 17, tzinfo=UTC) + k * HOUR for k in range(29)
    ]  # to Dec 25 21:00
    new_year = [dt.datetime(2019, 12, 31, 17, tzinfo=UTC) + k * HOUR for k in range(29)]
    boxing_day = [dt.datetime(2019, 12, 26, h, tzinfo=UTC) for h in (10, 11)]
    gaps = classify_gaps(_drop_ts(frame, *christmas, *new_year, *boxing_day))
    assert gaps.select("gap_start", "missing_bars", "kind").rows() == [
        (dt.datetime(2019, 12, 24, 16, tzinfo=UTC), 29, "expected_holiday"),
        (dt.datetime(2019, 12, 26, 9, tzinfo=UTC), 2, "unexpected"),
        (dt.datetime(2019, 12, 27, 21, tzinfo=UTC), 48, "expected_weekend"),
        (dt.datetime(2019, 12, 31, 16, tzinfo=UTC), 29, "expected_holiday"),
    ]


def test_holiday_joined_to_a_weekend() -> None:
    # Christmas Eve 2021 is a Friday: a stop at 12:00 New York that day runs into the weekend.
    frame = _fx_hours(dt.datetime(2021, 12, 20, tzinfo=UTC), dt.datetime(2021, 12, 29, tzinfo=UTC))
    early = [dt.datetime(2021, 12, 24, h, tzinfo=UTC) for h in range(17, 22)]
    monday = [dt.datetime(2021, 12, 26, h, tzinfo=UTC) for h in (22, 23)] + [
        dt.datetime(2021, 12, 27, h, tzinfo=UTC) for h in range(0, 9)
    ]
    assert classify_gaps(_drop_ts(frame, *early))["kind"].to_list() == ["expected_holiday"]
    # Staying shut into Monday morning is not an expected closure.
    assert classify_gaps(_drop_ts(frame, *early, *monday))["kind"].to_list() == ["unexpected"]


def test_daily_bars_missing_a_weekday_are_unexpected() -> None:
    days = [
        dt.datetime(2019, 3, d, tzinfo=UTC) for d in (4, 5, 6, 8, 11, 12)
    ]  # no Thu 7, no weekend
    frame = pl.DataFrame(
        {"ts": days, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.1, "volume": 1.0},
        schema_overrides={"ts": TS_DTYPE},
    )
    gaps = classify_gaps(frame, "1d")
    assert gaps.select("missing_bars", "kind").rows() == [
        (1, "unexpected"),
        (2, "expected_weekend"),
    ]


def test_gap_interpolation_limit_and_fill_methods() -> None:
    frame = _fx_hours(dt.datetime(2019, 3, 4, tzinfo=UTC), dt.datetime(2019, 3, 12, tzinfo=UTC))
    two = [dt.datetime(2019, 3, 5, h, tzinfo=UTC) for h in (10, 11)]
    five = [dt.datetime(2019, 3, 6, h, tzinfo=UTC) for h in range(10, 15)]
    holed = _drop_ts(frame, *two, *five)
    bars, report = clean_bars(holed, CleaningPolicy(gaps="interpolate", max_fill_bars=3))
    assert report.n_inserted == 2
    assert bars.height == holed.height + 2
    _identity(report)
    inserted = bars.filter((pl.col("flags") & int(Flag.INTERPOLATED)) > 0)
    assert inserted.get_column("ts").to_list() == two
    before = holed.filter(pl.col("ts") == dt.datetime(2019, 3, 5, 9, tzinfo=UTC)).row(0, named=True)
    after = holed.filter(pl.col("ts") == dt.datetime(2019, 3, 5, 12, tzinfo=UTC)).row(0, named=True)
    step = (after["open"] - before["close"]) / 3
    assert inserted["open"].to_list() == pytest.approx([before["close"], before["close"] + step])
    assert inserted["close"].to_list() == pytest.approx(
        [before["close"] + step, before["close"] + 2 * step]
    )
    assert inserted["high"].to_list() == pytest.approx(
        np.maximum(inserted["open"], inserted["close"]).to_list()
    )
    assert inserted["volume"].to_list() == [0.0, 0.0]
    gap_items = _items(report, "gap")
    assert gap_items.get_column("action").to_list() == ["interpolated", "kept", "kept"]
    assert gap_items["detail"][0].endswith("filled with linear bars")
    assert check_bars(bars) == []

    bars, report = clean_bars(
        holed, CleaningPolicy(gaps="interpolate", max_fill_bars=3, fill="ffill")
    )
    inserted = bars.filter((pl.col("flags") & int(Flag.INTERPOLATED)) > 0)
    for name in ("open", "high", "low", "close"):
        assert inserted[name].to_list() == [before["close"]] * 2

    # Weekends are never filled, however large the limit.
    bars, report = clean_bars(holed, CleaningPolicy(gaps="interpolate", max_fill_bars=1000))
    assert report.n_inserted == 2 + 5
    weekend = _items(report, "gap").filter(pl.col("severity") == "info")
    assert weekend.get_column("action").to_list() == ["kept"]


# ---------------------------------------------------------------------------------------------
# Everything at once, report API, errors


def _messy() -> pl.DataFrame:
    frame = _walk(100)
    frame = _set(frame, 20, close=float("nan"))
    frame = _set(frame, 30, high=float(frame["close"][30]) - 0.002)
    frame = _set(frame, 40, open=1.1, high=1.1, low=1.1, close=1.1, volume=0.0)
    spike = float(frame["close"][60]) * 1.03
    frame = _set(frame, 60, close=spike, high=spike)
    duplicate = _set(frame.slice(50, 1), 0, volume=1.0).with_columns(
        pl.lit(500, dtype=pl.Int64).alias("row")
    )
    frame = pl.concat([frame.slice(0, 70), duplicate, frame.slice(75, 25), frame.slice(70, 5)])
    return frame.filter(pl.col("row") != 90)


def test_nothing_vanishes_unreported() -> None:
    raw = _messy()
    for policy in (
        CleaningPolicy(),
        CleaningPolicy(duplicates="first", bad_prices="interpolate", ohlc="drop", spikes="drop"),
        CleaningPolicy(spikes="interpolate", flat_candles="keep", gaps="interpolate"),
    ):
        bars, report = clean_bars(raw, policy, source="messy.csv", row_kind="line")
        _identity(report)
        assert check_bars(bars) == []
        assert "row" not in bars.columns
        assert bars.schema["flags"] == pl.UInt32
        dropped = report.issues.filter(pl.col("action") == "dropped").get_column("row")
        assert dropped.n_unique() == dropped.len() == report.n_dropped
        summary = report.summary()
        assert sum(summary[k] for k in KINDS) == report.issues.height
        assert summary["dropped"] == report.n_dropped
    bars, report = clean_bars(raw)
    found = {k: v for k, v in report.summary().items() if k in KINDS and v}
    assert found == {
        "duplicate": 1,
        "out_of_order": 6,  # the duplicate (line 500) and lines 72-76
        "bad_price": 1,
        "ohlc_inconsistent": 1,
        "flat_candle": 1,
        "spike": 1,
        "gap": 3,  # row 90 was missing; rows 20 and 40 were dropped
    }
    assert report.n_dropped == 3
    assert bars.height == raw.height - 3


def test_report_views() -> None:
    raw = _messy()
    _, report = clean_bars(raw, source="messy.csv", row_kind="line")
    summary = report.summary()
    assert set(summary) == set(KINDS) | set(ACTIONS)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n_dropped"] == report.n_dropped
    assert data["summary"] == summary
    assert len(data["issues"]) == report.issues.height
    assert data["issues"][0]["ts"].endswith("Z")
    text = report.to_text(max_items=4)
    assert text.splitlines()[0].startswith(
        "messy.csv: 100 rows in, 97 out, 3 dropped, timeframe 1h: "
    )
    assert "line 22" in text  # the NaN close, an error, is listed first
    assert "more item(s)" in text
    html_view = report._repr_html_()
    assert "<table" in html_view
    assert "messy.csv" in html_view
    assert report.problems.height == (report.issues["severity"] != "info").sum()
    assert report.has_repairs
    assert not report.is_clean
    assert "is_clean=False" in repr(report)
    empty = validate_bars(_walk(5).head(0))
    assert empty.is_clean
    assert empty.timeframe is None
    assert "clean" in empty.to_text()


def test_validation_never_modifies_and_uses_positions_without_row() -> None:
    raw = _messy().drop("row")
    before = raw.clone()
    report = validate_bars(raw)
    assert raw.equals(before)
    assert set(report.issues.get_column("action")) == {""}
    nan_row = raw.with_row_index().filter(pl.col("close").is_nan())["index"][0]
    assert _items(report, "bad_price")["row"][0] == nan_row


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(BarsSchemaError, match="missing column"):
        validate_bars(_walk(5).drop("volume"))
    with pytest.raises(BarsSchemaError, match="dtype"):
        clean_bars(_walk(5).with_columns(pl.col("ts").dt.replace_time_zone(None)))
    no_ts = _walk(5).with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col("ts")).alias("ts")
    )
    with pytest.raises(DataError, match=r"x\.csv, line 4, field 'ts'"):
        validate_bars(no_ts, source="x.csv", row_kind="line")
    with pytest.raises(ConfigError, match="spikes"):
        CleaningPolicy(spikes="fix")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_fill_bars"):
        CleaningPolicy(max_fill_bars=-1)


def test_input_flags_are_kept() -> None:
    frame = _walk(10).with_columns(pl.lit(int(Flag.INTERPOLATED), dtype=pl.UInt32).alias("flags"))
    frame = _set(frame, 3, high=float(frame["close"][3]) - 0.01)
    bars, _ = clean_bars(frame)
    assert bars["flags"][0] == Flag.INTERPOLATED
    assert bars["flags"][3] == Flag.INTERPOLATED | Flag.OHLC_FIXED
    assert not math.isnan(bars["high"][3])
