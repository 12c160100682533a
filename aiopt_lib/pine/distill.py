"""Distil the AI signal model into rules that TradingView can compute (issue 8 §2).

A strategy rule may gate its entries on the signal model's probability (``ai_buy >= gate``), and
no signal model runs inside TradingView. :func:`distill_signal_model` fits a shallow decision tree
(scikit-learn's ``DecisionTreeClassifier``) that imitates the model's label (the argmax of
``prob_buy`` / ``prob_sell`` / ``prob_hold``) from Pine-computable features at the same bar:
RSI, MACD histogram, Bollinger %B, stochastic %K, ADX, +DI - -DI, ATR / close, the distance from
the EMA in ATRs and a few candlestick-pattern flags (:func:`default_features`). The result, a
:class:`DistilledModel`, holds the tree as plain data and gives the same gate twice::

    distilled = distill_signal_model(bars, predictions)
    distilled.fidelity                              # agreement with the model's labels
    print(distilled.describe())                     # the rules, readable
    gate = distilled.predictions(bars)              # ts, prob_buy, prob_sell, prob_hold (numpy)
    result = backtest(bars, spec, predictions=gate) # our engine trades the distilled gate
    text = distilled_pine(spec, distilled)          # and TradingView the same one

How the two evaluations agree
-----------------------------
* Features at bar t read bars <= t only (TradingView's ``ta.*`` definitions from
  :mod:`aiopt_lib.features.indicators`, patterns from :mod:`aiopt_lib.features.patterns`); in Pine each is one
  top-level declaration computed on every bar (:meth:`DistilledModel.pine_declarations`).
* Splits compare ``feature <= threshold`` as scikit-learn does, in both; thresholds and leaf
  probabilities are written as float literals that read back to the same doubles.
* A bar where a feature the tree reads is not defined yet (indicator warm-up) has no
  probability: NaN in :meth:`DistilledModel.predictions`, ``na`` in Pine (the expression starts
  with ``na(f) or ... ? na :``), so ``ai_buy >= gate`` is False in both.
* The tree is fitted by scikit-learn, which reads the features as float32; the thresholds lie
  halfway between float32 training values and are then applied to the float64 features here
  and in Pine. A float64 value exactly on a threshold (no real price series produces one) is
  the only case where scikit-learn's own ``predict_proba`` could take the other branch.

The Pine declarations go in front of ``spec_to_ir``'s own (see :func:`distilled_pine`): pine.py
declares each ``ai_rules`` expression once at the top level but has no place for the variables
the expression reads, and a ``ta.*`` call inside a ternary branch would not run on every bar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.features import patterns as pat
from aiopt_lib.features.registry import parse_column
from aiopt_lib.pine import export as pine
from aiopt_lib.pine.export import Statement, expressions_to_pine
from aiopt_lib.strategy.rules import SignalContext, evaluate, parse_expression

__all__ = ["distill_signal_model", "distilled_pine"]

LABELS: tuple[str, str, str] = ("BUY", "SELL", "HOLD")
"""The classes, in the order of the probability columns ``prob_buy, prob_sell, prob_hold``."""

PREFIX = "distill_"
"""Every Pine variable the distilled rules declare starts with this (no clash with pine.py's)."""

DEFAULT_PATTERNS: tuple[str, ...] = (
    "bullish_engulfing",
    "bearish_engulfing",
    "hammer",
    "shooting_star",
)


# ---------------------------------------------------------------------------------------------
# Features


@dataclass(frozen=True)
class DistillFeature:
    """A feature the tree may split on: a rule-language expression (any registered indicator,
    prices, arithmetic, a candlestick pattern as 1.0 / 0.0; :mod:`aiopt_lib.strategy.spec`),
    computed by the vectorised evaluator here and rendered to Pine by the strategy export, so
    both targets read one definition. ``name``: its column name; ``description``: what it is."""

    name: str
    expression: str
    description: str = ""

    def compute(self, context: SignalContext) -> np.ndarray:
        """The feature on ``context``'s bars (NaN where Pine has na)."""
        values = evaluate(parse_expression(self.expression, name=self.name), context, {})
        return np.asarray(values, dtype=np.float64)


_CATALOGUE: tuple[DistillFeature, ...] = (
    DistillFeature("rsi_14", "rsi(14)", "RSI(14)"),
    DistillFeature("macd_hist_12_26_9", "macd_hist(12, 26, 9)", "MACD histogram (12, 26, 9)"),
    DistillFeature(
        "bb_pctb_20_2",
        "bb_pctb(20, 2)",
        "Bollinger %B (20, 2): 0 at the lower band, 1 at the upper",
    ),
    DistillFeature("stoch_k_14_3", "stoch_k(14, 3, 3)", "stochastic %K (14, 3)"),
    DistillFeature("adx_14_14", "adx(14, 14)", "ADX (14, 14)"),
    DistillFeature("di_diff_14", "plus_di(14, 14) - minus_di(14, 14)", "+DI - -DI (14)"),
    DistillFeature("atr_pct_14", "atr(14) / close", "ATR(14) / close"),
    DistillFeature("ema_distance_20", "(close - ema(20)) / atr(14)", "(close - EMA(20)) / ATR(14)"),
)


def pattern_feature(name: str) -> DistillFeature:
    """The candlestick pattern ``name`` (:data:`aiopt_lib.features.patterns.PATTERNS`) as a 0.0 / 1.0
    feature ``pat_<name>``: 1.0 on the bar where it completes (False during its warm-up in both
    targets, see :mod:`aiopt_lib.features.patterns`)."""
    if name not in pat.PATTERNS:
        raise ConfigError(f"unknown pattern {name!r}; known: {sorted(pat.PATTERNS)}")
    return DistillFeature(
        pat.PATTERNS[name].column, name, f"candlestick pattern {name} (1.0 / 0.0)"
    )


def indicator_feature(column: str) -> DistillFeature:
    """A registered indicator output by its column name (``cci_20``, ``kc_upper_20_2``,
    ``supertrend_dir_3_10``; :func:`aiopt_lib.features.registry.column_name`) as a feature."""
    if not _is_rule_column(column):
        raise ConfigError(
            f"{column!r} is not the column of a registered indicator output on its default source"
        )
    found = parse_column(column)
    assert found is not None
    definition, output, args, _ = found
    call = f"{output}({', '.join(repr(a) for a in args)})"
    return DistillFeature(column, call, f"{definition.title}: {call}")


def _is_rule_column(column: str) -> bool:
    """Whether ``column`` names an indicator output the rule language can compute (its default
    source: rules read no other)."""
    found = parse_column(column)
    return found is not None and found[3] == found[0].default_source


def default_features() -> tuple[DistillFeature, ...]:
    """The features :func:`distill_signal_model` uses by default: RSI(14), MACD histogram
    (12, 26, 9), Bollinger %B (20, 2), stochastic %K (14, 3), ADX (14, 14), +DI - -DI, ATR(14) /
    close, (close - EMA(20)) / ATR(14) and the patterns of :data:`DEFAULT_PATTERNS`."""
    return (*_CATALOGUE, *(pattern_feature(n) for n in DEFAULT_PATTERNS))


def _resolve_features(
    features: Sequence[DistillFeature | str] | None,
) -> tuple[DistillFeature, ...]:
    if features is None:
        return default_features()
    catalogue = {f.name: f for f in _CATALOGUE}
    resolved = []
    for item in features:
        if isinstance(item, DistillFeature):
            resolved.append(item)
        elif item in catalogue:
            resolved.append(catalogue[item])
        elif item.startswith(pat.COLUMN_PREFIX) and item[len(pat.COLUMN_PREFIX) :] in pat.PATTERNS:
            resolved.append(pattern_feature(item[len(pat.COLUMN_PREFIX) :]))
        elif _is_rule_column(item):
            resolved.append(indicator_feature(item))
        else:
            raise ConfigError(
                f"unknown distillation feature {item!r}; known: {sorted(catalogue)}, "
                f"pat_<pattern> and the column of any registered indicator (cci_20, ...)"
            )
    names = [f.name for f in resolved]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"features must be distinct and not empty, got {names}")
    return tuple(resolved)


