"""Indicators: equal to TradingView (pynecore, an independent bar-by-bar implementation of Pine's
built-ins, run offline) on every bar including warm-up, equal to TA-Lib wherever the two
definitions agree, no look-ahead, and the API's names and checks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
import talib
from pynecore_reference import assert_within, first_defined, reference_grid

import aiopt_lib.features.indicators as ind
import aiopt_lib.features.registry as reg
from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.core.errors import DataError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.lookahead import check_no_lookahead

DEFAULT_COLUMNS = [
    "rsi_14",
    "macd_12_26_9",
    "macd_signal_12_26_9",
    "macd_hist_12_26_9",
    "bb_basis_20_2",
    "bb_upper_20_2",
    "bb_lower_20_2",
    "bb_pctb_20_2",
    "bb_width_20_2",
    "sma_50",
    "ema_20",
    "stoch_k_14_3_3",
    "stoch_d_14_3_3",
    "atr_14",
    "adx_14",
    "plus_di_14",
    "minus_di_14",
]

PARAM_SETS = {
    "default": reg.IndicatorParams(),
    # length-1 averages, a fast MACD length above the slow one, a fractional band multiplier
    "short": reg.IndicatorParams(
        rsi_length=2,
        macd_fast=26,
        macd_slow=12,
        macd_signal=1,
        bb_length=5,
        bb_mult=2.5,
        sma_length=1,
        ema_length=1,
        stoch_k_length=5,
        stoch_k_smoothing=1,
        stoch_d_length=4,
        atr_length=1,
        di_length=7,
        adx_smoothing=20,
    ),
    "long": reg.IndicatorParams(
        rsi_length=50,
        macd_fast=50,
        macd_slow=100,
        macd_signal=30,
        bb_length=100,
        bb_mult=1,
        sma_length=200,
        ema_length=200,
        stoch_k_length=60,
        stoch_k_smoothing=10,
        stoch_d_length=10,
        atr_length=100,
        di_length=30,
        adx_smoothing=5,
    ),
}


# ---------------------------------------------------------------------------------------------
# data


def bars_frame(open_, high, low, close, start=dt.datetime(2020, 1, 6, tzinfo=dt.UTC)):
    n = len(close)
    return pl.DataFrame(
        {
            "ts": [start + dt.timedelta(hours=i) for i in range(n)],
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": np.ones(n),
        },
        schema_overrides={"ts": TS_DTYPE},
    )


def random_walk(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EUR/USD-like one-minute bars: a log random walk quoted in 1e-5 ticks, high > low always."""
    rng = np.random.default_rng(seed)
    tick = 1e-5
    close = np.round(1.1 * np.exp(np.cumsum(rng.normal(0, 5e-5, n))) / tick) * tick
    open_ = np.concatenate([[close[0]], close[:-1]])
    up = rng.geometric(0.4, n)  # >= 1 tick above the body
    down = rng.geometric(0.4, n) - 1
    high = np.round((np.maximum(open_, close) + up * tick) / tick) * tick
    low = np.round((np.minimum(open_, close) - down * tick) / tick) * tick
    return open_, high, low, close


def edge_bars() -> pl.DataFrame:
    """Bars that reach every special case: a flat start (zero true range: DMI na; no change: RSI
    100; equal closes: the Bollinger bands coincide), a flat stretch (Stochastic range 0; the
    Bollinger variance down to rounding noise), a long rise (RSI's loss average decays under
    Pine's 1e-10 tolerance: exactly 100) and a long fall (exactly 0)."""
    rng = np.random.default_rng(7)
    n = 700
    close = 1.1 + np.cumsum(rng.normal(0, 1e-4, n))
    close[:20] = 1.1
    close[100:130] = close[99]
    close[200:450] = close[199] + np.arange(250) * 1e-4
    close[450:] = close[449] - np.arange(250) * 1e-4
    open_ = np.concatenate([[close[0]], close[:-1]])
    flat = (np.arange(n) < 20) | ((np.arange(n) >= 100) & (np.arange(n) < 130))
    wick = np.where(flat, 0.0, 5e-5)
    return bars_frame(
        open_, np.maximum(open_, close) + wick, np.minimum(open_, close) - wick, close
    )


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def walk() -> dict[str, np.ndarray]:
    """One million synthetic one-minute bars, with TA-Lib's and our outputs computed once."""
    open_, high, low, close = random_walk(1_000_000)
    bars = pl.DataFrame({"open": open_, "high": high, "low": low, "close": close})
    ours = reg.add_indicators(bars)
    return {
        "high": high,
        "low": low,
        "close": close,
        **{
            kind: ours[name].to_numpy()
            for kind, name in zip(reg.INDICATOR_KINDS, ours.columns[4:], strict=True)
        },
    }


