"""Training throughput of the quick study's Stage 1 against stock TRL and the machine's peak.

    python benchmarks/stage_throughput.py                      # Stage-1 full, 200 steps an arm
    python benchmarks/stage_throughput.py --steps 1642 --rounds 1   # the quick study's whole stage
    python benchmarks/stage_throughput.py --dpo                # a DPO step, as prefix_sharing.py
    python benchmarks/stage_throughput.py --profile --steps 40  # where each arm's step goes
    python benchmarks/stage_throughput.py --arms fast --set trainer.torch_compile=true  # a lever
    python benchmarks/stage_throughput.py --arms fast --without packed   # a lever's share
    python benchmarks/stage_throughput.py --paired RUN_STOCK RUN_FAST   # two quick studies

**SFT (the Stage-1 ``full`` stage).** The quick study's model (zoo ``enc-s`` + ``lm-s``
assembled: step time does not depend on the weights), rows (every question of the tiny
train split, 4,000 scenes at 64 px, shuffled once from seed 0) and batch (32), three ways:

- ``today``: pivotlab's stage trainer with ``train.speed=stock``, the path before the fast
  one (TRL's collator and fused head, padded batches);
- ``fast``: the same stage trainer with ``train.speed=fast`` (``train/speed.py``);
- ``trl``: TRL's own ``SFTTrainer``, no pivotlab mixin, on the same rows and batch.

Every arm starts from a fresh trainer (so the fast arm prepares its rows within the timed
steps, as a real run does) and runs ``--steps`` optimizer steps; its figure is the median
over rounds of (steps - 1) / (wall time from the first step's end to the last's); the arms
take turns, the order rotating each round, so a busy machine slows all of them alike.
Samples/s counts rows; tokens/s counts the rows' real tokens as TRL's collator makes them
(no padding, before the fast path's trim), the same numerator for every arm. FLOPs come
from ``torch.utils.flop_counter.FlopCounterMode`` over a forward and backward of
``--flop-batches`` of each arm's own batches (every matrix product and attention, PaLM's
model-FLOPs convention): *executed* FLOP/s is what the arm computed, padding and all;
*useful* FLOP/s is the fast arm's FLOPs per row (the least work that gives the same
gradient) times the arm's rows per second. The ceiling is this machine's matrix multiply,
measured in the same run: fp32 and bf16 ``torch.matmul`` at the shapes of the step and at
2048^3, with the threads the arms use.

**Where a step goes** (``--profile``): each arm's step split by forward hooks on the tower,
the projector, the LM and the whole model (the LM head is the model's forward less its
parts), and by timing the trainer's ``compute_loss`` and ``training_step`` (the backward is
the second less the first) and the collator; the rest is the optimizer, the data loader and
the callbacks. Means over steps 2..N.

**One lever** (``--set KEY=VALUE``, ``--without LEVER``, ``--threads N``): every arm with
config overrides (a setting to measure: a data-loader worker, ``torch.compile``, a batch),
the fast arm without some of its levers (each lever's share), or another thread count.

**Two studies** (``--paired``): the Stage-1 model's accuracy in two study run folders (the
quick study with ``train.speed=stock`` in Stage 1's recipes and with the default), per category,
and the difference with the study's paired bootstrap over the same test questions.

**DPO** (``--dpo``): the Stage-2 step of the quick study (the same model, the tiny split's
preference pairs, 32 pairs a step), pivotlab's path (prefix sharing and the reference
cache) against TRL's stock ``DPOTrainer`` (``benchmarks/prefix_sharing.py``'s arms).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pivotlab.io import read_jsonl
from pivotlab.model import assemble
from pivotlab.model.parts import set_trainable
from pivotlab.train import load_config
from pivotlab.train.arguments import accumulation, process_state, trl_arguments
from pivotlab.train.packing import SEQUENCE_TOKENS
from pivotlab.train.stage_data import (
    SAMPLE_INDEX,
    keep_first,
    resolve_split,
    schedule,
    stage_records,
    trl_dataset,
)
from pivotlab.train.stages import stage_trainer
from pivotlab.world.generate import WorldConfig
from pivotlab.world.hf import conversations
from pivotlab.world.splits import cached_split
from prefix_sharing import StepClock, dpo_trainer, print_spent, time_method, time_module

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SFT_ARMS = ("today", "fast", "trl")
DPO_ARMS = ("stock", "both")
PEAK_SHAPES = ((1184, 128, 512), (1184, 512, 128), (2048, 2048, 2048))


# --- the machine's ceiling ------------------------------------------------------------------


def matmul_rate(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """FLOP/s of ``torch.matmul`` of an m x k by a k x n matrix (the median of five)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    start = time.perf_counter()
    a @ b
    once = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(seconds / 5 / once))
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(2 * m * k * n * reps / (time.perf_counter() - start))
    return statistics.median(rates)


