"""Batch reruns: one run configuration, many parameter sets, run in parallel, compared on one page.

A batch file (YAML) names a base run configuration and the parameter sets to run it with, either as
a grid (the Cartesian product of each parameter's values) or as an explicit list::

    name: grid_templates          # optional; default: the file's stem
    base: default.yaml            # a run configuration, relative to this file
    workers: 2                    # optional; runs executed at the same time (default 1)
    parameters:                   # optional; overrides given to every run
      04_optuna_search.n_trials: 10
    grid:                         # either grid ...
      04_optuna_search.template: [ema_cross, bollinger_reversion]
      04_optuna_search.n_folds: [2, 3]
    # runs:                       # ... or runs: one mapping of overrides per run
    #   - {04_optuna_search.template: ema_cross}
    #   - {04_optuna_search.template: pattern_rsi, 04_optuna_search.n_trials: 20}

Keys are the run overrides of ``aiopt run -p``: ``key`` for a parameter shared by the notebooks
that declare it, ``NOTEBOOK.key`` for one notebook. Every run's overrides are resolved against the
base configuration when the batch is read, so a typo fails before anything runs.

Each run gets a deterministic id ``<batch-name>-<k>-<8 hex of its overrides>`` and is executed by
:func:`aiopt_lib.runs.runner.run_pipeline` in its own worker process, writing to
``<runs_dir>/<run-id>/`` and ``<reports_dir>/<run-id>/`` like ``aiopt run``; with ``--ray``
each run is a Ray task instead, on this machine or a cluster (``--ship``: the folders come back
from the node as an archive). Rerunning a batch skips the runs that finished with the same
configuration (``--rerun``: run them all again). A failing run is recorded and the others go on.
Afterwards
``<reports_dir>/<batch-name>/index.html`` compares the runs (overrides, status, duration, a link
to each run's report and, where the run wrote ``ranking.json``, the walk-forward out-of-sample
metrics, the top strategy's out-of-sample Sharpe and deflated Sharpe ratio, and the PBO), and
``comparison.parquet`` next to it holds the same table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import html
import itertools
import json
import math
import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import polars as pl

from aiopt_lib.core.atomic import write_parquet_atomic, write_text_atomic
from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import AioptError, ConfigError, plain_name
from aiopt_lib.runs.runner import load_run_config, run_pipeline

BATCH_KEYS = ("name", "base", "workers", "parameters", "grid", "runs")
# Walk-forward metrics shown on the page (all of them go to comparison.parquet).
PAGE_METRICS = ("sharpe", "total_return", "max_drawdown", "trades")


@dataclasses.dataclass(frozen=True)
class BatchRun:
    """One run of a batch: its id and the overrides it applies to the base configuration."""

    run_id: str
    overrides: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Batch:
    """A resolved batch file: the base configuration, the runs, the default worker count."""

    name: str
    source_file: Path
    base: Path
    workers: int
    runs: tuple[BatchRun, ...]


@dataclasses.dataclass(frozen=True)
class BatchRunResult:
    """What one run of a batch did; ``metrics`` is empty when the run wrote no ``ranking.json``."""

    run_id: str
    overrides: Mapping[str, Any]
    ok: bool
    error: str | None
    seconds: float
    started: dt.datetime
    finished: dt.datetime
    pid: int | None
    run_dir: Path
    report_index: Path | None
    metrics: Mapping[str, float | None]


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """The outcome of :func:`run_batch`: one result per run (in batch order) and the comparison."""

    name: str
    runs: tuple[BatchRunResult, ...]
    index: Path
    comparison: Path

    @property
    def ok(self) -> bool:
        """Whether every run succeeded."""
        return all(run.ok for run in self.runs)

    @property
    def failed(self) -> tuple[BatchRunResult, ...]:
        """The runs that failed."""
        return tuple(run for run in self.runs if not run.ok)


def _plain(value: Any, where: str) -> Any:
    """Notebooks receive parameters as JSON: dates become ISO strings (every aiopt function takes
    them), anything JSON cannot hold is rejected here rather than inside a worker."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ConfigError(f"{where}: value {value!r} is not a plain YAML scalar, list or mapping")


