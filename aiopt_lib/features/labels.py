"""Labels: what happened after each bar, as BUY / SELL / HOLD, with the time each label ends.

Labels are the only things in aiopt that look forward. Each labelling function returns one row per
bar (same order as the bars) with ``ts``, ``label`` and ``label_end_ts`` plus the quantities the
label was made from. Its conventions:

Classes
    ``label`` has the polars dtype :data:`LABEL_DTYPE`, an ``Enum`` of :data:`CLASSES` =
    ``("BUY", "SELL", "HOLD")``. The order is fixed everywhere in aiopt: class index 0 = BUY,
    1 = SELL, 2 = HOLD (``label.to_physical()``); models output probabilities in that order.

Entry reference
    A signal computed at bar ``t`` is known when bar ``t`` closes, so it is acted on at bar
    ``t+1``'s **open** (TradingView's default fill for strategies): ``entry="next_open"``, the
    default, makes the entry price ``open[t+1]``. ``entry="close"`` uses ``close[t]`` instead
    (the price the signal saw; optimistic, for comparison with the literature).

End time and the tail
    ``label_end_ts`` is the ``ts`` of the last bar whose data the label used (the horizon's last
    bar, or the bar where a barrier was touched). Purging (:mod:`aiopt_lib.features.splits`) uses the
    interval ``[ts, label_end_ts]``. A bar whose horizon runs past the end of the data gets a null
    label (and null end time and values): a label is never computed from an incomplete future. The
    horizon is counted in bars, so it spans a weekend when one falls inside it.

ATR
    ATR-scaled thresholds and barriers use ``ATR_t``, TradingView's ``ta.atr`` (Wilder's RMA of the
    true range, :func:`aiopt_lib.features.indicators.atr`) at bar ``t``: known at ``t``'s close, before the
    entry. During the ATR warm-up (its first ``atr_length - 1`` bars) such labels are null too.

Forward-return labels (:func:`forward_return_labels`)
    ``fwd_return = close[t+h] / entry - 1``; BUY when ``fwd_return > threshold_t``, SELL when
    ``fwd_return < -threshold_t``, else HOLD. ``threshold_t`` is fixed (a return, e.g. 0.001 =
    10 basis points) or ``atr_multiple * ATR_t / close_t``.

Triple-barrier labels (:func:`triple_barrier_labels`, López de Prado, *Advances in Financial
Machine Learning*, ch. 3)
    From the entry, upper barrier = entry + ``take_profit`` × ATR_t, lower = entry −
    ``stop_loss`` × ATR_t, time barrier = the close of bar ``t+h``. The path is walked bar by bar
    from bar ``t+1``: an open at or beyond a barrier touches it at the open (a gap); otherwise a
    high ``>= upper`` touches the upper barrier and a low ``<= lower`` the lower one. First touch
    decides: upper → BUY, lower → SELL, time → HOLD (``time_label="hold"``) or the sign of the
    return at the time barrier when its size exceeds ``min_return`` (``time_label="sign"``).
    When one bar crosses both barriers the order inside the bar is unknown; ``ambiguous`` says
    what to assume:

    * ``"hold"`` (default, conservative): neither direction is claimed; the label is HOLD and
      ``barrier`` is ``"both"``.
    * ``"stop_first"``: the lower barrier (a long position's stop) is hit first → SELL.
    * ``"intrabar_path"``: TradingView's broker-emulator rule: if the high is nearer the open than
      the low (``high - open < open - low``) the path is open → high → low → close (upper first),
      otherwise open → low → high → close (lower first; ties go this way).

    The walk is a numba loop (``cache=True``), tested against a plain Python reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numba
import numpy as np
import polars as pl

from aiopt_lib.core.bars import ensure_bars
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features.indicators import atr as _atr

__all__ = [
    "CLASSES",
    "ForwardReturnParams",
    "TripleBarrierParams",
    "class_balance",
    "forward_return_labels",
    "triple_barrier_labels",
]

if TYPE_CHECKING:
    from aiopt_lib.features.splits import Split

CLASSES: tuple[str, str, str] = ("BUY", "SELL", "HOLD")
LABEL_DTYPE = pl.Enum(list(CLASSES))
BARRIERS: tuple[str, ...] = ("upper", "lower", "time", "both")
BARRIER_DTYPE = pl.Enum(list(BARRIERS))

Entry = Literal["next_open", "close"]
Ambiguous = Literal["hold", "stop_first", "intrabar_path"]
TimeLabel = Literal["hold", "sign"]

_BUY, _SELL, _HOLD, _NONE = 0, 1, 2, -1
_UPPER, _LOWER, _TIME, _BOTH = 0, 1, 2, 3
_AMBIGUOUS_CODES = {"hold": 0, "stop_first": 1, "intrabar_path": 2}


@dataclass(frozen=True)
class ForwardReturnParams:
    """Parameters of :func:`forward_return_labels`.

    ``horizon``: bars ahead (the exit is ``close[t+horizon]``). ``threshold``: the fixed return
    threshold, used when ``atr_multiple`` is None. ``atr_multiple``: when set, the threshold at
    bar t is ``atr_multiple * ATR_t / close_t`` (``atr_length`` bars). ``entry``: ``"next_open"``
    (default) or ``"close"``.
    """

    horizon: int = 12
    threshold: float = 0.001
    atr_multiple: float | None = None
    atr_length: int = 14
    entry: Entry = "next_open"

    def __post_init__(self) -> None:
        _check_common(self.horizon, self.atr_length, self.entry)
        if self.threshold < 0:
            raise ConfigError(f"threshold must be >= 0, got {self.threshold}")
        if self.atr_multiple is not None and self.atr_multiple < 0:
            raise ConfigError(f"atr_multiple must be >= 0, got {self.atr_multiple}")


@dataclass(frozen=True)
class TripleBarrierParams:
    """Parameters of :func:`triple_barrier_labels`.

    ``horizon``: the time barrier in bars. ``take_profit`` / ``stop_loss``: the upper / lower
    barrier distances in ATR_t multiples (> 0). ``ambiguous``: ``"hold"``, ``"stop_first"`` or
    ``"intrabar_path"`` (a bar crossing both barriers, see the module docstring). ``time_label``:
    ``"hold"`` or ``"sign"`` (with ``min_return``) at the time barrier.
    """

    horizon: int = 24
    take_profit: float = 2.0
    stop_loss: float = 2.0
    atr_length: int = 14
    entry: Entry = "next_open"
    ambiguous: Ambiguous = "hold"
    time_label: TimeLabel = "hold"
    min_return: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.horizon, self.atr_length, self.entry)
        if not (self.take_profit > 0 and self.stop_loss > 0):
            raise ConfigError(
                f"take_profit and stop_loss must be > 0, got {self.take_profit}, {self.stop_loss}"
            )
        if self.ambiguous not in _AMBIGUOUS_CODES:
            raise ConfigError(
                f"ambiguous must be one of {sorted(_AMBIGUOUS_CODES)}, got {self.ambiguous!r}"
            )
        if self.time_label not in ("hold", "sign"):
            raise ConfigError(f"time_label must be 'hold' or 'sign', got {self.time_label!r}")
        if self.min_return < 0:
            raise ConfigError(f"min_return must be >= 0, got {self.min_return}")


def _check_common(horizon: int, atr_length: int, entry: str) -> None:
    if horizon < 1:
        raise ConfigError(f"horizon must be >= 1 bar, got {horizon}")
    if atr_length < 1:
        raise ConfigError(f"atr_length must be >= 1, got {atr_length}")
    if entry not in ("next_open", "close"):
        raise ConfigError(f"entry must be 'next_open' or 'close', got {entry!r}")


def _atr_values(bars: pl.DataFrame, length: int) -> np.ndarray:
    """ATR_t as float64 with NaN during the warm-up."""
    values = _atr(
        bars.get_column("high").to_numpy(),
        bars.get_column("low").to_numpy(),
        bars.get_column("close").to_numpy(),
        length,
    )
    return np.asarray(values, dtype=np.float64)


def _class_expr(up: pl.Expr, down: pl.Expr, known: pl.Expr) -> pl.Expr:
    """BUY where ``up``, SELL where ``down``, else HOLD; null where not ``known``."""
    return (
        pl.when(~known)
        .then(pl.lit(None, dtype=pl.String))
        .when(up)
        .then(pl.lit("BUY"))
        .when(down)
        .then(pl.lit("SELL"))
        .otherwise(pl.lit("HOLD"))
        .cast(LABEL_DTYPE)
    )


def forward_return_labels(
    bars: pl.DataFrame, params: ForwardReturnParams = ForwardReturnParams()
) -> pl.DataFrame:
    """BUY / SELL / HOLD from the return over the next ``params.horizon`` bars.

    Returns one row per bar: ``ts``, ``label`` (:data:`LABEL_DTYPE`), ``label_end_ts``
    (``ts[t+h]``), ``entry_price`` (``open[t+1]`` or ``close[t]``), ``exit_price``
    (``close[t+h]``), ``fwd_return`` (``exit / entry - 1``) and ``threshold`` (the return
    threshold used at t). All are null on the last ``horizon`` bars (incomplete future) and, for
    ATR-scaled thresholds, during the ATR warm-up. See the module docstring for the conventions.
    """
    ensure_bars(bars)
    h = params.horizon
    entry = pl.col("open").shift(-1) if params.entry == "next_open" else pl.col("close")
    exit_price = pl.col("close").shift(-h)
    if params.atr_multiple is None:
        threshold = pl.lit(params.threshold, dtype=pl.Float64)
    else:
        atr_t = pl.Series("_atr", _atr_values(bars, params.atr_length)).fill_nan(None)
        threshold = params.atr_multiple * pl.lit(atr_t) / pl.col("close")
    # the future is complete only where bar t+h exists
    complete = pl.col("ts").shift(-h).is_not_null()
    frame = bars.select(
        "ts",
        pl.when(complete).then(entry).alias("entry_price"),
        pl.when(complete).then(exit_price).alias("exit_price"),
        pl.when(complete).then(threshold).alias("threshold"),
        pl.col("ts").shift(-h).alias("label_end_ts"),
    ).with_columns((pl.col("exit_price") / pl.col("entry_price") - 1.0).alias("fwd_return"))
    known = pl.col("fwd_return").is_not_null() & pl.col("threshold").is_not_null()
    return frame.select(
        "ts",
        _class_expr(
            pl.col("fwd_return") > pl.col("threshold"),
            pl.col("fwd_return") < -pl.col("threshold"),
            known,
        ).alias("label"),
        pl.when(known).then(pl.col("label_end_ts")).alias("label_end_ts"),
        *(pl.when(known).then(pl.col(c)).alias(c) for c in ("entry_price", "exit_price")),
        pl.when(known).then(pl.col("fwd_return")).alias("fwd_return"),
        pl.when(known).then(pl.col("threshold")).alias("threshold"),
    )


@numba.njit(cache=True)
def _triple_barrier_kernel(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    atr: np.ndarray,
    horizon: int,
    take_profit: float,
    stop_loss: float,
    entry_next_open: bool,
    ambiguous: int,
    time_sign: bool,
    min_return: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first-touch walk; codes: label 0 BUY 1 SELL 2 HOLD -1 none; barrier 0 upper 1 lower
    2 time 3 both -1 none; touch -1 none; prices NaN where no label."""
    n = close.shape[0]
    label = np.full(n, -1, dtype=np.int8)
    barrier = np.full(n, -1, dtype=np.int8)
    touch = np.full(n, -1, dtype=np.int64)
    entry_price = np.full(n, np.nan)
    upper_price = np.full(n, np.nan)
    lower_price = np.full(n, np.nan)
    exit_price = np.full(n, np.nan)
    for t in range(n - horizon):
        a = atr[t]
        entry = open_[t + 1] if entry_next_open else close[t]
        if not (np.isfinite(a) and np.isfinite(entry)):
            continue
        upper = entry + take_profit * a
        lower = entry - stop_loss * a
        hit = -1
        price = np.nan
        j = t + 1
        end = t + horizon
        while j <= end:
            o = open_[j]
            if o >= upper:  # gapped through the upper barrier: touched at the open
                hit = 0
                price = o
                break
            if o <= lower:
                hit = 1
                price = o
                break
            up = high[j] >= upper
            down = low[j] <= lower
            if up and down:
                if ambiguous == 0:
                    hit = 3
                    price = close[j]
                elif ambiguous == 1:
                    hit = 1
                    price = lower
                elif high[j] - o < o - low[j]:  # TradingView: high nearer the open → high first
                    hit = 0
                    price = upper
                else:
                    hit = 1
                    price = lower
                break
            if up:
                hit = 0
                price = upper
                break
            if down:
                hit = 1
                price = lower
                break
            j += 1
        if hit == -1:
            hit = 2
            j = end
            price = close[end]
        code = 2
        if hit == 0:
            code = 0
        elif hit == 1:
            code = 1
        elif hit == 2 and time_sign:
            r = price / entry - 1.0
            if r > min_return:
                code = 0
            elif r < -min_return:
                code = 1
        label[t] = code
        barrier[t] = hit
        touch[t] = j
        entry_price[t] = entry
        upper_price[t] = upper
        lower_price[t] = lower
        exit_price[t] = price
    return label, barrier, touch, entry_price, upper_price, lower_price, exit_price


