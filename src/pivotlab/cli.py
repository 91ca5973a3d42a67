"""The ``pivotlab`` command line: ``pivotlab <verb> ...``.

    pivotlab world generate --out runs/world/train --split train --n 2000 --seed 0 --size 64
    pivotlab world show runs/world/train --out sheet.png
    pivotlab world audit --train runs/world/train --test runs/world/test
    pivotlab model build --vision tiny-siglip --lm tiny-qwen2 --out runs/models/tiny
    pivotlab train --config configs/tiny/full.yaml --out runs/tiny/full train.steps=100
    pivotlab evaluate --model runs/models/tiny --data runs/world/test --out runs/eval/tiny
    pivotlab plan --config configs/paper/post-dpo.yaml --gpus 8 --gpu h100
    pivotlab analyze all --model sft=runs/sft/final --model dpo=runs/dpo/final \
        --data runs/world/train --eval-data runs/world/test --out runs/analysis

Heavy libraries (torch, transformers) are imported inside the verbs that need them, so
``pivotlab --help`` and the world verbs start fast.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pivotlab import __version__
from pivotlab.cache import cache_root
from pivotlab.configtree import add_options, comma_separated, from_options
from pivotlab.console import Progress, log_beside, quiet_verb
from pivotlab.errors import PivotlabError, one_line
from pivotlab.io import folder_lock
from pivotlab.model.folders import check_saved_mllm

PROG = "pivotlab"

# Exit statuses, the same for every verb (README, "Exit status").
EXIT_PROBLEMS = 1  # data check: the data has problems
EXIT_USAGE = 2  # a bad argument or input, named in one line
EXIT_INTERNAL = 3  # a bug: one line, the traceback in a log file
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class UsageError(Exception):
    """A bad command line; reported as one line, exit status 2."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks and staging-folder
    cleanups run as they do for Ctrl-C (the default action kills without unwinding)."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, and help given as a callable computed only when
    shown: listing a registry (world presets, tasks, study presets) then costs nothing on
    the commands that do not print help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help() if callable(action.help) else action.help or ""
        shown = action.default not in (None, False, (), [], argparse.SUPPRESS)
        if action.option_strings and shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _world_presets() -> str:
    from pivotlab.world.generate import PRESETS

    return ", ".join(PRESETS)


def _world_tasks() -> str:
    from pivotlab.world.questions import TASK_NAMES

    return ", ".join(TASK_NAMES)


