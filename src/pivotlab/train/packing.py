"""Batches for the SFT objectives (align, full, ``post.objective: sft``) made without repeated
work and without padding: what ``train.speed: fast`` changes in the data (``docs/performance.md``).

TRL's vision collator tokenizes every row's conversation and processes every row's image on
each call, after ``datasets`` has decoded the image file, and pads every row to the longest of
its batch. In the tiny world a Stage-1 run reads each question about twice and each image
about thirteen times, a row is about 27 tokens and a batch's longest about 37.
``PreparedCollator`` wraps TRL's collator and keeps it as the one definition of a row's
tokens, labels and pixels:

1. **Each row prepared once.** A row's ``input_ids`` and ``labels`` are kept under its text
   (every field but the images) and the processed shape of its images; an image's
   ``pixel_values`` under its file. Rows with anything not yet kept go through TRL's
   collator once (images opened from their paths only then: the dataset carries paths,
   ``image_paths``), and their pieces are kept; every later batch is assembled from the
   pieces. The image store stops growing at ``PIXEL_BUDGET`` bytes (paper-sized images are
   then processed on every call, as in TRL).
2. **Trailing tokens no loss reads are not computed.** A token after a row's last supervised
   label (the template's closing newline) feeds no prediction in a causal LM, so the row
   ends at its last supervised label. A row without one is kept whole.
3. **Packed, not padded** (``pack``). The sequences are placed, longest first, each into
   the emptiest of ``ceil(tokens / PACK_TOKENS)`` rows, each with its own ``position_ids``
   counted from 0 and no ``attention_mask``: transformers then builds a block-diagonal
   causal mask from the position ids (its padding-free format), so no token attends
   across rows, and every row's hidden states are those of the padded batch. The
   images follow their image tokens' order. Without ``pack`` (VIRAL reads one image per
   sequence), rows are right-padded as TRL pads them.

A packed batch also carries ``SEQUENCE_TOKENS``, the real tokens of its rows before the
trim (what the padded batch's attention mask counts), for the run's token counts. The
loss and its gradient are the padded batch's within float rounding
(``tests/train/test_packing.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from PIL import Image

IGNORED = -100  # the label of a token no loss reads
PACK_TOKENS = 96  # tokens per packed row: about 3.6 of the tiny world's rows (26.7 tokens)
PIXEL_BUDGET = 1 << 30  # bytes of processed images kept (1 GiB)
SEQUENCE_TOKENS = "sequence_tokens"  # batch key: real tokens of the rows, before the trim


@dataclass(frozen=True)
class Prepared:
    """One row's tokens and labels as TRL's collator makes them, up to the row's last
    supervised label (whole when it has none), and its length before that cut."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    tokens: int

    @classmethod
    def cut(cls, input_ids: torch.Tensor, labels: torch.Tensor) -> Prepared:
        supervised = (labels != IGNORED).nonzero()
        end = int(supervised[-1]) + 1 if len(supervised) else len(labels)
        return cls(input_ids[:end].clone(), labels[:end].clone(), len(labels))


def _unpredicted_start(labels: torch.Tensor) -> torch.Tensor:
    """A sequence's labels with its first ignored: in a packed row no sequence predicts
    across its start (the padded batch never reads a row's first label either)."""
    labels = labels.clone()
    labels[0] = IGNORED
    return labels


def image_paths(data: datasets.Dataset) -> datasets.Dataset:
    """The rows with their ``images`` as paths, not decoded: ``PreparedCollator`` opens an
    image only when it prepares it."""
    return data.cast_column("images", datasets.List(datasets.Image(decode=False)))


def _image_key(image: Any) -> Any:
    """Where an image comes from (its file, or its bytes); None for an image in memory
    without a file, which is processed on every call."""
    if isinstance(image, dict):
        return image.get("path") or image.get("bytes")
    return getattr(image, "filename", None) or None


def _opened(image: Any) -> Image.Image:
    """A row's image as ``datasets`` decodes it (``Image.open`` + ``load``)."""
    if not isinstance(image, dict):
        return image
    if image.get("path"):
        opened = Image.open(image["path"])
    else:
        from io import BytesIO

        opened = Image.open(BytesIO(image["bytes"]))
    opened.load()
    return opened


def _with_images_opened(examples: list[dict]) -> list[dict]:
    return [dict(e, images=[_opened(i) for i in e["images"]]) if "images" in e else e
            for e in examples]  # fmt: skip


KNOWN_KEYS = frozenset({"input_ids", "attention_mask", "labels", "pixel_values"})


def _text_key(example: dict) -> str:
    """Everything of a row but its images: what its tokens and labels depend on."""
    return json.dumps({k: v for k, v in example.items() if k != "images"}, sort_keys=True)


