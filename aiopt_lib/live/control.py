"""Controlling a live node over Redis, and its logging streams.

Why a plain redis-py loop in a thread, not Nautilus' external streams: Nautilus can read Redis
streams into its message bus (``MessageBusConfig(external_streams=...)``), but only messages
Nautilus itself serialised, of types registered for streaming, and a malformed one is dropped in
its Rust reader without a word back. A control channel must take plain ``XADD``\\ s from any tool
(``redis-cli``, a notebook, a dashboard), answer every one (also the malformed ones, with the
reason), and ride out Redis going away. :class:`RedisLink` is that: one thread that ``XREAD``\\ s
the control stream, hands each entry to the event loop (``call_soon_threadsafe``), and writes the
outgoing records (acknowledgements, logs, the state key) from a queue, reconnecting with back-off
and keeping the queue while Redis is down (bounded; the oldest records go first, counted).

The commands (:data:`Command`), one stream entry each, either as fields (``XADD aiopt-control *
cmd pause``; field values that parse as JSON are read as JSON: ``params '{"fast": 10}'``) or as
one ``json`` field holding the whole object; an optional ``id`` is echoed in the
acknowledgement:

* ``{"cmd": "switch_model", "model_id": "compact", "version": null}``
* ``{"cmd": "set_params", "params": {"fast": 10}}``: the strategy is stopped through Nautilus'
  ``Controller``, reconfigured (a new evaluator warmed up on the bars seen) and resumed;
* ``{"cmd": "pause"}`` / ``{"cmd": "resume"}``: no new positions / new positions again;
* ``{"cmd": "flatten"}``: close the open position now.

:class:`ControlActor` is the node's ``Controller``. It applies a command when the node is idle
(nothing in its queues, no prediction in flight), so a command lands between two market events,
never inside an order's round trip; then it acknowledges it on ``<prefix>:acks`` (``status`` ok,
rejected or failed, with the message), logs it on ``<prefix>:events`` and stores the state
(model, params, paused, the last command's entry id) as JSON in the state key. A restarted node
reads that key: it trades with the stored params, model and pause, and reads the control stream
after the last command it applied.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import polars as pl
import redis
from nautilus_trader.common.config import ActorConfig
from nautilus_trader.trading.controller import Controller
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.core.errors import ConfigError, validation_problems
from aiopt_lib.core.streams import PREDICTIONS_SCHEMA, Streams

__all__ = [
    "Command",
    "ControlActor",
    "ControlActorConfig",
    "Flatten",
    "LiveLog",
    "Pause",
    "RedisLink",
    "Resume",
    "SetParams",
    "SwitchModel",
    "parse_command",
    "read_state",
]

KINDS: tuple[str, ...] = ("predictions", "fills", "positions", "events")


# ---------------------------------------------------------------------------------------------
# Commands


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    id: str | None = None


class SwitchModel(_Command):
    """Ask another model (by id; with ``version``, only that version of it)."""

    cmd: Literal["switch_model"]
    model_id: str = Field(min_length=1)
    version: str | None = None


class SetParams(_Command):
    """New values for some of the spec's params (unknown names are refused)."""

    cmd: Literal["set_params"]
    params: dict[str, float] = Field(min_length=1)


class Pause(_Command):
    """No new positions until ``resume`` (exits, stops and takes still work)."""

    cmd: Literal["pause"]


class Resume(_Command):
    """New positions again."""

    cmd: Literal["resume"]


class Flatten(_Command):
    """Close the open position now."""

    cmd: Literal["flatten"]


Command = Annotated[SwitchModel | SetParams | Pause | Resume | Flatten, Field(discriminator="cmd")]
_COMMAND = TypeAdapter(Command)


