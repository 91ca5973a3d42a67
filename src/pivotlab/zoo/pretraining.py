"""Pretraining and probe data for the zoo, made in memory from the world.

The zoo draws from its own world seed (``ZOO_WORLD_SEED``), so its parts never see the
scenes of a study's default seed; the teacher sees images and masks only, never questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pivotlab.io import read_jsonl
from pivotlab.probes import patch_class_counts
from pivotlab.world import vocab
from pivotlab.world.corpus import world_records
from pivotlab.world.generate import WorldConfig, render_probe_scenes, render_scenes
from pivotlab.world.hf import conversation, conversations
from pivotlab.world.questions import caption
from pivotlab.world.splits import cached_split
from pivotlab.world.symbolic import OCCLUSIONS, Cell, symbolic_cells
from pivotlab.zoo.tokenizer import IM_END, IM_START, IMAGE_TOKEN

ZOO_WORLD_SEED = 1000
N_CLASSES = len(vocab.SEMANTIC_CLASSES)


# What an encoder learns to put in each patch token: the classes of the symbolic cell's
# colour, shape, size and occlusion (0: none, an empty cell or an unoccluded object).
CELL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("none", *vocab.COLOR_NAMES),
    "shape": ("none", *vocab.SHAPES),
    "size": ("none", *vocab.SIZE_NAMES),
    "occlusion": ("none", *OCCLUSIONS),
}
NO_TARGET = -100  # cross-entropy's ignore index: images without symbolic cells


@dataclass
class ImageSet:
    """Images with their captions, per-patch class histograms, symbolic-cell targets and
    probe labels."""

    images: list[Image.Image]
    captions: list[str]
    patch_classes: torch.Tensor  # (N, patches, classes) fraction of each patch per class
    labels: list[str]  # probe label ("red star"), "" for scenes without one
    cells: torch.Tensor  # (N, patches, CELL_ATTRIBUTES) class ids, NO_TARGET where none


def concatenate(first: ImageSet, second: ImageSet) -> ImageSet:
    """Both sets, one after the other."""
    return ImageSet(
        first.images + second.images,
        first.captions + second.captions,
        torch.cat([first.patch_classes, second.patch_classes]),
        first.labels + second.labels,
        torch.cat([first.cells, second.cells]),
    )


def cell_targets(cells: list[Cell]) -> list[list[int]]:
    """Each cell's class id per attribute of ``CELL_ATTRIBUTES``."""
    return [
        [CELL_ATTRIBUTES[name].index(getattr(cell, name) or "none") for name in CELL_ATTRIBUTES]
        for cell in cells
    ]


def _patch_histograms(semantic: np.ndarray, patch: int) -> np.ndarray:
    """(patches, classes): the share of each semantic class inside each patch, row-major."""
    return patch_class_counts(semantic, patch, N_CLASSES) / (patch * patch)


