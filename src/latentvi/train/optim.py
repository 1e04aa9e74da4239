"""The optimizer side of a step: the default AdamW, the gradient-norm check, resumed settings."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from latentvi.train.config import TrainConfig

__all__ = ["adopt_hyperparameters", "default_optimizer", "gradient_norm", "hyperparameters"]

logger = logging.getLogger(__name__)


def default_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``AdamW(model.parameters())`` with the config's lr, betas, eps and weight_decay.

    It takes PyTorch's fused kernel (one pass over each tensor) where the parameters allow it
    (floating point, on CPU or CUDA), else the default multi-tensor one: the same algorithm, and
    on the 784-200-200-50 VAE ≈ 2.5× faster on the CPU (0.40 against 1.03 ms a step)."""
    params = list(model.parameters())
    settings = {"lr": config.lr, "betas": config.betas, "eps": config.eps}
    fused = bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") and not p.is_sparse
        for p in params
    )
    return torch.optim.AdamW(params, weight_decay=config.weight_decay, fused=fused, **settings)


def gradient_norm(
    model: torch.nn.Module | Sequence[tuple[str, torch.Tensor]], clip: float | None
) -> tuple[float, str | None]:
    """(global L2 norm of the gradients before clipping, what is non-finite or None).

    ``model``: the module, or its ``list(model.named_parameters())`` (what ``fit`` passes, listed
    once per run instead of walking the modules every step). The second value names the first
    parameter with a non-finite gradient, e.g. ``"gradient of encoder.weight"``; gradients are
    then left as they are. Otherwise, with `clip`, they are scaled in place by
    ``min(1, clip / (norm + 1e-6))`` (as ``torch.nn.utils.clip_grad_norm_`` does).
    """
    named = model.named_parameters() if isinstance(model, torch.nn.Module) else model
    grads = [(name, p.grad) for name, p in named if p.grad is not None]
    if not grads:
        return 0.0, None
    device = grads[0][1].device
    tensors = [g.detach() for _, g in grads]
    if len({(t.device, t.dtype) for t in tensors}) == 1:  # one fused kernel over all of them
        norms = torch.stack(torch._foreach_norm(tensors)).double()
    else:
        norms = torch.stack([torch.linalg.vector_norm(t).double().to(device) for t in tensors])
    norm = float(torch.linalg.vector_norm(norms))
    if not math.isfinite(norm):
        for name, grad in grads:
            if not bool(torch.isfinite(grad).all()):
                return norm, f"gradient of {name}"
        return norm, "gradient norm"  # finite parts whose squares overflow
    if clip is not None:
        scale = clip / (norm + 1e-6)
        if scale < 1.0:
            torch._foreach_mul_(tensors, scale)
    return norm, None


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """A copy of each param group's settings (everything but ``params``)."""
    return [
        {key: _copy(value) for key, value in group.items() if key != "params"}
        for group in optimizer.param_groups
    ]


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def adopt_hyperparameters(optimizer: torch.optim.Optimizer, wanted: list[dict]) -> None:
    """Set the param groups' settings to `wanted` (from :func:`hyperparameters` of a freshly
    built optimizer) after loading a checkpoint, warning about each change. An unchanged config
    changes nothing; a lowered lr after divergence takes effect."""
    for index, (group, settings) in enumerate(zip(optimizer.param_groups, wanted, strict=True)):
        for key, value in settings.items():
            saved = group.get(key)
            if isinstance(saved, torch.Tensor) and isinstance(value, torch.Tensor):
                same = torch.equal(saved, value)
            else:
                same = saved == value
            if not same:
                logger.warning(
                    "param group %d: %s = %r from the current config (checkpoint had %r)",
                    index,
                    key,
                    value,
                    saved,
                )
                group[key] = value
