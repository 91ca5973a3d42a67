"""``pivotlab analyze``: run analyses on several encoders or MLLMs and put them in one table.

Encoder analyses (probes, vision-language alignment against a fixed LM) run on every
``--encoder`` and on the encoder of every ``--model``; model analyses (saliency, the
layer-wise curve, token permutation, the PCA view, alignment with the model's own LM) run on
every ``--model``. Probes are fitted on ``data`` and scored on ``eval_data``; everything else
is measured on ``eval_data``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from functools import partial

from threadpoolctl import threadpool_limits

from pivotlab.analysis import (
    ENCODER_ANALYSES,
    LAYERWISE,
    LINEAR_PROBE,
    MODEL_ANALYSES,
    PERMUTATION,
    SALIENCY,
    VL_ALIGNMENT,
)
from pivotlab.analysis.config import AnalyzeConfig
from pivotlab.analysis.features import FeatureSpec, load_encoder
from pivotlab.console import Progress
from pivotlab.io import (
    MiB,
    append_jsonl,
    check_output,
    removed_on_failure,
    write_json_atomic,
    write_text_atomic,
)


def _renamed(rows: list[dict], name: str) -> list[dict]:
    return [{**row, "encoder": name} for row in rows]


def _encoder_rows(cfg: AnalyzeConfig, analysis: str, source: str) -> list[dict]:
    from pivotlab.analysis import probes, segmentation

    encoder = load_encoder(source, cfg.seed)
    if analysis == LINEAR_PROBE:
        spec = FeatureSpec(layer=cfg.layer, pooling=cfg.pooling, projector=cfg.projector)
        return probes.linear_probe(
            encoder, cfg.data, cfg.measured_on, spec, labels=cfg.labels, cache_dir=cfg.cache
        )
    return [
        row
        for head in cfg.head
        for row in segmentation.segmentation_probe(
            encoder,
            cfg.data,
            cfg.measured_on,
            head=head,
            layer=cfg.layer,
            epochs=cfg.epochs,
            seed=cfg.seed,
            cache_dir=cfg.cache,
        )
    ]


def _model_rows(cfg: AnalyzeConfig, analysis: str, name: str, model_dir: str) -> list[dict]:
    from pivotlab.analysis import alignment, saliency, tokens

    data, pictures = cfg.measured_on, cfg.out / _folder_name(name)
    if analysis == SALIENCY:
        return saliency.saliency(
            model_dir, data, limit=cfg.limit or 200, seed=cfg.seed, out=pictures
        )
    if analysis == VL_ALIGNMENT:
        encoder = load_encoder(model_dir)
        return alignment.vision_language_alignment(encoder, model_dir, data, limit=cfg.limit)
    if analysis == LAYERWISE:
        teacher = load_encoder(cfg.teacher) if cfg.teacher else None
        return alignment.layerwise_curve(model_dir, data, teacher=teacher, limit=cfg.limit or 64)
    if analysis == PERMUTATION:
        limit = cfg.permutation_limit or cfg.limit
        return tokens.permutation_sensitivity(model_dir, data, limit=limit, out=pictures)
    tokens.pca_view(model_dir, data, pictures)
    return []  # pictures only


def _folder_name(name: str) -> str:
    """A folder name for an encoder or model name (which may be a path)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "model"


