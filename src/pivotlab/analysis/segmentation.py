"""PIVOT's patch-level segmentation probe on a frozen encoder (iancovert/patch-seg).

Each image's semantic mask is cut into the encoder's patch grid. A patch's "union" labels mark
every class present in it, background only when nothing else is (patch-seg's multi-label
reduction); its majority label is the class covering most of its pixels, ties to the lower
class index. A head on the per-patch features (``mlp``: Linear-GELU-Linear, or ``linear``) is
trained with BCE-with-logits on the union labels (AdamW, lr 1e-3 cosine to 1e-4, weight decay
0.01, batches of images, seeded; no warmup, since patch-seg's 500 warmup steps outlast a small
split's whole run) and scored on the test split:

- ``patch_recall`` (PIVOT's "patch recall"), ``patch_precision`` and ``patch_f1``: per-class
  scores over the union labels at sigmoid > 0.5, averaged over the classes present in the
  test truth (macro F1 is the mean of per-class F1, scikit-learn's definition);
- ``miou``: the argmax prediction against the majority label, from one confusion matrix
  accumulated over the whole test set; IoU_c = I_c / U_c averaged over the classes with
  U_c > 0 (mmseg's definition).

Intervals resample test images (1000 resamples, seed 0) and recompute each macro metric from
the resampled per-image counts, so patches of one image stay together. The counts are kept in
numpy, not a metrics library, because that bootstrap needs them per image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pivotlab.analysis.features import (
    PROBE_FILES,
    AnalysisError,
    Encoder,
    FeatureSpec,
    cached_features,
    probe_rows,
)
from pivotlab.evaluate.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from pivotlab.images import open_image
from pivotlab.world.vocab import SEMANTIC_CLASSES

HEADS = ("mlp", "linear")
METRICS = ("patch_recall", "patch_precision", "patch_f1", "miou")
NUM_CLASSES = len(SEMANTIC_CLASSES)
BACKGROUND = 0
LR, LR_END, WEIGHT_DECAY = 1e-3, 1e-4, 0.01
EPOCHS = 5
BATCH_IMAGES = 32


# ---------------------------------------------------------------------------- labels


def patch_labels(
    mask: np.ndarray, patch: int, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """(union (P, C) bool, majority (P,) int) of a mask whose sides are multiples of ``patch``;
    patches are numbered row by row, like the tower's patch tokens."""
    rows, cols = mask.shape[0] // patch, mask.shape[1] // patch
    blocks = mask.reshape(rows, patch, cols, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows * cols, patch * patch).astype(np.int64)
    counts = np.stack([(blocks == c).sum(1) for c in range(num_classes)], axis=1)
    union = counts > 0
    union[:, BACKGROUND] &= ~union[:, BACKGROUND + 1 :].any(1)
    return union, counts.argmax(1)


def _read_mask(data: Path, row: dict, where: str, size: int) -> np.ndarray:
    path = data / row.get("mask", "")
    image = open_image(data, row.get("mask", ""), where, mode=None)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.NEAREST)
    mask = np.asarray(image)
    if mask.ndim != 2 or mask.max() >= NUM_CLASSES:
        raise AnalysisError(
            f"{where}: {path} is not a semantic mask (one channel, classes 0-{NUM_CLASSES - 1})"
        )
    return mask


def split_labels(encoder: Encoder, data: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """(union (N, P, C), majority (N, P)) of a split's segmentation probe set on the
    encoder's patch grid; masks are first resized (nearest) to the encoder's image size."""
    data = Path(data)
    size, patch = encoder.tower.config.image_size, encoder.tower.config.patch_size
    if size % patch:
        raise AnalysisError(f"{encoder.name}: image size {size} is not a multiple of {patch}")
    source = data / PROBE_FILES["segmentation"]
    labels = [
        patch_labels(_read_mask(data, row, f"{source}:{i + 1}", size), patch)
        for i, row in enumerate(probe_rows(data, "segmentation"))
    ]
    return np.stack([u for u, _ in labels]), np.stack([m for _, m in labels])


# ---------------------------------------------------------------------------- heads


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise AnalysisError(f"segmentation head {head!r}: expected one of {', '.join(HEADS)}")


def make_head(head: str, width: int, hidden: int, num_classes: int = NUM_CLASSES) -> nn.Module:
    """``mlp`` (Linear-GELU-Linear) or ``linear``, applied to each patch token."""
    _check_head(head)
    if head == "linear":
        return nn.Linear(width, num_classes)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


def train_head(
    features: torch.Tensor,
    union: np.ndarray,
    head: str = "mlp",
    hidden: int = 256,
    epochs: int = EPOCHS,
    batch_images: int = BATCH_IMAGES,
    seed: int = 0,
) -> nn.Module:
    """A head fitted with BCE-with-logits on (N, P, D) features and (N, P, C) union labels."""
    torch.manual_seed(seed)
    model = make_head(head, features.shape[-1], hidden, union.shape[-1])
    targets = torch.as_tensor(union, dtype=torch.float32)
    steps = max(1, epochs * math.ceil(len(features) / batch_images))
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=LR_END)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(features), generator=order).split(batch_images):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(features[batch]), targets[batch]
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


