"""The indicator registry: one definition per indicator, read by every part of the workbench.

An :class:`IndicatorDef` carries everything the consumers need:

==========================  ====================================================================
field                       read by
==========================  ====================================================================
``params`` (defaults,       the rule language (``cci(20)``, ``cci()`` with the defaults, ``cci(n)``
search ranges)              with a spec param), search templates (``ParamRange.of("cci.length")``)
``outputs``                 the rule language's function names (``kc_upper(20, 2)``)
``inputs``, ``compute``     the vectorised engine, :func:`add_indicator`, :func:`compute_frame`,
                            the distillation features
``stream``                  the bar-by-bar engine (Nautilus, paper trading)
``pine``                    the Pine Script export (and the distilled Pine gate)
``warmup``                  the bars before each output is defined for good
``overlay``, ``levels``,    the charts (price axis or a panel of its own, reference lines, the
``bounds``, ``histogram``   panel's y range, outputs drawn as bars) and the model-input overlays
column names                :func:`column_name` (``rsi_14``, ``kc_upper_20_2``): frames, features
==========================  ====================================================================

Adding an indicator is one :func:`register` call: a kernel (any function of numpy arrays that
follows the conventions of :mod:`aiopt_lib.features.indicators`: NaN where TradingView shows na,
the value at bar ``t`` from bars ``<= t`` only), a bar-by-bar state machine with the same values,
and the Pine expression; the rule parser, the streaming evaluator, the Pine export, the
distillation and the charts then know it (``tests/test_registry.py`` registers a toy indicator
and finds it in all of them). The sixteen built-ins below are TradingView's ``ta.*`` functions,
checked bar for bar against pynecore (``tests/test_indicators.py``,
``tests/test_indicators_more.py``).

:func:`compute_frame` computes many indicators into a polars frame at once; the kernels release
the GIL, so it runs them on a thread per core (``benchmarks/bench_indicators.py``).
:class:`IndicatorParams` is the model's indicator feature set (the eight classic indicators with
their parameters) that :func:`add_indicators` adds; every registered indicator can be added with
:func:`add_indicator`.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.features import indicator_streams as st
from aiopt_lib.features import indicators as ind
from aiopt_lib.features import indicators_more as more

__all__ = [
    "INDICATOR_KINDS",
    "PRICE_INPUTS",
    "REGISTRY",
    "IndicatorDef",
    "IndicatorParam",
    "IndicatorParams",
    "IndicatorRequest",
    "PineStep",
    "add_atr",
    "add_bollinger",
    "add_dmi",
    "add_ema",
    "add_indicator",
    "add_indicators",
    "add_macd",
    "add_rsi",
    "add_sma",
    "add_stoch",
    "column_name",
    "compute_frame",
    "compute_indicator",
    "indicator_columns",
    "lookup_output",
    "output_names",
    "overlay_outputs",
    "parse_column",
    "register",
    "unregister",
]

PRICE_INPUTS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "hl2", "hlc3", "ohlc4")
"""The bar fields an indicator may read (``hl2`` ... derived as TradingView derives them)."""


# ---------------------------------------------------------------------------------------------
# Definitions


@dataclass(frozen=True)
class IndicatorParam:
    """One argument of an indicator: its name, its default (an ``int`` for a length, a ``float``
    for a multiplier) and the range a search usually tries (``low..high``)."""

    name: str
    default: int | float
    low: int | float
    high: int | float

    @property
    def is_int(self) -> bool:
        return isinstance(self.default, int)


@dataclass(frozen=True)
class PineStep:
    """One Pine declaration of an indicator: the outputs it declares (a tuple declaration when
    more than one) and its expression, a :meth:`str.format` template over the params by name,
    ``{source}`` and the outputs of earlier steps by name (``"ta.sma({stoch_k}, {d_length})"``)."""

    outputs: tuple[str, ...]
    expr: str

    def fields(self) -> frozenset[str]:
        return frozenset(f for _, f, _, _ in string.Formatter().parse(self.expr) if f)


@dataclass(frozen=True)
class IndicatorDef:
    """Everything about one indicator (see the module docstring for who reads what).

    ``compute(*inputs, *args)`` returns one array per output (a bare array for one output), NaN
    where TradingView shows na; ``stream(*args)`` a fresh state machine whose
    ``update(open, high, low, close, volume)`` returns the outputs on the new bar; ``warmup(*args)``
    the number of bars before each output is defined for good. ``sourced``: the first input is a
    ``source`` a caller may replace (``IndicatorRequest.source``; the rule language and the
    bar-by-bar machines use the default)."""

    name: str
    title: str
    pine_name: str
    params: tuple[IndicatorParam, ...]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    compute: Callable[..., Any] = field(compare=False)
    stream: Callable[..., Any] = field(compare=False)
    pine: tuple[PineStep, ...]
    warmup: Callable[..., tuple[int, ...]] = field(compare=False)
    sourced: bool = False
    overlay: frozenset[str] = frozenset()
    levels: tuple[float, ...] = ()
    bounds: tuple[float, float] | None = None
    histogram: frozenset[str] = frozenset()
    column_args: Mapping[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = field(
        default_factory=dict, compare=False
    )
    cost: float = 1.0  # ms per million bars on one core: compute_frame runs the costliest first
    description: str = ""

    @property
    def defaults(self) -> tuple[int | float, ...]:
        return tuple(p.default for p in self.params)

    @property
    def default_source(self) -> str:
        return self.inputs[0]

    def param(self, name: str) -> IndicatorParam:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(
            f"{self.name} has no parameter {name!r}; its parameters: "
            f"{', '.join(p.name for p in self.params) or 'none'}"
        )

    def normalise(self, args: Sequence[float]) -> tuple[int | float, ...]:
        """``args`` (defaults filled in) checked and typed: lengths whole numbers >= 1, other
        numbers finite and > 0; raises :class:`ConfigError` naming the argument."""
        if len(args) > len(self.params):
            raise ConfigError(f"{self.name}() takes at most {len(self.params)} argument(s)")
        values: list[int | float] = []
        for i, p in enumerate(self.params):
            value = args[i] if i < len(args) else p.default
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ConfigError(f"{self.name}(): '{p.name}' must be a number, got {value!r}")
            number = float(value)
            if p.is_int:
                if not (math.isfinite(number) and number.is_integer() and number >= 1):
                    raise ConfigError(
                        f"{self.name}(): '{p.name}' must be a whole number >= 1, got {value}"
                    )
                values.append(int(number))
            else:
                if not (math.isfinite(number) and number > 0):
                    raise ConfigError(f"{self.name}(): '{p.name}' must be > 0, got {value}")
                values.append(number)
        return tuple(values)


REGISTRY: dict[str, IndicatorDef] = {}
"""Every registered indicator by name (``register`` adds to it)."""

_OUTPUTS: dict[str, tuple[IndicatorDef, int]] = {}
_RESERVED = frozenset(
    (*PRICE_INPUTS, "true", "false", "crossover", "crossunder", "low_touches", "high_touches")
)


def register(definition: IndicatorDef, *, replace: bool = False) -> IndicatorDef:
    """Add ``definition`` to the registry (all consumers find it from then on) and return it.

    Output names must be new (and not a price or template name) unless ``replace`` is set and
    they belong to the indicator being replaced."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", definition.name):
        raise ConfigError(f"indicator name {definition.name!r}: lower-case letters, digits, _")
    if definition.name in REGISTRY and not replace:
        raise ConfigError(f"indicator {definition.name!r} is already registered")
    unknown = sorted(set(definition.inputs) - set(PRICE_INPUTS))
    if unknown or not definition.inputs:
        raise ConfigError(f"{definition.name}: inputs must be among {PRICE_INPUTS}, got {unknown}")
    declared = [o for step in definition.pine for o in step.outputs]
    if sorted(declared) != sorted(definition.outputs):
        raise ConfigError(
            f"{definition.name}: the Pine steps must declare each output once, got {declared}"
        )
    old = REGISTRY.get(definition.name)
    for output in definition.outputs:
        owner = _OUTPUTS.get(output)
        if output in _RESERVED or (owner is not None and owner[0] is not old):
            raise ConfigError(f"{definition.name}: output name {output!r} is already taken")
    if old is not None:
        unregister(old.name)
    REGISTRY[definition.name] = definition
    for i, output in enumerate(definition.outputs):
        _OUTPUTS[output] = (definition, i)
    return definition


