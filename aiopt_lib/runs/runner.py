"""Runs: execute the pipeline's notebooks with papermill and render each to self-contained HTML.

A run configuration (YAML, in ``papermill_runs/``) names the notebooks in order and their
parameters. Each run gets an id (UTC start time + a hash of the resolved configuration); executed
notebooks go to ``papermill_runs/<run-id>/`` together with the artifacts the notebooks write there
(each notebook receives that folder as its ``run_dir`` parameter), and HTML reports go to
``reports/<run-id>/`` with an ``index.html`` (run summary per stage: status, duration, CPU time,
peak memory, GPU memory; the input data's sha256; package versions; the ranking's top 5 and PBO
when the run wrote ``ranking.json``).

Rerunning with the same run id resumes: a stage whose notebook, parameters and earlier stages
are unchanged (its :func:`stage_key`, recorded in ``stages/<name>.json`` when it completed) is
skipped; ``force=True`` reruns everything. Stage events go to the ``run_events`` stream and to
``run.log`` in the run folder.

Configuration format::

    name: default
    notebooks_dir: ../notebooks        # relative to this file (default)
    show_code: false                   # hide code cells in the HTML reports
    parameters:                        # given to every notebook that declares them
      source: sample
    notebooks:
      - notebook: 01_data_exploration
        parameters: {window_bars: 120} # only for this notebook; must be declared by it
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import platform
import re
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import polars as pl
import yaml

from aiopt_lib import __version__
from aiopt_lib.core.atomic import atomic_path, write_text_atomic
from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import AioptError, ConfigError, plain_name
from aiopt_lib.core.streams import Streams
from aiopt_lib.data.sources import DEFAULT_SAMPLE, sample_path
from aiopt_lib.strategy.performance import format_value
from aiopt_lib.strategy.ranking import verdict
from aiopt_lib.viz.tables import table

__all__ = ["load_run_config", "run_pipeline"]

RESERVED_PARAMETERS = ("run_dir",)
STAGES_DIR = "stages"
SKIPPED_MESSAGE = "skipped (unchanged)"
VERSIONED_PACKAGES = (
    "aiopt",
    "polars",
    "numpy",
    "optuna",
    "nautilus_trader",
    "torch",
    "transformers",
    "papermill",
)
# what aiopt_lib.core.atomic.atomic_path names its temporary files: .<stem>.<random>.tmp<suffix>
_TEMPORARY_NAME = re.compile(r"\..+\.tmp(\.[^.]*)?")


@dataclasses.dataclass(frozen=True)
class NotebookStep:
    """One notebook of a run and the parameters it receives (``run_dir`` is added at run time)."""

    name: str
    path: Path
    parameters: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A resolved run configuration."""

    name: str
    steps: tuple[NotebookStep, ...]
    show_code: bool = False
    source_file: Path | None = None

    def fingerprint(self) -> str:
        """A hash of everything that determines the run's results (names, paths, parameters)."""
        payload = {
            "name": self.name,
            "steps": [{"name": s.name, "parameters": dict(s.parameters)} for s in self.steps],
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one executed notebook produced."""

    name: str
    notebook: Path
    report: Path
    seconds: float
    ok: bool
    error: str | None = None
    skipped: bool = False
    key: str = ""
    usage: StageUsage | None = None

    @property
    def status(self) -> str:
        """``ok``, ``skipped`` (unchanged, reused) or ``failed``."""
        if not self.ok:
            return "failed"
        return "skipped" if self.skipped else "ok"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The outcome of :func:`run_pipeline`."""

    run_id: str
    run_dir: Path
    report_dir: Path
    index: Path
    steps: tuple[StepResult, ...]

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)


class StageFailedError(AioptError):
    """A notebook raised; its executed copy and HTML report are kept and named in the message."""


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value read as YAML: numbers, booleans, null, lists) from ``-p``."""
    if "=" not in text:
        raise ConfigError(f"parameter override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"parameter override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, _plain(value)


def _plain(value: Any) -> Any:
    """YAML reads 2019-02-04 as a date; notebooks receive parameters as JSON, so dates become ISO
    strings (which every aiopt function accepts)."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _declared_parameters(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)).keys())


