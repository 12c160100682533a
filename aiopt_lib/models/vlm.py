"""A vision-language model as a signal model: chart + indicator table in, P(BUY, SELL, HOLD) out.

:class:`VisionLanguageSignalModel` (kind ``"vlm"``) wraps any transformers image-text-to-text model,
loaded from a hub id or a local folder with ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained``. The default is MiniCPM-V 4.6
(``openbmb/MiniCPM-V-4.6``, ~1.3B: SigLIP2 vision tower + Qwen3.5-0.8B, native in transformers; its
processor's video half needs torchvision: without torchvision a local MiniCPM-V 4.6 folder gets the
image-only processor of ``aiopt_lib.models.processors``, the released class's own image and text
code). Its vision attention runs as one call per sequence length instead of one per image and per
2x2 window (``aiopt_lib.models.vision_attention``). MiniCPM-V 4.5 (8B) ships remote code only: pass
``trust_remote_code=True`` for it — an explicit opt-in, off by default, because it runs code
downloaded with the weights. A saved folder whose ``model.json`` records ``trust_remote_code`` loads
only when the caller opts in again (``load_model(folder, trust_remote_code=True)`` or
``AIOPT_TRUST_REMOTE_CODE=1``): the folder's own word is never enough. Nothing is loaded until the
model is first used.

Prompt
------
Each sample becomes one user turn: the chart image, a compact table of a handful of indicator
values at the sample's bar (rounded), the task and the answer format
``{"signal": "BUY|SELL|HOLD", "confidence": 0..1, "reasoning": "..."}``. It goes through the
processor's chat template when it has one; otherwise the fallback is
``"<image token>\\n<prompt>\\nAnswer: "`` (the processor's own image token).

Scoring
-------
The assistant's answer is prefilled with ``{"signal": "`` and the probabilities are the softmax over
the three label tokens' logits at the next position: ONE forward pass per batch, left padded, no
generation; the output layer runs on that last position only (:func:`last_positions_logits`: a
vocabulary of 248k tokens makes full logits the largest tensor of a batch, and not every
architecture honours ``logits_to_keep``). At load time each label must be exactly one token after
the prefill in the model's tokenizer (:func:`find_label_tokens` tries ``BUY``, `` BUY``, ``Buy``,
``buy`` and a prefill without the space); otherwise loading fails with a clear error.
:meth:`explain` generates a short reasoning greedily, constrained by prefilling the scored signal
and confidence, and cut at the closing quote.

Fine-tuning
-----------
:meth:`VisionLanguageSignalModel.fit` trains LoRA adapters (peft) on the LANGUAGE model's attention
and MLP projections only, chosen by :data:`LANGUAGE_PROJECTION_PATTERN`, a regex over module names
that excludes every vision-tower/projector path, so it works across architectures. The loss is on
the answer tokens only (labels ``-100`` on the prompt), and so are the logits:
:func:`answer_forward` runs the output layer on the last few positions, from the one before the
first answer token (the same loss as the model's own, without the ``batch x length x vocab``
logits). AdamW, gradient clipping, linear warm-up. With CUDA: bf16 weights, gradient checkpointing
and, on request, QLoRA (4-bit NF4 through bitsandbytes; GPU only). Checkpoints (adapter as
safetensors + optimizer and RNG state + step) every ``checkpoint_every`` steps, and resume from the
latest one (tensors and plain data only: ``torch.load(weights_only=True)``, so a crafted checkpoint
cannot run code). Metrics go to a tqdm bar and, optionally, to a ``training_metrics`` stream
(:mod:`aiopt_lib.core.streams`). ``merge=True`` folds the adapters into the weights
(``merge_and_unload``) after training.

Pattern questions
-----------------
The model also learns to see the candlestick patterns that the rule-based detectors flag (the
``pat_*`` columns of the sample set). Each question is its own short single-turn prompt, not an
extension of the signal answer, so the signal prompt and its scoring stay exactly as above:
the chart image, the sentence introducing it and ``Is there a {name} pattern at the last candle?
Answer yes or no.`` (:func:`build_pattern_prompt`, no indicator table: the patterns are visual,
and the prompt stays short), with the assistant's answer prefilled with ``Answer: ``.
:meth:`VisionLanguageSignalModel.predict_pattern_proba` scores ``P(yes)`` as the softmax over the
``yes``/``no`` tokens' logits at the next position, for all ``n x k`` (sample, pattern) questions
in left-padded batches of ``batch_size``, one forward pass each. The answer tokens are checked
at load time as for the labels (:func:`find_answer_tokens`: ``yes``/``no``, `` yes``/`` no``,
``Yes``/``No``...). With ``pattern_question=True`` (the default, saved in ``model.json``),
:meth:`~VisionLanguageSignalModel.fit` appends to each training batch
``VlmTrainConfig.pattern_questions_per_sample`` pattern questions per sample with the detectors'
answers (loss on the answer token only), chosen by :func:`choose_pattern_questions` from a
generator seeded by ``(seed, step)``: each pick is a present pattern or an absent one with equal
chance (when the sample has both), so that rare patterns are not drowned by "no", and the cost
of a step grows by at most that many short prompts per sample. The training loss is the mean
over all answer tokens of the batch; the validation loss and accuracy stay those of the signal.

Data-parallel fine-tuning
-------------------------
``fit`` runs unchanged in a plain process. In processes started by ``torchrun`` or ``accelerate
launch``, each calling ``fit`` with the same samples and settings
(:mod:`aiopt_lib.models.distributed` is that job, ready-made: ``python -m
aiopt_lib.models.distributed --nproc 4 finetune.yaml``), it trains data-parallel through an
:class:`accelerate.Accelerator` (:func:`make_accelerator`): DDP over nccl with one GPU per process
(``cuda:LOCAL_RANK``), or over gloo between CPU processes. ``VlmTrainConfig.batch_size`` stays the
GLOBAL batch: every process draws the same permutation, cuts each global batch into ``P x
gradient_accumulation_steps`` contiguous micro-batches (:func:`shard_rows`) and runs its own
``gradient_accumulation_steps`` of them (``accelerator.accumulate``: gradients are all-reduced once
per step); the pattern questions are drawn for the whole global batch and follow their sample. The
step follows the mean over ALL the global batch's answer tokens: each micro-batch's loss is
weighted by its share of the tokens (one all-reduce of the counts), so DDP's average and the
accumulation give the gradient that one process computes on the whole batch, however uneven the
shards (an empty micro-batch, in a short last batch, runs at weight 0 to keep DDP in step). The
logged loss is that global mean; validation is sharded by batch and summed across processes. So a
P-process curve equals the one-process curve to float rounding (about 1e-7 relative on the tiny
test model), and so does accumulation in one process. Only the main process shows progress, writes
metrics and checkpoints (between barriers) and, in :meth:`~VisionLanguageSignalModel.save`, the
model. A checkpoint holds nothing of one process (the unwrapped adapter, optimizer and scheduler
state, step, history): it resumes under another process count with the same global batch and
continues the same curve. LoRA dropout draws its masks from each process's own generator (processes
other than the first are seeded from ``(seed, rank, step)``), so with dropout a P-process run
matches one process in distribution, not bit for bit; ``lora_dropout=0`` makes them equal. In one
process without accumulation every weight is 1 and nothing is reduced: the numbers are exactly
those of the plain loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aiopt_lib.core.atomic import atomic_directory
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.features.labels import CLASSES
from aiopt_lib.models.base import (
    MODEL_FILE,
    FitReport,
    SampleSet,
    check_probabilities,
    register_model,
    require_remote_code_opt_in,
    write_model_file,
)

__all__ = ["VisionLanguageSignalModel", "VlmTrainConfig"]

KIND = "vlm"
DEFAULT_MODEL_ID = "openbmb/MiniCPM-V-4.6"
ANSWER_FORMAT = '{"signal": "BUY|SELL|HOLD", "confidence": 0..1, "reasoning": "..."}'

# Leaf names of the language model's attention and MLP projections across architectures (Llama,
# Qwen2/3, Qwen3.5 incl. its linear-attention layers, Gemma, Mistral, Phi, GPT-NeoX, Falcon...).
_PROJECTIONS = (
    "q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj"
    "|in_proj_qkv|in_proj_z|out_proj|query_key_value|dense|dense_h_to_4h|dense_4h_to_h"
    "|c_attn|c_proj|c_fc|fc1|fc2|w1|w2|w3|wqkv|wo"
)
# Any path through an image encoder, resampler or vision-to-text projector.
_VISION_PATHS = (
    "vision|visual|image|siglip|patch|mm_projector|multi_modal_projector|merger|resampler"
    "|vpm|vit|img|clip"
)
LANGUAGE_PROJECTION_PATTERN = rf"^(?!.*(?:{_VISION_PATHS})).*\.(?:{_PROJECTIONS})$"
"""Module-name regex (``re.fullmatch``, as peft applies it) for the LoRA targets."""

# (prefill, label strings in CLASSES order), tried in order by find_label_tokens.
LABEL_CANDIDATES: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ('{"signal": "', ("BUY", "SELL", "HOLD")),
    ('{"signal": "', (" BUY", " SELL", " HOLD")),
    ('{"signal": "', ("Buy", "Sell", "Hold")),
    ('{"signal": "', ("buy", "sell", "hold")),
    ('{"signal":"', ("BUY", "SELL", "HOLD")),
    ('{"signal": ', ('"BUY', '"SELL', '"HOLD')),
)

# (prefill, (yes, no)), tried in order by find_answer_tokens.
ANSWER_CANDIDATES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("Answer: ", ("yes", "no")),
    ("Answer:", (" yes", " no")),
    ("Answer: ", ("Yes", "No")),
    ("Answer:", (" Yes", " No")),
    ("Answer: ", ("YES", "NO")),
)


@dataclasses.dataclass(frozen=True)
class LabelTokens:
    """How the answer is scored: the prefilled text, the label strings and their token ids."""

    prefill: str
    labels: tuple[str, str, str]
    token_ids: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class AnswerTokens:
    """How a pattern question is scored: the prefilled text, ``(yes, no)`` and their token ids."""

    prefill: str
    answers: tuple[str, str]
    token_ids: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class VlmTrainConfig:
    """Fine-tuning settings of :meth:`VisionLanguageSignalModel.fit`.

    ``max_steps`` (if set) overrides ``epochs``. ``gradient_checkpointing=None`` means on with
    CUDA, off on the CPU. ``quantize_4bit`` (QLoRA) needs CUDA and bitsandbytes.
    ``checkpoint_every`` steps a checkpoint goes to ``checkpoint_dir/step-XXXXXXXX`` (the last
    ``keep_checkpoints`` are kept); ``resume`` continues from the latest one there.
    ``pattern_questions_per_sample``: pattern questions added per sample and step when the model's
    ``pattern_question`` is on and the sample set has ``pat_*`` columns (see the module docstring).
    ``batch_size`` is the GLOBAL batch of one optimizer step: under ``torchrun`` /
    ``accelerate launch`` with ``P`` processes each process takes its share of it, in
    ``gradient_accumulation_steps`` micro-batches (micro-batch = batch / (P x accumulation)), so
    the same settings give the same steps on 1 or 8 GPUs (see "Data-parallel fine-tuning").
    """

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    gradient_checkpointing: bool | None = None
    quantize_4bit: bool = False
    checkpoint_every: int | None = None
    checkpoint_dir: str | Path | None = None
    keep_checkpoints: int = 2
    resume: bool = True
    merge: bool = False
    seed: int = 0
    run_id: str = "vlm"
    pattern_questions_per_sample: int = 1
    gradient_accumulation_steps: int = 1


def language_lora_targets(model: Any, pattern: str = LANGUAGE_PROJECTION_PATTERN) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that LoRA adapts (``pattern`` fullmatch)."""
    import torch

    regex = re.compile(pattern)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and regex.fullmatch(name)
    ]


