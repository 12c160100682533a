"""Candlestick patterns, each defined once as a small rule tree and rendered to polars and Pine Script.

A pattern is an explicit numeric rule over the OHLC of the last ``k`` bars (``k`` = 1, 2 or 3), written
in a tiny expression language of frozen dataclasses:

* price references ``O(k)``, ``H(k)``, ``L(k)``, ``C(k)``: open/high/low/close of the bar ``k`` bars
  back (offset 0 = the current bar t, 1 = the previous bar ...). Offsets are never negative, so a rule
  cannot look ahead by construction;
* derived quantities built from them: :func:`body`, :func:`candle_range`, :func:`upper_wick`,
  :func:`lower_wick`, :func:`body_mid`, :func:`body_top`, :func:`body_bottom`;
* arithmetic (``+ - *``; no division, so a zero-range bar cannot divide by zero: ratios are written
  as multiplications, ``body <= 0.1 * range``), ``Abs``, ``Max``, ``Min``, float constants;
* named thresholds ``P("doji_body")``, resolved from :class:`PatternParams` when rendering;
* a moving-average node (:class:`MovingAverage`: SMA, or EMA equal to TradingView's ``ta.ema``) of any
  numeric expression, read ``offset`` bars back, for the trend context;
* comparisons (``< <= > >=``), ``&`` (and), ``|`` (or), ``~`` (not).

Renderers walk the same tree, one per target: :meth:`Pattern.to_polars` (a Boolean ``pl.Expr``; bar
t reads bars t .. t-k via ``shift(k)`` with k >= 0 and rolling means over past bars only),
:meth:`Pattern.to_pine` (Pine Script v5/v6 expression text: ``close[1]``, ``math.abs``,
``ta.sma(close, 10)[1]``, float literals) and :meth:`Pattern.to_text` (the same text with the
threshold names instead of their values, for reading). :func:`pine_indicator` emits a whole Pine v6
indicator with the moving averages hoisted into variables (Pine v6 evaluates ``and``/``or`` lazily, so
a ``ta.*`` call inside them would not run on every bar).

Availability (warm-up)
----------------------
A pattern is False on a bar where any value it reads is not available yet: the first ``k`` bars
(no previous bars) and the bars before its moving averages have ``length`` values (``ta.sma`` /
``ta.ema`` are na there, polars ``rolling_mean`` is null). Every rendering makes this explicit with a
guard in front of the rule, ``not na(close[k]) and not na(ta.sma(close, 10)[k]) and (...)`` in Pine,
``is_not_null()`` in polars, so both targets agree whatever a target does with na inside comparisons
(polars additionally turns a comparison with null into False, as Pine v6 does). NaN prices are read as
missing (polars ``fill_nan(None)``), like Pine's na. Canonical bars hold neither.

Trend context
-------------
Reversal patterns need the trend they reverse (Nison). ``downtrend`` at offset ``k`` (the bar just
before the pattern's first candle) is ``C(k) < SMA(close, trend_length)[k]``: the close leading into
the pattern is below its simple moving average; ``uptrend`` is the mirror. SMA is used rather than EMA
because it is exact in both targets without a warm-up convention (``ta.sma`` == ``rolling_mean``).
Only a close exactly equal to its average is decided by rounding (polars sums with a running
window; TradingView does not document its order): on real prices this does not occur (none in the
2017 sample), on prices on a coarse tick grid it can.
The :class:`MovingAverage` node also supports ``kind="ema"``, computed by
:func:`aiopt_lib.features.indicators.ema` (equal to TradingView's ``ta.ema``), for rules of your own.

FX adaptations
--------------
FX trades around the clock, so a bar opens where the previous one closed and the opening gaps of
equity definitions (piercing line below the prior low, stars gapping away from the first body,
shooting star gapping up) almost never occur; the rules here ask for "at or beyond" the prior close
instead of a gap, as noted in each description. A bar with no range (high == low) is no candle: every
single-bar shape requires ``range > 0``.

Marubozu is two patterns, ``bullish_marubozu`` and ``bearish_marubozu``, so that every pattern has one
direction.

Use::

    bars = add_patterns(bars)                    # Boolean columns pat_doji, pat_hammer, ...
    bars = add_patterns(bars, ["hammer"], PatternParams(long_shadow=3.0))
    PATTERNS["hammer"].to_pine(PatternParams())  # "(not na(close[1]) and ...)"
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from aiopt_lib.core.bars import PRICE_COLUMNS, ensure_bars
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features.indicators import ema, pine_compare

__all__ = [
    "PATTERNS",
    "PatternParams",
    "add_patterns",
    "average_length",
    "pattern_columns",
    "pine_compare",
]

PriceField = Literal["open", "high", "low", "close"]
Direction = Literal["bullish", "bearish", "neutral"]
ArithOp = Literal["+", "-", "*"]
CompareOp = Literal["<", "<=", ">", ">="]
MAKind = Literal["sma", "ema"]

COLUMN_PREFIX = "pat_"


# ---------------------------------------------------------------------------------------------
# The rule tree


class Num:
    """A numeric node of the rule tree; Python operators build new nodes (``C(0) - O(0)``)."""

    __slots__ = ()

    def __add__(self, other: Num | float) -> Arith:
        return Arith("+", self, _num(other))

    def __radd__(self, other: float) -> Arith:
        return Arith("+", _num(other), self)

    def __sub__(self, other: Num | float) -> Arith:
        return Arith("-", self, _num(other))

    def __rsub__(self, other: float) -> Arith:
        return Arith("-", _num(other), self)

    def __mul__(self, other: Num | float) -> Arith:
        return Arith("*", self, _num(other))

    def __rmul__(self, other: float) -> Arith:
        return Arith("*", _num(other), self)

    def __lt__(self, other: Num | float) -> Compare:
        return Compare("<", self, _num(other))

    def __le__(self, other: Num | float) -> Compare:
        return Compare("<=", self, _num(other))

    def __gt__(self, other: Num | float) -> Compare:
        return Compare(">", self, _num(other))

    def __ge__(self, other: Num | float) -> Compare:
        return Compare(">=", self, _num(other))


class Bool:
    """A Boolean node of the rule tree; ``&``, ``|`` and ``~`` build And / Or / Not nodes."""

    __slots__ = ()

    def __and__(self, other: Bool) -> And:
        # chains stay flat: a & b & c is one And of three terms (and/or are exact, order is free)
        return And((*_terms(self, And), *_terms(other, And)))

    def __or__(self, other: Bool) -> Or:
        return Or((*_terms(self, Or), *_terms(other, Or)))

    def __invert__(self) -> Not:
        return Not(self)

    def __bool__(self) -> bool:
        # `a and b` on rule nodes would silently pick one operand; the tree needs `a & b`
        raise TypeError("a rule node has no truth value: combine rules with &, | and ~")


@dataclass(frozen=True)
class Price(Num):
    """``field`` of the bar ``offset`` bars back (0 = the current bar); offsets are never negative."""

    field: PriceField
    offset: int = 0

    def __post_init__(self) -> None:
        if self.field not in PRICE_COLUMNS:
            raise ConfigError(f"price field must be one of {PRICE_COLUMNS}, got {self.field!r}")
        if not isinstance(self.offset, int) or self.offset < 0:
            raise ConfigError(
                f"bar offset must be an int >= 0 (no look-ahead), got {self.offset!r}"
            )


@dataclass(frozen=True)
class Const(Num):
    """A float literal."""

    value: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.value):
            raise ConfigError(f"a constant must be finite, got {self.value!r}")


@dataclass(frozen=True)
class Param(Num):
    """A named threshold, a field of :class:`PatternParams`, resolved when the rule is rendered."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in _PARAM_NAMES:
            raise ConfigError(f"unknown threshold {self.name!r}; known: {sorted(_PARAM_NAMES)}")