def _overrides_hash(overrides: Mapping[str, Any]) -> str:
    text = json.dumps(dict(overrides), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def batch_run_id(name: str, k: int, overrides: Mapping[str, Any]) -> str:
    """``<name>-<k>-<8 hex of the overrides>``, e.g. ``grid-03-1a2b3c4d`` (``k`` from 1, two digits
    at least so that ids sort in batch order). ``name`` must be a plain name
    (:func:`aiopt_lib.core.errors.plain_name`): the id names the run's folders."""
    return f"{plain_name(name, 'batch name')}-{k:02d}-{_overrides_hash(overrides)}"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter: value")
    for key in value:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{where}: parameter name {key!r} must be a non-empty string")
    return {key: _plain(v, f"{where}.{key}") for key, v in value.items()}


def _check_against_base(base: Path, overrides: Mapping[str, Any], where: str) -> None:
    try:
        load_run_config(base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_batch(path: str | Path) -> Batch:
    """Read and validate a batch file; every run's overrides are resolved against the base
    configuration (unknown notebooks and parameters a notebook does not declare are rejected with
    the batch file and the key in the message)."""
    batch_path = Path(path)
    raw = read_yaml_mapping(batch_path, "batch file")
    unknown = sorted(set(raw) - set(BATCH_KEYS))
    if unknown:
        raise ConfigError(f"{batch_path}: unknown key(s) {unknown}; expected {list(BATCH_KEYS)}")

    # it names the report folder and the run ids
    name = plain_name(str(raw.get("name") or batch_path.stem), f"{batch_path}: name")
    if not raw.get("base"):
        raise ConfigError(f"{batch_path}: 'base' must name a run configuration")
    base = (batch_path.parent / str(raw["base"])).resolve()
    if not base.is_file():
        raise ConfigError(f"{batch_path}: base: run configuration {base} not found")
    workers = raw.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{batch_path}: workers must be a positive integer (got {workers!r})")

    fixed = _mapping(raw.get("parameters"), f"{batch_path}: parameters")
    if fixed:
        _check_against_base(base, fixed, f"{batch_path}: parameters")
    has_grid, has_runs = raw.get("grid") is not None, raw.get("runs") is not None
    if has_grid == has_runs:
        raise ConfigError(f"{batch_path}: give either 'grid' or 'runs' (exactly one)")

    where: list[str] = []
    parameter_sets: list[dict[str, Any]] = []
    if has_grid:
        grid = raw["grid"]
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{batch_path}: grid must map each parameter to a list of values")
        axes: list[tuple[str, list[Any]]] = []
        for key, values in grid.items():
            at = f"{batch_path}: grid.{key}"
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(f"{batch_path}: grid key {key!r} must be a non-empty string")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{at}: expected a non-empty list of values (got {values!r})")
            if key in fixed:
                raise ConfigError(f"{at}: also set in 'parameters'")
            axes.append((key, [_plain(v, at) for v in values]))
            # Checked one key at a time so that the message names the key at fault.
            _check_against_base(base, {**fixed, key: axes[-1][1][0]}, at)
        for combination in itertools.product(*(values for _, values in axes)):
            parameter_sets.append(
                {**fixed, **{key: value for (key, _), value in zip(axes, combination, strict=True)}}
            )
            where.append(
                f"{batch_path}: grid {dict(zip([k for k, _ in axes], combination, strict=True))}"
            )
    else:
        entries = raw["runs"]
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{batch_path}: runs must be a non-empty list of parameter mappings")
        for index, entry in enumerate(entries):
            at = f"{batch_path}: runs[{index}]"
            own = _mapping(entry, at)
            parameter_sets.append({**fixed, **own})
            where.append(at)

    seen: dict[str, str] = {}
    runs = []
    for k, (overrides, at) in enumerate(zip(parameter_sets, where, strict=True), start=1):
        key = json.dumps(overrides, sort_keys=True)
        if key in seen:
            raise ConfigError(f"{at}: same parameters as {seen[key]}")
        seen[key] = at
        _check_against_base(base, overrides, at)
        runs.append(BatchRun(batch_run_id(name, k, overrides), overrides))
    return Batch(name, batch_path.resolve(), base, workers, tuple(runs))


def expand_batch(path: str | Path) -> list[BatchRun]:
    """The runs of a batch file, in order: a grid expands to its Cartesian product (the last key
    varying fastest), ``runs`` gives one run per entry; ``parameters`` are added to each. Ids are
    deterministic (``<batch-name>-<k>-<hash of the overrides>``). Raises :class:`ConfigError`
    naming the file and the key for anything invalid."""
    return list(load_batch(path).runs)


def read_ranking_metrics(path: str | Path) -> dict[str, float | None]:
    """The comparison figures of a ``ranking.json`` (from notebook 04 / ``aiopt search``):
    ``wf_<metric>`` for each walk-forward out-of-sample metric, ``top_oos_sharpe``, ``top_dsr``
    (deflated Sharpe ratio) and ``top_psr`` of the best-ranked strategy, and ``pbo``. Missing
    figures are ``None``; an unreadable file raises :class:`ConfigError`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the ranking ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a JSON object")

    def number(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    walk_forward = (document.get("walk_forward") or {}).get("metrics") or {}
    figures: dict[str, float | None] = {
        f"wf_{key}": number(value) for key, value in sorted(walk_forward.items())
    }
    top = document.get("top") or []
    best = top[0] if top and isinstance(top[0], dict) else {}
    figures["top_oos_sharpe"] = number((best.get("out_of_sample") or {}).get("sharpe"))
    figures["top_dsr"] = number(best.get("deflated_sharpe"))
    figures["top_psr"] = number(best.get("probabilistic_sharpe"))
    pbo = document.get("pbo")
    figures["pbo"] = number(pbo.get("pbo") if isinstance(pbo, dict) else pbo)
    return figures


def _execute_run(
    base: str,
    overrides: dict[str, Any],
    run_id: str,
    runs_dir: str,
    reports_dir: str,
    force: bool = False,
) -> dict[str, Any]:
    """Worker-process body: one pipeline run; never raises, the outcome is returned as plain data
    (picklable, and a failure of one run must not reach the pool)."""
    lines: list[str] = []
    started = time.time()
    clock = time.perf_counter()
    error: str | None = None
    try:
        config = load_run_config(base, overrides)
        run_pipeline(
            config,
            runs_dir=runs_dir,
            reports_dir=reports_dir,
            run_id=run_id,
            force=force,
            log=lines.append,
        )
    except Exception as exc:  # every failure is recorded, the batch goes on
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, AioptError):
            lines.append(traceback.format_exc())
    return {
        "run_id": run_id,
        "ok": error is None,
        "error": error,
        "seconds": time.perf_counter() - clock,
        "started": started,
        "finished": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "log": lines,
    }


def _execute_and_ship(
    base: str, overrides: dict[str, Any], run_id: str, force: bool
) -> dict[str, Any]:
    """Ray task body of ``--ship``: the run in a temporary folder of the node, its run and report
    folders returned as one tar archive (``outcome["archive"]``) for the driver to unpack."""
    import io
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aiopt-batch-") as folder:
        runs, reports = Path(folder, "runs"), Path(folder, "reports")
        outcome = _execute_run(base, overrides, run_id, str(runs), str(reports), force)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for kind, root in (("runs", runs), ("reports", reports)):
                if (root / run_id).is_dir():
                    archive.add(root / run_id, arcname=f"{kind}/{run_id}")
        outcome["archive"] = buffer.getvalue()
    return outcome


def _unpack(archive: bytes, run_id: str, runs_dir: Path, reports_dir: Path) -> None:
    """Put a shipped run's folders in place: unpacked beside their destination first (``data``
    filter: plain files inside the archive's own folders only), then swapped in by renames."""
    import io
    import shutil
    import tarfile
    import tempfile

    for kind, destination in (("runs", runs_dir), ("reports", reports_dir)):
        destination.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=destination, prefix=f".{run_id}.") as folder:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(f"{kind}/{run_id}")]
                tar.extractall(folder, members=members, filter="data")
            unpacked = Path(folder, kind, run_id)
            if not unpacked.is_dir():
                continue
            target = destination / run_id
            old = Path(folder, "old")
            if target.exists():
                target.rename(old)
            unpacked.rename(target)
            shutil.rmtree(old, ignore_errors=True)


