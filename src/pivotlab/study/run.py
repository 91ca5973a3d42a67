"""``pivotlab study``: run every step, then gather what they left into one report.

The claims the report answers are fixed here, in plain language, with the comparison
and the direction that would support them; the statistics decide the verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pivotlab.analysis import LINEAR_PROBE, PCA, ROW_NAMES, SALIENCY
from pivotlab.configtree import ConfigError, build_dataclass
from pivotlab.io import read_jsonl, write_json_atomic, write_text_atomic
from pivotlab.study.config import PaperEffect, Recipe, StudyConfig, StudyError
from pivotlab.study.ledger import Ledger
from pivotlab.study.pipeline import (
    BLIND,
    STAGE1,
    TRANSPLANT,
    VAL,
    VQA,
    Step,
    Track,
    control_only,
    is_vision_source,
    original_name,
    run_steps,
    seed_steps,
    track_seeds,
    tracks,
    transplanted,
    world_splits,
)

if TYPE_CHECKING:  # the report (matplotlib) is imported when it is written
    from pivotlab.study.report import StudyResults

HEADLINE_CATEGORY = "vision_centric"
# A claim's category that reads the macro average over categories (evaluate's "average").
AVERAGE = "average"
# The encoder measurement claims about encoders read: the logistic probe of shape and
# colour jointly, the label that needs both attributes the world's questions ask about.
ENCODER_MEASUREMENT = {
    "analysis": ROW_NAMES[LINEAR_PROBE],
    "method": "logistic",
    "label": "shape_color",
}
ENCODER = "encoder probe"  # a claim measured on the encoder (VQA, TRANSPLANT: pipeline.py)
# How far above Stage 1 on val the best arm must get for the study to be able to tell
# objectives apart by what they teach (docs/study.md, The protocol).
HEADROOM = 0.03


@dataclass(frozen=True)
class Claim:
    """A question the study answers: ``treated`` beats ``control``, measured ``where``
    (VQA accuracy on ``category``, the same after transplant, or the encoder probe), each
    side an arm of a track (the main track unless named)."""

    question: str
    control: str
    treated: str
    where: str = VQA
    category: str = HEADLINE_CATEGORY
    control_track: str = "main"
    treated_track: str = "main"

    @property
    def comparison(self) -> str:
        """How the report names it, and the preset's ``primary`` list picks it: ``dpo - sft
        (VQA)``."""
        treated = arm_label(self.treated, self.treated_track)
        return f"{treated} - {arm_label(self.control, self.control_track)} ({self.where})"


def _transplant_claims(study: StudyConfig, evolved: list[str]) -> list[Claim]:
    plan = study.transplant
    originals = [original_name(source) for source in plan.originals] if plan else []
    taken = transplanted(study)
    baseline = study.post.baseline
    found = []
    for arm in [a for a in evolved if a in taken]:
        if STAGE1 in taken:  # DPO's own effect on the encoder, apart from Stage 1's tuning
            question = (
                f"Does the {arm}-evolved encoder make a better MLLM than the Stage-1 encoder it "
                "was evolved from?"
            )
            found.append(Claim(question, STAGE1, arm, TRANSPLANT))
        for original in originals[:1]:
            question = (
                f"Does the {arm}-evolved encoder make a better MLLM than the original {original}?"
            )
            found.append(Claim(question, original, arm, TRANSPLANT))
        if baseline in taken:
            question = (
                f"Is the {arm}-evolved encoder a better transplant than the {baseline}-evolved one?"
            )
            found.append(Claim(question, baseline, arm, TRANSPLANT))
        for larger in originals[1:]:
            question = f"Tier jumping: does {originals[0]} + {arm} overtake the larger {larger}?"
            found.append(Claim(question, larger, arm, TRANSPLANT))
    return found


def _scale_claims(study: StudyConfig) -> list[Claim]:
    found = []
    baseline = study.post.baseline
    others = tracks(study)[1:]
    for track in others:
        for arm in [a for a in track.arms if a in study.post.compared_arms()]:
            question = f"At scale {track.name}, does {arm} still beat {baseline}?"
            found.append(
                Claim(question, baseline, arm, control_track=track.name, treated_track=track.name)
            )
    main = tracks(study)[0]
    for track in others:
        if track.vision == main.vision and track.lm != main.lm:
            for arm in [a for a in track.arms if a in study.post.compared_arms()]:
                question = f"Does the larger LM head ({track.name}) train a better {arm} encoder?"
                found.append(Claim(question, arm, arm, ENCODER, treated_track=track.name))
    return found


def claims(study: StudyConfig) -> list[Claim]:
    """The papers' claims this study's arms can test, then the preset's own."""
    baseline = study.post.baseline
    evolved = study.post.compared_arms()
    found = []
    for arm in evolved:
        question = f"Does {arm} post-training make the MLLM see better than {baseline}?"
        found.append(Claim(question, baseline, arm))
    for arm in study.post.arms:
        question = f"Does {arm} make the MLLM see better than the Stage-1 model it started from?"
        found.append(Claim(question, STAGE1, arm))
    if LINEAR_PROBE in study.analysis.analyses:
        for arm in evolved:
            question = f"Does {arm} reshape the encoder into a better one than {baseline} does?"
            found.append(Claim(question, baseline, arm, ENCODER))
    found += _transplant_claims(study, evolved)
    found += _scale_claims(study)
    for extra in study.claims:
        where = TRANSPLANT if extra.transplant else VQA
        found.append(Claim(extra.question, extra.control, extra.treated, where, extra.category))
    return found


