"""Append-only Parquet logging streams: schemas, flushing, crash safety, concurrent writers."""

from __future__ import annotations

import datetime as dt
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.core.streams import (
    PREDICTIONS_SCHEMA,
    RUN_EVENTS_SCHEMA,
    SCHEMA_FILE,
    STREAM_SCHEMAS,
    TRAINING_METRICS_SCHEMA,
    SchemaMismatchError,
    Streams,
    StreamSchema,
    StreamWriter,
    features_schema,
    list_chunks,
    read_stream,
    read_stream_schema,
)
from aiopt_lib.data.sources import load_sample

UTC = dt.UTC


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    """The first 60 real EUR/USD hourly bars of the embedded sample."""
    return load_sample().head(60)


def _writer(root: Path, kind: str, schema=None, **options) -> StreamWriter:
    options.setdefault("background_flush", False)
    options.setdefault("handle_sigterm", False)
    return StreamWriter(root, kind, schema, **options)


def _prediction(ts: dt.datetime, *, label: str = "BUY", prob_buy: float = 0.6) -> dict:
    prob_sell = (1.0 - prob_buy) / 2
    return {
        "ts": ts,
        "symbol": "EURUSD",
        "model_id": "logit-baseline",
        "model_version": "3",
        "prob_buy": prob_buy,
        "prob_sell": prob_sell,
        "prob_hold": 1.0 - prob_buy - prob_sell,
        "predicted_label": label,
        "confidence": max(prob_buy, prob_sell),
        "latency_ms": 1.25,
    }


def _features(bars: pl.DataFrame) -> pl.DataFrame:
    """Two causal features of real bars (each uses bars <= t only)."""
    return bars.select(
        "ts",
        pl.lit("EURUSD").alias("symbol"),
        (pl.col("close") / pl.col("close").shift(1)).log().alias("log_return_1"),
        ((pl.col("high") - pl.col("low")) / pl.col("close")).alias("range_pct"),
    )


# ---------------------------------------------------------------------------------------------
# Round trips


def test_predictions_round_trip(tmp_path, bars):
    records = [
        _prediction(ts, label=label, prob_buy=p)
        for ts, label, p in zip(
            bars["ts"].to_list()[:9], ["BUY", "SELL", "HOLD"] * 3, [0.7, 0.1, 0.3] * 3, strict=True
        )
    ]
    before = dt.datetime.now(UTC)
    with _writer(tmp_path, "predictions") as writer:
        writer.append(records[0])
        writer.append(records[1:])
    after = dt.datetime.now(UTC)
    frame = read_stream(tmp_path, "predictions")
    assert frame.schema == PREDICTIONS_SCHEMA
    assert frame["ts"].to_list() == bars["ts"].to_list()[:9]
    assert frame["predicted_label"].cast(pl.String).to_list() == ["BUY", "SELL", "HOLD"] * 3
    assert frame["prob_buy"].to_list() == [0.7, 0.1, 0.3] * 3
    # written_at was not given: it is the time of the append
    assert frame["written_at"].is_between(before, after).all()


def test_features_round_trip_with_a_declared_schema(tmp_path, bars):
    features = _features(bars)
    schema = features_schema(["log_return_1", "range_pct"])
    with _writer(tmp_path, "features", schema) as writer:
        writer.append(features.head(25))
        writer.append(features.slice(25))
    frame = read_stream(tmp_path, "features")
    assert frame.equals(features)
    assert frame["log_return_1"][0] is None  # the warm-up null is kept
    stored = read_stream_schema(tmp_path, "features")
    assert stored == schema
    assert stored.nullable == {"log_return_1", "range_pct"}
    # the declared schema lives in the stream's metadata file
    assert '"log_return_1"' in (tmp_path / "features" / SCHEMA_FILE).read_text()


