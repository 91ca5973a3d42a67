"""Config trees shared by stage configs and study presets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pivotlab.configtree import ConfigError, apply_override, build_dataclass, set_dotted


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
