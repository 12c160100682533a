"""Benchmark: an EMA(10/30) cross with 2×ATR stops and 3×ATR takes, aiopt's engine on 1M bars vs
backtesting.py on 100k bars (it is too slow for 1M), in bars per second.

Bars are a synthetic 1-minute random walk (no download); indicators are computed once outside the
timed section for both engines. Prints one JSON object as the last line.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings

import numpy as np
import polars as pl

from aiopt_lib.features.indicators import atr, ema
from aiopt_lib.strategy.backtest import ExecutionConfig, OrderSignals, run_backtest

N_OURS = 1_000_000
N_PEER = 100_000


def synthetic_bars(n: int, seed: int = 0) -> pl.DataFrame:
    """A 1-minute EUR/USD-like random walk on a 1e-5 grid."""
    rng = np.random.default_rng(seed)
    close = 1.1 + np.cumsum(rng.normal(0, 0.0001, n))
    opens = np.concatenate(([1.1], close[:-1]))
    high = np.maximum(opens, close) + np.abs(rng.normal(0, 0.00005, n))
    low = np.minimum(opens, close) - np.abs(rng.normal(0, 0.00005, n))
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    return pl.DataFrame(
        {
            "ts": pl.datetime_range(
                start, start + dt.timedelta(minutes=n - 1), "1m", time_unit="us", eager=True
            ),
            "open": np.round(opens, 5),
            "high": np.round(high, 5),
            "low": np.round(low, 5),
            "close": np.round(close, 5),
            "volume": np.ones(n),
        }
    )


def ema_cross_signals(bars: pl.DataFrame) -> OrderSignals:
    """Long on a fast-over-slow cross, short on the reverse; ATR stops and takes."""
    close = bars["close"].to_numpy()
    above = np.nan_to_num(ema(close, 10) - ema(close, 30)) > 0
    previous = np.concatenate(([False], above[:-1]))
    up, down = above & ~previous, ~above & previous
    width = atr(bars["high"].to_numpy(), bars["low"].to_numpy(), close, 14)
    return OrderSignals(up, down, down, up, stop_distance=2 * width, take_distance=3 * width)


def time_ours(bars: pl.DataFrame, signals: OrderSignals, repeats: int = 5) -> tuple[float, int]:
    config = ExecutionConfig(spread=0.00008)
    result = run_backtest(bars.head(1000), _head(signals, 1000), config)  # compile / load cache
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = run_backtest(bars, signals, config)
        best = min(best, time.perf_counter() - start)
    return bars.height / best, result.trades.height


def _head(signals: OrderSignals, n: int) -> OrderSignals:
    return OrderSignals(
        *(None if a is None else a[:n] for a in vars(signals).values())  # type: ignore[arg-type]
    )


def time_peer(bars: pl.DataFrame, signals: OrderSignals) -> tuple[float, int, str]:
    import backtesting
    from backtesting import Backtest, Strategy

    frame = bars.select(
        pl.col("ts").dt.replace_time_zone(None),
        pl.col("open").alias("Open"),
        pl.col("high").alias("High"),
        pl.col("low").alias("Low"),
        pl.col("close").alias("Close"),
        pl.col("volume").alias("Volume"),
    ).to_pandas()
    frame = frame.set_index("ts")
    up, down, width = signals.long_entry, signals.short_entry, signals.stop_distance / 2

    class EmaCross(Strategy):
        def init(self) -> None:
            self.up = self.I(lambda: up, name="up")
            self.down = self.I(lambda: down, name="down")
            self.width = self.I(lambda: width, name="atr")

        def next(self) -> None:
            price, w = self.data.Close[-1], self.width[-1]
            if not np.isfinite(w):
                return
            if self.up[-1]:
                self.position.close()
                self.buy(size=10_000, sl=price - 2 * w, tp=price + 3 * w)
            elif self.down[-1]:
                self.position.close()
                self.sell(size=10_000, sl=price + 2 * w, tp=price - 3 * w)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = Backtest(frame, EmaCross, cash=1_000_000, spread=0.00008, finalize_trades=True)
        start = time.perf_counter()
        stats = test.run()
        elapsed = time.perf_counter() - start
    return bars.height / elapsed, int(stats["# Trades"]), backtesting.__version__


def main() -> None:
    bars = synthetic_bars(N_OURS)
    signals = ema_cross_signals(bars)
    ours, our_trades = time_ours(bars, signals)
    peer, peer_trades, version = time_peer(bars.head(N_PEER), _head(signals, N_PEER))
    print(f"aiopt: {ours:,.0f} bars/s on {N_OURS:,} bars ({our_trades} trades)")
    print(f"backtesting.py {version}: {peer:,.0f} bars/s on {N_PEER:,} bars ({peer_trades} trades)")
    print(
        json.dumps(
            {
                "benchmark": "backtest_ema_cross_stops",
                "ours": round(ours),
                "peer": f"backtesting.py {version}",
                "peer_value": round(peer),
                "unit": "bars/s",
                "speedup": round(ours / peer, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
