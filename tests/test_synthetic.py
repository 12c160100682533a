"""Synthetic data of real shape (aiopt_lib.data.synthetic) and the .bi5 tick encoder it uses:
FX closures as the cleaning stage expects them, the sample's volatility, real datafeed files."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from aiopt_lib.core.bars import check_bars
from aiopt_lib.core.errors import DataError
from aiopt_lib.data import dukascopy
from aiopt_lib.data.cleaning import clean_bars
from aiopt_lib.data.sources import load_bars
from aiopt_lib.data.synthetic import (
    minute_volatility,
    open_hours,
    synthetic_bar_chunks,
    synthetic_bars,
    write_tick_mirror,
)

UTC = dt.UTC


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _is_open(when: dt.datetime) -> bool:
    return open_hours(when, when + dt.timedelta(hours=1)).len() == 1


@pytest.mark.parametrize(
    ("last_open", "first_closed", "reopen"),
    [
        # winter (EST): the weekend is Friday 22:00 to Sunday 22:00 UTC
        (_utc(2017, 1, 13, 21), _utc(2017, 1, 13, 22), _utc(2017, 1, 15, 22)),
        # summer (EDT): an hour earlier in UTC, 17:00 New York all year
        (_utc(2017, 7, 14, 20), _utc(2017, 7, 14, 21), _utc(2017, 7, 16, 21)),
        # Christmas: Dec 24 12:00 to Dec 25 17:00 New York (a Monday in 2018)
        (_utc(2018, 12, 24, 16), _utc(2018, 12, 24, 17), _utc(2018, 12, 25, 22)),
        # New Year: Dec 31 12:00 to Jan 1 17:00 New York
        (_utc(2018, 12, 31, 16), _utc(2018, 12, 31, 17), _utc(2019, 1, 1, 22)),
    ],
)
def test_the_market_closes_as_fx_does(
    last_open: dt.datetime, first_closed: dt.datetime, reopen: dt.datetime
) -> None:
    assert _is_open(last_open)
    assert not _is_open(first_closed)
    assert not _is_open(reopen - dt.timedelta(hours=1))
    assert _is_open(reopen)


def test_bars_have_the_samples_volatility_and_only_expected_gaps() -> None:
    bars = synthetic_bars(60_000, start="2017-12-20", seed=1)  # over Christmas and New Year
    assert check_bars(bars) == []
    assert bars.height == 60_000
    returns = bars.select(pl.col("close").log().diff()).to_series().drop_nulls()
    assert returns.std() == pytest.approx(minute_volatility(), rel=0.05)
    assert 5e-5 < minute_volatility() < 5e-4  # EUR/USD: about a pip a minute
    _, report = clean_bars(bars.select("ts", "open", "high", "low", "close", "volume"))
    gaps = report.issues.filter(pl.col("kind") == "gap")
    assert gaps.height > 0
    assert not gaps.get_column("detail").str.starts_with("unexpected").any()
    assert report.summary()["ohlc_inconsistent"] == 0 and report.summary()["spike"] == 0
    assert (bars.get_column("ask_low") > bars.get_column("bid_low")).all()


def test_bars_are_seeded_and_chunked_by_month() -> None:
    chunks = list(synthetic_bar_chunks(30_000, start="2017-01-25", seed=4))
    months = [c.get_column("ts").dt.month().unique().to_list() for c in chunks]
    assert months == [[1], [2]]
    assert_frame_equal(pl.concat(chunks), synthetic_bars(30_000, start="2017-01-25", seed=4))
    assert not synthetic_bars(100, seed=5).equals(synthetic_bars(100, seed=6))


def test_tick_mirror_is_a_real_datafeed_mirror(tmp_path: Path) -> None:
    mirror = write_tick_mirror(tmp_path, ticks=30_000, start="2017-01-06", end="2017-01-10", seed=2)
    assert mirror.folder == tmp_path / "EURUSD"
    files = sorted(mirror.folder.rglob("*.bi5"))
    assert len(files) == mirror.files == 4 * 24  # every hour, 0-byte when closed
    assert mirror.empty == 48  # Friday 22:00 to Sunday 22:00 UTC in January
    assert (tmp_path / "EURUSD/2017/00/07/12h_ticks.bi5").stat().st_size == 0
    ticks = pl.concat([dukascopy.read_file(p) for p in files])  # the real decoder
    assert ticks.height == mirror.ticks == 30_000
    assert (ticks.get_column("ask") > ticks.get_column("bid")).all()
    # busier in the London/New York overlap than in the Asian night
    per_hour = ticks.group_by(pl.col("ts").dt.hour()).len()
    count = dict(per_hour.iter_rows())
    assert count[13] > count[3]
    bars = load_bars(
        tmp_path, symbol="EURUSD", start="2017-01-06", end="2017-01-10", from_ticks=True
    )
    assert bars.height > 0


def test_encode_ticks_inverts_decode_on_real_files(dukascopy_dir: Path) -> None:
    for path in sorted((dukascopy_dir / "EURUSD/2019/01/04").glob("1*h_ticks.bi5")):
        info = dukascopy.parse_datafeed_path(path)
        ticks = dukascopy.read_file(path)
        body = dukascopy.encode_ticks(ticks, info.start, point_value=100_000, preset=0)
        decoded = dukascopy.decode_ticks(body, info.start, point_value=100_000)
        assert_frame_equal(decoded, ticks)
    assert dukascopy.encode_ticks(ticks.head(0), info.start, point_value=100_000) == b""


def test_encode_ticks_refuses_ticks_outside_the_hour(dukascopy_dir: Path) -> None:
    ticks = dukascopy.read_file(dukascopy_dir / "EURUSD/2019/01/04/10h_ticks.bi5")
    with pytest.raises(DataError, match=r"row 0, field 'ts'.*outside the hour"):
        dukascopy.encode_ticks(ticks, _utc(2019, 2, 4, 11), point_value=100_000)
    huge = ticks.with_columns(pl.lit(math.inf).alias("ask"))
    with pytest.raises(DataError, match=r"field 'ask'.*32-bit"):
        dukascopy.encode_ticks(huge, _utc(2019, 2, 4, 10), point_value=100_000)


def test_writers_stream_into_a_dataset_and_refuse_impossible_requests(tmp_path: Path) -> None:
    from aiopt_lib.data import store
    from aiopt_lib.data.synthetic import write_synthetic_bars

    paths = write_synthetic_bars(tmp_path / "ds", "EURUSD", 30_000, start="2017-01-25", seed=4)
    assert [p.name for p in paths] == ["part-2017-01.parquet", "part-2017-02.parquet"]
    assert_frame_equal(
        store.read_bars(tmp_path / "ds"), synthetic_bars(30_000, start="2017-01-25", seed=4)
    )
    assert synthetic_bars(0, both=False).columns[-1] == "spread"
    with pytest.raises(ValueError, match="n_bars must be >= 0"):
        list(synthetic_bar_chunks(-1))
    with pytest.raises(ValueError, match="no open hour"):
        write_tick_mirror(tmp_path / "m", ticks=10, start="2017-01-07", end="2017-01-08")
    with pytest.raises(ValueError, match="ticks must be >= 0"):
        write_tick_mirror(tmp_path / "m", ticks=-1, start="2017-01-07", end="2017-01-08")
    sparse = write_tick_mirror(
        tmp_path / "m", ticks=5, start="2017-01-09T00:30", end="2017-01-09T03:00", empty_hours=False
    )
    assert sparse.ticks == 5 and sparse.empty == 0 and sparse.files <= 2  # hours 01 and 02 only