def test_training_metrics_and_run_events_round_trip(tmp_path):
    t0 = dt.datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    metrics = [
        {
            "run_id": "r1",
            "step": step,
            "epoch": step // 2,
            "split": "train",
            "loss": 1.0 / (step + 1),
            "learning_rate": 1e-4,
            "grad_norm": 0.5,
            "samples_per_s": 812.0,
            "val_accuracy": None,
            "gpu_memory_mb": None,
            "written_at": t0 + dt.timedelta(seconds=step),
        }
        for step in range(4)
    ]
    metrics.append(
        {
            "run_id": "r1",
            "step": 4,
            "epoch": 2,
            "split": "val",
            "loss": 0.31,
            "learning_rate": None,
            "grad_norm": None,
            "samples_per_s": None,
            "val_accuracy": 0.54,
            "gpu_memory_mb": 2048.0,
            "written_at": t0 + dt.timedelta(seconds=9),
        }
    )
    events = [
        {
            "run_id": "r1",
            "stage": "train",
            "event": "start",
            "ts": t0,
            "duration_s": None,
            "cpu_s": None,
            "peak_rss_mb": 512.0,
            "gpu_memory_mb": None,
            "message": None,
        },
        {
            "run_id": "r1",
            "stage": "train",
            "event": "end",
            "ts": t0 + dt.timedelta(minutes=3),
            "duration_s": 180.0,
            "cpu_s": 171.5,
            "peak_rss_mb": 790.0,
            "gpu_memory_mb": 2048.0,
            "message": "ok",
        },
    ]
    with _writer(tmp_path, "training_metrics") as writer:
        writer.append(metrics)
    with _writer(tmp_path, "run_events") as writer:
        writer.append(events)
    got_metrics = read_stream(tmp_path, "training_metrics")
    assert got_metrics.schema == TRAINING_METRICS_SCHEMA
    assert got_metrics.to_dicts() == metrics
    got_events = read_stream(tmp_path, "run_events")
    assert got_events.schema == RUN_EVENTS_SCHEMA
    assert got_events.with_columns(pl.col("event").cast(pl.String)).to_dicts() == events


def test_frames_are_cast_safely(tmp_path, bars):
    """Integers into float columns, other zones and units into Datetime(us, UTC), strings into
    the label enum: the values keep their meaning."""
    frame = pl.DataFrame([_prediction(ts) for ts in bars["ts"].to_list()[:3]]).with_columns(
        pl.col("ts").dt.convert_time_zone("America/New_York").dt.cast_time_unit("ns"),
        pl.Series("prob_buy", [1, 0, 1], dtype=pl.Int32),
    )
    with _writer(tmp_path, "predictions") as writer:
        writer.append(frame)
    got = read_stream(tmp_path, "predictions")
    assert got["ts"].to_list() == bars["ts"].to_list()[:3]
    assert got["prob_buy"].to_list() == [1.0, 0.0, 1.0]
    # an aware datetime in another zone in a record is the same instant
    with _writer(tmp_path, "predictions") as writer:
        writer.append(
            _prediction(dt.datetime(2017, 1, 2, 5, tzinfo=dt.timezone(dt.timedelta(hours=5))))
        )
    assert read_stream(tmp_path, "predictions")["ts"][-1] == dt.datetime(2017, 1, 2, 0, tzinfo=UTC)


def test_schema_json_round_trip_for_every_supported_dtype():
    schema = StreamSchema(
        pl.Schema(
            {
                "flag": pl.Boolean(),
                "i8": pl.Int8(),
                "u64": pl.UInt64(),
                "f32": pl.Float32(),
                "name": pl.String(),
                "day": pl.Date(),
                "at_ns_ny": pl.Datetime("ns", "America/New_York"),
                "naive": pl.Datetime("ms"),
                "wait": pl.Duration("us"),
                "side": pl.Enum(["long", "short"]),
            }
        ),
        frozenset({"name", "wait"}),
    )
    assert StreamSchema.from_json(schema.to_json()) == schema
    assert hash(StreamSchema.from_json(schema.to_json())) == hash(schema)
    with pytest.raises(ConfigError, match="cannot hold"):
        StreamSchema(pl.Schema({"xs": pl.List(pl.Float64)}))
    with pytest.raises(ConfigError, match="not in the schema"):
        StreamSchema(pl.Schema({"x": pl.Float64}), frozenset({"y"}))


