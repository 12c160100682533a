"""Parameter sensitivity of a walk-forward search: does the chosen trial sit on a plateau or a spike?

A parameter set whose neighbours score about as well is a property of the market; one that scores
well alone is a property of the sample, and will not repeat. The search
(:mod:`aiopt_lib.strategy.search`) keeps one Optuna study per walk-forward fold
(``<study>-fold<k>``) in its storage, each trial with its parameters, its objective value and, as
the user attribute ``scores``, its metrics on three windows:

- ``train_*``: the fold's training window (in sample: what the study optimised, the objective),
- ``test_*``: the fold's own test window (out of sample, the walk-forward score),
- ``oos_*``: every bar after the training window up to the lockbox (what the ranking sorts on).

:func:`study_trials` reads them into one frame (one row per completed trial; the fold's pick and
the ranked strategies marked); :func:`sensitivity_heatmap` draws a score over two parameters, one
facet per fold, with the picks and the ranked trials circled; :func:`fold_optuna_plots` gives
Optuna's own plots (history, importances, parallel coordinates) for every fold, not the last
only. The search's ``trials.parquet`` (``SearchResult.trials``: ``train_*`` and ``oos_*`` only)
can be drawn too.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import altair as alt
import numpy as np
import optuna
import polars as pl

from aiopt_lib.strategy.search import MINIMISED_METRICS, open_storage
from aiopt_lib.viz.charts import inline_data

__all__ = [
    "OPTUNA_PLOTS",
    "SCORE_WINDOWS",
    "fold_optuna_plots",
    "fold_studies",
    "sensitivity_heatmap",
    "study_trials",
]

SCORE_WINDOWS: dict[str, str] = {
    "objective": "the study's objective (training window, in sample)",
    "train": "the training window (in sample, what the study optimised)",
    "test": "the fold's test window (out of sample)",
    "oos": "all bars after the training window (out of sample; what the ranking sorts on)",
}
"""What each score prefix of :func:`study_trials`' columns measures, for chart titles."""

OPTUNA_PLOTS: tuple[str, ...] = (
    "plot_optimization_history",
    "plot_param_importances",
    "plot_parallel_coordinate",
)
"""The ``optuna.visualization`` functions :func:`fold_optuna_plots` draws by default."""


def fold_studies(storage: str | optuna.storages.BaseStorage, study_name: str) -> list[optuna.Study]:
    """The search's per-fold studies ``<study_name>-fold<k>`` in ``storage`` (an Optuna storage
    URL such as ``SearchResult.storage`` or ``journal:///<run_dir>/optuna.log``), in fold order.
    Raises ``ValueError`` naming the studies there when there is none."""
    opened = open_storage(storage) if isinstance(storage, str) else storage
    names = optuna.get_all_study_names(storage=opened)
    pattern = re.compile(rf"{re.escape(study_name)}-fold(\d+)")
    folds = sorted(int(m.group(1)) for name in names if (m := pattern.fullmatch(name)))
    if not folds:
        raise ValueError(
            f"no study {study_name}-fold<k> in the storage; it holds {sorted(names) or 'none'}"
        )
    return [optuna.load_study(study_name=f"{study_name}-fold{k}", storage=opened) for k in folds]


def _best(study: optuna.Study) -> int | None:
    """The trial number the search picks in a fold (``search._best_of_fold``): the best
    objective; with several objectives the Pareto-optimal trial best on the first one."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    if len(study.directions) == 1:
        return study.best_trial.number
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(study.best_trials, key=lambda t: sign * t.values[0]).number


def _ranked_keys(top: Iterable[Any]) -> dict[tuple[int, int], int]:
    """``{(fold, trial): rank}`` of ranked strategies given as ``SearchResult.top`` entries, as
    :func:`aiopt_lib.strategy.ranking.load_ranking`'s ``(spec, fields)`` pairs or as mappings."""
    keys = {}
    for entry in top:
        if isinstance(entry, tuple):
            entry = entry[1]
        if isinstance(entry, Mapping):
            rank, fold, trial = entry["rank"], entry["fold"], entry["trial"]
        else:
            rank, fold, trial = entry.rank, entry.fold, entry.trial
        keys[(int(fold), int(trial))] = int(rank)
    return keys


