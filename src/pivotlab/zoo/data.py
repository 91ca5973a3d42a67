"""The data a zoo build shares between its parts, made in memory on first use."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pivotlab.zoo import pretraining
from pivotlab.zoo.recipes import ZooConfig
from pivotlab.zoo.tokenizer import world_tokenizer


@dataclass
class BuildData:
    """The data a build shares between parts, each piece made on first use."""

    zoo: ZooConfig
    cache: dict = field(default_factory=dict)

    def _once(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def pretraining_images(self) -> pretraining.ImageSet:
        """Half full scenes, half single-object scenes (the probe's kind of image, from the
        train split's probe stream, disjoint from the probe sets' val and test streams)."""
        z = self.zoo
        half = z.pretrain_images // 2
        return self._once("pretraining", lambda: pretraining.concatenate(
            pretraining.scene_images(
                "train", z.pretrain_images - half, z.image_size, z.patch_size, z.world
            ),
            pretraining.probe_images("train", half, z.image_size, z.patch_size),
        ))  # fmt: skip

    def _train_test(self, key: str, make) -> tuple:
        z = self.zoo
        return self._once(key, lambda: (
            make("val", z.probe_train, z.image_size, z.patch_size),
            make("test", z.probe_test, z.image_size, z.patch_size),
        ))  # fmt: skip

    def probes(self) -> tuple[pretraining.ImageSet, pretraining.ImageSet]:
        """Single-object probe images: the probe's train set (val stream) and test set."""
        return self._train_test("probes", pretraining.probe_images)

    def segmentation(self) -> tuple[pretraining.ImageSet, pretraining.ImageSet]:
        """Full scenes for the segmentation and cell probes: train set (val stream), test set."""
        world = self.zoo.world
        return self._train_test(
            "segmentation",
            lambda split, n, size, patch: pretraining.scene_images(split, n, size, patch, world),
        )

    def symbolic(self, turns: int) -> tuple[pretraining.SymbolicSet, pretraining.SymbolicSet]:
        """Conversations of up to ``turns`` questions about the zoo world's symbolic scenes
        (train stream), and held-out single questions (val stream)."""
        z = self.zoo

        def make(split: str, n: int, turns: int) -> pretraining.SymbolicSet:
            folder = pretraining.zoo_split(split, n, z.image_size, z.world)
            return pretraining.symbolic_set(
                folder, z.grid, turns, world_tokenizer(), z.cell_place_words
            )

        return self._once(("symbolic", turns), lambda: (
            make("train", z.symbolic_scenes, turns),
            make("val", z.heldout_symbolic_scenes, 1),
        ))  # fmt: skip

    def text_blocks(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """World text in blocks of ``block`` tokens: train stream, and held out (val)."""
        z = self.zoo
        return self._once(("text", block), lambda: (
            token_blocks(pretraining.world_documents("train", z.text_scenes), block),
            token_blocks(pretraining.world_documents("val", z.heldout_text_scenes), block),
        ))  # fmt: skip


def token_blocks(documents: list[str], block: int) -> torch.Tensor:
    """Documents tokenised, joined by end-of-text, cut into (N, block) training blocks."""
    tokenizer = world_tokenizer()
    separator = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for document in documents:
        ids += tokenizer(document, add_special_tokens=False)["input_ids"] + [separator]
    usable = len(ids) // block * block
    return torch.tensor(ids[:usable]).reshape(-1, block)


def processed_pixels(processor, images) -> torch.Tensor:
    """The processor's pixel values of ``images``."""
    return processor(images=images, return_tensors="pt")["pixel_values"]