def test_empty_stream_reads_as_an_empty_frame_of_its_schema(tmp_path):
    _writer(tmp_path, "predictions").close()
    frame = read_stream(tmp_path, "predictions")
    assert frame.height == 0
    assert frame.schema == PREDICTIONS_SCHEMA
    with pytest.raises(DataError, match="no stream 'run_events'"):
        read_stream(tmp_path, "run_events")


def test_custom_kind_with_a_declared_schema(tmp_path):
    schema = {"trial": pl.Int64, "sharpe": pl.Float64, "params": pl.String}
    with _writer(tmp_path, "optuna_trials", schema) as writer:
        writer.append(
            [
                {"trial": 0, "sharpe": 0.8, "params": "{}"},
                {"trial": 1, "sharpe": None, "params": None},
            ]
        )
    got = read_stream(tmp_path, "optuna_trials")
    assert got.to_dicts() == [
        {"trial": 0, "sharpe": 0.8, "params": "{}"},
        {"trial": 1, "sharpe": None, "params": None},
    ]
    with pytest.raises(ConfigError, match="stream kind"):
        _writer(tmp_path, "../escape", schema)


# ---------------------------------------------------------------------------------------------
# Flushing


def test_flush_by_row_count(tmp_path, bars):
    timestamps = bars["ts"].to_list()
    writer = _writer(tmp_path, "predictions", flush_rows=4, flush_seconds=None)
    for ts in timestamps[:3]:
        writer.append(_prediction(ts))
    assert (writer.rows_written, writer.rows_buffered, list_chunks(tmp_path, "predictions")) == (
        0,
        3,
        [],
    )
    writer.append(_prediction(timestamps[3]))
    assert (writer.rows_written, writer.rows_buffered) == (4, 0)
    for ts in timestamps[4:10]:
        writer.append(_prediction(ts))
    assert (writer.rows_written, writer.rows_buffered, writer.chunks_written) == (8, 2, 2)
    assert read_stream(tmp_path, "predictions")["ts"].to_list() == timestamps[:8]
    writer.close()
    assert len(list_chunks(tmp_path, "predictions")) == 3
    assert read_stream(tmp_path, "predictions")["ts"].to_list() == timestamps[:10]
    with pytest.raises(Exception, match="closed"):
        writer.append(_prediction(timestamps[10]))


def test_flush_by_age_on_append_with_a_fake_clock(tmp_path, bars):
    now = [100.0]
    writer = _writer(
        tmp_path, "predictions", flush_rows=1000, flush_seconds=10.0, clock=lambda: now[0]
    )
    timestamps = bars["ts"].to_list()
    writer.append(_prediction(timestamps[0]))
    now[0] = 109.0
    writer.append(_prediction(timestamps[1]))
    assert writer.rows_written == 0  # the oldest row is 9 s old
    now[0] = 110.0
    writer.append(_prediction(timestamps[2]))
    assert (writer.rows_written, writer.rows_buffered) == (3, 0)
    # the age counts from the oldest row of the new buffer
    now[0] = 115.0
    writer.append(_prediction(timestamps[3]))
    now[0] = 124.0
    writer.append(_prediction(timestamps[4]))
    assert writer.rows_written == 3
    now[0] = 125.0
    writer.append(_prediction(timestamps[5]))
    assert writer.rows_written == 6
    writer.close()


def test_background_timer_flushes_an_idle_writer(tmp_path, bars):
    writer = _writer(tmp_path, "predictions", flush_seconds=0.02, background_flush=True)
    writer.append(_prediction(bars["ts"][0]))
    deadline = time.monotonic() + 10.0
    while writer.rows_written == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.rows_written == 1
    assert read_stream(tmp_path, "predictions").height == 1  # durable without close()
    writer.close()


def test_flush_and_close_are_idempotent(tmp_path, bars):
    writer = _writer(tmp_path, "predictions")
    assert writer.flush() == 0
    writer.append([_prediction(ts) for ts in bars["ts"].to_list()[:5]])
    assert writer.flush() == 5
    assert writer.flush() == 0
    writer.close()
    writer.close()
    assert len(list_chunks(tmp_path, "predictions")) == 1


