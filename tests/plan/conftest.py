"""Shared helpers: MLLMs built from configs with transformers (random weights, no
downloads), the way ``pivotlab.model.assembly`` builds them."""

from __future__ import annotations

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from pivotlab.plan.architectures import Architecture


def llava(arch: Architecture, attention: str = "sdpa") -> LlavaForConditionalGeneration:
    """The Llava model ``arch`` describes, as assemble() configures it."""
    config = LlavaConfig(
        vision_config=arch.vision.to_dict(),
        text_config=arch.text.to_dict(),
        image_token_id=arch.text.vocab_size - 1,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=arch.feature_layer,
        vision_feature_select_strategy=arch.select_strategy,
        image_seq_length=arch.image_tokens,
        tie_word_embeddings=arch.text.tie_word_embeddings,
    )
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = attention
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config)
