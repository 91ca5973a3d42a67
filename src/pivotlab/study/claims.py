"""The claims a study answers and how each is decided.

The claims are fixed here, in plain language, with the comparison and the direction that
would support them; the statistics (``stats.py``) decide the verdicts. Each claim's row
reads the steps' own outputs: the predictions of the evaluations it compares, or the
encoder probe of the analyses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotlab.analysis import LINEAR_PROBE, ROW_NAMES
from pivotlab.io import read_jsonl
from pivotlab.study.config import PaperEffect, StudyConfig, StudyError
from pivotlab.study.pipeline import (
    STAGE1,
    TRANSPLANT,
    VQA,
    Step,
    Track,
    is_vision_source,
    original_name,
    track_seeds,
    tracks,
    transplanted,
)

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


def arm_label(arm: str, track: str) -> str:
    """How the report names an arm: plain on the main track, ``arm@track`` on a sweep's, so
    that a scale point's models are never averaged with the main ones as if seeds."""
    return arm if track == "main" else f"{arm}@{track}"


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
    from pivotlab.zoo.recipes import ZOOS

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


def _track_named(study: StudyConfig, name: str) -> Track:
    return next(t for t in tracks(study) if t.name == name)


def _evaluation_folder(steps: list[Step], measures: str, track: str, seed: int, arm: str) -> Path:
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


def _analysis_metrics(steps: list[Step], track: str, seed: int) -> Path:
    """The ``metrics.jsonl`` of the analysis of ``track`` on ``seed``."""
    for step in steps:
        if (step.kind, step.track, step.seed) == ("analyze", track, seed):
            return step.outputs[0]
    raise StudyError(f"no analysis of track {track}, seed {seed}")


def _encoder_row(metrics: Path, arm: str) -> dict:
    for row in read_jsonl(metrics):
        if row.get("encoder") == arm and all(
            row.get(k) == v for k, v in ENCODER_MEASUREMENT.items()
        ):
            return row
    raise StudyError(f"{metrics}: no {ENCODER_MEASUREMENT} row for {arm}")


def claim_row(study: StudyConfig, steps: list[Step], claim: Claim) -> dict:
    """``claim`` decided at 95% on its own, from the outputs of the steps it compares on
    the seeds both sides ran: the difference with its interval, p-value, minimum detectable
    effect and verdict, and the files it read."""
    from pivotlab.study import stats

    sources: list[str] = []

    # Both sides on the seeds they share: the scale sweep may run on fewer seeds.
    shared = [
        seed
        for seed in track_seeds(study, _track_named(study, claim.control_track))
        if seed in track_seeds(study, _track_named(study, claim.treated_track))
    ]

    def side(arm: str, track: str) -> dict[int, Any]:
        found = {}
        for seed in shared:
            if claim.where == ENCODER:
                metrics = _analysis_metrics(steps, track, seed)
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
                folder = _evaluation_folder(steps, claim.where, on, made_on, arm)
                path = folder / "predictions.jsonl"
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


def transplant_control(study: StudyConfig, steps: list[Step]) -> dict | None:
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
    row = claim_row(study, steps, claim)
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
    return claim_row(study, steps, claim)


def decide_primary(rows: list[dict], primary: list[str]) -> None:
    """Mark the primary claims' rows and decide them together: Holm-adjusted p-values at
    0.05 across them, and the minimum detectable effect at Holm's strictest level (0.05 over
    their number); the exploratory rows keep their own 95% verdicts."""
    from pivotlab.study import stats

    chosen = [row for row in rows if row["comparison"] in primary]
    for row, adjusted in zip(chosen, stats.holm([r.get("p_value") for r in chosen]), strict=True):
        row.update(primary=True, p_holm=adjusted, verdict=stats.adjusted_verdict(row, adjusted))
        row["mde"] = stats.minimum_detectable_effect(row, alpha=0.05 / len(chosen))


def beside_the_paper(rows: list[dict], paper: dict[str, PaperEffect]) -> None:
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
