"""The patch segmentation probe: labels on the patch grid, metrics against scikit-learn and
hand computations, a head that learns what the features carry, and the end-to-end call."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from pivotlab.analysis.features import AnalysisError, load_encoder
from pivotlab.analysis.segmentation import (
    HEADS,
    METRICS,
    NUM_CLASSES,
    patch_labels,
    score_predictions,
    segmentation_probe,
    split_labels,
    train_head,
)


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
    union, majority = patch_labels(mask, patch=2, num_classes=5)
    positives = [set(np.flatnonzero(row)) for row in union]
    # background counts only where it is alone; patches are read row by row
    assert positives == [{0}, {1, 2}, {3}, {2}]
    # the two-two tie of background and class 3 goes to the lower index
    assert list(majority) == [0, 1, 0, 2]


def _fake_split(root: Path, mask: np.ndarray) -> Path:
    (root / "masks").mkdir(parents=True)
    (root / "probes").mkdir()
    Image.fromarray(mask).save(root / "masks" / "a.png")
    row = {"image": "images/a.png", "mask": "masks/a.png", "instances": "", "kind": "objects"}
    (root / "probes" / "segmentation.jsonl").write_text(json.dumps(row) + "\n")
    return root


def test_masks_are_resized_nearest_to_the_encoders_image_size(tmp_path: Path) -> None:
    encoder = SimpleNamespace(
        name="enc", tower=SimpleNamespace(config=SimpleNamespace(image_size=4, patch_size=2))
    )
    split = _fake_split(tmp_path / "split", np.array([[1, 2], [3, 0]], dtype=np.uint8))
    union, majority = split_labels(encoder, split)
    assert union.shape == (1, 4, NUM_CLASSES)
    assert majority.tolist() == [[1, 2, 3, 0]]

    broken = _fake_split(tmp_path / "broken", np.full((4, 4), 200, dtype=np.uint8))
    with pytest.raises(AnalysisError, match=r"segmentation\.jsonl:1: .* not a semantic mask"):
        split_labels(encoder, broken)


def _one_hot_logits(predicted: np.ndarray, num_classes: int) -> np.ndarray:
    return np.where(np.eye(num_classes, dtype=bool)[predicted], 5.0, -5.0)


def test_miou_is_dataset_level_and_skips_classes_absent_everywhere() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    predicted = np.array([[0, 1, 1], [1, 2, 0]])
    logits = _one_hot_logits(predicted, num_classes=4)
    union = np.eye(4, dtype=bool)[truth]
    scores = score_predictions(logits, union, truth)
    # IoU: background 1/3, class 1 2/3, class 2 1/2; class 3 is in neither and left out
    assert scores["miou"][0] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    expected = jaccard_score(truth.ravel(), predicted.ravel(), labels=[0, 1, 2], average="macro")
    assert scores["miou"][0] == pytest.approx(expected)


def test_macro_patch_metrics_match_sklearn_over_the_classes_present() -> None:
    rng = np.random.default_rng(0)
    union = rng.random((12, 9, 6)) < 0.3
    union[..., 4] = False  # a class the test truth never holds
    logits = rng.normal(size=union.shape)
    majority = union.argmax(-1)
    scores = score_predictions(logits, union, majority)
    truth, predicted = union.reshape(-1, 6), (logits > 0).reshape(-1, 6)
    present = [0, 1, 2, 3, 5]
    for name, metric in (
        ("patch_recall", recall_score),
        ("patch_precision", precision_score),
        ("patch_f1", f1_score),
    ):
        expected = metric(truth, predicted, labels=present, average="macro", zero_division=0)
        assert scores[name][0] == pytest.approx(expected)
        assert 0 <= scores[name][1] <= scores[name][2] <= 1


def test_metrics_count_patches_over_the_whole_set_not_per_image() -> None:
    rng = np.random.default_rng(1)
    union = rng.random((10, 4, 5)) < 0.4
    logits = rng.normal(size=union.shape)
    once = score_predictions(logits, union, union.argmax(-1))
    twice = score_predictions(
        np.concatenate([logits, logits]),
        np.concatenate([union, union]),
        np.concatenate([union.argmax(-1)] * 2),
    )
    for metric in METRICS:
        assert twice[metric][0] == pytest.approx(once[metric][0])
        # twice the images: the same estimate, a narrower interval
        assert twice[metric][2] - twice[metric][1] < once[metric][2] - once[metric][1]


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
    scores = score_predictions(logits, union[64:], classes[64:].numpy())
    assert scores["patch_recall"][0] > 0.95
    assert scores["miou"][0] > 0.95


def test_segmentation_probe_end_to_end(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder = load_encoder(tiny_model_dir)
    train, test = probe_splits
    n_test = len((test / "probes" / "segmentation.jsonl").read_text().splitlines())
    for head in HEADS:
        rows = segmentation_probe(encoder, train, test, head=head, epochs=1, cache_dir=tmp_path)
        assert [row["metric"] for row in rows] == list(METRICS)
        for row in rows:
            assert row["analysis"] == "segmentation_probe" and row["head"] == head
            assert row["encoder"] == str(tiny_model_dir) and row["n"] == n_test
            assert 0 <= row["ci_low"] <= row["ci_high"] <= 1 and 0 <= row["value"] <= 1
        again = segmentation_probe(encoder, train, test, head=head, epochs=1, cache_dir=tmp_path)
        assert again == rows  # seeded
    with pytest.raises(AnalysisError, match="head 'transformer'"):
        segmentation_probe(encoder, train, test, head="transformer", cache_dir=tmp_path)
