"""FLOPs of one training sample: the model's matrix multiplies, forward and backward.

Counting convention (``torch.utils.flop_counter.FlopCounterMode``, PaLM's model-FLOPs
convention): 2 FLOPs per multiply-add of every matrix product, attention's two batched
products over all token pairs (no causal halving), nothing for norms, activations, softmax
or embedding lookups. Activation recomputation (checkpointing) is not counted: the figures
are model FLOPs, the numerator of model-FLOPs utilisation.

Forward: 2 x weights x tokens for every op, plus attention. Backward, op by op in forward
order: the weight gradient (2 x weights x tokens) where the op's part trains; the input
gradient (2 x weights x tokens, and 2 x the attention products) where anything before it
trains, so a frozen LM under a trained projector still costs its input gradients; TRL's
fused LM head redoes its forward first. Ops the loss does not reach (tower blocks past the
feature layer, SigLIP's pooling head) cost their forward only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from transformers import PretrainedConfig

from pivotlab.plan.architectures import Architecture
from pivotlab.plan.shapes import Op, lm_shape, used_blocks, vision_shape


@dataclass(frozen=True)
class Sequence:
    """One training sequence: the image's tokens plus ``prompt`` text tokens before the
    supervised ``completion`` tokens (the only positions TRL's fused LM head projects)."""

    prompt: int
    completion: int


@dataclass(frozen=True)
class Flops:
    """Forward and backward FLOPs."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, factor: int) -> Flops:
        return Flops(self.forward * factor, self.backward * factor)


def mllm_ops(
    arch: Architecture, sequence: Sequence, align_head: int = 0, score_all: bool = False
) -> list[Op]:
    """The MLLM's ops for one sequence, in forward order; ``align_head`` is the weight count
    of VIRAL's head (applied to the visual tokens), 0 without VIRAL.

    TRL's fused LM head projects only the supervised positions on devices with Triton (CUDA
    GPUs) and every position but the last elsewhere (``score_all``: the CPU under
    ``train.speed: stock``; the fast path's head projects the supervised ones there too)."""
    tower = vision_shape(arch.vision)
    lm = lm_shape(arch.text)
    image = arch.image_tokens
    length = image + sequence.prompt + sequence.completion
    ops = tower.ops("vision", used_blocks(arch.vision, arch.feature_layer))
    ops += [
        Op("projector", arch.vision.hidden_size * lm.width, image),
        Op("projector", lm.width * lm.width, image),
        Op("lm", 0, length),  # the embedding lookup: no FLOPs, but a trainable parameter
    ]
    attention = 4 * length * length * lm.attention_width
    ops += [Op("lm", lm.block_weights, length, attention) for _ in range(lm.depth)]
    scored = length - 1 if score_all else sequence.completion
    ops.append(Op("lm", lm.vocab * lm.width, scored, recompute=True))
    if align_head:
        ops.append(Op("align_head", align_head, image))
    return ops


def count(ops: Iterable[Op], trainable: set[str], backward: bool = True) -> Flops:
    """Forward and (when ``backward``) backward FLOPs of ``ops`` with ``trainable`` parts."""
    forward = grads = 0
    upstream = False  # does anything before this op train (so its input needs a gradient)?
    for op in ops:
        matmul = 2 * op.weights * op.tokens
        forward += matmul + op.attention
        if not (backward and op.reached):
            continue
        weight_grad = op.part in trainable
        input_grad = upstream and op.input_grad
        grads += matmul * (
            weight_grad + input_grad + (op.recompute and (weight_grad or input_grad))
        )
        grads += 2 * op.attention * input_grad
        upstream = upstream or op.part in trainable
    return Flops(forward, grads)


def teacher_ops(teacher: PretrainedConfig) -> list[Op]:
    """A frozen VIRAL teacher's forward on one image (all its blocks)."""
    shape = vision_shape(teacher)
    return shape.ops("teacher", shape.depth)
