"""``pivotlab study``: check the run folder, run every step, then gather what they left
into one report (``results.py``) and write it (``report.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pivotlab.configtree import ConfigError, build_dataclass
from pivotlab.io import write_json_atomic, write_text_atomic
from pivotlab.study.claims import check_claim_names, check_transplant_control, default_primary
from pivotlab.study.config import StudyConfig, StudyError
from pivotlab.study.ledger import Ledger
from pivotlab.study.pipeline import run_steps, seed_steps, world_splits
from pivotlab.study.results import collect


def _without_growth(tree: dict[str, Any]) -> dict[str, Any]:
    """A study tree without what may grow between runs in one folder."""
    post = {k: v for k, v in tree["post"].items() if k not in ("arms", "compared")}
    # A positive control reads finished transplants: adding one changes no step.
    transplant = tree["transplant"] and {
        k: v for k, v in tree["transplant"].items() if k not in ("encoders", "control")
    }
    grows = ("source", "claims", "notes", "primary", "paper", "not_measurable")
    rest = {k: v for k, v in tree.items() if k not in grows}
    return {**rest, "post": post, "transplant": transplant}


def _same_or_grown(previous: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether ``current`` is ``previous`` with arms, claims or transplanted encoders added
    (and notes changed): then the finished steps still stand and only new ones run."""
    arms_kept = all(
        current["post"]["arms"].get(name) == recipe
        for name, recipe in previous["post"]["arms"].items()
    )
    claims_kept = all(claim in current["claims"] for claim in previous["claims"])

    def encoders(tree: dict[str, Any]) -> set[str] | None:
        chosen = (tree["transplant"] or {}).get("encoders")
        return None if chosen is None else set(chosen)

    before, after = encoders(previous), encoders(current)
    encoders_kept = after is None or (before is not None and before <= after)
    same_rest = _without_growth(previous) == _without_growth(current)
    return arms_kept and claims_kept and encoders_kept and same_rest


def _same_primary(previous: list[str] | None, study: StudyConfig) -> bool:
    """Whether the folder's pre-registered claims are the study's: the same list, or a folder
    from before ``primary:`` existed (its claims then were the default set) and a study that
    names the default set."""
    if previous == study.primary:
        return True
    return previous is None and study.primary == default_primary(study)


def check_folder(study: StudyConfig, out: Path) -> None:
    """Refuse a folder holding another study; re-running the same one resumes it, and one
    that only adds arms (claims, transplanted encoders) runs just the new steps."""
    saved = out / "study.yaml"
    current = {k: v for k, v in study.to_dict().items() if k != "source"}
    if saved.is_file():
        # Read back through the config classes, so keys added since (with defaults) match.
        try:
            previous = build_dataclass(StudyConfig, yaml.safe_load(saved.read_text()) or {})
        except ConfigError:
            previous = None
        previous_tree = previous.to_dict() if previous is not None else None
        if (
            previous_tree is None
            or not _same_or_grown(previous_tree, current)
            or not _same_primary(previous_tree["primary"], study)
        ):
            raise StudyError(
                f"{out} holds another study (study.yaml differs by more than added arms, or "
                "pre-registers other primary claims); choose another --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise StudyError(f"{out} is not empty and holds no study.yaml; refusing it")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, yaml.safe_dump(current, sort_keys=False))


def run_study(
    study: StudyConfig,
    out: Path,
    command: str,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> tuple[Path, Path]:
    """Run (or resume) the study into ``out``; returns the report's markdown and HTML paths.
    What each step prints goes to ``out/logs/<step>.log`` (``verbose``: to the console)."""
    check_claim_names(study)
    check_transplant_control(study)
    check_folder(study, out)
    splits = world_splits(study)
    log("world: " + ", ".join(f"{k} {v.name}" for k, v in splits.items()))
    steps = [step for seed in study.seeds for step in seed_steps(study, out, seed, splits)]
    run_steps(steps, Ledger(out), log, logs=None if verbose else out / "logs")
    results = collect(study, out, steps, command)
    write_json_atomic(out / "results.json", results, indent=1, default=str)
    from pivotlab.study.report import write_report

    return write_report(out, results)
