"""Eight more TradingView built-in indicators, equal to TradingView's, warm-up included.

Each is defined exactly as the Pine Script built-in of the same name, with TradingView's default
source where the built-in indicator has one: ``ta.cci`` (Commodity Channel Index, TradingView's
"CCI" indicator runs it on ``hlc3``), ``ta.wpr`` (Williams %R), ``ta.mom`` (momentum),
``ta.roc`` (rate of change), ``ta.obv`` (on-balance volume), ``ta.mfi`` (Money Flow Index, on
``hlc3``), ``ta.kc`` (Keltner Channels with ``useTrueRange = true``) and ``ta.supertrend``. They
follow the conventions of :mod:`aiopt_lib.features.indicators` (``float64`` arrays in and out,
``NaN`` where TradingView shows ``na``, no look-ahead, a leading ``NaN`` run allowed in every
input, the same argument checks and errors); the bar-by-bar ports are in
:mod:`aiopt_lib.features.indicator_streams` (``CciStream`` ... ``SupertrendStream``).

The first defined value of each output (0-based bar, counted from the first bar where every input
is defined):

==============================  ================================================================
output                          first defined bar
==============================  ================================================================
cci(length)                     ``length - 1`` (all NaN for ``length == 1``: no deviation)
wpr(length)                     ``length - 1`` (``length == 1``: ``close`` itself, see below)
mom(length), roc(length)        ``length``
obv                             ``1`` (``ta.change`` is na on bar 0)
mfi(length)                     ``length - 1`` (bar 0's flow counts on both sides)
keltner basis                   ``length - 1``
keltner upper, lower            ``length`` (the range average skips bar 0's na true range)
supertrend value                ``0`` (TradingView's ``0.0`` on bar 0), then NaN until bar
                                ``max(atr_length - 1, 1)``, defined from there on
supertrend direction            ``0`` (1 through the warm-up)
==============================  ================================================================

Later NaN, where TradingView divides by zero (na, or ±inf, which Pine's ``na()`` also reports as
na): the CCI where the window's mean deviation is 0 (a flat window), Williams %R where the highest
high equals the lowest low, the ROC where the value ``length`` bars back is 0. (A flat window
after prices that moved: TradingView's rolling-sum mean can be off the price by an ulp, and its
CCI is then ±1 / 0.015 = ±66.67 rather than na; so is this one, computed the same way.)

Arithmetic. The CCI's mean is ``ta.sma`` over TradingView's own rolling ``math.sum``
(:func:`~aiopt_lib.features.indicators._tv_sum_add`) and its mean deviation is Pine's plain
newest-first loop, the MFI's two money-flow sums are that rolling sum too, and every other
expression is Pine's, operation for operation (no fused multiply-adds): CCI, Williams %R, MOM,
ROC, OBV and MFI are identical to TradingView's to the last bit. Keltner Channels and the
Supertrend use the EMA and ATR of :mod:`aiopt_lib.features.indicators` (equal to TradingView's to
~1e-16 relative; the Supertrend's band comparisons are TradingView's, exact). Every output is
within 1e-9 of TradingView's (relative to the series' scale) on every bar.

Where TradingView and TA-Lib differ (the tests check equality with TA-Lib on every bar where the
definitions agree):

* ``cci``: equal to TA-Lib's ``CCI`` on ``(high + low + close) / 3`` up to rounding, except on a
  flat window: TradingView divides by a zero deviation (na), TA-Lib gives 0.
* ``wpr``: equal to TA-Lib's ``WILLR`` up to rounding, except where the highest high equals the
  lowest low (TradingView na, TA-Lib 0) and for ``length == 1``, where ``ta.wpr`` returns
  ``close`` (pynecore reproduces TradingView's shortcut) and TA-Lib the %R of the bar.
* ``mom``: equal to TA-Lib's ``MOM``. ``roc``: equal to TA-Lib's ``ROC`` up to rounding
  (TradingView ``100 * change / previous``, TA-Lib ``(current / previous - 1) * 100``; TA-Lib
  gives 0 where the previous value is 0).
* ``obv``: TradingView's is na on bar 0 and sums from bar 1; TA-Lib's ``OBV`` starts at
  ``volume[0]`` on bar 0, so the two differ by that constant from bar 1 on. Both compare the
  closes exactly.
* ``mfi``: TradingView counts bar 0's flow (price times volume) on both sides, so its first value
  is at bar ``length - 1``; TA-Lib's ``MFI`` starts at bar ``length`` with bars ``1..length``.
  TradingView's direction test ignores a change of the typical price within Pine's absolute
  1e-10 (on ``hlc3`` of quoted prices, equal typical prices can differ in the last bits);
  TA-Lib 0.8 ignores one within 1e-14 of the prices (older versions compare exactly): the two
  differ only on changes between those bounds, which quoted FX prices never make. TradingView
  gives 100 when the outflow sum is 0 (within 1e-10, including the empty case); TA-Lib gives 0
  when both sums add up to less than 1. Elsewhere equal up to rounding.
* ``keltner`` and ``supertrend``: TA-Lib has neither.

Implementation: one ``numba`` kernel per indicator (``cache=True``, releases the GIL), no Python
loop over bars. The CCI takes two passes: the means, then the deviations of a block of bars side
by side, each bar's sum still in Pine's order, so the loop vectorises and the bits stay Pine's.
Williams %R finds the window extremes by doubling (O(n log length) in loops that vectorise, a
chunk of bars at a time in cache; a monotonic deque, O(n) but a mispredicted branch or two per
bar, was 7x slower). The MFI's rolling sums test TradingView's re-baseline without branches (on
money flows, half of them 0, a branch per condition is mispredicted on every other bar). MOM and
Williams %R, a single pass over memory each, check their inputs for NaN and infinity as they read
them instead of in a pass of their own (same errors). On a million one-minute bars, against
TA-Lib 0.8 (single thread, a 2-core AMD EPYC, hlc3 computed by the caller): CCI 20 ~11 ms
(TA-Lib ~21), Williams %R 14 ~1.9 ms (~2.3), MOM 10 ~0.26 ms (~0.25, both bound by memory), ROC 9
~0.5 ms (~1.1), OBV ~1.2 ms (~5.3), MFI 14 ~8 ms (~10.5); Keltner Channels 20 ~7 ms, Supertrend
3/10 ~5 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from aiopt_lib.features.indicators import (
    PINE_EPSILON,
    _all_finite,
    _as_float_array,
    _atr_into,
    _check_length,
    _check_mult,
    _ema_into,
    _inputs,
    _jit,
    _leading_nan_count,
    _outputs,
    _sma_into,
    _tv_sum_add,
)

__all__ = ["cci", "keltner", "mfi", "mom", "obv", "roc", "supertrend", "wpr"]

_NAN = np.nan

# Bars whose mean deviations the CCI kernel accumulates side by side (see `_cci_into`).
_CCI_BLOCK = 256

# Bars per chunk of the Williams %R kernel (at least 4 * length; see `_wpr_into`).
_WPR_CHUNK = 512

# ---------------------------------------------------------------------------------------------
# numba kernels. As in aiopt_lib.features.indicators: finite float64 inputs (the wrappers strip a
# leading NaN run; MOM and Williams %R check the rest themselves and say whether it was finite),
# every element of the preallocated outputs written, error_model "numpy" (a
# division by zero gives inf / nan, as in Pine). `_jit` does not contract a * b + c into a fused
# multiply-add: these kernels compute Pine's expressions operation for operation, and the
# bar-by-bar ports in indicator_streams, plain Python floats, then give the same bits.


@_jit
def _finite_or_nan(value):
    """Pine's na() for a quotient: NaN for NaN and ±inf (a division by zero)."""
    return value if value - value == 0.0 else _NAN


