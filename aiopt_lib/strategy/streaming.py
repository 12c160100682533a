"""A :class:`~aiopt_lib.strategy.spec.StrategySpec` evaluated bar by bar, for live and event-driven
engines (Nautilus, paper trading): :class:`StreamingEvaluator` takes one new bar at a time and
returns that bar's signals (:class:`BarSignals`), using only the bars it has seen so far.

Its values are those of the vectorised :func:`~aiopt_lib.strategy.spec.compile_signals` on the same
history:

* **Indicators** are incremental state machines that follow the numba kernels of
  :mod:`aiopt_lib.features.indicators` step by step, with the same seeding and warm-up: TradingView's
  rolling ``math.sum`` (``_tv_sum_add``, ported literally) for ``sma`` and Bollinger Bands, so
  those are identical to the bit; the Neumaier-compensated SMA of the Stochastic; EMA / RMA seeded
  with the SMA of their first ``length`` values; RSI, MACD (the signal line seeded with the first
  ``signal`` line values), ATR (first true range ``high - low``) and DMI (Pine's ``1e-10`` tie
  tolerance, the ADX average skipping bars without a true range). The kernels of the recursive
  averages are compiled with fused multiply-adds; the streaming step is the same numba-compiled
  expression (:func:`_blend`), so every indicator equals the vectorised one to the bit on the
  EUR/USD sample (``tests/test_streaming.py``).
* **Rules** are evaluated on scalars with the vectorised NaN semantics: a comparison with NaN is
  False (``!=`` too), ``x / 0`` is NaN, ``x[k]`` reads a small ring buffer (NaN / False before
  ``k`` bars), ``crossover`` / ``crossunder`` keep TradingView's state (compare with the last bar
  where both sides were defined). Every node is evaluated on every bar, even where ``and`` / ``or``
  could stop early, so the ring buffers, crossovers and averages see every bar (as Pine needs its
  ``ta.*`` calls on every bar).
* **Candlestick patterns** are a scalar port of each pattern's rule tree
  (:mod:`aiopt_lib.features.patterns`): the same guard (False until every value read is available), the
  last few bars in a ring buffer, the trend SMA from the last ``trend_length`` closes.
* **The AI gate** (``ai_buy`` / ``ai_sell`` / ``ai_hold``) looks the bar's open time up in the
  predictions (a frame with ``ts`` and ``prob_*``, or a mapping ``ts -> {column: probability}``
  that an Actor can fill as predictions arrive); a bar without a prediction reads NaN (the gate
  is False).

No look-ahead by construction: :meth:`StreamingEvaluator.update` receives one bar and keeps only
state built from the bars before it.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, NamedTuple

import polars as pl

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features import patterns as pat
from aiopt_lib.features.indicator_streams import Smoothed, StreamingIndicator
from aiopt_lib.features.indicators import PINE_EPSILON, pine_compare
from aiopt_lib.features.registry import REGISTRY, lookup_output
from aiopt_lib.strategy.rules import (
    AiProbability,
    Arith,
    BoolConst,
    Compare,
    Const,
    Cross,
    Indicator,
    Logic,
    Negate,
    Node,
    Not,
    Param,
    PatternRef,
    PriceField,
    Shift,
)
from aiopt_lib.strategy.spec import RULES, Distance, StrategySpec

_NAN = math.nan

__all__ = [
    "BarSignals",
    "StreamingEvaluator",
    "StreamingIndicator",
    "predictions_by_time",
    "streaming_indicator",
]

# ---------------------------------------------------------------------------------------------
# Indicators: the registry's bar-by-bar state machines


def _output(name: str) -> tuple[Any, int]:
    found = lookup_output(name)
    if found is None:
        raise ConfigError(f"unknown indicator output {name!r}")
    return found


def streaming_indicator(name: str, args: tuple[float, ...]) -> StreamingIndicator:
    """A fresh bar-by-bar state machine of the registered indicator ``name``
    (:data:`aiopt_lib.features.registry.REGISTRY`: ``sma ema rsi atr macd bb stoch dmi cci ...``)
    with its arguments in registry order (``("macd", (12, 26, 9))``); lengths must be whole
    numbers >= 1, other arguments finite and > 0."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown indicator {name!r}; known: {sorted(REGISTRY)}")
    definition = REGISTRY[name]
    return definition.stream(*definition.normalise(tuple(args)))


