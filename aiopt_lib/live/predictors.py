"""Where a live node's predictions come from: one small interface, three sources.

A :class:`BarPredictor` answers "the model's probabilities at the last bar of this window":

* :class:`FramePredictor` reads a predictions frame (``ts`` = the bar's open time and the
  ``prob_*`` columns) by the bar's open time, as the backtest does: replaying a lockbox period
  with the predictions notebook 03 wrote gives the backtest's gate exactly (the parity tests).
* :class:`LocalModelPredictor` calls a saved model in this process
  (:func:`aiopt_lib.models.load_model`), its inputs made from the bars window by the same
  functions ``aiopt serve`` uses (:mod:`aiopt_lib.serve.inputs`), so in process and served
  agree.
* :class:`HttpPredictor` asks an ``aiopt serve`` server: ``POST /predict`` with the bars window
  (the server computes the features and draws the chart), answer ``probabilities`` by label.
  The whole wire protocol is :func:`http_predict`, one function.

``predict`` runs in a worker thread (the prediction actor's executor), never on the event loop.
It returns ``{"prob_buy", "prob_sell", "prob_hold"}``, or None when the model has nothing to say
for this bar (a frame without the bar, too little history for the indicators' warm-up): the AI
gate stays closed, as in the backtest. It raises :class:`PredictionError` when the model is
unreachable or broken (server down, timeout, an answer that is no prediction): the actor then
applies the configured failure policy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np
import polars as pl

from aiopt_lib.core.errors import AioptError, ConfigError
from aiopt_lib.features.labels import CLASSES

__all__ = [
    "BarPredictor",
    "FramePredictor",
    "HttpPredictor",
    "LocalModelPredictor",
    "PredictionError",
    "http_predict",
]

PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{label.lower()}" for label in CLASSES)


class PredictionError(AioptError):
    """The model could not answer (unreachable, timed out, broken answer)."""


@runtime_checkable
class BarPredictor(Protocol):
    """A model that predicts the last bar of a window of bars (module docstring).

    ``model_id`` / ``version`` name what answers; ``history`` is how many bars the window
    should hold; :meth:`switch` returns a predictor of another model (id, version) of the same
    source; :meth:`close` releases connections."""

    model_id: str
    version: str
    history: int

    def predict(self, window: pl.DataFrame) -> dict[str, float] | None: ...

    def switch(self, model_id: str, version: str | None) -> BarPredictor: ...

    def close(self) -> None: ...


def _probabilities(values: Mapping[str, Any]) -> dict[str, float]:
    """``{"BUY": .., "SELL": .., "HOLD": ..}`` or ``{"prob_buy": ..}`` as ``prob_*`` floats."""
    out: dict[str, float] = {}
    for label, column in zip(CLASSES, PROB_COLUMNS, strict=True):
        value = values.get(label, values.get(column))
        if value is None:
            raise PredictionError(f"the answer has no probability for {label}")
        out[column] = float(value)
    if not all(np.isfinite(v) and v >= 0 for v in out.values()):
        raise PredictionError(f"the answer's probabilities are not valid: {out}")
    return out


class FramePredictor:
    """Predictions read from a frame by the bar's open time (module docstring): ``ts`` and any
    of the ``prob_*`` columns (a missing column reads NaN, as in the backtest)."""

    history = 1

    def __init__(
        self, predictions: pl.DataFrame, *, model_id: str = "frame", version: str = "-"
    ) -> None:
        columns = [c for c in PROB_COLUMNS if c in predictions.columns]
        if "ts" not in predictions.columns or not columns:
            raise ConfigError(
                f"a predictions frame needs 'ts' and some of {list(PROB_COLUMNS)}, "
                f"got {predictions.columns}"
            )
        frame = predictions.select(
            pl.col("ts").dt.epoch("ns").alias("ts"),
            *(
                pl.col(c).cast(pl.Float64).fill_null(float("nan"))
                if c in columns
                else pl.lit(float("nan")).alias(c)
                for c in PROB_COLUMNS
            ),
        )
        # later rows win, as compile_signals keeps the last
        self._table = {
            row[0]: dict(zip(PROB_COLUMNS, row[1:], strict=True)) for row in frame.rows()
        }
        self._frame = predictions
        self.model_id = model_id
        self.version = version

    def predict(self, window: pl.DataFrame) -> dict[str, float] | None:
        """The frame's row for the window's last bar, None when it has none."""
        row = self._table.get(int(window.get_column("ts").dt.epoch("ns")[-1]))
        return None if row is None else dict(row)

    def switch(self, model_id: str, version: str | None) -> FramePredictor:
        """The same frame under another name (a frame holds one model's predictions)."""
        return FramePredictor(self._frame, model_id=model_id, version=version or self.version)

    def close(self) -> None:
        """Nothing to release."""


class LocalModelPredictor:
    """A saved signal model called in this process (module docstring). ``models_dir``: where
    :meth:`switch` finds other models (``<models_dir>/<model_id>``); ``window``: the bars the
    chart shows (default: the model's saved window, else the dataset's 64)."""

    def __init__(
        self,
        path: str | Path,
        *,
        model_id: str | None = None,
        models_dir: str | Path | None = None,
        window: int | None = None,
        history: int = 300,
    ) -> None:
        # in-function on purpose: loading a model imports torch / scikit-learn
        from aiopt_lib.models import load_model
        from aiopt_lib.serve.catalog import DEFAULT_WINDOW, describe

        self.path = Path(path)
        self.models_dir = Path(models_dir) if models_dir is not None else self.path.parent
        self.model_id = model_id or self.path.name
        self.model = load_model(self.path)
        self.entry = describe(self.model, self.model_id, self.path, window or DEFAULT_WINDOW)
        self.version = self.entry.version
        self.history = max(history, self.entry.window)
        self._window = window

    def predict(self, window: pl.DataFrame) -> dict[str, float] | None:
        """The model's probabilities at the window's last bar; None while the indicators are
        still warming up (too few bars)."""
        from aiopt_lib.serve.inputs import ItemError, prepare_item, sample_set
        from aiopt_lib.serve.schemas import Bars, PredictItem

        columns = window.select("ts", "open", "high", "low", "close", "volume").to_dict(
            as_series=False
        )
        try:
            item = prepare_item(self.entry, PredictItem(bars=Bars(**columns)), explain=False)
        except ItemError as exc:
            if "too few bars" in exc.message:
                return None
            raise PredictionError(f"model {self.model_id!r}: {exc.message}") from None
        try:
            proba = self.model.predict_proba(sample_set(self.entry, [item]))
        except Exception as exc:  # a model that fails is a failed prediction, never a crash
            raise PredictionError(f"model {self.model_id!r} failed: {exc}") from exc
        return _probabilities(dict(zip(PROB_COLUMNS, np.asarray(proba)[0], strict=True)))

    def switch(self, model_id: str, version: str | None) -> LocalModelPredictor:
        """The model ``<models_dir>/<model_id>``; with ``version``, only if the folder's version
        (:func:`aiopt_lib.serve.catalog.folder_version`) is that one."""
        path = self.models_dir / model_id
        if not (path / "model.json").is_file():
            raise ConfigError(f"no saved model {model_id!r} in {self.models_dir}")
        other = LocalModelPredictor(
            path, model_id=model_id, models_dir=self.models_dir, window=self._window
        )
        if version is not None and other.version != version:
            raise ConfigError(
                f"model {model_id!r} in {path} has version {other.version}, not {version}"
            )
        return other

    def close(self) -> None:
        """Drop the model."""
        self.model = None  # type: ignore[assignment]


def http_predict(
    client: httpx.Client, url: str, model_id: str, window: pl.DataFrame
) -> dict[str, Any]:
    """One ``POST {url}/predict`` of ``aiopt serve`` (``aiopt_lib.serve.schemas``): a single
    item ``{"model": model_id, "bars": {columns}}``, answered by one prediction (``model``,
    ``version``, ``probabilities`` by label). Raises :class:`PredictionError` for anything
    else: connection refused, timeout, a 4xx/5xx (with the server's message), a body that is
    not JSON."""
    bars = {
        "ts": [t.isoformat() for t in window.get_column("ts").to_list()],
        **{c: window.get_column(c).to_list() for c in ("open", "high", "low", "close", "volume")},
    }
    try:
        response = client.post(f"{url.rstrip('/')}/predict", json={"model": model_id, "bars": bars})
    except httpx.HTTPError as exc:
        raise PredictionError(f"model server {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise PredictionError(
            f"model server {url}: HTTP {response.status_code}: {response.text[:300]}"
        )
    try:
        body = response.json()
    except ValueError:
        raise PredictionError(f"model server {url}: the answer is not JSON") from None
    if isinstance(body, dict) and isinstance(body.get("predictions"), list) and body["predictions"]:
        body = body["predictions"][0]
    if not isinstance(body, dict):
        raise PredictionError(f"model server {url}: unexpected answer {str(body)[:200]}")
    return body


class HttpPredictor:
    """Predictions from an ``aiopt serve`` server at ``url`` (module docstring): the last
    ``history`` bars are sent with every request (the server needs the indicators' warm-up).
    ``timeout_s`` bounds one request: a server that does not answer in time is a failed
    prediction. With ``version`` set, an answer from another version of the model fails."""

    def __init__(
        self,
        url: str,
        model_id: str,
        *,
        version: str | None = None,
        timeout_s: float = 2.0,
        history: int = 300,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.model_id = model_id
        self.version = version or "-"
        self._wanted = version
        self.timeout_s = timeout_s
        self.history = history
        self._headers = dict(headers or {})
        self._client = httpx.Client(timeout=timeout_s, headers=self._headers)
        self._lock = threading.Lock()
        self.last_latency_ms = float("nan")

    def predict(self, window: pl.DataFrame) -> dict[str, float] | None:
        """Ask the server (module docstring); None when it says the window is too short."""
        started = time.perf_counter()
        with self._lock:
            try:
                body = http_predict(self._client, self.url, self.model_id, window)
            except PredictionError as exc:
                if "too few bars" in str(exc):
                    return None
                raise
        self.last_latency_ms = (time.perf_counter() - started) * 1e3
        answered = str(body.get("version", "-"))
        if self._wanted is not None and answered != self._wanted:
            raise PredictionError(
                f"model server {self.url}: model {self.model_id!r} answered with version "
                f"{answered}, not {self._wanted}"
            )
        self.version = answered
        probabilities = body.get("probabilities", body)
        if not isinstance(probabilities, Mapping):
            raise PredictionError(f"model server {self.url}: no probabilities in the answer")
        return _probabilities(probabilities)

    def switch(self, model_id: str, version: str | None) -> HttpPredictor:
        """The same server, another model (and version)."""
        return HttpPredictor(
            self.url,
            model_id,
            version=version,
            timeout_s=self.timeout_s,
            history=self.history,
            headers=self._headers,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def window_frame(rows: list[tuple[int, float, float, float, float, float]]) -> pl.DataFrame:
    """Bars ``(open time ns, open, high, low, close, volume)`` as a bars frame (``ts`` UTC)."""
    ts, o, h, lo, c, v = (list(col) for col in zip(*rows, strict=True))
    return pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64)
            .cast(pl.Datetime("ns"))
            .dt.replace_time_zone("UTC")
            .cast(pl.Datetime("us", "UTC")),
            "open": pl.Series(o, dtype=pl.Float64),
            "high": pl.Series(h, dtype=pl.Float64),
            "low": pl.Series(lo, dtype=pl.Float64),
            "close": pl.Series(c, dtype=pl.Float64),
            "volume": pl.Series(v, dtype=pl.Float64),
        }
    )
