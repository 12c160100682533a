import datetime as dt
import json
from pathlib import Path

import nbformat
import pytest
from notebook_helpers import write_config, write_notebook

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.runs.runner import (
    StageFailedError,
    load_run_config,
    new_run_id,
    notebook_to_html,
    parse_override,
    run_pipeline,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "papermill_runs" / "default.yaml"


def test_default_config_resolves():
    config = load_run_config(DEFAULT_CONFIG)
    assert config.steps[0].name == "01_data_exploration"
    first = config.steps[0]
    assert first.parameters["source"] == "sample"
    assert first.parameters["window_bars"] == 120
    assert "run_dir" not in first.parameters


def test_overrides_shared_and_per_notebook():
    config = load_run_config(
        DEFAULT_CONFIG, ["symbol=EURUSD", "01_data_exploration.window_bars=60", "timeframe=4h"]
    )
    params = config.steps[0].parameters
    assert params["window_bars"] == 60
    assert params["timeframe"] == "4h"


def test_parse_override_reads_yaml_values():
    assert parse_override("n=3") == ("n", 3)
    assert parse_override("x=null") == ("x", None)
    assert parse_override("flag=true") == ("flag", True)
    assert parse_override("name=EURUSD") == ("name", "EURUSD")
    assert parse_override("start=2019-02-04") == ("start", "2019-02-04")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_typos_are_rejected():
    with pytest.raises(ConfigError, match="declared by no notebook"):
        load_run_config(DEFAULT_CONFIG, ["windw_bars=3"])
    with pytest.raises(ConfigError, match="does not declare"):
        load_run_config(DEFAULT_CONFIG, ["01_data_exploration.nope=1"])
    with pytest.raises(ConfigError, match="not in this run"):
        load_run_config(DEFAULT_CONFIG, ["09_missing.x=1"])


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")
    bad = write_config(tmp_path / "bad.yaml", "notebooks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    empty = write_config(tmp_path / "empty.yaml", "name: x\n")
    with pytest.raises(ConfigError, match="lists no notebook"):
        load_run_config(empty)
    unknown = write_config(tmp_path / "u.yaml", "notebookz: []\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config(unknown)
    missing_nb = write_config(tmp_path / "m.yaml", "notebooks_dir: .\nnotebooks: [nothere]\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(missing_nb)


def test_run_id_is_time_plus_config_hash():
    config = load_run_config(DEFAULT_CONFIG)
    other = load_run_config(DEFAULT_CONFIG, ["01_data_exploration.window_bars=60"])
    now = dt.datetime(2026, 11, 24, 10, 30, tzinfo=dt.UTC)
    assert new_run_id(config, now=now).startswith("20261124T103000Z-")
    assert new_run_id(config, now=now) == new_run_id(config, now=now)
    assert new_run_id(config, now=now) != new_run_id(other, now=now)


@pytest.mark.slow
def test_run_pipeline_executes_and_renders(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(
        nbdir / "a.ipynb",
        [
            "from pathlib import Path\nPath(run_dir, 'a.txt').write_text(str(n * 2))",
            "print('value', n * 2)",
        ],
        "n = 1\nrun_dir = '.'",
    )
    write_notebook(
        nbdir / "b.ipynb",
        ["from pathlib import Path\nassert Path(run_dir, 'a.txt').read_text() == '14'"],
        "run_dir = '.'",
    )
    config_path = write_config(
        tmp_path / "run.yaml",
        "name: t\nnotebooks_dir: nbs\nparameters: {n: 7}\nnotebooks: [a, b]\n",
    )
    result = run_pipeline(
        load_run_config(config_path),
        runs_dir=tmp_path / "runs",
        reports_dir=tmp_path / "reports",
        run_id="r1",
    )
    assert result.ok
    assert (tmp_path / "runs" / "r1" / "a.ipynb").is_file()
    assert (tmp_path / "runs" / "r1" / "a.txt").read_text() == "14"
    html = (tmp_path / "reports" / "r1" / "a.html").read_text()
    assert "value 14" in html
    assert "jp-InputArea jp-Cell-inputArea" not in html  # code hidden by default
    index = result.index.read_text()
    assert 'href="a.html"' in index and 'href="b.html"' in index
    meta = json.loads((tmp_path / "runs" / "r1" / "run.json").read_text())
    assert meta["steps"][0]["parameters"] == {"n": 7}


@pytest.mark.slow
def test_failing_notebook_is_kept_and_named(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(nbdir / "boom.ipynb", ["raise RuntimeError('stage exploded')"], "run_dir = '.'")
    config_path = write_config(tmp_path / "run.yaml", "notebooks_dir: nbs\nnotebooks: [boom]\n")
    with pytest.raises(StageFailedError, match=r"boom.*stage exploded.*boom\.ipynb"):
        run_pipeline(
            load_run_config(config_path),
            runs_dir=tmp_path / "runs",
            reports_dir=tmp_path / "rep",
            run_id="r",
        )
    executed = nbformat.read(tmp_path / "runs" / "r" / "boom.ipynb", as_version=4)
    assert any(
        o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", [])
    )
    html = (tmp_path / "rep" / "r" / "boom.html").read_text()
    assert "stage exploded" in html
    assert "jp-InputArea jp-Cell-inputArea" in html  # failed reports show the code


def test_notebook_to_html_has_no_external_scripts(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# hello")]
    src = tmp_path / "x.ipynb"
    nbformat.write(nb, src)
    page = notebook_to_html(src, tmp_path / "x.html").read_text()
    assert "hello" in page
    assert 'src="http' not in page and "src='http" not in page
