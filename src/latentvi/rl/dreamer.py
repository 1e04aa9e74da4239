"""Dreamer: learn behaviour by backpropagating λ-returns through imagined latent rollouts.

Hafner, Lillicrap, Ba & Norouzi, *Dream to Control: Learning Behaviors by Latent Imagination*
(ICLR 2020), with the slow (Polyak-averaged) value target of DreamerV2 (Hafner et al. 2021).
After each world-model step (:class:`latentvi.rl.world_model_agent.WorldModelAgent`), from every
posterior state of the batch (detached, ``L·B`` starts) the actor imagines ``imag_horizon`` steps
with the RSSM's prior (:meth:`latentvi.models.ssm.RSSM.imagine_policy`):

* actor π(a|x): a tanh-squashed Gaussian on the features (:class:`latentvi.rl.sac.TanhGaussianPolicy`
  in ``[-1, 1]^A``), its input features detached; actions are reparameterized, so the gradient of
  the return flows back through the learned dynamics and reward head (whose parameters are frozen
  for that step) into the actor;
* the rewards are the reward head's means at the imagined states, the values v̄ those of the slow
  critic, the discount γ each step; targets are λ-returns (Sutton & Barto; Dreamer eq. 6,
  :func:`latentvi.rl.returns.lambda_return`);
* actor loss ``−E[Σ_t w_t G^λ_t] − η·H[π]`` (w_t the product of earlier discounts; η = 0 in
  DreamerV1); critic loss ``½ E[Σ_t w_t (v(x_t) − sg(G^λ_t))²]`` on detached features;
* the slow critic follows the critic by Polyak averaging with rate ``slow_critic_tau``.

The world model has no continuation (termination) head, so imagined trajectories never end: right
for Pendulum and the DeepMind Control tasks, which only time out; tasks with terminal states would
need one (DreamerV2's discount predictor) to set γ_t = γ·p(continue).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from latentvi.config import option, require
from latentvi.models.ssm import RSSMConfig, State
from latentvi.nn import MLP
from latentvi.optim_step import optimizer_step
from latentvi.rl.returns import discounted_weights, lambda_return
from latentvi.rl.sac import TanhGaussianPolicy, polyak_update
from latentvi.rl.world_model_agent import (
    ModelTrainingConfig,
    WorldModelAgent,
    frozen,
)

__all__ = ["DreamerAgent", "DreamerConfig"]


@dataclasses.dataclass(frozen=True)
class DreamerConfig:
    """Dreamer's imagination, actor and critic (DreamerV1 values as defaults)."""

    imag_horizon: int = option(15, "Dreamer: imagination horizon H (agent steps)")
    discount: float = option(0.99, "Dreamer: discount γ per agent step")
    return_lambda: float = option(0.95, "Dreamer: λ of the λ-returns")
    actor_lr: float = option(8e-5, "Dreamer: Adam learning rate of the actor")
    critic_lr: float = option(8e-5, "Dreamer: Adam learning rate of the critic")
    actor_hidden: tuple[int, ...] = option((400, 400, 400), "Dreamer: actor and critic layers")
    behaviour_clip: float = option(100.0, "Dreamer: gradient-norm clip of actor and critic")
    actor_entropy: float = option(0.0, "Dreamer: entropy bonus η of the actor (V1: 0)")
    slow_critic_tau: float = option(0.01, "Dreamer: Polyak rate of the slow critic (1: none)")
    action_noise: float = option(0.3, "Dreamer: std of the exploration noise on actions")

    def __post_init__(self) -> None:
        require(
            isinstance(self.imag_horizon, int) and self.imag_horizon >= 1,
            "imag_horizon",
            self.imag_horizon,
            "use a positive integer",
        )
        require(0 < self.discount <= 1, "discount", self.discount, "use γ in (0, 1]")
        require(
            0 <= self.return_lambda <= 1, "return_lambda", self.return_lambda, "use λ in [0, 1]"
        )
        for name in ("actor_lr", "critic_lr", "behaviour_clip"):
            value = getattr(self, name)
            require(value > 0, name, value, "use a positive number")
        require(
            len(self.actor_hidden) >= 1 and all(int(h) >= 1 for h in self.actor_hidden),
            "actor_hidden",
            self.actor_hidden,
            "give one or more positive layer sizes, e.g. 400,400,400",
        )
        require(self.actor_entropy >= 0, "actor_entropy", self.actor_entropy, "use η >= 0")
        require(
            0 < self.slow_critic_tau <= 1,
            "slow_critic_tau",
            self.slow_critic_tau,
            "use a rate in (0, 1]",
        )
        require(self.action_noise >= 0, "action_noise", self.action_noise, "use a std >= 0")