def _study_presets() -> str:
    from pivotlab.study.presets import known_presets

    return ", ".join(known_presets()) or "none found"


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as a single line instead of usage + message, and shows
    defaults in help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        for action in self._actions:
            if callable(action.help):
                action.help = action.help()
        return super().format_help()

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _add_world(verbs: argparse._SubParsersAction) -> None:
    world = verbs.add_parser("world", help="generate and inspect the synthetic visual world")
    world_verbs = world.add_subparsers(dest="world_verb", required=True, parser_class=_Parser)

    gen = world_verbs.add_parser(
        "generate", help="write one split: images, masks, questions, pairs, probes"
    )
    gen.add_argument("--out", type=Path, required=True, help="output folder for the split")
    gen.add_argument(
        "--split", default="train", help="train, val, test or holdout (default: train)"
    )
    gen.add_argument("--n", type=int, default=2000, help="number of scenes (default: 2000)")
    gen.add_argument("--seed", type=int, default=0, help="root seed of the world (default: 0)")
    gen.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    gen.add_argument(
        "--preset",
        default="default",
        # Checked by WorldConfig.from_preset, which names the presets: importing the world
        # generator to pass `choices` would cost every command 0.16 s at start-up.
        help=lambda: (
            f"named world, one of: {_world_presets()} (tiny: objects in a 2 x 2 layout, "
            "open answers, the general and vision-centric tasks; tiny16: the same on a 4 x 4 "
            "blocks layout); the options below override it (default: default)"
        ),
    )
    gen.add_argument(
        "--grid", type=int, default=None, help="layout cells per side (default: the preset's)"
    )
    gen.add_argument(
        "--layout",
        default=None,
        help="cells (one object per cell, with jitter) or blocks (objects on whole cells, "
        "large ones on 2 x 2; a grid of 4 or more) (default: the preset's)",
    )
    gen.add_argument(
        "--tasks",
        type=comma_separated,
        default=None,
        help=lambda: f"comma-separated task names from: {_world_tasks()} (default: the preset's)",
    )
    gen.add_argument(
        "--probe-n",
        type=int,
        default=None,
        help="classification-probe images (default: as many as --n)",
    )
    gen.add_argument(
        "--mc-fraction",
        type=float,
        default=None,
        help="share of questions asked as multiple choice (default: the preset's)",
    )
    gen.add_argument(
        "--rationale-fraction",
        type=float,
        default=None,
        help="share of preference pairs whose answers carry a one-sentence rationale "
        "(default: the preset's)",
    )
    gen.add_argument(
        "--pair-fraction",
        type=float,
        default=None,
        help="share of scene pairs made into MMVP twins (default: the preset's)",
    )
    gen.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes; output is identical for any number",
    )
    gen.add_argument("--overwrite", action="store_true", help="replace an existing split in --out")
    gen.set_defaults(handler=_world_generate)

    show = world_verbs.add_parser(
        "show", help="save a contact sheet (image | semantic | instances)"
    )
    show.add_argument("split_dir", type=Path, help="a folder written by 'pivotlab world generate'")
    show.add_argument("--out", type=Path, required=True, help="PNG file to write")
    show.add_argument("--n", type=int, default=12, help="number of scenes (default: 12)")
    show.set_defaults(handler=_world_show)

    audit = world_verbs.add_parser(
        "audit", help="text-only baseline: can questions be answered without the image?"
    )
    audit.add_argument(
        "--train", type=Path, required=True, help="split to fit the text-only classifier on"
    )
    audit.add_argument("--test", type=Path, required=True, help="split to score it on")
    audit.set_defaults(handler=_world_audit)


def _world_generate(args: argparse.Namespace) -> None:
    from pivotlab.world import WorldConfig, generate

    chosen = {
        name: getattr(args, name)
        for name in (
            "grid",
            "layout",
            "tasks",
            "mc_fraction",
            "rationale_fraction",
            "pair_fraction",
        )
        if getattr(args, name) is not None
    }
    cfg = WorldConfig.from_preset(
        args.preset,
        split=args.split,
        n=args.n,
        seed=args.seed,
        size=args.size,
        probe_n=args.probe_n,
        **chosen,
    )
    report = generate(cfg, args.out, workers=args.workers, overwrite=args.overwrite)
    print(
        f"wrote {report.scenes} scenes, {report.questions} questions and {report.preferences} "
        f"preference pairs to {report.out} in {report.seconds:.1f}s "
        f"({report.scenes / report.seconds:.0f} scenes/s with probes)"
    )


