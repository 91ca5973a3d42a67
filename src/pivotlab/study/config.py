"""Study presets: one YAML file names the world, the stage recipes, the arms and the axes.

    pivotlab study --preset quick --out RUN [key=value ...]

A preset is ``configs/study/<name>.yaml`` (or any YAML path). Stage recipes are the same
stage configs ``pivotlab train`` reads (paths relative to the preset's ``configs/``
folder), with dotted overrides per use, so a study never forks a recipe. Loading
rejects unknown keys and wrong types with the file and the dotted key, like stage configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pivotlab.analysis import LINEAR_PROBE
from pivotlab.configtree import ConfigError, apply_override, build_dataclass
from pivotlab.errors import PivotlabError
from pivotlab.model.parts import PARTS
from pivotlab.study.presets import known_presets, preset_roots


class StudyError(PivotlabError):
    """A study that cannot run as configured; the message is one line."""


@dataclass
class WorldSection:
    """World splits as ``WorldConfig`` fields (or split folders): Stage 1's training
    questions (``train``), the held-out loss's and the sweep's questions (``val``), the test
    questions every model is scored on (``test``), the analysis probes' training images
    (``probes``), and, when Stage 2 learns from records of its own (PIVOT's Stage 2 reads
    preference data Stage 1 never trained on), the post arms' training split (``post``;
    unset, the arms read ``train``)."""

    train: str | dict[str, Any] = field(default_factory=dict)
    val: str | dict[str, Any] = field(default_factory=dict)
    test: str | dict[str, Any] = field(default_factory=dict)
    probes: str | dict[str, Any] = field(default_factory=dict)
    post: str | dict[str, Any] = field(default_factory=dict)

    def sections(self) -> dict[str, str | dict[str, Any]]:
        """The splits the study names, by section."""
        named = {
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "probes": self.probes,
            "post": self.post,
        }
        return {key: value for key, value in named.items() if value}


@dataclass
class Recipe:
    """A stage config file and the overrides this study applies to it."""

    config: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class Stage1Section:
    """Stage 1's parts and recipes. ``seed``: None trains a Stage-1 model per study seed;
    a number trains one, with that seed, that every seed's arms start from (PIVOT's
    controlled design: the seeds then vary Stage 2 and the transplant only)."""

    seed: int | None = None
    vision: str = "zoo:enc-s"
    lm: str = "zoo:lm-s"
    align: Recipe = field(default_factory=Recipe)
    full: Recipe = field(default_factory=Recipe)


@dataclass
class RateSweep:
    """Each listed arm trained at every rate of ``rates`` (the same records, order and
    steps at each), scored on the val split, and kept at the rate whose ``category``
    accuracy on val is highest (ties: the lower rate); the test split is never read to
    choose. ``arms``: None sweeps every arm. ``ratio``: each part's rate as a multiple of
    the swept one (Stage 1's ratio, ``{vision: 0.5, projector: 10, lm: 1}``, keeps the
    projector ten times faster than the LM); None: one rate for every part."""

    rates: list[float] = field(default_factory=list)
    arms: list[str] | None = None
    category: str = "vision_centric"
    ratio: dict[str, float] | None = None

    def learning_rates(self, rate: float) -> float | dict[str, float]:
        """A point's ``train.lr``: the rate itself, or one rate per part in ``ratio``."""
        if self.ratio is None:
            return rate
        return {part: rate * multiple for part, multiple in self.ratio.items()}

    def describe(self) -> str:
        """How a point's rate reaches the parts, for the report."""
        if self.ratio is None:
            return "train.lr, every part"
        parts = ", ".join(f"{part} {multiple:g}x" for part, multiple in self.ratio.items())
        return f"train.lr per part: {parts} the rate"


@dataclass
class PostSection:
    """Stage-2 arms: name -> recipe. Every arm reads the same records from the same
    Stage-1 model; ``baseline`` is the arm the claims compare the others with."""

    arms: dict[str, Recipe] = field(default_factory=dict)
    baseline: str = "sft"
    compared: list[str] | None = None  # arms the default claims pit against the baseline
    sweep: RateSweep | None = None  # each arm at its own best rate, chosen on val

    def swept_arms(self) -> list[str]:
        """The arms whose rate the sweep chooses (none without a sweep)."""
        if self.sweep is None:
            return []
        return list(self.arms) if self.sweep.arms is None else list(self.sweep.arms)

    def compared_arms(self) -> list[str]:
        """The arms of the default claims: ``compared``, else every arm but the baseline."""
        if self.compared is not None:
            return list(self.compared)
        return [arm for arm in self.arms if arm != self.baseline]


@dataclass
class EvaluateSection:
    """VQA of every model (the first ``limit`` questions of a split), the blind baseline,
    and each arm's answers' KL from Stage 1 on the first ``kl_limit`` val questions (a mean
    over 500 answers is already tight, and the sweep measures it for every point)."""

    limit: int | None = None
    batch_size: int = 32
    blind: bool = True
    kl_limit: int | None = 500


