"""Parameter counts and the matrix multiplies of each part, in closed form from its config.

Written by hand rather than by instantiating the model because the estimator also needs what
the counts are made of: which weights multiply which tokens (FLOPs), which blocks the
gradient reaches, and block sizes (sharded gathers). Every count is checked against the
instantiated transformers model in ``tests/plan/test_shapes.py``.

The families are the ones pivotlab assembles (``model/presets.py``): SigLIP, CLIP and DINOv2
towers, Qwen2 and Llama LMs, LLaVA's two-layer projector, and VIRAL's alignment head.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from pivotlab.plan.architectures import PlanError


@dataclass(frozen=True)
class Op:
    """Matrix multiplies the estimator counts: ``weights`` parameters applied to each of
    ``tokens`` tokens (2 FLOPs per parameter per token), plus ``attention`` forward FLOPs
    (the two batched products of attention). ``reached`` is False for what the loss does not
    depend on (tower blocks past the feature layer, the pooling head); ``input_grad`` is False
    where the input can never need a gradient (the pixels of the patch embedding);
    ``recompute`` marks an op whose backward first redoes its forward (TRL's fused LM head,
    which never keeps the logits)."""

    part: str
    weights: int
    tokens: int
    attention: int = 0
    reached: bool = True
    input_grad: bool = True
    recompute: bool = False


@dataclass(frozen=True)
class VisionShape:
    """A vision tower: its parameters and its matrix multiplies."""

    parameters: int
    block: int  # parameters of one encoder block
    block_weights: int  # its matrix weights (the block minus biases, norms, layer scales)
    block_attention: int  # forward attention FLOPs of one block
    depth: int
    tokens: int  # tokens each block sees (patches, plus CLS where the family has one)
    patches: int
    stem: int  # patch-embedding kernel weights (the stem's matrix multiply)
    head: tuple[tuple[int, int, int], ...]  # pooling head (SigLIP): (weights, tokens, attention)
    tail: int  # parameters after the blocks (final norm, pooling head): never reached

    def unreached(self, used_blocks: int) -> int:
        """Parameters the loss never reaches: blocks past the feature layer and the tail
        (they get no gradient, so PyTorch's AdamW keeps no state for them)."""
        return (self.depth - used_blocks) * self.block + self.tail

    def ops(self, part: str, used_blocks: int) -> list[Op]:
        """The tower's forward, in order; blocks after ``used_blocks`` and the pooling head
        run but are not reached by the loss."""
        ops = [Op(part, self.stem, self.patches, input_grad=False)]
        ops += [
            Op(part, self.block_weights, self.tokens, self.block_attention, index < used_blocks)
            for index in range(self.depth)
        ]
        return ops + [Op(part, w, t, a, reached=False) for w, t, a in self.head]


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _attention_flops(tokens: int, width: int) -> int:
    """Q K^T and A V over all token pairs: 2 x (2 x tokens^2 x width)."""
    return 4 * tokens * tokens * width


def vision_shape(config: PretrainedConfig) -> VisionShape:
    """Parameters and matrix multiplies of a SigLIP, CLIP or DINOv2 vision model."""
    kind = config.model_type
    d, layers = config.hidden_size, config.num_hidden_layers
    channels = getattr(config, "num_channels", 3)
    patches = (config.image_size // config.patch_size) ** 2
    stem = channels * config.patch_size**2 * d
    if kind == "dinov2":
        hidden = int(d * config.mlp_ratio)
        if getattr(config, "use_swiglu_ffn", False):
            raise PlanError("DINOv2 with a SwiGLU feed-forward is not in the estimator yet")
    else:
        hidden = config.intermediate_size
    mlp_weights = 2 * d * hidden
    block_weights = 4 * d * d + mlp_weights
    # Biases of q, k, v, out and both MLP layers, two layer norms (DINOv2: two layer scales).
    block = block_weights + 4 * d + hidden + d + 4 * d + (2 * d if kind == "dinov2" else 0)
    head: tuple[tuple[int, int, int], ...] = ()
    if kind == "siglip_vision_model":
        tokens = patches
        embeddings = stem + d + patches * d  # conv with bias, position table
        tail = 2 * d  # post_layernorm
        if getattr(config, "vision_use_head", True):
            # probe, MultiheadAttention (packed in-projection, out-projection), norm, MLP
            tail += d + _linear(d, 3 * d) + _linear(d, d) + 2 * d + _linear(d, hidden)
            tail += _linear(hidden, d)
            head = (
                (2 * d * d, patches, 0),  # keys and values of every patch
                (2 * d * d + mlp_weights, 1, 4 * patches * d),  # the probe's query, out, MLP
            )
    elif kind == "clip_vision_model":
        tokens = patches + 1
        # conv without bias, class embedding, positions, pre_layrnorm
        embeddings = stem + d + tokens * d + 2 * d
        tail = 2 * d  # post_layernorm
    elif kind == "dinov2":
        tokens = patches + 1
        embeddings = stem + d + d + d + tokens * d  # conv bias, cls token, mask token, positions
        tail = 2 * d  # final layernorm
    else:
        raise PlanError(f"vision model type {kind!r} is not in the estimator")
    return VisionShape(
        parameters=embeddings + layers * block + tail,
        block=block,
        block_weights=block_weights,
        block_attention=_attention_flops(tokens, d),
        depth=layers,
        tokens=tokens,
        patches=patches,
        stem=stem,
        head=head,
        tail=tail,
    )


def used_blocks(config: PretrainedConfig, feature_layer: int) -> int:
    """Tower blocks whose output reaches the projector (hidden state ``feature_layer``)."""
    depth = config.num_hidden_layers
    return depth + 1 + feature_layer if feature_layer < 0 else feature_layer


@dataclass(frozen=True)
class LMShape:
    """A decoder LM: parameters, the matrix weights of one block, the output head."""

    parameters: int
    block: int
    block_weights: int
    depth: int
    width: int
    attention_width: int  # heads x head dim: the width attention's products run at
    vocab: int


def lm_shape(config: PretrainedConfig) -> LMShape:
    """Parameters and matrix multiplies of a Qwen2 or Llama causal LM (with its head)."""
    kind = config.model_type
    if kind not in ("qwen2", "llama"):
        raise PlanError(f"LM model type {kind!r} is not in the estimator (qwen2, llama)")
    d, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    q_width, kv_width = heads * head_dim, config.num_key_value_heads * head_dim
    qkv_bias = kind == "qwen2" or getattr(config, "attention_bias", False)
    o_bias = kind == "llama" and getattr(config, "attention_bias", False)
    mlp_bias = kind == "llama" and getattr(config, "mlp_bias", False)
    hidden = config.intermediate_size
    block_weights = d * q_width + 2 * d * kv_width + q_width * d + 3 * d * hidden
    biases = (q_width + 2 * kv_width if qkv_bias else 0) + (d if o_bias else 0)
    biases += 2 * hidden + d if mlp_bias else 0
    block = block_weights + biases + 2 * d  # two RMSNorm weights
    embeddings = config.vocab_size * d
    head = 0 if config.tie_word_embeddings else embeddings
    return LMShape(
        parameters=embeddings + config.num_hidden_layers * block + d + head,
        block=block,
        block_weights=block_weights,
        depth=config.num_hidden_layers,
        width=d,
        attention_width=q_width,
        vocab=config.vocab_size,
    )


def projector_parameters(vision_width: int, lm_width: int) -> int:
    """LLaVA's projector: Linear(vision, lm) - GELU - Linear(lm, lm), with biases."""
    return _linear(vision_width, lm_width) + _linear(lm_width, lm_width)


def head_parameters(lm_width: int, hidden: int, teacher_width: int) -> int:
    """VIRAL's alignment head: Linear(D, w) - SiLU - Linear(w, w) - SiLU - Linear(w, d)."""
    return _linear(lm_width, hidden) + _linear(hidden, hidden) + _linear(hidden, teacher_width)
