"""The walk-forward Optuna search, its storage, workers and ranking (aiopt_lib/strategy/search.py)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os

import numpy as np
import optuna
import polars as pl
import pytest
from pydantic import ValidationError

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.runs.cli import main
from aiopt_lib.strategy.backtest import backtest_metrics
from aiopt_lib.strategy.ranking import load_ranking, verdict
from aiopt_lib.strategy.search import (
    ParamRange,
    SearchConfig,
    SearchTemplate,
    TrialEvaluator,
    builtin_template,
    builtin_template_names,
    load_template,
    load_trials,
    open_storage,
    ranking_document,
    run_search,
    save_ranking,
    walk_forward_folds,
    window_metrics,
)
from aiopt_lib.strategy.spec import backtest, check_spec_no_lookahead


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def template() -> SearchTemplate:
    return builtin_template("ema_cross")


# the mechanics on all bars (the lockbox has its own tests below)
SMALL = SearchConfig(n_trials=14, n_folds=2, min_trades=3, seed=3, holdout=0)


@pytest.fixture(scope="module")
def searched(bars, template, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("search")
    return run_search(bars, template, SMALL, run_dir=run_dir, progress=False), run_dir


def test_builtin_templates_load_and_name_their_space():
    names = builtin_template_names()
    assert {"ema_cross", "bollinger_reversion", "cci_reversion", "keltner_supertrend"} <= set(names)
    for name in names:
        template = builtin_template(name)
        assert set(template.space) <= set(template.spec.params)
    with pytest.raises(ConfigError, match="known"):
        builtin_template("nope")


def test_template_errors_name_the_problem(template, tmp_path):
    data = {
        "spec": template.spec.model_dump(mode="json"),
        "space": {"fastest": {"low": 1, "high": 3}},
    }
    with pytest.raises(ConfigError, match="fastest"):
        SearchTemplate.from_mapping(data, source="t.yaml")
    data = {
        "spec": template.spec.model_dump(mode="json"),
        "space": {},
        "constraints": ["close > fast"],
    }
    with pytest.raises(ConfigError, match="only use params"):
        SearchTemplate.from_mapping(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_template(bad)
    with pytest.raises(ValueError, match="low <= high"):
        ParamRange(low=5, high=1)


def test_constraints_are_evaluated(template):
    assert template.feasible({"fast": 5, "slow": 20})
    assert not template.feasible({"fast": 20, "slow": 20})


def test_param_ranges_suggest_the_right_types():
    study = optuna.create_study()
    trial = study.ask()
    assert isinstance(ParamRange(low=3, high=9).suggest(trial, "a"), int)
    value = ParamRange(low=0.5, high=4.0, step=0.25).suggest(trial, "b")
    assert isinstance(value, float)
    assert (value / 0.25).is_integer()
    assert ParamRange(choices=[1, 2]).suggest(trial, "c") in (1, 2)


@pytest.mark.parametrize("mode", ["rolling", "anchored"])
def test_walk_forward_folds_tile_the_end_of_the_data(bars, mode):
    config = SearchConfig(n_folds=3, walk_forward=mode)
    folds = walk_forward_folds(bars, config)
    assert len(folds) == 3
    assert folds[-1].test_stop == bars.height
    for before, after in itertools.pairwise(folds):
        assert after.test_start == before.test_stop
    for fold in folds:
        assert fold.train_stop == fold.test_start  # training ends where the test begins
        assert fold.train_start < fold.train_stop
    if mode == "anchored":
        assert all(f.train_start == 0 for f in folds)
    else:
        sizes = {f.train_stop - f.train_start for f in folds}
        assert len(sizes) == 1  # a rolling window keeps its length


def test_window_metrics_equal_the_metrics_of_the_slice(bars, template):
    evaluator = TrialEvaluator(bars, template)
    result = evaluator.backtest(template.spec.params)
    start, stop = 1000, 3000
    metrics = window_metrics(result, start, stop, evaluator.timeframe)
    equity = result.equity.slice(start, stop - start)
    first, last = equity.get_column("ts")[0], equity.get_column("ts")[-1]
    trades = result.trades.filter(pl.col("exit_ts").is_between(first, last))
    base = result.equity.get_column("equity")[start - 1]
    expected = backtest_metrics(equity, trades, base, evaluator.timeframe)
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, nan_ok=True), key
    # the whole history with the initial capital as base equals the backtest's own metrics
    whole = window_metrics(result, 0, bars.height, evaluator.timeframe)
    assert whole["trades"] == result.metrics["trades"]


def test_search_writes_studies_and_scores_out_of_sample(searched, bars, template):
    result, run_dir = searched
    assert (run_dir / "optuna.log").exists()  # the default: Optuna's journal file
    assert result.storage == f"journal://{run_dir.resolve() / 'optuna.log'}"
    folds = walk_forward_folds(bars, SMALL)
    storage = result.storage
    for fold in folds:
        study = optuna.load_study(
            study_name=f"aiopt-fold{fold.index}", storage=open_storage(storage)
        )
        states = [t.state for t in study.trials]
        counted = [
            s
            for s in states
            if s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        ]
        assert len(counted) == SMALL.n_trials
        assert optuna.trial.TrialState.FAIL not in states
    evaluator = TrialEvaluator(bars, template)
    records = load_trials(storage, SMALL, len(folds))
    assert len(records) == result.n_trials > 0
    record = records[0]
    fold = folds[record.fold]
    full = evaluator.backtest(record.params)
    # a trial's objective is its training-window score; "oos" is everything after its training
    train = window_metrics(full, fold.train_start, fold.train_stop, evaluator.timeframe)
    oos = window_metrics(full, fold.test_start, bars.height, evaluator.timeframe)
    assert record.values[0] == pytest.approx(train["sharpe"])
    assert record.oos["sharpe"] == pytest.approx(oos["sharpe"])
    assert record.train["trades"] >= SMALL.min_trades


def test_walk_forward_equity_stitches_each_folds_pick(searched, bars, template):
    result, _ = searched
    folds = walk_forward_folds(bars, SMALL)
    equity = result.walk_forward_equity
    assert equity.height == sum(f.test_stop - f.test_start for f in folds)
    assert equity.get_column("ts").is_sorted()
    close = bars.get_column("close").to_numpy()
    growth = 1.0
    for fold, row in zip(folds, result.folds.iter_rows(named=True), strict=True):
        part = equity.filter(pl.col("fold") == fold.index)
        # the pick was the best on its training window among the fold's trials
        picked = json.loads(row["params"])
        ended = part.get_column("equity")[-1] / growth
        assert ended - 1 == pytest.approx(row["test_total_return"], rel=1e-9, abs=1e-12)
        growth = part.get_column("equity")[-1]
        hold = part.get_column("buy_and_hold").to_numpy()
        assert hold[-1] / (hold[0] / (close[fold.test_start] / close[fold.test_start - 1])) == (
            pytest.approx(close[fold.test_stop - 1] / close[fold.test_start - 1])
        )
        assert set(picked) == set(template.space)
    assert result.walk_forward_metrics["total_return"] == pytest.approx(growth - 1)


def test_ranking_is_distinct_sorted_and_deflated(searched):
    result, _ = searched
    top = result.top
    assert 1 <= len(top) <= 5
    scores = [r.out_of_sample["sharpe"] for r in top]
    assert scores == sorted(scores, reverse=True)
    assert len({json.dumps(r.spec.params, sort_keys=True) for r in top}) == len(top)
    for entry in top:
        assert 0.0 <= entry.deflated_sharpe <= entry.probabilistic_sharpe <= 1.0
    assert result.pbo is not None
    assert 0.0 <= result.pbo.pbo <= 1.0
    assert 1 <= result.ranking.n_effective <= result.ranking.n_candidates


def test_ranking_file_round_trips(searched, tmp_path):
    result, _ = searched
    path = save_ranking(result, tmp_path / "ranking.json")
    document = json.loads(path.read_text())
    assert document["n_trials"] == result.n_trials
    assert document["pbo"]["pbo"] == pytest.approx(result.pbo.pbo)
    entries = load_ranking(path)
    assert [spec for spec, _ in entries] == [r.spec for r in result.top]
    assert entries[0][1]["rank"] == 1
    assert list(tmp_path.iterdir()) == [path]  # atomic: no temporary file left


def test_ranked_specs_do_not_look_ahead(searched, bars):
    result, _ = searched
    check_spec_no_lookahead(result.top[0].spec, bars.head(1500), n_cuts=4)


def test_rerunning_continues_the_same_studies(bars, template, tmp_path):
    config = SearchConfig(n_trials=6, n_folds=2, min_trades=1, seed=1, pruner="none")
    first = run_search(bars, template, config, run_dir=tmp_path, progress=False)
    again = run_search(bars, template, config, run_dir=tmp_path, progress=False)
    assert again.trials.equals(first.trials)  # nothing new: each study has its trials
    more = run_search(
        bars, template, config.model_copy(update={"n_trials": 9}), run_dir=tmp_path, progress=False
    )
    storage = more.storage
    for fold in range(2):
        study = optuna.load_study(study_name=f"aiopt-fold{fold}", storage=open_storage(storage))
        assert len(study.trials) == 9


def test_same_seed_same_trials(bars, template, tmp_path):
    config = SearchConfig(n_trials=8, n_folds=2, min_trades=1, seed=11)
    a = run_search(bars, template, config, run_dir=tmp_path / "a", progress=False)
    b = run_search(bars, template, config, run_dir=tmp_path / "b", progress=False)
    assert a.trials.drop("pid").equals(b.trials.drop("pid"))


def test_constraint_violations_are_pruned_not_scored(bars, template, tmp_path):
    config = SearchConfig(n_trials=25, n_folds=1, min_trades=1, seed=0, pruner="none")
    result = run_search(bars, template, config, run_dir=tmp_path, progress=False)
    study = optuna.load_study(study_name="aiopt-fold0", storage=open_storage(result.storage))
    for trial in study.trials:
        feasible = trial.params["fast"] < trial.params["slow"]
        if not feasible:
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert trial.user_attrs["pruned_because"] == "constraint"
        reason = trial.user_attrs.get("pruned_because")
        assert reason in (None, "constraint", "min_trades", "undefined score", "pruner")


def test_multi_objective_search_picks_from_the_pareto_front(bars, template, tmp_path):
    config = SearchConfig(
        n_trials=12, n_folds=1, min_trades=1, objective=["total_return", "max_drawdown"]
    )
    result = run_search(bars, template, config, run_dir=tmp_path, progress=False)
    study = optuna.load_study(study_name="aiopt-fold0", storage=open_storage(result.storage))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = {json.dumps(t.params, sort_keys=True) for t in study.best_trials}
    picked = json.loads(result.folds.get_column("params")[0])
    assert json.dumps(picked, sort_keys=True) in front


def test_a_fold_without_completed_trials_is_an_error(bars, template, tmp_path):
    config = SearchConfig(n_trials=3, n_folds=1, min_trades=100_000)
    with pytest.raises(ConfigError, match="min_trades"):
        run_search(bars, template, config, run_dir=tmp_path, progress=False)


def test_cli_search_with_two_worker_processes_on_one_storage(tmp_path, capsys):
    """`aiopt search --storage URL --workers 2`: two processes fill the same studies."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    code = main(
        [
            "search", "--out", str(tmp_path / "out"), "--storage", storage, "--workers", "2",
            "--trials", "16", "--folds", "2", "--min-trades", "1", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "ranking:" in printed
    assert (tmp_path / "out" / "ranking.json").exists()
    assert not (tmp_path / "out" / "optuna.log").exists()  # the given storage was used
    pids = set()
    for fold in range(2):
        study = optuna.load_study(study_name=f"aiopt-fold{fold}", storage=storage)
        counted = [
            t for t in study.trials
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        ]  # fmt: skip
        # the workers together stop at exactly n_trials (a trial that loses the race for the last
        # slot ends FAIL, marked surplus, and is not counted)
        assert len(counted) == 16
        surplus = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
        assert all(t.user_attrs.get("surplus") for t in surplus)
        pids |= {t.user_attrs["scores"]["pid"] for t in study.trials if "scores" in t.user_attrs}
    assert len(pids) == 2
    assert os.getpid() not in pids
    trials = pl.read_parquet(tmp_path / "out" / "trials.parquet")
    assert set(trials.get_column("pid").unique()) == pids


def test_cli_search_rejects_bad_settings(tmp_path, capsys):
    code = main(["search", "--out", str(tmp_path), "--objective", "luck"])
    assert code == 2
    assert "luck" in capsys.readouterr().err


def test_search_result_numbers_are_finite_where_defined(searched):
    result, _ = searched
    for key in ("total_return", "max_drawdown"):
        assert math.isfinite(result.walk_forward_metrics[key])
        assert math.isfinite(result.buy_and_hold_metrics[key])
    assert np.all(result.walk_forward_equity.get_column("equity").to_numpy() > 0)


def test_the_median_pruner_stops_trials_on_partial_training_scores(bars, template, tmp_path):
    config = SearchConfig(n_trials=40, n_folds=1, min_trades=1, seed=0, pruner="median")
    result = run_search(bars, template, config, run_dir=tmp_path, progress=False)
    study = optuna.load_study(study_name="aiopt-fold0", storage=open_storage(result.storage))
    pruned = [t for t in study.trials if t.user_attrs.get("pruned_because") == "pruner"]
    assert pruned, "the median rule pruned nothing in 40 trials"
    # Optuna's rule: the trial's best score so far is below the median of the completed
    # earlier trials' scores at the same step
    for trial in pruned:
        step = max(trial.intermediate_values)
        best = max(trial.intermediate_values.values())
        earlier = [
            t.intermediate_values[step]
            for t in study.trials
            if t.number < trial.number
            and t.state == optuna.trial.TrialState.COMPLETE
            and step in t.intermediate_values
        ]
        assert best < np.median(earlier)
    # scores are reported at the checkpoints (a third and two thirds into the window) only
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    assert all(set(t.intermediate_values) <= {1, 2} for t in complete)
    assert any(len(t.intermediate_values) == 2 for t in complete)


def test_progress_bar_counts_the_trials(bars, template, tmp_path, capsys):
    config = SearchConfig(n_trials=4, n_folds=2, min_trades=1)
    run_search(bars, template, config, run_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "search aiopt" in err
    assert "8/8" in err


# ---------------------------------------------------------------------------------------------
# The lockbox


def _other_future(bars: pl.DataFrame, start: int) -> pl.DataFrame:
    """``bars`` with every bar from ``start`` on replaced by a mirrored path (a falling market
    where the real one rose): the same history, another future."""
    head, tail = bars.head(start), bars.slice(start)
    pivot = float(head["close"][-1])
    mirrored = tail.with_columns(
        (2 * pivot - pl.col("open")).alias("open"),
        (2 * pivot - pl.col("low")).alias("high"),
        (2 * pivot - pl.col("high")).alias("low"),
        (2 * pivot - pl.col("close")).alias("close"),
    )
    return pl.concat([head, mirrored])


def test_the_lockbox_never_reaches_an_objective_or_the_ranker(bars, template, tmp_path):
    """Two searches on the same history and different futures: every trial, fold pick, ranked
    strategy and statistic is identical; only the lockbox verdict differs."""
    data = bars.head(2500)
    config = SearchConfig(n_trials=8, n_folds=2, min_trades=3, seed=5, holdout=0.3)
    start = config.lockbox_start(data.height)
    assert start == 1750
    other = _other_future(data, start)
    assert not other.equals(data) and other.head(start).equals(data.head(start))
    first = run_search(data, template, config, run_dir=tmp_path / "a", progress=False)
    second = run_search(other, template, config, run_dir=tmp_path / "b", progress=False)
    assert first.trials.equals(second.trials)
    assert first.folds.equals(second.folds)
    assert first.walk_forward_equity.equals(second.walk_forward_equity)
    assert [r.spec for r in first.top] == [r.spec for r in second.top]
    assert [r.out_of_sample for r in first.top] == [r.out_of_sample for r in second.top]
    assert [r.deflated_sharpe for r in first.top] == [r.deflated_sharpe for r in second.top]
    assert first.pbo.pbo == second.pbo.pbo
    np.testing.assert_array_equal(first.pbo.logits, second.pbo.logits)
    assert first.walk_forward_equity["ts"].max() < data["ts"][start]
    # the lockbox is the held-out bars, traded once by each choice
    box = first.lockbox
    assert box is not None and box.n_bars == 750 and box.start == data["ts"][start]
    labels = box.strategies["label"].to_list()
    assert labels == [f"rank {r.rank}" for r in first.top] + ["walk-forward pick"]
    assert box.equity.columns == ["ts", "buy_and_hold", *labels]
    assert box.buy_and_hold["total_return"] != second.lockbox.buy_and_hold["total_return"]
    assert box.strategies["total_return"].to_list() != (
        second.lockbox.strategies["total_return"].to_list()
    )
    # the lockbox figures are those of a backtest over the whole history, scored on the lockbox
    spec = first.top[0].spec
    expected = window_metrics(backtest(data, spec), start, data.height, dt.timedelta(hours=1))
    assert box.strategies.row(0, named=True)["total_return"] == pytest.approx(
        expected["total_return"], rel=1e-12
    )
    # ranking.json carries it, and the verdict speaks of it
    document = ranking_document(first)
    assert document["lockbox"]["n_bars"] == 750
    assert verdict(document)["lockbox"].startswith(f"On the lockbox ({str(data['ts'][start])[:10]}")


def test_holdout_settings_are_checked(bars):
    assert SearchConfig(holdout=0).lockbox_start(1000) == 1000
    assert SearchConfig(holdout=100).lockbox_start(1000) == 900
    assert SearchConfig().lockbox_start(1000) == 800
    with pytest.raises(ConfigError, match="lockbox of 10 bar"):
        SearchConfig(holdout=10).lockbox_start(1000)
    with pytest.raises(ConfigError, match="takes all"):
        SearchConfig(holdout=1000).lockbox_start(1000)
    with pytest.raises(ValidationError, match="share in"):
        SearchConfig(holdout=0.95)
    with pytest.raises(ValidationError, match="share in"):
        SearchConfig(holdout=-1)


def test_the_verdict_is_computed_from_the_figures():
    document = {
        "walk_forward": {
            "start": "2017-04-01T00:00:00+00:00",
            "end": "2017-10-19T00:00:00+00:00",
            "metrics": {"total_return": -0.0316, "sharpe": -1.42},
            "buy_and_hold": {"total_return": 0.1239, "sharpe": 2.22},
        },
        "pbo": {"pbo": 0.67},
        "n_effective_trials": 31.4,
        "top": [{"rank": 1, "deflated_sharpe": 0.12}],
        "lockbox": {
            "start": "2017-10-20T00:00:00+00:00",
            "end": "2017-12-29T21:00:00+00:00",
            "n_bars": 1245,
            "buy_and_hold": {"total_return": 0.01},
            "strategies": [
                {"label": "rank 1", "params": {}, "metrics": {"total_return": 0.02}},
                {"label": "rank 2", "params": {}, "metrics": {"total_return": -0.01}},
                {"label": "walk-forward pick", "params": {}, "metrics": {"total_return": 0.005}},
            ],
        },
    }
    answers = verdict(document)
    assert answers["walk_forward"] == (
        "No: out of sample (2017-04-01 to 2017-10-19) the walk-forward picks returned -3.2% "
        "(Sharpe -1.42) against buy-and-hold's +12.4% (Sharpe 2.22)."
    )
    assert answers["lockbox"] == (
        "On the lockbox (2017-10-20 to 2017-12-29, 1,245 bars no study or ranking saw) 1 of 2 "
        "ranked strategies beat buy-and-hold's +1.0%; the best returned +2.0%, the walk-forward "
        "pick +0.5%."
    )
    assert answers["pbo"].startswith("PBO 0.67: in 67% of the combinatorial splits")
    assert answers["pbo"].endswith("the ranking is mostly luck.")
    assert (
        "DSR 0.12 for rank 1" in answers["dsr"] and "31 effectively independent" in answers["dsr"]
    )
    assert "below the usual 0.95 bar" in answers["dsr"]
    document["walk_forward"]["metrics"]["total_return"] = 0.2
    document["pbo"]["pbo"] = 0.1
    answers = verdict(document)
    assert answers["walk_forward"].startswith("Yes: ")
    assert answers["pbo"].endswith("mostly holds out of sample.")
    assert verdict({}) == {}
