"""The study's steps, in order, each skipped when its recorded outputs are intact.

Per seed: Stage 1 (``align``, ``full``) from zoo parts; Stage 2 arms from that one
Stage-1 model on the same records; VQA evaluation of every model (and the blind
baseline); the analysis suite on every model's encoder; PIVOT's transplant of every
encoder (the arms', Stage 1's and the original zoo encoders), frozen, into a fresh LM
with a new projector (projector alignment, then instruction tuning), then evaluation.
Steps run through the same functions as ``pivotlab train``, ``evaluate`` and ``analyze``;
a step interrupted half-way resumes from its own checkpoints when the study runs again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pivotlab.configtree import apply_override, read_tree, set_dotted
from pivotlab.console import LiveLine, Progress, clock, step_output
from pivotlab.io import write_json_atomic
from pivotlab.study.config import Recipe, StudyConfig, recipe_path
from pivotlab.study.ledger import Ledger, fingerprint
from pivotlab.study.progress import TimeLeft
from pivotlab.train.config import StageConfig, config_from_dict
from pivotlab.train.splits import parse_split

STAGE1 = "stage1"
BLIND = "blind"
# What an evaluation measures: a model of a track on test, the same on the val split
# (choosing rates, headroom), or a transplanted encoder's MLLM.
VQA, VAL, TRANSPLANT = "VQA", "val", "after transplant"


@dataclass
class Step:
    """One unit of the study: what it is (``spec``), where it writes, how it runs."""

    name: str
    kind: str
    spec: dict[str, Any]
    outputs: list[Path]
    action: Callable[[], dict[str, Any]]
    seed: int = 0
    arm: str | None = None
    track: str = "main"
    measures: str | None = None  # evaluate steps: VQA, VAL or TRANSPLANT
    rate: float | None = None  # a rate sweep's point: its learning rate
    results: dict[str, Any] = field(default_factory=dict)
    config: StageConfig | None = None  # training steps: what a dry run plans
    architecture: tuple[str, str] | None = None  # (vision, lm) the step's model is made of
    progress: Progress = field(default_factory=Progress)  # what its action has done, live


def stage_config(study: StudyConfig, recipe: Recipe, key: str, sets: dict[str, Any]) -> StageConfig:
    """A recipe's stage config with its overrides, then the study's own settings."""
    path = recipe_path(study, recipe, key)
    tree = read_tree(path)
    for assignment in recipe.overrides:
        apply_override(tree, assignment)
    for dotted, value in sets.items():
        set_dotted(tree, dotted, value, f"study setting {dotted}", drop_none=True)
    return config_from_dict(tree, f"{path} (study {key})")


def _train_step(
    name: str,
    cfg: StageConfig,
    out: Path,
    seed: int,
    arm: str | None,
    architecture: tuple[str, str],
    moved_from: Path | None = None,
    track: str = "main",
) -> Step:
    """A training step; with ``moved_from`` (the model a post arm started from) its result
    also records how far each part moved from it (``relative_change``)."""

    progress = Progress()

    def action() -> dict[str, Any]:
        from pivotlab.train import run_stage

        # A step without a valid record either stopped half-way (same config: run_stage
        # resumes from its checkpoint) or was configured differently (it starts over).
        summary = run_stage(cfg, out, overwrite=True, progress=progress).summary
        result = {"summary": summary, "flops": summary.get("total_flos")}
        if moved_from is not None:
            from pivotlab.model import load, relative_change

            result["moved"] = relative_change(load(moved_from)[0], load(out / "final")[0])
        return result

    outputs = [out / "final", out / "summary.json", out / "metrics.jsonl"]
    return Step(
        name,
        "train",
        cfg.to_dict(),
        outputs,
        action,
        seed,
        arm,
        track,
        config=cfg,
        architecture=architecture,
        progress=progress,
    )


def _eval_step(
    study: StudyConfig,
    name: str,
    model: Path,
    data: Path,
    out: Path,
    seed: int,
    arm: str,
    blind: bool,
    track: str = "main",
    measures: str = VQA,
) -> Step:
    # What the evaluation reads, not the whole section: the study-wide ``evaluate.blind``
    # says whether a blind step exists, not whether this one is blind, and a key added to
    # the section must not make every finished evaluation run again (the ledger keys
    # resumption on the spec).
    settings = study.evaluate
    spec = {"limit": settings.limit, "batch_size": settings.batch_size, "blind": blind}
    spec.update(model=str(model), data=str(data), seed=seed)
    progress = Progress()

    def action() -> dict[str, Any]:
        from pivotlab.evaluate.runner import EvalConfig, evaluate

        cfg = EvalConfig(
            model=str(model),
            data=str(data),
            out=str(out),
            limit=study.evaluate.limit,
            batch_size=study.evaluate.batch_size,
            blind=blind,
            seed=seed,
        )
        report = evaluate(cfg, progress=progress)
        return {"items_per_second": report.items_per_second}

    outputs = [out / "predictions.jsonl", out / "metrics.jsonl"]
    return Step(
        name, "evaluate", spec, outputs, action, seed, arm, track, measures, progress=progress
    )


def _kl_step(
    study: StudyConfig,
    name: str,
    model: Path,
    reference: Path,
    data: Path,
    out: Path,
    seed: int,
    arm: str,
    track: str,
) -> Step:
    """KL of a post arm's answers from its Stage-1 model's, on held-out questions."""
    spec = {"model": str(model), "reference": str(reference), "data": str(data), "seed": seed}
    spec.update(limit=study.evaluate.kl_limit, batch_size=study.evaluate.batch_size)

    def action() -> dict[str, Any]:
        from pivotlab.evaluate.divergence import measure_kl

        limit, batch_size = study.evaluate.kl_limit, study.evaluate.batch_size
        summary = measure_kl(model, reference, data, out, limit=limit, batch_size=batch_size)
        return {"kl": summary["value"]}

    outputs = [out / "kl.jsonl", out / "metrics.jsonl"]
    return Step(name, "divergence", spec, outputs, action, seed, arm, track)


def _choose_step(
    study: StudyConfig,
    name: str,
    arm_folder: Path,
    points: list[tuple[Step, Step]],
    seed: int,
    arm: str,
    track: str,
) -> Step:
    """The arm's rate, chosen on val among its sweep's (training, val evaluation) points."""
    from pivotlab.study import sweep

    assert study.post.sweep is not None
    category = study.post.sweep.category
    folders = {train.rate: val.outputs[0].parent for train, val in points}
    spec = {"points": {str(rate): str(f) for rate, f in folders.items()}, "category": category}

    def action() -> dict[str, Any]:
        rows = {rate: sweep.val_accuracy(folder, category) for rate, folder in folders.items()}
        rate = sweep.choose_rate({r: row["value"] for r, row in rows.items()})
        sweep.link_chosen(arm_folder, rate)
        chosen = {"rate": rate, "category": category, "val": {str(r): v for r, v in rows.items()}}
        write_json_atomic(arm_folder / sweep.CHOSEN, chosen, indent=1)
        trained = next(train for train, _ in points if train.rate == rate)
        # The chosen point's cost under its own key: ``flops`` would count it twice.
        moved, flops = trained.results.get("moved"), trained.results.get("flops")
        return {"rate": rate, "moved": moved, "trained_flops": flops}

    outputs = [arm_folder / sweep.CHOSEN, arm_folder / "final"]
    return Step(name, "choose", spec, outputs, action, seed, arm, track)


def _analysis_step(
    study: StudyConfig,
    name: str,
    analyses: list[str],
    models: dict[str, Path],
    splits: dict[str, Path],
    out: Path,
    seed: int,
    track: str = "main",
) -> Step:
    spec = {
        "models": {k: str(v) for k, v in models.items()},
        "analyses": analyses,
        "limit": study.analysis.limit,
        "seed": seed,
        "data": str(splits["probes"]),
        "eval_data": str(splits["test"]),
    }
    if study.analysis.permutation_limit is not None:
        # Only when set, so the steps of studies run before it existed keep their keys.
        spec["permutation_limit"] = study.analysis.permutation_limit
    progress = Progress()

    def action() -> dict[str, Any]:
        from pivotlab.analysis.config import AnalyzeConfig
        from pivotlab.analysis.suite import run_analyses

        cfg = AnalyzeConfig(
            analyses=tuple(analyses),
            data=splits["probes"],
            eval_data=splits["test"],
            out=out,
            models=[(k, str(v)) for k, v in models.items()],
            limit=study.analysis.limit,
            permutation_limit=study.analysis.permutation_limit,
            seed=seed,
        )
        return {"rows": len(run_analyses(cfg, log=lambda line: None, progress=progress))}

    outputs = [out / "metrics.jsonl", out / "table.md"]
    return Step(name, "analyze", spec, outputs, action, seed, track=track, progress=progress)


def _export_step(name: str, model: Path, out: Path, lm: str, seed: int, arm: str) -> Step:
    """The MLLM's encoder cut at its feature layer, then a fresh MLLM around it."""
    spec = {"model": str(model), "lm": lm, "seed": seed}
    encoder = out / "encoder"
    mllm = out / "mllm"

    def action() -> dict[str, Any]:
        from pivotlab.model.export import export_encoder, transplant

        export_encoder(model, encoder)
        transplant(encoder, lm, mllm, seed=seed)
        return {}

    return Step(name, "export", spec, [encoder, mllm], action, seed, arm)


