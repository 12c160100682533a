"""The live node's configuration: a YAML file plus ``AIOPT_*`` environment variables, secrets from
the environment only.

A file (every key optional; paths relative to the file's folder)::

    trader_id: AIOPT-LIVE-001
    data:
      source: replay            # replay (our catalog) | ib (Interactive Brokers, config only)
      bars: sample              # what the catalog is written from (any load_bars source)
      catalog: catalog          # the ParquetDataCatalog folder (written when missing)
      start: 2017-10-01         # [start, end) of the bars replayed, or max_bars from the start
      max_bars: 1500
      pace: drain               # drain (as fast as the node drains) | realtime
      speed: 3600               # realtime: data seconds per wall second
    execution:
      venue: sandbox            # sandbox (simulated account) | ib_paper (config only)
      leverage: 100
    strategy:
      ranking: ranking.json     # or spec: my_spec.yaml, or template: ema_cross
      rank: 1
      params: {fast: 10}        # overrides of the spec's params
    model:
      source: http              # none | frame (a predictions Parquet) | local (a model folder) | http
      url: http://127.0.0.1:8000
      model_id: compact
      timeout_s: 2.0
      on_failure: ungated       # ungated (trade without the gate) | flatten
    control:
      redis_url: redis://127.0.0.1:6379/0
      stream: aiopt-control
      prefix: aiopt-live        # log streams <prefix>:fills|positions|predictions|events|acks
      script:                   # a replay's rehearsed operator: commands sent at given bars
        - {at_bar: 300, command: {cmd: set_params, params: {fast: 12}}}
    run_dir: runs/live-1        # Parquet logging streams (optional)
    output_dir: runs/live-1/live  # the LiveResult (optional)

Environment variables override the file: ``AIOPT_LIVE__<SECTION>__<KEY>`` (``AIOPT_LIVE__DATA__PACE=
realtime``, ``AIOPT_LIVE__TRADER_ID=...``; values are read as YAML scalars), and the shortcuts
``AIOPT_REDIS_URL`` (``control.redis_url``) and ``AIOPT_MODEL_URL`` (``model.url``). Secrets are
read from the environment only and never stored in the config's text or logs: ``AIOPT_REDIS_PASSWORD``
and ``AIOPT_MODEL_TOKEN`` (sent as ``Authorization: Bearer``); Interactive Brokers' settings are
those of :func:`~aiopt_lib.execution.nautilus.paper_trading_node_config`. A file that holds a
password (a ``password``/``token``/``secret`` key, or a Redis URL with one) is refused.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.strategy.spec import validate_model

__all__ = [
    "ControlSettings",
    "DataSettings",
    "ExecutionSettings",
    "LiveConfig",
    "ModelSettings",
    "ScriptedCommand",
    "StrategySettings",
    "load_live_config",
]

ENV_PREFIX = "AIOPT_LIVE__"
_SHORTCUTS = {"AIOPT_REDIS_URL": ("control", "redis_url"), "AIOPT_MODEL_URL": ("model", "url")}
_SECRET_WORDS = ("password", "token", "secret", "api_key")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSettings(_Frozen):
    """Where the bars come from and how fast they are replayed (module docstring)."""

    source: Literal["replay", "ib"] = "replay"
    bars: str = "sample"
    catalog: Path | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    max_bars: int | None = Field(default=None, ge=2)
    pace: Literal["drain", "realtime"] = "drain"
    speed: float = Field(default=1.0, gt=0)
    instrument: str = "EUR/USD"


class ExecutionSettings(_Frozen):
    """The venue: Nautilus' sandbox (a simulated margin account) or an IB paper account.
    ``starting_balance`` defaults to the spec's ``initial_capital``."""

    venue: Literal["sandbox", "ib_paper"] = "sandbox"
    starting_balance: float | None = Field(default=None, gt=0)
    leverage: float = Field(default=100.0, gt=0)


