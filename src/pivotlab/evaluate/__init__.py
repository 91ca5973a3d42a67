"""VQA evaluation by category: generation or likelihood, world scoring rules, bootstrap CIs.

The names below are imported on first use, so that the command line can read
``evaluate.config`` (its options) without loading torch.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "config": ("EvalConfig",),
    "metrics": ("accuracy_rows", "bootstrap_interval", "pair_outcomes"),
    "runner": ("EvalReport", "evaluate", "load_items"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"pivotlab.evaluate.{_MODULE_OF[name]}"), name)
