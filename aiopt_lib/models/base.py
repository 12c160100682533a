"""One interface for every signal model, and the sample sets they consume.

Every model — a 1.3B vision-language model, the compact chart+indicator network, a logistic
baseline — follows :class:`SignalModel`:

    model.fit(train, valid) -> FitReport
    model.predict_proba(samples) -> np.ndarray   # (n, 3): P(BUY), P(SELL), P(HOLD), rows sum to 1
    model.save(directory) -> Path
    load_model(directory) -> SignalModel           # dispatches on the saved "kind"
    model.explain(samples) -> list[str] | None     # reasons, where a model can give them

Class order is :data:`aiopt_lib.features.labels.CLASSES` everywhere: index 0 = BUY, 1 = SELL, 2 = HOLD.

A :class:`SampleSet` is rows of a dataset (:func:`aiopt_lib.features.dataset.read_samples`) with their
features, labels and, for models that look at charts, the chart images rendered from exactly the
``window`` bars ending at each sample (:func:`load_sample_set`). Nothing in a sample set comes
from after the sample's bar except the label.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from aiopt_lib.core.atomic import write_text_atomic
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.features.dataset import read_dataset_bars, read_manifest, read_samples
from aiopt_lib.features.labels import CLASSES
from aiopt_lib.features.render import RenderSpec, render_windows, with_overlays

__all__ = ["FitReport", "SampleSet", "SignalModel", "load_sample_set", "register_model"]

MODEL_FILE = "model.json"
TRUST_REMOTE_CODE_ENV = "AIOPT_TRUST_REMOTE_CODE"


@dataclasses.dataclass(frozen=True)
class SampleSet:
    """Samples a model trains on or predicts for.

    ``samples``: dataset rows (``sample_id``, ``ts``, features, ``label``...). ``images``: an
    ``(n, H, W, 3)`` uint8 array aligned with the rows, or None. ``feature_names``: the feature
    columns models may use. ``pattern_names``: the ``pat_*`` columns (auxiliary targets for visual
    pattern recognition).
    """

    samples: pl.DataFrame
    feature_names: tuple[str, ...]
    images: np.ndarray | None = None
    pattern_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images is not None and len(self.images) != self.samples.height:
            raise ValueError(
                f"{len(self.images)} images for {self.samples.height} samples; they must align"
            )
        missing = [c for c in self.feature_names if c not in self.samples.columns]
        if missing:
            raise DataError(f"samples lack feature column(s) {missing}")

    def __len__(self) -> int:
        return self.samples.height

    @property
    def labels(self) -> np.ndarray:
        """Class indices (0 BUY, 1 SELL, 2 HOLD) of the ``label`` column; -1 where null."""
        series = self.samples.get_column("label").cast(pl.String)
        codes = series.replace_strict(list(CLASSES), [0, 1, 2], default=-1, return_dtype=pl.Int64)
        return codes.fill_null(-1).to_numpy()

    def features(self) -> np.ndarray:
        """The feature matrix ``(n, len(feature_names))`` as float32; Booleans become 0/1."""
        return (
            self.samples.select(pl.col(list(self.feature_names)).cast(pl.Float32))
            .to_numpy()
            .astype(np.float32, copy=False)
        )

    def patterns(self) -> np.ndarray:
        """The rule-based pattern flags ``(n, len(pattern_names))`` as 0/1 float32."""
        return self.samples.select(pl.col(list(self.pattern_names)).cast(pl.Float32)).to_numpy()

    def take(self, index: Sequence[int] | np.ndarray) -> SampleSet:
        """The rows at ``index`` (images too)."""
        idx = np.asarray(index, dtype=np.int64)
        return dataclasses.replace(
            self,
            samples=self.samples[idx],
            images=None if self.images is None else self.images[idx],
        )


@dataclasses.dataclass(frozen=True)
class FitReport:
    """What ``fit`` did: per-epoch (or per-step) history, the best validation score, seconds."""

    history: pl.DataFrame
    best_epoch: int | None
    best_valid_loss: float | None
    seconds: float


@runtime_checkable
class SignalModel(Protocol):
    """The interface every signal model implements (see the module docstring)."""

    kind: str

    def fit(self, train: SampleSet, valid: SampleSet) -> FitReport: ...

    def predict_proba(self, samples: SampleSet) -> np.ndarray: ...

    def save(self, directory: str | Path) -> Path: ...

    def explain(self, samples: SampleSet) -> list[str] | None: ...


_LOADERS: dict[str, Callable[..., SignalModel]] = {}
_REMOTE_CODE_KINDS: set[str] = set()


def register_model(
    kind: str, loader: Callable[..., SignalModel], *, remote_code: bool = False
) -> None:
    """Make :func:`load_model` able to load models saved with ``kind``: ``loader(directory)``,
    or with ``remote_code=True`` ``loader(directory, trust_remote_code=...)`` for kinds that can
    run a model repository's own code (the caller's opt-in is passed on)."""
    _LOADERS[kind] = loader
    if remote_code:
        _REMOTE_CODE_KINDS.add(kind)
    else:
        _REMOTE_CODE_KINDS.discard(kind)


def remote_code_allowed(trust_remote_code: bool | None = None) -> bool:
    """Whether the caller opted in to running a model repository's own Python code:
    ``trust_remote_code`` when given, else the environment variable ``AIOPT_TRUST_REMOTE_CODE``
    (``1``, ``true`` or ``yes``). Never what a model folder says about itself."""
    if trust_remote_code is not None:
        return bool(trust_remote_code)
    return os.environ.get(TRUST_REMOTE_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def require_remote_code_opt_in(
    directory: str | Path, wanted: bool, trust_remote_code: bool | None
) -> bool:
    """The ``trust_remote_code`` to load a saved model with: True only when its folder asks for
    remote code (``wanted``, its model.json) AND the caller opted in (:func:`remote_code_allowed`).
    When the folder asks and the caller did not, a one-line :class:`ConfigError` says how to opt
    in; nothing of the folder has been imported or run."""
    if not wanted:
        return False
    if not remote_code_allowed(trust_remote_code):
        raise ConfigError(
            f"{directory}: this saved model needs remote code (its model.json sets "
            "trust_remote_code: true, which runs Python files shipped with the model); if you "
            "trust its source, opt in with load_model(..., trust_remote_code=True) or "
            f"{TRUST_REMOTE_CODE_ENV}=1"
        )
    return True


def write_model_file(directory: str | Path, kind: str, **info: Any) -> Path:
    """Write ``model.json`` (kind, class order, anything else) last, atomically: a folder with a
    model.json holds a complete model."""
    path = Path(directory) / MODEL_FILE
    write_text_atomic(
        path, json.dumps({"kind": kind, "classes": list(CLASSES), **info}, indent=2, default=str)
    )
    return path


def check_probabilities(proba: np.ndarray, n: int) -> np.ndarray:
    """Validate a model's output: shape (n, 3), finite, non-negative, rows summing to 1."""
    p = np.asarray(proba, dtype=np.float64)
    if p.shape != (n, len(CLASSES)):
        raise ValueError(f"probabilities have shape {p.shape}, expected ({n}, {len(CLASSES)})")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probabilities must sum to 1 per row")
    return p


