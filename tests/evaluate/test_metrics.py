"""Metric rows: intervals, pair accuracy from pair_id only, the macro average."""

from __future__ import annotations

import pytest

from pivotlab.evaluate import accuracy_rows, bootstrap_interval, pair_outcomes

BASE = {"run": "r", "stage": "evaluate", "seed": 0, "split": "test"}


def _p(
    pid: str,
    category: str,
    task: str,
    correct: bool,
    pair_id: str | None = None,
    question: str = "q",
) -> dict:
    return {"id": pid, "category": category, "task": task, "correct": correct, "pair_id": pair_id,
            "question": question, "chance": 0.5}  # fmt: skip


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n() -> None:
    small = bootstrap_interval([1, 0] * 10)
    large = bootstrap_interval([1, 0] * 500)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3
    assert bootstrap_interval([1, 1, 1]) == (1.0, 1.0)


def test_pairs_come_from_pair_id_never_from_question_text() -> None:
    predictions = [
        # Same question text, different pairs: must not be grouped together.
        _p("1", "vision_centric", "mmvp", True, "p1", question="Is the star red?"),
        _p("2", "vision_centric", "mmvp", True, "p1", question="Is the star red?"),
        _p("3", "vision_centric", "mmvp", True, "p2", question="Is the star red?"),
        _p("4", "vision_centric", "mmvp", False, "p2", question="Is the star red?"),
        # Different question text, one pair.
        _p("5", "vision_centric", "mmvp", True, "p3", question="Is the star red?"),
        _p("6", "vision_centric", "mmvp", True, "p3", question="Is the circle above the square?"),
        # A pair cut in half by --limit.
        _p("7", "vision_centric", "mmvp", True, "p4"),
    ]
    by_task, incomplete = pair_outcomes(predictions)
    assert by_task == {"mmvp": [1.0, 0.0, 1.0]} and incomplete == 1
    row = next(r for r in accuracy_rows(predictions, BASE) if r["metric"] == "pair_accuracy")
    assert (
        row["value"] == pytest.approx(2 / 3)
        and row["n"] == 3
        and row["incomplete_pairs_left_out"] == 1
    )


def test_macro_average_weights_categories_equally() -> None:
    predictions = [_p(str(i), "general", "color", True) for i in range(90)]
    predictions += [_p(f"k{i}", "knowledge", "gem", False) for i in range(10)]
    rows = accuracy_rows(predictions, BASE)
    average = next(r for r in rows if r["metric"] == "average")
    assert average["value"] == pytest.approx(0.5)  # not 0.9, the item-weighted mean
    assert average["categories"] == ["general", "knowledge"]
    task_rows = [r for r in rows if r["metric"] == "accuracy" and "task" in r]
    assert {(r["task"], r["value"]) for r in task_rows} == {("color", 1.0), ("gem", 0.0)}
    assert all(r["chance"] == 0.5 for r in task_rows)
