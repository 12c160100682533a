"""Nautilus confirmation: run a :class:`~aiopt_lib.strategy.spec.StrategySpec` in nautilus_trader's
event-driven ``BacktestEngine`` and return the trades in our trades-frame schema, to confirm the
vectorised engine (:mod:`aiopt_lib.strategy.backtest`) with an independent order, position and account
simulation.

:class:`SpecStrategy` trades the spec's per-bar signals either **precomputed** by
:func:`~aiopt_lib.strategy.spec.compile_signals` (the default, fastest) or evaluated **bar by bar**
inside Nautilus (``run_nautilus(..., mode="bar_by_bar")``: a
:class:`~aiopt_lib.strategy.streaming.StreamingEvaluator` fed each bar as it arrives, the AI gate reading
the predictions by the bar's open time; the same trades). Bar by bar, ``volume`` is Nautilus'
bar volume, made with as many decimals as our volumes have (up to 9). What Nautilus does on its
own here: order lifecycle, latency-free matching
against the quotes, contingent exits, position accounting (HEDGING: one position id per trade),
commissions through a fee model, PnL and the margin account.

How our bars become Nautilus data (converted once, in :func:`build_engine`)
-------------------------------------------------------------------------
* **Quotes.** Each bar becomes four ``QuoteTick``\\ s along TradingView's intrabar path (open,
  then the extreme nearer the open, then the other, then close; ties go open → low → high →
  close), stamped at the bar's open time and ``+ tf/4``, ``+ tf/2``, ``+ 3 tf/4``. The bid/ask
  are the prices our engine fills sells/buys at (:func:`aiopt_lib.strategy.backtest.fill_prices`: the
  bars' bid/ask columns, or the main price ± half the spec's spread), rounded to the tick with
  Pine's rule. The path order is decided on the bid bar (our engine decides it on the exit side's
  bar: identical whenever the spread is constant, which is the case for ``costs.spread`` given in
  pips).
* **Bars** are stamped at their **close** time (``ts + timeframe``), Nautilus' convention, and
  added before the quotes, so at equal times the strategy sees bar ``t`` before bar ``t + 1``'s
  open quote.
* **Fills at the next open.** At bar ``t``'s close the strategy cancels the protective orders it
  is replacing and sets a time alert 1 µs after bar ``t + 1``'s open quote; the market orders are
  sent then and fill against that quote (weekend gaps included). With the spec's
  ``fill="close"`` (TradingView's ``process_orders_on_close``) they are sent at once and fill
  against bar ``t``'s close quote, the current one.

Fill prices (:class:`SpecFillModel`, Nautilus' ``FillModel.get_orderbook_for_fill_simulation``
hook): market orders fill at the quote's ask (buy) / bid (sell) moved ``slippage_ticks`` against
the trader; a triggered stop-loss / trailing stop fills at its trigger level moved by the
slippage, or, when the bar **opens** through it, at the open (the worse price); the take-profit is
a market-if-touched order filled at its level, or at the (better) open when the bar opens through
it, without slippage. Nautilus' default would fill a gapped stop at the trigger price and slip
take-profits too; the hook encodes TradingView's rules instead (module docstring of
:mod:`aiopt_lib.strategy.backtest`).

Exits: the stop-loss (a ``STOP_MARKET``, or with a trailing stop one ``TRAILING_STOP_MARKET``
whose initial trigger is the tighter of the two levels and that only tightens, which is exactly
our "tighter of stop and trail" rule) and the take-profit (``MARKET_IF_TOUCHED``) are submitted
reduce-only when the entry fills, with levels from the actual entry fill ± the signal bar's
distance rounded to the tick (TradingView's ``strategy.exit`` works from the fill price too), as
one OCO order list: Nautilus' matching engine cancels the one left when the other fills. A
Nautilus ``bracket`` would fix the levels before the entry fills, from an expected price.
A position still open at the last bar is closed at market against the last close quote
(``"end"``).

Long runs stream through the engine in chunks of ``chunk_bars`` (:func:`_run_in_chunks`): each
chunk's objects are made just before it runs, closed positions and their orders leave the cache
after it (:class:`_Ledger`), and the portfolio statistics are computed in one pass
(:class:`_OnePassAnalyzer`), so time stays linear in bars and memory holds one chunk of data;
the trades, reports and statistics are those of one run.

Commission: :class:`SpecFeeModel` charges ``commission_per_unit × quantity + commission_percent %
× fill notional`` per fill in the quote currency (USD for EUR/USD), as our engine does.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import polars as pl
from nautilus_trader.analysis.analyzer import PortfolioAnalyzer
from nautilus_trader.analysis.reporter import ReportProvider
from nautilus_trader.backtest.config import (
    BacktestDataConfig,
    BacktestRunConfig,
    BacktestVenueConfig,
    FeeModelConfig,
    ImportableFeeModelConfig,
)
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.backtest.models import FeeModel, FillModel
from nautilus_trader.backtest.node import BacktestNode
from nautilus_trader.common.actor import Actor
from nautilus_trader.common.config import ActorConfig, ImportableFactoryConfig
from nautilus_trader.config import (
    ImportableConfig,
    ImportableStrategyConfig,
    LoggingConfig,
    StrategyConfig,
    TradingNodeConfig,
)
from nautilus_trader.core.data import Data
from nautilus_trader.core.datetime import unix_nanos_to_dt
from nautilus_trader.core.uuid import UUID4
from nautilus_trader.model.book import OrderBook
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.custom import customdataclass
from nautilus_trader.model.data import (
    Bar,
    BarSpecification,
    BarType,
    BookOrder,
    DataType,
    QuoteTick,
)
from nautilus_trader.model.enums import (
    AccountType,
    AggregationSource,
    BarAggregation,
    BookType,
    ContingencyType,
    OmsType,
    OrderSide,
    OrderType,
    PriceType,
    TrailingOffsetType,
    TriggerType,
)
from nautilus_trader.model.identifiers import InstrumentId, Venue
from nautilus_trader.model.objects import QUANTITY_MAX, Money, Price, Quantity
from nautilus_trader.model.orders import (
    MarketIfTouchedOrder,
    OrderList,
    StopMarketOrder,
    TrailingStopMarketOrder,
)
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy

from aiopt_lib.core.atomic import atomic_directory, write_parquet_atomic
from aiopt_lib.core.bars import ensure_bars, infer_timeframe
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.strategy.backtest import EXIT_REASONS, TRADES_SCHEMA, OrderSignals, fill_prices
from aiopt_lib.strategy.spec import StrategySpec, compile_signals
from aiopt_lib.strategy.streaming import BarSignals, StreamingEvaluator, predictions_by_time

VENUE = Venue("SIM")
_ALERT_DELAY_NS = 1_000  # the market orders of a close go out 1 µs after the next open quote
_UNLIMITED = 1e12


def _to_tick(values: np.ndarray | float, tick: float) -> Any:
    """Pine's mintick rounding, as :mod:`aiopt_lib.strategy.backtest` does it."""
    return np.floor(np.asarray(values) / tick + 0.5) * tick


def _ns(series: pl.Series) -> np.ndarray:
    return series.dt.cast_time_unit("ns").dt.replace_time_zone(None).cast(pl.Int64).to_numpy()


# ---------------------------------------------------------------------------------------------
# Venue models


class SpecFeeModelConfig(FeeModelConfig, frozen=True):
    """:class:`SpecFeeModel`'s parameters, for an ``ImportableFeeModelConfig`` (BacktestNode)."""

    per_unit: float = 0.0
    percent: float = 0.0


class SpecFeeModel(FeeModel):
    """Commission per fill: ``per_unit × quantity + percent / 100 × price × quantity`` in the
    instrument's quote currency (the spec's :class:`~aiopt_lib.strategy.spec.Costs`). Built from the
    two numbers, or from a :class:`SpecFeeModelConfig` (how Nautilus' ``FeeModelFactory``
    builds it)."""

    def __init__(
        self, per_unit: float = 0.0, percent: float = 0.0, config: SpecFeeModelConfig | None = None
    ) -> None:
        super().__init__()
        if config is not None:
            per_unit, percent = config.per_unit, config.percent
        self.per_unit = per_unit
        self.fraction = percent / 100.0

    def get_commission(self, order: Any, fill_qty: Any, fill_px: Any, instrument: Any) -> Money:
        """The commission of one fill."""
        qty = float(fill_qty)
        value = self.per_unit * qty + self.fraction * float(fill_px) * qty
        return Money(value, instrument.quote_currency)


