"""Reading bars from any source, and the one entry point :func:`load_bars`.

Every reader returns a **raw** frame: canonical column names and dtypes (``ts`` as
``Datetime("us", "UTC")``, prices and volume ``Float64``) plus an ``Int64`` column ``row`` that
locates each row in the source (the 1-based line number for text files, the 0-based row index for
Parquet files and in-memory frames, the 0-based record index for Dukascopy ``.bi5`` files), in
source order. Readers never sort, de-duplicate or repair:
that is :func:`aiopt_lib.data.cleaning.clean_bars`'s job, which reports what it did by ``row``.

Bad input raises :class:`~aiopt_lib.core.errors.DataError` naming the file, the line (``line N``, text
files), row (``row N``, Parquet and frames) or record (``record N``, ``.bi5``) and the field, with
the offending value. A timestamp column must keep one style all the way down: a UTC offset on
every value or on none, and one epoch unit; a change is an error at the first value that differs.

Supported sources (see :func:`read_source`):

* ``"sample"`` / ``"sample:<name>"``: a small data set shipped with aiopt (:func:`list_samples`).
* CSV / text files, format sniffed from the first lines or given with ``format=``:

  - ``"dukascopy_csv"``: Dukascopy's CSV export, header ``Time,Open,High,Low,Close,Volume`` (or
    ``Gmt time`` / ``Local time``), times ``DD.MM.YYYY HH:MM:SS.000`` with an optional
    `` GMT+0200`` suffix (the "Local time" export), which is applied.
  - ``"histdata"``: HistData.com ASCII M1, ``YYYYMMDD HHMMSS;open;high;low;close;volume``, no
    header. HistData stamps its data in Eastern Standard Time **without** daylight saving, a fixed
    UTC−05:00 all year, so 5 hours are added. ``tz=`` overrides this.
  - ``"mt4"``: MetaTrader 4 History Center export, ``YYYY.MM.DD,HH:MM,open,high,low,close,volume``.
  - ``"mt5"``: MetaTrader 5 export, tab-separated, header ``<DATE> <TIME> <OPEN> <HIGH> <LOW>
    <CLOSE> <TICKVOL> <VOL> <SPREAD>``.
  - ``"generic"``: any CSV with a header; columns found by name (see :func:`read_csv_source`).

* Parquet files (canonical bars written by aiopt, or any table with a recognisable time column).
* Dukascopy ``.bi5`` files and directories in the Dukascopy datafeed layout (via
  :mod:`aiopt_lib.data.dukascopy`).
* A bars dataset (``format="hive"``): a folder of ``symbol=.../year=.../part-*.parquet`` files
  written by :mod:`aiopt_lib.data.store` (ten years of minutes, read lazily: only the years of
  ``[start, end)`` and the columns of ``side`` are read).
* polars and pandas DataFrames.

Time zones
----------
``tz=`` says what time zone **naive** timestamps are in: an IANA name (``"Europe/Helsinki"``,
``"America/New_York"``), ``"UTC"``, or a fixed offset (``"+02:00"``, ``"-0500"``, ``"UTC+2"``).
Without it naive times are UTC, except HistData (fixed UTC−05:00) and MetaTrader, whose times are the
broker's server time: they are read as UTC with a :class:`SourceWarning` asking for ``tz=``.
Timestamps that carry their own offset (``Z``, ``+02:00``, `` GMT+0200``) and epoch numbers are
absolute and ignore ``tz=``. With a zone that has daylight saving time, a local time that does not
exist (skipped when clocks go forward) or is ambiguous (repeated when they go back) raises a
``DataError`` naming the line; FX markets are closed at those hours (Sunday early morning), so such
a time means the zone is wrong.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import warnings
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from aiopt_lib.core.atomic import write_parquet_atomic
from aiopt_lib.core.bars import (
    ASK_COLUMNS,
    BID_COLUMNS,
    OPTIONAL_FLOAT_COLUMNS,
    PRICE_COLUMNS,
    TICK_COLUMNS,
    TS_DTYPE,
    as_utc,
    canonical_column_order,
    check_bars,
    ensure_bars,
    ensure_ticks,
    infer_timeframe,
    is_ticks,
    parse_timeframe,
    timeframe_label,
)
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data import dukascopy, store
from aiopt_lib.data.cleaning import CleaningPolicy, ValidationReport, clean_bars
from aiopt_lib.data.resample import resample_bars, ticks_to_bars

__all__ = [
    "CSV_FORMATS",
    "DEFAULT_SAMPLE",
    "LoadedBars",
    "RawSource",
    "SourceWarning",
    "build_sample",
    "list_samples",
    "load_bars",
    "load_bars_report",
    "load_sample",
    "read_csv_source",
    "read_frame_source",
    "read_parquet_source",
    "read_source",
    "sample_metadata",
    "sample_path",
    "sniff_csv_format",
]

CSV_FORMATS: tuple[str, ...] = ("dukascopy_csv", "histdata", "mt4", "mt5", "generic")
_OTHER_FORMATS: tuple[str, ...] = ("parquet", "dukascopy_bi5", "dukascopy_datafeed", "hive")
DEFAULT_SAMPLE = "eurusd_h1_2017"
_SAMPLE_PACKAGE_DIR = "data"
_METADATA_KEYS = ("symbol", "side", "timeframe", "source", "licence")
_HISTDATA_OFFSET = dt.timedelta(hours=-5)  # EST without daylight saving, all year
_TICK_TIMEFRAMES = frozenset({"tick", "ticks"})


class SourceWarning(UserWarning):
    """A reader assumed something (a time zone, a missing volume) or the cleaning repaired rows."""


def _warn(message: str) -> None:
    """Warn with the location of the first caller outside this module (the user's line)."""
    level = 2
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    warnings.warn(message, SourceWarning, stacklevel=level)


@dataclass(frozen=True, eq=False)
class RawSource:
    """What a reader produced, before cleaning.

    ``frame`` holds canonical columns plus ``row`` (bars), or canonical ticks (tick sources, no
    ``row``). ``row_kind`` is ``"line"`` (1-based line numbers of text files), ``"row"`` (0-based
    row index of Parquet files, frames and samples) or ``"record"`` (0-based record index of
    Dukascopy ``.bi5`` files).
    ``symbol``/``side`` are what the caller gave, else what the source says (Parquet metadata, the
    sample, a candle file's name) or its file name suggests (``EURUSD``, ``_ASK_``); None when
    unknown. ``timeframe`` is the bar length the source declares (None when it does not).
    ``ignored_columns`` lists source columns that were not read. ``notes`` says what the reader
    decided on its own that the user should know (a time column found by its content).
    """

    frame: pl.DataFrame
    source: str
    format: str
    row_kind: str
    symbol: str | None = None
    side: str | None = None
    timeframe: str | None = None
    ignored_columns: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def is_ticks(self) -> bool:
        """True when ``frame`` holds ticks (bid/ask quotes) rather than bars."""
        return is_ticks(self.frame)


@dataclass(frozen=True, eq=False)
class LoadedBars:
    """Canonical bars and the cleaning report of one :func:`load_bars_report` call.

    ``raw_rows`` counts the rows (or ticks) the reader produced, before trimming to
    ``start``/``end`` and before cleaning. ``notes`` are the reader's (:attr:`RawSource.notes`).
    """

    bars: pl.DataFrame
    report: ValidationReport
    raw_rows: int
    source: str
    format: str
    symbol: str | None = None
    side: str | None = None
    notes: tuple[str, ...] = ()

    def alerts(self) -> list[str]:
        """What the user should look at, one sentence each (what :func:`load_bars` warns about).

        The reader's notes, the counts when the cleaning changed the data, the price spikes it
        flagged and kept, and holes of a week or more without bars
        (:meth:`~aiopt_lib.data.cleaning.ValidationReport.long_gaps`).
        """
        report = self.report
        alerts = list(self.notes)
        if report.has_repairs or report.n_dropped:
            counts = ", ".join(f"{k}={v}" for k, v in report.summary().items() if v)
            alerts.append(f"cleaning changed the data ({counts})")
        spikes = report.issues.filter(
            (pl.col("kind") == "spike") & (pl.col("action").is_in(["flagged", ""]))
        )
        if spikes.height:
            first = spikes.row(0, named=True)
            alerts.append(
                f"{spikes.height} price spike(s) flagged and kept, the first at "
                f"{report.row_kind} {first['row']} ({first['ts']:%Y-%m-%d %H:%M}): "
                f"{first['detail']}"
            )
        holes = report.long_gaps().sort("duration", descending=True)
        if holes.height:
            longest = holes.row(0, named=True)
            days = longest["duration"] / dt.timedelta(days=1)
            alerts.append(
                f"{holes.height} hole(s) of a week or more without bars, the longest "
                f"{days:.1f} days from {longest['gap_start']:%Y-%m-%d %H:%M} to "
                f"{longest['gap_end']:%Y-%m-%d %H:%M}"
            )
        return alerts


# ---------------------------------------------------------------------------------------------
# Locating bad values


@dataclass(frozen=True)
class _Where:
    """Where the rows of a column come from: a file and each row's line number or record index."""

    file: str
    rows: pl.Series
    row_kind: str


def _raise_first(
    where: _Where, bad: pl.Series, *, field: str | None, message: str, values: pl.Series | None
) -> None:
    """Raise a DataError at the first True of ``bad`` (nulls count as False)."""
    bad = bad.fill_null(False)
    if not bad.any():
        return
    positions = bad.arg_true()
    first = int(positions[0])
    count = positions.len()
    if count > 1:
        message = f"{message} ({count} rows like this in all; the first is shown)"
    value = values[first] if values is not None else None
    raise DataError(
        message,
        file=where.file,
        row=int(where.rows[first]),
        field=field,
        value=value,
        row_kind=where.row_kind,
    )


# ---------------------------------------------------------------------------------------------
# Time zones and timestamps

_FIXED_OFFSET = re.compile(
    r"(?:UTC|GMT)?\s*(?:(?P<sign>[+-])(?P<hours>\d{1,2})(?::?(?P<minutes>\d{2}))?)?"
)


def _parse_tz(tz: str | None) -> dt.timedelta | str | None:
    """A fixed offset (timedelta), an IANA zone name, or None."""
    if tz is None:
        return None
    text = str(tz).strip()
    match = _FIXED_OFFSET.fullmatch(text.upper())
    if match and text:
        if not match.group("sign"):
            return dt.timedelta(0)
        offset = dt.timedelta(
            hours=int(match.group("hours")), minutes=int(match.group("minutes") or 0)
        )
        if offset > dt.timedelta(hours=14):
            raise ConfigError(f"tz offset {tz!r} is out of range (at most ±14:00)")
        return offset if match.group("sign") == "+" else -offset
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {tz!r}: use an IANA name like 'Europe/Helsinki' or an offset like '+02:00'"
        ) from exc
    return text


