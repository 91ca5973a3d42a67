"""The visual tokens inside the MLLM: VIRAL's token-permutation test and its PCA view.

**Token permutation** (VIRAL §5.5, after Qi et al. 2025): the tower's selected features are
shuffled along the patch axis *before* the projector, one permutation per run shared by every
image, and world VQA accuracy is compared with the unshuffled run. A model that reads the
image spatially loses accuracy; one that treats the tokens as a bag does not. The shuffle is a
forward pre-hook on ``model.model.multi_modal_projector``: in transformers' ``LlavaModel`` the
projector receives the selected hidden states as (batch, tokens, width), and its output is
only concatenated and scattered into the placeholder positions in order, so reordering the
projector's input reorders what the LM sees and nothing else. A CLS token the model keeps
(``vision_feature_select_strategy`` "full" on a CLIP-like tower) stays first: only patches
move. Accuracy comes from pivotlab's own evaluator (``evaluate.runner.evaluate``) with the hook
in place, so scoring and decoding are exactly those of ``pivotlab evaluate``; greedy decoding
is deterministic, so the unshuffled run is done once.

**PCA view** (VIRAL Figs. 5, 10, 11): the visual tokens of one image at a layer, projected on
their first three principal components, each normalised by its median and interquartile range
and squashed by ``0.5 * (tanh(x) + 1)`` into an RGB patch grid. PCA is fitted per image and
per layer (as VIRAL's ``visualize_feature_pca`` does): the colours show the structure within
one image at one layer, and are not comparable across panels (a component's sign is
arbitrary). Layers are indices of the LM's hidden states: 0 is the LM input at the visual
positions, i.e. the projector output; ``L`` (the last) is taken after the LM's final norm, as
HF returns it; ``"encoder"`` is the projector's input, the tower features themselves.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from sklearn.decomposition import PCA

from pivotlab.analysis import PCA as PCA_ANALYSIS
from pivotlab.analysis import PERMUTATION, ROW_NAMES
from pivotlab.analysis.features import AnalysisError
from pivotlab.evaluate.metrics import bootstrap_interval
from pivotlab.evaluate.runner import EvalConfig, evaluate, load_items
from pivotlab.images import open_image
from pivotlab.model import load
from pivotlab.model.generation import chat_prompt

ENCODER_LAYER = "encoder"
PANELS_PER_ROW = 8


# ---------------------------------------------------------------------------- geometry


def patch_grid(model) -> int:
    """Patches per image side of the model's tower."""
    vision = model.config.vision_config
    return vision.image_size // vision.patch_size


def _leading_tokens(model) -> int:
    """Visual tokens before the patches (a CLS token the select strategy keeps), 0 or 1."""
    return model.config.image_seq_length - patch_grid(model) ** 2


# ---------------------------------------------------------------------------- permutation


def token_permutation(tokens: int, seed: int) -> torch.Tensor:
    """A random order of ``tokens`` patch positions, a pure function of ``seed``."""
    return torch.randperm(tokens, generator=torch.Generator().manual_seed(seed))


@contextmanager
def permuted_visual_tokens(model, permutation: torch.Tensor) -> Iterator[None]:
    """Within the block, the projector receives its patch tokens in ``permutation``'s order
    (``new[:, i] = old[:, permutation[i]]``) for every image; a kept CLS token stays first."""
    patches = patch_grid(model) ** 2
    if sorted(permutation.tolist()) != list(range(patches)):
        raise AnalysisError(
            f"the permutation has {len(permutation)} entries but is not an order of the "
            f"model's {patches} patch tokens"
        )
    leading = _leading_tokens(model)
    order = torch.cat([torch.arange(leading), permutation.long() + leading])

    def shuffle(_module, args):
        (features,) = args
        return (features[:, order.to(features.device)],)

    handle = model.model.multi_modal_projector.register_forward_pre_hook(shuffle)
    try:
        yield
    finally:
        handle.remove()


def _evaluation(model, processor, model_dir: Path, data: Path, out: Path, **options) -> list[dict]:
    """Predictions of one evaluator run (folder ``out``) with the model as it is hooked now."""
    cfg = EvalConfig(model=str(model_dir), data=str(data), out=str(out), **options)
    return evaluate(cfg, model=model, processor=processor).predictions