def unregister(name: str) -> None:
    """Remove the indicator ``name`` (tests use it to take a toy indicator out again)."""
    definition = REGISTRY.pop(name)
    for output in definition.outputs:
        _OUTPUTS.pop(output, None)


def lookup_output(output: str) -> tuple[IndicatorDef, int] | None:
    """The indicator an output name belongs to (``"macd_signal"`` -> (macd, 1)), or None."""
    return _OUTPUTS.get(output)


def output_names() -> tuple[str, ...]:
    """Every output name the rule language knows, sorted."""
    return tuple(sorted(_OUTPUTS))


def overlay_outputs() -> tuple[str, ...]:
    """The outputs drawn on the price axis (moving averages, bands, ...), sorted."""
    return tuple(sorted(o for o, (d, _) in _OUTPUTS.items() if o in d.overlay))


# ---------------------------------------------------------------------------------------------
# Column names


def _format_number(value: int | float) -> str:
    """2 -> "2", 2.0 -> "2", 2.5 -> "2.5": the shortest text that reads back as the number."""
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def column_name(output: str, args: Sequence[float] | None = None, source: str | None = None) -> str:
    """The column name of one indicator output: the one place names are made.

    ``output`` with its arguments (defaults when left out), each printed shortest (``rsi_14``,
    ``macd_signal_12_26_9``, ``bb_upper_20_2``, ``kc_lower_20_2.5``, ``obv``), the arguments an
    indicator's ``column_args`` picks (``plus_di_14``; ``adx_14``, or ``adx_14_20`` when the
    smoothing differs), and ``_<source>`` when a sourced indicator reads another column than
    its default (``rsi_14_open``)."""
    found = lookup_output(output)
    if found is None:
        raise ValueError(f"unknown indicator output {output!r}; known: {', '.join(output_names())}")
    definition, _ = found
    values = definition.normalise(tuple(args or ()))
    picked = definition.column_args.get(output, lambda a: a)(values)
    name = "_".join([output, *(_format_number(v) for v in picked)])
    if definition.sourced and source is not None and source != definition.default_source:
        name = f"{name}_{source}"
    return name


