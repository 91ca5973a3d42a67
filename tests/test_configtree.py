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
