"""The recurrent state-space model (RSSM) of PlaNet and Dreamer: transition and posterior, no pixels.

The latent state at step t is ``x_t = (h_t, s_t)``: a deterministic recurrent path h_t (a GRU) and a
stochastic state s_t (Hafner et al. 2019, "Learning Latent Dynamics for Planning from Pixels",
PlaNet §3):

    h_t = GRU(h_{t−1}, [s_{t−1}, a_{t−1}])            deterministic path
    p(s_t | h_t)                                      prior (transition), "imagination step"
    q(s_t | h_t, e_t)                                 posterior, e_t = encoder(o_t)

s_t is a diagonal Gaussian with σ = softplus(·) + ``min_std`` (PlaNet, DreamerV1), or — with
``classes > 0`` — ``stoch_dim`` independent categoricals of ``classes`` values each, sampled as
one-hot vectors with straight-through gradients (Hafner et al. 2021, DreamerV2 §2; the ``unimix``
of uniform probability is DreamerV3's, Hafner et al. 2023).

Alignment: ``actions[t]`` is the action taken *before* observation t, a_{t−1} (zeros at t = 0, the
start of an episode); the state at t = 0 is the prior/posterior from the zero state and zero
action, so p(x_1) is learned. See :mod:`latentvi.models.ssm` for how episodes map onto this.

Shapes: a :class:`State` has any leading batch dimensions ``[*B]``; ``observe`` works on
``[T, B, ·]`` and returns states ``[T, B, ·]`` and distributions with batch ``[T, B]`` whose event
is the latent: ``[stoch_dim]`` (Gaussian) or ``[stoch_dim, classes]`` (categorical).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, OneHotCategoricalStraightThrough

from latentvi.config import option, require, require_int
from latentvi.distributions import diagonal_gaussian, positive_scale

__all__ = ["RSSM", "RSSMConfig", "State", "stack_states"]


@dataclasses.dataclass(frozen=True)
class RSSMConfig:
    """Sizes and objective of an RSSM world model (PlaNet/Dreamer)."""

    action_dim: int = option(1, "size of the action vector a_t")
    obs_shape: tuple[int, ...] = option(
        (3, 64, 64), "C,H,W of the frames (H and W divisible by 2^len(channels))"
    )
    deter_dim: int = option(200, "size of the deterministic GRU state h_t")
    stoch_dim: int = option(30, "size of the Gaussian latent s_t, or number of categoricals")
    classes: int = option(0, "0: Gaussian latents; >0: stoch_dim categoricals of this many classes")
    unimix: float = option(0.01, "uniform probability mixed into categorical latents (DreamerV3)")
    hidden: int = option(200, "width of the MLPs in prior, posterior and reward heads")
    embed_dim: int = option(
        0, "observation embedding size: a linear layer after the conv encoder; 0: its raw output"
    )
    channels: tuple[int, ...] = option(
        (32, 64, 128, 256), "channels of the encoder/decoder stride-2 4x4 convolutions"
    )
    min_std: float = option(0.1, "floor of the Gaussian latents' standard deviation")
    free_nats: float = option(3.0, "KL per step below this gets no gradient (PlaNet); 0: off")
    kl_balance: float = option(
        0.0, "KL balancing α (DreamerV2 uses 0.8): α·KL(sg(q)‖p) + (1−α)·KL(q‖sg(p)); 0: off"
    )
    overshooting: int = option(
        0, "latent overshooting distance D (PlaNet); 0 or 1: one-step KL only"
    )
    obs_std: float = option(1.0, "σ of the Gaussian p(o_t|x_t) on pixels in [-0.5, 0.5]")
    recon_scale: float = option(1.0, "weight of the reconstruction term")
    reward_scale: float = option(1.0, "weight of the reward term")
    reward_twohot: bool = option(
        False,
        "reward head: symlog two-hot categorical over 255 buckets (DreamerV3) instead of N(μ, 1)",
    )
    zero_init_reward: bool = option(
        False, "zero the reward head's output layer at the start (DreamerV3): predicts 0 at first"
    )
    kl_scale: float = option(1.0, "weight of the KL term")
    overshooting_scale: float = option(1.0, "weight of the overshooting KL terms")

    def __post_init__(self) -> None:
        # Sequences read back from JSON (lists) become the tuples the fields declare.
        for name in ("obs_shape", "channels"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("action_dim", "deter_dim", "stoch_dim", "hidden"):
            require_int(getattr(self, name), name, 1, "use a positive integer")
        for name in ("classes", "embed_dim", "overshooting"):
            require_int(getattr(self, name), name, 0, "use a non-negative integer (0 turns it off)")
        require(self.classes != 1, "classes", self.classes, "use 0 (Gaussian) or >= 2 classes")
        require(0.0 <= self.unimix < 1.0, "unimix", self.unimix, "use a probability in [0, 1)")
        shape = tuple(self.obs_shape)
        require(
            len(shape) == 3 and all(isinstance(s, int) and s >= 1 for s in shape),
            "obs_shape",
            self.obs_shape,
            "give three positive sizes C,H,W, e.g. 3,64,64",
        )
        require(
            len(self.channels) >= 1 and all(int(c) >= 1 for c in self.channels),
            "channels",
            self.channels,
            "give one or more positive channel counts, e.g. 32,64,128,256",
        )
        factor = 2 ** len(self.channels)
        require(
            shape[1] % factor == 0 and shape[2] % factor == 0,
            "channels",
            self.channels,
            f"{len(self.channels)} stride-2 layers need H and W of obs_shape {shape} divisible by "
            f"{factor}; use fewer channels entries or larger frames",
        )
        require(self.min_std > 0, "min_std", self.min_std, "use a positive standard deviation")
        require(self.free_nats >= 0, "free_nats", self.free_nats, "use >= 0 (0 turns it off)")
        require(
            0.0 <= self.kl_balance < 1.0,
            "kl_balance",
            self.kl_balance,
            "use α in (0, 1), e.g. 0.8, or 0 to turn balancing off",
        )
        require(self.obs_std > 0, "obs_std", self.obs_std, "use a positive σ")
        for name in ("recon_scale", "reward_scale", "kl_scale", "overshooting_scale"):
            value = getattr(self, name)
            require(value >= 0, name, value, "use a non-negative weight")

    @property
    def stoch_size(self) -> int:
        """Size of the flattened stochastic state: stoch_dim, or stoch_dim · classes."""
        return self.stoch_dim * self.classes if self.classes else self.stoch_dim

    @property
    def stats_size(self) -> int:
        """Size of a state's ``stats``: 2·stoch_dim (mean, std) or stoch_dim · classes (logits)."""
        return self.stoch_dim * self.classes if self.classes else 2 * self.stoch_dim

    @property
    def feature_dim(self) -> int:
        """Size of ``features(state) = cat(deter, stoch)``."""
        return self.deter_dim + self.stoch_size


