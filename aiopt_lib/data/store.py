"""Years of 1-minute bars on disk: a Hive-partitioned Parquet dataset, written month by month and
read lazily.

Why
---
Ten years of 1-minute EUR/USD are 3.7 million bars, and the Dukascopy ticks they come from are
hundreds of millions of quotes: a mirror of the datafeed must never be in memory at once, and a
study of 2019 should not read 2012. So bars live in one Parquet file per month, in folders that
name the instrument and the year (Hive partitioning, readable by polars, pyarrow, DuckDB or
Spark as they are)::

    ROOT/symbol=EURUSD/year=2017/part-2017-01.parquet
    ROOT/symbol=EURUSD/year=2017/part-2017-02.parquet
    ROOT/symbol=EURUSD/year=2018/part-2018-01.parquet

A part holds canonical bars (:mod:`aiopt_lib.core.bars`: ``ts`` the open time in UTC, Float64
prices; no ``row``, no partition columns) sorted by ``ts``, and key-value metadata ``symbol``,
``side``, ``timeframe`` and ``source``. Every part of one instrument has the same columns.

* :func:`aggregate_ticks` turns a Dukascopy datafeed mirror (``SYMBOL/YYYY/MM/DD/HHh_ticks.bi5``,
  months 0-based, as :func:`aiopt_lib.data.dukascopy.download` caches it) into 1-minute bars, one
  month at a time, holding less than ``batch_ticks`` ticks plus one hour file, and one month of
  bars. A minute never spans two hour files, so the result equals
  :func:`aiopt_lib.data.resample.ticks_to_bars` of all the ticks at once, exactly.
* :func:`write_bars` stores a bars frame (eager or lazy; a lazy one is collected a month at a
  time).
* :func:`scan_bars` is the lazy reader: a ``polars.LazyFrame`` that reads only the years of
  ``[start, end)`` (the ``year=`` folders are pruned before any file is opened) and only the
  columns the query needs; :func:`read_bars` collects and validates it.

Writes are atomic (a part appears whole or not at all; a crash leaves at most a hidden
``.part-*.tmp.parquet`` beside it, which readers never see) and resumable: each part written by
:func:`aggregate_ticks` records a fingerprint of its month's tick files (names and sizes) and of
the options, so a rerun skips the months already done and rebuilds only those whose files
changed (a month that was still running when it was downloaded, say).

The dataset is also a source of :func:`aiopt_lib.data.sources.load_bars`: ``load_bars(ROOT,
symbol="EURUSD", start=..., end=...)`` (or ``format="hive"``) reads it like any file, with the
validation and cleaning every source gets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from aiopt_lib.core.atomic import write_parquet_atomic
from aiopt_lib.core.bars import (
    ASK_COLUMNS,
    BID_COLUMNS,
    PRICE_COLUMNS,
    as_utc,
    canonical_column_order,
    ensure_bars,
    infer_timeframe,
    timeframe_label,
)
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data import dukascopy
from aiopt_lib.data.resample import ticks_to_bars

__all__ = [
    "DEFAULT_BATCH_TICKS",
    "AggregationReport",
    "aggregate_ticks",
    "dataset_metadata",
    "dataset_symbols",
    "read_bars",
    "scan_bars",
    "write_bars",
]

Price = Literal["bid", "ask", "mid", "both"]

DEFAULT_BATCH_TICKS = 1_000_000
"""Ticks aggregated in one polars call by :func:`aggregate_ticks` (whole hour files are added
until the batch reaches it): about 100 MB of working memory, whatever the size of the mirror."""

_FINGERPRINT_KEY = "aiopt_fingerprint"
_SYMBOL_PREFIX = "symbol="
_HIVE_SCHEMA = {"symbol": pl.String, "year": pl.Int64}  # the partition columns, left out
_PRICES: tuple[str, ...] = ("bid", "ask", "mid", "both")


@dataclass(frozen=True)
class AggregationReport:
    """What :func:`aggregate_ticks` did.

    ``written``: the part files written, in time order; ``skipped``: months whose part was
    already there with the same fingerprint. Over the months written: ``files`` tick files read,
    ``empty_files`` of them without ticks (0-byte hours, the weekend's), ``ticks`` decoded,
    ``bars`` written. ``max_ticks_in_flight``: the most ticks held at once, the bound on the
    aggregator's memory (less than ``batch_ticks`` plus one hour file; exactly the largest hour
    file with ``batch_ticks=1``).
    """

    written: tuple[Path, ...]
    skipped: int
    files: int
    empty_files: int
    ticks: int
    bars: int
    max_ticks_in_flight: int


# ---------------------------------------------------------------------------------------------
# Paths and symbols


def _check_symbol(symbol: str) -> str:
    name = str(symbol).strip().upper().replace("/", "")
    if not re.fullmatch(r"[A-Z0-9_.-]+", name):
        raise ConfigError(f"not an instrument name: {symbol!r} (letters and digits, e.g. 'EURUSD')")
    return name


def part_path(root: str | Path, symbol: str, year: int, month: int) -> Path:
    """The file of ``symbol``'s bars of ``year``-``month`` (1-based month) under ``root``."""
    name = _check_symbol(symbol)
    return (
        Path(root)
        / f"{_SYMBOL_PREFIX}{name}"
        / f"year={year:04d}"
        / f"part-{year:04d}-{month:02d}.parquet"
    )


