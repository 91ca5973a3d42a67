"""The rate sweep: the choice on val, its edge, the link later steps read, its config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.io import write_jsonl_atomic
from pivotlab.study.config import StudyError, load_study
from pivotlab.study.sweep import at_edge, choose_rate, link_chosen, rate_label, val_accuracy


def test_the_best_val_score_wins_and_a_tie_goes_to_the_lower_rate() -> None:
    assert choose_rate({1e-5: 0.61, 1e-4: 0.66, 1e-3: 0.52}) == 1e-4
    assert choose_rate({3e-5: 0.66, 1e-5: 0.66, 1e-4: 0.6}) == 1e-5


def test_a_rate_at_either_end_of_the_grid_is_an_edge() -> None:
    grid = [1e-5, 3e-5, 1e-4]
    assert at_edge(1e-5, grid) and at_edge(1e-4, grid) and not at_edge(3e-5, grid)
    assert not at_edge(1e-4, [1e-4])  # one rate is a setting, not a sweep


def test_labels_keep_rates_apart() -> None:
    assert rate_label(3e-5) == "lr-3e-05"
    assert rate_label(2.5e-5) != rate_label(2e-5)


def test_the_link_points_at_the_chosen_model_and_moves_with_the_choice(tmp_path: Path) -> None:
    for rate in (1e-5, 1e-4):
        (tmp_path / rate_label(rate) / "final").mkdir(parents=True)
        (tmp_path / rate_label(rate) / "final" / "marker").write_text(str(rate))
    link_chosen(tmp_path, 1e-5)
    assert (tmp_path / "final" / "marker").read_text() == "1e-05"
    link_chosen(tmp_path, 1e-4)
    assert (tmp_path / "final" / "marker").read_text() == "0.0001"
    assert not Path.readlink(tmp_path / "final").is_absolute()  # the run folder can move


def test_a_real_model_folder_is_never_replaced_by_a_link(tmp_path: Path) -> None:
    (tmp_path / "final").mkdir()
    with pytest.raises(StudyError, match="is a folder, not a sweep's link"):
        link_chosen(tmp_path, 1e-4)


def test_val_accuracy_reads_the_category_row_or_names_the_file(tmp_path: Path) -> None:
    rows = [
        {"metric": "accuracy", "category": "vision_centric", "task": "count", "value": 0.1},
        {"metric": "accuracy", "category": "vision_centric", "value": 0.6},
    ]
    write_jsonl_atomic(tmp_path / "metrics.jsonl", rows)
    assert val_accuracy(tmp_path, "vision_centric")["value"] == 0.6
    with pytest.raises(StudyError, match=r"metrics\.jsonl: no general accuracy"):
        val_accuracy(tmp_path, "general")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("post.sweep.rates=[]", r"post\.sweep\.rates must list at least one rate"),
        ("post.sweep.rates=[1.0e-4, 1.0e-4]", r"must be distinct and positive"),
        ("post.sweep.rates=[-1.0e-4]", r"must be distinct and positive"),
        ("post.sweep.arms=[nope]", r"post\.sweep\.arms names 'nope'"),
        ("world.val={}", r"chooses rates on the val split: set world\.val"),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_runs(override: str, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        load_study("quick", [override])