def check_claim_names(study: StudyConfig) -> None:
    """Refuse a ``primary`` or ``paper`` entry that names none of the study's claims (before
    anything runs: a typo would otherwise leave a claim silently exploratory)."""
    known = [claim.comparison for claim in claims(study)]
    for key, names in (("paper", list(study.paper)), ("primary", study.primary or [])):
        for name in names:
            if name not in known:
                raise StudyError(
                    f"{study.source}: {key} names {name!r}, not a claim of this study; "
                    f"its claims: {'; '.join(known)}"
                )


def check_transplant_control(study: StudyConfig) -> None:
    """Refuse a positive control that names an encoder the transplant does not take (a
    vision source it then takes for the control alone is fine), or a zoo part the zoo does
    not have."""
    from pivotlab.model.assembly import zoo_part
    from pivotlab.zoo.build import ZOOS

    control = study.transplant.control if study.transplant else None
    taken = transplanted(study)
    for side in ("weaker", "stronger") if control else ():
        name = getattr(control, side)
        zoo, part = zoo_part(name) or ("", "")
        if zoo and part not in (ZOOS[zoo].parts if zoo in ZOOS else {}):
            raise StudyError(f"{study.source}: transplant.control.{side} {name!r} is no zoo part")
        if control_name(name) not in taken:
            raise StudyError(
                f"{study.source}: transplant.control.{side} {name!r} is not a transplanted "
                f"encoder ({', '.join(taken)}) nor a vision source such as zoo:enc-s-2k"
            )


def control_name(side: str) -> str:
    """A control side's transplant name: a vision source by its original's name."""
    return original_name(side) if is_vision_source(side) else side


def _transplant_control(study: StudyConfig, steps: list[Step]) -> dict | None:
    """The positive control's difference (stronger - weaker after transplant), decided at
    95% on its own: it is a check of the instrument, not one of the claims.

    Where the study trains Stage 1 on both encoders with the transplant's LM (the main
    track, a scale-sweep track, or the control's own Stage 1), their gap is measured here,
    on the same test questions and the control's ``category``, rather than taken from
    ``known``: ``status`` is "passed" when the transplant finds Stage 1's order, "failed"
    when it does not, and "void" when Stage 1 itself does not show the two apart (no known
    difference to find). Without that pair, the ``known`` line stands and the status is
    "passed" or "failed"."""
    from pivotlab.study.stats import HOLDS

    control = study.transplant.control if study.transplant else None
    if control is None:
        return None
    weaker, stronger = control_name(control.weaker), control_name(control.stronger)
    question = f"Positive control: does {stronger} transplant better than {weaker}?"
    claim = Claim(question, weaker, stronger, TRANSPLANT, control.category)
    row = _claim_row(study, steps, claim)
    gap = _stage1_gap(study, steps, weaker, stronger, control.category)
    if gap is not None and not gap["verdict"].startswith(HOLDS):
        status = "void"
    else:
        status = "passed" if row["verdict"].startswith(HOLDS) else "failed"
    return {**row, "known": control.known, "stage1_gap": gap, "status": status}