@dataclass
class AnalysisSection:
    """The analyses run on every model, on the first ``limit`` test items (the token
    permutation on the first ``permutation_limit`` questions, when set)."""

    analyses: list[str] = field(default_factory=list)
    limit: int | None = None
    permutation_limit: int | None = None


@dataclass
class TransplantControl:
    """The transplant's positive control: two encoders whose order is known, ``stronger``
    ahead of ``weaker``. Each side names a transplanted encoder (``stage1``, an arm, an
    original by its name) or a vision source (``zoo:enc-s-2k``) transplanted for the
    control alone. With ``stage1``, the study also trains Stage 1 (with the transplant's
    LM) on each side that has no such Stage-1 model, so that their gap there, on the same
    test questions, is the known one; without it, ``known`` says where it was measured.
    ``category`` is what both gaps are read on: a VQA category, or ``average`` (the macro
    average over categories, every test question counted). The transplant must find the
    order with an interval above zero before its claims are read as measuring encoders."""

    weaker: str = ""
    stronger: str = ""
    known: str = ""
    stage1: bool = False
    category: str = "vision_centric"


@dataclass
class TransplantSection:
    """PIVOT's step 6: each encoder, frozen, into a fresh ``lm`` with a new projector:
    the study's own encoders, and the ``originals`` (vision sources such as ``zoo:enc-s``,
    named by the text after ``zoo:``) for comparison. ``encoders`` picks which of the
    study's own encoders (``stage1`` and arm names) are transplanted; None takes them all."""

    lm: str = "zoo:lm-s"
    encoders: list[str] | None = None
    originals: list[str] = field(default_factory=list)
    align: Recipe = field(default_factory=Recipe)
    full: Recipe = field(default_factory=Recipe)
    control: TransplantControl | None = None


@dataclass
class ScaleSweep:
    """Stage 1 and the listed arms again for every other (vision, lm) pair: does the
    arms' order hold at every scale, and does a larger LM head train a better encoder?
    ``seeds`` limits the sweep's arms to some of the study's seeds (None: every seed)."""

    visions: list[str] = field(default_factory=list)
    lms: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=lambda: ["sft", "dpo"])
    analyses: list[str] = field(default_factory=lambda: [LINEAR_PROBE])
    seeds: list[int] | None = None


@dataclass
class SweepsSection:
    scale: ScaleSweep | None = None


@dataclass
class ClaimSection:
    """A claim beyond the default ones: ``treated`` beats ``control`` on ``category``
    (e.g. the data-efficiency arms: DPO with N pairs against SFT with k x N samples)."""

    question: str = ""
    control: str = ""
    treated: str = ""
    category: str = "vision_centric"
    transplant: bool = False


@dataclass
class PaperEffect:
    """What a paper reports for one of the study's claims: ``effect``, a difference on the
    claim's own scale (accuracies as fractions: +4.2 points is 0.042), and ``source`` (paper,
    table, row), shown beside the study's own answer."""

    effect: float = 0.0
    source: str = ""


