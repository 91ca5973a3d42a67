"""The CLI contract of `pivotlab world generate`: files, fields, manifest, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from pivotlab.cli import main
from pivotlab.io import read_jsonl
from pivotlab.world import WorldConfig, WorldConfigError, generate
from pivotlab.world.generate import TINY_TASKS

SCENE_FIELDS = {"scene_id", "kind", "size", "objects"}
OBJECT_FIELDS = {"index", "shape", "color", "size", "bbox", "z", "glyph"}
VQA_FIELDS = {
    "id",
    "scene_id",
    "image",
    "category",
    "task",
    "question",
    "answer",
    "choices",
    "pair_id",
    "target_objects",
}
PREFERENCE_FIELDS = {
    "id",
    "vqa_id",
    "scene_id",
    "image",
    "prompt",
    "chosen",
    "rejected",
    "negative_type",
}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_writes_every_file_of_the_contract(small_split: Path) -> None:
    scenes = read_jsonl(small_split / "scenes.jsonl")
    assert len(scenes) == 120
    for scene in scenes:
        assert scene.keys() >= SCENE_FIELDS
        for name in ("images", "masks", "instances"):
            assert (small_split / name / f"{scene['scene_id']}.png").is_file()
        for obj in scene["objects"]:
            assert obj.keys() >= OBJECT_FIELDS
        if scene["kind"] == "chart":
            assert {"label", "value", "bbox"} <= scene["chart"]["bars"][0].keys()
        if scene["kind"] == "text":
            assert scene["text"]["content"]
    vqa = read_jsonl(small_split / "vqa.jsonl")
    assert all(r.keys() >= VQA_FIELDS for r in vqa)
    assert all((small_split / r["image"]).is_file() for r in vqa)
    preferences = read_jsonl(small_split / "preferences.jsonl")
    assert all(r.keys() >= PREFERENCE_FIELDS for r in preferences)
    assert {p["vqa_id"] for p in preferences} == {r["id"] for r in vqa}
    for probe in ("classification", "segmentation", "localisation", "captions"):
        assert read_jsonl(small_split / "probes" / f"{probe}.jsonl"), probe


def test_manifest_counts_and_hashes_match_the_files(small_split: Path) -> None:
    manifest = json.loads((small_split / "manifest.json").read_text())
    assert manifest["config"]["n"] == 120 and manifest["config"]["size"] == 32
    assert "workers" not in manifest["config"]
    assert manifest["counts"]["scenes"] == 120
    vqa = read_jsonl(small_split / "vqa.jsonl")
    assert sum(manifest["counts"]["questions_by_category"].values()) == len(vqa)
    assert sum(manifest["counts"]["questions_by_task"].values()) == len(vqa)
    on_disk = {k for k in _tree(small_split) if k != "manifest.json"}
    assert set(manifest["files"]) == on_disk
    for relative, digest in manifest["files"].items():
        assert hashlib.sha256((small_split / relative).read_bytes()).hexdigest() == digest


def test_same_config_is_byte_identical_for_any_number_of_workers(tmp_path: Path) -> None:
    cfg = WorldConfig(split="val", n=41, seed=7, size=32, probe_n=9)
    generate(cfg, tmp_path / "one", workers=1)
    generate(cfg, tmp_path / "two", workers=2)
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert one.keys() == two.keys()
    assert all(one[k] == two[k] for k in one)


def test_rationale_fraction_changes_the_pairs_text_only(tmp_path: Path) -> None:
    """The studies drop the rationale from Stage 2's pairs; the split must keep the same
    scenes, questions and pair ids, and with none asked for no chosen answer carries one."""
    generate(WorldConfig(n=12, size=32, probe_n=0), tmp_path / "half")
    argv = ["--n", "12", "--size", "32", "--probe-n", "0", "--rationale-fraction", "0"]
    assert main(["world", "generate", "--out", str(tmp_path / "none"), *argv]) == 0
    half, none = tmp_path / "half", tmp_path / "none"
    for file in ("scenes.jsonl", "vqa.jsonl"):
        assert (half / file).read_bytes() == (none / file).read_bytes()
    with_rationale = read_jsonl(half / "preferences.jsonl")
    without = read_jsonl(none / "preferences.jsonl")
    assert [p["id"] for p in with_rationale] == [p["id"] for p in without]
    answers = {q["id"]: q["answer"] for q in read_jsonl(none / "vqa.jsonl")}
    assert all(p["chosen"] == answers[p["vqa_id"]] for p in without)
    assert any(p["chosen"] != answers[p["vqa_id"]] for p in with_rationale)


def test_seed_changes_the_world(tmp_path: Path) -> None:
    generate(WorldConfig(n=6, seed=1, size=32, probe_n=0), tmp_path / "a")
    generate(WorldConfig(n=6, seed=2, size=32, probe_n=0), tmp_path / "b")
    assert (tmp_path / "a/scenes.jsonl").read_bytes() != (tmp_path / "b/scenes.jsonl").read_bytes()


def test_splits_come_from_disjoint_streams(tmp_path: Path) -> None:
    images = {}
    for split in ("train", "val", "test"):
        generate(WorldConfig(split=split, n=30, seed=0, size=32, probe_n=0), tmp_path / split)
        images[split] = {p.read_bytes() for p in (tmp_path / split / "images").iterdir()}
    assert not images["train"] & images["val"]
    assert not images["train"] & images["test"]
    assert not images["val"] & images["test"]


def test_holdout_holds_exactly_the_combinations_train_never_shows(tmp_path: Path) -> None:
    generate(WorldConfig(split="holdout", n=40, seed=0, size=32, probe_n=20), tmp_path / "holdout")
    generate(WorldConfig(split="train", n=200, seed=0, size=32, probe_n=100), tmp_path / "train")
    heldout = set(json.loads((tmp_path / "holdout/manifest.json").read_text())["heldout_combos"])
    for scene in read_jsonl(tmp_path / "holdout/scenes.jsonl"):
        assert scene["kind"] == "objects"
        assert scene["heldout_combos"], scene["scene_id"]
    for scene in read_jsonl(tmp_path / "train/scenes.jsonl"):
        assert not {f"{o['color']} {o['shape']}" for o in scene["objects"]} & heldout
    assert all(
        r["shape_color"] not in heldout
        for r in read_jsonl(tmp_path / "train/probes/classification.jsonl")
    )
    assert all(
        r["shape_color"] in heldout
        for r in read_jsonl(tmp_path / "holdout/probes/classification.jsonl")
    )


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--n", "-5"], "n must be at least 1"),
        (["--size", "8"], "size must be at least 16"),
        (["--split", "dev"], "unknown split 'dev'"),
        (["--tasks", "count,telepathy"], "unknown task 'telepathy'"),
        (["--n", "many"], "invalid int value"),
        (["--rationale-fraction", "1.5"], "rationale_fraction must be between 0 and 1"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    status = main(["world", "generate", "--out", str(tmp_path / "w"), *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and reason in err
    assert not (tmp_path / "w").exists()


def test_cli_writes_a_split_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "world",
            "generate",
            "--out",
            str(tmp_path / "w"),
            "--n",
            "4",
            "--size",
            "32",
            "--tasks",
            "count,relation",
            "--probe-n",
            "2",
        ]
    )
    assert status == 0
    assert "wrote 4 scenes" in capsys.readouterr().out
    assert {r["task"] for r in read_jsonl(tmp_path / "w/vqa.jsonl")} <= {"count", "relation"}


def test_refuses_to_replace_what_it_did_not_write(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(WorldConfigError, match="not empty"):
        generate(WorldConfig(n=2, size=32, probe_n=0), precious)
    with pytest.raises(WorldConfigError, match="no world manifest"):
        generate(WorldConfig(n=2, size=32, probe_n=0), precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_previous_split(tmp_path: Path) -> None:
    generate(WorldConfig(n=2, seed=0, size=32, probe_n=0), tmp_path / "w")
    generate(WorldConfig(n=3, seed=0, size=32, probe_n=0), tmp_path / "w", overwrite=True)
    assert len(read_jsonl(tmp_path / "w/scenes.jsonl")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no staging folder left behind


def test_the_tiny_preset_is_objects_in_quadrants_with_open_one_word_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["world", "generate", "--preset", "tiny", "--out", str(tmp_path / "w"), "--n", "30"]
    assert main([*argv, "--size", "32", "--probe-n", "0"]) == 0
    capsys.readouterr()
    scenes = read_jsonl(tmp_path / "w/scenes.jsonl")
    assert {s["kind"] for s in scenes} == {"objects"}
    assert max(len(s["objects"]) for s in scenes) <= 4
    questions = read_jsonl(tmp_path / "w/vqa.jsonl")
    assert {q["format"] for q in questions} == {"open"}
    assert {q["category"] for q in questions} == {"general", "vision_centric"}
    assert {q["task"] for q in questions} <= set(TINY_TASKS)
    assert all(len(q["answer"].split()) == 1 for q in questions)
    manifest = json.loads((tmp_path / "w/manifest.json").read_text())
    assert manifest["config"]["grid"] == 2 and manifest["config"]["mc_fraction"] == 0.0


def test_a_field_given_beside_a_preset_overrides_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = WorldConfig.from_preset("tiny", grid=3, n=5)
    assert (cfg.grid, cfg.n, cfg.mc_fraction) == (3, 5, 0.0)
    assert WorldConfig.from_preset("default") == WorldConfig()
    with pytest.raises(WorldConfigError, match="unknown world preset 'small'; presets are"):
        WorldConfig.from_preset("small")
    argv = ["world", "generate", "--preset", "small", "--out", str(tmp_path / "w"), "--n", "2"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "pivotlab: error: unknown world preset 'small'; presets are default, tiny, tiny16"
    )
    assert not (tmp_path / "w").exists()


def test_the_layout_option_reaches_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w"
    argv = ["world", "generate", "--preset", "tiny", "--grid", "4", "--layout", "blocks"]
    assert main([*argv, "--out", str(out), "--n", "4", "--probe-n", "0"]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["layout"] == "blocks"
    argv = ["world", "generate", "--layout", "blocks", "--grid", "3", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "the blocks layout needs a grid of at least 4, got 3" in capsys.readouterr().err


def test_config_validation_names_the_field() -> None:
    with pytest.raises(WorldConfigError, match="mc_fraction"):
        WorldConfig(mc_fraction=1.5)
    with pytest.raises(WorldConfigError, match="grid"):
        WorldConfig(grid=1)


def test_show_writes_a_contact_sheet(small_split: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    assert main(["world", "show", str(small_split), "--out", str(sheet), "--n", "3"]) == 0
    with Image.open(sheet) as image:
        assert image.width == 3 * 32 * 3 + 8 and image.height > 3 * 32 * 3


def test_audit_prints_every_category(small_split: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["world", "audit", "--train", str(small_split), "--test", str(small_split)]) == 0
    out = capsys.readouterr().out
    for category in ("general", "knowledge", "ocr_chart", "vision_centric"):
        assert f"category:{category}" in out


def test_show_and_audit_reject_folders_that_are_not_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["world", "show", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["world", "audit", "--train", str(tmp_path), "--test", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("not a world split") == 2
