"""The ranked spec trading bar by bar in a live node, and the model asked once per bar.

:class:`LiveSpecStrategy` is :class:`~aiopt_lib.execution.nautilus.SpecStrategy` in its bar-by-bar
mode (a :class:`~aiopt_lib.strategy.streaming.StreamingEvaluator`) with what a live node adds:

* **Fills at the next open, on the wall clock.** The backtest sends a signal bar's market orders
  from a time alert 1 µs after the next bar's open quote; a live node's clock is the wall clock,
  not the data's, so the orders go out when that quote arrives (:meth:`on_quote_tick`; the
  sandbox venue has matched it just before, its subscription being older). Same quote, same fill.
* **Predictions off the event loop.** :class:`LivePredictionActor` hands each bar to the model in
  a worker thread (one, so answers come back in bar order) and publishes the answer as
  :class:`~aiopt_lib.execution.nautilus.SignalPrediction`; when the spec reads ``ai_*``, the
  strategy holds the bar until its prediction (or the news that there is none) has arrived, then
  evaluates it: the gate sees exactly what the backtest's gate sees.
* **Controls** (:class:`LiveControls`): pause (no new positions; exits, stops and takes still
  work; an opposite entry only closes), flatten (close now, at the current quote), a new set of
  parameters (:meth:`LiveSpecStrategy.reconfigure`: a fresh evaluator warmed up on every bar
  seen so far, the open position kept), and the model-failure policy: ``"ungated"`` evaluates
  every comparison that reads the model as passed until the model answers again
  (:class:`GateSwitchEvaluator`), ``"flatten"`` closes the position and takes no new one until
  then.

Everything the node does is also sent to a sink (``sink(kind, record)``: fills, positions,
predictions, events), which :mod:`aiopt_lib.live.control` writes to Redis streams and our Parquet
logging streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from nautilus_trader.common.actor import Actor
from nautilus_trader.model.data import Bar, QuoteTick

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.execution.nautilus import (
    PREDICTIONS,
    NautilusData,
    PredictionActorConfig,
    SignalPlan,
    SignalPrediction,
    SpecStrategy,
    SpecStrategyConfig,
)
from aiopt_lib.features.labels import CLASSES
from aiopt_lib.live.predictors import PROB_COLUMNS, BarPredictor, PredictionError, window_frame
from aiopt_lib.strategy.rules import AiProbability, Compare, Cross, Node, walk
from aiopt_lib.strategy.spec import RULES, StrategySpec
from aiopt_lib.strategy.streaming import BarSignals, StreamingEvaluator

__all__ = [
    "GateSwitchEvaluator",
    "LiveControls",
    "LivePredictionActor",
    "LiveSpecStrategy",
    "Sink",
    "spec_uses_model",
]

Sink = Callable[[str, dict[str, Any]], None]
FailurePolicy = Literal["ungated", "flatten"]
_NAN_PROBS = dict.fromkeys(PROB_COLUMNS, math.nan)


BarRow = tuple[int, float, float, float, float, float]


def _bar_row(bar: Bar, open_ns: int) -> BarRow:
    """``(open time ns, open, high, low, close, volume)``: what the strategy's history and the
    prediction actor's window keep of a bar."""
    return (
        open_ns,
        bar.open.as_double(),
        bar.high.as_double(),
        bar.low.as_double(),
        bar.close.as_double(),
        bar.volume.as_double(),
    )


def _no_sink(kind: str, record: dict[str, Any]) -> None:
    """Where records go when nobody listens."""


def spec_uses_model(spec: StrategySpec) -> bool:
    """Whether a rule of ``spec`` reads the model (``ai_buy`` / ``ai_sell`` / ``ai_hold``)."""
    for name in RULES:
        tree = spec.rule(name)
        if tree is not None and any(isinstance(n, AiProbability) for n in walk(tree)):
            return True
    return False


