"""Every named preset of latentvi in one table, merged into configs as defaults.

A preset is a set of field values over a command's configs (their field names do not clash, so
one flat ``field -> value`` dict covers them all). Resolving a configuration layers, from the
bottom up:

1. the dataclass defaults (the one source of each default);
2. the preset's values for the command (:data:`PRESETS`);
3. values for one environment under that command (:data:`ENV_PRESETS`, e.g. PixelChain's action
   repeat of 1), then for one agent (:data:`AGENT_PRESETS`, e.g. SLAC's paper batch);
4. the explicit overrides: options typed on the command line, or keyword values in Python. They
   always win, including a value equal to the dataclass default.

``resolve("world-model", "debug", (WorldModelRunConfig, RSSMConfig), {"free_nats": 3.0})`` gives
the configs the command line gives for ``--preset debug --free-nats 3.0``. The command line's default
preset is ``default`` for every command, so a Python caller that wants what the CLI trains with
resolves the ``default`` preset: the bare dataclass defaults are the papers' sizes.

This module sits above ``train`` and below ``jobs``: it names config fields and takes the config
types from its callers, and imports nothing from latentvi.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AGENT_PRESETS",
    "DEFAULT_PRESET",
    "ENV_PRESETS",
    "PRESETS",
    "preset_names",
    "preset_notes",
    "preset_values",
    "resolve",
]

DEFAULT_PRESET = "default"

_LATENT_Q_DEBUG = {
    "steps": 400,
    "buffer_size": 2000,
    "learning_starts": 100,
    "eval_every": 200,
    "eval_episodes": 2,
    "prior_steps": 200,
    "pretrain_updates": 10,
    "log_every": 100,
    "update_every": 1,
    "checkpoint_every": 200,
    "image_size": 32,
    "latent_dim": 8,
    "channels": (8, 16),
    "feature_dim": 16,
    "hidden": (64, 64),
    "batch_size": 32,
    "epsilon_decay_steps": 200,
    "target_update_every": 50,
}

# Stable-Baselines3 at rl-zoo's settings (issue 24; BENCHMARKS.md). SAC, rl-zoo's Pendulum-v1: SB3's
# defaults with lr 1e-3 (one update of 256 per environment step after 100 random steps, τ 0.005,
# α learned from 1 towards −|A|, no LayerNorm, no action repeat).
_LATENT_Q_SB3 = {
    "action_repeat": 1,
    "update_every": 1,
    "gradient_steps": 1,
    "buffer_size": 1_000_000,
    "learning_starts": 100,
    "batch_size": 256,
    "lr": 1e-3,
    "tau": 0.005,
    "discount": 0.99,
    "init_temperature": 1.0,
    "hidden": (256, 256),
    "critic_norm": "none",
}
# DQN, rl-zoo's CartPole-v1: 128 updates of 64 every 256 steps after 1000 random ones; SB3 copies
# the target every 10 environment steps, i.e. once between two rounds: every 128 updates here.
_LATENT_Q_SB3_CARTPOLE = {
    "steps": 50_000,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "update_every": 256,
    "gradient_steps": 128,
    "batch_size": 64,
    "lr": 2.3e-3,
    "target_update_every": 128,
    "epsilon_start": 1.0,
    "epsilon_end": 0.04,
    "epsilon_decay_steps": 8000,  # exploration_fraction 0.16 of 5e4 steps
}

# The class defaults of the world-model configs are the papers' sizes; `paper` adds only the
# papers' run settings.
_WORLD_MODEL_DEBUG = {
    # seconds to a few minutes on one CPU core
    "image_size": 32,
    "grayscale": True,
    "steps": 1000,
    "seed_episodes": 1,
    "train_steps": 5,
    "eval_every": 400,
    "eval_episodes": 2,
    "checkpoint_every": 400,
    "open_loop_horizon": 30,
    "deter_dim": 32,
    "stoch_dim": 8,
    "hidden": 32,
    "channels": (8, 16),
    "batch_size": 4,
    "chunk_length": 16,
    "plan_horizon": 5,
    "candidates": 64,
    "cem_iterations": 3,
    "top_k": 8,
    "imag_horizon": 5,
    "actor_hidden": (32, 32),
    "history": 4,
    "sac_hidden": (32, 32),
    "model_only_updates": 2,  # so that a debug run takes both kinds of update
}

_WORLD_MODEL_DEFAULT = {
    # pixel Pendulum-v1, 50k environment steps on 2 CPU cores
    "grayscale": True,
    "steps": 50_000,
    "seed_episodes": 5,
    "train_steps": 30,
    "eval_every": 5000,
    "deter_dim": 100,
    "stoch_dim": 16,
    "hidden": 100,
    "channels": (8, 16, 32, 64),
    "batch_size": 16,
    "chunk_length": 32,
    "model_lr": 1e-3,
    # PlaNet's 3 free nats left the prior without gradient here (the KL per step stayed below 3
    # with 16 stochastic units), so imagination drifted from the posterior; 1 free nat and
    # DreamerV2's balancing train the prior towards the posterior.
    "free_nats": 1.0,
    "kl_balance": 0.8,
    "plan_horizon": 12,
    "candidates": 300,
    "cem_iterations": 5,
    "top_k": 30,
    "imag_horizon": 15,
    "actor_hidden": (200, 200),
    "actor_lr": 2e-4,
    "critic_lr": 2e-4,
    # without an entropy bonus the actor collapsed to a constant torque (BENCHMARKS.md)
    "actor_entropy": 1.0,
    # SLAC: the paper's K = 8 and 256-256 networks; the model alone for the first 300 updates
    # (10 episodes), as the paper pretrains it before SAC
    "model_only_updates": 300,
}

# DreamerV3's robustness (Hafner, Pasukonis, Ba & Lillicrap 2023) over the CPU sizes. The world
# model's part (for every RSSM agent): 32 unimix categoricals of 32 classes, KL balancing with
# weights 0.5 (dynamics: KL(sg(q) ‖ p)) and 0.1 (representation: KL(q ‖ sg(p))) — α = 5/6 of a
# KL scale of 0.6 — each part clipped below at 1 free nat, and a zero-initialized symlog two-hot
# reward head.
_V3_MODEL = {
    "stoch_dim": 32,
    "classes": 32,
    "unimix": 0.01,
    "free_nats": 1.0,
    "kl_balance": 5 / 6,
    "kl_scale": 0.6,
    "reward_twohot": True,
    "zero_init_reward": True,
}
# Dreamer's part (AGENT_PRESETS): return normalization, a zero-initialized two-hot critic
# regularized towards its EMA (decay 0.98) and bootstrapping from itself, entropy scale 3e-4.
_V3_DREAMER = {
    "return_norm": True,
    "return_norm_decay": 0.99,
    "critic_twohot": True,
    "zero_init_critic": True,
    "slow_critic_tau": 0.02,
    "slow_critic_target": False,
    "slow_critic_reg": 1.0,
    "actor_entropy": 3e-4,
}

_WORLD_MODEL_PAPER = {
    # PlaNet/Dreamer sizes (the config defaults), for a GPU
    "device": "auto",
    "steps": 500_000,
    "train_steps": 100,
    # SLAC: the model alone for the first 10k updates (100 episodes): our choice of length for
    # the pretraining the paper does before SAC starts
    "model_only_updates": 10_000,
}

# E2C's presets cover E2CRunConfig (data, training, control) and E2CConfig (the model).
_E2C_DEFAULT = {
    # CPU-sized: 32×32 frames drawn at zoom 2, 256-256 bodies, a strong consistency term (λ = 4),
    # 40,000 transitions (a quarter of them starting near upright) and 24,000 updates; control by
    # the greedy policy of value iteration on a 60³ grid over the training latents (γ = 0.99);
    # with controller = mpc: autograd Jacobians, 80-step (8 s) plans, 16 iLQR iterations and the
    # goal regulator as a second start; 50 trials.
    "controller": "value",
    "zoom": 2,
    "transitions": 40_000,
    "upright_share": 0.25,
    "steps": 24_000,
    "linearization": "autograd",
    "regulator": True,
    "horizon": 80,
    "iterations": 16,
    "trials": 50,
    "latent_dim": 3,
    "hidden": (256, 256),
    "consistency": 4.0,
}

_E2C_PAPER = {
    # Watter et al.'s pendulum sizes: 48×48 frames, 800-800 bodies, λ = 0.25 (for a GPU)
    "image_size": 48,
    "steps": 30_000,
    "latent_dim": 3,
    "hidden": (800, 800),
    "consistency": 0.25,
}

_E2C_DEBUG = {
    "image_size": 16,
    "transitions": 512,
    "steps": 40,
    "batch_size": 64,
    "horizon": 8,
    "iterations": 2,
    "trials": 2,
    "episode_steps": 6,
    "success_steps": 2,
    "latent_dim": 3,
    "hidden": (32,),
    "transition_hidden": (16,),
}

_VAE_BURDA = {
    # Burda, Grosse & Salakhutdinov (2016), section 5: the 784-200-200-50 tanh VAE on dynamically
    # binarized MNIST, batch 20, Adam (β₁ 0.9, β₂ 0.999, ε 1e-4), 3^i epochs at 1e-3·10^(−i/7)
    # for i = 0..7 (3280 epochs). One resumable checkpoint, replaced every 10 epochs (30,000
    # steps), and one log row an epoch; validation only at the end (a best-checkpoint marker
    # would keep a second checkpoint): the figure is the K = 5000 test evaluation afterwards.
    "dataset": "mnist",
    "binarize": "dynamic",
    "latent_dim": 50,
    "hidden": (200, 200),
    "activation": "tanh",
    "objective": "elbo",
    "num_samples": 1,
    "batch_size": 20,
    "epochs": 3280,
    "lr": 1e-3,
    "lr_schedule": "burda",
    "betas": (0.9, 0.999),
    "eps": 1e-4,
    "log_every": 3000,
    "eval_every": 10_000_000,
    "checkpoint_every": 30_000,
    "keep_checkpoints": 1,
    "tensorboard": False,
}

# command -> preset name -> field values over the command's configs.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # latentvi train vae: DataConfig, VAEConfig and TrainConfig
    "vae": {"default": {}, "burda": _VAE_BURDA},
    # latentvi rl latent-q: RunConfig and LatentQConfig ("debug": a tiny run in seconds; "sb3":
    # Stable-Baselines3 at rl-zoo's settings, for the state variant)
    "latent-q": {"default": {}, "debug": _LATENT_Q_DEBUG, "sb3": _LATENT_Q_SB3},
    # latentvi world-model train --agent planet|dreamer|slac: WorldModelRunConfig, RSSMConfig,
    # ModelTrainingConfig and the agents' configs
    "world-model": {
        "debug": _WORLD_MODEL_DEBUG,
        "default": _WORLD_MODEL_DEFAULT,
        "paper": _WORLD_MODEL_PAPER,
        # DreamerV1's behaviour (today's default, kept under its own name for comparisons), and
        # DreamerV3's techniques over the same CPU sizes and over the debug sizes
        "v1": _WORLD_MODEL_DEFAULT,
        "v3": {**_WORLD_MODEL_DEFAULT, **_V3_MODEL},
        "v3-debug": {**_WORLD_MODEL_DEBUG, **_V3_MODEL, "stoch_dim": 8, "classes": 8},
    },
    # latentvi world-model train --agent e2c: E2CRunConfig and E2CConfig
    "e2c": {"default": _E2C_DEFAULT, "paper": _E2C_PAPER, "debug": _E2C_DEBUG},
}

ANY = "*"  # an ENV_PRESETS / AGENT_PRESETS entry for every preset of the command

# command -> environment id -> preset name (or ANY) -> values over the command's preset.
ENV_PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "latent-q": {
        # The chain's action moves right in one cell and left in the next: with two steps per
        # action no policy reaches the end. One step per action, whatever the preset.
        "latentvi/PixelChain-v0": {ANY: {"action_repeat": 1}},
        "CartPole-v1": {"sb3": _LATENT_Q_SB3_CARTPOLE},
    },
    "world-model": {
        # SOLAR's 2-D navigation (issue 21): one action per step of its 50-step episodes; default
        # is CPU-sized (32×32 frames, small networks, short plans: ~5 min per 5k steps on a core)
        "latentvi/PointNav-v0": {
            # SOLAR's TVLG policy spans one 50-step episode (its 100-step default is Pendulum's)
            ANY: {"action_repeat": 1, "horizon": 50},
            "default": {
                "image_size": 32,
                "steps": 5000,
                "eval_every": 1000,
                "eval_episodes": 5,
                "checkpoint_every": 1000,
                "train_steps": 20,
                "deter_dim": 64,
                "stoch_dim": 8,
                "hidden": 64,
                "channels": (8, 16, 32),
                "chunk_length": 25,
                "plan_horizon": 8,
                "candidates": 100,
                "cem_iterations": 3,
                "top_k": 10,
                "imag_horizon": 10,
                "actor_hidden": (64, 64),
                "sac_hidden": (64, 64),
                "model_only_updates": 100,
            },
        },
    },
}

# command -> agent -> preset name (or ANY) -> values over the command's (and environment's) preset.
AGENT_PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "world-model": {
        # SLAC's batch: 32 sequences of 8 steps, i.e. 9 observations (K = 8 frames of history at
        # t and at t+1).
        "slac": {"paper": {"batch_size": 32, "chunk_length": 9}},
        # SOLAR (Pendulum: 100 agent steps per episode = its TVLG horizon): debug improves the
        # policy after every episode; default after 5, with a 3-D latent state
        "solar": {
            "debug": {"rollouts": 1, "encoder_hidden": (32,), "latent_dim": 3},
            "default": {"rollouts": 5, "encoder_hidden": (200,), "latent_dim": 3},
        },
        "dreamer": {"v3": _V3_DREAMER, "v3-debug": _V3_DREAMER},
    },
}


def preset_names(command: str) -> tuple[str, ...]:
    """The presets of ``command`` (a key of :data:`PRESETS`), for ``--preset``'s choices."""
    _check_command(command)
    return tuple(PRESETS[command])


