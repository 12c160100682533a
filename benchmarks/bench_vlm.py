"""Benchmark: MiniCPM-V 4.6 at real size: LoRA fine-tuning and label scoring, the public path.

    .venv/bin/python benchmarks/bench_vlm.py [--shape real|reduced] [--out DIR] [--notebook]
                                            [--gpus N] [--peak-tflops T]

One call, the GPU run of issue 19. ``--shape real`` (the default) is the released architecture
(``aiopt_lib/models/configs/minicpmv46/config.json``: SigLIP2-400M vision + Qwen3.5-0.8B,
1,300,428,016 parameters) with RANDOM weights (nothing can be downloaded), bf16 on CUDA;
``--shape reduced`` is the same architecture with 2 language layers and a 2-layer vision tower
(:data:`aiopt_lib.models.architectures.REDUCED_OVERRIDES`), which the test suite runs end to end on
the CPU so that the GPU run can fail on nothing but the GPU. In order:

0. the memory plan per training batch, from the architecture alone (parameter, LoRA, gradient,
   optimizer, activation and logits bytes, :func:`aiopt_lib.models.memory.memory_plan`);
   without CUDA at ``--shape real`` the script stops here with ``"value": null`` and the reason;
1. :func:`~aiopt_lib.models.architectures.build_random_model` saves the model, tokenizer and
   processor to ``OUT/model``, loaded from then on only as users load models,
   ``VisionLanguageSignalModel(folder)`` / ``load_model``;
2. charts of the embedded EUR/USD sample (``build_dataset``, ``load_sample_set``: 448x448 at
   real size, 112x112 reduced) with a learnable synthetic target: the colour of the chart's last
   candle (BUY when it closed above its open, else SELL; the prompt's ``ret_1`` agrees with it
   on most bars, reported as ``text_shortcut_agreement``);
3. LoRA (r=16) fine-tuning through ``VisionLanguageSignalModel.fit``: the learning run (does the
   loss fall? validation accuracy against the majority share), then the training throughput at
   each batch (8/16/32 real, 2/4 reduced) with gradient checkpointing off and on, from the per-step
   ``samples_per_s`` of ``fit``'s history after warm-up steps (each step includes the processor's
   encoding of its charts, as users get it; ``encode_seconds`` shows that part alone). Model FLOPs
   utilisation = 6 x (parameters a token passes through: all but the tied embedding matrix, whose
   output layer runs on the answer positions only) x language-model tokens per second / peak
   dense bf16 FLOP/s (H200/H100 SXM 989 TFLOP/s, A100 312, or ``--peak-tflops``); it ignores
   attention FLOPs and that each chart's 1,024 vision patches outnumber its 64 language tokens,
   and counts full backward work though frozen weights get no gradient: the conventional 6N
   estimate. Peak memory per configuration beside the plan's total;
4. saves the adapter, reloads it with ``load_model`` and compares the probabilities
   (``reload_identical``); resumes a fresh model from the learning run's mid-run checkpoint and
   compares the loss curve with the uninterrupted one (``resume_max_abs_diff``);
5. label scoring through ``predict_proba`` at batch 1-64 (1, 2 reduced): charts/s and p50
   latency per call (processor included);
6. ``--notebook``: notebook 03 with ``backend="vlm"`` on the saved random model at a reduced
   step count (papermill, ``OUT/notebook``): the comparison table must gain the VLM row, and the
   page says that with random weights it is near chance.

Goals on an H200: MFU >= 40 %, scoring >= 200 charts/s. ``value`` is the best MFU in percent
(null off CUDA or at the reduced shape, with the reason). The last line is one JSON object.

``--gpus N`` (N > 1, N CUDA devices): the training is measured again in N data-parallel
processes (``torch.distributed.run``, DDP over nccl through accelerate, as
:meth:`~aiopt_lib.models.vlm.VisionLanguageSignalModel.fit` trains under a launcher), each with
its own batch of ``--train-batch``, with a hand-written step on packed inputs (``_train``); the
JSON gains ``train_samples_per_s_by_gpus`` and ``scaling_efficiency`` = samples/s on N GPUs /
(N x samples/s on one). Fewer devices than N: the ``"value": null`` line with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"mfu_percent": 40.0, "charts_per_s": 200.0}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
RELEASED_PARAMETERS = 1_300_428_016  # the published checkpoint's safetensors (SOURCES.md)


@dataclasses.dataclass(frozen=True)
class Shape:
    """The sizes of one run: charts, batches, steps."""

    image_side: int
    image_resolution: int | None
    samples: int
    valid: int
    train_batches: tuple[int, ...]
    score_batches: tuple[int, ...]
    warmup_steps: int
    measured_steps: int
    learn_steps: int
    learn_batch: int
    learning_rate: float
    score_repeats: int
    notebook_steps: int
    notebook_batch: int


SHAPES = {
    "real": Shape(
        image_side=448,
        image_resolution=None,
        samples=1088,
        valid=128,
        train_batches=(8, 16, 32),
        score_batches=(1, 2, 4, 8, 16, 32, 64),
        warmup_steps=2,
        measured_steps=6,
        learn_steps=60,
        learn_batch=16,
        learning_rate=1e-3,
        score_repeats=5,
        notebook_steps=100,
        notebook_batch=8,
    ),
    "reduced": Shape(
        image_side=112,
        image_resolution=112,
        samples=48,
        valid=8,
        train_batches=(2, 4),
        score_batches=(1, 2),
        warmup_steps=1,
        measured_steps=2,
        learn_steps=6,
        learn_batch=4,
        learning_rate=2e-2,
        score_repeats=2,
        notebook_steps=2,
        notebook_batch=2,
    ),
}


def _result(**fields: object) -> dict[str, object]:
    return {"benchmark": "vlm_minicpmv46_lora", "goal": GOALS, **fields}


def _log(message: str) -> None:
    print(f"[bench_vlm] {message}", file=sys.stderr, flush=True)


# -- the hand-written step of --gpus (packed inputs built on the GPU, no processor) -------------


def _inputs(torch, config, batch: int, text_tokens: int, device) -> dict:
    """A batch as the MiniCPM-V processor lays it out: images NaViT-packed into one row."""
    patch = config.vision_config.patch_size
    side = 448
    grid = side // patch
    tokens_per_image = (grid // 4) * (grid // 4)  # ViT merger 2x2, then merger 2x2
    pixel = torch.randn(1, 3, patch, batch * grid * grid * patch, device=device)
    vocab = config.text_config.vocab_size
    image_token = config.image_token_id
    ids = torch.randint(1000, vocab - 1000, (batch, tokens_per_image + text_tokens), device=device)
    ids[:, 2 : 2 + tokens_per_image] = image_token
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": pixel.to(torch.bfloat16),
        "target_sizes": torch.tensor([[grid, grid]] * batch, device=device),
    }


def _config(args: argparse.Namespace, transformers):
    """The released config from the repo (or ``--config-json``)."""
    if args.config_json:
        with open(args.config_json, encoding="utf-8") as handle:
            return transformers.MiniCPMV4_6Config(**json.load(handle))
    from aiopt_lib.models.architectures import released_config

    return released_config(shape=args.shape)


def _train(args: argparse.Namespace, torch, config, device, accelerator=None) -> tuple:
    """Seconds per LoRA training step of ``--train-batch`` samples (under DDP when an
    ``accelerator`` of several processes is given), the model and its sizes."""
    import peft
    import transformers

    from aiopt_lib.models.vision_attention import use_batched_vision_attention
    from aiopt_lib.models.vlm import LANGUAGE_PROJECTION_PATTERN

    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.MiniCPMV4_6ForConditionalGeneration(config).to(torch.bfloat16)
    use_batched_vision_attention(model)
    frozen_params = sum(p.numel() for p in model.parameters())
    lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_PROJECTION_PATTERN)
    model = peft.get_peft_model(model, lora)
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    trained = model if accelerator is None else accelerator.prepare(model)

    batch = _inputs(torch, config, args.train_batch, args.text_tokens, device)
    labels = batch["input_ids"].clone()
    labels[:, :-4] = -100  # the answer tokens only
    model.train()

    def step() -> None:
        loss = trained(**batch, labels=labels, use_cache=False).loss
        loss.backward()  # DDP all-reduces the LoRA gradients here
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    return seconds, model, frozen_params, trainable_params, batch["input_ids"].numel()


WORKER = "AIOPT_BENCH_VLM_WORKER"


def _worker(args: argparse.Namespace, torch) -> None:
    """One of the ``--gpus`` processes: train on its own GPU; the first prints samples/s."""
    import transformers

    from aiopt_lib.models.vlm import launched_processes, make_accelerator

    device = torch.device("cuda", launched_processes()[1])
    torch.cuda.set_device(device)
    accelerator = make_accelerator(device)
    seconds, *_ = _train(args, torch, _config(args, transformers), device, accelerator)
    slowest = accelerator.reduce(torch.tensor([seconds], device=device), reduction="max")
    if accelerator.is_main_process:
        samples = args.train_batch * accelerator.num_processes / float(slowest[0])
        print(json.dumps({"train_samples_per_s": samples}))
    accelerator.end_training()


def _scaling(args: argparse.Namespace, one_gpu: float) -> dict[str, object]:
    """Train again in ``--gpus`` processes and compare with ``one_gpu`` samples/s."""
    from aiopt_lib.models.distributed import free_port

    command = [
        *(sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.gpus}"),
        *("--master-addr=127.0.0.1", f"--master-port={free_port()}", *sys.argv),
    ]
    done = subprocess.run(
        command, env={**os.environ, WORKER: "1"}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"scaling_error": done.stderr.strip().splitlines()[-1:]}
    many = json.loads(done.stdout.strip().splitlines()[-1])["train_samples_per_s"]
    return {
        "gpus": args.gpus,
        "train_samples_per_s_by_gpus": {"1": round(one_gpu, 2), str(args.gpus): round(many, 2)},
        "scaling_efficiency": round(many / (args.gpus * one_gpu), 3),
    }


# -- the public path ---------------------------------------------------------------------------


def _charts(out: Path, shape: Shape) -> tuple[Any, Any, dict[str, float]]:
    """Train and validation charts of the embedded sample, labelled with the colour of their last
    candle (BUY: closed above its open, else SELL); the later ``shape.valid`` are validation."""
    import numpy as np
    import polars as pl

    from aiopt_lib.data.sources import load_sample
    from aiopt_lib.features.dataset import (
        DatasetConfig,
        build_dataset,
        read_dataset_bars,
        read_samples,
    )
    from aiopt_lib.features.labels import LABEL_DTYPE
    from aiopt_lib.features.render import RenderSpec
    from aiopt_lib.models.base import load_sample_set

    dataset = out / "dataset"
    build_dataset(load_sample(), dataset, DatasetConfig(window=64))
    rows = read_samples(dataset).head(shape.samples)
    bars = read_dataset_bars(dataset, str(rows["symbol"][0])).select("ts", "open", "close")
    colour = rows.select("ts").join(bars, on="ts", how="left")
    label = np.where(colour["close"].to_numpy() > colour["open"].to_numpy(), "BUY", "SELL")
    rows = rows.with_columns(pl.Series("label", label).cast(LABEL_DTYPE))
    spec = RenderSpec(width=shape.image_side, height=shape.image_side)
    data = load_sample_set(dataset, samples=rows, spec=spec)
    cut = len(data) - shape.valid
    train, valid = data.take(np.arange(cut)), data.take(np.arange(cut, len(data)))
    up = (rows["ret_1"].to_numpy() > 0) == (label == "BUY")
    buy_share = float(np.mean(valid.labels == 0))
    facts = {
        "text_shortcut_agreement": round(float(np.mean(up)), 3),
        "valid_majority_share": round(max(buy_share, 1 - buy_share), 3),
    }
    return train, valid, facts


def _model(folder: Path, **train: Any) -> Any:
    from aiopt_lib.models.vlm import VisionLanguageSignalModel, VlmTrainConfig

    settings = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, **train}
    return VisionLanguageSignalModel(
        folder, progress=False, pattern_question=False, train=VlmTrainConfig(**settings)
    )


def _train_losses(history: Any) -> list[float]:
    import polars as pl

    return history.filter(pl.col("split") == "train")["loss"].to_list()


def _learning(folder: Path, out: Path, shape: Shape, train: Any, valid: Any) -> tuple[Any, dict]:
    """The learning run (checkpoint halfway), then a fresh model resumed from that checkpoint."""
    import polars as pl

    half = shape.learn_steps // 2
    settings = {
        "max_steps": shape.learn_steps,
        "batch_size": shape.learn_batch,
        "learning_rate": shape.learning_rate,
        "warmup_steps": min(5, half),
        "checkpoint_every": half,
        "keep_checkpoints": 2,
    }
    model = _model(folder, checkpoint_dir=out / "checkpoints", **settings)
    report = model.fit(train, valid)
    losses = _train_losses(report.history)
    k = max(1, min(3, len(losses) // 3))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    valid_rows = report.history.filter(pl.col("split") == "valid")
    mid = out / "checkpoints" / f"step-{half:08d}"
    shutil.copytree(mid, out / "resume" / mid.name)
    resumed = _model(folder, checkpoint_dir=out / "resume", **settings)
    again = _train_losses(resumed.fit(train, valid).history)
    diff = max(abs(a - b) for a, b in zip(losses, again, strict=True))
    learning = {
        "target": "last candle colour (BUY: close > open, else SELL)",
        "steps": shape.learn_steps,
        "batch_size": shape.learn_batch,
        "learning_rate": shape.learning_rate,
        "first_losses_mean": round(first, 4),
        "last_losses_mean": round(last, 4),
        "loss_fell": bool(last < first),
        "valid_loss": round(float(valid_rows["loss"][-1]), 4) if valid_rows.height else None,
        "valid_accuracy": round(float(valid_rows["val_accuracy"][-1]), 3)
        if valid_rows.height
        else None,
        "seconds": round(report.seconds, 1),
    }
    resume = {
        "resume_from_step": half,
        "resume_max_abs_diff": float(f"{diff:.3g}"),
        "resume_matches": bool(diff <= _resume_tolerance(model) * max(1.0, abs(last))),
    }
    del resumed
    return model, {"learning": learning, **resume}


def _resume_tolerance(model: Any) -> float:
    """Loss agreement expected of a resumed run: float32 on the CPU is exact up to summation
    order; bf16 CUDA kernels are not deterministic run to run."""
    return 1e-5 if model.device.type == "cpu" else 2e-2


def _reload(model: Any, out: Path, valid: Any) -> tuple[dict[str, Any], Any]:
    import numpy as np

    from aiopt_lib.models import load_model

    before = model.predict_proba(valid)
    model.save(out / "saved")
    loaded = load_model(out / "saved")
    after = loaded.predict_proba(valid)
    diff = float(np.max(np.abs(after - before)))
    return {
        "reload_identical": bool(np.array_equal(after, before)),
        "reload_max_abs_diff": diff,
    }, loaded


def _sync(torch: Any) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _throughput(model: Any, shape: Shape, train: Any, sizes: Any, plan: Any, peak: float | None):
    """Training samples/s, tokens/s, MFU and peak memory per (batch, checkpointing) via ``fit``."""
    import numpy as np
    import polars as pl
    import torch

    from aiopt_lib.models.base import SampleSet

    empty = train.take(np.arange(0))
    base = model.train_config
    forward_params = sizes.total - sizes.embedding + sizes.lora
    rows = []
    for batch in shape.train_batches:
        part: SampleSet = train.take(np.arange(batch))
        _sync(torch)
        tick = time.perf_counter()
        inputs = model._training_batch(part)  # the processor's encoding alone (and its size)
        encode = time.perf_counter() - tick
        tokens = int(inputs["input_ids"].numel())
        del inputs
        for checkpointing in (False, True):
            model.train_config = dataclasses.replace(
                base,
                batch_size=batch,
                max_steps=shape.warmup_steps + shape.measured_steps,
                warmup_steps=0,
                gradient_checkpointing=checkpointing,
                checkpoint_every=None,
                checkpoint_dir=None,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            history = model.fit(train, empty).history
            speeds = history.filter(pl.col("split") == "train")["samples_per_s"].to_list()
            step = statistics.fmean(batch / s for s in speeds[shape.warmup_steps :])
            planned = plan.filter(
                (pl.col("batch_size") == batch)
                & (pl.col("gradient_checkpointing") == checkpointing)
            )
            mfu = 6 * forward_params * tokens / step / (peak * 1e12) if peak else None
            rows.append(
                {
                    "batch_size": batch,
                    "gradient_checkpointing": checkpointing,
                    "step_seconds": round(step, 4),
                    "encode_seconds": round(encode, 4),
                    "samples_per_s": round(batch / step, 2),
                    "tokens_per_s": round(tokens / step, 1),
                    "mfu_percent": round(100 * mfu, 2) if mfu is not None else None,
                    "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    if torch.cuda.is_available()
                    else None,
                    "plan_total_gib": round(float(planned["total_gib"][0]), 2)
                    if planned.height
                    else None,
                }
            )
            _log(f"train {rows[-1]}")
    model.train_config = base
    return rows, tokens // shape.train_batches[-1]


def _scoring(model: Any, shape: Shape, valid: Any) -> dict[str, dict[str, float]]:
    """``predict_proba`` at each batch size: charts/s and the median latency of one call."""
    import numpy as np

    out = {}
    for batch in shape.score_batches:
        part = valid.take(np.arange(batch) % len(valid))
        model.batch_size = batch
        model.predict_proba(part)  # warm-up
        latencies = []
        for _ in range(shape.score_repeats):
            tick = time.perf_counter()
            model.predict_proba(part)
            latencies.append(time.perf_counter() - tick)
        p50 = statistics.median(latencies)
        out[str(batch)] = {"charts_per_s": round(batch / p50, 1), "p50_ms": round(1000 * p50, 2)}
        _log(f"score batch {batch}: {out[str(batch)]}")
    return out


def _notebook(folder: Path, out: Path, shape: Shape, on_cpu: bool) -> dict[str, Any]:
    """Notebook 03 with backend vlm on the saved random model; the VLM row of its table."""
    import papermill
    import polars as pl

    run_dir = out / "notebook-run"
    executed = out / "03_multimodal_finetune.ipynb"
    parameters = {
        "backend": "vlm",
        "model_id": str(folder),
        "vlm_max_steps": shape.notebook_steps,
        "vlm_batch_size": shape.notebook_batch,
        "vlm_pattern_samples": 4 if on_cpu else 200,
        "vlm_on_cpu": on_cpu,
        "epochs": 1 if on_cpu else 5,
        "ablations": False,
        "run_dir": str(run_dir),
        "source": "sample",
    }
    tick = time.perf_counter()
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03_multimodal_finetune.ipynb"),
        str(executed),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )
    table = pl.read_parquet(run_dir / "evaluation.parquet")
    text = executed.read_text(encoding="utf-8")
    vlm = table.filter(pl.col("model") == "vision-language (LoRA)")
    majority = table.filter(pl.col("model") == "majority")
    return {
        "notebook": str(executed),
        "vlm_row": vlm.height == 1,
        "models": table["model"].to_list(),
        "vlm_accuracy": round(float(vlm["accuracy"][0]), 4) if vlm.height else None,
        "vlm_log_loss": round(float(vlm["log_loss"][0]), 4) if vlm.height else None,
        "majority_log_loss": round(float(majority["log_loss"][0]), 4),
        "says_random_weights": "RANDOM weights" in text and "near chance" in text,
        "seconds": round(time.perf_counter() - tick, 1),
    }


def _kernels() -> dict[str, str]:
    """Which implementations the language model's linear attention will use (transformers
    falls back to slow PyTorch reference code without these packages)."""

    def found(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    return {
        "gated_delta_rule": "flash-linear-attention" if found("fla") else "torch reference",
        "causal_conv1d": "causal-conv1d" if found("causal_conv1d") else "torch reference",
        "vision_processor": "torchvision" if found("torchvision") else "PIL (image-only)",
    }


def main() -> None:
    """Run the measurement and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="real")
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--notebook", action="store_true", help="also run notebook 03 (vlm)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--gpus", type=int, default=1, help="also train on N GPUs (scaling)")
    parser.add_argument("--train-batch", type=int, default=16, help="batch of --gpus runs")
    parser.add_argument("--text-tokens", type=int, default=192, help="text tokens of --gpus runs")
    parser.add_argument("--steps", type=int, default=10, help="measured steps of --gpus runs")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in --gpus runs")
    parser.add_argument("--config-json", default=None, help="another config for --gpus runs")
    args = parser.parse_args()
    if args.shape == "reduced":  # tiny matrices: thread hand-offs cost more than the arithmetic
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # (the notebook's kernel inherits it)

    import torch

    if os.environ.get(WORKER):
        _worker(args, torch)
        return

    from aiopt_lib.models.architectures import build_random_model, released_config
    from aiopt_lib.models.memory import (
        architecture_sizes,
        format_memory_plan,
        image_tokens,
        memory_plan,
    )

    started = time.perf_counter()
    shape = SHAPES[args.shape]
    cuda = torch.cuda.is_available()
    config = released_config(shape=args.shape)
    sizes = architecture_sizes(config, lora_r=16)
    patches, chart_tokens = image_tokens(config, shape.image_resolution or 448)
    planned_tokens = chart_tokens + 215  # text, chat frame, answer: 214 at the reduced shape
    plan = memory_plan(
        config,
        shape.train_batches,
        seq_tokens=planned_tokens,
        image_patches=patches,
        dtype="bfloat16" if cuda or args.shape == "real" else "float32",  # as it will run
        sizes=sizes,
    )
    print(f"memory plan, {args.shape} MiniCPM-V 4.6, LoRA r=16 (GiB, from the architecture alone):")
    print(format_memory_plan(plan))
    figures: dict[str, Any] = {
        "shape": args.shape,
        "params_total": sizes.total,
        "params_language": sizes.language,
        "params_vision": sizes.vision,
        "params_trainable": sizes.lora,
        "released_params_match": sizes.total == RELEASED_PARAMETERS
        if args.shape == "real"
        else None,
        "vision_patches_per_chart": patches,
        "image_tokens_per_chart": chart_tokens,
        "memory_plan": plan.select(
            "batch_size", "gradient_checkpointing", "total_gib", "fits"
        ).to_dicts(),
        "kernels": _kernels(),
    }
    if args.shape == "real" and not cuda:
        reason = "no CUDA device: the real-size run needs a GPU (memory plan above)"
        print(json.dumps(_result(value=None, reason=reason, **figures)))
        return
    if args.gpus > 1 and args.gpus > torch.cuda.device_count():
        reason = (
            f"--gpus {args.gpus} needs {args.gpus} CUDA devices, {torch.cuda.device_count()} found"
        )
        print(json.dumps(_result(value=None, reason=reason, **figures)))
        return

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_vlm-"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = None
    if cuda:
        peak = args.peak_tflops or next(
            (v for k, v in PEAK_BF16_TFLOPS.items() if k in name), PEAK_BF16_TFLOPS["H200"]
        )
    _log(f"building the random {args.shape} model in {out / 'model'}")
    folder = build_random_model(
        out / "model",
        config,
        dtype="bfloat16" if cuda else "float32",
        device="cuda" if cuda else None,
        image_resolution=shape.image_resolution,
    )
    train, valid, facts = _charts(out, shape)
    _log(f"{len(train)} training and {len(valid)} validation charts")
    model, learned = _learning(folder, out, shape, train, valid)
    learned["learning"].update(facts)
    _log(f"learning {learned}")
    reload, loaded = _reload(model, out, valid)
    figures["processor"] = type(model.processor).__name__
    training, tokens_per_sample = _throughput(model, shape, train, sizes, plan, peak)
    del model
    scoring = _scoring(loaded, shape, valid)
    del loaded
    best_mfu = max((r["mfu_percent"] or 0.0) for r in training) if cuda else None
    best_charts = max(v["charts_per_s"] for v in scoring.values())
    scaling = {}
    if args.gpus > 1:
        import transformers

        torch.cuda.empty_cache()
        seconds, *_ = _train(args, torch, _config(args, transformers), torch.device("cuda"))
        torch.cuda.empty_cache()
        scaling = _scaling(args, args.train_batch / seconds)
    notebook = _notebook(folder, out, shape, on_cpu=not cuda) if args.notebook else None
    measured = args.shape == "real" and cuda
    reason = None if measured else "reduced shape on the CPU: a rehearsal of the GPU run, no MFU"
    print(
        json.dumps(
            _result(
                value=best_mfu if measured else None,
                unit="MFU percent",
                reason=reason,
                device=name,
                peak_bf16_tflops=peak,
                meets_goal=bool(
                    measured
                    and best_mfu is not None
                    and best_mfu >= GOALS["mfu_percent"]
                    and best_charts >= GOALS["charts_per_s"]
                ),
                **figures,
                tokens_per_sample=tokens_per_sample,
                train=training,
                best_mfu_percent=best_mfu,
                **learned,
                **reload,
                scoring=scoring,
                best_charts_per_s=best_charts,
                notebook=notebook,
                **scaling,
                out=str(out),
                seconds=round(time.perf_counter() - started, 1),
            )
        )
    )


if __name__ == "__main__":
    main()
