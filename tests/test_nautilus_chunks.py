"""Long Nautilus runs streamed in chunks: the same trades, reports and statistics as one run,
closed positions and orders moved out of the engine's cache between chunks (so the time per bar
stays flat: ``benchmarks/bench_nautilus.py``), and the one-pass portfolio analyzer equal to
Nautilus' own. Bar by bar: our volumes reach the rules, and the AI gate can read predictions
published by an Actor as custom data."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest
from nautilus_trader.analysis.analyzer import PortfolioAnalyzer
from nautilus_trader.model.enums import ContingencyType

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.execution.nautilus import (
    PREDICTIONS,
    VENUE,
    NautilusRun,
    PredictionActor,
    PredictionActorConfig,
    SignalPlan,
    SignalPrediction,
    SpecStrategy,
    SpecStrategyConfig,
    _convert_arrays,
    _empty_engine,
    _OnePassAnalyzer,
    _run_in_chunks,
    build_engine,
    run_nautilus,
    run_nautilus_full,
)
from aiopt_lib.strategy.search import builtin_template
from aiopt_lib.strategy.spec import Distance, StrategySpec, backtest, compile_signals


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return load_sample().head(1500)


@pytest.fixture(scope="module")
def spec() -> StrategySpec:
    """Every protective order kind, so that stops, trails and takes stay open across chunk
    boundaries."""
    return StrategySpec(
        name="ema_cross_protected",
        params={"fast": 8, "slow": 21},
        long_entry="crossover(ema(fast), ema(slow))",
        short_entry="crossunder(ema(fast), ema(slow))",
        stop_loss=Distance(unit="atr", value=1.5),
        trailing_stop=Distance(unit="atr", value=2.5),
        take_profit=Distance(unit="atr", value=2.0),
        costs={"spread": 0.2, "slippage_ticks": 1, "commission_percent": 0.002},
    )


@pytest.fixture(scope="module")
def whole(bars: pl.DataFrame, spec: StrategySpec) -> NautilusRun:
    return run_nautilus_full(bars, spec, chunk_bars=None)


@contextmanager
def finished_engine(bars: pl.DataFrame, spec: StrategySpec) -> Iterator[tuple[Any, Any]]:
    """``(engine, data)`` after one whole run of ``spec``'s precomputed signals (all the data at
    once, nothing purged), disposed afterwards."""
    engine, data = build_engine(bars, spec)
    try:
        plan = SignalPlan.from_signals(compile_signals(spec, bars), spec.direction)
        config = SpecStrategyConfig(bar_type=data.bar_type, quantity=spec.quantity)
        engine.add_strategy(SpecStrategy(config, plan, data, spec.instrument_tick_size))
        engine.run()
        yield engine, data
    finally:
        engine.dispose()


def sorted_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """A report in a fixed order, without the random UUID of each order's init event."""
    return frame.sort(frame.columns[0]).drop("init_id", strict=False)


def same_statistics(a: dict[str, float], b: dict[str, float]) -> bool:
    def nan(x: object) -> bool:
        return isinstance(x, float) and math.isnan(x)

    return a.keys() == b.keys() and all(a[k] == b[k] or (nan(a[k]) and nan(b[k])) for k in a)


@pytest.mark.parametrize("chunk_bars", [1, 7, 250])
def test_chunked_run_equals_one_run(bars, spec, whole, chunk_bars: int) -> None:
    chunked = run_nautilus_full(bars, spec, chunk_bars=chunk_bars)
    assert whole.trades.height > 30
    assert set(whole.trades["exit_reason"]) >= {"stop", "take", "reverse"}
    assert chunked.trades.equals(whole.trades)
    assert sorted_frame(chunked.fills).equals(sorted_frame(whole.fills))
    assert sorted_frame(chunked.positions).equals(sorted_frame(whole.positions))
    assert chunked.account.equals(whole.account)
    assert same_statistics(chunked.statistics, whole.statistics)


