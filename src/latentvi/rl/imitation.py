"""Imitation learning from multimodal demonstrations: one deterministic policy and three latent ones.

Read top-down: config → the latent-plan network → building each policy's model and data → the
controllers that act in the environment → training (the one loop, :func:`latentvi.train.fit`) →
evaluation on fresh episodes.

* ``bc`` — behaviour cloning with a Gaussian policy p(a|s) = N(f(s), σ²), i.e. MSE regression
  (:class:`latentvi.models.cvae.Regressor`). It acts with the mean, the average of the
  demonstrators' actions at s: where they split left and right it heads straight on, into the
  obstacle — the unimodal baseline.
* ``cvae`` — a CVAE policy p(a|s, z) with encoder q(z|s, a) and learned prior p(z|s) (Sohn et al.
  2015). At test time the latent is drawn from the learned prior with its noise **held for the
  episode** (``resample_every = 0``): one ε ~ N(0, I) per episode and z_t = μ(s_t) + σ(s_t)·ε under
  p(z|s_t) = N(μ, σ²). The latent is the mode, and holding ε commits the robot to one side; a
  fresh z every step lets consecutive actions come from different modes, which near the split is
  the averaging that sinks BC. Holding z itself (drawn at s₀) would not do: where the modes have
  not yet split, z is unused and p(z|s₀) is free to sit anywhere, so a z drawn there need not
  mean the same at the split; the same ε is the same quantile of every state's prior.
  ``resample_every = n`` re-draws ε every n steps.
* ``chunk-cvae`` — a CVAE over chunks of the next k actions, p(a_{t:t+k}|s_t, z), in the manner of
  ACT (Zhao, Kumar, Levine & Finn 2023): a chunk is predicted and executed open loop every k steps,
  or, with ``temporal_ensemble``, a chunk is predicted every step and the action is the weighted
  mean of all chunks' predictions for the current step, weight exp(−m·i) for the i-th oldest
  (ACT's temporal ensembling). ACT uses z = 0 under a N(0, I) prior at test time; to represent
  several modes we instead hold one z drawn from the learned prior, so every chunk of an episode,
  and so every ensembled prediction, comes from the same mode.
* ``lmp`` — latent plans in the spirit of Play-LMP (Lynch et al. 2019): a sequence encoder
  q(z|τ) over windows τ = (s_t..s_{t+W−1}, a_t..a_{t+W−1}) of play (an MLP over the flattened
  window; the paper uses a bidirectional RNN), a plan prior p(z|s_t, g) conditioned on the state
  and the goal, and a goal- and plan-conditioned policy p(a|s, z, g). The goal of a window is its
  episode's final state (hindsight relabelling); at test time it is the task's goal, and a fresh
  plan z ~ p(z|s, g) is drawn every W steps.

Every model is trained on the same demonstrations by minimizing its negative (conditional) ELBO
or negative log-likelihood with :func:`latentvi.bounds.elbo_terms` underneath.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from latentvi.bounds import elbo_terms
from latentvi.config import option, require, require_layer_sizes, to_dict
from latentvi.data import Batches
from latentvi.envs.demos import Demonstrations
from latentvi.envs.tasks import POSITION_DIMS, Episode, make_task, mode_shares, rollout, task_spec
from latentvi.models.cvae import ACTIVATIONS, CVAE, CVAEConfig, Regressor, VectorLikelihood
from latentvi.nn import MLP, DiagonalGaussianEncoder
from latentvi.train import TrainConfig, fit

__all__ = [
    "POLICIES",
    "LatentPlanModel",
    "PolicyConfig",
    "evaluate_policy",
    "make_controller",
    "policy_model",
    "summarize",
    "train_policy",
]

POLICIES = ("bc", "cvae", "chunk-cvae", "lmp")
EVAL_SEED = 1_000_000  # fresh episodes: far from the demonstrators' seeds


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Which policy, its networks, and how long to train it."""

    policy: str = option("cvae", "bc, cvae, chunk-cvae or lmp", choices=POLICIES)
    latent_dim: int = option(1, "size of the latent z (plan) of the latent policies")
    hidden: tuple[int, ...] = option((64, 64), "hidden layer sizes of every network")
    activation: str = option(
        "relu", "hidden activation: relu, tanh or elu (relu switches between modes more sharply)"
    )
    beta: float = option(
        2.0, "weight of the KL term (β > 1 keeps z from encoding the action noise)"
    )
    steps: int = option(6000, "optimizer steps")
    batch_size: int = option(256, "transitions per step")
    lr: float = option(3e-3, "Adam learning rate")
    seed: int = option(0, "seed of the weights, the batches and the evaluation's latent draws")
    resample_every: int = option(
        0, "cvae/chunk-cvae: steps between fresh draws of z ~ p(z|s) (0: hold z all episode)"
    )
    chunk: int = option(8, "chunk-cvae: actions per chunk (k)")
    temporal_ensemble: bool = option(False, "chunk-cvae: predict every step and ensemble")
    ensemble_decay: float = option(0.1, "chunk-cvae: m in the ensembling weights exp(−m·i)")
    window: int = option(8, "lmp: window length W, and steps between replanning")

    def __post_init__(self) -> None:
        require(
            self.policy in POLICIES, "policy", self.policy, f"choose one of {', '.join(POLICIES)}"
        )
        require(self.latent_dim >= 1, "latent_dim", self.latent_dim, "use a positive integer")
        require_layer_sizes("hidden", self.hidden, "64,64")
        require(self.beta >= 0, "beta", self.beta, "use a non-negative KL weight")
        require(
            self.activation in ACTIVATIONS,
            "activation",
            self.activation,
            f"choose one of {', '.join(ACTIVATIONS)}",
        )
        for name in ("steps", "batch_size", "chunk", "window"):
            value = getattr(self, name)
            require(value >= 1, name, value, "use a positive integer")
        require(self.lr > 0, "lr", self.lr, "use a positive learning rate such as 3e-3")
        require(self.seed >= 0, "seed", self.seed, "use a non-negative seed")
        require(
            self.resample_every >= 0,
            "resample_every",
            self.resample_every,
            "use 0 (hold z for the episode) or a positive number of steps",
        )
        require(
            self.ensemble_decay >= 0,
            "ensemble_decay",
            self.ensemble_decay,
            "use m >= 0 (0 weighs all chunks equally)",
        )


