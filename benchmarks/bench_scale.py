"""Benchmark: ten years of minute data in bounded memory (issue 18), time and peak memory per size.

(a) ticks -> 1-minute bars: ``--ticks`` synthetic ticks (default 100M) over ``--years`` (default
    10) of open FX hours (weekends and Christmas / New Year closed, ~1,600 ticks an open hour at
    the defaults) are written as a Dukascopy datafeed mirror of real LZMA ``.bi5`` hour files
    (not timed), then :func:`aiopt_lib.data.store.aggregate_ticks` turns them into a Hive
    dataset of 1-minute bars through the real decoder, month by month.
(b) bars: a dataset of ``max(--sizes)`` synthetic two-sided 1-minute bars (a random walk with
    the volatility of the embedded 2017 sample, closures as above); for each size N, the first
    N bars go through load (``load_bars`` on the dataset: the years of the range and the bid
    columns are read, then validated and cleaned) -> features (``--features indicators``, the
    default: the indicator and pattern frame ``aiopt features`` writes; ``full``:
    ``add_features``, the 64 model-input columns, 40 of them Float64) -> one search trial (``TrialEvaluator.backtest`` of the built-in
    ``ema_cross`` at its default parameters, then the window metrics of the first walk-forward
    fold, as a trial scores itself).

Each measurement runs in its own process; its peak memory is the process's resident high-water
mark (``VmHWM``), read after each stage. The numba kernels are compiled on a small slice first,
outside the timing. Goals: peak < 2 GiB for the tick aggregation whatever the number of ticks,
< 4 GiB at 10M bars, time linear in size (the time per bar at the largest size within 1.5x of
the smallest). There is no peer: the goal is the figure. Prints one JSON object last.

    .venv/bin/python benchmarks/bench_scale.py [--ticks 100000000] [--years 10]
        [--sizes 1000000,3700000,10000000] [--features full|indicators] [--skip-ticks]
        [--skip-bars] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYMBOL = "EURUSD"
TICKS_START = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
BARS_START = dt.datetime(2000, 1, 3, tzinfo=dt.UTC)
GOAL_BARS_MB = 4096  # at 10M bars
GOAL_TICKS_MB = 2048
LINEAR_FACTOR = 1.5


def peak_mb() -> float:
    """This process's resident high-water mark in MiB (VmHWM: of this program only, unlike
    ru_maxrss, which a child can inherit from the process that forked it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ---------------------------------------------------------------------------------------------
# Children: one measurement each, printing one JSON line


def child_ticks(mirror: Path, root: Path) -> dict[str, float]:
    from aiopt_lib.data.store import aggregate_ticks

    started = time.perf_counter()
    report = aggregate_ticks(mirror, root, SYMBOL, overwrite=True)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_mb": peak_mb(),
        "ticks": report.ticks,
        "bars": report.bars,
        "files": report.files,
        "max_ticks_in_flight": report.max_ticks_in_flight,
    }


def _pipeline(root: Path, end: dt.datetime | None, features: str) -> dict[str, float]:
    import polars as pl

    from aiopt_lib.data.sources import load_bars
    from aiopt_lib.features.causal import add_features
    from aiopt_lib.features.dataset import indicator_and_pattern_frame
    from aiopt_lib.strategy.search import (
        SearchConfig,
        TrialEvaluator,
        builtin_template,
        walk_forward_folds,
        window_metrics,
    )

    out: dict[str, float] = {}
    started = time.perf_counter()
    bars = load_bars(root, symbol=SYMBOL, side="bid", end=end)
    out["load_s"] = time.perf_counter() - started
    out["load_peak_mb"] = peak_mb()

    mark = time.perf_counter()
    make = add_features if features == "full" else indicator_and_pattern_frame
    frame = make(bars)
    out["features_columns"] = frame.width
    out["features_defined"] = frame.select(pl.col(frame.columns[-1]).is_not_null().sum()).item()
    del frame  # what a model would keep of it is its predictions, not the frame
    gc.collect()
    out["features_s"] = time.perf_counter() - mark
    out["features_peak_mb"] = peak_mb()

    mark = time.perf_counter()
    template = builtin_template("ema_cross")
    evaluator = TrialEvaluator(bars, template)
    result = evaluator.backtest(dict(template.spec.params))
    fold = walk_forward_folds(bars, SearchConfig(n_folds=2))[0]
    train = window_metrics(result, fold.train_start, fold.train_stop, evaluator.timeframe)
    test = window_metrics(result, fold.test_start, fold.test_stop, evaluator.timeframe)
    out["trial_s"] = time.perf_counter() - mark
    out["trial_peak_mb"] = peak_mb()
    out["trades"] = result.trades.height
    out["train_trades"] = train["trades"]
    out["test_trades"] = test["trades"]
    out["bars"] = bars.height
    out["seconds"] = time.perf_counter() - started
    out["peak_mb"] = peak_mb()
    return out


def child_bars(root: Path, end: dt.datetime, warm_end: dt.datetime, features: str) -> dict:
    _pipeline(root, warm_end, features)  # compiles the numba kernels, loads the modules
    gc.collect()
    return _pipeline(root, end, features)


