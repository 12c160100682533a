"""Benchmark: walk-forward Optuna search throughput on 100k bars, per storage, 1 and 2 workers.

The built-in ``ema_cross`` template (EMA cross + ADX filter + ATR stop/take, five parameters) on
100,000 synthetic one-minute bars (the random walk of ``bench_backtest.py``), two walk-forward
folds, ``--trials`` trials per fold, with 1 and 2 worker processes on one storage each: an
SQLite file, Optuna's journal file (the default), and a PostgreSQL server (a throwaway local cluster
with the server's default, durable settings; :mod:`aiopt_lib.strategy.localpg`). Each trial is
one full-history backtest plus the window scores; the workers stop at exactly ``n_trials`` per
study. The time covers starting the workers, the trials and the storage writes (not the ranking).
There is no peer: the goal is 50 trials/s with 2 workers on the default storage, on 2 cores.

    .venv/bin/python benchmarks/bench_search.py [--trials 400] [--storages sqlite,journal,postgresql]

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_backtest import synthetic_bars

from aiopt_lib.strategy.localpg import find_postgres_bin, local_postgres
from aiopt_lib.strategy.search import SearchConfig, builtin_template, optimise

FOLDS = 2
GOAL = 50.0


@contextlib.contextmanager
def storage_url(kind: str, folder: Path, name: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder}/{name}.db"
    elif kind == "journal":
        yield f"journal://{folder}/{name}.log"
    else:
        with local_postgres(name) as url:
            yield url


def trials_per_second(url: str, bars, template, trials: int, workers: int, study: str) -> float:
    config = SearchConfig(n_trials=trials, n_folds=FOLDS, min_trades=1, study_name=study)
    started = time.perf_counter()
    optimise(bars, template, config, url, workers=workers, progress=False)
    return trials * FOLDS / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400, help="trials per fold")
    parser.add_argument("--storages", default="sqlite,journal,postgresql")
    args = parser.parse_args()
    kinds = [k for k in args.storages.split(",") if k]
    if "postgresql" in kinds and find_postgres_bin() is None:
        print("PostgreSQL is not installed (apt-get install postgresql): left out")
        kinds.remove("postgresql")
    bars = synthetic_bars(100_000)
    template = builtin_template("ema_cross")
    # compile the indicators and the engine once, outside the timings
    with tempfile.TemporaryDirectory() as folder:
        trials_per_second(f"journal://{folder}/warm.log", bars, template, 5, 1, "warm")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in kinds:
            for workers in (1, 2):
                with storage_url(kind, Path(folder), f"bench_{kind}_{workers}") as url:
                    rate = trials_per_second(url, bars, template, args.trials, workers, "bench")
                figures[f"{kind}_{workers}w"] = round(rate, 1)
                print(f"{kind:<11} {workers} worker(s): {rate:6.1f} trials/s")
    print(f"cores: {os.cpu_count()}, {args.trials * FOLDS} trials on 100,000 bars per measurement")
    value = figures.get("journal_2w")
    print(
        json.dumps(
            {
                "benchmark": "search_trials_per_second_100k_bars",
                "value": value,
                "goal": GOAL,
                "unit": "trials/s (default journal-file storage, 2 workers)",
                "meets_goal": value is not None and value >= GOAL,
                **{f"{k}_trials_s": v for k, v in figures.items()},
                "trials_per_fold": args.trials,
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
