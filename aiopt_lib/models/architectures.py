"""Released vision-language architectures as files in the repo, and random-weight models of them.

Weights cannot be downloaded here, so "real size" means the released ARCHITECTURE with random
weights: ``configs/<name>/config.json`` is the published ``config.json`` of the checkpoint, written
out by us (``configs/<name>/SOURCES.md`` says where each value comes from and what could not be
verified). :func:`released_config` builds the transformers config from it offline;
``released_config(name, shape="reduced")`` is the same architecture at the CPU test shape
(:data:`REDUCED_OVERRIDES`: 2 language layers, one linear-attention and one full-attention, a
2-layer vision tower, small widths) with every other published setting kept.

:func:`build_random_model` turns a config into a model FOLDER — random weights, a small tokenizer
trained offline with the release's special tokens and pre-tokenizer, the release's image processor
settings and a chat template that renders a single image + text turn as the release does — laid out
as the hub checkpoint is (``config.json``, ``model.safetensors``, ``preprocessor_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``). So the benchmark and the
tests load it through the very path users take, ``VisionLanguageSignalModel(folder)`` /
:func:`aiopt_lib.models.load_model`, and nothing about it is special-cased. The folder's
``random_weights.json`` marks it: :func:`is_random_weights` lets a report say that such a model's
figures are those of an untrained network.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aiopt_lib.core.errors import ConfigError

__all__ = [
    "REDUCED_OVERRIDES",
    "RELEASED",
    "build_random_model",
    "chart_tokenizer",
    "is_random_weights",
    "parameter_count",
    "released_config",
    "released_config_path",
    "released_values",
]

CONFIGS = Path(__file__).parent / "configs"
RELEASED = {"minicpmv46": "openbmb/MiniCPM-V-4.6"}
"""Architecture name -> the hub checkpoint whose published ``config.json`` is in ``configs/``."""

REDUCED_OVERRIDES: dict[str, dict[str, Any]] = {
    "minicpmv46": {
        "insert_layer_id": 0,  # the window-attention merger after the first of 2 vision layers
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "text_config": {
            "vocab_size": 2048,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "layer_types": ["linear_attention", "full_attention"],
            "num_attention_heads": 4,
            "head_dim": 16,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 2,
        },
    }
}
"""The CPU shape of each architecture: changes to the released values, everything else kept
(patch size, image processor, attention gate, rotary settings, tied embeddings...)."""

RANDOM_WEIGHTS_FILE = "random_weights.json"

# The release's special tokens (its tokenizer.json added_tokens) and, for MiniCPM-V 4.6, which
# one each processor attribute names (by the token names; see SOURCES.md).
_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "</image>",
    "<slice>",
    "</slice>",
    "<image_id>",
    "</image_id>",
    "<think>",
    "</think>",
    "<unk>",
)
_PROCESSOR_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "image_start_token": "<image>",
    "image_end_token": "</image>",
    "slice_start_token": "<slice>",
    "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>",
    "image_id_end_token": "</image_id>",
}
# The published pre-tokenizer split (Qwen3.5): words with one leading non-letter, digits ONE BY
# ONE, punctuation runs, new lines, spaces; then byte-level.
_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Renders what the published template renders for our turns: the content parts joined by a new
# line and trimmed, and the assistant prompt with thinking off (the release's default).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set ns = namespace(parts=[]) -%}"
    "{%- if message.content is string -%}{%- set ns.parts = [message.content] -%}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}{%- set ns.parts = ns.parts + ['<|image_pad|>'] -%}"
    "{%- elif item.type == 'text' -%}{%- set ns.parts = ns.parts + [item.text] -%}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + (ns.parts | join('\\n')) | trim"
    " + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
)
# The published preprocessor_config.json of MiniCPM-V 4.6.
_IMAGE_PROCESSOR = {
    "max_slice_nums": 9,
    "scale_resolution": 448,
    "use_image_id": True,
    "slice_mode": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def released_config_path(name: str = "minicpmv46") -> Path:
    """The ``config.json`` of architecture ``name`` in the package (see :data:`RELEASED`)."""
    if name not in RELEASED:
        raise ConfigError(f"unknown architecture {name!r}; known: {sorted(RELEASED)}")
    return CONFIGS / name / "config.json"


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def released_values(
    name: str = "minicpmv46",
    *,
    shape: str = "real",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config values of architecture ``name`` as a plain mapping: the published ones
    (``shape="real"``), or those with :data:`REDUCED_OVERRIDES` applied (``"reduced"``), then
    ``overrides`` (nested mappings merge key by key)."""
    if shape not in ("real", "reduced"):
        raise ConfigError(f"shape must be 'real' or 'reduced', got {shape!r}")
    values = json.loads(released_config_path(name).read_text(encoding="utf-8"))
    if shape == "reduced":
        values = _merge(values, REDUCED_OVERRIDES[name])
    return _merge(values, overrides or {})


