"""Plan a stage on a cluster before booking it: parameters per part, memory per GPU under
DDP / ZeRO-2 / ZeRO-3 / FSDP2, FLOPs per step and per run, GPU-hours; no weights loaded.

    from pivotlab.plan import PlanOptions, estimate, format_plan
    print(format_plan(estimate(load_config("configs/paper/post-dpo.yaml"), PlanOptions(gpus=8))))

Formulas and assumptions: ``docs/scale.md``.
"""

from pivotlab.plan.architectures import PUBLISHED, Architecture, PlanError, architecture
from pivotlab.plan.estimate import GPUS, Plan, PlanOptions, estimate, format_plan

__all__ = [
    "GPUS",
    "PUBLISHED",
    "Architecture",
    "Plan",
    "PlanError",
    "PlanOptions",
    "architecture",
    "estimate",
    "format_plan",
]