class SpecFillModel(FillModel):
    """TradingView's broker-emulator fill prices inside Nautilus (module docstring).

    ``open_ns`` are the times of the bars' open quotes: a stop or take triggered there was
    gapped through and fills at the open. ``now`` returns the engine clock's time (set after
    the engine exists).
    """

    def __init__(self, slippage: float, tick: float, open_ns: np.ndarray) -> None:
        super().__init__(prob_fill_on_limit=1.0, prob_slippage=0.0)
        self.slippage = slippage
        self.tick = tick
        self.open_ns = open_ns
        self.now: Any = None

    def _at_open(self) -> bool:
        now = self.now()
        i = int(np.searchsorted(self.open_ns, now))
        return i < len(self.open_ns) and int(self.open_ns[i]) == now

    def get_orderbook_for_fill_simulation(
        self, instrument: Any, order: Any, best_bid: Price, best_ask: Price
    ) -> OrderBook | None:
        """A one-level book at the price the order fills at (see the class docstring)."""
        buy = order.side == OrderSide.BUY
        sign = 1.0 if buy else -1.0
        market = float(best_ask if buy else best_bid)
        kind = order.order_type
        if kind == OrderType.MARKET:
            price = market + sign * self.slippage
        elif kind in (OrderType.STOP_MARKET, OrderType.TRAILING_STOP_MARKET):
            level = float(order.trigger_price)
            # a gap through the stop fills at the (worse) open
            base = market if self._at_open() and sign * market > sign * level else level
            price = base + sign * self.slippage
        elif kind == OrderType.MARKET_IF_TOUCHED:
            level = float(order.trigger_price)
            price = market if self._at_open() and sign * market < sign * level else level
        else:
            return None
        fill = Price(float(_to_tick(price, self.tick)), instrument.price_precision)
        other = Price(
            float(fill) + (-1 if buy else 1) * instrument.price_increment.as_double(),
            instrument.price_precision,
        )
        book = OrderBook(instrument_id=instrument.id, book_type=BookType.L2_MBP)
        size = Quantity(_UNLIMITED, instrument.size_precision)
        ask, bid = (fill, other) if buy else (other, fill)
        book.add(BookOrder(OrderSide.BUY, bid, size, 1), 0, 0)
        book.add(BookOrder(OrderSide.SELL, ask, size, 2), 0, 0)
        return book


# ---------------------------------------------------------------------------------------------
# Data conversion


def _instrument(spec: StrategySpec) -> Any:
    symbol = spec.instrument.replace("/", "").upper()
    if len(symbol) != 6 or not symbol.isalpha():
        raise ConfigError(f"Nautilus confirmation supports FX pairs like EURUSD, got {symbol!r}")
    instrument = TestInstrumentProvider.default_fx_ccy(f"{symbol[:3]}/{symbol[3:]}", VENUE)
    tick = instrument.price_increment.as_double()
    if not math.isclose(tick, spec.instrument_tick_size, rel_tol=1e-9):
        raise ConfigError(
            f"the spec's tick size {spec.instrument_tick_size} differs from Nautilus' "
            f"{spec.instrument} price increment {tick}"
        )
    return instrument


def _bar_type(instrument: Any, timeframe: dt.timedelta, sides: bool) -> BarType:
    seconds = int(timeframe.total_seconds())
    if seconds < 1:
        raise ConfigError(f"timeframe {timeframe} is below one second")
    units = (
        (86_400, BarAggregation.DAY),
        (3_600, BarAggregation.HOUR),
        (60, BarAggregation.MINUTE),
        (1, BarAggregation.SECOND),
    )
    unit, aggregation = next((u, a) for u, a in units if seconds % u == 0)
    step = seconds // unit
    # with bid/ask columns the main prices are the bid (bars convention); otherwise unknown: MID
    price_type = PriceType.BID if sides else PriceType.MID
    spec = BarSpecification(step, aggregation, price_type)
    return BarType(instrument.id, spec, AggregationSource.EXTERNAL)


