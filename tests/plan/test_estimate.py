"""``estimate`` end to end: the plan of a stage config agrees with the model it will load,
the stage's own step rule, and the hand arithmetic of FLOPs to GPU-hours; the CLI prints it
and reports unusable input as one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from pivotlab.cli import main
from pivotlab.io import read_jsonl
from pivotlab.model import load, parts_table
from pivotlab.plan import PlanError, PlanOptions, estimate
from pivotlab.plan.architectures import resolve
from pivotlab.plan.flops import Sequence, count, mllm_ops
from pivotlab.plan.shapes import head_parameters, vision_shape
from pivotlab.train import load_config
from pivotlab.world import WorldConfig, generate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER_STACK = {"vision": "google/siglip2-so400m-patch16-384", "lm": "Qwen/Qwen2.5-1.5B-Instruct"}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan-world") / "train"
    generate(WorldConfig(split="train", n=12, seed=1, size=32, probe_n=0), out)
    return out


def _tiny(name: str, model: Path, split: Path, *overrides: str):
    return load_config(
        CONFIGS / "tiny" / f"{name}.yaml",
        [
            f"model.init={model}",
            f"data.train={split}",
            f"data.eval={split}",
            "train.batch_size=4",
            "train.per_device_batch_size=2",
            *overrides,
        ],
    )


def test_tiny_dpo_plan_agrees_with_the_model_the_stage_loads(tiny_model_dir, split) -> None:
    cfg = _tiny("post-dpo", tiny_model_dir, split, "data.limit=10")
    plan = estimate(cfg, PlanOptions(gpus=2, prompt_tokens=9, completion_tokens=3))
    model, _ = load(tiny_model_dir)
    assert [(r.part, r.parameters) for r in plan.parts] == [
        (r.part, r.parameters) for r in parts_table(model)
    ]
    assert plan.reference_parameters == sum(p.numel() for p in model.parameters())
    assert plan.records == min(10, len(read_jsonl(split / "preferences.jsonl")))
    assert plan.steps == math.ceil(plan.records / 4)
    # per record: the policy on chosen and rejected, the reference's forward on both
    arch = _arch(tiny_model_dir)
    ops = mllm_ops(arch, Sequence(9, 3))
    assert plan.image_tokens == arch.image_tokens
    policy = count(ops, {"vision", "projector", "lm"})
    assert plan.sample.total == 2 * policy.total + 2 * count(ops, set(), False).forward
    assert plan.run_flops == plan.steps * 4 * plan.sample.total
    hours = plan.run_flops / (plan.gpu.peak_fp32 * 0.4) / 3600  # the tiny config is fp32
    assert plan.gpu_hours == pytest.approx(hours)
    assert plan.wall_hours == pytest.approx(hours / 2)


def _arch(model_dir: Path):
    from pivotlab.plan import architecture
    from pivotlab.train.config import ModelSection

    return architecture(ModelSection(init=str(model_dir)))


def test_a_split_folder_without_limit_counts_the_stage_records(tiny_model_dir, split) -> None:
    cfg = _tiny("full", tiny_model_dir, split)
    assert estimate(cfg).records == len(read_jsonl(split / "vqa.jsonl"))


def test_world_fields_without_a_limit_need_records(tiny_model_dir) -> None:
    cfg = load_config(CONFIGS / "tiny" / "full.yaml", [f"model.init={tiny_model_dir}"])
    with pytest.raises(PlanError, match=r"names world fields.*--records"):
        estimate(cfg)
    assert estimate(cfg, PlanOptions(records=1000)).steps == math.ceil(1000 / 32)


def test_a_dataset_without_a_limit_needs_records_and_is_named_as_one(tiny_model_dir) -> None:
    dataset = "data.train={format: llava, path: chat.json, images: images}"
    cfg = load_config(CONFIGS / "tiny" / "full.yaml", [f"model.init={tiny_model_dir}", dataset])
    with pytest.raises(PlanError, match=r"names a dataset.*--records"):
        estimate(cfg)


def test_a_model_not_built_yet_is_named_or_followed(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "paper" / "post-dpo.yaml")
    with pytest.raises(PlanError, match="--vision and --lm"):
        estimate(cfg)
    named = estimate(cfg, PlanOptions(**PAPER_STACK))
    assert sum(r.parameters for r in named.parts) == 1_976_102_848
    assert named.steps == 235 and named.image_tokens == 576
    # a started run's config.yaml says what its final/ will be
    (tmp_path / "full").mkdir()
    started = {"model": {"init": str(tmp_path / "align" / "final")}}
    (tmp_path / "full" / "config.yaml").write_text(yaml.safe_dump(started))
    (tmp_path / "align").mkdir()
    first = {"model": {**PAPER_STACK, "feature_layer": -2}}
    (tmp_path / "align" / "config.yaml").write_text(yaml.safe_dump(first))
    followed = estimate(
        load_config(
            CONFIGS / "paper" / "post-dpo.yaml", [f"model.init={tmp_path / 'full' / 'final'}"]
        )
    )
    assert [r.parameters for r in followed.parts] == [r.parameters for r in named.parts]


def test_viral_adds_its_head_and_teacher_and_warns_about_the_cache() -> None:
    options = PlanOptions(
        records=665_298, vision="openai/clip-vit-large-patch14-336", lm="lmsys/vicuna-7b-v1.5"
    )
    plan = estimate(load_config(CONFIGS / "paper" / "viral-full.yaml"), options)
    rows = {r.part: r for r in plan.parts}
    assert rows["align_head"].trainable == head_parameters(4096, 2048, 768)
    assert rows["vision"].trainable == 0
    teacher, _ = resolve("facebook/dinov2-base", "vision")
    assert plan.teacher_parameters == vision_shape(teacher).parameters
    assert not any("cache_teacher" in w for w in plan.warnings)
    cached = load_config(CONFIGS / "paper" / "viral-full.yaml", ["viral.cache_teacher=true"])
    assert any("cache_teacher" in w for w in estimate(cached, options).warnings)


def test_a_plan_that_cannot_fit_says_so(tiny_model_dir, split) -> None:
    cfg = _tiny("post-dpo", tiny_model_dir, split, "data.limit=10")
    plan = estimate(cfg, PlanOptions(gpus=2, gpu_memory=0.001))
    assert any(w.startswith("does not fit") for w in plan.warnings)
    plan = estimate(cfg, PlanOptions(gpus=3))
    assert any("not a multiple" in w for w in plan.warnings)


def test_cli_prints_the_plan_and_reports_bad_input_as_one_line(capsys) -> None:
    config = str(CONFIGS / "paper" / "post-dpo.yaml")
    stack = ["--vision", PAPER_STACK["vision"], "--lm", PAPER_STACK["lm"]]
    assert main(["plan", "--config", config, *stack, "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "memory per GPU" in out and "GPU-hours" in out and "zero3" in out
    assert main(["plan", "--config", config]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("pivotlab: error:") and "\n" not in error
    assert main(["plan", "--config", config, *stack, "--utilisation", "2"]) == 2


@pytest.mark.parametrize("recipe", ["align", "full", "post-dpo"])
def test_a_world_split_is_counted_from_its_manifest_as_reading_it_would(
    tiny_model_dir, split, recipe
) -> None:
    """The study plans every step's FLOPs at its start: the count comes from the manifest,
    and must be what reading the stage's records finds."""
    from pivotlab.plan.estimate import world_records
    from pivotlab.train.stage_data import resolve_split, stage_records

    alone = ["model.vision=null", "model.lm=null"] if recipe == "align" else []
    cfg = _tiny(recipe, tiny_model_dir, split, *alone)
    assert world_records(cfg) == len(stage_records(cfg, resolve_split(cfg.data.train_split))) > 0
    if recipe == "full":  # several questions per conversation: only reading counts them
        assert world_records(_tiny(recipe, tiny_model_dir, split, "data.turns=2")) is None
