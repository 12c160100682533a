"""Benchmark: our generic SpecStrategy vs a bare hand-written Nautilus EMA cross, same engine.

Both run on the same 100,000 synthetic one-minute bars (the random walk of ``bench_backtest.py``)
in a ``BacktestEngine`` set up by :mod:`aiopt_lib.execution.nautilus` (400,000 quotes + 100,000 bars, our
fill and fee models). The bare strategy keeps two Nautilus ``ExponentialMovingAverage``
indicators (10/30) and reverses on their cross at market, in one ``engine.run()`` with all the
data loaded, as a user would write it. Ours is a StrategySpec of the same cross
(``crossover(ema(10), ema(30))``) run by :func:`aiopt_lib.execution.nautilus.run_nautilus`: data conversion,
signal compilation, the run (streamed in chunks of ``DEFAULT_CHUNK_BARS``) and the trades frame
are all timed. The two take slightly different trades (Nautilus' EMA seeds with the first close,
TradingView's with an SMA; the bare strategy fills at the signal bar's close quote, ours at the
next open), which does not matter for speed. Also timed: ours in one chunk (``ours_one_chunk``),
ours with the rules evaluated bar by bar inside Nautilus (``ours_bar_by_bar``), and a long run of
1,000,000 bars (ours chunked, ours in one chunk, the bare one) to show that chunking keeps the
time per bar flat (``long_per_bar_vs_short``: time per bar at 1M / at 100k). Each short figure
is the median of ``--repeat`` runs. Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))

from bench_backtest import synthetic_bars
from nautilus_trader.config import StrategyConfig
from nautilus_trader.indicators import ExponentialMovingAverage
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import OrderSide
from nautilus_trader.trading.strategy import Strategy

from aiopt_lib.execution.nautilus import DEFAULT_CHUNK_BARS, build_engine, run_nautilus
from aiopt_lib.strategy.spec import StrategySpec

N_BARS = 100_000
LONG_BARS = 1_000_000
SPEC = StrategySpec(
    name="ema_cross_bench",
    timeframe="1m",
    long_entry="crossover(ema(10), ema(30))",
    short_entry="crossunder(ema(10), ema(30))",
    costs={"spread": 0.8},
)


class BareEmaCrossConfig(StrategyConfig, frozen=True):
    """The bar type and order size of :class:`BareEmaCross`."""

    bar_type: BarType
    quantity: int = 100_000


class BareEmaCross(Strategy):
    """The textbook Nautilus EMA cross: two registered indicators, reverse at market on a cross."""

    def __init__(self, config: BareEmaCrossConfig) -> None:
        super().__init__(config)
        self.fast = ExponentialMovingAverage(10)
        self.slow = ExponentialMovingAverage(30)
        self.above: bool | None = None

    def on_start(self) -> None:
        """Register the indicators and subscribe."""
        self.instrument = self.cache.instrument(self.config.bar_type.instrument_id)
        self.register_indicator_for_bars(self.config.bar_type, self.fast)
        self.register_indicator_for_bars(self.config.bar_type, self.slow)
        self.subscribe_bars(self.config.bar_type)

    def on_bar(self, bar: Bar) -> None:
        """Reverse on a cross."""
        if not self.slow.initialized:
            return
        above = self.fast.value > self.slow.value
        if self.above is not None and above != self.above:
            self.close_all_positions(self.instrument.id)
            side = OrderSide.BUY if above else OrderSide.SELL
            qty = self.instrument.make_qty(self.config.quantity)
            self.submit_order(self.order_factory.market(self.instrument.id, side, qty))
        self.above = above


def run_bare(bars: pl.DataFrame) -> tuple[float, int]:
    start = time.perf_counter()
    engine, data = build_engine(bars, SPEC)
    engine.add_strategy(BareEmaCross(BareEmaCrossConfig(bar_type=data.bar_type)))
    engine.run()
    trades = sum(1 for p in engine.cache.positions() if p.is_closed)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed, trades


def run_ours(bars: pl.DataFrame, **options: object) -> tuple[float, int]:
    start = time.perf_counter()
    trades = run_nautilus(bars, SPEC, **options)
    return time.perf_counter() - start, trades.height


def median_run(run, bars: pl.DataFrame, repeat: int, **options: object) -> tuple[float, int]:
    results = [run(bars, **options) for _ in range(repeat)]
    return statistics.median(r[0] for r in results), results[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=N_BARS)
    parser.add_argument("--long-bars", type=int, default=LONG_BARS, help="0 skips the long run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.bars
    bars = synthetic_bars(n)
    run_ours(bars.head(2_000))  # warm up imports and numba caches
    run_ours(bars.head(2_000), mode="bar_by_bar")
    peer, peer_trades = median_run(run_bare, bars, args.repeat)
    ours, our_trades = median_run(run_ours, bars, args.repeat)
    one_chunk, one_chunk_trades = median_run(run_ours, bars, args.repeat, chunk_bars=None)
    streamed, streamed_trades = median_run(run_ours, bars, args.repeat, mode="bar_by_bar")
    print(f"{n:,} bars, median of {args.repeat} runs each")
    print(f"bare nautilus EMA cross: {peer:.2f} s ({n / peer:,.0f} bars/s, {peer_trades} trades)")
    print(
        f"aiopt run_nautilus, chunks of {DEFAULT_CHUNK_BARS:,}: {ours:.2f} s "
        f"({n / ours:,.0f} bars/s, {our_trades} trades)"
    )
    print(f"aiopt run_nautilus, one chunk: {one_chunk:.2f} s ({one_chunk_trades} trades)")
    print(
        f"aiopt run_nautilus bar by bar: {streamed:.2f} s "
        f"({n / streamed:,.0f} bars/s, {streamed_trades} trades)"
    )
    result = {
        "benchmark": "nautilus_generic_vs_bare",
        "ours": round(ours, 2),
        "peer": "bare nautilus EMA cross",
        "peer_value": round(peer, 2),
        "unit": "s",
        "speedup": round(peer / ours, 2),
        "bars": n,
        "ours_one_chunk": round(one_chunk, 2),
        "ours_bar_by_bar": round(streamed, 2),
        "bar_by_bar_vs_bare": round(streamed / peer, 2),
        "trades_equal_across_modes": our_trades == one_chunk_trades == streamed_trades,
    }
    if args.long_bars:
        long_n = args.long_bars
        long_bars = synthetic_bars(long_n)
        long_ours, long_trades = run_ours(long_bars)
        long_one, _ = run_ours(long_bars, chunk_bars=None)
        long_bare, _ = run_bare(long_bars)
        per_bar = (long_ours / long_n) / (ours / n)
        print(
            f"{long_n:,} bars: ours chunked {long_ours:.1f} s ({long_n / long_ours:,.0f} bars/s, "
            f"{long_trades} trades), ours one chunk {long_one:.1f} s "
            f"({long_n / long_one:,.0f} bars/s), bare {long_bare:.1f} s "
            f"({long_n / long_bare:,.0f} bars/s); time per bar vs {n:,} bars: x{per_bar:.2f}"
        )
        result.update(
            {
                "long_bars": long_n,
                "long_ours": round(long_ours, 1),
                "long_ours_one_chunk": round(long_one, 1),
                "long_bare": round(long_bare, 1),
                "long_per_bar_vs_short": round(per_bar, 2),
            }
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
