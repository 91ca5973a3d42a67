"""The shared probes agree with scikit-learn and hand computations: classification (logistic,
prototype, k-NN, C chosen on train alone) and the patch segmentation probe (labels, heads,
metrics), as both the zoo and the analysis layer use them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score
from sklearn.preprocessing import StandardScaler

from pivotlab.probes import (
    C_GRID,
    HEADS,
    ProbeError,
    check_head,
    choose_c,
    knn_predict,
    labels_from_counts,
    logistic_model,
    logistic_predict,
    logistic_probe,
    patch_class_counts,
    patch_labels,
    prototype_predict,
    segmentation_scores,
    train_head,
    validation_split,
)

NUM_CLASSES = 5


def clusters(seed: int, per_class: int, classes: int = 4, dim: int = 16) -> tuple:
    """Tight clusters around orthogonal directions (separable by angle), string labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:classes] * 5.0
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.normal(scale=0.2, size=(len(y), dim))
    return x, np.asarray([f"class-{c}" for c in y])


def sklearn_direct(train_x, train_y, test_x, C: float) -> np.ndarray:
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(train_x), train_y)
    return model.predict(scaler.transform(test_x))


# ---------------------------------------------------------------------------- classification


def test_logistic_probe_is_sklearn_logistic_regression_on_standardised_features() -> None:
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(80, 10)), rng.normal(size=(30, 10))
    train_y = np.asarray(list("abc"))[rng.integers(0, 3, 80)]
    for C in (0.01, 1.0):
        np.testing.assert_array_equal(
            logistic_predict(train_x, train_y, test_x, C),
            sklearn_direct(train_x, train_y, test_x, C),
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
    chosen = C_GRID[int(np.argmax(scores))]
    assert choose_c(train_x, train_y) == chosen
    for test_x in (rng.normal(size=(40, 6)), rng.normal(size=(7, 6))):
        predicted, C = logistic_probe(train_x, train_y, test_x)
        assert chosen == C
        np.testing.assert_array_equal(predicted, sklearn_direct(train_x, train_y, test_x, C))


def test_choose_c_refuses_a_single_class() -> None:
    with pytest.raises(ProbeError, match="fewer than two classes"):
        choose_c(np.zeros((10, 3)), np.full(10, "a"))


def test_prototype_and_knn_are_perfect_on_separable_clusters() -> None:
    train_x, train_y = clusters(seed=0, per_class=25)
    test_x, test_y = clusters(seed=1, per_class=10)
    np.testing.assert_array_equal(prototype_predict(train_x, train_y, test_x), test_y)
    np.testing.assert_array_equal(knn_predict(train_x, train_y, test_x), test_y)


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


# ---------------------------------------------------------------------------- segmentation


def test_union_and_majority_labels_of_a_hand_made_mask() -> None:
    mask = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 2],
            [0, 3, 2, 2],
            [3, 0, 2, 2],
        ],
        dtype=np.uint8,
    )
    union, majority = patch_labels(mask, patch=2, num_classes=NUM_CLASSES)
    positives = [set(np.flatnonzero(row)) for row in union]
    # background counts only where it is alone; patches are read row by row
    assert positives == [{0}, {1, 2}, {3}, {2}]
    # the two-two tie of background and class 3 goes to the lower index
    assert list(majority) == [0, 1, 0, 2]
    # shares (the zoo keeps each patch's class fractions) give the same labels as counts
    shares = patch_class_counts(mask, 2, NUM_CLASSES) / 4
    for ours, theirs in zip(labels_from_counts(shares), (union, majority), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def _one_hot_logits(predicted: np.ndarray, num_classes: int) -> np.ndarray:
    return np.where(np.eye(num_classes, dtype=bool)[predicted], 5.0, -5.0)


def test_miou_is_dataset_level_and_skips_classes_absent_everywhere() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    predicted = np.array([[0, 1, 1], [1, 2, 0]])
    logits = _one_hot_logits(predicted, num_classes=4)
    union = np.eye(4, dtype=bool)[truth]
    scores = segmentation_scores(logits, union, truth)
    # IoU: background 1/3, class 1 2/3, class 2 1/2; class 3 is in neither and left out
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    expected = jaccard_score(truth.ravel(), predicted.ravel(), labels=[0, 1, 2], average="macro")
    assert scores["miou"] == pytest.approx(expected)


def test_a_class_only_predicted_counts_in_miou_with_iou_zero() -> None:
    truth = np.array([[0, 0, 1, 1]])
    predicted = np.array([[0, 3, 1, 1]])  # class 3 is never true: IoU 0, still averaged
    union = np.eye(4, dtype=bool)[truth]
    scores = segmentation_scores(_one_hot_logits(predicted, 4), union, truth)
    assert scores["miou"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_macro_patch_metrics_match_sklearn_over_the_classes_present() -> None:
    rng = np.random.default_rng(0)
    union = rng.random((12, 9, 6)) < 0.3
    union[..., 4] = False  # a class the test truth never holds
    logits = rng.normal(size=union.shape)
    scores = segmentation_scores(logits, union, union.argmax(-1))
    truth, predicted = union.reshape(-1, 6), (logits > 0).reshape(-1, 6)
    present = [0, 1, 2, 3, 5]
    for name, metric in (
        ("patch_recall", recall_score),
        ("patch_precision", precision_score),
        ("patch_f1", f1_score),
    ):
        expected = metric(truth, predicted, labels=present, average="macro", zero_division=0)
        assert scores[name] == pytest.approx(expected)


@pytest.mark.parametrize("head", HEADS)
def test_a_head_learns_labels_the_features_carry(head: str) -> None:
    generator = torch.Generator().manual_seed(0)
    classes = torch.randint(0, NUM_CLASSES, (96, 4), generator=generator)
    one_hot = torch.nn.functional.one_hot(classes, NUM_CLASSES).float()
    # the class one-hot, padded to 64 dimensions (a small initialisation), plus noise
    noise = torch.randn(96, 4, 64, generator=generator)
    features = torch.nn.functional.pad(10 * one_hot, (0, 64 - NUM_CLASSES)) + 0.1 * noise
    union = one_hot.bool().numpy()
    model = train_head(features[:64], union[:64], head, hidden=64, epochs=25, batch_images=4)
    with torch.inference_mode():
        logits = model(features[64:]).numpy()
    scores = segmentation_scores(logits, union[64:], classes[64:].numpy())
    assert scores["patch_recall"] > 0.95
    assert scores["miou"] > 0.95


def test_an_unknown_head_is_refused() -> None:
    with pytest.raises(ProbeError, match="head 'transformer': expected one of mlp, linear"):
        check_head("transformer")
