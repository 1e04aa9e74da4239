"""The one optimizer step of latentvi: zero, backward, finite check, clip, step.

Every model and agent takes its gradient steps through :func:`optimizer_step`: the data-set loop
(:mod:`latentvi.train.step`), the variational-inference loop (:func:`latentvi.inference.fit_vi`),
and every agent in :mod:`latentvi.rl`. It lives at the bottom of the package (it needs nothing but
torch) so that all of them can import it without reaching into a layer above their own.

Divergence is handled one way: a non-finite loss, gradient or gradient norm raises
:class:`NonFiniteError` naming what was non-finite, **before** any optimizer steps, so the
parameters and the optimizers' state are those of the last good step. The loops turn it into
:class:`latentvi.train.TrainingDivergedError` with the last good checkpoint.

Two ways of computing the global norm are kept, because changing either would move published
numbers (they differ in the last bits of the norm, and so of clipped gradients):

* ``norm="torch"`` (the default): exactly :func:`torch.nn.utils.clip_grad_norm_` (per-tensor
  norms in the gradients' dtype, their norm in that dtype, coefficient
  ``min(1, clip / (norm + 1e-6))`` as a tensor, every gradient multiplied by it). The agents
  use it.
* ``norm="float64"``: the per-tensor norms summed in float64, the coefficient a Python float,
  gradients scaled only when it is below 1. The data-set loop :func:`latentvi.train.fit` has
  always used it (its logged ``grad_norm`` is this number).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

__all__ = ["NonFiniteError", "fused_adam_step", "gradient_norm", "optimizer_step"]

NormMode = Literal["torch", "float64"]


class NonFiniteError(FloatingPointError):
    """A loss or gradient was not finite, so the optimizer step was not taken.

    Attributes:
        what: what was non-finite: the loss's name (e.g. ``"loss"``, ``"actor loss"``),
            ``"gradient of <parameter>"``, ``"gradient norm"`` (finite gradients whose norm
            overflows) or ``"a value on another rank"``.
    """

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what


def _named(
    optimizers: Sequence[torch.optim.Optimizer],
    parameters: Sequence[Tensor] | Sequence[tuple[str, Tensor]] | None,
) -> list[tuple[str, Tensor]]:
    if parameters is None:
        return [
            (f"parameter {index} of group {g} of optimizer {o}", parameter)
            for o, optimizer in enumerate(optimizers)
            for g, group in enumerate(optimizer.param_groups)
            for index, parameter in enumerate(group["params"])
        ]
    named = list(parameters)
    if named and isinstance(named[0], Tensor):
        return [(f"parameter {index}", parameter) for index, parameter in enumerate(named)]
    return named


def _dense(grad: Tensor) -> Tensor:
    """What a gradient's norm is taken over: the tensor, or a sparse one's coalesced values."""
    return grad.coalesce().values() if grad.is_sparse else grad


def _torch_norm(grads: list[Tensor]) -> Tensor:
    """The global norm as :func:`torch.nn.utils.clip_grad_norm_` computes it (its dtype)."""
    tensors = [_dense(g) for g in grads]
    first_device = tensors[0].device
    if len({(t.device, t.dtype) for t in tensors}) == 1 and not any(g.is_sparse for g in grads):
        norms = torch._foreach_norm(tensors, 2.0)
    else:
        norms = [torch.linalg.vector_norm(t, 2.0) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), 2.0)


def _float64_norm(grads: list[Tensor]) -> float:
    """The global norm with the per-tensor norms summed in float64 (what ``fit`` logs)."""
    tensors = [_dense(g.detach()) for g in grads]
    device = tensors[0].device
    if len({(t.device, t.dtype) for t in tensors}) == 1 and not any(g.is_sparse for g in grads):
        norms = torch.stack(torch._foreach_norm(tensors)).double()  # one fused kernel
    else:
        norms = torch.stack([torch.linalg.vector_norm(t).double().to(device) for t in tensors])
    return float(torch.linalg.vector_norm(norms))


def _first_bad(named_grads: list[tuple[str, Tensor]]) -> str:
    for name, grad in named_grads:
        if not bool(torch.isfinite(_dense(grad)).all()):
            return f"gradient of {name}"
    return "gradient norm"  # finite parts whose squares overflow


@torch.no_grad()
def _clip(grads: list[Tensor], clip: float, norm: Tensor | float, mode: NormMode) -> None:
    if any(g.is_sparse for g in grads):
        raise ValueError(
            f"clip = {clip!r} cannot be applied to sparse gradients; use clip=None for "
            "optimizers over sparse tables"
        )
    if mode == "float64":
        scale = clip / (norm + 1e-6)
        if scale < 1.0:
            torch._foreach_mul_([g.detach() for g in grads], scale)
        return
    coefficient = torch.clamp(float(clip) / (norm + 1e-6), max=1.0)
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for grad in grads:
        groups.setdefault((grad.device, grad.dtype), []).append(grad)
    for (device, _), device_grads in groups.items():
        torch._foreach_mul_(device_grads, coefficient.to(device))


def gradient_norm(
    parameters: Sequence[Tensor] | Sequence[tuple[str, Tensor]] | torch.nn.Module,
    clip: float | None = None,
    norm: NormMode = "float64",
) -> tuple[float, str | None]:
    """(global L2 norm of the gradients before clipping, what is non-finite or None).

    ``parameters``: a module, its ``list(module.named_parameters())``, or a list of tensors;
    those without a gradient are skipped. The second value names the first parameter with a
    non-finite gradient, e.g. ``"gradient of encoder.weight"``, and the gradients are then left
    as they are; otherwise, with `clip`, they are scaled in place (see the module docstring for
    the two ``norm`` modes).
    """
    if isinstance(parameters, torch.nn.Module):
        parameters = list(parameters.named_parameters())
    named = _named([], parameters)
    named_grads = [(name, p.grad) for name, p in named if p.grad is not None]
    if not named_grads:
        return 0.0, None
    grads = [g for _, g in named_grads]
    if norm == "float64":
        total: Tensor | float = _float64_norm(grads)
        value = total
    elif norm == "torch":
        total = _torch_norm(grads)
        value = float(total)
    else:
        raise ValueError(f"norm must be 'torch' or 'float64', got {norm!r}")
    if not math.isfinite(value):
        return value, _first_bad(named_grads)
    if clip is not None:
        _clip(grads, clip, total, norm)
    return value, None


def optimizer_step(
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    loss: Tensor,
    *,
    clip: float | None = None,
    parameters: Sequence[Tensor] | Sequence[tuple[str, Tensor]] | None = None,
    name: str = "loss",
    norm: NormMode = "torch",
    any_failed: Callable[[bool], bool] | None = None,
    only_optimized: bool = False,
    gradients: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> float:
    """One gradient step on ``loss`` (a scalar tensor); returns the gradient norm before clipping.

    In order: the optimizers' gradients are set to None; if ``loss`` is finite (or ``any_failed``
    is given), ``loss.backward()``; the global norm of the gradients of ``parameters`` (default:
    the optimizers' parameters, in order) is computed; if the loss, a gradient or the norm is not
    finite (or ``any_failed(local_failure)`` says some other process failed) it raises
    :class:`NonFiniteError` before anything is updated; else the gradients are clipped to norm
    ``clip`` (when given) and every optimizer steps.

    Args:
        optimizers: one optimizer, or several that share the loss (all step).
        loss: the scalar to minimize.
        clip: the largest global gradient norm, or None for no clipping.
        parameters: the parameters whose gradients are checked and clipped, as tensors or as
            ``(name, tensor)`` pairs (the names appear in the error).
        name: what the loss is called in the error, e.g. ``"critic loss"``.
        norm: ``"torch"`` (as :func:`torch.nn.utils.clip_grad_norm_`) or ``"float64"`` (see the
            module docstring).
        any_failed: for data-parallel training, ``local_failure -> whether any process failed``
            (a collective every process calls every step); backward then always runs, so that
            every process joins the gradient reduction.
        only_optimized: differentiate with respect to the optimizers' parameters alone
            (``loss.backward(inputs=...)``): nothing else the loss depends on (a model held fixed
            while a posterior is refined) gets a gradient.
        gradients: ``(parameter, gradient)`` pairs already computed (e.g. by a hand-derived
            backward pass): they become the parameters' ``.grad`` instead of ``loss.backward()``,
            and a fused Adam/AdamW optimizer's kernel is called directly (:func:`fused_adam_step`,
            the same update as its ``step()``).

    Raises:
        NonFiniteError: something was not finite; the parameters and optimizer states are
            untouched.
    """
    optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else optimizers
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss_value = float(loss.detach())
    bad = None if math.isfinite(loss_value) else name
    norm_value = math.nan
    if bad is None or any_failed is not None:
        if gradients is not None:
            for parameter, gradient in gradients:
                parameter.grad = gradient
        elif only_optimized:
            inputs = [p for o in optimizers for group in o.param_groups for p in group["params"]]
            loss.backward(inputs=inputs)
        else:
            loss.backward()
        norm_value, bad_gradient = gradient_norm(_named(optimizers, parameters), clip, norm)
        bad = bad or bad_gradient
    if any_failed is not None and any_failed(bad is not None) and bad is None:
        bad = "a value on another rank"
    if bad is not None:
        raise NonFiniteError(
            f"{bad} is not finite ({name} = {loss_value}, gradient norm = {norm_value}); the "
            "optimizer step was not taken, so the parameters are those of the last good step",
            what=bad,
        )
    for optimizer in optimizers:
        if gradients is None or not fused_adam_step(optimizer):
            optimizer.step()
    return norm_value


def fused_adam_step(optimizer: torch.optim.Optimizer) -> bool:
    """``optimizer.step()`` for a ``torch.optim.Adam`` or ``AdamW`` with ``fused=True`` whose
    state exists (after its first step), by calling its fused kernel directly: the same kernel on
    the same tensors with the same arguments, so the same update bit for bit, without the
    per-call grouping, hooks and profiler labels of ``Optimizer.step`` (≈ 0.1–0.3 ms at the size
    of a small VAE, where the kernel takes about as long). Returns False, doing nothing, for any
    other optimizer or setting (then call ``step()``)."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    if len(optimizer.param_groups) != 1:
        return False
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return False
    if (
        _torch_optimizer._global_optimizer_pre_hooks
        or _torch_optimizer._global_optimizer_post_hooks
    ):
        return False
    group = optimizer.param_groups[0]
    if not group.get("fused") or group["amsgrad"] or group["maximize"] or group["capturable"]:
        return False
    if group["differentiable"] or isinstance(group["lr"], Tensor):
        return False
    params = group["params"]
    states = [optimizer.state.get(p) for p in params]
    if not params or any(not s or p.grad is None for p, s in zip(params, states, strict=True)):
        return False  # first step (state not built yet) or a missing gradient
    if len({(p.device, p.dtype) for p in params}) != 1 or params[0].device.type != "cpu":
        return False
    if any(p.grad.is_sparse or p.is_complex() for p in params):
        return False
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    beta1, beta2 = group["betas"]
    kernel(
        params,
        [p.grad for p in params],
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [],
        steps,
        amsgrad=False,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )
    return True
