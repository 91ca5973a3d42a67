"""``pivotlab study --dry-run``: check a study and plan its compute without running it.

Every step is built exactly as the real run builds it (so every stage config is loaded and
validated), nothing is generated, downloaded or trained, and each training step is planned
with ``pivotlab.plan`` from configs alone: parameters per part, memory per GPU under each
launch strategy, FLOPs and GPU-hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pivotlab.plan.architectures import PlanError
from pivotlab.plan.estimate import Plan, PlanOptions, estimate, format_plan
from pivotlab.study.config import StudyConfig
from pivotlab.study.pipeline import Step, seed_steps


def _plan(step: Step, options: PlanOptions) -> Plan | str:
    assert step.config is not None and step.architecture is not None
    vision, lm = step.architecture
    try:
        return estimate(step.config, replace(options, vision=vision, lm=lm))
    except PlanError as error:
        return str(error)


def _best_fit(plan: Plan) -> str:
    fitting = [row for row in plan.memory if plan.fits(row)]
    if not fitting:
        return "fits no strategy"
    row = min(fitting, key=lambda r: r.total)
    name = row.strategy + (" +ckpt" if row.checkpointing else "")
    return f"{name} {row.total / 2**30:.1f} GiB"


def _kind(step: Step) -> tuple:
    cfg = step.config
    assert cfg is not None
    return (cfg.stage, cfg.post.objective if cfg.stage == "post" else None, step.architecture)


def dry_run(
    study: StudyConfig, out: Path, options: PlanOptions, log: Callable[[str], None] = print
) -> float:
    """Print the study's steps and the plan of every training step; returns the GPU-hours
    of the steps that could be planned."""
    world = study.world.sections()  # as written: fields stay fields, nothing generated
    steps = [step for seed in study.seeds for step in seed_steps(study, out, seed, world)]
    counts = Counter(step.kind for step in steps)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    log(f"study {study.name}: {len(steps)} steps ({summary}); every stage config is valid")
    shown: set[tuple] = set()
    rows, total = [], 0.0
    for step in steps:
        if step.kind != "train":
            continue
        plan = _plan(step, options)
        if isinstance(plan, str):
            rows.append(f"{step.name:<52} not planned: {plan}")
            continue
        if _kind(step) not in shown:
            shown.add(_kind(step))
            log("\n" + format_plan(plan, step.name))
        total += plan.gpu_hours
        rows.append(
            f"{step.name:<52} {plan.records:>10,} records {plan.steps:>7,} steps "
            f"{plan.run_flops:>10.3g} FLOPs {plan.gpu_hours:>8.2f} GPU-h  {_best_fit(plan)}"
        )
    log("\nevery training step:")
    for row in rows:
        log("  " + row)
    log(
        f"\ntotal {total:.1f} GPU-hours on {options.gpu} at {options.utilisation:.0%} "
        f"utilisation ({total / options.gpus:.1f} h on {options.gpus} GPUs), training steps "
        "only: evaluation and analyses are not planned"
    )
    return total
