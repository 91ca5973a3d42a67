"""``train.speed`` chooses the SFT objectives' levers from the stage and the device."""

from __future__ import annotations

import pytest

from pivotlab.train import ConfigError
from pivotlab.train.speed import Levers, choose_levers, uses_sft
from tests.train.conftest import tiny_config

EVERY = Levers(prepared=True, packed=True, supervised_head=True, patch_matmul=True)


@pytest.mark.parametrize(
    ("name", "speed", "on_cpu", "expected"),
    [
        ("full", "auto", True, EVERY),
        ("post-sft", "auto", True, EVERY),
        ("full", "fast", False, EVERY),
        ("full", "auto", False, Levers(off=("auto on a GPU",))),
        ("full", "stock", True, Levers(off=("train.speed is stock",))),
    ],
)
def test_levers_by_speed_and_device(preset, name, speed, on_cpu, expected) -> None:
    cfg = tiny_config(name, preset, f"train.speed={speed}")
    assert choose_levers(cfg, on_cpu) == expected


def test_the_align_stage_is_an_sft_stage(preset) -> None:
    assert choose_levers(tiny_config("full", preset, "stage=align"), on_cpu=True) == EVERY


def test_viral_is_never_packed(preset) -> None:
    levers = choose_levers(tiny_config("full-viral", preset), on_cpu=True)
    assert levers.prepared and levers.supervised_head and not levers.packed
    assert "VIRAL" in levers.off[0]


@pytest.mark.parametrize("name", ["post-dpo", "post-ipo", "post-mpo", "post-grpo"])
def test_the_preference_objectives_have_their_own_switches(preset, name) -> None:
    cfg = tiny_config(name, preset)
    assert not uses_sft(cfg)
    assert not choose_levers(cfg, on_cpu=True).prepared


def test_an_unknown_speed_is_refused(preset) -> None:
    with pytest.raises(ConfigError, match=r"train\.speed"):
        tiny_config("full", preset, "train.speed=turbo")