def study_trials(
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    *,
    top: Iterable[Any] = (),
) -> pl.DataFrame:
    """One row per completed trial of every fold study (:func:`fold_studies`): ``fold``,
    ``trial``, ``param_<name>`` (float), ``objective`` (the first objective value), then
    ``train_<metric>``, ``test_<metric>`` and ``oos_<metric>`` for every metric the search
    recorded (:data:`SCORE_WINDOWS`; NaN where undefined), ``pick`` (the trial the search picked
    in its fold, on the training objective) and ``rank`` (the trial's place among ``top``, null
    for the others).

    ``top``: the ranked strategies (``SearchResult.top`` in notebook 04, or the entries of
    :func:`aiopt_lib.strategy.ranking.load_ranking` in notebook 05), matched on fold and trial.
    Pruned and failed trials are left out, as the search leaves them out."""
    ranked = _ranked_keys(top)
    rows = []
    for study in fold_studies(storage, study_name):
        index = int(study.study_name.rsplit("-fold", 1)[1])
        picked = _best(study)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            scores = trial.user_attrs.get("scores", {})
            row: dict[str, Any] = {
                "fold": index,
                "trial": trial.number,
                **{f"param_{k}": float(v) for k, v in trial.params.items()},
                "objective": float(trial.values[0]),
            }
            for window in ("train", "test", "oos"):
                for metric, value in (scores.get(window) or {}).items():
                    row[f"{window}_{metric}"] = math.nan if value is None else float(value)
            row["pick"] = trial.number == picked
            row["rank"] = ranked.get((index, trial.number))
            rows.append(row)
    if not rows:
        raise ValueError(f"the studies of {study_name!r} have no completed trial")
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.col("fold", "trial").cast(pl.Int64), pl.col("rank").cast(pl.Int64)
    )


def _column(trials: pl.DataFrame, name: str) -> str:
    """``name`` or ``param_<name>``, whichever ``trials`` has."""
    for candidate in (name, f"param_{name}"):
        if candidate in trials.columns:
            return candidate
    raise ValueError(
        f"trials have no column {name!r} (nor param_{name}); they have {trials.columns}"
    )


def _edges(values: pl.Series, bins: int) -> np.ndarray:
    """Cell edges along one parameter: one cell per integer when the parameter is integral and
    spans at most ``bins`` integers, one per value when it takes at most ``bins`` values on a
    regular grid, else ``bins`` equal cells between its extremes."""
    v = np.unique(values.drop_nulls().to_numpy().astype(np.float64))
    low, high = float(v[0]), float(v[-1])
    if np.all(v == np.round(v)) and high - low + 1 <= bins:
        return np.arange(low - 0.5, high + 1.0)
    steps = np.diff(v)
    if len(v) <= bins and (len(v) == 1 or np.allclose(steps, steps.min())):
        step = float(steps.min()) if len(v) > 1 else 1.0
        return np.concatenate([v - step / 2, [high + step / 2]])
    return np.linspace(low, high, bins + 1)


def _cells(values: pl.Series, edges: np.ndarray) -> pl.Series:
    """The cell index of each value between ``edges`` (cells closed on the left, the last one on
    both sides)."""
    index = np.searchsorted(edges, values.to_numpy().astype(np.float64), side="right") - 1
    return pl.Series(np.clip(index, 0, len(edges) - 2), dtype=pl.Int64)


def _describe(score: str) -> tuple[str, str]:
    """``(metric, where)`` of a score column for the title: ``test_sharpe`` → Sharpe on the
    fold's test window (out of sample)."""
    prefix, _, metric = score.partition("_")
    if score == "objective":
        return "objective", SCORE_WINDOWS["objective"]
    if prefix in SCORE_WINDOWS and metric:
        return metric.replace("_", " "), SCORE_WINDOWS[prefix]
    return score.replace("_", " "), "as given"