@dataclass(frozen=True)
class Arith(Num):
    """``left op right`` for ``op`` in ``+ - *`` (no division: ratios are written as products)."""

    op: ArithOp
    left: Num
    right: Num

    def __post_init__(self) -> None:
        if self.op not in ("+", "-", "*"):
            raise ConfigError(f"arithmetic operator must be +, - or *, got {self.op!r}")


@dataclass(frozen=True)
class Abs(Num):
    """``|x|``."""

    x: Num


@dataclass(frozen=True)
class Max(Num):
    """The larger of two values."""

    a: Num
    b: Num


@dataclass(frozen=True)
class Min(Num):
    """The smaller of two values."""

    a: Num
    b: Num


@dataclass(frozen=True)
class MovingAverage(Num):
    """A moving average of ``source`` over ``length`` bars, read ``offset`` bars back.

    ``kind="sma"``: the mean of the last ``length`` values (polars ``rolling_mean``, Pine
    ``ta.sma``); ``kind="ema"``: TradingView's ``ta.ema`` (seeded with the SMA of the first ``length``
    values), computed by :func:`aiopt_lib.features.indicators.ema`. Missing (na) before ``length`` values.
    ``length`` is an int or the name of an int field of :class:`PatternParams` (as a ``Param``).
    """

    kind: MAKind
    source: Num
    length: Param | int
    offset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("sma", "ema"):
            raise ConfigError(f"moving average kind must be 'sma' or 'ema', got {self.kind!r}")
        if isinstance(self.length, int) and self.length < 1:
            raise ConfigError(f"moving average length must be >= 1, got {self.length}")
        if not isinstance(self.offset, int) or self.offset < 0:
            raise ConfigError(
                f"bar offset must be an int >= 0 (no look-ahead), got {self.offset!r}"
            )


@dataclass(frozen=True)
class Compare(Bool):
    """``left op right`` for ``op`` in ``< <= > >=``."""

    op: CompareOp
    left: Num
    right: Num

    def __post_init__(self) -> None:
        if self.op not in ("<", "<=", ">", ">="):
            raise ConfigError(f"comparison must be <, <=, > or >=, got {self.op!r}")