OUTCOME_FILE = "batch_run.json"


def _finished_outcome(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The recorded outcome of a run that finished with this configuration, else None."""
    try:
        record = json.loads((run_dir / OUTCOME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    return record if record.get("ok") is True else None


def _collect(
    run: BatchRun, outcome: Mapping[str, Any], runs_dir: Path, reports_dir: Path
) -> BatchRunResult:
    run_dir = (runs_dir / run.run_id).resolve()
    index = (reports_dir / run.run_id / "index.html").resolve()
    ranking = run_dir / "ranking.json"
    metrics: dict[str, float | None] = {}
    # A ranking older than this run is a leftover of an earlier run with the same id.
    if ranking.is_file() and ranking.stat().st_mtime >= outcome["started"] - 1.0:
        try:
            metrics = read_ranking_metrics(ranking)
        except ConfigError:
            metrics = {}
    return BatchRunResult(
        run_id=run.run_id,
        overrides=run.overrides,
        ok=bool(outcome["ok"]),
        error=outcome["error"],
        seconds=float(outcome["seconds"]),
        started=dt.datetime.fromtimestamp(outcome["started"], dt.UTC),
        finished=dt.datetime.fromtimestamp(outcome["finished"], dt.UTC),
        pid=outcome["pid"],
        run_dir=run_dir,
        report_index=index if index.is_file() else None,
        metrics=metrics,
    )


def run_batch(
    path: str | Path,
    *,
    workers: int | None = None,
    runs_dir: str | Path = "papermill_runs",
    reports_dir: str | Path = "reports",
    log: Callable[[str], None] | None = None,
    ray_address: str | None = None,
    ship: bool = False,
    rerun: bool = False,
) -> BatchResult:
    """Run every run of a batch file, up to ``workers`` at a time (default: the file's ``workers``,
    else 1) in separate processes, then write the comparison page
    ``<reports_dir>/<batch-name>/index.html`` and ``comparison.parquet``.

    ``ray_address``: each run is a Ray task instead (``"local"``: a Ray started on this machine;
    else the cluster's address); at most ``workers`` at a time when given, else as many as the
    cluster has CPUs. The run and report folders are written where the task runs, so on a
    cluster ``runs_dir`` and ``reports_dir`` must be shared storage, unless ``ship``: then each
    task works in a temporary folder of its node and returns its folders as an archive, which
    is unpacked here.

    Resume: a run that finished writes ``<runs_dir>/<run-id>/batch_run.json`` with its
    configuration's fingerprint; running the batch again skips it (and reuses its outcome)
    unless its configuration changed or ``rerun``. A failing run (a notebook raising, a worker
    process dying) is recorded with its error and does not stop the others; check
    :attr:`BatchResult.ok`. The batch file is validated completely before any run starts.
    ``log`` receives one line per run queued, skipped and finished (``[k/n]``: the progress),
    and the run's own log lines when it finishes.
    """
    batch = load_batch(path)
    count = batch.workers if workers is None else workers
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"workers must be a positive integer (got {workers!r})")
    count = min(count, len(batch.runs))
    runs_path, reports_path = Path(runs_dir).resolve(), Path(reports_dir).resolve()
    say = log or (lambda _message: None)

    outcomes: dict[str, Mapping[str, Any]] = {}
    fingerprints = {
        run.run_id: load_run_config(batch.base, run.overrides).fingerprint() for run in batch.runs
    }
    todo = []
    for run in batch.runs:
        previous = (
            None if rerun else _finished_outcome(runs_path / run.run_id, fingerprints[run.run_id])
        )
        if previous is not None:
            outcomes[run.run_id] = {**previous, "log": []}
        else:
            todo.append(run)
    where = "Ray tasks" if ray_address is not None else f"{count} at a time"
    say(
        f"batch {batch.name}: {len(batch.runs)} run(s), {len(outcomes)} finished before, "
        f"{len(todo)} to run ({where})"
    )
    for run in batch.runs:
        if run.run_id in outcomes:
            say(f"[{run.run_id}] finished before with this configuration: skipped")

    def finish(run: BatchRun, outcome: dict[str, Any]) -> None:
        archive = outcome.pop("archive", None)
        if archive is not None:
            _unpack(archive, run.run_id, runs_path, reports_path)
        outcomes[run.run_id] = outcome
        if outcome["ok"]:
            record = {k: v for k, v in outcome.items() if k != "log"}
            record["fingerprint"] = fingerprints[run.run_id]
            write_text_atomic(runs_path / run.run_id / OUTCOME_FILE, json.dumps(record, indent=1))
        for line in outcome["log"]:
            say(f"[{run.run_id}] {line}")
        status = "done" if outcome["ok"] else f"FAILED: {outcome['error']}"
        say(
            f"[{len(outcomes)}/{len(batch.runs)}] [{run.run_id}] {status} in "
            f"{outcome['seconds']:.1f} s"
        )

    if todo and ray_address is not None:
        _run_on_ray(
            batch, todo, ray_address, workers, ship, rerun, runs_path, reports_path, say, finish
        )
    elif todo:
        _run_in_processes(batch, todo, count, rerun, runs_path, reports_path, say, finish)

    results = tuple(
        _collect(run, outcomes[run.run_id], runs_path, reports_path) for run in batch.runs
    )
    out_dir = (reports_path / batch.name).resolve()
    frame = comparison_frame(results)
    comparison = write_parquet_atomic(
        frame,
        out_dir / "comparison.parquet",
        metadata={"aiopt.batch": batch.name, "aiopt.batch_file": str(batch.source_file)},
    )
    index = out_dir / "index.html"
    write_text_atomic(index, comparison_page(batch, results, out_dir))
    failed = sum(not r.ok for r in results)
    say(f"batch {batch.name}: {len(results) - failed} ok, {failed} failed -> {index}")
    return BatchResult(batch.name, results, index, comparison)


def _failed_outcome(why: str) -> dict[str, Any]:
    now = time.time()
    return {
        "ok": False,
        "error": why,
        "seconds": 0.0,
        "started": now,
        "finished": now,
        "pid": None,
        "log": [],
    }


def _run_in_processes(
    batch: Batch,
    todo: Sequence[BatchRun],
    count: int,
    rerun: bool,
    runs_path: Path,
    reports_path: Path,
    say: Callable[[str], None],
    finish: Callable[[BatchRun, dict[str, Any]], None],
) -> None:
    # spawn, not fork: the parent may hold threads (polars, numba) that a fork would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(count, len(todo)), mp_context=context) as pool:
        futures: dict[Future[dict[str, Any]], BatchRun] = {}
        for run in todo:
            future = pool.submit(
                _execute_run,
                str(batch.base),
                dict(run.overrides),
                run.run_id,
                str(runs_path),
                str(reports_path),
                rerun,
            )
            futures[future] = run
            say(f"[{run.run_id}] queued {json.dumps(dict(run.overrides), default=str)}")
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # a dead worker fails its run, not the batch
                outcome = _failed_outcome(f"worker process failed: {type(exc).__name__}: {exc}")
            finish(futures[future], outcome)


def _run_on_ray(
    batch: Batch,
    todo: Sequence[BatchRun],
    address: str,
    workers: int | None,
    ship: bool,
    rerun: bool,
    runs_path: Path,
    reports_path: Path,
    say: Callable[[str], None],
    finish: Callable[[BatchRun, dict[str, Any]], None],
) -> None:
    """Each run a Ray task (one CPU); at most ``workers`` in flight when given."""
    from aiopt_lib.core.cluster import ray_session

    limit = workers or len(todo)
    with ray_session(address) as ray:
        if ship:
            task = ray.remote(num_cpus=1, max_retries=0)(_execute_and_ship)
        else:
            task = ray.remote(num_cpus=1, max_retries=0)(_execute_run)
        waiting = list(todo)
        running: dict[Any, BatchRun] = {}
        while waiting or running:
            while waiting and len(running) < limit:
                run = waiting.pop(0)
                if ship:
                    ref = task.remote(str(batch.base), dict(run.overrides), run.run_id, rerun)
                else:
                    ref = task.remote(
                        str(batch.base),
                        dict(run.overrides),
                        run.run_id,
                        str(runs_path),
                        str(reports_path),
                        rerun,
                    )
                running[ref] = run
                say(f"[{run.run_id}] queued on Ray {json.dumps(dict(run.overrides), default=str)}")
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                run = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task's worker or node died
                    reason = " ".join(str(exc).split())[-300:]
                    outcome = _failed_outcome(f"Ray task failed: {reason}")
                finish(run, outcome)


def _override_column(values: Sequence[Any]) -> pl.Series | list[str | None]:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pl.Series(values, dtype=pl.Boolean)
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pl.Series(values, dtype=pl.Int64)
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pl.Series([None if v is None else float(v) for v in values], dtype=pl.Float64)
    if all(isinstance(v, str) for v in present):
        return pl.Series(values, dtype=pl.String)
    # Mixed kinds or lists: JSON text keeps one column type.
    return pl.Series([None if v is None else json.dumps(v) for v in values], dtype=pl.String)


def comparison_frame(results: Sequence[BatchRunResult]) -> pl.DataFrame:
    """One row per run: ``run_id, status, error, seconds, started, finished, pid, overrides``
    (JSON), ``report`` (the run's index.html or null), one column per override key (named as the
    key, null where a run does not set it) and one Float64 column per ranking figure (see
    :func:`read_ranking_metrics`; null where a run wrote no ranking)."""
    keys = sorted({key for r in results for key in r.overrides})
    figures = sorted({key for r in results for key in r.metrics})
    columns: dict[str, Any] = {
        "run_id": pl.Series([r.run_id for r in results], dtype=pl.String),
        "status": pl.Series(["ok" if r.ok else "failed" for r in results], dtype=pl.String),
        "error": pl.Series([r.error for r in results], dtype=pl.String),
        "seconds": pl.Series([r.seconds for r in results], dtype=pl.Float64),
        "started": pl.Series([r.started for r in results], dtype=pl.Datetime("us", "UTC")),
        "finished": pl.Series([r.finished for r in results], dtype=pl.Datetime("us", "UTC")),
        "pid": pl.Series([r.pid for r in results], dtype=pl.Int64),
        "overrides": pl.Series(
            [json.dumps(dict(r.overrides), sort_keys=True) for r in results], dtype=pl.String
        ),
        "report": pl.Series(
            [None if r.report_index is None else str(r.report_index) for r in results],
            dtype=pl.String,
        ),
    }
    for key in keys:
        columns[key] = _override_column([r.overrides.get(key) for r in results])
    for figure in figures:
        columns[figure] = pl.Series([r.metrics.get(figure) for r in results], dtype=pl.Float64)
    return pl.DataFrame(columns)


def _cell(value: Any) -> str:
    if value is None:
        return "<td class='na'>–</td>"
    if isinstance(value, float):
        return f"<td class='num'>{value:.4g}</td>"
    text = value if isinstance(value, str) else json.dumps(value)
    return f"<td>{html.escape(text)}</td>"


def comparison_page(batch: Batch, results: Sequence[BatchRunResult], out_dir: Path) -> str:
    """The self-contained HTML comparison of a batch (no scripts, no external resources): one
    row per run with its overrides, status, duration, a link to its report (relative to
    ``out_dir``) and its ranking figures."""
    keys = sorted({key for r in results for key in r.overrides})
    with_ranking = any(r.metrics for r in results)
    metric_heads = [f"OOS {m.replace('_', ' ')}" for m in PAGE_METRICS] + [
        "top OOS Sharpe",
        "top DSR",
        "PBO",
    ]
    metric_keys = [f"wf_{m}" for m in PAGE_METRICS] + ["top_oos_sharpe", "top_dsr", "pbo"]
    heads = ["run", "status", "duration", *keys, *(metric_heads if with_ranking else [])]
    rows = []
    for r in results:
        if r.report_index is not None:
            link = os.path.relpath(r.report_index, out_dir)
            run_cell = f"<td><a href='{html.escape(link)}'>{html.escape(r.run_id)}</a></td>"
        else:
            run_cell = f"<td>{html.escape(r.run_id)}</td>"
        status = (
            "<td class='ok'>ok</td>"
            if r.ok
            else f"<td class='failed'>FAILED: {html.escape(r.error or '')}</td>"
        )
        cells = [run_cell, status, f"<td class='num'>{r.seconds:.1f} s</td>"]
        cells += [_cell(r.overrides.get(key)) for key in keys]
        if with_ranking:
            cells += [_cell(r.metrics.get(key)) for key in metric_keys]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    ok = sum(r.ok for r in results)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    explanation = (
        "<p>OOS: the walk-forward out-of-sample metrics of the search (each test window traded "
        "with the parameters chosen on its training window). Top: the best-ranked strategy's "
        "out-of-sample Sharpe and its deflated Sharpe ratio (DSR, the probability that its true "
        "Sharpe is positive once the number of trials is accounted for). PBO: the probability of backtest overfitting "
        "(CSCV). Full figures: <code>comparison.parquet</code>.</p>"
        if with_ranking
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aiopt batch {html.escape(batch.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}td.failed{{color:#b00020}}td.ok{{color:#1b5e20}}td.na{{color:#999}}</style>
</head><body>
<h1>aiopt batch <code>{html.escape(batch.name)}</code></h1>
<p>Batch file {html.escape(str(batch.source_file))}, base configuration
{html.escape(str(batch.base))}: {len(results)} run(s), {ok} ok, {len(results) - ok} failed.</p>
{explanation}
<table><tr>{head}</tr>
{"".join(rows)}
</table>
</body></html>
"""


__all__ = [
    "Batch",
    "BatchResult",
    "BatchRun",
    "BatchRunResult",
    "batch_run_id",
    "comparison_frame",
    "comparison_page",
    "expand_batch",
    "load_batch",
    "read_ranking_metrics",
    "run_batch",
]
