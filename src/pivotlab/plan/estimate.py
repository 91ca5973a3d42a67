"""``pivotlab plan``: what a stage config will need on a cluster, before any GPU is booked.

    plan = estimate(load_config("configs/paper/post-dpo.yaml"), PlanOptions(gpus=8))
    print(format_plan(plan))

Parameters per part come from the architecture (``architectures.py``, ``shapes.py``),
FLOPs from ``flops.py``, memory from ``memory.py``; the run's length from the stage's own
step rule (``train.stage_data.optimizer_steps``) over the record count. Token counts per
sequence are assumptions (``DEFAULT_TOKENS``, or ``--prompt-tokens``/``--completion-tokens``);
every assumption is printed with the plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

from transformers import PretrainedConfig

from pivotlab.model.parts import ALIGN_HEAD
from pivotlab.plan.architectures import Architecture, PlanError, architecture, teacher_config
from pivotlab.plan.flops import Flops, Sequence, count, mllm_ops, teacher_ops
from pivotlab.plan.memory import (
    HEADROOM,
    STRATEGIES,
    Counts,
    GiB,
    Memory,
    activation_bytes,
    memory,
)
from pivotlab.plan.shapes import (
    head_parameters,
    lm_shape,
    projector_parameters,
    used_blocks,
    vision_shape,
)
from pivotlab.train.config import PREFERENCE_LOSSES, StageConfig
from pivotlab.train.stage_data import optimizer_steps, resolve_split, stage_records
from pivotlab.world.hf import conversations


@dataclass(frozen=True)
class Gpu:
    """A GPU's dense peak throughput (FLOP/s) in 16-bit and in fp32, and its memory."""

    name: str
    peak_16bit: float
    peak_fp32: float
    memory_gib: float
    source: str


# Dense (no sparsity) tensor-core peaks; fp32 is the non-tensor-core rate PyTorch uses
# unless TF32 is switched on.
GPUS: dict[str, Gpu] = {
    "h100": Gpu("H100 SXM", 989e12, 67e12, 80, "NVIDIA H100 Tensor Core GPU datasheet (SXM5)"),
    "h200": Gpu("H200 SXM", 989e12, 67e12, 141, "NVIDIA H200 Tensor Core GPU datasheet"),
    "a100": Gpu("A100 SXM", 312e12, 19.5e12, 80, "NVIDIA A100 Tensor Core GPU datasheet"),
}

# Text tokens per sequence (prompt, supervised completion) when not told: round figures for
# the paper's data, not measurements. align: the plain template's prompt is the image alone,
# a BLIP caption and EOS fit in 32; full: a LLaVA-style question and answer; post: an MMPR
# question and a reasoning answer (PIVOT keeps question + chosen <= 1500 Qwen tokens).
DEFAULT_TOKENS: dict[str, tuple[int, int]] = {
    "align": (0, 32),
    "full": (64, 192),
    "post": (64, 256),
}


def local_launch() -> tuple[int, str]:
    """What this machine would launch: its CUDA devices (or one process without any) and
    their kind when ``GPUS`` knows it, else ``h100`` as the reference kind."""
    import torch

    if not torch.cuda.is_available():
        return 1, "h100"
    name = torch.cuda.get_device_name(0).lower()
    kind = next((key for key in GPUS if key in name), "h100")
    return torch.cuda.device_count(), kind


@dataclass(frozen=True)
class PlanOptions:
    """The cluster and the assumptions a plan is made for."""

    gpus: int = 8
    gpu: str = "h100"
    gpu_memory: float | None = None  # GiB per GPU; default the GPU's own
    utilisation: float = 0.4  # model-FLOPs utilisation
    records: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    vision: str | None = None
    lm: str | None = None


@dataclass(frozen=True)
class PartCount:
    """One row of the parameters table."""

    part: str
    parameters: int
    trainable: int