def original_name(source: str) -> str:
    """The transplant table's name for an original encoder source (``zoo:enc-s`` -> enc-s)."""
    return Path(source.removeprefix("zoo:")).name


def world_splits(study: StudyConfig) -> dict[str, Path]:
    """The study's world splits (the sections it names), generated into the cache on first
    use. Without ``world.train`` the recipes' own data (real datasets) is used to train."""
    from pivotlab.train.stage_data import resolve_split

    sections = study.world.sections().items()
    parsed = {key: parse_split(value, f"world.{key}") for key, value in sections}
    return {key: resolve_split(split).path for key, split in parsed.items() if split is not None}


def _data_sets(splits: dict[str, Any], train: str = "train") -> dict[str, Any]:
    """Stage config settings for the study's world: split folders, or (a dry run) the
    ``WorldConfig`` fields that would make them; ``train`` names the section trained on."""
    names = {train: "data.train", "val": "data.eval"}
    return {
        names[key]: value if isinstance(value, dict) else str(value)
        for key, value in splits.items()
        if key in names
    }


def _transplant_steps(
    study: StudyConfig, run: Path, seed: int, encoders: dict[str, Path], splits: dict[str, Path]
) -> list[Step]:
    """PIVOT's step: every encoder, frozen, in a fresh MLLM (align, then full), evaluated."""
    plan = study.transplant
    assert plan is not None
    steps: list[Step] = []
    sources: dict[str, dict[str, Any]] = {}
    architectures: dict[str, tuple[str, str]] = {}  # (vision, lm) each transplant is made of
    chosen = {a: m for a, m in encoders.items() if plan.encoders is None or a in plan.encoders}
    for arm, model in chosen.items():
        folder = run / f"seed{seed}" / "transplant" / arm
        steps.append(
            _export_step(f"seed{seed}/transplant-{arm}/export", model, folder, plan.lm, seed, arm)
        )
        sources[arm] = {"model.init": str(folder / "mllm"), "model.vision": None, "model.lm": None}
        # Planned as the tower it was cut from: the exported one drops the unread last block.
        architectures[arm] = (study.stage1.vision, plan.lm)
    for source in [*plan.originals, *control_only(study).values()]:
        architectures[original_name(source)] = (source, plan.lm)
        sources[original_name(source)] = {
            "model.init": None,
            "model.vision": source,
            "model.lm": plan.lm,
        }
    for arm, model_sets in sources.items():
        folder = run / f"seed{seed}" / "transplant" / arm
        base = {"seed": seed, "run": f"transplant-{arm}-s{seed}", **_data_sets(splits)}
        align = stage_config(study, plan.align, "transplant.align", {**base, **model_sets})
        pair = architectures[arm]
        name = f"seed{seed}/transplant-{arm}"
        steps.append(_train_step(f"{name}/align", align, folder / "align", seed, arm, pair))
        full_sets = {
            **base,
            "model.init": str(folder / "align" / "final"),
            "train.parts": ["projector", "lm"],
        }
        full = stage_config(study, plan.full, "transplant.full", full_sets)
        steps.append(_train_step(f"{name}/full", full, folder / "full", seed, arm, pair))
        steps.append(
            _eval_step(
                study,
                f"seed{seed}/transplant-{arm}/eval",
                folder / "full" / "final",
                splits["test"],
                folder / "eval",
                seed,
                arm,
                blind=False,
                measures=TRANSPLANT,
            )
        )
    return steps


