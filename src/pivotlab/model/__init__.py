"""MLLM assembly on Hugging Face classes: build, save, load, parts, export, transplant.

Every model is a ``transformers.LlavaForConditionalGeneration``; every folder pivotlab
writes loads with plain ``from_pretrained``. The names below are imported on first use, so
that checking a model folder (``model/folders.py``) imports no model library: a wrong
folder is refused before torch and transformers load.
"""

from pivotlab.lazy import lazy_exports

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
        "relative_change",
        "set_trainable",
        "trainable_parts",
    ),
    "presets": ("LM_PRESETS", "VISION_PRESETS"),
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
