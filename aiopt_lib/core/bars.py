"""The canonical bars and ticks schemas, timeframes and row flags.

Bars convention (used by every stage of aiopt)
-----------------------------------------------
A bars frame is a ``polars.DataFrame`` with

* ``ts``: ``Datetime("us", "UTC")``, the bar's **open** time. A 1-hour bar stamped 10:00 holds the
  prices from 10:00:00 (inclusive) to 11:00:00 (exclusive). This is how Dukascopy, TradingView and
  most FX data vendors stamp bars. A value computed from a bar is known at ``ts + timeframe``.
* ``open``, ``high``, ``low``, ``close``, ``volume``: ``Float64``.
* optional ``bid_open`` .. ``bid_close`` and ``ask_open`` .. ``ask_close`` (``Float64``) when both
  sides are known; the main ``open`` .. ``close`` then hold the side the frame was built for
  (bid by default).
* optional ``spread`` (``Float64``, price units, ask − bid): a representative spread of the bar; the
  reader that made the column documents how (mean over the ticks, spread at the open, or the
  MetaTrader per-bar spread).
* optional ``flags`` (``UInt32``): a bit set of :class:`Flag` marking rows a repair touched.

Rows are sorted by ``ts`` and ``ts`` is unique. :func:`check_bars` lists every violation;
:func:`ensure_bars` raises :class:`~aiopt_lib.core.errors.BarsSchemaError` naming the first ones.

Ticks are a frame with ``ts`` (same dtype, the quote's time), ``bid``, ``ask`` (``Float64``) and
``bid_volume``, ``ask_volume`` (``Float64``), sorted by ``ts`` (equal times allowed).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Any

import polars as pl

from aiopt_lib.core.errors import BarsSchemaError, ConfigError

__all__ = [
    "BAR_COLUMNS",
    "TICK_COLUMNS",
    "Flag",
    "check_bars",
    "check_ticks",
    "ensure_bars",
    "infer_timeframe",
    "parse_timeframe",
    "timeframe_label",
]

TS_DTYPE = pl.Datetime("us", "UTC")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
BAR_COLUMNS: tuple[str, ...] = ("ts", *PRICE_COLUMNS, "volume")
BID_COLUMNS: tuple[str, ...] = tuple(f"bid_{c}" for c in PRICE_COLUMNS)
ASK_COLUMNS: tuple[str, ...] = tuple(f"ask_{c}" for c in PRICE_COLUMNS)
OPTIONAL_FLOAT_COLUMNS: tuple[str, ...] = (*BID_COLUMNS, *ASK_COLUMNS, "spread")
TICK_COLUMNS: tuple[str, ...] = ("ts", "bid", "ask", "bid_volume", "ask_volume")


class Flag(enum.IntFlag):
    """Bits of the ``flags`` column: what a repair did to a row."""

    REORDERED = 1  # the row was out of time order in the source and was moved
    DUPLICATE_RESOLVED = 2  # the row's timestamp occurred more than once; this copy was kept
    OHLC_FIXED = 4  # high/low widened to contain open and close
    SPIKE = 8  # return or range is an outlier (robust z-score); kept as is
    SPIKE_REPAIRED = 16  # outlier prices replaced by interpolation
    INTERPOLATED = 32  # the row did not exist in the source; it fills a short gap
    PRICE_REPAIRED = 64  # a NaN or non-positive price was replaced by interpolation


# ---------------------------------------------------------------------------------------------
# Timeframes

_TIMEFRAME_UNITS = {
    "s": dt.timedelta(seconds=1),
    "m": dt.timedelta(minutes=1),
    "h": dt.timedelta(hours=1),
    "d": dt.timedelta(days=1),
    "w": dt.timedelta(weeks=1),
}
_ALIASES = {"min": "m", "t": "m", "hour": "h", "day": "d", "week": "w", "sec": "s"}


def parse_timeframe(timeframe: str | dt.timedelta) -> dt.timedelta:
    """Parse ``"1m"``, ``"m1"``, ``"15min"``, ``"H4"``, ``"1h"``, ``"d1"``, ``"1w"`` into a timedelta.

    Both the TradingView/pandas order (``15m``) and the MetaTrader order (``M15``) are accepted.
    Months are not fixed-length and are not supported.
    """
    if isinstance(timeframe, dt.timedelta):
        if timeframe <= dt.timedelta(0):
            raise ValueError(f"timeframe must be positive, got {timeframe}")
        return timeframe
    text = str(timeframe).strip().lower()
    match = re.fullmatch(r"(\d*)\s*([a-z]+)", text) or None
    number: str
    unit: str
    if match:
        number, unit = match.group(1), match.group(2)
    else:
        match = re.fullmatch(r"([a-z]+)\s*(\d+)", text)
        if not match:
            raise ValueError(
                f"cannot read timeframe {timeframe!r}: use forms like '1m', '15m', '1h', '4h', '1d', 'M15', 'H1'"
            )
        unit, number = match.group(1), match.group(2)
    unit = _ALIASES.get(unit, unit)
    if unit not in _TIMEFRAME_UNITS:
        raise ValueError(f"unknown timeframe unit in {timeframe!r} (use s, m, h, d or w)")
    count = int(number) if number else 1
    if count <= 0:
        raise ValueError(f"timeframe must be positive, got {timeframe!r}")
    return count * _TIMEFRAME_UNITS[unit]


def timeframe_label(timeframe: str | dt.timedelta) -> str:
    """The short label of a timeframe: ``timedelta(hours=4)`` → ``"4h"``; also polars' ``every``."""
    td = parse_timeframe(timeframe)
    seconds = int(td.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def infer_timeframe(frame: pl.DataFrame) -> dt.timedelta | None:
    """The most common spacing of ``ts`` (the bar length), or None with fewer than two rows."""
    if frame.height < 2:
        return None
    diffs = frame.get_column("ts").diff().drop_nulls()
    diffs = diffs.filter(diffs > dt.timedelta(0))
    if diffs.len() == 0:
        return None
    value = diffs.mode().sort().item(0)
    return value if isinstance(value, dt.timedelta) else dt.timedelta(microseconds=int(value))


# ---------------------------------------------------------------------------------------------
# Schema checks


def _check_ts(frame: pl.DataFrame, problems: list[str], *, unique: bool) -> None:
    if "ts" not in frame.columns:
        problems.append("missing column 'ts'")
        return
    dtype = frame.schema["ts"]
    if dtype != TS_DTYPE:
        problems.append(f"column 'ts' has dtype {dtype}, expected {TS_DTYPE} (UTC, microseconds)")
        return
    ts = frame.get_column("ts")
    nulls = ts.null_count()
    if nulls:
        first = int(ts.is_null().arg_true().item(0))
        problems.append(f"column 'ts' has {nulls} null value(s), first at row {first}")
    diffs = ts.diff()
    backwards = (diffs < dt.timedelta(0)).fill_null(False)
    if backwards.any():
        first = int(backwards.arg_true().item(0))
        problems.append(
            f"'ts' is not sorted: {int(backwards.sum())} row(s) go back in time, first at row {first} ({ts[first]})"
        )
    if unique:
        repeated = (diffs == dt.timedelta(0)).fill_null(False)
        if repeated.any():
            first = int(repeated.arg_true().item(0))
            problems.append(
                f"'ts' is not unique: {int(repeated.sum())} repeated timestamp(s), first at row {first} ({ts[first]})"
            )


def _check_floats(frame: pl.DataFrame, columns: tuple[str, ...], problems: list[str]) -> None:
    for name in columns:
        if name not in frame.columns:
            continue
        dtype = frame.schema[name]
        if dtype != pl.Float64:
            problems.append(f"column '{name}' has dtype {dtype}, expected Float64")


def check_bars(frame: pl.DataFrame) -> list[str]:
    """Every way ``frame`` departs from the canonical bars schema (empty list: it conforms).

    Checks column presence and dtypes, UTC microsecond ``ts``, sorted and unique ``ts``. Data
    quality (OHLC consistency, spikes, gaps) is :func:`aiopt_lib.data.cleaning.validate_bars`'s job.
    """
    problems: list[str] = []
    if not isinstance(frame, pl.DataFrame):
        return [f"expected a polars DataFrame, got {type(frame).__name__}"]
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"missing column(s) {missing}")
    _check_ts(frame, problems, unique=True)
    _check_floats(frame, (*PRICE_COLUMNS, "volume", *OPTIONAL_FLOAT_COLUMNS), problems)
    half_bid = [c for c in BID_COLUMNS if c in frame.columns]
    half_ask = [c for c in ASK_COLUMNS if c in frame.columns]
    if half_bid and len(half_bid) != len(BID_COLUMNS):
        problems.append(f"bid columns must come as a set {list(BID_COLUMNS)}, found {half_bid}")
    if half_ask and len(half_ask) != len(ASK_COLUMNS):
        problems.append(f"ask columns must come as a set {list(ASK_COLUMNS)}, found {half_ask}")
    if "flags" in frame.columns and frame.schema["flags"] != pl.UInt32:
        problems.append(f"column 'flags' has dtype {frame.schema['flags']}, expected UInt32")
    return problems


