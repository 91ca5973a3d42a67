"""A generated split as Hugging Face ``datasets`` in TRL's conversational formats.

Instruction data: ``{"images": [PIL], "messages": [user, assistant]}``; preference data:
``{"images": [PIL], "prompt": [user], "chosen": [assistant], "rejected": [assistant]}``;
caption data (projector alignment, plain template): ``{"images": [PIL], "caption": str}``.
Every row keeps its ground truth (``id``, ``scene_id``, ``category``, ``task``, ``answer``,
``choices``, ``pair_id``, ``negative_type``, ...) beside the training columns. Images are
decoded lazily from the split's PNG files.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from pivotlab.world.generate import WorldConfigError


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a malformed line is reported with its number."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise WorldConfigError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return records


def _split_file(split_dir: Path | str, name: str) -> tuple[Path, list[dict]]:
    root = Path(split_dir)
    path = root / name
    if not path.is_file():
        raise WorldConfigError(f"{root} is not a world split: {name} is missing")
    return root, read_jsonl(path)


def _user(text: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "text": None}, {"type": "text", "text": text}],
        }
    ]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _with_images(rows: list[dict]) -> datasets.Dataset:
    dataset = datasets.Dataset.from_list(rows)
    return dataset.cast_column("images", datasets.List(datasets.Image()))


def vqa_dataset(split_dir: Path | str) -> datasets.Dataset:
    """Every question of a split as an instruction-tuning conversation."""
    root, records = _split_file(split_dir, "vqa.jsonl")
    rows = []
    for record in records:
        row = dict(record)
        row["images"] = [str(root / record["image"])]
        row["messages"] = _user(record["question"]) + _assistant(record["answer"])
        rows.append(row)
    return _with_images(rows)


def preference_dataset(split_dir: Path | str) -> datasets.Dataset:
    """Every preference pair of a split in TRL's conversational preference format."""
    root, records = _split_file(split_dir, "preferences.jsonl")
    rows = []
    for record in records:
        row = dict(record)
        row["images"] = [str(root / record["image"])]
        row["prompt"] = _user(record["prompt"])
        row["chosen"] = _assistant(record["chosen"])
        row["rejected"] = _assistant(record["rejected"])
        rows.append(row)
    return _with_images(rows)


def caption_dataset(split_dir: Path | str) -> datasets.Dataset:
    """Image-caption pairs of a split (projector alignment, alignment metrics)."""
    root, records = _split_file(split_dir, "probes/captions.jsonl")
    rows = [dict(r, images=[str(root / r["image"])]) for r in records]
    return _with_images(rows)
