"""What the notebooks share, as library functions (issue 15, step 4): the run folder
(:class:`~aiopt_lib.data.rundir.RunDir`), the cross-engine parity row and table
(:mod:`aiopt_lib.runs.parity`, with the real engines) and the top-strategies table
(:func:`~aiopt_lib.strategy.search.ranking_table`); and the notebooks calling them instead of
writing the blocks again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import aiopt_lib as ai
from aiopt_lib.core.atomic import write_parquet_atomic
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.core.streams import PREDICTIONS_SCHEMA
from aiopt_lib.data.rundir import RunDir
from aiopt_lib.data.sources import SourceWarning, load_bars, load_sample
from aiopt_lib.execution.nautilus import run_nautilus
from aiopt_lib.models.evaluation import predictions_frame
from aiopt_lib.pine.export import spec_to_pine
from aiopt_lib.pine.offline import run_pine_offline
from aiopt_lib.runs.parity import EngineParity, engine_parity, parity_table
from aiopt_lib.strategy.ranking import load_ranking
from aiopt_lib.strategy.search import (
    SearchConfig,
    builtin_template,
    ranking_table,
    run_search,
    save_ranking,
)
from aiopt_lib.strategy.spec import StrategySpec, backtest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def cleaned() -> pl.DataFrame:
    """The sample as every notebook after 01 sees it: through load_bars (with its flags)."""
    return load_bars("sample")


@pytest.fixture(scope="module")
def bars(sample: pl.DataFrame) -> pl.DataFrame:
    return sample.head(400)


@pytest.fixture(scope="module")
def spec():
    return builtin_template("ema_cross").spec


# ---------------------------------------------------------------------------------------------
# RunDir


def _predictions(bars: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    proba = np.random.default_rng(seed).dirichlet(np.ones(3), size=bars.height)
    return predictions_frame(bars.select("ts"), proba, "compact", "t", symbol="EURUSD")


def test_a_fresh_run_folder_reads_the_source(tmp_path, cleaned):
    run = RunDir(tmp_path / "runs" / "dev", source="sample").mkdir()
    assert run.path.is_dir()
    assert run.bars_origin == "sample"
    assert run.bars().equals(cleaned)
    assert run.predictions() is None
    assert run.run_id == "dev"
    assert run.bars_file == run.path / "bars.parquet"
    assert run.dataset_dir == run.path / "dataset"
    assert run.ranking_file == run.path / "ranking.json"
    assert run.strategies_dir == run.path / "strategies"


def test_the_run_folder_is_a_frozen_value_over_a_path(tmp_path):
    run = RunDir(str(tmp_path))  # a notebook parameter is a string
    assert isinstance(run.path, Path)
    assert run == RunDir(tmp_path) and hash(run) == hash(RunDir(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.source = "elsewhere"  # type: ignore[misc]


def test_the_bars_of_notebook_01_come_before_the_source(tmp_path, cleaned):
    run = RunDir(tmp_path, source="sample", symbol="EURUSD")
    written = cleaned.slice(1000, 300)
    write_parquet_atomic(written, run.bars_file, metadata={"aiopt.symbol": "EURUSD"})
    assert run.bars_origin == run.bars_file
    assert run.bars().equals(written)


def test_bars_read_back_from_the_folder_are_validated(tmp_path, cleaned):
    run = RunDir(tmp_path)
    # a row written twice: the folder's bars go through load_bars as the source's do
    twice = pl.concat([cleaned.head(50), cleaned.slice(49, 1), cleaned.slice(50, 50)])
    write_parquet_atomic(twice, run.bars_file)
    with pytest.warns(SourceWarning, match=r"duplicate=1, dropped=1"):
        bars = run.bars()
    assert bars.select(pl.exclude("flags")).equals(cleaned.head(100).select(pl.exclude("flags")))


def test_the_predictions_stream_written_through_the_run_is_read_back(tmp_path, sample):
    run = RunDir(tmp_path)
    expected = _predictions(sample.head(120))
    with run.streams() as streams:
        assert streams.run_id == run.run_id
        streams.predictions.append(expected)
    got = run.predictions()
    assert got is not None and got.schema == PREDICTIONS_SCHEMA
    assert got.drop("written_at").equals(expected.drop("written_at"))


def test_an_empty_predictions_stream_is_no_predictions(tmp_path):
    run = RunDir(tmp_path)
    with run.streams() as streams:
        streams.predictions.flush()  # created, no rows (a notebook 03 stopped early)
    assert (run.streams_dir / "predictions").is_dir()
    assert run.predictions() is None


# ---------------------------------------------------------------------------------------------
# Cross-engine parity


@pytest.fixture(scope="module")
def ours(bars, spec) -> pl.DataFrame:
    trades = backtest(bars, spec).trades
    assert trades.height >= 6
    return trades


def _moved(trades: pl.DataFrame, index: int, ticks: float) -> pl.DataFrame:
    return trades.with_columns(
        pl.when(pl.int_range(pl.len()) == index)
        .then(pl.col("exit_price") + ticks * 1e-5)
        .otherwise(pl.col("exit_price"))
        .alias("exit_price")
    )


def test_nautilus_trades_the_same_and_the_row_says_so(bars, spec, ours):
    theirs = run_nautilus(bars, spec)
    parity = engine_parity(ours, theirs, engine="nautilus", tick=spec.instrument_tick_size)
    assert parity == EngineParity("nautilus", ours.height, theirs.height, ours.height, None)
    assert parity.identical and parity.status == "equal"
    assert parity.row(rank=1, strategy=spec.name) == {
        "rank": 1,
        "strategy": spec.name,
        "trades ours": ours.height,
        "trades nautilus": ours.height,
        "equal trades": ours.height,
        "first difference": None,
    }


def test_pine_run_offline_trades_the_same(bars, spec, ours):
    theirs = run_pine_offline(spec_to_pine(spec, version=5), bars)
    parity = engine_parity(ours, theirs, engine="pine", tick=spec.instrument_tick_size)
    n = ours.height
    assert parity == EngineParity("pine", n, theirs.height, n, None)
    assert parity.summary == f"{n}/{n} trades equal"
    assert parity.row(summary=True, file="x.pine")["parity"] == parity.summary


def test_pine_keeps_the_last_position_open_and_so_does_the_comparison(bars, spec):
    # no exits and no stops: always in the market after the first entry, open at the end
    held = StrategySpec(
        **{
            **spec.model_dump(),
            "long_exit": None,
            "short_exit": None,
            "stop_loss": None,
            "take_profit": None,
        }
    )
    ours = backtest(bars, held).trades
    assert ours["exit_reason"][-1] == "end"
    theirs = run_pine_offline(spec_to_pine(held, version=6), bars)
    parity = engine_parity(ours, theirs, engine="pine", tick=held.instrument_tick_size)
    assert parity == EngineParity("pine", ours.height - 1, theirs.height, ours.height - 1, None)


def test_the_first_difference_in_each_engines_terms(ours, spec):
    tick = spec.instrument_tick_size
    moved = _moved(ours, 2, 0.6)  # more than half a tick
    nautilus = engine_parity(ours, moved, engine="nautilus", tick=tick)
    pine = engine_parity(ours, moved, engine="pine", tick=tick)
    assert nautilus.first_difference == pine.first_difference == 2
    assert nautilus.status == "first difference at trade 2"
    # Nautilus' comparison is by position and stops there; Pine's pairs by entry bar
    assert nautilus.equal == 2
    assert pine.equal == pine.trades_ours - 1
    assert (
        pine.summary
        == f"{pine.trades_ours - 1}/{pine.trades_ours} trades first difference at trade 2"
    )
    # within half a tick is equal in both
    for engine in ("nautilus", "pine"):
        assert engine_parity(ours, _moved(ours, 2, 0.4), engine=engine, tick=tick).identical


def test_a_missing_trade_is_a_difference(ours, spec):
    fewer = pl.concat([ours.head(3), ours.slice(4)])
    parity = engine_parity(ours, fewer, engine="nautilus", tick=spec.instrument_tick_size)
    assert parity.first_difference == 3 and parity.trades_theirs == ours.height - 1
    shorter = engine_parity(ours, ours.head(4), engine="nautilus", tick=spec.instrument_tick_size)
    assert shorter.first_difference == 4 and shorter.equal == 4


def test_an_unknown_engine_is_refused(ours):
    with pytest.raises(ConfigError, match="engine must be one of nautilus, pine"):
        engine_parity(ours, ours, engine="zipline", tick=1e-5)  # type: ignore[arg-type]


def test_the_parity_table_orders_and_types_its_columns(ours, spec):
    tick = spec.instrument_tick_size
    rows = [
        {"rank": 1, "strategy": "a", "file": None, "parity": "not exported: no"},
        engine_parity(ours, ours, engine="pine", tick=tick).row(
            summary=True, rank=2, strategy="b", file="b.pine"
        ),
        engine_parity(ours, _moved(ours, 1, 2), engine="pine", tick=tick).row(
            summary=True, rank=3, strategy="c", file="c.pine"
        ),
    ]
    table = parity_table(rows)
    assert table.columns == [
        "rank",
        "strategy",
        "file",
        "trades ours",
        "trades pine",
        "equal trades",
        "first difference",
        "parity",
    ]
    assert table.schema["trades ours"] == table.schema["first difference"] == pl.Int64
    assert table["trades ours"].to_list() == [None, ours.height, ours.height]
    assert table["first difference"].to_list() == [None, None, 1]
    assert table.filter(pl.col("first difference").is_not_null())["rank"].to_list() == [3]
    json.dumps(rows)  # the rows are what notebook 05 writes to strategies/parity.json
    assert parity_table([]).shape == (0, 0)


# ---------------------------------------------------------------------------------------------
# The top-strategies table


@pytest.fixture(scope="module")
def searched(sample, tmp_path_factory):
    config = SearchConfig(n_trials=8, n_folds=2, min_trades=1, seed=1)
    run_dir = tmp_path_factory.mktemp("search")
    result = run_search(
        sample.head(1500), builtin_template("ema_cross"), config, run_dir=run_dir, progress=False
    )
    return result, save_ranking(result, run_dir / "ranking.json")


def test_the_search_and_its_ranking_file_give_one_table(searched):
    result, path = searched
    table = ranking_table(result)
    assert table.height == len(result.top) >= 1
    assert table.equals(ranking_table(load_ranking(path)))
    assert table.equals(ranking_table(result.top))
    assert table.columns == [
        "rank",
        "strategy",
        "params",
        "oos_from",
        "oos_sharpe",
        "oos_return",
        "oos_max_dd",
        "oos_trades",
        "is_sharpe",
        "DSR",
        "near_duplicates",
    ]
    assert table.schema["oos_from"] == pl.Datetime("us", "UTC")
    for row, entry in zip(table.iter_rows(named=True), result.top, strict=True):
        assert row["rank"] == entry.rank
        assert row["strategy"] == entry.spec.name
        assert row["params"] == str(entry.spec.params)
        assert row["oos_from"] == entry.oos_start
        assert row["oos_sharpe"] == pytest.approx(entry.out_of_sample["sharpe"], nan_ok=True)
        assert row["oos_trades"] == entry.out_of_sample["trades"]
        assert row["is_sharpe"] == pytest.approx(entry.in_sample["sharpe"], nan_ok=True)
        assert row["DSR"] == pytest.approx(entry.deflated_sharpe)


def test_an_undefined_figure_is_null_in_the_table(searched):
    result, _ = searched
    entry = result.top[0]
    undefined = dataclasses.replace(
        entry, out_of_sample={**entry.out_of_sample, "sharpe": math.nan}, deflated_sharpe=math.nan
    )
    row = ranking_table([undefined]).row(0, named=True)
    assert row["oos_sharpe"] is None and row["DSR"] is None
    assert isinstance(row["oos_from"], dt.datetime)
    assert ranking_table([]).height == 0


# ---------------------------------------------------------------------------------------------
# The notebooks call these instead of repeating them


def _code(name: str) -> str:
    """The code cells of a notebook but its parameters cell (whose comments name the files)."""
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    return "\n".join(
        "".join(c["source"])
        for c in cells
        if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", [])
    )


@pytest.mark.parametrize(
    "name", ["02_chart_rendering", "03_multimodal_finetune", "04_optuna_search", "05_backtest"]
)
def test_the_notebooks_load_the_run_through_run_dir(name):
    code = _code(name)
    assert "ai.RunDir(run_dir, source=source" in code
    for repeated in ("bars.parquet", "read_stream(", '"streams"', "Path(run_dir)"):
        assert repeated not in code, f"{name} loads the run by hand: {repeated}"


def test_notebooks_04_and_05_show_one_ranking_table_and_05_one_parity_row():
    for name in ("04_optuna_search", "05_backtest"):
        assert "search.ranking_table(" in _code(name)
        assert '"oos_sharpe":' not in _code(name)
    code = _code("05_backtest")
    assert code.count("ai.engine_parity(") == 4
    for repeated in ("first_difference(", "compare_trades(", '"equal trades":'):
        assert repeated not in code
    assert hasattr(ai, "RunDir") and hasattr(ai, "engine_parity") and hasattr(ai, "ranking_table")