def _single_token_ids(tokenizer: Any, prefill: str, words: Sequence[str]) -> list[int] | None:
    """The token id of each word when it is exactly ONE token after ``prefill`` (tokenizing
    prefill + word gives the prefill's tokens plus one) and all are distinct; else None."""
    base = tokenizer.encode(prefill, add_special_tokens=False)
    ids = []
    for word in words:
        full = tokenizer.encode(prefill + word, add_special_tokens=False)
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            return None
        ids.append(int(full[-1]))
    return ids if len(set(ids)) == len(ids) else None


def find_label_tokens(
    tokenizer: Any, candidates: Sequence[tuple[str, Sequence[str]]] = LABEL_CANDIDATES
) -> LabelTokens:
    """The first candidate (prefill, labels) whose three labels are each exactly ONE token after
    the prefill in ``tokenizer`` (tokenizing prefill + label gives the prefill's tokens plus one
    token, three distinct ones). Raises ConfigError naming what was tried otherwise."""
    tried = []
    for prefill, labels in candidates:
        ids = _single_token_ids(tokenizer, prefill, labels)
        if ids is not None and len(ids) == 3:
            return LabelTokens(prefill, tuple(labels), tuple(ids))  # type: ignore[arg-type]
        tried.append(f"{prefill!r}+{list(labels)}")
    raise ConfigError(
        "no way to score the labels with one token each in this tokenizer; tried "
        + "; ".join(tried)
    )


