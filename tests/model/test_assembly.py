"""Assembly: presets, local folders (the hub-id code path), round trips, plain loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
)

from pivotlab.errors import PivotlabError
from pivotlab.model import AssemblyError, UnsupportedModelError, assemble, load
from pivotlab.model.folders import ModelFolderError
from pivotlab.model.presets import VISION_PRESETS

from .conftest import chat


def test_round_trip_gives_identical_logits(tiny_model_dir: Path, images) -> None:
    model, processor = load(tiny_model_dir)
    model.eval()
    inputs = chat(processor, images)
    with torch.no_grad():
        first = model(**inputs).logits
    again, _ = load(tiny_model_dir)
    again.eval()
    with torch.no_grad():
        assert torch.equal(first, again(**inputs).logits)
    build = json.loads((tiny_model_dir / "pivotlab_build.json").read_text())
    assert build["feature_layer"] == -2 and build["visual_tokens"] == 16


@pytest.mark.parametrize("vision", sorted(VISION_PRESETS.keys() - {"small-siglip"}))
@pytest.mark.parametrize("lm", ["tiny-qwen2", "tiny-llama"])
def test_every_family_assembles_and_counts_its_visual_tokens(vision: str, lm: str, images) -> None:
    model, processor = assemble(vision, lm, image_size=32)
    inputs = chat(processor, images)
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [model.config.image_seq_length] * 2 == [16, 16]
    features = model.model.get_image_features(inputs["pixel_values"]).pooler_output
    assert len(features) == 2 and features[0].shape == (16, model.config.text_config.hidden_size)
    assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape
    assert (
        model.model.multi_modal_projector.linear_2.out_features
        == model.config.text_config.hidden_size
    )


def test_saved_folder_generates_without_pivotlab(tiny_model_dir: Path) -> None:
    script = f"""
