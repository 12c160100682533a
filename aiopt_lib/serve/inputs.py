"""Request items made into a model's inputs, the way training made them.

Training read :class:`~aiopt_lib.models.base.SampleSet` rows built by
:func:`~aiopt_lib.models.base.load_sample_set`: the features of
:func:`~aiopt_lib.features.causal.add_features` at the sample's bar, and the chart of the
``window`` bars ending there drawn with the model's :class:`~aiopt_lib.features.render.RenderSpec`
(overlays from :func:`~aiopt_lib.features.render.with_overlays`). An item's ``bars`` go through
the same functions, so the bars a dataset holds up to a sample's bar give that sample's inputs
exactly (the indicators are causal: history before the window only matters through their
warm-up, so send at least as much history as the dataset had, or enough for the warm-up to
settle). ``features`` and ``image`` are taken as given after checking their names and size.

Every problem is an :class:`ItemError` naming the field, which the server answers with a 4xx.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import io
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from aiopt_lib.core.bars import ensure_bars
from aiopt_lib.core.errors import AioptError, ConfigError, DataError
from aiopt_lib.features.causal import add_features
from aiopt_lib.features.render import chart_layout, render_window, with_overlays
from aiopt_lib.models.base import SampleSet
from aiopt_lib.serve.catalog import ServedModel
from aiopt_lib.serve.schemas import Bars, PredictItem

__all__ = ["ItemError", "PreparedItem", "prepare_item", "sample_set"]

MAX_IMAGE_PIXELS = 4096 * 4096
"""Larger images are refused before they are decoded (a chart is far smaller)."""

_SHOWN = 5  # names listed in an error message


class ItemError(AioptError):
    """An item the model cannot read: ``field`` (``features``, ``image``, ``bars``...) and the
    HTTP ``status`` to answer with."""

    def __init__(self, message: str, field: str | None, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclasses.dataclass(frozen=True)
class PreparedItem:
    """An item ready for its model: the feature values in the model's order (float64, NaN for
    unknown) and the chart (``(H, W, 3)`` uint8), each None when the model does not read it."""

    model_id: str
    features: np.ndarray | None
    image: np.ndarray | None
    explain: bool
    id: str | None = None


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > _SHOWN else shown


def check_features(entry: ServedModel, given: Mapping[str, float | None]) -> np.ndarray:
    """The values of ``given`` in the model's feature order; a missing or unknown name is an
    :class:`ItemError` listing them (the names are in ``GET /models``)."""
    names = entry.feature_names
    missing = [n for n in names if n not in given]
    known = set(names)
    unknown = [n for n in given if n not in known]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing {_names(missing)}")
        if unknown:
            problems.append(f"unknown {_names(unknown)}")
        raise ItemError(
            f"model {entry.id!r} reads {len(names)} features: {'; '.join(problems)} "
            "(GET /models lists the names)",
            "features",
        )
    return np.array([np.nan if given[n] is None else given[n] for n in names], dtype=np.float64)


def decode_image(entry: ServedModel, text: str) -> np.ndarray:
    """A base64 PNG (a ``data:`` URL prefix is allowed) as ``(H, W, 3)`` uint8 RGB, checked
    against the model's image size."""
    from PIL import Image, UnidentifiedImageError

    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ItemError("image is not base64 (send a base64-encoded PNG)", "image") from None
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ItemError(f"image is {height}×{width} px, too large for a chart", "image")
            expected = entry.image_size
            if expected is not None and (height, width) != expected:
                raise ItemError(
                    f"image is {height}×{width} px (height × width), model {entry.id!r} reads "
                    f"{expected[0]}×{expected[1]} charts (send bars to have it drawn)",
                    "image",
                )
            rgb = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise ItemError(
            "image is not a PNG (or another image format Pillow reads)", "image"
        ) from None
    return np.ascontiguousarray(rgb)


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def bars_frame(bars: Bars) -> pl.DataFrame:
    """The bars of an item as a canonical bars frame (:func:`aiopt_lib.core.bars.ensure_bars`:
    sorted unique times, consistent OHLC)."""
    frame = pl.DataFrame(
        {
            "ts": pl.Series([_utc(t) for t in bars.ts], dtype=pl.Datetime("us", "UTC")),
            **{
                name: pl.Series(getattr(bars, name), dtype=pl.Float64)
                for name in ("open", "high", "low", "close", "volume")
            },
        }
    )
    try:
        return ensure_bars(frame)
    except DataError as exc:
        raise ItemError(str(exc), "bars") from None


