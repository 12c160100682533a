"""Dukascopy datafeed: decode ``.bi5`` files and download them into a local mirror.

The datafeed
------------
Dukascopy serves free historical data at ``https://datafeed.dukascopy.com/datafeed`` as small
LZMA-compressed binary files laid out by instrument and time, **with 0-based months** (``00`` is
January)::

    EURUSD/2019/01/04/13h_ticks.bi5           ticks of 2019-02-04 13:00-14:00 UTC (one file per hour)
    EURUSD/2019/01/04/BID_candles_min_1.bi5   1-minute bid candles of 2019-02-04 (one file per day)
    EURUSD/2019/01/BID_candles_hour_1.bi5     1-hour bid candles of February 2019 (one per month)
    EURUSD/2019/BID_candles_day_1.bi5         1-day bid candles of 2019 (one file per year)

(``ASK_`` instead of ``BID_`` for the ask side.) A file is one or more LZMA "alone" streams; a
0-byte file means the period has no data (a weekend hour, say). Decompressed, a tick file is a run
of 20-byte big-endian records ``>IIIff``: milliseconds since the hour's start, ask, bid (integers;
divide by the instrument's point value, :data:`POINT_VALUES`), ask volume, bid volume (float32, in
millions). A candle file is a run of 24-byte records ``>IIIIIf``: seconds since the period's
start, then **open, close, low, high** (in that order) and the volume.

Candle files hold a candle for every minute / hour / day of their period, including when the
market is closed: such *flat* candles have volume 0 and all four prices equal to the last price.
They are kept here; dropping and counting them is the cleaning stage's job
(:mod:`aiopt_lib.data.cleaning`). Dukascopy builds a coarser candle from the traded (non-flat) finer
candles only, and a period without any trade is a flat candle: the daily candles equal the hourly
ones aggregated that way, the hourly equal the minute ones, the minute ones equal the bid ticks.

Volumes are float32 in the files; they become the float64 of the *shortest* decimal that
round-trips to the same float32 (``2.059999942779541`` becomes ``2.06``), see
:func:`shortest_decimal_float32`.

Downloading
-----------
:func:`download` plans the datafeed files that cover ``[start, end)``, reads those already in the
cache (a mirror of the datafeed layout), fetches the others in parallel with retries, validates
each body (decompresses and decodes it) before writing it atomically to the cache, and returns the
frame trimmed to ``[start, end)`` with counts of what it did. An interrupted run leaves only whole,
valid files in the cache, and a rerun fetches only what is missing. The still-running period (the
current hour, day, month or year) is not on the datafeed in final form: it is built from the
finer files instead and nothing incomplete is cached (see :func:`download`).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import http.client
import lzma
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from aiopt_lib.core.atomic import write_bytes_atomic
from aiopt_lib.core.bars import (
    PRICE_COLUMNS,
    TS_DTYPE,
    canonical_column_order,
    empty_bars,
    ensure_bars,
    ensure_ticks,
    parse_timeframe,
    timeframe_label,
)
from aiopt_lib.core.errors import DataError
from aiopt_lib.core.instruments import POINT_VALUES
from aiopt_lib.data.resample import ticks_to_bars

DEFAULT_BASE_URL = "https://datafeed.dukascopy.com/datafeed"
USER_AGENT = "aiopt (Dukascopy datafeed client; Python urllib)"

Kind = Literal["tick", "m1", "h1", "d1"]
Side = Literal["bid", "ask"]
SideChoice = Literal["bid", "ask", "both"]

KINDS: tuple[str, ...] = ("tick", "m1", "h1", "d1")

# Prices are signed 32-bit in the files (a negative price, as oil had in April 2020, must not wrap).
_TICK_RECORD = np.dtype(
    [("ms", ">u4"), ("ask", ">i4"), ("bid", ">i4"), ("ask_volume", ">f4"), ("bid_volume", ">f4")]
)
_CANDLE_RECORD = np.dtype(
    [
        ("seconds", ">u4"),
        ("open", ">i4"),
        ("close", ">i4"),
        ("low", ">i4"),
        ("high", ">i4"),
        ("volume", ">f4"),
    ]
)
TICK_RECORD_SIZE = _TICK_RECORD.itemsize  # 20 bytes
CANDLE_RECORD_SIZE = _CANDLE_RECORD.itemsize  # 24 bytes

"""Price = integer in the file / point value. 5-digit FX pairs 100000; JPY pairs, gold and silver
1000 (as Dukascopy quotes them: XAU/USD 1234.567, XAG/USD 15.432); USD/CZK 10000 and USD/HUF 1000
as on the datafeed. Other instruments: pass ``point_value=``."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)
_SYMBOL_RE = re.compile(r"[A-Z0-9]+")
_TICK_NAME_RE = re.compile(r"(\d{2})h_ticks\.bi5")
_CANDLE_NAME_RE = re.compile(r"(BID|ASK)_candles_(min|hour|day)_1\.bi5")
_CANDLE_UNIT_KIND = {"min": "m1", "hour": "h1", "day": "d1"}
_KIND_CANDLE_UNIT = {kind: unit for unit, kind in _CANDLE_UNIT_KIND.items()}
# How many folders (year, month, day) sit between the symbol and the file name.
_DATE_DEPTH = {"tick": 3, "m1": 3, "h1": 2, "d1": 1}
# The bar each candle kind holds, and the finer kind a still-running period is built from.
_BAR_LENGTH = {
    "m1": dt.timedelta(minutes=1),
    "h1": dt.timedelta(hours=1),
    "d1": dt.timedelta(days=1),
}
_FINER: dict[str, Kind] = {"d1": "h1", "h1": "m1", "m1": "tick"}
_FLOAT32_DIGITS = 9  # every float32 survives a round trip through 9 significant decimal digits