def _stage1_gap(
    study: StudyConfig, steps: list[Step], weaker: str, stronger: str, category: str
) -> dict | None:
    """Stage 1 on ``stronger`` minus Stage 1 on ``weaker`` (``category``, the test
    questions), when the study trains both with the transplant's LM; else None."""
    lm = study.transplant.lm if study.transplant else None
    by_encoder = {original_name(t.vision): t for t in tracks(study) if t.lm == lm}
    if weaker not in by_encoder or stronger not in by_encoder:
        return None
    question = f"Stage 1: does {stronger} see better than {weaker}?"
    claim = Claim(
        question,
        STAGE1,
        STAGE1,
        VQA,
        category,
        control_track=by_encoder[weaker].name,
        treated_track=by_encoder[stronger].name,
    )
    return _claim_row(study, steps, claim)


def primary_comparisons(study: StudyConfig) -> list[str]:
    """The pre-registered primary claims, by comparison: the preset's ``primary`` list, else
    each compared arm against the baseline and against Stage 1 on VQA and, when
    transplanted, against the first original encoder."""
    return default_primary(study) if study.primary is None else list(study.primary)


def default_primary(study: StudyConfig) -> list[str]:
    """The primary claims of a study that names none (see :func:`primary_comparisons`)."""
    known = [claim.comparison for claim in claims(study)]
    plan = study.transplant
    first = [original_name(plan.originals[0])] if plan and plan.originals else []
    wanted = []
    for arm in study.post.compared_arms():
        wanted += [f"{arm} - {study.post.baseline} ({VQA})", f"{arm} - {STAGE1} ({VQA})"]
        wanted += [f"{arm} - {original} ({TRANSPLANT})" for original in first]
    return [name for name in wanted if name in known]


def _track(study: StudyConfig, name: str) -> Track:
    return next(t for t in tracks(study) if t.name == name)


def _in_report_order(study: StudyConfig, steps: list[Step], kind: str) -> list[Step]:
    """The steps of ``kind``, track by track, seed by seed (steps run seed by seed)."""
    order = {track.name: i for i, track in enumerate(tracks(study))}
    chosen = [step for step in steps if step.kind == kind]
    return sorted(chosen, key=lambda step: (order[step.track], step.seed))


def _evaluation(steps: list[Step], measures: str, track: str, seed: int, arm: str) -> Path:
    """The folder the evaluation of ``arm`` (on ``track``, ``seed``) wrote."""
    for step in steps:
        if (step.kind, step.measures, step.track, step.seed, step.arm) == (
            "evaluate",
            measures,
            track,
            seed,
            arm,
        ):
            return step.outputs[0].parent
    raise StudyError(f"no {measures} evaluation of {arm} (track {track}, seed {seed})")


def _analysis(steps: list[Step], track: str, seed: int) -> Path:
    """The ``metrics.jsonl`` of the analysis of ``track`` on ``seed``."""
    for step in steps:
        if (step.kind, step.track, step.seed) == ("analyze", track, seed):
            return step.outputs[0]
    raise StudyError(f"no analysis of track {track}, seed {seed}")


def _category_rows(folder: Path, **labels: Any) -> list[dict]:
    rows = []
    for row in read_jsonl(folder / "metrics.jsonl"):
        if row.get("metric") == "accuracy" and row.get("task") is None:
            keep = ("category", "value", "ci_low", "ci_high", "n", "chance")
            source = {"source": str(folder / "metrics.jsonl")}
            rows.append({**labels, **{key: row.get(key) for key in keep}, **source})
    return rows


def _encoder_row(metrics: Path, arm: str) -> dict:
    for row in read_jsonl(metrics):
        if row.get("encoder") == arm and all(
            row.get(k) == v for k, v in ENCODER_MEASUREMENT.items()
        ):
            return row
    raise StudyError(f"{metrics}: no {ENCODER_MEASUREMENT} row for {arm}")


