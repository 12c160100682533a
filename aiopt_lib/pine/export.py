"""Pine Script export of a :class:`~aiopt_lib.strategy.spec.StrategySpec`, with a validator and an
auto-corrector for Pine v5 / v6 text.

Generation
----------
``spec_to_pine(spec)`` turns a spec into a complete TradingView strategy. It goes through a small
typed intermediate representation (:class:`PineScript` and its parts, built by :func:`spec_to_ir`)
and one renderer, :func:`render`::

    text = spec_to_pine(builtin_template("ema_cross").spec, version=6)
    issues = check_pine(text, 6)          # [] for every generated script

The script declares every ``strategy()`` setting explicitly, one ``input.int`` / ``input.float`` per
spec param (default: its value), every indicator and crossover ONCE at the top level (Pine v6
evaluates ``and`` / ``or`` lazily and a ``ta.*`` call that does not run on every bar computes
from a broken history), one ``bool`` per rule, then the orders, the plots and a header comment
with the spec JSON, the data range and the out-of-sample metrics.

How the engine's semantics (:mod:`aiopt_lib.strategy.backtest`) map to TradingView
-------------------------------------------------------------------------
Exact (same definitions, same numbers):

* indicators are TradingView's built-ins (``ta.ema``, ``ta.macd``, ``ta.bb`` ...), ``pct_b`` is
  ``(close - lower) / (upper - lower)`` and ``width`` ``100 * (upper - lower) / basis`` written
  out; patterns are the :mod:`aiopt_lib.features.patterns` Pine rendering with hoisted averages;
* signals are evaluated at the bar's close and market orders fill at the next bar's open
  (``process_orders_on_close=false``; ``true`` for ``fill="close"``), one position at a time
  (``pyramiding=0``), an opposite entry reverses, a bar with both entries enters neither, a
  same-side entry while in a position is ignored, the side's exit closes;
* a forbidden side (``direction``) closes the other side's position instead of entering, as
  ``strategy.risk.allow_entry_in`` (also emitted) does;
* stop-loss / take-profit: the distance is computed at the signal bar (NaN: no level) and turned
  into whole ticks there, with the engine's rounding of ``entry ± d`` to the tick (a long stop
  ``ceil(d / tick - 0.5)`` ticks below the fill, a long take ``floor(d / tick + 0.5)`` above,
  mirrored for shorts); ``strategy.exit(loss=, profit=)`` sets them that many ticks from the entry
  FILL price, as the engine does; checked inside the bar along the same open-high-low-close path;
* trailing stop: ``trail_points=0`` (active from the fill) and ``trail_offset`` = the distance in
  ticks, plus a fixed stop at the same distance from the fill (the engine's trail starts at the
  fill price, before TradingView's activation): the effective level is the engine's;
* slippage in ticks on market and stop orders, none on the take-profit (a limit order);
  commission per unit (``cash_per_contract``, one contract = one unit) or percent per fill.

Not exact (said in the header of every script):

* ``spread="data"`` (bid/ask columns) cannot be expressed: TradingView fills on the chart's
  prices (a fixed spread is exact: the engine charges it as TradingView's slippage, see
  :class:`aiopt_lib.strategy.spec.Costs`);
* when the spec sets both ``commission_percent`` and ``commission_per_unit``, TradingView takes
  one commission type: the per-unit part is exported, the percent part is not (a warning and a
  header line say so);
* a position open at the end of the data stays open on TradingView (the engine closes it at the
  last close); signals on the last bar are ignored by both;
* exits from the trailing stop before it moved past the fill are labelled stop, not trail;
* Pine v5 only: a ``not`` of a comparison with ``na`` (indicator warm-up) is ``na`` (false) where
  the engine (and v6) give true.

The chart's symbol must have ``syminfo.mintick`` equal to the spec's tick size: the script stops
with a runtime error otherwise.

Validation and correction
-------------------------
:func:`check_pine` parses with ``opencode-pine2pyne`` (Apache-2.0, a pure-Python Pine v1-v6
parser; ~1 ms per script, no start-up cost) and adds its own checks on the tokens and the parse
tree: unknown ``ta.`` / ``strategy.`` / ``input.`` / ``math.`` functions, ``ta.*`` calls with a
wrong number of arguments, undeclared identifiers, ``ta.*`` calls that do not run on every bar
(errors inside ``if`` bodies and in the right operand of a v6 ``and`` / ``or``; warnings in ``?:`` /
``switch`` branches, which TradingView compiles with a warning), ``when=`` and ``transp=``
arguments, and the division of two integer literals. Every :class:`PineIssue` points at the
offending token (1-based line and column). A few valid v6 spellings the parser refuses (array-typed
parameters, ``method`` / ``input`` as names, ``export type``) are respelled and parsed again.
:func:`fix_pine` rewrites the fixable classes and re-checks after each fix.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiopt_lib.core.atomic import write_text_atomic
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features import patterns as pat
from aiopt_lib.features.registry import IndicatorDef, PineStep, lookup_output
from aiopt_lib.strategy.ranking import load_ranking
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
    parse_expression,
    walk,
)
from aiopt_lib.strategy.spec import RULES, Distance, StrategySpec

__all__ = [
    "PineExportError",
    "PineIssue",
    "check_pine",
    "export_errors",
    "export_ranking",
    "expressions_to_pine",
    "fix_pine",
    "render_statement",
    "spec_to_ir",
    "spec_to_pine",
]

PineVersion = Literal[5, 6]
VERSIONS: tuple[int, ...] = (5, 6)


class PineExportError(ConfigError):
    """A spec that cannot be exported to Pine (e.g. an AI gate without a Pine replacement), or a
    generated script that does not validate."""


# ---------------------------------------------------------------------------------------------
# The intermediate representation


@dataclass(frozen=True)
class Input:
    """``name = input.<kind>(default, "title", minval=, step=)``."""

    name: str
    kind: Literal["int", "float"]
    default: float
    title: str
    minval: float | None = None
    step: float | None = None


@dataclass(frozen=True)
class Var:
    """A top-level declaration ``[var] type name = expr`` (``type`` None: inferred)."""

    name: str
    type: Literal["float", "int", "bool"] | None
    expr: str
    persistent: bool = False  # Pine's `var`: initialised once, kept across bars


@dataclass(frozen=True)
class TupleVar:
    """``[a, b, c] = expr`` (a built-in that returns several series)."""

    names: tuple[str, ...]
    expr: str


@dataclass(frozen=True)
class Assign:
    """``name := expr`` (a reassignment inside a block)."""

    name: str
    expr: str


@dataclass(frozen=True)
class Call:
    """A call used as a statement, e.g. ``strategy.entry("L", strategy.long)``."""

    expr: str


@dataclass(frozen=True)
class If:
    """``if condition`` with an indented body and an optional ``else`` body."""

    condition: str
    body: tuple[Statement, ...]
    orelse: tuple[Statement, ...] = ()


Statement = Var | TupleVar | Assign | Call | If


@dataclass(frozen=True)
class StrategyCall:
    """``strategy(title, key=value, ...)``; ``settings`` hold rendered Pine values."""

    title: str
    settings: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PineScript:
    """A whole strategy script, rendered by :func:`render` in this order: version, header
    comments, ``strategy()``, inputs, top-level declarations, statements, plots."""

    version: int
    header_comments: tuple[str, ...]
    strategy_call: StrategyCall
    inputs: tuple[Input, ...]
    declarations: tuple[Statement, ...]
    statements: tuple[Statement, ...]
    plots: tuple[Call, ...]


def pine_string(text: str) -> str:
    """``text`` as a double-quoted Pine string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def pine_number(value: float, kind: Literal["int", "float"] = "float") -> str:
    """A Pine literal: an int as digits, a float always with a decimal point (``2.0``)."""
    if kind == "int":
        return str(int(value))
    return pat.pine_float(value)


