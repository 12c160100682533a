"""The labelled dataset: build, layout, schema version, counts, config round trip, the CLI
commands `aiopt features` and `aiopt dataset build` on the sample and on a Dukascopy m1 file."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data.sources import load_bars, load_sample
from aiopt_lib.features.causal import feature_columns
from aiopt_lib.features.dataset import (
    SCHEMA_VERSION,
    DatasetConfig,
    build_dataset,
    class_mean_contrast,
    dataset_verdict,
    indicator_and_pattern_frame,
    make_samples,
    read_dataset_bars,
    read_manifest,
    read_samples,
)
from aiopt_lib.runs.cli import EXIT_ERROR, EXIT_OK, main

DOCUMENTED_INDICATOR_COLUMNS = [
    "rsi_14", "macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9", "bb_basis_20_2",
    "bb_upper_20_2", "bb_lower_20_2", "sma_50", "ema_20", "stoch_k_14_3_3", "stoch_d_14_3_3",
    "atr_14", "adx_14", "plus_di_14", "minus_di_14",
]  # fmt: skip


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample):
    out = tmp_path_factory.mktemp("ds")
    return build_dataset(sample, out, DatasetConfig(window=32), source="sample")


def test_layout_and_schema_version(built):
    root = built.path
    assert (root / "dataset.json").is_file()
    assert (root / "bars" / "symbol=EURUSD" / "bars.parquet").is_file()
    part = root / "samples" / "symbol=EURUSD" / "year=2017" / "part-0.parquet"
    assert part.is_file()
    meta = pl.read_parquet_metadata(part)
    assert meta["aiopt.schema_version"] == str(SCHEMA_VERSION)
    assert json.loads(meta["aiopt.config"])["window"] == 32
    assert pl.read_parquet_schema(part)  # zstd parquet readable
    assert read_manifest(root)["schema_version"] == SCHEMA_VERSION


def test_samples_columns_and_counts(built, sample):
    samples = read_samples(built.path)
    manifest = built.manifest
    counts = manifest["counts"]
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert dropped + counts["samples"] == counts["bars"] == sample.height  # nothing lost silently
    assert samples.height == counts["samples"]
    assert samples.columns[:5] == ["sample_id", "symbol", "ts", "window", "image_key"]
    for column in feature_columns(DatasetConfig().features):
        assert column in samples.columns
        assert samples[column].null_count() == 0
    assert samples["label"].null_count() == 0
    assert (samples["label_end_ts"] > samples["ts"]).all()
    assert (
        samples["sample_id"][0] == "EURUSD-" + samples["ts"][0].strftime("%Y%m%dT%H%M%S") + "-w32"
    )
    assert samples["sample_id"].is_unique().all()
    # the first sample is the first bar with a full window
    assert samples["ts"][0] >= sample["ts"][31]
    # the tail without a complete label horizon is left out and counted
    assert counts["dropped_unlabelled"] >= DatasetConfig().triple_barrier.horizon
    assert sum(manifest["class_balance"].values()) == samples.height
    assert set(manifest["class_balance"]) == {"BUY", "SELL", "HOLD"}
    split = manifest["split"]
    assert sum(split.values()) == samples.height


def test_sample_features_equal_features_of_the_prefix(built, sample):
    """A sample's features at ts come only from bars <= ts: recompute on the prefix ending there."""
    samples = read_samples(built.path)
    row = samples.row(1000, named=True)
    prefix = sample.filter(pl.col("ts") <= row["ts"])
    again, _ = make_samples(
        prefix,
        DatasetConfig(
            window=32, label="forward_return", forward_return=DatasetConfig().forward_return
        ),
    )
    # the prefix's last bar has no label (its future is cut), so compare features directly
    from aiopt_lib.features.causal import add_features

    feats = add_features(prefix).tail(1).row(0, named=True)
    for column in feature_columns(DatasetConfig().features):
        assert feats[column] == row[column], column
    assert again.filter(pl.col("ts") == row["ts"]).height == 0


def test_bars_copy_and_round_trip(built, sample):
    assert read_dataset_bars(built.path, "EURUSD").equals(sample)
    config = DatasetConfig.from_mapping(built.manifest["config"])
    assert config == DatasetConfig(window=32)


