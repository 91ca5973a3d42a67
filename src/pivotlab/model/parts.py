"""Named parts of an MLLM: freezing, per-part learning rates, and the parts table.

One mechanism decides what trains: ``set_trainable`` (``requires_grad`` by part), and
``parameter_groups`` turns per-part learning rates into optimizer groups that hold only
trainable parameters. ``check_trainable`` makes a part that should train but cannot an
error, since a silently frozen vision tower is the most common failure of the anchors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn
from transformers import LlavaForConditionalGeneration

from pivotlab.errors import PivotlabError

PARTS: tuple[str, ...] = ("vision", "projector", "lm")
# A training-only part some stages add (VIRAL's alignment head, ``model.align_head``); it is
# removed before a model is saved for use.
ALIGN_HEAD = "align_head"


class PartsError(PivotlabError):
    """A part that is unknown, or meant to train but without a trainable parameter."""


def part_modules(model: LlavaForConditionalGeneration) -> dict[str, list[nn.Module]]:
    """The modules of each named part (the LM part includes its output head)."""
    parts = {
        "vision": [model.model.vision_tower],
        "projector": [model.model.multi_modal_projector],
        "lm": [model.model.language_model, model.lm_head],
    }
    if hasattr(model, ALIGN_HEAD):
        parts[ALIGN_HEAD] = [getattr(model, ALIGN_HEAD)]
    return parts


def _parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for parameter in module.parameters():
            seen.setdefault(id(parameter), parameter)  # tied weights counted once
    return list(seen.values())


def _validate(model: LlavaForConditionalGeneration, names: Iterable[str]) -> list[str]:
    known = part_modules(model)
    names = list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PartsError(f"unknown part {unknown[0]!r}; parts are {', '.join(known)}")
    return names


def set_trainable(model: LlavaForConditionalGeneration, trainable: Iterable[str]) -> None:
    """Make exactly the named parts trainable and freeze every other part."""
    wanted = set(_validate(model, trainable))
    for name, modules in part_modules(model).items():
        for parameter in _parameters(modules):
            parameter.requires_grad_(name in wanted)


def trainable_parts(model: LlavaForConditionalGeneration) -> list[str]:
    """Parts with at least one trainable parameter."""
    return [
        name
        for name, modules in part_modules(model).items()
        if any(p.requires_grad for p in _parameters(modules))
    ]


def check_trainable(model: LlavaForConditionalGeneration, meant_to_train: Iterable[str]) -> None:
    """Raise ``PartsError`` for each part meant to train that has no trainable parameter."""
    meant = _validate(model, meant_to_train)
    frozen = [name for name in meant if name not in trainable_parts(model)]
    if frozen:
        raise PartsError(
            f"part(s) {', '.join(frozen)} should train but have no trainable parameter "
            "(frozen by an earlier stage or a loaded checkpoint?)"
        )


def parameter_groups(
    model: LlavaForConditionalGeneration,
    learning_rates: dict[str, float],
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer groups, one per part with a learning rate, holding its trainable parameters.

    Every trainable parameter must land in a group: a trainable part without a learning
    rate is an error rather than a parameter the optimizer never sees.
    """
    _validate(model, learning_rates)
    groups = []
    for name, modules in part_modules(model).items():
        trainable = [p for p in _parameters(modules) if p.requires_grad]
        if name not in learning_rates:
            if trainable:
                raise PartsError(f"part {name!r} is trainable but has no learning rate")
            continue
        if trainable:
            groups.append(
                {
                    "name": name,
                    "params": trainable,
                    "lr": learning_rates[name],
                    "weight_decay": weight_decay,
                }
            )
    return groups


def relative_change(
    before: LlavaForConditionalGeneration, after: LlavaForConditionalGeneration
) -> dict[str, float]:
    """How far each part moved between two models of one architecture: the norm of the
    parameters' change over the norm of ``before``'s (tied weights once), per part."""
    old, new = part_modules(before), part_modules(after)
    moved = {}
    for name in PARTS:
        pairs = list(zip(_parameters(old[name]), _parameters(new[name]), strict=True))
        if any(a.shape != b.shape for a, b in pairs):
            raise PartsError(f"part {name!r} has other shapes in the two models")
        change = sum(float((b.detach() - a.detach()).double().pow(2).sum()) for a, b in pairs)
        size = sum(float(a.detach().double().pow(2).sum()) for a, _ in pairs)
        moved[name] = (change / size) ** 0.5 if size else 0.0
    return moved


@dataclass(frozen=True)
class PartRow:
    """One row of the parts table."""

    part: str
    parameters: int
    trainable: int
    learning_rate: float | None


def parts_table(
    model: LlavaForConditionalGeneration, learning_rates: dict[str, float] | None = None
) -> list[PartRow]:
    """Parameters, trainable parameters and learning rate of every part."""
    rates = learning_rates or {}
    rows = []
    for name, modules in part_modules(model).items():
        parameters = _parameters(modules)
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        rows.append(
            PartRow(
                name,
                sum(p.numel() for p in parameters),
                trainable,
                rates.get(name) if trainable else None,
            )
        )
    return rows


def format_parts_table(rows: list[PartRow]) -> str:
    """The parts table as aligned text, with a total line."""
    lines = [f"{'part':<10} {'parameters':>12} {'trainable':>12} {'lr':>9}"]
    for row in rows:
        rate = "-" if row.learning_rate is None else f"{row.learning_rate:.2e}"
        lines.append(f"{row.part:<10} {row.parameters:>12,} {row.trainable:>12,} {rate:>9}")
    total = sum(r.parameters for r in rows)
    lines.append(f"{'total':<10} {total:>12,} {sum(r.trainable for r in rows):>12,}")
    return "\n".join(lines)
