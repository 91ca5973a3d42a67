"""Statistics over seeds: intervals per number, paired differences between arms, verdicts.

Written by hand: the study's claims need a paired, hierarchical bootstrap (seeds, then
questions, the same questions for both arms, MMVP twins kept together) that no library
offers directly. numpy only for the resampling, seeded so that a report is reproducible;
scipy (a scikit-learn dependency) for Student-t quantiles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from pivotlab.study.config import StudyError

HOLDS = "holds"
REVERSED = "reversed"
NOT_SIGNIFICANT = "not significant at this scale"
NO_INTERVAL = "no interval (one seed)"
APART = " (one seed, intervals apart)"

# Rows of the resampled index matrix drawn at once: bounds memory at paper-sized test sets.
_CHUNK = 256


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """Student-t 95% interval of the mean of ``values``; None for fewer than two values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return None
    half = scipy_stats.t.ppf(0.975, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size)
    return float(array.mean() - half), float(array.mean() + half)


def seed_summary(values: Sequence[float]) -> dict:
    """Mean and Student-t 95% interval across seeds (one value per seed).

    With one seed there is no spread to estimate: ``ci_low`` and ``ci_high`` are None.
    """
    if len(values) == 0:
        raise StudyError("seed_summary got no values: every number needs at least one seed")
    interval = t_interval(values)
    low, high = interval if interval else (None, None)
    return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high, "n": len(values)}


@dataclass
class _Stratum:
    """Resampling units of one seed and one stratum, aligned across the two arms: correct
    answers per unit in arm a and arm b, and how many questions each unit counts for."""

    a: np.ndarray
    b: np.ndarray
    size: np.ndarray

    def difference(self, index: np.ndarray) -> np.ndarray:
        """Accuracy of b minus accuracy of a on each row of resampled unit indices."""
        size = self.size[index].sum(axis=1)
        return (self.b[index].sum(axis=1) - self.a[index].sum(axis=1)) / size