def quote_path(
    buy: np.ndarray, sell: np.ndarray, tick: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The four quotes of every bar along TradingView's intrabar path: ``(bid, ask, order)``
    with ``bid``/``ask`` of shape ``(n, 4)`` in path order and ``order`` the index (0 open,
    1 high, 2 low, 3 close) of each path point. ``buy``/``sell`` are :func:`fill_prices`'
    ``(4, n)`` arrays; the path is decided on the sell (bid) bar, ties going open → low → high."""
    o, h, lo = sell[0], sell[1], sell[2]
    high_first = (o - lo) - (h - o) > 0.5 * tick
    order = np.where(high_first[:, None], [0, 1, 2, 3], [0, 2, 1, 3])
    bid = _to_tick(np.take_along_axis(sell.T, order, axis=1), tick)
    ask = _to_tick(np.take_along_axis(buy.T, order, axis=1), tick)
    return bid, ask, order


@dataclass(frozen=True)
class NautilusData:
    """What :func:`build_engine` converted: the instrument, the bar type, the bars' open and
    close times (ns) and the timeframe."""

    instrument: Any
    bar_type: BarType
    open_ns: np.ndarray
    close_ns: np.ndarray
    timeframe: dt.timedelta


@dataclass(frozen=True)
class _RawData:
    """Our bars as the arrays Nautilus' objects are made of (:func:`_convert_arrays`), so that a
    long run makes its ``Bar`` and ``QuoteTick`` objects one chunk at a time (:func:`_objects`).
    ``quote_*`` hold four quotes per bar and one after the last close."""

    data: NautilusData
    quote_ns: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    ohlc: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    volume: np.ndarray
    volume_precision: int
    stamps: np.ndarray

    @property
    def n_bars(self) -> int:
        return len(self.stamps)


def _convert_arrays(bars: pl.DataFrame, spec: StrategySpec) -> _RawData:
    """Our bars as Nautilus data arrays (module docstring)."""
    bars = ensure_bars(bars)
    if bars.height < 2:
        raise ConfigError("need at least two bars")
    config = spec.execution_config()
    tick = config.tick_size
    instrument = _instrument(spec)
    timeframe = infer_timeframe(bars)
    if timeframe is None:
        raise ConfigError("cannot infer the bars' timeframe")
    tf_ns = int(timeframe.total_seconds() * 1e9)
    open_ns = _ns(bars.get_column("ts"))
    close_ns = open_ns + tf_ns
    buy, sell = fill_prices(bars, config)
    bid, ask, _ = quote_path(buy, sell, tick)
    offsets = np.array([0, tf_ns // 4, tf_ns // 2, 3 * tf_ns // 4], dtype=np.int64)
    quote_ns = (open_ns[:, None] + offsets[None, :]).ravel()
    # one more quote after the last bar's close: the end-of-data close fills against it
    end_ns = close_ns[-1] + _ALERT_DELAY_NS
    sides = all(f"{s}_{c}" in bars.columns for s in ("bid", "ask") for c in ("open", "close"))
    volume = np.array(bars.get_column("volume").to_numpy(), dtype=np.float64)  # writable
    too_large = np.flatnonzero(volume > QUANTITY_MAX)
    if too_large.size:
        row = int(too_large[0])
        raise ConfigError(
            f"bars row {row}: volume {volume[row]:g} exceeds Nautilus' largest quantity "
            f"{QUANTITY_MAX:g}"
        )
    ohlc = tuple(
        np.ascontiguousarray(_to_tick(bars.get_column(c).to_numpy(), tick))
        for c in ("open", "high", "low", "close")
    )
    return _RawData(
        data=NautilusData(
            instrument, _bar_type(instrument, timeframe, sides), open_ns, close_ns, timeframe
        ),
        quote_ns=np.append(quote_ns, end_ns).astype(np.uint64),
        bid=np.append(bid.ravel(), bid[-1, 3]),
        ask=np.append(ask.ravel(), ask[-1, 3]),
        ohlc=ohlc,  # type: ignore[arg-type]
        volume=volume,
        volume_precision=_volume_precision(volume),
        stamps=close_ns.astype(np.uint64),
    )


def _volume_precision(volume: np.ndarray) -> int:
    """The fewest decimals (at most 9) that hold every volume: the bars' size precision, so a
    strategy reading ``bar.volume`` sees our volumes (to the last bit with up to 9 decimals;
    within a unit in the last place beyond)."""
    finite = volume[np.isfinite(volume)]
    for decimals in range(10):
        if np.array_equal(np.round(finite, decimals), finite):
            return decimals
    return 9


def _objects(raw: _RawData, lo: int, hi: int) -> tuple[list[Bar], list[Any]]:
    """The close-stamped ``Bar``\\ s of bars ``lo:hi`` and their quotes (with the quote after
    the last close when ``hi`` is the end). Every object of a chunk is stamped no later than
    any of the next chunk's, so chunks replay in the order of one whole run."""
    instrument, bar_type = raw.data.instrument, raw.data.bar_type
    prec = instrument.price_precision
    q_hi = 4 * hi + (1 if hi == raw.n_bars else 0)
    q = slice(4 * lo, q_hi)
    stamps = raw.quote_ns[q]
    sizes = np.full(len(stamps), 1e9)
    quotes = QuoteTick.from_raw_arrays_to_list(
        instrument.id, prec, instrument.size_precision,
        np.ascontiguousarray(raw.bid[q]), np.ascontiguousarray(raw.ask[q]),
        sizes, sizes, stamps, stamps,
    )  # fmt: skip
    b = slice(lo, hi)
    ohlc = [np.ascontiguousarray(column[b]) for column in raw.ohlc]
    bar_stamps = np.ascontiguousarray(raw.stamps[b])
    volume = np.ascontiguousarray(raw.volume[b])
    nautilus_bars = Bar.from_raw_arrays_to_list(
        bar_type, prec, raw.volume_precision, *ohlc, volume, bar_stamps, bar_stamps
    )
    return nautilus_bars, quotes


def _convert(bars: pl.DataFrame, spec: StrategySpec) -> tuple[NautilusData, list[Bar], list[Any]]:
    """Our bars as Nautilus data (module docstring): the converted :class:`NautilusData`, the
    close-stamped bars and the quotes (four per bar and one after the last close)."""
    raw = _convert_arrays(bars, spec)
    nautilus_bars, quotes = _objects(raw, 0, raw.n_bars)
    return raw.data, nautilus_bars, quotes


def _venue_kwargs(spec: StrategySpec) -> dict[str, Any]:
    """The simulated venue's settings, shared by :func:`build_engine` and the node's
    ``BacktestVenueConfig`` (:func:`backtest_run_config`)."""
    return {
        "oms_type": OmsType.HEDGING,
        "account_type": AccountType.MARGIN,
        "base_currency": USD,
        "starting_balances": [Money(spec.initial_capital, USD)],
        "default_leverage": Decimal(100),
        "bar_execution": False,
    }


def _empty_engine(data: NautilusData, spec: StrategySpec, log_level: str) -> BacktestEngine:
    """The engine of :func:`build_engine` with the venue and the instrument, no data yet.
    Nautilus' post-run analysis is off (``run_analysis=False``): it appends one pandas row per
    position, quadratic in trades; :func:`_statistics` computes the same figures in one pass."""
    config = spec.execution_config()
    tick = config.tick_size
    engine = BacktestEngine(
        BacktestEngineConfig(
            logging=LoggingConfig(log_level=log_level, bypass_logging=True), run_analysis=False
        )
    )
    fill_model = SpecFillModel(config.slippage_ticks * tick, tick, data.open_ns)
    engine.add_venue(
        venue=VENUE,
        fill_model=fill_model,
        fee_model=SpecFeeModel(config.commission_per_unit, config.commission_percent),
        **_venue_kwargs(spec),
    )
    fill_model.now = engine.kernel.clock.timestamp_ns
    engine.add_instrument(data.instrument)
    return engine


def build_engine(
    bars: pl.DataFrame, spec: StrategySpec, *, log_level: str = "ERROR"
) -> tuple[BacktestEngine, NautilusData]:
    """A ``BacktestEngine`` with a simulated FX venue (margin account, USD base, leverage 100,
    starting balance ``spec.initial_capital``, HEDGING positions, L1 book, no latency), the
    instrument, the quotes and the close-stamped bars built from ``bars`` (module docstring), the
    spec's commission (:class:`SpecFeeModel`) and fill prices (:class:`SpecFillModel`).

    Returns the engine (no strategy added yet) and the converted :class:`NautilusData`. All the
    data is loaded at once; :func:`run_nautilus_full` streams long runs in chunks instead.
    """
    data, nautilus_bars, quotes = _convert(bars, spec)
    engine = _empty_engine(data, spec, log_level)
    # bars first: at equal times the strategy sees bar t before bar t + 1's open quote
    engine.add_data(nautilus_bars)
    engine.add_data(quotes)
    return engine, data


# ---------------------------------------------------------------------------------------------
# The strategy


@dataclass(frozen=True)
class SignalPlan:
    """The spec's signals resolved as our engine resolves them (``direction``, conflicts and
    ``allow_entry_in``), per bar: ``want_long``, ``want_short``, ``exit_long``, ``exit_short``
    and the NaN-for-none distances."""

    want_long: np.ndarray
    want_short: np.ndarray
    exit_long: np.ndarray
    exit_short: np.ndarray
    stop: np.ndarray
    take: np.ndarray
    trail: np.ndarray

    @classmethod
    def from_signals(cls, signals: OrderSignals, direction: str) -> SignalPlan:
        """Resolve ``signals`` for ``direction`` (the rules of :func:`aiopt_lib.strategy.backtest.run_backtest`)."""
        n = len(signals.long_entry)
        allow_long = direction in ("long", "both")
        allow_short = direction in ("short", "both")
        long_entry = np.asarray(signals.long_entry, dtype=bool)
        short_entry = np.asarray(signals.short_entry, dtype=bool)
        want_long = long_entry & allow_long
        want_short = short_entry & allow_short
        conflict = want_long & want_short

        def distance(values: np.ndarray | None) -> np.ndarray:
            if values is None:
                return np.full(n, np.nan)
            array = np.asarray(values, dtype=np.float64).copy()
            array[~(array > 0) | np.isinf(array)] = np.nan
            return array

        return cls(
            want_long=want_long & ~conflict,
            want_short=want_short & ~conflict,
            exit_long=np.asarray(signals.long_exit, dtype=bool) | (short_entry & (not allow_short)),
            exit_short=np.asarray(signals.short_exit, dtype=bool) | (long_entry & (not allow_long)),
            stop=distance(signals.stop_distance),
            take=distance(signals.take_distance),
            trail=distance(signals.trail_distance),
        )

    @classmethod
    def empty(cls, n: int) -> SignalPlan:
        """A plan of ``n`` bars with no signals and no distances, filled bar by bar by
        :meth:`set_bar` (the ``"bar_by_bar"`` mode of :class:`SpecStrategy`)."""
        never = np.zeros(n, dtype=bool)
        nan = np.full(n, np.nan)
        return cls(never, never.copy(), never.copy(), never.copy(), nan, nan.copy(), nan.copy())

    def set_bar(self, t: int, signals: BarSignals, direction: str) -> None:
        """Resolve one bar's :class:`~aiopt_lib.strategy.streaming.BarSignals` into row ``t``, with the
        rules of :meth:`from_signals`."""
        allow_long = direction in ("long", "both")
        allow_short = direction in ("short", "both")
        want_long = signals.long_entry and allow_long
        want_short = signals.short_entry and allow_short
        conflict = want_long and want_short
        self.want_long[t] = want_long and not conflict
        self.want_short[t] = want_short and not conflict
        self.exit_long[t] = signals.long_exit or (signals.short_entry and not allow_short)
        self.exit_short[t] = signals.short_exit or (signals.long_entry and not allow_long)
        for name, value in (
            ("stop", signals.stop_distance),
            ("take", signals.take_distance),
            ("trail", signals.trail_distance),
        ):
            getattr(self, name)[t] = value if value > 0 and not math.isinf(value) else np.nan


@customdataclass
class SignalPrediction(Data):
    """A signal model's class probabilities for one bar, as Nautilus custom data: published by
    :class:`PredictionActor` when the bar closes (``ts_event``: the bar's close time), read by
    :class:`SpecStrategy`'s AI gate. ``bar_open_ns`` is the bar's open time (our ``ts``)."""

    # the field types as objects: customdataclass reads them, and this module's annotations are
    # postponed (strings)
    __annotations__ = {
        "bar_open_ns": int,
        "prob_buy": float,
        "prob_sell": float,
        "prob_hold": float,
    }
    bar_open_ns = 0
    prob_buy = math.nan
    prob_sell = math.nan
    prob_hold = math.nan


PREDICTIONS = DataType(SignalPrediction)

# (bar open time ns, the bar) -> the model's probabilities by column, or None for no prediction
Predictor = Callable[[int, Bar], Mapping[str, float] | None]


def frame_predictor(predictions: pl.DataFrame) -> Predictor:
    """A :data:`Predictor` reading a predictions frame (``ts`` = the bar's open time and the
    ``prob_*`` columns) by the bar's open time, as :func:`~aiopt_lib.strategy.spec.compile_signals`
    aligns it; a live actor calls the model on the bar instead."""
    columns = {c for c in predictions.columns if c.startswith("prob_")}
    table = predictions_by_time(predictions, columns) or {}
    return lambda open_ns, _bar: table.get(open_ns)


class PredictionActorConfig(ActorConfig, frozen=True):
    """:class:`PredictionActor`'s bar type."""

    bar_type: BarType


class PredictionActor(Actor):
    """Publishes the signal model's prediction for each bar as a :class:`SignalPrediction`
    (custom data on the message bus) when the bar closes, how a model serves a live strategy.

    ``predict(bar_open_ns, bar)`` returns ``{"prob_buy": .., "prob_sell": .., "prob_hold": ..}``
    (missing columns are NaN) or None (no prediction: the AI gate stays closed). Added to the
    engine before the strategy, its bar handler runs first, so the prediction for a bar is on
    the bus when the strategy evaluates that bar (publishing is synchronous)."""

    def __init__(self, config: PredictionActorConfig, predict: Predictor) -> None:
        super().__init__(config)
        self.predict = predict
        self.published = 0

    def on_start(self) -> None:
        """Subscribe to the bars."""
        self._timeframe_ns = self.config.bar_type.spec.timedelta.value
        self.subscribe_bars(self.config.bar_type)

    def on_bar(self, bar: Bar) -> None:
        """Predict this bar and publish it."""
        open_ns = bar.ts_event - self._timeframe_ns
        probabilities = self.predict(open_ns, bar)
        if probabilities is None:
            return
        prediction = SignalPrediction(
            bar.ts_event,
            bar.ts_init,
            bar_open_ns=open_ns,
            **{k: float(v) for k, v in probabilities.items() if k.startswith("prob_")},
        )
        self.publish_data(PREDICTIONS, prediction)
        self.published += 1


class SpecStrategyConfig(StrategyConfig, frozen=True):
    """Nautilus config of :class:`SpecStrategy`: the bar type, the order quantity and whether
    market orders fill at the signal bar's close (the spec's ``fill="close"``, TradingView's
    ``process_orders_on_close``) instead of the next bar's open."""

    bar_type: BarType
    quantity: float = 100_000.0
    fill_at_close: bool = False


class SpecStrategy(Strategy):
    """A StrategySpec as a Nautilus strategy, in one of two modes.

    * precomputed (``plan``): the spec's signals computed by
      :func:`~aiopt_lib.strategy.spec.compile_signals` (a :class:`SignalPlan`, indexed by the bars'
      close times);
    * bar by bar (``evaluator``, a :class:`~aiopt_lib.strategy.streaming.StreamingEvaluator`, and the
      spec's ``direction``): each bar's rules, distances and AI gate are evaluated in
      :meth:`on_bar` from that bar's own prices and the bars before it, as a live strategy must;
      the values equal the precomputed ones (:mod:`aiopt_lib.strategy.streaming`).

    On each bar ``t`` (at its close): the last bar closes an open position (``"end"``);
    otherwise the target position follows our engine's rules (flat: an entry opens; in a
    position: an opposite entry reverses, else the side's exit closes; same-side entries are
    ignored). A change cancels the protective orders now and sends the market orders 1 µs after
    bar ``t + 1``'s open quote (close first, then the new entry), or at once with
    ``fill_at_close`` (they fill at bar ``t``'s close quote). On the entry fill the stop /
    trailing stop and the take-profit are placed from the fill price (module docstring).
    ``reasons`` maps each closing order's client id to our exit reason, ``fill_bars`` each
    market order's to the bar it fills in.
    """

    def __init__(
        self,
        config: SpecStrategyConfig,
        plan: SignalPlan | None,
        data: NautilusData,
        tick: float,
        *,
        evaluator: StreamingEvaluator | None = None,
        direction: str = "both",
        received: dict[int, dict[str, float]] | None = None,
    ) -> None:
        super().__init__(config)
        # the mapping the evaluator reads predictions from, filled by on_data (actor mode)
        self.received = received
        if (plan is None) == (evaluator is None):
            raise ConfigError("give SpecStrategy either a precomputed plan or an evaluator")
        # bar by bar, the plan is filled as the bars arrive: row t is written at bar t's close
        self.plan = plan if plan is not None else SignalPlan.empty(len(data.close_ns))
        self.evaluator = evaluator
        self.direction = direction
        self.timeframe_ns = int(data.timeframe.total_seconds() * 1e9)
        self.tick = tick
        self.open_ns = data.open_ns
        self.index = {int(t): i for i, t in enumerate(data.close_ns)}
        self.instrument_id = config.bar_type.instrument_id
        self.last = len(data.close_ns) - 1
        self.reasons: dict[str, str] = {}
        # market order id -> the bar it fills in: a close fill happens at the bar's close time,
        # which is also the next bar's open time, so the time alone cannot tell the bar
        self.fill_bars: dict[str, int] = {}
        self.stop_levels: dict[str, float] = {}  # position id -> stop-loss level (with a trail)
        self._entry_bar: dict[str, int] = {}  # entry order id -> signal bar
        self._protective: list[Any] = []
        self._position: Any = None  # the open Position
        self._side = 0
        self._quantity: Quantity | None = None

    def on_start(self) -> None:
        """Subscribe to the signal bars (and to the model's predictions when they come from
        a :class:`PredictionActor`)."""
        instrument = self.cache.instrument(self.instrument_id)
        self._quantity = instrument.make_qty(self.config.quantity)
        if self.received is not None:
            self.subscribe_data(PREDICTIONS)
        self.subscribe_bars(self.config.bar_type)

    def on_data(self, data: Any) -> None:
        """A :class:`SignalPrediction`: kept by its bar's open time for the AI gate."""
        if isinstance(data, SignalPrediction) and self.received is not None:
            self.received[data.bar_open_ns] = {
                "prob_buy": data.prob_buy,
                "prob_sell": data.prob_sell,
                "prob_hold": data.prob_hold,
            }

    def on_bar(self, bar: Bar) -> None:
        """Resolve the close of bar ``t`` (class docstring)."""
        t = self.index[bar.ts_event]
        plan = self.plan
        if self.evaluator is not None:
            # the rules on this bar's own prices; the bar is stamped at its close
            signals = self.evaluator.update(
                bar.open.as_double(),
                bar.high.as_double(),
                bar.low.as_double(),
                bar.close.as_double(),
                bar.volume.as_double(),
                bar.ts_event - self.timeframe_ns,
            )
            plan.set_bar(t, signals, self.direction)
        pos = self._side
        if t == self.last:
            if pos != 0:
                self._cancel_protective()
                self._close("end", t)
            return
        if pos == 1:
            target = -1 if plan.want_short[t] else (0 if plan.exit_long[t] else 1)
        elif pos == -1:
            target = 1 if plan.want_long[t] else (0 if plan.exit_short[t] else -1)
        else:
            target = 1 if plan.want_long[t] else (-1 if plan.want_short[t] else 0)
        if target == pos:
            return
        self._cancel_protective()
        if self.config.fill_at_close:
            self._act(t, target)  # against bar t's close quote, the current one
            return
        self._schedule(t, target)

    def _schedule(self, t: int, target: int) -> None:
        """Send signal bar ``t``'s market orders 1 µs after bar ``t + 1``'s open quote: a time
        alert on the engine's clock, which is the data's time in a backtest. A live node's clock
        is the wall clock, not the data's, so :mod:`aiopt_lib.live` overrides this hook and sends
        them on that quote instead."""
        alert_ns = int(self.open_ns[t + 1]) + _ALERT_DELAY_NS
        self.clock.set_time_alert_ns(
            f"fill-{t}", alert_ns, lambda _event, t=t, target=target: self._act(t, target)
        )

    def _act(self, t: int, target: int) -> None:
        """Send the market orders of signal bar ``t`` (close first, then the new entry)."""
        fill_bar = t if self.config.fill_at_close else t + 1
        if self._side != 0 and self._side != target:
            self._close("reverse" if target != 0 else "signal", fill_bar)
        if target != 0 and self._side == 0:
            side = OrderSide.BUY if target == 1 else OrderSide.SELL
            order = self.order_factory.market(self.instrument_id, side, self._quantity)
            self._entry_bar[order.client_order_id.value] = t
            self.fill_bars[order.client_order_id.value] = fill_bar
            self._side = target  # reserved; the fill opens the position
            self.submit_order(order)

    def _close(self, reason: str, fill_bar: int) -> None:
        side = OrderSide.SELL if self._side == 1 else OrderSide.BUY
        order = self.order_factory.market(
            self.instrument_id, side, self._quantity, reduce_only=True
        )
        self.reasons[order.client_order_id.value] = reason
        self.fill_bars[order.client_order_id.value] = fill_bar
        self._side = 0
        self.submit_order(order, position_id=self._position.id)

    def _cancel_protective(self) -> None:
        for order in self._protective:
            if order.is_open:
                self.cancel_order(order)
        self._protective = []

    def on_position_opened(self, event: Any) -> None:
        """Keep the open position."""
        self._position = self.cache.position(event.position_id)

    def on_order_filled(self, event: Any) -> None:
        """Entry fill: place the protective orders. Protective fill: the position is flat (the
        venue cancels the other leg of an OCO pair)."""
        order_id = event.client_order_id.value
        t = self._entry_bar.pop(order_id, None)
        if t is not None:
            self._protect(event, t)
            return
        if any(o.client_order_id == event.client_order_id for o in self._protective):
            self._side = 0
            self._protective = []

    def _protect(self, event: Any, t: int) -> None:
        """The exit legs of the entry filled by ``event`` (signal bar ``t``), levels from the
        fill price: the stop (or trailing stop) and the take-profit, reduce-only on the
        position, as one OCO order list when both exist (a bracket's exit legs: Nautilus'
        matching engine cancels the one left when the other fills)."""
        px = event.last_px.as_double()
        sign = 1 if event.order_side == OrderSide.BUY else -1
        plan, tick = self.plan, self.tick
        precision = event.last_px.precision
        stop_d, take_d, trail_d = plan.stop[t], plan.take[t], plan.trail[t]
        stop = float(_to_tick(px - sign * stop_d, tick)) if not math.isnan(stop_d) else math.nan
        if not (math.isnan(stop) or math.isnan(trail_d)):
            self.stop_levels[event.position_id.value] = stop
        legs: list[tuple[type, dict[str, Any]]] = []
        if not math.isnan(trail_d):
            offset = float(_to_tick(trail_d, tick))
            level = px - sign * offset
            if not math.isnan(stop) and sign * stop >= sign * level:
                level = stop
            legs.append(
                (
                    TrailingStopMarketOrder,
                    {
                        "trigger_price": Price(level, precision),
                        "trailing_offset": Decimal(f"{offset:.{precision}f}"),
                        "trailing_offset_type": TrailingOffsetType.PRICE,
                    },
                )
            )
        elif not math.isnan(stop):
            legs.append((StopMarketOrder, {"trigger_price": Price(stop, precision)}))
        if not math.isnan(take_d):
            take = float(_to_tick(px + sign * take_d, tick))
            legs.append((MarketIfTouchedOrder, {"trigger_price": Price(take, precision)}))
        if not legs:
            return
        ids = [self.order_factory.generate_client_order_id() for _ in legs]
        oco = len(legs) == 2
        list_id = self.order_factory.generate_order_list_id() if oco else None
        orders = [
            kind(
                trader_id=self.trader_id,
                strategy_id=self.id,
                instrument_id=self.instrument_id,
                client_order_id=client_order_id,
                order_side=OrderSide.SELL if sign == 1 else OrderSide.BUY,
                quantity=self._quantity,
                trigger_type=TriggerType.BID_ASK,
                init_id=UUID4(),
                ts_init=self.clock.timestamp_ns(),
                reduce_only=True,
                contingency_type=ContingencyType.OCO if oco else ContingencyType.NO_CONTINGENCY,
                order_list_id=list_id,
                linked_order_ids=[i for i in ids if i != client_order_id] if oco else None,
                **fields,
            )
            for (kind, fields), client_order_id in zip(legs, ids, strict=True)
        ]
        for order in orders:
            self.reasons[order.client_order_id.value] = _protective_reason(order)
        if oco:
            self.submit_order_list(OrderList(list_id, orders), position_id=event.position_id)
        else:
            self.submit_order(orders[0], position_id=event.position_id)
        self._protective = orders


def _protective_reason(order: Any) -> str:
    if order.order_type == OrderType.MARKET_IF_TOUCHED:
        return "take"
    if order.order_type == OrderType.TRAILING_STOP_MARKET:
        return "trail"
    return "stop"


# ---------------------------------------------------------------------------------------------
# Running and reading back


_TRADE_SCHEMA = TRADES_SCHEMA


def _trades(
    positions: Sequence[Any],
    orders: Mapping[str, Any],
    strategy: SpecStrategy,
    data: NautilusData,
    bars_ts: pl.Series,
) -> pl.DataFrame:
    """Our trades frame from Nautilus positions (:func:`trades_from_engine`); ``orders`` maps
    client order ids to the orders (to read a trailing stop's final level)."""
    rows: dict[str, list[Any]] = {name: [] for name in _TRADE_SCHEMA}
    closed = sorted((p for p in positions if p.is_closed), key=lambda p: p.ts_opened)
    stops = strategy.stop_levels
    for position in closed:
        closing = position.closing_order_id.value
        entry_i = strategy.fill_bars.get(position.opening_order_id.value)
        if entry_i is None:
            entry_i = int(np.searchsorted(data.open_ns, position.ts_opened, side="right")) - 1
        exit_i = strategy.fill_bars.get(closing)
        if exit_i is None:  # a stop or take: filled at a quote inside its bar
            exit_i = int(np.searchsorted(data.open_ns, position.ts_closed, side="right")) - 1
            exit_i = min(exit_i, len(data.open_ns) - 1)  # the quote after the last close
        reason = strategy.reasons.get(closing, "signal")
        if reason == "trail" and stops.get(position.id.value) is not None:
            trail_order = orders[closing]
            if math.isclose(trail_order.trigger_price.as_double(), stops[position.id.value]):
                reason = "stop"
        entry_px, exit_px = position.avg_px_open, position.avg_px_close
        qty = position.peak_qty.as_double()
        pnl = position.realized_pnl.as_double()
        costs = sum(c.as_double() for c in position.commissions())
        rows["entry_ts"].append(bars_ts[entry_i])
        rows["exit_ts"].append(bars_ts[exit_i])
        rows["side"].append("long" if position.entry == OrderSide.BUY else "short")
        rows["entry_price"].append(entry_px)
        rows["exit_price"].append(exit_px)
        rows["quantity"].append(qty)
        rows["pnl"].append(pnl)
        rows["return"].append(pnl / (entry_px * qty))
        rows["costs"].append(costs)
        rows["exit_reason"].append(reason)
        rows["bars_held"].append(exit_i - entry_i)
    assert set(rows["exit_reason"]) <= set(EXIT_REASONS)
    return pl.DataFrame(rows, schema=_TRADE_SCHEMA)


def trades_from_engine(
    engine: BacktestEngine,
    strategy: SpecStrategy,
    data: NautilusData,
    bars_ts: pl.Series,
) -> pl.DataFrame:
    """Our trades frame from the engine's closed positions: times are the ``ts`` (open time) of
    the bars the fills happened in; ``pnl`` is Nautilus' realized PnL (after commissions);
    ``exit_reason`` from the closing order (a trailing stop that exits at the stop-loss level
    reports ``"stop"``, as our engine does)."""
    orders = {o.client_order_id.value: o for o in engine.cache.orders()}
    return _trades(engine.cache.positions(), orders, strategy, data, bars_ts)


class _Ledger:
    """Every position and order of a run, kept here as the engine's cache is purged.

    Nautilus' portfolio walks all of an instrument's cached positions on every position event
    (``Portfolio._calculate_realized_pnl``), so a run slows down as trades accumulate: per bar,
    about 1.6x slower at 1M one-minute bars than at 100k (with Nautilus' post-run analysis).
    :meth:`take` moves closed positions and their orders out of the cache between chunks, which
    keeps the cost per bar flat; the account, its balances and events, stay in the engine.
    """

    def __init__(self) -> None:
        self.positions: dict[str, Any] = {}
        self.orders: dict[str, Any] = {}

    def take(self, engine: BacktestEngine, *, purge: bool) -> None:
        """Record the cache's positions and orders (all of them: the open ones are recorded
        again, with their later state, at the next take); purge the closed ones."""
        cache = engine.cache
        for position in cache.positions():
            self.positions[position.id.value] = position
        for order in cache.orders():
            self.orders[order.client_order_id.value] = order
        if purge:
            # A closed position goes with its orders, once all of them are closed. Not
            # Cache.purge_closed_orders: it also purges the filled entry order of a position
            # still open, whose id stays in the position's order index, and the next fill on
            # that position then fails with a KeyError (nautilus_trader 1.221).
            for position in cache.positions_closed():
                orders = cache.orders_for_position(position.id)
                if all(order.is_closed for order in orders):
                    for order in orders:
                        cache.purge_order(order.client_order_id)
                    cache.purge_position(position.id)


class _OnePassAnalyzer(PortfolioAnalyzer):
    """Nautilus' ``PortfolioAnalyzer`` with ``add_positions`` building its two series in one
    pass: the parent appends one ``.loc`` row per position (quadratic in trades: 40 s of an 86 s
    run at 36k trades). Same values and order: realized PnL by position id, realized returns
    summed by close time."""

    def add_positions(self, positions: list[Any]) -> None:
        """Add the positions' realized PnLs and returns (one pass)."""
        self._positions += positions
        pnls: dict[Any, dict[str, float]] = {}
        for currency, series in self._realized_pnls.items():
            pnls[currency] = dict(series.items())
        returns: dict[Any, float] = dict(self._returns.items())
        for position in positions:
            pnl = position.realized_pnl
            pnls.setdefault(pnl.currency, {})[position.id.value] = pnl.as_double()
            stamp = unix_nanos_to_dt(position.ts_closed)
            returns[stamp] = returns.get(stamp, 0.0) + float(position.realized_return)
        self._realized_pnls = {c: pd.Series(v, dtype="float64") for c, v in pnls.items()}
        self._returns = pd.Series(returns, dtype="float64")


def _statistics(
    engine: BacktestEngine, positions: list[Any], currency: Any, trades: int
) -> dict[str, float]:
    """The portfolio analyzer's PnL, returns and general statistics of ``positions`` with the
    statistics the engine's own analyzer has registered, computed by :class:`_OnePassAnalyzer`;
    plus ``"Trades"``."""
    analyzer = _OnePassAnalyzer()
    # the engine's registered statistics (Nautilus keeps no public list of them)
    for statistic in engine.portfolio.analyzer._statistics.values():
        analyzer.register_statistic(statistic)
    account = engine.cache.account_for_venue(VENUE)
    analyzer.calculate_statistics(account, positions)
    statistics: dict[str, float] = {}
    sections = (
        analyzer.get_performance_stats_pnls(currency),
        analyzer.get_performance_stats_returns(),
        analyzer.get_performance_stats_general(),
    )
    for section in sections:
        for key, value in section.items():
            statistics[key] = math.nan if value is None else float(value)
    statistics["Trades"] = float(trades)
    return statistics


@dataclass(frozen=True)
class NautilusRun:
    """Everything one Nautilus run reports (:func:`run_nautilus_full`, :func:`run_from_catalog`).

    ``trades``: our trades-frame schema (:func:`trades_from_engine`). ``fills``, ``positions``,
    ``account``: Nautilus' own reports (``ReportProvider.generate_order_fills_report``,
    ``generate_positions_report`` over every order and position of the run, also those purged
    from the cache between chunks, and ``generate_account_report``) as polars frames, the
    pandas index as the first column; quantities, prices and money amounts (``"331.00 USD"``:
    the currency is the account's) become floats, other objects their text. ``statistics``:
    the portfolio analyzer's PnL
    statistics (in the account currency), its returns statistics (computed by Nautilus on
    **daily** account returns, annualised over 252 days) and its general statistics, under
    Nautilus' own names, plus ``"Trades"`` (closed positions).
    """

    trades: pl.DataFrame
    fills: pl.DataFrame
    positions: pl.DataFrame
    account: pl.DataFrame
    statistics: dict[str, float]


_AMOUNT = re.compile(r"^-?\d+(\.\d+)?( [A-Z]{3,5})?$")


# a list of texts as Python prints it: "['2.50 USD']", "[]"
_TEXT_LIST = re.compile(r"^\[(?:'[^']*'(?:, '[^']*')*)?\]$")
_TEXT_LIST_ITEM = re.compile(r"'([^']*)'")


def _report_frame(report: Any) -> pl.DataFrame:
    """A Nautilus report (pandas) as a polars frame: value types to floats, objects to text."""
    frame = report.reset_index()
    columns: dict[str, pl.Series] = {}
    for name in frame.columns:
        values = frame[name]
        if values.dtype != object:
            columns[str(name)] = pl.from_pandas(values).alias(str(name))
            continue
        items = values.tolist()
        present = [v for v in items if v is not None]
        if present and all(hasattr(v, "as_double") for v in present):
            converted: list[Any] = [None if v is None else v.as_double() for v in items]
            columns[str(name)] = pl.Series(str(name), converted, dtype=pl.Float64)
        elif present and all(isinstance(v, str) and _AMOUNT.match(v) for v in present):
            # quantities and money as Nautilus prints them: "100000", "331.00 USD"
            amounts = [None if v is None else float(v.split()[0]) for v in items]
            columns[str(name)] = pl.Series(str(name), amounts, dtype=pl.Float64)
        elif present and all(
            isinstance(v, list | tuple) or (isinstance(v, str) and _TEXT_LIST.match(v))
            for v in present
        ):
            # a fill's commissions, ["2.50 USD"] or its text "['2.50 USD']": the items joined,
            # not a Python list's repr
            joined = [
                None
                if v is None
                else ", ".join(str(x) for x in v)
                if isinstance(v, list | tuple)
                else ", ".join(_TEXT_LIST_ITEM.findall(v))
                for v in items
            ]
            columns[str(name)] = pl.Series(str(name), joined, dtype=pl.String)
        else:
            columns[str(name)] = pl.Series(
                str(name), [None if v is None else str(v) for v in items], dtype=pl.String
            )
    return pl.DataFrame(columns)


def _collect(
    engine: BacktestEngine,
    strategy: SpecStrategy,
    data: NautilusData,
    bars_ts: pl.Series,
    ledger: _Ledger | None = None,
) -> NautilusRun:
    """The :class:`NautilusRun` of a finished engine (before it is disposed): its positions and
    orders are the ``ledger``'s (a chunked run) or the cache's."""
    if ledger is None:
        ledger = _Ledger()
        ledger.take(engine, purge=False)
    positions = list(ledger.positions.values())
    orders = list(ledger.orders.values())
    trades = _trades(positions, ledger.orders, strategy, data, bars_ts)
    currency = data.instrument.quote_currency if data.instrument is not None else USD
    return NautilusRun(
        trades=trades,
        fills=_report_frame(ReportProvider.generate_order_fills_report(orders)),
        positions=_report_frame(ReportProvider.generate_positions_report(positions)),
        account=_report_frame(engine.trader.generate_account_report(VENUE)),
        statistics=_statistics(engine, positions, currency, trades.height),
    )


DEFAULT_CHUNK_BARS = 20_000


def _run_in_chunks(engine: BacktestEngine, raw: _RawData, chunk_bars: int | None) -> _Ledger:
    """Stream ``raw`` through ``engine`` (strategy added) ``chunk_bars`` bars at a time
    (Nautilus' ``run(streaming=True)`` / ``clear_data()`` / ``end()``), making each chunk's
    objects just before it runs and moving closed positions and orders out of the cache after it
    (:class:`_Ledger`): time stays linear in bars and memory holds one chunk of data. A pending
    next-open alert crosses the boundary: the engine fires it on the next chunk's first quotes,
    as it would in one run. ``chunk_bars=None``: one chunk."""
    if chunk_bars is not None and chunk_bars < 1:
        raise ConfigError(f"chunk_bars must be a positive number of bars, got {chunk_bars}")
    n = raw.n_bars
    step = n if chunk_bars is None else chunk_bars
    ledger = _Ledger()
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        nautilus_bars, quotes = _objects(raw, lo, hi)
        # bars first: at equal times the strategy sees bar t before bar t + 1's open quote
        engine.add_data(nautilus_bars)
        engine.add_data(quotes)
        engine.run(streaming=True)
        engine.clear_data()
        ledger.take(engine, purge=hi < n)
    engine.end()
    ledger.take(engine, purge=False)
    return ledger


def run_nautilus_full(
    bars: pl.DataFrame,
    spec: StrategySpec,
    predictions: pl.DataFrame | None = None,
    *,
    signals: OrderSignals | None = None,
    mode: Literal["precomputed", "bar_by_bar"] = "precomputed",
    chunk_bars: int | None = DEFAULT_CHUNK_BARS,
    reports: bool = True,
    predictions_via: Literal["stream", "actor"] = "stream",
) -> NautilusRun:
    """Run ``spec`` on ``bars`` in Nautilus' ``BacktestEngine`` (module docstring) and return the
    trades in our schema with Nautilus' reports and portfolio statistics (:class:`NautilusRun`).

    ``mode="precomputed"``: ``signals`` may be given (already compiled); otherwise
    :func:`~aiopt_lib.strategy.spec.compile_signals` ``(spec, bars, predictions)``.
    ``mode="bar_by_bar"``: the strategy evaluates the rules on each bar as it arrives
    (:class:`~aiopt_lib.strategy.streaming.StreamingEvaluator`, reading ``predictions`` by the bar's open
    time); same trades, slower (Python per bar). With ``predictions_via="actor"`` the
    predictions reach the strategy as live ones would: a :class:`PredictionActor` publishes each
    bar's as :class:`SignalPrediction` custom data, which the strategy receives (``on_data``).

    The bars stream through the engine ``chunk_bars`` at a time (:func:`_run_in_chunks`; the
    same trades and reports as one chunk, ``None``, with time linear in bars and one chunk's
    data in memory). ``reports=False`` skips the fills, positions and account reports and the
    statistics (empty frames and dict): the trades only, as :func:`run_nautilus` returns.
    """
    bars = ensure_bars(bars)
    if mode not in ("precomputed", "bar_by_bar"):
        raise ConfigError(f"mode must be 'precomputed' or 'bar_by_bar', got {mode!r}")
    if mode == "bar_by_bar" and signals is not None:
        raise ConfigError("mode='bar_by_bar' evaluates the rules itself: do not give signals")
    if predictions_via not in ("stream", "actor"):
        raise ConfigError(f"predictions_via must be 'stream' or 'actor', got {predictions_via!r}")
    if predictions_via == "actor" and (mode != "bar_by_bar" or predictions is None):
        raise ConfigError("predictions_via='actor' needs mode='bar_by_bar' and predictions")
    raw = _convert_arrays(bars, spec)
    data = raw.data
    config = SpecStrategyConfig(
        bar_type=data.bar_type, quantity=spec.quantity, fill_at_close=spec.fill == "close"
    )
    tick = spec.instrument_tick_size
    actor = None
    if mode == "bar_by_bar":
        received: dict[int, dict[str, float]] | None = None
        if predictions_via == "actor":
            assert predictions is not None
            received = {}
            actor = PredictionActor(
                PredictionActorConfig(bar_type=data.bar_type), frame_predictor(predictions)
            )
        evaluator = StreamingEvaluator(spec, predictions if received is None else received)
        strategy = SpecStrategy(
            config,
            None,
            data,
            tick,
            evaluator=evaluator,
            direction=spec.direction,
            received=received,
        )
    else:
        if signals is None:
            signals = compile_signals(spec, bars, predictions)
        strategy = SpecStrategy(
            config, SignalPlan.from_signals(signals, spec.direction), data, tick
        )
    engine = _empty_engine(data, spec, "ERROR")
    try:
        if actor is not None:
            engine.add_actor(actor)  # before the strategy: its bar handler runs first
        engine.add_strategy(strategy)
        ledger = _run_in_chunks(engine, raw, chunk_bars)
        bars_ts = bars.get_column("ts")
        if not reports:
            trades = _trades(
                list(ledger.positions.values()), ledger.orders, strategy, data, bars_ts
            )
            empty = pl.DataFrame()
            return NautilusRun(trades, empty, empty, empty, {})
        return _collect(engine, strategy, data, bars_ts, ledger)
    finally:
        engine.dispose()


def run_nautilus(
    bars: pl.DataFrame,
    spec: StrategySpec,
    predictions: pl.DataFrame | None = None,
    *,
    signals: OrderSignals | None = None,
    mode: Literal["precomputed", "bar_by_bar"] = "precomputed",
    chunk_bars: int | None = DEFAULT_CHUNK_BARS,
    predictions_via: Literal["stream", "actor"] = "stream",
) -> pl.DataFrame:
    """Run ``spec`` on ``bars`` in Nautilus' ``BacktestEngine`` (module docstring) and return
    the trades in the schema of :func:`aiopt_lib.strategy.backtest.run_backtest`'s trades frame.

    ``mode="precomputed"`` (default, faster): ``signals`` may be given (already compiled);
    otherwise :func:`~aiopt_lib.strategy.spec.compile_signals` ``(spec, bars, predictions)``.
    ``mode="bar_by_bar"``: :class:`SpecStrategy` evaluates the spec on each bar inside Nautilus
    (:mod:`aiopt_lib.strategy.streaming`), as it would live. ``chunk_bars``, ``predictions_via``:
    :func:`run_nautilus_full`.
    The reports and statistics come with :func:`run_nautilus_full`.
    """
    run = run_nautilus_full(
        bars,
        spec,
        predictions,
        signals=signals,
        mode=mode,
        chunk_bars=chunk_bars,
        reports=False,
        predictions_via=predictions_via,
    )
    return run.trades


def first_difference(
    ours: pl.DataFrame, theirs: pl.DataFrame, *, tick: float = 1e-5, money: float = 0.01
) -> int | None:
    """The index of the first trade that differs between two trades frames, None when all are
    equal: the same entry/exit bar, side and exit reason, prices within half a ``tick`` and PnL
    within ``money`` (Nautilus rounds each commission to the cent). When one frame is a prefix
    of the other, the length of the shorter."""
    keys = ("entry_ts", "exit_ts", "side", "exit_reason")
    for i in range(min(ours.height, theirs.height)):
        a, b = ours.row(i, named=True), theirs.row(i, named=True)
        if any(a[c] != b[c] for c in keys):
            return i
        if any(abs(a[c] - b[c]) > tick / 2 for c in ("entry_price", "exit_price")):
            return i
        if abs(a["pnl"] - b["pnl"]) > money + 1e-9:
            return i
    return None if ours.height == theirs.height else min(ours.height, theirs.height)


# (figure, our metric, Nautilus statistic, how ours scales to Nautilus' unit, the basis)
_COMPARED: tuple[tuple[str, str, str, float, str], ...] = (
    ("total PnL", "total_pnl", "PnL (total)", 1.0, "money, after commissions"),
    ("total return %", "total_return", "PnL% (total)", 100.0, "on the starting balance"),
    ("trades", "trades", "Trades", 1.0, "closed trades / positions"),
    ("win rate", "win_rate", "Win Rate", 1.0, "share of trades with PnL > 0"),
    ("average trade", "avg_trade", "Expectancy", 1.0, "money per trade"),
    (
        "Sharpe",
        "sharpe",
        "Sharpe Ratio (252 days)",
        1.0,
        "ours: per-bar returns; Nautilus: daily returns (both annualised, 252 days)",
    ),
    (
        "Sortino",
        "sortino",
        "Sortino Ratio (252 days)",
        1.0,
        "ours: per-bar returns; Nautilus: daily returns (both annualised, 252 days)",
    ),
    (
        "profit factor",
        "profit_factor",
        "Profit Factor",
        1.0,
        "ours: gross trade profit / loss; Nautilus: on daily returns",
    ),
)


def statistics_table(
    ours_metrics: dict[str, float], nautilus_stats: dict[str, float]
) -> pl.DataFrame:
    """Comparable figures side by side: ``figure``, ``ours`` (from our engine's
    :func:`~aiopt_lib.strategy.backtest.backtest_metrics`), ``nautilus`` (:attr:`NautilusRun.statistics`)
    and ``basis`` (what each is computed on: Sharpe, Sortino and profit factor are computed on
    different returns by the two, so they agree in sign and size, not to the digit). Our total
    PnL is ``final_equity - initial capital``. A figure either side lacks is null."""
    ours = dict(ours_metrics)
    final, total = ours.get("final_equity"), ours.get("total_return")
    if final is not None and total is not None and total > -1:
        ours["total_pnl"] = final - final / (1.0 + total)
    rows = []
    for figure, our_key, their_key, scale, basis in _COMPARED:
        ours_value = ours.get(our_key)
        theirs = nautilus_stats.get(their_key)
        rows.append(
            {
                "figure": figure,
                "ours": None if ours_value is None else float(ours_value) * scale,
                "nautilus": None if theirs is None else float(theirs),
                "basis": basis,
            }
        )
    schema = {"figure": pl.String, "ours": pl.Float64, "nautilus": pl.Float64, "basis": pl.String}
    return pl.DataFrame(rows, schema=schema)


# ---------------------------------------------------------------------------------------------
# A ParquetDataCatalog and the BacktestNode


def write_catalog(bars: pl.DataFrame, spec: StrategySpec, path: str | Path) -> ParquetDataCatalog:
    """Write the instrument, the quotes and the close-stamped bars that :func:`build_engine` feeds
    (module docstring: the quotes carry the spec's spread, so a catalog belongs to one cost
    model) into a Nautilus ``ParquetDataCatalog`` at ``path`` and return it.

    The catalog is written into a temporary folder beside ``path`` and renamed over it when
    complete, so ``path`` never holds a half-written catalog (an older catalog there is replaced).
    """
    data, nautilus_bars, quotes = _convert(bars, spec)
    target = Path(path)
    with atomic_directory(target) as tmp:
        catalog = ParquetDataCatalog(tmp)
        catalog.write_data([data.instrument])
        catalog.write_data(nautilus_bars)
        catalog.write_data(quotes)
    return ParquetDataCatalog(target)


class CatalogStrategyConfig(SpecStrategyConfig, frozen=True, kw_only=True):
    """Config of :class:`CatalogSpecStrategy`: the bar type, the quantity, the tick size and the
    path of the signal-plan Parquet file (:func:`write_signal_plan`)."""

    signals_path: str
    tick_size: float = 1e-5


_PLAN_COLUMNS = ("want_long", "want_short", "exit_long", "exit_short", "stop", "take", "trail")


def write_signal_plan(plan: SignalPlan, data: NautilusData, path: str | Path) -> Path:
    """Write ``plan`` with the bars' open and close times (ns) as one Parquet file (atomically):
    how precomputed signals reach a strategy that Nautilus builds from a config."""
    frame = pl.DataFrame(
        {
            "open_ns": data.open_ns.astype(np.int64),
            "close_ns": data.close_ns.astype(np.int64),
            **{name: getattr(plan, name) for name in _PLAN_COLUMNS},
        }
    )
    return write_parquet_atomic(frame, path)


def read_signal_plan(path: str | Path) -> tuple[SignalPlan, np.ndarray, np.ndarray]:
    """The ``(plan, open_ns, close_ns)`` written by :func:`write_signal_plan`."""
    frame = pl.read_parquet(path)
    plan = SignalPlan(**{name: frame.get_column(name).to_numpy() for name in _PLAN_COLUMNS})
    return plan, frame.get_column("open_ns").to_numpy(), frame.get_column("close_ns").to_numpy()


class CatalogSpecStrategy(SpecStrategy):
    """:class:`SpecStrategy` built from a config alone, as ``BacktestNode`` builds strategies
    (``ImportableStrategyConfig``): the precomputed signals come from the Parquet file named by
    ``config.signals_path`` (:func:`write_signal_plan`). A file, rather than an in-process
    registry, keeps the run config plain data: it can be serialised, logged and rerun."""

    def __init__(self, config: CatalogStrategyConfig) -> None:
        plan, open_ns, close_ns = read_signal_plan(config.signals_path)
        timeframe = dt.timedelta(microseconds=int(close_ns[0] - open_ns[0]) // 1_000)
        data = NautilusData(None, config.bar_type, open_ns, close_ns, timeframe)
        super().__init__(config, plan, data, config.tick_size)


def node_run_config(
    catalog_path: str | Path, spec: StrategySpec, bar_type: BarType, signals_path: str | Path
) -> BacktestRunConfig:
    """The ``BacktestRunConfig`` that :func:`run_from_catalog` runs: the venue of
    :func:`build_engine` (commission through an ``ImportableFeeModelConfig`` of
    :class:`SpecFeeModel`), the catalog's bars then quotes (in that order: at equal times the
    bar comes first, as in :func:`build_engine`), and :class:`CatalogSpecStrategy` reading
    ``signals_path``. Loaded in one shot (no ``chunk_size``), kept after the run
    (``dispose_on_completion=False``) so the reports can be read."""
    config = spec.execution_config()
    instrument_id = str(bar_type.instrument_id)
    venue = BacktestVenueConfig(
        name=VENUE.value,
        oms_type="HEDGING",
        account_type="MARGIN",
        base_currency="USD",
        starting_balances=[f"{spec.initial_capital} USD"],
        default_leverage=100.0,
        bar_execution=False,
        fee_model=ImportableFeeModelConfig(
            fee_model_path=f"{__name__}:SpecFeeModel",
            config_path=f"{__name__}:SpecFeeModelConfig",
            config={
                "per_unit": config.commission_per_unit,
                "percent": config.commission_percent,
            },
        ),
    )
    catalog = str(catalog_path)
    data = [
        BacktestDataConfig(
            catalog_path=catalog,
            data_cls=Bar,
            instrument_id=InstrumentId.from_str(instrument_id),
            bar_types=[str(bar_type)],
        ),
        BacktestDataConfig(
            catalog_path=catalog,
            data_cls=QuoteTick,
            instrument_id=InstrumentId.from_str(instrument_id),
        ),
    ]
    strategy = ImportableStrategyConfig(
        strategy_path=f"{__name__}:CatalogSpecStrategy",
        config_path=f"{__name__}:CatalogStrategyConfig",
        config={
            "bar_type": str(bar_type),
            "quantity": spec.quantity,
            "fill_at_close": spec.fill == "close",
            "signals_path": str(signals_path),
            "tick_size": spec.instrument_tick_size,
        },
    )
    engine = BacktestEngineConfig(
        strategies=[strategy],
        logging=LoggingConfig(log_level="ERROR", bypass_logging=True),
        run_analysis=False,  # the statistics come from _statistics (one pass)
    )
    return BacktestRunConfig(
        venues=[venue],
        data=data,
        engine=engine,
        raise_exception=True,
        dispose_on_completion=False,
    )


def run_from_catalog(
    catalog_path: str | Path,
    spec: StrategySpec,
    bars: pl.DataFrame,
    predictions: pl.DataFrame | None = None,
    *,
    signals: OrderSignals | None = None,
) -> NautilusRun:
    """Run ``spec`` through Nautilus' ``BacktestNode`` on a catalog written by
    :func:`write_catalog` from ``bars``; the result equals :func:`run_nautilus_full`'s.

    The signals are compiled from ``bars`` (or given), resolved into a :class:`SignalPlan` and
    written to ``<catalog>/aiopt_signals/<spec fingerprint>.parquet``, which the node's
    :class:`CatalogSpecStrategy` reads (:func:`node_run_config`). The fill model
    (:class:`SpecFillModel`) needs the engine's clock, which exists only once the node has built
    the engine, so it is attached then (``engine.change_fill_model``). Raises
    :class:`~aiopt_lib.core.errors.ConfigError` when the catalog's bars are not ``bars``.
    """
    bars = ensure_bars(bars)
    data, _, _ = _convert(bars.head(2), spec)  # the instrument and the bar type only
    open_ns = _ns(bars.get_column("ts"))
    tf_ns = int(data.timeframe.total_seconds() * 1e9)
    data = NautilusData(data.instrument, data.bar_type, open_ns, open_ns + tf_ns, data.timeframe)
    catalog = ParquetDataCatalog(Path(catalog_path))
    stored = catalog.bars(bar_types=[str(data.bar_type)])
    stored_ns = np.array([b.ts_event for b in stored], dtype=np.int64)
    if not np.array_equal(stored_ns, data.close_ns):
        raise ConfigError(
            f"{catalog_path}: the catalog's {data.bar_type} bars ({len(stored_ns)}) are not the "
            f"given bars ({bars.height}); write it with write_catalog(bars, spec, path)"
        )
    if signals is None:
        signals = compile_signals(spec, bars, predictions)
    plan = SignalPlan.from_signals(signals, spec.direction)
    signals_path = Path(catalog_path) / "aiopt_signals" / f"{spec.fingerprint()}.parquet"
    write_signal_plan(plan, data, signals_path)
    run_config = node_run_config(catalog_path, spec, data.bar_type, signals_path)
    node = BacktestNode([run_config])
    try:
        node.build()
        engine = node.get_engine(run_config.id)
        execution = spec.execution_config()
        tick = execution.tick_size
        fill_model = SpecFillModel(execution.slippage_ticks * tick, tick, data.open_ns)
        fill_model.now = engine.kernel.clock.timestamp_ns
        engine.change_fill_model(VENUE, fill_model)
        node.run()
        strategy = engine.trader.strategies()[0]
        return _collect(engine, strategy, data, bars.get_column("ts"))
    finally:
        node.dispose()


# ---------------------------------------------------------------------------------------------
# Paper trading


_IB_DATA = "nautilus_trader.adapters.interactive_brokers"
_PAPER_PORT = 4002  # IB Gateway's paper-trading API port


def paper_trading_node_config(
    instrument: str = "EUR/USD",
    *,
    execution: Literal["sandbox", "ib_paper"] = "sandbox",
    starting_balance: float = 100_000.0,
    leverage: float = 100.0,
    strategies: Sequence[ImportableStrategyConfig] = (),
    dockerized_gateway: bool = False,
    environ: Mapping[str, str] | None = None,
    trader_id: str = "AIOPT-PAPER-001",
) -> TradingNodeConfig:
    """A ``TradingNodeConfig`` for paper trading ``instrument`` on IDEALPRO (Interactive
    Brokers' FX venue): live quotes and bars from an IB Gateway, orders either simulated locally
    by Nautilus' sandbox execution client against those quotes (``execution="sandbox"``: a
    margin account of ``starting_balance`` USD at ``leverage``, HEDGING) or sent to an IB
    **paper** account (``execution="ib_paper"``). Nothing connects until a ``TradingNode`` is
    built from it (that needs ``pip install "nautilus_trader[ib]"`` and a running gateway).

    Settings come from environment variables (``environ``, default ``os.environ``), never from
    the repository: ``IB_GATEWAY_HOST`` (default 127.0.0.1), ``IB_GATEWAY_PORT`` (default 4002,
    the gateway's paper port), ``IB_CLIENT_ID`` (default 1), ``IB_ACCOUNT_ID`` (``ib_paper``
    only; must be a paper account, ``DU...``). With ``dockerized_gateway`` Nautilus starts IB's
    gateway container in paper mode and logs in with ``TWS_USERNAME`` / ``TWS_PASSWORD``: they
    must be set, and Nautilus reads them from the environment when it connects, so the password
    is never stored in this config (which can be serialised and logged).

    ``strategies``: the ``ImportableStrategyConfig``\\ s to run. :class:`SpecStrategy` trades
    precomputed signals or, with a
    :class:`~aiopt_lib.strategy.streaming.StreamingEvaluator`, evaluates the rules bar by bar (module
    docstring). Raises :class:`~aiopt_lib.core.errors.ConfigError` for a missing
    or live account and missing gateway credentials.
    """
    env = os.environ if environ is None else environ
    venue = "IDEALPRO"
    instrument_id = f"{instrument}.{venue}"
    gateway: dict[str, Any] | None = None
    if dockerized_gateway:
        missing = [name for name in ("TWS_USERNAME", "TWS_PASSWORD") if not env.get(name)]
        if missing:
            raise ConfigError(f"the dockerized IB gateway needs {', '.join(missing)} set")
        gateway = {"trading_mode": "paper", "read_only_api": execution == "sandbox"}
    connection: dict[str, Any] = {
        "ibg_host": env.get("IB_GATEWAY_HOST", "127.0.0.1"),
        "ibg_port": int(env.get("IB_GATEWAY_PORT", _PAPER_PORT)),
        "ibg_client_id": int(env.get("IB_CLIENT_ID", 1)),
        "dockerized_gateway": gateway,
        "instrument_provider": {"load_ids": [instrument_id]},
    }
    data_clients = {
        "IB": ImportableConfig(
            path=f"{_IB_DATA}.config:InteractiveBrokersDataClientConfig",
            factory=ImportableFactoryConfig(
                path=f"{_IB_DATA}.factories:InteractiveBrokersLiveDataClientFactory"
            ),
            config=connection,
        )
    }
    if execution == "sandbox":
        exec_client = ImportableConfig(
            path="nautilus_trader.adapters.sandbox.config:SandboxExecutionClientConfig",
            factory=ImportableFactoryConfig(
                path="nautilus_trader.adapters.sandbox.factory:SandboxLiveExecClientFactory"
            ),
            config={
                "venue": venue,
                "starting_balances": [f"{starting_balance} USD"],
                "base_currency": "USD",
                "oms_type": "HEDGING",
                "account_type": "MARGIN",
                "default_leverage": str(leverage),
                "bar_execution": False,
            },
        )
    elif execution == "ib_paper":
        account = env.get("IB_ACCOUNT_ID", "")
        if not account:
            raise ConfigError("execution='ib_paper' needs IB_ACCOUNT_ID (a paper account, DU...)")
        if not account.startswith("DU"):
            raise ConfigError(f"IB_ACCOUNT_ID {account!r} is not a paper account (DU...)")
        exec_client = ImportableConfig(
            path=f"{_IB_DATA}.config:InteractiveBrokersExecClientConfig",
            factory=ImportableFactoryConfig(
                path=f"{_IB_DATA}.factories:InteractiveBrokersLiveExecClientFactory"
            ),
            config={**connection, "account_id": account},
        )
    else:
        raise ConfigError(f"execution must be 'sandbox' or 'ib_paper', got {execution!r}")
    return TradingNodeConfig(
        trader_id=trader_id,
        data_clients=data_clients,
        exec_clients={"IB" if execution == "ib_paper" else "SANDBOX": exec_client},
        strategies=list(strategies),
        logging=LoggingConfig(log_level="INFO"),
    )


__all__ = [
    "PREDICTIONS",
    "VENUE",
    "CatalogSpecStrategy",
    "CatalogStrategyConfig",
    "NautilusData",
    "NautilusRun",
    "PredictionActor",
    "PredictionActorConfig",
    "SignalPlan",
    "SignalPrediction",
    "SpecFeeModel",
    "SpecFeeModelConfig",
    "SpecFillModel",
    "SpecStrategy",
    "SpecStrategyConfig",
    "build_engine",
    "first_difference",
    "frame_predictor",
    "node_run_config",
    "paper_trading_node_config",
    "quote_path",
    "read_signal_plan",
    "run_from_catalog",
    "run_nautilus",
    "run_nautilus_full",
    "statistics_table",
    "trades_from_engine",
    "write_catalog",
    "write_signal_plan",
]
