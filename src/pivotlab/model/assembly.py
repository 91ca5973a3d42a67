"""Assemble a LLaVA-style MLLM from a vision tower and a language model, on HF classes.

    model, processor = assemble(vision="tiny-siglip", lm="tiny-qwen2", image_size=32)
    model, processor = assemble(vision="google/siglip2-so400m-patch16-384", lm="Qwen/Qwen2.5-1.5B")

``vision`` and ``lm`` are each a named preset (``presets.py``: a config, random init), a
zoo part (``zoo:enc-s``, pretrained on the world and built on first use), a local
``save_pretrained`` folder, or a hub id; folders and ids take the same path
(``from_pretrained``). The result is a plain ``LlavaForConditionalGeneration`` with a
2-layer GELU projector whose width is the LM's, and a ``LlavaProcessor`` whose image token
expands to exactly the number of visual tokens the tower produces (derived from the vision
config, checked against ``LlavaConfig.image_seq_length``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
)

from pivotlab.errors import PivotlabError
from pivotlab.io import write_json_atomic
from pivotlab.model.families import VisionFamily, vision_family
from pivotlab.model.folders import Kind, check_saved_mllm, check_source, mismatched_weights
from pivotlab.model.presets import LM_PRESETS, VISION_PRESETS
from pivotlab.zoo.build import part_path
from pivotlab.zoo.tokenizer import CHAT_TEMPLATE, IMAGE_TOKEN, world_tokenizer
from pivotlab.zoo.train import PROJECTOR_FEATURE_LAYER

BUILD_FILE = "pivotlab_build.json"


class AssemblyError(PivotlabError):
    """An MLLM that cannot be assembled as asked; the message says which input is wrong."""


@dataclass(frozen=True)
class BuildInfo:
    """How a model folder was assembled; saved beside it as ``pivotlab_build.json``."""

    vision: str
    lm: str
    feature_layer: int
    select_strategy: str
    image_size: int
    visual_tokens: int
    seed: int


@dataclass
class VisionTower:
    """A vision tower's config, weights (None for a preset: random init inside the MLLM),
    image processor and family."""

    config: PretrainedConfig
    model: PreTrainedModel | None
    image_processor: object
    family: VisionFamily


ZOO_PREFIX = "zoo:"


def zoo_part(source: str) -> tuple[str, str] | None:
    """``zoo:enc-s`` -> ("default", "enc-s"), ``zoo:tiny/enc-s`` -> ("tiny", "enc-s"); None
    for a source that is not a zoo part."""
    if not source.startswith(ZOO_PREFIX):
        return None
    zoo, _, part = source[len(ZOO_PREFIX) :].rpartition("/")
    return zoo or "default", part


def resolve_zoo(source: str) -> str:
    """``zoo:enc-s`` (default zoo) or ``zoo:tiny/enc-s`` -> the part's cached folder, built on
    first use; any other source is returned unchanged."""
    named = zoo_part(source)
    return source if named is None else str(part_path(named[1], named[0]))


def _from_pretrained(auto_class, source: str, trust_remote_code: bool, **kwargs):
    """``auto_class.from_pretrained`` with a one-line error naming the source."""
    try:
        with mismatched_weights(source):
            return auto_class.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AssemblyError(
            f"{source!r} is not a preset, and loading it as a folder or hub id failed: {reason}"
        ) from None
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise AssemblyError(
            f"{source!r} ships its own Python code; pass --trust-remote-code to run it"
        ) from None


def load_vision_tower(
    source: str, trust_remote_code: bool = False, what: str = "vision"
) -> VisionTower:
    """A pretrained vision tower and its image processor from a folder or hub id (the
    vision half of a dual-encoder checkpoint). Its kind is checked before anything loads
    (a refusal names ``what``); every failure is one line naming the source. The one
    loader of vision folders: assembly, VIRAL's teacher and the analyses' encoders."""
    check_source(source, Kind.VISION, VISION_PRESETS, what)
    config = _from_pretrained(AutoConfig, source, trust_remote_code)
    # Dual-encoder checkpoints (SigLIP, CLIP) hold the tower under `vision_config`.
    config = getattr(config, "vision_config", None) or config
    family = vision_family(config)
    model = _from_pretrained(AutoModel, source, trust_remote_code, config=config)
    processor = _from_pretrained(AutoImageProcessor, source, trust_remote_code)
    return VisionTower(config, model, processor, family)


def _vision(source: str, image_size: int | None, trust_remote_code: bool) -> VisionTower:
    if source in VISION_PRESETS:
        preset = VISION_PRESETS[source]
        size = image_size or 64
        config = preset.config(size)
        return VisionTower(config, None, preset.image_processor(size), vision_family(config))
    tower = load_vision_tower(source, trust_remote_code)
    if image_size is not None and image_size != tower.config.image_size:
        raise AssemblyError(
            f"{source} was trained at {tower.config.image_size} px; image_size={image_size} "
            "would need position-embedding interpolation, which Llava does not do"
        )
    return tower


def _tokenizer(lm: str, chat_template: str | None, trust_remote_code: bool):
    if lm in LM_PRESETS:
        tokenizer = copy.deepcopy(world_tokenizer())  # the cached one is shared: never mutate it
    else:
        tokenizer = _from_pretrained(AutoTokenizer, lm, trust_remote_code)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation
    # Hub LM templates (Qwen2.5's among them) expect string content; the image-aware
    # template is the default unless one is given.
    tokenizer.chat_template = chat_template or CHAT_TEMPLATE
    return tokenizer


def _language_model(
    lm: str, tokenizer, trust_remote_code: bool
) -> PreTrainedModel | PretrainedConfig:
    if lm in LM_PRESETS:
        return LM_PRESETS[lm].config()
    model = _from_pretrained(AutoModelForCausalLM, lm, trust_remote_code)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def visual_token_count(config: PretrainedConfig, family: VisionFamily, strategy: str) -> int:
    """Visual tokens one image becomes: one per patch, plus the CLS token of families that
    have one unless the "default" select strategy drops it."""
    patches = (config.image_size // config.patch_size) ** 2
    return patches + (1 if family.has_cls and strategy == "full" else 0)


def assemble(
    vision: str | Path,
    lm: str | Path,
    *,
    feature_layer: int = PROJECTOR_FEATURE_LAYER,
    image_size: int | None = None,
    select_strategy: str | None = None,
    chat_template: str | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A ``LlavaForConditionalGeneration`` and its processor (see the module docstring).

    ``feature_layer`` picks the tower's hidden state fed to the projector (-2: the
    penultimate block, as LLaVA and PIVOT do); ``select_strategy`` defaults to dropping
    the CLS token of towers that have one. Pretrained weights are copied in with strict
    key checks; the projector (and preset parts) are initialised from ``seed``.
    """
    vision, lm = resolve_zoo(str(vision)), resolve_zoo(str(lm))
    if lm not in LM_PRESETS:
        check_source(lm, Kind.LANGUAGE, LM_PRESETS, "lm")
    tower = _vision(vision, image_size, trust_remote_code)
    tokenizer = _tokenizer(lm, chat_template, trust_remote_code)
    language = _language_model(lm, tokenizer, trust_remote_code)
    text_config = language if isinstance(language, PretrainedConfig) else language.config
    strategy = select_strategy or tower.family.select_strategy
    if strategy not in ("default", "full"):
        raise AssemblyError(f"select_strategy must be 'default' or 'full', got {strategy!r}")
    tokens = visual_token_count(tower.config, tower.family, strategy)
    if tower.config.image_size < tower.config.patch_size:
        raise AssemblyError(
            f"image_size {tower.config.image_size} is below the tower's patch size "
            f"{tower.config.patch_size}: images would give no visual tokens"
        )
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
        image_seq_length=tokens,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    _check_feature_layer(tower.config, feature_layer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if tower.model is not None:
        model.model.vision_tower.load_state_dict(tower.model.state_dict(), strict=True)
    if not isinstance(language, PretrainedConfig):
        model.model.language_model.load_state_dict(language.model.state_dict(), strict=True)
        model.lm_head.load_state_dict(language.lm_head.state_dict(), strict=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=tower.image_processor,
        tokenizer=tokenizer,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=tokenizer.chat_template,
        num_additional_image_tokens=1 if tower.family.has_cls else 0,
    )
    model.pivotlab_build = BuildInfo(  # type: ignore[attr-defined]
        vision, lm, feature_layer, strategy, tower.config.image_size, tokens, seed
    )
    return model, processor


def _check_feature_layer(config: PretrainedConfig, feature_layer: int) -> None:
    depth = config.num_hidden_layers
    if not -(depth + 1) <= feature_layer <= depth:
        raise AssemblyError(
            f"feature_layer {feature_layer} is outside a {depth}-block tower "
            f"(hidden states run from {-(depth + 1)} to {depth})"
        )


def save(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    out: Path | str,
    state_dict: dict | None = None,
) -> Path:
    """``save_pretrained`` the model (safetensors) and processor, plus how it was built;
    ``state_dict`` when the weights were gathered elsewhere (sharded training)."""
    out = Path(out)
    model.save_pretrained(out, state_dict=state_dict)
    processor.save_pretrained(out)
    build = getattr(model, "pivotlab_build", None)
    if build is not None:
        write_json_atomic(out / BUILD_FILE, asdict(build))
    return out


def load(path: Path | str) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A saved MLLM folder, with plain transformers classes."""
    path = Path(path)
    check_saved_mllm(path)
    with mismatched_weights(path):
        model = LlavaForConditionalGeneration.from_pretrained(path, use_safetensors=True)
    processor = LlavaProcessor.from_pretrained(path)
    check_geometry(model, source=str(path))
    return model, processor


def check_geometry(model: LlavaForConditionalGeneration, source: str = "model") -> None:
    """Raise if the visual-token count the config promises is not what the tower makes.

    ``LlavaConfig.image_seq_length`` defaults to 576; a config that forgot to set it would
    give the processor the wrong number of placeholders.
    """
    vision = model.config.vision_config
    strategy = model.config.vision_feature_select_strategy
    expected = visual_token_count(vision, vision_family(vision), strategy)
    if model.config.image_seq_length != expected:
        raise AssemblyError(
            f"{source}: image_seq_length is {model.config.image_seq_length}, but a "
            f"{vision.image_size}-px image in {vision.patch_size}-px patches gives {expected}"
        )
