"""The study's console: one line per step, each step's output in its own log, the time left."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.study.config import load_study
from pivotlab.study.ledger import Ledger
from pivotlab.study.pipeline import Step, run_steps, seed_steps
from pivotlab.study.progress import TimeLeft


def _step(name: str, action) -> Step:
    return Step(name=name, kind="choose", spec={"name": name}, outputs=[], action=action)


def test_run_steps_keeps_the_console_to_one_line_per_step(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    def noisy() -> dict:
        print("{'loss': '0.71', 'grad_norm': '1.3'}")
        return {}

    lines: list[str] = []
    run_steps([_step("seed0/noisy", noisy)], Ledger(tmp_path / "run"), lines.append, tmp_path)
    assert lines == ["[1/1] seed0/noisy: done in 0m00s (elapsed 0m00s, about 0m00s left)"]
    assert "loss" not in capfd.readouterr().out
    assert "'loss'" in (tmp_path / "seed0--noisy.log").read_text()


def test_a_failing_step_says_where_its_output_is(tmp_path: Path) -> None:
    def broken() -> dict:
        print("what went wrong, in detail")
        raise RuntimeError("broken")

    lines: list[str] = []
    with pytest.raises(RuntimeError, match="broken"):
        run_steps([_step("seed0/x", broken)], Ledger(tmp_path / "run"), lines.append, tmp_path)
    log = tmp_path / "seed0--x.log"
    assert lines == [f"[1/1] seed0/x: failed; what it printed is in {log}"]
    assert "what went wrong" in log.read_text()


def test_a_training_step_is_guessed_from_its_planned_flops(tmp_path: Path) -> None:
    """After Stage 1's align and full, a Stage-2 sweep point (a small fraction of the
    work) is guessed from the FLOPs line through them, not from their mean."""
    study = load_study("quick")
    steps = {s.name: s for s in seed_steps(study, tmp_path, 0, study.world.sections())}
    names = ("seed0/align", "seed0/full", "seed0/post-sft/lr-1e-05")
    align, full, point = (steps[n] for n in names)
    time_left = TimeLeft([align, full, point])
    time_left.flops.update({align.name: 1e12, full.name: 1e14, point.name: 2e12})
    time_left.finished(align, 17.0)
    time_left.finished(full, 182.0)
    # The line through (1e12, 17 s) and (1e14, 182 s): 15.3 s + 1.67 s per 1e12 FLOPs.
    assert time_left.guess(point) == pytest.approx(15.33 + 2 * 1.667, abs=0.05)
    time_left.finished(point, 9.0)  # the same point on a later seed is taken as measured
    later = _step("seed1/post-sft/lr-1e-05", dict)
    assert time_left.guess(later) == 9.0


def test_planned_flops_come_from_the_split_a_step_reads(small_split: Path, tmp_path) -> None:
    from pivotlab.study.progress import planned_flops

    study = load_study("quick", [f"world.train={small_split}", f"world.post={small_split}"])
    world = {**study.world.sections(), "train": small_split, "post": small_split}
    steps = {s.name: s for s in seed_steps(study, tmp_path, 0, world)}
    full, point = steps["seed0/full"], steps["seed0/post-sft/lr-1e-05"]
    full_flops, point_flops = planned_flops(full), planned_flops(point)
    assert full_flops is not None and full_flops > 0
    assert point_flops is not None and point_flops > 0
    assert planned_flops(steps["seed0/eval-stage1"]) is None


def test_with_one_size_of_step_seen_a_fixed_cost_is_assumed(tmp_path: Path) -> None:
    """After Stage 1's align alone, its 17 s are 5 s of fixed cost and 12 s of work: a step
    of ten times the FLOPs is guessed at 5 + 120 s, not 170."""
    study = load_study("quick")
    steps = {s.name: s for s in seed_steps(study, tmp_path, 0, study.world.sections())}
    align, full = steps["seed0/align"], steps["seed0/full"]
    time_left = TimeLeft([align, full])
    time_left.flops.update({align.name: 1e12, full.name: 1e13})
    time_left.finished(align, 17.0)
    assert time_left.guess(full) == pytest.approx(125.0)
