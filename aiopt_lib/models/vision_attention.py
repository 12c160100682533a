"""Vision attention over many short sequences in a few batched calls instead of one per sequence.

MiniCPM-V 4.6's vision tower packs all images of a batch into one row and attends within each
image (the encoder) and within each 2x2 window (the merger after ``insert_layer_id``), the
boundaries given by ``cu_seqlens``. With flash attention that is one variable-length kernel call;
with ``sdpa`` or ``eager`` (the default where flash-attn is not installed, as on our GPU machine)
transformers loops in Python over the sequences: one attention call per image per layer, and one
per 4-token WINDOW in the merger: 256 calls per 448x448 chart, 8,192 per forward pass at batch 32,
each a kernel launch with its Python overhead. At real size that loop, not the arithmetic, would
set the charts/s.

:func:`batched_varlen_attention` computes the same attention with one
``scaled_dot_product_attention`` call per distinct sequence length (charts of one size: one call per
layer). It is registered in transformers' ``AttentionInterface`` under :data:`BATCHED_VARLEN` — a
name containing "flash", which is what makes the vision modules hand over ``cu_seqlens`` (they test
the name for "flash"); no flash kernel is involved. :func:`use_batched_vision_attention` switches a
loaded model's VISION config to it (the language model keeps its own implementation), for the
architectures listed in :data:`BATCHED_VISION_MODEL_TYPES`. The outputs equal the per-sequence
loop's (tests: to the bit on the CPU).
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["BATCHED_VARLEN", "batched_varlen_attention", "use_batched_vision_attention"]

BATCHED_VARLEN = "aiopt_flashless_varlen_sdpa"
"""The registered name (it must contain "flash": see the module docstring)."""

BATCHED_VISION_MODEL_TYPES = frozenset({"minicpmv4_6"})
"""Architectures whose vision attention loops over ``cu_seqlens`` without flash attention."""

_REGISTERED = False


def batched_varlen_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: Any = None,
    is_causal: bool = False,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention within each packed sequence: ``query``/``key``/``value`` are ``(1, heads,
    total, dim)``, ``cu_seq_lens_q`` the ``(n + 1,)`` boundaries. Returns ``((1, total, heads,
    dim), None)`` as the flash interface does. Sequences of one length go through one SDPA call
    as a batch; several lengths, one call per length."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise ValueError("batched_varlen_attention needs packed inputs and cu_seq_lens_q")
    heads, dim = query.shape[1], query.shape[-1]
    bounds = cu_seq_lens_q.tolist()
    lengths = [b - a for a, b in itertools.pairwise(bounds)]
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(length, []).append(index)

    def attend(q: Any, k: Any, v: Any, rows: int, length: int) -> Any:
        q, k, v = (t.reshape(heads, rows, length, dim).transpose(0, 1) for t in (q, k, v))
        out = scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=is_causal
        )
        return out.transpose(0, 1).reshape(1, heads, rows * length, dim)

    if len(groups) == 1:
        (length,) = groups
        out = attend(query, key, value, len(lengths), length)
    else:
        out = torch.empty_like(query)
        for length, rows in groups.items():
            where = torch.cat([torch.arange(bounds[r], bounds[r] + length) for r in rows]).to(
                query.device
            )
            part = attend(
                query[:, :, where], key[:, :, where], value[:, :, where], len(rows), length
            )
            out[:, :, where] = part
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(BATCHED_VARLEN, batched_varlen_attention)
        _REGISTERED = True


def use_batched_vision_attention(model: Any) -> bool:
    """Switch the vision attention of a loaded ``model`` (possibly wrapped by peft) to
    :func:`batched_varlen_attention` when its architecture is in
    :data:`BATCHED_VISION_MODEL_TYPES` and it runs ``sdpa`` or ``eager`` there (flash attention,
    when installed and chosen, is left alone). Returns whether it switched."""
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    if getattr(config, "model_type", None) not in BATCHED_VISION_MODEL_TYPES or vision is None:
        return False
    if getattr(vision, "_attn_implementation", None) not in (None, "sdpa", "eager"):
        return False
    _register()
    vision._attn_implementation = BATCHED_VARLEN
    return True