# ---------------------------------------------------------------------------------------------
# Schema enforcement

_TS = dt.datetime(2017, 1, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "column", "expected", "got"),
    [
        ({"prob_buy": "0.55"}, "prob_buy", "Float64", "str '0.55'"),
        ({"prob_buy": True}, "prob_buy", "Float64", "bool True"),
        ({"extra_score": 0.1}, "extra_score", "no such column", "float 0.1"),
        ({"symbol": None}, "symbol", "non-null String", "None"),
        (
            {"predicted_label": "STRONG_BUY"},
            "predicted_label",
            "Enum",
            "not one of BUY, SELL, HOLD",
        ),
        ({"ts": dt.datetime(2017, 1, 2)}, "ts", "Datetime", "naive datetime"),
        ({"ts": "2017-01-02T00:00:00Z"}, "ts", "Datetime", "str"),
    ],
)
def test_wrong_record_raises_and_the_stream_keeps_its_rows(tmp_path, change, column, expected, got):
    writer = _writer(tmp_path, "predictions", flush_rows=2)
    writer.append([_prediction(_TS), _prediction(_TS + dt.timedelta(hours=1))])  # flushed
    writer.append(_prediction(_TS + dt.timedelta(hours=2)))  # buffered
    with pytest.raises(SchemaMismatchError) as caught:
        writer.append(_prediction(_TS + dt.timedelta(hours=3)) | change)
    error = caught.value
    assert (error.stream, error.column) == ("predictions", column)
    message = str(error)
    for part in ("stream 'predictions'", f"column '{column}'", expected, got):
        assert part in message
    assert writer.rows_buffered == 1  # the bad record was not buffered
    writer.close()
    assert read_stream(tmp_path, "predictions")["ts"].to_list() == [
        _TS + dt.timedelta(hours=h) for h in range(3)
    ]


def test_missing_column_and_bad_record_in_a_batch(tmp_path):
    writer = _writer(tmp_path, "predictions")
    record = _prediction(_TS)
    del record["confidence"]
    with pytest.raises(
        SchemaMismatchError, match="column 'confidence': expected Float64, got missing column"
    ):
        writer.append(record)
    batch = [_prediction(_TS), _prediction(_TS) | {"latency_ms": "fast"}]
    with pytest.raises(SchemaMismatchError, match="record 1, column 'latency_ms'"):
        writer.append(batch)
    assert writer.rows_buffered == 0  # nothing of a rejected batch is buffered
    writer.append(_prediction(_TS))
    writer.close()
    assert read_stream(tmp_path, "predictions").height == 1


def test_wrong_frame_raises(tmp_path, bars):
    writer = _writer(tmp_path, "features", features_schema(["log_return_1", "range_pct"]))
    good = _features(bars)
    writer.append(good.head(10))
    cases = [
        (
            good.with_columns(pl.col("range_pct").cast(pl.String)),
            "range_pct",
            "expected Float64, got String",
        ),
        (good.drop("range_pct"), "range_pct", "got missing column"),
        (good.with_columns(pl.lit(1.0).alias("rsi_14")), "rsi_14", "expected no such column"),
        (
            good.with_columns(pl.col("ts").dt.replace_time_zone(None)),
            "ts",
            "got Datetime(time_unit='us', time_zone=None)",
        ),
        (
            good.with_columns(
                pl.when(pl.int_range(pl.len()) == 3)
                .then(None)
                .otherwise(pl.col("symbol"))
                .alias("symbol")
            ),
            "symbol",
            "record 3",
        ),
    ]
    for frame, column, text in cases:
        with pytest.raises(SchemaMismatchError) as caught:
            writer.append(frame)
        assert caught.value.column == column
        assert text in str(caught.value)
        assert "stream 'features'" in str(caught.value)
    writer.close()
    assert read_stream(tmp_path, "features").equals(good.head(10))


