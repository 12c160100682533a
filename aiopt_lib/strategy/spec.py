"""``StrategySpec``: one declarative, versioned description of a trading strategy, from the search
to the vectorised backtest, Nautilus and Pine Script.

A spec names the instrument and timeframe, a few named ``params`` (the numbers a search tunes),
four rules (``long_entry``, ``long_exit``, ``short_entry``, ``short_exit``) written as short
Pine-like expressions over the bars, the sides allowed, the position size, the stop-loss,
take-profit and trailing stop, and the costs::

    spec = StrategySpec(
        name="ema_cross",
        params={"fast": 12, "slow": 26, "stop_atr": 2.0},
        long_entry="crossover(ema(fast), ema(slow))",
        short_entry="crossunder(ema(fast), ema(slow))",
        stop_loss=Distance(unit="atr", value="stop_atr"),
    )
    result = backtest(bars, spec)          # aiopt_lib.strategy.backtest.BacktestResult

Rule language
-------------
A rule is one Boolean expression (Python/Pine syntax, parsed with :mod:`ast` into a small typed
tree, :class:`Node`, that every target renders: numpy here, Pine in #8, Nautilus in #7):

* prices ``open high low close volume hl2 hlc3 ohlc4``; numbers; parameter names (from ``params``);
* indicators with TradingView's definitions (:mod:`aiopt_lib.features.indicators`), arguments numbers or
  parameter names, all optional: ``sma(50) ema(20) rsi(14) atr(14) macd(12, 26, 9)
  macd_signal(...) macd_hist(...) bb_basis(20, 2) bb_upper(...) bb_lower(...) bb_pctb(...)
  bb_width(...) stoch_k(14, 3, 3) stoch_d(...) adx(14, 14) plus_di(14, 14) minus_di(14, 14)``;
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

Stops and costs: :class:`Distance` gives the stop-loss / take-profit / trailing-stop distance in
``pips``, ``percent`` of the signal bar's close, or ``atr`` multiples of ``atr(atr_length)`` at the
signal bar; :class:`Costs` the spread (``"data"``: the bars' bid/ask or ``spread`` columns; or a
fixed number of pips, charged as TradingView would: half of it as slippage), commission and
slippage. Fills follow :mod:`aiopt_lib.strategy.backtest`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from aiopt_lib.core.atomic import write_text_atomic
from aiopt_lib.core.bars import ensure_bars, parse_timeframe
from aiopt_lib.core.errors import ConfigError, validation_problems
from aiopt_lib.data.dukascopy import POINT_VALUES
from aiopt_lib.features import indicators as ind
from aiopt_lib.features.patterns import PATTERNS, PatternParams
from aiopt_lib.strategy.backtest import (
    BacktestResult,
    ExecutionConfig,
    OrderSignals,
    fill_prices,
    run_backtest,
)

if TYPE_CHECKING:
    from aiopt_lib.features.lookahead import LookaheadReport

SCHEMA_VERSION = 1
RULES: tuple[str, ...] = ("long_entry", "long_exit", "short_entry", "short_exit")
PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "hl2", "hlc3", "ohlc4")
AI_FIELDS: dict[str, str] = {"ai_buy": "prob_buy", "ai_sell": "prob_sell", "ai_hold": "prob_hold"}


# ---------------------------------------------------------------------------------------------
# Indicator table: name -> (group, defaults, output index); a group is computed once for all
# of its outputs.


@dataclass(frozen=True)
class IndicatorDef:
    """One rule-language indicator: the kernel ``group`` it comes from, the names and defaults
    of its arguments (``int`` lengths or ``float`` multipliers), and which output it is."""

    group: str
    arguments: tuple[tuple[str, int | float], ...]
    output: int = 0


INDICATORS: dict[str, IndicatorDef] = {
    "sma": IndicatorDef("sma", (("length", 50),)),
    "ema": IndicatorDef("ema", (("length", 20),)),
    "rsi": IndicatorDef("rsi", (("length", 14),)),
    "atr": IndicatorDef("atr", (("length", 14),)),
    **{
        name: IndicatorDef("macd", (("fast", 12), ("slow", 26), ("signal", 9)), i)
        for i, name in enumerate(("macd", "macd_signal", "macd_hist"))
    },
    **{
        name: IndicatorDef("bb", (("length", 20), ("mult", 2.0)), i)
        for i, name in enumerate(("bb_basis", "bb_upper", "bb_lower", "bb_pctb", "bb_width"))
    },
    **{
        name: IndicatorDef("stoch", (("k_length", 14), ("k_smoothing", 3), ("d_length", 3)), i)
        for i, name in enumerate(("stoch_k", "stoch_d"))
    },
    **{
        name: IndicatorDef("dmi", (("di_length", 14), ("adx_smoothing", 14)), i)
        for i, name in enumerate(("plus_di", "minus_di", "adx"))
    },
}


def _compute_group(group: str, args: tuple[float, ...], bars: _BarArrays) -> tuple[np.ndarray, ...]:
    h, lo, c = bars.high, bars.low, bars.close
    if group == "sma":
        return (ind.sma(c, int(args[0])),)
    if group == "ema":
        return (ind.ema(c, int(args[0])),)
    if group == "rsi":
        return (ind.rsi(c, int(args[0])),)
    if group == "atr":
        return (ind.atr(h, lo, c, int(args[0])),)
    if group == "macd":
        return ind.macd(c, int(args[0]), int(args[1]), int(args[2]))
    if group == "bb":
        return ind.bollinger(c, int(args[0]), float(args[1]))
    if group == "stoch":
        return ind.stoch(h, lo, c, int(args[0]), int(args[1]), int(args[2]))
    if group == "dmi":
        return ind.dmi(h, lo, c, int(args[0]), int(args[1]))
    raise AssertionError(group)  # the table above has no other group


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

    def parse(self) -> Node:
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
        if not node.is_bool:
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
        if name in INDICATORS:
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
        if name not in INDICATORS:
            known = sorted([*INDICATORS, *_TEMPLATES])
            raise self.error(node, f"unknown function '{name}' (known: {', '.join(known)})")
        definition = INDICATORS[name]
        if len(node.args) > len(definition.arguments):
            raise self.error(
                node, f"{name}() takes at most {len(definition.arguments)} argument(s)"
            )
        args: list[Node] = []
        for i, (arg_name, default) in enumerate(definition.arguments):
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
def _parse_cached(rule: str, text: str, params: tuple[tuple[str, float], ...]) -> Node:
    return _Parser(rule, text, dict(params)).parse()


def parse_rule(text: str, params: Mapping[str, float] | None = None, *, rule: str = "rule") -> Node:
    """Parse one rule into its typed tree; :class:`RuleError` names the rule, column and problem."""
    return _parse_cached(rule, text, tuple(sorted((params or {}).items())))


# ---------------------------------------------------------------------------------------------
# The spec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_M = TypeVar("_M", bound=BaseModel)


class Distance(_Frozen):
    """A price distance: ``value`` pips, percent of the signal bar's close, or multiples of
    ``atr(atr_length)`` at the signal bar. ``value`` may name a spec parameter."""

    unit: Literal["pips", "percent", "atr"]
    value: float | str
    atr_length: int | str = 14


class Costs(_Frozen):
    """Trading costs: commission per fill as percent of notional and/or money per unit;
    slippage in ticks on market and stop fills; and the spread:

    * ``"data"`` (default): fills on each side of the bars' bid/ask columns (buys at the ask,
      sells at the bid, stops and takes triggered on the exit side), else their per-bar ``spread``
      column around the main price, else none;
    * a fixed number of pips: TradingView's cost model, which has no spread (so a Pine export
      trades exactly the same): half the spread, rounded to whole ticks, is added to the slippage
      of every market and stop fill (entries, signal exits, reversals, stop-losses, trailing
      stops), orders trigger on the bars' prices, and a take-profit (a limit order) fills at its
      level.
    """

    spread: Literal["data"] | float = "data"
    commission_percent: float = 0.0
    commission_per_unit: float = 0.0
    slippage_ticks: int = 0

    @field_validator("spread", "commission_percent", "commission_per_unit", "slippage_ticks")
    @classmethod
    def _non_negative(cls, value: Any) -> Any:
        if value != "data" and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"must be >= 0, got {value!r}")
        return value


class StrategySpec(_Frozen):
    """One strategy, fully specified (module docstring for the rule language).

    ``params`` hold the tunable numbers that rules and distances refer to by name; a search
    changes only them (:meth:`with_params`). ``tick_size`` and ``pip_size`` default from the
    instrument (Dukascopy's point values; a pip is ten ticks). Serialise with :meth:`to_json` /
    :meth:`to_yaml`, read back with :meth:`from_json` / :meth:`from_yaml` / :func:`load_spec`.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = "strategy"
    description: str = ""
    instrument: str = "EURUSD"
    timeframe: str = "1h"
    params: dict[str, int | float] = {}
    long_entry: str | None = None
    long_exit: str | None = None
    short_entry: str | None = None
    short_exit: str | None = None
    direction: Literal["long", "short", "both"] = "both"
    quantity: float = 100_000.0
    initial_capital: float = 100_000.0
    stop_loss: Distance | None = None
    take_profit: Distance | None = None
    trailing_stop: Distance | None = None
    costs: Costs = Costs()
    fill: Literal["next_open", "close"] = "next_open"
    tick_size: float | None = None
    pip_size: float | None = None

    @field_validator("params", mode="before")
    @classmethod
    def _no_bool_params(cls, params: Any) -> Any:
        # before pydantic turns True into 1
        if isinstance(params, Mapping):
            for key, value in params.items():
                if isinstance(value, bool):
                    raise ValueError(f"param {key!r} must be a finite number, got {value!r}")
        return params

    @field_validator("params")
    @classmethod
    def _check_params(cls, params: dict[str, int | float]) -> dict[str, int | float]:
        for key, value in params.items():
            if not key.isidentifier() or key in PRICE_FIELDS or key in PATTERNS:
                raise ValueError(f"param name {key!r} is not a free identifier")
            if key in AI_FIELDS or key in INDICATORS or key in ("true", "false"):
                raise ValueError(f"param name {key!r} is reserved")
            if isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"param {key!r} must be a finite number, got {value!r}")
        return params

    @field_validator("timeframe")
    @classmethod
    def _check_timeframe(cls, value: str) -> str:
        parse_timeframe(value)
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> StrategySpec:
        for rule in RULES:
            text = getattr(self, rule)
            if text is not None:
                parse_rule(text, self.params, rule=rule)
        for side in ("long", "short"):
            if self.direction == side and getattr(self, f"{side}_entry") is None:
                raise ConfigError(f"direction is {side!r} but {side}_entry is not set")
        if not (self.long_entry or self.short_entry):
            raise ConfigError("a strategy needs long_entry or short_entry")
        for which in ("stop_loss", "take_profit", "trailing_stop"):
            distance = getattr(self, which)
            if distance is not None:
                value = self._number(distance.value, f"{which}.value")
                if not value > 0:
                    raise ConfigError(f"{which}: the distance must be > 0, got {value}")
                length = self._number(distance.atr_length, f"{which}.atr_length")
                if not (float(length).is_integer() and length >= 1):
                    raise ConfigError(f"{which}: atr_length must be a whole number >= 1")
        if not (self.quantity > 0 and self.initial_capital > 0):
            raise ConfigError("quantity and initial_capital must be > 0")
        self.execution_config()  # tick size and instrument checks
        return self

    def _number(self, value: float | str, where: str) -> float:
        if isinstance(value, str):
            if value not in self.params:
                raise ConfigError(
                    f"{where}: unknown param {value!r} (params: {sorted(self.params)})"
                )
            return float(self.params[value])
        return float(value)

    # -- derived values -------------------------------------------------------------------

    def rule(self, name: str) -> Node | None:
        """The parsed tree of rule ``name`` (one of :data:`RULES`), None when not set."""
        text = getattr(self, name)
        return None if text is None else parse_rule(text, self.params, rule=name)

    @property
    def instrument_tick_size(self) -> float:
        """The price increment: ``tick_size`` or 1 / the instrument's Dukascopy point value."""
        if self.tick_size is not None:
            return self.tick_size
        key = self.instrument.replace("/", "").upper()
        if key not in POINT_VALUES:
            raise ConfigError(
                f"instrument {self.instrument!r} has no known tick size; set tick_size and pip_size"
            )
        return 1.0 / POINT_VALUES[key]

    @property
    def instrument_pip_size(self) -> float:
        """A pip: ``pip_size`` or ten ticks (FX convention for 5- and 3-digit quotes)."""
        return self.pip_size if self.pip_size is not None else 10.0 * self.instrument_tick_size

    @property
    def half_spread_ticks(self) -> int:
        """Half a fixed spread in whole ticks (rounded half up; 0 for ``spread: data``): the extra
        slippage a fixed spread costs each market and stop fill (:class:`Costs`)."""
        spread = self.costs.spread
        if spread == "data":
            return 0
        half = float(spread) * self.instrument_pip_size / 2.0 / self.instrument_tick_size
        return math.floor(half + 0.5 + 1e-9)

    def execution_config(self) -> ExecutionConfig:
        """The backtest engine's settings for this spec (a fixed spread as extra slippage on the
        bars' main prices, see :class:`Costs`)."""
        fixed = self.costs.spread != "data"
        return ExecutionConfig(
            tick_size=self.instrument_tick_size,
            quantity=self.quantity,
            initial_capital=self.initial_capital,
            commission_per_unit=self.costs.commission_per_unit,
            commission_percent=self.costs.commission_percent,
            slippage_ticks=self.costs.slippage_ticks + self.half_spread_ticks,
            spread=0.0 if fixed else None,  # 0.0: the main prices, even if bid/ask are there
            fill=self.fill,
            direction=self.direction,
        )

    def with_params(self, **values: float) -> StrategySpec:
        """A copy with some ``params`` replaced (unknown names are an error); validated again."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise ConfigError(f"unknown param(s) {unknown}; the spec has {sorted(self.params)}")
        return self.model_copy(update={"params": {**self.params, **values}}).revalidated()

    def revalidated(self) -> StrategySpec:
        """The same spec built again through validation (after :meth:`model_copy`)."""
        return type(self).model_validate(self.model_dump())

    def fingerprint(self) -> str:
        """A short hash of the canonical JSON: equal specs, equal fingerprints."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def to_json(self, *, indent: int | None = 2) -> str:
        """The spec as JSON (every field, defaults included, so a file says everything)."""
        return self.model_dump_json(indent=indent)

    def to_yaml(self) -> str:
        """The spec as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "spec") -> StrategySpec:
        """Build from a mapping; a :class:`ConfigError` names ``source`` and each bad field."""
        return validate_model(cls, data, source=source, what="strategy spec")

    @classmethod
    def from_json(cls, text: str, *, source: str = "spec") -> StrategySpec:
        """Read a spec written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return cls.from_mapping(_mapping(data, source), source=source)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "spec") -> StrategySpec:
        """Read a spec written by :meth:`to_yaml` (or by hand)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({exc})") from None
        return cls.from_mapping(_mapping(data, source), source=source)


def validate_model(model: type[_M], data: Mapping[str, Any], *, source: str, what: str) -> _M:
    """``model`` built from ``data``; every problem becomes one :class:`ConfigError` that names
    ``source`` and each bad field (pydantic's errors and the models' own ConfigErrors alike)."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}: {message}" if where else message
            for where, message in validation_problems(exc)
        )
        raise ConfigError(f"{source}: invalid {what}: {problems}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _mapping(data: Any, source: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a strategy spec must be a mapping, got {type(data).__name__}")
    return data


