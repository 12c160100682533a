"""Errors that reach the user.

Every error about input data names where the problem is: the file, the row (a line number for text
files, a record index for binary ones) and the field, so that a researcher can open the file and
look. The CLI prints ``str(error)`` as one line and exits non-zero; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = [
    "AioptError",
    "BarsSchemaError",
    "ConfigError",
    "DataError",
    "OutputError",
    "SearchInterrupted",
    "plain_name",
    "validation_problems",
]


class AioptError(Exception):
    """Base class of the errors aiopt raises on purpose (bad input, bad configuration)."""


class DataError(AioptError):
    """Bad input data, located by file, row and field where they are known.

    ``row`` is the 1-based line number for text files and the 0-based record index for binary
    files and frames; ``row_kind`` says which ("line" or "record" / "row").
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
        value: object = None,
        row_kind: str = "line",
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.value = value
        self.row_kind = row_kind
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"{self.row_kind} {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        text = self.message
        if self.value is not None:
            shown = repr(self.value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            text = f"{text} (got {shown})"
        return f"{prefix}: {text}" if prefix else text


class BarsSchemaError(DataError):
    """A frame does not follow the canonical bars (or ticks) schema."""


class ConfigError(AioptError):
    """A run configuration or a command-line option is invalid."""


class OutputError(AioptError):
    """An output could not be written (read-only folder, disk full, a directory in the way);
    names the file the user asked for, never the temporary file beside it."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a search after its running trials finished; the message says what was kept.

    A ``KeyboardInterrupt`` so that notebooks and scripts stop as they do on any interrupt."""


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def plain_name(value: object, what: str) -> str:
    """``value`` if it is a plain name that can become one file or folder name, else a
    :class:`ConfigError` naming ``what`` (the option or key it came from) and the value.

    A plain name is letters, digits, ``-``, ``_`` and ``.`` (ASCII), does not start with ``.``
    (so neither ``.`` nor ``..``, nor a hidden file) and holds no ``/`` or ``\\``: joined to a
    folder it stays inside that folder. Run ids, notebook (stage) names, batch names and model
    file names go through here before they become paths.
    """
    if isinstance(value, str) and _PLAIN_NAME.fullmatch(value):
        return value
    raise ConfigError(
        f"{what} {value!r} is not a plain name: use letters, digits, '-', '_' or '.', "
        "not starting with '.' (no '/', '\\' or '..')"
    )


def validation_problems(exc: Any) -> list[tuple[str, str]]:
    """A pydantic ``ValidationError`` as ``(location, message)`` pairs a user can read: the
    location dotted (``space.stop_atr``; empty for the model as a whole), pydantic's
    ``"Value error, "`` prefix dropped from our validators' messages."""
    return [
        (
            ".".join(str(part) for part in error["loc"]),
            str(error["msg"]).removeprefix("Value error, "),
        )
        for error in exc.errors()
    ]
