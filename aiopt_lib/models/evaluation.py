"""Honest evaluation of signal models: metrics, calibration, one comparison table, pattern checks.

Every function here takes the true classes ``y_true`` (class indices 0 = BUY, 1 = SELL, 2 = HOLD,
:data:`aiopt_lib.features.labels.CLASSES`; :attr:`aiopt_lib.models.base.SampleSet.labels` gives them) and the
probabilities ``proba`` a model predicted, shape ``(n, 3)`` in the same class order, rows summing
to 1 (:meth:`aiopt_lib.models.base.SignalModel.predict_proba`). Rows with an unknown label (``-1``)
are refused: drop them before scoring.

Conventions used by every metric
    * The predicted class of a row is ``argmax(proba)``; ties go to the earlier class in
      ``CLASSES`` order (BUY, then SELL, then HOLD), as :func:`numpy.argmax` does.
    * The *confidence* of a row is its top probability ``max(proba)`` (top-label calibration).
    * Probabilities are clipped to ``[PROBABILITY_FLOOR, 1]`` wherever a logarithm is taken, so a
      confident miss costs at most ``-ln(1e-15) ≈ 34.5`` nats instead of infinity.

Honest comparison
    :func:`evaluation_table` puts every model *and* the baselines (at least
    :func:`prior_proba`, the class frequencies of the training labels) in one table, scored on
    the same test rows; it refuses results whose ``y_true`` differ. Calibration
    (:class:`TemperatureScaler`) is fitted on the validation part, never on the test part.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.core.streams import PREDICTIONS_SCHEMA
from aiopt_lib.features.labels import CLASSES
from aiopt_lib.models.base import check_probabilities

__all__ = [
    "TemperatureScaler",
    "classification_metrics",
    "evaluation_table",
    "model_verdict",
    "pattern_recognition_report",
    "predictions_frame",
    "probability_spread",
]

PROBABILITY_FLOOR = 1e-15
"""Probabilities are clipped to ``[PROBABILITY_FLOOR, 1]`` before a logarithm (log-loss, logits)."""

DEFAULT_BINS = 15
N_CLASSES = len(CLASSES)

# Bounds of the temperature search; beyond them a model is either almost uniform or almost
# one-hot and the exact temperature no longer matters.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.01, 100.0)


def _check_labels(y_true: np.ndarray | Sequence[int]) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise ValueError("y_true must hold class indices 0 (BUY), 1 (SELL), 2 (HOLD)")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= N_CLASSES))
    if bad.size:
        raise ValueError(
            f"y_true holds {bad.size} value(s) outside 0..{N_CLASSES - 1} (first at row "
            f"{bad[0]}: {y[bad[0]]}); drop the rows without a label (-1) before scoring"
        )
    return y


def _check_inputs(
    y_true: np.ndarray | Sequence[int], proba: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(y_true)
    p = check_probabilities(proba, len(y))
    if len(y) == 0:
        raise ValueError("nothing to evaluate: no samples")
    return y, p


def _one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(N_CLASSES, dtype=np.float64)[y]


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    picked = np.clip(p[np.arange(len(y)), y], PROBABILITY_FLOOR, 1.0)
    return float(-np.mean(np.log(picked)))


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins are (lower, upper]; the first also holds 0. ceil keeps a confidence exactly on an edge
    # in the bin below it, as in Guo et al. (2017).
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _check_bins(n_bins: int) -> None:
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def _binned(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per bin: count, summed confidence and number correct (top label)."""
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = _bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct, minlength=n_bins)
    return counts, confidence_sum, correct_sum


def expected_calibration_error(
    y_true: np.ndarray | Sequence[int], proba: np.ndarray, n_bins: int = DEFAULT_BINS
) -> float:
    """Top-label expected calibration error (Guo et al., 2017).

    The confidences ``max(proba)`` are put in ``n_bins`` equal-width bins over ``[0, 1]``
    (intervals ``(lower, upper]``, the first one closed at 0), and
    ``ECE = sum over bins of (count_b / n) * |accuracy_b - mean_confidence_b|``, where
    ``accuracy_b`` is the share of rows in bin b whose predicted class is right. 0 is perfectly
    calibrated; empty bins contribute nothing. :func:`reliability_table` lists the bins.
    """
    _check_bins(n_bins)
    y, p = _check_inputs(y_true, proba)
    _, confidence_sum, correct_sum = _binned(y, p, n_bins)
    return float(np.abs(correct_sum - confidence_sum).sum() / len(y))