def released_config(
    name: str = "minicpmv46",
    *,
    shape: str = "real",
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The transformers config of architecture ``name`` (see :func:`released_values`), built
    offline from the file in the repo: ``AutoConfig.for_model`` of its ``model_type``."""
    from transformers import AutoConfig

    values = released_values(name, shape=shape, overrides=overrides)
    values.pop("transformers_version", None)
    return AutoConfig.for_model(values.pop("model_type"), **values)


def _tokenizer_corpus(samples: int = 400, seed: int = 0) -> list[str]:
    """Texts like the ones the model reads and writes: prompts with indicator tables of random
    values, the three answers, the pattern questions and the chat frame."""
    from aiopt_lib.features.labels import CLASSES
    from aiopt_lib.models.vlm import build_pattern_prompt, build_prompt

    rng = np.random.default_rng(seed)
    names = ["ret_1", "ret_3", "ret_12", "ret_24", "logret_1", "logret_3", "rsi_14", "atr_14"]
    texts = []
    for _ in range(samples):
        values = dict(
            zip(names, rng.normal(0, 1, len(names)) * 10.0 ** rng.integers(-4, 3), strict=True)
        )
        texts.append(build_prompt(values))
    for label in CLASSES:
        texts += [f'{{"signal": "{label}"}}', f'{{"signal": "{label}", "confidence": 0.5}}'] * 50
    for pattern in ("pat_doji", "pat_hammer", "pat_bullish_engulfing", "pat_three_black_crows"):
        texts.append(build_pattern_prompt(pattern))
    texts += ["Answer: yes", "Answer: no", "Answer:yes", "Answer:no"] * 50
    texts += ["user\n", "assistant\n", "system\n", '"reasoning": "the trend is up"'] * 20
    return texts


def chart_tokenizer(vocab_size: int = 2048, seed: int = 0) -> Any:
    """A byte-level BPE tokenizer trained offline on our prompts (deterministic), with the
    release's special tokens, its pre-tokenizer split (digits one by one, so numbers cost as many
    tokens as in the real one) and the processor's token attributes. At most ``vocab_size``
    entries."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZER_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tokenizer_corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens=dict(_PROCESSOR_TOKENS),
    )


def build_random_model(
    folder: str | Path,
    config: Any,
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str | None = None,
    image_resolution: int | None = None,
) -> Path:
    """Save a model of ``config`` with RANDOM weights (``seed``), and its tokenizer and processor,
    to ``folder``, laid out as the hub checkpoint is, and return the folder.

    The config's image, video, end and padding token ids are set to the small tokenizer's
    (:func:`chart_tokenizer`); ``vocab_size`` is kept (so the embedding keeps its real size) unless
    it is smaller than the tokenizer. ``dtype`` of the saved weights (``"bfloat16"`` halves the
    2.6 GB of the real size); ``device``: where the weights are initialised (``"cuda"`` is much
    faster at real size). ``image_resolution``: the image processor's ``scale_resolution``
    (default the release's 448, to which smaller charts are scaled up: 1,024 patches and 64
    language tokens per chart; the CPU tests use 112: 64 patches, 4 tokens).
    ``random_weights.json`` records what the folder is."""
    import torch
    from transformers import AutoModelForImageTextToText

    if getattr(config, "model_type", None) != "minicpmv4_6":
        raise ConfigError(
            f"build_random_model knows MiniCPM-V 4.6 (model_type minicpmv4_6), not "
            f"{getattr(config, 'model_type', None)!r}"
        )
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)
    tokenizer = chart_tokenizer(seed=seed)
    size = len(tokenizer)
    text = config.text_config
    if text.vocab_size < size:
        raise ConfigError(f"vocab_size {text.vocab_size} < the tokenizer's {size} entries")
    config.image_token_id = tokenizer.convert_tokens_to_ids(_PROCESSOR_TOKENS["image_token"])
    config.video_token_id = tokenizer.convert_tokens_to_ids(_PROCESSOR_TOKENS["video_token"])
    config.eos_token_id = text.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = text.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(target)
    del model
    resolution = image_resolution or _IMAGE_PROCESSOR["scale_resolution"]
    _save_processor(
        target, tokenizer, patch_size=config.vision_config.patch_size, resolution=resolution
    )
    (target / RANDOM_WEIGHTS_FILE).write_text(
        json.dumps(
            {
                "architecture": config.model_type,
                "random_weights": True,
                "seed": seed,
                "dtype": dtype,
                "image_resolution": resolution,
                "parameters": parameter_count(config),
                "note": "released architecture with random weights: not a trained model",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return target


def _save_processor(folder: Path, tokenizer: Any, *, patch_size: int, resolution: int) -> None:
    """The processor files as the release lays them out: the tokenizer, ``chat_template.jinja``
    and a flat ``preprocessor_config.json`` naming ``MiniCPMV4_6Processor``, so ``AutoProcessor``
    builds the real processor where torchvision is installed (and
    :func:`aiopt_lib.models.processors.load_processor` the image-only one where it is not)."""
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import (
        MiniCPMV4_6ImageProcessorPil,
    )

    from aiopt_lib.models.processors import save_minicpmv46_processor

    settings = {**_IMAGE_PROCESSOR, "scale_resolution": resolution}
    image = MiniCPMV4_6ImageProcessorPil(patch_size=patch_size, **settings)
    save_minicpmv46_processor(folder, tokenizer, image, CHAT_TEMPLATE)


def parameter_count(config: Any) -> int:
    """Parameters of a model of ``config`` (tied weights once), counted on the meta device:
    nothing is allocated."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters())


def is_random_weights(folder: str | Path) -> bool:
    """Whether ``folder`` (a base model folder, or a saved signal model whose base is one) holds
    a random-weight architecture made by :func:`build_random_model`."""
    path = Path(folder)
    if (path / RANDOM_WEIGHTS_FILE).is_file():
        return True
    info = path / "model.json"
    if info.is_file():
        base = json.loads(info.read_text(encoding="utf-8")).get("model_id")
        return isinstance(base, str) and (Path(base) / RANDOM_WEIGHTS_FILE).is_file()
    return False
