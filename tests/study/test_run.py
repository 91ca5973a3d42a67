"""The study end to end at the tests' size, its resume, and its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pivotlab.model import PARTS
from pivotlab.study.config import StudyError, load_study
from pivotlab.study.ledger import Ledger
from pivotlab.study.run import TRANSPLANT, claims, run_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["data.limit=16", "train.batch_size=4", "train.per_device_batch_size=4", "train.steps=2"]
SMALL += ["data.eval_limit=4", "train.logging_steps=1"]
TINY_MODEL = ["model.image_size=32"]


def _world(split: str, n: int, seed: int, probe_n: int = 0) -> dict:
    return {"split": split, "n": n, "size": 32, "seed": seed, "probe_n": probe_n}


def _recipe(name: str, *overrides: str) -> dict:
    return {"config": str(CONFIGS / "tiny" / f"{name}.yaml"), "overrides": [*SMALL, *overrides]}


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study over tiny random parts (tiny-siglip, tiny-qwen2) on a 32-px world."""
    tree = {
        "name": "tests",
        "seeds": [0],
        "world": {
            "train": _world("train", 16, 5),
            "val": _world("val", 6, 5),
            "test": _world("test", 10, 5, probe_n=12),
            "probes": _world("train", 4, 6, probe_n=24),
        },
        "stage1": {
            "vision": "tiny-siglip",
            "lm": "tiny-qwen2",
            "align": _recipe("align", *TINY_MODEL),
            "full": _recipe("full", "data.turns=4"),
        },
        "post": {
            "baseline": "sft",
            "arms": {"sft": _recipe("post-sft"), "dpo": _recipe("post-dpo")},
            "sweep": {"rates": [1.0e-4, 1.0e-3], "arms": ["dpo"]},
        },
        "evaluate": {"limit": 12, "batch_size": 12, "blind": True},
        "analysis": {"analyses": ["linear-probe"], "limit": 24},
        "transplant": {
            "lm": "tiny-qwen2",
            "originals": ["tiny-siglip"],
            "align": _recipe("align", *TINY_MODEL),
            "full": _recipe("full"),
            "control": {"weaker": "tiny-siglip", "stronger": "stage1", "known": "a test's pair"},
        },
        "notes": ["tests-sized"],
    }
    path = tmp_path_factory.mktemp("preset") / "tests.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def finished(preset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("study") / "run"
    lines: list[str] = []
    run_study(load_study(str(preset)), out, "pivotlab study (test)", lines.append)
    return out, lines


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


@pytest.mark.slow
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


def test_a_failed_control_warns_and_a_passed_one_does_not() -> None:
    from pivotlab.study.run import _control_warning

    row = {"comparison": "enc-m - enc-s (after transplant)", "diff": -0.014, "ci_low": -0.05}
    row.update(ci_high=0.02, known="+2.9 in Stage 1", verdict="not significant at this scale")
    (warning,) = _control_warning({**row, "status": "failed"})
    assert "failed its positive control" in warning and "+2.9 in Stage 1" in warning
    assert _control_warning({**row, "verdict": "holds", "status": "passed"}) == []
    assert _control_warning(None) == []
    gap = {"comparison": "stage1 [enc-m+lm-s] - stage1 (VQA)", "diff": 0.001, "ci_low": -0.009}
    gap.update(ci_high=0.012, verdict="not significant at this scale")
    (void,) = _control_warning({**row, "status": "void", "stage1_gap": gap})
    assert "positive control is void" in void and "+0.1 pts [-0.9, +1.2]" in void


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
    """Where the study trains Stage 1 on both encoders of the pair (full: the main track on
    enc-s, and Stage 1 on enc-s-2k for the control), their gap there, on the control's
    category, is the known difference; no gap there, nothing to find."""
    from pivotlab.study import run

    claims_read: list = []

    def claim_row(study, steps, claim):
        claims_read.append(claim)
        verdict = transplant if claim.where == "after transplant" else stage1
        return {"comparison": claim.comparison, "verdict": verdict}

    monkeypatch.setattr(run, "_claim_row", claim_row)
    control = run._transplant_control(load_study("full"), [])
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
    quick = run._transplant_control(load_study("quick"), [])
    assert len(claims_read) == 1 and quick["stage1_gap"] is None
    assert claims_read[0].category == "vision_centric"
    assert quick["status"] == ("passed" if transplant == "holds" else "failed")


