"""The rule language: one Boolean (or numeric) expression over the bars, parsed into a small typed
tree that every engine renders: numpy here (:func:`evaluate` on a :class:`SignalContext`), bar by
bar in :mod:`aiopt_lib.strategy.streaming` (Nautilus, live), Pine in :mod:`aiopt_lib.pine.export`.

A rule is one Boolean expression (Python/Pine syntax, parsed with :mod:`ast` into :class:`Node`):

* prices ``open high low close volume hl2 hlc3 ohlc4``; numbers; parameter names (from ``params``);
* indicators: every output of the indicator registry (:mod:`aiopt_lib.features.registry`), with
  TradingView's definitions; arguments numbers or parameter names, all optional (the registry's
  defaults): ``sma(50) ema(20) rsi(14) atr(14) macd(12, 26, 9) macd_signal(...) macd_hist(...)
  bb_basis(20, 2) bb_upper(...) bb_lower(...) bb_pctb(...) bb_width(...) stoch_k(14, 3, 3)
  stoch_d(...) adx(14, 14) plus_di(14, 14) minus_di(14, 14) cci(20) wpr(14) mom(10) roc(9) obv()
  mfi(14) kc_basis(20, 2) kc_upper(...) kc_lower(...) supertrend(3, 10) supertrend_dir(...)``;
* ``x[k]``: the value ``k >= 0`` bars ago (a negative ``k`` would read the future: rejected);
* arithmetic ``+ - * /``, comparisons ``< <= > >= == !=`` (chains allowed), ``and or not``;
* templates: ``crossover(a, b)`` / ``crossunder(a, b)`` (TradingView's ``ta.crossover``: ``a > b``
  now and ``a <= b`` on the last bar where both were defined), band touches ``low_touches(x)``
  (``low <= x``) and ``high_touches(x)`` (``high >= x``), the candlestick patterns of
  :mod:`aiopt_lib.features.patterns` by name (``bullish_engulfing``, ``hammer[1]``...), and the AI gate
  ``ai_buy`` / ``ai_sell`` / ``ai_hold``: the signal model's probability of that class for the bar
  (from a predictions frame, e.g. ``ai_buy >= gate``); bars without a prediction are NaN, so a
  gate there is False;
* ``true`` / ``false``.

Missing values (indicator warm-up) compare False, as ``na`` does in Pine. A rule left out (None)
never fires. Every value at bar ``t`` uses bars ``<= t`` only; :func:`check_spec_no_lookahead`
verifies that empirically on a spec's compiled signals.

Comparisons follow TradingView's: floats within ``1e-10`` of each other are equal (``PINE_EPSILON``),
so a tie on the price grid decides alike in every engine; ``crossover`` compares exactly, as Pine's.
:func:`parse_expression` also accepts numeric expressions (``atr(14) / close``), used by the
distillation's features.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from aiopt_lib.core.bars import ensure_bars
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features.indicators import pine_compare
from aiopt_lib.features.patterns import PATTERNS, PatternParams
from aiopt_lib.features.registry import compute_indicator, lookup_output, output_names
from aiopt_lib.strategy.backtest import ExecutionConfig, fill_prices

__all__ = [
    "AI_FIELDS",
    "PRICE_FIELDS",
    "AiProbability",
    "Arith",
    "BoolConst",
    "Compare",
    "Const",
    "Cross",
    "Indicator",
    "Logic",
    "Negate",
    "Node",
    "Not",
    "Param",
    "PatternRef",
    "PriceField",
    "RuleError",
    "Shift",
    "SignalContext",
    "evaluate",
    "parse_expression",
    "parse_rule",
    "walk",
]

PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "hl2", "hlc3", "ohlc4")
AI_FIELDS: dict[str, str] = {"ai_buy": "prob_buy", "ai_sell": "prob_sell", "ai_hold": "prob_hold"}


# ---------------------------------------------------------------------------------------------
# The typed rule tree


class Node:
    """A node of a parsed rule; ``is_bool`` says whether it is a condition or a number."""

    is_bool: bool = False

    def children(self) -> tuple[Node, ...]:
        return ()


@dataclass(frozen=True)
class Const(Node):
    value: float


@dataclass(frozen=True)
class BoolConst(Node):
    value: bool
    is_bool = True


@dataclass(frozen=True)
class Param(Node):
    """A reference to ``spec.params[name]``."""

    name: str


@dataclass(frozen=True)
class PriceField(Node):
    field: str


@dataclass(frozen=True)
class Indicator(Node):
    """``name(args)``; each argument a :class:`Const` or :class:`Param`, defaults filled in."""

    name: str
    args: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True)
class AiProbability(Node):
    """The signal model's probability of ``label`` (BUY, SELL, HOLD) for the bar."""

    label: str


