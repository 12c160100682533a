"""Distilling the signal model into Pine-computable rules: recovery of a known rule, exact agreement
with scikit-learn, no look-ahead, valid Pine, and the same trades in Pine as in our engine."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from sklearn.tree import DecisionTreeClassifier

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features import indicators as ind
from aiopt_lib.features.lookahead import check_no_lookahead
from aiopt_lib.pine.distill import (
    LABELS,
    DistilledTree,
    default_features,
    distill_signal_model,
    distilled_pine,
    feature_frame,
)
from aiopt_lib.pine.export import PineExportError, check_pine, render_statement, spec_to_pine
from aiopt_lib.pine.offline import compare_trades, run_pine_offline
from aiopt_lib.strategy.search import builtin_template
from aiopt_lib.strategy.spec import Costs, backtest


def _frame(ts: pl.Series, probabilities: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {"ts": ts, **{f"prob_{lab.lower()}": probabilities[:, j] for j, lab in enumerate(LABELS)}}
    )


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def rsi_model(bars):
    """A model whose label is a known function of RSI(14), on the last 2,000 bars."""
    rsi = ind.rsi(bars.get_column("close").to_numpy(), 14)
    label = np.where(rsi < 35, 0, np.where(rsi > 65, 1, 2))
    probabilities = np.full((bars.height, 3), 0.15)
    probabilities[np.arange(bars.height), label] = 0.7
    predictions = _frame(bars.get_column("ts"), probabilities).tail(2000)
    return distill_signal_model(bars, predictions), predictions


@pytest.fixture(scope="module")
def mixed(bars):
    """A noisier model reading several features (10% of labels flipped at random): a full tree
    with mixed leaves, tuple and pattern declarations."""
    f = feature_frame(bars)
    col = lambda name: f.get_column(name).to_numpy()  # noqa: E731
    buy = ((col("stoch_k_14_3") < 25) & (col("adx_14_14") > 20)) | (
        col("pat_bullish_engulfing") == 1
    )
    label = np.where(buy, 0, np.where(col("ema_distance_20") > 1.0, 1, 2))
    rng = np.random.default_rng(1)
    label = np.where(rng.random(bars.height) < 0.1, rng.integers(0, 3, bars.height), label)
    probabilities = np.full((bars.height, 3), 0.1)
    probabilities[np.arange(bars.height), label] = 0.8
    predictions = _frame(bars.get_column("ts"), probabilities).tail(3000)
    return distill_signal_model(bars, predictions, max_depth=4), predictions


def test_the_tree_recovers_a_known_rsi_rule(rsi_model):
    model, predictions = rsi_model
    assert model.fidelity >= 0.95
    assert model.n_samples == 2000 and model.n_warmup == 0
    names = {model.features[i].name for i in model.tree.used_features()}
    assert names == {"rsi_14"}
    thresholds = sorted(
        t for t, f in zip(model.tree.threshold, model.tree.feature, strict=True) if f >= 0
    )
    assert thresholds[0] == pytest.approx(35, abs=0.5) and thresholds[-1] == pytest.approx(
        65, abs=0.5
    )
    text = model.describe()
    assert "rsi_14 <=" in text and "-> BUY" in text and "-> SELL" in text
    table = model.fidelity_table()
    assert table.get_column("label").to_list() == list(LABELS)
    assert table.get_column("support").sum() == 2000
    assert table.get_column("recall").min() >= 0.95
    # the distilled gate fires where the model's label is BUY
    gate = model.predictions(load_sample()).join(predictions, on="ts", suffix="_model")
    buy_model = gate.get_column("prob_buy_model") == 0.7
    assert ((gate.get_column("prob_buy") >= 0.5) == buy_model).mean() >= 0.95


def test_predictions_equal_sklearn_predict_proba(bars, mixed):
    model, predictions = mixed
    assert 0.85 <= model.fidelity < 1.0  # noise the tree cannot follow
    assert len(model.tree.used_features()) >= 3
    frame = feature_frame(bars)
    x = frame.drop("ts").to_numpy()
    # the same fit, by hand: the model's label (argmax) on the predicted bars with every feature
    probabilities = (
        bars.select("ts")
        .join(predictions, on="ts", how="left", maintain_order="left")
        .drop("ts")
        .to_numpy()
    )
    rows = ~np.isnan(probabilities).any(axis=1) & ~np.isnan(x).any(axis=1)
    y = np.asarray(LABELS)[np.argmax(probabilities[rows], axis=1)]
    estimator = DecisionTreeClassifier(max_depth=4, min_samples_leaf=20, random_state=0)
    estimator.fit(x[rows], y)
    order = [list(estimator.classes_).index(label) for label in LABELS]

    ours = model.predictions(bars).drop("ts").to_numpy()
    used = list(model.tree.used_features())
    defined = ~np.isnan(x[:, used]).any(axis=1)
    np.testing.assert_array_equal(ours[defined], estimator.predict_proba(x[defined])[:, order])
    # warm-up: no probability (Pine's na), so the gate is False there
    assert np.isnan(ours[~defined]).all() and (~defined).sum() > 0
    tree_labels = np.asarray(LABELS)[np.argmax(ours[rows], axis=1)]
    assert model.fidelity == pytest.approx((tree_labels == y).mean())
    assert model.fidelity == pytest.approx((estimator.predict(x[rows]) == y).mean())


def _reference_leaf(tree: DistilledTree, row: np.ndarray) -> int:
    node = 0
    while not tree.is_leaf(node):
        node = (
            tree.left[node] if row[tree.feature[node]] <= tree.threshold[node] else tree.right[node]
        )
    return node


def test_thresholds_decide_the_same_side_in_numpy_and_pine(mixed):
    model, _ = mixed
    tree = model.tree
    rng = np.random.default_rng(0)
    splits = [i for i in range(len(tree.feature)) if not tree.is_leaf(i)]
    x = rng.normal(size=(500, len(model.features)))
    # values exactly on a threshold must go left (<=), as in sklearn and in the Pine ternary
    for k, node in enumerate(splits):
        x[k :: len(splits), tree.feature[node]] = tree.threshold[node]
    leaves = tree.apply(x)
    assert leaves.tolist() == [_reference_leaf(tree, row) for row in x]
    # every literal in the Pine expression reads back to the exact threshold / probability
    expressions = model.pine_expressions()
    literals = {
        float(t.strip("()")) for t in re.findall(r"<= (\(?-?[0-9.]+\)?)", expressions["ai_buy"])
    }
    assert literals <= {tree.threshold[i] for i in splits}
    assert len(literals) >= 3
    leaf_values = {
        float(v) for v in re.findall(r"[?:] \(?([0-9]+\.[0-9]+)\)?", expressions["ai_sell"])
    }
    assert leaf_values <= {p[1] for p in tree.probabilities}
    assert all(expr.startswith("na(") and "? na :" in expr for expr in expressions.values())
    assert all("ta." not in expr for expr in expressions.values())


def test_features_use_no_future_bars(bars):
    report = check_no_lookahead(feature_frame, bars.head(800), n_cuts=6, seed=3)
    assert report.passed and report.n_compared > 0
    frame = feature_frame(bars)
    assert frame.columns[1:] == [f.name for f in default_features()]
    # indicator warm-up is NaN, patterns are 0.0 / 1.0 from the first bar
    assert np.isnan(frame.get_column("rsi_14").to_numpy()[:14]).all()
    assert not np.isnan(frame.get_column("rsi_14").to_numpy()[14:]).any()
    assert set(frame.get_column("pat_hammer").unique().to_list()) == {0.0, 1.0}


@pytest.mark.parametrize("version", [5, 6])
def test_the_distilled_gate_exports_to_valid_pine(mixed, version):
    model, _ = mixed
    spec = builtin_template("ai_gate").spec
    text = distilled_pine(spec, model, version=version)
    assert check_pine(text, version) == []
    for declaration in model.pine_declarations():
        assert render_statement(declaration)[0] in text
    assert text.index("distill_ema_distance_20 =") < text.index("float ai_buy =")
    # the header reports the fidelity, overall and per class
    assert f"fidelity {model.fidelity:.3f}" in text
    assert "// " + "  BUY: recall" in text
    # the expressions alone read variables pine.py does not declare: why distilled_pine hoists them
    with pytest.raises(PineExportError, match="undeclared"):
        spec_to_pine(spec, version=version, ai_rules=model.pine_expressions())


@pytest.mark.parametrize("version", [5, 6])
def test_pine_trades_the_distilled_gate_as_our_engine_does(bars, mixed, version):
    model, _ = mixed
    spec = (
        builtin_template("ai_gate")
        .spec.model_copy(
            update={"costs": Costs(spread=0.0, commission_per_unit=0.000025, slippage_ticks=1)}
        )
        .with_params(trend=20, gate=0.4)
    )
    window = bars.tail(2000)  # Pine warms its indicators up on these bars: so do the predictions
    ours = backtest(window, spec, predictions=model.predictions(window)).trades
    theirs = run_pine_offline(distilled_pine(spec, model, version=version), window)
    report = compare_trades(ours, theirs, spec.instrument_tick_size)
    assert report.identical, report.first_difference
    assert report.equal == report.total_theirs >= 10


def test_bad_inputs_are_refused(bars, rsi_model):
    _, predictions = rsi_model
    with pytest.raises(ConfigError, match="prob_hold"):
        distill_signal_model(bars, predictions.drop("prob_hold"))
    with pytest.raises(ConfigError, match="need at least"):
        distill_signal_model(bars, predictions.head(30))
    with pytest.raises(ConfigError, match="unknown distillation feature"):
        distill_signal_model(bars, predictions, features=["vwap_14"])
    with pytest.raises(ConfigError, match="unknown distillation feature"):
        distill_signal_model(bars, predictions, features=["rsi_14_open"])  # not a rule source
    # a subset of features by name, patterns included
    model = distill_signal_model(bars, predictions, features=["rsi_14", "pat_doji"], max_depth=2)
    assert [f.name for f in model.features] == ["rsi_14", "pat_doji"]
    assert model.fidelity >= 0.95
