"""The claims a study answers, the checks of its preset's claim names, and how each claim's
row reads the steps' outputs and is decided."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from pivotlab.study import claims as study_claims
from pivotlab.study import stats
from pivotlab.study.claims import (
    ENCODER,
    ENCODER_MEASUREMENT,
    Claim,
    beside_the_paper,
    check_claim_names,
    check_transplant_control,
    claim_row,
    claims,
    decide_primary,
    primary_comparisons,
    transplant_control,
)
from pivotlab.study.config import PaperEffect, StudyError, load_study
from pivotlab.study.pipeline import TRANSPLANT, seed_steps


def test_every_arm_is_also_compared_with_the_stage1_model_it_started_from() -> None:
    comparisons = [claim.comparison for claim in claims(load_study("quick"))]
    assert {"sft - stage1 (VQA)", "dpo - stage1 (VQA)"} <= set(comparisons)


def test_the_primary_claims_are_pre_registered_and_a_stray_one_is_refused() -> None:
    quick = load_study("quick")
    assert primary_comparisons(quick) == quick.primary
    assert primary_comparisons(replace(quick, primary=None)) == quick.primary  # the default set
    with pytest.raises(StudyError, match=r"primary names 'dpo - ipo \(VQA\)', not a claim"):
        check_claim_names(replace(quick, primary=["dpo - ipo (VQA)"]))


def test_primary_claims_are_decided_together_and_the_rest_alone() -> None:
    """Holm over the two primary rows: 0.02 x 2 = 0.04 holds, 0.03 x 1 -> 0.04 holds; an
    exploratory row keeps its own interval's verdict."""

    def row(comparison: str, p: float, low: float) -> dict:
        interval = {"diff": 0.05, "ci_low": low, "ci_high": 0.09, "p_value": p, "mde": 0.04}
        return {"comparison": comparison, **interval, "primary": False, "verdict": "own"}

    rows = [row("a - b (VQA)", 0.03, 0.01), row("c - b (VQA)", 0.02, 0.01), row("x", 0.2, -0.01)]
    decide_primary(rows, ["a - b (VQA)", "c - b (VQA)"])
    assert [r["primary"] for r in rows] == [True, True, False]
    assert [r.get("p_holm") for r in rows] == pytest.approx([0.04, 0.04, None])
    assert [r["verdict"] for r in rows] == ["holds", "holds", "own"]
    assert rows[0]["mde"] > 0.04 and rows[2]["mde"] == 0.04  # primary: at level 0.05 / 2


def test_each_answer_is_read_against_the_paper_where_it_reports_one() -> None:
    paper = {"a (VQA)": PaperEffect(0.042, "a table"), "b (VQA)": PaperEffect(0.018, "b row")}
    rows = [
        {"comparison": "a (VQA)", "diff": 0.03, "ci_low": 0.01, "ci_high": 0.05},
        {"comparison": "b (VQA)", "diff": -0.01, "ci_low": -0.03, "ci_high": 0.01},
        {"comparison": "c (VQA)", "diff": 0.02, "ci_low": None, "ci_high": None},
    ]
    beside_the_paper(rows, paper)
    assert rows[0]["paper_reading"] == "same direction, inside our interval"
    assert rows[1]["paper_reading"] == "opposite direction, outside our interval"
    assert rows[1]["paper_source"] == "b row" and "paper_effect" not in rows[2]
    quick = load_study("quick")
    with pytest.raises(StudyError, match=r"paper names 'dpo - ipo \(VQA\)', not a claim"):
        check_claim_names(replace(quick, paper={"dpo - ipo (VQA)": PaperEffect(0.1, "x")}))


def test_a_control_naming_an_encoder_not_transplanted_is_refused() -> None:
    with pytest.raises(StudyError, match=r"transplant\.control\.stronger 'enc-l' is not"):
        check_transplant_control(load_study("quick", ["transplant.control.stronger=enc-l"]))
    with pytest.raises(StudyError, match=r"control\.weaker 'zoo:enc-l' is no zoo part"):
        check_transplant_control(load_study("full", ["transplant.control.weaker=zoo:enc-l"]))
    check_transplant_control(load_study("quick"))
    check_transplant_control(load_study("full"))


