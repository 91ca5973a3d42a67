"""MLLM assembly on Hugging Face classes: build, save, load, parts, export, transplant.

Every model is a ``transformers.LlavaForConditionalGeneration``; every folder pivotlab
writes loads with plain ``from_pretrained``.
"""

from pivotlab.model.assemble import AssemblyError, BuildInfo, assemble, load, save
from pivotlab.model.export import EncoderExport, export_encoder, transplant, truncated_tower
from pivotlab.model.parts import (
    PARTS,
    PartRow,
    PartsError,
    check_trainable,
    format_parts_table,
    parameter_groups,
    parts_table,
    set_trainable,
    trainable_parts,
)
from pivotlab.model.presets import LM_PRESETS, VISION_PRESETS, UnsupportedModelError

__all__ = [
    "LM_PRESETS",
    "PARTS",
    "VISION_PRESETS",
    "AssemblyError",
    "BuildInfo",
    "EncoderExport",
    "PartRow",
    "PartsError",
    "UnsupportedModelError",
    "assemble",
    "check_trainable",
    "export_encoder",
    "format_parts_table",
    "load",
    "parameter_groups",
    "parts_table",
    "save",
    "set_trainable",
    "trainable_parts",
    "transplant",
    "truncated_tower",
]