# --------------------------------------------------------------------------------------------------
# The latent-plan model (Play-LMP)


class LatentPlanModel(nn.Module):
    """q(z|τ) over windows of W steps, prior p(z|s, g), and policy p(a|s, z, g).

    ``loss((states [B, W, S], actions [B, W, A], goals [B, G]))`` is the negative ELBO of the
    window's actions, ``−E_q[Σ_t log π(a_t|s_t, z, g)] + β KL(q(z|τ) ‖ p(z|s_0, g))``, nats per window.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        window: int,
        config: PolicyConfig,
        goal_dim: int = POSITION_DIMS,
    ):
        super().__init__()
        hidden = tuple(int(h) for h in config.hidden)
        z, self.window, self.beta = config.latent_dim, window, config.beta
        self.state_dim, self.action_dim, self.goal_dim = state_dim, action_dim, goal_dim
        activation = ACTIVATIONS[config.activation]
        self.encoder = DiagonalGaussianEncoder(
            window * (state_dim + action_dim) + goal_dim, z, hidden, activation
        )
        self.prior_net = DiagonalGaussianEncoder(state_dim + goal_dim, z, hidden, activation)
        self.policy_net = MLP(state_dim + goal_dim + z, hidden, action_dim, activation)
        self.likelihood_head = VectorLikelihood("gaussian", action_dim, event_dims=2)

    def encode(self, states: Tensor, actions: Tensor, goals: Tensor):
        """q(z|τ, g): ``states [B, W, S]``, ``actions [B, W, A]``, ``goals [B, G]`` -> batch [B]."""
        return self.encoder(torch.cat([states.flatten(-2), actions.flatten(-2), goals], -1))

    def prior(self, states: Tensor, goals: Tensor):
        """p(z|s, g) for ``states [*B, S]``, ``goals [*B, G]``: batch ``[*B]``, event ``[Z]``."""
        return self.prior_net(torch.cat([states, goals], -1))

    def action_mean(self, states: Tensor, z: Tensor, goals: Tensor) -> Tensor:
        """The mean of π(a|s, z, g): ``[*B, S]``, ``[*B, Z]``, ``[*B, G]`` -> ``[*B, A]``."""
        return self.policy_net(torch.cat([states, z, goals], -1))

    def _window_likelihood(self, states: Tensor, goals: Tensor):
        def likelihood(z: Tensor):  # z (S', B, Z) -> π over the window, batch (S', B), event (W, A)
            shape = (*z.shape[:-1], self.window)
            mean = self.action_mean(
                states.expand(*shape, self.state_dim),
                z.unsqueeze(-2).expand(*shape, z.shape[-1]),
                goals.unsqueeze(-2).expand(*shape, self.goal_dim),
            )
            return self.likelihood_head(mean)

        return likelihood

    def loss(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        states, actions, goals = batch
        q = self.encode(states, actions, goals)
        prior = self.prior(states[:, 0], goals)
        expected, divergence = elbo_terms(actions, q, prior, self._window_likelihood(states, goals))
        losses = {"recon": -expected.mean(), "kl": divergence.mean()}
        metrics = {f"loss/{k}": v.detach() for k, v in losses.items()}
        metrics["elbo"] = -(losses["recon"] + losses["kl"]).detach()
        return losses["recon"] + self.beta * losses["kl"], metrics


# --------------------------------------------------------------------------------------------------
# Each policy's model and training tensors


def _cvae_config(config: PolicyConfig) -> CVAEConfig:
    return CVAEConfig(
        latent_dim=config.latent_dim,
        hidden=config.hidden,
        prior="learned",
        beta=config.beta,
        activation=config.activation,
    )


def policy_model(state_dim: int, action_dim: int, config: PolicyConfig) -> nn.Module:
    """The untrained model of ``config.policy`` for states ``[S]`` and actions ``[A]``."""
    s, a = state_dim, action_dim
    if config.policy == "bc":
        return Regressor(s, a, _cvae_config(config))
    if config.policy == "cvae":
        return CVAE(s, a, _cvae_config(config))
    if config.policy == "chunk-cvae":
        return CVAE(s, config.chunk * a, _cvae_config(config))
    return LatentPlanModel(s, a, config.window, config)


def build_policy_model(
    demos: Demonstrations, config: PolicyConfig
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The untrained model of ``config.policy`` and the tensors it is trained on."""
    model = policy_model(demos.state_dim, demos.action_dim, config)
    if config.policy in ("bc", "cvae"):
        return model, demos.transitions()
    if config.policy == "chunk-cvae":
        return model, demos.chunks(config.chunk)
    return model, demos.windows(config.window)