def load_run_config(
    path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> RunConfig:
    """Read a run configuration and apply ``-p`` overrides.

    An override ``key=value`` sets a shared parameter; ``<notebook>.key=value`` sets one for one
    notebook. Parameters a notebook does not declare in its ``parameters`` cell are not passed to it
    (shared ones) or rejected (notebook-specific ones and overrides that no notebook declares), so a
    typo cannot pass silently.
    """
    config_path = Path(path)
    raw = read_yaml_mapping(config_path, "run configuration")
    unknown = set(raw) - {"name", "notebooks_dir", "show_code", "parameters", "notebooks"}
    if unknown:
        raise ConfigError(f"{config_path}: unknown key(s) {sorted(unknown)}")
    notebooks_dir = (config_path.parent / raw.get("notebooks_dir", "../notebooks")).resolve()
    shared = _plain(dict(raw.get("parameters") or {}))
    entries = raw.get("notebooks") or []
    if not entries:
        raise ConfigError(f"{config_path}: 'notebooks' lists no notebook")

    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    per_notebook: dict[str, dict[str, Any]] = {}
    for key, value in items:
        if "." in key:
            nb, _, name = key.partition(".")
            per_notebook.setdefault(nb, {})[name] = value
        else:
            shared[key] = value

    steps = []
    used_shared: set[str] = set()
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"notebook": entry}
        if not isinstance(entry, dict) or "notebook" not in entry:
            raise ConfigError(f"{config_path}: notebooks[{index}] needs a 'notebook' name")
        # the name becomes file names (run_dir/<name>.ipynb, <name>.html, stages/<name>.json)
        name = plain_name(
            str(entry["notebook"]).removesuffix(".ipynb"), f"{config_path}: notebooks[{index}]"
        )
        nb_path = notebooks_dir / f"{name}.ipynb"
        if not nb_path.is_file():
            raise ConfigError(f"{config_path}: notebooks[{index}]: {nb_path} does not exist")
        declared = _declared_parameters(nb_path)
        own = {**_plain(dict(entry.get("parameters") or {})), **per_notebook.pop(name, {})}
        undeclared = sorted(set(own) - declared)
        if undeclared:
            raise ConfigError(
                f"{config_path}: notebook {name} does not declare parameter(s) {undeclared}; "
                f"it declares {sorted(declared)}"
            )
        reserved = sorted(set(own) & set(RESERVED_PARAMETERS))
        if reserved:
            raise ConfigError(
                f"{config_path}: {reserved} is set by the runner, not the configuration"
            )
        params = {k: v for k, v in shared.items() if k in declared and k not in RESERVED_PARAMETERS}
        used_shared |= set(params)
        params.update(own)
        steps.append(NotebookStep(name=name, path=nb_path, parameters=params))
    if per_notebook:
        raise ConfigError(f"override(s) for notebook(s) not in this run: {sorted(per_notebook)}")
    unused = sorted(set(shared) - used_shared)
    if unused:
        raise ConfigError(f"parameter(s) {unused} are declared by no notebook of this run")
    return RunConfig(
        name=str(raw.get("name") or config_path.stem),
        steps=tuple(steps),
        show_code=bool(raw.get("show_code", False)),
        source_file=config_path.resolve(),
    )


def new_run_id(config: RunConfig, *, now: dt.datetime | None = None) -> str:
    """``<UTC time>-<8 hex of the configuration hash>``, e.g. ``20261124T103000Z-1a2b3c4d``."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{config.fingerprint()[:8]}"


def notebook_to_html(notebook: str | Path, out: str | Path, *, show_code: bool = False) -> Path:
    """Render an executed notebook to one self-contained HTML file (code hidden unless asked)."""
    import nbconvert
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    # widget state makes nbconvert add a script that fetches the widget renderer from unpkg; live
    # widgets cannot run in an offline report anyway (their pictures are separate outputs)
    nb.metadata.pop("widgets", None)
    exporter = nbconvert.HTMLExporter(template_name="lab", embed_images=True)
    exporter.exclude_input = not show_code
    exporter.exclude_input_prompt = not show_code
    exporter.exclude_output_prompt = True
    resources = {"metadata": {"name": _notebook_title(nb, Path(notebook).stem)}}
    body, _resources = exporter.from_notebook_node(nb, resources=resources)
    body = _strip_external_scripts(body)
    with atomic_path(out) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return Path(out)


def _notebook_title(nb: Any, fallback: str) -> str:
    """The page title: the notebook's first Markdown heading (``04 · Strategy search``)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _strip_external_scripts(page: str) -> str:
    """Drop nbconvert's CDN script tags (require.js, MathJax): reports must open offline and our
    outputs do not use them."""
    import re

    return re.sub(r'<script[^>]+src="https?://[^"]*"[^>]*>\s*</script>', "", page)


