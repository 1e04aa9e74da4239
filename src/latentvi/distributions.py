"""Thin helpers on ``torch.distributions``: the one place for Gaussians, KLs and log-mean-exp.

Conventions used across latentvi:

* A latent ``z`` always has an *event* dimension: a distribution over ``z`` has batch shape ``[*B]``
  and event shape ``[Z]``, so ``q.log_prob(z)`` is ``[*B]`` (summed over the latent dimensions).
* Discrete latents are one-hot vectors (``OneHotCategorical``): they too have event shape ``[K]``.
* All log densities are in nats.

Diagonal Gaussians are :class:`DiagonalGaussian` (made by :func:`diagonal_gaussian`): an
``Independent(Normal)`` whose log density and KL divergence are each one autograd node with a
hand-written gradient, instead of a dozen small ones — they sit in every step of every model here.
"""

from __future__ import annotations

import math
from typing import ClassVar

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
    constraints,
    kl_divergence,
    register_kl,
)

from latentvi.density_kernels import (
    HALF_LOG_TWO_PI,
    BernoulliLogDensity,
    GaussianKL,
    GaussianLogDensity,
    softplus,
    sum_event,
    transformed,
)

__all__ = [
    "DiagonalGaussian",
    "IndependentBernoulli",
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
    "softplus",
    "standard_normal",
]


# --------------------------------------------------------------------------------------------------
# Diagonal Gaussians


class DiagonalGaussian(Independent):
    """N(loc, diag(scale²)) over the last ``event_dims`` dimensions of ``loc`` and ``scale``.

    The distribution ``Independent(Normal(loc, scale), event_dims)`` — it *is* an ``Independent``
    whose ``base_dist`` is that ``Normal`` — with its hot paths written out: ``log_prob`` and the KL
    divergence between two of them are single autograd nodes with hand-written gradients,
    ``rsample`` is one ``addcmul``, and ``loc`` and ``scale`` are kept as given (broadcastable: one
    scalar noise scale serves every dimension) rather than expanded.

    Args:
        loc: the means, broadcastable with ``scale``.
        scale: the standard deviations (> 0), broadcastable with ``loc``.
        event_dims: how many trailing dimensions of ``broadcast(loc, scale)`` form one event.
        validate_args: as in ``torch.distributions`` (None: torch's global default). Pass False
            where ``scale`` is positive by construction (e.g. from :func:`positive_scale`): the
            checks cost a host synchronization each.

    Shapes: with ``broadcast(loc.shape, scale.shape) = [*B, *E]`` and ``len(E) = event_dims``, batch
    ``[*B]`` and event ``[*E]``; ``log_prob(value [*S, *B, *E]) -> [*S, *B]``. ``loc`` and
    ``scale`` are the tensors given; ``mean``, ``stddev``, ``base_dist.loc`` … have the full shape.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.real_vector  # replaced per instance when event_dims != 1
    has_rsample = True
    has_enumerate_support = False
    is_standard = False
    """True for the N(0, I) of :func:`standard_normal`: the KL against it skips p's parameters."""

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | float,
        event_dims: int = 1,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(loc, Tensor):
            loc = torch.as_tensor(loc, dtype=torch.get_default_dtype())
        if not isinstance(scale, Tensor):
            scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        shape = _broadcast_shape(loc.shape, scale.shape)
        if isinstance(event_dims, bool) or not isinstance(event_dims, int) or event_dims < 0:
            raise ValueError(f"event_dims must be a non-negative integer, got {event_dims!r}")
        if event_dims > len(shape):
            raise ValueError(
                f"event_dims = {event_dims} but loc and scale broadcast to only {len(shape)} "
                f"dimensions, {tuple(shape)}"
            )
        self.loc, self.scale = loc, scale
        self.reinterpreted_batch_ndims = event_dims
        if event_dims != 1:
            self.support = (
                constraints.independent(constraints.real, event_dims)
                if event_dims
                else constraints.real
            )
        split = len(shape) - event_dims
        Distribution.__init__(self, shape[:split], shape[split:], validate_args=validate_args)

    @property
    def base_dist(self) -> Normal:  # type: ignore[override]
        """``Normal(loc, scale)`` with batch shape ``[*B, *E]`` (built on first use)."""
        base = self.__dict__.get("_base_dist")
        if base is None:
            base = self.__dict__["_base_dist"] = Normal(self.loc, self.scale, validate_args=False)
        return base

    def _full(self, tensor: Tensor) -> Tensor:
        return tensor.expand(self.batch_shape + self.event_shape)

    @property
    def mean(self) -> Tensor:
        return self._full(self.loc)

    @property
    def mode(self) -> Tensor:
        return self._full(self.loc)

    @property
    def stddev(self) -> Tensor:
        return self._full(self.scale)

    @property
    def variance(self) -> Tensor:
        return self._full(self.scale.square())

    def expand(self, batch_shape, _instance=None) -> DiagonalGaussian:
        new = self._get_checked_instance(DiagonalGaussian, _instance)
        shape = torch.Size(batch_shape) + self.event_shape
        event_dims = self.reinterpreted_batch_ndims
        loc, scale = self.loc.expand(shape), self.scale.expand(shape)
        DiagonalGaussian.__init__(new, loc, scale, event_dims, validate_args=False)
        new._validate_args, new.is_standard = self._validate_args, self.is_standard
        return new

    def rsample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        """``loc + scale · ε`` with ε ~ N(0, I): ``[*sample_shape, *B, *E]``, pathwise."""
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return torch.addcmul(self.loc, noise, self.scale)

    def sample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """log N(value; loc, diag scale²), summed over the event: ``[*S, *B, *E] -> [*S, *B]``."""
        if self._validate_args:
            self._validate_sample(value)
        event_dims = self.reinterpreted_batch_ndims
        if transformed(value, self.loc, self.scale):  # torch.func: the same values, generically
            return sum_event(self.base_dist.log_prob(value), event_dims)
        return GaussianLogDensity.apply(value, self.loc, self.scale, event_dims)

    def entropy(self) -> Tensor:
        """½ log(2πe σ²) summed over the event: ``[*B]``."""
        log_scale = sum_event(self._full(self.scale.log()), self.reinterpreted_batch_ndims)
        return log_scale + self.event_shape.numel() * (0.5 + HALF_LOG_TWO_PI)


