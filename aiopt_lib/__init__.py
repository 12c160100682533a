"""aiopt: the AI Indicator Optimizer, a research workbench for FX strategies.

The library is one package per pipeline stage (``core``, ``data``, ``features``, ``models``,
``strategy``, ``execution``, ``pine``, ``viz``, ``runs``; docs/architecture.md). For notebooks and
scripts this module offers the public names of the stage modules listed below, each module's
``__all__``, as ``aiopt_lib.<name>``:

    import aiopt_lib as ai
    bars = ai.load_bars("EURUSD_H1.csv")      # or ai.load_sample()
    report = ai.validate_bars(bars)

Nothing is imported up front: the names are read from the modules' ``__all__`` (the files are
scanned, not imported) and a module is imported when one of its names is first used, so
``import aiopt_lib`` stays instant and the heavy stages (Optuna, nautilus_trader, PyneCore,
transformers) load only when asked for.
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path

__version__ = "0.1.0"

# The modules whose ``__all__`` make up the facade. A name must belong to one of them only
# (tests/test_facade.py checks it).
PUBLIC_MODULES = (
    "core.errors",
    "core.atomic",
    "core.bars",
    "core.config",
    "core.instruments",
    "core.streams",
    "data.sources",
    "data.cleaning",
    "data.resample",
    "data.explore",
    "data.store",
    "data.rundir",
    "features.indicators",
    "features.indicators_more",
    "features.registry",
    "features.patterns",
    "features.causal",
    "features.labels",
    "features.splits",
    "features.lookahead",
    "features.dataset",
    "features.render",
    "models",
    "models.base",
    "models.networks",
    "models.vlm",
    "models.evaluation",
    "strategy.rules",
    "strategy.spec",
    "strategy.backtest",
    "strategy.ranking",
    "strategy.search",
    "strategy.overfitting",
    "strategy.performance",
    "execution.nautilus",
    "pine.export",
    "pine.offline",
    "pine.distill",
    "viz.widgets",
    "viz.tables",
    "viz.report",
    "viz.sensitivity",
    "runs.parity",
)

_ALL = re.compile(r"^__all__\s*=\s*(\[.*?\])", re.MULTILINE | re.DOTALL)


def _module_file(module: str) -> Path:
    path = Path(__file__).parent.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@cache
def public_names() -> dict[str, str]:
    """Every facade name and the module (under ``aiopt_lib.``) that defines it."""
    owners: dict[str, str] = {}
    for module in PUBLIC_MODULES:
        found = _ALL.search(_module_file(module).read_text(encoding="utf-8"))
        if found is None:
            raise ImportError(f"aiopt_lib.{module} lists no __all__ for the facade")
        for name in ast.literal_eval(found.group(1)):
            owners.setdefault(name, module)
    return owners


def __getattr__(name: str) -> object:
    module = public_names().get(name)
    if module is None:
        raise AttributeError(f"module 'aiopt_lib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"aiopt_lib.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *public_names()})