@dataclass(frozen=True)
class And(Bool):
    """All of ``terms``."""

    terms: tuple[Bool, ...]

    def __post_init__(self) -> None:
        if not self.terms or not all(isinstance(t, Bool) for t in self.terms):
            raise ConfigError(f"{type(self).__name__} needs one or more rules, got {self.terms!r}")


@dataclass(frozen=True)
class Or(Bool):
    """Any of ``terms``."""

    terms: tuple[Bool, ...]

    def __post_init__(self) -> None:
        if not self.terms or not all(isinstance(t, Bool) for t in self.terms):
            raise ConfigError(f"{type(self).__name__} needs one or more rules, got {self.terms!r}")


@dataclass(frozen=True)
class Not(Bool):
    """The negation of ``term``."""

    term: Bool


@dataclass(frozen=True)
class Available(Bool):
    """True where ``x`` has a value (not na / null): the warm-up guard a pattern puts first."""

    x: Num


Node = Num | Bool


def _terms(node: Bool, kind: type[And] | type[Or]) -> tuple[Bool, ...]:
    if not isinstance(node, Bool):
        raise ConfigError(f"expected a rule (comparison, &, |, ~), got {node!r}")
    return node.terms if isinstance(node, kind) else (node,)


def _num(value: Num | float) -> Num:
    if isinstance(value, Num):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a rule node or a number, got {value!r}")
    return Const(float(value))


# Price references as in the candlestick literature: O(1) is the previous bar's open.
def O(k: int = 0) -> Price:  # noqa: E743, N802
    """The open of the bar ``k`` bars back."""
    return Price("open", k)


def H(k: int = 0) -> Price:  # noqa: N802
    """The high of the bar ``k`` bars back."""
    return Price("high", k)


def L(k: int = 0) -> Price:  # noqa: N802
    """The low of the bar ``k`` bars back."""
    return Price("low", k)


def C(k: int = 0) -> Price:  # noqa: N802
    """The close of the bar ``k`` bars back."""
    return Price("close", k)


def P(name: str) -> Param:  # noqa: N802
    """The named threshold ``name`` (a field of :class:`PatternParams`)."""
    return Param(name)


def body(k: int = 0) -> Num:
    """The real body ``|close - open|`` of bar ``k``."""
    return Abs(C(k) - O(k))


def candle_range(k: int = 0) -> Num:
    """The range ``high - low`` of bar ``k``."""
    return H(k) - L(k)


def upper_wick(k: int = 0) -> Num:
    """The upper shadow ``high - max(open, close)`` of bar ``k``."""
    return H(k) - Max(O(k), C(k))


def lower_wick(k: int = 0) -> Num:
    """The lower shadow ``min(open, close) - low`` of bar ``k``."""
    return Min(O(k), C(k)) - L(k)


def body_top(k: int = 0) -> Num:
    """``max(open, close)`` of bar ``k``."""
    return Max(O(k), C(k))


def body_bottom(k: int = 0) -> Num:
    """``min(open, close)`` of bar ``k``."""
    return Min(O(k), C(k))


def body_mid(k: int = 0) -> Num:
    """The midpoint of the real body ``(open + close) * 0.5`` of bar ``k``."""
    return (O(k) + C(k)) * 0.5


def walk(node: Node, *, into_averages: bool = True) -> Iterator[Node]:
    """Every node of the tree under ``node`` (itself first), depth first.

    ``into_averages=False`` does not enter moving averages (their source and length): what remains
    is what the rule reads directly on its own bars.
    """

    def sub(child: Node) -> Iterator[Node]:
        return walk(child, into_averages=into_averages)

    yield node
    match node:
        case Arith(_, left, right) | Compare(_, left, right):
            yield from sub(left)
            yield from sub(right)
        case Abs(x) | Available(x):
            yield from sub(x)
        case Max(a, b) | Min(a, b):
            yield from sub(a)
            yield from sub(b)
        case MovingAverage(_, source, length, _) if into_averages:
            yield from sub(source)
            if isinstance(length, Param):
                yield length
        case And(terms) | Or(terms):
            for term in terms:
                yield from sub(term)
        case Not(term):
            yield from sub(term)


# ---------------------------------------------------------------------------------------------
# Thresholds


