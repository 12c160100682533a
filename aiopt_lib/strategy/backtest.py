"""The vectorised backtest engine: order signals in, trades, equity and metrics out, with
TradingView's broker-emulator fills.

A strategy (later: a compiled ``StrategySpec``) hands the engine an :class:`OrderSignals` of
boolean arrays evaluated at each bar's **close**; :func:`run_backtest` simulates one position at a
time in a numba loop and returns a :class:`BacktestResult`.

Semantics (TradingView's defaults unless said otherwise)
--------------------------------------------------------
* **When orders fill.** Signals are known at bar ``t``'s close. With ``fill="next_open"`` (the
  default, TradingView's ``process_orders_on_close = false``) market orders fill at bar ``t + 1``'s
  open; with ``fill="close"`` at bar ``t``'s close. Signals on the last bar are ignored (there is
  no later bar to fill them; with ``fill="close"`` the position is closed there as ``"end"``).
* **Fill prices.** A buy fills on the ask side and a sell on the bid side: with ``spread=None``
  and both ``bid_*`` and ``ask_*`` columns in the bars, buys use ``ask_open`` (``ask_close``) and
  sells ``bid_open`` (``bid_close``); with ``spread=None``, no sides but a ``spread`` column, the
  main price ± that bar's spread / 2; with ``spread`` given, buys use the main price ``+ spread /
  2`` and sells ``- spread / 2``; otherwise both use the main price. Every fill is rounded to the
  nearest ``tick_size`` (``floor(p / tick + 0.5) * tick``, Pine's mintick rounding), then market
  and stop orders (signal entries/exits, stop-loss, trailing stop, the end close) are moved
  ``slippage_ticks * tick_size`` against the trader; take-profit (a limit order) gets no slippage.
* **Signal resolution at a close.** ``direction`` removes entries on the forbidden side; as
  TradingView's ``strategy.risk.allow_entry_in``, a forbidden entry closes an open position of the
  other side instead. A bar with both (allowed) entries enters neither (a conflict). Flat: an
  entry opens. In a position: an opposite entry **reverses** (the trade closes with reason
  ``"reverse"`` and the new one opens at the same fill), else the side's exit signal closes it
  (``"signal"``); a same-side entry is ignored (``pyramiding = 0``: one position at a time).
* **Stop-loss, take-profit, trailing stop.** Distances are price units read at the signal bar
  (NaN = none). Levels are set from the entry fill: long stop ``entry - d``, take ``entry + d``
  (short mirrored), rounded to the tick. The trailing stop sits ``trail_distance`` from the best
  price since entry (initially the entry fill, then the extremes on the exit side's path), rounded
  to the tick. They are checked inside every bar from the entry fill on (with ``next_open`` the
  entry bar from its open; with ``close`` from the next bar), on the exit side's prices (a long
  sells at the bid, a short buys at the ask), along TradingView's intrabar path: if ``high - open <
  open - low`` by more than half a tick (the high is nearer the open) the price goes open → high →
  low → close, otherwise (ties, i.e. distances within half a tick, included) open → low → high →
  close. The first level touched along the path fills at the
  level (a price equal to a level up to float noise, a millionth of a tick, touches it). A bar that **opens** through a level fills at the open (a stop gapped through gets the
  worse open, a take the better one). If the stop and trailing stop coincide the exit is
  ``"stop"``. A position stopped out in a bar can only be re-entered by a signal at that bar's
  close.
* **End of data.** A position still open after the last bar is closed at the last bar's close
  (the exit side's close, slippage applied) with reason ``"end"``.
* **Costs.** ``commission_per_unit`` (money per unit, per fill) plus ``commission_percent`` (percent
  of the fill's notional, per fill), paid at entry and at exit. The trades' ``costs`` column is
  the commission; spread and slippage are already in the fill prices.
* **Equity** per bar is ``initial_capital`` + closed trades' pnl + the open position marked to
  market at the close on its exit side (bid for a long, ask for a short) less its entry
  commission. ``position`` is the signed units held at the bar's close.

Trades frame columns: ``entry_ts``, ``exit_ts`` (the ``ts`` of the bar in which the fill happened),
``side`` (``"long"``/``"short"``), ``entry_price``, ``exit_price``, ``quantity``, ``pnl`` (money,
after costs), ``return`` (pnl / entry notional), ``costs``, ``exit_reason`` (``"signal"``,
``"stop"``, ``"take"``, ``"trail"``, ``"reverse"``, ``"end"``), ``bars_held`` (exit bar index −
entry bar index; 0 for a trade opened and stopped in one bar).

Metrics: see :func:`backtest_metrics`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from numba import njit

from aiopt_lib.core.bars import (
    ASK_COLUMNS,
    BID_COLUMNS,
    PRICE_COLUMNS,
    ensure_bars,
    infer_timeframe,
)
from aiopt_lib.core.errors import ConfigError

EXIT_REASONS: tuple[str, ...] = ("signal", "stop", "take", "trail", "reverse", "end")
_SIGNAL, _STOP, _TAKE, _TRAIL, _REVERSE, _END = range(6)
_NONE = -1
# touch tolerance in ticks: far above float noise (~1e-11 ticks at FX prices), far below any
# real price difference (half a tick at least)
_TOUCH = 1e-6
# The FX year used to annualise: 252 trading days of 24 hours.
YEAR = dt.timedelta(days=252)


# The one trades-frame schema (module docstring): every engine (vectorised, Nautilus, Pine run
# offline) returns its trades in it.
TRADES_SCHEMA: dict[str, pl.DataType] = {
    "entry_ts": pl.Datetime("us", "UTC"),
    "exit_ts": pl.Datetime("us", "UTC"),
    "side": pl.String(),
    "entry_price": pl.Float64(),
    "exit_price": pl.Float64(),
    "quantity": pl.Float64(),
    "pnl": pl.Float64(),
    "return": pl.Float64(),
    "costs": pl.Float64(),
    "exit_reason": pl.String(),
    "bars_held": pl.Int64(),
}


@dataclass(frozen=True)
class OrderSignals:
    """What a strategy asks for, per bar, evaluated at the bar's close (all arrays of length n).

    ``long_entry`` / ``long_exit`` / ``short_entry`` / ``short_exit`` are booleans. The optional
    ``stop_distance`` / ``take_distance`` / ``trail_distance`` are positive price distances known
    at the signal bar (e.g. ``1.5 * ATR``), NaN for none: the stop-loss and take-profit are set that
    far from the entry fill, the trailing stop that far from the best price since entry.
    """

    long_entry: np.ndarray
    long_exit: np.ndarray
    short_entry: np.ndarray
    short_exit: np.ndarray
    stop_distance: np.ndarray | None = None
    take_distance: np.ndarray | None = None
    trail_distance: np.ndarray | None = None


@dataclass(frozen=True)
class ExecutionConfig:
    """How orders fill (see the module docstring for the exact rules).

    ``quantity`` units per trade; ``commission_per_unit`` money per unit per fill and
    ``commission_percent`` percent of notional per fill; ``slippage_ticks`` ticks against the
    trader on market and stop fills; ``spread`` a fixed spread in price units (None: the bars'
    bid/ask columns when present, else none); ``fill`` ``"next_open"`` (TradingView) or
    ``"close"``; ``direction`` the sides allowed; ``pyramiding`` must be 0 (one position).
    """

    tick_size: float = 1e-5
    quantity: float = 100_000.0
    initial_capital: float = 100_000.0
    commission_per_unit: float = 0.0
    commission_percent: float = 0.0
    slippage_ticks: int = 0
    spread: float | None = None
    fill: Literal["next_open", "close"] = "next_open"
    direction: Literal["long", "short", "both"] = "both"
    pyramiding: int = 0

    def __post_init__(self) -> None:
        if not (self.tick_size > 0 and math.isfinite(self.tick_size)):
            raise ConfigError(f"tick_size must be a positive number, got {self.tick_size!r}")
        if not (self.quantity > 0 and math.isfinite(self.quantity)):
            raise ConfigError(f"quantity must be a positive number, got {self.quantity!r}")
        if not (self.initial_capital > 0 and math.isfinite(self.initial_capital)):
            raise ConfigError(f"initial_capital must be positive, got {self.initial_capital!r}")
        for name in ("commission_per_unit", "commission_percent"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        if int(self.slippage_ticks) != self.slippage_ticks or self.slippage_ticks < 0:
            raise ConfigError(
                f"slippage_ticks must be a whole number >= 0, got {self.slippage_ticks!r}"
            )
        if self.spread is not None and not (self.spread >= 0 and math.isfinite(self.spread)):
            raise ConfigError(f"spread must be >= 0 or None, got {self.spread!r}")
        if self.fill not in ("next_open", "close"):
            raise ConfigError(f"fill must be 'next_open' or 'close', got {self.fill!r}")
        if self.direction not in ("long", "short", "both"):
            raise ConfigError(
                f"direction must be 'long', 'short' or 'both', got {self.direction!r}"
            )
        if self.pyramiding != 0:
            raise ConfigError(
                f"only pyramiding = 0 (one position at a time) is supported, got {self.pyramiding!r}"
            )


@dataclass(frozen=True)
class BacktestResult:
    """The outcome of :func:`run_backtest`: ``trades`` (one row per closed trade, columns in the
    module docstring), ``equity`` (``ts``, ``equity``, ``position`` per bar) and ``metrics``."""

    trades: pl.DataFrame
    equity: pl.DataFrame
    metrics: dict[str, float]


# ---------------------------------------------------------------------------------------------
# The path-dependent loop


@njit(cache=True)
def _to_tick(price, tick):
    return math.floor(price / tick + 0.5) * tick


@njit(cache=True)
def _stop_level(side, best, stop_level, trail_distance, tick):
    """The protective level nearest the price (stop or trail) as ``(level, reason)``; NaN if none."""
    if math.isnan(trail_distance):
        return stop_level, _STOP
    trail_level = _to_tick(best - side * trail_distance, tick)
    if math.isnan(stop_level) or side * trail_level > side * stop_level:
        return trail_level, _TRAIL
    return stop_level, _STOP


@njit(cache=True)
def _close_trade(trades, ntr, pos, entry_i, t, entry_px, px, entry_cost, reason, costs):
    """Record trade ``ntr`` (closed at ``px`` on bar ``t``) in the ``trades`` arrays and return
    its PnL after costs; ``costs`` is ``(quantity, commission per unit, commission fraction)``."""
    tr_entry_i, tr_exit_i, tr_side, tr_entry_px, tr_exit_px, tr_costs, tr_reason = trades
    qty, comm_unit, comm_frac = costs
    cost = comm_unit * qty + comm_frac * px * qty
    tr_entry_i[ntr] = entry_i
    tr_exit_i[ntr] = t
    tr_side[ntr] = pos
    tr_entry_px[ntr] = entry_px
    tr_exit_px[ntr] = px
    tr_costs[ntr] = entry_cost + cost
    tr_reason[ntr] = reason
    return pos * (px - entry_px) * qty - entry_cost - cost


@njit(cache=True)
def _open_position(side, raw_price, stop_distance, take_distance, tick, slip, costs):
    """A fill opening ``side`` at ``raw_price``: ``(entry price, entry commission, stop level,
    take level)``; levels from the fill ± the signal bar's distances, on the tick (NaN: none)."""
    qty, comm_unit, comm_frac = costs
    entry_px = _to_tick(raw_price, tick) + side * slip
    entry_cost = comm_unit * qty + comm_frac * entry_px * qty
    stop = (
        _to_tick(entry_px - side * stop_distance, tick)
        if not math.isnan(stop_distance)
        else math.nan
    )
    take = (
        _to_tick(entry_px + side * take_distance, tick)
        if not math.isnan(take_distance)
        else math.nan
    )
    return entry_px, entry_cost, stop, take


