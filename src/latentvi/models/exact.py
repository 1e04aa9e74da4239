"""Latent variable models whose log p(x) and posterior p(z|x) are exact: the ground truth.

* :class:`LinearGaussian` — probabilistic PCA (Tipping & Bishop 1999): z ~ N(0, I_k),
  x | z ~ N(W z + b, σ² I_D). The marginal is N(b, W Wᵀ + σ² I) and the posterior is Gaussian.
* :class:`GaussianMixture` — a discrete one-hot z ~ Cat(π), x | z=k ~ N(μ_k, diag σ_k²); log p(x)
  and p(z|x) by enumerating the K components.

Both expose the same small interface that the bounds and inference code consume: ``prior`` (p(z),
event shape ``[Z]``), ``likelihood(z)`` (p(x|z) for ``z: [*S, *B, Z]``, event shape ``[D]``),
``log_joint(x, z)``, ``log_marginal(x)``, ``posterior(x)`` and ``sample(n)``. Parameters are
``nn.Parameter`` so θ can be fitted by variational inference and checked against the closed form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal, OneHotCategorical

from latentvi.config import check_positive_int
from latentvi.distributions import (
    check_finite,
    diagonal_gaussian,
    inverse_softplus,
    positive_scale,
    standard_normal,
)

__all__ = ["GaussianMixture", "LinearGaussian"]


def _as_tensor(name: str, value, dtype: torch.dtype | None = None) -> Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a tensor or array of numbers, got {value!r}") from error
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return check_finite(name, tensor)


def _check_positive(name: str, value: Tensor) -> Tensor:
    if (value <= 0).any():
        raise ValueError(f"{name} must be strictly positive, got a minimum of {value.min().item()}")
    return value


class _ExactModel(nn.Module):
    """Shared input checks and the joint density for the exact models."""

    data_dim: int

    @property
    def prior(self) -> Distribution:  # pragma: no cover - overridden
        raise NotImplementedError

    def likelihood(self, z: Tensor) -> Distribution:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_x(self, x: Tensor, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [N, {self.data_dim}]")
        if x.dim() < 1 or x.shape[-1] != self.data_dim:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but the model's data dimension is "
                f"{self.data_dim}: pass x of shape [N, {self.data_dim}]"
            )
        return check_finite(name, x)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) = log p(x|z) + log p(z): ``x [*B, D]``, ``z [*S, *B, Z]`` -> ``[*S, *B]``."""
        self._check_x(x)
        return self.likelihood(z).log_prob(x) + self.prior.log_prob(z)


