"""One training step of :func:`latentvi.train.fit`: forward, the one optimizer step, divergence.

The optimizer step itself (zero, backward, finite check, clip, step) is
:func:`latentvi.optim_step.optimizer_step`, shared with the variational-inference loop and every
agent; it lives below ``train`` so that ``rl`` and ``inference`` can use it too. Here it is called
with ``norm="float64"`` (the global norm the loop has always logged as ``grad_norm``) and turned
into :class:`~latentvi.train.errors.TrainingDivergedError`, which names the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from latentvi.optim_step import NonFiniteError, optimizer_step
from latentvi.train.batches import TOTAL, loss_values, move_to
from latentvi.train.distributed import DistInfo, any_across_ranks
from latentvi.train.errors import TrainingDivergedError

__all__ = [
    "EXPLOSION_FACTOR",
    "WEIGHT_LIMIT",
    "ExplosionGuard",
    "MetricGuard",
    "NonFiniteError",
    "check_weights",
    "largest_weight",
    "optimizer_step",
    "train_step",
]

EXPLOSION_FACTOR = 1e6
"""A loss or gradient norm this many times its scale over the first steps is an explosion
(README, "Divergence": normal training stays within 1e2 of it)."""
WARMUP_STEPS = 20
"""Steps (of each start or resume) whose median |loss| and gradient norm set the scale."""
WEIGHT_LIMIT = 1e6
"""No checkpoint is written while a weight is larger than this in magnitude (or not finite)."""


def _advice(lr: float, last_checkpoint: Path | None) -> str:
    if last_checkpoint is None:
        return (
            f"no checkpoint was written yet; restart with a lower learning rate (e.g. {lr / 10:g})"
        )
    return (
        f"the last good checkpoint is {last_checkpoint}; resume from it with a lower learning "
        f"rate (e.g. --resume --lr {lr / 10:g})"
    )


@dataclasses.dataclass
class ExplosionGuard:
    """Stops a run whose loss or gradient norm grows by :data:`EXPLOSION_FACTOR` over its scale
    (the median of the first :data:`WARMUP_STEPS` steps, at least 1): finite values that have
    blown up, which the non-finite check of the optimizer step does not see. Reads values only:
    the arithmetic of a run is unchanged."""

    losses: list[float] = dataclasses.field(default_factory=list)
    grad_norms: list[float] = dataclasses.field(default_factory=list)

    def check(
        self, values: dict[str, float], step: int, lr: float, last: Path | None, info: DistInfo
    ) -> None:
        loss, grad_norm = abs(values[TOTAL]), values.get("grad_norm", 0.0)
        if len(self.losses) < WARMUP_STEPS:
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)
            return
        scales = {
            "loss": max(statistics.median(self.losses), 1.0),
            "gradient norm": max(statistics.median(self.grad_norms), 1.0),
        }
        found = {"loss": loss, "gradient norm": grad_norm}
        exploded = [n for n in found if found[n] > EXPLOSION_FACTOR * scales[n]]
        if any_across_ranks(bool(exploded), info):
            name = exploded[0] if exploded else "loss"
            raise TrainingDivergedError(
                f"training diverged at step {step}: the {name} is {found[name]:.3g}, over "
                f"{EXPLOSION_FACTOR:g} times its scale {scales[name]:.3g} in the first "
                f"{WARMUP_STEPS} steps; no checkpoint was written after it; "
                f"{_advice(lr, last)}",
                step=step,
                metric=name,
                last_checkpoint=None if last is None else str(last),
            )


@dataclasses.dataclass
class MetricGuard:
    """:class:`ExplosionGuard` for metrics by name (the environment loop's agent updates):
    each watched metric (``loss/…`` or ``…grad_norm``) gets its own scale, the median of its
    first :data:`WARMUP_STEPS` absolute values (at least 1); a later value over
    :data:`EXPLOSION_FACTOR` times it is an explosion. Reads values only."""

    warmup: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    scales: dict[str, float] = dataclasses.field(default_factory=dict)

    @staticmethod
    def watches(name: str) -> bool:
        return name.startswith("loss/") or name.endswith("grad_norm")

    def exploded(self, values: Mapping[str, float]) -> tuple[str, float, float] | None:
        """The first watched metric of ``values`` that exploded: ``(name, value, scale)``."""
        found = None
        for name, value in values.items():
            if not self.watches(name):
                continue
            scale = self.scales.get(name)
            if scale is None:
                seen = self.warmup.setdefault(name, [])
                seen.append(abs(value))
                if len(seen) == WARMUP_STEPS:
                    self.scales[name] = max(statistics.median(seen), 1.0)
                    del self.warmup[name]
            elif found is None and abs(value) > EXPLOSION_FACTOR * scale:
                found = (name, value, scale)
        return found


def largest_weight(
    named_parameters: Iterable[tuple[str, torch.Tensor]],
) -> tuple[str, float] | None:
    """The first weight that is not finite or larger than :data:`WEIGHT_LIMIT` in magnitude:
    ``(name, largest magnitude)``; None when all are within it."""
    for name, parameter in named_parameters:
        largest = float(parameter.detach().abs().max()) if parameter.numel() else 0.0
        if not largest <= WEIGHT_LIMIT:  # also NaN
            return name, largest
    return None


def check_weights(
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    step: int,
    lr: float,
    last: Path | None,
) -> None:
    """Refuse (TrainingDivergedError) to checkpoint weights that are not finite or larger than
    :data:`WEIGHT_LIMIT`: the kept checkpoint is always one from before a divergence."""
    bad = largest_weight(named_parameters)
    if bad is not None:
        name, largest = bad
        raise TrainingDivergedError(
            f"training diverged at step {step}: weight {name} reaches {largest:.3g} (limit "
            f"{WEIGHT_LIMIT:g}), so no checkpoint was written; {_advice(lr, last)}",
            step=step,
            metric=f"weight {name}",
            last_checkpoint=None if last is None else str(last),
        )


def _none(batch: Any) -> None:
    return None


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
    train mode if a callback left it in eval mode. A model with ``loss_and_gradients(batch)``
    (the VAE's fused pass) that returns ``(loss, metrics, [(parameter, gradient)])`` trains
    without autograd when not data-parallel: the same numbers, fewer operations per step.

    Raises:
        TrainingDivergedError: the loss or a gradient (on any rank) was not finite; nothing was
            updated.
    """
    batch = move_to(batch, device)
    if not model.training:  # e.g. a callback left it in eval mode
        model.train()
    gradients = None
    if not info.distributed and compute_loss == model.loss:
        computed = getattr(model, "loss_and_gradients", _none)(batch)  # the autograd-free path
        if computed is not None:
            loss, metrics, gradients = computed
    if gradients is None:
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
            gradients=gradients,
        )
    except NonFiniteError as error:
        lr = float(optimizer.param_groups[0]["lr"])
        last = None if last_checkpoint is None else str(last_checkpoint)
        raise TrainingDivergedError.at_step(step, error.what, values, lr, last) from error
    values["grad_norm"] = grad_norm
    return values
