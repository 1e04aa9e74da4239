"""One-node autograd kernels behind :class:`latentvi.distributions.DiagonalGaussian` and
:class:`latentvi.distributions.IndependentBernoulli`: the Gaussian log density, the KL between
diagonal Gaussians and the Bernoulli log density in logits, each one autograd node with a
hand-written gradient instead of a dozen small ones (they sit in every step of every model here).
Inputs broadcast together; the event dimensions are summed.

Each backward is itself differentiable: under ``create_graph=True`` (gradient penalties,
Hessian-vector products) it rebuilds its intermediates from the saved inputs with ordinary autograd
operations, so second derivatives equal ``torch.distributions``' (tested to 1e-10 in float64);
without it, the fast in-place path runs. ``torch.func`` transforms do not go through these nodes:
:func:`transformed` tells the distributions to take the generic path instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
SQRT_TWO_PI = math.sqrt(2 * math.pi)


def transformed(*tensors: Tensor | None) -> bool:
    """Whether any tensor is wrapped by a ``torch.func`` transform (grad, vmap, jacrev, …): the
    custom autograd nodes here have no ``setup_context``/vmap rule, so callers then compute the
    same values with ordinary operations."""
    return any(tensor is not None and _is_wrapped(tensor) for tensor in tensors)


_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor

_EVENT_DIMS = {n: tuple(range(-n, 0)) for n in range(1, 9)}


def sum_event(tensor: Tensor, event_dims: int) -> Tensor:
    """Sum over the last ``event_dims`` dimensions (none when 0)."""
    if not event_dims:
        return tensor
    return tensor.sum(_EVENT_DIMS.get(event_dims) or tuple(range(-event_dims, 0)))


def _unbroadcast(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``gradient`` down to the ``shape`` of the input that was broadcast to produce it."""
    return gradient if gradient.shape == shape else gradient.sum_to_size(shape)


def _event_gradient(gradient: Tensor, event_dims: int) -> Tensor:
    """``[*B] -> [*B, 1, …, 1]``: an upstream gradient broadcast over the summed event dims."""
    return gradient.reshape(*gradient.shape, *(1,) * event_dims)


class GaussianLogDensity(torch.autograd.Function):
    """``Σ_event log N(value; loc, scale²)`` as one autograd node; the inputs broadcast together.

    With s = (value − loc) / scale and g the upstream gradient (broadcast over the event):
    ∂/∂value = −g s / scale, ∂/∂loc = g s / scale, ∂/∂scale = g (s² − 1) / scale.
    """

    @staticmethod
    def forward(ctx, value: Tensor, loc: Tensor, scale: Tensor, event_dims: int) -> Tensor:
        standardized = (value - loc) / scale  # (*S, *B, *E): the broadcast of all three
        full = standardized.shape
        event = full[len(full) - event_dims :]
        # Σ_event log(σ √(2π)), with σ broadcast over the event first (a scalar σ counts |E| times)
        log_scale = torch.log(scale * SQRT_TWO_PI)
        if scale.dim() == 0:
            normalizer = log_scale * -event.numel()  # minus the normalizer, from here on
        else:
            batch_of_scale = scale.shape[: max(scale.dim() - event_dims, 0)]
            normalizer = sum_event(log_scale.expand(*batch_of_scale, *event), event_dims).neg_()
        if event_dims == 1:
            squares = torch.linalg.vecdot(standardized, standardized)
        else:
            squares = sum_event(standardized.square(), event_dims)
        ctx.save_for_backward(standardized, value, loc, scale)
        ctx.event_dims = event_dims
        return torch.add(normalizer, squares, alpha=-0.5)

    @staticmethod
    def backward(ctx, gradient: Tensor):
        standardized, value, loc, scale = ctx.saved_tensors
        needs_value, needs_loc, needs_scale, _ = ctx.needs_input_grad
        differentiable = torch.is_grad_enabled()  # create_graph: the gradient gets a graph too
        if differentiable:  # the saved intermediate has no graph: rebuild it from the inputs
            standardized = (value - loc) / scale
        gradient = _event_gradient(gradient, ctx.event_dims) / scale
        value_gradient = loc_gradient = scale_gradient = None
        pulled = standardized * gradient  # ∂/∂loc before un-broadcasting
        if needs_value:
            value_gradient = _unbroadcast(pulled.neg(), value.shape)
        if needs_scale:
            spread = standardized * pulled
            spread = spread - gradient if differentiable else spread.sub_(gradient)
            scale_gradient = _unbroadcast(spread, scale.shape)
        if needs_loc:
            loc_gradient = _unbroadcast(pulled, loc.shape)
        return value_gradient, loc_gradient, scale_gradient, None