@_jit
def _mean_deviation_sum(window, newest, length, mean):
    """Pine's ta.dev loop over a ring of the last `length` values whose newest is at `newest`:
    sum(|value - mean|), newest first (the order of TradingView's loop, so the same bits). The
    bar-by-bar CciStream calls it; `_cci_into` sums in the same order, many bars at once."""
    total = 0.0
    j = newest
    for _ in range(length):
        total += abs(window[j] - mean)
        j = j - 1 if j > 0 else length - 1
    return total


@_jit
def _cci_into(x, length, out):
    """Pine's ta.cci: (x - sma) / (0.015 * dev), sma = ta.sma (TradingView's rolling sum),
    dev = sum(|x[i - k] - sma|, k = 0 .. length - 1) / length in that order (Pine's loop, newest
    first). NaN where dev is 0 (Pine divides by zero: na or ±inf) and for length 1 (ta.dev is 0).

    The means go to `out` first; the deviations of a block of bars then accumulate side by side,
    one k at a time, each bar's sum still in Pine's order: the same bits as the loop, vectorised."""
    n = x.shape[0]
    _sma_into(x, length, out)
    if length == 1:
        out[:] = _NAN
        return
    acc = np.empty(_CCI_BLOCK)
    for block in range(length - 1, n, _CCI_BLOCK):
        m = min(_CCI_BLOCK, n - block)
        means = out[block : block + m]
        for j in range(m):
            acc[j] = 0.0
        for k in range(length):
            values = x[block - k : block - k + m]
            for j in range(m):
                acc[j] += abs(values[j] - means[j])
        for j in range(m):
            i = block + j
            mean = means[j]
            out[i] = _finite_or_nan((x[i] - mean) / (0.015 * (acc[j] / length)))