@dataclass(frozen=True)
class Track:
    """One Stage-1 model and the arms trained from it: the study's main track (analysed
    and transplanted), a point of the scale sweep (``folder`` "scale"), or the Stage 1 of
    a transplant control's encoder (``folder`` "control", no arms)."""

    name: str
    vision: str
    lm: str
    arms: tuple[str, ...]
    analyses: tuple[str, ...]
    main: bool = False
    folder: str = "scale"

    def root(self, run: Path, seed: int) -> Path:
        folder = run / f"seed{seed}"
        return folder if self.main else folder / self.folder / self.name

    def step(self, seed: int, name: str) -> str:
        return f"seed{seed}/{name}" if self.main else f"seed{seed}/{self.folder}-{self.name}/{name}"


def scale_name(vision: str, lm: str) -> str:
    """A scale point's name: ``enc-m+lm-m``."""
    return f"{original_name(vision)}+{original_name(lm)}"


def tracks(study: StudyConfig) -> list[Track]:
    """The main track, every other (vision, lm) pair of the scale sweep, then Stage 1 on
    each transplant-control encoder that none of those trains with the transplant's LM
    (when the control asks for its gap in Stage 1)."""
    main_pair = (study.stage1.vision, study.stage1.lm)
    found = [
        Track("main", *main_pair, tuple(study.post.arms), tuple(study.analysis.analyses), True, "")
    ]
    scale = study.sweeps.scale
    for vision in scale.visions if scale else []:
        for lm in scale.lms:
            if (vision, lm) != main_pair:
                name = scale_name(vision, lm)
                found.append(Track(name, vision, lm, tuple(scale.arms), tuple(scale.analyses)))
    plan = study.transplant
    if plan is not None and plan.control is not None and plan.control.stage1:
        trained = {(track.vision, track.lm) for track in found}
        for vision in control_visions(study).values():
            if (vision, plan.lm) not in trained:
                name = scale_name(vision, plan.lm)
                found.append(Track(name, vision, plan.lm, (), (), folder="control"))
    return found