def test_a_control_encoder_is_transplanted_and_given_stage1_for_the_control_alone(
    tmp_path: Path,
) -> None:
    """``zoo:enc-s-2k`` is transplanted on every seed and trained through Stage 1 once (no
    arms, no analyses), and no claim compares an arm with it."""
    from pivotlab.study.pipeline import seed_steps

    study = load_study("full")
    world = study.world.sections()
    names = {seed: [s.name for s in seed_steps(study, tmp_path, seed, world)] for seed in (0, 1)}
    control = [n for n in names[0] if "enc-s-2k" in n]
    assert control == [
        "seed0/control-enc-s-2k+lm-s/align",
        "seed0/control-enc-s-2k+lm-s/full",
        "seed0/control-enc-s-2k+lm-s/eval-stage1",
        "seed0/control-enc-s-2k+lm-s/val-stage1",
        "seed0/transplant-enc-s-2k/align",
        "seed0/transplant-enc-s-2k/full",
        "seed0/transplant-enc-s-2k/eval",
    ]
    assert [n for n in names[1] if "enc-s-2k" in n] == [
        f"seed1/transplant-enc-s-2k/{step}" for step in ("align", "full", "eval")
    ]
    assert not [c for c in claims(study) if "enc-s-2k" in (c.control, c.treated)]
    # Without ``stage1`` the control takes its gap from ``known``: no Stage 1 on enc-s-2k.
    plain = load_study("full", ["transplant.control.stage1=false"])
    assert not [n for n in seed_steps(plain, tmp_path, 0, world) if "control-" in n.name]


