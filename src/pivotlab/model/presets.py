"""Named tiny presets (a config, random init) and the vision families pivotlab knows.

Presets are the same transformers classes as the paper-scale models, only smaller: a
preset name can stand wherever an HF id or a local folder can. Registering a new vision
family touches only ``VISION_FAMILIES``; a family is chosen by ``config.model_type``, never
by a substring of a path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.image_processing_utils import BaseImageProcessor

from pivotlab.errors import PivotlabError
from pivotlab.zoo.build import causal_lm_config


class UnsupportedModelError(PivotlabError):
    """A model family pivotlab has not registered."""


@dataclass(frozen=True)
class VisionFamily:
    """What pivotlab needs to know about a vision tower family."""

    model_type: str
    has_cls: bool  # a CLS token precedes the patch tokens
    layers_path: str  # attribute path of the block list inside the HF vision model

    @property
    def select_strategy(self) -> str:
        """Llava's ``vision_feature_select_strategy``: drop the CLS token when there is one."""
        return "default" if self.has_cls else "full"


VISION_FAMILIES: dict[str, VisionFamily] = {
    f.model_type: f
    for f in (
        VisionFamily("siglip_vision_model", has_cls=False, layers_path="encoder.layers"),
        VisionFamily("clip_vision_model", has_cls=True, layers_path="encoder.layers"),
        VisionFamily("dinov2", has_cls=True, layers_path="encoder.layer"),
    )
}


# Vision model types known not to work inside transformers' Llava, and why.
UNSUPPORTED_VISION: dict[str, str] = {
    "siglip2_vision_model": (
        "NaFlex SigLIP2 needs patch masks and spatial shapes, which Llava does not pass; "
        "use a FixRes SigLIP2 checkpoint (model_type 'siglip', such as "
        "google/siglip2-so400m-patch16-384)"
    ),
}


def vision_family(config: PretrainedConfig) -> VisionFamily:
    """The family of a vision config; a clear error for one pivotlab has not registered.

    SigLIP2 FixRes checkpoints are SigLIP-architecture (``model_type`` ``siglip``) and take
    the SigLIP entry.
    """
    if config.model_type in UNSUPPORTED_VISION:
        raise UnsupportedModelError(f"{config.model_type}: {UNSUPPORTED_VISION[config.model_type]}")
    family = VISION_FAMILIES.get(config.model_type)
    if family is None:
        known = ", ".join(sorted(VISION_FAMILIES))
        raise UnsupportedModelError(
            f"vision model type {config.model_type!r} is not supported; known: {known}"
        )
    return family


def _image_processor(model_type: str, image_size: int) -> BaseImageProcessor:
    # The PIL-backed processors: torchvision (the fast backend) is not a pivotlab dependency.
    from transformers import BitImageProcessorPil, CLIPImageProcessorPil, SiglipImageProcessorPil

    if model_type == "siglip_vision_model":
        return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    if model_type == "clip_vision_model":
        return CLIPImageProcessorPil(size=size, crop_size=crop)
    return BitImageProcessorPil(
        size=size,
        crop_size=crop,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )


@dataclass(frozen=True)
class VisionPreset:
    """A named vision tower: width, depth, heads, patch size."""

    model_type: str
    width: int
    depth: int
    heads: int
    patch_size: int = 8

    def config(self, image_size: int) -> PretrainedConfig:
        common = {
            "hidden_size": self.width,
            "num_hidden_layers": self.depth,
            "num_attention_heads": self.heads,
            "image_size": image_size,
            "patch_size": self.patch_size,
        }
        if self.model_type == "siglip_vision_model":
            return SiglipVisionConfig(
                intermediate_size=4 * self.width, vision_use_head=False, **common
            )
        if self.model_type == "clip_vision_model":
            return CLIPVisionConfig(intermediate_size=4 * self.width, **common)
        return Dinov2Config(mlp_ratio=4, **common)

    def image_processor(self, image_size: int) -> BaseImageProcessor:
        return _image_processor(self.model_type, image_size)


@dataclass(frozen=True)
class LMPreset:
    """A named causal LM: family, width, depth, heads."""

    config_class: Callable[..., PretrainedConfig]
    width: int
    depth: int
    heads: int
    kv_heads: int

    def config(self) -> PretrainedConfig:
        """The config over the world tokenizer (what preset LMs are trained with)."""
        return causal_lm_config(
            self.config_class, self.width, self.depth, self.heads, self.kv_heads
        )


# "tiny-*" is the tests' size (2 blocks); "small-*" is the DESIGN's ~10M-parameter CPU model.
VISION_PRESETS: dict[str, VisionPreset] = {
    "tiny-siglip": VisionPreset("siglip_vision_model", width=64, depth=2, heads=2),
    "tiny-clip": VisionPreset("clip_vision_model", width=64, depth=2, heads=2),
    "tiny-dinov2": VisionPreset("dinov2", width=64, depth=2, heads=2),
    "small-siglip": VisionPreset("siglip_vision_model", width=192, depth=6, heads=3),
}
LM_PRESETS: dict[str, LMPreset] = {
    "tiny-qwen2": LMPreset(Qwen2Config, width=64, depth=2, heads=2, kv_heads=1),
    "tiny-llama": LMPreset(LlamaConfig, width=64, depth=2, heads=2, kv_heads=1),
    "small-qwen2": LMPreset(Qwen2Config, width=256, depth=6, heads=4, kv_heads=2),
}
