"""A generic look-ahead checker: does a function of bars use bars that come later?

The rule of aiopt: a feature, indicator, pattern or signal at bar ``t`` may use only bars ``<= t``.
:func:`check_no_lookahead` tests any function ``fn(bars) -> frame`` against it empirically:

1. ``fn`` is computed on the full history (the reference).
2. **Prefix trials**: ``fn`` is computed on the first ``c`` bars for ``n_cuts`` random cut points
   ``c``; every output value at a bar ``t < c`` must equal the reference.
3. **Perturbed-future trials**: for the same cut points, the bars from ``c`` on are replaced by a
   different but plausible future (rows drawn at random from the whole history, their prices
   rescaled so they chain on from ``close[c-1]``; ``ts`` is kept); values at ``t < c`` must not move.
   This catches functions that look ahead but happen to give the same value on a shorter frame.
4. **Appended trial**: plausible bars are appended after the last bar (``ts`` continuing at the
   inferred timeframe); every value of the full history must stay as it was. This checks the last
   bars, which no cut can test.

Values compare equal when both are missing (null and NaN count as the same: "no value") or, for
floating-point columns, when they differ by at most ``atol``; other dtypes must match exactly.
Any value at a bar ``t`` that changes when later bars are added, removed or changed is a
:class:`LookaheadViolation` naming the column, the bar (row index and ``ts``), both values and the
trial. The check is empirical: it can prove a leak, not the absence of one, which is why several
random cuts and two kinds of future are used. A function whose output at the warm-up depends on
later bars (e.g. a backward fill) is caught by the early cuts: a quarter of the cuts are drawn
log-uniformly, so short prefixes are always tried.

Labels look forward by design; they fail this check, which is a useful self-test of the checker.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from aiopt_lib.core.bars import ASK_COLUMNS, BID_COLUMNS, PRICE_COLUMNS, infer_timeframe
from aiopt_lib.core.errors import AioptError

__all__ = ["LookaheadError", "check_no_lookahead"]

# Columns in price units: rescaled together when a future is made up, so OHLC stays consistent.
_PRICE_LIKE: tuple[str, ...] = (*PRICE_COLUMNS, *BID_COLUMNS, *ASK_COLUMNS, "spread")
_MAX_APPENDED = 256


def _show(value: Any) -> str:
    """A value for a message: null, numbers and times as text, strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, dt.datetime | dt.date | dt.timedelta):
        return str(value)
    return repr(value)


@dataclass(frozen=True)
class LookaheadViolation:
    """One output column that changed at an earlier bar in one trial.

    ``index`` and ``ts`` locate the first (earliest) bar that changed; ``n_differing`` counts the
    bars of this column that changed in this trial. ``index`` is None when the column was missing
    from the trial's output altogether. ``kind`` is the trial kind (``"prefix"``, ``"perturbed"``
    or ``"appended"``), ``cut`` its cut point: the bars from that index on were removed or changed
    (``len(bars)`` for the appended trial), ``trial`` a sentence saying so.
    """

    column: str
    index: int | None
    ts: dt.datetime | None
    full_value: Any
    trial_value: Any
    trial: str
    n_differing: int
    kind: str
    cut: int

    def __str__(self) -> str:
        if self.index is None:
            return f"'{self.column}': column missing when {self.trial}"
        return (
            f"'{self.column}' at bar {self.index} ({self.ts}): {_show(self.full_value)} on the "
            f"full history, {_show(self.trial_value)} when {self.trial} "
            f"({self.n_differing} bar(s) differ)"
        )


