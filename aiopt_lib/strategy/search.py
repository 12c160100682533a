"""Optuna strategy search with walk-forward validation and an overfitting-aware top 5.

A :class:`SearchTemplate` is a :class:`~aiopt_lib.strategy.spec.StrategySpec` whose ``params`` get
ranges (:class:`ParamRange`) and optional ``constraints`` (``"fast < slow"``). :func:`run_search`
then does, for a :class:`SearchConfig`:

1. **Walk-forward folds** over the bars (:func:`aiopt_lib.features.splits.walk_forward_splits`; rolling or
   anchored training windows, each followed by its test window; the test windows tile the end of
   the data).
2. **One Optuna study per fold** (``<study>-fold<k>``), tuning on the fold's *training window
   only*: each trial backtests its spec once on the whole history (indicators need their
   warm-up; a value at bar t uses bars <= t only) and is scored on the training window's slice of
   the equity curve. Single objective (TPE; intermediate scores on growing parts of the training
   window feed the pruner) or several (NSGA-II). Trials with too few training trades, an
   undefined score or a violated constraint are pruned, never silently scored.
3. **Walk-forward out-of-sample equity**: each fold's best trial traded on that fold's test window;
   the test windows stitched into one out-of-sample curve, next to buy-and-hold on the same bars.
   This is the honest figure: at no point did the choice see the data it is scored on.
4. **Ranking** (:func:`rank_trials`): every trial is scored on everything after its training window
   (data its study never saw); the best five after collapsing near-duplicates, each with its
   Deflated Sharpe Ratio, and the Probability of Backtest Overfitting of the whole search (CSCV
   over all trials' daily returns) — :mod:`aiopt_lib.strategy.overfitting`.

Storage: Optuna's journal file ``optuna.log`` in the run folder by default (running again
continues the studies up to ``n_trials`` each; a run folder that already holds an ``optuna.db``
keeps that SQLite file), ``sqlite:///file.db``, or any Optuna RDB URL (``postgresql://...``) for
workers on many machines. ``workers > 1`` starts that many processes (or Ray tasks) on the same
studies; workers of other machines may join them, and together they stop at exactly ``n_trials``
per study (:func:`optimise`). The journal is the default because several local workers write
it faster than SQLite, whose writers wait for one another (``benchmarks/bench_search.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import polars as pl
import sqlalchemy
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from aiopt_lib.core.atomic import write_parquet_atomic, write_text_atomic
from aiopt_lib.core.bars import ensure_bars, infer_timeframe
from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import ConfigError, SearchInterrupted, plain_name
from aiopt_lib.features.registry import lookup_output
from aiopt_lib.features.splits import walk_forward_splits
from aiopt_lib.strategy import overfitting
from aiopt_lib.strategy.backtest import YEAR, BacktestResult, backtest_metrics, metrics_from_arrays
from aiopt_lib.strategy.ranking import RANKING_SCHEMA_VERSION
from aiopt_lib.strategy.rules import (
    Arith,
    BoolConst,
    Compare,
    Const,
    Indicator,
    Logic,
    Node,
    Not,
    Param,
    SignalContext,
    parse_rule,
    walk,
)
from aiopt_lib.strategy.spec import RULES, StrategySpec, backtest, validate_model

# Metrics where smaller is better; every other metric of backtest_metrics is maximised.
MINIMISED_METRICS = frozenset({"max_drawdown"})
OBJECTIVE_METRICS = (
    "sharpe",
    "sortino",
    "calmar",
    "total_return",
    "annual_return",
    "profit_factor",
    "win_rate",
    "avg_trade",
    "max_drawdown",
)
_PRUNE_CHECKPOINTS = 3
# seconds between a running trial's heartbeats on a database server (AIOPT_SEARCH_HEARTBEAT_S)
HEARTBEAT_S = 10


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamRange(_Frozen):
    """The values a search tries for one parameter: ``low``..``high`` (whole numbers when both are
    ints and ``step`` is an int or unset; ``step`` a grid; ``log`` a log scale) or ``choices``."""

    # int | float keeps what the file says: ``{low: 3, high: 40}`` is a whole-number range,
    # ``{low: -2.0, high: 1.0}`` a real one
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: list[int | float] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices or low/high")
            return self
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"need low <= high, got {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log ranges need low > 0")
        return self

    @property
    def is_int(self) -> bool:
        """Whether the range yields whole numbers."""
        if self.choices is not None:
            return all(isinstance(c, int) for c in self.choices)
        values = (self.low, self.high, self.step if self.step is not None else 1)
        return all(isinstance(v, int) for v in values)

    def suggest(self, trial: optuna.Trial, name: str) -> int | float:
        """Ask ``trial`` for a value of ``name``."""
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.is_int:
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def bounds(self) -> tuple[float, float] | list[int | float]:
        """``(low, high)`` or the choices (for near-duplicate distances)."""
        return list(self.choices) if self.choices is not None else (self.low, self.high)


class SearchTemplate(_Frozen):
    """A spec plus the ranges of the params a search tunes, and constraints between them.

    Params of ``spec`` without a range keep their value. A range given as ``auto`` is the
    indicator registry's usual range for the indicator argument the param feeds (``cci(n)``
    with ``n: auto`` tries the CCI lengths of :mod:`aiopt_lib.features.registry`). Constraints are
    conditions over the params in the rule language (``"fast < slow"``, ``"take_atr >= stop_atr"``).
    """

    spec: StrategySpec
    space: dict[str, ParamRange | Literal["auto"]]
    constraints: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> SearchTemplate:
        unknown = sorted(set(self.space) - set(self.spec.params))
        if unknown:
            raise ValueError(f"space names {unknown} are not params of the spec")
        auto = [name for name, values in self.space.items() if values == "auto"]
        if auto:
            ranges = _indicator_ranges(self.spec)
            missing = [name for name in auto if name not in ranges]
            if missing:
                raise ValueError(
                    f"space {missing}: 'auto' needs the param to be an indicator argument in "
                    "the rules (give low/high otherwise)"
                )
            # the model is frozen; the resolved ranges replace the word while it is validated
            object.__setattr__(self, "space", {**self.space, **{n: ranges[n] for n in auto}})
        for text in self.constraints:
            tree = parse_rule(text, self.spec.params, rule="constraint")
            _constraint_value(tree, self.spec.params)  # only params and numbers
        # the ends of each range must make a valid strategy (a stop distance of -2 ATR would
        # otherwise be found by the first trial that draws it, deep inside Optuna)
        for name, values in self.space.items():
            ends = values.choices if values.choices is not None else (values.low, values.high)
            for value in ends:
                value = int(value) if values.is_int else value
                try:
                    self.spec.with_params(**{name: value})
                except ConfigError as exc:
                    raise ValueError(
                        f"space.{name}: {value} gives an invalid strategy: {exc}"
                    ) from None
        return self

    def feasible(self, params: Mapping[str, float]) -> bool:
        """Whether ``params`` satisfy every constraint."""
        return all(
            _constraint_value(parse_rule(c, params, rule="constraint"), params)
            for c in self.constraints
        )

    def spec_for(self, params: Mapping[str, float]) -> StrategySpec:
        """The template's spec with ``params`` set."""
        return self.spec.with_params(**params)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "template") -> SearchTemplate:
        """Build from a mapping (YAML/JSON); errors name ``source`` and the field."""
        return validate_model(cls, data, source=source, what="search template")


def _indicator_ranges(spec: StrategySpec) -> dict[str, ParamRange]:
    """The registry's range for each param of ``spec`` used as an indicator argument (the
    widest over its uses)."""
    ranges: dict[str, tuple[float, float]] = {}
    for rule in RULES:
        tree = spec.rule(rule)
        for node in walk(tree) if tree is not None else ():
            if not isinstance(node, Indicator):
                continue
            found = lookup_output(node.name)
            assert found is not None  # the parser knows only registered outputs
            for arg, param in zip(node.args, found[0].params, strict=True):
                if isinstance(arg, Param):
                    low, high = ranges.get(arg.name, (param.low, param.high))
                    ranges[arg.name] = (min(low, param.low), max(high, param.high))
    return {name: ParamRange(low=low, high=high) for name, (low, high) in ranges.items()}


