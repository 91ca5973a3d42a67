"""A training run's folder: its config, resume from the last complete checkpoint, logs cut
back to it, the run-long mean loss, checkpoints without pickles, and the disk a run needs.

    RUN/config.yaml           the stage config the folder belongs to (another is refused)
    RUN/checkpoint-N/         Trainer's checkpoints; complete when trainer_state.json says N
    RUN/metrics.jsonl, samples.jsonl   cut back to the checkpoint a run resumes from
    RUN/final/, summary.json  a complete run
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from pivotlab.configtree import ConfigError, build_dataclass
from pivotlab.console import notice
from pivotlab.io import (
    MiB,
    complete_lines,
    remove_temporaries,
    write_text_atomic,
)
from pivotlab.train.adapter import (
    checkpoint_folder,
    checkpoint_step,
    pickled_arguments,
    recorded_step,
)
from pivotlab.train.config import StageConfig

LOSS_FILE = "pivotlab_loss.json"  # in each checkpoint: the sum of step losses so far
ARGS_FILE = "training_args.json"  # in each checkpoint, instead of Trainer's pickle
SPACE_MARGIN = 256 * MiB  # logs, TensorBoard, processor files, records


def checkpoint_complete(folder: Path) -> bool:
    """True when ``folder`` is a checkpoint Trainer finished writing.

    Trainer writes its state file last (after the weights, the optimizer, the scheduler and
    the RNG state), in place: a folder whose state file is missing, cut short, or for
    another step was being written when the run died.
    """
    step = checkpoint_step(folder)
    return step is not None and recorded_step(folder) == step


def checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``out`` (none if it does not exist), oldest first."""
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint Trainer finished writing, or None."""
    complete = [p for p in checkpoints(out) if checkpoint_complete(p)]
    return complete[-1] if complete else None


def loss_so_far(checkpoint: str | None) -> tuple[int, float] | None:
    """(step, sum of step losses) kept in ``checkpoint``; (0, 0.0) without one; None for a
    checkpoint written without it. Read before training: rotation may delete it."""
    if checkpoint is None:
        return 0, 0.0
    path = Path(checkpoint) / LOSS_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["step"], saved["loss_sum"]


def run_mean_loss(
    training_loss: float, global_step: int, so_far: tuple[int, float] | None
) -> float:
    """The mean step loss of the whole run. Trainer's ``training_loss`` averages only the
    steps of this ``train()`` call; a resumed run adds what its checkpoint kept (without
    that record, the resumed steps' mean is all there is)."""
    if so_far is None or global_step == 0:
        return training_loss
    step, total = so_far
    return (training_loss * (global_step - step) + total) / global_step


def keep_arguments_as_json(folder: Path, args) -> None:
    """Replace Trainer's pickled arguments in a checkpoint by their JSON.

    Trainer saves them with torch.save (only ``weights_only=False`` reads them back, and
    nothing does): a run folder then holds no pickle of code.
    """
    pickled_arguments(folder).unlink(missing_ok=True)
    write_text_atomic(folder / ARGS_FILE, args.to_json_string())


class ArgumentsAsJson(TrainerCallback):
    """After each checkpoint: its training arguments as JSON, not as a pickle."""

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = checkpoint_folder(Path(args.output_dir), state.global_step)
            if folder.is_dir():
                keep_arguments_as_json(folder, args)


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} there, {b!r} now"
    return ""


def _as_current(saved: Any) -> Any:
    """A saved config read back through the config classes, so that keys this version added
    (with their defaults) do not make a run from before them look like another config."""
    try:
        return build_dataclass(StageConfig, saved).to_dict()
    except (ConfigError, TypeError):
        return saved


def prepare_folder(cfg: StageConfig, out: Path, overwrite: bool) -> bool:
    """Create or reuse the run folder; True when the run there is already complete."""
    saved = out / "config.yaml"
    remove_temporaries(out)
    if out.exists() and any(out.iterdir()):
        if not saved.is_file():
            raise ConfigError(f"{out} is not empty and holds no run config.yaml; refusing it")
        previous = _as_current(yaml.safe_load(saved.read_text()))
        if previous != cfg.to_dict():
            if not overwrite:
                difference = _first_difference(previous, cfg.to_dict())
                raise ConfigError(
                    f"{out} holds a run with another config ({difference}); "
                    "choose another --out or pass --overwrite"
                )
            shutil.rmtree(out)
        elif is_complete(out):
            return True
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, cfg.to_yaml())
    return False


def is_complete(out: Path) -> bool:
    return (out / "summary.json").is_file() and (out / "final").is_dir()


def _truncate_after(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from, and a last line a
    kill cut short."""
    if path.is_file():
        kept = [line for line in complete_lines(path) if json.loads(line)["step"] <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def resume_point(out: Path) -> str | None:
    """Main process: the checkpoint to resume from, after removing checkpoints a kill left
    half-written and the log lines written after it."""
    for folder in checkpoints(out):
        if not checkpoint_complete(folder):
            shutil.rmtree(folder)
            notice(f"{folder}: incomplete (the run died writing it), removed")
    checkpoint = last_complete_checkpoint(out)
    if checkpoint is None:
        for log in ("samples.jsonl", "metrics.jsonl"):
            (out / log).unlink(missing_ok=True)
        return None
    step = checkpoint_step(checkpoint)
    for log in ("samples.jsonl", "metrics.jsonl"):
        _truncate_after(out / log, step)
    notice(f"resuming from {checkpoint} (step {step})")
    return str(checkpoint)


def space_needed(cfg: StageConfig, model, steps: int, out: Path) -> tuple[int, str]:
    """Bytes the rest of the run may write, and how that was estimated.

    A checkpoint holds the weights and Adam's two fp32 moments per trainable parameter;
    the run keeps ``save_total_limit`` of them (else every one), one more exists while the
    next is written and before the oldest is rotated out (or when a non-finite step saves
    one), and ``final/`` holds the weights again. Checkpoints already on disk count as kept.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    saves = steps // cfg.train.save_steps if cfg.train.save_steps else 0
    kept = min(saves, cfg.train.save_total_limit or saves)
    new = max(0, kept - len(checkpoints(out))) + 1
    need = weights + new * (weights + moments) + SPACE_MARGIN
    how = (
        f"{new} checkpoint(s) of {weights / MiB:.1f} MiB weights + {moments / MiB:.1f} MiB "
        f"optimizer state, final/, {SPACE_MARGIN // MiB} MiB margin"
    )
    return need, how