def parse_column(name: str) -> tuple[IndicatorDef, str, tuple[int | float, ...], str] | None:
    """The (indicator, output, arguments, source) whose :func:`column_name` is ``name``, or None
    (``"bb_upper_20_2"`` -> (bb, "bb_upper", (20, 2.0), "close"); arguments that a column leaves
    out, like the ADX smoothing of ``adx_14``, are read as the name implies)."""
    for output in sorted(_OUTPUTS, key=len, reverse=True):
        if name != output and not name.startswith(f"{output}_"):
            continue
        definition, _ = _OUTPUTS[output]
        tokens = name[len(output) + 1 :].split("_") if name != output else []
        source = definition.default_source
        numbers = tokens
        if tokens and definition.sourced and not re.fullmatch(r"\d+(\.\d+)?", tokens[-1]):
            source, numbers = tokens[-1], tokens[:-1]
        if not all(re.fullmatch(r"\d+(\.\d+)?", t) for t in numbers):
            continue
        for args in _candidate_args(definition, [float(t) for t in numbers]):
            try:
                if column_name(output, args, source) == name:
                    return definition, output, definition.normalise(args), source
            except ConfigError:
                continue
    return None


def _candidate_args(definition: IndicatorDef, numbers: list[float]) -> Iterable[tuple[float, ...]]:
    """Argument tuples a column's numbers may stand for: all of them, or the leading ones with
    a later argument repeating an earlier one (``adx_14`` is di 14 and smoothing 14)."""
    count = len(definition.params)
    if len(numbers) == count:
        yield tuple(numbers)
    elif 0 < len(numbers) < count:
        yield tuple(numbers + [numbers[-1]] * (count - len(numbers)))
        yield tuple(numbers + [p.default for p in definition.params[len(numbers) :]])
    elif not numbers and count == 0:
        yield ()


# ---------------------------------------------------------------------------------------------
# Computing


@dataclass(frozen=True)
class IndicatorRequest:
    """One indicator to compute: its registry ``name``, its arguments (defaults for the ones left
    out) and, for a sourced indicator, the column it reads (None: its default)."""

    name: str
    args: tuple[float, ...] = ()
    source: str | None = None

    def resolve(self) -> tuple[IndicatorDef, tuple[int | float, ...], str]:
        if self.name not in REGISTRY:
            raise ConfigError(
                f"unknown indicator {self.name!r}; known: {', '.join(sorted(REGISTRY))}"
            )
        definition = REGISTRY[self.name]
        source = self.source or definition.default_source
        if source != definition.default_source and not definition.sourced:
            raise ConfigError(f"{self.name} reads {definition.inputs}; it takes no source")
        return definition, definition.normalise(self.args), source

    def columns(self) -> tuple[str, ...]:
        definition, args, source = self.resolve()
        return tuple(column_name(o, args, source) for o in definition.outputs)


def _derived(name: str, read: Callable[[str], np.ndarray]) -> np.ndarray:
    if name == "hl2":
        return (read("high") + read("low")) / 2.0
    if name == "hlc3":
        return (read("high") + read("low") + read("close")) / 3.0
    if name == "ohlc4":
        return (read("open") + read("high") + read("low") + read("close")) / 4.0
    return read(name)


def compute_indicator(
    definition: IndicatorDef,
    args: Sequence[float],
    read: Callable[[str], np.ndarray],
    source: str | None = None,
) -> tuple[np.ndarray, ...]:
    """Every output of ``definition`` with ``args`` over the arrays ``read(field)`` gives
    (``hl2``, ``hlc3``, ``ohlc4`` derived from the prices when ``read`` lacks them)."""
    values = definition.normalise(tuple(args))
    names = list(definition.inputs)
    if source is not None and definition.sourced:
        names[0] = source
    arrays = [_derived(n, read) if n in ("hl2", "hlc3", "ohlc4") else read(n) for n in names]
    result = definition.compute(*arrays, *values)
    outputs = (result,) if isinstance(result, np.ndarray) else tuple(result)
    if len(outputs) != len(definition.outputs):
        raise AssertionError(f"{definition.name} returned {len(outputs)} outputs")
    return outputs