def _units(predictions: list[dict], metric: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Per category, unit key -> (correct, counted). A unit is an MMVP pair (its twins are
    not independent) or a lone question. For ``accuracy`` every question counts once, as in
    evaluate's category rows; for ``pair_accuracy`` a pair counts once when all its members
    are right and incomplete pairs are left out, as in evaluate's ``pair_outcomes``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in predictions:
        groups[row.get("pair_id") or f"id:{row['id']}"].append(row)
    units: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for key, members in groups.items():
        correct = [bool(row["correct"]) for row in members]
        if metric == "accuracy":
            units[members[0]["category"]][key] = (float(sum(correct)), float(len(correct)))
        elif members[0].get("pair_id") and len(members) >= 2:
            units[members[0]["category"]][key] = (float(all(correct)), 1.0)
    return units


def _strata(
    a: list[dict], b: list[dict], category: str | None, task: str | None, metric: str
) -> list[_Stratum]:
    """One seed's paired units. The macro average (``accuracy`` with no category or task)
    has one stratum per category, each resampled on its own as evaluate's ``average``
    interval is; any other selection is one pooled stratum."""

    def selected(rows: list[dict]) -> list[dict]:
        return [
            r
            for r in rows
            if (category is None or r["category"] == category)
            and (task is None or r["task"] == task)
        ]

    units_a, units_b = _units(selected(a), metric), _units(selected(b), metric)
    keys = [(c, k) for c in sorted(units_a) for k in sorted(units_a[c])]
    if metric == "accuracy" and category is None and task is None:
        groups = [[(c, k) for c, k in keys if c == name] for name in sorted(units_a)]
    else:
        groups = [keys] if keys else []
    return [
        _Stratum(
            a=np.array([units_a[c][k][0] for c, k in group]),
            b=np.array([units_b[c][k][0] for c, k in group]),
            size=np.array([units_a[c][k][1] for c, k in group]),
        )
        for group in groups
    ]


def _paired_strata(
    a: list[dict], b: list[dict], seed: object, category: str | None, task: str | None, metric: str
) -> list[_Stratum]:
    """:func:`_strata` after checking that both arms answered the same questions."""
    ids_a, ids_b = {row["id"] for row in a}, {row["id"] for row in b}
    if ids_a != ids_b:
        raise StudyError(
            f"seed {seed}: the two arms were not evaluated on the same questions "
            f"({len(ids_a - ids_b)} ids only in a, {len(ids_b - ids_a)} only in b, "
            f"e.g. {sorted(ids_a ^ ids_b)[0]!r})"
        )
    strata = _strata(a, b, category, task, metric)
    if not strata:
        raise StudyError(f"seed {seed}: no {metric} units for category={category!r}, task={task!r}")
    return strata


def _seed_replicates(
    per_seed: list[list[_Stratum]], resamples: int, crossed: bool, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap differences, one row of ``resamples`` per seed: units drawn with
    replacement, the same draw for both arms (paired), each stratum on its own, strata
    averaged. ``crossed`` (every seed scored on the same questions): one draw of questions
    per replicate serves all seeds, because the question sample is shared and its variance
    does not shrink with more seeds; otherwise each seed draws its own."""
    out = np.zeros((len(per_seed), resamples))
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        draws: list[np.ndarray] = []
        for position, strata in enumerate(per_seed):
            if not draws or not crossed:
                draws = [rng.integers(0, st.size.size, size=(count, st.size.size)) for st in strata]
            differences = [st.difference(d) for st, d in zip(strata, draws, strict=True)]
            out[position, start : start + count] = np.mean(differences, axis=0)
    return out


def _expansion(n_seeds: int) -> float:
    """Hesterberg's expanded-percentile factor sqrt(n/(n-1)) t(n-1)/z for the seed level.

    A percentile bootstrap over n seeds is too narrow for small n (its spread is the plug-in
    sd, its quantiles normal): with 3 seeds whose variation dominates, the plain interval
    covered the truth 0.835 of the time in docs/study.md's simulation. Scaling the seeds'
    part of each replicate by this factor gives the Student-t width when items are noiseless.
    """
    if n_seeds < 2:
        return 1.0
    z = scipy_stats.norm.ppf(0.975)
    return float(np.sqrt(n_seeds / (n_seeds - 1)) * scipy_stats.t.ppf(0.975, n_seeds - 1) / z)


def paired_accuracy_difference(
    a: Mapping[object, list[dict]],
    b: Mapping[object, list[dict]],
    category: str | None = None,
    task: str | None = None,
    metric: str = "accuracy",
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Accuracy of arm ``b`` minus arm ``a`` (pass ``(sft, dpo)`` for "dpo - sft") with a
    hierarchical, paired bootstrap 95% interval.

    ``a`` and ``b`` map each training seed to that seed's ``predictions.jsonl`` rows; seed s
    of both arms must be scored on the same question ids. The statistic is evaluate's:
    ``metric="accuracy"`` is the item mean over the ``category`` and/or ``task`` selected
    (MMVP questions counted one by one), or the macro average over categories when neither is
    given; ``metric="pair_accuracy"`` counts MMVP pairs. Each replicate draws seeds with
    replacement, then, within every drawn seed, questions with replacement, the same draw for
    both arms; MMVP twins are drawn as one unit. With one seed only questions are resampled:
    the interval then says nothing about how another training seed would do.

    Two corrections keep the interval honest with few seeds and shared questions: when every
    seed was scored on the same questions, one draw of questions serves all seeds of a
    replicate (crossed design); and the seeds' part of each replicate is widened by
    :func:`_expansion`. Coverage measured by simulation is in docs/study.md.

    Returns ``diff`` (mean over seeds), ``ci_low``, ``ci_high``, ``n_seeds`` and ``n_items``
    (questions per seed in the selection, pairs for ``pair_accuracy``).
    """
    if metric not in ("accuracy", "pair_accuracy"):
        raise StudyError(f"metric {metric!r}: expected 'accuracy' or 'pair_accuracy'")
    seeds = _common_seeds(a, b)
    per_seed = [_paired_strata(a[s], b[s], s, category, task, metric) for s in seeds]
    observed = np.array(
        [
            np.mean([st.difference(np.arange(st.size.size)[None])[0] for st in strata])
            for strata in per_seed
        ]
    )
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(seeds), size=(resamples, len(seeds)))
    crossed = all({r["id"] for r in a[s]} == {r["id"] for r in a[seeds[0]]} for s in seeds)
    by_seed = _seed_replicates(per_seed, resamples, crossed, rng)
    # A replicate = the observed mean + the drawn seeds' deviation (expanded) + the questions'.
    seed_part = observed[chosen].mean(axis=1) - observed.mean()
    item_part = (by_seed[chosen, np.arange(resamples)[:, None]] - observed[chosen]).mean(axis=1)
    replicates = observed.mean() + _expansion(len(seeds)) * seed_part + item_part
    low, high = np.percentile(replicates, [2.5, 97.5])
    return {
        "diff": float(observed.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": bootstrap_p_value(replicates),
        "n_seeds": len(seeds),
        "n_items": max(int(sum(st.size.sum() for st in strata)) for strata in per_seed),
    }


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from a difference's bootstrap replicates: twice
    the share on the far side of zero (plus one, so never zero), capped at 1. It inverts the
    percentile interval: the 95% interval leaves zero out where this is under 0.05
    (up to the one replicate added)."""
    count = replicates.size + 1
    below = (np.count_nonzero(replicates <= 0) + 1) / count
    above = (np.count_nonzero(replicates >= 0) + 1) / count
    return float(min(1.0, 2 * min(below, above)))


def _common_seeds(a: Mapping, b: Mapping) -> list:
    """The seeds of two arms, which must be the same and at least one."""
    if set(a) != set(b) or not a:
        raise StudyError(
            f"the arms must have the same seeds, at least one: {sorted(a, key=str)} vs "
            f"{sorted(b, key=str)}"
        )
    return sorted(a, key=str)


def paired_value_difference(a: Mapping[object, dict], b: Mapping[object, dict]) -> dict:
    """``b`` minus ``a`` for a measurement with one number per seed (a probe's top-1, a CKA):
    each maps seed -> metric row (``value``, optionally ``ci_low``/``ci_high``).

    With two or more seeds: the mean of the per-seed differences and its Student-t 95%
    interval. With one seed there is no interval (``ci_low``/``ci_high`` None); ``apart``
    says whether the two rows' own 95% intervals do not overlap (None when a row has none).
    Non-overlap is a conservative test (it implies a significant difference, not the
    reverse), and it speaks of these two trained models only, not of another seed.
    """
    seeds = _common_seeds(a, b)
    differences = [b[s]["value"] - a[s]["value"] for s in seeds]
    summary = seed_summary(differences)
    row = {
        "diff": summary["mean"],
        "ci_low": summary["ci_low"],
        "ci_high": summary["ci_high"],
        "p_value": _t_test_p_value(differences),
        "n_seeds": len(seeds),
        "apart": None,
    }
    if len(seeds) == 1:
        ra, rb = a[seeds[0]], b[seeds[0]]
        if all(r.get(k) is not None for r in (ra, rb) for k in ("ci_low", "ci_high")):
            row["apart"] = rb["ci_low"] > ra["ci_high"] or rb["ci_high"] < ra["ci_low"]
    return row


def _t_test_p_value(differences: Sequence[float]) -> float | None:
    """Student's one-sample t-test of the per-seed differences against zero; None with fewer
    than two seeds, or when they do not vary (no spread to test against)."""
    if len(differences) < 2 or np.ptp(differences) == 0:
        return None
    return float(scipy_stats.ttest_1samp(differences, 0.0).pvalue)


def minimum_detectable_effect(
    diff_row: Mapping, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """The smallest true difference the claim's test would find with ``power`` at the
    two-sided level ``alpha``: (z(1 - alpha/2) + z(power)) x the standard error read off its
    95% interval (width / 2 x 1.96, a normal approximation). None without an interval, or
    with one of no width (two models that answered every question alike: no spread to read
    a standard error from, not a test that detects everything)."""
    low, high = diff_row.get("ci_low"), diff_row.get("ci_high")
    if low is None or high is None or np.isnan(low) or np.isnan(high) or high == low:
        return None
    error = (high - low) / (2 * scipy_stats.norm.ppf(0.975))
    return float((scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)) * error)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the given order. Every entry counts in the
    family (a claim without a p-value still is one of its hypotheses) and keeps None, which
    statsmodels' ``multipletests`` (not a dependency here) does not allow."""
    family = len(p_values)
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * family
    running = 0.0
    for rank, (p, index) in enumerate(ranked):
        running = max(running, min(1.0, (family - rank) * p))
        adjusted[index] = running
    return adjusted


def adjusted_verdict(diff_row: Mapping, p_adjusted: float | None, alpha: float = 0.05) -> str:
    """A primary claim's verdict from its multiplicity-adjusted p-value: "holds" or
    "reversed" (by the sign of the difference) under ``alpha``, else not significant;
    without a p-value, the interval's verdict (:func:`verdict`)."""
    if p_adjusted is None:
        return verdict(diff_row)
    if p_adjusted >= alpha:
        return NOT_SIGNIFICANT
    return HOLDS if diff_row["diff"] > 0 else REVERSED


def verdict(diff_row: Mapping, expected_sign: int = +1) -> str:
    """A claim's plain-language verdict from a difference row and the sign the claim expects.

    "holds": the 95% interval excludes 0 on the expected side; "reversed": it excludes 0 on
    the other side; "not significant at this scale": it contains 0; "no interval (one
    seed)": there is none. A one-seed row whose two own intervals are apart (``apart``
    from :func:`paired_value_difference`) gets "holds"/"reversed" with " (one seed,
    intervals apart)" appended.
    """
    low, high = diff_row.get("ci_low"), diff_row.get("ci_high")
    if low is None or high is None or np.isnan(low) or np.isnan(high):
        if not diff_row.get("apart"):
            return NO_INTERVAL
        low = high = diff_row["diff"]
        suffix = APART
    else:
        suffix = ""
    sign = 1 if expected_sign > 0 else -1
    if sign * low > 0 and sign * high > 0:
        return HOLDS + suffix
    if sign * low < 0 and sign * high < 0:
        return REVERSED + suffix
    return NOT_SIGNIFICANT