# --------------------------------------------------------------------------------------------------
# Controllers: reset(observation), act(observation) -> action


def _row(observation) -> Tensor:
    return torch.as_tensor(np.asarray(observation), dtype=torch.float32)


class _MeanController:
    """BC: the mean action of p(a|s)."""

    def __init__(self, model: Regressor):
        self.model = model

    def reset(self, observation) -> None:
        pass

    def act(self, observation) -> np.ndarray:
        return self.model.predict(_row(observation)).mean.numpy()


class _LatentController:
    """CVAE: z_t = μ(s_t) + σ(s_t)·ε under the prior p(z|s_t) = N(μ, σ²), with one ε ~ N(0, I)
    held for the episode (re-drawn every ``resample_every`` steps when that is positive), then
    the decoder's mean E[a|s_t, z_t]."""

    def __init__(self, model: CVAE, resample_every: int):
        self.model, self.resample_every = model, resample_every

    def reset(self, observation) -> None:
        self.t, self.noise = 0, None

    def latent(self, s: Tensor) -> Tensor:
        """z for state ``s``: the held noise pushed through this state's prior."""
        if self.noise is None or (self.resample_every and self.t % self.resample_every == 0):
            self.noise = torch.randn(self.model.latent_dim)
        prior = self.model.prior(s)
        return prior.mean + prior.stddev * self.noise

    def act(self, observation) -> np.ndarray:
        s = _row(observation)
        z = self.latent(s)
        self.t += 1
        return self.model.decode(s, z).mean.numpy()


