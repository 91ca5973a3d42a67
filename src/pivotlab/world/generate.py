"""Generate a world split: scenes, masks, questions, preference pairs, probe sets.

    pivotlab world generate --out runs/world/train --split train --n 2000 --seed 0 --size 64

Every scene is a pure function of (seed, split, index): its random streams come from a
``SeedSequence`` keyed by those numbers and by purpose (layout, pixels, questions, pairs,
probes), so splits never share a stream, a task added later does not move any other
task's draws, and any number of worker processes writes byte-identical files. Scenes are
made in units of two (indices 2j, 2j+1) because an MMVP pair needs both of its scenes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from pivotlab import __version__
from pivotlab.errors import PivotlabError
from pivotlab.io import MiB, check_output, staging_folder, write_json_atomic
from pivotlab.world import vocab
from pivotlab.world.pairs import pair_items, plan_pair
from pivotlab.world.png import encode_png
from pivotlab.world.questions import CATEGORIES, TASK_NAMES, Item, Task, build_tasks, caption
from pivotlab.world.render import Rendered, render
from pivotlab.world.scene import (
    LAYOUTS,
    Scene,
    SceneObject,
    jittered_rgb,
    sample_background,
    sample_chart_scene,
    sample_object_scene,
    sample_text_scene,
)

GENERATOR_VERSION = "1"
SPLITS: tuple[str, ...] = ("train", "val", "test", "holdout")
KINDS: tuple[str, ...] = ("objects", "chart", "text")
MIN_SIZE = 16
LETTERS = "ABCD"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."

# Purposes of the random streams (the last-but-one SeedSequence key).
_LAYOUT, _PIXELS, _QUESTIONS, _PAIR, _PROBE = range(5)

# The tasks of the tiny preset: the general and vision-centric questions about objects, with
# one-word answers (no captions, no lore, no text to read).
TINY_TASKS: tuple[str, ...] = (
    "exists",
    "color",
    "shape",
    "size",
    "count",
    "relation",
    "relative_size",
    "front",
    "mmvp",
)
# Named bundles of ``WorldConfig`` fields. ``tiny`` is the world a CPU-sized MLLM can master
# (docs/world.md, "Presets"): objects only, a 2 x 2 layout (at most four objects, one per
# image quadrant), open answers only, and the tasks above; ``tiny16`` the same on the 4 x 4
# blocks layout (16 visual tokens in 16-px patches, background in every image), the
# ``tokens16`` zoo's world; ``default`` is the full world.
PRESETS: dict[str, dict] = {
    "default": {},
    "tiny": {"grid": 2, "kind_weights": (1.0, 0.0, 0.0), "mc_fraction": 0.0, "tasks": TINY_TASKS},
    "tiny16": {
        "grid": 4,
        "layout": "blocks",
        "kind_weights": (1.0, 0.0, 0.0),
        "mc_fraction": 0.0,
        "tasks": TINY_TASKS,
    },
}


class WorldConfigError(PivotlabError):
    """A world configuration that cannot be generated; the message is one line."""


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world split (and nothing that doesn't, like workers)."""

    split: str = "train"
    n: int = 2000
    seed: int = 0
    size: int = 64
    grid: int = 3
    layout: str = "cells"
    tasks: tuple[str, ...] = TASK_NAMES
    kind_weights: tuple[float, float, float] = (0.7, 0.15, 0.15)
    mc_fraction: float = 0.5
    rationale_fraction: float = 0.5
    pair_fraction: float = 0.2
    chart_max_value: int = 9
    probe_n: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_preset(cls, preset: str, **fields) -> WorldConfig:
        """A config from a named preset (``PRESETS``), any field overridden by ``fields``."""
        if preset not in PRESETS:
            raise WorldConfigError(
                f"unknown world preset {preset!r}; presets are {', '.join(PRESETS)}"
            )
        return cls(**{**PRESETS[preset], **fields})

    @property
    def classification_n(self) -> int:
        return self.n if self.probe_n is None else self.probe_n

    def validate(self) -> None:
        """Raise ``WorldConfigError`` naming the first bad field."""
        if self.split not in SPLITS:
            raise WorldConfigError(
                f"unknown split {self.split!r}; expected one of {', '.join(SPLITS)}"
            )
        if self.n < 1:
            raise WorldConfigError(f"n must be at least 1, got {self.n}")
        if self.size < MIN_SIZE:
            raise WorldConfigError(f"size must be at least {MIN_SIZE} pixels, got {self.size}")
        if self.size > 1024:
            raise WorldConfigError(f"size must be at most 1024 pixels, got {self.size}")
        if self.grid < 2:
            raise WorldConfigError(f"grid must be at least 2, got {self.grid}")
        if self.layout not in LAYOUTS:
            raise WorldConfigError(
                f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}"
            )
        if self.layout == "blocks" and self.grid < 4:
            raise WorldConfigError(f"the blocks layout needs a grid of at least 4, got {self.grid}")
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            raise WorldConfigError(
                f"unknown task {unknown[0]!r}; expected some of {', '.join(TASK_NAMES)}"
            )
        if not self.tasks:
            raise WorldConfigError("tasks must name at least one task")
        for name in ("mc_fraction", "rationale_fraction", "pair_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise WorldConfigError(f"{name} must be between 0 and 1, got {value}")
        if (
            len(self.kind_weights) != len(KINDS)
            or min(self.kind_weights) < 0
            or sum(self.kind_weights) <= 0
        ):
            raise WorldConfigError(
                f"kind_weights must be {len(KINDS)} non-negative numbers, not all 0"
            )
        if not 5 <= self.chart_max_value <= 99:
            raise WorldConfigError(
                f"chart_max_value must be between 5 and 99, got {self.chart_max_value}"
            )
        if self.probe_n is not None and self.probe_n < 0:
            raise WorldConfigError(f"probe_n must be at least 0, got {self.probe_n}")

    def to_json(self) -> dict:
        record = asdict(self)
        record["tasks"] = list(self.tasks)
        record["kind_weights"] = list(self.kind_weights)
        record["probe_n"] = self.classification_n
        return record


def stream(cfg: WorldConfig, purpose: int, index: int, part: int = 0) -> np.random.Generator:
    """The random stream for one (split, purpose, index, part) of this world."""
    return np.random.default_rng([cfg.seed, SPLITS.index(cfg.split), purpose, index, part])


def scene_id(cfg: WorldConfig, index: int) -> str:
    return f"{cfg.split}-{index:06d}"


# ---------------------------------------------------------------------------------------
# One unit of work: two scenes (maybe an MMVP pair), everything about them written out
# ---------------------------------------------------------------------------------------
JSONL_FILES: tuple[str, ...] = (
    "scenes.jsonl",
    "vqa.jsonl",
    "preferences.jsonl",
    "probes/classification.jsonl",
    "probes/segmentation.jsonl",
    "probes/localisation.jsonl",
    "probes/captions.jsonl",
)


@dataclass
class UnitOutput:
    """What one unit of work wrote: JSON lines per file (serialised in the worker, so the
    parent only concatenates), tallies for the manifest, and sha256 of the PNGs."""

    lines: dict[str, list[str]] = field(default_factory=lambda: {f: [] for f in JSONL_FILES})
    counts: Counter = field(default_factory=Counter)
    hashes: dict[str, str] = field(default_factory=dict)

    def add(self, file: str, record: dict) -> None:
        self.lines[file].append(json.dumps(record, ensure_ascii=False))


def sample_scene(cfg: WorldConfig, index: int) -> Scene:
    """The scene graph at ``index`` of this split (not yet rendered)."""
    rng = stream(cfg, _LAYOUT, index)
    sid = scene_id(cfg, index)
    if cfg.split == "holdout":
        kind = "objects"
    else:
        weights = np.array(cfg.kind_weights) / sum(cfg.kind_weights)
        kind = KINDS[int(rng.choice(len(KINDS), p=weights))]
    if kind == "objects":
        return sample_object_scene(
            rng, sid, cfg.size, cfg.grid, heldout=cfg.split == "holdout", layout=cfg.layout
        )
    if kind == "chart":
        return sample_chart_scene(rng, sid, cfg.size, cfg.grid, cfg.chart_max_value)
    return sample_text_scene(rng, sid, cfg.size, cfg.grid)


def _write(out: Path, relative: str, data: bytes, hashes: dict[str, str]) -> None:
    (out / relative).write_bytes(data)
    hashes[relative] = hashlib.sha256(data).hexdigest()


def _format(
    item: Item, task: Task, scene: Scene, number: int, rng: np.random.Generator, cfg: WorldConfig
) -> tuple[dict, dict]:
    """An item as a VQA record and a preference record (open or multiple-choice)."""
    sid = scene.scene_id
    image = f"images/{sid}.png"
    multiple_choice = rng.random() < cfg.mc_fraction
    with_rationale = rng.random() < cfg.rationale_fraction
    question, answer, negative, negative_type = (
        item.question,
        item.answer,
        item.negative,
        item.negative_type,
    )
    choices = None
    if multiple_choice:
        choices = _options(item, rng)
        letters = LETTERS[: len(choices)]
        lines = "\n".join(
            f"{letter}. {option}" for letter, option in zip(letters, choices, strict=True)
        )
        question = f"{item.question}\n{lines}\n{MC_INSTRUCTION}"
        answer = letters[choices.index(item.answer)]
        if item.negative in choices:
            negative = letters[choices.index(item.negative)]
        else:
            wrong = [i for i, c in enumerate(choices) if c != item.answer]
            negative = letters[wrong[int(rng.integers(len(wrong)))]]
            negative_type = "unrelated_choice"
        chance = 1.0 / len(choices)
    else:
        chance = 1.0 / len(item.answer_space) if item.answer_space else 0.0
    vqa_id = f"{sid}-q{number:02d}"
    vqa = {
        "id": vqa_id,
        "scene_id": sid,
        "image": image,
        "category": task.category,
        "task": item.task,
        "format": "mc" if multiple_choice else "open",
        "question": question,
        "answer": answer,
        "answer_text": item.answer,
        "choices": choices,
        "pair_id": item.pair_id,
        "target_objects": item.target_objects,
        "chance": round(chance, 6),
    }
    chosen, rejected = answer, negative
    if with_rationale and item.rationale and negative_type != "unrelated_choice":
        chosen = f"{_capitalised(answer)}. {item.rationale}"
        rejected = f"{_capitalised(negative)}. {item.negative_rationale}"
    preference = {
        "id": f"{sid}-p{number:02d}",
        "vqa_id": vqa_id,
        "scene_id": sid,
        "image": image,
        "category": task.category,
        "task": item.task,
        "prompt": question,
        "chosen": chosen,
        "rejected": rejected,
        "negative_type": negative_type,
    }
    return vqa, preference


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _options(item: Item, rng: np.random.Generator) -> list[str]:
    """Up to four shuffled options: the answer and uniform draws from the rest of its space.

    The realistic negative is not forced in: where it is a function of the answer (the
    confusable glyph, the look-alike shape's fact) the option set would give the answer
    away to a model that never looks at the image.
    """
    if len(item.answer_space) <= len(LETTERS):
        # The whole space, so the two scenes of a pair (different answers) list the same
        # options in the same order.
        options = (
            list(item.answer_space) if item.answer_space else [item.answer, *item.distractors[:3]]
        )
    else:
        rest = [v for v in item.answer_space if v != item.answer]
        picked = rng.permutation(len(rest))[: len(LETTERS) - 1]
        options = [item.answer] + [rest[i] for i in picked]
    return [options[i] for i in rng.permutation(len(options))]


def _scene_items(
    cfg: WorldConfig, tasks: dict[str, Task], scene: Scene, rendered: Rendered, index: int
) -> list[tuple[Item, Task]]:
    items = []
    for position, name in enumerate(TASK_NAMES):
        task = tasks[name]
        if name not in cfg.tasks or task.make is None or scene.kind not in task.kinds:
            continue
        item = task.make(scene, rendered, stream(cfg, _QUESTIONS, index, position))
        if item is not None:
            items.append((item, task))
    return items


def _emit_scene(
    cfg: WorldConfig,
    out: Path,
    scene: Scene,
    rendered: Rendered,
    index: int,
    items: list[tuple[Item, Task]],
    result: UnitOutput,
) -> None:
    sid = scene.scene_id
    _write(out, f"images/{sid}.png", encode_png(rendered.image), result.hashes)
    _write(out, f"masks/{sid}.png", encode_png(rendered.semantic), result.hashes)
    _write(out, f"instances/{sid}.png", encode_png(rendered.instances), result.hashes)
    result.add("scenes.jsonl", scene.to_json())
    result.add(
        "probes/captions.jsonl",
        {"scene_id": sid, "image": f"images/{sid}.png", "caption": caption(scene)},
    )
    result.add(
        "probes/segmentation.jsonl",
        {
            "scene_id": sid,
            "kind": scene.kind,
            "image": f"images/{sid}.png",
            "mask": f"masks/{sid}.png",
            "instances": f"instances/{sid}.png",
        },
    )
    result.counts["scenes", scene.kind] += 1
    format_rng = stream(cfg, _QUESTIONS, index, len(TASK_NAMES))
    for number, (item, task) in enumerate(items):
        rng = format_rng
        if item.pair_id is not None:
            # Both scenes of a pair must show the question with the same options in the same order.
            rng = stream(cfg, _PAIR, index // 2, 1)
        vqa, preference = _format(item, task, scene, number, rng, cfg)
        result.add("vqa.jsonl", vqa)
        result.add("preferences.jsonl", preference)
        result.counts.update(
            [
                ("category", task.category),
                ("task", item.task),
                ("format", vqa["format"]),
                ("negative_type", preference["negative_type"]),
            ]
        )
        if item.target_objects and scene.kind == "objects":
            result.add(
                "probes/localisation.jsonl",
                {
                    "id": vqa["id"],
                    "scene_id": sid,
                    "image": vqa["image"],
                    "instances": f"instances/{sid}.png",
                    "question": item.question,
                    "answer": item.answer,
                    "target_objects": item.target_objects,
                },
            )


def generate_unit(cfg: WorldConfig, out: Path, unit: int) -> UnitOutput:
    """Scenes ``2 * unit`` and ``2 * unit + 1`` (when < n), rendered and written."""
    tasks = build_tasks(cfg.chart_max_value)
    result = UnitOutput()
    indices = [i for i in (2 * unit, 2 * unit + 1) if i < cfg.n]
    scenes = [sample_scene(cfg, i) for i in indices]
    rendered = [
        render(s, stream(cfg, _PIXELS, i), cfg.chart_max_value)
        for s, i in zip(scenes, indices, strict=True)
    ]
    extra: list[list[Item]] = [[] for _ in indices]
    pair_rng = stream(cfg, _PAIR, unit)
    wants_pair = "mmvp" in cfg.tasks and len(indices) == 2 and pair_rng.random() < cfg.pair_fraction
    if wants_pair and scenes[0].kind == "objects":
        plan = plan_pair(scenes[0], rendered[0], scene_id(cfg, indices[1]), pair_rng)
        if plan is not None:
            twin_rendered = render(plan.twin, stream(cfg, _PIXELS, indices[1]), cfg.chart_max_value)
            items = pair_items(
                plan, scenes[0], rendered[0], twin_rendered, f"{cfg.split}-pair-{unit:06d}"
            )
            if items is not None:
                scenes[1], rendered[1] = plan.twin, twin_rendered
                extra = [[items[0]], [items[1]]]
    mmvp = tasks["mmvp"]
    for scene, image, index, pair_extra in zip(scenes, rendered, indices, extra, strict=True):
        items = _scene_items(cfg, tasks, scene, image, index) + [
            (item, mmvp) for item in pair_extra
        ]
        _emit_scene(cfg, out, scene, image, index, items, result)
    return result


def render_scenes(cfg: WorldConfig, indices: range) -> Iterator[tuple[Scene, Rendered]]:
    """Scenes of this split rendered in memory, without questions or files (MMVP twins are
    not made): what the zoo's pretraining consumes. Same scenes and pixels as on disk."""
    for index in indices:
        scene = sample_scene(cfg, index)
        yield scene, render(scene, stream(cfg, _PIXELS, index), cfg.chart_max_value)


def render_probe_scenes(cfg: WorldConfig, indices: range) -> Iterator[tuple[Scene, Rendered]]:
    """Classification-probe scenes (one dominant object) rendered in memory."""
    for index in indices:
        scene = sample_probe_scene(cfg, index)
        yield scene, render(scene, stream(cfg, _PROBE, index, 1), cfg.chart_max_value)


# ---------------------------------------------------------------------------------------
# Classification probe: one dominant object per image
# ---------------------------------------------------------------------------------------
def sample_probe_scene(cfg: WorldConfig, index: int) -> Scene:
    """One large object near the centre and up to two small distractors of other shapes."""
    rng = stream(cfg, _PROBE, index)
    size = cfg.size
    shape = vocab.SHAPES[int(rng.integers(len(vocab.SHAPES)))]
    colors = vocab.allowed_colors(shape, heldout=cfg.split == "holdout")
    color = colors[int(rng.integers(len(colors)))]
    diameter = size * rng.uniform(0.45, 0.65)
    center = tuple(float(v) for v in size / 2 + rng.uniform(-0.08, 0.08, size=2) * size)
    objects = [
        SceneObject(
            0,
            shape,
            color,
            "large",
            jittered_rgb(rng, color),
            center,
            float(diameter),
            float(rng.uniform(-8, 8)),
            z=0,
        )
    ]
    for _ in range(int(rng.integers(0, 3))):
        other = vocab.SHAPES[int(rng.integers(len(vocab.SHAPES)))]
        if other == shape:
            continue
        other_color = vocab.allowed_colors(other, False)[int(rng.integers(7))]
        corner = rng.integers(0, 2, size=2) * 0.8 + 0.1
        objects.append(
            SceneObject(
                len(objects),
                other,
                other_color,
                "small",
                jittered_rgb(rng, other_color),
                (float(corner[0] * size), float(corner[1] * size)),
                0.14 * size,
                0.0,
                z=len(objects),
            )
        )
    return Scene(
        f"{cfg.split}-cls-{index:06d}", "objects", size, 1, sample_background(rng), objects=objects
    )


def generate_probe(cfg: WorldConfig, out: Path, index: int) -> UnitOutput:
    scene, rendered = next(render_probe_scenes(cfg, range(index, index + 1)))
    result = UnitOutput()
    pid = scene.scene_id
    _write(
        out, f"probes/classification/images/{pid}.png", encode_png(rendered.image), result.hashes
    )
    _write(
        out, f"probes/classification/masks/{pid}.png", encode_png(rendered.semantic), result.hashes
    )
    main = scene.objects[0]
    result.add(
        "probes/classification.jsonl",
        {
            "id": pid,
            "image": f"probes/classification/images/{pid}.png",
            "mask": f"probes/classification/masks/{pid}.png",
            "shape": main.shape,
            "color": main.color,
            "shape_color": f"{main.color} {main.shape}",
            "distractors": [o.shape for o in scene.objects[1:]],
        },
    )
    return result


# ---------------------------------------------------------------------------------------
# Driving the workers and writing the split
# ---------------------------------------------------------------------------------------
def _run_job(job: tuple[str, WorldConfig, str, int]) -> UnitOutput:
    kind, cfg, out, index = job
    if kind == "scenes":
        return generate_unit(cfg, Path(out), index)
    return generate_probe(cfg, Path(out), index)


@dataclass
class GenerateReport:
    """What a call to ``generate`` wrote and how long it took."""

    out: Path
    scenes: int
    questions: int
    preferences: int
    seconds: float


def _prepare_output(out: Path, overwrite: bool) -> Path:
    """A fresh staging folder beside ``out``; refuses to touch a folder that is not ours."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise WorldConfigError(
                f"{out} is not empty; pass --overwrite to replace a world split there"
            )
        if not (out / "manifest.json").is_file():
            raise WorldConfigError(
                f"{out} is not empty and holds no world manifest.json; refusing to replace it"
            )
    staging = staging_folder(out)
    for sub in (
        "images",
        "masks",
        "instances",
        "probes/classification/images",
        "probes/classification/masks",
    ):
        (staging / sub).mkdir(parents=True)
    return staging


def _merge(outputs: list[UnitOutput]) -> UnitOutput:
    merged = UnitOutput()
    for part in outputs:
        for file, lines in part.lines.items():
            merged.lines[file] += lines
        merged.counts.update(part.counts)
        merged.hashes.update(part.hashes)
    return merged


def _tally(counts: Counter, kind: str) -> dict[str, int]:
    return dict(sorted((key[1], n) for key, n in counts.items() if key[0] == kind))


def _manifest(cfg: WorldConfig, merged: UnitOutput, hashes: dict[str, str]) -> dict:
    by_category = _tally(merged.counts, "category")
    lengths = {file: len(lines) for file, lines in merged.lines.items()}
    return {
        "generator": "pivotlab.world",
        "generator_version": GENERATOR_VERSION,
        "pivotlab_version": __version__,
        "config": cfg.to_json(),
        "semantic_classes": list(vocab.SEMANTIC_CLASSES),
        "heldout_combos": sorted(f"{c} {s}" for s, c in vocab.HELDOUT_COMBOS),
        "counts": {
            "scenes": lengths["scenes.jsonl"],
            "scenes_by_kind": _tally(merged.counts, "scenes"),
            "questions": lengths["vqa.jsonl"],
            "questions_by_category": {c: by_category.get(c, 0) for c in CATEGORIES},
            "questions_by_task": _tally(merged.counts, "task"),
            "questions_by_format": _tally(merged.counts, "format"),
            "pairs": _tally(merged.counts, "task").get("mmvp", 0) // 2,
            "preferences": lengths["preferences.jsonl"],
            "preferences_by_negative_type": _tally(merged.counts, "negative_type"),
            "probes": {
                "classification": lengths["probes/classification.jsonl"],
                "segmentation": lengths["probes/segmentation.jsonl"],
                "localisation": lengths["probes/localisation.jsonl"],
                "captions": lengths["probes/captions.jsonl"],
            },
        },
        "files": dict(sorted(hashes.items())),
    }


def generate(
    cfg: WorldConfig, out: Path | str, workers: int = 1, overwrite: bool = False
) -> GenerateReport:
    """Write the split described by ``cfg`` to ``out`` (see the module docstring)."""
    out = Path(out)
    if workers < 1:
        raise WorldConfigError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    pixels = (5 * cfg.n + 4 * cfg.classification_n) * cfg.size**2  # PNGs, uncompressed
    check_output(out, pixels + 2048 * cfg.n + 16 * MiB, "raw PNG pixels + 2 KiB per scene")
    staging = _prepare_output(out, overwrite)
    try:
        jobs = [("scenes", cfg, str(staging), unit) for unit in range((cfg.n + 1) // 2)]
        jobs += [("probe", cfg, str(staging), i) for i in range(cfg.classification_n)]
        if workers == 1:
            outputs = [_run_job(job) for job in jobs]
        else:
            # fork: workers need only numpy and Pillow state, and a user's script run without
            # an `if __name__ == "__main__"` guard must still work (spawn re-imports it).
            method = "fork" if "fork" in get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(workers, mp_context=get_context(method)) as pool:
                outputs = list(
                    pool.map(_run_job, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
                )
        merged = _merge(outputs)
        hashes = dict(merged.hashes)
        for file, lines in merged.lines.items():
            _write(staging, file, "".join(line + "\n" for line in lines).encode(), hashes)
        manifest = _manifest(cfg, merged, hashes)
        write_json_atomic(staging / "manifest.json", manifest)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    counts = manifest["counts"]
    return GenerateReport(
        out,
        counts["scenes"],
        counts["questions"],
        counts["preferences"],
        time.perf_counter() - start,
    )


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished staging folder into place; the old split goes only after."""
    if out.exists():
        old = staging_folder(out, "old")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