class DownloadError(DataError):
    """A datafeed file could not be downloaded; ``str()`` names the URL and the last cause.

    Attributes: ``url``, ``cause`` (the last failure, e.g. ``"HTTP 500 Internal Server Error"``)
    and ``attempts`` (how many requests were made).
    """

    def __init__(self, message: str, *, url: str, cause: str, attempts: int) -> None:
        self.url = url
        self.cause = cause
        self.attempts = attempts
        super().__init__(message, file=url)


# ---------------------------------------------------------------------------------------------
# Instruments and time


def _normalise_symbol(symbol: str) -> str:
    text = str(symbol).strip().upper().replace("/", "")
    if not _SYMBOL_RE.fullmatch(text):
        raise ValueError(
            f"not a Dukascopy instrument name: {symbol!r} (letters and digits, e.g. 'EURUSD')"
        )
    return text


def _check_point_value(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"point_value must be a positive integer, got {value!r}")
    return int(value)


def _point_value_for(symbol: str, override: int | None) -> int:
    if override is not None:
        return _check_point_value(override)
    name = _normalise_symbol(symbol)
    if name not in POINT_VALUES:
        raise DataError(
            f"unknown instrument {name!r}: its point value (price = integer in the file / point "
            "value) is not in aiopt_lib.core.instruments.POINT_VALUES; pass point_value=, e.g. 100000 "
            "for a 5-digit FX pair or 1000 for a JPY pair",
            field="point_value",
        )
    return POINT_VALUES[name]


def point_value(symbol: str, override: int | None = None) -> int:
    """The divisor that turns the datafeed's integer prices of ``symbol`` into prices.

    ``override`` (a positive integer) wins; otherwise the symbol (``"EURUSD"``, ``"eur/usd"``) is
    looked up in :data:`POINT_VALUES`, and an unknown instrument raises ``DataError`` asking for
    the point value.
    """
    return _point_value_for(symbol, override)


def _as_utc(value: dt.datetime | dt.date | str, *, name: str = "time") -> dt.datetime:
    """A UTC datetime from a datetime (naive = UTC), a date (its midnight) or an ISO string."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{name} {value!r} is not an ISO date or time (e.g. '2019-02-04' or '2019-02-04T13:00')"
            ) from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise TypeError(
        f"{name} must be a datetime, a date or an ISO string, got {type(value).__name__}"
    )


def _period_start(kind: str, when: dt.datetime) -> dt.datetime:
    """The start of the datafeed file period of ``kind`` that contains ``when``."""
    if kind == "tick":
        return when.replace(minute=0, second=0, microsecond=0)
    if kind == "m1":
        return when.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "h1":
        return when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return when.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)


def _period_end(kind: str, start: dt.datetime) -> dt.datetime:
    if kind == "tick":
        return start + dt.timedelta(hours=1)
    if kind == "m1":
        return start + dt.timedelta(days=1)
    if kind == "h1":
        year, month = divmod(start.month, 12)
        return start.replace(year=start.year + year, month=month + 1)
    return start.replace(year=start.year + 1)


def _floor(when: dt.datetime, step: dt.timedelta) -> dt.datetime:
    return when - (when - _EPOCH) % step


def _ceil(when: dt.datetime, step: dt.timedelta) -> dt.datetime:
    floor = _floor(when, step)
    return floor if floor == when else floor + step


def _epoch_us(when: dt.datetime) -> int:
    return (when - _EPOCH) // _ONE_US


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


def _kind_of_timeframe(timeframe: str | dt.timedelta) -> Kind:
    if isinstance(timeframe, str) and timeframe.strip().lower() in ("tick", "ticks"):
        return "tick"
    td = parse_timeframe(timeframe)
    for kind, length in _BAR_LENGTH.items():
        if td == length:
            return kind  # type: ignore[return-value]
    raise ValueError(
        f"the Dukascopy datafeed serves ticks and 1-minute, 1-hour and 1-day candles, not {timeframe!r}; "
        "download one of those and aggregate with aiopt_lib.data.resample.resample_bars"
    )


# ---------------------------------------------------------------------------------------------
# Datafeed paths


@dataclass(frozen=True)
class DatafeedFile:
    """One file of the datafeed: what it holds and where it lives.

    ``kind`` is ``"tick"`` (one hour of ticks), ``"m1"`` (a day of 1-minute candles), ``"h1"`` (a
    month of hourly candles) or ``"d1"`` (a year of daily candles); ``side`` is ``"bid"`` or
    ``"ask"`` for candles and None for ticks (a tick holds both). ``start`` and ``end``
    (exclusive) are the UTC period the file covers; ``relative_path`` is its path in the datafeed
    layout (``/``-separated, month 0-based), also its path inside a cache folder.
    """

    symbol: str
    kind: Kind
    side: Side | None
    start: dt.datetime
    end: dt.datetime
    relative_path: str

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        """The file's URL on the datafeed at ``base_url``."""
        return f"{base_url.rstrip('/')}/{self.relative_path}"