def _constraint_value(node: Node, params: Mapping[str, float]) -> Any:
    if isinstance(node, Const | BoolConst):
        return node.value
    if isinstance(node, Param):
        return float(params[node.name])
    if isinstance(node, Compare):
        left, right = _constraint_value(node.left, params), _constraint_value(node.right, params)
        return {
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
            "==": left == right,
            "!=": left != right,
        }[node.op]
    if isinstance(node, Arith):
        left, right = _constraint_value(node.left, params), _constraint_value(node.right, params)
        return {"+": left + right, "-": left - right, "*": left * right}.get(
            node.op, left / right if right else math.nan
        )
    if isinstance(node, Logic):
        values = [_constraint_value(o, params) for o in node.operands]
        return all(values) if node.op == "and" else any(values)
    if isinstance(node, Not):
        return not _constraint_value(node.operand, params)
    raise ConfigError(f"a constraint may only use params and numbers, not {type(node).__name__}")


def load_template(path: str | Path) -> SearchTemplate:
    """Read a search template from YAML or JSON."""
    data = read_yaml_mapping(path, "search template")
    return SearchTemplate.from_mapping(data, source=str(path))


TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "data" / "templates"


def builtin_template_names() -> tuple[str, ...]:
    """The names of the templates shipped in ``aiopt_lib/data/templates``, sorted."""
    return tuple(sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml")))


def builtin_template(name: str = "ema_cross") -> SearchTemplate:
    """One of the templates shipped in ``aiopt_lib/data/templates`` (``ema_cross``,
    ``bollinger_reversion``, ``pattern_rsi``, ``ai_gate``, ``cci_reversion``,
    ``keltner_supertrend``)."""
    path = TEMPLATES_DIR / f"{plain_name(name, 'template')}.yaml"
    if not path.exists():
        raise ConfigError(f"no built-in template {name!r}; known: {list(builtin_template_names())}")
    return load_template(path)


def _check_metric(metric: str) -> str:
    if metric not in OBJECTIVE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(OBJECTIVE_METRICS)}")
    return metric


