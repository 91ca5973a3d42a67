"""Preference training that computes each image and prompt once, and a reference cache.

**Prefix sharing.** TRL's ``DPOTrainer`` runs every pair as two sequences, chosen and
rejected, that begin with the same image and prompt (its vision collator even repeats the
image), and it runs them twice, through the policy and through the frozen reference. In an
MLLM the shared part is most of each sequence. ``install_prefix_sharing`` wraps a Llava
model's forward so that a call of TRL's fused head (``model(..., labels=..,
fused_lm_head=True)``) on such a batch

1. groups the rows that have the same images and the same prompt (the tokens before the
   first label, at the same positions); a group's shared prefix is the longest common
   prefix of its rows, so answers that begin alike share their first tokens too;
2. runs the vision tower once per distinct image (pixel-identical images are one);
3. runs the LM once over each group's prefix, keeping its key/value cache (transformers'
   ``DynamicCache``), then once over every row's continuation against its group's cache,
   with the row's own position ids and a mask that covers the prefix's real tokens;
4. reassembles the last hidden states in the batch's own layout (every real token of every
   row, zeros at padding), which TRL's fused head turns into the per-token log-probs,
   entropies and logits it would have computed.

The losses are TRL's, untouched. Gradients reach the prefix through both paths, its hidden
states and its keys/values, so the policy gets the same gradient as with the stock forward
(``tests/train/test_prefix.py``). Padding on either side and ragged prompt and answer lengths
are handled: a row is its one run of attended tokens, and positions come from
``position_ids`` when the caller passes them, else from the column index, as in the stock
forward. A batch or model this module cannot compute exactly runs the stock forward, and
the reason is counted (``sharing_counts``) and, for a model, logged.

**Reference cache.** TRL refuses ``precompute_ref_log_probs`` for image datasets. The
reference model is frozen, so its log-probabilities are a function of the records:
``use_reference_cache`` computes them in one pass over the distinct training records
(with prefix sharing), stores them under ``$PIVOTLAB_CACHE/reference/`` keyed by the
records' fingerprint, the processor, the collation settings and the reference weights' hash,
feeds them to TRL's own precomputed-reference path through the collator, and drops the
reference model. Runs that share a reference and records (seeds, beta sweeps, DPO, IPO and
MPO on the same records) reuse one pass.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass
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
from transformers import Cache, DynamicCache, LlavaModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from trl.trainer.utils import hash_module

from pivotlab.cache import cache_root
from pivotlab.errors import PivotlabError
from pivotlab.io import write_bytes_atomic
from pivotlab.train.adapter import (
    accepts,
    cache_keyword,
    prepare_batch,
    release_prepared_model,
    serve_reference_from_batch,
)
from pivotlab.train.data import SAMPLE_INDEX

logger = logging.getLogger(__name__)

IGNORED = -100  # the label of a token no loss reads
# Keyword arguments of the fused-head call the shared forward reproduces exactly.
SHARED_ARGUMENTS = frozenset(
    {"input_ids", "attention_mask", "pixel_values", "position_ids", "use_cache"}
)
CALL_ARGUMENTS = frozenset({"labels", "fused_lm_head", "num_items_in_batch"})
VERIFIED_ATTENTION = ("sdpa", "eager")  # the implementations the equality tests cover
REFERENCE_KIND = "reference"
BACKBONE_NOT_CALLED = "the fused head did not call the backbone"
DIGEST_BYTES = 16


class ReferenceCacheError(PivotlabError):
    """A batch whose records the reference cache does not hold."""


# --- the plan: which rows share which prefix ---------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row of the batch: its attended tokens and their positions, from column ``start``."""

    group: int
    start: int
    tokens: list[int]
    positions: list[int]


@dataclass(frozen=True)
class Group:
    """Rows with the same images and prompt: ``shared`` leading tokens computed once."""

    row: int  # the row whose prefix is computed
    shared: int
    images: tuple[int, ...]  # distinct-image ids, in the order of the row's image tokens