def _world_show(args: argparse.Namespace) -> None:
    from pivotlab.world.sheet import contact_sheet, legend

    if not (args.split_dir / "scenes.jsonl").is_file():
        raise UsageError(
            f"{PROG} world show: {args.split_dir} has no scenes.jsonl (not a world split)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(args.split_dir, n=args.n).save(args.out)
    print(f"wrote {args.out} (semantic classes: {legend()})")


def _world_audit(args: argparse.Namespace) -> None:
    from pivotlab.data.formats import read_world_file
    from pivotlab.world.audit import text_only_baseline

    records = []
    for split_dir in (args.train, args.test):
        if not (split_dir / "vqa.jsonl").is_file():
            raise UsageError(
                f"{PROG} world audit: {split_dir} has no vqa.jsonl (not a world split)"
            )
        records.append(read_world_file(split_dir, "vqa.jsonl"))
    scores = text_only_baseline(*records)
    print(f"{'group':28s} {'n':>6s} {'text-only':>9s} {'chance':>7s} {'above':>6s}")
    for score in scores.values():
        print(
            f"{score.group:28s} {score.n:6d} {100 * score.accuracy:9.1f} {100 * score.chance:7.1f} "
            f"{100 * score.above_chance:+6.1f}"
        )


def _add_model(verbs: argparse._SubParsersAction) -> None:
    model = verbs.add_parser("model", help="assemble, save, detach and transplant MLLMs")
    model_verbs = model.add_subparsers(dest="model_verb", required=True, parser_class=_Parser)

    build = model_verbs.add_parser("build", help="assemble a Llava MLLM and save it")
    build.add_argument(
        "--vision",
        required=True,
        help="vision preset, zoo part (zoo:enc-s), local folder or hub id",
    )
    build.add_argument(
        "--lm", required=True, help="LM preset, zoo part (zoo:lm-s), local folder or hub id"
    )
    build.add_argument("--out", type=Path, required=True, help="folder to save the MLLM in")
    build.add_argument("--image-size", type=int, default=None, help="image side (presets only)")
    build.add_argument(
        "--feature-layer",
        type=int,
        default=-2,
        help="tower hidden state fed to the projector (default: -2, penultimate)",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the new weights (default: 0)")
    _add_trust_remote_code(build)
    build.set_defaults(handler=_model_build)

    export = model_verbs.add_parser(
        "export-encoder", help="detach the vision tower as a plain HF model"
    )
    export.add_argument("--model", type=Path, required=True, help="a saved MLLM folder")
    export.add_argument("--out", type=Path, required=True, help="folder for the encoder")
    export.add_argument(
        "--with-projector", action="store_true", help="also save the projector weights"
    )
    export.set_defaults(handler=_model_export)

    graft = model_verbs.add_parser("transplant", help="a fresh MLLM around an exported encoder")
    graft.add_argument("--encoder", type=Path, required=True, help="folder from export-encoder")
    graft.add_argument(
        "--lm", required=True, help="LM preset, zoo part (zoo:lm-s), local folder or hub id"
    )
    graft.add_argument("--out", type=Path, required=True, help="folder to save the MLLM in")
    graft.add_argument("--seed", type=int, default=0, help="seed of the new projector (default: 0)")
    graft.set_defaults(handler=_model_transplant)

    parts = model_verbs.add_parser("parts", help="print the parts table of a saved MLLM")
    parts.add_argument("--model", type=Path, required=True, help="a saved MLLM folder")
    parts.set_defaults(handler=_model_parts)


def _add_trust_remote_code(verb: argparse.ArgumentParser) -> None:
    verb.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let hub or folder models run Python code they ship (default: off)",
    )


def _refuse_non_empty(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{PROG}: {out} is not empty; choose a new folder")


def _model_build(args: argparse.Namespace) -> None:
    from pivotlab.model import assemble, format_parts_table, parts_table, save

    _refuse_non_empty(args.out)
    model, processor = assemble(
        args.vision,
        args.lm,
        feature_layer=args.feature_layer,
        image_size=args.image_size,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
    )
    save(model, processor, args.out)
    print(format_parts_table(parts_table(model)))
    print(f"saved {args.out} ({model.config.image_seq_length} visual tokens per image)")


def _model_export(args: argparse.Namespace) -> None:
    _refuse_non_empty(args.out)
    check_saved_mllm(args.model)
    from pivotlab.model import export_encoder

    info = export_encoder(args.model, args.out, with_projector=args.with_projector)
    print(
        f"saved {args.out}: {info.kept_blocks} of {info.original_blocks} blocks "
        f"(the MLLM's feature layer {info.feature_layer_in_mllm}); features = {info.features}"
        + ("; drop the first (CLS) token" if info.drop_cls else "")
    )


def _model_transplant(args: argparse.Namespace) -> None:
    from pivotlab.model import format_parts_table, parts_table, transplant

    _refuse_non_empty(args.out)
    model = transplant(args.encoder, args.lm, args.out, seed=args.seed)
    print(format_parts_table(parts_table(model)))
    print(f"saved {args.out}")


def _model_parts(args: argparse.Namespace) -> None:
    check_saved_mllm(args.model)
    from pivotlab.model import format_parts_table, load, parts_table

    model, _ = load(args.model)
    print(format_parts_table(parts_table(model)))


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show what the libraries print live, instead of only in OUT.log beside --out",
    )


def _add_evaluate(verbs: argparse._SubParsersAction) -> None:
    from pivotlab.evaluate.config import EvalConfig

    run = verbs.add_parser("evaluate", help="VQA accuracy by category of a saved MLLM on a split")
    add_options(run, EvalConfig)
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    _add_verbose(run)
    run.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> None:
    from pivotlab.evaluate.config import EvalConfig

    cfg = from_options(EvalConfig, args)
    with folder_lock(cfg.out):
        if (Path(cfg.out) / "predictions.jsonl").exists() and not args.overwrite:
            raise UsageError(f"{PROG}: {cfg.out} already holds an evaluation; pass --overwrite")
        check_saved_mllm(cfg.model)
        from pivotlab.evaluate import evaluate

        progress = Progress()
        with quiet_verb(log_beside(cfg.out), "evaluating", progress, args.verbose):
            report = evaluate(cfg, progress=progress)
    print(f"{'metric':14s} {'category':15s} {'task':8s} {'value':>6s} {'95% CI':>15s} {'n':>6s}")
    for row in report.metrics:
        if "task" in row and row["metric"] == "accuracy":
            continue
        interval = f"[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"
        print(
            f"{row['metric']:14s} {row.get('category', '-'):15s} {row.get('task', '-'):8s} "
            f"{100 * row['value']:6.1f} {interval:>15s} {row['n']:6d}"
        )
    print(f"wrote {cfg.out} ({len(report.predictions)} questions, {report.items_per_second:.1f}/s)")


def _add_zoo(verbs: argparse._SubParsersAction) -> None:
    zoo = verbs.add_parser(
        "zoo", help="pretrained tiny parts for the world (encoders, teacher, LMs)"
    )
    zoo_verbs = zoo.add_subparsers(dest="zoo_verb", required=True, parser_class=_Parser)
    for name, help_text in (
        ("build", "train what is missing into the cache"),
        ("list", "show the cached parts with their compute and quality"),
    ):
        verb = zoo_verbs.add_parser(name, help=help_text)
        verb.add_argument(
            "--zoo",
            default="default",
            help="zoo recipe: default, tokens16 (the tiny16 world's, 16 visual tokens) or tiny "
            "(seconds, for tests) (default: default)",
        )
        verb.add_argument(
            "--cache",
            type=Path,
            default=None,
            help="cache folder (default: $PIVOTLAB_CACHE/zoo or ~/.cache/pivotlab/zoo)",
        )
        verb.add_argument("--seed", type=int, default=0, help="pretraining seed (default: 0)")
        if name == "build":
            verb.add_argument(
                "--parts",
                type=comma_separated,
                default=None,
                help="comma-separated parts (default: all)",
            )
            verb.add_argument("--force", action="store_true", help="rebuild even if cached")
        verb.set_defaults(handler=_zoo_build if name == "build" else _zoo_list)


CELL_SUMMARY = ("color", "shape", "size")


def _zoo_table(zoo: str, cache: Path | None, seed: int) -> None:
    from pivotlab.zoo import quality
    from pivotlab.zoo.build import manifests, unbuilt
    from pivotlab.zoo.checks import checks, probes_outdated

    found = manifests(zoo, cache, seed)
    header = ("part", "class", "params", "seconds", "GFLOPs", "samples")
    print("{:8s} {:18s} {:>9s} {:>8s} {:>9s} {:>8s}  quality".format(*header))
    for part, manifest in found.items():
        compute, measured = manifest["compute"], manifest["quality"]
        if quality.HELDOUT_PERPLEXITY in measured:
            summary = f"held-out perplexity {measured[quality.HELDOUT_PERPLEXITY]:.2f}"
            if quality.SYMBOLIC_ACCURACY in measured:
                summary += f", symbolic scenes {measured[quality.SYMBOLIC_ACCURACY]['all']:.3f}"
        elif probes_outdated(manifest):
            summary = "measured with older probes: `pivotlab zoo build` measures it again"
        else:
            probe = measured[quality.LINEAR_PROBE_SHAPE_COLOR]
            shape = measured[quality.LINEAR_PROBE_SHAPE]
            miou = measured[quality.SEGMENTATION_MIOU]
            recall = measured[quality.SEGMENTATION_PATCH_RECALL]
            summary = (
                f"linear probe {probe:.3f} (shape {shape:.3f}), "
                f"seg mIoU {miou:.3f} recall {recall:.3f}"
            )
            if quality.cell_probe_key("shape") in measured:
                cells = "/".join(f"{measured[quality.cell_probe_key(a)]:.2f}" for a in CELL_SUMMARY)
                summary += f", cells {cells} (colour/shape/size)"
        size = f"{manifest['parameters']:9,d}"
        print(
            f"{part:8s} {manifest['class']:18s} {size} {compute['seconds']:8.0f} "
            f"{compute['flops'] / 1e9:9.1f} {compute['samples']:8d}  {summary}"
        )
    which = "" if zoo == "default" else f" --zoo {zoo}"
    for part, what in unbuilt(zoo, cache, seed).items():
        print(f"{part:8s} not built; `pivotlab zoo build --parts {part}{which}`: {what}")
    for check in checks(found):
        print(f"check: {'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")


def _zoo_build(args: argparse.Namespace) -> int:
    """Exit 1 when a quality ordering fails, as ``data check`` does when it finds problems:
    the parts are built and cached, but the zoo does not order as it promises."""
    from pivotlab.zoo.build import build, manifests
    from pivotlab.zoo.checks import checks
    from pivotlab.zoo.recipes import PARTS, ZOOS

    build(args.parts or PARTS, args.zoo, args.cache, force=args.force, seed=args.seed)
    _zoo_table(args.zoo, args.cache, args.seed)
    failed = [c for c in checks(manifests(args.zoo, args.cache, args.seed)) if not c.passed]
    if failed and ZOOS[args.zoo].enforce_checks:
        names = "; ".join(f"{c.name} ({c.detail})" for c in failed)
        print(f"{PROG}: zoo checks failed: {names}; the parts are cached", file=sys.stderr)
        return 1
    return 0


def _zoo_list(args: argparse.Namespace) -> None:
    _zoo_table(args.zoo, args.cache, args.seed)


def _add_train(verbs: argparse._SubParsersAction) -> None:
    train = verbs.add_parser(
        "train", help="run one training stage (align, full, post) from a YAML config"
    )
    train.add_argument("--config", type=Path, required=True, help="stage config (YAML)")
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument(
        "--overwrite", action="store_true", help="replace a run with another config in --out"
    )
    _add_trust_remote_code(train)
    _add_verbose(train)
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. post.beta=0.2"
    )
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> None:
    from pivotlab.train import load_config, run_stage

    cfg = load_config(args.config, args.overrides)
    progress = Progress()
    with (
        folder_lock(args.out),
        quiet_verb(log_beside(args.out), f"training {cfg.stage}", progress, args.verbose),
    ):
        result = run_stage(
            cfg,
            args.out,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
            progress=progress,
        )
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    summary = result.summary
    heldout = ", ".join(
        f"{k} {v:.4g}" for k, v in summary["heldout"].items() if k in HELDOUT_HEADLINE
    )
    print(
        f"{summary['stage']}: {summary['steps']} steps, {summary['records_per_s']:.1f} records/s, "
        f"{summary['tokens_per_s']:.0f} tokens/s; held-out: {heldout or '-'}"
    )
    print(f"wrote {result.out} (model: {result.final}; log: {log_beside(args.out)})")