@dataclass
class Plan:
    """Everything ``pivotlab plan`` prints; ``format_plan`` renders it."""

    stage: str
    objective: str | None
    sources: dict[str, str]
    parts: list[PartCount]
    reference_parameters: int
    teacher_parameters: int
    sequence: Sequence
    image_tokens: int
    sequences_per_sample: int
    records: int
    records_source: str
    steps: int
    batch_size: int
    per_device_batch_size: int
    sample: Flops  # one record: the policy's forward and backward, plus frozen forwards
    policy: Flops  # one record: the trained model alone
    frozen_forward: int  # one record: reference and teacher forwards
    gpu: Gpu
    gpus: int
    utilisation: float
    precision: str
    memory: list[Memory]
    memory_limit: int
    checkpointing: bool  # the config asks for activation checkpointing
    host_load_bytes: int
    teacher_cache_bytes: int
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def step_flops(self) -> int:
        return self.sample.total * self.batch_size

    @property
    def run_flops(self) -> int:
        return self.step_flops * self.steps

    @property
    def peak(self) -> float:
        return self.gpu.peak_fp32 if self.precision == "fp32" else self.gpu.peak_16bit

    @property
    def gpu_hours(self) -> float:
        return self.run_flops / (self.peak * self.utilisation) / 3600

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus

    def fits(self, row: Memory) -> bool:
        return row.total <= self.memory_limit


# Where a world split's manifest counts each stage's records.
_WORLD_COUNTS = {"align": ("probes", "captions"), "full": ("questions",), "post": ("preferences",)}


def world_records(cfg: StageConfig) -> int | None:
    """The records a stage finds in its world split, from the split's manifest (nothing
    else read); None for a dataset, a split not generated yet, or conversations of several
    questions, which only reading the records counts."""
    folder = cfg.data.train_split.folder if cfg.data.train_split is not None else None
    if folder is None or cfg.data.turns != 1:
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        counts = manifest["counts"] if manifest.get("generator") == "pivotlab.world" else None
        for key in _WORLD_COUNTS[cfg.stage]:
            counts = counts[key]  # type: ignore[index]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return counts if isinstance(counts, int) else None


def _records(cfg: StageConfig, options: PlanOptions) -> tuple[int, str]:
    """How many records the stage trains on, and how that was found."""
    if options.records is not None:
        return options.records, "--records"
    train = cfg.data.train_split
    if train is not None and train.folder is not None:
        split = resolve_split(train)
        found = world_records(cfg)
        if found is None:
            found = len(conversations(stage_records(cfg, split), cfg.data.turns))
        kept = min(found, cfg.data.limit or found)
        return kept, f"{split.path}: {found} records, data.limit {cfg.data.limit}"
    if cfg.data.limit is not None:
        return cfg.data.limit, "data.limit; assumes the split holds at least that many"
    named = "a dataset" if train is not None and train.dataset is not None else "world fields"
    raise PlanError(
        f"data.train names {named}, not a split folder: its record count is known only "
        "after it is generated or checked; pass --records N (or set data.limit)"
    )


def _sequence(cfg: StageConfig, options: PlanOptions) -> tuple[Sequence, list[str]]:
    prompt, completion = DEFAULT_TOKENS[cfg.stage]
    notes = []
    if options.prompt_tokens is None or options.completion_tokens is None:
        notes.append(
            f"text tokens per sequence assumed for the {cfg.stage} stage: prompt {prompt}, "
            f"completion {completion} (set --prompt-tokens / --completion-tokens)"
        )
    prompt = prompt if options.prompt_tokens is None else options.prompt_tokens
    completion = completion if options.completion_tokens is None else options.completion_tokens
    return Sequence(prompt, completion), notes


def _part_counts(arch: Architecture, trainable: set[str], head: int) -> list[PartCount]:
    sizes = {
        "vision": vision_shape(arch.vision).parameters,
        "projector": projector_parameters(arch.vision.hidden_size, arch.text.hidden_size),
        "lm": lm_shape(arch.text).parameters,
    }
    if head:
        sizes[ALIGN_HEAD] = head
    return [PartCount(p, n, n if p in trainable else 0) for p, n in sizes.items()]