@dataclass(frozen=True)
class SharingPlan:
    """How one batch is computed."""

    rows: list[Row]
    groups: list[Group]
    distinct_images: list[int]  # for each distinct-image id, an index into pixel_values


def _attended_span(mask_row: list[int]) -> tuple[int, int] | None:
    """(start, end) of the row's one run of attended tokens, or None if it has holes."""
    attended = [i for i, value in enumerate(mask_row) if value]
    if not attended:
        return None
    start, end = attended[0], attended[-1] + 1
    return (start, end) if len(attended) == end - start else None


def distinct_images(pixel_values: torch.Tensor | None) -> tuple[list[int], list[int]]:
    """For each image, the id of its pixel-identical class; for each id, its first image."""
    if pixel_values is None:
        return [], []
    flat = pixel_values.flatten(1)
    # A sum is only a pre-filter; equality is decided by torch.equal.
    sums = flat.double().sum(dim=1).tolist()
    ids: list[int] = []
    first: list[int] = []
    by_sum: dict[float, list[int]] = {}
    for index, key in enumerate(sums):
        candidates = by_sum.setdefault(key, [])
        found = next((u for u in candidates if torch.equal(flat[first[u]], flat[index])), None)
        if found is None:
            found = len(first)
            first.append(index)
            candidates.append(found)
        ids.append(found)
    return ids, first


