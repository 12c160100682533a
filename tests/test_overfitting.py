"""Overfitting-aware ranking statistics: DSR/PSR against hand and paper figures, CSCV PBO against
a brute-force reference, near-duplicate collapsing and daily compounding of equity."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

from aiopt_lib.strategy.overfitting import (
    DuplicateGroup,
    collapse_near_duplicates,
    daily_returns,
    deflated_sharpe_ratio,
    effective_trials,
    expected_max_sharpe,
    probabilistic_sharpe_from_moments,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratios,
)

# ------------------------------------------------------------------------------------------------
# Deflated / probabilistic Sharpe ratio

SMALL = [0.010, -0.004, 0.007, 0.002, -0.012, 0.015, 0.003, -0.001, 0.006, 0.004]


def _hand_moments(values: list[float]) -> tuple[float, float, float]:
    """Sharpe (ddof=1), skewness and kurtosis (population moments) with plain Python sums."""
    n = len(values)
    mean = sum(values) / n
    dev = [v - mean for v in values]
    m2, m3, m4 = (sum(d**k for d in dev) / n for k in (2, 3, 4))
    std = math.sqrt(sum(d * d for d in dev) / (n - 1))
    return mean / std, m3 / m2**1.5, m4 / m2**2


def test_psr_and_dsr_match_hand_computation() -> None:
    sr, g3, g4 = _hand_moments(SMALL)
    n = len(SMALL)
    psr_hand = norm.cdf(sr * math.sqrt(n - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))
    assert probabilistic_sharpe_ratio(np.array(SMALL)) == pytest.approx(psr_hand, rel=1e-12)

    v, trials = 0.04, 25
    z = (1 - 0.5772156649015329) * norm.ppf(1 - 1 / trials) + 0.5772156649015329 * norm.ppf(
        1 - 1 / (trials * math.e)
    )
    sr0 = math.sqrt(v) * z
    dsr_hand = norm.cdf(
        (sr - sr0) * math.sqrt(n - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    )
    result = deflated_sharpe_ratio(
        np.array(SMALL), n_trials=trials, sharpe_variance=v, periods_per_year=252
    )
    assert result.dsr == pytest.approx(dsr_hand, rel=1e-12)
    assert result.psr == pytest.approx(psr_hand, rel=1e-12)
    assert result.expected_max_sharpe == pytest.approx(sr0, rel=1e-12)
    assert (result.sharpe, result.skew, result.kurtosis) == pytest.approx((sr, g3, g4), rel=1e-12)
    assert result.sharpe_annual == pytest.approx(sr * math.sqrt(252), rel=1e-12)
    assert result.n_obs == n
    assert result.dsr < result.psr


def test_paper_numerical_example() -> None:
    """Bailey & López de Prado (2014), 'A numerical example': 100 trials, annualised best SR 2.5,
    variance of the annualised trial SRs 1/2, 5 years of daily returns (T = 1250, 250 days/year),
    skewness -3, kurtosis 10: E[max SR] = 0.1132 per day and DSR = 0.9004."""
    days = 250
    sr0 = expected_max_sharpe(100, 0.5 / days)
    # the paper prints 4 decimals: agree to its last digit (a rounding of the 5th cannot flip it)
    assert sr0 == pytest.approx(0.1132, abs=1e-4)
    assert sr0 * math.sqrt(days) == pytest.approx(1.7894, abs=1e-4)  # annualised
    dsr = probabilistic_sharpe_from_moments(
        2.5 / math.sqrt(days), n_obs=1250, skew=-3.0, kurtosis=10.0, benchmark_sharpe=sr0
    )
    assert dsr == pytest.approx(0.9004, abs=1e-4)


def test_expected_max_approximates_the_exact_expected_maximum() -> None:
    """E[max of N standard normals] = ∫ x N φ(x) Φ(x)^(N-1) dx; the paper's approximation is
    within 2.5 % from N = 10 and within 1 % from N = 100, and scales with sqrt(V)."""
    x = np.linspace(-10, 10, 200_001)
    for n, rel in ((10, 0.025), (30, 0.02), (100, 0.01), (1000, 0.005)):
        exact = np.trapezoid(x * n * norm.pdf(x) * norm.cdf(x) ** (n - 1), x)
        assert expected_max_sharpe(n, 1.0) == pytest.approx(exact, rel=rel)
        assert expected_max_sharpe(n, 1.0) > exact  # it overstates: DSR errs on the safe side
    assert expected_max_sharpe(50, 4.0) == pytest.approx(2 * expected_max_sharpe(50, 1.0))
    assert expected_max_sharpe(1, 0.3) == 0.0
    with pytest.raises(ValueError, match="n_trials"):
        expected_max_sharpe(0, 0.1)


def test_dsr_decreases_with_trials_and_equals_psr_for_one_trial() -> None:
    rng = np.random.default_rng(3)
    returns = rng.normal(0.0008, 0.01, 750)
    single = deflated_sharpe_ratio(returns, n_trials=1, sharpe_variance=0.002)
    assert single.dsr == pytest.approx(probabilistic_sharpe_ratio(returns, 0.0), rel=1e-12)
    assert single.dsr == single.psr
    values = [
        deflated_sharpe_ratio(returns, n_trials=n, sharpe_variance=0.002).dsr
        for n in (1, 2, 10, 100, 1000)
    ]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert math.isnan(
        deflated_sharpe_ratio(returns, n_trials=5, sharpe_variance=0.01).sharpe_annual
    )


def test_skew_and_kurtosis_penalise() -> None:
    base = {"n_obs": 500, "benchmark_sharpe": 0.02}
    normal = probabilistic_sharpe_from_moments(0.1, skew=0.0, kurtosis=3.0, **base)
    assert probabilistic_sharpe_from_moments(0.1, skew=-2.0, kurtosis=3.0, **base) < normal
    assert probabilistic_sharpe_from_moments(0.1, skew=0.0, kurtosis=12.0, **base) < normal
    assert probabilistic_sharpe_from_moments(0.1, skew=1.0, kurtosis=3.0, **base) > normal
    # the same mean and std, but the gains come as rare jumps (positive skew) vs rare crashes
    crash = np.array([0.002] * 95 + [-0.0285] * 5)
    jump = -crash + 2 * crash.mean()
    assert crash.mean() == pytest.approx(jump.mean())
    assert probabilistic_sharpe_ratio(crash) < probabilistic_sharpe_ratio(jump)


def test_selected_noise_trial_is_deflated() -> None:
    """The best of 200 skill-less trials looks significant (PSR > 0.99) but not after deflation."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(0.0, 0.01, (500, 200))
    sharpes = sharpe_ratios(matrix)
    best = int(np.argmax(sharpes))
    result = deflated_sharpe_ratio(
        matrix[:, best], n_trials=200, sharpe_variance=float(np.var(sharpes, ddof=1))
    )
    assert result.psr > 0.99
    assert result.dsr < 0.8


