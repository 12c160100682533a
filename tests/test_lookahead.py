"""The look-ahead checker catches leaky functions (naming the column and the bar) and passes clean ones."""

from __future__ import annotations

import polars as pl
import pytest

from aiopt_lib.core.bars import check_bars
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.lookahead import (
    LookaheadError,
    LookaheadReport,
    _appended,
    _perturbed,
    check_no_lookahead,
)


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


LEAKS: dict[str, pl.Expr] = {
    "next_close": pl.col("close").shift(-1),
    "centred_mean": pl.col("close").rolling_mean(5, center=True),
    "global_zscore": (pl.col("close") - pl.col("close").mean()) / pl.col("close").std(),
    "mean_of_all_rows": pl.col("close").mean(),
    "warmup_backfilled": pl.col("close").rolling_mean(50).fill_null(strategy="backward"),
    "future_max_3": pl.col("high").reverse().rolling_max(3).reverse(),
}

CLEAN: dict[str, pl.Expr] = {
    "prev_close": pl.col("close").shift(1),
    "sma_20": pl.col("close").rolling_mean(20),
    "std_20": pl.col("close").rolling_std(20),
    "ema_20": pl.col("close").ewm_mean(span=20, adjust=False),
    "expanding_max": pl.col("high").cum_max(),
    "log_return": pl.col("close").log().diff(),
    "up_bar": pl.col("close") > pl.col("open"),
    "nan_everywhere": (pl.col("close") - pl.col("close")) / (pl.col("close") - pl.col("close")),
    "infinite": pl.col("close") / (pl.col("close") - pl.col("close")),
    "hour": pl.col("ts").dt.hour(),
}


def _with(exprs: dict[str, pl.Expr]):
    def fn(bars: pl.DataFrame) -> pl.DataFrame:
        return bars.with_columns(**exprs)

    return fn


def test_each_leak_is_caught_and_named(sample: pl.DataFrame) -> None:
    report = check_no_lookahead(_with({**LEAKS, **CLEAN}), sample, raise_on_failure=False)
    assert not report.passed
    assert set(report.leaky_columns) == set(LEAKS)
    for name in LEAKS:
        first = report.first(name)
        assert first is not None
        assert first.column == name
        assert first.index is not None
        assert first.ts == sample["ts"][first.index]
    for name in CLEAN:
        assert report.first(name) is None
    summary = report.summary()
    assert set(summary["column"]) == set(LEAKS)
    assert (summary["trials_failed"] > 0).all()


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_error_names_the_feature_and_the_bar(sample: pl.DataFrame, name: str) -> None:
    with pytest.raises(LookaheadError) as caught:
        check_no_lookahead(_with({name: LEAKS[name]}), sample, columns=[name])
    error = caught.value
    first = error.report.first(name)
    assert first is not None
    assert f"'{name}'" in str(error)
    assert f"bar {first.index} ({first.ts})" in str(error)


def test_next_close_fails_at_the_bar_before_each_cut(sample: pl.DataFrame) -> None:
    report = check_no_lookahead(
        _with({"next_close": LEAKS["next_close"]}),
        sample,
        columns=["next_close"],
        raise_on_failure=False,
    )
    prefix = [v for v in report.violations if v.kind == "prefix"]
    assert len(prefix) == len(report.cuts)
    for violation, cut in zip(prefix, report.cuts, strict=True):
        assert violation.cut == cut
        # bar cut-1 is the only one whose next bar the prefix lacks
        assert violation.index == cut - 1
        assert violation.n_differing == 1
        assert violation.trial_value is None
        assert violation.full_value == sample["close"][cut]
    assert report.first("next_close").index == min(report.cuts) - 1
    # the made-up futures catch it too, at the same bar
    perturbed = [v for v in report.violations if v.kind == "perturbed"]
    assert [v.index for v in perturbed] == [c - 1 for c in report.cuts]
    assert all(v.trial_value is not None for v in perturbed)


