"""The zoo's pretraining objectives, on standard HF model classes.

- contrastive and dense: a ``SiglipModel`` (vision tower + tiny text tower) trained with
  SigLIP's own sigmoid image-text loss (``return_loss=True``) on world image-caption pairs,
  plus a per-patch prediction of each patch's symbolic cell (the object in that part of the
  image: colour, shape, size, occlusion); the vision tower is kept as a
  ``SiglipVisionModel``;
- dense: a ``Dinov2Model`` trained to predict, from each patch token, the share of every
  semantic class inside that patch (images and masks only, never questions): spatially rich
  patch features, the teacher's role DINOv2 plays for VIRAL;
- language: a ``Qwen2ForCausalLM`` trained by next-token prediction on world text, and on
  the tiny world's questions about symbolic scenes (``pivotlab.world.symbolic``): the
  image's cells given as sums of word embeddings where the MLLM's visual tokens go, the
  answers the only supervised tokens (reasoning learned as text, before pixels).

The loops are small plain-PyTorch loops (AdamW, warm-up + cosine from transformers): each
part is pretrained once, on tensors already in memory, for a few hundred steps; the stage
recipes of the papers run on TRL (the train layer). Compute is accounted with
``torch.utils.flop_counter`` on the first step. A ``Progress`` file lets a killed build
resume where it was (the larger LMs train for hours on a laptop's CPU).
"""

from __future__ import annotations

import io
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from pivotlab.io import write_bytes_atomic
from pivotlab.zoo.pretraining import CELL_ATTRIBUTES, NO_TARGET, SymbolicSet
from pivotlab.zoo.recipes import ZooError

# The tower hidden state a LLaVA projector reads: the penultimate block's output (the
# default of ``pivotlab.model.assembly``); the encoders' dense objective is applied there.
PROJECTOR_FEATURE_LAYER = -2


@dataclass
class Compute:
    """What a pretraining run cost."""

    steps: int
    samples: int
    flops: float  # forward + backward, counted on one step, times steps
    seconds: float
    final_loss: float


@dataclass
class Progress:
    """Where a build keeps its progress: ``run_steps`` saves the ``modules``' weights, the
    optimizer, the schedule and the batch order to ``path`` every ``every_seconds`` and at
    the end of each phase, and a build that finds the file resumes from it with the same
    batches, so a killed multi-hour build (a laptop asleep, a session's end) loses minutes,
    not hours, and ends with the weights an unbroken run gives. ``state`` and
    ``load_state`` carry the loss's own state (the LM's text order) across a resume."""

    path: Path
    modules: list[nn.Module]
    every_seconds: float = 600.0
    state: Callable[[], dict] = dict
    load_state: Callable[[dict], None] = lambda state: None
    finished: list[Compute] = field(default_factory=list, init=False)
    _saved: dict | None = field(default=None, init=False, repr=False)
    _read: bool = field(default=False, init=False, repr=False)

    def resumed(self) -> dict | None:
        """The saved progress, read once (the modules and the loss's state loaded from it),
        or ``None`` when there is none."""
        if not self._read:
            self._read = True
            if self.path.is_file():
                try:
                    saved = torch.load(self.path, weights_only=True)
                    for module, weights in zip(self.modules, saved["modules"], strict=True):
                        module.load_state_dict(weights)
                    self.load_state(saved["state"])
                    self.finished = [Compute(**c) for c in saved["finished"]]
                except Exception as error:  # any unreadable file: say which, in one line
                    raise ZooError(
                        f"zoo: cannot resume from {self.path} ({type(error).__name__}); "
                        "delete it to train this part from the start"
                    ) from error
                self._saved = saved
        return self._saved

    def save(self, phase: int, step: int, run: dict | None) -> None:
        """Record that ``phase`` is at ``step`` (``run``: its optimizer, schedule, batch
        order and figures so far; ``None`` at a phase's start)."""
        buffer = io.BytesIO()
        torch.save(
            {
                "phase": phase,
                "step": step,
                "run": run,
                "modules": [m.state_dict() for m in self.modules],
                "state": self.state(),
                "finished": [asdict(c) for c in self.finished],
            },
            buffer,
        )
        write_bytes_atomic(self.path, buffer.getvalue())


