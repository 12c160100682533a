"""The eight more built-ins (aiopt_lib.features.indicators_more): equal to TradingView (pynecore,
run offline over the same bars) on every bar including warm-up, bit for bit where the arithmetic
is Pine's; equal to TA-Lib wherever the two definitions agree; no look-ahead; the bar-by-bar
machines equal to the vectorised functions; the same argument and input checks as the first
eight indicators."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import polars as pl
import pytest
import talib
from pynecore_reference import assert_within, first_defined, reference_grid

import aiopt_lib.features.indicator_streams as st
import aiopt_lib.features.indicators_more as more
from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.core.errors import DataError
from aiopt_lib.data.sources import load_sample

# outputs that are Pine's arithmetic operation for operation: identical to pynecore's to the bit
EXACT = ("cci", "wpr", "mom", "roc", "obv", "mfi", "supertrend_direction")


@dataclasses.dataclass(frozen=True)
class Params:
    cci_length: int = 20
    wpr_length: int = 14
    mom_length: int = 10
    roc_length: int = 9
    mfi_length: int = 14
    kc_length: int = 20
    kc_mult: float = 2.0
    st_factor: float = 3.0
    st_atr_length: int = 10


PARAM_SETS = {
    "default": Params(),
    "short": Params(2, 2, 2, 3, 2, 2, 1.5, 2.5, 2),
    "long": Params(100, 60, 50, 200, 60, 100, 1, 4, 50),
    # every length 1: ta.cci all na, ta.wpr's shortcut to close, ta.kc and ta.supertrend on the
    # raw true range
    "one": Params(1, 1, 1, 1, 1, 1, 0.5, 1.5, 1),
}

PINE_SCRIPT = '''"""
@pyne
"""
from pynecore.lib import close, hlc3, plot, script, ta


@script.indicator(title="aiopt reference, more", overlay=False)
def main():
    basis, upper, lower = ta.kc(close, {kc_length}, {kc_mult})
    value, direction = ta.supertrend({st_factor}, {st_atr_length})
    plot(ta.cci(hlc3, {cci_length}), "cci")
    plot(ta.wpr({wpr_length}), "wpr")
    plot(ta.mom(close, {mom_length}), "mom")
    plot(ta.roc(close, {roc_length}), "roc")
    plot(ta.obv, "obv")
    plot(ta.mfi(hlc3, {mfi_length}), "mfi")
    plot(basis, "kc_basis")
    plot(upper, "kc_upper")
    plot(lower, "kc_lower")
    plot(value, "supertrend")
    plot(direction, "supertrend_direction")
'''

OUTPUTS = (
    "cci",
    "wpr",
    "mom",
    "roc",
    "obv",
    "mfi",
    "kc_basis",
    "kc_upper",
    "kc_lower",
    "supertrend",
    "supertrend_direction",
)


# ---------------------------------------------------------------------------------------------
# data


def bars_frame(open_, high, low, close, volume, start=dt.datetime(2020, 1, 6, tzinfo=dt.UTC)):
    n = len(close)
    return pl.DataFrame(
        {
            "ts": [start + dt.timedelta(hours=i) for i in range(n)],
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        },
        schema_overrides={"ts": TS_DTYPE},
    )


def edge_bars() -> pl.DataFrame:
    """Quoted bars with real-size volumes that reach the special cases: a flat start and a flat
    stretch (zero range: CCI and %R na; no change of hlc3: no money flow on either side, so the
    MFI's sums are the dust of TradingView's rolling sum), a long rise and a long fall (%R at 0 /
    -100, the Supertrend turning), a stretch of zero volume, and hlc3 changes that differ from 0
    in the last bits only (Pine's tolerant MFI direction test)."""
    rng = np.random.default_rng(11)
    n = 700
    tick = 1e-5
    index = np.arange(n)
    close = 1.1 + np.cumsum(rng.normal(0, 1e-4, n))
    close[:25] = 1.1
    close[100:140] = close[99]
    close[200:450] = close[199] + index[:250] * 1e-4
    close[450:] = close[449] - index[:250] * 1e-4
    close = np.round(close / tick) * tick
    open_ = np.concatenate([[close[0]], close[:-1]])
    flat = (index < 25) | ((index >= 100) & (index < 140))
    up = np.where(flat, 0, rng.integers(0, 4, n)) * tick
    down = np.where(flat, 0, rng.integers(0, 4, n)) * tick
    up[200:450:2] = 0.0  # the rise closes on its high on every other bar: %R 0
    down[451:700:2] = 0.0  # the fall on its low: %R -100
    high = np.round((np.maximum(open_, close) + up) / tick) * tick
    low = np.round((np.minimum(open_, close) - down) / tick) * tick
    volume = np.round(rng.uniform(1e9, 2e10, n))
    volume[300:330] = 0.0
    return bars_frame(open_, high, low, close, volume)


def random_walk(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """EUR/USD-like one-minute bars: a log random walk quoted in 1e-5 ticks, with volumes."""
    rng = np.random.default_rng(seed)
    tick = 1e-5
    close = np.round(1.1 * np.exp(np.cumsum(rng.normal(0, 5e-5, n))) / tick) * tick
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.round((np.maximum(open_, close) + rng.geometric(0.4, n) * tick) / tick) * tick
    low = np.round((np.minimum(open_, close) - (rng.geometric(0.4, n) - 1) * tick) / tick) * tick
    volume = np.round(rng.uniform(1e6, 1e8, n))
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def columns(bars) -> dict[str, np.ndarray]:
    return {name: np.asarray(bars[name], dtype=float) for name in _BAR_COLUMNS}


_BAR_COLUMNS = ("open", "high", "low", "close", "volume")


def hlc3(bars: dict[str, np.ndarray]) -> np.ndarray:
    return (bars["high"] + bars["low"] + bars["close"]) / 3.0


def ours(bars: dict[str, np.ndarray], p: Params) -> dict[str, np.ndarray]:
    """Every output of the eight functions, by the plot titles of PINE_SCRIPT."""
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    typical = hlc3(bars)
    basis, upper, lower = more.keltner(c, h, lo, c, p.kc_length, p.kc_mult)
    value, direction = more.supertrend(h, lo, c, p.st_factor, p.st_atr_length)
    return {
        "cci": more.cci(typical, p.cci_length),
        "wpr": more.wpr(h, lo, c, p.wpr_length),
        "mom": more.mom(c, p.mom_length),
        "roc": more.roc(c, p.roc_length),
        "obv": more.obv(c, v),
        "mfi": more.mfi(typical, v, p.mfi_length),
        "kc_basis": basis,
        "kc_upper": upper,
        "kc_lower": lower,
        "supertrend": value,
        "supertrend_direction": direction,
    }


def streamed(bars: dict[str, np.ndarray], p: Params) -> dict[str, np.ndarray]:
    """The same outputs from the bar-by-bar machines."""
    machines = {
        ("cci",): st.CciStream(p.cci_length),
        ("wpr",): st.WprStream(p.wpr_length),
        ("mom",): st.MomStream(p.mom_length),
        ("roc",): st.RocStream(p.roc_length),
        ("obv",): st.ObvStream(),
        ("mfi",): st.MfiStream(p.mfi_length),
        ("kc_basis", "kc_upper", "kc_lower"): st.KeltnerStream(p.kc_length, p.kc_mult),
        ("supertrend", "supertrend_direction"): st.SupertrendStream(p.st_factor, p.st_atr_length),
    }
    result = {}
    rows = list(zip(*(bars[name].tolist() for name in _BAR_COLUMNS), strict=True))
    for names, machine in machines.items():
        assert isinstance(machine, st.StreamingIndicator)
        values = np.array([machine.update(*row) for row in rows], dtype=float)
        for k, name in enumerate(names):
            result[name] = values[:, k]
    return result


def expected_first(name: str, p: Params) -> int:
    """The first defined bar of each output (module docstring)."""
    return {
        "cci": p.cci_length - 1 if p.cci_length > 1 else -1,  # -1: never
        "wpr": p.wpr_length - 1,
        "mom": p.mom_length,
        "roc": p.roc_length,
        "obv": 1,
        "mfi": p.mfi_length - 1,
        "kc_basis": p.kc_length - 1,
        "kc_upper": p.kc_length,
        "kc_lower": p.kc_length,
        "supertrend": 0,
        "supertrend_direction": 0,
    }[name]


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def tradingview(sample, tmp_path_factory) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """pynecore's outputs for (data set, parameter set), all from one subprocess: the sample with
    every parameter set, the edge-case bars with the default, short and length-1 ones."""
    datasets = {"sample": sample, "edge": edge_bars()}
    runs = [("sample", name) for name in PARAM_SETS] + [
        ("edge", "default"),
        ("edge", "short"),
        ("edge", "one"),
    ]
    return reference_grid(
        datasets, runs, PINE_SCRIPT, PARAM_SETS, tmp_path_factory.mktemp("pynecore_more")
    )


# ---------------------------------------------------------------------------------------------
# equal to TradingView, warm-up included


def check_against_tradingview(values: dict[str, np.ndarray], ref: dict[str, np.ndarray]):
    for name in OUTPUTS:
        assert_within(values[name], ref[name])
    for name in EXACT:
        expected = np.where(np.isfinite(ref[name]), ref[name], np.nan)
        np.testing.assert_array_equal(values[name], expected, err_msg=name)


@pytest.mark.parametrize("params_name", list(PARAM_SETS))
def test_equal_to_tradingview_on_every_bar_including_warm_up(sample, tradingview, params_name):
    p = PARAM_SETS[params_name]
    values = ours(columns(sample), p)
    check_against_tradingview(values, tradingview["sample", params_name])
    for name in OUTPUTS:
        first = expected_first(name, p)
        assert first_defined(values[name]) == (first if first >= 0 else sample.height), name
    value, direction = values["supertrend"], values["supertrend_direction"]
    assert value[0] == 0.0 and direction[0] == 1.0  # TradingView's bar-0 quirk
    warm_up = slice(1, max(p.st_atr_length - 1, 1))
    assert np.isnan(value[warm_up]).all() and (direction[warm_up] == 1.0).all()
    assert not np.isnan(value[max(p.st_atr_length - 1, 1) :]).any()
    assert set(np.unique(direction)) == {-1.0, 1.0}
    if params_name == "one":
        assert np.isnan(values["cci"]).all()  # ta.dev of one value is 0
        np.testing.assert_array_equal(values["wpr"], sample["close"].to_numpy())


@pytest.mark.parametrize("params_name", ["default", "short", "one"])
def test_equal_to_tradingview_in_flat_and_one_way_markets(tradingview, params_name):
    """Zero ranges (CCI and %R na), flows on neither side (the MFI's sums left with the dust of
    TradingView's rolling sum, which only its own machine reproduces), zero volume, the
    Supertrend turning in trends, %R at exactly 0 and -100."""
    bars = columns(edge_bars())
    p = PARAM_SETS[params_name]
    values = ours(bars, p)
    check_against_tradingview(values, tradingview["edge", params_name])
    if params_name == "default":
        assert np.isnan(values["cci"][19:25]).all()  # a flat window: no deviation
        assert np.isnan(values["wpr"][13:25]).all()  # highest == lowest
        assert np.isnan(values["wpr"][113:140]).all()
        wpr = values["wpr"]
        assert (wpr[220:450][::2] == 0.0).all()  # closes on the highest high
        assert np.abs(wpr[471:700:2] + 100.0).max() < 1e-12  # on the lowest low
        # after a stretch that moved, the rolling sum's mean of a flat window is off the price by
        # an ulp: the deviation is that ulp and the CCI +-1 / 0.015, on TradingView too
        np.testing.assert_allclose(np.abs(values["cci"][119:140]), 1 / 0.015, rtol=1e-12)
        mfi = values["mfi"]
        assert mfi[13] == 50.0  # bar 0's flow on both sides, the rest none
        assert (mfi[14:25] == 100.0).all()  # no flow at all: the dust is clamped, 100
        assert np.isfinite(mfi[13:]).all()
        turns = np.flatnonzero(np.diff(values["supertrend_direction"]) != 0)
        assert turns.size >= 2  # the rise turns it up, the fall down


# ---------------------------------------------------------------------------------------------
# equal to TA-Lib where the definitions agree


@pytest.fixture(scope="module")
def walk() -> dict[str, np.ndarray]:
    return random_walk(1_000_000)


def tie_windows(typical: np.ndarray, length: int) -> np.ndarray:
    """Bars whose MFI window holds a change of the typical price that is not 0 but within Pine's
    1e-10 (TradingView: no flow; TA-Lib's tolerance differs between versions)."""
    change = np.diff(typical, prepend=np.nan)
    tie = (np.abs(change) <= 1e-10) & (change != 0.0)
    counts = np.convolve(tie.astype(np.int64), np.ones(length, dtype=np.int64))[: len(tie)]
    return counts > 0


def check_talib(bars: dict[str, np.ndarray]) -> None:
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    typical = hlc3(bars)
    windows = np.lib.stride_tricks.sliding_window_view
    for length in (5, 14, 20):
        # CCI: a window of equal typical prices (but for the last bits: hlc3 rounds) has a
        # deviation of rounding noise, so TradingView's CCI is noise there too (or na where it is
        # exactly 0); TA-Lib gives 0. Equal everywhere else.
        cci = more.cci(typical, length)
        ta_cci = talib.CCI(h, lo, c, length)
        spread = np.full(len(c), np.nan)
        spread[length - 1 :] = np.ptp(windows(typical, length), axis=1)
        flat = spread <= 1e-10
        assert flat.mean() < 0.01
        assert (ta_cci[flat] == 0.0).all()
        if len(c) < 100_000:
            assert_within(cci, ta_cci, where=~flat)
        else:
            # Over a million bars TradingView's rolling sum (and so the mean here) drifts ~1e-13
            # from the exact sum, which the CCI divides by the window's deviation, down to 1e-6
            # in a quiet minute: compare cci * deviation, the distance from the mean in price
            # units (as test_indicators compares Bollinger's variance before the root).
            mean = np.full(len(c), np.nan)
            mean[length - 1 :] = windows(typical, length).mean(axis=1)
            deviation = np.zeros(len(c))
            for k in range(length):
                deviation[length - 1 :] += np.abs(
                    typical[length - 1 - k : len(c) - k] - mean[length - 1 :]
                )
            deviation *= 0.015 / length
            assert_within(cci * deviation, ta_cci * deviation, where=~flat)
        wpr = more.wpr(h, lo, c, length)
        assert not np.isnan(wpr[length - 1 :]).any()
        assert_within(wpr, talib.WILLR(h, lo, c, length))
        np.testing.assert_array_equal(more.mom(c, length), talib.MOM(c, length))
        assert_within(more.roc(c, length), talib.ROC(c, length))
        # MFI: TA-Lib starts a bar later, without bar 0's flow; equal wherever the window's flows
        # are the same
        mfi = more.mfi(typical, v, length)
        same = ~tie_windows(typical, length)
        same[:length] = False
        assert same.mean() > 0.5
        assert_within(mfi, talib.MFI(h, lo, c, v, length), where=same)
    # OBV: TA-Lib starts at volume[0] on bar 0
    obv = more.obv(c, v)
    assert np.isnan(obv[0])
    assert_within(obv[1:], talib.OBV(c, v)[1:] - v[0])


def test_equal_to_talib_on_the_sample(sample):
    check_talib(columns(sample))


def test_equal_to_talib_on_a_million_bars(walk):
    check_talib(walk)


def test_where_tradingview_and_talib_differ():
    """Flat windows: TradingView divides by zero (na), TA-Lib gives 0; the MFI counts bar 0."""
    bars = columns(edge_bars())
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    cci = more.cci(hlc3(bars), 14)
    ta_cci = talib.CCI(h, lo, c, 14)
    assert np.isnan(cci[13]) and ta_cci[13] == 0.0
    assert np.isnan(more.wpr(h, lo, c, 14)[13]) and talib.WILLR(h, lo, c, 14)[13] == 0.0
    assert first_defined(more.mfi(hlc3(bars), v, 14)) == 13
    assert first_defined(talib.MFI(h, lo, c, v, 14)) == 14


# ---------------------------------------------------------------------------------------------
# no look-ahead


def test_no_look_ahead_values_never_change_when_later_bars_change(sample):
    bars = columns(sample)
    for p in (PARAM_SETS["default"], PARAM_SETS["short"]):
        full = ours(bars, p)
        for cut in (1, 2, 9, 10, 14, 20, 21, 777, 4000, sample.height - 1):
            prefix = ours({k: a[:cut] for k, a in bars.items()}, p)
            shocked_bars = {k: a.copy() for k, a in bars.items()}
            for name in ("open", "high", "low", "close"):
                shocked_bars[name][cut:] = shocked_bars[name][cut:] * 1.5 + 0.1
            shocked_bars["volume"][cut:] = shocked_bars["volume"][cut:][::-1]
            shocked = ours(shocked_bars, p)
            for name in OUTPUTS:
                np.testing.assert_array_equal(prefix[name], full[name][:cut], err_msg=name)
                np.testing.assert_array_equal(
                    shocked[name][:cut], full[name][:cut], err_msg=f"{name} {cut}"
                )


# ---------------------------------------------------------------------------------------------
# bar by bar


@pytest.mark.parametrize("params_name", ["default", "short", "one"])
def test_streams_equal_the_vectorised_functions_on_every_bar(sample, params_name):
    p = PARAM_SETS[params_name]
    bars = columns(sample)
    vectorised = ours(bars, p)
    for name, values in streamed(bars, p).items():
        np.testing.assert_array_equal(values, vectorised[name], err_msg=name)


def test_streams_equal_the_vectorised_functions_in_flat_and_one_way_markets():
    bars = columns(edge_bars())
    for p in (PARAM_SETS["default"], PARAM_SETS["long"]):
        vectorised = ours(bars, p)
        for name, values in streamed(bars, p).items():
            np.testing.assert_array_equal(values, vectorised[name], err_msg=name)


# ---------------------------------------------------------------------------------------------
# warm-up, chaining, checks


def test_warm_up_index_for_many_lengths():
    bars = random_walk(400, seed=3)
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    for length in (2, 3, 4, 7, 8, 9, 15, 16, 17, 33, 64, 65, 130):
        p = Params(length, length, length, length, length, length, 1.5, 2.0, length)
        values = ours(bars, p)
        for name in OUTPUTS:
            assert first_defined(values[name]) == expected_first(name, p), (name, length)
        # the doubling passes of Williams %R against the plain window extremes
        windows = np.lib.stride_tricks.sliding_window_view
        highest, lowest = windows(h, length).max(axis=1), windows(lo, length).min(axis=1)
        expected = 100.0 * (c[length - 1 :] - highest) / (highest - lowest)
        np.testing.assert_array_equal(values["wpr"][length - 1 :], expected)
    assert first_defined(more.cci(c, 1)) == len(c)
    np.testing.assert_array_equal(more.wpr(h, lo, c, 1), c)
    one = more.supertrend(h, lo, c, 3.0, 1)
    assert one[0][0] == 0.0 and not np.isnan(one[0][1:]).any()
    assert first_defined(more.obv(c, v)) == 1


def test_leading_nan_run_is_another_indicators_warm_up(sample):
    """A leading NaN run in the inputs (another indicator's warm-up) is skipped: the result is
    that of the series starting at its first defined bar."""
    bars = columns(sample)
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    skip = 37
    padded = {k: np.concatenate([np.full(skip, np.nan), a[skip:]]) for k, a in bars.items()}
    tail = {k: a[skip:] for k, a in bars.items()}
    for p in (PARAM_SETS["default"], PARAM_SETS["one"]):
        full, part = ours(padded, p), ours(tail, p)
        for name in OUTPUTS:
            assert np.isnan(full[name][:skip]).all(), name
            np.testing.assert_array_equal(full[name][skip:], part[name], err_msg=name)
    # Keltner: the basis follows the source's run, the bands also the bars'
    source = np.concatenate([np.full(50, np.nan), c[50:]])
    basis, upper, _ = more.keltner(source, h, lo, c, 20)
    assert first_defined(basis) == 50 + 19 and first_defined(upper) == 50 + 19
    np.testing.assert_array_equal(basis[50:], more.keltner(c[50:], h[50:], lo[50:], c[50:])[0])
    basis, upper, _ = more.keltner(c, padded["high"], padded["low"], padded["close"], 20)
    assert first_defined(basis) == 19 and first_defined(upper) == skip + 20
    # a CCI of an RSI-like oscillator, the MFI of a smoothed price: chains like any indicator
    assert first_defined(more.cci(more.mom(c, 5), 10)) == 5 + 9
    assert first_defined(more.mfi(more.roc(c, 3), v, 4)) == 3 + 3


def test_parameters_are_checked():
    c = np.linspace(1.0, 2.0, 50)
    for call in (
        lambda: more.cci(c, 0),
        lambda: more.wpr(c, c, c, -1),
        lambda: more.mom(c, 0),
        lambda: more.roc(c, 0),
        lambda: more.mfi(c, c, 0),
        lambda: more.keltner(c, c, c, c, 0),
        lambda: more.supertrend(c, c, c, 3.0, 0),
    ):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            call()
    for call in (
        lambda: more.cci(c, 2.5),
        lambda: more.mom(c, True),
        lambda: more.supertrend(c, c, c, 3.0, 10.0),
    ):
        with pytest.raises(TypeError, match="must be an int >= 1"):
            call()
    assert more.mom(c, np.int64(3)).shape == c.shape
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mult"):
            more.keltner(c, c, c, c, 20, bad)
        with pytest.raises(ValueError, match="factor"):
            more.supertrend(c, c, c, bad, 10)
    with pytest.raises(TypeError, match="factor"):
        more.supertrend(c, c, c, "3", 10)


def test_bad_inputs_give_clear_errors(sample):
    bars = columns(sample)
    h, lo, c, v = bars["high"], bars["low"], bars["close"], bars["volume"]
    broken = c.copy()
    broken[100] = np.nan
    for call in (
        lambda: more.cci(broken),
        lambda: more.mom(broken),
        lambda: more.roc(broken),
        lambda: more.obv(broken, v),
        lambda: more.mfi(broken, v),
        lambda: more.wpr(h, lo, broken),
        lambda: more.keltner(c, h, lo, broken),
        lambda: more.supertrend(h, lo, broken),
    ):
        with pytest.raises(DataError, match=r"row 100, field '(close|source)': not finite"):
            call()
    broken[100] = np.inf
    with pytest.raises(DataError, match="row 100"):
        more.mom(broken, 5)
    with pytest.raises(DataError, match="row 7, field 'low'"):
        more.wpr(h, np.where(np.arange(len(lo)) == 7, np.nan, lo), c)
    with pytest.raises(DataError, match="row 7, field 'high'"):
        more.wpr(np.where(np.arange(len(h)) == 7, -np.inf, h), lo, c, 1)
    with pytest.raises(DataError, match="field 'volume'"):
        more.obv(c, np.where(np.arange(len(v)) == 9, np.nan, v))
    with pytest.raises(TypeError, match="real numeric"):
        more.mom(np.array(["1.1", "1.2"]), 1)
    with pytest.raises(TypeError, match="real numeric"):
        more.cci(np.array([True, False]), 1)
    with pytest.raises(ValueError, match="one-dimensional"):
        more.roc(np.ones((3, 3)), 2)
    with pytest.raises(ValueError, match="differ in length"):
        more.wpr(h, lo[:-1], c)
    with pytest.raises(ValueError, match="differ in length"):
        more.obv(c, v[:-1])
    with pytest.raises(ValueError, match="differ in length"):
        more.keltner(c[:-1], h, lo, c)
    # integers are numbers; empty and one-bar series are fine
    np.testing.assert_array_equal(more.mom(np.arange(5), 2), [np.nan, np.nan, 2.0, 2.0, 2.0])
    empty = np.array([], dtype=float)
    for values in (
        more.cci(empty),
        more.wpr(empty, empty, empty),
        more.mom(empty),
        more.roc(empty),
        more.obv(empty, empty),
        more.mfi(empty, empty),
        *more.keltner(empty, empty, empty, empty),
        *more.supertrend(empty, empty, empty),
    ):
        assert values.shape == (0,)
    one_bar = ours({k: a[:1] for k, a in bars.items()}, Params())
    assert all(np.isnan(one_bar[name]).all() for name in OUTPUTS if "supertrend" not in name)
    assert one_bar["supertrend"][0] == 0.0 and one_bar["supertrend_direction"][0] == 1.0