@_jit
def _max_of_2(src, dst, step):
    """dst[k] = max(src[k], src[k - step]) for k >= step (a loop that vectorises). Returns whether
    src[step:] is finite (the first pass reads the raw values: checking them there is free)."""
    n = src.shape[0]
    newer = src[step:n]
    older = src[0 : n - step]
    out = dst[step:n]
    bad = False
    for k in range(n - step):
        value = newer[k]
        out[k] = max(value, older[k])
        bad |= (value - value) != 0.0
    return not bad


@_jit
def _min_of_2(src, dst, step):
    """dst[k] = min(src[k], src[k - step]) for k >= step; whether src[step:] is finite."""
    n = src.shape[0]
    newer = src[step:n]
    older = src[0 : n - step]
    out = dst[step:n]
    bad = False
    for k in range(n - step):
        value = newer[k]
        out[k] = min(value, older[k])
        bad |= (value - value) != 0.0
    return not bad


@_jit
def _max_of_4(src, dst, step):
    """dst[k] = max(src[k], src[k - step], src[k - 2 step], src[k - 3 step]) for k >= 3 step;
    whether src[3 step:] is finite."""
    n = src.shape[0]
    a = src[3 * step : n]
    b = src[2 * step : n - step]
    c = src[step : n - 2 * step]
    d = src[0 : n - 3 * step]
    out = dst[3 * step : n]
    bad = False
    for k in range(n - 3 * step):
        value = a[k]
        out[k] = max(max(value, b[k]), max(c[k], d[k]))
        bad |= (value - value) != 0.0
    return not bad


@_jit
def _min_of_4(src, dst, step):
    """dst[k] = min(src[k], src[k - step], src[k - 2 step], src[k - 3 step]) for k >= 3 step;
    whether src[3 step:] is finite."""
    n = src.shape[0]
    a = src[3 * step : n]
    b = src[2 * step : n - step]
    c = src[step : n - 2 * step]
    d = src[0 : n - 3 * step]
    out = dst[3 * step : n]
    bad = False
    for k in range(n - 3 * step):
        value = a[k]
        out[k] = min(min(value, b[k]), min(c[k], d[k]))
        bad |= (value - value) != 0.0
    return not bad


