"""``pivotlab study --dry-run``: every step built, every training step planned, nothing run."""

from __future__ import annotations

from pathlib import Path

from pivotlab.plan.estimate import PlanOptions
from pivotlab.study.config import load_study
from pivotlab.study.dryrun import dry_run


def test_paper_preset_dry_run_plans_every_training_step(tmp_path: Path) -> None:
    lines: list[str] = []
    study = load_study("paper")
    hours = dry_run(study, tmp_path / "run", PlanOptions(), lines.append)
    planned = [line for line in lines[-1 - 32 : -1] if "GPU-h" in line]
    assert len(planned) == 2 + 3 * (2 + 2 * 4)  # Stage 1 once; per seed 2 arms + 4 transplants
    assert not any("not planned:" in line for line in lines)
    assert 50 < hours < 200  # the recorded estimate is 94.8 GPU-hours (docs/study.md)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