def _unreached(arch: Architecture) -> int:
    tower = vision_shape(arch.vision)
    return tower.unreached(used_blocks(arch.vision, arch.feature_layer))


def _checkpointing(cfg: StageConfig) -> bool:
    trainer = cfg.trainer
    return bool(trainer.get("activation_checkpointing", trainer.get("gradient_checkpointing")))


def _memory_rows(
    arch: Architecture,
    sequence: Sequence,
    trainable: set[str],
    counts: Counts,
    per_device_sequences: int,
    gpus: int,
    low: int,
) -> list[Memory]:
    rows = []
    for strategy in STRATEGIES:
        for checkpointing in (False, True):
            saved = activation_bytes(arch, sequence, trainable, low, checkpointing)
            rows.append(
                memory(strategy, counts, gpus, low, saved * per_device_sequences, checkpointing)
            )
    return rows


@dataclass(frozen=True)
class _Viral:
    """VIRAL's additions to a stage: the frozen teacher's config and the head's size."""

    teacher: PretrainedConfig
    source: str
    head: int

    def cache_bytes(self, arch: Architecture, records: int) -> int:
        """Host memory the teacher cache reaches: every image's grid of fp32 features."""
        side = arch.vision.image_size // arch.vision.patch_size
        return records * side * side * self.teacher.hidden_size * 4


def _viral(cfg: StageConfig, arch: Architecture) -> _Viral | None:
    if not cfg.viral.enabled:
        return None
    teacher, source = teacher_config(cfg.viral.teacher, arch.vision)
    head = head_parameters(arch.text.hidden_size, cfg.viral.head_width, teacher.hidden_size)
    return _Viral(teacher, source, head)


def _frozen_forward(
    arch: Architecture, sequence: Sequence, preference: bool, viral: _Viral | None
) -> int:
    """FLOPs of the frozen models' forwards for one sequence: reference and teacher."""
    flops = count(mllm_ops(arch, sequence), set(), backward=False).forward if preference else 0
    if viral is not None:
        flops += count(teacher_ops(viral.teacher), set(), backward=False).forward
    return flops


def estimate(cfg: StageConfig, options: PlanOptions | None = None) -> Plan:
    """The plan of one stage config on ``options``' cluster (see the module docstring)."""
    options = options or PlanOptions()
    if options.gpu not in GPUS:
        raise PlanError(f"--gpu {options.gpu}: known GPUs are {', '.join(GPUS)}")
    gpu = GPUS[options.gpu]
    if options.gpu_memory is not None:
        gpu = replace(gpu, memory_gib=options.gpu_memory)
    arch = architecture(cfg.model, options.vision, options.lm)
    sequence, assumptions = _sequence(cfg, options)
    records, records_source = _records(cfg, options)
    preference = cfg.stage == "post" and cfg.post.objective in PREFERENCE_LOSSES
    per_sample = 2 if preference else 1  # chosen and rejected, each with the image
    viral = _viral(cfg, arch)
    trainable = set(cfg.parts) | ({ALIGN_HEAD} if viral else set())
    parts = _part_counts(arch, trainable, viral.head if viral else 0)
    model_total = sum(p.parameters for p in parts if p.part != ALIGN_HEAD)
    teacher_total = vision_shape(viral.teacher).parameters if viral else 0
    policy = count(mllm_ops(arch, sequence, viral.head if viral else 0), trainable) * per_sample
    frozen = _frozen_forward(arch, sequence, preference, viral) * per_sample
    low = 4 if cfg.train.precision == "fp32" else 2
    counts = Counts(
        total=sum(p.parameters for p in parts),
        trainable=sum(p.trainable for p in parts),
        largest_block=max(vision_shape(arch.vision).block, lm_shape(arch.text).block),
        unreached=_unreached(arch) if "vision" in trainable else 0,
        reference=model_total if preference else 0,
        teacher=teacher_total,
    )
    per_device = cfg.train.per_device_batch_size
    rows = _memory_rows(
        arch, sequence, trainable, counts, per_device * per_sample, options.gpus, low
    )
    plan = Plan(
        stage=cfg.stage,
        objective=cfg.post.objective if cfg.stage == "post" else None,
        sources={**arch.sources, **({"teacher": viral.source} if viral else {})},
        parts=parts,
        reference_parameters=counts.reference,
        teacher_parameters=teacher_total,
        sequence=sequence,
        image_tokens=arch.image_tokens,
        sequences_per_sample=per_sample,
        records=records,
        records_source=records_source,
        steps=optimizer_steps(cfg, records),
        batch_size=cfg.train.batch_size,
        per_device_batch_size=per_device,
        sample=policy + Flops(frozen, 0),
        policy=policy,
        frozen_forward=frozen,
        gpu=gpu,
        gpus=options.gpus,
        utilisation=options.utilisation,
        precision=cfg.train.precision,
        memory=rows,
        memory_limit=int(gpu.memory_gib * GiB * HEADROOM),
        checkpointing=_checkpointing(cfg),
        # every process loads the fp32 weights (and copies them for a reference)
        host_load_bytes=options.gpus * 4 * ((1 + preference) * model_total + teacher_total),
        teacher_cache_bytes=viral.cache_bytes(arch, records)
        if viral and cfg.viral.cache_teacher
        else 0,
        assumptions=assumptions,
    )
    plan.warnings = _warnings(cfg, plan)
    return plan


