"""The study report: self-contained HTML, claims with verdicts, skipped sections, formats."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from pivotlab.study.report import (
    format_cell,
    format_difference,
    format_value,
    write_report,
)
from pivotlab.study.stats import seed_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _TagBalance(HTMLParser):
    """Records end tags that do not close the innermost open element."""

    VOID = frozenset({"meta", "img", "br"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.mismatched.append(tag)


def test_html_is_self_contained_well_formed_and_embeds_every_picture(
    study: dict, tmp_path: Path
) -> None:
    _, page = write_report(tmp_path / "run", study)
    text = page.read_text()
    assert "http:" not in text and "https:" not in text
    assert "<script" not in text and "<link" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 1 + 4 + 1  # the chart, two saliency pairs, one PCA view
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.split(",", 1)[1])
        assert data.startswith(PNG_SIGNATURE)
    balance = _TagBalance()
    balance.feed(text)
    assert balance.mismatched == [] and balance.open == []


def test_every_claim_appears_with_its_verdict_in_both_files(study: dict, tmp_path: Path) -> None:
    markdown, page = write_report(tmp_path / "run", study)
    md_lines = markdown.read_text().splitlines()
    html_rows = page.read_text().split("<tr>")
    for claim in study["claims"]:
        assert any(
            claim["claim"] in line and f"| {claim['verdict']} |" in line for line in md_lines
        )
        assert any(
            claim["claim"] in row and f">{claim['verdict']}</td>" in row for row in html_rows
        )
    assert "3 claims tested. not significant at this scale: 1, holds: 1, reversed: 1." in (
        markdown.read_text()
    )


def test_primary_claims_stand_apart_with_their_adjusted_p_and_power(
    study: dict, tmp_path: Path
) -> None:
    """The primary claim sits in its own table with its Holm-adjusted p and its minimum
    detectable effect; the others follow as exploratory, with their own p."""
    first, *rest = study["claims"]
    first = {**first, "primary": True, "p_value": 0.01, "p_holm": 0.03, "mde": 0.052}
    rest = [{**row, "p_value": 0.2, "mde": None} for row in rest]
    markdown, _ = write_report(tmp_path / "run", {**study, "claims": [first, *rest]})
    text = markdown.read_text()
    primary, exploratory = text.index("### Primary claims"), text.index("### Exploratory claims")
    first_line = next(line for line in text.splitlines() if first["claim"] in line)
    assert primary < text.index(first_line) < exploratory
    assert "| 5.2 pts | 0.03 |" in first_line
    assert all(f"{row['claim']} |" in text[exploratory:] for row in rest)
    assert "| - | 0.2 |" in text[exploratory:]


def test_how_far_each_arm_moved_is_a_table_of_arms_by_parts(study: dict, tmp_path: Path) -> None:
    moved = [
        {"arm": arm, "seed": seed, "part": part, "value": value}
        for arm, scale in (("sft", 0.02), ("dpo", 0.002))
        for seed in (0, 1)
        for part, value in (("vision", scale), ("projector", 2 * scale), ("lm", scale))
    ]
    markdown, _ = write_report(tmp_path / "run", {**study, "moved": moved})
    text = markdown.read_text()
    assert "## How far each arm moved from Stage 1" in text
    assert "| Arm | vision | projector | lm |" in text
    assert "| sft | 2.0% [2.0, 2.0] | 4.0% [4.0, 4.0] | 2.0% [2.0, 2.0] |" in text
    assert "How far each arm moved" not in write_report(tmp_path / "bare", study)[0].read_text()


def test_the_paper_s_effect_stands_beside_the_answer_with_its_source(
    study: dict, tmp_path: Path
) -> None:
    first, *rest = study["claims"]
    first = {**first, "paper_effect": 0.042, "paper_source": "PIVOT, Vision-Centric",
             "paper_reading": "same direction, inside our interval"}  # fmt: skip
    markdown, _ = write_report(tmp_path / "run", {**study, "claims": [first, *rest]})
    text = markdown.read_text()
    line = next(line for line in text.splitlines() if first["claim"] in line)
    assert "| +4.2 pts: same direction, inside our interval |" in line
    assert f"Paper: {first['comparison']}: PIVOT, Vision-Centric." in text
    assert all(f"| - | {row['n_seeds']} | {row['verdict']} |" in text for row in rest)


def test_a_baseline_the_same_for_every_model_is_shown_once_as_a_reference(
    study: dict, tmp_path: Path
) -> None:
    def row(arm: str, seed: int, method: str, value: float) -> dict:
        keys = {"analysis": "saliency", "encoder": "e", "method": method, "metric": "energy"}
        return {**keys, "arm": arm, "seed": seed, "value": value, "reference": True}

    same = [row(arm, seed, "centre_prior", 0.127) for arm in ("sft", "dpo") for seed in (0, 1)]
    differs = [row("sft", 0, "random", 0.1), row("dpo", 0, "random", 0.2)]
    # A scale point analysed with probes only has no saliency rows: still a reference.
    probe_only = {"analysis": "linear_probe", "encoder": "e", "metric": "top1", "value": 0.5}
    scale = [{**probe_only, "arm": "dpo@enc-m+lm-s", "seed": 0}]
    markdown, _ = write_report(tmp_path / "run", {**study, "analysis": same + differs + scale})
    lines = markdown.read_text().splitlines()
    assert "| saliency, centre_prior, energy | 0.127 [0.127, 0.127] |" in lines  # once
    assert not any(line.startswith("| saliency, centre_prior") and line.count("|") > 3
                   for line in lines)  # fmt: skip
    per_arm = next(line for line in lines if line.startswith("| saliency, random, energy"))
    assert "0.100" in per_arm and "0.200" in per_arm  # marked, but not the same: a result


def test_a_measurement_the_world_hides_is_listed_with_its_reason_not_shown(
    study: dict, tmp_path: Path
) -> None:
    def row(arm: str, metric: str, value: float) -> dict:
        keys = {"analysis": "saliency", "encoder": "e", "method": "projector_grad"}
        return {**keys, "metric": metric, "arm": arm, "seed": 0, "value": value}

    rows = [
        row(a, m, v)
        for a in ("sft", "dpo")
        for m, v in (("energy", 0.18), ("energy_minus_centre", 0.054))
    ]
    hidden = {"minus_centre": "the centre prior points where no object is"}
    results = {**study, "analysis": rows, "not_measurable": hidden}
    markdown, page = write_report(tmp_path / "run", results)
    text = markdown.read_text()
    assert "| saliency, projector_grad, energy | 0.180 | 0.180 |" in text  # still a result
    assert "0.054" not in text and "energy_minus_centre" not in text
    section = text[text.index("### Not measurable in this world") :]
    assert "| minus_centre | the centre prior points where no object is | 2 |" in section
    assert "Not measurable in this world" in page.read_text()


def test_missing_sections_are_left_out_with_a_line_not_a_crash(tmp_path: Path) -> None:
    markdown, page = write_report(tmp_path / "run", {"title": "Nothing yet"})
    for path in (markdown, page):
        text = path.read_text()
        for line in ("No claims were tested", "No VQA rows", "No analysis rows",
                     "No transplant rows", "No saliency pictures", "No pca pictures",
                     "No compute rows"):  # fmt: skip
            assert line in text, (path.name, line)
    assert not (tmp_path / "run" / "figures").exists()


def test_bar_chart_is_a_valid_png_that_markdown_refers_to_relatively(
    study: dict, tmp_path: Path
) -> None:
    markdown, _ = write_report(tmp_path / "run", study)
    chart = tmp_path / "run" / "figures" / "vqa-by-category.png"
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(chart) as image:
        image.verify()
    with Image.open(chart) as image:
        assert image.width >= 400 and image.height >= 300
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown.read_text())
    assert "figures/vqa-by-category.png" in pictures
    assert all(p.startswith("figures/") and (tmp_path / "run" / p).is_file() for p in pictures)


def test_numbers_are_formatted_consistently(study: dict, tmp_path: Path) -> None:
    assert format_value(0.4131, percent=True) == "41.3%"
    assert format_value(0.4131, percent=False) == "0.413"
    assert format_cell(0.4131, 0.38, 0.446, percent=True) == "41.3% [38.0, 44.6]"
    assert format_difference(0.032, -0.005, 0.069, percent=True) == "+3.2 pts [-0.5, +6.9]"
    assert format_difference(-0.0412, -0.0803, -0.0021, False) == "-0.041 [-0.080, -0.002]"
    text = write_report(tmp_path / "run", study)[0].read_text()
    # One seed: the row's own interval; two seeds: the mean and the t interval across seeds.
    assert "| vision_centric | 25.0% | 42.3% [" in text
    two_seeds = seed_summary([0.413, 0.433])
    sft_cell = format_cell(two_seeds["mean"], two_seeds["ci_low"], two_seeds["ci_high"], True)
    assert f"| {sft_cell} |" in text
    assert "| 26.2% [22.9, 29.5] |" in text  # the blind baseline, one seed
    vqa_cells = re.findall(r"\| (\d+\.\d% \[[^\]]*\]) ", text)
    assert vqa_cells and all(re.fullmatch(r"\d+\.\d% \[-?\d+\.\d, \d+\.\d\]", c) for c in vqa_cells)
    assert "| +3.2 pts [-0.5, +6.9] |" in text and "| -0.041 [-0.080, -0.002] |" in text
    assert "0.25% of the encoder's pretraining" in text and "| 61.2 s | 3.20e12 |" in text


def test_pictures_are_copied_and_shown_side_by_side(study: dict, tmp_path: Path) -> None:
    text = write_report(tmp_path / "run", study)[0].read_text()
    saliency = text.split("## Saliency overlays")[1].split("##")[0]
    assert "| sft | dpo |" in saliency
    rows = [line for line in saliency.splitlines() if line.startswith("| ![")]
    assert len(rows) == 2 and all(line.count("](figures/saliency-") == 2 for line in rows)
    copied = sorted(p.name for p in (tmp_path / "run" / "figures").glob("saliency-*.png"))
    assert len(copied) == 4 and copied[0].startswith("saliency-dpo-00-")


def test_every_section_names_the_files_its_numbers_come_from(study: dict, tmp_path: Path) -> None:
    text = write_report(tmp_path / "run", study)[0].read_text()
    vqa = text.split("## VQA accuracy by category")[1].split("##")[0]
    # Paths under the run folder are shown relative to it.
    assert "Source: eval/sft-0/metrics.jsonl, eval/sft-1/metrics.jsonl" in vqa
    assert "Source: not recorded in the study's rows." in text  # claims carry no source here


def test_a_gallery_shows_at_most_picture_rows_per_arm(study: dict, tmp_path: Path) -> None:
    from pivotlab.study.report import PICTURE_ROWS

    many = {arm: paths * 5 for arm, paths in study["pictures"]["saliency"].items()}
    assert all(len(paths) > PICTURE_ROWS for paths in many.values())
    text = write_report(tmp_path / "run", {**study, "pictures": {"saliency": many}})[0].read_text()
    saliency = text.split("## Saliency overlays")[1].split("##")[0]
    assert len([line for line in saliency.splitlines() if line.startswith("| ![")]) == PICTURE_ROWS


def test_the_transplant_control_reads_passed_failed_or_void(study: dict, tmp_path: Path) -> None:
    """Void when Stage 1 in the same study does not tell the pair apart: the report gives
    Stage 1's gap as what is known, not a line from elsewhere."""
    control = {"comparison": "enc-m - enc-s (after transplant)", "diff": 0.006}
    control["metric"] = "macro-average accuracy"
    control.update(ci_low=-0.02, ci_high=0.044, verdict="not significant at this scale")
    gap = {"comparison": "stage1 [enc-m+lm-s] - stage1 (VQA)", "diff": 0.001}
    gap.update(ci_low=-0.009, ci_high=0.012, verdict="not significant at this scale")
    readings = {
        "void": (gap, "Stage 1 in this study, stage1 [enc-m+lm-s] - stage1 (VQA): +0.1 pts"),
        "failed": (None, "known: +3.2 in Stage 1"),
    }
    for status, (stage1_gap, known) in readings.items():
        row = {**control, "status": status, "stage1_gap": stage1_gap, "known": "+3.2 in Stage 1"}
        markdown, _ = write_report(tmp_path / status, {**study, "transplant_control": row})
        text = markdown.read_text()
        assert f"the control {'is void' if status == 'void' else 'failed'}" in text
        assert known in text
        assert "Positive control, enc-m - enc-s (after transplant), macro-average accuracy" in text