# ---------------------------------------------------------------------------------------------
# Candlestick patterns: a scalar port of the rule tree (None is a missing value, as null in
# polars)


class _PatternState:
    """One pattern of :mod:`aiopt_lib.features.patterns` evaluated bar by bar with the default
    :class:`~aiopt_lib.features.patterns.PatternParams` (what the rule language uses)."""

    def __init__(self, pattern: pat.Pattern) -> None:
        self.params = pat.PatternParams()
        self.condition = pattern.condition
        self.value = False  # on the last bar
        nodes = list(pat.walk(self.condition))
        depth = max((n.offset for n in nodes if isinstance(n, pat.Price)), default=0)
        self.bars: deque[tuple[float | None, ...]] = deque(maxlen=depth + 1)
        # each moving average at offset 0, with its history as deep as the rule reads it
        self.averages: dict[pat.MovingAverage, tuple[Any, deque[float | None]]] = {}
        for node in nodes:
            if isinstance(node, pat.MovingAverage):
                key = pat.MovingAverage(node.kind, node.source, node.length, 0)
                length = pat.average_length(node.length, self.params)
                deepest = max(
                    (
                        m.offset
                        for m in nodes
                        if isinstance(m, pat.MovingAverage)
                        and (m.kind, m.source, m.length) == (key.kind, key.source, key.length)
                    ),
                    default=0,
                )
                if key not in self.averages:
                    state: Any = (
                        deque(maxlen=length)
                        if node.kind == "sma"
                        else Smoothed(length, 2.0 / (length + 1))
                    )
                    self.averages[key] = (state, deque(maxlen=deepest + 1))

    def update(self, o: float, h: float, lo: float, c: float) -> bool:
        self.bars.appendleft(tuple(None if v != v else v for v in (o, h, lo, c)))
        for key, (state, history) in self.averages.items():
            source = self._num(key.source)
            if isinstance(state, deque):
                state.append(source)
                full = len(state) == state.maxlen and all(v is not None for v in state)
                value = sum(state) / state.maxlen if full else None  # type: ignore[arg-type]
            else:
                ema = state.update(_NAN if source is None else source)
                value = None if ema != ema else ema
            history.appendleft(value)
        self.value = self._bool(self.condition)
        return self.value

    def _num(self, node: Any) -> float | None:
        if isinstance(node, pat.Price):
            if node.offset >= len(self.bars):
                return None
            return self.bars[node.offset][["open", "high", "low", "close"].index(node.field)]
        if isinstance(node, pat.Const):
            return float(node.value)
        if isinstance(node, pat.Param):
            return float(self.params.value(node.name))
        if isinstance(node, pat.Arith):
            a, b = self._num(node.left), self._num(node.right)
            if a is None or b is None:
                return None
            return a + b if node.op == "+" else a - b if node.op == "-" else a * b
        if isinstance(node, pat.Abs):
            x = self._num(node.x)
            return None if x is None else abs(x)
        if isinstance(node, pat.Max | pat.Min):
            a, b = self._num(node.a), self._num(node.b)
            if a is None or b is None:
                return None
            return max(a, b) if isinstance(node, pat.Max) else min(a, b)
        if isinstance(node, pat.MovingAverage):
            key = pat.MovingAverage(node.kind, node.source, node.length, 0)
            history = self.averages[key][1]
            return history[node.offset] if node.offset < len(history) else None
        raise ConfigError(f"not a numeric pattern node: {node!r}")

    def _bool(self, node: Any) -> bool:
        if isinstance(node, pat.Compare):
            a, b = self._num(node.left), self._num(node.right)
            if a is None or b is None:
                return False
            return bool(pine_compare(node.op, a, b))
        if isinstance(node, pat.And):
            return all([self._bool(t) for t in node.terms])
        if isinstance(node, pat.Or):
            return any([self._bool(t) for t in node.terms])
        if isinstance(node, pat.Not):
            return not self._bool(node.term)
        if isinstance(node, pat.Available):
            return self._num(node.x) is not None
        raise ConfigError(f"not a Boolean pattern node: {node!r}")


# ---------------------------------------------------------------------------------------------
# The evaluator


class BarSignals(NamedTuple):
    """The spec's signals on one bar (at its close): the four rules, and the stop-loss,
    take-profit and trailing-stop distances in price units (NaN where the spec has none or
    during the ATR warm-up), as :func:`~aiopt_lib.strategy.spec.compile_signals` gives them. A named
    tuple: one is made per bar, and a tuple is the cheapest immutable record to make."""

    long_entry: bool
    long_exit: bool
    short_entry: bool
    short_exit: bool
    stop_distance: float
    take_distance: float
    trail_distance: float


