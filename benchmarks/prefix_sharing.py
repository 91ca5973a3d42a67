"""Prefix sharing and the reference cache against TRL's stock DPO path, in one process.

    python benchmarks/prefix_sharing.py --init runs/tiny/full/final --split runs/world/test
    python benchmarks/prefix_sharing.py --paper-shape    # 576 visual tokens, 64-token answers
    python benchmarks/prefix_sharing.py --profile --init ... --split ...   # where a stock step goes
    python benchmarks/prefix_sharing.py --curves --init ... --split ...    # 60-step runs, both ways

Every arm is pivotlab's ``StageDPOTrainer`` (TRL's ``DPOTrainer`` with the stage mixin,
whose bookkeeping is the same in every arm) on the same model, records, order, batch and
steps; the arms differ only in ``prefix_sharing`` and ``reference_cache``. ``stock`` is
TRL's path: chosen and rejected as two full sequences, the image encoded twice, and a live
reference model. The arms run in turns, the order rotating each round, so a busy machine
slows all of them alike; each arm's figure is the median over rounds of its seconds per
optimizer step (wall time from one step's end to the next, the first step of each run
left out). The reference cache's one pass is timed apart, once.

Threads: on a machine shared with other jobs, every multi-threaded op waits for its
threads to be scheduled, so step time follows the number of ops more than their size;
``--threads 1`` measures the arithmetic (docs/performance.md has both).

Peak memory: each arm trains ``--memory-steps`` steps in a fresh Python process; the figure
is the process's peak resident set during ``train()`` (Linux ``VmHWM``, reset just before
through ``/proc/self/clear_refs``; ``ru_maxrss`` would carry the parent's peak across
``exec``) minus its resident set just before: what training adds on top of the loaded
model(s). The models' own tensors are listed apart (``resident MiB``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging
from trl import DPOConfig

from pivotlab.io import read_jsonl
from pivotlab.model import assemble, load, save
from pivotlab.train.prefix import plan_sharing
from pivotlab.train.stage_data import SAMPLE_INDEX, keep_first, trl_dataset
from pivotlab.train.trainers import StageDPOTrainer
from pivotlab.world import WorldConfig, generate

ARMS = {
    "stock": (False, False),
    "shared": (True, False),
    "cached": (False, True),
    "both": (True, True),
}
PAPER_TOKENS = 576  # a 24 x 24 grid: LLaVA-1.5 (CLIP ViT-L/14 @336); here 8-px patches @192
PAPER_ANSWER = 64


class StepClock(TrainerCallback):
    """Wall seconds between consecutive optimizer steps' ends."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]


def dpo_trainer(model, processor, data, arm: str, out: Path, steps: int, batch: int):
    """A stage DPO trainer as ``run_stage`` builds it (fp32, frozen copy as reference)."""
    sharing, cache = ARMS[arm]
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        activation_checkpointing=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        save_strategy="no",
        logging_steps=10**6,
    )
    return StageDPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        processing_class=processor,
        train_dataset=data,
        part_learning_rates={"vision": 1e-5, "projector": 1e-5, "lm": 1e-5},
        prefix_sharing=sharing,
        reference_cache=cache,
    )


# --- data -------------------------------------------------------------------------------


def world_data(split: Path, n: int, seed: int = 0):
    records = keep_first(read_jsonl(split / "preferences.jsonl"), n, seed)
    return records, trl_dataset(records, split, stage="post")


def paper_shape(root: Path, pairs: int):
    """A tiny tower at 192 px with 8-px patches (576 visual tokens), a tiny LM, and
    world questions whose chosen and rejected answers are 64 tokens long."""
    split = root / "world-192"
    if not (split / "manifest.json").is_file():
        generate(WorldConfig(split="train", n=max(8, pairs), seed=0, size=192, probe_n=0), split)
    model, processor = assemble("tiny-siglip", "tiny-qwen2", image_size=192, seed=0)
    tokenizer = processor.tokenizer
    records = keep_first(read_jsonl(split / "preferences.jsonl"), pairs, 0)
    for record in records:
        for key in ("chosen", "rejected"):
            words = (record[key] + " ") * PAPER_ANSWER
            ids = tokenizer(words, add_special_tokens=False)["input_ids"][: PAPER_ANSWER - 2]
            record[key] = tokenizer.decode(ids).strip()
    folder = root / "paper-model"
    save(model, processor, folder)
    return folder, split, records


# --- timing -----------------------------------------------------------------------------