def render_statement(statement: Statement, indent: str = "") -> list[str]:
    if isinstance(statement, Var):
        prefix = "var " if statement.persistent else ""
        type_ = f"{statement.type} " if statement.type else ""
        return [f"{indent}{prefix}{type_}{statement.name} = {statement.expr}"]
    if isinstance(statement, TupleVar):
        return [f"{indent}[{', '.join(statement.names)}] = {statement.expr}"]
    if isinstance(statement, Assign):
        return [f"{indent}{statement.name} := {statement.expr}"]
    if isinstance(statement, Call):
        return [f"{indent}{statement.expr}"]
    lines = [f"{indent}if {statement.condition}"]
    for inner in statement.body:
        lines += render_statement(inner, indent + "    ")
    if statement.orelse:
        lines.append(f"{indent}else")
        for inner in statement.orelse:
            lines += render_statement(inner, indent + "    ")
    return lines


def render(script: PineScript) -> str:
    """The Pine Script text of ``script`` (the one renderer of the IR)."""
    lines = [f"//@version={script.version}"]
    lines += [f"// {c}".rstrip() for c in script.header_comments]
    settings = "".join(f", {key}={value}" for key, value in script.strategy_call.settings)
    lines.append(f"strategy({pine_string(script.strategy_call.title)}{settings})")
    if script.inputs:
        lines += ["", "// inputs: the spec's params"]
    for item in script.inputs:
        args = [pine_number(item.default, item.kind), pine_string(item.title)]
        if item.minval is not None:
            args.append(f"minval={pine_number(item.minval, item.kind)}")
        if item.step is not None:
            args.append(f"step={pine_number(item.step, item.kind)}")
        lines.append(f"{item.name} = input.{item.kind}({', '.join(args)})")
    if script.declarations:
        lines += ["", "// indicators, crossovers and rules: top level, computed on every bar"]
    for statement in script.declarations:
        lines += render_statement(statement, "")
    if script.statements:
        lines += ["", "// orders"]
    for statement in script.statements:
        lines += render_statement(statement, "")
    if script.plots:
        lines += ["", "// plots"]
    lines += [p.expr for p in script.plots]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Generation: rule tree -> Pine expressions with hoisted declarations

# Pine's keywords and type names; a param or generated name equal to one of these (or to a
# built-in variable, function or namespace) gets a prefix
_PINE_KEYWORDS = frozenset(
    [
        "and",
        "or",
        "not",
        "if",
        "else",
        "for",
        "to",
        "by",
        "in",
        "while",
        "switch",
        "break",
        "continue",
        "var",
        "varip",
        "import",
        "export",
        "method",
        "type",
        "enum",
        "true",
        "false",
        "na",
        "int",
        "float",
        "bool",
        "string",
        "color",
        "line",
        "label",
        "box",
        "table",
        "array",
        "matrix",
        "map",
        "series",
        "simple",
        "input",
        "const",
    ]
)
# Pine precedence (higher binds tighter)
_ATOM, _UNARY, _MUL, _ADD, _CMP, _EQ, _AND, _OR = 10, 9, 7, 6, 5, 4, 3, 2
_ARITH_PRECEDENCE = {"*": _MUL, "/": _MUL, "+": _ADD, "-": _ADD}


def _reserved_names() -> frozenset[str]:
    from pine2pyne.pine_semantics import BUILTIN_NAMES

    return _PINE_KEYWORDS | frozenset(BUILTIN_NAMES)


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", text.replace(".", "p")).strip("_")


class _Builder:
    """Collects the top-level declarations a spec's rules need, each once."""

    def __init__(
        self, spec: StrategySpec | None, ai_rules: Mapping[str, str] | None, prefix: str = ""
    ) -> None:
        self.spec = spec
        self.ai_rules = dict(ai_rules or {})
        self.prefix = prefix
        self.reserved = _reserved_names()
        self.used: set[str] = set()
        self.declarations: list[Statement] = []
        self.keys: dict[Any, str] = {}
        self.plots: list[tuple[str, str, bool]] = []  # (variable, title, price-scaled)
        self.int_params = self._int_params()
        self.inputs = self._inputs()
        self.averages: dict[pat.MovingAverage, str] = {}

    # -- names ----------------------------------------------------------------------------

    def name(self, wanted: str) -> str:
        base = _slug(f"{self.prefix}{wanted}") or "v"
        if base[0].isdigit():
            base = f"v_{base}"
        if base in self.reserved:
            base = f"p_{base}"
        candidate, n = base, 2
        while candidate in self.used or candidate in self.reserved:
            candidate, n = f"{base}_{n}", n + 1
        self.used.add(candidate)
        return candidate

    # -- inputs ---------------------------------------------------------------------------

    def _int_params(self) -> set[str]:
        """Params used where Pine needs an int (indicator lengths, ATR lengths)."""
        names: set[str] = set()
        if self.spec is None:
            return names
        for rule in RULES:
            tree = self.spec.rule(rule)
            if tree is None:
                continue
            for node in walk(tree):
                if isinstance(node, Indicator):
                    found = lookup_output(node.name)
                    assert found is not None  # the rule parser knows only registered outputs
                    for arg, param in zip(node.args, found[0].params, strict=True):
                        if isinstance(arg, Param) and param.is_int:
                            names.add(arg.name)
        for distance in (self.spec.stop_loss, self.spec.take_profit, self.spec.trailing_stop):
            if distance is not None and isinstance(distance.atr_length, str):
                names.add(distance.atr_length)
        return names

    def _inputs(self) -> list[Input]:
        self.param_names: dict[str, str] = {}
        inputs: list[Input] = []
        for key, value in (self.spec.params if self.spec is not None else {}).items():
            name = self.name(key)
            self.param_names[key] = name
            is_int = key in self.int_params or isinstance(value, int)
            kind: Literal["int", "float"] = "int" if is_int else "float"
            minval = 1 if key in self.int_params else None
            inputs.append(Input(name, kind, int(value) if is_int else float(value), key, minval))
        return inputs

    def param_is_int(self, key: str) -> bool:
        return any(i.title == key and i.kind == "int" for i in self.inputs)

    # -- declarations ---------------------------------------------------------------------

    def declare(self, key: Any, wanted: str, type_: Literal["float", "bool"], expr: str) -> str:
        if key not in self.keys:
            name = self.name(wanted)
            self.declarations.append(Var(name, type_, expr))
            self.keys[key] = name
        return self.keys[key]

    def arg_text(self, arg: Node, kind: Literal["int", "float"]) -> str:
        if isinstance(arg, Param):
            return self.param_names[arg.name]
        assert isinstance(arg, Const)  # the rule parser allows nothing else
        return pine_number(arg.value, kind)

    def indicator(self, node: Indicator) -> str:
        """The Pine variable of one indicator output: the registry's Pine steps that it needs,
        each declared once at the top level (an expression met again reuses its variable)."""
        found = lookup_output(node.name)
        assert found is not None  # the rule parser knows only registered outputs
        definition = found[0]
        kinds = ["int" if p.is_int else "float" for p in definition.params]
        args = [self.arg_text(a, k) for a, k in zip(node.args, kinds, strict=True)]  # type: ignore[arg-type]
        values = {p.name: a for p, a in zip(definition.params, args, strict=True)}
        values["source"] = definition.default_source
        names = self.pine_steps(definition, values, node.name, "_".join(args))
        self.plot(
            names[node.name], f"{node.name}({', '.join(args)})", node.name in definition.overlay
        )
        return names[node.name]

    def pine_steps(
        self, definition: IndicatorDef, values: Mapping[str, str], output: str, suffix: str
    ) -> dict[str, str]:
        """Declare the Pine steps of ``definition`` that ``output`` needs (with ``values`` for
        the params and ``source``); returns the variable of every declared output."""
        step_of = {o: step for step in definition.pine for o in step.outputs}
        needed: set[PineStep] = set()
        pending = [output]
        while pending:
            step = step_of[pending.pop()]
            if step not in needed:
                needed.add(step)
                pending += [f for f in step.fields() if f in step_of]
        names: dict[str, str] = {}
        for step in definition.pine:
            if step not in needed:
                continue
            expr = step.expr.format(**values, **names)
            key = ("pine", expr)
            if len(step.outputs) == 1:
                wanted = f"{step.outputs[0]}_{suffix}" if suffix else step.outputs[0]
                names[step.outputs[0]] = self.declare(key, wanted, "float", expr)
                continue
            if key not in self.keys:
                variables = tuple(self.name(f"{o}_{suffix}" if suffix else o) for o in step.outputs)
                self.declarations.append(TupleVar(variables, expr))
                self.keys[key] = variables  # type: ignore[assignment]
            names.update(zip(step.outputs, self.keys[key], strict=True))
        return names

    def plot(self, name: str, title: str, price_scaled: bool) -> None:
        if all(p[0] != name for p in self.plots):
            self.plots.append((name, title, price_scaled))

    def pattern(self, name: str) -> str:
        pattern = pat.PATTERNS[name]
        params = pat.PatternParams()
        for node in pat.walk(pattern.condition):
            if isinstance(node, pat.MovingAverage):
                at_zero = pat.MovingAverage(node.kind, node.source, node.length, 0)
                if at_zero not in self.averages:
                    ma = self.name(f"ma_{at_zero.kind}_{len(self.averages) + 1}")
                    self.declarations.append(Var(ma, "float", pat.render_pine(at_zero, params)))
                    self.averages[at_zero] = ma
        expr = pattern.to_pine(params, hoisted=self.averages)
        return self.declare(("pattern", name), pattern.column, "bool", expr)

    def ai(self, node: AiProbability) -> str:
        key = f"ai_{node.label.lower()}"
        if key not in self.ai_rules:
            raise PineExportError(
                f"AI gate not exportable: the spec {getattr(self.spec, 'name', '')!r} uses {key}, the signal "
                f"model's probability, which cannot run in Pine; pass ai_rules={{{key!r}: "
                f"'<Pine expression>'}} to replace it (e.g. a distilled rule)"
            )
        return self.declare(("ai", key), key, "float", f"({self.ai_rules[key]})")

    # -- expressions ----------------------------------------------------------------------

    def expr(self, node: Node) -> tuple[str, int]:
        """Pine text of ``node`` and its precedence."""
        if isinstance(node, Const):
            return pine_number(node.value), _ATOM
        if isinstance(node, BoolConst):
            return ("true" if node.value else "false"), _ATOM
        if isinstance(node, Param):
            return self.param_names[node.name], _ATOM
        if isinstance(node, PriceField):
            return node.field, _ATOM
        if isinstance(node, Indicator):
            return self.indicator(node), _ATOM
        if isinstance(node, PatternRef):
            return self.pattern(node.name), _ATOM
        if isinstance(node, AiProbability):
            return self.ai(node), _ATOM
        if isinstance(node, Shift):
            return self.shift(node), _ATOM
        if isinstance(node, Negate):
            text, precedence = self.expr(node.operand)
            return f"-{_wrap(text, precedence, _UNARY + 1)}", _UNARY
        if isinstance(node, Arith):
            precedence = _ARITH_PRECEDENCE[node.op]
            (a, pa), (b, pb) = self.expr(node.left), self.expr(node.right)
            a = _wrap(a, pa, precedence)
            b = _wrap(b, pb, precedence + 1)  # keep the tree's order: a - (b - c)
            if node.op == "/" and self._is_int(node.left) and self._is_int(node.right):
                a = f"({a} * 1.0)"  # an int / int would truncate in Pine v5
            return f"{a} {node.op} {b}", precedence
        if isinstance(node, Compare):
            precedence = _EQ if node.op in ("==", "!=") else _CMP
            (a, pa), (b, pb) = self.expr(node.left), self.expr(node.right)
            return f"{_wrap(a, pa, precedence + 1)} {node.op} {_wrap(b, pb, precedence + 1)}", (
                precedence
            )
        if isinstance(node, Cross):
            a, b = self.expr(node.left)[0], self.expr(node.right)[0]
            function = "crossover" if node.up else "crossunder"
            wanted = f"{a}_{'over' if node.up else 'under'}_{b}" if _is_name(a + b) else "cross"
            return self.declare(
                ("cross", node.up, a, b), wanted, "bool", f"ta.{function}({a}, {b})"
            ), _ATOM
        if isinstance(node, Logic):
            precedence = _AND if node.op == "and" else _OR
            parts = [_wrap(*self.expr(o), precedence + 1) for o in node.operands]
            return f" {node.op} ".join(parts), precedence
        if isinstance(node, Not):
            text, precedence = self.expr(node.operand)
            return f"not {_wrap(text, precedence, _ATOM)}", _UNARY
        raise PineExportError(f"cannot export a {type(node).__name__} node to Pine")

    def _is_int(self, node: Node) -> bool:
        return isinstance(node, Param) and self.param_is_int(node.name)

    def shift(self, node: Shift) -> str:
        text, _ = self.expr(node.operand)
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_.]*)(?:\[(\d+)\])?", text)
        if match:
            return f"{match.group(1)}[{int(match.group(2) or 0) + node.bars}]"
        # history of a compound expression: declared once, then read back
        type_: Literal["float", "bool"] = "bool" if node.operand.is_bool else "float"
        name = self.declare(("shifted", text), "shifted", type_, text)
        return f"{name}[{node.bars}]"


