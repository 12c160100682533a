"""Synthetic EUR/USD-like data of real shape, for tests and benchmarks at scale (no download).

Real shape means: prices follow a random walk (log returns, normal) with the volatility of the
embedded sample (:func:`minute_volatility`: the 2017 EUR/USD hourly bars' return deviation,
scaled to a minute), on a 1e-5 price grid, and the market is closed when FX is: from Friday
17:00 to Sunday 17:00 New York time (21:00 or 22:00 UTC with US daylight saving) and over
Christmas and New Year (from the eve's 12:00 to the holiday's 17:00 New York time), the closures
:mod:`aiopt_lib.data.cleaning` expects, so cleaning the data finds only expected gaps.

* :func:`synthetic_bars` / :func:`synthetic_bar_chunks`: 1-minute bars (bid in the main
  columns, ``bid_*``, ``ask_*``, ``spread``), month by month; :func:`write_synthetic_bars` streams
  them into a bars dataset (:mod:`aiopt_lib.data.store`) without holding more than a month.
* :func:`write_tick_mirror`: ticks written as a Dukascopy datafeed mirror
  (``SYMBOL/YYYY/MM/DD/HHh_ticks.bi5``, real LZMA ``.bi5`` files, 0-byte files for closed hours
  as the datafeed serves them), so reading it back goes through the real decoder. Busier hours
  (London, New York) get more ticks.

Everything is seeded: the same arguments give the same data.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from aiopt_lib.core.bars import TS_DTYPE, canonical_column_order, empty_bars
from aiopt_lib.data.cleaning import (
    HOLIDAY_EVE_CLOSE_NY,
    HOLIDAY_EVES,
    HOLIDAY_REOPEN_NY,
    NEW_YORK,
    WEEKEND_CLOSE_NY,
    WEEKEND_REOPEN_NY,
)
from aiopt_lib.data.dukascopy import datafeed_file, encode_ticks, point_value
from aiopt_lib.data.sources import load_sample
from aiopt_lib.data.store import write_bars

__all__ = [
    "TickMirror",
    "minute_volatility",
    "open_hours",
    "synthetic_bar_chunks",
    "synthetic_bars",
    "write_synthetic_bars",
    "write_tick_mirror",
]

DEFAULT_START = dt.datetime(2000, 1, 3, tzinfo=dt.UTC)
_MINUTE_US = 60_000_000
_HOUR_US = 3_600_000_000
# Dukascopy tick volumes (millions), float32 in the files
_TICK_VOLUMES = np.array([0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.25, 3.0, 4.5], dtype=np.float32)


def _utc(value: dt.datetime | dt.date | str) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@functools.cache
def minute_volatility() -> float:
    """The deviation of 1-minute log returns that matches the embedded 2017 EUR/USD sample: the
    deviation of its hour-to-hour log returns (consecutive hours only) over sqrt(60), about 1.2e-4."""
    bars = load_sample()
    steps = bars.select(
        pl.col("close").log().diff().alias("r"), pl.col("ts").diff().alias("gap")
    ).filter(pl.col("gap") == dt.timedelta(hours=1))
    return float(steps.get_column("r").std()) / math.sqrt(60.0)


def _closed(hours: pl.Series) -> pl.Series:
    """True for the UTC hour starts when the FX market is closed (New York wall clock; the
    closures begin and end on whole hours, in UTC too)."""
    local = hours.dt.convert_time_zone(NEW_YORK)
    frame = pl.DataFrame(
        {
            "wd": local.dt.weekday(),
            "h": local.dt.hour(),
            "m": local.dt.month(),
            "d": local.dt.day(),
        }
    )
    weekend = (
        ((pl.col("wd") == 5) & (pl.col("h") >= WEEKEND_CLOSE_NY.hour))
        | (pl.col("wd") == 6)
        | ((pl.col("wd") == 7) & (pl.col("h") < WEEKEND_REOPEN_NY.hour))
    )
    closed = weekend
    for month, day in HOLIDAY_EVES:
        after = dt.date(2001, month, day) + dt.timedelta(days=1)
        closed = closed | (
            (pl.col("m") == month)
            & (pl.col("d") == day)
            & (pl.col("h") >= HOLIDAY_EVE_CLOSE_NY.hour)
        )
        closed = closed | (
            (pl.col("m") == after.month)
            & (pl.col("d") == after.day)
            & (pl.col("h") < HOLIDAY_REOPEN_NY.hour)
        )
    return frame.select(closed.alias("closed")).to_series()


def _hours(start: dt.datetime, end: dt.datetime) -> pl.Series:
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += dt.timedelta(hours=1)
    if first >= end:
        return pl.Series("ts", [], dtype=TS_DTYPE)
    return pl.datetime_range(
        first, end, "1h", closed="left", time_unit="us", time_zone="UTC", eager=True
    ).alias("ts")


def open_hours(start: dt.datetime | dt.date | str, end: dt.datetime | dt.date | str) -> pl.Series:
    """The UTC hour starts in ``[start, end)`` when spot FX trades (``Datetime("us", "UTC")``):
    every hour but Friday 17:00 to Sunday 17:00 New York time and the Christmas and New Year
    closures of :mod:`aiopt_lib.data.cleaning`."""
    hours = _hours(_utc(start), _utc(end))
    return hours.filter(~_closed(hours))


def _months(start: dt.datetime) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    month = start
    while True:
        following = dt.datetime(
            month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC
        )
        yield month, following
        month = following


def synthetic_bar_chunks(
    n_bars: int,
    *,
    start: dt.datetime | dt.date | str = DEFAULT_START,
    seed: int = 0,
    sigma: float | None = None,
    price: float = 1.1,
    both: bool = True,
) -> Iterator[pl.DataFrame]:
    """``n_bars`` 1-minute bars of the open market from ``start``, one calendar month a frame.

    Close-to-close log returns are normal with deviation ``sigma`` (default
    :func:`minute_volatility`); each bar opens at the previous close, its wicks reach half a
    ``sigma`` beyond the body on average; prices are on the 1e-5 grid. ``both`` adds the
    ``bid_*`` (= the main columns) and ``ask_*`` columns, ask = bid + a spread of 0.1 to 1.5
    pips per bar, also in ``spread``; without it ``spread`` is still there. ``volume`` is a
    positive number of lots, lognormal around 20.
    """
    if n_bars < 0:
        raise ValueError(f"n_bars must be >= 0, got {n_bars}")
    rng = np.random.default_rng(seed)
    sd = minute_volatility() if sigma is None else float(sigma)
    last = float(price)
    left = int(n_bars)
    begin = _utc(start)
    for month, following in _months(
        begin.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ):
        if left == 0:
            return
        hours = open_hours(max(month, begin), following)
        if hours.len() == 0:
            continue
        minutes = (
            hours.dt.epoch("us").to_numpy()[:, None] + np.arange(60, dtype=np.int64) * _MINUTE_US
        ).ravel()
        first_us = int(begin.timestamp()) * 1_000_000 + begin.microsecond
        minutes = minutes[minutes >= first_us][:left]
        n = minutes.size
        close = last * np.exp(np.cumsum(rng.normal(0.0, sd, n)))
        opens = np.concatenate(([last], close[:-1]))
        wicks = np.abs(rng.normal(0.0, sd * 0.5 * last, (2, n)))
        high = np.maximum(opens, close) + wicks[0]
        low = np.minimum(opens, close) - wicks[1]
        last = float(close[-1])
        spread = rng.integers(1, 16, n) / 1e5
        columns: dict[str, object] = {
            "ts": pl.Series("ts", minutes).cast(TS_DTYPE),
            "open": np.round(opens, 5),
            "high": np.round(high, 5),
            "low": np.round(low, 5),
            "close": np.round(close, 5),
            "volume": np.round(rng.lognormal(math.log(20.0), 0.5, n), 2),
        }
        if both:
            for name in ("open", "high", "low", "close"):
                columns[f"bid_{name}"] = columns[name]
                columns[f"ask_{name}"] = np.round(columns[name] + spread, 5)  # type: ignore[operator]
        columns["spread"] = spread
        left -= n
        yield canonical_column_order(pl.DataFrame(columns))


def synthetic_bars(
    n_bars: int,
    *,
    start: dt.datetime | dt.date | str = DEFAULT_START,
    seed: int = 0,
    sigma: float | None = None,
    price: float = 1.1,
    both: bool = True,
) -> pl.DataFrame:
    """:func:`synthetic_bar_chunks` in one frame (for tests and small sizes)."""
    chunks = list(
        synthetic_bar_chunks(n_bars, start=start, seed=seed, sigma=sigma, price=price, both=both)
    )
    if not chunks:
        empty = empty_bars(with_bid_ask=both)
        return empty if both else empty.with_columns(pl.lit(None, pl.Float64).alias("spread"))
    return pl.concat(chunks)


def write_synthetic_bars(
    root: str | Path,
    symbol: str,
    n_bars: int,
    *,
    start: dt.datetime | dt.date | str = DEFAULT_START,
    seed: int = 0,
    sigma: float | None = None,
    price: float = 1.1,
    both: bool = True,
) -> list[Path]:
    """Stream ``n_bars`` synthetic 1-minute bars (the options of :func:`synthetic_bar_chunks`)
    into the bars dataset at ``root`` (:func:`aiopt_lib.data.store.write_bars`), a month at a
    time, so that ten years of minutes never sit in memory; the part files written."""
    written: list[Path] = []
    chunks = synthetic_bar_chunks(
        n_bars, start=start, seed=seed, sigma=sigma, price=price, both=both
    )
    for chunk in chunks:
        side = "both" if both else "bid"
        written += write_bars(chunk, root, symbol, side=side, timeframe="1m", source="synthetic")
    return written


@dataclass(frozen=True)
class TickMirror:
    """What :func:`write_tick_mirror` wrote: the instrument folder, the hour files (``empty``
    of them 0-byte closed hours), the ticks and the bytes on disk."""

    folder: Path
    files: int
    empty: int
    ticks: int
    bytes: int


def write_tick_mirror(
    mirror: str | Path,
    symbol: str = "EURUSD",
    *,
    ticks: int,
    start: dt.datetime | dt.date | str,
    end: dt.datetime | dt.date | str,
    seed: int = 0,
    sigma: float | None = None,
    price: float = 1.1,
    preset: int = 0,
    empty_hours: bool = True,
) -> TickMirror:
    """Write ``ticks`` synthetic ticks over the open hours of ``[start, end)`` as a Dukascopy
    datafeed mirror under ``mirror`` (``SYMBOL/YYYY/MM/DD/HHh_ticks.bi5``, months 0-based).

    The ticks are spread over the open hours at random, busier during the London (07-16 UTC)
    and New York (12-21 UTC) sessions; within an hour their times are uniform, the bid follows
    the random walk of :func:`minute_volatility` (per tick, so that an hour has the sample's
    hourly deviation), the ask is 0.2 to 1.1 pips above, volumes are Dukascopy-like float32
    millions. ``empty_hours`` writes the closed hours as 0-byte files, as the datafeed serves
    them. One hour is in memory at a time. ``preset`` is the LZMA preset (0: fastest).
    Files are plain writes, not atomic: this makes test data, a fresh folder each time.
    """
    lo, hi = _utc(start), _utc(end)
    if ticks < 0:
        raise ValueError(f"ticks must be >= 0, got {ticks}")
    divisor = point_value(symbol)
    rng = np.random.default_rng(seed)
    sd = minute_volatility() if sigma is None else float(sigma)
    hours = _hours(lo, hi)
    closed = _closed(hours).to_numpy()
    hour_of_day = hours.dt.hour().to_numpy()[~closed]
    weights = (
        1.0
        + ((hour_of_day >= 7) & (hour_of_day < 16))
        + 0.8 * ((hour_of_day >= 12) & (hour_of_day < 21))
    )
    counts = np.zeros(hours.len(), dtype=np.int64)
    if weights.size:
        counts[~closed] = rng.multinomial(ticks, weights / weights.sum())
    elif ticks:
        raise ValueError(f"[{lo}, {hi}) has no open hour to put {ticks} ticks in")
    root = Path(mirror)
    last = float(price)
    files = empty = written_bytes = 0
    for hour, count in zip(hours.to_list(), counts.tolist(), strict=True):
        if count == 0 and not empty_hours:
            continue
        path = root / datafeed_file(symbol, "tick", hour).relative_path
        body = b""
        if count:
            ms = np.sort(rng.integers(0, 3_600_000, count))
            step = sd * math.sqrt(60.0 / count)
            bid_points = np.rint(last * np.exp(np.cumsum(rng.normal(0.0, step, count))) * divisor)
            last = float(bid_points[-1]) / divisor
            ask_points = bid_points + rng.integers(2, 12, count)
            frame = pl.DataFrame(
                {
                    "ts": pl.Series(int(hour.timestamp()) * 1_000_000 + ms * 1000).cast(TS_DTYPE),
                    "bid": bid_points / divisor,
                    "ask": ask_points / divisor,
                    "bid_volume": rng.choice(_TICK_VOLUMES, count).astype(np.float64),
                    "ask_volume": rng.choice(_TICK_VOLUMES, count).astype(np.float64),
                }
            )
            body = encode_ticks(frame, hour, point_value=divisor, preset=preset)
        else:
            empty += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        files += 1
        written_bytes += len(body)
    return TickMirror(
        folder=root / symbol.upper(),
        files=files,
        empty=empty,
        ticks=int(counts.sum()),
        bytes=written_bytes,
    )