class DreamerAgent(WorldModelAgent):
    """A world model, an actor and a critic trained in imagination (see the module docstring)."""

    def __init__(
        self, model_config: RSSMConfig, training: ModelTrainingConfig, config: DreamerConfig
    ) -> None:
        super().__init__(model_config, training)
        self.config = config
        self.exploration_noise = config.action_noise
        features = self.model.rssm.feature_dim
        bound = torch.ones(self.action_dim)
        self.actor = TanhGaussianPolicy(features, -bound, bound, config.actor_hidden)
        self.critic = MLP(features, config.actor_hidden, 1, nn.ELU)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        eps = training.adam_eps
        self.optimizers["actor"] = torch.optim.Adam(
            self.actor.parameters(), lr=config.actor_lr, eps=eps
        )
        self.optimizers["critic"] = torch.optim.Adam(
            self.critic.parameters(), lr=config.critic_lr, eps=eps
        )

    def plan(self, state: State, explore: bool) -> Tensor:
        features = self.model.rssm.features(state)
        return self.actor(features).sample() if explore else self.actor.mode(features)

    def imagine(self, posterior: State) -> tuple[Tensor, Tensor, Tensor]:
        """Imagined rollouts from every state of ``posterior [L, B]``: features ``[H+1, N]``,
        actions ``[H, N, A]`` and the actor's log-densities ``[H, N]`` (N = L·B)."""
        start = posterior.reshape(-1)
        log_probs = []

        def policy(features: Tensor) -> Tensor:
            distribution = self.actor(features.detach())
            action = distribution.rsample()
            log_probs.append(distribution.log_prob(action))
            return action

        states, actions = self.model.rssm.imagine_policy(start, policy, self.config.imag_horizon)
        return self.model.rssm.features(states), actions, torch.stack(log_probs)

    def behaviour_losses(self, posterior: State) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The actor's and the critic's losses on rollouts from ``posterior`` (detached)."""
        c = self.config
        with frozen(self.model):
            features, _, log_probs = self.imagine(posterior)
            rewards = self.model.reward(features[1:]).mean  # r of the step into state t+1
            values = self.slow_critic(features).squeeze(-1)  # [H+1, N]
            discounts = torch.full_like(rewards, c.discount)
            returns = lambda_return(rewards, values, discounts, c.return_lambda)  # [H, N]
            weights = discounted_weights(discounts)
            entropy = -log_probs.mean()
            actor_loss = -(weights * returns).mean() - c.actor_entropy * entropy
        predicted = self.critic(features[:-1].detach()).squeeze(-1)
        critic_loss = 0.5 * (weights * (predicted - returns.detach()).pow(2)).mean()
        metrics = {
            "loss/actor": actor_loss.item(),
            "loss/critic": critic_loss.item(),
            "train/imagined_reward": rewards.mean().item(),
            "train/lambda_return": returns.mean().item(),
            "train/actor_entropy": entropy.item(),
        }
        return actor_loss, critic_loss, metrics

    def learn_behaviour(self, posterior: State) -> dict[str, float]:
        actor_loss, critic_loss, metrics = self.behaviour_losses(posterior)
        clip = self.config.behaviour_clip
        # The actor's loss reaches no other parameters: the model is frozen, the critic unused.
        optimizer_step(self.optimizers["actor"], actor_loss, clip=clip, name="actor loss")
        optimizer_step(self.optimizers["critic"], critic_loss, clip=clip, name="critic loss")
        polyak_update(self.slow_critic, self.critic, self.config.slow_critic_tau)
        return metrics
