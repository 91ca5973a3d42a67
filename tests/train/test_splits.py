"""A config's data entries parsed once, when the config is built, into the split they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.train import ConfigError, load_config
from pivotlab.train.splits import DatasetSpec, DataSplit, parse_split
from pivotlab.world import WorldConfig

REQUIRED = ["model.init=m"]


def test_each_kind_of_entry_is_parsed_into_its_split() -> None:
    home = Path("~").expanduser()
    assert parse_split(None, "data.eval") is None
    assert parse_split("~/train", "data.train") == DataSplit("data.train", folder=home / "train")
    fields = {"preset": "tiny", "split": "val", "n": 3, "tasks": ["count"]}
    tiny = WorldConfig.from_preset("tiny", split="val", n=3, tasks=("count",))
    assert parse_split(fields, "data.eval") == DataSplit("data.eval", world=tiny)
    dataset = parse_split({"format": "llava", "path": "d.json", "images": "img"}, "data.train")
    assert dataset == DataSplit("data.train", dataset=DatasetSpec("llava", "d.json", "img"))


def test_the_config_keeps_what_was_written_and_the_split_follows_it(tmp_path: Path) -> None:
    fields = {"split": "train", "n": 5, "size": 32}
    cfg = load_config(None, [*REQUIRED, f"data.train={fields}", f"data.eval={tmp_path}"])
    assert cfg.data.train == fields and cfg.data.eval == str(tmp_path)
    assert cfg.to_dict()["data"]["train"] == fields and "train_split" not in cfg.to_dict()["data"]
    assert cfg.data.train_split.world == WorldConfig(split="train", n=5, size=32)
    assert cfg.data.eval_split == DataSplit("data.eval", folder=tmp_path)
    cfg.data.eval = None  # a later assignment is parsed too: the two never disagree
    assert cfg.data.eval_split is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{split: train, n: 0}", r"cli\.yaml: data\.train: n must be at least 1, got 0"),
        ("{preset: huge}", r"cli\.yaml: data\.train: unknown world preset 'huge'"),
        ("{split: train, colour: red}", r"cli\.yaml: data\.train: .*'colour'"),
        ("{format: world, path: p, max_chars: 0}", r"data\.train\.max_chars must be positive"),
    ],
)
def test_fields_no_world_or_dataset_takes_are_named_when_the_config_loads(
    tmp_path: Path, entry: str, message: str
) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text("model: {init: m}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(config, [f"data.train={entry}"])