@_jit
def _wpr_values(highs, lows, close, out, length, span):
    """Williams %R of a chunk of bars from the extremes of `span` consecutive values: bar j is
    index j + length - 1 of `highs` / `lows`, and four spans (offsets 0, span, min(2 span,
    length - span), length - span; 2 span <= length <= 4 span) cover its window. Returns whether the chunk's
    closes are finite, and whether the values at the bars' own indices of `highs` / `lows` are
    (the raw highs and lows when span is 1)."""
    m = close.shape[0]
    last = length - 1
    o1 = span
    o2 = min(2 * span, length - span)
    o3 = length - span
    h0 = highs[last : last + m]
    h1 = highs[last - o1 : last - o1 + m]
    h2 = highs[last - o2 : last - o2 + m]
    h3 = highs[last - o3 : last - o3 + m]
    l0 = lows[last : last + m]
    l1 = lows[last - o1 : last - o1 + m]
    l2 = lows[last - o2 : last - o2 + m]
    l3 = lows[last - o3 : last - o3 + m]
    bad_close = False
    bad_range = False
    for j in range(m):
        newest_high = h0[j]
        newest_low = l0[j]
        price = close[j]
        highest = max(max(newest_high, h1[j]), max(h2[j], h3[j]))
        lowest = min(min(newest_low, l1[j]), min(l2[j], l3[j]))
        out[j] = _finite_or_nan(100.0 * (price - highest) / (highest - lowest))
        bad_close |= (price - price) != 0.0
        bad_range |= (newest_high - newest_high) + (newest_low - newest_low) != 0.0
    return not bad_close, not bad_range


@_jit
def _wpr_into(high, low, close, length, out):
    """Pine's ta.wpr: 100 * (close - highest(high)) / (highest(high) - lowest(low)) over the last
    `length` bars, NaN before bar length - 1 and where the range is 0; for length 1, close
    (ta.wpr's shortcut). Returns whether every input value is finite (checked where the loops
    read them: see `_inputs_read_once`).

    The window extremes by doubling, a chunk of bars at a time (the chunk plus the length - 1
    bars before it, in cache): passes of vectorised max / min build the extremes of `span`
    consecutive values (span = the largest power of 2 with 2 span <= length, 1 for length < 4:
    no pass at all), and four overlapping spans make each bar's window. O(n log length) in loops
    that vectorise; every value is exact, so the order does not matter."""
    n = close.shape[0]
    if length == 1:
        for i in range(n):
            out[i] = close[i]
        return _all_finite(high, 0) and _all_finite(low, 0) and _all_finite(close, 0)
    head = min(length - 1, n)
    for i in range(head):
        out[i] = _NAN
    finite = _all_finite(high[:head], 0) and _all_finite(low[:head], 0)
    finite = finite and _all_finite(close[:head], 0)
    span = 1
    while span * 4 <= length:
        span *= 2
    chunk = max(_WPR_CHUNK, 4 * length)
    size = chunk + length - 1
    high_a = np.empty(size)
    high_b = np.empty(size)
    low_a = np.empty(size)
    low_b = np.empty(size)
    for first in range(length - 1, n, chunk):
        m = min(chunk, n - first)
        k_n = m + length - 1
        highs = high[first - length + 1 : first + m]
        lows = low[first - length + 1 : first + m]
        # the first pass reads the raw values of the chunk's bars (and more): it checks them
        step = 1
        in_a = True  # where the next pass writes
        while step * 4 <= span:
            if in_a:
                ok = _max_of_4(highs, high_a[:k_n], step) & _min_of_4(lows, low_a[:k_n], step)
                highs = high_a[:k_n]
                lows = low_a[:k_n]
            else:
                ok = _max_of_4(highs, high_b[:k_n], step) & _min_of_4(lows, low_b[:k_n], step)
                highs = high_b[:k_n]
                lows = low_b[:k_n]
            finite = finite and (ok or step > 1)
            in_a = not in_a
            step *= 4
        if step < span:
            if in_a:
                ok = _max_of_2(highs, high_a[:k_n], step) & _min_of_2(lows, low_a[:k_n], step)
                highs = high_a[:k_n]
                lows = low_a[:k_n]
            else:
                ok = _max_of_2(highs, high_b[:k_n], step) & _min_of_2(lows, low_b[:k_n], step)
                highs = high_b[:k_n]
                lows = low_b[:k_n]
            finite = finite and (ok or step > 1)
        closes_ok, raw_ok = _wpr_values(
            highs, lows, close[first : first + m], out[first : first + m], length, span
        )
        finite = finite and closes_ok and (raw_ok or span > 1)
    return finite


