"""The held-out measures' arguments and records; the measures themselves are checked on
real runs in ``test_stages.py`` (the run folder's held-out rows, resume)."""

from __future__ import annotations

import pytest

from pivotlab.train.arguments import process_state
from pivotlab.train.heldout import (
    EVALUATION_FOLDER,
    heldout_arguments,
    heldout_measures,
    heldout_records,
    measured,
)
from pivotlab.train.stage_data import resolve_split
from tests.train.conftest import tiny_config


def test_a_trainer_setting_reaches_the_heldout_evaluation(preset, tmp_path) -> None:
    plain = tiny_config("post-dpo", preset)
    workers = tiny_config("post-dpo", preset, "trainer.dataloader_num_workers=1")
    process_state(plain)
    assert heldout_arguments(plain, tmp_path).dataloader_num_workers == 0
    assert heldout_arguments(workers, tmp_path).dataloader_num_workers == 1


def test_the_heldout_measure_is_plain_dpo_on_every_pair(preset, tmp_path) -> None:
    cfg = tiny_config("post-mpo", preset, "post.beta=0.3")
    process_state(cfg)
    args = heldout_arguments(cfg, tmp_path)
    assert (args.beta, args.loss_type, args.loss_weights) == (0.3, ["sigmoid"], None)
    assert not args.dataloader_drop_last  # training drops a last partial batch; this does not
    assert args.output_dir == str(tmp_path / EVALUATION_FOLDER)
    assert args.per_device_eval_batch_size == cfg.train.per_device_batch_size


@pytest.mark.parametrize(
    ("config", "setting"),
    [("post-grpo", "trainer.num_iterations=1"), ("post-sft", "trainer.packing=true")],
)
def test_another_objectives_settings_stay_with_its_training(
    preset, tmp_path, config: str, setting: str
) -> None:
    cfg = tiny_config(config, preset, setting)
    process_state(cfg)
    key = setting.removeprefix("trainer.").split("=")[0]
    assert not hasattr(heldout_arguments(cfg, tmp_path), key)


def test_every_run_scores_the_same_heldout_records(preset, splits) -> None:
    dpo, sft = tiny_config("post-dpo", preset), tiny_config("post-sft", preset, "seed=3")
    split = resolve_split(dpo.data.eval_split)
    assert split.path == splits[1] and resolve_split(sft.data.eval_split) == split
    one, other = heldout_records(dpo, split), heldout_records(sft, split)
    assert len(one) == 8
    assert [r["id"] for r in one] == [r["id"] for r in other]


def test_measures_drop_prefixes_and_timing() -> None:
    metrics = {"heldout_loss": 0.5, "heldout_runtime": 2.0, "eval_rewards/margins": 0.1}
    assert measured(metrics) == {"loss": 0.5, "rewards/margins": 0.1}


def test_no_eval_split_no_heldout_measures(preset) -> None:
    cfg = tiny_config("post-dpo", preset, "data.eval=null")
    assert cfg.data.eval_split is None
    measures = heldout_measures(cfg, None, None, None, None, lambda: pytest.fail("loaded a model"))
    assert measures == {}
