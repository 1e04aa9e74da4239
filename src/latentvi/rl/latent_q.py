"""Q-learning on a learned representation: the lecture's VAE-on-the-replay-buffer agent.

The lecture's sample algorithm, one environment step at a time:

1. collect a transition (s, a, s', r) and add it to the replay buffer R;
2. update p_θ(s|z) and q_φ(z|s) — a VAE (:class:`latentvi.models.vae.VAE`) — with a batch from R;
3. update Q(z, a) with a batch from R, where z is the mean of q_φ(z|s) (or a sample, an option).

By default the encoder is trained only by the VAE's loss (z is detached before the Q-learning
loss); ``finetune_encoder`` lets the critic's loss train it too. Steps 2 and 3 use the same batch.
"A great way to use prior data" — the ``vae-pretrained`` variant first fits the VAE to a stored
data set of observations (:meth:`LatentQAgent.pretrain`), then runs the same loop.

Four representations ("variants") share the Q-learning code, for comparisons at equal steps:

* ``state`` — the environment's true low-dimensional state;
* ``pixels`` — a convolutional encoder trained end to end by the critic's loss, with a
  Polyak-averaged target copy for the bootstrap targets (as in Yarats et al. 2021, SAC-AE
  without the decoder);
* ``vae`` — the VAE latent, the VAE trained online on R;
* ``vae-pretrained`` — the same, with the VAE pretrained on prior data first.

The Q-learning head is :class:`latentvi.rl.dqn.DQN` (double DQN) for discrete actions and
:class:`latentvi.rl.sac.SAC` for continuous ones. Observations are ``uint8 [B, k·C, H, W]``
frame stacks (scaled to [0, 1] here) or float states ``[B, D]``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from latentvi.config import option, require
from latentvi.data.replay import ReplayBatch
from latentvi.models.vae import LIKELIHOODS, VAE, VAEConfig
from latentvi.nn import ConvEncoder
from latentvi.optim_step import optimizer_step
from latentvi.rl.dqn import DQN
from latentvi.rl.sac import SAC, polyak_update

__all__ = ["VARIANTS", "LatentQAgent", "LatentQConfig"]

VARIANTS = ("state", "pixels", "vae", "vae-pretrained")
CRITIC_NORMS = ("sac", "all", "none")
PIXEL_VARIANTS = VARIANTS[1:]


@dataclasses.dataclass(frozen=True)
class LatentQConfig:
    """The agent: its representation (variant) and the Q-learning head's hyperparameters."""

    variant: str = option(
        "vae",
        "representation: state, pixels (conv Q end to end), vae (VAE trained online on the "
        "replay buffer) or vae-pretrained (VAE pretrained on prior observations, then online)",
        choices=VARIANTS,
    )
    latent_dim: int = option(32, "size of the VAE latent z (vae variants)")
    latent_sample: bool = option(False, "Q sees a sample of q(z|s) instead of its mean")
    finetune_encoder: bool = option(
        False, "let the critic's loss train the VAE encoder too (default: the VAE loss only)"
    )
    channels: tuple[int, ...] = option(
        (16, 32, 32, 32), "channels of the stride-2 conv layers (pixel variants)"
    )
    feature_dim: int = option(50, "size of the conv encoder's features (pixels variant)")
    vae_likelihood: str = option(
        "gaussian-fixed", "VAE decoder p(s|z) on pixel intensities in [0, 1]", choices=LIKELIHOODS
    )
    vae_fixed_std: float = option(0.1, "σ of the gaussian-fixed VAE likelihood")
    vae_beta: float = option(1.0, "weight of the VAE's KL term")
    vae_center: bool = option(
        True,
        "the VAE sees frames minus a mean frame (the per-pixel mean of its first batch), so its "
        "encoder reads the moving parts and its decoder starts at the background (Gaussian "
        "likelihoods; see VAERepresentation)",
    )
    vae_lr: float = option(1e-3, "Adam learning rate of the VAE")
    hidden: tuple[int, ...] = option((256, 256), "hidden sizes of the Q-network / actor / critics")
    critic_norm: str = option(
        "sac",
        "LayerNorm in the hidden layers of the critics (Ball et al. 2023): sac (SAC's critics "
        "only: it steadied SAC on pixel Pendulum), all (DQN's Q-network too: it slowed state "
        "DQN on CartPole) or none; BENCHMARKS.md, issue 5",
        choices=CRITIC_NORMS,
    )
    lr: float = option(3e-4, "Adam learning rate of the Q-network, actor and critics")
    discount: float = option(0.99, "discount γ per agent step")
    tau: float = option(0.01, "Polyak rate of SAC's target critics")
    encoder_tau: float = option(
        0.05, "Polyak rate of the target encoder (pixels, and vae with finetune_encoder)"
    )
    init_temperature: float = option(0.1, "SAC's initial temperature α")
    target_update_every: int = option(500, "DQN: updates between target-network copies")
    epsilon_start: float = option(1.0, "DQN: ε of ε-greedy at the first update")
    epsilon_end: float = option(0.05, "DQN: final ε")
    epsilon_decay_steps: int = option(5000, "DQN: agent steps over which ε decays linearly")
    batch_size: int = option(64, "transitions per update (one batch for the VAE and for Q)")

    def __post_init__(self) -> None:
        require(self.variant in VARIANTS, "variant", self.variant, f"choose one of {VARIANTS}")
        require(
            self.critic_norm in CRITIC_NORMS,
            "critic_norm",
            self.critic_norm,
            f"choose one of {CRITIC_NORMS}",
        )
        for name in ("latent_dim", "feature_dim", "batch_size", "target_update_every"):
            value = getattr(self, name)
            require(int(value) >= 1, name, value, "use a positive integer")
        for name in ("channels", "hidden"):
            sizes = getattr(self, name)
            require(
                len(sizes) >= 1 and all(int(s) >= 1 for s in sizes),
                name,
                sizes,
                "give one or more positive sizes, e.g. 256,256",
            )
        for name in ("lr", "vae_lr", "vae_fixed_std", "init_temperature"):
            value = getattr(self, name)
            require(value > 0, name, value, "use a positive number")
        require(0 <= self.discount < 1, "discount", self.discount, "use 0 <= γ < 1")
        for name in ("tau", "encoder_tau"):
            value = getattr(self, name)
            require(0 < value <= 1, name, value, "use a rate in (0, 1]")
        for name in ("epsilon_start", "epsilon_end"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, value, "use a probability in [0, 1]")
        require(
            self.vae_likelihood != "bernoulli",
            "vae_likelihood",
            self.vae_likelihood,
            "pixel intensities are not binary: use gaussian-fixed, gaussian or continuous-bernoulli",
        )
        require(
            not self.vae_center or self.vae_likelihood != "continuous-bernoulli",
            "vae_center",
            self.vae_center,
            "centred frames leave [0, 1], the continuous Bernoulli's support: use --no-vae-center "
            "or a Gaussian likelihood",
        )
        require(
            not self.finetune_encoder or self.variant in ("vae", "vae-pretrained"),
            "finetune_encoder",
            self.finetune_encoder,
            "fine-tuning applies to the VAE encoder: use variant vae or vae-pretrained",
        )

    @property
    def uses_vae(self) -> bool:
        return self.variant in ("vae", "vae-pretrained")


