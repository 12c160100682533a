"""TradingView reference for the indicator tests: pynecore (an independent bar-by-bar
implementation of Pine's built-ins, installed with the dev extras) runs Pine scripts over bars
frames, offline.

It runs in a subprocess: importing pynecore installs an import hook for the whole interpreter.
One subprocess runs every job, so a test module pays its start-up once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["RUNNER", "run_pine_reference"]

RUNNER = """
import json, sys
from datetime import time
from pathlib import Path
import numpy as np
from pynecore.core.script_runner import ScriptRunner
from pynecore.core.syminfo import SymInfo, SymInfoInterval, SymInfoSession
from pynecore.types.ohlcv import OHLCV

jobs = json.loads(Path(sys.argv[1]).read_text())
days = range(7)
syminfo = SymInfo(
    prefix="TEST", description="EUR/USD", ticker="EURUSD", currency="USD", basecurrency="EUR",
    period="60", type="forex", volumetype="base", mintick=1e-5, pricescale=100000, minmove=1,
    pointvalue=1.0, mincontract=1.0, timezone="UTC",
    opening_hours=[SymInfoInterval(day=d, start=time(0, 0, 0), end=time(23, 59, 59)) for d in days],
    session_starts=[SymInfoSession(day=d, time=time(0, 0, 0)) for d in days],
    session_ends=[SymInfoSession(day=d, time=time(23, 59, 59)) for d in days],
)
for job in jobs:
    data = np.load(job["bars"])
    columns = [data[name] for name in ("open", "high", "low", "close", "volume")]
    candles = [
        OHLCV(int(t), *(float(column[i]) for column in columns)) for i, t in enumerate(data["ts"])
    ]
    runner = ScriptRunner(
        Path(job["script"]), candles, syminfo, lossless_prices=True, lossless_volume=True
    )
    rows = [plots for _, plots in runner.run_iter()]
    np.savez(job["out"], **{key: np.array([row[key] for row in rows], dtype=float) for key in rows[0]})
"""

_BAR_COLUMNS = ("open", "high", "low", "close", "volume")


def run_pine_reference(
    jobs: Mapping[str, tuple[pl.DataFrame, str]], work_dir: Path
) -> dict[str, dict[str, np.ndarray]]:
    """Run each job's Pine script (pynecore's ``@pyne`` Python form) over its bars in one
    pynecore subprocess; return, per job name, every plot by its title (float64, NaN for na).

    ``jobs`` maps a name to ``(bars, script)``: a bars frame with ``ts`` (a datetime) and
    ``open, high, low, close, volume``, and the script's text. A frame shared by several jobs is
    written once. ``work_dir`` receives the bars, scripts and results. Fails the calling test
    (``AssertionError`` with pynecore's error output) when the subprocess fails."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    written: dict[int, Path] = {}
    entries = []
    for index, (name, (bars, script)) in enumerate(jobs.items()):
        if id(bars) not in written:
            path = work / f"bars_{len(written)}.npz"
            np.savez(
                path,
                ts=bars["ts"].dt.epoch("ms").to_numpy(),
                **{column: bars[column].to_numpy() for column in _BAR_COLUMNS},
            )
            written[id(bars)] = path
        script_path = work / f"script_{index}.py"
        script_path.write_text(script)
        entries.append(
            {
                "name": name,
                "bars": str(written[id(bars)]),
                "script": str(script_path),
                "out": str(work / f"out_{index}.npz"),
            }
        )
    (work / "jobs.json").write_text(json.dumps(entries))
    (work / "runner.py").write_text(textwrap.dedent(RUNNER))
    done = subprocess.run(
        [sys.executable, str(work / "runner.py"), str(work / "jobs.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
    )
    assert done.returncode == 0, (
        f"pynecore failed (pip install -e '.[dev]'):\n{done.stderr[-3000:]}"
    )
    result = {}
    for entry in entries:
        with np.load(entry["out"]) as saved:
            result[entry["name"]] = {key: saved[key] for key in saved.files}
    return result


# ---------------------------------------------------------------------------------------------
# Comparing with the reference

TOL = 1e-9  # the agreement asked of every comparison, relative to the series' scale


def first_defined(values: np.ndarray) -> int:
    defined = np.flatnonzero(~np.isnan(values))
    return int(defined[0]) if defined.size else len(values)


def assert_within(ours: np.ndarray, ref: np.ndarray, *, where=None, tol: float = TOL) -> None:
    """Equal NaN pattern and |ours - ref| <= tol * scale on every bar, where scale is the largest
    |ref| of the series (1 at least): 1e-9 absolute for prices, 1e-7 for an oscillator in 0..100."""
    ours = np.asarray(ours, dtype=float)
    ref = np.where(np.isfinite(ref), ref, np.nan)  # Pine's na() is true for inf as well
    if where is not None:
        ours, ref = ours[where], ref[where]
    mismatch = np.flatnonzero(np.isnan(ours) != np.isnan(ref))
    assert mismatch.size == 0, (
        f"na differs at bars {mismatch[:10]}: {ours[mismatch[:5]]} vs {ref[mismatch[:5]]}"
    )
    scale = max(1.0, float(np.nanmax(np.abs(ref)))) if np.isfinite(ref).any() else 1.0
    error = np.abs(ours - ref)
    worst = int(np.nanargmax(error)) if np.isfinite(error).any() else 0
    assert np.nanmax(error, initial=0.0) <= tol * scale, (
        f"max |diff| {np.nanmax(error)} at bar {worst}: {ours[worst]} vs {ref[worst]}"
    )


def reference_grid(
    datasets: Mapping[str, pl.DataFrame],
    runs: list[tuple[str, str]],
    script: str,
    param_sets: Mapping[str, object],
    work_dir: Path,
) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """The reference's plots for each (data set, parameter set) of ``runs``: ``script`` is a
    :meth:`str.format` template over the parameter set's fields (a dataclass), one pynecore run
    for all of them (:func:`run_pine_reference`)."""
    import dataclasses

    jobs = {
        f"{data_name}_{params_name}": (
            datasets[data_name],
            script.format(**dataclasses.asdict(param_sets[params_name])),
        )
        for data_name, params_name in runs
    }
    result = run_pine_reference(jobs, work_dir)
    return {run: result[f"{run[0]}_{run[1]}"] for run in runs}
