"""An evaluation run's settings: the ``pivotlab evaluate`` options are derived from them.

Light (no torch), so the command line can build its options without loading a model library.
"""

from __future__ import annotations

from dataclasses import dataclass

from pivotlab.configtree import cli_field, comma_separated
from pivotlab.errors import PivotlabError


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run; written to ``RUN/config.json``."""

    model: str = cli_field("a saved MLLM folder")
    data: str = cli_field("a world split (or a folder in its format)")
    out: str = cli_field("run folder for predictions and metrics")
    categories: tuple[str, ...] = cli_field(
        "comma-separated categories (default: all)", default=(), parse=comma_separated
    )
    limit: int | None = cli_field("evaluate the first N questions only", default=None)
    batch_size: int = cli_field("questions per batch", default=16)
    max_new_tokens: int = cli_field("generation length", default=16)
    likelihood: bool = cli_field(
        "multiple choice by option log-likelihood instead of generation", default=False
    )
    blind: bool = cli_field("replace every image by a blank (baseline)", default=False)
    seed: int = cli_field("the seed written with every metric row", default=0)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise PivotlabError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise PivotlabError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise PivotlabError(f"limit must be at least 1, got {self.limit}")