# --- representations: observation [B, *obs] -> features z [B, F] ---------------------------------


class StateRepresentation(nn.Module):
    """The true state as the features (no parameters)."""

    def __init__(self, state_dim: int) -> None:
        super().__init__()
        self.feature_dim = state_dim

    def forward(self, observation: Tensor) -> Tensor:
        return observation.float()


class ConvRepresentation(nn.Module):
    """Conv body → linear → LayerNorm → tanh: ``[B, C, H, W] -> [B, F]`` (trained by the critic)."""

    def __init__(self, shape: tuple[int, ...], channels: tuple[int, ...], feature_dim: int):
        super().__init__()
        body = ConvEncoder(shape, channels)
        self.net = nn.Sequential(
            body, nn.Linear(body.out_features, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh()
        )
        self.feature_dim = feature_dim

    def forward(self, observation: Tensor) -> Tensor:
        return self.net(_pixels(observation))


class VAERepresentation(nn.Module):
    """z from a VAE's q(z|s): its mean, or a reparameterized sample (``sample=True``).

    With ``config.vae_center`` (the default) the VAE models ``s − m``, where the mean frame
    ``m [k·C, H, W]`` is the per-pixel mean of the first batch it is trained on (a data-dependent
    initialization, fixed afterwards and saved with the weights). For a Gaussian decoder this is
    the same density of s in the same nats (a shift), but it decides whether the VAE learns at
    all on frames that are mostly a constant background: on pixel Pendulum (white, the rod ≈ 2% of
    the pixels) the uncentred VAE's decoder starts at 0 against targets ≈ 1, and the first updates'
    gradient — σ⁻² = 100 times the error on all 12,288 pixels — flows through z into the encoder
    and collapses it (the spread of its means across frames fell to 0.01 while σ shrank to match),
    after which the decoder draws the same average pendulum for every frame. Centred, the encoder's
    input is zero except where the rod is and the decoder's initial output is already the
    background; the reconstructions follow the rod within a few hundred updates
    (``tests/rl/test_agents.py::test_the_vae_reconstructs_a_small_object_on_a_white_background``).
    """

    def __init__(self, shape: tuple[int, ...], config: LatentQConfig) -> None:
        super().__init__()
        vae_config = VAEConfig(
            latent_dim=config.latent_dim,
            body="conv",
            channels=config.channels,
            likelihood=config.vae_likelihood,
            fixed_std=config.vae_fixed_std,
            beta=config.vae_beta,
        )
        self.vae = VAE(shape, vae_config)
        self.sample = config.latent_sample
        self.center = config.vae_center
        self.feature_dim = config.latent_dim
        self.register_buffer("mean_frame", torch.zeros(shape))  # (k·C, H, W)
        self.register_buffer("mean_frame_set", torch.tensor(False))

    def _centered(self, observation: Tensor) -> Tensor:
        """Pixels in [0, 1], minus the mean frame when centring: ``[B, k·C, H, W]``."""
        pixels = _pixels(observation)
        return pixels - self.mean_frame if self.center else pixels

    def forward(self, observation: Tensor) -> Tensor:
        q = self.vae.encode(self._centered(observation))
        return q.rsample() if self.sample else q.mean

    def loss(self, observation: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The VAE's loss (negative ELBO, nats per observation) on a batch of observations; its
        metrics renamed for the agent's log: ``loss/NAME`` -> ``loss/vae_NAME``, any other
        ``NAME`` (``elbo``) -> ``train/vae_NAME``."""
        if self.center and not bool(self.mean_frame_set):
            with torch.no_grad():
                self.mean_frame.copy_(_pixels(observation).mean(0))
                self.mean_frame_set.fill_(True)
        loss, metrics = self.vae.loss(self._centered(observation))
        return loss, {
            f"loss/vae_{k[5:]}" if k.startswith("loss/") else f"train/vae_{k}": v
            for k, v in metrics.items()
        }

    @torch.no_grad()
    def reconstruct(self, observation: Tensor) -> Tensor:
        """E[s | z = mean of q(z|s)] in pixel units [0, 1]: ``[B, k·C, H, W]``."""
        reconstruction = self.vae.reconstruct(self._centered(observation))
        return reconstruction + self.mean_frame if self.center else reconstruction


def _pixels(observation: Tensor) -> Tensor:
    return observation.float() / 255.0 if observation.dtype == torch.uint8 else observation


# --- the agent -------------------------------------------------------------------------------------


class LatentQAgent(nn.Module):
    """A representation and a Q-learning head, updated as in the module docstring.

    Args:
        config: the agent's configuration.
        observation_space: ``Box`` of stacked frames ``uint8 [k·C, H, W]`` or states ``[D]``.
        action_space: ``Discrete`` (→ double DQN) or a 1-D ``Box`` (→ SAC).
    """

    def __init__(
        self, config: LatentQConfig, observation_space: gym.Space, action_space: gym.Space
    ) -> None:
        super().__init__()
        self.config = config
        shape = tuple(observation_space.shape)
        image = len(shape) == 3
        if config.variant == "state" and image:
            raise ValueError(
                f"variant = 'state' but observations are images {shape}: use a pixel variant "
                f"({', '.join(PIXEL_VARIANTS)})"
            )
        if config.variant != "state" and not image:
            raise ValueError(
                f"variant = {config.variant!r} needs image observations [C, H, W], got {shape}: "
                "use pixels = True, or variant state"
            )
        if config.variant == "state":
            self.representation: nn.Module = StateRepresentation(shape[0])
        elif config.variant == "pixels":
            self.representation = ConvRepresentation(shape, config.channels, config.feature_dim)
        else:
            self.representation = VAERepresentation(shape, config)
        # Which representation parameters the critic's loss trains (none by default). Where it
        # trains them, the bootstrap targets read a Polyak-averaged copy (SAC-AE, Yarats et al.
        # 2021): pixels, and the VAE fine-tuned by the critic.
        critic_trains = config.variant == "pixels" or config.finetune_encoder
        if critic_trains:
            self.target_representation = copy.deepcopy(self.representation).requires_grad_(False)
        encoder_parameters = []
        if critic_trains:
            module = self.representation
            if isinstance(module, VAERepresentation):
                module = module.vae.encoder
            encoder_parameters = list(module.parameters())
        self.critic_trains_encoder = critic_trains
        features = self.representation.feature_dim
        c = config
        if isinstance(action_space, gym.spaces.Discrete):
            self.head: nn.Module = DQN(
                features,
                int(action_space.n),
                c.hidden,
                lr=c.lr,
                discount=c.discount,
                target_update_every=c.target_update_every,
                extra_parameters=encoder_parameters,
                layer_norm=c.critic_norm == "all",
            )
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.head = SAC(
                features,
                torch.as_tensor(action_space.low),
                torch.as_tensor(action_space.high),
                c.hidden,
                lr=c.lr,
                alpha_lr=c.lr,
                discount=c.discount,
                tau=c.tau,
                init_temperature=c.init_temperature,
                extra_parameters=encoder_parameters,
                critic_layer_norm=c.critic_norm in ("sac", "all"),
            )
        else:
            raise ValueError(
                f"action space {action_space} is not supported: use Discrete actions (double "
                "DQN) or a 1-D Box (SAC)"
            )
        self.discrete = isinstance(self.head, DQN)
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(self.head.optimizers)
        if config.uses_vae:
            self.optimizers["vae"] = torch.optim.Adam(
                self.representation.vae.parameters(), lr=c.vae_lr
            )

    # --- acting ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @torch.no_grad()
    def act(self, observation: np.ndarray, explore: bool, epsilon: float = 0.0):
        """The action for one observation: an int (discrete) or a float32 array ``[A]``."""
        obs = torch.as_tensor(observation, device=self.device).unsqueeze(0)
        features = self.representation(obs)
        if self.discrete:
            return int(self.head.act(features, epsilon if explore else 0.0)[0])
        return self.head.act(features, explore)[0].cpu().numpy().astype(np.float32)

    # --- learning -------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters: ``representation`` (the VAE or conv encoder) and ``head``
        (Q-network or critics, actor, α; target copies excluded)."""
        return {
            "representation": [p for p in self.representation.parameters() if p.requires_grad],
            "head": [p for p in self.head.parameters() if p.requires_grad],
        }

    def representation_loss(self, observation: Tensor) -> tuple[Tensor, dict[str, Tensor]] | None:
        """The VAE's loss on a batch of observations (None for variants without one)."""
        if not isinstance(self.representation, VAERepresentation):
            return None
        return self.representation.loss(observation)

    def _features(self, batch: ReplayBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Features of obs (with gradient where the critic trains the encoder), of next obs,
        and of next obs for the bootstrap target."""
        if self.critic_trains_encoder:
            features = self.representation(batch.obs)
            with torch.no_grad():
                next_features = self.representation(batch.next_obs)
        else:
            with torch.no_grad():
                both = torch.cat([batch.obs, batch.next_obs])
                features, next_features = self.representation(both).chunk(2)
        next_target = next_features
        if hasattr(self, "target_representation"):
            with torch.no_grad():
                next_target = self.target_representation(batch.next_obs)
        return features, next_features, next_target

    def q_loss(self, batch: ReplayBatch) -> Tensor:
        """The head's TD loss on a batch (DQN) or its critics' loss (SAC), without stepping."""
        features, next_features, next_target = self._features(batch)
        args = (features, batch.action, batch.reward, next_features, next_target, batch.terminated)
        if self.discrete:
            return self.head.loss(*args)[0]
        return self.head.critic_loss(*args)[0]

    def update(self, batch: ReplayBatch) -> dict[str, Tensor]:
        """Steps 2 and 3 of the algorithm on one batch: the VAE, then Q on z."""
        batch = _to(batch, self.device)
        metrics: dict[str, Tensor] = {}
        representation = self.representation_loss(batch.obs)
        if representation is not None:
            loss, metrics = representation
            optimizer_step(self.optimizers["vae"], loss, name="VAE loss")
        features, next_features, next_target = self._features(batch)
        metrics.update(
            self.head.update(
                features, batch.action, batch.reward, next_features, next_target, batch.terminated
            )
        )
        if hasattr(self, "target_representation"):
            polyak_update(self.target_representation, self.representation, self.config.encoder_tau)
        return metrics

    def pretrain(
        self, sample_observations: Callable[[int], Tensor], updates: int
    ) -> dict[str, float]:
        """Fit the VAE alone for ``updates`` steps on batches ``sample_observations(B)`` (prior
        data); returns the last batch's metrics."""
        if not isinstance(self.representation, VAERepresentation):
            raise ValueError(f"variant {self.config.variant!r} has no VAE to pretrain")
        metrics: dict[str, float] = {}
        optimizer = self.optimizers["vae"]
        for _ in range(updates):
            obs = sample_observations(self.config.batch_size).to(self.device)
            loss, values = self.representation.loss(obs)
            optimizer_step(optimizer, loss, name="VAE loss")
            metrics = {k: float(v) for k, v in values.items()}
        return metrics

    @torch.no_grad()
    def reconstruct(self, observation: Tensor) -> Tensor:
        """The VAE's reconstruction E[s | z = mean of q(z|s)] in [0, 1]: ``[B, k·C, H, W]``."""
        if not isinstance(self.representation, VAERepresentation):
            raise ValueError(f"variant {self.config.variant!r} has no decoder")
        return self.representation.reconstruct(observation.to(self.device))

    # --- checkpoints --------------------------------------------------------------------------
    def optimizer_state(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_state(self, state: dict) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def _to(batch: ReplayBatch, device: torch.device) -> ReplayBatch:
    return ReplayBatch(*(getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)))
