"""TRL's trainers with the six things a controlled stage needs, as one small mixin.

1. **Per-part learning rates.** The optimizer gets one group per part (split into decay and
   no-decay parameters the way ``Trainer`` splits them), from ``model.parts``; the learning
   rate schedule scales every group alike.
2. **The schedule, read in order.** The training set is already in training order (see
   ``train.stage_data``), so the sampler is sequential: no sampler seed can make two objectives
   diverge.
3. **A record of what was consumed.** Every row carries its record index; the collator
   moves it into the batch and ``compute_loss`` takes it out before the model sees it and
   appends ``{"step", "ids"}`` to ``samples.jsonl`` (gathered over processes, rank order),
   counting tokens on the way for the run summary.
4. **Resume that restores the weights** (see ``restore_weights``), from safetensors only,
   and the running loss sum kept in each checkpoint, so a resumed run reports the mean loss
   of the whole run; training arguments kept as JSON, not pickled (the run folder's side
   of this, checkpoints and logs, is ``train.rundir``).
5. **VIRAL, when switched on**: the alignment term of ``train.viral`` is added to the loss
   TRL computed, and logged beside it (``alignment_loss``, ``objective_loss``).
6. **A stop on non-finite numbers**: after the gradients of a step are reduced and before
   the optimizer applies them, a non-finite loss (any micro-batch, any process) or gradient
   norm saves the state before that update as ``checkpoint-N`` (N the last good step) and
   raises ``NonFiniteError`` naming the step and its records.

The mixin sits on ``SFTTrainer``, ``DPOTrainer`` and ``GRPOTrainer`` (``StageGRPOTrainer``
reads the same schedule through TRL's own prompt-repeating sampler and logs its prompts when
it generates). Everything else (losses, rewards, generation, reference model, logging,
checkpoints, resume, accelerate) is TRL's and ``transformers``'. This module uses their
public extension points only; the hooks on Trainer's and GRPOTrainer's private methods, and
the version check that guards them, are in ``train.adapter``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback
from trl import DPOTrainer, GRPOTrainer, SFTTrainer

from pivotlab.console import Progress
from pivotlab.errors import PivotlabError
from pivotlab.io import append_jsonl, write_json_atomic
from pivotlab.model.parts import ALIGN_HEAD, parameter_groups
from pivotlab.train.adapter import (
    GRPOInternals,
    TrainerInternals,
    check_versions,
    checkpoint_folder,
    count_trained_tokens,
    loss_sum,
    save_checkpoint_now,
)
from pivotlab.train.packing import SEQUENCE_TOKENS
from pivotlab.train.prefix import install_prefix_sharing
from pivotlab.train.refcache import use_reference_cache
from pivotlab.train.rundir import (
    LOSS_FILE,
    ArgumentsAsJson,
    checkpoint_complete,
    keep_arguments_as_json,
)
from pivotlab.train.speed import Levers, speed_up_instructions
from pivotlab.train.stage_data import SAMPLE_INDEX
from pivotlab.train.viral import VisualAlignment

logger = logging.getLogger(__name__)
SHOWN_IDS = 8  # record ids a non-finite message names; samples.jsonl has them all
BY_CATEGORY = "by_category"  # logged keys by_category/<category>/<metric>


class NonFiniteError(PivotlabError):
    """A step's loss or gradient norm was NaN or infinite; training stopped before using it."""


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


