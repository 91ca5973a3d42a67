"""The zoo's training loop: which symbolic conversations a phase draws, and how often."""

from __future__ import annotations

import pytest


def test_task_balanced_weights_draw_every_task_equally_often() -> None:
    import torch

    from pivotlab.zoo.pretraining import SymbolicSet
    from pivotlab.zoo.train import task_balanced_weights

    tasks = [["count"]] * 6 + [["relation"]] * 2 + [["color", "shape"]]  # first question's task
    weights = task_balanced_weights(SymbolicSet([], [], [], tasks))
    per_task = {
        t: float(sum(w for w, ts in zip(weights, tasks, strict=True) if ts[0] == t))
        for t in ("count", "relation", "color")
    }
    assert per_task == pytest.approx({"count": 1.0, "relation": 1.0, "color": 1.0})
    assert torch.equal(weights[:6], torch.full((6,), 1 / 6))


def test_focus_weights_keep_only_the_focus_tasks_and_phases_add_up() -> None:
    from pivotlab.zoo.pretraining import SymbolicSet
    from pivotlab.zoo.train import Compute, add_computes, focus_weights

    tasks = [["count"], ["relation"], ["relation", "count"], ["color"]]
    weights = focus_weights(SymbolicSet([], [], [], tasks), ("relation",))
    assert weights.tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="no symbolic conversation asks front"):
        focus_weights(SymbolicSet([], [], [], tasks), ("front",))
    total = add_computes([Compute(6, 384, 1e9, 10.0, 0.5), Compute(2, 128, 3e8, 3.0, 0.2)])
    assert total == Compute(8, 512, 1.3e9, 13.0, 0.2)
