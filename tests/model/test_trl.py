"""Built models and world datasets plug into TRL's trainers as they are (the contract the
training stages build on): SFT with an answer-only loss, and DPO."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from pivotlab.world import WorldConfig, generate
from pivotlab.world.hf import preference_dataset, vqa_dataset


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trl") / "train"
    generate(WorldConfig(n=8, size=32, probe_n=0), out)
    return out


COMMON = {"per_device_train_batch_size": 4, "max_steps": 2, "report_to": [], "max_length": None,
          "use_cpu": True, "save_strategy": "no", "logging_steps": 1}  # fmt: skip


def _loaded(folder: Path):
    return LlavaForConditionalGeneration.from_pretrained(folder), AutoProcessor.from_pretrained(
        folder
    )


def test_sft_trainer_with_answer_only_loss_updates_the_vision_tower(
    tiny_model_dir: Path, small_world: Path, tmp_path: Path
) -> None:
    from trl import SFTConfig, SFTTrainer

    model, processor = _loaded(tiny_model_dir)
    before = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    data = vqa_dataset(small_world).select(range(16)).select_columns(["images", "messages"])
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, **COMMON)
    SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor).train()
    after = model.model.vision_tower.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.layers.0.") for k in changed)
    # Feature layer -2: the last block and the final norm never reach the loss (by design).
    assert not any(k.startswith(("encoder.layers.1.", "post_layernorm")) for k in changed)


def test_dpo_trainer_runs_on_world_preferences(
    tiny_model_dir: Path, small_world: Path, tmp_path: Path
) -> None:
    from trl import DPOConfig, DPOTrainer

    model, processor = _loaded(tiny_model_dir)
    data = preference_dataset(small_world).select(range(16))
    data = data.select_columns(["images", "prompt", "chosen", "rejected"])
    args = DPOConfig(output_dir=str(tmp_path), **COMMON)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
