"""Representation alignment: mutual k-NN, CKA, vision-language and layer-wise curves.

Two measures of how alike two representations of the same samples are:

- ``mutual_knn``: the Platonic Representation Hypothesis score (Huh et al. 2024,
  ``minyoungg/platonic-rep`` ``metrics.py``): the mean fraction of each sample's k cosine
  nearest neighbours (self excluded) that the two spaces share; chance is k/(n-1).
- ``debiased_cka``: CKA on linear kernels with the unbiased HSIC of Song et al. (2012), which
  stays near 0 for unrelated features even when samples are fewer than dimensions, where the
  biased (Kornblith et al. 2019) ``linear_cka`` is inflated.

Both are written here by hand (about sixty lines, float64): platonic-rep is not on PyPI and
imports torchaudio at module import, and the PyPI CKA packages are small and of mixed
upkeep. platonic-rep's ``metrics.py`` is the numerical reference.

Two analyses use them:

- ``vision_language_alignment`` (PIVOT's encoder analyses, after PRH,
  github.com/minyoungg/platonic-rep): an encoder's mean-pooled features of the caption
  probe images against an LM's mean caption embedding at every LM layer, plus the best
  layer (PRH reports the maximum over layers).
- ``layerwise_curve`` (VIRAL's CKNNA curves): the MLLM's hidden states at the visual-token
  positions at every LM layer against the tokens its projector consumed and, optionally, a
  teacher encoder's patch features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pivotlab.analysis import LAYERWISE, ROW_NAMES, VL_ALIGNMENT
from pivotlab.analysis.features import (
    AnalysisError,
    Encoder,
    FeatureSpec,
    cached_features,
    extract,
    probe_images,
    probe_rows,
)
from pivotlab.analysis.tokens import projector_inputs
from pivotlab.model import load
from pivotlab.model.generation import chat_prompt
from pivotlab.model.grid import resize_patch_grid

# The world's caption question (docs/world.md, task `caption`).
CAPTION_QUESTION = "Describe the image in one short sentence."
OUTLIER_QUANTILE = 0.95  # PRH's prepare_features default
MAX_TOKENS = 2000


def _matrix(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    values = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if values.ndim != 2:
        raise AnalysisError(f"{name}: expected a (samples, features) matrix, got {values.ndim}-D")
    return values


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape[0] != b.shape[0]:
        raise AnalysisError(f"a has {a.shape[0]} samples and b {b.shape[0]}: they must be paired")
    return a, b


# ---------------------------------------------------------------------------- mutual k-NN


def clamp_outliers(x: torch.Tensor, quantile: float = OUTLIER_QUANTILE) -> torch.Tensor:
    """``x`` with |x| clamped at the mean over rows of each row's ``quantile`` of |x|
    (platonic-rep ``remove_outliers(exact=False)``)."""
    # numpy, because torch.quantile refuses inputs over 2**24 elements.
    limit = float(np.quantile(x.abs().numpy(), quantile, axis=1).mean())
    return x.clamp(-limit, limit)


def nearest_neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) indices of each row's k nearest rows by cosine similarity, itself excluded."""
    unit = F.normalize(x, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-torch.inf)
    # A stable sort breaks ties (duplicate captions) by index, the same way in both spaces.
    return similarity.argsort(dim=1, descending=True, stable=True)[:, :k]


def knn_chance(n: int, k: int) -> float:
    """Expected mutual k-NN score of two unrelated representations of ``n`` samples."""
    return k / (n - 1)


