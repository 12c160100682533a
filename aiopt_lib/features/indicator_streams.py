"""Bar-by-bar ports of the indicator kernels, for live and event-driven engines (Nautilus, paper
trading): each state machine takes one new bar and returns the outputs of its indicator on that
bar, using only the bars it has seen.

They follow the numba kernels of :mod:`aiopt_lib.features.indicators` step by step, with the same
seeding and warm-up: TradingView's rolling ``math.sum`` (the kernels' own ``_tv_sum_add``, called
from Python) for ``sma`` and Bollinger Bands, so those are identical to the bit; the
Neumaier-compensated SMA of the Stochastic; EMA / RMA seeded with the SMA of their first
``length`` values; RSI, MACD, ATR and DMI as in the kernels. The recursive averages use the same
numba-compiled fused multiply-add (:func:`blend`) as the kernels, so every indicator equals the
vectorised one to the bit on the EUR/USD sample (``tests/test_streaming.py``). The machines of
the eight more built-ins (``CciStream`` ... ``SupertrendStream``) port the kernels of
:mod:`aiopt_lib.features.indicators_more` the same way, calling the same numba helpers, and are
equal to those to the bit too (``tests/test_indicators_more.py``).

Every machine has ``update(open, high, low, close, volume) -> tuple[float, ...]`` (NaN during the
warm-up); :mod:`aiopt_lib.features.registry` says which machine belongs to which indicator.
"""

from __future__ import annotations

import math
from collections import deque

import numba
import numpy as np

from aiopt_lib.features.indicators import PINE_EPSILON, _neumaier_add, _tv_sum_add
from aiopt_lib.features.indicators_more import _mean_deviation_sum, _mfi_value

__all__ = [
    "AtrStream",
    "BollingerStream",
    "CciStream",
    "DmiStream",
    "EmaStream",
    "FastSma",
    "KeltnerStream",
    "MacdStream",
    "MfiStream",
    "MomStream",
    "ObvStream",
    "RocStream",
    "RsiStream",
    "SmaState",
    "SmaStream",
    "Smoothed",
    "StochStream",
    "StreamingIndicator",
    "SupertrendStream",
    "TvSum",
    "WprStream",
    "blend",
]

_NAN = math.nan


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
def blend(prev: float, keep: float, x: float, alpha: float) -> float:
    """``prev * keep + x * alpha`` compiled as the kernels of :mod:`aiopt_lib.features.indicators` compile
    it (numba with fused multiply-adds), so the recursive averages equal theirs to the bit (Python
    3.11 has no ``math.fma``)."""
    return prev * keep + x * alpha


# ---------------------------------------------------------------------------------------------
# Rolling sums


class TvSum:
    """TradingView's rolling ``math.sum`` machine, one value at a time: the kernels' own
    :func:`aiopt_lib.features.indicators._tv_sum_add` (called from Python) on this object's state, so the
    streamed sums are the batch ones by construction; ``add`` returns the new total."""

    __slots__ = ("comp", "entries", "length", "slot", "stored", "total", "window")

    def __init__(self, length: int) -> None:
        self.length = length
        self.entries = np.zeros(length)
        self.window = np.zeros(length)
        self.slot = 0
        self.stored = 0
        self.total = 0.0
        self.comp = 0.0

    def add(self, value: float) -> float:
        self.total, self.comp = _tv_sum_add(
            value,
            self.length,
            self.total,
            self.comp,
            self.entries,
            self.window,
            self.slot,
            self.stored,
        )
        self.stored += 1
        self.slot = self.slot + 1 if self.slot + 1 < self.length else 0
        return self.total


class SmaState:
    """``_sma_into`` one value at a time: NaN inputs are skipped (the standing average repeats)."""

    __slots__ = ("length", "sum", "value")

    def __init__(self, length: int) -> None:
        self.length = length
        self.sum = TvSum(length)
        self.value = _NAN

    def update(self, x: float) -> float:
        if x == x:
            total = self.sum.add(x)
            if self.sum.stored >= self.length:
                self.value = total / self.length
        return self.value