@_jit
def _mom_into(x, length, out):
    """Pine's ta.mom / ta.change: x - x[length], NaN on the first `length` bars. Returns whether
    every value of x is finite (checked as it is read: see `_inputs_read_once`)."""
    n = x.shape[0]
    bad = False
    for i in range(min(length, n)):
        out[i] = _NAN
        bad |= (x[i] - x[i]) != 0.0
    if n <= length:
        return not bad
    current = x[length:]
    previous = x[: n - length]
    tail = out[length:]
    for i in range(n - length):  # over slices: a loop that vectorises
        value = current[i]
        tail[i] = value - previous[i]
        bad |= (value - value) != 0.0
    return not bad


@_jit
def _roc_into(x, length, out):
    """Pine's ta.roc: 100 * (x - x[length]) / x[length], NaN on the first `length` bars and where
    x[length] is 0."""
    n = x.shape[0]
    for i in range(min(length, n)):
        out[i] = _NAN
    if n <= length:
        return
    current = x[length:]
    previous = x[: n - length]
    tail = out[length:]
    for i in range(n - length):
        tail[i] = _finite_or_nan(100.0 * (current[i] - previous[i]) / previous[i])


@_jit
def _obv_into(close, volume, out):
    """Pine's ta.obv: ta.cum(volume * sign(ta.change(close))), na on bar 0 (the change is na
    there, and the sum starts on bar 1). The comparisons are exact, as TradingView's; the sign is
    computed without a branch (a random walk's direction defeats branch prediction)."""
    n = close.shape[0]
    if n == 0:
        return
    out[0] = _NAN
    total = 0.0
    for i in range(1, n):
        change = close[i] - close[i - 1]
        sign = (1.0 if change > 0.0 else 0.0) - (1.0 if change < 0.0 else 0.0)
        total += volume[i] * sign
        out[i] = total


@numba.njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _tv_sum_step(value, length, total, comp, entries, window, slot):
    """`_tv_sum_add` once the window is full (`stored >= length`), the same operations in the
    same order, with the re-baseline test computed without branches: the fused step is computed
    on every bar and replaced on the few bars where the re-baseline fires (on money flows, where
    half the values are 0, a branch per condition is mispredicted on every other bar)."""
    magnitude = abs(comp)
    shifted = value + magnitude
    residue = magnitude - (shifted - value)
    y1 = -entries[slot] - comp
    t = total + y1
    e1 = (t - total) - y1
    y2 = value - e1
    new_total = t + y2
    new_comp = (new_total - t) - y2
    window[slot] = value
    # one `if` on the conditions joined by `&`: numba's code for the same test held in a variable
    # first, or in another order, runs twice as long
    if (
        (comp != 0.0)
        & (value != 0.0)
        & (shifted - shifted == 0.0)
        & (shifted != 0.0)
        & (residue > 0.0)
    ):
        total = value
        j = slot
        for _ in range(1, length):
            j = j - 1 if j > 0 else length - 1
            total = total + window[j]
        entries[slot] = value
        return total, 0.0
    entries[slot] = y2
    return new_total, new_comp


@_jit
def _mfi_value(upper, lower):
    """ta.mfi's result from its two sums (the ratio first, as TradingView rounds it)."""
    upper = 0.0 if -PINE_EPSILON <= upper <= PINE_EPSILON else upper
    lower = 0.0 if -PINE_EPSILON <= lower <= PINE_EPSILON else lower
    if lower == 0.0:
        return 100.0
    return 100.0 - (100.0 / (1.0 + upper / lower))