def _add_analyze(verbs: argparse._SubParsersAction) -> None:
    from pivotlab.analysis.config import AnalyzeConfig

    run = verbs.add_parser(
        "analyze", help="probe, saliency and alignment analyses of encoders and MLLMs"
    )
    add_options(run, AnalyzeConfig)
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    _add_verbose(run)
    run.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> None:
    from pivotlab.analysis.config import AnalyzeConfig

    with folder_lock(args.out):
        if (args.out / "metrics.jsonl").exists() and not args.overwrite:
            raise UsageError(f"{PROG}: {args.out} already holds an analysis; pass --overwrite")
        cfg = from_options(AnalyzeConfig, args)
        from pivotlab.analysis.suite import run_analyses

        progress = Progress()
        with quiet_verb(log_beside(args.out), "analysing", progress, args.verbose):
            run_analyses(cfg, log=lambda line: print(line, file=sys.stderr), progress=progress)
    print((args.out / "table.md").read_text(), end="")
    print(f"wrote {args.out}")


def _add_study(verbs: argparse._SubParsersAction) -> None:
    study = verbs.add_parser(
        "study",
        help="the PIVOT study end to end: Stage 1, SFT vs DPO, analyses, transplant, report",
    )
    study.add_argument(
        "--preset",
        default="quick",
        help=lambda: (
            f"configs/study/NAME.yaml, one of: {_study_presets()}; or a YAML path (default: quick)"
        ),
    )
    study.add_argument("--out", type=Path, required=True, help="study run folder (re-run resumes)")
    study.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every step's config and plan each training step's compute; run nothing",
    )
    study.add_argument(
        "--gpus",
        type=_positive,
        default=None,
        help="dry run: processes to plan for (default: this machine's GPUs, or 1 without one)",
    )
    study.add_argument(
        "--gpu",
        default=None,
        help="dry run: GPU kind, h100, h200 or a100 (default: this machine's when it is one of "
        "them, else h100 as the reference)",
    )
    study.add_argument(
        "--verbose",
        action="store_true",
        help="show what each step prints (the libraries' logs) live, instead of only in "
        "RUN/logs/<step>.log",
    )
    study.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. seeds=[0,1]"
    )
    study.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> None:
    from pivotlab.study.claims import check_claim_names, check_transplant_control
    from pivotlab.study.config import load_study
    from pivotlab.study.run import run_study

    study = load_study(args.preset, args.overrides)
    check_claim_names(study)  # the dry run too
    check_transplant_control(study)
    if args.dry_run:
        from pivotlab.plan.estimate import PlanOptions, local_launch
        from pivotlab.study.dryrun import dry_run

        gpus, gpu = local_launch()
        options = PlanOptions(gpus=args.gpus or gpus, gpu=args.gpu or gpu)
        print(f"planning for {options.gpus} x {options.gpu} (--gpus, --gpu to change)")
        dry_run(study, args.out, options)
        return
    command = " ".join([PROG, "study", "--preset", args.preset, "--out", str(args.out)])
    with folder_lock(args.out):
        overrides = "".join(f" {o}" for o in args.overrides)
        markdown, html = run_study(study, args.out, command + overrides, verbose=args.verbose)
    print(f"wrote {markdown} and {html}")
    _print_primary_answers(args.out / "results.json")