def _localize(
    naive: pl.Series,
    tz: dt.timedelta | str | None,
    where: _Where,
    field: str,
    *,
    skip: pl.Series | None = None,
) -> pl.Series:
    """Turn naive wall-clock times in ``tz`` into UTC; ``skip`` marks rows whose result is unused."""
    if tz is None or isinstance(tz, dt.timedelta):
        offset = tz or dt.timedelta(0)
        return (naive - offset).dt.replace_time_zone("UTC")
    local = naive.dt.replace_time_zone(tz, ambiguous="null", non_existent="null")
    bad = local.is_null() & naive.is_not_null()
    if skip is not None:
        bad = bad & ~skip
    if bad.any():
        first = int(bad.arg_true()[0])
        value = naive[first]
        resolved = pl.Series([value]).dt.replace_time_zone(
            tz, ambiguous="earliest", non_existent="null"
        )
        if resolved.is_null().all():
            message = f"local time does not exist in {tz} (clocks skip it when daylight saving time starts)"
        else:
            message = (
                f"local time is ambiguous in {tz} (it occurs twice when daylight saving time ends)"
            )
        _raise_first(
            where,
            bad,
            field=field,
            message=message
            + "; pass a fixed offset such as tz='+02:00' (CLI: --tz +02:00) if the file ignores DST",
            values=naive.cast(pl.String),
        )
    return local.dt.convert_time_zone("UTC")


@dataclass(frozen=True)
class _TimeFormat:
    name: str
    pattern: str  # named groups year, month, day, hour, minute, second, frac, zulu, sign, tzh, tzm
    example: str


_OFFSET_GROUPS = r"(?:(?P<zulu>Z)|(?P<sign>[+-])(?P<tzh>\d{2})(?::?(?P<tzm>\d{2}))?)"
_TIME_FORMATS: tuple[_TimeFormat, ...] = (
    _TimeFormat(
        "iso",
        r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
        r"(?:[T ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<frac>\d{1,9}))?)?)?"
        rf" ?{_OFFSET_GROUPS}?",
        "2017-01-02T22:00:00Z, 2017-01-02 22:00:00+02:00 or 2017-01-02 22:00:00",
    ),
    _TimeFormat(
        "dukascopy",
        r"(?P<day>\d{2})\.(?P<month>\d{2})\.(?P<year>\d{4})"
        r" (?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<frac>\d{1,9}))?"
        r"(?: GMT(?P<sign>[+-])(?P<tzh>\d{2}):?(?P<tzm>\d{2}))?",
        "02.01.2017 22:00:00.000 (optionally followed by ' GMT+0200')",
    ),
    _TimeFormat(
        "metatrader",
        r"(?P<year>\d{4})\.(?P<month>\d{2})\.(?P<day>\d{2})"
        r"(?: (?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?)?",
        "2017.01.02 22:00 or 2017.01.02 22:00:00",
    ),
    _TimeFormat(
        "histdata",
        r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})"
        r"(?: (?P<hour>\d{2})(?P<minute>\d{2})(?P<second>\d{2})(?P<frac>\d{3})?)?",
        "20170102 170000 or 20170102",
    ),
    _TimeFormat("epoch", r"-?\d{9,}(?:\.\d+)?", "epoch seconds or milliseconds like 1483394400"),
)
_TIME_FORMATS_BY_NAME = {f.name: f for f in _TIME_FORMATS}


_EPOCH_UNITS = ("seconds", "milliseconds", "microseconds", "nanoseconds")


def _epoch_to_utc(numbers: pl.Series, where: _Where | None = None, field: str = "ts") -> pl.Series:
    """Epoch numbers to UTC datetimes; the unit (s, ms, µs, ns) is read from the magnitude.

    Seconds below 1e11 (year 5138), then milliseconds below 1e14, microseconds below 1e17, else
    nanoseconds. The unit must be the same on every row: a value of another unit than the first
    row's raises a ``DataError`` at that row (``where`` locates it).
    """
    magnitude = numbers.cast(pl.Float64).abs()
    units = (
        pl.select(
            pl.when(magnitude < 1e11)
            .then(0)
            .when(magnitude < 1e14)
            .then(1)
            .when(magnitude < 1e17)
            .then(2)
            .otherwise(3)
        )
        .to_series()
        .filter(numbers.is_not_null())
    )
    unit = int(units[0]) if units.len() else 0
    if where is not None and units.n_unique() > 1:
        valid_rows = where.rows.filter(numbers.is_not_null())
        valid = numbers.filter(numbers.is_not_null())
        changed = units != unit
        first = int(changed.arg_true()[0])
        found = _EPOCH_UNITS[int(units[first])]
        _raise_first(
            _Where(where.file, valid_rows, where.row_kind),
            changed,
            field=field,
            message=(
                f"epoch unit changes: this value is in {found}, the first row's ({valid[0]}) in "
                f"{_EPOCH_UNITS[unit]}; a time column must keep one unit"
            ),
            values=valid.cast(pl.String),
        )
    per_unit_us = (1_000_000.0, 1_000.0, 1.0, 1e-3)[unit]
    if numbers.dtype.is_integer():
        values = numbers.cast(pl.Int64)
        micros = values // 1000 if per_unit_us < 1 else values * int(per_unit_us)
    else:
        micros = (numbers.cast(pl.Float64) * per_unit_us).round(0).cast(pl.Int64)
    return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")


def _parse_timestamps(
    text: pl.Series,
    where: _Where,
    field: str,
    *,
    tz: dt.timedelta | str | None,
    formats: Sequence[str] | None = None,
    time_format: str | None = None,
) -> pl.Series:
    """Parse timestamp strings into ``Datetime("us", "UTC")``; the first bad value raises.

    The format is recognised from the first value (among ``formats``, all by default) and every
    other value must follow it. ``time_format`` (a chrono/strftime pattern) skips the recognition.
    """
    text = text.str.strip_chars()
    _raise_first(
        where, text.is_null() | (text == ""), field=field, message="missing timestamp", values=None
    )
    if time_format is not None:
        parsed = text.str.strptime(pl.Datetime("us"), time_format, strict=False)
        _raise_first(
            where,
            parsed.is_null(),
            field=field,
            message=f"unparseable timestamp: does not match time_format {time_format!r}",
            values=text,
        )
        if parsed.dtype == pl.Datetime("us"):
            parsed = _localize(parsed, tz, where, field)
        return parsed.dt.convert_time_zone("UTC").cast(TS_DTYPE).rename("ts")
    candidates = [_TIME_FORMATS_BY_NAME[n] for n in formats] if formats else list(_TIME_FORMATS)
    first = str(text[0])
    chosen = next((f for f in candidates if re.fullmatch(f.pattern, first)), None)
    if chosen is None:
        expected = "; ".join(f.example for f in candidates)
        raise DataError(
            f"unrecognised timestamp format (expected {expected}); "
            "give its strftime pattern with time_format= (CLI: --time-format)",
            file=where.file,
            row=int(where.rows[0]),
            field=field,
            value=first,
            row_kind=where.row_kind,
        )
    anchored = f"^(?:{chosen.pattern})$"
    _raise_first(
        where,
        ~text.str.contains(anchored),
        field=field,
        message=f"unparseable timestamp: expected the format of the first row, {chosen.example}",
        values=text,
    )
    if chosen.name == "epoch":
        numbers = (
            text.cast(pl.Int64, strict=False)
            if not text.str.contains(r"\.").any()
            else text.cast(pl.Float64)
        )
        return _epoch_to_utc(numbers, where, field).rename("ts")
    parts = text.str.extract_groups(anchored).struct.unnest()

    def group(name: str, default: str) -> pl.Expr:
        return pl.col(name).fill_null(default) if name in parts.columns else pl.lit(default)

    parts = parts.select(
        pl.format(
            "{}-{}-{} {}:{}:{}",
            group("year", "1970"),
            group("month", "01"),
            group("day", "01"),
            group("hour", "00"),
            group("minute", "00"),
            group("second", "00"),
        )
        .str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False)
        .alias("base"),
        # fractions: keep microseconds, drop finer digits
        (group("frac", "") + pl.lit("000000")).str.slice(0, 6).cast(pl.Int64).alias("micros"),
        (group("zulu", "").ne("") | group("sign", "").ne("")).alias("has_offset"),
        pl.when(group("sign", "") == "-")
        .then(-1)
        .otherwise(1)
        .mul(group("tzh", "0").cast(pl.Int64) * 60 + group("tzm", "0").cast(pl.Int64))
        .alias("offset_minutes"),
    )
    _raise_first(
        where,
        parts.get_column("base").is_null(),
        field=field,
        message="unparseable timestamp: not a valid date and time",
        values=text,
    )
    naive = parts.select(pl.col("base") + pl.duration(microseconds=pl.col("micros"))).to_series()
    has_offset = parts.get_column("has_offset")
    if has_offset.any() and not has_offset.all():
        with_offset = bool(has_offset[0])
        style = (
            "has no UTC offset, the rows before it carry one"
            if with_offset
            else "carries a UTC offset, the rows before it have none"
        )
        _raise_first(
            where,
            has_offset != with_offset,
            field=field,
            message=(
                f"timestamp style changes: this one {style} (first row: {first!r}); every "
                "timestamp of a file must carry an offset, or none"
            ),
            values=text,
        )
    from_offset = (
        parts.select(
            (naive - pl.duration(minutes=pl.col("offset_minutes"))).dt.replace_time_zone("UTC")
        ).to_series()
        if has_offset.any()
        else None
    )
    if from_offset is not None and has_offset.all():
        return from_offset.rename("ts")
    local = _localize(naive, tz, where, field, skip=has_offset)
    if from_offset is not None:
        local = pl.select(pl.when(has_offset).then(from_offset).otherwise(local)).to_series()
    return local.cast(TS_DTYPE).rename("ts")


