"""The token shuffle reaches the projector and nothing else; the permutation rows add up;
the PCA colours follow the tokens' principal directions; the hidden states sit at the
processor's image tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pivotlab.analysis import tokens
from pivotlab.analysis.features import AnalysisError, probe_images
from pivotlab.analysis.tokens import (
    pca_rgb,
    pca_view,
    permutation_rows,
    permutation_sensitivity,
    permuted_visual_tokens,
    token_permutation,
    visual_hidden_states,
)
from pivotlab.evaluate.runner import EvalConfig, evaluate, greedy_replies, load_items
from pivotlab.model import assemble, load
from pivotlab.model.generation import chat_prompt
from tests.conftest import TEST_SIZE


def _projector_calls(model) -> tuple[list, object]:
    """A list that receives (input, output) of every projector call, and the hook's handle."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = model.model.multi_modal_projector.register_forward_hook(
        lambda _module, args, output: calls.append((args[0], output))
    )
    return calls, handle


def _selected_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """The tower features Llava hands its projector, computed by hand."""
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    selected = hidden[model.config.vision_feature_layer]
    return selected[:, 1:] if model.config.vision_feature_select_strategy == "default" else selected


@torch.no_grad()
def test_projector_receives_the_permuted_tokens(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path]
) -> None:
    model, processor = load(tiny_model_dir)
    images = probe_images(probe_splits[1], "classification")[:3]
    inputs = processor(images=images, text=[chat_prompt(processor, "?")] * 3, return_tensors="pt")
    order = token_permutation(16, seed=1)
    assert not torch.equal(order, torch.arange(16))
    calls, handle = _projector_calls(model)
    with permuted_visual_tokens(model, order):
        model(**inputs)
    handle.remove()
    expected = _selected_features(model, inputs["pixel_values"])[:, order]
    ((received, projected),) = calls
    torch.testing.assert_close(received, expected)
    torch.testing.assert_close(projected, model.model.multi_modal_projector(expected))
    model(**inputs)  # the hook is gone after the block
    assert len(calls) == 1


@torch.no_grad()
def test_a_kept_cls_token_stays_first() -> None:
    model, processor = assemble(
        "tiny-clip", "tiny-qwen2", image_size=TEST_SIZE, select_strategy="full"
    )
    pixels = processor.image_processor([Image.new("RGB", (32, 32), "red")], return_tensors="pt")
    order = token_permutation(16, seed=2)
    calls, handle = _projector_calls(model)
    with permuted_visual_tokens(model, order):
        model.model.get_image_features(pixels.pixel_values)
    handle.remove()
    selected = _selected_features(model, pixels.pixel_values)
    assert selected.shape[1] == 17 and not torch.allclose(calls[0][0], selected)
    torch.testing.assert_close(
        calls[0][0], torch.cat([selected[:, :1], selected[:, 1:][:, order]], 1)
    )


def test_a_permutation_of_the_wrong_length_is_refused(tiny_model_dir: Path) -> None:
    model, _ = load(tiny_model_dir)
    with (
        pytest.raises(AnalysisError, match="16 patch tokens"),
        permuted_visual_tokens(model, torch.arange(15)),
    ):
        pass


@torch.no_grad()
def test_identity_leaves_replies_unchanged_and_a_shuffle_reaches_the_lm(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path]
) -> None:
    model, processor = load(tiny_model_dir)
    data = probe_splits[1]
    items = load_items(data, limit=6)
    cfg = EvalConfig(model=str(tiny_model_dir), data=str(data), out="unused", max_new_tokens=4)
    images = [Image.open(data / item["image"]).convert("RGB") for item in items]
    prompts = [chat_prompt(processor, item["question"]) for item in items]
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    plain_logits = model(**inputs).logits
    plain_replies = greedy_replies(model, processor, data, items, cfg)
    with permuted_visual_tokens(model, torch.arange(16)):
        torch.testing.assert_close(model(**inputs).logits, plain_logits, rtol=0, atol=0)
        assert greedy_replies(model, processor, data, items, cfg) == plain_replies
    with permuted_visual_tokens(model, token_permutation(16, seed=0)):
        assert not torch.allclose(model(**inputs).logits, plain_logits)