class FastSma:
    """``_fast_sma_into`` one value at a time: the kernel's own :func:`_neumaier_add` (called
    from Python) on this object's state."""

    __slots__ = ("comp", "head", "length", "ring", "stored", "total")

    def __init__(self, length: int) -> None:
        self.length = length
        self.ring = [0.0] * length
        self.stored = 0
        self.head = 0
        self.total = 0.0
        self.comp = 0.0

    def update(self, value: float) -> float:
        length = self.length
        if value == value:
            total, comp = _neumaier_add(self.total, self.comp, value)
            if self.stored == length:
                total, comp = _neumaier_add(total, comp, -self.ring[self.head])
            else:
                self.stored += 1
            self.total, self.comp = total, comp
            self.ring[self.head] = value
            self.head = self.head + 1 if self.head + 1 < length else 0
        return (self.total + self.comp) / length if self.stored == length else _NAN


class Smoothed:
    """``_smoothed_into`` one value at a time: the mean of the first ``length`` values, then
    ``prev * (1 - alpha) + x * alpha``; NaN inputs (another indicator's warm-up) are skipped."""

    __slots__ = ("alpha", "count", "keep", "length", "value")

    def __init__(self, length: int, alpha: float) -> None:
        self.length = length
        self.alpha = alpha
        self.keep = 1.0 - alpha
        self.count = 0
        self.value = 0.0

    def update(self, x: float) -> float:
        if x != x:
            return self.value if self.count >= self.length else _NAN
        if self.count < self.length:
            self.count += 1
            self.value += x
            if self.count < self.length:
                return _NAN
            self.value /= self.length
        else:
            self.value = blend(self.value, self.keep, x, self.alpha)
        return self.value


# ---------------------------------------------------------------------------------------------
# Indicators: one class per kernel group; update(open, high, low, close) -> outputs


class StreamingIndicator:
    """An indicator fed one bar at a time: :meth:`update` takes the new bar and returns every
    output of the indicator (in the order of its registry entry's ``outputs``), NaN during the
    warm-up."""

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        """The group's outputs on the new bar."""
        raise NotImplementedError


class SmaStream(StreamingIndicator):
    def __init__(self, length: int) -> None:
        self.sma = SmaState(length)

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        return (self.sma.update(close),)


class EmaStream(StreamingIndicator):
    def __init__(self, length: int) -> None:
        self.ema = Smoothed(length, 2.0 / (length + 1))

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        return (self.ema.update(close),)


def _rsi_value(up: float, down: float) -> float:
    if down <= PINE_EPSILON:
        return 100.0
    if up <= PINE_EPSILON:
        return 0.0
    return 100.0 * up / (up + down)


