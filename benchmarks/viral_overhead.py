"""VIRAL's step-time overhead: the same `full` stage without VIRAL, with it, and with it but
without the teacher-feature cache, one after the other in one process.

    python benchmarks/viral_overhead.py --init runs/tiny/align/final --steps 100

Every run reads the same records in the same order (the shared schedule); the figure that
matters is each run's seconds per optimizer step over the baseline's, measured in this run.
The cache pays off from the second pass over the data on (and for DPO's chosen and rejected
sequences, which share an image): `--records` below steps x 32 makes the runs repeat records.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from transformers.utils import logging as hf_logging

from pivotlab.train import load_config, run_stage

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tiny"


def seconds_per_step(config: str, out: Path, overrides: list[str]) -> float:
    """Wall seconds per optimizer step of one stage run."""
    result = run_stage(load_config(CONFIGS / config, overrides), out)
    return result.summary["wall_s"] / result.summary["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="a Stage-1a model (the align stage's)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--records", type=int, default=None, help="default: one pass")
    parser.add_argument("--teacher", default="zoo:vfm")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    records = args.records or args.steps * 32
    common = [
        f"model.init={args.init}",
        f"train.steps={args.steps}",
        f"data.limit={records}",
        "train.save_steps=100000",
        "data.eval_limit=8",
        f"viral.teacher={args.teacher}",
    ]
    runs = {
        "baseline": ("full.yaml", []),
        "viral": ("full-viral.yaml", []),
        "viral, no cache": ("full-viral.yaml", ["viral.cache_teacher=false"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        times = {
            name: seconds_per_step(config, Path(tmp) / str(i), [*common, *extra])
            for i, (name, (config, extra)) in enumerate(runs.items())
        }
    passes = args.steps * 32 / records
    print(f"{args.steps} steps of batch 32 over {records} records ({passes:.1f} passes)")
    for name, value in times.items():
        print(f"{name:16s} {value:6.3f} s/step  x{value / times['baseline']:.3f}")


if __name__ == "__main__":
    main()
