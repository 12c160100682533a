"""Overfitting-aware statistics for ranking the trials of a strategy search.

A search tries many parameter sets and keeps the best backtest. The best of many noisy Sharpe
ratios is biased upwards, so this module measures how much of it survives:

* :func:`deflated_sharpe_ratio` (Bailey & López de Prado 2014): the probability that the true
  Sharpe ratio of the selected trial exceeds the best Sharpe that ``N`` skill-less trials would
  show by luck, corrected for track-record length, skewness and kurtosis.
* :func:`probability_of_backtest_overfitting` (Bailey, Borwein, López de Prado & Zhu 2017,
  CSCV): how often the in-sample best trial ranks below the median out of sample.
* :func:`collapse_near_duplicates`: one representative per group of near-identical trials, so a
  ranking shows distinct strategies rather than 20 copies of the same one.
* :func:`daily_returns`: per-bar equity compounded to one return per UTC day, the rows of the
  ``T × N`` (days × trials) matrix the other functions take.

Sharpe ratios here are per period (``mean / std``, ``ddof=1``, risk-free 0), never annualised,
unless a name says ``annual``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

# scipy is imported where used: importing scipy.stats costs ~0.3 s, and aiopt_lib loads this
# module at start-up (the CLI answers --help without it).


def _norm() -> Any:
    from scipy.stats import norm

    return norm


EULER_GAMMA = 0.5772156649015329
Metric = Literal["sharpe"] | Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DeflatedSharpe:
    """The deflated Sharpe ratio of one trial and the figures it is built from.

    ``dsr = PSR(expected_max_sharpe)``; ``psr = PSR(0)``; ``sharpe`` per period,
    ``sharpe_annual = sharpe * sqrt(periods_per_year)`` (NaN when that was not given); ``skew``
    and ``kurtosis`` (not excess: 3 for a normal) of the returns; ``n_obs`` = T.
    """

    dsr: float
    psr: float
    sharpe: float
    sharpe_annual: float
    expected_max_sharpe: float
    n_trials: float
    n_obs: int
    skew: float
    kurtosis: float


def _moments(returns: np.ndarray) -> tuple[float, float, float, int]:
    """Per-period Sharpe (ddof=1), skewness and kurtosis (population moments), n; NaN if undefined."""
    values = np.asarray(returns, dtype=float).ravel()
    n = int(values.size)
    if n < 3 or not np.all(np.isfinite(values)):
        return math.nan, math.nan, math.nan, n
    centred = values - values.mean()
    m2 = float(np.mean(centred**2))
    std = float(values.std(ddof=1))
    if m2 <= 0.0 or std <= 1e-12 * max(float(np.max(np.abs(values))), 1e-300):
        return math.nan, math.nan, math.nan, n
    skew = float(np.mean(centred**3)) / m2**1.5
    kurtosis = float(np.mean(centred**4)) / m2**2
    return float(values.mean()) / std, skew, kurtosis, n


def probabilistic_sharpe_from_moments(
    sharpe: float, *, n_obs: int, skew: float, kurtosis: float, benchmark_sharpe: float = 0.0
) -> float:
    """PSR(SR*) = Φ((SR − SR*) √(T − 1) / √(1 − γ3 SR + (γ4 − 1)/4 SR²)).

    Bailey & López de Prado (2012), "The Sharpe Ratio Efficient Frontier", J. of Risk 15(2), and
    eq. (9)–(10) of Bailey & López de Prado (2014). ``sharpe`` and ``benchmark_sharpe`` per period,
    ``kurtosis`` γ4 not excess. NaN when ``n_obs < 3``, an input is NaN, or the term under the
    square root is not positive.
    """
    if n_obs < 3 or not all(map(math.isfinite, (sharpe, skew, kurtosis, benchmark_sharpe))):
        return math.nan
    radicand = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if radicand <= 0.0:
        return math.nan
    z = (sharpe - benchmark_sharpe) * math.sqrt(n_obs - 1) / math.sqrt(radicand)
    return float(_norm().cdf(z))


def probabilistic_sharpe_ratio(returns: np.ndarray, benchmark_sharpe: float = 0.0) -> float:
    """The probability that the true per-period Sharpe of ``returns`` exceeds ``benchmark_sharpe``.

    Uses the sample Sharpe (mean / std, ddof=1), skewness and kurtosis of ``returns`` in
    :func:`probabilistic_sharpe_from_moments`. NaN for fewer than 3 returns, a non-finite return
    or zero variance.
    """
    sharpe, skew, kurtosis, n = _moments(returns)
    return probabilistic_sharpe_from_moments(
        sharpe, n_obs=n, skew=skew, kurtosis=kurtosis, benchmark_sharpe=benchmark_sharpe
    )


def expected_max_sharpe(n_trials: float, sharpe_variance: float) -> float:
    """SR0 = √V ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e))), γ the Euler–Mascheroni constant.

    The expected maximum of ``N`` independent Sharpe estimates with true Sharpe 0 and variance
    ``V`` across trials (Bailey & López de Prado 2014, eq. (6); the approximation of the expected
    maximum of N standard normals is from their Appendix; against the exact expectation it is
    2.3 % high at N = 10, 0.9 % at N = 100, 0.4 % at N = 1000). ``N = 1`` gives 0; ``N`` may be
    fractional (an effective number of trials, see :func:`effective_trials`). NaN when ``V`` is
    negative or NaN.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if not sharpe_variance >= 0.0:
        return math.nan
    if n_trials == 1:
        return 0.0
    norm = _norm()
    z_max = (1.0 - EULER_GAMMA) * norm.ppf(1.0 - 1.0 / n_trials) + EULER_GAMMA * norm.ppf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return math.sqrt(sharpe_variance) * float(z_max)


