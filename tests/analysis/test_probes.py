"""Classification probes agree with scikit-learn and hand computations, choose C on train
alone, and run end to end on a saved MLLM's encoder through the feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pivotlab.analysis import features
from pivotlab.analysis.features import (
    AnalysisError,
    FeatureSpec,
    cached_features,
    load_encoder,
    probe_rows,
)
from pivotlab.analysis.probes import (
    C_GRID,
    LABELS,
    METHODS,
    choose_c,
    classification_rows,
    knn_predict,
    linear_probe,
    logistic_model,
    logistic_predict,
    prototype_predict,
    validation_split,
)


def _clusters(seed: int, per_class: int, classes: int = 4, dim: int = 16) -> tuple:
    """Tight clusters around orthogonal directions (separable by angle), string labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:classes] * 5.0
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.normal(scale=0.2, size=(len(y), dim))
    return x, np.asarray([f"class-{c}" for c in y])


def _sklearn_direct(train_x, train_y, test_x, C: float) -> np.ndarray:
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(train_x), train_y)
    return model.predict(scaler.transform(test_x))


def test_logistic_probe_is_sklearn_logistic_regression_on_standardised_features() -> None:
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(80, 10)), rng.normal(size=(30, 10))
    train_y = np.asarray(list("abc"))[rng.integers(0, 3, 80)]
    for C in (0.01, 1.0):
        np.testing.assert_array_equal(
            logistic_predict(train_x, train_y, test_x, C),
            _sklearn_direct(train_x, train_y, test_x, C),
        )


def test_validation_split_is_a_stratified_fifth_of_train() -> None:
    labels = np.repeat(["a", "b", "c", "d"], [10, 20, 30, 40])
    fit, val = validation_split(labels, seed=0)
    assert sorted([*fit, *val]) == list(range(100))
    assert len(val) == 20
    assert sorted(np.unique(labels[val], return_counts=True)[1]) == [2, 4, 6, 8]
    # one item per class for 30 classes cannot be stratified: a plain seeded split instead
    fit, val = validation_split(np.arange(30).astype(str), seed=0)
    assert len(val) == 6 and len(set(fit) | set(val)) == 30


def test_c_is_the_best_on_the_train_validation_split_and_ignores_test() -> None:
    rng = np.random.default_rng(1)
    train_x = rng.normal(size=(120, 6))
    train_y = np.where(train_x[:, 0] + rng.normal(scale=1.0, size=120) > 0, "pos", "neg")
    fit, val = validation_split(train_y, seed=0)
    scores = [
        logistic_model(C).fit(train_x[fit], train_y[fit]).score(train_x[val], train_y[val])
        for C in C_GRID
    ]
    assert choose_c(train_x, train_y) == C_GRID[int(np.argmax(scores))]

    test_x = rng.normal(size=(40, 6))
    rows = classification_rows(train_x, train_y, test_x, np.full(40, "pos"), "l", "enc")
    flipped = classification_rows(train_x, train_y, -test_x, np.full(40, "neg"), "l", "enc")
    chosen = {row["C"] for row in rows + flipped if row["method"] == "logistic"}
    assert chosen == {choose_c(train_x, train_y)}


def test_prototype_and_knn_are_perfect_on_separable_clusters() -> None:
    train_x, train_y = _clusters(seed=0, per_class=25)
    test_x, test_y = _clusters(seed=1, per_class=10)
    np.testing.assert_array_equal(prototype_predict(train_x, train_y, test_x), test_y)
    np.testing.assert_array_equal(knn_predict(train_x, train_y, test_x), test_y)
    rows = classification_rows(train_x, train_y, test_x, test_y, "shape", "enc")
    assert {row["method"]: row["value"] for row in rows} == dict.fromkeys(METHODS, 1.0)
    assert all(row["chance"] == 0.25 and row["n"] == 40 for row in rows)