def load_spec(path: str | Path) -> StrategySpec:
    """Read a spec from a ``.json`` or ``.yaml``/``.yml`` file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        return StrategySpec.from_json(text, source=str(path))
    return StrategySpec.from_yaml(text, source=str(path))


def save_spec(spec: StrategySpec, path: str | Path) -> Path:
    """Write ``spec`` as JSON or YAML (by the suffix), atomically."""
    path = Path(path)
    text = spec.to_json() if path.suffix.lower() == ".json" else spec.to_yaml()
    write_text_atomic(path, text)
    return path


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
        definition = INDICATORS[name]
        key = (definition.group, args)
        if key not in self._cache:
            self._cache[key] = _compute_group(definition.group, args, self._arrays)
        return self._cache[key][definition.output]

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


_NUMPY_COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


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
        with np.errstate(invalid="ignore"):
            result = _NUMPY_COMPARE[node.op](left, right)
        if node.op == "!=":  # NaN != x is True in IEEE arithmetic, but na compares False in Pine
            result &= ~(np.isnan(left) | np.isnan(right))
        return result
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


def _distance(
    spec: StrategySpec, distance: Distance | None, context: SignalContext
) -> np.ndarray | None:
    if distance is None:
        return None
    value = spec._number(distance.value, "distance")
    if distance.unit == "pips":
        return np.full(len(context), value * spec.instrument_pip_size)
    if distance.unit == "percent":
        return context.price("close") * (value / 100.0)
    length = int(spec._number(distance.atr_length, "atr_length"))
    return context.indicator("atr", (float(length),)) * value


def _context(bars: pl.DataFrame | SignalContext, predictions: pl.DataFrame | None) -> SignalContext:
    if isinstance(bars, SignalContext):
        if predictions is not None:
            raise ConfigError("give the predictions to the SignalContext, not with it")
        return bars
    return SignalContext(bars, predictions)


def compile_signals(
    spec: StrategySpec,
    bars: pl.DataFrame | SignalContext,
    predictions: pl.DataFrame | None = None,
) -> OrderSignals:
    """The spec's rules evaluated on every bar's close: the engine's :class:`OrderSignals`.

    ``bars`` may be a :class:`SignalContext` to reuse computed indicators across specs.
    Distances are NaN during the ATR warm-up (no stop there).
    """
    context = _context(bars, predictions)
    n = len(context)
    never = np.zeros(n, dtype=bool)
    arrays = {}
    memo: dict[Node, np.ndarray] = {}
    for name in RULES:
        tree = spec.rule(name)
        arrays[name] = never if tree is None else evaluate(tree, context, spec.params, memo)
    return OrderSignals(
        long_entry=arrays["long_entry"],
        long_exit=arrays["long_exit"],
        short_entry=arrays["short_entry"],
        short_exit=arrays["short_exit"],
        stop_distance=_distance(spec, spec.stop_loss, context),
        take_distance=_distance(spec, spec.take_profit, context),
        trail_distance=_distance(spec, spec.trailing_stop, context),
    )


def backtest(
    bars: pl.DataFrame | SignalContext,
    spec: StrategySpec,
    predictions: pl.DataFrame | None = None,
) -> BacktestResult:
    """Run ``spec`` on ``bars`` with the vectorised engine (:func:`aiopt_lib.strategy.backtest.run_backtest`):
    trades, per-bar equity and metrics."""
    context = _context(bars, predictions)
    signals = compile_signals(spec, context)
    config = spec.execution_config()
    prices = context.fill_prices(config)
    return run_backtest(context.bars, signals, config, prices=prices, validate=False)


def signals_frame(
    spec: StrategySpec, bars: pl.DataFrame, predictions: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The compiled signals as a frame (``ts`` + one column per rule and distance), for charts
    and for :func:`aiopt_lib.features.lookahead.check_no_lookahead`."""
    signals = compile_signals(spec, bars, predictions)
    columns: dict[str, Any] = {"ts": bars.get_column("ts")}
    for name in RULES:
        columns[name] = getattr(signals, name)
    for name in ("stop_distance", "take_distance", "trail_distance"):
        value = getattr(signals, name)
        if value is not None:
            columns[name] = value
    return pl.DataFrame(columns)


