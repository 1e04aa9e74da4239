"""Structured variational inference in a linear-Gaussian latent dynamical system: the SVAE
construction (Johnson, Duvenaud, Wiltschko, Datta & Adams, *Composing graphical models with
neural networks for structured representations and fast inference*, NeurIPS 2016), as SOLAR
(Zhang et al. 2019) uses it.

An encoder maps each frame o_t to a Gaussian *potential* ψ_t(x_t) = N(y_t; x_t, R_t) over the
latent state (natural parameters ``J_t = R_t⁻¹``, ``h_t = R_t⁻¹ y_t``: :meth:`Potentials.from_natural`).
The local posterior is the exact combination of the potentials with the linear-Gaussian dynamics

    q(x_{1:T}) ∝ p(x_{1:T} | u) Π_t ψ_t(x_t),     Z = ∫ p(x_{1:T} | u) Π_t ψ_t(x_t) dx,

computed by Kalman filtering and RTS smoothing with the y_t as pseudo-observations (emission I,
noise R_t; :class:`latentvi.models.kalman.LinearGaussianSSM`). The log-normalizer log Z is the
filter's log-marginal of the pseudo-observations, and since log q = log p + Σ log ψ − log Z,

    KL(q(x_{1:T}) ‖ p(x_{1:T} | u)) = Σ_t E_q[log ψ_t(x_t)] − log Z,
    ELBO = E_q[log p(o_{1:T} | x_{1:T})] − KL(q ‖ p).

Where the potentials equal the true likelihood's (a linear-Gaussian decoder, ψ_t ∝ p(o_t | x_t))
q is the exact posterior and the ELBO equals log p(o_{1:T} | u). The dynamics are a point estimate
``W = [A B c]``, ``Σ`` (e.g. :meth:`latentvi.models.mniw.MNIW.point_estimate`); the global MNIW is
learned by natural-gradient steps on the expected transition statistics this module returns.

Alignment is the Kalman module's: ``actions[t] = u_{t−1}`` drives the transition into x_t.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from latentvi.models.kalman import LinearGaussianSSM
from latentvi.models.mniw import TransitionStats, transition_stats

__all__ = [
    "Potentials",
    "StructuredPosterior",
    "affine_ssm",
    "structured_elbo",
    "structured_posterior",
]


class Potentials(NamedTuple):
    """Gaussian potentials ψ_t(x) = N(y_t; x, R_t): ``means [T, *B, n]``, ``covs [T, *B, n, n]``."""

    means: Tensor
    covs: Tensor

    @classmethod
    def from_natural(cls, h: Tensor, J: Tensor) -> Potentials:
        """From natural parameters ψ(x) ∝ exp(hᵀx − ½ xᵀJx) (``J`` positive definite)."""
        cov = torch.linalg.inv(J)
        cov = 0.5 * (cov + cov.mT)
        return cls((cov @ h.unsqueeze(-1)).squeeze(-1), cov)

    @classmethod
    def diagonal(cls, means: Tensor, variances: Tensor) -> Potentials:
        """From per-coordinate variances ``[T, *B, n]`` (an encoder's usual output)."""
        return cls(means, torch.diag_embed(variances))

    def expected_log(self, means: Tensor, covs: Tensor) -> Tensor:
        """Σ_t E_{N(x_t; m_t, P_t)}[log ψ_t(x_t)]: ``[T, *B, n]``, ``[T, *B, n, n]`` -> ``[*B]``."""
        chol = torch.linalg.cholesky(self.covs)
        residual = (self.means - means).unsqueeze(-1)
        solved = torch.cholesky_solve(residual, chol).squeeze(-1)
        quadratic = (residual.squeeze(-1) * solved).sum(-1)
        trace = torch.diagonal(torch.cholesky_solve(covs, chol), dim1=-2, dim2=-1).sum(-1)
        log_det = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        n = means.shape[-1]
        per_step = -0.5 * (quadratic + trace + log_det + n * math.log(2 * math.pi))
        return per_step.sum(0)


class StructuredPosterior(NamedTuple):
    """The local posterior q(x_{1:T}) and its terms (batch ``[*B]``).

    ``means [T, *B, n]``, ``covs [T, *B, n, n]`` (smoothed marginals), ``cross [T−1, *B, n, n]``
    = Cov(x_{t+1}, x_t), ``log_normalizer`` log Z and ``kl`` = KL(q ‖ p(x | u)), both ``[*B]``.
    """

    means: Tensor
    covs: Tensor
    cross: Tensor
    log_normalizer: Tensor
    kl: Tensor

    def rsample(self, generator: torch.Generator | None = None) -> Tensor:
        """One reparameterized draw per step from the marginals q(x_t): ``[T, *B, n]`` (enough
        for a decoder that factorizes over frames)."""
        noise = torch.randn(
            self.means.shape, dtype=self.means.dtype, device=self.means.device, generator=generator
        )
        chol = torch.linalg.cholesky(self.covs)
        return self.means + (chol @ noise.unsqueeze(-1)).squeeze(-1)

    def transition_stats(self, actions: Tensor) -> TransitionStats:
        """Expected statistics of the transitions ``z = [x_t; u_t; 1] -> y = x_{t+1}`` under q
        (``actions [T, *B, m]`` in the Kalman alignment), for the conjugate MNIW update."""
        steps, n = self.means.shape[0], self.means.shape[-1]
        inputs = torch.cat([self.means[:-1], _with_one(actions[1:])], -1)
        p = inputs.shape[-1]
        input_covs = self.means.new_zeros(*inputs.shape, p)
        input_covs[..., :n, :n] = self.covs[:-1]
        cross = self.means.new_zeros(*self.means[1:].shape, p)
        cross[..., :n] = self.cross
        if steps < 2:
            raise ValueError("transition statistics need at least two steps: pass T >= 2")
        return transition_stats(inputs, self.means[1:], input_covs, self.covs[1:], cross)


def _with_one(actions: Tensor) -> Tensor:
    return torch.cat([actions, torch.ones_like(actions[..., :1])], -1)


def affine_ssm(
    weights: Tensor, noise: Tensor, initial_mean: Tensor, initial_cov: Tensor
) -> LinearGaussianSSM:
    """The latent model x_{t+1} = A x_t + B u_t + c + N(0, Σ) as a Kalman model over
    pseudo-observations (emission I): ``weights W = [A B c] [n, n+m+1]``, ``noise Σ [n, n]``. Its
    actions are ``[u; 1]`` (:func:`structured_posterior` appends the 1)."""
    n = weights.shape[0]
    if weights.dim() != 2 or weights.shape[1] < n + 1:
        raise ValueError(
            f"weights has shape {tuple(weights.shape)}: pass W = [A B c] of shape [n, n + m + 1]"
        )
    eye = torch.eye(n, dtype=weights.dtype, device=weights.device)
    return LinearGaussianSSM(
        weights[:, :n].detach(),
        eye,
        noise.detach(),
        eye,
        initial_mean.detach(),
        initial_cov.detach(),
        control=weights[:, n:].detach(),
    )


def structured_posterior(
    ssm: LinearGaussianSSM, potentials: Potentials, actions: Tensor
) -> StructuredPosterior:
    """q(x_{1:T}) ∝ p(x | u) Π ψ_t (module docstring) by exact Kalman smoothing, with log Z and
    KL(q ‖ p); ``ssm`` from :func:`affine_ssm`, ``actions [T, *B, m]`` (u_{t−1} at t).
    Differentiable in the potentials."""
    if potentials.means.shape[:-1] != actions.shape[:-1]:
        raise ValueError(
            f"actions {tuple(actions.shape)} must match the potentials "
            f"{tuple(potentials.means.shape)} in [T, *B]: pass u_{{t−1}} at step t"
        )
    controls = _with_one(actions)
    filtered = ssm.filter(potentials.means, controls, potentials.covs)
    log_z = filtered.log_marginal
    means, covs, gains = ssm.smooth(potentials.means, controls, potentials.covs, filtered)
    cross = covs[1:] @ gains.mT  # Cov(x_{t+1}, x_t) = P^s_{t+1} J_tᵀ
    kl = potentials.expected_log(means, covs) - log_z
    return StructuredPosterior(means, covs, cross, log_z, kl)


def structured_elbo(expected_log_likelihood: Tensor, posterior: StructuredPosterior) -> Tensor:
    """E_q[log p(o | x)] − KL(q ‖ p(x | u)): ``[*B]``."""
    return expected_log_likelihood - posterior.kl
