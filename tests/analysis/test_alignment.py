"""Alignment measures against their definitions and invariances; the analyses on a tiny MLLM."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from pivotlab.analysis.alignment import (
    caption_embeddings,
    clamp_outliers,
    debiased_cka,
    hsic_unbiased,
    knn_chance,
    layerwise_curve,
    linear_cka,
    mutual_knn,
    vision_language_alignment,
)
from pivotlab.analysis.features import (
    AnalysisError,
    FeatureSpec,
    extract,
    load_encoder,
    probe_images,
    probe_rows,
)
from pivotlab.model import load


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal(size: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(_random((size, size), seed))[0]


def _related_pair(n: int = 120, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Two partly related representations, so that scores are neither 0 nor 1."""
    a = _random((n, d), 0)
    return a, a @ _random((d, d), 1) + 0.7 * _random((n, d), 2)


# ---------------------------------------------------------------------------- mutual k-NN


def test_mutual_knn_of_a_matrix_with_itself_is_one():
    a = _random((50, 8), 0)
    assert mutual_knn(a, a, k=10) == 1.0
    assert mutual_knn(a, a, k=10, outlier_quantile=None) == 1.0


def test_mutual_knn_of_independent_features_is_near_chance():
    n, k = 200, 10
    score = mutual_knn(_random((n, 32), 0), _random((n, 32), 1), k=k)
    assert knn_chance(n, k) == pytest.approx(10 / 199)
    assert abs(score - knn_chance(n, k)) < 0.02


def test_mutual_knn_is_invariant_to_rotation_and_scaling_of_one_side():
    a, b = _related_pair()
    reference = mutual_knn(a, b, outlier_quantile=None)
    assert 0.2 < reference < 0.9
    assert mutual_knn(a, 3.0 * b @ _orthogonal(16, 3), outlier_quantile=None) == reference
    # The default clamp scales with the features, so scaling stays harmless under it.
    assert mutual_knn(a, 5.0 * b) == mutual_knn(a, b)


def test_default_clamp_is_prh_remove_outliers():
    a, b = _related_pair()
    a[0, 0], b[3, 2] = 1e3, -1e3  # outliers the clamp must tame
    limits = [np.quantile(np.abs(x.numpy()), 0.95, axis=1).mean() for x in (a, b)]
    clamped = [np.clip(x.numpy(), -q, q) for x, q in zip((a, b), limits, strict=True)]
    assert torch.equal(clamp_outliers(a), torch.from_numpy(clamped[0]))
    assert mutual_knn(a, b) == mutual_knn(*clamped, outlier_quantile=None)
    assert mutual_knn(a, b) != mutual_knn(a, b, outlier_quantile=None)


def test_mutual_knn_rejects_unpaired_or_too_few_samples():
    with pytest.raises(AnalysisError, match="paired"):
        mutual_knn(_random((10, 4), 0), _random((11, 4), 1), k=3)
    with pytest.raises(AnalysisError, match="k=10"):
        mutual_knn(_random((10, 4), 0), _random((10, 4), 1), k=10)


# ---------------------------------------------------------------------------- CKA