def run_analyses(
    cfg: AnalyzeConfig,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> list[dict]:
    """Every requested analysis on every encoder and model; rows also go to
    ``out/metrics.jsonl`` as they are made, and the comparison to ``out/table.md``.
    ``progress`` counts the (analysis, encoder or model) pairs done, for a live line."""
    check_output(cfg.out, 64 * MiB, "a fixed 64 MiB for tables and pictures")
    rows: list[dict] = []
    with removed_on_failure(cfg.out, produced=lambda: bool(rows)):
        _run_into(cfg, rows, log, progress or Progress())
    write_text_atomic(cfg.out / "table.md", comparison_table(rows))
    return rows


def _run_into(
    cfg: AnalyzeConfig, rows: list[dict], log: Callable[[str], None], progress: Progress
) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / "config.json", asdict(cfg), default=str)
    base = {"run": cfg.out.name, "stage": "analyze", "seed": cfg.seed}
    write_text_atomic(cfg.out / "metrics.jsonl", "")
    jobs = _jobs(cfg)
    progress.start(len(jobs), "analyses")
    # NumPy/SciPy's OpenBLAS threads and torch's OpenMP threads, alternating in one process,
    # fight over the cores: on 2 cores the linear probe ran 4.5x slower with two BLAS threads
    # than with one, and an 8,000 x 768 probe fit 2.4x slower (docs/performance.md). Torch's
    # own kernels are not limited by this.
    with threadpool_limits(limits=1, user_api="blas"):
        for label, name, measure in jobs:
            log(label)
            made = [{**base, **row} for row in _renamed(measure(), name)]
            rows.extend(made)
            append_jsonl(cfg.out / "metrics.jsonl", made)
            progress.advance()


def _jobs(cfg: AnalyzeConfig) -> list[tuple[str, str, Callable[[], list[dict]]]]:
    """Each analysis on each encoder and model, in the order asked: (what the log says, the
    name its rows carry, what measures them)."""
    jobs: list[tuple[str, str, Callable[[], list[dict]]]] = []
    for analysis in cfg.analyses:
        if analysis in ENCODER_ANALYSES:
            for name, source in cfg.encoders + cfg.models:
                jobs.append(
                    (
                        f"{analysis}: {name}",
                        name,
                        partial(_encoder_rows, cfg, analysis, source),
                    )
                )
        elif analysis == "vl-alignment" and cfg.lm:
            for name, source in cfg.encoders:
                jobs.append(
                    (
                        f"{analysis}: {name} against {cfg.lm}",
                        name,
                        partial(_fixed_lm_alignment, cfg, source),
                    )
                )
        for name, model_dir in cfg.models if analysis in MODEL_ANALYSES else []:
            jobs.append(
                (f"{analysis}: {name}", name, partial(_model_rows, cfg, analysis, name, model_dir))
            )
    return jobs


def _fixed_lm_alignment(cfg: AnalyzeConfig, source: str) -> list[dict]:
    from pivotlab.analysis import alignment

    encoder = load_encoder(source, cfg.seed)
    return alignment.vision_language_alignment(encoder, cfg.lm, cfg.measured_on, limit=cfg.limit)


# What names a measurement; every other field of a row is a result or run bookkeeping.
MEASUREMENT_KEYS = (
    "analysis", "label", "method", "head", "target", "category", "condition", "seed_permutation",
    "layer", "metric",
)  # fmt: skip


def measurement(row: dict) -> tuple[str, ...]:
    """The measurement a row reports; a best-over-layers row is one measurement whatever
    layer won (the cell names the layer)."""
    named = {**row, "layer": "best"} if row.get("best") else row
    return tuple(str(named[k]) for k in MEASUREMENT_KEYS if k in named)


def _cell(row: dict) -> str:
    value = row["value"]
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if row.get("ci_low") is not None:
        text += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    if row.get("best"):
        text += f" (layer {row['layer']})"
    return text


def comparison_table(rows: list[dict]) -> str:
    """A markdown table: one line per measurement, one column per encoder or model."""
    names = list(dict.fromkeys(row["encoder"] for row in rows))
    cells: dict[tuple[str, ...], dict[str, str]] = {}
    for row in rows:
        cells.setdefault(measurement(row), {})[row["encoder"]] = _cell(row)
    lines = [
        "| measurement | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, by_name in cells.items():
        lines.append(
            f"| {', '.join(key)} | " + " | ".join(by_name.get(n, "") for n in names) + " |"
        )
    return "\n".join(lines) + "\n"
