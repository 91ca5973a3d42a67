"""Configs: shipped presets load, overrides apply, mistakes are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.cli import main
from pivotlab.train.config import ConfigError, load_config
from tests.train.conftest import CONFIGS

SHIPPED = sorted((CONFIGS / "tiny").glob("*.yaml")) + sorted((CONFIGS / "paper").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.learning_rates() and cfg.train.batch_size % cfg.train.per_device_batch_size == 0


def test_dotted_overrides_reach_nested_keys_with_yaml_types() -> None:
    cfg = load_config(
        CONFIGS / "tiny" / "post-dpo.yaml",
        ["post.beta=0.2", "seed=3", "train.parts=[projector, lm]", "post.on_policy.enabled=true"],
    )
    assert (cfg.post.beta, cfg.seed, cfg.parts) == (0.2, 3, ["projector", "lm"])
    assert cfg.post.on_policy.enabled is True
    assert cfg.learning_rates() == {"projector": 1e-4, "lm": 1e-4}


def test_per_part_rates_and_stage_defaults() -> None:
    full = load_config(CONFIGS / "tiny" / "full.yaml")
    assert full.parts == ["vision", "projector", "lm"]
    rates = full.learning_rates()
    assert rates["vision"] < rates["lm"]
    assert load_config(CONFIGS / "tiny" / "align.yaml").parts == ["projector"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["post.betta=0.2"], r"unknown key post\.betta \(known here: .*beta"),
        (["train.batch_size=many"], r"train\.batch_size: expected int, got 'many'"),
        (["post.objective=ppo"], r"post\.objective is 'ppo'; expected one of sft, dpo, ipo, mpo"),
        (["train.lr={lm: 1e-5}"], r"train\.lr has no rate for trained part vision"),
        (["train.batch_size=30"], r"train\.batch_size 30 is not a multiple of .* 32"),
        (["post.loss_weights=[1.0]", "post.objective=mpo"], r"mpo combines 3 losses"),
        (["train.parts=[eyes]"], r"train\.parts is 'eyes'"),
        (["beta"], r"override 'beta' is not of the form key=value"),
        (["train.warmup_ratio=3"], r"train\.warmup_ratio must be in \[0, 1\), got 3"),
    ],
)
def test_mistakes_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tiny" / "post-dpo.yaml", overrides)


def test_a_bad_yaml_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stage: post\npost: {beta: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+ is not valid YAML"):
        load_config(path)


def test_cli_reports_a_config_error_in_one_line(tmp_path: Path, capsys) -> None:
    config = str(CONFIGS / "tiny" / "post-dpo.yaml")
    code = main(["train", "--config", config, "--out", str(tmp_path / "r"), "post.betta=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "unknown key post.betta" in err