def _warnings(cfg: StageConfig, plan: Plan) -> list[str]:
    warnings = []
    per_step = plan.per_device_batch_size * plan.gpus
    if plan.batch_size % per_step:
        warnings.append(
            f"train.batch_size {plan.batch_size} is not a multiple of per_device_batch_size "
            f"x GPUs = {per_step}: pivotlab train will refuse this launch"
        )
    length = plan.image_tokens + plan.sequence.prompt + plan.sequence.completion
    if cfg.train.max_length is not None and length > cfg.train.max_length:
        warnings.append(
            f"sequences of {length} tokens exceed train.max_length {cfg.train.max_length}: "
            "TRL truncates them (the plan counts the full length)"
        )
    chosen = [r for r in plan.memory if r.checkpointing == plan.checkpointing]
    if not any(plan.fits(r) for r in chosen):
        other = "on" if not plan.checkpointing else "off"
        rescue = [r.strategy for r in plan.memory if plan.fits(r) and r not in chosen]
        hint = (
            f"; with activation checkpointing {other}: {', '.join(rescue)}"
            if rescue
            else "; no strategy fits either way: lower train.per_device_batch_size or add GPUs"
        )
        warnings.append(
            f"does not fit: no strategy fits {plan.gpus} x {plan.gpu.memory_gib:g} GiB "
            f"({HEADROOM:.0%} usable) at per_device_batch_size {plan.per_device_batch_size} "
            f"with activation checkpointing {'on' if plan.checkpointing else 'off'}{hint}"
        )
    if plan.teacher_cache_bytes > 32 * GiB:
        warnings.append(
            f"viral.cache_teacher keeps {plan.teacher_cache_bytes / GiB:.0f} GiB of teacher "
            "features in each process's host memory by the end of the run; set "
            "viral.cache_teacher=false"
        )
    return warnings


def largest_micro_batch(plan: Plan, row: Memory) -> int:
    """The largest per-device batch whose activations fit beside ``row``'s fixed memory."""
    fixed = row.total - row.activations
    per_sample = row.activations / plan.per_device_batch_size if row.activations else 0
    if fixed > plan.memory_limit:
        return 0
    if per_sample == 0:
        return plan.batch_size
    return min(plan.batch_size, math.floor((plan.memory_limit - fixed) / per_sample))


