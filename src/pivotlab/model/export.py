"""Detach the vision encoder of an MLLM, and transplant an encoder into a fresh MLLM.

    pivotlab model export-encoder --model runs/dpo/model --out runs/dpo/encoder [--with-projector]
    pivotlab model transplant --encoder runs/dpo/encoder --lm tiny-qwen2 --out runs/pivot/model

The exported encoder is a plain HF vision model folder (``AutoModel.from_pretrained`` loads
it, no pivotlab import) whose ``hidden_states[-1]`` is exactly the tensor the MLLM feeds its
projector: when the MLLM reads block L-1 of L (``vision_feature_layer=-2``), the blocks
after it are cut off, as PIVOT's own extraction does. ``last_hidden_state`` of some
families (SigLIP, CLIP, DINOv2) additionally applies a final layer norm the MLLM never
used, so analyses read ``hidden_states[-1]``; ``pivotlab_encoder.json`` says so.

The folder is written by ``export_from_model`` and read by ``read_export`` (what it holds)
and ``exported_projector`` (the projector ``--with-projector`` kept), here only.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from pivotlab.io import write_json_atomic
from pivotlab.model.assembly import AssemblyError, assemble, load, save
from pivotlab.model.families import vision_family

ENCODER_FILE = "pivotlab_encoder.json"
PROJECTOR_FILE = "projector.safetensors"


@dataclass(frozen=True)
class EncoderExport:
    """What an exported encoder folder holds and how to read its features."""

    source: str
    feature_layer_in_mllm: int
    kept_blocks: int
    original_blocks: int
    features: str  # how to get the MLLM's features from the exported model
    drop_cls: bool  # the MLLM dropped the first (CLS) token
    projector: str | None  # file with the projector's weights, when exported


_DEPTH_DERIVED = frozenset({"stage_names", "out_features", "out_indices"})


def _layer_list(tower: PreTrainedModel) -> tuple[nn.Module, str]:
    """The module holding the tower's block list, and the list's attribute name."""
    path = vision_family(tower.config).layers_path.split(".")
    owner = tower
    for name in path[:-1]:
        owner = getattr(owner, name)
    return owner, path[-1]


def truncated_tower(tower: PreTrainedModel, feature_layer: int) -> PreTrainedModel:
    """A copy of ``tower`` whose last block output is hidden state ``feature_layer``."""
    depth = tower.config.num_hidden_layers
    keep = depth + 1 + feature_layer if feature_layer < 0 else feature_layer
    if not 0 <= keep <= depth:
        raise AssemblyError(f"feature layer {feature_layer} is outside a {depth}-block tower")
    exported = copy.deepcopy(tower)
    owner, name = _layer_list(exported)
    setattr(owner, name, nn.ModuleList(list(getattr(owner, name))[:keep]))
    # Rebuilt rather than edited: backbone configs (DINOv2) derive stage names from depth.
    fields = {k: v for k, v in tower.config.to_dict().items() if k not in _DEPTH_DERIVED}
    exported.config = type(tower.config).from_dict({**fields, "num_hidden_layers": keep})
    return exported


def export_encoder(
    model_dir: Path | str, out: Path | str, with_projector: bool = False
) -> EncoderExport:
    """Write the MLLM's vision tower (cut at its feature layer) and image processor to ``out``."""
    model, processor = load(model_dir)
    return export_from_model(model, processor.image_processor, out, str(model_dir), with_projector)


def export_from_model(
    model: LlavaForConditionalGeneration,
    image_processor,
    out: Path | str,
    source: str,
    with_projector: bool = False,
) -> EncoderExport:
    """``export_encoder`` for a model already in memory."""
    out = Path(out)
    feature_layer = model.config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise AssemblyError(
            f"{source}: exporting a multi-layer feature ({feature_layer}) is not supported"
        )
    tower = model.model.vision_tower
    exported = truncated_tower(tower, feature_layer)
    exported.save_pretrained(out)
    image_processor.save_pretrained(out)
    projector_file = _save_projector(model, out) if with_projector else None
    info = EncoderExport(
        source=source,
        feature_layer_in_mllm=feature_layer,
        kept_blocks=exported.config.num_hidden_layers,
        original_blocks=tower.config.num_hidden_layers,
        features="hidden_states[-1] (output_hidden_states=True)",
        drop_cls=model.config.vision_feature_select_strategy == "default",
        projector=projector_file,
    )
    write_json_atomic(out / ENCODER_FILE, asdict(info))
    return info


def _save_projector(model: LlavaForConditionalGeneration, out: Path) -> str:
    """Write the MLLM's projector weights, with the settings that rebuild it in the file's
    metadata; returns the file's name."""
    projector = model.model.multi_modal_projector
    weights = {k: v.detach().contiguous() for k, v in projector.state_dict().items()}
    settings = {
        "activation": model.config.projector_hidden_act,
        "bias": json.dumps(model.config.multimodal_projector_bias),
        "lm_width": str(model.config.text_config.hidden_size),
    }
    save_file(weights, out / PROJECTOR_FILE, metadata=settings)
    return PROJECTOR_FILE


def read_export(folder: Path | str) -> EncoderExport | None:
    """What an encoder folder pivotlab exported holds, or None for a folder without
    ``pivotlab_encoder.json`` (a plain vision model); ``AssemblyError`` for one that is not
    this version's."""
    path = Path(folder) / ENCODER_FILE
    if not path.is_file():
        return None
    try:
        return EncoderExport(**json.loads(path.read_text()))
    except (TypeError, ValueError) as error:
        message = f"{path}: not an encoder description of this pivotlab ({error})"
        raise AssemblyError(message) from None


def exported_projector(
    folder: Path | str, info: EncoderExport | None, vision_config: PretrainedConfig
) -> nn.Module | None:
    """The MLLM's projector that ``--with-projector`` exported beside the encoder, rebuilt
    around the encoder's config; None when the folder holds none."""
    if info is None or info.projector is None:
        return None
    path = Path(folder) / info.projector
    with safe_open(path, framework="pt") as handle:
        settings = handle.metadata() or {}
    weights = load_file(path)
    # Exports written before the metadata held the width and the bias (2026-12-07) are
    # read from their weights, which say the same: LlavaMultiModalProjector's own names.
    lm_width = settings.get("lm_width", weights["linear_2.weight"].shape[0])
    bias = json.loads(settings["bias"]) if "bias" in settings else "linear_1.bias" in weights
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config={"hidden_size": int(lm_width)},
        projector_hidden_act=settings.get("activation", "gelu"),
        multimodal_projector_bias=bias,
        vision_feature_layer=-1,  # the exported tower ends at the MLLM's feature layer
    )
    projector = LlavaMultiModalProjector(config)
    projector.load_state_dict(weights, strict=True)
    return projector


def transplant(
    encoder_dir: Path | str, lm: str | Path, out: Path | str, seed: int = 0
) -> LlavaForConditionalGeneration:
    """A fresh MLLM around an exported encoder: new projector, the given LM; saved to ``out``.

    The encoder was cut at its feature layer, so the new MLLM reads its last hidden state.
    """
    info = read_export(encoder_dir)
    if info is None:
        raise AssemblyError(
            f"{encoder_dir} has no {ENCODER_FILE}: not an encoder exported by pivotlab"
        )
    model, processor = assemble(
        vision=encoder_dir,
        lm=lm,
        feature_layer=-1,
        select_strategy="default" if info.drop_cls else "full",
        seed=seed,
    )
    save(model, processor, out)
    return model
