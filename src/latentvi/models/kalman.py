"""The linear-Gaussian state-space model, where filtering and smoothing are exact: the ground truth
for sequence ELBOs.

    x_1 ~ N(μ_0, Σ_0),    x_{t+1} = A x_t + B a_t + w_t,  w_t ~ N(0, Q),    o_t = C x_t + v_t,  v_t ~ N(0, R)

* :meth:`LinearGaussianSSM.filter` — the Kalman filter (Kalman 1960): filtered moments and the exact
  log p(o_{1:T} | a) as the sum of the one-step predictive log densities;
* :meth:`LinearGaussianSSM.smooth` — the Rauch–Tung–Striebel smoother (Rauch, Tung & Striebel 1965):
  the exact marginals p(x_t | o_{1:T});
* :meth:`LinearGaussianSSM.posterior_chain` — the exact posterior p(x_{1:T} | o_{1:T}) written forward
  as a Markov chain q(x_1) Π q(x_{t+1} | x_t) (a :class:`GaussMarkovChain`);
* :meth:`LinearGaussianSSM.filtering_chain` — the filtering-form posterior q(x_t | x_{t−1}, a, o_t)
  ∝ p(x_t | x_{t−1}, a) p(o_t | x_t), the family an RSSM's posterior lives in (it ignores future
  observations, so its ELBO is strictly below log p unless they carry no information).

Alignment is the RSSM's (:mod:`latentvi.models.ssm`): ``actions[t] = a_{t−1}`` drives the transition
into x_t, so ``actions [T, *B, U]`` and ``actions[0]`` is unused (x_1 comes from the initial
distribution). Shapes: ``obs [T, *B, D]``; moments ``[T, *B, n]`` and ``[T, *B, n, n]``. Use float64
for the exact-answer checks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

__all__ = ["FilterResult", "GaussMarkovChain", "LinearGaussianSSM"]


def _matrix(name: str, value, rows: int | None, cols: int | None, dtype=None) -> Tensor:
    tensor = torch.as_tensor(value, dtype=dtype)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dim() != 2 or (rows is not None and tensor.shape[0] != rows):
        raise ValueError(
            f"{name} must be a [{rows}, {cols}] matrix, got shape {tuple(tensor.shape)}"
        )
    if cols is not None and tensor.shape[1] != cols:
        raise ValueError(
            f"{name} must be a [{rows}, {cols}] matrix, got shape {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def _covariance(name: str, value, size: int, dtype) -> Tensor:
    tensor = _matrix(name, value, size, size, dtype)
    if not torch.allclose(tensor, tensor.T) or torch.linalg.cholesky_ex(tensor).info != 0:
        raise ValueError(f"{name} must be a symmetric positive-definite [{size}, {size}] matrix")
    return tensor


def _symmetric(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.mT)


def _mv(matrix: Tensor, vector: Tensor) -> Tensor:
    """``[*, m, n] @ [*, n] -> [*, m]`` with broadcasting."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


class FilterResult(NamedTuple):
    """What the Kalman filter returns (``[T, *B, ...]`` moments, ``log_marginal [*B]``)."""

    log_marginal: Tensor  # [*B]  log p(o_{1:T} | a)
    step_log_likelihoods: Tensor  # [T, *B]  log p(o_t | o_{1:t−1}, a)
    predicted_means: Tensor  # [T, *B, n]  E[x_t | o_{1:t−1}]
    predicted_covs: Tensor  # [T, *B, n, n]
    filtered_means: Tensor  # [T, *B, n]  E[x_t | o_{1:t}]
    filtered_covs: Tensor  # [T, *B, n, n]