def _print_primary_answers(results: Path) -> None:
    """The pre-registered claims' answers, a few lines under the report's path."""
    import json

    from pivotlab.study.report import format_difference, is_percent

    for claim in json.loads(results.read_text())["claims"]:
        if claim.get("primary"):
            percent = is_percent(claim["metric"])
            difference = format_difference(
                claim["diff"], claim.get("ci_low"), claim.get("ci_high"), percent
            )
            print(f"  {claim['comparison']}: {difference}, {claim['verdict']}")


def _add_data(verbs: argparse._SubParsersAction) -> None:
    data = verbs.add_parser(
        "data", help="check real datasets (LLaVA, MMPR, world) and make PIVOT's SFT/DPO subset"
    )
    data_verbs = data.add_subparsers(dest="data_verb", required=True, parser_class=_Parser)
    check = data_verbs.add_parser(
        "check",
        help="validate a dataset and print a summary",
        description="Validate every row (JSON, fields, images, placeholders, answers, token "
        "lengths) and print rows, valid rows, images, categories, the length distribution "
        "and the problems by kind (docs/data.md).",
        epilog="exit status: 0 no problems, 1 problems found, 2 unusable arguments, "
        "3 internal error",
    )
    _data_source_arguments(check)
    check.add_argument(
        "--template",
        choices=("chat", "plain"),
        default="chat",
        help="how token lengths are counted: the chat template, or the align stage's "
        "<image> + caption (default: chat)",
    )
    check.add_argument("--out", type=Path, help="folder to write skipped.jsonl (every problem)")
    check.set_defaults(handler=_data_check)

    subset = data_verbs.add_parser(
        "subset",
        help="PIVOT's matched subset: the same N preference records as SFT and DPO files",
        description="Seeded shuffle, every check of 'data check', single image only, token "
        "limit, first N: writes the SFT file (LLaVA format, chosen answer) and the DPO file "
        "(MMPR format) with the same records in the same order, and a manifest.",
    )
    _data_source_arguments(subset, formats=("mmpr",))
    subset.add_argument("--n", type=_positive, required=True, help="records to keep")
    subset.add_argument("--seed", type=int, required=True, help="seed of the shuffle")
    subset.add_argument("--sft-out", type=Path, required=True, help="SFT file (.json or .jsonl)")
    subset.add_argument("--dpo-out", type=Path, required=True, help="DPO file (.json or .jsonl)")
    subset.add_argument(
        "--manifest", type=Path, help="manifest file (default: beside --sft-out, .manifest.json)"
    )
    subset.set_defaults(handler=_data_subset)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _data_source_arguments(
    verb: argparse.ArgumentParser, formats: tuple[str, ...] = ("llava", "mmpr", "world")
) -> None:
    verb.add_argument("--format", choices=formats, required=True, help="the dataset's format")
    verb.add_argument(
        "--path", type=Path, required=True, help="data file (world: the split folder)"
    )
    verb.add_argument(
        "--images", type=Path, help="folder image paths are relative to (world: the split)"
    )
    verb.add_argument("--processor", type=Path, help="model folder whose processor counts tokens")
    verb.add_argument(
        "--max-length", type=_positive, help="token limit to check (needs --processor)"
    )
    verb.add_argument(
        "--max-chars", type=_positive, default=8000, help="characters per text (default: 8000)"
    )
    verb.add_argument(
        "--workers", type=_positive, default=4, help="threads reading images (default: 4)"
    )