@njit(cache=True)
def _walk_bar(side, o, h, lo, c, stop_level, take_level, trail_distance, best, tick, slip):
    """Walk one bar's intrabar path for an open position; ``(fill, reason, best)``.

    Prices are turned into "favourable" coordinates ``x = side * price`` so that a short is
    handled as a long: protective levels lie below, the take-profit above, the best price is the
    maximum. ``reason`` is ``_NONE`` when nothing fills.
    """
    # distances within half a tick are a tie (prices on the tick grid differ by a tick or more)
    path = (o, h, lo, c) if (o - lo) - (h - o) > 0.5 * tick else (o, lo, h, c)
    # a price equal to a level up to float noise touches it (levels are on the tick grid, the
    # walked prices may carry a half spread: 1.19001 - 0.00001 is one ulp below 1.19)
    eps = _TOUCH * tick
    has_stop = not (math.isnan(stop_level) and math.isnan(trail_distance))
    take_x = side * take_level if not math.isnan(take_level) else math.inf
    # the open: a gap through a level fills at the open
    x = side * o
    if has_stop:
        level, reason = _stop_level(side, best, stop_level, trail_distance, tick)
        if not math.isnan(level) and x <= side * level + eps:
            return _to_tick(o, tick) - side * slip, reason, best
    if x >= take_x - eps:
        return _to_tick(o, tick), _TAKE, best
    if side * o > side * best:
        best = o
    for k in range(3):
        a = side * path[k]
        b = side * path[k + 1]
        if b > a:
            if b >= take_x - eps:
                return take_level, _TAKE, best
            if b > side * best:
                best = path[k + 1]
        elif b < a and has_stop:
            level, reason = _stop_level(side, best, stop_level, trail_distance, tick)
            if not math.isnan(level) and b <= side * level + eps:
                return level - side * slip, reason, best
    return math.nan, _NONE, best


