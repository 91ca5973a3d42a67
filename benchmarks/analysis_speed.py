"""Speed of the linear probe: feature extraction for N images, the cache, and the probe fits.

    python benchmarks/analysis_speed.py --images 10000 --encoder zoo:enc-s

Makes a world split with N classification-probe images (64 px) plus a held-out one, then
times: extracting pooled features batched (what `pivotlab analyze` does), the same for a
sample of images one at a time (the reference, measured in the same run and scaled to N),
reading the features back from the cache, and fitting the three probes (logistic regression
with its C chosen on a validation split of train, prototype, weighted k-NN) on one label.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from pivotlab.analysis.features import (
    FeatureSpec,
    cached_features,
    extract,
    load_encoder,
    probe_images,
    probe_rows,
)
from pivotlab.analysis.probes import classification_rows
from pivotlab.world import WorldConfig, generate


def seconds(work) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--encoder", default="zoo:enc-s")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reference-sample", type=int, default=200)
    parser.add_argument("--label", default="shape")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    encoder = load_encoder(args.encoder)
    spec = FeatureSpec()
    with tempfile.TemporaryDirectory() as tmp:
        train, test, cache = Path(tmp) / "train", Path(tmp) / "test", Path(tmp) / "cache"
        made, _ = seconds(lambda: generate(
            WorldConfig(split="train", n=50, size=args.size, probe_n=args.images), train, workers=2
        ))  # fmt: skip
        generate(WorldConfig(split="test", n=50, size=args.size, probe_n=args.test_images), test)
        cold, features = seconds(
            lambda: cached_features(encoder, train, "classification", spec, cache)
        )
        warm, _ = seconds(lambda: cached_features(encoder, train, "classification", spec, cache))
        sample = probe_images(train, "classification")[: args.reference_sample]
        one_by_one, _ = seconds(lambda: [extract(encoder, [image], spec) for image in sample])
        one_by_one *= args.images / len(sample)
        test_features = cached_features(encoder, test, "classification", spec, cache)
        labels = [r[args.label] for r in probe_rows(train, "classification")]
        test_labels = [r[args.label] for r in probe_rows(test, "classification")]
        fit, rows = seconds(lambda: classification_rows(
            features.numpy(), labels, test_features.numpy(), test_labels, args.label, args.encoder
        ))  # fmt: skip
    print(f"encoder {args.encoder}, {args.images} train + {args.test_images} test images, "
          f"{args.size} px (world generation {made:.1f} s)")  # fmt: skip
    print(f"features, batched (incl. reading PNGs) {cold:6.2f} s  {args.images / cold:8.0f} img/s")
    print(f"features, one image at a time (est.)   {one_by_one:6.2f} s  "
          f"ratio batched/single {one_by_one / cold:.1f}x")  # fmt: skip
    print(f"features, from the cache               {warm:6.2f} s  ratio {cold / warm:.0f}x")
    print(f"three probes on '{args.label}' (C chosen on a validation split) {fit:6.2f} s")
    for row in rows:
        print(f"  {row['method']:9s} top-1 {row['value']:.3f} [{row['ci_low']:.3f}, "
              f"{row['ci_high']:.3f}]" + (f"  C={row['C']:.3g}" if "C" in row else ""))  # fmt: skip
    print(f"extraction + probes: {cold + fit:.1f} s")


if __name__ == "__main__":
    main()