def datafeed_file(
    symbol: str, kind: Kind, when: dt.datetime | dt.date | str, *, side: Side | None = None
) -> DatafeedFile:
    """The datafeed file of ``kind`` for ``symbol`` whose period contains ``when`` (UTC).

    The inverse of :func:`parse_datafeed_path`: ``datafeed_file("EURUSD", "tick",
    datetime(2019, 2, 4, 13))`` is ``EURUSD/2019/01/04/13h_ticks.bi5`` (0-based month). Candle
    kinds need ``side`` (``"bid"`` or ``"ask"``); ticks take none.
    """
    name = _normalise_symbol(symbol)
    kind = _check_kind(kind)
    if kind == "tick":
        if side is not None:
            raise ValueError("tick files hold both bid and ask; pass side=None for kind 'tick'")
    elif side not in ("bid", "ask"):
        raise ValueError(f"candle files are per side: side must be 'bid' or 'ask', got {side!r}")
    start = _period_start(kind, _as_utc(when))
    folders = [name, f"{start.year:04d}", f"{start.month - 1:02d}", f"{start.day:02d}"]
    folders = folders[: 1 + _DATE_DEPTH[kind]]
    if kind == "tick":
        filename = f"{start.hour:02d}h_ticks.bi5"
    else:
        filename = f"{str(side).upper()}_candles_{_KIND_CANDLE_UNIT[kind]}_1.bi5"
    return DatafeedFile(
        symbol=name,
        kind=kind,
        side=side,
        start=start,
        end=_period_end(kind, start),
        relative_path="/".join([*folders, filename]),
    )


def parse_datafeed_path(path: str | Path) -> DatafeedFile:
    """What a datafeed file holds, from its path (absolute, relative or a URL path).

    The last folders must follow the datafeed layout: ``SYMBOL/YYYY/MM/DD/HHh_ticks.bi5``,
    ``SYMBOL/YYYY/MM/DD/{BID|ASK}_candles_min_1.bi5``, ``SYMBOL/YYYY/MM/{BID|ASK}_candles_hour_1.bi5``
    or ``SYMBOL/YYYY/{BID|ASK}_candles_day_1.bi5``, with the month **0-based** (``01`` is
    February). Anything else raises ``DataError`` naming the path.
    """
    parts = str(path).replace("\\", "/").rstrip("/").split("/")
    filename = parts[-1]
    side: Side | None = None
    hour = 0
    if match := _TICK_NAME_RE.fullmatch(filename):
        kind: Kind = "tick"
        hour = int(match.group(1))
        if hour > 23:
            raise DataError(f"hour {match.group(1)} in the file name is outside 00..23", file=path)
    elif match := _CANDLE_NAME_RE.fullmatch(filename):
        kind = _CANDLE_UNIT_KIND[match.group(2)]  # type: ignore[assignment]
        side = "bid" if match.group(1) == "BID" else "ask"
    else:
        raise DataError(
            "not a Dukascopy datafeed file name: expected 'HHh_ticks.bi5' or "
            "'BID_candles_min_1.bi5' / '..._hour_1.bi5' / '..._day_1.bi5' (BID or ASK)",
            file=path,
            value=filename,
        )
    depth = _DATE_DEPTH[kind]
    if len(parts) < depth + 2:
        raise DataError(
            f"a {kind} file sits in SYMBOL/{'/'.join(['YYYY', 'MM', 'DD'][:depth])}/; this path is too short",
            file=path,
        )
    symbol = parts[-depth - 2]
    dates = parts[-depth - 1 : -1]
    year_text, *rest = dates
    month_text = rest[0] if rest else "00"
    day_text = rest[1] if len(rest) > 1 else "01"
    if not re.fullmatch(r"\d{4}", year_text):
        raise DataError("the year folder must have 4 digits", file=path, value=year_text)
    if not re.fullmatch(r"\d{2}", month_text) or int(month_text) > 11:
        raise DataError(
            "the month folder must be 00..11 (the datafeed's months are 0-based: 00 = January)",
            file=path,
            value=month_text,
        )
    if not re.fullmatch(r"\d{2}", day_text):
        raise DataError("the day folder must have 2 digits", file=path, value=day_text)
    try:
        start = dt.datetime(int(year_text), int(month_text) + 1, int(day_text), hour, tzinfo=dt.UTC)
    except ValueError as exc:
        raise DataError(f"the folders do not name a real date: {exc}", file=path) from None
    if not _SYMBOL_RE.fullmatch(symbol.upper()):
        raise DataError("the instrument folder must be letters and digits", file=path, value=symbol)
    return datafeed_file(symbol, kind, start, side=side)


# ---------------------------------------------------------------------------------------------
# Decoding


