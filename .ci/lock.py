"""The lock file's guard: ``requirements.lock`` records a digest of what pyproject.toml asks for.

``python3 .ci/lock.py check`` exits 1 with one line when pyproject.toml's dependencies changed
after the lock was written (``make test`` and ``make run`` call it before anything is installed);
``python3 .ci/lock.py stamp`` writes the digest into the lock (``make lock`` calls it after
``uv pip compile``). Only the stdlib is used: it runs before the virtual environment exists.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
MARK = "# pyproject-dependencies-sha256: "
HEADER = "# exact versions of the whole environment, written by `make lock` (uv pip compile); do not edit"


def dependencies_digest(pyproject: Path = PYPROJECT) -> str:
    """Digest of the parts of pyproject.toml that decide what gets installed (not ruff or pytest)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
    }
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Path = LOCK) -> str | None:
    if not lock.exists():
        return None
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith(MARK):
            return line[len(MARK) :].strip()
    return None


def check() -> int:
    if not LOCK.exists():
        print(f"{LOCK.name} is missing: run `make lock`", file=sys.stderr)
        return 1
    if recorded_digest() != dependencies_digest():
        print(
            f"pyproject.toml's dependencies changed since {LOCK.name} was written: "
            "run `make lock` and commit requirements.lock",
            file=sys.stderr,
        )
        return 1
    return 0


def stamp() -> int:
    lines = [
        line
        for line in LOCK.read_text(encoding="utf-8").splitlines()
        if not line.startswith((MARK, HEADER))
    ]
    lines[:0] = [HEADER, MARK + dependencies_digest()]
    tmp = LOCK.with_suffix(".lock.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(LOCK)
    return 0


if __name__ == "__main__":
    commands = {"check": check, "stamp": stamp}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print("usage: python3 .ci/lock.py check|stamp", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]]())
