"""Parameter counts in closed form equal the parameters of the instantiated models: tiny
presets through pivotlab's own assembly, the default zoo's and mid-size configs built with
transformers, and the bundled table's paper-scale configs on the meta device."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, Qwen2Config, SiglipVisionConfig

from pivotlab.model import assemble, parts_table
from pivotlab.plan.architectures import PUBLISHED, Architecture, resolve, zoo_config
from pivotlab.plan.shapes import lm_shape, projector_parameters, vision_shape
from pivotlab.train.config import ModelSection
from tests.plan.conftest import llava

# Published parameter counts of the LMs (model cards: 0.49B, 1.54B, 3.09B, 7.61B; Llama-2-7B
# 6.74B), which the table's dimensions must reproduce exactly.
PUBLISHED_TOTALS = {
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen/Qwen2.5-3B-Instruct": 3_085_938_688,
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,
    "lmsys/vicuna-7b-v1.5": 6_738_415_616,
}


def _planned(arch: Architecture) -> dict[str, int]:
    return {
        "vision": vision_shape(arch.vision).parameters,
        "projector": projector_parameters(arch.vision.hidden_size, arch.text.hidden_size),
        "lm": lm_shape(arch.text).parameters,
    }


def _measured(model) -> dict[str, int]:
    return {row.part: row.parameters for row in parts_table(model)}


@pytest.mark.parametrize(
    ("vision", "lm"),
    [("tiny-siglip", "tiny-qwen2"), ("tiny-clip", "tiny-llama"), ("tiny-dinov2", "tiny-qwen2")],
)
def test_counts_equal_pivotlab_assembled_presets(vision: str, lm: str) -> None:
    from pivotlab.plan.architectures import architecture

    model, _ = assemble(vision, lm, image_size=32)
    arch = architecture(ModelSection(vision=vision, lm=lm, image_size=32))
    assert _planned(arch) == _measured(model)
    assert arch.image_tokens == model.config.image_seq_length


def test_counts_equal_default_zoo_and_mid_size_models() -> None:
    mid_vision = SiglipVisionConfig(
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=6,
        image_size=224,
        patch_size=16,
    )
    mid_lm = Qwen2Config(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=5000,
        tie_word_embeddings=False,
    )
    cases = [
        Architecture(zoo_config("zoo:enc-m"), zoo_config("zoo:lm-m")),
        Architecture(zoo_config("zoo:vfm"), zoo_config("zoo:lm-s"), select_strategy="default"),
        Architecture(mid_vision, mid_lm),
    ]
    for arch in cases:
        assert _planned(arch) == _measured(llava(arch))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_bundled_table_counts_equal_the_models_on_the_meta_device(name: str) -> None:
    kind = "lm" if PUBLISHED[name].model_type in ("qwen2", "llama") else "vision"
    config = PUBLISHED[name].config()
    with torch.device("meta"):
        model = (AutoModelForCausalLM if kind == "lm" else AutoModel).from_config(config)
    counted = sum(p.numel() for p in model.parameters())
    shape = lm_shape(config) if kind == "lm" else vision_shape(config)
    assert shape.parameters == counted
    if name in PUBLISHED_TOTALS:
        assert counted == PUBLISHED_TOTALS[name]


def test_paper_stack_matches_pivot_reference_numbers() -> None:
    """SigLIP2-So400m/16 @384: 576 tokens of width 1152; the mlp2x_gelu projector to
    Qwen2.5-1.5B's 1536 (PIVOT's siglip_encoder.py and scripts); Vicuna gains one row for
    <image>."""
    vision, _ = resolve("google/siglip2-so400m-patch16-384", "vision")
    lm, _ = resolve("Qwen/Qwen2.5-1.5B-Instruct", "lm")
    arch = Architecture(vision, lm)
    assert arch.image_tokens == 576 and vision.hidden_size == 1152
    assert projector_parameters(1152, 1536) == 1152 * 1536 + 1536 + 1536 * 1536 + 1536
    vicuna, _ = resolve("lmsys/vicuna-7b-v1.5", "lm")
    assert vicuna.vocab_size == 32_001 and lm.vocab_size == 151_936


@pytest.mark.slow
def test_zoo_recipes_give_the_configs_the_zoo_builds(tmp_path) -> None:
    """``zoo_config`` reads a part's config from its recipe without building it; the tiny
    zoo's built parts (the same code path as the default zoo) have exactly those shapes."""
    from pivotlab.zoo.build import build

    folders = build(("enc-s", "vfm", "lm-s"), zoo="tiny", cache=tmp_path, log=lambda _: None)
    for part, folder in folders.items():
        config = zoo_config(f"zoo:tiny/{part}")
        if part == "lm-s":
            model = AutoModelForCausalLM.from_pretrained(folder)
            assert lm_shape(config).parameters == sum(p.numel() for p in model.parameters())
        else:
            model = AutoModel.from_pretrained(folder)
            assert vision_shape(config).parameters == sum(p.numel() for p in model.parameters())
