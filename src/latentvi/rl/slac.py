"""SLAC: soft actor-critic on the filtered latent state of a sequential latent variable model.

Lee, Nagabandi, Abbeel & Levine, *Stochastic Latent Actor-Critic: Deep Reinforcement Learning with
a Latent Variable Model* (NeurIPS 2020). Each update takes one step of the world model on a batch
of episode chunks (:class:`latentvi.rl.world_model_agent.WorldModelAgent`), then one step of SAC
(:class:`latentvi.rl.sac.SAC`, learned temperature α) on the transitions inside those chunks:

* **latent model** — the paper's is a two-layer latent model (z¹, z²) trained by its sequence ELBO;
  ours reuses the RSSM world model (:class:`latentvi.models.ssm.WorldModel`) and its ELBO, the one
  latent model PlaNet, Dreamer and SLAC share;
* **critics** Q_i(x_t, a_t) — on the filtered latent state: the posterior features of the batch at
  step t (detached; SAC's gradient never reaches the model), as the paper trains its critics on
  posterior samples of the latent;
* **actor** π(a_t | e_{t−K+1:t}, a_{t−K+1:t−1}) — on the history, as in the paper: the last K frame
  embeddings of the model's encoder and the K−1 actions between them, concatenated (detached);
  zeros stand for frames and actions before the episode's reset;
* **transitions** — t → t+1 for consecutive posterior states of a chunk. In the chunks' alignment
  (:mod:`latentvi.models.ssm`: ``action[t] = a_{t−1}``, ``reward[t] = r_{t−1}``) the transition
  from x_t takes ``action[t+1]``, earns ``reward[t+1]`` and ends when ``terminal[t+1]``. A
  transition is used when the actor's history at t lies inside the chunk (t ≥ K−1), or the chunk
  starts at the reset (its zero padding is then the truth). The paper samples one transition per
  sequence of K+1 observations (and a separate batch of 256 for SAC); we use every usable one;
* **pretraining** — the paper fits the model before SAC starts; ``model_only_updates`` updates
  train the model alone.

Acting needs no filtering: the agent keeps a rolling window of the last K embeddings and K−1
actions (zeros after :meth:`SlacAgent.reset`), and samples π (explore) or takes its mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from latentvi.config import option, require, require_int, require_layer_sizes
from latentvi.models.ssm import RSSMConfig, State
from latentvi.optim_step import optimizer_step
from latentvi.rl.sac import SAC, polyak_update
from latentvi.rl.world_model_agent import (
    ModelTrainingConfig,
    WorldModelAgent,
    frozen,
)

__all__ = ["SlacAgent", "SlacConfig", "history_windows"]


@dataclasses.dataclass(frozen=True)
class SlacConfig:
    """SLAC's actor, critics and schedule (the paper's SAC values as defaults)."""

    history: int = option(8, "SLAC: frames K in the actor's history (K embeddings, K−1 actions)")
    sac_hidden: tuple[int, ...] = option((256, 256), "SLAC: actor and critic layers")
    sac_lr: float = option(3e-4, "SLAC: Adam learning rate of the actor and the critics")
    alpha_lr: float = option(3e-4, "SLAC: Adam learning rate of the temperature α")
    init_temperature: float = option(1.0, "SLAC: initial temperature α")
    sac_discount: float = option(0.99, "SLAC: discount γ per agent step")
    target_tau: float = option(0.005, "SLAC: Polyak rate of the target critics")
    model_only_updates: int = option(
        0, "SLAC: first updates that train the world model alone (the paper pretrains it)"
    )
    sac_clip: float = option(100.0, "SLAC: gradient-norm clip of actor, critics and α")

    def __post_init__(self) -> None:
        if isinstance(self.sac_hidden, list):  # read back from JSON
            object.__setattr__(self, "sac_hidden", tuple(self.sac_hidden))
        require_int(self.history, "history", 1, "use a positive integer, e.g. 8")
        require_layer_sizes("sac_hidden", self.sac_hidden, "256,256")
        for name in ("sac_lr", "alpha_lr", "init_temperature", "sac_clip"):
            value = getattr(self, name)
            require(value > 0, name, value, "use a positive number")
        require(0 < self.sac_discount <= 1, "sac_discount", self.sac_discount, "use γ in (0, 1]")
        require(0 < self.target_tau <= 1, "target_tau", self.target_tau, "use a rate in (0, 1]")
        require_int(
            self.model_only_updates, "model_only_updates", 0, "use an integer >= 0 (0: none)"
        )


def history_windows(sequence: Tensor, length: int) -> Tensor:
    """The window of the last ``length`` entries ending at each step, zeros before step 0:
    ``[T, B, D] -> [T, B, length·D]``, oldest first (entry t holds ``sequence[t−length+1..t]``)."""
    steps, batch, size = sequence.shape
    if length == 0:
        return sequence.new_zeros(steps, batch, 0)
    padded = torch.cat([sequence.new_zeros(length - 1, batch, size), sequence], 0)
    windows = padded.unfold(0, length, 1)  # [T, B, D, length]
    return windows.transpose(-1, -2).reshape(steps, batch, length * size)


class SlacAgent(WorldModelAgent):
    """A world model, an actor on frame histories and critics on its latent (module docstring)."""

    def __init__(
        self, model_config: RSSMConfig, training: ModelTrainingConfig, config: SlacConfig
    ) -> None:
        super().__init__(model_config, training)
        self.config = config
        require(
            training.chunk_length >= config.history + 1,
            "chunk_length",
            training.chunk_length,
            f"SLAC needs chunks of at least history + 1 = {config.history + 1} observations "
            "(or a shorter --history)",
        )
        self.exploration_noise = 0.0  # the policy's own sampling explores
        k = config.history
        self.history_dim = k * self.model.embed_dim + (k - 1) * self.action_dim
        bound = torch.ones(self.action_dim)
        self.sac = SAC(
            self.history_dim,
            -bound,
            bound,
            config.sac_hidden,
            lr=config.sac_lr,
            alpha_lr=config.alpha_lr,
            discount=config.sac_discount,
            tau=config.target_tau,
            init_temperature=config.init_temperature,
            critic_feature_dim=self.model.feature_dim,
            eps=training.adam_eps,
        )
        self.optimizers.update(self.sac.optimizers)
        # updates taken so far (for model_only_updates); a buffer, so checkpoints keep it
        self.register_buffer("update_count", torch.zeros((), dtype=torch.long))

    # --- learning --------------------------------------------------------------------------------
    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One world-model step, then (after ``model_only_updates``) one SAC step on the chunks'
        transitions; the embeddings and posterior states are the model's before its step."""
        learn = int(self.update_count) >= self.config.model_only_updates
        if learn:
            with torch.no_grad():
                embeds = self.model.embed(batch["obs"].to(self.device))  # [L, B, E]
        metrics, posterior = self.model_step(batch)
        self.update_count += 1
        if learn:
            metrics.update(self.learn_sac(self.transitions(batch, embeds, posterior)))
        return metrics

    def transitions(
        self, batch: Mapping[str, Tensor], embeds: Tensor, posterior: State
    ) -> dict[str, Tensor]:
        """The usable transitions t → t+1 of a batch (module docstring), flattened to ``[N]``:
        ``features``/``next_features`` ``[N, F]`` (posterior, detached), ``history``/
        ``next_history`` ``[N, K·E + (K−1)·A]``, ``action [N, A]``, ``reward``, ``terminal [N]``.
        ``embeds [L, B, E]`` are the chunks' frame embeddings, ``posterior`` their states."""
        device = self.device
        k = self.config.history
        actions = batch["action"].to(device)  # [L, B, A], a_{t−1} at t
        features = self.model.rssm.features(posterior).detach()  # [L, B, F]
        history = torch.cat(
            [history_windows(embeds.detach(), k), history_windows(actions, k - 1)], -1
        )  # [L, B, D]: e_{t−K+1..t}, then actions[t−K+2..t] = a_{t−K+1..t−1}
        steps = features.shape[0]
        starts = batch["first"][0].to(device).bool()  # [B]: the chunk begins at the reset
        t = torch.arange(steps - 1, device=device)[:, None]
        usable = (t >= k - 1) | starts[None, :]  # [L−1, B]
        return {
            "features": features[:-1][usable],
            "history": history[:-1][usable],
            "action": actions[1:][usable],
            "reward": batch["reward"].to(device)[1:][usable].to(features.dtype),
            "terminal": batch["terminal"].to(device)[1:][usable].to(features.dtype),
            "next_features": features[1:][usable],
            "next_history": history[1:][usable],
        }

    def critic_loss(self, transitions: Mapping[str, Tensor]) -> tuple[Tensor, dict]:
        """SAC's critic loss: Q on the latent, the next action from π on the next history."""
        tr = transitions
        return self.sac.critic_loss(
            tr["features"], tr["action"], tr["reward"], tr["next_history"], tr["next_features"],
            tr["terminal"],
        )  # fmt: skip

    def actor_loss(self, transitions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict]:
        """SAC's actor and temperature losses; the critics are frozen (no gradient into them)."""
        with frozen(self.sac.critic):
            return self.sac.actor_loss(transitions["history"], transitions["features"])

    def learn_sac(self, transitions: Mapping[str, Tensor]) -> dict[str, float]:
        """One step of the critics, then of the actor and α; then the target critics."""
        clip = self.config.sac_clip
        critic_loss, metrics = self.critic_loss(transitions)
        optimizer_step(self.optimizers["critic"], critic_loss, clip=clip, name="critic loss")
        actor_loss, temperature_loss, actor_metrics = self.actor_loss(transitions)
        optimizer_step(self.optimizers["actor"], actor_loss, clip=clip, name="actor loss")
        temperature = self.optimizers["alpha"]
        optimizer_step(temperature, temperature_loss, clip=clip, name="temperature loss")
        polyak_update(self.sac.critic_target, self.sac.critic, self.sac.tau)
        metrics = {key: float(value) for key, value in {**metrics, **actor_metrics}.items()}
        metrics["train/sac_transitions"] = float(transitions["action"].shape[0])
        return metrics

    # --- acting ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start of an episode: zero previous action, an all-zeros history window."""
        super().reset()
        self._embeds: Tensor | None = None  # [K, E]
        self._actions: Tensor | None = None  # [K−1, A]

    def history(self) -> tuple[Tensor, Tensor]:
        """The actor's window: the last K embeddings ``[K, E]`` and K−1 actions ``[K−1, A]``,
        oldest first, zeros where the episode had not started."""
        if self._embeds is None:
            k, weight = self.config.history, self.model.rssm.input_layer.weight
            kwargs = {"device": weight.device, "dtype": weight.dtype}
            self._embeds = torch.zeros(k, self.model.embed_dim, **kwargs)
            self._actions = torch.zeros(k - 1, self.action_dim, **kwargs)
        return self._embeds, self._actions

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool, noise: float = 0.0) -> np.ndarray:
        """The action ``[A]`` in ``[-1, 1]`` for frame ``obs`` (uint8 ``[C, H, W]``): push its
        embedding and the previous action into the window, then sample π (explore) or take its
        mode; Gaussian noise of std ``noise`` when exploring, clipped."""
        device = self.device
        frame = torch.as_tensor(np.asarray(obs), device=device)[None]
        embeds, actions = self.history()
        self._embeds = torch.cat([embeds[1:], self.model.embed(frame)])
        previous = self._previous.to(device=device, dtype=actions.dtype)
        self._actions = torch.cat([actions[1:], previous])[: self.config.history - 1]
        inputs = torch.cat([self._embeds.reshape(-1), self._actions.reshape(-1)])[None]
        action = self.sac.act(inputs, explore)  # [1, A]
        if explore and noise > 0:
            action = action + noise * torch.randn_like(action)
        action = action.clamp(-1.0, 1.0)
        self._previous = action
        return action[0].cpu().numpy().astype(np.float32)
