"""MiniCPM-V 4.6 at real size, the CPU side: the released config from the repo, the memory plan,
the random-weight model folders, the fixes the real shape needed, and the prepared GPU script
(benchmarks/bench_vlm.py) run end to end at the reduced shape.

Every model here is built offline from ``aiopt_lib/models/configs/minicpmv46/config.json``: the
real size only on the meta device (nothing allocated), the reduced shape (2 language layers, a
2-layer vision tower) with real random weights, saved and loaded through the public path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from aiopt_lib.models import load_model  # noqa: E402
from aiopt_lib.models import processors as processors_module  # noqa: E402
from aiopt_lib.models.architectures import (  # noqa: E402
    REDUCED_OVERRIDES,
    build_random_model,
    is_random_weights,
    parameter_count,
    released_config,
    released_config_path,
    released_values,
)
from aiopt_lib.models.memory import (  # noqa: E402
    architecture_sizes,
    format_memory_plan,
    image_tokens,
    memory_plan,
)
from aiopt_lib.models.vision_attention import (  # noqa: E402
    BATCHED_VARLEN,
    use_batched_vision_attention,
)
from aiopt_lib.models.vlm import (  # noqa: E402
    VisionLanguageSignalModel,
    VlmTrainConfig,
    answer_forward,
    last_positions_logits,
    score_labels,
)

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_vlm.py"
RELEASED_PARAMETERS = 1_300_428_016  # the checkpoint's published safetensors count

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reduced_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reduced architecture with random weights, saved as the hub checkpoint is laid out."""
    return build_random_model(
        tmp_path_factory.mktemp("minicpmv46") / "model",
        released_config(shape="reduced"),
        image_resolution=112,
    )


def _charts(n: int, seed: int = 0, side: int = 112):
    """Random charts with a label and the default prompt features (a SampleSet)."""
    import datetime as dt

    import polars as pl

    from aiopt_lib.features.labels import CLASSES, LABEL_DTYPE
    from aiopt_lib.models.base import SampleSet

    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "sample_id": np.arange(n),
            "ts": [dt.datetime(2017, 3, 1, i % 24, tzinfo=dt.UTC) for i in range(n)],
            "ret_1": rng.normal(0, 1e-3, n),
            "rsi_14": rng.uniform(0, 100, n).round(int(rng.integers(0, 4))),
            "label": pl.Series([CLASSES[i % 2] for i in range(n)], dtype=LABEL_DTYPE),
        }
    )
    images = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    return SampleSet(samples=frame, feature_names=("ret_1", "rsi_14"), images=images)


def _model(folder: Path, **train: object) -> VisionLanguageSignalModel:
    settings = {"lora_dropout": 0.0, "batch_size": 2, "lora_r": 16, **train}
    return VisionLanguageSignalModel(
        folder, progress=False, pattern_question=False, train=VlmTrainConfig(**settings)
    )


# -- the released config ------------------------------------------------------------------------


def test_released_config_is_the_published_architecture() -> None:
    path = released_config_path("minicpmv46")
    assert path.is_file() and (path.parent / "SOURCES.md").is_file()
    assert path.is_relative_to(ROOT / "aiopt_lib")  # package data: it ships with the library
    config = released_config()
    assert type(config).__name__ == "MiniCPMV4_6Config"
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (1024, 3584, 24)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (8, 2, 256)
    assert text.vocab_size == 248_094 and text.max_position_embeddings == 262_144
    assert (
        text.layer_types
        == ["linear_attention"] * 3
        + ["full_attention"]
        + (["linear_attention"] * 3 + ["full_attention"]) * 5
    )
    assert (text.linear_num_key_heads, text.linear_key_head_dim) == (16, 128)
    assert text.rope_parameters["rope_theta"] == 10_000_000
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) == (
        1152,
        4304,
        27,
    )
    assert (vision.num_attention_heads, vision.patch_size, vision.image_size) == (16, 14, 980)
    assert config.insert_layer_id == vision.insert_layer_id == 6
    assert config.tie_word_embeddings and config.image_token_id == 248_056
    # the whole architecture, counted on the meta device, is the published checkpoint's size
    assert parameter_count(config) == RELEASED_PARAMETERS


