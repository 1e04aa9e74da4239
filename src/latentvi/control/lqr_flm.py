"""LQR with fitted linear models under a KL bound (LQR-FLM): the policy improvement of guided
policy search (Levine & Abbeel, *Learning neural network policies with guided policy search under
unknown dynamics*, NeurIPS 2014) that SOLAR (Zhang et al. 2019) runs in its learned latent space.

A time-varying linear-Gaussian (TVLG) policy ``p(u_t | x_t) = N(K_t x_t + k_t, S_t)`` acts in
linear-Gaussian dynamics ``x_{t+1} = A_t x_t + B_t u_t + c_t + N(0, F_t)``, ``x_0 ~ N(μ_0, Σ_0)``,
under the quadratic cost ``ℓ_t(x, u) = ½xᵀQ_t x + q_tᵀx + ½uᵀR_t u + r_tᵀu + uᵀN_t x`` for
t < H and ``½xᵀQ_H x + q_Hᵀx`` at the end. One improvement solves

    min_p  E_p[Σ_t ℓ_t]   s.t.   KL(p(τ) ‖ p̂(τ)) / H ≤ ε      (p̂: the previous policy),

where KL(p(τ) ‖ p̂(τ)) = Σ_t E_{p(x_t)}[KL(p(u_t|x_t) ‖ p̂(u_t|x_t))] (same dynamics): the bound is
on the **mean per-step KL**. Its Lagrangian with multiplier η is, divided by η, the
maximum-entropy LQR problem with the cost ``ℓ_t/η − log p̂(u_t | x_t)``; its solution is the
Gaussian policy with the LQR gains of that cost and covariance ``S_t = Q̃_uu,t⁻¹`` (Levine &
Abbeel 2014, §3). The gains come from :func:`latentvi.control.lqr.lqr` after the control–state
cross term is eliminated (``u = w − R⁻¹(N x + r)``). KL falls monotonically as η grows, so η is
found by bisection in log η (:func:`lqr_flm`); as η → 0 the gains tend to the plain LQR gains.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from latentvi.control.lqr import lqr

__all__ = [
    "FLMResult",
    "LinearGaussianDynamics",
    "LinearGaussianPolicy",
    "QuadraticCost",
    "expected_cost",
    "lqr_flm",
    "max_entropy_lqr",
    "state_marginals",
    "trajectory_kl",
]


def _mv(matrix: Tensor, vector: Tensor) -> Tensor:
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def _sym(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.mT)


class LinearGaussianPolicy(NamedTuple):
    """``u_t ~ N(K_t x_t + k_t, S_t)``: ``K [H, m, n]``, ``k [H, m]``, ``cov [H, m, m]``."""

    K: Tensor
    k: Tensor
    cov: Tensor

    @classmethod
    def initial(cls, horizon: int, state_dim: int, action_dim: int, variance: float, dtype=None):
        """Zero mean, covariance ``variance · I``: a first exploration policy."""
        if horizon < 1 or variance <= 0:
            raise ValueError(
                f"horizon = {horizon}, variance = {variance}: use a positive horizon and variance"
            )
        dtype = dtype or torch.get_default_dtype()
        eye = torch.eye(action_dim, dtype=dtype)
        return cls(
            torch.zeros(horizon, action_dim, state_dim, dtype=dtype),
            torch.zeros(horizon, action_dim, dtype=dtype),
            (variance * eye).expand(horizon, -1, -1).clone(),
        )


class LinearGaussianDynamics(NamedTuple):
    """``x_{t+1} = A_t x_t + B_t u_t + c_t + N(0, F_t)``: ``A [H, n, n]``, ``B [H, n, m]``,
    ``c [H, n]``, ``noise F [H, n, n]``; ``initial_mean [n]``, ``initial_cov [n, n]``."""

    A: Tensor
    B: Tensor
    c: Tensor
    noise: Tensor
    initial_mean: Tensor
    initial_cov: Tensor


@dataclasses.dataclass(frozen=True)
class QuadraticCost:
    """``ℓ_t`` of the module docstring: ``Q [H, n, n]``, ``q [H, n]``, ``R [H, m, m]``,
    ``r [H, m]``, ``N [H, m, n]``, ``Q_final [n, n]``, ``q_final [n]``."""

    Q: Tensor
    q: Tensor
    R: Tensor
    r: Tensor
    N: Tensor
    Q_final: Tensor
    q_final: Tensor

    @classmethod
    def stationary(cls, Q, R, horizon: int, *, q=None, r=None, Q_final=None, q_final=None):
        """The same stage cost at every step (no cross term); the final cost defaults to Q, q."""
        n, m = Q.shape[-1], R.shape[-1]
        q = torch.zeros(n, dtype=Q.dtype) if q is None else q
        r = torch.zeros(m, dtype=Q.dtype) if r is None else r
        return cls(
            Q.expand(horizon, n, n), q.expand(horizon, n), R.expand(horizon, m, m),
            r.expand(horizon, m), torch.zeros(horizon, m, n, dtype=Q.dtype),
            Q if Q_final is None else Q_final, q if q_final is None else q_final,
        )  # fmt: skip


def state_marginals(dynamics: LinearGaussianDynamics, policy: LinearGaussianPolicy):
    """``(means [H+1, n], covs [H+1, n, n])`` of x_t under the policy."""
    mean, cov = dynamics.initial_mean, dynamics.initial_cov
    means, covs = [mean], [cov]
    for t in range(policy.K.shape[0]):
        closed = dynamics.A[t] + dynamics.B[t] @ policy.K[t]
        mean = _mv(closed, mean) + _mv(dynamics.B[t], policy.k[t]) + dynamics.c[t]
        cov = _sym(closed @ cov @ closed.mT + dynamics.B[t] @ policy.cov[t] @ dynamics.B[t].mT)
        cov = cov + dynamics.noise[t]
        means.append(mean)
        covs.append(cov)
    return torch.stack(means), torch.stack(covs)


def trajectory_kl(
    dynamics: LinearGaussianDynamics, new: LinearGaussianPolicy, old: LinearGaussianPolicy
) -> Tensor:
    """KL(p_new(τ) ‖ p_old(τ)) = Σ_t E_{p_new(x_t)}[KL(new(u_t|x_t) ‖ old(u_t|x_t))] (0-d)."""
    means, covs = state_marginals(dynamics, new)
    m = new.k.shape[-1]
    chol = torch.linalg.cholesky(old.cov)
    gap_K, gap_k = new.K - old.K, new.k - old.k
    mean_gap = _mv(gap_K, means[:-1]) + gap_k  # [H, m]
    precision_gap = torch.cholesky_solve(mean_gap.unsqueeze(-1), chol).squeeze(-1)
    quadratic = (mean_gap * precision_gap).sum(-1)
    spread = gap_K @ covs[:-1] @ gap_K.mT  # Cov of the mean gap over x_t
    trace = torch.diagonal(torch.cholesky_solve(new.cov + spread, chol), dim1=-2, dim2=-1).sum(-1)
    log_det_old = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    log_det_new = torch.linalg.slogdet(new.cov)[1]
    return 0.5 * (trace + quadratic - m + log_det_old - log_det_new).sum()


def expected_cost(
    dynamics: LinearGaussianDynamics, policy: LinearGaussianPolicy, cost: QuadraticCost
) -> Tensor:
    """E_p[Σ_t ℓ_t] under the policy in the dynamics (0-d)."""
    means, covs = state_marginals(dynamics, policy)
    x, sx = means[:-1], covs[:-1]
    u = _mv(policy.K, x) + policy.k
    su = policy.K @ sx @ policy.K.mT + policy.cov
    sux = policy.K @ sx

    def quad(matrix, mean, cov):
        return 0.5 * ((mean * _mv(matrix, mean)).sum(-1) + (matrix * cov).sum((-1, -2)))

    stage = quad(cost.Q, x, sx) + (cost.q * x).sum(-1) + quad(cost.R, u, su) + (cost.r * u).sum(-1)
    cross = (u * _mv(cost.N, x)).sum(-1) + (cost.N * sux).sum((-1, -2))
    final = quad(cost.Q_final, means[-1], covs[-1]) + (cost.q_final * means[-1]).sum(-1)
    return (stage + cross).sum() + final


def max_entropy_lqr(
    dynamics: LinearGaussianDynamics,
    cost: QuadraticCost,
    old: LinearGaussianPolicy,
    eta: float,
) -> LinearGaussianPolicy:
    """The policy minimizing E[Σ ℓ_t/η − log p̂(u_t|x_t)] − H(p): gains by LQR, ``S_t = Q̃_uu⁻¹``."""
    if not eta > 0:
        raise ValueError(f"eta = {eta} is invalid: use a positive multiplier")
    old_precision = torch.linalg.inv(old.cov)
    old_precision = _sym(old_precision)
    # the modified cost ℓ/η − log p̂(u|x) (constants dropped)
    R = _sym(cost.R / eta + old_precision)
    N = cost.N / eta - old_precision @ old.K
    r = cost.r / eta - _mv(old_precision, old.k)
    Q = _sym(cost.Q / eta + old.K.mT @ old_precision @ old.K)
    q = cost.q / eta + _mv(old.K.mT @ old_precision, old.k)
    # eliminate the cross term: u = w − R⁻¹ (N x + r)
    R_inv_N = torch.linalg.solve(R, N)
    R_inv_r = torch.linalg.solve(R, r.unsqueeze(-1)).squeeze(-1)
    solution = lqr(
        dynamics.A - dynamics.B @ R_inv_N,
        dynamics.B,
        _sym(Q - N.mT @ R_inv_N),
        R,
        cost.Q_final / eta,
        q=q - _mv(N.mT, R_inv_r),
        q_final=cost.q_final / eta,
        c=dynamics.c - _mv(dynamics.B, R_inv_r),
    )
    K = solution.K - R_inv_N
    k = solution.k - R_inv_r
    q_uu = _sym(R + dynamics.B.mT @ solution.P[1:] @ dynamics.B)
    return LinearGaussianPolicy(K, k, _sym(torch.linalg.inv(q_uu)))


class FLMResult(NamedTuple):
    """The improved ``policy``, its multiplier ``eta`` and its mean per-step ``kl``."""

    policy: LinearGaussianPolicy
    eta: float
    kl: float


def lqr_flm(
    dynamics: LinearGaussianDynamics,
    cost: QuadraticCost,
    old: LinearGaussianPolicy,
    kl_bound: float,
    *,
    eta_range: tuple[float, float] = (1e-6, 1e8),
    iterations: int = 60,
    tolerance: float = 0.05,
) -> FLMResult:
    """Improve ``old`` under mean per-step KL ≤ ``kl_bound`` (module docstring).

    Bisection in log η over ``eta_range``: if the smallest η already meets the bound the
    constraint is inactive and its (near-LQR) policy is returned; otherwise the search keeps a
    bracket whose upper end meets the bound and stops once that end's KL is within
    ``tolerance · kl_bound`` of the bound (or after ``iterations``). The returned KL is always
    ≤ ``kl_bound``, unless even the largest η cannot reach it (then that η's policy).
    """
    if not kl_bound > 0:
        raise ValueError(f"kl_bound = {kl_bound} is invalid: use a positive mean per-step KL")
    low, high = eta_range
    if not 0 < low < high:
        raise ValueError(f"eta_range = {eta_range} is invalid: use 0 < low < high")
    horizon = old.K.shape[0]

    def solve(eta: float) -> tuple[LinearGaussianPolicy, float]:
        policy = max_entropy_lqr(dynamics, cost, old, eta)
        return policy, float(trajectory_kl(dynamics, policy, old)) / horizon

    policy, kl = solve(low)
    if kl <= kl_bound:
        return FLMResult(policy, low, kl)
    best = (*solve(high), high)
    if best[1] > kl_bound:
        return FLMResult(best[0], high, best[1])
    log_low, log_high = math.log(low), math.log(high)
    for _ in range(iterations):
        if best[1] >= kl_bound * (1 - tolerance):
            break
        middle = 0.5 * (log_low + log_high)
        policy, kl = solve(math.exp(middle))
        if kl > kl_bound:
            log_low = middle
        else:
            log_high, best = middle, (policy, kl, math.exp(middle))
    return FLMResult(best[0], best[2], best[1])
