"""Searches and batches past one machine: Optuna studies on a real PostgreSQL server shared by
workers of several (simulated) machines, search workers and batch runs as Ray tasks on a local Ray
(issue 18). The servers are real: a throwaway PostgreSQL cluster and a Ray started here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import polars as pl
import pytest
from notebook_helpers import write_notebook
from postgres_server import PostgresServer, ensure_postgres_bin

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.runs.batch import run_batch
from aiopt_lib.runs.cli import main
from aiopt_lib.strategy.search import fail_dead_trials, open_storage

pytestmark = pytest.mark.timeout(600)

COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
FAIL = optuna.trial.TrialState.FAIL


@pytest.fixture(scope="module")
def postgres():
    bindir = ensure_postgres_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed and apt-get could not install it")
    folder = Path(tempfile.mkdtemp(prefix="aiopt-test-pg-"))
    server = PostgresServer(bindir, folder, durable=False)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database(postgres) -> str:
    """A fresh database of the server for one test."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def ray_local():
    """A Ray started here for the module (num_cpus=2, as the CI machine has), shared by the
    in-process tests; the CLI test starts its own."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def fold_trials(url: str, fold: int, study: str = "aiopt") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"{study}-fold{fold}", storage=url).get_trials(
        deepcopy=False
    )


def counted(trials) -> int:
    return sum(t.state in COUNTED for t in trials)


def search_argv(out: Path, url: str, trials: int, *extra: str) -> list[str]:
    return [
        "search", "--out", str(out), "--storage", url, "--trials", str(trials), "--folds", "2",
        "--min-trades", "1", "--holdout", "0", "--no-progress", *extra,
    ]  # fmt: skip


def spawn_worker(argv: list[str], host: str, log: Path, **env: str) -> subprocess.Popen:
    """``aiopt search`` in its own process, as if on machine ``host``."""
    environ = {**os.environ, "AIOPT_WORKER_HOST": host, **env}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aiopt_lib.runs.cli", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
            start_new_session=True,
        )


def test_cli_search_on_postgresql_and_continue(database, tmp_path, capsys):
    assert database.startswith("postgresql+psycopg://aiopt@127.0.0.1:")
    assert main(search_argv(tmp_path / "a", database, 6)) == 0
    assert f"({database})" in capsys.readouterr().out
    assert (tmp_path / "a" / "ranking.json").is_file()
    assert not (tmp_path / "a" / "optuna.db").exists()
    for fold in range(2):
        assert counted(fold_trials(database, fold)) == 6
    # the same URL continues the studies, from another run folder
    assert main(search_argv(tmp_path / "b", database, 9)) == 0
    for fold in range(2):
        trials = fold_trials(database, fold)
        assert counted(trials) == 9 and len(trials) == 9


def test_a_plain_postgresql_url_uses_the_bundled_driver(postgres, database):
    plain = database.replace("postgresql+psycopg://", "postgresql://")
    storage = open_storage(plain)
    assert storage.engine.dialect.driver == "psycopg"
    wrong = plain.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(ConfigError, match=r"cannot connect.*no_such_database"):
        open_storage(wrong)


def test_workers_of_three_machines_share_each_fold_study_and_stop_at_exactly_n_trials(
    database, tmp_path
):
    n = 100  # enough that no worker can finish the studies before the others have started
    workers = [
        spawn_worker(search_argv(tmp_path / f"m{k}", database, n), f"machine-{k}", tmp_path / "log")
        for k in range(3)
    ]
    codes = [w.wait(timeout=400) for w in workers]
    assert codes == [0, 0, 0], (tmp_path / "log").read_text()[-3000:]
    machines = set()
    for fold in range(2):
        trials = fold_trials(database, fold)
        assert counted(trials) == n  # exactly, though three workers raced for the last slots
        for trial in trials:
            if trial.state == FAIL:
                assert trial.user_attrs.get("surplus") is True  # lost a race, nothing else
        machines |= {t.user_attrs["worker"].rsplit(":", 1)[0] for t in trials}
    assert len(machines) >= 2  # the work was shared
    # every machine's run folder ranked the same, complete studies
    frames = [pl.read_parquet(tmp_path / f"m{k}" / "trials.parquet") for k in range(3)]
    keys = ["fold", "trial"]
    assert frames[0].height > 0
    for frame in frames[1:]:
        assert frame.sort(keys).equals(frames[0].sort(keys))


def test_a_killed_worker_loses_only_its_running_trial_and_another_machine_finishes(
    database, tmp_path
):
    n = 60
    heartbeat = {"AIOPT_SEARCH_HEARTBEAT_S": "1"}  # grace period 3 s
    argv = search_argv(tmp_path / "a", database, n)
    first = spawn_worker(argv, "machine-a", tmp_path / "log", **heartbeat)
    deadline = time.monotonic() + 240
    while True:  # kill it mid-trial, after a few trials of the first fold
        assert first.poll() is None, (tmp_path / "log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker never got going"
        try:
            trials = fold_trials(database, 0)
        except KeyError:  # the study is not created yet
            time.sleep(0.2)
            continue
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if counted(trials) >= 8 and running:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
            break
        time.sleep(0.02)
    kept = {t.number for t in fold_trials(database, 0) if t.state in COUNTED}
    # another machine continues (the dead trial's heartbeat lapses: failed, and run again)
    second = spawn_worker(
        search_argv(tmp_path / "b", database, n), "machine-b", tmp_path / "log", **heartbeat
    )
    assert second.wait(timeout=400) == 0, (tmp_path / "log").read_text()[-3000:]
    trials = fold_trials(database, 0)
    assert kept <= {t.number for t in trials if t.state in COUNTED}  # nothing finished was lost
    assert counted(trials) == n and counted(fold_trials(database, 1)) == n
    lost = [t for t in trials if t.state == FAIL and not t.user_attrs.get("surplus")]
    assert len(lost) <= 1  # at most the one trial that was running when it died
    assert all(t.user_attrs["worker"].startswith("machine-a:") for t in lost)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_local_workers_trial_is_failed_at_once(database):
    """On one machine a dead worker is known by its process id, without waiting for heartbeats."""
    storage = open_storage(database)
    study = optuna.create_study(storage=storage, study_name="dead")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = os.environ.get("AIOPT_WORKER_HOST") or __import__("socket").gethostname()
    trial = study.ask()
    trial.set_user_attr("worker", f"{host}:{gone.pid}")
    alive = study.ask()
    alive.set_user_attr("worker", f"{host}:{os.getpid()}")
    other = study.ask()
    other.set_user_attr("worker", f"elsewhere:{gone.pid}")  # its heartbeat decides, not its pid
    assert fail_dead_trials(study) == 1
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {
        0: FAIL,
        1: optuna.trial.TrialState.RUNNING,
        2: optuna.trial.TrialState.RUNNING,
    }


def test_search_workers_as_ray_tasks_on_postgresql(ray_local, database, tmp_path, capsys):
    code = main(search_argv(tmp_path / "out", database, 24, "--ray", "--workers", "2"))
    assert code == 0, capsys.readouterr().err
    pids = set()
    for fold in range(2):
        trials = fold_trials(database, fold)
        assert counted(trials) == 24
        pids |= {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials}
    assert os.getpid() not in pids  # the trials ran in Ray's worker processes
    assert (tmp_path / "out" / "ranking.json").is_file()


TINY_PARAMETERS = """\
label = "x"
sharpe = None
fail = False
run_dir = ""
"""

TINY_WORK = """\
import json, os
from pathlib import Path
if fail:
    raise RuntimeError(f"planned failure of {label}")
