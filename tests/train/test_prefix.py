"""Prefix sharing and the reference cache give the stock DPO path's numbers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl import DPOConfig

from pivotlab.io import read_jsonl
from pivotlab.model import load
from pivotlab.model.parts import part_modules
from pivotlab.train import load_config, refcache
from pivotlab.train.prefix import (
    install_prefix_sharing,
    plan_sharing,
    set_prefix_sharing,
    shared_forward,
    sharing_counts,
    unsupported,
)
from pivotlab.train.refcache import ReferenceCacheError
from pivotlab.train.stage_data import SAMPLE_INDEX, trl_dataset
from pivotlab.train.trainers import StageDPOTrainer, speed_up_preferences
from tests.train.conftest import COSINE, assert_relative, part_gradients

PAIRS = 6


@pytest.fixture(scope="module")
def records(splits: tuple[Path, Path]) -> list[dict]:
    return read_jsonl(splits[0] / "preferences.jsonl")[:PAIRS]


def trainer(
    model_dir: Path,
    split: Path,
    records: list[dict],
    out: Path,
    *,
    sharing: bool = False,
    cache: bool = False,
    order: list[int] | None = None,
) -> StageDPOTrainer:
    """A stage DPO trainer on ``records`` whose reference differs from the policy (else
    every DPO loss is log 2)."""
    model, processor = load(model_dir)
    reference = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    reference.requires_grad_(False).eval()
    data = trl_dataset(records, split, stage="post", order=order or list(range(len(records))))
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=len(records),
        report_to=[],
        use_cpu=True,
        activation_checkpointing=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        bf16=False,  # TRL's default; float32 is what the equality is stated in
    )
    return StageDPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        processing_class=processor,
        train_dataset=data,
        part_learning_rates={"vision": 1e-5, "projector": 1e-5, "lm": 1e-5},
        prefix_sharing=sharing,
        reference_cache=cache,
    )


@pytest.fixture(scope="module")
def dpo(tiny_model_dir, splits, records, tmp_path_factory) -> StageDPOTrainer:
    """Prefix sharing installed on the policy and the reference, switchable."""
    return trainer(tiny_model_dir, splits[0], records, tmp_path_factory.mktemp("dpo"), sharing=True)


def collated(dpo: StageDPOTrainer) -> dict:
    batch = dpo.data_collator([dpo.train_dataset[i] for i in range(PAIRS)])
    batch.pop(SAMPLE_INDEX)
    return batch


def padded_left(batch: dict, rows: list[int]) -> dict:
    """``batch`` with the padding of ``rows`` moved from the right to the left."""
    moved = {k: v.clone() for k, v in batch.items()}
    for r in rows:
        pad = int((batch["attention_mask"][r] == 0).sum())
        for key in ("input_ids", "attention_mask", "completion_mask"):
            moved[key][r] = torch.roll(batch[key][r], shifts=pad)
    return moved


def with_positions(batch: dict) -> dict:
    """``batch`` with each token's index among its row's tokens as its position."""
    positions = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    return {**batch, "position_ids": positions}


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Per-sequence log-probs of the completions, as TRL's DPO loss reads them."""
    kwargs = {k: v for k, v in batch.items() if k != "completion_mask"}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False).log_probs.sum(1)


def loss_and_gradients(dpo: StageDPOTrainer, batch: dict, sharing: bool):
    for model in (dpo.model, dpo.ref_model):
        set_prefix_sharing(model, sharing)
    dpo.model.zero_grad()
    loss = dpo.compute_loss(dpo.model, dict(batch))
    loss.backward()
    with torch.no_grad():
        logps = sequence_logps(dpo.model, batch)
    return loss.detach(), logps, part_gradients(dpo.model)


def assert_same_as_stock(dpo: StageDPOTrainer, batch: dict, shares: bool = True) -> None:
    before = sharing_counts(dpo.model)["shared"]
    stock = loss_and_gradients(dpo, batch, sharing=False)
    shared = loss_and_gradients(dpo, batch, sharing=True)
    assert (sharing_counts(dpo.model)["shared"] > before) == shares
    assert_relative(shared[0], stock[0])
    assert_relative(shared[1], stock[1])
    for part, gradient in stock[2].items():
        cosine = F.cosine_similarity(shared[2][part], gradient, dim=0).item()
        assert cosine >= COSINE, f"{part}: cosine {cosine}"
        assert gradient.abs().sum() > 0


def test_the_batch_has_ragged_prompts_and_answers(dpo) -> None:
    batch = collated(dpo)
    prompts = (batch["attention_mask"] - batch["completion_mask"]).sum(1)
    answers = batch["completion_mask"].sum(1)
    assert len(set(prompts.tolist())) > 1 and len(set(answers.tolist())) > 1
    assert torch.equal(batch["pixel_values"][:PAIRS], batch["pixel_values"][PAIRS:])


def test_a_pair_is_one_group_and_its_image_is_encoded_once(dpo) -> None:
    batch = collated(dpo)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    image_token = dpo.model.config.image_token_id
    plan = plan_sharing(
        batch["input_ids"],
        batch["attention_mask"],
        labels,
        batch["pixel_values"],
        None,
        image_token,
    )
    for r in range(PAIRS):
        assert plan.rows[r].group == plan.rows[r + PAIRS].group
        prompt = int((batch["attention_mask"][r] - batch["completion_mask"][r]).sum())
        assert plan.groups[plan.rows[r].group].shared >= prompt
    assert len(plan.distinct_images) <= PAIRS


def test_right_padded_batches_match_the_stock_path(dpo) -> None:
    assert_same_as_stock(dpo, collated(dpo))
    assert sharing_counts(dpo.ref_model)["shared"] > 0