@_jit
def _mfi_into(x, volume, length, out):
    """Pine's ta.mfi(x, length): upper = math.sum(volume * (change <= eps ? 0 : x)), lower =
    math.sum(volume * (change >= -eps ? 0 : x)) over TradingView's rolling sum, eps = Pine's
    1e-10; on bar 0 the change is na and the flow enters both sums. A sum within 1e-10 of 0 (the
    dust a window of zeros leaves in the rolling sum) is 0; 100 where lower is 0, else
    100 - 100 / (1 + upper / lower)."""
    n = x.shape[0]
    upper_entries = np.empty(length)
    upper_window = np.empty(length)
    lower_entries = np.empty(length)
    lower_window = np.empty(length)
    slot = 0
    upper = 0.0
    upper_comp = 0.0
    lower = 0.0
    lower_comp = 0.0
    warm = min(length, n)  # bars whose step fills the window
    for i in range(warm):
        value = x[i]
        if i == 0:
            up_flow = volume[i] * value
            down_flow = up_flow
        else:
            change = value - x[i - 1]
            up_flow = volume[i] * (0.0 if change <= PINE_EPSILON else value)
            down_flow = volume[i] * (0.0 if change >= -PINE_EPSILON else value)
        upper, upper_comp = _tv_sum_add(
            up_flow, length, upper, upper_comp, upper_entries, upper_window, slot, i
        )
        lower, lower_comp = _tv_sum_add(
            down_flow, length, lower, lower_comp, lower_entries, lower_window, slot, i
        )
        slot = slot + 1 if slot + 1 < length else 0
        out[i] = _mfi_value(upper, lower) if i == length - 1 else _NAN
    for i in range(warm, n):
        value = x[i]
        change = value - x[i - 1]
        flow = volume[i] * value
        no_flow = volume[i] * 0.0
        up_flow = no_flow if change <= PINE_EPSILON else flow
        down_flow = no_flow if change >= -PINE_EPSILON else flow
        upper, upper_comp = _tv_sum_step(
            up_flow, length, upper, upper_comp, upper_entries, upper_window, slot
        )
        lower, lower_comp = _tv_sum_step(
            down_flow, length, lower, lower_comp, lower_entries, lower_window, slot
        )
        slot = slot + 1 if slot + 1 < length else 0
        out[i] = _mfi_value(upper, lower)


@_jit
def _keltner_into(
    source, high, low, close, source_start, bars_start, length, mult, basis, upper, lower
):
    """Pine's ta.kc(source, length, mult, true): basis = ta.ema(source, length) from bar
    `source_start`; range = ta.ema(ta.tr(false), length) over the bars from `bars_start` (ta.tr
    is na on their first bar, which the average skips); upper / lower = basis ± range * mult.
    NaN before either average is defined (NaN propagates through the sums)."""
    n = source.shape[0]
    basis[:source_start] = _NAN
    _ema_into(source[source_start:], length, basis[source_start:])
    span = upper  # the true range and then its average, before the bands overwrite it
    first = min(bars_start + 1, n)
    span[:first] = _NAN
    for i in range(first, n):
        prev_close = close[i - 1]
        span[i] = max(high[i] - low[i], abs(high[i] - prev_close), abs(low[i] - prev_close))
    _ema_into(span[first:], length, span[first:])
    for i in range(n):
        offset = span[i] * mult
        middle = basis[i]
        upper[i] = middle + offset
        lower[i] = middle - offset


@_jit
def _supertrend_into(high, low, close, factor, atr_length, value, direction):
    """Pine's ta.supertrend(factor, atr_length): bands hl2 ± factor * ta.atr(atr_length), the
    lower band ratcheting up and the upper down until the close crosses them; direction 1 (down
    trend, the value is the upper band) or -1 (up trend, the lower band). As TradingView: bar 0
    gives (0.0, 1); later bars before the ATR is defined give (na, 1); the first bar with an ATR
    starts with direction 1 on the upper band. Exact comparisons, as TradingView's."""
    n = close.shape[0]
    if n == 0:
        return
    _atr_into(high, low, close, atr_length, value)  # the ATR, overwritten bar by bar
    value[0] = 0.0
    direction[0] = 1.0
    started = False
    prev_lower = 0.0
    prev_upper = 0.0
    prev_close = 0.0
    prev_value = 0.0
    prev_direction = 1.0
    for i in range(1, n):
        atr = value[i]
        if atr != atr:
            value[i] = _NAN
            direction[i] = prev_direction
            continue
        middle = (high[i] + low[i]) / 2.0
        up = middle + factor * atr
        down = middle - factor * atr
        c = close[i]
        if not started:
            started = True
            trend = 1.0
            current = up
            prev_lower = down
            prev_upper = up
        else:
            if not (down > prev_lower or prev_close < prev_lower):
                down = prev_lower
            if not (up < prev_upper or prev_close > prev_upper):
                up = prev_upper
            if prev_value == prev_upper:
                trend = -1.0 if c > up else 1.0
            else:
                trend = 1.0 if c < down else -1.0
            current = up if trend == 1.0 else down
            prev_lower = down
            prev_upper = up
        prev_close = c
        prev_value = current
        prev_direction = trend
        value[i] = current
        direction[i] = trend