Path(run_dir, "who.json").write_text(json.dumps({"pid": os.getpid(), "label": label}))
if sharpe is not None:
    ranking = {"schema_version": 1, "walk_forward": {"metrics": {"sharpe": sharpe}}}
    Path(run_dir, "ranking.json").write_text(json.dumps(ranking))
"""


def tiny_batch(folder: Path, runs: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_notebook(folder / "tiny.ipynb", [TINY_WORK], TINY_PARAMETERS)
    (folder / "base.yaml").write_text(
        "name: tiny\nnotebooks_dir: .\nnotebooks:\n  - notebook: tiny\n", encoding="utf-8"
    )
    batch = folder / "batch.yaml"
    batch.write_text(f"name: raybatch\nbase: base.yaml\n{runs}", encoding="utf-8")
    return batch


RUNS = """\
runs:
  - {label: a, sharpe: 0.5}
  - {label: b, sharpe: 1.5}
  - {label: c, fail: true}
"""


def test_batch_runs_as_ray_tasks_records_a_failure_and_resumes(ray_local, tmp_path):
    batch = tiny_batch(tmp_path / "study", RUNS)
    lines: list[str] = []
    kwargs = {"runs_dir": tmp_path / "runs", "reports_dir": tmp_path / "reports"}
    result = run_batch(batch, ray_address="local", log=lines.append, **kwargs)
    a, b, c = result.runs
    assert a.ok and b.ok and not c.ok
    assert "planned failure of c" in c.error
    assert a.metrics["wf_sharpe"] == 0.5 and b.metrics["wf_sharpe"] == 1.5
    pids = {json.loads((r.run_dir / "who.json").read_text())["pid"] for r in (a, b)}
    assert a.pid not in (None, os.getpid()) and b.pid != os.getpid()
    assert any(line.startswith("[3/3] ") for line in lines)  # progress
    page = result.index.read_text(encoding="utf-8")
    assert "planned failure of c" in page and f"../{a.run_id}/index.html" in page

    # again: the finished runs are skipped (their outcome reused), the failed one runs again
    lines.clear()
    again = run_batch(batch, ray_address="local", log=lines.append, **kwargs)
    assert sum("skipped" in line for line in lines) == 2
    assert [r.pid for r in again.runs[:2]] == [a.pid, b.pid]
    assert again.runs[0].metrics == a.metrics and not again.runs[2].ok
    assert pids == {json.loads((r.run_dir / "who.json").read_text())["pid"] for r in again.runs[:2]}
    # --rerun runs them all
    rerun = run_batch(batch, ray_address="local", rerun=True, **kwargs)
    assert rerun.runs[0].started > a.finished


def test_batch_ships_the_run_folders_back_from_the_node(ray_local, tmp_path):
    batch = tiny_batch(tmp_path / "study", "runs:\n  - {label: s, sharpe: 2.0}\n")
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    result = run_batch(batch, ray_address="local", ship=True, runs_dir=runs, reports_dir=reports)
    (run,) = result.runs
    assert run.ok, run.error
    # the notebook wrote into the node's temporary folder; the archive was unpacked here
    assert json.loads((runs / run.run_id / "who.json").read_text())["label"] == "s"
    assert run.metrics["wf_sharpe"] == 2.0
    assert (reports / run.run_id / "index.html").is_file()
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]  # no leftovers


def test_cli_batch_starts_a_local_ray(tmp_path):
    batch = tiny_batch(tmp_path / "study", "runs:\n  - {label: z, sharpe: 1.0}\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiopt_lib.runs.cli",
            "batch",
            str(batch),
            "--ray",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--reports-dir",
            str(tmp_path / "reports"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/1]" in done.stderr and "done" in done.stderr
    assert done.stdout.strip().endswith("raybatch/index.html")
