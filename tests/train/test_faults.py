"""Faults and safety at the tests' size: a run killed with SIGKILL resumes to the same end,
a non-finite step stops the run with a checkpoint, the output folder is checked before any
work, and checkpoints hold no pickled weights."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_pt_utils import safe_globals

import pivotlab
from pivotlab import cli, io
from pivotlab.errors import PivotlabError
from pivotlab.io import read_jsonl
from pivotlab.model import load
from pivotlab.model.parts import set_trainable
from pivotlab.train import run_stage, stages
from pivotlab.train.rundir import (
    LOSS_FILE,
    SPACE_MARGIN,
    checkpoint_complete,
    loss_so_far,
    resume_point,
    run_mean_loss,
    space_needed,
)
from tests.train.conftest import CONFIGS, tiny_config

# The resumed run replays the same records from the same weights, optimizer and RNG state
# on the same machine and thread count: it agrees with the uninterrupted run far inside
# these (docs/train.md, Faults and safety).
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-6
LOSS_TOLERANCE = 1e-5  # absolute, per logged step and for summary.json's train_loss
HELDOUT_RTOL = 1e-4

KILL_SETTINGS = ("train.steps=6", "train.save_steps=2", "train.lr=1e-3")
STALL_STEP = 4  # the first run is killed while it writes checkpoint-4

# The first run is the same command with one change: writing checkpoint-STALL_STEP stops
# after the weights and before the optimizer and trainer_state.json, so the SIGKILL always
# lands mid-stage with a checkpoint half-written and log lines past the last complete one.
STALLING = """
import os, sys, time
from transformers import Trainer
from pivotlab.cli import main
write = Trainer._save_optimizer_and_scheduler
def stall(self, output_dir):
    if self.state.global_step == int(os.environ["STALL_STEP"]):
        open(os.environ["STALLED"], "w").close()
        time.sleep(600)
    return write(self, output_dir)
