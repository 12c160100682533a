"""Purged, embargoed time-ordered splits: no label interval crosses into evaluation, counts add up."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.features.splits import (
    Split,
    purged_kfold_splits,
    purged_split,
    walk_forward_splits,
)

T0 = dt.datetime(2020, 1, 6, tzinfo=dt.UTC)


def _samples(n: int = 1000, max_horizon: int = 30, seed: int = 0, repeat: int = 1) -> pl.DataFrame:
    """Hourly samples whose labels end 0..max_horizon bars later; ``repeat`` rows per time."""
    rng = np.random.default_rng(seed)
    stamps = [T0 + dt.timedelta(hours=i) for i in range(n)]
    horizon = rng.integers(0, max_horizon + 1, size=n * repeat)
    ts = pl.Series("ts", [s for s in stamps for _ in range(repeat)], dtype=pl.Datetime("us", "UTC"))
    return pl.DataFrame({"ts": ts}).with_columns(
        (pl.col("ts") + pl.duration(hours=pl.Series(horizon))).alias("label_end_ts"),
        pl.int_range(pl.len()).alias("row"),
    )


def _periods(samples: pl.DataFrame, index: np.ndarray) -> list[tuple[dt.datetime, dt.datetime]]:
    """The evaluation periods of a part: contiguous runs of rows, [first ts, max label end]."""
    periods = []
    if len(index) == 0:
        return periods
    breaks = np.flatnonzero(np.diff(index) > 1)
    for run in np.split(index, breaks + 1):
        rows = samples[run]
        periods.append((rows["ts"].min(), rows["label_end_ts"].max()))
    return periods


def _overlaps(samples: pl.DataFrame, index: np.ndarray, periods) -> np.ndarray:
    rows = samples[index]
    hit = np.zeros(len(index), dtype=bool)
    for start, end in periods:
        hit |= ((rows["ts"] <= end) & (rows["label_end_ts"] >= start)).to_numpy()
    return hit


def _check_counts(split: Split) -> None:
    parts = [split.train, split.validation, split.test, split.purged, split.embargoed]
    together = np.concatenate(parts)
    assert len(np.unique(together)) == len(together), "a row is in two parts"
    assert sum(split.counts().values()) == split.n_rows
    for part in parts:
        assert np.all(np.diff(part) > 0)


def _check_no_leak(samples: pl.DataFrame, split: Split) -> None:
    evaluation = np.union1d(split.validation, split.test)
    assert not _overlaps(samples, split.train, _periods(samples, evaluation)).any()
    assert not _overlaps(samples, split.validation, _periods(samples, split.test)).any()


def test_purged_split_default_layout() -> None:
    samples = _samples()
    split = purged_split(samples)
    _check_counts(split)
    _check_no_leak(samples, split)
    assert split.unused == 0
    # parts ordered in time
    ts = samples["ts"]
    assert ts[int(split.train[-1])] < ts[int(split.validation[0])]
    assert ts[int(split.validation[-1])] < ts[int(split.test[0])]
    # the test block is 15 % and is never touched; validation loses only its purged tail
    assert len(split.test) == 150
    assert split.test.tolist() == list(range(850, 1000))
    assert len(split.validation) + len(split.train) + len(split.purged) == 850
    assert len(split.embargoed) == 0  # nothing follows an evaluation block in this layout
    assert len(split.purged) > 0


def test_purge_drops_exactly_the_overlapping_rows() -> None:
    samples = _samples(seed=1)
    split = purged_split(samples, fractions=(0.6, 0.2, 0.2))
    train_block = np.arange(0, 600)
    val_block = np.arange(600, 800)
    test_periods = _periods(samples, np.arange(800, 1000))
    evaluation = _periods(samples, np.arange(600, 1000))
    expected = np.concatenate(
        [
            train_block[_overlaps(samples, train_block, evaluation)],
            val_block[_overlaps(samples, val_block, test_periods)],
        ]
    )
    assert split.purged.tolist() == sorted(expected.tolist())
    # every purged training row's label really reaches the validation start
    val_start = samples["ts"][600]
    assert (samples[split.purged[split.purged < 600]]["label_end_ts"] >= val_start).all()


def test_embargo_drops_rows_after_evaluation_blocks() -> None:
    samples = _samples(seed=2)
    embargo = 25
    # scoring on the oldest data: training follows validation and test
    split = purged_split(samples, order=("test", "validation", "train"), embargo=embargo)
    _check_counts(split)
    _check_no_leak(samples, split)
    ts, end = samples["ts"], samples["label_end_ts"]
    # the validation block follows the test block: its first rows are purged, then embargoed
    test_end = end[:150].max()
    after_test = int((ts > test_end).arg_true()[0])
    expected_val_embargo = list(range(after_test, after_test + embargo))
    assert [i for i in split.embargoed.tolist() if i < 300] == expected_val_embargo
    # training starts right after the evaluation period's end plus the embargo, not earlier
    evaluation_end = end[:300].max()
    first_free = int((ts > evaluation_end).arg_true()[0])
    assert split.train[0] == first_free + embargo
    assert [i for i in split.embargoed.tolist() if i >= 300] == list(
        range(first_free, first_free + embargo)
    )


def test_embargo_as_fraction_and_timedelta() -> None:
    samples = _samples(seed=3)
    by_rows = purged_split(samples, order=("validation", "test", "train"), embargo=17)
    by_fraction = purged_split(samples, order=("validation", "test", "train"), embargo=0.017)
    assert by_fraction.embargoed.tolist() == by_rows.embargoed.tolist()  # ceil(0.017 * 1000) = 17
    by_time = purged_split(
        samples, order=("validation", "test", "train"), embargo=dt.timedelta(hours=17)
    )
    # hourly samples: 17 hours after the period's end are the next 17 rows
    assert by_time.embargoed.tolist() == by_rows.embargoed.tolist()
    assert len(by_rows.embargoed) == 17


def test_equal_times_never_straddle_a_boundary() -> None:
    # three rows per time (three symbols): a cut inside a time is repaired by the purge
    samples = _samples(n=400, repeat=3, seed=4)
    split = purged_split(samples, fractions=(0.7, 0.1, 0.2))
    _check_counts(split)
    _check_no_leak(samples, split)
    train_ts = set(samples[split.train]["ts"].to_list())
    assert not train_ts & set(samples[split.test]["ts"].to_list())
    assert not train_ts & set(samples[split.validation]["ts"].to_list())


def test_walk_forward_rolling_and_anchored() -> None:
    samples = _samples(n=1200, seed=5)
    rolling = list(walk_forward_splits(samples, 4, test_size=100, validation_size=50, embargo=10))
    anchored = list(walk_forward_splits(samples, 4, test_size=100, anchored=True))
    assert len(rolling) == len(anchored) == 4
    assert [s.fold for s in rolling] == [0, 1, 2, 3]
    # consecutive test windows, the last ending at the last row
    tests = np.concatenate([s.test for s in rolling])
    assert tests.tolist() == list(range(800, 1200))
    for split in rolling:
        _check_counts(split)
        _check_no_leak(samples, split)
        assert len(split.test) == 100
        assert split.train.max() < split.validation.min() < split.test.min()
        # rolling window: training + purged rows fill a window of constant size
        window = len(split.train) + len([i for i in split.purged if i < split.test[0] - 50])
        assert window == 1200 - 400 - 50
        assert len(split.embargoed) == 0
    # rows before the rolling window plus rows after the test window
    assert [s.unused for s in rolling] == [300, 300, 300, 300]
    for k, split in enumerate(anchored):
        _check_counts(split)
        _check_no_leak(samples, split)
        assert split.train[0] == 0
        assert len(split.validation) == 0
        assert split.unused == 300 - 100 * k


def test_walk_forward_train_size_and_fractions() -> None:
    samples = _samples(n=1000, seed=6)
    folds = list(walk_forward_splits(samples, 3, train_size=0.3, test_size=0.1))
    for split in folds:
        assert split.train[0] == split.test[0] - 300
        assert len(split.test) == 100
    with pytest.raises(ConfigError, match="does not fit"):
        list(walk_forward_splits(samples, 5, test_size=200))
    with pytest.raises(ConfigError, match="does not fit"):
        list(walk_forward_splits(samples, 2, train_size=900, test_size=100))


def test_purged_kfold_purges_and_embargoes_both_sides() -> None:
    samples = _samples(n=1000, seed=7)
    folds = purged_kfold_splits(samples, 5, embargo=0.01)
    assert len(folds) == 5
    tests = np.concatenate([s.test for s in folds])
    assert tests.tolist() == list(range(1000))
    for split in folds:
        _check_counts(split)
        _check_no_leak(samples, split)
        if split.fold < 4:
            assert len(split.embargoed) == 10
            end = samples["label_end_ts"][split.test].max()
            # the embargoed rows are the first ten after the test period's label end
            assert (samples[split.embargoed]["ts"] > end).all()
            assert split.embargoed.tolist() == list(
                range(split.embargoed[0], split.embargoed[0] + 10)
            )
            assert split.embargoed[-1] + 1 in split.train
        else:
            assert len(split.embargoed) == 0


def test_split_helpers() -> None:
    samples = _samples(n=200, seed=8)
    split = purged_split(samples)
    assert split.mask("test").sum() == len(split.test)
    assert split.take(samples, "validation")["row"].to_list() == split.validation.tolist()
    summary = split.summary(samples)
    assert summary["part"].to_list() == ["train", "validation", "test", "purged", "embargoed"]
    assert summary["rows"].sum() == 200
    assert summary.filter(pl.col("part") == "test")["first_ts"].item() == samples["ts"][170]
    with pytest.raises(ValueError, match="unknown part"):
        split.indices("holdout")


def test_bad_input_is_refused() -> None:
    samples = _samples(n=100)
    with pytest.raises(DataError, match="sorted") as caught:
        purged_split(samples.reverse())
    assert caught.value.row == 1
    with_null = samples.with_columns(
        pl.when(pl.col("row") == 42)
        .then(None)
        .otherwise(pl.col("label_end_ts"))
        .alias("label_end_ts")
    )
    with pytest.raises(DataError, match="unlabeled") as caught:
        purged_split(with_null)
    assert caught.value.row == 42
    backwards = samples.with_columns(
        pl.when(pl.col("row") == 7)
        .then(pl.col("ts") - pl.duration(hours=1))
        .otherwise(pl.col("label_end_ts"))
        .alias("label_end_ts")
    )
    with pytest.raises(DataError, match="before") as caught:
        purged_split(backwards)
    assert caught.value.row == 7
    with pytest.raises(ConfigError, match="fractions"):
        purged_split(samples, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="order"):
        purged_split(samples, order=("train", "test", "test"))
    with pytest.raises(ConfigError, match="embargo"):
        purged_split(samples, embargo=-1)
    with pytest.raises(ConfigError, match="embargo"):
        purged_split(samples, embargo=1.5)