@dataclass(frozen=True)
class LookaheadReport:
    """What :func:`check_no_lookahead` compared and what it found.

    ``cuts`` are the prefix lengths tried, ``columns`` the output columns compared,
    ``n_compared`` the number of (bar, column) values compared over all trials.
    """

    n_bars: int
    cuts: tuple[int, ...]
    columns: tuple[str, ...]
    n_trials: int
    n_compared: int
    violations: tuple[LookaheadViolation, ...]

    @property
    def passed(self) -> bool:
        """True when no value moved in any trial."""
        return not self.violations

    @property
    def leaky_columns(self) -> tuple[str, ...]:
        """The columns with at least one violation, in output column order."""
        bad = {v.column for v in self.violations}
        return tuple(c for c in self.columns if c in bad) + tuple(sorted(bad - set(self.columns)))

    def first(self, column: str) -> LookaheadViolation | None:
        """The violation of ``column`` at the earliest bar (None when the column is clean)."""
        found = [v for v in self.violations if v.column == column]
        if not found:
            return None
        return min(found, key=lambda v: -1 if v.index is None else v.index)

    def summary(self) -> pl.DataFrame:
        """One row per leaky column: trials failed, earliest bar and its ``ts``, and an example."""
        rows = []
        for column in self.leaky_columns:
            first = self.first(column)
            assert first is not None  # leaky_columns only lists columns with violations
            rows.append(
                {
                    "column": column,
                    "trials_failed": sum(v.column == column for v in self.violations),
                    "first_index": first.index,
                    "first_ts": first.ts,
                    "example": str(first),
                }
            )
        schema = {
            "column": pl.String,
            "trials_failed": pl.Int64,
            "first_index": pl.Int64,
            "first_ts": pl.Datetime("us", "UTC"),
            "example": pl.String,
        }
        return pl.DataFrame(rows, schema=schema)

    def __str__(self) -> str:
        head = (
            f"look-ahead check of {len(self.columns)} column(s) on {self.n_bars} bars, "
            f"{self.n_trials} trials, {self.n_compared} values compared: "
        )
        if self.passed:
            return head + "no look-ahead found"
        lines = [head + f"look-ahead in {len(self.leaky_columns)} column(s)"]
        for column in self.leaky_columns:
            lines.append(f"  {self.first(column)}")
        return "\n".join(lines)


class LookaheadError(AioptError):
    """A function's value at some bar depends on later bars; ``report`` holds every violation."""

    def __init__(self, report: LookaheadReport) -> None:
        self.report = report
        shown = [str(report.first(c)) for c in report.leaky_columns[:5]]
        more = len(report.leaky_columns) - len(shown)
        text = f"look-ahead in {len(report.leaky_columns)} column(s): " + "; ".join(shown)
        if more > 0:
            text += f"; and {more} more column(s)"
        super().__init__(text)


def _choose_cuts(n: int, n_cuts: int, min_prefix: int, rng: np.random.Generator) -> list[int]:
    """Prefix lengths in [min_prefix, n): a quarter log-uniform (short prefixes, the warm-up), the
    rest one per equal stratum of the range (so the whole history is covered)."""
    low, high = max(1, min_prefix), n - 1
    if high < low or n_cuts <= 0:
        return []
    n_early = max(1, n_cuts // 4)
    n_spread = max(0, n_cuts - n_early)
    early = np.exp(rng.uniform(math.log(low), math.log(high + 1), size=n_early)).astype(np.int64)
    edges = np.linspace(low, high + 1, n_spread + 1)
    spread = [
        int(rng.integers(int(a), max(int(a) + 1, int(b)))) for a, b in itertools.pairwise(edges)
    ]
    cuts = {int(np.clip(c, low, high)) for c in [*early.tolist(), *spread]}
    return sorted(cuts)


def _made_up_rows(
    bars: pl.DataFrame, count: int, level: float, rng: np.random.Generator
) -> pl.DataFrame:
    """``count`` rows drawn at random from ``bars`` (all columns), price-like columns rescaled so
    that each drawn bar's close-to-close move is replayed from ``level`` on."""
    source = rng.integers(0, bars.height, size=count)
    rows = bars[source]
    if "close" not in bars.columns or count == 0:
        return rows
    close = bars.get_column("close").cast(pl.Float64).to_numpy()
    reference = np.empty_like(close)
    reference[1:] = close[:-1]
    reference[0] = (
        bars.get_column("open").cast(pl.Float64).item(0) if "open" in bars.columns else close[0]
    )
    ratio = close[source] / reference[source]
    ratio = np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0)
    if not (math.isfinite(level) and level > 0):
        level = 1.0
    levels = level * np.cumprod(ratio)
    previous = np.concatenate([[level], levels[:-1]])
    scale = previous / reference[source]
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    factor = pl.Series("_factor", scale)
    return rows.with_columns(
        (pl.col(c) * factor).cast(bars.schema[c])
        for c in _PRICE_LIKE
        if c in bars.columns and bars.schema[c].is_float()
    )


