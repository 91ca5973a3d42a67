"""Each stage's data, and the schedule that makes the objectives comparable.

Stage data in TRL's formats, from a world split:

- ``align``: plain template, ``prompt = "<image>"`` and ``completion = caption + eos``
  (LLaVA's ``plain`` conversation: no chat turns, loss on the caption only);
- ``full``: the split's questions as conversations (``messages``), answer-only loss;
- ``post``: preference records. The SFT objective reads ``prompt`` + ``completion`` (the
  chosen answer), the preference objectives ``prompt`` + ``chosen`` + ``rejected``, GRPO
  the ``prompt`` with the question's ground truth (``truth``) and ``category`` beside it
  for its rewards: the same records either way.

The schedule is written by hand because it is the controlled part of the experiment: the
records are shuffled once per epoch from the run's seed, concatenated for the whole run,
and read in that order, so every objective sees the same records in the same order for
the same number of optimizer steps, on one process or many.

A ``post`` stage may add or train on on-policy pairs instead: the starting model's own
wrong answers to the split's questions (``post.on_policy``), sampled once and kept in
``RUN/records.jsonl`` with the records trained on.
"""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState

from pivotlab.data.formats import read_world_file
from pivotlab.images import ImageError, first_unusable, open_image
from pivotlab.io import read_jsonl, write_jsonl_atomic
from pivotlab.model.generation import generate_replies
from pivotlab.train.config import ConfigError, DataSection, StageConfig
from pivotlab.train.external import dataset_records, dataset_split
from pivotlab.train.rewards import GROUND_TRUTH, ground_truth
from pivotlab.train.splits import DataFolders, DataSplit, SplitFolder
from pivotlab.world.hf import conversations, image_rows_dataset, instruction_row, preference_row
from pivotlab.world.onpolicy import on_policy_preferences
from pivotlab.world.splits import cached_split

SAMPLE_INDEX = "sample_index"


def resolve_split(split: DataSplit) -> SplitFolder:
    """The folder ``split``'s records are read from: a world split folder (checked), the
    cached folder of its world fields (generated on first use), or its dataset's checked
    folder in the cache (``train/external.py``)."""
    if split.dataset is not None:
        return SplitFolder(split.key, dataset_split(split.dataset, split.key), split.dataset)
    if split.world is not None:
        return SplitFolder(split.key, cached_split(split.world))
    assert split.folder is not None
    if not (split.folder / "manifest.json").is_file():
        raise ConfigError(f"{split.key}: {split.folder} is not a world split (no manifest.json)")
    return SplitFolder(split.key, split.folder)


def resolve_data(data: DataSection) -> DataFolders:
    """The folders of a stage's training and held-out splits, resolved once per run."""
    assert data.train_split is not None, "validate() requires data.train"
    held_out = data.eval_split
    return DataFolders(
        resolve_split(data.train_split),
        resolve_split(held_out) if held_out is not None else None,
    )


def stage_records(cfg: StageConfig, split: SplitFolder) -> list[dict]:
    """The raw records a stage trains on (captions, questions or preference pairs)."""
    if split.dataset is not None:
        return dataset_records(cfg, split)
    name = {
        "align": "probes/captions.jsonl",
        "full": "vqa.jsonl",
        "post": "preferences.jsonl",
    }[cfg.stage]
    return read_world_file(split.path, name)


