"""Classification probes on pooled encoder features: prototype, logistic regression, k-NN.

Three readings of how linearly (or locally) the world's classification labels (``shape``,
``color``, ``shape_color``) sit in an encoder's pooled features, each trained on the train
split and scored once on the test split:

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

Test labels the train split never holds (the holdout combinations) are simply counted wrong.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pivotlab.analysis.features import (
    PROBE_FILES,
    AnalysisError,
    Encoder,
    FeatureSpec,
    cached_features,
    probe_rows,
)
from pivotlab.evaluate.metrics import bootstrap_interval

LABELS = ("shape", "color", "shape_color")
METHODS = ("prototype", "logistic", "knn")
C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 13))
VALIDATION_FRACTION = 0.2
KNN_K = 20
KNN_TEMPERATURE = 0.07
MAX_ITER = 1000
DEFAULT_SPEC = FeatureSpec()  # last hidden state, mean over patch tokens, no projector


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


def _fit(model: Pipeline, x: np.ndarray, y: np.ndarray) -> Pipeline:
    # The 1000-iteration cap is the protocol (CLIP, DINOv2); weakly regularised grid points
    # routinely reach it, and the validation score already judges what they learnt.
    with warnings.catch_warnings():
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
        raise AnalysisError(
            f"{len(train_y)} train items leave fewer than two classes to choose C on"
        )
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(scaled, train_y)
    scores = search.scores_[0, 0]  # (folds, l1 ratios, Cs): our one split, plain L2
    return float(grid[int(np.argmax(scores))])


def logistic_predict(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, C: float
) -> np.ndarray:
    """Labels of ``test_x`` from the logistic probe fitted on all of train with ``C``."""
    model = _fit(logistic_model(C), np.asarray(train_x, dtype=np.float64), np.asarray(train_y))
    return model.predict(np.asarray(test_x, dtype=np.float64))


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
    C = choose_c(train_x, train_y)
    predictions = {
        "prototype": prototype_predict(train_x, train_y, test_x),
        "logistic": logistic_predict(train_x, train_y, test_x, C),
        "knn": knn_predict(train_x, train_y, test_x),
    }
    rows = []
    for method in METHODS:
        outcomes = (predictions[method] == test_y).astype(np.float64)
        low, high = bootstrap_interval(outcomes)
        row = {
            "analysis": "linear_probe",
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