def share(executed: float, peak: float) -> str:
    """``executed`` as a share of ``peak``; none where the peak is under it (bf16 emulated)."""
    return f"{executed / peak:.1%}" if peak >= executed else "-"


def peaks() -> dict[str, float]:
    """The best fp32 and bf16 matmul rate over ``PEAK_SHAPES`` (bf16 stops early: a CPU
    without native bf16 multiplies at a few GFLOP/s, and 2048^3 would take minutes)."""
    best = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates = []
        for shape in PEAK_SHAPES:
            rates.append(matmul_rate(dtype, *shape))
            print(
                f"  {name} matmul {'x'.join(map(str, shape)):>14s}: {rates[-1] / 1e9:8.1f} GFLOP/s"
            )
            if rates[-1] < 2e10:
                break
        best[name] = max(rates)
    return best


# --- the Stage-1 full stage -------------------------------------------------------------------


def stage1_config(speed: str, steps: int, overrides: list[str] = ()):
    """The quick study's Stage-1 ``full`` recipe (``configs/study/quick.yaml``) from the
    assembled zoo parts, for ``steps`` steps, with ``overrides`` (``--set``) last."""
    return load_config(
        CONFIGS / "tiny" / "full.yaml",
        [
            "model.init=null",
            "model.vision=zoo:enc-s",
            "model.lm=zoo:lm-s",
            "data.limit=null",
            "data.eval=null",
            f"train.steps={steps}",
            f"train.speed={speed}",
            "train.logging_steps=1000000",
            *overrides,
        ],
    )


def stage1_rows(cfg, seed: int = 0):
    """The stage's records (every question of the split, shuffled from the seed), the split
    and the schedule's first ``steps x batch`` record indices."""
    split = resolve_split(cfg.data.train_split)
    records = conversations(keep_first(stage_records(cfg, split), None, seed), cfg.data.turns)
    order = schedule(len(records), cfg.train.steps * cfg.train.batch_size, seed)
    return split.path, records, order


def sft_trainer(arm: str, model, processor, split, records, order, out: Path, steps: int,
                overrides: list[str] = ()):  # fmt: skip
    """The arm's trainer: the stage trainer as ``run_stage`` builds it, or TRL's own."""
    cfg = stage1_config("fast" if arm == "fast" else "stock", steps, overrides)
    data = trl_dataset(records, split, stage="full", eos=processor.tokenizer.eos_token, order=order)
    process_state(cfg)  # TRL's arguments need the processes set up, as run_stage does
    args = trl_arguments(cfg, out, steps, accumulation(cfg, 1))
    if arm != "trl":
        return stage_trainer(cfg, model, processor, args, data, None, out)
    args["learning_rate"] = cfg.learning_rates()["lm"]
    return SFTTrainer(
        model=model,
        args=SFTConfig(**args, assistant_only_loss=True),
        processing_class=processor,
        train_dataset=data.remove_columns(SAMPLE_INDEX),
    )


def batches(trainer, count: int) -> list[dict]:
    """The trainer's first ``count`` batches as its model receives them."""
    loader = iter(trainer.get_train_dataloader())
    taken = []
    for _ in range(count):
        batch = dict(next(loader))
        batch.pop(SAMPLE_INDEX, None)
        batch.pop(SEQUENCE_TOKENS, None)
        taken.append(batch)
    return taken


def flops_per_row(trainer, count: int, batch_size: int) -> float:
    """FLOPs of a forward and backward per row, over the trainer's first batches."""
    model = trainer.model
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        for batch in batches(trainer, count):
            trainer.compute_loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / (count * batch_size)


def real_tokens(trainer, count: int) -> float:
    """Real tokens per row of the stock collator's batches (attention mask sums)."""
    taken = batches(trainer, count)
    rows = sum(len(b["attention_mask"]) for b in taken)
    return sum(int(b["attention_mask"].sum()) for b in taken) / rows


def timed(trainer) -> float:
    """Optimizer steps per second after the first step."""
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    spans = clock.steps()[1:]
    return len(spans) / sum(spans)


def without_levers(names: list[str]) -> None:
    """Make the stage trainers choose their levers less ``names`` (the fast arm's ablation;
    packing needs the prepared rows, so without ``prepared`` nothing is packed)."""
    import pivotlab.train.stages as stages

    chosen = stages.choose_levers
    off = dict.fromkeys(names, False) | ({"packed": False} if "prepared" in names else {})

    def choose(cfg, on_cpu: bool):
        return dataclasses.replace(chosen(cfg, on_cpu), **off)

    stages.choose_levers = choose