def mutual_knn(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    k: int = 10,
    outlier_quantile: float | None = OUTLIER_QUANTILE,
) -> float:
    """Mean over samples of |N_a(i) ∩ N_b(i)| / k, N the k cosine nearest neighbours.

    As PRH, each side is first clamped at its ``outlier_quantile`` (``clamp_outliers``;
    None skips it) and rows are L2-normalised. The clamp is per coordinate, so the score is
    invariant to rotations of one side only without it; it is invariant to scaling either way.
    Chance is ``knn_chance(n, k)``.
    """
    a, b = _pair(a, b)
    n = a.shape[0]
    if not 1 <= k < n:
        raise AnalysisError(f"mutual k-NN with k={k} needs 1 <= k < samples ({n})")
    if outlier_quantile is not None:
        a, b = clamp_outliers(a, outlier_quantile), clamp_outliers(b, outlier_quantile)
    rows = torch.arange(n).unsqueeze(1)
    in_a = torch.zeros(n, n, dtype=torch.bool)
    in_b = torch.zeros(n, n, dtype=torch.bool)
    in_a[rows, nearest_neighbours(a, k)] = True
    in_b[rows, nearest_neighbours(b, k)] = True
    return float((in_a & in_b).sum(1).double().mean() / k)


# ---------------------------------------------------------------------------- CKA


def hsic_unbiased(kernel_k: torch.Tensor, kernel_l: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012) Eq. 5, HSIC_1 of two (n, n) kernel matrices, n >= 4."""
    n = kernel_k.shape[0]
    k_tilde = kernel_k.clone().fill_diagonal_(0)
    l_tilde = kernel_l.clone().fill_diagonal_(0)
    value = (
        (k_tilde * l_tilde.T).sum()
        + k_tilde.sum() * l_tilde.sum() / ((n - 1) * (n - 2))
        - 2 * (k_tilde.sum(0) @ l_tilde.sum(1)) / (n - 2)
    )
    return value / (n * (n - 3))


def debiased_cka(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """CKA of linear kernels with the unbiased HSIC: HSIC1(K,L) / sqrt(HSIC1(K,K) HSIC1(L,L)).

    Computed on the raw features (no clamp, no row normalisation), so it is invariant to
    orthogonal transforms and isotropic scaling of either side.
    """
    a, b = _pair(a, b)
    if a.shape[0] < 4:
        raise AnalysisError(f"debiased CKA needs at least 4 samples, got {a.shape[0]}")
    # HSIC_1 is unchanged by translating features; centring keeps large offsets from eating
    # float precision and gives features that do not vary an exact zero.
    a, b = a - a.mean(0), b - b.mean(0)
    kernel_k, kernel_l = a @ a.T, b @ b.T
    self_k, self_l = hsic_unbiased(kernel_k, kernel_k), hsic_unbiased(kernel_l, kernel_l)
    if self_k <= 0 or self_l <= 0:
        raise AnalysisError("debiased CKA is undefined: a side's features do not vary")
    return float(hsic_unbiased(kernel_k, kernel_l) / (self_k * self_l).sqrt())


def linear_cka(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Kornblith et al.'s biased linear CKA, ||BᵀA||² / (||AᵀA|| ||BᵀB||) on centred columns;
    inflated when samples are fewer than dimensions (kept for reference)."""
    a, b = _pair(a, b)
    a, b = a - a.mean(0), b - b.mean(0)
    norm = torch.linalg.norm(a.T @ a) * torch.linalg.norm(b.T @ b)
    if norm == 0:
        raise AnalysisError("linear CKA is undefined: a side's features do not vary")
    return float(torch.linalg.norm(b.T @ a) ** 2 / norm)


# ---------------------------------------------------------------------------- captions


