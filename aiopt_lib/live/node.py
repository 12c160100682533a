"""Assembling and running the live node.

:func:`build_live_session` turns a :class:`~aiopt_lib.live.config.LiveConfig` into a Nautilus
``TradingNode`` (replay data, sandbox venue, :class:`~aiopt_lib.live.strategy.LiveSpecStrategy`,
:class:`~aiopt_lib.live.strategy.LivePredictionActor` and the
:class:`~aiopt_lib.live.control.ControlActor` as the node's ``Controller``) with everything
around it (:class:`LiveSession`); :func:`build_live_node` returns just the node;
:meth:`LiveSession.run` runs it to the end of the replay (or SIGINT/SIGTERM, or ``stop()``) and
returns a :class:`LiveResult`; :func:`run_live` does both; :func:`main_live` is ``aiopt live``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import polars as pl
from nautilus_trader.config import (
    ImportableControllerConfig,
    LiveDataEngineConfig,
    LiveExecEngineConfig,
    LiveRiskEngineConfig,
    LoggingConfig,
    TradingNodeConfig,
)
from nautilus_trader.live.node import TradingNode
from nautilus_trader.model.data import BarType

from aiopt_lib.core.errors import AioptError, ConfigError
from aiopt_lib.execution.nautilus import (
    NautilusData,
    PredictionActorConfig,
    SpecStrategyConfig,
    trades_from_engine,
    write_catalog,
)
from aiopt_lib.live.config import LiveConfig, load_live_config
from aiopt_lib.live.control import ControlActor, LiveLog, RedisLink, read_state
from aiopt_lib.live.predictors import (
    BarPredictor,
    FramePredictor,
    HttpPredictor,
    LocalModelPredictor,
)
from aiopt_lib.live.replay import (
    ReplayDataClientConfig,
    ReplayDataClientFactory,
    SpecSandboxExecClient,
    SpecSandboxExecClientConfig,
    handle_order_events_at_once,
    read_catalog_replay,
    replay_client,
    sandbox_config,
)
from aiopt_lib.live.strategy import (
    LiveControls,
    LivePredictionActor,
    LiveSpecStrategy,
    spec_uses_model,
)
from aiopt_lib.strategy.spec import StrategySpec

__all__ = [
    "LiveResult",
    "LiveSession",
    "build_live_node",
    "build_live_session",
    "live_session",
    "main_live",
    "run_live",
]

_SESSIONS: weakref.WeakValueDictionary[str, LiveSession] = weakref.WeakValueDictionary()
_REPLAY = "REPLAY"
_SCRIPT_ACK_S = 30.0


def live_session(name: str) -> LiveSession | None:
    """The :class:`LiveSession` called ``name`` (how the node's controller finds its session)."""
    return _SESSIONS.get(name)


@dataclasses.dataclass(frozen=True)
class LiveResult:
    """What a live run did.

    ``trades``: our trades-frame schema (:data:`aiopt_lib.strategy.backtest.TRADES_SCHEMA`, times
    are bar open times), comparable with the backtest's (:func:`aiopt_lib.runs.parity.engine_parity`).
    ``predictions``, ``fills``, ``positions``, ``events`` (control commands, acknowledgements,
    model health, Redis health): the records sent to the logging streams, as frames (``ts`` the
    data time of the bar the node was at, ``wall`` the wall-clock time). ``state``: the final
    control state. ``bars``: bars evaluated; ``seconds``: wall time of the run."""

    trades: pl.DataFrame
    predictions: pl.DataFrame
    fills: pl.DataFrame
    positions: pl.DataFrame
    events: pl.DataFrame
    state: dict[str, Any]
    bars: int
    seconds: float

    def save(self, directory: str | Path) -> Path:
        """Write every frame as ``<name>.parquet`` and the state as ``state.json``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("trades", "predictions", "fills", "positions", "events"):
            getattr(self, name).write_parquet(out / f"{name}.parquet")
        info = {"state": self.state, "bars": self.bars, "seconds": self.seconds}
        (out / "state.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> LiveResult:
        """A result written by :meth:`save` (``aiopt live`` with ``output_dir``)."""
        src = Path(directory)
        info = json.loads((src / "state.json").read_text(encoding="utf-8"))
        frames = {
            name: pl.read_parquet(src / f"{name}.parquet")
            for name in ("trades", "predictions", "fills", "positions", "events")
        }
        return cls(**frames, state=info["state"], bars=info["bars"], seconds=info["seconds"])


def _resolve_spec(config: LiveConfig) -> StrategySpec:
    """The spec named by ``config.strategy`` (a file, a ranking entry or a template)."""
    settings = config.strategy
    if settings.spec is not None:
        from aiopt_lib.strategy.spec import load_spec

        return load_spec(settings.spec)
    if settings.ranking is not None:
        from aiopt_lib.strategy.ranking import load_ranking

        ranked = load_ranking(settings.ranking)
        if not ranked:
            raise ConfigError(f"{settings.ranking}: the ranking holds no strategy")
        if settings.rank > len(ranked):
            raise ConfigError(
                f"{settings.ranking}: rank {settings.rank} asked, the ranking holds {len(ranked)}"
            )
        return ranked[settings.rank - 1][0]
    from aiopt_lib.strategy.search import builtin_template

    return builtin_template(settings.template or "ema_cross").spec


def _bars(config: LiveConfig) -> pl.DataFrame:
    """The bars to replay: ``data.bars`` loaded, cut to ``[start, end)`` and ``max_bars``."""
    from aiopt_lib.data.sources import load_bars

    settings = config.data
    bars = load_bars(settings.bars)
    if settings.start is not None or settings.end is not None:
        ts = pl.col("ts")
        start = (
            settings.start.replace(tzinfo=settings.start.tzinfo or dt.UTC)
            if settings.start
            else None
        )
        end = settings.end.replace(tzinfo=settings.end.tzinfo or dt.UTC) if settings.end else None
        if start is not None:
            bars = bars.filter(ts >= start)
        if end is not None:
            bars = bars.filter(ts < end)
    if settings.max_bars is not None:
        bars = bars.head(settings.max_bars)
    if bars.height < 2:
        raise ConfigError(f"data: {bars.height} bars to replay after start/end (need 2+)")
    return bars


def _catalog_bar_type(catalog: Path) -> BarType:
    """The one bar type a catalog written by :func:`write_catalog` holds."""
    from nautilus_trader.persistence.catalog import ParquetDataCatalog

    types = {str(b.bar_type) for b in ParquetDataCatalog(str(catalog)).bars()}
    if len(types) != 1:
        raise ConfigError(f"{catalog}: expected one bar type in the catalog, found {sorted(types)}")
    return BarType.from_str(types.pop())


def _predictor(config: LiveConfig, predictions: pl.DataFrame | None) -> BarPredictor | None:
    model = config.model
    if predictions is not None:
        return FramePredictor(
            predictions, model_id=model.model_id or "frame", version=model.version or "-"
        )
    if model.source == "none":
        return None
    if model.source == "frame":
        assert model.predictions is not None
        path = model.predictions
        if path.is_dir():
            from aiopt_lib.core.streams import read_stream

            root = path / "streams" if (path / "streams").is_dir() else path
            frame = read_stream(root, "predictions")
        else:
            frame = pl.read_parquet(path)
        return FramePredictor(
            frame, model_id=model.model_id or "frame", version=model.version or "-"
        )
    if model.source == "local":
        assert model.path is not None
        return LocalModelPredictor(
            model.path, model_id=model.model_id, models_dir=model.models_dir, history=model.history
        )
    assert model.url is not None
    headers = {}
    if config.model_token is not None:
        headers["Authorization"] = f"Bearer {config.model_token.get_secret_value()}"
    return HttpPredictor(
        model.url,
        model.model_id or "default",
        version=model.version,
        timeout_s=model.timeout_s,
        history=model.history,
        headers=headers,
    )


class LiveSession:
    """One live node and everything around it (module docstring).

    Built from ``config``; ``spec``, ``bars``, ``predictions`` (a frame for
    :class:`~aiopt_lib.live.predictors.FramePredictor`) and ``predictor`` replace what the config
    would load (for tests and notebooks). ``node`` is the ``TradingNode``, built and ready to
    run; ``strategy``, ``actor`` (None without a model), ``controller``, ``controls``, ``log``,
    ``link`` (None without Redis) and ``replay`` its parts; ``spec`` the spec traded now;
    ``state`` the control state (restored from Redis at build when it was there)."""

    def __init__(
        self,
        config: LiveConfig,
        *,
        spec: StrategySpec | None = None,
        bars: pl.DataFrame | None = None,
        predictions: pl.DataFrame | None = None,
        predictor: BarPredictor | None = None,
        name: str | None = None,
    ) -> None:
        if config.data.source != "replay" or config.execution.venue != "sandbox":
            raise ConfigError(
                "Interactive Brokers is configuration only here: build its node config with "
                "aiopt_lib.execution.nautilus.paper_trading_node_config (data.source: replay and "
                "execution.venue: sandbox run a node)"
            )
        self.config = config
        self.name = name or f"{config.trader_id}-{id(self):x}"
        self.started = time.monotonic()
        self._tmp: Path | None = None
        self.last_command_id: str | None = None
        control = config.control
        password = config.redis_password.get_secret_value() if config.redis_password else None
        # the control state a previous node left (restart): params, model, pause, last command
        restored = (
            read_state(control.redis_url, control.state, password) if control.redis_url else None
        )
        spec = spec if spec is not None else _resolve_spec(config)
        if config.strategy.params:
            spec = spec.with_params(**config.strategy.params)
        notes: list[str] = []
        if restored:
            known = {k: v for k, v in (restored.get("params") or {}).items() if k in spec.params}
            if known:
                spec = spec.with_params(**known)
            self.last_command_id = restored.get("last_command_id")
            notes.append(f"state restored from {control.state}")
        self.spec = spec
        # the catalog the replay reads (written from the bars; a catalog belongs to one spread)
        if bars is None and config.data.catalog is not None and config.data.bars in ("", "none"):
            catalog = config.data.catalog
        else:
            bars = bars if bars is not None else _bars(config)
            catalog = config.data.catalog or (
                config.run_dir / "live_catalog" if config.run_dir is not None else self._temp()
            )
            write_catalog(bars, spec, catalog)
        self.catalog = Path(catalog)
        bar_type = _catalog_bar_type(self.catalog)
        replay = read_catalog_replay(str(self.catalog), bar_type)
        timeframe = dt.timedelta(microseconds=replay.timeframe_ns // 1_000)
        self.data = NautilusData(
            replay.instrument, bar_type, replay.open_ns, replay.close_ns, timeframe
        )
        self.bars_ts = (
            pl.Series("ts", replay.open_ns, dtype=pl.Int64)
            .cast(pl.Datetime("ns"))
            .dt.replace_time_zone("UTC")
            .cast(pl.Datetime("us", "UTC"))
        )
        # the model
        self.predictor = predictor if predictor is not None else _predictor(config, predictions)
        if self.predictor is not None and restored and restored.get("model_id"):
            wanted = (restored["model_id"], restored.get("version"))
            if (self.predictor.model_id, self.predictor.version) != wanted:
                try:
                    self.predictor = self.predictor.switch(wanted[0], wanted[1])
                except AioptError as exc:
                    notes.append(f"stored model {wanted[0]!r} not restored ({exc})")
        if spec_uses_model(spec) and self.predictor is None:
            raise ConfigError(
                f"strategy {spec.name!r} reads the model (ai_*): configure model.source"
            )
        self.controls = LiveControls(
            paused=bool(restored and restored.get("paused")),
            on_model_failure=config.model.on_failure,
        )
        # logging: memory, Redis, Parquet
        from aiopt_lib.core.streams import Streams

        streams = Streams(config.run_dir) if config.run_dir is not None else None
        self.log = LiveLog(streams=streams, data_ns=self.data_ns)
        self.node = self._build_node(bar_type)
        self.strategy = LiveSpecStrategy(
            SpecStrategyConfig(
                bar_type=bar_type, quantity=spec.quantity, fill_at_close=spec.fill == "close"
            ),
            self.data,
            spec,
            controls=self.controls,
            sink=self.log,
        )
        self.actor: LivePredictionActor | None = None
        if self.predictor is not None:
            self.actor = LivePredictionActor(
                PredictionActorConfig(bar_type=bar_type),
                self.predictor,
                controls=self.controls,
                sink=self.log,
                symbol=spec.instrument.replace("/", "").upper(),
                strategy=self.strategy,
            )
            self.node.trader.add_actor(self.actor)  # before the strategy: its bar handler first
        self.node.trader.add_strategy(self.strategy)
        self.controller = next(a for a in self.node.trader.actors() if isinstance(a, ControlActor))
        self.controller.session = self
        client = replay_client(self.name)
        assert client is not None
        self.replay = client
        client.drained = self.idle
        for step in config.control.script:
            client.holds[step.at_bar] = self._scripted
        self.link: RedisLink | None = None
        if control.redis_url is not None:
            self.link = RedisLink(
                control.redis_url,
                stream=control.stream,
                prefix=control.prefix,
                on_command=self.controller.submit,
                on_status=self.controller.redis_status,
                start_id=self.last_command_id or "$",
                password=password,
                maxlen=control.stream_maxlen,
            )
            self.log.link = self.link
        self.state: dict[str, Any] = {}
        self._stop = asyncio.Event()
        self.stop_reason = ""
        _SESSIONS[self.name] = self
        for note in notes:
            self.log("events", {"event": "info", "message": note})

    # -- building --------------------------------------------------------------------------

    def _temp(self) -> Path:
        import tempfile

        self._tmp = Path(tempfile.mkdtemp(prefix="aiopt-live-"))
        return self._tmp / "catalog"

    def _build_node(self, bar_type: BarType) -> TradingNode:
        config, _spec = self.config, self.spec
        node_config = TradingNodeConfig(
            trader_id=config.trader_id,
            data_clients={
                _REPLAY: ReplayDataClientConfig(
                    catalog_path=str(self.catalog),
                    bar_type=str(bar_type),
                    pace=config.data.pace,
                    speed=config.data.speed,
                    session=self.name,
                )
            },
            controller=ImportableControllerConfig(
                controller_path="aiopt_lib.live.control:ControlActor",
                config_path="aiopt_lib.live.control:ControlActorConfig",
                config={},
            ),
            data_engine=LiveDataEngineConfig(),
            # a replay may send far more than Nautilus' default 100 orders a second
            risk_engine=LiveRiskEngineConfig(
                max_order_submit_rate="1000000/00:00:01", max_order_modify_rate="1000000/00:00:01"
            ),
            # the sandbox has nothing to reconcile
            exec_engine=LiveExecEngineConfig(reconciliation=False),
            logging=LoggingConfig(log_level=config.log_level, log_colors=False),
            timeout_connection=30.0,
            timeout_portfolio=10.0,
            timeout_disconnection=2.0,
            timeout_post_stop=0.05,
        )
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        node = TradingNode(config=node_config, loop=self.loop)
        node.add_data_client_factory(_REPLAY, ReplayDataClientFactory)
        node.build()
        # the sandbox client is registered by hand: Nautilus' node builder passes the portfolio
        # only to a factory *named* SandboxLiveExecClientFactory (nautilus_trader 1.221)
        kernel = node.kernel
        self.venue_client = SpecSandboxExecClient(
            self.loop,
            kernel.portfolio,
            kernel.msgbus,
            kernel.cache,
            kernel.clock,
            self._sandbox_config(bar_type),
        )
        kernel.exec_engine.register_client(self.venue_client)
        handle_order_events_at_once(kernel.msgbus, kernel.exec_engine)
        return node

    def _sandbox_config(self, bar_type: BarType) -> SpecSandboxExecClientConfig:
        config, spec = self.config, self.spec
        costs = spec.execution_config()
        return sandbox_config(
            catalog_path=str(self.catalog),
            bar_type=str(bar_type),
            venue=bar_type.instrument_id.venue.value,
            starting_balance=config.execution.starting_balance or spec.initial_capital,
            leverage=config.execution.leverage,
            commission_per_unit=costs.commission_per_unit,
            commission_percent=costs.commission_percent,
            slippage_ticks=costs.slippage_ticks,
            tick_size=costs.tick_size,
        )

    # -- state -----------------------------------------------------------------------------

    def data_ns(self) -> int:
        """The data time the node is at: the open time of the bar its last quote belongs to
        (what events and acknowledgements are stamped with; 0 before the first quote)."""
        strategy = getattr(self, "strategy", None)
        if strategy is None or strategy.last_quote_ns == 0:
            return 0
        bar = strategy.current_bar()
        return int(self.data.open_ns[bar]) if bar >= 0 else int(strategy.last_quote_ns)

    def idle(self) -> bool:
        """Whether the node has finished with everything it was given: its engines' queues are
        empty, no prediction is in flight, no bar waits for one, the strategy runs."""
        kernel = self.node.kernel
        data, risk, execution = kernel.data_engine, kernel.risk_engine, kernel.exec_engine
        return (
            data.data_qsize() == 0
            and data.cmd_qsize() == 0
            and data.req_qsize() == 0
            and data.res_qsize() == 0
            and risk.cmd_qsize() == 0
            and risk.evt_qsize() == 0
            and execution.cmd_qsize() == 0
            and execution.evt_qsize() == 0
            and (self.actor is None or self.actor.pending == 0)
            and self.strategy.waiting == 0
            and self.strategy.is_running
        )

    def store_state(self) -> dict[str, Any]:
        """The control state now (model, params, pause, last command), also written to the
        state key when Redis is configured; returned."""
        predictor = self.actor.predictor if self.actor is not None else None
        self.state = {
            "trader_id": self.config.trader_id,
            "strategy": self.spec.name,
            "params": dict(self.spec.params),
            "model_id": predictor.model_id if predictor is not None else None,
            "version": predictor.version if predictor is not None else None,
            "paused": self.controls.paused,
            "last_command_id": self.last_command_id,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        if self.link is not None:
            self.link.set(self.config.control.state, json.dumps(self.state))
        return self.state

    def submit(self, command: dict[str, Any]) -> str:
        """Send one control command in process (thread-safe), as if it came from the stream:
        what a node without Redis is controlled with. Returns the command's id."""
        self._local_commands = getattr(self, "_local_commands", 0) + 1
        entry_id = f"local-{self._local_commands}"
        self.controller.submit(
            entry_id,
            {k: json.dumps(v) if not isinstance(v, str) else v for k, v in command.items()},
        )
        return entry_id

    async def _scripted(self, bar: int) -> None:
        """The replay holds at ``bar``: send the commands scripted for it through the channel
        (``XADD`` to the control stream when Redis is configured, else in process) and wait for
        each one's acknowledgement (at most ``_SCRIPT_ACK_S`` seconds)."""
        control = self.config.control
        for step in control.script:
            if step.at_bar != bar:
                continue
            if self.link is not None:
                import redis

                password = (
                    self.config.redis_password.get_secret_value()
                    if self.config.redis_password
                    else None
                )
                sender = redis.Redis.from_url(control.redis_url or "", password=password)
                try:
                    raw = await self.loop.run_in_executor(
                        None,
                        lambda s=sender, c=step.command: s.xadd(
                            control.stream, {"json": json.dumps(c)}
                        ),
                    )
                finally:
                    sender.close()
                entry_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            else:
                entry_id = self.submit(step.command)
            deadline = time.monotonic() + _SCRIPT_ACK_S
            while entry_id not in self.controller.acks:
                if time.monotonic() > deadline:
                    self.log(
                        "events",
                        {
                            "event": "info",
                            "message": f"scripted command {entry_id} not acknowledged",
                        },
                    )
                    break
                await asyncio.sleep(0.001)

    def stop(self) -> None:
        """Ask the run to stop (thread-safe): the node stops as on SIGTERM."""
        self.stop_reason = self.stop_reason or "stop requested"
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._stop.set)

    # -- running ---------------------------------------------------------------------------

    async def _main(self, timeout: float | None) -> None:
        self.store_state()
        self.log(
            "events",
            {
                "event": "started",
                "message": f"{self.spec.name} on {self.data.bar_type}",
                **self.state,
            },
        )
        run = asyncio.ensure_future(self.node.run_async())
        finished = asyncio.ensure_future(self.replay.finished.wait())
        stopped = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait(
            {run, finished, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if finished in done:
            self.stop_reason = "end of the replay"
        elif run in done:
            self.stop_reason = self.stop_reason or "node stopped (signal)"
        elif not done:
            self.stop_reason = f"timeout after {timeout:g} s"
        for task in (finished, stopped):
            task.cancel()
        if not run.done():
            await self.node.stop_async()
            try:
                await asyncio.wait_for(run, 30.0)
            except (TimeoutError, asyncio.CancelledError):
                run.cancel()

    def run(self, *, timeout: float | None = None) -> LiveResult:
        """Run the node until the replay ends, SIGINT/SIGTERM, :meth:`stop` or ``timeout``
        seconds; then stop it cleanly, write the last records and return the
        :class:`LiveResult`. Must run in the main thread with no event loop running (Nautilus
        installs its signal handlers): notebooks start ``python -m aiopt_lib.live``."""
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError("a live node runs in the main thread (it handles SIGINT/SIGTERM)")
        started = time.monotonic()
        try:
            self.loop.run_until_complete(self._main(timeout))
            trades = trades_from_engine(self.node, self.strategy, self.data, self.bars_ts)  # type: ignore[arg-type]
            self.store_state()
            self.log(
                "events",
                {"event": "stopped", "message": self.stop_reason, "bars": self.strategy.bars_done},
            )
        finally:
            self.close()
        return LiveResult(
            trades=trades,
            predictions=self.log.frame("predictions"),
            fills=self.log.frame("fills"),
            positions=self.log.frame("positions"),
            events=self.log.frame("events"),
            state=dict(self.state),
            bars=self.strategy.bars_done,
            seconds=time.monotonic() - started,
        )

    def close(self) -> None:
        """Stop the Redis link (after flushing), close the streams and dispose of the node."""
        if self.link is not None:
            self.link.stop()
        self.log.close()
        if self.actor is not None:
            self.actor.on_dispose()
        try:
            self.node.dispose()
        finally:
            if not self.loop.is_closed():
                self.loop.close()
            if self._tmp is not None:
                import shutil

                shutil.rmtree(self._tmp, ignore_errors=True)


def build_live_session(config: LiveConfig, **kwargs: Any) -> LiveSession:
    """A :class:`LiveSession`: the node built from ``config`` and its parts (``kwargs``:
    :class:`LiveSession`'s ``spec``, ``bars``, ``predictions``, ``predictor``, ``name``)."""
    return LiveSession(config, **kwargs)


def build_live_node(config: LiveConfig, **kwargs: Any) -> TradingNode:
    """The ``TradingNode`` of ``config`` (replay data, sandbox venue, the spec's strategy, the
    prediction actor and the control actor), built and ready to ``run()``. Its session (to stop
    it, send commands, read the result) is :func:`live_session` ``(node.aiopt_session)``;
    :func:`run_live` runs one to the end and returns what it did."""
    session = LiveSession(config, **kwargs)
    node = session.node
    node.aiopt_session = session.name  # type: ignore[attr-defined]
    return node


def run_live(config: LiveConfig, *, timeout: float | None = None, **kwargs: Any) -> LiveResult:
    """Build the node of ``config``, run it (:meth:`LiveSession.run`) and return its
    :class:`LiveResult` (also written to ``config.output_dir`` when set)."""
    session = LiveSession(config, **kwargs)
    result = session.run(timeout=timeout)
    if config.output_dir is not None:
        result.save(config.output_dir)
    return result


def main_live(config_path: str | Path | None, *, environ: dict[str, str] | None = None) -> int:
    """``aiopt live --config live.yaml``: load the config (file + ``AIOPT_*`` variables), say
    what runs, run the node to the end of the replay or SIGINT/SIGTERM, print one summary line
    (and where the result went), return 0. A bad config raises
    :class:`~aiopt_lib.core.errors.ConfigError` (one line)."""
    config = load_live_config(config_path, environ=environ)
    session = LiveSession(config)
    control = f"Redis {config.control.redis_url}" if config.control.redis_url else "in process"
    print(
        f"live: {session.spec.name} {dict(session.spec.params)} on {session.data.bar_type}, "
        f"{len(session.data.open_ns)} bars, pace {config.data.pace}, control {control}; "
        "Ctrl-C stops",
        flush=True,
    )
    result = session.run()
    if config.output_dir is not None:
        result.save(config.output_dir)
    pnl = float(result.trades["pnl"].sum()) if result.trades.height else 0.0
    commands = result.events.filter(pl.col("event") == "command").height
    print(
        f"live: {result.bars} bars, {result.trades.height} trades (PnL {pnl:,.2f}), "
        f"{commands} control commands, {result.seconds:.1f} s; stopped: "
        f"{result.events['message'][-1] if result.events.height else ''}"
    )
    if config.output_dir is not None:
        print(f"result: {config.output_dir}")
    sys.stdout.flush()
    return 0