def find_answer_tokens(
    tokenizer: Any, candidates: Sequence[tuple[str, Sequence[str]]] = ANSWER_CANDIDATES
) -> AnswerTokens:
    """The first candidate (prefill, (yes, no)) whose two answers are each exactly ONE distinct
    token after the prefill in ``tokenizer``. Raises ConfigError naming what was tried otherwise."""
    tried = []
    for prefill, answers in candidates:
        ids = _single_token_ids(tokenizer, prefill, answers)
        if ids is not None and len(ids) == 2:
            return AnswerTokens(prefill, tuple(answers), tuple(ids))  # type: ignore[arg-type]
        tried.append(f"{prefill!r}+{list(answers)}")
    raise ConfigError(
        "no way to score yes/no pattern answers with one token each in this tokenizer; tried "
        + "; ".join(tried)
    )


def pattern_display_name(column: str) -> str:
    """The words for a pattern column in a question: ``pat_bullish_engulfing`` ->
    ``bullish engulfing``."""
    return column.removeprefix("pat_").replace("_", " ")


def build_pattern_prompt(pattern: str) -> str:
    """The user text of a pattern question about ``pattern`` (a ``pat_*`` column or its words);
    the chart image goes before it in the turn."""
    return (
        "The image is a EUR/USD candlestick chart ending at the current bar.\n"
        f"Is there a {pattern_display_name(pattern)} pattern at the last candle? "
        "Answer yes or no."
    )


def choose_pattern_questions(
    flags: np.ndarray, per_sample: int, rng: np.random.Generator
) -> list[tuple[int, int, bool]]:
    """Pattern questions to train on: ``(sample row, pattern column, present)`` triples,
    ``per_sample`` per row of the ``(n, k)`` 0/1 ``flags`` (NaN = the detector has no value there,
    never asked). Each pick is a present pattern with probability 1/2 when the row has both
    present and absent ones (else whichever it has), then uniform among those: balanced answers
    whatever the patterns' base rates. Rows without any known flag get no question."""
    flags = np.asarray(flags, dtype=np.float64)
    chosen = []
    for row in range(flags.shape[0]):
        present = np.flatnonzero(flags[row] == 1.0)
        absent = np.flatnonzero(flags[row] == 0.0)
        if len(present) + len(absent) == 0:
            continue
        for _ in range(per_sample):
            want_present = bool(rng.random() < 0.5)
            pool = present if (want_present and len(present)) or not len(absent) else absent
            chosen.append((row, int(rng.choice(pool)), bool(pool is present)))
    return chosen


def _format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.5g}"


def build_prompt(features: dict[str, Any]) -> str:
    """The user text for one sample: the indicator table (``name: value`` per line, 5 significant
    digits), the task and the answer format. The chart image goes before it in the turn."""
    table = "\n".join(f"{name}: {_format_value(value)}" for name, value in features.items())
    return (
        "The image is a EUR/USD candlestick chart ending at the current bar.\n"
        f"Indicator values at the current bar:\n{table}\n"
        "Task: decide whether to BUY, SELL or HOLD over the coming bars.\n"
        f"Answer with JSON only: {ANSWER_FORMAT}"
    )


def chat_text(processor: Any, prompt: str) -> str:
    """``prompt`` with one image as a user turn, through the processor's chat template (with the
    assistant's generation prompt); fallback without one: ``<image>\\n<prompt>\\nAnswer: ``."""
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", None) or "<image>"
    return f"{image_token}\n{prompt}\nAnswer: "


def score_labels(model: Any, inputs: dict[str, Any], label_token_ids: Sequence[int]) -> Any:
    """P(label) per row, ``(n, 3)`` float32 tensor: softmax over the label tokens' logits at the
    last position of a LEFT-padded batch, in one forward pass (``inputs`` as the processor gives
    them, or built by hand for models whose processor is unavailable)."""
    import torch

    mask = inputs.get("attention_mask")
    if mask is not None and not bool(mask[:, -1].all()):
        raise ValueError("score_labels needs left padding: the last position is padding")
    with torch.no_grad(), last_positions_logits(model, 1):
        out = model(**inputs, use_cache=False)
    logits = out.logits[:, -1, :].float()
    return torch.softmax(logits[:, list(label_token_ids)], dim=-1)


def _output_layer(model: Any) -> Any:
    """The module that maps hidden states to vocabulary logits (the LM head), or None."""
    inner = getattr(model, "module", model)  # DDP
    getter = getattr(inner, "get_output_embeddings", None)
    try:
        return getter() if getter is not None else None
    except (AttributeError, NotImplementedError):
        return None


@contextlib.contextmanager
def last_positions_logits(model: Any, positions: int) -> Iterator[bool]:
    """Within the block the model's output layer runs on the LAST ``positions`` positions only:
    ``out.logits`` is ``(batch, positions, vocab)``. Yields whether it could (False: the model
    has no output layer to find, and logits stay full).

    Scoring needs the logits of the last position and training those of the answer tokens, a
    handful at the end of each left-padded row; the full ``(batch, length, vocab)`` logits of a
    248k-token vocabulary are most of the memory of a step at real size (and the head a quarter of
    the language model's multiply-adds). ``logits_to_keep`` would say the same but not every
    architecture accepts it (MiniCPM-V 4.6 silently ignores it): a forward pre-hook on the output
    layer works for all."""
    head = _output_layer(model)
    if head is None or positions < 1:
        yield False
        return

    def keep(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][:, -positions:, :], *args[1:])

    handle = head.register_forward_pre_hook(keep)
    try:
        yield True
    finally:
        handle.remove()