def preset_notes(command: str) -> dict[str, str]:
    """field -> ``"presets: debug 32, default 100"``: what each preset of ``command`` sets the
    field to, for the ``--help`` text beside the dataclass default."""
    notes: dict[str, list[str]] = {}
    for name, values in PRESETS[command].items():
        for field, value in values.items():
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            notes.setdefault(field, []).append(f"{name} {shown}")
    return {field: "presets: " + ", ".join(items) for field, items in notes.items()}


def preset_values(
    command: str, preset: str, *, agent: str | None = None, env: str | None = None
) -> dict[str, Any]:
    """The field values of ``preset`` for ``command``, with the entries of ``env`` and ``agent``
    merged over them (a field they name replaces the preset's)."""
    _check_command(command)
    if preset not in PRESETS[command]:
        raise ValueError(
            f"preset = {preset!r} is invalid: use one of {', '.join(PRESETS[command])}"
        )
    values = dict(PRESETS[command][preset])
    for table, key in ((ENV_PRESETS, env), (AGENT_PRESETS, agent)):
        entry = table.get(command, {}).get(key or "", {})
        values.update(entry.get(ANY, {}))
        values.update(entry.get(preset, {}))
    return values


def resolve(
    command: str,
    preset: str,
    config_types: Sequence[type],
    overrides: Mapping[str, Any] | None = None,
    *,
    agent: str | None = None,
) -> tuple:
    """One config per type of ``config_types``: dataclass defaults, then ``preset``'s values for
    ``command`` (with the entries for the run's environment and for ``agent``), then
    ``overrides`` (field name -> value), which always win. Each config is validated once, on its
    final values. The environment is ``overrides["env"]``, else the preset's, else the default of
    a field named ``env``. An override that no config has is a ``ValueError``."""
    overrides = dict(overrides or {})
    fields = {t: [f.name for f in dataclasses.fields(t) if f.init] for t in config_types}
    known = {name for names in fields.values() for name in names}
    unknown = sorted(set(overrides) - known)
    if unknown:
        names = ", ".join(t.__name__ for t in config_types)
        raise ValueError(f"overrides {unknown} are invalid: no field of {names} has that name")
    env = overrides.get("env", preset_values(command, preset, agent=agent).get("env"))
    if env is None:
        env = next((_default(t, "env") for t in config_types if "env" in fields[t]), None)
    values = {**preset_values(command, preset, agent=agent, env=env), **overrides}
    return tuple(t(**{name: values[name] for name in fields[t] if name in values}) for t in fields)


def _default(config_type: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(config_type) if f.name == name)


def _check_command(command: str) -> None:
    if command not in PRESETS:
        raise ValueError(f"command = {command!r} is invalid: use one of {', '.join(PRESETS)}")