class StageTrainerMixin(TrainerInternals):
    """Mixed into TRL's trainers; see the module docstring. The methods that hook
    Trainer's private ones (``extra_columns``, ``train_sampler``, ``before_update``,
    ``before_checkpoint``, ``restore_weights``) are called from ``train.adapter``."""

    # Record indices travel beside the collated batch (see ``IndexedCollator``); GRPO has no
    # collator (its batches are lists of rows) and logs its prompts when it generates.
    collates_indices = True

    def __init__(
        self,
        *args: Any,
        part_learning_rates: dict[str, float],
        samples_log: Path | None = None,
        record_ids: list[str] | None = None,
        alignment: VisualAlignment | None = None,
        **kwargs: Any,
    ) -> None:
        check_versions()  # before the libraries' constructors: one line, not a traceback later
        self.part_learning_rates = part_learning_rates
        self.alignment = alignment
        self._alignment_terms: list[float] = []
        self.samples_log = samples_log
        self.record_ids = record_ids
        self.tokens_seen = 0
        self.records_seen = 0
        self._step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses
        self._step_indices: list[int] = []  # and the records they read (all processes)
        super().__init__(*args, **kwargs)
        if self.collates_indices:
            self.data_collator = IndexedCollator(self.data_collator)
        self.add_callback(ArgumentsAsJson())

    def extra_columns(self) -> list[str]:
        """Dataset columns the collator needs beyond the library's own: the record index."""
        return [SAMPLE_INDEX]

    def train_sampler(self, dataset):
        """The schedule is the dataset's order: read it in order (None: the library's)."""
        return SequentialSampler(dataset)

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
        tokens = inputs.pop(SEQUENCE_TOKENS, None)  # a packed batch has no attention mask
        if indices is not None and self.model.training:
            self._record(indices, inputs["attention_mask"].sum() if tokens is None else tokens)
        aligning = self.alignment is not None and self.model.training
        if aligning:
            self.alignment.clear()
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss = result[0] if return_outputs else result
        if aligning:
            loss = self._with_alignment(loss, num_items_in_batch)
        if self.model.training:
            self._step_losses.append(loss.detach().reshape(1))
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

    def _record(self, indices: torch.Tensor, tokens: torch.Tensor) -> None:
        """Log a micro-batch's records and count its real (not padding) tokens."""
        gathered = self.accelerator.gather(indices.to(self.accelerator.device)).tolist()
        tokens = self.accelerator.gather(tokens.reshape(1)).sum().item()
        self.tokens_seen += int(tokens)
        self._log_consumed([gathered])

    def _log_consumed(self, batches: list[list[int]]) -> None:
        """Count and log record indices (all processes, rank order), one line per batch."""
        for gathered in batches:
            self.records_seen += len(gathered)
            self._step_indices += gathered
        if self.samples_log is None or not self.is_world_process_zero():
            return
        step = self.state.global_step + 1
        append_jsonl(self.samples_log, [{"step": step, "ids": self._ids(b)} for b in batches])

    def _ids(self, indices: list[int]) -> list:
        return [self.record_ids[i] for i in indices] if self.record_ids else indices

    def before_update(self, grad_norm) -> None:
        """Once per optimizer step, after the gradients are reduced and clipped and before
        the optimizer uses them: the last moment an update can be refused."""
        local = torch.cat(self._step_losses) if self._step_losses else torch.zeros(1)
        # Every process must decide alike (each then saves its RNG state and raises), so
        # the decision reads every process's losses; the norm is already global.
        losses = self.accelerator.gather(local.float().to(self.accelerator.device))
        indices, self._step_indices, self._step_losses = self._step_indices, [], []
        norm = float(grad_norm) if grad_norm is not None else 0.0
        problems = []
        if not torch.isfinite(losses).all():
            problems.append(f"loss {losses[~torch.isfinite(losses)][0].item()}")
        if not math.isfinite(norm):
            problems.append(f"gradient norm {norm}")
        if problems:
            self._stop(" and ".join(problems), indices)

    def _stop(self, what: str, indices: list[int]) -> None:
        """Keep the state before this step as a checkpoint and raise ``NonFiniteError``."""
        step = self.state.global_step + 1
        saved = checkpoint_folder(Path(self.args.output_dir), self.state.global_step)
        if not checkpoint_complete(saved):
            save_checkpoint_now(self)
            if self.args.should_save:
                keep_arguments_as_json(saved, self.args)
        ids = self._ids(indices)
        shown = ", ".join(str(i) for i in ids[:SHOWN_IDS])
        more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
        raise NonFiniteError(
            f"non-finite {what} at step {step} (records {shown}{more}; all in samples.jsonl "
            f"step {step}); training stopped before the update, the state after step "
            f"{self.state.global_step} is in {saved}"
        )

    def before_checkpoint(self, folder: Path) -> None:
        """Main process, before Trainer writes ``folder``: the running loss sum, so that a
        resumed run reports the mean loss of the whole run. Written first: Trainer writes
        trainer_state.json last, so a complete checkpoint always has it."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {"step": self.state.global_step, "loss_sum": loss_sum(self)}
        write_json_atomic(folder / LOSS_FILE, state)

    def restore_weights(self, checkpoint: str, model=None) -> bool:
        """Load a checkpoint's weights for resume; False leaves it to Trainer (DeepSpeed,
        FSDP).

        transformers 5's Trainer resumes with load_state_dict(strict=False) on the raw
        file, but save_pretrained wrote Llava's keys in their legacy layout: no key
        matches, nothing loads, and training silently restarts from the initial weights
        (transformers#43701). Load the checkpoint the way from_pretrained does and insist
        on every key.
        """
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False
        target = self.model if model is None else model
        parameter = next(target.parameters())
        saved = type(target).from_pretrained(
            checkpoint, dtype=parameter.dtype, use_safetensors=True
        )
        state = saved.state_dict()
        if hasattr(target, ALIGN_HEAD):  # VIRAL's head: not a Llava key, saved as it is
            state.update(_prefixed_weights(Path(checkpoint), f"{ALIGN_HEAD}."))
        target.load_state_dict(state, strict=True)
        return True

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
    """TRL's ``SFTTrainer`` for the align and full stages and the ``sft`` objective;
    ``levers`` switch on ``train.speed``'s exact speed-ups (``train/speed.py``)."""

    def __init__(self, *args: Any, levers: Levers | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.levers = speed_up_instructions(self, levers) if levers else Levers()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.levers.packed and self.model.training:
            # TRL counts a padding-free batch's tokens as its width (one packed row); the
            # stage's count is its rows' real tokens, what TRL counts in a padded batch.
            count_trained_tokens(self, self.tokens_seen)
        return result


class StageDPOTrainer(StageTrainerMixin, DPOTrainer):
    """TRL's ``DPOTrainer`` for the preference objectives (dpo, ipo, mpo); ``prefix_sharing``
    and ``reference_cache`` switch on ``train.prefix``'s exact speed-ups."""

    def __init__(
        self, *args: Any, prefix_sharing: bool = False, reference_cache: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        speed_up_preferences(self, prefix_sharing=prefix_sharing, reference_cache=reference_cache)


class StageGRPOTrainer(GRPOInternals, StageTrainerMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer`` for ``post.objective: grpo``, on the same schedule as the other
    objectives: the training set is the schedule (one row per prompt, in order) and TRL's
    ``RepeatSampler`` reads it unshuffled, each prompt ``num_generations`` times, one
    generation batch of ``train.batch_size`` prompts per optimizer step (``stage_trainer``
    sizes TRL's batches so). What it adds to the mixin, through the hooks
    ``train.adapter.GRPOInternals`` calls:

    - the prompts of each generation batch go to ``samples.jsonl`` as the other objectives'
      micro-batches do (``accumulation`` lines of ``batch_size / accumulation`` ids), so the
      file is the SFT arm's line for line;
    - the generation budget: completions, generated tokens and seconds in TRL's
      generation (``generation_summary``);
    - with ``prefix_sharing``, the loss and KL forwards run each prompt's image and tokens
      once for all its replies (``train.prefix``);
    - the mean total reward and correctness per question ``category``, pooled over every
      completion since the last log, and the number of completions, as
      ``by_category/<category>/<reward|correct|completions>`` (``metrics.jsonl`` rows with
      a ``category`` qualifier).
    """

    collates_indices = False

    def __init__(
        self, *args: Any, accumulation: int = 1, prefix_sharing: bool = False, **kwargs: Any
    ) -> None:
        self.accumulation = accumulation
        self.completions_generated = 0
        self.generated_tokens = 0
        self.generation_s = 0.0
        self._by_category: dict[str, list[float]] = {}  # category: [reward sum, correct sum, n]
        super().__init__(*args, **kwargs)
        # A prompt's num_generations replies share its image and prompt: the case prefix
        # sharing is written for (policy and KL reference; generation keeps the stock path).
        # Completions are new every step, so there is no reference cache to keep.
        speed_up_preferences(self, prefix_sharing=prefix_sharing, reference_cache=False)

    def train_sampler(self, dataset):
        """None: TRL's own sampler; ``GRPOConfig(shuffle_dataset=False)`` keeps the order."""
        return None

    def before_generation_batch(self, inputs: list[dict]) -> None:
        """Log the prompts of a generation batch. Each prompt arrives num_generations times
        in a row; every process holds an equal, contiguous share of the step's prompts, so
        rank order is schedule order."""
        if not self.model.training:
            return
        local = [row[SAMPLE_INDEX] for row in inputs[:: self.num_generations]]
        device = self.accelerator.device
        gathered = self.accelerator.gather(torch.tensor(local, device=device)).tolist()
        size = len(gathered) // self.accumulation
        self._log_consumed([gathered[i : i + size] for i in range(0, len(gathered), size)])

    def after_generation_batch(self, output: dict) -> None:
        """Count the prompt and reply tokens of a generation batch."""
        if self.model.training:
            local = output["prompt_mask"].sum() + output["completion_mask"].sum()
            self.tokens_seen += int(self.accelerator.gather(local.reshape(1)).sum().item())

    def after_generate(self, completion_ids: list, seconds: float) -> None:
        """Count the completions and tokens TRL generated, and the time it took."""
        if not self.model.training:
            return
        local = torch.tensor([len(completion_ids), sum(len(ids) for ids in completion_ids)])
        gathered = self.accelerator.gather(local.to(self.accelerator.device))
        count, tokens = gathered.view(-1, 2).sum(0).tolist()
        self.completions_generated += int(count)
        self.generated_tokens += int(tokens)
        self.generation_s += seconds

    def after_rewards(self, inputs: list[dict], rewards: torch.Tensor) -> None:
        """Pool each completion's total reward and correctness by question category."""
        if not self.model.training:
            return
        categories = gather_object([row.get("category") or "none" for row in inputs])
        weights = self.reward_weights.to(rewards.device)
        totals = (rewards * weights).nansum(dim=1).tolist()  # TRL's summed reward
        correct = rewards[:, 0].tolist()  # reward_functions puts correctness first
        for category, total, right in zip(categories, totals, correct, strict=True):
            sums = self._by_category.setdefault(category, [0.0, 0.0, 0])
            sums[0] += total
            sums[1] += right
            sums[2] += 1

    def generation_summary(self) -> dict:
        """Prompts, completions and generated tokens of this invocation, and the
        generation throughput (generated tokens per second spent in ``_generate``)."""
        return {
            "prompts_seen": self.records_seen,
            "completions_generated": self.completions_generated,
            "generated_tokens": self.generated_tokens,
            "generation_s": self.generation_s,
            "generated_tokens_per_s": self.generated_tokens / self.generation_s
            if self.generation_s
            else 0.0,
        }

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.model.training and self._by_category:
            for category, (reward, right, n) in sorted(self._by_category.items()):
                logs[f"{BY_CATEGORY}/{category}/reward"] = reward / n
                logs[f"{BY_CATEGORY}/{category}/correct"] = right / n
                logs[f"{BY_CATEGORY}/{category}/completions"] = n
            self._by_category.clear()
        super().log(logs, *args, **kwargs)


def metric_row(key: str) -> dict:
    """A logged key as the metric contract's fields: ``by_category/<category>/<metric>``
    becomes ``{"metric": metric, "category": category}``."""
    if key.startswith(f"{BY_CATEGORY}/"):
        category, metric = key.removeprefix(f"{BY_CATEGORY}/").rsplit("/", 1)
        return {"metric": metric, "category": category}
    return {"metric": key.removeprefix("eval_")}


class MetricsFileCallback(TrainerCallback):
    """Every logged number as one ``metrics.jsonl`` row in the project's metrics contract."""

    def __init__(self, path: Path, run: str, stage: str, seed: int) -> None:
        self.path = path
        self.keys = {"run": run, "stage": stage, "seed": seed}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        rows = []
        for key, value in logs.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            split = "eval" if key.startswith("eval_") else "train"
            row = {**self.keys, "step": state.global_step, "split": split}
            rows.append({**row, **metric_row(key), "value": float(value)})
        append_jsonl(self.path, rows)


class StepProgressCallback(TrainerCallback):
    """Optimizer steps into a :class:`~pivotlab.console.Progress`, for a live line. A
    resumed run counts from its checkpoint's step, so the rate is of this run's steps."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.start(state.max_steps, "steps", done=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.done = state.global_step


def speed_up_preferences(trainer, *, prefix_sharing: bool, reference_cache: bool) -> None:
    """Apply the switches to a stage's ``DPOTrainer`` (after its construction).

    Prefix sharing is installed on the reference model and on the policy, except on a
    policy VIRAL watches: its hooks read one LM layer's hidden states of the full
    sequences from the objective's forward, which the shared forward computes in two
    pieces, so that policy keeps the stock forward (logged).
    """
    if prefix_sharing:
        for name, model in (("reference", trainer.ref_model), ("policy", trainer.model)):
            if model is None:
                continue
            if name == "policy" and getattr(trainer, "alignment", None) is not None:
                logger.warning("prefix sharing off for the policy: VIRAL reads its hidden states")
                continue
            reason = install_prefix_sharing(trainer.accelerator.unwrap_model(model))
            if reason is not None:
                logger.warning("prefix sharing off for the %s: %s", name, reason)
    if reference_cache and trainer.ref_model is not None:
        use_reference_cache(trainer)
