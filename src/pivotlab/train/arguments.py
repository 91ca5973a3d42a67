"""The TRL arguments of a stage, one function for training and held-out evaluation alike.

``trl_arguments`` maps the config onto ``TrainingArguments`` / TRL fields and applies the
config's ``trainer:`` section last, so a user's DeepSpeed, worker or precision settings reach
every trainer a stage builds. The processes are set up once per run by ``process_state``
before any arguments are built: the arguments ask ``TrainingArguments`` to use that state.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import PartialState

from pivotlab.train.config import ConfigError, StageConfig


def on_cpu(cfg: StageConfig) -> bool:
    """Train on the CPU when asked (``trainer.use_cpu``) or when there is no GPU; several
    CPU processes then talk over gloo."""
    return bool(cfg.trainer.get("use_cpu", not torch.cuda.is_available()))


def process_state(cfg: StageConfig) -> PartialState:
    """The run's processes (on the CPU when ``on_cpu``), set up before any TRL arguments."""
    return PartialState(cpu=on_cpu(cfg))


def accumulation(cfg: StageConfig, processes: int) -> int:
    """Gradient accumulation that keeps the global batch for any number of processes."""
    per_step = cfg.train.per_device_batch_size * processes
    if cfg.train.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} is not a multiple of "
            f"train.per_device_batch_size x processes = {per_step}"
        )
    return cfg.train.batch_size // per_step


def trl_arguments(cfg: StageConfig, out: Path, steps: int, accum: int) -> dict:
    """Keyword arguments for TRL's SFTConfig, DPOConfig or GRPOConfig (``trainer:`` last).

    Call ``process_state`` first: the arguments use the processes it set up.
    """
    rates = cfg.learning_rates()
    args = {
        "output_dir": str(out),
        "per_device_train_batch_size": cfg.train.per_device_batch_size,
        "per_device_eval_batch_size": cfg.train.per_device_batch_size,
        "gradient_accumulation_steps": accum,
        "max_steps": steps,
        "learning_rate": max(rates.values()),
        "lr_scheduler_type": cfg.train.scheduler,
        "warmup_steps": cfg.train.warmup_ratio,
        "weight_decay": cfg.train.weight_decay,
        "max_grad_norm": cfg.train.max_grad_norm,
        "max_length": cfg.train.max_length,
        "logging_steps": cfg.train.logging_steps,
        "save_strategy": "steps" if cfg.train.save_steps else "no",
        "save_steps": cfg.train.save_steps or 500,
        "save_total_limit": cfg.train.save_total_limit,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": cfg.train.precision == "bf16",
        "fp16": cfg.train.precision == "fp16",
        "activation_checkpointing": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "dataloader_drop_last": True,
        # With feature layer -2 the tower's last block never reaches the loss; DDP must
        # not wait for its gradients. VIRAL's head gets its gradient outside the model's
        # forward, which the unused-parameter search takes for a second use; a static graph
        # (the same parameters every step, recorded on the first) handles both.
        "ddp_find_unused_parameters": "vision" in cfg.parts and not cfg.viral.enabled,
        "ddp_static_graph": cfg.viral.enabled,
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": on_cpu(cfg),
        # process_state sets up the processes once (CPU or not); TrainingArguments would
        # otherwise reset that state for every config it builds.
        "accelerator_config": {"use_configured_state": True},
    }
    args.update(cfg.trainer)
    return args