def track_seeds(study: StudyConfig, track: Track) -> list[int]:
    """The study seeds whose arms a track trains (the scale sweep may run on some only)."""
    sweep = study.sweeps.scale
    if track.main or track.folder != "scale" or sweep is None or sweep.seeds is None:
        return list(study.seeds)
    return [seed for seed in study.seeds if seed in sweep.seeds]


def transplanted(study: StudyConfig) -> list[str]:
    """The encoders the transplant takes, by name: the study's own, the originals, then
    the encoders it takes for its positive control alone."""
    if study.transplant is None:
        return []
    own = [STAGE1, *study.post.arms]
    chosen = [e for e in own if study.transplant.encoders is None or e in study.transplant.encoders]
    originals = [original_name(source) for source in study.transplant.originals]
    return chosen + originals + list(control_only(study))


def control_visions(study: StudyConfig) -> dict[str, str]:
    """The transplant control's sides that are vision sources or originals, by transplant
    name (``enc-s-2k``) -> source (``zoo:enc-s-2k``); the study's own encoders are not."""
    plan = study.transplant
    if plan is None or plan.control is None:
        return {}
    originals = {original_name(source): source for source in plan.originals}
    found = {}
    for side in (plan.control.weaker, plan.control.stronger):
        if side in originals:
            found[side] = originals[side]
        elif is_vision_source(side):
            found[original_name(side)] = side
    return found


def control_only(study: StudyConfig) -> dict[str, str]:
    """The encoders transplanted for the positive control alone (no claim reads them)."""
    plan = study.transplant
    originals = {original_name(source) for source in plan.originals} if plan else set()
    return {name: v for name, v in control_visions(study).items() if name not in originals}


