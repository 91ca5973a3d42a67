"""``pivotlab data check`` and ``data subset`` from the command line: a summary and exit
status 0 / 1, one line and status 2 for unusable arguments, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pivotlab.cli import main
from tests.data.conftest import llava, mmpr, png, write_lines


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pivotlab", "data", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_check_in_a_subprocess_prints_the_summary_and_exits_1_on_problems(
    broken_llava: Path, image_root: Path
) -> None:
    done = _run(
        "check", "--format", "llava", "--path", str(broken_llava), "--images", str(image_root)
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "rows 22, valid 3, unique images 3" in done.stdout
    assert f"{broken_llava}:19: image path 'link.png' is a symlink" in done.stdout
    assert "length (characters): min" in done.stdout


def test_unusable_arguments_exit_2_with_one_line(tmp_path: Path) -> None:
    done = _run(
        "check", "--format", "llava", "--path", str(tmp_path / "none.json"), "--images", "."
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no such data file" in done.stderr
    assert "Traceback" not in done.stderr


def test_clean_data_exits_0_and_max_length_needs_a_processor(
    tmp_path: Path, image_root: Path, capsys
) -> None:
    path = write_lines(tmp_path / "d.jsonl", [llava("a.png", category="c")])
    args = ["data", "check", "--format", "llava", "--path", str(path), "--images", str(image_root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "categories: c 1" in out
    assert main([*args, "--max-length", "10"]) == 2
    assert "--max-length needs --processor" in capsys.readouterr().err


def test_check_with_a_processor_reports_tokens_and_writes_skipped(
    tmp_path: Path, image_root: Path, tiny_model_dir: Path, capsys
) -> None:
    path = write_lines(tmp_path / "d.jsonl", [llava("a.png"), llava("a.png", answer="x " * 40)])
    args = ["data", "check", "--format", "llava", "--path", str(path), "--images", str(image_root)]
    status = main(
        [*args, "--processor", str(tiny_model_dir), "--max-length", "50", "--out", str(tmp_path)]
    )
    assert status == 1
    out = capsys.readouterr().out
    assert "length (tokens): min 39" in out and "over_max_length 1" in out
    (skipped,) = [json.loads(x) for x in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert (skipped["line"], skipped["kind"]) == (2, "over_max_length")


def test_subset_writes_both_files_and_the_manifest(tmp_path: Path, capsys) -> None:
    root = tmp_path / "images"
    png(root / "a.png")
    rows = [mmpr("a.png", id=f"r{i}", chosen=f"c{i}") for i in range(6)]
    data = write_lines(tmp_path / "mmpr.jsonl", rows)
    sft, dpo = tmp_path / "out" / "sft.json", tmp_path / "out" / "dpo.jsonl"
    source = ["--format", "mmpr", "--path", str(data), "--images", str(root)]
    outputs = ["--sft-out", str(sft), "--dpo-out", str(dpo)]
    status = main(["data", "subset", *source, "--n", "4", "--seed", "7", *outputs])
    assert status == 0
    manifest = json.loads((tmp_path / "out" / "sft.manifest.json").read_text())
    assert (manifest["n"], manifest["seed"], manifest["excluded"]) == (4, 7, {})
    assert "kept 4 of 4 rows visited (6 read)" in capsys.readouterr().out
