"""Nothing from a foreign folder runs code unless the caller says so.

Each hole is attacked with a payload that WOULD write a sentinel file if it ran (a pickle whose
``__reduce__`` calls ``open(sentinel, "w")``, a skops file naming a class whose ``__setstate__``
writes it, a model folder shipping its own Python that writes it on import, run ids that walk
out of the runs folder onto a planted temporary file), and each test first proves its payload
live on a second sentinel where that can be done without loosening aiopt. Then: the sentinel does
not exist, the error is one clear line, and the legitimate path still works. Real objects only.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from notebook_helpers import write_config, write_notebook

from aiopt_lib.core.errors import ConfigError, DataError, plain_name
from aiopt_lib.features.labels import CLASSES, LABEL_DTYPE
from aiopt_lib.models import load_model
from aiopt_lib.models.base import MODEL_FILE, SampleSet, write_model_file
from aiopt_lib.models.networks import (
    ESTIMATOR_FILE,
    CompactConfig,
    GradientBoostingBaseline,
    GradientBoostingConfig,
    LogisticBaseline,
)
from aiopt_lib.runs.batch import batch_run_id, load_batch
from aiopt_lib.runs.runner import (
    NotebookStep,
    RunConfig,
    load_run_config,
    read_stage_record,
    run_pipeline,
)

REPO = Path(__file__).resolve().parents[1]
BAD_NAMES = ("../../victim", "a/b", "..", ".", "", ".hidden", "a\\b", "x/../..", "ok\n")


class OpensSentinel:
    """Pickled as a call to ``open(path, "w")``: unpickling it creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


