"""One table style for every report: great_tables for summaries, itables for long sortable lists.

A polars frame displayed as-is in a notebook shows ``shape: (5, 9)``, a dtype row, quoted strings,
microsecond timestamps and ``…`` in place of the rows that matter. Reports show instead:

- :func:`table` — a great_tables ``GT`` with every row, numbers rounded by magnitude (2 decimals
  around 1, up to 4 for small values, none for large ones; prices to 5), shares as percentages,
  timestamps to the minute (dates alone when every value is midnight), lists joined, missing
  values as ``–``, an optional title and source note. great_tables writes its CSS inline and
  fetches nothing, so the HTML reports stay offline.
- :func:`sortable_table` — the same formatting, as an itables DataTable (sortable, searchable,
  paged) for lists such as trades; the DataTables bundle ships inside the itables package and is
  embedded in the notebook by the first such table (``connected=False``), so it works offline too.
  Numbers stay numbers there (rounded, shares as ``… %`` columns), so sorting is numeric.

Column formats are inferred from dtype and name and can be set explicitly: ``percent`` (fractions
shown as percentages; by default the columns named like returns, drawdowns, win rates, shares), ``decimals`` (column → decimals), ``money`` (thousands separators and 2
decimals).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl
from great_tables import GT

__all__ = [
    "FRACTION_PATTERN",
    "PRICE_COLUMNS",
    "SortableTable",
    "decimals_for",
    "display_frame",
    "sortable_table",
    "table",
]

PRICE_COLUMNS = frozenset(
    {
        "open",
        "high",
        "low",
        "close",
        "lowest",
        "highest",
        "price",
        "entry_price",
        "exit_price",
        "avg_px",
        "avg_px_open",
        "avg_px_close",
        "stop",
        "target",
    }
)
"""Columns shown with 5 decimals (an FX pip is the 4th; EUR/USD quotes carry the 5th)."""

FRACTION_PATTERN = re.compile(
    r"(^|_| )(return|drawdown|max_dd|win_rate|win rate|exposure|share)($|_| )", re.IGNORECASE
)
"""Column names whose numbers are fractions shown as percentages when ``percent`` is not given
(``total_return``, ``oos_max_dd``, ``win_rate``, ``share``); names ending in a unit
(``return_pct``, ``mean_abs_return_bp``) are left alone."""

# names that carry their own unit: never fractions to show as percentages
_UNIT_SUFFIXES = ("pct", "percent", "_bp", "_pips", "_pip", "_days", "_hours")
_PRICE_DECIMALS = 5
# whole numbers that name something rather than count it: no thousands separator
_LABEL_INTEGERS = frozenset({"year", "month", "day", "hour", "rank", "fold", "trial", "pid", "row"})
_MISSING = "–"


def decimals_for(values: pl.Series) -> int:
    """Decimals for a float column by the magnitude of its typical value: 2 around 1 (a Sharpe
    of 1.23), one more per tenfold smaller (0.0123 → 4, capped at 4), fewer for larger values
    (12.3 → 1, 1,234 → 0)."""
    finite = values.cast(pl.Float64).abs()
    finite = finite.filter(finite.is_finite() & (finite > 0))
    if finite.is_empty():
        return 2
    typical = float(finite.median())  # type: ignore[arg-type]
    return int(min(4, max(0, 2 - math.floor(math.log10(typical)))))


def _is_temporal(dtype: pl.DataType) -> bool:
    return dtype.is_temporal() and not isinstance(dtype, pl.Duration | pl.Time)


def _time_text(column: pl.Series) -> pl.Series:
    """Datetimes to the minute (seconds only where a value has them), dates alone when every value
    is midnight; rounded to the second first, so ``23:00:00.000001`` reads ``23:00``."""
    if column.dtype == pl.Date:
        return column.dt.strftime("%Y-%m-%d")
    rounded = column.dt.round("1s")
    parts = rounded.drop_nulls()
    if parts.is_empty():
        return pl.Series(column.name, [None] * len(column), dtype=pl.String)
    if ((parts.dt.hour() == 0) & (parts.dt.minute() == 0) & (parts.dt.second() == 0)).all():
        fmt = "%Y-%m-%d"
    elif (parts.dt.second() == 0).all():
        fmt = "%Y-%m-%d %H:%M"
    else:
        fmt = "%Y-%m-%d %H:%M:%S"
    return rounded.dt.strftime(fmt)


def display_frame(
    frame: pl.DataFrame,
    *,
    percent: Iterable[str] | None = None,
    decimals: Mapping[str, int] | None = None,
    money: Iterable[str] = (),
    numeric: bool = False,
) -> tuple[pl.DataFrame, dict[str, tuple[str, int]]]:
    """``frame`` prepared for display and each numeric column's format.

    Temporal columns become text (:func:`_time_text`), list columns their items joined by ``, ``,
    booleans ``yes``/``no``, durations their text. Returns the frame and ``{column: (kind,
    decimals)}`` with ``kind`` one of ``percent``, ``number``, ``integer``, ``money``. With
    ``numeric=True`` (sortable tables) the numbers are rounded in the frame itself and percent
    columns multiplied by 100 and renamed ``"<name> %"``.
    """
    if percent is None:
        percent = [
            c
            for c, t in frame.schema.items()
            if t.is_float()
            and FRACTION_PATTERN.search(c)
            and not c.lower().endswith(_UNIT_SUFFIXES)
        ]
    percent, money = set(percent), set(money)
    decimals = dict(decimals or {})
    unknown = (percent | money | set(decimals)) - set(frame.columns)
    if unknown:
        raise ValueError(f"no column(s) {sorted(unknown)} in the table; it has {frame.columns}")
    formats: dict[str, tuple[str, int]] = {}
    columns: list[pl.Series] = []
    for column in frame.iter_columns():
        name, dtype = column.name, column.dtype
        if _is_temporal(dtype):
            column = _time_text(column)
        elif isinstance(dtype, pl.List | pl.Array):
            column = column.cast(pl.List(pl.String)).list.join(", ")
        elif dtype == pl.Boolean:
            column = column.replace_strict({True: "yes", False: "no"}, return_dtype=pl.String)
        elif isinstance(dtype, pl.Duration | pl.Time | pl.Struct | pl.Object):
            column = column.cast(pl.String) if not isinstance(dtype, pl.Object) else column
        elif dtype.is_numeric():
            if name in percent:
                formats[name] = ("percent", decimals.get(name, 2))
            elif name in money:
                formats[name] = ("money", decimals.get(name, 2))
            elif dtype.is_integer():
                formats[name] = ("integer", 0)
            elif name in decimals:
                formats[name] = ("number", decimals[name])
            elif name.lower() in PRICE_COLUMNS:
                formats[name] = ("number", _PRICE_DECIMALS)
            else:
                formats[name] = ("number", decimals_for(column))
            if numeric and dtype.is_float():
                kind, places = formats[name]
                if kind == "percent":
                    column = (column * 100).round(places).alias(f"{name} %")
                else:
                    column = column.round(places)
        columns.append(column)
    return pl.DataFrame(columns), formats


def table(
    frame: pl.DataFrame,
    *,
    title: str | None = None,
    subtitle: str | None = None,
    percent: Iterable[str] | None = None,
    decimals: Mapping[str, int] | None = None,
    money: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    source_note: str | None = None,
) -> GT:
    """``frame`` as a formatted great_tables table, every row shown (see the module docstring).

    ``percent`` names fraction columns shown as percentages (default: the float columns whose
    names match :data:`FRACTION_PATTERN`, unless they end in a unit such as ``_pct``, ``_bp``,
    ``_pips``), ``decimals`` fixes a column's
    decimals, ``money`` adds thousands separators with 2 decimals, ``labels`` renames column
    headers for display (the data keeps its names). Display the result in a notebook or take its
    ``as_raw_html()``.
    """
    shown, formats = display_frame(frame, percent=percent, decimals=decimals, money=money)
    gt = GT(shown)
    if title or subtitle:
        gt = gt.tab_header(title=title or "", subtitle=subtitle)
    for name, (kind, places) in formats.items():
        if kind == "percent":
            gt = gt.fmt_percent(columns=name, decimals=places)
        elif kind == "integer":
            gt = gt.fmt_integer(columns=name, use_seps=_thousands(frame.get_column(name)))
        elif kind == "money":
            gt = gt.fmt_number(columns=name, decimals=places, use_seps=True)
        else:
            gt = gt.fmt_number(columns=name, decimals=places, use_seps=places == 0)
    if labels:
        gt = gt.cols_label(**dict(labels))
    if source_note:
        gt = gt.tab_source_note(source_note)
    return (
        gt.sub_missing(missing_text=_MISSING)
        .opt_row_striping()
        .tab_options(
            table_font_size="13px",
            data_row_padding="3px",
            column_labels_font_weight="bold",
            table_margin_left="0",
        )
    )


def _thousands(column: pl.Series) -> bool:
    """Thousands separators for counts and money (12,345), not for labels such as a year, a
    month, a rank or a fold number."""
    if column.name.lower() in _LABEL_INTEGERS:
        return False
    largest = column.abs().max() if not column.is_empty() else None
    return largest is not None and float(largest) >= 10_000  # type: ignore[arg-type]


class SortableTable:
    """A frame shown as an itables DataTable (sortable, searchable, paged), offline.

    The first one displayed in a kernel also displays itables' offline initialisation (the
    DataTables bundle shipped with itables), which the later tables of the notebook use.
    """

    _initialised = False

    def __init__(self, frame: pl.DataFrame, *, caption: str | None = None, **options: Any) -> None:
        self.frame = frame
        self.caption = caption
        self.options = options

    def to_html(self) -> str:
        """The table's HTML (expects itables' offline initialisation in the page)."""
        import itables

        return itables.to_html_datatable(
            self.frame,
            caption=self.caption,
            connected=False,
            show_dtypes=False,
            showIndex=False,
            classes="display compact nowrap",
            maxBytes=0,
            **self.options,
        )

    def _ipython_display_(self) -> None:
        import itables
        from IPython.display import HTML, display

        if not SortableTable._initialised:
            itables.init_notebook_mode(all_interactive=False, connected=False)
            SortableTable._initialised = True
        display(HTML(self.to_html()))


def sortable_table(
    frame: pl.DataFrame,
    *,
    caption: str | None = None,
    percent: Iterable[str] | None = None,
    decimals: Mapping[str, int] | None = None,
    money: Iterable[str] = (),
    page_length: int = 15,
) -> SortableTable:
    """``frame`` as a sortable, searchable, paged table (itables, offline) with :func:`table`'s
    formatting; numbers stay numeric (rounded; percent columns as ``"<name> %"``), so a click on
    a header sorts by value. For long lists (trades, trials); summaries go in :func:`table`."""
    shown, _ = display_frame(frame, percent=percent, decimals=decimals, money=money, numeric=True)
    return SortableTable(shown, caption=caption, pageLength=page_length)
