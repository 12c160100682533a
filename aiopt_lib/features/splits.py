"""Time-ordered train / validation / test splits with purging and embargo.

Every training and search step of aiopt splits its samples with this module (López de Prado,
*Advances in Financial Machine Learning*, ch. 7). A sample is a row with a time ``ts`` and a label
that used the data up to ``label_end_ts`` (:mod:`aiopt_lib.features.labels`), so its label interval is
``[ts, label_end_ts]``. Samples must be sorted by ``ts``; equal times are allowed (several symbols).

Roles
    The **test** part is never touched. The **validation** part picks models (early stopping,
    hyper-parameters), so as far as the test is concerned it is training data. Hence: training
    rows are purged and embargoed against the validation and test periods; validation rows are
    purged and embargoed against the test period.

Evaluation period
    Each contiguous run (in row order) of validation or test rows is one period, from its first
    ``ts`` to the largest ``label_end_ts`` of its rows (its labels' information ends there).

Purge
    A training (or validation) row whose label interval ``[ts, label_end_ts]`` overlaps an
    evaluation period ``[start, end]`` (``ts <= end`` and ``label_end_ts >= start``) is dropped:
    its label was computed from prices the evaluation part is scored on. Rows before a period are
    caught by their ``label_end_ts``; rows inside or tied with it by their ``ts``.

Embargo
    Features are serially correlated, so a row just *after* an evaluation period still carries
    information from it. The embargo drops the training (or validation) rows that follow an
    evaluation period's end: the next ``embargo`` rows when an ``int``; ``ceil(embargo * n_rows)``
    rows when a ``float`` in ``(0, 1)`` (López de Prado's ``pct_embargo``); the rows with ``ts`` in
    ``(end, end + embargo]`` when a ``datetime.timedelta``. In a forward layout (training before
    evaluation, as in walk-forward) no training data follows an evaluation period and the embargo
    drops nothing; it bites in :func:`purged_kfold_splits` and in :func:`purged_split` with an
    ``order`` that puts training after validation or test.

Nothing is lost silently: every :class:`Split` counts its rows as
``train + validation + test + purged + embargoed + unused == n_rows`` (``unused``: rows outside a
walk-forward fold's window).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from aiopt_lib.core.errors import ConfigError, DataError

__all__ = ["Split", "purged_kfold_splits", "purged_split", "walk_forward_splits"]

PARTS: tuple[str, str, str] = ("train", "validation", "test")

Embargo = int | float | dt.timedelta


@dataclass(frozen=True, eq=False)
class Split:
    """One split of ``n_rows`` samples: ascending row positions per part and the dropped rows.

    ``train``, ``validation``, ``test``: ``int64`` row positions (ascending). ``purged`` and
    ``embargoed``: positions dropped from training or validation by the purge / the embargo
    (see the module docstring). ``unused``: rows in no part of this split (outside a walk-forward
    fold's window). ``fold``: the fold number (0 for a single split).
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    purged: np.ndarray
    embargoed: np.ndarray
    n_rows: int
    unused: int = 0
    fold: int = 0

    def __post_init__(self) -> None:
        total = sum(len(a) for a in self._arrays()) + self.unused
        if total != self.n_rows:
            raise ValueError(f"split counts do not add up: {total} rows != n_rows {self.n_rows}")

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.train, self.validation, self.test, self.purged, self.embargoed)

    def indices(self, part: str) -> np.ndarray:
        """Row positions of ``part`` (train, validation, test, purged or embargoed)."""
        if part not in (*PARTS, "purged", "embargoed"):
            raise ValueError(f"unknown part {part!r}; use one of {[*PARTS, 'purged', 'embargoed']}")
        return getattr(self, part)

    def mask(self, part: str) -> np.ndarray:
        """A Boolean mask over the ``n_rows`` samples, True on the rows of ``part``."""
        out = np.zeros(self.n_rows, dtype=bool)
        out[self.indices(part)] = True
        return out

    def take(self, samples: pl.DataFrame, part: str) -> pl.DataFrame:
        """The rows of ``samples`` in ``part`` (``samples`` must be the frame that was split)."""
        if samples.height != self.n_rows:
            raise ValueError(f"split is over {self.n_rows} rows, samples have {samples.height}")
        return samples[self.indices(part)]

    def counts(self) -> dict[str, int]:
        """Rows per part plus ``purged``, ``embargoed``, ``unused`` (they add up to ``n_rows``)."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "purged": len(self.purged),
            "embargoed": len(self.embargoed),
            "unused": self.unused,
        }

    def summary(self, samples: pl.DataFrame | None = None, *, ts: str = "ts") -> pl.DataFrame:
        """One row per part: rows, and with ``samples`` the first and last ``ts`` of the part."""
        rows = []
        for part in (*PARTS, "purged", "embargoed"):
            index = self.indices(part)
            row: dict[str, object] = {"fold": self.fold, "part": part, "rows": len(index)}
            if samples is not None:
                times = samples.get_column(ts)
                row["first_ts"] = times[int(index[0])] if len(index) else None
                row["last_ts"] = times[int(index[-1])] if len(index) else None
            rows.append(row)
        return pl.DataFrame(rows)


def _times(samples: pl.DataFrame, ts: str, label_end: str) -> tuple[np.ndarray, np.ndarray]:
    """``ts`` and ``label_end`` as int64 microseconds, checked: no nulls, sorted, end >= ts."""
    for name in (ts, label_end):
        if name not in samples.columns:
            raise DataError(f"samples have no column '{name}'", field=name)
        column = samples.get_column(name)
        if not isinstance(column.dtype, pl.Datetime):
            raise DataError(f"column '{name}' must be a Datetime, got {column.dtype}", field=name)
        if column.null_count():
            row = int(column.is_null().arg_true().item(0))
            raise DataError(
                f"column '{name}' has {column.null_count()} null(s); drop unlabeled rows before "
                "splitting",
                row=row,
                field=name,
                row_kind="row",
            )
    start = samples.get_column(ts).dt.cast_time_unit("us").cast(pl.Int64).to_numpy()
    end = samples.get_column(label_end).dt.cast_time_unit("us").cast(pl.Int64).to_numpy()
    backwards = np.flatnonzero(np.diff(start) < 0)
    if len(backwards):
        raise DataError(
            f"samples must be sorted by '{ts}'", row=int(backwards[0]) + 1, field=ts, row_kind="row"
        )
    before = np.flatnonzero(end < start)
    if len(before):
        raise DataError(
            f"'{label_end}' is before '{ts}'", row=int(before[0]), field=label_end, row_kind="row"
        )
    return start, end


def _embargo_rows(embargo: Embargo, n_rows: int) -> int | dt.timedelta:
    if isinstance(embargo, dt.timedelta):
        if embargo < dt.timedelta(0):
            raise ConfigError(f"embargo must be >= 0, got {embargo}")
        return embargo
    if isinstance(embargo, bool):
        raise ConfigError("embargo must be a number of rows, a fraction or a timedelta")
    if isinstance(embargo, int):
        if embargo < 0:
            raise ConfigError(f"embargo must be >= 0 rows, got {embargo}")
        return embargo
    if isinstance(embargo, float):
        if not 0.0 <= embargo < 1.0:
            raise ConfigError(f"an embargo fraction must be in [0, 1), got {embargo}")
        return math.ceil(embargo * n_rows)
    raise ConfigError(f"embargo must be an int, a float fraction or a timedelta, got {embargo!r}")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[first, last] positions of each contiguous run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def purge_and_embargo(
    start: np.ndarray,
    end: np.ndarray,
    candidates: np.ndarray,
    evaluation: np.ndarray,
    embargo: int | dt.timedelta,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Purge and embargo ``candidates`` against the periods of ``evaluation`` (Boolean masks).

    ``start`` / ``end``: each row's label interval as sorted int64 microseconds (``start``
    ascending). ``embargo``: rows after each period (an int) or a timedelta (already resolved
    from a fraction). Returns ``(kept, purged, embargoed)`` Boolean masks that partition
    ``candidates``. See the module docstring for the rules.
    """
    purged = np.zeros(len(start), dtype=bool)
    embargoed = np.zeros(len(start), dtype=bool)
    for first, last in _runs(evaluation):
        period_start = start[first]
        period_end = int(end[first : last + 1].max())
        purged |= candidates & (start <= period_end) & (end >= period_start)
        after = int(np.searchsorted(start, period_end, side="right"))
        window = np.zeros(len(start), dtype=bool)
        if isinstance(embargo, dt.timedelta):
            limit = period_end + embargo // dt.timedelta(microseconds=1)
            window[after : int(np.searchsorted(start, limit, side="right"))] = True
        else:
            window[after : after + embargo] = True
        embargoed |= candidates & window
    embargoed &= ~purged
    kept = candidates & ~purged & ~embargoed
    return kept, purged, embargoed