def _wrap(text: str, precedence: int, needed: int) -> str:
    return f"({text})" if precedence < needed else text


def _is_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_]+", text) is not None


def expressions_to_pine(
    expressions: Mapping[str, str], *, prefix: str = ""
) -> tuple[tuple[Statement, ...], dict[str, str]]:
    """Named rule-language expressions (numbers, prices, registered indicators, patterns; no
    params, no AI gate) as Pine: the top-level declarations they need, each once, every variable
    named ``prefix`` + what it is, and the variable holding each expression's value (a compound
    value is declared as ``float <prefix><name>``; a condition becomes ``1.0`` / ``0.0``)."""
    builder = _Builder(None, None, prefix=prefix)
    variables: dict[str, str] = {}
    for name, text in expressions.items():
        tree = parse_expression(text, name=name)
        value, _ = builder.expr(tree)
        if tree.is_bool:
            value = f"{value} ? 1.0 : 0.0"
        if not re.fullmatch(r"[A-Za-z_]\w*", value):
            value = builder.declare(("value", value), name, "float", value)
        variables[name] = value
    return tuple(builder.declarations), variables


def _commission(spec: StrategySpec, notes: list[str]) -> tuple[str, float]:
    costs = spec.costs
    if costs.commission_per_unit > 0 and costs.commission_percent > 0:
        message = (
            f"commission_percent={costs.commission_percent} is NOT exported: TradingView takes one "
            f"commission type; exported commission_per_unit={costs.commission_per_unit} as "
            "cash_per_contract"
        )
        warnings.warn(message, stacklevel=3)
        notes.append(f"NOT EXACT: {message}")
    if costs.commission_percent > 0 and costs.commission_per_unit == 0:
        return "strategy.commission.percent", costs.commission_percent
    return "strategy.commission.cash_per_contract", costs.commission_per_unit


def _slippage(spec: StrategySpec, notes: list[str]) -> int:
    slippage = int(spec.costs.slippage_ticks)
    if spec.costs.spread == "data":
        notes.append(
            "NOT EXACT: the spec takes bid/ask from the data; TradingView fills on the chart's prices"
        )
        return slippage
    half = spec.half_spread_ticks
    if half:
        notes.append(
            f"the fixed {spec.costs.spread}-pip spread is charged as aiopt's engine charges it: "
            f"half of it ({half} tick(s)) added to the slippage of {slippage} tick(s)"
        )
    return slippage + half


def _distance_expr(builder: _Builder, distance: Distance) -> str:
    """The distance in price units at the signal bar, as a Pine expression."""
    value = (
        builder.param_names[distance.value]
        if isinstance(distance.value, str)
        else pine_number(distance.value)
    )
    if distance.unit == "pips":
        return f"{value} * {pine_number(builder.spec.instrument_pip_size)}"
    if distance.unit == "percent":
        return f"close * {value} / 100.0"
    length: Node = (
        Param(distance.atr_length)
        if isinstance(distance.atr_length, str)
        else Const(float(distance.atr_length))
    )
    atr = builder.indicator(Indicator("atr", (length,)))
    return f"{atr} * {value}"


