"""The indicator registry: one definition per indicator, found by every consumer (the rule language
and search templates, the bar-by-bar engine, the Pine export, the distillation, the charts and
the model-input overlays); column names; the parallel frame computation."""

from __future__ import annotations

from collections import deque

import matplotlib
import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features import indicators as ind
from aiopt_lib.features import registry as reg
from aiopt_lib.features.lookahead import check_no_lookahead
from aiopt_lib.features.render import RenderSpec, with_overlays
from aiopt_lib.pine.distill import feature_frame, indicator_feature
from aiopt_lib.pine.export import check_pine, expressions_to_pine, spec_to_pine
from aiopt_lib.pine.offline import compare_trades, run_pine
from aiopt_lib.strategy.rules import SignalContext, parse_rule
from aiopt_lib.strategy.search import SearchTemplate
from aiopt_lib.strategy.spec import Costs, StrategySpec, backtest
from aiopt_lib.strategy.streaming import StreamingEvaluator, streaming_indicator

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


# ---------------------------------------------------------------------------------------------
# A toy indicator, registered in one place: the Donchian channel's width


def donchian_width(high: np.ndarray, low: np.ndarray, length: int) -> np.ndarray:
    """``ta.highest(high, n) - ta.lowest(low, n)``, NaN before ``n`` bars."""
    out = np.full(len(high), np.nan)
    if len(high) >= length:
        windows = np.lib.stride_tricks.sliding_window_view
        out[length - 1 :] = windows(high, length).max(axis=1) - windows(low, length).min(axis=1)
    return out


class DonchianWidthStream:
    def __init__(self, length: int) -> None:
        self.highs: deque[float] = deque(maxlen=length)
        self.lows: deque[float] = deque(maxlen=length)

    def update(self, open, high, low, close, volume) -> tuple[float, ...]:
        self.highs.append(high)
        self.lows.append(low)
        full = len(self.highs) == self.highs.maxlen
        return (max(self.highs) - min(self.lows) if full else np.nan,)


TOY = reg.IndicatorDef(
    name="donchian",
    title="Donchian width",
    pine_name="ta.highest",
    params=(reg.IndicatorParam("length", 20, 5, 60),),
    outputs=("dc_width",),
    inputs=("high", "low"),
    compute=donchian_width,
    stream=DonchianWidthStream,
    pine=(reg.PineStep(("dc_width",), "ta.highest(high, {length}) - ta.lowest(low, {length})"),),
    warmup=lambda length: (length - 1,),
    description="a toy for the tests",
)


@pytest.fixture
def toy():
    reg.register(TOY)
    try:
        yield TOY
    finally:
        reg.unregister(TOY.name)


