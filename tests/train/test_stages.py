"""The stages on TRL at the tests' size: the controlled comparison, what trains, what a run
leaves, resume, on-policy pairs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from pivotlab.io import read_jsonl
from pivotlab.model import save
from pivotlab.model.parts import set_trainable
from pivotlab.train import ConfigError, run_stage
from pivotlab.train.arguments import process_state, trl_arguments
from pivotlab.train.stage_data import resolve_split, stage_records, trl_dataset
from pivotlab.train.stages import STAGE_FILE, initial_model, stage_trainer
from pivotlab.world.answers import is_correct
from tests.train.conftest import assert_same_curves, tiny_config, train_curve

VISION = "vision_tower."  # key prefix in the saved checkpoint


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _changed(before: dict, after: dict, prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def sft_and_dpo(preset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("post")
    runs = {}
    for objective in ("sft", "dpo"):
        cfg = tiny_config(f"post-{objective}", preset)
        runs[objective] = run_stage(cfg, root / objective).out
    return runs


@pytest.mark.trains
def test_sft_and_dpo_consume_the_same_records_in_the_same_order(sft_and_dpo) -> None:
    logs = {name: read_jsonl(out / "samples.jsonl") for name, out in sft_and_dpo.items()}
    assert [row["step"] for row in logs["sft"]] == [1, 2, 3]
    assert logs["sft"] == logs["dpo"]
    ids = [i for row in logs["sft"] for i in row["ids"]]
    assert len(ids) == 12 and len(set(ids)) == 12  # 3 steps x 4 records, one epoch
    trainable = {
        name: [(r["part"], r["trainable"]) for r in json.loads((out / "parts.json").read_text())]
        for name, out in sft_and_dpo.items()
    }
    assert trainable["sft"] == trainable["dpo"]
    assert all(count > 0 for _, count in trainable["sft"])
    records = {name: read_jsonl(out / "records.jsonl") for name, out in sft_and_dpo.items()}
    assert records["sft"] == records["dpo"]


@pytest.mark.trains
def test_both_objectives_update_the_vision_encoder(sft_and_dpo, stage1_dir) -> None:
    start = _weights(stage1_dir)
    for out in sft_and_dpo.values():
        changed = _changed(start, _weights(out / "final"), VISION)
        assert any(".encoder.layers.0." in k for k in changed)
        # Feature layer -2: the last block and the final norm never reach the loss.
        assert not any(".encoder.layers.1." in k or "post_layernorm" in k for k in changed)


@pytest.mark.trains
def test_dpo_trains_alike_with_and_without_prefix_sharing(sft_and_dpo, preset, tmp_path) -> None:
    """The default run (prefix sharing and the reference cache on) against the stock path."""
    switches = ("post.prefix_sharing=false", "post.reference_cache=false")
    stock = run_stage(tiny_config("post-dpo", preset, *switches), tmp_path / "stock").out
    shared = sft_and_dpo["dpo"]
    assert read_jsonl(stock / "samples.jsonl") == read_jsonl(shared / "samples.jsonl")
    assert len(train_curve(stock, "loss")) == 3
    assert_same_curves(shared, stock, ("loss", "logps/chosen", "logps/rejected"))


@pytest.mark.trains
def test_a_run_folder_holds_what_the_design_promises(sft_and_dpo) -> None:
    out = sft_and_dpo["dpo"]
    for name in ("config.yaml", "parts.txt", "parts.json", "records.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not (out / "runs").exists()
    rows = read_jsonl(out / "metrics.jsonl")
    contract = {"run", "stage", "seed", "step", "split", "metric", "value"}
    assert all(contract <= r.keys() for r in rows)
    train_metrics = {r["metric"] for r in rows if r["split"] == "train"}
    wanted = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert wanted | {"lr/vision", "lr/lm"} <= train_metrics
    assert {"rewards/accuracies", "loss"} <= {r["metric"] for r in rows if r["split"] == "heldout"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["records_seen"] == 12
    assert summary["tokens_seen"] > 0 and summary["records_per_s"] > 0
    assert summary["total_flos"] > 0
    stage = json.loads((out / "final" / STAGE_FILE).read_text())
    assert stage["stage"] == "post" and stage["objective"] == "dpo"
    # `final/` is a plain transformers checkpoint.
    LlavaForConditionalGeneration.from_pretrained(out / "final")
    AutoProcessor.from_pretrained(out / "final")


@pytest.mark.trains
def test_the_same_command_again_does_not_retrain(sft_and_dpo, preset) -> None:
    out = sft_and_dpo["sft"]
    before = (out / "summary.json").read_text()
    result = run_stage(tiny_config("post-sft", preset), out)
    assert (out / "summary.json").read_text() == before
    assert result.summary["steps"] == 3


@pytest.mark.trains
def test_a_folder_with_another_config_is_refused(sft_and_dpo, preset) -> None:
    with pytest.raises(ConfigError, match=r"another config \(post\.beta: 0\.1 there, 0\.3 now\)"):
        run_stage(tiny_config("post-sft", preset, "post.beta=0.3"), sft_and_dpo["sft"])


@pytest.mark.trains
def test_a_run_from_before_a_new_config_key_is_still_the_same_run(
    sft_and_dpo, preset, tmp_path
) -> None:
    out = tmp_path / "sft"
    shutil.copytree(sft_and_dpo["sft"], out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["post"]["grpo"]  # a section this version added, with defaults
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    before = (out / "summary.json").read_text()
    run_stage(tiny_config("post-sft", preset), out)
    assert (out / "summary.json").read_text() == before  # recognised as finished, not retrained


@pytest.mark.trains
def test_a_frozen_vision_encoder_stays_bit_identical(preset, stage1_dir, tmp_path) -> None:
    cfg = tiny_config("post-dpo", preset, "train.parts=[projector, lm]", "train.lr=1e-3")
    out = run_stage(cfg, tmp_path / "frozen").final
    start, end = _weights(stage1_dir), _weights(out)
    vision = [k for k in start if k.startswith(VISION)]
    assert vision and all(torch.equal(start[k], end[k]) for k in vision)
    assert _changed(start, end, "multi_modal_projector.")
    table = json.loads((tmp_path / "frozen" / "parts.json").read_text())
    assert table[0] == {**table[0], "part": "vision", "trainable": 0, "learning_rate": None}


@pytest.mark.trains
@pytest.mark.parametrize(
    ("stage", "captions"),
    [("align", True), ("full", False)],
    ids=["align-stage-on-captions", "tiny-align-config-on-questions"],
)
def test_align_trains_the_projector_only(preset, tmp_path, stage: str, captions: bool) -> None:
    # configs/tiny/align.yaml is a `full` stage limited to the projector, on questions
    # (the zoo's LM answers questions, it never learnt to caption); the `align` stage
    # itself trains the projector on captions.
    cfg = tiny_config(
        "align",
        preset,
        f"stage={stage}",
        "model.init=null",
        "model.vision=tiny-siglip",
        "model.lm=tiny-qwen2",
        "model.image_size=32",
    )
    result = run_stage(cfg, tmp_path / "align")
    start, _ = initial_model(cfg)  # the same assembly, before training
    save(start, AutoProcessor.from_pretrained(result.final), tmp_path / "start")
    before, after = _weights(tmp_path / "start"), _weights(result.final)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("multi_modal_projector.") for k in changed)
    assert result.summary["heldout"]["loss"] > 0
    ids = [i for row in read_jsonl(tmp_path / "align" / "samples.jsonl") for i in row["ids"]]
    scene_ids = [i.startswith("train-") and i.count("-") == 1 for i in ids]  # captions
    assert all(scene_ids) if captions else not any(scene_ids)
    table = json.loads((tmp_path / "align" / "parts.json").read_text())
    assert [r["part"] for r in table if r["trainable"]] == ["projector"]
    # The held-out evaluation after training logs into the same TensorBoard folder.
    assert not (tmp_path / "align" / "runs").exists()
    assert list((tmp_path / "align" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.trains
def test_full_trains_every_part_at_its_own_rate(preset, tmp_path) -> None:
    cfg = tiny_config("full", preset)
    result = run_stage(cfg, tmp_path / "full")
    rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    first = {r["metric"]: r["value"] for r in rows if r["step"] == 2 and r["split"] == "train"}
    rates = cfg.learning_rates()
    # Same schedule factor for every part: the ratios of the configured rates survive.
    assert math.isclose(first["lr/vision"] / first["lr/lm"], rates["vision"] / rates["lm"])
    assert math.isclose(first["lr/vision"], first["learning_rate"])  # vision is group 0
    assert 0 < first["lr/lm"] <= rates["lm"]
    assert result.summary["heldout"]["loss"] > 0


@pytest.mark.trains
def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(preset, tmp_path) -> None:
    settings = ("train.steps=4", "train.save_steps=2", "train.lr=1e-3")
    cfg = tiny_config("post-dpo", preset, *settings)
    whole = run_stage(cfg, tmp_path / "whole")
    # The folder as a run stopped right after its step-2 checkpoint would have left it.
    stopped = tmp_path / "stopped"
    shutil.copytree(whole.out, stopped)
    for later in ("final", "checkpoint-4", "summary.json", "tensorboard"):
        shutil.rmtree(stopped / later, ignore_errors=True)
        (stopped / later).unlink(missing_ok=True) if not (stopped / later).is_dir() else None
    resumed = run_stage(cfg, stopped)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")
    assert read_jsonl(stopped / "samples.jsonl") == read_jsonl(whole.out / "samples.jsonl")
    a, b = _weights(whole.final), _weights(resumed.final)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    for metric in ("loss", "rewards/accuracies", "rewards/margins"):
        assert math.isclose(
            whole.summary["heldout"][metric], resumed.summary["heldout"][metric], rel_tol=1e-4
        )


@pytest.mark.trains
def test_on_policy_pairs_keep_only_verified_wrong_answers(preset, splits, tmp_path) -> None:
    cfg = tiny_config(
        "post-dpo",
        preset,
        "post.on_policy.enabled=true",
        "post.on_policy.samples=2",
        "post.on_policy.questions=6",
        "post.on_policy.max_new_tokens=4",
    )
    run_stage(cfg, tmp_path / "onpolicy")
    pairs = read_jsonl(tmp_path / "onpolicy" / "records.jsonl")
    questions = {r["id"]: r for r in read_jsonl(splits[0] / "vqa.jsonl")}
    assert pairs and all(p["negative_type"] == "on_policy" for p in pairs)
    for pair in pairs:
        question = questions[pair["vqa_id"]]
        assert pair["chosen"] == question["answer"]
        assert not is_correct(question, pair["rejected"])


def _post_trainer(cfg, splits, folder: str):
    model, processor = initial_model(cfg)
    set_trainable(model, cfg.parts)
    records = stage_records(cfg, resolve_split(cfg.data.train_split))[:8]
    data = trl_dataset(records, splits[0], stage="post", order=list(range(8)))
    out = splits[0].parent / folder
    process_state(cfg)
    return stage_trainer(cfg, model, processor, trl_arguments(cfg, out, 2, 1), data, None, out)


@pytest.mark.trains
@pytest.mark.parametrize(
    ("objective", "losses", "weights"),
    [("ipo", ["ipo"], [1.0]), ("mpo", ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])],
)
def test_ipo_and_mpo_reach_trl_as_its_loss_lists(
    objective, losses, weights, preset, splits
) -> None:
    trainer = _post_trainer(tiny_config(f"post-{objective}", preset), splits, objective)
    assert (trainer.args.loss_type, trainer.args.loss_weights) == (losses, weights)
    result = trainer.train()
    assert math.isfinite(result.training_loss)


@pytest.mark.trains
def test_the_reference_is_the_frozen_starting_model_encoder_included(
    preset, stage1_dir, splits
) -> None:
    # The live reference (the cached one is dropped once its log-probs are computed).
    cfg = tiny_config("post-dpo", preset, "train.lr=1e-3", "post.reference_cache=false")
    trainer = _post_trainer(cfg, splits, "ref")
    trainer.train()
    start = _weights(stage1_dir)
    reference = trainer.ref_model.state_dict()
    policy = trainer.model.state_dict()
    tower = [k for k in reference if k.startswith("model.vision_tower.")]
    assert tower and not any(p.requires_grad for p in trainer.ref_model.parameters())
    assert all(torch.equal(reference[k], start[k.removeprefix("model.")]) for k in tower)
    assert any(not torch.equal(policy[k], reference[k]) for k in tower)


def test_a_missing_starting_model_fails_before_any_work(preset, tmp_path) -> None:
    cfg = tiny_config("post-dpo", preset, f"model.init={tmp_path / 'runs/tiny/full/final'}")
    with pytest.raises(ConfigError, match=r"model\.init: .* holds no saved model"):
        run_stage(cfg, tmp_path / "post")
    assert not (tmp_path / "post").exists()