def _predictions(categories: list[str], correct: list[bool]) -> list[dict]:
    return [
        {"id": f"q{i}", "category": c, "correct": ok}
        for i, (c, ok) in enumerate(zip(categories, correct, strict=True))
    ]


def test_permutation_rows_by_hand() -> None:
    categories = ["a", "a", "a", "a", "b", "b"]
    original = _predictions(categories, [True, True, True, False, True, False])
    permuted = {
        3: _predictions(categories, [True, False, False, False, False, False]),
        7: _predictions(categories, [True, True, False, True, True, False]),
    }
    rows = permutation_rows(original, permuted, "m")
    values = {
        (r["category"], r["metric"], r.get("condition"), r.get("seed_permutation")): r["value"]
        for r in rows
    }
    assert values == {
        ("a", "accuracy", "original", None): 0.75,
        ("a", "accuracy", "permuted", 3): 0.25,
        ("a", "accuracy", "permuted", 7): 0.75,
        ("a", "accuracy", "permuted", None): 0.5,
        ("a", "accuracy_drop", None, None): 0.25,
        ("b", "accuracy", "original", None): 0.5,
        ("b", "accuracy", "permuted", 3): 0.0,
        ("b", "accuracy", "permuted", 7): 0.5,
        ("b", "accuracy", "permuted", None): 0.25,
        ("b", "accuracy_drop", None, None): 0.25,
    }
    drop_a = next(r for r in rows if r["category"] == "a" and r["metric"] == "accuracy_drop")
    # per-item differences (0, 0.5, 1, -0.5): the interval resamples them, not the seeds
    assert drop_a["ci_low"] < 0.25 < drop_a["ci_high"] and drop_a["n"] == 4
    assert drop_a["ci_low"] >= -0.5 and drop_a["ci_high"] <= 1.0
    with pytest.raises(AnalysisError, match="seed 3"):
        permutation_rows(original, {3: original[:5]}, "m")