def _header(
    spec: StrategySpec,
    metrics: Mapping[str, Any] | None,
    data_range: str | None,
    notes: Sequence[str],
) -> tuple[str, ...]:
    lines = [
        f"{spec.name}: exported by aiopt (aiopt_lib.pine.export) from StrategySpec {spec.fingerprint()}",
        f"{spec.instrument} {spec.timeframe}; run it on a chart of that symbol and timeframe",
    ]
    if spec.description:
        lines.append(spec.description)
    if data_range:
        lines.append(f"data range: {data_range}")
    if metrics:
        lines.append("out-of-sample metrics:")
        for key, value in _flatten(metrics):
            lines.append(f"  {key}: {value}")
    lines.append(
        "semantics (aiopt_lib.strategy.backtest): signals at the close, market fills at the next"
    )
    lines.append("open, stop/take from the entry fill rounded to the tick, intrabar OHLC path")
    lines += list(notes)
    lines.append("spec:")
    lines += [f"  {line}" for line in spec.to_json(indent=2).splitlines()]
    return tuple(lines)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield f"{prefix}{key}", f"{value:.6g}"
        else:
            yield f"{prefix}{key}", value


def spec_to_ir(
    spec: StrategySpec,
    *,
    version: PineVersion = 5,
    metrics: Mapping[str, Any] | None = None,
    data_range: str | None = None,
    ai_rules: Mapping[str, str] | None = None,
) -> PineScript:
    """The :class:`PineScript` of ``spec`` (see the module docstring for what maps exactly).

    ``metrics`` (e.g. a ranking entry's ``out_of_sample`` mapping, nested mappings allowed) and
    ``data_range`` go into the header. ``ai_rules`` maps ``ai_buy`` / ``ai_sell`` / ``ai_hold`` to
    a Pine expression whose value replaces the model's probability (declared once at the top
    level as ``float ai_buy = (...)``, so it may call ``ta.*``); without it a spec that uses the AI
    gate raises :class:`PineExportError`.
    """
    if version not in VERSIONS:
        raise PineExportError(f"Pine version must be 5 or 6, got {version!r}")
    unknown = sorted(set(ai_rules or {}) - {"ai_buy", "ai_sell", "ai_hold"})
    if unknown:
        raise PineExportError(f"ai_rules keys must be ai_buy, ai_sell or ai_hold, got {unknown}")
    builder = _Builder(spec, ai_rules)
    notes: list[str] = []
    rules: dict[str, str] = {}
    for rule in RULES:
        tree = spec.rule(rule)
        text = "false" if tree is None else builder.expr(tree)[0]
        rules[rule] = builder.declare(("rule", rule), rule, "bool", text)

    allow_long = spec.direction in ("long", "both")
    allow_short = spec.direction in ("short", "both")
    long_entry, short_entry = rules["long_entry"], rules["short_entry"]
    # the engine: a forbidden entry closes the other side; both allowed entries at once: neither
    go_long = builder.name("go_long")
    go_short = builder.name("go_short")
    exit_long = builder.name("exit_long")
    exit_short = builder.name("exit_short")
    decisions: list[Statement] = [
        Var(
            go_long,
            "bool",
            (f"{long_entry} and not {short_entry}" if allow_short else long_entry)
            if allow_long
            else "false",
        ),
        Var(
            go_short,
            "bool",
            (f"{short_entry} and not {long_entry}" if allow_long else short_entry)
            if allow_short
            else "false",
        ),
        Var(
            exit_long,
            "bool",
            rules["long_exit"] if allow_short else f"{rules['long_exit']} or {short_entry}",
        ),
        Var(
            exit_short,
            "bool",
            rules["short_exit"] if allow_long else f"{rules['short_exit']} or {long_entry}",
        ),
    ]

    distances = {
        which: _distance_expr(builder, d)
        for which, d in (
            ("stop", spec.stop_loss),
            ("take", spec.take_profit),
            ("trail", spec.trailing_stop),
        )
        if d is not None
    }
    distance_vars = {
        which: builder.declare(("distance", which), f"{which}_distance", "float", expr)
        for which, expr in distances.items()
    }
    tick = spec.instrument_tick_size
    statements: list[Statement] = [
        If(
            f"barstate.isfirst and math.abs(syminfo.mintick - {pine_number(tick)}) > "
            f"{pine_number(tick / 1000.0)}",
            (
                Call(
                    "runtime.error("
                    + pine_string(
                        f"this export assumes a tick size (syminfo.mintick) of {pine_number(tick)}"
                    )
                    + ")"
                ),
            ),
        ),
        *decisions,
    ]
    side_ticks: dict[str, dict[str, str]] = {}
    side_updates: dict[str, list[Statement]] = {"long": [], "short": []}
    for side in ("long", "short"):
        sign_down = side == "long"  # the stop lies below the fill for a long
        ticks: dict[str, str] = {}
        for which, var in distance_vars.items():
            toward_loss = which in ("stop", "trail")
            # the engine rounds `entry -/+ d` to the tick: below the fill that is
            # ceil(d / tick - 0.5) ticks, above it floor(d / tick + 0.5)
            below = toward_loss == sign_down
            rounding = (
                f"math.ceil({var} / syminfo.mintick - 0.5)"
                if below
                else f"math.floor({var} / syminfo.mintick + 0.5)"
            )
            name = builder.name(f"{side}_{which}_ticks")
            statements.append(Var(name, "float", "na", persistent=True))
            side_updates[side].append(Assign(name, rounding))
            ticks[which] = name
        side_ticks[side] = ticks

    entry_ids = {
        "long": ('"L"', '"XL"', "strategy.long"),
        "short": ('"S"', '"XS"', "strategy.short"),
    }
    for side, go, position in (
        ("long", go_long, "strategy.position_size <= 0"),
        ("short", go_short, "strategy.position_size >= 0"),
    ):
        entry_id, _, direction = entry_ids[side]
        if (side == "long" and allow_long) or (side == "short" and allow_short):
            statements.append(
                If(
                    f"{go} and {position}",
                    (*side_updates[side], Call(f"strategy.entry({entry_id}, {direction})")),
                )
            )
    for side, exit_var, other_go, position in (
        ("long", exit_long, go_short, "strategy.position_size > 0"),
        ("short", exit_short, go_long, "strategy.position_size < 0"),
    ):
        entry_id = entry_ids[side][0]
        statements.append(
            If(
                f"{exit_var} and {position} and not {other_go}",
                (Call(f"strategy.close({entry_id})"),),
            )
        )
    for side in ("long", "short"):
        if not distance_vars or not (
            (side == "long" and allow_long) or (side == "short" and allow_short)
        ):
            continue
        entry_id, exit_id, _ = entry_ids[side]
        ticks = side_ticks[side]
        arguments = [f"from_entry={entry_id}"]
        stop, trail = ticks.get("stop"), ticks.get("trail")
        if stop and trail:
            loss = f"na({stop}) ? {trail} : na({trail}) ? {stop} : math.min({stop}, {trail})"
        else:
            loss = stop or trail
        if loss:
            # the trailing stop starts at the fill in the engine: a fixed stop at the same distance
            # covers TradingView's trail before its activation
            arguments.append(f"loss={loss}")
        if "take" in ticks:
            arguments.append(f"profit={ticks['take']}")
        if trail:
            arguments.append(f"trail_points=na({trail}) ? na : 0")
            arguments.append(f"trail_offset={trail}")
        # exit comments name the leg that filled in TradingView's List of Trades
        arguments.append('comment_loss="stop"')
        if "take" in ticks:
            arguments.append('comment_profit="take"')
        if trail:
            arguments.append('comment_trailing="trail"')
        any_level = " and ".join(f"na({v})" for v in ticks.values())
        statements.append(
            If(
                f"not ({any_level})",
                (Call(f"strategy.exit({exit_id}, {', '.join(arguments)})"),),
                (Call(f"strategy.cancel({exit_id})"),),
            )
        )

    direction = {"long": "long", "short": "short", "both": "all"}[spec.direction]
    statements.insert(1, Call(f"strategy.risk.allow_entry_in(strategy.direction.{direction})"))

    plots = [
        Call(
            f"plot({name}, title={pine_string(title)}"
            + ("" if price_scaled else ", display=display.data_window")
            + ")"
        )
        for name, title, price_scaled in builder.plots
    ]
    if allow_long:
        plots.append(
            Call(
                f'plotshape({go_long}, title="long entry", style=shape.triangleup, '
                "location=location.belowbar, color=color.green, size=size.tiny)"
            )
        )
    if allow_short:
        plots.append(
            Call(
                f'plotshape({go_short}, title="short entry", style=shape.triangledown, '
                "location=location.abovebar, color=color.red, size=size.tiny)"
            )
        )

    commission_type, commission_value = _commission(spec, notes)
    slippage = _slippage(spec, notes)
    notes.append("NOT EXACT: a position open at the end of the data stays open on TradingView")
    if version == 5:
        notes.append("NOT EXACT (v5): `not` of a comparison with na (warm-up) is false, v6 true")
    settings = (
        ("overlay", "true"),
        ("initial_capital", pine_number(spec.initial_capital)),
        ("currency", "currency.NONE"),
        ("default_qty_type", "strategy.fixed"),
        ("default_qty_value", pine_number(spec.quantity)),
        ("commission_type", commission_type),
        ("commission_value", pine_number(commission_value)),
        ("slippage", str(slippage)),
        ("pyramiding", "0"),
        ("process_orders_on_close", "true" if spec.fill == "close" else "false"),
        ("calc_on_every_tick", "false"),
        ("calc_on_order_fills", "false"),
        ("use_bar_magnifier", "false"),
        ("fill_orders_on_standard_ohlc", "true"),
        ("backtest_fill_limits_assumption", "0"),
        ("close_entries_rule", pine_string("FIFO")),
        ("margin_long", "0"),
        ("margin_short", "0"),
        ("max_bars_back", "500"),
    )
    return PineScript(
        version=version,
        header_comments=_header(spec, metrics, data_range, notes),
        strategy_call=StrategyCall(spec.name, settings),
        inputs=tuple(builder.inputs),
        declarations=(*builder.declarations,),
        statements=tuple(statements),
        plots=tuple(plots),
    )


