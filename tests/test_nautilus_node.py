"""Nautilus beyond the engine: the reports and statistics of a run, the same run through a
ParquetDataCatalog and BacktestNode (equal trades), and a paper-trading node config."""

from __future__ import annotations

import math

import polars as pl
import pytest
from nautilus_trader.config import TradingNodeConfig
from nautilus_trader.model.data import Bar, QuoteTick

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.execution.nautilus import (
    node_run_config,
    paper_trading_node_config,
    read_signal_plan,
    run_from_catalog,
    run_nautilus,
    run_nautilus_full,
    statistics_table,
    write_catalog,
)
from aiopt_lib.strategy.spec import Distance, StrategySpec, backtest


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return load_sample().head(1500)


@pytest.fixture(scope="module")
def spec() -> StrategySpec:
    return StrategySpec(
        name="ema_cross",
        params={"fast": 12, "slow": 26},
        long_entry="crossover(ema(fast), ema(slow))",
        short_entry="crossunder(ema(fast), ema(slow))",
        stop_loss=Distance(unit="atr", value=1.5),
        take_profit=Distance(unit="atr", value=2.0),
        costs={"spread": 0.2, "slippage_ticks": 1, "commission_per_unit": 0.000025},
    )


@pytest.fixture(scope="module")
def full(bars: pl.DataFrame, spec: StrategySpec):
    return run_nautilus_full(bars, spec)


def test_full_run_reports_match_the_trades(full, bars, spec) -> None:
    trades = full.trades
    assert trades.equals(run_nautilus(bars, spec))
    assert trades.height > 20
    # one closed position per trade, Nautilus' realized PnL is our pnl
    positions = full.positions.sort("ts_opened")
    assert positions.height == trades.height
    assert positions["realized_pnl"].to_list() == pytest.approx(trades["pnl"].to_list())
    # two fills per trade (entry and exit), each charged 0.000025 * 100,000 = 2.50 USD
    filled = full.fills.filter(pl.col("status") == "FILLED")
    assert filled.height == 2 * trades.height
    assert filled["commissions"].unique().to_list() == ["2.50 USD"]
    # the account's last balance is the starting balance plus every trade's pnl
    final = full.account.sort("index")["total"][-1]
    assert final == pytest.approx(spec.initial_capital + trades["pnl"].sum(), abs=0.01)


def test_statistics_beside_ours(full, bars, spec) -> None:
    ours = backtest(bars, spec)
    stats = full.statistics
    assert stats["Trades"] == ours.metrics["trades"]
    table = statistics_table(ours.metrics, stats)
    assert table.columns == ["figure", "ours", "nautilus", "basis"]
    row = {r["figure"]: r for r in table.iter_rows(named=True)}
    assert set(row) >= {"total PnL", "total return %", "win rate", "trades", "Sharpe"}
    # the figures both compute from the same trades agree
    for figure in ("total PnL", "total return %", "win rate", "trades", "average trade"):
        assert row[figure]["ours"] == pytest.approx(row[figure]["nautilus"], rel=1e-9), figure
    assert row["total PnL"]["ours"] == pytest.approx(ours.trades["pnl"].sum())
    # Sharpe on different return bases (per bar vs daily): same sign, not the same number
    assert math.copysign(1, row["Sharpe"]["ours"]) == math.copysign(1, row["Sharpe"]["nautilus"])
    # a statistic Nautilus lacks is null, not invented
    partial = statistics_table(ours.metrics, {"Win Rate": 0.5})
    assert partial.filter(pl.col("figure") == "Sharpe")["nautilus"].to_list() == [None]


def test_backtest_node_from_catalog_equals_the_engine(full, bars, spec, tmp_path) -> None:
    catalog = write_catalog(bars, spec, tmp_path / "catalog")
    assert [str(i.id) for i in catalog.instruments()] == ["EUR/USD.SIM"]
    stored_bars = catalog.bars()
    assert len(stored_bars) == bars.height
    # close-stamped, as build_engine feeds them
    assert stored_bars[0].ts_event == bars["ts"].dt.epoch("ns")[0] + 3_600 * 10**9
    assert len(catalog.quote_ticks()) == 4 * bars.height + 1
    node = run_from_catalog(tmp_path / "catalog", spec, bars)
    assert node.trades.equals(full.trades)
    assert node.statistics == full.statistics
    assert node.positions.height == full.positions.height


def test_catalog_of_other_bars_is_refused(bars, spec, tmp_path) -> None:
    write_catalog(bars.head(600), spec, tmp_path / "catalog")
    with pytest.raises(ConfigError, match="are not the given bars"):
        run_from_catalog(tmp_path / "catalog", spec, bars)


