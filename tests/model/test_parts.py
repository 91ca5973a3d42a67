"""Parts: freezing and per-part learning rates reach the optimizer; silent freezing is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pivotlab.model import (
    PartsError,
    check_trainable,
    format_parts_table,
    load,
    parameter_groups,
    parts_table,
    relative_change,
    set_trainable,
    trainable_parts,
)

from .conftest import chat


def test_freezing_and_learning_rates_reach_the_optimizer(tiny_model_dir: Path, images) -> None:
    model, processor = load(tiny_model_dir)
    set_trainable(model, ["vision", "projector", "lm"])
    rates = {"vision": 2e-6, "projector": 1e-5, "lm": 1e-5}
    optimizer = torch.optim.AdamW(parameter_groups(model, rates))
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == rates
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}

    set_trainable(model, ["projector"])
    assert trainable_parts(model) == ["projector"]
    optimizer = torch.optim.AdamW(parameter_groups(model, {"projector": 1e-3}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = chat(processor, images)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {
        k.split(".")[1] if k.startswith("model.") else k
        for k in after
        if not torch.equal(after[k], before[k])
    }
    assert changed == {"multi_modal_projector"}


def test_part_meant_to_train_but_frozen_is_an_error(tiny_model_dir: Path) -> None:
    model, _ = load(tiny_model_dir)
    set_trainable(model, ["projector", "lm"])
    with pytest.raises(PartsError, match="vision should train but have no trainable parameter"):
        check_trainable(model, ["vision", "projector"])
    with pytest.raises(PartsError, match="'vision' is trainable but has no learning rate"):
        set_trainable(model, ["vision"])
        parameter_groups(model, {"lm": 1e-5})
    with pytest.raises(PartsError, match="unknown part 'eyes'"):
        set_trainable(model, ["eyes"])


def test_parts_table_counts_every_parameter_once(tiny_model_dir: Path) -> None:
    model, _ = load(tiny_model_dir)
    set_trainable(model, ["vision", "projector"])
    rows = parts_table(model, {"vision": 2e-6, "projector": 1e-3})
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(r.parameters for r in rows) == sum(unique.values())
    by_part = {r.part: r for r in rows}
    assert by_part["lm"].trainable == 0 and by_part["lm"].learning_rate is None
    assert by_part["vision"].trainable == by_part["vision"].parameters
    text = format_parts_table(rows)
    assert "2.00e-06" in text and text.splitlines()[-1].startswith("total")


def test_relative_change_measures_each_part_on_its_own_scale(tiny_model_dir: Path) -> None:
    before, _ = load(tiny_model_dir)
    after, _ = load(tiny_model_dir)
    assert relative_change(before, after) == {"vision": 0.0, "projector": 0.0, "lm": 0.0}
    with torch.no_grad():
        for parameter in after.model.multi_modal_projector.parameters():
            parameter.mul_(1.1)  # every projector weight 10% larger: moved by exactly 0.1
    moved = relative_change(before, after)
    assert moved["projector"] == pytest.approx(0.1)
    assert moved["vision"] == moved["lm"] == 0.0
