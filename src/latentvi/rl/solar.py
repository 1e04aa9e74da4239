"""SOLAR: structured latent representations for model-based RL with LQR (Zhang, Vikram, Smith,
Abbeel, Johnson & Levine, *SOLAR: Deep Structured Representations for Model-Based Reinforcement
Learning*, ICML 2019).

The model: latent dynamics x_{t+1} = A x_t + B u_t + c + N(0, Σ) with a global
matrix-normal-inverse-Wishart over ``W = [A B c]`` and Σ (:mod:`latentvi.models.mniw`); an encoder
gives Gaussian potentials of each frame, combined with the dynamics by exact Kalman smoothing (the
SVAE of Johnson et al. 2016, :mod:`latentvi.inference.svae`); a decoder p(o_t | x_t). Training
(:meth:`SolarAgent.update`, one batch of episode chunks): a gradient step on the structured ELBO
for the encoder and decoder, with the dynamics at the global point estimate, and a natural-gradient
step of the global MNIW on the batch's expected transition statistics (a running average of the
batches' conjugate posteriors, step ``global_rate``). The **cost** is a learned quadratic in the
latent state and the action, ``ℓ(x, u) = ½xᵀQx + qᵀx + ½uᵀRu + rᵀu``, fitted by ridge regression
of −reward on the smoothed latents' expected quadratic features (running averages of the normal
equations); Q and R are projected onto the positive semi-definite cone (R ≥ ``cost_floor``).

The loop (each iteration, in the agent): the current time-varying linear-Gaussian (TVLG) policy
``u_t ~ N(K_t x̂_t + k_t, S_t)`` acts on the filtered latent x̂_t (Kalman filter of the potentials
under the local dynamics); after ``rollouts`` exploring episodes of it, at the next episode start,
their latents are smoothed under the global model, each step's **local dynamics** are the conjugate
posterior of a prior worth ``prior_strength`` pseudo-transitions of the global MNIW and that
step's transitions across the rollouts, and LQR-FLM (:mod:`latentvi.control.lqr_flm`; Levine &
Abbeel 2014) improves the policy under the mean per-step KL bound ``kl_bound`` to the previous
one, starting from the rollouts' latent start distribution (SOLAR assumes a fixed start).

Acting is in ``[-1, 1]^A`` (clipped). Exploration is the policy's own covariance S_t, so
``exploration_noise`` is 0. Steps beyond ``horizon`` reuse the last step's gains. Not in
checkpoints: the exploring rollouts of an unfinished iteration (a resumed run collects them
again). The latent space moves as the encoder trains; the KL to the previous policy is measured
with its gains read in the current latent space.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from latentvi.config import option, require, require_int
from latentvi.control.lqr_flm import (
    LinearGaussianDynamics,
    LinearGaussianPolicy,
    QuadraticCost,
    lqr_flm,
)
from latentvi.inference.svae import Potentials, affine_ssm, structured_posterior
from latentvi.models.mniw import MNIW
from latentvi.models.rssm import RSSMConfig
from latentvi.nn import MLP, ConvDecoder, ConvEncoder
from latentvi.optim_step import optimizer_step
from latentvi.rl.world_model_agent import AgentModule, ModelTrainingConfig

__all__ = ["SolarAgent", "SolarConfig"]

_F64 = torch.float64
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SolarConfig:
    """SOLAR's model and policy improvement (module docstring)."""

    latent_dim: int = option(3, "SOLAR: size n of the latent state")
    encoder_hidden: tuple[int, ...] = option(
        (200,), "SOLAR: hidden layers of the encoder and decoder"
    )
    horizon: int = option(100, "SOLAR: agent steps of the TVLG policy (one episode)")
    rollouts: int = option(5, "SOLAR: exploring episodes per policy improvement")
    kl_bound: float = option(0.5, "SOLAR: LQR-FLM's bound on the mean per-step KL (nats)")
    initial_std: float = option(0.5, "SOLAR: action std of the first policy")
    prior_strength: float = option(
        10.0, "SOLAR: the global prior's weight in each step's local dynamics (pseudo-transitions)"
    )
    global_rate: float = option(0.05, "SOLAR: natural-gradient step of the global MNIW")
    cost_ridge: float = option(1e-4, "SOLAR: ridge of the quadratic cost regression")
    cost_floor: float = option(1e-3, "SOLAR: smallest eigenvalue of the action cost R")
    cost_batches: int = option(8, "SOLAR: latest training batches the cost is refitted to")

    def __post_init__(self) -> None:
        if isinstance(self.encoder_hidden, list):
            object.__setattr__(self, "encoder_hidden", tuple(self.encoder_hidden))
        for name in ("latent_dim", "horizon", "rollouts", "cost_batches"):
            require_int(getattr(self, name), name, 1, "use a positive integer")
        for name in ("kl_bound", "initial_std", "prior_strength", "cost_floor"):
            require(getattr(self, name) > 0, name, getattr(self, name), "use a positive number")
        require(0 < self.global_rate <= 1, "global_rate", self.global_rate, "use a step in (0, 1]")
        require(self.cost_ridge >= 0, "cost_ridge", self.cost_ridge, "use a ridge >= 0")


