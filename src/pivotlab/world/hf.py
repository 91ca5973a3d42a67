"""A generated split as Hugging Face ``datasets`` in TRL's conversational formats.

Instruction data: ``{"images": [PIL], "messages": [user, assistant]}``; preference data:
``{"images": [PIL], "prompt": [user], "chosen": [assistant], "rejected": [assistant]}``;
caption data (projector alignment, plain template): ``{"images": [PIL], "caption": str}``.
Every row keeps its ground truth (``id``, ``scene_id``, ``category``, ``task``, ``answer``,
``choices``, ``pair_id``, ``negative_type``, ...) beside the training columns. Images are
decoded lazily from the split's PNG files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets

from pivotlab.io import read_jsonl
from pivotlab.world.generate import WorldConfigError


def _split_file(split_dir: Path | str, name: str) -> tuple[Path, list[dict]]:
    root = Path(split_dir)
    path = root / name
    if not path.is_file():
        raise WorldConfigError(f"{root} is not a world split: {name} is missing")
    return root, read_jsonl(path)


def user_turn(text: str) -> list[dict]:
    """A user turn: one image, then ``text`` (TRL's conversational content items)."""
    return [
        {
            "role": "user",
            "content": [{"type": "image", "text": None}, {"type": "text", "text": text}],
        }
    ]


def assistant_turn(text: str) -> list[dict]:
    """An assistant turn holding ``text``."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def conversation(turns: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> list[dict]:
    """Question-answer turns about one image as alternating messages; only the first user
    turn carries the image (LLaVA's multi-turn form)."""
    messages = []
    for number, (question, answer) in enumerate(turns):
        user = user_turn(question)
        if number:
            user[0]["content"] = user[0]["content"][1:]
        messages += user + assistant_turn(answer)
    return messages


def conversations(records: list[dict], turns: int) -> list[dict]:
    """Questions about the same image joined into conversations of at most ``turns``
    question-answer pairs, in the order the images first appear; one record per
    conversation, its ``id`` the joined question ids."""
    if turns == 1:
        return records
    by_image: dict[str, list[dict]] = {}
    for record in records:
        by_image.setdefault(record["image"], []).append(record)
    joined = []
    for image, questions in by_image.items():
        for start in range(0, len(questions), turns):
            chunk = questions[start : start + turns]
            joined.append(
                {
                    "id": "+".join(str(q["id"]) for q in chunk),
                    "image": image,
                    "turns": [(q["question"], q["answer"]) for q in chunk],
                }
            )
    return joined


def instruction_row(record: dict) -> dict:
    """A question record (or a joined conversation, with ``turns``) as TRL's
    conversational instruction row: ``{"messages": [...]}``."""
    turns = record.get("turns") or [(record["question"], record["answer"])]
    return {"messages": conversation(turns)}


def preference_row(record: dict) -> dict:
    """A preference record as TRL's conversational preference row."""
    return {
        "prompt": user_turn(record["prompt"]),
        "chosen": assistant_turn(record["chosen"]),
        "rejected": assistant_turn(record["rejected"]),
    }


def image_rows_dataset(rows: list[dict]) -> datasets.Dataset:
    """Rows whose ``images`` hold file paths, as a ``Dataset`` decoding them lazily."""
    data = datasets.Dataset.from_list(rows)
    return data.cast_column("images", datasets.List(datasets.Image()))


def _dataset(split_dir: Path | str, name: str, to_row: Callable[[dict], dict]) -> datasets.Dataset:
    root, records = _split_file(split_dir, name)
    rows = [
        dict(record, images=[str(root / record["image"])], **to_row(record)) for record in records
    ]
    return image_rows_dataset(rows)


def vqa_dataset(split_dir: Path | str) -> datasets.Dataset:
    """Every question of a split as an instruction-tuning conversation."""
    return _dataset(split_dir, "vqa.jsonl", instruction_row)


def preference_dataset(split_dir: Path | str) -> datasets.Dataset:
    """Every preference pair of a split in TRL's conversational preference format."""
    return _dataset(split_dir, "preferences.jsonl", preference_row)


def caption_dataset(split_dir: Path | str) -> datasets.Dataset:
    """Image-caption pairs of a split (projector alignment, alignment metrics)."""
    return _dataset(split_dir, "probes/captions.jsonl", lambda r: {})
