"""The zoo's cache: tiny builds load as standard HF checkpoints, are reused, rebuilt on change
and on corruption, and plug into assembly by path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from pivotlab.cli import main
from pivotlab.model import assemble
from pivotlab.zoo import checks as zoo_checks
from pivotlab.zoo import quality, shipping
from pivotlab.zoo.build import build, manifests
from pivotlab.zoo.checks import Check, checks
from pivotlab.zoo.entries import entry_dir, part_key, verify
from pivotlab.zoo.pretraining import CELL_ATTRIBUTES
from pivotlab.zoo.recipes import PARTS, ZOOS, ZooError


def test_tiny_build_gives_standard_checkpoints_and_manifests(tiny_zoo: Path) -> None:
    found = manifests("tiny", tiny_zoo)
    assert set(found) == {"enc-s", "enc-s-2k", "enc-m", "vfm", "lm-s", "lm-m"}
    for part, manifest in found.items():
        folder = entry_dir(ZOOS["tiny"], part, tiny_zoo)
        assert manifest["key"] == part_key(ZOOS["tiny"], part)
        assert manifest["compute"]["flops"] > 0 and manifest["compute"]["samples"] > 0
        if part.startswith("lm"):
            model = AutoModelForCausalLM.from_pretrained(folder)
            assert (
                AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<image>") is not None
            )
            assert manifest["quality"]["heldout_perplexity"] > 1
            spec = manifest["spec"]  # the curriculum's phases all ran, the later ones too
            phases = spec["steps"] + spec["focus_steps"] + spec["settle_steps"]
            phases += sum(steps for _, steps in spec["later_phases"])
            assert manifest["compute"]["steps"] == phases > spec["steps"]
            assert spec["later_phases"]
        else:
            model = AutoModel.from_pretrained(folder)
            assert 0 <= manifest["quality"]["linear_probe_shape_color"] <= 1
        assert type(model).__name__ == manifest["class"]
    assert found["enc-m"]["parameters"] > found["enc-s"]["parameters"]
    assert [c.name for c in checks(found)] == [
        "linear probe: random-init < enc-s, enc-m < vfm",
        "segmentation probe: random-init < enc-s < vfm",
    ]


def test_cache_is_reused_when_nothing_changed(tiny_zoo: Path) -> None:
    messages: list[str] = []
    folders = build(zoo="tiny", cache=tiny_zoo, log=messages.append)
    assert all("cached at" in m for m in messages) and len(messages) == len(PARTS)
    assert folders["enc-s"] == entry_dir(ZOOS["tiny"], "enc-s", tiny_zoo)


def test_a_changed_recipe_builds_a_new_entry(
    tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = ZOOS["tiny"]
    changed = replace(tiny, parts={**tiny.parts, "lm-s": replace(tiny.parts["lm-s"], steps=4)})
    monkeypatch.setitem(ZOOS, "tiny", changed)
    assert part_key(changed, "lm-s") != part_key(tiny, "lm-s")
    assert part_key(changed, "enc-s") == part_key(tiny, "enc-s")
    assert part_key(tiny, "enc-s", seed=1) != part_key(tiny, "enc-s")
    messages: list[str] = []
    folders = build(("lm-s", "enc-s"), zoo="tiny", cache=tiny_zoo, log=messages.append)
    training = "zoo: lm-s is not shipped for this recipe: training it (11 optimizer steps)"
    assert messages[0] == training
    assert "built lm-s" in messages[1] and "cached at" in messages[2]
    assert folders["lm-s"] != entry_dir(tiny, "lm-s", tiny_zoo)


def test_a_language_model_can_start_from_another_zoos_and_is_keyed_by_it(
    tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few-to-many-cells curriculum: the tiny zoo's lm-s, continued on the 16-cell world."""
    tiny = ZOOS["tiny"]
    spec = replace(tiny.parts["lm-s"], start_from_zoo="tiny")
    more_cells = replace(tiny, name="tiny-cells", world="tiny16", parts={"lm-s": spec})
    monkeypatch.setitem(ZOOS, "tiny-cells", more_cells)
    messages: list[str] = []
    folder = build(("lm-s",), zoo="tiny-cells", cache=tiny_zoo, log=messages.append)["lm-s"]
    assert messages[0].endswith("optimizer steps from the tiny zoo's lm-s)")
    assert "lm-s cached at" in messages[1]  # the start is the tiny zoo's built lm-s
    origin = json.loads((folder / "zoo_part.json").read_text())["started_from"]
    assert origin["zoo"] == "tiny" and origin["key"] == part_key(tiny, "lm-s")
    started = AutoModelForCausalLM.from_pretrained(folder)
    fresh = AutoModelForCausalLM.from_pretrained(entry_dir(tiny, "lm-s", tiny_zoo))
    assert started.config.hidden_size == fresh.config.hidden_size
    # The start's recipe is part of the key: another start, another entry.
    longer = replace(tiny, parts={**tiny.parts, "lm-s": replace(tiny.parts["lm-s"], steps=4)})
    monkeypatch.setitem(ZOOS, "tiny", longer)
    assert entry_dir(more_cells, "lm-s", tiny_zoo) != folder