def test_permutation_sensitivity_on_the_tiny_model(
    tiny_model_dir: Path,
    probe_splits: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = probe_splits[1]
    hooks_seen = {}

    def spying_evaluate(cfg, model, processor):
        hooks_seen[Path(cfg.out).name] = len(model.model.multi_modal_projector._forward_pre_hooks)
        return evaluate(cfg, model=model, processor=processor)

    monkeypatch.setattr(tokens, "evaluate", spying_evaluate)
    rows = permutation_sensitivity(
        tiny_model_dir, data, seeds=(0, 1), limit=40, batch_size=40, out=tmp_path
    )
    # the evaluator runs on the model in memory, shuffled only in the permuted runs
    assert hooks_seen == {"original": 0, "permuted-0": 1, "permuted-1": 1}
    runs = tmp_path / "token_permutation"
    assert sorted(p.name for p in runs.iterdir()) == ["original", "permuted-0", "permuted-1"]
    evaluator = map(json.loads, (runs / "original" / "metrics.jsonl").read_text().splitlines())
    category_rows = [r for r in evaluator if r["metric"] == "accuracy" and "task" not in r]
    categories = sorted({item["category"] for item in load_items(data, limit=40)})
    assert sorted({r["category"] for r in rows}) == categories
    total = 0
    for category in categories:
        mine = [r for r in rows if r["category"] == category]
        assert all(r["analysis"] == "token_permutation" for r in mine)
        assert all(r["encoder"] == str(tiny_model_dir) for r in mine)
        original = next(r for r in mine if r.get("condition") == "original")
        per_seed = [r for r in mine if "seed_permutation" in r]
        permuted = next(
            r for r in mine if r.get("condition") == "permuted" and "seed_permutation" not in r
        )
        drop = next(r for r in mine if r["metric"] == "accuracy_drop")
        assert len(mine) == 5 and [r["seed_permutation"] for r in per_seed] == [0, 1]
        assert permuted["value"] == pytest.approx(np.mean([r["value"] for r in per_seed]))
        assert drop["value"] == original["value"] - permuted["value"]
        assert drop["ci_low"] <= drop["value"] <= drop["ci_high"]
        assert {r["n"] for r in mine} == {original["n"]}
        reference = next(r for r in category_rows if r["category"] == category)
        for key in ("value", "ci_low", "ci_high", "n"):
            assert original[key] == reference[key]
        total += original["n"]
    assert total == 40


def _hand_pca(tokens: np.ndarray) -> np.ndarray:
    centred = tokens - tokens.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    projected = u[:, :3] * s[:3]
    low, median, high = np.percentile(projected, [25, 50, 75], axis=0)
    return 0.5 * (np.tanh((projected - median) / (high - low)) + 1)


def test_pca_rgb_is_the_papers_recipe() -> None:
    tokens = np.random.default_rng(0).normal(size=(36, 20)) * np.linspace(3, 0.1, 20)
    rgb = pca_rgb(torch.from_numpy(tokens).float(), 6)
    assert rgb.shape == (6, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    expected = _hand_pca(tokens).reshape(6, 6, 3)
    for channel in range(3):  # a component's sign is arbitrary; tanh is odd, so c -> 1 - c
        got, want = rgb[..., channel], expected[..., channel]
        assert np.allclose(got, want, atol=1e-5) or np.allclose(got, 1 - want, atol=1e-5)


def test_pca_rgb_recovers_the_row_and_column_directions() -> None:
    grid, width = 8, 32
    rng = np.random.default_rng(1)
    rows, columns = np.divmod(np.arange(grid * grid), grid)
    directions = np.linalg.qr(rng.normal(size=(width, 2)))[0].T
    tokens = 10 * np.outer(rows - 3.5, directions[0]) + 3 * np.outer(columns - 3.5, directions[1])
    tokens += 0.01 * rng.normal(size=tokens.shape)
    rgb = pca_rgb(tokens, grid)
    first, second = rgb[..., 0], rgb[..., 1]
    by_row, by_column = first.mean(1), second.mean(0)
    for profile in (by_row, by_column):
        steps = np.diff(profile)
        assert (steps > 0).all() or (steps < 0).all()
    assert first.std(1).max() < 0.01  # red does not vary along a row
    assert second.std(0).max() < 0.01  # green does not vary down a column


def test_pca_rgb_refuses_tokens_that_do_not_fill_the_grid() -> None:
    with pytest.raises(AnalysisError, match="4x4 grid"):
        pca_rgb(np.zeros((15, 8)), 4)


@torch.no_grad()
def test_visual_hidden_states_sit_at_the_image_tokens(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path]
) -> None:
    model, processor = load(tiny_model_dir)
    images = probe_images(probe_splits[1], "classification")[:3]
    states = visual_hidden_states(model, processor, images)
    inputs = processor(images=images, text=[chat_prompt(processor, "Describe the image.")] * 3)
    inserted = [ids.count(model.config.image_token_id) for ids in inputs["input_ids"]]
    depth, width = model.config.text_config.num_hidden_layers, model.config.text_config.hidden_size
    assert inserted == [16, 16, 16]
    assert states.shape == (depth + 1, 3, 16, width)
    # the LM's input at those positions is the projector's output, image by image
    pixels = processor.image_processor(images, return_tensors="pt").pixel_values
    projected = torch.stack(model.model.get_image_features(pixels).pooler_output)
    torch.testing.assert_close(states[0], projected)


def test_pca_view_writes_one_png_per_image(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    paths = pca_view(tiny_model_dir, probe_splits[1], tmp_path, layers=["encoder", 0, -1], images=2)
    assert [p.parent for p in paths] == [tmp_path / "pca"] * 2
    assert len(set(paths)) == 2
    for path in paths:
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 2 * png.height
    with pytest.raises(AnalysisError, match="layer 3"):
        pca_view(tiny_model_dir, probe_splits[1], tmp_path, layers=[3])
