"""Double DQN on features: Q(z, ·) for discrete actions, a target network, ε-greedy exploration.

Mnih et al., *Human-level control through deep reinforcement learning* (2015): a Q-network fitted by
temporal differences to targets from a slowly updated copy (the target network); van Hasselt, Guez
& Silver, *Deep Reinforcement Learning with Double Q-learning* (2016): the target's action is chosen
by the online network and valued by the target network,

    y = r + γ (1 − d) Q_target(z', argmax_a Q(z', a)),

which removes most of Q-learning's overestimation. The loss is the Huber loss of Q(z, a) − y.

The head sees features ``z [B, F]`` from a representation (the state, a conv body, or a VAE's
latent — see :mod:`latentvi.rl.latent_q`); gradients reach the representation only through the
features it is given.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvi.config import check_positive_int
from latentvi.nn import MLP
from latentvi.optim_step import optimizer_step

__all__ = ["DQN", "double_q_target", "epsilon_at"]


def double_q_target(
    next_q_online: Tensor,
    next_q_target: Tensor,
    reward: Tensor,
    terminated: Tensor,
    discount: float,
) -> Tensor:
    """Double-DQN target ``[B]`` from next-state values ``[B, A]`` of both networks."""
    best = next_q_online.argmax(-1, keepdim=True)  # [B, 1]: chosen by the online network
    value = next_q_target.gather(-1, best).squeeze(-1)  # [B]: valued by the target network
    return reward + discount * (1.0 - terminated) * value


def epsilon_at(step: int, start: float, end: float, decay_steps: int) -> float:
    """ε of ε-greedy after ``step`` agent steps: linear from ``start`` to ``end``, then constant."""
    fraction = min(1.0, step / max(1, decay_steps))
    return start + fraction * (end - start)


class DQN(nn.Module):
    """Double DQN head over features ``[B, F]`` with ``num_actions`` discrete actions.

    Args:
        feature_dim: size F of the features.
        num_actions: number of actions A.
        hidden: hidden sizes of the Q-network (ReLU).
        lr: Adam learning rate.
        discount: γ per agent step.
        target_update_every: updates between copies of the online network into the target.
        grad_clip: global gradient-norm clip of each update.
        extra_parameters: further parameters the TD loss trains (an encoder trained end to end).
        layer_norm: LayerNorm in the Q-network's hidden layers (see :class:`latentvi.nn.MLP`).
    """

    def __init__(
        self,
        feature_dim: int,
        num_actions: int,
        hidden: Sequence[int] = (256, 256),
        *,
        lr: float = 3e-4,
        discount: float = 0.99,
        target_update_every: int = 500,
        grad_clip: float = 10.0,
        extra_parameters: Iterable[nn.Parameter] = (),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_actions = check_positive_int("num_actions", num_actions)
        self.q = MLP(feature_dim, hidden, num_actions, nn.ReLU, layer_norm)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.discount, self.grad_clip = discount, grad_clip
        self.target_update_every = check_positive_int("target_update_every", target_update_every)
        self._trained = [*self.q.parameters(), *extra_parameters]
        self.optimizers = {"critic": torch.optim.Adam(self._trained, lr=lr)}
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def act(self, features: Tensor, epsilon: float = 0.0, generator=None) -> Tensor:
        """ε-greedy actions ``[B]`` (int64) for features ``[B, F]``."""
        greedy = self.q(features).argmax(-1)
        if epsilon <= 0:
            return greedy
        explore = torch.rand(greedy.shape, generator=generator) < epsilon
        random = torch.randint(self.num_actions, greedy.shape, generator=generator)
        return torch.where(explore, random, greedy)

    def loss(
        self,
        features: Tensor,
        action: Tensor,
        reward: Tensor,
        next_features: Tensor,
        next_target_features: Tensor,
        terminated: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Huber TD loss (mean over the batch) and metrics."""
        with torch.no_grad():
            target = double_q_target(
                self.q(next_features),
                self.q_target(next_target_features),
                reward,
                terminated,
                self.discount,
            )
        q = self.q(features).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        loss = F.smooth_l1_loss(q, target)
        return loss, {"loss/td": loss.detach(), "train/q": q.mean().detach()}

    def update(self, features, action, reward, next_features, next_target_features, terminated):
        """One gradient step on the TD loss; copies into the target every few updates."""
        loss, metrics = self.loss(
            features, action, reward, next_features, next_target_features, terminated
        )
        optimizer_step(self.optimizers["critic"], loss, clip=self.grad_clip, name="TD loss")
        self.updates += 1
        if int(self.updates) % self.target_update_every == 0:
            self.q_target.load_state_dict(self.q.state_dict())
        return metrics