# ---------------------------------------------------------------------------------------------
# TradingView reference: pynecore runs Pine's built-ins bar by bar (tests/pynecore_reference.py).

PINE_SCRIPT = '''"""
@pyne
"""
from pynecore.lib import close, high, low, plot, script, ta


@script.indicator(title="aiopt reference", overlay=False)
def main():
    line, signal, hist = ta.macd(close, {macd_fast}, {macd_slow}, {macd_signal})
    basis, upper, lower = ta.bb(close, {bb_length}, {bb_mult})
    k = ta.sma(ta.stoch(close, high, low, {stoch_k_length}), {stoch_k_smoothing})
    plus, minus, adx = ta.dmi({di_length}, {adx_smoothing})
    plot(ta.rsi(close, {rsi_length}), "rsi")
    plot(line, "macd")
    plot(signal, "macd_signal")
    plot(hist, "macd_hist")
    plot(basis, "bb_basis")
    plot(upper, "bb_upper")
    plot(lower, "bb_lower")
    plot((close - lower) / (upper - lower), "bb_pctb")
    plot(ta.bbw(close, {bb_length}, {bb_mult}), "bb_width")
    plot(ta.sma(close, {sma_length}), "sma")
    plot(ta.ema(close, {ema_length}), "ema")
    plot(k, "stoch_k")
    plot(ta.sma(k, {stoch_d_length}), "stoch_d")
    plot(ta.atr({atr_length}), "atr")
    plot(adx, "adx")
    plot(plus, "plus_di")
    plot(minus, "minus_di")
    plot(ta.tr(True), "true_range")
'''


@pytest.fixture(scope="module")
def tradingview(sample, tmp_path_factory) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """pynecore's outputs for (data set, parameter set): the sample with every parameter set, the
    edge-case bars with the default and short ones."""
    datasets = {"sample": sample, "edge": edge_bars()}
    runs = [("sample", name) for name in PARAM_SETS] + [("edge", "default"), ("edge", "short")]
    return reference_grid(
        datasets, runs, PINE_SCRIPT, PARAM_SETS, tmp_path_factory.mktemp("pynecore")
    )


# ---------------------------------------------------------------------------------------------
# equal to TradingView, warm-up included


def expected_first(kind: str, p: reg.IndicatorParams) -> int:
    """The first defined bar of each output, from TradingView's definitions (module docstring)."""
    line = max(p.macd_fast, p.macd_slow) - 1
    k = p.stoch_k_length + p.stoch_k_smoothing - 2
    return {
        "rsi": p.rsi_length,
        "macd": line,
        "macd_signal": line + p.macd_signal - 1,
        "macd_hist": line + p.macd_signal - 1,
        "sma": p.sma_length - 1,
        "ema": p.ema_length - 1,
        "stoch_k": k,
        "stoch_d": k + p.stoch_d_length - 1,
        "atr": p.atr_length - 1,
        "adx": p.di_length + p.adx_smoothing - 1,
        "plus_di": p.di_length,
        "minus_di": p.di_length,
    }.get(kind, p.bb_length - 1)


@pytest.mark.parametrize("params_name", list(PARAM_SETS))
def test_equal_to_tradingview_on_every_bar_including_warm_up(sample, tradingview, params_name):
    params = PARAM_SETS[params_name]
    ref = tradingview["sample", params_name]
    ours = reg.add_indicators(sample, params)
    for kind, name in zip(reg.INDICATOR_KINDS, params.columns(), strict=True):
        values = ours[name].to_numpy()
        assert_within(values, ref[kind])
        assert first_defined(values) == expected_first(kind, params), kind
    # Bollinger runs TradingView's own rolling sum: identical to the bit, %b and width included
    for kind in ("sma", "bb_basis", "bb_upper", "bb_lower", "bb_pctb", "bb_width"):
        name = params.column(kind)
        np.testing.assert_array_equal(ours[name].to_numpy(), ref[kind], err_msg=kind)
    h, lo, c = (sample[col].to_numpy() for col in ("high", "low", "close"))
    assert_within(ind.true_range(h, lo, c), ref["true_range"])


