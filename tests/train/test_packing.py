"""Rows prepared once, trimmed and packed give TRL's rows, the padded batch's loss and
gradients, and a run that trains like TRL's stock path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pivotlab.io import read_jsonl
from pivotlab.model.parts import set_trainable
from pivotlab.train import run_stage
from pivotlab.train.arguments import process_state, trl_arguments
from pivotlab.train.packing import IGNORED, SEQUENCE_TOKENS, PreparedCollator, image_paths
from pivotlab.train.stage_data import SAMPLE_INDEX, resolve_split, training_records, trl_dataset
from pivotlab.train.stages import initial_model, stage_trainer
from tests.train.conftest import (
    COSINE,
    assert_relative,
    assert_same_curves,
    part_gradients,
    tiny_config,
)

ROWS = 12
# Each stage's SFT rows: questions as conversations (full), a prompt and a completion
# (the align stage's captions, the sft objective's preference records).
STAGES = {"full": ("full", ()), "align": ("full", ("stage=align",)), "post-sft": ("post-sft", ())}


def built(name: str, preset: list[str], out: Path, *overrides: str):
    """The stage trainer ``run_stage`` would build for ``configs/tiny/<name>.yaml``."""
    cfg = tiny_config(name, preset, *overrides)
    out.mkdir(parents=True, exist_ok=True)
    process_state(cfg)
    split = resolve_split(cfg.data.train_split)
    model, processor = initial_model(cfg)
    set_trainable(model, cfg.parts)
    records = training_records(cfg, split, model, processor, out)
    data = trl_dataset(records, split.path, stage=cfg.stage, objective=cfg.post.objective,
                       eos=processor.tokenizer.eos_token)  # fmt: skip
    return stage_trainer(cfg, model, processor, trl_arguments(cfg, out, 3, 1), data, None, out)


def rows(trainer, count: int = ROWS) -> list[dict]:
    """The trainer's first rows as its dataloader hands them to the collator."""
    return [dict(trainer.train_dataset[i]) for i in range(count)]


def without_index(examples: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != SAMPLE_INDEX} for e in examples]


@pytest.fixture(scope="module")
def pair(preset, tmp_path_factory) -> dict:
    """The full stage's trainer on TRL's stock path and on the fast path."""
    root = tmp_path_factory.mktemp("packing")
    return {speed: built("full", preset, root / speed, f"train.speed={speed}")
            for speed in ("stock", "fast")}  # fmt: skip


def test_the_fast_trainer_uses_every_lever_and_the_stock_one_none(pair) -> None:
    fast, stock = pair["fast"].levers, pair["stock"].levers
    assert fast.prepared and fast.packed and fast.supervised_head and fast.patch_matmul
    assert not (stock.prepared or stock.packed or stock.supervised_head or stock.patch_matmul)
    assert isinstance(pair["fast"].data_collator.inner, PreparedCollator)


def test_prepared_rows_are_trls_rows_up_to_their_last_label(pair) -> None:
    trl = pair["stock"].data_collator.inner  # TRL's own collator
    examples = without_index(rows(pair["stock"]))
    expected = trl([dict(e) for e in examples])
    prepared = PreparedCollator(trl, pad_token_id=0, pack=False)
    batch = prepared(without_index(rows(pair["fast"])))
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    lengths = expected["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # ragged rows
    for n in range(len(examples)):
        kept = int(batch["attention_mask"][n].sum())
        ids = expected["input_ids"][n][: lengths[n]]
        labels = expected["labels"][n][: lengths[n]]
        assert torch.equal(batch["input_ids"][n][:kept], ids[:kept])
        assert torch.equal(batch["labels"][n][:kept], labels[:kept])
        assert labels[kept - 1] != IGNORED and (labels[kept:] == IGNORED).all()
    assert (lengths - batch["attention_mask"].sum(1)).sum() > 0  # something was trimmed


def test_a_row_and_an_image_go_through_trls_collator_once(pair) -> None:
    trl = pair["stock"].data_collator.inner
    collator = PreparedCollator(trl, pad_token_id=0)
    examples = without_index(rows(pair["fast"]))
    first = collator([dict(e) for e in examples])
    assert collator.prepared == len(examples)
    again = collator([dict(e) for e in examples])
    for key in first:
        assert torch.equal(first[key], again[key]), key
    collator([dict(e) for e in reversed(examples)])
    assert collator.prepared == len(examples)
    assert len(collator.pixels) == len({e["images"][0]["path"] for e in examples})


def test_a_packed_batch_keeps_every_sequence_apart(pair) -> None:
    examples = without_index(rows(pair["fast"]))
    batch = pair["fast"].data_collator.inner([dict(e) for e in examples])
    padded = pair["stock"].data_collator.inner(without_index(rows(pair["stock"])))
    assert "attention_mask" not in batch
    assert int(batch[SEQUENCE_TOKENS]) == int(padded["attention_mask"].sum())
    image_token = pair["fast"].model.config.image_token_id
    images = int((batch["input_ids"] == image_token).sum())
    per_image = int((padded["input_ids"] == image_token).sum()) // len(examples)
    assert images == batch["pixel_values"].shape[0] * per_image
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == IGNORED).all()  # no sequence predicts across a start
    supervised = (batch["labels"] != IGNORED).sum()
    assert supervised == (padded["labels"][:, 1:] != IGNORED).sum()
    assert batch["input_ids"].numel() < padded["input_ids"].numel()


