"""Tiny notebooks and run configurations for the runner, resume and batch tests."""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: Path, cells: list[str], parameters: str) -> Path:
    """A notebook with a tagged ``parameters`` cell followed by ``cells``, on the python3 kernel."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def write_config(path: Path, text: str) -> Path:
    """Write a run configuration file."""
    path.write_text(text, encoding="utf-8")
    return path
