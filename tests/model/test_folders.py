"""Model folders' weights checked before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from pivotlab.model.folders import (
    ModelFolderError,
    check_weights,
    mismatched_weights,
    weight_files,
)


def _weights(path: Path) -> Path:
    save_file({"a": np.zeros((4, 8), np.float32), "b": np.ones(3, np.float32)}, str(path))
    return path


def test_whole_weights_pass_and_a_cut_file_is_named(tmp_path: Path) -> None:
    weights = _weights(tmp_path / "model.safetensors")
    check_weights(tmp_path)
    weights.write_bytes(weights.read_bytes()[:-4])  # cut inside the last tensor's data
    with pytest.raises(ModelFolderError, match=rf"^{weights}: unreadable weights \("):
        check_weights(tmp_path)


def test_a_sharded_folder_names_its_missing_or_cut_shard(tmp_path: Path) -> None:
    first = _weights(tmp_path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": first.name, "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    missing = tmp_path / "model-00002-of-00002.safetensors"
    with pytest.raises(ModelFolderError, match=rf"^{missing}: missing"):
        check_weights(tmp_path)
    missing.write_bytes(b"\x08\x00")
    with pytest.raises(ModelFolderError, match=rf"^{missing}: unreadable weights"):
        check_weights(tmp_path)


@pytest.mark.parametrize("index", ['{"weight_map": 3}', "[]", '{"weight_map": {"a": "../x"}}'])
def test_a_bad_index_is_named(tmp_path: Path, index: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelFolderError, match=r"model\.safetensors\.index\.json: "):
        weight_files(tmp_path)


def test_a_folder_in_another_format_is_left_to_its_loader(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert weight_files(tmp_path) == []
    check_weights(tmp_path)


def test_a_shape_refusal_names_the_weights_and_other_errors_pass(tmp_path: Path) -> None:
    weights = _weights(tmp_path / "model.safetensors")
    refused = rf"^{weights}: its tensors' shapes do not fit"
    with pytest.raises(ModelFolderError, match=refused), mismatched_weights(tmp_path):
        raise RuntimeError("You set `ignore_mismatched_sizes` to `False`, thus raising")
    with pytest.raises(RuntimeError, match="something else"), mismatched_weights(tmp_path):
        raise RuntimeError("something else")