@dataclass(frozen=True)
class PatternParams:
    """The named thresholds of all patterns (ratios are fractions; lengths are bars).

    Defaults follow Nison (*Japanese Candlestick Charting Techniques*) and TA-Lib's candle settings.
    Override with ``PatternParams(long_shadow=3.0)`` or ``dataclasses.replace(params, ...)``.
    """

    trend_length: int = 10
    """Bars of the SMA of close that defines the trend before a reversal pattern."""
    doji_body: float = 0.1
    """Doji: body <= doji_body * range (TA-Lib BodyDoji: 10 % of the range)."""
    long_shadow: float = 2.0
    """Hammer family: the long shadow >= long_shadow * body (Nison: at least twice the body)."""
    short_shadow: float = 0.1
    """Hammer family: the other shadow <= short_shadow * range (Nison: no or a very short one)."""
    long_body: float = 0.6
    """A long candle: body >= long_body * range (first candle of harami, piercing, stars)."""
    harami_body: float = 0.5
    """Harami: the second body <= harami_body * the first body."""
    penetration: float = 0.5
    """Piercing line / dark cloud cover: the close goes past this fraction of the first body."""
    star_body: float = 0.3
    """Morning / evening star: the star's body <= star_body * the first body."""
    star_penetration: float = 0.3
    """Morning / evening star: the third close goes this fraction into the first body (TA-Lib)."""
    soldier_body: float = 0.5
    """Three soldiers / crows: each body >= soldier_body * its range."""
    soldier_shadow: float = 0.25
    """Three soldiers / crows: each closing shadow (upper for white) <= soldier_shadow * range."""
    marubozu_shadow: float = 0.05
    """Marubozu: each shadow <= marubozu_shadow * range."""
    marubozu_body: float = 1.0
    """Marubozu: body >= marubozu_body * the mean body of the previous body_average_length bars."""
    body_average_length: int = 10
    """Bars of the mean body a marubozu is compared with (TA-Lib BodyLong: 10)."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_length"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(
                        f"PatternParams.{item.name} must be an int >= 1, got {value!r}"
                    )
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not np.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"PatternParams.{item.name} must be a finite number >= 0, got {value!r}"
                )

    def value(self, name: str) -> float | int:
        """The value of the threshold ``name``."""
        if name not in _PARAM_NAMES:
            raise ConfigError(f"unknown threshold {name!r}; known: {sorted(_PARAM_NAMES)}")
        return getattr(self, name)


_PARAM_NAMES = frozenset(item.name for item in dataclasses.fields(PatternParams))


def average_length(length: Param | int, params: PatternParams) -> int:
    return int(params.value(length.name)) if isinstance(length, Param) else length


# ---------------------------------------------------------------------------------------------
# Renderers: one per target, each walking the same tree


def _null_if_any(result: pl.Expr, *inputs: pl.Expr) -> pl.Expr:
    # max_horizontal/min_horizontal skip nulls; Pine's math.max(na, x) is na, and so is ours
    missing = functools.reduce(lambda a, b: a | b, (x.is_null() for x in inputs))
    return pl.when(missing).then(None).otherwise(result)


def _ema_expr(source: pl.Expr, length: int) -> pl.Expr:
    def apply(series: pl.Series) -> pl.Series:
        # the whole column at once (map_batches, not elementwise): ema is a causal recursion
        values = np.asarray(ema(series.cast(pl.Float64).to_numpy(), length), dtype=np.float64)
        return pl.Series(series.name, values, dtype=pl.Float64).fill_nan(None)

    return source.map_batches(apply, return_dtype=pl.Float64)


def render_polars(node: Node, params: PatternParams) -> pl.Expr:
    """The polars expression of ``node`` (numeric, or Boolean with null where inputs are missing)."""
    match node:
        case Price(field, offset):
            column = pl.col(field).fill_nan(None)
            return column.shift(offset) if offset else column
        case Const(value):
            return pl.lit(value, dtype=pl.Float64)
        case Param(name):
            return pl.lit(float(params.value(name)), dtype=pl.Float64)
        case Arith(op, left, right):
            a, b = render_polars(left, params), render_polars(right, params)
            return a + b if op == "+" else a - b if op == "-" else a * b
        case Abs(x):
            return render_polars(x, params).abs()
        case Max(a, b) | Min(a, b):
            ea, eb = render_polars(a, params), render_polars(b, params)
            pick = pl.max_horizontal if isinstance(node, Max) else pl.min_horizontal
            return _null_if_any(pick(ea, eb), ea, eb)
        case MovingAverage(kind, source, length, offset):
            n = average_length(length, params)
            src = render_polars(source, params)
            average = src.rolling_mean(n) if kind == "sma" else _ema_expr(src, n)
            return average.shift(offset) if offset else average
        case Compare(op, left, right):
            a, b = render_polars(left, params), render_polars(right, params)
            compared = pine_compare(op, a, b)
            # a comparison with a missing value is False, as Pine v6 has it (v5 gives na); the
            # availability guard in front of every pattern makes the difference moot
            return compared.fill_null(False)
        case And(terms):
            return functools.reduce(lambda a, b: a & b, (render_polars(t, params) for t in terms))
        case Or(terms):
            return functools.reduce(lambda a, b: a | b, (render_polars(t, params) for t in terms))
        case Not(term):
            return ~render_polars(term, params)
        case Available(x):
            return render_polars(x, params).is_not_null()
    raise ConfigError(f"not a rule node: {node!r}")


def pine_float(value: float) -> str:
    """``value`` as a Pine float literal: positional digits with a decimal point (``2.0``, ``0.00001``)."""
    text = np.format_float_positional(float(value), trim="0")
    return f"({text})" if text.startswith("-") else text


_ATOM = 10
_ARITH_PRECEDENCE = {"*": 7, "+": 6, "-": 6}


def render_pine(
    node: Node,
    params: PatternParams | None,
    *,
    hoisted: Mapping[MovingAverage, str] | None = None,
) -> str:
    """Pine Script text of ``node``.

    ``params=None`` writes threshold names instead of values (for reading, not Pine). ``hoisted`` maps
    moving averages (at offset 0) to variable names declared before the expression.
    """
    return _pine(node, params, hoisted or {})[0]


def _pine(
    node: Node, params: PatternParams | None, hoisted: Mapping[MovingAverage, str]
) -> tuple[str, int]:
    def sub(child: Node) -> tuple[str, int]:
        return _pine(child, params, hoisted)

    def threshold(name: str) -> str:
        return name if params is None else pine_float(float(params.value(name)))

    match node:
        case Price(field, offset):
            return (f"{field}[{offset}]" if offset else field), _ATOM
        case Const(value):
            return pine_float(value), _ATOM
        case Param(name):
            return threshold(name), _ATOM
        case Arith(op, left, right):
            precedence = _ARITH_PRECEDENCE[op]
            (a, pa), (b, pb) = sub(left), sub(right)
            a = f"({a})" if pa < precedence else a
            # parenthesise an equal-precedence right operand: the tree's order of float operations
            # must survive (a - (b - c), and a + (b + c) rounds differently from (a + b) + c)
            b = f"({b})" if pb <= precedence else b
            return f"{a} {op} {b}", precedence
        case Abs(x):
            return f"math.abs({sub(x)[0]})", _ATOM
        case Max(a, b):
            return f"math.max({sub(a)[0]}, {sub(b)[0]})", _ATOM
        case Min(a, b):
            return f"math.min({sub(a)[0]}, {sub(b)[0]})", _ATOM
        case MovingAverage(kind, source, length, offset):
            at_zero = dataclasses.replace(node, offset=0)
            if at_zero in hoisted:
                call = hoisted[at_zero]
            else:
                if isinstance(length, Param):
                    n_text = length.name if params is None else str(average_length(length, params))
                else:
                    n_text = str(length)
                call = f"ta.{kind}({sub(source)[0]}, {n_text})"
            return (f"{call}[{offset}]" if offset else call), _ATOM
        case Compare(op, left, right):
            return f"({sub(left)[0]} {op} {sub(right)[0]})", _ATOM
        case And(terms):
            return "(" + " and ".join(sub(t)[0] for t in terms) + ")", _ATOM
        case Or(terms):
            return "(" + " or ".join(sub(t)[0] for t in terms) + ")", _ATOM
        case Not(term):
            # Pine's `not` binds tighter than comparisons: its operand is always parenthesised
            return f"(not {sub(term)[0]})", _ATOM
        case Available(x):
            return f"(not na({sub(x)[0]}))", _ATOM
    raise ConfigError(f"not a rule node: {node!r}")


# ---------------------------------------------------------------------------------------------
# Patterns


@dataclass(frozen=True)
class Pattern:
    """One candlestick pattern: its rule over the last ``bars`` bars and how to render it.

    ``rule`` reads bars at offsets ``0 .. bars - 1`` for the candles and at most offset ``bars``
    for the trend leading into them. ``description`` says what the rule means and where the
    definition comes from.
    """

    name: str
    bars: int
    direction: Direction
    rule: Bool
    description: str

    def __post_init__(self) -> None:
        if self.bars not in (1, 2, 3):
            raise ConfigError(f"pattern {self.name!r}: bars must be 1, 2 or 3, got {self.bars}")
        if self.direction not in ("bullish", "bearish", "neutral"):
            raise ConfigError(f"pattern {self.name!r}: unknown direction {self.direction!r}")
        offsets = [n.offset for n in walk(self.rule) if isinstance(n, Price | MovingAverage)]
        if max(offsets, default=0) > self.bars:
            raise ConfigError(
                f"pattern {self.name!r} reads {max(offsets)} bars back but spans {self.bars}"
            )

    @property
    def column(self) -> str:
        """The name of the pattern's Boolean column, ``pat_<name>``."""
        return f"{COLUMN_PREFIX}{self.name}"

    @property
    def param_names(self) -> tuple[str, ...]:
        """The thresholds the rule uses, in order of first use."""
        names = (n.name for n in walk(self.rule) if isinstance(n, Param))
        return tuple(dict.fromkeys(names))

    @property
    def defaults(self) -> dict[str, float | int]:
        """The default value of each threshold the rule uses."""
        base = PatternParams()
        return {name: base.value(name) for name in self.param_names}

    @property
    def guard(self) -> tuple[Available, ...]:
        """The availability checks put in front of the rule: the oldest bar read, each average."""
        reads = [
            n for n in walk(self.rule, into_averages=False) if isinstance(n, Price | MovingAverage)
        ]
        oldest = max((r.offset for r in reads if isinstance(r, Price)), default=0)
        checks = [Available(C(oldest))] if oldest else []
        averages = dict.fromkeys(r for r in reads if isinstance(r, MovingAverage))
        return (*checks, *(Available(ma) for ma in averages))

    @property
    def condition(self) -> Bool:
        """The guarded rule every renderer renders: ``guard and rule``."""
        return functools.reduce(And.__and__, (*self.guard, self.rule))

    def to_polars(self, params: PatternParams | None = None) -> pl.Expr:
        """A Boolean polars expression named ``pat_<name>``: True on the bars where the pattern ends.

        Bar t reads only bars t .. t - bars (``shift(k)``, ``k >= 0``) and rolling means of past bars;
        False (never null) where a value it reads is not available yet.
        """
        expr = render_polars(self.condition, params or PatternParams())
        return expr.fill_null(False).alias(self.column)

    def to_pine(
        self,
        params: PatternParams | None = None,
        *,
        hoisted: Mapping[MovingAverage, str] | None = None,
    ) -> str:
        """The pattern as a Pine Script v5/v6 Boolean expression (same meaning as :meth:`to_polars`).

        Moving averages are inlined as ``ta.sma(close, 10)[1]`` unless ``hoisted`` maps them (at
        offset 0) to variables declared on every bar; prefer that (see :func:`pine_indicator`): Pine
        v6 evaluates ``and``/``or`` lazily, and a ``ta.*`` call that does not run on every bar
        computes from a broken history.
        """
        return render_pine(self.condition, params or PatternParams(), hoisted=hoisted)

    def to_text(self) -> str:
        """The rule (without the guard) in Pine notation with the threshold names, for reading."""
        return render_pine(self.rule, None)


