"""VIRAL: pull the LM's visual tokens at one middle layer towards a frozen teacher's patches.

The hidden states at the visual-token positions of LM layer l go through a small trainable
MLP (the ``align_head`` part) and are compared, token by token, with a frozen vision model's
patch features: loss = mean over visual tokens of (1 - cos), averaged over the samples that
have their full grid of visual tokens; total = objective + weight * loss (VIRAL, arXiv
2509.07979; REPA's ``proj_loss`` shape). Written here because no library provides it.

How it attaches to any stage without touching TRL's losses: forward hooks on the policy
model record what the objective's own forward already computes (``input_ids`` and
``pixel_values`` from the call, the output of LM block l), and the trainer adds the
alignment term to whatever loss TRL returned. Nothing assumes a token count: positions come
from ``input_ids == image_token_id``, and the grid from the tower's config.

Guards the public code (github.com/cvlab-kaist/VIRAL) lacks:

- the teacher lives outside the Llava module, so no ``from_pretrained`` initialisation pass
  can redraw its weights, it is in no state dict, optimizer group or DDP bucket, runs under
  ``torch.no_grad`` in eval mode, and ``requires_grad`` is off on every parameter;
- the head is a registered submodule of the policy model (``model.align_head``), so it is a
  named part in the optimizer with its own rate, saved in every checkpoint, and removed
  before the final model is saved (inference needs no head and no teacher);
- the teacher sees pixels normalised with *its* processor's statistics: the MLLM's pixel
  values are un-normalised to [0, 1], resized to the teacher's input size, and normalised
  again; a teacher grid that differs from the MLLM's is resized bilinearly to it.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaForConditionalGeneration

from pivotlab.errors import PivotlabError
from pivotlab.model.assembly import load_vision_tower, resolve_zoo
from pivotlab.model.export import truncated_tower
from pivotlab.model.families import vision_family
from pivotlab.model.grid import resize_patch_grid
from pivotlab.model.parts import ALIGN_HEAD

SELF_TEACHER = "self"


class ViralError(PivotlabError):
    """A VIRAL setting that cannot work with the model or the run; one line."""


def resolve_layer(layer: float, depth: int) -> int:
    """The LM hidden-state index to align: an integer 1..depth is itself, a number in (0, 1)
    a fraction of depth (0.5: the middle, 16 of 32 as in the paper)."""
    if 0 < layer < 1:
        return max(1, round(layer * depth))
    if layer == int(layer) and 1 <= layer <= depth:
        return int(layer)
    raise ViralError(
        f"viral.layer {layer}: expected a fraction in (0, 1) or a layer index 1..{depth}"
    )


def alignment_head(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """VIRAL's (REPA's) projector: Linear-SiLU-Linear-SiLU-Linear."""
    return nn.Sequential(
        nn.Linear(width_in, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, width_out),
    )


def image_stats(image_processor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std an image processor normalises with."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return mean, std


@dataclass
class Teacher:
    """A frozen vision model and how to feed it the MLLM's pixels."""

    name: str
    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    size: int
    read_last_hidden: bool  # else hidden_states[-1] (a tower cut at the MLLM's feature layer)
    has_cls: bool
    cache: dict[str, torch.Tensor] | None = None

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def _pixels(self, pixel_values: torch.Tensor, mllm_mean, mllm_std) -> torch.Tensor:
        device = pixel_values.device
        unit = pixel_values.float() * mllm_std.to(device) + mllm_mean.to(device)  # to [0, 1]
        if unit.shape[-1] != self.size:
            unit = F.interpolate(unit, size=(self.size, self.size), mode="bilinear", antialias=True)
        return (unit - self.mean.to(unit.device)) / self.std.to(unit.device)

    @torch.no_grad()
    def _features(self, pixels: torch.Tensor, side: int) -> torch.Tensor:
        # The teacher lives outside the trained model, so accelerate never places it: follow
        # the MLLM's pixels to their device on first use.
        if next(self.model.parameters()).device != pixels.device:
            self.model.to(pixels.device)
        outputs = self.model(pixel_values=pixels, output_hidden_states=not self.read_last_hidden)
        tokens = outputs.last_hidden_state if self.read_last_hidden else outputs.hidden_states[-1]
        tokens = tokens[:, 1:] if self.has_cls else tokens
        return resize_patch_grid(tokens.float(), side)

    def features(self, pixel_values: torch.Tensor, mllm_mean, mllm_std, side: int) -> torch.Tensor:
        """(N, side*side, width) patch features of the MLLM's images, from the cache when the
        same image (same pixel bytes) was seen before."""
        if self.cache is None:
            return self._features(self._pixels(pixel_values, mllm_mean, mllm_std), side)
        keys = [_image_key(p) for p in pixel_values]
        missing = [i for i, key in enumerate(keys) if key not in self.cache and key not in keys[:i]]
        if missing:
            fresh = self._features(self._pixels(pixel_values[missing], mllm_mean, mllm_std), side)
            for index, tokens in zip(missing, fresh, strict=True):
                self.cache[keys[index]] = tokens
        return torch.stack([self.cache[key] for key in keys])


