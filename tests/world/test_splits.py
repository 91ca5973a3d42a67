"""Cached world splits: generated once, by a worker per usable core, to the same files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.world import splits
from pivotlab.world.generate import WorldConfig


def test_a_split_is_generated_once_by_a_worker_per_usable_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(splits, "usable_cores", lambda: 12)
    asked: list[int] = []
    generate = splits.generate

    def counting_generate(cfg, out, workers=1):
        asked.append(workers)
        return generate(cfg, out, workers=2)  # two are enough to run the pool here

    monkeypatch.setattr(splits, "generate", counting_generate)
    cfg = WorldConfig(split="val", n=4, seed=3, size=64, probe_n=2)
    first = splits.cached_split(cfg, tmp_path)
    assert splits.cached_split(cfg, tmp_path) == first  # the second call finds it
    assert asked == [8]  # one per core, at most 8
    assert (first / "manifest.json").is_file()


def test_usable_cores_follow_the_affinity_where_the_os_has_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(splits.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(splits.os, "cpu_count", lambda: 64)
    assert splits.usable_cores() == 3  # the cores this process may use, not the machine's
    monkeypatch.delattr(splits.os, "sched_getaffinity")
    assert splits.usable_cores() == 64
    monkeypatch.setattr(splits.os, "cpu_count", lambda: None)
    assert splits.usable_cores() == 1
