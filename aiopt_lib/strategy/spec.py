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

Rules are written in the rule language of :mod:`aiopt_lib.strategy.rules`.

Stops and costs: :class:`Distance` gives the stop-loss / take-profit / trailing-stop distance in
``pips``, ``percent`` of the signal bar's close, or ``atr`` multiples of ``atr(atr_length)`` at the
signal bar; :class:`Costs` the spread (``"data"``: the bars' bid/ask or ``spread`` columns; or a
fixed number of pips, charged as TradingView would: half of it as slippage), commission and
slippage. Fills follow :mod:`aiopt_lib.strategy.backtest`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from aiopt_lib.core.atomic import write_text_atomic
from aiopt_lib.core.bars import parse_timeframe
from aiopt_lib.core.errors import ConfigError, validation_problems
from aiopt_lib.core.instruments import POINT_VALUES
from aiopt_lib.features.lookahead import LookaheadReport, check_no_lookahead
from aiopt_lib.features.patterns import PATTERNS
from aiopt_lib.features.registry import lookup_output
from aiopt_lib.strategy.backtest import (
    BacktestResult,
    ExecutionConfig,
    OrderSignals,
    run_backtest,
)
from aiopt_lib.strategy.rules import (
    AI_FIELDS,
    PRICE_FIELDS,
    Node,
    SignalContext,
    evaluate,
    parse_rule,
)

SCHEMA_VERSION = 1
RULES: tuple[str, ...] = ("long_entry", "long_exit", "short_entry", "short_exit")


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
            if key in AI_FIELDS or lookup_output(key) is not None or key in ("true", "false"):
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
                value = self.resolve_number(distance.value, f"{which}.value")
                if not value > 0:
                    raise ConfigError(f"{which}: the distance must be > 0, got {value}")
                length = self.resolve_number(distance.atr_length, f"{which}.atr_length")
                if not (float(length).is_integer() and length >= 1):
                    raise ConfigError(f"{which}: atr_length must be a whole number >= 1")
        if not (self.quantity > 0 and self.initial_capital > 0):
            raise ConfigError("quantity and initial_capital must be > 0")
        self.execution_config()  # tick size and instrument checks
        return self

    def resolve_number(self, value: float | str, where: str) -> float:
        """A number of the spec (e.g. a stop distance's ``value``) as a float: ``value`` itself,
        or the value of the param it names; an unknown param is a ``ConfigError`` naming ``where``."""
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
# Signals


def _distance(
    spec: StrategySpec, distance: Distance | None, context: SignalContext
) -> np.ndarray | None:
    if distance is None:
        return None
    value = spec.resolve_number(distance.value, "distance")
    if distance.unit == "pips":
        return np.full(len(context), value * spec.instrument_pip_size)
    if distance.unit == "percent":
        return context.price("close") * (value / 100.0)
    length = int(spec.resolve_number(distance.atr_length, "atr_length"))
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

    def signals_of(frame: pl.DataFrame) -> pl.DataFrame:
        frame_predictions = predictions(frame) if callable(predictions) else predictions
        return signals_frame(spec, frame, frame_predictions).drop("ts")

    return check_no_lookahead(signals_of, bars, **options)


__all__ = [
    "RULES",
    "Costs",
    "Distance",
    "StrategySpec",
    "backtest",
    "check_spec_no_lookahead",
    "compile_signals",
    "load_spec",
    "save_spec",
    "signals_frame",
    "validate_model",
]
