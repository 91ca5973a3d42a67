"""Quality checks of zoo parts: linear probe, patch-level segmentation probe, perplexity.

Every encoder is read the same way here: the final layer's tokens (``last_hidden_state``),
CLS dropped, mean-pooled for the linear probe and per patch for the segmentation probe; the
cell probe reads the hidden state an MLLM's projector takes (``vision_feature_layer``).
Probes are scikit-learn logistic regressions with a fixed regularisation (C = 1 on
standardised features): nothing is tuned, so nothing is tuned on the test split. The
analysis layer's probes (validation-selected, with intervals) are the study's instrument;
these checks only order the zoo's parts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


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


def _fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    # One BLAS thread: OpenBLAS's threads and torch's OpenMP threads in one process fight
    # over the cores, and small fits ran several times slower with two (docs/performance.md).
    with threadpool_limits(limits=1, user_api="blas"):
        scaler = StandardScaler().fit(train_x)
        model = LogisticRegression(C=1.0, max_iter=1000)
        model.fit(scaler.transform(train_x), train_y)
        return model.predict(scaler.transform(test_x))


def linear_probe(
    train_tokens: torch.Tensor,
    train_labels: list[str],
    test_tokens: torch.Tensor,
    test_labels: list[str],
) -> float:
    """Top-1 accuracy of a logistic regression on mean-pooled tokens."""
    predicted = _fit_predict(
        train_tokens.mean(1).numpy(), np.array(train_labels), test_tokens.mean(1).numpy()
    )
    return float((predicted == np.array(test_labels)).mean())


def segmentation_probe(
    train_tokens: torch.Tensor,
    train_shares: torch.Tensor,
    test_tokens: torch.Tensor,
    test_shares: torch.Tensor,
) -> dict[str, float]:
    """Per-patch logistic regression onto each patch's majority class: patch accuracy and
    mIoU over the classes present in the test patches (confusion accumulated over all)."""
    width = train_tokens.shape[-1]
    train_y = train_shares.argmax(-1).reshape(-1).numpy()
    test_y = test_shares.argmax(-1).reshape(-1).numpy()
    predicted = _fit_predict(
        train_tokens.reshape(-1, width).numpy(), train_y, test_tokens.reshape(-1, width).numpy()
    )
    ious = []
    for c in np.unique(test_y):
        intersection = np.sum((predicted == c) & (test_y == c))
        union = np.sum((predicted == c) | (test_y == c))
        ious.append(intersection / union)
    return {"patch_accuracy": float((predicted == test_y).mean()), "miou": float(np.mean(ious))}


def cell_probe(
    train_tokens: torch.Tensor,
    train_cells: torch.Tensor,
    test_tokens: torch.Tensor,
    test_cells: torch.Tensor,
    attributes: tuple[str, ...],
) -> dict[str, float]:
    """Per-patch logistic regression onto each attribute of the patch's symbolic cell,
    scored on the test patches that hold an object (an empty cell has no colour to read)."""
    width = train_tokens.shape[-1]
    train_x, test_x = train_tokens.reshape(-1, width), test_tokens.reshape(-1, width)
    train_y, test_y = (
        train_cells.reshape(-1, len(attributes)),
        test_cells.reshape(-1, len(attributes)),
    )
    holds = test_y[:, 0] > 0  # the colour class is "none" exactly for empty cells
    scores = {}
    for k, name in enumerate(attributes):
        predicted = _fit_predict(train_x.numpy(), train_y[:, k].numpy(), test_x[holds].numpy())
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
