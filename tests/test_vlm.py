"""The vision-language signal model on tiny random models built offline in the test.

(a) A LLaVA model (SigLIP vision tower + tiny Llama) with a byte-level BPE tokenizer trained here,
saved to a folder and loaded back through the public path (``VisionLanguageSignalModel(model_id=
folder)`` -> AutoProcessor / AutoModelForImageTextToText). (b) The MiniCPM-V 4.6 architecture with
tiny sizes, exercised through its model classes (its processor needs torchvision).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from aiopt_lib.core.errors import ConfigError  # noqa: E402
from aiopt_lib.core.streams import Streams, read_stream  # noqa: E402
from aiopt_lib.features.labels import CLASSES, LABEL_DTYPE  # noqa: E402
from aiopt_lib.models import load_model  # noqa: E402
from aiopt_lib.models.base import SampleSet  # noqa: E402
from aiopt_lib.models.evaluation import pattern_recognition_report  # noqa: E402
from aiopt_lib.models.vlm import (  # noqa: E402
    LANGUAGE_PROJECTION_PATTERN,
    VisionLanguageSignalModel,
    VlmTrainConfig,
    answer_labels,
    build_pattern_prompt,
    build_prompt,
    chat_text,
    choose_pattern_questions,
    find_answer_tokens,
    find_label_tokens,
    language_lora_targets,
    latest_checkpoint,
    score_labels,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
FEATURES = ("rsi_14", "sma_ratio", "atr_14")
PATTERNS = ("pat_hammer", "pat_bullish_engulfing", "pat_doji")
VISION_PATH = re.compile(r"vision|multi_modal_projector|merger")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_tokenizer(corpus: list[str]) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus,
        vocab_size=600,
        min_frequency=1,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def _corpus() -> list[str]:
    prompt = build_prompt({name: 0.125 for name in FEATURES})
    answers = [
        f'{{"signal": "{label}", "confidence": 0.5, "reasoning": "the trend is up"}}'
        for label in CLASSES
    ]
    questions = [f"{build_pattern_prompt(name)}\nAnswer: yes Answer: no" for name in PATTERNS]
    return [prompt, *answers, *questions, "USER: ASSISTANT: n/a 0123456789.-"] * 10


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random LLaVA (SigLIP + Llama) and its processor, saved like a hub checkpoint."""
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def build_tiny_llava(folder: Path) -> str:
    """Save a tiny random LLaVA and its processor to ``folder`` (also used by test_security)."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(0)
    tokenizer = _train_tokenizer(_corpus())
    processor = transformers.LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    text = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        # wide enough initial weights that the (frozen, norm-fed) head can express a confident
        # answer: with the default 0.02 no LoRA update moves a logit by more than ~0.6
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_seq_length=16,
    )
    model = transformers.LlavaForConditionalGeneration(config)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return str(folder)


def _samples(n: int, seed: int = 0, patterns: bool = False) -> SampleSet:
    rng = np.random.default_rng(seed)
    values, digits = rng.uniform(0, 100, n), rng.integers(0, 4, n)
    labels = [CLASSES[i % 3] for i in range(n)]
    frame = pl.DataFrame(
        {
            "sample_id": np.arange(n),
            "ts": [dt.datetime(2019, 1, 4, i % 24, tzinfo=dt.UTC) for i in range(n)],
            # values of different printed lengths, so batches need padding
            "rsi_14": [round(v, int(d)) for v, d in zip(values, digits, strict=True)],
            "sma_ratio": rng.normal(1.0, 0.01, n),
            "atr_14": rng.uniform(1e-4, 1e-3, n),
            "label": pl.Series(labels, dtype=LABEL_DTYPE),
        }
    )
    images = rng.integers(0, 256, size=(n, 24, 40, 3), dtype=np.uint8)
    if not patterns:
        return SampleSet(samples=frame, feature_names=FEATURES, images=images)
    # Boolean detector flags as the features step writes them, each pattern present and absent
    flags = {name: [(i + j) % 3 == 0 for i in range(n)] for j, name in enumerate(PATTERNS)}
    frame = frame.with_columns(pl.Series(name, values) for name, values in flags.items())
    return SampleSet(
        samples=frame,
        feature_names=(*FEATURES, *PATTERNS),
        images=images,
        pattern_names=PATTERNS,
    )


def _model(folder: str, **train: object) -> VisionLanguageSignalModel:
    settings = {"lora_dropout": 0.0, "learning_rate": 5e-3, "batch_size": 3, **train}
    return VisionLanguageSignalModel(
        folder, batch_size=4, progress=False, train=VlmTrainConfig(**settings)
    )


def test_construction_is_lazy_and_loading_reports_a_missing_folder(tmp_path) -> None:
    model = VisionLanguageSignalModel(tmp_path / "absent")
    assert model._model is None and model.kind == "vlm"
    with pytest.raises(OSError, match="absent"):
        _ = model.model


def test_labels_are_single_tokens_or_loading_fails(llava_dir: str) -> None:
    model = _model(llava_dir)
    labels = model.label_tokens
    assert labels.prefill == '{"signal": "' and labels.labels == CLASSES
    tokenizer = model.processor.tokenizer
    for label, token in zip(labels.labels, labels.token_ids, strict=True):
        assert tokenizer.decode([token]) == label
    without_labels = _train_tokenizer(["chart rsi close values"] * 5)
    with pytest.raises(ConfigError, match="one token each"):
        find_label_tokens(without_labels)


def test_prompt_has_image_table_task_format_and_prefill(llava_dir: str) -> None:
    model = _model(llava_dir)
    samples = _samples(2)
    text = model.prompts(samples)[0]
    assert text.startswith("USER: <image>\n") and text.endswith('ASSISTANT: {"signal": "')
    rsi = samples.samples["rsi_14"][0]
    assert f"rsi_14: {rsi:.5g}" in text and "BUY, SELL or HOLD" in text
    assert '"confidence": 0..1' in text

    class NoTemplate:
        chat_template = None
        image_token = "<img>"

    assert chat_text(NoTemplate(), "task") == "<img>\ntask\nAnswer: "


def test_predict_proba_sums_to_one_and_batching_does_not_change_it(llava_dir: str) -> None:
    samples = _samples(7)
    model = _model(llava_dir)
    model.batch_size = 4  # 4 + 3, left padded
    batched = model.predict_proba(samples)
    assert batched.shape == (7, 3)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-9)
    model.batch_size = 1
    np.testing.assert_allclose(model.predict_proba(samples), batched, atol=1e-5)
    # the probabilities are the label tokens' softmax at the position after the prefill
    inputs = model._encode(model.prompts(samples.take([0])), [_pil(samples.images[0])])
    logits = model.model(**inputs).logits[0, -1, list(model.label_tokens.token_ids)]
    np.testing.assert_allclose(torch.softmax(logits, -1).detach().numpy(), batched[0], atol=1e-5)


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)


def test_answer_labels_mask_prompt_and_padding() -> None:
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = answer_labels(ids, mask, [2, 3])
    assert labels.tolist() == [[-100, -100, -100, -100, 7, 8], [-100, -100, -100, 4, 5, 6]]


def test_lora_targets_the_language_model_only(llava_dir: str) -> None:
    model = _model(llava_dir)
    targets = language_lora_targets(model.model)
    assert len(targets) == 2 * 7  # q k v o gate up down per layer
    assert all(".language_model." in name for name in targets)
    assert any(
        "vision_tower" in name and name.endswith("q_proj")
        for name, _ in model.model.named_modules()
    )  # the tower has projections the pattern skips
    wrapped = model._peft_model()
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in wrapped.named_modules() if ".lora_A" in n}
    assert adapted and not any(VISION_PATH.search(name) for name in adapted)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and not VISION_PATH.search(n) for n in trainable)


def test_fit_lowers_the_loss_logs_metrics_and_reloads_identically(llava_dir, tmp_path) -> None:
    batch = _samples(6, seed=1)
    streams = Streams(tmp_path / "run")
    model = _model(llava_dir, max_steps=12, batch_size=6, learning_rate=2e-2)
    model.metrics = streams.training_metrics
    report = model.fit(batch, batch)
    history = report.history
    first = history.filter(pl.col("split") == "train")["loss"][0]
    assert report.best_valid_loss is not None and report.best_valid_loss < 0.5 * first
    assert history.filter(pl.col("split") == "valid")["val_accuracy"][-1] > 0.5
    streams.close()
    logged = read_stream(streams.root, "training_metrics")
    assert logged.height == history.height and set(logged["split"]) == {"train", "valid"}
    assert logged["grad_norm"].drop_nulls().min() > 0

    before = model.predict_proba(batch)
    saved = model.save(tmp_path / "saved")
    assert (saved.parent / "adapter" / "adapter_model.safetensors").is_file()
    loaded = load_model(tmp_path / "saved")
    assert isinstance(loaded, VisionLanguageSignalModel) and loaded._model is None
    np.testing.assert_array_equal(loaded.predict_proba(batch), before)
    assert loaded.has_adapter
    inputs = model._encode(model.prompts(batch), [_pil(i) for i in batch.images])
    with torch.no_grad():
        np.testing.assert_array_equal(
            loaded.model(**inputs).logits.numpy(), model.model(**inputs).logits.numpy()
        )

    answers = [json.loads(a) for a in loaded.explain(batch.take([0, 1]))]
    assert [a["signal"] for a in answers] == [CLASSES[int(np.argmax(p))] for p in before[:2]]
    assert all(isinstance(a["reasoning"], str) and 0 <= a["confidence"] <= 1 for a in answers)


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(llava_dir, tmp_path) -> None:
    data = _samples(6, seed=2)
    straight = _model(llava_dir, max_steps=4)
    straight.fit(data, data.take([]))
    first = _model(llava_dir, max_steps=2, checkpoint_every=1, checkpoint_dir=tmp_path / "ck")
    first.fit(data, data.take([]))
    assert latest_checkpoint(tmp_path / "ck").name == "step-00000002"
    resumed = _model(llava_dir, max_steps=4, checkpoint_every=2, checkpoint_dir=tmp_path / "ck")
    report = resumed.fit(data, data.take([]))
    assert report.history["step"].to_list() == [1, 2, 3, 4]
    assert latest_checkpoint(tmp_path / "ck").name == "step-00000004"
    a = {n: p for n, p in straight.model.named_parameters() if "lora_" in n}
    b = {n: p for n, p in resumed.model.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert not torch.equal(a[name], torch.zeros_like(a[name]))


def test_merge_keeps_predictions_and_saves_a_full_model(llava_dir, tmp_path) -> None:
    data = _samples(5, seed=3)
    model = _model(llava_dir, max_steps=3)
    model.fit(data, data.take([]))
    before = model.predict_proba(data)
    model.merge()
    assert model.merged and not any("lora_" in n for n, _ in model.model.named_parameters())
    np.testing.assert_allclose(model.predict_proba(data), before, atol=1e-5)
    model.save(tmp_path / "merged")
    assert (tmp_path / "merged" / "model" / "model.safetensors").is_file()
    # merged weights are folded in memory and reloaded contiguous: same values, other kernels
    np.testing.assert_allclose(
        load_model(tmp_path / "merged").predict_proba(data), model.predict_proba(data), atol=1e-6
    )


# -- (b) MiniCPM-V 4.6 -------------------------------------------------------------------------


def _tiny_minicpmv46():
    config = transformers.MiniCPMV4_6Config(
        text_config={
            "model_type": "qwen3_5_text",
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 2,
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            "layer_types": ["linear_attention", "full_attention"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
        },
        insert_layer_id=0,
        image_token_id=5,
    )
    torch.manual_seed(0)
    return transformers.MiniCPMV4_6ForConditionalGeneration(config).eval()


def _minicpm_inputs(n: int, pad: int = 0) -> dict:
    """NaViT-packed pixels as the MiniCPM-V processor lays them out: each 32x32 image is a 4x4
    patch grid -> 2x2 after the ViT merger -> 1 token after the 2x2 merger."""
    patch, side = 8, 32
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, side, side, generator=generator)
    grid = side // patch
    packed = [
        img.reshape(3, grid, patch, grid, patch).permute(0, 2, 1, 3, 4).reshape(3, patch, -1)
        for img in images
    ]
    ids = torch.randint(10, 64, (n, 8), generator=generator)
    ids[:, 4] = 5  # one image placeholder per row, after any left padding
    mask = torch.ones_like(ids)
    if pad:
        ids[0, :pad], mask[0, :pad] = 0, 0  # left padding
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.cat(packed, dim=-1)[None],
        "target_sizes": torch.tensor([[grid, grid]] * n),
    }


def test_minicpmv46_lora_targets_loss_and_label_scoring() -> None:
    model = _tiny_minicpmv46()
    targets = language_lora_targets(model)
    assert targets and all(".language_model." in name for name in targets)
    assert any(name.endswith("linear_attn.in_proj_qkv") for name in targets)
    assert any(name.endswith("self_attn.q_proj") for name in targets)
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_PROJECTION_PATTERN)
    )
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in wrapped.named_modules() if ".lora_A" in n}
    assert adapted and not any(VISION_PATH.search(name) for name in adapted)

    inputs = _minicpm_inputs(2)
    out = wrapped(
        **inputs, labels=answer_labels(inputs["input_ids"], inputs["attention_mask"], [3, 3])
    )
    assert torch.isfinite(out.loss)
    out.loss.backward()
    with_grad = {n for n, p in wrapped.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any(
        "lora_B" in n and p.grad.abs().sum() > 0
        for n, p in wrapped.named_parameters()
        if p.grad is not None
    )

    proba = score_labels(wrapped, _minicpm_inputs(2, pad=2), [20, 21, 22])
    assert proba.shape == (2, 3)
    torch.testing.assert_close(proba.sum(-1), torch.ones(2))
    bad = _minicpm_inputs(2)
    bad["attention_mask"][0, -1] = 0
    with pytest.raises(ValueError, match="left padding"):
        score_labels(wrapped, bad, [20, 21, 22])


# -- pattern questions --------------------------------------------------------------------------


def test_pattern_answers_are_single_tokens_and_the_question_names_the_pattern(llava_dir) -> None:
    model = _model(llava_dir)
    answers = model.answer_tokens
    # this byte-level BPE merges the space into the word: the second candidate is taken
    assert answers.prefill == "Answer:" and answers.answers == (" yes", " no")
    tokenizer = model.processor.tokenizer
    for word, token in zip(answers.answers, answers.token_ids, strict=True):
        assert tokenizer.decode([token]) == word
    text = model.pattern_prompts(["pat_bullish_engulfing"])[0]
    assert text.startswith("USER: <image>\n") and text.endswith("ASSISTANT: Answer:")
    assert "Is there a bullish engulfing pattern at the last candle?" in text
    # the signal prompt is unchanged by the option
    assert model.prompts(_samples(1))[0].endswith('ASSISTANT: {"signal": "')
    without = _train_tokenizer(["chart rsi close values"] * 5)
    with pytest.raises(ConfigError, match="yes/no"):
        find_answer_tokens(without)


def test_pattern_question_choice_is_seeded_balanced_and_skips_unknown_flags() -> None:
    flags = np.zeros((400, 6))
    flags[:, 0] = 1.0  # one present pattern among six: balance must not follow the base rate
    flags[:5] = np.nan  # detectors still warming up: never asked
    flags[5, 1] = np.nan
    chosen = choose_pattern_questions(flags, 2, np.random.default_rng(7))
    assert chosen == choose_pattern_questions(flags, 2, np.random.default_rng(7))
    assert len(chosen) == 2 * 395 and all(row >= 5 for row, _, _ in chosen)
    assert all(present == (flags[row, col] == 1.0) for row, col, present in chosen)
    share = np.mean([present for _, _, present in chosen])
    assert 0.4 < share < 0.6
    assert {col for _, col, present in chosen if not present} == {1, 2, 3, 4, 5}
    assert (5, 1, False) not in chosen
    only_absent = choose_pattern_questions(np.zeros((3, 2)), 1, np.random.default_rng(0))
    assert [present for _, _, present in only_absent] == [False] * 3


def _pattern_bce(model: VisionLanguageSignalModel, samples: SampleSet) -> float:
    p = np.clip(model.predict_pattern_proba(samples), 1e-7, 1 - 1e-7)
    y = samples.patterns()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_pattern_proba_shape_batching_and_scoring(llava_dir: str) -> None:
    samples = _samples(3, patterns=True)
    model = _model(llava_dir)
    model.batch_size = 4  # 9 questions: 4 + 4 + 1
    proba = model.predict_pattern_proba(samples)
    assert proba.shape == (3, len(PATTERNS)) and ((proba >= 0) & (proba <= 1)).all()
    model.batch_size = 1
    np.testing.assert_allclose(model.predict_pattern_proba(samples), proba, atol=1e-5)
    # cell (i, j) is the yes/no softmax after the question about pattern j on image i
    inputs = model._encode(model.pattern_prompts([PATTERNS[2]]), [_pil(samples.images[1])])
    logits = model.model(**inputs).logits[0, -1, list(model.answer_tokens.token_ids)]
    expected = torch.softmax(logits, -1)[0].item()
    assert proba[1, 2] == pytest.approx(expected, abs=1e-5)
    assert model.predict_pattern_proba(_samples(2)).shape == (2, 0)

    report = pattern_recognition_report(samples.patterns(), proba, samples.pattern_names)
    assert report["pattern"].to_list() == list(PATTERNS)
    assert report["support"].to_list() == samples.patterns().sum(axis=0).astype(int).tolist()


def test_fit_with_pattern_questions_lowers_their_loss_and_reloads(llava_dir, tmp_path) -> None:
    batch = _samples(6, seed=4, patterns=True)
    model = _model(
        llava_dir, max_steps=10, batch_size=6, learning_rate=2e-2, pattern_questions_per_sample=2
    )
    questions = model._pattern_questions(batch, 0)
    inputs = model._training_batch(batch, questions)
    assert inputs["input_ids"].shape[0] == 6 + 12 and len(inputs["_label_positions"]) == 6
    # a pattern row's loss is on its one answer token only
    assert ((inputs["labels"][6:] != -100).sum(dim=1) == 1).all()
    before = _pattern_bce(model, batch)
    model.fit(batch, batch)
    after = _pattern_bce(model, batch)
    assert after < 0.85 * before

    proba = model.predict_pattern_proba(batch)
    model.save(tmp_path / "saved")
    info = json.loads((tmp_path / "saved" / "model.json").read_text())
    assert info["pattern_question"] is True and info["answer_tokens"]["answers"] == [" yes", " no"]
    loaded = load_model(tmp_path / "saved")
    assert loaded.pattern_question
    np.testing.assert_array_equal(loaded.predict_pattern_proba(batch), proba)
    report = pattern_recognition_report(batch.patterns(), proba, batch.pattern_names)
    assert report.height == len(PATTERNS) and report["n"].to_list() == [6] * len(PATTERNS)


def test_pattern_question_off_trains_on_the_signal_only_and_is_restored(llava_dir, tmp_path):
    batch = _samples(4, seed=5, patterns=True)
    model = VisionLanguageSignalModel(
        llava_dir, progress=False, pattern_question=False, train=VlmTrainConfig(max_steps=1)
    )
    assert model._pattern_questions(batch, 0) == []
    before = model.predict_pattern_proba(batch)
    model.fit(batch, batch.take([]))
    model.save(tmp_path / "off")
    loaded = load_model(tmp_path / "off")
    assert loaded.pattern_question is False
    np.testing.assert_array_equal(
        loaded.predict_pattern_proba(batch), model.predict_pattern_proba(batch)
    )
    assert before.shape == (4, len(PATTERNS))
