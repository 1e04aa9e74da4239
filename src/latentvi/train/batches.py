"""What the loop does with batches and with a model's ``loss(batch)`` output.

A batch is whatever the data factory yields: a tensor, a (named) tuple, a list or a dict of
tensors, nested freely. :func:`move_to` moves every tensor in it; :func:`batch_size` reads the
leading dim of its first tensor. :func:`loss_values` turns ``(loss, metrics)`` into python floats
with one device sync.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from latentvi.train.distributed import DistInfo, accepts_keywords, shard_kwargs
from latentvi.train.rng import epoch_generator

__all__ = ["batch_size", "epoch_batches", "loss_values", "move_to", "num_batches_of"]

TOTAL = "loss/total"


def move_to(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor moved to `device` (tuples, named tuples, lists, dicts recursed)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(move_to(item, device) for item in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(item, device) for item in batch)
    if isinstance(batch, Mapping):
        moved = {key: move_to(value, device) for key, value in batch.items()}
        return moved if type(batch) is dict else _rebuild_mapping(batch, moved)
    return batch


def _rebuild_mapping(original: Mapping, moved: dict) -> Mapping:
    try:
        return type(original)(moved)
    except TypeError:
        return moved


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(batch, (tuple, list, Mapping)):
        for item in items:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def batch_size(batch: Any) -> int | None:
    """The leading dim of the first tensor in `batch`, or None (no tensor, or a 0-d one)."""
    tensor = _first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        return None
    return int(tensor.shape[0])


def num_batches_of(num_batches: int | Any) -> int:
    """`num_batches` as an int ≥ 1 (an int, or an object with a ``num_batches`` attribute)."""
    value = getattr(num_batches, "num_batches", num_batches)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"num_batches = {value!r} is invalid: pass the number of batches one epoch yields "
            "(an int >= 1, or an object with a num_batches attribute such as data.Batches)"
        )
    return value


def epoch_batches(
    make_batches: Callable[..., Iterable[Any]],
    epoch: int,
    seed: int,
    start: int,
    info: DistInfo,
) -> Iterator[Any]:
    """The batches of `epoch` from batch index `start` on.

    The factory is called as ``make_batches(epoch, epoch_generator(seed, epoch))``, plus
    ``start=start`` when it accepts a ``start`` keyword and ``start > 0`` (otherwise the first
    `start` batches are drawn and dropped), plus ``rank``/``world_size`` when distributed.
    """
    shard = shard_kwargs(make_batches, info)
    if info.distributed and not shard:
        raise ValueError(
            f"training on {info.world_size} processes needs make_batches to accept rank= and "
            "world_size= keyword arguments and yield that rank's disjoint shard, e.g. "
            "def make_batches(epoch, generator, *, rank=0, world_size=1): ..."
        )
    generator = epoch_generator(seed, epoch)
    if start > 0 and accepts_keywords(make_batches, "start"):
        return iter(make_batches(epoch, generator, start=start, **shard))
    iterator = iter(make_batches(epoch, generator, **shard))
    skipped = sum(1 for _ in itertools.islice(iterator, start))
    if skipped < start:
        raise ValueError(
            f"make_batches(epoch={epoch}) yielded {skipped} batches, but the checkpoint resumes "
            f"after batch {start} of that epoch; the data factory must yield the same batches "
            "for the same (epoch, generator)"
        )
    return iterator


def loss_values(loss: Any, metrics: Any) -> dict[str, float]:
    """``{"loss/total": loss, **metrics}`` as python floats, with one device sync.

    Checks the contract of ``model.loss(batch)``: a scalar tensor and a dict of scalars.
    """
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"model.loss(batch) must return (scalar loss tensor, metrics dict); got a loss of "
            f"{shape}. Reduce it (e.g. .mean() over the batch) before returning"
        )
    if not isinstance(metrics, Mapping):
        raise ValueError(
            f"model.loss(batch) must return (loss, metrics dict); got metrics of type "
            f"{type(metrics).__name__}. Return {{}} when there are none"
        )
    names = [TOTAL]
    tensors = [loss.detach().reshape(())]
    numbers: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise ValueError(f"metric names must be strings; got {name!r}")
        if name == TOTAL:  # the loss itself is reported under this name
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"metric {name!r} has shape {tuple(value.shape)}; return scalars (e.g. the "
                    "mean over the batch)"
                )
            names.append(name)
            tensors.append(value.detach().reshape(()).to(loss.device))
        else:
            numbers[name] = float(value)
    if loss.device.type == "cpu":  # no sync to save: read each value directly (same floats)
        values = [tensor.item() for tensor in tensors]
    else:
        values = torch.stack([tensor.double() for tensor in tensors]).cpu().tolist()
    return {**dict(zip(names, values, strict=True)), **numbers}
