"""Append-only Parquet logging streams, one fixed schema per stream.

A run logs four kinds of records, each to its own stream (the seed project's single log file broke
with "schema mismatch in Parquet logging" as soon as two kinds of record met):

* ``features``: ``ts``, ``symbol`` and the feature values. Feature columns vary between studies,
  so their schema is *declared* when the stream is created (:func:`features_schema`), stored with
  the stream and enforced afterwards.
* ``predictions``: :data:`PREDICTIONS_SCHEMA` (``ts`` is the bar's open time; ``predicted_label``
  is BUY, SELL or HOLD).
* ``training_metrics``: :data:`TRAINING_METRICS_SCHEMA`.
* ``run_events``: :data:`RUN_EVENTS_SCHEMA` (``event`` is start, end, error or info).

Other kinds are allowed when their schema is declared at creation, like ``features``.

Layout
------
A stream is a directory ``<root>/<kind>/`` holding ``_schema.json`` (the column dtypes and which
columns may be null; written once, atomically and exclusively, when the stream is created) and
chunk files ``part-<seq>-<uuid>.parquet`` (zstd), each written to a temporary file that is renamed
into place (:func:`aiopt_lib.core.atomic.write_parquet_atomic`). So a reader never sees a half-written
chunk: a writer killed mid-write leaves at most a ``.part-*.tmp.parquet`` file, which readers
ignore. ``seq`` orders the chunks (one more than the largest on disk when the chunk is written);
the random ``uuid`` keeps two processes that write the same stream at the same moment from ever
choosing the same name. Rows of one writer keep their order; rows of concurrent writers
interleave chunk by chunk.

Writing
-------
:class:`StreamWriter` checks every record *when it is appended* against the stream's schema and
raises :class:`SchemaMismatchError` (naming the stream, the column, the expected and the received
type) for a missing column, an extra column, a null in a non-null column or a value that cannot be
cast safely (a string into a float column, a float into an integer column, a naive datetime into
a UTC column, a label outside BUY/SELL/HOLD). A rejected append buffers nothing, so it never
corrupts the stream and the rows before it still flush. Safe casts are applied: integers into
float columns, narrower into wider integers, other time zones and time units into
``Datetime("us", "UTC")``. A missing ``written_at`` is filled with the time of the append.

Buffered rows are written as one chunk when

* ``flush_rows`` rows are buffered (checked on append);
* the oldest buffered row is ``flush_seconds`` old (checked on append, and by a background timer
  thread unless ``background_flush=False``);
* :meth:`StreamWriter.flush` or :meth:`StreamWriter.close` is called, or the ``with`` block ends;
* the interpreter exits normally (``atexit``);
* the process receives SIGTERM: the first writer created *in the main thread* installs a handler
  that flushes every open writer and then chains to the handler that was there before (for the
  default action it restores it and re-sends the signal, so the process still dies of SIGTERM).
  Python only lets the main thread install handlers; writers created in other threads rely on a
  handler installed earlier or on ``atexit``. If the signal arrives while the main thread is
  itself inside an append or a flush, it is handled as soon as that finishes, so no chunk is
  interrupted. SIGKILL cannot be caught: the rows buffered then are lost, every flushed chunk
  is intact (:attr:`StreamWriter.rows_written` counts them).

Reading
-------
:func:`read_stream` concatenates the chunks in order with the declared schema (an empty stream
gives an empty frame of that schema). :class:`Streams` bundles the streams of one run folder::

    streams = Streams(run_dir)                          # <run_dir>/streams/<kind>/
    streams.predictions.append({"ts": bar_ts, "symbol": "EURUSD", ...})
    with streams.stage("train"):                        # run_events: start, then end or error
        ...
    streams.close()
    read_stream(streams.root, "predictions")
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime as dt
import json
import numbers
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import polars as pl

from aiopt_lib.core.atomic import write_parquet_atomic
from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.core.errors import AioptError, ConfigError, DataError

__all__ = ["SchemaMismatchError", "StreamWriter", "Streams", "read_stream"]

try:  # Unix only; peak RSS is left null elsewhere
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

SCHEMA_FILE = "_schema.json"
STREAM_FORMAT = "aiopt-stream"
STREAM_FORMAT_VERSION = 1

LABELS: tuple[str, ...] = ("BUY", "SELL", "HOLD")
RUN_EVENT_KINDS: tuple[str, ...] = ("start", "end", "error", "info")

FEATURES_KEY_SCHEMA = pl.Schema({"ts": TS_DTYPE, "symbol": pl.String()})

PREDICTIONS_SCHEMA = pl.Schema(
    {
        "ts": TS_DTYPE,  # the bar's open time
        "symbol": pl.String(),
        "model_id": pl.String(),
        "model_version": pl.String(),
        "prob_buy": pl.Float64(),
        "prob_sell": pl.Float64(),
        "prob_hold": pl.Float64(),
        "predicted_label": pl.Enum(list(LABELS)),
        "confidence": pl.Float64(),
        "latency_ms": pl.Float64(),
        "written_at": TS_DTYPE,
    }
)

TRAINING_METRICS_SCHEMA = pl.Schema(
    {
        "run_id": pl.String(),
        "step": pl.Int64(),
        "epoch": pl.Int64(),
        "split": pl.String(),  # train, val, test...
        "loss": pl.Float64(),
        "learning_rate": pl.Float64(),
        "grad_norm": pl.Float64(),
        "samples_per_s": pl.Float64(),
        "val_accuracy": pl.Float64(),
        "gpu_memory_mb": pl.Float64(),
        "written_at": TS_DTYPE,
    }
)

RUN_EVENTS_SCHEMA = pl.Schema(
    {
        "run_id": pl.String(),
        "stage": pl.String(),
        "event": pl.Enum(list(RUN_EVENT_KINDS)),
        "ts": TS_DTYPE,
        "duration_s": pl.Float64(),
        "cpu_s": pl.Float64(),
        "peak_rss_mb": pl.Float64(),
        "gpu_memory_mb": pl.Float64(),
        "message": pl.String(),
    }
)

KINDS: tuple[str, ...] = ("features", "predictions", "training_metrics", "run_events")

_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
_CHUNK_PATTERN = re.compile(r"part-(\d+)-([0-9a-f]{32})\.parquet")


class SchemaMismatchError(DataError):
    """A record, a chunk or a declared schema does not match a stream's schema.

    ``stream`` is the stream's kind, ``column`` the offending column, ``expected`` and ``got`` the
    expected and the received type (or ``"missing column"`` / ``"no such column"``).
    """

    def __init__(
        self,
        stream: str,
        column: str | None,
        expected: str,
        got: str,
        *,
        path: str | Path | None = None,
        record: int | None = None,
        context: str = "",
    ) -> None:
        self.stream = stream
        self.column = column
        self.expected = expected
        self.got = got
        self.context = context
        super().__init__(
            f"expected {expected}, got {got}",
            file=path,
            row=record,
            field=column,
            row_kind="record",
        )

    def _render(self) -> str:
        where = f"stream '{self.stream}'"
        if self.file is not None:
            where += f" at {self.file}"
        if self.context:
            where += f" ({self.context})"
        if self.row is not None:
            where += f", record {self.row}"
        if self.field is not None:
            where += f", column '{self.field}'"
        return f"{where}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Schemas


_SIMPLE_DTYPES: dict[str, pl.DataType] = {
    str(d): d
    for d in (
        pl.Boolean(),
        pl.Int8(),
        pl.Int16(),
        pl.Int32(),
        pl.Int64(),
        pl.UInt8(),
        pl.UInt16(),
        pl.UInt32(),
        pl.UInt64(),
        pl.Float32(),
        pl.Float64(),
        pl.String(),
        pl.Date(),
    )
}


def _dtype_to_json(dtype: pl.DataType, column: str | None = None) -> dict[str, Any]:
    if isinstance(dtype, pl.Datetime):
        return {"type": "Datetime", "time_unit": dtype.time_unit, "time_zone": dtype.time_zone}
    if isinstance(dtype, pl.Duration):
        return {"type": "Duration", "time_unit": dtype.time_unit}
    if isinstance(dtype, pl.Enum):
        return {"type": "Enum", "categories": dtype.categories.to_list()}
    if str(dtype) in _SIMPLE_DTYPES:
        return {"type": str(dtype)}
    where = f" (column '{column}')" if column else ""
    raise ConfigError(
        f"a stream cannot hold {dtype}{where}; use booleans, integers, floats, strings, "
        "enums, dates, datetimes or durations"
    )


def _dtype_from_json(payload: Mapping[str, Any]) -> pl.DataType:
    kind = payload["type"]
    if kind == "Datetime":
        return pl.Datetime(payload["time_unit"], payload["time_zone"])
    if kind == "Duration":
        return pl.Duration(payload["time_unit"])
    if kind == "Enum":
        return pl.Enum(list(payload["categories"]))
    if kind in _SIMPLE_DTYPES:
        return _SIMPLE_DTYPES[kind]
    raise ConfigError(f"unknown dtype {payload!r} in a stream schema")


@dataclasses.dataclass(frozen=True)
class StreamSchema:
    """The fixed schema of a stream: column dtypes in order and the columns that may hold nulls."""

    columns: pl.Schema
    nullable: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", pl.Schema(self.columns))
        object.__setattr__(self, "nullable", frozenset(self.nullable))
        if not self.columns:
            raise ConfigError("a stream schema needs at least one column")
        unknown = sorted(self.nullable - set(self.columns))
        if unknown:
            raise ConfigError(f"nullable columns {unknown} are not in the schema")
        for name, dtype in self.columns.items():
            _dtype_to_json(dtype, column=name)  # raises for dtypes a stream cannot hold

    def __hash__(self) -> int:  # pl.Schema is not hashable
        return hash((tuple((name, str(d)) for name, d in self.columns.items()), self.nullable))

    def empty(self) -> pl.DataFrame:
        """An empty frame of this schema."""
        return pl.DataFrame(schema=self.columns)

    def to_json(self) -> list[dict[str, Any]]:
        """The columns as JSON-ready dicts: ``{"name", "dtype", "nullable"}``."""
        return [
            {"name": name, "dtype": _dtype_to_json(dtype), "nullable": name in self.nullable}
            for name, dtype in self.columns.items()
        ]

    @classmethod
    def from_json(cls, columns: Sequence[Mapping[str, Any]]) -> StreamSchema:
        """The inverse of :meth:`to_json`."""
        return cls(
            pl.Schema({c["name"]: _dtype_from_json(c["dtype"]) for c in columns}),
            frozenset(c["name"] for c in columns if c.get("nullable", False)),
        )


STREAM_SCHEMAS: Mapping[str, StreamSchema] = {
    "predictions": StreamSchema(PREDICTIONS_SCHEMA, frozenset({"latency_ms"})),
    "training_metrics": StreamSchema(
        TRAINING_METRICS_SCHEMA,
        # a validation row has no learning rate or gradient norm, a training row no accuracy
        frozenset({"learning_rate", "grad_norm", "samples_per_s", "val_accuracy", "gpu_memory_mb"}),
    ),
    "run_events": StreamSchema(
        RUN_EVENTS_SCHEMA,
        # a start event has no duration yet; the GPU column is null without a GPU
        frozenset({"duration_s", "cpu_s", "peak_rss_mb", "gpu_memory_mb", "message"}),
    ),
}


def features_schema(
    features: Iterable[str] | Mapping[str, pl.DataType | type[pl.DataType]],
    *,
    dtype: pl.DataType | type[pl.DataType] = pl.Float64,
) -> StreamSchema:
    """The schema of a ``features`` stream: ``ts`` and ``symbol`` (non-null), then the features.

    ``features`` names the feature columns (each of ``dtype``) or maps them to dtypes; ``ts`` and
    ``symbol`` may be included but must then have the dtypes of :data:`FEATURES_KEY_SCHEMA`.
    Feature values may be null (an indicator's warm-up).
    """
    if isinstance(features, Mapping):
        declared = dict(features)
    else:
        declared = {name: dtype for name in features}
    columns: dict[str, Any] = dict(FEATURES_KEY_SCHEMA)
    for key, key_dtype in FEATURES_KEY_SCHEMA.items():
        if key in declared and _as_dtype(declared[key]) != key_dtype:
            raise SchemaMismatchError(
                "features", key, str(key_dtype), str(_as_dtype(declared[key])), context="declared"
            )
    feature_names = [name for name in declared if name not in FEATURES_KEY_SCHEMA]
    if not feature_names:
        raise ConfigError("a features stream needs at least one feature column")
    for name in feature_names:
        columns[name] = declared[name]
    return StreamSchema(pl.Schema(columns), frozenset(feature_names))


def _as_dtype(dtype: pl.DataType | type[pl.DataType]) -> pl.DataType:
    return pl.Schema({"x": dtype})["x"]


def _columns_difference(
    expected: Mapping[str, pl.DataType], got: Mapping[str, pl.DataType]
) -> tuple[str, str, str] | None:
    """The first difference of dtypes as (column, expected, got), or None; order does not matter."""
    for name, dtype in expected.items():
        if name not in got:
            return name, str(dtype), "missing column"
        if got[name] != dtype:
            return name, str(dtype), str(got[name])
    for name, dtype in got.items():
        if name not in expected:
            return name, "no such column", str(dtype)
    return None


def _schema_difference(expected: StreamSchema, got: StreamSchema) -> tuple[str, str, str] | None:
    """The first difference of dtypes or nullability as (column, expected, got), or None."""
    difference = _columns_difference(expected.columns, got.columns)
    if difference is not None:
        return difference
    for name, dtype in expected.columns.items():
        if (name in expected.nullable) != (name in got.nullable):
            nullability = {True: "nullable", False: "non-null"}
            return (
                name,
                f"{nullability[name in expected.nullable]} {dtype}",
                f"{nullability[name in got.nullable]} {dtype}",
            )
    return None


def _check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND_PATTERN.fullmatch(kind):
        raise ConfigError(
            f"stream kind must be lower-case letters, digits and '_' (got {kind!r}); "
            f"the standard kinds are {', '.join(KINDS)}"
        )
    return kind


def _declared_schema(
    kind: str, schema: StreamSchema | Mapping[str, Any] | None
) -> StreamSchema | None:
    """The schema a writer declares for ``kind``: a fixed kind's own, or the one given."""
    fixed = STREAM_SCHEMAS.get(kind)
    if schema is None:
        return fixed
    if kind == "features":
        if isinstance(schema, StreamSchema):
            for key, key_dtype in FEATURES_KEY_SCHEMA.items():
                if schema.columns.get(key) != key_dtype:
                    got = str(schema.columns[key]) if key in schema.columns else "missing column"
                    raise SchemaMismatchError(
                        kind, key, str(key_dtype), got, context="declared schema"
                    )
            return schema
        return features_schema(schema)
    if isinstance(schema, StreamSchema):
        declared = schema
    elif fixed is not None:  # a mapping declares dtypes only; nullability is the kind's own
        columns = pl.Schema(schema)
        declared = StreamSchema(columns, fixed.nullable & set(columns))
    else:  # a custom kind declared by a mapping: every column may be null
        columns = pl.Schema(schema)
        declared = StreamSchema(columns, frozenset(columns))
    if fixed is not None:
        difference = _schema_difference(fixed, declared)
        if difference is not None:
            raise SchemaMismatchError(
                kind, *difference, context=f"the {kind} stream has a fixed schema"
            )
    return declared


# ---------------------------------------------------------------------------------------------
# The stream on disk


def _schema_payload(kind: str, schema: StreamSchema) -> str:
    payload = {
        "format": STREAM_FORMAT,
        "version": STREAM_FORMAT_VERSION,
        "kind": kind,
        "columns": schema.to_json(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    return json.dumps(payload, indent=2) + "\n"


def _load_schema_file(path: Path, kind: str) -> StreamSchema:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != STREAM_FORMAT:
            raise ValueError(f"format is {payload.get('format')!r}, not {STREAM_FORMAT!r}")
        if payload.get("version") != STREAM_FORMAT_VERSION:
            raise ValueError(f"unsupported version {payload.get('version')!r}")
        return StreamSchema.from_json(payload["columns"])
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise DataError(f"not a valid schema file of stream '{kind}': {exc}", file=path) from exc


def _create_file_exclusively(path: Path, text: str) -> bool:
    """Write ``path`` atomically unless it exists; False when another process created it first.

    ``atomic.write_text_atomic`` renames over an existing file; two processes creating the same
    stream must not both win, so the complete temporary file is hard-linked into place instead
    (``link`` fails when the target exists).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: the rename leaves a tiny race
            if path.exists():
                return False
            os.replace(tmp_name, path)
        _fsync_directory(path.parent)
        return True
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` survive a power cut (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _open_stream(path: Path, kind: str, declared: StreamSchema | None) -> StreamSchema:
    """Create the stream (directory and schema file) or check the declared schema against it."""
    schema_file = path / SCHEMA_FILE
    if not schema_file.exists():
        if declared is None:
            raise ConfigError(
                f"stream '{kind}' does not exist at {path}; declare its schema to create it "
                "(for features: schema=features_schema([...]) or a list of feature names)"
            )
        path.mkdir(parents=True, exist_ok=True)
        if _create_file_exclusively(schema_file, _schema_payload(kind, declared)):
            return declared
    stored = _load_schema_file(schema_file, kind)
    if declared is not None:
        difference = _schema_difference(stored, declared)
        if difference is not None:
            raise SchemaMismatchError(
                kind,
                *difference,
                path=path,
                context="the existing stream has a different schema than the one declared",
            )
    return stored


def list_chunks(root: str | Path, kind: str) -> list[Path]:
    """The chunk files of a stream in order (by sequence number, then name); temp files excluded."""
    path = Path(root) / _check_kind(kind)
    found: list[tuple[int, str]] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path):
            match = _CHUNK_PATTERN.fullmatch(entry.name)
            if match is not None and entry.is_file():
                found.append((int(match.group(1)), entry.name))
    return [path / name for _, name in sorted(found)]


def _largest_sequence(path: Path) -> int:
    largest = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path):
            match = _CHUNK_PATTERN.fullmatch(entry.name)
            if match is not None:
                largest = max(largest, int(match.group(1)))
    return largest


def read_stream_schema(root: str | Path, kind: str) -> StreamSchema:
    """The schema stored with the stream ``<root>/<kind>/``; DataError when there is no stream."""
    path = Path(root) / _check_kind(kind)
    schema_file = path / SCHEMA_FILE
    if not schema_file.exists():
        raise DataError(f"no stream '{kind}' here (no {SCHEMA_FILE})", file=path)
    return _load_schema_file(schema_file, kind)


def read_stream(root: str | Path, kind: str) -> pl.DataFrame:
    """All flushed rows of the stream ``<root>/<kind>/``, chunk after chunk, in its schema.

    Rows still buffered in a writer are not included (flush it first). Temporary files of
    interrupted writes are ignored. An empty stream gives an empty frame of the stream's schema;
    a directory without a stream raises :class:`~aiopt_lib.core.errors.DataError`, and a chunk that
    does not match the schema (a file copied in by hand) raises :class:`SchemaMismatchError`
    naming it.
    """
    schema = read_stream_schema(root, kind)
    chunks = list_chunks(root, kind)
    if not chunks:
        return schema.empty()
    names = list(schema.columns)
    try:
        frame = pl.read_parquet(chunks)
        if frame.schema == schema.columns:
            return frame
    except (pl.exceptions.PolarsError, OSError):
        pass
    # Slow path: find the chunk that does not fit, to name it.
    frames = []
    for chunk in chunks:
        try:
            part = pl.read_parquet(chunk)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"unreadable chunk of stream '{kind}': {exc}", file=chunk) from exc
        difference = _columns_difference(schema.columns, part.schema)
        if difference is not None:
            raise SchemaMismatchError(kind, *difference, path=chunk, context="chunk file")
        frames.append(part.select(names))
    return pl.concat(frames, how="vertical")


# ---------------------------------------------------------------------------------------------
# Checking records


class _RejectedValueError(Exception):
    """A value that does not fit a column; ``got`` describes it."""

    def __init__(self, got: str) -> None:
        super().__init__(got)
        self.got = got


def _describe_value(value: object) -> str:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} {shown}"


_INTEGER_BOUNDS = {
    str(d): (lo, hi)
    for d, lo, hi in (
        (pl.Int8(), -(2**7), 2**7 - 1),
        (pl.Int16(), -(2**15), 2**15 - 1),
        (pl.Int32(), -(2**31), 2**31 - 1),
        (pl.Int64(), -(2**63), 2**63 - 1),
        (pl.UInt8(), 0, 2**8 - 1),
        (pl.UInt16(), 0, 2**16 - 1),
        (pl.UInt32(), 0, 2**32 - 1),
        (pl.UInt64(), 0, 2**64 - 1),
    )
}


def _value_checker(dtype: pl.DataType) -> Callable[[Any], Any]:
    """A function that returns a Python value ready for a ``dtype`` column or raises _RejectedValueError."""
    if dtype.is_float():

        def check_float(value: Any) -> float:
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
                raise _RejectedValueError(_describe_value(value))
            return float(value)

        return check_float
    if dtype.is_integer():
        lo, hi = _INTEGER_BOUNDS[str(dtype)]

        def check_integer(value: Any) -> int:
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
                raise _RejectedValueError(_describe_value(value))
            if not lo <= int(value) <= hi:
                raise _RejectedValueError(f"{_describe_value(value)} (out of range)")
            return int(value)

        return check_integer
    if isinstance(dtype, pl.Enum):
        categories = dtype.categories.to_list()
        allowed = set(categories)

        def check_enum(value: Any) -> str:
            if not isinstance(value, str):
                raise _RejectedValueError(_describe_value(value))
            if value not in allowed:
                raise _RejectedValueError(
                    f"{_describe_value(value)} (not one of {', '.join(categories)})"
                )
            return value

        return check_enum
    if dtype == pl.String:

        def check_string(value: Any) -> str:
            if not isinstance(value, str):
                raise _RejectedValueError(_describe_value(value))
            return value

        return check_string
    if dtype == pl.Boolean:

        def check_boolean(value: Any) -> bool:
            if not isinstance(value, bool | np.bool_):
                raise _RejectedValueError(_describe_value(value))
            return bool(value)

        return check_boolean
    if isinstance(dtype, pl.Datetime):
        zone = zoneinfo.ZoneInfo(dtype.time_zone) if dtype.time_zone else None

        def check_datetime(value: Any) -> dt.datetime:
            if not isinstance(value, dt.datetime):
                raise _RejectedValueError(_describe_value(value))
            aware = value.tzinfo is not None and value.utcoffset() is not None
            if zone is not None and not aware:
                raise _RejectedValueError(
                    f"naive {_describe_value(value)} (give a timezone-aware datetime)"
                )
            if zone is None and aware:
                raise _RejectedValueError(f"timezone-aware {_describe_value(value)}")
            return value.astimezone(zone) if zone is not None else value

        return check_datetime
    if dtype == pl.Date:

        def check_date(value: Any) -> dt.date:
            if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
                raise _RejectedValueError(_describe_value(value))
            return value

        return check_date
    if isinstance(dtype, pl.Duration):

        def check_duration(value: Any) -> dt.timedelta:
            if not isinstance(value, dt.timedelta):
                raise _RejectedValueError(_describe_value(value))
            return value

        return check_duration
    raise ConfigError(f"a stream cannot hold {dtype}")  # pragma: no cover - StreamSchema checks


def _cast_safely(series: pl.Series, target: pl.DataType) -> pl.Series:
    """``series`` as ``target`` when no value changes meaning; raises _RejectedValueError otherwise."""
    source = series.dtype
    if source == target:
        return series
    if source == pl.Null:
        return series.cast(target)
    if target.is_float() and (source.is_integer() or source.is_float()):
        return series.cast(target)
    if target.is_integer() and source.is_integer():
        try:
            return series.cast(target, strict=True)
        except pl.exceptions.PolarsError as exc:
            raise _RejectedValueError(f"{source} (values out of the range of {target})") from exc
    if isinstance(target, pl.Enum) and (source == pl.String or isinstance(source, pl.Enum)):
        categories = target.categories.to_list()
        as_text = series.cast(pl.String).drop_nulls()
        bad = as_text.filter(~as_text.is_in(categories))
        if bad.len():
            raise _RejectedValueError(
                f"{source} value {bad[0]!r} (not one of {', '.join(categories)})"
            )
        return series.cast(pl.String).cast(target)
    if target == pl.String and isinstance(source, pl.Enum | pl.Categorical):
        return series.cast(pl.String)
    if isinstance(target, pl.Datetime) and isinstance(source, pl.Datetime):
        if (target.time_zone is None) != (source.time_zone is None):
            raise _RejectedValueError(str(source))
        if target.time_zone is not None and source.time_zone != target.time_zone:
            series = series.dt.convert_time_zone(target.time_zone)
        return series.dt.cast_time_unit(target.time_unit)
    if isinstance(target, pl.Duration) and isinstance(source, pl.Duration):
        return series.dt.cast_time_unit(target.time_unit)
    raise _RejectedValueError(str(source))


# ---------------------------------------------------------------------------------------------
# Process-wide flushing: atexit, SIGTERM, fork

_REGISTRY_LOCK = threading.Lock()
_OPEN_WRITERS: dict[int, StreamWriter] = {}


@dataclasses.dataclass
class _SignalState:
    installed: bool = False
    previous: Any = None  # the SIGTERM handler before ours
    main_thread_busy: int = 0  # depth of appends/flushes running in the main thread
    deferred: int | None = None  # a signal that arrived while the main thread was busy
    handling: bool = False


_SIGNALS = _SignalState()


def _register(writer: StreamWriter) -> None:
    with _REGISTRY_LOCK:
        _OPEN_WRITERS[id(writer)] = writer


def _unregister(writer: StreamWriter) -> None:
    with _REGISTRY_LOCK:
        _OPEN_WRITERS.pop(id(writer), None)


def _open_writers() -> list[StreamWriter]:
    with _REGISTRY_LOCK:
        return list(_OPEN_WRITERS.values())


def flush_all() -> int:
    """Flush every open writer of this process; returns the number of rows written.

    A writer that fails is reported as a warning and the others are still flushed.
    """
    written = 0
    for writer in _open_writers():
        try:
            written += writer.flush()
        except Exception as exc:
            warnings.warn(
                f"could not flush stream '{writer.kind}' at {writer.path}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
    return written


def _close_all_at_exit() -> None:
    for writer in _open_writers():
        try:
            writer.close()
        except Exception as exc:
            print(
                f"aiopt: could not flush stream '{writer.kind}' at {writer.path}: {exc}",
                file=sys.stderr,
            )


def _forget_writers_in_child() -> None:
    # A forked child inherits the parent's buffers; flushing them there would write the rows twice.
    with contextlib.suppress(RuntimeError):
        _REGISTRY_LOCK.release()
    _OPEN_WRITERS.clear()
    _SIGNALS.main_thread_busy = 0
    _SIGNALS.deferred = None
    _SIGNALS.handling = False


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_REGISTRY_LOCK.acquire, after_in_parent=_REGISTRY_LOCK.release)
    os.register_at_fork(after_in_child=_forget_writers_in_child)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _SIGNALS.handling:  # a chained handler called back into us
        return
    if _SIGNALS.main_thread_busy:
        # The main thread is inside an append or a flush (maybe mid-write): let it finish first.
        _SIGNALS.deferred = signum
        return
    _SIGNALS.handling = True
    try:
        flush_all()
    finally:
        _SIGNALS.handling = False
    previous = _SIGNALS.previous
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL, or a handler installed outside Python: die of the signal as before
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_sigterm_handler() -> bool:
    """Install the flushing SIGTERM handler once; only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    _SIGNALS.previous = current
    signal.signal(signal.SIGTERM, _on_sigterm)
    _SIGNALS.installed = True
    return True


# ---------------------------------------------------------------------------------------------
# Writer

Records = Mapping[str, Any] | Sequence[Mapping[str, Any]] | pl.DataFrame


class StreamWriter:
    """Buffer records for the stream ``<root>/<kind>/`` and write them as atomic Parquet chunks.

    ``schema``: required to create a ``features`` stream (:func:`features_schema`, or a list or
    mapping of feature columns) or a stream of another custom kind (a :class:`StreamSchema` or a
    mapping of column dtypes, all nullable); the fixed kinds use their own. Opening an existing
    stream with a different schema raises :class:`SchemaMismatchError`.

    Flushing: every ``flush_rows`` rows; when the oldest buffered row is ``flush_seconds`` old
    (``None``: never by age), checked on append and by a background thread
    (``background_flush``); on :meth:`flush`, :meth:`close`, the end of a ``with`` block,
    interpreter exit and SIGTERM (``handle_sigterm``; see the module docstring). ``clock``
    measures the age (seconds, monotonic). A writer is safe to share between threads.
    """

    def __init__(
        self,
        root: str | Path,
        kind: str,
        schema: StreamSchema | Mapping[str, Any] | Sequence[str] | None = None,
        *,
        flush_rows: int = 1000,
        flush_seconds: float | None = 5.0,
        background_flush: bool = True,
        handle_sigterm: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_rows < 1:
            raise ConfigError(f"flush_rows must be at least 1, got {flush_rows}")
        if flush_seconds is not None and flush_seconds <= 0:
            raise ConfigError(f"flush_seconds must be positive or None, got {flush_seconds}")
        self.kind = _check_kind(kind)
        self.path = Path(root) / kind
        declared = _declared_schema(
            kind, None if schema is None else _schema_from_names(kind, schema)
        )
        self.schema = _open_stream(self.path, kind, declared)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._names = list(self.schema.columns)
        self._checkers = [_value_checker(d) for d in self.schema.columns.values()]
        self._fill_written_at = self.schema.columns.get("written_at") == TS_DTYPE
        self._chunk_metadata = {
            "aiopt_stream_kind": kind,
            "aiopt_stream_schema": json.dumps(self.schema.to_json()),
        }
        self._lock = threading.RLock()
        # Items are conformed frames or lists of row tuples (consecutive dict records).
        self._buffer: list[pl.DataFrame | list[tuple[Any, ...]]] = []
        self._buffered_rows = 0
        self._oldest: float | None = None
        self._last_sequence = 0
        self._rows_written = 0
        self._chunks_written = 0
        self._closed = False
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        _register(self)
        if handle_sigterm:
            _install_sigterm_handler()
        if background_flush and flush_seconds is not None:
            self._timer = threading.Thread(
                target=self._flush_when_old,
                name=f"aiopt-stream-{kind}",
                daemon=True,
            )
            self._timer.start()

    # -- state ---------------------------------------------------------------------------------

    @property
    def rows_written(self) -> int:
        """Rows this writer has written to chunk files (durable: they survive a kill)."""
        return self._rows_written

    @property
    def rows_buffered(self) -> int:
        """Rows appended but not yet written."""
        return self._buffered_rows

    @property
    def chunks_written(self) -> int:
        """Chunk files this writer has written."""
        return self._chunks_written

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"StreamWriter({str(self.path)!r}, written={self._rows_written}, "
            f"buffered={self._buffered_rows}{', closed' if self._closed else ''})"
        )

    # -- appending -----------------------------------------------------------------------------

    def append(self, records: Records) -> int:
        """Check ``records`` against the schema and buffer them; returns the number of rows.

        ``records``: one record (a mapping of column to value), a sequence of records or a polars
        frame. All of them are checked before any is buffered: a :class:`SchemaMismatchError`
        leaves the writer as it was. May flush (row count or age).
        """
        self._check_usable()
        item: pl.DataFrame | list[tuple[Any, ...]]
        if isinstance(records, pl.DataFrame):
            item = self._conform_frame(records)
            rows = item.height
        elif isinstance(records, Mapping):
            item = [self._conform_record(records, None)]
            rows = 1
        elif isinstance(records, Sequence) and not isinstance(records, str | bytes):
            item = [self._conform_record(record, i) for i, record in enumerate(records)]
            rows = len(item)
        else:
            raise TypeError(
                "append takes a record (a mapping), a sequence of records or a polars DataFrame, "
                f"got {type(records).__name__}"
            )
        if rows == 0:
            return 0
        with self._critical():
            self._check_usable()
            now = self._clock()
            if self._oldest is None:
                self._oldest = now
            if isinstance(item, list) and self._buffer and isinstance(self._buffer[-1], list):
                self._buffer[-1].extend(item)
            else:
                self._buffer.append(item)
            self._buffered_rows += rows
            if self._buffered_rows >= self.flush_rows or self._is_old(now):
                self._flush_locked()
        return rows

    def _is_old(self, now: float) -> bool:
        return (
            self.flush_seconds is not None
            and self._oldest is not None
            and now - self._oldest >= self.flush_seconds
        )

    def _error(self, column: str | None, expected: str, got: str, record: int | None) -> Exception:
        return SchemaMismatchError(self.kind, column, expected, got, path=self.path, record=record)

    def _conform_record(self, record: Any, index: int | None) -> tuple[Any, ...]:
        if not isinstance(record, Mapping):
            raise TypeError(
                f"stream '{self.kind}': record {index} is a {type(record).__name__}, not a mapping"
            )
        for name in record:
            if name not in self.schema.columns:
                raise self._error(str(name), "no such column", _describe_value(record[name]), index)
        values = []
        for name, check in zip(self._names, self._checkers, strict=True):
            dtype = self.schema.columns[name]
            if name not in record:
                if name == "written_at" and self._fill_written_at:
                    values.append(dt.datetime.now(dt.UTC))
                    continue
                raise self._error(name, str(dtype), "missing column", index)
            value = record[name]
            if value is None:
                if name not in self.schema.nullable:
                    raise self._error(name, f"non-null {dtype}", "None", index)
                values.append(None)
                continue
            try:
                values.append(check(value))
            except _RejectedValueError as rejected:
                raise self._error(name, str(dtype), rejected.got, index) from None
        return tuple(values)

    def _conform_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        for name in frame.columns:
            if name not in self.schema.columns:
                raise self._error(name, "no such column", str(frame.schema[name]), None)
        columns = []
        for name, dtype in self.schema.columns.items():
            if name not in frame.columns:
                if name == "written_at" and self._fill_written_at:
                    now = dt.datetime.now(dt.UTC)
                    columns.append(pl.Series(name, [now] * frame.height, dtype=TS_DTYPE))
                    continue
                raise self._error(name, str(dtype), "missing column", None)
            try:
                series = _cast_safely(frame[name], dtype)
            except _RejectedValueError as rejected:
                raise self._error(name, str(dtype), rejected.got, None) from None
            if name not in self.schema.nullable and series.null_count():
                first = int(series.is_null().arg_max() or 0)
                raise self._error(name, f"non-null {dtype}", "null", first)
            columns.append(series.alias(name))
        return pl.DataFrame(columns)

    # -- flushing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _critical(self) -> Iterator[None]:
        """Hold the lock; in the main thread, hold back SIGTERM handling until the block ends."""
        in_main = threading.current_thread() is threading.main_thread()
        with self._lock:
            if in_main:
                _SIGNALS.main_thread_busy += 1
            try:
                yield
            finally:
                if in_main:
                    _SIGNALS.main_thread_busy -= 1
                    if _SIGNALS.main_thread_busy == 0 and _SIGNALS.deferred is not None:
                        signum, _SIGNALS.deferred = _SIGNALS.deferred, None
                        _on_sigterm(signum, None)

    def flush(self) -> int:
        """Write the buffered rows as one chunk now; returns the number of rows written."""
        self._check_forked()
        with self._critical():
            return self._flush_locked()

    def _flush_locked(self) -> int:
        if not self._buffer:
            return 0
        frames = [
            item
            if isinstance(item, pl.DataFrame)
            else pl.DataFrame(item, schema=self.schema.columns, orient="row")
            for item in self._buffer
        ]
        chunk = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
        sequence = max(self._last_sequence, _largest_sequence(self.path)) + 1
        target = self.path / f"part-{sequence:010d}-{uuid.uuid4().hex}.parquet"
        write_parquet_atomic(chunk, target, metadata=self._chunk_metadata)
        _fsync_directory(self.path)
        # Only now, with the chunk in place, are the rows dropped from the buffer: a failed
        # write keeps them for the next attempt.
        self._last_sequence = sequence
        self._buffer = []
        self._buffered_rows = 0
        self._oldest = None
        self._rows_written += chunk.height
        self._chunks_written += 1
        return chunk.height

    def _flush_when_old(self) -> None:
        assert self.flush_seconds is not None
        interval = min(max(self.flush_seconds / 4, 0.005), 1.0)
        while not self._stop.wait(interval):
            with self._lock:
                if self._closed or not self._is_old(self._clock()):
                    continue
                try:
                    self._flush_locked()
                except Exception as exc:  # the rows stay buffered; the next flush retries
                    warnings.warn(
                        f"background flush of stream '{self.kind}' at {self.path} failed: {exc}",
                        RuntimeWarning,
                        stacklevel=1,
                    )

    def close(self) -> None:
        """Flush and stop the writer (idempotent). Appending afterwards raises."""
        if self._closed:
            return
        self._check_forked()
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        with self._critical():
            self._flush_locked()
            self._closed = True
        _unregister(self)

    def _check_forked(self) -> None:
        if os.getpid() != self._pid:
            raise AioptError(
                f"stream writer '{self.kind}' was created in process {self._pid}; "
                "open a new StreamWriter in this process"
            )

    def _check_usable(self) -> None:
        self._check_forked()
        if self._closed:
            raise AioptError(f"stream writer '{self.kind}' at {self.path} is closed")

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# A run's streams


def _peak_rss_mb() -> float | None:
    if resource is None:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _gpu_memory_mb() -> float | None:
    """Peak CUDA memory of this process, if torch is already imported and CUDA is initialised."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_initialized():
            return None
        return float(torch.cuda.max_memory_allocated()) / 2**20
    except Exception:  # a broken CUDA setup must not break logging
        return None


class Streams:
    """The logging streams of one run folder: ``<run_dir>/streams/<kind>/``.

    ``streams.predictions``, ``.training_metrics``, ``.run_events`` and ``.features`` are
    :class:`StreamWriter` objects opened on first use (``features`` must exist or be declared
    first with :meth:`writer`); ``writer_options`` go to each (``flush_rows``,
    ``flush_seconds``...). ``run_id`` (default: the folder's name) fills ``run_id`` in
    :meth:`event` and :meth:`stage`. Close it (or use ``with``) to flush everything.
    """

    def __init__(
        self, run_dir: str | Path, *, run_id: str | None = None, **writer_options: Any
    ) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "streams"
        self.run_id = run_id if run_id is not None else self.run_dir.resolve().name
        self._options = writer_options
        self._writers: dict[str, StreamWriter] = {}
        self._lock = threading.Lock()

    def writer(
        self, kind: str, schema: StreamSchema | Mapping[str, Any] | Sequence[str] | None = None
    ) -> StreamWriter:
        """The writer of stream ``kind``, opened (and created with ``schema``) on first use."""
        with self._lock:
            writer = self._writers.get(kind)
            if writer is None or writer.closed:
                writer = StreamWriter(self.root, kind, schema, **self._options)
                self._writers[kind] = writer
            elif schema is not None:
                declared = _declared_schema(kind, _schema_from_names(kind, schema))
                difference = _schema_difference(writer.schema, declared)
                if difference is not None:
                    raise SchemaMismatchError(
                        kind, *difference, path=writer.path, context="already open"
                    )
            return writer

    @property
    def features(self) -> StreamWriter:
        """The ``features`` stream (declare it first: ``writer("features", schema)``)."""
        return self.writer("features")

    @property
    def predictions(self) -> StreamWriter:
        """The ``predictions`` stream (:data:`PREDICTIONS_SCHEMA`)."""
        return self.writer("predictions")

    @property
    def training_metrics(self) -> StreamWriter:
        """The ``training_metrics`` stream (:data:`TRAINING_METRICS_SCHEMA`)."""
        return self.writer("training_metrics")

    @property
    def run_events(self) -> StreamWriter:
        """The ``run_events`` stream (:data:`RUN_EVENTS_SCHEMA`)."""
        return self.writer("run_events")

    def kinds(self) -> list[str]:
        """The streams that exist in this run folder, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / SCHEMA_FILE).is_file())

    def read(self, kind: str) -> pl.DataFrame:
        """All rows of stream ``kind``, after flushing this object's writer of it."""
        with self._lock:
            writer = self._writers.get(kind)
        if writer is not None and not writer.closed:
            writer.flush()
        return read_stream(self.root, kind)

    def event(
        self,
        stage: str,
        event: str,
        message: str | None = None,
        *,
        duration_s: float | None = None,
        cpu_s: float | None = None,
    ) -> None:
        """Append one ``run_events`` row, stamped now, with this process's peak RSS and GPU memory."""
        self.run_events.append(
            {
                "run_id": self.run_id,
                "stage": stage,
                "event": event,
                "ts": dt.datetime.now(dt.UTC),
                "duration_s": duration_s,
                "cpu_s": cpu_s,
                "peak_rss_mb": _peak_rss_mb(),
                "gpu_memory_mb": _gpu_memory_mb(),
                "message": message,
            }
        )

    @contextlib.contextmanager
    def stage(self, name: str, message: str | None = None) -> Iterator[None]:
        """Log ``start``, then ``end`` (or ``error`` with the exception) with wall and CPU time."""
        self.event(name, "start", message)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        except BaseException as exc:
            self.event(
                name,
                "error",
                f"{type(exc).__name__}: {exc}",
                duration_s=time.perf_counter() - wall,
                cpu_s=time.process_time() - cpu,
            )
            raise
        self.event(
            name,
            "end",
            message,
            duration_s=time.perf_counter() - wall,
            cpu_s=time.process_time() - cpu,
        )

    def flush(self) -> int:
        """Flush every open writer; returns the number of rows written."""
        with self._lock:
            writers = list(self._writers.values())
        return sum(w.flush() for w in writers if not w.closed)

    def close(self) -> None:
        """Flush and close every writer."""
        with self._lock:
            writers = list(self._writers.values())
        for writer in writers:
            writer.close()

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _schema_from_names(
    kind: str, schema: StreamSchema | Mapping[str, Any] | Sequence[str]
) -> StreamSchema | Mapping[str, Any]:
    if isinstance(schema, Sequence) and not isinstance(schema, str):
        if kind != "features":
            raise ConfigError(f"give stream '{kind}' a mapping of column dtypes")
        return features_schema(schema)
    return schema