def _knn_by_hand(train_x, train_y, test_x, k: int, temperature: float) -> list[str]:
    predictions = []
    for query in test_x:
        sims = [
            float(query @ item / np.linalg.norm(query) / np.linalg.norm(item)) for item in train_x
        ]
        votes: dict[str, float] = {}
        for index in sorted(range(len(sims)), key=lambda i: -sims[i])[:k]:
            votes[train_y[index]] = votes.get(train_y[index], 0.0) + np.exp(
                sims[index] / temperature
            )
        predictions.append(max(votes, key=votes.get))
    return predictions


def test_knn_is_dinos_weighted_vote() -> None:
    rng = np.random.default_rng(2)
    train_x, test_x = rng.normal(size=(60, 5)), rng.normal(size=(25, 5))
    train_y = np.asarray(list("abcd"))[rng.integers(0, 4, 60)]
    for k, temperature in ((20, 0.07), (7, 0.5)):
        assert list(knn_predict(train_x, train_y, test_x, k, temperature)) == _knn_by_hand(
            train_x, train_y, test_x, k, temperature
        )
    # k beyond the train size is capped: every train item votes
    small_x, small_y = train_x[:6], train_y[:6]
    np.testing.assert_array_equal(
        knn_predict(small_x, small_y, test_x, k=20), knn_predict(small_x, small_y, test_x, k=6)
    )


def test_test_labels_unseen_in_train_count_as_wrong() -> None:
    train_x, train_y = _clusters(seed=0, per_class=25)
    test_x, test_y = _clusters(seed=1, per_class=10)
    test_y = np.asarray(["never-trained"] * 10 + list(test_y[10:]))
    rows = classification_rows(train_x, train_y, test_x, test_y, "shape_color", "enc")
    assert all(row["value"] == 0.75 for row in rows)


def test_linear_probe_end_to_end_reads_the_cache_and_matches_sklearn(
    tiny_model_dir: Path,
    probe_splits: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train, test = probe_splits
    first = {}
    for source in (tiny_model_dir, f"random:{tiny_model_dir}"):
        encoder = load_encoder(source)
        rows = first[source] = linear_probe(encoder, train, test, cache_dir=tmp_path)
        assert {(row["label"], row["method"]) for row in rows} == {
            (label, method) for label in LABELS for method in METHODS
        }
        for row in rows:
            assert row["encoder"] == str(source) and row["analysis"] == "linear_probe"
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
            assert row["n"] == len(probe_rows(test, "classification"))

        # the acceptance check: scikit-learn run directly on the cached features, same C
        spec = FeatureSpec()
        train_x = cached_features(encoder, train, "classification", spec, tmp_path).numpy()
        test_x = cached_features(encoder, test, "classification", spec, tmp_path).numpy()
        for row in rows:
            if row["method"] != "logistic":
                continue
            train_y = [r[row["label"]] for r in probe_rows(train, "classification")]
            test_y = np.asarray([r[row["label"]] for r in probe_rows(test, "classification")])
            direct = _sklearn_direct(train_x, train_y, test_x, row["C"])
            assert row["value"] == float(np.mean(direct == test_y))

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("features were extracted again instead of read from the cache")

    monkeypatch.setattr(features, "extract", no_forward_pass)
    again = linear_probe(load_encoder(tiny_model_dir), train, test, cache_dir=tmp_path)
    assert again == first[tiny_model_dir]


def test_linear_probe_rejects_patch_pooling_and_unknown_labels(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder = load_encoder(tiny_model_dir)
    with pytest.raises(AnalysisError, match="pooling 'patch'"):
        linear_probe(encoder, *probe_splits, spec=FeatureSpec(pooling="patch"), cache_dir=tmp_path)
    with pytest.raises(AnalysisError, match=r"classification\.jsonl:1: no 'size' field"):
        linear_probe(encoder, *probe_splits, labels=("size",), cache_dir=tmp_path)
