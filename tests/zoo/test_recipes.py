"""The zoos' recipes: looking a zoo up and what building a part takes."""

from __future__ import annotations

import pytest

from pivotlab.zoo.recipes import ZOOS, ZooError, part_cost, zoo_recipe


def test_an_unknown_zoo_is_refused_naming_the_zoos() -> None:
    assert zoo_recipe("tiny") is ZOOS["tiny"]
    with pytest.raises(ZooError, match="unknown zoo 'huge'; zoos are default, tokens16, tiny"):
        zoo_recipe("huge")


def test_the_cost_of_a_part_counts_every_phase_of_its_curriculum() -> None:
    spec = ZOOS["default"].parts["lm-s"]
    phases = spec.steps + spec.focus_steps + spec.settle_steps  # type: ignore[union-attr]
    assert phases > spec.steps
    assert part_cost(ZOOS["default"], "lm-s") == f"{phases:,d} optimizer steps"
    assert part_cost(ZOOS["default"], "enc-s") == "6,000 optimizer steps"