def keep_first(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    """The first ``limit`` records of a seeded shuffle (all of them, shuffled, if None);
    the subset recipe of PIVOT's matched SFT / DPO files."""
    order = np.random.default_rng(seed).permutation(len(records))
    kept = [records[i] for i in order]
    return kept if limit is None else kept[:limit]


def _sample_on_policy(cfg: StageConfig, model, processor, split: Path) -> list[dict]:
    """Preference pairs whose rejected answer the starting model actually gave and the
    world's ground truth marks wrong."""
    settings = cfg.post.on_policy
    questions = keep_first(read_world_file(split, "vqa.jsonl"), settings.questions, cfg.seed)
    torch.manual_seed(cfg.seed)
    model.eval()
    replies: dict[str, list[str]] = {}
    for start in range(0, len(questions), cfg.train.per_device_batch_size):
        batch = questions[start : start + cfg.train.per_device_batch_size]
        where = f"{split / 'vqa.jsonl'} (question {{}})"
        images = [open_image(split, r["image"], where.format(r["id"])) for r in batch]
        sampled = generate_replies(
            model,
            processor,
            images,
            [r["question"] for r in batch],
            max_new_tokens=settings.max_new_tokens,
            batch_size=len(batch),
            temperature=settings.temperature,
            samples=settings.samples,
        )
        replies.update({r["id"]: s for r, s in zip(batch, sampled, strict=True)})
    return on_policy_preferences(questions, lambda record: replies[record["id"]])


def training_records(
    cfg: StageConfig, split: SplitFolder, model, processor, out: Path
) -> list[dict]:
    """The records the stage trains on, shuffled once from the seed and cut at the limit.

    For ``post``, on-policy pairs are sampled once (on the main process) and kept in
    ``RUN/records.jsonl``, which every later read and every other process reuses.
    """
    if cfg.stage != "post":
        kept = keep_first(stage_records(cfg, split), cfg.data.limit, cfg.seed)
        return conversations(kept, cfg.data.turns)
    saved = out / "records.jsonl"
    state = PartialState()
    with state.main_process_first():
        if not saved.is_file():
            on_policy = cfg.post.on_policy
            replace = on_policy.enabled and on_policy.mix == "replace"
            records = [] if replace else stage_records(cfg, split)
            if on_policy.enabled:
                records += _sample_on_policy(cfg, model, processor, split.path)
            records = keep_first(records, cfg.data.limit, cfg.seed)
            if state.is_main_process:
                write_jsonl_atomic(saved, records)
        records = read_jsonl(saved)
    if not records:
        raise ConfigError(f"{out}: no preference records to train on (every sampled reply right?)")
    return records


def optimizer_steps(cfg: StageConfig, n_records: int) -> int:
    """``train.steps``, else enough steps for ``train.epochs`` passes over the records."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * n_records / cfg.train.batch_size))


def schedule(n_records: int, n_samples: int, seed: int) -> list[int]:
    """Record indices in training order: a fresh seeded permutation per epoch, cut at
    ``n_samples`` (steps x global batch)."""
    if n_records == 0:
        raise ConfigError("the stage has no training records")
    rng = np.random.default_rng([seed, 1])
    order: list[int] = []
    while len(order) < n_samples:
        order += rng.permutation(n_records).tolist()
    return order[:n_samples]


def _row(stage: str, objective: str, record: dict, eos: str) -> dict:
    if stage == "align":
        return {"prompt": "<image>", "completion": record["caption"] + eos}
    if stage == "full":
        return instruction_row(record)
    pair = preference_row(record)
    if objective == "grpo":
        return {"prompt": pair["prompt"]}
    if objective == "sft":  # the same records as DPO: the prompt and its chosen answer
        return {"prompt": pair["prompt"], "completion": pair["chosen"]}
    return pair


def ground_truths(records: list[dict], split: Path) -> list[str]:
    """Each preference record's ground truth for GRPO's rewards: the scoring fields of the
    VQA question it was made from (``vqa_id`` in the split's ``vqa.jsonl``); a record
    without one (a dataset's pair) is scored as an open answer against its ``chosen``."""
    vqa = split / "vqa.jsonl"
    questions = {q["id"]: q for q in read_world_file(split, "vqa.jsonl")} if vqa.is_file() else {}
    return [
        ground_truth(questions.get(record.get("vqa_id")) or {"answer": record["chosen"]})
        for record in records
    ]


def check_images(cfg: StageConfig, split: SplitFolder) -> None:
    """Raise ``ImageError`` naming the first of the stage's records whose image is outside
    ``split``, missing or unreadable. A dataset's records were screened against its own
    image root when it was checked into the cache (``train/external.py``): not read again."""
    if split.dataset is not None:
        return
    records = stage_records(cfg, split)
    unusable = first_unusable(split.path, [record["image"] for record in records])
    if unusable is not None:
        raise ImageError(f"{split.path}: record {unusable[0] + 1}: {unusable[1]}")


def trl_dataset(
    records: list[dict],
    split: Path,
    *,
    stage: str,
    objective: str = "dpo",
    eos: str = "",
    order: list[int] | None = None,
) -> datasets.Dataset:
    """Rows in the TRL format of the stage and objective, in ``order`` (record indices;
    repeats allowed), each with the index of its record (``sample_index``) so a run can
    log what it consumed. GRPO's rows also carry ``truth`` and ``category`` (its rewards
    and their per-category log read them)."""
    rows = [
        dict(
            _row(stage, objective, record, eos),
            images=[str(split / record["image"])],
            **{SAMPLE_INDEX: i},
        )
        for i, record in enumerate(records)
    ]
    if stage == "post" and objective == "grpo":
        for row, record, truth in zip(rows, records, ground_truths(records, split), strict=True):
            row.update({GROUND_TRUTH: truth, "category": record.get("category") or "none"})
    data = image_rows_dataset(rows)
    return data if order is None else data.select(order)
