"""MLLM assembly on Hugging Face classes: build, save, load, parts, export, transplant.

Every model is a ``transformers.LlavaForConditionalGeneration``; every folder pivotlab
writes loads with plain ``from_pretrained``. The names below are imported on first use, so
that checking a model folder (``model/folders.py``) imports no model library: a wrong
folder is refused before torch and transformers load.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "assembly": ("AssemblyError", "BuildInfo", "assemble", "load", "save"),
    "export": ("EncoderExport", "export_encoder", "transplant", "truncated_tower"),
    "families": ("UnsupportedModelError",),
    "parts": (
        "PARTS",
        "PartRow",
        "PartsError",
        "check_trainable",
        "format_parts_table",
        "parameter_groups",
        "parts_table",
        "set_trainable",
        "trainable_parts",
    ),
    "presets": ("LM_PRESETS", "VISION_PRESETS"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"pivotlab.model.{_MODULE_OF[name]}"), name)