class GaussianKL(torch.autograd.Function):
    """``Σ_event KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²))`` as one autograd node.

    With r = σ_q / σ_p and d = (μ_q − μ_p) / σ_p, each coordinate contributes
    ``½ (r² + d² − 1) − log r``; its gradients are ∂/∂μ_q = d / σ_p = −∂/∂μ_p,
    ∂/∂σ_q = (r − 1/r) / σ_p and ∂/∂σ_p = (1 − r² − d²) / σ_p. ``loc_p = scale_p = None`` stands
    for the standard normal (r = σ_q, d = μ_q).
    """

    @staticmethod
    def forward(ctx, loc_q, scale_q, loc_p, scale_p, event_dims: int) -> Tensor:
        if scale_p is None:
            ratio, difference = scale_q, loc_q
        else:
            ratio = scale_q / scale_p
            difference = (loc_q - loc_p) / scale_p
        terms = torch.addcmul(ratio.log().neg_(), ratio, ratio, value=0.5)  # ½ r² − log r
        terms = torch.addcmul(terms, difference, difference, value=0.5)  # (*B, *E): all four
        event_size = math.prod(terms.shape[terms.dim() - event_dims :])
        ctx.save_for_backward(ratio, difference, loc_q, scale_q, loc_p, scale_p)
        ctx.event_dims = event_dims
        return sum_event(terms, event_dims).sub_(0.5 * event_size)

    @staticmethod
    def backward(ctx, gradient: Tensor):
        ratio, difference, loc_q, scale_q, loc_p, scale_p = ctx.saved_tensors
        needs = ctx.needs_input_grad
        differentiable = torch.is_grad_enabled()  # create_graph: the gradient gets a graph too
        if differentiable:  # the saved intermediates have no graph: rebuild them from the inputs
            if scale_p is None:
                ratio, difference = scale_q, loc_q
            else:
                ratio, difference = scale_q / scale_p, (loc_q - loc_p) / scale_p
        gradient = _event_gradient(gradient, ctx.event_dims)
        if scale_p is not None:
            gradient = gradient / scale_p
        gradients: list[Tensor | None] = [None] * 5
        if needs[0] or needs[2]:
            loc_gradient = difference * gradient
            if needs[2]:
                gradients[2] = _unbroadcast(loc_gradient.neg(), loc_p.shape)
            if needs[0]:
                gradients[0] = _unbroadcast(loc_gradient, loc_q.shape)
        if needs[1]:
            factor = ratio - ratio.reciprocal()
            scale_gradient = factor * gradient if differentiable else factor.mul_(gradient)
            gradients[1] = _unbroadcast(scale_gradient, scale_q.shape)
        if needs[3]:
            squares = torch.addcmul(ratio.square(), difference, difference)  # r² + d²
            fast = not differentiable  # in place on the fresh tensor, else with a graph
            spread = squares.neg_().add_(1).mul_(gradient) if fast else (1 - squares) * gradient
            gradients[3] = _unbroadcast(spread, scale_p.shape)
        return tuple(gradients)


def softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)``: ``F.softplus`` with its linear cut-off (x > threshold gives x) placed where
    the neglected ``log1p(e^-x)`` is below the dtype's resolution — 20 for float32 (as torch's
    default), 40 for float64 (torch's 20 would be off by up to 2e-9 there)."""
    return F.softplus(x, threshold=40.0 if x.dtype == torch.float64 else 20.0)


class BernoulliLogDensity(torch.autograd.Function):
    """``Σ_event x ℓ − softplus(ℓ)``, the Bernoulli log-density in logits, as one autograd node;
    ``logits`` and ``value`` broadcast together (e.g. ``[S, *B, *E]`` against ``[*B, *E]``).

    ∂/∂ℓ = g (x − sigmoid(ℓ)), ∂/∂x = g ℓ. softplus is several times cheaper on the CPU than the
    ``log_sigmoid`` inside ``binary_cross_entropy_with_logits`` that ``Bernoulli.log_prob`` uses.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, value: Tensor, event_dims: int) -> Tensor:
        terms = torch.mul(logits, value).sub_(softplus(logits))  # (*S, *B, *E)
        ctx.save_for_backward(logits, value)
        ctx.event_dims = event_dims
        return sum_event(terms, event_dims)

    @staticmethod
    def backward(ctx, gradient: Tensor):
        logits, value = ctx.saved_tensors
        gradient = _event_gradient(gradient, ctx.event_dims)
        logits_gradient = value_gradient = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph: a gradient with a graph of its own
                residual = (value - torch.sigmoid(logits)) * gradient
            else:
                residual = torch.sigmoid(logits).sub_(value).neg_().mul_(gradient)  # (x − σ(ℓ)) g
            logits_gradient = _unbroadcast(residual, logits.shape)
        if ctx.needs_input_grad[1]:
            value_gradient = _unbroadcast(logits * gradient, value.shape)
        return logits_gradient, value_gradient, None
