"""Export: the detached encoder gives the MLLM's own features; transplant builds a fresh MLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, LlavaForConditionalGeneration

from pivotlab.cli import main
from pivotlab.model import assemble, export_encoder, load, save, transplant
from pivotlab.model.assembly import AssemblyError
from pivotlab.model.export import (
    ENCODER_FILE,
    PROJECTOR_FILE,
    exported_projector,
    read_export,
)

from .conftest import chat


def _mllm_features(
    model: LlavaForConditionalGeneration, pixel_values: torch.Tensor
) -> torch.Tensor:
    """What the MLLM feeds its projector, read from the tower inside it."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    selected = hidden[model.config.vision_feature_layer]
    return selected[:, 1:] if model.config.vision_feature_select_strategy == "default" else selected


@pytest.mark.parametrize("vision", ["tiny-siglip", "tiny-clip", "tiny-dinov2"])
@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
def test_exported_encoder_gives_the_mllm_features(
    vision: str, feature_layer: int, tmp_path: Path, images
) -> None:
    model, processor = assemble(vision, "tiny-qwen2", image_size=32, feature_layer=feature_layer)
    save(model, processor, tmp_path / "mllm")
    info = export_encoder(tmp_path / "mllm", tmp_path / "encoder", with_projector=True)
    encoder = AutoModel.from_pretrained(tmp_path / "encoder").eval()  # plain transformers
    model.eval()
    pixels = chat(processor, images)["pixel_values"]
    with torch.no_grad():
        expected = _mllm_features(model, pixels)
        exported = encoder(pixels, output_hidden_states=True).hidden_states[-1]
        exported = exported[:, 1:] if info.drop_cls else exported
        assert (exported - expected).abs().max() <= 1e-5
        # The exported projector on the exported features reproduces the MLLM's image features.
        projector = model.model.multi_modal_projector
        weights = load_file(tmp_path / "encoder" / PROJECTOR_FILE)
        assert weights.keys() == projector.state_dict().keys()
        in_mllm = torch.stack(model.model.get_image_features(pixels).pooler_output)
        assert (projector(exported) - in_mllm).abs().max() <= 1e-5
    expected_blocks = {-2: 1, -1: 2, 1: 1}[feature_layer]
    assert encoder.config.num_hidden_layers == info.kept_blocks == expected_blocks
    recorded = json.loads((tmp_path / "encoder" / "pivotlab_encoder.json").read_text())
    assert recorded["feature_layer_in_mllm"] == feature_layer and recorded["original_blocks"] == 2


def test_the_exported_projector_reads_back_as_the_mllm_projector(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    export_encoder(tiny_model_dir, tmp_path / "encoder", with_projector=True)
    model, _ = load(tiny_model_dir)
    tower = AutoModel.from_pretrained(tmp_path / "encoder")
    info = read_export(tmp_path / "encoder")
    projector = exported_projector(tmp_path / "encoder", info, tower.config)
    features = torch.randn(2, 3, tower.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(projector(features), model.model.multi_modal_projector(features))
    assert info.drop_cls == (model.config.vision_feature_select_strategy == "default")


def test_an_encoder_exported_without_projector_or_not_exported_has_none(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    export_encoder(tiny_model_dir, tmp_path / "encoder")
    tower = AutoModel.from_pretrained(tmp_path / "encoder")
    info = read_export(tmp_path / "encoder")
    assert info is not None and info.projector is None
    assert exported_projector(tmp_path / "encoder", info, tower.config) is None
    (tmp_path / "encoder" / ENCODER_FILE).unlink()  # now a plain vision model folder
    assert read_export(tmp_path / "encoder") is None


def test_an_older_export_s_projector_still_reads_back_and_a_foreign_description_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "encoder"
    export_encoder(tiny_model_dir, folder, with_projector=True)
    tower = AutoModel.from_pretrained(folder)
    info = read_export(folder)
    weights = load_file(folder / PROJECTOR_FILE)
    save_file(weights, folder / PROJECTOR_FILE, metadata={"activation": "gelu"})  # as before
    projector = exported_projector(folder, info, tower.config)
    model, _ = load(tiny_model_dir)
    features = torch.randn(2, 3, tower.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(projector(features), model.model.multi_modal_projector(features))
    (folder / ENCODER_FILE).write_text(json.dumps({"source": "elsewhere"}))
    with pytest.raises(AssemblyError, match="not an encoder description"):
        read_export(folder)


def test_transplant_builds_a_fresh_mllm_around_the_encoder(
    tiny_model_dir: Path, tmp_path: Path, images
) -> None:
    export_encoder(tiny_model_dir, tmp_path / "encoder")
    transplant(tmp_path / "encoder", "tiny-llama", tmp_path / "pivot", seed=7)
    fresh, processor = load(tmp_path / "pivot")
    original, _ = load(tiny_model_dir)
    encoder = AutoModel.from_pretrained(tmp_path / "encoder")
    tower = fresh.model.vision_tower.state_dict()
    assert tower.keys() == encoder.state_dict().keys()
    assert all(torch.equal(tower[k], v) for k, v in encoder.state_dict().items())
    assert fresh.config.vision_feature_layer == -1
    assert type(fresh.model.language_model).__name__ == "LlamaModel"
    old = original.model.multi_modal_projector.linear_1.weight
    assert not torch.equal(fresh.model.multi_modal_projector.linear_1.weight, old)
    fresh.eval()
    original.eval()
    pixels = chat(processor, images)["pixel_values"]
    with torch.no_grad():  # the transplanted tower sees what the original MLLM's projector saw
        assert torch.allclose(
            _mllm_features(fresh, pixels), _mllm_features(original, pixels), atol=1e-5
        )
        generated = fresh.generate(**chat(processor, images), max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 2


def test_cli_build_export_transplant_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mllm, encoder, pivot = tmp_path / "mllm", tmp_path / "encoder", tmp_path / "pivot"
    assert (
        main(
            [
                "model",
                "build",
                "--vision",
                "tiny-clip",
                "--lm",
                "tiny-qwen2",
                "--image-size",
                "32",
                "--out",
                str(mllm),
            ]
        )
        == 0
    )
    assert main(["model", "export-encoder", "--model", str(mllm), "--out", str(encoder)]) == 0
    assert (
        main(
            [
                "model",
                "transplant",
                "--encoder",
                str(encoder),
                "--lm",
                "tiny-qwen2",
                "--out",
                str(pivot),
            ]
        )
        == 0
    )
    assert main(["model", "parts", "--model", str(pivot)]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 blocks" in out and "drop the first (CLS) token" in out
    assert out.count("projector") >= 3
    assert (
        main(["model", "build", "--vision", "tiny-clip", "--lm", "tiny-qwen2", "--out", str(mllm)])
        == 2
    )
    assert (
        main(
            [
                "model",
                "transplant",
                "--encoder",
                str(mllm),
                "--lm",
                "tiny-qwen2",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not empty" in err and "not an encoder exported by pivotlab" in err
