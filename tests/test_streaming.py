"""Bar-by-bar evaluation of a StrategySpec (:mod:`aiopt_lib.strategy.streaming`) against the vectorised
:func:`~aiopt_lib.strategy.spec.compile_signals` on the EUR/USD 2017 sample: every indicator output
(default and other arguments) to 1e-12 relative with NaN in the same places, the four built-in
templates' compiled booleans identical and their distances equal, and no look-ahead."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.patterns import PATTERNS
from aiopt_lib.features.registry import lookup_output, output_names
from aiopt_lib.strategy.backtest import OrderSignals
from aiopt_lib.strategy.rules import SignalContext, evaluate
from aiopt_lib.strategy.search import builtin_template, builtin_template_names
from aiopt_lib.strategy.spec import StrategySpec, compile_signals
from aiopt_lib.strategy.streaming import BarSignals, StreamingEvaluator, streaming_indicator

REL = 1e-12


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


def stream(spec: StrategySpec, bars: pl.DataFrame, predictions=None, nodes=()):
    """Feed ``bars`` one at a time; the per-bar signals and the values of ``nodes``."""
    evaluator = StreamingEvaluator(spec, predictions)
    signals: list[BarSignals] = []
    values: list[list[float]] = [[] for _ in nodes]
    for row in bars.select("open", "high", "low", "close", "volume", "ts").iter_rows():
        signals.append(evaluator.update(*row))
        for out, node in zip(values, nodes, strict=True):
            out.append(evaluator.value(node))
    return signals, [np.array(v) for v in values]


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> float:
    """NaN in the same places, the rest within REL relative; returns the max relative difference."""
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), what
    defined = ~np.isnan(ref)
    diff = np.abs(ours[defined] - ref[defined])
    scale = np.maximum(np.abs(ref[defined]), 1e-300)
    worst = float(np.max(diff / scale)) if defined.any() else 0.0
    assert worst <= REL, f"{what}: max relative difference {worst:.3g}"
    return worst


# every output of every indicator group, with the defaults and with other arguments
INDICATOR_CALLS = [
    f"{name}({args})"
    for name in output_names()
    for args in {
        "sma": ["", "7"],
        "ema": ["", "5"],
        "rsi": ["", "3"],
        "atr": ["", "5"],
        "macd": ["", "5, 35, 4", "30, 7, 3"],
        "bb": ["", "10, 1.5", "33, 2.5"],
        "stoch": ["", "5, 1, 4", "21, 5, 5"],
        "dmi": ["", "7, 20", "30, 9"],
        "cci": ["", "7"],
        "wpr": ["", "5"],
        "mom": ["", "3"],
        "roc": ["", "30"],
        "obv": [""],
        "mfi": ["", "5"],
        "kc": ["", "10, 1.5"],
        "supertrend": ["", "2.5, 7"],
    }[lookup_output(name)[0].name]
]


def test_every_indicator_output_equals_the_vectorised_one(sample: pl.DataFrame) -> None:
    spec = StrategySpec(
        name="all_indicators",
        long_entry=" or ".join(f"{call} > -1e300" for call in INDICATOR_CALLS),
    )
    nodes = [term.left for term in spec.rule("long_entry").operands]
    _, streamed = stream(spec, sample, nodes=nodes)
    context = SignalContext(sample)
    for call, node, ours in zip(INDICATOR_CALLS, nodes, streamed, strict=True):
        ref = evaluate(node, context, spec.params)
        # every output has a warm-up but the Supertrend's direction (1 until the ATR is defined)
        assert np.isnan(ref).any() or call.startswith("supertrend_dir"), call
        assert (~np.isnan(ref)).sum() > 6000, call
        assert_close(ours, ref, call)


def test_streaming_indicator_rejects_bad_lengths() -> None:
    with pytest.raises(ConfigError, match="whole number"):
        streaming_indicator("ema", (2.5,))
    with pytest.raises(ConfigError, match="unknown indicator"):
        streaming_indicator("vwap", (14.0,))


def assert_same_signals(signals: list[BarSignals], ref: OrderSignals) -> None:
    for name in ("long_entry", "long_exit", "short_entry", "short_exit"):
        ours = np.array([getattr(s, name) for s in signals])
        assert np.array_equal(ours, getattr(ref, name)), name
    for name in ("stop_distance", "take_distance", "trail_distance"):
        ours = np.array([getattr(s, name) for s in signals])
        expected = getattr(ref, name)
        if expected is None:
            assert np.isnan(ours).all(), name
        else:
            assert_close(ours, np.asarray(expected, dtype=np.float64), name)


def synthetic_predictions(bars: pl.DataFrame, seed: int = 7) -> pl.DataFrame:
    """Random class probabilities for most bars (some bars have none, one bar twice)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=bars.height)
    frame = pl.DataFrame(
        {
            "ts": bars.get_column("ts"),
            "prob_buy": probs[:, 0],
            "prob_sell": probs[:, 1],
            "prob_hold": probs[:, 2],
        }
    )
    keep = rng.random(bars.height) > 0.1
    frame = frame.filter(pl.Series(keep))
    # a repeated ts: the later row wins, in both evaluators
    return pl.concat([frame, frame.slice(5, 1).with_columns(pl.lit(0.99).alias("prob_buy"))])