def test_reduced_shape_changes_only_the_sizes() -> None:
    real, reduced = released_values(), released_values(shape="reduced")
    changed = {k for k in reduced if reduced[k] != real[k]}
    assert changed == {"insert_layer_id", "vision_config", "text_config"}
    for part in ("text_config", "vision_config"):
        differs = {k for k in reduced[part] if reduced[part][k] != real[part][k]}
        assert differs == set(REDUCED_OVERRIDES["minicpmv46"][part])
    config = released_config(shape="reduced")
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.num_hidden_layers == 2
    assert config.text_config.rope_parameters == released_config().text_config.rope_parameters
    assert parameter_count(config) < 1_000_000


# -- the memory plan ---------------------------------------------------------------------------


def test_memory_plan_scales_with_the_batch_and_checkpointing() -> None:
    config = released_config()
    sizes = architecture_sizes(config, lora_r=16)
    assert sizes.total == RELEASED_PARAMETERS
    assert sizes.language + sizes.vision == sizes.total and sizes.embedding == 248_094 * 1024
    patches, tokens = image_tokens(config, 448)
    assert (patches, tokens) == (1024, 64)
    plan = memory_plan(config, (8, 16, 32), seq_tokens=280, image_patches=patches, sizes=sizes)
    assert plan.height == 6 and plan["fits"].all()
    off = plan.filter(~plan["gradient_checkpointing"])
    on = plan.filter(plan["gradient_checkpointing"])
    for column in ("parameters_gib", "lora_gib", "gradients_gib", "optimizer_gib"):
        assert plan[column].n_unique() == 1  # independent of the batch
    assert plan["parameters_gib"][0] == pytest.approx(RELEASED_PARAMETERS * 2 / 2**30)
    assert plan["optimizer_gib"][0] == pytest.approx(2 * plan["lora_gib"][0])  # AdamW: 2 moments
    for frame in (off, on):
        activations = frame["activations_gib"].to_numpy()
        np.testing.assert_allclose(activations / activations[0], [1, 2, 4])  # linear in batch
    assert (on["activations_gib"] < off["activations_gib"] / 5).all()
    assert (plan["logits_gib"] < plan["full_logits_gib"] / 50).all()
    parts = plan.select(
        "parameters_gib",
        "lora_gib",
        "gradients_gib",
        "optimizer_gib",
        "activations_gib",
        "vision_working_set_gib",
        "logits_gib",
    ).sum_horizontal()
    np.testing.assert_allclose(parts.to_numpy(), plan["total_gib"].to_numpy())
    assert not memory_plan(config, (32,), seq_tokens=280, device_gib=4, sizes=sizes)["fits"][0]
    text = format_memory_plan(plan)
    assert text.count("\n") == 6 and "yes" in text


def test_plan_counts_equal_a_built_model(reduced_dir: Path) -> None:
    sizes = architecture_sizes(released_config(shape="reduced"), lora_r=16)
    model = _model(reduced_dir)
    assert sum(p.numel() for p in model.model.parameters()) == sizes.total
    wrapped = model._peft_model()
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == sizes.lora
    assert all(p.dtype == torch.float32 for n, p in wrapped.named_parameters() if "lora_" in n)