def is_vision_source(side: str) -> bool:
    """Whether a control side names a vision source (a zoo part, a folder, a hub id)
    rather than one of the study's encoders by name."""
    return ":" in side or "/" in side


def _stage1_steps(
    study: StudyConfig, run: Path, seed: int, splits: dict[str, Path], track: Track
) -> list[Step]:
    """``align`` then ``full`` from the track's vision tower and LM, with the VQA of the
    result (and, on the main track, of the blind baseline)."""
    root = track.root(run, seed)
    base = {"seed": seed, **_data_sets(splits)}
    label = "" if track.main else f"-{track.name}"
    align_sets = {**base, "run": f"align{label}-s{seed}", "model.init": None}
    align_sets.update({"model.vision": track.vision, "model.lm": track.lm})
    align = stage_config(study, study.stage1.align, "stage1.align", align_sets)
    full_sets = {**base, "run": f"full{label}-s{seed}", "model.init": str(root / "align" / "final")}
    full = stage_config(study, study.stage1.full, "stage1.full", full_sets)
    model = root / "full" / "final"
    pair = (track.vision, track.lm)
    steps = [
        _train_step(track.step(seed, "align"), align, root / "align", seed, STAGE1, pair),
        _train_step(track.step(seed, "full"), full, root / "full", seed, STAGE1, pair),
    ]
    for arm in [STAGE1, *([BLIND] if study.evaluate.blind and track.main else [])]:
        name, out = track.step(seed, f"eval-{arm}"), root / "eval" / arm
        steps.append(
            _eval_step(study, name, model, splits["test"], out, seed, arm, arm == BLIND, track.name)
        )
    if "val" in splits:  # the reference the arms' val scores (rates, headroom) are read against
        name, out = track.step(seed, f"val-{STAGE1}"), root / "val" / STAGE1
        steps.append(
            _eval_step(study, name, model, splits["val"], out, seed, STAGE1, False, track.name, VAL)
        )
    return steps


def _arm_steps(
    study: StudyConfig,
    sets: dict[str, Any],
    root: Path,
    seed: int,
    splits: dict[str, Path],
    track: Track,
    arm: str,
    stage1: Path,
) -> list[Step]:
    """One post arm trained from the Stage-1 model (a swept arm: once per rate of the sweep,
    then the choice among them on val) and, with a val split, each model scored there and
    its answers' KL from Stage 1 measured there."""
    from pivotlab.study.sweep import rate_label

    sweep = study.post.sweep
    swept = sweep is not None and arm in study.post.swept_arms()
    rates: list[float | None] = list(sweep.rates) if sweep is not None and swept else [None]
    pair = (track.vision, track.lm)
    steps: list[Step] = []
    points = []  # a sweep's (training, val evaluation) per rate
    for rate in rates:
        point = "" if rate is None else rate_label(rate)
        point_sets = sets
        if rate is not None and sweep is not None:
            lr = sweep.learning_rates(rate)
            point_sets = {**sets, "train.lr": lr, "run": f"{sets['run']}-{point}"}
        cfg = stage_config(study, study.post.arms[arm], f"post.arms.{arm}", point_sets)
        out, label = root / "post" / arm / point, arm + (f"/{point}" if point else "")
        made = [
            _train_step(
                track.step(seed, f"post-{label}"), cfg, out, seed, arm, pair, stage1, track.name
            )
        ]
        if "val" in splits:
            val, kl, model = root / "val" / arm / point, root / "kl" / arm / point, out / "final"
            name = track.step(seed, f"val-{label}")
            made.append(
                _eval_step(
                    study, name, model, splits["val"], val, seed, arm, False, track.name, VAL
                )
            )
            name = track.step(seed, f"kl-{label}")
            made.append(
                _kl_step(study, name, model, stage1, splits["val"], kl, seed, arm, track.name)
            )
            points.append((made[0], made[1]))
        for step in made:
            step.rate = rate
        steps += made
    if swept:
        name = track.step(seed, f"post-{arm}")
        steps.append(_choose_step(study, name, root / "post" / arm, points, seed, arm, track.name))
    return steps


