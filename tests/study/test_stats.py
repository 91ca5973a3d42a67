"""Study statistics: t intervals, the paired hierarchical bootstrap, verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pivotlab.errors import PivotlabError
from pivotlab.evaluate.metrics import accuracy_rows
from pivotlab.study.stats import (
    HOLDS,
    NO_INTERVAL,
    NOT_SIGNIFICANT,
    REVERSED,
    adjusted_verdict,
    holm,
    minimum_detectable_effect,
    paired_accuracy_difference,
    paired_value_difference,
    seed_summary,
    t_interval,
    verdict,
)


def _row(i: int, correct: bool, category: str = "c", task: str = "t", pair: str | None = None):
    return {"id": f"q{i}", "category": category, "task": task, "correct": bool(correct),
            "pair_id": pair, "chance": 0.5}  # fmt: skip


def _arms(correct_a, correct_b, **keys) -> tuple[list[dict], list[dict]]:
    a = [_row(i, c, **keys) for i, c in enumerate(correct_a)]
    b = [_row(i, c, **keys) for i, c in enumerate(correct_b)]
    return a, b


def _simulated_study(rng, n: int, seeds: int, seed_shift: float, pa=0.5, pb=0.6):
    """Two correlated arms on the same n questions, ``seeds`` training seeds. Question i has
    a difficulty u_i ~ U(0, 1); a seed jitters it modulo 1 (still uniform) and shifts each
    arm's threshold by ±seed_shift, so every question is right with probability exactly
    p + shift and the true difference is pb - pa."""
    u = rng.random(n)
    a, b = {}, {}
    for s in range(seeds):
        jitter = (u + rng.normal(0, 0.1, n)) % 1.0
        shift_a, shift_b = rng.choice([-seed_shift, seed_shift], size=2)
        a[s], b[s] = _arms(jitter < pa + shift_a, jitter < pb + shift_b)
    return a, b


def _coverage(studies: int, n: int, seeds: int, seed_shift: float) -> float:
    rng = np.random.default_rng(7)
    hits = 0
    for k in range(studies):
        a, b = _simulated_study(rng, n, seeds, seed_shift)
        row = paired_accuracy_difference(a, b, category="c", resamples=500, seed=k)
        hits += row["ci_low"] <= 0.1 <= row["ci_high"]
    return hits / studies


def test_t_interval_equals_scipy_and_a_hand_computation() -> None:
    values = [0.61, 0.64, 0.58]
    low, high = t_interval(values)
    sem = np.std(values, ddof=1) / np.sqrt(3)
    expected = scipy_stats.t.interval(0.95, df=2, loc=np.mean(values), scale=sem)
    assert (low, high) == pytest.approx(expected)
    assert high - np.mean(values) == pytest.approx(4.302652729911275 * sem)  # t(0.975, 2)
    summary = seed_summary(values)
    assert summary == pytest.approx({"mean": 0.61, "ci_low": low, "ci_high": high, "n": 3})


def test_one_seed_has_no_interval_and_no_seed_is_an_error() -> None:
    assert seed_summary([0.7]) == {"mean": 0.7, "ci_low": None, "ci_high": None, "n": 1}
    with pytest.raises(PivotlabError, match="no values"):
        seed_summary([])


def test_point_difference_is_evaluates_accuracy_difference() -> None:
    rng = np.random.default_rng(0)
    rows_a, rows_b = [], []
    for i in range(120):
        category, task = [("general", "color"), ("knowledge", "gem"), ("vision_centric", "mmvp")][
            i % 3
        ]
        pair = f"p{i // 6}" if task == "mmvp" else None
        rows_a.append(_row(i, rng.random() < 0.4, category, task, pair))
        rows_b.append(_row(i, rng.random() < 0.6, category, task, pair))

    def value(rows, metric, **keys):
        out = accuracy_rows(rows, {})
        return next(r["value"] for r in out if r["metric"] == metric and r.items() >= keys.items()
                    and ("task" in r) == ("task" in keys))  # fmt: skip

    cases = [
        ({"category": "general"}, "accuracy", {"category": "general"}),
        ({"category": "vision_centric"}, "accuracy", {"category": "vision_centric"}),
        ({"task": "mmvp"}, "accuracy", {"task": "mmvp"}),
        ({}, "average", {}),
        ({"task": "mmvp", "metric": "pair_accuracy"}, "pair_accuracy", {"task": "mmvp"}),
    ]
    for arguments, metric, keys in cases:
        row = paired_accuracy_difference({0: rows_a}, {0: rows_b}, resamples=200, **arguments)
        expected = value(rows_b, metric, **keys) - value(rows_a, metric, **keys)
        assert row["diff"] == pytest.approx(expected), arguments
        assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    assert paired_accuracy_difference({0: rows_a}, {0: rows_b}, task="mmvp")["n_items"] == 40
    pairs = paired_accuracy_difference({0: rows_a}, {0: rows_b}, metric="pair_accuracy")
    assert pairs["n_items"] == 20


def test_interval_covers_the_true_difference_at_the_nominal_rate_with_one_seed() -> None:
    assert 0.9 <= _coverage(studies=200, n=200, seeds=1, seed_shift=0.0) <= 0.99


def test_interval_still_covers_with_three_seeds_whose_variation_dominates() -> None:
    # Seed shifts of ±5 points against 600 questions: a plain percentile bootstrap over
    # three seeds undercovers here; the expanded seed level must not.
    assert _coverage(studies=200, n=600, seeds=3, seed_shift=0.05) >= 0.9


def test_pairing_narrows_the_interval_when_arms_are_correlated() -> None:
    rng = np.random.default_rng(1)
    u = rng.random(400)
    a, b = _arms(u < 0.5, u < 0.6)
    # Shuffling b's outcomes across questions keeps its accuracy and breaks the pairing:
    # what an unpaired bootstrap would see.
    shuffled = [
        dict(row, correct=c)
        for row, c in zip(b, rng.permutation([r["correct"] for r in b]), strict=True)
    ]
    paired = paired_accuracy_difference({0: a}, {0: b}, resamples=1000)
    unpaired = paired_accuracy_difference({0: a}, {0: shuffled}, resamples=1000)
    assert paired["diff"] == pytest.approx(unpaired["diff"])
    assert paired["ci_high"] - paired["ci_low"] < 0.6 * (unpaired["ci_high"] - unpaired["ci_low"])


def test_mmvp_twins_are_resampled_as_one_unit() -> None:
    # Twins that always agree carry one observation, not two: resampling pairs as units
    # must widen the interval by about sqrt(2) over treating them as independent questions.
    rng = np.random.default_rng(2)
    outcome_a, outcome_b = rng.random(150) < 0.5, rng.random(150) < 0.6
    twins_a = [_row(i, outcome_a[i // 2], task="mmvp", pair=f"p{i // 2}") for i in range(300)]
    twins_b = [_row(i, outcome_b[i // 2], task="mmvp", pair=f"p{i // 2}") for i in range(300)]
    loose_a = [dict(r, pair_id=None) for r in twins_a]
    loose_b = [dict(r, pair_id=None) for r in twins_b]
    paired = paired_accuracy_difference({0: twins_a}, {0: twins_b}, resamples=2000)
    loose = paired_accuracy_difference({0: loose_a}, {0: loose_b}, resamples=2000)
    ratio = (paired["ci_high"] - paired["ci_low"]) / (loose["ci_high"] - loose["ci_low"])
    assert paired["diff"] == pytest.approx(loose["diff"]) and 1.25 < ratio < 1.6


def test_bootstrap_is_deterministic_from_its_seed() -> None:
    a, b = _simulated_study(np.random.default_rng(3), 100, 2, 0.02)
    first = paired_accuracy_difference(a, b, seed=5, resamples=300)
    assert first == paired_accuracy_difference(a, b, seed=5, resamples=300)
    assert first != paired_accuracy_difference(a, b, seed=6, resamples=300)


def test_arms_on_different_questions_or_seeds_are_refused_in_one_line() -> None:
    a, b = _arms([True] * 5, [False] * 5)
    b[4] = dict(b[4], id="other")
    with pytest.raises(PivotlabError, match=r"seed 0: the two arms were not evaluated on the "
                       r"same questions \(1 ids only in a, 1 only in b") as caught:  # fmt: skip
        paired_accuracy_difference({0: a}, {0: b})
    assert "\n" not in str(caught.value)
    with pytest.raises(PivotlabError, match="same seeds"):
        paired_accuracy_difference({0: a, 1: a}, {0: a})
    with pytest.raises(PivotlabError, match="no accuracy units for category='ocr'"):
        paired_accuracy_difference({0: a}, {0: a}, category="ocr")


def test_value_difference_uses_per_seed_differences_and_a_t_interval() -> None:
    a = {s: {"value": v} for s, v in enumerate([0.50, 0.55, 0.52])}
    b = {s: {"value": v} for s, v in enumerate([0.58, 0.60, 0.61])}
    row = paired_value_difference(a, b)
    assert row["diff"] == pytest.approx(np.mean([0.08, 0.05, 0.09]))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(t_interval([0.08, 0.05, 0.09]))
    assert row["n_seeds"] == 3 and verdict(row) == HOLDS


def test_one_seed_value_difference_can_only_tell_when_intervals_are_apart() -> None:
    a = {0: {"value": 0.50, "ci_low": 0.45, "ci_high": 0.55}}
    overlapping = paired_value_difference(a, {0: {"value": 0.56, "ci_low": 0.51, "ci_high": 0.61}})
    apart = paired_value_difference(a, {0: {"value": 0.40, "ci_low": 0.36, "ci_high": 0.44}})
    no_intervals = paired_value_difference({0: {"value": 0.5}}, {0: {"value": 0.9}})
    assert overlapping["ci_low"] is None and overlapping["apart"] is False
    assert verdict(overlapping) == NO_INTERVAL
    assert verdict(apart) == "reversed (one seed, intervals apart)"
    assert verdict(apart, expected_sign=-1) == "holds (one seed, intervals apart)"
    assert no_intervals["apart"] is None and verdict(no_intervals) == NO_INTERVAL


@pytest.mark.parametrize(
    ("low", "high", "sign", "expected"),
    [
        (0.01, 0.05, +1, HOLDS),
        (-0.05, -0.01, +1, REVERSED),
        (-0.01, 0.05, +1, NOT_SIGNIFICANT),
        (0.0, 0.05, +1, NOT_SIGNIFICANT),  # touching 0 does not exclude it
        (-0.05, -0.01, -1, HOLDS),
        (0.01, 0.05, -1, REVERSED),
        (None, None, +1, NO_INTERVAL),
    ],
)
def test_verdicts_on_constructed_rows(low, high, sign, expected) -> None:
    assert verdict({"diff": 0.03, "ci_low": low, "ci_high": high}, expected_sign=sign) == expected


def test_the_bootstrap_p_value_agrees_with_the_interval() -> None:
    """p < 0.05 exactly where the 95% interval leaves zero out (up to the one replicate
    added), over studies from no difference to a large one."""
    rng = np.random.default_rng(3)
    for gap in (0.0, 0.03, 0.06, 0.1, 0.2):
        a, b = _simulated_study(rng, 300, 1, 0.0, pa=0.5, pb=0.5 + gap)
        row = paired_accuracy_difference(a, b, category="c")
        excludes_zero = row["ci_low"] > 0 or row["ci_high"] < 0
        assert 0 < row["p_value"] <= 1
        if abs(row["p_value"] - 0.05) > 0.005:
            assert (row["p_value"] < 0.05) == excludes_zero, (gap, row)


def test_value_differences_get_a_t_test_with_two_seeds_or_more() -> None:
    a = {s: {"value": v} for s, v in enumerate([0.60, 0.62, 0.61])}
    b = {s: {"value": v} for s, v in enumerate([0.64, 0.65, 0.66])}
    expected = scipy_stats.ttest_1samp([0.04, 0.03, 0.05], 0.0).pvalue
    assert paired_value_difference(a, b)["p_value"] == pytest.approx(expected)
    assert paired_value_difference({0: a[0]}, {0: b[0]})["p_value"] is None


def test_holm_adjusts_step_down_and_counts_untested_claims() -> None:
    # Four hypotheses, one without a p-value: 0.01 x 4, then max(0.04, 0.03 x 3), then 0.04 x 2.
    assert holm([0.04, 0.01, 0.03, None]) == pytest.approx([0.09, 0.04, 0.09, None])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, never decreasing
    assert holm([]) == []


def test_minimum_detectable_effect_from_the_interval() -> None:
    """A 95% interval of +-1.96 is a standard error of 1: 80% power at 5% needs 2.80; at
    Holm's first step over three claims (1.67%) 3.24."""
    row = {"diff": 0.0, "ci_low": -1.96, "ci_high": 1.96}
    assert minimum_detectable_effect(row) == pytest.approx(2.8016, abs=1e-3)
    assert minimum_detectable_effect(row, alpha=0.05 / 3) == pytest.approx(3.2353, abs=1e-3)
    assert minimum_detectable_effect({"diff": 0.1, "ci_low": None, "ci_high": None}) is None
    # Two models that answered alike: no spread to read a power from.
    assert minimum_detectable_effect({"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}) is None


def test_a_primary_verdict_follows_the_adjusted_p_value() -> None:
    row = {"diff": -0.04, "ci_low": -0.07, "ci_high": -0.01}  # its own interval: reversed
    assert adjusted_verdict(row, 0.03) == REVERSED
    assert adjusted_verdict(row, 0.06) == NOT_SIGNIFICANT  # not after the correction
    assert adjusted_verdict({**row, "diff": 0.04}, 0.001) == HOLDS
    assert adjusted_verdict(row, None) == verdict(row)
