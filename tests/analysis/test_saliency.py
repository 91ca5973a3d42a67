"""Gradient saliency: the scores on hand-made maps, both maps against direct autograd
computations, the token order on the grid, and the end-to-end analysis."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pivotlab.analysis.features import AnalysisError, probe_rows
from pivotlab.analysis.saliency import (
    METHODS,
    border_fill,
    centre_prior,
    energy,
    gradient_maps,
    object_prior,
    objects_map,
    pointing_hit,
    pointing_tolerance,
    random_map,
    saliency,
    target_mask,
    upsample,
    visual_token_grid,
)
from pivotlab.model import load
from pivotlab.model.generation import chat_prompt

# ---------------------------------------------------------------------------- scores


def _square_mask(size: int = 32, top: int = 8, left: int = 12, side: int = 6) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_a_map_equal_to_the_mask_has_all_its_energy_inside_and_hits() -> None:
    mask = _square_mask()
    assert energy(mask.astype(float), mask) == 1.0
    assert pointing_hit(mask.astype(float), mask, tolerance=0)


def test_a_map_outside_the_mask_has_no_energy_and_misses() -> None:
    mask = _square_mask()
    outside = (~mask).astype(float)
    assert energy(outside, mask) == 0.0
    assert not pointing_hit(outside, mask, tolerance=0)


def test_energy_is_the_share_of_mass_and_a_zero_map_scores_nothing() -> None:
    mask = _square_mask()
    uniform = np.full(mask.shape, 3.0)
    assert energy(uniform, mask) == pytest.approx(mask.mean())
    zero = np.zeros(mask.shape)
    assert energy(zero, mask) == 0.0
    assert not pointing_hit(zero, mask, tolerance=100)  # no maximum, no point


def test_the_tolerance_dilates_the_mask_by_a_euclidean_disc() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[10, 10] = True
    straight = np.zeros(mask.shape)
    straight[10, 13] = 1.0  # 3 px away
    assert not pointing_hit(straight, mask, tolerance=2)
    assert pointing_hit(straight, mask, tolerance=3)
    diagonal = np.zeros(mask.shape)
    diagonal[13, 13] = 1.0  # sqrt(18) = 4.24 px away: inside a 5-square, outside a 4-disc
    assert not pointing_hit(diagonal, mask, tolerance=4)
    assert pointing_hit(diagonal, mask, tolerance=5)


def test_the_tolerance_is_torchrays_15_px_scaled_to_the_image() -> None:
    assert pointing_tolerance(224, 224) == 15
    assert pointing_tolerance(32, 32) == 2
    assert pointing_tolerance(64, 128) == 4  # the shorter side


def test_upsampling_is_bilinear_without_corner_alignment() -> None:
    grid_map = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    image_map = upsample(grid_map, 4, 4)
    expected = torch.nn.functional.interpolate(
        grid_map[None, None], size=(4, 4), mode="bilinear", align_corners=False
    )[0, 0]
    np.testing.assert_allclose(image_map, expected.numpy(), atol=1e-6)
    assert image_map[0, 0] == 0.0 and image_map[3, 3] == 3.0  # edges clamp, corners not aligned
    assert image_map[0, 1] == pytest.approx(0.25)


def test_the_target_mask_is_the_union_of_the_target_instances() -> None:
    instances = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)  # object index + 1
    expected = np.array([[False, True, False], [True, True, False]])
    np.testing.assert_array_equal(target_mask(instances, [0, 2]), expected)
    assert not target_mask(instances, [7]).any()


# ---------------------------------------------------------------------------- baselines


def test_the_centre_prior_is_a_gaussian_of_a_quarter_of_the_side() -> None:
    prior = centre_prior(41, 41, sigma=10 / 41)  # sigma 10 px
    assert np.unravel_index(prior.argmax(), prior.shape) == (20, 20)
    assert prior[20, 30] == pytest.approx(math.exp(-0.5))
    np.testing.assert_allclose(prior, prior.T)
    np.testing.assert_allclose(prior, prior[::-1, ::-1])
    default = centre_prior(40, 40)
    assert default[19, 19] == pytest.approx(default[20, 20])  # centred between pixels
    assert default[19, 19 + 10] / default[19, 19] == pytest.approx(
        math.exp(-(9.5**2 - 0.5**2) / 200)  # sigma = 0.25 x 40 = 10 px
    )


def test_random_maps_are_seeded_per_item() -> None:
    first = random_map(4, seed=3, item=7)
    assert torch.equal(first, random_map(4, seed=3, item=7))
    assert not torch.equal(first, random_map(4, seed=3, item=8))
    assert not torch.equal(first, random_map(4, seed=4, item=7))
    assert first.shape == (4, 4) and first.min() >= 0 and first.max() < 1


def test_border_fill_copies_inner_neighbours_into_the_border() -> None:
    maps = torch.arange(2 * 25, dtype=torch.float64).reshape(2, 5, 5)
    filled = border_fill(maps, np.random.default_rng(0))
    assert torch.equal(filled[:, 1:4, 1:4], maps[:, 1:4, 1:4])
    for item in range(2):
        for row in range(5):
            for column in range(5):
                if 0 < row < 4 and 0 < column < 4:
                    continue
                inner = {
                    float(maps[item, r, c])
                    for r in range(max(row - 1, 1), min(row + 2, 4))
                    for c in range(max(column - 1, 1), min(column + 2, 4))
                }
                assert float(filled[item, row, column]) in inner
    assert filled[0, 0, 0] == maps[0, 1, 1]  # a corner has one inner neighbour
    with pytest.raises(AnalysisError, match="3x3"):
        border_fill(torch.zeros(1, 2, 2), np.random.default_rng(0))


# ---------------------------------------------------------------------------- gradient maps


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    model, processor = load(tiny_model_dir)
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def batch(probe_splits: tuple[Path, Path]) -> tuple[list[Image.Image], list[str], list[str]]:
    """Three localisation items whose answers differ in length (so the batch is padded)."""
    test_dir = probe_splits[1]
    rows = probe_rows(test_dir, "localisation")
    chosen = [rows[0], rows[1], next(r for r in rows if len(r["answer"]) > 40)]
    images = [Image.open(test_dir / r["image"]).convert("RGB") for r in chosen]
    return images, [r["question"] for r in chosen], [r["answer"] for r in chosen]


def _manual_projector_gradient(model, processor, image, question, answer) -> tuple:
    """One item, no padding, no hooks: the projector output as a leaf fed through
    ``inputs_embeds``; returns (log-likelihood, its gradient (tokens, width), pixels)."""
    tokenizer = processor.tokenizer
    prompt = chat_prompt(processor, question)
    inputs = processor(
        images=[image], text=[prompt + answer + tokenizer.eos_token], return_tensors="pt"
    )
    answer_length = len(
        tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    )
    features = model.model.get_image_features(
        pixel_values=inputs["pixel_values"],
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
    ).pooler_output[0]
    projected = features.detach().requires_grad_(True)
    ids = inputs["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    image_positions = (ids[0] == model.config.image_token_id).nonzero()[:, 0]
    embeds = torch.cat(
        [embeds[0, : image_positions[0]], projected, embeds[0, image_positions[-1] + 1 :]]
    )[None]
    logits = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits[0]
    targets = ids[0, -answer_length:]
    log_probs = logits[-answer_length - 1 : -1].log_softmax(-1)
    log_likelihood = log_probs.gather(1, targets[:, None]).sum()
    (gradient,) = torch.autograd.grad(log_likelihood, projected)
    return log_likelihood.detach(), gradient, inputs["pixel_values"]


def test_the_projector_map_is_the_gradient_norm_at_the_projector_output(tiny, batch) -> None:
    model, processor = tiny
    images, questions, answers = batch
    maps = gradient_maps(model, processor, images, questions, answers)
    l2 = gradient_maps(model, processor, images, questions, answers, norm="l2")
    grid = 4
    for item in range(len(images)):
        log_likelihood, gradient, _ = _manual_projector_gradient(
            model, processor, images[item], questions[item], answers[item]
        )
        torch.testing.assert_close(maps.log_likelihood[item], log_likelihood, rtol=1e-5, atol=1e-4)
        l1_map = gradient.abs().sum(-1).reshape(grid, grid)
        torch.testing.assert_close(maps.projector_grad[item], l1_map, rtol=1e-4, atol=1e-6)
        l2_map = gradient.norm(dim=-1).reshape(grid, grid)
        torch.testing.assert_close(l2.projector_grad[item], l2_map, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps.projector_grad, maps.projector_grad.transpose(1, 2))


def test_cutting_one_visual_tokens_gradient_path_zeroes_only_its_cell(tiny, batch) -> None:
    """Visual token k (in LM order) is cell (k // grid, k % grid): block the gradient of the
    7th visual token where the LM receives it; only cell (1, 2) changes, to zero."""
    model, processor = tiny
    images, questions, answers = batch
    token, cell = 6, (1, 2)
    baseline = gradient_maps(model, processor, images, questions, answers).projector_grad

    seen: dict[str, torch.Tensor] = {}

    def remember_ids(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def cut(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        image_columns = (seen["ids"] == model.config.image_token_id).nonzero()[:, 1]
        column = image_columns.view(embeds.shape[0], -1)[:, token]
        blocked = torch.zeros(embeds.shape[:2], dtype=torch.bool)
        blocked[torch.arange(embeds.shape[0]), column] = True
        kwargs["inputs_embeds"] = torch.where(blocked[..., None], embeds.detach(), embeds)
        return args, kwargs

    handles = [
        model.model.register_forward_pre_hook(remember_ids, with_kwargs=True),
        model.model.language_model.register_forward_pre_hook(cut, with_kwargs=True),
    ]
    try:
        cut_maps = gradient_maps(model, processor, images, questions, answers).projector_grad
    finally:
        for handle in handles:
            handle.remove()
    assert (baseline[:, cell[0], cell[1]] > 0).all()
    assert (cut_maps[:, cell[0], cell[1]] == 0).all()
    others = torch.ones(4, 4, dtype=torch.bool)
    others[cell] = False
    torch.testing.assert_close(cut_maps[:, others], baseline[:, others])


def test_visual_tokens_are_row_major_over_the_image(tiny) -> None:
    """Two images differing in the patch at row 1, column 2 differ in exactly that cell of
    the tower's input tokens (before attention mixes them); transposed would be (2, 1)."""
    model, processor = tiny
    plain = np.full((32, 32, 3), 100, dtype=np.uint8)
    marked = plain.copy()
    marked[8:16, 16:24] = 250
    pixels = processor.image_processor(
        [Image.fromarray(plain), Image.fromarray(marked)], return_tensors="pt"
    ).pixel_values
    with torch.no_grad():
        tokens = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        embedded = tokens.hidden_states[0]
    change = visual_token_grid((embedded[1] - embedded[0]).norm(dim=-1)[None], 4)[0]
    assert torch.nonzero(change > 1e-6).tolist() == [[1, 2]]
    with pytest.raises(AnalysisError, match="4x4"):
        visual_token_grid(torch.zeros(1, 15), 4)


def test_gradcam_uses_the_hidden_state_the_projector_consumes(tiny, batch) -> None:
    """Grad-CAM from an independent tower forward: A = hidden_states[-2], its gradient the
    projector's vector-Jacobian product with the manual projector-output gradient."""
    model, processor = tiny
    images, questions, answers = batch
    maps = gradient_maps(model, processor, images, questions, answers)
    assert model.config.vision_feature_layer == -2
    for item in range(len(images)):
        _, projected_gradient, pixels = _manual_projector_gradient(
            model, processor, images[item], questions[item], answers[item]
        )
        with torch.no_grad():
            hidden = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        activations = hidden.hidden_states[-2][0].detach().requires_grad_(True)  # SigLIP: no CLS
        projected = model.model.multi_modal_projector(activations)
        (gradient,) = torch.autograd.grad(projected, activations, projected_gradient)
        cam = (gradient.mean(0) * activations.detach()).sum(-1).clamp(min=0).reshape(4, 4)
        torch.testing.assert_close(maps.gradcam[item], cam, rtol=1e-4, atol=1e-7)
    assert (maps.gradcam.flatten(1).amax(1) > 0).all()
    last_block = gradient_maps(model, processor, images, questions, answers, layer=-1)
    assert (last_block.gradcam == 0).all()  # the block after the consumed one gets no gradient
    torch.testing.assert_close(last_block.projector_grad, maps.projector_grad)


def test_a_bad_norm_or_layer_is_a_one_line_error(tiny, batch) -> None:
    model, processor = tiny
    images, questions, answers = batch
    with pytest.raises(AnalysisError, match="norm 'l3'"):
        gradient_maps(model, processor, images, questions, answers, norm="l3")
    with pytest.raises(AnalysisError, match="layer 5"):
        gradient_maps(model, processor, images, questions, answers, layer=5)


# ---------------------------------------------------------------------------- the analysis


def test_saliency_scores_every_method_and_draws_overlays(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    split = tmp_path / "split"
    shutil.copytree(probe_splits[1], split)
    probe_file = split / "probes" / "localisation.jsonl"
    rows = probe_rows(split, "localisation")[:12]
    rows[3] = dict(rows[3], target_objects=[99])  # no such object: an empty target
    probe_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    metrics = saliency(tiny_model_dir, split, limit=None, out=tmp_path / "out", overlays=2)

    by_key = {(m["method"], m["metric"]): m for m in metrics}
    assert set(by_key) == {
        (method, metric) for method in METHODS for metric in ("energy", "pointing")
    } | {
        (method, f"{metric}_minus_{baseline}")
        for method in ("projector_grad", "gradcam")
        for metric in ("energy", "pointing")
        for baseline in ("centre", "prior", "objects")
    }
    for row in metrics:
        assert row["analysis"] == "saliency" and row["encoder"] == str(tiny_model_dir)
        assert (row["n"], row["skipped"]) == (11, 1)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        low = -1.0 if "_minus_" in row["metric"] else 0.0
        assert low <= row["value"] <= 1.0
    for method in ("projector_grad", "gradcam"):
        pairs = (("centre", "centre_prior"), ("prior", "object_prior"), ("objects", "all_objects"))
        for short, baseline in pairs:
            difference = by_key[method, f"energy_minus_{short}"]["value"]
            expected = by_key[method, "energy"]["value"] - by_key[baseline, "energy"]["value"]
            assert difference == pytest.approx(expected)
            assert by_key[method, f"energy_minus_{short}"]["baseline"] == baseline
    pngs = sorted((tmp_path / "out" / "saliency").iterdir())
    assert len(pngs) == 2
    assert all(p.suffix == ".png" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_the_object_prior_is_the_mean_object_share_over_the_items() -> None:
    left, right = np.zeros((8, 8), dtype=bool), np.zeros((8, 8), dtype=bool)
    left[:, 0:4] = True  # the left column of a 2x2 grid
    right[0:4, 4:8] = True  # the top-right patch
    expected = torch.tensor([[0.5, 0.5], [0.5, 0.0]])
    torch.testing.assert_close(object_prior([left, right], 2), expected)


def test_all_objects_baseline_is_the_object_share_of_each_patch() -> None:
    objects = np.zeros((8, 8), dtype=bool)
    objects[0:4, 0:4] = True  # the top-left patch of a 2x2 grid is all object
    objects[4:6, 4:8] = True  # the bottom-right one is half object
    torch.testing.assert_close(objects_map(objects, 2), torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
