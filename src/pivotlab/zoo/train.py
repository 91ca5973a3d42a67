"""The zoo's three pretraining objectives, on standard HF model classes.

- contrastive: a ``SiglipModel`` (vision tower + tiny text tower) trained with SigLIP's own
  sigmoid image-text loss (``return_loss=True``) on world image-caption pairs; the vision
  tower is kept as a ``SiglipVisionModel``;
- dense: a ``Dinov2Model`` trained to predict, from each patch token, the share of every
  semantic class inside that patch (images and masks only, never questions): spatially rich
  patch features, the teacher's role DINOv2 plays for VIRAL;
- language: a ``Qwen2ForCausalLM`` trained by next-token prediction on world text only.

The loops are small plain-PyTorch loops (AdamW, warm-up + cosine from transformers): each
part is pretrained once, on tensors already in memory, for a few hundred steps; the stage
recipes of the papers run on TRL (the train layer). Compute is accounted with
``torch.utils.flop_counter`` on the first step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import get_cosine_schedule_with_warmup


@dataclass
class Compute:
    """What a pretraining run cost."""

    steps: int
    samples: int
    flops: float  # forward + backward, counted on one step, times steps
    seconds: float
    final_loss: float


def run_steps(
    parameters: list[nn.Parameter],
    loss_of_batch: Callable[[torch.Tensor], torch.Tensor],
    n_items: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> Compute:
    """Optimise ``loss_of_batch(indices)`` over random batches of ``n_items`` items."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    order = torch.Generator().manual_seed(seed)
    flops_per_step = 0.0
    loss = torch.tensor(float("nan"))
    start = time.perf_counter()
    for step in range(steps):
        indices = torch.randint(n_items, (batch_size,), generator=order)
        if step == 0:
            with FlopCounterMode(display=False) as counter:
                loss = loss_of_batch(indices)
                loss.backward()
            flops_per_step = float(counter.get_total_flops())
        else:
            loss = loss_of_batch(indices)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return Compute(steps, steps * batch_size, flops_per_step * steps, seconds, float(loss.detach()))


def sigmoid_pair_loss(model, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss as transformers implements it (``SiglipModel(..., return_loss=True)``)."""
    return model(pixel_values=pixel_values, input_ids=input_ids, return_loss=True).loss


class PatchClassHead(nn.Module):
    """Linear map from each patch token to semantic-class logits (discarded after training)."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, classes)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(patch_tokens)


def dense_loss(
    model, head: PatchClassHead, pixel_values: torch.Tensor, shares: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy between each patch's predicted class distribution and its true shares."""
    tokens = model(pixel_values=pixel_values).last_hidden_state[:, 1:]  # drop CLS
    log_probs = head(tokens).log_softmax(dim=-1)
    return -(shares * log_probs).sum(dim=-1).mean()


def next_token_loss(model, blocks: torch.Tensor) -> torch.Tensor:
    return model(input_ids=blocks, labels=blocks).loss
