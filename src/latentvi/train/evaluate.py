"""One validation pass: the model in eval mode under ``torch.no_grad``, metrics averaged."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from latentvi.train.batches import batch_size, loss_values, move_to
from latentvi.train.distributed import DistInfo, current, reduce_sums, shard_kwargs

__all__ = ["evaluate"]


def evaluate(
    model: torch.nn.Module,
    make_valid_batches: Callable[..., Iterable[Any]],
    device: torch.device | str = "cpu",
    info: DistInfo | None = None,
) -> dict[str, float]:
    """Mean of ``{"loss/total": loss, **metrics}`` of ``model.loss`` over the validation batches,
    as ``{"eval/<name>": value}``. Each batch is weighted by its size (leading dim of its first
    tensor; 1 when it has none), so the means are per example.

    When distributed and the factory accepts ``rank``/``world_size`` keywords, every rank
    evaluates its shard and the sums are all-reduced; otherwise each rank evaluates everything.
    The model's train/eval mode is restored afterwards.
    """
    info = current() if info is None else info
    device = torch.device(device)
    shard = shard_kwargs(make_valid_batches, info)
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in make_valid_batches(**shard):
                batch = move_to(batch, device)
                weight = float(batch_size(batch) or 1)
                for name, value in loss_values(*model.loss(batch)).items():
                    sums[name] = sums.get(name, 0.0) + weight * value
                    weights[name] = weights.get(name, 0.0) + weight
    finally:
        model.train(was_training)
    if shard:
        sums, weights = reduce_sums(sums, weights, info)
    if not weights:
        raise ValueError(
            "make_valid_batches() yielded no batches; return an iterable of validation batches "
            "or pass make_valid_batches=None"
        )
    return {f"eval/{name}": sums[name] / weights[name] for name in sums}
