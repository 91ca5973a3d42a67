"""The vision families pivotlab knows, by ``config.model_type`` (never by a substring of a
path): whether a CLS token precedes the patch tokens and where the block list lives.
Registering a new family touches only ``VISION_FAMILIES``. No model library is imported
here, so a model folder can be checked before one is (``model/folders.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pivotlab.errors import PivotlabError


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


def vision_family(config: Any) -> VisionFamily:
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
