"""One-node autograd kernels behind :class:`latentvi.distributions.DiagonalGaussian` and
:class:`latentvi.distributions.IndependentBernoulli`: the Gaussian log density, the KL between
diagonal Gaussians and the Bernoulli log density in logits, each one autograd node with a
hand-written gradient instead of a dozen small ones (they sit in every step of every model here).
Inputs broadcast together; the event dimensions are summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
SQRT_TWO_PI = math.sqrt(2 * math.pi)

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
        ctx.save_for_backward(standardized, scale)
        ctx.event_dims = event_dims
        ctx.shapes = value.shape, loc.shape
        return torch.add(normalizer, squares, alpha=-0.5)

    @staticmethod
    @once_differentiable
    def backward(ctx, gradient: Tensor):
        standardized, scale = ctx.saved_tensors
        value_shape, loc_shape = ctx.shapes
        needs_value, needs_loc, needs_scale, _ = ctx.needs_input_grad
        gradient = _event_gradient(gradient, ctx.event_dims) / scale
        value_gradient = loc_gradient = scale_gradient = None
        pulled = standardized * gradient  # ∂/∂loc before un-broadcasting
        if needs_value:
            value_gradient = _unbroadcast(pulled.neg(), value_shape)
        if needs_scale:
            scale_gradient = _unbroadcast(standardized.mul(pulled).sub_(gradient), scale.shape)
        if needs_loc:
            loc_gradient = _unbroadcast(pulled, loc_shape)
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
        ctx.save_for_backward(ratio, difference, scale_p)
        ctx.event_dims = event_dims
        ctx.shapes = loc_q.shape, scale_q.shape, getattr(loc_p, "shape", None)
        return sum_event(terms, event_dims).sub_(0.5 * event_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, gradient: Tensor):
        ratio, difference, scale_p = ctx.saved_tensors
        loc_q_shape, scale_q_shape, loc_p_shape = ctx.shapes
        needs = ctx.needs_input_grad
        gradient = _event_gradient(gradient, ctx.event_dims)
        if scale_p is not None:
            gradient = gradient / scale_p
        gradients: list[Tensor | None] = [None] * 5
        if needs[0] or needs[2]:
            loc_gradient = difference * gradient
            if needs[2]:
                gradients[2] = _unbroadcast(loc_gradient.neg(), loc_p_shape)
            if needs[0]:
                gradients[0] = _unbroadcast(loc_gradient, loc_q_shape)
        if needs[1]:
            scale_gradient = (ratio - ratio.reciprocal()).mul_(gradient)
            gradients[1] = _unbroadcast(scale_gradient, scale_q_shape)
        if needs[3]:
            spread = torch.addcmul(ratio.square(), difference, difference).neg_().add_(1)
            gradients[3] = _unbroadcast(spread.mul_(gradient), scale_p.shape)
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
    @once_differentiable
    def backward(ctx, gradient: Tensor):
        logits, value = ctx.saved_tensors
        gradient = _event_gradient(gradient, ctx.event_dims)
        logits_gradient = value_gradient = None
        if ctx.needs_input_grad[0]:
            residual = torch.sigmoid(logits).sub_(value).neg_()  # x − sigmoid(ℓ)
            logits_gradient = _unbroadcast(residual.mul_(gradient), logits.shape)
        if ctx.needs_input_grad[1]:
            value_gradient = _unbroadcast(logits * gradient, value.shape)
        return logits_gradient, value_gradient, None