def _ts_ns(ts: Any) -> int:
    """A bar time as integer nanoseconds since the epoch (UTC): an ``int`` is taken as ns, a naive
    ``datetime`` as UTC."""
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        delta = ts - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta // dt.timedelta(microseconds=1)) * 1_000
    if isinstance(ts, numbers.Integral):
        return int(ts)
    raise TypeError(f"ts must be a datetime or int nanoseconds, got {type(ts).__name__}")


def predictions_by_time(
    predictions: pl.DataFrame | MutableMapping[int, Mapping[str, float]] | None, columns: set[str]
) -> MutableMapping[int, Mapping[str, float]] | None:
    """A predictions frame (``ts`` and the ``columns``) as ``{bar open time ns: {column:
    probability}}`` (a later row for the same bar wins, as ``compile_signals`` keeps the last); a
    mapping or None is returned as it is."""
    if predictions is None or not isinstance(predictions, pl.DataFrame):
        return predictions
    missing = [c for c in ("ts", *sorted(columns)) if c not in predictions.columns]
    if missing:
        raise ConfigError(f"the predictions frame needs columns 'ts' and {sorted(columns)}")
    frame = predictions.select(
        pl.col("ts").dt.epoch("ns").alias("ts"),
        *(pl.col(c).cast(pl.Float64) for c in sorted(columns)),
    )
    out: dict[int, Mapping[str, float]] = {}
    for row in frame.iter_rows(named=True):  # later rows win, as keep="last" does
        out[row.pop("ts")] = {k: (_NAN if v is None else v) for k, v in row.items()}
    return out