def _data_validator(args: argparse.Namespace, source, template: str = "chat"):
    from pivotlab.data import Limits, TokenCounter, Validator, load_processor

    if args.max_length is not None and args.processor is None:
        raise UsageError(f"{PROG}: --max-length needs --processor to count tokens")
    counter = None
    if args.processor is not None:
        counter = TokenCounter(load_processor(args.processor), template)
    limits = Limits(max_chars=args.max_chars)
    return Validator(source.images, limits, counter, args.max_length, args.workers)


def _data_check(args: argparse.Namespace) -> int:
    from pivotlab.data import Source
    from pivotlab.data.load import screen
    from pivotlab.data.records import write_skipped
    from pivotlab.data.summary import summary, summary_text

    source = Source(args.format, args.path, args.images)
    source.check()
    validator = _data_validator(args, source, args.template)
    loaded = screen(source.rows(), validator, on_bad_record="skip")
    if loaded.rows == 0:
        raise UsageError(f"{PROG}: {args.path} holds no rows")
    title = f"{args.format} {args.path} (images {source.images})"
    print(summary_text(summary(loaded), title))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"wrote {write_skipped([p.to_json() for p in loaded.problems], args.out)}")
    return EXIT_PROBLEMS if loaded.problems else 0


def _data_subset(args: argparse.Namespace) -> None:
    from pivotlab.data import Source, write_subset

    source = Source(args.format, args.path, args.images)
    validator = _data_validator(args, source)
    manifest_out = args.manifest or args.sft_out.with_suffix(".manifest.json")
    processor = str(args.processor) if args.processor else None
    manifest = write_subset(
        source, args.n, args.seed, validator, args.sft_out, args.dpo_out, manifest_out, processor
    )
    excluded = ", ".join(f"{k} {n}" for k, n in manifest["excluded"].items()) or "none"
    print(
        f"kept {args.n} of {manifest['visited']} rows visited ({manifest['rows']} read); "
        f"excluded: {excluded}"
    )
    print(f"wrote {args.sft_out} (LLaVA), {args.dpo_out} (MMPR), {manifest_out}")


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def _add_plan(verbs: argparse._SubParsersAction) -> None:
    plan = verbs.add_parser(
        "plan",
        help="parameters, memory per GPU, FLOPs and GPU-hours of a stage config, no weights",
        description="Estimate what a stage config needs on a cluster: parameters per part, "
        "memory per GPU under DDP, ZeRO-2, ZeRO-3 and FSDP2 (activation checkpointing off and "
        "on), FLOPs per step and per run, GPU-hours (docs/scale.md).",
    )
    plan.add_argument("--config", type=Path, required=True, help="stage config (YAML)")
    plan.add_argument("--gpus", type=_positive, default=8, help="processes (default: 8)")
    plan.add_argument("--gpu", default="h100", help="h100, h200 or a100 (default: h100)")
    plan.add_argument("--gpu-memory", type=float, help="GiB per GPU (default: the GPU's)")
    plan.add_argument(
        "--utilisation",
        type=_fraction,
        default=0.4,
        help="model-FLOPs utilisation assumed (default: 0.4)",
    )
    plan.add_argument("--records", type=_positive, help="records in the training data")
    plan.add_argument("--prompt-tokens", type=int, help="text tokens before the answer")
    plan.add_argument("--completion-tokens", type=_positive, help="supervised answer tokens")
    plan.add_argument("--vision", help="vision tower, when model.init holds no model yet")
    plan.add_argument("--lm", help="language model, when model.init holds no model yet")
    plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    plan.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> None:
    from pivotlab.plan import PlanOptions, estimate, format_plan
    from pivotlab.train import load_config

    cfg = load_config(args.config, args.overrides)
    options = PlanOptions(
        gpus=args.gpus,
        gpu=args.gpu,
        gpu_memory=args.gpu_memory,
        utilisation=args.utilisation,
        records=args.records,
        prompt_tokens=args.prompt_tokens,
        completion_tokens=args.completion_tokens,
        vision=args.vision,
        lm=args.lm,
    )
    print(format_plan(estimate(cfg, options), str(args.config)))