def test_dsr_edge_cases_give_nan_not_errors() -> None:
    for returns in ([0.01, 0.02], [0.003] * 50, [0.01, float("nan"), 0.02, 0.0]):
        result = deflated_sharpe_ratio(np.array(returns), n_trials=10, sharpe_variance=0.01)
        assert math.isnan(result.dsr)
        assert math.isnan(result.psr)
        assert math.isnan(result.sharpe)
    assert math.isnan(probabilistic_sharpe_ratio(np.array([1.0, 2.0])))
    # 1 - γ3 SR + (γ4 - 1)/4 SR² < 0: no real standard error
    assert math.isnan(probabilistic_sharpe_from_moments(1.0, n_obs=100, skew=5.0, kurtosis=3.0))
    assert math.isnan(
        deflated_sharpe_ratio(np.array(SMALL), n_trials=10, sharpe_variance=float("nan")).dsr
    )


def test_effective_trials() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(300, 3))
    # 3 families of 5 near-identical trials (correlation ~0.999) + 4 independent trials
    families = np.repeat(base, 5, axis=1) + 0.03 * rng.normal(size=(300, 15))
    matrix = np.hstack([families, rng.normal(size=(300, 4))])
    assert effective_trials(matrix, 0.95) == 7.0
    assert effective_trials(families, 0.95) == 3.0
    assert effective_trials(rng.normal(size=(300, 40))) == 40.0
    # Li & Ji: #(λ ≥ 1) + Σ frac(λ) = #(λ ≥ 1) + N − Σ⌊λ⌋ since the eigenvalues sum to the trace N;
    # here 3 eigenvalues near 4-6 (floors summing to 14) and 12 near 0: exactly 3 + 15 − 14 = 4,
    # computed as 4 ± a few ulps whichever BLAS does the decomposition
    assert effective_trials(families, method="eigenvalues") == pytest.approx(4.0, abs=1e-9)
    assert effective_trials(np.zeros((50, 4))) == 1.0  # never-trading trials are one
    assert effective_trials(base[:, :1]) == 1.0
    with pytest.raises(ValueError, match="method"):
        effective_trials(matrix, method="pca")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Probability of backtest overfitting (CSCV)


