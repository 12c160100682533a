"""`import aiopt_lib as ai`: the facade is generated from the stage modules' ``__all__``, imports
nothing up front, and offers every name the notebooks, README and benchmarks use."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import aiopt_lib as ai

ROOT = Path(__file__).resolve().parent.parent


def test_every_public_name_resolves_to_the_object_of_its_module() -> None:
    owners = ai.public_names()
    assert len(owners) > 150
    for name, module in owners.items():
        assert getattr(ai, name) is getattr(importlib.import_module(f"aiopt_lib.{module}"), name)


def test_a_name_listed_by_two_modules_is_one_object() -> None:
    seen: dict[str, object] = {}
    for module in ai.PUBLIC_MODULES:
        imported = importlib.import_module(f"aiopt_lib.{module}")
        for name in imported.__all__:
            value = getattr(imported, name)
            assert seen.setdefault(name, value) is value, f"{name} differs in aiopt_lib.{module}"


def test_the_scanned_names_are_the_modules_all() -> None:
    owners = ai.public_names()
    for module in ai.PUBLIC_MODULES:
        for name in importlib.import_module(f"aiopt_lib.{module}").__all__:
            assert name in owners


def test_importing_the_facade_imports_no_stage() -> None:
    code = (
        "import sys, aiopt_lib as ai\n"
        "print(sorted(m for m in sys.modules if m.startswith('aiopt_lib.')))\n"
        "ai.load_sample\n"
        "print('optuna' in sys.modules, 'nautilus_trader' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == "False False"  # loading bars does not pull in the search or Nautilus


def test_the_names_users_write_exist() -> None:
    texts = [p.read_text() for p in (ROOT / "benchmarks").glob("*.py")]
    texts.append((ROOT / "README.md").read_text())
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        texts += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    used = {name for text in texts for name in re.findall(r"\bai\.([A-Za-z_]\w*)", text)}
    assert len(used) > 20
    assert not [name for name in sorted(used) if not hasattr(ai, name)]
    assert set(used) <= set(dir(ai))
