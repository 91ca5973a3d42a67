"""The reference model's log-probabilities, computed once per records and reference.

TRL refuses ``precompute_ref_log_probs`` for image datasets. The
reference model is frozen, so its log-probabilities are a function of the records:
``use_reference_cache`` computes them in one pass over the distinct training records
(with prefix sharing), stores them under ``$PIVOTLAB_CACHE/reference/`` keyed by the
records' fingerprint, the processor, the collation settings and the reference weights' hash,
feeds them to TRL's own precomputed-reference path through the collator, and drops the
reference model. Runs that share a reference and records (seeds, beta sweeps, DPO, IPO and
MPO on the same records) reuse one pass.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import trl
from accelerate import PartialState
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from torch.utils.data import DataLoader

from pivotlab.cache import cache_root
from pivotlab.errors import PivotlabError
from pivotlab.io import write_bytes_atomic
from pivotlab.train.adapter import (
    module_digest,
    prepare_batch,
    release_prepared_model,
    serve_reference_from_batch,
)
from pivotlab.train.stage_data import SAMPLE_INDEX

REFERENCE_KIND = "reference"
DIGEST_BYTES = 16


class ReferenceCacheError(PivotlabError):
    """A batch whose records the reference cache does not hold."""


def _first_rows(data: datasets.Dataset) -> tuple[list[int], datasets.Dataset]:
    """The distinct record indices of a scheduled dataset (repeats allowed), sorted, and a
    dataset with one row per record in that order."""
    first: dict[int, int] = {}
    for position, index in enumerate(data[SAMPLE_INDEX]):
        first.setdefault(index, position)
    indices = sorted(first)
    return indices, data.select([first[i] for i in indices])


def _text_digest(example: dict) -> bytes:
    """A record's text columns (everything but images and the index), hashed."""
    text = {k: v for k, v in example.items() if k not in ("images", "image", SAMPLE_INDEX)}
    encoded = json.dumps(text, sort_keys=True, default=str).encode()
    return hashlib.blake2b(encoded, digest_size=DIGEST_BYTES).digest()


def records_fingerprint(records: datasets.Dataset) -> tuple[str, torch.Tensor]:
    """A fingerprint of the records' content (text and image file bytes, in index order)
    and each record's text digest, (n, DIGEST_BYTES) uint8."""
    raw = records
    for column in ("images", "image"):
        if column in records.column_names:
            feature = records.features[column]
            undecoded = (
                datasets.List(datasets.Image(decode=False))
                if isinstance(feature, datasets.List | list)
                else datasets.Image(decode=False)
            )
            raw = raw.cast_column(column, undecoded)
    total = hashlib.sha256()
    digests = []
    for example in raw:
        digest = _text_digest(example)
        digests.append(list(digest))
        total.update(str(example[SAMPLE_INDEX]).encode() + digest)
        images = example.get("images") or ([example["image"]] if example.get("image") else [])
        for image in images:
            content = image["bytes"] or Path(image["path"]).read_bytes()
            total.update(hashlib.sha256(content).digest())
    return total.hexdigest(), torch.tensor(digests, dtype=torch.uint8)


def _tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's vocabulary and rules, without the padding and truncation state that
    every padded call changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return json.dumps(tokenizer.get_vocab(), sort_keys=True)
    state = json.loads(backend.to_str())
    state.pop("padding", None)
    state.pop("truncation", None)
    return json.dumps(state, sort_keys=True)


