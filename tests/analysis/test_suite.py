"""`pivotlab analyze`: options checked up front, one table comparing every encoder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pivotlab.analysis.config import AnalyzeConfig, named_source
from pivotlab.analysis.features import AnalysisError
from pivotlab.analysis.suite import comparison_table, measurement
from pivotlab.cli import main


def test_named_sources() -> None:
    assert named_source("dpo=runs/dpo/final") == ("dpo", "runs/dpo/final")
    assert named_source("runs/dpo/final") == ("runs/dpo/final", "runs/dpo/final")
    assert named_source("random:zoo:enc-s") == ("random:zoo:enc-s", "random:zoo:enc-s")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"analyses": ("probe",), "encoders": [("a", "x")]}, "unknown analysis 'probe'"),
        ({"analyses": ("linear-probe",)}, "nothing to analyse"),
        ({"analyses": ("saliency",), "encoders": [("a", "x")]}, "need.* an MLLM"),
        ({"analyses": ("segmentation",), "encoders": [("a", "x")]}, "--eval-data"),
        (
            {"analyses": ("linear-probe",), "encoders": [("a", "x")], "models": [("a", "y")]},
            "'a' is given twice",
        ),
        ({"analyses": ("pca",), "encoders": [("a", "x")], "limit": 0}, "--limit must be at l"),
        (
            {"analyses": ("permutation",), "models": [("a", "y")], "permutation_limit": -5},
            "--permutation-limit must be at least 1, got -5",
        ),
    ],
)
def test_bad_configs_are_one_line_errors(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match=message):
        AnalyzeConfig(data=tmp_path, out=tmp_path / "out", **kwargs)


def test_table_puts_encoders_side_by_side() -> None:
    rows = [
        {"encoder": "sft", "analysis": "linear_probe", "label": "shape", "method": "logistic",
         "metric": "top1", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10, "C": 1.0},
        {"encoder": "dpo", "analysis": "linear_probe", "label": "shape", "method": "logistic",
         "metric": "top1", "value": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 10, "C": 0.1},
    ]  # fmt: skip
    lines = comparison_table(rows).splitlines()
    assert lines[0] == "| measurement | sft | dpo |"
    assert lines[2] == (
        "| linear_probe, shape, logistic, top1 | 0.500 [0.400, 0.600] | 0.700 [0.600, 0.800] |"
    )


def test_probes_refuse_to_score_on_the_split_they_fit(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    train, _ = probe_splits
    status = main(
        ["analyze", "linear-probe", "--model", str(tiny_model_dir), "--data", str(train),
         "--out", str(tmp_path / "run")]
    )  # fmt: skip
    assert status == 2
    assert "--eval-data" in capsys.readouterr().err


def test_cli_compares_encoders_in_one_run(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    train, test = probe_splits
    out = tmp_path / "run"
    args = ["analyze", "linear-probe", "--model", f"trained={tiny_model_dir}",
            "--encoder", f"random=random:{tiny_model_dir}", "--data", str(train),
            "--eval-data", str(test), "--out", str(out), "--cache", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "| measurement | random | trained |"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["encoder"] for r in rows} == {"random", "trained"}
    assert all(r["stage"] == "analyze" and r["run"] == "run" for r in rows)
    assert main(args) == 2  # a finished analysis is not overwritten silently
    assert main([*args, "--overwrite"]) == 0


def test_progress_counts_each_analysis_of_each_encoder_and_model(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    """A live line's count: one unit per (analysis, encoder or model), known before the
    first runs."""
    from pivotlab.analysis.config import AnalyzeConfig
    from pivotlab.analysis.suite import run_analyses
    from pivotlab.console import Progress

    train, test = probe_splits
    cfg = AnalyzeConfig(
        analyses=("linear-probe", "pca"),
        data=train,
        eval_data=test,
        out=tmp_path / "run",
        encoders=[("random", f"random:{tiny_model_dir}")],
        models=[("trained", str(tiny_model_dir))],
        limit=4,
        cache=tmp_path,
    )
    progress, seen = Progress(), []
    run_analyses(
        cfg, log=lambda line: seen.append((line, progress.done, progress.total)), progress=progress
    )
    # The linear probe on the encoder and on the model's encoder, the PCA view of the model.
    assert (progress.done, progress.total, progress.unit) == (3, 3, "analyses")
    assert [(done, total) for _, done, total in seen] == [(0, 3), (1, 3), (2, 3)]


def test_all_analyses_run_from_one_command(
    tiny_model_dir: Path, probe_splits: tuple[Path, Path], tmp_path: Path
) -> None:
    train, test = probe_splits
    out = tmp_path / "all"
    args = ["analyze", "all", "--model", f"stage1={tiny_model_dir}", "--encoder",
            f"floor=random:{tiny_model_dir}", "--data", str(train), "--eval-data", str(test),
            "--out", str(out), "--limit", "12", "--epochs", "1", "--teacher",
            f"random:{tiny_model_dir}", "--lm", str(tiny_model_dir),
            "--cache", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    made = {(r["encoder"], r["analysis"]) for r in rows}
    for analysis in ("linear_probe", "segmentation_probe", "vl_alignment"):
        assert {("stage1", analysis), ("floor", analysis)} <= made
    for analysis in ("saliency", "layerwise_alignment", "token_permutation"):
        assert ("stage1", analysis) in made and ("floor", analysis) not in made
    assert any(r.get("target") == "teacher" for r in rows)
    assert list((out / "stage1" / "saliency").glob("*.png"))
    assert list((out / "stage1" / "pca").glob("*.png"))
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| measurement | floor | stage1 |"
    assert len(table) == 2 + len({measurement(r) for r in rows})  # one line per measurement
    for name in ("stage1", "floor"):  # and no two rows of one column on the same line
        own = [measurement(r) for r in rows if r["encoder"] == name]
        assert len(set(own)) == len(own)


def test_the_permutation_has_its_own_question_limit(monkeypatch, tmp_path: Path) -> None:
    from pivotlab.analysis import saliency, suite, tokens

    asked: dict[str, int | None] = {}

    def record(name: str):
        def analysis(model_dir, data, limit=None, **_):
            asked[name] = limit
            return []

        return analysis

    monkeypatch.setattr(tokens, "permutation_sensitivity", record("permutation"))
    monkeypatch.setattr(saliency, "saliency", record("saliency"))
    cfg = AnalyzeConfig(
        analyses=("saliency", "permutation"),
        data=tmp_path,
        out=tmp_path / "out",
        models=[("m", "model")],
        limit=30,
        permutation_limit=500,
    )
    for analysis in ("saliency", "permutation"):
        suite._model_rows(cfg, analysis, "m", "model")
    assert asked == {"saliency": 30, "permutation": 500}
    suite._model_rows(replace(cfg, permutation_limit=None), "permutation", "m", "model")
    assert asked["permutation"] == 30
