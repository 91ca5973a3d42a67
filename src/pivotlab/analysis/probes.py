"""Classification probes on pooled encoder features: prototype, logistic regression, k-NN.

Three readings (defined in ``pivotlab.probes``, shared with the zoo's quality checks) of how
linearly or locally the world's classification labels (``shape``, ``color``, ``shape_color``)
sit in an encoder's pooled features, each trained on the train split and scored once on the
test split, with a bootstrap interval over test items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from pivotlab.analysis import LINEAR_PROBE, ROW_NAMES
from pivotlab.analysis.features import (
    PROBE_FILES,
    AnalysisError,
    Encoder,
    FeatureSpec,
    cached_features,
    probe_rows,
)
from pivotlab.evaluate.metrics import bootstrap_interval
from pivotlab.probes import knn_predict, logistic_probe, prototype_predict

LABELS = ("shape", "color", "shape_color")
METHODS = ("prototype", "logistic", "knn")
DEFAULT_SPEC = FeatureSpec()  # last hidden state, mean over patch tokens, no projector


def classification_rows(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    label: str,
    encoder_name: str,
) -> list[dict]:
    """One top-1 row per method, with a bootstrap interval over test items."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    n_classes = len(np.unique(train_y))
    if n_classes < 2:
        raise AnalysisError(f"label {label!r}: the train split holds a single class")
    logistic, C = logistic_probe(train_x, train_y, test_x)
    predictions = {
        "prototype": prototype_predict(train_x, train_y, test_x),
        "logistic": logistic,
        "knn": knn_predict(train_x, train_y, test_x),
    }
    rows = []
    for method in METHODS:
        outcomes = (predictions[method] == test_y).astype(np.float64)
        low, high = bootstrap_interval(outcomes)
        row = {
            "analysis": ROW_NAMES[LINEAR_PROBE],
            "encoder": encoder_name,
            "metric": "top1",
            "method": method,
            "label": label,
            "value": float(outcomes.mean()),
            "ci_low": low,
            "ci_high": high,
            "n": len(outcomes),
            "chance": 1.0 / n_classes,
        }
        if method == "logistic":
            row["C"] = C
        rows.append(row)
    return rows


def _labels(data: Path, label: str) -> np.ndarray:
    rows = probe_rows(data, "classification")
    for number, row in enumerate(rows, start=1):
        if label not in row:
            source = Path(data) / PROBE_FILES["classification"]
            raise AnalysisError(f"{source}:{number}: no {label!r} field")
    return np.asarray([str(row[label]) for row in rows])


def linear_probe(
    encoder: Encoder,
    train_data: Path | str,
    test_data: Path | str,
    spec: FeatureSpec = DEFAULT_SPEC,
    labels: Sequence[str] = LABELS,
    cache_dir: Path | None = None,
) -> list[dict]:
    """Prototype, logistic and k-NN probes for every label of the classification probe set."""
    if spec.pooling not in ("mean", "cls"):
        raise AnalysisError(
            f"pooling {spec.pooling!r}: the classification probes need one vector per image "
            "('mean' or 'cls')"
        )
    train_data, test_data = Path(train_data), Path(test_data)
    train_x = cached_features(encoder, train_data, "classification", spec, cache_dir).numpy()
    test_x = cached_features(encoder, test_data, "classification", spec, cache_dir).numpy()
    qualifiers = {"layer": spec.layer, "pooling": spec.pooling, "projector": spec.projector}
    rows = []
    for label in labels:
        train_y, test_y = _labels(train_data, label), _labels(test_data, label)
        for row in classification_rows(train_x, train_y, test_x, test_y, label, encoder.name):
            rows.append({**row, **qualifiers})
    return rows
