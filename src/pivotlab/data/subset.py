"""PIVOT's matched SFT / DPO subset of MMPR-style preference data.

PIVOT's ``mpo-make_jsons.py`` (``--seed 777 --data_size 20000``, token limit 1500) shuffles
the MMPR-v1.2 rows with a seed, walks them in that order keeping single-image rows whose
image exists and whose question + chosen answer fit the token limit, stops at N, and writes
the same N records twice: an SFT file (LLaVA format, the chosen answer) and a DPO file
(prompt, chosen, rejected). SFT therefore trains on exactly the chosen answers of the DPO
pairs.

Here the walk applies every check of the loader (so a truncated image or an empty answer
is excluded too, and counted), the token limit counts the tokens the model sees (chat
template and expanded image) for the longer of the two answers (the DPO file trains on
both), and the seed drives numpy's permutation of the rows (the same one
``pivotlab.train`` uses for ``data.limit``). PIVOT's own quirks are not copied: its
multi-image check stops reading a file at the first multi-image row, and text-only rows
crash it; here each such row is excluded and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from pivotlab.data.formats import IMAGE
from pivotlab.data.load import Source, Validator, chunks
from pivotlab.data.records import DataError, Problem, Record
from pivotlab.io import file_sha256, write_jsonl_atomic, write_text_atomic

RECIPE = "pivot-matched-subset"


def seeded_walk(source: Source, n: int, seed: int, validator: Validator) -> dict:
    """The first ``n`` valid records of a seeded shuffle of ``source``'s rows, the rows
    excluded on the way (problems), and how many rows were read and visited."""
    items = list(source.rows())
    order = np.random.default_rng(seed).permutation(len(items)).tolist()
    results = (r for chunk in chunks(order) for r in validator.check([items[i] for i in chunk]))
    kept: list[Record] = []
    excluded: list[Problem] = []
    visited = 0
    for result in results:  # lazily: rows after the n-th kept one are never checked
        visited += 1
        if isinstance(result, Problem):
            excluded.append(result)
        else:
            kept.append(result[0])
        if len(kept) == n:
            break
    if len(kept) < n:
        raise DataError(
            f"{source.path}: only {len(kept)} of {len(items)} rows pass the checks; asked for {n}"
        )
    return {"records": kept, "excluded": excluded, "rows": len(items), "visited": visited}


def llava_row(record: Record) -> dict:
    """A preference record as a LLaVA conversation on its chosen answer."""
    row = {
        "id": record.id,
        "image": record.image,
        "conversations": [
            {"from": "human", "value": f"{IMAGE}\n{record.prompt}"},
            {"from": "gpt", "value": record.chosen},
        ],
    }
    return row | ({"category": record.category} if record.category else {})


def mmpr_row(record: Record) -> dict:
    """A preference record as an MMPR row (``<image>`` leading the question, as PIVOT)."""
    row = {
        "id": record.id,
        "image": record.image,
        "question": f"{IMAGE}\n{record.prompt}",
        "chosen": record.chosen,
        "rejected": record.rejected,
    }
    return row | ({"category": record.category} if record.category else {})


def write_rows(path: Path, rows: list[dict]) -> None:
    """``.jsonl``: one row per line; otherwise a JSON list with one row per line (so the
    loaders' line numbers point at rows). Written atomically, UTF-8."""
    if path.suffix == ".jsonl":
        write_jsonl_atomic(path, rows, ensure_ascii=False)
        return
    items = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    write_text_atomic(path, f"[\n{items}\n]\n")


def write_subset(
    source: Source,
    n: int,
    seed: int,
    validator: Validator,
    sft_out: Path,
    dpo_out: Path,
    manifest_out: Path,
    processor: str | None = None,
) -> dict:
    """Walk ``source`` (``seeded_walk``), write the SFT and DPO files with the same records
    in the same order, the excluded rows (``<manifest stem>.excluded.jsonl``) and the
    manifest; returns the manifest."""
    if source.format != "mmpr":
        raise DataError(f"data subset reads preference data (format mmpr), not {source.format}")
    if n < 1:
        raise DataError(f"n must be positive, got {n}")
    source.check()
    walk = seeded_walk(source, n, seed, validator)
    records: list[Record] = walk["records"]
    for path in (sft_out, dpo_out, manifest_out):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_rows(sft_out, [llava_row(r) for r in records])
    write_rows(dpo_out, [mmpr_row(r) for r in records])
    stem = manifest_out.name.removesuffix(".json").removesuffix(".manifest")
    excluded_out = manifest_out.with_name(f"{stem}.excluded.jsonl")
    write_jsonl_atomic(excluded_out, [p.to_json() for p in walk["excluded"]], ensure_ascii=False)
    manifest = {
        "recipe": RECIPE,
        "source": str(source.path),
        "source_sha256": file_sha256(source.path),
        "format": source.format,
        "images": str(source.images),
        "seed": seed,
        "n": n,
        "filters": {
            "single_image": True,
            "max_chars": validator.limits.max_chars,
            "max_length": validator.max_length,
            "processor": processor,
        },
        "rows": walk["rows"],
        "visited": walk["visited"],
        "excluded": dict(Counter(p.kind for p in walk["excluded"]).most_common()),
        "excluded_rows": str(excluded_out),
        "sft": str(sft_out),
        "dpo": str(dpo_out),
    }
    write_text_atomic(manifest_out, json.dumps(manifest, indent=2) + "\n")
    return manifest