def _claim_row(study: StudyConfig, steps: list[Step], claim: Claim) -> dict:
    from pivotlab.study import stats

    sources: list[str] = []

    # Both sides on the seeds they share: the scale sweep may run on fewer seeds.
    shared = [
        seed
        for seed in track_seeds(study, _track(study, claim.control_track))
        if seed in track_seeds(study, _track(study, claim.treated_track))
    ]

    def side(arm: str, track: str) -> dict[int, Any]:
        found = {}
        for seed in shared:
            if claim.where == ENCODER:
                metrics = _analysis(steps, track, seed)
                found[seed] = _encoder_row(metrics, arm)
                sources.append(str(metrics))
            else:
                # A transplant is the seed's, whatever track the claim names, the Stage-1
                # encoder's included (each seed transplants it into its own fresh LM); a
                # Stage 1 shared by every seed (stage1.seed) is the one model each seed's
                # arm started from.
                on = "main" if claim.where == TRANSPLANT else track
                shared_stage1 = (
                    arm == STAGE1 and claim.where != TRANSPLANT and study.stage1.seed is not None
                )
                made_on = study.stage1.seed if shared_stage1 else seed
                path = _evaluation(steps, claim.where, on, made_on, arm) / "predictions.jsonl"
                found[seed] = read_jsonl(path)
                sources.append(str(path))
        return found

    control, treated = (
        side(claim.control, claim.control_track),
        side(claim.treated, claim.treated_track),
    )
    if claim.where == ENCODER:
        difference = stats.paired_value_difference(control, treated)
        metric = "{analysis} {method} {label}".format(**ENCODER_MEASUREMENT)
    else:
        average = claim.category == AVERAGE
        category = None if average else claim.category
        difference = stats.paired_accuracy_difference(control, treated, category=category)
        metric = "macro-average accuracy" if average else f"{claim.category} accuracy"

    return {
        "claim": claim.question,
        "comparison": claim.comparison,
        "metric": metric,
        **difference,
        "mde": stats.minimum_detectable_effect(difference),
        "primary": False,
        "verdict": stats.verdict(difference),
        "source": sources,
    }


def _decide_primary(rows: list[dict], primary: list[str]) -> None:
    """Mark the primary claims' rows and decide them together: Holm-adjusted p-values at
    0.05 across them, and the minimum detectable effect at Holm's strictest level (0.05 over
    their number); the exploratory rows keep their own 95% verdicts."""
    from pivotlab.study import stats

    chosen = [row for row in rows if row["comparison"] in primary]
    for row, adjusted in zip(chosen, stats.holm([r.get("p_value") for r in chosen]), strict=True):
        row.update(primary=True, p_holm=adjusted, verdict=stats.adjusted_verdict(row, adjusted))
        row["mde"] = stats.minimum_detectable_effect(row, alpha=0.05 / len(chosen))


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


def arm_label(arm: str, track: str) -> str:
    """How the report names an arm: plain on the main track, ``arm@track`` on a sweep's, so
    that a scale point's models are never averaged with the main ones as if seeds."""
    return arm if track == "main" else f"{arm}@{track}"


def _vqa_rows(study: StudyConfig, steps: list[Step]) -> list[dict]:
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


def _warnings(vqa: list[dict], claim_rows: list[dict], transplant: list[dict]) -> list[str]:
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


def _control_warning(control: dict | None) -> list[str]:
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


def _beside_the_paper(rows: list[dict], paper: dict[str, PaperEffect]) -> None:
    """Each row the papers speak to gets their effect, its source, and how ours reads
    against it: the same direction or not, inside our 95% interval or not."""
    for row in rows:
        reported = paper.get(row["comparison"])
        if reported is None:
            continue
        same = (row["diff"] > 0) == (reported.effect > 0)
        reading = "same direction" if same else "opposite direction"
        low, high = row.get("ci_low"), row.get("ci_high")
        if low is not None and high is not None:
            inside = low <= reported.effect <= high
            reading += ", inside our interval" if inside else ", outside our interval"
        row.update(paper_effect=reported.effect, paper_source=reported.source)
        row["paper_reading"] = reading


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
    vqa = _vqa_rows(study, steps)
    claim_rows = [_claim_row(study, steps, claim) for claim in claims(study)]
    _decide_primary(claim_rows, primary_comparisons(study))
    _beside_the_paper(claim_rows, study.paper)
    transplant = _transplant_rows(study, steps)
    tuning = _tuning_rows(study, steps)
    headroom = _headroom(study, steps, tuning)
    control = _transplant_control(study, steps)
    warnings = _control_warning(control) + _warnings(vqa, claim_rows, transplant)
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