def deflated_sharpe_ratio(
    returns: np.ndarray,
    *,
    n_trials: float,
    sharpe_variance: float,
    periods_per_year: float | None = None,
) -> DeflatedSharpe:
    """The deflated Sharpe ratio of one trial's per-period returns (Bailey & López de Prado 2014).

    Bailey, D. H. and López de Prado, M. (2014), "The Deflated Sharpe Ratio: Correcting for
    Selection Bias, Backtest Overfitting and Non-Normality", J. of Portfolio Management 40(5):

        DSR = PSR(SR0) = Φ((SR − SR0) √(T − 1) / √(1 − γ3 SR + (γ4 − 1)/4 SR²))

    with SR the per-period Sharpe of ``returns`` (mean / std, ddof=1), T their number, γ3 their
    skewness, γ4 their kurtosis (not excess) and SR0 = :func:`expected_max_sharpe` (``n_trials``,
    ``sharpe_variance``). ``sharpe_variance`` is the variance across all trials of their
    per-period Sharpe estimates (the same periods as ``returns``). ``n_trials`` should be the
    number of *effective* (independent) trials, not the raw count: correlated trials inflate the
    maximum less (:func:`effective_trials`). With ``n_trials = 1``, DSR = PSR(0).

    Fewer than 3 returns, zero variance or a negative term under the square root give NaN
    figures, never an exception.
    """
    sharpe, skew, kurtosis, n = _moments(returns)
    sr0 = expected_max_sharpe(n_trials, sharpe_variance)
    kwargs = {"n_obs": n, "skew": skew, "kurtosis": kurtosis}
    annual = sharpe * math.sqrt(periods_per_year) if periods_per_year else math.nan
    return DeflatedSharpe(
        dsr=probabilistic_sharpe_from_moments(sharpe, benchmark_sharpe=sr0, **kwargs),
        psr=probabilistic_sharpe_from_moments(sharpe, **kwargs),
        sharpe=sharpe,
        sharpe_annual=annual,
        expected_max_sharpe=sr0,
        n_trials=float(n_trials),
        n_obs=n,
        skew=skew,
        kurtosis=kurtosis,
    )


