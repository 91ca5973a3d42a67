"""Which of the SFT objectives' exact speed-ups a stage uses (``train.speed``).

The SFT objectives (align, full, ``post.objective: sft``) run TRL's ``SFTTrainer``. Four
levers change how a step is computed, never what it computes (``docs/performance.md``):

- ``prepared``: each row's tokens, labels and pixels made once by TRL's collator and kept,
  rows ending at their last supervised label (``train/packing.py``);
- ``packed``: the rows of a batch packed into rows of ``PACK_TOKENS`` with position ids
  instead of padded (``train/packing.py``);
- ``supervised_head``: the LM head projects only the labelled positions
  (``train/lmhead.py``);
- ``patch_matmul``: the vision tower's patch convolution computed as one matrix product
  (``train/patches.py``).

``train.speed`` chooses them: ``fast`` uses every lever the stage allows, ``stock`` none
(TRL's own path), and ``auto`` (the default) is ``fast`` when the stage trains on the CPU,
where each lever was measured, and ``stock`` on a GPU, where TRL's head already projects
only the labelled positions and the levers are not measured here. VIRAL reads one image
per sequence, so a VIRAL stage is never packed. bf16 is not a lever here: it changes the
arithmetic, and ``train.precision`` stays the user's choice (``docs/performance.md``,
why: measured).

The preference objectives have their own switches (``post.prefix_sharing``,
``post.reference_cache``); GRPO shares prefixes too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from pivotlab.train.config import StageConfig
from pivotlab.train.lmhead import install_supervised_head
from pivotlab.train.packing import PreparedCollator, image_paths
from pivotlab.train.patches import install_patch_matmul

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Levers:
    """The speed-ups a stage uses, and why any other is off."""

    prepared: bool = False
    packed: bool = False
    supervised_head: bool = False
    patch_matmul: bool = False
    off: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)


def uses_sft(cfg: StageConfig) -> bool:
    """Whether the stage trains with TRL's ``SFTTrainer``."""
    return cfg.stage != "post" or cfg.post.objective == "sft"


def choose_levers(cfg: StageConfig, on_cpu: bool) -> Levers:
    """The levers ``train.speed`` asks for on this device (see the module docstring)."""
    if not uses_sft(cfg):
        return Levers(off=("the preference objectives use post.prefix_sharing instead",))
    fast = cfg.train.speed == "fast" or (cfg.train.speed == "auto" and on_cpu)
    if not fast:
        why = "train.speed is stock" if cfg.train.speed == "stock" else "auto on a GPU"
        return Levers(off=(why,))
    if cfg.viral.enabled:
        return Levers(True, False, True, True, ("packed: VIRAL reads one image per sequence",))
    return Levers(True, True, True, True)


def speed_up_instructions(trainer, levers: Levers) -> Levers:
    """Apply ``levers`` to a built stage ``SFTTrainer``; returns the levers in use (one the
    model or collator cannot take is off, with the reason, logged)."""
    off = list(levers.off)
    model = trainer.accelerator.unwrap_model(trainer.model)
    head = levers.supervised_head
    if head:
        reason = install_supervised_head(model)
        if reason is not None:
            logger.warning("LM head on every position: %s", reason)
            off.append(f"supervised_head: {reason}")
            head = False
    patches = levers.patch_matmul
    if patches:
        reason = install_patch_matmul(model)
        if reason is not None:
            off.append(f"patch_matmul: {reason}")
            patches = False
    if levers.prepared:
        indexed = trainer.data_collator  # the stage mixin's IndexedCollator around TRL's
        pad = trainer.processing_class.tokenizer.pad_token_id
        indexed.inner = PreparedCollator(indexed.inner, pad, pack=levers.packed)
        trainer.train_dataset = image_paths(trainer.train_dataset)
    return Levers(levers.prepared, levers.packed, head, patches, tuple(off))


def collator_fallback(trainer) -> str | None:
    """Why the prepared collator fell back to TRL's on every call, if it did."""
    inner = getattr(trainer.data_collator, "inner", None)
    return getattr(inner, "passthrough", None)