class RsiStream(StreamingIndicator):
    """``_rsi_into``: RMA of gains and losses from bar 1, first value at bar ``length``."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.alpha = 1.0 / length
        self.keep = 1.0 - self.alpha
        self.bars = 0
        self.prev = _NAN
        self.up = 0.0
        self.down = 0.0

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        i = self.bars
        self.bars += 1
        prev, self.prev = self.prev, close
        if i == 0:
            return (_NAN,)
        change = close - prev
        gain = change if change > 0.0 else 0.0
        loss = -change if change < 0.0 else 0.0
        if i <= self.length:
            self.up += gain
            self.down += loss
            if i < self.length:
                return (_NAN,)
            self.up /= self.length
            self.down /= self.length
        else:
            self.up = blend(self.up, self.keep, gain, self.alpha)
            self.down = blend(self.down, self.keep, loss, self.alpha)
        return (_rsi_value(self.up, self.down),)


class MacdStream(StreamingIndicator):
    """``_macd_into``: line from bar ``max(fast, slow) - 1``, the signal seeded with the first
    ``signal`` line values."""

    def __init__(self, fast: int, slow: int, signal: int) -> None:
        self.fast = Smoothed(fast, 2.0 / (fast + 1))
        self.slow = Smoothed(slow, 2.0 / (slow + 1))
        self.signal = Smoothed(signal, 2.0 / (signal + 1))

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        fast = self.fast.update(close)
        slow = self.slow.update(close)
        line = fast - slow  # NaN until both averages are seeded
        signal = self.signal.update(line)
        return line, signal, line - signal


class BollingerStream(StreamingIndicator):
    """``_bollinger_into``: two TradingView sums (of x and x²), population variance."""

    def __init__(self, length: int, mult: float) -> None:
        self.length = length
        self.mult = mult
        self.p = TvSum(length)
        self.q = TvSum(length)

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        value = close
        p = self.p.add(value)
        q = self.q.add(value * value)
        length = self.length
        if self.p.stored < length:
            return (_NAN,) * 5
        mean = p / length
        variance = q / length - mean * mean
        dev = math.sqrt(variance) * self.mult if variance > 0.0 else 0.0
        up = mean + dev
        lo = mean - dev
        band = up - lo
        pct_b = (value - lo) / band if band != 0.0 else _NAN
        width = band / mean * 100.0 if mean != 0.0 else _NAN
        return mean, up, lo, pct_b, width


class StochStream(StreamingIndicator):
    """``_stoch_into``: raw %K over the last ``k_length`` bars (NaN where the range is 0), then the
    compensated SMAs (which repeat their standing value on a NaN)."""

    def __init__(self, k_length: int, k_smoothing: int, d_length: int) -> None:
        self.highs: deque[float] = deque(maxlen=k_length)
        self.lows: deque[float] = deque(maxlen=k_length)
        self.k = FastSma(k_smoothing)
        self.d = FastSma(d_length)

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        self.highs.append(high)
        self.lows.append(low)
        raw = _NAN
        if len(self.highs) == self.highs.maxlen:
            highest, lowest = max(self.highs), min(self.lows)
            span = highest - lowest
            raw = 100.0 * (close - lowest) / span if span != 0.0 else _NAN
        k = self.k.update(raw)
        return k, self.d.update(k)


class AtrStream(StreamingIndicator):
    """``_atr_into``: RMA of the true range, the first one ``high - low``."""

    def __init__(self, length: int) -> None:
        self.rma = Smoothed(length, 1.0 / length)
        self.prev_close = _NAN

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        prev = self.prev_close
        self.prev_close = close
        tr = high - low if prev != prev else max(high - low, abs(high - prev), abs(low - prev))
        return (self.rma.update(tr),)


class DmiStream(StreamingIndicator):
    """``_dmi_into``: Wilder sums seeded over bars ``1..di_length``, Pine's tie tolerance, the ADX
    average skipping bars where the true range average is 0."""

    def __init__(self, di_length: int, adx_smoothing: int) -> None:
        self.di_length = di_length
        self.adx_smoothing = adx_smoothing
        self.alpha = 1.0 / di_length
        self.keep = 1.0 - self.alpha
        self.adx_alpha = 1.0 / adx_smoothing
        self.adx_keep = 1.0 - self.adx_alpha
        self.bars = 0
        self.prev: tuple[float, float, float] | None = None
        self.tr_avg = 0.0
        self.plus_avg = 0.0
        self.minus_avg = 0.0
        self.dx_count = 0
        self.adx_avg = 0.0

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        i = self.bars
        self.bars += 1
        prev, self.prev = self.prev, (high, low, close)
        none = (_NAN, _NAN, _NAN)
        if prev is None:
            return none
        prev_high, prev_low, prev_close = prev
        up = high - prev_high
        down = prev_low - low
        tol = PINE_EPSILON
        plus_dm = up if (up - down > tol and up > tol) else 0.0
        minus_dm = down if (down - up > tol and down > tol) else 0.0
        tr = max(high - low, abs(high - prev_close), abs(low - prev_close))
        n = self.di_length
        if i <= n:
            self.tr_avg += tr
            self.plus_avg += plus_dm
            self.minus_avg += minus_dm
            if i < n:
                return none
            self.tr_avg /= n
            self.plus_avg /= n
            self.minus_avg /= n
        else:
            self.tr_avg = blend(self.tr_avg, self.keep, tr, self.alpha)
            self.plus_avg = blend(self.plus_avg, self.keep, plus_dm, self.alpha)
            self.minus_avg = blend(self.minus_avg, self.keep, minus_dm, self.alpha)
        if self.tr_avg == 0.0:
            return none
        scale = 100.0 / self.tr_avg
        plus = self.plus_avg * scale
        minus = self.minus_avg * scale
        total = plus + minus
        dx = abs(plus - minus) / (total if total != 0.0 else 1.0)
        if self.dx_count < self.adx_smoothing:
            self.adx_avg += dx
            self.dx_count += 1
            if self.dx_count < self.adx_smoothing:
                return plus, minus, _NAN
            self.adx_avg /= self.adx_smoothing
        else:
            self.adx_avg = blend(self.adx_avg, self.adx_keep, dx, self.adx_alpha)
        return plus, minus, 100.0 * self.adx_avg


# ---------------------------------------------------------------------------------------------
# The eight more built-ins of aiopt_lib.features.indicators_more, one machine each


def _quotient(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` as the kernels compute it, NaN where Pine's ``na()`` is true
    (a division by zero, which Python would raise, and ±inf)."""
    if denominator == 0.0:
        return _NAN
    value = numerator / denominator
    return value if math.isfinite(value) else _NAN