@njit(cache=True)
def _simulate(
    buy_o, buy_h, buy_l, buy_c, sell_o, sell_h, sell_l, sell_c,
    want_long, want_short, exit_long, exit_short, stop_d, take_d, trail_d,
    fill_at_close, tick, slip, comm_unit, comm_frac, qty, capital,
    equity, position, tr_entry_i, tr_exit_i, tr_side, tr_entry_px, tr_exit_px, tr_costs, tr_reason,
):  # fmt: skip
    n = buy_o.shape[0]
    trades = (tr_entry_i, tr_exit_i, tr_side, tr_entry_px, tr_exit_px, tr_costs, tr_reason)
    costs = (qty, comm_unit, comm_frac)
    pos = 0
    entry_px = 0.0
    entry_i = 0
    entry_cost = 0.0
    stop_lvl = math.nan
    take_lvl = math.nan
    trail = math.nan
    best = 0.0
    realized = 0.0
    pending = 0
    has_pending = False
    pend_bar = 0
    ntr = 0
    for t in range(n):
        # 1. orders from the previous close fill at this bar's open
        if has_pending:
            has_pending = False
            if pending != pos:
                if pos != 0:
                    px = _to_tick(sell_o[t] if pos == 1 else buy_o[t], tick) - pos * slip
                    realized += _close_trade(
                        trades,
                        ntr,
                        pos,
                        entry_i,
                        t,
                        entry_px,
                        px,
                        entry_cost,
                        _REVERSE if pending != 0 else _SIGNAL,
                        costs,
                    )
                    ntr += 1
                    pos = 0
                if pending != 0:
                    pos = pending
                    raw = buy_o[t] if pos == 1 else sell_o[t]
                    entry_px, entry_cost, stop_lvl, take_lvl = _open_position(
                        pos, raw, stop_d[pend_bar], take_d[pend_bar], tick, slip, costs
                    )
                    entry_i = t
                    trail = trail_d[pend_bar]
                    best = entry_px
        # 2. protective exits inside the bar
        if pos != 0 and not (math.isnan(stop_lvl) and math.isnan(take_lvl) and math.isnan(trail)):
            if pos == 1:
                px, reason, best = _walk_bar(
                    1,
                    sell_o[t],
                    sell_h[t],
                    sell_l[t],
                    sell_c[t],
                    stop_lvl,
                    take_lvl,
                    trail,
                    best,
                    tick,
                    slip,
                )
            else:
                px, reason, best = _walk_bar(
                    -1,
                    buy_o[t],
                    buy_h[t],
                    buy_l[t],
                    buy_c[t],
                    stop_lvl,
                    take_lvl,
                    trail,
                    best,
                    tick,
                    slip,
                )
            if reason != _NONE:
                realized += _close_trade(
                    trades,
                    ntr,
                    pos,
                    entry_i,
                    t,
                    entry_px,
                    px,
                    entry_cost,
                    reason,
                    costs,
                )
                ntr += 1
                pos = 0
        # 3. the close: signals (or the end of data)
        last = t == n - 1
        if not last:
            if pos == 1:
                target = -1 if want_short[t] else (0 if exit_long[t] else 1)
            elif pos == -1:
                target = 1 if want_long[t] else (0 if exit_short[t] else -1)
            else:
                target = 1 if want_long[t] else (-1 if want_short[t] else 0)
            if fill_at_close:
                if target != pos:
                    if pos != 0:
                        px = _to_tick(sell_c[t] if pos == 1 else buy_c[t], tick) - pos * slip
                        realized += _close_trade(
                            trades,
                            ntr,
                            pos,
                            entry_i,
                            t,
                            entry_px,
                            px,
                            entry_cost,
                            _REVERSE if target != 0 else _SIGNAL,
                            costs,
                        )
                        ntr += 1
                        pos = 0
                    if target != 0:
                        pos = target
                        raw = buy_c[t] if pos == 1 else sell_c[t]
                        entry_px, entry_cost, stop_lvl, take_lvl = _open_position(
                            pos, raw, stop_d[t], take_d[t], tick, slip, costs
                        )
                        entry_i = t
                        trail = trail_d[t]
                        best = entry_px
            elif target != pos:
                pending = target
                pend_bar = t
                has_pending = True
        elif pos != 0:
            px = _to_tick(sell_c[t] if pos == 1 else buy_c[t], tick) - pos * slip
            realized += _close_trade(
                trades,
                ntr,
                pos,
                entry_i,
                t,
                entry_px,
                px,
                entry_cost,
                _END,
                costs,
            )
            ntr += 1
            pos = 0
        if pos == 1:
            equity[t] = capital + realized - entry_cost + (sell_c[t] - entry_px) * qty
        elif pos == -1:
            equity[t] = capital + realized - entry_cost + (entry_px - buy_c[t]) * qty
        else:
            equity[t] = capital + realized
        position[t] = pos * qty
    return ntr