def _downtrend(k: int) -> Bool:
    return C(k) < MovingAverage("sma", C(0), P("trend_length"), k)


def _uptrend(k: int) -> Bool:
    return C(k) > MovingAverage("sma", C(0), P("trend_length"), k)


def _white(k: int) -> Bool:
    return C(k) > O(k)


def _black(k: int) -> Bool:
    return C(k) < O(k)


def _has_range(k: int) -> Bool:
    return candle_range(k) > 0.0


def _long_body(k: int) -> Bool:
    return _has_range(k) & (body(k) >= P("long_body") * candle_range(k))


def _hammer_shape(k: int) -> Bool:
    return (
        _has_range(k)
        & (lower_wick(k) >= P("long_shadow") * body(k))
        & (upper_wick(k) <= P("short_shadow") * candle_range(k))
    )


def _inverted_hammer_shape(k: int) -> Bool:
    return (
        _has_range(k)
        & (upper_wick(k) >= P("long_shadow") * body(k))
        & (lower_wick(k) <= P("short_shadow") * candle_range(k))
    )


def _soldier(k: int) -> Bool:
    return (
        _white(k)
        & (body(k) >= P("soldier_body") * candle_range(k))
        & (upper_wick(k) <= P("soldier_shadow") * candle_range(k))
    )


