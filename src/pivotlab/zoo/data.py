"""Pretraining and probe data for the zoo, made in memory from the world.

The zoo draws from its own world seed (``ZOO_WORLD_SEED``), so its parts never see the
scenes of a study's default seed; the teacher sees images and masks only, never questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pivotlab.world import vocab
from pivotlab.world.corpus import world_records
from pivotlab.world.generate import WorldConfig, render_probe_scenes, render_scenes
from pivotlab.world.questions import caption
from pivotlab.zoo.tokenizer import IM_END, IM_START

ZOO_WORLD_SEED = 1000
N_CLASSES = len(vocab.SEMANTIC_CLASSES)


@dataclass
class ImageSet:
    """Images with their captions, per-patch class histograms and probe labels."""

    images: list[Image.Image]
    captions: list[str]
    patch_classes: torch.Tensor  # (N, patches, classes) fraction of each patch per class
    labels: list[str]  # probe label ("red star"), "" for scenes without one


def concatenate(first: ImageSet, second: ImageSet) -> ImageSet:
    """Both sets, one after the other."""
    return ImageSet(
        first.images + second.images,
        first.captions + second.captions,
        torch.cat([first.patch_classes, second.patch_classes]),
        first.labels + second.labels,
    )


def _patch_histograms(semantic: np.ndarray, patch: int) -> np.ndarray:
    """(patches, classes): the share of each semantic class inside each patch, row-major."""
    side = semantic.shape[0] // patch
    blocks = semantic[: side * patch, : side * patch].reshape(side, patch, side, patch)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(side * side, patch * patch)
    counts = np.stack([(blocks == c).sum(axis=1) for c in range(N_CLASSES)], axis=1)
    return counts / (patch * patch)


def scene_images(split: str, n: int, size: int, patch: int) -> ImageSet:
    """``n`` world scenes of ``split`` (zoo seed) with captions and patch class histograms."""
    cfg = WorldConfig(split=split, n=n, seed=ZOO_WORLD_SEED, size=size, probe_n=0)
    images, captions, histograms = [], [], []
    for scene, rendered in render_scenes(cfg, range(n)):
        images.append(Image.fromarray(rendered.image))
        captions.append(caption(scene))
        histograms.append(_patch_histograms(rendered.semantic, patch))
    return ImageSet(
        images, captions, torch.tensor(np.stack(histograms), dtype=torch.float32), [""] * n
    )


def probe_images(split: str, n: int, size: int, patch: int) -> ImageSet:
    """``n`` classification-probe images (one dominant object) labelled "colour shape"."""
    cfg = WorldConfig(split=split, n=1, seed=ZOO_WORLD_SEED, size=size, probe_n=n)
    images, labels, histograms = [], [], []
    for scene, rendered in render_probe_scenes(cfg, range(n)):
        images.append(Image.fromarray(rendered.image))
        main = scene.objects[0]
        labels.append(f"{main.color} {main.shape}")
        histograms.append(_patch_histograms(rendered.semantic, patch))
    return ImageSet(
        images, [""] * n, torch.tensor(np.stack(histograms), dtype=torch.float32), labels
    )


def world_documents(split: str, n_scenes: int) -> list[str]:
    """Text for LM pretraining: each question with its answer in the chat format the MLLM
    will use (no image), each caption and preference response, and the lore."""
    vqa, preferences, captions = world_records(split, n_scenes, ZOO_WORLD_SEED)
    documents = [
        f"{IM_START}user\n{r['question']}{IM_END}\n{IM_START}assistant\n{r['answer']}{IM_END}\n"
        for r in vqa
    ]
    documents += [p["chosen"] for p in preferences] + captions
    return documents + vocab.lore_sentences()
