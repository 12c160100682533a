"""Signal models that run on a laptop: the compact chart+indicator network and three baselines.

Every model here follows :class:`aiopt_lib.models.base.SignalModel` (``fit``, ``predict_proba`` over
BUY/SELL/HOLD, ``save``, ``explain``) and is registered with
:func:`aiopt_lib.models.base.register_model`, so :func:`aiopt_lib.models.load_model` loads any of them
from its folder.

``"compact"`` — :class:`CompactChartNet`
    A small CNN over the sample's chart image fused with an MLP over the standardised indicator
    features, trained with PyTorch on the CPU in a few minutes (see :class:`CompactConfig`).
    An auxiliary head predicts the rule-based candlestick pattern flags (``pat_*``) from the chart
    alone ("visual pattern recognition": :meth:`CompactChartNet.predict_pattern_proba`).
``"majority"`` — :class:`MajorityBaseline`
    Predicts the training class frequencies for every sample.
``"logistic"`` — :class:`LogisticBaseline`
    Multinomial logistic regression on the standardised features (scikit-learn).
``"gbm"`` — :class:`GradientBoostingBaseline`
    Histogram gradient boosting (scikit-learn), early-stopped on the given validation set.

Rows whose label is null (``SampleSet.labels == -1``) are ignored by every ``fit``.

Saved files: ``model.json`` (written last, see :func:`aiopt_lib.models.base.write_model_file`) plus
``weights.safetensors`` for the network (``weights.pt`` when ``safetensors`` is not installed,
read back with ``torch.load(weights_only=True)``) and ``estimator.skops`` for the scikit-learn
baselines. Nothing is unpickled: the skops file is loaded only if every type in it is on the
model kind's fixed allow-list (:data:`SKOPS_TYPES`, the scikit-learn and numpy types these
estimators are made of), so a model folder from elsewhere cannot run code. Folders saved by older
versions (``estimator.pkl``, a pickle) are refused with a :class:`~aiopt_lib.core.errors.ConfigError`:
re-train and save them again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from aiopt_lib.core.atomic import atomic_path
from aiopt_lib.core.errors import ConfigError, DataError, plain_name
from aiopt_lib.core.streams import Streams, StreamWriter
from aiopt_lib.features.labels import CLASSES
from aiopt_lib.features.render import RenderSpec
from aiopt_lib.models.base import (
    MODEL_FILE,
    FitReport,
    SampleSet,
    SignalModel,
    register_model,
    write_model_file,
)

__all__ = [
    "CompactChartNet",
    "CompactConfig",
    "GradientBoostingBaseline",
    "LogisticBaseline",
    "MajorityBaseline",
]

if TYPE_CHECKING:  # torch is imported lazily: the baselines do not need it
    import torch

N_CLASSES = len(CLASSES)
Inputs = Literal["both", "image", "features"]
INPUTS: tuple[str, ...] = ("both", "image", "features")

HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_pattern_loss",
    "valid_loss",
    "valid_pattern_loss",
    "valid_accuracy",
    "learning_rate",
    "grad_norm",
    "samples_per_s",
    "seconds",
)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _feature_matrix(samples: SampleSet, names: Sequence[str]) -> np.ndarray:
    """The columns ``names`` of ``samples`` as float32 (the names a model was fitted with, in
    that order, whatever the sample set lists)."""
    missing = [c for c in names if c not in samples.samples.columns]
    if missing:
        raise DataError(f"samples lack the feature column(s) the model was fitted with: {missing}")
    return (
        samples.samples.select(pl.col(list(names)).cast(pl.Float32))
        .to_numpy()
        .astype(np.float32, copy=False)
    )


@dataclasses.dataclass(frozen=True)
class Standardiser:
    """``(x - mean) / std`` per column, statistics fitted on training rows only.

    Constant columns get ``std = 1``; non-finite inputs (NaN, inf) become 0 after scaling, i.e.
    the training mean, so one bad value cannot poison a prediction.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        """Statistics of the finite values of each column of ``x``."""
        values = np.where(np.isfinite(x), x, np.nan).astype(np.float64)
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(values, axis=0), nan=0.0)
            std = np.nan_to_num(np.nanstd(values, axis=0), nan=0.0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """The standardised ``x`` as float32."""
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        return np.where(np.isfinite(z), z, np.float32(0.0)).astype(np.float32, copy=False)


def _labelled(samples: SampleSet, what: str) -> SampleSet:
    """``samples`` without the rows whose label is null; an error when none is left."""
    keep = np.flatnonzero(samples.labels >= 0)
    if len(keep) == 0:
        raise DataError(f"{what}: no labelled samples")
    return samples if len(keep) == len(samples) else samples.take(keep)


def _proba_from_classes(proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Scatter an estimator's probability columns (for the class indices it saw) into the
    (n, 3) BUY/SELL/HOLD layout; classes it never saw get probability 0."""
    out = np.zeros((proba.shape[0], N_CLASSES), dtype=np.float64)
    out[:, np.asarray(classes, dtype=np.int64)] = proba
    return out / out.sum(axis=1, keepdims=True)


def _accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    keep = labels >= 0
    return float((proba[keep].argmax(axis=1) == labels[keep]).mean()) if keep.any() else math.nan


def _read_info(directory: Path, kind: str) -> dict[str, Any]:
    info = json.loads((directory / MODEL_FILE).read_text(encoding="utf-8"))
    if info.get("kind") != kind:
        raise DataError(f"model kind is {info.get('kind')!r}, expected {kind!r}", file=directory)
    if list(info.get("classes", [])) != list(CLASSES):
        raise DataError(
            f"model was saved with classes {info.get('classes')}, this aiopt uses {list(CLASSES)}",
            file=directory,
        )
    return info


ESTIMATOR_FILE = "estimator.skops"
_PICKLE_FILE = "estimator.pkl"  # written by older versions; never loaded

_SKOPS_CONTAINERS = (
    "builtins.dict",
    "builtins.list",
    "builtins.str",  # skops's label of every JSON value (numbers, booleans, null, strings)
    "builtins.tuple",
    "numpy.ndarray",  # read with numpy.load(allow_pickle=False)
)
# Every type a saved baseline's estimator.skops may hold, per model kind: exactly what
# LogisticRegression and HistGradientBoostingClassifier (binary or multiclass, with or without
# early stopping and class weights) are made of. A file naming any other type is not loaded.
SKOPS_TYPES: dict[str, frozenset[str]] = {
    "logistic": frozenset(
        (*_SKOPS_CONTAINERS, "sklearn.linear_model._logistic.LogisticRegression")
    ),
    "gbm": frozenset(
        (
            *_SKOPS_CONTAINERS,
            "numpy.random._generator.Generator",
            "numpy.uint64",
            "sklearn._loss._loss.CyHalfBinomialLoss",
            "sklearn._loss._loss.CyHalfMultinomialLoss",
            "sklearn._loss.link.Interval",
            "sklearn._loss.link.LogitLink",
            "sklearn._loss.link.MultinomialLogit",
            "sklearn._loss.loss.HalfBinomialLoss",
            "sklearn._loss.loss.HalfMultinomialLoss",
            "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            "sklearn.preprocessing._label.LabelEncoder",
        )
    ),
}
_SKOPS_LOADERS = frozenset(
    (
        "DictNode",
        "ListNode",
        "TupleNode",
        "JsonNode",
        "TypeNode",
        "NdArrayNode",
        "ObjectNode",
        "RandomGeneratorNode",
        "LossNode",
    )
)


def _write_skops(path: Path, value: dict[str, Any]) -> None:
    import skops.io

    with atomic_path(path) as tmp:
        skops.io.dump(value, tmp)


def _skops_types(path: Path) -> tuple[set[str], set[str]]:
    """The ``module.Class`` names and the skops loaders named anywhere in the file's schema,
    read as JSON (nothing is imported or built)."""
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a skops file ({exc})", file=path) from None
    types: set[str] = set()
    loaders: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node or "__module__" in node:
                types.add(f"{node.get('__module__')}.{node.get('__class__')}")
            if "__loader__" in node:
                loaders.add(str(node["__loader__"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return types, loaders


def _read_estimator(root: Path, info: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The ``estimator.skops`` of a baseline's folder, loaded only when every type it names is on
    ``SKOPS_TYPES[kind]`` (the allow-list is ours, never the file's). An ``estimator.pkl`` (old
    pickle format) is refused without being opened."""
    name = info.get("estimator_file")
    if name == _PICKLE_FILE or (isinstance(name, str) and name.endswith((".pkl", ".pickle"))):
        raise ConfigError(
            f"{root}: this {kind} model was saved in the old pickle format ({name}), which aiopt "
            "no longer loads because unpickling can run code; re-train it and save it again "
            f"(it then writes {ESTIMATOR_FILE})"
        )
    path = root / plain_name(name, f"{root / MODEL_FILE}: estimator_file")
    if not path.is_file():
        raise DataError("model folder is incomplete", file=path)
    allowed = SKOPS_TYPES[kind]
    types, loaders = _skops_types(path)
    unexpected = sorted(types - allowed) + sorted(f"loader {x}" for x in loaders - _SKOPS_LOADERS)
    if unexpected:
        raise ConfigError(
            f"{path}: not loaded: it names {', '.join(unexpected[:3])}"
            f"{' ...' if len(unexpected) > 3 else ''}, which a saved {kind} model does not "
            "contain (a crafted or foreign file?); re-train and save the model"
        )
    import skops.io

    value = skops.io.load(path, trusted=sorted(allowed))
    if not isinstance(value, dict) or "estimator" not in value:
        raise DataError(f"not a saved {kind} estimator", file=path)
    return value


# ---------------------------------------------------------------------------------------------
# Baselines


class MajorityBaseline:
    """Kind ``"majority"``: every sample gets the class frequencies of the training labels.

    Its accuracy is the share of the most frequent training class in the scored rows: the floor
    any signal model has to beat.
    """

    kind = "majority"

    def __init__(self) -> None:
        self.frequencies: np.ndarray | None = None

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> FitReport:
        """Count the training labels (``valid`` is not used)."""
        start = time.perf_counter()
        labels = _labelled(train, "majority fit").labels
        counts = np.bincount(labels, minlength=N_CLASSES).astype(np.float64)
        self.frequencies = counts / counts.sum()
        valid_loss = None
        history = {"epoch": [1], "valid_loss": [None], "valid_accuracy": [None]}
        if valid is not None and (valid.labels >= 0).any():
            valid = _labelled(valid, "majority valid")
            p = self.predict_proba(valid)
            picked = np.clip(p[np.arange(len(valid)), valid.labels], 1e-12, None)
            valid_loss = float(-np.log(picked).mean())
            history = {
                "epoch": [1],
                "valid_loss": [valid_loss],
                "valid_accuracy": [_accuracy(p, valid.labels)],
            }
        return FitReport(
            history=pl.DataFrame(
                history,
                schema={"epoch": pl.Int64, "valid_loss": pl.Float64, "valid_accuracy": pl.Float64},
            ),
            best_epoch=1,
            best_valid_loss=valid_loss,
            seconds=time.perf_counter() - start,
        )

    def predict_proba(self, samples: SampleSet) -> np.ndarray:
        """The training class frequencies, one row per sample."""
        if self.frequencies is None:
            raise ConfigError("majority baseline is not fitted")
        return np.tile(self.frequencies, (len(samples), 1))

    def save(self, directory: str | Path) -> Path:
        """Write ``model.json`` holding the frequencies."""
        if self.frequencies is None:
            raise ConfigError("majority baseline is not fitted")
        Path(directory).mkdir(parents=True, exist_ok=True)
        return write_model_file(directory, self.kind, frequencies=self.frequencies.tolist())

    @classmethod
    def load(cls, directory: str | Path) -> MajorityBaseline:
        """The baseline saved in ``directory``."""
        info = _read_info(Path(directory), cls.kind)
        model = cls()
        model.frequencies = np.asarray(info["frequencies"], dtype=np.float64)
        return model

    def explain(self, samples: SampleSet) -> list[str] | None:
        """None: the baseline has no reasons."""
        return None


@dataclasses.dataclass(frozen=True)
class LogisticConfig:
    """``C``: inverse L2 strength; ``class_weight``: None or ``"balanced"``; ``max_iter``: lbfgs
    iterations."""

    C: float = 1.0
    class_weight: str | None = None
    max_iter: int = 1000


class LogisticBaseline:
    """Kind ``"logistic"``: multinomial logistic regression (lbfgs) on the features standardised
    with training statistics (:class:`Standardiser`). ``explain`` names the three features that
    pushed hardest towards the predicted class (coefficient × standardised value)."""

    kind = "logistic"

    def __init__(self, config: LogisticConfig | None = None) -> None:
        self.config = config or LogisticConfig()
        self.feature_names: tuple[str, ...] = ()
        self.standardiser: Standardiser | None = None
        self.estimator: Any = None

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> FitReport:
        """Fit on ``train``; ``valid`` only reports its loss and accuracy."""
        from sklearn.linear_model import LogisticRegression

        start = time.perf_counter()
        train = _labelled(train, "logistic fit")
        self.feature_names = tuple(train.feature_names)
        x = _feature_matrix(train, self.feature_names)
        self.standardiser = Standardiser.fit(x)
        self.estimator = LogisticRegression(
            C=self.config.C,
            class_weight=self.config.class_weight,
            max_iter=self.config.max_iter,
        ).fit(self.standardiser.transform(x), train.labels)
        return _single_fit_report(self, valid, start)

    def _require_fitted(self) -> None:
        if self.estimator is None or self.standardiser is None:
            raise ConfigError(f"{self.kind} model is not fitted")

    def predict_proba(self, samples: SampleSet) -> np.ndarray:
        """P(BUY), P(SELL), P(HOLD) per sample."""
        self._require_fitted()
        z = self.standardiser.transform(_feature_matrix(samples, self.feature_names))  # type: ignore[union-attr]
        return _proba_from_classes(self.estimator.predict_proba(z), self.estimator.classes_)

    def explain(self, samples: SampleSet) -> list[str] | None:
        """Per sample: the predicted class and the three largest contributions to its logit,
        e.g. ``"BUY: rsi_14 +0.82, ret_12 +0.40, adx_14 -0.11"``."""
        self._require_fitted()
        z = self.standardiser.transform(_feature_matrix(samples, self.feature_names))  # type: ignore[union-attr]
        proba = self.predict_proba(samples)
        classes = list(self.estimator.classes_)
        coef = self.estimator.coef_
        out = []
        for row, p in zip(z, proba, strict=True):
            predicted = int(p.argmax())
            weights = coef[classes.index(predicted)] if predicted in classes else np.zeros_like(row)
            contributions = weights * row
            top = np.argsort(-np.abs(contributions))[:3]
            reasons = ", ".join(f"{self.feature_names[i]} {contributions[i]:+.2f}" for i in top)
            out.append(f"{CLASSES[predicted]}: {reasons}")
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``estimator.skops`` (the estimator and the standardiser's mean and std), then
        ``model.json``."""
        self._require_fitted()
        root = Path(directory)
        standardiser = self.standardiser
        assert standardiser is not None
        _write_skops(
            root / ESTIMATOR_FILE,
            {"estimator": self.estimator, "mean": standardiser.mean, "std": standardiser.std},
        )
        return write_model_file(
            root,
            self.kind,
            config=dataclasses.asdict(self.config),
            feature_names=list(self.feature_names),
            estimator_file=ESTIMATOR_FILE,
        )

    @classmethod
    def load(cls, directory: str | Path) -> LogisticBaseline:
        """The model saved in ``directory`` (skops with a fixed allow-list: no code runs; an old
        pickled ``estimator.pkl`` is refused)."""
        from sklearn.linear_model import LogisticRegression

        root = Path(directory)
        info = _read_info(root, cls.kind)
        model = cls(LogisticConfig(**info["config"]))
        model.feature_names = tuple(info["feature_names"])
        saved = _read_estimator(root, info, cls.kind)
        mean, std = saved.get("mean"), saved.get("std")
        if not (
            isinstance(saved["estimator"], LogisticRegression)
            and isinstance(mean, np.ndarray)
            and isinstance(std, np.ndarray)
        ):
            raise DataError("not a saved logistic estimator", file=root / ESTIMATOR_FILE)
        model.estimator = saved["estimator"]
        model.standardiser = Standardiser(mean=mean, std=std)
        return model


@dataclasses.dataclass(frozen=True)
class GradientBoostingConfig:
    """Parameters of ``HistGradientBoostingClassifier``: ``max_iter`` boosting rounds at most,
    stopped after ``n_iter_no_change`` rounds without improving the validation log-loss."""

    learning_rate: float = 0.05
    max_iter: int = 300
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 40
    l2_regularization: float = 1.0
    n_iter_no_change: int = 20
    class_weight: str | None = None
    seed: int = 0


class GradientBoostingBaseline:
    """Kind ``"gbm"``: scikit-learn's histogram gradient boosting on the raw features (trees do
    not need standardising). Early stopping scores the ``valid`` set passed to :meth:`fit`
    (``X_val``/``y_val``, scikit-learn >= 1.6), never a random slice of the training rows, which
    would leak across time; without a labelled ``valid`` it runs ``max_iter`` rounds."""

    kind = "gbm"

    def __init__(self, config: GradientBoostingConfig | None = None) -> None:
        self.config = config or GradientBoostingConfig()
        self.feature_names: tuple[str, ...] = ()
        self.estimator: Any = None

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> FitReport:
        """Fit on ``train``, early-stopped on ``valid``."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        start = time.perf_counter()
        train = _labelled(train, "gbm fit")
        self.feature_names = tuple(train.feature_names)
        x = _feature_matrix(train, self.feature_names)
        use_valid = valid is not None and bool((valid.labels >= 0).any())
        c = self.config
        self.estimator = HistGradientBoostingClassifier(
            learning_rate=c.learning_rate,
            max_iter=c.max_iter,
            max_leaf_nodes=c.max_leaf_nodes,
            min_samples_leaf=c.min_samples_leaf,
            l2_regularization=c.l2_regularization,
            early_stopping=use_valid,
            n_iter_no_change=c.n_iter_no_change,
            class_weight=c.class_weight,
            random_state=c.seed,
        )
        if use_valid:
            v = _labelled(valid, "gbm valid")  # type: ignore[arg-type]
            self.estimator.fit(
                x, train.labels, X_val=_feature_matrix(v, self.feature_names), y_val=v.labels
            )
        else:
            self.estimator.fit(x, train.labels)
        return _single_fit_report(self, valid, start)

    def predict_proba(self, samples: SampleSet) -> np.ndarray:
        """P(BUY), P(SELL), P(HOLD) per sample."""
        if self.estimator is None:
            raise ConfigError("gbm model is not fitted")
        x = _feature_matrix(samples, self.feature_names)
        return _proba_from_classes(self.estimator.predict_proba(x), self.estimator.classes_)

    def explain(self, samples: SampleSet) -> list[str] | None:
        """None: per-sample tree attributions are not cheap."""
        return None

    def save(self, directory: str | Path) -> Path:
        """Write ``estimator.skops``, then ``model.json``."""
        if self.estimator is None:
            raise ConfigError("gbm model is not fitted")
        root = Path(directory)
        _write_skops(root / ESTIMATOR_FILE, {"estimator": self.estimator})
        return write_model_file(
            root,
            self.kind,
            config=dataclasses.asdict(self.config),
            feature_names=list(self.feature_names),
            estimator_file=ESTIMATOR_FILE,
            n_iter=int(self.estimator.n_iter_),
        )

    @classmethod
    def load(cls, directory: str | Path) -> GradientBoostingBaseline:
        """The model saved in ``directory`` (skops with a fixed allow-list: no code runs; an old
        pickled ``estimator.pkl`` is refused)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        root = Path(directory)
        info = _read_info(root, cls.kind)
        model = cls(GradientBoostingConfig(**info["config"]))
        model.feature_names = tuple(info["feature_names"])
        estimator = _read_estimator(root, info, cls.kind)["estimator"]
        if not isinstance(estimator, HistGradientBoostingClassifier):
            raise DataError("not a saved gbm estimator", file=root / ESTIMATOR_FILE)
        model.estimator = estimator
        return model


def _single_fit_report(model: SignalModel, valid: SampleSet | None, start: float) -> FitReport:
    """A one-row history (epoch 1) with the validation log-loss and accuracy when known."""
    loss = accuracy = None
    if valid is not None and (valid.labels >= 0).any():
        valid = _labelled(valid, f"{model.kind} valid")
        p = model.predict_proba(valid)
        loss = float(-np.log(np.clip(p[np.arange(len(valid)), valid.labels], 1e-12, None)).mean())
        accuracy = _accuracy(p, valid.labels)
    seconds = time.perf_counter() - start
    history = pl.DataFrame(
        {"epoch": [1], "valid_loss": [loss], "valid_accuracy": [accuracy], "seconds": [seconds]},
        schema={
            "epoch": pl.Int64,
            "valid_loss": pl.Float64,
            "valid_accuracy": pl.Float64,
            "seconds": pl.Float64,
        },
    )
    return FitReport(history=history, best_epoch=1, best_valid_loss=loss, seconds=seconds)


# ---------------------------------------------------------------------------------------------
# The compact chart + indicator network


def _default_spec() -> RenderSpec:
    # 2 px per bar for the dataset's default 64-bar window (plot width 128 + 2 × 2 margin).
    return RenderSpec(width=132, height=64)


def spec_to_dict(spec: RenderSpec) -> dict[str, Any]:
    """A JSON-ready form of a :class:`RenderSpec` (inverse: :func:`spec_from_dict`)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[field.name] = value
    return json.loads(json.dumps(out, default=lambda v: v.tolist() if hasattr(v, "tolist") else v))


def spec_from_dict(values: Mapping[str, Any]) -> RenderSpec:
    """The :class:`RenderSpec` that :func:`spec_to_dict` wrote."""

    def tupled(v: Any) -> Any:
        return tuple(tupled(x) for x in v) if isinstance(v, list) else v

    return RenderSpec(**{k: tupled(v) for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class CompactConfig:
    """How :class:`CompactChartNet` is built and trained.

    * ``inputs``: ``"both"`` (chart CNN + feature MLP, fused), ``"image"`` or ``"features"``
      (ablations).
    * ``spec``: the chart images the model expects; default 132×64 candles with volume: 2 px
      per bar for the default 64-bar window (windows up to 128 bars fit), small enough to train
      on two cores. For short windows a smaller spec is cheaper, e.g.
      ``RenderSpec(width=64, height=64)`` (up to 30 bars at 2 px) or the paper's
      ``RenderSpec.jkx(20)`` (60×64). Load the sample sets with
      ``load_sample_set(dataset, spec=model.spec)``.
    * ``channels``: the three convolution widths; ``hidden``: the MLP and fusion width;
      ``dropout``: before each head.
    * ``pattern_weight``: weight of the auxiliary pattern loss (BCE over the ``pat_*`` flags,
      predicted from the chart embedding only, so the head must *see* the pattern; in
      ``"features"`` mode, which has no chart, from the fused embedding); 0 turns it off.
    * ``pattern_pos_weight_cap``: patterns are rare (a hammer on ~1.5 % of bars), so each
      pattern's positive BCE term is weighted by ``negatives / positives`` on the training rows,
      capped here (1 turns the balancing off); without it the head learns to say "no pattern".
    * ``class_weighting``: ``"balanced"`` weighs each class's cross-entropy by
      ``n / (3 · count)`` on the training labels (HOLD is rare under triple-barrier labels; an
      unweighted loss learns to never say it); ``"none"``: plain cross-entropy.
    * ``stop_on``: the validation loss early stopping watches: ``"signal"`` (the class-weighted
      cross-entropy; ``best_valid_loss`` is that loss) or ``"total"`` (plus ``pattern_weight`` ×
      the pattern loss: for a network trained to read patterns).
    * ``epochs``: at most; ``patience``: epochs without a lower validation loss before stopping;
      the weights of the epoch with the lowest validation loss are kept.
    * ``batch_size``, ``learning_rate``, ``weight_decay`` (AdamW, constant rate),
      ``max_grad_norm`` (gradient clipping; the pre-clip norm is logged).
    * ``seed``: torch and numpy seeds (initialisation, dropout, shuffling); with
      deterministic algorithms on, two fits on one machine give identical weights.
    * ``threads``: torch CPU threads (default: the cores this process may use).
    * ``device``: ``"cpu"`` (default), ``"cuda"`` or ``"auto"``.
    """

    inputs: Inputs = "both"
    spec: RenderSpec = dataclasses.field(default_factory=_default_spec)
    channels: tuple[int, int, int] = (16, 32, 64)
    hidden: int = 64
    dropout: float = 0.2
    pattern_weight: float = 0.3
    pattern_pos_weight_cap: float = 20.0
    stop_on: Literal["signal", "total"] = "signal"
    class_weighting: Literal["balanced", "none"] = "balanced"
    epochs: int = 20
    patience: int = 4
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    max_grad_norm: float = 5.0
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ConfigError(f"inputs must be one of {INPUTS}, got {self.inputs!r}")
        if self.class_weighting not in ("balanced", "none"):
            raise ConfigError(
                f"class_weighting must be 'balanced' or 'none', got {self.class_weighting!r}"
            )
        if not isinstance(self.spec, RenderSpec):
            raise ConfigError(f"spec must be a RenderSpec, got {type(self.spec).__name__}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ConfigError(f"channels must be three positive ints, got {self.channels}")
        for name in ("hidden", "epochs", "patience", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if self.stop_on not in ("signal", "total"):
            raise ConfigError(f"stop_on must be 'signal' or 'total', got {self.stop_on!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pattern_weight < 0 or self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError("pattern_weight, weight_decay must be >= 0 and learning_rate > 0")

    @property
    def uses_image(self) -> bool:
        """True when the chart CNN is part of the model."""
        return self.inputs in ("both", "image")

    @property
    def uses_features(self) -> bool:
        """True when the feature MLP is part of the model."""
        return self.inputs in ("both", "features")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``model.json`` stores)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = spec_to_dict(self.spec)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CompactConfig:
        """The inverse of :meth:`to_dict`."""
        values = dict(values)
        values["spec"] = spec_from_dict(values["spec"])
        values["channels"] = tuple(values["channels"])
        return cls(**values)


EDGE_COLUMNS = 2  # feature-map columns the pattern head sees: ~the last 4 bars of a 64-bar chart


def _build_network(
    config: CompactConfig, n_features: int, n_patterns: int, image_shape: tuple[int, int]
) -> torch.nn.Module:
    """The network: chart CNN and/or feature MLP, fused, with a signal head and a pattern head.

    CNN: three blocks ``conv3×3 → BatchNorm → ReLU → max-pool 2`` (the first convolution has
    stride 2, so a 132×64 chart costs little), then average-pooled to a 4×4 grid (keeps where on
    the chart things happen: the last candles are on the right) and projected to ``hidden``.
    The pattern head reads only the right-most :data:`EDGE_COLUMNS` columns of the feature map
    (the last few bars), pooled to 8×2, so it must find the pattern where the rules look.
    The feature standardisation statistics are buffers, so they travel with the weights.
    """
    import torch
    from torch import nn

    c1, c2, c3 = config.channels
    hidden = config.hidden

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("feature_mean", torch.zeros(n_features))
            self.register_buffer("feature_std", torch.ones(n_features))
            width = 0
            if config.uses_image:
                self.cnn = nn.Sequential(
                    nn.Conv2d(3, c1, 3, stride=2, padding=1),
                    nn.BatchNorm2d(c1),
                    nn.ReLU(),
                    nn.Conv2d(c1, c2, 3, padding=1),
                    nn.BatchNorm2d(c2),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                    nn.Conv2d(c2, c3, 3, padding=1),
                    nn.BatchNorm2d(c3),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
                self.chart_summary = nn.Sequential(
                    nn.AdaptiveAvgPool2d((4, 4)),
                    nn.Flatten(),
                    nn.Linear(c3 * 16, hidden),
                    nn.ReLU(),
                )
                # Candlestick patterns are about the last 1-3 bars, which sit at the right
                # edge of the chart: the pattern head reads the right-most columns of the
                # feature map at full vertical resolution, not the whole-chart summary.
                self.edge = nn.Sequential(
                    nn.AdaptiveAvgPool2d((8, 2)),
                    nn.Flatten(),
                    nn.Linear(c3 * 16, hidden),
                    nn.ReLU(),
                )
                width += hidden
            if config.uses_features:
                self.mlp = nn.Sequential(
                    nn.Linear(n_features, hidden),
                    nn.ReLU(),
                    nn.Dropout(config.dropout),
                    nn.Linear(hidden, hidden),
                    nn.ReLU(),
                )
                width += hidden
            self.fuse = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)
            )
            self.signal_head = nn.Linear(hidden, N_CLASSES)
            self.pattern_head = nn.Linear(hidden, max(n_patterns, 1))

        def forward(
            self, images: torch.Tensor | None, features: torch.Tensor | None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            parts = []
            seen = None
            if config.uses_image:
                assert images is not None
                feature_map = self.cnn(images.permute(0, 3, 1, 2).float() / 255.0)
                right_edge = feature_map[:, :, :, -EDGE_COLUMNS:]
                seen = self.edge(right_edge)
                parts.append(self.chart_summary(feature_map))
            if config.uses_features:
                assert features is not None
                z = (features - self.feature_mean) / self.feature_std
                parts.append(self.mlp(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)))
            fused = self.fuse(torch.cat(parts, dim=1))
            pattern_input = seen if seen is not None else fused
            return self.signal_head(fused), self.pattern_head(pattern_input)

    return Net()


class _TorchSettings:
    """Seeds, threads and deterministic algorithms for the duration of a ``with`` block; the
    process-wide torch settings are put back afterwards."""

    def __init__(self, threads: int | None, seed: int | None = None) -> None:
        self.threads = threads or max(1, len(os.sched_getaffinity(0)))
        self.seed = seed

    def __enter__(self) -> _TorchSettings:
        import torch

        self._threads = torch.get_num_threads()
        self._deterministic = torch.are_deterministic_algorithms_enabled()
        self._warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(self.threads)
        # warn_only: a CUDA op without a deterministic kernel warns instead of failing the fit.
        torch.use_deterministic_algorithms(True, warn_only=True)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc_info: object) -> None:
        import torch

        torch.set_num_threads(self._threads)
        torch.use_deterministic_algorithms(self._deterministic, warn_only=self._warn_only)


class CompactChartNet:
    """Kind ``"compact"``: chart CNN + indicator MLP with an auxiliary candlestick-pattern head.

    ``config``: :class:`CompactConfig` (architecture, ablation mode, training). Not saved with
    the model (they only affect how ``fit`` reports): ``metrics_stream``, a
    :class:`~aiopt_lib.core.streams.Streams` or a ``training_metrics``
    :class:`~aiopt_lib.core.streams.StreamWriter` receiving one ``split="train"`` and one
    ``split="val"`` row per epoch; ``run_id`` for those rows (default: the ``Streams``' run id,
    else ``"compact"``); ``progress``: a tqdm bar over the epochs.

    Usage::

        model = CompactChartNet()
        data = load_sample_set(dataset, spec=model.spec)
        split = purged_split(data.samples)
        report = model.fit(data.take(split.train), data.take(split.validation))
        proba = model.predict_proba(data.take(split.test))
    """

    kind = "compact"

    def __init__(
        self,
        config: CompactConfig | None = None,
        *,
        metrics_stream: Streams | StreamWriter | None = None,
        run_id: str | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config or CompactConfig()
        self.metrics_stream = metrics_stream
        self.run_id = run_id
        self.progress = progress
        self.feature_names: tuple[str, ...] = ()
        self.pattern_names: tuple[str, ...] = ()
        self.class_weights: np.ndarray | None = None
        self.pattern_pos_weight: np.ndarray | None = None
        self.best_epoch: int | None = None
        self.network: torch.nn.Module | None = None

    @property
    def spec(self) -> RenderSpec:
        """The render spec of the chart images this model expects."""
        return self.config.spec

    # -- tensors -------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        import torch

        wanted = self.config.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(wanted)

    def _check_images(self, samples: SampleSet) -> np.ndarray | None:
        if not self.config.uses_image:
            return None
        if samples.images is None:
            raise DataError(
                f"the compact model (inputs={self.config.inputs!r}) needs chart images: "
                "load_sample_set(dataset, spec=model.spec)"
            )
        expected = (self.spec.height, self.spec.width, 3)
        if samples.images.shape[1:] != expected:
            raise DataError(
                f"images are {samples.images.shape[1:]} (H, W, C), the model expects {expected} "
                "(load them with spec=model.spec)"
            )
        return samples.images

    def _tensors(self, samples: SampleSet) -> dict[str, Any]:
        """The inputs of ``samples`` as CPU tensors (images stay uint8 until batched)."""
        import torch

        out: dict[str, Any] = {"images": None, "features": None}
        images = self._check_images(samples)
        if images is not None:
            # torch wants writable memory; polars and memory-mapped arrays may be read-only.
            if not (images.flags.writeable and images.flags.c_contiguous):
                images = np.array(images, order="C")
            out["images"] = torch.from_numpy(images)
        if self.config.uses_features:
            out["features"] = torch.tensor(_feature_matrix(samples, self.feature_names))
        return out

    def _batches(
        self, tensors: Mapping[str, Any], order: np.ndarray
    ) -> Iterator[tuple[np.ndarray, Any, Any]]:
        import torch

        device = self._device()
        size = self.config.batch_size
        for begin in range(0, len(order), size):
            idx = order[begin : begin + size]
            index = torch.from_numpy(idx)
            images = tensors["images"]
            features = tensors["features"]
            yield (
                idx,
                None if images is None else images[index].to(device),
                None if features is None else features[index].to(device),
            )

    # -- training ------------------------------------------------------------------------------

    def _losses(self, samples: SampleSet) -> tuple[float, float, float, np.ndarray]:
        """(class-weighted CE, pattern BCE, accuracy, probabilities) of ``samples`` in eval mode,
        summed in float64 over fixed batches so the figure is reproducible."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        assert self.network is not None and self.class_weights is not None
        labels = samples.labels
        keep = labels >= 0
        tensors = self._tensors(samples)
        patterns = self._pattern_targets(samples)
        weights = torch.from_numpy(self.class_weights.astype(np.float32))
        self.network.eval()
        ce_sum = weight_sum = bce_sum = 0.0
        proba = np.empty((len(samples), N_CLASSES), dtype=np.float64)
        with torch.no_grad():
            for idx, images, features in self._batches(tensors, np.arange(len(samples))):
                logits, pattern_logits = self.network(images, features)
                logits = logits.cpu()
                proba[idx] = torch.softmax(logits.double(), dim=1).numpy()
                y = torch.from_numpy(labels[idx])
                mask = torch.from_numpy(keep[idx])
                if mask.any():
                    per = F.cross_entropy(logits[mask], y[mask], reduction="none")
                    w = weights[y[mask]]
                    ce_sum += float((per.double() * w.double()).sum())
                    weight_sum += float(w.double().sum())
                if patterns is not None:
                    bce = F.binary_cross_entropy_with_logits(
                        pattern_logits.cpu(),
                        torch.from_numpy(patterns[idx]),
                        reduction="sum",
                        pos_weight=None
                        if self.pattern_pos_weight is None
                        else torch.from_numpy(self.pattern_pos_weight),
                    )
                    bce_sum += float(bce)
        ce = ce_sum / weight_sum if weight_sum else math.nan
        bce_mean = bce_sum / patterns.size if patterns is not None and patterns.size else 0.0
        return ce, bce_mean, _accuracy(proba, labels), proba

    def _pattern_targets(self, samples: SampleSet) -> np.ndarray | None:
        if not self.pattern_names:
            return None
        return (
            samples.samples.select(pl.col(list(self.pattern_names)).cast(pl.Float32))
            .to_numpy()
            .astype(np.float32, copy=False)
        )

    def _writer(self) -> tuple[StreamWriter | None, str]:
        stream = self.metrics_stream
        if stream is None:
            return None, self.run_id or "compact"
        if isinstance(stream, Streams):
            return stream.training_metrics, self.run_id or stream.run_id
        return stream, self.run_id or "compact"

    def fit(self, train: SampleSet, valid: SampleSet) -> FitReport:
        """Train on ``train`` with early stopping on the class-weighted cross-entropy of
        ``valid``; the best epoch's weights are kept. Returns the per-epoch history
        (:data:`HISTORY_COLUMNS`; losses are the signal head's class-weighted cross-entropy, the
        pattern losses its auxiliary BCE; ``train_loss`` is the mean over the epoch's batches in
        training mode)."""
        import torch
        import torch.nn.functional as F  # noqa: N812
        from tqdm.auto import tqdm

        start = time.perf_counter()
        config = self.config
        train = _labelled(train, "compact fit")
        valid = _labelled(valid, "compact valid")
        self.feature_names = tuple(train.feature_names)
        self.pattern_names = tuple(train.pattern_names) if config.pattern_weight > 0 else ()
        labels = train.labels
        counts = np.bincount(labels, minlength=N_CLASSES).astype(np.float64)
        if config.class_weighting == "balanced":
            # A class absent from training gets weight 1: it never occurs in the loss anyway.
            self.class_weights = np.where(
                counts > 0, len(labels) / (N_CLASSES * np.maximum(counts, 1)), 1.0
            )
        else:
            self.class_weights = np.ones(N_CLASSES)
        flags = self._pattern_targets(train)
        if flags is not None and flags.size:
            positives = flags.sum(axis=0)
            ratio = (len(flags) - positives) / np.maximum(positives, 1.0)
            self.pattern_pos_weight = np.clip(ratio, 1.0, config.pattern_pos_weight_cap).astype(
                np.float32
            )
        writer, run_id = self._writer()
        rng = np.random.default_rng(config.seed)
        device = self._device()
        rows: list[dict[str, Any]] = []
        with _TorchSettings(config.threads, config.seed):
            tensors = self._tensors(train)
            self.network = _build_network(
                config,
                len(self.feature_names),
                len(self.pattern_names),
                (config.spec.height, config.spec.width),
            )
            if config.uses_features:
                stats = Standardiser.fit(tensors["features"].numpy())
                self.network.feature_mean.copy_(torch.from_numpy(stats.mean))
                self.network.feature_std.copy_(torch.from_numpy(stats.std))
            self.network.to(device)
            y_all = torch.tensor(labels, dtype=torch.int64)
            patterns = self._pattern_targets(train)
            pattern_all = None if patterns is None else torch.tensor(patterns)
            class_weights = torch.from_numpy(self.class_weights.astype(np.float32)).to(device)
            pos_weight = (
                None
                if self.pattern_pos_weight is None
                else torch.from_numpy(self.pattern_pos_weight).to(device)
            )
            optimiser = torch.optim.AdamW(
                self.network.parameters(),
                lr=config.learning_rate,
                weight_decay=config.weight_decay,
            )
            best_loss = math.inf
            best_state: dict[str, torch.Tensor] | None = None
            self.best_epoch = None
            step = 0
            bar = tqdm(
                range(1, config.epochs + 1),
                desc="compact",
                unit="epoch",
                disable=not self.progress,
                leave=False,
            )
            for epoch in bar:
                epoch_start = time.perf_counter()
                self.network.train()
                loss_sum = pattern_sum = norm_sum = 0.0
                n_batches = 0
                order = rng.permutation(len(train))
                for idx, images, features in self._batches(tensors, order):
                    index = torch.from_numpy(idx)
                    y = y_all[index].to(device)
                    logits, pattern_logits = self.network(images, features)
                    loss = F.cross_entropy(logits, y, weight=class_weights)
                    total = loss
                    pattern_loss = torch.zeros(())
                    if pattern_all is not None:
                        pattern_loss = F.binary_cross_entropy_with_logits(
                            pattern_logits, pattern_all[index].to(device), pos_weight=pos_weight
                        )
                        total = loss + config.pattern_weight * pattern_loss
                    optimiser.zero_grad(set_to_none=True)
                    total.backward()
                    norm = torch.nn.utils.clip_grad_norm_(
                        self.network.parameters(), config.max_grad_norm
                    )
                    optimiser.step()
                    step += 1
                    n_batches += 1
                    loss_sum += float(loss.detach())
                    pattern_sum += float(pattern_loss.detach())
                    norm_sum += float(norm)
                train_seconds = time.perf_counter() - epoch_start
                valid_loss, valid_pattern, valid_accuracy, _ = self._losses(valid)
                row = {
                    "epoch": epoch,
                    "train_loss": loss_sum / n_batches,
                    "train_pattern_loss": pattern_sum / n_batches,
                    "valid_loss": valid_loss,
                    "valid_pattern_loss": valid_pattern,
                    "valid_accuracy": valid_accuracy,
                    "learning_rate": float(optimiser.param_groups[0]["lr"]),
                    "grad_norm": norm_sum / n_batches,
                    "samples_per_s": len(train) / train_seconds if train_seconds > 0 else None,
                    "seconds": time.perf_counter() - epoch_start,
                }
                rows.append(row)
                if writer is not None:
                    writer.append(
                        [
                            {
                                "run_id": run_id,
                                "step": step,
                                "epoch": epoch,
                                "split": "train",
                                "loss": row["train_loss"],
                                "learning_rate": row["learning_rate"],
                                "grad_norm": row["grad_norm"],
                                "samples_per_s": row["samples_per_s"],
                                "val_accuracy": None,
                                "gpu_memory_mb": _gpu_memory_mb(device),
                            },
                            {
                                "run_id": run_id,
                                "step": step,
                                "epoch": epoch,
                                "split": "val",
                                "loss": valid_loss,
                                "learning_rate": None,
                                "grad_norm": None,
                                "samples_per_s": None,
                                "val_accuracy": valid_accuracy,
                                "gpu_memory_mb": _gpu_memory_mb(device),
                            },
                        ]
                    )
                bar.set_postfix(train=f"{row['train_loss']:.4f}", valid=f"{valid_loss:.4f}")
                # "total" also counts the pattern head's loss, for pattern-reading networks
                monitored = (
                    valid_loss + config.pattern_weight * valid_pattern
                    if config.stop_on == "total"
                    else valid_loss
                )
                if monitored < best_loss:
                    best_loss = monitored
                    self.best_epoch = epoch
                    best_state = copy.deepcopy(self.network.state_dict())
                elif epoch - (self.best_epoch or 0) >= config.patience:
                    break
            bar.close()
            if best_state is not None:
                self.network.load_state_dict(best_state)
            self.network.eval()
        if writer is not None:
            writer.flush()
        history = pl.DataFrame(
            rows,
            schema={
                "epoch": pl.Int64,
                **{c: pl.Float64 for c in HISTORY_COLUMNS if c != "epoch"},
            },
        )
        return FitReport(
            history=history,
            best_epoch=self.best_epoch,
            best_valid_loss=best_loss if math.isfinite(best_loss) else None,
            seconds=time.perf_counter() - start,
        )

    # -- prediction ----------------------------------------------------------------------------

    def _require_fitted(self) -> torch.nn.Module:
        if self.network is None:
            raise ConfigError("compact model is not fitted")
        return self.network

    def _forward_all(self, samples: SampleSet) -> tuple[np.ndarray, np.ndarray]:
        import torch

        network = self._require_fitted()
        network.eval()
        tensors = self._tensors(samples)
        n_patterns = max(len(self.pattern_names), 1)
        proba = np.empty((len(samples), N_CLASSES), dtype=np.float64)
        pattern = np.empty((len(samples), n_patterns), dtype=np.float64)
        with _TorchSettings(self.config.threads), torch.no_grad():
            for idx, images, features in self._batches(tensors, np.arange(len(samples))):
                logits, pattern_logits = network(images, features)
                proba[idx] = torch.softmax(logits.double().cpu(), dim=1).numpy()
                pattern[idx] = torch.sigmoid(pattern_logits.double().cpu()).numpy()
        return proba, pattern[:, : len(self.pattern_names)]

    def predict_proba(self, samples: SampleSet) -> np.ndarray:
        """P(BUY), P(SELL), P(HOLD) per sample (float64, rows sum to 1)."""
        return self._forward_all(samples)[0]

    def predict_pattern_proba(self, samples: SampleSet) -> np.ndarray:
        """The auxiliary head's probability of each pattern flag (``pattern_names`` order),
        ``(n, n_patterns)`` in [0, 1]; ``n_patterns`` is 0 when the head was off."""
        return self._forward_all(samples)[1]

    def evaluate(self, samples: SampleSet) -> dict[str, float]:
        """``loss`` (class-weighted cross-entropy, as early stopping scored it), ``pattern_loss``
        and ``accuracy`` of the labelled ``samples``."""
        self._require_fitted()
        with _TorchSettings(self.config.threads):
            loss, pattern_loss, accuracy, _ = self._losses(_labelled(samples, "compact evaluate"))
        return {"loss": loss, "pattern_loss": pattern_loss, "accuracy": accuracy}

    def explain(self, samples: SampleSet) -> list[str] | None:
        """None: the network gives no reasons (its pattern head is what it sees:
        :meth:`predict_pattern_proba`)."""
        return None

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the weights (safetensors when installed, else ``torch.save``), then
        ``model.json`` with the config, render spec, feature and pattern names."""
        import torch

        network = self._require_fitted()
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        try:
            from safetensors.torch import save_file
        except ImportError:  # pragma: no cover - safetensors ships with transformers
            weights_file, weights_format = "weights.pt", "torch"
            with atomic_path(root / weights_file) as tmp:
                torch.save(state, tmp)
        else:
            weights_file, weights_format = "weights.safetensors", "safetensors"
            with atomic_path(root / weights_file) as tmp:
                save_file(state, str(tmp))
        return write_model_file(
            root,
            self.kind,
            config=self.config.to_dict(),
            feature_names=list(self.feature_names),
            pattern_names=list(self.pattern_names),
            class_weights=None if self.class_weights is None else self.class_weights.tolist(),
            best_epoch=self.best_epoch,
            weights_file=weights_file,
            weights_format=weights_format,
        )

    @classmethod
    def load(cls, directory: str | Path, **options: Any) -> CompactChartNet:
        """The model saved in ``directory``; ``options`` as for the constructor
        (``metrics_stream``, ``run_id``, ``progress``)."""
        import torch

        root = Path(directory)
        info = _read_info(root, cls.kind)
        model = cls(CompactConfig.from_dict(info["config"]), **options)
        model.feature_names = tuple(info["feature_names"])
        model.pattern_names = tuple(info["pattern_names"])
        weights = info.get("class_weights")
        model.class_weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        model.best_epoch = info.get("best_epoch")
        path = root / plain_name(info.get("weights_file"), f"{root / MODEL_FILE}: weights_file")
        if not path.is_file():
            raise DataError("model folder is incomplete (no weights file)", file=path)
        if info.get("weights_format") == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif info.get("weights_format") == "torch":
            import pickle  # only for its error class: nothing here is unpickled unrestricted

            try:  # tensors and plain data only: a crafted weights.pt cannot run code
                state = torch.load(path, weights_only=True, map_location="cpu")
            except pickle.UnpicklingError:
                raise DataError(
                    "not loaded: the weights file holds objects other than tensors and plain "
                    "data (a crafted or foreign file?)",
                    file=path,
                ) from None
        else:
            raise DataError(
                f"unknown weights_format {info.get('weights_format')!r}", file=root / MODEL_FILE
            )
        config = model.config
        network = _build_network(
            config,
            len(model.feature_names),
            len(model.pattern_names),
            (config.spec.height, config.spec.width),
        )
        network.load_state_dict(state)
        model.network = network.to(model._device()).eval()
        return model


def _gpu_memory_mb(device: torch.device) -> float | None:
    """Peak CUDA memory in MiB when training on a GPU, else None (the stream's null)."""
    if device.type != "cuda":
        return None
    import torch

    return float(torch.cuda.max_memory_allocated(device)) / 2**20


register_model(MajorityBaseline.kind, MajorityBaseline.load)
register_model(LogisticBaseline.kind, LogisticBaseline.load)
register_model(GradientBoostingBaseline.kind, GradientBoostingBaseline.load)
register_model(CompactChartNet.kind, CompactChartNet.load)