def _fmt_flops(value: float) -> str:
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _gib(value: int) -> str:
    return f"{value / GiB:.1f}"


def format_plan(plan: Plan, title: str = "") -> str:
    """The plan as the text ``pivotlab plan`` prints."""
    objective = f", objective {plan.objective}" if plan.objective else ""
    lines = [f"plan{': ' + title if title else ''} (stage {plan.stage}{objective})"]
    lines += [f"  {name}: {source}" for name, source in plan.sources.items()]
    lines.append("")
    lines.append(f"{'part':<11}{'parameters':>16}{'trainable':>16}")
    for row in plan.parts:
        lines.append(f"{row.part:<11}{row.parameters:>16,}{row.trainable:>16,}")
    total = sum(r.parameters for r in plan.parts)
    trainable = sum(r.trainable for r in plan.parts)
    lines.append(f"{'total':<11}{total:>16,}{trainable:>16,}")
    if plan.reference_parameters:
        lines.append(f"{'reference':<11}{plan.reference_parameters:>16,}{'frozen':>16}")
    if plan.teacher_parameters:
        lines.append(f"{'teacher':<11}{plan.teacher_parameters:>16,}{'frozen':>16}")
    seq = plan.sequence
    length = plan.image_tokens + seq.prompt + seq.completion
    lines += [
        "",
        f"workload   {plan.records:,} records ({plan.records_source}); {plan.steps:,} steps of "
        f"{plan.batch_size} records; {plan.sequences_per_sample} sequence(s) per record of "
        f"{length} tokens ({plan.image_tokens} image + {seq.prompt} prompt + "
        f"{seq.completion} completion)",
        f"FLOPs      per record {_fmt_flops(plan.sample.total)} (policy forward "
        f"{_fmt_flops(plan.policy.forward)} + backward {_fmt_flops(plan.policy.backward)}"
        + (f" + frozen forwards {_fmt_flops(plan.frozen_forward)}" if plan.frozen_forward else "")
        + ")",
        f"           per step {_fmt_flops(plan.step_flops)}; run {_fmt_flops(plan.run_flops)}",
        f"time       {plan.gpus} x {plan.gpu.name} at {plan.peak / 1e12:g} TFLOP/s "
        f"({plan.precision}) x {plan.utilisation:.0%} utilisation: "
        f"{plan.gpu_hours:.2f} GPU-hours, {plan.wall_hours:.2f} h wall",
        "",
        f"memory per GPU in GiB ({plan.gpu.memory_gib:g} GiB, {HEADROOM:.0%} usable; "
        f"per_device_batch_size {plan.per_device_batch_size})",
        f"{'strategy':<14}{'weights':>8}{'grads':>8}{'optim':>8}{'activ':>8}{'ref':>8}"
        f"{'teacher':>8}{'buffers':>8}{'total':>8}  fits  max batch",
    ]
    for row in plan.memory:
        name = row.strategy + (" +ckpt" if row.checkpointing else "")
        marker = "*" if row.checkpointing == plan.checkpointing else " "
        cells = (
            row.weights,
            row.gradients,
            row.optimizer,
            row.activations,
            row.reference,
            row.teacher,
            row.buffers,
            row.total,
        )
        lines.append(
            f"{marker}{name:<13}"
            + "".join(f"{_gib(c):>8}" for c in cells)
            + f"  {'yes' if plan.fits(row) else 'NO ':<4}  {largest_micro_batch(plan, row)}"
        )
    lines.append("(* the config's activation checkpointing setting)")
    lines.append(
        f"host memory while loading: {_gib(plan.host_load_bytes)} GiB on the node "
        f"({plan.gpus} processes each load the fp32 weights"
        + (", and copy them for the reference" if plan.reference_parameters else "")
        + ")"
    )
    if plan.teacher_cache_bytes:
        lines.append(f"VIRAL teacher cache: up to {_gib(plan.teacher_cache_bytes)} GiB per process")
    for note in plan.assumptions:
        lines.append(f"assumption: {note}")
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
