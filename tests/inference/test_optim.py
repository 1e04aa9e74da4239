"""LazyAdam: torch.optim.Adam on dense parameters, torch.optim.SparseAdam on sparse tables, in one."""

import copy
import functools
import io

import pytest
import torch

from latentvi.inference import LazyAdam

DTYPE = torch.float64


def _problem(seed=0):
    """A sparse table and a dense layer with a loss that depends on both."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.nn.Embedding.from_pretrained(
        torch.randn(30, 4, dtype=DTYPE, generator=generator), freeze=False, sparse=True
    )
    layer = torch.nn.Linear(4, 3, dtype=DTYPE)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, dtype=DTYPE, generator=generator))
    return table, layer


def _losses(seed=1, steps=40):
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(0, 30, (12,), generator=generator)  # duplicates included
        target = torch.randn(12, 3, dtype=DTYPE, generator=generator)
        yield functools.partial(_loss, index=index, target=target, weight=1 + step)


def _loss(table, layer, index, target, weight):
    return ((layer(table(index)) - target) ** 2 * weight).sum()


def _run(optimizers, table, layer, steps=40):
    for loss in _losses(steps=steps):
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss(table, layer).backward()
        for optimizer in optimizers:
            optimizer.step()


@pytest.mark.parametrize("fused", [True, False])
def test_matches_sparse_adam_on_tables_and_adam_on_the_rest(fused):
    """One LazyAdam does what SparseAdam on the table plus Adam on the layer do (float64)."""
    kwargs = {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6}
    table, layer = _problem()
    lazy = LazyAdam([table.weight, *layer.parameters()], fused=fused, **kwargs)
    _run([lazy], table, layer)
    reference_table, reference_layer = _problem()
    references = [
        torch.optim.SparseAdam([reference_table.weight], **kwargs),
        torch.optim.Adam(reference_layer.parameters(), fused=fused, foreach=not fused, **kwargs),
    ]
    _run(references, reference_table, reference_layer)
    torch.testing.assert_close(table.weight, reference_table.weight, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(layer.parameters(), reference_layer.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert not torch.equal(table.weight, _problem()[0].weight)
    # Dense state has torch.optim.Adam's layout, so its state dicts are interchangeable.
    assert set(lazy.state[layer.weight]) == set(references[1].state[reference_layer.weight])


def test_state_dict_round_trip_continues_the_same_trajectory():
    """Saved after 10 steps and loaded into a fresh optimizer, the next 10 steps are identical."""
    losses = list(_losses(steps=20))
    runs = []
    for interrupted in (False, True):
        table, layer = _problem()
        parameters = [table.weight, *layer.parameters()]
        optimizer = LazyAdam(parameters, lr=0.05)
        for step, loss in enumerate(losses):
            if interrupted and step == 10:
                buffer = io.BytesIO()
                torch.save(optimizer.state_dict(), buffer)
                buffer.seek(0)
                optimizer = LazyAdam(parameters, lr=0.05)
                optimizer.load_state_dict(torch.load(buffer))
            optimizer.zero_grad()
            loss(table, layer).backward()
            optimizer.step()
        runs.append(parameters)
    for ours, theirs in zip(*runs, strict=True):
        assert torch.equal(ours, theirs)


def test_parameters_without_gradients_are_skipped():
    table, layer = _problem()
    optimizer = LazyAdam([table.weight, *layer.parameters()], lr=0.1)
    before = layer.weight.detach().clone()
    table(torch.tensor([1, 2])).sum().backward()  # the layer gets no gradient
    optimizer.step()
    assert torch.equal(layer.weight, before) and layer.weight not in optimizer.state
    assert optimizer.state[table.weight]["step"] == 1


def test_bad_arguments_name_the_argument():
    parameter = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="lr"):
        LazyAdam([parameter], lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        LazyAdam([parameter], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        LazyAdam([parameter], eps=-1.0)
    with pytest.raises(ValueError, match="floating-point"):
        LazyAdam([torch.zeros(3, dtype=torch.long)])
    parameter.grad = torch.ones(3, 2).to_sparse(2)  # sparse in both dimensions: not row-sparse
    with pytest.raises(ValueError, match="row by row"):
        LazyAdam([parameter]).step()


def test_step_hooks_run_once_each_in_torch_order():
    """LazyAdam runs torch.optim's step hooks itself (without the profiler label): exactly once."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    table, layer = _problem()
    optimizer = LazyAdam([table.weight, *layer.parameters()], lr=0.1)
    calls = []
    handles = [
        register_optimizer_step_pre_hook(lambda *_: calls.append("global pre")),
        register_optimizer_step_post_hook(lambda *_: calls.append("global post")),
        optimizer.register_step_pre_hook(lambda *_: calls.append("pre")),
        optimizer.register_step_post_hook(lambda *_: calls.append("post")),
    ]
    try:
        next(_losses())(table, layer).backward()
        optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["global pre", "pre", "post", "global post"]


def test_works_with_lr_schedulers_and_copies():
    table, layer = _problem()
    optimizer = LazyAdam([table.weight, *layer.parameters()], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    next(_losses())(table, layer).backward()
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    clone = copy.deepcopy(optimizer)  # through __getstate__ / __setstate__, like pickle
    weight = clone.param_groups[0]["params"][0]
    torch.testing.assert_close(
        clone.state[weight]["exp_avg"], optimizer.state[table.weight]["exp_avg"]
    )
    before = weight.detach().clone()
    rows, values = torch.tensor([[0, 0]]), torch.ones(2, 4, dtype=DTYPE)
    weight.grad = torch.sparse_coo_tensor(rows, values, weight.shape, check_invariants=True)
    clone.step()  # a duplicated row: the work buffer is rebuilt after the copy
    assert not torch.equal(weight[0], before[0]) and torch.equal(weight[1:], before[1:])


def test_mixed_dtypes_take_the_general_path():
    """Dense parameters of two dtypes in one group: still exactly torch.optim.Adam's update."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(3, dtype=torch.float32, generator=generator), torch.randn(2, dtype=DTYPE)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    optimizers = [LazyAdam(ours, lr=0.1), torch.optim.Adam(theirs, lr=0.1, fused=True)]
    for _ in range(5):
        for optimizer, parameters in zip(optimizers, (ours, theirs), strict=True):
            optimizer.zero_grad()
            sum((p**3).sum().double() for p in parameters).backward()
            optimizer.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