def _parse_floats(text: pl.Series, where: _Where, field: str) -> pl.Series:
    """Parse number strings into Float64; text that is not a number raises.

    An empty field becomes null and ``NaN``/``inf`` stay as they are: a missing or impossible
    value is data, not malformed text, and the cleaning's ``bad_prices`` policy drops, repairs or
    rejects it and reports the line.
    """
    text = text.str.strip_chars()
    empty = text.is_null() | (text == "")
    numbers = text.cast(pl.Float64, strict=False)
    _raise_first(
        where, numbers.is_null() & ~empty, field=field, message="unparseable number", values=text
    )
    return numbers


# ---------------------------------------------------------------------------------------------
# Text files: lines and fields


def _decode(data: bytes, path: Path) -> str:
    """Text of a file: UTF-16 with a byte-order mark (MetaTrader 5), else UTF-8 (BOM skipped)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid UTF-16 text: {exc.reason}", file=path) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"not UTF-8 text: {exc.reason}",
            file=path,
            row=line,
            value=data[exc.start : exc.start + 8],
        ) from exc


def _read_lines(path: Path) -> pl.DataFrame:
    """The non-blank lines of a text file: ``line`` (1-based number) and ``text``."""
    text = _decode(path.read_bytes(), path)
    if "\n" not in text and "\r" in text:  # classic Mac line ends
        text = text.replace("\r", "\n")
    return (
        pl.DataFrame({"text": [text]})
        .select(pl.col("text").str.split("\n").explode())
        .with_row_index("line", offset=1)
        .select(pl.col("line").cast(pl.Int64), pl.col("text").str.strip_chars_end("\r"))
        .filter(pl.col("text").str.strip_chars() != "")
    )


def _unquote(expr: pl.Expr) -> pl.Expr:
    stripped = expr.str.strip_chars()
    quoted = (
        stripped.str.starts_with('"')
        & stripped.str.ends_with('"')
        & (stripped.str.len_chars() >= 2)
    )
    return (
        pl.when(quoted)
        .then(stripped.str.slice(1, stripped.str.len_chars() - 2))
        .otherwise(stripped)
    )


def _split_fields(
    lines: pl.DataFrame, separator: str, names: Sequence[str], path: Path
) -> pl.DataFrame:
    """Split lines into string columns ``f0``.. plus ``row``; a wrong field count raises.

    Quoted fields are unquoted; a separator inside quotes is not supported (price files never need
    one) and shows up as a "too many fields" error naming the line.
    """
    parts = lines.select(
        pl.col("line").alias("row"), pl.col("text").str.split(separator).alias("_f")
    )
    counts = parts.get_column("_f").list.len()
    expected = len(names)
    bad = counts != expected
    if bad.any():
        first = int(bad.arg_true()[0])
        got = int(counts[first])
        fields = parts.get_column("_f")[first].to_list()
        listing = ", ".join(names)
        if got < expected:
            raise DataError(
                f"missing field: the line has {got} field(s), expected {expected} ({listing})",
                file=path,
                row=int(parts.get_column("row")[first]),
                field=names[got],
                value=separator.join(fields),
            )
        raise DataError(
            f"too many fields: the line has {got} fields, expected {expected} ({listing})",
            file=path,
            row=int(parts.get_column("row")[first]),
            field=f"#{expected + 1}",
            value=separator.join(fields[expected:]),
        )
    return parts.select(
        pl.col("row"),
        *[_unquote(pl.col("_f").list.get(i)).alias(f"f{i}") for i in range(expected)],
    )


def _normalise_name(name: str) -> str:
    """Header name for matching: lower case, ``<>`` and quotes removed, spaces to ``_``."""
    text = name.strip().strip('"').strip().strip("<>").strip().lower()
    return re.sub(r"[\s\-]+", "_", text)


def _sniff_separator(header: str) -> str:
    counts = {sep: header.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


_DUKASCOPY_TIME_NAMES = frozenset({"time", "gmt_time", "local_time"})
_HISTDATA_LINE = re.compile(r"\d{8} \d{6}(?:\d{3})?;")
_MT4_LINE = re.compile(r"\d{4}\.\d{2}\.\d{2},\d{2}:\d{2},")


def _sniff(first: str, second: str | None, line: int, path: Path) -> str:
    """The CSV format that the first two non-blank lines show (``line``: the first one's number)."""
    first = first.lstrip("\ufeff").strip()
    if first.upper().startswith("<DATE>"):
        return "mt5"
    if _HISTDATA_LINE.match(first):
        return "histdata"
    if _MT4_LINE.match(first):
        return "mt4"
    separator = _sniff_separator(first)
    names = [_normalise_name(n) for n in first.split(separator)]
    first_time = (second or "").split(separator)[0].strip().strip('"')
    if (
        len(names) == 6
        and names[0] in _DUKASCOPY_TIME_NAMES
        and names[1:] == ["open", "high", "low", "close", "volume"]
        and (second is None or re.fullmatch(_TIME_FORMATS_BY_NAME["dukascopy"].pattern, first_time))
    ):
        return "dukascopy_csv"
    if re.search(r"[A-Za-z]", first) and not any(
        re.fullmatch(f.pattern, n.strip()) for n in names for f in _TIME_FORMATS
    ):
        return "generic"
    raise DataError(
        f"cannot recognise the CSV format (known: {', '.join(CSV_FORMATS)}); "
        "name the format with format= (CLI: --format) or the columns with columns= "
        "(CLI: --columns); a generic CSV needs a header line",
        file=path,
        row=line,
        value=first,
    )


def sniff_csv_format(path: str | Path) -> str:
    """The CSV format of a file, recognised from its first line: one of :data:`CSV_FORMATS`.

    ``<DATE>`` header → ``"mt5"``; ``YYYYMMDD HHMMSS;`` → ``"histdata"``; ``YYYY.MM.DD,HH:MM,`` →
    ``"mt4"``; header ``Time|Gmt time|Local time,Open,High,Low,Close,Volume`` → ``"dukascopy_csv"``;
    any other header → ``"generic"``. A headerless line of unknown shape raises ``DataError``.
    """
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(65536)
    # only the head is read: a multi-byte character may be cut at its end, hence errors="replace"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", errors="replace")
    else:
        text = head.decode("utf-8-sig", errors="replace")
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not numbered:
        raise DataError("empty file: no data rows", file=path)
    second = numbered[1][1] if len(numbered) > 1 else None
    return _sniff(numbered[0][1], second, numbered[0][0], path)


# ---------------------------------------------------------------------------------------------
# Symbol and side from file names

_CURRENCY_CODES = (
    "USD EUR JPY GBP CHF AUD NZD CAD SEK NOK DKK PLN HUF CZK TRY ZAR MXN SGD HKD CNH CNY RUB ILS "
    "THB XAU XAG XPT XPD"
)
_CURRENCIES = frozenset(_CURRENCY_CODES.split())


def _guess_symbol(path: Path) -> str | None:
    """A currency pair named in the file name or, failing that, in a parent folder name."""
    for part in (path.stem, *[p.name for p in path.parents][:6]):
        for token in re.findall(r"(?<![A-Za-z])([A-Za-z]{6})(?![A-Za-z])", part):
            upper = token.upper()
            if upper[:3] in _CURRENCIES and upper[3:] in _CURRENCIES:
                return upper
    return None


def _guess_side(path: Path) -> str | None:
    tokens = {t.lower() for t in re.findall(r"[A-Za-z]+", path.stem)}
    sides = tokens & {"bid", "ask"}
    return sides.pop() if len(sides) == 1 else None


# ---------------------------------------------------------------------------------------------
# CSV readers

_TS_ALIASES = (
    "ts",
    "timestamp",
    "datetime",
    "date_time",
    "time",
    "gmt_time",
    "local_time",
    "utc_time",
    "time_utc",
    "open_time",
    "date",
)
_VALUE_ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "price", "last", "close_price"),
    "volume": ("volume", "vol", "v", "tickvol", "tick_volume", "tickvolume", "real_volume"),
}
_MAPPABLE = frozenset({"ts", *PRICE_COLUMNS, "volume", *OPTIONAL_FLOAT_COLUMNS})
_TIME_OF_DAY = re.compile(r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?")


@dataclass(frozen=True)
class _Layout:
    """Which header positions hold the time (one column, or a date and a time) and each value."""

    ts: tuple[int, ...]
    values: dict[str, int]
    ignored: tuple[str, ...]
    notes: tuple[str, ...] = ()


def _find_header(names: Sequence[str], wanted: str, key: str) -> int:
    """Position of a user-mapped column: exact name, then case-insensitive normalised name, then
    ``#N`` (the N-th column, 1-based: how a column without a header name is named)."""
    if wanted in names:
        return list(names).index(wanted)
    normalised = [_normalise_name(n) for n in names]
    if _normalise_name(wanted) in normalised:
        return normalised.index(_normalise_name(wanted))
    position = re.fullmatch(r"#(\d+)", str(wanted).strip())
    if position and 1 <= int(position.group(1)) <= len(names):
        return int(position.group(1)) - 1
    raise ConfigError(
        f"{wanted!r} is not a column of the file (given for {key!r}); the header has {list(names)}"
    )


# Time formats with separators are taken first: pure digits may be other numbers (ids, volumes).
_CONTENT_TIME_FORMATS = (("iso", "dukascopy", "metatrader"), ("histdata",), ("epoch",))
_EPOCH_RANGE = (dt.datetime(1990, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


def _looks_like_time(value: str, fmt: str) -> bool:
    """True when ``value`` reads as a timestamp in ``fmt``; digits-only formats need a plausible
    date (HistData with its time of day, epoch numbers between 1990 and 2100)."""
    value = value.strip().strip('"').strip()
    if not value or not re.fullmatch(_TIME_FORMATS_BY_NAME[fmt].pattern, value):
        return False
    if fmt == "histdata":
        return " " in value and 1990 <= int(value[:4]) < 2100
    if fmt == "epoch":
        number = abs(float(value))
        for per_second in (1, 1e3, 1e6, 1e9):
            if number / per_second < 1e11:
                break
        low, high = (t.timestamp() for t in _EPOCH_RANGE)
        return low <= number / per_second < high
    return True


def _time_column_by_content(
    names: Sequence[str], first_values: Sequence[str], taken: set[int]
) -> tuple[int, str] | None:
    """The first column (not in ``taken``) whose first value reads as a timestamp, and a note
    saying so; formats with separators win over digits-only ones."""
    for group in _CONTENT_TIME_FORMATS:
        for i, value in enumerate(first_values):
            if i in taken or not any(_looks_like_time(value, f) for f in group):
                continue
            unnamed = names[i] == f"#{i + 1}"
            label = (
                f"column {i + 1} (no header name)" if unnamed else f"column {i + 1}, '{names[i]}'"
            )
            note = (
                f"time taken from {label}: no column is named like a time, and its first value "
                f"{value.strip()!r} reads as a timestamp; if that is wrong, name the time column "
                f"with columns={{'ts': NAME}} (CLI: --columns ts=NAME)"
            )
            return i, note
    return None


def _value_positions(normalised: Sequence[str]) -> set[int]:
    """Columns that the name matching gives to prices, volume, bid/ask or spread."""
    known = {a for aliases in _VALUE_ALIASES.values() for a in aliases} | set(
        OPTIONAL_FLOAT_COLUMNS
    )
    return {i for i, n in enumerate(normalised) if n in known}


def _layout(
    names: Sequence[str],
    first_values: Sequence[str],
    columns: Mapping[str, Any] | None,
    path: Path | str,
    header_line: int | None,
) -> _Layout:
    """Map header names to canonical columns: the user's ``columns`` first, then aliases.

    ``header_line`` locates errors in a text file (None for tables).
    """
    normalised = [_normalise_name(n) for n in names]
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - _MAPPABLE)
    if unknown:
        raise ConfigError(
            f"columns (CLI: --columns) has unknown key(s) {unknown}; use {sorted(_MAPPABLE)}"
        )
    ts: tuple[int, ...]
    notes: tuple[str, ...] = ()
    if "ts" in mapping:
        wanted = mapping.pop("ts")
        pair = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        if not 1 <= len(pair) <= 2:
            raise ConfigError(
                "the time column ('ts' of columns) must be one column name or a (date, time) "
                "pair (CLI: --columns ts=NAME or ts=DATE+TIME)"
            )
        ts = tuple(_find_header(names, w, "ts") for w in pair)
    elif (
        "date" in normalised
        and "time" in normalised
        and _TIME_OF_DAY.fullmatch(first_values[normalised.index("time")].strip())
    ):
        ts = (normalised.index("date"), normalised.index("time"))
    else:
        found = next((normalised.index(a) for a in _TS_ALIASES if a in normalised), None)
        if found is None:
            mapped = {_find_header(names, w, k) for k, w in mapping.items()}
            by_content = _time_column_by_content(
                names, first_values, mapped | _value_positions(normalised)
            )
            if by_content is None:
                raise DataError(
                    f"no time column found (none is named {', '.join(_TS_ALIASES)}, and no "
                    "column's first value reads as a timestamp); name it with "
                    "columns={'ts': NAME} (CLI: --columns ts=NAME)",
                    file=path,
                    row=header_line,
                    value=list(names),
                )
            found, note = by_content
            notes = (note,)
        ts = (found,)
    values: dict[str, int] = {
        name: _find_header(names, wanted, name) for name, wanted in mapping.items()
    }
    taken = set(ts) | set(values.values())
    for name, aliases in _VALUE_ALIASES.items():
        if name in values:
            continue
        found = next(
            (
                normalised.index(a)
                for a in aliases
                if a in normalised and normalised.index(a) not in taken
            ),
            None,
        )
        if found is not None:
            values[name] = found
            taken.add(found)
    for name in OPTIONAL_FLOAT_COLUMNS:
        if name not in values and name in normalised and normalised.index(name) not in taken:
            values[name] = normalised.index(name)
            taken.add(values[name])
    missing = [c for c in PRICE_COLUMNS if c not in values]
    if missing:
        raise DataError(
            f"no column found for {missing}; name them with columns={{'{missing[0]}': NAME}} "
            f"(CLI: --columns {missing[0]}=NAME)",
            file=path,
            row=header_line,
            value=list(names),
        )
    for group in (BID_COLUMNS, ASK_COLUMNS):
        present = [c for c in group if c in values]
        if present and len(present) != len(group):
            raise DataError(
                f"the columns {list(group)} must come as a set, found only {present}",
                file=path,
                row=header_line,
            )
    ignored = tuple(n for i, n in enumerate(names) if i not in taken)
    return _Layout(ts=ts, values=values, ignored=ignored, notes=notes)


def _with_record_index(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``row`` = 0-based record index (Int64), as the last column."""
    return frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"))


def _raw_frame(ts: pl.Series, values: Mapping[str, pl.Series], rows: pl.Series) -> pl.DataFrame:
    frame = pl.DataFrame(
        [
            ts.rename("ts"),
            *[s.rename(n) for n, s in values.items()],
            rows.rename("row").cast(pl.Int64),
        ]
    )
    return canonical_column_order(frame)


def _metatrader_tz_warning(tz: str | None, fmt: str) -> None:
    if tz is None:
        _warn(
            f"{fmt} times are in the broker's server time, which aiopt cannot know: reading them as UTC. "
            "Pass tz= (e.g. tz='Europe/Helsinki' or tz='+02:00'; CLI: --tz) to convert them."
        )


def _read_headerless(
    path: Path,
    lines: pl.DataFrame,
    fmt: str,
    tz: str | None,
    time_format: str | None,
    separator: str | None,
) -> tuple[pl.DataFrame, tuple[str, ...]]:
    if fmt == "histdata":
        names = ["ts", "open", "high", "low", "close", "volume"]
        table = _split_fields(lines, separator or ";", names, path)
        time_text = table.get_column("f0")
        parsed_tz = _parse_tz(tz) if tz is not None else _HISTDATA_OFFSET
        value_start = 1
        formats = ["histdata"]
    else:  # mt4
        names = ["date", "time", "open", "high", "low", "close", "volume"]
        table = _split_fields(lines, separator or ",", names, path)
        time_text = table.select(
            pl.concat_str([pl.col("f0"), pl.col("f1")], separator=" ")
        ).to_series()
        parsed_tz = _parse_tz(tz)
        value_start = 2
        formats = ["metatrader"]
        _metatrader_tz_warning(tz, "MetaTrader 4")
    where = _Where(str(path), table.get_column("row"), "line")
    ts_field = "ts" if fmt == "histdata" else "date time"
    ts = _parse_timestamps(
        time_text, where, ts_field, tz=parsed_tz, formats=formats, time_format=time_format
    )
    values = {
        name: _parse_floats(table.get_column(f"f{value_start + i}"), where, name)
        for i, name in enumerate(("open", "high", "low", "close", "volume"))
    }
    return _raw_frame(ts, values, table.get_column("row")), ()


def _read_with_header(
    path: Path,
    lines: pl.DataFrame,
    fmt: str,
    tz: str | None,
    columns: Mapping[str, Any] | None,
    time_format: str | None,
    separator: str | None,
    digits: int | None,
) -> tuple[pl.DataFrame, tuple[str, ...], tuple[str, ...]]:
    """The frame, the ignored columns and the notes of a CSV with a header line."""
    header_line = int(lines.get_column("line")[0])
    header = str(lines.get_column("text")[0]).lstrip("\ufeff")
    sep = separator or ("\t" if fmt == "mt5" and "\t" in header else _sniff_separator(header))
    # a column without a header name (the index pandas' to_csv() writes) is called "#N"
    names = [n.strip().strip('"').strip() or f"#{i + 1}" for i, n in enumerate(header.split(sep))]
    data = lines.slice(1)
    if data.height == 0:
        raise DataError(
            "the file has a header but no data rows", file=path, row=header_line, value=header
        )
    table = _split_fields(data, sep, names, path)
    where = _Where(str(path), table.get_column("row"), "line")
    first_values = [str(table.get_column(f"f{i}")[0]) for i in range(len(names))]

    if fmt == "mt5" and columns is None:
        layout = _mt5_layout(names, path, header_line)
    else:
        layout = _layout(names, first_values, columns, path, header_line)
        if fmt == "dukascopy_csv" and len(layout.ts) != 1:
            raise DataError("a Dukascopy CSV has one time column", file=path, row=header_line)

    ts_field = " ".join(names[i] for i in layout.ts)
    time_text = table.select(
        pl.concat_str([pl.col(f"f{i}") for i in layout.ts], separator=" ")
    ).to_series()
    formats = {"dukascopy_csv": ["dukascopy"], "mt5": ["metatrader"]}.get(fmt)
    parsed_tz = _parse_tz(tz)
    if fmt == "mt5":
        _metatrader_tz_warning(tz, "MetaTrader 5")
    ts = _parse_timestamps(
        time_text, where, ts_field, tz=parsed_tz, formats=formats, time_format=time_format
    )

    values = {
        name: _parse_floats(table.get_column(f"f{i}"), where, names[i])
        for name, i in layout.values.items()
        if not name.startswith("_")
    }
    ignored = layout.ignored
    if fmt == "mt5":
        values, ignored = _mt5_values(table, layout, names, values, where, digits, ignored)
    if "volume" not in values:
        _warn(
            f"{path}: no volume column (looked for {', '.join(_VALUE_ALIASES['volume'])}); volume set to 0.0"
        )
        values["volume"] = pl.Series("volume", [0.0] * table.height, dtype=pl.Float64)
    return _raw_frame(ts, values, table.get_column("row")), ignored, layout.notes


def _mt5_layout(names: Sequence[str], path: Path, header_line: int) -> _Layout:
    normalised = [_normalise_name(n) for n in names]
    required = ["date", "open", "high", "low", "close"]
    missing = [f"<{n.upper()}>" for n in required if n not in normalised]
    if missing or not ({"tickvol", "vol"} & set(normalised)):
        raise DataError(
            f"not a MetaTrader 5 export: missing {missing or ['<TICKVOL>']}",
            file=path,
            row=header_line,
            value=list(names),
        )
    ts = (normalised.index("date"),) + ((normalised.index("time"),) if "time" in normalised else ())
    values = {n: normalised.index(n) for n in PRICE_COLUMNS}
    # the volume and spread columns are decided in _mt5_values; private keys keep them out of the frame
    for source, key in (("tickvol", "_tickvol"), ("vol", "_vol"), ("spread", "_spread")):
        if source in normalised:
            values[key] = normalised.index(source)
    taken = set(ts) | set(values.values())
    ignored = tuple(n for i, n in enumerate(names) if i not in taken)
    return _Layout(ts=ts, values=values, ignored=ignored)


def _mt5_values(
    table: pl.DataFrame,
    layout: _Layout,
    names: Sequence[str],
    values: dict[str, pl.Series],
    where: _Where,
    digits: int | None,
    ignored: tuple[str, ...],
) -> tuple[dict[str, pl.Series], tuple[str, ...]]:
    """MetaTrader 5 volume (real volume when it has any, else tick volume) and spread in price units."""
    extra = {
        key: _parse_floats(table.get_column(f"f{i}"), where, names[i])
        for key, i in layout.values.items()
        if key.startswith("_")
    }
    real = extra.get("_vol")
    use_real = real is not None and bool((real != 0).any())
    volume = real if use_real else extra.get("_tickvol")
    if volume is None:
        volume = pl.Series([0.0] * table.height, dtype=pl.Float64)
    values["volume"] = volume
    unused = "<TICKVOL>" if use_real else "<VOL>"
    if unused.strip("<>").lower() in [_normalise_name(n) for n in names]:
        ignored = (*ignored, unused)
    if "_spread" in extra:
        if digits is None:
            decimals = table.select(
                pl.max_horizontal(
                    pl.col(f"f{layout.values[c]}").str.extract(r"\.(\d+)$").str.len_chars().max()
                    for c in PRICE_COLUMNS
                )
            ).item()
            digits = int(decimals or 0)
        # SPREAD is in points; a point is 10**-digits, digits from the price strings
        values["spread"] = (extra["_spread"] * 10.0**-digits).round(digits + 2)
    return values, ignored


def read_csv_source(
    path: str | Path,
    *,
    format: str | None = None,
    tz: str | None = None,
    columns: Mapping[str, Any] | None = None,
    time_format: str | None = None,
    separator: str | None = None,
    digits: int | None = None,
    symbol: str | None = None,
    side: str | None = None,
) -> RawSource:
    """Read a CSV/text file of bars into a raw frame (canonical columns plus ``row`` = line number).

    ``format`` is one of :data:`CSV_FORMATS`; by default it is sniffed from the first line
    (:func:`sniff_csv_format`), or ``"generic"`` when ``columns`` is given.

    * ``"histdata"``: HistData.com documents its times as EST without daylight saving, a fixed
      UTC−05:00: 5 hours are added (``20170102 170000`` → 22:00 UTC). ``tz=`` replaces that
      assumption (``tz="America/New_York"`` for files that follow DST).
    * ``"mt4"`` / ``"mt5"``: times in the broker's server time, read as UTC with a
      :class:`SourceWarning` unless ``tz=`` is given. MT5 volume is ``<VOL>`` when it has any
      non-zero value, else ``<TICKVOL>``; ``<SPREAD>`` (points) becomes ``spread`` in price units,
      ``<SPREAD> × 10**-digits`` with ``digits`` = the most decimals among the price strings
      (override with ``digits=``).
    * ``"generic"``: a header names the columns, matched case-insensitively: time from ``ts``,
      ``timestamp``, ``datetime``, ``time``, ``date`` ... or a ``date`` + ``time`` pair; when no
      name matches, the first column whose first value reads as a timestamp (the unnamed index
      column that pandas' ``to_csv()`` writes), said in ``RawSource.notes``. A column without a
      header name is called ``#N`` (its 1-based position); ``open``/``o``,
      ``high``/``h``, ``low``/``l``, ``close``/``c``/``price``, ``volume``/``vol``/``tickvol``...;
      ``bid_*``, ``ask_*`` and ``spread`` (price units) are kept when named so. Timestamps: ISO 8601
      with or without ``T``, with ``Z``, an offset or naive (naive = ``tz``, default UTC); also
      ``DD.MM.YYYY HH:MM:SS``, ``YYYY.MM.DD HH:MM``, ``YYYYMMDD HHMMSS`` and epoch seconds /
      milliseconds (by magnitude). The format of the first row must hold for every row, with
      a UTC offset on every row or on none, and one epoch unit.
      ``columns={"ts": "Gmt time", "open": "O", ...}`` (or ``{"ts": ("Date", "Time")}``) overrides
      the name matching. A file without a volume column gets ``volume`` = 0.0 and a
      :class:`SourceWarning`: many price-only exports have none, and 0.0 is what the datafeed
      reports for a bar without trades.

    ``time_format`` (strftime/chrono, e.g. ``"%d/%m/%Y %H:%M"``) replaces timestamp recognition;
    ``separator`` replaces separator sniffing. Blank lines are skipped; line numbers count them.
    Other columns are not read and are listed in ``RawSource.ignored_columns``.

    Raises ``DataError`` naming file, line and field for an empty or header-only file, a missing or
    extra field, an unparseable number or timestamp.
    """
    path = Path(path)
    fmt = format or ("generic" if columns is not None else None)
    if fmt is not None and fmt not in CSV_FORMATS:
        raise ConfigError(f"unknown CSV format {format!r}; use one of {list(CSV_FORMATS)}")
    lines = _read_lines(path)
    if lines.height == 0:
        raise DataError("empty file: no data rows", file=path)
    if fmt is None:
        texts = lines.get_column("text").head(2).to_list()
        second = texts[1] if len(texts) > 1 else None
        fmt = _sniff(texts[0], second, int(lines.get_column("line")[0]), path)
    if fmt in ("histdata", "mt4"):
        if columns is not None:
            raise ConfigError(f"columns (CLI: --columns) need a header line; {fmt} files have none")
        frame, ignored = _read_headerless(path, lines, fmt, tz, time_format, separator)
        notes: tuple[str, ...] = ()
    else:
        frame, ignored, notes = _read_with_header(
            path, lines, fmt, tz, columns, time_format, separator, digits
        )
    return RawSource(
        frame=frame,
        source=str(path),
        format=fmt,
        row_kind="line",
        symbol=symbol or _guess_symbol(path),
        side=side or _guess_side(path),
        ignored_columns=ignored,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Frames and Parquet


def _frame_ts(
    frame: pl.DataFrame,
    name: str,
    where: _Where,
    tz: dt.timedelta | str | None,
    time_format: str | None,
) -> pl.Series:
    column = frame.get_column(name)
    _raise_first(where, column.is_null(), field=name, message="missing timestamp", values=None)
    dtype = column.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            return column.dt.convert_time_zone("UTC").cast(TS_DTYPE).rename("ts")
        return (
            _localize(column.cast(pl.Datetime("us")), tz, where, name).cast(TS_DTYPE).rename("ts")
        )
    if dtype == pl.Date:
        return (
            _localize(column.cast(pl.Datetime("us")), tz, where, name).cast(TS_DTYPE).rename("ts")
        )
    if dtype == pl.String:
        return _parse_timestamps(column, where, name, tz=tz, time_format=time_format)
    if dtype.is_numeric():
        return _epoch_to_utc(column, where, name).rename("ts")
    raise DataError(
        f"time column has dtype {dtype}, expected datetime, date, string or epoch numbers",
        file=where.file,
        field=name,
    )


def _frame_floats(frame: pl.DataFrame, name: str, where: _Where) -> pl.Series:
    column = frame.get_column(name)
    if column.dtype == pl.String:
        return _parse_floats(column, where, name)
    try:
        numbers = column.cast(pl.Float64, strict=False)
    except pl.exceptions.InvalidOperationError as exc:
        raise DataError(
            f"column has dtype {column.dtype}, expected numbers", file=where.file, field=name
        ) from exc
    _raise_first(
        where,
        numbers.is_null() & column.is_not_null(),
        field=name,
        message="not a number",
        values=column,
    )
    return numbers


def _frame_to_raw(
    frame: pl.DataFrame,
    label: str,
    *,
    tz: str | None,
    columns: Mapping[str, Any] | None,
    time_format: str | None,
) -> tuple[pl.DataFrame, tuple[str, ...], tuple[str, ...]]:
    """A table (Parquet or in-memory) as a raw bars frame with ``row`` = row index, or as ticks;
    also the ignored columns and the notes."""
    if frame.height == 0:
        raise DataError("no data rows", file=label)
    names = frame.columns
    normalised = [_normalise_name(n) for n in names]
    where = _Where(label, pl.Series("row", range(frame.height), dtype=pl.Int64), "row")
    mapping = dict(columns or {})
    notes: tuple[str, ...] = ()
    if "ts" in mapping:
        ts_name = names[_find_header(names, mapping.pop("ts"), "ts")]
    else:
        found = next(
            (normalised.index(a) for a in (*_TS_ALIASES, "index") if a in normalised), None
        )
        datetimes = [n for n in names if isinstance(frame.schema[n], pl.Datetime | pl.Date)]
        if found is not None:
            ts_name = names[found]
        elif len(datetimes) == 1:
            ts_name = datetimes[0]
            notes = (
                f"time taken from column {ts_name!r}, the only date/time column (no column is "
                "named like a time); if that is wrong, name the time column with "
                "columns={'ts': NAME} (CLI: --columns ts=NAME)",
            )
        else:
            # string columns only: numbers in a table are never taken for epoch times unasked
            strings = [str(frame[0, n]) if frame.schema[n] == pl.String else "" for n in names]
            by_content = (
                None
                if datetimes
                else _time_column_by_content(names, strings, _value_positions(normalised))
            )
            if by_content is None:
                several = f" (several date/time columns: {datetimes})" if datetimes else ""
                raise DataError(
                    f"no time column found{several}: none is named "
                    f"{', '.join(_TS_ALIASES)}; name it with columns={{'ts': NAME}} "
                    "(CLI: --columns ts=NAME)",
                    file=label,
                    value=list(names),
                )
            ts_name, notes = names[by_content[0]], (by_content[1],)
    ts = _frame_ts(frame, ts_name, where, _parse_tz(tz), time_format)

    lowered = dict(zip(normalised, names, strict=True))
    if {"bid", "ask"} <= set(lowered) and not ({"open", "close"} & set(lowered)) and not mapping:
        ticks = {c: _frame_floats(frame, lowered[c], where) for c in ("bid", "ask")}
        for c in ("bid_volume", "ask_volume"):
            if c in lowered:
                ticks[c] = _frame_floats(frame, lowered[c], where)
            else:
                _warn(f"{label}: no {c} column; {c} set to 0.0")
                ticks[c] = pl.Series(c, [0.0] * frame.height, dtype=pl.Float64)
        out = pl.DataFrame([ts, *[s.rename(n) for n, s in ticks.items()]]).select(TICK_COLUMNS)
        ignored = tuple(n for n in names if n != ts_name and _normalise_name(n) not in TICK_COLUMNS)
        return out, ignored, notes

    layout = _layout(names, [""] * len(names), {"ts": ts_name, **mapping}, label, None)
    values = {name: _frame_floats(frame, names[i], where) for name, i in layout.values.items()}
    if "volume" not in values:
        _warn(f"{label}: no volume column; volume set to 0.0")
        values["volume"] = pl.Series("volume", [0.0] * frame.height, dtype=pl.Float64)
    ignored = layout.ignored
    out = _raw_frame(ts, values, where.rows)
    if "flags" in normalised:
        # repairs recorded by an earlier aiopt run stay visible
        out = out.with_columns(_frame_flags(frame, lowered["flags"], where))
        ignored = tuple(n for n in ignored if _normalise_name(n) != "flags")
    if "row" in normalised:
        ignored = tuple(n for n in ignored if _normalise_name(n) != "row")
    return canonical_column_order(out), ignored, notes


def _frame_flags(frame: pl.DataFrame, name: str, where: _Where) -> pl.Series:
    """The ``flags`` column as UInt32: integers from 0 to 2**32 - 1 (a bit set); nulls are 0."""
    column = frame.get_column(name)
    if not column.dtype.is_integer():
        raise DataError(
            f"flags column has dtype {column.dtype}, expected non-negative integers (a bit set)",
            file=where.file,
            field=name,
        )
    wide = column.cast(pl.Int128) if column.dtype != pl.UInt64 else column
    _raise_first(
        where,
        (wide < 0) | (wide > 2**32 - 1),
        field=name,
        message="flags must be a bit set: an integer from 0 to 4294967295",
        values=column,
    )
    return column.cast(pl.UInt32).rename("flags")


def read_parquet_source(
    path: str | Path,
    *,
    tz: str | None = None,
    columns: Mapping[str, Any] | None = None,
    time_format: str | None = None,
    symbol: str | None = None,
    side: str | None = None,
) -> RawSource:
    """Read a Parquet file of bars (or ticks) into a raw frame with ``row`` = 0-based row index.

    The time column is ``ts`` or a recognised alias (or the only datetime column); a naive
    datetime column is in ``tz`` (default UTC), a string column is parsed like a CSV's, integers
    are epoch numbers. Columns are matched like :func:`read_csv_source`'s generic format. A table
    with ``bid``/``ask`` and no ``open``/``close`` is read as ticks. Key-value metadata ``symbol``,
    ``side`` and ``timeframe`` (written by :func:`build_sample` and aiopt's writers) fill in what
    the caller did not give.
    """
    path = Path(path)
    try:
        frame = pl.read_parquet(path)
        metadata = pl.read_parquet_metadata(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", file=path) from exc
    raw, ignored, notes = _frame_to_raw(
        frame, str(path), tz=tz, columns=columns, time_format=time_format
    )
    stored_side = metadata.get("side")
    conflict = side and stored_side and side != stored_side and f"{side}_open" not in raw.columns
    if conflict and not is_ticks(raw):
        raise ConfigError(
            f"{path} holds {stored_side} prices (its metadata says so); it cannot give side={side!r}"
        )
    return RawSource(
        frame=raw,
        source=str(path),
        format="parquet",
        row_kind="row",
        symbol=symbol or metadata.get("symbol") or _guess_symbol(path),
        side=side or stored_side or _guess_side(path),
        timeframe=metadata.get("timeframe"),
        ignored_columns=ignored,
        notes=notes,
    )


def read_frame_source(
    frame: Any,
    *,
    tz: str | None = None,
    columns: Mapping[str, Any] | None = None,
    time_format: str | None = None,
    symbol: str | None = None,
    side: str | None = None,
    name: str | None = None,
) -> RawSource:
    """Read a polars or pandas DataFrame (or polars LazyFrame) into a raw frame, ``row`` = position.

    A pandas ``DatetimeIndex`` becomes the time column. Column matching and time handling are those
    of :func:`read_parquet_source`.
    """
    label = name or f"<{type(frame).__module__.split('.')[0]} {type(frame).__name__}>"
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    if not isinstance(frame, pl.DataFrame):
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is a dependency
            raise ConfigError(f"cannot read a {type(frame).__name__}") from exc
        if not isinstance(frame, pd.DataFrame):
            raise ConfigError(f"expected a polars or pandas DataFrame, got {type(frame).__name__}")
        if isinstance(frame.index, pd.DatetimeIndex):
            frame = frame.reset_index(names=frame.index.name or "ts")
        frame = pl.from_pandas(frame)
    raw, ignored, notes = _frame_to_raw(
        frame, label, tz=tz, columns=columns, time_format=time_format
    )
    return RawSource(
        frame=raw,
        source=label,
        format="frame",
        row_kind="row",
        symbol=symbol,
        side=side,
        ignored_columns=ignored,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Embedded samples


def _sample_dir() -> Path:
    return Path(str(resources.files("aiopt_lib") / _SAMPLE_PACKAGE_DIR))


def list_samples() -> list[str]:
    """Names of the data sets shipped in ``aiopt_lib/data`` (for ``load_sample`` / ``"sample:<name>"``)."""
    return sorted(p.stem for p in _sample_dir().glob("*.parquet"))


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """The Parquet file of a shipped sample (``ConfigError`` naming the available ones if unknown)."""
    path = _sample_dir() / f"{name}.parquet"
    if not path.is_file():
        raise ConfigError(f"unknown sample {name!r}; available: {list_samples()}")
    return path


def sample_metadata(name: str = DEFAULT_SAMPLE) -> dict[str, str]:
    """The key-value metadata of a shipped sample: symbol, side, timeframe, source, licence."""
    metadata = pl.read_parquet_metadata(sample_path(name))
    return {k: v for k, v in metadata.items() if k in _METADATA_KEYS}


def load_sample(name: str = DEFAULT_SAMPLE) -> pl.DataFrame:
    """A shipped sample as canonical bars (sorted, unique ``ts``, no ``row`` column).

    The default, ``"eurusd_h1_2017"``, is 6,225 hourly EURUSD **ask** bars in UTC from
    2017-01-01 22:00 to 2017-12-29 21:00 (gym-anytrading, MIT licence; see
    ``aiopt_lib/data/README.md``).
    """
    return ensure_bars(pl.read_parquet(sample_path(name)), source=f"sample:{name}")


def build_sample(
    csv_path: str | Path,
    out_path: str | Path,
    *,
    symbol: str = "EURUSD",
    side: str = "ask",
    source: str = (
        "gym-anytrading (github.com/AminHP/gym-anytrading), dataset FOREX_EURUSD_1H_ASK, "
        "in Dukascopy's CSV export format"
    ),
    licence: str = "MIT, Copyright (c) 2019 Mohammad Amin Haghpanah; see LICENSE-eurusd_h1",
) -> Path:
    """Convert a Dukascopy-format CSV into a shipped sample Parquet file (zstd, atomic write).

    This is how ``aiopt_lib/data/eurusd_h1_2017.parquet`` is made from
    ``tests/data/eurusd_h1/EURUSD_1H_ASK_2017.csv``; the result is canonical bars without ``row``,
    with key-value metadata ``symbol``, ``side``, ``timeframe`` (inferred), ``source`` and
    ``licence``. A CSV that is not already sorted and unique raises ``DataError``: a sample must not
    need cleaning.
    """
    raw = read_csv_source(csv_path, format="dukascopy_csv")
    bars = raw.frame.drop("row")
    problems = check_bars(bars)
    if problems:
        raise DataError("cannot build a sample from it: " + "; ".join(problems), file=csv_path)
    timeframe = infer_timeframe(bars)
    metadata = {
        "symbol": symbol,
        "side": side,
        "timeframe": timeframe_label(timeframe) if timeframe is not None else "",
        "source": source,
        "licence": licence,
    }
    return write_parquet_atomic(bars, out_path, metadata=metadata, compression="zstd")


# ---------------------------------------------------------------------------------------------
# Dukascopy files and folders


def _has_year_folders(path: Path) -> bool:
    return any(p.is_dir() and re.fullmatch(r"\d{4}", p.name) for p in path.iterdir())


def _datafeed_root(path: Path, symbol: str | None) -> tuple[Path, str]:
    """The cache folder (holding ``SYMBOL/YYYY/...``) and the symbol of a datafeed directory.

    ``path`` is either the cache folder or one instrument's folder (which holds year folders).
    """
    if symbol is not None:
        wanted = symbol.upper()
        if (path / wanted).is_dir():
            return path, wanted
        if path.name.upper() == wanted:
            return path.parent, wanted
        raise DataError(f"no {wanted} folder in this Dukascopy datafeed directory", file=path)
    if _has_year_folders(path):
        return path.parent, path.name.upper()
    candidates = sorted(p.name for p in path.iterdir() if p.is_dir() and _has_year_folders(p))
    if len(candidates) == 1:
        return path, candidates[0].upper()
    found = f"found {', '.join(candidates)}" if candidates else "no SYMBOL/YYYY folders found"
    raise ConfigError(f"{path}: pass symbol= (CLI: --symbol) to pick the instrument ({found})")


def _datafeed_timeframe(timeframe: str | None) -> str:
    """The coarsest datafeed candle (1d, 1h, 1m) that ``timeframe`` is a whole multiple of."""
    wanted = parse_timeframe(timeframe or "1m")
    for candle in ("1d", "1h", "1m"):
        if wanted % parse_timeframe(candle) == dt.timedelta(0):
            return candle
    raise ConfigError(
        f"timeframe {timeframe!r} is not a whole number of minutes; the datafeed's finest bars are 1m"
    )


def _read_dukascopy(
    path: Path,
    *,
    symbol: str | None,
    side: str | None,
    timeframe: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    point_value: int | None,
    from_ticks: bool,
) -> RawSource:
    """One ``.bi5`` file (ticks or candles), or ``[start, end)`` of a datafeed-layout folder."""
    if path.is_dir():
        if start is None or end is None:
            raise ConfigError(
                "a Dukascopy datafeed directory needs start= and end= (CLI: --start, --end)"
            )
        cache_dir, symbol = _datafeed_root(path, symbol)
        # mid prices exist only in the ticks (candle files hold one side each)
        want_ticks = (
            from_ticks
            or side == "mid"
            or (timeframe is not None and timeframe.lower() in _TICK_TIMEFRAMES)
        )
        load_timeframe = "tick" if want_ticks else _datafeed_timeframe(timeframe)
        if not want_ticks and side not in (None, "bid", "ask", "both"):
            raise ConfigError(f"datafeed candles are 'bid', 'ask' or 'both', not side={side!r}")
        extra = {} if point_value is None else {"point_value": point_value}
        frame = dukascopy.load(
            symbol,
            start,
            end,
            timeframe=load_timeframe,
            side="bid" if want_ticks else side or "bid",
            cache_dir=cache_dir,
            offline=True,
            progress=False,
            **extra,
        )
        fmt = "dukascopy_datafeed"
        known_timeframe = None if want_ticks else load_timeframe
        side = side if want_ticks else side or "bid"
    else:
        info = dukascopy.parse_datafeed_path(path)
        frame = dukascopy.read_file(path, symbol=symbol, point_value=point_value)
        fmt = "dukascopy_bi5"
        symbol = symbol.upper() if symbol else info.symbol
        known_timeframe = None
        if info.side is not None:  # a candle file holds one side
            if side is not None and side != info.side:
                raise ConfigError(f"{path} holds {info.side} candles; it cannot give side={side!r}")
            side = info.side
            known_timeframe = timeframe_label(info.kind[1] + info.kind[0])  # "h1" -> "1h"
    if not is_ticks(frame) and "row" not in frame.columns:
        # record index in the order the reader returned the candles (file order)
        frame = _with_record_index(frame)
    return RawSource(
        frame=frame,
        source=str(path),
        format=fmt,
        row_kind="record",
        symbol=symbol,
        side=side,
        timeframe=known_timeframe,
    )


def _read_dataset(
    path: Path,
    *,
    symbol: str | None,
    side: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> RawSource:
    """``[start, end)`` of a bars dataset (:mod:`aiopt_lib.data.store`): only the years of the
    range and the columns of ``side`` are read (``bid``/``ask`` from a two-sided dataset leave
    the other side's columns on disk)."""
    info = store.dataset_metadata(path, symbol)
    read_side = None if side == info["side"] else side
    frame = store.read_bars(path, info["symbol"], start, end, side=read_side)
    return RawSource(
        frame=_with_record_index(frame),
        source=info["folder"],
        format="hive",
        row_kind="row",
        symbol=info["symbol"],
        side=side or info["side"] or None,
        timeframe=info["timeframe"] or None,
    )


# ---------------------------------------------------------------------------------------------
# The entry points


def read_source(
    source: Any,
    *,
    format: str | None = None,
    symbol: str | None = None,
    side: str | None = None,
    timeframe: str | None = None,
    tz: str | None = None,
    columns: Mapping[str, Any] | None = None,
    start: Any = None,
    end: Any = None,
    time_format: str | None = None,
    separator: str | None = None,
    digits: int | None = None,
    point_value: int | None = None,
    from_ticks: bool = False,
) -> RawSource:
    """Read any source into a :class:`RawSource` (raw frame with ``row``, or ticks), no cleaning.

    ``source`` is ``"sample"`` / ``"sample:<name>"``, a path (``.csv``/``.txt``/``.tsv`` →
    :func:`read_csv_source`, ``.parquet`` → :func:`read_parquet_source`, ``.bi5`` → one Dukascopy
    file, a bars dataset folder (``symbol=.../year=...``, :mod:`aiopt_lib.data.store`; ``symbol``
    picks the instrument), another directory → the Dukascopy datafeed layout, which needs
    ``start``/``end`` and reads ``timeframe`` bars, or ticks for ``timeframe="tick"`` or
    ``from_ticks=True``), or a polars / pandas DataFrame. ``format`` forces a reader: one of
    :data:`CSV_FORMATS`, ``"parquet"``, ``"dukascopy_bi5"``, ``"dukascopy_datafeed"``,
    ``"hive"``. ``start``/``end`` are used only by the datafeed and dataset readers (they read
    only that range; :func:`load_bars` trims every source).
    """
    if format is not None and format not in (*CSV_FORMATS, *_OTHER_FORMATS):
        raise ConfigError(
            f"unknown format {format!r}; use one of {[*CSV_FORMATS, *_OTHER_FORMATS]}"
        )
    if isinstance(source, str) and (source == "sample" or source.startswith("sample:")):
        name = source.partition(":")[2] or DEFAULT_SAMPLE
        bars = load_sample(name)
        info = sample_metadata(name)
        if side is not None and side != info.get("side"):
            raise ConfigError(
                f"sample {name!r} holds {info.get('side')} prices; it cannot give side={side!r}"
            )
        return RawSource(
            frame=_with_record_index(bars),
            source=f"sample:{name}",
            format="sample",
            row_kind="row",
            symbol=info.get("symbol"),
            side=info.get("side"),
            timeframe=info.get("timeframe") or None,
        )
    if isinstance(source, pl.DataFrame | pl.LazyFrame) or type(source).__name__ == "DataFrame":
        return read_frame_source(
            source, tz=tz, columns=columns, time_format=time_format, symbol=symbol, side=side
        )
    if not isinstance(source, str | Path):
        raise ConfigError(f"cannot load bars from a {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError("no such file or directory", file=path)
    suffix = path.suffix.lower()
    if format == "hive" or (format is None and store.is_dataset(path)):
        return _read_dataset(
            path,
            symbol=symbol,
            side=side,
            start=as_utc(start, "start"),
            end=as_utc(end, "end"),
        )
    if format in ("dukascopy_bi5", "dukascopy_datafeed") or (
        format is None and (path.is_dir() or suffix == ".bi5")
    ):
        return _read_dukascopy(
            path,
            symbol=symbol,
            side=side,
            timeframe=timeframe,
            start=as_utc(start, "start"),
            end=as_utc(end, "end"),
            point_value=point_value,
            from_ticks=from_ticks,
        )
    if format == "parquet" or (format is None and suffix in (".parquet", ".pq")):
        return read_parquet_source(
            path, tz=tz, columns=columns, time_format=time_format, symbol=symbol, side=side
        )
    if format in CSV_FORMATS or (format is None and suffix in (".csv", ".txt", ".tsv", ".prn")):
        return read_csv_source(
            path,
            format=format,
            tz=tz,
            columns=columns,
            time_format=time_format,
            separator=separator,
            digits=digits,
            symbol=symbol,
            side=side,
        )
    raise ConfigError(
        f"{path}: unknown file type {suffix or '(none)'}; pass format= (CLI: --format)"
    )


def _trim(frame: pl.DataFrame, start: dt.datetime | None, end: dt.datetime | None) -> pl.DataFrame:
    if start is not None:
        frame = frame.filter(pl.col("ts") >= start)
    if end is not None:
        frame = frame.filter(pl.col("ts") < end)
    return frame


def _pick_side(frame: pl.DataFrame, side: str | None, source: str) -> pl.DataFrame:
    """Make ``side``'s ``bid_*``/``ask_*`` columns the main OHLC when a frame has both sides.

    Without those columns the bars are whatever side the source holds (``side`` only labels
    them); ``"both"`` keeps the main columns and needs both ``bid_*`` and ``ask_*``.
    """
    if side in ("bid", "ask") and f"{side}_open" in frame.columns:
        return frame.with_columns(pl.col(f"{side}_{c}").alias(c) for c in PRICE_COLUMNS)
    if side in (None, "bid", "ask"):
        return frame
    if side == "both" and "bid_open" in frame.columns and "ask_open" in frame.columns:
        return frame
    raise ConfigError(f"side={side!r} needs ticks or bid_/ask_ columns; {source} has plain bars")


def load_bars_report(
    source: Any,
    *,
    format: str | None = None,
    symbol: str | None = None,
    timeframe: str | None = None,
    side: str | None = None,
    tz: str | None = None,
    columns: Mapping[str, Any] | None = None,
    start: Any = None,
    end: Any = None,
    policy: CleaningPolicy | None = None,
    **options: Any,
) -> LoadedBars:
    """Like :func:`load_bars`, returning the bars with the cleaning report (:class:`LoadedBars`).

    Emits no repair warning: the report is the caller's to read.
    """
    start_utc, end_utc = as_utc(start, "start"), as_utc(end, "end")
    if start_utc is not None and end_utc is not None and start_utc >= end_utc:
        raise ConfigError(f"start ({start_utc}) must be before end ({end_utc})")
    tick_request = timeframe is not None and str(timeframe).lower() in _TICK_TIMEFRAMES
    raw = read_source(
        source,
        format=format,
        symbol=symbol,
        side=side,
        timeframe=timeframe,
        tz=tz,
        columns=columns,
        start=start_utc,
        end=end_utc,
        **options,
    )
    if raw.is_ticks:
        ticks = ensure_ticks(_trim(raw.frame, start_utc, end_utc), source=raw.source)
        bar_timeframe = "1m" if timeframe is None or tick_request else timeframe
        price = side or "bid"
        if price not in ("bid", "ask", "mid", "both"):
            raise ConfigError(f"side must be 'bid', 'ask', 'mid' or 'both' for ticks, got {side!r}")
        frame = ticks_to_bars(ticks, bar_timeframe, price=price)
        source_timeframe: str | None = timeframe_label(bar_timeframe)
        resample_to = None
        side_label = price
    else:
        if tick_request:
            raise ConfigError(
                f"timeframe={timeframe!r} needs a tick source; {raw.source} holds bars"
            )
        if raw.format == "hive":
            # the dataset reader read only the side and the range asked for: no copy to trim
            frame = raw.frame
        else:
            frame = _trim(_pick_side(raw.frame, side, raw.source), start_utc, end_utc)
        source_timeframe = raw.timeframe
        resample_to = timeframe
        side_label = side or raw.side
    bars, report = clean_bars(
        frame,
        policy if policy is not None else CleaningPolicy(),
        source=raw.source,
        timeframe=source_timeframe,
        row_kind=raw.row_kind,
    )
    if resample_to is not None:
        try:
            if source_timeframe is None or parse_timeframe(resample_to) != parse_timeframe(
                source_timeframe
            ):
                bars = resample_bars(bars, resample_to)
        except ValueError as exc:
            raise ConfigError(f"{raw.source}: {exc}") from exc
    return LoadedBars(
        bars=ensure_bars(bars, source=raw.source),
        report=report,
        raw_rows=raw.frame.height,
        source=raw.source,
        format=raw.format,
        symbol=raw.symbol,
        side=side_label,
        notes=raw.notes,
    )


def load_bars(
    source: Any,
    *,
    format: str | None = None,
    symbol: str | None = None,
    timeframe: str | None = None,
    side: str | None = None,
    tz: str | None = None,
    columns: Mapping[str, Any] | None = None,
    start: Any = None,
    end: Any = None,
    policy: CleaningPolicy | None = None,
    **options: Any,
) -> pl.DataFrame:
    """Canonical bars from any source: sample, CSV, Parquet, Dukascopy file or folder, DataFrame.

    Reads with :func:`read_source` (``format``, ``symbol``, ``side``, ``tz``, ``columns`` and
    ``**options`` such as ``time_format=``, ``separator=``, ``digits=``, ``point_value=``,
    ``from_ticks=`` go there), turns ticks into bars (``timeframe``, default ``"1m"``, priced by
    ``side``, default ``"bid"``), trims to ``[start, end)`` (naive = UTC), cleans with
    :func:`aiopt_lib.data.cleaning.clean_bars` under ``policy`` (default ``CleaningPolicy()``), and for bar
    sources resamples up to ``timeframe`` when given. One :class:`SourceWarning` sums up what needs
    a look (:meth:`LoadedBars.alerts`): a time column found by its content, the counts when
    cleaning repaired or dropped rows, flagged spikes, holes of a week or more. Use
    :func:`load_bars_report` for the full report.
    """
    loaded = load_bars_report(
        source,
        format=format,
        symbol=symbol,
        timeframe=timeframe,
        side=side,
        tz=tz,
        columns=columns,
        start=start,
        end=end,
        policy=policy,
        **options,
    )
    alerts = loaded.alerts()
    if alerts:
        _warn(f"{loaded.source}: {'; '.join(alerts)}; load_bars_report() returns the full report")
    return loaded.bars