HELDOUT_HEADLINE = ("loss", "rewards/accuracies", "rewards/margins", "mean_token_accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Study and improve the vision encoders of multimodal LLMs."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    _add_world(verbs)
    _add_zoo(verbs)
    _add_model(verbs)
    _add_data(verbs)
    _add_train(verbs)
    _add_evaluate(verbs)
    _add_analyze(verbs)
    _add_plan(verbs)
    _add_study(verbs)
    return parser


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the verb runs, SIGTERM raises ``Terminated`` (main thread only: a caller
    running ``main`` in a thread keeps its own handling)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _crash_log(argv: Sequence[str] | None) -> Path | None:
    """Write the current exception's traceback to a log file; its path, or None when no
    log could be written (the traceback then goes to stderr)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = cache_root("logs") / f"crash-{stamp}-{os.getpid()}.log"
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{command}\npivotlab {__version__}\n\n{traceback.format_exc()}")
    except OSError:
        return None
    return path


def _report(message: str) -> None:
    if not message.startswith(PROG):
        message = f"{PROG}: error: {message}"
    print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pivotlab`` console script; returns the exit status.

    The one error boundary of every verb: a bad argument or input is one line naming it
    (exit 2); a file the system refuses (missing, unreadable, unwritable, disk full) is one
    line naming the file (exit 2); Ctrl-C and SIGTERM unwind, so staging folders are
    removed (130, 143); anything else is a bug, reported in one line that points to a log
    file holding the traceback (exit 3).
    """
    try:
        with _sigterm_unwinds():
            args = build_parser().parse_args(argv)
            status = args.handler(args)  # None, or a verb's own status (data check: 1)
    except (UsageError, PivotlabError) as error:
        _report(str(error))
        return EXIT_USAGE
    except OSError as error:
        if error.filename is None:
            return _internal_error(error, argv)
        reason = error.strerror or one_line(error) or type(error).__name__
        _report(f"{error.filename}: {reason}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _report(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        _report(f"{PROG}: terminated")
        return EXIT_TERMINATED
    except Exception as error:
        return _internal_error(error, argv)
    return status or 0


def _internal_error(error: BaseException, argv: Sequence[str] | None) -> int:
    log = _crash_log(argv)
    where = f"traceback in {log}" if log else "no log could be written:\n" + traceback.format_exc()
    reason = one_line(error)[:200] or "no message"
    _report(f"{PROG}: internal error ({type(error).__name__}: {reason}); {where}")
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