# ---------------------------------------------------------------------------------------------
# numpy level


def _inputs_read_once(named: Sequence[tuple[str, Any]]) -> tuple[int, int, list[np.ndarray]]:
    """:func:`~aiopt_lib.features.indicators._inputs` less its scan of the values after the
    leading NaN run, for the kernels that check them as they read them and return False when one
    is not finite (the caller then runs ``_inputs`` for its error). Where the kernel is itself
    one pass over memory (MOM, Williams %R) that scan would cost as much again."""
    arrays = [_as_float_array(name, values) for name, values in named]
    if any(array.shape[0] != arrays[0].shape[0] for array in arrays):
        _inputs(named)  # raises the error naming the inputs and their lengths
    start = max(int(_leading_nan_count(array)) for array in arrays)
    return arrays[0].shape[0], start, arrays


def cci(source: Any, length: int = 20) -> np.ndarray:
    """TradingView's ``ta.cci(source, length)``: ``(source - sma) / (0.015 * dev)``.

    ``sma = ta.sma(source, length)`` (TradingView's rolling sum, identical to the bit) and ``dev``
    the mean absolute deviation from it over the same ``length`` values. Defined from bar
    ``length - 1``; NaN where ``dev`` is 0 (a flat window: TradingView divides by zero), so all
    NaN for ``length == 1``. TradingView's "CCI" indicator uses ``source = hlc3``. Equal to TA-Lib's
    ``CCI(high, low, close, length)`` on ``hlc3 = (high + low + close) / 3`` up to rounding,
    except on a flat window (TA-Lib: 0).
    """
    length = _check_length("length", length)
    size, start, (values,) = _inputs([("source", source)])
    (out,), (tail,) = _outputs(1, size, start)
    _cci_into(values[start:], length, tail)
    return out


def wpr(high: Any, low: Any, close: Any, length: int = 14) -> np.ndarray:
    """TradingView's ``ta.wpr(length)`` (Williams %R):
    ``100 * (close - highest(high)) / (highest(high) - lowest(low))``, in -100..0.

    Over the last ``length`` bars, defined from bar ``length - 1``; NaN where the highest high
    equals the lowest low (TradingView divides by zero). For ``length == 1`` ``ta.wpr`` returns
    ``close`` itself (a shortcut of TradingView's, reproduced by pynecore). Equal to TA-Lib's
    ``WILLR`` up to rounding, except on a zero range (TA-Lib: 0) and for ``length == 1``.
    Expects ``low <= close <= high``.
    """
    length = _check_length("length", length)
    named = [("high", high), ("low", low), ("close", close)]
    size, start, (h, lo, c) = _inputs_read_once(named)
    (out,), (tail,) = _outputs(1, size, start)
    if not _wpr_into(h[start:], lo[start:], c[start:], length, tail):
        _inputs(named)  # raises the error naming the input and row
    return out


def mom(source: Any, length: int = 10) -> np.ndarray:
    """TradingView's ``ta.mom(source, length)``: ``source - source[length]``, defined from bar
    ``length``. Equal to TA-Lib's ``MOM``."""
    length = _check_length("length", length)
    named = [("source", source)]
    size, start, (values,) = _inputs_read_once(named)
    (out,), (tail,) = _outputs(1, size, start)
    if not _mom_into(values[start:], length, tail):
        _inputs(named)  # raises the error naming the input and row
    return out


def roc(source: Any, length: int = 9) -> np.ndarray:
    """TradingView's ``ta.roc(source, length)``: ``100 * (source - source[length]) /
    source[length]``, defined from bar ``length``; NaN where ``source[length]`` is 0
    (TradingView divides by zero). Equal to TA-Lib's ``ROC`` up to rounding (TA-Lib: 0 there)."""
    length = _check_length("length", length)
    size, start, (values,) = _inputs([("source", source)])
    (out,), (tail,) = _outputs(1, size, start)
    _roc_into(values[start:], length, tail)
    return out


