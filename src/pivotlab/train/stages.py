"""Run one stage (align, full or post) on TRL and leave a complete run folder.

    RUN/config.yaml        the resolved config (after overrides)
    RUN/parts.txt, .json   the parts table at stage start (parameters, trainable, lr)
    RUN/records.jsonl      post only: the preference records trained on (on-policy included)
    RUN/samples.jsonl      record ids consumed per optimizer step (all processes, rank order)
    RUN/metrics.jsonl      every logged number (loss, rewards/*, lr/<part>...) + held-out
    RUN/tensorboard/       TensorBoard event files
    RUN/checkpoint-N/      Trainer checkpoints (model, optimizer, scheduler, RNG, step)
    RUN/final/             the model + processor, loadable by plain transformers, with
                           pivotlab_stage.json (stage, parts, rates, config)
    RUN/summary.json       steps, records, tokens, wall time, records/s, tokens/s, FLOPs;
                           grpo: prompts, completions, generated tokens, generation tokens/s

Started again with the same config, a run resumes from its last complete checkpoint (a
checkpoint a kill left half-written is removed, saying so); a finished run is not retrained.
A folder holding a different config is refused. Before anything is written, the folder must
be writable and its disk must have room for the checkpoints (``space_needed``); every result
file is written atomically and every log line appended whole (``pivotlab.io``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import PartialState
from transformers import set_seed

from pivotlab import __version__
from pivotlab.console import Progress
from pivotlab.io import check_output, removed_on_failure, write_json_atomic, write_text_atomic
from pivotlab.model import LM_PRESETS, VISION_PRESETS, assemble, load, save
from pivotlab.model.assembly import BUILD_FILE, ZOO_PREFIX
from pivotlab.model.folders import Kind, check_model_folder, check_source
from pivotlab.model.parts import (
    ALIGN_HEAD,
    check_trainable,
    format_parts_table,
    parts_table,
    set_trainable,
)
from pivotlab.train.adapter import check_versions
from pivotlab.train.arguments import accumulation, process_state, trl_arguments
from pivotlab.train.config import PREFERENCE_LOSSES, ConfigError, StageConfig
from pivotlab.train.external import screen_data
from pivotlab.train.heldout import append_heldout_metrics, heldout_measures
from pivotlab.train.rewards import reward_functions
from pivotlab.train.rundir import (
    is_complete,
    last_complete_checkpoint,
    loss_so_far,
    prepare_folder,
    resume_point,
    run_mean_loss,
    space_needed,
)
from pivotlab.train.speed import Levers, choose_levers
from pivotlab.train.splits import DataFolders
from pivotlab.train.stage_data import (
    check_images,
    optimizer_steps,
    resolve_data,
    schedule,
    training_records,
    trl_dataset,
)
from pivotlab.train.trainers import (
    MetricsFileCallback,
    StageDPOTrainer,
    StageGRPOTrainer,
    StageSFTTrainer,
    StepProgressCallback,
)
from pivotlab.train.viral import (
    VisualAlignment,
    attach_head,
    detach_head,
    load_teacher,
    resolve_layer,
)

STAGE_FILE = "pivotlab_stage.json"


@dataclass(frozen=True)
class StageResult:
    """Where a finished stage left its model and what it measured."""

    out: Path
    final: Path
    summary: dict


def check_init(cfg: StageConfig) -> None:
    """Fail before any folder or data work when ``model.init`` is not a saved MLLM (the
    previous stage not run yet, a typo, another kind of model) or ``model.vision``/``lm``
    name no preset, folder or hub id of the right kind."""
    m = cfg.model
    if m.init is not None:
        if not (Path(m.init) / "config.json").is_file():
            raise ConfigError(
                f"model.init: {m.init} holds no saved model (config.json); run the stage that "
                "writes it first, or point model.init at a model folder"
            )
        check_model_folder(m.init, Kind.MLLM, "model.init")
        return
    for source, kind, presets, key in (
        (m.vision, Kind.VISION, VISION_PRESETS, "model.vision"),
        (m.lm, Kind.LANGUAGE, LM_PRESETS, "model.lm"),
    ):
        if source and source not in presets and not source.startswith(ZOO_PREFIX):
            check_source(source, kind, presets, key)


def initial_model(cfg: StageConfig, trust_remote_code: bool = False):
    """The stage's starting model and processor: loaded from ``model.init`` or assembled
    (``trust_remote_code`` lets hub or folder parts run their own code)."""
    m = cfg.model
    if m.init is not None:
        return load(m.init)
    return assemble(
        m.vision,
        m.lm,
        feature_layer=m.feature_layer,
        image_size=m.image_size,
        select_strategy=m.select_strategy,
        seed=cfg.seed,
        trust_remote_code=trust_remote_code,
    )


def _write_parts(model, rates: dict[str, float], out: Path) -> str:
    rows = parts_table(model, rates)
    table = format_parts_table(rows)
    write_text_atomic(out / "parts.txt", table + "\n")
    write_json_atomic(out / "parts.json", [asdict(r) for r in rows])
    return table


def stage_trainer(
    cfg: StageConfig,
    model,
    processor,
    args: dict,
    train_data,
    record_ids,
    out,
    alignment: VisualAlignment | None = None,
):
    """The TRL trainer of the stage's objective, with pivotlab's mixin (and, for the SFT
    objectives, the speed-ups ``train.speed`` chooses for this device)."""
    from trl import DPOConfig, SFTConfig

    shared = {
        "model": model,
        "processing_class": processor,
        "train_dataset": train_data,
        "part_learning_rates": cfg.learning_rates(),
        "samples_log": out / "samples.jsonl",
        "record_ids": record_ids,
        "alignment": alignment,
    }
    if cfg.stage == "post" and cfg.post.objective == "grpo":
        return grpo_trainer(cfg, args, shared)
    if cfg.stage == "post" and cfg.post.objective in PREFERENCE_LOSSES:
        losses, weights = PREFERENCE_LOSSES[cfg.post.objective]
        dpo_args = DPOConfig(
            **args,
            beta=cfg.post.beta,
            loss_type=losses,
            loss_weights=cfg.post.loss_weights or weights,
        )
        reference = copy.deepcopy(model)  # the frozen starting model, encoder included
        detach_head(reference)  # the reference is the Stage-1 model: no VIRAL head
        set_trainable(reference, [])
        reference.eval()
        return StageDPOTrainer(
            args=dpo_args,
            ref_model=reference,
            prefix_sharing=cfg.post.prefix_sharing,
            reference_cache=cfg.post.reference_cache,
            **shared,
        )
    sft_args = SFTConfig(**args, assistant_only_loss=cfg.stage == "full")
    levers = choose_levers(cfg, on_cpu=bool(args.get("use_cpu")))
    return StageSFTTrainer(args=sft_args, levers=levers, **shared)


def grpo_trainer(cfg: StageConfig, args: dict, shared: dict) -> StageGRPOTrainer:
    """TRL's GRPO on the stage's schedule. ``train.batch_size`` and
    ``per_device_batch_size`` count prompts, as they count records for every other
    objective, so a GRPO run reads the same records in the same steps; TRL's batches count
    completions, ``num_generations`` per prompt. Generating once per optimizer step
    (``steps_per_generation`` = the accumulation, TRL's default) keeps every update on
    policy. Prompts are never cut (``train.max_length`` would cut image tokens); replies
    stop at ``max_completion_length``. ``post.prefix_sharing`` runs each prompt's image and
    tokens once for its replies in the loss and KL forwards."""
    from trl import GRPOConfig

    grpo = cfg.post.grpo
    functions, weights = reward_functions(
        grpo.max_completion_length, grpo.format_weight, grpo.length_penalty
    )
    settings = {k: v for k, v in args.items() if k != "max_length"}
    completions = cfg.train.per_device_batch_size * grpo.num_generations
    settings.update(
        per_device_train_batch_size=completions,
        per_device_eval_batch_size=completions,
        num_generations=grpo.num_generations,
        temperature=grpo.temperature,
        max_completion_length=grpo.max_completion_length,
        beta=grpo.kl_coef,
        reward_weights=weights,
        shuffle_dataset=False,
    )
    return StageGRPOTrainer(
        args=GRPOConfig(**settings),
        reward_funcs=functions,
        accumulation=args["gradient_accumulation_steps"],
        prefix_sharing=cfg.post.prefix_sharing,
        **shared,
    )


def prepare_viral(
    cfg: StageConfig, model, processor, trust_remote_code: bool = False
) -> tuple | None:
    """With ``viral.enabled``: load the teacher, resolve the layer, attach a fresh head to
    ``model``; returns (teacher, layer) for ``VisualAlignment``, else None."""
    if not cfg.viral.enabled:
        return None
    teacher = load_teacher(
        cfg.viral.teacher, model, processor, cfg.viral.cache_teacher, trust_remote_code
    )
    layer = resolve_layer(cfg.viral.layer, model.config.text_config.num_hidden_layers)
    attach_head(model, teacher, cfg.viral.head_width, cfg.seed)
    return teacher, layer


def _tensorboard_callback(out: Path):
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    # Every writer it opens (training, then the held-out evaluation) goes to one folder.
    callback.logging_dir = str(out / "tensorboard")
    return callback


def _save_final(
    cfg: StageConfig, model, processor, out: Path, steps: int, weights: dict | None
) -> None:
    final = out / "final"
    save(model, processor, final, state_dict=weights)
    if cfg.model.init and (Path(cfg.model.init) / BUILD_FILE).is_file():
        shutil.copy(Path(cfg.model.init) / BUILD_FILE, final / BUILD_FILE)
    record = {
        "stage": cfg.stage,
        "objective": cfg.post.objective if cfg.stage == "post" else None,
        "parts": cfg.parts,
        "learning_rates": cfg.learning_rates(),
        "steps": steps,
        "seed": cfg.seed,
        "pivotlab_version": __version__,
        "config": cfg.to_dict(),
    }
    write_json_atomic(final / STAGE_FILE, record)


def _check_data(cfg: StageConfig, data: DataFolders, out: Path, state: PartialState) -> None:
    """Every dataset screened and every image of the stage's training records read
    (inside the split, complete) before a model is loaded."""
    with state.main_process_first():
        screen_data(cfg, data, out)  # datasets: fail at a bad row, or list skipped rows
        check_images(cfg, data.train)


def _stage_model(
    cfg: StageConfig, out: Path, state: PartialState, trust_remote_code: bool
) -> tuple:
    """The starting model with the stage's parts (and VIRAL's head) trainable, its parts
    table written and shown; returns (model, processor, VIRAL's (teacher, layer) or None)."""
    model, processor = initial_model(cfg, trust_remote_code)
    viral = prepare_viral(cfg, model, processor, trust_remote_code)
    trained = [*cfg.parts, *([ALIGN_HEAD] if viral else [])]
    set_trainable(model, trained)
    check_trainable(model, trained)
    if state.is_main_process:
        table = _write_parts(model, cfg.learning_rates(), out)
        print(f"{cfg.stage}: parts table\n{table}", flush=True)
    return model, processor, viral


def _add_callbacks(
    trainer, cfg: StageConfig, out: Path, state: PartialState, progress: Progress | None
) -> None:
    """Every process logs to ``RUN/metrics.jsonl``; the main one to TensorBoard and
    ``progress``."""
    run_name = cfg.run or out.name
    trainer.add_callback(MetricsFileCallback(out / "metrics.jsonl", run_name, cfg.stage, cfg.seed))
    if state.is_main_process:
        trainer.add_callback(_tensorboard_callback(out))
        if progress is not None:
            trainer.add_callback(StepProgressCallback(progress))


def _summary(cfg: StageConfig, out: Path, trainer, measures: dict) -> dict:
    """``RUN/summary.json``: what the run did and how fast; ``measures`` are what
    ``run_stage`` took itself (processes, resumed_from, records, wall_s, train_loss, heldout)."""
    wall = measures["wall_s"]
    summary = {
        "run": cfg.run or out.name,
        "stage": cfg.stage,
        "objective": cfg.post.objective if cfg.stage == "post" else None,
        "seed": cfg.seed,
        "processes": measures["processes"],
        "steps": trainer.state.global_step,
        "resumed_from": measures["resumed_from"],
        "records": measures["records"],
        "records_seen": trainer.records_seen,
        "tokens_seen": trainer.tokens_seen,
        "wall_s": wall,
        "records_per_s": trainer.records_seen / wall,
        "tokens_per_s": trainer.tokens_seen / wall,
        "total_flos": trainer.state.total_flos,
        "train_loss": measures["train_loss"],
        "speed": {"setting": cfg.train.speed, **getattr(trainer, "levers", Levers()).to_dict()},
        "heldout": measures["heldout"],
    }
    if isinstance(trainer, StageGRPOTrainer):
        summary.update(trainer.generation_summary())
    return summary


def run_stage(
    cfg: StageConfig,
    out: Path | str,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> StageResult:
    """Train one stage into ``out`` (see the module docstring); returns where it ended.

    ``trust_remote_code`` lets hub or folder models (``model.vision``/``lm``, a VIRAL
    teacher) run code they ship; off unless asked for. ``progress`` counts the optimizer
    steps, for a live line.
    """
    out = Path(out)
    check_versions()  # one line now, rather than a library's traceback mid-run
    check_init(cfg)
    state = process_state(cfg)
    if state.is_main_process:
        check_output(out)
    # Each split resolved once per run, the main process first: it alone generates a world
    # split or checks a dataset into the cache, the others find it there.
    with state.main_process_first():
        data = resolve_data(cfg.data)
    if state.is_main_process and cfg.data.on_bad_record == "fail":
        # Before the folder records this config: a refused dataset leaves nothing that
        # would make the same command with ``skip`` look like another run.
        screen_data(cfg, data, out)
    # A run that fails before training begins leaves no folder (other processes never
    # remove it: the main process made it).
    with removed_on_failure(out) if state.is_main_process else contextlib.nullcontext():
        with state.main_process_first():
            complete = (
                prepare_folder(cfg, out, overwrite) if state.is_main_process else is_complete(out)
            )
        if complete:
            summary = json.loads((out / "summary.json").read_text())
            return StageResult(out, out / "final", summary)
        set_seed(cfg.seed)
        _check_data(cfg, data, out, state)
        model, processor, viral = _stage_model(cfg, out, state, trust_remote_code)
        records = training_records(cfg, data.train, model, processor, out)
        steps = optimizer_steps(cfg, len(records))
        if state.is_main_process:
            check_output(out, *space_needed(cfg, model, steps, out))
        order = schedule(len(records), steps * cfg.train.batch_size, cfg.seed)
        train_data = trl_dataset(
            records,
            data.train.path,
            stage=cfg.stage,
            objective=cfg.post.objective,
            eos=processor.tokenizer.eos_token,
            order=order,
        )
        args = trl_arguments(cfg, out, steps, accumulation(cfg, state.num_processes))
        ids = [str(r.get("id", r.get("scene_id"))) for r in records]
        alignment = VisualAlignment(model, processor, *viral, cfg.viral.weight) if viral else None
        trainer = stage_trainer(cfg, model, processor, args, train_data, ids, out, alignment)
        _add_callbacks(trainer, cfg, out, state, progress)
        if state.is_main_process:
            resume_point(out)
    state.wait_for_everyone()
    found = last_complete_checkpoint(out)
    checkpoint = str(found) if found is not None else None
    before = loss_so_far(checkpoint)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - start
    if alignment is not None:  # the saved model is a plain MLLM: no hooks, no head
        alignment.remove()
        detach_head(model)
    # Every process takes part: under ZeRO-3 or FSDP the whole weights exist only gathered.
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if state.is_main_process:
        _save_final(cfg, model, processor, out, steps, weights)
    heldout = heldout_measures(
        cfg, data.eval, trainer, processor, out, lambda: initial_model(cfg, trust_remote_code)[0]
    )
    measures = {
        "processes": state.num_processes,
        "resumed_from": checkpoint,
        "records": len(records),
        "wall_s": wall,
        "train_loss": run_mean_loss(result.training_loss, trainer.state.global_step, before),
        "heldout": heldout,
    }
    summary = _summary(cfg, out, trainer, measures)
    if state.is_main_process:
        append_heldout_metrics(out, cfg, trainer.state.global_step, heldout)
        write_json_atomic(out / "summary.json", summary)
    state.wait_for_everyone()
    return StageResult(out, out / "final", summary)