def track_steps(
    study: StudyConfig, run: Path, seed: int, splits: dict[str, Path], track: Track
) -> tuple[list[Step], dict[str, Path]]:
    """Stage 1 (unless shared and made by an earlier seed), the track's arms, their
    evaluation and analysis; and the models the seed's analyses and transplants use."""
    stage1_seed = seed if study.stage1.seed is None else study.stage1.seed
    steps = []
    if study.stage1.seed is None or seed == study.seeds[0]:
        steps += _stage1_steps(study, run, stage1_seed, splits, track)
    root = track.root(run, seed)
    models = {STAGE1: track.root(run, stage1_seed) / "full" / "final"}
    label = "" if track.main else f"-{track.name}"
    base = {"seed": seed, **_data_sets(splits, "post" if "post" in splits else "train")}
    for arm in track.arms:
        sets = {**base, "run": f"{arm}{label}-s{seed}", "model.init": str(models[STAGE1])}
        steps += _arm_steps(study, sets, root, seed, splits, track, arm, models[STAGE1])
        models[arm] = root / "post" / arm / "final"
        name, out = track.step(seed, f"eval-{arm}"), root / "eval" / arm
        test = splits["test"]
        steps.append(_eval_step(study, name, models[arm], test, out, seed, arm, False, track.name))
    if track.analyses:
        name, out = track.step(seed, "analysis"), root / "analysis"
        analyses = list(track.analyses)
        steps.append(_analysis_step(study, name, analyses, models, splits, out, seed, track.name))
    return steps, models


def seed_steps(study: StudyConfig, run: Path, seed: int, splits: dict[str, Path]) -> list[Step]:
    """Every step of one seed, in an order that satisfies their dependencies."""
    steps: list[Step] = []
    main_models: dict[str, Path] = {}
    for track in tracks(study):
        if seed not in track_seeds(study, track):
            continue
        made, models = track_steps(study, run, seed, splits, track)
        steps += made
        main_models = models if track.main else main_models
    if study.transplant is not None:
        steps += _transplant_steps(study, run, seed, main_models, splits)
    return steps


def run_steps(
    steps: list[Step],
    ledger: Ledger,
    log: Callable[[str], None] = print,
    logs: Path | None = None,
) -> None:
    """Run the steps in order, skipping finished ones; one progress line per step. With
    ``logs``, what each step prints (the libraries' logs included) goes to
    ``logs/<step>.log`` instead of the console, and a terminal shows a live line for the
    step that runs."""
    began = time.perf_counter()
    time_left = TimeLeft(steps)
    for index, step in enumerate(steps):
        counter = f"[{index + 1}/{len(steps)}] {step.name}"
        key = fingerprint(step.spec)
        record = ledger.finished(step.name, key)
        if record is None:
            start = time.perf_counter()
            results = _run(step, logs, counter, log, time_left.left(steps[index:]))
            wall = time.perf_counter() - start
            record = ledger.record(
                step.name, key, step.outputs, wall, results.pop("flops", None), results
            )
            status = f"done in {clock(wall)}"
        else:
            status = "finished earlier, skipped"
        time_left.finished(step, record.wall_s)
        step.results = {**record.results, "wall_s": record.wall_s, "flops": record.flops}
        elapsed = time.perf_counter() - began
        left = time_left.left(steps[index + 1 :])
        log(f"{counter}: {status} (elapsed {clock(elapsed)}, about {clock(left)} left)")


def _run(
    step: Step, logs: Path | None, counter: str, log: Callable[[str], None], left: float
) -> dict:
    """A step's action, what it prints in its log file when there is one."""
    if logs is None:
        return step.action()
    path = logs / f"{step.name.replace('/', '--')}.log"
    began = time.perf_counter()

    def study_left() -> str:
        return f"(study: about {clock(max(0.0, left - (time.perf_counter() - began)))} left)"

    try:
        with (
            step_output(path) as console,
            LiveLine(console, counter, step.progress, study_left),
        ):
            return step.action()
    except BaseException:
        log(f"{counter}: failed; what it printed is in {path}")
        raise
