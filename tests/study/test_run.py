"""The study end to end at the tests' size, its resume, and the run folder it refuses."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pivotlab.model import PARTS
from pivotlab.study.claims import claims
from pivotlab.study.config import StudyError, load_study
from pivotlab.study.run import check_folder, run_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def finished(preset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("study") / "run"
    lines: list[str] = []
    run_study(load_study(str(preset)), out, "pivotlab study (test)", lines.append)
    return out, lines


@pytest.mark.trains
@pytest.mark.slow
def test_study_runs_every_step_and_writes_one_report(
    preset: Path, finished: tuple[Path, list[str]]
) -> None:
    out, lines = finished
    study = load_study(str(preset))
    results = json.loads((out / "results.json").read_text())
    arms = {row["arm"] for row in results["vqa"]}
    assert arms == {"stage1", "sft", "dpo", "blind"}
    assert {row["encoder"] for row in results["transplant"]} == {
        "stage1",
        "sft",
        "dpo",
        "tiny-siglip",
    }
    assert [c["claim"] for c in results["claims"]] == [c.question for c in claims(study)]
    assert all(c["verdict"] for c in results["claims"])
    assert {row["arm"] for row in results["analysis"]} >= {"stage1", "sft", "dpo"}
    moved = {(row["arm"], row["part"]): row["value"] for row in results["moved"]}
    assert set(moved) == {(arm, part) for arm in ("sft", "dpo") for part in PARTS}
    assert all(value > 0 for value in moved.values())  # every part trains in Stage 2
    assert all(line.startswith("[") and "left)" in line for line in lines if "/" in line.split()[0])
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert (out / "figures" / "rate-sweep.png").is_file()
    # Random tiny parts cannot beat the blind baseline: the report says so before any verdict.
    assert any("not clearly above the blind baseline" in w for w in results["warnings"])
    assert "Read this first" in (out / "report.md").read_text()


@pytest.mark.trains
@pytest.mark.slow
def test_a_swept_arm_keeps_its_best_val_rate_and_every_arm_is_scored_on_val(
    finished: tuple[Path, list[str]],
) -> None:
    out, _ = finished
    results = json.loads((out / "results.json").read_text())
    rows = {(row["arm"], row["rate"]): row for row in results["tuning"]}
    assert set(rows) == {("stage1", None), ("sft", None), ("dpo", 1e-4), ("dpo", 1e-3)}
    assert rows["sft", None]["lr"] == 5e-4 and not rows["sft", None]["swept"]
    points = [rows["dpo", 1e-4], rows["dpo", 1e-3]]
    best = max(points, key=lambda row: (row["value"], -row["rate"]))
    assert [row["chosen"] for row in points] == [row is best for row in points]
    chosen = json.loads((out / "seed0/post/dpo/chosen.json").read_text())
    assert chosen["rate"] == best["rate"]
    link = out / "seed0/post/dpo/final"
    chosen_model = out / f"seed0/post/dpo/lr-{best['rate']:g}/final"
    assert link.is_symlink() and link.resolve() == chosen_model
    # The arms moved, so their answers' distributions left Stage 1's; Stage 1 has no KL row.
    assert all(row["kl"] > 0 for key, row in rows.items() if key[0] != "stage1")
    assert "kl" not in rows["stage1", None]
    assert results["headroom"]["arm"] in {"sft", "dpo"}
    report = (out / "report.md").read_text()
    assert "Learning rates, chosen on val" in report and "Headroom:" in report
    assert any("kept the" in w for w in results["warnings"])  # a two-point grid: always an edge


@pytest.mark.trains
@pytest.mark.slow
def test_the_transplant_control_is_reported_and_warns_when_it_fails(
    finished: tuple[Path, list[str]],
) -> None:
    out, _ = finished
    results = json.loads((out / "results.json").read_text())
    control = results["transplant_control"]
    assert control["comparison"] == "stage1 - tiny-siglip (after transplant)"
    assert control["known"] == "a test's pair"
    assert control["comparison"] not in [c["comparison"] for c in results["claims"]]
    failed = any("failed its positive control" in w for w in results["warnings"])
    assert failed == (control["verdict"] != "holds")
    assert (
        "Positive control, stage1 - tiny-siglip (after transplant)"
        in (out / "report.md").read_text()
    )


@pytest.mark.trains
def test_rerun_skips_finished_steps_and_redoes_a_damaged_one(
    preset: Path, finished: tuple[Path, list[str]]
) -> None:
    out, _ = finished
    predictions = out / "seed0" / "eval" / "dpo" / "predictions.jsonl"
    predictions.write_text(predictions.read_text()[:-40])  # a step cut short by a crash
    lines: list[str] = []
    run_study(load_study(str(preset)), out, "pivotlab study (test)", lines.append)
    redone = [line for line in lines if "done in" in line]
    assert len(redone) == 1 and "seed0/eval-dpo:" in redone[0]
    assert sum("skipped" in line for line in lines) == len(lines) - 2  # the world line


def test_a_study_may_grow_by_arms_but_not_change_in_place(preset: Path, tmp_path: Path) -> None:
    check_folder(load_study(str(preset)), tmp_path)
    ipo = "post.arms.ipo={config: " + str(CONFIGS / "tiny" / "post-ipo.yaml") + "}"
    grown = load_study(str(preset), [ipo])
    check_folder(grown, tmp_path)  # an added arm: accepted, and recorded
    assert "ipo" in yaml.safe_load((tmp_path / "study.yaml").read_text())["post"]["arms"]
    with pytest.raises(StudyError, match="more than added arms"):
        check_folder(load_study(str(preset)), tmp_path)  # dropping the arm again
    changed = load_study(str(preset), [ipo, "post.arms.dpo.overrides=[data.limit=3]"])
    with pytest.raises(StudyError, match="more than added arms"):
        check_folder(changed, tmp_path)  # an existing arm's recipe changed


def test_a_study_folder_from_before_a_new_config_key_still_resumes(
    preset: Path, tmp_path: Path
) -> None:
    study = load_study(str(preset))
    check_folder(study, tmp_path)
    saved = yaml.safe_load((tmp_path / "study.yaml").read_text())
    del saved["sweeps"]  # a key this version added, with a default
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(saved))
    check_folder(study, tmp_path)
    with pytest.raises(StudyError, match="holds another study"):
        check_folder(load_study(str(preset), ["seeds=[1]"]), tmp_path)


def test_the_primary_claims_cannot_change_after_a_study_has_run(tmp_path: Path) -> None:
    """Pre-registered means fixed: a run folder refuses the same study with another list."""
    quick = load_study("quick")
    check_folder(quick, tmp_path)
    with pytest.raises(StudyError, match="holds another study"):
        check_folder(replace(quick, primary=["dpo - sft (VQA)"]), tmp_path)
    # A folder from before primary: existed had the default set: the preset's list is that.
    saved = yaml.safe_load((tmp_path / "study.yaml").read_text())
    del saved["primary"]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(saved))
    check_folder(quick, tmp_path)
    with pytest.raises(StudyError, match="holds another study"):
        check_folder(replace(quick, primary=["dpo - sft (VQA)"]), tmp_path)