def features_from_bars(entry: ServedModel, frame: pl.DataFrame) -> np.ndarray:
    """The model's features at the last bar of ``frame``
    (:func:`aiopt_lib.features.causal.add_features`, default parameters)."""
    if not entry.bars_features:
        raise ItemError(
            f"model {entry.id!r} reads features that are not the default feature set, so they "
            "cannot be computed from bars here: send 'features'",
            "features",
        )
    last = add_features(frame).select(entry.feature_names).tail(1)
    undefined = [name for name in entry.feature_names if last.get_column(name)[0] is None]
    if undefined:
        raise ItemError(
            f"too few bars: with {frame.height} bars {_names(undefined)} are still undefined "
            "at the last bar (indicator warm-up); send more history",
            "bars",
        )
    return np.asarray(last.cast(pl.Float64).row(0), dtype=np.float64)


def chart_from_bars(entry: ServedModel, frame: pl.DataFrame, window: int) -> np.ndarray:
    """The chart of the last ``window`` bars of ``frame``, drawn with the model's spec (its
    overlays computed over all of ``frame``, as the dataset computed them over its bars)."""
    spec = entry.spec
    assert spec is not None
    if frame.height < window:
        raise ItemError(
            f"too few bars: {frame.height} sent, model {entry.id!r} draws the last {window}",
            "bars",
        )
    try:
        chart_layout(spec, window)
        drawn = with_overlays(frame, spec)
    except ConfigError as exc:
        raise ItemError(str(exc), "window") from None
    return render_window(drawn.tail(window), spec)


def prepare_item(entry: ServedModel, item: PredictItem, *, explain: bool) -> PreparedItem:
    """``item`` as the inputs of the model ``entry``: its features and chart from what the item
    gives (``features`` and ``image`` first, else computed from ``bars``)."""
    frame: pl.DataFrame | None = None
    features = image = None
    if entry.feature_names:
        if item.features is not None:
            features = check_features(entry, item.features)
        elif item.bars is not None:
            frame = bars_frame(item.bars)
            features = features_from_bars(entry, frame)
        else:
            raise ItemError(
                f"model {entry.id!r} reads {len(entry.feature_names)} features: send "
                f"'features' (names in GET /models){' or bars' if entry.bars_features else ''}",
                "features",
            )
    if entry.uses_image:
        if item.image is not None:
            image = decode_image(entry, item.image)
        elif item.bars is not None:
            frame = bars_frame(item.bars) if frame is None else frame
            image = chart_from_bars(entry, frame, item.window or entry.window)
        else:
            size = entry.image_size
            shape = f" of {size[0]}×{size[1]} px" if size else ""
            raise ItemError(
                f"model {entry.id!r} reads a chart: send 'image' (a base64 PNG{shape}) or 'bars'",
                "image",
            )
    return PreparedItem(
        model_id=entry.id, features=features, image=image, explain=explain, id=item.id
    )


def sample_set(entry: ServedModel, items: Sequence[PreparedItem]) -> SampleSet:
    """The prepared ``items`` of one model as the :class:`SampleSet` its ``predict_proba``
    takes (feature columns in the model's order, float64; images stacked)."""
    names = list(entry.feature_names)
    if names:
        matrix = np.stack([item.features for item in items])  # type: ignore[misc]
        frame = pl.DataFrame(matrix, schema=names, orient="row")
    else:
        frame = pl.DataFrame({"row": np.arange(len(items), dtype=np.int64)})
    images = np.stack([item.image for item in items]) if entry.uses_image else None  # type: ignore[misc]
    return SampleSet(samples=frame, feature_names=tuple(names), images=images)
