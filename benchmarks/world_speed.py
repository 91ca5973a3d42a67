"""Benchmark the synthetic world generator's speed (scenes per second).

Times whole ``pivotlab.world.generate`` calls (rendering, annotations, questions, preference
pairs, PNG encoding and disk writes) with classification probes disabled (``probe_n=0``), so
only scenes are measured. Each measurement writes into a fresh folder inside a temporary
directory that is removed afterwards.

Speed is reported as ratios against references measured in the same run: scaling relative
to the 1-worker figure, and the 1-worker figure relative to the per-core target of
300 scenes/s at 64 px. Nothing here asserts an absolute time.

    python benchmarks/world_speed.py --n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from pivotlab.world import WorldConfig, generate

TARGET_PER_CORE = 300.0  # scenes/s per core at 64 px (the project's issue)
TARGET_SIZE = 64


def measure(n: int, size: int, workers: int, repeats: int, root: Path) -> dict:
    """Time ``repeats`` generate calls of ``n`` scenes; return best and median scenes/s."""
    cfg = WorldConfig(split="train", n=n, seed=0, size=size, probe_n=0)
    rates: list[float] = []
    for r in range(repeats):
        out = root / f"s{size}-w{workers}-n{n}-r{r}"
        start = time.perf_counter()
        report = generate(cfg, out, workers=workers, overwrite=True)
        elapsed = time.perf_counter() - start
        rates.append(report.scenes / elapsed)
    return {
        "n": n,
        "size": size,
        "workers": workers,
        "repeats": repeats,
        "rates": rates,
        "best": max(rates),
        "median": statistics.median(rates),
    }


def parse_workers(text: str) -> list[int]:
    """Parse a comma list of worker counts, capped at ``os.cpu_count()`` and deduplicated."""
    cap = os.cpu_count() or 1
    counts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        value = min(max(1, int(part)), cap)
        if value not in counts:
            counts.append(value)
    if 1 not in counts:
        counts.insert(0, 1)  # the scaling reference
    return sorted(counts)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and optionally write the results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="scenes per measurement")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement")
    parser.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args(argv)

    workers = parse_workers(args.workers)
    print(
        f"world_speed: n={args.n} size={args.size} workers={workers} repeats={args.repeats} "
        f"cpu_count={os.cpu_count()}"
    )

    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "scaling": []}
    with tempfile.TemporaryDirectory(prefix="world_speed-") as tmp:
        root = Path(tmp)
        rows = [measure(args.n, args.size, w, args.repeats, root) for w in workers]
        base = rows[0]["median"]
        print()
        print(f"{'workers':>7} {'best/s':>9} {'median/s':>9} {'per-worker/s':>12} {'scaling':>8}")
        for row in rows:
            row["per_worker"] = row["median"] / row["workers"]
            row["scaling"] = row["median"] / base
            print(
                f"{row['workers']:>7} {row['best']:>9.1f} {row['median']:>9.1f} "
                f"{row['per_worker']:>12.1f} {row['scaling']:>7.2f}x"
            )
        results["scaling"] = rows

        one = rows[0]
        ratio = one["median"] / TARGET_PER_CORE
        print()
        print(
            f"target: {TARGET_PER_CORE:.0f} scenes/s per core at {TARGET_SIZE} px; "
            f"1-worker median {one['median']:.1f} scenes/s at {args.size} px "
            f"-> measured/target = {ratio:.2f}"
        )
        results["target"] = {
            "per_core": TARGET_PER_CORE,
            "size": TARGET_SIZE,
            "measured_median": one["median"],
            "measured_best": one["best"],
            "ratio": ratio,
        }

        extra_sizes = [(32, args.n), (384, max(2, args.n // 10))]
        extras = [measure(n, size, 1, args.repeats, root) for size, n in extra_sizes]
        print()
        print("other sizes, 1 worker (information only):")
        print(f"{'size':>7} {'n':>6} {'best/s':>9} {'median/s':>9}")
        for row in extras:
            print(f"{row['size']:>7} {row['n']:>6} {row['best']:>9.1f} {row['median']:>9.1f}")
        results["sizes"] = extras

    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