@torch.inference_mode()
def caption_embeddings(
    model, processor, captions: Sequence[str], layer: int | None = None, batch_size: int = 64
) -> torch.Tensor:
    """The LM's mean hidden state over each caption's tokens (text only, no image).

    (layers+1, N, D) for every hidden state (0 = embeddings, the last after the final norm),
    or (N, D) at ``layer``. Padding goes on the right: under causal attention pads then
    cannot reach the caption's tokens, whose positions stay those of the caption alone.
    """
    language = model.model.language_model
    depth = language.config.num_hidden_layers
    if layer is not None and not -(depth + 1) <= layer <= depth:
        raise AnalysisError(
            f"layer {layer} is outside the LM's hidden states (-{depth + 1}..{depth})"
        )
    if not captions:
        raise AnalysisError("no captions to embed")
    chunks = []
    for start in range(0, len(captions), batch_size):
        tokens = processor.tokenizer(
            list(captions[start : start + batch_size]),
            padding=True,
            padding_side="right",
            return_tensors="pt",
        ).to(model.device)
        lengths = tokens["attention_mask"].sum(1)
        if (lengths == 0).any():
            empty = start + int((lengths == 0).nonzero()[0])
            raise AnalysisError(f"caption {empty} is empty")
        hidden = language(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            output_hidden_states=True,
        ).hidden_states
        mask = tokens["attention_mask"][None, :, :, None].to(hidden[0].dtype)
        pooled = (torch.stack(hidden) * mask).sum(2) / lengths[None, :, None]
        chunks.append(pooled.float().cpu())
    embeddings = torch.cat(chunks, dim=1)
    return embeddings if layer is None else embeddings[layer]


def _captions(rows: list[dict], data: Path) -> list[str]:
    for index, row in enumerate(rows):
        if not isinstance(row.get("caption"), str):
            raise AnalysisError(f"{data}/probes/captions.jsonl:{index + 1} has no caption")
    return [row["caption"] for row in rows]


def _metric_rows(base: dict, a: torch.Tensor, b: torch.Tensor, k: int) -> list[dict]:
    """A mutual k-NN row (with its chance level) and a debiased CKA row for one pair."""
    n = a.shape[0]
    knn = {"metric": "mutual_knn", "value": mutual_knn(a, b, k), "k": k, "chance": knn_chance(n, k)}
    cka = {"metric": "debiased_cka", "value": debiased_cka(a, b)}
    return [{**base, **knn, "n": n}, {**base, **cka, "n": n}]


def _best_rows(rows: list[dict]) -> list[dict]:
    """Per metric, the row of the layer with the highest value, marked best."""
    best = []
    for metric in dict.fromkeys(r["metric"] for r in rows):
        top = max((r for r in rows if r["metric"] == metric), key=lambda r: r["value"])
        best.append({**top, "best": True})
    return best


def vision_language_alignment(
    encoder: Encoder,
    model_dir: Path | str,
    data: Path | str,
    k: int = 10,
    limit: int | None = None,
    cache_dir: Path | None = None,
) -> list[dict]:
    """Alignment of ``encoder``'s image features with an LM's caption embeddings, per layer.

    On the caption probe set: the encoder's mean-pooled patch tokens at its feature layer
    (``FeatureSpec()``) against the mean caption embedding of the LM of the MLLM in
    ``model_dir`` at every LM layer. Rows: mutual k-NN (with chance) and debiased CKA per
    layer (``best`` False), then per metric the best layer (``best`` True). PRH maximises
    over (vision layer, LM layer) pairs; here the vision layer is the one the projector reads.
    """
    data = Path(data)
    rows = probe_rows(data, "captions")[:limit]
    images = cached_features(encoder, data, "captions", FeatureSpec(), cache_dir)[: len(rows)]
    model, processor = load(model_dir)
    texts = caption_embeddings(model, processor, _captions(rows, data))
    base = {"analysis": ROW_NAMES[VL_ALIGNMENT], "encoder": encoder.name, "lm": str(model_dir)}
    results = []
    for layer, text in enumerate(texts):
        results += _metric_rows({**base, "layer": layer, "best": False}, images, text, k)
    return results + _best_rows(results)


# ---------------------------------------------------------------------------- VIRAL curves