class SearchConfig(_Frozen):
    """How to search.

    ``n_trials`` per walk-forward fold; ``objective`` one metric of
    :func:`aiopt_lib.strategy.backtest.backtest_metrics` or several (then NSGA-II; ``max_drawdown`` is
    minimised, the others maximised); ``n_folds`` test windows of ``test_size`` (bars or a
    fraction; default an equal share), ``train_size`` the rolling training window (default: all
    bars before the first test window) or ``walk_forward="anchored"`` (from the first bar);
    ``min_trades`` in a training window for a trial to count; ``pruner`` ``"none"`` or
    ``"median"`` (Optuna's median rule on the training score of the first thirds of the window;
    off by default: a trial's backtest is one pass over the history, so pruning saves only the
    scoring and costs storage round trips); ``seed`` for the samplers (worker ``w`` of fold ``k`` uses ``seed + 1000 k + w``);
    ``rank_metric`` orders the final top ``top_k``; ``duplicate_tolerance`` the share of a range
    within which two parameter sets count as the same. ``holdout``: the lockbox, the last bars
    (a share, default 20 %, or a number of bars; 0: none) that no study and no ranking sees;
    the top strategies and the walk-forward pick are traded on it once, after the ranking.
    """

    study_name: str = "aiopt"
    n_trials: int = 100
    objective: list[str] = ["sharpe"]
    walk_forward: Literal["rolling", "anchored"] = "rolling"
    n_folds: int = 3
    train_size: int | float | None = None
    test_size: int | float | None = None
    min_trades: int = 5
    pruner: Literal["median", "none"] = "none"
    seed: int = 0
    rank_metric: str = "sharpe"
    top_k: int = 5
    duplicate_tolerance: float = 0.05
    timeout_s: float | None = None
    holdout: int | float = 0.2

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: int | float) -> int | float:
        if isinstance(value, bool) or value < 0 or (isinstance(value, float) and value >= 0.9):
            raise ValueError(f"must be a share in [0, 0.9) or a number of bars >= 0, got {value}")
        return value

    def lockbox_start(self, n_bars: int) -> int:
        """The first bar of the lockbox (``n_bars`` when there is none): the last ``holdout``
        bars (a share, or a number of bars), which no study and no ranking ever sees."""
        held = round(n_bars * self.holdout) if isinstance(self.holdout, float) else self.holdout
        if held and held < MIN_WINDOW_BARS:
            raise ConfigError(
                f"holdout {self.holdout} leaves a lockbox of {held} bar(s); give 0 (none) or at "
                f"least {MIN_WINDOW_BARS} bars"
            )
        if held >= n_bars:
            raise ConfigError(f"holdout {self.holdout} takes all {n_bars:,} bars")
        return n_bars - held

    @model_validator(mode="before")
    @classmethod
    def _objective_list(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("objective"), str):
            data = {**data, "objective": [data["objective"]]}
        return data

    @field_validator("n_trials", "n_folds", "top_k")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be 1 or more, got {value}")
        return value

    @field_validator("objective")
    @classmethod
    def _objective_metrics(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("needs one or more distinct metrics")
        for metric in value:
            _check_metric(metric)
        return value

    @field_validator("rank_metric")
    @classmethod
    def _rank_metric(cls, value: str) -> str:
        return _check_metric(value)

    @property
    def directions(self) -> list[str]:
        """Optuna's direction per objective."""
        return ["minimize" if m in MINIMISED_METRICS else "maximize" for m in self.objective]


# ---------------------------------------------------------------------------------------------
# Walk-forward windows and scoring


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold as bar positions: ``train_start:train_stop`` then ``test_start:test_stop``."""

    index: int
    train_start: int
    train_stop: int
    test_start: int
    test_stop: int


# The fewest bars a training or test window may have: below it a window holds a trade or two and
# its Sharpe is noise (a search with --folds 5000 on 6,225 bars would score 1-bar windows).
MIN_WINDOW_BARS = 30


def walk_forward_folds(bars: pl.DataFrame, config: SearchConfig) -> list[Fold]:
    """The folds of ``config`` over ``bars`` (contiguous windows, test windows ending at the last
    bar). A window shorter than ``MIN_WINDOW_BARS`` is a :class:`ConfigError` saying how many
    folds fit, before any trial runs."""
    frame = bars.select("ts")
    n = frame.height
    if config.test_size is None and config.train_size is None:
        # the default layout: n_folds test windows and one training window of n // (folds + 1)
        window = n // (config.n_folds + 1)
        if window < MIN_WINDOW_BARS:
            most = max(n // MIN_WINDOW_BARS - 1, 0)
            raise ConfigError(
                f"--folds {config.n_folds} on {n:,} bars leaves windows of {window} bar(s); "
                f"at most {most} folds give windows of {MIN_WINDOW_BARS} bars or more"
            )
    splits = walk_forward_splits(
        frame,
        config.n_folds,
        train_size=config.train_size,
        test_size=config.test_size,
        anchored=config.walk_forward == "anchored",
        label_end="ts",
    )
    folds = [
        Fold(
            s.fold,
            int(s.train[0]),
            int(s.train[-1]) + 1,
            int(s.test[0]),
            int(s.test[-1]) + 1,
        )
        for s in splits
    ]
    shortest = min(min(f.train_stop - f.train_start, f.test_stop - f.test_start) for f in folds)
    if shortest < MIN_WINDOW_BARS:
        raise ConfigError(
            f"{config.n_folds} fold(s) on {n:,} bars (train_size {config.train_size}, test_size "
            f"{config.test_size}) leave a window of {shortest} bar(s); windows need "
            f"{MIN_WINDOW_BARS} bars or more"
        )
    return folds


def window_metrics(
    result: BacktestResult, start: int, stop: int, timeframe: dt.timedelta | None
) -> dict[str, float]:
    """:func:`~aiopt_lib.strategy.backtest.backtest_metrics` of bars ``start:stop`` of a full-history
    backtest: returns from the equity at the close before the window (the first bar's equity for
    ``start = 0``), the trades that closed inside it."""
    equity = result.equity.get_column("equity").to_numpy()
    position = result.equity.get_column("position").to_numpy()
    ts = result.equity.get_column("ts")
    exits = result.trades.get_column("exit_ts")
    first, last = ts[start], ts[stop - 1]
    lo = exits.search_sorted(first, side="left")
    hi = exits.search_sorted(last, side="right")
    pnl = result.trades.get_column("pnl").to_numpy()[lo:hi]
    base = float(equity[start - 1] if start > 0 else equity[0])
    return metrics_from_arrays(equity[start:stop], position[start:stop], pnl, base, timeframe)


class TrialEvaluator:
    """Backtests a template's parameter sets on one set of bars, reusing indicators across trials."""

    def __init__(
        self,
        bars: pl.DataFrame,
        template: SearchTemplate,
        predictions: pl.DataFrame | None = None,
    ) -> None:
        self.bars = ensure_bars(bars)
        self.template = template
        self.context = SignalContext(self.bars, predictions)
        self.timeframe = infer_timeframe(self.bars)

    def backtest(self, params: Mapping[str, float]) -> BacktestResult:
        """The full-history :class:`~aiopt_lib.strategy.backtest.BacktestResult` of ``params``."""
        return backtest(self.context, self.template.spec_for(params))


def _objective_fn(
    evaluator: TrialEvaluator, fold: Fold, config: SearchConfig
) -> Callable[[optuna.Trial], float | list[float]]:
    template = evaluator.template
    single = len(config.objective) == 1

    def objective(trial: optuna.Trial) -> float | list[float]:
        params = {name: r.suggest(trial, name) for name, r in template.space.items()}
        if not template.feasible(params):
            trial.set_user_attr("pruned_because", "constraint")
            raise optuna.TrialPruned("constraint violated")
        result = evaluator.backtest(params)
        if single and config.pruner != "none":
            span = fold.train_stop - fold.train_start
            for step in range(1, _PRUNE_CHECKPOINTS):
                stop = fold.train_start + span * step // _PRUNE_CHECKPOINTS
                partial = window_metrics(result, fold.train_start, stop, evaluator.timeframe)
                value = partial[config.objective[0]]
                if math.isfinite(value):
                    trial.report(value, step)
                    if trial.should_prune():
                        trial.set_user_attr("pruned_because", "pruner")
                        raise optuna.TrialPruned(f"pruned at checkpoint {step}")
        train = window_metrics(result, fold.train_start, fold.train_stop, evaluator.timeframe)
        oos = window_metrics(result, fold.test_start, len(evaluator.bars), evaluator.timeframe)
        test = window_metrics(result, fold.test_start, fold.test_stop, evaluator.timeframe)
        trial.set_user_attr(
            "scores",
            {
                "train": _jsonable(train),
                "test": _jsonable(test),
                "oos": _jsonable(oos),
                "pid": os.getpid(),  # which worker process ran it
            },
        )
        if train["trades"] < config.min_trades:
            trial.set_user_attr("pruned_because", "min_trades")
            raise optuna.TrialPruned(f"{int(train['trades'])} training trades")
        values = [train[m] for m in config.objective]
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr("pruned_because", "undefined score")
            raise optuna.TrialPruned("undefined score")
        return values[0] if single else values

    return objective


def _jsonable(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON has no NaN/inf: None for NaN, a large number keeps inf profit factors ordered
    return {
        k: (None if math.isnan(v) else (1e300 if v == math.inf else v)) for k, v in metrics.items()
    }


def _unjson(metrics: Mapping[str, float | None]) -> dict[str, float]:
    return {
        k: (math.nan if v is None else (math.inf if v >= 1e300 else float(v)))
        for k, v in metrics.items()
    }


# ---------------------------------------------------------------------------------------------
# Storage and studies


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: ``sqlite:///file.db`` (with a generous lock timeout so
    several processes can share it), ``journal:///file.log`` (journal file) or any RDB URL.

    Every way a URL can be wrong (not a URL, a folder where a file belongs, a missing database
    driver, no server, a file that is not an Optuna database) is one :class:`ConfigError` naming
    the URL (its password hidden)."""
    shown = _redacted(url)
    if "://" not in url:
        raise ConfigError(
            f"storage {shown!r} is not a storage URL: use sqlite:///FILE.db, journal:///FILE.log "
            "or postgresql://USER@HOST/DATABASE"
        )
    if url.startswith("journal://"):
        path = Path(url.removeprefix("journal://"))
        if not url.startswith("journal:///") or path.is_dir() or not path.name:
            raise ConfigError(
                f"storage {shown!r}: a journal needs a file path, e.g. journal:///runs/x/journal.log"
            )
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _check_journal(path)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise ConfigError(f"storage {shown!r}: {path}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError) as exc:  # a line that is no journal record
            raise ConfigError(
                f"storage {shown!r}: {path} is not an Optuna journal file ({exc}); move it away "
                "or choose another --out/--storage"
            ) from None
    if not url.startswith("sqlite:"):
        # a database server is shared by machines: a worker's trials carry heartbeats, and a
        # trial whose heartbeat lapsed (its machine died) is failed and run again by the others
        interval = int(os.environ.get("AIOPT_SEARCH_HEARTBEAT_S", HEARTBEAT_S))
        return _rdb_storage(
            url,
            shown,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=interval,
            grace_period=3 * interval,
        )
    path = Path(url.removeprefix("sqlite:///"))
    if not url.startswith("sqlite:///") or path.is_dir() or not path.name:
        raise ConfigError(
            f"storage {shown!r}: SQLite needs a database file, e.g. sqlite:///runs/x/optuna.db"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # write-ahead logging: readers do not block the writer, and a commit appends to the
            # log instead of rewriting pages (several times faster; the mode is stored in the file)
            with sqlite3.connect(path) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"storage {shown!r}: cannot create {path}: {exc}") from None
    storage = _rdb_storage(url, shown, engine_kwargs={"connect_args": {"timeout": 60}})
    sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()  # connections opened so far did not run the pragmas
    return storage


def _check_journal(path: Path) -> None:
    """Raise ``ValueError`` when ``path`` exists but does not start with an Optuna journal
    record (Optuna itself would fail only once a record follows the bad line)."""
    if not path.is_file():
        return
    with path.open("rb") as file:
        first = file.readline(1 << 20)
    if first and not (first.endswith(b"\n") and b'"op_code"' in first):
        raise ValueError("its first line is no journal record")
    if first:
        json.loads(first)


def _redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (error messages end up in logs)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _rdb_storage(
    url: str,
    shown: str,
    engine_kwargs: dict[str, Any] | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> optuna.storages.RDBStorage:
    import warnings

    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period,
                    )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # workers starting together on an empty database all create Optuna's tables;
                # PostgreSQL lets one win and fails the others: they find the tables next time
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except ImportError:
        scheme = url.split("://", 1)[0]
        hint = {"postgresql": " (pip install 'psycopg[binary]')", "mysql": " (pip install pymysql)"}
        raise ConfigError(
            f"storage {shown!r}: the database driver for {scheme!r} is not installed"
            f"{hint.get(scheme.split('+')[0], '')}"
        ) from None
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"storage {shown!r} is not a valid database URL") from None
    except sqlalchemy.exc.DatabaseError as exc:
        if url.startswith("sqlite:"):
            raise ConfigError(
                f"storage {shown!r}: the file is not an Optuna SQLite database (corrupt or "
                "another program's); move it away or choose another --out/--storage"
            ) from None
        reason = " ".join(str(exc.orig or exc).split())[:200]
        raise ConfigError(f"storage {shown!r}: cannot connect: {reason}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = " ".join(str(exc).split("\n")[0].split())[:200]
        raise ConfigError(f"storage {shown!r}: {reason}") from None


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # with WAL, NORMAL syncs at checkpoints only: a power cut may lose the last trials, never
    # corrupt the file
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _study(
    storage: optuna.storages.BaseStorage, config: SearchConfig, fold: int, worker: int
) -> optuna.Study:
    seed = config.seed + 1000 * fold + worker
    if len(config.objective) == 1:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True
        )
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=10, n_warmup_steps=1)
        if config.pruner == "median" and len(config.objective) == 1
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=storage,
        study_name=f"{config.study_name}-fold{fold}",
        directions=config.directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


_COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
_LIVE = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
_WORKER_ATTR = "worker"  # "host:pid" of the process running a trial
_SURPLUS_ATTR = "surplus"
# A RUNNING trial of a worker on another machine, in a storage without heartbeats (the journal
# file), is taken for dead after this long; on PostgreSQL the heartbeat decides within a minute.
STALE_AFTER_S = 1800.0


class _SurplusTrialError(Exception):
    """This trial would be one too many: the study's other trials fill ``n_trials``."""


def worker_identity() -> str:
    """``host:pid`` of this search worker; ``AIOPT_WORKER_HOST`` names the machine when its host
    name is not unique (containers) or to simulate machines in one."""
    host = os.environ.get("AIOPT_WORKER_HOST") or socket.gethostname()
    return f"{host}:{os.getpid()}"


def _backend(study: optuna.Study) -> optuna.storages.BaseStorage:
    storage = study._storage
    return getattr(storage, "_backend", storage)  # create_study wraps an RDB in a cache


def _count_trials(
    study: optuna.Study, states: Sequence[optuna.trial.TrialState], below: int | None = None
) -> int:
    """Trials of ``study`` in ``states`` (with ``below``: created before trial id ``below``). On a
    database one ``count(*)``: a worker asks before and after every trial."""
    backend = _backend(study)
    if isinstance(backend, optuna.storages.RDBStorage):
        query = "SELECT count(*) FROM trials WHERE study_id = :study AND state IN :states"
        values: dict[str, Any] = {"study": study._study_id, "states": [s.name for s in states]}
        if below is not None:
            query += " AND trial_id < :below"
            values["below"] = below
        statement = sqlalchemy.text(query).bindparams(
            sqlalchemy.bindparam("states", expanding=True)
        )
        with backend.engine.connect() as connection:
            return int(connection.execute(statement, values).scalar_one())
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False, states=tuple(states))
    return sum(1 for t in trials if below is None or t._trial_id < below)


