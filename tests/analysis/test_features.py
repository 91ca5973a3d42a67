"""Encoders from every source give the MLLM's own features; the cache serves repeats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pivotlab.analysis import features
from pivotlab.analysis.features import (
    AnalysisError,
    FeatureSpec,
    cached_features,
    extract,
    load_encoder,
    probe_images,
)
from pivotlab.errors import PivotlabError
from pivotlab.model import export_encoder, load


def test_mllm_encoder_gives_the_projector_input_and_output(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path]
) -> None:
    images = probe_images(probe_splits[0], "classification")[:5]
    model, processor = load(tiny_model_dir)
    pixels = processor.image_processor(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = torch.stack(model.model.get_image_features(pixels).pooler_output)
    encoder = load_encoder(tiny_model_dir)
    projected = extract(encoder, images, FeatureSpec(pooling="patch", projector=True))
    torch.testing.assert_close(projected, expected)


def test_exported_encoder_matches_the_mllm(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    export_encoder(tiny_model_dir, tmp_path / "enc", with_projector=True)
    images = probe_images(probe_splits[0], "classification")[:5]
    for spec in (FeatureSpec(), FeatureSpec(pooling="patch", projector=True)):
        from_mllm = extract(load_encoder(tiny_model_dir), images, spec)
        from_export = extract(load_encoder(tmp_path / "enc"), images, spec)
        torch.testing.assert_close(from_export, from_mllm)
    assert load_encoder(tmp_path / "enc").fingerprint == load_encoder(tiny_model_dir).fingerprint


def test_random_init_keeps_the_architecture_not_the_weights(tiny_model_dir: Path) -> None:
    trained = load_encoder(tiny_model_dir)
    fresh = load_encoder(f"random:{tiny_model_dir}")
    assert fresh.tower.config.to_dict() == trained.tower.config.to_dict()
    assert fresh.fingerprint != trained.fingerprint
    assert load_encoder(f"random:{tiny_model_dir}").fingerprint == fresh.fingerprint


def test_second_extraction_reads_the_cache(
    tiny_model_dir: Path,
    probe_splits: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoder = load_encoder(tiny_model_dir)
    first = cached_features(encoder, probe_splits[0], "classification", FeatureSpec(), tmp_path)
    assert first.shape == (120, encoder.tower.config.hidden_size)

    def no_forward(*args, **kwargs):
        raise AssertionError("a cached feature set was recomputed")

    monkeypatch.setattr(features, "extract", no_forward)
    again = cached_features(encoder, probe_splits[0], "classification", FeatureSpec(), tmp_path)
    torch.testing.assert_close(again, first)
    with pytest.raises(AssertionError, match="recomputed"):  # another layer is another key
        cached_features(encoder, probe_splits[0], "classification", FeatureSpec(layer=1), tmp_path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (FeatureSpec(pooling="cls"), "no CLS token"),
        (FeatureSpec(layer=7), "outside"),
    ],
)
def test_impossible_features_are_one_line_errors(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], spec: FeatureSpec, message: str
) -> None:
    images = probe_images(probe_splits[0], "classification")[:2]
    with pytest.raises(AnalysisError, match=message):
        extract(load_encoder(tiny_model_dir), images, spec)


def test_bad_sources_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(PivotlabError, match=r"no config\.json"):
        load_encoder(tmp_path)
    with pytest.raises(AnalysisError, match="pooling 'max'"):
        FeatureSpec(pooling="max")
    with pytest.raises(AnalysisError, match="not a world split with probes"):
        features.probe_rows(tmp_path, "classification")
    with pytest.raises(AnalysisError, match="unknown probe set"):
        features.probe_rows(tmp_path, "faces")
