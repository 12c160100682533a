"""Load 1M one-minute EUR/USD bars from a Dukascopy-format CSV: aiopt against pandas, in one run.

aiopt's figure is the whole `load_bars` (sniff, parse, locate bad rows, validate, clean, canonical
bars); pandas' is only `read_csv` with the timestamp format given (no validation at all), so the
comparison flatters the peer. Prints one JSON object as its last line.

    .venv/bin/python benchmarks/bench_load.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from aiopt_lib.data.sources import load_bars


def write_csv(path: Path, rows: int, seed: int = 7) -> None:
    """A random walk of 1-minute bars, Monday to Friday, in the Dukascopy export format."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2015, 1, 5)
    minutes = np.arange(rows * 2)
    ts = np.datetime64(start) + minutes.astype("timedelta64[m]")
    weekday = (ts.astype("datetime64[D]").astype(np.int64) - 4) % 7  # 0 = Monday
    ts = ts[weekday < 5][:rows]
    close = 1.1 + np.cumsum(rng.normal(0, 5e-5, rows))
    open_ = np.concatenate([[1.1], close[:-1]])
    high = np.maximum(open_, close) + rng.uniform(0, 1e-4, rows)
    low = np.minimum(open_, close) - rng.uniform(0, 1e-4, rows)
    frame = pl.DataFrame(
        {
            "Time": pl.Series(ts).dt.strftime("%d.%m.%Y %H:%M:%S.000"),
            "Open": open_.round(5),
            "High": high.round(5),
            "Low": low.round(5),
            "Close": close.round(5),
            "Volume": rng.uniform(10, 500, rows).round(2),
        }
    )
    frame.write_csv(path)


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "EURUSD_M1_BID.csv"
        write_csv(path, args.rows)

        ours, bars = best_of(args.repeat, lambda: load_bars(path))

        def pandas_load() -> pd.DataFrame:
            frame = pd.read_csv(path)
            frame["Time"] = pd.to_datetime(frame["Time"], format="%d.%m.%Y %H:%M:%S.%f", utc=True)
            return frame

        peer, frame = best_of(args.repeat, pandas_load)
    assert bars.height == len(frame) == args.rows, (bars.height, len(frame))
    print(f"aiopt load_bars (parse + validate + clean): {ours:.3f} s for {args.rows:,} rows")
    print(f"pandas read_csv + to_datetime (parse only):  {peer:.3f} s")
    print(
        json.dumps(
            {
                "benchmark": "load_1m_bars_dukascopy_csv",
                "ours": round(ours, 4),
                "peer": "pandas",
                "peer_value": round(peer, 4),
                "unit": "s",
                "speedup": round(peer / ours, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