class WritesOnSetstate:
    """skops rebuilds an object with ``__new__`` + ``__setstate__``: loading one writes the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __setstate__(self, state: dict[str, str]) -> None:
        Path(state["path"]).write_text("ran")


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert text and "\n" not in text, text
    return text


def samples(n: int = 300, seed: int = 0) -> SampleSet:
    rng = np.random.default_rng(seed)
    features = {f"f{i}": rng.normal(size=n) for i in range(4)}
    features["f1"][::9] = np.nan
    labels = [CLASSES[i] for i in rng.integers(0, 3, n)]
    frame = pl.DataFrame({**features, "label": pl.Series(labels, dtype=LABEL_DTYPE)})
    return SampleSet(frame, tuple(features))


# -- plain names -------------------------------------------------------------------------------


def test_plain_name_accepts_ordinary_names_and_refuses_paths() -> None:
    for good in ("r1", "20261124T103000Z-1a2b3c4d", "grid-03-1a2b3c4d", "01_data.v2", "-x"):
        assert plain_name(good, "run id") == good
    for bad in (*BAD_NAMES, "/abs", "é", None, 3):
        with pytest.raises(ConfigError) as error:
            plain_name(bad, "--run-id")
        text = one_line(error)
        assert text.startswith(f"--run-id {bad!r} is not a plain name")


# -- run ids and names that become paths -------------------------------------------------------


@pytest.fixture
def notebook_config(tmp_path: Path) -> RunConfig:
    (tmp_path / "nbs").mkdir()
    notebook = write_notebook(tmp_path / "nbs" / "a.ipynb", ["x = 1"], "run_dir = '.'")
    return RunConfig(name="t", steps=(NotebookStep("a", notebook, {}),))


def test_run_ids_cannot_leave_the_runs_folder(tmp_path: Path, notebook_config: RunConfig) -> None:
    # a stale-temporary look-alike where ../../victim leads: the run's clean-up would delete it
    victim = tmp_path / "victim"
    victim.mkdir()
    decoy = victim / ".data.abc123.tmp.parquet"
    decoy.write_text("not yours")
    runs, reports = tmp_path / "work" / "runs", tmp_path / "work" / "reports"
    for run_id in (*BAD_NAMES, str(victim)):
        with pytest.raises(ConfigError) as error:
            run_pipeline(notebook_config, runs_dir=runs, reports_dir=reports, run_id=run_id)
        assert "--run-id" in one_line(error) and repr(run_id) in one_line(error)
    assert decoy.read_text() == "not yours"
    assert sorted(p.name for p in victim.iterdir()) == [decoy.name]
    assert not (tmp_path / "work").exists()  # refused before any folder was made


def test_the_cli_refuses_a_traversing_run_id_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "nbs").mkdir()
    write_notebook(tmp_path / "nbs" / "a.ipynb", ["x = 1"], "run_dir = '.'")
    config = write_config(tmp_path / "run.yaml", "notebooks_dir: nbs\nnotebooks: [a]\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    decoy = victim / ".x.abc.tmp"
    decoy.write_text("keep")
    command = [
        sys.executable, "-m", "aiopt_lib.runs.cli", "run", "--config", str(config),
        "--run-id", "../../victim", "--runs-dir", str(tmp_path / "a" / "runs"),
        "--reports-dir", str(tmp_path / "a" / "reports"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'../../victim' is not a plain name" in lines[0], done.stderr
    assert decoy.read_text() == "keep" and not (tmp_path / "a").exists()


def test_notebook_names_from_a_run_configuration_are_plain(
    tmp_path: Path, notebook_config: RunConfig
) -> None:
    # the notebook exists where the name points: only the name check stops it
    write_notebook(tmp_path / "evil.ipynb", ["x = 1"], "run_dir = '.'")
    (tmp_path / "nbs").mkdir(exist_ok=True)
    config = write_config(tmp_path / "nbs" / "run.yaml", "notebooks_dir: .\nnotebooks: [../evil]\n")
    with pytest.raises(ConfigError) as error:
        load_run_config(config)
    assert "notebooks[0] '../evil' is not a plain name" in one_line(error)

    step = notebook_config.steps[0]
    crafted = RunConfig(name="t", steps=(NotebookStep("../../victim/x", step.path, {}),))
    with pytest.raises(ConfigError, match="notebook name"):
        run_pipeline(crafted, runs_dir=tmp_path / "r", reports_dir=tmp_path / "h", run_id="ok")
    assert not (tmp_path / "r").exists() and not (tmp_path / "victim").exists()
    with pytest.raises(ConfigError, match="stage name"):
        read_stage_record(tmp_path / "r", "../../etc/passwd")


def test_batch_names_and_run_ids_are_plain(tmp_path: Path) -> None:
    (tmp_path / "nbs").mkdir()
    write_notebook(tmp_path / "nbs" / "a.ipynb", ["x = 1"], "n = 1\nrun_dir = '.'")
    write_config(tmp_path / "base.yaml", "notebooks_dir: nbs\nnotebooks: [a]\n")
    for name in ("../evil", "a/b", ".."):
        batch = tmp_path / "batch.yaml"
        batch.write_text(f"name: {json.dumps(name)}\nbase: base.yaml\nruns: [{{n: 2}}]\n")
        with pytest.raises(ConfigError) as error:
            load_batch(batch)
        assert f"name {name!r} is not a plain name" in one_line(error)
    with pytest.raises(ConfigError, match="batch name"):
        batch_run_id("../x", 1, {})
    batch.write_text("name: grid\nbase: base.yaml\nruns: [{n: 2}, {n: 3}]\n")
    ids = [run.run_id for run in load_batch(batch).runs]
    assert all(plain_name(i, "id") == i and i.startswith("grid-0") for i in ids)


# -- scikit-learn baselines: skops with a fixed allow-list, never pickle -----------------------


@pytest.mark.parametrize("model_class", [LogisticBaseline, GradientBoostingBaseline])
def test_baselines_round_trip_bit_identically_without_pickle(model_class, tmp_path: Path) -> None:
    data = samples()
    config = (
        GradientBoostingConfig(max_iter=30) if model_class is GradientBoostingBaseline else None
    )
    model = model_class(config) if config else model_class()
    model.fit(data.take(np.arange(100, 300)), data.take(np.arange(100)))
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [ESTIMATOR_FILE, MODEL_FILE]
    assert (tmp_path / "m" / ESTIMATOR_FILE).read_bytes()[:2] == b"PK"  # a zip, not a pickle
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is model_class
    assert loaded.predict_proba(data).tobytes() == model.predict_proba(data).tobytes()
    if model_class is LogisticBaseline:
        assert loaded.explain(data) == model.explain(data)


def _old_pickle_folder(tmp_path: Path, sentinel: Path) -> Path:
    """A baseline folder as older aiopt wrote it, its estimator.pkl swapped for a payload."""
    model = LogisticBaseline()
    model.fit(samples(120))
    folder = tmp_path / "old"
    model.save(folder)
    (folder / ESTIMATOR_FILE).unlink()
    (folder / "estimator.pkl").write_bytes(pickle.dumps(OpensSentinel(sentinel)))
    info = json.loads((folder / MODEL_FILE).read_text())
    (folder / MODEL_FILE).write_text(json.dumps({**info, "estimator_file": "estimator.pkl"}))
    return folder


def test_an_old_pickled_baseline_is_refused_without_unpickling(tmp_path: Path) -> None:
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(OpensSentinel(live))).close()  # the payload is real
    assert live.exists()

    sentinel = tmp_path / "sentinel"
    folder = _old_pickle_folder(tmp_path, sentinel)
    for load in (load_model, LogisticBaseline.load):
        with pytest.raises(ConfigError) as error:
            load(folder)
        text = one_line(error)
        assert "old pickle format" in text and "re-train" in text
    # the same pickle renamed to what model.json expects now
    info = json.loads((folder / MODEL_FILE).read_text())
    (folder / MODEL_FILE).write_text(json.dumps({**info, "estimator_file": ESTIMATOR_FILE}))
    shutil.copy(folder / "estimator.pkl", folder / ESTIMATOR_FILE)
    with pytest.raises(DataError) as error:
        load_model(folder)
    assert "not a skops file" in one_line(error)
    assert not sentinel.exists()


def test_a_crafted_skops_file_is_refused_by_the_allow_list(tmp_path: Path) -> None:
    import skops.io
    from sklearn.tree import DecisionTreeClassifier

    gadget = f"{WritesOnSetstate.__module__}.{WritesOnSetstate.__qualname__}"
    live = tmp_path / "live.skops"
    skops.io.dump({"estimator": WritesOnSetstate(tmp_path / "live")}, live)
    skops.io.load(live, trusted=[gadget])  # the payload is real when its type is trusted
    assert (tmp_path / "live").exists()

    sentinel = tmp_path / "sentinel"
    model = LogisticBaseline()
    model.fit(samples(120))
    folder = tmp_path / "crafted"
    model.save(folder)
    estimator = model.estimator
    assert model.standardiser is not None
    payloads = {
        # the gadget beside a genuine estimator
        gadget: {"estimator": estimator, "x": WritesOnSetstate(sentinel)},
        # a scikit-learn type that skops trusts by default but no logistic model contains
        "DecisionTreeClassifier": {"estimator": DecisionTreeClassifier()},
        # a function, which skops would import by name
        "system": {"estimator": estimator, "f": os.system},
    }
    for named, payload in payloads.items():
        skops.io.dump(
            {**payload, "mean": model.standardiser.mean, "std": model.standardiser.std},
            folder / ESTIMATOR_FILE,
        )
        with pytest.raises(ConfigError) as error:
            load_model(folder)
        text = one_line(error)
        assert "not loaded: it names" in text and named in text, text
    assert not sentinel.exists()


def test_model_file_names_cannot_leave_the_model_folder(tmp_path: Path) -> None:
    import torch

    sentinel = tmp_path / "sentinel"
    torch.save({"w": OpensSentinel(sentinel)}, tmp_path / "w.pt")
    folder = tmp_path / "m"
    common = {"config": CompactConfig().to_dict(), "feature_names": [], "pattern_names": []}
    write_model_file(folder, "compact", **common, weights_file="../w.pt", weights_format="torch")
    with pytest.raises(ConfigError) as error:
        load_model(folder)
    assert "weights_file '../w.pt' is not a plain name" in one_line(error)
    # inside the folder, a torch file holding more than tensors is refused (weights_only=True)
    shutil.copy(tmp_path / "w.pt", folder / "weights.pt")
    write_model_file(folder, "compact", **common, weights_file="weights.pt", weights_format="torch")
    with pytest.raises(DataError) as error:
        load_model(folder)
    assert "objects other than tensors" in one_line(error)

    write_model_file(folder, "gbm", config={}, feature_names=[], estimator_file="../x.skops")
    with pytest.raises(ConfigError) as error:
        load_model(folder)
    assert "estimator_file '../x.skops' is not a plain name" in one_line(error)
    assert not sentinel.exists()


# -- the vision-language model: remote code and checkpoints -----------------------------------


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved vlm folder around a tiny random LLaVA, self-contained (``model_id: model``)."""
    from test_vlm import build_tiny_llava  # skips without torch / transformers / peft

    from aiopt_lib.models.vlm import VisionLanguageSignalModel

    root = tmp_path_factory.mktemp("vlm")
    base = build_tiny_llava(root / "base")
    VisionLanguageSignalModel(base, progress=False).save(root / "saved")
    shutil.copytree(root / "base", root / "saved" / "model")
    info = json.loads((root / "saved" / MODEL_FILE).read_text())
    (root / "saved" / MODEL_FILE).write_text(json.dumps({**info, "model_id": "model"}))
    return root / "saved"


