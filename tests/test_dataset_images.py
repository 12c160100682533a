"""Dataset images: every sample rendered, keyed by sample id, resumable after an interruption,
idempotent, in folder and column modes, and the `aiopt dataset images` command."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features import dataset as dataset_module
from aiopt_lib.features.dataset import (
    DatasetConfig,
    build_dataset,
    image_path,
    read_images,
    read_samples,
    render_dataset_images,
)
from aiopt_lib.features.render import RenderSpec, render_windows, with_overlays
from aiopt_lib.runs.cli import EXIT_OK, main

SPEC = RenderSpec(width=64, height=64)


@pytest.fixture
def small_dataset(tmp_path):
    bars = load_sample().head(400)
    return build_dataset(bars, tmp_path / "ds", DatasetConfig(window=16)).path


def decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_folder_mode_renders_each_sample_from_its_own_window(small_dataset):
    result = render_dataset_images(small_dataset, SPEC, workers=1, progress=False)
    samples = read_samples(small_dataset)
    assert result.rendered == result.total == samples.height and result.skipped == 0
    # the image of a sample equals rendering the window that ends at its bar
    bars = with_overlays(load_sample().head(400), SPEC)
    row = samples.row(57, named=True)
    end = bars["ts"].to_list().index(row["ts"])
    expected = render_windows(bars, [end], 16, SPEC, output="array", workers=1)[0]
    png = image_path(small_dataset, "EURUSD", row["sample_id"]).read_bytes()
    assert np.array_equal(decode(png), expected)


def test_rerun_is_idempotent_and_resumes(small_dataset):
    first = render_dataset_images(small_dataset, SPEC, workers=1, progress=False)
    again = render_dataset_images(small_dataset, SPEC, workers=1, progress=False)
    assert again.rendered == 0 and again.skipped == first.total
    samples = read_samples(small_dataset)
    for sid in samples["sample_id"][:3]:
        image_path(small_dataset, "EURUSD", sid).unlink()
    resumed = render_dataset_images(small_dataset, SPEC, workers=1, progress=False)
    assert resumed.rendered == 3 and resumed.skipped == first.total - 3


def test_interrupted_run_leaves_no_partial_file_and_finishes_later(small_dataset, monkeypatch):
    calls = {"n": 0}
    original = dataset_module.render_windows

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-run")
        return original(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "render_windows", failing)
    with pytest.raises(KeyboardInterrupt):
        render_dataset_images(small_dataset, SPEC, workers=1, batch_size=50, progress=False)
    monkeypatch.setattr(dataset_module, "render_windows", original)
    folder = small_dataset / "images" / "EURUSD"
    assert len(list(folder.glob("*.png"))) == 50
    assert not list(folder.glob(".*"))  # no temporary leftovers
    done = render_dataset_images(small_dataset, SPEC, workers=1, batch_size=50, progress=False)
    assert done.skipped == 50 and done.rendered == done.total - 50


def test_column_mode_and_join(small_dataset):
    result = render_dataset_images(small_dataset, SPEC, mode="column", workers=1, progress=False)
    images = read_images(small_dataset)
    assert images.height == result.total and images.schema["image"] == pl.Binary
    joined = read_samples(small_dataset, images=True)
    assert joined["image"].null_count() == 0
    assert decode(joined["image"][0]).shape == (64, 64, 3)
    again = render_dataset_images(small_dataset, SPEC, mode="column", workers=1, progress=False)
    assert again.rendered == 0


def test_a_different_spec_is_refused(small_dataset):
    render_dataset_images(small_dataset, SPEC, workers=1, progress=False)
    with pytest.raises(ConfigError, match="another render spec"):
        render_dataset_images(small_dataset, RenderSpec(width=96, height=96), progress=False)


def test_cli_dataset_images(small_dataset, capsys):
    code = main(
        ["dataset", "images", "--dataset", str(small_dataset), "--workers", "1", "--no-progress"]
    )
    assert code == EXIT_OK
    assert "images rendered" in capsys.readouterr().out
    png = next((small_dataset / "images" / "EURUSD").glob("*.png")).read_bytes()
    assert decode(png).shape == (224, 224, 3)
