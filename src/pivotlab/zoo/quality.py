"""Quality checks of zoo parts: linear probe, patch segmentation probe, cell probe, perplexity.

The probes are ``pivotlab.probes``, the instrument the analysis layer uses on post-trained
encoders, so a part's figures here and a study's encoder rows mean the same thing. Every
encoder is read the same way: the final layer's tokens (``last_hidden_state``), CLS dropped,
mean-pooled for the linear probe (the logistic probe, C chosen on a validation split of
train) and per patch for the segmentation probe (the MLP head on union labels; mIoU of its
argmax against each patch's majority class); the cell probe reads the hidden state an
MLLM's projector takes (``vision_feature_layer``) with the same logistic probe. Intervals are
left to the analysis layer: these checks only order the zoo's parts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pivotlab.probes import (
    labels_from_counts,
    logistic_probe,
    segmentation_logits,
    segmentation_scores,
)

# Bumped when a probe's definition changes: a cached part measured under another protocol
# has its quality measured again (zoo.build), since its weights are still good.
PROBE_PROTOCOL = 2

# The names of the figures in a part's manifest (``quality``): the builders write them, the
# zoo's checks and ``pivotlab zoo list`` read them.
LINEAR_PROBE_SHAPE_COLOR = "linear_probe_shape_color"
LINEAR_PROBE_SHAPE = "linear_probe_shape"
SEGMENTATION_PREFIX = "segmentation_"  # + each figure of ``segmentation_probe``
SEGMENTATION_PATCH_RECALL = f"{SEGMENTATION_PREFIX}patch_recall"
SEGMENTATION_MIOU = f"{SEGMENTATION_PREFIX}miou"
CELL_PROBE_PREFIX = "cell_probe_"  # + each cell attribute
RANDOM_INIT = "random_init"  # an encoder's figures at its seeded initialisation
HELDOUT_PERPLEXITY = "heldout_perplexity"
SYMBOLIC_ACCURACY = "symbolic_accuracy"


def cell_probe_key(attribute: str) -> str:
    """The name of the cell probe's figure for one cell attribute."""
    return f"{CELL_PROBE_PREFIX}{attribute}"


@torch.inference_mode()
def hidden_patch_tokens(
    model, pixel_values: torch.Tensor, has_cls: bool, batch_size: int = 128, layer: int = -1
) -> torch.Tensor:
    """(N, patches, width) patch tokens of hidden state ``layer`` (-1: the final layer)."""
    model.eval()
    chunks = []
    for start in range(0, len(pixel_values), batch_size):
        batch = pixel_values[start : start + batch_size]
        hidden = model(pixel_values=batch, output_hidden_states=True).hidden_states[layer]
        chunks.append(hidden[:, 1:] if has_cls else hidden)
    return torch.cat(chunks)


def linear_probe(
    train_tokens: torch.Tensor,
    train_labels: list[str],
    test_tokens: torch.Tensor,
    test_labels: list[str],
) -> float:
    """Top-1 accuracy of the logistic probe on mean-pooled tokens."""
    predicted, _ = logistic_probe(
        train_tokens.mean(1).numpy(), np.array(train_labels), test_tokens.mean(1).numpy()
    )
    return float((predicted == np.array(test_labels)).mean())


def segmentation_probe(
    train_tokens: torch.Tensor,
    train_shares: torch.Tensor,
    test_tokens: torch.Tensor,
    test_shares: torch.Tensor,
) -> dict[str, float]:
    """Patch recall, precision, F1 and mIoU of the segmentation probe's MLP head, from each
    patch's class shares (N, patches, classes)."""
    train_union, _ = labels_from_counts(train_shares.numpy())
    test_union, test_majority = labels_from_counts(test_shares.numpy())
    logits = segmentation_logits(train_tokens, train_union, test_tokens)
    return segmentation_scores(logits, test_union, test_majority)


def cell_probe(
    train_tokens: torch.Tensor,
    train_cells: torch.Tensor,
    test_tokens: torch.Tensor,
    test_cells: torch.Tensor,
    attributes: tuple[str, ...],
) -> dict[str, float]:
    """Per-patch logistic probe onto each attribute of the patch's symbolic cell, scored on
    the test patches that hold an object (an empty cell has no colour to read)."""
    width = train_tokens.shape[-1]
    train_x, test_x = train_tokens.reshape(-1, width), test_tokens.reshape(-1, width)
    train_y, test_y = (
        train_cells.reshape(-1, len(attributes)),
        test_cells.reshape(-1, len(attributes)),
    )
    holds = test_y[:, 0] > 0  # the colour class is "none" exactly for empty cells
    scores = {}
    for k, name in enumerate(attributes):
        predicted, _ = logistic_probe(train_x.numpy(), train_y[:, k].numpy(), test_x[holds].numpy())
        scores[name] = float((predicted == test_y[holds, k].numpy()).mean())
    return scores


@torch.inference_mode()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 64) -> float:
    """exp of the mean next-token loss over held-out blocks."""
    model.eval()
    losses = [
        model(input_ids=blocks[s : s + batch_size], labels=blocks[s : s + batch_size]).loss.item()
        for s in range(0, len(blocks), batch_size)
    ]
    return math.exp(float(np.mean(losses)))