def load_sample_set(
    dataset: str | Path,
    *,
    samples: pl.DataFrame | None = None,
    spec: Any = None,
    images: bool = True,
    workers: int | None = None,
) -> SampleSet:
    """A :class:`SampleSet` of a dataset folder: its rows (or the given ``samples``), the feature
    and pattern columns listed in its manifest, and (``images=True``) each sample's chart image
    rendered from the dataset's bars with ``spec`` (default ``RenderSpec()``)."""
    manifest = read_manifest(dataset)
    rows = read_samples(dataset) if samples is None else samples
    features = tuple(manifest["columns"]["features"])
    patterns = tuple(c for c in features if c.startswith("pat_"))
    pictures = None
    if images and rows.height:
        spec = spec or RenderSpec()
        parts = []
        for (symbol,), part in rows.with_row_index("_row").group_by(
            ["symbol"], maintain_order=True
        ):
            bars = with_overlays(read_dataset_bars(dataset, symbol), spec)
            ends = part.join(bars.select("ts").with_row_index("_end"), on="ts", how="left")
            window = int(part["window"][0])
            if part["window"].n_unique() != 1:
                raise DataError("samples of several window lengths; load them separately")
            parts.append(
                (
                    ends["_row"].to_numpy(),
                    render_windows(bars, ends["_end"].to_numpy(), window, spec, workers=workers),
                )
            )
        first = parts[0][1]
        pictures = np.empty((rows.height, *first.shape[1:]), dtype=np.uint8)
        for where, rendered in parts:
            pictures[where] = rendered
    return SampleSet(samples=rows, feature_names=features, images=pictures, pattern_names=patterns)