def spec_to_pine(
    spec: StrategySpec,
    *,
    version: PineVersion = 5,
    metrics: Mapping[str, Any] | None = None,
    data_range: str | None = None,
    ai_rules: Mapping[str, str] | None = None,
    validate: bool = True,
) -> str:
    """``spec`` as a TradingView Pine Script strategy (v5 or v6): ``render(spec_to_ir(...))``.

    With ``validate`` (the default) the text goes through :func:`check_pine`; any error raises
    :class:`PineExportError` listing them (a bad ``ai_rules`` expression is caught this way).
    """
    text = render(
        spec_to_ir(spec, version=version, metrics=metrics, data_range=data_range, ai_rules=ai_rules)
    )
    if validate:
        errors = export_errors(check_pine(text, version))
        if errors:
            listed = "; ".join(str(i) for i in errors)
            raise PineExportError(f"the Pine export of {spec.name!r} does not validate: {listed}")
    return text


# ---------------------------------------------------------------------------------------------
# Validation

# Warnings a generated script must not have either: a ``ta.*`` call that skips bars would trade
# differently from our engine, which computes every indicator on every bar.
EXPORT_BLOCKING_CODES = frozenset({"conditional-ta"})


def export_errors(issues: list[PineIssue]) -> list[PineIssue]:
    """The issues that stop an export: every error, and the warnings of
    :data:`EXPORT_BLOCKING_CODES`."""
    return [i for i in issues if i.severity == "error" or i.code in EXPORT_BLOCKING_CODES]


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class PineIssue:
    """One problem found by :func:`check_pine`: 1-based ``line`` and ``column`` of the offending
    token, a ``message``, ``severity`` (``"error"``: TradingView refuses the script or it computes
    something other than it says; ``"warning"``: legal but fragile) and a ``code`` naming the
    class (``syntax``, ``version``, ``unknown-function``, ``arity``, ``undeclared``,
    ``conditional-ta``, ``when-argument``, ``transp-argument``, ``int-division``, or pine2pyne's
    own codes)."""

    line: int
    column: int
    message: str
    severity: Severity
    code: str = "syntax"

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.severity}: {self.message} [{self.code}]"


