"""Thin helpers on ``torch.distributions``: the one place for Gaussians, KLs and log-mean-exp.

Conventions used across latentvi:

* A latent ``z`` always has an *event* dimension: a distribution over ``z`` has batch shape ``[*B]``
  and event shape ``[Z]``, so ``q.log_prob(z)`` is ``[*B]`` (summed over the latent dimensions).
* Discrete latents are one-hot vectors (``OneHotCategorical``): they too have event shape ``[K]``.
* All log densities are in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
    register_kl,
)

__all__ = [
    "bernoulli",
    "check_finite",
    "continuous_bernoulli",
    "diagonal_gaussian",
    "entropy",
    "has_analytic_entropy",
    "has_analytic_kl",
    "kl",
    "log_mean_exp",
    "positive_scale",
    "sample",
    "standard_normal",
]


def diagonal_gaussian(loc: Tensor, scale: Tensor, event_dims: int = 1) -> Independent:
    """N(loc, diag(scale²)) over the last ``event_dims`` dimensions.

    With the default ``event_dims=1``: batch ``loc.shape[:-1]``, event ``[Z]``. Images use
    ``event_dims=3`` (``[C, H, W]``) so that ``log_prob`` sums over every pixel.
    """
    return Independent(Normal(loc, scale), event_dims)


def bernoulli(logits: Tensor, event_dims: int = 1) -> Independent:
    """Independent Bernoulli pixels/bits over the last ``event_dims`` dimensions (binary data)."""
    return Independent(Bernoulli(logits=logits, validate_args=False), event_dims)


def continuous_bernoulli(logits: Tensor, event_dims: int = 1) -> Independent:
    """Independent continuous Bernoulli over the last ``event_dims`` dimensions, for data in [0, 1].

    The properly normalized density for intensities (Loaiza-Ganem & Cunningham 2019).
    """
    return Independent(ContinuousBernoulli(logits=logits, validate_args=False), event_dims)


def standard_normal(latent_dim: int, *, dtype=None, device=None) -> Independent:
    """The prior N(0, I_Z): batch shape ``[]``, event shape ``[Z]``."""
    loc = torch.zeros(latent_dim, dtype=dtype, device=device)
    return diagonal_gaussian(loc, torch.ones_like(loc))


def positive_scale(raw: Tensor, min_scale: float = 1e-5) -> Tensor:
    """Map an unconstrained tensor to a positive scale by softplus (stable, no ``exp`` blow-up)."""
    return F.softplus(raw) + min_scale


def inverse_softplus(scale: Tensor | float, min_scale: float = 1e-5) -> Tensor:
    """The raw value whose :func:`positive_scale` is ``scale``: ``log(expm1(scale - min))``."""
    y = torch.as_tensor(scale) - min_scale
    return y + torch.log(-torch.expm1(-y))


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """``log(mean(exp(x), dim))`` computed stably: ``[..., K, ...] -> [..., ...]``."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def sample(q: Distribution, num_samples: int) -> Tensor:
    """Draw ``[S, *B, *E]`` samples: reparameterized when ``q`` supports it, plain otherwise."""
    shape = torch.Size([num_samples])
    return q.rsample(shape) if q.has_rsample else q.sample(shape)


def has_analytic_kl(q: Distribution, p: Distribution) -> bool:
    """Whether ``torch.distributions.kl_divergence(q, p)`` has a registered closed form."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


def has_analytic_entropy(q: Distribution) -> bool:
    """Whether ``q.entropy()`` is implemented in closed form."""
    try:
        q.entropy()
    except NotImplementedError:
        return False
    return True


def kl(q: Distribution, p: Distribution, z: Tensor | None = None) -> Tensor:
    """KL(q ‖ p) with batch shape ``[*B]``: analytic where registered, else Monte Carlo.

    The Monte Carlo fallback needs samples ``z: [S, *B, *E]`` drawn from ``q`` (reparameterized for
    gradients) and returns ``mean_s [log q(z_s) - log p(z_s)]``.
    """
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        if z is None:
            raise ValueError(
                f"kl: no closed form is registered for KL({type(q).__name__} ‖ "
                f"{type(p).__name__}); pass samples z drawn from q for a Monte Carlo estimate"
            ) from None
        return (q.log_prob(z) - p.log_prob(z)).mean(0)


def entropy(q: Distribution, z: Tensor | None = None) -> Tensor:
    """H(q) with batch shape ``[*B]``: analytic where implemented, else ``-mean_s log q(z_s)``."""
    try:
        return q.entropy()
    except NotImplementedError:
        if z is None:
            raise ValueError(
                f"entropy: {type(q).__name__} has no closed-form entropy; pass samples z drawn "
                "from q for a Monte Carlo estimate"
            ) from None
        return -q.log_prob(z).mean(0)


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise ``ValueError`` naming ``name`` when ``value`` holds NaN or infinity."""
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values; clean or impute the data first")
    return value


def _as_multivariate(d: Independent) -> MultivariateNormal:
    base = d.base_dist
    return MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))


def _is_diagonal_gaussian(d: Distribution) -> bool:
    return (
        isinstance(d, Independent)
        and isinstance(d.base_dist, Normal)
        and d.reinterpreted_batch_ndims == 1
    )


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal(q: MultivariateNormal, p: Independent) -> Tensor:
    if not _is_diagonal_gaussian(p):
        raise NotImplementedError
    return kl_divergence(q, _as_multivariate(p))


@register_kl(Independent, MultivariateNormal)
def _kl_diagonal_mvn(q: Independent, p: MultivariateNormal) -> Tensor:
    if not _is_diagonal_gaussian(q):
        raise NotImplementedError
    return kl_divergence(_as_multivariate(q), p)
