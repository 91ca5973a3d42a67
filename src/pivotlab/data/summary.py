"""What ``pivotlab data check`` reports about a loaded dataset."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pivotlab.data.records import Loaded

EXAMPLES = 3  # problems shown per kind


def length_stats(lengths: list[int]) -> dict[str, float] | None:
    """Min, median, 95th percentile (linear interpolation) and max; None when empty."""
    if not lengths:
        return None
    values = np.asarray(lengths, dtype=float)
    median, p95 = np.percentile(values, [50, 95])
    return {
        "min": float(values.min()),
        "median": float(median),
        "p95": float(p95),
        "max": float(values.max()),
    }


def summary(loaded: Loaded, examples: int = EXAMPLES) -> dict:
    """Rows, valid records, unique images, record kinds, categories (where rows carry a
    ``category`` or ``source``), the length distribution and the problems by kind, with
    the first ``examples`` of each kind."""
    records = loaded.records
    firsts: dict[str, list[str]] = {}
    for problem in loaded.problems:
        shown = firsts.setdefault(problem.kind, [])
        if len(shown) < examples:
            shown.append(str(problem))
    return {
        "rows": loaded.rows,
        "valid": len(records),
        "unique_images": len({r.image for r in records}),
        "kinds": dict(Counter(r.kind for r in records).most_common()),
        "categories": dict(Counter(r.category for r in records if r.category).most_common()),
        "length_unit": loaded.length_unit,
        "length": length_stats(loaded.lengths),
        "problems": loaded.counts(),
        "examples": firsts,
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def summary_text(report: dict, title: str) -> str:
    """The summary as the lines ``data check`` prints."""
    lines = [
        title,
        f"rows {report['rows']}, valid {report['valid']}, unique images {report['unique_images']}",
        f"records: {_counts(report['kinds']) or '-'}",
    ]
    if report["categories"]:
        lines.append(f"categories: {_counts(report['categories'])}")
    stats = report["length"]
    if stats:
        values = ", ".join(f"{name} {value:g}" for name, value in stats.items())
        lines.append(f"length ({report['length_unit']}): {values}")
    problems = report["problems"]
    if not problems:
        lines.append("problems: none")
        return "\n".join(lines)
    lines.append(f"problems: {sum(problems.values())} rows ({_counts(problems)})")
    for kind in problems:
        lines += [f"  {example}" for example in report["examples"][kind]]
    return "\n".join(lines)
