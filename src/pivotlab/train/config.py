"""Stage configs: YAML files with dotted command-line overrides, checked before anything runs.

    pivotlab train --config configs/tiny/post-dpo.yaml --out RUN post.beta=0.2 seed=3

A config is a tree of dataclasses. Loading rejects unknown keys and wrong types with a
one-line message naming the file and the dotted key, so a typo (``post.betta``) never
trains silently with a default. ``trainer:`` passes extra ``TrainingArguments`` / TRL
fields through unchanged (``bf16``, ``deepspeed``, ``gradient_checkpointing``...), so a
TRL user's knobs keep their names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pivotlab.configtree import ConfigError, apply_override, build_dataclass, read_tree
from pivotlab.data.records import POLICIES
from pivotlab.model.parts import ALIGN_HEAD, PARTS
from pivotlab.train.splits import parse_split

STAGES: tuple[str, ...] = ("align", "full", "post")
OBJECTIVES: tuple[str, ...] = ("sft", "dpo", "ipo", "mpo", "grpo")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
SPEEDS: tuple[str, ...] = ("auto", "fast", "stock")  # train/speed.py
# GRPOConfig fields that would decouple generation from the shared schedule of records.
GRPO_SCHEDULE_KEYS: tuple[str, ...] = (
    "num_iterations",
    "steps_per_generation",
    "generation_batch_size",
)

# Parts each stage trains unless the config says otherwise (LLaVA-NeXT / PIVOT recipes).
DEFAULT_PARTS: dict[str, tuple[str, ...]] = {
    "align": ("projector",),
    "full": PARTS,
    "post": PARTS,
}

# TRL's loss list for each preference objective; MPO as TRL's docs express it.
PREFERENCE_LOSSES: dict[str, tuple[list[str], list[float]]] = {
    "dpo": (["sigmoid"], [1.0]),
    "ipo": (["ipo"], [1.0]),
    "mpo": (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),
}


@dataclass
class ModelSection:
    """Where the stage's model comes from: a saved MLLM folder (``init``, e.g. the previous
    stage's ``final/``), or parts to assemble (``vision`` + ``lm``, for the first stage)."""

    init: str | None = None
    vision: str | None = None
    lm: str | None = None
    image_size: int | None = None
    feature_layer: int = -2
    select_strategy: str | None = None


@dataclass
class DataSection:
    """Training and held-out data. A split is a folder, or a mapping of ``WorldConfig``
    fields (``{split: train, n: 2000, size: 64, seed: 0}``) generated into the cache on
    first use. ``limit`` keeps the first N records of a seeded shuffle (the same N for
    every objective). ``turns`` (``full`` only) asks up to that many questions about one
    image in one conversation, as LLaVA's instruction data does.

    A split may also name a dataset, ``{format: llava|mmpr|world, path: ..., images:
    ...}`` (``DatasetSpec``, ``docs/data.md``), checked row by row before training;
    ``on_bad_record`` says what a bad row does: ``fail`` stops the run naming it, ``skip``
    trains without it and lists it in ``RUN/skipped.jsonl``.

    ``train`` and ``eval`` keep what the config wrote (``config.yaml`` shows it); each is
    parsed once, when set, into ``train_split`` / ``eval_split`` (``DataSplit``,
    ``train/splits.py``), which every user of the data reads."""

    train: str | dict[str, Any] | None = None
    eval: str | dict[str, Any] | None = None
    limit: int | None = None
    eval_limit: int | None = 200
    turns: int = 1
    on_bad_record: str = "fail"

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # Parsed on every assignment (the dataclass's __init__ included), so the typed
        # value can never disagree with the one written to config.yaml.
        if name in ("train", "eval"):
            super().__setattr__(f"{name}_split", parse_split(value, f"data.{name}"))


# The formats each stage can read: align needs captions, post needs preference pairs.
STAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "align": ("llava", "world"),
    "full": ("llava", "mmpr", "world"),
    "post": ("mmpr", "world"),
}


