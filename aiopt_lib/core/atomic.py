"""Writes that never leave a half-written file: write to a temporary file beside the target,
flush it to disk, then rename it over the target (atomic on POSIX within one file system)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from aiopt_lib.core.errors import OutputError

__all__ = [
    "atomic_directory",
    "atomic_open",
    "atomic_path",
    "write_bytes_atomic",
    "write_parquet_atomic",
    "write_text_atomic",
]

# errors that are about the place written to, not about the data: reported as the target's
_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
}


def _output_error(target: Path, exc: BaseException) -> OutputError:
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on the device"
    else:  # a writer's own exception around the OS error
        reason = "file too large" if "too large" in str(exc) else "no space left on the device"
    return OutputError(f"{target}: cannot write: {reason}")


def _is_write_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _WRITE_ERRNOS
    # polars and pyarrow report the OS error in their own exception's text
    text = str(exc)
    return any(
        sign in text for sign in ("os error 28", "No space left", "File too large", "os error 27")
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    For writers that want a file name (``DataFrame.write_parquet``, ``nbconvert``...).
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target}: is a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name keeps the suffix: some writers (papermill, polars) look at it.
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
        )
    except OSError as exc:
        raise _output_error(target, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _is_write_error(exc):
            raise _output_error(target, exc) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only when the block succeeds."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not a write mode")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill in the ``with`` block; when the block ends
    without an error it takes the place of ``path`` (an older folder there is moved aside first,
    then removed), otherwise it is removed: ``path`` never holds a half-written folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = tmp.with_name(tmp.name + ".old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_parquet_atomic(
    frame: pl.DataFrame,
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
    compression: str = "zstd",
) -> Path:
    """Write a polars frame to Parquet (zstd by default) atomically, with optional key-value metadata."""
    target = Path(path)
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression=compression, metadata=metadata)
    return target