def _outcomes(predictions: list[dict]) -> dict[str, np.ndarray]:
    """Per category, 1.0/0.0 per item in prediction order."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for prediction in predictions:
        by_category[prediction["category"]].append(float(prediction["correct"]))
    return {category: np.asarray(values) for category, values in sorted(by_category.items())}


def _row(base: dict, metric: str, outcomes: np.ndarray, **keys) -> dict:
    low, high = bootstrap_interval(outcomes)
    row = {**base, "metric": metric, **keys, "value": float(outcomes.mean())}
    row.update(ci_low=low, ci_high=high, n=int(outcomes.size))
    return row


def permutation_rows(
    original: list[dict], permuted: dict[int, list[dict]], encoder: str
) -> list[dict]:
    """Metric rows from the predictions of the unshuffled run and of each permutation seed."""
    for seed, predictions in permuted.items():
        if [p["id"] for p in predictions] != [p["id"] for p in original]:
            raise AnalysisError(f"permutation seed {seed} was evaluated on other items")
    reference = _outcomes(original)
    by_seed = {seed: _outcomes(predictions) for seed, predictions in permuted.items()}
    rows = []
    for category, outcomes in reference.items():
        base = {"analysis": ROW_NAMES[PERMUTATION], "encoder": encoder, "category": category}
        original_row = _row(base, "accuracy", outcomes, condition="original")
        rows.append(original_row)
        for seed, seed_outcomes in by_seed.items():
            keys = {"condition": "permuted", "seed_permutation": seed}
            rows.append(_row(base, "accuracy", seed_outcomes[category], **keys))
        # Per item, the outcome averaged over seeds: its mean is the seeds' mean accuracy and
        # its bootstrap resamples items, not seeds.
        shuffled = np.mean([seed_outcomes[category] for seed_outcomes in by_seed.values()], axis=0)
        permuted_row = _row(base, "accuracy", shuffled, condition="permuted", seeds=len(by_seed))
        drop = _row(base, "accuracy_drop", outcomes - shuffled, seeds=len(by_seed))
        drop["value"] = original_row["value"] - permuted_row["value"]  # exact, not re-rounded
        rows += [permuted_row, drop]
    return rows


def permutation_sensitivity(
    model_dir: Path | str,
    data: Path | str,
    seeds: Sequence[int] = (0, 1, 2),
    limit: int | None = None,
    batch_size: int = 64,
    out: Path | str | None = None,
) -> list[dict]:
    """World VQA accuracy per category with and without shuffled visual tokens (module
    docstring); each evaluation's folder is written under ``out/token_permutation/``
    (a temporary folder when ``out`` is None)."""
    if not seeds:
        raise AnalysisError("token permutation needs at least one permutation seed")
    model_dir, data = Path(model_dir), Path(data)
    model, processor = load(model_dir)
    options = {"limit": limit, "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(out if out is not None else scratch) / "token_permutation"
        original = _evaluation(model, processor, model_dir, data, runs / "original", **options)
        permuted = {}
        for seed in seeds:
            order = token_permutation(patch_grid(model) ** 2, seed)
            with permuted_visual_tokens(model, order):
                folder = runs / f"permuted-{seed}"
                permuted[seed] = _evaluation(
                    model, processor, model_dir, data, folder, seed=seed, **options
                )
    return permutation_rows(original, permuted, str(model_dir))


# ---------------------------------------------------------------------------- PCA view


@torch.inference_mode()
def visual_hidden_states(
    model, processor, images: Sequence[Image.Image], question: str = "Describe the image."
) -> torch.Tensor:
    """(LM layers + 1, N, visual tokens, width): the LM's hidden states at the positions the
    processor filled with image tokens, for each image under the same chat prompt."""
    model.eval()
    inputs = processor(
        images=list(images),
        text=[chat_prompt(processor, question)] * len(images),
        return_tensors="pt",
    ).to(model.device)
    hidden = torch.stack(model(**inputs, output_hidden_states=True).hidden_states)
    visual = inputs["input_ids"] == model.config.image_token_id
    return hidden[:, visual].reshape(hidden.shape[0], len(images), -1, hidden.shape[-1]).float()


def pca_rgb(tokens: torch.Tensor | np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid, 3) colours in [0, 1] of ``tokens`` (grid² in raster order, width D): the
    first three principal components, each centred on its median, divided by its
    interquartile range, and squashed by 0.5 * (tanh + 1)."""
    values = torch.as_tensor(tokens).double().cpu().numpy()
    if values.ndim != 2 or values.shape[0] != grid * grid:
        raise AnalysisError(f"tokens of shape {values.shape} do not fill a {grid}x{grid} grid")
    components = min(3, *values.shape)
    projected = PCA(n_components=components, svd_solver="full").fit_transform(values)
    projected = np.pad(projected, ((0, 0), (0, 3 - components)))  # absent components: grey
    low, median, high = np.percentile(projected, [25, 50, 75], axis=0)
    spread = np.where(high - low > 0, high - low, 1.0)  # a constant component maps to 0.5
    colours = 0.5 * (np.tanh((projected - median) / spread) + 1.0)
    return colours.reshape(grid, grid, 3)


