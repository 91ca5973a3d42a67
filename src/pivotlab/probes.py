"""The probes that read a frozen encoder's features: one definition, used by the zoo's quality
checks and by the analysis layer.

Everything here works on arrays (features and labels already extracted), below every layer,
so the zoo can score its parts with the same instrument the study uses on post-trained ones.

Classification, on one vector per image (each trained on train, scored once on test):

- **prototype**: class means of L2-normalised train features, cosine similarity, argmax.
  PIVOT's "faster" prototype computes the means on the split it scores; here they come from
  train, so the test split is never seen before scoring.
- **logistic**: L2-regularised logistic regression (scikit-learn, lbfgs, 1000 iterations) on
  features standardised with train statistics. C is chosen on a validation split carved from
  train, then the probe is refit on all of train. PIVOT and CLIP's recipe pick C on the split
  they report, which flatters the probe.
- **knn**: DINO's weighted k-NN (``knn_classifier``): cosine similarity of L2-normalised
  features, the top 20 train neighbours vote with weight ``exp(sim / 0.07)``. Written out in
  numpy because scikit-learn's KNeighborsClassifier has no exponential-similarity weighting.

Test labels the train split never holds are simply counted wrong.

Segmentation, PIVOT's patch-level probe (iancovert/patch-seg), on one vector per patch. A
patch's "union" labels mark every class present in it, background only when nothing else is
(patch-seg's multi-label reduction); its majority label is the class covering most of its
pixels, ties to the lower class index. A head (``mlp``: Linear-GELU-Linear, or ``linear``) is
trained with BCE-with-logits on the union labels (AdamW, lr 1e-3 cosine to 1e-4, weight decay
0.01, batches of images, seeded; no warmup, since patch-seg's 500 warmup steps outlast a small
split's whole run) and scored on the test split:

- ``patch_recall`` (PIVOT's "patch recall"), ``patch_precision`` and ``patch_f1``: per-class
  scores over the union labels at sigmoid > 0.5, averaged over the classes present in the
  test truth (macro F1 is the mean of per-class F1, scikit-learn's definition);
- ``miou``: the argmax prediction against the majority label, from one confusion matrix
  accumulated over the whole test set; IoU_c = I_c / U_c averaged over the classes with
  U_c > 0 (mmseg's definition).

The counts are kept per image (``image_counts``) so the analysis layer can bootstrap over
images; a metrics library gives only the pooled scores.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from pivotlab.errors import PivotlabError

C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 13))
VALIDATION_FRACTION = 0.2
KNN_K = 20
KNN_TEMPERATURE = 0.07
MAX_ITER = 1000

HEADS = ("mlp", "linear")
SEGMENTATION_METRICS = ("patch_recall", "patch_precision", "patch_f1", "miou")
BACKGROUND = 0
LR, LR_END, WEIGHT_DECAY = 1e-3, 1e-4, 0.01
EPOCHS = 5
BATCH_IMAGES = 32
HIDDEN = 256


class ProbeError(PivotlabError):
    """A probe cannot be fitted on the data it was given."""


# ---------------------------------------------------------------------------- classification


def _normalised(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def prototype_predict(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike) -> np.ndarray:
    """Labels of ``test_x`` by cosine similarity to the class means of normalised train features."""
    train_x, train_y = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
    classes, codes = np.unique(train_y, return_inverse=True)
    normed = _normalised(train_x)
    means = np.stack([normed[codes == c].mean(0) for c in range(len(classes))])
    similarity = _normalised(np.asarray(test_x, dtype=np.float64)) @ _normalised(means).T
    return classes[similarity.argmax(1)]


def knn_predict(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> np.ndarray:
    """DINO's weighted k-NN: the top-``k`` cosine neighbours vote with ``exp(sim / T)``."""
    train_x, train_y = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
    classes, codes = np.unique(train_y, return_inverse=True)
    k = min(k, len(train_y))
    similarity = _normalised(np.asarray(test_x, dtype=np.float64)) @ _normalised(train_x).T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
    scores = np.zeros((len(similarity), len(classes)))
    np.add.at(scores, (np.arange(len(similarity))[:, None], codes[nearest]), weights)
    return classes[scores.argmax(1)]


def logistic_model(C: float) -> Pipeline:
    """The logistic probe: standardisation fitted on its training data, then L2 logistic."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))


def _quiet_single_thread_fit(model, x: np.ndarray, y: np.ndarray):
    # The 1000-iteration cap is the protocol (CLIP, DINOv2); weakly regularised grid points
    # routinely reach it, and the validation score already judges what they learnt. One BLAS
    # thread: OpenBLAS's threads and torch's OpenMP threads in one process fight over the
    # cores, and small fits ran several times slower with two (docs/performance.md).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def validation_split(train_y: ArrayLike, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, validation) indices of train, about 20% for validation, stratified when
    every class has two members and the validation part can hold one of each."""
    train_y = np.asarray(train_y)
    indices = np.arange(len(train_y))
    _, counts = np.unique(train_y, return_counts=True)
    n_val = int(np.ceil(VALIDATION_FRACTION * len(train_y)))
    stratifiable = counts.min() >= 2 and len(counts) <= min(n_val, len(train_y) - n_val)
    fit, val = train_test_split(
        indices,
        test_size=n_val,
        random_state=seed,
        stratify=train_y if stratifiable else None,
    )
    return np.sort(fit), np.sort(val)


