"""PIVOT's patch-level segmentation probe on a frozen encoder, read from a probe split.

The probe itself (patch labels, heads, metrics) is ``pivotlab.probes``, shared with the zoo's
quality checks; this module reads a split's masks onto the encoder's patch grid, trains the
head on the cached patch features and gives each metric an interval. Intervals resample test
images (1000 resamples, seed 0) and recompute each macro metric from the resampled per-image
counts, so patches of one image stay together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pivotlab.analysis import ROW_NAMES, SEGMENTATION
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
from pivotlab.probes import (
    EPOCHS,
    HIDDEN,
    SEGMENTATION_METRICS,
    check_head,
    image_counts,
    patch_labels,
    segmentation_logits,
    segmentation_metrics,
)
from pivotlab.world.vocab import SEMANTIC_CLASSES

NUM_CLASSES = len(SEMANTIC_CLASSES)


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
        patch_labels(_read_mask(data, row, f"{source}:{i + 1}", size), patch, NUM_CLASSES)
        for i, row in enumerate(probe_rows(data, "segmentation"))
    ]
    return np.stack([u for u, _ in labels]), np.stack([m for _, m in labels])


# ---------------------------------------------------------------------------- scores


def score_predictions(
    logits: np.ndarray,
    union: np.ndarray,
    majority: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, tuple[float, float, float]]:
    """Each metric's (value, ci_low, ci_high); the interval resamples test images."""
    counts = image_counts(logits, union, majority)
    values = segmentation_metrics({name: c.sum(0) for name, c in counts.items()})
    n = len(logits)
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    resampled = segmentation_metrics({name: weights @ c for name, c in counts.items()})
    return {
        name: (float(values[name]), *map(float, np.nanpercentile(resampled[name], [2.5, 97.5])))
        for name in SEGMENTATION_METRICS
    }


# ---------------------------------------------------------------------------- probe


def segmentation_probe(
    encoder: Encoder,
    train_data: Path | str,
    test_data: Path | str,
    head: str = "mlp",
    layer: int = -1,
    epochs: int = EPOCHS,
    hidden: int = HIDDEN,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> list[dict]:
    """Patch recall, precision, F1 and mIoU of a head trained on the frozen encoder's patch
    features of ``layer`` over the train split's segmentation probe set."""
    check_head(head)  # before any forward pass
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
    logits = segmentation_logits(train_x, train_union, test_x, head, hidden, epochs, seed)
    scores = score_predictions(logits, test_union, test_majority)
    qualifiers = {"head": head, "layer": layer, "epochs": epochs}
    if head == "mlp":
        qualifiers["hidden"] = hidden
    return [
        {
            "analysis": ROW_NAMES[SEGMENTATION],
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