def test_an_average_control_reads_the_macro_average(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``category: average`` asks the bootstrap for the macro average (no category), and
    the row says so."""
    from pivotlab.study import run, stats

    asked: list = []

    def difference(control, treated, category=None, **_):
        asked.append(category)
        return {"diff": 0.01, "ci_low": 0.0, "ci_high": 0.02, "n_seeds": 1, "n_items": 10}

    monkeypatch.setattr(stats, "paired_accuracy_difference", difference)
    monkeypatch.setattr(run, "read_jsonl", lambda path: [])
    monkeypatch.setattr(run, "_evaluation", lambda *args: tmp_path)
    study = load_study("full")
    row = run._claim_row(study, [], run.Claim("?", "enc-s-2k", "enc-s", run.TRANSPLANT, "average"))
    assert asked == [None] and row["metric"] == "macro-average accuracy"
    run._claim_row(study, [], run.Claim("?", "enc-s-2k", "enc-s", run.TRANSPLANT))
    assert asked[-1] == "vision_centric"


def test_a_control_naming_an_encoder_not_transplanted_is_refused() -> None:
    from pivotlab.study.run import check_transplant_control

    with pytest.raises(StudyError, match=r"transplant\.control\.stronger 'enc-l' is not"):
        check_transplant_control(load_study("quick", ["transplant.control.stronger=enc-l"]))
    with pytest.raises(StudyError, match=r"control\.weaker 'zoo:enc-l' is no zoo part"):
        check_transplant_control(load_study("full", ["transplant.control.weaker=zoo:enc-l"]))
    check_transplant_control(load_study("quick"))
    check_transplant_control(load_study("full"))


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


def test_ledger_needs_the_recorded_files_not_the_folder(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    output = tmp_path / "step" / "result.json"
    output.parent.mkdir()
    output.write_text("{}")
    ledger.record("seed0/step", "abc", [output.parent], 1.0)
    assert ledger.finished("seed0/step", "abc") is not None
    assert ledger.finished("seed0/step", "changed-spec") is None
    output.write_text("{ }")
    assert ledger.finished("seed0/step", "abc") is None


def test_a_bad_preset_names_the_key(preset: Path) -> None:
    with pytest.raises(StudyError, match=r"unknown key post\.arm "):
        load_study(str(preset), ["post.arm=1"])
    with pytest.raises(StudyError, match=r"post\.baseline 'ipo' is not an arm"):
        load_study(str(preset), ["post.baseline=ipo"])
    with pytest.raises(StudyError, match="unknown study preset 'nope'"):
        load_study("nope")


def test_paper_preset_dry_run_plans_every_training_step(tmp_path: Path) -> None:
    from pivotlab.plan.estimate import PlanOptions
    from pivotlab.study.dryrun import dry_run

    lines: list[str] = []
    study = load_study("paper")
    hours = dry_run(study, tmp_path / "run", PlanOptions(), lines.append)
    planned = [line for line in lines[-1 - 32 : -1] if "GPU-h" in line]
    assert len(planned) == 2 + 3 * (2 + 2 * 4)  # Stage 1 once; per seed 2 arms + 4 transplants
    assert not any("not planned:" in line for line in lines)
    assert 50 < hours < 200  # the recorded estimate is 94.8 GPU-hours (docs/study.md)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_quick_preset_builds_every_step_it_promises(tmp_path: Path) -> None:
    from pivotlab.study.pipeline import seed_steps

    study = load_study("quick")
    steps = seed_steps(study, tmp_path, 0, study.world.sections())
    names = [step.name for step in steps]
    assert names[:2] == ["seed0/align", "seed0/full"]
    assert {"seed0/post-sft", "seed0/post-dpo", "seed0/eval-blind", "seed0/analysis"} <= set(names)
    rates = ("1e-05", "3e-05", "0.0001", "0.0003")
    for arm in ("sft", "dpo"):  # every point trained, scored on val, its KL measured
        for kind in ("post", "val", "kl"):
            assert {f"seed0/{kind}-{arm}/lr-{rate}" for rate in rates} <= set(names)
        assert names.index(f"seed0/post-{arm}") > names.index(f"seed0/kl-{arm}/lr-0.0003")
    assert {"seed0/post-continued", "seed0/val-continued", "seed0/val-stage1"} <= set(names)
    points = [s for s in steps if s.name.startswith("seed0/post-sft/")]
    # Each point in Stage 1's ratio between the parts, the LM at the swept rate.
    lms = [
        s.config.train.lr["lm"] for s in points if s.config and isinstance(s.config.train.lr, dict)
    ]
    assert lms == [float(r) for r in rates]
    # The control reads the questions the preference arms' records were made from, and
    # Stage 2 a split of its own (the task Stage 1 never trained on).
    continued = next(s for s in steps if s.name == "seed0/post-continued").config
    sft = points[0].config
    stage1 = next(s for s in steps if s.name == "seed0/full").config
    assert continued and sft and stage1 and continued.stage == "full"
    assert (continued.data.limit, continued.seed) == (sft.data.limit, sft.seed)
    assert continued.data.train == sft.data.train != stage1.data.train
    assert "relation" not in stage1.data.train["tasks"]
    assert sft.data.train["tasks"] == ["relation"]
    transplanted = {n.split("/")[1] for n in names if n.endswith("/eval") and "transplant" in n}
    expected = ("stage1", "sft", "dpo", "enc-s", "enc-m")
    assert transplanted == {f"transplant-{e}" for e in expected}
    full = next(step for step in steps if step.name == "seed0/transplant-dpo/full")
    assert full.config is not None and full.config.parts == ["projector", "lm"]


def test_full_preset_has_its_arms_sweep_and_claims(tmp_path: Path) -> None:
    from pivotlab.study.pipeline import seed_steps, tracks

    study = load_study("full")
    assert [t.name for t in tracks(study)] == ["main", "enc-m+lm-s", "enc-s-2k+lm-s"]
    first, later = (seed_steps(study, tmp_path, s, study.world.sections()) for s in (0, 1))
    assert "seed0/full" in [s.name for s in first]
    assert not [
        s for s in later if s.name.endswith(("/align", "/full")) and "transplant" not in s.name
    ]
    questions = [c.question for c in claims(study)]
    assert "Does VIRAL help DPO?" in questions
    assert not any("sft-n4000 post-training" in q for q in questions)  # only post.compared


def test_a_study_folder_from_before_a_new_config_key_still_resumes(
    preset: Path, tmp_path: Path
) -> None:
    from pivotlab.study.run import _check_folder

    study = load_study(str(preset))
    _check_folder(study, tmp_path)
    saved = yaml.safe_load((tmp_path / "study.yaml").read_text())
    del saved["sweeps"]  # a key this version added, with a default
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(saved))
    _check_folder(study, tmp_path)
    with pytest.raises(StudyError, match="holds another study"):
        _check_folder(load_study(str(preset), ["seeds=[1]"]), tmp_path)


def test_transplant_and_sweep_can_take_a_subset(tmp_path: Path) -> None:
    from pivotlab.study.pipeline import seed_steps

    overrides = ["transplant.encoders=[dpo]", "sweeps.scale.seeds=[0]"]
    study = load_study("full", overrides)
    first, later = (seed_steps(study, tmp_path, s, study.world.sections()) for s in (0, 1))
    evaluated = {n.name.split("/")[1] for n in first if n.name.endswith("/eval")}
    # enc-s-2k: the positive control's weaker side, transplanted for the control alone.
    expected = {"transplant-dpo", "transplant-enc-s", "transplant-enc-m", "transplant-enc-s-2k"}
    assert evaluated == expected
    assert any("/scale-" in s.name for s in first)
    assert not any("/scale-" in s.name for s in later)
    transplant_claims = [c for c in claims(study) if c.where == TRANSPLANT]
    assert {c.treated for c in transplant_claims} == {"dpo"}
    assert {c.control for c in transplant_claims} == {"enc-s", "enc-m"}  # sft is not transplanted
    with pytest.raises(StudyError, match=r"transplant\.encoders names 'nope'"):
        load_study("full", ["transplant.encoders=[nope]"])
    with pytest.raises(StudyError, match=r"sweeps\.scale\.seeds must include stage1\.seed"):
        load_study("full", ["sweeps.scale.seeds=[1]"])


def test_the_stage1_warning_appears_only_when_stage1_does_not_clear_the_blind_baseline() -> None:
    from pivotlab.study.run import _warnings

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

    seeing = _warnings([row("stage1", 0.60, 0.55), row("blind", 0.36, 0.30)], [], [])
    blind = _warnings([row("stage1", 0.38, 0.33), row("blind", 0.36, 0.30)], [], [])
    assert not any("Warning" in w for w in seeing)
    assert any("38.0% [33.0%, 43.0%], seed 0; chance 35.0%" in w for w in blind)


def test_the_transplant_warning_appears_only_when_no_transplant_clears_the_blind_baseline() -> None:
    from pivotlab.study.run import _warnings

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

    one_sees = _warnings(vqa, [], transplanted(0.30, 0.40))
    none_sees = _warnings(vqa, [], transplanted(0.28, 0.30, 0.35))
    assert not any("transplanted" in w for w in one_sees)
    assert any(
        "blind baseline's (36.0%; 3 models" in w and "33.0% to 40.0%" in w for w in none_sees
    )


def test_a_study_may_grow_by_arms_but_not_change_in_place(preset: Path, tmp_path: Path) -> None:
    from pivotlab.study.run import _check_folder

    _check_folder(load_study(str(preset)), tmp_path)
    ipo = "post.arms.ipo={config: " + str(CONFIGS / "tiny" / "post-ipo.yaml") + "}"
    grown = load_study(str(preset), [ipo])
    _check_folder(grown, tmp_path)  # an added arm: accepted, and recorded
    assert "ipo" in yaml.safe_load((tmp_path / "study.yaml").read_text())["post"]["arms"]
    with pytest.raises(StudyError, match="more than added arms"):
        _check_folder(load_study(str(preset)), tmp_path)  # dropping the arm again
    changed = load_study(str(preset), [ipo, "post.arms.dpo.overrides=[data.limit=3]"])
    with pytest.raises(StudyError, match="more than added arms"):
        _check_folder(changed, tmp_path)  # an existing arm's recipe changed


def _steps(study, run: Path) -> list:
    """Every step of ``study`` into ``run``, over split folders that need not exist."""
    from pivotlab.study.pipeline import seed_steps

    splits = {name: run / "world" / name for name in ("train", "val", "test", "probes")}
    return [step for seed in study.seeds for step in seed_steps(study, run, seed, splits)]


def test_a_claim_against_a_one_seed_sweep_uses_the_seeds_both_sides_have(tmp_path: Path) -> None:
    from pivotlab.study.run import ENCODER, ENCODER_MEASUREMENT, _claim_row

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
    result = _claim_row(study, _steps(study, tmp_path), claim)
    assert result["n_seeds"] == 1  # seed 0 only: the sweep ran there alone
    assert result["diff"] == pytest.approx(0.36 - 0.30)


def test_vqa_rows_name_a_sweep_s_models_apart_from_the_main_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pivotlab.study.run as study_run

    def one_row(folder: Path, **labels) -> list[dict]:
        return [{**labels, "category": "vision_centric", "value": 0.5}]

    monkeypatch.setattr(study_run, "_category_rows", one_row)
    study = load_study("full")
    rows = study_run._vqa_rows(study, _steps(study, tmp_path))
    stage1 = {(r["arm"], r["track"]) for r in rows if r["arm"].startswith("stage1")}
    assert stage1 == {
        ("stage1", "main"),
        ("stage1@enc-m+lm-s", "enc-m+lm-s"),
        ("stage1@enc-s-2k+lm-s", "enc-s-2k+lm-s"),  # the transplant control's Stage 1
    }
    assert all(r["arm"].endswith(f"@{r['track']}") for r in rows if r["track"] != "main")


def test_every_arm_is_also_compared_with_the_stage1_model_it_started_from() -> None:
    comparisons = [claim.comparison for claim in claims(load_study("quick"))]
    assert {"sft - stage1 (VQA)", "dpo - stage1 (VQA)"} <= set(comparisons)


def test_the_primary_claims_are_pre_registered_and_a_stray_one_is_refused() -> None:
    from dataclasses import replace

    from pivotlab.study.run import check_claim_names, primary_comparisons

    quick = load_study("quick")
    assert primary_comparisons(quick) == quick.primary
    assert primary_comparisons(replace(quick, primary=None)) == quick.primary  # the default set
    with pytest.raises(StudyError, match=r"primary names 'dpo - ipo \(VQA\)', not a claim"):
        check_claim_names(replace(quick, primary=["dpo - ipo (VQA)"]))


def test_the_primary_claims_cannot_change_after_a_study_has_run(tmp_path: Path) -> None:
    """Pre-registered means fixed: a run folder refuses the same study with another list."""
    from dataclasses import replace

    from pivotlab.study.run import _check_folder

    quick = load_study("quick")
    _check_folder(quick, tmp_path)
    with pytest.raises(StudyError, match="holds another study"):
        _check_folder(replace(quick, primary=["dpo - sft (VQA)"]), tmp_path)
    # A folder from before primary: existed had the default set: the preset's list is that.
    saved = yaml.safe_load((tmp_path / "study.yaml").read_text())
    del saved["primary"]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(saved))
    _check_folder(quick, tmp_path)
    with pytest.raises(StudyError, match="holds another study"):
        _check_folder(replace(quick, primary=["dpo - sft (VQA)"]), tmp_path)


def test_primary_claims_are_decided_together_and_the_rest_alone() -> None:
    """Holm over the two primary rows: 0.02 x 2 = 0.04 holds, 0.03 x 1 -> 0.04 holds; an
    exploratory row keeps its own interval's verdict."""
    from pivotlab.study.run import _decide_primary

    def row(comparison: str, p: float, low: float) -> dict:
        interval = {"diff": 0.05, "ci_low": low, "ci_high": 0.09, "p_value": p, "mde": 0.04}
        return {"comparison": comparison, **interval, "primary": False, "verdict": "own"}

    rows = [row("a - b (VQA)", 0.03, 0.01), row("c - b (VQA)", 0.02, 0.01), row("x", 0.2, -0.01)]
    _decide_primary(rows, ["a - b (VQA)", "c - b (VQA)"])
    assert [r["primary"] for r in rows] == [True, True, False]
    assert [r.get("p_holm") for r in rows] == pytest.approx([0.04, 0.04, None])
    assert [r["verdict"] for r in rows] == ["holds", "holds", "own"]
    assert rows[0]["mde"] > 0.04 and rows[2]["mde"] == 0.04  # primary: at level 0.05 / 2


def test_an_arm_against_a_shared_stage1_reads_the_one_stage1_model_for_every_seed(
    tmp_path: Path,
) -> None:
    from pivotlab.study.run import _claim_row

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
    result = _claim_row(study, _steps(study, tmp_path), claim)
    assert result["n_seeds"] == 3
    assert result["diff"] == pytest.approx((2 + 3 + 2) / 3 / 4 - 1 / 4)


def test_each_answer_is_read_against_the_paper_where_it_reports_one() -> None:
    from dataclasses import replace

    from pivotlab.study.config import PaperEffect
    from pivotlab.study.run import _beside_the_paper, check_claim_names

    paper = {"a (VQA)": PaperEffect(0.042, "a table"), "b (VQA)": PaperEffect(0.018, "b row")}
    rows = [
        {"comparison": "a (VQA)", "diff": 0.03, "ci_low": 0.01, "ci_high": 0.05},
        {"comparison": "b (VQA)", "diff": -0.01, "ci_low": -0.03, "ci_high": 0.01},
        {"comparison": "c (VQA)", "diff": 0.02, "ci_low": None, "ci_high": None},
    ]
    _beside_the_paper(rows, paper)
    assert rows[0]["paper_reading"] == "same direction, inside our interval"
    assert rows[1]["paper_reading"] == "opposite direction, outside our interval"
    assert rows[1]["paper_source"] == "b row" and "paper_effect" not in rows[2]
    quick = load_study("quick")
    with pytest.raises(StudyError, match=r"paper names 'dpo - ipo \(VQA\)', not a claim"):
        check_claim_names(replace(quick, paper={"dpo - ipo (VQA)": PaperEffect(0.1, "x")}))


def test_a_claim_reads_each_seeds_own_transplant_and_the_one_shared_stage_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each seed transplants the Stage-1 encoder into its own fresh LM: a transplant claim
    pairs seed s of the arm with seed s of the Stage-1 encoder's transplant. On VQA, the
    Stage 1 every seed started from is the one model of ``stage1.seed``."""
    from pivotlab.study import run
    from pivotlab.study.pipeline import seed_steps

    study = load_study("full")
    splits = {name: tmp_path / name for name in ("train", "post", "val", "test", "probes")}
    steps = [s for seed in study.seeds for s in seed_steps(study, tmp_path / "run", seed, splits)]
    answer = {"id": "q0", "category": "vision_centric", "task": "count", "correct": True}
    monkeypatch.setattr(run, "read_jsonl", lambda path: [{**answer, "pair_id": None}])
    after = run._claim_row(study, steps, run.Claim("?", "stage1", "dpo", TRANSPLANT))
    own = [s for s in after["source"] if "/transplant/stage1/" in s]
    assert own == [
        str(tmp_path / f"run/seed{s}/transplant/stage1/eval/predictions.jsonl") for s in (0, 1, 2)
    ]
    vqa = run._claim_row(study, steps, run.Claim("?", "stage1", "dpo"))
    shared = [s for s in vqa["source"] if "/eval/stage1/" in s]
    assert shared == [str(tmp_path / "run/seed0/eval/stage1/predictions.jsonl")] * 3