import sys
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained({str(tiny_model_dir)!r})
processor = AutoProcessor.from_pretrained({str(tiny_model_dir)!r})
question = {{"type": "text", "text": "Which bar is the tallest?"}}
messages = [{{"role": "user", "content": [{{"type": "image"}}, question]}}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.new("RGB", (32, 32))], text=[text], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
assert out.shape[1] > inputs["input_ids"].shape[1]
assert not any(name.startswith("pivotlab") for name in sys.modules)
print("ok")
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def _tokenizer_without_image_token() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(
        ["how many stars are there", "a red circle"] * 10, trainer=trainer
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


@pytest.fixture(scope="module")
def hub_style_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dual-encoder SigLIP checkpoint and a Qwen2 LM + tokenizer, saved like hub repos."""
    from transformers import SiglipImageProcessorPil

    root = tmp_path_factory.mktemp("hub")
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text_config = SiglipTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=100,
    )
    torch.manual_seed(0)
    SiglipModel(
        SiglipConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict())
    ).save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    tokenizer = _tokenizer_without_image_token()
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    lm.save_pretrained(root / "qwen")
    tokenizer.save_pretrained(root / "qwen")
    return root / "siglip", root / "qwen"


def test_assembles_from_local_folders_with_their_weights(hub_style_folders, images) -> None:
    siglip_dir, qwen_dir = hub_style_folders
    model, processor = assemble(siglip_dir, qwen_dir)
    original = SiglipModel.from_pretrained(siglip_dir).vision_model.state_dict()
    tower = model.model.vision_tower.state_dict()
    assert original.keys() == tower.keys()
    assert all(torch.equal(original[k], tower[k]) for k in original)
    lm = Qwen2ForCausalLM.from_pretrained(qwen_dir)
    old_rows = lm.get_input_embeddings().weight.shape[0]
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(embeddings[:old_rows], lm.get_input_embeddings().weight)
    # <image> was added (and transformers may add a pad token on load): rows follow the tokenizer.
    assert embeddings.shape[0] == len(processor.tokenizer) > old_rows
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert model(**chat(processor, images)).logits.isfinite().all()


def test_clear_errors_for_what_cannot_be_assembled(hub_style_folders, tmp_path: Path) -> None:
    siglip_dir, qwen_dir = hub_style_folders
    with pytest.raises(ModelFolderError, match=r"no preset or folder named .*missing"):
        assemble(tmp_path / "missing", "tiny-qwen2")
    with pytest.raises(AssemblyError, match="trained at 32 px"):
        assemble(siglip_dir, qwen_dir, image_size=64)
    with pytest.raises(AssemblyError, match="feature_layer 5"):
        assemble("tiny-siglip", "tiny-qwen2", image_size=32, feature_layer=5)
    with pytest.raises(ModelFolderError, match=r"Qwen2ForCausalLM .*expected a vision tower"):
        assemble(qwen_dir, "tiny-qwen2")  # an LM is no vision tower
    with pytest.raises(ModelFolderError, match="expected a causal language model"):
        assemble("tiny-siglip", siglip_dir)  # nor is a tower an LM
    with pytest.raises(ModelFolderError, match=r"no config\.json"):
        load(tmp_path)
    with pytest.raises(ModelFolderError, match="expected an MLLM"):
        load(qwen_dir)  # refused before Llava builds a default 7B-class LM around it
    with pytest.raises(AssemblyError, match="below the tower's patch size"):
        assemble("tiny-siglip", "tiny-qwen2", image_size=4)


def test_processor_and_model_agree_after_save(tiny_model_dir: Path) -> None:
    processor = LlavaProcessor.from_pretrained(tiny_model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert processor.chat_template and "<image>" in processor.chat_template
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id


def _save_tower(kind: str, root: Path) -> Path:
    """A tiny pretrained-style checkpoint of one more vision family, with its processor."""
    from transformers import (
        BitImageProcessorPil,
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        Dinov2Config,
        Dinov2Model,
    )

    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    folder = root / kind
    torch.manual_seed(0)
    if kind == "clip":
        text = CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=100,
        )
        CLIPModel(
            CLIPConfig(
                text_config=text.to_dict(), vision_config=CLIPVisionConfig(**small).to_dict()
            )
        ).save_pretrained(folder)
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    else:
        small.pop("intermediate_size")
        Dinov2Model(Dinov2Config(mlp_ratio=2, **small)).save_pretrained(folder)
        processor = BitImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["clip", "dinov2"])
def test_other_families_assemble_from_folders(
    kind: str, tmp_path: Path, hub_style_folders, images
) -> None:
    folder = _save_tower(kind, tmp_path)
    model, processor = assemble(folder, hub_style_folders[1])
    original = AutoModel.from_pretrained(folder)
    if kind == "clip":
        original = original.vision_model
    tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], v) for k, v in original.state_dict().items())
    assert model.config.vision_feature_select_strategy == "default"  # CLS dropped
    inputs = chat(processor, images)
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 2 * 16
    assert model(**inputs).logits.isfinite().all()


def test_keeping_the_cls_token_adds_one_visual_token(images) -> None:
    model, processor = assemble("tiny-clip", "tiny-qwen2", image_size=32, select_strategy="full")
    inputs = chat(processor, images)
    assert model.config.image_seq_length == 17
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 2 * 17
    assert model(**inputs).logits.isfinite().all()


def test_load_refuses_a_config_whose_token_count_is_wrong(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["image_seq_length"] = 576
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(AssemblyError, match="image_seq_length is 576, but a 32-px image"):
        load(broken)


def test_naflex_siglip2_is_refused_with_the_reason(tmp_path: Path) -> None:
    from transformers import Siglip2VisionConfig

    Siglip2VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    with pytest.raises(UnsupportedModelError, match="FixRes SigLIP2"):
        assemble(tmp_path, "tiny-qwen2")


def test_zoo_parts_are_named_and_built_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path))
    model, processor = assemble("zoo:tiny/enc-s", "zoo:tiny/lm-s")
    assert (tmp_path / "zoo" / "tiny").is_dir()
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.image_seq_length == 16
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    with pytest.raises(PivotlabError, match="unknown zoo part 'enc-xl'"):
        assemble("zoo:tiny/enc-xl", "tiny-qwen2")