@dataclass
class StudyConfig:
    """One study: everything ``pivotlab study`` runs, in one tree."""

    name: str = "study"
    seeds: list[int] = field(default_factory=lambda: [0])
    world: WorldSection = field(default_factory=WorldSection)
    stage1: Stage1Section = field(default_factory=Stage1Section)
    post: PostSection = field(default_factory=PostSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    transplant: TransplantSection | None = None
    sweeps: SweepsSection = field(default_factory=SweepsSection)
    claims: list[ClaimSection] = field(default_factory=list)
    # The pre-registered primary claims by comparison ("dpo - sft (VQA)"), decided together
    # with Holm's correction; the rest are exploratory. None: the default set
    # (study/claims.py).
    primary: list[str] | None = None
    # What the papers report for some claims, by comparison, shown beside each answer.
    paper: dict[str, PaperEffect] = field(default_factory=dict)
    # Analysis measurements the world makes uninformative (a measurement as the report names
    # it, "saliency, projector_grad, energy_minus_centre", or part of one: "minus_centre")
    # -> why; the report lists them with the reason instead of showing their rows as results.
    not_measurable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_path(preset: str) -> Path:
    """A preset name (``quick``) or a YAML path, as a file that exists."""
    candidate = Path(preset).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise StudyError(f"{candidate}: no such study preset file")
        return candidate
    for root in preset_roots():
        if (root / f"{preset}.yaml").is_file():
            return root / f"{preset}.yaml"
    known = ", ".join(known_presets()) or "none found"
    raise StudyError(f"unknown study preset {preset!r}; known: {known}")


def recipe_path(study: StudyConfig, recipe: Recipe, key: str) -> Path:
    """A recipe's stage config, relative to the ``configs/`` folder holding the preset."""
    path = Path(recipe.config)
    if not path.is_absolute():
        path = Path(study.source).resolve().parent.parent / path
    if not path.is_file():
        raise StudyError(f"{study.source}: {key}.config {recipe.config} is not a file")
    return path


def _validate(study: StudyConfig) -> None:
    where = study.source
    if not study.seeds:
        raise StudyError(f"{where}: seeds must list at least one seed")
    if len(set(study.seeds)) != len(study.seeds):
        raise StudyError(f"{where}: seeds repeat a seed ({study.seeds})")
    if study.stage1.seed is not None and study.stage1.seed != study.seeds[0]:
        raise StudyError(f"{where}: stage1.seed must be the first of seeds ({study.seeds[0]})")
    if not study.post.arms:
        raise StudyError(f"{where}: post.arms must name at least one arm")
    unknown = [arm for arm in study.post.compared or [] if arm not in study.post.arms]
    if unknown:
        raise StudyError(f"{where}: post.compared names {unknown[0]!r}, not a post arm")
    if study.post.baseline not in study.post.arms:
        raise StudyError(f"{where}: post.baseline {study.post.baseline!r} is not an arm")
    for name in study.post.arms:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise StudyError(f"{where}: arm name {name!r} must be letters, digits, - or _")
    for key, recipe in _recipes(study):
        recipe_path(study, recipe, key)
    counts = {
        "analysis.limit": study.analysis.limit,
        "analysis.permutation_limit": study.analysis.permutation_limit,
        "evaluate.limit": study.evaluate.limit,
        "evaluate.kl_limit": study.evaluate.kl_limit,
    }
    for key, count in counts.items():
        if count is not None and count < 1:
            raise StudyError(
                f"{where}: {key} must be at least 1 (or null: every item), got {count}"
            )
    _validate_sweep(study)
    scale = study.sweeps.scale
    missing = [arm for arm in (scale.arms if scale else []) if arm not in study.post.arms]
    if missing:
        raise StudyError(f"{where}: sweeps.scale.arms names {missing[0]!r}, not a post arm")
    sweep_seeds = (scale.seeds if scale else None) or []
    strays = [seed for seed in sweep_seeds if seed not in study.seeds]
    if strays:
        raise StudyError(f"{where}: sweeps.scale.seeds names {strays[0]}, not a study seed")
    shared = study.stage1.seed
    if scale and scale.seeds is not None and shared is not None and shared not in scale.seeds:
        raise StudyError(f"{where}: sweeps.scale.seeds must include stage1.seed ({shared})")
    own = {"stage1", *study.post.arms}
    transplanted = study.transplant.encoders if study.transplant else None
    unknown = [name for name in transplanted or [] if name not in own]
    if unknown:
        raise StudyError(
            f"{where}: transplant.encoders names {unknown[0]!r}, not stage1 or a post arm"
        )
    for number, claim in enumerate(study.claims):
        for side in ("control", "treated"):
            if getattr(claim, side) not in study.post.arms:
                raise StudyError(
                    f"{where}: claims[{number}].{side} {getattr(claim, side)!r} is not a post arm"
                )


def _validate_sweep(study: StudyConfig) -> None:
    sweep, where = study.post.sweep, study.source
    if sweep is None:
        return
    if not sweep.rates:
        raise StudyError(f"{where}: post.sweep.rates must list at least one rate")
    if any(rate <= 0 for rate in sweep.rates) or len(set(sweep.rates)) != len(sweep.rates):
        raise StudyError(f"{where}: post.sweep.rates must be distinct and positive")
    unknown = [arm for arm in sweep.arms or [] if arm not in study.post.arms]
    if unknown:
        raise StudyError(f"{where}: post.sweep.arms names {unknown[0]!r}, not a post arm")
    if sweep.ratio is not None:
        strays = [part for part in sweep.ratio if part not in PARTS]
        if strays:
            raise StudyError(
                f"{where}: post.sweep.ratio names {strays[0]!r}, not a part ({', '.join(PARTS)})"
            )
        if not sweep.ratio or any(multiple <= 0 for multiple in sweep.ratio.values()):
            raise StudyError(f"{where}: post.sweep.ratio must give each part a positive multiple")
    if not study.world.val:
        raise StudyError(f"{where}: post.sweep chooses rates on the val split: set world.val")


def _recipes(study: StudyConfig) -> list[tuple[str, Recipe]]:
    recipes = [("stage1.align", study.stage1.align), ("stage1.full", study.stage1.full)]
    recipes += [(f"post.arms.{name}", r) for name, r in study.post.arms.items()]
    if study.transplant is not None:
        recipes += [("transplant.align", study.transplant.align)]
        recipes += [("transplant.full", study.transplant.full)]
    return recipes


def load_study(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a preset and apply dotted overrides; checked before anything runs."""
    path = preset_path(preset)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise StudyError(f"{path}: is not valid YAML") from None
    if not isinstance(tree, dict):
        raise StudyError(f"{path}: the top level must be a mapping of sections")
    try:
        for assignment in overrides:
            apply_override(tree, assignment)
        study = build_dataclass(StudyConfig, tree, "")
    except ConfigError as error:
        raise StudyError(f"{path}: {error}") from None
    study.source = str(path)
    _validate(study)
    return study
