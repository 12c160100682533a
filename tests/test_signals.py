"""The signal-model interface: sample sets (features, labels, images rendered from each sample's
own window), probability checks, model.json and load_model dispatch."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.dataset import DatasetConfig, build_dataset, read_dataset_bars, read_samples
from aiopt_lib.features.render import RenderSpec, render_windows
from aiopt_lib.models import load_model
from aiopt_lib.models.base import (
    SampleSet,
    check_probabilities,
    load_sample_set,
    write_model_file,
)

SPEC = RenderSpec(width=48, height=48)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    return build_dataset(load_sample().head(500), out, DatasetConfig(window=16)).path


def test_sample_set_aligns_rows_images_and_labels(dataset):
    sset = load_sample_set(dataset, spec=SPEC, workers=1)
    rows = read_samples(dataset)
    assert len(sset) == rows.height
    assert sset.images.shape == (rows.height, 48, 48, 3)
    assert set(np.unique(sset.labels)) <= {0, 1, 2}
    expected = {"BUY": 0, "SELL": 1, "HOLD": 2}
    assert sset.labels[:20].tolist() == [expected[v] for v in rows["label"].cast(pl.String)[:20]]
    assert sset.features().shape == (rows.height, len(sset.feature_names))
    assert sset.features().dtype == np.float32
    assert sset.pattern_names and all(p.startswith("pat_") for p in sset.pattern_names)
    # row 10's image is the window ending at its own bar
    bars = read_dataset_bars(dataset, "EURUSD")
    end = bars["ts"].to_list().index(rows["ts"][10])
    assert np.array_equal(sset.images[10], render_windows(bars, [end], 16, SPEC, workers=1)[0])
    sub = sset.take([3, 1])
    assert np.array_equal(sub.images[1], sset.images[1])
    assert sub.samples["sample_id"].to_list() == rows["sample_id"][[3, 1]].to_list()


def test_subset_of_samples_and_no_images(dataset):
    rows = read_samples(dataset).tail(7)
    sset = load_sample_set(dataset, samples=rows, images=False)
    assert len(sset) == 7 and sset.images is None


def test_misaligned_images_and_missing_features_are_refused(dataset):
    rows = read_samples(dataset).head(3)
    with pytest.raises(ValueError, match="align"):
        SampleSet(rows, ("rsi_14",), images=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="nope"):
        SampleSet(rows, ("nope",))


def test_check_probabilities():
    good = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert check_probabilities(good, 2).shape == (2, 3)
    for bad in (good[:, :2], good * 2, np.array([[np.nan, 0.5, 0.5], [1, 0, 0]]), -good):
        with pytest.raises(ValueError, match="probabilities"):
            check_probabilities(bad, 2)


def test_load_model_errors(tmp_path):
    with pytest.raises(DataError, match=r"no model\.json"):
        load_model(tmp_path)
    write_model_file(tmp_path, "no-such-kind")
    with pytest.raises(ConfigError, match="unknown model kind"):
        load_model(tmp_path)
