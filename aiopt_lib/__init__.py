"""aiopt: the AI Indicator Optimizer, a research workbench for FX strategies.

The public API is re-exported here; each module's docstring states its conventions (start with
:mod:`aiopt_lib.core.bars` for the canonical bars schema).

    import aiopt_lib as ai
    bars = ai.load_bars("EURUSD_H1.csv")      # or ai.load_sample()
    report = ai.validate_bars(bars)
"""

from aiopt_lib.core.atomic import write_parquet_atomic
from aiopt_lib.core.bars import (
    BAR_COLUMNS,
    TICK_COLUMNS,
    Flag,
    check_bars,
    check_ticks,
    ensure_bars,
    infer_timeframe,
    parse_timeframe,
    timeframe_label,
)
from aiopt_lib.core.errors import AioptError, BarsSchemaError, ConfigError, DataError
from aiopt_lib.core.streams import SchemaMismatchError, Streams, StreamWriter, read_stream
from aiopt_lib.data.cleaning import (
    CleaningPolicy,
    ValidationReport,
    classify_gaps,
    clean_bars,
    validate_bars,
)
from aiopt_lib.data.explore import describe_bars, hour_of_week_profile
from aiopt_lib.data.resample import resample_bars, ticks_to_bars
from aiopt_lib.data.sources import (
    LoadedBars,
    list_samples,
    load_bars,
    load_bars_report,
    load_sample,
    read_source,
)
from aiopt_lib.features.causal import FeatureParams, add_features, feature_columns
from aiopt_lib.features.dataset import (
    DatasetConfig,
    build_dataset,
    read_samples,
    render_dataset_images,
)
from aiopt_lib.features.indicators import IndicatorParams, add_indicators, indicator_columns
from aiopt_lib.features.labels import (
    CLASSES,
    ForwardReturnParams,
    TripleBarrierParams,
    class_balance,
    forward_return_labels,
    triple_barrier_labels,
)
from aiopt_lib.features.lookahead import LookaheadError, check_no_lookahead
from aiopt_lib.features.patterns import PATTERNS, PatternParams, add_patterns, pattern_columns
from aiopt_lib.features.render import RenderSpec, render_window, render_windows, with_overlays
from aiopt_lib.features.splits import Split, purged_kfold_splits, purged_split, walk_forward_splits
from aiopt_lib.models import load_model
from aiopt_lib.models.base import SampleSet, SignalModel, load_sample_set
from aiopt_lib.models.evaluation import (
    TemperatureScaler,
    classification_metrics,
    evaluation_table,
    pattern_recognition_report,
    predictions_frame,
)
from aiopt_lib.models.networks import (
    CompactChartNet,
    CompactConfig,
    GradientBoostingBaseline,
    LogisticBaseline,
    MajorityBaseline,
)
from aiopt_lib.models.vlm import VisionLanguageSignalModel, VlmTrainConfig
from aiopt_lib.strategy.backtest import BacktestResult, ExecutionConfig, OrderSignals, run_backtest
from aiopt_lib.strategy.overfitting import (
    deflated_sharpe_ratio,
    probability_of_backtest_overfitting,
)
from aiopt_lib.strategy.spec import (
    Costs,
    Distance,
    SignalContext,
    StrategySpec,
    check_spec_no_lookahead,
    compile_signals,
    load_spec,
    save_spec,
)

__version__ = "0.1.0"

# The search pulls in Optuna and SQLAlchemy (~0.3 s): loaded on first use, not at import.
_SEARCH_NAMES = frozenset(
    {
        "ParamRange",
        "SearchConfig",
        "SearchTemplate",
        "builtin_template",
        "load_ranking",
        "load_template",
        "run_search",
        "save_ranking",
    }
)
_WIDGET_NAMES = frozenset({"StrategyPanel", "strategy_panel"})
_LAZY_MODULES = {
    **dict.fromkeys(_SEARCH_NAMES, "strategy.search"),
    **dict.fromkeys(_WIDGET_NAMES, "viz.widgets"),
    # nautilus_trader takes ~1 s to import
    **dict.fromkeys(
        ("run_nautilus", "run_nautilus_full", "run_from_catalog", "statistics_table"),
        "execution.nautilus",
    ),
    **dict.fromkeys(("run_pine_offline", "compare_trades"), "pine.offline"),
    **dict.fromkeys(("distill_signal_model", "distilled_pine"), "pine.distill"),
    **dict.fromkeys(("spec_to_pine", "check_pine", "fix_pine", "export_ranking"), "pine.export"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY_MODULES:
        import importlib

        return getattr(importlib.import_module(f"aiopt_lib.{_LAZY_MODULES[name]}"), name)
    raise AttributeError(f"module 'aiopt_lib' has no attribute {name!r}")


__all__ = [
    "BAR_COLUMNS",
    "CLASSES",
    "PATTERNS",
    "TICK_COLUMNS",
    "AioptError",
    "BacktestResult",
    "BarsSchemaError",
    "CleaningPolicy",
    "CompactChartNet",
    "CompactConfig",
    "ConfigError",
    "Costs",
    "DataError",
    "DatasetConfig",
    "Distance",
    "ExecutionConfig",
    "FeatureParams",
    "Flag",
    "ForwardReturnParams",
    "GradientBoostingBaseline",
    "IndicatorParams",
    "LoadedBars",
    "LogisticBaseline",
    "LookaheadError",
    "MajorityBaseline",
    "OrderSignals",
    "ParamRange",
    "PatternParams",
    "RenderSpec",
    "SampleSet",
    "SchemaMismatchError",
    "SearchConfig",
    "SearchTemplate",
    "SignalContext",
    "SignalModel",
    "Split",
    "StrategyPanel",
    "StrategySpec",
    "StreamWriter",
    "Streams",
    "TemperatureScaler",
    "TripleBarrierParams",
    "ValidationReport",
    "VisionLanguageSignalModel",
    "VlmTrainConfig",
    "__version__",
    "add_features",
    "add_indicators",
    "add_patterns",
    "build_dataset",
    "builtin_template",
    "check_bars",
    "check_no_lookahead",
    "check_pine",
    "check_spec_no_lookahead",
    "check_ticks",
    "class_balance",
    "classification_metrics",
    "classify_gaps",
    "clean_bars",
    "compare_trades",
    "compile_signals",
    "deflated_sharpe_ratio",
    "describe_bars",
    "distill_signal_model",
    "distilled_pine",
    "ensure_bars",
    "evaluation_table",
    "export_ranking",
    "feature_columns",
    "fix_pine",
    "forward_return_labels",
    "hour_of_week_profile",
    "indicator_columns",
    "infer_timeframe",
    "list_samples",
    "load_bars",
    "load_bars_report",
    "load_model",
    "load_ranking",
    "load_sample",
    "load_sample_set",
    "load_spec",
    "load_template",
    "parse_timeframe",
    "pattern_columns",
    "pattern_recognition_report",
    "predictions_frame",
    "probability_of_backtest_overfitting",
    "purged_kfold_splits",
    "purged_split",
    "read_samples",
    "read_source",
    "read_stream",
    "render_dataset_images",
    "render_window",
    "render_windows",
    "resample_bars",
    "run_backtest",
    "run_from_catalog",
    "run_nautilus",
    "run_nautilus_full",
    "run_pine_offline",
    "run_search",
    "save_ranking",
    "save_spec",
    "spec_to_pine",
    "statistics_table",
    "strategy_panel",
    "ticks_to_bars",
    "timeframe_label",
    "triple_barrier_labels",
    "validate_bars",
    "walk_forward_splits",
    "with_overlays",
    "write_parquet_atomic",
]