def is_dataset(path: str | Path) -> bool:
    """True when ``path`` is a bars dataset root (it holds ``symbol=...`` folders) or one
    instrument's folder of it (``symbol=EURUSD``, holding ``year=...`` folders)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if path.name.startswith(_SYMBOL_PREFIX):
        return True
    return any(p.is_dir() and p.name.startswith(_SYMBOL_PREFIX) for p in path.iterdir())


def dataset_symbols(root: str | Path) -> list[str]:
    """The instruments a dataset root holds (its ``symbol=`` folders), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name.removeprefix(_SYMBOL_PREFIX)
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(_SYMBOL_PREFIX)
    )


def _symbol_dir(root: str | Path, symbol: str | None) -> tuple[Path, str]:
    """The ``symbol=`` folder to read and its instrument; ``root`` may be that folder itself."""
    path = Path(root)
    if path.name.startswith(_SYMBOL_PREFIX):
        own = path.name.removeprefix(_SYMBOL_PREFIX)
        if symbol is not None and _check_symbol(symbol) != own:
            raise ConfigError(f"{path} holds {own}, not {_check_symbol(symbol)}")
        return path, own
    if not path.is_dir():
        raise DataError("no such bars dataset folder", file=path)
    if symbol is not None:
        name = _check_symbol(symbol)
        folder = path / f"{_SYMBOL_PREFIX}{name}"
        if not folder.is_dir():
            found = ", ".join(dataset_symbols(path)) or "none"
            raise DataError(f"no {name} bars in this dataset (instruments: {found})", file=path)
        return folder, name
    symbols = dataset_symbols(path)
    if len(symbols) == 1:
        return path / f"{_SYMBOL_PREFIX}{symbols[0]}", symbols[0]
    found = f"found {', '.join(symbols)}" if symbols else "no symbol=... folders found"
    raise ConfigError(f"{path}: pass symbol= (CLI: --symbol) to pick the instrument ({found})")


def _parts(folder: Path) -> list[Path]:
    """The part files of one instrument, in time order (hidden temporary files left out)."""
    return sorted(
        folder.glob("year=[0-9][0-9][0-9][0-9]/part-[0-9][0-9][0-9][0-9]-[0-9][0-9].parquet")
    )


def _check_range(start: object, end: object) -> tuple[dt.datetime | None, dt.datetime | None]:
    lo, hi = as_utc(start, "start"), as_utc(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"start ({lo}) must be before end ({hi})")
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Writing


def _metadata(
    symbol: str, side: str | None, timeframe: str | None, source: str, fingerprint: str | None
) -> dict[str, str]:
    metadata = {
        "symbol": symbol,
        "side": side or "",
        "timeframe": timeframe or "",
        "source": source,
    }
    if fingerprint is not None:
        metadata[_FINGERPRINT_KEY] = fingerprint
    return metadata


def _check_columns(folder: Path, target: Path, frame: pl.DataFrame) -> None:
    """Every part of an instrument has the same schema, or a lazy scan of them would fail."""
    for other in _parts(folder):
        if other == target:
            continue
        schema = pl.read_parquet_schema(other)
        if dict(schema) != dict(frame.schema):
            raise DataError(
                f"the dataset's parts have columns {list(schema)} ({other.name} and the others); "
                f"these bars have {list(frame.schema)}: write them to another root, or remove "
                "the instrument's folder first",
                file=other,
            )
        return


def _write_part(
    frame: pl.DataFrame,
    root: Path,
    symbol: str,
    year: int,
    month: int,
    metadata: dict[str, str],
) -> Path:
    target = part_path(root, symbol, year, month)
    _check_columns(target.parent.parent, target, frame)
    return write_parquet_atomic(frame, target, metadata=metadata)