def check_spec_no_lookahead(
    spec: StrategySpec,
    bars: pl.DataFrame,
    predictions: pl.DataFrame | Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    **options: Any,
) -> LookaheadReport:
    """Check empirically that every compiled signal of ``spec`` at bar ``t`` depends on bars
    ``<= t`` only (the checker of :mod:`aiopt_lib.features.lookahead` applied to :func:`signals_frame`).

    ``predictions`` may be a function ``bars -> predictions frame`` (a signal model applied to the
    bars): it is re-run on every truncated or altered history, so a model that peeks at later bars
    is caught too. Returns the report; raises :class:`aiopt_lib.features.lookahead.LookaheadError` on a
    leak; ``options`` go to :func:`aiopt_lib.features.lookahead.check_no_lookahead`.
    """
    from aiopt_lib.features.lookahead import check_no_lookahead

    def signals_of(frame: pl.DataFrame) -> pl.DataFrame:
        frame_predictions = predictions(frame) if callable(predictions) else predictions
        return signals_frame(spec, frame, frame_predictions).drop("ts")

    return check_no_lookahead(signals_of, bars, **options)


__all__ = [
    "AI_FIELDS",
    "INDICATORS",
    "PRICE_FIELDS",
    "RULES",
    "Costs",
    "Distance",
    "Node",
    "RuleError",
    "SignalContext",
    "StrategySpec",
    "backtest",
    "check_spec_no_lookahead",
    "compile_signals",
    "evaluate",
    "load_spec",
    "parse_rule",
    "save_spec",
    "signals_frame",
    "validate_model",
    "walk",
]
