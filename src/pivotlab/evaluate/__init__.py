"""VQA evaluation by category: generation or likelihood, world scoring rules, bootstrap CIs.

The names below are imported on first use, so that the command line can read
``evaluate.config`` (its options) without loading torch.
"""

from pivotlab.lazy import lazy_exports

_HOMES = {
    "config": ("EvalConfig",),
    "metrics": ("accuracy_rows", "bootstrap_interval", "pair_outcomes"),
    "runner": ("EvalReport", "evaluate", "load_items"),
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
