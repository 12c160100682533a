"""All eight indicators on 1M one-minute bars: aiopt against TA-Lib and pandas-ta-classic, in one run.

The indicators: RSI 14, MACD 12/26/9, Bollinger Bands 20/2, SMA 50, EMA 20, Stochastic 14/3/3,
ATR 14, DMI/ADX 14 (17 output series).

* aiopt ``add_indicators``: a polars bars frame in, the frame with 17 Float64 columns out (warm-up as
  null), one compiled call (numba, single thread).
* aiopt numpy: the eight numpy-level functions (``rsi``, ``macd``, ``bollinger``, ``sma``, ``ema``,
  ``stoch``, ``atr``, ``dmi``), float64 arrays out.
* TA-Lib (C): ``RSI, MACD, BBANDS, SMA, EMA, STOCH, ATR, ADX, PLUS_DI, MINUS_DI`` (ADX and the two
  DI are three calls there), float64 arrays out.
* pandas-ta-classic with ``talib=False`` (its pandas implementation): the same eight, pandas out.

Every contender's previous results stay alive while it runs again, as they would in a frame, so all
of them allocate fresh memory. Rounds alternate between contenders; the best round counts. The bars
are a log random walk quoted in 1e-5 ticks (EUR/USD-like). Prints a table, then one JSON object as
the last line (ours = ``add_indicators``). Needs ``pip install -e ".[bench]"`` (or ``make bench``).

    .venv/bin/python benchmarks/bench_indicators.py [--bars 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import polars as pl
import talib

from aiopt_lib.features import indicators as ind


def random_walk_bars(n: int, seed: int = 1) -> pl.DataFrame:
    """One-minute EUR/USD-like bars: a log random walk in 1e-5 ticks, wicks of whole ticks."""
    rng = np.random.default_rng(seed)
    tick = 1e-5
    close = np.round(1.1 * np.exp(np.cumsum(rng.normal(0, 5e-5, n))) / tick) * tick
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.round((np.maximum(open_, close) + rng.geometric(0.4, n) * tick) / tick) * tick
    low = np.round((np.minimum(open_, close) - (rng.geometric(0.4, n) - 1) * tick) / tick) * tick
    return pl.DataFrame({"open": open_, "high": high, "low": low, "close": close})


def aiopt_numpy(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> list:
    return [
        ind.rsi(c, 14),
        ind.macd(c, 12, 26, 9),
        ind.bollinger(c, 20, 2.0),
        ind.sma(c, 50),
        ind.ema(c, 20),
        ind.stoch(h, lo, c, 14, 3, 3),
        ind.atr(h, lo, c, 14),
        ind.dmi(h, lo, c, 14, 14),
    ]


def ta_lib(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> list:
    return [
        talib.RSI(c, 14),
        talib.MACD(c, 12, 26, 9),
        talib.BBANDS(c, 20, 2.0, 2.0, 0),
        talib.SMA(c, 50),
        talib.EMA(c, 20),
        talib.STOCH(h, lo, c, 14, 3, 0, 3, 0),
        talib.ATR(h, lo, c, 14),
        talib.ADX(h, lo, c, 14),
        talib.PLUS_DI(h, lo, c, 14),
        talib.MINUS_DI(h, lo, c, 14),
    ]


def pandas_ta(frame: pd.DataFrame) -> list:
    import pandas_ta_classic as pta

    h, lo, c = frame["high"], frame["low"], frame["close"]
    return [
        pta.rsi(c, 14, talib=False),
        pta.macd(c, 12, 26, 9, talib=False),
        pta.bbands(c, 20, 2.0, talib=False),
        pta.sma(c, 50, talib=False),
        pta.ema(c, 20, talib=False),
        pta.stoch(h, lo, c, 14, 3, 3, talib=False),
        pta.atr(h, lo, c, 14, talib=False),
        pta.adx(h, lo, c, 14, talib=False),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bars = random_walk_bars(args.bars)
    h, lo, c = (bars[name].to_numpy() for name in ("high", "low", "close"))
    frame = bars.to_pandas()

    contenders: dict[str, Callable[[], object]] = {
        "aiopt add_indicators (polars)": lambda: ind.add_indicators(bars),
        "aiopt numpy functions": lambda: aiopt_numpy(h, lo, c),
        "TA-Lib": lambda: ta_lib(h, lo, c),
    }
    kept: dict[str, object] = {name: fn() for name, fn in contenders.items()}  # compile, warm up
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(args.repeat):
        for name, fn in contenders.items():
            started = time.perf_counter()
            result = fn()
            best[name] = min(best[name], time.perf_counter() - started)
            kept[name] = result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer_name = "pandas-ta-classic (talib=False)"
        best[peer_name] = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            kept[peer_name] = pandas_ta(frame)
            best[peer_name] = min(best[peer_name], time.perf_counter() - started)

    # the contenders compute the same thing
    ours, ta = kept["aiopt add_indicators (polars)"], kept["TA-Lib"]
    assert isinstance(ours, pl.DataFrame) and ours.width == bars.width + 17
    assert np.nanmax(np.abs(ours["rsi_14"].to_numpy() - ta[0])) < 1e-9
    assert np.nanmax(np.abs(ours["sma_50"].to_numpy() - ta[3])) < 1e-9
    rsi_pandas = kept[peer_name][0].to_numpy()
    assert np.nanmax(np.abs(ours["rsi_14"].to_numpy() - rsi_pandas)) < 1e-9

    ta_ms = best["TA-Lib"] * 1e3
    print(f"8 indicators (17 series) on {args.bars:,} bars, best of {args.repeat} rounds")
    print(f"{'':34s} {'ms':>9s} {'M bars/s':>9s} {'TA-Lib time / this':>19s}")
    for name, seconds in best.items():
        print(
            f"{name:34s} {seconds * 1e3:9.1f} {args.bars / seconds / 1e6:9.1f} "
            f"{ta_ms / (seconds * 1e3):18.2f}x"
        )
    ours_ms = best["aiopt add_indicators (polars)"] * 1e3
    print(
        json.dumps(
            {
                "benchmark": f"indicators_all8_{args.bars // 1000}k_bars",
                "ours": round(ours_ms, 2),
                "peer": f"TA-Lib {talib.__ta_version__.decode().split()[0]} (python ta-lib {talib.__version__})",
                "peer_value": round(ta_ms, 2),
                "unit": "ms",
                "speedup": round(ta_ms / ours_ms, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