def _done(study: optuna.Study) -> int:
    return _count_trials(study, _COUNTED)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study, now: dt.datetime | None = None) -> int:
    """Mark the RUNNING trials of dead workers FAIL, so that their slots are run again: a worker
    of this machine whose process is gone, a trial whose heartbeat lapsed (PostgreSQL and other
    database servers), or, in a storage without heartbeats, another machine's trial older than
    :data:`STALE_AFTER_S`. Returns how many were failed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    heartbeat = getattr(_backend(study), "get_heartbeat_interval", lambda: None)() is not None
    host = worker_identity().rpartition(":")[0]
    now = now or dt.datetime.now()
    failed = 0
    running = (optuna.trial.TrialState.RUNNING,)
    for trial in study._storage.get_all_trials(study._study_id, deepcopy=False, states=running):
        owner, _, pid = str(trial.user_attrs.get(_WORKER_ATTR, "")).rpartition(":")
        if owner == host and pid.isdigit():
            dead = not _alive(int(pid))
        else:
            started = trial.datetime_start or now
            dead = not heartbeat and (now - started).total_seconds() > STALE_AFTER_S
        if not dead:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                failed += 1
    return failed


def _exactly(
    objective: Callable[[optuna.Trial], Any], study: optuna.Study, n_trials: int
) -> Callable[[optuna.Trial], Any]:
    """``objective`` keeping the study at exactly ``n_trials`` however many workers share it: a
    trial counts only if fewer than ``n_trials`` trials created before it are running or done;
    otherwise it ends FAIL (marked ``surplus``) before its backtest or, when it lost a race,
    after it. The checks read the storage, so workers on other machines are counted too."""
    identity = worker_identity()

    def claim(trial: optuna.Trial) -> None:
        ahead = _count_trials(study, _COUNTED + _LIVE, below=trial._trial_id)
        if ahead >= n_trials:
            _SURPLUS_NUMBERS.add(trial.number)
            trial.set_user_attr(_SURPLUS_ATTR, True)
            raise _SurplusTrialError(f"{ahead} trials before this one fill the study")

    def run(trial: optuna.Trial) -> Any:
        trial.set_user_attr(_WORKER_ATTR, identity)
        claim(trial)
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            claim(trial)
            raise
        claim(trial)
        return value

    return run


_SURPLUS_NUMBERS: set[int] = set()  # this process's surplus trials of the current study


class _SurplusFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Trial ") or " failed with " not in message:
            return True
        number = message[6:].split(" ", 1)[0]
        return not (number.isdigit() and int(number) in _SURPLUS_NUMBERS)


def _quiet_surplus_trials() -> None:
    """Optuna warns about every trial that ends FAIL; a surplus trial is no failure."""
    # on the handlers: a logger's own filters do not see its children's records
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _SurplusFilter) for f in handler.filters):
            handler.addFilter(_SurplusFilter())


def _optimise_folds(
    bars: pl.DataFrame,
    template: SearchTemplate,
    config: SearchConfig,
    storage_url: str,
    predictions: pl.DataFrame | None,
    worker: int,
    progress: Callable[[int], None] | None,
    ready: Any = None,
    stop: Any = None,
) -> None:
    """One worker: every fold's study in turn, until each has exactly ``n_trials`` trials,
    whichever workers (here or on other machines) run them. With ``ready`` (a multiprocessing
    barrier) the workers start together once each has loaded; once ``stop`` (anything with
    ``is_set()``) is set, the worker ends after its running trial."""
    import warnings

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_surplus_trials()
    evaluator = TrialEvaluator(bars, template, predictions)
    storage = open_storage(storage_url)
    if ready is not None:
        evaluator.backtest(template.spec.params)  # compile and cache before the start
        ready.wait(timeout=300)
    started = time.monotonic()

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in _COUNTED and progress is not None:
            progress(1)
        if trial.user_attrs.get(_SURPLUS_ATTR) or stopped():
            study.stop()

    for fold in walk_forward_folds(evaluator.bars, config):
        study = _study(storage, config, fold.index, worker)
        _SURPLUS_NUMBERS.clear()
        objective = _exactly(_objective_fn(evaluator, fold, config), study, config.n_trials)
        while not stopped():
            fail_dead_trials(study)
            done = _done(study)
            if done >= config.n_trials:
                break
            live = _count_trials(study, _LIVE)
            if done + live >= config.n_trials:
                time.sleep(0.2)  # the last trials run elsewhere; if their worker dies, rerun them
                continue
            timeout = None
            if config.timeout_s is not None:
                timeout = max(config.timeout_s - (time.monotonic() - started), 0.001)
            study.optimize(
                objective,
                n_trials=config.n_trials - done - live,
                timeout=timeout,
                callbacks=[after_trial],
                gc_after_trial=False,
                catch=(_SurplusTrialError,),
            )
            if timeout is not None and time.monotonic() - started >= config.timeout_s:
                break  # out of time: the next fold gets its one trial, as a single study would
        if stopped():
            return


def _worker_main(
    bars_ipc: bytes,
    template_json: str,
    config_json: str,
    storage_url: str,
    predictions_ipc: bytes | None,
    worker: int,
    ready: Any,
    stop: Any,
) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent decides (it sets ``stop``)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _shipped_worker(
        bars_ipc, template_json, config_json, storage_url, predictions_ipc, worker, ready, stop
    )


def _shipped_worker(
    bars_ipc: bytes,
    template_json: str,
    config_json: str,
    storage_url: str,
    predictions_ipc: bytes | None,
    worker: int,
    ready: Any,
    stop: Any,
) -> None:
    """:func:`_optimise_folds` on arguments shipped to another process (Arrow IPC and JSON)."""
    import io

    bars = pl.read_ipc(io.BytesIO(bars_ipc))
    predictions = pl.read_ipc(io.BytesIO(predictions_ipc)) if predictions_ipc else None
    _optimise_folds(
        bars,
        SearchTemplate.model_validate_json(template_json),
        SearchConfig.model_validate_json(config_json),
        storage_url,
        predictions,
        worker,
        None,
        ready,
        stop,
    )


def _ipc(frame: pl.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return buffer.getvalue()


def optimise(
    bars: pl.DataFrame,
    template: SearchTemplate,
    config: SearchConfig,
    storage_url: str,
    *,
    predictions: pl.DataFrame | None = None,
    workers: int = 1,
    progress: bool = True,
    ray_address: str | None = None,
) -> None:
    """Run the fold studies in ``storage_url`` up to exactly ``config.n_trials`` trials each, in
    ``workers`` processes (1: this process), or as ``workers`` Ray tasks when ``ray_address`` is
    given (``"local"``: Ray started on this machine; else the cluster's address; the storage
    must then be reachable from every node: PostgreSQL, or a file on shared storage). Other
    workers on other machines may share the studies; together they stop at ``n_trials``. A
    progress bar counts trials when ``progress``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bars = ensure_bars(bars)
    folds = walk_forward_folds(bars, config)
    storage = open_storage(storage_url)
    studies = [_study(storage, config, f.index, 0) for f in folds]  # tables and studies first
    for study in studies:
        _claim_study(study, template, storage_url)
    total = config.n_trials * len(folds)

    def done() -> int:
        return sum(min(_done(s), config.n_trials) for s in studies)

    bar = _progress_bar(total, done(), config.study_name) if progress else None
    stop = threading.Event()
    try:
        if ray_address is not None:
            _run_ray_workers(
                bars, template, config, storage_url, predictions, workers, stop, bar, done,
                ray_address,
            )  # fmt: skip
        elif workers <= 1:
            with _stop_on_interrupt(stop):
                _optimise_folds(
                    bars,
                    template,
                    config,
                    storage_url,
                    predictions,
                    0,
                    bar.update if bar is not None else None,
                    stop=stop,
                )
        else:
            _run_workers(bars, template, config, storage_url, predictions, workers, stop, bar, done)
    finally:
        if bar is not None:
            bar.n = done()
            bar.close()
    if stop.is_set():
        raise SearchInterrupted(
            f"search stopped after the running trials; {done()} of {total} trials are kept in "
            f"{_redacted(storage_url)}; run the same command again to continue"
        )


