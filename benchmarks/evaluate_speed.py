"""Throughput of `pivotlab evaluate`: batched generation against one question at a time.

    python benchmarks/evaluate_speed.py --items 128 --vision tiny-siglip --lm tiny-qwen2

Both runs evaluate the same questions with the same randomly initialised model (which never
emits the end token, so every reply is exactly --max-new-tokens long and the work is equal);
the figure that matters is the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from transformers.utils import logging as hf_logging

from pivotlab.evaluate import EvalConfig, evaluate
from pivotlab.model import assemble
from pivotlab.world import WorldConfig, generate


def measure(model, processor, data: Path, out: Path, items: int, batch: int, args) -> float:
    """Items per second of one evaluation (model already in memory)."""
    cfg = EvalConfig(model="in-memory", data=str(data), out=str(out), limit=items, batch_size=batch,
                     max_new_tokens=args.max_new_tokens, likelihood=args.likelihood)  # fmt: skip
    return evaluate(cfg, model, processor).items_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--vision", default="tiny-siglip")
    parser.add_argument("--lm", default="tiny-qwen2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--likelihood", action="store_true")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model, processor = assemble(args.vision, args.lm, image_size=args.size)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test"
        generate(
            WorldConfig(split="test", n=max(20, args.items // 6), size=args.size, probe_n=0), data
        )
        single = measure(model, processor, data, Path(tmp) / "one", args.items, 1, args)
        mode = "likelihood" if args.likelihood else "generate"
        print(f"{args.vision} + {args.lm}, {args.size} px, {args.items} questions, "
              f"max_new_tokens={args.max_new_tokens}, mode={mode}")  # fmt: skip
        print(f"{'batch':>6s} {'items/s':>9s} {'vs batch 1':>11s}")
        print(f"{1:6d} {single:9.1f} {1.0:10.2f}x")
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rate = measure(model, processor, data, Path(tmp) / f"b{batch}", args.items, batch, args)
            print(f"{batch:6d} {rate:9.1f} {rate / single:10.2f}x")


if __name__ == "__main__":
    main()