def test_a_toy_indicator_registered_once_is_found_by_every_consumer(sample, toy, tmp_path):
    bars = sample.head(1500)
    expected = donchian_width(bars["high"].to_numpy(), bars["low"].to_numpy(), 20)
    # 1. the rule language, vectorised, and a search template's automatic range
    spec = StrategySpec(
        name="toy_breakout",
        params={"n": 20, "wide": 0.0040037},  # off the price grid: no ties
        long_entry="dc_width(n) > wide and close > ema(50)",
        short_entry="dc_width(n) > wide and close < ema(50)",
        long_exit="dc_width(n) < wide / 2",
        short_exit="dc_width(n) < wide / 2",
        costs=Costs(spread=0.0, commission_per_unit=0.000025, slippage_ticks=1),
    )
    context = SignalContext(bars)
    np.testing.assert_array_equal(context.indicator("dc_width", (20.0,)), expected)
    template = SearchTemplate(spec=spec, space={"n": "auto"})
    assert (template.space["n"].low, template.space["n"].high) == (5, 60)
    ours = backtest(bars, spec).trades
    assert ours.height >= 10
    # 2. the bar-by-bar engine (what Nautilus and the live node run)
    evaluator = StreamingEvaluator(spec)
    streamed = []
    for row in bars.select("open", "high", "low", "close", "volume", "ts").iter_rows():
        evaluator.update(*row)
        streamed.append(evaluator.indicator_value("dc_width", (20,)))
    np.testing.assert_array_equal(np.array(streamed), expected)
    # 3. the Pine export, run offline: the same trades
    text = spec_to_pine(spec, version=6)
    assert "ta.highest(high, n) - ta.lowest(low, n)" in text
    assert check_pine(text, 6) == []
    run = run_pine(text, bars)
    report = compare_trades(ours, run.trades, spec.instrument_tick_size)
    assert report.identical, report.first_difference
    # 4. the distillation: a feature by its column name, in numpy and in Pine
    feature = indicator_feature("dc_width_20")
    frame = feature_frame(bars, [feature])
    np.testing.assert_array_equal(frame["dc_width_20"].to_numpy(), expected)
    declarations, names = expressions_to_pine({"w": "dc_width(20)"}, prefix="distill_")
    assert names == {"w": "distill_dc_width_20"} and len(declarations) == 1
    # 5. the charts and the frame (column names, parsing, compute_frame)
    assert reg.column_name("dc_width", (30,)) == "dc_width_30"
    assert reg.parse_column("dc_width_30")[:3] == (TOY, "dc_width", (30,))
    added = reg.add_indicator(bars, "donchian")
    np.testing.assert_array_equal(added["dc_width_20"].fill_null(np.nan).to_numpy(), expected)
    from aiopt_lib.viz import charts

    figure = charts.candle_chart(bars, indicators=("donchian",), n_bars=200)
    assert any("Donchian" in (ax.get_ylabel() or "") for ax in figure.axes)
    # an oscillator is not an overlay of the model-input charts
    with pytest.raises(ConfigError, match="not on the price scale"):
        with_overlays(bars, RenderSpec(overlays=("dc_width_20",)))


def test_the_toy_is_gone_after_unregistering(toy):
    reg.unregister(toy.name)
    assert reg.lookup_output("dc_width") is None
    with pytest.raises(ConfigError, match="unknown function 'dc_width'"):
        parse_rule("dc_width(20) > 0", rule="toy_gone")
    reg.register(toy)  # for the fixture's own unregister


# ---------------------------------------------------------------------------------------------
# Registration is checked


def test_registration_refuses_clashes_and_malformed_definitions(toy):
    with pytest.raises(ConfigError, match="already registered"):
        reg.register(TOY)
    clash = TOY.__class__(**{**TOY.__dict__, "name": "other", "outputs": ("dc_width",)})
    with pytest.raises(ConfigError, match="already taken"):
        reg.register(clash)
    reserved = TOY.__class__(
        **{
            **TOY.__dict__,
            "name": "other",
            "outputs": ("close",),
            "pine": (reg.PineStep(("close",), "x"),),
        }
    )
    with pytest.raises(ConfigError, match="already taken"):
        reg.register(reserved)
    missing_step = TOY.__class__(**{**TOY.__dict__, "name": "other2", "pine": ()})
    with pytest.raises(ConfigError, match="Pine steps"):
        reg.register(missing_step)
    bad_input = TOY.__class__(**{**TOY.__dict__, "name": "other3", "inputs": ("bid",)})
    with pytest.raises(ConfigError, match="inputs"):
        reg.register(bad_input)
    # replacing keeps the output names
    reg.register(TOY, replace=True)
    assert reg.lookup_output("dc_width") == (TOY, 0)


def test_arguments_are_checked_with_the_argument_named():
    macd = reg.REGISTRY["macd"]
    assert macd.normalise(()) == (12, 26, 9)
    assert macd.normalise((5.0,)) == (5, 26, 9)
    with pytest.raises(ConfigError, match="'slow' must be a whole number >= 1"):
        macd.normalise((5, 2.5))
    with pytest.raises(ConfigError, match="at most 3"):
        macd.normalise((1, 2, 3, 4))
    with pytest.raises(ConfigError, match="'mult' must be > 0"):
        reg.REGISTRY["bb"].normalise((20, -1))
    with pytest.raises(ConfigError, match="unknown indicator 'vwap'"):
        reg.IndicatorRequest("vwap").resolve()
    with pytest.raises(ConfigError, match="takes no source"):
        reg.IndicatorRequest("atr", (14,), "open").resolve()