def test_unknown_schema_version_is_refused(tmp_path, sample):
    built = build_dataset(sample.head(600), tmp_path, DatasetConfig(window=16))
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    manifest["schema_version"] = 999
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="schema version 999"):
        read_samples(built.path)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        DatasetConfig.from_mapping({"windw": 3})
    with pytest.raises(ConfigError, match=r"triple_barrier: unknown key"):
        DatasetConfig.from_mapping({"triple_barrier": {"horizn": 3}})
    with pytest.raises(ConfigError, match="window"):
        DatasetConfig.from_mapping({"window": 0})
    cfg = DatasetConfig.from_mapping(
        {"window": 20, "label": "forward_return", "features": {"return_lags": [1, 2]},
         "triple_barrier": {"horizon": 10}}
    )  # fmt: skip
    assert cfg.features.return_lags == (1, 2) and cfg.triple_barrier.horizon == 10


def test_too_few_bars_is_a_clear_error(tmp_path, sample):
    with pytest.raises(DataError, match="no samples"):
        build_dataset(sample.head(40), tmp_path, DatasetConfig(window=64))


def test_stride_keeps_every_nth(sample):
    every, _ = make_samples(sample, DatasetConfig(window=16))
    strided, counts = make_samples(sample, DatasetConfig(window=16, stride=4))
    assert counts["dropped_stride"] > 0
    assert set(strided["ts"].to_list()) <= set(every["ts"].to_list())
    assert strided.height == pytest.approx(every.height / 4, abs=2)


def test_features_cli_on_sample(tmp_path, capsys):
    out = tmp_path / "f.parquet"
    assert main(["features", "sample", "--out", str(out)]) == EXIT_OK
    frame = pl.read_parquet(out)
    assert frame.height == 6225
    for column in DOCUMENTED_INDICATOR_COLUMNS:
        assert column in frame.columns
    pats = [c for c in frame.columns if c.startswith("pat_")]
    assert len(pats) >= 16 and all(frame.schema[c] == pl.Boolean for c in pats)
    assert indicator_and_pattern_frame(load_sample()).equals(frame.drop("flags"))  # flags: cleaning


def test_cli_on_a_dukascopy_m1_file(tmp_path, dukascopy_dir, capsys):
    m1 = dukascopy_dir / "EURUSD" / "2019" / "01" / "04" / "BID_candles_min_1.bi5"
    out = tmp_path / "m1_features.parquet"
    assert main(["features", str(m1), "--out", str(out)]) == EXIT_OK
    assert pl.read_parquet(out).height == load_bars(m1).height
    ds = tmp_path / "ds"
    assert main(["dataset", "build", "--bars", str(m1), "--out", str(ds)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "samples from" in printed and "class balance" in printed
    samples = read_samples(ds)
    assert samples.height > 1000
    assert samples["ts"].dt.date().unique().to_list() == [samples["ts"][0].date()]


def test_dataset_cli_config_error(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("window: -1\n")
    code = main(
        ["dataset", "build", "--bars", "sample", "--out", str(tmp_path / "x"), "--config", str(cfg)]
    )
    assert code == EXIT_ERROR
    assert "window" in capsys.readouterr().err


def test_dataset_verdict_names_the_counts_and_the_rarest_class() -> None:
    balance = pl.DataFrame(
        {
            "part": ["train"] * 3 + ["test"] * 3,
            "class": ["BUY", "SELL", "HOLD"] * 2,
            "count": [450, 470, 80, 40, 50, 10],
            "share": [0.45, 0.47, 0.08, 0.4, 0.5, 0.1],
        }
    )
    sentence = dataset_verdict(balance, window=64, width=224, height=224)
    assert sentence.startswith("1,100 labelled samples, each a 224×224 chart of the 64 bars")
    assert "BUY 45%, SELL 47%, HOLD 8%" in sentence and "never says HOLD" in sentence


def test_class_mean_contrast_measures_the_widest_pixel_difference() -> None:
    base = np.full((4, 4, 3), 200, np.uint8)
    apart = base.copy()
    apart[0, 0] = 100
    assert "at most 100 of 255" in class_mean_contrast({"BUY": base, "SELL": apart})
    assert "look almost alike" in class_mean_contrast({"BUY": base, "SELL": base + 3})
    assert "Fewer than two" in class_mean_contrast({"BUY": base})


def test_class_mean_contrast_takes_grey_images_too() -> None:
    grey = np.full((4, 4), 10.0)
    assert "at most 20 of 255" in class_mean_contrast({"BUY": grey, "SELL": grey + 20})
