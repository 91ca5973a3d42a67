"""The study report: ``RUN/report.md`` and a self-contained ``RUN/report.html`` from one dict.

The report is built as a short list of blocks (headings, text, tables, figures, picture
galleries) rendered twice, so the markdown and the HTML always say the same thing. The HTML
embeds every picture as a base64 data URI and carries its own small stylesheet: it opens
from an e-mail attachment or a laptop with no network. Markdown refers to ``figures/*.png``
next to it, where pictures from the study's runs are copied.

``study`` is a ``StudyResults`` (what ``study/results.py`` collects and ``study/run.py``
saves as ``results.json``): every key but ``title`` is optional; a missing or empty one
leaves its section out with a line saying so. A row may name the file its numbers come from in
``source``; each section ends with those files.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Required, TypedDict

from matplotlib.figure import Figure as PlotFigure

from pivotlab.analysis import PCA, SALIENCY
from pivotlab.analysis.suite import measurement
from pivotlab.io import write_text_atomic
from pivotlab.study.stats import HOLDS, REVERSED, seed_summary


class StudyResults(TypedDict, total=False):
    """The contract between the study's run and its report (``RUN/results.json``)."""

    title: Required[str]
    preset: str
    command: str
    seeds: list[int]
    setup: list[str]  # what every number was measured on, one line each
    warnings: list[str]  # what the reader must know first
    notes: list[str]
    not_measurable: dict[str, str]  # measurement (or its start) -> why the world hides it
    claims: list[dict[str, Any]]  # one row per claim: difference, interval, verdict, sources
    vqa: list[dict[str, Any]]  # accuracy per arm, seed, track and category
    analysis: list[dict[str, Any]]  # the analysis suite's rows, labelled by arm and track
    transplant: list[dict[str, Any]]  # accuracy per transplanted encoder, seed and category
    moved: list[dict[str, Any]]  # how far each post arm moved from Stage 1, per part and seed
    tuning: list[dict[str, Any]]  # every model scored on val: rate, accuracy, KL, moved, chosen
    headroom: dict[str, Any] | None  # the best arm against Stage 1 on val
    transplant_control: dict[str, Any] | None  # the transplant's positive control
    compute: list[dict[str, Any]]  # one row per step: wall seconds, FLOPs
    pivot_fraction: dict[str, float] | None  # the evolving step against pretraining FLOPs
    pictures: dict[str, dict[str, list[str]]]  # {kind: {arm: [paths]}}