def _song_eq5_loops(kernel_k: np.ndarray, kernel_l: np.ndarray) -> float:
    """Song et al. (2012) Eq. 5 written out as explicit sums over index pairs."""
    n = len(kernel_k)
    k_t = kernel_k * (1 - np.eye(n))
    l_t = kernel_l * (1 - np.eye(n))
    trace = sum(k_t[i, j] * l_t[j, i] for i in range(n) for j in range(n))
    sums = sum(k_t[i, j] for i in range(n) for j in range(n)) * sum(
        l_t[i, j] for i in range(n) for j in range(n)
    )
    row_k = [sum(k_t[i, j] for j in range(n)) for i in range(n)]
    row_l = [sum(l_t[i, j] for i in range(n)) for j in range(n)]
    cross = sum(row_k[j] * row_l[j] for j in range(n))
    return (trace + sums / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def _hsic_u_statistic(kernel_k: np.ndarray, kernel_l: np.ndarray) -> float:
    """HSIC's U-statistic over distinct index 4-tuples (Song et al. Theorem 3): independent of
    Eq. 5's algebra."""
    n = len(kernel_k)
    terms = [
        kernel_k[i, j] * kernel_l[i, j]
        + kernel_k[i, j] * kernel_l[q, r]
        - 2 * kernel_k[i, j] * kernel_l[i, q]
        for i, j, q, r in itertools.permutations(range(n), 4)
    ]
    return float(np.mean(terms))


def test_unbiased_hsic_matches_the_song_formula_and_its_u_statistic():
    a, b = _random((7, 5), 0), _random((7, 3), 1) + 0.5
    kernel_k, kernel_l = a @ a.T, (b @ b.T) ** 2  # any symmetric kernels
    value = float(hsic_unbiased(kernel_k, kernel_l))
    assert value == pytest.approx(_song_eq5_loops(kernel_k.numpy(), kernel_l.numpy()), rel=1e-10)
    assert value == pytest.approx(_hsic_u_statistic(kernel_k.numpy(), kernel_l.numpy()), rel=1e-9)


def test_debiased_cka_of_a_matrix_with_itself_is_one():
    a = _random((30, 12), 0)
    assert debiased_cka(a, a) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(a, a) == pytest.approx(1.0, abs=1e-12)


def test_debiased_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling():
    a, b = _related_pair()
    reference = debiased_cka(a, b)
    assert 0.2 < reference < 0.95
    assert debiased_cka(a, 4.0 * b @ _orthogonal(16, 3)) == pytest.approx(reference, abs=1e-12)
    assert debiased_cka(0.1 * a @ _orthogonal(16, 4), b) == pytest.approx(reference, abs=1e-12)


def test_debiased_cka_stays_near_zero_where_biased_cka_is_inflated():
    a, b = _random((50, 2000), 0), _random((50, 2000), 1)  # n << dims, independent
    assert abs(debiased_cka(a, b)) < 0.1
    assert linear_cka(a, b) > 0.9


def test_linear_cka_is_the_centred_kernel_formula():
    a, b = _random((25, 6), 0), _random((25, 9), 1) + _random((25, 1), 2)
    center = np.eye(25) - 1 / 25
    kernel_k, kernel_l = (a @ a.T).numpy(), (b @ b.T).numpy()

    def hsic(x, y):
        return np.trace(x @ center @ y @ center)

    expected = hsic(kernel_k, kernel_l) / math.sqrt(
        hsic(kernel_k, kernel_k) * hsic(kernel_l, kernel_l)
    )
    assert linear_cka(a, b) == pytest.approx(expected, rel=1e-10)


def test_debiased_cka_needs_four_varying_samples():
    with pytest.raises(AnalysisError, match="at least 4"):
        debiased_cka(_random((3, 4), 0), _random((3, 4), 1))
    with pytest.raises(AnalysisError, match="do not vary"):
        debiased_cka(torch.ones(8, 4), _random((8, 4), 1))


# ---------------------------------------------------------------------------- captions


def test_caption_embeddings_ignore_padding(tiny_model_dir: Path):
    model, processor = load(tiny_model_dir)
    caption = "A large blue cross on a dotted background."
    longer = (
        "A small red circle, a medium green square and a large pink star on a plain background."
    )
    alone = caption_embeddings(model, processor, [caption])
    batched = caption_embeddings(model, processor, [caption, longer])
    depth = model.config.text_config.num_hidden_layers
    assert alone.shape == (depth + 1, 1, model.config.text_config.hidden_size)
    assert batched.shape[:2] == (depth + 1, 2)
    torch.testing.assert_close(batched[:, 0], alone[:, 0], rtol=1e-5, atol=1e-5)
    # By hand: the plain mean of the unpadded caption's hidden states.
    ids = processor.tokenizer([caption], return_tensors="pt")
    with torch.inference_mode():
        hidden = model.model.language_model(**ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(alone[:, 0], torch.stack(hidden)[:, 0].mean(1))
    torch.testing.assert_close(caption_embeddings(model, processor, [caption], layer=-1), alone[-1])
    assert processor.tokenizer.padding_side == "left"  # the caller's processor is untouched


# ---------------------------------------------------------------------------- analyses


def _by_target(rows: list[dict], target: str, metric: str) -> list[dict]:
    return [r for r in rows if r["target"] == target and r["metric"] == metric]


def test_layerwise_curve_teacher_equal_to_the_mllm_tower_matches_the_encoder_target(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path]
):
    """The MLLM's own tower as teacher must give exactly the tokens the projector consumed:
    the teacher path's preprocessing, token order and subsample line up with the hook's."""
    depth = load(tiny_model_dir)[0].config.text_config.num_hidden_layers
    rows = layerwise_curve(
        tiny_model_dir,
        probe_splits[1],
        teacher=load_encoder(tiny_model_dir),
        limit=12,
        k=5,
        max_tokens=150,
    )
    for metric in ("mutual_knn", "debiased_cka"):
        encoder, teacher = _by_target(rows, "encoder", metric), _by_target(rows, "teacher", metric)
        assert [r["layer"] for r in encoder] == list(range(depth + 1))
        assert [r["layer"] for r in teacher] == list(range(depth + 1))
        for mine, theirs in zip(encoder, teacher, strict=True):
            assert mine["value"] == pytest.approx(theirs["value"], abs=1e-5)
    assert {r["n"] for r in rows} == {150}  # 12 images x 16 patches, subsampled
    assert all(r["chance"] == knn_chance(150, 5) for r in rows if r["metric"] == "mutual_knn")
    assert all(-1 <= r["value"] <= 1 for r in rows)


def test_layerwise_curve_with_a_random_teacher(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path]
):
    teacher = load_encoder("random:" + str(tiny_model_dir))
    rows = layerwise_curve(tiny_model_dir, probe_splits[1], teacher=teacher, limit=8, k=5)
    depth = load(tiny_model_dir)[0].config.text_config.num_hidden_layers
    for target in ("encoder", "teacher"):
        for metric in ("mutual_knn", "debiased_cka"):
            assert len(_by_target(rows, target, metric)) == depth + 1
    assert {r["teacher"] for r in rows if r["target"] == "teacher"} == {teacher.name}
    assert {r["n"] for r in rows} == {8 * 16}
    encoder_cka = [r["value"] for r in _by_target(rows, "encoder", "debiased_cka")]
    teacher_cka = [r["value"] for r in _by_target(rows, "teacher", "debiased_cka")]
    assert encoder_cka != teacher_cka