@pytest.mark.parametrize("stage", list(STAGES))
def test_packed_batches_give_the_padded_loss_and_gradients(stage, preset, tmp_path) -> None:
    name, overrides = STAGES[stage]
    results = {}
    for speed in ("stock", "fast"):
        trainer = built(name, preset, tmp_path / speed, f"train.speed={speed}", *overrides)
        batch = trainer.data_collator(rows(trainer))
        batch.pop(SAMPLE_INDEX)
        batch.pop(SEQUENCE_TOKENS, None)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results[speed] = loss.detach(), part_gradients(trainer.model)
    assert_relative(results["fast"][0], results["stock"][0])
    for part, gradient in results["stock"][1].items():
        cosine = F.cosine_similarity(results["fast"][1][part], gradient, dim=0).item()
        assert cosine >= COSINE, f"{part}: cosine {cosine}"


@pytest.mark.trains
def test_a_fast_run_trains_like_a_stock_run(preset, tmp_path) -> None:
    runs = {}
    for speed in ("stock", "fast"):
        cfg = tiny_config("full", preset, f"train.speed={speed}", "train.steps=4")
        runs[speed] = run_stage(cfg, tmp_path / speed)
    stock, fast = (runs[s].out for s in ("stock", "fast"))
    assert_same_curves(fast, stock, ("loss", "grad_norm", "mean_token_accuracy", "num_tokens"))
    assert read_jsonl(fast / "samples.jsonl") == read_jsonl(stock / "samples.jsonl")
    assert runs["fast"].summary["tokens_seen"] == runs["stock"].summary["tokens_seen"]
    assert runs["fast"].summary["speed"]["packed"] and not runs["stock"].summary["speed"]["packed"]
    held = runs["stock"].summary["heldout"]
    assert runs["fast"].summary["heldout"]["loss"] == pytest.approx(held["loss"], rel=1e-4)


def test_a_collator_whose_batches_it_cannot_assemble_is_used_as_it_is() -> None:
    def inner(examples):
        return {"input_ids": torch.ones(len(examples), 2, dtype=torch.long),
                "attention_mask": torch.ones(len(examples), 2, dtype=torch.long),
                "labels": torch.ones(len(examples), 2, dtype=torch.long),
                "token_type_ids": torch.zeros(len(examples), 2, dtype=torch.long)}  # fmt: skip

    collator = PreparedCollator(inner, pad_token_id=0)
    batch = collator([{"messages": "a"}, {"messages": "b"}])
    assert "token_type_ids" in batch and collator.passthrough
    assert "token_type_ids" in collator([{"messages": "a"}])


def test_the_dataset_carries_image_paths_not_images(pair, splits) -> None:
    assert Path(pair["fast"].train_dataset[0]["images"][0]["path"]).is_file()
    records = read_jsonl(splits[0] / "vqa.jsonl")[:2]
    image = image_paths(trl_dataset(records, splits[0], stage="full"))[0]["images"][0]
    assert image == {"bytes": None, "path": str(splits[0] / records[0]["image"])}
