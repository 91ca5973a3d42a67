"""Memory per GPU of one training process under DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2.

Bytes per parameter (P all parameters, T trainable, G processes, ``low`` = 2 under bf16/fp16
mixed precision and 4 in fp32), AdamW with two fp32 moments:

- DDP: weights 4 P (fp32; autocast computes in 16 bits), gradients 4 T, optimizer 8 T,
  buffers 4 T (DDP's gradient buckets) + low T (autocast's cached casts);
- ZeRO-2: weights low P, gradients low T / G, optimizer (8 + 4 fp32 master) T / G;
- ZeRO-3: weights low P / G, gradients low T / G, optimizer (8 + 4) T / G, buffers two
  gathered blocks (the current one and the prefetched one);
- FSDP2: weights 4 P / G (fp32 shards), gradients 4 T / G, optimizer 8 T / G, buffers two
  gathered blocks.

ZeRO's rows are the ZeRO paper's model (Rajbhandari et al. 2020, K = 12 for mixed-precision
Adam); in fp32 there is no separate master copy. Under DDP and FSDP2, parameters the loss
never reaches (tower blocks past the feature layer, the final norm, SigLIP's pooling head)
get no gradient and no AdamW state; DeepSpeed's flat partitions hold state for them too.

The frozen reference model of a preference objective is prepared by TRL
(``trl/trainer/dpo_trainer.py``, ``trl/models/utils.py``): DDP keeps it as loaded (fp32,
replicated); ZeRO-1/2 make it a ZeRO stage-0 engine (16-bit, replicated); ZeRO-3 shards it
like the policy; FSDP2 shards it as one unit (``fully_shard`` on the root only), so all its
16-bit weights are gathered during its forward. A VIRAL teacher lives outside accelerate,
fp32, replicated.

Activations (saved for backward, per token of one sequence, ``low`` bytes each; flash /
SDPA attention, no dropout): an LM block keeps its two norm inputs (2 D), q, k, v and the
attention output (2 q_width + 2 kv_width), the MLP's gate, up and SiLU outputs (3 I), and,
when its weights train, the inputs of its matrix products (2 D + I). A trained tower block
keeps 2 D (norms) + 4 D (attention) + I (GELU input) + 2 D + I (matrix-product inputs) per
token; a frozen tower keeps nothing. With activation checkpointing each block keeps its
input (D per token) and one block's full set lives during its recomputation. Not counted:
the fused LM head's tiles, the CUDA context, allocator fragmentation and communication
buffers, which the fit check leaves ``HEADROOM`` for.
"""

from __future__ import annotations

from dataclasses import dataclass

from pivotlab.plan.architectures import Architecture
from pivotlab.plan.flops import Sequence
from pivotlab.plan.shapes import lm_shape, used_blocks, vision_shape

STRATEGIES: tuple[str, ...] = ("ddp", "zero2", "zero3", "fsdp2")
HEADROOM = 0.9  # fraction of a GPU's memory a plan may fill
GiB = 1024**3


@dataclass(frozen=True)
class Counts:
    """Parameter counts the memory model needs."""

    total: int
    trainable: int
    largest_block: int  # the largest unit a sharded strategy gathers at once
    unreached: int = 0  # trainable parameters the loss never reaches (no gradient)
    reference: int = 0  # a preference objective's frozen copy (0: none)
    teacher: int = 0  # VIRAL's frozen teacher (0: none)


@dataclass(frozen=True)
class Memory:
    """Bytes one GPU holds at the peak of a step."""

    strategy: str
    checkpointing: bool
    weights: int
    gradients: int
    optimizer: int
    activations: int
    reference: int
    teacher: int
    buffers: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.reference
            + self.teacher
            + self.buffers
        )


def _lm_token_elements(arch: Architecture, trained: bool, checkpointing: bool) -> tuple[int, int]:
    """Elements an LM block saves per token: kept for the whole backward, and the extra set
    one block holds while it is recomputed (0 without checkpointing)."""
    lm = lm_shape(arch.text)
    config = arch.text
    kv_width = config.num_key_value_heads * (lm.attention_width // config.num_attention_heads)
    full = 2 * lm.width + 2 * lm.attention_width + 2 * kv_width + 3 * config.intermediate_size
    if trained:
        full += 2 * lm.width + config.intermediate_size
    return (lm.width, full) if checkpointing else (full, 0)


def _vision_token_elements(arch: Architecture, checkpointing: bool) -> tuple[int, int]:
    width = arch.vision.hidden_size
    hidden = getattr(arch.vision, "intermediate_size", None) or int(width * arch.vision.mlp_ratio)
    full = 8 * width + 2 * hidden
    return (width, full) if checkpointing else (full, 0)


def activation_bytes(
    arch: Architecture,
    sequence: Sequence,
    trainable: set[str],
    low: int,
    checkpointing: bool,
) -> int:
    """Bytes of saved activations for one sequence (see the module docstring)."""
    if not trainable:
        return 0
    length = arch.image_tokens + sequence.prompt + sequence.completion
    depth = arch.text.num_hidden_layers
    kept, recomputed = _lm_token_elements(arch, "lm" in trainable, checkpointing)
    elements = length * (kept * depth + recomputed)
    if "vision" in trainable:
        blocks = used_blocks(arch.vision, arch.feature_layer)
        kept, recomputed = _vision_token_elements(arch, checkpointing)
        elements += vision_shape(arch.vision).tokens * (kept * blocks + recomputed)
    if trainable & {"vision", "projector"}:
        elements += arch.image_tokens * (arch.vision.hidden_size + 2 * arch.text.hidden_size)
    return elements * low


def memory(
    strategy: str,
    counts: Counts,
    gpus: int,
    low: int,
    activations: int,
    checkpointing: bool,
) -> Memory:
    """Bytes per GPU under ``strategy`` (table in the module docstring)."""
    mixed = low == 2
    total, trainable, block = counts.total, counts.trainable, counts.largest_block
    used = trainable - counts.unreached  # what gets gradients and, in PyTorch, AdamW state
    optimizer = (8 + 4 * mixed) * trainable  # DeepSpeed's flat partitions cover every one
    gathered = 2 * block * low
    if strategy == "ddp":
        weights, gradients, optimizer = 4 * total, 4 * used, 8 * used
        buffers = 4 * trainable + (low * trainable if mixed else 0)
        reference = 4 * counts.reference
    elif strategy == "zero2":
        weights, gradients, optimizer = low * total, low * trainable // gpus, optimizer // gpus
        buffers, reference = 0, low * counts.reference
    elif strategy == "zero3":
        weights, gradients, optimizer = (
            low * total // gpus,
            low * trainable // gpus,
            optimizer // gpus,
        )
        buffers, reference = gathered, low * counts.reference // gpus
    elif strategy == "fsdp2":
        weights, gradients, optimizer = (
            4 * total // gpus,
            4 * used // gpus,
            8 * used // gpus,
        )
        buffers = gathered
        reference = 4 * counts.reference // gpus + low * counts.reference
    else:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return Memory(
        strategy=strategy,
        checkpointing=checkpointing,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        reference=reference,
        teacher=4 * counts.teacher,
        buffers=buffers,
    )
