"""Latent state-space world models from pixels: PlaNet's RSSM with an image encoder, decoder and
reward head, trained with the sequence ELBO.

The generative model over a sequence (Hafner et al. 2019, PlaNet; Hafner et al. 2020, DreamerV1):

    x_t ~ p(x_t | x_{t−1}, a_{t−1})     transition (the :class:`~latentvi.models.rssm.RSSM` prior)
    o_t ~ N(decoder(x_t), obs_std² I)   pixels in [-0.5, 0.5]
    r_t ~ N(reward_head(x_t), 1)        reward (with ``reward_twohot``: DreamerV3's symlog two-hot
                                        categorical, whose term is a cross-entropy)

with the filtering posterior q(x_t | x_{t−1}, a_{t−1}, o_t), and the loss to minimize is minus the
sequence ELBO (:func:`latentvi.bounds.sequence_elbo`) per sequence step, with PlaNet's free nats,
DreamerV2's KL balancing and PlaNet's latent overshooting as options of :class:`RSSMConfig`.

**Alignment (read this before feeding data).** Every tensor here is ``[T, B, ...]`` and step t
holds the observation o_t, the action that *led to* it and the reward *received on arriving* at it:

    obs[t]      = o_t                    uint8 ``[T, B, C, H, W]``
    actions[t]  = a_{t−1}                ``[T, B, A]``, zeros at t = 0 (episode start)
    rewards[t]  = r_{t−1}                ``[T, B]``, the reward for a_{t−1}; 0 at t = 0

so that x_t predicts o_t and rewards[t]. An episode stored as ``obs[0..T]``, ``action[0..T−1]``,
``reward[0..T−1]`` (reward[t] for taking action[t] in obs[t]) maps onto this by
:func:`align_episode`: prepend a zero action and a zero reward. (With t = 0 the reward term then
fits a zero, which is harmless; a window taken from the middle of an episode simply carries the
true previous action and reward.) The agents act with the posterior state after o_t, and
``reward(features)`` of an imagined state after action a is the predicted reward for taking a.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from latentvi.bounds import balanced_kl, free_nats_kl, sequence_elbo
from latentvi.distributions import diagonal_gaussian
from latentvi.models.rssm import RSSM, RSSMConfig, State, stack_states
from latentvi.nn import MLP, ConvDecoder, ConvEncoder
from latentvi.scaling import BINS, TwoHotSymlog

__all__ = ["RSSM", "RSSMConfig", "State", "WorldModel", "align_episode", "stack_states"]


def align_episode(obs: Tensor, actions: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stored-episode convention -> the model's: ``obs [T+1, *B, ...]``, ``actions [T, *B, A]``,
    ``rewards [T, *B]`` (reward[t] for action[t] taken in obs[t]) -> ``(obs [T+1], actions [T+1],
    rewards [T+1])`` with actions[t] = a_{t−1} and rewards[t] = r_{t−1}, zeros at t = 0."""
    if actions.shape[0] != obs.shape[0] - 1 or rewards.shape[0] != actions.shape[0]:
        raise ValueError(
            f"obs {tuple(obs.shape)}, actions {tuple(actions.shape)}, rewards "
            f"{tuple(rewards.shape)}: an episode has one more observation than actions and rewards"
        )
    actions = torch.cat([torch.zeros_like(actions[:1]), actions], 0)
    rewards = torch.cat([torch.zeros_like(rewards[:1]), rewards], 0)
    return obs, actions, rewards


