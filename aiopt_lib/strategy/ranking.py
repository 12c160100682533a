"""Ranking files: the schema version :func:`aiopt_lib.strategy.search.save_ranking` writes and the
reader the backtest, the Pine export and the reports use (without importing Optuna)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.strategy.spec import StrategySpec

__all__ = ["RANKING_SCHEMA_VERSION", "load_ranking"]

RANKING_SCHEMA_VERSION = 1


def load_ranking(path: str | Path) -> list[tuple[StrategySpec, dict[str, Any]]]:
    """The ranked specs of a ranking file with each entry's other fields, best first."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the ranking ({exc})") from None
    if document.get("schema_version") != RANKING_SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: ranking schema_version {document.get('schema_version')!r}, "
            f"expected {RANKING_SCHEMA_VERSION}"
        )
    entries = []
    for i, entry in enumerate(document.get("top", [])):
        spec = StrategySpec.from_mapping(entry["spec"], source=f"{path}, top[{i}].spec")
        entries.append((spec, {k: v for k, v in entry.items() if k != "spec"}))
    return entries