def test_activation_estimate_is_near_what_autograd_keeps(reduced_dir: Path) -> None:
    """The formula against the bytes of the tensors autograd saves for the backward pass."""
    config = released_config(shape="reduced")
    model = _model(reduced_dir)
    wrapped = model._peft_model()
    wrapped.train()
    measured = {}
    for batch in (2, 4):
        inputs = model._training_batch(_charts(batch))
        inputs.pop("_label_positions")
        storages: dict[int, int] = {}

        def keep(tensor, storages=storages):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            loss, _, _ = answer_forward(wrapped, inputs)
        loss.backward()
        plan = memory_plan(
            config,
            (batch,),
            seq_tokens=inputs["input_ids"].shape[1],
            dtype="float32",
            gradient_checkpointing=(False,),
        )
        estimate = (plan["activations_gib"][0] + plan["logits_gib"][0]) * 2**30
        measured[batch] = sum(storages.values())
        assert 0.5 < measured[batch] / estimate < 2.0
    assert measured[4] / measured[2] == pytest.approx(2.0, rel=0.15)


# -- the model folder and the fixes the real shape needed ----------------------------------------


def test_random_model_folder_loads_through_the_public_path(reduced_dir: Path, tmp_path) -> None:
    names = {p.name for p in reduced_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "random_weights.json",
    } <= names
    assert json.loads((reduced_dir / "preprocessor_config.json").read_text())[
        "processor_class"
    ] == ("MiniCPMV4_6Processor")
    assert is_random_weights(reduced_dir) and not is_random_weights(tmp_path)
    model = _model(reduced_dir)
    assert model.label_tokens.labels == ("BUY", "SELL", "HOLD")
    assert model.answer_tokens.answers == (" yes", " no")
    text = model.prompts(_charts(1))[0]
    assert text.startswith("<|im_start|>user\n<|image_pad|>\nThe image is a EUR/USD")
    assert text.endswith('<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n{"signal": "')
    proba = model.predict_proba(_charts(3))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    model.save(tmp_path / "saved")
    assert is_random_weights(tmp_path / "saved")
    loaded = load_model(tmp_path / "saved")
    np.testing.assert_array_equal(loaded.predict_proba(_charts(3)), proba)


def test_processor_without_torchvision_packs_and_left_pads(reduced_dir, monkeypatch) -> None:
    """MiniCPM-V 4.6's processor needs torchvision for its video half: without it, the image
    part of the released class is built from the same files."""
    monkeypatch.setattr(processors_module, "_torchvision_available", lambda: False)
    processor = processors_module.load_processor(reduced_dir)
    assert type(processor).__name__ == "ImageOnlyMiniCPMV46Processor"
    assert isinstance(processor, transformers.MiniCPMV4_6Processor)
    assert processor.image_token == "<|image_pad|>"
    from PIL import Image

    images = [Image.fromarray(image) for image in _charts(2).images]
    texts = ["<|image_pad|>\nshort", "<|image_pad|>\na longer text than the first one"]
    batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and batch["target_sizes"].tolist() == [[8, 8]] * 2
    assert batch["pixel_values"].shape == (1, 3, 14, 2 * 64 * 14)  # NaViT: one packed row
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_token).sum(dim=1).tolist() == [4, 4]
    with pytest.raises(ValueError, match="video"):
        processor(images=images, text=texts, videos=[np.zeros((2, 3, 8, 8))])
    # a torchvision that is there but fails (here: absent although said present): a warning
    monkeypatch.setattr(processors_module, "_torchvision_available", lambda: True)
    with pytest.warns(UserWarning, match="image-only"):
        fallback = processors_module.load_processor(reduced_dir)
    assert type(fallback).__name__ == "ImageOnlyMiniCPMV46Processor"
    processor.save_pretrained(reduced_dir.parent / "processor-copy")
    again = processors_module.load_processor(reduced_dir.parent / "processor-copy")
    assert again(images=images, text=texts, padding=True, return_tensors="pt")[
        "input_ids"
    ].tolist() == (batch["input_ids"].tolist())


