"""Data-parallel LoRA fine-tuning of the vision-language model: one process per GPU.

:meth:`~aiopt_lib.models.vlm.VisionLanguageSignalModel.fit` trains data-parallel whenever it
runs in processes started by ``torchrun`` or ``accelerate launch`` (module docstring of
:mod:`aiopt_lib.models.vlm`). This module is the ready-made job around it: a config file names
the base model, a dataset folder and an output folder; every process loads the same samples,
fits, and the main process writes the result once::

    python -m aiopt_lib.models.distributed --nproc 4 finetune.yaml

or, from Python, ``launch_finetune("finetune.yaml", nproc=4)``. With ``--nproc 1`` it runs in
the calling process; with more it starts ``python -m torch.distributed.run`` on a free
127.0.0.1 port (one node, nothing leaves the machine), each process on its own GPU with nccl,
or, on a machine without CUDA or with ``device: cpu``, that many CPU processes with gloo.
Any torchrun-based launcher works as well, since the job reads its rank from the environment::

    accelerate launch --multi_gpu --num_processes 4 -m aiopt_lib.models.distributed finetune.yaml
    torchrun --nproc_per_node 4 -m aiopt_lib.models.distributed finetune.yaml

The config file (YAML or JSON; relative paths are relative to the file's folder)::

    model: openbmb/MiniCPM-V-4.6   # hub id or local folder
    dataset: runs/dev/dataset      # a dataset folder (aiopt dataset / build_dataset)
    out: runs/dev/vlm-lora         # written: model/, history.parquet, fit.json, finetune.json
    render: {width: 224, height: 224}   # RenderSpec of the chart images
    split_fractions: [0.7, 0.15, 0.15]  # purged_split: fit on train, evaluate on validation
    embargo: 0
    train:                         # VlmTrainConfig; batch_size is the global batch
      batch_size: 16
      gradient_accumulation_steps: 2
      max_steps: 500
      checkpoint_every: 50         # checkpoint_dir defaults to <out>/checkpoints
    # optional: batch_size (inference), prompt_features, max_prompt_features,
    # pattern_question, device (cuda / cpu), dtype, run_dir (training_metrics stream), progress

The images are rendered once: the main process loads the sample set into ``<out>/.samples``
while the others wait, then they memory-map it (removed at the end). Remote model code is never
turned on by the file: pass ``trust_remote_code=True`` (``--trust-remote-code``) or set
``AIOPT_TRUST_REMOTE_CODE=1``. Resuming (``train.resume``, on by default) continues from the
latest checkpoint under any process count, as long as the global batch stays the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aiopt_lib.core.atomic import write_parquet_atomic, write_text_atomic
from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import AioptError, ConfigError
from aiopt_lib.core.net import free_port
from aiopt_lib.features.render import RenderSpec
from aiopt_lib.features.splits import purged_split
from aiopt_lib.models.base import (
    TRUST_REMOTE_CODE_ENV,
    FitReport,
    SampleSet,
    load_sample_set,
    remote_code_allowed,
)
from aiopt_lib.models.vlm import (
    VisionLanguageSignalModel,
    VlmTrainConfig,
    launched_processes,
    make_accelerator,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "launch_finetune",
    "load_finetune_samples",
    "read_finetune_config",
    "read_finetune_result",
]

CONFIG_FILE = "finetune.json"
"""The resolved config, written into the output folder (what the processes read)."""
_SHARED = ".samples"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning job (see the module docstring for the file format).

    ``model``: hub id or local folder of the base model. ``dataset``: a dataset folder.
    ``out``: the output folder. ``train``: :class:`~aiopt_lib.models.vlm.VlmTrainConfig` (its
    ``batch_size`` is the global batch, whatever the process count). ``render``: the chart
    images' :class:`~aiopt_lib.features.render.RenderSpec`. ``split_fractions`` / ``embargo``:
    :func:`~aiopt_lib.features.splits.purged_split` of the samples (fit on its train part,
    evaluate on its validation part). The rest are
    :class:`~aiopt_lib.models.vlm.VisionLanguageSignalModel` options; ``run_dir``: a run folder
    whose ``training_metrics`` stream receives the fit's rows.
    """

    model: str
    dataset: Path
    out: Path
    train: VlmTrainConfig = dataclasses.field(default_factory=VlmTrainConfig)
    render: RenderSpec = dataclasses.field(default_factory=RenderSpec)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    embargo: int | float = 0
    batch_size: int = 8
    prompt_features: tuple[str, ...] | None = None
    max_prompt_features: int = 8
    pattern_question: bool = True
    device: str | None = None
    dtype: str | None = None
    run_dir: Path | None = None
    progress: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: str | Path = ".") -> FinetuneConfig:
        """From a YAML/JSON mapping; relative paths are taken relative to ``base``, a model
        that names an existing folder there too; ``train.checkpoint_dir`` defaults to
        ``<out>/checkpoints`` when ``train.checkpoint_every`` is set. Unknown keys: ConfigError."""
        root = Path(base)
        values = dict(values)
        _check_keys(cls, values, "fine-tuning config", required=("model", "dataset", "out"))
        out = _path(values.pop("out"), root)
        train = dict(values.pop("train", None) or {})
        _check_keys(VlmTrainConfig, train, "fine-tuning config: train")
        if train.get("checkpoint_dir") is not None:
            train["checkpoint_dir"] = str(_path(train["checkpoint_dir"], root))
        elif train.get("checkpoint_every"):
            train["checkpoint_dir"] = str(out / "checkpoints")
        render = values.pop("render", None) or {}
        if not isinstance(render, Mapping):
            raise ConfigError("fine-tuning config: render must be a mapping of RenderSpec fields")
        _check_keys(RenderSpec, render, "fine-tuning config: render")
        model = str(values.pop("model"))
        if not Path(model).is_absolute() and (root / model).exists():
            model = str((root / model).resolve())
        options: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in values.items()
        }
        options["dataset"] = _path(options["dataset"], root)
        if options.get("run_dir") is not None:
            options["run_dir"] = _path(options["run_dir"], root)
        try:
            return cls(
                model=model,
                out=out,
                train=VlmTrainConfig(**train),
                render=RenderSpec(**render),
                **options,
            )
        except TypeError as exc:
            raise ConfigError(f"fine-tuning config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form that :meth:`from_mapping` reads back to an equal config."""
        plain = dataclasses.asdict(self)
        for key in ("dataset", "out", "run_dir"):
            plain[key] = None if plain[key] is None else str(plain[key])
        train = plain["train"]
        if train["checkpoint_dir"] is not None:
            train["checkpoint_dir"] = str(train["checkpoint_dir"])
        return json.loads(json.dumps(plain))

    def model_instance(self, *, trust_remote_code: bool | None = None) -> VisionLanguageSignalModel:
        """The (not yet loaded) model this job fine-tunes. Remote code only on the caller's
        opt-in (``trust_remote_code`` or ``AIOPT_TRUST_REMOTE_CODE=1``), never the file's."""
        return VisionLanguageSignalModel(
            self.model,
            trust_remote_code=remote_code_allowed(trust_remote_code),
            prompt_features=self.prompt_features,
            max_prompt_features=self.max_prompt_features,
            batch_size=self.batch_size,
            train=self.train,
            progress=self.progress,
            device=self.device,
            dtype=self.dtype,
            pattern_question=self.pattern_question,
        )


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """What a launched job wrote: the output folder, the saved model's folder (load it with
    :func:`aiopt_lib.models.load_model`), the per-step history (the rows of
    :attr:`FitReport.history <aiopt_lib.models.base.FitReport>`), the best validation loss and
    its epoch, the seconds of the fit and the number of processes."""

    out: Path
    model_dir: Path
    history: pl.DataFrame
    best_epoch: int | None
    best_valid_loss: float | None
    seconds: float
    processes: int


def _check_keys(
    cls: type, values: Mapping[str, Any], where: str, required: Sequence[str] = ()
) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [key for key in required if values.get(key) in (None, "")]
    if missing:
        raise ConfigError(f"{where}: missing {missing}")


def _path(value: Any, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def read_finetune_config(path: str | Path) -> FinetuneConfig:
    """The :class:`FinetuneConfig` in the YAML or JSON file ``path`` (paths relative to it)."""
    file = Path(path)
    return FinetuneConfig.from_mapping(
        read_yaml_mapping(file, "fine-tuning config"), base=file.resolve().parent
    )


def load_finetune_samples(config: FinetuneConfig) -> tuple[SampleSet, SampleSet]:
    """The ``(train, validation)`` sample sets of the job: the dataset's samples with chart
    images rendered with ``config.render``, split by :func:`purged_split`."""
    data = load_sample_set(config.dataset, spec=config.render)
    split = purged_split(data.samples, fractions=config.split_fractions, embargo=config.embargo)
    return data.take(split.train), data.take(split.validation)


def _write_samples(folder: Path, name: str, samples: SampleSet) -> None:
    samples.samples.write_ipc(folder / f"{name}.arrow")
    np.save(folder / f"{name}.npy", samples.images if samples.images is not None else np.zeros(0))
    names = {"features": samples.feature_names, "patterns": samples.pattern_names}
    (folder / f"{name}.json").write_text(json.dumps(names))


def _read_samples(folder: Path, name: str) -> SampleSet:
    names = json.loads((folder / f"{name}.json").read_text())
    frame = pl.read_ipc(folder / f"{name}.arrow")
    images = np.load(folder / f"{name}.npy", mmap_mode="r")
    return SampleSet(
        samples=frame,
        feature_names=tuple(names["features"]),
        images=images if images.ndim == 4 else None,
        pattern_names=tuple(names["patterns"]),
    )


def _shared_samples(config: FinetuneConfig, accelerator: Any) -> tuple[SampleSet, SampleSet]:
    """:func:`load_finetune_samples` done once, by the main process, into ``<out>/.samples``;
    the other processes wait for it and memory-map the result (no image rendered twice)."""
    folder = config.out / _SHARED
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for name, samples in zip(
                ("train", "valid"), load_finetune_samples(config), strict=True
            ):
                _write_samples(folder, name, samples)
        parts = _read_samples(folder, "train"), _read_samples(folder, "valid")
    return parts


def finetune(config: FinetuneConfig, *, trust_remote_code: bool | None = None) -> FitReport:
    """Run the job in THIS process: alone, or as one of the processes a launcher started
    (``torchrun`` / ``accelerate launch`` / :func:`launch_finetune`), which then train
    data-parallel. Writes, once, ``<out>/model`` (the adapter; :func:`aiopt_lib.models.load_model`
    loads it), ``<out>/history.parquet`` and ``<out>/fit.json``. Every process returns the
    same report."""
    processes, _ = launched_processes()
    model = config.model_instance(trust_remote_code=trust_remote_code)
    accelerator = make_accelerator(model.device) if processes > 1 else None
    if accelerator is not None and accelerator.num_processes > 1:
        train, valid = _shared_samples(config, accelerator)
    else:
        train, valid = load_finetune_samples(config)
    main = accelerator is None or accelerator.is_main_process
    streams = None
    if main and config.run_dir is not None:
        from aiopt_lib.core.streams import Streams

        streams = Streams(config.run_dir)
        model.metrics = streams.training_metrics
    try:
        report = model.fit(train, valid)
    finally:
        if streams is not None:
            streams.close()
    model.save(config.out / "model")
    if main:
        _write_report(config, report, train, valid, processes)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(config.out / _SHARED, ignore_errors=True)
    return report


def _write_report(
    config: FinetuneConfig, report: FitReport, train: SampleSet, valid: SampleSet, processes: int
) -> None:
    write_parquet_atomic(report.history, config.out / "history.parquet")
    accumulation = config.train.gradient_accumulation_steps
    summary = {
        "processes": processes,
        "global_batch": config.train.batch_size,
        "gradient_accumulation_steps": accumulation,
        "micro_batch": config.train.batch_size / (processes * accumulation),
        "train_samples": len(train),
        "valid_samples": len(valid),
        "steps": int(report.history["step"].max() or 0) if report.history.height else 0,
        "best_epoch": report.best_epoch,
        "best_valid_loss": report.best_valid_loss,
        "seconds": report.seconds,
        "model": "model",
    }
    write_text_atomic(config.out / "fit.json", json.dumps(summary, indent=2))


def _child_environment(nproc: int, trust_remote_code: bool | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    loopback = {name for _, name in socket.if_nameindex()} & {"lo", "lo0"}
    for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if loopback:  # one machine: the processes talk over the loopback interface only
            env.setdefault(variable, sorted(loopback)[0])
    if trust_remote_code is not None:
        env[TRUST_REMOTE_CODE_ENV] = "1" if trust_remote_code else "0"
    return env


def _uses_cuda(config: FinetuneConfig) -> bool:
    import torch

    return (config.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the launcher and the processes it started (their own session): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def launch_finetune(
    config: str | Path | FinetuneConfig,
    *,
    nproc: int = 1,
    trust_remote_code: bool | None = None,
    timeout: float | None = None,
) -> FinetuneResult:
    """Fine-tune as configured (a :class:`FinetuneConfig` or its YAML/JSON file) in ``nproc``
    data-parallel processes and return what was written.

    ``nproc=1`` runs in this process. More start ``python -m torch.distributed.run`` (one node,
    rendezvous on a free 127.0.0.1 port), which runs this module in each process: on CUDA one
    GPU per process (``nproc`` at most the GPU count) with nccl, else CPU processes with gloo
    (``OMP_NUM_THREADS`` cores each unless set). The processes' output goes to this process's
    stdout/stderr. ``trust_remote_code``: the opt-in for a model that ships its own code
    (``None``: ``AIOPT_TRUST_REMOTE_CODE`` decides). ``timeout`` (``nproc > 1``): seconds
    before the processes are stopped (TimeoutError). A failed process group raises RuntimeError
    with its exit status. The output folder's ``fit.json`` is written last: a folder with one
    holds a finished job (:func:`read_finetune_result`).
    """
    if not isinstance(config, FinetuneConfig):
        config = read_finetune_config(config)
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc must be an int >= 1, got {nproc!r}")
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "fit.json").unlink(missing_ok=True)  # from an earlier job: not this one's
    config_file = config.out / CONFIG_FILE
    write_text_atomic(config_file, json.dumps(config.to_dict(), indent=2))
    if nproc == 1:
        finetune(config, trust_remote_code=trust_remote_code)
    else:
        if _uses_cuda(config):
            import torch

            if torch.cuda.device_count() < nproc:
                raise ConfigError(
                    f"{nproc} processes need {nproc} CUDA devices, {torch.cuda.device_count()} "
                    "found (device: cpu trains in CPU processes)"
                )
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            f"--nproc-per-node={nproc}",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
            "-m",
            "aiopt_lib.models.distributed",
            str(config_file),
        ]
        env = _child_environment(nproc, trust_remote_code)
        process = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            raise TimeoutError(f"fine-tuning in {nproc} processes ran over {timeout} s") from None
        except BaseException:  # Ctrl-C: the processes are in their own session
            _stop(process)
            raise
        if code != 0:
            raise RuntimeError(
                f"fine-tuning in {nproc} processes failed (exit status {code}); "
                "their output is above"
            )
    return read_finetune_result(config.out)


def read_finetune_result(out: str | Path) -> FinetuneResult:
    """The :class:`FinetuneResult` of a finished job's output folder."""
    folder = Path(out)
    if not (folder / "fit.json").is_file():
        raise AioptError(f"{folder}: no finished fine-tuning here (no fit.json)")
    summary = json.loads((folder / "fit.json").read_text())
    return FinetuneResult(
        out=folder,
        model_dir=folder / summary["model"],
        history=pl.read_parquet(folder / "history.parquet"),
        best_epoch=summary["best_epoch"],
        best_valid_loss=summary["best_valid_loss"],
        seconds=float(summary["seconds"]),
        processes=int(summary["processes"]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aiopt_lib.models.distributed [--nproc N] [--trust-remote-code] CONFIG``:
    launches the job in N processes; started by a launcher itself (``WORLD_SIZE`` set), it is
    one of those processes and runs :func:`finetune`."""
    parser = argparse.ArgumentParser(
        prog="python -m aiopt_lib.models.distributed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", help="fine-tuning config file (YAML or JSON)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (one per GPU)")
    parser.add_argument("--trust-remote-code", action="store_true", default=None)
    parser.add_argument("--timeout", type=float, default=None, help="seconds")
    args = parser.parse_args(argv)
    if "WORLD_SIZE" in os.environ:  # one of the launched processes: errors keep their traceback
        finetune(read_finetune_config(args.config), trust_remote_code=args.trust_remote_code)
        if launched_processes()[0] > 1:
            _leave_process_group()
        return 0
    try:
        result = launch_finetune(
            args.config,
            nproc=args.nproc,
            trust_remote_code=args.trust_remote_code,
            timeout=args.timeout,
        )
    except (AioptError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(finetune_summary(result)))
    return 0


def _leave_process_group() -> None:
    """Leave the process group cleanly (torch warns when a process exits inside one)."""
    from accelerate import PartialState

    PartialState().destroy_process_group()


def finetune_summary(result: FinetuneResult) -> dict[str, Any]:
    """The figures of a finished fine-tuning job, as one JSON-ready mapping."""
    train = result.history.filter(pl.col("split") == "train")
    return {
        "out": str(result.out),
        "model": str(result.model_dir),
        "processes": result.processes,
        "steps": train.height,
        "last_train_loss": train["loss"][-1] if train.height else None,
        "best_valid_loss": result.best_valid_loss,
        "seconds": round(result.seconds, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