Trainer._save_optimizer_and_scheduler = stall
sys.exit(main(sys.argv[1:]))
"""


def _command(out: Path, preset: list[str]) -> list[str]:
    config = str(CONFIGS / "tiny" / "post-dpo.yaml")
    return ["train", "--config", config, "--out", str(out), *preset, *KILL_SETTINGS]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _train(out: Path, preset: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pivotlab", *_command(out, preset)]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _killed_mid_stage(out: Path, preset: list[str], stalled: Path) -> None:
    command = [sys.executable, "-c", STALLING, *_command(out, preset)]
    env = _env(STALL_STEP=str(STALL_STEP), STALLED=str(stalled))
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600
    while not stalled.exists():
        if process.poll() is not None:
            pytest.fail(f"the first run ended before the kill: {process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the first run never reached its stall"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _train_curve(out: Path, metric: str) -> dict[int, float]:
    rows = read_jsonl(out / "metrics.jsonl")
    return {r["step"]: r["value"] for r in rows if r["split"] == "train" and r["metric"] == metric}


@pytest.mark.trains
@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_to_the_uninterrupted_end(preset, tmp_path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _train(whole, preset)
    _killed_mid_stage(killed, preset, tmp_path / "stalled")
    # What the kill left: steps 3-4 logged, checkpoint-4 without its state, no end.
    assert checkpoint_complete(killed / "checkpoint-2")
    assert (killed / "checkpoint-4" / "model.safetensors").is_file()
    assert not checkpoint_complete(killed / "checkpoint-4")
    assert max(r["step"] for r in read_jsonl(killed / "samples.jsonl")) == STALL_STEP
    assert not (killed / "final").exists() and not (killed / "summary.json").exists()
    with (killed / "metrics.jsonl").open("a") as log:  # and a line cut short by a kill
        log.write('{"run": "killed", "stage": "post", "st')

    again = _train(killed, preset)  # the same command

    assert f"{killed / 'checkpoint-4'}: incomplete" in again.stderr
    assert f"resuming from {killed / 'checkpoint-2'} (step 2)" in again.stderr
    assert read_jsonl(killed / "samples.jsonl") == read_jsonl(whole / "samples.jsonl")
    for metric in ("loss", "rewards/margins", "grad_norm"):
        a, b = _train_curve(whole, metric), _train_curve(killed, metric)
        assert list(a) == list(b) == [1, 2, 3, 4, 5, 6]
        assert b == pytest.approx(a, abs=LOSS_TOLERANCE), metric
    ends = [json.loads((run / "summary.json").read_text()) for run in (whole, killed)]
    assert ends[1]["resumed_from"] == str(killed / "checkpoint-2")
    assert ends[1]["steps"] == ends[0]["steps"] == 6
    assert math.isclose(ends[0]["train_loss"], ends[1]["train_loss"], abs_tol=LOSS_TOLERANCE)
    for metric, value in ends[0]["heldout"].items():
        assert math.isclose(value, ends[1]["heldout"][metric], rel_tol=HELDOUT_RTOL), metric
    a, b = (load_file(run / "final" / "model.safetensors") for run in (whole, killed))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)


def _checkpoint(folder: Path, step: int, state: str | None = "whole") -> None:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if state == "whole":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "cut":
        (folder / "trainer_state.json").write_text('{"global_step": ')


def test_resume_skips_half_written_checkpoints_and_cut_log_lines(tmp_path, capsys) -> None:
    _checkpoint(tmp_path / "checkpoint-2", 2)
    _checkpoint(tmp_path / "checkpoint-4", 4, state=None)  # killed before its state
    _checkpoint(tmp_path / "checkpoint-6", 6, state="cut")  # killed while writing it
    rows = [{"step": s, "metric": "loss", "value": s / 10} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text(io.jsonl_text(rows) + '{"step": 4, "met')
    (tmp_path / "samples.jsonl").write_text(
        "".join(json.dumps({"step": s, "ids": [s]}) + "\n" for s in (1, 2, 3, 4, 5))
    )
    assert resume_point(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in read_jsonl(tmp_path / "samples.jsonl")] == [1, 2]
    said = capsys.readouterr().err
    assert "checkpoint-4: incomplete" in said and "checkpoint-6: incomplete" in said


def test_no_complete_checkpoint_starts_over(tmp_path) -> None:
    _checkpoint(tmp_path / "checkpoint-2", 2, state=None)
    (tmp_path / "samples.jsonl").write_text('{"step": 1, "ids": [0]}\n')
    assert resume_point(tmp_path) is None
    assert not (tmp_path / "samples.jsonl").exists()
    assert not list(tmp_path.glob("checkpoint-*"))


def test_a_resumed_run_reports_the_mean_loss_of_the_whole_run(tmp_path) -> None:
    losses = [4.0, 3.0, 2.0, 1.5, 1.0, 0.5]
    (tmp_path / LOSS_FILE).write_text(json.dumps({"step": 2, "loss_sum": sum(losses[:2])}))
    so_far = loss_so_far(str(tmp_path))
    after = sum(losses[2:]) / 4  # Trainer's training_loss: the steps of this call only
    assert run_mean_loss(after, 6, so_far) == pytest.approx(sum(losses) / 6)
    whole = sum(losses) / 6
    assert run_mean_loss(whole, 6, loss_so_far(None)) == whole  # not resumed
    assert loss_so_far(str(tmp_path / "older")) is None
    assert run_mean_loss(after, 6, None) == after  # a checkpoint without the record


# ------------------------------------------------------------------- non-finite steps


def _poison(monkeypatch: pytest.MonkeyPatch, where: str, step: int) -> None:
    """From optimizer step ``step`` + 1 on, the projector's output (a NaN loss) or its
    weight's gradient (a finite loss, NaN gradients) becomes NaN."""
    real = stages.stage_trainer

    def poisoned(*args, **kwargs):
        trainer = real(*args, **kwargs)
        projector = trainer.model.model.multi_modal_projector

        def reached() -> bool:
            return projector.training and trainer.state.global_step >= step

        if where == "loss":
            projector.register_forward_hook(lambda m, i, out: out * math.nan if reached() else out)
        else:
            weight = projector.linear_1.weight
            weight.register_hook(lambda grad: grad * math.nan if reached() else grad)
        return trainer

    monkeypatch.setattr(stages, "stage_trainer", poisoned)