class StreamingEvaluator:
    """A spec's rules, stops and AI gate evaluated one bar at a time (module docstring).

    ``predictions``: a frame with ``ts`` (the bar's open time) and the ``prob_buy`` /
    ``prob_sell`` / ``prob_hold`` columns the rules read, or a mutable mapping ``ts ns ->
    {"prob_buy": ...}`` that the caller (an Actor receiving the model's predictions) fills before
    the bar it belongs to is updated. Required when a rule uses ``ai_*``.

    ``update(open, high, low, close, volume, ts)`` returns the new bar's :class:`BarSignals`;
    ``values(node)`` the last value of a sub-expression (for inspection and tests).
    """

    def __init__(
        self,
        spec: StrategySpec,
        predictions: pl.DataFrame | MutableMapping[int, Mapping[str, float]] | None = None,
    ) -> None:
        self.spec = spec
        trees = {name: spec.rule(name) for name in RULES}
        self._rules = trees
        distances: dict[str, Distance | None] = {
            "stop": spec.stop_loss,
            "take": spec.take_profit,
            "trail": spec.trailing_stop,
        }
        self._distances: dict[str, tuple[str, float, Node | None]] = {}
        extra: list[Node] = []
        for key, distance in distances.items():
            if distance is None:
                continue
            value = spec.resolve_number(distance.value, "distance")
            atr: Node | None = None
            if distance.unit == "atr":
                length = spec.resolve_number(distance.atr_length, "atr_length")
                atr = Indicator("atr", (Const(float(length)),))
                extra.append(atr)
            self._distances[key] = (distance.unit, value, atr)
        # every node once, children before parents: each bar evaluates them all in this order
        self._order: list[Node] = []
        seen: set[Node] = set()
        roots = [t for t in trees.values() if t is not None] + extra
        for root in roots:
            self._post_order(root, seen)
        self._indicators: dict[tuple[str, tuple[float, ...]], StreamingIndicator] = {}
        self._patterns: dict[str, _PatternState] = {}
        ai_columns: set[str] = set()
        for node in self._order:
            if isinstance(node, Indicator):
                key = self._indicator_key(node)
                if key not in self._indicators:
                    self._indicators[key] = streaming_indicator(key[0], key[1])
            elif isinstance(node, PatternRef):
                self._patterns.setdefault(node.name, _PatternState(pat.PATTERNS[node.name]))
            elif isinstance(node, AiProbability):
                ai_columns.add(f"prob_{node.label.lower()}")
        if ai_columns and predictions is None:
            raise ConfigError(
                f"the rules use {sorted(ai_columns)} but no model predictions were given"
            )
        self._predictions = predictions_by_time(predictions, ai_columns)
        self.bars_seen = 0
        # Per bar, the nodes are evaluated by closures over integer slots of one list (compiled
        # once below): no node is hashed or dispatched on its type while the bars stream.
        self._slot = {node: i for i, node in enumerate(self._order)}
        self._v: list[Any] = [None] * len(self._order)
        self._prices = [_NAN] * len(_PRICE_FIELDS)
        self._indicator_keys = list(self._indicators)
        self._indicator_list = list(self._indicators.values())
        self._outputs: list[tuple[float, ...]] = [()] * len(self._indicator_list)
        self._pattern_list = list(self._patterns.values())
        self._prediction: list[Mapping[str, float] | None] = [None]
        self._steps: list[Callable[[], None]] = []
        for node in self._order:
            step = self._compile(node)
            if step is not None:
                self._steps.append(step)
        self._rule_slots = [
            None if tree is None else self._slot[tree] for tree in self._rules.values()
        ]
        self._distance_steps = [
            (RULE_DISTANCES.index(key), unit, amount, None if atr is None else self._slot[atr])
            for key, (unit, amount, atr) in self._distances.items()
        ]

    def _post_order(self, node: Node, seen: set[Node]) -> None:
        if node in seen:
            return
        for child in node.children():
            if not isinstance(node, Indicator):  # indicator arguments are constants
                self._post_order(child, seen)
        seen.add(node)
        self._order.append(node)

    def _indicator_key(self, node: Indicator) -> tuple[str, tuple[float, ...]]:
        args = tuple(
            float(self.spec.params[a.name]) if isinstance(a, Param) else float(a.value)  # type: ignore[attr-defined]
            for a in node.args
        )
        return _output(node.name)[0].name, args

    def value(self, node: Node) -> Any:
        """The value of ``node`` (a node of one of the spec's rules) on the last bar."""
        return self._v[self._slot[node]]

    def indicator_value(self, name: str, args: tuple[float, ...]) -> float:
        """The last value of indicator ``name`` with ``args`` (one the spec's rules use)."""
        definition, output = _output(name)
        key = (definition.name, tuple(float(a) for a in args))
        return self._outputs[self._indicator_keys.index(key)][output]

    def update(
        self, open: float, high: float, low: float, close: float, volume: float, ts: Any
    ) -> BarSignals:
        """Take one new bar (its open time ``ts``: a ``datetime`` or int ns since the epoch) and
        return its signals, computed from this bar and the bars given before it."""
        o, h, lo, c, v = float(open), float(high), float(low), float(close), float(volume)
        self.bars_seen += 1
        outputs = self._outputs
        for j, indicator in enumerate(self._indicator_list):
            outputs[j] = indicator.update(o, h, lo, c, v)
        for state in self._pattern_list:
            state.update(o, h, lo, c)
        if self._predictions is not None:
            self._prediction[0] = self._predictions.get(_ts_ns(ts))
        prices = self._prices  # the order of _PRICE_FIELDS
        prices[0], prices[1], prices[2], prices[3] = o, h, lo, c
        prices[4] = v
        prices[5] = (h + lo) / 2.0
        prices[6] = (h + lo + c) / 3.0
        prices[7] = (o + h + lo + c) / 4.0
        for step in self._steps:
            step()
        v = self._v
        rules = [False if i is None else bool(v[i]) for i in self._rule_slots]
        distances = [_NAN, _NAN, _NAN]
        for k, unit, amount, atr in self._distance_steps:
            if unit == "pips":
                distances[k] = amount * self.spec.instrument_pip_size
            elif unit == "percent":
                distances[k] = c * (amount / 100.0)
            else:
                distances[k] = v[atr] * amount
        return BarSignals(*rules, *distances)

    def _compile(self, node: Node) -> Callable[[], None] | None:
        """The step that writes ``node``'s value on each bar into its slot (children are
        evaluated before it: :attr:`_order`); None for constants, whose slot is set once."""
        v, i, slot = self._v, self._slot[node], self._slot
        if isinstance(node, (Const, BoolConst)):
            v[i] = node.value
            return None
        if isinstance(node, Param):
            v[i] = float(self.spec.params[node.name])
            return None
        if isinstance(node, PriceField):
            prices, field = self._prices, _PRICE_FIELDS.index(node.field)

            def price() -> None:
                v[i] = prices[field]

            return price
        if isinstance(node, Indicator):
            outputs = self._outputs
            j = self._indicator_keys.index(self._indicator_key(node))
            out = _output(node.name)[1]

            def indicator() -> None:
                v[i] = outputs[j][out]

            return indicator
        if isinstance(node, PatternRef):
            state = self._patterns[node.name]

            def pattern() -> None:
                v[i] = state.value

            return pattern
        if isinstance(node, AiProbability):
            cell, column = self._prediction, f"prob_{node.label.lower()}"

            def probability() -> None:
                prediction = cell[0]
                value = None if prediction is None else prediction.get(column)
                v[i] = _NAN if value is None else float(value)

            return probability
        if isinstance(node, Shift):
            fill = False if node.operand.is_bool else _NAN
            ring: deque[Any] = deque([fill] * (node.bars + 1), maxlen=node.bars + 1)
            operand = slot[node.operand]

            def shift() -> None:
                ring.append(v[operand])
                v[i] = ring[0]

            return shift
        if isinstance(node, Negate):
            operand = slot[node.operand]

            def negate() -> None:
                v[i] = -v[operand]

            return negate
        if isinstance(node, Arith):
            return _arith_step(v, i, slot[node.left], slot[node.right], node.op)
        if isinstance(node, Compare):
            return _compare_step(v, i, slot[node.left], slot[node.right], node.op)
        if isinstance(node, Cross):
            return _cross_step(v, i, slot[node.left], slot[node.right], node.up)
        if isinstance(node, Logic):
            operands = [slot[o] for o in node.operands]
            if node.op == "and":

                def all_of() -> None:
                    v[i] = all([v[k] for k in operands])

                return all_of

            def any_of() -> None:
                v[i] = any([v[k] for k in operands])

            return any_of
        if isinstance(node, Not):
            operand = slot[node.operand]

            def negation() -> None:
                v[i] = not v[operand]

            return negation
        raise TypeError(f"cannot evaluate {type(node).__name__}")


