"""Classification probe rows: one per method with C chosen on train alone, unseen labels
counted wrong, and the end-to-end run on a saved MLLM's encoder through the feature cache
(the probes themselves are tested in tests/test_probes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pivotlab.analysis import features
from pivotlab.analysis.features import (
    AnalysisError,
    FeatureSpec,
    cached_features,
    load_encoder,
    probe_rows,
)
from pivotlab.analysis.probes import LABELS, METHODS, classification_rows, linear_probe
from pivotlab.probes import choose_c
from tests.test_probes import clusters, sklearn_direct


def test_rows_choose_c_on_train_alone_whatever_the_test_split() -> None:
    rng = np.random.default_rng(1)
    train_x = rng.normal(size=(120, 6))
    train_y = np.where(train_x[:, 0] + rng.normal(scale=1.0, size=120) > 0, "pos", "neg")
    test_x = rng.normal(size=(40, 6))
    rows = classification_rows(train_x, train_y, test_x, np.full(40, "pos"), "l", "enc")
    flipped = classification_rows(train_x, train_y, -test_x, np.full(40, "neg"), "l", "enc")
    chosen = {row["C"] for row in rows + flipped if row["method"] == "logistic"}
    assert chosen == {choose_c(train_x, train_y)}


def test_every_method_is_perfect_on_separableclusters() -> None:
    train_x, train_y = clusters(seed=0, per_class=25)
    test_x, test_y = clusters(seed=1, per_class=10)
    rows = classification_rows(train_x, train_y, test_x, test_y, "shape", "enc")
    assert {row["method"]: row["value"] for row in rows} == dict.fromkeys(METHODS, 1.0)
    assert all(row["chance"] == 0.25 and row["n"] == 40 for row in rows)


def test_test_labels_unseen_in_train_count_as_wrong() -> None:
    train_x, train_y = clusters(seed=0, per_class=25)
    test_x, test_y = clusters(seed=1, per_class=10)
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
            direct = sklearn_direct(train_x, train_y, test_x, row["C"])
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