@pytest.mark.parametrize("params_name", ["default", "short"])
def test_equal_to_tradingview_in_flat_and_one_way_markets(tradingview, params_name):
    """Zero ranges and saturated averages: DMI na on a flat start, Stochastic %K repeating its
    last value through a flat stretch, %b na where the bands collapse, RSI exactly 100 / 0."""
    bars = edge_bars()
    params = PARAM_SETS[params_name]
    ref = tradingview["edge", params_name]
    ours = reg.add_indicators(bars, params)
    for kind, name in zip(reg.INDICATOR_KINDS, params.columns(), strict=True):
        assert_within(ours[name].to_numpy(), ref[kind])
    if params_name == "default":
        rsi = ours["rsi_14"].to_numpy()
        assert np.all(rsi[14:20] == 100.0)  # no change at all: 100, as TradingView (TA-Lib: 0)
        assert rsi[440] == 100.0 and rsi[699] == 0.0  # loss (gain) average under 1e-10
        assert np.sum(rsi[200:450] < 100.0) > 0  # ... and not before it
        assert np.isnan(ours["plus_di_14"].to_numpy()[:20]).all()  # zero true range: na
        k = ours["stoch_k_14_3_3"].to_numpy()
        assert np.all(k[115:130] == k[114])  # range 0: raw %K na, the average repeats
        pctb = ours["bb_pctb_20_2"].to_numpy()
        assert np.isnan(pctb[19])  # 20 equal closes: the bands coincide, %b is na
        # in the flat stretch TradingView's variance is rounding noise, not 0: %b is 0.5
        assert np.all(np.abs(pctb[120:130] - 0.5) < 1e-3)


def test_warm_up_index_for_many_lengths():
    _, high, low, close_ = random_walk(400, seed=3)
    for length in (1, 2, 3, 9, 33):
        assert first_defined(ind.sma(close_, length)) == length - 1
        assert first_defined(ind.ema(close_, length)) == length - 1
        assert first_defined(ind.rma(close_, length)) == length - 1
        assert first_defined(ind.rsi(close_, length)) == length
        assert first_defined(ind.atr(high, low, close_, length)) == length - 1
        basis, upper, lower, pct_b, width = ind.bollinger(close_, length, 1.5)
        assert {first_defined(v) for v in (basis, upper, lower, width)} == {length - 1}
        # one value has no spread: the bands coincide and %b is na on every bar
        assert first_defined(pct_b) == (length - 1 if length > 1 else len(close_))
        plus, _, adx = ind.dmi(high, low, close_, length, 4)
        assert (first_defined(plus), first_defined(adx)) == (length, length + 3)
        k, d = ind.stoch(high, low, close_, length, 2, 5)
        assert (first_defined(k), first_defined(d)) == (length, length + 4)
        line, signal, hist = ind.macd(close_, length, 7, 4)
        assert first_defined(line) == max(length, 7) - 1
        assert first_defined(signal) == first_defined(hist) == max(length, 7) + 2
    assert np.isnan(ind.sma(close_, 401)).all()  # longer than the series: all na
    assert first_defined(ind.true_range(high, low, close_)) == 0


def test_a_plain_ewm_from_the_first_bar_is_caught(sample, tradingview):
    """Seeding Wilder's average with the first change instead of the SMA of `length` changes (a
    pandas ewm) gives an RSI up to ~28 points off on the sample's first bars; the check fails."""
    ref = tradingview["sample", "default"]["rsi"]
    change = sample["close"].to_pandas().diff()
    up = change.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    down = (-change).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    naive = (100 - 100 / (1 + up / down)).to_numpy()
    naive[:14] = np.nan  # even granted TradingView's warm-up
    assert np.nanmax(np.abs(naive - ref)) > 20
    with pytest.raises(AssertionError, match="max \\|diff\\|"):
        assert_within(naive, ref)


