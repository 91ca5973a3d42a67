"""Where an MLLM looks when it answers: gradient saliency on the image's patch grid.

Both maps come from one teacher-forced forward and one backward of the answer's summed
log-likelihood: the model's own chat prompt with the image, then the answer and the eos
``<|im_end|>`` the models are trained to end it with (right-padded batches, so the position
ids of real tokens are unaffected; only the answer tokens' logits are computed).

- ``projector_grad`` (PIVOT's ``llava/train/hook.py``): the norm over channels (L1 as PIVOT,
  or L2) of the gradient at the projector *output*, the visual tokens as the LM receives
  them, captured by a forward hook on ``model.model.multi_modal_projector``. PIVOT's display
  post-processing, border rows and columns replaced by random inner neighbours (against edge
  artefact tokens, arXiv 2309.16588), is ``border_fill``, off by default.
- ``gradcam``: Grad-CAM at the tower hidden state the projector consumes
  (``config.vision_feature_layer``, e.g. -2 = the output of ``encoder.layers[-2]``; later
  blocks get no gradient): activations A (patch tokens x channels, CLS dropped), gradient G,
  w_c = mean over tokens of G[:, c], cam = ReLU(sum_c w_c A[:, c]). Written by hand: the
  ``grad-cam`` package needs torchvision, which does not import beside this CPU-only torch,
  and captum's ``LayerGradCam`` assumes (B, C, H, W) activations (it would take tokens for
  channels). The hidden state is captured by a forward hook on that block, prepended so it
  runs before the hooks transformers 5 builds ``hidden_states`` with: it swaps the block's
  output (a tensor, or the first element of a tuple) for a detached copy that requires grad,
  so the Llava forward consumes exactly the tensor we differentiate, and no parameter needs
  a gradient (``torch.autograd.grad`` on the captured tensors only).

Visual tokens are row-major over the (grid, grid) patch grid (the patch convolution's
flatten); a CLS token, where the projector receives one, is dropped. The grid covers the whole
image: world images are square, so resizing keeps the alignment (a centre crop would not).

Baselines: ``centre_prior``, an isotropic Gaussian centred on the image with sigma
``CENTRE_SIGMA`` x the shorter side; ``object_prior``, the share of object pixels in each
patch averaged over the analysed items (where objects tend to be in these images, the centre
prior of a world whose objects are not centred); ``random``, uniform noise on the grid,
seeded per item; ``all_objects``, the share of object pixels in each patch (where every
object is, not which one the question names). Gradient maps are paired with the centre
prior, the object prior and the all-objects map. None of the baselines depends on the model:
each is a reference.

Scores against the target mask (the union of the instance masks of ``target_objects``) at
image resolution, each map upsampled bilinearly (``align_corners=False``) and non-negative:

- ``energy``: the map's mass inside the mask over its total (Score-CAM's energy-based pointing
  game = Quantus ``RelevanceMassAccuracy``), without min subtraction, so scale-invariant; a
  zero map scores 0.
- ``pointing``: 1 if the map's argmax lies within ``pointing_tolerance`` px (Euclidean) of a
  mask pixel, i.e. in the mask dilated by a disc (TorchRay's 15 px at 224 px, scaled to the
  image's shorter side and rounded); a constant map has no maximum and misses.

Items whose target is fully occluded (empty mask) are skipped and counted (``skipped``).
"""

from __future__ import annotations

import operator
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from pivotlab.analysis import ROW_NAMES, SALIENCY
from pivotlab.analysis.features import PROBE_FILES, AnalysisError, probe_rows
from pivotlab.errors import PivotlabError
from pivotlab.evaluate.metrics import bootstrap_interval
from pivotlab.images import open_image
from pivotlab.model import load
from pivotlab.model.families import vision_family
from pivotlab.model.generation import chat_prompt

NORMS = ("l1", "l2")
METHODS = ("projector_grad", "gradcam", "centre_prior", "object_prior", "random", "all_objects")
GRADIENT_METHODS = ("projector_grad", "gradcam")
PAIRED_BASELINES = {"centre_prior": "centre", "object_prior": "prior", "all_objects": "objects"}
CENTRE_SIGMA = 0.25  # of the image's shorter side
TORCHRAY_TOLERANCE_PX = 15
TORCHRAY_IMAGE_PX = 224
OVERLAY_ALPHA = 0.6
REQUIRED_FIELDS = ("question", "answer", "image", "instances", "target_objects")


