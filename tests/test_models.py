"""Signal models: the compact chart+indicator network and the baselines, on real EUR/USD samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import DataError
from aiopt_lib.core.streams import TRAINING_METRICS_SCHEMA, Streams, read_stream
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.dataset import DatasetConfig, build_dataset
from aiopt_lib.features.labels import CLASSES
from aiopt_lib.features.render import RenderSpec
from aiopt_lib.features.splits import purged_split
from aiopt_lib.models import load_model
from aiopt_lib.models.base import SampleSet, check_probabilities, load_sample_set
from aiopt_lib.models.networks import (
    HISTORY_COLUMNS,
    CompactChartNet,
    CompactConfig,
    GradientBoostingBaseline,
    LogisticBaseline,
    MajorityBaseline,
    Standardiser,
    spec_from_dict,
    spec_to_dict,
)

SPEC = RenderSpec(width=40, height=32)  # 16 bars, 2 px each: small and fast


def small_config(**changes: object) -> CompactConfig:
    base = CompactConfig(spec=SPEC, channels=(8, 16, 16), hidden=32, epochs=3, batch_size=64)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    root = tmp_path_factory.mktemp("models") / "dataset"
    build_dataset(load_sample().head(1500), root, DatasetConfig(window=16))
    return load_sample_set(root, spec=SPEC)


@pytest.fixture(scope="module")
def parts(data: SampleSet) -> tuple[SampleSet, SampleSet, SampleSet]:
    split = purged_split(data.samples)
    return data.take(split.train), data.take(split.validation), data.take(split.test)


@pytest.fixture(scope="module")
def fitted_compact(
    parts: tuple[SampleSet, SampleSet, SampleSet],
) -> tuple[CompactChartNet, object]:
    model = CompactChartNet(small_config(), progress=False)
    report = model.fit(parts[0], parts[1])
    return model, report


def with_labels(samples: SampleSet, labels: np.ndarray) -> SampleSet:
    """The same samples with the ``label`` column replaced by ``labels`` (class indices)."""
    names = pl.Series("label", [CLASSES[i] for i in labels])
    frame = samples.samples.with_columns(names.cast(samples.samples.schema["label"]))
    return dataclasses.replace(samples, samples=frame)


def rsi_labels(samples: SampleSet) -> np.ndarray:
    """A learnable rule of one feature: BUY above RSI 55, SELL below 45, HOLD between."""
    rsi = samples.samples["rsi_14"].to_numpy()
    return np.where(rsi > 55, 0, np.where(rsi < 45, 1, 2))


def balanced_accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    predicted = proba.argmax(axis=1)
    return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


# -- every model -------------------------------------------------------------------------------


def _all_models(
    parts: tuple[SampleSet, SampleSet, SampleSet], fitted_compact: tuple[CompactChartNet, object]
) -> list[object]:
    train, valid, _ = parts
    models: list[object] = [fitted_compact[0]]
    for model in (MajorityBaseline(), LogisticBaseline(), GradientBoostingBaseline()):
        model.fit(train, valid)
        models.append(model)
    return models


def test_every_model_gives_probabilities_and_round_trips(
    parts: tuple[SampleSet, SampleSet, SampleSet],
    fitted_compact: tuple[CompactChartNet, object],
    tmp_path: Path,
) -> None:
    test = parts[2]
    for model in _all_models(parts, fitted_compact):
        proba = model.predict_proba(test)
        assert proba.shape == (len(test), 3)
        assert (proba >= 0).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
        check_probabilities(proba, len(test))
        folder = model.save(tmp_path / model.kind).parent
        assert (folder / "model.json").is_file()
        loaded = load_model(folder)
        assert type(loaded) is type(model)
        assert loaded.kind == model.kind
        np.testing.assert_array_equal(loaded.predict_proba(test), proba)


def test_majority_predicts_training_frequencies(
    parts: tuple[SampleSet, SampleSet, SampleSet],
) -> None:
    train, valid, test = parts
    model = MajorityBaseline()
    report = model.fit(train, valid)
    counts = np.bincount(train.labels, minlength=3)
    np.testing.assert_allclose(model.predict_proba(test)[0], counts / counts.sum())
    assert (model.predict_proba(test).argmax(axis=1) == counts.argmax()).all()
    assert report.best_valid_loss is not None and report.best_valid_loss > 0
    assert model.explain(test) is None


def test_logistic_explains_with_feature_contributions(
    parts: tuple[SampleSet, SampleSet, SampleSet],
) -> None:
    train, valid, test = parts
    model = LogisticBaseline()
    model.fit(train, valid)
    reasons = model.explain(test.take(range(5)))
    predicted = model.predict_proba(test.take(range(5))).argmax(axis=1)
    assert len(reasons) == 5
    for text, cls in zip(reasons, predicted, strict=True):
        assert text.startswith(f"{CLASSES[cls]}: ")
        assert sum(name in text for name in train.feature_names) >= 3


def test_gbm_stops_early_on_the_given_validation_set(
    parts: tuple[SampleSet, SampleSet, SampleSet],
) -> None:
    train, valid, _ = parts
    model = GradientBoostingBaseline()
    model.fit(train, valid)
    # Noisy real labels: the validation loss stops improving long before 300 rounds.
    assert model.estimator.n_iter_ < model.config.max_iter


def test_standardiser_uses_training_statistics_and_survives_bad_values() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]], dtype=np.float32)
    stats = Standardiser.fit(x)
    np.testing.assert_allclose(stats.mean, [2.0, 5.0])
    np.testing.assert_allclose(stats.std, [1.0, 1.0])  # constant column: std 1
    z = stats.transform(np.array([[4.0, 7.0], [np.inf, np.nan]], dtype=np.float32))
    np.testing.assert_allclose(z, [[2.0, 2.0], [0.0, 0.0]])


# -- the compact network -----------------------------------------------------------------------


def test_compact_training_loss_goes_down(fitted_compact: tuple[CompactChartNet, object]) -> None:
    _, report = fitted_compact
    history = report.history
    assert history.columns == list(HISTORY_COLUMNS)
    assert history.height == 3
    loss = history["train_loss"].to_numpy()
    assert loss[-1] < loss[0]
    assert history["train_pattern_loss"][-1] < history["train_pattern_loss"][0]
    assert (history["seconds"].to_numpy() > 0).all()
    assert report.seconds >= float(history["seconds"].sum())


def test_compact_two_fits_with_the_same_seed_are_identical(
    parts: tuple[SampleSet, SampleSet, SampleSet],
    fitted_compact: tuple[CompactChartNet, object],
) -> None:
    train, valid, test = parts
    again = CompactChartNet(small_config(), progress=False)
    again.fit(train, valid)
    np.testing.assert_array_equal(again.predict_proba(test), fitted_compact[0].predict_proba(test))
    other_seed = CompactChartNet(small_config(seed=1), progress=False)
    other_seed.fit(train, valid)
    assert not np.array_equal(other_seed.predict_proba(test), again.predict_proba(test))


def test_compact_early_stopping_keeps_the_best_weights(
    parts: tuple[SampleSet, SampleSet, SampleSet],
) -> None:
    train, valid, _ = parts
    # Validation labels are the training rule reversed (BUY <-> SELL): the better the model
    # learns the rule, the worse it scores, so the best epoch comes early and training stops.
    train = with_labels(train, rsi_labels(train))
    rule = rsi_labels(valid)
    valid = with_labels(valid, np.choose(rule, [1, 0, 2]))
    config = small_config(inputs="features", epochs=30, patience=2, learning_rate=5e-3)
    model = CompactChartNet(config, progress=False)
    report = model.fit(train, valid)
    history = report.history
    assert report.best_epoch is not None
    assert report.best_epoch < history["epoch"].max()
    assert history.height == report.best_epoch + config.patience < config.epochs
    best_row = history.filter(pl.col("epoch") == report.best_epoch)
    assert best_row["valid_loss"][0] == report.best_valid_loss
    assert report.best_valid_loss == history["valid_loss"].min()
    # The weights in the model are those of the best epoch, not of the last one.
    assert model.evaluate(valid)["loss"] == pytest.approx(report.best_valid_loss, rel=1e-9)
    assert history["valid_loss"][-1] > report.best_valid_loss


def test_a_learnable_signal_is_learned(parts: tuple[SampleSet, SampleSet, SampleSet]) -> None:
    train, valid, test = (with_labels(p, rsi_labels(p)) for p in parts)
    majority = MajorityBaseline()
    majority.fit(train, valid)
    floor = balanced_accuracy(majority.predict_proba(test), test.labels)
    floor_accuracy = float((majority.predict_proba(test).argmax(1) == test.labels).mean())
    assert floor == pytest.approx(1 / 3)
    compact = CompactChartNet(small_config(inputs="features", epochs=15), progress=False)
    models = [compact, LogisticBaseline(), GradientBoostingBaseline()]
    for model in models:
        model.fit(train, valid)
        proba = model.predict_proba(test)
        accuracy = float((proba.argmax(1) == test.labels).mean())
        assert balanced_accuracy(proba, test.labels) > floor + 0.3, model.kind
        assert accuracy > floor_accuracy + 0.2, model.kind


@pytest.mark.parametrize("inputs", ["image", "features"])
def test_ablation_modes_run(inputs: str, parts: tuple[SampleSet, SampleSet, SampleSet]) -> None:
    train, valid, test = parts
    model = CompactChartNet(small_config(inputs=inputs, epochs=1), progress=False)
    report = model.fit(train, valid)
    assert report.history.height == 1
    check_probabilities(model.predict_proba(test), len(test))
    if inputs == "features":  # no chart needed at all
        no_images = dataclasses.replace(test, images=None)
        np.testing.assert_array_equal(model.predict_proba(no_images), model.predict_proba(test))
    else:
        with pytest.raises(DataError, match="needs chart images"):
            model.predict_proba(dataclasses.replace(test, images=None))


def test_images_of_another_size_are_refused(
    fitted_compact: tuple[CompactChartNet, object], parts: tuple[SampleSet, SampleSet, SampleSet]
) -> None:
    test = parts[2]
    wrong = dataclasses.replace(test, images=np.zeros((len(test), 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="expects"):
        fitted_compact[0].predict_proba(wrong)


def test_pattern_head_outputs_probabilities_per_pattern(
    fitted_compact: tuple[CompactChartNet, object], parts: tuple[SampleSet, SampleSet, SampleSet]
) -> None:
    model = fitted_compact[0]
    test = parts[2]
    proba = model.predict_pattern_proba(test)
    assert model.pattern_names == test.pattern_names
    assert proba.shape == (len(test), len(test.pattern_names))
    assert ((proba >= 0) & (proba <= 1)).all()
    # Patterns are rare: after training, the head's mean probability follows their frequency
    # (doji, the most common, above the three-bar patterns).
    frequencies = test.patterns().mean(axis=0)
    doji = test.pattern_names.index("pat_doji")
    rare = int(np.argmin(parts[0].patterns().mean(axis=0)))
    assert proba[:, doji].mean() > proba[:, rare].mean()
    assert frequencies[doji] > frequencies[rare]


def test_metrics_go_to_a_stream_with_its_schema(
    parts: tuple[SampleSet, SampleSet, SampleSet], tmp_path: Path
) -> None:
    train, valid, _ = parts
    streams = Streams(tmp_path / "run-7", flush_seconds=None, background_flush=False)
    model = CompactChartNet(small_config(epochs=2), metrics_stream=streams, progress=False)
    report = model.fit(train, valid)
    streams.close()
    metrics = read_stream(streams.root, "training_metrics")
    assert metrics.schema == TRAINING_METRICS_SCHEMA
    assert metrics.height == 4  # a train and a val row per epoch
    assert metrics["run_id"].unique().to_list() == ["run-7"]
    train_rows = metrics.filter(pl.col("split") == "train").sort("epoch")
    val_rows = metrics.filter(pl.col("split") == "val").sort("epoch")
    assert train_rows["epoch"].to_list() == [1, 2]
    np.testing.assert_allclose(train_rows["loss"], report.history["train_loss"])
    np.testing.assert_allclose(val_rows["loss"], report.history["valid_loss"])
    np.testing.assert_allclose(val_rows["val_accuracy"], report.history["valid_accuracy"])
    assert (train_rows["grad_norm"] > 0).all() and (train_rows["samples_per_s"] > 0).all()
    assert train_rows["learning_rate"].to_list() == [model.config.learning_rate] * 2
    assert train_rows["val_accuracy"].is_null().all()
    assert metrics["gpu_memory_mb"].is_null().all()  # CPU training
    steps_per_epoch = -(-len(train) // model.config.batch_size)
    assert train_rows["step"].to_list() == [steps_per_epoch, 2 * steps_per_epoch]


def test_saved_compact_model_keeps_its_spec_and_statistics(
    fitted_compact: tuple[CompactChartNet, object], tmp_path: Path
) -> None:
    model = fitted_compact[0]
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "weights.safetensors").is_file()
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, CompactChartNet)
    assert loaded.spec == SPEC
    assert loaded.config == model.config
    assert loaded.feature_names == model.feature_names
    # Standardisation statistics are those of the training rows, saved with the weights.
    mean = loaded.network.feature_mean.numpy()
    assert mean.shape == (len(model.feature_names),)
    assert not np.allclose(mean, 0.0)
    assert spec_from_dict(spec_to_dict(RenderSpec.jkx(20))) == RenderSpec.jkx(20)


def test_the_chart_alone_is_enough_to_learn_what_it_shows(
    parts: tuple[SampleSet, SampleSet, SampleSet],
) -> None:
    # The label is the sign of the 12-bar return, which the 16-bar chart draws: the image-only
    # network must read it from the pixels (no features go in).
    def direction(samples: SampleSet) -> np.ndarray:
        return np.where(samples.samples["ret_12"].to_numpy() > 0, 0, 1)

    train, valid, test = (with_labels(p, direction(p)) for p in parts)
    model = CompactChartNet(small_config(inputs="image", epochs=6, pattern_weight=0.0))
    model.progress = False
    model.fit(train, valid)
    accuracy = float((model.predict_proba(test).argmax(1) == test.labels).mean())
    floor = max(np.bincount(test.labels) / len(test))
    assert accuracy > floor + 0.15


def test_stop_on_total_counts_the_pattern_loss_and_is_validated(
    parts: tuple[SampleSet, SampleSet, SampleSet],
) -> None:
    from aiopt_lib.core.errors import ConfigError

    with pytest.raises(ConfigError, match="stop_on"):
        CompactConfig(stop_on="pattern")
    train, valid, _ = parts
    model = CompactChartNet(
        small_config(stop_on="total", pattern_weight=1.0, epochs=4), progress=False
    )
    report = model.fit(train, valid)
    totals = (report.history["valid_loss"] + report.history["valid_pattern_loss"]).to_list()
    assert report.best_valid_loss == pytest.approx(min(totals))
    assert report.best_epoch == int(np.argmin(totals)) + 1