@pytest.mark.trains
@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("loss", "non-finite loss nan and gradient norm nan"),
        ("grad", "non-finite gradient norm nan"),
    ],
)
def test_a_non_finite_step_stops_the_run_with_a_checkpoint(
    preset, stage1_dir, tmp_path, monkeypatch, capsys, where, named
) -> None:
    _poison(monkeypatch, where, step=2)
    out = tmp_path / "run"
    config = str(CONFIGS / "tiny" / "post-dpo.yaml")
    argv = ["train", "--config", config, "--out", str(out), *preset, "train.lr=1e-3"]
    assert cli.main(argv) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after datasets' progress bars
    assert message.startswith(f"pivotlab: error: {named} at step 3 ")
    step3 = next(r["ids"] for r in read_jsonl(out / "samples.jsonl") if r["step"] == 3)
    assert f"(records {', '.join(step3)}; all in samples.jsonl step 3)" in message
    assert message.endswith(f"the state after step 2 is in {out / 'checkpoint-2'}")
    # The state before the bad update: the weights after step 2, finite, trained.
    saved = out / "checkpoint-2"
    assert checkpoint_complete(saved) and (saved / "optimizer.pt").is_file()
    weights = load_file(saved / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    start = load_file(stage1_dir / "model.safetensors")
    assert any(not torch.equal(weights[k], start[k]) for k in start)
    assert not (out / "final").exists() and not (out / "summary.json").exists()
    assert {r["step"] for r in read_jsonl(out / "metrics.jsonl")} == {1, 2}  # nothing logged after


# ------------------------------------------------------------- the output folder, early

Usage = namedtuple("Usage", "total used free")


def test_train_into_an_uncreatable_folder_fails_before_any_work(preset, tmp_path, capsys) -> None:
    (tmp_path / "runs").write_text("a file where the run folder's parent should be")
    config = str(CONFIGS / "tiny" / "post-dpo.yaml")
    argv = ["train", "--config", config, "--out", str(tmp_path / "runs" / "dpo"), *preset]
    assert cli.main(argv) == 2
    message = capsys.readouterr().err.strip()
    assert message == (
        f"pivotlab: error: {tmp_path / 'runs' / 'dpo'}: cannot create it, "
        f"{tmp_path / 'runs'} is a file, not a folder"
    )


def test_train_on_a_full_disk_fails_before_training(preset, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * io.GiB, 0, 5 * io.MiB))
    cfg = tiny_config("post-dpo", preset, "train.save_steps=1", "train.save_total_limit=1")
    full = r"run: 5\.0 MiB free on its disk, 264\.\d MiB needed \(2 checkpoint\(s\) of 1\.1 MiB "
    with pytest.raises(io.OutputError, match=full):
        run_stage(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "samples.jsonl").exists()
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_the_space_estimate_counts_kept_checkpoints_optimizer_state_and_final(
    preset, stage1_dir, tmp_path
) -> None:
    model, _ = load(stage1_dir)
    set_trainable(model, ["projector", "lm"])
    weights = sum(p.numel() * 4 for p in model.parameters())  # fp32
    moments = sum(2 * 4 * p.numel() for p in model.parameters() if p.requires_grad)
    checkpoint = weights + moments
    cfg = tiny_config("post-dpo", preset, "train.save_steps=2", "train.save_total_limit=null")
    # 10 steps, a save every 2, no limit: 5 kept, + 1 (the one written before the oldest
    # is rotated out, or a non-finite stop's), + final/'s weights.
    assert space_needed(cfg, model, 10, tmp_path)[0] == weights + 6 * checkpoint + SPACE_MARGIN
    limited = tiny_config("post-dpo", preset, "train.save_steps=2", "train.save_total_limit=2")
    assert space_needed(limited, model, 10, tmp_path)[0] == weights + 3 * checkpoint + SPACE_MARGIN
    (tmp_path / "checkpoint-2").mkdir()  # on resume, a kept checkpoint is already on disk
    assert space_needed(limited, model, 10, tmp_path)[0] == weights + 2 * checkpoint + SPACE_MARGIN
    never = tiny_config("post-dpo", preset)  # no save_steps: only a non-finite stop saves
    assert space_needed(never, model, 10, tmp_path / "x")[0] == (
        weights + checkpoint + SPACE_MARGIN
    )


# ------------------------------------------------------------------------------ safety

SRC = Path(pivotlab.__file__).parent


