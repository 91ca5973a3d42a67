"""Model dimensions without weights: where ``pivotlab plan`` reads an architecture from.

A vision tower or LM is named the way a stage config names it, and resolved to a
transformers config with no weights and no download:

- a hub id in the bundled table below (published dimensions, each with its source);
- a local folder holding a ``config.json`` (an HF model, a pivotlab MLLM or encoder folder),
  or a hub id already in the local HF cache (``local_files_only``);
- a zoo part (``zoo:enc-s``, ``zoo:tiny/lm-s``), from the zoo's recipe, built or not;
- a pivotlab preset (``tiny-siglip``, ``small-qwen2``).

The table's numbers are the ``config.json`` fields of each checkpoint as published on the
Hugging Face Hub (checked against mirrored copies of those files); fields a checkpoint leaves
at the transformers default are not repeated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, Dinov2Config, PretrainedConfig, Qwen2Config

from pivotlab.errors import PivotlabError
from pivotlab.model.assembly import ZOO_PREFIX, visual_token_count
from pivotlab.model.families import vision_family
from pivotlab.model.presets import LM_PRESETS, VISION_PRESETS
from pivotlab.zoo.builders import causal_lm_config
from pivotlab.zoo.recipes import ZOOS, EncoderSpec, LMSpec, TeacherSpec, ZooConfig


class PlanError(PivotlabError):
    """A plan that cannot be made (unknown architecture, missing record count); one line."""


@dataclass(frozen=True)
class Published:
    """A published architecture: its transformers ``model_type`` and config fields, the
    tokenizer's length where assembling adds ``<image>`` past the vocabulary, and where the
    numbers come from."""

    model_type: str
    fields: dict[str, Any]
    source: str
    tokenizer_size: int | None = None

    def config(self) -> PretrainedConfig:
        """The transformers config these dimensions describe."""
        return AutoConfig.for_model(self.model_type, **self.fields)


def _hub(model_id: str) -> str:
    return f"https://huggingface.co/{model_id}/blob/main/config.json"


_SO400M = {  # SigLIP So400m: width 1152, MLP 4304, 27 blocks, 16 heads
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
}
_QWEN25 = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0}
QWEN25_TOKENIZER = 151_665  # 151,643 BPE tokens + 22 special tokens (tokenizer_config.json)

PUBLISHED: dict[str, Published] = {
    "google/siglip2-so400m-patch16-384": Published(
        "siglip_vision_model",
        {**_SO400M, "patch_size": 16, "image_size": 384},
        _hub("google/siglip2-so400m-patch16-384")
        + " (vision_config; 24x24 = 576 tokens x 1152 as PIVOT's siglip_encoder.py reads it)",
    ),
    "google/siglip2-base-patch16-384": Published(
        "siglip_vision_model",
        {"patch_size": 16, "image_size": 384},  # B/16: the SiglipVisionConfig defaults
        _hub("google/siglip2-base-patch16-384") + " (vision_config: width 768, 12 blocks)",
    ),
    "google/siglip2-base-patch16-224": Published(
        "siglip_vision_model",
        {"patch_size": 16, "image_size": 224},
        _hub("google/siglip2-base-patch16-224") + " (vision_config: width 768, 12 blocks)",
    ),
    "openai/clip-vit-large-patch14-336": Published(
        "clip_vision_model",
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 336,
            "hidden_act": "quick_gelu",
        },
        _hub("openai/clip-vit-large-patch14-336") + " (vision_config; LLaVA-1.5's tower)",
    ),
    "facebook/dinov2-base": Published(
        "dinov2",
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "mlp_ratio": 4,
            "patch_size": 14,
            "image_size": 518,
        },
        _hub("facebook/dinov2-base") + " (VIRAL's default teacher, github.com/cvlab-kaist/VIRAL)",
    ),
    "Qwen/Qwen2.5-0.5B-Instruct": Published(
        "qwen2",
        {
            **_QWEN25,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151_936,
            "tie_word_embeddings": True,
        },
        _hub("Qwen/Qwen2.5-0.5B-Instruct"),
        QWEN25_TOKENIZER,
    ),
    "Qwen/Qwen2.5-1.5B-Instruct": Published(
        "qwen2",
        {
            **_QWEN25,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": 151_936,
            "tie_word_embeddings": True,
        },
        _hub("Qwen/Qwen2.5-1.5B-Instruct"),
        QWEN25_TOKENIZER,
    ),
    "Qwen/Qwen2.5-3B-Instruct": Published(
        "qwen2",
        {
            **_QWEN25,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "vocab_size": 151_936,
            "tie_word_embeddings": True,
        },
        _hub("Qwen/Qwen2.5-3B-Instruct"),
        QWEN25_TOKENIZER,
    ),
    "Qwen/Qwen2.5-7B-Instruct": Published(
        "qwen2",
        {
            **_QWEN25,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152_064,
            "tie_word_embeddings": False,
        },
        _hub("Qwen/Qwen2.5-7B-Instruct"),
        QWEN25_TOKENIZER,
    ),
    "lmsys/vicuna-7b-v1.5": Published(
        "llama",
        {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32_000,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        _hub("lmsys/vicuna-7b-v1.5") + " (Llama-2-7B shape; VIRAL's LM, its finetune_lora.sh)",
        32_000,
    ),
}


@dataclass(frozen=True)
class Architecture:
    """What an MLLM stage runs, as configs: the tower, the LM (vocabulary as assembled), how
    the tower feeds the projector, and where each number came from."""

    vision: PretrainedConfig
    text: PretrainedConfig
    feature_layer: int = -2
    select_strategy: str = "full"
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def image_tokens(self) -> int:
        """Visual tokens one image becomes in the LM's sequence (``assemble``'s rule)."""
        family = vision_family(self.vision)
        return visual_token_count(self.vision, family, self.select_strategy)


def _zoo_part(source: str) -> tuple[ZooConfig, str]:
    zoo_name, _, part = source[len(ZOO_PREFIX) :].rpartition("/")
    zoo = ZOOS.get(zoo_name or "default")
    if zoo is None or part not in zoo.parts:
        raise PlanError(f"{source}: no such zoo part (zoos: {', '.join(ZOOS)})")
    return zoo, part


def zoo_config(source: str) -> PretrainedConfig:
    """The config a zoo part is built with (``zoo/builders.py``), from its recipe: no build."""
    zoo, part = _zoo_part(source)
    spec = zoo.parts[part]
    if isinstance(spec, LMSpec):
        return causal_lm_config(Qwen2Config, spec.width, spec.depth, spec.heads, spec.kv_heads)
    common = {
        "hidden_size": spec.width,
        "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.heads,
        "image_size": zoo.image_size,
        "patch_size": zoo.patch_size,
    }
    if isinstance(spec, TeacherSpec):
        return Dinov2Config(mlp_ratio=4, **common)
    assert isinstance(spec, EncoderSpec)
    return AutoConfig.for_model("siglip_vision_model", intermediate_size=4 * spec.width, **common)


def _local_config(source: str) -> PretrainedConfig | None:
    """A config from a local folder or the local HF cache; None when there is none."""
    folder = Path(source).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise PlanError(f"{source}: a folder without config.json")
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError):
        return None


def _unknown(source: str, kind: str) -> PlanError:
    known = ", ".join(k for k, v in PUBLISHED.items() if _kind(v.model_type) == kind)
    return PlanError(
        f"{source}: not in the bundled table ({known}), not a zoo part or preset, and no "
        "local config.json; point at a folder with the model's config.json"
    )


def _kind(model_type: str) -> str:
    return "lm" if model_type in ("qwen2", "llama") else "vision"


def resolve(source: str, kind: str, image_size: int | None = None) -> tuple[PretrainedConfig, str]:
    """The config of a vision tower (``kind="vision"``) or LM (``"lm"``) named as a stage
    config names it, and where it came from; a dual-encoder or MLLM config gives its tower or
    its LM."""
    if source in PUBLISHED:
        published = PUBLISHED[source]
        config = published.config()
        if kind == "lm" and published.tokenizer_size is not None:
            # assemble() adds <image> to the tokenizer and grows the embeddings if needed
            config.vocab_size = max(config.vocab_size, published.tokenizer_size + 1)
        return config, published.source
    if kind == "vision" and source in VISION_PRESETS:
        return VISION_PRESETS[source].config(image_size or 64), f"pivotlab preset {source}"
    if kind == "lm" and source in LM_PRESETS:
        return LM_PRESETS[source].config(), f"pivotlab preset {source}"
    if source.startswith(ZOO_PREFIX):
        return zoo_config(source), f"zoo recipe {source} (zoo/recipes.py)"
    config = _local_config(source)
    if config is None:
        raise _unknown(source, kind)
    part = "vision_config" if kind == "vision" else "text_config"
    return getattr(config, part, None) or config, f"{source}/config.json"


def _from_mllm_folder(folder: Path) -> Architecture:
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if not hasattr(config, "vision_config"):
        raise PlanError(f"{folder}/config.json is not an MLLM (no vision_config)")
    return Architecture(
        vision=config.vision_config,
        text=config.text_config,
        feature_layer=config.vision_feature_layer,
        select_strategy=config.vision_feature_select_strategy,
        sources={"model": f"{folder}/config.json"},
    )


def _started_run(init: str) -> dict | None:
    """The model section of the run whose ``final/`` ``init`` names, when that run has
    started (``RUN/config.yaml``) but not finished."""
    import yaml

    run_config = Path(init).expanduser().parent / "config.yaml"
    if not run_config.is_file():
        return None
    return (yaml.safe_load(run_config.read_text()) or {}).get("model") or {}


def architecture(
    model_section: Any, vision: str | None = None, lm: str | None = None
) -> Architecture:
    """The architecture of a stage's model: ``vision``/``lm`` when given (a model not built
    yet), else the config's ``model.vision``/``model.lm``, else the ``model.init`` folder,
    else the model section of the run that will write it (followed back through runs that
    have started)."""
    section = {
        "init": model_section.init,
        "vision": vision or model_section.vision,
        "lm": lm or model_section.lm,
        "feature_layer": model_section.feature_layer,
        "select_strategy": model_section.select_strategy,
        "image_size": model_section.image_size,
    }
    seen: set[str] = set()
    while not (section["vision"] and section["lm"]) and section["init"] not in (None, *seen):
        init = section["init"]
        seen.add(init)
        if (Path(init).expanduser() / "config.json").is_file():
            return _from_mllm_folder(Path(init).expanduser())
        earlier = _started_run(init)
        if earlier is None:
            break
        section = {**section, "init": None, **earlier}
    if not (section["vision"] and section["lm"]):
        raise PlanError(
            f"model.init {model_section.init} holds no model yet; pass --vision and --lm "
            "(table names, zoo parts, presets or folders with config.json) to plan it"
        )
    vision_config, vision_source = resolve(section["vision"], "vision", section["image_size"])
    text_config, text_source = resolve(section["lm"], "lm")
    return Architecture(
        vision=vision_config,
        text=text_config,
        feature_layer=section["feature_layer"],
        select_strategy=section["select_strategy"] or vision_family(vision_config).select_strategy,
        sources={"vision": vision_source, "lm": text_source},
    )


def teacher_config(source: str, mllm_vision: PretrainedConfig) -> tuple[PretrainedConfig, str]:
    """VIRAL's teacher: ``self`` is the MLLM's own tower, anything else a vision source."""
    if source == "self":
        return mllm_vision, "the MLLM's own tower (viral.teacher=self)"
    return resolve(source, "vision")
