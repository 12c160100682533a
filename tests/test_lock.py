"""The environment comes from the committed lock: every package pinned, the CPU torch wheel, the
running environment equal to it, and a pyproject.toml changed without `make lock` refused."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)$")


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements.lock: not an exact pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = match.group(3)
    return pins


def test_every_package_is_pinned_exactly_and_torch_is_the_cpu_build() -> None:
    pins = _pins()
    assert len(pins) > 100  # the whole environment, not only our direct dependencies
    assert pins["torch"] == "2.13.0+cpu"
    assert not [name for name in pins if name.startswith("nvidia-")]  # no CUDA wheels


@pytest.mark.skipif(
    os.environ.get("AIOPT_TEST_LATEST") == "1", reason="make test-latest runs newer versions"
)
def test_the_running_environment_is_the_lock() -> None:
    differ = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, f"installed versions differ from requirements.lock: {differ}"


def _project_copy(tmp_path: Path) -> Path:
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "lock.py", tmp_path / ".ci" / "lock.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(LOCK, tmp_path / "requirements.lock")
    return tmp_path


def _check(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(project / ".ci" / "lock.py"), "check"], capture_output=True, text=True
    )


def test_the_committed_lock_matches_pyproject(tmp_path) -> None:
    done = _check(_project_copy(tmp_path))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("old", "new", "stale"),
    [
        ('"optuna>=4.0"', '"optuna>=4.1"', True),
        ('"pytest>=8.2"', '"pytest>=8.3"', True),  # an extra counts too
        ("line-length = 100", "line-length = 99", False),  # tool settings do not
    ],
)
def test_a_pyproject_change_without_make_lock_is_refused(tmp_path, old, new, stale) -> None:
    project = _project_copy(tmp_path)
    text = (project / "pyproject.toml").read_text()
    assert old in text
    (project / "pyproject.toml").write_text(text.replace(old, new))
    done = _check(project)
    if not stale:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "run `make lock`" in lines[0], done.stderr