class CciStream(StreamingIndicator):
    """``_cci_into`` on ``hlc3``: the mean from TradingView's rolling sum (:class:`TvSum`), the
    mean deviation over the sum's own window of raw values, newest first (the kernels'
    ``_mean_deviation_sum``, the order of Pine's loop)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.sum = TvSum(length)

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        value = (high + low + close) / 3.0
        total = self.sum.add(value)
        length = self.length
        if self.sum.stored < length or length == 1:
            return (_NAN,)
        mean = total / length
        newest = self.sum.slot - 1 if self.sum.slot > 0 else length - 1
        deviation = _mean_deviation_sum(self.sum.window, newest, length, mean) / length
        return (_quotient(value - mean, 0.015 * deviation),)


class WprStream(StreamingIndicator):
    """``_wpr_into``: Williams %R over the last ``length`` bars (NaN where the range is 0);
    ``close`` itself for ``length == 1``, as ``ta.wpr``."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.highs: deque[float] = deque(maxlen=length)
        self.lows: deque[float] = deque(maxlen=length)

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        if self.length == 1:
            return (close,)
        self.highs.append(high)
        self.lows.append(low)
        if len(self.highs) < self.length:
            return (_NAN,)
        highest, lowest = max(self.highs), min(self.lows)
        return (_quotient(100.0 * (close - highest), highest - lowest),)


class MomStream(StreamingIndicator):
    """``_mom_into`` on ``close``: ``close - close[length]``."""

    def __init__(self, length: int) -> None:
        self.closes: deque[float] = deque(maxlen=length + 1)

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        self.closes.append(close)
        if len(self.closes) < self.closes.maxlen:  # type: ignore[operator]
            return (_NAN,)
        return (close - self.closes[0],)


class RocStream(StreamingIndicator):
    """``_roc_into`` on ``close``: ``100 * (close - close[length]) / close[length]``."""

    def __init__(self, length: int) -> None:
        self.closes: deque[float] = deque(maxlen=length + 1)

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        self.closes.append(close)
        if len(self.closes) < self.closes.maxlen:  # type: ignore[operator]
            return (_NAN,)
        previous = self.closes[0]
        return (_quotient(100.0 * (close - previous), previous),)