class LinearGaussian(_ExactModel):
    """Probabilistic PCA (Tipping & Bishop 1999): z ~ N(0, I_k), x | z ~ N(W z + b, noise_std² I_D).

    Args:
        weight: ``W``, shape ``[D, k]``.
        bias: ``b``, shape ``[D]``.
        noise_std: ``σ > 0``, a scalar.

    All three are learnable parameters (σ through a softplus). The dtype follows ``weight``.
    """

    def __init__(self, weight, bias, noise_std) -> None:
        super().__init__()
        weight = _as_tensor("weight", weight)
        if weight.dim() != 2:
            raise ValueError(f"weight must be a [D, k] matrix, got shape {tuple(weight.shape)}")
        bias = _as_tensor("bias", bias, weight.dtype)
        if bias.shape != weight.shape[:1]:
            raise ValueError(
                f"bias must have shape [D] = [{weight.shape[0]}] to match weight "
                f"{tuple(weight.shape)}, got {tuple(bias.shape)}"
            )
        noise_std = _as_tensor("noise_std", noise_std, weight.dtype)
        if noise_std.numel() != 1:
            raise ValueError(f"noise_std must be a scalar, got shape {tuple(noise_std.shape)}")
        _check_positive("noise_std", noise_std)
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())
        self.raw_noise_std = nn.Parameter(inverse_softplus(noise_std.reshape(()), 0.0))
        self.data_dim, self.latent_dim = weight.shape
        self._prior: tuple[tuple, Distribution] | None = None  # ((dtype, device), p(z))

    @property
    def noise_std(self) -> Tensor:
        """σ as a scalar tensor (differentiable)."""
        return positive_scale(self.raw_noise_std, 0.0)

    @property
    def prior(self) -> Distribution:
        """p(z) = N(0, I_k): batch ``[]``, event ``[k]``.

        Made once per dtype and device of the parameters (it is asked for at every step); never
        under ``torch.inference_mode``, whose tensors could not be used for training later.
        """
        weight = self.weight
        key = (weight.dtype, weight.device)
        if self._prior is None or self._prior[0] != key:
            prior = standard_normal(self.latent_dim, dtype=key[0], device=key[1])
            if torch.is_inference_mode_enabled():
                return prior
            self._prior = key, prior
        return self._prior[1]

    def likelihood(self, z: Tensor) -> Distribution:
        """p(x|z) = N(W z + b, σ² I): ``z [*S, *B, k]`` -> batch ``[*S, *B]``, event ``[D]``."""
        loc = F.linear(z, self.weight, self.bias)  # (*S, *B, D)
        # One scalar σ for every coordinate (not expanded); softplus keeps it positive.
        return diagonal_gaussian(loc, self.noise_std, validate_args=False)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, W Wᵀ + σ² I_D): batch ``[]``, event ``[D]``."""
        eye = torch.eye(self.data_dim, dtype=self.weight.dtype, device=self.weight.device)
        covariance = self.weight @ self.weight.T + self.noise_std**2 * eye
        return MultivariateNormal(self.bias, covariance_matrix=covariance)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x): ``[*B, D] -> [*B]`` in nats."""
        return self.marginal().log_prob(self._check_x(x))

    def posterior(self, x: Tensor) -> MultivariateNormal:
        """Exact p(z|x) = N(M⁻¹ Wᵀ (x − b), σ² M⁻¹) with M = Wᵀ W + σ² I_k.

        ``x [*B, D]`` -> a full-covariance Gaussian with batch ``[*B]``, event ``[k]``.
        """
        x = self._check_x(x)
        variance = self.noise_std**2
        eye = torch.eye(self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
        m = self.weight.T @ self.weight + variance * eye
        m_chol = torch.linalg.cholesky(m)
        # mean = M⁻¹ Wᵀ (x − b), solved for all examples at once: (k, *B) -> (*B, k)
        rhs = ((x - self.bias) @ self.weight).unsqueeze(-1)
        mean = torch.cholesky_solve(rhs, m_chol).squeeze(-1)
        covariance = variance * torch.cholesky_inverse(m_chol)
        scale_tril = torch.linalg.cholesky(covariance).expand(*mean.shape[:-1], -1, -1)
        return MultivariateNormal(mean, scale_tril=scale_tril)

    def expected_log_likelihood(self, x: Tensor, q: Distribution) -> Tensor:
        """E_q[log p(x|z)] in closed form for a Gaussian ``q`` (diagonal or full): ``[*B]``.

        ``-D/2 log(2πσ²) - (‖x − W μ − b‖² + tr(W Σ Wᵀ)) / (2σ²)`` with μ, Σ the mean and covariance
        of q. With :meth:`prior` this gives the exact ELBO, the reference for the estimator tests.
        """
        x = self._check_x(x)
        mean, covariance = _gaussian_moments(q)
        variance = self.noise_std**2
        residual = x - mean @ self.weight.T - self.bias
        trace = torch.einsum("dk,...kl,dl->...", self.weight, covariance, self.weight)
        squared = residual.pow(2).sum(-1) + trace
        return -0.5 * self.data_dim * torch.log(2 * math.pi * variance) - squared / (2 * variance)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` data points from p(x): ``[n, D]``."""
        check_positive_int("n", n)
        kwargs = {"dtype": self.weight.dtype, "device": self.weight.device, "generator": generator}
        z = torch.randn(n, self.latent_dim, **kwargs)
        noise = torch.randn(n, self.data_dim, **kwargs)
        return z @ self.weight.T + self.bias + self.noise_std * noise

    @classmethod
    def fit_mle(cls, x: Tensor, k: int) -> LinearGaussian:
        """The closed-form maximum-likelihood fit (Tipping & Bishop 1999, eq. 7–8).

        With S the sample covariance of ``x [N, D]`` and λ_1 ≥ … ≥ λ_D its eigenvalues (eigenvectors
        U): b = mean(x), σ² = mean(λ_{k+1..D}), W = U_k (Λ_k − σ² I)^{1/2} (up to a rotation, which
        leaves p(x) unchanged).
        """
        x = _as_tensor("x", x)
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"x must be a [N, D] matrix with N >= 2, got shape {tuple(x.shape)}")
        d = x.shape[1]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < d:
            raise ValueError(f"k must be an integer with 1 <= k < D = {d}, got {k!r}")
        bias = x.mean(0)
        centred = x - bias
        covariance = centred.T @ centred / x.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        variance = eigenvalues[k:].mean()
        if variance <= 0:
            raise ValueError("x is degenerate: the discarded eigenvalues are zero; lower k")
        weight = eigenvectors[:, :k] * torch.sqrt((eigenvalues[:k] - variance).clamp_min(0))
        return cls(weight, bias, variance.sqrt())


def _gaussian_moments(q: Distribution) -> tuple[Tensor, Tensor]:
    if isinstance(q, MultivariateNormal):
        return q.mean, q.covariance_matrix
    try:
        return q.mean, torch.diag_embed(q.variance)
    except NotImplementedError as error:
        raise ValueError(
            f"q must be a Gaussian (diagonal or MultivariateNormal), got {type(q).__name__}"
        ) from error


class GaussianMixture(_ExactModel):
    """A mixture of diagonal Gaussians with a one-hot discrete latent (Bishop 2006, §9.2).

    z ~ OneHotCategorical(softmax(logits)), x | z = e_k ~ N(means[k], diag(scales[k]²)).

    Args:
        logits: mixing logits, shape ``[K]``.
        means: component means, shape ``[K, D]``.
        scales: component standard deviations ``> 0``, shape ``[K, D]`` (or ``[K]`` for isotropic).
    """

    def __init__(self, logits, means, scales) -> None:
        super().__init__()
        means = _as_tensor("means", means)
        if means.dim() != 2:
            raise ValueError(f"means must be a [K, D] matrix, got shape {tuple(means.shape)}")
        num_components, data_dim = means.shape
        logits = _as_tensor("logits", logits, means.dtype)
        if logits.shape != (num_components,):
            raise ValueError(
                f"logits must have shape [K] = [{num_components}], got {tuple(logits.shape)}"
            )
        scales = _as_tensor("scales", scales, means.dtype)
        if scales.shape == (num_components,):
            scales = scales.unsqueeze(-1).expand(num_components, data_dim)
        if scales.shape != means.shape:
            raise ValueError(
                f"scales must have shape [K, D] = {tuple(means.shape)} or [K], "
                f"got {tuple(scales.shape)}"
            )
        _check_positive("scales", scales)
        self.logits = nn.Parameter(logits.clone())
        self.means = nn.Parameter(means.clone())
        self.raw_scales = nn.Parameter(inverse_softplus(scales, 0.0))
        self.num_components, self.data_dim = num_components, data_dim

    @property
    def latent_dim(self) -> int:
        """The one-hot latent's size, K."""
        return self.num_components

    @property
    def scales(self) -> Tensor:
        """Component standard deviations ``[K, D]``."""
        return positive_scale(self.raw_scales, 0.0)

    @property
    def prior(self) -> OneHotCategorical:
        """p(z) = Cat(softmax(logits)) over one-hot vectors: event ``[K]``."""
        return OneHotCategorical(logits=self.logits)

    def likelihood(self, z: Tensor) -> Distribution:
        """p(x|z): ``z [*S, *B, K]`` (one-hot, or a relaxed point of the simplex) -> event ``[D]``.

        Means and scales are mixed linearly in z, which is exact for one-hot z and gives the smooth
        interpolation that relaxed (Gumbel-softmax) samples need.
        """
        return diagonal_gaussian(z @ self.means, z @ self.scales)

    def component_log_joint(self, x: Tensor) -> Tensor:
        """log p(x, z = e_k) = log π_k + log N(x; μ_k, σ_k²): ``[*B, D] -> [*B, K]``.

        The one computation behind :meth:`log_marginal` (its logsumexp over k) and
        :meth:`posterior` (its log_softmax); EM's E-step uses both from one call.
        """
        x = self._check_x(x)
        components = diagonal_gaussian(self.means, self.scales, validate_args=False)  # batch [K]
        log_likelihood = components.log_prob(x.unsqueeze(-2))  # (*B, K)
        return torch.log_softmax(self.logits, -1) + log_likelihood

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x) = logsumexp_k [log π_k + log N(x; μ_k, σ_k²)]: ``[*B, D] -> [*B]``."""
        return torch.logsumexp(self.component_log_joint(x), -1)

    def posterior(self, x: Tensor) -> OneHotCategorical:
        """Exact p(z|x) ∝ π_k N(x; μ_k, σ_k²): batch ``[*B]``, event ``[K]``."""
        return OneHotCategorical(logits=torch.log_softmax(self.component_log_joint(x), -1))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` data points from p(x): ``[n, D]``."""
        check_positive_int("n", n)
        probs = torch.softmax(self.logits, -1)
        component = torch.multinomial(probs, n, replacement=True, generator=generator)
        noise = torch.randn(
            n, self.data_dim, dtype=self.means.dtype, device=self.means.device, generator=generator
        )
        return self.means[component] + self.scales[component] * noise
