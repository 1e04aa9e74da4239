"""Tiny models and in-memory data for the training-loop tests.

`NoisyRegression` uses the global RNG in its loss (input noise via torch.randn, dropout), so a
resumed run only matches an uninterrupted one if the random state is restored exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn


class NoisyRegression(nn.Module):
    """y ≈ MLP(x + 0.1 ε) with dropout; batches are (x [B, 3], y [B, 1])."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(3, 8)
        self.dropout = nn.Dropout(0.25)
        self.head = nn.Linear(8, 1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))

    def loss(self, batch):
        x, y = batch
        noisy = x + 0.1 * torch.randn_like(x)
        prediction = self.head(self.dropout(torch.tanh(self.hidden(noisy))))
        mse = (prediction - y).pow(2).sum(-1).mean()  # (B, 1) -> ()
        return mse, {"loss/mse": mse, "elbo": -mse}


class Shuffled:
    """Batches of (x, y) in an order drawn from the epoch's generator; `start` skips batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.num_batches = -(-x.shape[0] // batch_size)

    def __call__(self, epoch: int, generator: torch.Generator, start: int = 0):
        order = torch.randperm(self.x.shape[0], generator=generator)
        for index in range(start, self.num_batches):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size]
            yield self.x[rows], self.y[rows]


def regression_data(count: int = 40, batch_size: int = 5, seed: int = 1) -> Shuffled:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 3, generator=generator)
    y = (
        x @ torch.tensor([[1.0], [-2.0], [0.5]])
        + 0.3
        + 0.1 * torch.randn(count, 1, generator=generator)
    )
    return Shuffled(x, y, batch_size)


@pytest.fixture
def tiny() -> SimpleNamespace:
    """`tiny.model(seed)`, `tiny.data(...)`: the model class and a data factory maker."""
    return SimpleNamespace(
        model=NoisyRegression,
        data=regression_data,
        shuffled=Shuffled,
        recording_optimizer=RecordingOptimizer,
    )


class RecordingOptimizer:
    """An optimizer factory building the loop's default AdamW and remembering what it built."""

    def __init__(self, config) -> None:
        self.config = config
        self.built: list[torch.optim.Optimizer] = []

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=self.config.lr,
            betas=self.config.betas,
            eps=self.config.eps,
            weight_decay=self.config.weight_decay,
        )
        self.built.append(optimizer)
        return optimizer


@pytest.fixture
def assert_same_state():
    """Assert two (model, optimizer) pairs hold bitwise-equal parameters and optimizer state."""

    def check(model_a, optimizer_a, model_b, optimizer_b) -> None:
        state_a, state_b = model_a.state_dict(), model_b.state_dict()
        assert state_a.keys() == state_b.keys()
        for name in state_a:
            assert torch.equal(state_a[name], state_b[name]), name
        if optimizer_a is None:
            return
        opt_a, opt_b = optimizer_a.state_dict(), optimizer_b.state_dict()
        assert opt_a["param_groups"] == opt_b["param_groups"]
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, entries in opt_a["state"].items():
            for key, value in entries.items():
                other = opt_b["state"][index][key]
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, other), (index, key)
                else:
                    assert value == other, (index, key)

    return check
