"""Tests of aiopt_lib.models.evaluation: metrics by hand and against scikit-learn, calibration, tables."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss

import aiopt_lib as ai
from aiopt_lib.core.streams import PREDICTIONS_SCHEMA, StreamWriter, read_stream
from aiopt_lib.features.causal import feature_columns
from aiopt_lib.models.evaluation import (
    EVALUATION_SORT_KEY,
    TemperatureScaler,
    classification_metrics,
    confusion,
    evaluation_table,
    expected_calibration_error,
    pattern_recognition_report,
    predictions_frame,
    prior_proba,
    reliability_table,
)

Y = np.array([0, 1, 2, 0, 1, 2])


def _one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(3)[y]


def _synthetic(n: int, sharpen: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities q; the model reports softmax(sharpen * ln q), so it is
    over-confident for sharpen > 1 and under-confident for sharpen < 1 (true T = sharpen)."""
    rng = np.random.default_rng(seed)
    q = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    y = (rng.random(n)[:, None] > np.cumsum(q, axis=1)).sum(axis=1)
    z = sharpen * np.log(q)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return y, p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# metrics by hand


def test_perfect_predictions() -> None:
    m = classification_metrics(Y, _one_hot(Y))
    assert m["n"] == 6
    assert m["accuracy"] == 1.0
    assert m["balanced_accuracy"] == 1.0
    assert m["macro_f1"] == 1.0
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)
    assert m["brier"] == 0.0
    assert m["ece"] == 0.0