def test_float_into_integer_column_is_refused(tmp_path):
    writer = _writer(tmp_path, "training_metrics")
    row = {"run_id": "r", "step": 1.5, "epoch": 0, "split": "train", "loss": 0.3}
    row |= dict.fromkeys(
        ("learning_rate", "grad_norm", "samples_per_s", "val_accuracy", "gpu_memory_mb")
    )
    with pytest.raises(SchemaMismatchError, match=r"column 'step': expected Int64, got float 1\.5"):
        writer.append(row)
    frame = pl.DataFrame([row | {"step": 1}]).with_columns(pl.col("step").cast(pl.Float64))
    with pytest.raises(SchemaMismatchError, match="expected Int64, got Float64"):
        writer.append(frame)
    writer.append(row | {"step": 2})
    writer.close()
    assert read_stream(tmp_path, "training_metrics")["step"].to_list() == [2]


def test_reopening_with_a_different_schema_raises(tmp_path):
    _writer(tmp_path, "features", ["log_return_1", "range_pct"]).close()
    with pytest.raises(
        SchemaMismatchError, match="column 'range_pct': expected Float64, got Int64"
    ):
        _writer(tmp_path, "features", {"log_return_1": pl.Float64, "range_pct": pl.Int64})
    with pytest.raises(SchemaMismatchError, match="column 'rsi_14': expected no such column"):
        _writer(tmp_path, "features", ["log_return_1", "range_pct", "rsi_14"])
    # the same schema, or none, opens the existing stream
    _writer(tmp_path, "features", ["range_pct", "log_return_1"]).close()
    assert list(_writer(tmp_path, "features").schema.columns) == [
        "ts",
        "symbol",
        "log_return_1",
        "range_pct",
    ]
    # a fixed kind cannot be declared differently
    with pytest.raises(SchemaMismatchError, match="fixed schema"):
        _writer(tmp_path, "predictions", {**PREDICTIONS_SCHEMA, "prob_buy": pl.Float32})
    with pytest.raises(ConfigError, match="declare its schema"):
        _writer(tmp_path / "new", "features")
    with pytest.raises(SchemaMismatchError, match="column 'ts'"):
        features_schema({"ts": pl.Datetime("ns"), "x": pl.Float64})


def test_reader_ignores_temp_files_and_names_a_foreign_chunk(tmp_path, bars):
    with _writer(tmp_path, "predictions") as writer:
        writer.append([_prediction(ts) for ts in bars["ts"].to_list()[:4]])
    stream = tmp_path / "predictions"
    # what a writer killed mid-write leaves behind
    (stream / ".part-0000000002-0123456789abcdef0123456789abcdef.tmp.parquet").write_bytes(
        b"PAR1\x00half"
    )
    assert read_stream(tmp_path, "predictions").height == 4
    foreign = stream / f"part-0000000009-{'a' * 32}.parquet"
    pl.DataFrame({"ts": [1], "prob_buy": ["x"]}).write_parquet(foreign)
    with pytest.raises(SchemaMismatchError, match=f"{foreign.name}.*column"):
        read_stream(tmp_path, "predictions")


# ---------------------------------------------------------------------------------------------
# The Streams facade


def test_streams_facade_logs_a_run(tmp_path, bars):
    run_dir = tmp_path / "20240501T090000Z-abc123"
    streams = Streams(run_dir, flush_rows=100, background_flush=False, handle_sigterm=False)
    assert streams.run_id == run_dir.name
    with streams.stage("features"):
        streams.writer("features", ["log_return_1", "range_pct"]).append(_features(bars))
    for ts in bars["ts"].to_list()[:5]:
        streams.predictions.append(_prediction(ts))
    with pytest.raises(ValueError, match="diverged"), streams.stage("train"):
        raise ValueError("loss diverged")
    streams.event("train", "info", "retrying with a lower learning rate")
    assert streams.read("predictions").height == 5  # read() flushes the run's own writer
    assert streams.features is streams.writer("features")
    with pytest.raises(SchemaMismatchError, match="already open"):
        streams.writer("features", ["other"])
    streams.close()

    assert streams.kinds() == ["features", "predictions", "run_events"]
    assert read_stream(streams.root, "features").height == bars.height
    events = read_stream(run_dir / "streams", "run_events")
    assert events.select("stage", pl.col("event").cast(pl.String)).rows() == [
        ("features", "start"),
        ("features", "end"),
        ("train", "start"),
        ("train", "error"),
        ("train", "info"),
    ]
    assert events["run_id"].unique().to_list() == [run_dir.name]
    ended = events.filter(pl.col("event").is_in(["end", "error"]))
    assert (ended["duration_s"] >= 0).all() and (ended["cpu_s"] >= 0).all()
    assert (events["peak_rss_mb"] > 10).all()  # a Python process with polars loaded
    assert events.filter(pl.col("event") == "error")["message"][0] == "ValueError: loss diverged"
    assert events["ts"].is_sorted()


