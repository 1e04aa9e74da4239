"""The matrix-normal-inverse-Wishart (MNIW) prior over linear-Gaussian regression, and its
conjugate update: the global dynamics prior of SOLAR (Zhang et al. 2019) and of the SVAE's linear
dynamical system (Johnson et al. 2016).

For a regression ``y = W z + ε``, ``ε ~ N(0, Σ)`` with ``y [n]`` and inputs ``z [p]`` (SOLAR's
dynamics: ``y = x_{t+1}``, ``z = [x_t; u_t; 1]``, ``W = [A B c]``)::

    Σ ~ IW(Ψ, ν),        W | Σ ~ MN(M, Σ, V)     (vec W ~ N(vec M, V ⊗ Σ))

with ``M [n, p]``, column covariance ``V [p, p]`` (stored as its precision ``K = V⁻¹``), scale
``Ψ [n, n]`` and degrees of freedom ``ν > n − 1``. The likelihood's sufficient statistics of
transitions are ``S_zz = Σ z zᵀ``, ``S_yz = Σ y zᵀ``, ``S_yy = Σ y yᵀ`` and the count N (with
latent states, their expectations under q: the smoother's second moments); the posterior is
MNIW again (conjugacy; e.g. Murphy, *Conjugate Bayesian analysis of the Gaussian distribution*
2007, and Fox 2009 for the matrix case)::

    K_N = K + S_zz,    M_N = (M K + S_yz) K_N⁻¹,
    Ψ_N = Ψ + S_yy + M K Mᵀ − M_N K_N M_Nᵀ,    ν_N = ν + N.

The update is linear in natural parameters, so :meth:`MNIW.update` with expected statistics is the
exact coordinate step of mean-field VI, and :meth:`MNIW.natural_step` the SVAE's stochastic natural
gradient step. The expectations SVAE needs (:meth:`MNIW.expected_stats`)::

    E[Σ⁻¹] = ν Ψ⁻¹,   E[Σ⁻¹W] = ν Ψ⁻¹ M,   E[WᵀΣ⁻¹W] = ν MᵀΨ⁻¹M + n V,
    E log|Σ⁻¹| = Σ_{i=1}^{n} ψ((ν + 1 − i)/2) + n log 2 − log|Ψ|.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["MNIW", "ExpectedStats", "TransitionStats", "transition_stats"]


class TransitionStats(NamedTuple):
    """Sufficient statistics of regressions ``y = W z + ε``: ``zz [p, p]``, ``yz [n, p]``,
    ``yy [n, n]`` and ``count`` (a 0-d tensor)."""

    zz: Tensor
    yz: Tensor
    yy: Tensor
    count: Tensor

    def __add__(self, other: TransitionStats) -> TransitionStats:  # type: ignore[override]
        return TransitionStats(*(a + b for a, b in zip(self, other, strict=True)))

    def scale(self, factor: float) -> TransitionStats:
        return TransitionStats(*(factor * value for value in self))


class ExpectedStats(NamedTuple):
    """``E[Σ⁻¹] [n, n]``, ``E[Σ⁻¹W] [n, p]``, ``E[WᵀΣ⁻¹W] [p, p]``, ``E log|Σ⁻¹|`` (0-d)."""

    precision: Tensor
    precision_weights: Tensor
    weights_precision_weights: Tensor
    log_det_precision: Tensor


def transition_stats(
    inputs: Tensor,
    outputs: Tensor,
    input_covs: Tensor | None = None,
    output_covs: Tensor | None = None,
    cross_covs: Tensor | None = None,
) -> TransitionStats:
    """The statistics of pairs ``inputs [N, p]``, ``outputs [N, n]`` (leading dimensions are
    flattened). With latent pairs, pass their posterior covariances too: ``input_covs [N, p, p]``,
    ``output_covs [N, n, n]`` and ``cross_covs [N, n, p]`` = Cov(y, z); the statistics are then the
    expectations E[z zᵀ], E[y zᵀ], E[y yᵀ] summed."""
    if inputs.shape[:-1] != outputs.shape[:-1]:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} and outputs {tuple(outputs.shape)} must share their "
            "leading (sample) dimensions: pass [N, p] and [N, n]"
        )
    z = inputs.reshape(-1, inputs.shape[-1])
    y = outputs.reshape(-1, outputs.shape[-1])
    zz, yz, yy = z.mT @ z, y.mT @ z, y.mT @ y
    if input_covs is not None:
        zz = zz + input_covs.reshape(-1, *zz.shape).sum(0)
    if output_covs is not None:
        yy = yy + output_covs.reshape(-1, *yy.shape).sum(0)
    if cross_covs is not None:
        yz = yz + cross_covs.reshape(-1, *yz.shape).sum(0)
    count = torch.tensor(float(z.shape[0]), dtype=z.dtype, device=z.device)
    return TransitionStats(zz, yz, 0.5 * (yy + yy.mT), count)


def _spd(name: str, value: Tensor, size: int) -> Tensor:
    if value.is_meta:  # shapes only (memory estimates build networks on the meta device)
        if value.shape != (size, size):
            raise ValueError(f"{name} must be a [{size}, {size}] matrix, got {tuple(value.shape)}")
        return value
    if value.shape != (size, size) or not torch.isfinite(value).all():
        raise ValueError(
            f"{name} must be a finite [{size}, {size}] matrix, got {tuple(value.shape)}"
        )
    if not torch.allclose(value, value.mT, atol=1e-8) or torch.linalg.cholesky_ex(value).info:
        raise ValueError(f"{name} must be symmetric positive definite: pass e.g. a scaled identity")
    return 0.5 * (value + value.mT)


class MNIW(NamedTuple):
    """A matrix-normal-inverse-Wishart distribution (module docstring): ``mean M [n, p]``,
    ``col_precision K = V⁻¹ [p, p]``, ``scale Ψ [n, n]``, ``dof ν`` (0-d tensor, > n − 1)."""

    mean: Tensor
    col_precision: Tensor
    scale: Tensor
    dof: Tensor

    @classmethod
    def create(cls, mean: Tensor, col_precision: Tensor, scale: Tensor, dof: float) -> MNIW:
        """Checked construction (ValueError naming the bad argument)."""
        mean = torch.as_tensor(mean)
        if mean.dim() != 2:
            raise ValueError(f"mean must be an [n, p] matrix, got shape {tuple(mean.shape)}")
        n, p = mean.shape
        col_precision = _spd("col_precision", torch.as_tensor(col_precision, dtype=mean.dtype), p)
        scale = _spd("scale", torch.as_tensor(scale, dtype=mean.dtype), n)
        if not float(dof) > n - 1:
            raise ValueError(f"dof = {dof} is invalid: use more than n − 1 = {n - 1}")
        return cls(mean, col_precision, scale, torch.tensor(float(dof), dtype=mean.dtype))

    @classmethod
    def weak(cls, n: int, p: int, *, strength: float = 1e-3, noise: float = 1.0, dtype=None):
        """A weak prior: M = 0, K = strength·I, Ψ = noise·(n + 2)·I, ν = n + 2 (E[Σ] = noise·I)."""
        dtype = dtype or torch.get_default_dtype()
        return cls.create(
            torch.zeros(n, p, dtype=dtype),
            strength * torch.eye(p, dtype=dtype),
            noise * (n + 2) * torch.eye(n, dtype=dtype),
            n + 2,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mean.shape)  # type: ignore[return-value]

    # --- conjugacy ---------------------------------------------------------------------------
    def update(self, stats: TransitionStats) -> MNIW:
        """The posterior given the statistics (module docstring)."""
        k_n = self.col_precision + stats.zz
        k_n = 0.5 * (k_n + k_n.mT)
        rhs = self.mean @ self.col_precision + stats.yz  # M_N K_N = rhs
        m_n = torch.linalg.solve(k_n, rhs.mT).mT
        psi = self.scale + stats.yy + self.mean @ self.col_precision @ self.mean.mT - m_n @ rhs.mT
        return MNIW(m_n, k_n, 0.5 * (psi + psi.mT), self.dof + stats.count)

    def natural(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Natural parameters ``(K, M K, Ψ + M K Mᵀ, ν)``: the update adds the statistics to them."""
        mk = self.mean @ self.col_precision
        return self.col_precision, mk, self.scale + mk @ self.mean.mT, self.dof

    @classmethod
    def from_natural(cls, k: Tensor, mk: Tensor, psi_plus: Tensor, dof: Tensor) -> MNIW:
        k = 0.5 * (k + k.mT)
        mean = torch.linalg.solve(k, mk.mT).mT
        scale = psi_plus - mean @ mk.mT
        return cls(mean, k, 0.5 * (scale + scale.mT), dof)

    def natural_step(self, prior: MNIW, stats: TransitionStats, rate: float) -> MNIW:
        """The SVAE's stochastic natural-gradient step on a global factor (Johnson et al. 2016;
        Hoffman et al. 2013): natural parameters ``η ← (1 − ρ) η + ρ (η_prior + t̂)`` with ``t̂``
        the (rescaled, minibatch) expected statistics; ``rate`` ρ in (0, 1] (1: the conjugate
        update of ``prior``)."""
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate = {rate} is invalid: use a step size in (0, 1]")
        target = prior.update(stats).natural()
        mixed = [(1 - rate) * a + rate * b for a, b in zip(self.natural(), target, strict=True)]
        return MNIW.from_natural(*mixed)

    # --- expectations ------------------------------------------------------------------------
    def expected_stats(self) -> ExpectedStats:
        """E[Σ⁻¹], E[Σ⁻¹W], E[WᵀΣ⁻¹W], E log|Σ⁻¹| (module docstring)."""
        n = self.mean.shape[0]
        scale_inv = torch.linalg.inv(self.scale)
        scale_inv = 0.5 * (scale_inv + scale_inv.mT)
        precision = self.dof * scale_inv
        col_cov = torch.linalg.inv(self.col_precision)
        wpw = self.mean.mT @ precision @ self.mean + n * 0.5 * (col_cov + col_cov.mT)
        i = torch.arange(1, n + 1, dtype=self.mean.dtype, device=self.mean.device)
        log_det = (
            torch.special.digamma((self.dof + 1 - i) / 2).sum()
            + n * math.log(2.0)
            - torch.linalg.slogdet(self.scale)[1]
        )
        return ExpectedStats(precision, precision @ self.mean, 0.5 * (wpw + wpw.mT), log_det)

    def noise_mean(self) -> Tensor:
        """E[Σ] = Ψ / (ν − n − 1) (finite for ν > n + 1)."""
        n = self.mean.shape[0]
        if not float(self.dof) > n + 1:
            raise ValueError(f"E[Σ] needs dof > n + 1 = {n + 1}, got {float(self.dof)}")
        return self.scale / (self.dof - n - 1)

    def point_estimate(self) -> tuple[Tensor, Tensor]:
        """``(W, Σ) = (M, E[Σ⁻¹]⁻¹ = Ψ / ν)``: the plug-in dynamics for Kalman smoothing."""
        return self.mean, self.scale / self.dof

    def expected_log_likelihood(self, stats: TransitionStats) -> Tensor:
        """E_q(W,Σ)[Σ log N(y; W z, Σ)] of transitions with statistics ``stats`` (0-d)."""
        e = self.expected_stats()
        n = self.mean.shape[0]
        quadratic = (
            (e.precision * stats.yy).sum()
            - 2 * (e.precision_weights * stats.yz).sum()
            + (e.weights_precision_weights * stats.zz).sum()
        )
        return 0.5 * stats.count * (e.log_det_precision - n * math.log(2 * math.pi)) - 0.5 * (
            quadratic
        )

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(W [count, n, p], Σ [count, n, n])`` drawn from the distribution."""
        n, p = self.mean.shape
        dtype = self.mean.dtype
        # Σ⁻¹ ~ Wishart(Ψ⁻¹, ν) by the Bartlett decomposition
        chol = torch.linalg.cholesky(torch.linalg.inv(self.scale))
        lower = torch.zeros(count, n, n, dtype=dtype)
        for i in range(n):
            shape = (self.dof - i) / 2
            gamma = torch._standard_gamma(shape.expand(count).clone(), generator=generator)
            lower[:, i, i] = (2 * gamma).sqrt()
            lower[:, i, :i] = torch.randn(count, i, dtype=dtype, generator=generator)
        factor = chol @ lower
        precision = factor @ factor.mT
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.mT)
        col_chol = torch.linalg.cholesky(torch.linalg.inv(self.col_precision))
        noise = torch.randn(count, n, p, dtype=dtype, generator=generator)
        weights = self.mean + torch.linalg.cholesky(cov) @ noise @ col_chol.mT
        return weights, cov
