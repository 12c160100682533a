"""Benchmark: our generic SpecStrategy vs a bare hand-written Nautilus EMA cross, same engine.

Both run on the same 100,000 synthetic one-minute bars (the random walk of ``bench_backtest.py``)
in a ``BacktestEngine`` built by :func:`aiopt_lib.nautilus.build_engine` (400,000 quotes +
100,000 bars, our fill and fee models). The bare strategy keeps two Nautilus
``ExponentialMovingAverage`` indicators (10/30) and reverses on their cross at market; ours is a
StrategySpec of the same cross (``crossover(ema(10), ema(30))``), its signals compiled by
:func:`~aiopt_lib.strategy.compile_signals` inside the timed section. Timed: building the engine
(data conversion), compiling the signals (ours), the run and reading the trades back. The two
take slightly different trades (Nautilus' EMA seeds with the first close, TradingView's with an
SMA; the bare strategy fills at the signal bar's close quote, ours at the next open), which does
not matter for speed. A third run times ours with the rules evaluated bar by bar inside Nautilus
(``StreamingEvaluator``, key ``ours_bar_by_bar``). Prints one JSON object as the last line.
"""

from __future__ import annotations

import json
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

from aiopt_lib.nautilus import (
    SignalPlan,
    SpecStrategy,
    SpecStrategyConfig,
    build_engine,
    trades_from_engine,
)
from aiopt_lib.strategy import StrategySpec, compile_signals
from aiopt_lib.streaming import StreamingEvaluator

N_BARS = 100_000
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


def run_ours(bars: pl.DataFrame) -> tuple[float, int]:
    start = time.perf_counter()
    engine, data = build_engine(bars, SPEC)
    plan = SignalPlan.from_signals(compile_signals(SPEC, bars), SPEC.direction)
    strategy = SpecStrategy(
        SpecStrategyConfig(bar_type=data.bar_type, quantity=SPEC.quantity),
        plan,
        data,
        SPEC.instrument_tick_size,
    )
    engine.add_strategy(strategy)
    engine.run()
    trades = trades_from_engine(engine, strategy, data, bars.get_column("ts"))
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed, trades.height


def run_bar_by_bar(bars: pl.DataFrame) -> tuple[float, int]:
    """Ours with the rules evaluated inside Nautilus on each bar (StreamingEvaluator)."""
    start = time.perf_counter()
    engine, data = build_engine(bars, SPEC)
    strategy = SpecStrategy(
        SpecStrategyConfig(bar_type=data.bar_type, quantity=SPEC.quantity),
        None,
        data,
        SPEC.instrument_tick_size,
        evaluator=StreamingEvaluator(SPEC),
        direction=SPEC.direction,
    )
    engine.add_strategy(strategy)
    engine.run()
    trades = trades_from_engine(engine, strategy, data, bars.get_column("ts"))
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed, trades.height


def main() -> None:
    bars = synthetic_bars(N_BARS)
    run_ours(bars.head(2_000))  # warm up imports and numba caches
    peer, peer_trades = run_bare(bars)
    ours, our_trades = run_ours(bars)
    streamed, streamed_trades = run_bar_by_bar(bars)
    print(
        f"bare nautilus EMA cross: {peer:.2f} s ({N_BARS / peer:,.0f} bars/s, {peer_trades} trades)"
    )
    print(f"aiopt SpecStrategy: {ours:.2f} s ({N_BARS / ours:,.0f} bars/s, {our_trades} trades)")
    print(
        f"aiopt SpecStrategy bar by bar: {streamed:.2f} s "
        f"({N_BARS / streamed:,.0f} bars/s, {streamed_trades} trades)"
    )
    print(
        json.dumps(
            {
                "benchmark": "nautilus_generic_vs_bare",
                "ours": round(ours, 2),
                "peer": "bare nautilus EMA cross",
                "peer_value": round(peer, 2),
                "unit": "s",
                "speedup": round(peer / ours, 2),
                "ours_bar_by_bar": round(streamed, 2),
                "bar_by_bar_trades_equal": streamed_trades == our_trades,
            }
        )
    )


if __name__ == "__main__":
    main()