def _quadratic_features(means: Tensor, covs: Tensor, actions: Tensor) -> Tensor:
    """E[φ(x, u)] for x ~ N(m, P): [x_i x_j (i ≤ j), x, u_i u_j (i ≤ j), u, 1]: ``[N, F]``."""
    n, m = means.shape[-1], actions.shape[-1]
    ix, jx = torch.triu_indices(n, n)
    iu, ju = torch.triu_indices(m, m)
    second = means.unsqueeze(-1) * means.unsqueeze(-2) + covs
    uu = actions.unsqueeze(-1) * actions.unsqueeze(-2)
    one = torch.ones_like(means[..., :1])
    return torch.cat([second[..., ix, jx], means, uu[..., iu, ju], actions, one], -1)


def _quadratic_from(theta: Tensor, size: int) -> Tensor:
    """The symmetric Q with ½xᵀQx = Σ_{i≤j} θ_ij x_i x_j."""
    i, j = torch.triu_indices(size, size)
    upper = theta.new_zeros(size, size)
    upper[i, j] = theta
    return upper + upper.T


def _psd(matrix: Tensor, floor: float) -> Tensor:
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return vectors @ torch.diag(values.clamp_min(floor)) @ vectors.T


class SolarAgent(AgentModule):
    """SOLAR (module docstring) for frames of ``obs_shape`` (``[C, H, W]`` uint8 pixels or a
    float vector ``[D]``) and actions of ``action_dim``; acts and learns in the run protocol of
    :class:`latentvi.train.env_loop.EnvLoop` (``act``, ``reset``, ``update``)."""

    exploration_noise = 0.0

    def __init__(
        self,
        obs_shape: Sequence[int],
        action_dim: int,
        config: SolarConfig,
        training: ModelTrainingConfig,
        *,
        channels: Sequence[int] = (32, 64, 128, 256),
        obs_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.config, self.model_training = config, training
        self.obs_shape, self.action_dim = tuple(obs_shape), int(action_dim)
        self.pixels = len(self.obs_shape) == 3
        require(len(self.obs_shape) in (1, 3), "obs_shape", obs_shape, "use [D] or [C, H, W]")
        n, m = config.latent_dim, self.action_dim
        if self.pixels:
            body = ConvEncoder(self.obs_shape, channels)
            self.encoder = nn.Sequential(body, MLP(body.out_features, config.encoder_hidden, 2 * n))
            self.decoder = nn.Sequential(
                MLP(n, config.encoder_hidden[:-1], config.encoder_hidden[-1])
                if config.encoder_hidden
                else nn.Identity(),
                ConvDecoder(
                    config.encoder_hidden[-1] if config.encoder_hidden else n,
                    self.obs_shape,
                    channels,
                ),
            )
            self.register_buffer("obs_log_std", torch.full((1,), float(np.log(obs_std))))
        else:
            self.encoder = MLP(self.obs_shape[0], config.encoder_hidden, 2 * n)
            self.decoder = MLP(n, config.encoder_hidden, self.obs_shape[0])
            self.obs_log_std = nn.Parameter(torch.full(self.obs_shape, -1.0))
        self.optimizers = {
            "model": torch.optim.Adam(
                self.parameters(), lr=training.model_lr, eps=training.adam_eps
            )
        }
        p = n + m + 1
        eye_n = torch.eye(n, dtype=_F64)
        prior = MNIW.create(
            torch.cat([eye_n, torch.zeros(n, m + 1, dtype=_F64)], 1),
            1e-2 * torch.eye(p, dtype=_F64), 0.1 * (n + 2) * eye_n, n + 2,
        )  # fmt: skip
        for name, value in zip(("prior", "glob"), (prior, prior), strict=True):
            for field, tensor in zip(MNIW._fields, value, strict=True):
                self.register_buffer(f"{name}_{field}", tensor.clone())
        h = config.horizon
        policy = LinearGaussianPolicy.initial(h, n, m, config.initial_std**2, dtype=_F64)
        for field, tensor in zip(("K", "k", "S"), policy, strict=True):
            self.register_buffer(f"policy_{field}", tensor)
        dynamics = self._global_dynamics(h)
        for field, tensor in zip(LinearGaussianDynamics._fields, dynamics, strict=True):
            self.register_buffer(f"local_{field}", tensor)
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))
        self._rollouts: list[tuple[np.ndarray, np.ndarray]] = []
        self._cost_data: collections.deque = collections.deque(maxlen=config.cost_batches)
        self.reset()

    @classmethod
    def from_world_model(
        cls, model: RSSMConfig, training: ModelTrainingConfig, config: SolarConfig
    ) -> SolarAgent:
        """The ``world-model train --agent solar`` factory: frames and channels from ``model``."""
        return cls(
            model.obs_shape, model.action_dim, config, training,
            channels=model.channels, obs_std=model.obs_std,
        )  # fmt: skip

    # --- the global model ----------------------------------------------------------------------
    def _mniw(self, name: str) -> MNIW:
        return MNIW(*(getattr(self, f"{name}_{field}") for field in MNIW._fields))

    def _set_global(self, value: MNIW) -> None:
        for field, tensor in zip(MNIW._fields, value, strict=True):
            getattr(self, f"glob_{field}").copy_(tensor)

    def _global_dynamics(self, horizon: int) -> LinearGaussianDynamics:
        n = self.config.latent_dim
        weights, noise = self._mniw("glob").point_estimate()
        h = horizon
        return LinearGaussianDynamics(
            weights[:, :n].expand(h, -1, -1).clone(), weights[:, n:-1].expand(h, -1, -1).clone(),
            weights[:, -1].expand(h, -1).clone(), noise.expand(h, -1, -1).clone(),
            torch.zeros(n, dtype=_F64), torch.eye(n, dtype=_F64),
        )  # fmt: skip

    def _frames(self, obs: Tensor) -> Tensor:
        obs = obs.to(self.device)
        if obs.dtype == torch.uint8:
            return obs.float() / 255.0 - 0.5
        return obs.float()

    def potentials(self, obs: Tensor) -> Potentials:
        """The encoder's potentials of frames ``[*B, *obs_shape]`` in float64."""
        out = self.encoder(self._frames(obs)).to(_F64)
        mean, raw = out.chunk(2, -1)
        variance = torch.nn.functional.softplus(raw) + 1e-4
        return Potentials.diagonal(mean, variance)

    def posterior(self, obs: Tensor, actions: Tensor):
        """q(x_{1:T}) of ``obs [T, *B, ...]``, ``actions [T, *B, m]`` (u_{t−1} at t) under the
        global point-estimate dynamics, the initial state N(0, I)."""
        n = self.config.latent_dim
        weights, noise = self._mniw("glob").point_estimate()
        eye = torch.eye(n, dtype=_F64, device=weights.device)
        ssm = affine_ssm(weights, noise, torch.zeros_like(eye[0]), eye)
        return structured_posterior(ssm, self.potentials(obs), actions.to(_F64).to(self.device))

    def decoder_log_prob(self, frames: Tensor, latents: Tensor) -> Tensor:
        mean = self.decoder(latents.float())
        dist = torch.distributions.Normal(mean, self.obs_log_std.exp())
        return dist.log_prob(frames).flatten(latents.dim() - 1).sum(-1)

    # --- learning -------------------------------------------------------------------------------
    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One step on chunks ``obs [L, B, ...]``, ``action [L, B, m]``, ``reward [L, B]`` (the
        episode store's alignment): the structured ELBO (encoder, decoder), the global MNIW's
        natural-gradient step and the cost regression's running sums."""
        obs, actions = batch["obs"].to(self.device), batch["action"].to(self.device)
        posterior = self.posterior(obs, actions)
        latents = posterior.rsample()
        log_likelihood = self.decoder_log_prob(self._frames(obs), latents).to(_F64).sum(0)
        steps = obs.shape[0]
        elbo = (log_likelihood - posterior.kl).mean() / steps
        norm = optimizer_step(
            self.optimizers["model"], -elbo.float(), clip=self.model_training.grad_clip,
            parameters=list(self.named_parameters()), name="SOLAR structured ELBO",
        )  # fmt: skip
        with torch.no_grad():
            means, covs = posterior.means.detach(), posterior.covs.detach()
            detached = posterior._replace(means=means, covs=covs, cross=posterior.cross.detach())
            stats = detached.transition_stats(actions.to(_F64))
            rate = self.config.global_rate
            self._set_global(self._mniw("glob").natural_step(self._mniw("prior"), stats, rate))
            self._cost_data.append((obs, actions, batch["reward"].to(self.device)))
        return {
            "train/elbo_per_step": float(elbo.detach()),
            "train/kl_per_step": float(posterior.kl.detach().mean() / steps),
            "train/model_grad_norm": float(norm),
        }

    @torch.no_grad()
    def cost_model(self) -> QuadraticCost:
        """The quadratic cost (module docstring) refitted in the current latent space to the
        latest ``cost_batches`` training batches, the same at every step."""
        n, m, c = self.config.latent_dim, self.action_dim, self.config
        require(len(self._cost_data) > 0, "cost_batches", c.cost_batches, "train before improving")
        rows, targets = [], []
        for obs, actions, reward in self._cost_data:
            posterior = self.posterior(obs, actions)
            # reward[i] is for the action action[i] taken in frame i − 1
            features = _quadratic_features(
                posterior.means[:-1], posterior.covs[:-1], actions[1:].to(_F64)
            )
            rows.append(features.reshape(-1, features.shape[-1]))
            targets.append(-reward[1:].to(_F64).reshape(-1))
        features, cost = torch.cat(rows), torch.cat(targets)
        ridge = c.cost_ridge * torch.eye(features.shape[-1], dtype=_F64, device=features.device)
        theta = torch.linalg.solve(features.T @ features + ridge, features.T @ cost)
        nq = n * (n + 1) // 2
        mq = m * (m + 1) // 2
        Q = _psd(_quadratic_from(theta[:nq], n), 0.0)
        q = theta[nq : nq + n]
        R = _psd(_quadratic_from(theta[nq + n : nq + n + mq], m), c.cost_floor)
        r = theta[nq + n + mq : nq + n + mq + m]
        zero = torch.zeros_like(Q)  # the return counts no cost after the last action
        return QuadraticCost.stationary(Q, R, c.horizon, q=q, r=r, Q_final=zero, q_final=q * 0)

    def improve(self, rollouts: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """One SOLAR iteration on the current policy's ``rollouts`` (each ``(frames [T, ...],
        actions [T, m])``, the frame each action was taken in, T ≥ horizon): local dynamics by the
        conjugate update, then LQR-FLM. The last transition, whose next frame the agent never
        sees, reuses the step before's local dynamics."""
        c, n = self.config, self.config.latent_dim
        h = c.horizon
        require(h >= 2, "horizon", h, "use at least 2 steps")
        for _frames, actions in rollouts:
            require(
                len(actions) >= h, "horizon", h, f"use at most an episode's {len(actions)} steps"
            )
        obs = torch.stack([torch.as_tensor(np.asarray(f[:h])) for f, _ in rollouts], 1)
        taken = torch.stack([torch.as_tensor(np.asarray(a[: h - 1])) for _, a in rollouts], 1)
        aligned = torch.cat([torch.zeros_like(taken[:1]), taken], 0).to(_F64)  # u_{t−1} at t
        aligned = aligned.to(self.device)
        with torch.no_grad():
            posterior = self.posterior(obs, aligned)
            glob = self._mniw("glob")
            weights, noise = glob.point_estimate()
            strength = c.prior_strength
            dof = torch.as_tensor(n + 2 + strength, dtype=_F64, device=weights.device)
            local_prior = MNIW(weights, glob.col_precision * strength / glob.dof, noise * dof, dof)
            As, Bs, cs, Fs = [], [], [], []
            for t in range(h - 1):
                step = posterior._replace(
                    means=posterior.means[t : t + 2], covs=posterior.covs[t : t + 2],
                    cross=posterior.cross[t : t + 1],
                )  # fmt: skip
                local = local_prior.update(step.transition_stats(aligned[t : t + 2]))
                w, f = local.point_estimate()
                As.append(w[:, :n])
                Bs.append(w[:, n:-1])
                cs.append(w[:, -1])
                Fs.append(f)
            for values in (As, Bs, cs, Fs):
                values.append(values[-1])
            start = posterior.means[0]
            spread = (start - start.mean(0)).T @ (start - start.mean(0)) / start.shape[0]
            initial_cov = posterior.covs[0].mean(0) + spread + 1e-6 * torch.eye(n, dtype=_F64)
            dynamics = LinearGaussianDynamics(
                torch.stack(As), torch.stack(Bs), torch.stack(cs), torch.stack(Fs),
                start.mean(0), initial_cov,
            )  # fmt: skip
            old = LinearGaussianPolicy(self.policy_K, self.policy_k, self.policy_S)
            result = lqr_flm(dynamics, self.cost_model(), old, c.kl_bound)
            for field, tensor in zip(("K", "k", "S"), result.policy, strict=True):
                getattr(self, f"policy_{field}").copy_(tensor)
            for field, tensor in zip(LinearGaussianDynamics._fields, dynamics, strict=True):
                getattr(self, f"local_{field}").copy_(tensor)
            self.iterations += 1
        return {"solar/eta": result.eta, "solar/kl_per_step": result.kl}

    # --- acting ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start of an episode; after ``rollouts`` complete exploring episodes, improve first."""
        episode = getattr(self, "_episode", None)
        if episode is not None and len(episode[1]) >= self.config.horizon:
            self._rollouts.append((np.stack(episode[0]), np.stack(episode[1])))
        elif episode is not None:
            logger.warning(
                "SOLAR skipped an exploring episode of %d agent steps: the policy needs horizon = "
                "%d (give --horizon at most the episodes' length)", len(episode[1]),
                self.config.horizon,
            )  # fmt: skip
        if len(self._rollouts) >= self.config.rollouts:
            self.last_improvement = self.improve(self._rollouts)
            self._rollouts = []
        self._episode: tuple[list, list] | None = None
        self._t, self._mean, self._cov, self._previous = 0, None, None, None

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool, noise: float = 0.0) -> np.ndarray:
        """The action ``[A]`` in ``[-1, 1]`` for frame ``obs``: filter it into x̂_t, then
        ``K_t x̂_t + k_t`` (plus a draw of N(0, S_t) when exploring)."""
        frame = np.asarray(obs)
        potential = self.potentials(torch.as_tensor(frame)[None])
        y, R = potential.means[0], potential.covs[0]
        t = min(self._t, self.config.horizon - 1)
        if self._t == 0:
            mean, cov = self.local_initial_mean, self.local_initial_cov
        else:
            s = min(self._t - 1, self.config.horizon - 1)
            A = self.local_A[s]
            mean = A @ self._mean + self.local_B[s] @ self._previous + self.local_c[s]
            cov = A @ self._cov @ A.T + self.local_noise[s]
        gain = torch.linalg.solve(cov + R, cov).T  # P (P + R)⁻¹ (both symmetric)
        self._mean = mean + gain @ (y - mean)
        cov = cov - gain @ cov
        self._cov = 0.5 * (cov + cov.T)
        action = self.policy_K[t] @ self._mean + self.policy_k[t]
        if explore:
            chol = torch.linalg.cholesky(self.policy_S[t])
            action = action + chol @ torch.randn(self.action_dim, dtype=_F64, device=chol.device)
        action = action.clamp(-1.0, 1.0)
        if explore:
            if self._episode is None:
                self._episode = ([], [])
            self._episode[0].append(frame)
            self._episode[1].append(action.float().cpu().numpy())
        self._previous, self._t = action, self._t + 1
        return action.float().cpu().numpy()
