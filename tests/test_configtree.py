"""Config trees shared by stage configs and study presets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pivotlab.configtree import (
    ConfigError,
    add_options,
    apply_override,
    build_dataclass,
    cli_field,
    comma_separated,
    from_options,
    read_tree,
    set_dotted,
)


@dataclass
class Inner:
    rate: float = 1e-5
    limit: int | None = 10


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    name: str = "x"


def test_overrides_and_settings_build_a_typed_tree() -> None:
    tree: dict = {"inner": {"limit": 3}}
    apply_override(tree, "inner.rate=2e-4")
    apply_override(tree, "inner.limit=")  # empty: an explicit None
    set_dotted(tree, "name", None, drop_none=True)  # dropped: the default applies
    built = build_dataclass(Outer, tree)
    assert built == Outer(Inner(rate=2e-4, limit=None), "x")


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"inner": {"rates": 1}}, r"unknown key inner\.rates"),
        ({"inner": {"limit": "many"}}, r"inner\.limit: expected int or NoneType, got 'many'"),
        ({"inner": 5}, r"inner: expected a mapping"),
    ],
)
def test_mistakes_name_the_dotted_key(tree: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_dataclass(Outer, tree)
    with pytest.raises(ConfigError, match=r"name is not a section"):
        set_dotted({"name": "x"}, "name.first", 1)


def _parse(word: str) -> tuple[str, str]:
    return (word.upper(), word)


@dataclass
class RunOptions:
    target: tuple[str, ...] = cli_field("what to run", positional=True, parse=lambda w: (w,))
    out: Path = cli_field("where results go")
    names: tuple[str, ...] = cli_field("names", default=("a", "b"))
    pairs: list[tuple[str, str]] = cli_field(
        "pairs", default=[], flag="--pair", parse=_parse, repeat=True
    )
    limit: int | None = cli_field("how many", default=None)
    mode: str = cli_field("mode", default="fast", choices=("fast", "slow"))
    dry_run: bool = cli_field("only plan", default=False)


def _parser(cls: type = RunOptions) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, cls)
    return parser


def test_a_configs_fields_are_its_command_line_options() -> None:
    argv = ["x", "--out", "o", "--names", "c, d", "--pair", "p", "--pair", "q", "--limit", "3"]
    args = _parser().parse_args([*argv, "--mode", "slow", "--dry-run"])
    assert from_options(RunOptions, args) == RunOptions(
        ("x",), Path("o"), ("c", "d"), [("P", "p"), ("Q", "q")], 3, "slow", True
    )
    defaults = from_options(RunOptions, _parser().parse_args(["x", "--out", "o"]))
    assert defaults == RunOptions(("x",), Path("o"))
    help_text = _parser().format_help()
    assert "--pair" in help_text and "--dry-run" in help_text and "(default: a,b)" in help_text


def test_required_fields_and_choices_are_enforced_by_the_parser() -> None:
    with pytest.raises(SystemExit):  # argparse's own error path: --out is required
        _parser().parse_args(["x"])
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _parser().parse_args(["x", "--out", "o", "--mode", "medium"])


def test_a_field_without_help_is_refused_when_options_are_built() -> None:
    @dataclass
    class Forgotten:
        seed: int = 0

    with pytest.raises(TypeError, match=r"Forgotten\.seed has no command-line help"):
        _parser(Forgotten)


def test_comma_separated_drops_blanks() -> None:
    assert comma_separated(" a, ,b ,") == ("a", "b")


def test_a_config_says_only_what_differs_from_its_base(tmp_path: Path) -> None:
    """Sections merge key by key through a chain of bases; a list or value replaces."""
    (tmp_path / "shared.yaml").write_text(
        "stage: post\ntrain: {lr: 1.0e-4, parts: [vision, lm], epochs: 1}\npost: {beta: 0.1}\n"
    )
    (tmp_path / "sft.yaml").write_text("base: shared.yaml\ntrain: {lr: 5.0e-4}\n")
    (tmp_path / "sft-lm.yaml").write_text("base: sft.yaml\ntrain: {parts: [lm]}\n")
    assert read_tree(tmp_path / "sft-lm.yaml") == {
        "stage": "post",
        "train": {"lr": 5.0e-4, "parts": ["lm"], "epochs": 1},
        "post": {"beta": 0.1},
    }


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "base: gone.yaml\n"}, r"a\.yaml: base 'gone\.yaml': no such config file"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "leads back to itself"),
        ({"a.yaml": "base: [b.yaml]\n"}, r"a\.yaml: base must be a file name"),
        ({"a.yaml": "train: [\n"}, r"a\.yaml: line \d+ is not valid YAML"),
    ],
)
def test_a_bad_base_is_one_line_naming_the_file(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_tree(tmp_path / "a.yaml")


def test_the_shipped_stage_configs_resolve_their_bases() -> None:
    """Every post-* config on the tiny preset reads the shared recipe: the same records,
    steps and Stage-1 model; the objective (and SFT's rate) is all that differs."""
    from pivotlab.train.config import load_config

    configs = Path(__file__).parents[1] / "configs" / "tiny"
    shared = load_config(configs / "post-base.yaml")
    for name in ("sft", "dpo", "ipo", "mpo", "grpo", "dpo-viral", "sft-viral"):
        cfg = load_config(configs / f"post-{name}.yaml")
        assert (cfg.data, cfg.model, cfg.train.batch_size) == (
            shared.data,
            shared.model,
            shared.train.batch_size,
        )
        assert cfg.post.objective == name.removesuffix("-viral")
        assert cfg.viral.enabled == name.endswith("-viral")
    assert load_config(configs / "post-sft.yaml").train.lr == 5.0e-4