def test_answer_forward_is_the_models_loss_from_the_answer_positions_only(reduced_dir) -> None:
    """The 248k-token output layer runs on the answer window, not on every position."""
    model = _model(reduced_dir)
    inputs = model._training_batch(_charts(3))
    inputs.pop("_label_positions")
    with torch.no_grad():
        full = model.model(**inputs, use_cache=False)
        loss, logits, offset = answer_forward(model.model, inputs)
    width = inputs["input_ids"].shape[1]
    assert logits.shape[1] == width - offset < 6  # '{"signal": "' -> label, '"}', end
    torch.testing.assert_close(loss, full.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits, full.logits[:, offset:], rtol=1e-5, atol=1e-5)
    # gradients flow as through the model's own loss
    wrapped = model._peft_model()
    wrapped.train()
    loss, _, _ = answer_forward(wrapped, inputs)
    loss.backward()
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_scoring_runs_the_output_layer_on_the_last_position(reduced_dir) -> None:
    model = _model(reduced_dir)
    inputs = model._encode(model.prompts(_charts(2)), [_pil(i) for i in _charts(2).images])
    with torch.no_grad(), last_positions_logits(model.model, 1) as kept:
        short = model.model(**inputs, use_cache=False).logits
    assert kept and short.shape[1] == 1
    with torch.no_grad():
        full = model.model(**inputs, use_cache=False).logits  # the hook is gone again
    assert full.shape[1] == inputs["input_ids"].shape[1]
    ids = list(model.label_tokens.token_ids)
    expected = torch.softmax(full[:, -1, ids].float(), -1)
    torch.testing.assert_close(score_labels(model.model, inputs, ids), expected)


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)