@pytest.mark.parametrize(
    "template",
    builtin_template_names(),
)
def test_builtin_templates_signals_identical(sample: pl.DataFrame, template: str) -> None:
    spec = builtin_template(template).spec
    predictions = synthetic_predictions(sample) if template == "ai_gate" else None
    signals, _ = stream(spec, sample, predictions)
    ref = compile_signals(spec, sample, predictions)
    assert ref.long_entry.sum() > 5 and ref.short_entry.sum() > 5
    assert_same_signals(signals, ref)


def test_rule_language_nan_shift_and_cross_semantics(sample: pl.DataFrame) -> None:
    """``x[k]``, ``!=`` and ``==`` with NaN, division by zero, ``-x``, hl2/hlc3/ohlc4/volume,
    crossunder over a series with NaN gaps (from a division by zero), every pattern."""
    bars = sample.head(1500)
    rules = {
        "long_entry": "crossover(close, sma(10)[2]) and rsi(5)[1] != 50 or close[3] == open",
        "short_entry": "crossunder((close - open) / (high - low - 0.0002), -rsi(7) / 100)",
        "long_exit": "not (hl2 > hlc3) and ohlc4 * 2 >= volume / 1e8 or macd_hist()[4] < 0",
        "short_exit": " or ".join(PATTERNS),
    }
    spec = StrategySpec(name="semantics", **rules)
    signals, _ = stream(spec, bars)
    ref = compile_signals(spec, bars)
    assert all(getattr(ref, r).any() and not getattr(ref, r).all() for r in rules)
    assert_same_signals(signals, ref)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_each_pattern_equals_its_polars_expression(sample: pl.DataFrame, name: str) -> None:
    spec = StrategySpec(name="pattern", long_entry=name)
    signals, _ = stream(spec, sample)
    ref = sample.select(PATTERNS[name].to_polars()).to_series().to_numpy()
    assert np.array_equal(np.array([s.long_entry for s in signals]), ref)


def test_no_lookahead_later_bars_do_not_change_earlier_signals(sample: pl.DataFrame) -> None:
    """The signals of bars 0..t are the same whatever comes after t (here: later bars scrambled)."""
    spec = builtin_template("ema_cross").spec
    bars = sample.head(800)
    cut = 500
    rng = np.random.default_rng(3)
    tail = bars.slice(cut)
    noise = pl.Series(rng.normal(0.0, 0.002, tail.height))
    altered = pl.concat(
        [
            bars.head(cut),
            tail.with_columns(
                (pl.col(c) + noise).alias(c) for c in ("open", "high", "low", "close")
            ).with_columns(
                pl.max_horizontal("open", "high", "close").alias("high"),
                pl.min_horizontal("open", "low", "close").alias("low"),
            ),
        ]
    )
    original, _ = stream(spec, bars)
    changed, _ = stream(spec, altered)
    before, after = as_matrix(original), as_matrix(changed)
    assert np.array_equal(before[:cut], after[:cut], equal_nan=True)
    # the scrambled bars did change their own signals
    assert not np.array_equal(before[cut:], after[cut:], equal_nan=True)


def as_matrix(signals: list[BarSignals]) -> np.ndarray:
    """One row of floats per bar (booleans as 0/1), NaN distances kept."""
    return np.array([tuple(s) for s in signals], dtype=np.float64)


def test_ai_gate_reads_a_mapping_filled_as_predictions_arrive(sample: pl.DataFrame) -> None:
    """An Actor's mapping (ts ns -> probabilities), filled bar by bar, gives the frame's result."""
    spec = builtin_template("ai_gate").spec
    bars = sample.head(600)
    frame = synthetic_predictions(bars).unique("ts", keep="last")
    by_ts = {row["ts"]: row for row in frame.with_columns(pl.col("ts").dt.epoch("ns")).to_dicts()}
    live: dict[int, dict[str, float]] = {}
    evaluator = StreamingEvaluator(spec, live)
    signals = []
    for row in bars.select("open", "high", "low", "close", "volume", "ts").iter_rows():
        ts_ns = int((row[5] - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds()) * 10**9
        if ts_ns in by_ts:
            live[ts_ns] = by_ts[ts_ns]
        signals.append(evaluator.update(*row[:5], ts_ns))
    assert_same_signals(signals, compile_signals(spec, bars, frame))


def test_ai_rules_need_predictions() -> None:
    with pytest.raises(ConfigError, match="predictions"):
        StreamingEvaluator(builtin_template("ai_gate").spec)
