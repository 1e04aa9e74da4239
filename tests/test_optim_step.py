"""The one optimizer step: clipping as torch clips, and divergence refused before anything moves."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from latentvi.optim_step import NonFiniteError, optimizer_step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _loss(model: nn.Module, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=generator)
    return scale * model(x).pow(2).sum()


@pytest.mark.parametrize("clip", [0.5, 1e6])  # clipping active, and inactive (coefficient 1)
def test_clipping_equals_torch_clip_grad_norm_bitwise(clip):
    ours, theirs = _model(), _model()
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    norm = optimizer_step(optimizer, _loss(ours, 100.0), clip=clip)

    reference = torch.optim.SGD(theirs.parameters(), lr=0.1)
    reference.zero_grad()
    _loss(theirs, 100.0).backward()
    expected = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), clip)
    reference.step()

    assert norm == float(expected) and norm > 0.5
    for mine, other in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine.grad, other.grad)
        assert torch.equal(mine, other)


def _adam_after_one_step() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    optimizer_step(optimizer, _loss(model), clip=1.0)
    return model, optimizer


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def _assert_unchanged(model, optimizer, snapshot) -> None:
    parameters, state = snapshot
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, parameters[name]), name
    now = optimizer.state_dict()
    assert now["param_groups"] == state["param_groups"]
    for index, entry in state["state"].items():
        for key, value in entry.items():
            assert torch.equal(now["state"][index][key], value), (index, key)


def test_a_non_finite_loss_raises_and_leaves_parameters_and_optimizer_untouched():
    model, optimizer = _adam_after_one_step()
    snapshot = _snapshot(model, optimizer)
    with pytest.raises(NonFiniteError, match="critic loss is not finite") as caught:
        optimizer_step(optimizer, _loss(model) * float("nan"), clip=1.0, name="critic loss")
    assert caught.value.what == "critic loss" and isinstance(caught.value, FloatingPointError)
    _assert_unchanged(model, optimizer, snapshot)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_a_non_finite_gradient_is_named_and_nothing_moves(clip):
    model, optimizer = _adam_after_one_step()
    snapshot = _snapshot(model, optimizer)
    bias = model[2].bias
    # Finite loss (sqrt(0) = 0), infinite gradient (1 / (2 sqrt(0))) for the last bias only.
    loss = _loss(model) + torch.sqrt(bias - bias.detach()).sum()
    assert torch.isfinite(loss)
    with pytest.raises(NonFiniteError, match=r"gradient of 2\.bias is not finite") as caught:
        optimizer_step(optimizer, loss, clip=clip, parameters=list(model.named_parameters()))
    assert caught.value.what == "gradient of 2.bias"
    _assert_unchanged(model, optimizer, snapshot)


def test_another_process_failing_stops_this_one_too():
    model, optimizer = _adam_after_one_step()
    snapshot = _snapshot(model, optimizer)
    answers = []

    def any_failed(local: bool) -> bool:
        answers.append(local)
        return True  # some other rank saw a non-finite value

    with pytest.raises(NonFiniteError) as caught:
        optimizer_step(optimizer, _loss(model), any_failed=any_failed)
    assert caught.value.what == "a value on another rank" and answers == [False]
    _assert_unchanged(model, optimizer, snapshot)


def test_several_optimizers_and_sparse_gradients_step_together():
    """The variational-inference loop's case: a sparse table and dense parameters."""
    torch.manual_seed(0)
    table, dense = nn.Embedding(6, 2, sparse=True), nn.Linear(2, 1)
    optimizers = [torch.optim.SparseAdam(table.parameters()), torch.optim.Adam(dense.parameters())]
    before = table.weight.detach().clone(), dense.weight.detach().clone()
    rows = torch.tensor([1, 3, 3])
    optimizer_step(optimizers, dense(table(rows)).sum())
    moved = (table.weight != before[0]).any(-1)
    assert moved.tolist() == [False, True, False, True, False, False]  # only rows 1 and 3
    assert not torch.equal(dense.weight, before[1])
    embedded = table(rows)
    loss = torch.sqrt(embedded - embedded.detach()).sum()  # 0, with an infinite sparse gradient
    with pytest.raises(NonFiniteError, match="gradient of parameter 0"):
        optimizer_step(optimizers, loss, parameters=list(table.parameters()))