def run_steps(
    parameters: list[nn.Parameter],
    loss_of_batch: Callable[[torch.Tensor], torch.Tensor],
    n_items: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    weights: torch.Tensor | None = None,
    progress: Progress | None = None,
    phase: int = 0,
) -> Compute:
    """Optimise ``loss_of_batch(indices)`` over random batches of ``n_items`` items, drawn
    uniformly or, with ``weights``, in proportion to them (with replacement). With
    ``progress``, this is phase ``phase`` of a resumable run: a finished phase returns what
    it cost, an unfinished one goes on from its saved step."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    order = torch.Generator().manual_seed(seed)
    first_step, flops_per_step, seconds_before = 0, 0.0, 0.0
    loss = torch.tensor(float("nan"))
    saved = progress.resumed() if progress else None
    if saved and saved["phase"] > phase:
        return progress.finished[phase]
    if saved and saved["phase"] == phase and saved["run"]:
        run = saved["run"]
        optimizer.load_state_dict(run["optimizer"])
        schedule.load_state_dict(run["schedule"])
        order.set_state(run["order"])
        first_step, flops_per_step = saved["step"], run["flops_per_step"]
        seconds_before, loss = run["seconds"], torch.tensor(run["loss"])
    start = last_save = time.perf_counter()

    def run_state() -> dict:
        return {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "order": order.get_state(),
            "flops_per_step": flops_per_step,
            "seconds": seconds_before + time.perf_counter() - start,
            "loss": float(loss.detach()),
        }

    # A part that is not shipped trains for minutes to hours: a bar with the time left (on a
    # terminal; elsewhere a line a minute).
    interval = 0.5 if sys.stderr.isatty() else 60.0
    bar = tqdm(
        range(first_step, steps),
        desc="zoo: training",
        unit="step",
        mininterval=interval,
        initial=first_step,
        total=steps,
    )
    for step in bar:
        if weights is None:
            indices = torch.randint(n_items, (batch_size,), generator=order)
        else:
            indices = torch.multinomial(weights, batch_size, replacement=True, generator=order)
        if step == 0:
            with FlopCounterMode(display=False) as counter:
                loss = loss_of_batch(indices)
                loss.backward()
            flops_per_step = float(counter.get_total_flops())
        else:
            loss = loss_of_batch(indices)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress and time.perf_counter() - last_save >= progress.every_seconds:
            progress.save(phase, step + 1, run_state())
            last_save = time.perf_counter()
    seconds = seconds_before + time.perf_counter() - start
    compute = Compute(
        steps, steps * batch_size, flops_per_step * steps, seconds, float(loss.detach())
    )
    if progress:
        progress.finished.append(compute)
        progress.save(phase + 1, 0, None)
    return compute


class CellAttributeHead(nn.Module):
    """One linear map per attribute of ``CELL_ATTRIBUTES`` from each patch token to that
    attribute's class logits (discarded after training)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(width, len(c)) for c in CELL_ATTRIBUTES.values())

    def forward(self, patch_tokens: torch.Tensor) -> list[torch.Tensor]:
        return [linear(patch_tokens) for linear in self.linears]


def sigmoid_pair_and_cell_loss(
    model,
    head: CellAttributeHead,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    cells: torch.Tensor,
    feature_layer: int,
) -> torch.Tensor:
    """SigLIP's image-text loss, plus cross-entropy of each patch token's symbolic cell
    (colour, shape, size, occlusion) at the hidden state the MLLM's projector reads (as
    SigLIP 2 adds dense objectives to the contrastive one). Images without cells
    (``NO_TARGET``) add nothing to the second term."""
    output = model(
        pixel_values=pixel_values, input_ids=input_ids, return_loss=True, output_hidden_states=True
    )
    if (cells == NO_TARGET).all():  # cross-entropy over no target is nan
        return output.loss
    tokens = output.vision_model_output.hidden_states[feature_layer]
    dense = sum(
        F.cross_entropy(logits.flatten(0, 1), cells[..., k].flatten(), ignore_index=NO_TARGET)
        for k, logits in enumerate(head(tokens))
    )
    return output.loss + dense