class _ChunkController(_LatentController):
    """Chunk CVAE: a chunk of k actions every k steps, or every step with temporal ensembling."""

    def __init__(self, model: CVAE, config: PolicyConfig, action_dim: int):
        super().__init__(model, config.resample_every)
        self.k, self.action_dim = config.chunk, action_dim
        self.ensemble, self.decay = config.temporal_ensemble, config.ensemble_decay

    def reset(self, observation) -> None:
        super().reset(observation)
        self.chunks: list[tuple[int, np.ndarray]] = []  # (step it was predicted at, [k, A])

    def act(self, observation) -> np.ndarray:
        s, t = _row(observation), self.t
        if self.ensemble or t % self.k == 0:
            chunk = self.model.decode(s, self.latent(s)).mean.reshape(self.k, self.action_dim)
            self.chunks.append((t, chunk.numpy()))
        self.chunks = [(t0, c) for t0, c in self.chunks if t - t0 < self.k]
        self.t += 1
        if not self.ensemble:
            t0, chunk = self.chunks[-1]
            return chunk[t - t0]
        # ACT: w_i = exp(-m i), i = 0 for the oldest prediction of this step.
        weights = np.exp(-self.decay * np.arange(len(self.chunks)))
        predictions = np.stack([c[t - t0] for t0, c in self.chunks])
        return (weights[:, None] * predictions).sum(0) / weights.sum()


class _PlanController:
    """Play-LMP: a plan z ~ p(z|s, g) every W steps, then the mean of π(a|s, z, g)."""

    def __init__(self, model: LatentPlanModel, goal: np.ndarray):
        self.model, self.goal = model, _row(goal)

    def reset(self, observation) -> None:
        self.t, self.z = 0, None

    def act(self, observation) -> np.ndarray:
        s = _row(observation)
        if self.t % self.model.window == 0:
            self.z = self.model.prior(s, self.goal).sample()
        self.t += 1
        return self.model.action_mean(s, self.z, self.goal).numpy()


def make_controller(model: nn.Module, config: PolicyConfig, task: str):
    """The controller that acts with a trained ``model`` of ``config.policy`` in ``task``."""
    if config.policy == "bc":
        return _MeanController(model)
    if config.policy == "cvae":
        return _LatentController(model, config.resample_every)
    if config.policy == "chunk-cvae":
        return _ChunkController(model, config, model.y_dim // config.chunk)
    return _PlanController(model, np.asarray(task_spec(task).goal, np.float32))


# --------------------------------------------------------------------------------------------------
# Training and evaluation


def train_policy(
    demos: Demonstrations, config: PolicyConfig, out: str | None = None
) -> tuple[nn.Module, float]:
    """Train ``config.policy`` on ``demos`` with :func:`latentvi.train.fit`; returns the model (in
    eval mode) and the training time in seconds. With ``out``, the loop writes its run folder
    there (config, metrics, a final safetensors checkpoint)."""
    torch.manual_seed(config.seed)
    model, tensors = build_policy_model(demos, config)
    batches = Batches(*tensors, batch_size=min(config.batch_size, tensors[0].shape[0]))
    train = TrainConfig(
        max_steps=config.steps,
        lr=config.lr,
        seed=config.seed,
        progress=False,
        tensorboard=False,
        log_every=max(1, config.steps // 10),
        out=out,
    )
    start = time.perf_counter()
    fit(
        model,
        batches.make_batches,
        batches,
        train,
        extra_config={"policy": to_dict(config)},
    )
    return model.eval(), time.perf_counter() - start


@torch.no_grad()
def evaluate_policy(
    task: str, controller, episodes: int = 200, seed: int = EVAL_SEED
) -> tuple[dict, list[Episode]]:
    """Run ``episodes`` fresh episodes (env seeds ``seed``, ``seed + 1``, ...); return the
    success, collision and timeout rates, the share of episodes per mode, and the episodes."""
    require(episodes >= 1, "episodes", episodes, "use 1 or more episodes")
    env = make_task(task)
    torch.manual_seed(seed)  # the latent draws of the controllers
    runs = [rollout(env, controller, seed + i) for i in range(episodes)]
    names = task_spec(task).mode_names
    shares = mode_shares(runs, len(names))
    success = float(np.mean([e.success for e in runs]))
    collision = float(np.mean([e.collision for e in runs]))
    metrics = {
        "success": success,
        "collision": collision,
        "timeout": float(np.mean([not (e.success or e.collision) for e in runs])),
        "modes": dict(zip(names, shares, strict=True)),
        "episodes": episodes,
    }
    return metrics, runs


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` of per-seed values (sample std; 0 for one seed)."""
    array = np.asarray(values, np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std if math.isfinite(std) else 0.0}