def run_child(*args: str) -> dict:
    """Run this file with ``--child ...`` in a fresh process; its last line, parsed."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"child {args[0]} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The parent: makes the data, runs the children, reports


def bench_ticks(work: Path, ticks: int, years: int) -> dict[str, float]:
    from aiopt_lib.data.synthetic import write_tick_mirror

    mirror = work / "mirror"
    end = TICKS_START.replace(year=TICKS_START.year + years)
    started = time.perf_counter()
    written = write_tick_mirror(mirror, SYMBOL, ticks=ticks, start=TICKS_START, end=end, seed=18)
    generate = time.perf_counter() - started
    print(
        f"mirror: {written.ticks:,} ticks in {written.files:,} hour files "
        f"({written.empty:,} empty, {written.bytes / 2**20:,.0f} MiB) written in {generate:.0f} s",
        flush=True,
    )
    result = run_child("ticks", str(mirror), str(work / "from_ticks"))
    rate = result["ticks"] / result["seconds"]
    print(
        f"ticks -> 1m: {result['ticks']:,} ticks -> {result['bars']:,} bars in "
        f"{result['seconds']:.1f} s ({rate / 1e6:.2f}M ticks/s), peak {result['peak_mb']:,.0f} MiB, "
        f"at most {result['max_ticks_in_flight']:,} ticks held",
        flush=True,
    )
    return {
        f"ticks_{ticks}_s": round(result["seconds"], 2),
        "ticks_peak_mb": round(result["peak_mb"]),
        "ticks_per_s": round(rate),
        "ticks_generate_s": round(generate, 1),
        "ticks_bars": result["bars"],
        "ticks_max_in_flight": result["max_ticks_in_flight"],
    }


def bench_bars(work: Path, sizes: list[int], features: str) -> tuple[dict, list[dict]]:
    from aiopt_lib.data.store import scan_bars
    from aiopt_lib.data.synthetic import write_synthetic_bars

    root = work / "bars"
    largest = max(sizes)
    started = time.perf_counter()
    write_synthetic_bars(root, SYMBOL, largest + 1, start=BARS_START, seed=18)
    ts = scan_bars(root, SYMBOL).select("ts").collect().get_column("ts")
    print(
        f"dataset: {ts.len():,} bars {ts[0]:%Y-%m-%d} .. {ts[-1]:%Y-%m-%d} written in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    warm_end = ts[2000]
    fields: dict = {}
    rows = []
    for size in sizes:
        result = run_child("bars", str(root), ts[size].isoformat(), warm_end.isoformat(), features)
        assert result["bars"] == size, (result["bars"], size)
        rows.append(result)
        print(
            f"{size:>11,} bars: load {result['load_s']:6.1f} s, features {result['features_s']:6.1f} s "
            f"({int(result['features_columns'])} columns), trial {result['trial_s']:6.1f} s "
            f"({int(result['trades']):,} trades) = {result['seconds']:6.1f} s "
            f"({result['seconds'] / size * 1e6:.2f} us/bar); peak {result['peak_mb']:,.0f} MiB "
            f"(after load {result['load_peak_mb']:,.0f}, features {result['features_peak_mb']:,.0f})",
            flush=True,
        )
        fields[f"bars_{size}_s"] = round(result["seconds"], 2)
        fields[f"bars_{size}_peak_mb"] = round(result["peak_mb"])
        for stage in ("load", "features", "trial"):
            fields[f"bars_{size}_{stage}_s"] = round(result[f"{stage}_s"], 2)
    return fields, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=100_000_000, help="ticks to aggregate")
    parser.add_argument("--years", type=int, default=10, help="years of the tick mirror")
    parser.add_argument(
        "--sizes",
        default="1000000,3700000,10000000",
        help="bar counts, comma-separated (default 1M, 3.7M, 10M)",
    )
    parser.add_argument(
        "--features",
        choices=["full", "indicators"],
        default="indicators",
        help="indicators: the frame of aiopt features (what a search reads); full: add_features",
    )
    parser.add_argument("--skip-ticks", action="store_true", help="no tick aggregation")
    parser.add_argument("--skip-bars", action="store_true", help="no bars pipeline")
    parser.add_argument("--workdir", help="folder for the data (default: a temporary one)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "ticks":
            result = child_ticks(Path(rest[0]), Path(rest[1]))
        else:
            root, end, warm_end, features = rest
            result = child_bars(
                Path(root),
                dt.datetime.fromisoformat(end),
                dt.datetime.fromisoformat(warm_end),
                features,
            )
        print(json.dumps(result))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"cores: {os.cpu_count()}, features: {args.features}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        fields: dict = {}
        if not args.skip_ticks:
            fields.update(bench_ticks(work, args.ticks, args.years))
        rows: list[dict] = []
        if not args.skip_bars:
            bar_fields, rows = bench_bars(work, sizes, args.features)
            fields.update(bar_fields)

    goal: dict[str, object] = {}
    meets = True
    linear = None
    if rows:
        per_bar = [r["seconds"] / r["bars"] for r in rows]
        linear = per_bar[-1] <= LINEAR_FACTOR * per_bar[0]
        fields["us_per_bar"] = {
            str(r["bars"]): round(p * 1e6, 3) for r, p in zip(rows, per_bar, strict=True)
        }
        goal["linear"] = f"time per bar at {sizes[-1]:,} within {LINEAR_FACTOR}x of {sizes[0]:,}"
        meets &= linear
        if 10_000_000 in sizes:
            goal["bars_10000000_peak_mb"] = f"< {GOAL_BARS_MB}"
            meets &= fields["bars_10000000_peak_mb"] < GOAL_BARS_MB
    if "ticks_peak_mb" in fields:
        goal["ticks_peak_mb"] = f"< {GOAL_TICKS_MB}"
        meets &= fields["ticks_peak_mb"] < GOAL_TICKS_MB
    value = fields.get(f"bars_{sizes[-1]}_s", fields.get(f"ticks_{args.ticks}_s"))
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "value": value,
                "unit": "s",
                "goal": goal,
                "features": args.features,
                **fields,
                "linear": linear,
                "meets_goal": meets,
            }
        )
    )


if __name__ == "__main__":
    main()
