"""The backtest engine: the numba loop against a plain Python reference on random bars and signals,
and hand-built cases for each TradingView fill rule."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.strategy.backtest import (
    BacktestResult,
    ExecutionConfig,
    OrderSignals,
    fill_prices,
    run_backtest,
)

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


# ---------------------------------------------------------------------------------------------
# A plain Python reference, written in real prices with explicit long/short branches


def _tick(price: float, tick: float) -> float:
    return math.floor(price / tick + 0.5) * tick


def reference_backtest(
    bars: pl.DataFrame, signals: OrderSignals, config: ExecutionConfig
) -> tuple[list[tuple], list[float]]:
    """Trades as ``(entry_i, exit_i, side, entry_px, exit_px, costs, reason)`` and equity per bar."""
    buy, sell = fill_prices(bars, config)
    n = bars.height
    tick, qty = config.tick_size, config.quantity
    slip = config.slippage_ticks * tick
    eps = 1e-6 * tick  # an exact touch up to float noise fills
    allow_long = config.direction in ("long", "both")
    allow_short = config.direction in ("short", "both")

    def dist(values: np.ndarray | None, i: int) -> float | None:
        if values is None or math.isnan(values[i]) or math.isinf(values[i]):
            return None
        return float(values[i])

    def commission(price: float) -> float:
        return config.commission_per_unit * qty + config.commission_percent / 100 * price * qty

    trades: list[tuple] = []
    equity: list[float] = []
    realized = 0.0
    pos: dict | None = None
    pending: tuple[int, int] | None = None

    def close(t: int, price: float, reason: str) -> None:
        nonlocal pos, realized
        assert pos is not None
        cost = commission(price)
        sign = 1 if pos["side"] == "long" else -1
        realized += sign * (price - pos["entry"]) * qty - pos["cost"] - cost
        trades.append((pos["i"], t, sign, pos["entry"], price, pos["cost"] + cost, reason))
        pos = None

    def open_(t: int, side: str, raw: float, signal_bar: int) -> None:
        nonlocal pos
        entry = _tick(raw, tick) + (slip if side == "long" else -slip)
        stop = dist(signals.stop_distance, signal_bar)
        take = dist(signals.take_distance, signal_bar)
        if side == "long":
            stop_level = None if stop is None else _tick(entry - stop, tick)
            take_level = None if take is None else _tick(entry + take, tick)
        else:
            stop_level = None if stop is None else _tick(entry + stop, tick)
            take_level = None if take is None else _tick(entry - take, tick)
        pos = {
            "side": side,
            "entry": entry,
            "i": t,
            "cost": commission(entry),
            "stop": stop_level,
            "take": take_level,
            "trail": dist(signals.trail_distance, signal_bar),
            "best": entry,
        }

    def protective() -> tuple[float | None, str]:
        assert pos is not None
        level, why = pos["stop"], "stop"
        if pos["trail"] is not None:
            if pos["side"] == "long":
                trail = _tick(pos["best"] - pos["trail"], tick)
                if level is None or trail > level:
                    level, why = trail, "trail"
            else:
                trail = _tick(pos["best"] + pos["trail"], tick)
                if level is None or trail < level:
                    level, why = trail, "trail"
        return level, why

    def target_after(t: int) -> int:
        le = bool(signals.long_entry[t]) and allow_long
        se = bool(signals.short_entry[t]) and allow_short
        if le and se:
            le = se = False
        lx = bool(signals.long_exit[t]) or (bool(signals.short_entry[t]) and not allow_short)
        sx = bool(signals.short_exit[t]) or (bool(signals.long_entry[t]) and not allow_long)
        current = 0 if pos is None else (1 if pos["side"] == "long" else -1)
        if current == 1:
            return -1 if se else (0 if lx else 1)
        if current == -1:
            return 1 if le else (0 if sx else -1)
        return 1 if le else (-1 if se else 0)

    def execute(t: int, target: int, signal_bar: int, at: int) -> None:
        current = 0 if pos is None else (1 if pos["side"] == "long" else -1)
        if target == current:
            return
        if pos is not None:
            if current == 1:
                close(t, _tick(sell[at, t], tick) - slip, "reverse" if target else "signal")
            else:
                close(t, _tick(buy[at, t], tick) + slip, "reverse" if target else "signal")
        if target == 1:
            open_(t, "long", buy[at, t], signal_bar)
        elif target == -1:
            open_(t, "short", sell[at, t], signal_bar)

    for t in range(n):
        if pending is not None:
            execute(t, pending[0], pending[1], 0)
            pending = None
        if pos is not None:
            side = pos["side"]
            o, h, lo, c = (sell if side == "long" else buy)[:, t]
            path = [o, h, lo, c] if (h - o) + tick / 2 < o - lo else [o, lo, h, c]
            level, why = protective()
            take = pos["take"]
            if side == "long":
                if level is not None and o <= level + eps:
                    close(t, _tick(o, tick) - slip, why)
                elif take is not None and o >= take - eps:
                    close(t, _tick(o, tick), "take")
                else:
                    pos["best"] = max(pos["best"], o)
                    for a, b in itertools.pairwise(path):
                        if b > a:
                            if take is not None and b >= take - eps:
                                close(t, take, "take")
                                break
                            pos["best"] = max(pos["best"], b)
                        elif b < a:
                            level, why = protective()
                            if level is not None and b <= level + eps:
                                close(t, level - slip, why)
                                break
            else:
                if level is not None and o >= level - eps:
                    close(t, _tick(o, tick) + slip, why)
                elif take is not None and o <= take + eps:
                    close(t, _tick(o, tick), "take")
                else:
                    pos["best"] = min(pos["best"], o)
                    for a, b in itertools.pairwise(path):
                        if b < a:
                            if take is not None and b <= take + eps:
                                close(t, take, "take")
                                break
                            pos["best"] = min(pos["best"], b)
                        elif b > a:
                            level, why = protective()
                            if level is not None and b >= level - eps:
                                close(t, level + slip, why)
                                break
        if t < n - 1:
            target = target_after(t)
            if config.fill == "close":
                execute(t, target, t, 3)
            else:
                pending = (target, t)
        elif pos is not None:
            if pos["side"] == "long":
                close(t, _tick(sell[3, t], tick) - slip, "end")
            else:
                close(t, _tick(buy[3, t], tick) + slip, "end")
        value = config.initial_capital + realized
        if pos is not None:
            mark = sell[3, t] if pos["side"] == "long" else buy[3, t]
            sign = 1 if pos["side"] == "long" else -1
            value += sign * (mark - pos["entry"]) * qty - pos["cost"]
        equity.append(value)
    return trades, equity


# ---------------------------------------------------------------------------------------------
# Helpers


def make_bars(
    opens: list[float],
    highs: list[float],
    lows: list[float],
    closes: list[float],
    **extra: list[float],
) -> pl.DataFrame:
    n = len(opens)
    return pl.DataFrame(
        {
            "ts": [START + dt.timedelta(hours=i) for i in range(n)],
            "open": opens,
            "high": highs,
            "low": lows,
            "close": closes,
            "volume": [1.0] * n,
            **extra,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def random_bars(rng: np.random.Generator, n: int, *, sides: bool) -> pl.DataFrame:
    """A random walk on a 1e-5 grid with weekend-like gaps, some symmetric (tie) bars."""
    steps = rng.normal(0, 0.0008, n)
    gaps = np.where(rng.random(n) < 0.05, rng.normal(0, 0.004, n), 0.0)
    close = 1.1 + np.cumsum(steps + gaps)
    opens = np.concatenate(([1.1], close[:-1])) + gaps
    up = np.abs(rng.normal(0, 0.0006, n))
    down = np.where(rng.random(n) < 0.1, up, np.abs(rng.normal(0, 0.0006, n)))
    high = np.maximum(opens, close) + up
    low = np.minimum(opens, close) - down
    ohlc = [np.round(x, 5) for x in (opens, high, low, close)]
    ohlc[1] = np.maximum.reduce(ohlc)
    ohlc[2] = np.minimum.reduce(ohlc)
    hours = np.cumsum(np.where(rng.random(n) < 0.03, 49, 1))
    extra: dict[str, np.ndarray] = {}
    if sides:
        spread = np.round(rng.uniform(0.00002, 0.0003, n), 5)
        for name, values in zip(("open", "high", "low", "close"), ohlc, strict=True):
            extra[f"bid_{name}"] = values
            extra[f"ask_{name}"] = values + spread
    return pl.DataFrame(
        {
            "ts": [START + dt.timedelta(hours=int(h)) for h in hours],
            "open": ohlc[0],
            "high": ohlc[1],
            "low": ohlc[2],
            "close": ohlc[3],
            "volume": np.ones(n),
            **extra,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def random_signals(rng: np.random.Generator, n: int) -> OrderSignals:
    def distances() -> np.ndarray | None:
        if rng.random() < 0.2:
            return None
        values = rng.uniform(0.0002, 0.003, n)
        values[rng.random(n) < 0.3] = np.nan
        return values

    density = rng.uniform(0.02, 0.25)
    return OrderSignals(
        long_entry=rng.random(n) < density,
        long_exit=rng.random(n) < density,
        short_entry=rng.random(n) < density,
        short_exit=rng.random(n) < density,
        stop_distance=distances(),
        take_distance=distances(),
        trail_distance=distances(),
    )


def assert_matches_reference(
    bars: pl.DataFrame, signals: OrderSignals, config: ExecutionConfig
) -> BacktestResult:
    result = run_backtest(bars, signals, config)
    expected, equity = reference_backtest(bars, signals, config)
    trades = result.trades
    assert trades.height == len(expected)
    ts = bars.get_column("ts")
    if expected:
        columns = list(zip(*expected, strict=True))
        assert trades.get_column("entry_ts").to_list() == [ts[i] for i in columns[0]]
        assert trades.get_column("exit_ts").to_list() == [ts[i] for i in columns[1]]
        assert trades.get_column("side").to_list() == [
            "long" if s == 1 else "short" for s in columns[2]
        ]
        np.testing.assert_allclose(
            trades.get_column("entry_price").to_numpy(), columns[3], rtol=0, atol=1e-12
        )
        np.testing.assert_allclose(
            trades.get_column("exit_price").to_numpy(), columns[4], rtol=0, atol=1e-12
        )
        np.testing.assert_allclose(
            trades.get_column("costs").to_numpy(), columns[5], rtol=1e-12, atol=1e-9
        )
        assert trades.get_column("exit_reason").to_list() == list(columns[6])
        assert trades.get_column("bars_held").to_list() == [
            b - a for a, b in zip(columns[0], columns[1], strict=True)
        ]
    np.testing.assert_allclose(
        result.equity.get_column("equity").to_numpy(), equity, rtol=1e-12, atol=1e-6
    )
    # bookkeeping: the final equity is the capital plus every trade's pnl
    assert result.metrics["final_equity"] == pytest.approx(
        config.initial_capital + trades.get_column("pnl").sum()
    )
    return result


# ---------------------------------------------------------------------------------------------
# Random agreement with the reference


@pytest.mark.parametrize("seed", range(48))
def test_engine_matches_python_reference_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    sides = bool(rng.random() < 0.5)
    bars = random_bars(rng, n, sides=sides)
    config = ExecutionConfig(
        tick_size=float(rng.choice([1e-5, 1e-4])),
        commission_per_unit=float(rng.choice([0.0, 0.00002])),
        commission_percent=float(rng.choice([0.0, 0.001])),
        slippage_ticks=int(rng.integers(0, 3)),
        spread=None if sides or rng.random() < 0.5 else float(rng.choice([0.0, 0.00015])),
        fill="next_open" if seed % 3 else "close",
        direction=("both", "both", "long", "short")[seed % 4],
    )
    result = assert_matches_reference(bars, random_signals(rng, n), config)
    assert set(result.trades.get_column("exit_reason").unique()) <= {
        "signal",
        "stop",
        "take",
        "trail",
        "reverse",
        "end",
    }


def test_random_cases_exercise_every_exit_reason() -> None:
    """The random cases above are not vacuous: together they reach every exit reason."""
    seen: set[str] = set()
    for seed in range(6):
        rng = np.random.default_rng(1000 + seed)
        bars = random_bars(rng, 600, sides=seed % 2 == 0)
        result = assert_matches_reference(
            bars, random_signals(rng, 600), ExecutionConfig(slippage_ticks=1)
        )
        seen |= set(result.trades.get_column("exit_reason").to_list())
    assert seen == {"signal", "stop", "take", "trail", "reverse", "end"}


# ---------------------------------------------------------------------------------------------
# Hand-built cases


def _signals(n: int, **on: list[int] | np.ndarray) -> OrderSignals:
    arrays = {}
    for name in ("long_entry", "long_exit", "short_entry", "short_exit"):
        flags = np.zeros(n, dtype=bool)
        flags[list(on.get(name, []))] = True
        arrays[name] = flags
    distances = {k: np.asarray(v, dtype=float) for k, v in on.items() if k.endswith("_distance")}
    return OrderSignals(**arrays, **distances)


FLAT = [1.1000] * 6


def test_market_orders_fill_at_the_next_open() -> None:
    bars = make_bars(
        [1.1000, 1.1010, 1.1020, 1.1030, 1.1040, 1.1050],
        [1.1015, 1.1025, 1.1035, 1.1045, 1.1055, 1.1065],
        [1.0995, 1.1005, 1.1015, 1.1025, 1.1035, 1.1045],
        [1.1010, 1.1020, 1.1030, 1.1040, 1.1050, 1.1060],
    )
    result = run_backtest(bars, _signals(6, long_entry=[1], long_exit=[3]))
    trade = result.trades.row(0, named=True)
    assert trade["entry_ts"] == bars["ts"][2]
    assert trade["entry_price"] == pytest.approx(1.1020)
    assert trade["exit_ts"] == bars["ts"][4]
    assert trade["exit_price"] == pytest.approx(1.1040)
    assert trade["exit_reason"] == "signal"
    assert trade["bars_held"] == 2
    assert trade["pnl"] == pytest.approx(0.0020 * 100_000)
    # position is held from the entry bar's close to the bar before the exit
    assert result.equity["position"].to_list() == [0, 0, 100_000, 100_000, 0, 0]
    # with fill="close" the same signals fill at the signal bars' closes
    at_close = run_backtest(
        bars, _signals(6, long_entry=[1], long_exit=[3]), ExecutionConfig(fill="close")
    )
    trade = at_close.trades.row(0, named=True)
    assert (trade["entry_price"], trade["exit_price"]) == pytest.approx((1.1020, 1.1040))
    assert (trade["entry_ts"], trade["exit_ts"]) == (bars["ts"][1], bars["ts"][3])


def test_a_gap_through_the_stop_fills_at_the_open() -> None:
    bars = make_bars(
        [1.1000, 1.1000, 1.0950, 1.0950],
        [1.1005, 1.1005, 1.0960, 1.0960],
        [1.0995, 1.0995, 1.0940, 1.0940],
        [1.1000, 1.1000, 1.0950, 1.0950],
    )
    signals = _signals(4, long_entry=[0], stop_distance=[0.0010] * 4)
    trade = run_backtest(bars, signals).trades.row(0, named=True)
    assert trade["exit_reason"] == "stop"
    assert trade["exit_price"] == pytest.approx(1.0950)  # not the 1.0990 stop level
    assert trade["exit_ts"] == bars["ts"][2]
    # with two ticks of slippage, worse still
    slipped = run_backtest(bars, signals, ExecutionConfig(slippage_ticks=2)).trades.row(
        0, named=True
    )
    assert slipped["exit_price"] == pytest.approx(1.0950 - 2e-5)
    # a take-profit gapped through fills at the (better) open, without slippage
    up = make_bars(
        [1.1000, 1.1000, 1.1050],
        [1.1005, 1.1005, 1.1060],
        [1.0995, 1.0995, 1.1040],
        [1.1, 1.1, 1.105],
    )
    take = run_backtest(
        up,
        _signals(3, long_entry=[0], take_distance=[0.001] * 3),
        ExecutionConfig(slippage_ticks=2),
    )
    assert take.trades.row(0, named=True)["exit_price"] == pytest.approx(1.1050)
    assert take.trades.row(0, named=True)["exit_reason"] == "take"


@pytest.mark.parametrize(
    ("high", "low", "reason", "price"),
    [
        (1.1015, 1.0980, "take", 1.1010),  # high nearer the open: open → high → low
        (1.1020, 1.0985, "stop", 1.0990),  # low nearer the open: open → low → high
        (1.1015, 1.0985, "stop", 1.0990),  # a tie goes open → low → high
    ],
)
def test_intrabar_path_order_decides_stop_or_take(
    high: float, low: float, reason: str, price: float
) -> None:
    bars = make_bars(
        [1.1000, 1.1000, 1.1000], [1.1002, 1.1002, high], [1.0998, 1.0998, low], [1.1, 1.1, 1.1]
    )
    signals = _signals(3, long_entry=[1], stop_distance=[0.001] * 3, take_distance=[0.001] * 3)
    trade = run_backtest(bars, signals).trades.row(0, named=True)
    assert (trade["exit_reason"], trade["bars_held"]) == (
        reason,
        0,
    )  # checked on the entry bar itself
    assert trade["exit_price"] == pytest.approx(price)
    # the mirror image for a short
    mirrored = make_bars(
        [1.1000] * 3, [1.1002, 1.1002, 2.2 - low], [1.0998, 1.0998, 2.2 - high], [1.1] * 3
    )
    signals = _signals(3, short_entry=[1], stop_distance=[0.001] * 3, take_distance=[0.001] * 3)
    short = run_backtest(mirrored, signals).trades.row(0, named=True)
    # the mirrored tie still goes open → low first: the take
    if abs((high - 1.1) - (1.1 - low)) < 5e-6:
        assert short["exit_reason"] == "take"
    else:
        assert short["exit_reason"] == reason
        assert short["exit_price"] == pytest.approx(2.2 - price)


def test_trailing_stop_follows_the_best_price() -> None:
    bars = make_bars(
        [1.1000, 1.1000, 1.1010, 1.1040, 1.1030],
        [1.1002, 1.1012, 1.1050, 1.1045, 1.1035],
        [1.0998, 1.0998, 1.1008, 1.1025, 1.1020],
        [1.1000, 1.1010, 1.1040, 1.1030, 1.1025],
    )
    signals = _signals(5, long_entry=[0], trail_distance=[0.0015] * 5, stop_distance=[0.003] * 5)
    trade = run_backtest(bars, signals).trades.row(0, named=True)
    # best 1.1050 on bar 2 (path open → high → low → close, the low above 1.1035), then bar 3 opens
    # at 1.1040 and falls to 1.1025 through the trail at 1.1035
    assert trade["exit_reason"] == "trail"
    assert trade["exit_price"] == pytest.approx(1.1035)
    assert trade["exit_ts"] == bars["ts"][3]


def test_fills_round_to_the_tick_and_slip_against_the_trader() -> None:
    bars = make_bars(
        [1.10004, 1.10004, 1.10016],
        [1.1002, 1.1002, 1.1003],
        [1.0999, 1.0999, 1.1001],
        [1.1, 1.1, 1.1002],
    )
    config = ExecutionConfig(tick_size=1e-4, slippage_ticks=2)
    long = run_backtest(bars, _signals(3, long_entry=[0]), config).trades.row(0, named=True)
    assert long["entry_price"] == pytest.approx(1.1000 + 0.0002)  # 1.10004 → 1.1000, + 2 ticks
    assert long["exit_price"] == pytest.approx(1.1002 - 0.0002)  # end close 1.1002, - 2 ticks
    short = run_backtest(bars, _signals(3, short_entry=[0]), config).trades.row(0, named=True)
    assert short["entry_price"] == pytest.approx(1.1000 - 0.0002)
    # the stop level itself is rounded: 1.1000 - 0.00013 → 1.0999 on a 1e-4 tick
    stop = run_backtest(
        bars,
        _signals(3, long_entry=[0], stop_distance=[0.00013] * 3),
        ExecutionConfig(tick_size=1e-4),
    )
    assert stop.trades.row(0, named=True)["exit_price"] == pytest.approx(1.0999)


def test_buys_fill_at_the_ask_and_sells_at_the_bid() -> None:
    bid = {"open": [1.1000, 1.1010, 1.1020, 1.1030], "close": [1.1005, 1.1015, 1.1025, 1.1035]}
    extra = {
        "bid_open": bid["open"],
        "bid_high": [p + 0.001 for p in bid["open"]],
        "bid_low": [p - 0.001 for p in bid["open"]],
        "bid_close": bid["close"],
        "ask_open": [p + 0.0002 for p in bid["open"]],
        "ask_high": [p + 0.0012 for p in bid["open"]],
        "ask_low": [p - 0.0008 for p in bid["open"]],
        "ask_close": [p + 0.0002 for p in bid["close"]],
    }
    bars = make_bars(bid["open"], extra["bid_high"], extra["bid_low"], bid["close"], **extra)
    long = run_backtest(bars, _signals(4, long_entry=[0], long_exit=[1])).trades.row(0, named=True)
    assert long["entry_price"] == pytest.approx(1.1012)  # ask_open of bar 1
    assert long["exit_price"] == pytest.approx(1.1020)  # bid_open of bar 2
    short = run_backtest(bars, _signals(4, short_entry=[0], short_exit=[1])).trades.row(
        0, named=True
    )
    assert short["entry_price"] == pytest.approx(1.1010)  # bid_open
    assert short["exit_price"] == pytest.approx(1.1022)  # ask_open
    # a fixed spread overrides the columns: main ± spread / 2
    fixed = run_backtest(
        bars, _signals(4, long_entry=[0], long_exit=[1]), ExecutionConfig(spread=0.0004)
    )
    row = fixed.trades.row(0, named=True)
    assert (row["entry_price"], row["exit_price"]) == pytest.approx((1.1012, 1.1018))


def test_an_open_position_is_closed_at_the_last_close() -> None:
    bars = make_bars(FLAT[:4], [1.1010] * 4, [1.0990] * 4, [1.1000, 1.1000, 1.1000, 1.1007])
    result = run_backtest(
        bars,
        _signals(4, short_entry=[0], long_entry=[3]),
        ExecutionConfig(commission_per_unit=1e-5),
    )
    assert result.trades.height == 1  # the entry signal on the last bar has no bar to fill on
    trade = result.trades.row(0, named=True)
    assert (trade["exit_reason"], trade["exit_ts"], trade["bars_held"]) == ("end", bars["ts"][3], 2)
    assert trade["exit_price"] == pytest.approx(1.1007)
    assert trade["costs"] == pytest.approx(2.0)
    assert trade["pnl"] == pytest.approx(-0.0007 * 100_000 - 2.0)
    assert trade["return"] == pytest.approx(trade["pnl"] / (1.1 * 100_000))
    assert result.equity["equity"][-1] == pytest.approx(100_000 + trade["pnl"])
    assert result.equity["position"][-1] == 0


def test_reversal_and_direction_filter() -> None:
    bars = make_bars(FLAT, [1.1010] * 6, [1.0990] * 6, FLAT)
    signals = _signals(6, long_entry=[0], short_entry=[2])
    both = run_backtest(bars, signals).trades
    assert both["side"].to_list() == ["long", "short"]
    assert both["exit_reason"].to_list() == ["reverse", "end"]
    assert both["exit_ts"][0] == both["entry_ts"][1] == bars["ts"][3]
    # long only: the short entry closes the long instead of reversing
    long_only = run_backtest(bars, signals, ExecutionConfig(direction="long")).trades
    assert long_only["side"].to_list() == ["long"]
    assert long_only["exit_reason"].to_list() == ["signal"]
    # both entries on one bar: a conflict, nothing happens
    assert run_backtest(bars, _signals(6, long_entry=[1], short_entry=[1])).trades.height == 0


def test_no_look_ahead_trades_up_to_t_ignore_later_bars() -> None:
    rng = np.random.default_rng(7)
    n = 300
    bars = random_bars(rng, n, sides=True)
    signals = random_signals(rng, n)
    base = run_backtest(bars, signals)
    for t in (50, 150, 250):
        changed = random_bars(np.random.default_rng(t), n, sides=True)
        # keep bars 0..t+1 (a signal at t fills at t+1's open); replace the prices after them
        later = pl.col("ts") > bars["ts"][t + 1]
        price_cols = [c for c in bars.columns if c not in ("ts", "volume")]
        mixed = bars.with_columns(
            [
                pl.when(later).then(changed[c] + 0.01).otherwise(pl.col(c)).alias(c)
                for c in price_cols
            ]
        )
        other = run_backtest(mixed, signals)
        cut = bars["ts"][t]
        before = base.trades.filter(pl.col("exit_ts") <= cut)
        assert before.height > 0
        assert before.equals(other.trades.filter(pl.col("exit_ts") <= cut))
        assert base.equity.head(t + 1).equals(other.equity.head(t + 1))
        assert not base.equity.equals(other.equity)  # the change did reach the engine


def test_metrics_on_a_hand_checked_run() -> None:
    bars = make_bars(FLAT[:4], [1.1010] * 4, [1.0990] * 4, [1.1000, 1.0990, 1.1020, 1.1020])
    result = run_backtest(bars, _signals(4, long_entry=[0]), ExecutionConfig(fill="close"))
    equity = [100_000.0, 99_900.0, 100_200.0, 100_200.0]
    assert result.equity["equity"].to_list() == pytest.approx(equity)
    m = result.metrics
    assert m["total_return"] == pytest.approx(0.002)
    assert m["max_drawdown"] == pytest.approx(0.001)
    assert m["trades"] == 1
    assert m["win_rate"] == 1.0
    assert m["profit_factor"] == math.inf
    # in a position at the close of bars 0..2, flat at 3
    assert m["exposure"] == pytest.approx(0.75)
    assert m["avg_trade"] == pytest.approx(200.0)
    returns = np.diff(np.concatenate(([100_000.0], equity))) / np.concatenate(
        ([100_000.0], equity[:-1])
    )
    per_year = 252 * 24
    assert m["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(per_year))
    assert m["annual_return"] == pytest.approx(1.002 ** (per_year / 4) - 1)
    assert m["calmar"] == pytest.approx(m["annual_return"] / 0.001)


def test_real_sample_matches_reference_with_atr_stops() -> None:
    from aiopt_lib.features.indicators import atr, ema

    bars = load_sample()
    close = bars["close"].to_numpy()
    fast, slow = ema(close, 10), ema(close, 30)
    above = np.nan_to_num(fast - slow) > 0
    cross_up = above & ~np.roll(above, 1)
    cross_down = ~above & np.roll(above, 1)
    cross_up[0] = cross_down[0] = False
    width = atr(bars["high"].to_numpy(), bars["low"].to_numpy(), close, 14)
    signals = OrderSignals(
        cross_up, cross_down, cross_down, cross_up, 2 * width, 3 * width, 4 * width
    )
    result = assert_matches_reference(
        bars, signals, ExecutionConfig(spread=0.0001, slippage_ticks=1)
    )
    assert result.trades.height > 100
    assert result.metrics["exposure"] > 0.2


def test_invalid_inputs_are_refused() -> None:
    bars = make_bars(FLAT[:3], [1.101] * 3, [1.099] * 3, FLAT[:3])
    with pytest.raises(ConfigError, match="pyramiding"):
        ExecutionConfig(pyramiding=1)
    with pytest.raises(ConfigError, match="fill"):
        ExecutionConfig(fill="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="long_entry"):
        run_backtest(bars, _signals(2))
    with pytest.raises(ValueError, match="stop_distance"):
        run_backtest(bars, _signals(3, stop_distance=[0.001, -0.001, np.nan]))


def test_a_level_touched_exactly_through_the_spread_fills():
    """Regression: the bid high 1.19001 - 0.00001 is 1.19 in floats, one ulp below the
    tick-rounded take level 1.1900000000000002; an exact touch must still fill (as on
    TradingView and in Nautilus, which compare on the tick grid)."""
    bars = make_bars(
        [1.18, 1.18, 1.18, 1.18],
        [1.18, 1.19001, 1.18, 1.18],
        [1.18, 1.18, 1.18, 1.18],
        [1.18, 1.18, 1.18, 1.18],
    )
    signals = OrderSignals(
        long_entry=np.array([True, False, False, False]),
        long_exit=np.zeros(4, dtype=bool),
        short_entry=np.zeros(4, dtype=bool),
        short_exit=np.zeros(4, dtype=bool),
        take_distance=np.full(4, 0.00999),  # entry 1.18001 + 0.00999 -> level 1.19000
    )
    config = ExecutionConfig(spread=0.00002)
    trades = run_backtest(bars, signals, config).trades
    assert trades.get_column("exit_reason").to_list() == ["take"]
    assert trades.get_column("exit_price")[0] == pytest.approx(1.19, abs=1e-12)
    assert trades.get_column("exit_ts")[0] == bars.get_column("ts")[1]
    (entry_i, exit_i, _side, _entry, exit_px, _costs, reason), *more = reference_backtest(
        bars, signals, config
    )[0]
    assert (entry_i, exit_i, reason, more) == (1, 1, "take", [])
    assert exit_px == pytest.approx(1.19, abs=1e-12)