def _run_workers(
    bars: pl.DataFrame,
    template: SearchTemplate,
    config: SearchConfig,
    storage_url: str,
    predictions: pl.DataFrame | None,
    workers: int,
    stop: threading.Event,
    bar: Any,
    done: Callable[[], int],
) -> None:
    context = multiprocessing.get_context("spawn")
    arguments = (
        _ipc(bars),
        template.model_dump_json(),
        config.model_dump_json(),
        storage_url,
        _ipc(predictions) if predictions is not None else None,
    )
    ready = context.Barrier(workers)
    shared_stop = context.Event()
    processes = [
        context.Process(target=_worker_main, args=(*arguments, w, ready, shared_stop), daemon=True)
        for w in range(workers)
    ]
    # the workers start with Ctrl-C ignored (kept across exec, so Python leaves it so): an
    # interrupt in their start-up would otherwise kill them with a traceback
    with _sigint_ignored():
        for process in processes:
            process.start()
    with _stop_on_interrupt(stop):
        while any(p.is_alive() for p in processes):
            time.sleep(0.25)
            if stop.is_set():
                shared_stop.set()
            if bar is not None:
                bar.n = done()
                bar.refresh()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} search worker(s) failed (exit codes {failed})")


class _RayStopFlag:
    """The driver's "stop after the running trial", read by Ray tasks (a Ray actor)."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


class _PolledFlag:
    """``is_set()`` of a remote :class:`_RayStopFlag`, asked at most every ``every`` seconds."""

    def __init__(self, actor: Any, every: float = 0.5) -> None:
        self.actor, self.every, self.asked, self.value = actor, every, 0.0, False

    def is_set(self) -> bool:
        if not self.value and time.monotonic() - self.asked >= self.every:
            import ray

            self.asked = time.monotonic()
            self.value = bool(ray.get(self.actor.is_set.remote()))
        return self.value


def _ray_worker(
    bars_ipc: bytes,
    template_json: str,
    config_json: str,
    storage_url: str,
    predictions_ipc: bytes | None,
    worker: int,
    stop_actor: Any,
) -> str:
    """A Ray task: one search worker (:func:`_optimise_folds`) on this node; returns its
    ``host:pid``."""
    _shipped_worker(
        bars_ipc,
        template_json,
        config_json,
        storage_url,
        predictions_ipc,
        worker,
        None,
        _PolledFlag(stop_actor),
    )
    return worker_identity()


def _run_ray_workers(
    bars: pl.DataFrame,
    template: SearchTemplate,
    config: SearchConfig,
    storage_url: str,
    predictions: pl.DataFrame | None,
    workers: int,
    stop: threading.Event,
    bar: Any,
    done: Callable[[], int],
    address: str,
) -> list[str]:
    """``workers`` Ray tasks on the studies (one CPU each); returns their ``host:pid``."""
    from aiopt_lib.core.cluster import ray_session

    if storage_url.startswith(("sqlite:", "journal:")) and address not in ("", "local"):
        print(
            f"aiopt: {_redacted(storage_url)} is a file: every Ray node must see it at that path "
            "(shared storage); a PostgreSQL URL needs no shared folder",
            file=sys.stderr,
        )
    with ray_session(address) as ray:
        flag = ray.remote(num_cpus=0)(_RayStopFlag).remote()
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_worker)
        arguments = (
            ray.put(_ipc(bars)),
            template.model_dump_json(),
            config.model_dump_json(),
            storage_url,
            ray.put(_ipc(predictions)) if predictions is not None else None,
        )
        pending = [task.remote(*arguments, w, flag) for w in range(max(workers, 1))]
        finished, errors = [], []
        with _stop_on_interrupt(stop):
            while pending:
                ready, pending = ray.wait(pending, timeout=0.5)
                for ref in ready:
                    try:
                        finished.append(ray.get(ref))
                    except ray.exceptions.RayError as exc:
                        errors.append(" ".join(str(exc).split())[-300:])
                if stop.is_set():
                    ray.get(flag.set.remote())
                if bar is not None:
                    bar.n = done()
                    bar.refresh()
        if errors:
            raise RuntimeError(f"{len(errors)} Ray search worker(s) failed: {errors[0]}")
        return finished


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """While the search runs, the first Ctrl-C sets ``stop`` (the running trials finish and are
    stored, so the studies stay clean and resumable); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; elsewhere Ctrl-C cannot arrive
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\naiopt: stopping after the running trials (Ctrl-C again to abort at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _claim_study(study: optuna.Study, template: SearchTemplate, storage_url: str) -> None:
    """Mark a new study with its template; refuse to continue a study of another template
    (its trials' params would not fit this one's)."""
    name = template.spec.name
    stored = study.user_attrs.get("template")
    seen = {p for t in study.get_trials(deepcopy=False) for p in t.params}
    if (stored is not None and stored != name) or seen - set(template.space):
        raise ConfigError(
            f"a study for template {stored or 'another template'!r} (params "
            f"{sorted(seen)}) already exists in "
            f"{_redacted(storage_url)}; use another --out or --study to search {name!r}"
        )
    if stored is None:
        study.set_user_attr("template", name)


def _progress_bar(total: int, done: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=f"search {name}", unit="trial")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial: its fold, number, params and scores (train/test/oos metrics)."""

    fold: int
    number: int
    params: dict[str, int | float]
    values: tuple[float, ...]
    train: dict[str, float]
    test: dict[str, float]
    oos: dict[str, float]
    pid: int = 0


def load_trials(storage_url: str, config: SearchConfig, n_folds: int) -> list[TrialRecord]:
    """The completed trials of every fold study (pruned and failed ones are left out)."""
    storage = open_storage(storage_url)
    records = []
    for fold in range(n_folds):
        study = optuna.load_study(study_name=f"{config.study_name}-fold{fold}", storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            scores = trial.user_attrs["scores"]
            records.append(
                TrialRecord(
                    fold=fold,
                    number=trial.number,
                    params=dict(trial.params),
                    values=tuple(trial.values),
                    train=_unjson(scores["train"]),
                    test=_unjson(scores["test"]),
                    oos=_unjson(scores["oos"]),
                    pid=int(scores.get("pid", 0)),
                )
            )
    return records


def _best_of_fold(records: Sequence[TrialRecord], config: SearchConfig) -> TrialRecord:
    """The fold's pick: best objective (for several objectives: the Pareto-optimal trial that is
    best on the first objective)."""
    signs = [1.0 if d == "maximize" else -1.0 for d in config.directions]
    if len(signs) == 1:
        return max(records, key=lambda r: signs[0] * r.values[0])
    values = np.array([[s * v for s, v in zip(signs, r.values, strict=True)] for r in records])
    dominated = np.array(
        [
            bool(np.any(np.all(values >= row, axis=1) & np.any(values > row, axis=1)))
            for row in values
        ]
    )
    front = [r for r, d in zip(records, dominated, strict=True) if not d]
    return max(front, key=lambda r: signs[0] * r.values[0])


@dataclass(frozen=True)
class RankedStrategy:
    """One of the top strategies: its spec, where it came from, its scores and its DSR."""

    rank: int
    spec: StrategySpec
    fold: int
    trial: int
    oos_start: dt.datetime
    in_sample: dict[str, float]
    out_of_sample: dict[str, float]
    deflated_sharpe: float
    probabilistic_sharpe: float
    near_duplicates: int


@dataclass(frozen=True)
class Lockbox:
    """The last bars, held out of the whole search, and what the search's choices did on them.

    ``strategies``: one row per top strategy (``label`` ``"rank 1"`` ...) and for the
    walk-forward pick (the last fold's, what the procedure would trade next; ``"walk-forward
    pick"``) with its params and metrics on the lockbox bars (from a full-history backtest, so
    the indicators are warm and a position open at the start carries in, as in every
    out-of-sample score of the search); ``buy_and_hold`` the market's metrics there; ``equity``:
    ``ts``, ``buy_and_hold`` and one column per label, each 1.0 at the close before the lockbox."""

    start: dt.datetime
    end: dt.datetime
    n_bars: int
    strategies: pl.DataFrame
    buy_and_hold: dict[str, float]
    equity: pl.DataFrame

    def table(self) -> pl.DataFrame:
        """:attr:`strategies` and a last row for buy-and-hold (no params, no trades)."""
        hold = {k: self.buy_and_hold.get(k) for k in _LOCKBOX_METRICS if k != "trades"}
        row = pl.DataFrame([{"label": "buy-and-hold", "params": "", **hold}])
        return pl.concat([self.strategies, row], how="diagonal_relaxed")


_LOCKBOX_METRICS = ("total_return", "annual_return", "sharpe", "max_drawdown", "trades")


def evaluate_lockbox(
    bars: pl.DataFrame,
    start: int,
    template: SearchTemplate,
    candidates: Sequence[tuple[str, Mapping[str, float]]],
    predictions: pl.DataFrame | None = None,
) -> Lockbox:
    """Trade each ``(label, params)`` of ``candidates`` once on bars ``start:`` of ``bars`` (the
    lockbox) and measure it there next to buy-and-hold (see :class:`Lockbox`)."""
    evaluator = TrialEvaluator(bars, template, predictions)
    ts = evaluator.bars.get_column("ts")
    stop = evaluator.bars.height
    close = evaluator.bars.get_column("close").to_numpy()
    window = ts[start:stop]
    hold = close[start:stop] / close[start - 1]
    curves: dict[str, np.ndarray] = {"buy_and_hold": hold}
    rows = []
    for label, params in candidates:
        result = evaluator.backtest(params)
        equity = result.equity.get_column("equity").to_numpy()
        curves[label] = equity[start:stop] / equity[start - 1]
        metrics = window_metrics(result, start, stop, evaluator.timeframe)
        rows.append(
            {
                "label": label,
                "params": json.dumps(dict(params), sort_keys=True),
                **{k: float(metrics[k]) for k in _LOCKBOX_METRICS},
            }
        )
    return Lockbox(
        start=window[0],
        end=window[-1],
        n_bars=stop - start,
        strategies=pl.DataFrame(rows),
        buy_and_hold=_curve_metrics(window, hold, evaluator.timeframe),
        equity=pl.DataFrame({"ts": window, **curves}),
    )


@dataclass(frozen=True)
class SearchResult:
    """What :func:`run_search` found.

    ``folds``: one row per fold (windows, the pick's params and its train/test scores);
    ``walk_forward_equity``: the stitched out-of-sample equity of the folds' picks beside
    buy-and-hold (``ts``, ``fold``, ``equity``, ``buy_and_hold``); ``walk_forward_metrics`` its
    metrics; ``trials``: every completed trial; ``ranking``: the top strategies with their DSR and the
    search's Probability of Backtest Overfitting (also as ``top`` and ``pbo``); ``storage``: the
    storage URL; ``lockbox``: the held-out bars' verdict (None with ``holdout=0``).
    """

    folds: pl.DataFrame
    walk_forward_equity: pl.DataFrame
    walk_forward_metrics: dict[str, float]
    buy_and_hold_metrics: dict[str, float]
    trials: pl.DataFrame
    ranking: Ranking
    n_trials: int
    storage: str
    config: SearchConfig
    template: SearchTemplate
    lockbox: Lockbox | None = None

    @property
    def top(self) -> tuple[RankedStrategy, ...]:
        """The ranked strategies, best first."""
        return self.ranking.top

    @property
    def pbo(self) -> overfitting.PBOResult | None:
        """The Probability of Backtest Overfitting of the search (None with < 2 trials)."""
        return self.ranking.pbo


def _stitched_equity(
    evaluator: TrialEvaluator, folds: Sequence[Fold], picks: Sequence[TrialRecord]
) -> pl.DataFrame:
    bars = evaluator.bars
    close = bars.get_column("close").to_numpy()
    parts = []
    for fold, pick in zip(folds, picks, strict=True):
        equity = evaluator.backtest(pick.params).equity.get_column("equity").to_numpy()
        window = slice(fold.test_start, fold.test_stop)
        base = equity[fold.test_start - 1] if fold.test_start else equity[0]
        strategy = equity[window] / base
        hold = close[window] / (close[fold.test_start - 1] if fold.test_start else close[0])
        parts.append((fold.index, bars.get_column("ts")[window], strategy, hold))
    # chain the windows: each starts where the previous ended
    level_s = level_h = 1.0
    frames = []
    for index, ts, strategy, hold in parts:
        frames.append(
            pl.DataFrame(
                {
                    "ts": ts,
                    "fold": np.full(len(ts), index, dtype=np.int64),
                    "equity": level_s * strategy,
                    "buy_and_hold": level_h * hold,
                }
            )
        )
        level_s, level_h = level_s * strategy[-1], level_h * hold[-1]
    return pl.concat(frames)


def _curve_metrics(
    ts: pl.Series, curve: np.ndarray, timeframe: dt.timedelta | None
) -> dict[str, float]:
    equity = pl.DataFrame({"ts": ts, "equity": curve, "position": np.ones(len(curve))})
    empty = pl.DataFrame({"pnl": np.array([], dtype=np.float64)})
    metrics = backtest_metrics(equity, empty, 1.0, timeframe)
    return {
        k: v
        for k, v in metrics.items()
        if k in ("total_return", "annual_return", "sharpe", "sortino", "max_drawdown", "calmar")
    }


@dataclass(frozen=True)
class Ranking:
    """The outcome of :func:`rank_trials`: the ``top`` strategies, the search's PBO, how many
    distinct parameter sets were ranked and how many of them are effectively independent (the
    DSR's number of trials), and the variance of their out-of-sample daily Sharpe ratios."""

    top: tuple[RankedStrategy, ...]
    pbo: overfitting.PBOResult | None
    n_candidates: int
    n_effective: float
    sharpe_variance: float


def rank_trials(
    evaluator: TrialEvaluator,
    records: Sequence[TrialRecord],
    folds: Sequence[Fold],
    config: SearchConfig,
) -> Ranking:
    """The top ``config.top_k`` distinct trials by out-of-sample ``rank_metric`` (each scored on
    all bars after its training window, with at least ``min_trades`` trades there), with Deflated
    Sharpe Ratios; and the PBO of all trials.

    Daily returns (UTC days) of each trial's full-history backtest form the CSCV matrix; a trial's
    DSR uses its out-of-sample daily returns, the number of distinct trials and the variance of
    the trials' out-of-sample daily Sharpe ratios.
    """
    ts = evaluator.bars.get_column("ts")
    unique: dict[tuple, TrialRecord] = {}
    for record in records:
        key = tuple(sorted(record.params.items()))
        if key not in unique or record.fold < unique[key].fold:
            unique[key] = record  # the earliest fold leaves the longest out-of-sample span
    candidates = list(unique.values())
    if not candidates:
        return Ranking((), None, 0, 0.0, math.nan)
    daily_columns, oos_daily = [], []
    days = None
    for record in candidates:
        result = evaluator.backtest(record.params)
        equity = result.equity.get_column("equity").to_numpy()
        daily = overfitting.daily_returns(
            ts, equity, initial_equity=evaluator.template.spec.initial_capital
        )
        days = daily.get_column("day")
        returns = daily.get_column("return").to_numpy()
        daily_columns.append(returns)
        oos_first_day = ts[folds[record.fold].test_start].date()
        oos_daily.append(returns[(days >= oos_first_day).to_numpy()])
    matrix = np.column_stack(daily_columns)
    oos_sharpes = np.array(
        [
            r.mean() / r.std(ddof=1) if len(r) > 2 and r.std(ddof=1) > 0 else np.nan
            for r in oos_daily
        ]
    )
    finite = oos_sharpes[np.isfinite(oos_sharpes)]
    sharpe_variance = float(np.var(finite, ddof=1)) if len(finite) > 1 else 0.0
    periods_per_year = YEAR / dt.timedelta(days=1)
    # the DSR's N: trials whose returns correlate above 0.95 count once
    n_effective = overfitting.effective_trials(matrix) if len(candidates) > 1 else 1.0

    metric = config.rank_metric
    sign = -1.0 if metric in MINIMISED_METRICS else 1.0
    order = sorted(
        range(len(candidates)),
        key=lambda i: (
            -sign * candidates[i].oos[metric]
            if math.isfinite(candidates[i].oos[metric])
            else math.inf
        ),
    )
    space = {name: r.bounds() for name, r in evaluator.template.space.items()}
    # a handful of out-of-sample trades says nothing: such trials stay in the PBO matrix and the
    # DSR's trial count, but are not ranked
    order = [i for i in order if candidates[i].oos["trades"] >= config.min_trades]
    groups = overfitting.collapse_near_duplicates(
        [candidates[i].params for i in order],
        [sign * candidates[i].oos[metric] for i in order],
        space=space,
        tolerance=config.duplicate_tolerance,
        returns_matrix=matrix[:, order],
    )
    top = []
    for group in groups[: config.top_k]:
        record = candidates[order[group.representative]]
        i = order[group.representative]
        dsr = overfitting.deflated_sharpe_ratio(
            oos_daily[i],
            n_trials=max(round(n_effective), 1),
            sharpe_variance=sharpe_variance,
            periods_per_year=periods_per_year,
        )
        spec = evaluator.template.spec_for(record.params).model_copy(
            update={"name": f"{evaluator.template.spec.name}_{len(top) + 1}"}
        )
        top.append(
            RankedStrategy(
                rank=len(top) + 1,
                spec=spec.revalidated(),
                fold=record.fold,
                trial=record.number,
                oos_start=ts[folds[record.fold].test_start],
                in_sample=record.train,
                out_of_sample=record.oos,
                deflated_sharpe=dsr.dsr,
                probabilistic_sharpe=dsr.psr,
                near_duplicates=len(group.members) - 1,
            )
        )
    pbo = None
    n_blocks = min(16, (matrix.shape[0] // 4) // 2 * 2)
    if len(candidates) >= 2 and n_blocks >= 2:
        pbo = overfitting.probability_of_backtest_overfitting(matrix, n_blocks=n_blocks)
    return Ranking(tuple(top), pbo, len(candidates), float(n_effective), sharpe_variance)


def default_storage(run_dir: str | Path) -> str:
    """The storage of a search in ``run_dir``: ``journal:///<run_dir>/optuna.log``, or the
    ``optuna.db`` SQLite file a search made there before the journal became the default."""
    folder = Path(run_dir).resolve()
    if (folder / "optuna.db").exists():
        return f"sqlite:///{folder / 'optuna.db'}"
    return f"journal://{folder / 'optuna.log'}"


def run_search(
    bars: pl.DataFrame,
    template: SearchTemplate,
    config: SearchConfig | None = None,
    *,
    storage: str | None = None,
    run_dir: str | Path | None = None,
    predictions: pl.DataFrame | None = None,
    workers: int = 1,
    progress: bool = True,
    ray_address: str | None = None,
) -> SearchResult:
    """Walk-forward Optuna search of ``template`` on ``bars`` (module docstring), then the ranking.

    ``storage`` an Optuna storage URL (default :func:`default_storage` of ``run_dir``; an in-memory
    search is not offered because the studies are the record of the search). Running again with
    the same storage continues each fold's study up to ``config.n_trials``. ``workers`` and
    ``ray_address``: see :func:`optimise`.
    """
    config = config or SearchConfig()
    all_bars = ensure_bars(bars)
    start = config.lockbox_start(all_bars.height)
    bars = all_bars.head(start)  # the studies, the folds and the ranking never see the lockbox
    if start < all_bars.height:
        try:
            walk_forward_folds(bars, config)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc} (the last {all_bars.height - start:,} of the {all_bars.height:,} bars are "
                "the lockbox, which the search does not see: holdout, --holdout)"
            ) from None
    if storage is None:
        if run_dir is None:
            raise ConfigError("give run_dir (for the default journal storage) or storage")
        storage = default_storage(run_dir)
    optimise(
        bars,
        template,
        config,
        storage,
        predictions=predictions,
        workers=workers,
        progress=progress,
        ray_address=ray_address,
    )
    evaluator = TrialEvaluator(bars, template, predictions)
    folds = walk_forward_folds(evaluator.bars, config)
    records = load_trials(storage, config, len(folds))
    by_fold = {f.index: [r for r in records if r.fold == f.index] for f in folds}
    empty = [k for k, rs in by_fold.items() if not rs]
    if empty:
        raise ConfigError(
            f"fold(s) {empty} have no completed trial (all pruned: too few trades or "
            f"constraints?); lower min_trades ({config.min_trades}) or widen the search"
        )
    picks = [_best_of_fold(by_fold[f.index], config) for f in folds]
    wf_equity = _stitched_equity(evaluator, folds, picks)
    wf_metrics = _curve_metrics(
        wf_equity.get_column("ts"), wf_equity.get_column("equity").to_numpy(), evaluator.timeframe
    )
    hold_metrics = _curve_metrics(
        wf_equity.get_column("ts"),
        wf_equity.get_column("buy_and_hold").to_numpy(),
        evaluator.timeframe,
    )
    ranking = rank_trials(evaluator, records, folds, config)
    ts = evaluator.bars.get_column("ts")
    fold_rows = [
        {
            "fold": f.index,
            "train_start": ts[f.train_start],
            "train_end": ts[f.train_stop - 1],
            "test_start": ts[f.test_start],
            "test_end": ts[f.test_stop - 1],
            "trials": len(by_fold[f.index]),
            "params": json.dumps(p.params),
            f"train_{config.rank_metric}": p.train[config.rank_metric],
            f"test_{config.rank_metric}": p.test[config.rank_metric],
            "test_total_return": p.test["total_return"],
            "test_trades": p.test["trades"],
        }
        for f, p in zip(folds, picks, strict=True)
    ]
    trial_rows = [
        {
            "fold": r.fold,
            "trial": r.number,
            "pid": r.pid,
            **{f"param_{k}": float(v) for k, v in r.params.items()},
            **{
                f"train_{k}": r.train[k]
                for k in ("sharpe", "total_return", "max_drawdown", "trades")
            },
            **{f"oos_{k}": r.oos[k] for k in ("sharpe", "total_return", "max_drawdown", "trades")},
        }
        for r in records
    ]
    return SearchResult(
        folds=pl.DataFrame(fold_rows),
        walk_forward_equity=wf_equity,
        walk_forward_metrics=wf_metrics,
        buy_and_hold_metrics=hold_metrics,
        trials=pl.DataFrame(trial_rows),
        ranking=ranking,
        n_trials=len(records),
        storage=storage,
        config=config,
        template=template,
        lockbox=None
        if start == all_bars.height
        else evaluate_lockbox(
            all_bars,
            start,
            template,
            [(f"rank {r.rank}", r.spec.params) for r in ranking.top]
            + [("walk-forward pick", picks[-1].params)],
            predictions,
        ),
    )


# ---------------------------------------------------------------------------------------------
# The ranking file


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def ranking_document(result: SearchResult) -> dict[str, Any]:
    """The ranking as a JSON-ready mapping (what :func:`save_ranking` writes)."""
    pbo = result.pbo
    return {
        "schema_version": RANKING_SCHEMA_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "study_name": result.config.study_name,
        "storage": result.storage,
        "config": result.config.model_dump(mode="json"),
        "n_trials": result.n_trials,
        "n_distinct_trials": result.ranking.n_candidates,
        "n_effective_trials": result.ranking.n_effective,
        "pbo": None
        if pbo is None
        else {
            "pbo": pbo.pbo,
            "n_combinations": pbo.n_combinations,
            "n_blocks": pbo.n_blocks,
            "probability_of_loss": _finite_or_none(pbo.probability_of_loss),
        },
        "walk_forward": {
            "metrics": {k: _finite_or_none(v) for k, v in result.walk_forward_metrics.items()},
            "buy_and_hold": {k: _finite_or_none(v) for k, v in result.buy_and_hold_metrics.items()},
            "start": result.walk_forward_equity.get_column("ts")[0].isoformat(),
            "end": result.walk_forward_equity.get_column("ts")[-1].isoformat(),
        },
        "top": [
            {"rank": r.rank, "spec": r.spec.model_dump(mode="json"), **_entry_fields(r)}
            for r in result.top
        ],
        "lockbox": None if result.lockbox is None else _lockbox_document(result.lockbox),
    }


def _lockbox_document(lockbox: Lockbox) -> dict[str, Any]:
    return {
        "start": lockbox.start.isoformat(),
        "end": lockbox.end.isoformat(),
        "n_bars": lockbox.n_bars,
        "buy_and_hold": {k: _finite_or_none(v) for k, v in lockbox.buy_and_hold.items()},
        "strategies": [
            {
                "label": row["label"],
                "params": json.loads(row["params"]),
                "metrics": {k: _finite_or_none(row[k]) for k in _LOCKBOX_METRICS},
            }
            for row in lockbox.strategies.iter_rows(named=True)
        ],
    }


def _entry_fields(r: RankedStrategy) -> dict[str, Any]:
    """A ranked strategy's fields as the ranking file keeps them (all but ``rank`` and ``spec``)."""
    return {
        "fold": r.fold,
        "trial": r.trial,
        "oos_start": r.oos_start.isoformat(),
        "deflated_sharpe": _finite_or_none(r.deflated_sharpe),
        "probabilistic_sharpe": _finite_or_none(r.probabilistic_sharpe),
        "near_duplicates": r.near_duplicates,
        "in_sample": _jsonable(r.in_sample),
        "out_of_sample": _jsonable(r.out_of_sample),
    }


def save_ranking(result: SearchResult, path: str | Path) -> Path:
    """Write the ranking JSON (specs + metrics + DSR/PBO) atomically."""
    path = Path(path)
    write_text_atomic(path, json.dumps(ranking_document(result), indent=2, allow_nan=False))
    return path


def write_search_outputs(result: SearchResult, out: str | Path) -> dict[str, Path]:
    """Write the trials, the folds and the walk-forward equity as Parquet files in ``out``."""
    out = Path(out)
    return {
        name: write_parquet_atomic(frame, out / f"{name}.parquet")
        for name, frame in (
            ("trials", result.trials),
            ("folds", result.folds),
            ("walk_forward_equity", result.walk_forward_equity),
        )
    }


# the columns of ranking_table, in order
_RANKING_COLUMNS: dict[str, pl.DataType] = {
    "rank": pl.Int64(),
    "strategy": pl.String(),
    "params": pl.String(),
    "oos_from": pl.Datetime("us", "UTC"),
    "oos_sharpe": pl.Float64(),
    "oos_return": pl.Float64(),
    "oos_max_dd": pl.Float64(),
    "oos_trades": pl.Int64(),
    "is_sharpe": pl.Float64(),
    "DSR": pl.Float64(),
    "near_duplicates": pl.Int64(),
}


def ranking_table(
    ranking: SearchResult
    | Sequence[RankedStrategy]
    | Sequence[tuple[StrategySpec, Mapping[str, Any]]],
) -> pl.DataFrame:
    """The top strategies as a table, best first: one row per ranked strategy with its
    out-of-sample figures (``oos_*``: scored on all bars after its training window, from
    ``oos_from``), its in-sample Sharpe ratio, Deflated Sharpe Ratio and how many near-duplicate
    parameter sets it stands for.

    ``ranking`` is a fresh search (a :class:`SearchResult` or its ``top``) or a ranking file read
    back (:func:`load_ranking`): both go through the file's form (:func:`ranking_document`), so
    the search notebook and the backtest notebook show the same table, undefined figures (NaN)
    as nulls in both.
    """
    if isinstance(ranking, SearchResult):
        ranking = ranking.top
    entries = [
        (item.spec, {"rank": item.rank, **_entry_fields(item)})
        if isinstance(item, RankedStrategy)
        else item
        for item in ranking
    ]
    rows = []
    for spec, extra in entries:
        oos = extra.get("out_of_sample") or {}
        ins = extra.get("in_sample") or {}
        start = extra.get("oos_start")
        trades = oos.get("trades")
        rows.append(
            {
                "rank": extra.get("rank"),
                "strategy": spec.name,
                "params": str(spec.params),
                "oos_from": dt.datetime.fromisoformat(start) if start else None,
                "oos_sharpe": oos.get("sharpe"),
                "oos_return": oos.get("total_return"),
                "oos_max_dd": oos.get("max_drawdown"),
                "oos_trades": None if trades is None else round(trades),
                "is_sharpe": ins.get("sharpe"),
                "DSR": extra.get("deflated_sharpe"),
                "near_duplicates": extra.get("near_duplicates"),
            }
        )
    return pl.DataFrame(rows, schema=_RANKING_COLUMNS)


def _distance_text(distance: Any) -> str:
    if distance is None:
        return "none"
    unit = {"pips": "pips", "percent": "% of the close", "atr": "× ATR"}[distance.unit]
    if distance.unit == "atr":
        return f"{distance.value} {unit}({distance.atr_length})"
    return f"{distance.value} {unit}"


def template_table(template: SearchTemplate) -> pl.DataFrame:
    """A template at a glance (``item``, ``value``), for a report instead of its YAML: the rules,
    exits, size, costs and fill, then one row per parameter with its default and the range the
    search tries, and the constraints."""
    spec = template.spec
    costs = spec.costs
    spread = "from the data" if costs.spread == "data" else f"{costs.spread} pips"
    rows = [
        ("strategy", f"{spec.name}: {spec.description}" if spec.description else spec.name),
        ("market", f"{spec.instrument} {spec.timeframe or ''}".strip()),
        ("long entry", spec.long_entry or "–"),
        ("long exit", spec.long_exit or "–"),
        ("short entry", spec.short_entry or "–"),
        ("short exit", spec.short_exit or "–"),
        ("direction", spec.direction),
        ("stop-loss", _distance_text(spec.stop_loss)),
        ("take-profit", _distance_text(spec.take_profit)),
        ("trailing stop", _distance_text(spec.trailing_stop)),
        ("size", f"{spec.quantity:,.0f} units of {spec.initial_capital:,.0f} capital"),
        (
            "costs",
            f"spread {spread}, commission {costs.commission_percent}% + "
            f"{costs.commission_per_unit} per unit, slippage {costs.slippage_ticks} tick(s)",
        ),
        ("fill", spec.fill.replace("_", " ")),
    ]
    for name, r in template.space.items():
        tried = (
            ", ".join(str(c) for c in r.choices)
            if r.choices
            else f"{r.low} to {r.high}"
            + (f" step {r.step}" if r.step else "")
            + (" (log)" if r.log else "")
        )
        rows.append((f"param {name}", f"{spec.params.get(name)} (searched: {tried})"))
    if template.constraints:
        rows.append(("constraints", "; ".join(template.constraints)))
    return pl.DataFrame(rows, schema={"item": pl.String, "value": pl.String}, orient="row")


__all__ = [
    "Fold",
    "Lockbox",
    "ParamRange",
    "RankedStrategy",
    "Ranking",
    "SearchConfig",
    "SearchResult",
    "SearchTemplate",
    "TrialEvaluator",
    "TrialRecord",
    "builtin_template",
    "builtin_template_names",
    "evaluate_lockbox",
    "load_template",
    "load_trials",
    "open_storage",
    "optimise",
    "rank_trials",
    "ranking_document",
    "ranking_table",
    "run_search",
    "save_ranking",
    "template_table",
    "walk_forward_folds",
    "window_metrics",
    "write_search_outputs",
]