def _crow(k: int) -> Bool:
    return (
        _black(k)
        & (body(k) >= P("soldier_body") * candle_range(k))
        & (lower_wick(k) <= P("soldier_shadow") * candle_range(k))
    )


def _long_versus_average(k: int) -> Bool:
    average_body = MovingAverage("sma", body(0), P("body_average_length"), k + 1)
    return body(k) >= P("marubozu_body") * average_body


def _marubozu_shadows(k: int) -> Bool:
    return (upper_wick(k) <= P("marubozu_shadow") * candle_range(k)) & (
        lower_wick(k) <= P("marubozu_shadow") * candle_range(k)
    )


def _define() -> dict[str, Pattern]:
    definitions = [
        Pattern(
            "doji",
            1,
            "neutral",
            _has_range(0) & (body(0) <= P("doji_body") * candle_range(0)),
            "Open and close (almost) equal: body <= doji_body * range (Nison ch. 8; TA-Lib CDLDOJI).",
        ),
        Pattern(
            "hammer",
            1,
            "bullish",
            _downtrend(1) & _hammer_shape(0),
            "After a downtrend, a small body at the top of the range with a lower shadow >= "
            "long_shadow * body and an upper shadow <= short_shadow * range (Nison ch. 4; TA-Lib CDLHAMMER).",
        ),
        Pattern(
            "hanging_man",
            1,
            "bearish",
            _uptrend(1) & _hammer_shape(0),
            "The hammer's shape after an uptrend (Nison ch. 4; TA-Lib CDLHANGINGMAN).",
        ),
        Pattern(
            "inverted_hammer",
            1,
            "bullish",
            _downtrend(1) & _inverted_hammer_shape(0),
            "After a downtrend, a small body at the bottom of the range with an upper shadow >= "
            "long_shadow * body and a lower shadow <= short_shadow * range (Nison ch. 5; "
            "TA-Lib CDLINVERTEDHAMMER, without the gap).",
        ),
        Pattern(
            "shooting_star",
            1,
            "bearish",
            _uptrend(1) & _inverted_hammer_shape(0),
            "The inverted hammer's shape after an uptrend (Nison ch. 5; TA-Lib CDLSHOOTINGSTAR, "
            "without the gap up, rare in 24-hour FX).",
        ),
        Pattern(
            "bullish_engulfing",
            2,
            "bullish",
            _downtrend(2)
            & _black(1)
            & _white(0)
            & (C(0) >= O(1))
            & (O(0) <= C(1))
            & ((C(0) > O(1)) | (O(0) < C(1))),
            "After a downtrend, a white body engulfs the previous black body (at least one end "
            "strictly beyond) (Nison ch. 4; TA-Lib CDLENGULFING).",
        ),
        Pattern(
            "bearish_engulfing",
            2,
            "bearish",
            _uptrend(2)
            & _white(1)
            & _black(0)
            & (O(0) >= C(1))
            & (C(0) <= O(1))
            & ((O(0) > C(1)) | (C(0) < O(1))),
            "After an uptrend, a black body engulfs the previous white body (at least one end "
            "strictly beyond) (Nison ch. 4; TA-Lib CDLENGULFING).",
        ),
        Pattern(
            "bullish_harami",
            2,
            "bullish",
            _downtrend(2)
            & _black(1)
            & _long_body(1)
            & (body_top(0) <= O(1))
            & (body_bottom(0) >= C(1))
            & (body(0) <= P("harami_body") * body(1)),
            "After a downtrend, a long black candle whose body contains the next, smaller body "
            "(<= harami_body * the first) (Nison ch. 6; TA-Lib CDLHARAMI).",
        ),
        Pattern(
            "bearish_harami",
            2,
            "bearish",
            _uptrend(2)
            & _white(1)
            & _long_body(1)
            & (body_top(0) <= C(1))
            & (body_bottom(0) >= O(1))
            & (body(0) <= P("harami_body") * body(1)),
            "After an uptrend, a long white candle whose body contains the next, smaller body "
            "(<= harami_body * the first) (Nison ch. 6; TA-Lib CDLHARAMI).",
        ),
        Pattern(
            "piercing_line",
            2,
            "bullish",
            _downtrend(2)
            & _black(1)
            & _long_body(1)
            & _white(0)
            & (O(0) <= C(1))
            & (C(0) > C(1) + P("penetration") * (O(1) - C(1)))
            & (C(0) < O(1)),
            "After a downtrend, a long black candle, then a white one opening at or below its close "
            "and closing above penetration of its body but below its open (Nison ch. 4; TA-Lib "
            "CDLPIERCING, open at or below the prior close instead of below the prior low).",
        ),
        Pattern(
            "dark_cloud_cover",
            2,
            "bearish",
            _uptrend(2)
            & _white(1)
            & _long_body(1)
            & _black(0)
            & (O(0) >= C(1))
            & (C(0) < C(1) - P("penetration") * (C(1) - O(1)))
            & (C(0) > O(1)),
            "After an uptrend, a long white candle, then a black one opening at or above its close "
            "and closing below penetration of its body but above its open (Nison ch. 4; TA-Lib "
            "CDLDARKCLOUDCOVER, open at or above the prior close instead of above the prior high).",
        ),
        Pattern(
            "morning_star",
            3,
            "bullish",
            _downtrend(3)
            & _black(2)
            & _long_body(2)
            & (body(1) <= P("star_body") * body(2))
            & (body_top(1) <= C(2))
            & _white(0)
            & (C(0) > C(2) + P("star_penetration") * (O(2) - C(2))),
            "After a downtrend, a long black candle, a small star (body <= star_body * the first) "
            "at or below its close, and a white candle closing star_penetration into the first body "
            "(Nison ch. 5; TA-Lib CDLMORNINGSTAR, without the gaps).",
        ),
        Pattern(
            "evening_star",
            3,
            "bearish",
            _uptrend(3)
            & _white(2)
            & _long_body(2)
            & (body(1) <= P("star_body") * body(2))
            & (body_bottom(1) >= C(2))
            & _black(0)
            & (C(0) < C(2) - P("star_penetration") * (C(2) - O(2))),
            "After an uptrend, a long white candle, a small star (body <= star_body * the first) "
            "at or above its close, and a black candle closing star_penetration into the first body "
            "(Nison ch. 5; TA-Lib CDLEVENINGSTAR, without the gaps).",
        ),
        Pattern(
            "three_white_soldiers",
            3,
            "bullish",
            _soldier(2)
            & _soldier(1)
            & _soldier(0)
            & (C(1) > C(2))
            & (C(0) > C(1))
            & (O(1) >= O(2))
            & (O(1) <= C(2))
            & (O(0) >= O(1))
            & (O(0) <= C(1)),
            "Three white candles (body >= soldier_body * range, upper shadow <= soldier_shadow * "
            "range), closes rising, each opening within the previous body (Nison ch. 7; TA-Lib "
            "CDL3WHITESOLDIERS; no trend condition, as in TA-Lib).",
        ),
        Pattern(
            "three_black_crows",
            3,
            "bearish",
            _crow(2)
            & _crow(1)
            & _crow(0)
            & (C(1) < C(2))
            & (C(0) < C(1))
            & (O(1) <= O(2))
            & (O(1) >= C(2))
            & (O(0) <= O(1))
            & (O(0) >= C(1)),
            "Three black candles (body >= soldier_body * range, lower shadow <= soldier_shadow * "
            "range), closes falling, each opening within the previous body (Nison ch. 7; TA-Lib "
            "CDL3BLACKCROWS; no trend condition).",
        ),
        Pattern(
            "bullish_marubozu",
            1,
            "bullish",
            _white(0) & _marubozu_shadows(0) & _long_versus_average(0),
            "A white candle with both shadows <= marubozu_shadow * range and a body >= marubozu_body "
            "* the mean body of the previous body_average_length bars (Nison ch. 8; TA-Lib CDLMARUBOZU).",
        ),
        Pattern(
            "bearish_marubozu",
            1,
            "bearish",
            _black(0) & _marubozu_shadows(0) & _long_versus_average(0),
            "A black candle with both shadows <= marubozu_shadow * range and a body >= marubozu_body "
            "* the mean body of the previous body_average_length bars (Nison ch. 8; TA-Lib CDLMARUBOZU).",
        ),
    ]
    return {p.name: p for p in definitions}


