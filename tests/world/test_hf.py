"""The world as Hugging Face datasets in TRL's conversational formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pivotlab.errors import PivotlabError
from pivotlab.io import read_jsonl
from pivotlab.world import WorldConfigError
from pivotlab.world.hf import caption_dataset, preference_dataset, vqa_dataset


def test_vqa_rows_are_conversations_with_their_image(small_split: Path) -> None:
    dataset = vqa_dataset(small_split)
    assert len(dataset) == len(read_jsonl(small_split / "vqa.jsonl"))
    row = dataset[0]
    (image,) = row["images"]
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    user, assistant = row["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert [c["type"] for c in user["content"]] == ["image", "text"]
    assert user["content"][1]["text"] == row["question"]
    assert assistant["content"][0]["text"] == row["answer"]
    assert {"category", "task", "answer_text", "choices", "pair_id", "scene_id"} <= set(row)


def test_preference_rows_follow_trl_vision_format(small_split: Path) -> None:
    dataset = preference_dataset(small_split)
    row = dataset[0]
    assert row["prompt"][0]["content"][0]["type"] == "image"
    assert row["prompt"][0]["content"][1]["text"] == row["prompt"][0]["content"][1]["text"].strip()
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert row["chosen"][0]["content"][0]["text"] != row["rejected"][0]["content"][0]["text"]
    assert row["negative_type"]


def test_caption_rows_pair_images_with_captions(small_split: Path) -> None:
    dataset = caption_dataset(small_split)
    assert len(dataset) == 120
    assert dataset[0]["caption"].endswith(".")
    assert dataset[0]["images"][0].size == (32, 32)


def test_missing_or_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(WorldConfigError, match=r"vqa\.jsonl is missing"):
        vqa_dataset(tmp_path)
    (tmp_path / "vqa.jsonl").write_text(json.dumps({"id": 1}) + "\n{broken\n")
    with pytest.raises(PivotlabError, match=r"vqa\.jsonl:2: not valid JSON"):
        read_jsonl(tmp_path / "vqa.jsonl")