@dataclasses.dataclass
class LiveControls:
    """The switches the control channel and the model's health set (read on the event loop).

    ``paused``: the operator's pause. ``model_down``: the last prediction failed.
    ``on_model_failure``: ``"ungated"`` (trade on the rules alone while the model is down) or
    ``"flatten"`` (close and take no new position while it is down). ``gate_off`` is the cell
    :class:`GateSwitchEvaluator` reads."""

    paused: bool = False
    model_down: bool = False
    on_model_failure: FailurePolicy = "ungated"
    gate_off: list[bool] = dataclasses.field(default_factory=lambda: [False])

    def entries_blocked(self) -> bool:
        """No new position now: paused, or the model is down and the policy flattens."""
        return self.paused or (self.model_down and self.on_model_failure == "flatten")


class GateSwitchEvaluator(StreamingEvaluator):
    """A :class:`~aiopt_lib.strategy.streaming.StreamingEvaluator` whose model comparisons can be
    switched off: while ``gate_off[0]`` is true every comparison or crossing that reads
    ``ai_*`` counts as passed (its state is still updated every bar), so ``close > ema(50) and
    ai_buy >= 0.6`` trades on ``close > ema(50)`` alone. It wraps the evaluator's compiled
    per-node steps (``_compile``, ``_slot``, ``_v``), an internal of
    :mod:`aiopt_lib.strategy.streaming`: ``tests/test_live.py`` checks the gate both ways."""

    def __init__(
        self, spec: StrategySpec, predictions: Any = None, gate_off: list[bool] | None = None
    ) -> None:
        self._gate_off = gate_off if gate_off is not None else [False]  # before _compile runs
        super().__init__(spec, predictions)

    def _compile(self, node: Node) -> Callable[[], None] | None:
        step = super()._compile(node)
        if step is None or not isinstance(node, Compare | Cross):
            return step
        if not any(isinstance(n, AiProbability) for n in walk(node)):
            return step
        v, i, off, inner = self._v, self._slot[node], self._gate_off, step

        def gated() -> None:
            inner()
            if off[0]:
                v[i] = True

        return gated


@dataclasses.dataclass(frozen=True)
class _LivePlan(SignalPlan):
    """A :class:`SignalPlan` filled bar by bar that drops new entries while ``blocked()``: an
    entry is ignored, an opposite entry only closes the position."""

    blocked: Callable[[], bool] = lambda: False

    def set_bar(self, t: int, signals: BarSignals, direction: str) -> None:
        super().set_bar(t, signals, direction)
        if self.blocked():
            self.exit_long[t] = self.exit_long[t] or self.want_short[t]
            self.exit_short[t] = self.exit_short[t] or self.want_long[t]
            self.want_long[t] = False
            self.want_short[t] = False