@dataclass(frozen=True)
class PatternRef(Node):
    name: str
    is_bool = True


@dataclass(frozen=True)
class Shift(Node):
    """``operand[bars]``: the value ``bars`` bars ago (``bars < 0`` would be the future)."""

    operand: Node
    bars: int

    @property
    def is_bool(self) -> bool:  # type: ignore[override]
        return self.operand.is_bool

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Arith(Node):
    op: Literal["+", "-", "*", "/"]
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Negate(Node):
    operand: Node

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Compare(Node):
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: Node
    right: Node
    is_bool = True

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Cross(Node):
    """``crossover(left, right)`` (``up``) or ``crossunder(left, right)``."""

    left: Node
    right: Node
    up: bool
    is_bool = True

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Logic(Node):
    op: Literal["and", "or"]
    operands: tuple[Node, ...]
    is_bool = True

    def children(self) -> tuple[Node, ...]:
        return self.operands


@dataclass(frozen=True)
class Not(Node):
    operand: Node
    is_bool = True

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


def walk(node: Node) -> Iterator[Node]:
    """``node`` and every node below it, depth first."""
    yield node
    for child in node.children():
        yield from walk(child)


class RuleError(ConfigError):
    """A rule that does not parse or does not make sense; names the rule and the column."""


_COMPARE_OPS = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}
_ARITH_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_TEMPLATES = ("crossover", "crossunder", "low_touches", "high_touches")


