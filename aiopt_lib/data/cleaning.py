"""Validation, cleaning and gap classification of bars.

Input is a *raw* bars frame: the canonical columns and dtypes of :mod:`aiopt_lib.core.bars`, in any
order, possibly with duplicate or missing timestamps, plus an optional ``Int64`` column ``row``
saying where each row came from (a 1-based line number for text files, a 0-based record index for
binary ones; when absent, the 0-based position in the frame). Every finding of this module names
that ``row``.

* :func:`validate_bars` lists the problems and never changes the data: a :class:`ValidationReport`
  with one ``issues`` row per finding (``row``, ``ts``, ``kind``, ``severity``, ``field``,
  ``detail``, ``action``).
* :func:`clean_bars` repairs under a :class:`CleaningPolicy` and returns canonical bars (sorted,
  unique ``ts``, a ``flags`` column of :class:`~aiopt_lib.core.bars.Flag` bits on every touched row)
  plus the report with the action taken per item. Every dropped row is an item with action
  ``"dropped"``, so ``n_input == n_output + n_dropped - n_inserted`` always holds.
* :func:`classify_gaps` lists the gaps of a bars frame and classifies each as an expected FX
  closure or not.

Kinds of findings and their severity
------------------------------------
``duplicate``          every extra copy of a timestamp; "warning" when identical to the copy it
                       is compared with (the first in validation, the kept one in cleaning),
                       "error" when the values conflict.
``out_of_order``       a row whose ``ts`` is earlier than that of a row before it ("warning").
``bad_price``          a price that is null, NaN, infinite or not positive, or a volume that is
                       null, NaN, infinite or negative ("error"; the field is named).
``implausible_price``  a positive price that is not plausible for the instrument:
                       ``max_price_ratio`` (default 8) or more times above or below the median
                       close of the data ("error"; the field is named). See "Implausible prices" below.
``ohlc_inconsistent``  high below max(open, close) or low above min(open, close), which covers
                       high below low ("error"); checked for the main, ``bid_`` and ``ask_`` sets.
``flat_candle``        open == high == low == close with zero volume: Dukascopy serves these while
                       the market is closed. "info" inside an expected closure, else "warning".
``spike``              an isolated price (see below; "warning").
``gap``                consecutive bars more than one bar apart: "info" for expected closures,
                       "warning" for unexpected gaps.

Expected closures (gap classification)
--------------------------------------
Spot FX trades around the clock from Sunday 17:00 to Friday 17:00 New York time, so the weekend
closure is **Friday 17:00 to Sunday 17:00 America/New_York**, converted to UTC per date (21:00 or
22:00 UTC depending on US daylight saving time). The holiday closures are **Christmas** (from
Dec 24 12:00 to Dec 25 17:00 New York time) and **New Year** (Dec 31 12:00 to Jan 1 17:00): on
the eves liquidity providers stop quoting around midday New York time and the market reopens with
the next trading day at 17:00. Vendors differ by an hour or two (in the 2017 sample the last
Friday bar opens at 16:00 New York time and the first Sunday bar at 17:00, once at 18:00), so
every window is widened by a tolerance (``gap_tolerance``, default 2 hours) on both sides. A gap is expected when the middle
of its first and of its last missing bar both lie in one (merged) closure window: a missing daily
bar of a Sunday is expected (the market is closed for most of it), a missing Friday is not.
Gaps inside a weekend window alone are ``expected_weekend``; gaps that need a holiday window are
``expected_holiday``; everything else (including early closes on other holidays) is
``unexpected``. The number of missing bars is round(spacing / timeframe) - 1, so the one-hour
daylight-saving shift of daily bars stamped at the New York close is not a gap.

Implausible prices
------------------
A price that is a factor of ``max_price_ratio`` (default 8) or more away from the median close of
the rows around it (the nearest 501 rows with valid prices; all of a shorter file), either way,
cannot be a quote of the same instrument: it is a corrupt value (a flipped
bit, a misplaced decimal point, a price in pips, another instrument's row). The factor is below 10
so that a decimal point shifted by one place (x10, /10) is caught even when the price has drifted
20 % from the median; it is far above what one FX data file holds (EUR/USD stayed within a factor
of 1.5 of its median from 2000 to 2024, gold within about 5). Such a price is an error: cleaning
raises a ``DataError`` naming the file, row and field (``CleaningPolicy.implausible_prices="drop"``
drops the rows instead, counted), and validation reports it. The median is local so that a history
that really moves by such a factor over years (a high-inflation currency, a crypto asset) is
accepted; ``max_price_ratio`` can be raised for data that jumps by it from one bar to the next.

Spikes
------
Scale: the robust standard deviation of log close-to-close returns, 1.4826 x MAD (median absolute
deviation from the median), over the rows with valid prices that are not flat candles (at least
``MIN_SPIKE_RETURNS`` = 10 returns, i.e. 11 bars, and a non-zero MAD are needed, else no spike test
is made). A plain z-score of returns
or of the log high/low range does not separate bad ticks from news on hourly FX: on the 2017
EUR/USD hourly sample the Fed decision bar of 2017-09-20 18:00 UTC has a return z of -16.6 and a
range z of 22.6, and it is real. What a bad tick does and news does not is *stick out from its
neighbours*. So a bar is a spike when, with ``spike_z`` (default 10) robust standard deviations:

* its close moved out by >= ``spike_z`` and the next bar's close came back by >= ``spike_z``
  (the move *reverted at the next bar*), or the close moved by >= ``jump_z`` (default 30) and did
  not revert; a jump over a gap is divided by sqrt(bars elapsed), since news accumulates while
  the market is closed, and the bar that carries a reverted spike back is not a jump;
* its open lies >= ``spike_z`` beyond both the previous close and its own close, on the same side
  (reverted within the bar);
* its high lies >= ``spike_z`` above its open, its close and the highs of both neighbouring bars,
  or its low as far below (a wick that reverted within the bar).

On the 2017 sample the largest of these statistics is 7.4 (a wick; reverting closes reach 5.7,
non-reverting moves 16.6 against ``jump_z`` 30), so nothing fires; a 1 % bad tick on hourly
EUR/USD scores 12 to 16, as a close or as a wick. The detail of each spike says which price, by how much, its return
and range z-scores and whether the move reverted.

Gaps of ``LONG_GAP`` (7 days) or more are holes in the data whatever their kind: the report lists
them in :meth:`ValidationReport.long_gaps` and :func:`aiopt_lib.data.sources.load_bars` warns about them,
as it does about flagged spikes.

Cleaning order: sort (out of order), resolve duplicates, implausible prices, bad prices, OHLC, flat
candles, spikes, gaps. Each step sees only the rows the previous ones kept, so spikes and gaps are
measured on the output (a dropped mid-week row becomes a reported gap).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import math
from typing import Any, Literal

import polars as pl

from aiopt_lib.core.bars import (
    ASK_COLUMNS,
    BID_COLUMNS,
    PRICE_COLUMNS,
    TS_DTYPE,
    Flag,
    canonical_column_order,
    check_bars,
    ensure_bars,
    infer_timeframe,
    parse_timeframe,
    timeframe_label,
)
from aiopt_lib.core.errors import BarsSchemaError, ConfigError, DataError

__all__ = ["CleaningPolicy", "ValidationReport", "classify_gaps", "clean_bars", "validate_bars"]

NEW_YORK = "America/New_York"
# The weekly FX closure, in New York wall-clock time (DST-aware through the tz database).
WEEKEND_CLOSE_NY = dt.time(17, 0)  # Friday
WEEKEND_REOPEN_NY = dt.time(17, 0)  # Sunday
# Christmas and New Year: the market stops on the eve around midday New York time and reopens with
# the next trading day at 17:00 New York time on the holiday itself.
HOLIDAY_EVES: tuple[tuple[int, int], ...] = ((12, 24), (12, 31))
HOLIDAY_EVE_CLOSE_NY = dt.time(12, 0)
HOLIDAY_REOPEN_NY = dt.time(17, 0)
DEFAULT_GAP_TOLERANCE = dt.timedelta(hours=2)
DEFAULT_SPIKE_Z = 10.0
DEFAULT_JUMP_Z = 30.0
MIN_SPIKE_RETURNS = 10
MAD_TO_SIGMA = 1.4826
# A price this many times above or below the median close (either way) is not plausible.
MAX_PRICE_RATIO = 8.0
# Gaps this long are holes in the data, reported by load_bars whatever their kind.
LONG_GAP = dt.timedelta(days=7)

KINDS: tuple[str, ...] = (
    "duplicate",
    "out_of_order",
    "bad_price",
    "implausible_price",
    "ohlc_inconsistent",
    "flat_candle",
    "spike",
    "gap",
)
ACTIONS: tuple[str, ...] = ("dropped", "flagged", "repaired", "interpolated", "reordered", "kept")
GAP_KINDS: tuple[str, ...] = ("expected_weekend", "expected_holiday", "unexpected")
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")
# Actions that change the data (rather than only flag or keep it).
_REPAIR_ACTIONS = ("dropped", "repaired", "interpolated", "reordered")

ISSUE_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "ts": TS_DTYPE,
    "kind": pl.String(),
    "severity": pl.String(),
    "field": pl.String(),
    "detail": pl.String(),
    "action": pl.String(),
}
GAP_SCHEMA: dict[str, pl.DataType] = {
    "gap_start": TS_DTYPE,
    "gap_end": TS_DTYPE,
    "missing_bars": pl.Int64(),
    "duration": pl.Duration("us"),
    "kind": pl.String(),
}
# Internal columns: the 0-based position in the input (identity of a row) and the flag bits.
_POS = "_pos"
_FLAGS = "_flags"
_ITEM_COLUMNS = (*ISSUE_SCHEMA, _POS)
_ITEM_SCHEMA = {**ISSUE_SCHEMA, _POS: pl.Int64()}


# ---------------------------------------------------------------------------------------------
# Policy and report


@dataclasses.dataclass(frozen=True)
class CleaningPolicy:
    """What :func:`clean_bars` does with each kind of problem (defaults in brackets).

    * ``duplicates`` ["last"]: identical copies of a timestamp are always dropped; of conflicting
      copies keep the ``"last"`` or ``"first"`` in source order, or ``"error"``: raise a
      ``DataError`` naming both rows. A copy with bad prices never wins over a valid one.
    * ``implausible_prices`` ["error"]: a price ``max_price_ratio`` [8] or more times above or
      below the median close (see the module docstring) raises a ``DataError`` naming the row and
      field, or ``"drop"`` drops its row (counted).
    * ``bad_prices`` ["drop"]: ``"drop"`` the row, ``"interpolate"`` the bad fields linearly in
      time from the neighbouring valid values (flag ``PRICE_REPAIRED``; a row at the edge of the
      data has no neighbour and is dropped), or ``"error"``.
    * ``ohlc`` ["fix"]: ``"fix"`` widens high/low to contain open and close (flag ``OHLC_FIXED``),
      ``"drop"``, or ``"error"``.
    * ``spikes`` ["flag"]: ``"flag"`` (flag ``SPIKE``, prices kept), ``"interpolate"`` (the spiky
      close from its neighbours in time, the open from the previous close, a spiky high/low clipped
      to the bar's body; flag ``SPIKE_REPAIRED``, also on the next bar when its open carried the
      bad close), or ``"drop"``.
    * ``flat_candles`` ["drop"]: ``"drop"`` zero-volume flat candles (counted), or ``"keep"``.
    * ``gaps`` ["keep"]: ``"keep"``, or ``"interpolate"`` unexpected gaps of at most
      ``max_fill_bars`` [3] missing bars (never weekend/holiday closures) with ``fill``
      ["linear": close moves linearly from the previous close to the next open, open = previous
      bar's close, high/low = max/min of open and close; "ffill": flat bars at the previous close];
      inserted bars have volume 0, the other columns of the bar before, and flag ``INTERPOLATED``.
    * ``spike_z`` [10], ``jump_z`` [30], ``gap_tolerance`` [2 h]: as in :func:`validate_bars`.
    """

    duplicates: Literal["last", "first", "error"] = "last"
    implausible_prices: Literal["error", "drop"] = "error"
    bad_prices: Literal["drop", "interpolate", "error"] = "drop"
    ohlc: Literal["fix", "drop", "error"] = "fix"
    spikes: Literal["flag", "interpolate", "drop"] = "flag"
    flat_candles: Literal["drop", "keep"] = "drop"
    gaps: Literal["keep", "interpolate"] = "keep"
    max_fill_bars: int = 3
    fill: Literal["linear", "ffill"] = "linear"
    spike_z: float = DEFAULT_SPIKE_Z
    jump_z: float = DEFAULT_JUMP_Z
    gap_tolerance: dt.timedelta = DEFAULT_GAP_TOLERANCE
    max_price_ratio: float = MAX_PRICE_RATIO

    def __post_init__(self) -> None:
        choices = {
            "duplicates": ("last", "first", "error"),
            "implausible_prices": ("error", "drop"),
            "bad_prices": ("drop", "interpolate", "error"),
            "ohlc": ("fix", "drop", "error"),
            "spikes": ("flag", "interpolate", "drop"),
            "flat_candles": ("drop", "keep"),
            "gaps": ("keep", "interpolate"),
            "fill": ("linear", "ffill"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"CleaningPolicy.{name} must be one of {list(allowed)}, got {value!r}"
                )
        if not isinstance(self.max_fill_bars, int) or self.max_fill_bars < 0:
            raise ConfigError(
                f"CleaningPolicy.max_fill_bars must be a non-negative integer, got {self.max_fill_bars!r}"
            )
        for name in ("spike_z", "jump_z"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"CleaningPolicy.{name} must be a positive number, got {value!r}")
        ratio = self.max_price_ratio
        if not isinstance(ratio, int | float) or not ratio > 1 or not math.isfinite(ratio):
            raise ConfigError(
                f"CleaningPolicy.max_price_ratio must be a finite number above 1, got {ratio!r}"
            )
        if not isinstance(self.gap_tolerance, dt.timedelta) or self.gap_tolerance < dt.timedelta(0):
            raise ConfigError(
                f"CleaningPolicy.gap_tolerance must be a non-negative timedelta, got {self.gap_tolerance!r}"
            )


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ValidationReport:
    """The findings of :func:`validate_bars` or :func:`clean_bars`.

    ``issues`` has one row per finding: ``row`` (source location; null for bars the cleaning
    inserted), ``ts``, ``kind``, ``severity`` ("info" | "warning" | "error"), ``field`` (when one
    field is at fault), ``detail`` and ``action`` ("" in validation; "dropped", "flagged",
    "repaired", "interpolated", "reordered" or "kept" after cleaning). Gap items sit on the first
    bar after the gap. ``n_inserted`` counts bars the cleaning added (gap filling), so
    ``n_input == n_output + n_dropped - n_inserted``. ``row_kind`` names ``row`` in texts
    ("line", "record" or "row"). ``gaps`` holds the classified gaps (:func:`classify_gaps`'s
    columns) of the validated data, or of the cleaned output.
    """

    issues: pl.DataFrame
    source: str | None
    timeframe: dt.timedelta | None
    n_input: int
    n_output: int
    n_inserted: int = 0
    row_kind: str = "row"
    gaps: pl.DataFrame = dataclasses.field(default_factory=lambda: pl.DataFrame(schema=GAP_SCHEMA))

    @property
    def problems(self) -> pl.DataFrame:
        """The items that are not "info" (warnings and errors)."""
        return self.issues.filter(pl.col("severity") != "info")

    @property
    def is_clean(self) -> bool:
        """True when nothing but info items (expected gaps, flat candles in closures) was found."""
        return self.problems.height == 0

    @property
    def n_dropped(self) -> int:
        """The number of input rows the cleaning dropped (items with action "dropped")."""
        return int((self.issues.get_column("action") == "dropped").sum())

    @property
    def has_repairs(self) -> bool:
        """True when the cleaning changed the data: dropped, repaired, interpolated or reordered."""
        return bool(self.issues.get_column("action").is_in(_REPAIR_ACTIONS).any())

    def long_gaps(self, min_duration: dt.timedelta = LONG_GAP) -> pl.DataFrame:
        """The gaps of ``min_duration`` (default a week) or more without bars, of any kind."""
        return self.gaps.filter(pl.col("duration") >= min_duration)

    def summary(self) -> dict[str, int]:
        """Counts by kind (every kind, zeros included) and by action (every cleaning action)."""
        kinds = self.issues.get_column("kind").value_counts()
        actions = self.issues.get_column("action").value_counts()
        by_kind = dict(zip(kinds.get_column("kind"), kinds.get_column("count"), strict=True))
        by_action = dict(
            zip(actions.get_column("action"), actions.get_column("count"), strict=True)
        )
        counts = {kind: int(by_kind.get(kind, 0)) for kind in KINDS}
        counts.update({action: int(by_action.get(action, 0)) for action in ACTIONS})
        return counts

    def headline(self) -> str:
        """One line: source, rows in and out, dropped/inserted, timeframe, clean or problems."""
        name = self.source or "<frame>"
        parts = [f"{name}: {self.n_input} rows in, {self.n_output} out"]
        if self.n_dropped:
            parts.append(f"{self.n_dropped} dropped")
        if self.n_inserted:
            parts.append(f"{self.n_inserted} inserted")
        label = timeframe_label(self.timeframe) if self.timeframe else "unknown"
        parts.append(f"timeframe {label}")
        n_problems = self.problems.height
        status = "clean" if n_problems == 0 else f"{n_problems} problem(s)"
        return ", ".join(parts) + f": {status}"

    def to_text(self, max_items: int = 20, *, more: str = "report.issues lists them all") -> str:
        """A readable report: headline, counts, then up to ``max_items`` items, problems first.

        ``more`` says where the items left out can be seen (a command-line tool names its option).
        """
        lines = [self.headline()]
        counts = self.summary()
        by_kind = ", ".join(f"{k} {counts[k]}" for k in KINDS if counts[k])
        lines.append(f"  found: {by_kind or 'nothing'}")
        severity = self.issues.get_column("severity").value_counts()
        by_severity = dict(
            zip(severity.get_column("severity"), severity.get_column("count"), strict=True)
        )
        if by_severity:
            lines.append(
                "  severity: "
                + ", ".join(f"{s} {by_severity[s]}" for s in SEVERITIES if s in by_severity)
            )
        by_action = ", ".join(f"{a} {counts[a]}" for a in ACTIONS if counts[a])
        if by_action:
            lines.append(f"  actions: {by_action}")
        ordered = self.issues.with_columns(
            pl.col("severity")
            .replace_strict({s: i for i, s in enumerate(SEVERITIES)})
            .alias("_rank")
        ).sort(["_rank", "ts"], maintain_order=True)
        shown = ordered.head(max(max_items, 0))
        for item in shown.iter_rows(named=True):
            where = f"{self.row_kind} {item['row']}" if item["row"] is not None else "(inserted)"
            when = item["ts"].strftime("%Y-%m-%d %H:%M") if item["ts"] is not None else "-"
            field = f" {item['field']}:" if item["field"] else ""
            action = f"  [{item['action']}]" if item["action"] else ""
            lines.append(
                f"  {where:>12}  {when}  {item['severity']:<7}  {item['kind']:<17}{field} {item['detail']}{action}"
            )
        if ordered.height > shown.height:
            lines.append(f"  ... and {ordered.height - shown.height} more item(s) ({more})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data (timestamps as ISO 8601 strings)."""
        items = self.issues.with_columns(
            pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")
        ).to_dicts()
        return {
            "source": self.source,
            "timeframe": timeframe_label(self.timeframe) if self.timeframe else None,
            "n_input": self.n_input,
            "n_output": self.n_output,
            "n_dropped": self.n_dropped,
            "n_inserted": self.n_inserted,
            "is_clean": self.is_clean,
            "has_repairs": self.has_repairs,
            "row_kind": self.row_kind,
            "summary": self.summary(),
            "issues": items,
        }

    def _repr_html_(self) -> str:
        """Notebook view: headline, a count table by kind/severity/action, the first 20 items."""
        table = (
            self.issues.group_by(["kind", "severity", "action"])
            .agg(pl.len().alias("items"))
            .sort(["kind", "severity", "action"])
        )
        parts = [f"<p><b>{html.escape(self.headline())}</b></p>"]
        if table.height:
            # a report shows the tables, not polars' shape line and dtype row
            with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
                parts.append(table._repr_html_())
                parts.append(
                    f"<p>First {min(20, self.issues.height)} of {self.issues.height} item(s):</p>"
                )
                parts.append(self.issues.head(20)._repr_html_())
        else:
            parts.append("<p>No issues.</p>")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (
            f"ValidationReport(source={self.source!r}, n_input={self.n_input}, "
            f"n_output={self.n_output}, issues={self.issues.height}, is_clean={self.is_clean})"
        )


# ---------------------------------------------------------------------------------------------
# Small expression helpers


def _fmt(template: str, *values: pl.Expr | str) -> pl.Expr:
    """Like ``pl.format`` (``{}`` placeholders; null if a value is null), built on ``concat_str``
    because ``pl.format`` panics on some filtered columns in polars 2.1."""
    pieces = template.split("{}")
    if len(pieces) != len(values) + 1:
        raise ValueError(
            f"template {template!r} needs {len(pieces) - 1} value(s), got {len(values)}"
        )
    parts: list[pl.Expr] = []
    for piece, value in zip(pieces, [*values, None], strict=True):
        if piece:
            parts.append(pl.lit(piece))
        if value is not None:
            expr = pl.col(value) if isinstance(value, str) else value
            parts.append(expr.cast(pl.String))
    return pl.concat_str(parts) if parts else pl.lit("")


def _ts_text(expr: pl.Expr) -> pl.Expr:
    return expr.dt.strftime("%Y-%m-%d %H:%M")


def _value_text(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.String).fill_null("null")


def _duration_text(micros: pl.Expr) -> pl.Expr:
    """'2d 1h', '45m', '30s' from a number of microseconds."""
    seconds = micros // 1_000_000
    parts = [
        pl.when(seconds // 86400 > 0).then(_fmt("{}d", seconds // 86400)),
        pl.when(seconds % 86400 // 3600 > 0).then(_fmt("{}h", seconds % 86400 // 3600)),
        pl.when(seconds % 3600 // 60 > 0).then(_fmt("{}m", seconds % 3600 // 60)),
        pl.when(seconds % 60 > 0).then(_fmt("{}s", seconds % 60)),
    ]
    text = pl.concat_str(parts, separator=" ", ignore_nulls=True)
    return pl.when(text == "").then(pl.lit("0s")).otherwise(text)


def _flag(bit: Flag) -> pl.Expr:
    return pl.lit(int(bit), dtype=pl.UInt32)


def _add_flag(mask: pl.Expr, bit: Flag) -> pl.Expr:
    return (
        pl.when(mask.fill_null(False))
        .then(pl.col(_FLAGS) | _flag(bit))
        .otherwise(pl.col(_FLAGS))
        .alias(_FLAGS)
    )


def _ohlc_sets(frame: pl.DataFrame) -> list[str]:
    """Prefixes of the complete OHLC column sets in ``frame``: "", "bid_", "ask_"."""
    prefixes = [""]
    for prefix, names in (("bid_", BID_COLUMNS), ("ask_", ASK_COLUMNS)):
        if all(c in frame.columns for c in names):
            prefixes.append(prefix)
    return prefixes


def _price_columns(frame: pl.DataFrame) -> list[str]:
    return [f"{p}{c}" for p in _ohlc_sets(frame) for c in PRICE_COLUMNS]


def _bad_value(name: str) -> pl.Expr:
    """True where column ``name`` is unusable: null/NaN/inf, a price <= 0, a volume < 0."""
    col = pl.col(name)
    out_of_range = col < 0 if name == "volume" else col <= 0
    return (col.is_null() | ~col.is_finite() | out_of_range).fill_null(True)


def _bad_any(columns: list[str]) -> pl.Expr:
    return pl.any_horizontal([_bad_value(c) for c in columns]) if columns else pl.lit(False)


def _single_field(masks: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """The field name when exactly one mask is true, else null."""
    count = pl.sum_horizontal([m.cast(pl.Int32) for _, m in masks])
    first = pl.coalesce([pl.when(m).then(pl.lit(name)) for name, m in masks])
    return pl.when(count == 1).then(first).otherwise(pl.lit(None, dtype=pl.String))


def _items(
    frame: pl.DataFrame,
    *,
    kind: str,
    severity: pl.Expr | str,
    field: pl.Expr | str | None,
    detail: pl.Expr,
    action: pl.Expr | str,
) -> pl.DataFrame:
    """Issue rows (plus the internal position) for every row of ``frame``."""
    sev = pl.lit(severity) if isinstance(severity, str) else severity
    if field is None:
        fld = pl.lit(None, dtype=pl.String)
    elif isinstance(field, str):
        fld = pl.lit(field)
    else:
        fld = field
    return frame.select(
        pl.col("row").cast(pl.Int64),
        pl.col("ts"),
        pl.lit(kind).alias("kind"),
        sev.alias("severity"),
        fld.cast(pl.String).alias("field"),
        detail.cast(pl.String).alias("detail"),
        (pl.lit(action) if isinstance(action, str) else action).alias("action"),
        pl.col(_POS).cast(pl.Int64),
    )


def _empty_items() -> pl.DataFrame:
    return pl.DataFrame(schema=_ITEM_SCHEMA)


def _finish_issues(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate item frames, order by time then source position then kind, drop internals."""
    frames = [p.select(_ITEM_COLUMNS).cast(_ITEM_SCHEMA) for p in parts if p.height]  # type: ignore[arg-type]
    if not frames:
        return pl.DataFrame(schema=ISSUE_SCHEMA)
    kind_rank = {k: i for i, k in enumerate(KINDS)}
    return (
        pl.concat(frames)
        .with_columns(pl.col("kind").replace_strict(kind_rank, default=len(KINDS)).alias("_k"))
        .sort(["ts", _POS, "_k"], nulls_last=True, maintain_order=True)
        .select(list(ISSUE_SCHEMA))
    )


# ---------------------------------------------------------------------------------------------
# Preparation


def _prepare(frame: pl.DataFrame, source: str | None, row_kind: str) -> pl.DataFrame:
    """Check the schema, add the internal position, ``row`` and flag columns."""
    if not isinstance(frame, pl.DataFrame):
        raise BarsSchemaError(
            f"expected a polars DataFrame of bars, got {type(frame).__name__}", file=source
        )
    # An empty slice has no order or uniqueness problems: check_bars then checks only the schema.
    problems = check_bars(frame.head(0))
    if "row" in frame.columns and not frame.schema["row"].is_integer():
        problems.append(f"column 'row' has dtype {frame.schema['row']}, expected Int64")
    if problems:
        raise BarsSchemaError("not a bars frame: " + "; ".join(problems), file=source)
    out = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_POS))
    if "row" in out.columns:
        out = out.with_columns(pl.col("row").cast(pl.Int64).fill_null(pl.col(_POS)))
    else:
        out = out.with_columns(pl.col(_POS).alias("row"))
    flags = pl.col("flags").fill_null(0) if "flags" in out.columns else pl.lit(0)
    out = out.with_columns(flags.cast(pl.UInt32).alias(_FLAGS))
    if "flags" in out.columns:
        out = out.drop("flags")
    null_ts = out.filter(pl.col("ts").is_null())
    if null_ts.height:
        raise DataError(
            f"timestamp is missing ({null_ts.height} row(s) without ts)",
            file=source,
            row=int(null_ts.get_column("row")[0]),
            field="ts",
            row_kind=row_kind,
        )
    return out


def _in_time_order(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by ``ts``, then by source position. The sort copies every column (600 MB
    for 10M one-minute bars); when ``ts`` never goes back, the usual case, it would give the
    same order (ties are already in position order), so the frame is returned as it is, marked
    sorted for polars' fast paths."""
    if frame.get_column("ts").is_sorted():
        return frame.with_columns(pl.col("ts").set_sorted())
    return frame.sort(["ts", _POS])


def _resolve_timeframe(
    frame: pl.DataFrame, timeframe: str | dt.timedelta | None
) -> dt.timedelta | None:
    if timeframe is not None:
        return parse_timeframe(timeframe)
    unique_ts = frame.select(pl.col("ts").unique().sort())
    return infer_timeframe(unique_ts)


def _value_columns(frame: pl.DataFrame) -> list[str]:
    internal = {"ts", "row", _POS, _FLAGS}
    return [c for c in frame.columns if c not in internal]


# ---------------------------------------------------------------------------------------------
# Detectors (each returns issue rows with the internal position; none changes the data)


def _out_of_order_mask() -> pl.Expr:
    return (pl.col("ts") < pl.col("ts").cum_max().shift(1)).fill_null(False)


def _out_of_order_items(frame: pl.DataFrame, action: str) -> pl.DataFrame:
    late = frame.with_columns(pl.col("ts").cum_max().shift(1).alias("_seen")).filter(
        _out_of_order_mask()
    )
    return _items(
        late,
        kind="out_of_order",
        severity="warning",
        field="ts",
        detail=_fmt(
            "ts {} is earlier than {} on a preceding row",
            _ts_text(pl.col("ts")),
            _ts_text(pl.col("_seen")),
        ),
        action=action,
    )


def _duplicate_items(
    sorted_frame: pl.DataFrame,
    *,
    keep: Literal["first", "last"],
    prefer_valid: bool,
    row_kind: str,
    action: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items for every copy of a repeated ts other than the kept one, and the kept rows' positions.

    The item frame carries ``_conflict`` (values differ from the kept copy, and this copy is not
    merely a bad copy of a valid row), ``_kept_row`` and ``_first_diff`` for the "error" policy.
    """
    copies = sorted_frame.filter(pl.len().over("ts") > 1)
    if copies.height == 0:
        extra = {"_conflict": pl.Boolean(), "_kept_row": pl.Int64(), "_first_diff": pl.String()}
        return pl.DataFrame(schema={**_ITEM_SCHEMA, **extra}), pl.DataFrame(
            schema={_POS: pl.Int64()}
        )
    values = _value_columns(copies)
    # Identical copies keep the first (the later ones are the extras); conflicting ones follow
    # ``keep``; a copy with bad prices loses to a valid one when ``prefer_valid``. The keys are
    # materialised as columns: sort_by on a literal inside group_by gives wrong results in polars 2.1.
    all_identical = pl.struct(values).n_unique().over("ts") == 1
    order = pl.col(_POS) if keep == "first" else -pl.col(_POS)
    copies = copies.with_columns(
        (_bad_any(_price_columns(copies)) if prefer_valid else pl.repeat(False, pl.len())).alias(
            "_bad_key"
        ),
        pl.when(all_identical).then(pl.col(_POS)).otherwise(order).alias("_order_key"),
    )
    kept_pos = copies.group_by("ts").agg(
        pl.col(_POS).sort_by(["_bad_key", "_order_key"]).first().alias("_kept_pos")
    )
    copies = copies.join(kept_pos, on="ts")
    kept = copies.filter(pl.col(_POS) == pl.col("_kept_pos"))
    reference = kept.select(
        "ts",
        pl.col("row").alias("_kept_row"),
        _bad_any(_price_columns(kept)).alias("_kept_bad"),
        *[pl.col(c).alias(f"{c}__kept") for c in values],
    )
    dropped = copies.filter(pl.col(_POS) != pl.col("_kept_pos")).join(reference, on="ts")
    differs = [(c, ~pl.col(c).eq_missing(pl.col(f"{c}__kept"))) for c in values]
    identical = ~pl.any_horizontal([m for _, m in differs]) if differs else pl.lit(True)
    bad_copy = _bad_any(_price_columns(dropped)) & ~pl.col("_kept_bad")
    diff_text = pl.concat_str(
        [
            pl.when(m).then(
                _fmt(
                    "{} {} vs {}",
                    pl.lit(c),
                    _value_text(pl.col(c)),
                    _value_text(pl.col(f"{c}__kept")),
                )
            )
            for c, m in differs
        ],
        separator="; ",
        ignore_nulls=True,
    )
    kept_word = "kept" if action else "first"
    detail = (
        pl.when(identical)
        .then(_fmt(f"identical copy of {row_kind} {{}} ({kept_word})", pl.col("_kept_row")))
        .when(bad_copy)
        .then(
            _fmt(
                f"copy with bad values of {row_kind} {{}} ({kept_word}): {{}}",
                pl.col("_kept_row"),
                diff_text,
            )
        )
        .otherwise(
            _fmt(
                f"conflicts with {row_kind} {{}} ({kept_word}): {{}}",
                pl.col("_kept_row"),
                diff_text,
            )
        )
    )
    items = _items(
        dropped,
        kind="duplicate",
        severity=pl.when(identical).then(pl.lit("warning")).otherwise(pl.lit("error")),
        field=_single_field(differs),
        detail=detail,
        action=action,
    )
    extras = dropped.select(
        (~identical & ~bad_copy).alias("_conflict"),
        pl.col("_kept_row"),
        pl.coalesce([pl.when(m).then(pl.lit(c)) for c, m in differs]).alias("_first_diff"),
    )
    return pl.concat([items, extras], how="horizontal"), kept.select(_POS)


def _bad_price_items(frame: pl.DataFrame, action: str) -> pl.DataFrame:
    columns = [*_price_columns(frame), "volume"]
    rows = frame.filter(_bad_any(columns))
    if rows.height == 0:
        return _empty_items()

    def what(name: str) -> pl.Expr:
        col = pl.col(name)
        limit = "negative" if name == "volume" else "not positive"
        return (
            pl.when(col.is_null())
            .then(pl.lit(f"{name} is missing"))
            .when(col.is_nan())
            .then(pl.lit(f"{name} is NaN"))
            .when(col.is_infinite())
            .then(_fmt(f"{name} is infinite ({{}})", _value_text(col)))
            .otherwise(_fmt(f"{name} is {limit} ({{}})", _value_text(col)))
        )

    masks = [(c, _bad_value(c)) for c in columns]
    detail = pl.concat_str(
        [pl.when(m).then(what(c)) for c, m in masks], separator="; ", ignore_nulls=True
    )
    return _items(
        rows,
        kind="bad_price",
        severity="error",
        field=_single_field(masks),
        detail=detail,
        action=action,
    )


def _factor_text(factor: float) -> str:
    """'12.3', '1.2e+77': how many times, readable at any magnitude."""
    return f"{factor:.1f}" if factor < 1000 else f"{factor:.2g}"


# Rows on each side whose median close is a row's reference: local, so that a long history that
# really moves (USD/TRY over a decade, gold since 2000) is not refused, and wide enough that a
# block of corrupt rows shorter than it cannot become its own reference.
PLAUSIBILITY_HALF_WINDOW = 250


def _implausible_items(frame: pl.DataFrame, max_ratio: float, action: str) -> pl.DataFrame:
    """Valid (positive, finite) prices ``max_ratio`` or more times above or below the median
    close of the nearest ``2 × PLAUSIBILITY_HALF_WINDOW + 1`` rows whose prices are all valid
    (the whole file when it is shorter); ``field`` is the first such price of the row."""
    columns = _price_columns(frame)
    valid = frame.filter(~_bad_any(columns))
    if valid.height == 0:
        return _empty_items()
    reference = valid.select(
        pl.col(_POS),
        pl.col("close")
        .rolling_median(window_size=2 * PLAUSIBILITY_HALF_WINDOW + 1, min_samples=1, center=True)
        .alias("_median"),
    )
    frame = frame.join(reference, on=_POS, how="left", maintain_order="left").with_columns(
        pl.col("_median").forward_fill().backward_fill()
    )

    def off(name: str) -> pl.Expr:
        ratio = pl.col(name) / pl.col("_median")
        return (
            ((ratio >= max_ratio) | (ratio <= 1 / max_ratio))
            & ~_bad_value(name)
            & (pl.col("_median") > 0)
        ).fill_null(False)

    masks = [(c, off(c)) for c in columns]
    rows = frame.filter(pl.any_horizontal([m for _, m in masks]))
    if rows.height == 0:
        return _empty_items()
    flags = rows.select([m.alias(c) for c, m in masks])
    details = []
    for values, hits, median in zip(
        rows.select(columns).iter_rows(),
        flags.iter_rows(),
        rows.get_column("_median"),
        strict=True,
    ):
        parts = []
        for name, value, hit in zip(columns, values, hits, strict=True):
            if not hit:
                continue
            above = value >= median
            factor = value / median if above else median / value
            parts.append(
                f"{name} {value:.6g} is {_factor_text(factor)} times {'above' if above else 'below'}"
            )
        details.append(
            f"{', '.join(parts)} the median close {median:.6g} of the rows around it "
            f"(the limit is a factor of {max_ratio:g} either way)"
        )
    rows = rows.with_columns(pl.Series("_detail", details, dtype=pl.String))
    return _items(
        rows,
        kind="implausible_price",
        severity="error",
        # the first implausible field (an error names one; the detail lists them all)
        field=pl.coalesce([pl.when(m).then(pl.lit(c)) for c, m in masks]),
        detail=pl.col("_detail"),
        action=action,
    )


def _ohlc_masks(frame: pl.DataFrame) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(field, mask, text) for high below the body and low above it, per OHLC set."""
    out = []
    for p in _ohlc_sets(frame):
        o, h, lo, c = (pl.col(f"{p}{n}") for n in PRICE_COLUMNS)
        top = pl.max_horizontal(o, c)
        bottom = pl.min_horizontal(o, c)
        below_low = (
            pl.when(h < lo).then(_fmt(", below {}low {}", pl.lit(p), lo)).otherwise(pl.lit(""))
        )
        out.append(
            (
                f"{p}high",
                (h < top).fill_null(False),
                _fmt(f"{p}high {{}} is below max({p}open, {p}close) {{}}{{}}", h, top, below_low),
            )
        )
        out.append(
            (
                f"{p}low",
                (lo > bottom).fill_null(False),
                _fmt(f"{p}low {{}} is above min({p}open, {p}close) {{}}", lo, bottom),
            )
        )
    return out


def _ohlc_items(frame: pl.DataFrame, action: str) -> pl.DataFrame:
    """OHLC inconsistencies of rows whose prices are all valid."""
    checks = _ohlc_masks(frame)
    valid = ~_bad_any(_price_columns(frame))
    rows = frame.filter(valid & pl.any_horizontal([m for _, m, _ in checks]))
    if rows.height == 0:
        return _empty_items()
    detail = pl.concat_str(
        [pl.when(m).then(text) for _, m, text in checks], separator="; ", ignore_nulls=True
    )
    return _items(
        rows,
        kind="ohlc_inconsistent",
        severity="error",
        field=_single_field([(name, m) for name, m, _ in checks]),
        detail=detail,
        action=action,
    )


def _flat_mask() -> pl.Expr:
    return (
        (pl.col("open") == pl.col("high"))
        & (pl.col("high") == pl.col("low"))
        & (pl.col("low") == pl.col("close"))
        & (pl.col("volume") == 0)
    ).fill_null(False)


def _flat_items(
    frame: pl.DataFrame, timeframe: dt.timedelta | None, tolerance: dt.timedelta, action: str
) -> pl.DataFrame:
    """Zero-volume flat candles among rows with valid prices; "info" inside expected closures."""
    flats = frame.filter(_flat_mask() & ~_bad_any(_price_columns(frame)))
    if flats.height == 0:
        return _empty_items()
    half = (timeframe or dt.timedelta(0)) / 2
    first, last = flats.get_column("ts").min(), flats.get_column("ts").max()
    _, _, merged = _closure_windows(first, last + half, tolerance)
    flats = _window_end_at(
        flats.with_columns((pl.col("ts") + half).alias("_mid")), "_mid", merged, "_w_end"
    )
    inside = (pl.col("_w_end") >= pl.col("_mid")).fill_null(False)
    return _items(
        flats,
        kind="flat_candle",
        severity=pl.when(inside).then(pl.lit("info")).otherwise(pl.lit("warning")),
        field=None,
        detail=pl.when(inside)
        .then(
            _fmt("flat zero-volume candle at {} inside an expected market closure", pl.col("close"))
        )
        .otherwise(
            _fmt(
                "flat zero-volume candle at {} outside the weekend and holiday closures",
                pl.col("close"),
            )
        ),
        action=action,
    )


# ---------------------------------------------------------------------------------------------
# Closure windows and gaps


def _ny_to_utc(day: pl.Expr, at: dt.time) -> pl.Expr:
    """A New York wall-clock time on ``day`` as a UTC instant (12:00 and 17:00 never fall in a
    DST transition, which happen at 02:00)."""
    return (
        day.dt.combine(at)
        .dt.replace_time_zone(NEW_YORK)
        .dt.convert_time_zone("UTC")
        .dt.cast_time_unit("us")
    )


def _merge_windows(windows: pl.DataFrame) -> pl.DataFrame:
    """Merge overlapping or touching [w_start, w_end] intervals."""
    if windows.height == 0:
        return windows
    return (
        windows.sort("w_start")
        .with_columns(
            (pl.col("w_start") > pl.col("w_end").cum_max().shift(1))
            .fill_null(True)
            .cum_sum()
            .alias("_g")
        )
        .group_by("_g")
        .agg(pl.col("w_start").min(), pl.col("w_end").max())
        .sort("w_start")
        .select("w_start", "w_end")
    )


def _closure_windows(
    first: dt.datetime, last: dt.datetime, tolerance: dt.timedelta
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(weekend, holiday, merged) closure windows around [first, last], widened by ``tolerance``."""
    pad = dt.timedelta(days=7)
    days = pl.DataFrame(
        {"day": pl.date_range(first.date() - pad, last.date() + pad, "1d", eager=True)}
    )
    weekend = days.filter(pl.col("day").dt.weekday() == 5).select(
        _ny_to_utc(pl.col("day"), WEEKEND_CLOSE_NY).alias("w_start"),
        _ny_to_utc(pl.col("day").dt.offset_by("2d"), WEEKEND_REOPEN_NY).alias("w_end"),
    )
    eves = pl.DataFrame(
        {
            "eve": [
                dt.date(year, month, day)
                for year in range(first.year - 1, last.year + 2)
                for month, day in HOLIDAY_EVES
            ]
        }
    )
    holiday = eves.select(
        _ny_to_utc(pl.col("eve"), HOLIDAY_EVE_CLOSE_NY).alias("w_start"),
        _ny_to_utc(pl.col("eve").dt.offset_by("1d"), HOLIDAY_REOPEN_NY).alias("w_end"),
    )
    widen = [pl.col("w_start") - tolerance, pl.col("w_end") + tolerance]
    weekend = _merge_windows(weekend.select(widen))
    holiday = _merge_windows(holiday.select(widen))
    merged = _merge_windows(pl.concat([weekend, holiday]))
    return weekend, holiday, merged


def _window_end_at(
    frame: pl.DataFrame, point: str, windows: pl.DataFrame, name: str
) -> pl.DataFrame:
    """Add ``name``: the end of the last window starting at or before ``point`` (order kept)."""
    index = "_lookup_index"
    return (
        frame.with_row_index(index)
        .sort(point)
        .join_asof(
            windows.select("w_start", pl.col("w_end").alias(name)).sort("w_start"),
            left_on=point,
            right_on="w_start",
            strategy="backward",
        )
        .sort(index)
        .drop(index, "w_start")
    )


def _gap_frame(ts: pl.Series, timeframe: dt.timedelta, tolerance: dt.timedelta) -> pl.DataFrame:
    """Classified gaps of sorted unique timestamps."""
    tf_us = timeframe // dt.timedelta(microseconds=1)
    gaps = (
        pl.DataFrame({"gap_end": ts})
        .with_columns(pl.col("gap_end").shift(1).alias("gap_start"))
        .with_columns(
            (
                ((pl.col("gap_end") - pl.col("gap_start")).dt.total_microseconds() + tf_us // 2)
                // tf_us
                - 1
            ).alias("missing_bars")
        )
        .filter(pl.col("missing_bars") >= 1)
        .select(
            "gap_start",
            "gap_end",
            pl.col("missing_bars").cast(pl.Int64),
            (pl.col("gap_end") - pl.col("gap_start") - timeframe).alias("duration"),
        )
    )
    if gaps.height == 0:
        return pl.DataFrame(schema=GAP_SCHEMA)
    first, last = ts.min(), ts.max()
    weekend, _, merged = _closure_windows(first, last, tolerance)  # type: ignore[arg-type]
    # The middle of the first and of the last missing bar must lie in one closure window.
    half = timeframe / 2
    gaps = gaps.with_columns(
        (pl.col("gap_start") + timeframe + half).alias("_first_mid"),
        (pl.col("gap_end") - half).alias("_last_mid"),
    )
    gaps = _window_end_at(gaps, "_first_mid", weekend, "_weekend_end")
    gaps = _window_end_at(gaps, "_first_mid", merged, "_closure_end")
    in_weekend = (pl.col("_weekend_end") >= pl.col("_last_mid")).fill_null(False)
    in_closure = (pl.col("_closure_end") >= pl.col("_last_mid")).fill_null(False)
    return gaps.select(
        "gap_start",
        "gap_end",
        "missing_bars",
        "duration",
        pl.when(in_weekend)
        .then(pl.lit("expected_weekend"))
        .when(in_closure)
        .then(pl.lit("expected_holiday"))
        .otherwise(pl.lit("unexpected"))
        .alias("kind"),
    ).cast(GAP_SCHEMA)  # type: ignore[arg-type]


def classify_gaps(
    bars: pl.DataFrame,
    timeframe: str | dt.timedelta | None = None,
    *,
    tolerance: dt.timedelta = DEFAULT_GAP_TOLERANCE,
) -> pl.DataFrame:
    """The gaps of ``bars``, one row each: ``gap_start`` (ts of the last bar before), ``gap_end``
    (ts of the first bar after), ``missing_bars`` (round(spacing / timeframe) - 1), ``duration``
    (the time without bars: gap_end - gap_start - timeframe) and ``kind``: ``expected_weekend``,
    ``expected_holiday`` or ``unexpected`` (see the module docstring for the closure windows and
    ``tolerance``). ``timeframe`` is inferred from the bars when not given; with fewer than two
    distinct timestamps there are no gaps.
    """
    if "ts" not in bars.columns or bars.schema["ts"] != TS_DTYPE:
        raise BarsSchemaError(f"classify_gaps needs a 'ts' column of dtype {TS_DTYPE}")
    ts = bars.get_column("ts").drop_nulls().unique().sort()
    if ts.len() < 2:
        return pl.DataFrame(schema=GAP_SCHEMA)
    tf = parse_timeframe(timeframe) if timeframe is not None else infer_timeframe(ts.to_frame())
    if tf is None:
        return pl.DataFrame(schema=GAP_SCHEMA)
    return _gap_frame(ts, tf, tolerance)


def _gap_items(
    frame: pl.DataFrame, gaps: pl.DataFrame, timeframe: dt.timedelta, action: pl.Expr | str
) -> pl.DataFrame:
    """Gap items located on the first bar after each gap (``frame`` has unique ts)."""
    if gaps.height == 0:
        return _empty_items()
    located = (
        gaps.join(
            frame.select(pl.col("ts").alias("gap_end"), "row", _POS), on="gap_end", how="left"
        )
        .rename({"gap_end": "ts"})
        .with_columns(pl.col("ts").alias("gap_end"))
    )
    label = timeframe_label(timeframe)
    detail = _fmt(
        "{}: {} missing {} bar(s) ({}) between {} and {}",
        pl.col("kind"),
        pl.col("missing_bars"),
        pl.lit(label),
        _duration_text(pl.col("duration").dt.total_microseconds()),
        _ts_text(pl.col("gap_start")),
        _ts_text(pl.col("gap_end")),
    )
    return _items(
        located,
        kind="gap",
        severity=pl.when(pl.col("kind") == "unexpected")
        .then(pl.lit("warning"))
        .otherwise(pl.lit("info")),
        field=None,
        detail=detail,
        action=action,
    )


# ---------------------------------------------------------------------------------------------
# Spikes


@dataclasses.dataclass(frozen=True)
class _SpikeScale:
    median: float
    sigma: float
    range_median: float
    range_sigma: float | None


def _robust(series: pl.Series) -> tuple[float, float] | None:
    values = series.drop_nulls().drop_nans()
    values = values.filter(values.is_finite())
    if values.len() < MIN_SPIKE_RETURNS:
        return None
    median = float(values.median())  # type: ignore[arg-type]
    mad = float((values - median).abs().median())  # type: ignore[arg-type]
    sigma = MAD_TO_SIGMA * mad
    if not math.isfinite(sigma) or sigma <= 0:
        return None
    return median, sigma


def _spike_scale(frame: pl.DataFrame) -> _SpikeScale | None:
    stats = frame.select(
        (pl.col("close").log() - pl.col("close").log().shift(1)).alias("r"),
        (pl.col("high") / pl.col("low")).log().alias("range"),
    )
    returns = _robust(stats.get_column("r"))
    if returns is None:
        return None
    ranges = _robust(stats.get_column("range"))
    return _SpikeScale(
        median=returns[0],
        sigma=returns[1],
        range_median=ranges[0] if ranges else 0.0,
        range_sigma=ranges[1] if ranges else None,
    )


def _spike_columns(
    frame: pl.DataFrame,
    timeframe: dt.timedelta | None,
    spike_z: float,
    jump_z: float,
    scale: _SpikeScale,
) -> pl.DataFrame:
    """Add ``_sp_open/_sp_high/_sp_low/_sp_close`` (bool), ``_spike`` and ``_sp_detail``.

    ``frame``: sorted, unique ts, valid prices, no flat candles.
    """
    sigma = scale.sigma
    lc = pl.col("close").log()
    lo_ = pl.col("open").log()
    if timeframe:
        tf_us = timeframe // dt.timedelta(microseconds=1)
        elapsed = (
            ((pl.col("ts") - pl.col("ts").shift(1)).dt.total_microseconds() / tf_us)
            .round()
            .clip(lower_bound=1)
        )
    else:
        elapsed = pl.lit(1.0)
    range_z = (
        (((pl.col("high") / pl.col("low")).log() - scale.range_median) / scale.range_sigma)
        if scale.range_sigma
        else pl.lit(None, dtype=pl.Float64)
    )
    out = frame.with_columns(
        ((lc - lc.shift(1)) - scale.median).truediv(sigma).alias("_z"),
        elapsed.alias("_elapsed"),
        ((lo_ - lc.shift(1)) / sigma).alias("_zo_prev"),
        ((lo_ - lc) / sigma).alias("_zo_own"),
        (
            (
                pl.col("high").log()
                - pl.max_horizontal(
                    "open", "close", pl.col("high").shift(1), pl.col("high").shift(-1)
                ).log()
            )
            / sigma
        ).alias("_zh"),
        (
            (
                pl.min_horizontal(
                    "open", "close", pl.col("low").shift(1), pl.col("low").shift(-1)
                ).log()
                - pl.col("low").log()
            )
            / sigma
        ).alias("_zl"),
        range_z.alias("_zr"),
    ).with_columns(pl.col("_z").shift(-1).alias("_z_next"))
    z, z_next = pl.col("_z"), pl.col("_z_next")
    reverted = (
        (z.sign() != z_next.sign()) & (pl.min_horizontal(z.abs(), z_next.abs()) >= spike_z)
    ).fill_null(False)
    # The bar after a reverted spike carries the way back: that is not a jump of its own.
    jump = (
        ~reverted
        & ~reverted.shift(1).fill_null(False)
        & ((z / pl.col("_elapsed").sqrt()).abs() >= jump_z)
    ).fill_null(False)
    open_out = (
        (pl.col("_zo_prev").sign() == pl.col("_zo_own").sign())
        & (pl.min_horizontal(pl.col("_zo_prev").abs(), pl.col("_zo_own").abs()) >= spike_z)
    ).fill_null(False)
    high_out = (pl.col("_zh") >= spike_z).fill_null(False)
    low_out = (pl.col("_zl") >= spike_z).fill_null(False)
    pct = ((pl.col("close") / pl.col("close").shift(1) - 1) * 100).round(3)
    range_note = _fmt(", range z={}", pl.col("_zr").round(1)).fill_null("")
    close_text = (
        pl.when(pl.col("_rev"))
        .then(
            _fmt(
                "close {} moved {}% (return z={}{}) and reverted at the next bar (z={})",
                pl.col("close"),
                pct,
                z.round(1),
                range_note,
                z_next.round(1),
            )
        )
        .when(pl.col("_jump"))
        .then(
            _fmt(
                "close {} jumped {}% (return z={} over {} bar(s){}) and did not revert at the next bar",
                pl.col("close"),
                pct,
                z.round(1),
                pl.col("_elapsed").cast(pl.Int64),
                range_note,
            )
        )
    )
    open_text = pl.when(pl.col("_sp_open")).then(
        _fmt(
            "open {} lies {} sigma from the previous close {} and {} from its own close {}; reverted within the bar",
            pl.col("open"),
            pl.col("_zo_prev").abs().round(1),
            pl.col("close").shift(1),
            pl.col("_zo_own").abs().round(1),
            pl.col("close"),
        )
    )
    high_text = pl.when(pl.col("_sp_high")).then(
        _fmt(
            "high {} sticks out {} sigma above its open/close and the neighbouring highs{}; reverted within the bar",
            pl.col("high"),
            pl.col("_zh").round(1),
            range_note,
        )
    )
    low_text = pl.when(pl.col("_sp_low")).then(
        _fmt(
            "low {} sticks out {} sigma below its open/close and the neighbouring lows{}; reverted within the bar",
            pl.col("low"),
            pl.col("_zl").round(1),
            range_note,
        )
    )
    out = out.with_columns(
        reverted.alias("_rev"),
        jump.alias("_jump"),
        open_out.alias("_sp_open"),
        high_out.alias("_sp_high"),
        low_out.alias("_sp_low"),
    ).with_columns((pl.col("_rev") | pl.col("_jump")).alias("_sp_close"))
    return out.with_columns(
        pl.any_horizontal("_sp_open", "_sp_high", "_sp_low", "_sp_close").alias("_spike"),
        pl.concat_str(
            [open_text, high_text, low_text, close_text], separator="; ", ignore_nulls=True
        ).alias("_sp_detail"),
    )


def _spike_rows(
    frame: pl.DataFrame, timeframe: dt.timedelta | None, spike_z: float, jump_z: float
) -> pl.DataFrame | None:
    """The spike columns for ``frame`` (sorted unique rows), computed on its valid non-flat rows;
    None when the data is too short or too flat for a robust scale."""
    usable = frame.select(~_bad_any(["open", "high", "low", "close"]) & ~_flat_mask())
    usable = usable.to_series().fill_null(False)  # as filter() reads a null
    # filter() copies every column even when it keeps every row, the usual case
    sample = frame if usable.all() else frame.filter(usable)
    scale = _spike_scale(sample)
    if scale is None:
        return None
    return _spike_columns(sample, timeframe, spike_z, jump_z, scale)


def _spike_items(spikes: pl.DataFrame | None, action: str) -> pl.DataFrame:
    if spikes is None:
        return _empty_items()
    rows = spikes.filter(pl.col("_spike"))
    if rows.height == 0:
        return _empty_items()
    fields = [(n, pl.col(f"_sp_{n}")) for n in ("open", "high", "low", "close")]
    return _items(
        rows,
        kind="spike",
        severity="warning",
        field=_single_field(fields),
        detail=pl.col("_sp_detail"),
        action=action,
    )


def _repair_spikes(spikes: pl.DataFrame) -> pl.DataFrame:
    """New open/high/low/close for spike rows and for the bar after a repaired close whose open
    carried the bad close. Returns ``_pos`` and the new prices of the touched rows."""
    t = pl.col("ts").cast(pl.Int64)
    prev_c, next_c = pl.col("close").shift(1), pl.col("close").shift(-1)
    weight = (t - t.shift(1)) / (t.shift(-1) - t.shift(1))
    interpolated = (
        pl.when(prev_c.is_null())
        .then(next_c)
        .when(next_c.is_null())
        .then(prev_c)
        .otherwise(prev_c + (next_c - prev_c) * weight)
    )
    step = spikes.with_columns(
        pl.when(pl.col("_sp_close")).then(interpolated).otherwise(pl.col("close")).alias("_c"),
    ).with_columns(
        pl.when(pl.col("_sp_open"))
        .then(pl.coalesce(prev_c, pl.col("_c")))
        .otherwise(pl.col("open"))
        .alias("_o"),
    )
    body_top = pl.max_horizontal("_o", "_c")
    body_bottom = pl.min_horizontal("_o", "_c")
    spiky_high = (
        pl.col("_sp_high")
        | (pl.col("_sp_close") & (pl.col("high") == pl.col("close")))
        | (pl.col("_sp_open") & (pl.col("high") == pl.col("open")))
    )
    spiky_low = (
        pl.col("_sp_low")
        | (pl.col("_sp_close") & (pl.col("low") == pl.col("close")))
        | (pl.col("_sp_open") & (pl.col("low") == pl.col("open")))
    )
    step = step.with_columns(
        pl.when(spiky_high)
        .then(body_top)
        .otherwise(pl.max_horizontal("high", body_top))
        .alias("_h"),
        pl.when(spiky_low)
        .then(body_bottom)
        .otherwise(pl.min_horizontal("low", body_bottom))
        .alias("_l"),
    )
    # A vendor that opens each bar at the previous close copies a bad close into the next open.
    carried = (
        pl.col("_sp_close").shift(1).fill_null(False)
        & ~pl.col("_spike")
        & (pl.col("open") == pl.col("close").shift(1))
    )
    new_open = pl.col("_c").shift(1)
    step = step.with_columns(
        carried.alias("_carried"),
        pl.when(carried).then(new_open).otherwise(pl.col("_o")).alias("_o2"),
    ).with_columns(
        pl.when(pl.col("_carried") & (pl.col("high") == pl.col("open")))
        .then(pl.max_horizontal("_o2", "_c"))
        .otherwise(pl.max_horizontal("_h", "_o2"))
        .alias("_h2"),
        pl.when(pl.col("_carried") & (pl.col("low") == pl.col("open")))
        .then(pl.min_horizontal("_o2", "_c"))
        .otherwise(pl.min_horizontal("_l", "_o2"))
        .alias("_l2"),
    )
    return step.filter(pl.col("_spike") | pl.col("_carried")).select(
        _POS,
        pl.col("_o2").alias("_new_open"),
        pl.col("_h2").alias("_new_high"),
        pl.col("_l2").alias("_new_low"),
        pl.col("_c").alias("_new_close"),
    )


# ---------------------------------------------------------------------------------------------
# Validation


def validate_bars(
    frame: pl.DataFrame,
    *,
    timeframe: str | dt.timedelta | None = None,
    source: str | None = None,
    spike_z: float = DEFAULT_SPIKE_Z,
    jump_z: float = DEFAULT_JUMP_Z,
    gap_tolerance: dt.timedelta = DEFAULT_GAP_TOLERANCE,
    row_kind: str = "row",
    max_price_ratio: float = MAX_PRICE_RATIO,
) -> ValidationReport:
    """List every problem of a raw bars frame without changing it.

    ``frame``: canonical bar columns and dtypes, any order, optional ``row`` (source location).
    ``timeframe`` defaults to the most common spacing of the distinct timestamps. Duplicates,
    out-of-order rows, bad prices, OHLC inconsistencies and flat candles are checked on every
    row; spikes and gaps on the distinct timestamps in time order (the first copy of each),
    spikes only on rows with valid prices that are not flat candles. A row with an implausible
    price (``max_price_ratio`` or more times off the median close) is reported as such and
    left out of the OHLC, flat-candle and spike checks. ``row_kind`` ("line",
    "record" or "row") is how texts name ``row``. Raises ``BarsSchemaError`` for a frame that is
    not bars and ``DataError`` for a missing timestamp. See the module docstring for the kinds,
    severities, closure windows and the spike test.
    """
    prepared = _prepare(frame, source, row_kind)
    ordered = _in_time_order(prepared)
    tf = _resolve_timeframe(ordered, timeframe)
    parts = [_out_of_order_items(prepared, "")]
    duplicates, _ = _duplicate_items(
        ordered, keep="first", prefer_valid=False, row_kind=row_kind, action=""
    )
    parts.append(duplicates)
    parts.append(_bad_price_items(ordered, ""))
    implausible = _implausible_items(ordered, max_price_ratio, "")
    parts.append(implausible)
    plausible = _drop_positions(ordered, implausible)
    parts.append(_ohlc_items(plausible, ""))
    parts.append(_flat_items(plausible, tf, gap_tolerance, ""))
    unique = ordered.filter(pl.col(_POS) == pl.col(_POS).min().over("ts"))
    parts.append(
        _spike_items(_spike_rows(_drop_positions(unique, implausible), tf, spike_z, jump_z), "")
    )
    gaps = pl.DataFrame(schema=GAP_SCHEMA)
    if tf is not None:
        gaps = _gap_frame(unique.get_column("ts"), tf, gap_tolerance)
        parts.append(_gap_items(unique, gaps, tf, ""))
    return ValidationReport(
        issues=_finish_issues(parts),
        source=source,
        timeframe=tf,
        n_input=prepared.height,
        n_output=prepared.height,
        row_kind=row_kind,
        gaps=gaps,
    )


# ---------------------------------------------------------------------------------------------
# Cleaning


def _raise_at(
    items: pl.DataFrame, message: str, source: str | None, row_kind: str, frame: pl.DataFrame
) -> None:
    """Raise a DataError at the first item (``frame`` gives the offending value)."""
    first = items.row(0, named=True)
    text = f"{message}: {first['detail']}"
    if items.height > 1:
        text = f"{text} ({items.height} rows like this in all; the first is shown)"
    value = None
    if first["field"] is not None and first["field"] in frame.columns:
        match = frame.filter(pl.col(_POS) == first[_POS])
        if match.height:
            value = match.get_column(first["field"])[0]
    raise DataError(
        text,
        file=source,
        row=first["row"],
        field=first["field"],
        value=value,
        row_kind=row_kind,
    )


def _drop_positions(frame: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(~pl.col(_POS).is_in(items.get_column(_POS).implode()))


def _interpolate_bad_prices(
    frame: pl.DataFrame, items: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Replace bad values by linear interpolation in time; rows that stay incomplete (no valid
    neighbour on one side) are dropped. Returns the frame and the items with their actions."""
    columns = [*_price_columns(frame), "volume"]
    repaired = frame.with_columns(
        [
            pl.when(_bad_value(c)).then(None).otherwise(pl.col(c)).interpolate_by("ts").alias(c)
            for c in columns
        ]
    )
    incomplete = repaired.filter(pl.any_horizontal([pl.col(c).is_null() for c in columns]))
    lost = incomplete.get_column(_POS).implode()
    items = items.with_columns(
        pl.when(pl.col(_POS).is_in(lost))
        .then(pl.lit("dropped"))
        .otherwise(pl.lit("interpolated"))
        .alias("action"),
        pl.when(pl.col(_POS).is_in(lost))
        .then(_fmt("{}; no valid neighbour to interpolate from", pl.col("detail")))
        .otherwise(pl.col("detail"))
        .alias("detail"),
    )
    touched = items.filter(pl.col("action") == "interpolated").get_column(_POS).implode()
    repaired = repaired.filter(~pl.col(_POS).is_in(lost)).with_columns(
        _add_flag(pl.col(_POS).is_in(touched), Flag.PRICE_REPAIRED)
    )
    return repaired, items


def _fix_ohlc(frame: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    touched = pl.col(_POS).is_in(items.get_column(_POS).implode())
    fixes = []
    for p in _ohlc_sets(frame):
        names = [f"{p}{n}" for n in PRICE_COLUMNS]
        fixes.append(
            pl.when(touched)
            .then(pl.max_horizontal(names))
            .otherwise(pl.col(f"{p}high"))
            .alias(f"{p}high")
        )
        fixes.append(
            pl.when(touched)
            .then(pl.min_horizontal(names))
            .otherwise(pl.col(f"{p}low"))
            .alias(f"{p}low")
        )
    return frame.with_columns(fixes).with_columns(_add_flag(touched, Flag.OHLC_FIXED))


def _fill_gaps(
    frame: pl.DataFrame,
    gaps: pl.DataFrame,
    timeframe: dt.timedelta,
    method: Literal["linear", "ffill"],
) -> pl.DataFrame:
    """Bars for the missing slots of ``gaps`` (all to be filled), built from the bars around them."""
    prefixes = _ohlc_sets(frame)
    after = frame.select(
        pl.col("ts").alias("gap_end"),
        *[pl.col(f"{p}open").alias(f"_next_{p}open") for p in prefixes],
    )
    base = (
        gaps.select("gap_start", "gap_end", "missing_bars")
        .join(frame.rename({"ts": "gap_start"}), on="gap_start")
        .join(after, on="gap_end")
        .with_columns(pl.int_ranges(1, pl.col("missing_bars") + 1).alias("_k"))
        .explode("_k")
    )
    steps = pl.col("missing_bars") + 1
    prices = []
    for p in prefixes:
        prev_close = pl.col(f"{p}close")
        if method == "linear":
            slope = (pl.col(f"_next_{p}open") - prev_close) / steps
            close = prev_close + slope * pl.col("_k")
            open_ = prev_close + slope * (pl.col("_k") - 1)
        else:
            close = prev_close
            open_ = prev_close
        prices += [open_.alias(f"_o_{p}"), close.alias(f"_c_{p}")]
    base = base.with_columns(prices)
    inserted = base.with_columns(
        (pl.col("gap_start") + pl.col("_k") * timeframe).alias("ts"),
        *[pl.col(f"_o_{p}").alias(f"{p}open") for p in prefixes],
        *[pl.col(f"_c_{p}").alias(f"{p}close") for p in prefixes],
        *[pl.max_horizontal(f"_o_{p}", f"_c_{p}").alias(f"{p}high") for p in prefixes],
        *[pl.min_horizontal(f"_o_{p}", f"_c_{p}").alias(f"{p}low") for p in prefixes],
        pl.lit(0.0).alias("volume"),
        pl.lit(None, dtype=pl.Int64).alias("row"),
        pl.lit(None, dtype=pl.Int64).alias(_POS),
        _flag(Flag.INTERPOLATED).alias(_FLAGS),
    )
    return inserted.select(frame.columns).cast(frame.schema)  # type: ignore[arg-type]


def clean_bars(
    frame: pl.DataFrame,
    policy: CleaningPolicy | None = None,
    *,
    source: str | None = None,
    timeframe: str | dt.timedelta | None = None,
    row_kind: str = "row",
) -> tuple[pl.DataFrame, ValidationReport]:
    """Repair a raw bars frame under ``policy`` (default ``CleaningPolicy()``).

    Returns canonical bars (sorted, unique ``ts``, ``check_bars(out) == []``, no ``row`` column,
    a ``UInt32`` ``flags`` column OR-ed with any input flags) and the report of what was found
    and done, item by item. Steps, in order: sort (out-of-order rows flagged ``REORDERED``),
    duplicates, implausible prices (an error by default), bad prices, OHLC, flat candles, spikes,
    gaps; each step works on what the previous ones kept, so spikes and gaps are those of the
    output. Every dropped row is an item
    with action "dropped": ``report.n_input == report.n_output + report.n_dropped -
    report.n_inserted``. The "error" policies raise ``DataError`` naming ``source``, the row
    (``row_kind``: "line", "record" or "row") and the field.
    """
    policy = policy if policy is not None else CleaningPolicy()
    prepared = _prepare(frame, source, row_kind)
    n_input = prepared.height
    parts: list[pl.DataFrame] = []

    # 1. Order.
    parts.append(_out_of_order_items(prepared, "reordered"))
    work = _in_time_order(prepared.with_columns(_add_flag(_out_of_order_mask(), Flag.REORDERED)))
    tf = _resolve_timeframe(work, timeframe)

    # 2. Duplicates.
    keep: Literal["first", "last"] = "first" if policy.duplicates == "first" else "last"
    duplicates, kept = _duplicate_items(
        work, keep=keep, prefer_valid=True, row_kind=row_kind, action="dropped"
    )
    if policy.duplicates == "error":
        conflicts = duplicates.filter(pl.col("_conflict"))
        if conflicts.height:
            first = conflicts.row(0, named=True)
            raise DataError(
                f"duplicate timestamp {first['ts']:%Y-%m-%d %H:%M:%S} with conflicting values in "
                f"{row_kind} {first['_kept_row']} and {row_kind} {first['row']}: {first['detail']}",
                file=source,
                row=first["row"],
                field=first["_first_diff"],
                row_kind=row_kind,
            )
    parts.append(duplicates)
    work = _drop_positions(work, duplicates).with_columns(
        _add_flag(pl.col(_POS).is_in(kept.get_column(_POS).implode()), Flag.DUPLICATE_RESOLVED)
    )

    # 3. Implausible prices (before anything is computed from the prices).
    implausible = _implausible_items(work, policy.max_price_ratio, "dropped")
    if implausible.height:
        if policy.implausible_prices == "error":
            _raise_at(implausible.sort(_POS), "implausible price", source, row_kind, work)
        work = _drop_positions(work, implausible)
    parts.append(implausible)

    # 4. Bad prices.
    bad = _bad_price_items(work, "dropped")
    if bad.height:
        if policy.bad_prices == "error":
            _raise_at(bad, "bad price", source, row_kind, work)
        if policy.bad_prices == "drop":
            work = _drop_positions(work, bad)
        else:
            work, bad = _interpolate_bad_prices(work, bad)
            work = _drop_positions(work, bad.filter(pl.col("action") == "dropped"))
    parts.append(bad)

    # 5. OHLC consistency.
    action = {"fix": "repaired", "drop": "dropped", "error": ""}[policy.ohlc]
    ohlc = _ohlc_items(work, action)
    if ohlc.height:
        if policy.ohlc == "error":
            _raise_at(ohlc, "inconsistent OHLC", source, row_kind, work)
        work = _fix_ohlc(work, ohlc) if policy.ohlc == "fix" else _drop_positions(work, ohlc)
    parts.append(ohlc)

    # 6. Flat zero-volume candles.
    flats = _flat_items(
        work, tf, policy.gap_tolerance, "dropped" if policy.flat_candles == "drop" else "kept"
    )
    if policy.flat_candles == "drop":
        work = _drop_positions(work, flats)
    parts.append(flats)

    # 7. Spikes (measured on the rows kept so far, flat candles excluded).
    spike_action = {"flag": "flagged", "interpolate": "interpolated", "drop": "dropped"}[
        policy.spikes
    ]
    spikes = _spike_rows(work, tf, policy.spike_z, policy.jump_z)
    spike_items = _spike_items(spikes, spike_action)
    if spike_items.height and spikes is not None:
        positions = pl.col(_POS).is_in(spike_items.get_column(_POS).implode())
        if policy.spikes == "flag":
            work = work.with_columns(_add_flag(positions, Flag.SPIKE))
        elif policy.spikes == "drop":
            work = _drop_positions(work, spike_items)
        else:
            repairs = _repair_spikes(spikes)
            work = (
                work.join(repairs, on=_POS, how="left")
                .with_columns(
                    *[pl.coalesce(f"_new_{c}", c).alias(c) for c in PRICE_COLUMNS],
                    _add_flag(pl.col("_new_close").is_not_null(), Flag.SPIKE_REPAIRED),
                )
                .drop([f"_new_{c}" for c in PRICE_COLUMNS])
            )
    parts.append(spike_items)
    del spikes  # the spike columns of every row: hundreds of MB at 10M bars

    # 8. Gaps of what is left.
    n_inserted = 0
    output_gaps = pl.DataFrame(schema=GAP_SCHEMA)
    if tf is not None and work.height >= 2:
        gaps = _gap_frame(work.get_column("ts"), tf, policy.gap_tolerance)
        fill = (
            (pl.col("kind") == "unexpected") & (pl.col("missing_bars") <= policy.max_fill_bars)
            if policy.gaps == "interpolate"
            else pl.lit(False)
        )
        gaps = gaps.with_columns(fill.alias("_fill"))
        gap_items = _gap_items(
            work,
            gaps,
            tf,
            pl.when(pl.col("_fill")).then(pl.lit("interpolated")).otherwise(pl.lit("kept")),
        )
        to_fill = gaps.filter(pl.col("_fill"))
        if to_fill.height:
            inserted = _fill_gaps(work, to_fill, tf, policy.fill)
            n_inserted = inserted.height
            gap_items = gap_items.with_columns(
                pl.when(pl.col("action") == "interpolated")
                .then(_fmt("{}; filled with {} bars", pl.col("detail"), pl.lit(policy.fill)))
                .otherwise(pl.col("detail"))
                .alias("detail")
            )
            work = pl.concat([work, inserted]).sort("ts")
        parts.append(gap_items)
        output_gaps = gaps.filter(~pl.col("_fill")).drop("_fill")

    out = work.drop("row", _POS).rename({_FLAGS: "flags"})
    out = ensure_bars(canonical_column_order(out), source=source)
    report = ValidationReport(
        issues=_finish_issues(parts),
        source=source,
        timeframe=tf,
        n_input=n_input,
        n_output=out.height,
        n_inserted=n_inserted,
        row_kind=row_kind,
        gaps=output_gaps,
    )
    return out, report
