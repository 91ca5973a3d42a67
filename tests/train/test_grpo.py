"""GRPO as a Stage-2 objective at the tests' size: the same records as the SFT arm, the
encoder trained (or left alone when frozen), rewards logged per category, the generation
budget in the summary, and prompts identical to the evaluation's."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pivotlab.console import Progress
from pivotlab.io import read_jsonl
from pivotlab.model.generation import chat_prompt
from pivotlab.train import ConfigError, run_stage
from pivotlab.train.arguments import process_state, trl_arguments
from pivotlab.train.prefix import set_prefix_sharing, sharing_counts
from pivotlab.train.stage_data import resolve_split, trl_dataset
from pivotlab.train.stages import initial_model, stage_trainer
from tests.train.conftest import tiny_config

VISION = "vision_tower."
GENERATIONS = 4
# A length penalty gives every group a reward spread even where no reply is right yet.
GRPO = [f"post.grpo.num_generations={GENERATIONS}", "post.grpo.length_penalty=0.5"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _changed(before: dict, after: dict, prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def answering(preset, tmp_path_factory) -> Path:
    """A starting model that already answers in a few tokens (30 SFT steps): the random
    tiny model never ends a reply, so every reward would tie and no gradient would flow."""
    cfg = tiny_config("post-sft", preset, "train.steps=30", "train.lr=3e-3", "data.eval=null")
    return run_stage(cfg, tmp_path_factory.mktemp("answering") / "sft").final


@pytest.fixture(scope="module")
def arms(preset, answering, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grpo")
    start = f"model.init={answering}"
    return {
        "sft": run_stage(tiny_config("post-sft", preset, start), root / "sft").out,
        "grpo": run_stage(tiny_config("post-grpo", preset, start, *GRPO), root / "grpo").out,
    }


@pytest.mark.trains
def test_grpo_reads_the_sft_arms_records_in_the_same_order(arms) -> None:
    logs = {name: read_jsonl(out / "samples.jsonl") for name, out in arms.items()}
    assert [row["step"] for row in logs["grpo"]] == [1, 2, 3]
    assert logs["grpo"] == logs["sft"]
    assert read_jsonl(arms["grpo"] / "records.jsonl") == read_jsonl(arms["sft"] / "records.jsonl")
    trainable = {
        name: [(r["part"], r["trainable"]) for r in json.loads((out / "parts.json").read_text())]
        for name, out in arms.items()
    }
    assert trainable["grpo"] == trainable["sft"]  # only the learning rates differ
    assert all(count > 0 for _, count in trainable["grpo"])


@pytest.mark.trains
def test_grpo_updates_the_vision_encoder(arms, answering) -> None:
    changed = _changed(_weights(answering), _weights(arms["grpo"] / "final"), VISION)
    assert any(".encoder.layers.0." in k for k in changed)
    # Feature layer -2: the last block and the final norm never reach the loss.
    assert not any(".encoder.layers.1." in k or "post_layernorm" in k for k in changed)


@pytest.mark.trains
def test_rewards_are_logged_per_category_and_agree_with_trls_log(arms) -> None:
    out = arms["grpo"]
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
    categories = {r["id"]: r["category"] for r in read_jsonl(out / "records.jsonl")}
    steps = {row["step"]: row["ids"] for row in read_jsonl(out / "samples.jsonl")}
    for step, ids in steps.items():
        here = [r for r in rows if r["step"] == step]
        logged = {r["metric"]: r["value"] for r in here if "category" not in r}
        by_category: dict[str, dict[str, float]] = defaultdict(dict)
        for r in here:
            if "category" in r:
                by_category[r["category"]][r["metric"]] = r["value"]
        # Each category's completions: num_generations per prompt of that category.
        expected = Counter(categories[i] for i in ids)
        assert {c: v["completions"] for c, v in by_category.items()} == {
            c: GENERATIONS * n for c, n in expected.items()
        }
        # Pooled over categories, the per-category means are TRL's own step means.
        total = sum(v["completions"] for v in by_category.values())
        for mine, trls in (("correct", "rewards/correctness/mean"), ("reward", "reward")):
            pooled = sum(v[mine] * v["completions"] for v in by_category.values()) / total
            assert pooled == pytest.approx(logged[trls], abs=1e-6), (step, mine)
        assert -0.5 <= logged["reward"] <= 1.1


@pytest.mark.trains
def test_the_summary_states_the_generation_budget(arms) -> None:
    out = arms["grpo"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "grpo"
    assert summary["prompts_seen"] == summary["records_seen"] == 12  # 3 steps x 4 prompts
    assert summary["completions_generated"] == 12 * GENERATIONS
    # TRL logs each step's mean reply length over that step's 16 replies.
    rows = read_jsonl(out / "metrics.jsonl")
    lengths = [r["value"] for r in rows if r["metric"] == "completions/mean_length"]
    assert summary["generated_tokens"] == pytest.approx(sum(lengths) * 4 * GENERATIONS)
    assert summary["generated_tokens_per_s"] == pytest.approx(
        summary["generated_tokens"] / summary["generation_s"]
    )
    assert 0 < summary["generation_s"] < summary["wall_s"]
    assert summary["tokens_seen"] > summary["generated_tokens"]  # prompts + replies


@pytest.mark.trains
def test_a_frozen_vision_encoder_stays_bit_identical(preset, answering, tmp_path) -> None:
    cfg = tiny_config(
        "post-grpo",
        preset,
        f"model.init={answering}",
        "train.parts=[projector, lm]",
        "train.lr=1e-3",
        "data.eval=null",
        *GRPO,
    )
    out = run_stage(cfg, tmp_path / "frozen").final
    start, end = _weights(answering), _weights(out)
    vision = [k for k in start if k.startswith(VISION)]
    assert vision and all(torch.equal(start[k], end[k]) for k in vision)
    assert _changed(start, end, "multi_modal_projector.")


@pytest.mark.trains
def test_a_resumed_grpo_run_ends_where_an_uninterrupted_run_ends(
    preset, answering, tmp_path
) -> None:
    settings = ("train.steps=4", "train.save_steps=2", "data.eval=null", *GRPO)
    cfg = tiny_config("post-grpo", preset, f"model.init={answering}", *settings)
    whole = run_stage(cfg, tmp_path / "whole")
    # The folder as a run stopped right after its step-2 checkpoint would have left it.
    stopped = tmp_path / "stopped"
    shutil.copytree(whole.out, stopped)
    for later in ("final", "checkpoint-4", "tensorboard"):
        shutil.rmtree(stopped / later)
    (stopped / "summary.json").unlink()
    progress = Progress()
    resumed = run_stage(cfg, stopped, progress=progress)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")
    # A live line's count: the run's 4 steps, 2 of them before this process began.
    assert (progress.initial, progress.done, progress.total) == (2, 4, 4)
    assert read_jsonl(stopped / "samples.jsonl") == read_jsonl(whole.out / "samples.jsonl")
    # The restored RNG state samples the same replies: the same rewards at steps 3 and 4.
    for metric in ("reward", "completions/mean_length"):
        logged = [
            [r["value"] for r in read_jsonl(out / "metrics.jsonl") if r["metric"] == metric]
            for out in (whole.out, stopped)
        ]
        assert logged[1] == pytest.approx(logged[0], abs=1e-6), metric
    a, b = _weights(whole.final), _weights(resumed.final)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def _four_prompt_trainer(preset, tmp_path):
    """A GRPO trainer on the tiny model over the first four preference records."""
    cfg = tiny_config("post-grpo", preset, *GRPO)
    model, processor = initial_model(cfg)
    split = resolve_split(cfg.data.train_split).path
    records = read_jsonl(split / "preferences.jsonl")[:4]
    data = trl_dataset(records, split, stage="post", objective="grpo")
    process_state(cfg)
    args = trl_arguments(cfg, tmp_path, 1, 1)
    trainer = stage_trainer(cfg, model, processor, args, data, None, tmp_path)
    return model, processor, records, data, trainer


def test_grpo_prompts_are_the_evaluations_prompts(preset, tmp_path) -> None:
    _, processor, records, data, trainer = _four_prompt_trainer(preset, tmp_path)
    rows = [data[i] for i in range(len(records))]
    # TRL's VLM path: the image placed in the user turn, then its own chat templating.
    from trl.data_utils import prepare_multimodal_messages

    prompts = [prepare_multimodal_messages(r["prompt"], images=r["images"]) for r in rows]
    ids, _, fields = trainer._tokenize_prompts(prompts)
    expected = processor(
        images=[r["images"][0] for r in rows],
        text=[chat_prompt(processor, record["prompt"]) for record in records],
    )
    assert [list(i) for i in ids] == [list(i) for i in expected["input_ids"]]
    assert np.array_equal(np.asarray(fields["pixel_values"]), np.asarray(expected["pixel_values"]))


def test_prefix_sharing_gives_grpo_the_stock_log_probs_and_gradients(preset, tmp_path) -> None:
    model, _, records, data, trainer = _four_prompt_trainer(preset, tmp_path)
    model.train()
    # One generation batch as TRL's sampler hands it over: each prompt num_generations times.
    batch = trainer._generate_and_score_completions(
        [data[i] for i in range(len(records)) for _ in range(GENERATIONS)]
    )
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    replies = batch["completion_mask"]

    def log_probs_and_vision_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model,
            ids,
            mask,
            replies.size(1),
            batch_size=len(ids),
            pixel_values=batch["pixel_values"],
            num_images=batch["num_images"],
        )
        (logps * replies).sum().backward()
        grads = {
            n: p.grad.clone()
            for n, p in model.named_parameters()
            if VISION in n and p.grad is not None
        }
        return (logps * replies).detach(), grads

    before = sharing_counts(model)["shared"]
    shared, shared_grads = log_probs_and_vision_grads()
    assert sharing_counts(model)["shared"] == before + 1
    set_prefix_sharing(model, False)
    stock, stock_grads = log_probs_and_vision_grads()
    torch.testing.assert_close(shared, stock, rtol=1e-5, atol=1e-5)
    assert shared_grads.keys() == stock_grads.keys() and stock_grads
    for name, grad in stock_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("post.grpo.num_generations=1", "num_generations must be at least 2"),
        ("post.grpo.temperature=0", "post.grpo.temperature must be positive"),
        ("post.grpo.kl_coef=-0.1", "post.grpo.kl_coef must be 0 or more"),
        ("viral.enabled=true", "viral.enabled is not supported with post.objective grpo"),
        ("trainer.num_iterations=2", "trainer.num_iterations would change which prompts"),
        ("trainer.generation_batch_size=64", "trainer.generation_batch_size would change"),
    ],
)
def test_settings_grpo_cannot_run_with_are_refused(preset, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config("post-grpo", preset, override)