def _broadcast_shape(a: torch.Size, b: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(a, b)`` without its generic machinery (this runs every step)."""
    if a == b or not b:
        return a
    if not a:
        return b
    n = max(len(a), len(b))
    shape = []
    for i, j in zip((1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b), strict=True):
        if i != j and i != 1 and j != 1:
            raise ValueError(f"loc {tuple(a)} and scale {tuple(b)} must be broadcastable")
        shape.append(j if i == 1 else i)
    return torch.Size(shape)


@register_kl(DiagonalGaussian, DiagonalGaussian)
def _kl_diagonal_gaussians(q: DiagonalGaussian, p: DiagonalGaussian) -> Tensor:
    event_dims = q.reinterpreted_batch_ndims
    if p.reinterpreted_batch_ndims != event_dims:
        raise NotImplementedError
    if p.is_standard:  # N(0, I): its parameters take no part (and get no gradient)
        loc_p = scale_p = None
    else:
        loc_p, scale_p = p.loc, p.scale
    if transformed(q.loc, q.scale, loc_p, scale_p):  # torch.func: the same values, generically
        return sum_event(kl_divergence(q.base_dist, p.base_dist), event_dims)
    return GaussianKL.apply(q.loc, q.scale, loc_p, scale_p, event_dims)


@register_kl(DiagonalGaussian, Normal)
def _kl_diagonal_normal(q: DiagonalGaussian, p: Normal) -> Tensor:
    """A DiagonalGaussian with ``event_dims=0`` is a ``Normal`` with its fast paths."""
    if q.reinterpreted_batch_ndims:
        raise NotImplementedError
    return _kl_diagonal_gaussians(q, DiagonalGaussian(p.loc, p.scale, 0, validate_args=False))


@register_kl(Normal, DiagonalGaussian)
def _kl_normal_diagonal(q: Normal, p: DiagonalGaussian) -> Tensor:
    if p.reinterpreted_batch_ndims:
        raise NotImplementedError
    return _kl_diagonal_gaussians(DiagonalGaussian(q.loc, q.scale, 0, validate_args=False), p)


def diagonal_gaussian(
    loc: Tensor, scale: Tensor | float, event_dims: int = 1, validate_args: bool | None = None
) -> DiagonalGaussian:
    """N(loc, diag(scale²)) over the last ``event_dims`` dimensions: a :class:`DiagonalGaussian`.

    With the default ``event_dims=1``: batch ``broadcast(loc, scale)[:-1]``, event ``[Z]``. Images
    use ``event_dims=3`` (``[C, H, W]``) so that ``log_prob`` sums over every pixel. Pass
    ``validate_args=False`` when ``scale`` is positive by construction.
    """
    return DiagonalGaussian(loc, scale, event_dims, validate_args)


class IndependentBernoulli(Independent):
    """``Independent(Bernoulli(logits=ℓ), event_dims)`` whose ``log_prob`` is one autograd node
    (:class:`BernoulliLogDensity`); everything else is torch's."""

    def log_prob(self, value: Tensor) -> Tensor:
        """``Σ_event log Bernoulli(value; logits)``: ``[*S, *B, *E] -> [*S, *B]`` (validated as
        the base distribution says, as ``Independent`` does: :func:`bernoulli` validates nothing,
        so grey-level values give the cross-entropy)."""
        if self.base_dist._validate_args:
            self.base_dist._validate_sample(value)
        logits = self.base_dist.logits
        if value.dtype != logits.dtype:
            value = value.to(logits.dtype)
        if transformed(logits, value):  # torch.func: the same values with ordinary operations
            return sum_event(logits * value - softplus(logits), self.reinterpreted_batch_ndims)
        return BernoulliLogDensity.apply(logits, value, self.reinterpreted_batch_ndims)


def bernoulli(logits: Tensor, event_dims: int = 1) -> Independent:
    """Independent Bernoulli pixels/bits over the last ``event_dims`` dimensions (binary data):
    ``logits [*B, *E]`` give batch ``[*B]`` and event ``[*E]`` (``len(E) = event_dims``)."""
    return IndependentBernoulli(Bernoulli(logits=logits, validate_args=False), event_dims)


def continuous_bernoulli(logits: Tensor, event_dims: int = 1) -> Independent:
    """Independent continuous Bernoulli over the last ``event_dims`` dimensions, for data in [0, 1].

    The properly normalized density for intensities (Loaiza-Ganem & Cunningham 2019).
    """
    return Independent(ContinuousBernoulli(logits=logits, validate_args=False), event_dims)


def standard_normal(latent_dim: int, *, dtype=None, device=None) -> DiagonalGaussian:
    """The prior N(0, I_Z): batch shape ``[]``, event shape ``[Z]``."""
    loc = torch.zeros(latent_dim, dtype=dtype, device=device)
    prior = DiagonalGaussian(loc, torch.ones_like(loc), validate_args=False)
    prior.is_standard = True
    return prior


def positive_scale(raw: Tensor, min_scale: float = 1e-5) -> Tensor:
    """Map an unconstrained tensor to a positive scale by softplus (stable, no ``exp`` blow-up).

    A strided ``raw`` (e.g. half of a network's output) is copied to contiguous memory first:
    softplus has no vectorized kernel for strided input and is several times slower on it.
    """
    scale = F.softplus(raw.contiguous())
    return scale + min_scale if min_scale else scale


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


def _as_multivariate(d: DiagonalGaussian) -> MultivariateNormal:
    return MultivariateNormal(d.mean, scale_tril=torch.diag_embed(d.stddev))


# KLs between a full-covariance Gaussian and ours, registered for latentvi's class only (torch's own
# Independent and MultivariateNormal pairs are left as torch has them).
@register_kl(MultivariateNormal, DiagonalGaussian)
def _kl_mvn_diagonal(q: MultivariateNormal, p: DiagonalGaussian) -> Tensor:
    if p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    return kl_divergence(q, _as_multivariate(p))


@register_kl(DiagonalGaussian, MultivariateNormal)
def _kl_diagonal_mvn(q: DiagonalGaussian, p: MultivariateNormal) -> Tensor:
    if q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    return kl_divergence(_as_multivariate(q), p)