@contextmanager
def projector_inputs(model) -> Iterator[list[torch.Tensor]]:
    """A list that receives what the projector is given (the tower features it consumes),
    one entry per forward, during the block."""
    captured: list[torch.Tensor] = []

    def keep(_module, args):
        captured.append(args[0].detach().float())

    handle = model.model.multi_modal_projector.register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def _panel_layers(model, layers: Sequence[int | str] | None) -> list[int | str]:
    depth = model.config.text_config.num_hidden_layers
    chosen = list(range(depth + 1)) if layers is None else list(layers)
    for layer in chosen:
        if layer == ENCODER_LAYER:
            continue
        if not isinstance(layer, int) or not -(depth + 1) <= layer <= depth:
            raise AnalysisError(
                f"layer {layer!r}: expected {ENCODER_LAYER!r} or an LM hidden-state index "
                f"in -{depth + 1}..{depth}"
            )
    return chosen


def _panels(model, processor, image: Image.Image, layers: list[int | str]) -> list[np.ndarray]:
    """The PCA grid of ``image`` at each of ``layers``, patch tokens only."""
    with projector_inputs(model) as encoder:
        states = visual_hidden_states(model, processor, [image])
    leading, grid = _leading_tokens(model), patch_grid(model)
    panels = []
    for layer in layers:
        tokens = encoder[0][0] if layer == ENCODER_LAYER else states[layer, 0]
        panels.append(pca_rgb(tokens[leading:], grid))
    return panels


def _figure(image: Image.Image, panels: list[np.ndarray], layers: list[int | str]) -> Figure:
    columns = min(PANELS_PER_ROW, len(panels) + 1)
    rows = math.ceil((len(panels) + 1) / columns)
    figure = Figure(figsize=(1.6 * columns, 1.8 * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    titles = ["image"] + [
        ENCODER_LAYER if layer == ENCODER_LAYER else f"layer {layer}" for layer in layers
    ]
    for axis, picture, title in zip(axes, [np.asarray(image), *panels], titles, strict=False):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(title, fontsize=8)
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    return figure


def pca_view(
    model_dir: Path | str,
    data: Path | str,
    out: Path | str,
    layers: Sequence[int | str] | None = None,
    images: int = 4,
) -> list[Path]:
    """One PNG per image (the first ``images`` distinct images of ``data``'s VQA items) under
    ``out/pca/``: the image beside its PCA grid at each of ``layers`` (LM hidden-state
    indices or "encoder"; default every hidden state, 0 = projector output)."""
    if images < 1:
        raise AnalysisError(f"images must be at least 1, got {images}")
    data = Path(data)
    names = list(dict.fromkeys(item["image"] for item in load_items(data)))[:images]
    model, processor = load(model_dir)
    chosen = _panel_layers(model, layers)
    folder = Path(out) / PCA_ANALYSIS
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        image = open_image(data, name, f"{data / 'vqa.jsonl'}")
        path = folder / f"{Path(name).stem}.png"
        _figure(image, _panels(model, processor, image, chosen), chosen).savefig(path, dpi=100)
        paths.append(path)
    return paths
