"""How long the rest of a study will take.

``TimeLeft`` guesses the time the steps left will take. A training step's time comes from
the work it plans: its FLOPs (the planner's count for its records, model and trained
parts), at the rate and fixed cost per step fitted to the training steps finished so far
(wall = overhead + FLOPs / rate, least squares). A step run on an earlier seed is taken as
measured; any other step from the finished steps most like it (``estimate_keys``).
Extrapolating from step counts alone was off by a factor of twelve after the first two
steps of the quick study: its Stage 1 is a hundred times the work of a Stage-2 sweep point.

What a person watching the study sees (a log file per step, one live line) is
``pivotlab.console``'s.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pivotlab.study.pipeline import Step

# A step's guess before any step of its kind has finished: what the embedded default (the
# tiny world's models on a laptop CPU) takes, since that is where most studies start. Each
# kind's first finished step replaces it (the quick study's first evaluation is its third
# step); the 60 s, 120 s per evaluation of an earlier version made the estimate after the
# first step three times the truth.
DEFAULT_SECONDS = {
    "train": 60.0,
    "evaluate": 5.0,
    "divergence": 2.0,
    "choose": 1.0,
    "analyze": 45.0,
    "export": 1.0,
}
# A training step's fixed cost (loading, data, held-out evaluation, saving) while the
# finished ones are all of one size, so that the line has only one point to go through.
DEFAULT_OVERHEAD_SECONDS = 5.0


def estimate_keys(step: Step) -> list[str]:
    """What a step's time is guessed from, most specific first: the same step on an earlier
    seed, then finished steps of the same stage and objective on the same model, data size
    and trained parts, then its kind.

    A mean over the kind alone overshot: one long Stage-1 ``full`` made every short
    post-training arm, and every transplant's shorter ``full``, look as long."""
    keys = [re.sub(r"^seed\d+/", "", step.name)]
    if step.config is not None:
        cfg = step.config
        stage = f"post-{cfg.post.objective}" if cfg.stage == "post" else cfg.stage
        size = (cfg.data.limit, cfg.train.epochs, cfg.train.steps, tuple(cfg.parts))
        keys.append(f"{step.kind}:{stage}:{step.architecture}:{size}")
    keys.append(step.kind)
    return keys


def planned_flops(step: Step) -> float | None:
    """A training step's FLOPs as the planner counts them (None for other steps, or when
    the planner cannot count them)."""
    from pivotlab.errors import PivotlabError
    from pivotlab.plan.estimate import PlanOptions, estimate, world_records

    if step.kind != "train" or step.config is None or step.architecture is None:
        return None
    if world_records(step.config) is None:  # counting would mean reading every record
        return None
    vision, lm = step.architecture
    options = PlanOptions(gpus=1, vision=vision, lm=lm)
    try:
        return float(estimate(step.config, options).run_flops)
    except (PivotlabError, OSError):
        return None


class TimeLeft:
    """The time the steps not yet run will take, learnt from the ones that ran."""

    def __init__(self, steps: list[Step]) -> None:
        self.flops = {step.name: planned_flops(step) for step in steps}
        self.walls: dict[str, list[float]] = {}
        self.trained: list[tuple[float, float]] = []  # (planned FLOPs, wall) per training step

    def finished(self, step: Step, wall: float) -> None:
        """Learn from a finished step (run now, or recorded by an earlier run)."""
        for key in estimate_keys(step):
            self.walls.setdefault(key, []).append(wall)
        flops = self.flops.get(step.name)
        if flops is not None:
            self.trained.append((flops, wall))

    def _line(self) -> tuple[float, float] | None:
        """(overhead, seconds per FLOP) of the training steps so far, or None."""
        if not self.trained:
            return None
        flops = [f for f, _ in self.trained]
        walls = [w for _, w in self.trained]
        mean_f, mean_w = sum(flops) / len(flops), sum(walls) / len(walls)
        spread = sum((f - mean_f) ** 2 for f in flops)
        if spread > 0:
            slope = sum((f - mean_f) * (w - mean_w) for f, w in self.trained) / spread
            if slope > 0:
                overhead = max(0.0, mean_w - slope * mean_f)
                return overhead, slope
        # One size of step so far: a default fixed cost, the rest at its rate.
        overhead = min(DEFAULT_OVERHEAD_SECONDS, min(walls) / 2)
        return overhead, max(sum(walls) - overhead * len(walls), 0.0) / max(sum(flops), 1.0)

    def guess(self, step: Step) -> float:
        """The seconds ``step`` will take."""
        keys = estimate_keys(step)
        if seen := self.walls.get(keys[0]):
            return sum(seen) / len(seen)
        flops, line = self.flops.get(step.name), self._line()
        if flops is not None and line is not None:
            overhead, per_flop = line
            return overhead + flops * per_flop
        for key in keys[1:]:
            if seen := self.walls.get(key):
                return sum(seen) / len(seen)
        return DEFAULT_SECONDS[step.kind]

    def left(self, steps: list[Step]) -> float:
        """The seconds ``steps`` will take."""
        return sum(self.guess(step) for step in steps)
