"""Technical indicators equal to TradingView's built-ins, warm-up included.

Eight indicators, each defined exactly as TradingView's Pine Script built-in of the same name
(``ta.rsi``, ``ta.macd``, ``ta.bb`` / ``ta.bbw``, ``ta.sma``, ``ta.ema``, ``ta.stoch`` smoothed as
in TradingView's "Stochastic" indicator, ``ta.atr``, ``ta.dmi``), so that a strategy researched
here shows the same values on a TradingView chart of the same bars (TradingView computes from the
first bar it has loaded: start from the same bar to see the same warm-up).

Two levels:

* numpy: ``float64`` arrays in, ``float64`` arrays out, ``NaN`` where TradingView shows ``na``
  (:func:`sma`, :func:`ema`, :func:`rma`, :func:`rsi`, :func:`macd`, :func:`bollinger`,
  :func:`stoch`, :func:`true_range`, :func:`atr`, :func:`dmi`).
* polars: ``add_*`` functions that add named ``Float64`` columns to a bars frame (``null`` where
  TradingView shows ``na``: polars orders ``NaN`` above every number, so a ``NaN`` warm-up would
  pass a test like ``rsi_14 > 70``), and :func:`add_indicators`, which adds all of them at once
  from an :class:`IndicatorParams`. Column names come from one function, :func:`column_name`.

Conventions (TradingView's, which these functions follow):

* **No look-ahead.** The value at bar ``t`` uses bars ``0..t`` only; removing or changing later
  bars never changes it. With bars stamped at their open time, a value of bar ``t`` is known at the
  bar's close, ``ts + timeframe``.
* **Warm-up.** ``ta.sma`` is ``na`` until ``length`` values exist. ``ta.ema`` and ``ta.rma``
  (Wilder's average) are seeded with the ``ta.sma`` of their first ``length`` values and are ``na``
  before it; they are never started from the first bar (a pandas ``ewm`` started on the first
  change gives an RSI up to 28 points off on the first bars of the EUR/USD sample). An average of a
  series that itself starts with ``na`` (the MACD signal line over the MACD line, the ADX over the
  DX) skips those ``na``: it is seeded with the first ``length`` defined values, as TradingView's
  averages skip ``na`` bars. The first defined value of each output (0-based bar):

  ============================  ==========================================================
  output                        first defined bar
  ============================  ==========================================================
  sma, ema, rma(length)         ``length - 1``
  rsi(length)                   ``length`` (the first change is at bar 1)
  macd line                     ``max(fast, slow) - 1``
  macd signal, histogram        ``max(fast, slow) + signal - 2``
  bollinger (all five)          ``length - 1``
  stoch k                       ``k_length + k_smoothing - 2``
  stoch d                       ``k_length + k_smoothing + d_length - 3``
  true_range                    ``0`` (first bar: ``high - low``)
  atr(length)                   ``length - 1`` (seeded with the first bar's ``high - low``)
  dmi +DI, -DI                  ``di_length`` (``ta.tr`` is na on bar 0)
  dmi ADX                       ``di_length + adx_smoothing - 1``
  ============================  ==========================================================

  (Later where the data is flat: a window whose true range is 0 leaves the DMI ``na``.)
* **Inputs.** Real numeric 1-D arrays (or polars columns), converted to ``float64``. A leading run
  of ``NaN`` (``null`` in polars) is allowed: it is the warm-up of another indicator, and the
  result is that of the series starting at its first defined bar, the way TradingView's averages
  skip ``na``. Any ``NaN`` or infinity after that raises :class:`~aiopt_lib.core.errors.DataError`
  naming the input and the row. Lengths are ``int >= 1`` (``ValueError`` below 1, ``TypeError``
  for a non-int); a length longer than the series gives an all-``NaN`` result.

Arithmetic. ``ta.sma`` and ``ta.bb`` run TradingView's own rolling ``math.sum`` (a compensated sum
with a fused evict-and-add step and occasional re-baselines, as pynecore measured it bit for bit
against TradingView), so ``sma`` and all five Bollinger outputs are identical to TradingView's to
the last bit. That matters for Bollinger: TradingView's variance, ``mean(x²) - mean²``, cancels
so much on a quiet window that any other rounding moves ``%b`` by 1e-8 or more. (Over a million
bars that sum drifts ~1e-12 from the exact sum, as TradingView's would.) The Stochastic's
smoothing uses a Neumaier sum with the same semantics (equal to ~1e-14), and the recursive
averages are written ``prev * (1 - alpha) + x * alpha`` with fused multiply-adds, equal to
TradingView's forms up to rounding (~1e-16 relative, which the recursions do not grow). Every
output is within 1e-9 of TradingView's (relative to the series' scale) on every bar.

Where TradingView and TA-Lib differ (TA-Lib is the usual Python reference; the tests check
equality with it on every bar where the two definitions agree):

* ``macd``: TA-Lib seeds the fast EMA on the slow EMA's first bar (an SMA over bars
  ``slow-fast .. slow-1``); TradingView seeds each EMA on its own first ``length`` bars. The
  difference decays by ``(fast-1)/(fast+1)`` per bar. TA-Lib also swaps ``fast`` and ``slow`` when
  ``slow < fast``; TradingView does not.
* ``atr``: TA-Lib drops the first bar's true range and seeds with bars ``1..length``, one bar
  later than TradingView (which uses ``high - low`` on bar 0). The difference decays by
  ``(length-1)/length`` per bar.
* ``dmi``: TA-Lib seeds Wilder's sums with ``length - 1`` values; TradingView averages ``length``
  values (same decay). TradingView compares the directional movements with Pine's tolerance
  (differences of at most ``1e-10`` are ties, giving no movement on that bar); TA-Lib compares
  exactly, so on quoted prices, where ``up`` and ``down`` are the same number of pips but differ
  in the last float bits, it picks a direction that TradingView does not. TA-Lib gives 0 where
  the true range average is 0; TradingView gives ``na``.
* ``rsi``: equal, except that TradingView gives 100 when the average loss is 0 (within Pine's
  ``1e-10`` tolerance) and 0 when the average gain is; TA-Lib gives ``100 * gain / (gain + loss)``
  and 0 when both are 0.
* ``stoch``: equal (TA-Lib ``STOCH`` with SMA smoothing), except where the highest high equals the
  lowest low: TradingView divides by zero, an ``na`` that its ``ta.sma`` answers with the standing
  average (``k`` repeats its last value); TA-Lib gives 0.
* ``bollinger``: equal (both use the population standard deviation, both as ``mean(x²) - mean²``).
  ``width`` is ``ta.bbw``: ``100 * (upper - lower) / basis``, a percentage, as in the current Pine
  reference manual (Pine v5's manual and old scripts had the bare ratio). ``pct_b`` is
  TradingView's "Bollinger Bands %B", ``(source - lower) / (upper - lower)``, ``na`` where the
  bands coincide (TradingView: ±inf, which Pine's ``na()`` reports as na). TA-Lib has neither.
* ``sma``, ``ema``, ``rma`` (TA-Lib's RSI/ATR smoothing): equal.

Implementation: one ``numba`` kernel per indicator (``cache=True``, single thread), one pass, no
Python loop over bars; :func:`add_indicators` runs all of them in one compiled call, and its
columns share the kernels' output memory (nulls are a validity bitmap, not a copy). All eight on a
million bars: ~32 ms from numpy, ~36 ms into a polars frame, TA-Lib ~43 ms, on the 2-core CI
machine (``benchmarks/bench_indicators.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from aiopt_lib.core.errors import DataError

__all__ = [
    "PINE_EPSILON",
    "atr",
    "bollinger",
    "dmi",
    "ema",
    "macd",
    "pine_compare",
    "rma",
    "rsi",
    "sma",
    "stoch",
    "true_range",
]

# Pine compares floats with an absolute tolerance of 1e-10: `a == b` when |a - b| <= 1e-10. It
# decides RSI's saturation (`down == 0 ? 100 : ...`) and which directional movement ta.dmi counts.
PINE_EPSILON = 1e-10


def pine_compare(op: str, a: Any, b: Any) -> Any:
    """``a op b`` (``<``, ``<=``, ``>``, ``>=``, ``==``) as TradingView compares floats: within
    :data:`PINE_EPSILON` (1e-10, absolute) is equal, so ``a < b`` is ``a - b < -1e-10`` (pynecore
    measured it); ``body <= 0.1 * range`` holds for a one-tick body in a ten-tick range, which IEEE
    arithmetic decides by a rounding. For floats, numpy arrays and polars expressions alike (the
    candlestick patterns, the rule language and its bar-by-bar port use it); na compares False."""
    difference = a - b
    if op == "<":
        return difference < -PINE_EPSILON
    if op == ">":
        return difference > PINE_EPSILON
    if op == "<=":
        return (a <= b) | (difference <= PINE_EPSILON)
    if op == ">=":
        return (a >= b) | (difference >= -PINE_EPSILON)
    if op == "==":
        return (a == b) | (abs(difference) <= PINE_EPSILON)
    raise ValueError(f"not a Pine comparison: {op!r}")


_NAN = np.nan

# ---------------------------------------------------------------------------------------------
# numba kernels. Every kernel takes finite float64 arrays (the wrappers strip a leading NaN run
# and check the rest) and writes every element of preallocated outputs of the same length.
# error_model "numpy": a division by zero gives inf/nan instead of raising, as in Pine.
# The compensated sums need exact IEEE rounding (`_jit`, no fastmath); the recursive averages
# allow fused multiply-add (`_jit_fma`), which shortens their bar-to-bar dependency chain.
# Averages are written as prev * (1 - alpha) + x * alpha, equal to TradingView's
# (prev * (length - 1) + x) / length and prev + alpha * (x - prev) up to rounding (~1e-16
# relative; the recursions contract, so rounding differences do not grow).

_jit = numba.njit(cache=True, error_model="numpy", nogil=True)
_jit_fma = numba.njit(cache=True, error_model="numpy", nogil=True, fastmath={"contract"})


@numba.njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _tv_sum_add(value, length, total, comp, entries, window, slot, stored):
    """Add one value to TradingView's rolling `math.sum` and return the new (total, comp).

    The machine as pynecore measured it bit for bit against TradingView: a compensated sum that
    evicts the entry stored `length` values ago and adds the new one in one fused two-round
    step, storing the realized entry for its own eviction; a plain compensated add while the
    window fills; and, on the bars where the fixed-order Fast2Sum residue of value + |comp| is
    positive, a re-baseline to the plain newest-first sum of the raw window. Its total (not
    total + comp) is TradingView's sum, to the last bit: Bollinger's variance,
    sum(x^2)/length - mean^2, cancels so much that any other rounding shows in %b.
    `slot` is `stored % length`; the caller advances both."""
    fires = False
    if comp != 0.0 and value != 0.0:
        magnitude = abs(comp)
        shifted = value + magnitude
        if shifted != 0.0 and shifted - shifted == 0.0:
            fires = magnitude - (shifted - value) > 0.0
    if fires:
        total = value
        j = slot
        for _ in range(1, min(stored + 1, length)):
            j = j - 1 if j > 0 else length - 1
            total = total + window[j]
        comp = 0.0
        entries[slot] = value
    elif stored < length:
        y = value - comp
        t = total + y
        comp = (t - total) - y
        total = t
        entries[slot] = y
    else:
        y1 = -entries[slot] - comp
        t = total + y1
        e1 = (t - total) - y1
        y2 = value - e1
        new_total = t + y2
        comp = (new_total - t) - y2
        total = new_total
        entries[slot] = y2
    window[slot] = value
    return total, comp


@_jit
def _sma_into(x, length, out):
    """Pine's ta.sma: math.sum(x, length) / length over the last `length` non-NaN values
    (TradingView's machine, see `_tv_sum_add`). NaN before `length` values; on a NaN bar the
    standing average is repeated, as TradingView's ta.sma does once its window is full."""
    n = x.shape[0]
    entries = np.empty(length)
    window = np.empty(length)
    stored = 0
    slot = 0
    total = 0.0
    comp = 0.0
    for i in range(n):
        value = x[i]
        if value == value:
            total, comp = _tv_sum_add(value, length, total, comp, entries, window, slot, stored)
            stored += 1
            slot = slot + 1 if slot + 1 < length else 0
        out[i] = total / length if stored >= length else _NAN


@_jit
def _neumaier_add(total, comp, value):
    """Add `value` to a Neumaier-compensated sum: the new `(total, comp)`."""
    t = total + value
    if abs(total) >= abs(value):
        comp += (total - t) + value
    else:
        comp += (value - t) + total
    return t, comp


@_jit
def _fast_sma_into(x, length, out):
    """ta.sma with the semantics of `_sma_into` (the last `length` non-NaN values; the standing
    average repeated on a NaN bar) over a Neumaier-compensated rolling sum: equal to TradingView's
    to ~1e-15 relative, not to the bit, and without the machine's re-baselines, which on
    full-mantissa values (the Stochastic's raw %K) cost O(length) on many bars."""
    n = x.shape[0]
    ring = np.empty(length)
    stored = 0
    head = 0
    total = 0.0
    comp = 0.0
    for i in range(n):
        value = x[i]
        if value == value:
            total, comp = _neumaier_add(total, comp, value)
            if stored == length:
                # the value stored `length` values ago leaves the window
                total, comp = _neumaier_add(total, comp, -ring[head])
            else:
                stored += 1
            ring[head] = value
            head = head + 1 if head + 1 < length else 0
        out[i] = (total + comp) / length if stored == length else _NAN


@_jit_fma
def _smoothed_into(x, length, alpha, out):
    """An exponential average seeded like Pine's ta.ema / ta.rma: the mean of the first `length`
    values at bar length - 1 (NaN before), then prev * (1 - alpha) + x * alpha. `out` may be `x`."""
    n = x.shape[0]
    keep = 1.0 - alpha
    total = 0.0
    prev = _NAN
    for i in range(min(length, n)):
        total += x[i]
        out[i] = _NAN
    if n < length:
        return
    prev = total / length
    out[length - 1] = prev
    for i in range(length, n):
        prev = prev * keep + x[i] * alpha
        out[i] = prev


@_jit
def _ema_into(x, length, out):
    """Pine's ta.ema: alpha = 2 / (length + 1), seeded with the SMA of the first `length` values."""
    _smoothed_into(x, length, 2.0 / (length + 1), out)


@_jit
def _rma_into(x, length, out):
    """Pine's ta.rma (Wilder): alpha = 1 / length, seeded with the SMA of the first `length` values."""
    _smoothed_into(x, length, 1.0 / length, out)


@_jit
def _rsi_value(up, down):
    # TradingView: `down == 0 ? 100 : up == 0 ? 0 : 100 - 100 / (1 + up / down)` with Pine's
    # tolerant `==`; the loss side is tested first, so a series with no change at all gives 100.
    # 100 * up / (up + down) is the same value with one division.
    if down <= PINE_EPSILON:
        return 100.0
    if up <= PINE_EPSILON:
        return 0.0
    return 100.0 * up / (up + down)


@_jit_fma
def _rsi_into(x, length, out):
    """Pine's ta.rsi: RMA of the gains and losses of x - x[1] (from bar 1); first value at bar
    `length`."""
    n = x.shape[0]
    if n == 0:
        return
    out[0] = _NAN
    alpha = 1.0 / length
    keep = 1.0 - alpha
    up = 0.0
    down = 0.0
    for i in range(1, min(length + 1, n)):
        change = x[i] - x[i - 1]
        up += change if change > 0.0 else 0.0
        down += -change if change < 0.0 else 0.0
        out[i] = _NAN
    if n <= length:
        return
    up /= length
    down /= length
    out[length] = _rsi_value(up, down)
    for i in range(length + 1, n):
        change = x[i] - x[i - 1]
        up = up * keep + (change if change > 0.0 else 0.0) * alpha
        down = down * keep + (-change if change < 0.0 else 0.0) * alpha
        out[i] = _rsi_value(up, down)


@_jit_fma
def _macd_into(x, fast, slow, signal, line, signal_line, hist):
    """Pine's ta.macd in one pass: line = ema(fast) - ema(slow) from bar max(fast, slow) - 1;
    signal = ema(line, signal) seeded with the first `signal` line values; hist = line - signal."""
    n = x.shape[0]
    fast_alpha = 2.0 / (fast + 1)
    slow_alpha = 2.0 / (slow + 1)
    signal_alpha = 2.0 / (signal + 1)
    first = max(fast, slow) - 1
    fast_avg = 0.0
    slow_avg = 0.0
    signal_avg = 0.0
    for i in range(n):
        value = x[i]
        if i < fast:
            fast_avg += value
            if i == fast - 1:
                fast_avg /= fast
        else:
            fast_avg = fast_avg * (1.0 - fast_alpha) + value * fast_alpha
        if i < slow:
            slow_avg += value
            if i == slow - 1:
                slow_avg /= slow
        else:
            slow_avg = slow_avg * (1.0 - slow_alpha) + value * slow_alpha
        if i < first:
            line[i] = _NAN
            signal_line[i] = _NAN
            hist[i] = _NAN
            continue
        macd = fast_avg - slow_avg
        line[i] = macd
        k = i - first  # bars since the line's first value
        if k < signal:
            signal_avg += macd
            if k < signal - 1:
                signal_line[i] = _NAN
                hist[i] = _NAN
                continue
            signal_avg /= signal
        else:
            signal_avg = signal_avg * (1.0 - signal_alpha) + macd * signal_alpha
        signal_line[i] = signal_avg
        hist[i] = macd - signal_avg


@_jit
def _bollinger_into(x, length, mult, basis, upper, lower, pct_b, width):
    """Pine's ta.bb / ta.bbw as TradingView computes them: p = math.sum(x), q = math.sum(x * x)
    (`_tv_sum_add`), basis = p / length, variance = max(0, q / length - basis^2),
    dev = sqrt(variance) * mult. pct_b = (x - lower) / (upper - lower) and width =
    (upper - lower) / basis * 100 are NaN where their divisor is 0 (TradingView: inf or na)."""
    n = x.shape[0]
    entries = np.empty(length)
    window = np.empty(length)
    square_entries = np.empty(length)
    square_window = np.empty(length)
    slot = 0
    p = 0.0
    p_comp = 0.0
    q = 0.0
    q_comp = 0.0
    for i in range(n):
        value = x[i]
        p, p_comp = _tv_sum_add(value, length, p, p_comp, entries, window, slot, i)
        q, q_comp = _tv_sum_add(
            value * value, length, q, q_comp, square_entries, square_window, slot, i
        )
        slot = slot + 1 if slot + 1 < length else 0
        if i < length - 1:
            basis[i] = _NAN
            upper[i] = _NAN
            lower[i] = _NAN
            pct_b[i] = _NAN
            width[i] = _NAN
            continue
        mean = p / length
        variance = q / length - mean * mean
        dev = math.sqrt(variance) * mult if variance > 0.0 else 0.0
        up = mean + dev
        lo = mean - dev
        basis[i] = mean
        upper[i] = up
        lower[i] = lo
        band = up - lo
        pct_b[i] = (value - lo) / band if band != 0.0 else _NAN
        width[i] = band / mean * 100.0 if mean != 0.0 else _NAN


@_jit
def _stoch_into(high, low, close, k_length, k_smoothing, d_length, k, d):
    """TradingView's Stochastic: raw = 100 * (close - lowest low) / (highest high - lowest low)
    over `k_length` bars (na where the range is 0), k = ta.sma(raw, k_smoothing),
    d = ta.sma(k, d_length); on an na raw bar ta.sma repeats its standing value.

    The window extremes are van Herk / Gil-Werman's, streamed: bars are cut into blocks of
    `k_length`; a window is the suffix of the previous block plus the prefix of the current one,
    so each bar costs a few comparisons and every value uses only bars up to its own."""
    n = close.shape[0]
    w = k_length
    raw = d  # d holds the raw %K until it is overwritten by %D
    suffix_high = np.empty(w)
    suffix_low = np.empty(w)
    for block in range(0, n, w):
        block_end = min(block + w, n)
        prefix_high = -np.inf
        prefix_low = np.inf
        for i in range(block, block_end):
            prefix_high = max(prefix_high, high[i])
            prefix_low = min(prefix_low, low[i])
            start = i - w + 1
            if start < 0:
                raw[i] = _NAN
                continue
            if start == block:
                highest = prefix_high
                lowest = prefix_low
            else:
                highest = max(suffix_high[start - block + w], prefix_high)
                lowest = min(suffix_low[start - block + w], prefix_low)
            span = highest - lowest
            raw[i] = 100.0 * (close[i] - lowest) / span if span != 0.0 else _NAN
        running_high = -np.inf
        running_low = np.inf
        for i in range(block_end - 1, block - 1, -1):
            running_high = max(running_high, high[i])
            running_low = min(running_low, low[i])
            suffix_high[i - block] = running_high
            suffix_low[i - block] = running_low
    _fast_sma_into(raw, k_smoothing, k)
    _fast_sma_into(k, d_length, d)


@_jit
def _true_range_into(high, low, close, out):
    """Pine's ta.tr(true): high - low on the first bar, then
    max(high - low, |high - close[1]|, |low - close[1]|)."""
    n = close.shape[0]
    if n == 0:
        return
    out[0] = high[0] - low[0]
    for i in range(1, n):
        prev_close = close[i - 1]
        out[i] = max(high[i] - low[i], abs(high[i] - prev_close), abs(low[i] - prev_close))


@_jit
def _atr_into(high, low, close, length, out):
    """Pine's ta.atr: ta.rma(ta.tr(true), length)."""
    _true_range_into(high, low, close, out)
    _rma_into(out, length, out)


@_jit_fma
def _dmi_into(high, low, close, di_length, adx_smoothing, tie_tolerance, plus_di, minus_di, adx):
    """Pine's ta.dmi. From bar 1: up = high - high[1], down = low[1] - low; +DM = up where
    up - down > tol and up > tol, else 0 (-DM likewise); the true range is ta.tr (na on bar 0).
    RMA(di_length) of the three, seeded over bars 1..di_length; +DI = 100 * rma(+DM) / rma(TR);
    DX = |+DI - -DI| / (+DI + -DI, or 1 when 0); ADX = 100 * rma(DX, adx_smoothing). Where
    rma(TR) is 0 all three are na and the ADX average skips the bar."""
    n = close.shape[0]
    alpha = 1.0 / di_length
    keep = 1.0 - alpha
    adx_alpha = 1.0 / adx_smoothing
    adx_keep = 1.0 - adx_alpha
    tr_avg = 0.0
    plus_avg = 0.0
    minus_avg = 0.0
    dx_count = 0
    adx_avg = 0.0
    for i in range(min(n, 1)):
        plus_di[i] = _NAN
        minus_di[i] = _NAN
        adx[i] = _NAN
    for i in range(1, n):
        up = high[i] - high[i - 1]
        down = low[i - 1] - low[i]
        plus_dm = up if (up - down > tie_tolerance and up > tie_tolerance) else 0.0
        minus_dm = down if (down - up > tie_tolerance and down > tie_tolerance) else 0.0
        prev_close = close[i - 1]
        tr = max(high[i] - low[i], abs(high[i] - prev_close), abs(low[i] - prev_close))
        if i <= di_length:
            tr_avg += tr
            plus_avg += plus_dm
            minus_avg += minus_dm
            if i < di_length:
                plus_di[i] = _NAN
                minus_di[i] = _NAN
                adx[i] = _NAN
                continue
            tr_avg /= di_length
            plus_avg /= di_length
            minus_avg /= di_length
        else:
            tr_avg = tr_avg * keep + tr * alpha
            plus_avg = plus_avg * keep + plus_dm * alpha
            minus_avg = minus_avg * keep + minus_dm * alpha
        if tr_avg == 0.0:
            plus_di[i] = _NAN
            minus_di[i] = _NAN
            adx[i] = _NAN
            continue
        scale = 100.0 / tr_avg
        plus = plus_avg * scale
        minus = minus_avg * scale
        plus_di[i] = plus
        minus_di[i] = minus
        total = plus + minus
        dx = abs(plus - minus) / (total if total != 0.0 else 1.0)
        if dx_count < adx_smoothing:
            adx_avg += dx
            dx_count += 1
            if dx_count < adx_smoothing:
                adx[i] = _NAN
                continue
            adx_avg /= adx_smoothing
        else:
            adx_avg = adx_avg * adx_keep + dx * adx_alpha
        adx[i] = 100.0 * adx_avg


@_jit
def _leading_nan_count(x):
    """Length of the leading run of NaN."""
    n = x.shape[0]
    for i in range(n):
        if x[i] == x[i]:
            return i
    return n


@_jit
def _all_finite(x, start):
    """True when x[start:] has no NaN and no infinity (a branch-free scan that vectorises)."""
    tail = x[start:]  # a loop from 0 over the slice vectorises; one from `start` does not
    bad = False
    for i in range(tail.shape[0]):
        bad |= (tail[i] - tail[i]) != 0.0  # NaN for NaN and +-inf
    return not bad


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_length(name: str, value: Any) -> int:
    """An indicator length: an int >= 1 (bools are not lengths)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_mult(name: str, value: Any) -> float:
    """A band multiplier: a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number > 0, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def _as_float_array(name: str, values: Any) -> np.ndarray:
    """A read-only contiguous float64 view (or copy) of a real numeric 1-D array.

    Read-only so that every kernel sees one array type whatever the caller passes (numba
    compiles one specialisation per type)."""
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    view = array.view()
    view.flags.writeable = False
    return view


def _inputs(named: Sequence[tuple[str, Any]]) -> tuple[int, int, list[np.ndarray]]:
    """Check the input series of one indicator: equal lengths, a leading NaN run at most, finite
    after it. Returns (length, first bar where every input is defined, the arrays)."""
    arrays = [_as_float_array(name, values) for name, values in named]
    size = arrays[0].shape[0]
    for (name, _), array in zip(named, arrays, strict=True):
        if array.shape[0] != size:
            raise ValueError(
                f"inputs differ in length: {named[0][0]} has {size}, {name} has {array.shape[0]}"
            )
    start = max(int(_leading_nan_count(array)) for array in arrays)
    for (name, _), array in zip(named, arrays, strict=True):
        if not _all_finite(array, start):
            bad = start + int(np.flatnonzero(~np.isfinite(array[start:]))[0])
            raise DataError(
                "not finite after the first defined value (only a leading run of NaN, the "
                "warm-up of another indicator, is allowed)",
                field=name,
                row=bad,
                value=float(array[bad]),
                row_kind="row",
            )
    return size, start, arrays


# ---------------------------------------------------------------------------------------------
# numpy level


def _outputs(count: int, size: int, start: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` fresh output arrays, NaN before ``start``, and their views from ``start`` on
    (what the kernels fill)."""
    arrays = [np.empty(size, dtype=np.float64) for _ in range(count)]
    for array in arrays:
        array[:start] = np.nan
    return arrays, [array[start:] for array in arrays]


def sma(x: Any, length: int) -> np.ndarray:
    """TradingView's ``ta.sma(x, length)``: the mean of the last ``length`` values.

    NaN before bar ``length - 1`` (counted from the first defined value of ``x``). Computed with
    TradingView's own rolling ``math.sum`` (see the module docstring): identical to TradingView's
    to the bit, and equal to TA-Lib's ``SMA`` within rounding.
    """
    length = _check_length("length", length)
    size, start, (values,) = _inputs([("x", x)])
    (out,), (tail,) = _outputs(1, size, start)
    _sma_into(values[start:], length, tail)
    return out


def ema(x: Any, length: int) -> np.ndarray:
    """TradingView's ``ta.ema(x, length)``: exponential average with ``alpha = 2 / (length + 1)``.

    Seeded with the SMA of the first ``length`` values (NaN before bar ``length - 1``), then
    ``prev + alpha * (x - prev)``. Equal to TA-Lib's ``EMA`` (whose default seeding is the same).
    A leading NaN run in ``x`` (e.g. another indicator's warm-up) is skipped: the seed is the mean
    of the first ``length`` defined values, as TradingView's ``ta.ema`` skips ``na``.
    """
    length = _check_length("length", length)
    size, start, (values,) = _inputs([("x", x)])
    (out,), (tail,) = _outputs(1, size, start)
    _ema_into(values[start:], length, tail)
    return out


def rma(x: Any, length: int) -> np.ndarray:
    """TradingView's ``ta.rma(x, length)``: Wilder's moving average, ``alpha = 1 / length``.

    Seeded with the SMA of the first ``length`` values (NaN before bar ``length - 1``), then
    ``(prev * (length - 1) + x) / length``: the smoothing of RSI, ATR and DMI. A leading NaN run
    is skipped as in :func:`ema`.
    """
    length = _check_length("length", length)
    size, start, (values,) = _inputs([("x", x)])
    (out,), (tail,) = _outputs(1, size, start)
    _rma_into(values[start:], length, tail)
    return out


def rsi(close: Any, length: int = 14) -> np.ndarray:
    """TradingView's ``ta.rsi(close, length)``: ``100 - 100 / (1 + rma(gain) / rma(loss))``.

    Gains and losses are the positive and negative parts of ``close - close[1]``, from bar 1; both
    are averaged with :func:`rma`, so the first value is at bar ``length``. As in TradingView, the
    RSI is 100 when the average loss is 0 (within Pine's 1e-10 tolerance; checked first, so a flat
    series gives 100) and 0 when the average gain is. Equal to TA-Lib's ``RSI`` except in those
    saturated cases (TA-Lib: ``100 * gain / (gain + loss)``, 0 for a flat series).
    """
    length = _check_length("length", length)
    size, start, (values,) = _inputs([("close", close)])
    (out,), (tail,) = _outputs(1, size, start)
    _rsi_into(values[start:], length, tail)
    return out


def macd(
    close: Any, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TradingView's ``ta.macd(close, fast, slow, signal)`` → ``(line, signal, histogram)``.

    ``line = ema(close, fast) - ema(close, slow)``, defined from bar ``max(fast, slow) - 1``;
    ``signal = ema(line, signal)`` seeded with the mean of the first ``signal`` defined line values
    (first value at bar ``max(fast, slow) + signal - 2``); ``histogram = line - signal``.

    TA-Lib's ``MACD`` differs during warm-up: it seeds the fast EMA at the slow EMA's first bar
    (over bars ``slow - fast .. slow - 1``), a difference that decays by ``(fast - 1)/(fast + 1)``
    per bar; it also swaps ``fast`` and ``slow`` when ``slow < fast``, which TradingView does not.
    """
    fast = _check_length("fast", fast)
    slow = _check_length("slow", slow)
    signal = _check_length("signal", signal)
    size, start, (values,) = _inputs([("close", close)])
    (line, signal_line, hist), tails = _outputs(3, size, start)
    _macd_into(values[start:], fast, slow, signal, *tails)
    return line, signal_line, hist


def bollinger(
    close: Any, length: int = 20, mult: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TradingView's Bollinger Bands → ``(basis, upper, lower, pct_b, width)``.

    ``basis, upper, lower = ta.bb(close, length, mult)``: ``basis = sma(close, length)``,
    ``upper/lower = basis ± mult * stdev``, with the population standard deviation, computed as
    TradingView does: ``sqrt(max(0, mean(close²) - basis²))`` over the window.
    ``pct_b = (close - lower) / (upper - lower)`` (TradingView's "Bollinger Bands %B" indicator;
    NaN where the bands coincide). ``width = ta.bbw(close, length, mult) = 100 * (upper - lower) /
    basis``, in percent, as the current Pine reference defines ``ta.bbw``. All defined from bar
    ``length - 1``. All five are identical to TradingView's to the bit (its rolling sums are
    reproduced, see the module docstring). ``basis/upper/lower`` equal TA-Lib's
    ``BBANDS(nbdevup=nbdevdn=mult, matype=0)`` up to rounding, which the square root amplifies
    where the window barely moves (compare the variances: within 1e-12).
    """
    length = _check_length("length", length)
    mult = _check_mult("mult", mult)
    size, start, (values,) = _inputs([("close", close)])
    (basis, upper, lower, pct_b, width), tails = _outputs(5, size, start)
    _bollinger_into(values[start:], length, mult, *tails)
    return basis, upper, lower, pct_b, width


def stoch(
    high: Any,
    low: Any,
    close: Any,
    k_length: int = 14,
    k_smoothing: int = 3,
    d_length: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """TradingView's "Stochastic" indicator → ``(k, d)``.

    ``k = ta.sma(ta.stoch(close, high, low, k_length), k_smoothing)``, ``d = ta.sma(k, d_length)``,
    where ``ta.stoch = 100 * (close - lowest(low)) / (highest(high) - lowest(low))`` over the last
    ``k_length`` bars. ``k`` is defined from bar ``k_length + k_smoothing - 2``, ``d`` from
    ``k_length + k_smoothing + d_length - 3``. Where the window's highest high equals its lowest
    low, TradingView divides by zero: that raw value is na, which ``ta.sma`` answers with its
    standing average, so ``k`` repeats its last value (and ``d`` averages the repeats). Equal to
    TA-Lib's ``STOCH(fastk=k_length, slowk=k_smoothing, slowd=d_length, SMA)`` except there
    (TA-Lib: a raw value of 0).
    Expects ``low <= close <= high``.
    """
    k_length = _check_length("k_length", k_length)
    k_smoothing = _check_length("k_smoothing", k_smoothing)
    d_length = _check_length("d_length", d_length)
    size, start, (h, lo, c) = _inputs([("high", high), ("low", low), ("close", close)])
    (k, d), tails = _outputs(2, size, start)
    _stoch_into(h[start:], lo[start:], c[start:], k_length, k_smoothing, d_length, *tails)
    return k, d


def true_range(high: Any, low: Any, close: Any) -> np.ndarray:
    """TradingView's ``ta.tr(true)``: ``max(high - low, |high - close[1]|, |low - close[1]|)``.

    On the first bar, which has no previous close, ``high - low`` (``ta.tr`` with ``handle_na =
    true``, as ``ta.atr`` uses it; plain ``ta.tr`` is na there, and ``ta.dmi`` uses that).
    TA-Lib's ``TRANGE`` is NaN on the first bar and equal after.
    """
    size, start, (h, lo, c) = _inputs([("high", high), ("low", low), ("close", close)])
    (out,), (tail,) = _outputs(1, size, start)
    _true_range_into(h[start:], lo[start:], c[start:], tail)
    return out


def atr(high: Any, low: Any, close: Any, length: int = 14) -> np.ndarray:
    """TradingView's ``ta.atr(length)``: ``rma(true_range, length)``, first value at bar
    ``length - 1``.

    The first true range is ``high - low`` (see :func:`true_range`). TA-Lib's ``ATR`` starts one
    bar later (it seeds with bars ``1..length``); the two differ by a term that decays by
    ``(length - 1) / length`` per bar.
    """
    length = _check_length("length", length)
    size, start, (h, lo, c) = _inputs([("high", high), ("low", low), ("close", close)])
    (out,), (tail,) = _outputs(1, size, start)
    _atr_into(h[start:], lo[start:], c[start:], length, tail)
    return out


def dmi(
    high: Any, low: Any, close: Any, di_length: int = 14, adx_smoothing: int = 14
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TradingView's ``ta.dmi(di_length, adx_smoothing)`` → ``(plus_di, minus_di, adx)``.

    From bar 1: ``up = high - high[1]``, ``down = low[1] - low``; ``+DM = up`` if ``up > down`` and
    ``up > 0`` else 0 (``-DM`` likewise), both comparisons with Pine's 1e-10 tolerance, so equal
    moves (the same number of pips up and down) count as neither. ``+DI = 100 * rma(+DM) /
    rma(ta.tr)``, with ``rma`` over ``di_length`` bars seeded over bars ``1..di_length`` (``ta.tr``
    is na on bar 0): ``±DI`` defined from bar ``di_length``. ``ADX = 100 * rma(|+DI - -DI| / (+DI
    + -DI), adx_smoothing)``, defined from bar ``di_length + adx_smoothing - 1``. Where the average
    true range is 0 (a flat market) all three are NaN and the ADX average skips the bar.

    TA-Lib's ``PLUS_DI``/``MINUS_DI``/``ADX`` seed Wilder's sums with ``di_length - 1`` values (a
    difference that decays by ``(di_length - 1) / di_length`` per bar), compare the moves exactly,
    give 0 where the true range is 0, and take a single length for both averages.
    """
    di_length = _check_length("di_length", di_length)
    adx_smoothing = _check_length("adx_smoothing", adx_smoothing)
    return _dmi_arrays(high, low, close, di_length, adx_smoothing, PINE_EPSILON)


def _dmi_arrays(
    high: Any, low: Any, close: Any, di_length: int, adx_smoothing: int, tie_tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`dmi` with the tolerance of the move comparison as a parameter (0.0: TA-Lib's)."""
    size, start, (h, lo, c) = _inputs([("high", high), ("low", low), ("close", close)])
    (plus, minus, adx), tails = _outputs(3, size, start)
    _dmi_into(h[start:], lo[start:], c[start:], di_length, adx_smoothing, tie_tolerance, *tails)
    return plus, minus, adx