PATTERNS: dict[str, Pattern] = _define()
"""Every pattern by name. The bullish and bearish marubozu are two patterns."""


# ---------------------------------------------------------------------------------------------
# Applying patterns


def _selected(names: Sequence[str] | str | None) -> list[Pattern]:
    if names is None:
        return list(PATTERNS.values())
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in PATTERNS]
    if unknown:
        raise ConfigError(f"unknown pattern(s) {unknown}; known: {sorted(PATTERNS)}")
    return [PATTERNS[n] for n in dict.fromkeys(names)]


def pattern_columns(names: Sequence[str] | str | None = None) -> list[str]:
    """The column names ``add_patterns`` adds for ``names`` (all patterns when None), in order."""
    return [p.column for p in _selected(names)]


def _params_for(
    pattern: Pattern, params: PatternParams | Mapping[str, PatternParams] | None
) -> PatternParams:
    if params is None:
        return PatternParams()
    if isinstance(params, PatternParams):
        return params
    return params.get(pattern.name, PatternParams())


def add_patterns(
    bars: pl.DataFrame,
    names: Sequence[str] | str | None = None,
    params: PatternParams | Mapping[str, PatternParams] | None = None,
) -> pl.DataFrame:
    """``bars`` with a Boolean column ``pat_<name>`` per pattern (all of :data:`PATTERNS` by default).

    ``params`` is one :class:`PatternParams` for every pattern or a mapping pattern name ->
    ``PatternParams`` (patterns not in it use the defaults). A column is True on the bar where the
    pattern completes, computed from that bar and earlier ones only; False during the warm-up.
    Existing ``pat_*`` columns of the same names are replaced.
    """
    ensure_bars(bars)
    if isinstance(params, Mapping):
        unknown = [n for n in params if n not in PATTERNS]
        if unknown:
            raise ConfigError(f"params for unknown pattern(s) {unknown}; known: {sorted(PATTERNS)}")
    selected = _selected(names)
    return bars.with_columns(p.to_polars(_params_for(p, params)) for p in selected)