def test_fixed_schemas_are_declared_for_the_standard_kinds():
    assert set(STREAM_SCHEMAS) == {"predictions", "training_metrics", "run_events"}
    assert STREAM_SCHEMAS["predictions"].columns == PREDICTIONS_SCHEMA
    assert "gpu_memory_mb" in STREAM_SCHEMAS["training_metrics"].nullable
    assert "loss" not in STREAM_SCHEMAS["training_metrics"].nullable
    assert PREDICTIONS_SCHEMA["ts"] == pl.Datetime("us", "UTC")


# ---------------------------------------------------------------------------------------------
# Processes: kill -9, SIGTERM, atexit, fork, two writers

_PRELUDE = """
import datetime as dt, os, signal, sys, time
import polars as pl
import aiopt_lib.core.streams as streams
from aiopt_lib.core.streams import StreamWriter
ROOT = sys.argv[1]
T0 = dt.datetime(2017, 1, 2, tzinfo=dt.UTC)
SCHEMA = {"seq": pl.Int64, "close": pl.Float64}
def row(i, symbol="EURUSD"):
    return {"ts": T0 + dt.timedelta(hours=i), "symbol": symbol, "seq": i, "close": 1.05 + i * 1e-5}
"""


def _python(script: str, *args: object) -> subprocess.Popen:
    code = _PRELUDE + textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_kill_9_keeps_every_flushed_row(tmp_path):
    process = _python(
        """
        w = StreamWriter(ROOT, "features", SCHEMA, flush_rows=5, flush_seconds=None,
                         background_flush=False)
        durable, i = 0, 0
        while True:
            w.append(row(i))
            i += 1
            if w.rows_written != durable:
                durable = w.rows_written
                print(durable, flush=True)
        """,
        tmp_path,
    )
    durable = 0
    try:
        while durable < 200:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            durable = int(line)
        process.send_signal(signal.SIGKILL)
    finally:
        returncode, _, _ = _finish(process)
    assert returncode == -signal.SIGKILL

    frame = read_stream(tmp_path, "features")
    assert frame.height >= durable
    assert frame.height % 5 == 0  # whole chunks only
    assert frame["seq"].to_list() == list(range(frame.height))
    assert frame["close"].to_list() == [1.05 + i * 1e-5 for i in range(frame.height)]
    assert all(p.name.startswith("part-") for p in list_chunks(tmp_path, "features"))

    # the stream takes appends again, after the rows already there
    with _writer(
        tmp_path, "features", features_schema({"seq": pl.Int64, "close": pl.Float64})
    ) as writer:
        writer.append({"ts": _TS, "symbol": "EURUSD", "seq": frame.height, "close": 1.1})
    again = read_stream(tmp_path, "features")
    assert again["seq"].to_list() == list(range(frame.height + 1))


def test_sigterm_flushes_the_buffer_before_the_process_dies(tmp_path):
    process = _python(
        """
        w = StreamWriter(ROOT, "features", SCHEMA, flush_rows=10**6, flush_seconds=None)
        w.append([row(i) for i in range(37)])
        print(w.rows_written, w.rows_buffered, flush=True)
        time.sleep(60)
        """,
        tmp_path,
    )
    try:
        assert process.stdout.readline().split() == ["0", "37"]
        process.send_signal(signal.SIGTERM)
    finally:
        returncode, _, err = _finish(process)
    assert returncode == -signal.SIGTERM, err  # still dies of SIGTERM, as without the handler
    assert read_stream(tmp_path, "features")["seq"].to_list() == list(range(37))