class StrategySettings(_Frozen):
    """The spec to trade: one of ``spec`` (a spec file), ``ranking`` + ``rank`` (a ranking file
    of the search, 1 = best) or ``template`` (a built-in template's spec); ``params`` override
    its parameters."""

    spec: Path | None = None
    ranking: Path | None = None
    rank: int = Field(default=1, ge=1)
    template: str | None = None
    params: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> StrategySettings:
        given = [n for n in ("spec", "ranking", "template") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of spec, ranking, template (got {', '.join(given)})")
        return self


class ModelSettings(_Frozen):
    """The signal model: none, a predictions frame (``predictions``: a Parquet file or a run
    folder's predictions stream), a saved model in process (``path``; ``models_dir`` holds the
    models a switch may name) or ``aiopt serve`` over HTTP (``url``). ``on_failure``: what the
    node does while the model does not answer (``ungated`` or ``flatten``)."""

    source: Literal["none", "frame", "local", "http"] = "none"
    predictions: Path | None = None
    path: Path | None = None
    models_dir: Path | None = None
    url: str | None = None
    model_id: str | None = None
    version: str | None = None
    timeout_s: float = Field(default=2.0, gt=0)
    history: int = Field(default=300, ge=1)
    on_failure: Literal["ungated", "flatten"] = "ungated"

    @model_validator(mode="after")
    def _complete(self) -> ModelSettings:
        needed = {"frame": "predictions", "local": "path", "http": "url"}.get(self.source)
        if needed is not None and getattr(self, needed) is None:
            raise ValueError(f"model source {self.source!r} needs '{needed}'")
        return self


class ScriptedCommand(_Frozen):
    """A control command the replay sends itself once bar ``at_bar`` (0-based, of the bars
    replayed) has been evaluated: a rehearsed operator for a replay (notebook 06). The replay
    holds there until the command is acknowledged, so it lands on that bar in every run."""

    at_bar: int = Field(ge=0)
    command: dict[str, Any]


class ControlSettings(_Frozen):
    """The Redis control channel and logging streams (:mod:`aiopt_lib.live.control`).
    ``redis_url`` None: no Redis (commands only in process). ``state_key`` defaults to
    ``<prefix>:state``. ``script``: commands sent through the channel (over Redis when it is
    configured) at given bars of a replay (:class:`ScriptedCommand`)."""

    redis_url: str | None = None
    stream: str = "aiopt-control"
    prefix: str = "aiopt-live"
    state_key: str | None = None
    stream_maxlen: int = Field(default=100_000, ge=100)
    script: tuple[ScriptedCommand, ...] = ()

    @field_validator("redis_url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).password:
            raise ValueError(
                "the Redis URL must not carry a password: set AIOPT_REDIS_PASSWORD instead"
            )
        return value

    @property
    def state(self) -> str:
        """The Redis key of the control state."""
        return self.state_key or f"{self.prefix}:state"


class LiveConfig(_Frozen):
    """Everything :func:`~aiopt_lib.live.node.build_live_node` needs (module docstring).
    ``redis_password`` / ``model_token`` come from the environment only."""

    trader_id: str = "AIOPT-LIVE-001"
    data: DataSettings = Field(default_factory=DataSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    strategy: StrategySettings = Field(default_factory=StrategySettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    run_dir: Path | None = None
    output_dir: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    redis_password: SecretStr | None = Field(default=None, exclude=True)
    model_token: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("trader_id")
    @classmethod
    def _trader_id(cls, value: str) -> str:
        name, sep, tag = value.rpartition("-")
        if not (sep and name and tag):
            raise ValueError(f"trader_id must be a name and a tag joined by '-', got {value!r}")
        return value


def _secret_keys(data: Any, where: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if any(word in str(key).lower() for word in _SECRET_WORDS):
                found.append(path)
            found.extend(_secret_keys(value, path))
    return found


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths of a file's sections, made relative to the file's folder."""
    paths = {
        "data": ("catalog",),
        "strategy": ("spec", "ranking"),
        "model": ("predictions", "path", "models_dir"),
        "": ("run_dir", "output_dir"),
    }
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for section, keys in paths.items():
        target = out if not section else out.get(section)
        if not isinstance(target, dict):
            continue
        for key in keys:
            value = target.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                target[key] = str(base / value)
    bars = out.get("data", {}).get("bars") if isinstance(out.get("data"), dict) else None
    relative = isinstance(bars, str) and bars != "sample" and not Path(bars).is_absolute()
    if relative and (base / bars).exists():
        out["data"]["bars"] = str(base / bars)
    return out


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    overrides: list[tuple[tuple[str, ...], str]] = [
        (target, environ[name]) for name, target in _SHORTCUTS.items() if environ.get(name)
    ]
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            parts = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p)
            if parts:
                overrides.append((parts, value))
    for parts, text in overrides:
        if any(word in parts[-1] for word in _SECRET_WORDS):
            continue  # secrets go through their own variables only
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        target = out
        for part in parts[:-1]:
            nested = target.get(part)
            if not isinstance(nested, dict):
                nested = {}
                target[part] = nested
            target = nested
        target[parts[-1]] = value
    return out


def load_live_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LiveConfig:
    """The :class:`LiveConfig` of the YAML file ``path`` (None: defaults only), with the
    environment (``environ``, default ``os.environ``) applied over it and then ``overrides``
    (a mapping of sections, for tests and notebooks). One :class:`ConfigError` names the file
    and every bad field; a file holding a secret is refused."""
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "live config"
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path, "live config")
        secrets = _secret_keys(data)
        if secrets:
            raise ConfigError(
                f"{source}: {', '.join(secrets)}: secrets are read from the environment only "
                "(AIOPT_REDIS_PASSWORD, AIOPT_MODEL_TOKEN), never from a config file"
            )
        data = _resolve_paths(data, Path(path).resolve().parent)
    data = _apply_environment(data, env)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    for field, variable in (
        ("redis_password", "AIOPT_REDIS_PASSWORD"),
        ("model_token", "AIOPT_MODEL_TOKEN"),
    ):
        if env.get(variable):
            data[field] = env[variable]
    return validate_model(LiveConfig, data, source=source, what="live config")