def test_write_catalog_replaces_an_older_one(bars, spec, tmp_path) -> None:
    write_catalog(bars.head(600), spec, tmp_path / "catalog")
    catalog = write_catalog(bars.head(300), spec, tmp_path / "catalog")
    assert len(catalog.bars()) == 300
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_node_run_config_is_plain_data(bars, spec, tmp_path) -> None:
    from nautilus_trader.model.data import BarType

    bar_type = BarType.from_str("EUR/USD.SIM-1-HOUR-MID-EXTERNAL")
    config = node_run_config(tmp_path, spec, bar_type, tmp_path / "plan.parquet")
    assert [d.data_type for d in config.data] == [Bar, QuoteTick]
    venue = config.venues[0]
    assert (venue.oms_type, venue.account_type, venue.bar_execution) == ("HEDGING", "MARGIN", False)
    assert venue.fee_model.config == {"per_unit": 0.000025, "percent": 0.0}
    strategy = config.engine.strategies[0]
    assert strategy.config["signals_path"] == str(tmp_path / "plan.parquet")
    assert config.json()  # serialisable: no in-process objects in it


def test_signal_plan_round_trip(bars, spec, tmp_path) -> None:
    from aiopt_lib.execution.nautilus import SignalPlan, build_engine, write_signal_plan
    from aiopt_lib.strategy.spec import compile_signals

    engine, data = build_engine(bars.head(200), spec)
    engine.dispose()
    plan = SignalPlan.from_signals(compile_signals(spec, bars.head(200)), spec.direction)
    write_signal_plan(plan, data, tmp_path / "plan.parquet")
    back, open_ns, close_ns = read_signal_plan(tmp_path / "plan.parquet")
    assert (open_ns == data.open_ns).all() and (close_ns == data.close_ns).all()
    assert (back.want_long == plan.want_long).all()
    assert back.stop.tolist() == pytest.approx(plan.stop.tolist(), nan_ok=True)


ENV = {"IB_GATEWAY_HOST": "10.0.0.5", "IB_GATEWAY_PORT": "4002", "IB_CLIENT_ID": "7"}


def test_paper_trading_config_sandbox() -> None:
    config = paper_trading_node_config(environ=ENV, starting_balance=50_000, leverage=30)
    assert isinstance(config, TradingNodeConfig)
    data = config.data_clients["IB"]
    assert data.config["ibg_host"] == "10.0.0.5" and data.config["ibg_client_id"] == 7
    assert data.config["instrument_provider"]["load_ids"] == ["EUR/USD.IDEALPRO"]
    sandbox = config.exec_clients["SANDBOX"]
    assert sandbox.config["starting_balances"] == ["50000 USD"]
    # the sandbox client config builds without connecting anywhere
    built = sandbox.create()
    assert built.venue == "IDEALPRO" and built.default_leverage == 30
    assert config.strategies == []


def test_paper_trading_config_ib_paper_account() -> None:
    config = paper_trading_node_config(
        execution="ib_paper", environ={**ENV, "IB_ACCOUNT_ID": "DU1234567"}
    )
    assert config.exec_clients["IB"].config["account_id"] == "DU1234567"
    with pytest.raises(ConfigError, match="not a paper account"):
        paper_trading_node_config(execution="ib_paper", environ={"IB_ACCOUNT_ID": "U1234567"})
    with pytest.raises(ConfigError, match="IB_ACCOUNT_ID"):
        paper_trading_node_config(execution="ib_paper", environ={})


def test_paper_trading_gateway_credentials_stay_in_the_environment() -> None:
    with pytest.raises(ConfigError, match="TWS_PASSWORD"):
        paper_trading_node_config(dockerized_gateway=True, environ={"TWS_USERNAME": "me"})
    env = {"TWS_USERNAME": "me", "TWS_PASSWORD": "secret-value"}
    config = paper_trading_node_config(dockerized_gateway=True, environ=env)
    gateway = config.data_clients["IB"].config["dockerized_gateway"]
    assert gateway["trading_mode"] == "paper"
    assert "secret-value" not in config.json().decode()


def test_first_difference_names_the_first_unequal_trade(full) -> None:
    from aiopt_lib.execution.nautilus import first_difference

    trades = full.trades
    assert first_difference(trades, trades) is None
    assert first_difference(trades, trades.head(10)) == 10
    shifted = trades.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.col("exit_price") + 1e-5)
        .otherwise(pl.col("exit_price"))
        .alias("exit_price")
    )
    assert first_difference(trades, shifted) == 7
    cent = trades.with_columns(pl.col("pnl") + 0.01)  # commissions rounded to the cent: equal
    assert first_difference(trades, cent) is None


def test_backtest_node_fills_at_close_like_the_engine(bars, spec, tmp_path) -> None:
    at_close = spec.model_copy(update={"fill": "close"}).revalidated()
    write_catalog(bars, at_close, tmp_path / "catalog")
    node = run_from_catalog(tmp_path / "catalog", at_close, bars)
    engine = run_nautilus_full(bars, at_close)
    assert node.trades.height > 20
    assert node.trades.equals(engine.trades)
    keys = ("entry_ts", "exit_ts", "side", "exit_reason")
    assert node.trades.select(keys).equals(backtest(bars, at_close).trades.select(keys))
