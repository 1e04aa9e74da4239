"""Launched by test_distributed.py as a script: trains a tiny linear regression on one full batch
in one process, then the same with 2 gloo ranks (torch.multiprocessing.spawn) that each see half
the batch, stopping after 3 steps and resuming to 5. Writes the final parameters of both runs as
safetensors files into the folder given on the command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import save_file
from torch import nn

from latentvi.train import TrainConfig, fit
from latentvi.train.distributed import destroy_distributed, init_distributed

EXAMPLES = 16


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.1, -0.2, 0.3]]))
            self.linear.bias.fill_(0.05)

    def loss(self, batch):
        x, y = batch
        mse = (self.linear(x) - y).pow(2).mean()
        return mse, {"loss/mse": mse}


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(EXAMPLES, 3, generator=generator)
    return x, x @ torch.tensor([[1.0], [2.0], [-1.0]]) + 0.5


def make_batches(epoch, generator, *, rank=0, world_size=1):
    x, y = _data()
    rows = torch.arange(rank, EXAMPLES, world_size)  # disjoint, equal shares
    return [(x[rows], y[rows])]


def make_valid_batches(*, rank=0, world_size=1):
    return make_batches(0, None, rank=rank, world_size=world_size)


def train(out: Path | None, steps: int, resume: bool, model: nn.Module) -> nn.Module:
    config = TrainConfig(
        max_steps=steps,
        log_every=1,
        progress=False,
        tensorboard=False,
        device="cpu",
        out=None if out is None else str(out),
    )
    fit(
        model,
        make_batches,
        1,
        config,
        optimizer_factory=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5),
        make_valid_batches=make_valid_batches,
        resume=resume,
    )
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def worker(rank: int, world_size: int, port: int, folder: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    info = init_distributed()
    assert (info.rank, info.world_size) == (rank, world_size)
    try:
        train(folder / "ddp", 3, False, Regression())
        model = train(folder / "ddp", 5, True, Regression())
        if rank == 0:
            save_file(_state(model), folder / "ddp.safetensors")
    finally:
        destroy_distributed()


if __name__ == "__main__":
    folder, port = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    save_file(_state(train(None, 5, False, Regression())), folder / "single.safetensors")
    mp.spawn(worker, args=(2, port, folder), nprocs=2, join=True)
