"""aiopt: the AI Indicator Optimizer, a research workbench for FX strategies.

The public API is re-exported here; each module's docstring states its conventions (start with
:mod:`aiopt_lib.bars` for the canonical bars schema).

    import aiopt_lib as ai
    bars = ai.load_bars("EURUSD_H1.csv")      # or ai.load_sample()
    report = ai.validate_bars(bars)
"""

from aiopt_lib.atomic import write_parquet_atomic
from aiopt_lib.bars import (
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
from aiopt_lib.cleaning import (
    CleaningPolicy,
    ValidationReport,
    classify_gaps,
    clean_bars,
    validate_bars,
)
from aiopt_lib.errors import AioptError, BarsSchemaError, ConfigError, DataError
from aiopt_lib.explore import describe_bars, hour_of_week_profile
from aiopt_lib.resample import resample_bars, ticks_to_bars
from aiopt_lib.sources import (
    LoadedBars,
    list_samples,
    load_bars,
    load_bars_report,
    load_sample,
    read_source,
)

__version__ = "0.1.0"

__all__ = [
    "BAR_COLUMNS",
    "TICK_COLUMNS",
    "AioptError",
    "BarsSchemaError",
    "CleaningPolicy",
    "ConfigError",
    "DataError",
    "Flag",
    "LoadedBars",
    "ValidationReport",
    "__version__",
    "check_bars",
    "check_ticks",
    "classify_gaps",
    "clean_bars",
    "describe_bars",
    "ensure_bars",
    "hour_of_week_profile",
    "infer_timeframe",
    "list_samples",
    "load_bars",
    "load_bars_report",
    "load_sample",
    "parse_timeframe",
    "read_source",
    "resample_bars",
    "ticks_to_bars",
    "timeframe_label",
    "validate_bars",
    "write_parquet_atomic",
]