@dataclass
class GradientMaps:
    """Per-item maps on the patch grid, and the answer log-likelihood they differentiate."""

    projector_grad: torch.Tensor  # (B, grid, grid), non-negative
    gradcam: torch.Tensor  # (B, grid, grid), non-negative
    log_likelihood: torch.Tensor  # (B,)


# ---------------------------------------------------------------------------- gradient maps


def grid_size(model: nn.Module) -> int:
    """Patches per image side of a Llava model's tower."""
    vision = model.config.vision_config
    return vision.image_size // vision.patch_size


def visual_token_grid(values: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, tokens) per-token values as (B, grid, grid), row-major; a leading CLS is dropped."""
    tokens = values.shape[1]
    if tokens == grid * grid + 1:
        values = values[:, 1:]
    elif tokens != grid * grid:
        raise AnalysisError(f"{tokens} visual tokens do not fill a {grid}x{grid} patch grid")
    return values.reshape(values.shape[0], grid, grid)


def _teacher_forced_batch(
    processor, images: Sequence[Image.Image], questions: Sequence[str], answers: Sequence[str]
) -> tuple[dict, torch.Tensor]:
    """Right-padded prompt + answer + eos inputs, and a (B, seq) mask of the answer tokens."""
    tokenizer = processor.tokenizer
    prompts = [chat_prompt(processor, question) for question in questions]
    texts = [p + a + tokenizer.eos_token for p, a in zip(prompts, answers, strict=True)]
    answer_lengths = []
    for prompt, text in zip(prompts, texts, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if text_ids[: len(prompt_ids)] != prompt_ids:
            raise AnalysisError(f"answer {text[len(prompt) :]!r} merges with the prompt's tokens")
        answer_lengths.append(len(text_ids) - len(prompt_ids))
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        inputs = processor(images=list(images), text=texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    ends = inputs["attention_mask"].sum(dim=1, keepdim=True)
    starts = ends - torch.tensor(answer_lengths)[:, None]
    positions = torch.arange(inputs["input_ids"].shape[1])[None]
    return dict(inputs), (positions >= starts) & (positions < ends)


def _answer_log_likelihood(model, inputs: dict, answer_mask: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probabilities of the answer tokens, logits only where they are scored."""
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    rows, columns = answer_mask.nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, columns - 1]).float()
    targets = inputs["input_ids"][rows, columns]
    token_log_probs = logits.log_softmax(dim=-1).gather(1, targets[:, None])[:, 0]
    return torch.zeros(answer_mask.shape[0]).index_add(0, rows, token_log_probs)


def _leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().requires_grad_(True)


def _capture_hidden_state(model, layer: int, captured: dict) -> torch.utils.hooks.RemovableHandle:
    """Hook the block whose output is hidden state ``layer`` (index 0: the input of block 0)
    so that the forward runs on a leaf tensor stored in ``captured["hidden"]``."""
    tower = model.model.vision_tower
    blocks = operator.attrgetter(vision_family(tower.config).layers_path)(tower)
    depth = len(blocks)
    if not isinstance(layer, int) or not -(depth + 1) <= layer <= depth:
        raise AnalysisError(
            f"layer {layer!r} is outside the tower's hidden states (-{depth + 1}..{depth})"
        )
    index = layer % (depth + 1)

    def swap_input(module, args):
        captured["hidden"] = _leaf(args[0])
        return (captured["hidden"], *args[1:])

    def swap_output(module, args, output):
        if isinstance(output, tuple):
            captured["hidden"] = _leaf(output[0])
            return (captured["hidden"], *output[1:])
        captured["hidden"] = _leaf(output)
        return captured["hidden"]

    if index == 0:
        return blocks[0].register_forward_pre_hook(swap_input, prepend=True)
    return blocks[index - 1].register_forward_hook(swap_output, prepend=True)


def _capture_projector(model, captured: dict) -> torch.utils.hooks.RemovableHandle:
    def keep(module, args, output):
        captured["projected"] = output

    return model.model.multi_modal_projector.register_forward_hook(keep)