def test_vision_attention_in_one_call_per_length_equals_the_per_window_loop(
    reduced_dir, monkeypatch
) -> None:
    model = _model(reduced_dir).model
    vision = model.config.vision_config
    assert vision._attn_implementation == BATCHED_VARLEN  # switched at load
    from PIL import Image

    processor = processors_module.load_processor(reduced_dir)
    images = [_pil(i) for i in _charts(3).images] + [Image.new("RGB", (224, 112), "white")]
    batch = processor(images=images, text=["<|image_pad|>"] * 4, return_tensors="pt")
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    results = {}
    for implementation in ("sdpa", BATCHED_VARLEN):
        vision._attn_implementation = implementation
        calls.clear()
        with torch.no_grad():
            features = model.model.get_image_features(
                batch["pixel_values"], batch["target_sizes"]
            ).pooler_output
        results[implementation] = (features, len(calls))
    (loop, loop_calls), (batched, batched_calls) = results["sdpa"], results[BATCHED_VARLEN]
    assert len(loop) == len(batched) > 4  # the wide image has slices besides its overview
    for a, b in zip(loop, batched, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # 3 charts of 64 patches and a wider image (overview and slices): per image and per 2x2
    # window, against one call per distinct length and layer
    assert loop_calls > 4 * 16 and batched_calls <= 6  # 104 and 5 here
    vision._attn_implementation = "sdpa"
    assert use_batched_vision_attention(model) and vision._attn_implementation == BATCHED_VARLEN
    vision._attn_implementation = "flash_attention_2"
    assert not use_batched_vision_attention(model)  # real flash attention is left alone


def test_fit_with_checkpointing_leaves_the_embeddings_without_grad(reduced_dir) -> None:
    model = _model(reduced_dir, max_steps=1, gradient_checkpointing=True)
    model.fit(_charts(2), _charts(0))
    embeddings = model.model.get_input_embeddings()
    out = embeddings(torch.tensor([[1, 2]]))
    assert not out.requires_grad


def test_bf16_weights_train_with_checkpointing_and_score_on_the_cpu(reduced_dir) -> None:
    """The GPU's dtypes (bf16 weights, float32 LoRA, checkpointing), rehearsed on the CPU."""
    model = VisionLanguageSignalModel(
        reduced_dir,
        dtype="bfloat16",
        progress=False,
        pattern_question=False,
        train=VlmTrainConfig(
            max_steps=3, batch_size=4, learning_rate=2e-2, gradient_checkpointing=True
        ),
    )
    history = model.fit(_charts(8), _charts(0)).history
    losses = history["loss"].to_numpy()
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    weights = {p.dtype for n, p in model.model.named_parameters() if "lora_" not in n}
    assert weights == {torch.bfloat16}
    proba = model.predict_proba(_charts(3))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


# -- the prepared GPU script at the reduced shape -------------------------------------------------


def _bench(tmp_path: Path, *args: str, timeout: int = 300) -> tuple[str, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


def test_prepared_script_runs_end_to_end_at_the_reduced_shape(tmp_path) -> None:
    stdout, result = _bench(tmp_path, "--shape", "reduced", "--out", str(tmp_path / "out"))
    assert stdout.startswith("memory plan, reduced MiniCPM-V 4.6") and "fits" in stdout
    assert result["benchmark"] == "vlm_minicpmv46_lora" and result["shape"] == "reduced"
    assert result["value"] is None and "reduced shape" in result["reason"]
    assert result["goal"] == {"mfu_percent": 40.0, "charts_per_s": 200.0}
    assert len(result["memory_plan"]) == 4 and all(row["fits"] for row in result["memory_plan"])
    learning = result["learning"]
    assert learning["loss_fell"] and learning["last_losses_mean"] < learning["first_losses_mean"]
    assert learning["text_shortcut_agreement"] > 0.9  # the target is in the prompt too
    assert result["reload_identical"] and result["reload_max_abs_diff"] == 0.0
    assert result["resume_matches"] and result["resume_max_abs_diff"] < 1e-5
    assert [(r["batch_size"], r["gradient_checkpointing"]) for r in result["train"]] == [
        (2, False),
        (2, True),
        (4, False),
        (4, True),
    ]
    for row in result["train"]:
        assert row["samples_per_s"] > 0 and row["tokens_per_s"] > row["samples_per_s"]
        assert row["mfu_percent"] is None and row["plan_total_gib"] is not None
    assert set(result["scoring"]) == {"1", "2"}
    assert all(v["charts_per_s"] > 0 and v["p50_ms"] > 0 for v in result["scoring"].values())
    assert result["image_tokens_per_chart"] == 4 and result["tokens_per_sample"] > 100
    assert set(result["kernels"]) == {"gated_delta_rule", "causal_conv1d", "vision_processor"}
    assert result["notebook"] is None
    assert (tmp_path / "out" / "saved" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without CUDA")
def test_prepared_script_without_cuda_prints_the_real_plan_and_null(tmp_path) -> None:
    stdout, result = _bench(tmp_path, "--shape", "real", timeout=180)
    assert "memory plan, real MiniCPM-V 4.6" in stdout
    assert result["value"] is None and "no CUDA" in result["reason"]
    assert result["params_total"] == RELEASED_PARAMETERS and result["released_params_match"]
    assert result["image_tokens_per_chart"] == 64 and result["vision_patches_per_chart"] == 1024
    assert len(result["memory_plan"]) == 6 and all(row["fits"] for row in result["memory_plan"])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_prepared_script_runs_notebook_03_with_the_vlm_row(tmp_path) -> None:
    """Notebook 03, backend vlm, on the saved random model: its table has the VLM row, and the
    page says that with random weights the row is near chance (about 80 s on 2 cores)."""
    _, result = _bench(
        tmp_path, "--shape", "reduced", "--notebook", "--out", str(tmp_path / "out"), timeout=600
    )
    notebook = result["notebook"]
    assert notebook["vlm_row"] and notebook["says_random_weights"]
    assert {"majority", "logistic (features)", "compact (chart + indicators)"} <= set(
        notebook["models"]
    )
    assert "vision-language (LoRA)" in notebook["models"]
    assert notebook["vlm_log_loss"] > 0 and 0 <= notebook["vlm_accuracy"] <= 1