def sft(args) -> None:
    cfg = stage1_config("stock", args.steps, args.set)
    split, records, order = stage1_rows(cfg)
    model, processor = assemble("zoo:enc-s", "zoo:lm-s", seed=0)
    set_trainable(model, cfg.parts)
    batch = cfg.train.batch_size
    print(
        f"Stage-1 full: zoo enc-s + lm-s, {len(records)} questions of {split.name}, batch "
        f"{batch}, {args.steps} steps an arm, {args.rounds} round(s), torch "
        f"{torch.get_num_threads()} thread(s), {torch.backends.cpu.get_cpu_capability()}"
        + (f", with {' '.join(args.set)}" if args.set else "")
        + (f", fast without {', '.join(args.without)}" if args.without else "")
    )
    arms = [a for a in args.arms.split(",") if a in SFT_ARMS]
    with tempfile.TemporaryDirectory() as tmp:
        flops, tokens = {}, None
        for arm in arms:
            trainer = sft_trainer(arm, copy.deepcopy(model), processor, split, records,
                                  order, Path(tmp) / f"f-{arm}", args.steps, args.set)  # fmt: skip
            flops[arm] = flops_per_row(trainer, args.flop_batches, cfg.train.per_device_batch_size)
            if arm != "fast" and tokens is None:
                tokens = real_tokens(trainer, args.flop_batches)
        rates: dict[str, list[float]] = {arm: [] for arm in arms}
        for round_ in range(args.rounds):
            turn = arms[round_ % len(arms) :] + arms[: round_ % len(arms)]
            for arm in turn:
                trainer = sft_trainer(arm, copy.deepcopy(model), processor, split, records,
                                      order, Path(tmp) / arm, args.steps, args.set)  # fmt: skip
                rates[arm].append(timed(trainer) * batch)
                del trainer
            print(f"  round {round_ + 1}: " + ", ".join(f"{a} {rates[a][-1]:.1f}" for a in arms))
    print("the machine's matrix multiply (this run's threads):")
    ceiling = peaks()
    useful = flops.get("fast", min(flops.values()))
    base = statistics.median(rates[arms[0]])
    print(
        f"\n{'arm':6s} {'samples/s':>10s} {'x ' + arms[0]:>9s} {'tokens/s':>9s} "
        f"{'GFLOP/row':>10s} {'executed GFLOP/s':>17s} {'useful GFLOP/s':>15s} "
        f"{'of fp32 peak':>13s} {'of bf16 peak':>13s}   rounds (samples/s)"
    )
    for arm in arms:
        rate = statistics.median(rates[arm])
        executed = rate * flops[arm]
        token_rate = f"{rate * tokens:9.0f}" if tokens else f"{'-':>9s}"  # none: fast arm alone
        print(
            f"{arm:6s} {rate:10.1f} {rate / base:8.2f}x {token_rate} "
            f"{flops[arm] / 1e9:10.3f} {executed / 1e9:17.1f} {rate * useful / 1e9:15.1f} "
            f"{executed / ceiling['fp32']:12.1%} {share(executed, ceiling['bf16']):>12s}   "
            + " ".join(f"{r:.1f}" for r in rates[arm])
        )
    print(
        f"ceiling: fp32 {ceiling['fp32'] / 1e9:.1f} GFLOP/s, bf16 {ceiling['bf16'] / 1e9:.1f} "
        f"GFLOP/s" + (f"; {tokens:.1f} real tokens per row" if tokens else "")
    )
    if ceiling["bf16"] < ceiling["fp32"]:
        print("bf16 multiplies slower than fp32 here: no native bf16 (AMX or AVX512-BF16) on this "
              "CPU, so fp32 is the ceiling and bf16 autocast cannot pay")  # fmt: skip


def timed_collator(collator, spent: dict):
    """``collator``, each call appended to ``spent["collator"]`` (wall seconds)."""

    def collate(rows):
        start = time.perf_counter()
        batch = collator(rows)
        spent.setdefault("collator", []).append(time.perf_counter() - start)
        return batch

    return collate


def profile(args) -> None:
    """Seconds per step in each part of a Stage-1 step, for each arm (means of steps 2..N)."""
    cfg = stage1_config("stock", args.steps, args.set)
    split, records, order = stage1_rows(cfg)
    model, processor = assemble("zoo:enc-s", "zoo:lm-s", seed=0)
    set_trainable(model, cfg.parts)
    with tempfile.TemporaryDirectory() as tmp:
        for arm in [a for a in args.arms.split(",") if a in SFT_ARMS]:
            trainer = sft_trainer(arm, copy.deepcopy(model), processor, split, records,
                                  order, Path(tmp) / arm, args.steps, args.set)  # fmt: skip
            spent: dict[str, list[float]] = {}
            backbone = trainer.model.model
            parts = {
                "vision tower": backbone.vision_tower,
                "projector": backbone.multi_modal_projector,
                "LM (no head)": backbone.language_model,
                "model forward (with head)": trainer.model,
            }
            for name, module in parts.items():
                time_module(module, name, spent)
            time_method(trainer, "compute_loss", "forward and loss", spent)
            time_method(trainer, "training_step", "forward, loss and backward", spent)
            trainer.data_collator = timed_collator(trainer.data_collator, spent)
            clock = StepClock()
            trainer.add_callback(clock)
            trainer.train()
            print_spent(arm, clock, spent, args.steps)