def _channel_norm(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    return gradient.abs().sum(dim=-1) if norm == "l1" else gradient.norm(dim=-1)


def _gradcam(activations: torch.Tensor, gradient: torch.Tensor, has_cls: bool) -> torch.Tensor:
    """(B, patches) ReLU(sum_c w_c A_c), w_c the token-mean of the gradient of channel c."""
    if has_cls:
        activations, gradient = activations[:, 1:], gradient[:, 1:]
    weights = gradient.mean(dim=1, keepdim=True)
    return (weights * activations).sum(dim=-1).clamp(min=0)


def gradient_maps(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    norm: str = "l1",
    layer: int | None = None,
) -> GradientMaps:
    """Projector-gradient and Grad-CAM maps of a batch (see the module docstring).

    ``layer`` is the tower hidden state Grad-CAM uses, by default the one the projector
    consumes (any other gets the gradient that flows there, zero past the consumed one).
    The model is put in eval mode; parameters' ``requires_grad`` is left as it is.
    """
    if norm not in NORMS:
        raise AnalysisError(f"norm {norm!r}: expected one of {', '.join(NORMS)}")
    layer = model.config.vision_feature_layer if layer is None else layer
    model.eval()
    inputs, answer_mask = _teacher_forced_batch(processor, images, questions, answers)
    captured: dict[str, torch.Tensor] = {}
    handles = [_capture_hidden_state(model, layer, captured), _capture_projector(model, captured)]
    try:
        with torch.enable_grad():
            log_likelihood = _answer_log_likelihood(model, inputs, answer_mask)
            tensors = [captured["hidden"], captured["projected"]]
            gradients = torch.autograd.grad(log_likelihood.sum(), tensors, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    hidden_grad, projected_grad = (
        torch.zeros_like(t) if g is None else g for t, g in zip(tensors, gradients, strict=True)
    )
    grid = grid_size(model)
    has_cls = vision_family(model.config.vision_config).has_cls
    cam = _gradcam(captured["hidden"].detach().float(), hidden_grad.float(), has_cls)
    return GradientMaps(
        projector_grad=visual_token_grid(_channel_norm(projected_grad.float(), norm), grid),
        gradcam=visual_token_grid(cam, grid),
        log_likelihood=log_likelihood.detach(),
    )


def border_fill(maps: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """PIVOT's post-processing: each border cell of (B, grid, grid) maps takes the value of
    one of its 8-neighbours off the border, drawn uniformly."""
    grid = maps.shape[-1]
    if grid < 3:
        raise AnalysisError(f"border fill needs a grid of at least 3x3, got {grid}x{grid}")
    filled = maps.clone()
    for row in range(grid):
        for column in range(grid):
            if 0 < row < grid - 1 and 0 < column < grid - 1:
                continue
            inner = [
                (r, c)
                for r in range(max(row - 1, 1), min(row + 2, grid - 1))
                for c in range(max(column - 1, 1), min(column + 2, grid - 1))
            ]
            for item in range(maps.shape[0]):
                r, c = inner[rng.integers(len(inner))]
                filled[item, row, column] = maps[item, r, c]
    return filled


# ---------------------------------------------------------------------------- baselines


def centre_prior(height: int, width: int, sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """An isotropic Gaussian centred on the image, sigma ``sigma`` x the shorter side."""
    spread = sigma * min(height, width)
    rows = (np.arange(height) - (height - 1) / 2)[:, None]
    columns = (np.arange(width) - (width - 1) / 2)[None, :]
    return np.exp(-(rows**2 + columns**2) / (2 * spread**2))


def random_map(grid: int, seed: int, item: int) -> torch.Tensor:
    """Uniform noise on the (grid, grid) patch grid, one stream per (seed, item)."""
    return torch.from_numpy(np.random.default_rng([seed, item]).random((grid, grid)))


# ---------------------------------------------------------------------------- scores


def objects_map(objects: np.ndarray, grid: int) -> torch.Tensor:
    """(grid, grid) share of object pixels per patch: a map that knows where every object is
    but not which one the question names, so a gradient map beating it localises the named
    object rather than objects against background."""
    shares = torch.as_tensor(objects, dtype=torch.float32)[None, None]
    return nn.functional.adaptive_avg_pool2d(shares, grid)[0, 0]


def upsample(grid_map: torch.Tensor, height: int, width: int) -> np.ndarray:
    """A (grid, grid) map at image size: bilinear, ``align_corners=False``, clipped at 0."""
    image_map = F.interpolate(
        grid_map[None, None].double(), size=(height, width), mode="bilinear", align_corners=False
    )
    return image_map[0, 0].clamp(min=0).numpy()


def target_mask(instances: np.ndarray, target_objects: Sequence[int]) -> np.ndarray:
    """The union of the targets' pixels in an instance mask (object index + 1, 0 none)."""
    return np.isin(instances, [index + 1 for index in target_objects])


def pointing_tolerance(height: int, width: int) -> int:
    """TorchRay's 15 px at 224 px, scaled to the image's shorter side and rounded."""
    return round(TORCHRAY_TOLERANCE_PX * min(height, width) / TORCHRAY_IMAGE_PX)


def energy(image_map: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-negative map's mass inside ``mask``; 0 for a zero map."""
    total = float(image_map.sum())
    return float(image_map[mask].sum()) / total if total > 0 else 0.0


def pointing_hit(image_map: np.ndarray, mask: np.ndarray, tolerance: int) -> bool:
    """Whether the map's argmax lies within ``tolerance`` px of a mask pixel."""
    if image_map.max() <= image_map.min():
        return False
    row, column = np.unravel_index(int(np.argmax(image_map)), image_map.shape)
    rows, columns = np.nonzero(mask)
    return bool((((rows - row) ** 2 + (columns - column) ** 2) <= tolerance**2).any())


# ---------------------------------------------------------------------------- the analysis


@dataclass
class _Item:
    position: int  # row index in the probe file (the random map's stream)
    row: dict
    image: Image.Image
    mask: np.ndarray
    objects: np.ndarray  # every object's pixels, the named ones or not


def _sample(count: int, limit: int | None, seed: int) -> list[int]:
    """Row indices: all rows, or a seeded sample of ``limit`` of them in file order."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit < 1:
        raise AnalysisError(f"limit must be at least 1, got {limit}")
    return sorted(np.random.default_rng(seed).choice(count, size=limit, replace=False).tolist())


def _read_items(data: Path, rows: list[dict], positions: list[int]) -> tuple[list[_Item], int]:
    """The rows' images and target masks, without those whose target is fully occluded."""
    source = data / PROBE_FILES["localisation"]
    items, skipped = [], 0
    for position in positions:
        row, where = rows[position], f"{source}:{position + 1}"
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        if missing:
            raise AnalysisError(f"{where}: missing field {missing[0]!r}")
        image = open_image(data, row["image"], where)
        instances = np.asarray(open_image(data, row["instances"], where, mode=None))
        try:
            mask = target_mask(instances, row["target_objects"])
        except (OSError, ValueError) as error:
            raise AnalysisError(f"{where}: cannot read instance mask ({error})") from None
        if mask.shape != (image.height, image.width):
            raise AnalysisError(f"{where}: instance mask {mask.shape} is not the image's size")
        if mask.any():
            items.append(_Item(position, row, image, mask, instances > 0))
        else:
            skipped += 1
    return items, skipped


def _load_model(model_dir: Path | str):
    try:
        model, processor = load(model_dir)
    except PivotlabError as error:
        raise AnalysisError(f"saliency needs an MLLM folder: {error}") from None
    model.eval()
    model.requires_grad_(False)  # only the captured tensors are differentiated
    return model, processor


def object_prior(objects: Sequence[np.ndarray], grid: int) -> torch.Tensor:
    """(grid, grid) share of object pixels per patch, averaged over images' object masks."""
    return torch.stack([objects_map(mask, grid) for mask in objects]).mean(dim=0)


def _image_maps(
    maps: GradientMaps, index: int, item: _Item, seed: int, border: bool, prior: torch.Tensor
) -> dict[str, np.ndarray]:
    height, width = item.mask.shape
    projector = maps.projector_grad[index]
    if border:
        projector = border_fill(projector[None], np.random.default_rng([seed, item.position]))[0]
    grid = projector.shape[-1]
    return {
        "projector_grad": upsample(projector, height, width),
        "gradcam": upsample(maps.gradcam[index], height, width),
        "centre_prior": centre_prior(height, width),
        "object_prior": upsample(prior, height, width),
        "random": upsample(random_map(grid, seed, item.position), height, width),
        "all_objects": upsample(objects_map(item.objects, grid), height, width),
    }


def _write_overlay(path: Path, item: _Item, image_maps: dict[str, np.ndarray]) -> None:
    """Image with the target outline, then each gradient map over it (jet, min-max scaled)."""
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (("image + target", None), *((m, image_maps[m]) for m in GRADIENT_METHODS))
    for ax, (title, image_map) in zip(axes, panels, strict=True):
        ax.imshow(np.asarray(item.image))
        if image_map is not None:
            span = image_map.max() - image_map.min()
            scaled = (image_map - image_map.min()) / span if span > 0 else image_map * 0
            ax.imshow(scaled, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0, vmax=1)
        if not item.mask.all():
            ax.contour(item.mask.astype(float), levels=[0.5], colors="white", linewidths=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    caption = f"Q: {item.row['question']}  A: {item.row['answer']}"
    figure.suptitle(textwrap.shorten(caption, width=160), fontsize=8, wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def _metric_row(encoder: str, method: str, metric: str, outcomes: list[float], **keys) -> dict:
    low, high = bootstrap_interval(outcomes)
    row = {"analysis": ROW_NAMES[SALIENCY], "encoder": encoder, "method": method, "metric": metric}
    row.update(keys, value=float(np.mean(outcomes)), ci_low=low, ci_high=high, n=len(outcomes))
    return row


def _rows(
    encoder: str, scores: dict[str, dict[str, list[float]]], skipped: int, qualifiers: dict
) -> list[dict]:
    rows = []
    for method in METHODS:
        for metric, outcomes in scores[method].items():
            extra = dict(qualifiers.get(method, {}), skipped=skipped)
            if method not in GRADIENT_METHODS:
                extra["reference"] = True  # a baseline's map does not depend on the model
            rows.append(_metric_row(encoder, method, metric, outcomes, **extra))
    for method in GRADIENT_METHODS:
        for baseline, short in PAIRED_BASELINES.items():
            for metric, outcomes in scores[method].items():
                reference = scores[baseline][metric]
                differences = [a - b for a, b in zip(outcomes, reference, strict=True)]
                extra = dict(qualifiers.get(method, {}), baseline=baseline, skipped=skipped)
                rows.append(
                    _metric_row(encoder, method, f"{metric}_minus_{short}", differences, **extra)
                )
    return rows


def saliency(
    model_dir: Path | str,
    data: Path | str,
    limit: int | None = 200,
    seed: int = 0,
    out: Path | str | None = None,
    overlays: int = 8,
    *,
    norm: str = "l1",
    border: bool = False,
    batch_size: int = 16,
) -> list[dict]:
    """Localisation of the gradient maps and the baselines on a split's localisation probe.

    Items are a seeded sample of ``limit`` rows of ``probes/localisation.jsonl`` (kept in file
    order; all rows when ``limit`` is None or larger). Rows: per method, ``energy`` and
    ``pointing`` (means with bootstrap intervals), and per gradient method the paired
    differences ``<metric>_minus_centre`` (against the centre prior), ``<metric>_minus_prior``
    (the object prior) and ``<metric>_minus_objects`` (against the all-objects map); each row
    counts the ``skipped``
    (fully occluded) items. With ``out``, the first ``overlays`` items are drawn to
    ``out/saliency/*.png``. ``border`` applies PIVOT's border fill to the projector-gradient
    map.
    """
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be at least 1, got {batch_size}")
    data = Path(data)
    rows = probe_rows(data, "localisation")
    items, skipped = _read_items(data, rows, _sample(len(rows), limit, seed))
    if not items:
        raise AnalysisError(f"{data}: every sampled localisation target is fully occluded")
    model, processor = _load_model(model_dir)
    prior = object_prior([item.objects for item in items], grid_size(model))
    scores = {method: {"energy": [], "pointing": []} for method in METHODS}
    drawn = 0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        maps = gradient_maps(
            model,
            processor,
            [item.image for item in batch],
            [item.row["question"] for item in batch],
            [item.row["answer"] for item in batch],
            norm=norm,
        )
        for index, item in enumerate(batch):
            image_maps = _image_maps(maps, index, item, seed, border, prior)
            tolerance = pointing_tolerance(*item.mask.shape)
            for method, image_map in image_maps.items():
                scores[method]["energy"].append(energy(image_map, item.mask))
                scores[method]["pointing"].append(
                    float(pointing_hit(image_map, item.mask, tolerance))
                )
            if out is not None and drawn < overlays:
                name = f"{drawn:03d}-{item.row.get('id', item.position)}.png"
                _write_overlay(Path(out) / SALIENCY / name, item, image_maps)
                drawn += 1
    qualifiers = {
        "projector_grad": {"norm": norm, "border": border},
        "gradcam": {"layer": model.config.vision_feature_layer},
    }
    return _rows(str(model_dir), scores, skipped, qualifiers)