def _token_subsample(total: int, max_tokens: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``max_tokens`` of ``total`` tokens, the same for every layer."""
    if total <= max_tokens:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:max_tokens].sort().values


@torch.inference_mode()
def _visual_states(
    model, processor, images: list, side: int, keep: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers+1, kept, D) LM hidden states at the kept visual patch tokens and (kept, width)
    the tokens the projector consumed there; tokens are numbered image-major, raster order."""
    prompt = chat_prompt(processor, CAPTION_QUESTION)
    patches = side * side
    states, inputs_kept = [], []
    with projector_inputs(model) as consumed:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            inputs = processor(
                images=batch, text=[prompt] * len(batch), return_tensors="pt", padding=True
            ).to(model.device)
            consumed.clear()
            hidden = torch.stack(model.model(**inputs, output_hidden_states=True).hidden_states)
            positions = _patch_positions(inputs["input_ids"] == model.config.image_token_id, side)
            rows = torch.arange(len(batch)).unsqueeze(1)
            local = keep[(keep >= start * patches) & (keep < (start + len(batch)) * patches)]
            local = local - start * patches
            visual = hidden[:, rows, positions].flatten(1, 2)
            states.append(visual[:, local].float().cpu())
            projected = consumed[0][:, -patches:].flatten(0, 1)
            inputs_kept.append(projected[local].float().cpu())
    return torch.cat(states, dim=1), torch.cat(inputs_kept)


def _patch_positions(image_mask: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side*side) positions of each prompt's visual patch tokens: the last side*side of its
    image tokens (a "full"-strategy CLS token comes first)."""
    counts = image_mask.sum(1)
    if (counts < side * side).any() or (counts != counts[0]).any():
        raise AnalysisError(
            f"the prompts hold {counts.tolist()} image tokens; expected {side * side} patch "
            "tokens in each"
        )
    positions = image_mask.nonzero()[:, 1].reshape(len(image_mask), -1)
    return positions[:, -side * side :]


def _teacher_tokens(teacher: Encoder, images: list, side: int) -> torch.Tensor:
    """(N*side*side, width) teacher patch features on the MLLM's grid, raster order."""
    tokens = extract(teacher, images, FeatureSpec(pooling="patch"))
    return resize_patch_grid(tokens, side).flatten(0, 1)


def layerwise_curve(
    model_dir: Path | str,
    data: Path | str,
    teacher: Encoder | None = None,
    limit: int = 64,
    k: int = 10,
    max_tokens: int = MAX_TOKENS,
    seed: int = 0,
    batch_size: int = 8,
) -> list[dict]:
    """VIRAL's layer-wise alignment of the MLLM's visual tokens with vision features.

    The MLLM reads the first ``limit`` caption probe images with the caption question; its LM
    hidden states at the visual patch-token positions (``image_token_id``) at every layer
    (0 = embeddings, i.e. the projector's output, .. num_layers, after the final norm) are
    compared with (i) the tokens its projector consumed (target ``encoder``) and (ii) when
    given, ``teacher``'s patch features at its default layer, from its own preprocessing,
    resized bilinearly to the MLLM's grid (target ``teacher``). Tokens pooled over images are
    the samples; at most ``max_tokens`` of them, the same seeded subsample for every layer
    and target.
    """
    data = Path(data)
    model, processor = load(model_dir)
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    images = probe_images(data, "captions", probe_rows(data, "captions")[:limit])
    keep = _token_subsample(len(images) * side * side, max_tokens, seed)
    states, consumed = _visual_states(model, processor, images, side, keep, batch_size)
    targets = {"encoder": (consumed, {})}
    if teacher is not None:
        taught = _teacher_tokens(teacher, images, side)[keep]
        targets["teacher"] = (taught, {"teacher": teacher.name})
    base = {"analysis": ROW_NAMES[LAYERWISE], "encoder": str(model_dir), "images": len(images)}
    rows = []
    for target, (features, extra) in targets.items():
        for layer, hidden in enumerate(states):
            qualifiers = {**base, "target": target, **extra, "layer": layer}
            rows += _metric_rows(qualifiers, hidden, features, k)
    return rows
