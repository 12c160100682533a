"""The `aiopt` command line: help, data info/validate, the Dukascopy command offline, and the
one-line errors for bad input (no traceback unless --debug)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from aiopt_lib.runs.cli import EXIT_ERROR, EXIT_OK, EXIT_PROBLEMS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console script's code path, in a subprocess (as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "aiopt_lib.runs.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
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


# ---------------------------------------------------------------------------------------------
# Readers that accept what users have (issue 14): through the command line


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    assert code == EXIT_ERROR
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, err
    assert line.startswith("aiopt: error: "), line
    for word in words:
        assert word in line, line
    return line


def real_bars(n: int = 72) -> pl.DataFrame:
    """The first ``n`` hourly bars of the real 2017 EUR/USD sample (tests/data/eurusd_h1)."""
    from aiopt_lib.data.sources import load_sample

    return load_sample().head(n)


def write_csv(path: Path, header: str, stamps: list[str], bars: pl.DataFrame) -> Path:
    lines = [header]
    for stamp, row in zip(stamps, bars.iter_rows(named=True), strict=True):
        prices = ",".join(str(row[c]) for c in ("open", "high", "low", "close", "volume"))
        lines.append(f"{stamp},{prices}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_info_reads_a_pandas_csv_and_says_which_column_is_the_time(tmp_path, capsys):
    bars = real_bars()
    frame = bars.to_pandas().set_index("ts")
    frame.index = frame.index.tz_localize(None)
    frame.index.name = None
    frame.columns = ["Open", "High", "Low", "Close", "Volume"]
    path = tmp_path / "pandas.csv"
    frame.to_csv(path)
    code, out, _ = cli(capsys, "data", "info", str(path))
    assert code == EXIT_OK
    assert "bars                72" in out
    assert "note                time taken from column 1 (no header name)" in out
    code, out, _ = cli(capsys, "data", "info", str(path), "--json")
    info = json.loads(out)
    assert info["first_bar"].startswith("2017-01-01T22:00")
    assert "column 1 (no header name)" in info["notes"][0]
    code, out, _ = cli(capsys, "data", "validate", str(path))
    assert code == EXIT_OK
    assert out.startswith("note: time taken from column 1")


def stamp_csv(tmp_path: Path) -> Path:
    """A CSV whose time column has an unknown name and format, and an 'Adj Close' column."""
    bars = real_bars()
    stamps = [f"{t:%d/%m/%Y %H:%M}" for t in bars["ts"]]
    path = write_csv(tmp_path / "yahoo.csv", "Stamp,Open,High,Low,Close,Volume", stamps, bars)
    text = path.read_text().splitlines()
    text[0] += ",Adj Close"
    text[1:] = [f"{line},{1.5 + i / 1000}" for i, line in enumerate(text[1:])]
    path.write_text("\n".join(text) + "\n")
    return path


def test_columns_and_time_format_options_of_the_data_commands(tmp_path, capsys):
    path = stamp_csv(tmp_path)
    code, _, err = cli(capsys, "data", "info", str(path))
    assert_one_line_error(code, err, "yahoo.csv, line 1: no time column found", "--columns ts=NAME")
    options = ["--columns", "ts=Stamp, close=Adj Close", "--time-format", "%d/%m/%Y %H:%M"]
    code, out, _ = cli(capsys, "data", "info", str(path), *options, "--json")
    assert code == EXIT_OK
    info = json.loads(out)
    assert info["bars"] == 72 and info["first_bar"].startswith("2017-01-01T22:00")
    assert info["highest"] >= 1.5  # the close is 'Adj Close' (high/low widened to contain it)
    code, out, _ = cli(capsys, "data", "validate", str(path), *options)
    assert code == EXIT_PROBLEMS  # 'Adj Close' is outside the bars' high/low
    assert "ohlc_inconsistent" in out
    code, out, _ = cli(
        capsys, "features", str(path), *options, "--out", str(tmp_path / "f.parquet")
    )
    assert code == EXIT_OK and "72 bars" in out


@pytest.mark.parametrize(
    "command",
    [
        ["search", "--bars", "{path}", "--out", "{out}"],
        ["dataset", "build", "--bars", "{path}", "--out", "{out}"],
        ["features", "{path}", "--out", "{out}/f.parquet"],
        ["data", "validate", "{path}"],
    ],
    ids=["search", "dataset-build", "features", "validate"],
)
def test_every_bars_option_passes_columns_to_the_reader(tmp_path, capsys, command):
    path = stamp_csv(tmp_path)
    args = [a.format(path=path, out=tmp_path / "out") for a in command]
    code, _, err = cli(capsys, *args, "--columns", "ts=Nope")
    assert_one_line_error(code, err, "'Nope' is not a column of the file (given for 'ts')")
    code, _, err = cli(capsys, *args, "--columns", "ts")
    assert_one_line_error(code, err, "--columns: 'ts' is not KEY=NAME")
    code, _, err = cli(capsys, *args, "--format", "nope")
    assert_one_line_error(code, err, "unknown format 'nope'")


def test_unknown_layout_error_names_the_cli_option(tmp_path, capsys):
    path = tmp_path / "odd.csv"
    path.write_text("2017-01-02 00:00:00,1,2,0.5,1.5,1\n")
    code, _, err = cli(capsys, "data", "info", str(path))
    assert_one_line_error(code, err, "odd.csv, line 1", "(CLI: --format)", "(CLI: --columns)")


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("offset-then-naive", "line 38, field 'timestamp': timestamp style changes"),
        ("seconds-then-milliseconds", "line 42, field 'timestamp': epoch unit changes"),
    ],
)
def test_time_style_changes_are_one_line_errors(tmp_path, capsys, kind, where):
    bars = real_bars()
    if kind == "offset-then-naive":
        local = [t + dt.timedelta(hours=2) for t in bars["ts"]]
        good = [f"{t:%Y-%m-%d %H:%M:%S}+02:00" for t in local]
        bad = good[:36] + [f"{t:%Y-%m-%d %H:%M:%S}" for t in local[36:]]
    else:
        good = [str(int(t.timestamp())) for t in bars["ts"]]
        bad = [s if i != 40 else s + "000" for i, s in enumerate(good)]
    header = "timestamp,open,high,low,close,volume"
    path = write_csv(tmp_path / "mixed.csv", header, bad, bars)
    for command in ("info", "validate"):
        code, _, err = cli(capsys, "data", command, str(path))
        assert_one_line_error(code, err, f"{path}, {where}")
    good_path = write_csv(tmp_path / "good.csv", header, good, bars)
    code, out, _ = cli(capsys, "data", "info", str(good_path), "--json")
    assert code == EXIT_OK
    info = json.loads(out)
    assert (info["bars"], info["first_bar"]) == (72, "2017-01-01T22:00:00+00:00")


def test_implausible_prices_are_one_line_errors(tmp_path, capsys):
    bars = real_bars(15)
    closes = bars["close"].to_list()
    closes[7] *= 10  # a 10x spike in a short file
    spiky = bars.with_columns(
        pl.Series("close", closes), pl.max_horizontal("high", pl.Series(closes)).alias("high")
    )
    stamps = [f"{t:%Y-%m-%d %H:%M:%S}" for t in bars["ts"]]
    header = "time,open,high,low,close,volume"
    path = write_csv(tmp_path / "short.csv", header, stamps, spiky)
    code, _, err = cli(capsys, "data", "info", str(path))
    assert_one_line_error(code, err, f"{path}, line 9, field 'high': implausible price")
    code, out, _ = cli(capsys, "data", "validate", str(path))
    assert code == EXIT_PROBLEMS
    assert "line 9" in out and "implausible_price" in out
    good = write_csv(tmp_path / "good.csv", header, stamps, bars)
    assert cli(capsys, "data", "validate", str(good))[0] == EXIT_OK

    flipped = tmp_path / "flip.parquet"
    real_bars().with_columns(
        pl.when(pl.int_range(pl.len()) == 30)
        .then(8.99e-78)
        .otherwise(pl.col("close"))
        .alias("close")
    ).write_parquet(flipped)
    code, _, err = cli(capsys, "data", "info", str(flipped))
    line = assert_one_line_error(
        code, err, f"{flipped}, row 30, field 'close': implausible price: close 8.99e-78"
    )
    assert "line" not in line.replace("flip.parquet", "")


def test_info_notes_flagged_spikes_and_long_holes(tmp_path, capsys):
    bars = real_bars(1000)
    bad = float(bars["close"][500]) * 1.01  # a 1 % bad tick, reverted at the next bar
    messy = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == 500).then(bad).otherwise(pl.col(c)).alias(c)
        for c in ("close", "high")
    ).filter((pl.int_range(pl.len()) < 100) | (pl.int_range(pl.len()) >= 400))
    path = tmp_path / "messy.parquet"
    messy.write_parquet(path)
    code, out, _ = cli(capsys, "data", "info", str(path))
    assert code == EXIT_OK
    assert "1 price spike(s) flagged and kept, the first at row 200" in out
    assert "1 hole(s) of a week or more without bars" in out


def test_parquet_flags_of_minus_one_is_a_one_line_error(tmp_path, capsys):
    bars = real_bars(20)
    flags = [0] * 20
    flags[10] = -1
    path = tmp_path / "flags.parquet"
    bars.with_columns(pl.Series("flags", flags)).write_parquet(path)
    code, _, err = cli(capsys, "data", "info", str(path))
    assert_one_line_error(code, err, f"{path}, row 10, field 'flags'", "(got -1)")
    flags[10] = 0
    bars.with_columns(pl.Series("flags", flags)).write_parquet(path)
    assert cli(capsys, "data", "info", str(path))[0] == EXIT_OK


def test_empty_dukascopy_hour_is_reported_cleanly(tmp_path, capsys, dukascopy_dir):
    folder = tmp_path / "EURUSD" / "2019" / "01" / "04"
    folder.mkdir(parents=True)
    empty = folder / "05h_ticks.bi5"
    shutil.copyfile(dukascopy_dir / "empty.bi5", empty)
    assert empty.stat().st_size == 0
    code, out, err = cli(capsys, "data", "info", str(empty))
    assert code == EXIT_OK, err
    assert "bars                0" in out and "no bars: the source is empty" in out
    code, out, _ = cli(capsys, "data", "info", str(empty), "--json")
    assert json.loads(out)["bars"] == 0
    code, out, _ = cli(capsys, "data", "validate", str(empty))
    assert code == EXIT_OK and "0 rows in, 0 out" in out


def test_validate_says_how_to_see_every_item(tmp_path, capsys, eurusd_h1_csv):
    code, out, _ = cli(capsys, "data", "validate", str(eurusd_h1_csv), "--max-items", "2")
    assert code == EXIT_OK
    assert ".issues" not in out
    total = out.count("\n")  # one line per shown item plus the headline lines
    assert re.search(
        r"\.\.\. and \d+ more item\(s\) \(--max-items \d+ or --json lists them all\)", out
    )
    assert total < 10


def test_reader_warnings_are_notes_not_python_warnings(tmp_path, capsys):
    path = tmp_path / "pair.csv"
    path.write_text(
        "Day,Clock,O,H,L,C\n2017-01-02,22:00,1.05,1.06,1.04,1.05\n2017-01-02,23:00,1.05,1.06,1.04,1.05\n"
    )
    code, out, err = cli(capsys, "data", "info", str(path), "--columns", "ts=Day+Clock")
    assert code == EXIT_OK and err == ""
    assert "first_bar           2017-01-02T22:00:00+00:00" in out
    assert "note                " + str(path) + ": no volume column" in out
    code, out, err = cli(
        capsys, "data", "validate", str(path), "--columns", "ts=Day+Clock", "--json"
    )
    assert code == EXIT_OK and err == ""
    assert "no volume column" in json.loads(out)["notes"][0]