class GaussMarkovChain(NamedTuple):
    """A Gaussian Markov chain over ``x_{1:T}``: x_1 ~ N(m, P), x_{t+1} | x_t ~ N(K_t x_t + b_t, S_t).

    Fields: ``initial_mean [*B, n]``, ``initial_cov [*B, n, n]``, ``gains [T−1, *B, n, n]``,
    ``offsets [T−1, *B, n]``, ``covs [T−1, *B, n, n]``.
    """

    initial_mean: Tensor
    initial_cov: Tensor
    gains: Tensor
    offsets: Tensor
    covs: Tensor

    @property
    def steps(self) -> int:
        return self.gains.shape[0] + 1

    def initial(self) -> MultivariateNormal:
        """q(x_1): batch ``[*B]``, event ``[n]``."""
        return MultivariateNormal(self.initial_mean, covariance_matrix=self.initial_cov)

    def conditional(self, t: int, previous: Tensor) -> MultivariateNormal:
        """q(x_{t+1} | x_t = previous) for t = 1 … T−1 (0-based index ``t − 1`` into the fields):
        ``previous [*S, *B, n]`` -> batch ``[*S, *B]``."""
        i = t - 1
        mean = _mv(self.gains[i], previous) + self.offsets[i]
        return MultivariateNormal(mean, covariance_matrix=self.covs[i].expand(*mean.shape, -1))

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Ancestral samples ``[T, *sample_shape, *B, n]`` (pathwise in the chain's parameters)."""
        x = self.initial().rsample(sample_shape)
        samples = [x]
        for t in range(1, self.steps):
            x = self.conditional(t, x).rsample()
            samples.append(x)
        return torch.stack(samples)

    def joint(self) -> MultivariateNormal:
        """The chain as one Gaussian over ``x_{1:T}`` flattened to ``[T·n]``: batch ``[*B]``."""
        n = self.initial_mean.shape[-1]
        means, blocks = [self.initial_mean], [[self.initial_cov]]
        for i in range(self.steps - 1):
            gain = self.gains[i]
            means.append(_mv(gain, means[-1]) + self.offsets[i])
            # Cov(x_{t+1}, x_s) = K_t Cov(x_t, x_s) for s ≤ t; Var(x_{t+1}) = K_t Var(x_t) K_tᵀ + S_t
            row = [gain @ block for block in blocks[-1]]
            row.append(_symmetric(gain @ blocks[-1][-1] @ gain.mT + self.covs[i]))
            blocks.append(row)
        steps = self.steps
        batch = self.initial_mean.shape[:-1]
        cov = self.initial_mean.new_zeros(*batch, steps * n, steps * n)
        for t, row in enumerate(blocks):
            for s, block in enumerate(row):
                cov[..., t * n : (t + 1) * n, s * n : (s + 1) * n] = block
                if s != t:
                    cov[..., s * n : (s + 1) * n, t * n : (t + 1) * n] = block.mT
        return MultivariateNormal(torch.cat(means, -1), covariance_matrix=cov)


class LinearGaussianSSM(nn.Module):
    """A linear-Gaussian state-space model with exact filtering and smoothing (Kalman 1960;
    Rauch, Tung & Striebel 1965).

    Args:
        transition: ``A [n, n]``.
        emission: ``C [D, n]``.
        process_cov: ``Q [n, n]``, symmetric positive definite.
        obs_cov: ``R [D, D]``, symmetric positive definite.
        initial_mean: ``μ_0 [n]``.
        initial_cov: ``Σ_0 [n, n]``, symmetric positive definite.
        control: ``B [n, U]``; None for no actions.

    The matrices are parameters (the log-likelihood is differentiable); the dtype follows
    ``transition``.
    """

    def __init__(
        self, transition, emission, process_cov, obs_cov, initial_mean, initial_cov, control=None
    ) -> None:
        super().__init__()
        a = _matrix("transition", transition, None, None)
        n = a.shape[0]
        if a.shape != (n, n):
            raise ValueError(f"transition must be a square [n, n] matrix, got {tuple(a.shape)}")
        dtype = a.dtype
        c = _matrix("emission", emission, None, n, dtype)
        d = c.shape[0]
        mean = torch.as_tensor(initial_mean, dtype=dtype)
        if mean.shape != (n,):
            raise ValueError(f"initial_mean must have shape [n] = [{n}], got {tuple(mean.shape)}")
        self.transition = nn.Parameter(a.clone())
        self.emission = nn.Parameter(c.clone())
        self.process_cov = nn.Parameter(_covariance("process_cov", process_cov, n, dtype).clone())
        self.obs_cov = nn.Parameter(_covariance("obs_cov", obs_cov, d, dtype).clone())
        self.initial_mean = nn.Parameter(mean.clone())
        self.initial_cov = nn.Parameter(_covariance("initial_cov", initial_cov, n, dtype).clone())
        if control is None:
            self.control = None
            self.action_dim = 0
        else:
            b = _matrix("control", control, n, None, dtype)
            self.control = nn.Parameter(b.clone())
            self.action_dim = b.shape[1]
        self.state_dim, self.obs_dim = n, d

    # --- the model as distributions --------------------------------------------------------------
    def initial(self) -> MultivariateNormal:
        """p(x_1) = N(μ_0, Σ_0): event ``[n]``."""
        return MultivariateNormal(self.initial_mean, covariance_matrix=self.initial_cov)

    def _drift(self, action: Tensor | None) -> Tensor | float:
        if self.control is None or action is None:
            return 0.0
        return _mv(self.control, action)

    def transition_dist(self, x: Tensor, action: Tensor | None = None) -> MultivariateNormal:
        """p(x_{t+1} | x_t, a_t) = N(A x + B a, Q): ``x [*B, n]``, ``action [*B, U]`` -> batch ``[*B]``."""
        mean = _mv(self.transition, x) + self._drift(action)
        return MultivariateNormal(mean, covariance_matrix=self.process_cov.expand(*mean.shape, -1))

    def emission_dist(self, x: Tensor) -> MultivariateNormal:
        """p(o_t | x_t) = N(C x, R): ``x [*B, n]`` -> batch ``[*B]``, event ``[D]``."""
        mean = _mv(self.emission, x)
        return MultivariateNormal(mean, covariance_matrix=self.obs_cov.expand(*mean.shape, -1))

    def _check(self, obs: Tensor, actions: Tensor | None) -> None:
        if obs.dim() < 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"obs has shape {tuple(obs.shape)}: pass [T, *B, D] with D = {self.obs_dim}"
            )
        if actions is not None and (
            self.control is None
            or actions.shape[:-1] != obs.shape[:-1]
            or actions.shape[-1] != self.action_dim
        ):
            raise ValueError(
                f"actions has shape {tuple(actions.shape)}: pass [T, *B, U] matching obs "
                f"{tuple(obs.shape)} with U = {self.action_dim} (and a model built with control=)"
            )

    # --- exact inference ------------------------------------------------------------------------
    def filter(
        self, obs: Tensor, actions: Tensor | None = None, obs_covs: Tensor | None = None
    ) -> FilterResult:
        """The Kalman filter over ``obs [T, *B, D]`` (``actions [T, *B, U]``, a_{t−1} at t);
        ``obs_covs [T, *B, D, D]`` replaces R per step (an SVAE's Gaussian potentials)."""
        self._check(obs, actions)
        a, c, q, r = self.transition, self.emission, self.process_cov, self.obs_cov
        batch = obs.shape[1:-1]
        n = self.state_dim
        mean = self.initial_mean.expand(*batch, n)
        cov = self.initial_cov.expand(*batch, n, n)
        results: dict[str, list[Tensor]] = {k: [] for k in ("ll", "pm", "pc", "fm", "fc")}
        for t in range(obs.shape[0]):
            if t > 0:
                mean = _mv(a, mean) + self._drift(None if actions is None else actions[t])
                cov = _symmetric(a @ cov @ a.mT + q)
            results["pm"].append(mean)
            results["pc"].append(cov)
            if obs_covs is not None:
                r = obs_covs[t]
            innovation_cov = _symmetric(c @ cov @ c.mT + r)  # S = C P Cᵀ + R
            chol = torch.linalg.cholesky(innovation_cov)
            residual = obs[t] - _mv(c, mean)
            results["ll"].append(_gaussian_log_density(residual, chol))
            # gain K = P Cᵀ S⁻¹, computed as a solve against S
            gain = torch.cholesky_solve(c @ cov, chol).mT
            mean = mean + _mv(gain, residual)
            cov = _symmetric(cov - gain @ c @ cov)
            results["fm"].append(mean)
            results["fc"].append(cov)
        step = torch.stack(results["ll"])
        return FilterResult(
            step.sum(0),
            step,
            torch.stack(results["pm"]),
            torch.stack(results["pc"]),
            torch.stack(results["fm"]),
            torch.stack(results["fc"]),
        )

    def log_marginal(
        self, obs: Tensor, actions: Tensor | None = None, obs_covs: Tensor | None = None
    ) -> Tensor:
        """Exact log p(o_{1:T} | a): ``[T, *B, D] -> [*B]`` nats (``obs_covs`` as in :meth:`filter`)."""
        return self.filter(obs, actions, obs_covs).log_marginal

    def smooth(
        self,
        obs: Tensor,
        actions: Tensor | None = None,
        obs_covs: Tensor | None = None,
        filtered: FilterResult | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """RTS smoother: ``(means [T, *B, n], covs [T, *B, n, n], gains J [T−1, *B, n, n])`` of
        p(x_t | o_{1:T}); J_t = P_{t|t} Aᵀ P_{t+1|t}⁻¹ also gives Cov(x_t, x_{t+1} | o) = J_t P^s_{t+1}.
        ``obs_covs`` as in :meth:`filter`; ``filtered``: that filter's result, already computed."""
        result = self.filter(obs, actions, obs_covs) if filtered is None else filtered
        steps = obs.shape[0]
        mean, cov = result.filtered_means[-1], result.filtered_covs[-1]
        means, covs, gains = [mean], [cov], []
        for t in range(steps - 2, -1, -1):
            filtered_cov = result.filtered_covs[t]
            predicted_cov = result.predicted_covs[t + 1]
            # J = P_f Aᵀ P_p⁻¹  (P_p symmetric: solve P_p Jᵀ = A P_f)
            gain = torch.linalg.solve(predicted_cov, self.transition @ filtered_cov).mT
            mean = result.filtered_means[t] + _mv(gain, mean - result.predicted_means[t + 1])
            cov = _symmetric(filtered_cov + gain @ (cov - predicted_cov) @ gain.mT)
            means.append(mean)
            covs.append(cov)
            gains.append(gain)
        means.reverse()
        covs.reverse()
        gains.reverse()
        if gains:
            stacked_gains = torch.stack(gains)
        else:
            stacked_gains = obs.new_zeros(0, *obs.shape[1:-1], self.state_dim, self.state_dim)
        return torch.stack(means), torch.stack(covs), stacked_gains

    def posterior_chain(self, obs: Tensor, actions: Tensor | None = None) -> GaussMarkovChain:
        """The exact p(x_{1:T} | o_{1:T}) as a forward chain q(x_1) Π q(x_{t+1} | x_t, o_{1:T}).

        From the smoother: with Σ_t = P^s_t and Σ_{t+1,t} = P^s_{t+1} J_tᵀ, the conditional is
        N(m_{t+1} + K_t (x_t − m_t), Σ_{t+1} − K_t Σ_{t+1,t}ᵀ) with K_t = Σ_{t+1,t} Σ_t⁻¹.
        """
        means, covs, smoother_gains = self.smooth(obs, actions)
        gains, offsets, conditional_covs = [], [], []
        for t in range(obs.shape[0] - 1):
            cross = covs[t + 1] @ smoother_gains[t].mT  # Cov(x_{t+1}, x_t | o)
            gain = torch.linalg.solve(covs[t], cross.mT).mT  # cross Σ_t⁻¹ (Σ_t symmetric)
            gains.append(gain)
            offsets.append(means[t + 1] - _mv(gain, means[t]))
            conditional_covs.append(_symmetric(covs[t + 1] - gain @ cross.mT))
        return self._chain(means[0], covs[0], gains, offsets, conditional_covs, obs)

    def filtering_chain(self, obs: Tensor, actions: Tensor | None = None) -> GaussMarkovChain:
        """The filtering-form posterior q(x_t | x_{t−1}, a_{t−1}, o_t) ∝ p(x_t | x_{t−1}, a) p(o_t | x_t).

        From a point x_{t−1} the prior is N(A x + B a, Q); one Kalman update with o_t (gain
        G = Q Cᵀ (C Q Cᵀ + R)⁻¹) gives N((I − G C)(A x + B a) + G o_t, (I − G C) Q): linear in x.
        q(x_1) is p(x_1 | o_1).
        """
        self._check(obs, actions)
        c = self.emission
        eye = torch.eye(self.state_dim, dtype=obs.dtype, device=obs.device)

        def update(prior_cov: Tensor) -> tuple[Tensor, Tensor]:
            innovation = _symmetric(c @ prior_cov @ c.mT + self.obs_cov)
            gain = torch.linalg.solve(innovation, c @ prior_cov).mT
            return gain, _symmetric((eye - gain @ c) @ prior_cov)

        first_gain, first_cov = update(self.initial_cov)
        initial_mean = self.initial_mean + _mv(first_gain, obs[0] - _mv(c, self.initial_mean))
        gain, cov = update(self.process_cov)
        keep = eye - gain @ c
        gains, offsets, covs = [], [], []
        for t in range(1, obs.shape[0]):
            drift = self._drift(None if actions is None else actions[t])
            gains.append((keep @ self.transition).expand(*obs.shape[1:-1], -1, -1))
            offsets.append(_mv(keep, torch.zeros_like(initial_mean) + drift) + _mv(gain, obs[t]))
            covs.append(cov.expand(*obs.shape[1:-1], -1, -1))
        batch_cov = first_cov.expand(*obs.shape[1:-1], -1, -1)
        return self._chain(initial_mean, batch_cov, gains, offsets, covs, obs)

    def _chain(self, mean, cov, gains, offsets, covs, obs: Tensor) -> GaussMarkovChain:
        n = self.state_dim
        batch = obs.shape[1:-1]
        if not gains:
            empty = obs.new_zeros(0, *batch, n, n)
            return GaussMarkovChain(mean, cov, empty, obs.new_zeros(0, *batch, n), empty)
        return GaussMarkovChain(
            mean, cov, torch.stack(gains), torch.stack(offsets), torch.stack(covs)
        )

    @torch.no_grad()
    def sample(
        self,
        steps: int,
        batch: tuple[int, ...] = (),
        actions: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Simulate ``(states [T, *batch, n], obs [T, *batch, D])`` (``actions`` as in :meth:`filter`)."""
        n, d = self.state_dim, self.obs_dim
        kwargs = {"dtype": self.transition.dtype, "generator": generator}
        chol_0 = torch.linalg.cholesky(self.initial_cov)
        chol_q = torch.linalg.cholesky(self.process_cov)
        chol_r = torch.linalg.cholesky(self.obs_cov)
        x = self.initial_mean + _mv(chol_0, torch.randn(*batch, n, **kwargs))
        states, observations = [], []
        for t in range(steps):
            if t > 0:
                drift = self._drift(None if actions is None else actions[t])
                x = _mv(self.transition, x) + drift + _mv(chol_q, torch.randn(*batch, n, **kwargs))
            states.append(x)
            observations.append(
                _mv(self.emission, x) + _mv(chol_r, torch.randn(*batch, d, **kwargs))
            )
        return torch.stack(states), torch.stack(observations)


def _gaussian_log_density(residual: Tensor, chol: Tensor) -> Tensor:
    """log N(residual; 0, L Lᵀ): ``[*B, D]``, ``[*B, D, D]`` -> ``[*B]``."""
    solved = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
    half_log_det = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    d = residual.shape[-1]
    return -0.5 * solved.square().sum(-1) - half_log_det - 0.5 * d * math.log(2 * math.pi)
