"""Time a full build of the default zoo into a fresh cache (the budget: 10 minutes on 2 cores).

    python benchmarks/zoo_build.py [--zoo default] [--keep DIR]

Prints each part's training time and FLOPs, the whole build's wall time (data generation and
quality probes included) as a fraction of the budget, and the quality checks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from transformers.utils import logging as hf_logging

from pivotlab.zoo.build import build, manifests
from pivotlab.zoo.checks import checks

BUDGET_SECONDS = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="default")
    parser.add_argument("--keep", type=Path, default=None, help="build into this cache and keep it")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.keep or Path(tmp)
        start = time.perf_counter()
        build(zoo=args.zoo, cache=cache, force=True)
        total = time.perf_counter() - start
        found = manifests(args.zoo, cache)
        training = sum(m["compute"]["seconds"] for m in found.values())
        print(f"{'part':6s} {'params':>10s} {'train s':>8s} {'PFLOPs':>8s}")
        for part, manifest in found.items():
            compute = manifest["compute"]
            size, seconds, flops = manifest["parameters"], compute["seconds"], compute["flops"]
            print(f"{part:6s} {size:10,d} {seconds:8.0f} {flops / 1e15:8.3f}")
        share = total / BUDGET_SECONDS
        print(f"whole build {total:.0f}s ({share:.2f} of the {BUDGET_SECONDS:.0f}s budget); "
              f"training {training:.0f}s, data and probes {total - training:.0f}s")  # fmt: skip
        for check in checks(found):
            print(f"check {'pass' if check.passed else 'FAIL'}: {check.name}: {check.detail}")


if __name__ == "__main__":
    main()