def _make_split(
    start: np.ndarray,
    end: np.ndarray,
    train: np.ndarray,
    validation: np.ndarray,
    test: np.ndarray,
    embargo: int | dt.timedelta,
    fold: int = 0,
) -> Split:
    """Apply the roles: train against validation + test, validation against test."""
    train_kept, train_purged, train_embargoed = purge_and_embargo(
        start, end, train, validation | test, embargo
    )
    val_kept, val_purged, val_embargoed = purge_and_embargo(start, end, validation, test, embargo)
    n = len(start)
    return Split(
        train=np.flatnonzero(train_kept),
        validation=np.flatnonzero(val_kept),
        test=np.flatnonzero(test),
        purged=np.flatnonzero(train_purged | val_purged),
        embargoed=np.flatnonzero(train_embargoed | val_embargoed),
        n_rows=n,
        unused=int(n - (train | validation | test).sum()),
        fold=fold,
    )


def _block(n: int, first: int, stop: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[max(0, first) : max(0, stop)] = True
    return mask


def purged_split(
    samples: pl.DataFrame,
    *,
    ts: str = "ts",
    label_end: str = "label_end_ts",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    embargo: Embargo = 0,
    order: Sequence[str] = PARTS,
) -> Split:
    """Split time-ordered ``samples`` into train / validation / test blocks, purged and embargoed.

    ``fractions``: the shares of train, validation and test (>= 0, summing to 1; validation may
    be 0), cut by row position. ``order``: the time order of the blocks, default train →
    validation → test; another order (e.g. ``("test", "validation", "train")``, scoring on the
    oldest data) is allowed and then the embargo drops the training rows right after the
    evaluation blocks. ``embargo``: rows (int), a fraction of all rows (float) or a timedelta.
    Returns a :class:`Split`; see the module docstring for the purge and embargo rules.
    """
    n = samples.height
    start, end = _times(samples, ts, label_end)
    if (
        len(fractions) != 3
        or any(f < 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0)
    ):
        raise ConfigError(f"fractions must be 3 shares >= 0 summing to 1, got {tuple(fractions)}")
    if sorted(order) != sorted(PARTS):
        raise ConfigError(f"order must name each of {PARTS} once, got {tuple(order)}")
    share = dict(zip(PARTS, fractions, strict=True))
    masks: dict[str, np.ndarray] = {}
    cumulative = 0.0
    for part in order:
        first = round(cumulative * n)
        cumulative += share[part]
        masks[part] = _block(n, first, round(cumulative * n))
    return _make_split(
        start, end, masks["train"], masks["validation"], masks["test"], _embargo_rows(embargo, n)
    )


def _size(value: int | float | None, n: int, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{name} as a fraction must be in (0, 1), got {value}")
        return max(1, round(value * n))
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return int(value)


def walk_forward_splits(
    samples: pl.DataFrame,
    n_splits: int,
    *,
    train_size: int | float | None = None,
    test_size: int | float | None = None,
    validation_size: int | float = 0,
    anchored: bool = False,
    embargo: Embargo = 0,
    ts: str = "ts",
    label_end: str = "label_end_ts",
) -> Iterator[Split]:
    """Yield ``n_splits`` walk-forward folds: train → (validation →) test, moving forward in time.

    The test windows are ``test_size`` rows each (int rows or a float fraction of all rows;
    default ``n_rows // (n_splits + 1)``), consecutive, the last ending at the last row. Before
    each test window come ``validation_size`` validation rows (default 0) and then the training
    window: from row 0 when ``anchored`` (it grows fold by fold), else the ``train_size`` rows just
    before (a rolling window; default: the training rows the first fold has). Training and
    validation rows are purged against the later parts (see the module docstring); the embargo
    drops nothing in this forward layout but is applied for uniformity. Rows outside a fold's
    window are counted as ``unused``. Raises ``ConfigError`` when the sizes do not fit.
    """
    n = samples.height
    start, end = _times(samples, ts, label_end)
    if n_splits < 1:
        raise ConfigError(f"n_splits must be >= 1, got {n_splits}")
    test_rows = _size(test_size, n, "test_size") or n // (n_splits + 1)
    val_rows = _size(validation_size, n, "validation_size") or 0
    first_train_end = n - n_splits * test_rows - val_rows
    train_rows = _size(train_size, n, "train_size")
    if train_rows is None:
        train_rows = first_train_end
    if test_rows < 1 or first_train_end < 1 or train_rows < 1 or train_rows > first_train_end:
        raise ConfigError(
            f"walk-forward does not fit {n} rows: {n_splits} test windows of {test_rows}, "
            f"validation {val_rows}, training {train_rows} (at most {first_train_end} before the "
            "first test window)"
        )
    gap = _embargo_rows(embargo, n)
    for fold in range(n_splits):
        test_first = n - (n_splits - fold) * test_rows
        val_first = test_first - val_rows
        train_first = 0 if anchored else val_first - train_rows
        yield _make_split(
            start,
            end,
            _block(n, train_first, val_first),
            _block(n, val_first, test_first),
            _block(n, test_first, test_first + test_rows),
            gap,
            fold,
        )


def purged_kfold_splits(
    samples: pl.DataFrame,
    n_splits: int = 5,
    *,
    embargo: Embargo = 0,
    ts: str = "ts",
    label_end: str = "label_end_ts",
) -> list[Split]:
    """López de Prado's purged k-fold: ``n_splits`` contiguous test folds, training on the rest.

    Training rows on both sides of each test fold; those overlapping it are purged and those
    right after it embargoed. No validation part. For cross-validated model scores; use
    :func:`walk_forward_splits` when the model may only learn from the past.
    """
    n = samples.height
    start, end = _times(samples, ts, label_end)
    if not 2 <= n_splits <= n:
        raise ConfigError(f"n_splits must be in [2, {n}], got {n_splits}")
    gap = _embargo_rows(embargo, n)
    bounds = np.linspace(0, n, n_splits + 1).round().astype(np.int64)
    empty = np.zeros(n, dtype=bool)
    splits = []
    for fold in range(n_splits):
        test = _block(n, int(bounds[fold]), int(bounds[fold + 1]))
        splits.append(_make_split(start, end, ~test, empty, test, gap, fold))
    return splits