@dataclass
class TrainSection:
    """Optimisation. ``batch_size`` is the global batch (per device x accumulation x
    processes); ``lr`` is one rate or one per part (``{vision: 2e-6, projector: 1e-5,
    lm: 1e-5}``); ``steps`` wins over ``epochs``. ``speed`` chooses the SFT objectives'
    exact speed-ups (``auto``: on when training on the CPU; ``fast``; ``stock``: TRL's path;
    ``train/speed.py``)."""

    parts: list[str] | None = None
    lr: float | dict[str, float] = 1e-5
    batch_size: int = 16
    per_device_batch_size: int = 16
    steps: int | None = None
    epochs: float = 1.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = None
    precision: str = "fp32"
    speed: str = "auto"
    logging_steps: int = 10
    save_steps: int | None = None
    save_total_limit: int | None = 2


@dataclass
class OnPolicySection:
    """Preference pairs made from the Stage-1 model's own wrong answers (MPO / RLAIF-V):
    ``samples`` replies per question at ``temperature``; ground truth decides which are
    wrong. ``mix: replace`` trains on on-policy pairs only, ``add`` appends them to the
    world's synthetic pairs."""

    enabled: bool = False
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 16
    questions: int | None = None
    mix: str = "replace"


@dataclass
class GRPOSection:
    """GRPO with verifiable rewards (``post.objective: grpo``, ``docs/train.md``): for each
    prompt, ``num_generations`` replies sampled at ``temperature``, at most
    ``max_completion_length`` tokens each, rewarded by the world's scorer (correctness 1/0),
    plus ``format_weight`` for a multiple-choice reply that names one option, minus
    ``length_penalty`` x (reply tokens / ``max_completion_length``). ``kl_coef`` weighs the
    KL term to the frozen starting model (TRL's ``beta``; 0 loads no reference).

    Defaults: 8 replies per prompt (TRL's default; a group all right or all wrong carries
    no signal, and 8 replies leave few such groups: ``docs/train.md``); temperature 1 (the
    policy as it is, as on-policy pairs sample); 16 tokens (what ``pivotlab evaluate``
    reads); KL 0.04 (DeepSeekMath's GRPO), so the arm stays anchored to the Stage-1 model
    as DPO's is; format 0.1 (a well-formed wrong reply beats a malformed one, never a right
    one); no length penalty (world answers are short)."""

    num_generations: int = 8
    temperature: float = 1.0
    max_completion_length: int = 16
    kl_coef: float = 0.04
    format_weight: float = 0.1
    length_penalty: float = 0.0


@dataclass
class PostSection:
    """Stage-2 objective. ``beta`` for the preference objectives; ``loss_weights``
    overrides the objective's default weights (MPO: 0.8 / 0.2 / 1.0). The preference
    objectives compute each pair's image and prompt once (``prefix_sharing``) and read
    the frozen reference's log-probs from a cache made in one pass (``reference_cache``);
    both give the stock path's numbers (``train/prefix.py``, ``docs/performance.md``).
    ``grpo`` holds the settings of the ``grpo`` objective (``GRPOSection``), which shares
    each prompt across its replies under ``prefix_sharing`` too."""

    objective: str = "dpo"
    beta: float = 0.1
    loss_weights: list[float] | None = None
    on_policy: OnPolicySection = field(default_factory=OnPolicySection)
    prefix_sharing: bool = True
    reference_cache: bool = True
    grpo: GRPOSection = field(default_factory=GRPOSection)


@dataclass
class ViralSection:
    """VIRAL (``docs/train.md``): align the LM's visual tokens at ``layer`` (an index 1..depth,
    or a fraction of depth: 0.5 is the middle) through an MLP head of width ``head_width`` to
    ``teacher``'s patch features (a zoo part, an HF id or folder, or ``self``); the loss is
    added with ``weight``. The head trains at ``lr`` (default: the LM's rate, else the
    stage's largest). ``cache_teacher`` keeps each image's teacher features in memory."""

    enabled: bool = False
    teacher: str = "zoo:vfm"
    layer: float = 0.5
    weight: float = 0.5
    head_width: int = 2048
    lr: float | None = None
    cache_teacher: bool = True