@pytest.mark.parametrize(
    ("stage1", "transplant", "status"),
    [
        ("holds", "holds", "passed"),
        ("holds", "not significant at this scale", "failed"),
        ("not significant at this scale", "holds", "void"),
        ("not significant at this scale", "not significant at this scale", "void"),
    ],
)
def test_the_control_is_judged_against_the_gap_stage_1_shows_in_the_same_study(
    stage1: str, transplant: str, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the study trains Stage 1 on both encoders of the pair (the main track on enc-s,
    and Stage 1 on enc-s-2k for the control), their gap there, on the control's
    category, is the known difference; no gap there, nothing to find."""
    claims_read: list = []

    def fake_claim_row(study, steps, claim):
        claims_read.append(claim)
        verdict = transplant if claim.where == "after transplant" else stage1
        return {"comparison": claim.comparison, "verdict": verdict}

    monkeypatch.setattr(study_claims, "claim_row", fake_claim_row)
    measured_here = ["transplant.control.stage1=true", "transplant.control.category=average"]
    control = transplant_control(load_study("full", measured_here), [])
    assert control["status"] == status
    after, gap = claims_read
    assert (after.control, after.treated, after.category) == ("enc-s-2k", "enc-s", "average")
    assert (gap.control, gap.treated, gap.where, gap.category) == (
        "stage1",
        "stage1",
        "VQA",
        "average",
    )
    assert (gap.control_track, gap.treated_track) == ("enc-s-2k+lm-s", "main")
    # quick trains Stage 1 on enc-s only: its preset's ``known`` line stands.
    claims_read.clear()
    quick = transplant_control(load_study("quick"), [])
    assert len(claims_read) == 1 and quick["stage1_gap"] is None
    assert claims_read[0].category == "vision_centric"
    assert quick["status"] == ("passed" if transplant == "holds" else "failed")


def test_an_average_control_reads_the_macro_average(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_step: Callable
) -> None:
    """``category: average`` asks the bootstrap for the macro average (no category), and
    the row says so."""
    asked: list = []

    def difference(control, treated, category=None, **_):
        asked.append(category)
        return {"diff": 0.01, "ci_low": 0.0, "ci_high": 0.02, "n_seeds": 1, "n_items": 10}

    monkeypatch.setattr(stats, "paired_accuracy_difference", difference)
    monkeypatch.setattr(study_claims, "read_jsonl", lambda path: [])
    study = load_study("full")
    steps = every_step(study, tmp_path)
    row = claim_row(study, steps, Claim("?", "enc-s-2k", "enc-s", TRANSPLANT, "average"))
    assert asked == [None] and row["metric"] == "macro-average accuracy"
    claim_row(study, steps, Claim("?", "enc-s-2k", "enc-s", TRANSPLANT))
    assert asked[-1] == "vision_centric"


def test_a_claim_against_a_one_seed_sweep_uses_the_seeds_both_sides_have(
    tmp_path: Path, every_step: Callable
) -> None:
    lms = "sweeps.scale.lms=[zoo:lm-s, zoo:lm-m]"  # the LM-size claim needs a larger LM
    study = load_study("full", ["sweeps.scale.seeds=[0]", lms])
    claim = next(c for c in claims(study) if c.where == ENCODER and c.treated_track != "main")
    values = {(0, "main"): 0.30, (1, "main"): 0.32, (2, "main"): 0.31, (0, "sweep"): 0.36}
    for (seed, track), value in values.items():
        root = tmp_path / f"seed{seed}"
        folder = root if track == "main" else root / "scale" / claim.treated_track
        (folder / "analysis").mkdir(parents=True)
        row = {**ENCODER_MEASUREMENT, "encoder": claim.treated, "value": value}
        row.update(ci_low=value - 0.01, ci_high=value + 0.01)
        (folder / "analysis" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    result = claim_row(study, every_step(study, tmp_path), claim)
    assert result["n_seeds"] == 1  # seed 0 only: the sweep ran there alone
    assert result["diff"] == pytest.approx(0.36 - 0.30)


def test_an_arm_against_a_shared_stage1_reads_the_one_stage1_model_for_every_seed(
    tmp_path: Path, every_step: Callable
) -> None:
    study = load_study("full")  # stage1.seed 0: one Stage-1 model for seeds 0, 1, 2
    claim = next(c for c in claims(study) if c.comparison == "dpo - stage1 (VQA)")

    def write(folder: Path, correct: list[bool]) -> None:
        folder.mkdir(parents=True)
        rows = [{"id": f"q{i}", "category": "vision_centric", "task": "count", "correct": c,
                 "pair_id": None} for i, c in enumerate(correct)]  # fmt: skip
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(tmp_path / "seed0" / "eval" / "stage1", [True, False, False, False])
    for seed, right in enumerate((2, 3, 2)):
        write(tmp_path / f"seed{seed}" / "eval" / "dpo", [i < right for i in range(4)])
    result = claim_row(study, every_step(study, tmp_path), claim)
    assert result["n_seeds"] == 3
    assert result["diff"] == pytest.approx((2 + 3 + 2) / 3 / 4 - 1 / 4)


def test_a_claim_reads_each_seeds_own_transplant_and_the_one_shared_stage_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each seed transplants the Stage-1 encoder into its own fresh LM: a transplant claim
    pairs seed s of the arm with seed s of the Stage-1 encoder's transplant. On VQA, the
    Stage 1 every seed started from is the one model of ``stage1.seed``."""
    study = load_study("full")
    splits = {name: tmp_path / name for name in ("train", "post", "val", "test", "probes")}
    steps = [s for seed in study.seeds for s in seed_steps(study, tmp_path / "run", seed, splits)]
    answer = {"id": "q0", "category": "vision_centric", "task": "count", "correct": True}
    monkeypatch.setattr(study_claims, "read_jsonl", lambda path: [{**answer, "pair_id": None}])
    after = claim_row(study, steps, Claim("?", "stage1", "dpo", TRANSPLANT))
    own = [s for s in after["source"] if "/transplant/stage1/" in s]
    assert own == [
        str(tmp_path / f"run/seed{s}/transplant/stage1/eval/predictions.jsonl") for s in (0, 1, 2)
    ]
    vqa = claim_row(study, steps, Claim("?", "stage1", "dpo"))
    shared = [s for s in vqa["source"] if "/eval/stage1/" in s]
    assert shared == [str(tmp_path / "run/seed0/eval/stage1/predictions.jsonl")] * 3
