"""aiopt: the AI Indicator Optimizer, a research workbench for FX strategies.

The public API is re-exported here; see each module's docstring for the conventions.
"""

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
from aiopt_lib.errors import AioptError, BarsSchemaError, ConfigError, DataError
from aiopt_lib.resample import resample_bars, ticks_to_bars

__version__ = "0.1.0"

__all__ = [
    "BAR_COLUMNS",
    "TICK_COLUMNS",
    "AioptError",
    "BarsSchemaError",
    "ConfigError",
    "DataError",
    "Flag",
    "__version__",
    "check_bars",
    "check_ticks",
    "ensure_bars",
    "infer_timeframe",
    "parse_timeframe",
    "resample_bars",
    "ticks_to_bars",
    "timeframe_label",
]
