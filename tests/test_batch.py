import json
import re
from pathlib import Path

import polars as pl
import pytest
from notebook_helpers import write_notebook

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.runs.batch import (
    batch_run_id,
    expand_batch,
    load_batch,
    read_ranking_metrics,
    run_batch,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "papermill_runs" / "default.yaml"


def write_batch(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_grid_expands_to_the_cartesian_product(tmp_path):
    batch = write_batch(
        tmp_path / "grid.yaml",
        f"""
base: {DEFAULT_CONFIG}
parameters:
  04_optuna_search.n_trials: 5
grid:
  04_optuna_search.template: [ema_cross, bollinger_reversion]
  04_optuna_search.n_folds: [2, 3]
""",
    )
    runs = expand_batch(batch)
    assert [
        (r.overrides["04_optuna_search.template"], r.overrides["04_optuna_search.n_folds"])
        for r in runs
    ] == [
        ("ema_cross", 2),
        ("ema_cross", 3),
        ("bollinger_reversion", 2),
        ("bollinger_reversion", 3),
    ]
    assert all(r.overrides["04_optuna_search.n_trials"] == 5 for r in runs)
    # name defaults to the file's stem; k counts from 1; the hash is of the overrides
    assert all(re.fullmatch(r"grid-0[1-4]-[0-9a-f]{8}", r.run_id) for r in runs)
    assert [r.run_id.split("-")[1] for r in runs] == ["01", "02", "03", "04"]
    assert len({r.run_id.split("-")[2] for r in runs}) == 4
    # deterministic: the same file gives the same ids, key order in a mapping does not matter
    assert [r.run_id for r in expand_batch(batch)] == [r.run_id for r in runs]
    first = dict(runs[0].overrides)
    assert batch_run_id("grid", 1, dict(reversed(list(first.items())))) == runs[0].run_id
    assert batch_run_id("grid", 1, {**first, "04_optuna_search.n_trials": 6}) != runs[0].run_id


def test_runs_list_form_and_settings(tmp_path):
    batch = write_batch(
        tmp_path / "list.yaml",
        f"""
name: study-a
base: {DEFAULT_CONFIG}
workers: 3
runs:
  - {{}}
  - {{04_optuna_search.template: pattern_rsi, window_bars: 60}}
  - {{timeframe: 4h, start: 2017-03-01}}
""",
    )
    loaded = load_batch(batch)
    assert loaded.name == "study-a" and loaded.workers == 3 and loaded.base == DEFAULT_CONFIG
    assert [dict(r.overrides) for r in loaded.runs] == [
        {},
        {"04_optuna_search.template": "pattern_rsi", "window_bars": 60},
        # YAML dates reach the notebooks as ISO strings (parameters travel as JSON)
        {"timeframe": "4h", "start": "2017-03-01"},
    ]
    assert [r.run_id[: len("study-a-01")] for r in loaded.runs] == [
        "study-a-01",
        "study-a-02",
        "study-a-03",
    ]


def test_example_grid_expands():
    runs = expand_batch(ROOT / "papermill_runs" / "grid_templates.yaml")
    assert len(runs) == 4
    assert {r.overrides["04_optuna_search.template"] for r in runs} == {
        "ema_cross",
        "bollinger_reversion",
    }
    assert {r.overrides["04_optuna_search.n_folds"] for r in runs} == {2, 3}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "grid:\n  04_optuna_search.n_trails: [1, 2]\n",
            r"grid\.04_optuna_search\.n_trails: .*does not declare.*n_trails",
        ),
        ("grid:\n  windw_bars: [1, 2]\n", r"grid\.windw_bars: .*declared by no notebook"),
        ("grid:\n  09_nothing.x: [1]\n", r"grid\.09_nothing\.x: .*not in this run"),
        (
            "runs:\n  - {window_bars: 60}\n  - {04_optuna_search.nope: 1}\n",
            r"runs\[1\]: .*does not declare.*nope",
        ),
        ("grid:\n  window_bars: 60\n", r"grid\.window_bars: expected a non-empty list"),
        ("grid:\n  window_bars: []\n", r"grid\.window_bars: expected a non-empty list"),
        ("grid:\n  window_bars: [60]\nruns:\n  - {}\n", r"either 'grid' or 'runs'"),
        ("workers: 2\n", r"either 'grid' or 'runs'"),
        (
            "runs:\n  - {window_bars: 60}\n  - {window_bars: 60}\n",
            r"runs\[1\]: same parameters as .*runs\[0\]",
        ),
        ("runs:\n  - [window_bars, 60]\n", r"runs\[0\]: expected a mapping"),
        ("runs: []\n", r"runs must be a non-empty list"),
        ("workers: 0\nruns:\n  - {}\n", r"workers must be a positive integer"),
        ("name: a/b\nruns:\n  - {}\n", r"name 'a/b'"),
        ("colour: red\nruns:\n  - {}\n", r"unknown key\(s\) \['colour'\]"),
        ("parameters: {windw: 1}\nruns:\n  - {}\n", r"parameters: .*declared by no notebook"),
    ],
)
def test_invalid_batches_name_file_and_key(tmp_path, body, message):
    batch = write_batch(tmp_path / "bad.yaml", f"base: {DEFAULT_CONFIG}\n{body}")
    with pytest.raises(ConfigError, match=message) as info:
        expand_batch(batch)
    assert str(batch) in str(info.value)


