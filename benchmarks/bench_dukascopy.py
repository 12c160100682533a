"""Decode two days of real Dukascopy EUR/USD tick files (48 hourly .bi5 files, 266,219 ticks) into
a frame: aiopt against duka (the PyPI Dukascopy downloader), in one run.

aiopt: `dukascopy.read_file` per file (LZMA, numpy record view, exact UTC times from the path,
float32 volumes as their shortest decimals) and one concat into a polars ticks frame.
duka 0.2.0: `duka.core.processor.decompress` per file (struct.unpack per record) and a pandas
DataFrame of the resulting tuples, as duka's own CSV writer consumes them.
Prints one JSON object as its last line. Needs `pip install -e ".[bench]"` (or `make bench`).

    .venv/bin/python benchmarks/bench_dukascopy.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import warnings
from pathlib import Path

import pandas as pd
import polars as pl

from aiopt_lib.data import dukascopy

DATA = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "dukascopy" / "EURUSD" / "2019" / "01"
)


def tick_files() -> list[Path]:
    return sorted(DATA.glob("0[45]/*h_ticks.bi5"))


def ours(files: list[Path]) -> pl.DataFrame:
    return pl.concat([dukascopy.read_file(f) for f in files])


def duka_decode(files: list[Path], blobs: dict[Path, bytes]) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        from duka.core.processor import decompress
    rows = []
    for f in files:
        # duka decodes a day's hours one by one; the month folder is 0-based
        day = dt.date(2019, 2, int(f.parent.name))
        rows.extend(decompress(day, memoryview(blobs[f])))
    return pd.DataFrame(rows, columns=["time", "ask", "bid", "ask_volume", "bid_volume"])


def best_of(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    files = tick_files()
    blobs = {f: f.read_bytes() for f in files}
    our_time, ticks = best_of(args.repeat, lambda: ours(files))
    peer_time, frame = best_of(args.repeat, lambda: duka_decode(files, blobs))
    assert ticks.height == len(frame) == 266_219, (ticks.height, len(frame))
    assert abs(ticks["bid"].sum() - frame["bid"].sum()) < 1e-6
    print(f"aiopt: {our_time * 1e3:.1f} ms, {ticks.height / our_time / 1e6:.2f} M ticks/s")
    print(f"duka:  {peer_time * 1e3:.1f} ms, {len(frame) / peer_time / 1e6:.2f} M ticks/s")
    print(
        json.dumps(
            {
                "benchmark": "decode_dukascopy_ticks_266k",
                "ours": round(our_time * 1e3, 2),
                "peer": "duka 0.2.0",
                "peer_value": round(peer_time * 1e3, 2),
                "unit": "ms",
                "speedup": round(peer_time / our_time, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
