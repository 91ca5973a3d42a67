"""The study's step list (each preset's steps, tracks and transplants) and its progress estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.study.claims import claims
from pivotlab.study.config import StudyError, load_study
from pivotlab.study.ledger import Ledger
from pivotlab.study.pipeline import TRANSPLANT, Step, run_steps, seed_steps, tracks


def _timed(step: Step, seconds: float, clock: list[float]) -> Step:
    """The step with an action that advances the fake clock instead of training."""

    def action() -> dict:
        clock[0] += seconds
        return {}

    step.action = action
    step.outputs = []
    return step


def test_the_estimate_learns_each_step_from_its_own_kind_not_the_slowest(
    tmp_path: Path, monkeypatch
) -> None:
    """After one long Stage-1 ``full`` and one short SFT arm, a later seed's SFT arm is
    guessed from the SFT arm (a mean over every training step guessed it three times
    as long)."""
    study = load_study("quick", ["seeds=[0,1]"])
    world = study.world.sections()
    point = "post-sft/lr-1e-05"  # a point of the SFT arm's rate sweep
    wanted = ["seed0/align", "seed0/full", f"seed0/{point}", f"seed1/{point}"]
    steps = {s.name: s for seed in (0, 1) for s in seed_steps(study, tmp_path, seed, world)}
    clock = [0.0]
    seconds = {"seed0/align": 10.0, "seed0/full": 160.0, f"seed0/{point}": 20.0}
    chosen = [_timed(steps[n], seconds.get(n, 20.0), clock) for n in wanted]
    monkeypatch.setattr("pivotlab.study.pipeline.time.perf_counter", lambda: clock[0])
    lines: list[str] = []
    run_steps(chosen, Ledger(tmp_path / "run"), lines.append)
    assert lines[2].endswith("(elapsed 3m10s, about 0m20s left)")
    # No arm finished yet: the two arms are guessed from the training steps so far.
    assert lines[1].endswith("about 2m50s left)")


def test_a_transplant_is_not_guessed_from_the_longer_stage1_run(tmp_path: Path) -> None:
    """Both are ``full`` on ``enc-s`` + ``lm-s``, but the transplant reads fewer questions
    and trains no encoder: only the kind is shared."""
    from pivotlab.study.progress import estimate_keys

    study = load_study("quick")
    steps = {s.name: s for s in seed_steps(study, tmp_path, 0, study.world.sections())}
    stage1, transplant = steps["seed0/full"], steps["seed0/transplant-enc-s/full"]
    assert stage1.architecture == transplant.architecture
    assert set(estimate_keys(stage1)) & set(estimate_keys(transplant)) == {"train"}


def test_the_stage1_and_blind_evaluations_are_different_steps(tmp_path: Path) -> None:
    """Same model and questions, but one is blind: the ledger must not take one for the
    other (the study-wide ``evaluate.blind`` once overwrote the step's own flag)."""
    from pivotlab.study.ledger import fingerprint

    study = load_study("quick")
    steps = {s.name: s for s in seed_steps(study, tmp_path, 0, study.world.sections())}
    stage1, blind = steps["seed0/eval-stage1"], steps["seed0/eval-blind"]
    assert (stage1.spec["blind"], blind.spec["blind"]) == (False, True)
    assert fingerprint(stage1.spec) != fingerprint(blind.spec)


def test_a_key_added_to_the_evaluate_section_leaves_finished_evaluations_alone(
    tmp_path: Path,
) -> None:
    """An evaluation's spec holds what it reads: ``evaluate.kl_limit`` (read by the KL steps
    only) must not change the test evaluations' fingerprints, or every finished one runs again."""
    from pivotlab.study.ledger import fingerprint

    def specs(overrides: list[str]) -> dict[str, str]:
        study = load_study("quick", overrides)
        steps = seed_steps(study, tmp_path, 0, study.world.sections())
        return {s.name: fingerprint(s.spec) for s in steps if s.kind == "evaluate"}

    assert specs([]) == specs(["evaluate.kl_limit=100"])
    assert specs([]) != specs(["evaluate.limit=100"])


def test_stage2_trains_on_world_post_and_stage1_on_world_train(tmp_path: Path) -> None:
    """With ``world.post`` every post arm (swept points and the continued control) reads
    it, while Stage 1 and the transplant keep ``world.train``; without it the arms read
    ``world.train`` too."""

    def train_sets(overrides: list[str]) -> dict[str, object]:
        study = load_study("quick", overrides)
        steps = seed_steps(study, tmp_path, 0, study.world.sections())
        return {s.name: s.config.data.train for s in steps if s.kind == "train"}

    unset = train_sets(["world.post={}"])
    post = {"preset": "tiny", "split": "train", "n": 300, "seed": 11, "size": 64}
    own = train_sets(["world.post={preset: tiny, split: train, n: 300, seed: 11, size: 64}"])
    arms = [n for n in own if "/post-" in n]
    assert arms and {"seed0/post-sft/lr-3e-05", "seed0/post-continued"} <= set(arms)
    assert all(own[n] == post for n in arms)
    assert all(own[n] == unset[n] for n in own if n not in arms)
    assert all(unset[n] == unset["seed0/full"] for n in arms)


def test_a_sweep_ratio_gives_each_part_its_multiple_of_the_swept_rate(tmp_path: Path) -> None:
    """``post.sweep.ratio`` keeps Stage 1's ratio between the parts at every point; without
    it each point trains every part at the swept rate."""
    ratio = "post.sweep.ratio={vision: 1, projector: 5, lm: 2}"

    def point_lr(overrides: list[str]) -> object:
        study = load_study("quick", overrides)
        steps = {s.name: s for s in seed_steps(study, tmp_path, 0, study.world.sections())}
        return steps["seed0/post-dpo/lr-3e-05"].config.train.lr

    assert point_lr(["post.sweep.ratio=null"]) == 3e-5
    rates = point_lr([ratio])
    assert rates == pytest.approx({"vision": 3e-5, "projector": 1.5e-4, "lm": 6e-5})


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        ("{vision: 0.5, head: 10}", r"post\.sweep\.ratio names 'head', not a part"),
        ("{vision: 0, projector: 10, lm: 1}", r"post\.sweep\.ratio must give each part"),
    ],
)
def test_a_bad_sweep_ratio_is_refused_in_one_line(ratio: str, message: str) -> None:
    from pivotlab.study.config import StudyError

    with pytest.raises(StudyError, match=message):
        load_study("quick", [f"post.sweep.ratio={ratio}"])