def _month_slices(ts: pl.Series) -> list[tuple[int, int, int, int]]:
    """(year, month, offset, length) of each calendar month in sorted ``ts``."""
    key = (ts.dt.year().cast(pl.Int32) * 12 + ts.dt.month().cast(pl.Int32) - 1).to_numpy()
    starts = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1))
    ends = np.concatenate((starts[1:], [len(key)]))
    return [
        (int(key[s]) // 12, int(key[s]) % 12 + 1, int(s), int(e - s))
        for s, e in zip(starts, ends, strict=True)
    ]


def write_bars(
    bars: pl.DataFrame | pl.LazyFrame,
    root: str | Path,
    symbol: str,
    *,
    side: str | None = None,
    timeframe: str | None = None,
    source: str = "frame",
) -> list[Path]:
    """Store ``bars`` (canonical bars) under ``root`` as ``symbol``'s parts; the paths written.

    Each calendar month of ``bars`` **replaces** that month's part (a month is written whole,
    atomically); months ``bars`` does not touch are left as they are. ``side`` (``"bid"``,
    ``"ask"``, ``"mid"``, ``"both"`` when ``bid_*``/``ask_*`` columns are there) and
    ``timeframe`` (default: inferred) go into the parts' metadata for the readers. A
    ``LazyFrame`` is collected one month at a time, so a dataset larger than memory can be
    rewritten from a lazy query (of :func:`scan_bars`, say). Raises ``DataError`` when the
    columns differ from those of the parts already stored for ``symbol``.
    """
    name = _check_symbol(symbol)
    root = Path(root)
    if side is None and all(c in bars.collect_schema() for c in (*BID_COLUMNS, *ASK_COLUMNS)):
        side = "both"
    written: list[Path] = []
    if isinstance(bars, pl.LazyFrame):
        bounds = bars.select(
            pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi")
        ).collect()
        lo, hi = bounds.row(0)
        if lo is None:
            return written
        month = dt.datetime(lo.year, lo.month, 1, tzinfo=dt.UTC)
        while month <= hi:
            following = dt.datetime(
                month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC
            )
            frame = bars.filter((pl.col("ts") >= month) & (pl.col("ts") < following)).collect()
            if frame.height:
                frame = ensure_bars(canonical_column_order(frame))
                label = timeframe or _timeframe_of(frame)
                meta = _metadata(name, side, label, source, None)
                written.append(_write_part(frame, root, name, month.year, month.month, meta))
            month = following
        return written
    frame = ensure_bars(canonical_column_order(bars))
    if frame.height == 0:
        return written
    meta = _metadata(name, side, timeframe or _timeframe_of(frame), source, None)
    for year, month_number, offset, length in _month_slices(frame.get_column("ts")):
        part = frame.slice(offset, length)
        written.append(_write_part(part, root, name, year, month_number, meta))
    return written


def _timeframe_of(frame: pl.DataFrame) -> str | None:
    td = infer_timeframe(frame)
    return timeframe_label(td) if td is not None else None


# ---------------------------------------------------------------------------------------------
# Ticks -> 1-minute bars, month by month


def _mirror_dir(mirror: Path, symbol: str | None) -> tuple[Path, str]:
    """The instrument folder of a datafeed mirror (``mirror`` is the cache or that folder)."""
    if not mirror.is_dir():
        raise DataError("no such Dukascopy datafeed mirror folder", file=mirror)

    def has_years(path: Path) -> bool:
        return any(p.is_dir() and re.fullmatch(r"\d{4}", p.name) for p in path.iterdir())

    if symbol is not None:
        name = _check_symbol(symbol)
        if (mirror / name).is_dir():
            return mirror / name, name
        if mirror.name.upper() == name and has_years(mirror):
            return mirror, name
        raise DataError(f"no {name} folder in this Dukascopy datafeed mirror", file=mirror)
    if has_years(mirror):
        return mirror, mirror.name.upper()
    candidates = sorted(p.name for p in mirror.iterdir() if p.is_dir() and has_years(p))
    if len(candidates) == 1:
        return mirror / candidates[0], candidates[0].upper()
    found = f"found {', '.join(candidates)}" if candidates else "no SYMBOL/YYYY folders found"
    raise ConfigError(f"{mirror}: pass symbol= (CLI: --symbol) to pick the instrument ({found})")


def _month_dirs(folder: Path, lo: dt.datetime | None, hi: dt.datetime | None) -> list[Path]:
    """The month folders (``YYYY/MM``, 0-based) of an instrument that may hold hours of
    ``[lo, hi)``, in time order."""
    months = []
    for year_dir in sorted(folder.glob("[0-9][0-9][0-9][0-9]")):
        year = int(year_dir.name)
        after = hi is not None and dt.datetime(year, 1, 1, tzinfo=dt.UTC) >= hi
        if not after and (lo is None or year >= lo.year):
            months += sorted(year_dir.glob("[0-9][0-9]"))
    return months


def _month_files(
    month_dir: Path, lo: dt.datetime | None, hi: dt.datetime | None
) -> list[tuple[Path, dukascopy.DatafeedFile]]:
    """A month folder's tick files that overlap ``[lo, hi)``, in time order, with what each
    holds (its path is checked: a folder that names no real date is an error naming it)."""
    files = []
    for path in sorted(month_dir.glob("[0-9][0-9]/[0-9][0-9]h_ticks.bi5")):
        info = dukascopy.parse_datafeed_path(path)
        if (lo is None or info.end > lo) and (hi is None or info.start < hi):
            files.append((path, info))
    return files


def _fingerprint(
    files: Sequence[tuple[Path, dukascopy.DatafeedFile]],
    *,
    price: str,
    divisor: int,
    lo: dt.datetime | None,
    hi: dt.datetime | None,
) -> str:
    """What a month's part was built from: its tick files (datafeed path and size) and the
    options. Sizes, not contents: reading every file to hash it would cost what rebuilding does."""
    digest = hashlib.sha256()
    options = {"price": price, "point_value": divisor, "start": str(lo), "end": str(hi), "v": 1}
    digest.update(json.dumps(options, sort_keys=True).encode())
    for path, info in files:
        digest.update(f"\n{info.relative_path}:{path.stat().st_size}".encode())
    return f"{len(files)} files sha256:{digest.hexdigest()}"


def _stored_fingerprint(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return pl.read_parquet_metadata(path).get(_FINGERPRINT_KEY)
    except (pl.exceptions.PolarsError, OSError):
        return None  # a damaged part is rebuilt


def aggregate_ticks(
    mirror: str | Path,
    root: str | Path,
    symbol: str | None = None,
    *,
    start: object = None,
    end: object = None,
    price: Price = "both",
    point_value: int | None = None,
    overwrite: bool = False,
    batch_ticks: int = DEFAULT_BATCH_TICKS,
    progress: bool = False,
) -> AggregationReport:
    """1-minute bars from the tick files of a Dukascopy mirror into the dataset at ``root``,
    streaming: memory stays bounded by ``batch_ticks`` (plus one hour file and one month of bars)
    whatever the size of the mirror.

    ``mirror`` is a datafeed-layout folder (the ``cache_dir`` of
    :func:`aiopt_lib.data.dukascopy.download`, or its instrument folder); ``symbol`` picks the
    instrument when it holds several. ``start``/``end`` (``[start, end)``, naive = UTC) limit the
    hours read. The bars are :func:`aiopt_lib.data.resample.ticks_to_bars` of the ticks with
    ``price`` (default ``"both"``: bid in the main columns, ``bid_*``, ``ask_*``, and ``spread``
    the mean quoted spread), exactly as if all ticks were aggregated at once: a minute never
    spans two hour files, so aggregating whole files in batches changes nothing.

    Month by month, whole hour files are decoded and added to a batch until it holds
    ``batch_ticks`` ticks or more; the batch becomes bars and is dropped; the month's bars are
    written as one part, atomically. A part already there whose fingerprint (the month's tick files, their
    sizes, and these options) matches is skipped, so a rerun after an interruption resumes
    where it stopped; ``overwrite=True`` rebuilds every month. A corrupt or truncated file
    raises ``DataError`` naming the file and the record, and the months before it stay written.
    """
    if price not in _PRICES:
        raise ConfigError(f"price must be one of {_PRICES}, got {price!r}")
    if isinstance(batch_ticks, bool) or not isinstance(batch_ticks, int) or batch_ticks < 1:
        raise ConfigError(f"batch_ticks must be an int >= 1, got {batch_ticks!r}")
    folder, name = _mirror_dir(Path(mirror), symbol)
    divisor = dukascopy.point_value(name, point_value)
    lo, hi = _check_range(start, end)
    root = Path(root)
    months = _month_dirs(folder, lo, hi)
    written: list[Path] = []
    skipped = files_read = empty = ticks_read = bars_written = in_flight = 0
    with tqdm(
        total=len(months), desc=f"{name} ticks -> 1m", unit="month", disable=not progress
    ) as bar:
        for month_dir in months:
            files = _month_files(month_dir, lo, hi)  # one month's names listed at a time
            if not files:
                bar.update(1)
                continue
            year, month = files[0][1].start.year, files[0][1].start.month
            target = part_path(root, name, year, month)
            fingerprint = _fingerprint(files, price=price, divisor=divisor, lo=lo, hi=hi)
            if not overwrite and _stored_fingerprint(target) == fingerprint:
                skipped += 1
                bar.update(1)
                continue
            pieces: list[pl.DataFrame] = []
            batch: list[pl.DataFrame] = []
            held = 0
            for path, _info in files:
                ticks = dukascopy.read_file(path, symbol=name, point_value=divisor)
                files_read += 1
                empty += ticks.height == 0
                if lo is not None or hi is not None:
                    ticks = _trim(ticks, lo, hi)
                if ticks.height == 0:
                    continue
                batch.append(ticks)
                held += ticks.height
                ticks_read += ticks.height
                in_flight = max(in_flight, held)
                if held >= batch_ticks:  # full: becomes bars before the next file is read
                    pieces.append(ticks_to_bars(pl.concat(batch), "1m", price=price))
                    batch, held = [], 0
            if batch:
                pieces.append(ticks_to_bars(pl.concat(batch), "1m", price=price))
            del batch
            bars = pl.concat(pieces) if pieces else _empty_minutes(price)
            meta = _metadata(name, price, "1m", f"dukascopy ticks {folder}", fingerprint)
            written.append(_write_part(bars, root, name, year, month, meta))
            bars_written += bars.height
            bar.update(1)
    return AggregationReport(
        written=tuple(written),
        skipped=skipped,
        files=files_read,
        empty_files=empty,
        ticks=ticks_read,
        bars=bars_written,
        max_ticks_in_flight=in_flight,
    )


def _trim(frame: pl.DataFrame, lo: dt.datetime | None, hi: dt.datetime | None) -> pl.DataFrame:
    if lo is not None:
        frame = frame.filter(pl.col("ts") >= lo)
    if hi is not None:
        frame = frame.filter(pl.col("ts") < hi)
    return frame


def _empty_minutes(price: str) -> pl.DataFrame:
    """The schema of ``ticks_to_bars(..., price=price)`` without rows (a month of empty hours)."""
    ticks = dukascopy.decode_ticks(b"", dt.datetime(2000, 1, 1), point_value=1)
    return ticks_to_bars(ticks, "1m", price=price)


# ---------------------------------------------------------------------------------------------
# Reading


def _side_columns(
    names: Sequence[str], stored: str, side: str | None, where: Path
) -> list[pl.Expr]:
    """The columns to read for ``side``: all of them (None), or one side's as the main OHLC."""
    if side is None:
        return [pl.col(c) for c in names]
    if side not in _PRICES:
        raise ConfigError(f"side must be one of {_PRICES} or None, got {side!r}")
    two_sided = (*BID_COLUMNS, *ASK_COLUMNS)
    has_both = all(c in names for c in two_sided)
    if side == "both":
        if not has_both:
            raise ConfigError(
                f"{where} holds {stored or 'one-sided'} bars; side='both' needs bid_* and ask_* columns"
            )
        return [pl.col(c) for c in names]
    if stored and stored not in (side, "both"):
        raise ConfigError(f"{where} holds {stored} bars; it cannot give side={side!r}")
    if has_both and side in ("bid", "ask"):
        return [
            pl.col(f"{side}_{c}").alias(c) if c in PRICE_COLUMNS else pl.col(c)
            for c in names
            if c not in two_sided
        ]
    if side == "mid" and stored != "mid":
        raise ConfigError(
            f"{where} holds {stored or 'unlabelled'} bars; mid bars are aggregated from ticks "
            "(aggregate_ticks(..., price='mid'))"
        )
    return [pl.col(c) for c in names if c not in two_sided]


def _footer(part: Path) -> tuple[list[str], dict[str, str]]:
    """A part's column names and key-value metadata (``DataError`` naming it if unreadable)."""
    try:
        return list(pl.read_parquet_schema(part)), pl.read_parquet_metadata(part)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"not a readable Parquet part: {exc}", file=part) from None


def _in_range(parts: Sequence[Path], lo: dt.datetime | None, hi: dt.datetime | None) -> list[Path]:
    """The parts whose ``year=`` folder overlaps ``[lo, hi)``: partition pruning on the folder
    names, before any file is opened."""
    first = lo.year if lo is not None else None
    last = (hi - dt.timedelta(microseconds=1)).year if hi is not None else None
    kept = []
    for part in parts:
        year = int(part.parent.name.removeprefix("year="))
        if (first is None or year >= first) and (last is None or year <= last):
            kept.append(part)
    return kept


def _scan(
    root: str | Path, symbol: str | None, start: object, end: object, side: str | None
) -> tuple[pl.LazyFrame, list[Path], Path]:
    folder, name = _symbol_dir(root, symbol)
    lo, hi = _check_range(start, end)
    parts = _parts(folder)
    if not parts:
        raise DataError(f"no {name} bars in this dataset (no part files)", file=folder)
    chosen = _in_range(parts, lo, hi)
    names, metadata = _footer(chosen[0] if chosen else parts[0])
    columns = _side_columns(names, metadata.get("side", ""), side, folder)
    if not chosen:
        empty = pl.read_parquet(parts[0], n_rows=0)
        return empty.lazy().select(columns), chosen, folder
    frame = pl.scan_parquet(chosen, hive_partitioning=True, hive_schema=_HIVE_SCHEMA)
    if lo is not None:
        frame = frame.filter(pl.col("ts") >= lo)
    if hi is not None:
        frame = frame.filter(pl.col("ts") < hi)
    return frame.select(columns), chosen, folder


def scan_bars(
    root: str | Path,
    symbol: str | None = None,
    start: object = None,
    end: object = None,
    *,
    side: str | None = None,
) -> pl.LazyFrame:
    """``symbol``'s bars of ``[start, end)`` as a lazy query; nothing is read until collected.

    ``root`` is the dataset root (``symbol`` picks the instrument; optional when there is one)
    or the instrument's ``symbol=...`` folder. ``start``/``end``: datetimes (naive = UTC), dates
    or ISO strings; either may be None (open-ended). Partition pruning: the ``year=`` folders
    outside the range are left out before any of their files is opened (a damaged part of
    another year does not matter); within the range, polars skips the row groups that the
    ``ts`` filter excludes, by their statistics, and reads only the columns the query uses.
    ``side``: None gives the stored columns; ``"bid"``/``"ask"`` put that side in the main OHLC
    and leave out the ``bid_*``/``ask_*`` columns (two thirds of the bytes of a two-sided
    dataset stay on disk); ``"both"`` needs them. The rows come in time order. A damaged part
    surfaces when the query is collected; :func:`read_bars` names it.
    """
    return _scan(root, symbol, start, end, side)[0]


def dataset_metadata(root: str | Path, symbol: str | None = None) -> dict[str, str]:
    """What the dataset says about ``symbol``'s bars (from its first part): ``symbol``,
    ``side`` (``"bid"``, ``"ask"``, ``"mid"`` or ``"both"``; empty when unknown), ``timeframe``
    (e.g. ``"1m"``), ``source``, plus ``folder``, the ``symbol=`` folder, and ``parts``, how many
    months are stored."""
    folder, name = _symbol_dir(root, symbol)
    parts = _parts(folder)
    if not parts:
        raise DataError(f"no {name} bars in this dataset (no part files)", file=folder)
    stored = _footer(parts[0])[1]
    info = {key: stored.get(key, "") for key in ("side", "timeframe", "source")}
    return {"symbol": name, **info, "folder": str(folder), "parts": str(len(parts))}


def read_bars(
    root: str | Path,
    symbol: str | None = None,
    start: object = None,
    end: object = None,
    *,
    side: str | None = None,
) -> pl.DataFrame:
    """:func:`scan_bars` collected and checked to be canonical bars (``BarsSchemaError``, naming
    the dataset folder, otherwise). No cleaning: the parts were stored clean or as aggregated;
    :func:`aiopt_lib.data.sources.load_bars` on the dataset validates and cleans."""
    query, parts, folder = _scan(root, symbol, start, end, side)
    try:
        frame = query.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        for part in parts:  # polars' message does not say which file: find it, a month at a time
            try:
                pl.read_parquet(part)
            except (pl.exceptions.PolarsError, OSError) as bad:
                raise DataError(f"not a readable Parquet part: {bad}", file=part) from None
        raise DataError(f"cannot read the dataset: {exc}", file=folder) from None
    return ensure_bars(frame, source=str(folder))
