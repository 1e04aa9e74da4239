"""One training step of :func:`latentvi.train.fit`: forward, the one optimizer step, divergence.

The optimizer step itself (zero, backward, finite check, clip, step) is
:func:`latentvi.optim_step.optimizer_step`, shared with the variational-inference loop and every
agent; it lives below ``train`` so that ``rl`` and ``inference`` can use it too. Here it is called
with ``norm="float64"`` (the global norm the loop has always logged as ``grad_norm``) and turned
into :class:`~latentvi.train.errors.TrainingDivergedError`, which names the last good checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from latentvi.optim_step import NonFiniteError, optimizer_step
from latentvi.train.batches import loss_values, move_to
from latentvi.train.distributed import DistInfo, any_across_ranks
from latentvi.train.errors import TrainingDivergedError

__all__ = ["NonFiniteError", "optimizer_step", "train_step"]


def train_step(
    model: torch.nn.Module,
    compute_loss: Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    optimizer: torch.optim.Optimizer,
    batch: Any,
    *,
    device: torch.device,
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    grad_clip: float | None,
    info: DistInfo,
    step: int,
    last_checkpoint: Path | None,
) -> dict[str, float]:
    """Step number ``step`` (1-based) on ``batch``: the loss's values and ``grad_norm`` (floats).

    ``compute_loss`` is ``model.loss`` (or its data-parallel wrapper). The model is put back in
    train mode if a callback left it in eval mode.

    Raises:
        TrainingDivergedError: the loss or a gradient (on any rank) was not finite; nothing was
            updated.
    """
    batch = move_to(batch, device)
    if not model.training:  # e.g. a callback left it in eval mode
        model.train()
    loss, metrics = compute_loss(batch)
    values = loss_values(loss, metrics)  # also checks the shapes
    try:
        grad_norm = optimizer_step(
            optimizer,
            loss,
            clip=grad_clip,
            parameters=named_parameters,
            name="loss",
            norm="float64",
            any_failed=lambda failed: any_across_ranks(failed, info),
        )
    except NonFiniteError as error:
        lr = float(optimizer.param_groups[0]["lr"])
        last = None if last_checkpoint is None else str(last_checkpoint)
        raise TrainingDivergedError.at_step(step, error.what, values, lr, last) from error
    values["grad_norm"] = grad_norm
    return values