def test_uniform_predictions() -> None:
    m = classification_metrics(Y, np.full((6, 3), 1 / 3))
    assert m["log_loss"] == pytest.approx(math.log(3))
    assert m["brier"] == pytest.approx(2 / 3)
    # ties go to BUY: the two BUY rows are right; every confidence is 1/3 in one bin
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_small_case() -> None:
    y = np.array([0, 1, 2, 2])
    p = np.array(
        [
            [0.7, 0.2, 0.1],  # right, confidence 0.7
            [0.6, 0.3, 0.1],  # wrong (BUY), confidence 0.6
            [0.1, 0.1, 0.8],  # right, confidence 0.8
            [0.2, 0.5, 0.3],  # wrong (SELL), confidence 0.5
        ]
    )
    m = classification_metrics(y, p, n_bins=10)
    assert m["accuracy"] == pytest.approx(0.5)
    # recalls: BUY 1/1, SELL 0/1, HOLD 1/2
    assert m["balanced_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    # F1: BUY 2*1/(2+1+0)=2/3, SELL 0, HOLD 2*1/(2+0+1)=2/3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.3])))
    brier = [0.09 + 0.04 + 0.01, 0.36 + 0.49 + 0.01, 0.01 + 0.01 + 0.04, 0.04 + 0.25 + 0.49]
    assert m["brier"] == pytest.approx(np.mean(brier))
    # bins (0.4,0.5], (0.5,0.6], (0.6,0.7], (0.7,0.8]: one row each, |acc - conf| per row
    assert m["ece"] == pytest.approx((0.5 + 0.6 + 0.3 + 0.2) / 4)


def test_agrees_with_sklearn() -> None:
    y, p = _synthetic(2000, 2.0, seed=1)
    predicted = p.argmax(axis=1)
    m = classification_metrics(y, p)
    assert m["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), rel=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert m["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"))


def test_log_loss_counts_absent_classes_and_clips() -> None:
    y = np.array([0, 0])  # SELL and HOLD absent from y_true
    p = np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    m = classification_metrics(y, p)
    assert m["log_loss"] == pytest.approx((-math.log(0.5) - math.log(1e-15)) / 2)
    # sklearn clips at machine epsilon instead: larger, but just as finite
    assert log_loss(y, p, labels=[0, 1, 2]) > m["log_loss"]
    assert math.isfinite(m["log_loss"])


def test_ece_matches_reliability_table_and_a_plain_loop() -> None:
    y, p = _synthetic(3000, 3.0, seed=2)
    table = reliability_table(y, p, n_bins=15)
    assert table.height == 15
    assert table["count"].sum() == 3000
    filled = table.filter(pl.col("count") > 0)
    from_table = (filled["count"] * (filled["accuracy"] - filled["mean_confidence"]).abs()).sum()
    ece = expected_calibration_error(y, p, n_bins=15)
    assert ece == pytest.approx(from_table / 3000)
    # reference: explicit bins (lower, upper]
    conf, right = p.max(axis=1), p.argmax(axis=1) == y
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.sum() * abs(right[inside].mean() - conf[inside].mean())
    assert ece == pytest.approx(total / 3000)
    # an over-confident model has a visible ECE
    assert ece > 0.05


def test_reliability_table_empty_bins_are_null() -> None:
    table = reliability_table(Y, _one_hot(Y), n_bins=4)
    assert table["lower"].to_list() == [0.0, 0.25, 0.5, 0.75]
    assert table["count"].to_list() == [0, 0, 0, 6]
    assert table["accuracy"].to_list() == [None, None, None, 1.0]
    assert table["mean_confidence"].null_count() == 3


def test_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(np.array([0, -1]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(Y, np.full((5, 3), 1 / 3))
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics(Y, np.full((6, 3), 0.5))
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(np.array([], dtype=int), np.empty((0, 3)))


def test_confusion() -> None:
    y = np.array([0, 1, 2, 2, 0])
    p = _one_hot(np.array([0, 0, 2, 1, 0]))
    table = confusion(y, p)
    assert table.columns == ["true", "BUY", "SELL", "HOLD"]
    assert table["true"].cast(pl.String).to_list() == ["BUY", "SELL", "HOLD"]
    assert table.select("BUY", "SELL", "HOLD").to_numpy().tolist() == [
        [2, 0, 0],
        [1, 0, 0],
        [0, 1, 1],
    ]


# ---------------------------------------------------------------------------------------------
# temperature scaling


def test_temperature_scaling_fixes_an_over_confident_model() -> None:
    y_valid, p_valid = _synthetic(20000, 3.0, seed=3)
    scaler = TemperatureScaler.fit(y_valid, p_valid)
    assert scaler.temperature == pytest.approx(3.0, rel=0.1)
    assert scaler.valid_nll_after < scaler.valid_nll_before
    calibrated = scaler.transform(p_valid)
    assert classification_metrics(y_valid, calibrated)["log_loss"] == pytest.approx(
        scaler.valid_nll_after
    )
    assert np.array_equal(calibrated.argmax(axis=1), p_valid.argmax(axis=1))
    # fitted on validation, it also helps on fresh test rows of the same model
    y_test, p_test = _synthetic(5000, 3.0, seed=4)
    before, after = (classification_metrics(y_test, q) for q in (p_test, scaler.transform(p_test)))
    assert after["log_loss"] < before["log_loss"]
    assert after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]


def test_temperature_scaling_under_confident_and_logits() -> None:
    y, p = _synthetic(20000, 0.5, seed=5)
    scaler = TemperatureScaler.fit(y, p)
    assert scaler.temperature == pytest.approx(0.5, rel=0.1)
    # logits differ from ln p by a per-row constant: same temperature, same probabilities
    logits = np.log(p) + np.random.default_rng(0).normal(size=(len(p), 1)) * 5
    from_logits = TemperatureScaler.fit(y, logits=logits)
    assert from_logits.temperature == pytest.approx(scaler.temperature, rel=1e-4)
    np.testing.assert_allclose(from_logits.transform_logits(logits), scaler.transform(p), atol=1e-6)


def test_temperature_never_changes_the_argmax() -> None:
    rng = np.random.default_rng(6)
    p = rng.dirichlet([0.3, 0.3, 0.3], size=500)
    for temperature in (0.05, 0.5, 2.0, 50.0):
        scaled = TemperatureScaler(temperature).transform(p)
        assert np.array_equal(scaled.argmax(axis=1), p.argmax(axis=1))
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    np.testing.assert_allclose(TemperatureScaler().transform(p), p, atol=1e-12)


def test_temperature_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler(0.0)
    with pytest.raises(ValueError, match="either"):
        TemperatureScaler.fit(Y)
    with pytest.raises(ValueError, match="logits"):
        TemperatureScaler.fit(Y, logits=np.zeros((6, 2)))


# ---------------------------------------------------------------------------------------------
# the comparison table


def test_evaluation_table_sorted_with_calibration() -> None:
    y, p = _synthetic(3000, 3.0, seed=7)
    results = {
        "overconfident": (y, p),
        "prior": (y, prior_proba(np.array([0, 0, 1, 2]), len(y))),
        "uniform": (y, np.full((len(y), 3), 1 / 3)),
    }
    scaler = TemperatureScaler.fit(*_synthetic(3000, 3.0, seed=8))
    table = evaluation_table(results, calibrated={"overconfident": scaler.transform(p)})
    assert table.columns == [
        "model",
        "n",
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "log_loss",
        "brier",
        "ece",
        "log_loss_calibrated",
        "ece_calibrated",
    ]
    assert EVALUATION_SORT_KEY[0] == "log_loss"
    assert table["log_loss"].is_sorted()
    assert set(table["model"]) == set(results)
    assert (table["n"] == 3000).all()
    row = table.filter(pl.col("model") == "overconfident").row(0, named=True)
    assert row["log_loss_calibrated"] < row["log_loss"]
    assert table.filter(pl.col("model") == "uniform")["log_loss"][0] == pytest.approx(math.log(3))
    assert table.filter(pl.col("model") == "prior")["log_loss_calibrated"].null_count() == 1


def test_evaluation_table_refuses_different_test_sets() -> None:
    y, p = _synthetic(100, 1.0, seed=9)
    shifted = y.copy()
    shifted[0] = (shifted[0] + 1) % 3
    with pytest.raises(ValueError, match="same test period"):
        evaluation_table({"a": (y, p), "b": (shifted, p)})
    with pytest.raises(ValueError, match="same test period"):
        evaluation_table({"a": (y, p), "b": (y[:-1], p[:-1])})
    with pytest.raises(ValueError, match="unknown model"):
        evaluation_table({"a": (y, p)}, calibrated={"b": p})


def test_prior_baseline() -> None:
    p = prior_proba(np.array([0, 0, 0, 1]), 3)
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p[0], [0.75, 0.25, 0.0])
    assert (p.argmax(axis=1) == 0).all()


def test_real_eurusd_model_against_baselines(tmp_path) -> None:
    """End to end on the real 2017 EUR/USD sample: causal features, triple-barrier labels, a
    purged split, a logistic model calibrated on validation, compared on test with baselines."""
    bars = ai.load_sample()
    names = feature_columns()
    rows = (
        ai.add_features(bars)
        .join(ai.triple_barrier_labels(bars).select("ts", "label", "label_end_ts"), on="ts")
        .drop_nulls(["label", *names])
    )
    split = ai.purged_split(rows)
    y = rows["label"].to_physical().to_numpy().astype(np.int64)
    x = rows.select(pl.col(names).cast(pl.Float64)).to_numpy()
    mean, std = x[split.train].mean(axis=0), x[split.train].std(axis=0) + 1e-12
    x = (x - mean) / std
    model = LogisticRegression(C=0.05, max_iter=500).fit(x[split.train], y[split.train])
    scaler = TemperatureScaler.fit(y[split.validation], model.predict_proba(x[split.validation]))
    y_test = y[split.test]
    p_test = model.predict_proba(x[split.test])
    table = evaluation_table(
        {
            "logistic": (y_test, p_test),
            "prior": (y_test, prior_proba(y[split.train], len(y_test))),
            "uniform": (y_test, np.full((len(y_test), 3), 1 / 3)),
        },
        calibrated={"logistic": scaler.transform(p_test)},
    )
    assert table.height == 3
    assert (table["n"] == len(y_test)).all()
    assert table["log_loss"].is_sorted()
    # the prior beats the uniform guess: the classes are not balanced (HOLD is rare)
    scores = {r["model"]: r for r in table.iter_rows(named=True)}
    assert scores["prior"]["log_loss"] < scores["uniform"]["log_loss"]
    assert 0.0 <= scores["logistic"]["ece"] <= 1.0
    assert confusion(y_test, p_test).select("BUY", "SELL", "HOLD").sum_horizontal().sum() == len(
        y_test
    )
    # the same predictions, logged to a real predictions stream
    frame = predictions_frame(
        rows[split.test].with_columns(symbol=pl.lit("EURUSD")), p_test, "logistic", "1"
    )
    with StreamWriter(tmp_path, "predictions", background_flush=False, handle_sigterm=False) as w:
        w.append(frame)
    assert read_stream(tmp_path, "predictions").height == len(y_test)


# ---------------------------------------------------------------------------------------------
# pattern recognition report


def test_pattern_recognition_report_by_hand() -> None:
    flags = np.array(
        [
            [1, 0, 0, 1],
            [1, 0, 0, np.nan],
            [0, 0, 1, 0],
            [0, 1, 0, 0],
        ],
        dtype=float,
    )
    proba = np.array(
        [
            [0.9, 0.1, 0.2, 0.6],  # pattern a: TP; d: TP
            [0.2, 0.1, 0.2, 0.9],  # a: FN; d: warm-up, left out
            [0.7, 0.1, 0.2, 0.1],  # a: FP; c: FN
            [0.1, 0.1, 0.2, 0.5],  # b: FN; d: FP (0.5 >= threshold)
        ]
    )
    report = pattern_recognition_report(flags, proba, ["a", "b", "c", "d"])
    rows = {r["pattern"]: r for r in report.iter_rows(named=True)}
    assert rows["a"] == {
        "pattern": "a",
        "n": 4,
        "support": 2,
        "predicted_positives": 2,
        "true_positives": 1,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "lift": 1.0,  # precision 0.5 at a base rate of 2/4: no better than chance
    }
    # b and c: occur, never predicted -> precision undefined (null), recall 0, F1 null
    assert rows["b"]["precision"] is None
    assert rows["b"]["recall"] == 0.0
    assert rows["b"]["f1"] is None
    assert rows["d"]["n"] == 3
    assert rows["d"]["support"] == 1
    assert rows["d"]["predicted_positives"] == 2
    assert rows["d"]["precision"] == 0.5
    assert rows["d"]["recall"] == 1.0
    assert rows["d"]["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert rows["d"]["lift"] == pytest.approx(0.5 / (1 / 3))
    assert rows["b"]["lift"] is None
    # a pattern that never occurs and is never predicted: all undefined, no error
    empty = pattern_recognition_report(np.zeros((3, 1)), np.zeros((3, 1)), ["never"])
    assert empty.row(0, named=True)["precision"] is None
    assert empty.row(0, named=True)["recall"] is None
    assert empty.row(0, named=True)["f1"] is None


def test_pattern_report_on_real_detector_flags() -> None:
    """The detectors' own flags as predictions score perfectly; their negation scores zero."""
    frame = ai.add_patterns(ai.load_sample())
    names = [c for c in frame.columns if c.startswith("pat_")]
    flags = frame.select(pl.col(names).cast(pl.Float64)).to_numpy()
    perfect = pattern_recognition_report(flags, np.nan_to_num(flags), names)
    seen = perfect.filter(pl.col("support") > 0)
    assert seen.height > 5
    assert (seen["precision"] == 1.0).all()
    assert (seen["recall"] == 1.0).all()
    assert (seen["f1"] == 1.0).all()
    inverted = pattern_recognition_report(flags, 1 - np.nan_to_num(flags), names)
    assert (inverted.filter(pl.col("support") > 0)["recall"] == 0.0).all()


def test_pattern_report_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="0/1"):
        pattern_recognition_report(np.array([[2.0]]), np.array([[0.5]]), ["x"])
    with pytest.raises(ValueError, match="names"):
        pattern_recognition_report(np.zeros((2, 2)), np.zeros((2, 2)), ["x"])
    with pytest.raises(ValueError, match="must both be"):
        pattern_recognition_report(np.zeros((2, 2)), np.zeros((2, 3)), ["x", "y"])


# ---------------------------------------------------------------------------------------------
# predictions frame


def test_predictions_frame_appends_to_a_real_stream(tmp_path) -> None:
    bars = ai.load_sample().head(5)
    samples = bars.select("ts").with_columns(symbol=pl.lit("EURUSD"))
    proba = np.array(
        [[0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]]
    )
    frame = predictions_frame(samples, proba, "cnn", "v3", latency_ms=np.arange(5.0))
    assert frame.schema == PREDICTIONS_SCHEMA
    assert frame["predicted_label"].cast(pl.String).to_list() == [
        "BUY",
        "SELL",
        "HOLD",
        "BUY",
        "HOLD",
    ]
    np.testing.assert_allclose(frame["confidence"].to_numpy(), [0.6, 0.7, 0.6, 1 / 3, 1.0])
    assert (frame["written_at"] <= dt.datetime.now(dt.UTC)).all()
    no_latency = predictions_frame(samples, proba, "cnn", "v3")
    assert no_latency["latency_ms"].null_count() == 5

    with StreamWriter(tmp_path, "predictions", background_flush=False, handle_sigterm=False) as w:
        w.append(frame)
        w.append(no_latency)
    stored = read_stream(tmp_path, "predictions")
    assert stored.height == 10
    assert stored.head(5).equals(frame)
    assert stored["ts"].to_list()[:5] == bars["ts"].to_list()


def test_predictions_frame_symbol_argument_and_errors() -> None:
    samples = pl.DataFrame(
        {"ts": [dt.datetime(2019, 1, 4, 10, tzinfo=dt.timezone(dt.timedelta(hours=2)))]}
    )
    frame = predictions_frame(samples, np.array([[0.2, 0.3, 0.5]]), "m", "1", 2.5, symbol="EURUSD")
    assert frame["ts"][0] == dt.datetime(2019, 1, 4, 8, tzinfo=dt.UTC)
    assert frame["symbol"][0] == "EURUSD"
    assert frame["latency_ms"][0] == 2.5
    with pytest.raises(ValueError, match="symbol"):
        predictions_frame(samples, np.array([[0.2, 0.3, 0.5]]), "m", "1")
    naive = pl.DataFrame({"ts": [dt.datetime(2019, 1, 4)], "symbol": ["EURUSD"]})
    with pytest.raises(ValueError, match="naive"):
        predictions_frame(naive, np.array([[0.2, 0.3, 0.5]]), "m", "1")


def test_the_model_verdict_is_computed_from_the_table():
    from aiopt_lib.models.evaluation import model_verdict, probability_spread

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    sharp = np.full((600, 3), 0.1)
    sharp[np.arange(600), y] = 0.8  # knows the label
    flat = np.full((600, 3), 1 / 3) + rng.normal(0, 0.002, (600, 3))
    flat /= flat.sum(axis=1, keepdims=True)
    majority = np.tile(np.bincount(y, minlength=3) / 600, (600, 1))
    table = evaluation_table({"net": (y, sharp), "flat": (y, flat), "majority": (y, majority)})
    answer = model_verdict(table, "net", sharp)
    assert answer.startswith("Yes: on the test period net (sent on to the strategy notebooks)")
    assert "the best is net" in answer and "near-uniform" not in answer
    answer = model_verdict(table, "flat", flat)
    assert answer.startswith("No: ")
    assert "near-uniform (the most likely class has 0.33" in answer
    low, high = probability_spread(flat)
    assert high - low < 0.05 and probability_spread(sharp) == (0.8, 0.8)
    with pytest.raises(ValueError, match="lacks"):
        model_verdict(table, "vlm", flat)
