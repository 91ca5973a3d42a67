"""The FLOP estimate agrees with ``torch.utils.flop_counter.FlopCounterMode`` on CPU, for
the forward and backward of a training step as TRL runs it (the fused LM head), with each
stage's trainable parts, and for DPO: the policy on chosen and rejected plus the reference
forward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from trl.trainer.utils import add_fused_lm_head

from pivotlab.model import set_trainable
from pivotlab.plan.architectures import Architecture, zoo_config
from pivotlab.plan.flops import Sequence, count, mllm_ops
from tests.plan.conftest import llava

TOLERANCE = 0.10  # the bound; the counts below agree exactly
SEQUENCE = Sequence(prompt=7, completion=5)
BATCH = 2


def _inplace_addmm(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # TRL's fused LM head accumulates its gradients with in-place addmm_, which
    # FlopCounterMode has no formula for (it counts aten.addmm only).
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _inplace_addmm})


def _batch(arch: Architecture, sequences: int) -> dict:
    length = arch.image_tokens + SEQUENCE.prompt + SEQUENCE.completion
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, arch.text.vocab_size - 2, (sequences, length), generator=generator)
    ids[:, : arch.image_tokens] = arch.text.vocab_size - 1  # the image token id
    labels = ids.clone()
    labels[:, : length - SEQUENCE.completion] = -100
    side = arch.vision.image_size
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(sequences, 3, side, side, generator=generator),
        "labels": labels,
    }


def _model(arch: Architecture, parts: list[str]):
    # Eager attention: CPU SDPA kernels have no FlopCounterMode formula.
    model = llava(arch, attention="eager")
    set_trainable(model, parts)
    add_fused_lm_head(model)
    return model


def _measure_step(model, batch: dict) -> tuple[int, int]:
    with _counter() as counter:
        loss = model(**batch, fused_lm_head=True).loss
        forward = counter.get_total_flops()
        loss.backward()
    return forward, counter.get_total_flops() - forward


ARCHITECTURES = {
    "default zoo (SigLIP + Qwen2)": Architecture(zoo_config("zoo:enc-s"), zoo_config("zoo:lm-s")),
    "DINOv2 with CLS + Qwen2": Architecture(
        zoo_config("zoo:vfm"), zoo_config("zoo:lm-s"), select_strategy="default"
    ),
}
STAGES = {"align": ["projector"], "full": ["vision", "projector", "lm"]}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_training_step_flops_match_the_flop_counter(name: str, stage: str) -> None:
    arch = ARCHITECTURES[name]
    parts = STAGES[stage]
    forward, backward = _measure_step(_model(arch, parts), _batch(arch, BATCH))
    # On the CPU TRL's fused head scores every position (only label positions on GPUs).
    estimate = count(mllm_ops(arch, SEQUENCE, score_all=True), set(parts)) * BATCH
    assert estimate.forward == pytest.approx(forward, rel=TOLERANCE)
    assert estimate.backward == pytest.approx(backward, rel=TOLERANCE)
    assert estimate.forward == forward and estimate.backward == backward


def test_dpo_step_is_policy_on_both_sequences_plus_reference_forward() -> None:
    arch = ARCHITECTURES["default zoo (SigLIP + Qwen2)"]
    parts = ["vision", "projector", "lm"]
    policy, reference = _model(arch, parts), _model(arch, [])
    pairs = _batch(arch, 2 * BATCH)  # chosen and rejected, each with the image
    with _counter() as counter:
        loss = policy(**pairs, fused_lm_head=True).loss
        with torch.no_grad():
            reference(**pairs, fused_lm_head=True)
        loss.backward()
    ops = mllm_ops(arch, SEQUENCE, score_all=True)
    estimate = count(ops, set(parts)).total * 2 * BATCH
    estimate += count(ops, set(), backward=False).forward * 2 * BATCH
    assert estimate == pytest.approx(counter.get_total_flops(), rel=TOLERANCE)


def test_a_frozen_lm_still_costs_input_gradients_but_no_weight_gradients() -> None:
    arch = ARCHITECTURES["default zoo (SigLIP + Qwen2)"]
    ops = mllm_ops(arch, SEQUENCE)
    align = count(ops, {"projector"})
    full = count(ops, {"vision", "projector", "lm"})
    # the LM's share of backward: input gradients only (about one forward) vs both (two)
    assert align.backward < full.backward < 2.2 * full.forward
    assert count(ops, set()).backward == 0
