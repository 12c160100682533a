"""Replay data and a sandbox venue for a live ``TradingNode``: our ``ParquetDataCatalog`` played
back as a live market-data feed, and Nautilus' sandbox execution client with the fill and fee
models of our backtest.

nautilus_trader 1.221 has no offline live data client (nautilus_trader#748, "live replay", is
open), so :class:`ReplayDataClient` is a ``LiveMarketDataClient`` that reads the instrument, the
close-stamped bars and the four-per-bar quotes that :func:`~aiopt_lib.execution.nautilus.write_catalog`
wrote, adds the instrument to the cache on connect and publishes the rest in the order the
``BacktestEngine`` sees it (by time; at equal times the bar before the quote, as
:func:`~aiopt_lib.execution.nautilus.build_engine` adds them).

Pacing (``pace``):

* ``"drain"``: the next item goes out as soon as the node has drained its queues (data, risk and
  execution engines, and the predictions still being computed off the event loop): as fast as
  the node can trade, every order filled against the quote it would meet in the backtest.
* ``"realtime"``: items keep their spacing in data time divided by ``speed`` (1 = real time,
  3600 = an hour of data per second), and never go out before the node has drained (so a slow
  model delays the replay instead of changing its fills).

:class:`SpecSandboxExecClient` is Nautilus' ``SandboxExecutionClient`` (a ``SimulatedExchange``
fed by the live quotes) built with :class:`~aiopt_lib.execution.nautilus.SpecFillModel` and
:class:`~aiopt_lib.execution.nautilus.SpecFeeModel` instead of the sandbox's fixed defaults, and
with the exchange clock set to each quote's time *before* the quote is matched (the sandbox sets
it after, so a stop gapped through at the open would not know it was at the open). With both, a
replay fills exactly as the backtest does (docs/api/live.md, "Parity").
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Literal

import numpy as np
from nautilus_trader.adapters.sandbox.config import SandboxExecutionClientConfig
from nautilus_trader.adapters.sandbox.execution import SandboxExecutionClient
from nautilus_trader.backtest.engine import SimulatedExchange
from nautilus_trader.backtest.execution_client import BacktestExecClient
from nautilus_trader.backtest.models import LatencyModel
from nautilus_trader.cache.cache import Cache
from nautilus_trader.common.component import LiveClock, MessageBus, TestClock
from nautilus_trader.common.providers import InstrumentProvider
from nautilus_trader.config import LiveDataClientConfig
from nautilus_trader.core.data import Data
from nautilus_trader.execution.engine import ExecutionEngine
from nautilus_trader.live.data_client import LiveMarketDataClient
from nautilus_trader.live.execution_client import LiveExecutionClient
from nautilus_trader.live.factories import LiveDataClientFactory, LiveExecClientFactory
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import account_type_from_str, book_type_from_str, oms_type_from_str
from nautilus_trader.model.identifiers import ClientId, Venue
from nautilus_trader.model.objects import Currency, Money
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from nautilus_trader.portfolio.base import PortfolioFacade

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.execution.nautilus import SpecFeeModel, SpecFillModel

__all__ = [
    "CatalogReplay",
    "ReplayDataClient",
    "ReplayDataClientConfig",
    "ReplayDataClientFactory",
    "SpecSandboxExecClient",
    "SpecSandboxExecClientConfig",
    "SpecSandboxExecClientFactory",
    "read_catalog_replay",
    "replay_client",
]

Pace = Literal["drain", "realtime"]

# the clients a factory made, by session name: the node builder attaches the drain probe to its
# replay client, and a test or notebook can watch its progress
_CLIENTS: weakref.WeakValueDictionary[str, ReplayDataClient] = weakref.WeakValueDictionary()


class CatalogReplay:
    """What one replay plays: the instrument, the bar type, the bars' open and close times (ns)
    and the merged stream of bars and quotes in backtest order."""

    def __init__(self, instrument: Any, bar_type: BarType, bars: list[Bar], quotes: list[Any]):
        self.instrument = instrument
        self.bar_type = bar_type
        self.bars = bars
        close_ns = np.array([b.ts_event for b in bars], dtype=np.int64)
        spec = bar_type.spec
        self.timeframe_ns = int(spec.timedelta.total_seconds() * 1e9)
        self.close_ns = close_ns
        self.open_ns = close_ns - self.timeframe_ns
        # by time, the bar before the quote at equal times (a stable sort of bars then quotes)
        items: list[Any] = [*bars, *quotes]
        stamps = np.array([x.ts_init for x in items], dtype=np.int64)
        order = np.argsort(stamps, kind="stable")
        self.items = [items[i] for i in order]


def read_catalog_replay(catalog_path: str, bar_type: str | BarType) -> CatalogReplay:
    """The instrument, bars and quotes of ``bar_type`` in the catalog at ``catalog_path``
    (written by :func:`~aiopt_lib.execution.nautilus.write_catalog`). Raises
    :class:`~aiopt_lib.core.errors.ConfigError` when the catalog lacks them."""
    bt = bar_type if isinstance(bar_type, BarType) else BarType.from_str(bar_type)
    catalog = ParquetDataCatalog(catalog_path)
    instrument_id = bt.instrument_id
    instruments = catalog.instruments(instrument_ids=[str(instrument_id)])
    if not instruments:
        raise ConfigError(f"{catalog_path}: the catalog has no instrument {instrument_id}")
    bars = catalog.bars(bar_types=[str(bt)])
    if len(bars) < 2:
        raise ConfigError(f"{catalog_path}: the catalog has {len(bars)} {bt} bars (need 2+)")
    quotes = catalog.quote_ticks(instrument_ids=[str(instrument_id)])
    return CatalogReplay(instruments[0], bt, bars, quotes)


class ReplayDataClientConfig(LiveDataClientConfig, frozen=True, kw_only=True):
    """:class:`ReplayDataClient`'s settings: the catalog, the bar type to replay, the pacing
    (module docstring) and ``session``, the name the node builder finds the client by."""

    catalog_path: str
    bar_type: str
    pace: Pace = "drain"
    speed: float = 1.0
    session: str = "default"


class ReplayDataClient(LiveMarketDataClient):
    """Replays a catalog as live market data (module docstring).

    The replay starts once a component has subscribed to the bars (the trader is running then)
    and publishes every item once. ``drained`` (set by the node builder) says whether the node
    has finished with everything published so far; ``finished`` is set after the last item has
    been published and drained; ``published`` counts the items out.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_id: ClientId,
        venue: Venue,
        msgbus: MessageBus,
        cache: Cache,
        clock: LiveClock,
        config: ReplayDataClientConfig,
    ) -> None:
        super().__init__(
            loop=loop,
            client_id=client_id,
            venue=venue,
            msgbus=msgbus,
            cache=cache,
            clock=clock,
            instrument_provider=InstrumentProvider(),
            config=config,
        )
        if config.pace not in ("drain", "realtime"):
            raise ConfigError(f"pace must be 'drain' or 'realtime', got {config.pace!r}")
        if not config.speed > 0:
            raise ConfigError(f"speed must be > 0, got {config.speed}")
        self._config = config
        self.replay = read_catalog_replay(config.catalog_path, config.bar_type)
        self.drained: Callable[[], bool] = lambda: True
        self.finished = asyncio.Event()
        self.published = 0
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.bars_published = 0
        self.holds: dict[int, Callable[[int], Awaitable[None]]] = {}

    async def _connect(self) -> None:
        # the instrument straight into the cache: the strategies read it in on_start, before
        # the data engine's queue would have delivered it
        instrument = self.replay.instrument
        self._cache.add_instrument(instrument)
        self._handle_data(instrument)
        self._task = self._loop.create_task(self._run(), name="aiopt-replay")

    async def _disconnect(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _subscribe_bars(self, command: Any) -> None:
        if command.bar_type == self.replay.bar_type:
            self._subscribed.set()

    async def _subscribe_quote_ticks(self, command: Any) -> None:
        """Quotes are replayed anyway (the sandbox venue matches against them)."""

    async def _unsubscribe_bars(self, command: Any) -> None:
        """Nothing to stop: the replay plays everything once."""

    async def _unsubscribe_quote_ticks(self, command: Any) -> None:
        """Nothing to stop: the replay plays everything once."""

    async def _settle(self) -> None:
        """Wait until the node has drained twice in a row, yielding to the event loop."""
        calm = 0
        while calm < 2:
            await asyncio.sleep(0)
            calm = calm + 1 if self.drained() else 0

    async def _run(self) -> None:
        await self._subscribed.wait()
        await self._settle()
        items = self.replay.items
        realtime = self._config.pace == "realtime"
        speed = self._config.speed
        first_ns = items[0].ts_init if items else 0
        started = time.monotonic()
        for item in items:
            if realtime:
                due = started + (item.ts_init - first_ns) / 1e9 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            self._handle_data(item)
            self.published += 1
            await self._settle()
            if isinstance(item, Bar):
                self.bars_published += 1
                hold = self.holds.get(self.bars_published - 1)
                if hold is not None:
                    # the bar has been evaluated (settled): what the hold does lands on it
                    await hold(self.bars_published - 1)
                    await self._settle()
        self.finished.set()


def replay_client(session: str) -> ReplayDataClient | None:
    """The :class:`ReplayDataClient` a factory made for ``session`` (None when none is alive)."""
    return _CLIENTS.get(session)


class ReplayDataClientFactory(LiveDataClientFactory):
    """Makes :class:`ReplayDataClient`\\ s (``TradingNode.add_data_client_factory``)."""

    @staticmethod
    def create(  # type: ignore[override]
        loop: asyncio.AbstractEventLoop,
        name: str,
        config: ReplayDataClientConfig,
        msgbus: MessageBus,
        cache: Cache,
        clock: LiveClock,
    ) -> ReplayDataClient:
        """A replay client named ``name`` on the catalog's venue."""
        venue = BarType.from_str(config.bar_type).instrument_id.venue
        client = ReplayDataClient(loop, ClientId(name), venue, msgbus, cache, clock, config)
        _CLIENTS[config.session] = client
        return client


# ---------------------------------------------------------------------------------------------
# The sandbox venue


class SpecSandboxExecClientConfig(SandboxExecutionClientConfig, frozen=True, kw_only=True):
    """Nautilus' sandbox settings plus our cost model (the spec's
    :class:`~aiopt_lib.strategy.spec.Costs`: commission per unit and percent, slippage in ticks,
    the tick size) and the catalog the instrument and the bars' open times come from."""

    catalog_path: str
    bar_type: str
    commission_per_unit: float = 0.0
    commission_percent: float = 0.0
    slippage_ticks: float = 0.0
    tick_size: float = 1e-5


class SpecSandboxExecClient(SandboxExecutionClient):
    """The sandbox execution client with :class:`SpecFillModel` and :class:`SpecFeeModel`
    (module docstring). ``SandboxExecutionClient.__init__`` builds its ``SimulatedExchange`` with
    a fixed ``FillModel()`` and ``MakerTakerFeeModel()`` (the exchange's fee model is read-only
    afterwards), so this constructor builds the exchange itself with the same settings and ours;
    connecting, matching and order routing are the sandbox's."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        portfolio: PortfolioFacade,
        msgbus: MessageBus,
        cache: Cache,
        clock: LiveClock,
        config: SpecSandboxExecClientConfig,
    ) -> None:
        venue = Venue(config.venue)
        oms_type = oms_type_from_str(config.oms_type)
        account_type = account_type_from_str(config.account_type)
        base_currency = Currency.from_str(config.base_currency) if config.base_currency else None
        self.test_clock = TestClock()
        LiveExecutionClient.__init__(
            self,
            loop=loop,
            client_id=ClientId(config.venue),
            venue=venue,
            oms_type=oms_type,
            account_type=account_type,
            base_currency=base_currency,
            instrument_provider=InstrumentProvider(),
            msgbus=msgbus,
            cache=cache,
            clock=clock,
            config=None,
        )
        replay = read_catalog_replay(config.catalog_path, config.bar_type)
        self.instrument = replay.instrument
        tick = config.tick_size
        self.fill_model = SpecFillModel(config.slippage_ticks * tick, tick, replay.open_ns)
        self.fill_model.now = self.test_clock.timestamp_ns
        self.exchange = SimulatedExchange(
            venue=venue,
            oms_type=oms_type,
            account_type=account_type,
            starting_balances=[Money.from_str(b) for b in config.starting_balances],
            base_currency=base_currency,
            default_leverage=config.default_leverage,
            leverages=config.leverages or {},
            modules=[],
            portfolio=portfolio,
            msgbus=self._msgbus,
            cache=cache,
            clock=self.test_clock,
            fill_model=self.fill_model,
            fee_model=SpecFeeModel(config.commission_per_unit, config.commission_percent),
            latency_model=LatencyModel(0),
            book_type=book_type_from_str(config.book_type),
            frozen_account=config.frozen_account,
            bar_execution=config.bar_execution,
            trade_execution=config.trade_execution,
            reject_stop_orders=config.reject_stop_orders,
            support_gtd_orders=config.support_gtd_orders,
            support_contingent_orders=config.support_contingent_orders,
            use_position_ids=config.use_position_ids,
            use_random_ids=config.use_random_ids,
            use_reduce_only=config.use_reduce_only,
            use_message_queue=False,  # real time: a command is processed when it arrives
        )
        self._client = BacktestExecClient(
            exchange=self.exchange, msgbus=msgbus, cache=cache, clock=self.test_clock
        )
        self.exchange.register_client(self._client)
        self.exchange.initialize_account()

    def connect(self) -> None:
        """Connect (the sandbox's), with the catalog's instrument on the venue even when the
        data client has not put it into the cache yet."""
        super().connect()
        if self.instrument.id not in self.exchange.instruments:
            self.exchange.add_instrument(self.instrument)

    def on_data(self, data: Data) -> None:
        """Set the exchange clock to the data's time, then match (the sandbox's ``on_data``)."""
        if data.ts_init > self.test_clock.timestamp_ns():
            self.test_clock.set_time(data.ts_init)
        super().on_data(data)


def handle_order_events_at_once(msgbus: MessageBus, engine: ExecutionEngine) -> None:
    """Make the execution engine handle order events as they are sent, not through its queue:
    the ``ExecEngine.process`` endpoint is pointed at ``ExecutionEngine.process`` (the
    synchronous base of the live engine's queued ``process``), as in a backtest.

    Why: the simulated exchange's matching engine reads the orders' states from the cache while
    it works through an OCO pair. With the live engine's queue in between, the filled leg is not
    yet FILLED when the venue cancels its partner, so the partner's cancel cascades back onto
    the filled leg and its fill is applied twice (``InvalidStateTrigger: FILLED -> FILLED``, the
    position left open). Handled at once, the venue sees what a backtest's venue sees. Only for
    a node whose only venue is this sandbox (every order event then comes from it)."""
    endpoint = "ExecEngine.process"
    msgbus.deregister(endpoint=endpoint, handler=engine.process)
    msgbus.register(endpoint=endpoint, handler=functools.partial(ExecutionEngine.process, engine))


class SpecSandboxExecClientFactory(LiveExecClientFactory):
    """Makes :class:`SpecSandboxExecClient`\\ s (``TradingNode.add_exec_client_factory``)."""

    @staticmethod
    def create(  # type: ignore[override]
        loop: asyncio.AbstractEventLoop,
        name: str,
        config: SpecSandboxExecClientConfig,
        portfolio: PortfolioFacade,
        msgbus: MessageBus,
        cache: Cache,
        clock: LiveClock,
    ) -> SpecSandboxExecClient:
        """A sandbox execution client on ``config.venue``."""
        return SpecSandboxExecClient(loop, portfolio, msgbus, cache, clock, config)


def sandbox_config(
    *,
    catalog_path: str,
    bar_type: str,
    venue: str,
    starting_balance: float,
    leverage: float,
    commission_per_unit: float,
    commission_percent: float,
    slippage_ticks: float,
    tick_size: float,
) -> SpecSandboxExecClientConfig:
    """The sandbox venue of our backtest (:func:`~aiopt_lib.execution.nautilus.build_engine`):
    a HEDGING margin account in USD, L1 book, quotes only (no bar execution)."""
    return SpecSandboxExecClientConfig(
        venue=venue,
        starting_balances=[f"{starting_balance} USD"],
        base_currency="USD",
        oms_type="HEDGING",
        account_type="MARGIN",
        default_leverage=Decimal(str(leverage)),
        bar_execution=False,
        catalog_path=catalog_path,
        bar_type=bar_type,
        commission_per_unit=commission_per_unit,
        commission_percent=commission_percent,
        slippage_ticks=slippage_ticks,
        tick_size=tick_size,
    )