class _Parser:
    def __init__(self, rule: str, text: str, params: Mapping[str, float]) -> None:
        self.rule, self.text, self.params = rule, text, params

    def error(self, node: ast.AST | None, message: str) -> RuleError:
        where = f", column {node.col_offset + 1}" if node is not None else ""  # type: ignore[attr-defined]
        return RuleError(f"{self.rule} {self.text!r}{where}: {message}")

    def parse(self, condition: bool = True) -> Node:
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as exc:
            # at the end of the input Python reports offset 0 (or past the end)
            offset = exc.offset if exc.offset else len(self.text.strip()) + 1
            column = f", column {offset}"
            raise RuleError(
                f"{self.rule} {self.text!r}{column}: syntax error ({exc.msg})"
            ) from None
        node = self.visit(tree.body)
        if condition and not node.is_bool:
            raise self.error(tree.body, "a rule must be a condition (true/false), not a number")
        return node

    def number(self, node: ast.AST) -> Node:
        result = self.visit(node)
        if result.is_bool:
            raise self.error(node, "expected a number, got a condition")
        return result

    def condition(self, node: ast.AST) -> Node:
        result = self.visit(node)
        if not result.is_bool:
            raise self.error(node, "expected a condition, got a number")
        return result

    def visit(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                return BoolConst(node.value)
            if isinstance(node.value, int | float):
                return Const(float(node.value))
            raise self.error(node, f"unsupported literal {node.value!r}")
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BoolOp):
            op = "and" if isinstance(node.op, ast.And) else "or"
            return Logic(op, tuple(self.condition(v) for v in node.values))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return Not(self.condition(node.operand))
            if isinstance(node.op, ast.USub):
                operand = self.number(node.operand)
                return Const(-operand.value) if isinstance(operand, Const) else Negate(operand)
            if isinstance(node.op, ast.UAdd):
                return self.number(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
            return Arith(_ARITH_OPS[type(node.op)], self.number(node.left), self.number(node.right))
        if isinstance(node, ast.Compare):
            operands = [self.number(node.left), *(self.number(c) for c in node.comparators)]
            parts = tuple(
                Compare(_COMPARE_OPS[type(op)], operands[i], operands[i + 1])
                for i, op in enumerate(node.ops)
            )
            return parts[0] if len(parts) == 1 else Logic("and", parts)
        if isinstance(node, ast.Subscript):
            return self.shift(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.error(node, f"unsupported syntax ({type(node).__name__})")

    def name(self, node: ast.Name) -> Node:
        name = node.id
        if name in ("true", "false"):
            return BoolConst(name == "true")
        if name in PRICE_FIELDS:
            return PriceField(name)
        if name in PATTERNS:
            return PatternRef(name)
        if name in AI_FIELDS:
            return AiProbability(name.removeprefix("ai_").upper())
        if name in self.params:
            return Param(name)
        if lookup_output(name) is not None:
            raise self.error(node, f"'{name}' is an indicator: call it, e.g. {name}()")
        raise self.error(
            node,
            f"unknown name '{name}' (not a price, pattern, ai_buy/ai_sell/ai_hold or one of "
            f"the spec's params {sorted(self.params)})",
        )

    def shift(self, node: ast.Subscript) -> Node:
        index = node.slice
        bars: int | None = None
        if isinstance(index, ast.Constant) and isinstance(index.value, int):
            bars = index.value
        elif (
            isinstance(index, ast.UnaryOp)
            and isinstance(index.op, ast.USub)
            and isinstance(index.operand, ast.Constant)
            and isinstance(index.operand.value, int)
        ):
            bars = -index.operand.value
        if bars is None or isinstance(bars, bool):
            raise self.error(node, "the offset in x[k] must be a whole number of bars")
        if bars < 0:
            raise self.error(
                node, f"x[{bars}] reads {-bars} bar(s) into the future (look-ahead); use k >= 0"
            )
        operand = self.visit(node.value)
        return operand if bars == 0 else Shift(operand, bars)

    def call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Name):
            raise self.error(node, "only plain function calls are allowed")
        name = node.func.id
        if node.keywords:
            raise self.error(node, f"{name}(): keyword arguments are not supported")
        if name in _TEMPLATES:
            expected = 2 if name.startswith("cross") else 1
            if len(node.args) != expected:
                raise self.error(node, f"{name}() takes {expected} argument(s)")
            operands = [self.number(a) for a in node.args]
            if name == "low_touches":
                return Compare("<=", PriceField("low"), operands[0])
            if name == "high_touches":
                return Compare(">=", PriceField("high"), operands[0])
            return Cross(operands[0], operands[1], up=name == "crossover")
        found = lookup_output(name)
        if found is None:
            known = sorted([*output_names(), *_TEMPLATES])
            raise self.error(node, f"unknown function '{name}' (known: {', '.join(known)})")
        definition = found[0]
        if len(node.args) > len(definition.params):
            raise self.error(node, f"{name}() takes at most {len(definition.params)} argument(s)")
        args: list[Node] = []
        for i, param in enumerate(definition.params):
            arg_name, default = param.name, param.default
            if i >= len(node.args):
                args.append(Const(float(default)))
                continue
            arg = self.visit(node.args[i])
            if not isinstance(arg, Const | Param):
                raise self.error(
                    node.args[i], f"{name}(): '{arg_name}' must be a number or a param"
                )
            value = self.params[arg.name] if isinstance(arg, Param) else arg.value
            self.check_argument(node.args[i], name, arg_name, default, value)
            args.append(arg)
        return Indicator(name, tuple(args))

    def check_argument(
        self, node: ast.AST, name: str, arg_name: str, default: float, value: float
    ) -> None:
        if isinstance(default, int) and not (float(value).is_integer() and value >= 1):
            raise self.error(
                node, f"{name}(): '{arg_name}' must be a whole number >= 1, got {value}"
            )
        if not (value > 0 and math.isfinite(value)):
            raise self.error(node, f"{name}(): '{arg_name}' must be > 0, got {value}")


@functools.lru_cache(maxsize=4096)
def _parse_cached(
    rule: str, text: str, params: tuple[tuple[str, float], ...], condition: bool = True
) -> Node:
    return _Parser(rule, text, dict(params)).parse(condition)


def parse_rule(text: str, params: Mapping[str, float] | None = None, *, rule: str = "rule") -> Node:
    """Parse one rule into its typed tree; :class:`RuleError` names the rule, column and problem."""
    return _parse_cached(rule, text, tuple(sorted((params or {}).items())))


def parse_expression(
    text: str, params: Mapping[str, float] | None = None, *, name: str = "expression"
) -> Node:
    """Parse an expression of the rule language that may be a number (``atr(14) / close``) or a
    condition; :class:`RuleError` as :func:`parse_rule`."""
    return _parse_cached(name, text, tuple(sorted((params or {}).items())), False)


# ---------------------------------------------------------------------------------------------
# Evaluation on bars


@dataclass
class _BarArrays:
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


@dataclass
class SignalContext:
    """The bars (and optional model predictions) rules are evaluated on, with a cache of the
    indicators and patterns computed so far: a search reuses one context across trials, so an
    ``ema(20)`` is computed once however many trials use it.

    ``predictions`` is a frame with ``ts`` and ``prob_buy``/``prob_sell``/``prob_hold`` (the
    predictions stream of :mod:`aiopt_lib.core.streams`); a prediction at ``ts`` must come from data up
    to that bar's close.
    """

    bars: pl.DataFrame
    predictions: pl.DataFrame | None = None
    _arrays: _BarArrays = field(init=False, repr=False)
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.bars = ensure_bars(self.bars)
        columns = [self.bars.get_column(c).cast(pl.Float64).to_numpy() for c in PRICE_FIELDS[:4]]
        volume = self.bars.get_column("volume").cast(pl.Float64).to_numpy()
        self._arrays = _BarArrays(*columns, volume)

    def __len__(self) -> int:
        return self.bars.height

    def fill_prices(self, config: ExecutionConfig) -> tuple[np.ndarray, np.ndarray]:
        """:func:`aiopt_lib.strategy.backtest.fill_prices` for ``config``, computed once per spread."""
        key = ("fill", config.spread)
        if key not in self._cache:
            self._cache[key] = fill_prices(self.bars, config)
        return self._cache[key]

    def price(self, name: str) -> np.ndarray:
        a = self._arrays
        if name == "hl2":
            return (a.high + a.low) / 2.0
        if name == "hlc3":
            return (a.high + a.low + a.close) / 3.0
        if name == "ohlc4":
            return (a.open + a.high + a.low + a.close) / 4.0
        return getattr(a, name)

    def indicator(self, name: str, args: tuple[float, ...]) -> np.ndarray:
        """The output ``name`` of a registered indicator with ``args`` (computed once per
        indicator and arguments, for all of its outputs)."""
        found = lookup_output(name)
        if found is None:
            raise ConfigError(f"unknown indicator output {name!r}")
        definition, output = found
        key = (definition.name, args)
        if key not in self._cache:
            self._cache[key] = compute_indicator(definition, args, self.price)
        return self._cache[key][output]

    def pattern(self, name: str) -> np.ndarray:
        key = ("pattern", name)
        if key not in self._cache:
            expr = PATTERNS[name].to_polars(PatternParams())
            self._cache[key] = self.bars.select(expr).to_series().to_numpy().astype(bool)
        return self._cache[key]

    def ai_probability(self, label: str) -> np.ndarray:
        column = f"prob_{label.lower()}"
        key = ("ai", column)
        if key not in self._cache:
            if self.predictions is None:
                raise ConfigError(
                    f"the rule uses ai_{label.lower()} but no model predictions were given"
                )
            if column not in self.predictions.columns or "ts" not in self.predictions.columns:
                raise ConfigError(f"the predictions frame needs columns 'ts' and {column!r}")
            joined = self.bars.select("ts").join(
                self.predictions.select("ts", column).unique("ts", keep="last"),
                on="ts",
                how="left",
                maintain_order="left",
            )
            self._cache[key] = (
                joined.get_column(column).cast(pl.Float64).fill_null(np.nan).to_numpy()
            )
        return self._cache[key]


def _shift(values: np.ndarray, bars: int) -> np.ndarray:
    """``values`` ``bars`` bars later (a negative shift, which the parser never produces, reads the
    future: kept so hand-built trees behave as written and the look-ahead checker can see it)."""
    fill = False if values.dtype == np.bool_ else np.nan
    out = np.full_like(values, fill)
    n = len(values)
    if bars >= 0:
        out[bars:] = values[: max(n - bars, 0)]
    else:
        out[: n + bars] = values[-bars:]
    return out


def _cross(left: np.ndarray, right: np.ndarray, up: bool) -> np.ndarray:
    """TradingView's ``ta.crossover``/``crossunder``: compare with the last bar where both were
    defined (NaN bars are skipped, not reset); the first defined bar never crosses."""
    out = np.zeros(len(left), dtype=bool)
    valid = ~(np.isnan(left) | np.isnan(right))
    first = int(valid.argmax()) if valid.any() else len(left)
    if valid[first:].all():  # the usual case: undefined only during the warm-up
        a, b = left[first:], right[first:]
        now, before = (a > b, a <= b) if up else (a < b, a >= b)
        out[first + 1 :] = now[1:] & before[:-1]
        return out
    index = np.flatnonzero(valid)
    a, b = left[index], right[index]
    now, before = (a > b, a <= b) if up else (a < b, a >= b)
    out[index[1:]] = now[1:] & before[:-1]
    return out


def _compare(op: str, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Pine's comparison: floats within ``PINE_EPSILON`` (1e-10, absolute) of each other are
    equal, so ``a < b`` is ``a - b < -1e-10`` (TradingView, as pynecore measured it); na
    compares False, ``!=`` included (IEEE's ``NaN != x`` is True)."""
    with np.errstate(invalid="ignore"):
        if op != "!=":
            return pine_compare(op, left, right)
        return ~pine_compare("==", left, right) & ~(np.isnan(left) | np.isnan(right))


def evaluate(
    node: Node,
    context: SignalContext,
    params: Mapping[str, float],
    memo: dict[Node, np.ndarray] | None = None,
) -> np.ndarray:
    """Evaluate a rule tree on ``context``'s bars: a bool array for a condition, float for a
    number (NaN where undefined; NaN compares False, as ``na`` in Pine). ``memo`` shares equal
    subtrees between the rules of one spec (same params); its arrays must not be modified."""
    if memo is None:
        memo = {}
    if node not in memo:
        memo[node] = _evaluate(node, context, params, memo)
    return memo[node]


def _evaluate(
    node: Node, context: SignalContext, params: Mapping[str, float], memo: dict[Node, np.ndarray]
) -> np.ndarray:
    n = len(context)
    if isinstance(node, Const):
        return np.full(n, node.value)
    if isinstance(node, BoolConst):
        return np.full(n, node.value)
    if isinstance(node, Param):
        return np.full(n, float(params[node.name]))
    if isinstance(node, PriceField):
        return context.price(node.field)
    if isinstance(node, Indicator):
        args = tuple(
            float(params[a.name]) if isinstance(a, Param) else a.value  # type: ignore[attr-defined]
            for a in node.args
        )
        return context.indicator(node.name, args)
    if isinstance(node, PatternRef):
        return context.pattern(node.name)
    if isinstance(node, AiProbability):
        return context.ai_probability(node.label)
    if isinstance(node, Shift):
        return _shift(evaluate(node.operand, context, params, memo), node.bars)
    if isinstance(node, Negate):
        return -evaluate(node.operand, context, params, memo)
    if isinstance(node, Arith):
        left = evaluate(node.left, context, params, memo)
        right = evaluate(node.right, context, params, memo)
        with np.errstate(divide="ignore", invalid="ignore"):
            if node.op == "+":
                return left + right
            if node.op == "-":
                return left - right
            if node.op == "*":
                return left * right
            out = left / right
            out[~np.isfinite(out)] = np.nan  # Pine: x / 0 is na
            return out
    if isinstance(node, Compare):
        left = evaluate(node.left, context, params, memo)
        right = evaluate(node.right, context, params, memo)
        return _compare(node.op, left, right)
    if isinstance(node, Cross):
        left = evaluate(node.left, context, params, memo)
        right = evaluate(node.right, context, params, memo)
        return _cross(left, right, node.up)
    if isinstance(node, Logic):
        values = [evaluate(o, context, params, memo) for o in node.operands]
        reduce = np.logical_and if node.op == "and" else np.logical_or
        return functools.reduce(reduce, values)
    if isinstance(node, Not):
        return ~evaluate(node.operand, context, params, memo)
    raise TypeError(f"cannot evaluate {type(node).__name__}")
