"""VIRAL: the alignment term, its head and teacher, on any stage."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoModel,
    LlavaForConditionalGeneration,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from pivotlab.errors import PivotlabError
from pivotlab.io import read_jsonl
from pivotlab.model import load
from pivotlab.train import ConfigError, run_stage
from pivotlab.train.viral import (
    ViralError,
    alignment_loss,
    image_stats,
    load_teacher,
    resolve_layer,
)
from tests.train.conftest import tiny_config

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SigLIP teacher at 48 px with a 6x6 grid and ImageNet statistics: both its input
    size, its grid and its normalisation differ from the 32-px test MLLM's."""
    out = tmp_path_factory.mktemp("teacher") / "vfm"
    torch.manual_seed(7)
    config = SiglipVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        image_size=48, patch_size=8,
    )  # fmt: skip
    SiglipVisionModel(config).save_pretrained(out)
    SiglipImageProcessor(
        size={"height": 48, "width": 48}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).save_pretrained(out)
    return out


def viral(teacher_dir: Path, *more: str) -> list[str]:
    return ["viral.enabled=true", f"viral.teacher={teacher_dir}", "viral.head_width=32", *more]


def test_layer_by_index_or_fraction_of_depth() -> None:
    assert resolve_layer(0.5, 32) == 16
    assert resolve_layer(0.5, 4) == 2
    assert resolve_layer(3, 4) == 3
    for bad in (0, 5, 2.5):
        with pytest.raises(ViralError, match=r"viral\.layer"):
            resolve_layer(bad, 4)


def test_alignment_loss_is_one_minus_cosine_over_full_grids() -> None:
    targets = torch.randn(3, 4, 6)
    hidden = torch.zeros(3, 7, 6)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 1:5] = True  # sample 0: its 4 patches
    hidden[0, 1:5] = targets[0]
    mask[1, 1:6] = True  # sample 1: a CLS-like token first, then its 4 patches
    hidden[1, 2:6] = -targets[1]
    mask[2, 1:3] = True  # sample 2: cut to 2 tokens, left out
    loss, counted = alignment_loss(hidden, mask, targets, nn.Identity())
    assert counted == 2
    assert math.isclose(loss.item(), (0.0 + 2.0) / 2, abs_tol=1e-6)


def test_teacher_sees_pixels_normalised_its_own_way(tiny_model_dir: Path, teacher_dir) -> None:
    model, processor = load(tiny_model_dir)
    teacher = load_teacher(str(teacher_dir), model, processor, cache=False)
    image = Image.new("RGB", (48, 48), (200, 40, 90))
    own = SiglipImageProcessor.from_pretrained(teacher_dir)(image, return_tensors="pt")
    mllm = processor.image_processor(image, return_tensors="pt").pixel_values
    converted = teacher._pixels(mllm, *image_stats(processor.image_processor))
    torch.testing.assert_close(converted, own.pixel_values, atol=1e-5, rtol=0)


def test_cached_teacher_features_equal_fresh_ones(tiny_model_dir: Path, teacher_dir) -> None:
    model, processor = load(tiny_model_dir)
    pixels = torch.randn(3, 3, 32, 32)
    pixels[2] = pixels[0]  # a repeated image (DPO's chosen and rejected share it)
    stats = image_stats(processor.image_processor)
    fresh = load_teacher(str(teacher_dir), model, processor, cache=False).features(
        pixels, *stats, 4
    )
    cached_teacher = load_teacher(str(teacher_dir), model, processor, cache=True)
    first = cached_teacher.features(pixels, *stats, 4)
    assert len(cached_teacher.cache) == 2
    torch.testing.assert_close(first, fresh)
    torch.testing.assert_close(cached_teacher.features(pixels, *stats, 4), fresh)