def _with_remote_code(saved: Path, target: Path, sentinel: Path, *, asks: bool = True) -> Path:
    """A copy of ``saved`` whose processor is custom code that writes ``sentinel`` on import, and
    whose model.json asks for remote code (``asks``)."""
    shutil.copytree(saved, target)
    processor = target / "processor"
    (processor / "processing_evil.py").write_text(
        f"from pathlib import Path\n\nPath({str(sentinel)!r}).write_text('ran')\n\n"
        "from transformers import LlavaProcessor\n\n\n"
        "class EvilProcessor(LlavaProcessor):\n    pass\n"
    )
    config = json.loads((processor / "processor_config.json").read_text())
    config["auto_map"] = {"AutoProcessor": "processing_evil.EvilProcessor"}
    (processor / "processor_config.json").write_text(json.dumps(config))
    info = json.loads((target / MODEL_FILE).read_text())
    (target / MODEL_FILE).write_text(json.dumps({**info, "trust_remote_code": asks}))
    return target


def test_a_folder_asking_for_remote_code_needs_the_callers_opt_in(
    tiny_vlm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiopt_lib.models.vlm import VisionLanguageSignalModel

    sentinel = tmp_path / "sentinel"
    evil = _with_remote_code(tiny_vlm, tmp_path / "evil", sentinel)
    # (environment value or None to unset it, explicit argument)
    attempts = [(None, None), ("0", None), ("no", None), ("", None), ("1", False)]
    for env, explicit in attempts:
        if env is None:
            monkeypatch.delenv("AIOPT_TRUST_REMOTE_CODE", raising=False)
        else:
            monkeypatch.setenv("AIOPT_TRUST_REMOTE_CODE", env)
        for load in (load_model, VisionLanguageSignalModel.load):
            with pytest.raises(ConfigError) as error:
                load(evil, trust_remote_code=explicit)
            text = one_line(error)
            assert "needs remote code" in text
            assert "trust_remote_code=True" in text and "AIOPT_TRUST_REMOTE_CODE=1" in text
    assert not sentinel.exists()

    # a folder that does not ask gets no remote code even from a caller who allows it
    quiet = _with_remote_code(tiny_vlm, tmp_path / "quiet", sentinel, asks=False)
    model = load_model(quiet, trust_remote_code=True)
    assert not model.trust_remote_code
    assert type(model.processor).__name__ == "LlavaProcessor"
    assert not sentinel.exists()


def test_the_callers_opt_in_is_honoured(tiny_vlm: Path, tmp_path: Path) -> None:
    from test_vlm import _samples

    from aiopt_lib.models.vlm import VisionLanguageSignalModel

    # in process: a folder that asks, with no custom code to run, loads and predicts
    folder = shutil.copytree(tiny_vlm, tmp_path / "asks")
    info = json.loads((folder / MODEL_FILE).read_text())
    (folder / MODEL_FILE).write_text(json.dumps({**info, "trust_remote_code": True}))
    for model in (
        load_model(folder, trust_remote_code=True),
        VisionLanguageSignalModel.load(folder, trust_remote_code=True),
    ):
        assert model.trust_remote_code
        proba = model.predict_proba(_samples(3))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)

    # the real thing, in a child process (transformers copies custom code to HF_MODULES_CACHE):
    # with AIOPT_TRUST_REMOTE_CODE=1 the folder's own Python runs, which proves the payload live
    sentinel = tmp_path / "sentinel"
    evil = _with_remote_code(tiny_vlm, tmp_path / "evil", sentinel)
    script = (
        "import sys\nfrom aiopt_lib.models import load_model\n"
        "print(type(load_model(sys.argv[1]).processor).__name__)\n"
    )
    env = {
        **os.environ,
        "AIOPT_TRUST_REMOTE_CODE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(evil)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["EvilProcessor"] and sentinel.read_text() == "ran"


def test_a_crafted_checkpoint_is_not_unpickled(tmp_path: Path) -> None:
    import torch
    from test_vlm import _model, _samples, build_tiny_llava

    live = tmp_path / "live"
    torch.save({"optimizer": OpensSentinel(live)}, tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)["optimizer"].close()  # the payload is real
    assert live.exists()

    base = build_tiny_llava(tmp_path / "base")
    data = _samples(3)
    checkpoints = tmp_path / "ck"
    _model(base, max_steps=1, checkpoint_every=1, checkpoint_dir=checkpoints).fit(
        data, data.take([])
    )
    optimizer_file = checkpoints / "step-00000001" / "optimizer.pt"
    genuine = torch.load(optimizer_file, weights_only=True)  # what aiopt writes loads safely
    assert set(genuine) == {"optimizer", "scheduler", "torch_rng", "cuda_rng"}
    assert isinstance(genuine["torch_rng"], torch.Tensor) and genuine["optimizer"]["state"]

    sentinel = tmp_path / "sentinel"
    torch.save({**genuine, "optimizer": OpensSentinel(sentinel)}, optimizer_file)
    resumed = _model(base, max_steps=2, checkpoint_every=1, checkpoint_dir=checkpoints)
    with pytest.raises(ConfigError) as error:
        resumed.fit(data, data.take([]))
    assert "refusing to resume from this checkpoint" in one_line(error)
    assert not sentinel.exists()