def answer_window(labels: Any) -> int:
    """How many last positions of a left-padded batch the answer loss needs: from the position
    before the first labelled column (it predicts that token) to the end."""
    import torch

    labelled = torch.nonzero((labels != -100).any(dim=0))
    if len(labelled) == 0:
        return 1
    return int(labels.shape[1] - int(labelled[0, 0]) + 1)


def answer_forward(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any, int]:
    """One forward pass with answer-only logits: ``(loss, logits, offset)``. ``inputs`` hold
    ``labels`` (-100 off the answer; removed before the call). The output layer runs on the last
    :func:`answer_window` positions only; ``logits[:, j]`` is position ``offset + j``. The loss is
    the causal-LM loss the model itself computes (logits in float32, mean cross-entropy of each
    position's prediction of the next token over the labelled ones), without the full logits."""
    import torch

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    window = answer_window(labels)
    with last_positions_logits(model, window) as kept:
        logits = model(**inputs, use_cache=False).logits
    if not kept:
        window = labels.shape[1]
    offset = labels.shape[1] - window
    targets = labels[:, offset + 1 :]
    predicted = logits[:, -window:-1, :].float() if window > 1 else logits[:, :0, :].float()
    count = int((targets != -100).sum())
    loss = torch.nn.functional.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]),
        targets.reshape(-1).to(predicted.device),
        ignore_index=-100,
        reduction="sum",
    ) / max(count, 1)
    return loss, logits, offset


def answer_labels(input_ids: Any, attention_mask: Any, answer_lengths: Sequence[int]) -> Any:
    """Training labels for a left-padded batch: the input ids on each row's last
    ``answer_lengths[i]`` tokens (the answer), -100 elsewhere (prompt and padding)."""
    import torch

    labels = torch.full_like(input_ids, -100)
    width = input_ids.shape[1]
    for row, length in enumerate(answer_lengths):
        labels[row, width - length :] = input_ids[row, width - length :]
    return labels.masked_fill(attention_mask == 0, -100)


def _images(samples: SampleSet) -> list[Any]:
    from PIL import Image

    if samples.images is None:
        raise DataError("the vlm model needs chart images; load the sample set with images=True")
    return [Image.fromarray(np.ascontiguousarray(image)) for image in samples.images]


def _device_memory_mb() -> float | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def launched_processes() -> tuple[int, int]:
    """``(processes, local rank)`` as the launcher set them: ``torchrun`` and ``accelerate
    launch`` export ``WORLD_SIZE`` and ``LOCAL_RANK`` to each process they start; a plain
    process is ``(1, 0)``. Read before anything is loaded, to put a process on its own GPU."""
    import os

    return int(os.environ.get("WORLD_SIZE") or 1), int(os.environ.get("LOCAL_RANK") or 0)