def check_ticks(frame: pl.DataFrame) -> list[str]:
    """Every way ``frame`` departs from the ticks schema (empty list: it conforms)."""
    problems: list[str] = []
    missing = [c for c in TICK_COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"missing column(s) {missing}")
    _check_ts(frame, problems, unique=False)
    _check_floats(frame, TICK_COLUMNS[1:], problems)
    return problems


def ensure_bars(frame: pl.DataFrame, *, source: str | None = None) -> pl.DataFrame:
    """Return ``frame`` unchanged if it is canonical bars, else raise ``BarsSchemaError``."""
    problems = check_bars(frame)
    if problems:
        raise BarsSchemaError("not canonical bars: " + "; ".join(problems), file=source)
    return frame


def ensure_ticks(frame: pl.DataFrame, *, source: str | None = None) -> pl.DataFrame:
    """Return ``frame`` unchanged if it is canonical ticks, else raise ``BarsSchemaError``."""
    problems = check_ticks(frame)
    if problems:
        raise BarsSchemaError("not canonical ticks: " + "; ".join(problems), file=source)
    return frame


def is_ticks(frame: pl.DataFrame) -> bool:
    """True when the frame has the ticks columns rather than bar columns."""
    return {"bid", "ask"} <= set(frame.columns) and "open" not in frame.columns


def canonical_column_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Reorder columns: the bar columns, then bid/ask/spread, flags, then anything else."""
    order = [c for c in (*BAR_COLUMNS, *OPTIONAL_FLOAT_COLUMNS, "flags") if c in frame.columns]
    rest = [c for c in frame.columns if c not in order]
    return frame.select(order + rest)


def empty_bars(*, with_bid_ask: bool = False) -> pl.DataFrame:
    """An empty canonical bars frame."""
    schema: dict[str, pl.DataType] = {"ts": TS_DTYPE}
    names = [*PRICE_COLUMNS, "volume"]
    if with_bid_ask:
        names += [*BID_COLUMNS, *ASK_COLUMNS, "spread"]
    schema.update({c: pl.Float64() for c in names})
    return pl.DataFrame(schema=schema)


def as_utc(value: Any, name: str) -> dt.datetime | None:
    """A ``start``/``end`` argument as an aware UTC datetime: ISO strings, dates, pandas
    timestamps and naive values are taken as UTC; None stays None. Anything else is a
    :class:`ConfigError` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(f"{name}={value!r} is not an ISO date or datetime") from exc
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise ConfigError(
            f"{name} must be a date, datetime or ISO string, got {type(value).__name__}"
        )
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
