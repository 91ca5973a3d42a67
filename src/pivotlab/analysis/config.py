"""A ``pivotlab analyze`` run's settings (the command's options are derived from them) and
the analyses' error. Light (no torch), so the command line can build its options quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pivotlab.analysis import ANALYSES, ENCODER_ANALYSES
from pivotlab.configtree import cli_field
from pivotlab.errors import PivotlabError


class AnalysisError(PivotlabError):
    """An encoder, data folder or option an analysis cannot use; the message is one line."""


def named_source(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare path is named after itself."""
    name, sep, source = text.partition("=")
    return (name, source) if sep and name and "/" not in name else (text, text)


def analyses_named(text: str) -> tuple[str, ...]:
    """The analyses one command-line word asks for: one of ``ANALYSES``, or ``all``."""
    return ANALYSES if text == "all" else (text,)


@dataclass
class AnalyzeConfig:
    """One ``pivotlab analyze`` run; ``encoders`` and ``models`` are (name, source) pairs."""

    analyses: tuple[str, ...] = cli_field(
        "which analysis ('all': every one)",
        positional=True,
        parse=analyses_named,
        metavar="{" + ",".join((*ANALYSES, "all")) + "}",
    )
    data: Path = cli_field("world split the probes are fitted on")
    out: Path = cli_field("run folder (metrics, table, pictures)")
    encoders: list[tuple[str, str]] = cli_field(
        "an encoder: exported folder, MLLM folder, zoo:enc-s, random:<source>; repeatable",
        default=[],
        flag="--encoder",
        metavar="[NAME=]SOURCE",
        parse=named_source,
        repeat=True,
    )
    models: list[tuple[str, str]] = cli_field(
        "a saved MLLM (its encoder is probed too); repeatable",
        default=[],
        flag="--model",
        metavar="[NAME=]DIR",
        parse=named_source,
        repeat=True,
    )
    eval_data: Path | None = cli_field("world split everything is measured on", default=None)
    layer: int = cli_field(
        "encoder hidden state (-1: the layer an MLLM feeds its projector)", default=-1
    )
    pooling: str = cli_field("probe pooling", default="mean", choices=("mean", "cls"))
    projector: bool = cli_field("probe features after the projector", default=False)
    labels: tuple[str, ...] = cli_field(
        "classification labels to probe, comma-separated", default=("shape", "color", "shape_color")
    )
    head: tuple[str, ...] = cli_field(
        "segmentation probe heads, comma-separated: mlp, linear", default=("mlp", "linear")
    )
    epochs: int = cli_field("segmentation probe epochs", default=5)
    limit: int | None = cli_field("items per model analysis (default: all)", default=None)
    permutation_limit: int | None = cli_field(
        "questions the token permutation is scored on (default: --limit); it is cheap per "
        "question and its effect is a few points, so it can afford more",
        default=None,
    )
    seed: int = cli_field("seed of the probes and random inits", default=0)
    teacher: str | None = cli_field("encoder for the layer-wise curve (zoo:vfm)", default=None)
    lm: str | None = cli_field("MLLM whose LM aligns with every --encoder", default=None)
    cache: Path | None = cli_field(
        "feature cache folder (default: $PIVOTLAB_CACHE/features or ~/.cache/pivotlab/features)",
        default=None,
    )

    def __post_init__(self) -> None:
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown:
            raise AnalysisError(
                f"unknown analysis {unknown[0]!r}; expected one of {', '.join(ANALYSES)} or all"
            )
        if not self.encoders and not self.models:
            raise AnalysisError("nothing to analyse: give --encoder or --model")
        counts = {
            "--limit": self.limit,
            "--permutation-limit": self.permutation_limit,
            "--epochs": self.epochs,
        }
        for flag, count in counts.items():
            if count is not None and count < 1:
                raise AnalysisError(f"{flag} must be at least 1, got {count}")
        names = [name for name, _ in self.encoders + self.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise AnalysisError(f"name {repeated[0]!r} is given twice; name each one NAME=PATH")
        if not self.models and not set(self.analyses) & set(ENCODER_ANALYSES):
            raise AnalysisError(
                f"{', '.join(self.analyses)} need(s) an MLLM: give --model (an encoder has no LM)"
            )

        probes_asked = set(self.analyses) & set(ENCODER_ANALYSES)
        if probes_asked and (self.eval_data is None or self.eval_data == self.data):
            raise AnalysisError(
                "probes are fitted on --data and scored on --eval-data: give a different split "
                "(e.g. the test split) as --eval-data"
            )

    @property
    def measured_on(self) -> Path:
        """The split every analysis reports on."""
        return self.eval_data or self.data