def _decode(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_command(fields: Mapping[Any, Any]) -> Command:
    """One control-stream entry as a command (module docstring); a :class:`ConfigError` naming
    every problem otherwise."""
    plain = {_decode(k): _decode(v) for k, v in fields.items()}
    if "json" in plain:
        try:
            data = json.loads(plain["json"])
        except ValueError as exc:
            raise ConfigError(f"the 'json' field is not JSON ({exc})") from None
    else:
        data = {}
        for key, text in plain.items():
            try:
                data[key] = (
                    json.loads(text) if key not in ("cmd", "id", "model_id", "version") else text
                )
            except ValueError:
                data[key] = text
    if not isinstance(data, dict):
        raise ConfigError(f"a command is an object, got {type(data).__name__}")
    try:
        return _COMMAND.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(f"{w}: {m}" if w else m for w, m in validation_problems(exc))
        raise ConfigError(f"invalid command: {problems}") from None


# ---------------------------------------------------------------------------------------------
# Redis


def _client(url: str, password: str | None) -> redis.Redis:
    return redis.Redis.from_url(
        url, password=password, socket_timeout=2.0, socket_connect_timeout=2.0
    )


def read_state(url: str, key: str, password: str | None = None) -> dict[str, Any] | None:
    """The control state stored at ``key`` (None when there is none or Redis is unreachable:
    the node then starts from its config and says so)."""
    try:
        raw = _client(url, password).get(key)
    except (redis.RedisError, OSError):
        return None
    if raw is None:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def _field(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return ""
    return json.dumps(value, default=str)


class RedisLink:
    """The thread that reads the control stream and writes everything else (module docstring).

    ``on_command(entry_id, fields)`` and ``on_status(up, message)`` are called from the thread;
    the caller hands them to its event loop. ``start_id``: read the stream after this entry
    (``"$"``: only entries added from now on)."""

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        prefix: str,
        on_command: Callable[[str, dict[Any, Any]], None],
        on_status: Callable[[bool, str], None],
        start_id: str = "$",
        password: str | None = None,
        maxlen: int = 100_000,
        outbox: int = 100_000,
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = prefix
        self.maxlen = maxlen
        self._password = password
        self._on_command = on_command
        self._on_status = on_status
        self.last_id = start_id
        self._outbox: collections.deque[tuple[str, Any, Any]] = collections.deque(maxlen=outbox)
        self.dropped = 0
        self.up = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aiopt-redis-link", daemon=True)
        self._client: redis.Redis | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout`` seconds and stop the thread."""
        self._flush_deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)

    def _put(self, item: tuple[str, Any, Any]) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            self.dropped += 1
        self._outbox.append(item)

    def xadd(self, kind: str, record: Mapping[str, Any]) -> None:
        """Queue ``record`` for the stream ``<prefix>:<kind>``."""
        fields = {k: _field(v) for k, v in record.items() if v is not None}
        self._put(("xadd", f"{self.prefix}:{kind}", fields))

    def set(self, key: str, value: str) -> None:
        """Queue ``SET key value``."""
        self._put(("set", key, value))

    def _connect(self) -> redis.Redis:
        if self._client is None:
            self._client = _client(self.url, self._password)
        self._client.ping()
        if self.last_id == "$":
            # "$" means "after the newest entry" anew in every XREAD, so an entry added between
            # two blocking reads would be missed: pin it to the newest entry's id once
            newest = self._client.xrevrange(self.stream, count=1)
            self.last_id = _decode(newest[0][0]) if newest else "0-0"
        return self._client

    def _flush(self, client: redis.Redis) -> None:
        while self._outbox:
            batch = [self._outbox.popleft() for _ in range(min(500, len(self._outbox)))]
            try:
                pipe = client.pipeline(transaction=False)
                for op, key, value in batch:
                    if op == "xadd":
                        pipe.xadd(key, value, maxlen=self.maxlen, approximate=True)
                    else:
                        pipe.set(key, value)
                pipe.execute()
            except BaseException:
                self._outbox.extendleft(reversed(batch))  # kept, in order, for the next try
                raise

    def _run(self) -> None:
        backoff = 0.05
        while True:
            stopping = self._stop.is_set()
            try:
                client = self._connect()
                if not self.up:
                    self.up = True
                    backoff = 0.05
                    self._on_status(True, f"Redis at {self.url} is reachable")
                self._flush(client)
                if stopping:
                    return
                entries = client.xread({self.stream: self.last_id}, count=100, block=50)
                for _stream, items in entries or []:
                    for entry_id, fields in items:
                        self.last_id = _decode(entry_id)
                        self._on_command(self.last_id, fields)
            except (redis.RedisError, OSError) as exc:
                if self.up:
                    self.up = False
                    self._on_status(False, f"Redis at {self.url} is unreachable ({exc})")
                if self._client is not None:
                    self._client.close()
                    self._client = None
                if stopping and time.monotonic() >= getattr(self, "_flush_deadline", 0.0):
                    return
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, 1.0)


# ---------------------------------------------------------------------------------------------
# The logging sink


_EVENT_SCHEMA = {
    "ts": TS_DTYPE,
    "wall": TS_DTYPE,
    "event": pl.String(),
    "command_id": pl.String(),
    "status": pl.String(),
    "message": pl.String(),
    "detail": pl.String(),
}
_FILL_SCHEMA = {
    "ts": TS_DTYPE,
    "order_id": pl.String(),
    "position_id": pl.String(),
    "side": pl.String(),
    "price": pl.Float64(),
    "quantity": pl.Float64(),
    "commission": pl.Float64(),
    "reason": pl.String(),
}
_POSITION_SCHEMA = {
    "ts": TS_DTYPE,
    "event": pl.String(),
    "position_id": pl.String(),
    "side": pl.String(),
    "avg_px_open": pl.Float64(),
    "avg_px_close": pl.Float64(),
    "realized_pnl": pl.Float64(),
}
_SCHEMAS: dict[str, dict[str, Any]] = {
    "predictions": dict(PREDICTIONS_SCHEMA),
    "fills": _FILL_SCHEMA,
    "positions": _POSITION_SCHEMA,
    "events": _EVENT_SCHEMA,
}
_PARQUET_KINDS = {
    "predictions": "predictions",
    "fills": "live_fills",
    "positions": "live_positions",
    "events": "live_events",
}


def _utc(ns: int | None) -> dt.datetime | None:
    if ns is None or ns <= 0:
        return None
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC) + dt.timedelta(
        microseconds=(ns % 1_000_000_000) // 1_000
    )


class LiveLog:
    """Where the node's records go (``sink(kind, record)``, kinds :data:`KINDS`): kept in memory
    (the :class:`~aiopt_lib.live.node.LiveResult`'s frames), sent to the Redis streams
    ``<prefix>:<kind>`` (:class:`RedisLink`) and appended to the run folder's Parquet logging
    streams (``predictions``, ``live_fills``, ``live_positions``, ``live_events``) when given.

    ``data_ns()`` is the data time of the bar the node is at, stamped on events as ``ts``."""

    def __init__(
        self,
        *,
        link: RedisLink | None = None,
        streams: Streams | None = None,
        data_ns: Callable[[], int] = lambda: 0,
    ) -> None:
        self.link = link
        self.streams = streams
        self.data_ns = data_ns
        self.records: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        self._lock = threading.Lock()

    def __call__(self, kind: str, record: dict[str, Any]) -> None:
        """Record one ``kind`` record (thread-safe)."""
        row = self._row(kind, record)
        with self._lock:
            self.records[kind].append(row)
        if self.link is not None:
            self.link.xadd(
                kind,
                {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()},
            )
        if self.streams is not None:
            self.streams.writer(_PARQUET_KINDS[kind], _SCHEMAS[kind]).append(row)

    def _row(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        data = dict(record)
        ts = _utc(data.pop("ts_ns", None) or self.data_ns())
        if kind == "events":
            known = {k: data.pop(k, None) for k in ("event", "command_id", "status", "message")}
            return {
                "ts": ts,
                "wall": dt.datetime.now(dt.UTC),
                **{k: None if v is None else str(v) for k, v in known.items()},
                "detail": json.dumps(data, default=str) if data else None,
            }
        row = {"ts": ts, **data}
        if kind == "predictions":
            row["written_at"] = dt.datetime.now(dt.UTC)
        return {name: row.get(name) for name in _SCHEMAS[kind]}

    def frame(self, kind: str) -> pl.DataFrame:
        """The ``kind`` records so far as a frame."""
        with self._lock:
            rows = list(self.records[kind])
        return pl.DataFrame(rows, schema=_SCHEMAS[kind], orient="row")

    def close(self) -> None:
        """Flush and close the Parquet streams."""
        if self.streams is not None:
            self.streams.close()


# ---------------------------------------------------------------------------------------------
# The controller


class ControlActorConfig(ActorConfig, frozen=True):
    """:class:`ControlActor`'s config (how Nautilus' ``ControllerFactory`` builds it)."""

    component_id: str | None = "AIOPT-CONTROL"


class ControlActor(Controller):
    """The node's ``Controller``: applies control commands (module docstring).

    ``session`` (a :class:`~aiopt_lib.live.node.LiveSession`, attached by the node builder)
    gives the strategy, the prediction actor, the controls, the log and the Redis link.
    :meth:`submit` may be called from any thread (the Redis link, or in-process callers when
    there is no Redis)."""

    def __init__(self, trader: Any, config: ControlActorConfig | None = None) -> None:
        super().__init__(trader, config or ControlActorConfig())
        self.session: Any = None
        self.applied = 0
        self.rejected = 0
        self.acks: dict[str, str] = {}  # command entry id -> status (ok, rejected, failed)
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_start(self) -> None:
        """Remember the event loop and start the Redis link."""
        self._loop = asyncio.get_event_loop()
        session = self.session
        if session is not None and session.link is not None:
            session.link.start()

    def on_stop(self) -> None:
        """Nothing: the session stops the Redis link after the last records are written."""

    def submit(self, entry_id: str, fields: Mapping[Any, Any]) -> None:
        """Hand a command to the event loop (thread-safe); ``entry_id`` is its stream id."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop closed meanwhile, the node is gone
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._receive, entry_id, dict(fields))

    def redis_status(self, up: bool, message: str) -> None:
        """The Redis link's news (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._redis_status, up, message)

    def _redis_status(self, up: bool, message: str) -> None:
        session = self.session
        if up:
            session.store_state()  # a Redis that lost its data gets the state back
        else:
            self.log.warning(message)
        session.log("events", {"event": "redis_up" if up else "redis_down", "message": message})

    def _receive(self, entry_id: str, fields: dict[Any, Any]) -> None:
        try:
            command = parse_command(fields)
        except ConfigError as exc:
            self.rejected += 1
            self._ack(entry_id, None, "rejected", str(exc), fields=fields)
            return
        self._when_idle(entry_id, command)

    def _when_idle(self, entry_id: str, command: Any) -> None:
        session = self.session
        if not session.idle():
            assert self._loop is not None
            self._loop.call_soon(self._when_idle, entry_id, command)
            return
        try:
            self._apply(entry_id, command)
        except Exception as exc:  # a command that fails is answered, never a crash
            self._ack(entry_id, command, "failed", f"{type(exc).__name__}: {exc}")

    def _apply(self, entry_id: str, command: Any) -> None:
        session = self.session
        strategy = session.strategy
        controls = session.controls
        if isinstance(command, Pause):
            controls.paused = True
            self._done(entry_id, command, "paused: no new positions")
        elif isinstance(command, Resume):
            controls.paused = False
            self._done(entry_id, command, "resumed: new positions allowed")
        elif isinstance(command, Flatten):
            closed = strategy.flatten()
            self._done(entry_id, command, "position closed" if closed else "already flat")
        elif isinstance(command, SetParams):
            spec = session.spec.with_params(**command.params)
            self.stop_strategy(strategy)  # Nautilus' Controller: stop, reconfigure, go on
            try:
                strategy.reconfigure(spec)
            finally:
                strategy.resume()
            session.spec = spec
            self._done(entry_id, command, f"params {dict(spec.params)}")
        elif isinstance(command, SwitchModel):
            actor = session.actor
            if actor is None:
                raise ConfigError("this node has no model to switch (model source none)")

            def finished(predictor: Any, message: str) -> None:
                if predictor is None:
                    self._ack(entry_id, command, "failed", message)
                    return
                self._done(entry_id, command, message)

            actor.switch(command.model_id, command.version, finished)

    def _done(self, entry_id: str, command: Any, message: str) -> None:
        self.applied += 1
        session = self.session
        session.last_command_id = entry_id
        session.store_state()
        self._ack(entry_id, command, "ok", message)

    def _ack(
        self,
        entry_id: str,
        command: Any,
        status: str,
        message: str,
        *,
        fields: Mapping[Any, Any] | None = None,
    ) -> None:
        session = self.session
        self.acks[entry_id] = status
        cmd = getattr(command, "cmd", None)
        record = {
            "command_id": entry_id,
            "id": getattr(command, "id", None),
            "cmd": cmd,
            "status": status,
            "message": message,
        }
        if status != "ok":
            self.log.warning(f"control command {entry_id} {status}: {message}")
            if status == "rejected":
                session.last_command_id = entry_id
                session.store_state()
        if session.link is not None:
            session.link.xadd("acks", {**record, "bar_ts": _iso(session.data_ns())})
        detail = {"cmd": cmd, "id": record["id"]}
        if fields is not None:
            detail["fields"] = {_decode(k): _decode(v) for k, v in fields.items()}
        session.log(
            "events",
            {
                "event": "command",
                "command_id": entry_id,
                "status": status,
                "message": message,
                **detail,
            },
        )


def _iso(ns: int) -> str:
    stamp = _utc(ns)
    return stamp.isoformat() if stamp is not None else ""
