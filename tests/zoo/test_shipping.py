"""The weights shipped with the package: found under today's keys, copied instead of trained,
and shipped only from an intact build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pivotlab.zoo import shipping
from pivotlab.zoo.build import build
from pivotlab.zoo.entries import entry_dir, verify
from pivotlab.zoo.recipes import PARTS, ZOOS, ZooError
from pivotlab.zoo.shipping import ship, shipped_dir


@pytest.mark.parametrize("zoo", ["default", "tokens16"])
def test_the_shipped_parts_are_found_intact_under_todays_keys(zoo: str) -> None:
    """A recipe or key change that moved a shipped part's key would fail here."""
    for part in PARTS:  # every part ships: a fresh install trains none
        assert verify(shipped_dir(ZOOS[zoo], part)) is None, part
        assert (
            json.loads((shipped_dir(ZOOS[zoo], part) / "zoo_part.json").read_text())["zoo"] == zoo
        )


def test_shipped_weights_are_copied_instead_of_trained(
    tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipping, "SHIPPED", tmp_path / "weights")
    shipped = ship("lm-s", "tiny", tiny_zoo)
    assert verify(shipped) is None
    fresh = tmp_path / "fresh-cache"
    messages: list[str] = []
    folders = build(("lm-s",), zoo="tiny", cache=fresh, log=messages.append)
    assert "copied from the weights shipped with pivotlab" in messages[0]
    assert verify(folders["lm-s"]) is None
    original = json.loads((entry_dir(ZOOS["tiny"], "lm-s", tiny_zoo) / "zoo_part.json").read_text())
    copied = json.loads((folders["lm-s"] / "zoo_part.json").read_text())
    assert copied == original
    # --force trains even where a shipped copy exists.
    messages.clear()
    build(("lm-s",), zoo="tiny", cache=fresh, force=True, log=messages.append)
    assert "rebuild asked for" in messages[0] and "built lm-s" in messages[1]


def test_shipping_a_part_that_is_not_built_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="not built in the cache"):
        ship("lm-s", "tiny", tmp_path / "empty")