def scene_images(split: str, n: int, size: int, patch: int, preset: str) -> ImageSet:
    """``n`` scenes of world ``preset``'s ``split`` (zoo seed) with captions, patch class
    histograms and symbolic-cell targets (one cell per patch)."""
    cfg = WorldConfig.from_preset(preset, split=split, n=n, seed=ZOO_WORLD_SEED, size=size)
    images, captions, histograms, targets = [], [], [], []
    for scene, rendered in render_scenes(cfg, range(n)):
        images.append(Image.fromarray(rendered.image))
        captions.append(caption(scene))
        histograms.append(_patch_histograms(rendered.semantic, patch))
        targets.append(cell_targets(symbolic_cells(scene.to_json(), size // patch)))
    return ImageSet(
        images,
        captions,
        torch.tensor(np.stack(histograms), dtype=torch.float32),
        [""] * n,
        torch.tensor(targets),
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
    shares = torch.tensor(np.stack(histograms), dtype=torch.float32)
    no_cells = torch.full((n, shares.shape[1], len(CELL_ATTRIBUTES)), NO_TARGET)
    return ImageSet(images, [""] * n, shares, labels, no_cells)


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


# ---------------------------------------------------------------------------------------
# Symbolic scenes: the language models' pretraining on the tiny world's questions
# ---------------------------------------------------------------------------------------
def zoo_split(split: str, n: int, size: int, preset: str) -> Path:
    """A split of world ``preset`` (``WorldConfig.from_preset``) on the zoo's seed,
    generated into the world cache on first use."""
    cfg = WorldConfig.from_preset(
        preset, split=split, n=n, seed=ZOO_WORLD_SEED, size=size, probe_n=0
    )
    return cached_split(cfg)


def _word_ids(tokenizer, word: str) -> list[int]:
    return tokenizer(word, add_special_tokens=False)["input_ids"]


def cell_token_ids(cell: Cell, tokenizer, place_words: bool = True) -> list[int]:
    """The token ids whose embeddings sum to a cell's embedding.

    An object's colour, shape and size are each given in both forms the world's text uses,
    as a question says it (" red") and as an answer does ("red"), so finding the object a
    question names and answering with its attribute are both matches of the same vectors.
    With ``place_words``, the cell also names its place by the relation words of its halves
    ("above", "left"); without, its place is only where it stands in the sequence, as a
    visual token's is for a model that reads order."""
    place = [cell.row, cell.column] if place_words else []
    if cell.empty:
        words = ["<bg>"]
    else:
        attributes = [cell.color, cell.shape, cell.size]
        words = ["<obj>"] + [f" {a}" for a in attributes] + attributes
        if cell.occlusion is not None:
            words.append(f"<{cell.occlusion}>")
    return [i for word in words + place for i in _word_ids(tokenizer, word)]


@dataclass
class SymbolicSet:
    """Conversations about symbolic scenes, tokenised in the MLLM's chat format.

    ``ids`` hold the image placeholder once per visual-token cell (as the Llava processor
    expands it); ``labels`` are the answer tokens (and their ``<|im_end|>``), -100
    elsewhere; ``cells`` each conversation's (cells, slots) token ids, -1 where a cell has
    fewer slots; ``tasks`` the task of each turn."""

    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    cells: list[torch.Tensor]
    tasks: list[list[str]]


def _cell_table(cells: list[Cell], tokenizer, place_words: bool) -> torch.Tensor:
    rows = [cell_token_ids(cell, tokenizer, place_words) for cell in cells]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows])


def symbolic_set(
    split_dir: Path, grid: int, turns: int, tokenizer, place_words: bool = True
) -> SymbolicSet:
    """Every question of a split, joined into conversations of at most ``turns`` questions
    per image, each about the image's symbolic scene (``grid`` x ``grid`` cells; each cell
    naming its place by words or not, ``cell_token_ids``)."""
    scenes = {s["scene_id"]: s for s in read_jsonl(split_dir / "scenes.jsonl")}
    records = read_jsonl(split_dir / "vqa.jsonl")
    task_of = {r["id"]: r["task"] for r in records}
    scene_of_image = {r["image"]: r["scene_id"] for r in records}
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    tables: dict[str, torch.Tensor] = {}  # one per scene, shared by its conversations
    result = SymbolicSet([], [], [], [])
    for joined in conversations(records, turns):
        messages = conversation(joined.get("turns") or [(joined["question"], joined["answer"])])
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = [], []
        for token, answer in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True):
            copies = grid * grid if token == image_id else 1
            ids += [token] * copies
            mask += [answer] * copies
        ids_tensor = torch.tensor(ids)
        result.ids.append(ids_tensor)
        result.labels.append(torch.where(torch.tensor(mask) == 1, ids_tensor, -100))
        scene_id = scene_of_image[joined["image"]]
        if scene_id not in tables:
            tables[scene_id] = _cell_table(
                symbolic_cells(scenes[scene_id], grid), tokenizer, place_words
            )
        result.cells.append(tables[scene_id])
        result.tasks.append([task_of[q] for q in str(joined["id"]).split("+")])
    return result
