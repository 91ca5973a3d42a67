"""The one place pivotlab reaches below the public API of transformers, TRL and accelerate.

Everything else in ``pivotlab.train`` uses public extension points: ``compute_loss``,
``create_optimizer`` and ``log`` overrides, callbacks, collators, the model's own forward and
the output objects it returns. What has no public counterpart lives here, and each piece
says which library version it mirrors:

- ``TrainerInternals``: the five ``Trainer`` methods the stage trainers hook (the columns a
  batch keeps, the sampler, the moment before an optimizer step, a checkpoint, resume),
  each turned into a call of a pivotlab hook with a public name;
- ``checkpoint_folder``, ``checkpoint_step``, ``recorded_step``, ``pickled_arguments``: how
  Trainer names and writes a checkpoint folder (the run folder, ``train/rundir.py``);
- ``GRPOInternals``: the three ``GRPOTrainer`` methods where prompts, generations and
  rewards can be seen;
- ``loss_sum``, ``save_checkpoint_now``, ``prepare_batch``: Trainer state and steps the
  stage trainers and the reference cache read or run;
- ``serve_reference_from_batch``, ``release_prepared_model``: switching a built
  ``DPOTrainer`` to reference log-probs carried in the batch;
- ``module_digest``: TRL's digest of a module's weights (the reference cache's key);
- ``attention_implementation``, ``cache_keyword``, ``image_features_argument``: the
  config field and the Llava backbone's keywords prefix sharing computes with;
- ``wrap_forward``, ``FUSED_HEAD_ARGUMENTS``, ``fused_head_output``: wrapping a forward the
  way TRL's fused LM head does, the keywords its call adds and the object it returns;
- ``count_trained_tokens``: the token count ``SFTTrainer`` logs as ``num_tokens``.

``TESTED`` is the range of each library this module was checked against (``.ci/run`` runs the
training tests on the pinned versions and on the newest the ranges allow); ``pyproject.toml``
admits the same ranges (``tests/train/test_adapter.py`` keeps them equal), and ``run_stage``
refuses, in one line, to train with versions outside them (``check_versions``). To widen a
range: widen it here and in ``pyproject.toml``, run ``.ci/run``, fix what its newest-versions
check finds, and record the versions in ``docs/train.md``.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import time
import types
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pivotlab.errors import PivotlabError

# Ranges the adapter was tested with (docs/train.md, "Library versions"), and pyproject.toml's.
TESTED = {
    "transformers": ">=5.23,<5.26",
    "trl": ">=1.16,<1.17",
    "accelerate": ">=1.15,<1.17",
}


class UnsupportedVersionError(PivotlabError):
    """An installed library is outside the versions the adapter was tested with."""


def installed_versions() -> dict[str, str]:
    """The installed version of each library in ``TESTED`` ("missing" when not installed)."""
    found = {}
    for name in TESTED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def untested(versions: dict[str, str]) -> list[str]:
    """``name version`` of each library whose version is outside its tested range."""
    outside = []
    for name, spec in TESTED.items():
        found = versions.get(name, "missing")
        if found == "missing" or not SpecifierSet(spec).contains(Version(found), prereleases=True):
            outside.append(f"{name} {found}")
    return outside


def check_versions(versions: dict[str, str] | None = None) -> None:
    """Raise ``UnsupportedVersionError`` (one line) unless every library is in its range."""
    versions = installed_versions() if versions is None else versions
    outside = untested(versions)
    if outside:
        ranges = ", ".join(f"{name} {spec}" for name, spec in TESTED.items())
        raise UnsupportedVersionError(
            f"{', '.join(outside)} not among the versions pivotlab's training was tested with "
            f"({ranges}); install them with `pip install -c constraints.txt -e .` "
            "(docs/train.md, Library versions)"
        )


# --- transformers' Trainer -----------------------------------------------------------------


class TrainerInternals:
    """Trainer's private methods, each handing over to a hook of the stage trainer:
    ``extra_columns()``, ``train_sampler(dataset)``, ``before_update(grad_norm)``,
    ``before_checkpoint(folder)`` and ``restore_weights(checkpoint, model)``."""

    # transformers 5.23-5.25, Trainer._set_signature_columns_if_needed (TRL 1.16's trainers
    # override it with their own lists): fills ``_signature_columns``, the dataset columns
    # that ``remove_unused_columns`` keeps.
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        kept = [c for c in self.extra_columns() if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *kept]

    # transformers 5.23-5.25, Trainer._get_train_sampler(train_dataset): the training
    # dataloader's sampler (TRL 1.16's GRPOTrainer returns its RepeatSampler).
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = self.train_sampler(dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    # transformers 5.23-5.25, Trainer._inner_training_loop calls _get_grad_norm(model,
    # grad_norm) once per optimizer step, after the gradients are reduced and clipped and
    # before optimizer.step() (on_pre_optimizer_step comes after it but is not given the norm).
    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.before_update(grad_norm)
        return grad_norm

    # transformers 5.23-5.25, Trainer._save_checkpoint(model, trial) writes
    # ``<_get_output_dir(trial)>/checkpoint-<global_step>``, trainer_state.json last.
    def _save_checkpoint(self, model, trial) -> None:
        if self.args.should_save:
            run = Path(self._get_output_dir(trial=trial))
            self.before_checkpoint(checkpoint_folder(run, self.state.global_step))
        super()._save_checkpoint(model, trial)

    # transformers 5.23-5.25, Trainer._load_from_checkpoint(resume_from_checkpoint, model)
    # loads the weights of a checkpoint when train() resumes.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self.restore_weights(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)


def loss_sum(trainer) -> float:
    """The sum of step losses Trainer will divide by the steps for ``training_loss``.

    Mirrors transformers 5.23-5.25: ``_total_loss_scalar`` holds the logged
    (process-averaged) losses, ``_tr_loss`` this process's losses since the last log.
    """
    tail = trainer._tr_loss.item() if hasattr(trainer, "_tr_loss") else 0.0
    return getattr(trainer, "_total_loss_scalar", 0.0) + tail


def save_checkpoint_now(trainer) -> None:
    """Write ``checkpoint-<global_step>`` as Trainer does at a save step (transformers
    5.23-5.25, Trainer._save_checkpoint(model, trial=None))."""
    trainer._save_checkpoint(trainer.model, trial=None)


def prepare_batch(trainer, batch: dict) -> dict:
    """A collated batch on the trainer's device, cast as the trainer casts its own batches
    (transformers 5.23-5.25, Trainer._prepare_inputs)."""
    return trainer._prepare_inputs(batch)


# --- transformers' Trainer: its checkpoint folders ---------------------------------------

# transformers 5.23-5.25, Trainer._save_checkpoint: ``<output_dir>/checkpoint-<global_step>``
# (trainer_utils.PREFIX_CHECKPOINT_DIR); the weights, optimizer, scheduler and RNG state
# first, ``trainer_state.json`` (trainer.TRAINER_STATE_NAME) last, and the arguments
# pickled with torch.save as ``training_args.bin`` (trainer.TRAINING_ARGS_NAME).
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_folder(run: Path, step: int) -> Path:
    """The folder Trainer writes the checkpoint of ``step`` to in the run folder ``run``."""
    return run / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def checkpoint_step(folder: Path) -> int | None:
    """The step a checkpoint folder is named for, or None for a folder of another name."""
    match = CHECKPOINT_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def recorded_step(folder: Path) -> int | None:
    """The global step the checkpoint's trainer state records, or None when the state file
    is missing or cut short (Trainer writes it last: the checkpoint was not finished)."""
    try:
        return json.loads((folder / TRAINER_STATE_NAME).read_text()).get("global_step")
    except (OSError, ValueError):
        return None


def pickled_arguments(folder: Path) -> Path:
    """Where Trainer pickles its training arguments in a checkpoint folder."""
    return folder / TRAINING_ARGS_NAME


# --- TRL's GRPOTrainer ----------------------------------------------------------------------


class GRPOInternals:
    """GRPOTrainer's private methods, each handing over to a hook of the stage trainer:
    ``before_generation_batch(inputs)``, ``after_generation_batch(output)``,
    ``after_generate(completion_ids, seconds)`` and ``after_rewards(inputs, rewards)``."""

    # TRL 1.16, GRPOTrainer._generate_and_score_completions(inputs): one generation batch
    # (rows, each prompt num_generations times in a row) -> a dict with prompt_mask and
    # completion_mask.
    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        self.before_generation_batch(inputs)
        output = super()._generate_and_score_completions(inputs)
        self.after_generation_batch(output)
        return output

    # TRL 1.16, GRPOTrainer._generate(prompts) -> (prompt_ids, completion_ids, ...).
    def _generate(self, prompts: list):
        start = time.perf_counter()
        result = super()._generate(prompts)
        self.after_generate(result[1], time.perf_counter() - start)
        return result

    # TRL 1.16, GRPOTrainer._calculate_rewards(inputs, prompts, completions,
    # completion_ids_list) -> (completions, reward functions) rewards, NaN where a function
    # has no reward.
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.after_rewards(inputs, rewards)
        return rewards


# --- TRL's DPOTrainer and accelerate ---------------------------------------------------------


def serve_reference_from_batch(trainer) -> None:
    """Make a built ``DPOTrainer`` read the reference log-probs from each batch.

    Mirrors TRL 1.16: ``DPOTrainer._compute_loss`` reads ``ref_chosen_logps`` and
    ``ref_rejected_logps`` from the batch when ``precompute_ref_logps`` is set; the
    constructor refuses ``precompute_ref_log_probs`` for image datasets, hence after it.
    """
    trainer.precompute_ref_logps = True


def release_prepared_model(accelerator, model) -> None:
    """Forget a model ``accelerator.prepare`` registered, so it can be freed.

    Mirrors accelerate 1.15-1.16: ``Accelerator`` keeps every prepared model in ``_models``.
    """
    accelerator._models = [m for m in accelerator._models if m is not model]


# --- TRL's reference-model hash ------------------------------------------------------------


def module_digest(module: torch.nn.Module) -> str:
    """The hex digest of a module's weights that TRL keys precomputed reference log-probs by
    (TRL 1.16, ``trl.trainer.utils.hash_module``; not exported at the package's top)."""
    from trl.trainer.utils import hash_module

    return hash_module(module)


# --- transformers' configs and Llava --------------------------------------------------------


def attention_implementation(config: PretrainedConfig) -> str | None:
    """The attention implementation a (text) config's model runs, or None when none was set.

    Mirrors transformers 5.23-5.25: ``PreTrainedConfig._attn_implementation``, set by
    ``from_pretrained(attn_implementation=...)`` and ``set_attn_implementation``.
    """
    return config._attn_implementation


# transformers 5.23-5.25, LlavaModel.forward(mm_encoder_outputs=...): a dict of modality ->
# BaseModelOutputWithPooling whose ``pooler_output`` holds the encoded images, used instead
# of running the vision tower on ``pixel_values``.
IMAGE_FEATURES_KEYWORD = "mm_encoder_outputs"


def image_features_argument(features: list[torch.Tensor]) -> dict[str, Any]:
    """The keyword argument that hands a Llava backbone's forward its image features, already
    encoded (``get_image_features(...).pooler_output``, one tensor per image)."""
    encoded = {"image": BaseModelOutputWithPooling(pooler_output=features)} if features else None
    return {IMAGE_FEATURES_KEYWORD: encoded}


# --- transformers' Llava --------------------------------------------------------------------

# transformers 5.23 names the backbone's key/value cache argument ``past_key_values``;
# 5.24-5.25 name it ``cache`` (``past_key_values`` still accepted, with a warning, until 5.40).
CACHE_KEYWORDS = ("cache", "past_key_values")


def _forward_parameters(backbone: torch.nn.Module | type) -> Mapping[str, inspect.Parameter]:
    """The parameters of the stock forward of a backbone (a module or its class)."""
    cls = backbone if isinstance(backbone, type) else type(backbone)
    return inspect.signature(cls.forward).parameters


def cache_keyword(backbone: torch.nn.Module | type) -> str | None:
    """The keyword the backbone's stock forward takes a key/value cache by, or None."""
    parameters = _forward_parameters(backbone)
    return next((name for name in CACHE_KEYWORDS if name in parameters), None)


def takes_image_features(backbone: torch.nn.Module | type) -> bool:
    """Whether the backbone's stock forward takes image features already encoded."""
    return IMAGE_FEATURES_KEYWORD in _forward_parameters(backbone)


# --- TRL's fused LM head ----------------------------------------------------------------------

# TRL 1.16, add_fused_lm_head: the keywords its forward takes for itself, beside the model's
# (``model(..., labels=..., fused_lm_head=True)``), but for ``shift_labels``, which its
# trainers pass only under context or sequence parallelism.
FUSED_HEAD_ARGUMENTS = frozenset({"labels", "fused_lm_head", "num_items_in_batch"})


def wrap_forward(
    module: torch.nn.Module, wrapper: Callable[..., Any], keep_as: str
) -> Callable[..., Any]:
    """Make ``wrapper(module, *args, **kwargs)`` the module's forward, keeping the forward it
    replaces as the attribute ``keep_as``; returns the function installed.

    Mirrors TRL 1.16's ``add_fused_lm_head``, which wraps a model the same way: the forward
    is an instance attribute, found at each call, so the fused head's call of
    ``self.base_model(...)`` reaches a wrapper installed on the backbone, and a bound method,
    so ``copy.deepcopy`` rebinds it to the copy. It shows the class forward's signature:
    transformers 5.23-5.25's ``generate`` checks its keywords against ``model.forward``'s.
    """
    setattr(module, keep_as, module.forward)
    # A fresh function, because wraps() writes its attributes onto the function it is given.
    installed = functools.wraps(type(module).forward)(lambda self, *a, **k: wrapper(self, *a, **k))
    module.forward = types.MethodType(installed, module)
    return installed


def fused_head_output(**fields):
    """TRL's ``FusedCausalLMOutput`` (TRL 1.16, ``trl.trainer.utils``; not exported at the
    package's top): what a ``fused_lm_head=True`` call returns and TRL's losses read."""
    from trl.trainer.utils import FusedCausalLMOutput

    return FusedCausalLMOutput(**fields)


def count_trained_tokens(trainer, total: int) -> None:
    """Set the running count of training tokens an ``SFTTrainer`` logs as ``num_tokens``.

    Mirrors TRL 1.16: ``SFTTrainer.compute_loss`` adds each training batch's tokens (its
    attention mask's sum, or a padding-free batch's width) to ``_total_train_tokens`` and
    puts the total in ``_metrics[mode]["num_tokens"]``.
    """
    trainer._total_train_tokens = total
    trainer._metrics["train"]["num_tokens"] = [total]