def test_a_start_of_another_shape_is_refused(
    tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = ZOOS["tiny"]
    wider = replace(tiny.parts["lm-s"], width=48, start_from_zoo="tiny")
    monkeypatch.setitem(ZOOS, "tiny-wide", replace(tiny, name="tiny-wide", parts={"lm-s": wider}))
    with pytest.raises(ZooError, match="32 wide and 1 deep; the recipe that starts from it"):
        build(("lm-s",), zoo="tiny-wide", cache=tiny_zoo, log=lambda message: None)


def test_a_truncated_file_is_detected_and_rebuilt(tiny_zoo: Path) -> None:
    entry = entry_dir(ZOOS["tiny"], "vfm", tiny_zoo)
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert verify(entry) == "model.safetensors does not match its sha256"
    messages: list[str] = []
    build(("vfm",), zoo="tiny", cache=tiny_zoo, log=messages.append)
    assert "unusable (model.safetensors does not match its sha256); rebuilding" in messages[0]
    assert verify(entry) is None
    assert AutoModel.from_pretrained(entry) is not None


@pytest.mark.parametrize("part", ["enc-s", "vfm"])
def test_figures_from_older_probes_are_measured_again_from_the_saved_weights(
    tiny_zoo: Path, part: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = entry_dir(ZOOS["tiny"], part, tiny_zoo)
    path = entry / "zoo_part.json"
    built = json.loads(path.read_text())
    assert built["probe_protocol"] == quality.PROBE_PROTOCOL
    older_figures = {"linear_probe_shape_color": 0.5, "segmentation_patch_accuracy": 0.9}
    older = {**built, "quality": older_figures}
    del older["probe_protocol"]  # manifests before the protocol was recorded
    path.write_text(json.dumps(older))
    # no ordering compares figures of two protocols: every check needs vfm and enc-s
    assert checks(manifests("tiny", tiny_zoo)) == []
    assert main(["zoo", "list", "--zoo", "tiny", "--cache", str(tiny_zoo)]) == 0
    assert "measured with older probes" in capsys.readouterr().out
    messages: list[str] = []
    build((part,), zoo="tiny", cache=tiny_zoo, log=messages.append)
    assert messages[-1] == f"zoo: {part} quality measured again (probe protocol 1 -> 2)"
    # the saved weights (and enc-s's seeded random initialisation, rebuilt) give back
    # exactly the figures measured when the part was built; the weights are untouched
    assert json.loads(path.read_text()) == built
    assert verify(entry) is None


def test_zoo_parts_assemble_by_path(tiny_zoo: Path) -> None:
    encoder = entry_dir(ZOOS["tiny"], "enc-s", tiny_zoo)
    lm = entry_dir(ZOOS["tiny"], "lm-s", tiny_zoo)
    model, processor = assemble(encoder, lm)
    assert model.config.image_seq_length == 16
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_cli_build_and_list(tiny_zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["zoo", "build", "--zoo", "tiny", "--cache", str(tiny_zoo), "--parts", "enc-s,lm-s"])
        == 0
    )
    assert main(["zoo", "list", "--zoo", "tiny", "--cache", str(tiny_zoo)]) == 0
    out = capsys.readouterr().out
    assert "enc-s" in out and "held-out perplexity" in out and "check:" in out
    assert main(["zoo", "build", "--zoo", "huge", "--cache", str(tiny_zoo)]) == 2
    assert (
        main(["zoo", "build", "--zoo", "tiny", "--cache", str(tiny_zoo), "--parts", "enc-xl"]) == 2
    )
    err = capsys.readouterr().err
    assert "unknown zoo 'huge'" in err and "unknown zoo part 'enc-xl'" in err


def test_cli_build_exits_1_when_an_enforced_ordering_fails(
    tiny_zoo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = replace(ZOOS["tiny"], enforce_checks=True)
    monkeypatch.setitem(ZOOS, "tiny", strict)
    failing = [Check("linear probe: random-init < enc-s < enc-m", False, "0.3 < 0.6 < 0.5")]
    monkeypatch.setattr(zoo_checks, "checks", lambda found: failing)
    argv = ["zoo", "build", "--zoo", "tiny", "--cache", str(tiny_zoo), "--parts", "enc-s"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pivotlab: zoo checks failed: linear probe")
    assert verify(entry_dir(strict, "enc-s", tiny_zoo)) is None  # built and kept


def test_manifest_records_spec_data_and_versions(tiny_zoo: Path) -> None:
    manifest = json.loads(
        (entry_dir(ZOOS["tiny"], "enc-s", tiny_zoo) / "zoo_part.json").read_text()
    )
    assert manifest["spec"]["width"] == 32 and manifest["data"]["image_size"] == 32
    assert {"zoo_version", "pivotlab_version", "seed", "files"} <= manifest.keys()
    assert "random_init" in manifest["quality"]
    with pytest.raises(ZooError, match="unknown zoo part"):
        build(("enc-xl",), zoo="tiny", cache=tiny_zoo)


def test_language_models_are_scored_on_symbolic_scenes_and_encoders_on_cells(
    tiny_zoo: Path,
) -> None:
    found = manifests("tiny", tiny_zoo)
    accuracy = found["lm-s"]["quality"]["symbolic_accuracy"]
    assert {"all", "count", "relation"} <= accuracy.keys()
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    assert found["lm-s"]["quality"]["heldout_questions"] > 0
    for part in ("enc-s", "vfm"):
        measured = found[part]["quality"]
        assert {f"cell_probe_{a}" for a in CELL_ATTRIBUTES} <= measured.keys()


def test_zoo_list_names_the_parts_not_built_and_what_building_them_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh cache: every part would be copied from the package's weights; without them,
    trained, each line saying how long."""
    assert main(["zoo", "list", "--cache", str(tmp_path / "empty")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    for part in PARTS:
        assert "copied from the weights shipped with pivotlab" in lines[part]
    monkeypatch.setattr(shipping, "SHIPPED", tmp_path / "no-weights")
    assert main(["zoo", "list", "--cache", str(tmp_path / "empty")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    spec = ZOOS["default"].parts["lm-m"]
    steps = spec.steps + spec.focus_steps + spec.settle_steps  # type: ignore[union-attr]
    wanted = f"`pivotlab zoo build --parts lm-m`: trained here: {steps:,d} optimizer steps"
    assert lines["lm-m"].endswith(wanted)
    assert main(["zoo", "list", "--zoo", "tokens16", "--cache", str(tmp_path / "empty")]) == 0
    tokens16 = capsys.readouterr().out
    assert "`pivotlab zoo build --parts lm-m --zoo tokens16`: trained here: 5,000" in tokens16


def test_a_build_killed_part_way_resumes_to_the_same_files(
    tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functools import partial

    from pivotlab.zoo import builders
    from pivotlab.zoo.build import progress_file
    from pivotlab.zoo.train import Progress

    saves = {"n": 0}

    def save_then_die(self, *args) -> None:
        Progress.save.__wrapped__(self, *args)
        saves["n"] += 1
        if saves["n"] == 5:  # inside the curriculum's second phase
            raise RuntimeError("killed")

    save_then_die.__wrapped__ = Progress.save
    monkeypatch.setattr(builders, "Progress", partial(Progress, every_seconds=0.0))
    monkeypatch.setattr(Progress, "save", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        build(("lm-s",), zoo="tiny", cache=tmp_path, log=lambda message: None)
    entry = entry_dir(ZOOS["tiny"], "lm-s", tmp_path)
    assert progress_file(entry).is_file() and not entry.exists()

    def count_saves(self, *args) -> None:
        save_then_die.__wrapped__(self, *args)
        saves["n"] += 1

    monkeypatch.setattr(Progress, "save", count_saves)
    messages: list[str] = []
    build(("lm-s",), zoo="tiny", cache=tmp_path, log=messages.append)
    assert "lm-s resumes from its saved progress" in messages[1]
    assert not progress_file(entry).exists()
    unbroken = manifests("tiny", tiny_zoo)["lm-s"]
    resumed = manifests("tiny", tmp_path)["lm-s"]
    assert resumed["files"] == unbroken["files"]  # the same weights, byte for byte
    assert resumed["compute"]["steps"] == unbroken["compute"]["steps"]
    # One save a step and one a phase: the resumed build saved only what was left.
    phases = len(ZOOS["tiny"].parts["lm-s"].phases())
    assert saves["n"] == resumed["compute"]["steps"] + phases