# ---------------------------------------------------------------------------------------------
# Inputs


def _bool_array(name: str, values: object, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"signal '{name}' has shape {array.shape}, expected ({n},) (one per bar)")
    if array.dtype != np.bool_:
        if array.dtype.kind not in "biu":
            raise ValueError(f"signal '{name}' must be boolean, got dtype {array.dtype}")
        array = array != 0
    return np.ascontiguousarray(array)


def _distance_array(name: str, values: object | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"'{name}' has shape {array.shape}, expected ({n},) (one per bar)")
    bad = ~np.isnan(array) & ~(array > 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"'{name}' must be > 0 or NaN; bar {first} has {array[first]!r}")
    array = array.copy()
    array[np.isinf(array)] = np.nan  # an infinite distance is no level at all
    return array


def fill_prices(bars: pl.DataFrame, config: ExecutionConfig) -> tuple[np.ndarray, np.ndarray]:
    """The prices buys and sells fill at: two ``(4, n)`` arrays of open/high/low/close.

    Bid/ask columns when ``config.spread`` is None and the bars carry both sides; otherwise the
    main prices ± half the spread: ``config.spread``, or with None the bars' ``spread`` column
    (per bar) when there is one, else 0.
    """
    has_sides = all(c in bars.columns for c in (*BID_COLUMNS, *ASK_COLUMNS))
    if config.spread is None and has_sides:
        buy = bars.select(ASK_COLUMNS).to_numpy().T
        sell = bars.select(BID_COLUMNS).to_numpy().T
    else:
        main = bars.select(PRICE_COLUMNS).to_numpy().T
        if config.spread is None and "spread" in bars.columns:
            # the bar's own spread (e.g. an MT4/MT5 export), a missing one counted as none
            half = bars.get_column("spread").cast(pl.Float64).fill_null(0.0).to_numpy() / 2.0
        else:
            half = (config.spread or 0.0) / 2.0
        buy, sell = main + half, main - half
    return np.ascontiguousarray(buy, dtype=np.float64), np.ascontiguousarray(sell, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Public API


def run_backtest(
    bars: pl.DataFrame,
    signals: OrderSignals,
    config: ExecutionConfig | None = None,
    *,
    prices: tuple[np.ndarray, np.ndarray] | None = None,
    validate: bool = True,
) -> BacktestResult:
    """Simulate ``signals`` on ``bars`` with TradingView's fill rules (module docstring).

    ``bars`` follows the canonical schema; ``signals`` holds one value per bar. Returns the
    trades, the per-bar equity and position, and :func:`backtest_metrics`.

    A caller that runs many backtests on the same bars (a search) may pass ``prices`` =
    :func:`fill_prices` ``(bars, config)`` computed once, and ``validate=False`` for bars it has
    already passed through :func:`aiopt_lib.core.bars.ensure_bars`.
    """
    config = config or ExecutionConfig()
    if validate:
        bars = ensure_bars(bars)
    n = bars.height
    long_entry = _bool_array("long_entry", signals.long_entry, n)
    long_exit = _bool_array("long_exit", signals.long_exit, n)
    short_entry = _bool_array("short_entry", signals.short_entry, n)
    short_exit = _bool_array("short_exit", signals.short_exit, n)
    stop_d = _distance_array("stop_distance", signals.stop_distance, n)
    take_d = _distance_array("take_distance", signals.take_distance, n)
    trail_d = _distance_array("trail_distance", signals.trail_distance, n)

    allow_long = config.direction in ("long", "both")
    allow_short = config.direction in ("short", "both")
    want_long = long_entry & allow_long
    want_short = short_entry & allow_short
    conflict = want_long & want_short
    want_long = want_long & ~conflict
    want_short = want_short & ~conflict
    # a forbidden entry closes the other side (TradingView's strategy.risk.allow_entry_in)
    exit_long = long_exit | (short_entry & (not allow_short))
    exit_short = short_exit | (long_entry & (not allow_long))

    buy, sell = fill_prices(bars, config) if prices is None else prices
    if buy.shape != (4, n) or sell.shape != (4, n):
        raise ValueError(f"prices must be two (4, {n}) arrays, got {buy.shape} and {sell.shape}")
    equity = np.empty(n)
    position = np.empty(n)
    size = max(n, 1)
    entry_i = np.empty(size, dtype=np.int64)
    exit_i = np.empty(size, dtype=np.int64)
    side = np.empty(size, dtype=np.int64)
    entry_px = np.empty(size)
    exit_px = np.empty(size)
    costs = np.empty(size)
    reason = np.empty(size, dtype=np.int64)
    count = 0
    if n:
        count = _simulate(
            buy[0], buy[1], buy[2], buy[3], sell[0], sell[1], sell[2], sell[3],
            want_long, want_short, exit_long, exit_short, stop_d, take_d, trail_d,
            config.fill == "close", config.tick_size, config.slippage_ticks * config.tick_size,
            config.commission_per_unit, config.commission_percent / 100.0, float(config.quantity),
            float(config.initial_capital),
            equity, position, entry_i, exit_i, side, entry_px, exit_px, costs, reason,
        )  # fmt: skip

    ts = bars.get_column("ts")
    trades = _trades_frame(
        ts,
        entry_i[:count],
        exit_i[:count],
        side[:count],
        entry_px[:count],
        exit_px[:count],
        costs[:count],
        reason[:count],
        float(config.quantity),
    )
    equity_frame = pl.DataFrame(
        {"ts": ts, "equity": equity, "position": position},
        schema={"ts": ts.dtype, "equity": pl.Float64, "position": pl.Float64},
    )
    metrics = backtest_metrics(equity_frame, trades, config.initial_capital, infer_timeframe(bars))
    return BacktestResult(trades=trades, equity=equity_frame, metrics=metrics)


def _trades_frame(
    ts: pl.Series,
    entry_i: np.ndarray,
    exit_i: np.ndarray,
    side: np.ndarray,
    entry_px: np.ndarray,
    exit_px: np.ndarray,
    costs: np.ndarray,
    reason: np.ndarray,
    quantity: float,
) -> pl.DataFrame:
    pnl = side * (exit_px - entry_px) * quantity - costs
    return pl.DataFrame(
        {
            "entry_ts": ts.gather(entry_i),
            "exit_ts": ts.gather(exit_i),
            "side": np.where(side == 1, "long", "short"),
            "entry_price": entry_px,
            "exit_price": exit_px,
            "quantity": np.full(len(side), quantity),
            "pnl": pnl,
            "return": pnl / (entry_px * quantity),
            "costs": costs,
            "exit_reason": np.asarray(EXIT_REASONS, dtype=object)[reason].astype(str),
            "bars_held": (exit_i - entry_i).astype(np.int64),
        },
        schema={**TRADES_SCHEMA, "entry_ts": ts.dtype, "exit_ts": ts.dtype},
    )


def backtest_metrics(
    equity: pl.DataFrame,
    trades: pl.DataFrame,
    initial_capital: float,
    timeframe: dt.timedelta | None,
) -> dict[str, float]:
    """Summary figures of a backtest.

    Per-bar returns are ``equity_t / equity_{t-1} - 1`` (the first against ``initial_capital``),
    annualised with ``bars_per_year = 252 days × 24 h / timeframe`` (the FX year of :data:`YEAR`;
    NaN when the timeframe is unknown).

    * ``total_return``: final equity / initial capital − 1; ``annual_return``: compounded,
      ``(1 + total) ** (bars_per_year / n) - 1``;
    * ``sharpe``: ``mean / std(ddof=1) * sqrt(bars_per_year)`` (risk-free 0); ``sortino``: ``mean /
      sqrt(mean(min(r, 0)²)) * sqrt(bars_per_year)``;
    * ``max_drawdown``: the largest fall from a running equity peak, as a positive fraction;
      ``calmar``: ``annual_return / max_drawdown``;
    * ``profit_factor``: gross profit / gross loss (inf without losing trades); ``win_rate``:
      share of trades with pnl > 0; ``trades``: their number; ``avg_trade``: mean pnl (money);
    * ``exposure``: share of bars that end in a position; ``final_equity``.

    A ratio with a zero denominator is NaN (inf for the profit factor with gains and no losses).
    """
    return metrics_from_arrays(
        equity.get_column("equity").to_numpy(),
        equity.get_column("position").to_numpy(),
        trades.get_column("pnl").to_numpy(),
        initial_capital,
        timeframe,
    )


def metrics_from_arrays(
    values: np.ndarray,
    position: np.ndarray,
    pnl: np.ndarray,
    initial_capital: float,
    timeframe: dt.timedelta | None,
) -> dict[str, float]:
    """:func:`backtest_metrics` from plain arrays: per-bar equity and position, trades' pnl."""
    n = len(values)
    bars_per_year = YEAR / timeframe if timeframe else math.nan
    final = float(values[-1]) if n else float(initial_capital)
    total = final / initial_capital - 1.0
    nan = math.nan
    if n:
        previous = np.concatenate(([initial_capital], values[:-1]))
        returns = values / previous - 1.0
        annual = (1.0 + total) ** (bars_per_year / n) - 1.0 if total > -1 else -1.0
        std = float(returns.std(ddof=1)) if n > 1 else nan
        mean = float(returns.mean())
        sharpe = mean / std * math.sqrt(bars_per_year) if std > 0 else nan
        downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
        sortino = mean / downside * math.sqrt(bars_per_year) if downside > 0 else nan
        peaks = np.maximum.accumulate(np.concatenate(([initial_capital], values)))
        max_dd = float(np.max(1.0 - np.concatenate(([initial_capital], values)) / peaks))
        exposure = float(np.mean(position != 0))
    else:
        annual = sharpe = sortino = exposure = nan
        max_dd = 0.0
    gains = float(pnl[pnl > 0].sum())
    losses = float(-pnl[pnl < 0].sum())
    profit_factor = gains / losses if losses > 0 else math.inf if gains > 0 else nan
    return {
        "total_return": total,
        "annual_return": annual,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": max_dd,
        "calmar": annual / max_dd if max_dd > 0 else nan,
        "profit_factor": profit_factor,
        "win_rate": float(np.mean(pnl > 0)) if len(pnl) else nan,
        "trades": float(len(pnl)),
        "exposure": exposure,
        "avg_trade": float(pnl.mean()) if len(pnl) else nan,
        "final_equity": final,
    }


__all__ = [
    "EXIT_REASONS",
    "TRADES_SCHEMA",
    "BacktestResult",
    "ExecutionConfig",
    "OrderSignals",
    "backtest_metrics",
    "fill_prices",
    "metrics_from_arrays",
    "run_backtest",
]
