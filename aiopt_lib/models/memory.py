"""How much accelerator memory LoRA fine-tuning of a vision-language model needs, from its
architecture alone (nothing is allocated: parameters are counted on the meta device).

:func:`memory_plan` gives, per batch size and with gradient checkpointing off and on, the bytes of

- **parameters**: every weight in the training dtype (bf16 on a GPU), frozen;
- **LoRA**: the adapters (rank ``r`` on the language model's projections,
  :data:`~aiopt_lib.models.vlm.LANGUAGE_PROJECTION_PATTERN`), kept in float32 by peft, their
  float32 **gradients** and AdamW's two float32 moments (**optimizer**);
- **activations** kept for the backward pass of the language model. Per layer and token, with
  ``h`` the hidden and ``i`` the MLP width and ``e`` bytes per activation (2 in bf16):
  ``e * (12 h + 4 i) + 16 h`` without checkpointing — the inputs of the adapted projections and
  of the attention kernel, the attention output and its gate (``~12 h``), the SwiGLU MLP's gate,
  up and product (``4 i``), and the two RMSNorms' float32 copies of the hidden state (``16 h``
  bytes); ``e * h`` with checkpointing (each layer's input), plus one layer's full set while it is
  recomputed. The vision tower and the merger are frozen and nothing before them is trained, so
  they keep nothing for the backward pass: only one vision layer's working set while it runs,
  ``e * patches * (4 h_v + i_v)``;
- **logits**: the output layer runs on the answer positions only
  (:func:`~aiopt_lib.models.vlm.answer_forward`), ``batch * answer_positions * vocab`` values in
  the dtype plus two float32 copies for the loss and its gradient. The full logits would be
  ``batch * tokens * vocab`` of them: :func:`memory_plan` reports that figure as
  ``full_logits_gib`` for comparison.

``total`` is their sum; ``fits`` is ``total <= 0.9 * device`` (a tenth for the CUDA context, the
allocator's fragmentation and kernel workspaces). The activation formula is an estimate — exact
counts depend on kernels — and ``tests/test_vlm_bench.py`` compares it with the bytes autograd
really keeps on the reduced architecture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import polars as pl

__all__ = [
    "ArchitectureSizes",
    "architecture_sizes",
    "format_memory_plan",
    "image_tokens",
    "memory_plan",
]

GIB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclasses.dataclass(frozen=True)
class ArchitectureSizes:
    """Parameter counts and widths of a vision-language architecture (see
    :func:`architecture_sizes`)."""

    total: int
    language: int
    vision: int
    embedding: int
    lora: int
    lora_r: int
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    patch_size: int


def architecture_sizes(config: Any, lora_r: int = 16) -> ArchitectureSizes:
    """The sizes of a model of ``config``, built on the meta device: all parameters (tied ones
    once), the language model's and the vision side's (tower and merger), the token embedding
    (tied to the output layer), and the LoRA parameters of rank ``lora_r`` on the language
    projections (``r * (in + out)`` per adapted ``nn.Linear``, as peft makes them)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from aiopt_lib.models.vlm import language_lora_targets

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    language_model = model.get_decoder() if hasattr(model, "get_decoder") else None
    language = sum(p.numel() for p in language_model.parameters()) if language_model else 0
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        language += head.weight.numel()
    modules = dict(model.named_modules())
    lora = sum(
        lora_r * (modules[name].in_features + modules[name].out_features)
        for name in language_lora_targets(model)
    )
    text, vision = config.text_config, config.vision_config
    return ArchitectureSizes(
        total=total,
        language=language,
        vision=total - language,
        embedding=embedding,
        lora=lora,
        lora_r=lora_r,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        vision_hidden=vision.hidden_size,
        vision_intermediate=vision.intermediate_size,
        patch_size=vision.patch_size,
    )


