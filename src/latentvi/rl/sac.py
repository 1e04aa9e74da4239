"""Soft actor-critic on features, for continuous actions.

Haarnoja, Zhou, Abbeel & Levine, *Soft Actor-Critic* (2018), with the learned temperature of
Haarnoja et al., *Soft Actor-Critic Algorithms and Applications* (2018):

* the policy π(a|z) is a diagonal Gaussian squashed by tanh and scaled to the action bounds — a
  ``TransformedDistribution``, so ``log_prob`` includes the change of variables;
* two critics Q₁, Q₂ and their Polyak-averaged targets; the critic target is
  ``y = r + γ (1 − d) (min_i Q̄_i(z', a') − α log π(a'|z'))`` with ``a' ~ π(·|z')``;
* the actor minimizes ``E[α log π(a|z) − min_i Q_i(z, a)]`` with ``a`` reparameterized;
* the temperature α = exp(log α) minimizes ``E[−log α · (log π(a|z) + H̄)]`` for the target
  entropy ``H̄ = −dim(A)``.

Features ``z [B, F]`` come from a representation (:mod:`latentvi.rl.latent_q`); the actor is given
detached features, so only the critic's loss can train an encoder (as in Yarats et al. 2021, SAC-AE).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    TanhTransform,
    TransformedDistribution,
)

from latentvi.distributions import diagonal_gaussian, positive_scale
from latentvi.nn import MLP
from latentvi.optim_step import optimizer_step

__all__ = ["SAC", "TanhGaussianPolicy", "TwinQ", "polyak_update"]


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``θ̄ ← (1 − τ) θ̄ + τ θ`` for every parameter (buffers are copied)."""
    for target_parameter, parameter in zip(target.parameters(), source.parameters(), strict=True):
        target_parameter.lerp_(parameter, tau)
    for target_buffer, buffer in zip(target.buffers(), source.buffers(), strict=True):
        target_buffer.copy_(buffer)


class TanhGaussianPolicy(nn.Module):
    """π(a|z): ``N(μ(z), σ(z))`` squashed by tanh into the box ``[low, high]``.

    ``forward(z [B, F])`` returns a Distribution with batch ``[B]`` and event ``[A]``.
    """

    def __init__(
        self, feature_dim: int, low: Tensor, high: Tensor, hidden: Sequence[int] = (256, 256)
    ) -> None:
        super().__init__()
        low, high = (
            torch.as_tensor(low, dtype=torch.float32),
            torch.as_tensor(high, dtype=torch.float32),
        )
        valid = low.is_meta or bool((high > low).all())  # meta: counted, not built (memory.py)
        if low.dim() != 1 or low.shape != high.shape or not valid:
            raise ValueError(
                f"action bounds low = {low.tolist()}, high = {high.tolist()} are invalid: SAC "
                "needs a 1-D Box action space with finite high > low"
            )
        self.body = MLP(feature_dim, hidden, 2 * low.shape[0], nn.ReLU)
        self.register_buffer("centre", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, features: Tensor) -> Distribution:
        loc, raw_scale = self.body(features).chunk(2, -1)
        scale = positive_scale(raw_scale.clamp(-20.0, 5.0), 1e-4)
        base = diagonal_gaussian(loc, scale, 1, validate_args=False)
        # Both transforms cache, so log_prob of this distribution's own rsample() inverts nothing:
        # it reuses the pre-tanh draw u. Inverting instead computes atanh of an action that
        # float32 rounded to the bound (|tanh u| = 1 for |u| ≳ 9): ∞, and a NaN log-density that
        # poisons the actor — a seed-0 pixel-Pendulum run died so at 24k steps.
        squash = [
            TanhTransform(cache_size=1),
            AffineTransform(self.centre, self.half_range, cache_size=1),
        ]
        return TransformedDistribution(base, squash, validate_args=False)

    @torch.no_grad()
    def mode(self, features: Tensor) -> Tensor:
        """The deterministic action ``tanh(μ(z))`` scaled to the bounds: ``[B, A]``."""
        loc, _ = self.body(features).chunk(2, -1)
        return self.centre + self.half_range * torch.tanh(loc)


