"""A stage's held-out measures, after training, on ``data.eval``.

- ``full`` and ``align``: the stage's own loss on held-out records of its kind, through the
  trainer that trained (``heldout_loss``);
- ``post``, every objective: TRL's DPO evaluation (reward accuracy, margins, ...) of the
  trained model against the frozen starting model on held-out pairs, so SFT, the preference
  objectives and GRPO are compared on one measure (``heldout_preferences``).

The evaluator's arguments come from ``trl_arguments``, as training's do, so the config's
``trainer:`` section (DeepSpeed, workers, precision) reaches the evaluation too. Every run of
a study scores the same held-out records (``HELDOUT_SEED``); the measures land in
``RUN/metrics.jsonl`` (``split: heldout``) and ``RUN/summary.json``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from accelerate import PartialState

from pivotlab.io import append_jsonl
from pivotlab.train.arguments import accumulation, trl_arguments
from pivotlab.train.config import StageConfig
from pivotlab.train.splits import SplitFolder
from pivotlab.train.stage_data import SAMPLE_INDEX, keep_first, stage_records, trl_dataset

HELDOUT_SEED = 0  # every run of a study scores the same held-out records
EVALUATION_FOLDER = ".heldout"  # the evaluator's output_dir inside the run, removed after
TIMING = ("runtime", "samples_per_second", "steps_per_second", "epoch")


def heldout_records(cfg: StageConfig, split: SplitFolder) -> list[dict]:
    """The first ``data.eval_limit`` records of the held-out ``split``. Through the stage's
    own reader, so a dataset's held-out rows are screened as its training rows are (token
    limits, skipped rows)."""
    return keep_first(stage_records(cfg, split), cfg.data.eval_limit, HELDOUT_SEED)


def heldout_arguments(cfg: StageConfig, out: Path):
    """TRL's ``DPOConfig`` for the held-out preference measure: the stage's own arguments
    (``trl_arguments``, ``trainer:`` included) with ``post.beta``, TRL's default DPO loss
    and every held-out pair scored."""
    from trl import DPOConfig

    accum = accumulation(cfg, PartialState().num_processes)
    # The evaluator never takes an optimizer step; its step count is only a valid value.
    args = trl_arguments(cfg, out / EVALUATION_FOLDER, steps=1, accum=accum)
    # Settings of another objective's config (SFT's packing, GRPO's generation) configure
    # that objective's training, not this DPO evaluation.
    accepted = {field.name for field in dataclasses.fields(DPOConfig)}
    settings = {key: value for key, value in args.items() if key in accepted}
    # Training drops a last partial batch to keep the schedule; the measure scores them all.
    settings.update(beta=cfg.post.beta, dataloader_drop_last=False)
    return DPOConfig(**settings)


def heldout_preferences(
    cfg: StageConfig, split: SplitFolder, model, reference, processor, out: Path
) -> dict:
    """DPO's metrics (reward accuracy, margins, ...) on the held-out ``split``'s pairs, the
    trained model against the frozen starting model, computed the same way for every
    objective."""
    from trl import DPOTrainer

    records = heldout_records(cfg, split)
    data = trl_dataset(records, split.path, stage="post", objective="dpo")
    data = data.remove_columns(SAMPLE_INDEX)
    evaluator = DPOTrainer(
        model=model,
        ref_model=reference,
        args=heldout_arguments(cfg, out),
        processing_class=processor,
        train_dataset=data,  # required by TRL, never trained on
        eval_dataset=data,
    )
    metrics = evaluator.evaluate(metric_key_prefix="heldout")
    shutil.rmtree(out / EVALUATION_FOLDER, ignore_errors=True)
    return measured(metrics)


def heldout_loss(trainer, cfg: StageConfig, split: SplitFolder, processor) -> dict:
    """The stage's own loss on the held-out ``split``'s records of its kind, through its
    trainer."""
    data = trl_dataset(
        heldout_records(cfg, split),
        split.path,
        stage=cfg.stage,
        objective=cfg.post.objective,
        eos=processor.tokenizer.eos_token,
    )
    return measured(trainer.evaluate(eval_dataset=data, metric_key_prefix="heldout"))


def measured(metrics: dict) -> dict:
    """Evaluation metrics without the prefixes and the timing entries."""
    names = {k.removeprefix("heldout_").removeprefix("eval_"): v for k, v in metrics.items()}
    return {k: v for k, v in names.items() if k not in TIMING}


def heldout_measures(
    cfg: StageConfig,
    split: SplitFolder | None,
    trainer,
    processor,
    out: Path,
    starting_model: Callable[[], object],
) -> dict:
    """The stage's held-out measures on ``split`` (``data.eval`` resolved; none without
    it). ``starting_model`` loads the frozen reference when the trainer kept none (SFT,
    GRPO without KL)."""
    if split is None:
        return {}
    if cfg.stage != "post":
        return heldout_loss(trainer, cfg, split, processor)
    reference = getattr(trainer, "ref_model", None) or starting_model()
    return heldout_preferences(cfg, split, trainer.model, reference, processor, out)


def append_heldout_metrics(out: Path, cfg: StageConfig, step: int, metrics: dict) -> None:
    """The held-out measures as ``RUN/metrics.jsonl`` rows (``split: heldout``)."""
    base = {"run": cfg.run or out.name, "stage": cfg.stage, "seed": cfg.seed, "step": step}
    rows = [
        {**base, "split": "heldout", "metric": name, "value": float(value)}
        for name, value in metrics.items()
        if isinstance(value, int | float)
    ]
    append_jsonl(out / "metrics.jsonl", rows)
