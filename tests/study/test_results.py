"""What the report shows, gathered from the steps' files: the VQA rows and the warnings a
reader sees before any verdict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pivotlab.study.config import load_study
from pivotlab.study.pipeline import VQA
from pivotlab.study.results import control_warning, trust_warnings, vqa_rows


def test_vqa_rows_name_a_sweep_s_models_apart_from_the_main_ones(
    tmp_path: Path, every_step: Callable
) -> None:
    study = load_study("full", ["transplant.control.stage1=true"])
    steps = every_step(study, tmp_path)
    accuracy = {"metric": "accuracy", "category": "vision_centric", "value": 0.5}
    for step in steps:
        if step.kind == "evaluate" and step.measures == VQA:
            step.outputs[0].parent.mkdir(parents=True, exist_ok=True)
            (step.outputs[0].parent / "metrics.jsonl").write_text(json.dumps(accuracy) + "\n")
    rows = vqa_rows(study, steps)
    stage1 = {(r["arm"], r["track"]) for r in rows if r["arm"].startswith("stage1")}
    assert stage1 == {
        ("stage1", "main"),
        ("stage1@enc-s+lm-m", "enc-s+lm-m"),
        ("stage1@enc-s-2k+lm-s", "enc-s-2k+lm-s"),  # the transplant control's Stage 1
    }
    assert all(r["arm"].endswith(f"@{r['track']}") for r in rows if r["track"] != "main")


def test_a_failed_control_warns_and_a_passed_one_does_not() -> None:
    row = {"comparison": "enc-m - enc-s (after transplant)", "diff": -0.014, "ci_low": -0.05}
    row.update(ci_high=0.02, known="+2.9 in Stage 1", verdict="not significant at this scale")
    (warning,) = control_warning({**row, "status": "failed"})
    assert "failed its positive control" in warning and "+2.9 in Stage 1" in warning
    assert control_warning({**row, "verdict": "holds", "status": "passed"}) == []
    assert control_warning(None) == []
    gap = {"comparison": "stage1 [enc-m+lm-s] - stage1 (VQA)", "diff": 0.001, "ci_low": -0.009}
    gap.update(ci_high=0.012, verdict="not significant at this scale")
    (void,) = control_warning({**row, "status": "void", "stage1_gap": gap})
    assert "positive control is void" in void and "+0.1 pts [-0.9, +1.2]" in void


def test_the_stage1_warning_appears_only_when_stage1_does_not_clear_the_blind_baseline() -> None:
    def row(arm: str, value: float, low: float) -> dict:
        return {
            "arm": arm,
            "category": "vision_centric",
            "track": "main",
            "seed": 0,
            "value": value,
            "ci_low": low,
            "ci_high": 2 * value - low,
            "chance": 0.35,
        }

    seeing = trust_warnings([row("stage1", 0.60, 0.55), row("blind", 0.36, 0.30)], [], [])
    blind = trust_warnings([row("stage1", 0.38, 0.33), row("blind", 0.36, 0.30)], [], [])
    assert not any("Warning" in w for w in seeing)
    assert any("38.0% [33.0%, 43.0%], seed 0; chance 35.0%" in w for w in blind)


def test_the_transplant_warning_appears_only_when_no_transplant_clears_the_blind_baseline() -> None:
    vqa = [
        {
            "arm": a,
            "category": "vision_centric",
            "track": "main",
            "seed": 0,
            "value": v,
            "ci_low": v - 0.05,
            "ci_high": v + 0.05,
            "chance": 0.35,
        }
        for a, v in (("stage1", 0.60), ("blind", 0.36))
    ]

    def transplanted(*lows: float) -> list[dict]:
        return [
            {
                "encoder": f"e{i}",
                "seed": 0,
                "category": "vision_centric",
                "value": low + 0.05,
                "ci_low": low,
                "ci_high": low + 0.1,
            }
            for i, low in enumerate(lows)
        ]

    one_sees = trust_warnings(vqa, [], transplanted(0.30, 0.40))
    none_sees = trust_warnings(vqa, [], transplanted(0.28, 0.30, 0.35))
    assert not any("transplanted" in w for w in one_sees)
    assert any(
        "blind baseline's (36.0%; 3 models" in w and "33.0% to 40.0%" in w for w in none_sees
    )
