"""Preference training that computes each image and prompt once (prefix sharing).

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

The reference log-prob cache that runs beside it is ``train/refcache.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache, LlavaModel
from transformers.utils import ModelOutput

from pivotlab.train.adapter import (
    FUSED_HEAD_ARGUMENTS,
    attention_implementation,
    cache_keyword,
    image_features_argument,
    takes_image_features,
    wrap_forward,
)

IGNORED = -100  # the label of a token no loss reads
# Keyword arguments of the fused-head call the shared forward reproduces exactly.
SHARED_ARGUMENTS = frozenset(
    {"input_ids", "attention_mask", "pixel_values", "position_ids", "use_cache"}
)
VERIFIED_ATTENTION = ("sdpa", "eager")  # the implementations the equality tests cover
BACKBONE_NOT_CALLED = "the fused head did not call the backbone"
STOCK_FORWARD = "_pivotlab_stock_forward"  # where a wrapped model and backbone keep theirs


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
    cache = DynamicCache(config=backbone.config.text_config)
    keyword = cache_keyword(backbone)
    prefix_mask = prefix_mask.to(device)
    prefix_output = forward(
        input_ids=prefix_ids.to(device),
        attention_mask=prefix_mask,
        position_ids=prefix_positions.to(device),
        use_cache=True,
        **image_features_argument(group_features),
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
    attention = attention_implementation(text) or "eager"
    if attention not in VERIFIED_ATTENTION:
        return f"attention implementation {attention!r} is not among {VERIFIED_ATTENTION}"
    if cache_keyword(backbone) is None or not takes_image_features(backbone):
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
    extra = set(kwargs) - SHARED_ARGUMENTS - FUSED_HEAD_ARGUMENTS
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
    # TRL's fused head runs the backbone's forward (adapter.wrap_forward), which takes the
    # plan; a head that did not ran the stock path, and the count says so.
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
    installed by ``adapter.wrap_forward``, so ``copy.deepcopy`` of the model rebinds them.
    """
    reason = unsupported(model)
    if reason is not None:
        return reason
    if hasattr(model, STOCK_FORWARD):
        model._pivotlab_sharing = True
        return None
    model._pivotlab_sharing = True
    model._pivotlab_sharing_counts = Counter()
    wrap_forward(model, _model_forward, keep_as=STOCK_FORWARD)
    wrap_forward(model.model, _backbone_forward, keep_as=STOCK_FORWARD)
    return None


def set_prefix_sharing(model, enabled: bool) -> None:
    """Switch an installed model between the shared and the stock forward."""
    model._pivotlab_sharing = enabled


def sharing_counts(model) -> Counter:
    """How many calls shared, and why the others did not."""
    return getattr(model, "_pivotlab_sharing_counts", Counter())


# --- the reference cache -----------------------------------------------------------------