def classification_metrics(
    y_true: np.ndarray | Sequence[int], proba: np.ndarray, *, n_bins: int = DEFAULT_BINS
) -> dict[str, float | int]:
    """The scores of one model's probabilities against the true classes.

    Returns a dict with

    * ``n``: number of samples;
    * ``accuracy``: share of rows whose ``argmax(proba)`` is the true class;
    * ``balanced_accuracy``: mean over the classes present in ``y_true`` of the recall
      (right / rows of that class); a constant predictor scores ``1 / classes present``;
    * ``macro_f1``: mean over the classes that occur in ``y_true`` or in the predictions of
      ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` (so always defined; a class the model predicts
      but that never occurs counts 0);
    * ``log_loss``: ``-mean(ln p[i, y_i])`` in nats with ``p`` clipped to
      ``[PROBABILITY_FLOOR, 1]``; all three classes are labels even when absent from ``y_true``.
      A uniform model scores ``ln 3 ≈ 1.0986``. Equal to :func:`sklearn.metrics.log_loss`
      with ``labels=[0, 1, 2]`` except for probabilities below the floor (sklearn clips at the
      float64 machine epsilon, ``2.2e-16``);
    * ``brier``: multi-class Brier score ``mean_i sum_c (p_ic - [y_i = c])^2``, from 0 (perfect)
      to 2; a uniform model scores 2/3;
    * ``ece``: top-label expected calibration error with ``n_bins`` equal-width bins
      (:func:`expected_calibration_error`).
    """
    from sklearn.metrics import accuracy_score, f1_score  # lazy: keeps `import aiopt_lib` fast

    _check_bins(n_bins)
    y, p = _check_inputs(y_true, proba)
    predicted = p.argmax(axis=1)
    present = np.unique(y)
    recalls = [np.mean(predicted[y == c] == c) for c in present]
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(f1_score(y, predicted, average="macro")),
        "log_loss": _log_loss(y, p),
        "brier": float(np.mean(np.sum((p - _one_hot(y)) ** 2, axis=1))),
        "ece": expected_calibration_error(y, p, n_bins),
    }


def reliability_table(
    y_true: np.ndarray | Sequence[int], proba: np.ndarray, n_bins: int = DEFAULT_BINS
) -> pl.DataFrame:
    """The bins of a top-label reliability diagram, one row per bin (empty bins included).

    Columns: ``bin`` (0-based), ``lower``, ``upper`` (the bin is ``(lower, upper]``, the first
    also holds 0), ``count``, ``mean_confidence`` (mean of ``max(proba)`` in the bin) and
    ``accuracy`` (share of its rows whose predicted class is right); both null for an empty bin.
    A calibrated model has ``accuracy ≈ mean_confidence`` in every bin; the count-weighted mean
    of ``|accuracy - mean_confidence|`` is the ECE.
    """
    _check_bins(n_bins)
    y, p = _check_inputs(y_true, proba)
    counts, confidence_sum, correct_sum = _binned(y, p, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    filled = counts > 0
    safe = np.where(filled, counts, 1)
    return pl.DataFrame(
        {
            "bin": np.arange(n_bins, dtype=np.int64),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": counts.astype(np.int64),
            "mean_confidence": np.where(filled, confidence_sum / safe, np.nan),
            "accuracy": np.where(filled, correct_sum / safe, np.nan),
        }
    ).with_columns(pl.col("mean_confidence", "accuracy").fill_nan(None))


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _log_proba(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), PROBABILITY_FLOOR, 1.0))


