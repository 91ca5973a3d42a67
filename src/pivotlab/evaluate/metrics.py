"""Accuracy by task and category with bootstrap intervals, pair accuracy, the macro average.

Rows follow pivotlab's metrics contract: one JSON object per line with ``run``, ``stage``,
``seed``, ``metric``, ``value`` and, where they apply, ``category``, ``task``, ``split``,
``ci_low``, ``ci_high``, plus ``n`` and the mean ``chance`` of the items counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def bootstrap_interval(
    outcomes: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile 95% interval of the mean of ``outcomes`` (items resampled with replacement)."""
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _macro_interval(
    by_category: dict[str, list[float]], resamples: int, seed: int
) -> tuple[float, float]:
    """Interval of the macro average, each category resampled on its own (stratified)."""
    rng = np.random.default_rng(seed)
    totals = np.zeros(resamples)
    for outcomes in by_category.values():
        values = np.asarray(outcomes, dtype=np.float64)
        totals += values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(totals / len(by_category), [2.5, 97.5])
    return float(low), float(high)


def pair_outcomes(predictions: list[dict]) -> tuple[dict[str, list[float]], int]:
    """Per task, 1.0 for each pair whose members are all correct; and how many pairs were
    left out because not all of their members were evaluated (``--limit``). Pairs come
    from ``pair_id`` only, never from question text."""
    members: dict[str, list[dict]] = defaultdict(list)
    for prediction in predictions:
        if prediction.get("pair_id"):
            members[prediction["pair_id"]].append(prediction)
    by_task: dict[str, list[float]] = defaultdict(list)
    incomplete = 0
    for group in members.values():
        if len(group) < 2:
            incomplete += 1
            continue
        by_task[group[0]["task"]].append(float(all(p["correct"] for p in group)))
    return by_task, incomplete


def accuracy_rows(predictions: list[dict], base: dict) -> list[dict]:
    """Metric rows for scored predictions; ``base`` holds ``run``, ``stage``, ``seed``, ..."""
    rows = []

    def row(metric: str, outcomes: list[float], chances: list[float] | None = None, **keys) -> dict:
        low, high = bootstrap_interval(outcomes)
        record = {**base, "metric": metric, **keys, "value": float(np.mean(outcomes))}
        record.update(ci_low=low, ci_high=high, n=len(outcomes))
        if chances:
            record["chance"] = float(np.mean(chances))
        return record

    by_task: dict[tuple[str, str], list[dict]] = defaultdict(list)
    by_category: dict[str, list[dict]] = defaultdict(list)
    for prediction in predictions:
        by_task[prediction["category"], prediction["task"]].append(prediction)
        by_category[prediction["category"]].append(prediction)
    for (category, task), group in sorted(by_task.items()):
        outcomes = [float(p["correct"]) for p in group]
        rows.append(
            row(
                "accuracy",
                outcomes,
                [p.get("chance", 0.0) for p in group],
                category=category,
                task=task,
            )
        )
    category_outcomes = {}
    for category, group in sorted(by_category.items()):
        outcomes = [float(p["correct"]) for p in group]
        category_outcomes[category] = outcomes
        rows.append(
            row("accuracy", outcomes, [p.get("chance", 0.0) for p in group], category=category)
        )
    pairs, incomplete = pair_outcomes(predictions)
    for task, outcomes in sorted(pairs.items()):
        category = next(p["category"] for p in predictions if p["task"] == task)
        pair_row = row("pair_accuracy", outcomes, category=category, task=task)
        pair_row["incomplete_pairs_left_out"] = incomplete
        rows.append(pair_row)
    if category_outcomes:
        low, high = _macro_interval(category_outcomes, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        macro = float(np.mean([np.mean(v) for v in category_outcomes.values()]))
        rows.append(
            {
                **base,
                "metric": "average",
                "value": macro,
                "ci_low": low,
                "ci_high": high,
                "n": len(predictions),
                "categories": sorted(category_outcomes),
            }
        )
    return rows