def test_layerwise_curve_resizes_a_teacher_with_another_grid(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
):
    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=4,
        vision_use_head=False,
    )
    torch.manual_seed(0)
    SiglipVisionModel(config).save_pretrained(tmp_path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    teacher = load_encoder(tmp_path)
    assert teacher.grid == 8  # the MLLM's grid is 4
    rows = layerwise_curve(tiny_model_dir, probe_splits[1], teacher=teacher, limit=6, k=5)
    teacher_rows = [r for r in rows if r["target"] == "teacher"]
    depth = load(tiny_model_dir)[0].config.text_config.num_hidden_layers
    assert len(teacher_rows) == 2 * (depth + 1)
    assert {r["n"] for r in teacher_rows} == {6 * 16}


def test_vision_language_alignment_rows(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
):
    encoder = load_encoder(tiny_model_dir)
    rows = vision_language_alignment(
        encoder, tiny_model_dir, probe_splits[1], k=5, limit=30, cache_dir=tmp_path
    )
    depth = load(tiny_model_dir)[0].config.text_config.num_hidden_layers
    for metric in ("mutual_knn", "debiased_cka"):
        layers = [r for r in rows if r["metric"] == metric and not r["best"]]
        best = [r for r in rows if r["metric"] == metric and r["best"]]
        assert [r["layer"] for r in layers] == list(range(depth + 1))
        assert len(best) == 1
        assert best[0]["value"] == max(r["value"] for r in layers)
        assert best[0]["value"] == layers[best[0]["layer"]]["value"]
    assert all(r["n"] == 30 and r["analysis"] == "vl_alignment" for r in rows)
    # Plumbing: row 0 is the image features against the layer-0 caption embeddings, in order.
    model, processor = load(tiny_model_dir)
    data_rows = probe_rows(probe_splits[1], "captions")[:30]
    images = extract(encoder, probe_images(probe_splits[1], "captions", data_rows), FeatureSpec())
    texts = caption_embeddings(model, processor, [r["caption"] for r in data_rows], layer=0)
    assert rows[1]["metric"] == "debiased_cka" and rows[1]["layer"] == 0
    assert rows[1]["value"] == pytest.approx(debiased_cka(images, texts), abs=1e-6)
    assert all(r["chance"] == knn_chance(30, 5) for r in rows if r["metric"] == "mutual_knn")