def test_left_and_mixed_padding_with_positions_match_and_share(dpo) -> None:
    batch = collated(dpo)
    assert_same_as_stock(dpo, with_positions(padded_left(batch, list(range(2 * PAIRS)))))
    assert_same_as_stock(dpo, with_positions(padded_left(batch, [0, 2, PAIRS + 1])))


def test_left_padding_without_positions_matches_the_stock_path(dpo) -> None:
    # Without position ids the stock forward counts positions from column 0, so a pair whose
    # rows are padded differently has different prefixes: they are computed apart.
    batch = padded_left(collated(dpo), list(range(PAIRS)))
    assert_same_as_stock(dpo, batch)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_gradients_flow_through_the_cache_into_the_prefix(tiny_model_dir, dpo, attention) -> None:
    """A loss on continuation tokens only reaches the tower and the projector through the
    prefix's keys and values; its gradient there is the stock one (with either attention
    implementation prefix sharing accepts)."""
    batch = collated(dpo)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    model, _ = load(tiny_model_dir)
    model.set_attn_implementation(attention)
    assert model.config.get_text_config()._attn_implementation == attention
    backbone = model.model
    plan = plan_sharing(
        batch["input_ids"],
        batch["attention_mask"],
        labels,
        batch["pixel_values"],
        None,
        model.config.image_token_id,
    )
    tail = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    for r, row in enumerate(plan.rows):
        tail[r, row.start + plan.groups[row.group].shared : row.start + len(row.tokens)] = True
    assert tail.any()
    weights = torch.randn(model.config.text_config.hidden_size)

    def tower_gradients(hidden: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        (hidden[tail] @ weights).sum().backward()
        parts = part_modules(model)
        return [
            torch.cat([p.grad.flatten() for p in parts[k][0].parameters() if p.grad is not None])
            for k in parts
        ]

    stock = backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
    ).last_hidden_state
    expected = tower_gradients(stock)
    shared = shared_forward(
        backbone, backbone.forward, plan, batch["input_ids"], batch["pixel_values"]
    ).last_hidden_state
    attended = batch["attention_mask"].bool()
    assert torch.allclose(shared[attended], stock[attended], atol=1e-5, rtol=1e-5)
    for got, want in zip(tower_gradients(shared), expected, strict=True):
        assert want.abs().sum() > 0
        assert F.cosine_similarity(got, want, dim=0).item() >= COSINE


def test_the_reference_cache_gives_the_live_reference_loss(
    tiny_model_dir, splits, records, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path / "cache"))
    order = [3, 1, 4, 1, 5, 0, 2, 0, 3, 5, 4, 2]  # the schedule repeats records
    live = trainer(tiny_model_dir, splits[0], records, tmp_path / "live", order=order)
    cached = trainer(
        tiny_model_dir,
        splits[0],
        records,
        tmp_path / "cached",
        sharing=True,
        cache=True,
        order=order,
    )
    assert cached.ref_model is None and cached.precompute_ref_logps
    assert len(cached.accelerator._models) == 0
    assert len(list((tmp_path / "cache" / "reference").glob("*.safetensors"))) == 1
    examples = [live.train_dataset[i] for i in range(PAIRS)]
    expected = live.compute_loss(live.model, live.data_collator(copy.deepcopy(examples)))
    batch = cached.data_collator(copy.deepcopy(examples))
    assert "ref_chosen_logps" in batch
    assert_relative(cached.compute_loss(cached.model, batch).detach(), expected.detach())

    def no_pass(*args, **kwargs):
        raise AssertionError("the cache was computed again")

    monkeypatch.setattr(refcache, "reference_pass", no_pass)
    again = trainer(tiny_model_dir, splits[0], records, tmp_path / "again", cache=True, order=order)
    changed = copy.deepcopy(examples)
    changed[0]["chosen"][0]["content"][0]["text"] += " (edited)"
    with pytest.raises(ReferenceCacheError, match="record"):
        again.data_collator(changed)


def test_viral_keeps_the_stock_forward_on_the_policy(tiny_model_dir, splits, records, tmp_path):
    stage = trainer(tiny_model_dir, splits[0], records, tmp_path)
    stage.alignment = object()  # what a VIRAL run sets; its hooks read the policy's layers
    speed_up_preferences(stage, prefix_sharing=True, reference_cache=False)
    assert not hasattr(stage.model, "_pivotlab_stock_forward")
    assert hasattr(stage.ref_model, "_pivotlab_stock_forward")


def test_other_models_and_gradient_checkpointing_keep_the_stock_forward(dpo) -> None:
    config = Qwen2Config(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    text_only = Qwen2ForCausalLM(config)
    assert "not a Llava model" in unsupported(text_only)
    assert install_prefix_sharing(text_only) is not None
    assert not hasattr(text_only, "_pivotlab_stock_forward")
    dpo.model.activation_checkpointing_enable()
    try:
        sequence_logps(dpo.model, collated(dpo))
    finally:
        dpo.model.activation_checkpointing_disable()
    assert sharing_counts(dpo.model)["gradient checkpointing"] == 1


def test_both_switches_are_on_by_default() -> None:
    post = load_config(None, ["model.init=m", "data.train=d"]).post
    assert post.prefix_sharing and post.reference_cache
    off = load_config(None, ["model.init=m", "data.train=d", "post.prefix_sharing=false"])
    assert not off.post.prefix_sharing


def test_the_cache_key_ignores_the_tokenizer_padding_state(tiny_model_dir) -> None:
    _, processor = load(tiny_model_dir)
    before = refcache._processor_fingerprint(processor)
    processor.tokenizer(["a b", "c"], padding=True, padding_side="left")
    assert refcache._processor_fingerprint(processor) == before