@pytest.fixture(scope="module")
def viral_full(preset, teacher_dir, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("viral") / "full"
    cfg = tiny_config("full", preset, *viral(teacher_dir), "train.steps=6", "train.save_steps=3")
    return out, run_stage(cfg, out)


@pytest.mark.trains
def test_alignment_is_logged_beside_the_objective_and_falls(viral_full) -> None:
    out, _ = viral_full
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
    alignment = [r["value"] for r in rows if r["metric"] == "alignment_loss"]
    objective = {r["step"]: r["value"] for r in rows if r["metric"] == "objective_loss"}
    total = {r["step"]: r["value"] for r in rows if r["metric"] == "loss"}
    assert len(alignment) == 6
    assert alignment[-1] < alignment[0]
    for step, value in objective.items():  # total = objective + 0.5 * alignment
        index = sorted(objective).index(step)
        assert math.isclose(total[step], value + 0.5 * alignment[index], rel_tol=1e-6)


@pytest.mark.trains
def test_head_trains_teacher_stays_the_checkpoint_and_final_has_no_head(
    viral_full, teacher_dir
) -> None:
    out, result = viral_full
    assert "align_head" in (out / "parts.txt").read_text()
    checkpoint = load_file(out / "checkpoint-3" / "model.safetensors")
    later = load_file(out / "checkpoint-6" / "model.safetensors")
    heads = [k for k in checkpoint if k.startswith("align_head.")]
    assert heads and any(not torch.equal(checkpoint[k], later[k]) for k in heads)
    final = load_file(result.final / "model.safetensors")
    assert not any(k.startswith("align_head") for k in final)
    LlavaForConditionalGeneration.from_pretrained(result.final)  # a plain MLLM again


def test_teacher_is_frozen_outside_the_model_and_exactly_as_saved(
    preset, teacher_dir, tmp_path
) -> None:
    from pivotlab.train.stages import initial_model, prepare_viral

    cfg = tiny_config("full", preset, *viral(teacher_dir))
    model, processor = initial_model(cfg)
    teacher, layer = prepare_viral(cfg, model, processor)
    assert layer == 1  # half of the tiny LM's 2 blocks
    saved = AutoModel.from_pretrained(teacher_dir).state_dict()
    for name, tensor in teacher.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert not any(p.requires_grad for p in teacher.model.parameters())
    model_parameters = {id(p) for p in model.parameters()}
    assert not any(id(p) in model_parameters for p in teacher.model.parameters())
    assert all(p.requires_grad for p in model.align_head.parameters())


@pytest.mark.trains
def test_dpo_with_viral_logs_both_terms(preset, teacher_dir, tmp_path) -> None:
    cfg = tiny_config("post-dpo", preset, *viral(teacher_dir, "viral.teacher=self"))
    result = run_stage(cfg, tmp_path / "dpo")
    metrics = {r["metric"] for r in read_jsonl(tmp_path / "dpo" / "metrics.jsonl")}
    assert {"alignment_loss", "objective_loss", "rewards/accuracies"} <= metrics
    assert result.summary["steps"] == 3


def test_the_dpo_reference_has_no_head(preset, teacher_dir, splits) -> None:
    from pivotlab.train.arguments import process_state, trl_arguments
    from pivotlab.train.stage_data import resolve_split, stage_records, trl_dataset
    from pivotlab.train.stages import initial_model, prepare_viral, stage_trainer

    cfg = tiny_config("post-dpo", preset, *viral(teacher_dir), "post.reference_cache=false")
    model, processor = initial_model(cfg)
    prepare_viral(cfg, model, processor)
    records = stage_records(cfg, resolve_split(cfg.data.train_split))[:4]
    data = trl_dataset(records, splits[0], stage="post", order=list(range(4)))
    out = splits[0].parent / "viral-ref"
    process_state(cfg)
    args = trl_arguments(cfg, out, 1, 1)
    trainer = stage_trainer(cfg, model, processor, args, data, None, out)
    assert hasattr(trainer.model, "align_head")
    assert not hasattr(trainer.ref_model, "align_head")


@pytest.mark.trains
def test_resume_restores_the_head(viral_full, preset, teacher_dir, tmp_path) -> None:
    whole, result = viral_full
    stopped = tmp_path / "stopped"
    shutil.copytree(whole, stopped)
    for later in ("final", "checkpoint-6", "summary.json"):
        path = stopped / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    cfg = tiny_config("full", preset, *viral(teacher_dir), "train.steps=6", "train.save_steps=3")
    resumed = run_stage(cfg, stopped)
    assert resumed.summary["resumed_from"].endswith("checkpoint-3")
    a = load_file(result.final / "model.safetensors")
    b = load_file(resumed.final / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_bad_viral_settings_are_one_line_errors(preset, teacher_dir, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"viral\.weight must be positive"):
        tiny_config("full", preset, *viral(teacher_dir, "viral.weight=0"))
    with pytest.raises(ViralError, match=r"viral\.layer 7"):
        run_stage(tiny_config("full", preset, *viral(teacher_dir, "viral.layer=7")), tmp_path / "a")
    with pytest.raises(PivotlabError, match=r"viral\.teacher: no preset or folder named"):
        run_stage(tiny_config("full", preset, *viral(tmp_path / "nowhere")), tmp_path / "b")
