"""Everything a study's report shows, gathered from the files its steps left.

Rows per report section (VQA, val and the rate sweep, how far the parts moved, analyses,
transplants, compute), the claims' rows (``claims.py``), and the warnings a reader must see
before any verdict; ``collect`` puts them into one ``StudyResults``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivotlab.analysis import PCA, SALIENCY
from pivotlab.io import read_jsonl
from pivotlab.study.claims import (
    HEADLINE_CATEGORY,
    arm_label,
    beside_the_paper,
    claim_row,
    claims,
    decide_primary,
    primary_comparisons,
    transplant_control,
)
from pivotlab.study.config import Recipe, StudyConfig
from pivotlab.study.pipeline import (
    BLIND,
    STAGE1,
    TRANSPLANT,
    VAL,
    VQA,
    Step,
    control_only,
    tracks,
)

if TYPE_CHECKING:  # the report (matplotlib) is imported when it is written
    from pivotlab.study.report import StudyResults

# How far above Stage 1 on val the best arm must get for the study to be able to tell
# objectives apart by what they teach (docs/study.md, The protocol).
HEADROOM = 0.03


def _in_report_order(study: StudyConfig, steps: list[Step], kind: str) -> list[Step]:
    """The steps of ``kind``, track by track, seed by seed (steps run seed by seed)."""
    order = {track.name: i for i, track in enumerate(tracks(study))}
    chosen = [step for step in steps if step.kind == kind]
    return sorted(chosen, key=lambda step: (order[step.track], step.seed))


def _category_rows(folder: Path, **labels: Any) -> list[dict]:
    rows = []
    for row in read_jsonl(folder / "metrics.jsonl"):
        if row.get("metric") == "accuracy" and row.get("task") is None:
            keep = ("category", "value", "ci_low", "ci_high", "n", "chance")
            source = {"source": str(folder / "metrics.jsonl")}
            rows.append({**labels, **{key: row.get(key) for key in keep}, **source})
    return rows


def vqa_rows(study: StudyConfig, steps: list[Step]) -> list[dict]:
    """The test accuracy per category of every model evaluated on VQA, track by track and
    seed by seed, each named by :func:`arm_label` (a sweep's models apart from the main
    ones)."""
    rows = []
    for step in _in_report_order(study, steps, "evaluate"):
        if step.measures == VQA:
            assert step.arm is not None
            label = arm_label(step.arm, step.track)
            folder = step.outputs[0].parent
            rows += _category_rows(folder, arm=label, seed=step.seed, track=step.track)
    return rows


def _transplant_rows(study: StudyConfig, steps: list[Step]) -> list[dict]:
    return [
        row
        for step in _in_report_order(study, steps, "evaluate")
        if step.measures == TRANSPLANT
        for row in _category_rows(step.outputs[0].parent, encoder=step.arm, seed=step.seed)
    ]


def _moved_rows(study: StudyConfig, steps: list[Step]) -> list[dict]:
    """How far each post arm moved from its Stage-1 model, per part and seed (a swept arm:
    its chosen point, which the sweep's choice step records)."""
    arms = [
        step
        for kind in ("train", "choose")
        for step in _in_report_order(study, steps, kind)
        if step.rate is None
    ]
    return [
        {"arm": arm_label(step.arm, step.track), "seed": step.seed, "part": part, "value": value}
        for step in arms
        for part, value in (step.results.get("moved") or {}).items()
    ]


def _tuning_rows(study: StudyConfig, steps: list[Step]) -> list[dict]:
    """Every model scored on val (Stage 1, each arm, each point of a rate sweep): its val
    accuracy in the sweep's category, its answers' KL from Stage 1 there, how far its parts
    moved, its rate and whether the sweep chose it."""
    from pivotlab.study.sweep import val_accuracy

    category = study.post.sweep.category if study.post.sweep else HEADLINE_CATEGORY
    chosen = {(s.track, s.seed, s.arm): s.results.get("rate") for s in steps if s.kind == "choose"}
    kl = {(s.track, s.seed, s.arm, s.rate): s for s in steps if s.kind == "divergence"}
    # A post arm's training (a transplant's steps are named ``transplant-<arm>/...``).
    trained = {
        (s.track, s.seed, s.arm, s.rate): s
        for s in steps
        if s.kind == "train" and "/post-" in s.name
    }
    rows = []
    for step in _in_report_order(study, steps, "evaluate"):
        if step.measures != VAL:
            continue
        key = (step.track, step.seed, step.arm, step.rate)
        folder = step.outputs[0].parent
        accuracy = val_accuracy(folder, category)
        row = {"arm": arm_label(step.arm, step.track), "track": step.track, "seed": step.seed}
        row.update({k: accuracy.get(k) for k in ("category", "value", "ci_low", "ci_high", "n")})
        train = trained.get(key)
        lr = train.config.train.lr if train is not None and train.config is not None else None
        row.update(rate=step.rate, lr=lr, swept=step.rate is not None)
        row["chosen"] = step.rate is not None and chosen.get(key[:3]) == step.rate
        row["moved"] = train.results.get("moved") if train is not None else None
        if key in kl:
            summary = read_jsonl(kl[key].outputs[1])[-1]
            row.update(kl=summary["value"], kl_ci_low=summary["ci_low"])
            row["kl_ci_high"] = summary["ci_high"]
        row["source"] = str(folder / "metrics.jsonl")
        rows.append(row)
    return rows


def _val_predictions(steps: list[Step], track: str, arm: str, rate: float | None) -> dict:
    """Seed -> the val predictions of ``arm`` (at ``rate``) on ``track``."""
    return {
        step.seed: read_jsonl(step.outputs[0])
        for step in steps
        if (step.kind, step.measures, step.track, step.arm, step.rate)
        == ("evaluate", VAL, track, arm, rate)
    }


def _headroom(study: StudyConfig, steps: list[Step], tuning: list[dict]) -> dict | None:
    """The best arm on val (each swept arm at its chosen rate) against Stage 1 on val, paired
    over the same questions: can Stage 2 change what the model sees in this world? The
    protocol asks for at least ``HEADROOM`` (docs/study.md, The protocol)."""
    from pivotlab.study import stats

    main = [r for r in tuning if r["track"] == "main" and r["arm"] != STAGE1]
    kept = [r for r in main if r["chosen"] or not r["swept"]]
    if not kept:
        return None
    by_arm: dict[tuple[str, float | None], list[float]] = {}
    for row in kept:
        by_arm.setdefault((row["arm"], row["rate"]), []).append(row["value"])
    arm, rate = max(by_arm, key=lambda key: sum(by_arm[key]) / len(by_arm[key]))
    treated = _val_predictions(steps, "main", arm, rate)
    stage1 = _val_predictions(steps, "main", STAGE1, None)
    if study.stage1.seed is not None:  # one Stage-1 model that every seed started from
        stage1 = {seed: stage1[study.stage1.seed] for seed in treated}
    category = study.post.sweep.category if study.post.sweep else HEADLINE_CATEGORY
    difference = stats.paired_accuracy_difference(stage1, treated, category=category)
    return {"arm": arm, "rate": rate, "category": category, "required": HEADROOM, **difference}


def _analysis_rows(study: StudyConfig, steps: list[Step]) -> list[dict]:
    rows = []
    for step in _in_report_order(study, steps, "analyze"):
        path = step.outputs[0]
        for row in read_jsonl(path) if path.is_file() else []:
            arm = arm_label(row.get("encoder"), step.track)
            labels = {"arm": arm, "seed": step.seed, "track": step.track, "source": str(path)}
            rows.append({**row, **labels})
    return rows


def _compute_rows(steps: list[Step]) -> list[dict]:
    return [
        {
            "step": step.name,
            "arm": step.arm,
            "seed": step.seed,
            "wall_s": step.results.get("wall_s"),
            "flops": step.results.get("flops"),
            "note": step.kind,
            "source": f"steps/{step.name.replace('/', '--')}.json",
        }
        for step in steps
    ]


def _pivot_fraction(study: StudyConfig, steps: list[Step]) -> dict | None:
    """The evolving step's FLOPs against the original encoder's pretraining FLOPs (the
    paper's "<1%"), for the first non-baseline arm and a zoo encoder."""
    from pivotlab.zoo.build import manifests

    vision = study.stage1.vision
    evolving = [a for a in study.post.arms if a != study.post.baseline]
    if not vision.startswith("zoo:") or not evolving:
        return None
    part = vision.removeprefix("zoo:")
    pretraining = manifests().get(part, {}).get("compute", {}).get("flops")
    arm_flops = [
        s.results.get("trained_flops", s.results.get("flops"))
        for s in steps
        if s.name.endswith(f"/post-{evolving[0]}")
    ]
    if not pretraining or not arm_flops or None in arm_flops:
        return None
    pivot = sum(arm_flops) / len(arm_flops)
    return {"pivot_flops": pivot, "pretraining_flops": pretraining, "fraction": pivot / pretraining}


def _pictures(study: StudyConfig, run: Path) -> dict[str, dict[str, list[str]]]:
    """Saliency overlays and PCA views of the first seed's main track, by model: the
    analysis suite draws them to ``analysis/<model>/<kind>/*.png``."""
    folder = run / f"seed{study.seeds[0]}" / "analysis"
    found: dict[str, dict[str, list[str]]] = {SALIENCY: {}, PCA: {}}
    for picture in sorted(folder.glob("*/*/*.png")) if folder.is_dir() else []:
        kind, arm = picture.parent.name, picture.parent.parent.name
        if kind in found:
            found[kind].setdefault(arm, []).append(str(picture))
    order = {arm: i for i, arm in enumerate([STAGE1, *study.post.arms])}
    return {
        kind: dict(sorted(by_arm.items(), key=lambda item: order.get(item[0], len(order))))
        for kind, by_arm in found.items()
    }


def _setup(study: StudyConfig) -> list[str]:
    """What every number was measured on, in a few lines."""

    def recipe(r: Recipe) -> str:
        return r.config + (f" ({', '.join(r.overrides)})" if r.overrides else "")

    world = study.world
    lines = [
        f"World: train {world.train}; "
        + (f"Stage 2 trains on {world.post}; " if world.post else "")
        + f"test {world.test}; probes {world.probes}.",
        f"Stage 1: {study.stage1.vision} + {study.stage1.lm}; align {recipe(study.stage1.align)};"
        f" full {recipe(study.stage1.full)}"
        + ("" if study.stage1.seed is None else f"; one Stage-1 model (seed {study.stage1.seed})"),
        "Arms: " + "; ".join(f"{name} {recipe(r)}" for name, r in study.post.arms.items()) + ".",
    ]
    sweep = study.post.sweep
    if sweep is not None:
        rates = ", ".join(f"{rate:g}" for rate in sweep.rates)
        lines.append(
            f"Rates: {', '.join(study.post.swept_arms())} each trained at {rates} "
            f"({sweep.describe()}) and kept at the rate with the best val {sweep.category} "
            "accuracy; the test split is never read to choose."
        )
    if study.transplant is not None:
        plan = study.transplant
        extra = list(control_only(study).values())
        lines.append(
            f"Transplant: into {plan.lm}; align {recipe(plan.align)}; full {recipe(plan.full)} "
            f"(encoder frozen); originals {', '.join(plan.originals) or 'none'}"
            + (f"; for the positive control alone {', '.join(extra)}." if extra else ".")
        )
    return lines


def _interval(row: dict) -> str:
    return f" [{row['ci_low']:.1%}, {row['ci_high']:.1%}]"


def _transplant_warning(transplant: list[dict], blind: list[float]) -> list[str]:
    """A warning when no transplanted MLLM is clearly above the blind baseline (the Stage-1
    model without images: the same questions answered by their wording alone); then the
    PIVOT claims compare models that hardly see."""
    rows = [r for r in transplant if r["category"] == HEADLINE_CATEGORY]
    if not rows or not blind:
        return []
    reference = sum(blind) / len(blind)
    if any(r["ci_low"] is not None and r["ci_low"] > reference for r in rows):
        return []
    values = sorted(r["value"] for r in rows)
    return [
        f"Warning: no transplanted MLLM's {HEADLINE_CATEGORY} accuracy is clearly above the "
        f"blind baseline's ({reference:.1%}; {len(rows)} models over encoders and seeds, "
        f"{values[0]:.1%} to {values[-1]:.1%}): the transplant claims compare models that "
        "hardly see."
    ]


def trust_warnings(vqa: list[dict], claim_rows: list[dict], transplant: list[dict]) -> list[str]:
    """What a reader must know before trusting a verdict: whether Stage 1 and the
    transplanted models use the image at all (against the blind baseline), and how many
    verdicts chance alone would give."""
    found = []

    def headline(arm: str) -> list[dict]:
        return [
            r
            for r in vqa
            if r["arm"] == arm and r["category"] == HEADLINE_CATEGORY and r["track"] == "main"
        ]

    for stage1, blind in zip(headline(STAGE1), headline(BLIND), strict=False):
        if stage1["ci_low"] is None or stage1["ci_low"] <= blind["value"]:
            interval = "" if stage1["ci_low"] is None else _interval(stage1)
            found.append(
                f"Warning: the Stage-1 model's {HEADLINE_CATEGORY} accuracy "
                f"({stage1['value']:.1%}{interval}, seed {stage1['seed']}; chance "
                f"{stage1['chance']:.1%}) is not clearly above the blind baseline's "
                f"({blind['value']:.1%}): it barely uses the image, and the claims compare "
                "models that hardly see."
            )
    found += _transplant_warning(transplant, [r["value"] for r in headline(BLIND)])
    return found + _chance_lines(claim_rows)


def _level_rates(choice: Step, tuning: list[dict]) -> list[float]:
    """The other rates of a choice's sweep whose val accuracy equals the chosen one's."""
    arm = arm_label(choice.arm, choice.track)
    points = [
        row
        for row in tuning
        if (row["track"], row["seed"], row["arm"]) == (choice.track, choice.seed, arm)
        and row["swept"]
    ]
    best = next(row["value"] for row in points if row["chosen"])
    return [row["rate"] for row in points if row["value"] == best and not row["chosen"]]


def _tuning_warnings(
    study: StudyConfig, steps: list[Step], tuning: list[dict], headroom: dict | None
) -> list[str]:
    """A chosen rate at the edge of its grid (a better one may lie outside it), and a Stage 2
    whose best arm moves val accuracy less than ``HEADROOM`` above Stage 1."""
    from pivotlab.study.report import format_difference
    from pivotlab.study.sweep import at_edge

    found = []
    rates = study.post.sweep.rates if study.post.sweep else []
    for step in steps:
        rate = step.results.get("rate")
        if step.kind == "choose" and rate is not None and at_edge(rate, rates):
            end = "lowest" if rate == min(rates) else "highest"
            level = _level_rates(step, tuning)
            tie = f"; level on val with {', '.join(f'{r:g}' for r in level)}" if level else ""
            found.append(
                f"Warning: {arm_label(step.arm, step.track)} (seed {step.seed}) kept the {end} "
                f"rate of its sweep ({rate:g}{tie}): its best rate may lie outside the grid"
                + (", or no rate helps on val (a tie goes to the lower rate)." if level else ".")
            )
    if headroom is not None and headroom["diff"] < headroom["required"]:
        found.append(
            f"Warning: no headroom. The best arm on val ({headroom['arm']}) is "
            f"{format_difference(headroom['diff'], headroom['ci_low'], headroom['ci_high'], True)}"
            f" over Stage 1 in {headroom['category']} accuracy; the "
            f"protocol asks for {100 * headroom['required']:.0f} points: in this world Stage 2 can "
            "barely change what the model sees, so a 'not significant' between objectives says "
            "little about them (docs/study.md, The protocol)."
        )
    return found


def control_warning(control: dict | None) -> list[str]:
    """When the positive control does not pass, above the claims: failed (the transplant
    missed a known order) or void (no known order to find)."""
    from pivotlab.study.report import control_known, format_difference

    if control is None or control["status"] == "passed":
        return []
    difference = format_difference(control["diff"], control["ci_low"], control["ci_high"], True)
    if control["status"] == "void":
        return [
            "Warning: the transplant's positive control is void: Stage 1 itself does not "
            f"tell the pair apart ({control_known(control)}), so {control['comparison']} "
            "has no known difference to find; read the transplant claims as untested by it."
        ]
    return [
        f"Warning: the transplant failed its positive control ({control['comparison']}: "
        f"{difference}; known: {control_known(control)}): it cannot separate "
        "encoders of that gap, so read the transplant claims as not measured."
    ]


def _chance_lines(claim_rows: list[dict]) -> list[str]:
    """How many verdicts chance alone would give: at most 5% for any primary one, about
    5% of the exploratory ones."""

    def decided(rows: list[dict]) -> int:
        return sum(r["verdict"].startswith(("holds", "reversed")) for r in rows)

    primary = [r for r in claim_rows if r.get("primary")]
    exploratory = [r for r in claim_rows if not r.get("primary")]
    lines = []
    if primary:
        lines.append(
            f"{len(primary)} primary claims, pre-registered in the preset and Holm-corrected "
            "across them: when nothing differs, the chance that any of them reads 'holds' or "
            f"'reversed' is at most 5% ({decided(primary)} did)."
        )
    if exploratory:
        lines.append(
            f"{len(exploratory)} exploratory claims, each at 95% uncorrected: about "
            f"{0.05 * len(exploratory):.1f} of them would read 'holds' or 'reversed' by chance "
            f"alone when nothing differs ({decided(exploratory)} did)."
        )
    return lines


def collect(study: StudyConfig, run: Path, steps: list[Step], command: str) -> StudyResults:
    """Everything the report shows, from the steps' files."""
    vqa = vqa_rows(study, steps)
    claim_rows = [claim_row(study, steps, claim) for claim in claims(study)]
    decide_primary(claim_rows, primary_comparisons(study))
    beside_the_paper(claim_rows, study.paper)
    transplant = _transplant_rows(study, steps)
    tuning = _tuning_rows(study, steps)
    headroom = _headroom(study, steps, tuning)
    control = transplant_control(study, steps)
    warnings = control_warning(control) + trust_warnings(vqa, claim_rows, transplant)
    return {
        "title": f"pivotlab study: {study.name}",
        "preset": study.name,
        "command": command,
        "warnings": _tuning_warnings(study, steps, tuning, headroom) + warnings,
        "notes": study.notes,
        "not_measurable": study.not_measurable,
        "seeds": study.seeds,
        "setup": _setup(study),
        "vqa": vqa,
        "claims": claim_rows,
        "analysis": _analysis_rows(study, steps),
        "transplant": transplant,
        "transplant_control": control,
        "moved": _moved_rows(study, steps),
        "tuning": tuning,
        "headroom": headroom,
        "compute": _compute_rows(steps),
        "pivot_fraction": _pivot_fraction(study, steps),
        "pictures": _pictures(study, run),
    }