def obv(close: Any, volume: Any) -> np.ndarray:
    """TradingView's ``ta.obv``: the running sum of ``volume * sign(close - close[1])``.

    NaN on bar 0 (no change yet); from bar 1 the sum of the signed volumes of bars ``1..t``.
    TA-Lib's ``OBV`` starts at ``volume[0]`` on bar 0: from bar 1 on it is this plus
    ``volume[0]``. Both compare the closes exactly.
    """
    size, start, (c, v) = _inputs([("close", close), ("volume", volume)])
    (out,), (tail,) = _outputs(1, size, start)
    _obv_into(c[start:], v[start:], tail)
    return out


def mfi(source: Any, volume: Any, length: int = 14) -> np.ndarray:
    """TradingView's ``ta.mfi(source, length)`` (Money Flow Index), in 0..100.

    The flow ``volume * source`` of a bar counts as inflow where ``source`` rose by more than
    Pine's 1e-10 tolerance, as outflow where it fell by more; bar 0 (no change yet) counts on both
    sides. ``100 - 100 / (1 + inflow / outflow)`` over the last ``length`` bars with TradingView's
    rolling sums (identical to the bit); a sum within 1e-10 of 0 is 0, and the result is 100
    where the outflow is 0. Defined from bar ``length - 1``. TradingView's "MFI" indicator uses
    ``source = hlc3``. TA-Lib's ``MFI`` starts at bar ``length`` without bar 0 and has its own
    tolerance (see the module docstring); where the windows hold the same flows the two are
    equal up to rounding.
    """
    length = _check_length("length", length)
    size, start, (values, v) = _inputs([("source", source), ("volume", volume)])
    (out,), (tail,) = _outputs(1, size, start)
    _mfi_into(values[start:], v[start:], length, tail)
    return out


def keltner(
    source: Any, high: Any, low: Any, close: Any, length: int = 20, mult: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TradingView's ``ta.kc(source, length, mult)`` (Keltner Channels, ``useTrueRange = true``)
    → ``(basis, upper, lower)``.

    ``basis = ta.ema(source, length)`` (defined from bar ``length - 1`` of ``source``);
    ``upper/lower = basis ± mult * ta.ema(ta.tr, length)``, where ``ta.tr`` is na on the first bar
    (no previous close) and the average skips it: the bands are defined from bar ``length``.
    ``source`` (``close`` in TradingView's indicator) may start with a different NaN run than the
    bars: the basis follows ``source``, the range the bars.
    """
    length = _check_length("length", length)
    mult = _check_mult("mult", mult)
    size, source_start, (values,) = _inputs([("source", source)])
    bar_size, bars_start, (h, lo, c) = _inputs([("high", high), ("low", low), ("close", close)])
    if bar_size != size:
        raise ValueError(f"inputs differ in length: source has {size}, high has {bar_size}")
    (basis, upper, lower), _ = _outputs(3, size, 0)
    _keltner_into(values, h, lo, c, source_start, bars_start, length, mult, basis, upper, lower)
    return basis, upper, lower


def supertrend(
    high: Any, low: Any, close: Any, factor: float = 3.0, atr_length: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """TradingView's ``ta.supertrend(factor, atr_length)`` → ``(value, direction)``.

    Bands ``hl2 ± factor * atr``, with :func:`aiopt_lib.features.indicators.atr` (TradingView's
    ``ta.atr``); the lower band only rises and the upper only falls while the close stays inside
    them. ``direction`` is Pine's: ``1`` in a down trend (the value is the upper band), ``-1`` in
    an up trend (the lower band); it turns when the close crosses the band in force. As on
    TradingView, bar 0 gives ``(0.0, 1)`` and the bars before the ATR is defined ``(NaN, 1)``;
    the first bar with an ATR (``max(atr_length - 1, 1)``) starts down, on the upper band.
    """
    factor = _check_mult("factor", factor)
    atr_length = _check_length("atr_length", atr_length)
    size, start, (h, lo, c) = _inputs([("high", high), ("low", low), ("close", close)])
    (value, direction), tails = _outputs(2, size, start)
    _supertrend_into(h[start:], lo[start:], c[start:], factor, atr_length, *tails)
    return value, direction
