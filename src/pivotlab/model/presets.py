"""Named tiny presets (a config, random init): the same transformers classes as the
paper-scale models, only smaller; a preset name can stand wherever an HF id or a local
folder can. The vision families are ``model/families.py``."""

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

from pivotlab.zoo.builders import causal_lm_config


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