def make_accelerator(device: Any, gradient_accumulation_steps: int = 1) -> Any:
    """The :class:`accelerate.Accelerator` of a fit on ``device``: it finds the launcher's
    process group (gloo for CPU processes, nccl for GPUs) or runs as one plain process.

    Weights are placed by the model itself (``device_placement=False``) and stay in the dtype
    it chose (``mixed_precision="no"``: bf16 weights on CUDA already; autocast on top would
    change the numbers). ``cpu=True`` only in a launched CPU run: it is what makes accelerate
    start gloo processes, and in a plain process it would pin the shared state to the CPU."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    processes, _ = launched_processes()
    cpu = processes > 1 and device.type == "cpu"
    handlers = [InitProcessGroupKwargs(backend="gloo" if cpu else "nccl")] if processes > 1 else []
    return Accelerator(
        cpu=cpu,
        device_placement=False,
        mixed_precision="no",
        gradient_accumulation_steps=gradient_accumulation_steps,
        kwargs_handlers=handlers,
    )


def _distributed_run() -> bool:
    """Whether this process is one of several in an initialised process group."""
    import torch

    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def answer_token_count(labels: Any) -> int:
    """The tokens a causal-LM loss averages over in a batch: label positions other than -100,
    after the one-token shift (the first column never has a target)."""
    return int((labels[:, 1:] != -100).sum())


def shard_rows(n: int, shards: int, index: int) -> np.ndarray:
    """Rows ``0..n-1`` of a global batch cut in ``shards`` contiguous parts (sizes differ by
    at most one; trailing parts may be empty): part ``index``. Process ``r`` of ``P`` with
    ``A`` accumulation steps takes parts ``r*A .. r*A + A - 1``, so together the processes
    see exactly the global batch that one process would."""
    return np.array_split(np.arange(n), shards)[index]


class VisionLanguageSignalModel:
    """A transformers vision-language model as a :class:`aiopt_lib.models.base.SignalModel`.

    ``model_id``: hub id or local folder (default :data:`DEFAULT_MODEL_ID`).
    ``trust_remote_code``: opt in to the repository's own code (MiniCPM-V 4.5 8B needs it).
    ``prompt_features``: the feature columns shown in the prompt (default: the first
    ``max_prompt_features`` non-pattern features of the sample set). ``batch_size``: inference
    batch. ``train``: :class:`VlmTrainConfig`. ``metrics``: an optional ``training_metrics``
    :class:`aiopt_lib.core.streams.StreamWriter`. ``device``/``dtype``: default CUDA + bf16 when
    present, else CPU + float32. ``adapter_dir`` / ``processor_dir``: a saved LoRA adapter and
    processor to load with the base model (used by :func:`aiopt_lib.models.load_model`).
    ``pattern_question``: train on the pattern questions too (module docstring); the yes/no
    tokens are then checked at load time. Loading is lazy: constructing the object touches neither disk nor network.
    """

    kind = KIND

    def __init__(
        self,
        model_id: str | Path = DEFAULT_MODEL_ID,
        *,
        trust_remote_code: bool = False,
        prompt_features: Sequence[str] | None = None,
        max_prompt_features: int = 8,
        batch_size: int = 8,
        train: VlmTrainConfig | None = None,
        metrics: Any = None,
        progress: bool = True,
        explain_max_new_tokens: int = 40,
        device: str | None = None,
        dtype: str | None = None,
        adapter_dir: str | Path | None = None,
        processor_dir: str | Path | None = None,
        pattern_question: bool = True,
    ) -> None:
        self.model_id = str(model_id)
        self.trust_remote_code = trust_remote_code
        self.prompt_features = tuple(prompt_features) if prompt_features is not None else None
        self.max_prompt_features = max_prompt_features
        self.batch_size = batch_size
        self.train_config = train or VlmTrainConfig()
        self.metrics = metrics
        self.progress = progress
        self.explain_max_new_tokens = explain_max_new_tokens
        self._device = device
        self._dtype = dtype
        self.adapter_dir = None if adapter_dir is None else Path(adapter_dir)
        self.processor_dir = None if processor_dir is None else Path(processor_dir)
        self._model: Any = None
        self._processor: Any = None
        self._labels: LabelTokens | None = None
        self._answers: AnswerTokens | None = None
        self.pattern_question = pattern_question
        self.has_adapter = False
        self.merged = False

    # -- loading --------------------------------------------------------------------------------

    @property
    def device(self) -> Any:
        """The torch device the model runs on. Under a launcher with several processes, CUDA
        means this process's own GPU, ``cuda:LOCAL_RANK``."""
        import torch

        wanted = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        processes, local_rank = launched_processes()
        if wanted == "cuda" and processes > 1:
            wanted = f"cuda:{local_rank}"
        return torch.device(wanted)

    @property
    def torch_dtype(self) -> Any:
        """The weights' dtype: ``dtype`` if given, else bf16 on CUDA, float32 on the CPU."""
        import torch

        if self._dtype is not None:
            return getattr(torch, self._dtype)
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForImageTextToText

        from aiopt_lib.models.processors import load_processor
        from aiopt_lib.models.vision_attention import use_batched_vision_attention

        processor_source = str(self.processor_dir or self.model_id)
        processor = load_processor(processor_source, trust_remote_code=self.trust_remote_code)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # the scored position is the last column of every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        options: dict[str, Any] = {
            "trust_remote_code": self.trust_remote_code,
            "dtype": self.torch_dtype,
        }
        if self.train_config.quantize_4bit:
            options["quantization_config"] = self._quantization_config()
            options["device_map"] = {"": self.device.index or 0}
        model = AutoModelForImageTextToText.from_pretrained(self.model_id, **options)
        if not self.train_config.quantize_4bit:
            model.to(self.device)
        use_batched_vision_attention(model)  # one attention call per layer, not per window
        if self.adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.adapter_dir), is_trainable=False)
            self.has_adapter = True
        model.eval()
        self._labels = find_label_tokens(tokenizer)
        try:
            self._answers = find_answer_tokens(tokenizer)
        except ConfigError:
            if self.pattern_question:
                raise
            self._answers = None  # zero-shot pattern questions then fail when asked
        self._processor = processor
        self._model = model

    def _quantization_config(self) -> Any:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("QLoRA (quantize_4bit) needs CUDA")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ConfigError("QLoRA (quantize_4bit) needs the bitsandbytes package") from exc
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )

    @property
    def model(self) -> Any:
        """The (possibly LoRA-wrapped) transformers model, loaded on first use."""
        self._load()
        return self._model

    @property
    def processor(self) -> Any:
        """The transformers processor, loaded on first use."""
        self._load()
        return self._processor

    @property
    def label_tokens(self) -> LabelTokens:
        """The prefill and the label tokens used for scoring."""
        self._load()
        assert self._labels is not None
        return self._labels

    @property
    def answer_tokens(self) -> AnswerTokens:
        """The prefill and the yes/no tokens used for the pattern questions."""
        self._load()
        if self._answers is None:
            self._answers = find_answer_tokens(self.processor.tokenizer)
        return self._answers

    # -- prompts and batches --------------------------------------------------------------------

    def _prompt_columns(self, samples: SampleSet) -> tuple[str, ...]:
        if self.prompt_features is not None:
            return self.prompt_features
        names = [n for n in samples.feature_names if not n.startswith("pat_")]
        return tuple(names[: self.max_prompt_features])

    def prompts(self, samples: SampleSet) -> list[str]:
        """The full model text of each sample up to and including the answer prefill."""
        columns = self._prompt_columns(samples)
        prefill = self.label_tokens.prefill
        rows = samples.samples.select(list(columns)).to_dicts() if columns else []
        rows = rows or [{} for _ in range(len(samples))]
        return [chat_text(self.processor, build_prompt(row)) + prefill for row in rows]

    def pattern_prompts(self, patterns: Sequence[str]) -> list[str]:
        """The full model text of the question about each pattern, up to the answer prefill."""
        prefill = self.answer_tokens.prefill
        return [chat_text(self.processor, build_pattern_prompt(p)) + prefill for p in patterns]

    def _encode(self, texts: list[str], images: list[Any]) -> dict[str, Any]:
        batch = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        out = {}
        for key, value in batch.items():
            if hasattr(value, "to"):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self._model_dtype())
            out[key] = value
        return out

    def _model_dtype(self) -> Any:
        return next(p for p in self.model.parameters() if p.is_floating_point()).dtype

    # -- SignalModel ----------------------------------------------------------------------------

    def predict_proba(self, samples: SampleSet) -> np.ndarray:
        """P(BUY), P(SELL), P(HOLD) per sample, ``(n, 3)``; batched, one forward pass a batch."""
        if len(samples) == 0:
            return np.zeros((0, len(CLASSES)))
        model = self.model
        model.eval()
        texts, images = self.prompts(samples), _images(samples)
        parts = []
        for start in range(0, len(texts), self.batch_size):
            stop = start + self.batch_size
            inputs = self._encode(texts[start:stop], images[start:stop])
            parts.append(score_labels(model, inputs, self.label_tokens.token_ids).cpu().numpy())
        proba = np.concatenate(parts).astype(np.float64)
        return check_probabilities(proba / proba.sum(axis=1, keepdims=True), len(samples))

    def predict_pattern_proba(self, samples: SampleSet) -> np.ndarray:
        """P(pattern present at the last candle), ``(n, k)`` over ``samples.pattern_names``: for each
        (sample, pattern) question the softmax of the ``yes`` vs ``no`` token logits after the
        answer prefill; the ``n * k`` questions go in batches of ``batch_size``, one forward pass
        each. Score it with :func:`aiopt_lib.models.evaluation.pattern_recognition_report`."""
        names = samples.pattern_names
        if len(samples) == 0 or not names:
            return np.zeros((len(samples), len(names)))
        model = self.model
        model.eval()
        questions = self.pattern_prompts(names)
        images = _images(samples)
        # sample-major order: row i * k + j is sample i, pattern j
        pairs = [(i, j) for i in range(len(samples)) for j in range(len(names))]
        parts = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            inputs = self._encode([questions[j] for _, j in chunk], [images[i] for i, _ in chunk])
            scores = score_labels(model, inputs, self.answer_tokens.token_ids)
            parts.append(scores[:, 0].cpu().numpy())
        proba = np.concatenate(parts).astype(np.float64).reshape(len(samples), len(names))
        return np.clip(proba, 0.0, 1.0)

    def explain(self, samples: SampleSet) -> list[str]:
        """One JSON answer per sample, ``{"signal", "confidence", "reasoning"}``: the signal and
        confidence are the scored ones (prefilled, so generation cannot contradict them); the
        reasoning is generated greedily, at most ``explain_max_new_tokens`` tokens, cut at the
        closing quote."""
        import torch

        proba = self.predict_proba(samples)
        labels = self.label_tokens
        texts = []
        for text, p in zip(self.prompts(samples), proba, strict=True):
            k = int(np.argmax(p))
            texts.append(f'{text}{labels.labels[k]}", "confidence": {p[k]:.2f}, "reasoning": "')
        images = _images(samples)
        tokenizer = self.processor.tokenizer
        answers = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self._encode(
                texts[start : start + self.batch_size], images[start : start + self.batch_size]
            )
            with torch.no_grad():
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=self.explain_max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = generated[:, inputs["input_ids"].shape[1] :]
            for row, tokens in enumerate(tokenizer.batch_decode(new, skip_special_tokens=True)):
                p = proba[start + row]
                k = int(np.argmax(p))
                answers.append(
                    json.dumps(
                        {
                            "signal": CLASSES[k],
                            "confidence": round(float(p[k]), 4),
                            "reasoning": tokens.split('"')[0].strip(),
                        }
                    )
                )
        return answers

    # -- training -------------------------------------------------------------------------------

    def _training_batch(
        self, samples: SampleSet, questions: Sequence[tuple[int, int, bool]] = ()
    ) -> dict[str, Any]:
        """Inputs + answer-only labels: per sample the prompt, prefill, label and closing ``"}``;
        then one row per pattern question ``(sample row, pattern column, present)`` with its
        yes/no answer. ``_label_positions`` covers the signal rows (the first ``n``)."""
        labels = self.label_tokens
        prompts = self.prompts(samples)
        tokenizer = self.processor.tokenizer
        images = _images(samples)
        pairs = [
            (prompt, f'{prompt}{labels.labels[int(k)]}"}}')
            for prompt, k in zip(prompts, samples.labels, strict=True)
        ]
        if questions:
            answers = self.answer_tokens
            asked = self.pattern_prompts(samples.pattern_names)
            for row, column, present in questions:
                prompt = asked[column]
                pairs.append((prompt, prompt + answers.answers[0 if present else 1]))
                images.append(images[row])
        texts, lengths = [], []
        for prompt, text in pairs:
            texts.append(text)
            full = len(tokenizer.encode(text, add_special_tokens=False))
            lengths.append(full - len(tokenizer.encode(prompt, add_special_tokens=False)))
        inputs = self._encode(texts, images)
        inputs["labels"] = answer_labels(inputs["input_ids"], inputs["attention_mask"], lengths)
        width = inputs["input_ids"].shape[1]
        inputs["_label_positions"] = [width - n - 1 for n in lengths[: len(samples)]]
        return inputs

    def _peft_model(self) -> Any:
        from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

        config = self.train_config
        model = self.model
        if isinstance(model, PeftModel):
            for name, parameter in model.named_parameters():
                parameter.requires_grad = "lora_" in name
            return model
        if config.quantize_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        if not language_lora_targets(model):
            raise ConfigError(f"{self.model_id}: no language-model projection matches the pattern")
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=LANGUAGE_PROJECTION_PATTERN,
            bias="none",
        )
        model = get_peft_model(model, lora)
        self._model = model
        self.has_adapter = True
        return model

    def _evaluate(
        self, model: Any, samples: SampleSet, accelerator: Any = None
    ) -> tuple[float, float]:
        """Mean answer loss and label accuracy, from the same forward passes. With several
        processes each takes every P-th batch of ``batch_size`` (the same batches as one
        process, so the same per-batch numbers) and the sums are added across processes."""
        import torch

        model.eval()
        losses, correct = [], 0
        token_ids = list(self.label_tokens.token_ids)
        processes = accelerator.num_processes if accelerator is not None else 1
        rank = accelerator.process_index if accelerator is not None else 0
        with torch.no_grad():
            starts = range(0, len(samples), self.batch_size)
            for start in starts[rank::processes]:
                part = samples.take(np.arange(start, min(start + self.batch_size, len(samples))))
                inputs = self._training_batch(part)
                positions = inputs.pop("_label_positions")
                loss, logits, offset = answer_forward(model, inputs)
                losses.append(float(loss) * len(part))
                rows = torch.arange(len(part), device=logits.device)
                where = torch.tensor(positions, device=rows.device) - offset
                scores = logits[rows, where][:, token_ids]
                correct += int((scores.argmax(-1).cpu().numpy() == part.labels).sum())
        if processes > 1:
            sums = torch.tensor(
                [sum(losses), float(correct)], dtype=torch.float64, device=accelerator.device
            )
            total, hits = accelerator.reduce(sums, reduction="sum").tolist()
            return total / len(samples), hits / len(samples)
        return sum(losses) / len(samples), correct / len(samples)

    def fit(self, train: SampleSet, valid: SampleSet) -> FitReport:
        """Fine-tune LoRA adapters on ``train`` (see the module docstring); evaluate answer loss
        and accuracy on ``valid`` after each epoch. Rows without a label are skipped.

        In a plain process this is one process's training; started by ``torchrun`` or
        ``accelerate launch`` (every process calling ``fit`` with the same data and settings) it
        trains data-parallel: see "Data-parallel fine-tuning" in the module docstring."""
        import torch
        from tqdm.auto import tqdm

        started = time.perf_counter()
        config = self.train_config
        accumulation = config.gradient_accumulation_steps
        if not isinstance(accumulation, int) or accumulation < 1:
            raise ConfigError(
                f"gradient_accumulation_steps must be an int >= 1, got {accumulation}"
            )
        train = train.take(np.flatnonzero(train.labels >= 0))
        valid = valid.take(np.flatnonzero(valid.labels >= 0))
        if len(train) == 0:
            raise DataError("no labelled training samples")
        accelerator = make_accelerator(self.device, accumulation)
        processes, rank = accelerator.num_processes, accelerator.process_index
        main = accelerator.is_main_process
        torch.manual_seed(config.seed)
        model = self._peft_model()
        checkpointing = config.gradient_checkpointing
        if checkpointing is None:
            checkpointing = self.device.type == "cuda"
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            # transformers hooks the input embeddings itself for text models; a second call would
            # replace its list of hooks, and the first ones could never be removed
            if not getattr(model, "_require_grads_hooks", None):
                model.enable_input_require_grads()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        warmup = max(config.warmup_steps, 0)
        # Not given to accelerator.prepare: its scheduler wrapper steps once per process per
        # optimizer step, which would make the warm-up depend on the process count.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        per_epoch = math.ceil(len(train) / config.batch_size)
        total = config.max_steps if config.max_steps is not None else config.epochs * per_epoch
        step, history = 0, []
        if config.resume and config.checkpoint_dir is not None:
            step, history = _resume(Path(config.checkpoint_dir), model, optimizer, scheduler)
        if rank:  # LoRA dropout: each process its own masks (rank 0 keeps the one-process RNG)
            torch.manual_seed(
                int(np.random.SeedSequence([config.seed, rank, step]).generate_state(1)[0])
            )
        # DDP around the model (gradients averaged across processes); as is in one process
        wrapped, prepared_optimizer = accelerator.prepare(model, optimizer)
        bar = tqdm(total=total, initial=step, disable=not (self.progress and main), desc="vlm lora")
        best_epoch, best_loss = None, None
        for row in history:
            if row["split"] == "valid" and (best_loss is None or row["loss"] < best_loss):
                best_epoch, best_loss = row["epoch"], row["loss"]
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            order = np.random.default_rng(config.seed + epoch).permutation(len(train))
            wrapped.train()
            batch_idx = order[offset * config.batch_size : (offset + 1) * config.batch_size]
            tick = time.perf_counter()
            part = train.take(batch_idx)
            loss = self._train_step(accelerator, wrapped, part, self._pattern_questions(part, step))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
            learning_rate = float(scheduler.get_last_lr()[0])
            prepared_optimizer.step()
            scheduler.step()
            prepared_optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {
                "step": step,
                "epoch": epoch,
                "split": "train",
                "loss": loss,
                "learning_rate": learning_rate,
                "grad_norm": grad_norm,
                "samples_per_s": len(batch_idx) / (time.perf_counter() - tick),
                "val_accuracy": None,
                "gpu_memory_mb": _device_memory_mb(),
            }
            history.append(record)
            if main:
                self._log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if (step % per_epoch == 0 or step == total) and len(valid):
                valid_loss, accuracy = self._evaluate(model, valid, accelerator)
                record = {**record, "split": "valid", "loss": valid_loss}
                record.update(val_accuracy=accuracy, samples_per_s=None, grad_norm=None)
                history.append(record)
                if main:
                    self._log(record)
                if best_loss is None or valid_loss < best_loss:
                    best_epoch, best_loss = epoch, valid_loss
            due = config.checkpoint_every and (step % config.checkpoint_every == 0 or step == total)
            if due and config.checkpoint_dir is not None:
                accelerator.wait_for_everyone()
                if main:  # the state is the same in every process: written once
                    _save_checkpoint(
                        Path(config.checkpoint_dir),
                        step,
                        model,
                        optimizer,
                        scheduler,
                        history,
                        config.keep_checkpoints,
                        processes=processes,
                    )
                accelerator.wait_for_everyone()
        bar.close()
        del wrapped, prepared_optimizer  # DDP lets go of the model's gradient hooks
        accelerator.free_memory()
        if checkpointing:
            model.gradient_checkpointing_disable()
            model.disable_input_require_grads()  # else later fits keep the embeddings' grad
        model.eval()
        if config.merge:
            self.merge()
        if self.metrics is not None and main:
            self.metrics.flush()
        frame = pl.DataFrame(history, schema=_HISTORY_SCHEMA)
        return FitReport(frame, best_epoch, best_loss, time.perf_counter() - started)

    def _train_step(
        self,
        accelerator: Any,
        model: Any,
        part: SampleSet,
        questions: Sequence[tuple[int, int, bool]],
    ) -> float:
        """Forward and backward passes of one global batch ``part`` (with its pattern
        ``questions``) in this process's micro-batches; the gradients are left summed for the
        optimizer step. Returns the loss of the whole global batch, as one process computes it.

        The model's loss is the mean over a micro-batch's answer tokens, but the step must
        follow the mean over ALL the global batch's tokens, wherever they were computed: each
        micro-batch's loss is weighted by its token count over the global count (one all-reduce)
        times ``P x A``, which undoes the division of DDP (by ``P``) and of
        ``accelerator.backward`` (by ``A``). In one process without accumulation the weight is
        1 and nothing is rescaled: the numbers are those of a plain loop."""
        processes, rank = accelerator.num_processes, accelerator.process_index
        accumulation = accelerator.gradient_accumulation_steps
        shards = processes * accumulation
        micro = []
        for index in range(rank * accumulation, (rank + 1) * accumulation):
            rows = shard_rows(len(part), shards, index)
            if len(rows) == 0:  # a short last batch: a zero-weight pass keeps DDP in step
                inputs = self._training_batch(part.take([0]))
                micro.append((inputs, 0))
                continue
            where = {int(row): i for i, row in enumerate(rows)}
            asked = [(where[r], c, present) for r, c, present in questions if r in where]
            inputs = self._training_batch(
                part if len(rows) == len(part) else part.take(rows), asked
            )
            micro.append((inputs, answer_token_count(inputs["labels"])))
        tokens = sum(n for _, n in micro)
        if processes > 1:
            tokens = self._all_sum(accelerator, [tokens])[0]
        weighted = 0.0
        for inputs, n in micro:
            inputs.pop("_label_positions")
            with accelerator.accumulate(model):
                loss, _, _ = answer_forward(model, inputs)
                scaled = loss if shards == 1 else loss * (n * shards / tokens)
                accelerator.backward(scaled)
            weighted += float(loss.detach()) * n
        if processes > 1:
            weighted = self._all_sum(accelerator, [weighted])[0]
        return weighted / tokens

    @staticmethod
    def _all_sum(accelerator: Any, values: Sequence[float]) -> list[float]:
        """``values`` summed over all processes (float64, on the process group's device)."""
        import torch

        local = torch.tensor(list(values), dtype=torch.float64, device=accelerator.device)
        return accelerator.reduce(local, reduction="sum").tolist()

    def _pattern_questions(self, part: SampleSet, step: int) -> list[tuple[int, int, bool]]:
        """The pattern questions added to training step ``step`` (none when off or no patterns)."""
        per_sample = self.train_config.pattern_questions_per_sample
        if not self.pattern_question or not part.pattern_names or per_sample <= 0:
            return []
        rng = np.random.default_rng([self.train_config.seed, step])
        return choose_pattern_questions(part.patterns(), per_sample, rng)

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.append({"run_id": self.train_config.run_id, **record})

    def merge(self) -> None:
        """Fold the LoRA adapters into the base weights (``merge_and_unload``)."""
        if self.has_adapter and not self.merged:
            self._model = self.model.merge_and_unload()
            self._model.eval()
            self.merged = True
            self.has_adapter = False

    def save(self, directory: str | Path) -> Path:
        """Save the processor, the adapter (safetensors) or, once merged, the whole model, and
        ``model.json`` last. The base model is referenced by ``model_id``, not copied.

        In a data-parallel run every process may call it: the main process writes, once, while
        the others wait, and all return when the folder is complete."""
        if not _distributed_run():
            return self._save(directory)
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        if state.is_main_process:
            self._save(directory)
        state.wait_for_everyone()
        return Path(directory) / MODEL_FILE

    def _save(self, directory: str | Path) -> Path:
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        self.processor.save_pretrained(target / "processor")
        base = self.model_id
        if self.merged:
            self.model.save_pretrained(target / "model")
            base = "model"
        elif self.has_adapter:
            self.model.save_pretrained(target / "adapter")
        elif Path(base).exists():
            base = str(Path(base).resolve())
        return write_model_file(
            target,
            KIND,
            model_id=base,
            trust_remote_code=self.trust_remote_code,
            adapter=self.has_adapter,
            prompt_features=list(self.prompt_features) if self.prompt_features else None,
            max_prompt_features=self.max_prompt_features,
            batch_size=self.batch_size,
            label_tokens=dataclasses.asdict(self.label_tokens),
            pattern_question=self.pattern_question,
            answer_tokens=dataclasses.asdict(self._answers) if self._answers else None,
        )

    @classmethod
    def load(
        cls, directory: str | Path, *, trust_remote_code: bool | None = None
    ) -> VisionLanguageSignalModel:
        """The model saved in ``directory`` by :meth:`save` (lazy, like the constructor).

        When its ``model.json`` records ``trust_remote_code: true`` it loads only if the caller
        opts in: ``trust_remote_code=True`` or ``AIOPT_TRUST_REMOTE_CODE=1`` (else a
        :class:`ConfigError`); the folder alone never turns remote code on."""
        return _load_saved(Path(directory), trust_remote_code=trust_remote_code)