def shortest_decimal_float32(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Float64 values of the shortest decimals that round-trip to the same float32s.

    The datafeed stores volumes as float32, so ``2.06`` arrives as ``2.059999942779541``; this
    returns ``2.06`` (what ``str(numpy.float32(v))`` prints), vectorised: for 1 to 9 significant
    digits, round every value still pending and keep those that convert back to the same float32.
    The result always converts back to the same float32. Zeros, NaN and infinities pass through.
    """
    single = np.asarray(values, dtype=np.float32)
    exact = single.astype(np.float64)
    result = exact.copy()
    pending = np.isfinite(exact) & (exact != 0)
    magnitude = np.zeros_like(exact)
    magnitude[pending] = np.floor(np.log10(np.abs(exact[pending])))
    # Rounding to k decimals as round(x * 10**k) / 10**k gives the nearest float64 to the decimal
    # only while 10**k is exact in float64 (|k| <= 22); with up to 9 digits that holds for
    # magnitudes 1e-14..1e22. The rare values outside (never volumes) take numpy's shortest
    # repr, a slower cast through strings.
    outside = pending & ((magnitude < -14) | (magnitude > 22))
    if outside.any():
        result[outside] = single[outside].astype(str).astype(np.float64)
        pending &= ~outside
    for digits in range(1, _FLOAT32_DIGITS + 1):
        index = np.flatnonzero(pending)
        if index.size == 0:
            break
        decimals = digits - 1 - magnitude[index]
        scale = 10.0 ** np.abs(decimals)
        x = exact[index]
        candidate = np.where(
            decimals >= 0, np.round(x * scale) / scale, np.round(x / scale) * scale
        )
        same = candidate.astype(np.float32) == single[index]
        result[index[same]] = candidate[same]
        pending[index[same]] = False
    return result


def decompress_bi5(data: bytes, *, file: str | Path | None = None) -> bytes:
    """The decompressed content of a ``.bi5`` body: LZMA "alone" streams, one or several back to back.

    An empty body (a period without data) gives ``b""``. Corrupt data, a stream cut short or
    trailing bytes that are not a stream raise ``DataError`` naming ``file``.
    """
    chunks: list[bytes] = []
    offset = 0
    stream = 0
    while offset < len(data):
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
        try:
            chunks.append(decompressor.decompress(data[offset:]))
        except lzma.LZMAError as exc:
            where = f"LZMA stream {stream + 1} at byte {offset}" if stream else "LZMA data"
            raise DataError(f"corrupt {where}: {exc}", file=file) from None
        if not decompressor.eof:
            raise DataError(
                f"LZMA stream {stream + 1} ends before its end: the file is truncated "
                "(an interrupted download?)",
                file=file,
            )
        offset = len(data) - len(decompressor.unused_data)
        stream += 1
    return b"".join(chunks)


def _records(data: bytes, record: np.dtype, file: str | Path | None) -> np.ndarray:
    raw = decompress_bi5(data, file=file)
    whole, extra = divmod(len(raw), record.itemsize)
    if extra:
        raise DataError(
            f"decompressed data is {len(raw)} bytes, not a whole number of {record.itemsize}-byte "
            f"records: the record breaks off after {extra} of its bytes (a truncated file?)",
            file=file,
            row=whole,
            row_kind="record",
        )
    return np.frombuffer(raw, dtype=record)


def _check_offsets(
    offsets: np.ndarray,
    *,
    limit: int | None,
    unit: str,
    strictly_increasing: bool,
    file: str | Path | None,
    field: str,
) -> None:
    if limit is not None:
        beyond = np.flatnonzero(offsets >= limit)
        if beyond.size:
            first = int(beyond[0])
            raise DataError(
                f"time offset lies beyond the file's period of {limit} {unit} "
                f"({beyond.size} record(s))",
                file=file,
                row=first,
                field=field,
                value=int(offsets[first]),
                row_kind="record",
            )
    steps = np.diff(offsets.astype(np.int64))
    bad = np.flatnonzero(steps <= 0 if strictly_increasing else steps < 0)
    if bad.size:
        first = int(bad[0]) + 1
        what = "repeats or goes back in time" if strictly_increasing else "goes back in time"
        raise DataError(
            f"time offset {what} after {int(offsets[first - 1])} {unit} ({bad.size} record(s))",
            file=file,
            row=first,
            field=field,
            value=int(offsets[first]),
            row_kind="record",
        )


def _ts_column(start: dt.datetime, offsets_us: np.ndarray) -> pl.Series:
    return pl.Series("ts", _epoch_us(start) + offsets_us.astype(np.int64)).cast(TS_DTYPE)


def _empty_ticks() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "ts": TS_DTYPE,
            "bid": pl.Float64,
            "ask": pl.Float64,
            "bid_volume": pl.Float64,
            "ask_volume": pl.Float64,
        }
    )


def decode_ticks(
    data: bytes,
    hour_start: dt.datetime,
    *,
    point_value: int,
    file: str | Path | None = None,
) -> pl.DataFrame:
    """Decode a tick file (``HHh_ticks.bi5``) into the ticks schema.

    ``ts`` = ``hour_start`` (naive = UTC) + the record's milliseconds; ``bid``/``ask`` = integer /
    ``point_value``; ``bid_volume``/``ask_volume`` in millions, as the shortest decimals of their
    float32 (:func:`shortest_decimal_float32`). A 0-byte file gives an empty frame. Corrupt or
    truncated data, a time beyond the hour or going back raise ``DataError`` naming ``file`` and
    the record index.
    """
    start = _as_utc(hour_start, name="hour_start")
    divisor = _check_point_value(point_value)
    records = _records(data, _TICK_RECORD, file)
    if records.size == 0:
        return _empty_ticks()
    ms = records["ms"].astype(np.int64)
    _check_offsets(ms, limit=3_600_000, unit="ms", strictly_increasing=False, file=file, field="ms")
    frame = pl.DataFrame(
        [
            _ts_column(start, ms * 1000),
            pl.Series("bid", records["bid"].astype(np.float64) / divisor),
            pl.Series("ask", records["ask"].astype(np.float64) / divisor),
            pl.Series("bid_volume", shortest_decimal_float32(records["bid_volume"])),
            pl.Series("ask_volume", shortest_decimal_float32(records["ask_volume"])),
        ]
    )
    return ensure_ticks(frame, source=None if file is None else str(file))


def encode_ticks(
    ticks: pl.DataFrame, hour_start: dt.datetime, *, point_value: int, preset: int = 6
) -> bytes:
    """The ``.bi5`` body of one hour of ticks: the inverse of :func:`decode_ticks`.

    For writing datafeed-layout mirrors without the network (synthetic data at scale, tests):
    ``decode_ticks(encode_ticks(t, h, point_value=p), h, point_value=p)`` equals ``t`` when its
    prices are multiples of ``1 / p`` and its volumes float32 values shown as their shortest
    decimals, as every decoded file's are. Prices are rounded to the nearest point, times truncated
    to the millisecond, volumes stored as float32; ``preset`` is the LZMA preset (0 is fastest).
    No ticks give ``b""`` (the datafeed's empty hour). A tick outside ``[hour_start, hour_start +
    1h)`` or a price that does not fit the file's signed 32-bit field raises ``DataError``.
    """
    ensure_ticks(ticks)
    if ticks.height == 0:
        return b""
    start = _as_utc(hour_start, name="hour_start")
    divisor = _check_point_value(point_value)
    offsets = (ticks.get_column("ts").dt.epoch("us").to_numpy() - _epoch_us(start)) // 1000
    outside = np.flatnonzero((offsets < 0) | (offsets >= 3_600_000))
    if outside.size:
        first = int(outside[0])
        raise DataError(
            f"tick at {ticks.get_column('ts')[first]} is outside the hour starting {start}",
            row=first,
            field="ts",
            row_kind="row",
        )
    records = np.empty(ticks.height, dtype=_TICK_RECORD)
    records["ms"] = offsets
    for side in ("ask", "bid"):
        points = np.rint(ticks.get_column(side).to_numpy() * divisor)
        beyond = np.flatnonzero(~(np.abs(points) < 2**31))
        if beyond.size:
            first = int(beyond[0])
            raise DataError(
                f"price does not fit a 32-bit integer of points (point value {divisor})",
                row=first,
                field=side,
                value=float(ticks.get_column(side)[first]),
                row_kind="row",
            )
        records[side] = points.astype(np.int64)
        records[f"{side}_volume"] = ticks.get_column(f"{side}_volume").to_numpy()
    return lzma.compress(records.tobytes(), format=lzma.FORMAT_ALONE, preset=preset)


def decode_candles(
    data: bytes,
    period_start: dt.datetime,
    *,
    point_value: int,
    file: str | Path | None = None,
    period_end: dt.datetime | None = None,
) -> pl.DataFrame:
    """Decode a candle file (``*_candles_{min|hour|day}_1.bi5``) into the bars schema.

    ``ts`` = ``period_start`` (naive = UTC) + the record's seconds (the candle's open time);
    prices = integer / ``point_value``, read in the file's order open, close, low, high; volume as
    the shortest decimal of its float32. Flat zero-volume candles (market closed) are kept. With
    ``period_end``, a time at or beyond it is an error. A 0-byte file gives an empty frame;
    corrupt or truncated data and times out of order raise ``DataError`` naming ``file`` and the
    record index.
    """
    start = _as_utc(period_start, name="period_start")
    divisor = _check_point_value(point_value)
    records = _records(data, _CANDLE_RECORD, file)
    if records.size == 0:
        return empty_bars()
    seconds = records["seconds"].astype(np.int64)
    limit = None
    if period_end is not None:
        limit = int((_as_utc(period_end, name="period_end") - start).total_seconds())
    _check_offsets(
        seconds, limit=limit, unit="s", strictly_increasing=True, file=file, field="seconds"
    )
    columns = [_ts_column(start, seconds * 1_000_000)]
    columns += [
        pl.Series(name, records[name].astype(np.float64) / divisor) for name in PRICE_COLUMNS
    ]
    columns.append(pl.Series("volume", shortest_decimal_float32(records["volume"])))
    return ensure_bars(pl.DataFrame(columns), source=None if file is None else str(file))


def _decode(info: DatafeedFile, data: bytes, divisor: int, file: str | Path | None) -> pl.DataFrame:
    if info.kind == "tick":
        return decode_ticks(data, info.start, point_value=divisor, file=file)
    return decode_candles(data, info.start, point_value=divisor, file=file, period_end=info.end)


def read_file(
    path: str | Path, *, symbol: str | None = None, point_value: int | None = None
) -> pl.DataFrame:
    """Read one ``.bi5`` file of a datafeed-layout folder into ticks or bars.

    What the file holds and its period come from the path (:func:`parse_datafeed_path`); the
    instrument is the folder above the year unless ``symbol`` is given, and fixes the point value
    unless ``point_value`` is given.
    """
    info = parse_datafeed_path(path)
    name = info.symbol if symbol is None else _normalise_symbol(symbol)
    divisor = _point_value_for(name, point_value)
    return _decode(info, Path(path).read_bytes(), divisor, path)


# ---------------------------------------------------------------------------------------------
# Building a still-running period from finer files


def _volume_as_float32(frame: pl.DataFrame) -> pl.DataFrame:
    """Store volumes as the datafeed would: a float32, shown as its shortest decimal."""
    if frame.height == 0:
        return frame
    volume = shortest_decimal_float32(frame.get_column("volume").to_numpy())
    return frame.with_columns(pl.Series("volume", volume))


def _aggregate_candles(bars: pl.DataFrame, bar: dt.timedelta) -> pl.DataFrame:
    """Aggregate candles the way Dukascopy does: from the traded (volume > 0) ones only; a bar with
    none is a flat candle at its last price. (``resample_bars`` would take the flat candles'
    stale open and low into the bar.)"""
    if bars.height == 0:
        return empty_bars()
    traded = pl.col("volume") > 0

    def pick(column: str, how: str) -> pl.Expr:
        of_traded = getattr(pl.col(column).filter(traded), how)()
        return pl.coalesce(of_traded, getattr(pl.col(column), how)()).alias(column)

    every = timeframe_label(bar)
    out = (
        bars.group_by(pl.col("ts").dt.truncate(every))
        .agg(
            pick("open", "first"),
            pick("high", "max"),
            pick("low", "min"),
            pick("close", "last"),
            pl.col("volume").sum(),
        )
        .sort("ts")
    )
    return ensure_bars(_volume_as_float32(out))


def _minutes_from_ticks(ticks: pl.DataFrame, side: Side) -> pl.DataFrame:
    """1-minute candles of one side from ticks, as Dukascopy builds them (exact; see the tests).
    Minutes without ticks get no candle (the datafeed's files would hold a flat one)."""
    if ticks.height == 0:
        return empty_bars()
    bars = ticks_to_bars(ticks, "1m", price=side).drop("spread")
    return _volume_as_float32(bars)


# ---------------------------------------------------------------------------------------------
# Download planning


@dataclass(frozen=True)
class _Segment:
    """Data of ``kind`` for ``[lo, hi)``: read from one complete datafeed ``file``, or, for a
    period still running, built from finer segments (``parts``)."""

    kind: Kind
    side: Side | None
    lo: dt.datetime
    hi: dt.datetime
    file: DatafeedFile | None = None
    parts: tuple[_Segment, ...] = ()


def _plan(
    symbol: str, kind: Kind, side: Side | None, lo: dt.datetime, hi: dt.datetime, now: dt.datetime
) -> list[_Segment]:
    segments: list[_Segment] = []
    start = _period_start(kind, lo)
    while start < hi and start < now:
        end = _period_end(kind, start)
        span = (max(lo, start), min(hi, end))
        if end <= now:
            file = datafeed_file(symbol, kind, start, side=side)
            segments.append(_Segment(kind, side, *span, file=file))
        elif kind != "tick":
            # Whole bars only: a bar that starts inside the range is built from all of its data.
            bar = _BAR_LENGTH[kind]
            finer = _FINER[kind]
            sub_lo = _floor(span[0], bar)
            sub_hi = min(end, now, _ceil(span[1], bar))
            finer_side = None if finer == "tick" else side
            parts = _plan(symbol, finer, finer_side, sub_lo, sub_hi, now)
            segments.append(_Segment(kind, side, *span, parts=tuple(parts)))
        # else: the running hour's tick file does not exist yet; there is nothing to read for it.
        start = end
    return segments


def _walk(segments: Sequence[_Segment]) -> list[_Segment]:
    out: list[_Segment] = []
    for segment in segments:
        out.append(segment)
        out.extend(_walk(segment.parts))
    return out


def _segment_frame(segment: _Segment, frames: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    if segment.file is not None:
        frame = frames[segment.file.relative_path]
    else:
        finer = [_segment_frame(part, frames) for part in segment.parts]
        if segment.kind == "m1":
            ticks = pl.concat(finer) if finer else _empty_ticks()
            frame = _minutes_from_ticks(ticks, segment.side or "bid")
        else:
            bars = pl.concat(finer) if finer else empty_bars()
            frame = _aggregate_candles(bars, _BAR_LENGTH[segment.kind])
    return frame.filter((pl.col("ts") >= segment.lo) & (pl.col("ts") < segment.hi))


def _join_sides(bid: pl.DataFrame, ask: pl.DataFrame) -> pl.DataFrame:
    """Bid bars plus ``bid_*``, ``ask_*`` and ``spread`` = ask open − bid open."""
    ask_prices = ask.select("ts", *[pl.col(c).alias(f"ask_{c}") for c in PRICE_COLUMNS])
    joined = bid.join(ask_prices, on="ts", how="full", coalesce=True).sort("ts")
    one_sided = joined.filter(pl.col("open").is_null() | pl.col("ask_open").is_null())
    if one_sided.height:
        first = one_sided.row(0, named=True)
        missing = "ask" if first["ask_open"] is None else "bid"
        raise DataError(
            f"bid and ask candles do not line up: {one_sided.height} bar(s) exist on one side only; "
            f"the first, at {first['ts']}, has no {missing} candle",
            field="ts",
        )
    frame = joined.with_columns(
        *[pl.col(c).alias(f"bid_{c}") for c in PRICE_COLUMNS],
        (pl.col("ask_open") - pl.col("open")).alias("spread"),
    )
    return ensure_bars(canonical_column_order(frame))


# ---------------------------------------------------------------------------------------------
# HTTP


def _retryable_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


def _http_get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        # http.client raises IncompleteRead when the body is shorter than its Content-Length.
        return response.read()


def _fetch(
    file: DatafeedFile,
    *,
    url: str,
    cache_path: Path,
    divisor: int,
    retries: int,
    backoff: float,
    timeout: float,
    stop: threading.Event,
) -> tuple[pl.DataFrame, int]:
    """Download, validate and cache one file; the decoded frame and the body's size.

    ``stop`` set (another file failed, or the caller was interrupted) ends the retries early."""
    cause = ""
    attempts = 0
    for attempt in range(retries + 1):
        if attempt and stop.wait(backoff * 2 ** (attempt - 1)):
            cause += " (retries abandoned: the download was stopped)"
            break
        attempts += 1
        try:
            body = _http_get(url, timeout)
            # Decoding validates the body (LZMA streams, record size, times) before it is cached.
            frame = _decode(file, body, divisor, None)
        except urllib.error.HTTPError as exc:
            exc.close()
            cause = f"HTTP {exc.code} {exc.reason}"
            if not _retryable_status(exc.code):
                if exc.code == 404:
                    cause += (
                        " (the datafeed has no such file: check the symbol and the dates; "
                        "periods without data are served as 0-byte files, not 404)"
                    )
                break
            continue
        except DataError as exc:
            cause = f"invalid body: {exc}"
            continue
        except (OSError, http.client.HTTPException) as exc:
            # URLError (refused, DNS), timeouts and cut connections (IncompleteRead) are transient.
            reason = getattr(exc, "reason", None) or exc
            cause = f"{type(exc).__name__}: {reason}"
            continue
        write_bytes_atomic(cache_path, body)
        return frame, len(body)
    raise DownloadError(
        f"download failed after {attempts} attempt(s); last cause: {cause}",
        url=url,
        cause=cause,
        attempts=attempts,
    )


def _fetch_all(
    files: Sequence[DatafeedFile],
    *,
    cache: Path,
    base_url: str,
    divisor: int,
    workers: int,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
    description: str,
) -> dict[str, tuple[pl.DataFrame, int]]:
    results: dict[str, tuple[pl.DataFrame, int]] = {}
    if not files:
        return results
    stop = threading.Event()
    with tqdm(total=len(files), desc=description, unit="file", disable=not progress) as bar:
        pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dukascopy")
        try:
            futures = {
                pool.submit(
                    _fetch,
                    file,
                    url=file.url(base_url),
                    cache_path=cache / file.relative_path,
                    divisor=divisor,
                    retries=retries,
                    backoff=backoff,
                    timeout=timeout,
                    stop=stop,
                ): file
                for file in files
            }
            for future in cf.as_completed(futures):
                results[futures[future].relative_path] = future.result()
                bar.update(1)
        except BaseException:
            # A file failed (or Ctrl-C): requests not yet started are dropped and retries end;
            # requests in flight finish and are cached, so a rerun resumes after them.
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


# ---------------------------------------------------------------------------------------------
# Public download API


@dataclass(frozen=True, eq=False)
class DownloadResult:
    """What :func:`download` returns.

    ``frame``: ticks (timeframe ``"tick"``) or bars for ``[start, end)``. Counts over the
    datafeed files read: ``files`` in all, ``downloaded`` fetched now, ``from_cache`` read from
    the cache (``downloaded + from_cache == files``), ``empty`` of them 0 bytes (periods without
    data, whether downloaded or cached), ``incomplete`` still-running periods built from finer
    files instead of their datafeed file (never cached).
    """

    frame: pl.DataFrame
    downloaded: int
    from_cache: int
    empty: int
    files: int
    incomplete: int = 0


def download(
    symbol: str,
    start: dt.datetime | dt.date | str,
    end: dt.datetime | dt.date | str,
    *,
    timeframe: str | dt.timedelta = "tick",
    side: SideChoice = "bid",
    cache_dir: str | Path,
    base_url: str = DEFAULT_BASE_URL,
    offline: bool = False,
    workers: int = 4,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 30.0,
    progress: bool = True,
    point_value: int | None = None,
    now: dt.datetime | None = None,
) -> DownloadResult:
    """Download Dukascopy data for ``[start, end)`` through a local cache; ticks or bars.

    ``timeframe`` is ``"tick"`` (ticks schema; ``side`` is then ignored, a tick has both),
    ``"m1"``, ``"h1"`` or ``"d1"`` (also ``"1m"``, ``"1h"``, ``"1d"``): bars as the datafeed's
    candles, flat zero-volume candles included. ``side`` ``"bid"`` or ``"ask"`` picks the candle
    files; ``"both"`` gives main columns = bid (volume = bid volume), ``bid_*``, ``ask_*`` and
    ``spread`` = ask_open − bid_open (the spread at the bar's open). ``start``/``end`` are
    datetimes (naive = UTC), dates (midnight UTC) or ISO strings.

    Files are mirrored in ``cache_dir`` in the datafeed layout and never downloaded twice (a
    cached 0-byte file is a cached empty period). Missing files are fetched from ``base_url``
    with at most ``workers`` requests at a time; connection errors, timeouts, HTTP 5xx/408/429
    and bodies that do not decode are retried ``retries`` times, waiting ``backoff * 2**n``
    seconds; an HTTP 404 fails at once (an empty period is a 200 with a 0-byte body). A body is
    decoded (validated) before it is written, atomically, to the cache; when a file still fails,
    ``DownloadError`` names its URL and the last cause, and the files fetched so far stay cached.
    ``offline=True`` reads the cache only and raises ``DataError`` naming the first missing file.

    The period still running at ``now`` (default: the clock) is not final on the datafeed:
    today's minute file, this month's hourly file and this year's daily file are built from the
    finer files (hours from minutes, days from hours, as Dukascopy aggregates: traded candles
    only; minutes from the ticks, where minutes without ticks get no candle), recursively down
    to the hourly tick files, and the current hour, whose tick file does not exist yet, is left
    out. Nothing incomplete is cached. ``point_value`` overrides :data:`POINT_VALUES`.
    """
    name = _normalise_symbol(symbol)
    kind = _kind_of_timeframe(timeframe)
    if side not in ("bid", "ask", "both"):
        raise ValueError(f"side must be 'bid', 'ask' or 'both', got {side!r}")
    lo, hi = _as_utc(start, name="start"), _as_utc(end, name="end")
    if hi <= lo:
        raise ValueError(f"end ({hi}) must be after start ({lo})")
    if workers < 1 or retries < 0 or backoff < 0 or timeout <= 0:
        raise ValueError("need workers >= 1, retries >= 0, backoff >= 0 and timeout > 0")
    divisor = _point_value_for(name, point_value)
    clock = dt.datetime.now(dt.UTC) if now is None else _as_utc(now, name="now")

    sides: tuple[Side | None, ...]
    if kind == "tick":
        sides = (None,)
    elif side == "both":
        sides = ("bid", "ask")
    else:
        sides = (side,)
    plans = {s: _plan(name, kind, s, lo, hi, clock) for s in sides}
    segments = [segment for plan in plans.values() for segment in _walk(plan)]
    unique = {seg.file.relative_path: seg.file for seg in segments if seg.file is not None}
    files = sorted(unique.values(), key=lambda f: (f.start, KINDS.index(f.kind), f.side or ""))

    cache = Path(cache_dir)
    cached = [f for f in files if (cache / f.relative_path).is_file()]
    missing = [f for f in files if not (cache / f.relative_path).is_file()]
    if offline and missing:
        raise DataError(
            f"not in the cache and offline=True ({len(missing)} of {len(files)} file(s) missing, "
            "this is the first); download them first with offline=False",
            file=cache / missing[0].relative_path,
        )

    frames: dict[str, pl.DataFrame] = {}
    empty = 0
    for file in cached:
        path = cache / file.relative_path
        body = path.read_bytes()
        empty += not body
        frames[file.relative_path] = _decode(file, body, divisor, path)
    fetched = _fetch_all(
        missing,
        cache=cache,
        base_url=base_url,
        divisor=divisor,
        workers=workers,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        progress=progress,
        description=f"Dukascopy {name} {kind}",
    )
    for relative_path, (frame, size) in fetched.items():
        frames[relative_path] = frame
        empty += size == 0

    per_side = {
        s: pl.concat([_segment_frame(seg, frames) for seg in plan])
        if plan
        else (_empty_ticks() if kind == "tick" else empty_bars())
        for s, plan in plans.items()
    }
    if kind == "tick":
        frame = ensure_ticks(per_side[None])
    elif side == "both":
        frame = _join_sides(per_side["bid"], per_side["ask"])
    else:
        frame = ensure_bars(per_side[sides[0]])
    return DownloadResult(
        frame=frame,
        downloaded=len(fetched),
        from_cache=len(cached),
        empty=empty,
        files=len(files),
        incomplete=len({(seg.kind, seg.lo) for seg in segments if seg.file is None}),
    )


def load(
    symbol: str,
    start: dt.datetime | dt.date | str,
    end: dt.datetime | dt.date | str,
    *,
    timeframe: str | dt.timedelta,
    side: SideChoice = "bid",
    cache_dir: str | Path,
    offline: bool = True,
    **download_options: Any,
) -> pl.DataFrame:
    """The frame of :func:`download` (ticks or bars for ``[start, end)``), offline by default.

    For :func:`aiopt_lib.data.sources.load_bars`: reads the cache unless ``offline=False``; the other
    options (``base_url``, ``workers``, ``progress``, ``point_value``...) pass through.
    """
    return download(
        symbol,
        start,
        end,
        timeframe=timeframe,
        side=side,
        cache_dir=cache_dir,
        offline=offline,
        **download_options,
    ).frame
