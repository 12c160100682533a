"""Data-parallel fine-tuning of the VLM: real processes (torchrun, gloo on the CPU), no mocks.

One tiny random LLaVA (built offline as in test_vlm) and a small dataset folder built from the
sample bars. Two process groups run, each two processes with the same GLOBAL batch of 4: (A) from
scratch with 2 accumulation steps (micro-batches of one sample; the second batch of each epoch
holds 3 samples, which leaves one process an empty micro-batch), through :func:`launch_finetune`; (B) through the
module's command line, resuming from a checkpoint written by ONE process. Every other run is in
this process. LoRA dropout is 0: with dropout each process draws its own masks, so curves would
agree in distribution only. Tolerance of every curve and probability comparison: rtol 1e-4,
atol 1e-5 (they agree to ~1e-7: only the order of float sums differs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from aiopt_lib.core.errors import ConfigError  # noqa: E402
from aiopt_lib.data.sources import load_sample  # noqa: E402
from aiopt_lib.features.dataset import DatasetConfig, build_dataset  # noqa: E402
from aiopt_lib.models import load_model  # noqa: E402
from aiopt_lib.models.distributed import (  # noqa: E402
    FinetuneConfig,
    launch_finetune,
    load_finetune_samples,
    read_finetune_config,
    read_finetune_result,
)
from aiopt_lib.models.vlm import VisionLanguageSignalModel, latest_checkpoint  # noqa: E402

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
STEPS = 4
# 7 training samples after the purged split: batches of 4 and 3, two steps an epoch
SETTINGS = {
    "render": {"width": 48, "height": 32},
    "split_fractions": [0.25, 0.25, 0.5],
    "batch_size": 2,  # inference: the 4 validation samples are 2 batches, one per process
    "device": "cpu",
    "progress": False,
}
TRAIN = {"batch_size": 4, "learning_rate": 2e-2, "lora_dropout": 0.0, "seed": 3}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base model and the dataset folder, side by side."""
    from test_vlm import build_tiny_llava  # skips without torch / transformers / peft

    folder = tmp_path_factory.mktemp("ddp")
    build_tiny_llava(folder / "base")
    build_dataset(load_sample().head(120), folder / "dataset", DatasetConfig(window=16))
    return folder


def _write_config(root: Path, name: str, **train: object) -> Path:
    values = {
        "model": "base",
        "dataset": "dataset",
        "out": name,
        **SETTINGS,
        "train": {**TRAIN, "max_steps": STEPS, **train},
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(values))
    return path


def _in_process(
    config: FinetuneConfig, **train: object
) -> tuple[VisionLanguageSignalModel, pl.DataFrame]:
    """The job's model with other training settings, fitted here, in ONE process."""
    model = config.model_instance()
    model.train_config = dataclasses.replace(config.train, **train)
    return model, model.fit(*load_finetune_samples(config)).history


def _losses(history: pl.DataFrame, split: str = "train") -> np.ndarray:
    return history.filter(pl.col("split") == split)["loss"].to_numpy()


def _lora(model: VisionLanguageSignalModel) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in model.model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def single(root: Path) -> tuple[FinetuneConfig, VisionLanguageSignalModel]:
    """The reference: one process, batch 4, no accumulation; checkpoints every 2 steps."""
    config = read_finetune_config(_write_config(root, "single"))
    model, _ = _in_process(config, checkpoint_every=2, checkpoint_dir=root / "single-ck")
    return config, model


@pytest.fixture(scope="module")
def two(root: Path):
    """(A) two processes from scratch, 2 accumulation steps, checkpoints every 2 steps."""
    path = _write_config(root, "two", gradient_accumulation_steps=2, checkpoint_every=2)
    return read_finetune_config(path), launch_finetune(path, nproc=2, timeout=300)


def _single_history(root: Path) -> pl.DataFrame:
    state = json.loads((root / "single-ck" / "step-00000004" / "state.json").read_text())
    return pl.DataFrame(state["history"])


def test_two_processes_follow_the_one_process_curve(root, single, two) -> None:
    _, result = two
    assert result.processes == 2
    reference = _single_history(root)
    assert result.history["step"].to_list() == reference["step"].to_list()
    assert result.history["split"].to_list() == ["train", "train", "valid"] * 2
    for split in ("train", "valid"):
        np.testing.assert_allclose(
            _losses(result.history, split), _losses(reference, split), **TOLERANCE
        )
    np.testing.assert_allclose(
        result.history["grad_norm"].drop_nulls().to_numpy(),
        reference["grad_norm"].drop_nulls().to_numpy(),
        **TOLERANCE,
    )
    valid = result.history.filter(pl.col("split") == "valid")["val_accuracy"].to_list()
    assert valid == reference.filter(pl.col("split") == "valid")["val_accuracy"].to_list()
    fit = json.loads((result.out / "fit.json").read_text())
    assert fit["micro_batch"] == 1 and fit["train_samples"] == 7 and fit["valid_samples"] == 4
    assert _losses(result.history)[-1] < _losses(result.history)[0]


