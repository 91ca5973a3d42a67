"""The zoo's training loop: which symbolic conversations a phase draws, and how often;
a killed run resumes from its progress file to the weights of an unbroken one."""

from __future__ import annotations

import pytest


def test_task_balanced_weights_draw_every_task_equally_often() -> None:
    import torch

    from pivotlab.zoo.pretraining import SymbolicSet
    from pivotlab.zoo.train import task_balanced_weights

    tasks = [["count"]] * 6 + [["relation"]] * 2 + [["color", "shape"]]  # first question's task
    weights = task_balanced_weights(SymbolicSet([], [], [], tasks))
    per_task = {
        t: float(sum(w for w, ts in zip(weights, tasks, strict=True) if ts[0] == t))
        for t in ("count", "relation", "color")
    }
    assert per_task == pytest.approx({"count": 1.0, "relation": 1.0, "color": 1.0})
    assert torch.equal(weights[:6], torch.full((6,), 1 / 6))


def test_focus_weights_keep_only_the_focus_tasks_and_phases_add_up() -> None:
    from pivotlab.zoo.pretraining import SymbolicSet
    from pivotlab.zoo.train import Compute, add_computes, focus_weights

    tasks = [["count"], ["relation"], ["relation", "count"], ["color"]]
    weights = focus_weights(SymbolicSet([], [], [], tasks), ("relation",))
    assert weights.tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="no symbolic conversation asks front"):
        focus_weights(SymbolicSet([], [], [], tasks), ("front",))
    total = add_computes([Compute(6, 384, 1e9, 10.0, 0.5), Compute(2, 128, 3e8, 3.0, 0.2)])
    assert total == Compute(8, 512, 1.3e9, 13.0, 0.2)


def _phases_of_a_line_fit(model, progress, kill_at_call: int | None = None):
    """Two phases of five steps fitting ``model`` (a linear map) to a fixed target; the
    loss counts its calls in the state ``progress`` carries, and raises at ``kill_at_call``."""
    import torch

    from pivotlab.zoo.train import run_steps

    inputs = torch.linspace(-1, 1, 60).reshape(20, 3)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]])
    calls = {"done": 0}
    if progress:
        progress.state = lambda: dict(calls)
        progress.load_state = calls.update

    def loss_of_batch(indices: torch.Tensor) -> torch.Tensor:
        if calls["done"] == kill_at_call:
            raise RuntimeError("killed")
        calls["done"] += 1
        return ((model(inputs[indices]) - targets[indices]) ** 2).mean()

    computes = [
        run_steps(
            list(model.parameters()), loss_of_batch, 20, 5, 4, 0.1, phase, None, progress, phase
        )
        for phase in range(2)
    ]
    return computes, calls["done"]


def test_a_killed_run_resumes_to_the_weights_an_unbroken_run_ends_with(tmp_path) -> None:
    import torch

    from pivotlab.zoo.train import Progress

    torch.manual_seed(0)
    unbroken = torch.nn.Linear(3, 1)
    start = {k: v.clone() for k, v in unbroken.state_dict().items()}
    expected, calls = _phases_of_a_line_fit(unbroken, None)
    assert calls == 10

    killed = torch.nn.Linear(3, 1)
    killed.load_state_dict(start)
    file = tmp_path / "progress.pt"
    with pytest.raises(RuntimeError, match="killed"):
        _phases_of_a_line_fit(killed, Progress(file, [killed], every_seconds=0.0), kill_at_call=7)
    assert file.is_file()

    resumed = torch.nn.Linear(3, 1)  # another initialisation: the saved weights replace it
    computes, calls = _phases_of_a_line_fit(resumed, Progress(file, [resumed], every_seconds=0.0))
    assert calls == 10  # the loss's own state came back: 7 calls before the kill, 3 after
    for name, weight in unbroken.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], weight), name
    assert [c.steps for c in computes] == [c.steps for c in expected] == [5, 5]
    assert [c.final_loss for c in computes] == [c.final_loss for c in expected]
    assert computes[1].flops == expected[1].flops > 0  # counted before the kill, kept


def test_an_unreadable_progress_file_is_refused_in_one_line(tmp_path) -> None:
    import torch

    from pivotlab.zoo.recipes import ZooError
    from pivotlab.zoo.train import Progress

    file = tmp_path / "progress.pt"
    file.write_bytes(b"not a checkpoint")
    model = torch.nn.Linear(3, 1)
    with pytest.raises(ZooError, match=r"cannot resume from .*progress\.pt .*delete it"):
        _phases_of_a_line_fit(model, Progress(file, [model]))
