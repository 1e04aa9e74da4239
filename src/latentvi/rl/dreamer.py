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

DreamerV3's robustness techniques (Hafner, Pasukonis, Ba & Lillicrap 2023, *Mastering Diverse
Domains through World Models*) are options, each off by default (the ``v3`` preset turns them on;
``v1`` and ``default`` keep DreamerV1's behaviour):

* ``return_norm``: the actor divides its λ-returns by ``max(1, S)``, S the EMA (decay
  ``return_norm_decay``, V3 0.99) of the range between the 5th and 95th percentiles of each
  batch's λ-returns (:class:`latentvi.scaling.PercentileNormalizer`). V3 normalizes advantages
  ``(G^λ_t − v(x_t)) / max(1, S)``; our actor backpropagates through the dynamics, where a
  baseline held fixed only adds a constant, so it divides the returns themselves. The scale stays
  the same for every task, which makes a fixed entropy scale (``actor_entropy``, V3 3·10⁻⁴) work.
* ``critic_twohot``: the critic predicts symlog two-hot buckets (255 on [−20, 20] in symlog
  space, :class:`latentvi.scaling.TwoHotSymlog`) trained by cross-entropy against
  ``twohot(symlog G^λ)``; its value is ``symexp`` of the expected bucket. The reward head's
  counterpart is the world model's ``reward_twohot``. ``zero_init_critic`` zeroes the critic's
  output layer (V3 does so for critic and reward head: they predict 0 at first).
* a slow critic as V3 uses it: an EMA of the critic (``slow_critic_tau`` 0.02, decay 0.98) used as
  a *regularizer* — the critic loss adds ``slow_critic_reg`` × the loss of the critic against the
  slow critic's predictions (cross-entropy on the two-hot critic, squared error otherwise) — while
  the λ-returns bootstrap from the critic itself (``slow_critic_target`` off). DreamerV1/V2 (on,
  the default) bootstrap from the slow critic and have no regularizer.
* the KL balancing, free bits and unimix categorical latents of V3 are options of the world model
  (:class:`latentvi.models.ssm.RSSMConfig`: ``kl_balance`` 5/6 with ``kl_scale`` 0.6 gives V3's
  0.5 dynamics and 0.1 representation weights, ``free_nats`` 1, ``classes`` and ``unimix``).

Every update logs, beside the losses, the diagnosis scalars ``train/critic_value`` (mean critic
value on the imagined states), ``train/lambda_return`` with ``train/lambda_return_p05`` and
``train/lambda_return_p95``, ``train/actor_entropy`` (a sample estimate), ``train/action_saturation``
(the share of imagined action components with ``|a| > 0.99``) and, with ``return_norm``,
``train/return_scale`` (``max(1, S)``).

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
from latentvi.scaling import BINS, PercentileNormalizer, TwoHotSymlog

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
    return_norm: bool = option(
        False,
        "Dreamer: divide the actor's λ-returns by max(1, EMA of their 95th−5th percentile range) "
        "(DreamerV3)",
    )
    return_norm_decay: float = option(
        0.99, "Dreamer: EMA decay of the return percentiles (DreamerV3: 0.99)"
    )
    critic_twohot: bool = option(
        False, "Dreamer: critic as a symlog two-hot categorical over 255 buckets (DreamerV3)"
    )
    zero_init_critic: bool = option(
        False, "Dreamer: zero the critic's output layer at the start (DreamerV3)"
    )
    slow_critic_target: bool = option(
        True, "Dreamer: λ-returns bootstrap from the slow critic (V1/V2); off: from the critic (V3)"
    )
    slow_critic_reg: float = option(
        0.0, "Dreamer: weight of the critic's loss towards the slow critic's values (V3: 1); 0: off"
    )

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
        require(
            0 <= self.return_norm_decay < 1,
            "return_norm_decay",
            self.return_norm_decay,
            "use a decay in [0, 1), e.g. 0.99",
        )
        require(self.slow_critic_reg >= 0, "slow_critic_reg", self.slow_critic_reg, "use >= 0")


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
        self.critic = MLP(
            features, config.actor_hidden, BINS if config.critic_twohot else 1, nn.ELU
        )
        if config.zero_init_critic:
            nn.init.zeros_(self.critic[-1].weight)
            nn.init.zeros_(self.critic[-1].bias)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        if config.return_norm:  # its buffers are saved with the agent
            self.return_normalizer = PercentileNormalizer(config.return_norm_decay)
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

    def value(self, critic: nn.Module, features: Tensor) -> Tensor:
        """``critic``'s values ``[*B]`` at ``features [*B, F]`` (the two-hot critic's mean)."""
        output = critic(features)
        return TwoHotSymlog(output).mean if self.config.critic_twohot else output.squeeze(-1)

    def behaviour_losses(self, posterior: State) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The actor's and the critic's losses on rollouts from ``posterior`` (detached)."""
        c = self.config
        bootstrap = self.slow_critic if c.slow_critic_target else self.critic
        with frozen(self.model, self.critic):
            features, actions, log_probs = self.imagine(posterior)
            rewards = self.model.reward(features[1:]).mean  # r of the step into state t+1
            values = self.value(bootstrap, features)  # [H+1, N]
            discounts = torch.full_like(rewards, c.discount)
            returns = lambda_return(rewards, values, discounts, c.return_lambda)  # [H, N]
            weights = discounted_weights(discounts)
            entropy = -log_probs.mean()
            scaled = returns
            if c.return_norm:
                scaled = returns / self.return_normalizer.update(returns)
            actor_loss = -(weights * scaled).mean() - c.actor_entropy * entropy
        inputs = features[:-1].detach()
        targets = returns.detach()
        if c.critic_twohot:
            distribution = TwoHotSymlog(self.critic(inputs))
            predicted = distribution.mean
            critic_loss = -(weights * distribution.log_prob(targets)).mean()
            if c.slow_critic_reg:
                with torch.no_grad():
                    slow = self.value(self.slow_critic, inputs)
                critic_loss = (
                    critic_loss - c.slow_critic_reg * (weights * distribution.log_prob(slow)).mean()
                )
        else:
            predicted = self.critic(inputs).squeeze(-1)
            critic_loss = 0.5 * (weights * (predicted - targets).pow(2)).mean()
            if c.slow_critic_reg:
                with torch.no_grad():
                    slow = self.value(self.slow_critic, inputs)
                critic_loss = (
                    critic_loss
                    + c.slow_critic_reg * 0.5 * (weights * (predicted - slow).pow(2)).mean()
                )
        metrics = {
            "loss/actor": actor_loss.item(),
            "loss/critic": critic_loss.item(),
            "train/imagined_reward": rewards.mean().item(),
            "train/lambda_return": returns.mean().item(),
            "train/actor_entropy": entropy.item(),
        }
        metrics.update(self.diagnosis(predicted, targets, actions))
        return actor_loss, critic_loss, metrics

    def diagnosis(self, values: Tensor, returns: Tensor, actions: Tensor) -> dict[str, float]:
        """Cheap scalars that show a collapse coming: the critic's mean value, the 5th and 95th
        percentiles of the λ-returns, the share of saturated action components (``|a| > 0.99``)
        and the return normalizer's scale (with ``return_norm``)."""
        flat = returns.detach().reshape(-1)
        percentiles = torch.quantile(flat, flat.new_tensor([0.05, 0.95]))
        metrics = {
            "train/critic_value": values.detach().mean().item(),
            "train/lambda_return_p05": percentiles[0].item(),
            "train/lambda_return_p95": percentiles[1].item(),
            "train/action_saturation": (actions.detach().abs() > 0.99).float().mean().item(),
        }
        if self.config.return_norm:
            metrics["train/return_scale"] = self.return_normalizer.scale.item()
        return metrics

    def learn_behaviour(self, posterior: State) -> dict[str, float]:
        actor_loss, critic_loss, metrics = self.behaviour_losses(posterior)
        clip = self.config.behaviour_clip
        # The actor's loss reaches no other parameters: the model is frozen, the critic unused.
        optimizer_step(self.optimizers["actor"], actor_loss, clip=clip, name="actor loss")
        optimizer_step(self.optimizers["critic"], critic_loss, clip=clip, name="critic loss")
        polyak_update(self.slow_critic, self.critic, self.config.slow_critic_tau)
        return metrics