def choose_c(
    train_x: ArrayLike, train_y: ArrayLike, grid: Sequence[float] = C_GRID, seed: int = 0
) -> float:
    """The C of ``grid`` with the best validation accuracy on a split of train alone; ties go
    to the smallest C (the strongest regularisation)."""
    train_x, train_y = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
    fit, val = validation_split(train_y, seed)
    if len(np.unique(train_y[fit])) < 2:
        raise ProbeError(f"{len(train_y)} train items leave fewer than two classes to choose C on")
    # One scaler fitted on the fit part; LogisticRegressionCV walks the C grid warm-started
    # from the previous solution (about 4x faster than a cold fit per C on 10k images) and,
    # given this single (fit, validation) split as its "cv", scores each C on validation only.
    scaled = StandardScaler().fit(train_x[fit]).transform(train_x)
    search = LogisticRegressionCV(
        Cs=list(grid),
        cv=[(fit, val)],
        scoring="accuracy",
        max_iter=MAX_ITER,
        refit=False,
        use_legacy_attributes=False,
        l1_ratios=(0.0,),
    )
    _quiet_single_thread_fit(search, scaled, train_y)
    scores = search.scores_[0, 0]  # (folds, l1 ratios, Cs): our one split, plain L2
    return float(grid[int(np.argmax(scores))])


def logistic_predict(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, C: float
) -> np.ndarray:
    """Labels of ``test_x`` from the logistic probe fitted on all of train with ``C``."""
    train_x, train_y = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
    model = _quiet_single_thread_fit(logistic_model(C), train_x, train_y)
    with threadpool_limits(limits=1, user_api="blas"):
        return model.predict(np.asarray(test_x, dtype=np.float64))


def logistic_probe(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike
) -> tuple[np.ndarray, float]:
    """(labels of ``test_x``, C): C chosen on train's validation split, then fit on all train."""
    C = choose_c(train_x, train_y)
    return logistic_predict(train_x, train_y, test_x, C), C


# ---------------------------------------------------------------------------- patch labels


def patch_class_counts(mask: np.ndarray, patch: int, num_classes: int) -> np.ndarray:
    """(patches, classes) pixel counts of each class in each ``patch`` x ``patch`` block of a
    semantic mask whose sides are multiples of ``patch``; patches numbered row by row, like
    a vision tower's patch tokens."""
    rows, cols = mask.shape[0] // patch, mask.shape[1] // patch
    blocks = mask.reshape(rows, patch, cols, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows * cols, patch * patch).astype(np.int64)
    return np.stack([(blocks == c).sum(1) for c in range(num_classes)], axis=1)


def labels_from_counts(counts: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(union (..., C) bool, majority (...) int) of per-patch class counts or shares."""
    counts = np.asarray(counts)
    union = counts > 0
    union[..., BACKGROUND] &= ~union[..., BACKGROUND + 1 :].any(-1)
    return union, counts.argmax(-1)


def patch_labels(mask: np.ndarray, patch: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(union (P, C) bool, majority (P,) int) of a semantic mask on a ``patch`` grid."""
    return labels_from_counts(patch_class_counts(mask, patch, num_classes))


# ---------------------------------------------------------------------------- segmentation heads


def check_head(head: str) -> None:
    """Refuse a head name the probe does not know, before any work is done."""
    if head not in HEADS:
        raise ProbeError(f"segmentation head {head!r}: expected one of {', '.join(HEADS)}")


def make_head(head: str, width: int, hidden: int, num_classes: int) -> nn.Module:
    """``mlp`` (Linear-GELU-Linear) or ``linear``, applied to each patch token."""
    check_head(head)
    if head == "linear":
        return nn.Linear(width, num_classes)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


def train_head(
    features: torch.Tensor,
    union: np.ndarray,
    head: str = "mlp",
    hidden: int = HIDDEN,
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


def segmentation_logits(
    train_x: torch.Tensor,
    train_union: np.ndarray,
    test_x: torch.Tensor,
    head: str = "mlp",
    hidden: int = HIDDEN,
    epochs: int = EPOCHS,
    seed: int = 0,
) -> np.ndarray:
    """(N_test, P, C) logits of a head trained on the train patches' union labels."""
    model = train_head(train_x, train_union, head, hidden, epochs, seed=seed)
    with torch.inference_mode():
        return model(test_x).numpy()


# ---------------------------------------------------------------------------- segmentation metrics


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


def segmentation_metrics(totals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every metric of ``SEGMENTATION_METRICS`` from summed counts (..., C) of ``image_counts``."""
    scores = macro_scores(totals["tp"], totals["fp"], totals["fn"])
    scores["miou"] = mean_iou(totals["intersection"], totals["union"])
    return scores


def segmentation_scores(
    logits: np.ndarray, union: np.ndarray, majority: np.ndarray
) -> dict[str, float]:
    """Each metric of ``SEGMENTATION_METRICS`` over the whole test set."""
    counts = image_counts(logits, union, majority)
    totals = segmentation_metrics({name: c.sum(0) for name, c in counts.items()})
    return {name: float(totals[name]) for name in SEGMENTATION_METRICS}