def test_missing_base_and_file(tmp_path):
    with pytest.raises(ConfigError, match="batch file not found"):
        expand_batch(tmp_path / "none.yaml")
    batch = write_batch(tmp_path / "b.yaml", "base: nowhere.yaml\nruns:\n  - {}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: base: .*nowhere\.yaml not found"):
        expand_batch(batch)
    with pytest.raises(ConfigError, match="'base' must name"):
        expand_batch(write_batch(tmp_path / "c.yaml", "runs:\n  - {}\n"))


def test_read_ranking_metrics_tolerates_missing_figures(tmp_path):
    path = tmp_path / "ranking.json"
    path.write_text(
        json.dumps({"walk_forward": {"metrics": {"sharpe": 1.5, "calmar": None}}, "top": []})
    )
    figures = read_ranking_metrics(path)
    assert figures == {
        "wf_calmar": None,
        "wf_sharpe": 1.5,
        "top_oos_sharpe": None,
        "top_dsr": None,
        "top_psr": None,
        "pbo": None,
    }
    path.write_text("{")
    with pytest.raises(ConfigError, match="cannot read the ranking"):
        read_ranking_metrics(path)


TINY_PARAMETERS = """\
label = "x"
sharpe = None
fail = False
barrier_dir = ""
expect = 2
run_dir = ""
"""

# Each run announces itself in barrier_dir and waits until `expect` runs have: it only gets past
# this cell if that many runs execute at the same time (it fails after 60 s otherwise).
TINY_BARRIER = """\
import json, os, time
from pathlib import Path
barrier = Path(barrier_dir)
(barrier / f"{label}.started").write_text(str(os.getpid()))
deadline = time.monotonic() + 60
while len(list(barrier.glob("*.started"))) < expect:
    if time.monotonic() > deadline:
        raise TimeoutError("the other runs never started")
    time.sleep(0.05)
"""

TINY_WORK = """\
if fail:
    raise RuntimeError(f"planned failure of {label}")
if sharpe is not None:
    ranking = {
        "schema_version": 1,
        "pbo": {"pbo": 0.25, "n_combinations": 70},
        "walk_forward": {"metrics": {"sharpe": sharpe, "total_return": sharpe / 10,
                                     "max_drawdown": 0.04, "trades": 17.0}},
        "top": [{"rank": 1, "deflated_sharpe": 0.875, "probabilistic_sharpe": 0.9,
                 "out_of_sample": {"sharpe": sharpe * 2, "trades": 9.0}}],
    }
    Path(run_dir, "ranking.json").write_text(json.dumps(ranking))
print(f"{label} done")
"""