def _publish_strategies(run_dir: Path, report_dir: Path) -> list[dict[str, str]]:
    """Copy the run's exported Pine files (``run_dir/strategies/*.pine``, from notebooks 04/05)
    to ``report_dir/strategies/`` and return one row per file with its parity status (from
    ``strategies/parity.json`` written by notebook 05, when present)."""
    source = run_dir / "strategies"
    files = sorted(source.glob("*.pine")) if source.is_dir() else []
    status: dict[str, str] = {}
    parity_file = source / "parity.json"
    if parity_file.exists():
        for row in json.loads(parity_file.read_text()):
            if row.get("file"):
                status[str(row["file"])] = str(row.get("parity", ""))
    rows = []
    for file in files:
        write_text_atomic(report_dir / "strategies" / file.name, file.read_text())
        rows.append({"file": file.name, "parity": status.get(file.name, "not checked")})
    return rows


# ---------------------------------------------------------------------------------------------
# Resume: stage keys and completion records


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(notebook: str | Path, parameters: Mapping[str, Any], previous: Sequence[str]) -> str:
    """The hash that decides whether a stage can be reused: sha256 of the notebook file's bytes,
    its resolved parameters (without ``run_dir``) and the keys of all earlier stages, in order.

    Chaining the earlier keys makes a change upstream invalidate every stage after it.
    """
    payload = {
        "notebook_sha256": _sha256_file(Path(notebook)),
        "parameters": {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS},
        "previous": list(previous),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _stage_record_path(run_dir: Path, name: str) -> Path:
    return run_dir / STAGES_DIR / f"{plain_name(name, 'stage name')}.json"


def read_stage_record(run_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The completion record of stage ``name`` in a run folder (``stages/<name>.json``), or None
    when the stage never completed (not run, failed, killed, or invalidated by a rerun upstream)."""
    path = _stage_record_path(Path(run_dir), name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: treated as not completed, so the stage reruns
    return record if isinstance(record, dict) else None


class _RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock``: two processes must not write one run folder.
    The kernel releases it when the holder dies, even by SIGKILL, so a killed run can resume."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fh: IO[str] | None = None

    def __enter__(self) -> _RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return self
        fh = open(self.path, "a", encoding="utf-8")  # held until __exit__
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise AioptError(
                f"run folder {self.path.parent} is in use by another aiopt run; "
                "wait for it or choose another run id"
            ) from None
        self._fh = fh
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the lock
            self._fh = None


def _remove_stale_temporaries(*folders: Path) -> list[Path]:
    """Delete the ``.<stem>.*.tmp<suffix>`` files that :func:`~aiopt_lib.core.atomic.atomic_path`
    leaves when its process is killed mid-write. Called only while holding the run lock, so no
    live writer of this run owns them."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.rglob(".*"):
            if path.is_file() and _TEMPORARY_NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Monitoring: the kernel's process tree while a stage runs


@dataclasses.dataclass(frozen=True)
class StageUsage:
    """What a stage cost: UTC start and end, wall seconds, CPU seconds of the kernel's process
    tree, its peak resident memory (MiB, sum over the tree) and its GPU memory (MiB; None without
    a CUDA GPU). CPU and memory are None where they cannot be measured."""

    started: dt.datetime
    ended: dt.datetime
    seconds: float
    cpu_seconds: float | None
    peak_rss_mb: float | None
    gpu_memory_mb: float | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (timestamps as ISO strings)."""
        out = dataclasses.asdict(self)
        out["started"] = self.started.isoformat()
        out["ended"] = self.ended.isoformat()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageUsage:
        """Read back :meth:`to_json`."""
        return cls(
            started=dt.datetime.fromisoformat(data["started"]),
            ended=dt.datetime.fromisoformat(data["ended"]),
            seconds=float(data["seconds"]),
            cpu_seconds=data.get("cpu_seconds"),
            peak_rss_mb=data.get("peak_rss_mb"),
            gpu_memory_mb=data.get("gpu_memory_mb"),
        )


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _gpu_available() -> bool:
    """``torch.cuda.is_available()``, asked only where a per-process GPU reader exists (NVML or
    nvidia-smi): without one the figure could not be read, and importing torch costs a second."""
    if importlib.util.find_spec("pynvml") is None and shutil.which("nvidia-smi") is None:
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA setup must not break a run
        return False


def _gpu_memory_by_pid() -> dict[int, float]:
    """GPU memory (MiB) used by each process on any device, from NVML or nvidia-smi."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            used: dict[int, float] = {}
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    memory = proc.usedGpuMemory or 0
                    used[proc.pid] = used.get(proc.pid, 0.0) + memory / 2**20
            return used
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        done = subprocess.run(
            [
                "nvidia-smi",
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    used = {}
    for line in done.stdout.splitlines():
        pid, _, memory = line.partition(",")
        try:
            used[int(pid)] = used.get(int(pid), 0.0) + float(memory)
        except ValueError:
            continue
    return used


class _ProcessTreeMonitor:
    """Samples this process's children (the Jupyter kernel and whatever it starts) every
    ``interval`` seconds in a background thread: the sum of their RSS and GPU memory (peaks are
    kept) and each one's CPU time (the last sample of a process that has since exited is kept).

    CPU time is the larger of that sampled sum and the ``RUSAGE_CHILDREN`` increase over the stage
    (exact for children that were reaped, as the kernel is at shutdown). Without psutil, the
    memory figure is ``RUSAGE_CHILDREN``'s peak RSS (the largest single child so far)."""

    def __init__(self, *, interval: float = 0.2, gpu: bool = False) -> None:
        self.interval = interval
        self.gpu = gpu
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_by_process: dict[tuple[int, float], float] = {}
        self._peak_rss = 0.0
        self._peak_gpu: float | None = 0.0 if gpu else None
        self._samples = 0
        try:
            import psutil

            self._psutil: Any = psutil
        except ImportError:  # pragma: no cover - psutil comes with jupyter
            self._psutil = None

    def __enter__(self) -> _ProcessTreeMonitor:
        self.started = dt.datetime.now(dt.UTC)
        self._wall = time.perf_counter()
        self._children_cpu = _children_cpu_seconds()
        if self._psutil is not None:
            self._thread = threading.Thread(target=self._run, name="aiopt-stage-monitor")
            self._thread.daemon = True
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def _sample(self) -> None:
        psutil = self._psutil
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        rss = 0.0
        pids = set()
        for child in children:
            try:
                with child.oneshot():
                    memory = child.memory_info().rss
                    cpu = child.cpu_times()
                    created = child.create_time()
            except psutil.Error:  # exited between listing and reading
                continue
            rss += memory / 2**20
            pids.add(child.pid)
            self._cpu_by_process[(child.pid, created)] = (
                cpu.user + cpu.system + cpu.children_user + cpu.children_system
            )
        self._peak_rss = max(self._peak_rss, rss)
        if self.gpu and pids:
            used = sum(v for pid, v in _gpu_memory_by_pid().items() if pid in pids)
            self._peak_gpu = max(self._peak_gpu or 0.0, used)
        self._samples += 1

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.seconds = time.perf_counter() - self._wall
        self.ended = dt.datetime.now(dt.UTC)
        reaped = _children_cpu_seconds() - self._children_cpu
        self.cpu_seconds = max(reaped, sum(self._cpu_by_process.values()))
        if self._psutil is None:  # pragma: no cover
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            self.peak_rss_mb = peak_kib / 2**10 if peak_kib else None
        else:
            self.peak_rss_mb = self._peak_rss if self._samples else None

    def usage(self) -> StageUsage:
        """The figures, once the ``with`` block has ended."""
        return StageUsage(
            started=self.started,
            ended=self.ended,
            seconds=self.seconds,
            cpu_seconds=self.cpu_seconds,
            peak_rss_mb=self.peak_rss_mb,
            gpu_memory_mb=self._peak_gpu,
        )


class _EventLog:
    """Stage events to the run's ``run_events`` stream (one chunk per event, so a killed run keeps
    what it logged) and one line each to ``run_dir/run.log``."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.run_id = run_id
        self.path = run_dir / "run.log"
        self.streams = Streams(run_dir, run_id=run_id, flush_rows=1, flush_seconds=None)

    def event(
        self,
        stage: str,
        event: str,
        message: str | None = None,
        *,
        ts: dt.datetime | None = None,
        usage: StageUsage | None = None,
    ) -> None:
        ts = ts or dt.datetime.now(dt.UTC)
        figures = {
            "duration_s": usage.seconds if usage else None,
            "cpu_s": usage.cpu_seconds if usage else None,
            "peak_rss_mb": usage.peak_rss_mb if usage else None,
            "gpu_memory_mb": usage.gpu_memory_mb if usage else None,
        }
        self.streams.run_events.append(
            {
                "run_id": self.run_id,
                "stage": stage,
                "event": event,
                "ts": ts,
                **figures,
                "message": message,
            }
        )
        parts = [ts.isoformat(timespec="milliseconds"), stage, event]
        parts += [f"{k}={v:.3f}" for k, v in figures.items() if v is not None]
        if message:
            parts.append(message.replace("\n", " "))
        # The log is small; rewriting it whole keeps to the rule that every write is atomic.
        previous = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
        write_text_atomic(self.path, previous + " ".join(parts) + "\n")

    def close(self) -> None:
        self.streams.close()


# ---------------------------------------------------------------------------------------------
# index.html


def _input_data_hash(run_dir: Path, config: RunConfig) -> tuple[str, str] | None:
    """(what was hashed, sha256): ``run_dir/bars.parquet`` when a notebook wrote it, else the file
    (or folder, all files in name order) named by the ``source`` parameter."""
    bars = run_dir / "bars.parquet"
    if bars.is_file():
        return str(bars), _sha256_file(bars)
    step = next((s for s in config.steps if "source" in s.parameters), None)
    if step is None or not isinstance(step.parameters["source"], str):
        return None
    source = step.parameters["source"]
    if source == "sample" or source.startswith("sample:"):
        try:
            path = sample_path(source.partition(":")[2] or DEFAULT_SAMPLE)
        except AioptError:
            return None
    else:
        # notebooks run with their own folder as the working directory
        path = Path(source).expanduser()
        path = path if path.is_absolute() else step.path.parent / path
    if path.is_file():
        return str(path), _sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(_sha256_file(file).encode())
        return f"{path}/ (all files)", digest.hexdigest()
    return None


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape a run's results (missing ones skipped)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "–"


def _ranking_section(run_dir: Path) -> str:
    """The search's answer first (:func:`aiopt_lib.strategy.ranking.verdict`: walk-forward against
    buy-and-hold, the lockbox, PBO and DSR in words), then the lockbox table and the top-5 table of
    ``run_dir/ranking.json``, or nothing when the run has no ranking."""
    path = run_dir / "ranking.json"
    if not path.is_file():
        return ""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return f"<h2>Ranking</h2><p>ranking.json could not be read: {html.escape(str(exc))}</p>"
    answers = verdict(document)
    answer = "".join(
        f'<p class="answer aiopt-answer" data-answer="{key}">{html.escape(answers[key])}</p>'
        for key in ("walk_forward", "lockbox", "pbo", "dsr")
        if key in answers
    )
    section = (
        "<h2>Does the searched strategy beat buy-and-hold?</h2>"
        f"{answer or '<p>No answer: the ranking file holds no walk-forward result.</p>'}"
    )
    walk_forward = document.get("walk_forward") or {}
    if walk_forward.get("metrics"):
        section += _html_table(
            _statistics_frame(walk_forward["metrics"], walk_forward.get("buy_and_hold") or {}),
            title="Walk-forward out of sample: statistics",
            subtitle=f"{walk_forward.get('start', '')[:10]} to {walk_forward.get('end', '')[:10]}, "
            "the folds' picks stitched, each traded only on its test window",
        )
    lockbox = document.get("lockbox")
    if lockbox:
        hold = lockbox.get("buy_and_hold") or {}
        rows = [{"strategy": "buy-and-hold", "params": "", **_lockbox_figures(hold)}]
        rows += [
            {
                "strategy": row["label"],
                "params": _params_text(row.get("params")),
                **_lockbox_figures(row.get("metrics") or {}),
            }
            for row in lockbox.get("strategies", [])
        ]
        section += (
            f'<h2 id="lockbox">Lockbox: {html.escape(lockbox["start"][:10])} to '
            f"{html.escape(lockbox['end'][:10])} ({lockbox['n_bars']:,} bars)</h2>"
            "<p>The last bars, held out of every study and of the ranking; each choice traded once "
            "on them.</p>"
            + _html_table(
                pl.DataFrame(rows, schema=_LOCKBOX_SCHEMA),
                percent=["return", "max drawdown"],
                decimals={"Sharpe": 2},
            )
        )
    rows = []
    for row in (document.get("top") or [])[:5]:
        oos = row.get("out_of_sample") or {}
        rows.append(
            {
                "rank": row.get("rank"),
                "params": _params_text((row.get("spec") or {}).get("params")),
                "scored from": str(row.get("oos_start", ""))[:10],
                "Sharpe": _float(oos.get("sharpe")),
                "return": _float(oos.get("total_return")),
                "max drawdown": _float(oos.get("max_drawdown")),
                "trades": _float(oos.get("trades")),
                "DSR": _float(row.get("deflated_sharpe")),
            }
        )
    end = walk_forward.get("end", "")[:10]
    top = (
        _html_table(
            pl.DataFrame(rows, schema=_TOP_SCHEMA).with_columns(pl.col("trades").cast(pl.Int64)),
            percent=["return", "max drawdown"],
            decimals={"Sharpe": 2, "DSR": 3},
        )
        if rows
        else "<p>No ranked strategy.</p>"
    )
    return section + (
        "<h2>Ranking (top 5, ranked on post-training data)</h2>"
        "<p>Each parameter set is scored on all bars after its training window, up to the "
        f"lockbox ({html.escape(end)}), and the five best are kept: these figures chose them, so "
        "they are not out of sample for the choice (the walk-forward and lockbox results above "
        "are).</p>" + top
    )


# index tables: the columns and their types (a column of nulls must still be numeric)
_LOCKBOX_SCHEMA = {
    "strategy": pl.String,
    "params": pl.String,
    "return": pl.Float64,
    "Sharpe": pl.Float64,
    "max drawdown": pl.Float64,
    "trades": pl.Int64,
}
_TOP_SCHEMA = {
    "rank": pl.Int64,
    "params": pl.String,
    "scored from": pl.String,
    "Sharpe": pl.Float64,
    "return": pl.Float64,
    "max drawdown": pl.Float64,
    "trades": pl.Float64,
    "DSR": pl.Float64,
}
# the walk-forward statistics of the index: (metric key, label, unit of performance.format_value)
_WALK_FORWARD_STATISTICS = (
    ("total_return", "total return", "share"),
    ("annual_return", "annual return", "share"),
    ("sharpe", "Sharpe ratio", "ratio"),
    ("sortino", "Sortino ratio", "ratio"),
    ("calmar", "Calmar ratio", "ratio"),
    ("max_drawdown", "max drawdown", "share"),
)


def _params_text(params: Mapping[str, Any] | None) -> str:
    """``fast=11, slow=16``: a parameter set as a reader scans it."""
    return ", ".join(f"{k}={v}" for k, v in sorted((params or {}).items()))


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _lockbox_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    trades = metrics.get("trades")
    return {
        "return": _float(metrics.get("total_return")),
        "Sharpe": _float(metrics.get("sharpe")),
        "max drawdown": _float(metrics.get("max_drawdown")),
        "trades": int(trades) if isinstance(trades, int | float) else None,
    }


def _statistics_frame(ours: Mapping[str, Any], hold: Mapping[str, Any]) -> pl.DataFrame:
    """Strategy next to buy-and-hold, one row per statistic, formatted as the tearsheet's
    :func:`~aiopt_lib.strategy.performance.performance_table` formats them."""
    return pl.DataFrame(
        [
            {
                "statistic": label,
                "walk-forward picks": format_value(_float(ours.get(key)), unit),
                "buy-and-hold": format_value(_float(hold.get(key)), unit),
            }
            for key, label, unit in _WALK_FORWARD_STATISTICS
        ],
        schema={"statistic": pl.String, "walk-forward picks": pl.String, "buy-and-hold": pl.String},
    )


def _html_table(frame: pl.DataFrame, **options: Any) -> str:
    """A report table in the one style of every page (:func:`aiopt_lib.viz.tables.table`)."""
    return table(frame, **options).as_raw_html()


def _write_index(
    result_dir: Path,
    run_dir: Path,
    run_id: str,
    config: RunConfig,
    steps: Sequence[StepResult],
    strategies: Sequence[dict[str, str]] = (),
) -> Path:
    rows = []
    done = {step.name for step in steps}
    for step in steps:
        usage = step.usage
        status = step.status
        if step.error:
            status += f": {html.escape(step.error)}"
        rows.append(
            f'<tr><td><a href="{html.escape(step.report.name)}">{html.escape(step.name)}</a></td>'
            f"<td>{status}</td><td>{step.seconds:.1f} s</td>"
            f"<td>{_number(usage and usage.cpu_seconds, '.1f')} s</td>"
            f"<td>{_number(usage and usage.peak_rss_mb, '.0f')} MiB</td>"
            f"<td>{_number(usage and usage.gpu_memory_mb, '.0f')} MiB</td>"
            f"<td>{usage.started.isoformat(timespec='seconds') if usage else ''}</td>"
            f"<td>{usage.ended.isoformat(timespec='seconds') if usage else ''}</td></tr>"
        )
    for step in config.steps:
        if step.name not in done:
            rows.append(f"<tr><td>{html.escape(step.name)}</td><td>not run</td></tr>")
    params = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td><code>{html.escape(json.dumps(dict(s.parameters), default=str))}</code></td></tr>"
        for s in config.steps
    )
    strategy_rows = "".join(
        f'<tr><td><a href="strategies/{html.escape(r["file"])}">{html.escape(r["file"])}</a></td>'
        f"<td>{html.escape(r['parity'])}</td></tr>"
        for r in strategies
    )
    strategy_section = (
        "<h2>Pine Script strategies</h2><p>TradingView strategies of the ranking, run offline on the "
        "same bars and compared trade by trade with the vectorised engine.</p>"
        f"<table><tr><th>file</th><th>parity</th></tr>{strategy_rows}</table>"
        if strategies
        else ""
    )
    data = _input_data_hash(run_dir, config)
    data_line = (
        f"<p>Input data <code>{html.escape(data[0])}</code>, sha256 <code>{data[1]}</code></p>"
        if data
        else "<p>Input data: no file to hash.</p>"
    )
    versions = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in package_versions().items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aiopt run {html.escape(run_id)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:80em}}td,th{{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}}code{{font-size:.85em}}</style>
</head><body>
<h1>aiopt run <code>{html.escape(run_id)}</code></h1>
<p>Configuration <b>{html.escape(config.name)}</b> ({html.escape(str(config.source_file or ""))}),
aiopt {__version__}, Python {platform.python_version()}.</p>
{data_line}
{_ranking_section(run_dir)}
<h2>Run summary</h2>
<p>CPU time and peak memory are the notebook kernel's process tree; a skipped stage was unchanged
and shows the figures of the run that computed it.</p>
<table><tr><th>notebook</th><th>status</th><th>duration</th><th>CPU time</th><th>peak memory</th>
<th>GPU memory</th><th>started (UTC)</th><th>ended (UTC)</th></tr>{"".join(rows)}</table>
{strategy_section}
<h2>Parameters</h2><table>{params}</table>
<h2>Package versions</h2><table>{versions}</table>
</body></html>
"""
    index = result_dir / "index.html"
    write_text_atomic(index, page)
    return index


# ---------------------------------------------------------------------------------------------
# Running


def run_pipeline(
    config: RunConfig,
    *,
    runs_dir: str | Path = "papermill_runs",
    reports_dir: str | Path = "reports",
    run_id: str | None = None,
    show_code: bool | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Execute the configuration's notebooks in order with papermill and render each to HTML.

    Each notebook receives its parameters plus ``run_dir`` (the run's folder, absolute). A failing
    notebook stops the run: its executed copy (papermill marks the failing cell) and its HTML report
    (with code) are kept, the stage is not marked complete, and :class:`StageFailedError` names them.

    Resume: a stage that completes writes ``run_dir/stages/<name>.json`` with its
    :func:`stage_key` (after its executed notebook and HTML exist). Given an existing ``run_id``, a
    stage whose record holds the same key is skipped and its artifacts reused; the first stage
    that runs (changed notebook or parameters, or never completed) runs every later stage too.
    ``force=True`` reruns them all. A new run id (the default) runs everything. A given
    ``run_id`` and the notebook names must be plain names (:func:`aiopt_lib.core.errors.plain_name`):
    they become folder and file names under ``runs_dir`` and ``reports_dir``, and a ``../``
    would write (and clean up stale temporary files) outside them.

    Monitoring: ``start``/``end``/``error`` (and ``info`` for a skip) events go to the run's
    ``run_events`` stream and to ``run_dir/run.log``, with duration, CPU time, peak RSS and GPU
    memory of the kernel's process tree (:class:`StageUsage`); ``index.html`` summarises them.
    One process at a time may run a given run folder (a lock; a second raises).
    """
    run_id = plain_name(run_id, "run id (--run-id)") if run_id is not None else new_run_id(config)
    for step in config.steps:  # each becomes <name>.ipynb / .html / stages/<name>.json
        plain_name(step.name, "notebook name")
    run_dir = (Path(runs_dir) / run_id).resolve()
    report_dir = (Path(reports_dir) / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    with _RunLock(run_dir):
        _remove_stale_temporaries(run_dir, report_dir)
        events = _EventLog(run_dir, run_id)
        try:
            return _run_locked(config, run_id, run_dir, report_dir, show_code, force, log, events)
        finally:
            events.close()


def _run_locked(
    config: RunConfig,
    run_id: str,
    run_dir: Path,
    report_dir: Path,
    show_code: bool | None,
    force: bool,
    log: Callable[[str], None] | None,
    events: _EventLog,
) -> RunResult:
    import papermill

    say = log or (lambda message: None)
    show = config.show_code if show_code is None else show_code
    write_text_atomic(
        run_dir / "run.json",
        json.dumps(
            {
                "run_id": run_id,
                "config": config.name,
                "config_file": str(config.source_file),
                "fingerprint": config.fingerprint(),
                "steps": [
                    {"notebook": s.name, "parameters": dict(s.parameters)} for s in config.steps
                ],
            },
            indent=2,
            default=str,
        ),
    )
    gpu = _gpu_available()
    results: list[StepResult] = []
    keys: list[str] = []
    must_run = force
    for position, step in enumerate(config.steps):
        out_nb = run_dir / f"{step.name}.ipynb"
        out_html = report_dir / f"{step.name}.html"
        key = stage_key(step.path, step.parameters, keys)
        keys.append(key)
        record = read_stage_record(run_dir, step.name)
        if not must_run and record and record.get("key") == key and out_nb.is_file():
            if not out_html.is_file():  # e.g. another reports folder: render the kept notebook
                notebook_to_html(out_nb, out_html, show_code=show)
            usage = StageUsage.from_json(record["usage"]) if record.get("usage") else None
            results.append(
                StepResult(
                    step.name,
                    out_nb,
                    out_html,
                    usage.seconds if usage else 0.0,
                    True,
                    skipped=True,
                    key=key,
                    usage=usage,
                )
            )
            events.event(step.name, "info", SKIPPED_MESSAGE)
            say(f"[{step.name}] {SKIPPED_MESSAGE}")
            continue
        # From here on every stage runs. Drop the completion records of this stage and the later
        # ones first: a run killed or failing from now on must not leave them looking current.
        must_run = True
        for later in config.steps[position:]:
            _stage_record_path(run_dir, later.name).unlink(missing_ok=True)
        params = {**dict(step.parameters), "run_dir": str(run_dir)}
        say(f"[{step.name}] running")
        error: str | None = None
        monitor = _ProcessTreeMonitor(gpu=gpu)
        try:
            with monitor:
                events.event(step.name, "start", str(step.path), ts=monitor.started)
                with atomic_path(out_nb) as tmp_nb:
                    try:
                        papermill.execute_notebook(
                            str(step.path),
                            str(tmp_nb),
                            parameters=params,
                            kernel_name="python3",
                            cwd=str(step.path.parent),
                            progress_bar=False,
                            log_output=False,
                        )
                    except papermill.PapermillExecutionError as exc:
                        error = f"{exc.ename}: {exc.evalue}"
        except BaseException as exc:  # kernel died, interrupted...: log it, leave it incomplete
            events.event(step.name, "error", f"{type(exc).__name__}: {exc}", usage=monitor.usage())
            raise
        usage = monitor.usage()
        notebook_to_html(out_nb, out_html, show_code=show or error is not None)
        results.append(
            StepResult(
                step.name,
                out_nb,
                out_html,
                usage.seconds,
                error is None,
                error,
                key=key,
                usage=usage,
            )
        )
        if error is not None:
            events.event(step.name, "error", error, ts=usage.ended, usage=usage)
            say(f"[{step.name}] FAILED in {usage.seconds:.1f} s -> {out_html}")
            _write_index(report_dir, run_dir, run_id, config, results)
            raise StageFailedError(
                f"notebook {step.name} failed ({error}); executed notebook: {out_nb}; report: {out_html}"
            )
        # Completion is recorded last, once the executed notebook and its HTML are in place.
        write_text_atomic(
            _stage_record_path(run_dir, step.name),
            json.dumps(
                {
                    "stage": step.name,
                    "key": key,
                    "notebook": str(step.path),
                    "notebook_sha256": _sha256_file(step.path),
                    "parameters": dict(step.parameters),
                    "executed_notebook": str(out_nb),
                    "report": str(out_html),
                    "usage": usage.to_json(),
                },
                indent=2,
                default=str,
            ),
        )
        events.event(step.name, "end", None, ts=usage.ended, usage=usage)
        say(f"[{step.name}] done in {usage.seconds:.1f} s -> {out_html}")
    strategies = _publish_strategies(run_dir, report_dir)
    index = _write_index(report_dir, run_dir, run_id, config, results, strategies)
    return RunResult(run_id, run_dir, report_dir, index, tuple(results))