def token_shares(trainer, data, batch: int) -> dict:
    """Of a batch's tokens, the share the shared forward does not compute again: over real
    tokens, over padded slots (what a dense forward computes), and the images."""
    collator = trainer.data_collator
    real = shared_real = slots = shared_slots = images = distinct = 0
    for start in range(0, len(data) - batch + 1, batch):
        b = collator([data[i] for i in range(start, start + batch)])
        b.pop(SAMPLE_INDEX, None)
        labels = b["input_ids"].masked_fill(b["completion_mask"] == 0, -100)
        image_token = trainer.model.config.image_token_id
        plan = plan_sharing(
            b["input_ids"], b["attention_mask"], labels, b["pixel_values"], None, image_token
        )
        lengths = [len(r.tokens) for r in plan.rows]
        heads = [g.shared for g in plan.groups]
        tails = [len(r.tokens) - plan.groups[r.group].shared for r in plan.rows]
        real += sum(lengths)
        shared_real += sum(heads) + sum(tails)
        slots += b["input_ids"].numel()
        shared_slots += len(heads) * max(heads) + sum(1 for t in tails if t) * max(tails)
        images += b["pixel_values"].shape[0]
        distinct += len(plan.distinct_images)
    return {
        "real_tokens_shared": 1 - shared_real / real,
        "padded_slots_saved": 1 - shared_slots / slots,
        "images_saved": 1 - distinct / images,
        "mean_tokens_per_row": real / (images or 1),
    }


def timed_runs(folder: Path, data, arms: list[str], rounds: int, steps: int, batch: int):
    """Seconds per optimizer step of each arm in each round (first step of a run dropped)."""
    model, processor = load(folder)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            order = arms[round_ % len(arms) :] + arms[: round_ % len(arms)]
            for arm in order:
                trainer = dpo_trainer(
                    copy.deepcopy(model), processor, data, arm, Path(tmp) / arm, steps, batch
                )
                clock = StepClock()
                trainer.add_callback(clock)
                trainer.train()
                times[arm].append(statistics.median(clock.steps()[1:]))
                del trainer
            print(f"round {round_ + 1}: " + ", ".join(f"{a} {times[a][-1]:.3f}" for a in arms))
    return times


def cache_pass_seconds(folder: Path, data, batch: int) -> float:
    """Wall seconds to build a trainer whose reference cache is computed (an empty cache
    folder), less the same build with the cache already there."""
    model, processor = load(folder)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("PIVOTLAB_CACHE")
        os.environ["PIVOTLAB_CACHE"] = str(Path(tmp) / "cache")
        try:
            for _ in range(2):  # computed, then read
                start = time.perf_counter()
                dpo_trainer(copy.deepcopy(model), processor, data, "both", Path(tmp), 1, batch)
                seconds.append(time.perf_counter() - start)
        finally:
            os.environ["PIVOTLAB_CACHE"] = saved or ""
    return seconds[0] - seconds[1]


