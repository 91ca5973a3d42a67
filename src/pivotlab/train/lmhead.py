"""TRL's fused LM head, scoring only the positions that have a label (``train.speed: fast``).

TRL's SFT loss calls ``model(..., labels=..., fused_lm_head=True)``, which runs the backbone
and projects its hidden states through the LM head in tiles, returning per-token
log-probabilities, entropies and top-1 hits instead of logits. On CUDA and XPU it projects
only the positions whose next-token label is not ``-100``; elsewhere (the CPU) it projects
every position, to keep tile shapes fixed for compilers. In an instruction row most
positions are image and prompt tokens: in the tiny world 2 of about 27 carry a label, and
the fast path without this lever ran 1.3-1.4x slower (``docs/performance.md``).

``install_supervised_head`` wraps the model's fused-head forward so that, on any device, the
head projects only the labelled positions, as TRL does on GPUs, and returns TRL's own output
object with every per-token field zero elsewhere: the loss, log-probabilities and gradients
are the same within float rounding (``tests/train/test_lmhead.py``). Written by hand
because TRL chooses the compact path by device, with no switch. The projection runs in
chunks of positions, each recomputed in the backward (``torch.utils.checkpoint``), so a
large vocabulary never holds more than ``LOGITS_PER_CHUNK`` logits for the backward.
Entropy and top-1 hits carry no gradient (TRL's SFT loss reads them as metrics only).

Only the plain head is covered: temperature 1 (SFT's), no logit soft-capping or scaling, no
mixture-of-experts router loss; ``unsupported`` names what else a model has, and such a
model keeps TRL's head.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from pivotlab.train.adapter import fused_head_output, wrap_forward

IGNORED = -100
INSTALLED = "_pivotlab_supervised_head"  # marks the wrapping forward
LOGITS_PER_CHUNK = 1 << 24  # positions x vocabulary entries projected at once
# Text-config fields that change the head's logits (TRL 1.16 reads the same ones).
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def unsupported(model) -> str | None:
    """Why the model's head cannot be scored this way, or None."""
    text = model.config.get_text_config()
    for name in LOGIT_TRANSFORMS:
        if getattr(text, name, None) not in (None, 1, 1.0):
            return f"its LM head applies {name}"
    if getattr(text, "output_router_logits", False):
        return "it is a mixture of experts (its router loss needs TRL's head)"
    if model.get_output_embeddings() is None:
        return "it has no output embeddings"
    return None


def _scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probability of each label, entropy and top-1 hit of one chunk of positions."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    log_softmax = logits.log_softmax(-1)
    log_probs = log_softmax.gather(-1, labels[:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        is_top1 = logits.argmax(-1) == labels
    return log_probs, entropy, is_top1


def supervised_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_scores`` over the positions in chunks of at most ``LOGITS_PER_CHUNK`` logits,
    each recomputed in the backward when there is more than one."""
    size = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    if len(hidden) <= size:
        return _scores(hidden, weight, bias, labels)
    parts = [
        checkpoint(
            _scores, hidden[i : i + size], weight, bias, labels[i : i + size], use_reentrant=False
        )
        for i in range(0, len(hidden), size)
    ]
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


def _supervised_forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
    """The fused-head call on the labelled positions only; any other call goes to the
    forward this one wraps (TRL's)."""
    plain = self._trl_fused_forward
    if not fused_lm_head or args or labels is None or "shift_labels" in kwargs:
        return plain(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
    num_items = kwargs.pop("num_items_in_batch", None)
    kwargs["use_cache"] = False
    hidden = self.base_model(**kwargs).last_hidden_state[:, :-1]
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORED
    head = self.get_output_embeddings()
    log_probs, entropy, is_top1 = supervised_scores(
        hidden[mask], head.weight, head.bias, targets[mask]
    )
    zeros = torch.zeros(mask.shape, dtype=log_probs.dtype, device=mask.device)
    log_probs = zeros.masked_scatter(mask, log_probs)
    divisor = mask.sum().clamp(min=1) if num_items is None else num_items
    return fused_head_output(
        loss=-log_probs.sum() / divisor,
        log_probs=log_probs,
        entropy=zeros.detach().masked_scatter(mask, entropy),
        is_top1=torch.zeros_like(mask).masked_scatter(mask, is_top1),
        label_mask=mask,
    )


def install_supervised_head(model) -> str | None:
    """Make ``model``'s fused-head calls score the labelled positions only (see the module
    docstring); install after TRL's ``add_fused_lm_head`` (an ``SFTTrainer``'s
    construction does it). Returns why it was not installed, or None."""
    reason = unsupported(model)
    if reason is not None:
        return reason
    if getattr(model.forward, INSTALLED, False):
        return None
    # TRL's forward as it is now: a second trainer on the same model installs its own again.
    installed = wrap_forward(model, _supervised_forward, keep_as="_trl_fused_forward")
    setattr(installed, INSTALLED, True)
    return None
