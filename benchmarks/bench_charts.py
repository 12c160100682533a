"""Model-input chart images: aiopt's numba renderer against mplfinance, in one run.

The same 64-bar windows of the real EUR/USD hourly sample (``load_sample()``), drawn at 224×224 px
as candles with a volume pane and encoded as PNG in memory:

* aiopt: ``render_windows(bars, ends, 64, RenderSpec(), output="png")``: numba drawing into a
  reused buffer, palette PNG (zlib level 1), across all cores (``workers=None``; the time includes
  starting the worker processes) and in one process (``workers=1``). Best of ``--repeat`` rounds
  after a warm-up call (the numba kernels load from the cache once per process).
* mplfinance: ``mpf.plot(window, type="candle", volume=True, figsize=(2.24, 2.24),
  axisoff=True, tight_layout=True, returnfig=True)`` saved with ``fig.savefig(BytesIO,
  format="png", dpi=100)``, the Agg backend, then ``plt.close``. Axes are off (a model needs no
  tick labels, and drawing them would only slow mplfinance down) and the layout is tight, so the
  chart fills the image as aiopt's does; the windows are pandas frames sliced from one frame
  converted beforehand, so the conversion is not counted against it. Fewer windows, since it is
  slow (one core: it holds the GIL and has no parallel mode).

Both outputs are checked to be 224×224 PNGs. Prints a table, then one JSON object as the last
line (ours = aiopt on all cores, images per second; speedup = our rate / mplfinance's rate, which
is mplfinance's time per image / ours).

    .venv/bin/python benchmarks/bench_charts.py [--images 5000] [--peer-images 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mplfinance as mpf
import numpy as np
from PIL import Image

from aiopt_lib.data.sources import load_sample
from aiopt_lib.features import render

WINDOW = 64
SIZE = 224


def aiopt_rate(bars, ends: np.ndarray, workers: int | None, repeat: int) -> tuple[float, list]:
    spec = render.RenderSpec(width=SIZE, height=SIZE)
    render.render_windows(bars, ends[:WINDOW], WINDOW, spec, output="png", workers=1)  # warm up
    best, pngs = float("inf"), []
    for _ in range(repeat):
        started = time.perf_counter()
        pngs = render.render_windows(bars, ends, WINDOW, spec, output="png", workers=workers)
        best = min(best, time.perf_counter() - started)
    return len(ends) / best, pngs


def mplfinance_png(window) -> bytes:
    fig, _ = mpf.plot(
        window,
        type="candle",
        volume=True,
        figsize=(SIZE / 100, SIZE / 100),
        axisoff=True,
        tight_layout=True,
        returnfig=True,
        warn_too_much_data=10**9,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def mplfinance_rate(frame, ends: np.ndarray) -> tuple[float, list]:
    windows = [frame.iloc[end - WINDOW + 1 : end + 1] for end in ends]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for window in windows[:3]:  # warm up: font cache, first figure
            mplfinance_png(window)
        started = time.perf_counter()
        pngs = [mplfinance_png(window) for window in windows]
        elapsed = time.perf_counter() - started
    return len(ends) / elapsed, pngs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--peer-images", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # "findfont" chatter

    bars = load_sample()
    available = np.arange(WINDOW - 1, bars.height)
    ends = np.resize(available, args.images)  # wraps around when asking for more than the sample
    peer_ends = ends[np.linspace(0, len(ends) - 1, args.peer_images).astype(np.int64)]
    frame = (
        bars.to_pandas()
        .set_index("ts")
        .rename(columns=str.capitalize)[["Open", "High", "Low", "Close", "Volume"]]
    )

    cores = os.cpu_count() or 1
    ours_all, pngs = aiopt_rate(bars, ends, None, args.repeat)
    ours_one, pngs_one = aiopt_rate(bars, ends, 1, args.repeat)
    assert pngs == pngs_one, "results differ between worker counts"
    peer, peer_pngs = mplfinance_rate(frame, peer_ends)

    for png in (pngs[0], pngs[-1], peer_pngs[0]):
        assert Image.open(io.BytesIO(png)).size == (SIZE, SIZE)
    ours_kb = np.mean([len(p) for p in pngs]) / 1024
    peer_kb = np.mean([len(p) for p in peer_pngs]) / 1024

    print(f"{WINDOW}-bar windows of the EUR/USD H1 sample, {SIZE}x{SIZE} candles + volume, PNG")
    print(f"{'':34s} {'images':>7s} {'images/s':>10s} {'KiB/image':>10s} {'vs mplfinance':>14s}")
    rows = [
        (f"aiopt, all cores ({cores})", len(ends), ours_all, ours_kb),
        ("aiopt, one core", len(ends), ours_one, ours_kb),
        (f"mplfinance {mpf.__version__}", len(peer_ends), peer, peer_kb),
    ]
    for name, count, rate, kib in rows:
        print(f"{name:34s} {count:7d} {rate:10.1f} {kib:10.1f} {rate / peer:13.1f}x")
    print(
        json.dumps(
            {
                "benchmark": "chart_png_224_64bars",
                "ours": round(ours_all, 1),
                "peer": f"mplfinance {mpf.__version__}",
                "peer_value": round(peer, 2),
                "unit": "images/s",
                "speedup": round(ours_all / peer, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