class LiveSpecStrategy(SpecStrategy):
    """:class:`~aiopt_lib.execution.nautilus.SpecStrategy` for a live node (module docstring).

    ``data``: the bars' open and close times of the replay (the strategy knows which bar is the
    last, to close at the end as the backtest does). ``history``: every bar seen, ``(open time
    ns, open, high, low, close, volume)``, shared so that a reconfigured evaluator can be warmed
    up. ``received``: the predictions by bar open time (filled by ``on_data``), None when the
    spec does not read the model."""

    def __init__(
        self,
        config: SpecStrategyConfig,
        data: NautilusData,
        spec: StrategySpec,
        *,
        controls: LiveControls | None = None,
        sink: Sink = _no_sink,
        received: dict[int, dict[str, float]] | None = None,
    ) -> None:
        self.controls = controls or LiveControls()
        uses_model = spec_uses_model(spec)
        if uses_model and received is None:
            received = {}
        received = received if uses_model else None
        evaluator = GateSwitchEvaluator(spec, received, self.controls.gate_off)
        super().__init__(
            config,
            None,
            data,
            spec.instrument_tick_size,
            evaluator=evaluator,
            direction=spec.direction,
            received=received,
        )
        base = self.plan
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(SignalPlan)}
        self.plan = _LivePlan(**fields, blocked=self.controls.entries_blocked)
        self.spec = spec
        self.sink = sink
        self.history: list[tuple[int, float, float, float, float, float]] = []
        self._waiting: deque[Bar] = deque()
        self._pending: tuple[int, int, int] | None = None  # (signal bar, target, next open ns)
        self.last_quote_ns = 0
        self.bars_done = 0

    # -- data ------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Subscribe to the bars, the predictions (when the spec reads them) and the quotes
        (the next-open fills)."""
        super().on_start()
        self.subscribe_quote_ticks(self.instrument_id)

    def on_bar(self, bar: Bar) -> None:
        """Keep the bar; evaluate it now, or once its prediction is in (module docstring)."""
        open_ns = bar.ts_event - self.timeframe_ns
        self.history.append(_bar_row(bar, open_ns))
        if self.received is not None and (self._waiting or open_ns not in self.received):
            self._waiting.append(bar)
            return
        self._evaluate(bar)

    def _evaluate(self, bar: Bar) -> None:
        super().on_bar(bar)
        self.bars_done += 1

    def on_data(self, data: Any) -> None:
        """A prediction: kept for the gate; the bars waiting for it are evaluated, in order."""
        super().on_data(data)
        received = self.received
        while self._waiting and received is not None:
            open_ns = self._waiting[0].ts_event - self.timeframe_ns
            if open_ns not in received:
                break
            self._evaluate(self._waiting.popleft())

    @property
    def waiting(self) -> int:
        """Bars held for their prediction."""
        return len(self._waiting)

    def _schedule(self, t: int, target: int) -> None:
        """Send bar ``t``'s orders on bar ``t + 1``'s open quote (module docstring)."""
        self._pending = (t, target, int(self.open_ns[t + 1]))

    def on_quote_tick(self, tick: QuoteTick) -> None:
        """The next open quote sends the pending orders (the venue has just matched it)."""
        self.last_quote_ns = tick.ts_event
        pending = self._pending
        if pending is not None and tick.ts_event >= pending[2]:
            self._pending = None
            self._act(pending[0], pending[1])

    # -- controls --------------------------------------------------------------------------

    def current_bar(self) -> int:
        """The index of the bar the current quote belongs to (-1 before the first)."""
        return int(np.searchsorted(self.open_ns, self.last_quote_ns, side="right")) - 1

    @property
    def side(self) -> int:
        """The position: 1 long, -1 short, 0 flat."""
        return self._side

    def flatten(self) -> bool:
        """Close the open position now, at the current quote (exit reason ``"signal"``: the
        trades schema has no operator reason; the control events say when), and drop an order
        waiting for the next open. True when there was something to close."""
        self._pending = None
        if self._side == 0 or self._position is None or self._position.is_closed:
            self._side = 0
            return False
        self._cancel_protective()
        self._close("signal", max(self.current_bar(), 0))
        return True

    def reconfigure(self, spec: StrategySpec) -> None:
        """Trade ``spec`` (new parameters of the same rules) from the next bar: a new evaluator
        warmed up on every bar seen (the predictions received so far included), so its
        indicators are where a run with these parameters from the start would have them. The
        open position and its stop and take stay as they are."""
        if spec_uses_model(spec) != (self.received is not None):
            raise ConfigError("a reconfigured spec must read the model as the running one does")
        evaluator = GateSwitchEvaluator(spec, self.received, self.controls.gate_off)
        for open_ns, o, h, lo, c, v in self.history:
            evaluator.update(o, h, lo, c, v, open_ns)
        self.evaluator = evaluator
        self.direction = spec.direction
        self.spec = spec

    # -- logging ---------------------------------------------------------------------------

    def on_order_filled(self, event: Any) -> None:
        """Place the exits (the parent's), then log the fill."""
        super().on_order_filled(event)
        self.sink(
            "fills",
            {
                "ts_ns": int(event.ts_event),
                "order_id": event.client_order_id.value,
                "position_id": event.position_id.value if event.position_id else "",
                "side": "BUY" if event.order_side == 1 else "SELL",
                "price": event.last_px.as_double(),
                "quantity": event.last_qty.as_double(),
                "commission": event.commission.as_double(),
                "reason": self.reasons.get(event.client_order_id.value, "entry"),
            },
        )

    def on_position_opened(self, event: Any) -> None:
        """Keep the position (the parent's), then log it."""
        super().on_position_opened(event)
        self._log_position("opened", event)

    def on_position_closed(self, event: Any) -> None:
        """Log the closed position."""
        self._log_position("closed", event)

    def _log_position(self, what: str, event: Any) -> None:
        self.sink(
            "positions",
            {
                "ts_ns": int(event.ts_event),
                "event": what,
                "position_id": event.position_id.value,
                "side": str(event.entry).split(".")[-1] if what == "opened" else "",
                "avg_px_open": float(event.avg_px_open),
                "avg_px_close": float(event.avg_px_close or 0.0),
                "realized_pnl": event.realized_pnl.as_double() if event.realized_pnl else 0.0,
            },
        )


class LivePredictionActor(Actor):
    """Asks the model once per bar, off the event loop, and publishes the answer as a
    :class:`~aiopt_lib.execution.nautilus.SignalPrediction` (NaN probabilities when there is
    none), in bar order (module docstring).

    A failed prediction (:class:`~aiopt_lib.live.predictors.PredictionError`) applies
    ``controls.on_model_failure`` once, when the model goes down (``"flatten"`` closes the
    ``strategy``'s position), says so in an event, and undoes it when the model answers again.
    ``pending`` counts the jobs in the worker (the replay waits for them)."""

    def __init__(
        self,
        config: PredictionActorConfig,
        predictor: BarPredictor,
        *,
        controls: LiveControls | None = None,
        sink: Sink = _no_sink,
        symbol: str = "EURUSD",
        strategy: LiveSpecStrategy | None = None,
    ) -> None:
        super().__init__(config)
        self.predictor = predictor
        self.controls = controls or LiveControls()
        self.sink = sink
        self.symbol = symbol
        self.strategy = strategy
        self.pending = 0
        self.published = 0
        self.failures = 0
        self._bars: deque[tuple[int, float, float, float, float, float]] = deque(
            maxlen=max(predictor.history, 1)
        )
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_start(self) -> None:
        """Start the worker thread and subscribe to the bars."""
        self._timeframe_ns = self.config.bar_type.spec.timedelta.value
        self._loop = asyncio.get_event_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="aiopt-predict")
        self.subscribe_bars(self.config.bar_type)

    def on_dispose(self) -> None:
        """Stop the worker and close the model's connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.predictor.close()

    def on_bar(self, bar: Bar) -> None:
        """Hand the bar's window to the worker."""
        open_ns = bar.ts_event - self._timeframe_ns
        self._bars.append(_bar_row(bar, open_ns))
        rows = list(self._bars)
        predictor = self.predictor  # the model of this bar, even if a switch lands meanwhile
        self.pending += 1
        assert self._loop is not None and self._pool is not None
        future = self._loop.run_in_executor(self._pool, _predict, predictor, rows)
        future.add_done_callback(
            lambda f, bar=bar, open_ns=open_ns, predictor=predictor: self._deliver(
                f, bar, open_ns, predictor
            )
        )

    def _deliver(
        self, future: asyncio.Future, bar: Bar, open_ns: int, predictor: BarPredictor
    ) -> None:
        self.pending -= 1
        latency_ms = math.nan
        try:
            probabilities, latency_ms = future.result()
        except asyncio.CancelledError:
            return
        except Exception as exc:  # PredictionError, or a model that raised anything else
            probabilities = None
            self._model_failed(exc, predictor)
        else:
            if self.controls.model_down:
                self._model_back(predictor)
        if probabilities is not None:
            self.sink(
                "predictions",
                _prediction_record(open_ns, self.symbol, predictor, probabilities, latency_ms),
            )
        values = probabilities or _NAN_PROBS
        prediction = SignalPrediction(
            bar.ts_event,
            bar.ts_init,
            bar_open_ns=open_ns,
            **{k: float(v) for k, v in values.items()},
        )
        self.publish_data(PREDICTIONS, prediction)
        self.published += 1

    def _model_failed(self, exc: BaseException, predictor: BarPredictor) -> None:
        self.failures += 1
        if self.controls.model_down:
            return
        controls = self.controls
        controls.model_down = True
        policy = controls.on_model_failure
        if policy == "ungated":
            controls.gate_off[0] = True
            action = "trading on the rules without the AI gate until it answers again"
        else:
            flat = self.strategy.flatten() if self.strategy is not None else False
            action = (
                "position closed; " if flat else ""
            ) + "no new positions until it answers again"
        message = f"model {predictor.model_id!r} is down ({exc}): {action}"
        self.log.warning(message)
        self.sink("events", {"event": "model_down", "policy": policy, "message": message})

    def _model_back(self, predictor: BarPredictor) -> None:
        self.controls.model_down = False
        self.controls.gate_off[0] = False
        message = f"model {predictor.model_id!r} answers again: the AI gate is back"
        self.log.warning(message)
        self.sink("events", {"event": "model_back", "message": message})

    def switch(
        self, model_id: str, version: str | None, done: Callable[[BarPredictor | None, str], None]
    ) -> None:
        """Switch to another model: made (loaded, connected) in the worker after the bars
        already handed to it, so no prediction is dropped or answered by a mix of models; then
        ``done(new predictor or None, message)`` on the event loop."""
        assert self._loop is not None and self._pool is not None
        self.pending += 1
        current = self.predictor
        future = self._loop.run_in_executor(self._pool, current.switch, model_id, version)

        def finish(f: asyncio.Future) -> None:
            self.pending -= 1
            try:
                new = f.result()
            except Exception as exc:  # a model that cannot be loaded leaves the old one
                done(None, f"{type(exc).__name__}: {exc}")
                return
            self.predictor = new
            self._bars = deque(self._bars, maxlen=max(new.history, 1))
            done(new, f"model {new.model_id!r} version {new.version}")

        future.add_done_callback(finish)


