"""Parameter sensitivity: the trials of a real walk-forward search read back from its Optuna
storage (every fold, the picks and the ranking marked), the heatmap's cells recomputed by hand,
and Optuna's plots for every fold."""

from __future__ import annotations

import json

import numpy as np
import optuna
import polars as pl
import pytest

from aiopt_lib.data.sources import load_sample
from aiopt_lib.strategy import search
from aiopt_lib.strategy.ranking import load_ranking
from aiopt_lib.viz import sensitivity
from aiopt_lib.viz.sensitivity import (
    fold_optuna_plots,
    fold_studies,
    sensitivity_heatmap,
    study_trials,
)

CONFIG = search.SearchConfig(
    study_name="sens", n_trials=12, n_folds=2, min_trades=3, seed=7, holdout=0
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[search.SearchResult, object]:
    run_dir = tmp_path_factory.mktemp("sensitivity")
    result = search.run_search(
        load_sample(),
        search.builtin_template("ema_cross"),
        CONFIG,
        run_dir=run_dir,
        progress=False,
    )
    return result, run_dir


def test_study_trials_reads_every_fold_with_picks_and_ranks(searched) -> None:
    result, _ = searched
    trials = study_trials(result.storage, "sens", top=result.top)
    # the same completed trials the search kept, with the same scores
    assert trials.height == result.trials.height == result.n_trials
    assert sorted(trials["fold"].unique()) == [0, 1]
    joined = trials.join(result.trials, on=["fold", "trial"], suffix="_search")
    assert joined.height == trials.height
    for column in ("param_fast", "param_slow", "train_sharpe", "oos_sharpe", "oos_trades"):
        np.testing.assert_array_equal(
            joined[column].to_numpy(), joined[f"{column}_search"].to_numpy()
        )
    # the objective is the training Sharpe; the fold's test window is there too
    np.testing.assert_array_equal(trials["objective"].to_numpy(), trials["train_sharpe"].to_numpy())
    assert {"test_sharpe", "test_total_return", "test_trades"} <= set(trials.columns)
    # one pick per fold, the one the search traded on that fold's test window
    picks = trials.filter("pick").sort("fold")
    assert picks["fold"].to_list() == [0, 1]
    for row, fold in zip(
        picks.iter_rows(named=True), result.folds.iter_rows(named=True), strict=True
    ):
        params = json.loads(fold["params"])
        assert row["param_fast"] == params["fast"] and row["param_slow"] == params["slow"]
        assert row["objective"] == trials.filter(pl.col("fold") == row["fold"])["objective"].max()
    ranked = trials.filter(pl.col("rank").is_not_null()).sort("rank")
    assert [(r["rank"], r["fold"], r["trial"]) for r in ranked.iter_rows(named=True)] == [
        (e.rank, e.fold, e.trial) for e in result.top
    ]


def test_study_trials_takes_the_ranking_file(searched) -> None:
    result, run_dir = searched
    path = search.save_ranking(result, run_dir / "ranking.json")
    from_file = study_trials(f"journal:///{run_dir / 'optuna.log'}", "sens", top=load_ranking(path))
    in_memory = study_trials(result.storage, "sens", top=result.top)
    assert from_file["rank"].to_list() == in_memory["rank"].to_list()
    with pytest.raises(ValueError, match="no study nope-fold"):
        fold_studies(result.storage, "nope")


def test_fold_optuna_plots_cover_every_fold(searched) -> None:
    result, _ = searched
    figures = fold_optuna_plots(result.storage, "sens", objective_names=["sharpe"])
    assert [(fold, plot) for fold, plot, _ in figures] == [
        (k, p) for k in (0, 1) for p in sensitivity.OPTUNA_PLOTS
    ]
    for fold, _, figure in figures:
        assert figure.layout.title.text.startswith(f"fold {fold}: ")
    history = figures[0][2]
    assert history.data[0].name == "sharpe"


def test_fold_optuna_plots_with_two_objectives_and_one_trial() -> None:
    storage = optuna.storages.InMemoryStorage()
    for k, n in ((0, 6), (1, 1)):
        study = optuna.create_study(
            study_name=f"multi-fold{k}", storage=storage, directions=["maximize", "minimize"]
        )
        study.optimize(
            lambda t: (t.suggest_float("a", 0, 1), t.suggest_float("b", 0, 1)), n_trials=n
        )
    figures = fold_optuna_plots(storage, "multi", objective_names=["sharpe", "max_drawdown"])
    # fold 1 has one trial: no importances (fANOVA needs two), the other plots still drawn
    assert [(f, p) for f, p, _ in figures] == [
        (0, "plot_optimization_history"),
        (0, "plot_param_importances"),
        (0, "plot_parallel_coordinate"),
        (1, "plot_optimization_history"),
        (1, "plot_parallel_coordinate"),
    ]
    trials = study_trials(storage, "multi")
    # the pick with two objectives: on the Pareto front, best on the first
    for fold, study in enumerate(fold_studies(storage, "multi")):
        best = max(study.best_trials, key=lambda t: t.values[0]).number
        assert trials.filter((pl.col("fold") == fold) & pl.col("pick"))["trial"].to_list() == [best]


def _layers(spec: dict) -> dict[str, dict]:
    """The heatmap's layers by the kind of rows they draw."""
    return {layer["transform"][0]["filter"].split("'")[1]: layer for layer in spec["spec"]["layer"]}


def _rows(spec: dict, kind: str) -> list[dict]:
    """The chart's inline rows of one kind (``cell``, ``trial``, ``mark``)."""
    data = spec["data"]
    values = data["values"] if "values" in data else spec["datasets"][data["name"]]
    return [row for row in values if row["kind"] == kind]


def test_heatmap_cells_are_the_mean_score_per_cell_per_fold() -> None:
    trials = pl.DataFrame(
        {
            "fold": [0, 0, 0, 1, 1],
            "trial": [0, 1, 2, 0, 1],
            "param_fast": [5.0, 5.0, 6.0, 5.0, 6.0],
            "param_slow": [20.0, 20.0, 21.0, 21.0, 21.0],
            "test_sharpe": [1.0, 3.0, -1.0, 0.5, float("nan")],
        }
    )
    spec = sensitivity_heatmap(trials, "fast", "param_slow", "test_sharpe").to_dict()
    assert spec["facet"]["column"]["field"] == "fold"
    assert "test window (out of sample)" in spec["title"]["text"]
    assert spec["title"]["text"].startswith("Sharpe on")
    cells = {(r["fold"], r["x0"], r["y0"]): r for r in _rows(spec, "cell")}
    # integer parameters spanning few values: one cell per integer, the NaN trial left out
    assert set(cells) == {(0, 4.5, 19.5), (0, 5.5, 20.5), (1, 4.5, 20.5)}
    first = cells[(0, 4.5, 19.5)]
    assert (first["score"], first["best"], first["worst"], first["trials"]) == (2.0, 3.0, 1.0, 2)
    assert (first["x1"], first["y1"]) == (5.5, 20.5)
    # no pick/rank columns: each fold's best trial by the score is circled
    marks = _rows(spec, "mark")
    assert [(m["fold"], m["trial"], m["label"]) for m in marks] == [(0, 1, "best"), (1, 0, "best")]
    assert len(_rows(spec, "trial")) == 4
    colour = _layers(spec)["cell"]["encoding"]["color"]
    assert colour["scale"] == {"scheme": "redyellowgreen", "reverse": False, "domainMid": 0.0}
    assert "best trial by test_sharpe" in spec["title"]["subtitle"]


def test_heatmap_marks_picks_and_ranks_and_reverses_minimised_scores() -> None:
    rng = np.random.default_rng(0)
    n = 60
    trials = pl.DataFrame(
        {
            "fold": np.repeat([0, 1, 2], n // 3),
            "trial": np.tile(np.arange(n // 3), 3),
            "param_fast": rng.uniform(3, 40, n),
            "param_slow": rng.uniform(10, 200, n),
            "oos_max_drawdown": rng.uniform(0.01, 0.2, n),
            "pick": np.tile(np.arange(n // 3) == 4, 3),
            "rank": [1 if i == 7 else (2 if i == 30 else None) for i in range(n)],
        }
    )
    spec = sensitivity_heatmap(trials, "fast", "slow", "oos_max_drawdown", bins=5).to_dict()
    cells = _rows(spec, "cell")
    # equal-width cells over the range, the same in every fold (so facets compare)
    edges = np.linspace(trials["param_fast"].min(), trials["param_fast"].max(), 6)
    assert {r["x0"] for r in cells} <= set(edges[:-1]) and len({r["x0"] for r in cells}) == 5
    assert sum(r["trials"] for r in cells) == n
    labels = sorted((m["fold"], m["trial"], m["label"]) for m in _rows(spec, "mark"))
    assert labels == [(0, 4, "pick"), (0, 7, "#1"), (1, 4, "pick"), (1, 10, "#2"), (2, 4, "pick")]
    colour = _layers(spec)["cell"]["encoding"]["color"]
    # a lower drawdown is better (green), and no zero to centre on
    assert colour["scale"] == {"scheme": "redyellowgreen", "reverse": True}
    assert "all bars after the training window" in spec["title"]["text"]
    assert "pick" in spec["title"]["subtitle"] and "#k" in spec["title"]["subtitle"]


def test_heatmap_refuses_unknown_columns_and_empty_scores() -> None:
    trials = pl.DataFrame({"fold": [0], "param_a": [1.0], "param_b": [2.0], "objective": [None]})
    with pytest.raises(ValueError, match="no column 'c'"):
        sensitivity_heatmap(trials, "a", "c", "objective")
    with pytest.raises(ValueError, match="no score column"):
        sensitivity_heatmap(trials, "a", "b", "test_sharpe")
    with pytest.raises(ValueError, match="no trial has a finite"):
        sensitivity_heatmap(
            trials.with_columns(pl.col("objective").cast(pl.Float64)), "a", "b", "objective"
        )


def test_cells_follow_a_regular_float_grid_and_titles_name_the_window() -> None:
    # a parameter stepped by 0.25 (stop_atr) takes few values: one cell per value, centred on it
    trials = pl.DataFrame(
        {
            "stop_atr": [0.5, 0.75, 1.0, 1.0],
            "take_atr": [2.0, 2.0, 3.0, 2.0],
            "objective": [0.1, 0.2, 0.3, 0.5],
        }
    )
    spec = sensitivity_heatmap(trials, "stop_atr", "take_atr", "objective").to_dict()
    cells = sorted((r["x0"], r["x1"], r["y0"], r["y1"]) for r in _rows(spec, "cell"))
    assert cells == [
        (0.375, 0.625, 1.5, 2.5),
        (0.625, 0.875, 1.5, 2.5),
        (0.875, 1.125, 1.5, 2.5),
        (0.875, 1.125, 2.5, 3.5),
    ]
    assert spec["title"]["text"].startswith("Objective on the study's objective (training")
    assert {r["fold"] for r in _rows(spec, "cell")} == {0}  # no fold column: one facet
    other = sensitivity_heatmap(trials, "stop_atr", "take_atr", "objective", title="mine")
    assert other.to_dict()["title"]["text"] == "mine"
    renamed = trials.rename({"objective": "my_score"})
    text = sensitivity_heatmap(renamed, "stop_atr", "take_atr", "my_score").to_dict()["title"]
    assert "as given" in text["text"]
    with pytest.raises(ValueError, match="bins"):
        sensitivity_heatmap(trials, "stop_atr", "take_atr", "objective", bins=0)
