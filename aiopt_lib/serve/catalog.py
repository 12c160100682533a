"""The models a server offers: what each reads (known before any request), and the few a worker
holds loaded at a time.

The server process loads every model folder once at start (:func:`open_models`) through
:func:`aiopt_lib.models.load_model`, so a folder that cannot be served is a one-line error before
anything listens, and writes down what each model reads as a :class:`ServedModel`; the models
themselves are dropped again. Each worker then keeps at most ``size`` models loaded, least
recently used first out (:class:`ModelCache`): requests name any served model, and a worker
switches by loading it, between two groups of a batch, never in the middle of one.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features.causal import feature_columns
from aiopt_lib.features.dataset import DatasetConfig
from aiopt_lib.features.render import RenderSpec, chart_layout
from aiopt_lib.models import MODEL_FILE, SignalModel, load_model

__all__ = ["ModelCache", "ServedModel", "open_models", "parse_model_arg"]

DEFAULT_WINDOW = DatasetConfig().window
"""Bars a chart shows when neither the request, the command line nor ``model.json`` says."""

_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HASHED_BYTES = 64 << 20  # files up to this size are hashed whole; larger ones by head and tail
_EDGE_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """What the server knows of one model folder without holding the model.

    ``feature_names``: the features an item must give (in the model's order; empty when the
    model reads none). ``spec``: the chart the model reads (None: no chart); images must have its
    size when ``checks_image_size`` (a vision-language model's processor resizes any image), and
    charts drawn from bars use it, showing the last ``window`` bars. ``bars_features``: every
    feature is one :func:`aiopt_lib.features.causal.add_features` computes with its default
    parameters, so the server can compute them from bars. ``baseline``: what a feature is
    replaced by when the model's reasons are computed by occlusion.
    """

    id: str
    path: Path
    kind: str
    version: str
    feature_names: tuple[str, ...]
    spec: RenderSpec | None
    checks_image_size: bool
    window: int
    bars_features: bool
    baseline: str

    @property
    def uses_image(self) -> bool:
        """True when the model reads a chart image."""
        return self.spec is not None

    @property
    def inputs(self) -> tuple[str, ...]:
        """What an item may give: ``features`` and/or ``image``, and ``bars`` when the server
        can build every input from them (empty: the model reads nothing, any item will do)."""
        given = (("features",) if self.feature_names else ()) + (
            ("image",) if self.uses_image else ()
        )
        return (*given, "bars") if given and self.bars_features else given

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of the images the model expects (None: no chart, or any size)."""
        if self.spec is None or not self.checks_image_size:
            return None
        return (self.spec.height, self.spec.width)


def parse_model_arg(text: str) -> tuple[str, Path]:
    """``ID=DIR`` or ``DIR`` (the id is then the folder's name) as ``(id, path)``."""
    name, sep, rest = text.partition("=")
    if sep and _ID.fullmatch(name) and rest:
        return name, Path(rest)
    if sep and rest and "/" not in name and not Path(text).exists():
        raise ConfigError(
            f"{text}: {name!r} is not a usable model id (letters, digits, '_', '.', '-')"
        )
    path = Path(text)
    model_id = path.resolve().name
    if not _ID.fullmatch(model_id):
        raise ConfigError(
            f"{text}: the folder name {model_id!r} is not a usable model id; name it: ID={text} "
            "(letters, digits, '_', '.', '-')"
        )
    return model_id, path


def folder_version(path: Path) -> str:
    """A short content hash of a model folder (``model.json``'s ``"version"`` when it has one):
    two folders with the same files get the same version, a retrained model a new one. Files up
    to 64 MiB are hashed whole, larger ones (merged vision-language weights) by their size and
    first and last MiB."""
    info = json.loads((path / MODEL_FILE).read_text(encoding="utf-8"))
    if isinstance(info, dict) and isinstance(info.get("version"), str | int):
        return str(info["version"])
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= _HASHED_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()[:12]


def _saved_window(path: Path) -> int | None:
    info = json.loads((path / MODEL_FILE).read_text(encoding="utf-8"))
    window = info.get("window") if isinstance(info, dict) else None
    return window if isinstance(window, int) and not isinstance(window, bool) else None


def _vlm_features(model: Any) -> tuple[str, ...]:
    """The features a vision-language model's prompt shows: its ``prompt_features``, else (as
    it chose them from the dataset's columns when trained) the first ``max_prompt_features``
    non-pattern features of the default feature set."""
    chosen = getattr(model, "prompt_features", None)
    if chosen:
        return tuple(chosen)
    names = [n for n in feature_columns() if not n.startswith("pat_")]
    return tuple(names[: int(getattr(model, "max_prompt_features", 8))])


def describe(model: SignalModel, model_id: str, path: Path, window: int) -> ServedModel:
    """What ``model`` (loaded from ``path``) reads, as a :class:`ServedModel`.

    Read from the model's own attributes: a compact network's config says whether it reads the
    chart and/or the features and gives its render spec; the baselines read ``feature_names``;
    the vision-language model reads a chart (any size; drawn with the default
    :class:`RenderSpec` from bars) and its prompt's features. A model of another kind is served
    by the same rule: ``feature_names`` if it has them, a chart if it has a ``spec``.
    """
    kind = str(model.kind)
    config = getattr(model, "config", None)
    if kind == "vlm":
        names, spec, checks = _vlm_features(model), RenderSpec(), False
        baseline = "none (occlusion is not run for a vision-language model)"
    else:
        reads_features = bool(getattr(config, "uses_features", True))
        reads_image = bool(getattr(config, "uses_image", getattr(model, "spec", None) is not None))
        names = tuple(getattr(model, "feature_names", ()) or ()) if reads_features else ()
        spec = getattr(model, "spec", None) if reads_image else None
        checks = True
        baseline = (
            "missing value (the trees' branch for unknown values)"
            if kind == "gbm"
            else "training mean"
            if kind in ("compact", "logistic")
            else "NaN"
        )
    if spec is not None:
        try:
            chart_layout(spec, window)
        except ConfigError as exc:
            raise ConfigError(
                f"model {model_id!r} ({path}): a chart of {window} bars does not fit its "
                f"{spec.width}×{spec.height} px images ({exc}); give the window the model was "
                "trained on (serve: --window N)"
            ) from None
    return ServedModel(
        id=model_id,
        path=path,
        kind=kind,
        version=folder_version(path),
        feature_names=names,
        spec=spec,
        checks_image_size=checks,
        window=window,
        bars_features=set(names) <= set(feature_columns()),
        baseline=baseline,
    )


def open_models(arguments: Sequence[str], *, window: int | None = None) -> tuple[ServedModel, ...]:
    """Load every ``ID=DIR`` / ``DIR`` once and describe it (:func:`describe`); the first is the
    default model. ``window``: the bars a chart shows (default: ``model.json``'s ``"window"``,
    else :data:`DEFAULT_WINDOW`). A folder that is no saved model, an unknown kind, a model that
    needs remote code without the opt-in (``AIOPT_TRUST_REMOTE_CODE=1``) or two models with one
    id are a one-line error."""
    if not arguments:
        raise ConfigError("no model folder given")
    entries: list[ServedModel] = []
    for argument in arguments:
        model_id, path = parse_model_arg(argument)
        if any(e.id == model_id for e in entries):
            raise ConfigError(
                f"two models are called {model_id!r}; name them: ID=DIR (e.g. {model_id}2={path})"
            )
        model = load_model(path)
        chosen = window or _saved_window(path) or DEFAULT_WINDOW
        entries.append(describe(model, model_id, path.resolve(), chosen))
        del model
    gc.collect()
    return tuple(entries)


def place(model: SignalModel, device: str, threads: int | None) -> SignalModel:
    """Move a compact network to ``device`` (``"cuda:0"``...) and give it ``threads`` CPU
    threads; other kinds choose their device themselves (the vision-language model takes CUDA
    when present, the scikit-learn baselines run on the CPU)."""
    from aiopt_lib.models.networks import CompactChartNet

    if isinstance(model, CompactChartNet) and model.network is not None:
        changes: dict[str, Any] = {}
        if device != "cpu":
            changes["device"] = device
        if threads:
            changes["threads"] = threads
        if changes:
            model.config = dataclasses.replace(model.config, **changes)
            model.network.to(model.config.device)
    return model


class ModelCache:
    """The models one worker holds: at most ``size``, the least recently used one dropped to make
    room. ``on_change(model_id, loaded)`` is called after a load (True) or a drop (False)."""

    def __init__(
        self,
        entries: Mapping[str, ServedModel],
        size: int,
        *,
        device: str = "cpu",
        threads: int | None = None,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        if size < 1:
            raise ConfigError(f"the model cache holds at least 1 model, got {size}")
        self.entries = dict(entries)
        self.size = size
        self.device = device
        self.threads = threads
        self.on_change = on_change
        self._models: OrderedDict[str, SignalModel] = OrderedDict()

    def loaded(self) -> list[str]:
        """The ids held, least recently used first."""
        return list(self._models)

    def holds(self, model_id: str) -> bool:
        """True when ``model_id`` is loaded (using it costs no load)."""
        return model_id in self._models

    def get(self, model_id: str) -> SignalModel:
        """The model ``model_id``, loaded (after dropping the least recently used one when the
        cache is full) if this worker does not hold it yet."""
        model = self._models.get(model_id)
        if model is not None:
            self._models.move_to_end(model_id)
            return model
        entry = self.entries[model_id]
        while len(self._models) >= self.size:
            dropped = next(iter(self._models))
            del self._models[dropped]  # the last reference: the memory is free for the next one
            self._release()
            if self.on_change is not None:
                self.on_change(dropped, False)
        model = place(load_model(entry.path), self.device, self.threads)
        self._models[model_id] = model
        if self.on_change is not None:
            self.on_change(model_id, True)
        return model

    def _release(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