_PRICE_FIELDS = ("open", "high", "low", "close", "volume", "hl2", "hlc3", "ohlc4")
RULE_DISTANCES = ("stop", "take", "trail")


def _arith_step(v: list[Any], i: int, a: int, b: int, op: str) -> Callable[[], None]:
    if op == "+":

        def add() -> None:
            v[i] = v[a] + v[b]

        return add
    if op == "-":

        def sub() -> None:
            v[i] = v[a] - v[b]

        return sub
    if op == "*":

        def mul() -> None:
            v[i] = v[a] * v[b]

        return mul

    def div() -> None:
        x, y = v[a], v[b]
        if y == 0.0 or x != x or y != y:
            v[i] = _NAN  # Pine: x / 0 is na
            return
        out = x / y
        v[i] = out if math.isfinite(out) else _NAN

    return div


# Pine's comparisons: within PINE_EPSILON (1e-10, absolute) is equal, as in the vectorised rules
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda x, y: x - y < -PINE_EPSILON,
    "<=": lambda x, y: x <= y or x - y <= PINE_EPSILON,
    ">": lambda x, y: x - y > PINE_EPSILON,
    ">=": lambda x, y: x >= y or x - y >= -PINE_EPSILON,
    "==": lambda x, y: x == y or abs(x - y) <= PINE_EPSILON,
    # na != x is False, as in the vectorised rules
    "!=": lambda x, y: x == x and y == y and not (x == y or abs(x - y) <= PINE_EPSILON),
}


def _compare_step(v: list[Any], i: int, a: int, b: int, op: str) -> Callable[[], None]:
    compare = _COMPARISONS[op]

    def step() -> None:
        v[i] = compare(v[a], v[b])

    return step


def _cross_step(v: list[Any], i: int, a: int, b: int, up: bool) -> Callable[[], None]:
    """TradingView's crossover (``up``) / crossunder: compared with the last bar where both
    sides were defined; an undefined bar neither crosses nor resets the state, and the first
    defined bar never crosses."""
    last = [_NAN, _NAN]

    def step() -> None:
        x, y = v[a], v[b]
        if x != x or y != y:
            v[i] = False
            return
        before_x, before_y = last
        last[0], last[1] = x, y
        if before_x != before_x:
            v[i] = False
        elif up:
            v[i] = x > y and before_x <= before_y
        else:
            v[i] = x < y and before_x >= before_y

    return step