# ---------------------------------------------------------------------------------------------
# equal to TA-Lib where the definitions agree


def test_equal_to_talib_on_the_sample(sample):
    h, lo, c = (sample[col].to_numpy() for col in ("high", "low", "close"))
    check_talib(
        h, lo, c, {k: v for k, v in zip(reg.INDICATOR_KINDS, ind_outputs(h, lo, c), strict=True)}
    )


def test_equal_to_talib_on_a_million_bars(walk):
    check_talib(walk["high"], walk["low"], walk["close"], walk)


def ind_outputs(h, lo, c):
    p = reg.IndicatorParams()
    line, signal, hist = ind.macd(c)
    plus, minus, adx = ind.dmi(h, lo, c)
    return [
        ind.rsi(c),
        line,
        signal,
        hist,
        *ind.bollinger(c),
        ind.sma(c, p.sma_length),
        ind.ema(c, p.ema_length),
        *ind.stoch(h, lo, c),
        ind.atr(h, lo, c),
        adx,
        plus,
        minus,
    ]


def check_talib(h, lo, c, ours):
    # identical definitions: every bar where TA-Lib is defined
    rsi = ours["rsi"]
    assert np.nanmin(rsi) > 0 and np.nanmax(rsi) < 100  # no saturation, where the two differ
    assert_within(rsi, talib.RSI(c, 14))
    assert_within(ours["sma"], talib.SMA(c, 50))
    assert_within(ours["ema"], talib.EMA(c, 20))
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    assert_within(ours["bb_basis"], middle)
    # Both compute the variance as mean(x^2) - mean^2, whose cancellation the square root
    # amplifies where the window barely moves: compare it before the root. (Over a million bars
    # TradingView's rolling sum, and so ours, drifts ~1e-12 from the exact sum; where the
    # standard deviation is 2e-5 that moves the bands by ~4e-9.)
    variance = ((ours["bb_upper"] - ours["bb_lower"]) / 4) ** 2
    assert_within(variance, ((upper - lower) / 4) ** 2, tol=1e-12)
    if len(c) < 100_000:
        assert_within(ours["bb_upper"], upper)
        assert_within(ours["bb_lower"], lower)
    assert_within((c - ours["bb_lower"]) / (ours["bb_upper"] - ours["bb_lower"]), ours["bb_pctb"])
    assert_within(100 * (ours["bb_upper"] - ours["bb_lower"]) / ours["bb_basis"], ours["bb_width"])
    k, d = talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
    assert_within(
        ours["stoch_k"], k, where=slice(17, None)
    )  # TA-Lib starts both at the %D's first bar
    assert_within(ours["stoch_d"], d)
    # MACD = ema(12) - ema(26), signal = ema(line, 9) over the line's defined part
    fast, slow = talib.EMA(c, 12), talib.EMA(c, 26)
    assert_within(ours["macd"], fast - slow)
    signal = np.full_like(c, np.nan)
    signal[25:] = talib.EMA((fast - slow)[25:], 9)
    assert_within(ours["macd_signal"], signal)
    assert_within(ours["macd_hist"], fast - slow - signal)
    # TA-Lib's MACD seeds the fast EMA on bar 25 with the mean of bars 14..25: ours minus
    # TA-Lib's is that seed difference decaying by 11/13 per bar, exactly, from bar 33 on
    line, ta_signal, ta_hist = talib.MACD(c, 12, 26, 9)
    seed_gap = fast[25] - c[14:26].mean()
    line_gap = np.full_like(c, np.nan)
    line_gap[25:] = seed_gap * (11 / 13) ** np.arange(len(c) - 25)
    defined = slice(33, None)
    assert_within(ours["macd"][defined] - line[defined], line_gap[defined], tol=1e-12)
    signal_gap = ind.ema(line_gap, 9)  # the EMA is linear: the signal gap is the EMA of the gap
    assert_within(ours["macd_signal"][defined] - ta_signal[defined], signal_gap[defined], tol=1e-12)
    hist_gap = line_gap - signal_gap
    assert_within(ours["macd_hist"][defined] - ta_hist[defined], hist_gap[defined], tol=1e-12)
    # ATR: TradingView seeds with bars 0..13 (bar 0: high - low), TA-Lib with 1..14
    tr = talib.TRANGE(h, lo, c)
    tr[0] = h[0] - lo[0]
    assert_within(ind.true_range(h, lo, c), tr)
    ta_atr = talib.ATR(h, lo, c, 14)
    gap = (tr[:14].mean() * 13 + tr[14]) / 14 - tr[1:15].mean()
    expected = np.full_like(c, np.nan)
    expected[14:] = gap * (13 / 14) ** np.arange(len(c) - 14)
    assert_within(ours["atr"] - ta_atr, expected, tol=1e-12)
    # DMI: TA-Lib seeds Wilder's sums with 13 values (decays by 13/14 per bar) and compares the
    # moves exactly. With its comparison, equal from the bar where the seed's weight < 1e-13.
    settled = slice(14 + int(math.log(1e-13) / math.log(13 / 14)), None)
    strict = ind._dmi_arrays(h, lo, c, 14, 14, tie_tolerance=0.0)
    for ours_strict, ta_values in zip(
        strict,
        (talib.PLUS_DI(h, lo, c, 14), talib.MINUS_DI(h, lo, c, 14), talib.ADX(h, lo, c, 14)),
        strict=True,
    ):
        assert_within(ours_strict[settled], ta_values[settled])
    # ... and with TradingView's tolerance, different exactly from the first bar where quoted
    # moves tie (the same number of pips up and down, a few 1e-16 apart as floats)
    up, down = np.diff(h), -np.diff(lo)
    ties = (np.abs(up - down) <= 1e-10) & (np.maximum(up, down) > 1e-10) & (up != down)
    assert ties.any()
    first_tie = int(np.flatnonzero(ties)[0]) + 1
    tradingview = (ours["plus_di"], ours["minus_di"], ours["adx"])
    for tolerant, exact in zip(tradingview, strict, strict=True):
        assert np.array_equal(tolerant[:first_tie], exact[:first_tie], equal_nan=True)
    assert not all(
        np.allclose(tolerant[first_tie:], exact[first_tie:], equal_nan=True)
        for tolerant, exact in zip(tradingview, strict, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# no look-ahead


def test_no_look_ahead_values_never_change_when_later_bars_change(sample):
    full = reg.add_indicators(sample)
    for cut in (1, 2, 14, 15, 34, 50, 777, 4000, sample.height - 1):
        prefix = reg.add_indicators(sample.head(cut))
        assert prefix.equals(full.head(cut)), cut
        # later bars replaced by something else entirely: bars up to the cut unchanged
        later = sample.slice(cut).with_columns(pl.col("open", "high", "low", "close") * 1.5 + 0.1)
        shocked = reg.add_indicators(pl.concat([sample.head(cut), later]))
        assert shocked.head(cut).equals(full.head(cut)), cut


@pytest.mark.parametrize("params_name", ["short", "long"])
def test_no_look_ahead_by_the_project_checker(sample, params_name):
    params = PARAM_SETS[params_name]
    report = check_no_lookahead(lambda b: reg.add_indicators(b, params), sample, n_cuts=8, seed=4)
    assert report.passed


def test_no_look_ahead_numpy_level():
    _, h, lo, c = random_walk(3000, seed=11)
    cut = 1234
    for fn, args in [
        (ind.sma, (c, 7)),
        (ind.ema, (c, 7)),
        (ind.rma, (c, 7)),
        (ind.rsi, (c,)),
        (ind.macd, (c,)),
        (ind.bollinger, (c, 9, 2.5)),
        (ind.stoch, (h, lo, c)),
        (ind.true_range, (h, lo, c)),
        (ind.atr, (h, lo, c)),
        (ind.dmi, (h, lo, c, 9, 5)),
    ]:
        full = np.atleast_2d(fn(*args))
        part = np.atleast_2d(fn(*(a[:cut] if isinstance(a, np.ndarray) else a for a in args)))
        np.testing.assert_array_equal(full[:, :cut], part, err_msg=fn.__name__)


# ---------------------------------------------------------------------------------------------
# numpy and polars levels agree, chaining, names


def test_add_indicators_equals_each_function_and_each_add(sample):
    h, lo, c = (sample[col].to_numpy() for col in ("high", "low", "close"))
    fused = reg.add_indicators(sample)
    assert fused.columns == [*sample.columns, *DEFAULT_COLUMNS]
    assert reg.indicator_columns() == tuple(DEFAULT_COLUMNS)
    for name, values in zip(DEFAULT_COLUMNS, ind_outputs(h, lo, c), strict=True):
        np.testing.assert_array_equal(fused[name].to_numpy(), values, err_msg=name)
    one_by_one = sample
    for add in (reg.add_rsi, reg.add_macd, reg.add_bollinger, reg.add_sma, reg.add_ema):
        one_by_one = add(one_by_one)
    for add in (reg.add_stoch, reg.add_atr, reg.add_dmi):
        one_by_one = add(one_by_one)
    assert one_by_one.select(DEFAULT_COLUMNS).equals(fused.select(DEFAULT_COLUMNS))


def test_polars_columns_are_float64_with_null_warm_up(sample):
    out = reg.add_indicators(sample)
    for name in DEFAULT_COLUMNS:
        column = out[name]
        assert column.dtype == pl.Float64
        assert column.is_nan().sum() == 0  # na is null: polars sorts NaN above every number
        assert column.null_count() == first_defined(column.to_numpy()), name
        assert column.head(column.null_count()).is_null().all()
    # a NaN inside a column is null too (%b where the bands coincide)
    pctb = reg.add_bollinger(edge_bars(), length=5)["bb_pctb_5_2"]
    assert pctb.is_nan().sum() == 0 and pctb.slice(4, 16).is_null().all()
    assert (out["rsi_14"] > 70).sum() == (out["rsi_14"].to_numpy() > 70).sum()


def test_indicators_chain_over_another_indicators_warm_up(sample):
    c = sample["close"].to_numpy()
    line, signal, _ = ind.macd(c)
    np.testing.assert_array_equal(ind.ema(line, 9), signal)  # the signal line is ema(line)
    rsi = ind.rsi(c)
    smoothed = ind.sma(rsi, 5)
    assert first_defined(smoothed) == 14 + 4
    np.testing.assert_array_equal(smoothed[18:], ind.sma(rsi[14:], 5)[4:])
    chained = reg.add_ema(reg.add_rsi(sample), 5, source="rsi_14")
    assert "ema_5_rsi_14" in chained.columns
    np.testing.assert_array_equal(chained["ema_5_rsi_14"].to_numpy(), ind.ema(rsi, 5))
    # add_indicators over an indicator: the source's warm-up delays only what uses the source
    with_ema = reg.add_ema(sample, 5)
    ema5 = with_ema["ema_5"].to_numpy()
    out = reg.add_indicators(with_ema, reg.IndicatorParams(source="ema_5"))
    np.testing.assert_array_equal(out["rsi_14_ema_5"].to_numpy(), ind.rsi(ema5))
    np.testing.assert_array_equal(out["bb_pctb_20_2_ema_5"].to_numpy(), ind.bollinger(ema5)[3])
    plain = reg.add_indicators(sample)
    for name in ("stoch_k_14_3_3", "atr_14", "adx_14", "plus_di_14"):
        assert out[name].equals(plain[name]), name


def test_column_names_come_from_the_parameters():
    p = reg.IndicatorParams(bb_length=10, bb_mult=2.5, di_length=10, adx_smoothing=20)
    assert p.column("bb_pctb") == "bb_pctb_10_2.5"
    assert reg.IndicatorParams(bb_mult=3).column("bb_width") == "bb_width_20_3"
    assert p.column("adx") == "adx_10_20"
    assert p.column("plus_di") == "plus_di_10"
    assert reg.IndicatorParams(di_length=10, adx_smoothing=10).column("adx") == "adx_10"
    assert reg.IndicatorParams(source="open").column("rsi") == "rsi_14_open"
    assert reg.IndicatorParams(source="open").column("atr") == "atr_14"
    assert reg.indicator_columns(p) == p.columns()
    assert len(set(p.columns())) == len(reg.INDICATOR_KINDS)
    with pytest.raises(ValueError, match="unknown indicator kind"):
        p.column("vwap")
    out = reg.add_dmi(reg.add_bollinger(edge_bars(), 10, 2.5), 10, 20)
    assert {"bb_upper_10_2.5", "adx_10_20", "minus_di_10"} <= set(out.columns)


# ---------------------------------------------------------------------------------------------
# input checks


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="rsi_length must be an int >= 1"):
        reg.IndicatorParams(rsi_length=0)
    with pytest.raises(TypeError, match="macd_fast"):
        reg.IndicatorParams(macd_fast=2.5)
    with pytest.raises(TypeError, match="atr_length"):
        reg.IndicatorParams(atr_length=True)
    for mult in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bb_mult"):
            reg.IndicatorParams(bb_mult=mult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        reg.IndicatorParams().rsi_length = 3  # type: ignore[misc]
    assert reg.IndicatorParams(sma_length=np.int64(5)).sma_length == 5
    c = np.linspace(1.0, 2.0, 50)
    for call in (lambda: ind.sma(c, 0), lambda: ind.rsi(c, -3), lambda: ind.macd(c, 12, 0)):
        with pytest.raises(ValueError, match=">= 1"):
            call()
    with pytest.raises(ValueError, match="mult"):
        ind.bollinger(c, 20, 0.0)


def test_bad_inputs_give_clear_errors(sample):
    c = sample["close"].to_numpy().copy()
    c[100] = np.nan
    with pytest.raises(DataError, match="row 100, field 'close': not finite"):
        ind.rsi(c)
    c[100] = np.inf
    with pytest.raises(DataError, match="row 100"):
        reg.add_rsi(sample.with_columns(pl.Series("close", c)))
    h, lo = sample["high"].to_numpy(), sample["low"].to_numpy()
    with pytest.raises(DataError, match="field 'low'"):
        ind.atr(h, np.where(np.arange(len(lo)) == 7, np.nan, lo), sample["close"].to_numpy())
    with pytest.raises(TypeError, match="real numeric"):
        ind.sma(np.array(["1.1", "1.2"]), 1)
    with pytest.raises(TypeError, match="real numeric"):
        ind.sma(np.array([True, False]), 1)
    with pytest.raises(ValueError, match="one-dimensional"):
        ind.sma(np.ones((3, 3)), 2)
    with pytest.raises(ValueError, match="differ in length"):
        ind.atr(h, lo[:-1], sample["close"].to_numpy())
    with pytest.raises(DataError, match="missing column 'close'"):
        reg.add_sma(sample.drop("close"))
    with pytest.raises(DataError, match="expected a number"):
        reg.add_sma(sample.with_columns(pl.col("close").cast(pl.String)))
    with pytest.raises(DataError, match="not sorted"):
        reg.add_indicators(sample.reverse())
    with pytest.raises(TypeError, match="IndicatorParams"):
        reg.add_indicators(sample, {"rsi_length": 14})  # type: ignore[arg-type]
    # integers are numbers; empty and one-bar series are fine
    np.testing.assert_array_equal(ind.sma(np.arange(5), 2), [np.nan, 0.5, 1.5, 2.5, 3.5])
    assert ind.rsi(np.array([], dtype=float)).shape == (0,)
    one_bar = reg.add_indicators(sample.head(1)).select(DEFAULT_COLUMNS)
    assert one_bar.null_count().sum_horizontal().item() == len(DEFAULT_COLUMNS)


def test_fast_sma_matches_tradingviews_sum_machine_with_na_bars():
    """The Stochastic's smoothing uses a Neumaier sum with the semantics of the exact machine:
    last `length` non-na values, the standing average repeated on an na bar."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 100, 5000)
    x[rng.random(5000) < 0.1] = np.nan
    x[:3] = np.nan
    exact, fast = np.empty_like(x), np.empty_like(x)
    for length in (1, 3, 14):
        ind._sma_into(x, length, exact)
        ind._fast_sma_into(x, length, fast)
        assert_within(fast, exact, tol=1e-14)
        assert not np.isnan(exact[np.isnan(x)][-100:]).any()  # na bars repeat the average
