"""What PlaNet, Dreamer and SLAC share: a world model learned from episode chunks, and a filter that
tracks the latent state while acting.

:class:`WorldModelAgent` holds a :class:`latentvi.models.ssm.WorldModel` and its optimizer. Its
:meth:`~WorldModelAgent.update` takes a batch of chunks from
:meth:`latentvi.data.episodes.EpisodeStore.sample` (``obs [L, B, C, H, W]`` uint8 with the action and
reward that led to each frame), minimizes the negative sequence ELBO ``WorldModel.loss`` for one
step (:meth:`~WorldModelAgent.model_step`), and hands the posterior states to
:meth:`~WorldModelAgent.learn_behaviour` (Dreamer's actor-critic; nothing for PlaNet; SLAC
overrides ``update`` to learn from the batch's transitions and ``act`` to act on a frame history
without the filter). Acting, it filters: after a reset the state is the RSSM's
zero state and the previous action zero — exactly what ``observe`` assumes at the start of an
episode — and each frame moves it one prior step under the previous action and one posterior
step on the frame. :meth:`~WorldModelAgent.plan` (the subclass's) maps the posterior state to an
action in ``[-1, 1]^A``; the run rescales actions to the environment's bounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from latentvi.config import option, require
from latentvi.models.ssm import RSSMConfig, State, WorldModel
from latentvi.optim_step import optimizer_step

__all__ = ["ModelTrainingConfig", "WorldModelAgent", "frozen"]


@dataclasses.dataclass(frozen=True)
class ModelTrainingConfig:
    """How the world model is fitted (shared by PlaNet, Dreamer and SLAC)."""

    batch_size: int = option(50, "chunks per world-model update (B)")
    chunk_length: int = option(50, "steps per chunk (L)")
    model_lr: float = option(6e-4, "Adam learning rate of the world model")
    adam_eps: float = option(1e-4, "Adam ε of every optimizer")
    grad_clip: float = option(100.0, "clip the world model's gradient norm to this")

    def __post_init__(self) -> None:
        for name in ("batch_size", "chunk_length"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "use a positive integer")
        for name in ("model_lr", "adam_eps", "grad_clip"):
            value = getattr(self, name)
            require(value > 0, name, value, "use a positive number")


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of the modules' parameters inside the block: gradients still
    flow *through* them (e.g. the learned dynamics) but are not accumulated *into* them."""
    parameters = [p for m in modules for p in m.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


class AgentModule(nn.Module):
    """An agent's network with its named optimizers (``self.optimizers``, set by the subclass):
    their state for checkpoints, and the device it lives on."""

    optimizers: dict[str, torch.optim.Optimizer]

    def optimizer_state(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_optimizer_state(self, state: Mapping) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class WorldModelAgent(AgentModule):
    """A world model, its optimizer, and a filter for acting (see the module docstring).

    Args:
        model_config: the world model (its ``action_dim`` must match the environment's).
        training: batch, chunk length, learning rate, clipping.
    """

    def __init__(self, model_config: RSSMConfig, training: ModelTrainingConfig) -> None:
        super().__init__()
        self.model_config, self.model_training = model_config, training
        self.action_dim = model_config.action_dim
        self.model = WorldModel(model_config)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "model": torch.optim.Adam(
                self.model.parameters(), lr=training.model_lr, eps=training.adam_eps
            )
        }
        self.reset()

    # --- learning --------------------------------------------------------------------------------
    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One world-model step on ``batch`` (from ``EpisodeStore.sample``), then
        :meth:`learn_behaviour` on its posterior states. Returns metrics (floats)."""
        metrics, posterior = self.model_step(batch)
        metrics.update(self.learn_behaviour(posterior))
        return metrics

    def model_step(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, float], State]:
        """One world-model step on ``batch``: metrics (floats) and the posterior states
        ``[L, B]`` (detached) of the batch under the model before the step."""
        device = self.device
        obs = batch["obs"].to(device)
        actions = batch["action"].to(device)
        rewards = batch["reward"].to(device)
        loss, metrics, posterior = self.model.loss(obs, actions, rewards)
        norm = optimizer_step(
            self.optimizers["model"],
            loss,
            clip=self.model_training.grad_clip,
            parameters=list(self.model.named_parameters()),  # the optimizer's, in its order
            name="world-model loss",
        )
        metrics = {key: float(value) for key, value in metrics.items()}
        metrics["train/model_grad_norm"] = float(norm)
        return metrics, posterior.detach()

    def learn_behaviour(self, posterior: State) -> dict[str, float]:
        """Learn from posterior states ``[L, B]`` (detached); PlaNet has nothing to learn."""
        return {}

    # --- acting ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start of an episode: zero state, zero previous action."""
        self._state: State | None = None
        self._previous = torch.zeros(1, self.action_dim)

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool, noise: float = 0.0) -> np.ndarray:
        """The action ``[A]`` in ``[-1, 1]`` for frame ``obs`` (uint8 ``[C, H, W]``): filter the
        frame in, :meth:`plan` from the posterior, add Gaussian noise of std ``noise`` when
        exploring, clip."""
        device = self.device
        rssm = self.model.rssm
        state = self._state if self._state is not None else rssm.initial(1)
        frame = torch.as_tensor(np.asarray(obs), device=device)[None]
        embed = self.model.embed(frame)  # [1, E]
        prior_state, _ = rssm.prior(state, self._previous.to(device))
        state, _ = rssm.posterior(prior_state, embed)
        action = self.plan(state, explore)  # [1, A]
        if explore and noise > 0:
            action = action + noise * torch.randn_like(action)
        action = action.clamp(-1.0, 1.0)
        self._state, self._previous = state, action
        return action[0].cpu().numpy().astype(np.float32)

    def plan(self, state: State, explore: bool) -> Tensor:
        """The action ``[1, A]`` in ``[-1, 1]`` for posterior state ``[1]``."""
        raise NotImplementedError