def _processor_fingerprint(processor) -> str:
    tokenizer = getattr(processor, "tokenizer", processor)
    parts = [
        _tokenizer_fingerprint(tokenizer),
        str(getattr(processor, "chat_template", "") or getattr(tokenizer, "chat_template", "")),
        getattr(processor, "image_processor", None) and processor.image_processor.to_json_string(),
        str(tokenizer.pad_token),
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def reference_key(trainer, records_hash: str, reference) -> dict[str, str]:
    """Everything the cached numbers depend on."""
    args = trainer.args
    return {
        "records": records_hash,
        "processor": _processor_fingerprint(trainer.processing_class),
        "reference": module_digest(reference),
        "settings": json.dumps(
            {
                "max_length": args.max_length,
                "ld_alpha": args.ld_alpha,
                "bf16": bool(args.bf16),
                "fp16": bool(args.fp16),
                "trl": trl.__version__,
                "transformers": transformers.__version__,
            },
            sort_keys=True,
        ),
    }


def reference_pass(trainer, records: datasets.Dataset, reference) -> torch.Tensor:
    """(n, 2) reference log-probs (chosen, rejected) of ``records``, by TRL's own
    ``compute_ref_log_probs``, in batches of the training batch size."""
    loader = DataLoader(
        records,
        batch_size=trainer.args.per_device_train_batch_size,
        collate_fn=trainer.data_collator,
        shuffle=False,
    )
    values = []
    for batch in loader:
        batch.pop(SAMPLE_INDEX, None)
        batch = prepare_batch(trainer, batch)
        chosen, rejected = trainer.compute_ref_log_probs(reference, batch)
        values.append(torch.stack([chosen, rejected], dim=1).float().cpu())
    return torch.cat(values)


class ReferenceColumns:
    """Wraps the trainer's collator: adds each record's cached reference log-probs, the
    columns TRL's precomputed-reference path reads, after checking the record's text."""

    def __init__(self, inner: Any, table: torch.Tensor, digests: torch.Tensor) -> None:
        self.inner = inner
        self.table = table
        self.digests = digests

    def __call__(self, examples: list[dict]) -> dict:
        seen = [bytes(_text_digest(e)) for e in examples]
        batch = self.inner(examples)
        indices = batch[SAMPLE_INDEX]
        for index, digest in zip(indices.tolist(), seen, strict=True):
            if index >= len(self.digests) or bytes(self.digests[index].tolist()) != digest:
                raise ReferenceCacheError(
                    f"record {index} of this batch is not the record the reference cache holds "
                    "under that index; the cache covers the training records only"
                )
        batch["ref_chosen_logps"] = self.table[indices, 0]
        batch["ref_rejected_logps"] = self.table[indices, 1]
        return batch


def _load_or_compute(trainer, reference, folder: Path) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """(table, digests, file): the cached log-probs indexed by record, computed if absent."""
    indices, records = _first_rows(trainer.train_dataset)
    records_hash, digests = records_fingerprint(records)
    key = reference_key(trainer, records_hash, reference)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = folder / f"{name}.safetensors"
    state = PartialState()
    with state.main_process_first():  # one process computes, the others read its file
        if not path.is_file():
            start = time.perf_counter()
            values = reference_pass(trainer, records, reference)
            if state.is_main_process:
                folder.mkdir(parents=True, exist_ok=True)
                tensors = {"index": torch.tensor(indices), "logps": values, "digests": digests}
                write_bytes_atomic(path, save_tensors(tensors, metadata=key))
            seconds = time.perf_counter() - start
            print(
                f"reference log-probs of {len(indices)} records: {seconds:.1f} s, cached in {path}",
                file=sys.stderr,
            )
        saved = load_file(path)
    size = int(saved["index"].max()) + 1
    table = torch.full((size, 2), float("nan"))
    table[saved["index"]] = saved["logps"]
    by_index = torch.zeros((size, DIGEST_BYTES), dtype=torch.uint8)
    by_index[saved["index"]] = saved["digests"]
    return table, by_index, path


def use_reference_cache(trainer, folder: Path | None = None) -> Path:
    """Serve ``trainer``'s reference log-probs from the cache and drop its reference model.

    ``trainer`` is a ``DPOTrainer`` with a reference model whose training rows carry
    ``sample_index`` and whose collator passes it through (pivotlab's stage trainers);
    returns the cache file.
    """
    reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    table, digests, path = _load_or_compute(
        trainer, reference, folder or cache_root(REFERENCE_KIND)
    )
    trainer.data_collator = ReferenceColumns(trainer.data_collator, table, digests)
    # TRL's own path for "the batch carries the reference log-probs", switched on after
    # construction because its constructor refuses it for image datasets.
    serve_reference_from_batch(trainer)
    # Without this, accelerate would keep the reference in memory.
    release_prepared_model(trainer.accelerator, trainer.ref_model)
    trainer.ref_model = None
    return path