class PatchClassHead(nn.Module):
    """Linear map from each patch token to semantic-class logits (discarded after training)."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, classes)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(patch_tokens)


def dense_loss(
    model, head: PatchClassHead, pixel_values: torch.Tensor, shares: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy between each patch's predicted class distribution and its true shares."""
    tokens = model(pixel_values=pixel_values).last_hidden_state[:, 1:]  # drop CLS
    log_probs = head(tokens).log_softmax(dim=-1)
    return -(shares * log_probs).sum(dim=-1).mean()


def next_token_loss(model, blocks: torch.Tensor) -> torch.Tensor:
    return model(input_ids=blocks, labels=blocks).loss


def _pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


def symbolic_forward(model, data: SymbolicSet, indices: list[int], image_id: int, pad_id: int):
    """The LM's output on conversations about symbolic scenes: each image placeholder's
    embedding replaced by the sum of its cell's word embeddings, in raster order (where a
    Llava projector puts its visual tokens). Returns the output and the padded labels."""
    ids = _pad([data.ids[i] for i in indices], pad_id)
    labels = _pad([data.labels[i] for i in indices], -100)
    tables = [data.cells[i] for i in indices]
    width = max(t.shape[1] for t in tables)
    cells = torch.stack([F.pad(t, (0, width - t.shape[1]), value=-1) for t in tables])
    embed = model.get_input_embeddings()
    cell_vectors = (embed(cells.clamp(min=0)) * (cells >= 0).unsqueeze(-1)).sum(2)
    inputs = embed(ids)
    slots = (ids == image_id).unsqueeze(-1).expand_as(inputs)
    inputs = inputs.masked_scatter(slots, cell_vectors.to(inputs.dtype))
    output = model(inputs_embeds=inputs, attention_mask=(ids != pad_id).long(), labels=labels)
    return output, labels


def task_balanced_weights(data: SymbolicSet) -> torch.Tensor:
    """A weight per conversation such that every task (of its first question) is drawn
    equally often: the rare tasks that compare two objects are seen as often as look-ups."""
    firsts = [tasks[0] for tasks in data.tasks]
    counts = Counter(firsts)
    return torch.tensor([1.0 / counts[task] for task in firsts])


def focus_weights(data: SymbolicSet, tasks: tuple[str, ...]) -> torch.Tensor:
    """Weight 1 for each conversation whose first question is one of ``tasks``, else 0: a
    curriculum phase that trains those tasks alone."""
    weights = torch.tensor([float(asked[0] in tasks) for asked in data.tasks])
    if not weights.any():
        raise ValueError(f"no symbolic conversation asks {', '.join(tasks)}")
    return weights


def add_computes(phases: list[Compute]) -> Compute:
    """What a run made of ``phases`` cost, as one ``Compute`` (its last phase's loss)."""
    return Compute(
        sum(c.steps for c in phases),
        sum(c.samples for c in phases),
        sum(c.flops for c in phases),
        sum(c.seconds for c in phases),
        phases[-1].final_loss,
    )


@torch.inference_mode()
def symbolic_accuracy(
    model, data: SymbolicSet, image_id: int, pad_id: int, batch_size: int = 64
) -> dict[str, float]:
    """Share of answers right (every answer token the argmax), per task and over all."""
    model.eval()
    right: dict[str, list[bool]] = {}
    for start in range(0, len(data.ids), batch_size):
        indices = list(range(start, min(start + batch_size, len(data.ids))))
        output, labels = symbolic_forward(model, data, indices, image_id, pad_id)
        predicted, targets = output.logits[:, :-1].argmax(-1), labels[:, 1:]
        for row, index in enumerate(indices):
            answer = (targets[row] != -100).int()
            # Each turn's answer is one run of labelled tokens.
            starts = (answer.diff(prepend=answer.new_zeros(1)) == 1).nonzero().flatten()
            ends = (answer.diff(append=answer.new_zeros(1)) == -1).nonzero().flatten() + 1
            for task, a, b in zip(data.tasks[index], starts, ends, strict=True):
                ok = bool((predicted[row, a:b] == targets[row, a:b]).all())
                right.setdefault(task, []).append(ok)
    model.train()
    every = [ok for oks in right.values() for ok in oks]
    scores = {task: sum(oks) / len(oks) for task, oks in sorted(right.items())}
    return {"all": sum(every) / len(every), **scores}
