"""Ranking files: the schema version :func:`aiopt_lib.strategy.search.save_ranking` writes, the
reader the backtest, the Pine export and the reports use (without importing Optuna), and
:func:`verdict`, the answers a report states first, computed from the file's figures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.strategy.spec import StrategySpec

__all__ = ["RANKING_SCHEMA_VERSION", "load_ranking", "verdict"]

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


def _pct(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:+.1%}"


def _num(value: Any, fmt: str = ".2f") -> str:
    return "n/a" if not isinstance(value, int | float) else format(value, fmt)


def verdict(document: Mapping[str, Any]) -> dict[str, str]:
    """The answers of a ranking file (:func:`load_ranking`'s document, as JSON), one sentence
    each, computed from its figures: ``walk_forward`` (did the walk-forward picks beat
    buy-and-hold out of sample), ``lockbox`` (what the ranked strategies and the walk-forward pick
    did on the held-out bars), ``pbo`` and ``dsr`` (what the overfitting statistics mean here).
    A statistic the file lacks is left out."""
    out: dict[str, str] = {}
    wf = document.get("walk_forward") or {}
    ours, hold = wf.get("metrics") or {}, wf.get("buy_and_hold") or {}
    if ours.get("total_return") is not None and hold.get("total_return") is not None:
        beat = ours["total_return"] > hold["total_return"]
        out["walk_forward"] = (
            f"{'Yes' if beat else 'No'}: out of sample ({wf.get('start', '')[:10]} to "
            f"{wf.get('end', '')[:10]}) the walk-forward picks returned {_pct(ours['total_return'])}"
            f" (Sharpe {_num(ours.get('sharpe'))}) against buy-and-hold's "
            f"{_pct(hold['total_return'])} (Sharpe {_num(hold.get('sharpe'))})."
        )
    lockbox = document.get("lockbox")
    if lockbox:
        hold_return = (lockbox.get("buy_and_hold") or {}).get("total_return")
        ranked = [s for s in lockbox.get("strategies", []) if s["label"].startswith("rank")]
        pick = next(
            (s for s in lockbox.get("strategies", []) if not s["label"].startswith("rank")), None
        )
        returns = [s["metrics"].get("total_return") for s in ranked]
        known = [r for r in returns if r is not None]
        beating = sum(1 for r in known if hold_return is not None and r > hold_return)
        best = max(known) if known else None
        out["lockbox"] = (
            f"On the lockbox ({lockbox['start'][:10]} to {lockbox['end'][:10]}, {lockbox['n_bars']:,}"
            f" bars no study or ranking saw) {beating} of {len(ranked)} ranked strategies beat "
            f"buy-and-hold's {_pct(hold_return)}; the best returned {_pct(best)}"
            + (
                f", the walk-forward pick {_pct(pick['metrics'].get('total_return'))}."
                if pick
                else "."
            )
        )
    pbo = (document.get("pbo") or {}).get("pbo")
    if isinstance(pbo, int | float):
        meaning = (
            "the ranking is mostly luck"
            if pbo > 0.5
            else "the ranking is partly luck"
            if pbo > 0.2
            else "the in-sample ranking mostly holds out of sample"
        )
        out["pbo"] = (
            f"PBO {pbo:.2f}: in {pbo:.0%} of the combinatorial splits the in-sample best was below "
            f"the median out of sample — {meaning}."
        )
    top = document.get("top") or []
    if top and isinstance(top[0].get("deflated_sharpe"), int | float):
        dsr = top[0]["deflated_sharpe"]
        n = document.get("n_effective_trials")
        out["dsr"] = (
            f"DSR {dsr:.2f} for rank 1: after deflating its Sharpe ratio for "
            f"{_num(n, '.0f')} effectively independent trials, the probability that its true "
            f"Sharpe is above zero is {dsr:.0%} ({'above' if dsr >= 0.95 else 'below'} the usual "
            "0.95 bar)."
        )
    return out