class State(NamedTuple):
    """A batch of RSSM latent states; every field has the same leading dimensions ``[*B]``.

    * ``deter`` ``[*B, deter_dim]``: the GRU state h_t;
    * ``stoch`` ``[*B, stoch_size]``: the sample s_t (one-hot vectors flattened for categoricals);
    * ``stats`` the parameters of the distribution s_t was drawn from: ``[*B, 2·stoch_dim]``
      (mean, std) for Gaussians, ``[*B, stoch_dim·classes]`` logits for categoricals.
    """

    deter: Tensor
    stoch: Tensor
    stats: Tensor

    def map(self, function: Callable[[Tensor], Tensor]) -> State:
        """Apply ``function`` to every field (e.g. ``lambda t: t[-1]`` or ``Tensor.detach``)."""
        return State(*(function(field) for field in self))

    def detach(self) -> State:
        """The same state without gradient history."""
        return self.map(Tensor.detach)

    def reshape(self, *batch: int) -> State:
        """The same states with leading dimensions ``batch`` (e.g. ``(-1,)`` to flatten ``[T, B]``)."""
        return self.map(lambda t: t.reshape(*batch, t.shape[-1]))


def stack_states(states: list[State], dim: int = 0) -> State:
    """Stack states along a new leading dimension: ``T × [*B, ·] -> [T, *B, ·]``."""
    return State(*(torch.stack(fields, dim) for fields in zip(*states, strict=True)))