def test_appended_bars_catch_a_leak_at_the_last_bar(sample: pl.DataFrame) -> None:
    # no cuts: only the appended trial runs; the last bar's next close appears
    report = check_no_lookahead(
        _with({"next_close": LEAKS["next_close"]}), sample, n_cuts=0, raise_on_failure=False
    )
    assert report.n_trials == 1
    assert report.leaky_columns == ("next_close",)
    assert [v.kind for v in report.violations] == ["appended"]
    assert report.first("next_close").index == sample.height - 1


def test_clean_functions_pass_and_report_what_was_compared(sample: pl.DataFrame) -> None:
    report = check_no_lookahead(_with(CLEAN), sample, n_cuts=8, seed=3)
    assert isinstance(report, LookaheadReport)
    assert report.passed
    assert report.summary().height == 0
    assert set(CLEAN) <= set(report.columns)
    assert report.n_trials == 2 * len(report.cuts) + 1
    assert len(report.cuts) >= 6
    assert all(2 <= c < sample.height for c in report.cuts)
    # at least one early (warm-up) cut and cuts spread over the whole history
    assert min(report.cuts) < sample.height // 8
    assert max(report.cuts) > sample.height * 3 // 4
    expected = sum(2 * c for c in report.cuts) + sample.height
    assert report.n_compared == expected * len(report.columns)
    assert "no look-ahead found" in str(report)


def test_seed_makes_cuts_reproducible(sample: pl.DataFrame) -> None:
    fn = _with({"sma_20": CLEAN["sma_20"]})
    first = check_no_lookahead(fn, sample, seed=7)
    again = check_no_lookahead(fn, sample, seed=7)
    other = check_no_lookahead(fn, sample, seed=8)
    assert first.cuts == again.cuts
    assert first.cuts != other.cuts


def test_atol_tolerates_tiny_differences_only(sample: pl.DataFrame) -> None:
    # a leak of a few 1e-13: caught exactly, tolerated with atol=1e-9
    fn = _with({"nudged": pl.col("close") + 1e-13 * pl.col("close").mean()})
    with pytest.raises(LookaheadError):
        check_no_lookahead(fn, sample, columns=["nudged"])
    assert check_no_lookahead(fn, sample, columns=["nudged"], atol=1e-9).passed


def test_made_up_futures_keep_the_past_and_stay_valid_bars(sample: pl.DataFrame) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    cut = 1000
    changed = _perturbed(sample, cut, rng)
    assert check_bars(changed) == []
    assert changed[:cut].equals(sample[:cut])
    assert changed["ts"].equals(sample["ts"])
    future, original = changed[cut:], sample[cut:]
    assert (future["close"] != original["close"]).mean() > 0.9
    assert (future["high"] >= future[["open", "close"]].max_horizontal()).all()
    assert (future["low"] <= future[["open", "close"]].min_horizontal()).all()
    # the made-up future starts near the last real close (it chains on from it)
    assert abs(future["open"][0] / sample["close"][cut - 1] - 1) < 0.02

    longer = _appended(sample, 50, rng)
    assert check_bars(longer) == []
    assert longer.height == sample.height + 50
    assert longer[: sample.height].equals(sample)
    steps = longer["ts"][sample.height - 1 :].diff().drop_nulls().unique()
    assert steps.to_list() == [sample["ts"][1] - sample["ts"][0]]


def test_contract_violations_are_errors(sample: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="one row per bar"):
        check_no_lookahead(lambda b: b.head(10), sample)
    with pytest.raises(ValueError, match="not in the output"):
        check_no_lookahead(lambda b: b, sample, columns=["nope"])
    with pytest.raises(ValueError, match="at least 2 bars"):
        check_no_lookahead(lambda b: b, sample.head(1))


def test_a_column_missing_on_some_prefix_is_reported(sample: pl.DataFrame) -> None:
    def fn(bars: pl.DataFrame) -> pl.DataFrame:
        # a column that only exists once the history is long: its absence is a dependence on length
        return bars.with_columns(late=pl.lit(1.0)) if bars.height > 3000 else bars

    report = check_no_lookahead(fn, sample, raise_on_failure=False)
    assert report.leaky_columns == ("late",)
    assert report.first("late").index is None
    assert "column missing" in str(report.first("late"))