def pine_indicator(
    names: Sequence[str] | str | None = None,
    params: PatternParams | None = None,
    *,
    title: str = "aiopt candlestick patterns",
) -> str:
    """A complete Pine Script v6 indicator that plots the patterns (same meaning as ``add_patterns``).

    Moving averages are declared once at the top level (computed on every bar, as Pine requires)
    and referenced with ``[k]``; each pattern is a ``bool pat_<name>`` variable with a ``plotshape``.
    """
    params = params or PatternParams()
    selected = _selected(names)
    averages: dict[MovingAverage, str] = {}
    for pattern in selected:
        for node in walk(pattern.condition):
            if isinstance(node, MovingAverage):
                at_zero = dataclasses.replace(node, offset=0)
                averages.setdefault(at_zero, f"ma_{len(averages) + 1}")
    escaped_title = title.replace("\\", "\\\\").replace('"', '\\"')
    lines = ["//@version=6", f'indicator("{escaped_title}", overlay=true)']
    lines += [f"float {var} = {render_pine(ma, params)}" for ma, var in averages.items()]
    for pattern in selected:
        lines.append(f"bool {pattern.column} = {pattern.to_pine(params, hoisted=averages)}")
    for pattern in selected:
        below = pattern.direction == "bullish"
        style = "shape.triangleup" if below else "shape.triangledown"
        location = "location.belowbar" if below else "location.abovebar"
        if pattern.direction == "neutral":
            style = "shape.diamond"
        lines.append(
            f'plotshape({pattern.column}, title="{pattern.name}", style={style}, '
            f"location={location}, size=size.tiny)"
        )
    return "\n".join(lines) + "\n"
