"""The zoos' recipes: looking a zoo up and what building a part takes."""

from __future__ import annotations

import pytest

from pivotlab.zoo.recipes import ZOOS, LMSpec, ZooError, part_cost, zoo_recipe


def test_an_unknown_zoo_is_refused_naming_the_zoos() -> None:
    assert zoo_recipe("tiny") is ZOOS["tiny"]
    with pytest.raises(ZooError, match="unknown zoo 'huge'; zoos are default, tokens16, tiny"):
        zoo_recipe("huge")


def test_the_curriculum_runs_the_mix_the_focus_the_settle_then_the_later_phases() -> None:
    spec = LMSpec(
        width=8, depth=1, heads=1, kv_heads=1, steps=5, focus_tasks=("relation",),
        focus_steps=3, settle_steps=2, later_phases=((("exists",), 4), ((), 1)),
    )  # fmt: skip
    assert spec.phases() == [((), 5), (("relation",), 3), ((), 2), (("exists",), 4), ((), 1)]
    assert LMSpec(width=8, depth=1, heads=1, kv_heads=1, steps=5).phases() == [((), 5)]


def test_the_cost_of_a_part_counts_every_phase_of_its_curriculum() -> None:
    spec = ZOOS["default"].parts["lm-s"]
    phases = spec.steps + spec.focus_steps + spec.settle_steps  # type: ignore[union-attr]
    assert phases > spec.steps
    assert part_cost(ZOOS["default"], "lm-s") == f"{phases:,d} optimizer steps"
    later = sum(s for _, s in ZOOS["tiny"].parts["lm-s"].phases())  # type: ignore[union-attr]
    assert part_cost(ZOOS["tiny"], "lm-s") == f"{later:,d} optimizer steps"
    assert part_cost(ZOOS["default"], "enc-s") == "6,000 optimizer steps"