# ---------------------------------------------------------------------------- metrics


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _masked_mean(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.where(keep, values, 0.0).sum(-1) / keep.sum(-1)


def macro_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Macro recall, precision and F1 from per-class counts (..., C), averaged over the
    classes present in the truth; a class never predicted has precision 0."""
    present = (tp + fn) > 0
    return {
        "patch_recall": _masked_mean(_ratio(tp, tp + fn), present),
        "patch_precision": _masked_mean(_ratio(tp, tp + fp), present),
        "patch_f1": _masked_mean(_ratio(2 * tp, 2 * tp + fp + fn), present),
    }


def mean_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mmseg's mIoU from per-class I and U (..., C): classes with U = 0 are left out."""
    return _masked_mean(_ratio(intersection, union), union > 0)


def confusion(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(truth, predicted) confusion matrix of two integer label arrays."""
    flat = truth.ravel() * num_classes + predicted.ravel()
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def image_counts(
    logits: np.ndarray, union: np.ndarray, majority: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-image counts (N, C): tp, fp, fn of the union labels at sigmoid > 0.5, and the
    intersection and union of the argmax prediction with the majority label."""
    positive = logits > 0  # sigmoid(x) > 0.5
    num_classes = logits.shape[-1]
    matrices = np.stack(
        [confusion(p.argmax(-1), t, num_classes) for p, t in zip(logits, majority, strict=True)]
    )
    hits = np.diagonal(matrices, axis1=1, axis2=2)
    return {
        "tp": (positive & union).sum(1),
        "fp": (positive & ~union).sum(1),
        "fn": (~positive & union).sum(1),
        "intersection": hits,
        "union": matrices.sum(1) + matrices.sum(2) - hits,
    }


def _metrics(totals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    scores = macro_scores(totals["tp"], totals["fp"], totals["fn"])
    scores["miou"] = mean_iou(totals["intersection"], totals["union"])
    return scores


def score_predictions(
    logits: np.ndarray,
    union: np.ndarray,
    majority: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, tuple[float, float, float]]:
    """Each metric's (value, ci_low, ci_high); the interval resamples test images."""
    counts = image_counts(logits, union, majority)
    values = _metrics({name: c.sum(0) for name, c in counts.items()})
    n = len(logits)
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    resampled = _metrics({name: weights @ c for name, c in counts.items()})
    return {
        name: (float(values[name]), *map(float, np.nanpercentile(resampled[name], [2.5, 97.5])))
        for name in METRICS
    }


# ---------------------------------------------------------------------------- probe


def segmentation_probe(
    encoder: Encoder,
    train_data: Path | str,
    test_data: Path | str,
    head: str = "mlp",
    layer: int = -1,
    epochs: int = EPOCHS,
    hidden: int = 256,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> list[dict]:
    """Patch recall, precision, F1 and mIoU of a head trained on the frozen encoder's patch
    features of ``layer`` over the train split's segmentation probe set."""
    _check_head(head)  # before any forward pass
    spec = FeatureSpec(layer=layer, pooling="patch")
    train_x = cached_features(encoder, train_data, "segmentation", spec, cache_dir)
    test_x = cached_features(encoder, test_data, "segmentation", spec, cache_dir)
    train_union, _ = split_labels(encoder, train_data)
    test_union, test_majority = split_labels(encoder, test_data)
    if train_x.shape[1] != train_union.shape[1]:
        raise AnalysisError(
            f"{encoder.name} gives {train_x.shape[1]} patch tokens per image but its "
            f"{encoder.grid}x{encoder.grid} grid has {train_union.shape[1]} patches"
        )
    model = train_head(train_x, train_union, head, hidden, epochs, seed=seed)
    with torch.inference_mode():
        logits = model(test_x).numpy()
    scores = score_predictions(logits, test_union, test_majority)
    qualifiers = {"head": head, "layer": layer, "epochs": epochs}
    if head == "mlp":
        qualifiers["hidden"] = hidden
    return [
        {
            "analysis": "segmentation_probe",
            "encoder": encoder.name,
            "metric": metric,
            **qualifiers,
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "n": len(logits),
        }
        for metric, (value, low, high) in scores.items()
    ]