def assert_same_trades(ours: pl.DataFrame, theirs: pl.DataFrame) -> None:
    assert ours.height > 5
    keys = ("entry_ts", "exit_ts", "side", "exit_reason")
    assert theirs.select(keys).equals(ours.select(keys))
    np.testing.assert_allclose(theirs["entry_price"], ours["entry_price"], rtol=0, atol=5e-6)


def test_chunked_bar_by_bar_run_equals_the_vectorised_engine(bars, spec) -> None:
    ours = backtest(bars, spec).trades
    assert_same_trades(ours, run_nautilus(bars, spec, mode="bar_by_bar", chunk_bars=97))


def test_chunks_move_closed_positions_out_of_the_cache(bars, spec, whole) -> None:
    raw = _convert_arrays(bars, spec)
    engine = _empty_engine(raw.data, spec, "ERROR")
    try:
        plan = SignalPlan.from_signals(compile_signals(spec, bars), spec.direction)
        config = SpecStrategyConfig(bar_type=raw.data.bar_type, quantity=spec.quantity)
        engine.add_strategy(SpecStrategy(config, plan, raw.data, spec.instrument_tick_size))
        ledger = _run_in_chunks(engine, raw, 100)
        # the ledger holds every position and order; the cache only the last chunk's
        assert len(ledger.positions) == whole.trades.height
        filled = [o for o in ledger.orders.values() if o.filled_qty.as_double() > 0]
        assert len(filled) == whole.fills.height
        assert len(engine.cache.positions()) < len(ledger.positions) / 5
        assert len(engine.cache.orders()) < len(ledger.orders) / 5
    finally:
        engine.dispose()


def test_run_without_reports_has_the_same_trades(bars, spec, whole) -> None:
    run = run_nautilus_full(bars, spec, reports=False)
    assert run.trades.equals(whole.trades)
    assert run.fills.is_empty() and run.statistics == {}


def test_chunk_size_must_be_positive(bars, spec) -> None:
    with pytest.raises(ConfigError, match="chunk_bars"):
        run_nautilus(bars, spec, chunk_bars=0)


def test_one_pass_analyzer_equals_nautilus_own(bars, spec) -> None:
    with finished_engine(bars, spec) as (engine, data):
        positions = engine.cache.positions()
        assert len(positions) > 30
        account = engine.cache.account_for_venue(VENUE)
        theirs, ours = PortfolioAnalyzer(), _OnePassAnalyzer()
        for statistic in engine.portfolio.analyzer._statistics.values():
            theirs.register_statistic(statistic)
            ours.register_statistic(statistic)
        theirs.calculate_statistics(account, positions)
        ours.calculate_statistics(account, positions)
        currency = data.instrument.quote_currency
        pd.testing.assert_series_equal(
            ours.realized_pnls(currency), theirs.realized_pnls(currency), check_names=False
        )
        assert ours.returns().to_dict() == theirs.returns().to_dict()
        assert list(ours.returns().index) == list(theirs.returns().index)
        for section in (
            "get_performance_stats_returns",
            "get_performance_stats_general",
        ):
            a, b = getattr(ours, section)(), getattr(theirs, section)()
            assert same_statistics(a, b), section
        a = ours.get_performance_stats_pnls(currency)
        b = theirs.get_performance_stats_pnls(currency)
        assert same_statistics(a, b)