def sharpe_ratios(returns_matrix: np.ndarray) -> np.ndarray:
    """Per-period Sharpe (mean / std, ddof=1) of each column of a ``T × N`` matrix; NaN if std is 0.

    ``np.var(sharpe_ratios(m), ddof=1)`` (ignoring NaN) is the ``sharpe_variance`` of
    :func:`deflated_sharpe_ratio`.
    """
    matrix = np.asarray(returns_matrix, dtype=float)
    std = matrix.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, matrix.mean(axis=0) / std, np.nan)


def _unit_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns centred and scaled to unit norm (``unit.T @ unit`` = correlations); flat ones 0."""
    centred = matrix - matrix.mean(axis=0)
    norms = np.sqrt(np.sum(centred**2, axis=0))
    flat = norms <= 1e-12 * np.maximum(np.max(np.abs(matrix), axis=0), 1e-300)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=~flat), flat


def _correlation(matrix: np.ndarray) -> np.ndarray:
    """Column correlations; a flat column correlates 1 with other flat ones, else 0."""
    unit, flat = _unit_columns(matrix)
    corr = np.clip(unit.T @ unit, -1.0, 1.0)
    corr[np.ix_(flat, flat)] = 1.0
    np.fill_diagonal(corr, 1.0)
    return corr


def effective_trials(
    returns_matrix: np.ndarray,
    threshold: float = 0.95,
    *,
    method: Literal["clusters", "eigenvalues"] = "clusters",
) -> float:
    """The effective number of independent trials among the ``N`` columns of a ``T × N`` matrix.

    ``"clusters"`` (default): complete-linkage hierarchical clustering of the trials on the
    distance ``1 − ρ`` (ρ the correlation of their returns), cut at ``1 − threshold``, so every
    two trials of a cluster correlate at least ``threshold``; the estimate is the number of
    clusters. This follows López de Prado & Lewis (2019), "Detection of false investment
    strategies using unsupervised learning methods", Quantitative Finance 19(9), who take the
    number of clusters of trials as the number of effectively independent trials, with a fixed
    correlation cut instead of their ONC algorithm.

    ``"eigenvalues"``: Li & Ji (2005), "Adjusting multiple testing in multilocus analyses using
    the eigenvalues of a correlation matrix", Heredity 95: ``Σ_i [1(|λ_i| ≥ 1) + |λ_i| − ⌊|λ_i|⌋]``
    over the eigenvalues λ of the correlation matrix (``threshold`` is unused). With ``T < N`` the
    sample correlation has rank ≤ T − 1, which caps this estimate near T.

    Constant columns (no trades) count as one trial together.
    """
    matrix = np.asarray(returns_matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 1:
        raise ValueError(f"returns_matrix must be T x N with T >= 2, got shape {matrix.shape}")
    if matrix.shape[1] == 1:
        return 1.0
    corr = _correlation(matrix)
    if method == "eigenvalues":
        eigen = np.abs(np.linalg.eigvalsh(corr))
        return float(np.sum((eigen >= 1.0) + (eigen - np.floor(eigen))))
    if method != "clusters":
        raise ValueError(f"method must be 'clusters' or 'eigenvalues', got {method!r}")
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distance = squareform(1.0 - corr, checks=False)
    tree = linkage(np.clip(distance, 0.0, 2.0), method="complete")
    return float(np.max(fcluster(tree, t=1.0 - threshold, criterion="distance")))


@dataclass(frozen=True, eq=False)
class PBOResult:
    """The outcome of CSCV over ``n_combinations`` in-sample / out-of-sample splits.

    ``logits[c]`` = λ_c of combination c (``itertools.combinations`` order); ``is_best_oos[c]``
    and ``is_best_is[c]``: the out-of-sample and in-sample metric of the trial that was best
    in sample; ``performance_degradation_slope``: the OLS slope of ``is_best_oos`` on
    ``is_best_is`` (negative: in-sample excellence is paid back out of sample);
    ``probability_of_loss``: the share of combinations with ``is_best_oos < 0``.
    """

    pbo: float
    logits: np.ndarray
    n_combinations: int
    n_blocks: int
    n_trials: int
    n_obs: int
    is_best_oos: np.ndarray
    performance_degradation_slope: float
    probability_of_loss: float
    is_best_is: np.ndarray


def _sharpe_chunks(
    matrix: np.ndarray, masks: np.ndarray, block_len: int, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(IS Sharpe, OOS Sharpe), ``chunk × N`` each, from per-block sums: no loop over trials."""
    n_blocks = masks.shape[1]
    blocks = matrix.reshape(n_blocks, block_len, -1)
    centred = blocks - matrix.mean(axis=0)  # the variance is shift-invariant; centring keeps
    sums = blocks.sum(axis=1)  # sumsq - sum²/n from cancelling catastrophically
    c_sums, c_squares = centred.sum(axis=1), (centred**2).sum(axis=1)
    floor = 1e-12 * matrix.var(axis=0, ddof=1)  # below it a column is flat in that subset
    n = block_len * (n_blocks // 2)
    for start in range(0, len(masks), chunk):
        out = []
        for part in (masks[start : start + chunk], ~masks[start : start + chunk]):
            weights = part.astype(float)
            csum = weights @ c_sums
            var = (weights @ c_squares - csum**2 / n) / (n - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out.append(np.where(var > floor, (weights @ sums) / n / np.sqrt(var), np.nan))
        yield out[0], out[1]


def _callable_chunks(
    matrix: np.ndarray, masks: np.ndarray, block_len: int, metric: Callable
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(IS metric, OOS metric), ``1 × N`` each, calling ``metric`` on the time-ordered rows."""
    block_of_row = np.arange(len(matrix)) // block_len
    for mask in masks:
        in_sample = mask[block_of_row]
        values = [np.asarray(metric(matrix[rows]), dtype=float) for rows in (in_sample, ~in_sample)]
        if any(v.shape != (matrix.shape[1],) for v in values):
            raise ValueError(f"metric must return one value per trial ({matrix.shape[1]})")
        yield values[0][None, :], values[1][None, :]


def probability_of_backtest_overfitting(
    returns_matrix: np.ndarray, *, n_blocks: int = 16, metric: Metric = "sharpe"
) -> PBOResult:
    """The probability of backtest overfitting by combinatorially symmetric cross-validation.

    Bailey, D. H., Borwein, J., López de Prado, M. and Zhu, Q. J. (2017), "The Probability of
    Backtest Overfitting", J. of Computational Finance 20(4). ``returns_matrix`` is ``T × N``
    (T periods in time order, N trials). The oldest ``T mod S`` rows are dropped so the rest
    splits into ``S = n_blocks`` (even) contiguous blocks of equal length. For each of the
    ``C(S, S/2)`` combinations c of S/2 blocks: IS = the chosen blocks, OOS = the others (rows
    kept in time order); ``n*`` = argmax of the IS metric (first on ties); ``ω_c`` = rank of
    ``n*`` among the OOS metrics (1 = worst, N = best, ties averaged) / (N + 1);
    ``λ_c = ln(ω_c / (1 − ω_c))``; PBO = share of combinations with λ_c ≤ 0.

    ``metric``: ``"sharpe"`` (per-period mean / std, ddof=1, computed from per-block sums for all
    trials and combinations at once) or a callable mapping a ``rows × N`` matrix to ``N`` values
    (called twice per combination). A NaN metric (a flat column: zero variance) ranks worst.

    Raises ``ValueError`` unless the matrix is 2-D and finite, ``N >= 2``, ``S`` even ``>= 2`` and
    ``T >= 2 S``.
    """
    matrix = np.asarray(returns_matrix, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"returns_matrix must be 2-D (T periods x N trials), got {matrix.ndim}-D")
    n_obs, n_trials = matrix.shape
    if n_trials < 2:
        raise ValueError(f"need at least 2 trials (columns), got {n_trials}")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be an even number >= 2, got {n_blocks}")
    if n_obs < 2 * n_blocks:
        raise ValueError(f"need T >= 2 * n_blocks = {2 * n_blocks} rows, got {n_obs}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("returns_matrix contains NaN or infinite values")
    block_len = n_obs // n_blocks
    matrix = matrix[n_obs - block_len * n_blocks :]
    combos = np.array(list(itertools.combinations(range(n_blocks), n_blocks // 2)))
    masks = np.zeros((len(combos), n_blocks), dtype=bool)
    masks[np.arange(len(combos))[:, None], combos] = True
    if isinstance(metric, str):
        if metric != "sharpe":
            raise ValueError(f"metric must be 'sharpe' or a callable, got {metric!r}")
        chunks = _sharpe_chunks(matrix, masks, block_len, chunk=max(1, 2_000_000 // n_trials))
    else:
        chunks = _callable_chunks(matrix, masks, block_len, metric)
    ranks, best_is, best_oos = [], [], []
    for is_metric, oos_metric in chunks:
        rows = np.arange(len(is_metric))
        best = np.argmax(np.nan_to_num(is_metric, nan=-np.inf), axis=1)
        oos = np.nan_to_num(oos_metric, nan=-np.inf)
        value = oos[rows, best][:, None]
        ranks.append(np.sum(oos < value, axis=1) + (np.sum(oos == value, axis=1) + 1) / 2)
        best_is.append(is_metric[rows, best])
        best_oos.append(oos_metric[rows, best])
    omega = np.concatenate(ranks) / (n_trials + 1)
    logits = np.log(omega / (1.0 - omega))
    is_best_is, is_best_oos = np.concatenate(best_is), np.concatenate(best_oos)
    finite = np.isfinite(is_best_is) & np.isfinite(is_best_oos)
    slope = math.nan
    if finite.sum() >= 2 and np.var(is_best_is[finite]) > 0:
        slope = float(np.polyfit(is_best_is[finite], is_best_oos[finite], 1)[0])
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        n_combinations=len(combos),
        n_blocks=n_blocks,
        n_trials=n_trials,
        n_obs=len(matrix),
        is_best_oos=is_best_oos,
        performance_degradation_slope=slope,
        probability_of_loss=float(np.mean(is_best_oos < 0)),
        is_best_is=is_best_is,
    )


@dataclass(frozen=True)
class DuplicateGroup:
    """Indices (into the candidate list) of near-identical trials; ``members[0]`` is the best."""

    representative: int
    members: tuple[int, ...]


def _is_range(spec: object) -> bool:
    return (
        isinstance(spec, tuple)
        and len(spec) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in spec)
    )


def _same_params(a: Mapping, b: Mapping, space: Mapping, tolerance: float) -> bool:
    if a.keys() != b.keys():
        return False
    for name, value in a.items():
        spec = space.get(name)
        if spec is not None and _is_range(spec):
            # the relative slack keeps decimal steps (2.1 - 2.0 vs 0.05 * 2) on the inclusive side
            limit = tolerance * (spec[1] - spec[0]) * (1.0 + 1e-9)
            if abs(float(value) - float(b[name])) > limit:
                return False
        elif value != b[name]:
            return False
    return True


def collapse_near_duplicates(
    params: Sequence[Mapping[str, float | int | str]],
    scores: Sequence[float],
    *,
    space: Mapping[str, tuple[float, float] | Sequence[object]],
    tolerance: float = 0.05,
    returns_matrix: np.ndarray | None = None,
    max_correlation: float = 0.98,
) -> list[DuplicateGroup]:
    """Group near-identical candidates greedily, best first; one group per distinct strategy.

    Candidates are visited by descending ``score`` (stable; NaN scores last). A candidate joins
    the group of the first (best) earlier representative it duplicates, else it starts a group.
    Two candidates are duplicates when

    * they have the same parameter names, every numeric parameter differs by at most
      ``tolerance × (high − low)`` of its range in ``space`` and every other parameter is equal
      (integers follow the numeric rule: 20 vs 21 on a 5..200 range is a duplicate), or
    * ``returns_matrix`` (``T × N``, column i = candidate i) is given and the correlation of their
      returns is ``>= max_correlation`` (the same trades), or both columns are identical.

    ``space`` maps a parameter to a range, a ``tuple`` of two numbers ``(low, high)``, or to its
    choices (any other sequence); parameters not in ``space`` must be equal. Comparing only with
    representatives keeps groups from chaining. Returns groups in best-first order of their
    representatives; ``members`` (representative first) are indices into ``params``.
    """
    n = len(params)
    if len(scores) != n:
        raise ValueError(f"got {n} params but {len(scores)} scores")
    unit = None
    if returns_matrix is not None:
        matrix = np.asarray(returns_matrix, dtype=float)
        if matrix.ndim != 2 or matrix.shape[1] != n:
            raise ValueError(f"returns_matrix must be T x {n}, got shape {matrix.shape}")
        unit = _unit_columns(matrix)[0]
    keys = np.asarray(scores, dtype=float)
    order = sorted(range(n), key=lambda i: (math.isnan(keys[i]), -np.nan_to_num(keys[i])))
    groups: list[list[int]] = []
    for i in order:
        for group in groups:
            rep = group[0]
            if _same_params(params[i], params[rep], space, tolerance) or (
                unit is not None
                and (
                    float(unit[:, i] @ unit[:, rep]) >= max_correlation
                    or np.array_equal(matrix[:, i], matrix[:, rep])
                )
            ):
                group.append(i)
                break
        else:
            groups.append([i])
    return [DuplicateGroup(representative=g[0], members=tuple(g)) for g in groups]


def daily_returns(
    ts: pl.Series | np.ndarray, equity: np.ndarray, *, initial_equity: float | None = None
) -> pl.DataFrame:
    """One compounded return per UTC calendar day that has at least one bar.

    ``ts`` (sorted; a polars Datetime series, any time zone, or numpy ``datetime64``, naive = UTC)
    stamps each bar (the bar's open time in aiopt, so a bar belongs to the day it opens on);
    ``equity[i]`` is the account value at the end of bar i. With ``E_d`` the last equity of day
    d, ``return_d = E_d / E_{d'} − 1`` where d' is the previous day with bars (weekends and
    holidays get no row; what happens over them lands on the next day), and for the first day
    ``E_d / initial_equity − 1``; ``initial_equity`` defaults to ``equity[0]`` (so the first
    bar's own change is lost: pass the starting capital). A non-positive base gives NaN.

    Returns columns ``day`` (``Date``, UTC) and ``return`` (``Float64``).
    """
    times = pl.Series("ts", ts)
    values = np.asarray(equity, dtype=float)
    if len(times) != len(values):
        raise ValueError(f"ts has {len(times)} values but equity has {len(values)}")
    if not len(values):
        return pl.DataFrame(schema={"day": pl.Date, "return": pl.Float64})
    if not isinstance(times.dtype, pl.Datetime):
        raise ValueError(f"ts must hold datetimes, got {times.dtype}")
    times = (
        times.dt.replace_time_zone("UTC")
        if times.dtype.time_zone is None
        else times.dt.convert_time_zone("UTC")
    )
    if not times.is_sorted():
        raise ValueError("ts must be sorted ascending")
    if not np.all(np.isfinite(values)):
        raise ValueError("equity contains NaN or infinite values")
    base = float(values[0] if initial_equity is None else initial_equity)
    last = (
        pl.DataFrame({"day": times.dt.date(), "equity": values})
        .group_by("day", maintain_order=True)
        .agg(pl.col("equity").last())
    )
    previous = pl.col("equity").shift(1).fill_null(base)
    return last.select(
        "day",
        pl.when(previous > 0).then(pl.col("equity") / previous - 1.0).alias("return"),
    )


__all__ = [
    "DeflatedSharpe",
    "DuplicateGroup",
    "PBOResult",
    "collapse_near_duplicates",
    "daily_returns",
    "deflated_sharpe_ratio",
    "effective_trials",
    "expected_max_sharpe",
    "probabilistic_sharpe_from_moments",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "sharpe_ratios",
]
