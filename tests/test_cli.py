"""The `aiopt` command line: help, data info/validate, the Dukascopy command offline, and the
one-line errors for bad input (no traceback unless --debug)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from aiopt_lib.cli import EXIT_ERROR, EXIT_OK, EXIT_PROBLEMS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console script's code path, in a subprocess (as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "aiopt_lib.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands():
    done = run_cli("--help")
    assert done.returncode == 0
    for word in ("data", "run"):
        assert word in done.stdout
    data_help = run_cli("data", "--help")
    for word in ("info", "validate", "dukascopy"):
        assert word in data_help.stdout


def test_info_on_the_sample(capsys):
    assert main(["data", "info", "sample", "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["bars"] == 6225
    assert info["timeframe"] == "1h"
    assert info["first_bar"].startswith("2017-01-01T22:00")


def test_validate_clean_sample_exits_0(capsys):
    assert main(["data", "validate", "sample"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "gap" in out.lower()


def test_validate_problems_exit_1(tmp_path, capsys, eurusd_h1_csv):
    lines = eurusd_h1_csv.read_text().splitlines()
    # an OHLC inconsistency (high below the close) on data line 11 and a duplicated row
    fields = lines[10].split(",")
    fields[2] = str(float(fields[4]) - 0.001)
    lines[10] = ",".join(fields)
    lines.insert(20, lines[20])
    bad = tmp_path / "EURUSD_H1.csv"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["data", "validate", str(bad), "--json"]) == EXIT_PROBLEMS
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert "ohlc_inconsistent" in text and "duplicate" in text


def test_malformed_csv_row_is_one_line_error(tmp_path, eurusd_h1_csv):
    lines = eurusd_h1_csv.read_text().splitlines()
    fields = lines[16].split(",")
    fields[4] = "1.05x"
    lines[16] = ",".join(fields)
    bad = tmp_path / "broken.csv"
    bad.write_text("\n".join(lines) + "\n")
    done = run_cli("data", "validate", str(bad))
    assert done.returncode == EXIT_ERROR
    err = done.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "broken.csv" in err and "line 17" in err and "close" in err.lower() and "1.05x" in err
    debug = run_cli("data", "validate", str(bad), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_truncated_bi5_names_the_file(tmp_path, dukascopy_dir):
    src = dukascopy_dir / "EURUSD" / "2019" / "01" / "04" / "00h_ticks.bi5"
    folder = tmp_path / "EURUSD" / "2019" / "01" / "04"
    folder.mkdir(parents=True)
    broken = folder / "00h_ticks.bi5"
    broken.write_bytes(src.read_bytes()[:-200])
    done = run_cli("data", "info", str(broken))
    assert done.returncode == EXIT_ERROR
    assert "00h_ticks.bi5" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_file_is_one_line_error():
    done = run_cli("data", "info", "/nonexistent/file.csv")
    assert done.returncode == EXIT_ERROR
    assert "file.csv" in done.stderr and "Traceback" not in done.stderr


def test_dukascopy_offline_from_cache(tmp_path, dukascopy_dir, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(dukascopy_dir, cache)
    out = tmp_path / "m1.parquet"
    code = main(
        [
            "data",
            "dukascopy",
            "EURUSD",
            "--start",
            "2019-02-04",
            "--end",
            "2019-02-06",
            "--timeframe",
            "m1",
            "--cache",
            str(cache),
            "--out",
            str(out),
            "--offline",
            "--no-progress",
        ]
    )
    assert code == EXIT_OK
    bars = pl.read_parquet(out)
    assert bars.height == 2880
    assert "2880 rows" in capsys.readouterr().out


def test_dukascopy_offline_names_first_missing_file(tmp_path, capsys):
    code = main(
        [
            "data",
            "dukascopy",
            "EURUSD",
            "--start",
            "2019-03-01",
            "--end",
            "2019-03-02",
            "--timeframe",
            "m1",
            "--cache",
            str(tmp_path),
            "--out",
            str(tmp_path / "x.parquet"),
            "--offline",
            "--no-progress",
        ]
    )
    assert code == EXIT_ERROR
    err = capsys.readouterr().err
    assert "EURUSD/2019/02/01/BID_candles_min_1.bi5" in err.replace("\\", "/")
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("args", [["run", "--config", "nope.yaml"], ["run", "-p", "novalue"]])
def test_run_config_errors(args, capsys):
    assert main(args) == EXIT_ERROR
    assert "aiopt: error:" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "aiopt"
    assert script.exists(), "pip install -e . should install the aiopt console script"