# Metric names shown as percentages (with one decimal); every other number gets three decimals.
PERCENT_METRICS = frozenset({"accuracy", "pair_accuracy", "average", "top1"})
FIGURES = "figures"
CHART = "vqa-by-category.png"
SWEEP_CHART = "rate-sweep.png"
PICTURE_TITLES = {
    SALIENCY: "Saliency overlays, side by side",
    PCA: "PCA views of the visual tokens",
}
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.holds { background: #e3f4e1; } td.reversed { background: #f8dede; }
img { max-width: 100%; }
table.gallery td { border: none; } table.gallery img { max-width: 34rem; }
p.note { color: #666; font-size: 0.85rem; }
pre { background: #f6f6f6; padding: 0.5rem; white-space: pre-wrap; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Note:
    """A footnote line: where the numbers come from, what an interval means."""

    text: str


@dataclass
class Code:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    verdict_column: int | None = None  # coloured in the HTML: holds green, reversed red


@dataclass
class Picture:
    """A picture under the run folder (``path`` relative to it) with its caption."""

    path: str
    caption: str


@dataclass
class Gallery:
    """Pictures side by side: one column per arm, one row per picture index."""

    columns: list[str]
    rows: list[list[str | None]] = field(default_factory=list)


Block = Heading | Text | Note | Code | Bullets | Table | Picture | Gallery


# ---- numbers ---------------------------------------------------------------------------------


def is_percent(metric: str) -> bool:
    """Whether a metric (or a phrase naming one, "vision_centric accuracy") is an accuracy."""
    return bool(set(re.findall(r"[a-z0-9_]+", metric.lower())) & PERCENT_METRICS)


def format_value(value: float | None, percent: bool) -> str:
    """41.3% for an accuracy, 0.412 for anything else; a dash for no value."""
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def format_interval(
    low: float | None, high: float | None, percent: bool, signed: bool = False
) -> str:
    """[38.0, 44.6] (percent) or [0.380, 0.446]; empty when there is no interval."""
    if low is None or high is None:
        return ""
    scale, digits = (100, 1) if percent else (1, 3)
    sign = "+" if signed else ""
    return f"[{scale * low:{sign}.{digits}f}, {scale * high:{sign}.{digits}f}]"


def format_cell(value: float | None, low: float | None, high: float | None, percent: bool) -> str:
    """A value followed by its interval: 41.3% [38.0, 44.6]."""
    return f"{format_value(value, percent)} {format_interval(low, high, percent)}".strip()


def format_difference(diff: float, low: float | None, high: float | None, percent: bool) -> str:
    """A signed difference: +3.2 pts [-0.5, +6.9] (percentage points) or +0.032 [...]."""
    text = f"{100 * diff:+.1f} pts" if percent else f"{diff:+.3f}"
    return f"{text} {format_interval(low, high, percent, signed=True)}".strip()


def _summaries(rows: list[dict], key: Callable[[dict], Hashable]) -> dict:
    """Rows grouped by ``key(row)``: mean over the group (seeds) and a 95% interval, the
    Student-t one across seeds when there are two or more, else the row's own."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    out = {}
    for name, group in groups.items():
        summary = seed_summary([r["value"] for r in group])
        if summary["n"] == 1:
            summary.update(ci_low=group[0].get("ci_low"), ci_high=group[0].get("ci_high"))
        out[name] = summary
    return out


def _summary_cell(summary: dict | None, percent: bool) -> str:
    if summary is None:
        return ""
    return format_cell(summary["mean"], summary["ci_low"], summary["ci_high"], percent)


def _in_run(source: str | Path, run_dir: Path) -> str:
    """A source path as the report names it: relative to the run folder when inside it."""
    path = Path(source)
    if path.is_absolute() and path.is_relative_to(run_dir.resolve()):
        path = path.relative_to(run_dir.resolve())
    return str(path)


def _sources(rows: list[dict], run_dir: Path) -> Note:
    """The footnote naming the files a section's numbers were read from."""
    names = []
    for row in rows:
        sources = row.get("source") or []
        for source in [sources] if isinstance(sources, str) else sources:
            names.append(_in_run(source, run_dir))
    files = ", ".join(dict.fromkeys(names)) or "not recorded in the study's rows"
    return Note(f"Source: {files}.")


INTERVAL_NOTE = (
    "Values are means over seeds; intervals are Student-t 95% across seeds where there are "
    "two or more, otherwise the measurement's own bootstrap 95% over questions."
)


# ---- sections --------------------------------------------------------------------------------


def _header(study: StudyResults) -> list[Block]:
    blocks: list[Block] = [Heading(study.get("title") or "PIVOT study", 1)]
    seeds = ", ".join(str(s) for s in study.get("seeds", [])) or "none recorded"
    blocks.append(Text(f"Preset: {study.get('preset', 'unknown')}. Seeds: {seeds}."))
    if study.get("setup"):
        blocks.append(Bullets(list(study["setup"])))
    if study.get("command"):
        blocks.append(Code(study["command"]))
    if study.get("warnings"):
        blocks.append(Heading("Read this first", 2))
        blocks.append(Bullets(list(study["warnings"])))
    return blocks


def _claims(study: StudyResults, run_dir: Path) -> list[Block]:
    rows = study.get("claims") or []
    blocks: list[Block] = [Heading("Answers")]
    if not rows:
        return [*blocks, Text("No claims were tested in this study.")]
    counts = Counter(row["verdict"] for row in rows)
    tally = ", ".join(f"{verdict}: {n}" for verdict, n in counts.items())
    blocks.append(Text(f"{len(rows)} claims tested. {tally}."))
    primary = [row for row in rows if row.get("primary")]
    exploratory = [row for row in rows if not row.get("primary")]
    if primary:
        blocks += [
            Heading("Primary claims", 3),
            Text(
                "Pre-registered in the preset; decided together at 5% family-wise error with "
                "Holm's correction (p: Holm-adjusted)."
            ),
            *_claims_table(primary, adjusted=True),
        ]
    if exploratory:
        if primary:
            blocks += [
                Heading("Exploratory claims", 3),
                Text("Each at 95%, uncorrected: a 'holds' here suggests, it does not establish."),
            ]
        blocks += _claims_table(exploratory, adjusted=False)
    blocks.append(
        Note(
            "Differences of accuracies are in percentage points (pts). Intervals: paired "
            "hierarchical bootstrap over seeds and questions (docs/study.md, Statistics). "
            "MDE: the smallest true difference the claim's test finds with 80% power (primary "
            "claims at Holm's strictest level); a difference under it going undetected says "
            "little."
        )
    )
    if any(row.get("n_seeds") == 1 for row in rows):
        blocks.append(
            Note(
                "With one seed an interval covers question sampling only: another training "
                "seed may land elsewhere."
            )
        )
    return [*blocks, _sources(rows, run_dir)]


def _claims_table(rows: list[dict], adjusted: bool) -> list[Block]:
    """One row per claim; ``adjusted``: the p column holds Holm-adjusted p-values. When a
    paper reports an effect for some of them, a column shows it and how ours reads against
    it, and a note names the sources."""
    header = ["Claim", "Comparison", "Metric", "Difference [95% CI]", "MDE (80% power)", "p"]
    papers = any("paper_effect" in row for row in rows)
    header += ["Paper", "Seeds", "Verdict"] if papers else ["Seeds", "Verdict"]
    table = Table(header, [], verdict_column=len(header) - 1)
    for row in rows:
        percent = is_percent(row["metric"])
        difference = format_difference(row["diff"], row.get("ci_low"), row.get("ci_high"), percent)
        mde = row.get("mde")
        p_value = row.get("p_holm" if adjusted else "p_value")
        cells = [row["claim"], row["comparison"], row["metric"], difference,
                 "-" if mde is None else format_value(mde, percent).replace("%", " pts"),
                 "-" if p_value is None else f"{p_value:.3g}"]  # fmt: skip
        if papers:
            cells.append(_paper_cell(row, percent))
        table.rows.append([*cells, str(row.get("n_seeds", "")), row["verdict"]])
    sources = [
        f"{row['comparison']}: {row['paper_source']}" for row in rows if "paper_effect" in row
    ]
    return [table, Note("Paper: " + "; ".join(sources) + ".")] if sources else [table]


def _paper_cell(row: dict, percent: bool) -> str:
    if "paper_effect" not in row:
        return "-"
    return f"{format_difference(row['paper_effect'], None, None, percent)}: {row['paper_reading']}"


def _bar_chart(summaries: dict, categories: list, arms: list, chance: dict, path: Path) -> None:
    """Grouped bars (arms within each category) with 95% error bars and chance marks."""
    figure = PlotFigure(figsize=(max(6.0, 1.6 * len(categories) + 2), 4.0), dpi=100)
    axes = figure.add_subplot()
    width = 0.8 / len(arms)
    for position, arm in enumerate(arms):
        xs, heights, errors = [], [], [[], []]
        for index, category in enumerate(categories):
            summary = summaries.get((arm, category))
            if summary is None:
                continue
            mean = 100 * summary["mean"]
            low = 100 * summary["ci_low"] if summary["ci_low"] is not None else mean
            high = 100 * summary["ci_high"] if summary["ci_high"] is not None else mean
            xs.append(index - 0.4 + width * (position + 0.5))
            heights.append(mean)
            errors[0].append(mean - low)
            errors[1].append(high - mean)
        hatch = "//" if "blind" in str(arm) else None
        axes.bar(xs, heights, width, yerr=errors, capsize=3, label=str(arm), hatch=hatch)
    for index, category in enumerate(categories):
        if category in chance:
            level = 100 * chance[category]
            axes.hlines(level, index - 0.45, index + 0.45, colors="black", linestyles="dashed")
    axes.set_xticks(range(len(categories)), [str(c) for c in categories])
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize=8, ncols=min(len(arms), 4))
    axes.set_title("VQA accuracy by category (dashed: chance)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _vqa(study: StudyResults, run_dir: Path) -> list[Block]:
    rows = study.get("vqa") or []
    blocks: list[Block] = [Heading("VQA accuracy by category")]
    if not rows:
        return [*blocks, Text("No VQA rows in this study.")]
    arms = list(dict.fromkeys(row["arm"] for row in rows))
    categories = list(dict.fromkeys(row["category"] for row in rows))
    summaries = _summaries(rows, lambda r: (r["arm"], r["category"]))
    chance = {}
    for category in categories:
        levels = [r["chance"] for r in rows if r["category"] == category and "chance" in r]
        if levels:
            chance[category] = sum(levels) / len(levels)
    _bar_chart(summaries, categories, arms, chance, run_dir / FIGURES / CHART)
    table = Table(["Category", "Chance", *arms], [])
    for category in categories:
        cells = [_summary_cell(summaries.get((arm, category)), True) for arm in arms]
        table.rows.append([category, format_value(chance.get(category), True), *cells])
    return [
        *blocks,
        Picture(f"{FIGURES}/{CHART}", "Accuracy by category; error bars are 95% intervals."),
        table,
        Note(INTERVAL_NOTE),
        _sources(rows, run_dir),
    ]


def _hidden_by_the_world(row: dict, not_measurable: dict[str, str]) -> str | None:
    """The ``not_measurable`` entry a row's measurement name contains, if any."""
    name = ", ".join(measurement(row))
    return next((entry for entry in not_measurable if entry in name), None)


def _not_measurable(rows: list[dict], not_measurable: dict[str, str]) -> list[Block]:
    """What the world cannot tell models apart on, with the reason and how many rows it
    set aside; no values (they are not results)."""
    if not not_measurable:
        return []
    counts = Counter(_hidden_by_the_world(row, not_measurable) for row in rows)
    table = Table(["Measurement", "Why this world cannot measure it", "Rows set aside"], [])
    for entry, reason in not_measurable.items():
        table.rows.append([entry, reason, str(counts.get(entry, 0))])
    text = (
        "Declared in the preset before the run: measurements whose value cannot differ "
        "between models in this world by construction, so their rows are not shown as results."
    )
    return [Heading("Not measurable in this world", 3), Text(text), table]


def _analysis(study: StudyResults, run_dir: Path) -> list[Block]:
    every_row = study.get("analysis") or []
    hidden = study.get("not_measurable") or {}
    rows = [row for row in every_row if _hidden_by_the_world(row, hidden) is None]
    blocks: list[Block] = [Heading("Encoder analyses (probes, alignment, saliency scores)")]
    if not rows:
        return [
            *blocks,
            Text("No analysis rows in this study."),
            *_not_measurable(every_row, hidden),
        ]
    arms = list(dict.fromkeys(row.get("arm", row.get("encoder")) for row in rows))
    summaries = _summaries(rows, lambda r: (measurement(r), r.get("arm", r.get("encoder"))))
    keys = list(dict.fromkeys(key for key, _ in summaries))
    references = _references(rows, summaries, arms)
    table = Table(["Measurement", *arms], [])
    for key in [k for k in keys if k not in references]:
        percent = is_percent(key[-1])
        cells = [_summary_cell(summaries.get((key, arm)), percent) for arm in arms]
        table.rows.append([", ".join(key), *cells])
    blocks += [table, Note(INTERVAL_NOTE)]
    if references:
        reference_table = Table(["Reference (the same for every model)", "Value"], [])
        for key, summary in references.items():
            cell = _summary_cell(summary, is_percent(key[-1]))
            reference_table.rows.append([", ".join(key), cell])
        text = (
            "Baselines whose value does not depend on the model (a saliency map drawn without "
            "it), shown once: what the models' rows are read against, not a result."
        )
        blocks += [Text(text), reference_table]
    return [*blocks, *_not_measurable(every_row, hidden), _sources(rows, run_dir)]


def _references(rows: list[dict], summaries: dict, arms: list) -> dict[tuple, dict]:
    """The measurements of rows marked ``reference`` whose summary is the same for every arm
    that has it (a scale point without saliency has none), each with that summary."""
    marked = dict.fromkeys(measurement(r) for r in rows if r.get("reference"))
    references = {}
    for key in marked:
        found = [summaries[(key, arm)] for arm in arms if (key, arm) in summaries]
        if all(summary == found[0] for summary in found):
            references[key] = found[0]
    return references


def _moved(study: StudyResults) -> list[Block]:
    """Each post arm's relative weight change from its Stage-1 model, part by part."""
    rows = study.get("moved") or []
    if not rows:
        return []
    arms = list(dict.fromkeys(row["arm"] for row in rows))
    parts = list(dict.fromkeys(row["part"] for row in rows))
    summaries = _summaries(rows, lambda r: (r["arm"], r["part"]))
    table = Table(["Arm", *parts], [])
    for arm in arms:
        table.rows.append([arm, *[_summary_cell(summaries.get((arm, p)), True) for p in parts]])
    return [
        Heading("How far each arm moved from Stage 1"),
        Text(
            "Relative change of each part's weights from the Stage-1 model the arm started "
            "from (the norm of the change over the norm of the Stage-1 weights): read a "
            "difference between arms against how far each of them moved."
        ),
        table,
        Note("Means over seeds; intervals Student-t 95% across seeds where there are two or more."),
    ]


def _sweep_chart(rows: list[dict], others: list[dict], stage1: dict | None, path: Path) -> None:
    """Val accuracy against the learning rate (left) and against KL to Stage 1 (right), one
    line per swept arm, its chosen point circled, each unswept arm (``others``) a cross on
    the right; Stage 1 dashed. KL on a log scale below 0.001 linear (a point at zero moved
    nothing)."""
    figure = PlotFigure(figsize=(10.0, 4.0), dpi=100)
    by_rate, by_kl = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for arm in dict.fromkeys(row["arm"] for row in rows):
        points = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["rate"])
        accuracy = [100 * r["value"] for r in points]
        (line,) = by_rate.plot([r["rate"] for r in points], accuracy, marker="o", label=arm)
        kls = [r.get("kl") for r in points]
        if None not in kls:
            by_kl.plot(kls, accuracy, marker="o", color=line.get_color(), label=arm)
        for row in (r for r in points if r["chosen"]):
            chosen = {"s": 160, "facecolors": "none", "edgecolors": line.get_color()}
            by_rate.scatter([row["rate"]], [100 * row["value"]], **chosen)
            if row.get("kl") is not None:
                by_kl.scatter([row["kl"]], [100 * row["value"]], **chosen)
    arms = len(dict.fromkeys(row["arm"] for row in rows))
    for index, row in enumerate(r for r in others if r.get("kl") is not None):
        cross = {"marker": "x", "s": 60, "color": f"C{arms + index}", "label": row["arm"]}
        by_kl.scatter([row["kl"]], [100 * row["value"]], **cross)
    for axes in (by_rate, by_kl):
        if stage1 is not None:
            axes.axhline(100 * stage1["value"], color="black", linestyle="dashed", label="stage1")
        axes.set_ylabel(f"val {rows[0]['category']} accuracy (%)")
        axes.legend(fontsize=8)
    by_rate.set_xscale("log")
    by_rate.set_xlabel("swept learning rate")
    by_rate.set_title("Each arm's sweep (circled: chosen on val)", fontsize=10)
    by_kl.set_xscale("symlog", linthresh=1e-3)
    # A symlog axis leaves no margin past its largest point: give the farthest one room.
    kls = [row["kl"] for row in [*rows, *others] if row.get("kl") is not None]
    by_kl.set_xlim(left=0, right=max([1e-3, *kls]) * 1.6)
    by_kl.set_xlabel("KL to Stage 1 on val answers (nats per token)")
    by_kl.set_title("The same points against how far each moved", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _rate_cell(row: dict) -> str:
    if row["rate"] is not None:
        return f"{row['rate']:g}" + (" (chosen)" if row["chosen"] else "")
    lr = row.get("lr")
    if isinstance(lr, dict):
        return ", ".join(f"{part} {value:g}" for part, value in lr.items())
    return "-" if lr is None else f"{lr:g}"


def _tuning(study: StudyResults, run_dir: Path) -> list[Block]:
    """Every model scored on val: the rate sweep (figure, table) and the headroom line."""
    rows = study.get("tuning") or []
    if not rows:
        return []
    main = [r for r in rows if r["track"] == "main"]
    first = [r for r in main if r["seed"] == main[0]["seed"]] if main else []
    stage1 = next((r for r in first if r["arm"] == "stage1"), None)
    swept = [r for r in first if r["swept"]]
    blocks: list[Block] = [
        Heading("Learning rates, chosen on val, and how far each arm moved"),
        Text(
            "Every arm was scored on the val split (never test) at each rate it was trained "
            "with; a swept arm keeps its best. KL: KL(arm || Stage 1) per answer token on the "
            "val questions' answers, teacher-forced. Moved: relative weight change per part."
        ),
    ]
    if swept:
        others = [r for r in first if not r["swept"] and r["arm"] != "stage1"]
        _sweep_chart(swept, others, stage1, run_dir / FIGURES / SWEEP_CHART)
        caption = "Val accuracy against rate and against KL to Stage 1 (first seed, main track)."
        blocks.append(Picture(f"{FIGURES}/{SWEEP_CHART}", caption))
    parts = list(dict.fromkeys(part for r in rows for part in (r.get("moved") or {})))
    table = Table(["Arm", "Seed", "Rate", f"Val {rows[0]['category']}", "KL", *parts], [])
    for row in rows:
        kl = row.get("kl")
        kl_cell = "-" if kl is None else format_cell(kl, row["kl_ci_low"], row["kl_ci_high"], False)
        moved = [format_value((row.get("moved") or {}).get(p), True) for p in parts]
        accuracy = format_cell(row["value"], row["ci_low"], row["ci_high"], True)
        cells = [row["arm"], str(row["seed"]), _rate_cell(row), accuracy, kl_cell]
        table.rows.append([*cells, *moved])
    blocks.append(table)
    headroom = study.get("headroom")
    if headroom:
        met = "met" if headroom["diff"] >= headroom["required"] else "not met"
        rate = "" if headroom["rate"] is None else f" at {headroom['rate']:g}"
        difference = format_difference(
            headroom["diff"], headroom["ci_low"], headroom["ci_high"], True
        )
        blocks.append(
            Text(
                f"Headroom: the best arm on val, {headroom['arm']}{rate}, is {difference} over "
                f"Stage 1 in {headroom['category']} accuracy (paired, same val questions); the "
                f"protocol asks for at least {100 * headroom['required']:.0f} points: {met}."
            )
        )
    return [*blocks, _sources(rows, run_dir)]


def _transplant(study: StudyResults, run_dir: Path) -> list[Block]:
    rows = study.get("transplant") or []
    blocks: list[Block] = [Heading("PIVOT transplant: each encoder, frozen, into a fresh LM")]
    if not rows:
        return [*blocks, Text("No transplant rows in this study.")]
    encoders = list(dict.fromkeys(row["encoder"] for row in rows))
    categories = list(dict.fromkeys(row["category"] for row in rows))
    summaries = _summaries(rows, lambda r: (r["encoder"], r["category"]))
    table = Table(["Encoder", *categories], [])
    for encoder in encoders:
        cells = [_summary_cell(summaries.get((encoder, c)), True) for c in categories]
        table.rows.append([encoder, *cells])
    blocks += [table, Note(INTERVAL_NOTE)]
    control = study.get("transplant_control")
    if control:
        difference = format_difference(control["diff"], control["ci_low"], control["ci_high"], True)
        outcome = {
            "passed": "the control passed",
            "failed": "the control failed. A transplant that cannot order these two encoders "
            "cannot be trusted to order the study's",
            "void": "the control is void: Stage 1 itself does not order these two encoders, so "
            "there is no known difference for the transplant to find",
        }[control["status"]]
        blocks.append(
            Text(
                f"Positive control, {control['comparison']}, {control['metric']} "
                f"(known: {control_known(control)}): "
                f"{difference}, {control['verdict']}: {outcome}."
            )
        )
    return [*blocks, _sources(rows, run_dir)]


def control_known(control: dict) -> str:
    """What is known of the control pair's order: Stage 1's gap where the study measured
    it, else the preset's line."""
    gap = control.get("stage1_gap")
    if gap is None:
        return control.get("known") or "stronger ahead"
    difference = format_difference(gap["diff"], gap["ci_low"], gap["ci_high"], True)
    return f"Stage 1 in this study, {gap['comparison']}: {difference}, {gap['verdict']}"


def _picture_name(kind: str, arm: str, index: int, source: Path) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{kind}-{arm}-{index:02d}-{source.name}")
    return f"{FIGURES}/{safe}"


# Rows of pictures per gallery: enough to compare arms on the same questions, few enough
# that a report with ten arms stays readable and small.
PICTURE_ROWS = 4


def _pictures(study: StudyResults, run_dir: Path) -> list[Block]:
    """One gallery per picture kind, arms side by side (saliency: SFT next to DPO), the
    first ``PICTURE_ROWS`` pictures of each arm copied under ``RUN/figures/`` so the
    markdown can refer to them (the rest stay in the analysis folders the note names)."""
    pictures = study.get("pictures") or {}
    blocks: list[Block] = []
    for kind in dict.fromkeys([*PICTURE_TITLES, *pictures]):
        by_arm = {arm: paths for arm, paths in (pictures.get(kind) or {}).items() if paths}
        blocks.append(Heading(PICTURE_TITLES.get(kind, kind)))
        if not by_arm:
            blocks.append(Text(f"No {kind} pictures in this study."))
            continue
        gallery = Gallery(list(by_arm))
        missing = []
        shown = min(PICTURE_ROWS, max(len(paths) for paths in by_arm.values()))
        for index in range(shown):
            row: list[str | None] = []
            for arm, paths in by_arm.items():
                source = Path(paths[index]) if index < len(paths) else None
                if source is None or not source.is_file():
                    row.append(None)
                    missing += [str(source)] if source else []
                    continue
                name = _picture_name(kind, arm, index, source)
                (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
                if source.resolve() != (run_dir / name).resolve():
                    shutil.copyfile(source, run_dir / name)
                row.append(name)
            if any(row):
                gallery.rows.append(row)
        blocks.append(gallery)
        if missing:
            blocks.append(Note(f"Missing pictures: {', '.join(missing)}."))
        sources = {_in_run(Path(p).parent, run_dir) for paths in by_arm.values() for p in paths}
        blocks.append(Note(f"Source: {', '.join(sorted(sources))}."))
    return blocks


def _compute(study: StudyResults, run_dir: Path) -> list[Block]:
    rows = study.get("compute") or []
    blocks: list[Block] = [Heading("Compute")]
    fraction = study.get("pivot_fraction")
    if fraction and fraction.get("fraction") is not None:
        blocks.append(
            Text(
                f"The PIVOT step cost {_flops(fraction.get('pivot_flops'))} FLOPs, "
                f"{100 * fraction['fraction']:.3g}% of the encoder's pretraining "
                f"({_flops(fraction.get('pretraining_flops'))} FLOPs)."
            )
        )
    if not rows:
        return [*blocks, Text("No compute rows in this study.")]
    table = Table(["Step", "Arm", "Seed", "Wall time", "FLOPs", "Note"], [])
    for row in rows:
        wall = row.get("wall_s")
        table.rows.append(
            [str(row.get("step", "")), str(row.get("arm") or ""), str(row.get("seed", "")),
             f"{wall:,.1f} s" if wall is not None else "–", _flops(row.get("flops")),
             str(row.get("note") or "")]
        )  # fmt: skip
    return [*blocks, table, _sources(rows, run_dir)]


def _flops(value: float | None) -> str:
    return f"{value:.2e}".replace("e+", "e") if value is not None else "–"


def _notes(study: StudyResults) -> list[Block]:
    notes = study.get("notes") or []
    return [Heading("Notes"), Bullets(list(notes)) if notes else Text("No notes.")]


def build(study: StudyResults, run_dir: Path) -> list[Block]:
    """The report's blocks, in order: the answers first, then the evidence, then the costs."""
    return [
        *_header(study),
        *_claims(study, run_dir),
        *_vqa(study, run_dir),
        *_tuning(study, run_dir),
        *_moved(study),
        *_analysis(study, run_dir),
        *_transplant(study, run_dir),
        *_pictures(study, run_dir),
        *_compute(study, run_dir),
        *_notes(study),
    ]


# ---- rendering -------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    """Markdown with pictures referred to relatively (``figures/...``)."""
    out = []
    for block in blocks:
        match block:
            case Heading(text, level):
                out.append(f"{'#' * level} {text}")
            case Text(text):
                out.append(text)
            case Note(text):
                out.append(f"<sub>{html.escape(text, quote=False)}</sub>")
            case Code(text):
                out.append(f"```\n{text}\n```")
            case Bullets(items):
                out.append("\n".join(f"- {item}" for item in items))
            case Table(header, rows, _):
                lines = ["| " + " | ".join(map(_md_cell, header)) + " |"]
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
                out.append("\n".join(lines))
            case Picture(path, caption):
                out.append(f"![{caption}]({path})")
            case Gallery(columns, rows):
                lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                for row in rows:
                    cells = [f"![{c}]({p})" if p else "" for c, p in zip(columns, row, strict=True)]
                    lines.append("| " + " | ".join(cells) + " |")
                out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        path.suffix.lower(), "application/octet-stream"
    )
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = []
        for column, text in enumerate(row):
            kind = text.split(" ")[0] if column == table.verdict_column else ""
            css = f' class="{kind}"' if kind in (HOLDS, REVERSED) else ""
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(blocks: list[Block], run_dir: Path) -> str:
    """One self-contained page: inline stylesheet, pictures as data URIs, no scripts."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "PIVOT study")
    out = []
    for block in blocks:
        match block:
            case Heading(text, level):
                out.append(f"<h{level}>{html.escape(text)}</h{level}>")
            case Text(text):
                out.append(f"<p>{html.escape(text)}</p>")
            case Note(text):
                out.append(f'<p class="note">{html.escape(text)}</p>')
            case Code(text):
                out.append(f"<pre>{html.escape(text)}</pre>")
            case Bullets(items):
                out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
            case Table():
                out.append(_html_table(block))
            case Picture(path, caption):
                out.append(
                    f'<figure><img src="{_data_uri(run_dir / path)}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            case Gallery(columns, rows):
                head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
                body = "".join(
                    "<tr>"
                    + "".join(
                        f'<td><img src="{_data_uri(run_dir / p)}" alt="{html.escape(c)}"></td>'
                        if p
                        else "<td></td>"
                        for c, p in zip(columns, row, strict=True)
                    )
                    + "</tr>"
                    for row in rows
                )
                out.append(f'<table class="gallery"><tr>{head}</tr>{body}</table>')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(out)
        + "\n</body></html>\n"
    )


def write_report(run_dir: Path, study: dict) -> tuple[Path, Path]:
    """Write ``run_dir/report.md`` and ``run_dir/report.html`` (plus ``run_dir/figures/``)
    from the study dict described in the module docstring; returns both paths."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    blocks = build(study, run_dir)
    markdown, page = run_dir / "report.md", run_dir / "report.html"
    write_text_atomic(markdown, to_markdown(blocks))
    write_text_atomic(page, to_html(blocks, run_dir))
    return markdown, page