def test_bar_by_bar_rules_read_our_fractional_volumes(bars) -> None:
    """A rule on ``volume``: Nautilus' bars carry our volumes with their decimals (the size
    precision follows the data), so bar by bar the rule sees the volumes the vectorised engine
    sees; a volume Nautilus cannot hold is refused with its row."""
    rng = np.random.default_rng(5)
    lots = bars.with_columns(volume=pl.Series(np.round(rng.uniform(0.5, 2.5, bars.height), 2)))
    spec = StrategySpec(
        name="volume_gate",
        params={"fast": 8, "slow": 21},
        long_entry="crossover(ema(fast), ema(slow)) and volume > 1.7",
        short_entry="crossunder(ema(fast), ema(slow)) and volume > 1.7",
        costs={"spread": 0.2},
    )
    assert_same_trades(backtest(lots, spec).trades, run_nautilus(lots, spec, mode="bar_by_bar"))
    huge = bars.with_columns(
        volume=pl.when(pl.int_range(pl.len()) == 100).then(1e15).otherwise(pl.col("volume"))
    )
    with pytest.raises(ConfigError, match="row 100: volume"):
        run_nautilus(huge, spec)


def test_ai_gate_predictions_published_by_an_actor(bars) -> None:
    """The AI gate fed as live: a PredictionActor publishes each bar's model prediction as
    Nautilus custom data, the strategy receives it on the message bus and evaluates the gate on
    that bar; the trades equal the vectorised engine's reading the same predictions frame."""
    spec = builtin_template("ai_gate").spec
    rng = np.random.default_rng(11)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=bars.height)
    predictions = pl.DataFrame(
        {"ts": bars["ts"], "prob_buy": probs[:, 0], "prob_sell": probs[:, 1]}
    ).filter(pl.Series(rng.random(bars.height) > 0.1))  # some bars without a prediction
    ours = backtest(bars, spec, predictions).trades
    via_actor = run_nautilus(
        bars, spec, predictions, mode="bar_by_bar", predictions_via="actor", chunk_bars=400
    )
    assert_same_trades(ours, via_actor)
    with pytest.raises(ConfigError, match="predictions_via"):
        run_nautilus(bars, spec, predictions, predictions_via="actor")  # precomputed mode


def test_prediction_actor_publishes_one_prediction_per_predicted_bar(bars) -> None:
    engine, data = build_engine(bars.head(50), builtin_template("ema_cross").spec)
    try:
        table = {int(t): {"prob_buy": 0.7, "prob_sell": 0.2} for t in data.open_ns[::2]}
        actor = PredictionActor(
            PredictionActorConfig(bar_type=data.bar_type), lambda t, _bar: table.get(t)
        )
        seen: list[SignalPrediction] = []
        engine.add_actor(actor)
        engine.kernel.msgbus.subscribe(f"data.{PREDICTIONS.topic}", seen.append)
        engine.run()
        assert actor.published == len(table) == 25
        assert [p.bar_open_ns for p in seen] == sorted(table)
        first = seen[0]
        assert (first.prob_buy, first.prob_sell) == (0.7, 0.2)
        assert math.isnan(first.prob_hold)  # a column the model did not give
        assert first.ts_event == data.close_ns[0]  # published when its bar closed
    finally:
        engine.dispose()


def test_stop_and_take_are_one_oco_pair_cancelled_by_the_venue(bars, spec) -> None:
    """The exit legs of each entry (trailing stop and take-profit here) are one OCO order list
    linked in Nautilus: when one fills the matching engine cancels the other; a signal exit
    cancels both. Never two exits for one position."""
    with finished_engine(bars, spec) as (engine, _data):
        pairs: dict[str, list] = {}
        for order in engine.cache.orders():
            if order.contingency_type == ContingencyType.OCO:
                pairs.setdefault(order.order_list_id.value, []).append(order)
        assert len(pairs) == len(engine.cache.positions())
        outcomes = set()
        for legs in pairs.values():
            assert len(legs) == 2
            a, b = legs
            assert a.linked_order_ids == [b.client_order_id]
            assert b.linked_order_ids == [a.client_order_id]
            statuses = sorted(o.status_string() for o in legs)
            assert statuses in (["CANCELED", "FILLED"], ["CANCELED", "CANCELED"]), statuses
            outcomes.add(tuple(statuses))
        assert outcomes == {("CANCELED", "FILLED"), ("CANCELED", "CANCELED")}