def _codes_to_enum(
    codes: np.ndarray, names: tuple[str, ...], dtype: pl.Enum, name: str
) -> pl.Series:
    physical = pl.Series(name, codes.astype(np.int64)).replace(-1, None)
    return physical.replace_strict(
        list(range(len(names))), list(names), return_dtype=pl.String
    ).cast(dtype)


def triple_barrier_labels(
    bars: pl.DataFrame, params: TripleBarrierParams = TripleBarrierParams()
) -> pl.DataFrame:
    """Triple-barrier labels (upper → BUY, lower → SELL, time → HOLD or sign), first touch wins.

    Returns one row per bar: ``ts``, ``label`` (:data:`LABEL_DTYPE`), ``label_end_ts`` (the
    ``ts`` of the touch bar, or of bar ``t+h`` at the time barrier), ``touch_index`` (that bar's
    row index, Int64), ``touch_ts`` (= ``label_end_ts``), ``barrier`` (:data:`BARRIER_DTYPE`:
    upper, lower, time, or both when ``ambiguous="hold"`` met a bar crossing both),
    ``entry_price``, ``upper_barrier``, ``lower_barrier``, ``exit_price`` (the barrier price, the
    open when a bar gapped through it, the close at the time barrier or of the ambiguous bar) and
    ``ret`` (``exit_price / entry_price - 1``). Null on the last ``horizon`` bars and during the
    ATR warm-up. See the module docstring for the path rules.
    """
    ensure_bars(bars)
    atr_t = _atr_values(bars, params.atr_length)
    label, barrier, touch, entry, upper, lower, exit_price = _triple_barrier_kernel(
        bars.get_column("open").to_numpy().astype(np.float64),
        bars.get_column("high").to_numpy().astype(np.float64),
        bars.get_column("low").to_numpy().astype(np.float64),
        bars.get_column("close").to_numpy().astype(np.float64),
        atr_t,
        params.horizon,
        float(params.take_profit),
        float(params.stop_loss),
        params.entry == "next_open",
        _AMBIGUOUS_CODES[params.ambiguous],
        params.time_label == "sign",
        float(params.min_return),
    )
    touch_index = pl.Series("touch_index", touch).replace(-1, None)
    ts = bars.get_column("ts")
    touch_ts = ts.gather(touch_index.fill_null(0)).alias("touch_ts")
    touch_ts = pl.select(pl.when(touch_index.is_not_null()).then(touch_ts)).to_series()
    return pl.DataFrame(
        {
            "ts": ts,
            "label": _codes_to_enum(label, CLASSES, LABEL_DTYPE, "label"),
            "label_end_ts": touch_ts.alias("label_end_ts"),
            "touch_index": touch_index,
            "touch_ts": touch_ts.alias("touch_ts"),
            "barrier": _codes_to_enum(barrier, BARRIERS, BARRIER_DTYPE, "barrier"),
            "entry_price": pl.Series(entry).fill_nan(None),
            "upper_barrier": pl.Series(upper).fill_nan(None),
            "lower_barrier": pl.Series(lower).fill_nan(None),
            "exit_price": pl.Series(exit_price).fill_nan(None),
        }
    ).with_columns((pl.col("exit_price") / pl.col("entry_price") - 1.0).alias("ret"))


