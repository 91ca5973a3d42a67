"""The segmentation probe on a split: masks read onto the encoder's patch grid, intervals that
resample images, and the end-to-end call (labels, heads and metrics themselves are tested in
tests/test_probes.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pivotlab.analysis.features import AnalysisError, load_encoder
from pivotlab.analysis.segmentation import (
    NUM_CLASSES,
    score_predictions,
    segmentation_probe,
    split_labels,
)
from pivotlab.probes import HEADS, SEGMENTATION_METRICS, ProbeError, segmentation_scores


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
    pooled = segmentation_scores(logits, union, union.argmax(-1))
    for metric in SEGMENTATION_METRICS:
        assert once[metric][0] == pytest.approx(pooled[metric])
        assert twice[metric][0] == pytest.approx(once[metric][0])
        # twice the images: the same estimate, a narrower interval
        assert twice[metric][2] - twice[metric][1] < once[metric][2] - once[metric][1]


def test_segmentation_probe_end_to_end(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder = load_encoder(tiny_model_dir)
    train, test = probe_splits
    n_test = len((test / "probes" / "segmentation.jsonl").read_text().splitlines())
    for head in HEADS:
        rows = segmentation_probe(encoder, train, test, head=head, epochs=1, cache_dir=tmp_path)
        assert [row["metric"] for row in rows] == list(SEGMENTATION_METRICS)
        for row in rows:
            assert row["analysis"] == "segmentation_probe" and row["head"] == head
            assert row["encoder"] == str(tiny_model_dir) and row["n"] == n_test
            assert 0 <= row["ci_low"] <= row["ci_high"] <= 1 and 0 <= row["value"] <= 1
        again = segmentation_probe(encoder, train, test, head=head, epochs=1, cache_dir=tmp_path)
        assert again == rows  # seeded
    with pytest.raises(ProbeError, match="head 'transformer'"):
        segmentation_probe(encoder, train, test, head="transformer", cache_dir=tmp_path)
