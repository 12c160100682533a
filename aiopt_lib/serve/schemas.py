"""The wire format of ``aiopt serve``: what a request and an answer hold.

Pydantic models, validated where they enter (FastAPI checks a request against
:class:`PredictRequest` in the HTTP process, before it reaches a model worker; the client checks
answers against :class:`Prediction`), so a malformed request is refused with the field it got
wrong and never costs a model a batch slot.

A request is one item, a list of items, or ``{"items": [...], "model": ..., "explain": ...}``
(defaults for its items). An item gives what its model reads:

* ``features``: ``{name: value}`` with exactly the model's feature names (``GET /models`` lists
  them); booleans count as 0/1, ``null`` as unknown;
* ``image``: the chart as a base64 PNG of the model's image size (height × width in
  ``GET /models``), drawn with the model's :class:`~aiopt_lib.features.render.RenderSpec`;
* ``bars``: a window of OHLCV bars, oldest first, from which the server computes the features
  and draws the chart itself, exactly as the dataset did (so the last bar is the sample's bar).
  Rows (``[{"ts": ..., "open": ...}, ...]``) or columns (``{"ts": [...], "open": [...]}``);
  ``ts`` is ISO 8601 (UTC when it has no offset) or Unix seconds/milliseconds.

``features`` and ``image`` win over what ``bars`` would give.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "Attribution",
    "Bars",
    "ErrorBody",
    "Explanation",
    "ModelInfo",
    "PredictItem",
    "PredictRequest",
    "Prediction",
]

MAX_ITEMS = 1024
"""Items one request may hold (larger jobs go as several requests, which batch anyway)."""

BAR_FIELDS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")


class Bars(BaseModel):
    """A window of bars, oldest first, held as columns (rows are turned into columns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: list[datetime]
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]

    @model_validator(mode="before")
    @classmethod
    def _rows_to_columns(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        columns: dict[str, list[Any]] = {name: [] for name in BAR_FIELDS}
        for row_number, row in enumerate(value):
            if not isinstance(row, dict):
                raise PydanticCustomError(
                    "bar_row", "row {row} is not an object with ts, open, high, low, close, volume",
                    {"row": row_number},
                )  # fmt: skip
            missing = [name for name in BAR_FIELDS if name not in row]
            unknown = sorted(set(row) - set(BAR_FIELDS))
            if missing or unknown:
                raise PydanticCustomError(
                    "bar_row",
                    "row {row}: {problem}",
                    {
                        "row": row_number,
                        "problem": f"lacks {missing}" if missing else f"unknown fields {unknown}",
                    },
                )
            for name in BAR_FIELDS:
                columns[name].append(row[name])
        return columns

    @model_validator(mode="after")
    def _same_lengths(self) -> Bars:
        lengths = {name: len(getattr(self, name)) for name in BAR_FIELDS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the columns have different lengths: {lengths}")
        if not lengths["ts"]:
            raise ValueError("no bars")
        return self

    def __len__(self) -> int:
        return len(self.ts)


class PredictItem(BaseModel):
    """One thing to predict. ``model``/``explain`` default to the request's (then to the first
    model served, and False); ``window`` overrides the number of bars the chart shows; ``id`` is
    yours, echoed in the answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    model: str | None = None
    explain: bool | None = None
    features: dict[str, float | None] | None = None
    image: str | None = None
    bars: Bars | None = None
    window: int | None = Field(default=None, ge=1)


class PredictRequest(BaseModel):
    """The body of ``POST /predict``: the items and their defaults. ``single`` is set when the
    body was one item: the answer is then one :class:`Prediction`, else
    ``{"predictions": [...]}`` in the order of the items."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[PredictItem] = Field(min_length=1, max_length=MAX_ITEMS)
    model: str | None = None
    explain: bool = False
    single: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, bytes | str):  # a body sent without a JSON content type
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise PydanticCustomError(
                    "json_invalid", "malformed JSON: {error}", {"error": str(exc)}
                ) from None
        if isinstance(value, list):
            return {"items": value}
        if isinstance(value, dict) and "items" not in value:
            return {"items": [value], "single": True}
        return value

    @model_validator(mode="after")
    def _single_is_one(self) -> PredictRequest:
        if self.single and len(self.items) != 1:
            raise ValueError("single is for a request of exactly one item")
        return self


class Attribution(BaseModel):
    """How much one feature moved the predicted class's probability: ``effect`` is that
    probability minus its value with the feature replaced by the model's baseline (positive:
    the feature pushed towards the predicted class)."""

    model_config = ConfigDict(frozen=True)

    feature: str
    value: float | None
    effect: float


class Explanation(BaseModel):
    """A model's reasons for one answer, where it can give them (``available``).

    ``method``: ``"occlusion"`` (features replaced one at a time by ``baseline``, top
    ``attributions`` by size), ``"text"`` (the model's own reasons only) or None. ``text``: what
    the model says itself (the logistic baseline's largest contributions, the vision-language
    model's generated rationale). ``note``: why something is missing."""

    model_config = ConfigDict(frozen=True)

    available: bool
    method: str | None = None
    baseline: str | None = None
    attributions: list[Attribution] = Field(default_factory=list)
    text: str | None = None
    note: str | None = None


class Prediction(BaseModel):
    """One answer: P(BUY), P(SELL), P(HOLD), the label with the largest, its probability as the
    confidence, which model (id, kind, version) gave it, and its explanation when asked."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    id: str | None = None
    model: str
    kind: str
    version: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    explanation: Explanation | None = None


class ModelInfo(BaseModel):
    """A served model (``GET /models``): what it reads and whether a worker holds it loaded
    (``loaded``: the number of workers that do; others load it on first use)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    id: str
    kind: str
    version: str
    path: str
    default: bool
    loaded: int
    inputs: list[str]
    feature_names: list[str]
    image_size: list[int] | None
    window: int


class ErrorBody(BaseModel):
    """Every error answer: what is wrong, the field it is about (``items[2].features`` ...,
    None when it is about the whole request) and the HTTP status."""

    model_config = ConfigDict(frozen=True)

    error: str
    field: str | None = None
    status: int