def _images_per_row(input_ids: torch.Tensor, n_images: int, image_token_id: int) -> list[int] | str:
    """How many images each row holds (Llava: a fixed number of tokens per image)."""
    counts = (input_ids == image_token_id).sum(dim=1).tolist()
    total = sum(counts)
    if n_images == 0:
        return [0] * len(counts) if total == 0 else "image tokens without pixel values"
    if total % n_images or any(count % (total // n_images) for count in counts):
        return "image tokens do not split evenly over the images"
    return [count // (total // n_images) for count in counts]


def _common_length(a: Row, b: Row) -> int:
    length = 0
    for ta, pa, tb, pb in zip(a.tokens, a.positions, b.tokens, b.positions, strict=False):
        if ta != tb or pa != pb:
            break
        length += 1
    return length


def plan_sharing(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    pixel_values: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    image_token_id: int,
) -> SharingPlan | str:
    """The groups of rows that share images and a prompt, or why the batch cannot share.

    A row's prompt is its attended tokens before its first label; rows with the same
    distinct images and the same prompt tokens at the same positions form a group. Every
    image token of a row must lie in its group's shared prefix (the continuations are text).
    """
    batch, width = input_ids.shape
    mask = attention_mask.tolist() if attention_mask is not None else [[1] * width] * batch
    if position_ids is None:  # the stock forward's positions: the column index
        position_ids = torch.arange(width).expand(batch, width)
    positions = position_ids.expand(batch, width).tolist()
    ids, label_rows = input_ids.tolist(), labels.tolist()
    n_images = 0 if pixel_values is None else pixel_values.shape[0]
    per_row = _images_per_row(input_ids, n_images, image_token_id)
    if isinstance(per_row, str):
        return per_row
    image_ids, first_image = distinct_images(pixel_values)
    rows, groups, keys = [], [], {}
    next_image = 0
    for r in range(batch):
        span = _attended_span(mask[r])
        if span is None:
            return f"row {r}'s attention mask is not one run of tokens"
        start, end = span
        prompt_end = next((i for i in range(start, end) if label_rows[r][i] != IGNORED), end)
        images = tuple(image_ids[next_image : next_image + per_row[r]])
        next_image += per_row[r]
        key = (images, tuple(ids[r][start:prompt_end]), tuple(positions[r][start:prompt_end]))
        if key not in keys:
            keys[key] = len(groups)
            groups.append(Group(row=r, shared=0, images=images))
        rows.append(Row(keys[key], start, ids[r][start:end], positions[r][start:end]))
    if len(groups) == len(rows):
        return "no two rows share their images and prompt"
    shared = [len(rows[g.row].tokens) for g in groups]
    for row in rows:
        shared[row.group] = min(shared[row.group], _common_length(rows[groups[row.group].row], row))
    for r, row in enumerate(rows):
        last_image = max((i for i, t in enumerate(row.tokens) if t == image_token_id), default=-1)
        if last_image >= shared[row.group]:
            return f"row {r} has image tokens after its shared prefix"
    groups = [Group(g.row, s, g.images) for g, s in zip(groups, shared, strict=True)]
    return SharingPlan(rows, groups, first_image)


# --- the shared forward ------------------------------------------------------------------


def _padded(sequences: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (values, attention mask) of integer sequences."""
    width = max(len(s) for s in sequences)
    values = torch.full((len(sequences), width), fill, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        values[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[i, : len(sequence)] = 1
    return values, mask


def shared_forward(
    backbone: LlavaModel,
    forward,
    plan: SharingPlan,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
) -> ModelOutput:
    """The backbone's last hidden states for the whole batch, computed as ``plan`` says.

    ``forward`` is the backbone's stock forward, run twice: over the groups' prefixes (with
    the distinct images' features) and over the rows' continuations with the prefixes'
    key/value cache.
    """
    device = input_ids.device
    # Padding only needs to be something the image-token count does not see.
    fill = 1 if backbone.config.image_token_id == 0 else 0
    features: list[torch.Tensor] = []
    if plan.distinct_images:
        encoded = backbone.get_image_features(
            pixel_values=pixel_values[plan.distinct_images], return_dict=True
        )
        features = list(encoded.pooler_output)
    prefix_ids, prefix_mask, prefix_positions = _prefix_batch(plan, fill)
    group_features = [features[u] for g in plan.groups for u in g.images]
    encoder_outputs = {"image": BaseModelOutputWithPooling(pooler_output=group_features)}
    cache = DynamicCache(config=backbone.config.text_config)
    keyword = cache_keyword(backbone)
    prefix_mask = prefix_mask.to(device)
    prefix_output = forward(
        input_ids=prefix_ids.to(device),
        attention_mask=prefix_mask,
        position_ids=prefix_positions.to(device),
        mm_encoder_outputs=encoder_outputs if group_features else None,
        use_cache=True,
        **{keyword: cache},
    )
    prefix = prefix_output.last_hidden_state
    hidden = [prefix.flatten(0, 1)]
    continuing = [r for r, row in enumerate(plan.rows) if len(row.tokens) > _shared(plan, row)]
    tail_width = 0
    if continuing:
        of_group = torch.tensor([plan.rows[r].group for r in continuing], device=device)
        tail_ids, tail_mask, tail_positions = _tail_batch(plan, continuing, fill)
        tail_width = tail_ids.shape[1]
        cache.batch_select_indices(of_group)  # each continuation row gets its group's cache
        tail = forward(
            input_ids=tail_ids.to(device),
            attention_mask=torch.cat([prefix_mask[of_group], tail_mask.to(device)], dim=1),
            position_ids=tail_positions.to(device),
            use_cache=True,
            **{keyword: cache},
        ).last_hidden_state
        hidden.append(tail.flatten(0, 1))
    hidden.append(prefix.new_zeros(1, prefix.shape[-1]))  # what padding columns read
    index = _layout(plan, tuple(input_ids.shape), prefix.shape[1], continuing, tail_width)
    return with_hidden_states(prefix_output, torch.cat(hidden)[index.to(device)])


def with_hidden_states(output: ModelOutput, hidden: torch.Tensor) -> ModelOutput:
    """The stock forward's own output object with the batch's last hidden states.

    Built from the fields the stock forward filled, whatever its transformers version
    names them, not from fields assumed here. The prefixes' key/value cache is left out:
    the caller asked for none. The image features stay those of the distinct images, each
    encoded once.
    """
    fields = {k: v for k, v in output.items() if not isinstance(v, Cache)}
    return type(output)(**{**fields, "last_hidden_state": hidden})


def _shared(plan: SharingPlan, row: Row) -> int:
    return plan.groups[row.group].shared


def _prefix_batch(plan: SharingPlan, fill: int) -> tuple[torch.Tensor, ...]:
    """(ids, mask, positions) of each group's shared prefix, right-padded."""
    heads = [(plan.rows[g.row], g.shared) for g in plan.groups]
    ids, mask = _padded([row.tokens[:shared] for row, shared in heads], fill)
    positions, _ = _padded([row.positions[:shared] for row, shared in heads], 0)
    return ids, mask, positions


def _tail_batch(plan: SharingPlan, continuing: list[int], fill: int) -> tuple[torch.Tensor, ...]:
    """(ids, mask, positions) of the continuing rows after their shared prefix."""
    tails = [(plan.rows[r], _shared(plan, plan.rows[r])) for r in continuing]
    ids, mask = _padded([row.tokens[shared:] for row, shared in tails], fill)
    positions, _ = _padded([row.positions[shared:] for row, shared in tails], 0)
    return ids, mask, positions


def _layout(
    plan: SharingPlan,
    shape: tuple[int, int],
    prefix_width: int,
    continuing: list[int],
    tail_width: int,
) -> torch.Tensor:
    """For each (row, column) of the batch, the row of its hidden state in the stacked
    [prefix rows, continuation rows, zero row]."""
    tail_base = len(plan.groups) * prefix_width
    index = torch.full(shape, tail_base + len(continuing) * tail_width, dtype=torch.long)
    slot = {r: k for k, r in enumerate(continuing)}
    for r, row in enumerate(plan.rows):
        shared = _shared(plan, row)
        first = row.group * prefix_width
        index[r, row.start : row.start + shared] = torch.arange(first, first + shared)
        if r in slot:
            tail = len(row.tokens) - shared
            first = tail_base + slot[r] * tail_width
            column = row.start + shared
            index[r, column : column + tail] = torch.arange(first, first + tail)
    return index


# --- installing it on a model ------------------------------------------------------------


def unsupported(model) -> str | None:
    """Why prefix sharing cannot be exact for ``model``, or None."""
    backbone = getattr(model, "model", None)
    if type(backbone) is not LlavaModel:
        return f"{type(model).__name__} is not a Llava model"
    text = model.config.get_text_config()
    kinds = set(getattr(text, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"the LM has {', '.join(sorted(kinds - {'full_attention'}))} layers"
    if hasattr(text, "output_router_logits"):
        return "the LM is a mixture of experts (its router loss needs the whole batch)"
    attention = text._attn_implementation or "eager"
    if attention not in VERIFIED_ATTENTION:
        return f"attention implementation {attention!r} is not among {VERIFIED_ATTENTION}"
    if cache_keyword(backbone) is None or not accepts(backbone, "mm_encoder_outputs"):
        return "this transformers' LlavaModel.forward takes no cache or image features"
    return None


def _why_not(model, args: tuple, kwargs: dict) -> str | None:
    """Why this call runs the stock forward (None: it can share)."""
    if not model._pivotlab_sharing:
        return "switched off"
    if args:
        return "positional arguments"
    if kwargs.get("labels") is None or kwargs.get("input_ids") is None:
        return "no labels or input_ids"
    extra = set(kwargs) - SHARED_ARGUMENTS - CALL_ARGUMENTS
    if extra:
        return f"argument {sorted(extra)[0]}"
    if kwargs.get("use_cache"):
        return "use_cache"
    if model.is_activation_checkpointing and torch.is_grad_enabled():
        return "gradient checkpointing"
    return None


def _model_forward(self, *args, **kwargs):
    reason = _why_not(self, args, kwargs)
    plan = reason
    if reason is None:
        plan = plan_sharing(
            kwargs["input_ids"],
            kwargs.get("attention_mask"),
            kwargs["labels"],
            kwargs.get("pixel_values"),
            kwargs.get("position_ids"),
            self.config.image_token_id,
        )
    if isinstance(plan, str):
        self._pivotlab_sharing_counts[plan] += 1
        return self._pivotlab_stock_forward(*args, **kwargs)
    self.model._pivotlab_plan = plan
    try:
        output = self._pivotlab_stock_forward(*args, **kwargs)
    finally:
        unused = self.model._pivotlab_plan is not None
        self.model._pivotlab_plan = None
    # TRL's fused head (TRL 1.16, add_fused_lm_head) runs the backbone's forward, which
    # takes the plan; a head that did not ran the stock path, and the count says so.
    self._pivotlab_sharing_counts[BACKBONE_NOT_CALLED if unused else "shared"] += 1
    return output


def _backbone_forward(self, *args, **kwargs):
    plan = getattr(self, "_pivotlab_plan", None)
    if plan is None:
        return self._pivotlab_stock_forward(*args, **kwargs)
    self._pivotlab_plan = None  # one use: the calls below run the stock forward
    return shared_forward(
        self, self._pivotlab_stock_forward, plan, kwargs["input_ids"], kwargs.get("pixel_values")
    )


def install_prefix_sharing(model) -> str | None:
    """Make ``model``'s fused-head calls share prefixes (see the module docstring).

    Install after TRL's ``add_fused_lm_head`` (a ``DPOTrainer``'s construction does it).
    Returns why the model cannot share (and changes nothing), else None. Both wrappers are
    bound methods, so ``copy.deepcopy`` of the model rebinds them to the copy.
    """
    reason = unsupported(model)
    if reason is not None:
        return reason
    if hasattr(model, "_pivotlab_stock_forward"):
        model._pivotlab_sharing = True
        return None
    backbone = model.model
    model._pivotlab_stock_forward = model.forward
    backbone._pivotlab_stock_forward = backbone.forward
    model._pivotlab_sharing = True
    model._pivotlab_sharing_counts = Counter()
    # The signatures stay the stock ones: generate() checks its kwargs against them. Fresh
    # lambdas, because wraps() writes its attributes onto the function it is given.
    outer = functools.wraps(type(model).forward)(
        lambda self, *a, **k: _model_forward(self, *a, **k)
    )
    inner = functools.wraps(type(backbone).forward)(
        lambda self, *a, **k: _backbone_forward(self, *a, **k)
    )
    model.forward = types.MethodType(outer, model)
    backbone.forward = types.MethodType(inner, backbone)
    return None


def set_prefix_sharing(model, enabled: bool) -> None:
    """Switch an installed model between the shared and the stock forward."""
    model._pivotlab_sharing = enabled


def sharing_counts(model) -> Counter:
    """How many calls shared, and why the others did not."""
    return getattr(model, "_pivotlab_sharing_counts", Counter())


# --- the reference cache -----------------------------------------------------------------


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
        "reference": hash_module(reference),
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


def speed_up_preferences(trainer, *, prefix_sharing: bool, reference_cache: bool) -> None:
    """Apply the switches to a stage's ``DPOTrainer`` (after its construction).

    Prefix sharing is installed on the reference model and on the policy, except on a
    policy VIRAL watches: its hooks read one LM layer's hidden states of the full
    sequences from the objective's forward, which the shared forward computes in two
    pieces, so that policy keeps the stock forward (logged).
    """
    if prefix_sharing:
        for name, model in (("reference", trainer.ref_model), ("policy", trainer.model)):
            if model is None:
                continue
            if name == "policy" and getattr(trainer, "alignment", None) is not None:
                logger.warning("prefix sharing off for the policy: VIRAL reads its hidden states")
                continue
            reason = install_prefix_sharing(trainer.accelerator.unwrap_model(model))
            if reason is not None:
                logger.warning("prefix sharing off for the %s: %s", name, reason)
    if reference_cache and trainer.ref_model is not None:
        use_reference_cache(trainer)