def test_the_saved_adapter_predicts_as_the_one_process_model(single, two) -> None:
    config, model = single
    _, result = two
    loaded = load_model(result.model_dir)
    assert isinstance(loaded, VisionLanguageSignalModel) and loaded._model is None
    _, valid = load_finetune_samples(config)
    proba = loaded.predict_proba(valid)
    np.testing.assert_allclose(proba, model.predict_proba(valid), **TOLERANCE)
    assert loaded.has_adapter
    weights = _lora(loaded)
    reference = _lora(model)
    assert weights.keys() == reference.keys()
    for name in weights:
        np.testing.assert_allclose(weights[name], reference[name], **TOLERANCE)


def test_checkpoints_are_written_once_by_the_main_process(two) -> None:
    config, result = two
    folder = Path(config.train.checkpoint_dir)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002", "step-00000004"]
    for checkpoint in folder.iterdir():
        assert sorted(p.name for p in checkpoint.iterdir()) == [
            "adapter",
            "optimizer.pt",
            "state.json",
        ]
        state = json.loads((checkpoint / "state.json").read_text())
        assert state["processes"] == 2
        assert state["step"] == int(checkpoint.name.removeprefix("step-"))
    # the output folder holds each result once; the shared sample set is gone
    names = sorted(p.name for p in result.out.iterdir())
    assert names == ["checkpoints", "finetune.json", "fit.json", "history.parquet", "model"]


def test_a_two_process_checkpoint_resumes_in_one_process(root, two) -> None:
    config, result = two
    resumed_dir = root / "resume-in-one"
    shutil.copytree(
        Path(config.train.checkpoint_dir) / "step-00000002", resumed_dir / "step-00000002"
    )
    model = config.model_instance()
    model.train_config = dataclasses.replace(
        config.train, gradient_accumulation_steps=1, checkpoint_dir=resumed_dir, checkpoint_every=2
    )
    report = model.fit(*load_finetune_samples(config))
    assert report.history["step"].to_list() == result.history["step"].to_list()
    for split in ("train", "valid"):
        np.testing.assert_allclose(
            _losses(report.history, split), _losses(result.history, split), **TOLERANCE
        )
    assert json.loads((latest_checkpoint(resumed_dir) / "state.json").read_text())["processes"] == 1
    loaded = load_model(result.model_dir)
    weights = _lora(loaded)
    for name, value in _lora(model).items():
        np.testing.assert_allclose(value, weights[name], **TOLERANCE)


def test_a_one_process_checkpoint_resumes_in_two_processes_with_aiopt_finetune(
    root, single
) -> None:
    path = _write_config(root, "cli", checkpoint_every=2)
    config = read_finetune_config(path)
    shutil.copytree(
        root / "single-ck" / "step-00000002",
        Path(config.train.checkpoint_dir) / "step-00000002",
    )
    done = subprocess.run(
        [sys.executable, "-m", "aiopt_lib.runs.cli", "finetune", "--nproc", "2", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["steps"] == STEPS
    result = read_finetune_result(config.out)
    reference = _single_history(root)
    for split in ("train", "valid"):
        np.testing.assert_allclose(
            _losses(result.history, split), _losses(reference, split), **TOLERANCE
        )
    state = json.loads((latest_checkpoint(config.train.checkpoint_dir) / "state.json").read_text())
    assert state["step"] == STEPS and state["processes"] == 2


def test_accumulating_two_micro_batches_equals_one_batch_twice_as_large(root, single) -> None:
    config, _ = single
    _, history = _in_process(config, gradient_accumulation_steps=2)
    reference = _single_history(root)
    assert history["step"].to_list() == reference["step"].to_list()
    for split in ("train", "valid"):
        np.testing.assert_allclose(_losses(history, split), _losses(reference, split), **TOLERANCE)


def test_config_errors_are_one_line_and_paths_are_relative_to_the_file(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("model: base\ndataset: data\nout: out\ntrain: {checkpoint_every: 5}\n")
    config = read_finetune_config(path)
    assert config.dataset == tmp_path / "data" and config.model == "base"  # no folder: hub id
    assert Path(config.train.checkpoint_dir) == tmp_path / "out" / "checkpoints"
    again = FinetuneConfig.from_mapping(config.to_dict())
    assert again == config
    path.write_text("model: base\ndataset: data\nout: out\ntrain: {batch: 4}\n")
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['batch'\]"):
        read_finetune_config(path)
    path.write_text("model: base\nout: out\n")
    with pytest.raises(ConfigError, match="missing"):
        read_finetune_config(path)
    with pytest.raises(ConfigError, match="nproc"):
        launch_finetune(config, nproc=0)
