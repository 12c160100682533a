"""Benchmark: LoRA fine-tuning and label scoring of the MiniCPM-V 4.6 architecture on a GPU.

    .venv/bin/python benchmarks/bench_vlm.py [--train-batch 16] [--text-tokens 192] [--steps 10]
                                            [--config-json path/to/config.json] [--gpus N]

Without CUDA it prints one JSON line with ``"value": null``, the goals and the reason, and exits 0.

With CUDA it builds the MiniCPM-V 4.6 architecture at full size with RANDOM weights (nothing is
downloaded): ``MiniCPMV4_6Config()``, i.e. the transformers defaults for model type
``minicpmv4_6`` (its text config is the ``qwen3_5_text`` default — 4096 wide, 32 layers, a larger
language model than the released checkpoint's Qwen3.5-0.8B; pass the released ``config.json``
with ``--config-json`` to measure exactly that shape). Weights are bf16, LoRA (r=16) goes on the
language model's projections (:data:`aiopt_lib.models.vlm.LANGUAGE_PROJECTION_PATTERN`), each sample is
one 448x448 chart packed as the MiniCPM-V processor packs it plus ``--text-tokens`` text tokens.

Measured, one command: LoRA training samples/s and tokens/s (language-model sequence tokens),
model FLOPs utilisation = 6 x (trainable + frozen forward parameters) x tokens / seconds / peak
dense bf16 FLOP/s (the conventional 6N estimate; it ignores attention FLOPs and the vision
tower's own patch tokens, and counts full backward work though frozen weights get no gradient;
peak: H200/H100 SXM 989 TFLOP/s, else ``--peak-tflops``), peak GPU memory, and label-scoring
charts/s (one forward pass, logits at the last position only) at batch sizes 1 to 64. Image
preprocessing is not timed (the processor needs torchvision; inputs are built on the GPU).
Goals on an H200: MFU >= 40 %, scoring >= 200 charts/s. The last line is one JSON object.

``--gpus N`` (N > 1, N CUDA devices): the training is measured again in N data-parallel
processes (``torch.distributed.run``, DDP over nccl through accelerate, as
:meth:`~aiopt_lib.models.vlm.VisionLanguageSignalModel.fit` trains under a launcher), each with
its own batch of ``--train-batch``; the JSON gains ``train_samples_per_s_by_gpus`` and
``scaling_efficiency`` = samples/s on N GPUs / (N x samples/s on one). Fewer devices than N:
the ``"value": null`` line with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GOALS = {"mfu_percent": 40.0, "charts_per_s": 200.0}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def _result(**fields: object) -> dict[str, object]:
    return {"benchmark": "vlm_minicpmv46_lora", "goal": GOALS, **fields}


def _inputs(torch, config, batch: int, text_tokens: int, device) -> dict:
    """A batch as the MiniCPM-V processor lays it out: images NaViT-packed into one row."""
    patch = config.vision_config.patch_size
    side = config.image_size
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
    if args.config_json:
        with open(args.config_json, encoding="utf-8") as handle:
            config = transformers.MiniCPMV4_6Config(**json.load(handle))
    else:
        config = transformers.MiniCPMV4_6Config()
    if config.image_token_id is None:
        config.image_token_id = 151_655
    return config


def _train(args: argparse.Namespace, torch, config, device, accelerator=None) -> tuple:
    """Seconds per LoRA training step of ``--train-batch`` samples (under DDP when an
    ``accelerator`` of several processes is given), the model and its sizes."""
    import peft
    import transformers

    from aiopt_lib.models.vlm import LANGUAGE_PROJECTION_PATTERN

    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.MiniCPMV4_6ForConditionalGeneration(config).to(torch.bfloat16)
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


def main() -> None:
    """Run the measurement and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--text-tokens", type=int, default=192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--config-json", default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gpus", type=int, default=1, help="also train on N GPUs (scaling)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(json.dumps(_result(value=None, reason="no CUDA device; this benchmark needs a GPU")))
        return
    if args.gpus > torch.cuda.device_count():
        reason = (
            f"--gpus {args.gpus} needs {args.gpus} CUDA devices, {torch.cuda.device_count()} found"
        )
        print(json.dumps(_result(value=None, reason=reason)))
        return
    if os.environ.get(WORKER):
        _worker(args, torch)
        return

    import transformers

    from aiopt_lib.models.vlm import score_labels

    config = _config(args, transformers)
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = args.peak_tflops or next(
        (v for k, v in PEAK_BF16_TFLOPS.items() if k in name), PEAK_BF16_TFLOPS["H200"]
    )
    seconds, model, frozen_params, trainable_params, tokens = _train(args, torch, config, device)
    mfu = 6 * (frozen_params + trainable_params) * tokens / seconds / (peak * 1e12)
    peak_memory_gb = torch.cuda.max_memory_allocated() / 2**30

    model.eval()
    scoring = {}
    for size in (1, 2, 4, 8, 16, 32, 64):
        inputs = _inputs(torch, config, size, args.text_tokens, device)
        for _ in range(2):
            score_labels(model, inputs, [1001, 1002, 1003])
        torch.cuda.synchronize()
        start = time.perf_counter()
        repeats = 5
        for _ in range(repeats):
            score_labels(model, inputs, [1001, 1002, 1003])
        torch.cuda.synchronize()
        scoring[size] = size * repeats / (time.perf_counter() - start)
    best = max(scoring.values())
    scaling = {}
    if args.gpus > 1:
        del model
        torch.cuda.empty_cache()  # the N processes need GPU 0 too
        scaling = _scaling(args, args.train_batch / seconds)
    print(
        json.dumps(
            _result(
                device=name,
                value=round(100 * mfu, 2),
                unit="MFU percent",
                params_total=frozen_params,
                params_trainable=trainable_params,
                train_samples_per_s=round(args.train_batch / seconds, 2),
                train_tokens_per_s=round(tokens / seconds, 1),
                peak_memory_gb=round(peak_memory_gb, 2),
                peak_bf16_tflops=peak,
                scoring_charts_per_s={str(k): round(v, 1) for k, v in scoring.items()},
                best_charts_per_s=round(best, 1),
                meets_goal=bool(100 * mfu >= GOALS["mfu_percent"] and best >= 200),
                **scaling,
            )
        )
    )


if __name__ == "__main__":
    main()
