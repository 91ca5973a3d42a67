"""TRL's trainers with the four things a controlled stage needs, as one small mixin.

1. **Per-part learning rates.** The optimizer gets one group per part (split into decay and
   no-decay parameters the way ``Trainer`` splits them), from ``model.parts``; the learning
   rate schedule scales every group alike.
2. **The schedule, read in order.** The training set is already in training order (see
   ``train.data``), so the sampler is sequential: no sampler seed can make two objectives
   diverge.
3. **A record of what was consumed.** Every row carries its record index; the collator
   moves it into the batch and ``compute_loss`` takes it out before the model sees it and
   appends ``{"step", "ids"}`` to ``samples.jsonl`` (gathered over processes, rank order),
   counting tokens on the way for the run summary.

4. **Resume that restores the weights** (see ``_load_from_checkpoint``).
5. **VIRAL, when switched on**: the alignment term of ``train.viral`` is added to the loss
   TRL computed, and logged beside it (``alignment_loss``, ``objective_loss``).

Everything else (losses, reference model, logging, checkpoints, resume, accelerate) is
TRL's and ``transformers``'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback
from trl import DPOTrainer, SFTTrainer

from pivotlab.model.parts import ALIGN_HEAD, parameter_groups
from pivotlab.train.data import SAMPLE_INDEX
from pivotlab.train.viral import VisualAlignment


class IndexedCollator:
    """Wraps a TRL collator: record indices travel beside the batch, not through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        indices = [example.pop(SAMPLE_INDEX) for example in examples]
        batch = self.inner(examples)
        batch[SAMPLE_INDEX] = torch.tensor(indices, dtype=torch.long)
        return batch


def split_weight_decay(
    groups: list[dict], decay_names: set[str], names: dict[int, str]
) -> list[dict]:
    """Each part's group as a decay and a no-decay group (biases and norms get none)."""
    split = []
    for group in groups:
        decay = [p for p in group["params"] if names[id(p)] in decay_names]
        rest = [p for p in group["params"] if names[id(p)] not in decay_names]
        if decay:
            split.append({**group, "params": decay})
        if rest:
            split.append({**group, "params": rest, "weight_decay": 0.0})
    return split


def _prefixed_weights(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor under ``prefix`` in a checkpoint's safetensors files."""
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update({k: v for k, v in load_file(path).items() if k.startswith(prefix)})
    return weights


class StageTrainerMixin:
    """Mixed into TRL's trainers; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        part_learning_rates: dict[str, float],
        samples_log: Path | None = None,
        record_ids: list[str] | None = None,
        alignment: VisualAlignment | None = None,
        **kwargs: Any,
    ) -> None:
        self.part_learning_rates = part_learning_rates
        self.alignment = alignment
        self._alignment_terms: list[float] = []
        self.samples_log = samples_log
        self.record_ids = record_ids
        self.tokens_seen = 0
        self.records_seen = 0
        super().__init__(*args, **kwargs)
        self.data_collator = IndexedCollator(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if SAMPLE_INDEX not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SAMPLE_INDEX]

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = parameter_groups(opt_model, self.part_learning_rates, self.args.weight_decay)
            names = {id(p): n for n, p in opt_model.named_parameters()}
            decay_names = set(self.get_decay_parameter_names(opt_model))
            groups = split_weight_decay(groups, decay_names, names)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs.pop(SAMPLE_INDEX, None)
        if indices is not None and self.model.training:
            self._record(indices, inputs["attention_mask"])
        aligning = self.alignment is not None and self.model.training
        if aligning:
            self.alignment.clear()
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not aligning:
            return result
        loss = self._with_alignment(result[0] if return_outputs else result, num_items_in_batch)
        return (loss, result[1]) if return_outputs else loss

    def _with_alignment(self, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        term, _ = self.alignment.loss()
        self._alignment_terms.append(term.detach().item())
        # Trainer divides the returned loss by the accumulation steps unless the objective
        # already normalised it over the whole accumulated batch; the term, a mean over this
        # micro-batch, must then be divided here to weigh the same.
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        if scaled:
            term = term / self.current_gradient_accumulation_steps
        return loss + self.alignment.weight * term

    def _record(self, indices: torch.Tensor, attention_mask: torch.Tensor) -> None:
        gathered = self.accelerator.gather(indices.to(self.accelerator.device)).tolist()
        tokens = self.accelerator.gather(attention_mask.sum().reshape(1)).sum().item()
        self.records_seen += len(gathered)
        self.tokens_seen += int(tokens)
        if self.samples_log is None or not self.is_world_process_zero():
            return
        ids = [self.record_ids[i] for i in gathered] if self.record_ids else gathered
        with self.samples_log.open("a") as log:
            log.write(json.dumps({"step": self.state.global_step + 1, "ids": ids}) + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # transformers 5's Trainer resumes with load_state_dict(strict=False) on the raw
        # file, but save_pretrained wrote Llava's keys in their legacy layout: no key
        # matches, nothing loads, and training silently restarts from the initial weights
        # (transformers#43701). Load the checkpoint the way from_pretrained does and insist
        # on every key.
        parameter = next(target.parameters())
        saved = type(target).from_pretrained(resume_from_checkpoint, dtype=parameter.dtype)
        state = saved.state_dict()
        if hasattr(target, ALIGN_HEAD):  # VIRAL's head: not a Llava key, saved as it is
            state.update(_prefixed_weights(Path(resume_from_checkpoint), f"{ALIGN_HEAD}."))
        target.load_state_dict(state, strict=True)
        return None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "learning_rate" in logs and self.optimizer is not None:
            # Trainer logs the first group's rate for the step just taken; one schedule
            # scales every group, so its factor gives each part's rate.
            factor = logs["learning_rate"] / self.optimizer.param_groups[0]["initial_lr"]
            for part, rate in self.part_learning_rates.items():
                logs[f"lr/{part}"] = rate * factor
        if "loss" in logs and self._alignment_terms:
            # Every process logs at the same steps; "loss" is averaged over them, so is this.
            local = torch.tensor([sum(self._alignment_terms) / len(self._alignment_terms)])
            alignment = self.accelerator.gather(local.to(self.accelerator.device)).mean().item()
            logs["alignment_loss"] = alignment
            logs["objective_loss"] = logs["loss"] - self.alignment.weight * alignment
            self._alignment_terms.clear()
        super().log(logs, *args, **kwargs)


class StageSFTTrainer(StageTrainerMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` for the align and full stages and the ``sft`` objective."""


class StageDPOTrainer(StageTrainerMixin, DPOTrainer):
    """TRL's ``DPOTrainer`` for the preference objectives (dpo, ipo, mpo)."""


class MetricsFileCallback(TrainerCallback):
    """Every logged number as one ``metrics.jsonl`` row in the project's metrics contract."""

    def __init__(self, path: Path, run: str, stage: str, seed: int) -> None:
        self.path = path
        self.keys = {"run": run, "stage": stage, "seed": seed}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with self.path.open("a") as out:
            for key, value in logs.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                split = "eval" if key.startswith("eval_") else "train"
                metric = key.removeprefix("eval_")
                row = {**self.keys, "step": state.global_step, "split": split}
                out.write(json.dumps({**row, "metric": metric, "value": float(value)}) + "\n")
