"""The embedded synthetic visual world: scenes with ground truth for everything.

Public API: ``WorldConfig`` and ``generate`` write a split to disk; ``vqa_dataset``,
``preference_dataset`` and ``caption_dataset`` load one as ``datasets.Dataset`` objects in
TRL's conversational formats.
"""

from pivotlab.world.generate import SPLITS, GenerateReport, WorldConfig, WorldConfigError, generate
from pivotlab.world.questions import CATEGORIES, NEGATIVE_TYPES, TASK_NAMES

__all__ = [
    "CATEGORIES",
    "NEGATIVE_TYPES",
    "SPLITS",
    "TASK_NAMES",
    "GenerateReport",
    "WorldConfig",
    "WorldConfigError",
    "generate",
]