def image_tokens(config: Any, side: int = 448, merge: int = 16) -> tuple[int, int]:
    """``(vision patches, language-model image tokens)`` of one ``side`` x ``side`` image as the
    MiniCPM-V 4.6 processor sends it (no slices up to its 448 scale resolution; smaller charts are
    scaled UP to it): ``(side / patch)^2`` patches, ``merge`` (16: two 2x2 merges) patches per
    token."""
    patch = config.vision_config.patch_size
    grid = max(1, round(side / (patch * 4))) * 4
    return grid * grid, grid * grid // merge


def memory_plan(
    config: Any,
    batch_sizes: Sequence[int] = (8, 16, 32),
    *,
    seq_tokens: int,
    image_patches: int = 1024,
    dtype: str = "bfloat16",
    lora_r: int = 16,
    gradient_checkpointing: Sequence[bool] = (False, True),
    answer_positions: int = 4,
    device_gib: float = 139.0,
    sizes: ArchitectureSizes | None = None,
) -> pl.DataFrame:
    """One row per ``(batch_size, gradient_checkpointing)``: the bytes of LoRA fine-tuning a
    model of ``config`` (GiB; formulas in the module docstring), for samples of ``seq_tokens``
    language-model tokens and ``image_patches`` vision patches (:func:`image_tokens`), weights
    and activations in ``dtype``. ``fits``: whether ``total`` stays within 90 % of
    ``device_gib``. ``sizes``: :func:`architecture_sizes` when already known."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    e = DTYPE_BYTES[dtype]
    s = sizes or architecture_sizes(config, lora_r)
    h, i = s.hidden, s.intermediate
    full_layer = e * (12 * h + 4 * i) + 16 * h  # bytes per token per layer, kept for backward
    rows = []
    for batch in batch_sizes:
        tokens = batch * seq_tokens
        vision = e * batch * image_patches * (4 * s.vision_hidden + s.vision_intermediate)
        logits = batch * answer_positions * s.vocab * (e + 8)
        for checkpointing in gradient_checkpointing:
            if checkpointing:
                activations = tokens * (s.layers * e * h + full_layer)
            else:
                activations = tokens * s.layers * full_layer
            parts = {
                "parameters_gib": s.total * e,
                "lora_gib": s.lora * 4,
                "gradients_gib": s.lora * 4,
                "optimizer_gib": s.lora * 8,
                "activations_gib": activations,
                "vision_working_set_gib": vision,
                "logits_gib": logits,
            }
            total = sum(parts.values())
            rows.append(
                {
                    "batch_size": batch,
                    "gradient_checkpointing": bool(checkpointing),
                    "seq_tokens": seq_tokens,
                    **{k: v / GIB for k, v in parts.items()},
                    "total_gib": total / GIB,
                    "full_logits_gib": tokens * s.vocab * (e + 8) / GIB,
                    "fits": bool(total <= 0.9 * device_gib * GIB),
                }
            )
    return pl.DataFrame(rows)


def format_memory_plan(plan: pl.DataFrame, device_gib: float = 139.0) -> str:
    """The plan as a few aligned lines for a terminal (GiB to two decimals)."""
    header = (
        f"{'batch':>5} {'ckpt':>5} {'tokens':>6} {'params':>7} {'lora+grad+adam':>14} "
        f"{'activ':>8} {'vision':>7} {'logits':>7} {'total':>8}  fits {device_gib:g} GiB "
        f"(full logits would be)"
    )
    lines = [header]
    for row in plan.iter_rows(named=True):
        adapters = row["lora_gib"] + row["gradients_gib"] + row["optimizer_gib"]
        lines.append(
            f"{row['batch_size']:>5} {'on' if row['gradient_checkpointing'] else 'off':>5} "
            f"{row['seq_tokens']:>6} {row['parameters_gib']:>7.2f} {adapters:>14.3f} "
            f"{row['activations_gib']:>8.2f} {row['vision_working_set_gib']:>7.2f} "
            f"{row['logits_gib']:>7.3f} {row['total_gib']:>8.2f}  "
            f"{'yes' if row['fits'] else 'NO':>4} ({row['full_logits_gib']:.1f})"
        )
    return "\n".join(lines)
