"""Predictions and reasons for prepared items: the part of serving that needs no HTTP.

:func:`predict_items` runs a list of prepared items that may name different models: it groups
them by model (in the order each model first appears), takes each model from the worker's
:class:`~aiopt_lib.serve.catalog.ModelCache` once, runs ONE ``predict_proba`` per model and puts
every answer back in its item's place; so a batch of requests for several models is neither
split into single calls nor mixed up, and a model is switched only between two groups.

Reasons (``explain``) come from the model where it gives them
(:meth:`~aiopt_lib.models.base.SignalModel.explain`: the logistic baseline's largest
contributions, the vision-language model's generated rationale) and, for every model that reads
features (but the vision-language model, whose forward pass is too dear to repeat per feature),
from occlusion: the item is scored again with each feature replaced by NaN, which the models
read as their baseline (the compact network and the logistic baseline: the training mean, after
standardising; gradient boosting: its branch for missing values), and the features whose
removal changes the predicted class's probability most are listed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from aiopt_lib.features.labels import CLASSES
from aiopt_lib.models import SignalModel
from aiopt_lib.models.base import SampleSet
from aiopt_lib.serve.catalog import ModelCache, ServedModel
from aiopt_lib.serve.inputs import PreparedItem, sample_set

__all__ = ["GroupFailure", "explain_item", "predict_group", "predict_items"]

TOP_ATTRIBUTIONS = 5


@dataclasses.dataclass(frozen=True)
class GroupFailure:
    """A model that failed on its group of items: the status and message every request with an
    item in that group gets (the other groups of the batch are answered)."""

    model_id: str
    status: int
    message: str


def answer(entry: ServedModel, proba: np.ndarray, item: PreparedItem) -> dict[str, Any]:
    """One answer (the fields of :class:`~aiopt_lib.serve.schemas.Prediction`), JSON-ready."""
    best = int(np.argmax(proba))
    return {
        "id": item.id,
        "model": entry.id,
        "kind": entry.kind,
        "version": entry.version,
        "label": CLASSES[best],
        "confidence": float(proba[best]),
        "probabilities": {name: float(p) for name, p in zip(CLASSES, proba, strict=True)},
    }


def _model_text(entry: ServedModel, model: SignalModel, one: SampleSet) -> str | None:
    """What the model says itself about one sample (None when it says nothing)."""
    explain = getattr(model, "explain", None)
    if explain is None:
        return None
    texts = explain(one)
    if not texts:
        return None
    text = str(texts[0])
    if entry.kind == "vlm":  # a JSON answer {"signal", "confidence", "reasoning"}
        try:
            reasoning = json.loads(text).get("reasoning")
        except (ValueError, AttributeError):
            return text
        return str(reasoning) if reasoning else text
    return text


def occlusion(
    entry: ServedModel, model: SignalModel, one: SampleSet, proba: np.ndarray
) -> list[dict[str, Any]]:
    """The features of one sample whose replacement by the model's baseline (NaN) changes the
    predicted class's probability most: ``{feature, value, effect}``, largest ``|effect|``
    first, at most :data:`TOP_ATTRIBUTIONS`. One ``predict_proba`` of ``1 + k`` rows."""
    names = list(entry.feature_names)
    x = one.samples.select(pl.col(names).cast(pl.Float64)).to_numpy()
    values = x[0]
    rows = np.repeat(x, len(names) + 1, axis=0)
    rows[np.arange(1, len(names) + 1), np.arange(len(names))] = np.nan
    images = None if one.images is None else np.repeat(one.images, len(names) + 1, axis=0)
    varied = SampleSet(
        samples=pl.DataFrame(rows, schema=names, orient="row"),
        feature_names=tuple(names),
        images=images,
    )
    scored = model.predict_proba(varied)
    best = int(np.argmax(proba))
    effects = scored[0, best] - scored[1:, best]
    order = np.argsort(-np.abs(effects), kind="stable")[:TOP_ATTRIBUTIONS]
    return [
        {
            "feature": names[j],
            "value": None if not np.isfinite(values[j]) else float(values[j]),
            "effect": float(effects[j]),
        }
        for j in order
    ]


def explain_item(
    entry: ServedModel, model: SignalModel, one: SampleSet, proba: np.ndarray
) -> dict[str, Any]:
    """The explanation of one sample (the fields of
    :class:`~aiopt_lib.serve.schemas.Explanation`)."""
    text = _model_text(entry, model, one)
    if entry.feature_names and entry.kind != "vlm":
        return {
            "available": True,
            "method": "occlusion",
            "baseline": entry.baseline,
            "attributions": occlusion(entry, model, one, proba),
            "text": text,
            "note": None,
        }
    if text is not None:
        return {"available": True, "method": "text", "attributions": [], "text": text}
    return {
        "available": False,
        "attributions": [],
        "note": f"a {entry.kind} model gives no reasons"
        + ("" if entry.feature_names else " and reads no features to attribute"),
    }


def predict_group(
    entry: ServedModel, model: SignalModel, items: Sequence[PreparedItem]
) -> list[dict[str, Any]]:
    """The answers of ``items``, all for the model ``entry``: one ``predict_proba`` call, then
    the explanations of the items that asked for one."""
    samples = sample_set(entry, items)
    proba = np.asarray(model.predict_proba(samples), dtype=np.float64)
    # a broken model, not a bad request: RuntimeError makes it a 500
    if proba.shape != (len(items), len(CLASSES)):
        raise RuntimeError(f"gave probabilities of shape {proba.shape} for {len(items)} items")
    if not np.isfinite(proba).all():
        raise RuntimeError("gave probabilities that are not finite")
    answers = [answer(entry, p, item) for p, item in zip(proba, items, strict=True)]
    for row, item in enumerate(items):
        if item.explain:
            one = samples.take([row])
            answers[row]["explanation"] = explain_item(entry, model, one, proba[row])
    return answers


def predict_items(
    items: Sequence[PreparedItem], cache: ModelCache
) -> list[dict[str, Any] | GroupFailure]:
    """The answer of every item, in order, its model's group run once (module docstring).

    Groups whose model the worker holds run first, so a batch that names a model the worker
    must load costs at most one switch per new model. A group whose model fails gives a
    :class:`GroupFailure` in each of its items' places: 503 when the model cannot be loaded
    (its folder changed or vanished since the server started), 422 for an input the model
    refuses (an ``AioptError`` or ``ValueError``), 500 for anything else (a bug or a broken
    model; logged in full, answered in one line)."""
    from aiopt_lib.core.errors import AioptError

    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.model_id, []).append(index)
    order = sorted(groups, key=lambda model_id: not cache.holds(model_id))  # stable
    out: list[dict[str, Any] | GroupFailure] = [None] * len(items)  # type: ignore[list-item]
    for model_id in order:
        members = groups[model_id]
        entry = cache.entries[model_id]
        answers: Sequence[dict[str, Any] | GroupFailure]
        try:
            model = cache.get(model_id)
        except Exception as exc:
            logging.getLogger(__name__).exception("model %r could not be loaded", model_id)
            message = f"model {model_id!r} could not be loaded: {' '.join(str(exc).split())}"
            answers = [GroupFailure(model_id, 503, message)] * len(members)
        else:
            try:
                answers = predict_group(entry, model, [items[i] for i in members])
            except (AioptError, ValueError) as exc:
                message = f"model {model_id!r}: {' '.join(str(exc).split())}"
                answers = [GroupFailure(model_id, 422, message)] * len(members)
            except Exception as exc:  # a bug or a broken model: said in one line, logged in full
                logging.getLogger(__name__).exception("model %r failed on a batch", model_id)
                message = f"model {model_id!r} failed: {type(exc).__name__}: {exc}"
                answers = [GroupFailure(model_id, 500, " ".join(message.split()))] * len(members)
        for index, result in zip(members, answers, strict=True):
            out[index] = result
    return out
