"""VQA evaluation by category: generation or likelihood, world scoring rules, bootstrap CIs."""

from pivotlab.evaluate.metrics import accuracy_rows, bootstrap_interval, pair_outcomes
from pivotlab.evaluate.runner import EvalConfig, EvalReport, evaluate, load_items

__all__ = [
    "EvalConfig",
    "EvalReport",
    "accuracy_rows",
    "bootstrap_interval",
    "evaluate",
    "load_items",
    "pair_outcomes",
]