def _predict(
    predictor: BarPredictor, rows: list[tuple[int, float, float, float, float, float]]
) -> tuple[dict[str, float] | None, float]:
    """In the worker: the predictor's answer for the window and its latency (ms)."""
    started = time.perf_counter()
    try:
        answer = predictor.predict(window_frame(rows))
    except PredictionError:
        raise
    except Exception as exc:
        raise PredictionError(f"{type(exc).__name__}: {exc}") from exc
    return answer, (time.perf_counter() - started) * 1e3


def _prediction_record(
    open_ns: int,
    symbol: str,
    predictor: BarPredictor,
    probabilities: dict[str, float],
    latency_ms: float,
) -> dict[str, Any]:
    """A ``predictions`` stream row (:data:`aiopt_lib.core.streams.PREDICTIONS_SCHEMA`)."""
    values = np.array([probabilities.get(c, math.nan) for c in PROB_COLUMNS], dtype=np.float64)
    known = np.isfinite(values)
    best = int(np.argmax(np.where(known, values, -1.0))) if known.any() else -1
    return {
        "ts_ns": open_ns,
        "symbol": symbol,
        "model_id": predictor.model_id,
        "model_version": predictor.version,
        **{c: float(probabilities.get(c, math.nan)) for c in PROB_COLUMNS},
        "predicted_label": CLASSES[best] if best >= 0 else None,
        "confidence": float(values[best]) if best >= 0 else math.nan,
        "latency_ms": latency_ms,
    }