@dataclass
class StageConfig:
    """One training stage: what to train, on what, and how."""

    stage: str = "post"
    seed: int = 0
    run: str | None = None
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    post: PostSection = field(default_factory=PostSection)
    viral: ViralSection = field(default_factory=ViralSection)
    trainer: dict[str, Any] = field(default_factory=dict)

    @property
    def parts(self) -> list[str]:
        """The parts this stage trains (the model's; VIRAL's head comes on top)."""
        return list(self.train.parts or DEFAULT_PARTS[self.stage])

    def learning_rates(self) -> dict[str, float]:
        """A learning rate for every trained part, VIRAL's head included when it is on."""
        rates = self.train.lr
        if isinstance(rates, dict):
            chosen = {part: float(rates[part]) for part in self.parts}
        else:
            chosen = dict.fromkeys(self.parts, float(rates))
        if self.viral.enabled:
            default = chosen.get("lm", max(chosen.values()))
            chosen[ALIGN_HEAD] = self.viral.lr if self.viral.lr is not None else default
        return chosen

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_datasets(cfg: StageConfig, source: str) -> None:
    """Dataset specs that this stage can read, with settings that apply to them."""
    _check_choice(cfg.data.on_bad_record, POLICIES, "data.on_bad_record", source)
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split is None or split.dataset is None:
            continue
        spec, key = split.dataset, split.key
        if spec.format not in STAGE_FORMATS[cfg.stage]:
            raise ConfigError(
                f"{source}: {key} is {spec.format} data; the {cfg.stage} stage reads "
                f"{' or '.join(STAGE_FORMATS[cfg.stage])}"
            )
        if split is cfg.data.train_split and cfg.stage == "post" and cfg.post.on_policy.enabled:
            raise ConfigError(
                f"{source}: post.on_policy samples questions of a world split; name {key} "
                "by folder or world fields, not as a dataset"
            )
        if spec.format == "llava" and cfg.data.turns > 1:
            raise ConfigError(
                f"{source}: data.turns joins world questions; llava rows carry their own turns"
            )


def config_from_dict(tree: dict, source: str = "config") -> StageConfig:
    """A checked ``StageConfig`` from a nested mapping."""
    try:
        cfg = build_dataclass(StageConfig, tree)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    validate(cfg, source)
    return cfg


def load_config(
    path: Path | str | None, overrides: list[str] | tuple[str, ...] = ()
) -> StageConfig:
    """Read a YAML config (or start from defaults) and apply dotted overrides."""
    tree: dict = {}
    source = "command line"
    if path is not None:
        source = str(path)
        tree = read_tree(Path(path))
    for assignment in overrides:
        apply_override(tree, assignment)
    return config_from_dict(tree, source)


def _check_choice(value: str, choices: tuple[str, ...], key: str, source: str) -> None:
    if value not in choices:
        raise ConfigError(f"{source}: {key} is {value!r}; expected one of {', '.join(choices)}")


def _check_positive(value: float | int | None, key: str, source: str) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{source}: {key} must be positive, got {value}")