def _column_values(bars: pl.DataFrame, name: str) -> np.ndarray:
    """A numeric column of ``bars`` as float64 (nulls become NaN; a leading run is allowed)."""
    if name not in bars.columns:
        if name in ("hl2", "hlc3", "ohlc4"):
            return _derived(name, lambda n: _column_values(bars, n))
        raise DataError(f"missing column {name!r} (columns: {', '.join(bars.columns)})")
    column = bars.get_column(name)
    if not column.dtype.is_numeric():
        raise DataError(f"column {name!r} has dtype {column.dtype}, expected a number")
    return column.cast(pl.Float64).to_numpy()


def _float_series(name: str, values: np.ndarray) -> pl.Series:
    """A Float64 series of an indicator output, NaN as null, sharing the array's memory.

    Indicator NaN are almost always one warm-up run at the start: then the validity bitmap is
    written directly (a few bytes per 8 bars) and the values are not copied. Otherwise (NaN
    inside, e.g. a flat Stochastic window) polars converts them."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    size = values.shape[0]
    first = int(ind._leading_nan_count(values))
    if first == size or not ind._all_finite(values, first):
        return pl.Series(name, values, dtype=pl.Float64, nan_to_null=True)
    if first == 0:
        return pl.Series(name, values, dtype=pl.Float64)
    validity = np.full((size + 7) // 8, 0xFF, dtype=np.uint8)
    validity[: first // 8] = 0
    if first % 8:
        validity[first // 8] = (0xFF << (first % 8)) & 0xFF  # Arrow bitmaps are LSB-first
    array = pa.Array.from_buffers(
        pa.float64(), size, [pa.py_buffer(validity), pa.py_buffer(values)], null_count=first
    )
    return pl.Series(name, array)


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def compute_frame(
    bars: pl.DataFrame,
    requests: Iterable[IndicatorRequest | str],
    *,
    threads: int | None = None,
) -> pl.DataFrame:
    """``bars`` with every output of every request as a Float64 column (:func:`column_name`;
    null where TradingView shows na), replacing columns of the same names.

    A request is an :class:`IndicatorRequest` or a registry name (its defaults). The kernels
    release the GIL: with ``threads`` > 1 (default: one per core this process may use) they run
    in parallel, the costliest first. ``bars`` must be sorted by ``ts`` when it has one."""
    if not isinstance(bars, pl.DataFrame):
        raise TypeError(f"bars must be a polars DataFrame, got {type(bars).__name__}")
    if "ts" in bars.columns and not bars.get_column("ts").is_sorted():
        raise DataError("bars are not sorted by 'ts': indicators must run in time order")
    jobs: dict[tuple[str, tuple[int | float, ...], str], IndicatorDef] = {}
    for request in requests:
        if isinstance(request, str):
            request = IndicatorRequest(request)
        definition, args, source = request.resolve()
        jobs.setdefault((definition.name, args, source), definition)
    cache: dict[str, np.ndarray] = {}

    def read(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = _column_values(bars, name)
        return cache[name]

    for (_, _, source), definition in jobs.items():  # read the inputs once, before the threads
        for name in (source, *definition.inputs[1:]):
            read(name)

    def run(job: tuple[tuple[str, tuple[int | float, ...], str], IndicatorDef]) -> Any:
        (_, args, source), definition = job
        return compute_indicator(definition, args, read, source)

    ordered = sorted(jobs.items(), key=lambda job: -job[1].cost)
    workers = _threads() if threads is None else max(1, int(threads))
    if workers > 1 and len(ordered) > 1:
        # a pool per call: starting two threads costs ~0.1 ms, and no idle pool outlives a fork
        with ThreadPoolExecutor(min(workers, len(ordered)), "aiopt-indicators") as pool:
            results = list(pool.map(run, ordered))
    else:
        results = [run(job) for job in ordered]
    series = []
    for ((_, args, source), definition), outputs in zip(ordered, results, strict=True):
        for output, values in zip(definition.outputs, outputs, strict=True):
            series.append(_float_series(column_name(output, args, source), values))
    return bars.with_columns(series)


def add_indicator(
    bars: pl.DataFrame, name: str, *args: float, source: str | None = None
) -> pl.DataFrame:
    """``bars`` with every output of the registered indicator ``name`` (arguments in its order,
    defaults for the ones left out): ``add_indicator(bars, "kc", 20, 1.5)`` adds
    ``kc_basis_20_1.5``, ``kc_upper_20_1.5`` and ``kc_lower_20_1.5``."""
    return compute_frame(bars, [IndicatorRequest(name, tuple(args), source)], threads=1)


# ---------------------------------------------------------------------------------------------
# The model's indicator feature set


@dataclass(frozen=True)
class IndicatorParams:
    """The parameters of the eight classic indicators that make the model's indicator features
    (TradingView's defaults, plus SMA 50 and EMA 20).

    Lengths are ints >= 1, ``bb_mult`` a number > 0 (checked on construction: ``TypeError`` or
    ``ValueError``). ``source`` is the column RSI, MACD, Bollinger Bands, SMA and EMA are computed
    from; Stochastic, ATR and DMI always use ``high``, ``low`` and ``close``. :meth:`columns`
    gives the column names :func:`add_indicators` adds. (Any other registered indicator is one
    :func:`add_indicator` call away; this set is what the models read, so adding to it changes
    their inputs.)
    """

    rsi_length: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bb_length: int = 20
    bb_mult: float = 2.0
    sma_length: int = 50
    ema_length: int = 20
    stoch_k_length: int = 14
    stoch_k_smoothing: int = 3
    stoch_d_length: int = 3
    atr_length: int = 14
    di_length: int = 14
    adx_smoothing: int = 14
    source: str = "close"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "bb_mult":
                object.__setattr__(self, f.name, ind._check_mult(f.name, value))
            elif f.name == "source":
                if not isinstance(value, str) or not value:
                    raise TypeError(f"source must be a column name, got {value!r}")
            else:
                object.__setattr__(self, f.name, ind._check_length(f.name, value))

    def requests(self) -> tuple[IndicatorRequest, ...]:
        """The registry requests of the eight indicators, in :data:`INDICATOR_KINDS` order."""
        s = self.source
        return (
            IndicatorRequest("rsi", (self.rsi_length,), s),
            IndicatorRequest("macd", (self.macd_fast, self.macd_slow, self.macd_signal), s),
            IndicatorRequest("bb", (self.bb_length, self.bb_mult), s),
            IndicatorRequest("sma", (self.sma_length,), s),
            IndicatorRequest("ema", (self.ema_length,), s),
            IndicatorRequest(
                "stoch", (self.stoch_k_length, self.stoch_k_smoothing, self.stoch_d_length)
            ),
            IndicatorRequest("atr", (self.atr_length,)),
            IndicatorRequest("dmi", (self.di_length, self.adx_smoothing)),
        )

    def request_for(self, kind: str) -> IndicatorRequest:
        """The request whose outputs include ``kind`` (one of :data:`INDICATOR_KINDS`)."""
        found = lookup_output(kind)
        if found is None or kind not in INDICATOR_KINDS:
            raise ValueError(
                f"unknown indicator kind {kind!r}; known: {', '.join(INDICATOR_KINDS)}"
            )
        return next(r for r in self.requests() if r.name == found[0].name)

    def column(self, kind: str) -> str:
        """The column name of the output ``kind`` with these parameters."""
        _, args, source = self.request_for(kind).resolve()
        return column_name(kind, args, source)

    def columns(self) -> tuple[str, ...]:
        """The column names of every indicator output, in :data:`INDICATOR_KINDS` order."""
        return tuple(self.column(kind) for kind in INDICATOR_KINDS)


INDICATOR_KINDS: tuple[str, ...] = (
    "rsi",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_basis",
    "bb_upper",
    "bb_lower",
    "bb_pctb",
    "bb_width",
    "sma",
    "ema",
    "stoch_k",
    "stoch_d",
    "atr",
    "adx",
    "plus_di",
    "minus_di",
)
"""The outputs of :func:`add_indicators`, in column order."""

_DEFAULT_PARAMS = IndicatorParams()


def indicator_columns(params: IndicatorParams = _DEFAULT_PARAMS) -> tuple[str, ...]:
    """The columns :func:`add_indicators` adds with ``params`` (``params.columns()``)."""
    return params.columns()


def add_indicators(bars: pl.DataFrame, params: IndicatorParams = _DEFAULT_PARAMS) -> pl.DataFrame:
    """Add the eight indicators of ``params`` to ``bars`` (one thread per core); columns
    ``params.columns()``.

    With the default parameters: ``rsi_14, macd_12_26_9, macd_signal_12_26_9, macd_hist_12_26_9,
    bb_basis_20_2, bb_upper_20_2, bb_lower_20_2, bb_pctb_20_2, bb_width_20_2, sma_50, ema_20,
    stoch_k_14_3_3, stoch_d_14_3_3, atr_14, adx_14, plus_di_14, minus_di_14`` (see
    :func:`column_name`), each equal to the single-indicator function. Values are null where
    TradingView shows na (warm-up). ``bars`` needs ``high``, ``low``, ``close`` and the
    ``params.source`` column (which may be another indicator, with its null warm-up), sorted by
    ``ts`` when it has one. Columns of the same names are replaced.
    """
    if not isinstance(params, IndicatorParams):
        raise TypeError(f"params must be an IndicatorParams, got {type(params).__name__}")
    frame = compute_frame(bars, params.requests())
    columns = params.columns()
    return frame.select(*[c for c in frame.columns if c not in columns], *columns)


def add_rsi(bars: pl.DataFrame, length: int = 14, source: str = "close") -> pl.DataFrame:
    """Add ``rsi_{length}``: ``ta.rsi`` of the ``source`` column (null during warm-up)."""
    ind._check_length("length", length)
    return add_indicator(bars, "rsi", length, source=source)


def add_macd(
    bars: pl.DataFrame, fast: int = 12, slow: int = 26, signal: int = 9, source: str = "close"
) -> pl.DataFrame:
    """Add ``macd_{fast}_{slow}_{signal}``, ``macd_signal_...`` and ``macd_hist_...``."""
    for name, value in (("fast", fast), ("slow", slow), ("signal", signal)):
        ind._check_length(name, value)
    return add_indicator(bars, "macd", fast, slow, signal, source=source)


def add_bollinger(
    bars: pl.DataFrame, length: int = 20, mult: float = 2.0, source: str = "close"
) -> pl.DataFrame:
    """Add ``bb_basis_{length}_{mult}``, ``bb_upper_...``, ``bb_lower_...``, ``bb_pctb_...`` and
    ``bb_width_...`` (percent)."""
    ind._check_length("length", length)
    return add_indicator(bars, "bb", length, ind._check_mult("mult", mult), source=source)


def add_sma(bars: pl.DataFrame, length: int = 50, source: str = "close") -> pl.DataFrame:
    """Add ``sma_{length}``: ``ta.sma`` of the ``source`` column."""
    ind._check_length("length", length)
    return add_indicator(bars, "sma", length, source=source)


def add_ema(bars: pl.DataFrame, length: int = 20, source: str = "close") -> pl.DataFrame:
    """Add ``ema_{length}``: ``ta.ema`` of the ``source`` column."""
    ind._check_length("length", length)
    return add_indicator(bars, "ema", length, source=source)


def add_stoch(
    bars: pl.DataFrame, k_length: int = 14, k_smoothing: int = 3, d_length: int = 3
) -> pl.DataFrame:
    """Add ``stoch_k_{k_length}_{k_smoothing}_{d_length}`` and ``stoch_d_...``."""
    for name, value in (
        ("k_length", k_length),
        ("k_smoothing", k_smoothing),
        ("d_length", d_length),
    ):
        ind._check_length(name, value)
    return add_indicator(bars, "stoch", k_length, k_smoothing, d_length)


def add_atr(bars: pl.DataFrame, length: int = 14) -> pl.DataFrame:
    """Add ``atr_{length}``: ``ta.atr`` of the bars."""
    ind._check_length("length", length)
    return add_indicator(bars, "atr", length)


def add_dmi(bars: pl.DataFrame, di_length: int = 14, adx_smoothing: int = 14) -> pl.DataFrame:
    """Add ``adx_{di_length}`` (``adx_{di_length}_{adx_smoothing}`` when they differ),
    ``plus_di_{di_length}`` and ``minus_di_{di_length}``."""
    ind._check_length("di_length", di_length)
    ind._check_length("adx_smoothing", adx_smoothing)
    return add_indicator(bars, "dmi", di_length, adx_smoothing)


# ---------------------------------------------------------------------------------------------
# The built-ins: TradingView's ta.* functions


def _length(default: int, low: int = 2, high: int = 100) -> Callable[[str], IndicatorParam]:
    return lambda name: IndicatorParam(name, default, low, high)


def _one(pine: str, output: str) -> tuple[PineStep, ...]:
    return (PineStep((output,), pine),)


_OSCILLATOR = (0.0, 100.0)

register(
    IndicatorDef(
        name="sma",
        title="SMA",
        pine_name="ta.sma",
        params=(IndicatorParam("length", 50, 5, 200),),
        outputs=("sma",),
        inputs=("close",),
        sourced=True,
        compute=ind.sma,
        stream=st.SmaStream,
        pine=_one("ta.sma({source}, {length})", "sma"),
        warmup=lambda length: (length - 1,),
        overlay=frozenset({"sma"}),
        cost=5.4,
        description="simple moving average, TradingView's rolling sum to the bit",
    )
)
register(
    IndicatorDef(
        name="ema",
        title="EMA",
        pine_name="ta.ema",
        params=(IndicatorParam("length", 20, 5, 200),),
        outputs=("ema",),
        inputs=("close",),
        sourced=True,
        compute=ind.ema,
        stream=st.EmaStream,
        pine=_one("ta.ema({source}, {length})", "ema"),
        warmup=lambda length: (length - 1,),
        overlay=frozenset({"ema"}),
        cost=1.2,
        description="exponential moving average seeded with the SMA of its first values",
    )
)
register(
    IndicatorDef(
        name="rsi",
        title="RSI",
        pine_name="ta.rsi",
        params=(IndicatorParam("length", 14, 2, 50),),
        outputs=("rsi",),
        inputs=("close",),
        sourced=True,
        compute=ind.rsi,
        stream=st.RsiStream,
        pine=_one("ta.rsi({source}, {length})", "rsi"),
        warmup=lambda length: (length,),
        levels=(30.0, 70.0),
        bounds=_OSCILLATOR,
        cost=1.6,
        description="relative strength index (Wilder's averages)",
    )
)
register(
    IndicatorDef(
        name="atr",
        title="ATR",
        pine_name="ta.atr",
        params=(IndicatorParam("length", 14, 2, 50),),
        outputs=("atr",),
        inputs=("high", "low", "close"),
        compute=ind.atr,
        stream=st.AtrStream,
        pine=_one("ta.atr({length})", "atr"),
        warmup=lambda length: (length - 1,),
        cost=2.4,
        description="average true range (Wilder's average, the first true range high - low)",
    )
)
register(
    IndicatorDef(
        name="macd",
        title="MACD",
        pine_name="ta.macd",
        params=(
            IndicatorParam("fast", 12, 2, 50),
            IndicatorParam("slow", 26, 5, 100),
            IndicatorParam("signal", 9, 2, 50),
        ),
        outputs=("macd", "macd_signal", "macd_hist"),
        inputs=("close",),
        sourced=True,
        compute=ind.macd,
        stream=st.MacdStream,
        pine=(
            PineStep(
                ("macd", "macd_signal", "macd_hist"), "ta.macd({source}, {fast}, {slow}, {signal})"
            ),
        ),
        warmup=lambda fast, slow, signal: (
            max(fast, slow) - 1,
            max(fast, slow) + signal - 2,
            max(fast, slow) + signal - 2,
        ),
        levels=(0.0,),
        histogram=frozenset({"macd_hist"}),
        cost=1.5,
        description="MACD line, signal line and histogram",
    )
)
register(
    IndicatorDef(
        name="bb",
        title="Bollinger Bands",
        pine_name="ta.bb",
        params=(IndicatorParam("length", 20, 5, 100), IndicatorParam("mult", 2.0, 1.0, 3.5)),
        outputs=("bb_basis", "bb_upper", "bb_lower", "bb_pctb", "bb_width"),
        inputs=("close",),
        sourced=True,
        compute=ind.bollinger,
        stream=st.BollingerStream,
        pine=(
            PineStep(("bb_basis", "bb_upper", "bb_lower"), "ta.bb({source}, {length}, {mult})"),
            # TradingView's "Bollinger Bands %B"; na where the bands coincide (x / 0 is na)
            PineStep(("bb_pctb",), "({source} - {bb_lower}) / ({bb_upper} - {bb_lower})"),
            # ta.bbw's formula, written out (Pine v5's manual had the bare ratio)
            PineStep(("bb_width",), "100.0 * ({bb_upper} - {bb_lower}) / {bb_basis}"),
        ),
        warmup=lambda length, mult: (length - 1,) * 5,
        overlay=frozenset({"bb_basis", "bb_upper", "bb_lower"}),
        cost=9.7,
        description="Bollinger Bands (population deviation), %B and width in percent",
    )
)
register(
    IndicatorDef(
        name="stoch",
        title="Stochastic",
        pine_name="ta.stoch",
        params=(
            IndicatorParam("k_length", 14, 5, 50),
            IndicatorParam("k_smoothing", 3, 1, 10),
            IndicatorParam("d_length", 3, 1, 10),
        ),
        outputs=("stoch_k", "stoch_d"),
        inputs=("high", "low", "close"),
        compute=ind.stoch,
        stream=st.StochStream,
        pine=(
            PineStep(("stoch_k",), "ta.sma(ta.stoch(close, high, low, {k_length}), {k_smoothing})"),
            PineStep(("stoch_d",), "ta.sma({stoch_k}, {d_length})"),
        ),
        warmup=lambda k, s, d: (k + s - 2, k + s + d - 3),
        levels=(20.0, 80.0),
        bounds=_OSCILLATOR,
        cost=8.1,
        description="Stochastic %K smoothed and %D, as TradingView's Stochastic indicator",
    )
)
register(
    IndicatorDef(
        name="dmi",
        title="DMI / ADX",
        pine_name="ta.dmi",
        params=(IndicatorParam("di_length", 14, 5, 50), IndicatorParam("adx_smoothing", 14, 5, 50)),
        outputs=("plus_di", "minus_di", "adx"),
        inputs=("high", "low", "close"),
        compute=ind.dmi,
        stream=st.DmiStream,
        pine=(PineStep(("plus_di", "minus_di", "adx"), "ta.dmi({di_length}, {adx_smoothing})"),),
        warmup=lambda di, adx: (di, di, di + adx - 1),
        levels=(25.0,),
        column_args={
            "plus_di": lambda a: a[:1],
            "minus_di": lambda a: a[:1],
            "adx": lambda a: a[:1] if a[0] == a[1] else a,
        },
        cost=5.0,
        description="+DI, -DI and ADX, with Pine's tie tolerance",
    )
)
register(
    IndicatorDef(
        name="cci",
        title="CCI",
        pine_name="ta.cci",
        params=(IndicatorParam("length", 20, 5, 100),),
        outputs=("cci",),
        inputs=("hlc3",),
        sourced=True,
        compute=more.cci,
        stream=st.CciStream,
        pine=_one("ta.cci({source}, {length})", "cci"),
        warmup=lambda length: (length - 1,),
        levels=(-100.0, 100.0),
        cost=12.6,
        description="commodity channel index of the typical price (TradingView's CCI indicator)",
    )
)
register(
    IndicatorDef(
        name="wpr",
        title="Williams %R",
        pine_name="ta.wpr",
        params=(IndicatorParam("length", 14, 5, 100),),
        outputs=("wpr",),
        inputs=("high", "low", "close"),
        compute=more.wpr,
        stream=st.WprStream,
        pine=_one("ta.wpr({length})", "wpr"),
        warmup=lambda length: (length - 1,),
        levels=(-80.0, -20.0),
        bounds=(-100.0, 0.0),
        cost=1.9,
        description="Williams %R: where the close lies in the range of the last bars, -100..0",
    )
)
register(
    IndicatorDef(
        name="mom",
        title="Momentum",
        pine_name="ta.mom",
        params=(IndicatorParam("length", 10, 2, 100),),
        outputs=("mom",),
        inputs=("close",),
        sourced=True,
        compute=more.mom,
        stream=st.MomStream,
        pine=_one("ta.mom({source}, {length})", "mom"),
        warmup=lambda length: (length,),
        levels=(0.0,),
        cost=0.2,
        description="momentum: the change over the last bars",
    )
)
register(
    IndicatorDef(
        name="roc",
        title="Rate of change",
        pine_name="ta.roc",
        params=(IndicatorParam("length", 9, 2, 100),),
        outputs=("roc",),
        inputs=("close",),
        sourced=True,
        compute=more.roc,
        stream=st.RocStream,
        pine=_one("ta.roc({source}, {length})", "roc"),
        warmup=lambda length: (length,),
        levels=(0.0,),
        cost=0.4,
        description="rate of change in percent",
    )
)
register(
    IndicatorDef(
        name="obv",
        title="OBV",
        pine_name="ta.obv",
        params=(),
        outputs=("obv",),
        inputs=("close", "volume"),
        compute=more.obv,
        stream=st.ObvStream,
        pine=_one("ta.obv", "obv"),
        warmup=lambda: (1,),
        cost=1.1,
        description="on-balance volume (from bar 1; TA-Lib adds the first bar's volume)",
    )
)
register(
    IndicatorDef(
        name="mfi",
        title="MFI",
        pine_name="ta.mfi",
        params=(IndicatorParam("length", 14, 5, 50),),
        outputs=("mfi",),
        inputs=("hlc3", "volume"),
        sourced=True,
        compute=more.mfi,
        stream=st.MfiStream,
        pine=_one("ta.mfi({source}, {length})", "mfi"),
        warmup=lambda length: (length - 1,),
        levels=(20.0, 80.0),
        bounds=_OSCILLATOR,
        cost=9.5,
        description="money flow index of the typical price",
    )
)
register(
    IndicatorDef(
        name="kc",
        title="Keltner Channels",
        pine_name="ta.kc",
        params=(IndicatorParam("length", 20, 5, 100), IndicatorParam("mult", 2.0, 1.0, 3.5)),
        outputs=("kc_basis", "kc_upper", "kc_lower"),
        inputs=("close", "high", "low", "close"),
        sourced=True,
        compute=more.keltner,
        stream=st.KeltnerStream,
        pine=(PineStep(("kc_basis", "kc_upper", "kc_lower"), "ta.kc({source}, {length}, {mult})"),),
        warmup=lambda length, mult: (length - 1, length, length),
        overlay=frozenset({"kc_basis", "kc_upper", "kc_lower"}),
        cost=7.3,
        description="Keltner Channels: EMA of the source, bands an EMA of the true range apart",
    )
)
register(
    IndicatorDef(
        name="supertrend",
        title="Supertrend",
        pine_name="ta.supertrend",
        params=(IndicatorParam("factor", 3.0, 1.0, 5.0), IndicatorParam("atr_length", 10, 5, 50)),
        outputs=("supertrend", "supertrend_dir"),
        inputs=("high", "low", "close"),
        compute=more.supertrend,
        stream=st.SupertrendStream,
        pine=(PineStep(("supertrend", "supertrend_dir"), "ta.supertrend({factor}, {atr_length})"),),
        # TradingView's bar 0 reads 0.0 (a quirk pynecore reproduces), then na until the ATR
        warmup=lambda factor, atr_length: (0 if atr_length <= 2 else atr_length - 1, 0),
        overlay=frozenset({"supertrend"}),
        levels=(0.0,),
        cost=5.4,
        description="Supertrend line and direction (-1 up, 1 down, as Pine)",
    )
)
