"""Stages on datasets from outside the world: a config names ``{format, path, images}``,
the same loaders check it, ``data.on_bad_record`` decides what a bad row does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pivotlab.data import DataError
from pivotlab.io import read_jsonl
from pivotlab.train import ConfigError, run_stage
from pivotlab.train.config import config_from_dict
from pivotlab.train.external import screened
from pivotlab.train.stage_data import resolve_split, stage_records, trl_dataset
from tests.data.conftest import llava, mmpr, png, write_lines
from tests.train.conftest import tiny_config


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def llava_data(tmp_path: Path) -> tuple[Path, Path]:
    """Six good LLaVA rows over three 32-px images (one two-turn row), then a row whose
    image is missing (line 7)."""
    root = tmp_path / "images"
    for i, colour in enumerate(("red", "green", "blue")):
        png(root / f"{colour}.png", [(200, 0, 0), (0, 200, 0), (0, 0, 200)][i])
    rows = [llava(f"{c}.png", id=f"{c}-{k}", answer=c) for c in ("red", "green") for k in (0, 1)]
    rows.append(llava("blue.png", id="blue-0", answer="blue"))
    two_turns = llava("blue.png", id="blue-1", answer="blue")
    two_turns["conversations"] += [
        {"from": "human", "value": "Sure?"},
        {"from": "gpt", "value": "yes"},
    ]
    rows += [two_turns, llava("gone.png", id="gone")]
    return write_lines(tmp_path / "llava.jsonl", rows), root


def _spec(data: tuple[Path, Path], fmt: str = "llava") -> str:
    return json.dumps({"format": fmt, "path": str(data[0]), "images": str(data[1])})


@pytest.mark.trains
def test_a_full_stage_trains_a_step_on_llava_data_and_lists_skipped_rows(
    preset: list[str], llava_data: tuple[Path, Path], tmp_path: Path
) -> None:
    overrides = [o for o in preset if not o.startswith("data.")]
    cfg = tiny_config(
        "full",
        overrides,
        f"data.train={_spec(llava_data)}",
        "data.on_bad_record=skip",
        "data.eval=null",
        "train.steps=1",
        "train.batch_size=2",
        "train.per_device_batch_size=2",
    )
    result = run_stage(cfg, tmp_path / "run")
    (step,) = [json.loads(x) for x in (result.out / "samples.jsonl").read_text().splitlines()]
    good = {"red-0", "red-1", "green-0", "green-1", "blue-0", "blue-1"}
    assert len(step["ids"]) == 2 and set(step["ids"]) <= good
    assert result.summary["records"] == 6 and result.summary["steps"] == 1
    (skipped,) = [json.loads(x) for x in (result.out / "skipped.jsonl").read_text().splitlines()]
    assert (skipped["line"], skipped["kind"], skipped["split"]) == (7, "image_missing", "train")
    assert skipped["file"] == str(llava_data[0])


def test_fail_stops_the_run_at_the_first_bad_row_before_training(
    preset: list[str], llava_data: tuple[Path, Path], tmp_path: Path
) -> None:
    overrides = [o for o in preset if not o.startswith("data.")]
    cfg = tiny_config("full", overrides, f"data.train={_spec(llava_data)}", "data.eval=null")
    expected = re.escape(f"data.train: bad rows: 1, the first: {llava_data[0]}:7: ")
    with pytest.raises(DataError, match=expected):
        run_stage(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "final").exists()
    assert not (tmp_path / "run" / "skipped.jsonl").exists()


def test_each_stage_gets_its_records_from_a_dataset(
    preset: list[str], llava_data: tuple[Path, Path], tmp_path: Path
) -> None:
    overrides = [o for o in preset if not o.startswith("data.")]
    spec = f"data.train={_spec(llava_data)}"
    full = tiny_config("full", overrides, spec, "data.on_bad_record=skip")
    split = resolve_split(full.data.train_split)
    records = stage_records(full, split)
    assert [r["id"] for r in records] == [
        "red-0",
        "red-1",
        "green-0",
        "green-1",
        "blue-0",
        "blue-1",
    ]
    assert records[0]["question"] == "What colour is it?" and "turns" in records[5]
    row = trl_dataset(records[5:], split.path, stage="full")[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 2
    assert row["images"][0].size == (32, 32)
    align = tiny_config("full", overrides, spec, "stage=align", "data.on_bad_record=skip")
    captions, problems = screened(align, split)
    assert [r.id for r in captions][-1] == "blue-0"
    assert [(p.id, p.kind) for p in problems] == [
        ("gone", "image_missing"),
        ("blue-1", "bad_turns"),
    ]
    assert stage_records(align, split)[0]["caption"] == "red"


def test_post_reads_mmpr_pairs_and_max_length_screens_with_the_models_processor(
    preset: list[str], tmp_path: Path
) -> None:
    root = tmp_path / "images"
    png(root / "a.png")
    rows = [mmpr("a.png", id="short"), mmpr("a.png", id="long", rejected="no " * 60)]
    data = (write_lines(tmp_path / "p.jsonl", rows), root)
    overrides = [o for o in preset if not o.startswith("data.")]
    spec = f"data.train={_spec(data, 'mmpr')}"
    cfg = tiny_config("post-dpo", overrides, spec)
    split = resolve_split(cfg.data.train_split)
    assert [(r["prompt"], r["chosen"]) for r in stage_records(cfg, split)] == [
        ("What colour?", "red"),
        ("What colour?", "red"),
    ]
    tight = tiny_config(
        "post-dpo", overrides, spec, "train.max_length=60", "data.on_bad_record=skip"
    )
    kept, problems = screened(tight, split)
    assert [r.id for r in kept] == ["short"]
    assert [(p.id, p.kind) for p in problems] == [("long", "over_max_length")]


@pytest.mark.parametrize(
    ("stage", "data", "message"),
    [
        (
            "post",
            {"format": "llava", "path": "x", "images": "y"},
            "the post stage reads mmpr or world",
        ),
        (
            "align",
            {"format": "mmpr", "path": "x", "images": "y"},
            "the align stage reads llava or world",
        ),
        ("full", {"format": "llava", "path": "x"}, "data.train.images is required"),
        (
            "full",
            {"format": "llava", "path": "x", "images": "y", "img": 1},
            "unknown key data.train.img",
        ),
        ("full", {"format": "csv", "path": "x", "images": "y"}, "data.train.format is 'csv'"),
    ],
)
def test_dataset_specs_are_checked_with_the_config(stage: str, data: dict, message: str) -> None:
    tree = {"stage": stage, "model": {"init": "m"}, "data": {"train": data}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tree)


def test_on_bad_record_takes_fail_or_skip() -> None:
    tree = {"model": {"init": "m"}, "data": {"train": "x", "on_bad_record": "ignore"}}
    with pytest.raises(ConfigError, match=r"data\.on_bad_record is 'ignore'"):
        config_from_dict(tree)


def test_a_world_split_named_as_a_dataset_gives_the_worlds_own_records(
    preset: list[str], splits: tuple[Path, Path]
) -> None:
    train, _ = splits
    overrides = [o for o in preset if not o.startswith("data.")]
    spec = json.dumps({"format": "world", "path": str(train)})
    cfg = tiny_config("post-dpo", overrides, f"data.train={spec}", "data.eval=null")
    records = stage_records(cfg, resolve_split(cfg.data.train_split))
    world = read_jsonl(train / "preferences.jsonl")
    fields = ("id", "prompt", "chosen", "rejected")
    assert [tuple(r[k] for k in fields) for r in records] == [
        tuple(w[k] for k in fields) for w in world
    ]
    assert [r["image"] for r in records] == [str(train.resolve() / w["image"]) for w in world]