class ObvStream(StreamingIndicator):
    """``_obv_into``: the running sum of the signed volumes from bar 1 (NaN on bar 0)."""

    def __init__(self) -> None:
        self.prev_close = _NAN
        self.total = 0.0

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        prev, self.prev_close = self.prev_close, close
        if prev != prev:
            return (_NAN,)
        change = close - prev
        sign = (1.0 if change > 0.0 else 0.0) - (1.0 if change < 0.0 else 0.0)
        self.total += volume * sign
        return (self.total,)


class MfiStream(StreamingIndicator):
    """``_mfi_into`` on ``hlc3``: two TradingView rolling sums (:class:`TvSum`) of the money
    flows, bar 0's flow on both sides, Pine's tolerant direction test; the result from the
    kernels' own ``_mfi_value``."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.upper = TvSum(length)
        self.lower = TvSum(length)
        self.prev = _NAN

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        value = (high + low + close) / 3.0
        prev, self.prev = self.prev, value
        if prev != prev:
            up_flow = down_flow = volume * value
        else:
            change = value - prev
            up_flow = volume * (0.0 if change <= PINE_EPSILON else value)
            down_flow = volume * (0.0 if change >= -PINE_EPSILON else value)
        upper = self.upper.add(up_flow)
        lower = self.lower.add(down_flow)
        if self.upper.stored < self.length:
            return (_NAN,)
        return (float(_mfi_value(upper, lower)),)


class KeltnerStream(StreamingIndicator):
    """``_keltner_into`` on ``close``: the EMA of the close and the EMA of the true range from
    bar 1 (:class:`Smoothed`, which skips bar 0's NaN), bands ``basis ± range * mult``."""

    def __init__(self, length: int, mult: float) -> None:
        self.mult = mult
        self.basis = Smoothed(length, 2.0 / (length + 1))
        self.range = Smoothed(length, 2.0 / (length + 1))
        self.prev_close = _NAN

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        prev, self.prev_close = self.prev_close, close
        tr = _NAN if prev != prev else max(high - low, abs(high - prev), abs(low - prev))
        basis = self.basis.update(close)
        offset = self.range.update(tr) * self.mult
        return basis, basis + offset, basis - offset


class SupertrendStream(StreamingIndicator):
    """``_supertrend_into``: the ATR of :class:`AtrStream`, bands ``hl2 ± factor * atr``
    ratcheting until the close crosses them; ``(0.0, 1.0)`` on bar 0 and ``(NaN, 1.0)`` until
    the ATR is defined, as TradingView."""

    def __init__(self, factor: float, atr_length: int) -> None:
        self.factor = factor
        self.atr = Smoothed(atr_length, 1.0 / atr_length)
        self.prev_close = _NAN
        self.bars = 0
        self.started = False
        self.prev_lower = 0.0
        self.prev_upper = 0.0
        self.prev_value = 0.0
        self.prev_direction = 1.0

    def update(
        self, open: float, high: float, low: float, close: float, volume: float
    ) -> tuple[float, ...]:
        prev_close, self.prev_close = self.prev_close, close
        if prev_close != prev_close:
            tr = high - low
        else:
            tr = max(high - low, abs(high - prev_close), abs(low - prev_close))
        atr = self.atr.update(tr)
        self.bars += 1
        if self.bars == 1:
            return 0.0, 1.0
        if atr != atr:
            return _NAN, self.prev_direction
        middle = (high + low) / 2.0
        up = middle + self.factor * atr
        down = middle - self.factor * atr
        if not self.started:
            self.started = True
            direction = 1.0
            value = up
        else:
            if not (down > self.prev_lower or prev_close < self.prev_lower):
                down = self.prev_lower
            if not (up < self.prev_upper or prev_close > self.prev_upper):
                up = self.prev_upper
            if self.prev_value == self.prev_upper:
                direction = -1.0 if close > up else 1.0
            else:
                direction = 1.0 if close < down else -1.0
            value = up if direction == 1.0 else down
        self.prev_lower = down
        self.prev_upper = up
        self.prev_value = value
        self.prev_direction = direction
        return value, direction