def _level(bars: pl.DataFrame, row: int) -> float:
    """The close at ``row`` as the level a made-up future starts from (1.0 when unknown)."""
    value = bars.get_column("close")[row] if "close" in bars.columns else None
    return float(value) if value is not None else 1.0


def _perturbed(bars: pl.DataFrame, cut: int, rng: np.random.Generator) -> pl.DataFrame:
    """``bars`` with every row from ``cut`` on replaced by a made-up future (``ts`` kept)."""
    level = _level(bars, cut - 1)
    future = _made_up_rows(bars, bars.height - cut, level, rng)
    if "ts" in bars.columns:
        future = future.with_columns(bars.get_column("ts")[cut:].alias("ts"))
    return pl.concat([bars[:cut], future.select(bars.columns)], how="vertical")


def _appended(bars: pl.DataFrame, count: int, rng: np.random.Generator) -> pl.DataFrame:
    """``bars`` followed by ``count`` made-up bars, ``ts`` continuing at the inferred timeframe."""
    level = _level(bars, bars.height - 1)
    extra = _made_up_rows(bars, count, level, rng)
    if "ts" in bars.columns:
        step = infer_timeframe(bars) or dt.timedelta(hours=1)
        last = bars.get_column("ts")[-1]
        stamps = pl.Series(
            "ts", [last + step * (k + 1) for k in range(count)], dtype=bars.schema["ts"]
        )
        extra = extra.with_columns(stamps)
    return pl.concat([bars, extra.select(bars.columns)], how="vertical")


def _differs(full: pl.Series, trial: pl.Series, atol: float) -> np.ndarray:
    """Boolean array: where ``trial`` differs from ``full`` (missing == missing)."""
    if trial.dtype != full.dtype:
        trial = trial.cast(full.dtype, strict=False)
    if full.dtype.is_float():
        a = full.to_numpy().astype(np.float64, copy=False)
        b = trial.to_numpy().astype(np.float64, copy=False)
        missing_a, missing_b = np.isnan(a), np.isnan(b)
        with np.errstate(invalid="ignore"):
            far = ~((a == b) | (np.abs(a - b) <= atol))  # a == b: equal infinities
        return (missing_a != missing_b) | (~missing_a & ~missing_b & far)
    if isinstance(full.dtype, pl.Categorical | pl.Enum):
        full, trial = full.cast(pl.String), trial.cast(pl.String)
    return full.ne_missing(trial).fill_null(True).to_numpy()


def _as_python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _run(
    fn: Callable[[pl.DataFrame], pl.DataFrame], frame: pl.DataFrame, what: str
) -> pl.DataFrame:
    try:
        out = fn(frame)
    except Exception as exc:
        raise RuntimeError(f"the function under test failed {what}: {exc}") from exc
    if not isinstance(out, pl.DataFrame):
        raise TypeError(
            f"the function under test must return a polars DataFrame, got {type(out).__name__}"
        )
    if out.height != frame.height:
        raise ValueError(
            f"the function under test must return one row per bar, in order: got {out.height} "
            f"row(s) for {frame.height} bar(s) {what}"
        )
    return out