class RSSM(nn.Module):
    """Transition p(x_t|x_{t−1}, a_{t−1}) and posterior q(x_t|x_{t−1}, a_{t−1}, o_t) of PlaNet.

    See the module docstring for the equations and shape conventions. Built from a
    :class:`RSSMConfig`; the observation embedding size is ``embed_size`` (the world model's
    encoder output, ``config.embed_dim`` unless given).
    """

    def __init__(self, config: RSSMConfig, embed_size: int | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed_size = embed_size if embed_size is not None else c.embed_dim
        if self.embed_size < 1:
            raise ValueError(
                f"embed_size = {self.embed_size!r} is invalid: pass the encoder's output size"
            )
        self.feature_dim = c.feature_dim
        stats_size = c.stats_size
        self.input_layer = nn.Linear(c.stoch_size + c.action_dim, c.hidden)
        self.cell = nn.GRUCell(c.hidden, c.deter_dim)
        self.prior_head = nn.Sequential(
            nn.Linear(c.deter_dim, c.hidden), nn.ELU(), nn.Linear(c.hidden, stats_size)
        )
        self.posterior_head = nn.Sequential(
            nn.Linear(c.deter_dim + self.embed_size, c.hidden),
            nn.ELU(),
            nn.Linear(c.hidden, stats_size),
        )

    # --- states and distributions ----------------------------------------------------------------
    def initial(self, batch: int | tuple[int, ...]) -> State:
        """The all-zeros state ``[*batch, ·]`` that precedes the first step of an episode."""
        batch = (batch,) if isinstance(batch, int) else tuple(batch)
        c = self.config
        weight = self.input_layer.weight
        kwargs = {"dtype": weight.dtype, "device": weight.device}
        stats_size = c.stats_size
        return State(
            torch.zeros(*batch, c.deter_dim, **kwargs),
            torch.zeros(*batch, c.stoch_size, **kwargs),
            torch.zeros(*batch, stats_size, **kwargs),
        )

    def features(self, state: State) -> Tensor:
        """``cat(deter, stoch)``: ``[*B, feature_dim]``, the input of every head."""
        return torch.cat([state.deter, state.stoch], -1)

    def distribution(self, stats: Tensor) -> Distribution:
        """The distribution of s_t from its ``stats [*B, ·]``: batch ``[*B]``, event the latent."""
        c = self.config
        if c.classes:
            logits = stats.reshape(*stats.shape[:-1], c.stoch_dim, c.classes)
            return Independent(
                OneHotCategoricalStraightThrough(logits=logits, validate_args=False), 1
            )
        mean, std = stats.chunk(2, -1)
        return diagonal_gaussian(mean, std, validate_args=False)

    def _stats(self, raw: Tensor) -> Tensor:
        """Network output -> valid ``stats``: (mean, softplus + min_std) or unimix logits."""
        c = self.config
        if c.classes:
            logits = raw.reshape(*raw.shape[:-1], c.stoch_dim, c.classes)
            if c.unimix:  # log((1 − u) softmax(ℓ) + u / K), in log space
                logits = torch.logaddexp(
                    torch.log_softmax(logits, -1) + math.log1p(-c.unimix),
                    torch.full_like(logits, math.log(c.unimix / c.classes)),
                )
            return logits.reshape(raw.shape)
        mean, raw_std = raw.chunk(2, -1)
        return torch.cat([mean, positive_scale(raw_std, c.min_std)], -1)

    def _sample(self, stats: Tensor) -> tuple[Tensor, Distribution]:
        distribution = self.distribution(stats)
        stoch = distribution.rsample()  # pathwise (Gaussian) or straight-through (one-hot)
        return stoch.reshape(*stats.shape[:-1], self.config.stoch_size), distribution

    # --- one step ----------------------------------------------------------------------------------
    def prior(self, state: State, action: Tensor) -> tuple[State, Distribution]:
        """p(x_{t+1}|x_t, a_t): ``state [*B]``, ``action [*B, A]`` -> (sampled state, p) ``[*B]``."""
        self._check_action(action, state.deter.shape[:-1])
        batch = state.deter.shape[:-1]
        inputs = torch.cat([state.stoch, action.to(state.stoch.dtype)], -1).reshape(
            -1, self.config.stoch_size + self.config.action_dim
        )
        hidden = F.elu(self.input_layer(inputs))
        deter = self.cell(hidden, state.deter.reshape(-1, self.config.deter_dim))
        deter = deter.reshape(*batch, -1)
        stats = self._stats(self.prior_head(deter))
        stoch, distribution = self._sample(stats)
        return State(deter, stoch, stats), distribution

    def posterior(self, prior_state: State, embed: Tensor) -> tuple[State, Distribution]:
        """q(x_t|h_t, o_t) from the prior step's state (its ``deter`` h_t) and ``embed [*B, E]``."""
        if embed.shape[-1] != self.embed_size:
            raise ValueError(
                f"embed has shape {tuple(embed.shape)} but the RSSM expects [*B, {self.embed_size}]"
            )
        deter = prior_state.deter
        stats = self._stats(self.posterior_head(torch.cat([deter, embed], -1)))
        stoch, distribution = self._sample(stats)
        return State(deter, stoch, stats), distribution

    # --- sequences ---------------------------------------------------------------------------------
    def observe(
        self, embed: Tensor, actions: Tensor, state: State | None = None
    ) -> tuple[State, State, Distribution, Distribution]:
        """Filter a sequence: ``embed [T, B, E]``, ``actions [T, B, A]`` (a_{t−1} at t).

        Returns ``(posterior states, prior states, q, p)``: states ``[T, B, ·]``; q and p have batch
        ``[T, B]`` and the latent as event. ``state`` is the state before step 0 (default: zeros,
        the start of an episode). Each posterior state is drawn from q and feeds the next prior.
        """
        if embed.dim() != 3 or actions.dim() != 3 or embed.shape[:2] != actions.shape[:2]:
            raise ValueError(
                f"embed {tuple(embed.shape)} and actions {tuple(actions.shape)} must be "
                "[T, B, E] and [T, B, A] with the same T and B"
            )
        state = self.initial(embed.shape[1]) if state is None else state
        posteriors, priors = [], []
        for t in range(embed.shape[0]):
            prior_state, _ = self.prior(state, actions[t])
            state, _ = self.posterior(prior_state, embed[t])
            priors.append(prior_state)
            posteriors.append(state)
        posterior_states, prior_states = stack_states(posteriors), stack_states(priors)
        q = self.distribution(posterior_states.stats)
        p = self.distribution(prior_states.stats)
        return posterior_states, prior_states, q, p

    def imagine(self, state: State, actions: Tensor) -> State:
        """Roll the prior forward: ``state [*B]``, ``actions [H, *B, A]`` -> states ``[H, *B]``."""
        states = []
        for action in actions:
            state, _ = self.prior(state, action)
            states.append(state)
        return stack_states(states)

    def imagine_policy(
        self,
        state: State,
        policy: Callable[[Tensor], Distribution | Tensor],
        horizon: int,
    ) -> tuple[State, Tensor]:
        """Imagine ``horizon`` steps acting with ``policy(features) -> action distribution or action``.

        Returns states ``[H+1, *B]`` (index 0 is ``state``) and actions ``[H, *B, A]``. Actions are
        drawn with ``rsample`` when the distribution allows it, so the gradient of a return flows
        back through the learned dynamics into the policy (Dreamer, Hafner et al. 2020).
        """
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon = {horizon!r} is invalid: use a positive integer")
        states, actions = [state], []
        for _ in range(horizon):
            output = policy(self.features(state))
            if isinstance(output, Distribution):
                action = output.rsample() if output.has_rsample else output.sample()
            else:
                action = output
            state, _ = self.prior(state, action)
            states.append(state)
            actions.append(action)
        return stack_states(states), torch.stack(actions)

    def overshooting_kl(self, posterior: State, actions: Tensor, distance: int) -> Tensor:
        """Latent overshooting terms (PlaNet §4): ``KL(sg(q_{t+d}) ‖ p(x_{t+d}|x_t, a_{t:t+d}))``.

        From every posterior state ``[T, B]`` the prior is rolled d steps under the actions that
        followed, for d = 2 … ``distance`` (d = 1 is the ordinary KL); the posterior targets are
        detached, as in PlaNet. Returns the KLs concatenated over d: ``[Σ_{d=2}^{D} (T−d), B]``.
        """
        steps = posterior.deter.shape[0]
        targets = posterior.detach()
        current = posterior.map(lambda t: t[: steps - 1])
        terms = []
        for d in range(1, min(distance, steps - 1) + 1):
            # current: starts 0 … T−1−d rolled d steps, targets d … T−1, driven by actions[d:]
            current, p = self.prior(current, actions[d:])
            if d >= 2:
                q = self.distribution(targets.stats[d:])
                terms.append(torch.distributions.kl_divergence(q, p))
            current = current.map(lambda t: t[:-1])
        if not terms:
            return posterior.deter.new_zeros(0, posterior.deter.shape[1])
        return torch.cat(terms, 0)

    def _check_action(self, action: Tensor, batch: torch.Size) -> None:
        if action.shape[:-1] != batch or action.shape[-1] != self.config.action_dim:
            raise ValueError(
                f"action has shape {tuple(action.shape)} but the state batch is {tuple(batch)} "
                f"and action_dim = {self.config.action_dim}: pass [*B, {self.config.action_dim}]"
            )
