"""Runs: execute the pipeline's notebooks with papermill and render each to self-contained HTML.

A run configuration (YAML, in ``papermill_runs/``) names the notebooks in order and their
parameters. Each run gets an id (UTC start time + a hash of the resolved configuration); executed
notebooks go to ``papermill_runs/<run-id>/`` together with the artifacts the notebooks write there
(each notebook receives that folder as its ``run_dir`` parameter), and HTML reports go to
``reports/<run-id>/`` with an ``index.html``.

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
import json
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from aiopt_lib.atomic import atomic_path, write_text_atomic
from aiopt_lib.errors import AioptError, ConfigError

RESERVED_PARAMETERS = ("run_dir",)


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
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: run configuration not found")
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level")
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
        name = str(entry["notebook"]).removesuffix(".ipynb")
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
    exporter = nbconvert.HTMLExporter(template_name="lab", embed_images=True)
    exporter.exclude_input = not show_code
    exporter.exclude_input_prompt = not show_code
    exporter.exclude_output_prompt = True
    body, _resources = exporter.from_notebook_node(nb)
    body = _strip_external_scripts(body)
    with atomic_path(out) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return Path(out)


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


def _write_index(
    result_dir: Path,
    run_id: str,
    config: RunConfig,
    steps: Sequence[StepResult],
    strategies: Sequence[dict[str, str]] = (),
) -> Path:
    rows = []
    for step in steps:
        status = "ok" if step.ok else f"FAILED: {html.escape(step.error or '')}"
        rows.append(
            f'<tr><td><a href="{html.escape(step.report.name)}">{html.escape(step.name)}</a></td>'
            f"<td>{step.seconds:.1f} s</td><td>{status}</td></tr>"
        )
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
    from aiopt_lib import __version__

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aiopt run {html.escape(run_id)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}td,th{{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}}code{{font-size:.85em}}</style>
</head><body>
<h1>aiopt run <code>{html.escape(run_id)}</code></h1>
<p>Configuration <b>{html.escape(config.name)}</b> ({html.escape(str(config.source_file or ""))}),
aiopt {__version__}, Python {platform.python_version()}.</p>
<h2>Notebooks</h2><table><tr><th>report</th><th>duration</th><th>status</th></tr>{"".join(rows)}</table>
{strategy_section}
<h2>Parameters</h2><table>{params}</table>
</body></html>
"""
    index = result_dir / "index.html"
    write_text_atomic(index, page)
    return index


def run_pipeline(
    config: RunConfig,
    *,
    runs_dir: str | Path = "papermill_runs",
    reports_dir: str | Path = "reports",
    run_id: str | None = None,
    show_code: bool | None = None,
    log: Any = None,
) -> RunResult:
    """Execute the configuration's notebooks in order with papermill and render each to HTML.

    Each notebook receives its parameters plus ``run_dir`` (the run's folder, absolute). A failing
    notebook stops the run: its executed copy (papermill marks the failing cell) and its HTML report
    are kept, and :class:`StageFailedError` names them.
    """
    import papermill

    run_id = run_id or new_run_id(config)
    run_dir = (Path(runs_dir) / run_id).resolve()
    report_dir = (Path(reports_dir) / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
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
    results: list[StepResult] = []
    for step in config.steps:
        out_nb = run_dir / f"{step.name}.ipynb"
        out_html = report_dir / f"{step.name}.html"
        params = {**dict(step.parameters), "run_dir": str(run_dir)}
        if log:
            log(f"[{step.name}] running")
        started = time.perf_counter()
        error: str | None = None
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
        seconds = time.perf_counter() - started
        notebook_to_html(out_nb, out_html, show_code=show or error is not None)
        results.append(StepResult(step.name, out_nb, out_html, seconds, error is None, error))
        if log:
            log(
                f"[{step.name}] {'done' if error is None else 'FAILED'} in {seconds:.1f} s -> {out_html}"
            )
        if error is not None:
            _write_index(report_dir, run_id, config, results)
            raise StageFailedError(
                f"notebook {step.name} failed ({error}); executed notebook: {out_nb}; report: {out_html}"
            )
    strategies = _publish_strategies(run_dir, report_dir)
    index = _write_index(report_dir, run_id, config, results, strategies)
    return RunResult(run_id, run_dir, report_dir, index, tuple(results))