# --- the DPO step ---------------------------------------------------------------------------


def dpo(args) -> None:
    split = cached_split(WorldConfig.from_preset("tiny", split="train", n=4000, size=64, seed=0))
    pairs = keep_first(read_jsonl(split / "preferences.jsonl"), args.steps * args.batch, 0)
    data = trl_dataset(pairs, split, stage="post")
    model, processor = assemble("zoo:enc-s", "zoo:lm-s", seed=0)
    print(f"DPO: zoo enc-s + lm-s, {len(pairs)} pairs of {split.name}, {args.batch} pairs a step")
    rates: dict[str, list[float]] = {arm: [] for arm in DPO_ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PIVOTLAB_CACHE", str(Path(tmp) / "cache"))
        flops = {}
        for arm in DPO_ARMS:
            trainer = dpo_trainer(copy.deepcopy(model), processor, data, arm,
                                  Path(tmp) / f"f-{arm}", args.steps, args.batch)  # fmt: skip
            flops[arm] = flops_per_row(trainer, args.flop_batches, args.batch)
        for round_ in range(args.rounds):
            turn = DPO_ARMS[round_ % 2 :] + DPO_ARMS[: round_ % 2]
            for arm in turn:
                trainer = dpo_trainer(copy.deepcopy(model), processor, data, arm,
                                      Path(tmp) / arm, args.steps, args.batch)  # fmt: skip
                rates[arm].append(timed(trainer) * args.batch)
            print(
                f"  round {round_ + 1}: " + ", ".join(f"{a} {rates[a][-1]:.1f}" for a in DPO_ARMS)
            )
    ceiling = peaks()
    base = statistics.median(rates["stock"])
    print(f"\n{'arm':6s} {'pairs/s':>8s} {'x stock':>8s} {'GFLOP/pair':>11s} "
          f"{'executed GFLOP/s':>17s} {'of fp32 peak':>13s}")  # fmt: skip
    for arm in DPO_ARMS:
        rate = statistics.median(rates[arm])
        executed = rate * flops[arm]
        print(f"{arm:6s} {rate:8.1f} {rate / base:7.2f}x {flops[arm] / 1e9:11.3f} "
              f"{executed / 1e9:17.1f} {executed / ceiling['fp32']:12.1%}")  # fmt: skip


# --- two quick studies ------------------------------------------------------------------------


def paired(runs: list[Path]) -> None:
    """Stage 1 of two study runs on the same test questions: accuracy per category and the
    paired bootstrap difference (second minus first)."""
    from pivotlab.study.stats import paired_accuracy_difference

    rows = [read_jsonl(run / "seed0" / "eval" / "stage1" / "predictions.jsonl") for run in runs]
    agree = sum(a["prediction"] == b["prediction"] for a, b in zip(*rows, strict=True))
    print(f"{runs[0]} -> {runs[1]}: {len(rows[0])} questions, same reply on {agree}")
    for category in sorted({r["category"] for r in rows[0]}):
        accuracy = [statistics.mean(r["correct"] for r in rs if r["category"] == category)
                    for rs in rows]  # fmt: skip
        diff = paired_accuracy_difference({0: rows[0]}, {0: rows[1]}, category=category)
        interval = f"[{diff['ci_low']:+.1%}, {diff['ci_high']:+.1%}]"
        print(f"  {category:15s} {accuracy[0]:.1%} -> {accuracy[1]:.1%}: {diff['diff']:+.1%} "
              f"{interval} over {diff['n_items']} questions")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dpo", action="store_true", help="the DPO step instead of SFT")
    parser.add_argument("--profile", action="store_true", help="where each SFT arm's step goes")
    parser.add_argument("--paired", nargs=2, type=Path, metavar="RUN", help="two study runs")
    parser.add_argument("--arms", default=",".join(SFT_ARMS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every arm (a lever to measure)")  # fmt: skip
    parser.add_argument("--without", nargs="*", default=[], metavar="LEVER",
                        choices=["prepared", "packed", "supervised_head", "patch_matmul"],
                        help="the fast arm without these levers (an ablation)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per arm")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="DPO: pairs per step")
    parser.add_argument("--flop-batches", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.without:
        without_levers(args.without)
    if args.paired:
        paired(args.paired)
    elif args.profile:
        profile(args)
    else:
        dpo(args) if args.dpo else sft(args)


if __name__ == "__main__":
    main()
