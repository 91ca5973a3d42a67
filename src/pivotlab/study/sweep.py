"""Each post arm at its own best learning rate, chosen on the val split.

A swept arm is trained once per rate into ``post/<arm>/lr-<rate>``, every point on the
same records, in the same order, for the same steps; each point is scored on the val
split and its answers' KL from the Stage-1 model measured there. The arm keeps the rate
whose val accuracy in the sweep's category is highest (ties: the lower rate, the one that
moved less), linked as ``post/<arm>/final`` so that every later step (test evaluation,
analyses, transplant) reads the chosen model. The test split is never read to choose.
"""

from __future__ import annotations

import os
from pathlib import Path

from pivotlab.io import read_jsonl
from pivotlab.study.config import StudyError

CHOSEN = "chosen.json"


def rate_label(rate: float) -> str:
    """A sweep point's folder and step name: ``lr-3e-05``."""
    return f"lr-{rate:g}"


def val_accuracy(folder: Path, category: str) -> dict:
    """The accuracy row of ``category`` in an evaluation folder's ``metrics.jsonl``."""
    for row in read_jsonl(folder / "metrics.jsonl"):
        kind = (row.get("metric"), row.get("task"), row.get("category"))
        if kind == ("accuracy", None, category):
            return row
    raise StudyError(f"{folder / 'metrics.jsonl'}: no {category} accuracy to choose a rate by")


def choose_rate(scores: dict[float, float]) -> float:
    """The rate with the highest score; among equal scores the lowest rate."""
    return max(scores, key=lambda rate: (scores[rate], -rate))


def at_edge(rate: float, rates: list[float]) -> bool:
    """Whether ``rate`` is the lowest or highest of a grid of two or more."""
    return len(rates) > 1 and rate in (min(rates), max(rates))


def link_chosen(arm_folder: Path, rate: float) -> Path:
    """Point ``arm_folder/final`` at the chosen point's model (a relative link, so the run
    folder can move); a real folder there (not made by a sweep) is refused, not replaced."""
    final = arm_folder / "final"
    if final.exists() and not final.is_symlink():
        raise StudyError(f"{final} is a folder, not a sweep's link; move it away to rerun")
    if final.is_symlink():
        final.unlink()
    os.symlink(Path(rate_label(rate)) / "final", final, target_is_directory=True)
    return final
