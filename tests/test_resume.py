"""Resume, force, failure records, kill-and-rerun, monitoring figures and index.html content of
runs (aiopt_lib.runs.runner), on tiny notebooks built here and executed for real by papermill."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
from notebook_helpers import write_config, write_notebook

from aiopt_lib.core.streams import Streams
from aiopt_lib.runs.runner import (
    SKIPPED_MESSAGE,
    StageFailedError,
    load_run_config,
    read_stage_record,
    run_pipeline,
    stage_key,
)

# stage a: a random token (so a recomputation is visible) + bars.parquet + ranking.json
STAGE_A = [
    "import json, secrets\nfrom pathlib import Path\nimport polars as pl\n"
    "Path(run_dir, 'a.txt').write_text(f'{n}:{secrets.token_hex(8)}')",
    "pl.DataFrame({'close': [1.1, 1.2, float(n)]}).write_parquet(Path(run_dir, 'bars.parquet'))",
    "top = [{'rank': r, 'spec': {'params': {'fast': 5 + r, 'slow': 30}}, 'deflated_sharpe': 0.9 - r / 10,\n"
    "        'out_of_sample': {'sharpe': 1.5 - r / 10, 'total_return': 0.04, 'max_drawdown': 0.02,\n"
    "                          'trades': 10 + r}} for r in range(1, 7)]\n"
    "Path(run_dir, 'ranking.json').write_text(json.dumps({'top': top, 'pbo': {'pbo': 0.125}}))",
]
# stage b: sleeps, then derives from a's artifact
STAGE_B = [
    "import time\nfrom pathlib import Path\ntime.sleep(sleep_s)\n"
    "Path(run_dir, 'b.txt').write_text(Path(run_dir, 'a.txt').read_text() + f'|{factor}')",
]
STAGE_C = [
    "from pathlib import Path\nPath(run_dir, 'c.txt').write_text(Path(run_dir, 'b.txt').read_text())"
]


def make_pipeline(tmp_path: Path, *, sleep_s: float = 0.0) -> Path:
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(nbdir / "a.ipynb", STAGE_A, "n = 1\nrun_dir = '.'")
    write_notebook(nbdir / "b.ipynb", STAGE_B, "factor = 1\nsleep_s = 0.0\nrun_dir = '.'")
    write_notebook(nbdir / "c.ipynb", STAGE_C, "run_dir = '.'")
    return write_config(
        tmp_path / "run.yaml",
        "name: t\nnotebooks_dir: nbs\nparameters: {n: 3}\nnotebooks:\n"
        f"  - a\n  - notebook: b\n    parameters: {{sleep_s: {sleep_s}}}\n  - c\n",
    )


def run(tmp_path: Path, config: Path, *overrides: str, force: bool = False):
    messages: list[str] = []
    result = run_pipeline(
        load_run_config(config, list(overrides)),
        runs_dir=tmp_path / "runs",
        reports_dir=tmp_path / "reports",
        run_id="r",
        force=force,
        log=messages.append,
    )
    return result, messages


def artifact(tmp_path: Path, name: str) -> tuple[str, int]:
    path = tmp_path / "runs" / "r" / name
    return path.read_text(), path.stat().st_mtime_ns


def test_stage_key_changes_with_notebook_parameters_and_upstream(tmp_path):
    nb = write_notebook(tmp_path / "x.ipynb", ["y = 1"], "n = 1")
    key = stage_key(nb, {"n": 1}, [])
    assert key == stage_key(nb, {"n": 1, "run_dir": "/elsewhere"}, [])  # run_dir is not an input
    assert key != stage_key(nb, {"n": 2}, [])
    assert key != stage_key(nb, {"n": 1}, ["upstream"])
    write_notebook(nb, ["y = 2"], "n = 1")
    assert key != stage_key(nb, {"n": 1}, [])


@pytest.mark.slow
def test_resume_skips_unchanged_reruns_downstream_and_force(tmp_path):
    config = make_pipeline(tmp_path, sleep_s=1.0)
    first, _ = run(tmp_path, config)
    assert [s.status for s in first.steps] == ["ok", "ok", "ok"]
    a1, b1, c1 = (artifact(tmp_path, f) for f in ("a.txt", "b.txt", "c.txt"))
    assert c1[0] == b1[0] == a1[0] + "|1"

    # same configuration, same run id: nothing recomputed
    again, messages = run(tmp_path, config)
    assert [s.status for s in again.steps] == ["skipped"] * 3
    assert all(SKIPPED_MESSAGE in m for m in messages)
    assert [artifact(tmp_path, f) for f in ("a.txt", "b.txt", "c.txt")] == [a1, b1, c1]

    # a parameter of b changes: a is reused, b and c rerun
    changed, _ = run(tmp_path, config, "b.factor=2")
    assert [s.status for s in changed.steps] == ["skipped", "ok", "ok"]
    assert artifact(tmp_path, "a.txt") == a1
    assert artifact(tmp_path, "c.txt")[0] == a1[0] + "|2"

    # the notebook of a changes: everything reruns
    write_notebook(tmp_path / "nbs" / "a.ipynb", [*STAGE_A, "x = 1"], "n = 1\nrun_dir = '.'")
    edited, _ = run(tmp_path, config, "b.factor=2")
    assert [s.status for s in edited.steps] == ["ok", "ok", "ok"]
    a2 = artifact(tmp_path, "a.txt")
    assert a2[0] != a1[0]
    assert artifact(tmp_path, "c.txt")[0] == a2[0] + "|2"

    # force reruns all although nothing changed
    forced, _ = run(tmp_path, config, "b.factor=2", force=True)
    assert [s.status for s in forced.steps] == ["ok", "ok", "ok"]
    assert artifact(tmp_path, "a.txt")[0] != a2[0]

    # monitoring: figures of b in its completion record, the stream and run.log
    run_dir = tmp_path / "runs" / "r"
    usage = read_stage_record(run_dir, "b")["usage"]
    assert usage["seconds"] >= 1.0  # b sleeps one second
    assert 0 < usage["cpu_seconds"] < usage["seconds"] * os.cpu_count()
    assert usage["peak_rss_mb"] > 10  # a Python kernel holds tens of MiB
    assert usage["gpu_memory_mb"] is None  # no GPU in the test environment
    events = Streams(run_dir).read("run_events")
    b_events = events.filter(pl.col("stage") == "b")
    assert b_events.get_column("event").cast(pl.String).to_list() == [
        "start", "end", "info", "start", "end", "start", "end", "start", "end",
    ]  # fmt: skip
    ends = b_events.filter(pl.col("event") == "end")
    assert (ends.get_column("duration_s") >= 1.0).all()
    assert (ends.get_column("peak_rss_mb") > 0).all()
    assert (ends.get_column("cpu_s") > 0).all()
    starts = b_events.filter(pl.col("event") == "start").get_column("ts")
    assert (ends.get_column("ts") - starts).dt.total_milliseconds().min() >= 1000
    log_lines = (run_dir / "run.log").read_text().splitlines()
    assert len(log_lines) == events.height
    assert sum(SKIPPED_MESSAGE in line for line in log_lines) == 4  # 3 then a

    # index.html: summary, data hash, versions, ranking top 5 with PBO
    page = forced.index.read_text()
    assert page.count("<td>ok</td>") == 3
    bars_hash = hashlib.sha256((run_dir / "bars.parquet").read_bytes()).hexdigest()
    assert bars_hash in page
    for package in ("polars", "numpy", "papermill", "python"):
        assert f"<td>{package}</td>" in page
    assert ">DSR</th>" in page
    assert "PBO 0.12: in 12% of the combinatorial splits" in page and "partly luck" not in page
    assert "fast=10" in page and "fast=11" not in page  # top 5 of 6
    assert "MiB" in page


@pytest.mark.slow
def test_failed_stage_is_not_marked_complete_and_resumes_there(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(
        nbdir / "a.ipynb",
        ["import secrets\nfrom pathlib import Path\nPath(run_dir, 'a.txt').write_text(secrets.token_hex(8))"],
        "run_dir = '.'",
    )  # fmt: skip
    write_notebook(nbdir / "b.ipynb", ["assert ok, 'b is broken'"], "ok = False\nrun_dir = '.'")
    config = write_config(tmp_path / "run.yaml", "notebooks_dir: nbs\nnotebooks: [a, b]\n")
    with pytest.raises(StageFailedError, match=r"b\.ipynb.*b\.html"):
        run(tmp_path, config)
    run_dir = tmp_path / "runs" / "r"
    assert read_stage_record(run_dir, "a") is not None
    assert read_stage_record(run_dir, "b") is None
    assert "b is broken" in (tmp_path / "reports" / "r" / "b.html").read_text()
    page = (tmp_path / "reports" / "r" / "index.html").read_text()
    assert "<td>failed: AssertionError: b is broken</td>" in page
    events = Streams(run_dir).read("run_events")
    assert events.filter(pl.col("stage") == "b").get_column("event").to_list() == [
        "start",
        "error",
    ]
    a1 = artifact(tmp_path, "a.txt")
    # the same failing configuration fails again at b, without recomputing a
    with pytest.raises(StageFailedError):
        run(tmp_path, config)
    assert artifact(tmp_path, "a.txt") == a1
    fixed, _ = run(tmp_path, config, "b.ok=true")
    assert [s.status for s in fixed.steps] == ["skipped", "ok"]
    assert artifact(tmp_path, "a.txt") == a1


def artifact_k(tmp_path: Path) -> tuple[str, int]:
    path = tmp_path / "runs" / "k" / "a.txt"
    return path.read_text(), path.stat().st_mtime_ns


def cli_run(tmp_path: Path, config: Path) -> list[str]:
    return [
        sys.executable, "-m", "aiopt_lib.runs.cli", "run", "--config", str(config),
        "--run-id", "k", "--runs-dir", str(tmp_path / "runs"),
        "--reports-dir", str(tmp_path / "reports"),
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_finished_stages(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(nbdir / "a.ipynb", STAGE_A, "n = 1\nrun_dir = '.'")
    # b says it started, then sleeps while the gate file exists (the first run is killed there)
    write_notebook(
        nbdir / "b.ipynb",
        [
            "import time\nfrom pathlib import Path\nPath(run_dir, 'b.started').write_text('')\n"
            "deadline = time.monotonic() + 30\n"
            "while Path(gate).exists() and time.monotonic() < deadline:\n    time.sleep(0.1)\n"
            "Path(run_dir, 'b.txt').write_text(Path(run_dir, 'a.txt').read_text())",
        ],
        "gate = ''\nrun_dir = '.'",
    )
    write_notebook(nbdir / "c.ipynb", STAGE_C, "run_dir = '.'")
    gate = tmp_path / "gate"
    gate.write_text("")
    config = write_config(
        tmp_path / "run.yaml",
        f"notebooks_dir: nbs\nparameters: {{gate: '{gate}'}}\nnotebooks: [a, b, c]\n",
    )
    run_dir = tmp_path / "runs" / "k"
    first = subprocess.Popen(
        cli_run(tmp_path, config), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    kernels: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "b.started").exists():
            assert first.poll() is None, first.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "stage b never started"
            time.sleep(0.1)
        kernels = psutil.Process(first.pid).children(recursive=True)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
        # ipykernel exits when its parent dies; make sure no orphan writes into the rerun
        for kernel in kernels:
            if kernel.is_running():
                kernel.kill()
    assert first.returncode == -signal.SIGKILL
    a_before = artifact_k(tmp_path)
    assert read_stage_record(run_dir, "a") is not None
    assert read_stage_record(run_dir, "b") is None and not (run_dir / "b.txt").exists()
    gate.unlink()

    second = subprocess.run(
        cli_run(tmp_path, config), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"[a] {SKIPPED_MESSAGE}" in second.stderr
    assert artifact_k(tmp_path) == a_before
    assert (run_dir / "c.txt").read_text() == (run_dir / "a.txt").read_text()
    assert all(read_stage_record(run_dir, s) is not None for s in "abc")
    log = (run_dir / "run.log").read_text()
    assert f"a info {SKIPPED_MESSAGE}" in log
    assert [line.split()[2] for line in log.splitlines() if line.split()[1] == "b"] == [
        "start",
        "start",
        "end",
    ]  # the killed attempt logged its start and nothing else
    leftovers = [
        p
        for folder in (run_dir, tmp_path / "reports" / "k")
        for p in folder.rglob("*")
        if ".tmp" in p.name
    ]
    assert leftovers == []
    page = (tmp_path / "reports" / "k" / "index.html").read_text()
    for stage, status in (("a", "skipped"), ("b", "ok"), ("c", "ok")):
        assert f'<a href="{stage}.html">{stage}</a></td><td>{status}</td>' in page