def class_balance(
    labels: pl.DataFrame | pl.Series,
    *,
    column: str = "label",
    split: Split | None = None,
) -> pl.DataFrame:
    """Counts and shares of BUY, SELL, HOLD (every class listed, in that order, even when absent).

    ``labels`` is a labels frame (its ``column``) or a Series of labels. With ``split`` (a
    :class:`aiopt_lib.features.splits.Split` over the same rows) the table has one block per part
    (``part``: train, validation, test). Shares are of the labelled rows of each part; null labels
    are not a class and are counted in ``unlabeled`` (the same value on each row of a part).
    """
    series = labels if isinstance(labels, pl.Series) else labels.get_column(column)
    series = series.cast(pl.String).cast(LABEL_DTYPE)
    parts: list[tuple[str | None, pl.Series]]
    if split is None:
        parts = [(None, series)]
    else:
        if split.n_rows != series.len():
            raise ValueError(f"split is over {split.n_rows} rows, labels have {series.len()}")
        parts = [
            (name, series.gather(split.indices(name))) for name in ("train", "validation", "test")
        ]
    blocks = []
    for name, values in parts:
        counts = values.drop_nulls().value_counts(name="count")
        table = (
            pl.DataFrame({"class": pl.Series(CLASSES, dtype=LABEL_DTYPE)})
            .join(counts.rename({values.name: "class"}), on="class", how="left")
            .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
        )
        labelled = int(table.get_column("count").sum())
        table = table.with_columns(
            (pl.col("count") / labelled if labelled else pl.lit(None, dtype=pl.Float64)).alias(
                "share"
            ),
            pl.lit(values.null_count(), dtype=pl.Int64).alias("unlabeled"),
        )
        if name is not None:
            table = table.select(pl.lit(name).alias("part"), pl.all())
        blocks.append(table)
    return pl.concat(blocks)