# ---------------------------------------------------------------------------------------------
# Column names


@pytest.mark.parametrize("name", sorted(reg.REGISTRY))
def test_every_column_name_reads_back(name):
    definition = reg.REGISTRY[name]
    for args in (definition.defaults, tuple(p.high for p in definition.params)):
        values = definition.normalise(args)
        for output in definition.outputs:
            column = reg.column_name(output, values)
            found = reg.parse_column(column)
            assert found is not None, column
            assert found[0] is definition and found[1] == output
            assert reg.column_name(output, found[2], found[3]) == column


def test_column_names_of_the_classic_set_are_unchanged():
    # the default set's names are pinned in tests/test_indicators.py (DEFAULT_COLUMNS)
    assert reg.column_name("adx", (14, 20)) == "adx_14_20"
    assert reg.column_name("bb_upper", (20, 2.5), "open") == "bb_upper_20_2.5_open"
    assert reg.parse_column("bb_upper_20_2.5_open")[2:] == ((20, 2.5), "open")
    assert reg.parse_column("vwap_14") is None
    assert reg.parse_column("rsi_x") is None


# ---------------------------------------------------------------------------------------------
# compute_frame


def test_compute_frame_threads_equal_one_thread_and_each_function(sample):
    requests = [reg.IndicatorRequest(name) for name in reg.REGISTRY]
    parallel = reg.compute_frame(sample, requests)
    serial = reg.compute_frame(sample, requests, threads=1)
    assert parallel.equals(serial)
    assert parallel.width == sample.width + sum(len(d.outputs) for d in reg.REGISTRY.values())
    close = sample["close"].to_numpy()
    np.testing.assert_array_equal(
        parallel["rsi_14"].fill_null(np.nan).to_numpy(), ind.rsi(close, 14)
    )
    # a request made twice is computed once; a source is honoured
    again = reg.compute_frame(sample, ["ema", "ema", reg.IndicatorRequest("ema", (20,), "open")])
    assert again.columns[-2:] == ["ema_20", "ema_20_open"]
    np.testing.assert_array_equal(
        again["ema_20_open"].fill_null(np.nan).to_numpy(), ind.ema(sample["open"].to_numpy(), 20)
    )


def test_compute_frame_is_causal(sample):
    requests = list(reg.REGISTRY)
    report = check_no_lookahead(
        lambda b: reg.compute_frame(b, requests), sample.head(1200), n_cuts=5
    )
    assert report.passed and report.n_compared > 0


def test_warmups_are_the_first_bars_of_the_outputs(sample):
    """Each registry warm-up is where its output becomes defined for good on the sample."""
    for definition in reg.REGISTRY.values():
        args = definition.defaults
        outputs = reg.compute_indicator(definition, args, lambda n: sample[n].to_numpy())
        for output, values, warmup in zip(
            definition.outputs, outputs, definition.warmup(*args), strict=True
        ):
            defined = ~np.isnan(values)
            assert defined[warmup:].all(), (output, warmup)
            assert warmup == 0 or not defined[warmup - 1], (output, warmup)


def test_every_streaming_machine_equals_its_kernel(sample):
    bars = sample.head(800)
    rows = bars.select("open", "high", "low", "close", "volume").rows()
    for name, definition in reg.REGISTRY.items():
        args = definition.defaults
        expected = reg.compute_indicator(definition, args, lambda n: bars[n].to_numpy())
        machine = streaming_indicator(name, args)
        streamed = np.array([machine.update(*row) for row in rows])
        for i, output in enumerate(definition.outputs):
            np.testing.assert_allclose(
                streamed[:, i], expected[i], rtol=1e-12, atol=1e-12, err_msg=output
            )
