"""VQA evaluation of any saved Llava checkpoint on a world split (or data in its format).

    pivotlab evaluate --model runs/m/stage1 --data runs/world/test --out runs/eval/stage1

Batched greedy generation with the KV cache and the model's own chat template, scored by
``pivotlab.world.answers`` (the same rules training uses). ``likelihood`` mode scores every
option letter of a multiple-choice question by its log-likelihood instead of generating,
so nothing needs parsing; ``blind`` replaces every image by a uniform grey one, the
question-only baseline. Writes ``config.json``, ``predictions.jsonl`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from pivotlab import __version__
from pivotlab.console import Progress
from pivotlab.data.formats import read_world_file
from pivotlab.errors import PivotlabError
from pivotlab.evaluate.config import EvalConfig
from pivotlab.evaluate.metrics import accuracy_rows
from pivotlab.images import first_unusable, open_image
from pivotlab.io import MiB, check_output, write_json_atomic, write_jsonl_atomic
from pivotlab.model import load
from pivotlab.model.generation import chat_prompt, generate_replies
from pivotlab.world.answers import LETTERS, score_reply

REQUIRED_FIELDS = ("id", "image", "category", "task", "question", "answer")
BLANK_GREY = (128, 128, 128)


@dataclass
class EvalReport:
    """What an evaluation wrote, and how fast it ran."""

    out: Path
    predictions: list[dict]
    metrics: list[dict]
    seconds: float
    items_per_second: float = field(init=False)

    def __post_init__(self) -> None:
        self.items_per_second = len(self.predictions) / self.seconds if self.seconds else 0.0


def load_items(
    data: Path, categories: tuple[str, ...] = (), limit: int | None = None
) -> list[dict]:
    """The VQA records of ``data/vqa.jsonl``, checked, filtered by category, cut to ``limit``."""
    path = data / "vqa.jsonl"
    if not path.is_file():
        raise PivotlabError(f"{data} has no vqa.jsonl: not a world split or VQA folder")
    items, lines = [], []
    for line, record in enumerate(read_world_file(data, "vqa.jsonl"), start=1):
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise PivotlabError(f"{path}:{line}: missing field {missing[0]!r}")
        if not isinstance(record["image"], str):
            raise PivotlabError(f"{path}:{line}: field 'image' must be a string path")
        if categories and record["category"] not in categories:
            continue
        items.append(record)
        lines.append(line)
    if categories and not items:
        raise PivotlabError(f"{path}: no question in categories {', '.join(categories)}")
    if limit:
        items, lines = items[:limit], lines[:limit]
    # Every image is checked (inside the split, complete) before the model is loaded.
    unusable = first_unusable(data, [record["image"] for record in items])
    if unusable is not None:
        raise PivotlabError(f"{path}:{lines[unusable[0]]}: {unusable[1]}")
    return items


def shown_image(data: Path, record: dict, blind: bool) -> Image.Image:
    """The picture the model is shown for ``record``: its scene, or (``blind``) one flat
    grey picture of the same size."""
    rgb = open_image(data, record["image"], f"{data / 'vqa.jsonl'} (question {record['id']})")
    return Image.new("RGB", rgb.size, BLANK_GREY) if blind else rgb


def _batches(items: list, size: int, progress: Progress | None = None):
    """``items`` in batches of ``size``; ``progress`` counts each batch once it is done."""
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        yield batch
        if progress is not None:
            progress.advance(len(batch))


def greedy_replies(
    model,
    processor,
    data: Path,
    items: list[dict],
    cfg: EvalConfig,
    progress: Progress | None = None,
) -> list[str]:
    """Greedy replies, batched (images opened one batch at a time)."""
    replies = []
    for batch in _batches(items, cfg.batch_size, progress):
        replies += generate_replies(
            model,
            processor,
            [shown_image(data, r, cfg.blind) for r in batch],
            [r["question"] for r in batch],
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
        )
    return [reply for (reply,) in replies]


@torch.inference_mode()
def likelihood_choices(
    model,
    processor,
    data: Path,
    items: list[dict],
    cfg: EvalConfig,
    progress: Progress | None = None,
) -> list[str]:
    """For multiple-choice items, the option letter with the highest log-likelihood as the
    assistant's reply; each candidate is scored as prompt + letter (right-padded, so
    position ids of real tokens are unaffected)."""
    processor.tokenizer.padding_side = "right"
    tokenizer = processor.tokenizer
    choices = []
    for batch in _batches(items, cfg.batch_size, progress):
        texts, images, spans, owners = [], [], [], []
        for index, record in enumerate(batch):
            prompt = chat_prompt(processor, record["question"])
            prompt_length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            image = shown_image(data, record, cfg.blind)
            for letter in LETTERS[: len(record["choices"])]:
                texts.append(prompt + letter)
                images.append(image)
                spans.append(prompt_length)
                owners.append((index, letter))
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        log_probs = model(**inputs).logits.float().log_softmax(dim=-1)
        image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1)
        best: dict[int, tuple[float, str]] = {}
        for row, (index, letter) in enumerate(owners):
            # Placeholder expansion adds (visual tokens - 1) ids before the continuation.
            start = spans[row] + int(image_tokens[row]) - 1
            end = int(inputs["attention_mask"][row].sum())
            targets = inputs["input_ids"][row, start:end]
            score = log_probs[row, start - 1 : end - 1].gather(1, targets[:, None]).sum().item()
            if index not in best or score > best[index][0]:
                best[index] = (score, letter)
        choices += [best[i][1] for i in range(len(batch))]
    return choices


def evaluate(
    cfg: EvalConfig, model=None, processor=None, progress: Progress | None = None
) -> EvalReport:
    """Run one evaluation and write its folder (see the module docstring).

    ``model`` and ``processor`` may be passed when already in memory (``cfg.model`` is then
    only recorded); otherwise they are loaded from ``cfg.model``. ``progress`` counts the
    questions answered, for a live line.
    """
    data, out = Path(cfg.data), Path(cfg.out)
    items = load_items(data, cfg.categories, cfg.limit)
    check_output(out, 4096 * len(items) + 16 * MiB, "4 KiB per prediction + 16 MiB")
    if model is None or processor is None:
        model, processor = load(cfg.model)
    model.eval()
    start = time.perf_counter()
    if progress is not None:
        progress.start(len(items), "questions")
    by_likelihood = [i for i, r in enumerate(items) if cfg.likelihood and r.get("choices")]
    scored = set(by_likelihood)
    generated = [i for i in range(len(items)) if i not in scored]
    replies = [""] * len(items)
    for indices, method in ((generated, greedy_replies), (by_likelihood, likelihood_choices)):
        outputs = (
            method(model, processor, data, [items[i] for i in indices], cfg, progress)
            if indices
            else []
        )
        for i, reply in zip(indices, outputs, strict=True):
            replies[i] = reply
    seconds = time.perf_counter() - start
    predictions = [_prediction(record, reply) for record, reply in zip(items, replies, strict=True)]
    mode = "likelihood" if cfg.likelihood else "generate"
    base = {"run": out.name, "stage": "evaluate", "seed": cfg.seed, "split": data.name}
    base.update(blind=cfg.blind, mode=mode)
    metrics = accuracy_rows(predictions, base)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {**asdict(cfg), "categories": list(cfg.categories), "pivotlab_version": __version__}
    write_json_atomic(out / "config.json", resolved)
    _write_jsonl(out / "predictions.jsonl", predictions)
    _write_jsonl(out / "metrics.jsonl", metrics)
    return EvalReport(out, predictions, metrics, seconds)


def _prediction(record: dict, reply: str) -> dict:
    score = score_reply(record, reply)
    return {
        "id": record["id"],
        "category": record["category"],
        "task": record["task"],
        "question": record["question"],
        "prediction": reply,
        "parsed": score.parsed,
        "answer": record["answer"],
        "correct": score.correct,
        "pair_id": record.get("pair_id"),
        "chance": record.get("chance", 0.0),
    }


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_jsonl_atomic(path, records, ensure_ascii=False)
