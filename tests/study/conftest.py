"""What the study tests share: a tests-sized study preset, every step of a study, and the
constructed results the report tests read (every section filled, small pictures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pivotlab.study.config import StudyConfig
from pivotlab.study.pipeline import Step, seed_steps

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["data.limit=16", "train.batch_size=4", "train.per_device_batch_size=4", "train.steps=2"]
SMALL += ["data.eval_limit=4", "train.logging_steps=1"]
TINY_MODEL = ["model.image_size=32"]


def _world(split: str, n: int, seed: int, probe_n: int = 0) -> dict:
    return {"split": split, "n": n, "size": 32, "seed": seed, "probe_n": probe_n}


def _recipe(name: str, *overrides: str) -> dict:
    return {"config": str(CONFIGS / "tiny" / f"{name}.yaml"), "overrides": [*SMALL, *overrides]}


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study over tiny random parts (tiny-siglip, tiny-qwen2) on a 32-px world."""
    tree = {
        "name": "tests",
        "seeds": [0],
        "world": {
            "train": _world("train", 16, 5),
            "val": _world("val", 6, 5),
            "test": _world("test", 10, 5, probe_n=12),
            "probes": _world("train", 4, 6, probe_n=24),
        },
        "stage1": {
            "vision": "tiny-siglip",
            "lm": "tiny-qwen2",
            "align": _recipe("align", *TINY_MODEL),
            "full": _recipe("full", "data.turns=4"),
        },
        "post": {
            "baseline": "sft",
            "arms": {"sft": _recipe("post-sft"), "dpo": _recipe("post-dpo")},
            "sweep": {"rates": [1.0e-4, 1.0e-3], "arms": ["dpo"]},
        },
        "evaluate": {"limit": 12, "batch_size": 12, "blind": True},
        "analysis": {"analyses": ["linear-probe"], "limit": 24},
        "transplant": {
            "lm": "tiny-qwen2",
            "originals": ["tiny-siglip"],
            "align": _recipe("align", *TINY_MODEL),
            "full": _recipe("full"),
            "control": {"weaker": "tiny-siglip", "stronger": "stage1", "known": "a test's pair"},
        },
        "notes": ["tests-sized"],
    }
    path = tmp_path_factory.mktemp("preset") / "tests.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture
def every_step() -> Callable[[StudyConfig, Path], list[Step]]:
    """Every step of a study into a run folder, over split folders that need not exist."""

    def steps(study: StudyConfig, run: Path) -> list[Step]:
        splits = {name: run / "world" / name for name in ("train", "val", "test", "probes")}
        return [step for seed in study.seeds for step in seed_steps(study, run, seed, splits)]

    return steps


def _picture(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path)
    return str(path)


def _vqa(arm: str, seed: int, category: str, value: float, source: str) -> dict:
    return {"arm": arm, "seed": seed, "category": category, "value": value,
            "ci_low": value - 0.033, "ci_high": value + 0.033, "n": 300, "chance": 0.25,
            "source": source}  # fmt: skip


@pytest.fixture
def study(tmp_path: Path) -> dict:
    run = tmp_path / "run"
    pictures = tmp_path / "analysis"
    return {
        "title": "PIVOT study (test)",
        "preset": "quick",
        "command": "pivotlab study --preset quick --out RUN",
        "seeds": [0, 1],
        "notes": ["Stage 2 cut to 40 steps to fit the time budget."],
        "vqa": [
            _vqa("sft", 0, "vision_centric", 0.413, str(run / "eval/sft-0/metrics.jsonl")),
            _vqa("sft", 1, "vision_centric", 0.433, str(run / "eval/sft-1/metrics.jsonl")),
            _vqa("dpo", 0, "vision_centric", 0.452, str(run / "eval/dpo-0/metrics.jsonl")),
            _vqa("dpo", 1, "vision_centric", 0.470, str(run / "eval/dpo-1/metrics.jsonl")),
            _vqa("sft-blind", 0, "vision_centric", 0.262, "eval/sft-blind-0/metrics.jsonl"),
            _vqa("sft", 0, "ocr_chart", 0.2, "eval/sft-0/metrics.jsonl"),
        ],
        "claims": [
            {
                "claim": "Does DPO see better than SFT?",
                "comparison": "dpo - sft",
                "metric": "vision_centric accuracy",
                "diff": 0.032,
                "ci_low": -0.005,
                "ci_high": 0.069,
                "verdict": "not significant at this scale",
                "n_seeds": 2,
            },
            {
                "claim": "Does the evolved encoder transplant better?",
                "comparison": "pivot - enc-s",
                "metric": "average",
                "diff": 0.051,
                "ci_low": 0.02,
                "ci_high": 0.08,
                "verdict": "holds",
                "n_seeds": 2,
            },
            {
                "claim": "Does DPO reshape the encoder (CKA to Stage 1)?",
                "comparison": "dpo - sft",
                "metric": "debiased_cka",
                "diff": -0.0412,
                "ci_low": -0.0803,
                "ci_high": -0.0021,
                "verdict": "reversed",
                "n_seeds": 2,
            },
        ],
        "analysis": [
            {
                "analysis": "linear_probe",
                "encoder": "e",
                "arm": arm,
                "seed": seed,
                "label": "shape",
                "method": "logistic",
                "metric": "top1",
                "value": value,
                "ci_low": value - 0.05,
                "ci_high": value + 0.05,
                "n": 60,
            }
            for arm, seed, value in [("sft", 0, 0.5), ("sft", 1, 0.6), ("dpo", 0, 0.7)]
        ],
        "transplant": [
            {
                "encoder": name,
                "category": "average",
                "value": value,
                "ci_low": value - 0.02,
                "ci_high": value + 0.02,
            }
            for name, value in [("enc-s", 0.40), ("enc-s+PIVOT", 0.45), ("enc-m", 0.43)]
        ],
        "compute": [
            {
                "step": "stage2-dpo",
                "arm": "dpo",
                "seed": 0,
                "wall_s": 61.25,
                "flops": 3.2e12,
                "note": "4 epochs",
            },
        ],
        "pivot_fraction": {"pivot_flops": 1e12, "pretraining_flops": 4e14, "fraction": 0.0025},
        "pictures": {
            "saliency": {
                "sft": [
                    _picture(pictures / f"sft/saliency/{i}.png", (200, 0, 0)) for i in range(2)
                ],
                "dpo": [
                    _picture(pictures / f"dpo/saliency/{i}.png", (0, 0, 200)) for i in range(2)
                ],
            },
            "pca": {"dpo": [_picture(pictures / "dpo/pca/0.png", (0, 200, 0))]},
        },
    }
