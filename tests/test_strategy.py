"""StrategySpec and its rule language: parsing and its errors, validation and serialisation,
evaluation on the real EUR/USD sample against the indicator / pattern modules and plain Python
references, compiled signals and backtests, and the look-ahead checks."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.bars import infer_timeframe
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.core.instruments import POINT_VALUES
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.indicators import ema, sma
from aiopt_lib.features.lookahead import LookaheadError, check_no_lookahead
from aiopt_lib.features.patterns import PATTERNS, add_patterns
from aiopt_lib.features.registry import (
    INDICATOR_KINDS,
    IndicatorParams,
    add_indicators,
    lookup_output,
    output_names,
)
from aiopt_lib.strategy import rules as strategy
from aiopt_lib.strategy.backtest import (
    BacktestResult,
    ExecutionConfig,
    OrderSignals,
    backtest_metrics,
    fill_prices,
    metrics_from_arrays,
    run_backtest,
)
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
    Not,
    Param,
    PatternRef,
    PriceField,
    RuleError,
    Shift,
    SignalContext,
    evaluate,
    parse_rule,
    walk,
)
from aiopt_lib.strategy.spec import (
    RULES,
    Costs,
    Distance,
    StrategySpec,
    backtest,
    check_spec_no_lookahead,
    compile_signals,
    load_spec,
    save_spec,
    signals_frame,
)

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def context(sample: pl.DataFrame) -> SignalContext:
    return SignalContext(sample)


def hand_bars(close: list[float], *, spread: list[float | None] | None = None) -> pl.DataFrame:
    """Hourly bars with the given closes; open = previous close, high/low 2 pips around."""
    c = np.asarray(close, dtype=float)
    o = np.concatenate(([c[0]], c[:-1]))
    frame = pl.DataFrame(
        {
            "ts": pl.datetime_range(
                START, START + dt.timedelta(hours=len(c) - 1), "1h", eager=True, time_zone="UTC"
            ).cast(pl.Datetime("us", "UTC")),
            "open": o,
            "high": np.maximum(o, c) + 2e-4,
            "low": np.minimum(o, c) - 2e-4,
            "close": c,
            "volume": np.full(len(c), 1.0),
        }
    )
    if spread is not None:
        frame = frame.with_columns(pl.Series("spread", spread, dtype=pl.Float64))
    return frame


def value_of(text: str, context: SignalContext, params: dict | None = None) -> np.ndarray:
    """The numeric expression ``text`` evaluated (parsed as the left side of ``text > 0``)."""
    node = parse_rule(f"{text} > 0", params or {})
    assert isinstance(node, Compare)
    return evaluate(node.left, context, params or {})


def nan_array(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).fill_null(np.nan).to_numpy()


# ---------------------------------------------------------------------------------------------
# 1. Parsing


def test_prices_numbers_and_constants_parse() -> None:
    for name in ("open", "high", "low", "close", "volume", "hl2", "hlc3", "ohlc4"):
        assert parse_rule(f"{name} > 1.5") == Compare(">", PriceField(name), Const(1.5))
    assert parse_rule("true") == BoolConst(True)
    assert parse_rule("false") == BoolConst(False)
    assert parse_rule("-close < -2") == Compare("<", Negate(PriceField("close")), Const(-2.0))
    assert parse_rule("+close > 2") == Compare(">", PriceField("close"), Const(2.0))


@pytest.mark.parametrize("name", output_names())
def test_every_indicator_parses_with_defaults_and_with_arguments(name: str) -> None:
    definition, _ = lookup_output(name)
    defaults = tuple(Const(float(d)) for d in definition.defaults)
    assert parse_rule(f"{name}() > 0") == Compare(">", Indicator(name, defaults), Const(0.0))
    if not defaults:  # obv takes no argument
        with pytest.raises(RuleError, match="at most 0"):
            parse_rule(f"{name}(3) > 0")
        return
    # explicit arguments, the first one a param; the rest fall back to the defaults
    tree = parse_rule(f"{name}(n) > 0", {"n": 7})
    assert tree == Compare(">", Indicator(name, (Param("n"), *defaults[1:])), Const(0.0))
    numbers = [5 + i for i in range(len(defaults))]
    full = parse_rule(f"{name}({', '.join(map(str, numbers))}) > 0")
    assert full.left == Indicator(name, tuple(Const(float(v)) for v in numbers))


def test_offsets_arithmetic_comparisons_and_logic_parse() -> None:
    close, open_ = PriceField("close"), PriceField("open")
    assert parse_rule("close[3] > close") == Compare(">", Shift(close, 3), close)
    assert parse_rule("close[0] > open") == Compare(">", close, open_)  # [0] is the bar itself
    assert parse_rule("(close - open) / (high - low) * 2 + 1 >= 0.5") == Compare(
        ">=",
        Arith(
            "+",
            Arith(
                "*",
                Arith(
                    "/", Arith("-", close, open_), Arith("-", PriceField("high"), PriceField("low"))
                ),
                Const(2.0),
            ),
            Const(1.0),
        ),
        Const(0.5),
    )
    rsi = Indicator("rsi", (Const(7.0),))
    assert parse_rule("30 < rsi(7) <= 70") == Logic(
        "and", (Compare("<", Const(30.0), rsi), Compare("<=", rsi, Const(70.0)))
    )
    for op in ("<", "<=", ">", ">=", "==", "!="):
        assert parse_rule(f"close {op} open") == Compare(op, close, open_)
    tree = parse_rule("not (close > open) and (close < open or close == open)")
    assert tree == Logic(
        "and",
        (
            Not(Compare(">", close, open_)),
            Logic("or", (Compare("<", close, open_), Compare("==", close, open_))),
        ),
    )


def test_templates_patterns_ai_and_params_parse() -> None:
    fast, slow = Indicator("ema", (Param("fast"),)), Indicator("ema", (Param("slow"),))
    params = {"fast": 12, "slow": 26, "gate": 0.6}
    assert parse_rule("crossover(ema(fast), ema(slow))", params) == Cross(fast, slow, up=True)
    assert parse_rule("crossunder(ema(fast), ema(slow))", params) == Cross(fast, slow, up=False)
    lower = Indicator("bb_lower", (Const(20.0), Const(2.0)))
    assert parse_rule("low_touches(bb_lower())") == Compare("<=", PriceField("low"), lower)
    upper = Indicator("bb_upper", (Const(20.0), Const(2.0)))
    assert parse_rule("high_touches(bb_upper())") == Compare(">=", PriceField("high"), upper)
    for name in PATTERNS:
        assert parse_rule(name) == PatternRef(name)
    assert parse_rule("hammer[1] and not doji") == Logic(
        "and", (Shift(PatternRef("hammer"), 1), Not(PatternRef("doji")))
    )
    for name, label in (("ai_buy", "BUY"), ("ai_sell", "SELL"), ("ai_hold", "HOLD")):
        assert parse_rule(f"{name} >= gate", params) == Compare(
            ">=", AiProbability(label), Param("gate")
        )
    assert {type(n).__name__ for n in walk(parse_rule("crossover(ema(fast), 1.1)", params))} == {
        "Cross",
        "Indicator",
        "Param",
        "Const",
    }


@pytest.mark.parametrize(
    ("text", "params", "fragments"),
    [
        ("foo(10) > 0", {}, ["unknown function 'foo'", "known:", "ema", "crossover", "rsi"]),
        ("foo > 0", {"bar": 1}, ["unknown name 'foo'", "ai_buy", "'bar'"]),
        ("ema > 0", {}, ["'ema' is an indicator"]),
        ("close[-1] > close", {}, ["x[-1]", "future", "look-ahead"]),
        ("close[1.5] > close", {}, ["whole number of bars"]),
        ("close[n] > close", {"n": 2}, ["whole number of bars"]),
        ("close[True] > close", {}, ["whole number of bars"]),
        ("1", {}, ["must be a condition"]),
        ("close + 1", {}, ["must be a condition"]),
        ("hammer + 1 > 0", {}, ["expected a number, got a condition"]),
        ("rsi() and true", {}, ["expected a condition, got a number"]),
        ("not close", {}, ["expected a condition, got a number"]),
        ("crossover(hammer, close)", {}, ["expected a number, got a condition"]),
        ("ema(2.5) > 0", {}, ["ema()", "'length'", "whole number", "2.5"]),
        ("ema(n) > 0", {"n": 2.5}, ["ema()", "'length'", "whole number", "2.5"]),
        ("ema(0) > 0", {}, ["whole number >= 1"]),
        ("ema(-3) > 0", {}, ["whole number >= 1"]),
        ("bb_upper(20, -2) > 0", {}, ["'mult'", "> 0"]),
        ("ema(close) > 0", {}, ["must be a number or a param"]),
        ("ema(1, 2) > 0", {}, ["at most 1 argument"]),
        ("macd(1, 2, 3, 4) > 0", {}, ["at most 3 argument"]),
        ("crossover(close) ", {}, ["takes 2 argument"]),
        ("low_touches(close, open)", {}, ["takes 1 argument"]),
        ("ema(length=2) > 0", {}, ["keyword arguments"]),
        ("ema(( > 0", {}, ["syntax error"]),
        ("ta.ema(10) > 0", {}, ["only plain function calls"]),
        ("close ** 2 > 0", {}, ["unsupported syntax"]),
        ("'a' > 0", {}, ["unsupported literal"]),
    ],
)
def test_rule_errors_name_the_rule_the_column_and_the_problem(
    text: str, params: dict, fragments: list[str]
) -> None:
    with pytest.raises(RuleError) as info:
        parse_rule(text, params, rule="long_entry")
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert message.startswith(f"long_entry {text!r}")
    assert "column " in message
    for fragment in fragments:
        assert fragment in message


def test_a_syntax_error_at_the_end_of_the_rule_names_a_column() -> None:
    with pytest.raises(RuleError, match=r"'close >', column \d+: syntax error"):
        parse_rule("close >")


def test_error_column_points_at_the_offending_argument() -> None:
    with pytest.raises(RuleError, match=r"column 19: "):
        parse_rule("close > 1 and ema(2.5) > 0")
    with pytest.raises(RuleError, match=r"column 5: "):
        parse_rule("1 < foo")


# ---------------------------------------------------------------------------------------------
# 2. Spec validation and serialisation


def ema_cross_spec(**changes: object) -> StrategySpec:
    fields: dict[str, object] = {
        "name": "ema_cross",
        "params": {"fast": 12, "slow": 26, "stop_atr": 2.0, "take_pct": 0.5},
        "long_entry": "crossover(ema(fast), ema(slow))",
        "long_exit": "rsi() > 70",
        "short_entry": "crossunder(ema(fast), ema(slow))",
        "short_exit": "rsi() < 30",
        "stop_loss": Distance(unit="atr", value="stop_atr"),
        "take_profit": Distance(unit="percent", value="take_pct"),
        "trailing_stop": Distance(unit="pips", value=30),
        "costs": Costs(spread=1.2, commission_per_unit=0.00002, slippage_ticks=1),
    }
    fields.update(changes)
    return StrategySpec(**fields)  # type: ignore[arg-type]


def test_json_and_yaml_round_trips_are_equal_and_keep_int_and_float() -> None:
    spec = ema_cross_spec(params={"fast": 12, "slow": 26.0, "stop_atr": 2.0, "take_pct": 1})
    for copy in (StrategySpec.from_json(spec.to_json()), StrategySpec.from_yaml(spec.to_yaml())):
        assert copy == spec
        assert copy.fingerprint() == spec.fingerprint()
        assert type(copy.params["fast"]) is int
        assert type(copy.params["slow"]) is float
        assert type(copy.params["take_pct"]) is int
        assert copy.stop_loss == Distance(unit="atr", value="stop_atr", atr_length=14)
        assert copy.costs.spread == 1.2


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_and_load_spec_files_atomically(tmp_path: Path, suffix: str) -> None:
    spec = ema_cross_spec()
    path = save_spec(spec, tmp_path / f"spec{suffix}")
    assert path == tmp_path / f"spec{suffix}"
    assert load_spec(path) == spec
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    text = path.read_text()
    assert text.lstrip().startswith("{") == (suffix == ".json")


def test_load_spec_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON"):
        load_spec(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: a strategy spec must be a mapping"):
        load_spec(listed)
    rule = tmp_path / "rule.yaml"
    rule.write_text("long_entry: close[-2] > close\n")
    with pytest.raises(ConfigError, match=r"rule\.yaml: long_entry .*look-ahead"):
        load_spec(rule)


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"bogus": 1}, ["bogus", "Extra inputs"]),
        ({"direction": "up"}, ["direction"]),
        ({"costs": {"spread": -1}}, ["costs.spread", ">= 0"]),
        ({"costs": {"slippage_ticks": -2}}, ["costs.slippage_ticks", ">= 0"]),
        ({"stop_loss": {"unit": "atr", "value": "nope"}}, ["stop_loss.value", "'nope'"]),
        ({"take_profit": {"unit": "atr", "value": 1, "atr_length": "x"}}, ["atr_length", "'x'"]),
        ({"stop_loss": {"unit": "pips", "value": -1}}, ["stop_loss", "> 0"]),
        ({"stop_loss": {"unit": "miles", "value": 1}}, ["stop_loss.unit"]),
        ({"direction": "long", "long_entry": None, "short_entry": "true"}, ["long_entry"]),
        ({"direction": "short", "short_entry": None}, ["short_entry"]),
        ({"long_entry": None, "short_entry": None}, ["long_entry or short_entry"]),
        ({"params": {"close": 1}}, ["params", "'close'"]),
        ({"params": {"hammer": 1}}, ["params", "'hammer'"]),
        ({"params": {"ai_buy": 0.5}}, ["params", "'ai_buy'", "reserved"]),
        ({"params": {"ema": 20}}, ["params", "'ema'", "reserved"]),
        ({"params": {"true": 1}}, ["params", "'true'"]),
        ({"params": {"a": math.inf}}, ["params", "finite"]),
        ({"timeframe": "7q"}, ["timeframe"]),
        ({"instrument": "XYZABC"}, ["'XYZABC'", "tick size"]),
        ({"quantity": 0}, ["quantity"]),
        ({"schema_version": 2}, ["schema_version"]),
        ({"long_entry": "ema(fast) > 0"}, ["long_entry", "unknown name 'fast'"]),
    ],
)
def test_from_mapping_errors_name_the_source_and_the_field(
    changes: dict, fragments: list[str]
) -> None:
    data = {"long_entry": "close > open", **changes}
    with pytest.raises(ConfigError) as info:
        StrategySpec.from_mapping(data, source="specs/mine.yaml")
    message = str(info.value)
    assert message.startswith("specs/mine.yaml: ")
    for fragment in fragments:
        assert fragment in message


def test_a_bool_param_is_rejected() -> None:
    with pytest.raises(ConfigError, match="finite number"):
        StrategySpec.from_mapping({"long_entry": "true", "params": {"a": True}})


def test_with_params_and_fingerprint() -> None:
    spec = ema_cross_spec()
    assert ema_cross_spec().fingerprint() == spec.fingerprint()
    assert len(spec.fingerprint()) == 12
    faster = spec.with_params(fast=10)
    assert faster.params == {**spec.params, "fast": 10}
    assert spec.params["fast"] == 12  # the original is untouched
    assert faster.fingerprint() != spec.fingerprint()
    assert faster.with_params(fast=12) == spec
    assert faster.with_params(fast=12).fingerprint() == spec.fingerprint()
    with pytest.raises(ConfigError, match=r"unknown param\(s\) \['zzz'\]"):
        spec.with_params(zzz=1)
    with pytest.raises(RuleError, match="whole number"):
        spec.with_params(fast=2.5)  # revalidated: a length must stay whole


def test_rule_trees_of_a_spec() -> None:
    spec = ema_cross_spec()
    assert spec.rule("long_entry") == parse_rule(spec.long_entry, spec.params)  # type: ignore[arg-type]
    assert StrategySpec(long_entry="true").rule("short_exit") is None


def test_tick_and_pip_size_from_the_instrument() -> None:
    eurusd = StrategySpec(long_entry="true")
    assert POINT_VALUES["EURUSD"] == 100_000
    assert eurusd.instrument_tick_size == pytest.approx(1e-5, rel=1e-12)
    assert eurusd.instrument_pip_size == pytest.approx(1e-4, rel=1e-12)
    for name in ("USDJPY", "usd/jpy"):
        usdjpy = StrategySpec(long_entry="true", instrument=name)
        assert usdjpy.instrument_tick_size == pytest.approx(1e-3, rel=1e-12)
        assert usdjpy.instrument_pip_size == pytest.approx(1e-2, rel=1e-12)
        assert usdjpy.execution_config().tick_size == pytest.approx(1e-3, rel=1e-12)
    with pytest.raises(ConfigError, match="no known tick size"):
        StrategySpec(long_entry="true", instrument="XYZABC")
    custom = StrategySpec(long_entry="true", instrument="XYZABC", tick_size=0.01)
    assert custom.instrument_tick_size == 0.01
    assert custom.instrument_pip_size == pytest.approx(0.1)
    both = StrategySpec(long_entry="true", instrument="XYZABC", tick_size=0.01, pip_size=0.05)
    assert both.instrument_pip_size == 0.05


def test_execution_config_carries_the_costs() -> None:
    spec = ema_cross_spec(
        direction="short",
        fill="close",
        quantity=5_000.0,
        costs=Costs(
            spread=1.5, commission_percent=0.01, commission_per_unit=2e-5, slippage_ticks=2
        ),
    )
    config = spec.execution_config()
    # a fixed spread is TradingView's cost: half of 1.5 pips = 7.5 ticks -> 8 ticks of slippage
    # on the main prices (spread 0.0: bid/ask columns, if any, are not used)
    assert config.spread == 0.0
    assert spec.half_spread_ticks == 8
    assert (config.commission_percent, config.commission_per_unit) == (0.01, 2e-5)
    assert (config.slippage_ticks, config.fill, config.direction) == (2 + 8, "close", "short")
    assert config.quantity == 5_000.0
    assert ema_cross_spec(costs=Costs()).execution_config().spread is None  # "data"


# ---------------------------------------------------------------------------------------------
# 3. Evaluation semantics on the real sample

INDICATOR_PARAMS = IndicatorParams(
    rsi_length=7,
    macd_fast=5,
    macd_slow=13,
    macd_signal=4,
    bb_length=10,
    bb_mult=2.5,
    sma_length=30,
    ema_length=9,
    stoch_k_length=10,
    stoch_k_smoothing=2,
    stoch_d_length=4,
    atr_length=10,
    di_length=10,
    adx_smoothing=12,
)
P = INDICATOR_PARAMS
RULE_CALLS = {
    "rsi": f"rsi({P.rsi_length})",
    "sma": f"sma({P.sma_length})",
    "ema": f"ema({P.ema_length})",
    "atr": f"atr({P.atr_length})",
    **{
        k: f"{k}({P.macd_fast}, {P.macd_slow}, {P.macd_signal})"
        for k in ("macd", "macd_signal", "macd_hist")
    },
    **{
        k: f"{k}({P.bb_length}, {P.bb_mult})"
        for k in ("bb_basis", "bb_upper", "bb_lower", "bb_pctb", "bb_width")
    },
    **{
        k: f"{k}({P.stoch_k_length}, {P.stoch_k_smoothing}, {P.stoch_d_length})"
        for k in ("stoch_k", "stoch_d")
    },
    **{k: f"{k}({P.di_length}, {P.adx_smoothing})" for k in ("adx", "plus_di", "minus_di")},
}


def test_the_table_covers_every_classic_indicator() -> None:
    assert set(RULE_CALLS) == set(INDICATOR_KINDS)


@pytest.mark.parametrize("kind", sorted(RULE_CALLS))
def test_indicators_equal_add_indicators(sample: pl.DataFrame, kind: str) -> None:
    context = SignalContext(sample)
    expected = add_indicators(sample, INDICATOR_PARAMS).get_column(P.column(kind))
    got = value_of(RULE_CALLS[kind], context)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, nan_array(expected), rtol=1e-12, atol=1e-12)
    assert np.isnan(got).sum() == expected.is_null().sum()
    assert np.isfinite(got[-100:]).all()
    # defaults: the indicator module's default parameters
    default = add_indicators(sample).get_column(IndicatorParams().column(kind))
    np.testing.assert_allclose(
        value_of(f"{kind}()", context), nan_array(default), rtol=1e-12, atol=1e-12
    )


def test_indicator_arguments_from_params(context: SignalContext, sample: pl.DataFrame) -> None:
    params = {"n": 9, "m": 2.5, "w": 10}
    expected = add_indicators(sample, INDICATOR_PARAMS)
    np.testing.assert_array_equal(
        value_of("ema(n)", context, params), nan_array(expected.get_column("ema_9"))
    )
    np.testing.assert_allclose(
        value_of("bb_upper(w, m)", context, params),
        nan_array(expected.get_column("bb_upper_10_2.5")),
        rtol=1e-12,
    )


def test_prices_and_composites(context: SignalContext, sample: pl.DataFrame) -> None:
    o, h, lo, c, v = (
        sample.get_column(n).to_numpy() for n in ("open", "high", "low", "close", "volume")
    )
    np.testing.assert_array_equal(value_of("close", context), c)
    np.testing.assert_array_equal(value_of("volume", context), v)
    np.testing.assert_allclose(value_of("hl2", context), (h + lo) / 2, rtol=1e-15)
    np.testing.assert_allclose(value_of("hlc3", context), (h + lo + c) / 3, rtol=1e-15)
    np.testing.assert_allclose(value_of("ohlc4", context), (o + h + lo + c) / 4, rtol=1e-15)
    np.testing.assert_allclose(
        value_of("(close - open) * 2 + high / low - -1", context), (c - o) * 2 + h / lo + 1
    )
    shifted = value_of("close[3]", context)
    assert np.isnan(shifted[:3]).all()
    np.testing.assert_array_equal(shifted[3:], c[:-3])
    rule = evaluate(parse_rule("close > close[1] and not (high - low > 0.002)"), context, {})
    # Pine's comparison: a range of exactly 200 ticks (0.002 up to float rounding) is not > 0.002
    expected = np.concatenate(([False], c[1:] - c[:-1] > 1e-10)) & ~((h - lo) - 0.002 > 1e-10)
    np.testing.assert_array_equal(rule, expected)
    assert (np.abs((h - lo) - 0.002) < 1e-10).any()  # such bars exist: the test bites
    touches = evaluate(parse_rule("low_touches(sma(20)) or high_touches(ema(5))"), context, {})
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(touches, (lo <= sma(c, 20)) | (h >= ema(c, 5)))


def test_nan_compares_false_and_division_by_zero_is_nan(context: SignalContext) -> None:
    n = len(context)
    rsi = value_of("rsi(14)", context)
    warm = np.isnan(rsi)
    assert 0 < warm.sum() < n
    for op in ("<", "<=", ">", ">=", "=="):
        got = evaluate(parse_rule(f"rsi(14) {op} 50"), context, {})
        assert not got[warm].any()  # na compares False
    negated = evaluate(parse_rule("not (rsi(14) > -1)"), context, {})
    np.testing.assert_array_equal(negated, warm)
    ratio = value_of("close / (close - close)", context)
    assert np.isnan(ratio).all()
    assert not evaluate(parse_rule("close / (open - open) > 0"), context, {}).any()
    assert not evaluate(parse_rule("close / 0 == 1"), context, {}).any()


def test_nan_compares_false_with_not_equal_too(context: SignalContext) -> None:
    warm = np.isnan(value_of("rsi(14)", context))
    assert not evaluate(parse_rule("rsi(14) != 50"), context, {})[warm].any()
    assert not evaluate(parse_rule("close / 0 != 1"), context, {}).any()


def test_division_by_zero_on_some_bars_only() -> None:
    bars = hand_bars([1.0, 1.0, 1.1, 1.1, 1.05])  # open == close on bars 0, 1 and 3
    got = value_of("(high - low) / (close - open)", SignalContext(bars))
    assert np.isnan(got[[0, 1, 3]]).all()
    np.testing.assert_allclose(got[2], (0.1 + 4e-4) / 0.1)
    np.testing.assert_allclose(got[4], (0.05 + 4e-4) / -0.05)


def test_shifts_fill_with_nan_and_false(context: SignalContext, sample: pl.DataFrame) -> None:
    patterns = add_patterns(sample, ["hammer", "bullish_engulfing"])
    hammer = patterns.get_column("pat_hammer").to_numpy()
    got = evaluate(parse_rule("hammer[2]"), context, {})
    assert got.dtype == np.bool_
    assert not got[:2].any()
    np.testing.assert_array_equal(got[2:], hammer[:-2])
    both = evaluate(parse_rule("hammer[1] and bullish_engulfing"), context, {})
    engulfing = patterns.get_column("pat_bullish_engulfing").to_numpy()
    np.testing.assert_array_equal(both, np.concatenate(([False], hammer[:-1])) & engulfing)
    beyond = value_of(f"close[{len(context) + 5}]", context)
    assert np.isnan(beyond).all()


def test_shift_helper_in_both_directions() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(strategy._shift(values, 1), [np.nan, 1, 2, 3])
    np.testing.assert_array_equal(strategy._shift(values, -1), [2, 3, 4, np.nan])
    np.testing.assert_array_equal(strategy._shift(values, 9), [np.nan] * 4)
    flags = np.array([True, False, True])
    np.testing.assert_array_equal(strategy._shift(flags, 2), [False, False, True])


def test_every_pattern_equals_add_patterns(context: SignalContext, sample: pl.DataFrame) -> None:
    expected = add_patterns(sample)
    fired = 0
    for name in PATTERNS:
        got = evaluate(parse_rule(name), context, {})
        column = expected.get_column(f"pat_{name}").fill_null(False).to_numpy()
        np.testing.assert_array_equal(got, column, err_msg=name)
        fired += int(got.any())
    assert fired >= len(PATTERNS) // 2  # the comparison is not vacuous


# Crossovers: a plain Python loop implementing the documented rule


def reference_cross(left: np.ndarray, right: np.ndarray, up: bool) -> np.ndarray:
    """True where ``left > right`` now and ``left <= right`` on the last bar where both were
    defined (``<`` / ``>=`` for a crossunder); bars with a NaN are skipped; the first defined bar
    never fires."""
    out = np.zeros(len(left), dtype=bool)
    previous: tuple[float, float] | None = None
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        if math.isnan(a) or math.isnan(b):
            continue
        if previous is not None:
            pa, pb = previous
            out[i] = (a > b and pa <= pb) if up else (a < b and pa >= pb)
        previous = (a, b)
    return out


def test_cross_on_hand_made_arrays_with_holes() -> None:
    nan = np.nan
    left = np.array([nan, 0.0, 2.0, nan, 0.5, 3.0, 3.0, nan, nan, 0.0, 1.0, 1.0, 2.0])
    right = np.full(len(left), 1.0)
    right[6] = nan
    up = strategy._cross(left, right, True)
    down = strategy._cross(left, right, False)
    # bar 1 is the first defined bar (never fires); 2 crosses up; 4 crosses down (compared with
    # bar 2, bar 3 skipped); 5 up; 6 undefined; 9 down (compared with bar 5 across three NaN
    # bars); 10 equal: neither; 11 still equal; 12 up from an equal bar
    assert np.flatnonzero(up).tolist() == [2, 5, 12]
    assert np.flatnonzero(down).tolist() == [4, 9]
    np.testing.assert_array_equal(up, reference_cross(left, right, True))
    np.testing.assert_array_equal(down, reference_cross(left, right, False))


def test_cross_edge_cases() -> None:
    empty = np.array([], dtype=float)
    assert strategy._cross(empty, empty, True).tolist() == []
    nothing = np.full(4, np.nan)
    assert not strategy._cross(nothing, np.zeros(4), True).any()
    one = np.array([np.nan, np.nan, 2.0])
    assert not strategy._cross(one, np.ones(3), True).any()  # first defined bar never fires
    touch = np.array([0.0, 1.0, 2.0])  # reaching equality is not a cross; leaving it up is
    assert strategy._cross(touch, np.ones(3), True).tolist() == [False, False, True]
    assert strategy._cross(touch, np.ones(3), False).tolist() == [False, False, False]


@pytest.mark.parametrize("seed", range(6))
def test_cross_equals_the_reference_on_random_arrays(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    left = rng.integers(0, 4, n).astype(float)  # small integers: many ties
    right = rng.integers(0, 4, n).astype(float)
    warm = int(rng.integers(0, 30))
    left[:warm] = np.nan
    if seed % 2:  # holes in the middle: the general path
        left[rng.random(n) < 0.1] = np.nan
        right[rng.random(n) < 0.1] = np.nan
    for up in (True, False):
        np.testing.assert_array_equal(
            strategy._cross(left, right, up), reference_cross(left, right, up)
        )


def test_crossover_rules_equal_the_reference_on_the_sample(context: SignalContext) -> None:
    fast, slow = value_of("ema(9)", context), value_of("sma(30)", context)
    up = evaluate(parse_rule("crossover(ema(9), sma(30))"), context, {})
    down = evaluate(parse_rule("crossunder(ema(9), sma(30))"), context, {})
    np.testing.assert_array_equal(up, reference_cross(fast, slow, True))
    np.testing.assert_array_equal(down, reference_cross(fast, slow, False))
    assert up.sum() > 10 and down.sum() > 10
    assert not (up & down).any()
    # a series with NaN holes: close / (close - close[5]) style division by zero is rare, so
    # punch holes via an AI probability that is missing on some bars
    ts = context.bars.get_column("ts")
    rng = np.random.default_rng(3)
    keep = rng.random(len(ts)) > 0.2
    prob = rng.random(len(ts))
    predictions = pl.DataFrame({"ts": ts.filter(pl.Series(keep)), "prob_buy": prob[keep]})
    holes = SignalContext(context.bars, predictions)
    got = evaluate(parse_rule("crossover(ai_buy, 0.5)"), holes, {})
    expected_left = np.where(keep, prob, np.nan)
    np.testing.assert_array_equal(got, reference_cross(expected_left, np.full(len(ts), 0.5), True))


# AI gate


def test_ai_gate_joins_predictions_by_ts(sample: pl.DataFrame) -> None:
    bars = sample.head(10)
    ts = bars.get_column("ts")
    predictions = pl.DataFrame(
        {
            # out of order, a duplicate (the last one wins), a ts that is not a bar, bars 3 and 8 missing
            "ts": [ts[5], ts[0], ts[1], ts[2], ts[4], ts[5], ts[6], ts[7], ts[9], START],
            "prob_buy": [0.0, 0.9, 0.1, 0.7, 0.6, 0.8, 0.2, 0.65, 0.99, 1.0],
            "prob_sell": [1.0, 0.05, 0.5, 0.1, 0.2, 0.1, 0.7, 0.3, 0.0, 0.0],
        }
    )
    context = SignalContext(bars, predictions)
    buy = value_of("ai_buy", context)
    np.testing.assert_array_equal(buy, [0.9, 0.1, 0.7, np.nan, 0.6, 0.8, 0.2, 0.65, np.nan, 0.99])
    gate = evaluate(
        parse_rule("ai_buy >= gate and ai_sell < 0.25", {"gate": 0.6}), context, {"gate": 0.6}
    )
    assert np.flatnonzero(gate).tolist() == [0, 2, 4, 5, 9]
    never = evaluate(parse_rule("ai_buy >= 0 or ai_buy < 0"), context, {})
    assert np.flatnonzero(~never).tolist() == [3, 8]  # no prediction, never passes the gate
    with pytest.raises(ConfigError, match="'prob_hold'"):
        value_of("ai_hold", context)


def test_ai_gate_without_predictions_is_a_clear_error(sample: pl.DataFrame) -> None:
    spec = StrategySpec(params={"gate": 0.6}, long_entry="ai_buy >= gate")
    with pytest.raises(ConfigError, match="ai_buy but no model predictions were given"):
        compile_signals(spec, sample.head(100))
    with pytest.raises(ConfigError, match="ai_sell"):
        value_of("ai_sell", SignalContext(sample.head(10)))


# ---------------------------------------------------------------------------------------------
# 4. compile_signals and backtest


def test_distances_in_pips_percent_and_atr(sample: pl.DataFrame) -> None:
    spec = StrategySpec(
        params={"k": 1.5, "alen": 10, "pct": 0.25},
        long_entry="close > open",
        stop_loss=Distance(unit="pips", value=20),
        take_profit=Distance(unit="percent", value="pct"),
        trailing_stop=Distance(unit="atr", value="k", atr_length="alen"),
    )
    signals = compile_signals(spec, sample)
    close = sample.get_column("close").to_numpy()
    np.testing.assert_allclose(signals.stop_distance, np.full(len(close), 20e-4), rtol=1e-12)
    np.testing.assert_allclose(signals.take_distance, close * 0.0025, rtol=1e-12)
    atr = nan_array(add_indicators(sample, IndicatorParams(atr_length=10)).get_column("atr_10"))
    np.testing.assert_allclose(signals.trail_distance, atr * 1.5, rtol=1e-12)
    assert np.isnan(signals.trail_distance[:9]).all()  # no stop during the ATR warm-up
    default_atr = compile_signals(
        spec.model_copy(update={"stop_loss": Distance(unit="atr", value=2)}), sample
    )
    expected14 = nan_array(add_indicators(sample).get_column("atr_14")) * 2
    np.testing.assert_allclose(default_atr.stop_distance, expected14, rtol=1e-12)
    usdjpy = StrategySpec(
        instrument="USDJPY", long_entry="true", stop_loss=Distance(unit="pips", value=20)
    )
    np.testing.assert_allclose(compile_signals(usdjpy, sample.head(5)).stop_distance, 0.2)


def test_compiled_rules_and_missing_rules(sample: pl.DataFrame) -> None:
    spec = ema_cross_spec()
    signals = compile_signals(spec, sample)
    context = SignalContext(sample)
    for name in RULES:
        expected = evaluate(parse_rule(getattr(spec, name), spec.params), context, spec.params)
        np.testing.assert_array_equal(getattr(signals, name), expected)
    only_long = compile_signals(StrategySpec(long_entry="close > open"), sample)
    assert not (
        only_long.long_exit.any() or only_long.short_entry.any() or only_long.short_exit.any()
    )
    assert only_long.stop_distance is None and only_long.take_distance is None
    frame = signals_frame(spec, sample)
    assert frame.columns == [
        "ts",
        *RULES,
        "stop_distance",
        "take_distance",
        "trail_distance",
    ]
    assert frame.get_column("ts").equals(sample.get_column("ts"))
    np.testing.assert_array_equal(frame.get_column("long_entry").to_numpy(), signals.long_entry)


def assert_same_result(a: BacktestResult, b: BacktestResult) -> None:
    assert a.trades.equals(b.trades)
    assert a.equity.equals(b.equity)
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        x, y = a.metrics[key], b.metrics[key]
        assert (math.isnan(x) and math.isnan(y)) or x == y, key


def test_backtest_equals_run_backtest_on_compiled_signals(sample: pl.DataFrame) -> None:
    for spec in (ema_cross_spec(), ema_cross_spec(costs=Costs(), fill="close")):
        result = backtest(sample, spec)
        expected = run_backtest(sample, compile_signals(spec, sample), spec.execution_config())
        assert_same_result(result, expected)
        assert result.trades.height > 20
        assert set(result.trades.get_column("side")) == {"long", "short"}


def test_a_context_reused_across_specs_gives_the_same_results(sample: pl.DataFrame) -> None:
    first = ema_cross_spec()
    second = first.with_params(fast=8, slow=21)
    third = ema_cross_spec(costs=Costs(spread=0.5))
    shared = SignalContext(sample)
    for spec in (first, second, third, first):
        assert_same_result(backtest(shared, spec), backtest(sample, spec))
        reused, fresh = compile_signals(spec, shared), compile_signals(spec, sample)
        for name in (*RULES, "stop_distance", "take_distance", "trail_distance"):
            np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name))
    assert not backtest(shared, first).trades.equals(backtest(shared, second).trades)


def test_fixed_spread_costs(sample: pl.DataFrame) -> None:
    spec = ema_cross_spec(
        costs=Costs(spread=2.0), take_profit=None, trailing_stop=None, stop_loss=None
    )
    result = backtest(sample, spec)
    opens = dict(zip(sample.get_column("ts"), sample.get_column("open"), strict=True))
    first = result.trades.row(0, named=True)
    sign = 1 if first["side"] == "long" else -1
    expected = opens[first["entry_ts"]] + sign * 1e-4  # half of 2 pips, on the trader's side
    assert first["entry_price"] == pytest.approx(expected, abs=1e-9)
    free = backtest(sample, spec.model_copy(update={"costs": Costs()}))
    assert result.metrics["final_equity"] < free.metrics["final_equity"]


def test_data_spread_column_is_used_per_bar(sample: pl.DataFrame) -> None:
    bars = sample.head(600)
    spreads = 1e-4 * (1 + np.arange(bars.height) % 7)  # 1..7 pips, varying bar to bar
    bars = bars.with_columns(pl.Series("spread", spreads))
    spec = StrategySpec(
        long_entry="close > open and close[1] < open[1]",
        long_exit="close < open",
        direction="long",
    )
    result = backtest(bars, spec)
    trades = result.trades
    assert trades.height > 5
    index = {ts: i for i, ts in enumerate(bars.get_column("ts"))}
    opens = bars.get_column("open").to_numpy()
    for row in trades.head(5).iter_rows(named=True):
        i = index[row["entry_ts"]]  # the bar the entry filled in (the one after the signal)
        assert row["entry_price"] == pytest.approx(opens[i] + spreads[i] / 2, abs=1e-9)
        j = index[row["exit_ts"]]
        if row["exit_reason"] == "signal":
            assert row["exit_price"] == pytest.approx(opens[j] - spreads[j] / 2, abs=1e-9)
    without = backtest(bars.drop("spread"), spec)
    assert without.trades.get_column("entry_ts").equals(trades.get_column("entry_ts"))
    assert (trades.get_column("pnl") < without.trades.get_column("pnl")).all()


def test_direction_long_gives_long_trades_only(sample: pl.DataFrame) -> None:
    both = backtest(sample, ema_cross_spec())
    long_only = backtest(sample, ema_cross_spec(direction="long"))
    short_only = backtest(sample, ema_cross_spec(direction="short"))
    assert set(long_only.trades.get_column("side")) == {"long"}
    assert set(short_only.trades.get_column("side")) == {"short"}
    assert (long_only.equity.get_column("position") >= 0).all()
    assert both.trades.height > long_only.trades.height


# ---------------------------------------------------------------------------------------------
# 5. Look-ahead


def test_spec_with_every_indicator_family_and_patterns_has_no_lookahead(
    sample: pl.DataFrame,
) -> None:
    spec = StrategySpec(
        params={"fast": 9, "slow": 30, "k": 2.0},
        long_entry=(
            "crossover(ema(fast), sma(slow)) and rsi() < 70 and macd_hist() > 0"
            " or low_touches(bb_lower()) and stoch_k() > stoch_d()"
            " or adx() > 20 and plus_di() > minus_di() and bullish_engulfing"
            " or hammer[1] and close > hlc3[2]"
        ),
        long_exit="high_touches(bb_upper(20, 2.5)) or bb_pctb() > 1 or bb_width() > 0.01",
        short_entry="crossunder(macd(), macd_signal()) and bb_basis() < close[1] or evening_star",
        short_exit="atr(10) / close > 0.002 or doji[1]",
        stop_loss=Distance(unit="atr", value="k"),
        take_profit=Distance(unit="percent", value=0.5),
    )
    bars = sample.slice(1000, 1200)
    report = check_spec_no_lookahead(spec, bars, n_cuts=6)
    assert report.passed
    assert set(report.columns) >= {*RULES, "stop_distance", "take_distance"}
    assert report.n_trials == 2 * len(report.cuts) + 1 and report.n_compared > 1000
    fired = signals_frame(spec, bars).select(list(RULES)).sum().row(0)
    assert all(count > 0 for count in fired)  # every rule fires: the check compared real signals


def peeking_model(bars: pl.DataFrame) -> pl.DataFrame:
    """prob_buy[t] = 1 when close[t + 1] > close[t]: the future."""
    up = pl.col("close").shift(-1) > pl.col("close")
    return bars.select("ts", prob_buy=up.cast(pl.Float64).fill_null(0.0))


def honest_model(bars: pl.DataFrame) -> pl.DataFrame:
    """prob_buy[t] = 1 when close[t] > close[t - 1]."""
    up = pl.col("close") > pl.col("close").shift(1)
    return bars.select("ts", prob_buy=up.cast(pl.Float64).fill_null(0.5))


def test_a_model_that_peeks_ahead_is_caught(sample: pl.DataFrame) -> None:
    spec = StrategySpec(params={"gate": 0.5}, long_entry="ai_buy > gate", long_exit="ai_buy < gate")
    bars = sample.slice(0, 800)
    with pytest.raises(LookaheadError) as info:
        check_spec_no_lookahead(spec, bars, peeking_model, n_cuts=4)
    assert "long_entry" in info.value.report.leaky_columns
    report = check_spec_no_lookahead(spec, bars, honest_model, n_cuts=4)
    assert report.passed
    # the honest gate does fire: the check compared real signals
    assert signals_frame(spec, bars, honest_model(bars)).get_column("long_entry").sum() > 100


def test_a_hand_built_future_shift_is_caught(sample: pl.DataFrame) -> None:
    bars = sample.slice(0, 500)

    def signals_of(tree: strategy.Node) -> Callable[[pl.DataFrame], pl.DataFrame]:
        def fn(frame: pl.DataFrame) -> pl.DataFrame:
            return pl.DataFrame({"x": evaluate(tree, SignalContext(frame), {})})

        return fn

    future = Compare(">", Shift(PriceField("close"), -1), PriceField("close"))
    with pytest.raises(LookaheadError):
        check_no_lookahead(signals_of(Shift(PriceField("close"), -1)), bars, n_cuts=4)
    with pytest.raises(LookaheadError):
        check_no_lookahead(signals_of(future), bars, n_cuts=4)
    past = Compare(">", Shift(PriceField("close"), 1), PriceField("close"))
    assert check_no_lookahead(signals_of(past), bars, n_cuts=4).passed


# ---------------------------------------------------------------------------------------------
# 6. fill_prices with a spread column, metrics_from_arrays


def test_fill_prices_with_a_spread_column_and_nulls() -> None:
    bars = hand_bars([1.1, 1.2, 1.3, 1.4], spread=[2e-4, None, 4e-4, 0.0])
    main = bars.select("open", "high", "low", "close").to_numpy().T
    half = np.array([1e-4, 0.0, 2e-4, 0.0])
    buy, sell = fill_prices(bars, ExecutionConfig())
    assert buy.shape == sell.shape == (4, 4)
    np.testing.assert_allclose(buy, main + half, rtol=0, atol=1e-15)
    np.testing.assert_allclose(sell, main - half, rtol=0, atol=1e-15)
    # a fixed spread in the config wins over the column
    buy, sell = fill_prices(bars, ExecutionConfig(spread=1e-3))
    np.testing.assert_allclose(buy, main + 5e-4, atol=1e-15)
    np.testing.assert_allclose(sell, main - 5e-4, atol=1e-15)
    # no spread column: both sides at the main prices
    buy, sell = fill_prices(bars.drop("spread"), ExecutionConfig())
    np.testing.assert_array_equal(buy, main)
    np.testing.assert_array_equal(sell, main)


def test_bid_ask_sides_win_over_the_spread_column() -> None:
    bars = hand_bars([1.1, 1.2, 1.3], spread=[2e-4, 2e-4, 2e-4])
    sides = {
        f"{side}_{p}": pl.col(p) + (5e-5 if side == "ask" else -5e-5)
        for side in ("bid", "ask")
        for p in ("open", "high", "low", "close")
    }
    bars = bars.with_columns(**sides)
    buy, sell = fill_prices(bars, ExecutionConfig())
    np.testing.assert_array_equal(
        buy, bars.select("ask_open", "ask_high", "ask_low", "ask_close").to_numpy().T
    )
    np.testing.assert_array_equal(
        sell, bars.select("bid_open", "bid_high", "bid_low", "bid_close").to_numpy().T
    )


def test_run_backtest_with_precomputed_prices_and_shape_check(sample: pl.DataFrame) -> None:
    spec = ema_cross_spec()
    signals = compile_signals(spec, sample)
    config = spec.execution_config()
    plain = run_backtest(sample, signals, config)
    fast = run_backtest(sample, signals, config, prices=fill_prices(sample, config), validate=False)
    assert_same_result(plain, fast)
    buy, sell = fill_prices(sample.head(10), config)
    with pytest.raises(ValueError, match="prices must be two"):
        run_backtest(sample, signals, config, prices=(buy, sell))


def test_metrics_from_arrays_equal_backtest_metrics(sample: pl.DataFrame) -> None:
    result = backtest(sample, ema_cross_spec())
    timeframe = infer_timeframe(sample)
    from_arrays = metrics_from_arrays(
        result.equity.get_column("equity").to_numpy(),
        result.equity.get_column("position").to_numpy(),
        result.trades.get_column("pnl").to_numpy(),
        100_000.0,
        timeframe,
    )
    from_frames = backtest_metrics(result.equity, result.trades, 100_000.0, timeframe)
    assert from_arrays == pytest.approx(from_frames, nan_ok=True)
    assert from_arrays == pytest.approx(result.metrics, nan_ok=True)
    assert from_arrays["trades"] == result.trades.height


def test_metrics_from_arrays_by_hand() -> None:
    equity = np.array([100.0, 110.0, 99.0, 104.5])
    position = np.array([0.0, 1.0, -1.0, 0.0])
    pnl = np.array([10.0, -11.0, 5.5])
    got = metrics_from_arrays(equity, position, pnl, 100.0, dt.timedelta(days=1))
    returns = np.array([0.0, 0.1, -0.1, 0.055555555555555])
    assert got["total_return"] == pytest.approx(0.045)
    assert got["final_equity"] == 104.5
    assert got["max_drawdown"] == pytest.approx(0.1)
    assert got["exposure"] == 0.5
    assert got["profit_factor"] == pytest.approx(15.5 / 11.0)
    assert got["win_rate"] == pytest.approx(2 / 3)
    assert got["trades"] == 3.0
    assert got["avg_trade"] == pytest.approx(4.5 / 3)
    assert got["sharpe"] == pytest.approx(
        returns.mean() / returns.std(ddof=1) * math.sqrt(252), rel=1e-9
    )
    assert got["annual_return"] == pytest.approx(1.045 ** (252 / 4) - 1)
    empty = metrics_from_arrays(np.array([]), np.array([]), np.array([]), 100.0, None)
    assert empty["final_equity"] == 100.0 and empty["total_return"] == 0.0
    assert math.isnan(empty["sharpe"]) and empty["max_drawdown"] == 0.0


def test_order_signals_from_a_spec_are_what_the_engine_takes(sample: pl.DataFrame) -> None:
    signals = compile_signals(ema_cross_spec(), sample.head(300))
    assert isinstance(signals, OrderSignals)
    assert all(getattr(signals, n).dtype == np.bool_ for n in RULES)
    assert all(len(getattr(signals, n)) == 300 for n in RULES)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("close < close + 5e-11", False),
        ("close > close - 5e-11", False),
        ("close <= close - 5e-11", True),
        ("close >= close + 5e-11", True),
        ("close == close + 5e-11", True),
        ("close != close + 5e-11", False),
        ("close < close + 2e-10", True),
        ("close == close + 2e-10", False),
        ("close != close + 2e-10", True),
    ],
)
def test_comparisons_use_pines_tolerance(context: SignalContext, rule: str, expected: bool) -> None:
    """TradingView compares floats with an absolute tolerance of 1e-10 (pynecore measured it):
    the vectorised and the bar-by-bar rules do the same, so a tie on the tick grid decides alike
    in our engine, Nautilus and an exported Pine script."""
    values = evaluate(parse_rule(rule), context, {})
    assert values.all() if expected else not values.any()