def test_sigterm_chains_to_the_previous_handler(tmp_path):
    process = _python(
        """
        def previous(signum, frame):
            print("previous handler ran", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, previous)
        w = StreamWriter(ROOT, "features", SCHEMA, flush_rows=10**6, flush_seconds=None)
        w.append([row(i) for i in range(12)])
        print("ready", flush=True)
        time.sleep(60)
        """,
        tmp_path,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
    finally:
        returncode, out, err = _finish(process)
    assert returncode == 3, err
    assert "previous handler ran" in out
    assert read_stream(tmp_path, "features").height == 12


def test_sigterm_during_a_flush_waits_for_it_and_writes_no_duplicate(tmp_path):
    """The signal arrives after a chunk is renamed into place but before the writer has dropped
    those rows from its buffer: handling it there would write them a second time."""
    process = _python(
        """
        real_fsync = streams._fsync_directory
        def fsync_then_terminated(path):
            real_fsync(path)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the signal is pending in the main thread now
            print("flush continues", flush=True)
        w = StreamWriter(ROOT, "features", SCHEMA, flush_rows=10**6, flush_seconds=None)
        streams._fsync_directory = fsync_then_terminated
        w.append([row(i) for i in range(8)])
        w.flush()
        print("not reached", flush=True)
        """,
        tmp_path,
    )
    returncode, out, err = _finish(process)
    assert returncode == -signal.SIGTERM, err
    assert out.split("\n")[0] == "flush continues"
    assert "not reached" not in out
    assert read_stream(tmp_path, "features")["seq"].to_list() == list(range(8))
    assert len(list_chunks(tmp_path, "features")) == 1


def test_interpreter_exit_flushes_and_a_forked_child_does_not_write_twice(tmp_path):
    process = _python(
        """
        w = StreamWriter(ROOT, "features", SCHEMA, flush_rows=10**6, flush_seconds=None)
        w.append([row(i) for i in range(6)])
        pid = os.fork()
        if pid == 0:  # the child inherits the buffer; it belongs to the parent
            print("child flushed", streams.flush_all(), flush=True)
            sys.exit(0)  # runs the child's atexit handlers
        os.waitpid(pid, 0)
        w.append(row(6))
        # no close(): atexit flushes
        """,
        tmp_path,
    )
    returncode, out, err = _finish(process)
    assert returncode == 0, err
    assert "child flushed 0" in out
    assert read_stream(tmp_path, "features")["seq"].to_list() == list(range(7))


def test_two_writer_processes_on_one_stream(tmp_path):
    script = """
        name, n = sys.argv[2], int(sys.argv[3])
        with StreamWriter(ROOT, "features", SCHEMA, flush_rows=7, flush_seconds=None) as w:
            for i in range(n):
                w.append(row(i, symbol=name))
        """
    n = 300
    processes = [_python(script, tmp_path, name, n) for name in ("EURUSD", "GBPUSD")]
    for process in processes:
        returncode, _, err = _finish(process)
        assert returncode == 0, err
    frame = read_stream(tmp_path, "features")
    assert frame.height == 2 * n
    for name in ("EURUSD", "GBPUSD"):
        assert frame.filter(pl.col("symbol") == name)["seq"].to_list() == list(range(n))
    chunks = list_chunks(tmp_path, "features")
    assert len(chunks) == 2 * math.ceil(n / 7)
    assert not [p for p in (tmp_path / "features").iterdir() if p.name.startswith(".")]


def test_sigterm_handler_is_installed_only_from_the_main_thread(tmp_path):
    process = _python(
        """
        import threading
        def installed():
            return signal.getsignal(signal.SIGTERM) is streams._on_sigterm
        print("import", installed())
        opened = []
        thread = threading.Thread(
            target=lambda: opened.append(StreamWriter(ROOT, "features", SCHEMA))
        )
        thread.start()
        thread.join()
        print("thread", installed())
        StreamWriter(ROOT, "features", SCHEMA)
        print("main", installed())
        """,
        tmp_path,
    )
    returncode, out, err = _finish(process)
    assert returncode == 0, err
    assert out.split() == ["import", "False", "thread", "False", "main", "True"]