def _reference_pbo(matrix: np.ndarray, n_blocks: int) -> list[float]:
    """Plain loops over combinations and trials: Sharpe of each trial on IS/OOS rows, ranks."""
    t, n = matrix.shape
    size = t // n_blocks
    rows = matrix[t - size * n_blocks :].tolist()
    blocks = [rows[b * size : (b + 1) * size] for b in range(n_blocks)]

    def sharpe(subset: list[list[float]], j: int) -> float:
        column = [row[j] for row in subset]
        mean = sum(column) / len(column)
        var = sum((v - mean) ** 2 for v in column) / (len(column) - 1)
        return mean / math.sqrt(var) if var > 1e-24 else -math.inf

    logits = []
    for combo in itertools.combinations(range(n_blocks), n_blocks // 2):
        train = [row for b in range(n_blocks) if b in combo for row in blocks[b]]
        test = [row for b in range(n_blocks) if b not in combo for row in blocks[b]]
        is_metric = [sharpe(train, j) for j in range(n)]
        oos_metric = [sharpe(test, j) for j in range(n)]
        best = max(range(n), key=lambda j: (is_metric[j], -j))
        below = sum(1 for j in range(n) if oos_metric[j] < oos_metric[best])
        equal = sum(1 for j in range(n) if oos_metric[j] == oos_metric[best])
        omega = (below + (equal + 1) / 2) / (n + 1)
        logits.append(math.log(omega / (1 - omega)))
    return logits


def test_pbo_equals_brute_force_reference() -> None:
    rng = np.random.default_rng(11)
    matrix = rng.normal(0.0002, 0.01, (63, 7))  # 63 = 6 * 10 + 3: the 3 oldest rows are dropped
    matrix[:, 2] = 0.0  # a flat trial ranks worst everywhere
    matrix[:, 5] = matrix[:, 4]  # identical trials tie
    result = probability_of_backtest_overfitting(matrix, n_blocks=6)
    reference = _reference_pbo(matrix, 6)
    np.testing.assert_array_equal(result.logits, np.array(reference))
    assert result.n_combinations == math.comb(6, 3) == len(reference)
    assert result.pbo == pytest.approx(np.mean(np.array(reference) <= 0))
    assert (result.n_obs, result.n_trials, result.n_blocks) == (60, 7, 6)
    # the dropped rows really are the oldest ones
    again = probability_of_backtest_overfitting(matrix[3:], n_blocks=6)
    np.testing.assert_array_equal(again.logits, result.logits)


def test_pbo_callable_metric_matches_sharpe_path() -> None:
    rng = np.random.default_rng(2)
    matrix = rng.normal(0.0, 0.01, (96, 12))
    fast = probability_of_backtest_overfitting(matrix, n_blocks=8)
    slow = probability_of_backtest_overfitting(
        matrix, n_blocks=8, metric=lambda m: m.mean(axis=0) / m.std(axis=0, ddof=1)
    )
    np.testing.assert_array_equal(fast.logits, slow.logits)
    np.testing.assert_allclose(fast.is_best_oos, slow.is_best_oos, rtol=1e-9)
    np.testing.assert_allclose(fast.is_best_is, slow.is_best_is, rtol=1e-9)
    # another metric ranks differently: the mean return
    by_mean = probability_of_backtest_overfitting(matrix, n_blocks=8, metric=lambda m: m.mean(0))
    assert by_mean.n_combinations == 70
    assert not np.array_equal(by_mean.is_best_oos, fast.is_best_oos)


def test_pbo_of_pure_noise_is_near_one_half() -> None:
    pbos, logits = [], []
    for seed in range(40):
        matrix = np.random.default_rng(seed).normal(0.0, 0.01, (400, 40))
        result = probability_of_backtest_overfitting(matrix, n_blocks=10)
        pbos.append(result.pbo)
        logits.append(result.logits)
        assert result.n_combinations == 252
    assert 0.4 < np.mean(pbos) < 0.6
    assert abs(np.median(np.concatenate(logits))) < 0.3
    # noise: in-sample excellence does not carry over, the out-of-sample Sharpe is ~0
    assert abs(float(np.mean(result.is_best_oos))) < 0.1


def test_pbo_of_a_real_edge_is_near_zero() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(0.0, 0.01, (480, 50))
    matrix[:, 7] += 0.004  # per-period Sharpe 0.4: persistent skill
    result = probability_of_backtest_overfitting(matrix, n_blocks=16)
    assert result.n_combinations == 12_870
    assert result.pbo < 0.02
    assert result.probability_of_loss == 0.0
    assert np.all(result.is_best_oos > 0.2)
    assert np.median(result.logits) == pytest.approx(math.log(50))  # rank N of N


def test_pbo_large_search_runs_vectorised() -> None:
    """T=260 days, N=2000 trials, S=16 (12,870 combinations): the size a search produces."""
    matrix = np.random.default_rng(4).normal(0.0, 0.01, (260, 2000))
    result = probability_of_backtest_overfitting(matrix)
    assert result.logits.shape == (12_870,)
    assert 0.0 < result.pbo < 1.0
    assert result.performance_degradation_slope < 0.5


def test_pbo_rejects_bad_shapes() -> None:
    good = np.random.default_rng(0).normal(size=(64, 5))
    with pytest.raises(ValueError, match="2 trials"):
        probability_of_backtest_overfitting(good[:, :1])
    with pytest.raises(ValueError, match="2-D"):
        probability_of_backtest_overfitting(good[:, 0])
    with pytest.raises(ValueError, match="even"):
        probability_of_backtest_overfitting(good, n_blocks=7)
    with pytest.raises(ValueError, match="T >= 2"):
        probability_of_backtest_overfitting(good[:31], n_blocks=16)
    bad = good.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probability_of_backtest_overfitting(bad, n_blocks=4)
    with pytest.raises(ValueError, match="metric"):
        probability_of_backtest_overfitting(good, n_blocks=4, metric="sortino")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Near-duplicate collapsing

SPACE = {"length": (5, 200), "mult": (1.0, 3.0), "ma": ["ema", "sma"]}


def test_collapse_by_parameter_distance() -> None:
    params = [
        {"length": 20, "mult": 2.0, "ma": "ema"},
        {"length": 21, "mult": 2.05, "ma": "ema"},  # within 5 % of every range: duplicate of 0
        {"length": 60, "mult": 2.0, "ma": "ema"},  # 40 > 0.05 * 195: distinct
        {"length": 20, "mult": 2.0, "ma": "sma"},  # categorical differs: never a duplicate
        {"length": 62, "mult": 2.1, "ma": "ema"},  # duplicate of 2
        {"length": 20, "mult": 2.5, "ma": "ema"},  # mult 0.5 > 0.05 * 2: distinct
    ]
    scores = [1.0, 0.9, 0.8, 0.95, 0.5, 0.7]
    groups = collapse_near_duplicates(params, scores, space=SPACE)
    assert groups == [
        DuplicateGroup(0, (0, 1)),
        DuplicateGroup(3, (3,)),
        DuplicateGroup(2, (2, 4)),
        DuplicateGroup(5, (5,)),
    ]
    # unsorted input: the better of two duplicates represents them
    swapped = collapse_near_duplicates(params[:2], [0.1, 0.9], space=SPACE)
    assert swapped == [DuplicateGroup(1, (1, 0))]
    # a wider tolerance merges 20 and 60
    wide = collapse_near_duplicates(params, scores, space=SPACE, tolerance=0.25)
    assert DuplicateGroup(0, (0, 1, 2, 5, 4)) in wide  # members best-first


def test_collapse_does_not_chain_and_handles_nan_scores() -> None:
    params = [{"length": v, "mult": 2.0, "ma": "ema"} for v in (20, 28, 36)]
    # 20~28 and 28~36 are within 9.75, but 20 and 36 are not: 36 starts its own group
    groups = collapse_near_duplicates(params, [3.0, 2.0, 1.0], space=SPACE)
    assert groups == [DuplicateGroup(0, (0, 1)), DuplicateGroup(2, (2,))]
    nan_first = collapse_near_duplicates(params, [float("nan"), 2.0, 1.0], space=SPACE)
    assert nan_first[0].representative == 1
    with pytest.raises(ValueError, match="scores"):
        collapse_near_duplicates(params, [1.0], space=SPACE)


def test_collapse_by_return_correlation() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=200), rng.normal(size=200)
    # different parameters, same trades (a scaled copy) -> duplicates; independent -> not
    matrix = np.column_stack(
        [a, 2 * a + 1e-4 * rng.normal(size=200), b, np.zeros(200), np.zeros(200)]
    )
    params = [
        {"length": 20, "mult": 1.0, "ma": "ema"},
        {"length": 150, "mult": 3.0, "ma": "sma"},
        {"length": 100, "mult": 1.5, "ma": "ema"},
        {"length": 180, "mult": 1.0, "ma": "sma"},
        {"length": 5, "mult": 2.9, "ma": "ema"},
    ]
    scores = [5.0, 4.0, 3.0, 2.0, 1.0]
    groups = collapse_near_duplicates(params, scores, space=SPACE, returns_matrix=matrix)
    assert groups == [
        DuplicateGroup(0, (0, 1)),
        DuplicateGroup(2, (2,)),
        DuplicateGroup(3, (3, 4)),  # both never trade: identical returns
    ]
    assert len(collapse_near_duplicates(params, scores, space=SPACE)) == 5
    strict = collapse_near_duplicates(
        params, scores, space=SPACE, returns_matrix=matrix, max_correlation=1.0 + 1e-9
    )
    assert DuplicateGroup(0, (0,)) in strict
    with pytest.raises(ValueError, match="T x 5"):
        collapse_near_duplicates(params, scores, space=SPACE, returns_matrix=matrix[:, :4])