def _without_growth(tree: dict[str, Any]) -> dict[str, Any]:
    """A study tree without what may grow between runs in one folder."""
    post = {k: v for k, v in tree["post"].items() if k not in ("arms", "compared")}
    # A positive control reads finished transplants: adding one changes no step.
    transplant = tree["transplant"] and {
        k: v for k, v in tree["transplant"].items() if k not in ("encoders", "control")
    }
    grows = ("source", "claims", "notes", "primary", "paper", "not_measurable")
    rest = {k: v for k, v in tree.items() if k not in grows}
    return {**rest, "post": post, "transplant": transplant}


def _same_or_grown(previous: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether ``current`` is ``previous`` with arms, claims or transplanted encoders added
    (and notes changed): then the finished steps still stand and only new ones run."""
    arms_kept = all(
        current["post"]["arms"].get(name) == recipe
        for name, recipe in previous["post"]["arms"].items()
    )
    claims_kept = all(claim in current["claims"] for claim in previous["claims"])

    def encoders(tree: dict[str, Any]) -> set[str] | None:
        chosen = (tree["transplant"] or {}).get("encoders")
        return None if chosen is None else set(chosen)

    before, after = encoders(previous), encoders(current)
    encoders_kept = after is None or (before is not None and before <= after)
    same_rest = _without_growth(previous) == _without_growth(current)
    return arms_kept and claims_kept and encoders_kept and same_rest


def _same_primary(previous: list[str] | None, study: StudyConfig) -> bool:
    """Whether the folder's pre-registered claims are the study's: the same list, or a folder
    from before ``primary:`` existed (its claims then were the default set) and a study that
    names the default set."""
    if previous == study.primary:
        return True
    return previous is None and study.primary == default_primary(study)


def _check_folder(study: StudyConfig, out: Path) -> None:
    """Refuse a folder holding another study; re-running the same one resumes it, and one
    that only adds arms (claims, transplanted encoders) runs just the new steps."""
    saved = out / "study.yaml"
    current = {k: v for k, v in study.to_dict().items() if k != "source"}
    if saved.is_file():
        # Read back through the config classes, so keys added since (with defaults) match.
        try:
            previous = build_dataclass(StudyConfig, yaml.safe_load(saved.read_text()) or {})
        except ConfigError:
            previous = None
        previous_tree = previous.to_dict() if previous is not None else None
        if (
            previous_tree is None
            or not _same_or_grown(previous_tree, current)
            or not _same_primary(previous_tree["primary"], study)
        ):
            raise StudyError(
                f"{out} holds another study (study.yaml differs by more than added arms, or "
                "pre-registers other primary claims); choose another --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise StudyError(f"{out} is not empty and holds no study.yaml; refusing it")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, yaml.safe_dump(current, sort_keys=False))


def run_study(
    study: StudyConfig,
    out: Path,
    command: str,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> tuple[Path, Path]:
    """Run (or resume) the study into ``out``; returns the report's markdown and HTML paths.
    What each step prints goes to ``out/logs/<step>.log`` (``verbose``: to the console)."""
    check_claim_names(study)
    check_transplant_control(study)
    _check_folder(study, out)
    splits = world_splits(study)
    log("world: " + ", ".join(f"{k} {v.name}" for k, v in splits.items()))
    steps = [step for seed in study.seeds for step in seed_steps(study, out, seed, splits)]
    run_steps(steps, Ledger(out), log, logs=None if verbose else out / "logs")
    results = collect(study, out, steps, command)
    write_json_atomic(out / "results.json", results, indent=1, default=str)
    from pivotlab.study.report import write_report

    return write_report(out, results)
