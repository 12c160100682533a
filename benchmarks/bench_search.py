"""Benchmark: walk-forward Optuna search throughput on 100k bars with two worker processes.

The built-in ``ema_cross`` template (EMA cross + ADX filter + ATR stop/take, five parameters) on
100,000 synthetic one-minute bars (the random walk of ``bench_backtest.py``), two walk-forward
folds, ``TRIALS`` trials per fold, ``--workers 2`` on one storage: once with the default SQLite
file and once with Optuna's journal file storage. Each trial is one full-history backtest plus the
window scores. The time covers starting the workers, the trials and the storage writes (not the
ranking). There is no peer: the goal is 50 trials/s on 2 cores. Prints one JSON object last.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_backtest import synthetic_bars

from aiopt_lib.strategy.search import SearchConfig, builtin_template, optimise

TRIALS = 400
FOLDS = 2
WORKERS = 2


def trials_per_second(storage: str, bars, template) -> float:
    config = SearchConfig(n_trials=TRIALS, n_folds=FOLDS, min_trades=1, study_name="bench")
    started = time.perf_counter()
    optimise(bars, template, config, storage, workers=WORKERS, progress=False)
    return TRIALS * FOLDS / (time.perf_counter() - started)


def main() -> None:
    bars = synthetic_bars(100_000)
    template = builtin_template("ema_cross")
    with tempfile.TemporaryDirectory() as folder:
        sqlite = trials_per_second(f"sqlite:///{folder}/optuna.db", bars, template)
        journal = trials_per_second(f"journal:///{folder}/optuna.log", bars, template)
    print(f"cores: {os.cpu_count()}, workers: {WORKERS}, {TRIALS * FOLDS} trials on 100,000 bars")
    print(f"SQLite (default):  {sqlite:6.1f} trials/s")
    print(f"journal file:      {journal:6.1f} trials/s")
    print(
        json.dumps(
            {
                "benchmark": "search_trials_per_second_100k_bars",
                "value": round(sqlite, 1),
                "goal": 50,
                "unit": "trials/s (SQLite storage, 2 workers)",
                "journal_storage_value": round(journal, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