def _members(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TA = _members(
    "alma atr barssince bb bbw cci change cmo cog correlation cross crossover crossunder cum dev "
    "dmi ema falling highest highestbars hma kc kcw linreg lowest lowestbars macd max median mfi "
    "min mode mom percentile_linear_interpolation percentile_nearest_rank percentrank "
    "pivot_point_levels pivothigh pivotlow range rci rising rma roc rsi sar sma stdev stoch "
    "supertrend swma tr tsi valuewhen variance vwap vwma wma wpr"
)
_MATH = _members(
    "abs acos asin atan avg ceil cos exp floor log log10 max min pow random round "
    "round_to_mintick sign sin sqrt sum tan todegrees toradians"
)
_INPUT = _members(
    "bool color enum float int price session source string symbol text_area time timeframe"
)
_TRADES = (
    "commission entry_bar_index entry_comment entry_id entry_price entry_time exit_bar_index "
    "exit_comment exit_id exit_price exit_time max_drawdown max_drawdown_percent max_runup "
    "max_runup_percent profit profit_percent size"
)
_STRATEGY = (
    _members(
        "cancel cancel_all close close_all convert_to_account convert_to_symbol "
        "default_entry_qty entry exit order"
    )
    | {
        f"risk.{m}"
        for m in [
            "allow_entry_in",
            "max_cons_loss_days",
            "max_drawdown",
            "max_intraday_filled_orders",
            "max_intraday_loss",
            "max_position_size",
        ]
    }
    | {f"closedtrades.{m}" for m in _TRADES.split()}
    | {f"opentrades.{m}" for m in _TRADES.split() if not m.startswith("exit_")}
)
_FUNCTIONS_V5: dict[str, frozenset[str]] = {
    "ta": _TA,
    "math": _MATH,
    "input": _INPUT,
    "strategy": frozenset(_STRATEGY),
}
# Pine v6 keeps these namespaces' functions; its removals are arguments (`when`, `transp`),
# checked separately
KNOWN_FUNCTIONS: dict[int, dict[str, frozenset[str]]] = {5: _FUNCTIONS_V5, 6: _FUNCTIONS_V5}

# How many arguments (positional and keyword together) each ta.* function takes in Pine v5/v6,
# over all its overloads (TradingView's reference): `ta.sma(close)` is refused by TradingView.
# A function missing here is not counted.
_TA_ARITY: dict[str, tuple[int, int]] = {
    **dict.fromkeys(["atr", "barssince", "cum", "max", "min", "swma", "wpr"], (1, 1)),
    **dict.fromkeys(["change", "highest", "highestbars", "lowest", "lowestbars"], (1, 2)),
    **dict.fromkeys(
        _members(
            "cci cmo cog cross crossover crossunder dev dmi ema falling hma median mfi mode mom "
            "percentrank range rci rising rma roc rsi sma supertrend vwma wma"
        ),
        (2, 2),
    ),
    **dict.fromkeys(["pivothigh", "pivotlow", "pivot_point_levels", "stdev", "variance"], (2, 3)),
    **dict.fromkeys(
        _members(
            "bb bbw correlation linreg percentile_linear_interpolation percentile_nearest_rank "
            "sar tsi valuewhen"
        ),
        (3, 3),
    ),
    **dict.fromkeys(["kc", "kcw"], (3, 4)),
    **dict.fromkeys(["macd", "stoch"], (4, 4)),
    "alma": (4, 5),
    "tr": (0, 1),
    "vwap": (1, 3),
}


def _parser() -> Any:
    try:
        import pine2pyne
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ConfigError(
            "Pine validation needs the 'opencode-pine2pyne' package (pip install opencode-pine2pyne)"
        ) from exc
    return pine2pyne


@dataclass
class _Parsed:
    text: str
    tokens: list[Any]
    script: Any | None
    version: int | None
    issues: list[PineIssue] = field(default_factory=list)


def _parse(text: str, version: int | None) -> _Parsed:
    pine2pyne = _parser()
    try:
        tokens = pine2pyne.tokenize(text)
    except pine2pyne.LexerError as exc:
        issue = PineIssue(exc.line, exc.column, exc.message, "error", "syntax")
        return _Parsed(text, [], None, version, [issue])
    issues: list[PineIssue] = []
    annotated = next((t for t in tokens if t.type.name == "VERSION_ANNOTATION"), None)
    declared = int(annotated.value) if annotated and str(annotated.value).isdigit() else None
    if annotated is None:
        issues.append(PineIssue(1, 1, "no //@version= annotation", "error", "version"))
    elif version is not None and declared != version:
        issues.append(
            PineIssue(
                annotated.line,
                annotated.column,
                f"the script declares Pine v{annotated.value}, expected v{version}",
                "error",
                "version",
            )
        )
    script = None
    try:
        script, _repairs = pine2pyne.parse_source(text)
    except pine2pyne.Pine2PyneError as exc:
        error: Any = exc
        # pine2pyne 0.2 refuses some valid v6 spellings (see _normalised_tokens): parse again
        # with them respelled. Only a refused script is retried, so what parsed before parses
        # to the same tree; a script that is still refused reports the retry's error (the
        # respelled sites keep their positions) unless it sits before the first one, which
        # would mean the respelling itself went wrong.
        try:
            script = pine2pyne.parse_repair.parse_tokens(_normalised_tokens(tokens))
        except pine2pyne.Pine2PyneError as retry:
            if (retry.line, retry.column) >= (exc.line, exc.column):
                error = retry
        if script is None:
            issues.append(
                PineIssue(error.line or 1, error.column or 1, error.message, "error", "syntax")
            )
    return _Parsed(text, tokens, script, version or declared or 6, issues)


def _pine_token(kind: str, value: str, at: Any) -> Any:
    """A token of type ``kind`` placed at ``at``'s position (inserted by a respelling)."""
    from pine2pyne.tokens import Token, TokenType

    return Token(TokenType[kind], value, at.line, at.column, value)


def _is_method_head(tokens: list[Any], i: int) -> bool:
    """Whether the ``method`` token ``tokens[i]`` starts a method declaration: first on its
    line (or after ``export``) and followed by ``name(``."""
    before = tokens[i - 1].type.name if i > 0 else "NEWLINE"
    return (
        before in ("NEWLINE", "INDENT", "DEDENT", "EXPORT")
        and i + 2 < len(tokens)
        and tokens[i + 1].type.name == "IDENTIFIER"
        and tokens[i + 2].type.name == "LPAREN"
    )


def _ends_type(token: Any) -> bool:
    """Whether ``token`` can end a type, so that a name follows: ``float`` (not a qualifier),
    ``array<float>``, ``Pivot``."""
    kind = token.type.name
    qualifier = token.value in ("series", "simple", "const", "input")
    return kind in ("GT", "IDENTIFIER") or (kind == "TYPE_IDENTIFIER" and not qualifier)


def _normalised_tokens(tokens: list[Any]) -> list[Any]:
    """``tokens`` with the valid Pine v6 spellings opencode-pine2pyne 0.2's grammar rejects
    rewritten into equivalent ones it accepts, every original token keeping its position:

    * ``float[] values`` / ``Pivot[] xs`` as a function parameter or a type field: the grammar
      reads ``T[]`` only after ``var`` or at the head of a declaration -> ``array<T> values``;
    * ``method`` as an ordinary name (``method = input.string(...)``, a parameter named
      ``method``): the lexer makes it a keyword everywhere -> an identifier wherever it does not
      head a ``method name(...) =>`` declaration;
    * ``input`` as the name of a typed declaration (``float input = close``): the lexer makes it
      a type qualifier -> an identifier after a type;
    * ``export type`` / ``export enum`` / ``export const`` in a library: the grammar knows
      ``export`` only before a function -> the ``export`` is dropped (no check here reads it).
    """
    out: list[Any] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        kind = token.type.name
        following = [t.type.name for t in tokens[i + 1 : i + 4]]
        if kind == "METHOD" and not _is_method_head(tokens, i):
            out.append(_pine_token("IDENTIFIER", str(token.value), token))
        elif token.value == "input" and kind == "TYPE_IDENTIFIER" and out and _ends_type(out[-1]):
            out.append(_pine_token("IDENTIFIER", "input", token))
        elif kind == "EXPORT" and (
            following[:1] in (["TYPE"], ["ENUM"]) or str(tokens[i + 1].value) == "const"
        ):
            pass  # a script always ends with an EOF token: `tokens[i + 1]` exists
        elif (
            kind in ("TYPE_IDENTIFIER", "IDENTIFIER")
            and following[:2] == ["LBRACKET", "RBRACKET"]
            and following[2:] in (["IDENTIFIER"], ["TYPE_IDENTIFIER"])
        ):
            out += [
                _pine_token("TYPE_IDENTIFIER", "array", token),
                _pine_token("LT", "<", token),
                token,
                _pine_token("GT", ">", token),
            ]
            i += 2  # the `[]`
        else:
            out.append(token)
        i += 1
    return out


def _token_checks(parsed: _Parsed) -> list[PineIssue]:
    """Checks on the token stream: keyword arguments, namespace functions, int literal division."""
    issues = []
    tokens = [t for t in parsed.tokens if t.type.name not in ("COMMENT",)]
    table = KNOWN_FUNCTIONS.get(parsed.version or 6, _FUNCTIONS_V5)
    if parsed.script is not None:
        # `import TradingView/ta/7` is called as `ta.ao()`: a library may take a namespace's name
        imported = {i.alias or i.library for i in getattr(parsed.script, "imports", [])}
        table = {head: members for head, members in table.items() if head not in imported}
    depth = 0
    for i, token in enumerate(tokens):
        kind = token.type.name
        following = tokens[i + 1].type.name if i + 1 < len(tokens) else "EOF"
        if kind in ("LPAREN", "LBRACKET"):
            depth += 1
        elif kind in ("RPAREN", "RBRACKET"):
            depth = max(depth - 1, 0)
        elif kind == "IDENTIFIER" and following == "ASSIGN" and depth > 0:
            if token.value == "when":
                severity: Severity = "error"
                issues.append(
                    PineIssue(
                        token.line,
                        token.column,
                        "`when=` was removed in Pine v6 (deprecated in v5): wrap the call in `if`",
                        severity,
                        "when-argument",
                    )
                )
            elif token.value == "transp":
                issues.append(
                    PineIssue(
                        token.line,
                        token.column,
                        "`transp=` does not exist since Pine v5: use color.new(color, transparency)",
                        "error",
                        "transp-argument",
                    )
                )
        elif kind == "IDENTIFIER" and following == "LPAREN" and "." in str(token.value):
            head, _, member = str(token.value).partition(".")
            if head in table and member not in table[head]:
                issues.append(
                    PineIssue(
                        token.line,
                        token.column,
                        f"unknown function {token.value}() in Pine v{parsed.version}",
                        "error",
                        "unknown-function",
                    )
                )
        elif (
            kind == "DIV"
            and i > 0
            and tokens[i - 1].type.name == "INT_LITERAL"
            and following == "INT_LITERAL"
            # `x * 1/2` is (x * 1) / 2: the left literal must be the division's whole operand
            and (i < 2 or tokens[i - 2].type.name not in ("MULT", "DIV", "MOD"))
        ):
            v5 = parsed.version == 5
            issues.append(
                PineIssue(
                    token.line,
                    token.column,
                    f"{tokens[i - 1].value}/{tokens[i + 1].value} divides two int literals: "
                    + ("truncated to an int in Pine v5" if v5 else "int in v5, float in v6")
                    + "; write a float literal (1.0/2)",
                    "error" if v5 else "warning",
                    "int-division",
                )
            )
    return issues


_IF_BODY = "runs only when its `if` block runs"
_BRANCH = "runs only when its `switch`/`?:` branch is taken"
_LAZY_OPERAND = "is the right operand of `and`/`or`, evaluated lazily in Pine v6"
# A call nested in several conditional contexts keeps the most severe one: a `?:` inside an
# `if` block is still an `if` block's call.
_REASON_RANK = {None: 0, _BRANCH: 1, _LAZY_OPERAND: 2, _IF_BODY: 3}


def _within(outer: str | None, inner: str) -> str:
    return inner if _REASON_RANK[inner] > _REASON_RANK[outer] else str(outer)


def _conditional_ta_calls(script: Any) -> list[tuple[Any, str]]:
    """Every ``ta.*`` call of ``script`` that may not run on every bar, with the reason."""
    from pine2pyne import ast_nodes as n
    from pine2pyne.ast_walk import child_field_names, is_node

    found: list[tuple[Any, str]] = []

    def visit(value: Any, reason: str | None) -> None:
        if isinstance(value, list | tuple):
            for item in value:
                visit(item, reason)
            return
        if isinstance(value, dict):
            for item in value.values():
                visit(item, reason)
            return
        if not is_node(value):
            return
        if isinstance(value, n.IfStatement):
            visit(value.condition, reason)
            visit(value.body, _within(reason, _IF_BODY))
            for condition, body in value.elseifs:
                visit(condition, _within(reason, _IF_BODY))
                visit(body, _within(reason, _IF_BODY))
            visit(value.else_body, _within(reason, _IF_BODY))
        elif isinstance(value, n.IfExpression):
            visit(value.condition, reason)
            visit(value.true_expr, _within(reason, _IF_BODY))
            visit(value.false_expr, _within(reason, _IF_BODY))
        elif isinstance(value, n.TernaryOp):
            visit(value.condition, reason)
            visit(value.true_expr, _within(reason, _BRANCH))
            visit(value.false_expr, _within(reason, _BRANCH))
        elif isinstance(value, n.SwitchStatement | n.SwitchExpression):
            visit(value.expr, reason)
            for k, (case, body) in enumerate(value.cases):
                visit(case, reason if k == 0 else _within(reason, _BRANCH))
                visit(body, _within(reason, _BRANCH))
            visit(value.default, _within(reason, _BRANCH))
        elif isinstance(value, n.BinaryOp) and value.op in ("and", "or"):
            visit(value.left, reason)
            visit(value.right, _within(reason, _LAZY_OPERAND))
        elif isinstance(value, n.FuncDecl):
            visit(value.body, None)  # whether the function runs on every bar is its caller's
        else:
            if (
                reason
                and isinstance(value, n.FunctionCall)
                and isinstance(value.func, str)
                and value.func.startswith("ta.")
            ):
                found.append((value, reason))
            for name in child_field_names(type(value)):
                visit(getattr(value, name), reason)

    visit([*script.declarations, *script.body], None)
    return found


def _conditional_ta_issue(call: Any, reason: str, version: int | None) -> PineIssue:
    """The issue of a ``ta.*`` call that may skip bars: a warning, as TradingView compiles it
    ("should be called on each calculation for consistency") — the script is valid. In an ``if``
    block or a lazy v6 operand its result really differs from a call on every bar (the call's
    history only holds the bars it ran on), which the message says; a ``switch`` arm or a ``?:``
    branch mostly picks one indicator by a setting, taken on every bar or on none. Our own
    exports refuse both (:data:`EXPORT_BLOCKING_CODES`)."""
    if reason == _BRANCH or (reason == _LAZY_OPERAND and version == 5):
        why = "it should be called on each bar for consistency (TradingView warns)"
    else:
        why = "its history differs from a call on every bar (TradingView warns)"
    return PineIssue(
        call.line,
        call.column,
        f"{call.func}() {reason}: {why}; declare it at the top level",
        "warning",
        "conditional-ta",
    )


def _declared_names(script: Any) -> set[str]:
    from pine2pyne import ast_nodes as n
    from pine2pyne.ast_walk import walk as pine_walk

    names: set[str] = set()
    for node in pine_walk([*script.declarations, *script.body]):
        named = (
            n.InputDecl,
            n.VarDecl,
            n.VaripDecl,
            n.FuncDecl,
            n.Parameter,
            n.TypeDecl,
            n.EnumDecl,
        )
        if isinstance(node, named):
            names.add(node.name)
        elif isinstance(node, n.Assignment):
            target = node.target
            names.update(target.names if isinstance(target, n.TupleDestructure) else [target])
        elif isinstance(node, n.ForLoop):
            names.add(node.var)
        elif isinstance(node, n.ForInLoop):
            names.update(node.vars)
    for imported in getattr(script, "imports", []):
        # `import user/Lib/1` is used as `Lib.f()`, `import user/Lib/1 as L` as `L.f()`
        names.update(filter(None, [imported.alias, imported.library]))
    return {str(name) for name in names if isinstance(name, str)}


def _arity_issues(call: Any) -> list[PineIssue]:
    least, most = _TA_ARITY[call.func[3:]]
    given = len(call.args) + len(call.kwargs)
    if least <= given <= most:
        return []
    takes = f"{least}" if least == most else f"{least} to {most}"
    return [
        PineIssue(
            call.line,
            call.column,
            f"{call.func}() takes {takes} argument{'s' * (most != 1)}, got {given}",
            "error",
            "arity",
        )
    ]


def _tree_checks(parsed: _Parsed) -> list[PineIssue]:
    from pine2pyne import ast_nodes as n
    from pine2pyne.ast_walk import walk as pine_walk
    from pine2pyne.pine_semantics import BUILTIN_NAMES, check_script

    script = parsed.script
    issues = []
    for call, reason in _conditional_ta_calls(script):
        issues.append(_conditional_ta_issue(call, reason, parsed.version))
    declared = _declared_names(script)
    known = declared | set(BUILTIN_NAMES) | _PINE_KEYWORDS
    for node in pine_walk([*script.declarations, *script.body]):
        called = isinstance(node, n.FunctionCall) and isinstance(node.func, str)
        if isinstance(node, n.Identifier):
            name = node.name
        elif called and "." in node.func:
            # `xs.size()` is a call named "xs.size": it reads `xs`
            name = node.func.split(".")[0]
        else:
            name = ""
        if name and node.line and name.split(".")[0] not in known:
            issues.append(
                PineIssue(
                    node.line,
                    node.column,
                    f"undeclared identifier '{name}'",
                    "error",
                    "undeclared",
                )
            )
        if called and node.func.startswith("ta.") and node.func[3:] in _TA_ARITY:
            issues += _arity_issues(node)
    seen = {(i.line, i.column) for i in issues}
    for diagnostic in check_script(script):
        if (
            diagnostic.code == "conditional-history-call"
            or (diagnostic.line, diagnostic.column) in seen
        ):
            continue
        issues.append(
            PineIssue(
                diagnostic.line,
                diagnostic.column,
                diagnostic.message,
                "error" if diagnostic.severity == "refuse" else "warning",
                diagnostic.code,
            )
        )
    return issues


def check_pine(text: str, version: int | None = None) -> list[PineIssue]:
    """The problems of a Pine Script, sorted by position (empty: it validates).

    ``version`` (5 or 6) is the Pine version the script must declare; None takes its
    ``//@version=`` annotation. Syntax errors come from the ``opencode-pine2pyne`` parser (the
    first one only: the parser stops there); the other checks are listed in the module docstring.
    """
    if version is not None and version not in VERSIONS:
        raise ConfigError(f"Pine version must be 5 or 6, got {version!r}")
    parsed = _parse(text, version)
    issues = list(parsed.issues)
    if parsed.tokens:
        issues += _token_checks(parsed)
    if parsed.script is not None:
        issues += _tree_checks(parsed)
    unique = {(i.line, i.column, i.code, i.message): i for i in issues}
    return sorted(unique.values(), key=lambda i: (i.line, i.column, i.code))


# ---------------------------------------------------------------------------------------------
# Auto-correction


class _Source:
    """Token positions of ``text`` as character offsets (tokens carry 1-based line/column)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = [t for t in _parser().tokenize(text) if t.type.name != "COMMENT"]
        self.starts = [0]
        for i, char in enumerate(text):
            if char == "\n":
                self.starts.append(i + 1)

    def offset(self, line: int, column: int) -> int:
        return self.starts[line - 1] + column - 1

    def start(self, token: Any) -> int:
        return self.offset(token.line, token.column)

    def end(self, token: Any) -> int:
        return self.start(token) + len(
            token.lexeme if token.lexeme is not None else str(token.value)
        )

    def index_at(self, line: int, column: int) -> int | None:
        for i, token in enumerate(self.tokens):
            if token.line == line and token.column == column:
                return i
        return None

    def closing(self, i: int) -> int:
        """Index of the token closing the bracket opened at token ``i``."""
        depth = 0
        for j in range(i, len(self.tokens)):
            kind = self.tokens[j].type.name
            if kind in ("LPAREN", "LBRACKET"):
                depth += 1
            elif kind in ("RPAREN", "RBRACKET"):
                depth -= 1
                if depth == 0:
                    return j
        raise ValueError("unbalanced brackets")

    def argument(self, i: int) -> tuple[int, int]:
        """``(first, last)`` token indices of the keyword argument whose name is token ``i``."""
        depth, j = 0, i + 2
        while j < len(self.tokens):
            kind = self.tokens[j].type.name
            if kind in ("LPAREN", "LBRACKET"):
                depth += 1
            elif kind in ("RPAREN", "RBRACKET"):
                if depth == 0:
                    break
                depth -= 1
            elif kind == "COMMA" and depth == 0:
                break
            j += 1
        return i, j - 1

    def removal(self, first: int, last: int) -> tuple[int, int]:
        """The text span to delete with the argument ``first..last``: with its leading comma (or,
        as the first argument, its trailing comma and the space after it)."""
        before = self.tokens[first - 1]
        if before.type.name == "COMMA":
            return self.start(before), self.end(self.tokens[last])
        after = self.tokens[last + 1]
        end = self.end(after) if after.type.name == "COMMA" else self.end(self.tokens[last])
        while end < len(self.text) and self.text[end] == " ":
            end += 1
        return self.start(self.tokens[first]), end


def _fix_transp(text: str, issue: PineIssue, version: int | None) -> tuple[str, str] | None:
    source = _Source(text)
    i = source.index_at(issue.line, issue.column)
    if i is None:
        return None
    first, last = source.argument(i)
    start, end = source.removal(first, last)
    removed = text[source.start(source.tokens[first]) : source.end(source.tokens[last])]
    return text[:start] + text[end:], f"{issue.line}:{issue.column}: dropped `{removed}`"


def _fix_when(text: str, issue: PineIssue, version: int | None) -> tuple[str, str] | None:
    source = _Source(text)
    i = source.index_at(issue.line, issue.column)
    if i is None:
        return None
    first, last = source.argument(i)
    condition = " ".join(
        text[source.start(source.tokens[first + 2]) : source.end(source.tokens[last])].split()
    )
    # the call must be a statement of its own: the first token of its line, ended by a newline
    k = first
    while k > 0 and source.tokens[k - 1].type.name not in ("NEWLINE", "INDENT", "DEDENT"):
        k -= 1
    head = source.tokens[k]
    if not (head.type.name == "IDENTIFIER" and source.tokens[k + 1].type.name == "LPAREN"):
        return None
    close = source.closing(k + 1)
    if close + 1 < len(source.tokens) and source.tokens[close + 1].type.name not in (
        "NEWLINE",
        "DEDENT",
        "EOF",
    ):
        return None
    line_start = source.starts[head.line - 1]
    statement_end = source.end(source.tokens[close])
    start, end = source.removal(first, last)
    statement = text[line_start:start] + text[end:statement_end]
    indent = statement[: len(statement) - len(statement.lstrip(" \t"))]
    body = "\n".join(f"    {line}" for line in statement.split("\n"))
    wrapped = f"{indent}if {condition}\n{body}"
    fix = (
        f"{issue.line}:{issue.column}: `when={condition}` -> `if {condition}` around {head.value}()"
    )
    return text[:line_start] + wrapped + text[statement_end:], fix


def _fix_int_division(text: str, issue: PineIssue, version: int | None) -> tuple[str, str] | None:
    source = _Source(text)
    i = source.index_at(issue.line, issue.column)
    if i is None or i == 0 or source.tokens[i - 1].type.name != "INT_LITERAL":
        return None
    left, right = source.tokens[i - 1], source.tokens[i + 1]
    start, end = source.start(left), source.end(left)
    new = f"{text[start:end]}.0"
    fix = f"{left.line}:{left.column}: `{left.lexeme}/{right.lexeme}` -> `{new}/{right.lexeme}`"
    return text[:start] + new + text[end:], fix


def _fix_conditional_ta(text: str, issue: PineIssue, version: int | None) -> tuple[str, str] | None:
    from pine2pyne import ast_nodes as n
    from pine2pyne.pine_semantics import BUILTIN_NAMES

    parsed = _parse(text, version)
    if parsed.script is None:
        return None
    script = parsed.script
    top = sorted([*script.declarations, *script.body], key=lambda item: (item.line, item.column))
    container = None
    for item in top:
        if item.line and item.line <= issue.line:
            container = item
    if container is None or isinstance(container, n.FuncDecl):
        return None  # a call in a function body depends on its caller: not hoisted
    global_names = set()
    for item in top:
        if isinstance(item, n.InputDecl | n.VarDecl | n.VaripDecl) and item.line < container.line:
            global_names.add(item.name)
        elif isinstance(item, n.Assignment) and item.line < container.line:
            target = item.target
            global_names.update(
                target.names if isinstance(target, n.TupleDestructure) else [target]
            )
    source = _Source(text)
    i = source.index_at(issue.line, issue.column)
    if i is None or source.tokens[i + 1].type.name != "LPAREN":
        return None
    close = source.closing(i + 1)
    for k in range(i + 2, close):
        token = source.tokens[k]
        is_keyword = source.tokens[k + 1].type.name == "ASSIGN"
        if token.type.name == "IDENTIFIER" and not is_keyword:
            head = str(token.value).split(".")[0]
            if head not in global_names and head not in BUILTIN_NAMES:
                return None  # reads a local or later variable: hoisting would change it
    call = text[source.start(source.tokens[i]) : source.end(source.tokens[close])]
    taken = _declared_names(script) | set(BUILTIN_NAMES) | _PINE_KEYWORDS
    base = f"{str(source.tokens[i].value).replace('.', '_')}_hoisted"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    start, end = source.start(source.tokens[i]), source.end(source.tokens[close])
    text = text[:start] + name + text[end:]
    insert_at = source.starts[container.line - 1]
    text = text[:insert_at] + f"{name} = {call}\n" + text[insert_at:]
    fix = (
        f"{issue.line}:{issue.column}: hoisted `{call}` to the top level as `{name}` (line "
        f"{container.line}); it now runs on every bar"
    )
    return text, fix


_FIXERS = {
    "transp-argument": _fix_transp,
    "when-argument": _fix_when,
    "int-division": _fix_int_division,
    "conditional-ta": _fix_conditional_ta,
}


def fix_pine(text: str, version: int | None = None) -> tuple[str, list[str]]:
    """Rewrite the fixable problems of a Pine Script: ``(fixed_text, fixes)``, one line per fix.

    Fixed: ``when=cond`` on a call statement (the call is wrapped in ``if cond``), ``transp=``
    (dropped: set the transparency with ``color.new``), a ``ta.*`` call in an ``if`` body, a
    branch or a lazy ``and``/``or`` operand whose arguments are global (hoisted into a top-level
    variable, so it runs on every bar), ``1/2`` (``1.0/2``). One fix at a time, re-checked after
    each; what remains is reported by :func:`check_pine` on the result.
    """
    fixes: list[str] = []
    failed: set[tuple[int, int, str, str]] = set()
    for _ in range(200):
        issues = check_pine(text, version)
        for issue in issues:
            key = (issue.line, issue.column, issue.code, text)
            fixer = _FIXERS.get(issue.code)
            if fixer is None or key in failed:
                continue
            result = fixer(text, issue, version)
            if result is None:
                failed.add(key)
                continue
            text, fix = result
            fixes.append(fix)
            break
        else:
            return text, fixes
    return text, fixes


# ---------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class PineFile:
    """One exported strategy of a ranking: its ``rank``, the written ``path`` (None when it could
    not be exported) and the ``error`` saying why."""

    rank: int
    name: str
    path: Path | None
    error: str | None = None


def export_ranking(
    ranking: str | Path, out: str | Path, *, version: PineVersion = 5
) -> list[PineFile]:
    """Write each strategy of a ranking file (:func:`aiopt_lib.strategy.search.save_ranking`) as a
    validated ``<out>/<rank>_<name>.pine`` with its out-of-sample metrics in the header.

    A strategy that cannot be exported (the AI gate, until it is distilled into rules) is listed
    with its error and no file.
    """
    out = Path(out)
    files = []
    for spec, extra in load_ranking(ranking):
        rank = int(extra["rank"])
        metrics = {k: v for k, v in (extra.get("out_of_sample") or {}).items() if v is not None}
        data_range = f"out of sample from {extra['oos_start']}" if "oos_start" in extra else None
        try:
            text = spec_to_pine(spec, version=version, metrics=metrics, data_range=data_range)
        except PineExportError as exc:
            files.append(PineFile(rank, spec.name, None, str(exc)))
            continue
        path = out / f"{rank}_{_slug(spec.name)}.pine"
        write_text_atomic(path, text)
        files.append(PineFile(rank, spec.name, path))
    return files