# ------------------------------------------------------------------------------------------------
# Daily returns


def _utc(day: int, hour: int) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, tzinfo=dt.UTC)


def test_daily_returns_compound_over_a_weekend() -> None:
    # Friday 5th, (weekend: no bars), Monday 8th, Tuesday 9th January 2024
    ts = pl.Series([_utc(5, 20), _utc(5, 23), _utc(8, 0), _utc(8, 10), _utc(9, 5)])
    equity = np.array([100.5, 102.0, 101.0, 99.96, 104.958])
    frame = daily_returns(ts, equity, initial_equity=100.0)
    assert frame.schema == pl.Schema({"day": pl.Date, "return": pl.Float64})
    assert frame.get_column("day").to_list() == [dt.date(2024, 1, d) for d in (5, 8, 9)]
    expected = [102.0 / 100.0 - 1, 99.96 / 102.0 - 1, 104.958 / 99.96 - 1]
    np.testing.assert_allclose(frame.get_column("return").to_numpy(), expected, rtol=1e-12)
    # compounding the days gives the total return
    total = np.prod(1 + frame.get_column("return").to_numpy()) - 1
    assert total == pytest.approx(104.958 / 100.0 - 1)
    # without initial_equity the first bar's equity is the base
    first = daily_returns(ts.to_numpy(), equity).get_column("return")[0]
    assert first == pytest.approx(102.0 / 100.5 - 1)


def test_daily_returns_use_utc_days() -> None:
    """Friday 20:00 in New York is Saturday 01:00 UTC: a separate UTC day."""
    ny = pl.Series(
        [dt.datetime(2024, 1, 5, 10), dt.datetime(2024, 1, 5, 20)], dtype=pl.Datetime("us")
    ).dt.replace_time_zone("America/New_York")
    frame = daily_returns(ny, np.array([101.0, 103.02]), initial_equity=100.0)
    assert frame.get_column("day").to_list() == [dt.date(2024, 1, 5), dt.date(2024, 1, 6)]
    np.testing.assert_allclose(frame.get_column("return").to_numpy(), [0.01, 0.02], rtol=1e-12)
    with pytest.raises(ValueError, match="sorted"):
        daily_returns(ny.reverse(), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="equity has"):
        daily_returns(ny, np.array([1.0]))
    assert daily_returns(ny[:0], np.array([])).height == 0