class WorldModel(nn.Module):
    """Encoder + :class:`RSSM` + decoder + reward head, trained by :meth:`loss` with the sequence
    ELBO (PlaNet: Hafner et al. 2019; Dreamer: Hafner et al. 2020).

    ``encoder``: frames ``[*B, C, H, W]`` (uint8 or preprocessed floats) -> ``[*B, E]``: PlaNet's
    stride-2 4×4 convolutions (:class:`~latentvi.nn.ConvEncoder`, one per ``channels`` entry),
    then a linear layer to ``embed_dim`` when that is > 0. ``decoder``: the mirror
    (:class:`~latentvi.nn.ConvDecoder`) from ``features [*B, feature_dim]``.
    """

    def __init__(self, config: RSSMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.obs_shape = tuple(int(s) for s in c.obs_shape)
        channels = tuple(int(x) for x in c.channels)
        conv = ConvEncoder(self.obs_shape, channels)
        if c.embed_dim:
            self.encoder = nn.Sequential(conv, nn.Linear(conv.out_features, c.embed_dim), nn.ELU())
            self.embed_dim = c.embed_dim
        else:
            self.encoder = conv
            self.embed_dim = conv.out_features
        self.rssm = RSSM(c, self.embed_dim)
        self.feature_dim = self.rssm.feature_dim
        self.decoder = ConvDecoder(self.feature_dim, self.obs_shape, channels)
        outputs = BINS if c.reward_twohot else 1
        self.reward_head = MLP(self.feature_dim, (c.hidden, c.hidden), outputs, nn.ELU)
        if c.zero_init_reward:
            nn.init.zeros_(self.reward_head[-1].weight)
            nn.init.zeros_(self.reward_head[-1].bias)
        self.channels_last = False
        self.set_channels_last(True)

    def set_channels_last(self, enabled: bool) -> None:
        """Hold the conv weights, and feed the encoder its frames, in channels-last memory layout
        (on by default: the same values, and on the CPU the encoder + decoder pass with its
        gradient takes ~0.7× the time; see BENCHMARKS.md). False restores the plain layout."""
        layout = torch.channels_last if enabled else torch.contiguous_format
        self.encoder.to(memory_format=layout)
        self.decoder.to(memory_format=layout)
        self.channels_last = enabled

    # --- the model as distributions --------------------------------------------------------------
    def preprocess(self, obs: Tensor) -> Tensor:
        """uint8 frames ``[*, C, H, W]`` -> floats in [-0.5, 0.5]; float frames are taken as
        already preprocessed and returned unchanged."""
        if tuple(obs.shape[-3:]) != self.obs_shape:
            raise ValueError(
                f"obs has shape {tuple(obs.shape)} but the model's frames are {self.obs_shape}: "
                f"pass [..., {', '.join(map(str, self.obs_shape))}]"
            )
        if obs.dtype == torch.uint8:
            return obs.to(self.rssm.input_layer.weight.dtype) / 255.0 - 0.5
        return obs

    def embed(self, obs: Tensor) -> Tensor:
        """Frames ``[*B, C, H, W]`` -> embeddings ``[*B, E]``."""
        return self._encode(self.preprocess(obs))

    def _encode(self, frames: Tensor) -> Tensor:
        """Preprocessed frames ``[*B, C, H, W]`` -> ``[*B, E]`` (in the encoder's layout)."""
        batch = frames.shape[:-3]
        flat = frames.reshape(-1, *self.obs_shape)
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        return self.encoder(flat).reshape(*batch, self.embed_dim)

    def decode(self, features: Tensor) -> Distribution:
        """p(o|x): ``features [*B, F]`` -> Gaussian with batch ``[*B]``, event ``[C, H, W]``."""
        return diagonal_gaussian(
            self.decoder(features), self.config.obs_std, 3, validate_args=False
        )

    def reward(self, features: Tensor) -> Distribution:
        """p(r|x) = N(head(x), 1), or with ``reward_twohot`` DreamerV3's symlog two-hot
        categorical (:class:`latentvi.scaling.TwoHotSymlog`: ``mean`` the prediction, ``log_prob``
        minus a cross-entropy): ``features [*B, F]`` -> batch ``[*B]``, event ``[]``."""
        if self.config.reward_twohot:
            return TwoHotSymlog(self.reward_head(features))
        mean = self.reward_head(features).squeeze(-1)
        return diagonal_gaussian(mean, 1.0, 0, validate_args=False)

    def observe(self, obs: Tensor, actions: Tensor) -> State:
        """Posterior states ``[T, B]`` for frames ``[T, B, C, H, W]`` and actions ``[T, B, A]``."""
        return self.rssm.observe(self.embed(obs), actions)[0]

    # --- the sequence ELBO -----------------------------------------------------------------------
    def step_terms(
        self, obs: Tensor, actions: Tensor, rewards: Tensor
    ) -> tuple[dict[str, Tensor], State, State]:
        """Per-step ELBO terms, each ``[T, B]`` nats: ``{"recon": log p(o_t|x_t), "reward":
        log p(r_t|x_t), "kl": KL(q_t ‖ p_t)}`` at one ancestral sample of the posterior; also the
        posterior and prior states ``[T, B]`` (their ``stats`` rebuild q and p)."""
        self._check_sequence(obs, actions, rewards)
        target = self.preprocess(obs)
        posterior, prior, q, p = self.rssm.observe(self._encode(target), actions)
        features = self.rssm.features(posterior)
        terms = {
            "recon": self.decode(features).log_prob(target),
            "reward": self.reward(features).log_prob(rewards.to(features.dtype)),
            "kl": kl_divergence(q, p),
        }
        return terms, posterior, prior

    def elbo(self, obs: Tensor, actions: Tensor, rewards: Tensor) -> Tensor:
        """The sequence ELBO of each sequence, ``[B]`` nats (one posterior sample)."""
        terms, _, _ = self.step_terms(obs, actions, rewards)
        return sequence_elbo(terms["recon"] + terms["reward"], terms["kl"])

    def loss(
        self, obs, actions: Tensor | None = None, rewards: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], State]:
        """``(loss, metrics, posterior states)`` for ``obs [T, B, C, H, W]`` (uint8),
        ``actions [T, B, A]`` and ``rewards [T, B]`` aligned as in the module docstring (or one
        tuple ``(obs, actions, rewards)``).

        ``loss`` is −ELBO per sequence step with the config's weights, free nats, balancing and
        overshooting: ``recon_scale·recon + reward_scale·reward + kl_scale·kl +
        overshooting_scale·overshooting``, each term a mean over ``[T, B]`` (overshooting: over its
        terms; reward: over steps 1..T−1, see below). Metrics (floats): ``loss/recon``,
        ``loss/reward``, ``loss/kl`` (the shaped KL that is minimized), ``loss/overshooting`` when
        on, ``loss/total`` (the weighted sum), ``train/kl`` (the plain KL per step) and
        ``train/elbo`` (per step, nats). The posterior states are detached.
        """
        if actions is None and rewards is None:
            obs, actions, rewards = obs
        c = self.config
        terms, posterior, prior = self.step_terms(obs, actions, rewards)
        divergence = terms["kl"]
        if c.kl_balance:
            distribution = self.rssm.distribution
            q, p = distribution(posterior.stats), distribution(prior.stats)
            kl_to_prior = kl_divergence(distribution(posterior.stats.detach()), p)
            kl_to_posterior = kl_divergence(q, distribution(prior.stats.detach()))
            shaped = balanced_kl(kl_to_prior, kl_to_posterior, c.kl_balance, c.free_nats)
        else:
            shaped = free_nats_kl(divergence, c.free_nats)
        # rewards[0] = r_{t−1} depends on the state before the sequence, which x_0 has not seen
        # (one frame shows no velocity): fitting it teaches the reward head noise, so the reward
        # term starts at t = 1 (all of it when T = 1). The ELBO metric keeps every step.
        fitted = terms["reward"][1:] if terms["reward"].shape[0] > 1 else terms["reward"]
        losses = {
            "recon": -terms["recon"].mean(),
            "reward": -fitted.mean(),
            "kl": shaped.mean(),
        }
        total = c.recon_scale * losses["recon"] + c.reward_scale * losses["reward"]
        total = total + c.kl_scale * losses["kl"]
        if c.overshooting >= 2:
            overshooting = self.rssm.overshooting_kl(posterior, actions, c.overshooting)
            if overshooting.numel():
                losses["overshooting"] = free_nats_kl(overshooting, c.free_nats).mean()
                total = total + c.overshooting_scale * losses["overshooting"]
        steps = obs.shape[0]
        elbo = sequence_elbo(terms["recon"] + terms["reward"], divergence).mean() / steps
        metrics = {f"loss/{name}": value.item() for name, value in losses.items()}
        metrics["loss/total"] = total.item()
        metrics.update({"train/kl": divergence.mean().item(), "train/elbo": elbo.item()})
        return total, metrics, posterior.detach()

    # --- prediction --------------------------------------------------------------------------------
    @torch.no_grad()
    def open_loop(
        self, obs_context: Tensor, actions_context: Tensor, actions_future: Tensor
    ) -> Tensor:
        """Open-loop video prediction: filter ``obs_context [Tc, B, C, H, W]`` (with
        ``actions_context [Tc, B, A]``), then imagine with the prior under ``actions_future
        [H, B, A]`` (actions_future[0] is the action after the last context frame) and decode.

        Returns the predicted frames' means ``[H, B, C, H, W]`` in pixel units [0, 1] (clamped).
        """
        posterior = self.observe(obs_context, actions_context)
        last = posterior.map(lambda t: t[-1])
        imagined = self.rssm.imagine(last, actions_future)
        frames = self.decode(self.rssm.features(imagined)).mean
        return (frames + 0.5).clamp(0.0, 1.0)

    def _check_sequence(self, obs: Tensor, actions: Tensor, rewards: Tensor) -> None:
        shape: Sequence[int] = obs.shape
        if obs.dim() != 5 or actions.dim() != 3 or rewards.dim() != 2:
            raise ValueError(
                f"obs {tuple(obs.shape)}, actions {tuple(actions.shape)}, rewards "
                f"{tuple(rewards.shape)}: pass obs [T, B, C, H, W], actions [T, B, A], rewards [T, B]"
            )
        if actions.shape[:2] != shape[:2] or rewards.shape != shape[:2]:
            raise ValueError(
                f"obs {tuple(obs.shape)}, actions {tuple(actions.shape)} and rewards "
                f"{tuple(rewards.shape)} must share the leading [T, B]"
            )