class PreparedCollator:
    """TRL's vision collator with each row prepared once, trimmed and (``pack``) packed
    (see the module docstring). A collator whose batches hold keys this one cannot
    assemble (``KNOWN_KEYS``) is used as it is, every call (``passthrough`` says why)."""

    def __init__(self, inner: Any, pad_token_id: int, pack: bool = True) -> None:
        self.inner = inner
        self.pad_token_id = pad_token_id
        self.pack = pack
        self.rows: dict[tuple, Prepared] = {}
        self.pixels: dict[Any, torch.Tensor] = {}
        self.pixel_bytes = 0
        self.prepared = 0  # rows that went through TRL's collator
        self.passthrough: str | None = None

    def __call__(self, examples: list[dict]) -> dict:
        if self.passthrough:
            return self.inner(_with_images_opened(examples))
        texts = [_text_key(example) for example in examples]
        images = [[_image_key(i) for i in example.get("images") or []] for example in examples]
        missing = [n for n in range(len(examples)) if self._key(texts[n], images[n]) is None]
        fresh = self._prepare([examples[n] for n in missing]) if missing else []
        if self.passthrough:
            return self(examples)
        made = dict(zip(missing, fresh, strict=True))
        rows, pixels = [], []
        for n in range(len(examples)):
            if n in made:
                row, pieces = made[n]
            else:
                row = self.rows[self._key(texts[n], images[n])]
                pieces = [self.pixels[k] for k in images[n]]
            rows.append(row)
            pixels.append(pieces)
        return self._packed(rows, pixels) if self.pack else self._padded(rows, pixels)

    def _key(self, text: str, images: list) -> tuple | None:
        """The key of a row whose pieces are all kept, else None."""
        if any(k is None or k not in self.pixels for k in images):
            return None
        key = (text, tuple(tuple(self.pixels[k].shape) for k in images))
        return key if key in self.rows else None

    def _prepare(self, examples: list[dict]) -> list[tuple[Prepared, list[torch.Tensor]]]:
        """Rows not kept yet through TRL's collator, in order; their pieces are kept."""
        batch = self.inner(_with_images_opened(examples))
        unknown = sorted(set(batch) - KNOWN_KEYS)
        if unknown:
            self.passthrough = f"the collator's batches hold {', '.join(unknown)}"
            return []
        self.prepared += len(examples)
        values = batch.get("pixel_values")
        counts = [len(e.get("images") or []) for e in examples]
        split = values.split(counts) if values is not None else None
        made = []
        for n, example in enumerate(examples):
            mask = batch["attention_mask"][n].bool()
            row = Prepared.cut(batch["input_ids"][n][mask], batch["labels"][n][mask])
            pieces = list(split[n]) if split is not None else []
            for image, piece in zip(example.get("images") or [], pieces, strict=True):
                self._keep_pixels(_image_key(image), piece)
            self.rows[(_text_key(example), tuple(tuple(p.shape) for p in pieces))] = row
            made.append((row, pieces))
        return made

    def _keep_pixels(self, key: Any, piece: torch.Tensor) -> None:
        if key is None or key in self.pixels or self.pixel_bytes >= PIXEL_BUDGET:
            return
        self.pixels[key] = piece
        self.pixel_bytes += piece.numel() * piece.element_size()

    def _padded(self, rows: list[Prepared], pixels: list[list[torch.Tensor]]) -> dict:
        """TRL's layout: every row right-padded to the longest."""
        width = max(len(row.input_ids) for row in rows)
        batch = {
            "input_ids": torch.full((len(rows), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
            "labels": torch.full((len(rows), width), IGNORED, dtype=torch.long),
        }
        for n, row in enumerate(rows):
            batch["input_ids"][n, : len(row.input_ids)] = row.input_ids
            batch["attention_mask"][n, : len(row.input_ids)] = 1
            batch["labels"][n, : len(row.input_ids)] = row.labels
        return self._with_pixels(batch, [p for pieces in pixels for p in pieces])

    def _packed(self, rows: list[Prepared], pixels: list[list[torch.Tensor]]) -> dict:
        """The rows packed into ``ceil(tokens / PACK_TOKENS)`` rows, each sequence (longest
        first) into the emptiest, with their own position ids (see the module docstring)."""
        lengths = [len(row.input_ids) for row in rows]
        bins: list[list[int]] = [[] for _ in range(-(-sum(lengths) // PACK_TOKENS))]
        loads = [0] * len(bins)
        for n in sorted(range(len(rows)), key=lambda n: -lengths[n]):
            emptiest = loads.index(min(loads))
            bins[emptiest].append(n)
            loads[emptiest] += lengths[n]
        width = max(loads)
        columns: dict[str, list[torch.Tensor]] = {"input_ids": [], "labels": [], "position_ids": []}
        placed = []
        for members, load in zip(bins, loads, strict=True):
            tail = width - load  # padding with its own positions from 0: a sequence of its own
            ids = [rows[n].input_ids for n in members]
            labels = [_unpredicted_start(rows[n].labels) for n in members]
            positions = [torch.arange(lengths[n]) for n in members]
            columns["input_ids"].append(torch.cat([*ids, torch.full((tail,), self.pad_token_id)]))
            columns["labels"].append(torch.cat([*labels, torch.full((tail,), IGNORED)]))
            columns["position_ids"].append(torch.cat([*positions, torch.arange(tail)]))
            placed.extend(p for n in members for p in pixels[n])
        batch = {key: torch.stack(values) for key, values in columns.items()}
        batch[SEQUENCE_TOKENS] = torch.tensor(sum(row.tokens for row in rows))
        return self._with_pixels(batch, placed)

    @staticmethod
    def _with_pixels(batch: dict, pieces: list[torch.Tensor]) -> dict:
        if pieces:
            batch["pixel_values"] = torch.stack(pieces)
        return batch
