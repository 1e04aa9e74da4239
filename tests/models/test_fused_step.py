"""The autograd-free training step (issue 22): fused gradients and the direct Adam kernel give
the numbers of ``loss.backward()`` and ``optimizer.step()`` bit for bit, and ``fit`` takes it."""

import pytest
import torch

from latentvi.data import Batches
from latentvi.models import fused
from latentvi.models.vae import VAE, VAEConfig
from latentvi.optim_step import fused_adam_step, optimizer_step
from latentvi.train import TrainConfig, fit

SHAPE = (1, 8, 8)
CASES = [
    {},
    {"num_samples": 3, "beta": 0.3},
    {"activation": "relu", "hidden": (9, 11, 7)},
    {"objective": "iwae", "num_samples": 5},
]


def model_and_data(dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    model = VAE(SHAPE, VAEConfig(**{"latent_dim": 3, "hidden": (16, 12), **overrides})).to(dtype)
    g = torch.Generator().manual_seed(1)
    return model, (torch.rand(6, *SHAPE, generator=g, dtype=dtype) > 0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("overrides", CASES)
def test_gradients_without_autograd_equal_backward_bit_for_bit(overrides, dtype):
    model, x = model_and_data(dtype, **overrides)
    torch.manual_seed(2)
    loss, metrics = model.loss(x)
    loss.backward()
    torch.manual_seed(2)
    fast_loss, fast_metrics, pairs = model.loss_and_gradients(x)
    assert not fast_loss.requires_grad and torch.equal(fast_loss, loss.detach())
    assert fast_metrics.keys() == metrics.keys()
    for name, value in metrics.items():
        assert torch.equal(fast_metrics[name], value), name
    assert [id(p) for p, _ in pairs] == [id(p) for p in model.parameters()]
    for parameter, gradient in pairs:
        assert torch.equal(gradient, parameter.grad)
    assert max(float(g.abs().max()) for _, g in pairs) > 1e-3


def test_generic_reference_path_agrees_in_float64():
    """The fast gradients against the generic, Distribution-based loss (float64, same seed)."""
    model, x = model_and_data()
    torch.manual_seed(2)
    _, _, pairs = model.loss_and_gradients(x)
    model.fused = False
    assert model.loss_and_gradients(x) is None  # the fused pass switched off: no fast path
    torch.manual_seed(2)
    model.loss(x)[0].backward()
    for parameter, gradient in pairs:
        torch.testing.assert_close(gradient, parameter.grad, rtol=1e-10, atol=1e-12)


def test_not_applicable_models_return_none():
    model, x = model_and_data(objective="iwae", num_samples=3, dreg=True)
    assert not fused.applies(model) and model.loss_and_gradients(x) is None
    model, x = model_and_data(likelihood="gaussian")
    assert model.loss_and_gradients(x) is None


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_direct_fused_adam_equals_step_bit_for_bit(kind, weight_decay):
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    settings = {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": weight_decay}
    reference, direct = kind(a, fused=True, **settings), kind(b, fused=True, **settings)
    for step in range(4):
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        reference.step()
        took = fused_adam_step(direct)
        assert took == (step > 0)  # the first step builds the state through step()
        if not took:
            direct.step()
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q)
        for p, q in zip(a, b, strict=True):
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(reference.state[p][key], direct.state[q][key])


def test_direct_adam_declines_other_optimizers_and_hooks():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    for optimizer in (
        torch.optim.SGD([p], lr=0.1),
        torch.optim.Adam([p], lr=0.1),  # not fused
        torch.optim.Adam([p], lr=0.1, fused=True, amsgrad=True),
    ):
        optimizer.step()
        assert not fused_adam_step(optimizer)
    optimizer = torch.optim.Adam([p], lr=0.1, fused=True)
    optimizer.step()
    handle = optimizer.register_step_pre_hook(lambda *args: None)
    assert not fused_adam_step(optimizer)
    handle.remove()
    assert fused_adam_step(optimizer)


def test_optimizer_step_with_precomputed_gradients_equals_backward():
    model, x = model_and_data(torch.float32)
    twin, _ = model_and_data(torch.float32)
    opt_a = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    opt_b = torch.optim.AdamW(twin.parameters(), lr=1e-2, fused=True)
    for seed in range(3):
        torch.manual_seed(seed)
        loss, _ = model.loss(x)
        norm_a = optimizer_step(opt_a, loss, norm="float64")
        torch.manual_seed(seed)
        loss, _, pairs = twin.loss_and_gradients(x)
        norm_b = optimizer_step(opt_b, loss, norm="float64", gradients=pairs)
        assert norm_a == norm_b
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def _fit(images, fast=True, steps=12):
    torch.manual_seed(0)
    model = VAE(SHAPE, VAEConfig(latent_dim=3, hidden=(16, 12)))
    if not fast:
        model.loss_and_gradients = lambda batch: None  # the autograd path
    calls = []
    if fast:
        inner = model.loss_and_gradients
        model.loss_and_gradients = lambda batch: calls.append(1) or inner(batch)
    batches = Batches(images, batch_size=4, binarize="dynamic")
    config = TrainConfig(max_steps=steps, progress=False, tensorboard=False, log_every=5)
    result = fit(model, batches.make_batches, batches.num_batches, config)
    return model, result, calls


def test_fit_takes_the_fast_step_and_changes_no_number():
    images = torch.rand(24, *SHAPE, generator=torch.Generator().manual_seed(3))
    fast, fast_result, calls = _fit(images)
    slow, slow_result, _ = _fit(images, fast=False)
    assert len(calls) == 12
    drop = lambda metrics: {k: v for k, v in metrics.items() if not k.startswith("perf/")}  # noqa: E731
    assert drop(fast_result.metrics) == drop(slow_result.metrics)
    assert "train/grad_norm" in fast_result.metrics
    for p, q in zip(fast.parameters(), slow.parameters(), strict=True):
        assert torch.equal(p, q)