def validate(cfg: StageConfig, source: str = "config") -> None:
    """Raise ``ConfigError`` for the first value no stage could run with."""
    _check_choice(cfg.stage, STAGES, "stage", source)
    _check_choice(cfg.post.objective, OBJECTIVES, "post.objective", source)
    _check_choice(cfg.train.precision, PRECISIONS, "train.precision", source)
    _check_choice(cfg.train.speed, SPEEDS, "train.speed", source)
    _check_choice(cfg.post.on_policy.mix, ("replace", "add"), "post.on_policy.mix", source)
    for part in cfg.parts:
        _check_choice(part, PARTS, "train.parts", source)
    if isinstance(cfg.train.lr, dict):
        missing = [p for p in cfg.parts if p not in cfg.train.lr]
        if missing:
            raise ConfigError(f"{source}: train.lr has no rate for trained part {missing[0]}")
        for part in cfg.train.lr:
            _check_choice(part, PARTS, "train.lr", source)
    for key in ("batch_size", "per_device_batch_size", "steps", "epochs", "logging_steps"):
        _check_positive(getattr(cfg.train, key), f"train.{key}", source)
    _check_positive(cfg.train.save_steps, "train.save_steps", source)
    if not 0 <= cfg.train.warmup_ratio < 1:
        # transformers reads warmup_steps below 1 as a share of the steps, 1 or more as steps.
        raise ConfigError(
            f"{source}: train.warmup_ratio must be in [0, 1), got {cfg.train.warmup_ratio}"
        )
    _check_positive(cfg.data.limit, "data.limit", source)
    _check_positive(cfg.data.turns, "data.turns", source)
    if cfg.data.turns > 1 and cfg.stage != "full":
        raise ConfigError(f"{source}: data.turns applies to the full stage only")
    _check_positive(cfg.post.beta, "post.beta", source)
    for key in ("layer", "weight", "head_width", "lr"):
        _check_positive(getattr(cfg.viral, key), f"viral.{key}", source)
    if cfg.train.batch_size % cfg.train.per_device_batch_size:
        raise ConfigError(
            f"{source}: train.batch_size {cfg.train.batch_size} is not a multiple of "
            f"train.per_device_batch_size {cfg.train.per_device_batch_size}"
        )
    if cfg.model.init is None and (cfg.model.vision is None or cfg.model.lm is None):
        raise ConfigError(f"{source}: set model.init (a saved MLLM) or model.vision and model.lm")
    if cfg.model.init is not None and (cfg.model.vision or cfg.model.lm):
        raise ConfigError(f"{source}: model.init excludes model.vision and model.lm")
    if cfg.data.train is None:
        raise ConfigError(f"{source}: data.train is required (a split folder or world fields)")
    _check_datasets(cfg, source)
    if cfg.post.objective == "grpo":
        _check_grpo(cfg, source)
    weights = cfg.post.loss_weights
    if weights is not None and cfg.post.objective in PREFERENCE_LOSSES:
        expected = len(PREFERENCE_LOSSES[cfg.post.objective][0])
        if len(weights) != expected:
            raise ConfigError(
                f"{source}: post.loss_weights has {len(weights)} weights; "
                f"{cfg.post.objective} combines {expected} losses"
            )


def _check_grpo(cfg: StageConfig, source: str) -> None:
    """GRPO settings TRL could not run with, named before anything loads."""
    grpo = cfg.post.grpo
    if grpo.num_generations < 2:
        raise ConfigError(
            f"{source}: post.grpo.num_generations must be at least 2 (GRPO's advantage compares "
            f"replies to the same prompt), got {grpo.num_generations}"
        )
    _check_positive(grpo.temperature, "post.grpo.temperature", source)
    _check_positive(grpo.max_completion_length, "post.grpo.max_completion_length", source)
    for key in ("kl_coef", "format_weight", "length_penalty"):
        value = getattr(grpo, key)
        if value < 0:
            raise ConfigError(f"{source}: post.grpo.{key} must be 0 or more, got {value}")
    if cfg.viral.enabled:
        raise ConfigError(f"{source}: viral.enabled is not supported with post.objective grpo")
    for key in GRPO_SCHEDULE_KEYS:
        if key in cfg.trainer and not (key == "num_iterations" and cfg.trainer[key] == 1):
            raise ConfigError(
                f"{source}: trainer.{key} would change which prompts a GRPO step reads; the "
                "stage generates once per optimizer step for that step's records"
            )
    if grpo.kl_coef > 0 and cfg.model.init is None:
        raise ConfigError(
            f"{source}: post.grpo.kl_coef > 0 needs model.init: TRL loads the KL reference "
            "from the starting model's folder"
        )