class TwinQ(nn.Module):
    """Two critics ``Q_i(z, a)``: ``(z [B, F], a [B, A]) -> ([B], [B])`` (``layer_norm``: a
    LayerNorm after each hidden layer, see :class:`latentvi.nn.MLP`)."""

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.q1 = MLP(feature_dim + action_dim, hidden, 1, nn.ReLU, layer_norm)
        self.q2 = MLP(feature_dim + action_dim, hidden, 1, nn.ReLU, layer_norm)

    def forward(self, features: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        inputs = torch.cat([features, action], -1)
        return self.q1(inputs).squeeze(-1), self.q2(inputs).squeeze(-1)


class SAC(nn.Module):
    """Soft actor-critic head (see the module docstring).

    Args:
        feature_dim: size F of the features.
        low, high: the action bounds ``[A]``.
        hidden: hidden sizes of the actor and the critics.
        lr: Adam learning rate of the critics and the actor; ``alpha_lr`` of the temperature.
        discount: γ per agent step; ``tau``: Polyak rate of the target critics.
        init_temperature: initial α.
        extra_parameters: further parameters the critic loss trains (an encoder trained end to end).
        critic_layer_norm: LayerNorm in the critics' hidden layers (Ball et al. 2023); it bounds
            the critics' hidden activations whatever the scale of the features.
        critic_feature_dim: size of the critics' features when they differ from the actor's
            (SLAC: the critics see the latent state, the actor a history of frames); default
            ``feature_dim``. Then ``critic_loss``'s ``next_features`` are the actor's and
            ``next_target_features`` the critics', and ``actor_loss`` takes both.
        eps: Adam's ε of the three optimizers.
    """

    def __init__(
        self,
        feature_dim: int,
        low: Tensor,
        high: Tensor,
        hidden: Sequence[int] = (256, 256),
        *,
        lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        discount: float = 0.99,
        tau: float = 0.01,
        init_temperature: float = 0.1,
        extra_parameters: Iterable[nn.Parameter] = (),
        critic_layer_norm: bool = False,
        critic_feature_dim: int | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.actor = TanhGaussianPolicy(feature_dim, low, high, hidden)
        action_dim = self.actor.centre.shape[0]
        critic_features = feature_dim if critic_feature_dim is None else critic_feature_dim
        self.critic = TwinQ(critic_features, action_dim, hidden, critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.target_entropy = -float(action_dim)
        self.discount, self.tau = discount, tau
        self._critic_trained = [*self.critic.parameters(), *extra_parameters]
        self.optimizers = {
            "critic": torch.optim.Adam(self._critic_trained, lr=lr, eps=eps),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=lr, eps=eps),
            "alpha": torch.optim.Adam([self.log_alpha], lr=alpha_lr, betas=(0.5, 0.999), eps=eps),
        }

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, features: Tensor, explore: bool = True) -> Tensor:
        """Actions ``[B, A]``: a sample of π(·|z) when exploring, else its mode."""
        return self.actor(features).sample() if explore else self.actor.mode(features)

    def critic_loss(
        self, features, action, reward, next_features, next_target_features, terminated
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum of both critics' mean squared TD errors, and metrics."""
        with torch.no_grad():
            policy = self.actor(next_features)
            next_action = policy.rsample()
            next_log_prob = policy.log_prob(next_action)
            q1_next, q2_next = self.critic_target(next_target_features, next_action)
            soft_value = torch.minimum(q1_next, q2_next) - self.alpha * next_log_prob
            target = reward + self.discount * (1.0 - terminated) * soft_value
        q1, q2 = self.critic(features, action)
        loss = (q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()
        return loss, {"loss/critic": loss.detach(), "train/q": q1.mean().detach()}

    def actor_loss(
        self, features: Tensor, critic_features: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The actor's loss, the temperature's loss, and metrics. The actor sees ``features``, the
        critics ``critic_features`` (default: the same); both are detached."""
        features = features.detach()
        critic_features = features if critic_features is None else critic_features.detach()
        policy = self.actor(features)
        action = policy.rsample()
        log_prob = policy.log_prob(action)
        q1, q2 = self.critic(critic_features, action)
        actor = (self.alpha.detach() * log_prob - torch.minimum(q1, q2)).mean()
        temperature = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        metrics = {
            "loss/actor": actor.detach(),
            "loss/alpha": temperature.detach(),
            "train/alpha": self.alpha.detach(),
            "train/entropy": -log_prob.mean().detach(),
        }
        return actor, temperature, metrics

    def update(self, features, action, reward, next_features, next_target_features, terminated):
        """One step of the critics, the actor and the temperature; then the target critics."""
        critic, metrics = self.critic_loss(
            features, action, reward, next_features, next_target_features, terminated
        )
        optimizer_step(self.optimizers["critic"], critic, name="critic loss")
        actor, temperature, actor_metrics = self.actor_loss(features)
        # The actor's loss reaches the critics' weights too; only the actor's optimizer steps.
        optimizer_step(self.optimizers["actor"], actor, name="actor loss")
        optimizer_step(self.optimizers["alpha"], temperature, name="temperature loss")
        polyak_update(self.critic_target, self.critic, self.tau)
        return {**metrics, **actor_metrics}