def _calls(name: str):
    """(file, line, call) for every call whose function is named ``name`` in src/."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    yield path.relative_to(SRC), node.lineno, node


def _keyword(call: ast.Call, name: str):
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0] if found else None


def test_every_torch_load_in_src_is_weights_only() -> None:
    unsafe = []
    for path, line, call in _calls("load"):
        if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "torch":
            value = _keyword(call, "weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                unsafe.append(f"{path}:{line}")
    assert unsafe == []


def _turned_on(node: ast.AST) -> bool:
    return not (isinstance(node, ast.Constant) and node.value is False)


def test_no_source_turns_trust_remote_code_on_by_itself() -> None:
    on = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '')}"
            # Passed on: a variable, or the literal False; never a literal True.
            keyword = isinstance(node, ast.keyword) and node.arg == "trust_remote_code"
            if keyword and isinstance(node.value, ast.Constant) and _turned_on(node.value):
                on.append(where)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    named = isinstance(key, ast.Constant) and key.value == "trust_remote_code"
                    if named and isinstance(value, ast.Constant) and _turned_on(value):
                        on.append(where)
            # A parameter with a default: the default is False.
            if isinstance(node, ast.FunctionDef):
                args = node.args
                positional = args.args[len(args.args) - len(args.defaults) :]
                pairs = [
                    *zip(positional, args.defaults, strict=True),
                    *zip(args.kwonlyargs, args.kw_defaults, strict=True),
                ]
                for arg, default in pairs:
                    if arg.arg == "trust_remote_code" and default is not None:
                        on += [where] if _turned_on(default) else []
    assert on == []


@pytest.fixture
def custom_code_folder(tmp_path) -> Path:
    """A model folder whose config names its own code, which would end the process."""
    folder = tmp_path / "custom"
    folder.mkdir()
    auto_map = {"AutoConfig": "configuration_custom.Config", "AutoModel": "modeling_custom.Model"}
    config = {"model_type": "custom_thing", "auto_map": auto_map}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    return folder


def test_a_model_that_ships_code_is_refused_unless_trusted(custom_code_folder, capsys) -> None:
    argv = ["model", "build", "--vision", str(custom_code_folder), "--lm", "tiny-qwen2"]
    assert cli.main([*argv, "--out", str(custom_code_folder.parent / "out")]) == 2
    message = capsys.readouterr().err.strip()
    assert message == (
        f"pivotlab: error: {str(custom_code_folder)!r} ships its own Python code; "
        "pass --trust-remote-code to run it"
    )
    with pytest.raises(SystemExit, match="remote code ran"):  # the flag reaches transformers
        cli.main([*argv, "--out", str(custom_code_folder.parent / "o2"), "--trust-remote-code"])


def test_a_viral_teacher_that_ships_code_is_refused_unless_trusted(custom_code_folder) -> None:
    from pivotlab.train.viral import load_teacher

    with pytest.raises(PivotlabError, match="ships its own Python code; pass --trust-remote-code"):
        load_teacher(str(custom_code_folder), None, None, cache=False)
    with pytest.raises(SystemExit, match="remote code ran"):
        load_teacher(str(custom_code_folder), None, None, cache=False, trust_remote_code=True)


def test_an_analysis_encoder_that_ships_code_runs_it_only_when_trusted(custom_code_folder) -> None:
    from pivotlab.analysis.features import load_encoder

    with pytest.raises(PivotlabError, match="ships its own Python code; pass --trust-remote-code"):
        load_encoder(custom_code_folder)
    with pytest.raises(SystemExit, match="remote code ran"):
        load_encoder(custom_code_folder, trust_remote_code=True)


@pytest.fixture(scope="module")
def checkpointed_run(preset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    run_stage(tiny_config("post-dpo", preset, "train.steps=2", "train.save_steps=1"), out)
    return out


PICKLED_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}


@pytest.mark.trains
def test_a_run_folder_holds_weights_as_safetensors_only(checkpointed_run) -> None:
    files = [p for p in checkpointed_run.rglob("*") if p.is_file()]
    assert {p.parent.name for p in files if p.name == "model.safetensors"} >= {
        "checkpoint-2",
        "final",
    }
    pickled = [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    # Trainer's optimizer, scheduler and RNG state (read back with weights_only=True) and
    # nothing else: no weights, no pickled TrainingArguments.
    assert {p.name for p in pickled} <= PICKLED_STATE
    assert {p.name for p in pickled if p.parent.name == "checkpoint-2"} == {
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
    }
    # Plain tensors and containers (and numpy's RNG state, the allowlist transformers itself
    # reads rng_state.pth with): they load with weights_only=True.
    with safe_globals():
        for path in pickled:
            torch.load(path, weights_only=True)
    args = json.loads((checkpointed_run / "checkpoint-2" / "training_args.json").read_text())
    assert args["max_steps"] == 2
