"""Every failure of the command line is one line on stderr and exit 2 (130 for Ctrl-C), never a
traceback: output places that cannot be written, bad storage URLs, bad settings, files that are
not what the command reads (issue 14, section 3)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiopt_lib.core.net import free_port as _free_port
from aiopt_lib.runs.cli import main
from aiopt_lib.strategy.search import MIN_WINDOW_BARS

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "aiopt_lib" / "data" / "templates"


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *named: str) -> str:
    """Run the CLI in process: exit 2, exactly one line on stderr, naming each of ``named``."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("aiopt: error: "), err
    assert "Traceback" not in err
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (root only: permission bits do not stop root)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write to, root included."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with _tmpfs(tmp_path / "readonly", "ro,size=1m") as folder:
        yield folder


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 256 KiB file system: writing a feature file fills it."""
    if os.geteuid() != 0:
        pytest.skip("a full file system needs a tmpfs mount (root)")
    with _tmpfs(tmp_path / "full", "size=256k") as folder:
        yield folder


# ---------------------------------------------------------------------------------------------
# Output places


def test_features_into_a_readonly_folder_names_the_target(readonly_dir, capsys) -> None:
    target = readonly_dir / "features.parquet"
    line = one_line_error(capsys, ["features", "sample", "--out", str(target)], str(target))
    assert ".tmp" not in line  # the hidden temporary file is ours, not the user's


def test_search_into_a_readonly_folder(readonly_dir, capsys) -> None:
    out = readonly_dir / "search"
    argv = ["search", "--template", "ema_cross", "--bars", "sample", "--out", str(out)]
    one_line_error(capsys, [*argv, "--trials", "2", "--no-progress"], str(out))


def test_run_into_a_readonly_folder(readonly_dir, capsys) -> None:
    argv = [
        "run",
        "--config",
        str(ROOT / "papermill_runs" / "default.yaml"),
        "--runs-dir",
        str(readonly_dir),
    ]
    one_line_error(capsys, [*argv, "--reports-dir", str(readonly_dir)], str(readonly_dir))


def test_out_naming_an_existing_directory(tmp_path, capsys) -> None:
    line = one_line_error(capsys, ["features", "sample", "--out", str(tmp_path)], str(tmp_path))
    assert "is a directory" in line


def test_disk_full_names_the_target_and_leaves_nothing(full_disk, capsys) -> None:
    target = full_disk / "features.parquet"
    line = one_line_error(capsys, ["features", "sample", "--out", str(target)], str(target))
    assert "no space left" in line
    assert list(full_disk.iterdir()) == []  # no half-written file, no temporary left


# ---------------------------------------------------------------------------------------------
# Storage URLs


def _search(out: Path, *extra: str) -> list[str]:
    return [
        "search",
        "--template",
        "ema_cross",
        "--bars",
        "sample",
        "--out",
        str(out),
        "--trials",
        "2",
        "--folds",
        "2",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("notaurl", "is not a storage URL"),
        ("journal:///", "a journal needs a file path"),
        ("sqlite:///{tmp}", "SQLite needs a database file"),
        ("sqlite://relative.db", "SQLite needs a database file"),
        ("postgresql://aiopt:secret@127.0.0.1:{port}/aiopt", "cannot connect"),
        ("nosuchdb://u@127.0.0.1/x", "not a valid database URL"),
        ("mysql://aiopt:secret@127.0.0.1/x", "the database driver for 'mysql' is not installed"),
    ],
)
def test_bad_storage_urls(tmp_path, capsys, storage, expected) -> None:
    url = storage.format(tmp=tmp_path, port=_free_port())
    line = one_line_error(capsys, _search(tmp_path / "out", "--storage", url), expected)
    assert "secret" not in line  # passwords never reach the terminal or a log


def test_a_corrupt_journal_in_the_out_folder(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "optuna.log").write_bytes(b"garbage\x00 not json\n")
    one_line_error(capsys, _search(out), str(out / "optuna.log"), "not an Optuna journal file")


def test_a_corrupt_optuna_db_in_the_out_folder(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "optuna.db").write_bytes(b"this is not a database" * 100)
    one_line_error(capsys, _search(out), str(out / "optuna.db"), "not an Optuna SQLite database")


# ---------------------------------------------------------------------------------------------
# Settings checked before any work


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--trials", "0"], "--trials: must be 1 or more, got 0"),
        (["--objective", "foo"], "--objective: unknown metric 'foo'"),
        (["--folds", "5000"], "--folds 5000 on 4,980 bars leaves windows of 0 bar(s)"),
        (["--folds", "5000"], "the last 1,245 of the 6,225 bars are the lockbox"),
        (
            ["--folds", "5000", "--holdout", "0"],
            "--folds 5000 on 6,225 bars leaves windows of 1 bar",
        ),
    ],
)
def test_bad_search_settings(tmp_path, capsys, extra, named) -> None:
    line = one_line_error(capsys, _search(tmp_path / "out", *extra), named)
    assert "pydantic" not in line and "validation error" not in line
    assert not (tmp_path / "out" / "ranking.json").exists()


def test_the_folds_message_says_how_many_fit(tmp_path, capsys) -> None:
    line = one_line_error(capsys, _search(tmp_path / "out", "--folds", "5000"))
    most = int(line.split("at most ")[1].split()[0])
    searched = 6225 - 1245  # less the lockbox
    assert searched // (most + 1) >= MIN_WINDOW_BARS > searched // (most + 2)


def test_a_range_allowing_a_negative_stop_is_refused_on_load(tmp_path, capsys) -> None:
    text = (TEMPLATES / "ema_cross.yaml").read_text()
    bad = text.replace(
        "stop_atr: {low: 0.5, high: 4.0, step: 0.25}", "stop_atr: {low: -2.0, high: 1.0}"
    )
    assert bad != text
    template = tmp_path / "negative_stop.yaml"
    template.write_text(bad)
    argv = _search(tmp_path / "out")
    argv[argv.index("ema_cross")] = str(template)
    one_line_error(capsys, argv, str(template), "space.stop_atr", "-2.0", "distance must be > 0")


def test_a_template_name_that_is_a_path_is_refused(tmp_path, capsys) -> None:
    argv = _search(tmp_path / "out")
    argv[argv.index("ema_cross")] = "../../../tmp/evil"
    one_line_error(capsys, argv, "template '../../../tmp/evil' is not a plain name")


def test_reusing_an_out_folder_with_another_template(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(_search(out)) == 0
    capsys.readouterr()
    argv = _search(out)
    argv[argv.index("ema_cross")] = "bollinger_reversion"
    one_line_error(
        capsys, argv, "a study for template 'ema_cross'", str(out), "'bollinger_reversion'"
    )


# ---------------------------------------------------------------------------------------------
# Files that are not what the command reads


def test_pine_check_on_a_directory(tmp_path, capsys) -> None:
    one_line_error(capsys, ["pine", "check", str(tmp_path)], str(tmp_path), "is a directory")


def test_pine_check_on_a_binary_file(tmp_path, capsys) -> None:
    image = tmp_path / "chart.pine"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    one_line_error(capsys, ["pine", "check", str(image)], str(image), "not UTF-8", "0x89")


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def _trial_states(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return dict(connection.execute("SELECT state, count(*) FROM trials GROUP BY state"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_during_search_keeps_a_clean_resumable_study(tmp_path, workers) -> None:
    out = tmp_path / "out"
    # an SQLite file (read here while the search runs); the rerun below finds it by itself
    argv = _search(out, "--workers", str(workers), "--storage", f"sqlite:///{out / 'optuna.db'}")
    argv[argv.index("--trials") + 1] = "5000"  # far more than the test waits for
    command = [sys.executable, "-m", "aiopt_lib.runs.cli", *argv]
    # its own process group, as a terminal's foreground job: Ctrl-C reaches every process in it
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    db = out / "optuna.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(sqlite3.Error):
            if db.exists() and _trial_states(db).get("COMPLETE", 0) >= 10:
                break
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "failed" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("aiopt: interrupted: search stopped after the running trials"), err
    assert "run the same command again to continue" in last
    states = _trial_states(db)
    assert set(states) <= {"COMPLETE", "PRUNED"}, states  # nothing FAILED, nothing left RUNNING
    kept = sum(states.values())
    assert f"{kept} of 10000 trials are kept" in last
    # the kept trials are a study the next run continues and ranks
    again = subprocess.run(
        [sys.executable, "-m", "aiopt_lib.runs.cli", *_search(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert "ranking:" in again.stdout