def check_no_lookahead(
    fn: Callable[[pl.DataFrame], pl.DataFrame],
    bars: pl.DataFrame,
    *,
    n_cuts: int = 12,
    seed: int = 0,
    columns: Sequence[str] | None = None,
    atol: float = 0.0,
    min_prefix: int = 2,
    n_appended: int | None = None,
    raise_on_failure: bool = True,
) -> LookaheadReport:
    """Check that every output value of ``fn`` at bar ``t`` depends only on bars ``<= t``.

    ``fn`` maps a bars frame to a frame with the same rows in the same order (it may add columns;
    extra non-price columns of ``bars`` are carried along and shuffled with the made-up futures).
    ``columns`` restricts the check to some output columns (default: all of them, inputs
    included). ``n_cuts`` random prefix lengths in ``[min_prefix, len(bars))`` are tried, each as a
    prefix and as a perturbed future, plus one run with ``n_appended`` bars appended (default
    ``min(len(bars), 256)``); ``seed`` makes the cuts and the made-up bars reproducible. Float
    values may differ by ``atol``; null and NaN compare equal to each other (see the module
    docstring for the whole procedure).

    Returns a :class:`LookaheadReport`; when a value moved, raises :class:`LookaheadError`
    (carrying the report and naming each leaky column with its first bar) unless
    ``raise_on_failure`` is False. Raises ``ValueError`` when ``fn`` returns a different number of
    rows, and ``RuntimeError`` (chained) when ``fn`` fails on a prefix.
    """
    if bars.height < 2:
        raise ValueError(f"need at least 2 bars to check for look-ahead, got {bars.height}")
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    rng = np.random.default_rng(seed)
    full = _run(fn, bars, "on the full history")
    checked = list(full.columns if columns is None else columns)
    unknown = [c for c in checked if c not in full.columns]
    if unknown:
        raise ValueError(f"columns {unknown} are not in the output of the function under test")
    ts = bars.get_column("ts") if "ts" in bars.columns else None

    cuts = _choose_cuts(bars.height, n_cuts, min_prefix, rng)
    appended = min(bars.height, _MAX_APPENDED) if n_appended is None else n_appended
    trials: list[tuple[str, str, int, pl.DataFrame]] = []
    for cut in cuts:
        trials.append(("prefix", f"only the first {cut} bars are given", cut, bars[:cut]))
        trials.append(
            (
                "perturbed",
                f"the bars from index {cut} on are changed",
                cut,
                _perturbed(bars, cut, rng),
            )
        )
    if appended > 0:
        trials.append(
            (
                "appended",
                f"{appended} later bars are appended",
                bars.height,
                _appended(bars, appended, rng),
            )
        )

    violations: list[LookaheadViolation] = []
    n_compared = 0
    for kind, trial_name, upto, frame in trials:
        out = _run(fn, frame, f"when {trial_name}")
        for column in checked:
            if column not in out.columns:
                violations.append(
                    LookaheadViolation(column, None, None, None, None, trial_name, upto, kind, upto)
                )
                continue
            reference = full.get_column(column)[:upto]
            got = out.get_column(column)[:upto]
            changed = _differs(reference, got, atol)
            n_compared += upto
            if changed.any():
                index = int(np.argmax(changed))
                violations.append(
                    LookaheadViolation(
                        column=column,
                        index=index,
                        ts=ts[index] if ts is not None else None,
                        full_value=_as_python(reference[index]),
                        trial_value=_as_python(got[index]),
                        trial=trial_name,
                        n_differing=int(changed.sum()),
                        kind=kind,
                        cut=upto,
                    )
                )
    report = LookaheadReport(
        n_bars=bars.height,
        cuts=tuple(cuts),
        columns=tuple(checked),
        n_trials=len(trials),
        n_compared=n_compared,
        violations=tuple(violations),
    )
    if raise_on_failure and not report.passed:
        raise LookaheadError(report)
    return report