def sensitivity_heatmap(
    trials: pl.DataFrame,
    x: str,
    y: str,
    score: str,
    fold: str = "fold",
    *,
    bins: int = 12,
    higher_is_better: bool | None = None,
    width: int = 240,
    height: int = 220,
    title: str | None = None,
) -> alt.FacetChart:
    """A heatmap of ``score`` over the parameters ``x`` and ``y`` (``"fast"`` or
    ``"param_fast"``), one facet per ``fold``: each cell the mean score of the fold's trials in it
    (all other parameters mixed, so a cell reads "how good is this region", not one trial),
    the cells aligned across folds (:func:`_edges`); each trial a small dot (where the sampler
    looked), the fold's pick (``pick`` column) circled in black and ranked trials (``rank``)
    labelled ``#k``. Without those columns (e.g. ``SearchResult.trials``) the fold's best trial
    by ``score`` is circled instead.

    A circle in a cell as good as its neighbours is a plateau: the choice is robust to its
    parameters. A lone bright cell among poor ones is a spike: luck the next period is unlikely
    to repeat. Colours diverge at 0 when the score changes sign (red worse, green better;
    ``higher_is_better`` default: all but ``max_drawdown``); the title says which window the
    score was measured on (:data:`SCORE_WINDOWS`). Trials with a non-finite score are left out.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, not {bins}")
    x_col, y_col = _column(trials, x), _column(trials, y)
    if score not in trials.columns:
        raise ValueError(f"trials have no score column {score!r}; they have {trials.columns}")
    if fold not in trials.columns:
        trials = trials.with_columns(pl.lit(0).alias(fold))
    metric, where = _describe(score)
    if higher_is_better is None:
        higher_is_better = score.partition("_")[2] not in MINIMISED_METRICS
    data = trials.filter(
        pl.col(score).cast(pl.Float64).is_finite()
        & pl.col(x_col).is_not_null()
        & pl.col(y_col).is_not_null()
    )
    if data.height == 0:
        raise ValueError(f"no trial has a finite {score!r}")
    x_edges, y_edges = _edges(data[x_col], bins), _edges(data[y_col], bins)
    data = data.with_columns(
        _cells(data[x_col], x_edges).alias("_xb"), _cells(data[y_col], y_edges).alias("_yb")
    )
    cells = (
        data.group_by(fold, "_xb", "_yb")
        .agg(
            pl.col(score).mean().alias("score"),
            pl.col(score).max().alias("best"),
            pl.col(score).min().alias("worst"),
            pl.len().alias("trials"),
        )
        .sort(fold, "_xb", "_yb")
    )
    xb, yb = cells["_xb"].to_numpy(), cells["_yb"].to_numpy()
    cells = cells.drop("_xb", "_yb").with_columns(
        pl.Series("x0", x_edges[xb]),
        pl.Series("x1", x_edges[xb + 1]),
        pl.Series("y0", y_edges[yb]),
        pl.Series("y1", y_edges[yb + 1]),
        pl.lit("cell").alias("kind"),
    )
    sign = 1.0 if higher_is_better else -1.0
    if "pick" in data.columns or "rank" in data.columns:
        chosen = pl.lit(False)
        if "pick" in data.columns:
            chosen = chosen | pl.col("pick").fill_null(False)
        if "rank" in data.columns:
            chosen = chosen | pl.col("rank").is_not_null()
        marked = data.filter(chosen)
    else:
        marked = data.filter(
            (sign * pl.col(score)) == (sign * pl.col(score)).max().over(fold)
        ).unique(fold, keep="first", maintain_order=True)
    parts = []
    if "rank" in marked.columns:
        parts.append(pl.lit("#") + pl.col("rank").cast(pl.String))
    if "pick" in marked.columns:
        parts.append(pl.when(pl.col("pick").fill_null(False)).then(pl.lit("pick")))
    label = pl.concat_str(parts, separator=" · ", ignore_nulls=True) if parts else pl.lit("best")
    trial_id = pl.col("trial") if "trial" in data.columns else pl.lit(None, dtype=pl.Int64)
    points = data.select(
        pl.col(fold),
        pl.col(x_col).cast(pl.Float64).alias("x"),
        pl.col(y_col).cast(pl.Float64).alias("y"),
        pl.col(score).cast(pl.Float64).alias("score"),
        trial_id.alias("trial"),
        pl.lit("trial").alias("kind"),
    )
    marks = marked.select(
        pl.col(fold),
        pl.col(x_col).cast(pl.Float64).alias("x"),
        pl.col(y_col).cast(pl.Float64).alias("y"),
        pl.col(score).cast(pl.Float64).alias("score"),
        trial_id.alias("trial"),
        label.alias("label"),
        pl.lit("mark").alias("kind"),
    )
    frame = pl.concat([cells, points, marks], how="diagonal_relaxed")
    low, high = float(cells["score"].min()), float(cells["score"].max())
    scale = alt.Scale(scheme="redyellowgreen", reverse=not higher_is_better)
    if low < 0 < high:
        scale.domainMid = 0.0
    x_axis = alt.X(
        "x0:Q",
        title=x_col.removeprefix("param_"),
        scale=alt.Scale(zero=False, nice=False, domain=[float(x_edges[0]), float(x_edges[-1])]),
    )
    y_axis = alt.Y(
        "y0:Q",
        title=y_col.removeprefix("param_"),
        scale=alt.Scale(zero=False, nice=False, domain=[float(y_edges[0]), float(y_edges[-1])]),
    )
    heat = (
        alt.Chart()
        .transform_filter("datum.kind == 'cell'")
        .mark_rect()
        .encode(
            x=x_axis,
            x2="x1:Q",
            y=y_axis,
            y2="y1:Q",
            color=alt.Color(
                "score:Q",
                scale=scale,
                title=f"mean {metric}",
                legend=alt.Legend(orient="bottom", direction="horizontal", gradientLength=180),
            ),
            tooltip=[
                alt.Tooltip("x0:Q", title=f"{x_col.removeprefix('param_')} from", format=".4~g"),
                alt.Tooltip("x1:Q", title="to", format=".4~g"),
                alt.Tooltip("y0:Q", title=f"{y_col.removeprefix('param_')} from", format=".4~g"),
                alt.Tooltip("y1:Q", title="to", format=".4~g"),
                alt.Tooltip("score:Q", title=f"mean {metric}", format=".3f"),
                alt.Tooltip("best:Q", title="best", format=".3f"),
                alt.Tooltip("worst:Q", title="worst", format=".3f"),
                alt.Tooltip("trials:Q"),
            ],
        )
    )
    dots = (
        alt.Chart()
        .transform_filter("datum.kind == 'trial'")
        .mark_point(size=6, filled=True, color="#333333", opacity=0.45)
        .encode(
            x="x:Q",
            y="y:Q",
            tooltip=["trial:Q", alt.Tooltip("score:Q", format=".3f"), "x:Q", "y:Q"],
        )
    )
    circles = (
        alt.Chart()
        .transform_filter("datum.kind == 'mark'")
        .mark_point(size=140, shape="circle", filled=False, color="black", strokeWidth=2)
        .encode(
            x="x:Q",
            y="y:Q",
            tooltip=["label:N", "trial:Q", alt.Tooltip("score:Q", format=".3f"), "x:Q", "y:Q"],
        )
    )
    labels = (
        alt.Chart()
        .transform_filter("datum.kind == 'mark'")
        .mark_text(align="left", dx=8, dy=-8, fontSize=11, fontWeight="bold")
        .encode(x="x:Q", y="y:Q", text="label:N")
    )
    heading = title or (
        f"{metric[:1].upper()}{metric[1:]} on {where}: {x_col.removeprefix('param_')} × "
        f"{y_col.removeprefix('param_')}, mean per cell"
    )
    circled = []
    if "pick" in data.columns:
        circled.append("the fold's pick (best training objective)")
    if "rank" in data.columns:
        circled.append("the ranked trials (#k)")
    subtitle = (
        f"circled: {' and '.join(circled or [f'the fold’s best trial by {score}'])}; dots: every "
        "trial. A circle among equally good cells is a plateau, a lone bright cell a spike."
    )
    return (
        alt.layer(heat, dots, circles, labels)
        .properties(width=width, height=height)
        .facet(
            column=alt.Column(
                f"{fold}:O",
                title=None,
                header=alt.Header(labelExpr=f"'{fold} ' + datum.value", labelFontSize=12),
            ),
            data=inline_data(frame),
        )
        .properties(title=alt.TitleParams(heading, subtitle=subtitle, anchor="start"))
    )


def fold_optuna_plots(
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    *,
    objective_names: Sequence[str] = (),
    plots: Sequence[str] = OPTUNA_PLOTS,
) -> list[tuple[int, str, Any]]:
    """Optuna's own plots (``optuna.visualization``, plotly) for every fold study, not the last
    only: ``(fold, plot name, figure)`` in fold order, each figure titled ``fold k: ...`` (show
    one with :func:`aiopt_lib.viz.charts.plotly_html`).

    With several objectives the plots show the first (``objective_names[0]``, default
    ``objective``). Parameter importances need two completed trials and a parameter that
    varies; a fold without them gets no importance plot rather than an error."""
    from optuna import visualization

    name = objective_names[0] if objective_names else "objective"
    figures = []
    for study in fold_studies(storage, study_name):
        index = int(study.study_name.rsplit("-fold", 1)[1])
        several = len(study.directions) > 1
        target = (lambda t: t.values[0]) if several else None
        # with a target Optuna's importance evaluator ranks parameters for *low* values
        maximised = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        lowered = (lambda t: -t.values[0]) if several and maximised else target
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for plot in plots:
            importances = plot == "plot_param_importances"
            if importances and len(complete) < 2:
                continue
            with warnings.catch_warnings():  # the sign is handled above
                warnings.filterwarnings("ignore", message=".*low `target` values")
                figure = getattr(visualization, plot)(
                    study, target=lowered if importances else target, target_name=name
                )
            heading = figure.layout.title.text or plot.removeprefix("plot_").replace("_", " ")
            figure.update_layout(title_text=f"fold {index}: {heading}")
            figures.append((index, plot, figure))
    return figures