def _image_key(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.detach().float().cpu().numpy().tobytes()).hexdigest()


def _frozen(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def load_teacher(
    source: str,
    mllm: LlavaForConditionalGeneration,
    processor,
    cache: bool,
    trust_remote_code: bool = False,
):
    """The frozen teacher: a zoo part (``zoo:vfm``), an HF id or folder, or ``self`` (a
    frozen copy of the MLLM's own tower as it is now, read at its feature layer); an HF
    teacher runs code it ships only with ``trust_remote_code``."""
    store = {} if cache else None
    if source == SELF_TEACHER:
        tower = truncated_tower(mllm.model.vision_tower, mllm.config.vision_feature_layer)
        mean, std = image_stats(processor.image_processor)
        return Teacher(
            name=SELF_TEACHER,
            model=_frozen(copy.deepcopy(tower)),
            mean=mean,
            std=std,
            size=tower.config.image_size,
            read_last_hidden=False,
            has_cls=vision_family(tower.config).has_cls,
            cache=store,
        )
    tower = load_vision_tower(resolve_zoo(source), trust_remote_code, "viral.teacher")
    config, model, image_processor = tower.config, tower.model, tower.image_processor
    mean, std = image_stats(image_processor)
    return Teacher(
        name=source,
        model=_frozen(model),
        mean=mean,
        std=std,
        size=config.image_size,
        read_last_hidden=True,
        has_cls=vision_family(config).has_cls,
        cache=store,
    )


def alignment_loss(
    hidden: torch.Tensor,
    image_mask: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
) -> tuple[torch.Tensor, int]:
    """Mean over samples of the mean over their visual tokens of 1 - cos(head(h), target).

    ``hidden`` (B, T, D) LM hidden states, ``image_mask`` (B, T) visual-token positions,
    ``targets`` (B, P, d) teacher patches in raster order. A sample's last P visual tokens
    are its patches (a CLS token the projector kept comes first); a sample with fewer than P
    (cut by truncation, or text only) is left out. Returns the loss and the samples counted.
    """
    patches = targets.shape[1]
    losses = []
    for row, mask, target in zip(hidden, image_mask, targets, strict=True):
        tokens = row[mask]
        if len(tokens) < patches:
            continue
        predicted = head(tokens[-patches:])
        cosine = F.cosine_similarity(predicted.float(), target.to(predicted.device), dim=-1)
        losses.append((1 - cosine).mean())
    if not losses:
        return hidden.new_zeros(()), 0
    return torch.stack(losses).mean(), len(losses)


class VisualAlignment:
    """The hooks on a policy model and the alignment term of the step they watched."""

    def __init__(
        self,
        model: LlavaForConditionalGeneration,
        processor,
        teacher: Teacher,
        layer: int,
        weight: float,
    ) -> None:
        self.model = model
        self.teacher = teacher
        self.layer = layer
        self.weight = weight
        self.mean, self.std = image_stats(processor.image_processor)
        vision = model.config.vision_config
        self.side = vision.image_size // vision.patch_size
        self._captured: dict[str, torch.Tensor] = {}
        blocks = model.model.language_model.layers
        self._handles = [
            model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True),
            blocks[layer - 1].register_forward_hook(self._keep_hidden),
        ]

    def _keep_inputs(self, module, args, kwargs) -> None:
        self._captured["input_ids"] = kwargs.get("input_ids", args[0] if args else None)
        self._captured["pixel_values"] = kwargs.get("pixel_values")

    def _keep_hidden(self, module, args, output) -> None:
        self._captured["hidden"] = output[0] if isinstance(output, tuple) else output

    def clear(self) -> None:
        """Forget the last forward (call before the step's forward)."""
        self._captured.clear()

    def loss(self) -> tuple[torch.Tensor, int]:
        """The alignment term of the forward since ``clear``, and the samples it counted."""
        hidden = self._captured.get("hidden")
        input_ids = self._captured.get("input_ids")
        pixels = self._captured.get("pixel_values")
        if hidden is None or input_ids is None or pixels is None:
            raise ViralError("VIRAL saw no forward with input_ids and pixel_values this step")
        image_mask = input_ids == self.model.config.image_token_id
        if pixels.shape[0] != hidden.shape[0]:
            raise ViralError(
                f"{pixels.shape[0]} images for {hidden.shape[0]} sequences: VIRAL expects one "
                "image per sequence"
            )
        targets = self.teacher.features(pixels, self.mean, self.std, self.side)
        return alignment_loss(hidden, image_mask, targets, self.model.align_head)

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()


def attach_head(
    model: LlavaForConditionalGeneration, teacher: Teacher, hidden: int, seed: int
) -> None:
    """Register a fresh ``align_head`` on the model (a named part from then on)."""
    torch.manual_seed(seed)
    width = model.config.text_config.hidden_size
    model.add_module(ALIGN_HEAD, alignment_head(width, hidden, teacher.width))


def detach_head(model: LlavaForConditionalGeneration) -> nn.Module | None:
    """Remove the ``align_head`` from the model (before saving the final MLLM)."""
    head = getattr(model, ALIGN_HEAD, None)
    if head is not None:
        delattr(model, ALIGN_HEAD)
    return head