def test_a_ratio_missing_a_trained_part_is_refused_when_the_steps_are_planned(
    tmp_path: Path,
) -> None:
    from pivotlab.configtree import ConfigError

    study = load_study("quick", ["post.sweep.ratio={projector: 10, lm: 1}"])
    with pytest.raises(ConfigError, match=r"train\.lr has no rate for trained part vision"):
        seed_steps(study, tmp_path, 0, study.world.sections())


def test_quick_preset_builds_every_step_it_promises(tmp_path: Path) -> None:
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
    expected = ("stage1", "sft", "dpo", "enc-s", "enc-s-2k")  # enc-s-2k: the control alone
    assert transplanted == {f"transplant-{e}" for e in expected}
    full = next(step for step in steps if step.name == "seed0/transplant-dpo/full")
    assert full.config is not None and full.config.parts == ["projector", "lm"]


def test_full_preset_has_its_arms_sweep_and_claims(tmp_path: Path) -> None:
    study = load_study("full")
    assert [t.name for t in tracks(study)] == ["main", "enc-s+lm-m"]  # the LLM-head axis
    first, later = (seed_steps(study, tmp_path, s, study.world.sections()) for s in (0, 1))
    assert "seed0/full" in [s.name for s in first]
    assert not [
        s for s in later if s.name.endswith(("/align", "/full")) and "transplant" not in s.name
    ]
    questions = [c.question for c in claims(study)]
    assert "Does VIRAL help DPO?" in questions
    assert "Does the larger LM head (enc-s+lm-m) train a better dpo encoder?" in questions
    assert not any("sft-n4000 post-training" in q for q in questions)  # only post.compared


def test_transplant_and_sweep_can_take_a_subset(tmp_path: Path) -> None:
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


def test_a_control_encoder_is_transplanted_and_given_stage1_for_the_control_alone(
    tmp_path: Path,
) -> None:
    """``zoo:enc-s-2k`` is transplanted on every seed and trained through Stage 1 once (no
    arms, no analyses), and no claim compares an arm with it."""
    study = load_study("full", ["transplant.control.stage1=true"])
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
    # Without ``stage1`` (the preset's own) the control takes its gap from ``known``: no
    # Stage 1 on enc-s-2k.
    plain = load_study("full")
    assert not [n for n in seed_steps(plain, tmp_path, 0, world) if "control-" in n.name]