def write_tiny_notebook(path: Path) -> Path:
    return write_notebook(path, [TINY_BARRIER, TINY_WORK], TINY_PARAMETERS)


def test_parallel_batch_with_a_failing_run(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    write_tiny_notebook(studies / "tiny.ipynb")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    (studies / "base.yaml").write_text(
        f"name: tiny\nnotebooks_dir: .\nparameters:\n  barrier_dir: {barrier}\n"
        "notebooks:\n  - notebook: tiny\n",
        encoding="utf-8",
    )
    batch = write_batch(
        studies / "batch.yaml",
        """
name: tinybatch
base: base.yaml
workers: 1
runs:
  - {label: a, sharpe: 0.5}
  - {label: b, sharpe: 1.25}
  - {tiny.label: c, fail: true}
""",
    )
    lines: list[str] = []
    result = run_batch(
        batch,
        workers=2,
        runs_dir=tmp_path / "runs",
        reports_dir=tmp_path / "reports",
        log=lines.append,
    )
    a, b, c = result.runs
    assert [r.run_id for r in result.runs] == [r.run_id for r in expand_batch(batch)]
    # a and b ran at the same time in two processes (the barrier cell proves it as well)
    assert a.ok and b.ok, (a.error, b.error)
    assert a.pid != b.pid
    assert max(a.started, b.started) < min(a.finished, b.finished)
    # the failing run is recorded, with its error, and the others finished
    assert not c.ok and not result.ok and result.failed == (c,)
    assert "RuntimeError: planned failure of c" in c.error
    assert any(f"[{c.run_id}] FAILED" in line for line in lines)
    assert a.metrics["wf_sharpe"] == 0.5 and b.metrics["top_oos_sharpe"] == 2.5
    assert b.metrics["top_dsr"] == 0.875 and b.metrics["pbo"] == 0.25
    assert c.metrics == {}
    for run in result.runs:
        assert (run.run_dir / "tiny.ipynb").is_file()
        assert run.report_index == tmp_path / "reports" / run.run_id / "index.html"

    assert result.index == tmp_path / "reports" / "tinybatch" / "index.html"
    page = result.index.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link)\b", page)  # self-contained: nothing to load
    for run in result.runs:
        link = f"../{run.run_id}/index.html"
        assert f"href='{link}'" in page and (result.index.parent / link).is_file()
    rows = {run.run_id: row for run, row in zip(result.runs, page.split("<tr>")[2:], strict=True)}
    assert ">0.5<" in rows[a.run_id] and ">1<" in rows[a.run_id]  # OOS Sharpe, top OOS Sharpe
    assert ">1.25<" in rows[b.run_id] and ">2.5<" in rows[b.run_id] and ">0.875<" in rows[b.run_id]
    assert ">0.25<" in rows[b.run_id]  # PBO
    assert "FAILED: StageFailedError" in rows[c.run_id]
    assert "RuntimeError: planned failure of c" in rows[c.run_id]
    assert ">a<" in rows[a.run_id] and ">c<" in rows[c.run_id]  # the overrides

    frame = pl.read_parquet(result.comparison)
    assert frame["run_id"].to_list() == [a.run_id, b.run_id, c.run_id]
    assert frame["status"].to_list() == ["ok", "ok", "failed"]
    assert frame["wf_sharpe"].to_list() == [0.5, 1.25, None]
    assert frame["pbo"].to_list() == [0.25, 0.25, None]
    assert frame["label"].to_list() == ["a", "b", None]
    assert frame["tiny.label"].to_list() == [None, None, "c"]
    assert frame["fail"].to_list() == [None, None, True]
    assert frame["seconds"].min() > 0
    assert sorted(p.name for p in result.index.parent.iterdir()) == [
        "comparison.parquet",
        "index.html",
    ]