_HISTORY_SCHEMA = {
    "step": pl.Int64,
    "epoch": pl.Int64,
    "split": pl.String,
    "loss": pl.Float64,
    "learning_rate": pl.Float64,
    "grad_norm": pl.Float64,
    "samples_per_s": pl.Float64,
    "val_accuracy": pl.Float64,
    "gpu_memory_mb": pl.Float64,
}


def _save_checkpoint(
    root: Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    history: list[dict[str, Any]],
    keep: int,
    *,
    processes: int = 1,
) -> Path:
    """Write ``root/step-XXXXXXXX`` complete or not at all (built beside it, then renamed).

    Nothing in it belongs to one process: the adapter of the unwrapped model, the optimizer and
    scheduler state (the same in every data-parallel process), the step and the history of
    global-batch losses, so it resumes under any process count. ``processes`` is recorded for
    the reader only."""
    import torch

    target = root / f"step-{step:08d}"
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp / "adapter")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(
            json.dumps({"step": step, "processes": processes, "history": history})
        )
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None if there is none)."""
    folders = sorted(p for p in Path(root).glob("step-*") if (p / "state.json").is_file())
    return folders[-1] if folders else None


def _resume(
    root: Path, model: Any, optimizer: Any, scheduler: Any
) -> tuple[int, list[dict[str, Any]]]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = latest_checkpoint(root)
    if folder is None:
        return 0, []
    weights = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    state = _read_optimizer_state(folder / "optimizer.pt")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    info = json.loads((folder / "state.json").read_text())
    return int(info["step"]), list(info["history"])


def _read_optimizer_state(path: Path) -> dict[str, Any]:
    """The optimizer/scheduler/RNG state of a checkpoint, read with ``weights_only=True`` (tensors,
    numbers, strings, lists, tuples and dicts only: unpickling anything else is refused, so a
    crafted ``optimizer.pt`` cannot run code); a one-line :class:`ConfigError` otherwise."""
    import pickle

    import torch

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{path}: refusing to resume from this checkpoint: it holds objects other than "
            "tensors and plain data (not written by aiopt?); delete its step-* folder to go on"
        ) from None
    keys = {"optimizer", "scheduler", "torch_rng", "cuda_rng"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise ConfigError(f"{path}: not an aiopt checkpoint (expected the keys {sorted(keys)})")
    return state


def _load_saved(
    directory: Path, *, trust_remote_code: bool | None = None
) -> VisionLanguageSignalModel:
    """The model saved in ``directory``. Its ``model.json`` may ask for remote code; it gets it
    only when the caller opts in too (:func:`aiopt_lib.models.base.require_remote_code_opt_in`)."""
    info = json.loads((directory / MODEL_FILE).read_text(encoding="utf-8"))
    if info.get("kind") != KIND:
        raise DataError(f"model kind is {info.get('kind')!r}, expected {KIND!r}", file=directory)
    remote = require_remote_code_opt_in(
        directory, bool(info.get("trust_remote_code")), trust_remote_code
    )
    base = info["model_id"]
    if base == "model":
        base = str(directory / "model")
    model = VisionLanguageSignalModel(
        base,
        trust_remote_code=remote,
        prompt_features=info.get("prompt_features"),
        max_prompt_features=int(info.get("max_prompt_features", 8)),
        batch_size=int(info.get("batch_size", 8)),
        adapter_dir=directory / "adapter" if info.get("adapter") else None,
        processor_dir=directory / "processor",
        pattern_question=bool(info.get("pattern_question", True)),
    )
    return model


register_model(KIND, _load_saved, remote_code=True)