def feature_frame(
    bars: pl.DataFrame, features: Sequence[DistillFeature | str] | None = None
) -> pl.DataFrame:
    """``ts`` and one Float64 column per feature (default: :func:`default_features`), NaN where
    the feature is not defined yet. The value at bar t reads bars <= t only."""
    resolved = _resolve_features(features)
    context = SignalContext(bars)
    columns = {"ts": context.bars.get_column("ts")}
    for feature in resolved:
        values = feature.compute(context)
        if values.shape != (context.bars.height,):
            raise ConfigError(f"feature {feature.name!r} returned shape {values.shape}")
        columns[feature.name] = pl.Series(feature.name, values, dtype=pl.Float64)
    return pl.DataFrame(columns)


# ---------------------------------------------------------------------------------------------
# The tree as plain data


@dataclass(frozen=True)
class ClassFidelity:
    """How the tree's labels match the model's for one class: ``support`` (bars the model labels
    ``label``), ``predicted`` (bars the tree labels so), ``recall`` (share of the model's bars the
    tree labels the same), ``precision`` (share of the tree's bars the model labels the same);
    NaN where the denominator is 0."""

    label: str
    support: int
    predicted: int
    recall: float
    precision: float


@dataclass(frozen=True)
class DistilledTree:
    """A fitted binary tree, node by node (node 0 is the root). ``feature[i]`` is the index into
    the model's features (-1: a leaf); a row goes to ``left[i]`` when ``value <= threshold[i]``,
    else to ``right[i]``; ``probabilities[i]`` are the node's (BUY, SELL, HOLD) training
    shares, which the tree predicts at a leaf; ``samples[i]`` the training rows reaching it."""

    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    probabilities: tuple[tuple[float, float, float], ...]
    samples: tuple[int, ...]

    def is_leaf(self, node: int) -> bool:
        """Whether ``node`` is a leaf."""
        return self.feature[node] < 0

    def used_features(self) -> tuple[int, ...]:
        """The feature indices the splits read, sorted."""
        return tuple(sorted({f for f in self.feature if f >= 0}))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The leaf each row of ``x`` (n × features, float64) lands in; NaN goes right (``NaN <=
        t`` is False), callers mask those rows."""
        node = np.zeros(len(x), dtype=np.int64)
        feature = np.asarray(self.feature)
        threshold = np.asarray(self.threshold, dtype=np.float64)
        left, right = np.asarray(self.left), np.asarray(self.right)
        rows = np.arange(len(x))
        while True:
            inner = feature[node] >= 0
            if not inner.any():
                return node
            at = node[inner]
            goes_left = x[rows[inner], feature[at]] <= threshold[at]
            node[inner] = np.where(goes_left, left[at], right[at])


def _tree_from_sklearn(estimator: Any) -> DistilledTree:
    tree = estimator.tree_
    classes = [str(c) for c in estimator.classes_]
    # a node's class shares as predict_proba computes them (value / its sum), then in LABELS order
    value = np.asarray(tree.value[:, 0, :], dtype=np.float64)
    total = value.sum(axis=1, keepdims=True)
    total[total == 0.0] = 1.0
    shares = value / total
    probabilities = np.zeros((tree.node_count, len(LABELS)))
    for j, label in enumerate(LABELS):
        if label in classes:
            probabilities[:, j] = shares[:, classes.index(label)]
    leaf = tree.children_left < 0
    return DistilledTree(
        feature=tuple(
            int(f) if not is_leaf else -1 for f, is_leaf in zip(tree.feature, leaf, strict=True)
        ),
        threshold=tuple(
            float(t) if not is_leaf else 0.0
            for t, is_leaf in zip(tree.threshold, leaf, strict=True)
        ),
        left=tuple(int(i) for i in tree.children_left),
        right=tuple(int(i) for i in tree.children_right),
        probabilities=tuple(tuple(float(p) for p in row) for row in probabilities),  # type: ignore[misc]
        samples=tuple(int(n) for n in tree.n_node_samples),
    )


# ---------------------------------------------------------------------------------------------
# The distilled model


@dataclass(frozen=True)
class DistilledModel:
    """A shallow decision tree standing in for the signal model, computable in Pine.

    ``features``: what the splits read; ``tree``: the fitted tree as plain data; ``fidelity``:
    the share of the training bars (bars with a prediction and every feature defined) where the
    tree's label equals the model's; ``per_class``: the same per class; ``n_samples``: the
    training bars; ``n_warmup``: bars with a prediction left out because a feature was undefined.
    """

    features: tuple[DistillFeature, ...]
    tree: DistilledTree
    fidelity: float
    per_class: tuple[ClassFidelity, ...]
    n_samples: int
    n_warmup: int

    # -- numpy ----------------------------------------------------------------------------

    def predictions(self, bars: pl.DataFrame) -> pl.DataFrame:
        """``ts, prob_buy, prob_sell, prob_hold``: the tree's probabilities at every bar of
        ``bars`` from the same features and thresholds as the Pine expressions; NaN where a
        feature the tree reads is not defined (Pine's na), so the gate is False there. Pass it as
        ``predictions=`` to :func:`aiopt_lib.strategy.spec.backtest`."""
        frame = feature_frame(bars, self.features)
        x = frame.drop("ts").to_numpy().astype(np.float64, copy=False)
        leaves = self.tree.apply(x)
        probabilities = np.asarray(self.tree.probabilities, dtype=np.float64)[leaves]
        used = list(self.tree.used_features())
        if used:
            probabilities[np.isnan(x[:, used]).any(axis=1)] = np.nan
        return pl.DataFrame(
            {
                "ts": frame.get_column("ts"),
                **{f"prob_{label.lower()}": probabilities[:, j] for j, label in enumerate(LABELS)},
            }
        )

    def fidelity_table(self) -> pl.DataFrame:
        """:attr:`per_class` as a frame (label, support, predicted, recall, precision)."""
        return pl.DataFrame([dataclasses.asdict(c) for c in self.per_class])

    # -- Pine -----------------------------------------------------------------------------

    def _pine(self) -> tuple[tuple[Statement, ...], dict[int, str]]:
        """The declarations of the used features and the variable holding each one's value."""
        used = self.tree.used_features()
        declarations, variables = expressions_to_pine(
            {self.features[i].name: self.features[i].expression for i in used}, prefix=PREFIX
        )
        return declarations, {i: variables[self.features[i].name] for i in used}

    def pine_declarations(self) -> tuple[Statement, ...]:
        """The top-level Pine declarations the expressions of :meth:`pine_expressions` read (each
        once, in dependency order; only the features the tree uses). Every name starts with
        :data:`PREFIX`."""
        return self._pine()[0]

    def _pine_node(self, node: int, column: int, values: Mapping[int, str]) -> str:
        tree = self.tree
        if tree.is_leaf(node):
            return pat.pine_float(tree.probabilities[node][column])
        left = self._pine_node(tree.left[node], column, values)
        right = self._pine_node(tree.right[node], column, values)
        if left == right:  # the split does not change this probability
            return left
        feature = values[tree.feature[node]]
        threshold = pat.pine_float(tree.threshold[node])
        return f"{feature} <= {threshold} ? {_paren(left)} : {_paren(right)}"

    def pine_expressions(self) -> dict[str, str]:
        """Numeric Pine expressions for ``ai_buy``, ``ai_sell`` and ``ai_hold``: nested ternaries
        ``feature <= threshold ? (...) : (...)`` ending in the leaf's probability (float
        literals), ``na`` while a feature the tree reads is na. They read the variables of
        :meth:`pine_declarations`, which must be declared before them (:func:`distilled_pine`)."""
        values = self._pine()[1]
        guard = " or ".join(f"na({v})" for v in values.values())
        out = {}
        for column, label in enumerate(LABELS):
            body = self._pine_node(0, column, values)
            out[f"ai_{label.lower()}"] = f"{guard} ? na : {_paren(body)}" if guard else body
        return out

    # -- reading --------------------------------------------------------------------------

    def describe(self) -> str:
        """The rules as indented text: one ``if feature <= threshold:`` / ``else:`` per split,
        each leaf with its label, probabilities and training bars, after a fidelity line."""
        tree = self.tree
        lines = [
            f"decision tree distilled from the signal model: fidelity {self.fidelity:.3f} on "
            f"{self.n_samples} bars ("
            + ", ".join(f"{c.label} recall {c.recall:.2f}" for c in self.per_class)
            + ")"
        ]

        def visit(node: int, depth: int) -> None:
            pad = "    " * depth
            if tree.is_leaf(node):
                p = tree.probabilities[node]
                label = LABELS[int(np.argmax(p))]
                shares = ", ".join(f"{lab} {v:.2f}" for lab, v in zip(LABELS, p, strict=True))
                lines.append(f"{pad}-> {label} ({shares}; {tree.samples[node]} bars)")
                return
            name = self.features[tree.feature[node]].name
            threshold = tree.threshold[node]
            lines.append(f"{pad}if {name} <= {threshold:.6g}:")
            visit(tree.left[node], depth + 1)
            lines.append(f"{pad}else:  # {name} > {threshold:.6g}")
            visit(tree.right[node], depth + 1)

        visit(0, 0)
        return "\n".join(lines)


def _paren(text: str) -> str:
    return f"({text})" if "?" in text else text


def _model_labels(bars: pl.DataFrame, predictions: pl.DataFrame) -> np.ndarray:
    """The model's label per bar (argmax of prob_buy / prob_sell / prob_hold; ties: the first in
    that order), None where the bar has no prediction."""
    needed = ["ts", *(f"prob_{label.lower()}" for label in LABELS)]
    missing = [c for c in needed if c not in predictions.columns]
    if missing:
        raise ConfigError(f"the predictions frame lacks columns {missing}")
    joined = bars.select("ts").join(
        predictions.select(needed).unique("ts", keep="last"),
        on="ts",
        how="left",
        maintain_order="left",
    )
    probabilities = joined.select(needed[1:]).cast(pl.Float64).fill_null(np.nan).to_numpy()
    known = ~np.isnan(probabilities).any(axis=1)
    labels = np.full(bars.height, None, dtype=object)
    labels[known] = np.asarray(LABELS, dtype=object)[np.argmax(probabilities[known], axis=1)]
    return labels


def _per_class(model: np.ndarray, tree: np.ndarray) -> tuple[ClassFidelity, ...]:
    out = []
    for label in LABELS:
        support = int((model == label).sum())
        predicted = int((tree == label).sum())
        both = int(((model == label) & (tree == label)).sum())
        out.append(
            ClassFidelity(
                label,
                support,
                predicted,
                both / support if support else float("nan"),
                both / predicted if predicted else float("nan"),
            )
        )
    return tuple(out)


def distill_signal_model(
    bars: pl.DataFrame,
    predictions: pl.DataFrame,
    *,
    max_depth: int = 3,
    min_samples_leaf: int = 20,
    features: Sequence[DistillFeature | str] | None = None,
    seed: int = 0,
) -> DistilledModel:
    """Fit a shallow decision tree that imitates the signal model from Pine-computable features.

    ``bars``: canonical bars (give the history before the first prediction too: the indicators
    need it to warm up); ``predictions``: ``ts, prob_buy, prob_sell, prob_hold`` (one model's,
    e.g. the rows of :func:`aiopt_lib.models.evaluation.predictions_frame` for one symbol); the tree learns the model's label (the
    argmax; ties go to BUY, then SELL) on the bars that have a prediction and every feature
    defined. ``features``: :class:`DistillFeature` objects or names (``rsi_14``,
    ``macd_hist_12_26_9``, ``bb_pctb_20_2``, ``stoch_k_14_3``, ``adx_14_14``, ``di_diff_14``,
    ``atr_pct_14``, ``ema_distance_20``, ``pat_<pattern>``); None: :func:`default_features`.
    ``max_depth`` / ``min_samples_leaf`` / ``seed`` go to scikit-learn's
    ``DecisionTreeClassifier``. Raises :class:`~aiopt_lib.core.errors.ConfigError` when fewer than
    ``2 * min_samples_leaf`` bars can be used.
    """
    from sklearn.tree import DecisionTreeClassifier

    if max_depth < 1 or min_samples_leaf < 1:
        raise ConfigError(
            f"max_depth and min_samples_leaf must be >= 1, got {max_depth}, {min_samples_leaf}"
        )
    resolved = _resolve_features(features)
    labels = _model_labels(bars, predictions)
    x = feature_frame(bars, resolved).drop("ts").to_numpy().astype(np.float64, copy=False)
    predicted = labels != None  # noqa: E711 (elementwise on an object array)
    defined = ~np.isnan(x).any(axis=1)
    rows = predicted & defined
    n_samples = int(rows.sum())
    if n_samples < 2 * min_samples_leaf:
        raise ConfigError(
            f"only {n_samples} bars have a prediction and every feature defined "
            f"({int(predicted.sum())} with a prediction); need at least {2 * min_samples_leaf}"
        )
    y = labels[rows].astype(str)
    estimator = DecisionTreeClassifier(
        max_depth=max_depth, min_samples_leaf=min_samples_leaf, random_state=seed
    )
    estimator.fit(x[rows], y)
    tree = _tree_from_sklearn(estimator)
    leaf_labels = np.asarray(LABELS, dtype=object)[
        np.argmax(np.asarray(tree.probabilities), axis=1)
    ]
    tree_labels = leaf_labels[tree.apply(x[rows])]
    return DistilledModel(
        features=resolved,
        tree=tree,
        fidelity=float((tree_labels == y).mean()),
        per_class=_per_class(y.astype(object), tree_labels),
        n_samples=n_samples,
        n_warmup=int((predicted & ~defined).sum()),
    )


# ---------------------------------------------------------------------------------------------
# Export


def distilled_pine(
    spec: Any,
    model: DistilledModel,
    *,
    version: Literal[5, 6] = 5,
    metrics: Mapping[str, Any] | None = None,
    data_range: str | None = None,
    validate: bool = True,
) -> str:
    """``spec`` (a :class:`~aiopt_lib.strategy.spec.StrategySpec` using ``ai_buy`` / ``ai_sell``) as a
    Pine strategy whose AI gate is ``model``'s tree: :func:`aiopt_lib.pine.export.spec_to_ir` with
    ``ai_rules=model.pine_expressions()``, the model's declarations put first among the
    top-level declarations, rendered, and (``validate``) checked with
    :func:`aiopt_lib.pine.export.check_pine` (errors raise :class:`aiopt_lib.pine.export.PineExportError`)."""
    script = pine.spec_to_ir(
        spec,
        version=version,
        metrics=metrics,
        data_range=data_range,
        ai_rules=model.pine_expressions(),
    )
    declarations = model.pine_declarations()
    ours = {name for d in declarations for name in getattr(d, "names", (getattr(d, "name", ""),))}
    theirs = {i.name for i in script.inputs}
    for statement in (*script.declarations, *script.statements):
        theirs.update(getattr(statement, "names", ()) or [getattr(statement, "name", "")])
    clash = sorted(ours & theirs)
    if clash:
        raise pine.PineExportError(f"the distilled rules' names clash with the script's: {clash}")
    hoisted = declarations
    # the header says what stands in for the model and how faithfully (fidelity per class)
    header = (
        *script.header_comments,
        "",
        *model.describe().splitlines(),
        *(
            f"  {row['label']}: recall {row['recall']:.3f} precision {row['precision']:.3f}"
            for row in model.fidelity_table().iter_rows(named=True)
        ),
    )
    text = pine.render(
        dataclasses.replace(
            script, header_comments=header, declarations=(*hoisted, *script.declarations)
        )
    )
    if validate:
        errors = pine.export_errors(pine.check_pine(text, version))
        if errors:
            listed = "; ".join(str(i) for i in errors)
            raise pine.PineExportError(
                f"the distilled Pine export of {spec.name!r} does not validate: {listed}"
            )
    return text
