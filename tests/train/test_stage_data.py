"""Stage data: the schedule every objective shares, and TRL's formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.io import read_jsonl
from pivotlab.train import ConfigError
from pivotlab.train.config import DataSection
from pivotlab.train.splits import SplitFolder
from pivotlab.train.stage_data import (
    SAMPLE_INDEX,
    keep_first,
    resolve_data,
    resolve_split,
    schedule,
    trl_dataset,
)
from pivotlab.world.hf import conversations


def test_schedule_is_a_fresh_permutation_per_epoch_and_repeatable() -> None:
    order = schedule(5, 12, seed=7)
    assert order == schedule(5, 12, seed=7) != schedule(5, 12, seed=8)
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    assert order[:5] != order[5:10]
    assert len(order) == 12


def test_keep_first_is_a_seeded_subset() -> None:
    records = [{"id": i} for i in range(10)]
    assert keep_first(records, 4, 0) == keep_first(records, 4, 0)
    assert keep_first(records, 4, 0) == keep_first(records, None, 0)[:4]


def test_a_split_resolves_to_its_folder(
    splits: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path / "cache"))
    train, _ = splits
    world = {"preset": "tiny", "split": "val", "n": 2, "size": 32}
    data = resolve_data(DataSection(train=str(train), eval=world))
    assert data.train == SplitFolder("data.train", train)
    assert data.eval is not None and data.eval.dataset is None
    assert data.eval.path.parent == tmp_path / "cache" / "world"
    assert (data.eval.path / "manifest.json").is_file()
    assert resolve_data(DataSection(train=str(train))).eval is None
    with pytest.raises(ConfigError, match=r"^data\.train: .*empty is not a world split"):
        resolve_split(DataSection(train=str(tmp_path / "empty")).train_split)


def test_formats_per_stage_and_objective(splits: tuple[Path, Path]) -> None:
    train, _ = splits
    pairs = read_jsonl(train / "preferences.jsonl")[:3]
    dpo = trl_dataset(pairs, train, stage="post", objective="dpo", order=[2, 0])
    sft = trl_dataset(pairs, train, stage="post", objective="sft", order=[2, 0])
    assert dpo[SAMPLE_INDEX] == sft[SAMPLE_INDEX] == [2, 0]
    assert {"prompt", "chosen", "rejected", "images"} <= set(dpo.column_names)
    assert {"prompt", "completion", "images"} <= set(sft.column_names)
    assert sft[0]["prompt"] == dpo[0]["prompt"]
    assert sft[0]["completion"] == dpo[0]["chosen"]
    assert dpo[0]["chosen"][0]["content"][0]["text"] == pairs[2]["chosen"]
    captions = read_jsonl(train / "probes/captions.jsonl")[:2]
    align = trl_dataset(captions, train, stage="align", eos="<|im_end|>")
    assert align[0]["prompt"] == "<image>"
    assert align[0]["completion"] == captions[0]["caption"] + "<|im_end|>"
    questions = read_jsonl(train / "vqa.jsonl")[:2]
    full = trl_dataset(questions, train, stage="full")
    assert [m["role"] for m in full[0]["messages"]] == ["user", "assistant"]
    assert full[0]["images"][0].size == (32, 32)


def test_turns_join_an_images_questions_into_one_conversation(
    splits: tuple[Path, Path], tiny_model_dir: Path
) -> None:
    from pivotlab.model import load

    records = read_jsonl(splits[0] / "vqa.jsonl")
    joined = conversations(records, turns=3)
    assert sum(len(r["turns"]) for r in joined) == len(records)
    assert max(len(r["turns"]) for r in joined) == 3
    assert {q for r in joined for q in r["id"].split("+")} == {r["id"] for r in records}
    by_image = {r["image"] for r in records if r["id"] in joined[0]["id"].split("+")}
    assert by_image == {joined[0]["image"]}
    row = trl_dataset(joined[:1], splits[0], stage="full")[0]
    images = [c for m in row["messages"] for c in m["content"] if c["type"] == "image"]
    assert len(images) == 1 and len(row["messages"]) == 2 * len(joined[0]["turns"])
    _, processor = load(tiny_model_dir)
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    assert text.count("<image>") == 1
    assert [a for _, a in joined[0]["turns"]] == [
        m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"
    ]


def test_the_full_stage_cut_to_n_reads_the_questions_of_the_first_n_preference_pairs(
    splits: tuple[Path, Path],
) -> None:
    # The study's "Stage 1, continued" control relies on it: data.limit=N with the same
    # seed gives the full stage the questions the preference arms' N pairs were made from.
    train, _ = splits
    questions, pairs = read_jsonl(train / "vqa.jsonl"), read_jsonl(train / "preferences.jsonl")
    for seed in (0, 3):
        kept_questions = keep_first(questions, 7, seed)
        kept_pairs = keep_first(pairs, 7, seed)
        assert [q["id"] for q in kept_questions] == [p["vqa_id"] for p in kept_pairs]