def _nll_at(y: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


@dataclasses.dataclass(frozen=True)
class TemperatureScaler:
    """Temperature scaling (Guo et al., 2017): ``softmax(logits / T)`` with one fitted ``T > 0``.

    ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one; the
    ranking of the classes in every row, hence the predicted class, never changes. Fit it on the
    **validation** part (:meth:`fit`), apply it to the test part (:meth:`transform`)::

        scaler = TemperatureScaler.fit(valid.labels, model.predict_proba(valid))
        calibrated = scaler.transform(model.predict_proba(test))

    ``valid_nll_before`` / ``valid_nll_after``: the validation log-loss at ``T = 1`` and at the
    fitted ``T``; ``n``: validation rows. ``TemperatureScaler()`` is the identity.
    """

    temperature: float = 1.0
    valid_nll_before: float | None = None
    valid_nll_after: float | None = None
    n: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")

    @classmethod
    def fit(
        cls,
        y_valid: np.ndarray | Sequence[int],
        proba: np.ndarray | None = None,
        *,
        logits: np.ndarray | None = None,
    ) -> TemperatureScaler:
        """Fit ``T`` on validation labels and either probabilities or logits (exactly one).

        Probabilities are turned into log-probabilities (clipped at ``PROBABILITY_FLOOR``), which
        are logits up to a per-row constant, so both give the same ``T``. ``T`` minimises the
        mean negative log-likelihood ``mean_i -ln softmax(z_i / T)[y_i]``; the NLL is convex in
        ``1 / T``, so a bounded Brent search over ``ln T`` in :data:`TEMPERATURE_BOUNDS` finds
        the optimum.
        """
        if (proba is None) == (logits is None):
            raise ValueError("give either proba or logits, not both or neither")
        y = _check_labels(y_valid)
        if len(y) == 0:
            raise ValueError("cannot fit a temperature on no samples")
        if proba is not None:
            z = _log_proba(check_probabilities(proba, len(y)))
        else:
            z = np.asarray(logits, dtype=np.float64)
            if z.shape != (len(y), N_CLASSES) or not np.isfinite(z).all():
                raise ValueError(f"logits must be finite with shape ({len(y)}, {N_CLASSES})")
        from scipy.optimize import minimize_scalar

        lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
        result = minimize_scalar(
            lambda log_t: _nll_at(y, z, math.exp(log_t)),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-6},
        )
        temperature = math.exp(float(result.x))
        before = _nll_at(y, z, 1.0)
        after = _nll_at(y, z, temperature)
        if before <= after:  # the identity is at least as good: keep it
            temperature, after = 1.0, before
        return cls(
            temperature=temperature, valid_nll_before=before, valid_nll_after=after, n=len(y)
        )

    def transform(self, proba: np.ndarray) -> np.ndarray:
        """``softmax(ln(proba) / T)`` (log clipped at ``PROBABILITY_FLOOR``): calibrated rows."""
        p = np.asarray(proba, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != N_CLASSES:
            raise ValueError(f"probabilities must have shape (n, {N_CLASSES}), got {p.shape}")
        check_probabilities(p, len(p))
        return _softmax(_log_proba(p) / self.temperature)

    def transform_logits(self, logits: np.ndarray) -> np.ndarray:
        """``softmax(logits / T)``: calibrated probabilities from raw logits."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != N_CLASSES:
            raise ValueError(f"logits must have shape (n, {N_CLASSES}), got {z.shape}")
        return _softmax(z / self.temperature)


def confusion(y_true: np.ndarray | Sequence[int], proba: np.ndarray) -> pl.DataFrame:
    """Confusion counts: one row per true class (``true``), one column per predicted class.

    Columns ``true`` (BUY, SELL, HOLD) and ``BUY``, ``SELL``, ``HOLD`` (Int64 counts of rows of
    that true class whose ``argmax(proba)`` is the column's class). Rows sum to the class
    supports; the diagonal counts the right predictions.
    """
    y, p = _check_inputs(y_true, proba)
    predicted = p.argmax(axis=1)
    counts = np.bincount(y * N_CLASSES + predicted, minlength=N_CLASSES**2).reshape(
        N_CLASSES, N_CLASSES
    )
    return pl.DataFrame(
        {
            "true": pl.Series(list(CLASSES), dtype=pl.Enum(list(CLASSES))),
            **{name: counts[:, j].astype(np.int64) for j, name in enumerate(CLASSES)},
        }
    )


def prior_proba(y_train: np.ndarray | Sequence[int], n: int) -> np.ndarray:
    """The prior (majority) baseline: every one of ``n`` rows gets the class frequencies of the
    training labels ``y_train``. Its predicted class is the training majority; its log-loss is
    the entropy a model must beat to have learned anything beyond the class balance."""
    y = _check_labels(y_train)
    if len(y) == 0:
        raise ValueError("the prior baseline needs training labels")
    frequencies = np.bincount(y, minlength=N_CLASSES) / len(y)
    return np.tile(frequencies, (n, 1))


EVALUATION_SORT_KEY: tuple[str, ...] = ("log_loss", "model")
""":func:`evaluation_table` sorts by log-loss (ascending: best first), then model name."""

_METRIC_COLUMNS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "log_loss", "brier", "ece")


def evaluation_table(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    calibrated: Mapping[str, np.ndarray] | None = None,
    n_bins: int = DEFAULT_BINS,
) -> pl.DataFrame:
    """One table of every model and baseline scored on the same test rows.

    ``results`` maps a model name to ``(y_true, proba)``; include the baselines yourself (e.g.
    ``"prior": (y_test, prior_proba(y_train, len(y_test)))``). Every ``y_true`` must be the same
    array (the same test period, in the same order), else ValueError: scores on different rows
    cannot be compared. ``calibrated`` optionally maps model names to temperature-scaled test
    probabilities (:class:`TemperatureScaler`), which add ``log_loss_calibrated`` and
    ``ece_calibrated`` (null for the other models).

    Columns: ``model`` and the metrics of :func:`classification_metrics` (``n``, ``accuracy``,
    ``balanced_accuracy``, ``macro_f1``, ``log_loss``, ``brier``, ``ece``), sorted by
    :data:`EVALUATION_SORT_KEY`: log-loss ascending (best first), ties by name.
    """
    if not results:
        raise ValueError("no results to compare")
    calibrated = dict(calibrated or {})
    unknown = sorted(set(calibrated) - set(results))
    if unknown:
        raise ValueError(f"calibrated probabilities for unknown model(s) {unknown}")
    reference_name: str | None = None
    reference: np.ndarray | None = None
    rows = []
    for name, (y_true, proba) in results.items():
        y = _check_labels(y_true)
        if reference is None:
            reference_name, reference = name, y
        elif not np.array_equal(y, reference):
            how = (
                "labels differ"
                if len(y) == len(reference)
                else f"{len(y)} vs {len(reference)} rows"
            )
            raise ValueError(
                f"model {name!r} was scored on different rows than {reference_name!r} ({how}); "
                "evaluate every model on the same test period"
            )
        row: dict[str, object] = {"model": name, **classification_metrics(y, proba, n_bins=n_bins)}
        if calibrated:
            if name in calibrated:
                scores = classification_metrics(y, calibrated[name], n_bins=n_bins)
                row["log_loss_calibrated"] = scores["log_loss"]
                row["ece_calibrated"] = scores["ece"]
            else:
                row["log_loss_calibrated"] = None
                row["ece_calibrated"] = None
        rows.append(row)
    schema: dict[str, pl.DataType] = {"model": pl.String()}
    schema.update({c: pl.Int64() if c == "n" else pl.Float64() for c in _METRIC_COLUMNS})
    if calibrated:
        schema.update({"log_loss_calibrated": pl.Float64(), "ece_calibrated": pl.Float64()})
    return pl.DataFrame(rows, schema=schema, orient="row").sort(list(EVALUATION_SORT_KEY))


def pattern_recognition_report(
    true_flags: np.ndarray,
    predicted_proba: np.ndarray,
    names: Sequence[str],
    threshold: float = 0.5,
) -> pl.DataFrame:
    """Does the model see what the rule-based pattern detectors see? One row per pattern.

    ``true_flags``: ``(n, k)`` 0/1 flags of the detectors (:meth:`SampleSet.patterns`); NaN
    marks a row where a detector has no value yet (warm-up) and is left out for that pattern.
    ``predicted_proba``: ``(n, k)`` the model's probability that each pattern is present; it is
    predicted present when ``>= threshold``. ``names``: the ``k`` pattern names.

    Columns: ``pattern``, ``n`` (rows scored), ``support`` (rows flagged by the detector),
    ``predicted_positives``, ``true_positives``, ``precision = TP / predicted_positives`` (null
    when nothing was predicted), ``recall = TP / support`` (null when the pattern never
    occurs), ``f1 = 2 TP / (2 TP + FP + FN)`` (null when precision or recall is null), and
    ``lift = precision / (support / n)``: how much more often a predicted pattern is real than
    a random guess at the pattern's base rate (1 = no better than chance).
    """
    flags = np.asarray(true_flags, dtype=np.float64)
    scores = np.asarray(predicted_proba, dtype=np.float64)
    names = list(names)
    if flags.ndim != 2 or flags.shape != scores.shape:
        raise ValueError(
            f"true_flags {flags.shape} and predicted_proba {scores.shape} must both be (n, k)"
        )
    if len(names) != flags.shape[1]:
        raise ValueError(f"{len(names)} names for {flags.shape[1]} patterns")
    known = ~np.isnan(flags)
    if not np.isin(flags[known], (0.0, 1.0)).all():
        raise ValueError("true_flags must be 0/1 (or NaN where a detector has no value)")
    if not np.isfinite(scores).all():
        raise ValueError("predicted_proba must be finite")
    actual = known & (flags == 1.0)
    predicted = known & (scores >= threshold)
    n = known.sum(axis=0)
    support = actual.sum(axis=0)
    predicted_positives = predicted.sum(axis=0)
    true_positives = (actual & predicted).sum(axis=0)
    return (
        pl.DataFrame(
            {
                "pattern": names,
                "n": n.astype(np.int64),
                "support": support.astype(np.int64),
                "predicted_positives": predicted_positives.astype(np.int64),
                "true_positives": true_positives.astype(np.int64),
            }
        )
        .with_columns(
            precision=pl.when(pl.col("predicted_positives") > 0).then(
                pl.col("true_positives") / pl.col("predicted_positives")
            ),
            recall=pl.when(pl.col("support") > 0).then(
                pl.col("true_positives") / pl.col("support")
            ),
        )
        .with_columns(
            f1=pl.when(pl.col("precision").is_not_null() & pl.col("recall").is_not_null()).then(
                2 * pl.col("true_positives") / (pl.col("support") + pl.col("predicted_positives"))
            ),
            lift=pl.when((pl.col("support") > 0) & pl.col("precision").is_not_null()).then(
                pl.col("precision") / (pl.col("support") / pl.col("n"))
            ),
        )
    )


def predictions_frame(
    samples: pl.DataFrame,
    proba: np.ndarray,
    model_id: str,
    model_version: str,
    latency_ms: float | np.ndarray | None = None,
    *,
    symbol: str | None = None,
) -> pl.DataFrame:
    """A model's predictions as rows of the ``predictions`` stream
    (:data:`aiopt_lib.core.streams.PREDICTIONS_SCHEMA`), ready for ``streams.predictions.append``.

    ``samples``: the rows predicted for, with ``ts`` (the bar's open time) and ``symbol`` (or
    pass ``symbol`` for all rows). ``proba``: ``(n, 3)`` in BUY, SELL, HOLD order.
    ``predicted_label`` is the argmax, ``confidence`` its probability. ``latency_ms``: one value
    for all rows, one per row, or None (null). ``written_at``: now (UTC).
    """
    if "ts" not in samples.columns:
        raise ValueError("samples need a 'ts' column (the bar's open time)")
    if symbol is None and "symbol" not in samples.columns:
        raise ValueError("samples have no 'symbol' column; pass symbol=")
    p = check_probabilities(proba, samples.height)
    n = samples.height
    if latency_ms is None:
        latency = pl.Series("latency_ms", [None] * n, dtype=pl.Float64)
    else:
        values = np.broadcast_to(np.asarray(latency_ms, dtype=np.float64), (n,))
        latency = pl.Series("latency_ms", values, dtype=pl.Float64)
    ts = samples.get_column("ts")
    if isinstance(ts.dtype, pl.Datetime) and ts.dtype.time_zone is None:
        raise ValueError("samples 'ts' is naive; it must be UTC (Datetime('us', 'UTC'))")
    keys = samples.select(
        pl.col("ts").dt.convert_time_zone("UTC").cast(TS_DTYPE),
        pl.lit(symbol, pl.String).alias("symbol")
        if symbol is not None
        else pl.col("symbol").cast(pl.String),
    )
    label_dtype = PREDICTIONS_SCHEMA["predicted_label"]
    frame = keys.with_columns(
        pl.lit(model_id, pl.String).alias("model_id"),
        pl.lit(model_version, pl.String).alias("model_version"),
        pl.Series("prob_buy", p[:, 0]),
        pl.Series("prob_sell", p[:, 1]),
        pl.Series("prob_hold", p[:, 2]),
        pl.Series("predicted_label", np.asarray(CLASSES)[p.argmax(axis=1)], dtype=pl.String).cast(
            label_dtype
        ),
        pl.Series("confidence", p.max(axis=1)),
        latency,
        pl.lit(dt.datetime.now(dt.UTC)).cast(TS_DTYPE).alias("written_at"),
    )
    return frame.select(list(PREDICTIONS_SCHEMA))


def probability_spread(proba: np.ndarray) -> tuple[float, float]:
    """The 5th and 95th percentiles of each row's largest probability: how far a model's
    confidence moves over the rows (a near-uniform three-class model stays around 0.33)."""
    top = np.asarray(proba, dtype=np.float64).max(axis=1)
    low, high = np.quantile(top, [0.05, 0.95]) if top.size else (np.nan, np.nan)
    return float(low), float(high)


def model_verdict(
    table: pl.DataFrame,
    sent_on: str,
    calibrated: np.ndarray,
    *,
    baseline: str = "majority",
    min_spread: float = 0.05,
) -> str:
    """The answer of a model comparison in words, computed from ``table``
    (:func:`evaluation_table`): whether the model ``sent_on`` to the strategy notebooks beats the
    ``baseline``'s log-loss on the test period (calibrated when the table has it), which model is
    best, and a warning when ``calibrated`` (its test probabilities) are near-uniform: a
    most-likely class probability within ``min_spread`` of chance (1/3) on 95% of the rows gives
    an AI gate nothing to act on."""
    column = "log_loss_calibrated" if "log_loss_calibrated" in table.columns else "log_loss"
    losses = {
        row["model"]: row[column] if row[column] is not None else row["log_loss"]
        for row in table.iter_rows(named=True)
    }
    if sent_on not in losses or baseline not in losses:
        raise ValueError(f"the table lacks {sent_on!r} or {baseline!r}")
    ours, base = losses[sent_on], losses[baseline]
    best = min(losses, key=lambda name: losses[name])
    beaten = [name for name, loss in losses.items() if name != baseline and loss < base]
    sentence = (
        f"{'Yes' if ours < base else 'No'}: on the test period {sent_on} (sent on to the strategy "
        f"notebooks) has a log-loss of {ours:.4f} against {base:.4f} for the {baseline} baseline; "
        + (
            f"{len(beaten)} of {len(losses) - 1} models beat the baseline, the best is {best} "
            f"({losses[best]:.4f})."
            if beaten
            else f"no model beats the {baseline} baseline."
        )
    )
    low, high = probability_spread(calibrated)
    if high - 1.0 / N_CLASSES < min_spread:
        sentence += (
            f" Its calibrated probabilities are near-uniform (the most likely class has {low:.3f} to"
            f" {high:.3f} on 90% of the test bars): an AI gate on them will rarely or never fire."
        )
    return sentence
