"""Data-parallel training with PyTorch's own engine (``torch.distributed`` + DDP).

Launch one process per device with ``torchrun --nproc_per_node=N script.py``; the script calls
:func:`init_distributed` (which reads torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and then :func:`latentvi.train.fit` as usual. Inside ``fit``,
with world size W > 1:

- the model is wrapped as ``DDP(LossModule(model))``, so ``loss(batch)`` runs through DDP's
  forward and gradients are averaged across ranks in ``backward``;
- the batch factory is called as ``make_batches(epoch, generator, rank=r, world_size=W)``: every
  rank gets the same epoch generator and must yield its own disjoint shard (see
  :class:`latentvi.data.Batches`); each rank's batch is then 1/W of the global batch;
- a validation factory that accepts ``rank``/``world_size`` is sharded the same way (the metric
  sums are all-reduced); one that does not is evaluated in full on every rank;
- logged metrics are means over all ranks; only rank 0 writes checkpoints, metrics and the
  progress bar; every rank's random state is stored in the checkpoint.

Backend: ``nccl`` when CUDA is available (rank r uses ``cuda:LOCAL_RANK``), else ``gloo``.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from latentvi.train.rng import RNGState, capture_rng_state

__all__ = [
    "DistInfo",
    "LossModule",
    "any_across_ranks",
    "current",
    "destroy_distributed",
    "gather_rng_states",
    "init_distributed",
    "reduce_sums",
    "shard_kwargs",
    "wrap_model",
]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """This process's place among data-parallel processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """More than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes files."""
        return self.rank == 0


def current() -> DistInfo:
    """The process group's view when ``torch.distributed`` is initialized, else a single process."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    return DistInfo()


def init_distributed(
    backend: str | None = None, timeout: datetime.timedelta | None = None
) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) this is a no-op returning a single-process
    :class:`DistInfo`, so the same script runs with and without torchrun.

    Args:
        backend: "gloo" or "nccl"; default nccl when CUDA is available, else gloo.
        timeout: how long collectives wait for the other ranks (torch's default when None).
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE = {world_size} but {', '.join(missing)} not set; launch with torchrun "
            "(which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or set them"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world_size, **options
    )
    return DistInfo(rank, world_size, local_rank)


def destroy_distributed() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class LossModule(torch.nn.Module):
    """``forward(batch) = model.loss(batch)``: lets DDP see the loss computation."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DDP(LossModule(model))`` on `device`; call it with a batch to get ``(loss, metrics)``."""
    device_ids = (
        [device.index if device.index is not None else 0] if device.type == "cuda" else None
    )
    return DistributedDataParallel(LossModule(model), device_ids=device_ids)


def shard_kwargs(factory: Callable, info: DistInfo) -> dict[str, int]:
    """``{"rank": r, "world_size": W}`` when distributed and `factory` accepts them, else {}."""
    if not info.distributed or not accepts_keywords(factory, "rank", "world_size"):
        return {}
    return {"rank": info.rank, "world_size": info.world_size}


def accepts_keywords(function: Callable, *names: str) -> bool:
    """Whether `function` can be called with all of `names` as keyword arguments."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return True
    keywords = {
        parameter.name
        for parameter in parameters
        if parameter.kind
        in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return all(name in keywords for name in names)


def _device_for_collectives() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_sums(
    sums: Mapping[str, float], weights: Mapping[str, float], info: DistInfo
) -> tuple[dict[str, float], dict[str, float]]:
    """Sum per-key ``(sum, weight)`` pairs over all ranks (keys: the union over ranks)."""
    if not info.distributed:
        return dict(sums), dict(weights)
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, sorted(sums))
    keys = sorted(set().union(*gathered))
    values = torch.tensor(
        [sums.get(key, 0.0) for key in keys] + [weights.get(key, 0.0) for key in keys],
        dtype=torch.float64,
        device=_device_for_collectives(),
    )
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    totals = values.cpu().tolist()
    return dict(zip(keys, totals[: len(keys)], strict=True)), dict(
        zip(keys, totals[len(keys) :], strict=True)
    )


def any_across_ranks(flag: bool, info: DistInfo) -> bool:
    """True when `flag` holds on any rank (every rank gets the same answer)."""
    if not info.distributed:
        return flag
    value = torch.tensor([float(flag)], device=_device_for_collectives())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_rng_states(info: DistInfo) -> list[RNGState]:
    """Every rank's global random state, in rank order (on every rank)."""
    state = capture_rng_state()
    if not info.distributed:
        return [state]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, state)
    return gathered