def memory_subprocess(arm: str) -> dict:
    """MiB the peak resident set grows by while ``arm`` trains, in a fresh process, and
    MiB of model tensors it keeps."""
    command = [sys.executable, __file__, "--memory-arm", arm, *sys.argv[1:]]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _peak_resident() -> int:
    """Bytes: the process's resident-set high-water mark (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def _model_bytes(*models) -> int:
    return sum(
        p.numel() * p.element_size() for m in models if m is not None for p in m.parameters()
    )


def memory_arm(folder: Path, data, arm: str, steps: int, batch: int) -> None:
    """(child process) Train ``arm``; print its peak resident-set growth and the bytes of
    the models it keeps."""
    model, processor = load(folder)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = dpo_trainer(model, processor, data, arm, Path(tmp), steps, batch)
        resident = _model_bytes(trainer.model, trainer.ref_model)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark here
        before = psutil.Process().memory_info().rss
        trainer.train()
        peak = _peak_resident()
    print(
        json.dumps(
            {"arm": arm, "peak_mib": (peak - before) / 2**20, "models_mib": resident / 2**20}
        )
    )


def report(times: dict, memory: dict, shares: dict, cache_s: float | None, label: str) -> None:
    stock = statistics.median(times["stock"])
    print(f"\n{label}")
    print(
        "  shared tokens: {real_tokens_shared:.1%} of real tokens, {padded_slots_saved:.1%} "
        "of padded slots, {images_saved:.1%} of images; {mean_tokens_per_row:.0f} tokens "
        "per sequence".format(**shares)
    )
    print(
        f"  {'arm':8s} {'s/step':>8s} {'x stock':>8s} {'peak MiB':>9s} {'models MiB':>11s}   rounds"
    )
    for arm, values in times.items():
        median = statistics.median(values)
        peak, models = memory[arm]["peak_mib"], memory[arm]["models_mib"]
        rounds = " ".join(f"{v:.3f}" for v in values)
        print(
            f"  {arm:8s} {median:8.3f} {stock / median:7.2f}x {peak:9.0f} {models:11.1f}   {rounds}"
        )
    if cache_s is not None:
        print(f"  reference cache pass (once per records + reference): {cache_s:.1f} s")


# --- profile and curves -----------------------------------------------------------------


def profile(folder: Path, data, arm: str, steps: int, batch: int) -> None:
    """Seconds per step in each part of a DPO step (forward hooks; means over steps 2..N)."""
    model, processor = load(folder)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = dpo_trainer(model, processor, data, arm, Path(tmp), steps, batch)
        spent: dict[str, list[float]] = {}
        models = {"policy": trainer.model, "reference": trainer.ref_model}
        for role, m in models.items():
            if m is None:
                continue
            backbone = m.model
            parts = {
                "vision": backbone.vision_tower,
                "projector": backbone.multi_modal_projector,
                "LM": backbone.language_model,
                "forward": m,
            }
            for name, module in parts.items():
                time_module(module, f"{role} {name}", spent)
        time_method(trainer, "compute_loss", "policy+reference forward, loss", spent)
        time_method(trainer, "training_step", "training_step (forward+backward)", spent)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
    print_spent(arm, clock, spent, steps)


def print_spent(arm: str, clock: StepClock, spent: dict, steps: int) -> None:
    """The mean optimizer step (steps 2..N) and each timed part's time in it."""
    step = statistics.mean(clock.steps()[1:])
    print(f"{arm}: {step * 1000:.1f} ms per optimizer step (mean of steps 2..{steps})")
    for name, values in spent.items():
        per_step = sum(values[len(values) // steps :]) / (steps - 1)
        print(f"  {name:36s} {per_step * 1000:7.1f} ms  {per_step / step:6.1%}")


def time_module(module, name: str, spent: dict) -> None:
    """Append each forward of ``module`` to ``spent[name]`` (wall seconds)."""

    def before(*_):
        module._started = time.perf_counter()

    def after(*_):
        spent.setdefault(name, []).append(time.perf_counter() - module._started)

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def time_method(trainer, method: str, name: str, spent: dict) -> None:
    """Append each call of ``trainer.<method>`` to ``spent[name]`` (wall seconds)."""
    inner = getattr(trainer, method)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        spent.setdefault(name, []).append(time.perf_counter() - start)
        return result

    setattr(trainer, method, timed)


def curves(init: str, split: Path, steps: int, out: Path) -> None:
    """The tiny post-dpo stage for ``steps`` steps with both switches off and on; the
    per-step loss and reward margin of both, and their largest differences."""
    from pivotlab.train import load_config, run_stage

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "post-dpo.yaml"
    logs = {}
    for arm in ("stock", "both"):
        sharing, cache = ARMS[arm]
        overrides = [
            f"model.init={init}",
            f"data.train={split}",
            "data.eval=null",
            f"train.steps={steps}",
            "train.logging_steps=1",
            f"post.prefix_sharing={str(sharing).lower()}",
            f"post.reference_cache={str(cache).lower()}",
        ]
        result = run_stage(load_config(config, overrides), out / arm, overwrite=True)
        rows = [json.loads(line) for line in (out / arm / "metrics.jsonl").read_text().splitlines()]
        logs[arm] = {
            metric: {r["step"]: r["value"] for r in rows if r["metric"] == metric}
            for metric in ("loss", "rewards/margins", "rewards/accuracies", "grad_norm")
        }
        print(f"{arm}: {result.summary['wall_s'] / steps:.3f} s/step (summary.json)")
    for metric in logs["stock"]:
        a, b = logs["stock"][metric], logs["both"][metric]
        gaps = [abs(a[s] - b[s]) for s in a if s in b]
        print(f"{metric:20s} max |stock - both| over {len(gaps)} steps: {max(gaps):.2e}")
        for s in sorted({*sorted(a)[:: max(1, len(a) // 6)], max(a)}):
            print(f"  step {s:3d}: stock {a[s]: .6f}  both {b.get(s, float('nan')): .6f}")


# --- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", help="a Stage-1 MLLM folder (the tiny preset's full/final)")
    parser.add_argument("--split", type=Path, help="a world split with preferences.jsonl")
    parser.add_argument("--paper-shape", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--curves", action="store_true")
    parser.add_argument("--arms", default="stock,both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=32, help="pairs per step")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--memory-only", action="store_true", help="skip the timed rounds")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--memory-arm", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pivotlab-bench")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("PIVOTLAB_CACHE", str(args.work / "cache"))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.curves:
        return curves(args.init, args.split, 60 if args.steps == 6 else args.steps, args.work)
    if args.paper_shape:
        folder, split, records = paper_shape(args.work, args.steps * args.batch)
        data = trl_dataset(records, split, stage="post")
        label = f"paper-like shape: {PAPER_TOKENS} visual tokens, {PAPER_ANSWER}-token answers"
    else:
        folder = Path(args.init)
        records, data = world_data(args.split, args.steps * args.batch)
        label = f"tiny preset: {folder}, {args.split}"
    if args.memory_arm:
        return memory_arm(folder, data, args.memory_arm, args.memory_steps, args.batch)
    arms = args.arms.split(",")
    if args.profile:
        for arm in arms:
            profile(folder, data, arm, args.steps, args.batch)
        return None
    if args.memory_only:
        for arm in arms:
            print(arm, memory_subprocess(arm))
        return None
    model, processor = load(folder)
    with tempfile.TemporaryDirectory() as tmp:
        probe = dpo_trainer(model, processor, data, "stock", Path(tmp), 1, args.batch)
        shares = token_shares(probe, data, args.batch)
    cache_s = cache_pass_seconds(folder, data, args.batch) if "both" in arms else None
    times = timed_runs(folder, data, arms, args.rounds, args.steps, args.batch)
    memory = {arm: memory_subprocess(arm) for arm in arms}
    report(times, memory, shares, cache_s, label)
    return None


if __name__ == "__main__":
    main()
