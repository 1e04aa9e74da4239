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
from torch.autograd.function import once_differentiable
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

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
_SQRT_TWO_PI = math.sqrt(2 * math.pi)


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
        return _GaussianLogDensity.apply(
            value, self.loc, self.scale, self.reinterpreted_batch_ndims
        )

    def entropy(self) -> Tensor:
        """½ log(2πe σ²) summed over the event: ``[*B]``."""
        log_scale = _sum_event(self._full(self.scale.log()), self.reinterpreted_batch_ndims)
        return log_scale + self.event_shape.numel() * (0.5 + _HALF_LOG_TWO_PI)


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


_EVENT_DIMS = {n: tuple(range(-n, 0)) for n in range(1, 9)}


def _sum_event(tensor: Tensor, event_dims: int) -> Tensor:
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


class _GaussianLogDensity(torch.autograd.Function):
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
        log_scale = torch.log(scale * _SQRT_TWO_PI)
        if scale.dim() == 0:
            normalizer = log_scale * -event.numel()  # minus the normalizer, from here on
        else:
            batch_of_scale = scale.shape[: max(scale.dim() - event_dims, 0)]
            normalizer = _sum_event(log_scale.expand(*batch_of_scale, *event), event_dims).neg_()
        if event_dims == 1:
            squares = torch.linalg.vecdot(standardized, standardized)
        else:
            squares = _sum_event(standardized.square(), event_dims)
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


class _GaussianKL(torch.autograd.Function):
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
        return _sum_event(terms, event_dims).sub_(0.5 * event_size)

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


@register_kl(DiagonalGaussian, DiagonalGaussian)
def _kl_diagonal_gaussians(q: DiagonalGaussian, p: DiagonalGaussian) -> Tensor:
    event_dims = q.reinterpreted_batch_ndims
    if p.reinterpreted_batch_ndims != event_dims:
        raise NotImplementedError
    if p.is_standard:  # N(0, I): its parameters take no part (and get no gradient)
        return _GaussianKL.apply(q.loc, q.scale, None, None, event_dims)
    return _GaussianKL.apply(q.loc, q.scale, p.loc, p.scale, event_dims)


def diagonal_gaussian(
    loc: Tensor, scale: Tensor | float, event_dims: int = 1, validate_args: bool | None = None
) -> DiagonalGaussian:
    """N(loc, diag(scale²)) over the last ``event_dims`` dimensions: a :class:`DiagonalGaussian`.

    With the default ``event_dims=1``: batch ``broadcast(loc, scale)[:-1]``, event ``[Z]``. Images
    use ``event_dims=3`` (``[C, H, W]``) so that ``log_prob`` sums over every pixel. Pass
    ``validate_args=False`` when ``scale`` is positive by construction.
    """
    return DiagonalGaussian(loc, scale, event_dims, validate_args)


def softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)``: ``F.softplus`` with its linear cut-off (x > threshold gives x) placed where
    the neglected ``log1p(e^-x)`` is below the dtype's resolution — 20 for float32 (as torch's
    default), 40 for float64 (torch's 20 would be off by up to 2e-9 there)."""
    return F.softplus(x, threshold=40.0 if x.dtype == torch.float64 else 20.0)


class _BernoulliLogDensity(torch.autograd.Function):
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
        return _sum_event(terms, event_dims)

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


class IndependentBernoulli(Independent):
    """``Independent(Bernoulli(logits=ℓ), event_dims)`` whose ``log_prob`` is one autograd node
    (:class:`_BernoulliLogDensity`); everything else is torch's."""

    def log_prob(self, value: Tensor) -> Tensor:
        """``Σ_event log Bernoulli(value; logits)``: ``[*S, *B, *E] -> [*S, *B]`` (validated as
        the base distribution says, as ``Independent`` does: :func:`bernoulli` validates nothing,
        so grey-level values give the cross-entropy)."""
        if self.base_dist._validate_args:
            self.base_dist._validate_sample(value)
        logits = self.base_dist.logits
        if value.dtype != logits.dtype:
            value = value.to(logits.dtype)
        return _BernoulliLogDensity.apply(logits, value, self.reinterpreted_batch_ndims)


def bernoulli(logits: Tensor, event_dims: int = 1) -> Independent:
    """Independent Bernoulli pixels/bits over the last ``event_dims`` dimensions (binary data)."""
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
