"""PIVOT's matched subset: the same N records, in the same order, in the SFT and DPO files;
the walk is seeded, excludes bad rows and counts them in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pivotlab.data import DataError, Source, Validator, load, write_subset
from tests.data.conftest import mmpr, png, write_lines


@pytest.fixture
def preferences(tmp_path: Path) -> tuple[Path, Path]:
    """30 rows: 24 good ones over 6 images, then a multi-image row, a missing image, a
    tie, and three more good ones."""
    root = tmp_path / "images"
    for i in range(6):
        png(root / f"{i}.png", (40 * i, 0, 0))
    rows = [mmpr(f"{i % 6}.png", id=f"g{i}", chosen=f"c{i}", category="k") for i in range(24)]
    rows += [
        mmpr(["0.png", "1.png"], id="multi"),
        mmpr("gone.png", id="gone"),
        mmpr("0.png", id="tie", chosen="same", rejected="same"),
    ]
    rows += [mmpr("1.png", id=f"h{i}", chosen=f"h{i}") for i in range(3)]
    return write_lines(tmp_path / "mmpr.jsonl", rows), root


def _ids(path: Path) -> list[str]:
    text = path.read_text()
    rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
    return [r["id"] for r in rows]


def test_sft_and_dpo_files_hold_the_same_records_in_the_same_order(
    preferences: tuple[Path, Path], tmp_path: Path
) -> None:
    data, root = preferences
    sft, dpo, manifest = tmp_path / "sft.json", tmp_path / "dpo.jsonl", tmp_path / "m.json"
    written = write_subset(Source("mmpr", data, root), 20, 777, Validator(root), sft, dpo, manifest)
    assert _ids(sft) == _ids(dpo) and len(_ids(sft)) == 20
    # The walk order is numpy's seeded permutation of the rows; the kept ids are the first
    # 20 valid ones along it.
    all_ids = [f"g{i}" for i in range(24)] + ["multi", "gone", "tie"] + [f"h{i}" for i in range(3)]
    order = [all_ids[i] for i in np.random.default_rng(777).permutation(len(all_ids))]
    bad = {"multi", "gone", "tie"}
    assert _ids(sft) == [i for i in order if i not in bad][:20]
    visited = order.index(_ids(sft)[-1]) + 1
    assert written["visited"] == visited and written["rows"] == 30
    assert sum(written["excluded"].values()) == visited - 20
    excluded = [json.loads(x) for x in (tmp_path / "m.excluded.jsonl").read_text().splitlines()]
    assert {r["id"] for r in excluded} == bad & set(order[:visited])
    assert json.loads(manifest.read_text()) == written


def test_both_files_load_back_in_their_formats(
    preferences: tuple[Path, Path], tmp_path: Path
) -> None:
    data, root = preferences
    sft, dpo = tmp_path / "sft.json", tmp_path / "dpo.jsonl"
    write_subset(Source("mmpr", data, root), 5, 1, Validator(root), sft, dpo, tmp_path / "m.json")
    conversations = load(Source("llava", sft, root)).records
    pairs = load(Source("mmpr", dpo, root)).records
    assert [(c.id, c.image, c.prompt, c.chosen) for c in conversations] == [
        (p.id, p.image, p.prompt, p.chosen) for p in pairs
    ]
    source = {r.id: r for r in load(Source("mmpr", data, root), "skip").records}
    assert all(source[p.id].rejected == p.rejected for p in pairs)
    assert sft.read_text().count("\n") == 5 + 2  # one row per line inside [ ... ]


def test_another_seed_draws_another_subset_and_too_few_rows_fail(
    preferences: tuple[Path, Path], tmp_path: Path
) -> None:
    data, root = preferences
    source, validator = Source("mmpr", data, root), Validator(root)
    paths = [tmp_path / "a.json", tmp_path / "b.jsonl", tmp_path / "m.json"]
    write_subset(source, 10, 0, validator, *paths)
    first = _ids(paths[0])
    write_subset(source, 10, 1, validator, *paths)
    assert _ids(paths[0]) != first
    with pytest.raises(DataError, match="only 27 of 30 rows pass the checks; asked for 28"):
        write_subset(source, 28, 0, validator, *paths)
